//! A JSON syntax check for json/jsonb elements that are embedded verbatim into synced JSON.
//!
//! Postgres only emits valid JSON, but the embedded text must never make the synced value invalid.
//! serde_json cannot be used: it rejects numbers outside f64 (`1e400`, valid in jsonb) unless its
//! crate-wide `arbitrary_precision` feature is on. Iterative, so deep nesting cannot overflow the
//! stack.

pub(super) fn is_valid_json(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    // Open containers: b'[' or b'{'.
    let mut stack: Vec<u8> = Vec::new();
    loop {
        // Expecting a value.
        skip_ws(b, &mut i);
        match b.get(i) {
            Some(b'[') | Some(b'{') => {
                let open = b[i];
                i += 1;
                skip_ws(b, &mut i);
                let close = if open == b'[' { b']' } else { b'}' };
                if b.get(i) == Some(&close) {
                    i += 1;
                } else {
                    stack.push(open);
                    if open == b'{' && !object_key(b, &mut i) {
                        return false;
                    }
                    continue;
                }
            }
            Some(b'"') => {
                if !string(b, &mut i) {
                    return false;
                }
            }
            Some(b't') => {
                i = match literal(b, i, b"true") {
                    Some(next) => next,
                    None => return false,
                }
            }
            Some(b'f') => {
                i = match literal(b, i, b"false") {
                    Some(next) => next,
                    None => return false,
                }
            }
            Some(b'n') => {
                i = match literal(b, i, b"null") {
                    Some(next) => next,
                    None => return false,
                }
            }
            Some(b'-' | b'0'..=b'9') => {
                if !number(b, &mut i) {
                    return false;
                }
            }
            _ => return false,
        }
        // After a value: close containers or move to the next element.
        loop {
            skip_ws(b, &mut i);
            match stack.last() {
                None => return i == b.len(),
                Some(&open) => {
                    let close = if open == b'[' { b']' } else { b'}' };
                    match b.get(i) {
                        Some(&c) if c == close => {
                            stack.pop();
                            i += 1;
                        }
                        Some(b',') => {
                            i += 1;
                            if open == b'{' && !object_key(b, &mut i) {
                                return false;
                            }
                            break;
                        }
                        _ => return false,
                    }
                }
            }
        }
    }
}

fn skip_ws(b: &[u8], i: &mut usize) {
    while matches!(b.get(*i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        *i += 1;
    }
}

/// `"key"` then `:`.
fn object_key(b: &[u8], i: &mut usize) -> bool {
    skip_ws(b, i);
    if b.get(*i) != Some(&b'"') || !string(b, i) {
        return false;
    }
    skip_ws(b, i);
    if b.get(*i) != Some(&b':') {
        return false;
    }
    *i += 1;
    true
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    b.get(i..i + word.len())
        .filter(|s| *s == word)
        .map(|_| i + word.len())
}

fn string(b: &[u8], i: &mut usize) -> bool {
    *i += 1; // opening quote
    loop {
        match b.get(*i) {
            None => return false,
            Some(b'"') => {
                *i += 1;
                return true;
            }
            Some(b'\\') => match b.get(*i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => *i += 2,
                Some(b'u') => {
                    let hex = b.get(*i + 2..*i + 6);
                    if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                        return false;
                    }
                    *i += 6;
                }
                _ => return false,
            },
            Some(&c) if c < 0x20 => return false,
            Some(_) => *i += 1,
        }
    }
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
fn number(b: &[u8], i: &mut usize) -> bool {
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    if b.get(*i) == Some(&b'-') {
        *i += 1;
    }
    match b.get(*i) {
        Some(b'0') => *i += 1,
        Some(b'1'..=b'9') => {
            digits(i);
        }
        _ => return false,
    }
    if b.get(*i) == Some(&b'.') {
        *i += 1;
        if digits(i) == 0 {
            return false;
        }
    }
    if matches!(b.get(*i), Some(b'e' | b'E')) {
        *i += 1;
        if matches!(b.get(*i), Some(b'+' | b'-')) {
            *i += 1;
        }
        if digits(i) == 0 {
            return false;
        }
    }
    true
}
