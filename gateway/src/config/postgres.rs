//! The source database connection: `replication.connections[0]`.
//!
//! Kept independent of any Postgres driver: the replicator turns [`PostgresConnection::connection_params`]
//! into its driver's config. The password only leaves a [`Secret`] through that method.

use std::fmt;

use super::Secret;

/// TLS mode, with libpq's names and meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub const NAMES: &'static str = "disable, allow, prefer, require, verify-ca, verify-full";

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which logical decoding output plugin new sync-rules versions stream through
/// (`replication.connections[0].decoder`). A version keeps the plugin its slot was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecoderChoice {
    /// Postgres's built-in plugin; needs a publication.
    Pgoutput,
    /// syncgate's own output plugin (pg-ext/); must be installed on the server.
    Syncgate,
    /// The syncgate plugin when the server lets us create a slot with it, else pgoutput.
    #[default]
    Auto,
}

impl DecoderChoice {
    pub const NAMES: &'static str = "pgoutput, syncgate, auto";

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pgoutput" => Self::Pgoutput,
            "syncgate" => Self::Syncgate,
            "auto" => Self::Auto,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pgoutput => "pgoutput",
            Self::Syncgate => "syncgate",
            Self::Auto => "auto",
        }
    }
}

impl fmt::Display for DecoderChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One source database, fully resolved (URI, discrete keys and environment overrides merged).
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresConnection {
    /// PowerSync's connection tag; names the source in logs.
    pub tag: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: Option<Secret<String>>,
    pub sslmode: SslMode,
    /// The publication that lists the replicated tables (syncgate key; PowerSync always uses `powersync`).
    pub publication: String,
    /// Replication slots are named this prefix plus the sync-rules version. syncgate drops slots with
    /// this prefix whose version its storage no longer has, so give each storage its own prefix.
    pub slot_name_prefix: String,
    /// The output plugin for slots created from now on (syncgate key).
    pub decoder: DecoderChoice,
}

impl PostgresConnection {
    /// libpq-style keyword/value pairs, password included: hand these to the driver, never to a log.
    pub fn connection_params(&self) -> Vec<(String, String)> {
        let mut params = vec![
            ("host".to_owned(), self.host.clone()),
            ("port".to_owned(), self.port.to_string()),
            ("dbname".to_owned(), self.database.clone()),
            ("user".to_owned(), self.user.clone()),
        ];
        if let Some(password) = &self.password {
            params.push(("password".to_owned(), password.expose().clone()));
        }
        params.push(("sslmode".to_owned(), self.sslmode.as_str().to_owned()));
        params
    }

    /// A URI without the password, for logs and status output.
    pub fn display_safe(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "postgresql://{}@{host}:{}/{}?sslmode={}",
            percent_encode(&self.user),
            self.port,
            percent_encode(&self.database),
            self.sslmode
        )
    }
}

/// The parts of a `postgresql://` URI; absent parts are `None`.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct UriParts {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub database: Option<String>,
    pub user: Option<String>,
    pub password: Option<Secret<String>>,
    pub sslmode: Option<SslMode>,
    /// Query parameters other than `sslmode`, which syncgate ignores (the caller warns).
    pub other_params: Vec<String>,
}

/// Parses `postgres[ql]://[user[:password]@]host[:port][/database][?key=value&...]`, percent-decoding
/// user, password and database. Errors never quote the password.
pub(crate) fn parse_uri(uri: &str) -> Result<UriParts, String> {
    let rest = uri
        .strip_prefix("postgresql://")
        .or_else(|| uri.strip_prefix("postgres://"))
        .ok_or("the URI must start with postgresql:// (postgresql://USER:PASSWORD@HOST:PORT/DATABASE)")?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let mut parts = UriParts::default();
    // The last `@` ends the credentials, so an unencoded `@` or `/` in a password still parses
    // (and never leaks into the host or database name); a database name must encode `@`.
    let (userinfo, host_and_path) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    if let Some(userinfo) = userinfo {
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        if !user.is_empty() {
            parts.user = Some(percent_decode(user).map_err(|e| format!("the URI's user {e}"))?);
        }
        if let Some(p) = password {
            parts.password = Some(Secret::new(
                percent_decode(p).map_err(|e| format!("the URI's password {e}"))?,
            ));
        }
    }
    let (host_port, path) = match host_and_path.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (host_and_path, None),
    };
    let (host, port) = split_host_port(host_port)?;
    if !host.is_empty() {
        parts.host = Some(percent_decode(host).map_err(|e| format!("the URI's host {e}"))?);
    }
    parts.port = port;
    if let Some(path) = path.filter(|p| !p.is_empty()) {
        parts.database = Some(percent_decode(path).map_err(|e| format!("the URI's database name {e}"))?);
    }
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "sslmode" {
            parts.sslmode =
                Some(SslMode::parse(value).ok_or_else(|| {
                    format!("the URI's sslmode `{value}` is not one of {}", SslMode::NAMES)
                })?);
        } else {
            parts.other_params.push(key.to_owned());
        }
    }
    Ok(parts)
}

