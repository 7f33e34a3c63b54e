//! Client authentication: verifies the JWT a client sends (`Authorization: Token <jwt>` over HTTP,
//! `"token": "Token <jwt>"` in RSocket setup metadata) the way the PowerSync service does
//! (PROTOCOL.md §5), and mints development tokens for `syncgate token`.
//!
//! Keys come from `client_auth` (docs/config.md): inline JWKs, `jwks_uri` key sets (fetched in the
//! background, see [`Authenticator::start_refresh`]) and the Supabase shared secret. A token is
//! accepted when
//! * its `alg` is one of HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA (never
//!   `none`; ES512 is refused: the JWT library cannot verify P-521),
//! * a key verifies its signature — the key with the token's `kid` if there is one (its `alg` must
//!   match), else any kid-less key of the algorithm's family,
//! * it has `sub` (string or number), `iat`, `exp` and an `aud` naming an accepted audience,
//! * `exp`/`nbf` hold within [`CLOCK_TOLERANCE_SECONDS`], `exp - iat` is within the key's maximum
//!   lifetime, and a `parameters` claim, if any, is a JSON object.
//!
//! Refusals are [`AuthError`]s carrying the reference service's `PSYNC_S21xx` codes and bodies.

mod error;
mod http;
mod jwks;
mod keys;
mod mint;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use syncgate_protocol::UserId;
use syncgate_rules::{ConnectionRequest, RequestParameters};

use crate::config::ClientAuthConfig;
pub use error::{AuthConfigError, AuthError, JwksError};
pub use jwks::{MIN_REFRESH_INTERVAL, PERIODIC_REFRESH_INTERVAL, RefreshIntervals};
use jwks::{RefreshTask, RemoteKeys};
use keys::{KeySpec, parse_algorithm};
pub use keys::{SUPABASE_AUDIENCE, SUPABASE_MAX_LIFETIME_SECONDS};
pub use mint::{MintError, MintedToken, mint_token, parse_ttl};

/// Clock skew allowed on `exp` and `nbf` (the reference's value).
pub const CLOCK_TOLERANCE_SECONDS: u64 = 60;
/// How long [`Authenticator::authenticate`] waits for the first `jwks_uri` fetch round before
/// verifying with the keys it has: right after start-up, a valid token should not fail for want of
/// keys. Only the first round is awaited; an unreachable issuer does not slow every request.
pub const INITIAL_FETCH_WAIT: Duration = Duration::from_secs(5);

/// The JWT in an `Authorization` header (or RSocket `token` metadata): `^(Token|Bearer) (\S+)$`.
pub fn token_from_header(header: &str) -> Option<&str> {
    let token = header
        .strip_prefix("Token ")
        .or_else(|| header.strip_prefix("Bearer "))?;
    // `\S+` up to the end: one or more characters, none of them whitespace.
    (!token.is_empty() && !token.chars().any(char::is_whitespace)).then_some(token)
}

/// A verified token: who the user is, until when, and every claim (for the sync rules).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenClaims {
    user_id: UserId,
    expires_at: SystemTime,
    claims: Map<String, Value>,
}

impl TokenClaims {
    /// `sub`, stringified if it was a number: the key of write checkpoints.
    pub fn user_id(&self) -> &UserId {
        &self.user_id
    }

