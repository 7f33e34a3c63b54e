//! Development tokens (`syncgate token`): signed with the config's shared secret so that the
//! gateway's own [`super::Authenticator`] accepts them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Map, Value};

use super::keys::{SUPABASE_AUDIENCE, SUPABASE_MAX_LIFETIME_SECONDS, parse_algorithm};
use crate::config::ClientAuthConfig;

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error(
        "no shared secret to sign with: add an `oct` key to client_auth.jwks, or set \
         client_auth.supabase_jwt_secret (or SYNCGATE_JWT_SECRET)"
    )]
    NoSecret,
    #[error("client_auth.audience is empty: set the audience the gateway accepts, tokens must carry it")]
    NoAudience,
    #[error("the `oct` key client_auth.jwks.keys[{index}] is unusable: {reason}")]
    BadKey { index: usize, reason: String },
    #[error("--ttl {ttl}s exceeds the maximum token lifetime of {max}s the gateway accepts")]
    TtlTooLong { ttl: u64, max: u64 },
    #[error("bad --ttl {0:?}: use a positive whole number with a unit, e.g. 90s, 30m, 1h, 1d")]
    BadTtl(String),
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// A signed token and what went into it.
#[derive(Debug, Clone)]
pub struct MintedToken {
    pub token: String,
    pub kid: Option<String>,
    pub audience: Value,
    pub expires_at: u64,
}

fn jwk_family_is_not_hmac(alg: jsonwebtoken::Algorithm) -> bool {
    !matches!(
        alg,
        jsonwebtoken::Algorithm::HS256 | jsonwebtoken::Algorithm::HS384 | jsonwebtoken::Algorithm::HS512
    )
}

/// `90s`, `30m`, `1h`, `1d` (a bare number is seconds).
pub fn parse_ttl(text: &str) -> Result<Duration, MintError> {
    let bad = || MintError::BadTtl(text.to_owned());
    let trimmed = text.trim();
    let (digits, unit) = match trimmed.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => trimmed.split_at(at),
        None => (trimmed, "s"),
    };
    let value: u64 = digits.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    match value.checked_mul(scale) {
        Some(seconds) if seconds > 0 => Ok(Duration::from_secs(seconds)),
        _ => Err(bad()),
    }
}

/// Signs a token for user `sub` valid for `ttl` from `now`, with the first `oct` key of
/// `client_auth.jwks` (its `kid` and `alg`, HS256 if it has none) or else the Supabase secret.
/// `aud` is the first configured audience (`authenticated` for a Supabase secret) unless
/// `extra_claims` has one; `sub`, `iat` and `exp` are always set here.
pub fn mint_token(
    config: &ClientAuthConfig,
    sub: &str,
    extra_claims: Map<String, Value>,
    ttl: Duration,
    now: SystemTime,
) -> Result<MintedToken, MintError> {
    let oct = config.jwks.iter().enumerate().find(|(_, jwk)| jwk.kty == "oct");
    let (mut header, key, default_audience, max) = if let Some((index, jwk)) = oct {
        let bad_key = |reason: String| MintError::BadKey { index, reason };
        let alg = parse_algorithm(jwk.alg.as_deref().unwrap_or("HS256")).map_err(bad_key)?;
        if jwk_family_is_not_hmac(alg) {
            return Err(bad_key(format!("`alg` {alg:?} is not an HMAC algorithm")));
        }
        let k = jwk.members.get("k").and_then(Value::as_str).unwrap_or_default();
        let secret = URL_SAFE_NO_PAD
            .decode(k.trim_end_matches('='))
            .map_err(|e| bad_key(format!("`k` is not base64url: {e}")))?;
        let mut header = Header::new(alg);
        header.kid.clone_from(&jwk.kid);
        let audience = config.audience.first().cloned();
        (
            header,
            EncodingKey::from_secret(&secret),
            audience,
            config.max_lifetime_seconds,
        )
    } else if let Some(secret) = &config.supabase_jwt_secret {
        let (audience, max) = if config.supabase {
            (Some(SUPABASE_AUDIENCE.to_owned()), SUPABASE_MAX_LIFETIME_SECONDS)
        } else {
            (config.audience.first().cloned(), config.max_lifetime_seconds)
        };
        let header = Header::new(jsonwebtoken::Algorithm::HS256);
        (
            header,
            EncodingKey::from_secret(secret.expose().as_bytes()),
            audience,
            max,
        )
    } else {
        return Err(MintError::NoSecret);
    };
    header.typ = Some("JWT".into());

    let ttl_seconds = ttl.as_secs();
    if ttl_seconds > max {
        return Err(MintError::TtlTooLong {
            ttl: ttl_seconds,
            max,
        });
    }
    let iat = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let expires_at = iat.saturating_add(ttl_seconds);
    let mut claims = extra_claims;
    let audience = match claims.get("aud") {
        Some(aud) => aud.clone(),
        None => Value::String(default_audience.ok_or(MintError::NoAudience)?),
    };
    claims.insert("sub".into(), Value::String(sub.to_owned()));
    claims.insert("aud".into(), audience.clone());
    claims.insert("iat".into(), iat.into());
    claims.insert("exp".into(), expires_at.into());
    let token = jsonwebtoken::encode(&header, &Value::Object(claims), &key)?;
    Ok(MintedToken {
        token,
        kid: header.kid,
        audience,
        expires_at,
    })
}
