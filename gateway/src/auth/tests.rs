use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::config::{Jwk, Secret};

const RSA_PEM: &str = include_str!("testdata/rsa.pem");
const RSA2_PEM: &str = include_str!("testdata/rsa2.pem");
const EC256_PEM: &str = include_str!("testdata/ec256.pem");
const EC384_PEM: &str = include_str!("testdata/ec384.pem");
const ED25519_PEM: &str = include_str!("testdata/ed25519.pem");
/// base64url of `test-secret-0123456789abcdef0123456789`.
const SECRET: &[u8] = b"test-secret-0123456789abcdef0123456789";
const AUD: &str = "powersync-test";
const NOW: u64 = 1_800_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).expect("test key")
}

fn rsa2() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA2_PEM.as_bytes()).expect("test key")
}

fn ec256() -> EncodingKey {
    EncodingKey::from_ec_pem(EC256_PEM.as_bytes()).expect("test key")
}

fn ec384() -> EncodingKey {
    EncodingKey::from_ec_pem(EC384_PEM.as_bytes()).expect("test key")
}

fn ed25519() -> EncodingKey {
    EncodingKey::from_ed_pem(ED25519_PEM.as_bytes()).expect("test key")
}

fn hmac() -> EncodingKey {
    EncodingKey::from_secret(SECRET)
}

/// The public JWK of a private key, with `kid` and `alg` as given (`None` drops them).
fn public_jwk(key: &EncodingKey, family_alg: Algorithm, kid: Option<&str>, alg: Option<&str>) -> Value {
    let mut jwk =
        match serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(key, family_alg).expect("jwk"))
            .expect("json")
        {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
    jwk.remove("alg");
    jwk.remove("kid");
    if jwk.get("kty") == Some(&json!("oct")) {
        jwk.insert("k".into(), json!(b64(SECRET)));
    }
    if let Some(kid) = kid {
        jwk.insert("kid".into(), json!(kid));
    }
    if let Some(alg) = alg {
        jwk.insert("alg".into(), json!(alg));
    }
    Value::Object(jwk)
}

fn oct_jwk(kid: Option<&str>, alg: Option<&str>) -> Value {
    let mut jwk = json!({"kty": "oct", "k": b64(SECRET)});
    if let Some(kid) = kid {
        jwk["kid"] = json!(kid);
    }
    if let Some(alg) = alg {
        jwk["alg"] = json!(alg);
    }
    jwk
}

fn to_config_jwk(value: Value) -> Jwk {
    let Value::Object(members) = value else {
        panic!("a JWK is an object")
    };
    let text = |name: &str| members.get(name).and_then(Value::as_str).map(str::to_owned);
    Jwk {
        kty: text("kty").unwrap_or_default(),
        kid: text("kid"),
        alg: text("alg"),
        members,
    }
}

fn config(keys: Vec<Value>) -> ClientAuthConfig {
    ClientAuthConfig {
        jwks: keys.into_iter().map(to_config_jwk).collect(),
        audience: vec![AUD.into()],
        max_lifetime_seconds: crate::config::DEFAULT_MAX_LIFETIME_SECONDS,
        ..ClientAuthConfig::default()
    }
}

fn auth(keys: Vec<Value>) -> Authenticator {
    Authenticator::new(&config(keys)).expect("usable keys")
}

fn claims() -> Map<String, Value> {
    match json!({"sub": "user1", "aud": AUD, "iat": NOW - 10, "exp": NOW + 600}) {
        Value::Object(map) => map,
        _ => unreachable!(),
    }
}

fn with(mut claims: Map<String, Value>, name: &str, value: Value) -> Map<String, Value> {
    if value.is_null() {
        claims.remove(name);
    } else {
        claims.insert(name.into(), value);
    }
    claims
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Map<String, Value>, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

/// A token with an arbitrary header (for algorithms the library cannot sign) and a junk signature.
fn unsigned(header: Value, claims: &Map<String, Value>) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(Value::Object(claims.clone()).to_string().as_bytes()),
        b64(b"not a signature")
    )
}