    /// `exp`.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// `exp` in whole seconds since the Unix epoch (fractions dropped).
    pub fn expires_at_unix(&self) -> u64 {
        self.expires_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// Seconds until `exp`, rounded up and never negative: the `token_expires_in` line's value.
    pub fn expires_in_seconds(&self, now: SystemTime) -> i32 {
        let left = self.expires_at.duration_since(now).unwrap_or(Duration::ZERO);
        let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        i32::try_from(seconds).unwrap_or(i32::MAX)
    }

    /// The whole payload, as verified (`auth.parameters()`, `request.jwt()`).
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// The payload as a JSON value, the form the rules crate takes.
    pub fn payload(&self) -> Value {
        Value::Object(self.claims.clone())
    }

    /// Bucket-resolution parameters for this token and the client's (unauthenticated) parameters.
    /// The rules see `sub` as sent (a numeric `sub` stays a number there, as in the reference).
    pub fn request_parameters(&self, client_parameters: &Value) -> RequestParameters {
        RequestParameters::new(&self.payload(), client_parameters)
    }

    /// A connection request with default subscriptions; the caller adds the stream subscriptions.
    pub fn connection_request(&self, client_parameters: &Value) -> ConnectionRequest {
        ConnectionRequest::new(&self.payload(), client_parameters)
    }
}

/// Verifies client tokens against the configured keys. Cheap to share behind an `Arc`.
pub struct Authenticator {
    static_keys: Vec<KeySpec>,
    remote: Option<Arc<RemoteKeys>>,
    audiences: Vec<String>,
    max_lifetime_seconds: u64,
    refresher: RefreshTask,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field(
                "static_keys",
                &self
                    .static_keys
                    .iter()
                    .map(|k| &k.description)
                    .collect::<Vec<_>>(),
            )
            .field("jwks_uri", &self.remote.is_some())
            .field("audiences", &self.audiences)
            .field("max_lifetime_seconds", &self.max_lifetime_seconds)
            .finish()
    }
}

impl Authenticator {
    /// Builds the key store from `client_auth`. Fails on a key it cannot use (bad base64, unknown
    /// `kty`, unsupported curve, `alg` of another family). Does no I/O: `jwks_uri` keys are fetched
    /// by [`Authenticator::start_refresh`] (or on the first [`Authenticator::authenticate`]).
    pub fn new(config: &ClientAuthConfig) -> Result<Authenticator, AuthConfigError> {
        Self::with_refresh_intervals(config, RefreshIntervals::default())
    }

    /// [`Authenticator::new`] with other `jwks_uri` refresh intervals (tests shorten them).
    pub fn with_refresh_intervals(
        config: &ClientAuthConfig,
        intervals: RefreshIntervals,
    ) -> Result<Authenticator, AuthConfigError> {
        let mut static_keys = Vec::new();
        for (index, jwk) in config.jwks.iter().enumerate() {
            let key = KeySpec::from_jwk(&jwk.members, true).map_err(|reason| AuthConfigError::InlineKey {
                index,
                kid: jwk.kid.clone(),
                reason,
            })?;
            static_keys.push(key);
        }
        if let Some(secret) = &config.supabase_jwt_secret {
            if secret.expose().is_empty() {
                return Err(AuthConfigError::SupabaseSecret("the secret is empty".into()));
            }
            static_keys.push(KeySpec::shared_secret(secret.expose(), config.supabase));
        }
        let remote = if config.jwks_uri.is_empty() {
            None
        } else {
            let remote =
                RemoteKeys::new(config.jwks_uri.clone(), intervals).map_err(AuthConfigError::HttpClient)?;
            Some(Arc::new(remote))
        };
        let audience_free_keys = static_keys.iter().any(|k| k.audience.is_none()) || remote.is_some();
        if config.audience.is_empty() && audience_free_keys {
            // PowerSync accepts no token without an audience match either; say so up front.
            tracing::warn!(
                "client_auth.audience is empty: tokens verified by client_auth.jwks or jwks_uri keys \
                 will all be refused (PSYNC_S2105); set the audience your tokens carry"
            );
        }
        if static_keys.is_empty() && remote.is_none() {
            tracing::warn!("client_auth configures no keys: every client token will be refused");
        }
        Ok(Authenticator {
            static_keys,
            remote,
            audiences: config.audience.clone(),
            max_lifetime_seconds: config.max_lifetime_seconds,
            refresher: RefreshTask::default(),
        })
    }

