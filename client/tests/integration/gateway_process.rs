//! The real `syncgate serve` binary for the client's end-to-end tests (through
//! `syncgate_test_support::serve`, shared with the gateway's own tests), and tokens signed with its key.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

pub use syncgate_test_support::serve::ServeProcess as GatewayProcess;
use syncgate_test_support::serve::{JWT_AUD, JWT_KID, JWT_SECRET};

/// The `syncgate` binary of this workspace, next to the test binary's directory (`target/<profile>/`).
/// Built (a no-op when up to date) before use: a lone `cargo test -p syncgate-client` does not build
/// it, and an old one would test old gateway code.
fn syncgate_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test binary path");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("test binary lives in target/<profile>/deps");
            let mut args = vec!["build", "-p", "syncgate", "--bin", "syncgate"];
            if profile_dir.ends_with("release") {
                args.push("--release");
            }
            let cargo = option_env!("CARGO").unwrap_or("cargo");
            let status = Command::new(cargo)
                .args(&args)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building the syncgate binary failed");
            profile_dir.join("syncgate")
        })
        .clone()
}

/// `syncgate serve` of this workspace on a free port (see [`GatewayProcess::start`]), logging at `info`.
pub fn start_gateway(dir: &Path, uri: &str, rules: &Path, slot_prefix: &str) -> GatewayProcess {
    GatewayProcess::start(syncgate_binary(), dir, uri, rules, slot_prefix, "info")
}

/// A token for `sub` valid for an hour, signed with the test key.
pub fn token(sub: &str) -> String {
    let now = unix_now();
    token_expiring_at(sub, now, now + 3600)
}

/// A token for `sub` issued at `iat`, expiring at `exp` (seconds since the epoch), signed with the test key.
pub fn token_expiring_at(sub: &str, iat: u64, exp: u64) -> String {
    let claims = serde_json::json!({"sub": sub, "aud": JWT_AUD, "iat": iat, "exp": exp});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(JWT_KID.to_owned());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET),
    )
    .expect("sign")
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}