#[test]
fn every_supported_algorithm_verifies() {
    let cases: Vec<(Algorithm, EncodingKey, Value)> = vec![
        (Algorithm::HS256, hmac(), oct_jwk(None, None)),
        (Algorithm::HS384, hmac(), oct_jwk(None, None)),
        (Algorithm::HS512, hmac(), oct_jwk(None, None)),
        (
            Algorithm::RS256,
            rsa(),
            public_jwk(&rsa(), Algorithm::RS256, None, None),
        ),
        (
            Algorithm::RS384,
            rsa(),
            public_jwk(&rsa(), Algorithm::RS256, None, None),
        ),
        (
            Algorithm::RS512,
            rsa(),
            public_jwk(&rsa(), Algorithm::RS256, None, None),
        ),
        (
            Algorithm::PS256,
            rsa(),
            public_jwk(&rsa(), Algorithm::RS256, None, None),
        ),
        (
            Algorithm::PS384,
            rsa(),
            public_jwk(&rsa(), Algorithm::RS256, None, None),
        ),
        (
            Algorithm::PS512,
            rsa(),
            public_jwk(&rsa(), Algorithm::RS256, None, None),
        ),
        (
            Algorithm::ES256,
            ec256(),
            public_jwk(&ec256(), Algorithm::ES256, None, None),
        ),
        (
            Algorithm::ES384,
            ec384(),
            public_jwk(&ec384(), Algorithm::ES384, None, None),
        ),
        (
            Algorithm::EdDSA,
            ed25519(),
            public_jwk(&ed25519(), Algorithm::EdDSA, None, None),
        ),
    ];
    for (alg, private, jwk) in cases {
        // Kid-less key found by family, and the same key found by kid with its `alg` pinned.
        let token = sign(alg, None, &claims(), &private);
        let verified = auth(vec![jwk.clone()]).verify(&token, now());
        assert_eq!(
            verified.map(|c| c.user_id().0.clone()),
            Ok("user1".into()),
            "{alg:?} kid-less"
        );

        let mut pinned = jwk.clone();
        pinned["kid"] = json!("k1");
        pinned["alg"] = json!(format!("{alg:?}"));
        let token = sign(alg, Some("k1"), &claims(), &private);
        assert!(auth(vec![pinned]).verify(&token, now()).is_ok(), "{alg:?} by kid");

        // Tampered payload: the signature no longer matches.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = b64(Value::Object(with(claims(), "sub", json!("admin")))
            .to_string()
            .as_bytes());
        let mut pinned = jwk;
        pinned["kid"] = json!("k1");
        assert_eq!(
            auth(vec![pinned]).verify(&parts.join("."), now()),
            Err(AuthError::BadSignature),
            "{alg:?} tampered"
        );
    }
}

#[test]
fn es512_and_none_are_refused_with_s2101() {
    let a = auth(vec![oct_jwk(None, None)]);
    let err = a
        .verify(
            &unsigned(json!({"alg": "ES512", "kid": "p521"}), &claims()),
            now(),
        )
        .expect_err("ES512");
    assert_eq!(err.code(), "PSYNC_S2101");
    assert!(
        err.description().contains("ES512") && err.description().contains("cannot verify"),
        "{err}"
    );

    let err = a
        .verify(&unsigned(json!({"alg": "none"}), &claims()), now())
        .expect_err("none");
    assert_eq!(err.code(), "PSYNC_S2101");
    assert!(err.description().contains("none"), "{err}");

    // A P-521 key cannot even be configured.
    let p521 = json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"});
    let err = Authenticator::new(&config(vec![p521])).expect_err("P-521");
    assert!(err.to_string().contains("P-521"), "{err}");
}

#[test]
fn key_selection_follows_kid_then_kidless_family() {
    let rsa_a = public_jwk(&rsa(), Algorithm::RS256, Some("a"), None);
    let rsa_b = public_jwk(&rsa2(), Algorithm::RS256, Some("b"), None);
    let a = auth(vec![rsa_a.clone(), rsa_b.clone()]);
    assert!(
        a.verify(&sign(Algorithm::RS256, Some("a"), &claims(), &rsa()), now())
            .is_ok()
    );
    assert!(
        a.verify(&sign(Algorithm::RS256, Some("b"), &claims(), &rsa2()), now())
            .is_ok()
    );
    // kid `a` names key a only: key b's signature is not tried.
    assert_eq!(
        a.verify(&sign(Algorithm::RS256, Some("a"), &claims(), &rsa2()), now()),
        Err(AuthError::BadSignature)
    );
    // Keys with a kid are never tried for a token without one (or with an unknown kid).
    assert_eq!(
        a.verify(&sign(Algorithm::RS256, None, &claims(), &rsa()), now()),
        Err(AuthError::NoKey)
    );
    assert_eq!(
        a.verify(&sign(Algorithm::RS256, Some("zzz"), &claims(), &rsa()), now()),
        Err(AuthError::NoKey)
    );

    // An unknown kid falls back to kid-less keys of the family; each is tried.
    let kidless = auth(vec![
        oct_jwk(None, None),
        public_jwk(&rsa2(), Algorithm::RS256, None, None),
        public_jwk(&rsa(), Algorithm::RS256, None, None),
    ]);
    assert!(
        kidless
            .verify(&sign(Algorithm::RS256, Some("zzz"), &claims(), &rsa()), now())
            .is_ok()
    );
    // …but only of the family: an HS256 token is not tried against RSA keys and vice versa.
    let rsa_only = auth(vec![public_jwk(&rsa(), Algorithm::RS256, None, None)]);
    assert_eq!(
        rsa_only.verify(&sign(Algorithm::HS256, None, &claims(), &hmac()), now()),
        Err(AuthError::NoKey)
    );
}

