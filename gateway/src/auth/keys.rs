//! Verification keys: a JWK turned into a key, the algorithms it may verify, and the audience and
//! lifetime rules that come with it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

/// Supabase shared-secret tokens live up to a week; the reference allows 7 days + 20 minutes.
pub const SUPABASE_MAX_LIFETIME_SECONDS: u64 = 7 * 86_400 + 20 * 60;
/// The audience Supabase puts in its user tokens.
pub const SUPABASE_AUDIENCE: &str = "authenticated";

/// Parses a JWS `alg` value into one syncgate verifies. `ES512` and `none` are errors with a reason.
pub(crate) fn parse_algorithm(alg: &str) -> Result<Algorithm, String> {
    Ok(match alg {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        // The JWT library (jsonwebtoken) has no P-521 support: documented in docs/auth.md.
        "ES512" => return Err("Unsupported token algorithm ES512: syncgate cannot verify ES512 (P-521) tokens; use ES256, ES384, RS*, PS*, EdDSA or HS*".into()),
        "none" => return Err("Unsupported token algorithm none: unsigned tokens are never accepted".into()),
        other => return Err(format!("Unsupported token algorithm {other}")),
    })
}

/// One key a token may be verified with.
#[derive(Clone)]
pub(crate) struct KeySpec {
    pub kid: Option<String>,
    /// The algorithms this key verifies: its `alg` if set, else every algorithm of its family.
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
    /// Replaces the configured audiences for tokens this key verifies (Supabase: `authenticated`).
    pub audience: Option<Vec<String>>,
    /// Replaces the configured maximum lifetime (Supabase: 7 days + 20 minutes).
    pub max_lifetime_seconds: Option<u64>,
    /// `kid=…, kty=…, alg=…` for logs; never key material.
    pub description: String,
}

impl KeySpec {
    /// A key from a JWK object. `allow_oct` is false for keys fetched from a `jwks_uri` (only public
    /// keys are trusted from there). The error is a reason for the operator.
    pub fn from_jwk(members: &Map<String, Value>, allow_oct: bool) -> Result<KeySpec, String> {
        let text = |name: &str| -> Result<Option<&str>, String> {
            match members.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(format!("`{name}` must be a string")),
            }
        };
        let kty = text("kty")?.ok_or("`kty` is missing")?;
        let kid = text("kid")?.map(str::to_owned);
        let alg = text("alg")?;
        if let Some(key_use) = text("use")?
            && key_use != "sig"
        {
            return Err(format!(
                "`use` is {key_use:?}; only signature keys (`sig`) verify tokens"
            ));
        }
        let required = |name: &str| -> Result<&str, String> {
            let value = text(name)?.ok_or_else(|| format!("`{name}` is missing"))?;
            match URL_SAFE_NO_PAD.decode(value.trim_end_matches('=')) {
                Ok(bytes) if !bytes.is_empty() => Ok(value),
                Ok(_) => Err(format!("`{name}` is empty")),
                Err(e) => Err(format!("`{name}` is not base64url: {e}")),
            }
        };
        let (family, key): (&[Algorithm], DecodingKey) = match kty {
            "oct" if allow_oct => {
                let k = required("k")?;
                let secret = URL_SAFE_NO_PAD
                    .decode(k.trim_end_matches('='))
                    .map_err(|e| format!("`k` is not base64url: {e}"))?;
                (
                    &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
                    DecodingKey::from_secret(&secret),
                )
            }
            "oct" => return Err("shared secrets (`oct`) are not accepted from a jwks_uri".into()),
            "RSA" => {
                let key = DecodingKey::from_rsa_components(required("n")?, required("e")?)
                    .map_err(|e| format!("bad RSA components: {e}"))?;
                let family: &[Algorithm] = &[
                    Algorithm::RS256,
                    Algorithm::RS384,
                    Algorithm::RS512,
                    Algorithm::PS256,
                    Algorithm::PS384,
                    Algorithm::PS512,
                ];
                (family, key)
            }
            "EC" => {
                // A curve does exactly one ES algorithm.
                let family: &[Algorithm] = match text("crv")? {
                    Some("P-256") => &[Algorithm::ES256],
                    Some("P-384") => &[Algorithm::ES384],
                    Some("P-521") => {
                        return Err(
                            "P-521 (ES512) keys are not supported by syncgate (see docs/auth.md)".into(),
                        );
                    }
                    Some(other) => {
                        return Err(format!("unsupported EC curve {other:?} (use P-256 or P-384)"));
                    }
                    None => return Err("`crv` is missing".into()),
                };
                let key = DecodingKey::from_ec_components(required("x")?, required("y")?)
                    .map_err(|e| format!("bad EC components: {e}"))?;
                (family, key)
            }
            "OKP" => {
                match text("crv")? {
                    Some("Ed25519") => {}
                    Some(other) => return Err(format!("unsupported OKP curve {other:?} (only Ed25519)")),
                    None => return Err("`crv` is missing".into()),
                }
                let key = DecodingKey::from_ed_components(required("x")?)
                    .map_err(|e| format!("bad Ed25519 key: {e}"))?;
                (&[Algorithm::EdDSA], key)
            }
            other => return Err(format!("unsupported `kty` {other:?} (RSA, EC, OKP or oct)")),
        };
        let algorithms = match alg {
            None => family.to_vec(),
            Some(alg) => {
                let parsed = parse_algorithm(alg)?;
                if !family.contains(&parsed) {
                    return Err(format!("`alg` {alg} does not fit a `{kty}` key"));
                }
                vec![parsed]
            }
        };
        // Parse the key material now, so a bad key fails at start-up rather than on the first
        // token: the verifier is built (and a point or key decoded) before any signature check.
        for algorithm in &algorithms {
            jsonwebtoken::crypto::verify("AA", b"", &key, *algorithm)
                .map_err(|e| format!("unusable {kty} key: {e}"))?;
        }
        let description = format!(
            "kid={}, kty={kty}, alg={}",
            kid.as_deref().unwrap_or("(none)"),
            alg.unwrap_or("(any of its family)")
        );
        Ok(KeySpec {
            kid,
            algorithms,
            key,
            audience: None,
            max_lifetime_seconds: None,
            description,
        })
    }

    /// The Supabase project's JWT secret: HS256 over the raw UTF-8 string, no `kid`.
    pub fn shared_secret(secret: &str, supabase: bool) -> KeySpec {
        KeySpec {
            kid: None,
            algorithms: vec![Algorithm::HS256],
            key: DecodingKey::from_secret(secret.as_bytes()),
            audience: supabase.then(|| vec![SUPABASE_AUDIENCE.to_owned()]),
            max_lifetime_seconds: supabase.then_some(SUPABASE_MAX_LIFETIME_SECONDS),
            description: format!(
                "kid=(none), kty=oct, alg=HS256 ({})",
                if supabase {
                    "supabase_jwt_secret"
                } else {
                    "shared secret"
                }
            ),
        }
    }
}