    /// Starts the background `jwks_uri` fetcher on the current tokio runtime: fetches now
    /// (failures are logged and retried), then periodically and when a token names an unknown key.
    /// Idempotent; a no-op without `jwks_uri`. Stops when the authenticator is dropped. Outside a
    /// tokio runtime it only logs an error (no keys are fetched).
    pub fn start_refresh(&self) {
        let Some(remote) = &self.remote else {
            return;
        };
        if self.refresher.0.get().is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                "jwks_uri keys cannot be fetched: start_refresh was called outside a tokio runtime"
            );
            return;
        };
        self.refresher.0.get_or_init(|| {
            runtime
                .spawn(jwks::refresh_loop(Arc::clone(remote)))
                .abort_handle()
        });
    }

    /// Fetches every `jwks_uri` once, now; returns the URIs that failed (their old keys stay).
    pub async fn refresh_jwks(&self) -> Vec<JwksError> {
        match &self.remote {
            Some(remote) => remote.refresh().await,
            None => Vec::new(),
        }
    }

    /// Authenticates a request by its `Authorization` header (or RSocket `token` metadata, which
    /// has the same `Token <jwt>` form).
    pub async fn authenticate(&self, authorization_header: Option<&str>) -> Result<TokenClaims, AuthError> {
        let token = authorization_header
            .and_then(token_from_header)
            .ok_or(AuthError::Missing)?;
        if let Some(remote) = &self.remote {
            self.start_refresh();
            if !remote.has_tried() {
                remote.wait_first_round(INITIAL_FETCH_WAIT).await;
            }
        }
        self.verify(token, SystemTime::now())
    }

    /// Verifies a bare JWT at time `now`. A token naming no known key asks for a background
    /// `jwks_uri` refresh (rate limited), so a rotated key is found by a later request.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<TokenClaims, AuthError> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let header = decode_object(header_b64)?;
        let payload = decode_object(payload_b64)?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(AuthError::Malformed)?;
        let alg = parse_algorithm(alg).map_err(AuthError::UnsupportedAlgorithm)?;
        let kid = match header.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(AuthError::Malformed),
        };
        // No JWS extension is implemented, so any critical one must be refused (RFC 7515 §4.1.11).
        if let Some(crit) = header.get("crit") {
            let first = crit.as_array().and_then(|c| c.first());
            return Err(AuthError::UnsupportedCritical(first.map_or_else(
                || crit.to_string(),
                |c| c.as_str().map_or(c.to_string(), str::to_owned),
            )));
        }
        let message = &token[..header_b64.len() + 1 + payload_b64.len()];
        let remote = self.remote.as_ref().map(|r| r.snapshot()).unwrap_or_default();
        let keys = || {
            self.static_keys
                .iter()
                .chain(remote.iter().flat_map(|keys| keys.iter()))
        };
        let key = self.select_key(keys, kid, alg, message, signature)?;
        self.check_claims(payload, key, now)
    }

    /// PROTOCOL.md §5 key choice: the key with the token's `kid`, else every kid-less key of the
    /// algorithm's family.
    fn select_key<'k, I: Iterator<Item = &'k KeySpec>>(
        &self,
        keys: impl Fn() -> I,
        kid: Option<&str>,
        alg: Algorithm,
        message: &str,
        signature: &str,
    ) -> Result<&'k KeySpec, AuthError> {
        let verifies = |key: &KeySpec| {
            jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key.key, alg).unwrap_or(false)
        };
        if let Some(kid) = kid
            && let Some(key) = keys().find(|k| k.kid.as_deref() == Some(kid))
        {
            if !key.algorithms.contains(&alg) {
                return Err(AuthError::AlgorithmMismatch {
                    alg: format!("{alg:?}"),
                });
            }
            return if verifies(key) {
                Ok(key)
            } else {
                Err(AuthError::BadSignature)
            };
        }
        if let Some(key) = keys().find(|k| k.kid.is_none() && k.algorithms.contains(&alg) && verifies(k)) {
            return Ok(key);
        }
        if let Some(remote) = &self.remote {
            remote.request_refresh();
        }
        tracing::debug!(
            kid,
            known_keys = %keys().map(|k| k.description.as_str()).collect::<Vec<_>>().join("; "),
            "no key for a client token"
        );
        Err(AuthError::NoKey)
    }

    fn check_claims(
        &self,
        claims: Map<String, Value>,
        key: &KeySpec,
        now: SystemTime,
    ) -> Result<TokenClaims, AuthError> {
        let user_id = match claims.get("sub") {
            None | Some(Value::Null) => return Err(AuthError::MissingClaim("sub")),
            Some(Value::String(sub)) => sub.clone(),
            Some(Value::Number(sub)) => sub.to_string(),
            Some(_) => {
                return Err(AuthError::InvalidClaim {
                    claim: "sub",
                    expected: "a string or a number",
                });
            }
        };
        let iat = numeric_date(&claims, "iat")?.ok_or(AuthError::MissingClaim("iat"))?;
        let exp = numeric_date(&claims, "exp")?.ok_or(AuthError::MissingClaim("exp"))?;
        let nbf = numeric_date(&claims, "nbf")?;
        let now = now.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        // The tolerance is a small exact integer; the conversion is lossless.
        let tolerance = CLOCK_TOLERANCE_SECONDS as f64;
        if nbf.is_some_and(|nbf| nbf > now + tolerance) {
            return Err(AuthError::NotYetValid);
        }
        if exp <= now - tolerance {
            return Err(AuthError::Expired);
        }

        let accepted = key.audience.as_deref().unwrap_or(&self.audiences);
        let matches = |aud: &Value| aud.as_str().is_some_and(|aud| accepted.iter().any(|a| a == aud));
        match claims.get("aud") {
            None | Some(Value::Null) => return Err(AuthError::MissingAudience),
            Some(Value::Array(items)) if items.iter().any(matches) => {}
            Some(aud @ Value::String(_)) if matches(aud) => {}
            Some(aud) => return Err(AuthError::UnexpectedAudience { aud: aud.to_string() }),
        }

        let max_seconds = key.max_lifetime_seconds.unwrap_or(self.max_lifetime_seconds);
        let lifetime = exp - iat;
        // u64 → f64 is exact for any lifetime a config can sensibly hold (< 2^53 s).
        if lifetime > max_seconds as f64 {
            return Err(AuthError::LifetimeTooLong {
                max_seconds,
                lifetime_seconds: lifetime,
            });
        }

        match claims.get("parameters") {
            None | Some(Value::Null) | Some(Value::Object(_)) => {}
            Some(_) => return Err(AuthError::ParametersNotObject),
        }

        let expires_at = Duration::try_from_secs_f64(exp.max(0.0))
            .ok()
            .and_then(|d| UNIX_EPOCH.checked_add(d))
            .ok_or(AuthError::InvalidClaim {
                claim: "exp",
                expected: "a NumericDate (seconds since 1970)",
            })?;
        Ok(TokenClaims {
            user_id: UserId(user_id),
            expires_at,
            claims,
        })
    }
}

/// A base64url JSON object (a JWS header or payload).
fn decode_object(part: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| AuthError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AuthError::Malformed),
    }
}

/// A NumericDate claim (`iat`, `exp`, `nbf`): absent, or a JSON number of seconds.
fn numeric_date(claims: &Map<String, Value>, claim: &'static str) -> Result<Option<f64>, AuthError> {
    match claims.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            n.as_f64()
                .filter(|v| v.is_finite())
                .map(Some)
                .ok_or(AuthError::InvalidClaim {
                    claim,
                    expected: "a number",
                })
        }
        Some(_) => Err(AuthError::InvalidClaim {
            claim,
            expected: "a number",
        }),
    }
}