#[test]
fn algorithm_must_match_the_keys_alg_or_family() {
    // kid match with a pinned alg: another RSA algorithm is a mismatch (401, not a fallback).
    let pinned = auth(vec![public_jwk(
        &rsa(),
        Algorithm::RS256,
        Some("a"),
        Some("RS256"),
    )]);
    let err = pinned
        .verify(&sign(Algorithm::RS384, Some("a"), &claims(), &rsa()), now())
        .expect_err("mismatch");
    assert_eq!(err, AuthError::AlgorithmMismatch { alg: "RS384".into() });
    assert_eq!(err.code(), "PSYNC_S2101");
    // kid match without alg: the family decides; HS256 on an RSA key is a mismatch.
    let family = auth(vec![public_jwk(&rsa(), Algorithm::RS256, Some("a"), None)]);
    assert!(matches!(
        family.verify(&sign(Algorithm::HS256, Some("a"), &claims(), &hmac()), now()),
        Err(AuthError::AlgorithmMismatch { .. })
    ));
    // A kid-less key with a pinned alg is skipped for other algorithms.
    let kidless = auth(vec![public_jwk(&rsa(), Algorithm::RS256, None, Some("RS256"))]);
    assert_eq!(
        kidless.verify(&sign(Algorithm::RS512, None, &claims(), &rsa()), now()),
        Err(AuthError::NoKey)
    );
    // An EC key does the algorithm of its curve only.
    let p256 = auth(vec![public_jwk(&ec256(), Algorithm::ES256, Some("e"), None)]);
    assert!(matches!(
        p256.verify(&sign(Algorithm::ES384, Some("e"), &claims(), &ec384()), now()),
        Err(AuthError::AlgorithmMismatch { .. })
    ));
}

#[test]
fn unusable_keys_fail_construction() {
    let cases = [
        (json!({"kty": "oct", "k": "not base64!"}), "base64url"),
        (json!({"kty": "oct"}), "`k` is missing"),
        (json!({"kty": "XYZ"}), "kty"),
        (json!({"kty": "RSA", "n": "AQAB"}), "`e` is missing"),
        (
            json!({"kty": "EC", "crv": "P-256", "x": "AQAB", "y": "AQAB"}),
            "unusable EC key",
        ),
        (json!({"kty": "OKP", "crv": "Ed448", "x": "AQAB"}), "Ed448"),
        (json!({"kty": "oct", "k": "AQAB", "alg": "RS256"}), "does not fit"),
        (json!({"kty": "oct", "k": "AQAB", "alg": "none"}), "none"),
        (json!({"kty": "oct", "k": "AQAB", "use": "enc"}), "sig"),
    ];
    for (jwk, expected) in cases {
        let err = Authenticator::new(&config(vec![jwk.clone()])).expect_err("unusable");
        let text = err.to_string();
        assert!(text.starts_with("client_auth.jwks.keys[0]"), "{text}");
        assert!(text.contains(expected), "{jwk}: {text}");
    }
    let empty = ClientAuthConfig {
        supabase_jwt_secret: Some(Secret::new(String::new())),
        ..config(vec![])
    };
    assert!(Authenticator::new(&empty).is_err());
}

#[test]
fn header_syntax() {
    assert_eq!(token_from_header("Token abc.def.ghi"), Some("abc.def.ghi"));
    assert_eq!(token_from_header("Bearer abc"), Some("abc"));
    for bad in [
        "",
        "Token",
        "Token ",
        "token abc",
        "Basic abc",
        "Token  abc",
        "Token a b",
        "Bearer abc\n",
    ] {
        assert_eq!(token_from_header(bad), None, "{bad:?}");
    }
}