fn split_host_port(host_port: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        // IPv6 literal: [::1]:5432
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("the URI's IPv6 host is missing its closing `]`")?;
        (host, after.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    let port = match port.filter(|p| !p.is_empty()) {
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                // Not quoted: with an unencoded `/` or `:` in the password, this text is part of it.
                .ok_or(
                    "the URI's port is not a number from 1 to 65535 \
                     (percent-encode `:`, `/`, `?`, `@` and `%` in the user and password)",
                )?,
        ),
        None => None,
    };
    Ok((host, port))
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("has a `%` that is not followed by two hex digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "is not UTF-8 after percent-decoding".to_owned())
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_uri() {
        let p = parse_uri(
            "postgresql://app%40x:p%3Ass@@db.example:6543/my%20db?sslmode=require&application_name=a",
        )
        .unwrap();
        assert_eq!(p.user.as_deref(), Some("app@x"));
        assert_eq!(p.password.as_ref().map(|s| s.expose().as_str()), Some("p:ss@"));
        assert_eq!(p.host.as_deref(), Some("db.example"));
        assert_eq!(p.port, Some(6543));
        assert_eq!(p.database.as_deref(), Some("my db"));
        assert_eq!(p.sslmode, Some(SslMode::Require));
        assert_eq!(p.other_params, ["application_name"]);
    }

    #[test]
    fn unencoded_slash_and_at_in_password() {
        let p = parse_uri("postgresql://u:a/b@c:1/d@h:5433/db").unwrap();
        assert_eq!(
            p.password.as_ref().map(|s| s.expose().as_str()),
            Some("a/b@c:1/d")
        );
        assert_eq!(
            (p.host.as_deref(), p.port, p.database.as_deref()),
            (Some("h"), Some(5433), Some("db"))
        );
    }

    #[test]
    fn minimal_and_ipv6_uris() {
        let p = parse_uri("postgres://localhost").unwrap();
        assert_eq!(p.host.as_deref(), Some("localhost"));
        assert_eq!((p.port, p.user, p.database), (None, None, None));
        let p = parse_uri("postgresql://u@[::1]:5433/db").unwrap();
        assert_eq!(p.host.as_deref(), Some("::1"));
        assert_eq!(p.port, Some(5433));
    }

    #[test]
    fn bad_uris() {
        assert!(parse_uri("mysql://x").unwrap_err().contains("postgresql://"));
        assert!(
            parse_uri("postgresql://h:99999/db")
                .unwrap_err()
                .contains("port is not a number")
        );
        assert!(
            parse_uri("postgresql://u@h:x/db")
                .unwrap_err()
                .contains("port is not a number")
        );
        assert!(
            parse_uri("postgresql://u:%zz@h/db")
                .unwrap_err()
                .contains("password has a `%`")
        );
        assert!(
            parse_uri("postgresql://h/db?sslmode=on")
                .unwrap_err()
                .contains("sslmode `on`")
        );
    }

    #[test]
    fn params_and_safe_display() {
        let c = PostgresConnection {
            tag: "default".into(),
            host: "h".into(),
            port: 5432,
            database: "db".into(),
            user: "u@x".into(),
            password: Some(Secret::new("hunter2".into())),
            sslmode: SslMode::Disable,
            publication: "powersync".into(),
            slot_name_prefix: "syncgate_".into(),
            decoder: DecoderChoice::Auto,
        };
        assert!(
            c.connection_params()
                .contains(&("password".into(), "hunter2".into()))
        );
        assert_eq!(c.display_safe(), "postgresql://u%40x@h:5432/db?sslmode=disable");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
