//! Why a token was refused, as the client sees it: a `PSYNC_S21xx` code, HTTP 401 and the
//! reference service's JSON error body.

/// A token (or its absence) that does not authenticate a request. Every variant is HTTP 401.
///
/// `Display` is the reference service's description, so it can go straight into an error body or an
/// RSocket ERROR frame (see [`AuthError::message_with_code`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header, or one not of the form `Token <jwt>` / `Bearer <jwt>`.
    #[error("Authentication required")]
    Missing,
    /// Not three base64url parts, or a header/payload that is not a JSON object.
    #[error("Token is not a well-formed JWT. Check the token format.")]
    Malformed,
    /// `alg` is `none`, unknown, or one syncgate cannot verify (ES512).
    #[error("{0}")]
    UnsupportedAlgorithm(String),
    /// The key with the token's `kid` does not do the token's `alg`.
    #[error("Unexpected token algorithm {alg}")]
    AlgorithmMismatch { alg: String },
    /// No configured key has the token's `kid`, and no kid-less key of the algorithm's family
    /// verifies the signature.
    #[error(
        "Could not find an appropriate key in the keystore. The key is missing or no key matched the token KID"
    )]
    NoKey,
    /// The key with the token's `kid` does not verify the signature.
    #[error("signature verification failed")]
    BadSignature,
    /// A critical header extension (`crit`) syncgate does not implement.
    #[error("Unsupported critical header parameter {0:?}")]
    UnsupportedCritical(String),
    /// `sub`, `iat` or `exp` is absent.
    #[error("JWT payload is missing a required claim \"{0}\"")]
    MissingClaim(&'static str),
    /// A registered claim of the wrong type (`exp` not a number, `sub` an object, …).
    #[error("\"{claim}\" claim must be {expected}")]
    InvalidClaim {
        claim: &'static str,
        expected: &'static str,
    },
    /// `exp` (plus the clock tolerance) is in the past.
    #[error("JWT has expired")]
    Expired,
    /// `nbf` (minus the clock tolerance) is in the future.
    #[error("\"nbf\" claim timestamp check failed")]
    NotYetValid,
    /// `exp - iat` exceeds the key's maximum lifetime.
    #[error("Token must expire in a maximum of {max_seconds} seconds, got {lifetime_seconds}s")]
    LifetimeTooLong { max_seconds: u64, lifetime_seconds: f64 },
    /// No `aud` claim.
    #[error("JWT payload is missing a required claim \"aud\"")]
    MissingAudience,
    /// `aud` names none of the accepted audiences. `aud` is the claim as JSON.
    #[error("Unexpected \"aud\" claim value: {aud}")]
    UnexpectedAudience { aud: String },
    /// The legacy `parameters` claim is present but not a JSON object.
    #[error("Payload parameters must be an object")]
    ParametersNotObject,
}

impl AuthError {
    /// The reference service's error code (`PSYNC_S21xx`); the client invalidates its credentials
    /// when it sees `PSYNC_S21` in an RSocket error message.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "PSYNC_S2106",
            AuthError::Expired => "PSYNC_S2103",
            AuthError::LifetimeTooLong { .. } => "PSYNC_S2104",
            AuthError::MissingAudience | AuthError::UnexpectedAudience { .. } => "PSYNC_S2105",
            AuthError::Malformed
            | AuthError::UnsupportedAlgorithm(_)
            | AuthError::AlgorithmMismatch { .. }
            | AuthError::NoKey
            | AuthError::BadSignature
            | AuthError::UnsupportedCritical(_)
            | AuthError::MissingClaim(_)
            | AuthError::InvalidClaim { .. }
            | AuthError::NotYetValid
            | AuthError::ParametersNotObject => "PSYNC_S2101",
        }
    }

    /// Always 401 Unauthorized.
    pub fn status(&self) -> u16 {
        401
    }

    /// The human-readable description (the body's `description`).
    pub fn description(&self) -> String {
        self.to_string()
    }

    /// `[PSYNC_S2103] JWT has expired`: for RSocket ERROR frames, where the client looks for the code
    /// inside the message.
    pub fn message_with_code(&self) -> String {
        format!("[{}] {}", self.code(), self)
    }

    /// The reference service's 401 body, byte for byte in its key order:
    /// `{"error":{"code":"PSYNC_S2103","status":401,"description":"JWT has expired","name":"AuthorizationError"}}`.
    pub fn to_error_body(&self) -> String {
        let mut error = serde_json::Map::new();
        error.insert("code".into(), self.code().into());
        error.insert("status".into(), self.status().into());
        error.insert("description".into(), self.description().into());
        error.insert("name".into(), "AuthorizationError".into());
        let mut body = serde_json::Map::new();
        body.insert("error".into(), serde_json::Value::Object(error));
        serde_json::Value::Object(body).to_string()
    }
}

/// A `client_auth` setting the gateway cannot use; start-up fails with it.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("client_auth.jwks.keys[{index}]{}: {reason}", kid_suffix(.kid))]
    InlineKey {
        index: usize,
        kid: Option<String>,
        reason: String,
    },
    #[error("client_auth.supabase_jwt_secret: {0}")]
    SupabaseSecret(String),
    #[error("cannot build the HTTP client for client_auth.jwks_uri: {0}")]
    HttpClient(String),
}

fn kid_suffix(kid: &Option<String>) -> String {
    kid.as_ref().map(|k| format!(" (kid {k:?})")).unwrap_or_default()
}

/// Fetching or reading one `jwks_uri` failed; the previous keys of that URI stay in use.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("fetching {uri}: {message}")]
    Fetch { uri: String, message: String },
    #[error("{uri} is not a JWKS document ({{\"keys\": [...]}}): {message}")]
    Document { uri: String, message: String },
}