#[tokio::test]
async fn authenticate_reads_the_header() {
    let a = auth(vec![oct_jwk(None, None)]);
    assert_eq!(a.authenticate(None).await, Err(AuthError::Missing));
    assert_eq!(a.authenticate(Some("Basic xyz")).await, Err(AuthError::Missing));
    assert_eq!(AuthError::Missing.code(), "PSYNC_S2106");
    let live = with(
        with(claims(), "iat", json!(jsonwebtoken::get_current_timestamp())),
        "exp",
        json!(jsonwebtoken::get_current_timestamp() + 300),
    );
    let token = sign(Algorithm::HS256, None, &live, &hmac());
    let ok = a
        .authenticate(Some(&format!("Token {token}")))
        .await
        .expect("valid");
    assert_eq!(ok.user_id().0, "user1");
    assert!(a.authenticate(Some(&format!("Bearer {token}"))).await.is_ok());
    assert_eq!(a.authenticate(Some("Token x.y")).await, Err(AuthError::Malformed));
}

#[test]
fn malformed_tokens_are_s2101() {
    let a = auth(vec![oct_jwk(None, None)]);
    let good = sign(Algorithm::HS256, None, &claims(), &hmac());
    let parts: Vec<&str> = good.split('.').collect();
    for bad in [
        "abc".to_string(),
        "a.b.c.d".to_string(),
        format!("{}.{}", parts[0], parts[1]),
        format!("!!!.{}.{}", parts[1], parts[2]),
        format!("{}.{}.{}", b64(b"[1]"), parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], b64(b"not json"), parts[2]),
        format!("{}.{}.{}", b64(br#"{"typ":"JWT"}"#), parts[1], parts[2]),
    ] {
        let err = a.verify(&bad, now()).expect_err("malformed");
        assert_eq!(err.code(), "PSYNC_S2101", "{bad}");
    }
    let crit = unsigned(json!({"alg": "HS256", "crit": ["b64"]}), &claims());
    assert_eq!(
        a.verify(&crit, now()),
        Err(AuthError::UnsupportedCritical("b64".into()))
    );
}

#[test]
fn time_claims_and_tolerance() {
    let a = auth(vec![oct_jwk(None, None)]);
    let at = |claims: Map<String, Value>, now_offset: i64| {
        let token = sign(Algorithm::HS256, None, &claims, &hmac());
        let now = UNIX_EPOCH + Duration::from_secs(NOW.checked_add_signed(now_offset).expect("offset"));
        a.verify(&token, now)
    };
    // exp = NOW + 600: valid until 60 s after exp, expired from then on.
    assert!(at(claims(), 659).is_ok());
    let expired = at(claims(), 660).expect_err("expired");
    assert_eq!(expired, AuthError::Expired);
    assert_eq!(expired.code(), "PSYNC_S2103");
    assert_eq!(expired.description(), "JWT has expired");
    // nbf up to 60 s in the future is tolerated.
    assert!(at(with(claims(), "nbf", json!(NOW + 60)), 0).is_ok());
    assert_eq!(
        at(with(claims(), "nbf", json!(NOW + 61)), 0),
        Err(AuthError::NotYetValid)
    );
    // Missing or mistyped registered claims.
    for name in ["sub", "iat", "exp"] {
        let err = at(with(claims(), name, Value::Null), 0).expect_err("missing");
        assert_eq!(err, AuthError::MissingClaim(name));
        assert_eq!(err.code(), "PSYNC_S2101");
    }
    assert!(matches!(
        at(with(claims(), "exp", json!("soon")), 0),
        Err(AuthError::InvalidClaim { claim: "exp", .. })
    ));
    assert!(matches!(
        at(with(claims(), "sub", json!({"id": 1})), 0),
        Err(AuthError::InvalidClaim { claim: "sub", .. })
    ));
    // Fractional NumericDates are numbers too.
    assert!(at(with(claims(), "exp", json!(NOW as f64 + 0.5)), 0).is_ok());
}

#[test]
fn lifetime_limit_is_s2104() {
    let a = auth(vec![oct_jwk(None, None)]);
    let lifetime = |seconds: u64| {
        let c = with(with(claims(), "iat", json!(NOW)), "exp", json!(NOW + seconds));
        a.verify(&sign(Algorithm::HS256, None, &c, &hmac()), now())
    };
    assert!(lifetime(86_400).is_ok());
    let err = lifetime(86_401).expect_err("too long");
    assert_eq!(err.code(), "PSYNC_S2104");
    assert_eq!(
        err.description(),
        "Token must expire in a maximum of 86400 seconds, got 86401s"
    );
    // The configured maximum applies.
    let short = Authenticator::new(&ClientAuthConfig {
        max_lifetime_seconds: 300,
        ..config(vec![oct_jwk(None, None)])
    })
    .expect("config");
    let c = with(with(claims(), "iat", json!(NOW)), "exp", json!(NOW + 301));
    assert!(matches!(
        short.verify(&sign(Algorithm::HS256, None, &c, &hmac()), now()),
        Err(AuthError::LifetimeTooLong { max_seconds: 300, .. })
    ));
}

#[test]
fn audience_string_or_array() {
    let a = auth(vec![oct_jwk(None, None)]);
    let with_aud = |aud: Value| {
        a.verify(
            &sign(Algorithm::HS256, None, &with(claims(), "aud", aud), &hmac()),
            now(),
        )
    };
    assert!(with_aud(json!(AUD)).is_ok());
    assert!(with_aud(json!(["other", AUD])).is_ok());
    let missing = with_aud(Value::Null).expect_err("missing");
    assert_eq!(missing, AuthError::MissingAudience);
    assert_eq!(missing.code(), "PSYNC_S2105");
    for wrong in [json!("other"), json!(["x", "y"]), json!([]), json!(42)] {
        let err = with_aud(wrong.clone()).expect_err("wrong aud");
        assert_eq!(err.code(), "PSYNC_S2105", "{wrong}");
        assert!(matches!(err, AuthError::UnexpectedAudience { .. }));
    }
    assert_eq!(
        with_aud(json!("other")).expect_err("wrong").description(),
        r#"Unexpected "aud" claim value: "other""#
    );

    // No configured audience: nothing matches (as in the reference).
    let none = Authenticator::new(&ClientAuthConfig {
        audience: vec![],
        ..config(vec![oct_jwk(None, None)])
    })
    .expect("config");
    assert!(matches!(
        none.verify(&sign(Algorithm::HS256, None, &claims(), &hmac()), now()),
        Err(AuthError::UnexpectedAudience { .. })
    ));
}

#[test]
fn parameters_claim_must_be_an_object() {
    let a = auth(vec![oct_jwk(None, None)]);
    let verify = |parameters: Value| {
        a.verify(
            &sign(
                Algorithm::HS256,
                None,
                &with(claims(), "parameters", parameters),
                &hmac(),
            ),
            now(),
        )
    };
    assert!(verify(json!({"team": "t1"})).is_ok());
    for bad in [json!([1]), json!("x"), json!(3)] {
        let err = verify(bad).expect_err("not an object");
        assert_eq!(err, AuthError::ParametersNotObject);
        assert_eq!(err.code(), "PSYNC_S2101");
    }
}

#[test]
fn token_claims_expose_user_expiry_and_rules_inputs() {
    let a = auth(vec![oct_jwk(None, None)]);
    let c = with(
        with(claims(), "sub", json!(42)),
        "parameters",
        json!({"team": "t1"}),
    );
    let verified = a
        .verify(&sign(Algorithm::HS256, None, &c, &hmac()), now())
        .expect("valid");
    assert_eq!(verified.user_id().0, "42");
    assert_eq!(verified.expires_at_unix(), NOW + 600);
    assert_eq!(verified.expires_at(), now() + Duration::from_secs(600));
    assert_eq!(verified.expires_in_seconds(now()), 600);
    assert_eq!(
        verified.expires_in_seconds(now() + Duration::from_millis(500)),
        600
    );
    assert_eq!(verified.expires_in_seconds(now() + Duration::from_secs(700)), 0);
    assert_eq!(verified.claims().get("parameters"), Some(&json!({"team": "t1"})));
    assert_eq!(verified.payload()["sub"], json!(42));
    let parameters = verified.request_parameters(&json!({}));
    assert_eq!(
        parameters.user_id(),
        &syncgate_rules::SqliteValue::from_json(&json!(42))
    );
    let _ = verified.connection_request(&json!({"x": 1}));
}

#[test]
fn supabase_secret_uses_authenticated_and_a_week() {
    let secret = "super-secret-supabase-jwt-secret-with-at-least-32-characters";
    let cfg = ClientAuthConfig {
        supabase: true,
        supabase_jwt_secret: Some(Secret::new(secret.into())),
        ..config(vec![])
    };
    let a = Authenticator::new(&cfg).expect("config");
    let key = EncodingKey::from_secret(secret.as_bytes());
    let week = with(
        with(with(claims(), "aud", json!("authenticated")), "iat", json!(NOW)),
        "exp",
        json!(NOW + SUPABASE_MAX_LIFETIME_SECONDS),
    );
    assert!(
        a.verify(&sign(Algorithm::HS256, None, &week, &key), now())
            .is_ok()
    );
    // Supabase's kid on HS256 tokens is unknown here: the kid-less secret is tried.
    assert!(
        a.verify(&sign(Algorithm::HS256, Some("abc"), &week, &key), now())
            .is_ok()
    );
    let longer = with(
        week.clone(),
        "exp",
        json!(NOW + SUPABASE_MAX_LIFETIME_SECONDS + 1),
    );
    assert_eq!(
        a.verify(&sign(Algorithm::HS256, None, &longer, &key), now())
            .expect_err("too long")
            .code(),
        "PSYNC_S2104"
    );
    // The key's audience replaces the configured one.
    let configured_aud = with(week.clone(), "aud", json!(AUD));
    assert_eq!(
        a.verify(&sign(Algorithm::HS256, None, &configured_aud, &key), now())
            .expect_err("aud")
            .code(),
        "PSYNC_S2105"
    );
    // Only HS256: the secret is not tried for HS512.
    assert_eq!(
        a.verify(&sign(Algorithm::HS512, None, &week, &key), now()),
        Err(AuthError::NoKey)
    );

    // Without `supabase: true` the secret is a plain kid-less HS256 key with the configured rules.
    let plain = Authenticator::new(&ClientAuthConfig {
        supabase: false,
        ..cfg
    })
    .expect("config");
    assert!(
        plain
            .verify(&sign(Algorithm::HS256, None, &claims(), &key), now())
            .is_ok()
    );
    assert_eq!(
        plain
            .verify(&sign(Algorithm::HS256, None, &week, &key), now())
            .expect_err("aud")
            .code(),
        "PSYNC_S2105"
    );
}

/// The body after the blank line of a golden `error-*.http.txt` capture.
fn golden_body(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/golden")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("golden file");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .or_else(|| text.split_once("\n\n"))
        .expect("headers, blank line, body");
    let body = body.trim_end_matches(['\r', '\n']);
    // The capture's own content-length confirms where the body ends.
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("content-length");
    assert_eq!(length.trim().parse::<usize>().ok(), Some(body.len()), "{name}");
    body.to_owned()
}

#[test]
fn error_bodies_match_the_reference_byte_for_byte() {
    assert_eq!(
        AuthError::Missing.to_error_body(),
        golden_body("error-no-token.http.txt")
    );
    assert_eq!(
        AuthError::Missing.to_error_body(),
        golden_body("error-write-checkpoint-no-token.http.txt")
    );
    assert_eq!(
        AuthError::Expired.to_error_body(),
        golden_body("error-expired-token.http.txt")
    );
    assert_eq!(
        AuthError::BadSignature.to_error_body(),
        golden_body("error-bad-signature.http.txt")
    );
    assert_eq!(
        AuthError::Expired.message_with_code(),
        "[PSYNC_S2103] JWT has expired"
    );
    // The golden captures' token content: the bad-signature one is produced by a kid match.
    let a = auth(vec![oct_jwk(Some("harness-hs256"), Some("HS256"))]);
    let forged = sign(
        Algorithm::HS256,
        Some("harness-hs256"),
        &claims(),
        &EncodingKey::from_secret(b"x"),
    );
    assert_eq!(
        a.verify(&forged, now()).expect_err("forged").to_error_body(),
        golden_body("error-bad-signature.http.txt")
    );
}

#[test]
fn ttl_parsing() {
    assert_eq!(parse_ttl("90s").ok(), Some(Duration::from_secs(90)));
    assert_eq!(parse_ttl("30m").ok(), Some(Duration::from_secs(1800)));
    assert_eq!(parse_ttl("1h").ok(), Some(Duration::from_secs(3600)));
    assert_eq!(parse_ttl("1d").ok(), Some(Duration::from_secs(86_400)));
    assert_eq!(parse_ttl("120").ok(), Some(Duration::from_secs(120)));
    for bad in ["", "0s", "h", "1w", "-1h", "1.5h", "99999999999999999999d"] {
        assert!(parse_ttl(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn minted_tokens_verify() {
    // With an inline `oct` key: its kid and alg, the first audience.
    let cfg = ClientAuthConfig {
        audience: vec![AUD.into(), "second".into()],
        ..config(vec![
            public_jwk(&rsa(), Algorithm::RS256, Some("r"), None),
            oct_jwk(Some("dev"), Some("HS512")),
        ])
    };
    let extra = match json!({"parameters": {"team": "t1"}, "sub": "ignored"}) {
        Value::Object(map) => map,
        _ => unreachable!(),
    };
    let minted = mint_token(&cfg, "user9", extra, Duration::from_secs(3600), now()).expect("mint");
    assert_eq!(minted.kid.as_deref(), Some("dev"));
    assert_eq!(minted.audience, json!(AUD));
    assert_eq!(minted.expires_at, NOW + 3600);
    let header = jsonwebtoken::decode_header(&minted.token).expect("header");
    assert_eq!(header.alg, Algorithm::HS512);
    let verified = Authenticator::new(&cfg)
        .expect("config")
        .verify(&minted.token, now())
        .expect("valid");
    assert_eq!(verified.user_id().0, "user9");
    assert_eq!(verified.claims()["parameters"], json!({"team": "t1"}));

    let too_long = mint_token(&cfg, "u", Map::new(), Duration::from_secs(86_401), now());
    assert!(matches!(too_long, Err(MintError::TtlTooLong { max: 86_400, .. })));

    // Supabase secret: HS256, no kid, `authenticated`, up to a week.
    let supabase = ClientAuthConfig {
        supabase: true,
        supabase_jwt_secret: Some(Secret::new("a-supabase-secret".into())),
        ..config(vec![])
    };
    let week = Duration::from_secs(7 * 86_400);
    let minted = mint_token(&supabase, "u", Map::new(), week, now()).expect("mint");
    assert_eq!(minted.kid, None);
    assert_eq!(minted.audience, json!("authenticated"));
    assert!(
        Authenticator::new(&supabase)
            .expect("config")
            .verify(&minted.token, now())
            .is_ok()
    );

    // Public keys only: nothing to sign with.
    let public_only = config(vec![public_jwk(&rsa(), Algorithm::RS256, None, None)]);
    assert!(matches!(
        mint_token(&public_only, "u", Map::new(), Duration::from_secs(60), now()),
        Err(MintError::NoSecret)
    ));
    // A secret but no audience to put in the token.
    let no_audience = ClientAuthConfig {
        audience: vec![],
        ..config(vec![oct_jwk(None, None)])
    };
    assert!(matches!(
        mint_token(&no_audience, "u", Map::new(), Duration::from_secs(60), now()),
        Err(MintError::NoAudience)
    ));
}

#[test]
fn jwks_documents_keep_only_public_signature_keys() {
    let body = json!({"keys": [
        public_jwk(&rsa(), Algorithm::RS256, Some("ok-rsa"), Some("RS256")),
        oct_jwk(Some("secret"), None),
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
        {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
        "not an object",
        public_jwk(&ed25519(), Algorithm::EdDSA, Some("ok-ed"), None),
    ]});
    let keys = jwks::parse_jwks("test", body.to_string().as_bytes()).expect("document");
    let kids: Vec<_> = keys.iter().map(|k| k.kid.clone().unwrap_or_default()).collect();
    assert_eq!(kids, ["ok-rsa", "ok-ed"]);
    assert!(jwks::parse_jwks("test", b"{}").is_err());
    assert!(jwks::parse_jwks("test", b"<html>").is_err());
}

/// A loopback HTTP server that serves `body` at any path and counts requests.
struct JwksServer {
    uri: String,
    body: Arc<std::sync::Mutex<String>>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(body: Value) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let uri = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().expect("addr")
        );
        let body = Arc::new(std::sync::Mutex::new(body.to_string()));
        let requests = Arc::new(AtomicUsize::new(0));
        let (served, count) = (Arc::clone(&body), Arc::clone(&requests));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let body = served.lock().expect("body").clone();
                tokio::spawn(async move {
                    // Read the request head (a GET has no body), then answer and close.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        JwksServer {
            uri,
            body,
            requests,
            task,
        }
    }

    fn serve(&self, body: Value) {
        *self.body.lock().expect("body") = body.to_string();
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn live_claims() -> Map<String, Value> {
    let now = jsonwebtoken::get_current_timestamp();
    with(with(claims(), "iat", json!(now)), "exp", json!(now + 300))
}

#[tokio::test]
async fn jwks_uri_keys_load_and_rotate() {
    let key1 = public_jwk(&rsa(), Algorithm::RS256, Some("k1"), Some("RS256"));
    let key2 = public_jwk(&ec256(), Algorithm::ES256, Some("k2"), None);
    let server = JwksServer::start(json!({"keys": [key1.clone()]})).await;
    let cfg = ClientAuthConfig {
        jwks_uri: vec![server.uri.clone()],
        ..config(vec![])
    };
    let intervals = RefreshIntervals {
        min: Duration::from_millis(200),
        periodic: Duration::from_secs(3600),
    };
    let a = Authenticator::with_refresh_intervals(&cfg, intervals).expect("config");

    // The first request waits for the initial fetch.
    let t1 = sign(Algorithm::RS256, Some("k1"), &live_claims(), &rsa());
    let ok = a.authenticate(Some(&format!("Token {t1}"))).await.expect("k1");
    assert_eq!(ok.user_id().0, "user1");

    // Rotation: k2 appears at the issuer. The first token naming it fails and asks for a refresh;
    // a later one is accepted.
    server.serve(json!({"keys": [key1, key2]}));
    let t2 = sign(Algorithm::ES256, Some("k2"), &live_claims(), &ec256());
    let header = format!("Bearer {t2}");
    assert_eq!(a.authenticate(Some(&header)).await, Err(AuthError::NoKey));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match a.authenticate(Some(&header)).await {
            Ok(claims) => {
                assert_eq!(claims.user_id().0, "user1");
                break;
            }
            Err(AuthError::NoKey) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(other) => panic!("rotated key not picked up: {other}"),
        }
    }
    // k1 still works; a key removed at the issuer disappears with the next fetch.
    assert!(a.authenticate(Some(&format!("Token {t1}"))).await.is_ok());
    server.serve(json!({"keys": []}));
    assert!(a.refresh_jwks().await.is_empty());
    assert_eq!(
        a.authenticate(Some(&format!("Token {t1}"))).await,
        Err(AuthError::NoKey)
    );
}

#[tokio::test]
async fn unknown_kid_refreshes_are_rate_limited() {
    let server = JwksServer::start(json!({"keys": []})).await;
    let cfg = ClientAuthConfig {
        jwks_uri: vec![server.uri.clone()],
        ..config(vec![])
    };
    let intervals = RefreshIntervals {
        min: Duration::from_millis(500),
        periodic: Duration::from_secs(3600),
    };
    let a = Authenticator::with_refresh_intervals(&cfg, intervals).expect("config");
    a.start_refresh();
    let started = tokio::time::Instant::now();
    let unknown = sign(Algorithm::RS256, Some("nope"), &live_claims(), &rsa());
    // 40 unknown-kid tokens over ~1 s: the refresher fetches at most once per 500 ms.
    for _ in 0..40 {
        assert_eq!(a.verify(&unknown, SystemTime::now()), Err(AuthError::NoKey));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let elapsed = started.elapsed().as_millis();
    let fetches = server.requests.load(Ordering::SeqCst);
    // The start-up fetch, then one per started 500 ms.
    let allowed = 1 + usize::try_from(elapsed / 500).expect("small") + 1;
    assert!(
        fetches >= 2,
        "unknown kids must trigger a refresh ({fetches} fetches)"
    );
    assert!(fetches <= allowed, "{fetches} fetches in {elapsed} ms");
}

#[tokio::test]
async fn unreachable_jwks_uri_keeps_inline_keys_working() {
    // Bind then drop: nothing listens on this port.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let cfg = ClientAuthConfig {
        jwks_uri: vec![format!("http://127.0.0.1:{port}/jwks.json")],
        ..config(vec![oct_jwk(None, None)])
    };
    let intervals = RefreshIntervals {
        min: Duration::from_millis(100),
        periodic: Duration::from_secs(3600),
    };
    let a = Authenticator::with_refresh_intervals(&cfg, intervals).expect("config");
    let errors = a.refresh_jwks().await;
    assert_eq!(errors.len(), 1);
    assert!(errors[0].to_string().contains("127.0.0.1"), "{}", errors[0]);
    let token = sign(Algorithm::HS256, None, &live_claims(), &hmac());
    let started = tokio::time::Instant::now();
    assert!(a.authenticate(Some(&format!("Token {token}"))).await.is_ok());
    // A failed first round does not make requests wait.
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn https_jwks_uri_goes_through_tls() {
    // A plain-HTTP server behind an https:// URL: the TLS handshake fails, and says so.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let uri = format!("https://{}/jwks.json", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        if let Ok((mut socket, _)) = listener.accept().await {
            let _ = socket
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
        }
    });
    let cfg = ClientAuthConfig {
        jwks_uri: vec![uri],
        ..config(vec![])
    };
    let errors = Authenticator::new(&cfg).expect("config").refresh_jwks().await;
    task.abort();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].to_string().contains("TLS"), "{}", errors[0]);
}

#[tokio::test]
async fn http_errors_are_reported_with_their_status() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let uri = format!("http://{}/missing", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        if let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    let cfg = ClientAuthConfig {
        jwks_uri: vec![uri],
        ..config(vec![])
    };
    let errors = Authenticator::new(&cfg).expect("config").refresh_jwks().await;
    task.abort();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].to_string().contains("404"), "{}", errors[0]);
}
