//! The `keyless` binary in front of a mock Azure, with the real managed identity
//! credential against a fake identity endpoint and a config file of the test's own.

use super::identity::FakeIdentity;
use super::{KeylessProcess, spawn_keyless};
use std::io::Write as _;
use std::time::Duration;

/// keyless (the binary) in front of a mock, with its config file and identity.
pub struct Running {
    pub keyless: KeylessProcess,
    _identity: FakeIdentity,
    _config: tempfile::NamedTempFile,
}

impl Running {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.keyless.url()
    }
}

/// Starts keyless in front of `endpoint` with `toml` as its config file and `args`, and
/// waits until it holds its first token (no test measures an acquisition).
pub async fn start(endpoint: &str, toml: &str, args: &[&str]) -> Running {
    let identity =
        FakeIdentity::start("probe-header", Duration::ZERO, |n| format!("tok-{n}")).await;
    let mut config = tempfile::NamedTempFile::new().unwrap();
    config.write_all(toml.as_bytes()).unwrap();
    let mut all: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--endpoint",
        endpoint,
        "--credential",
        "managed-identity",
        "--config",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    all.push(config.path().display().to_string());
    all.extend(args.iter().map(|s| s.to_string()));
    let id_url = identity.url.clone();
    let keyless = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        spawn_keyless(
            &args,
            &[
                ("IDENTITY_ENDPOINT", &id_url),
                ("IDENTITY_HEADER", "probe-header"),
                ("KEYLESS_LOG", "info"),
            ],
        )
    })
    .await
    .unwrap();
    let running = Running {
        keyless,
        _identity: identity,
        _config: config,
    };
    super::wait_ready(&running.url(), Duration::from_secs(30), || {
        running.keyless.report()
    })
    .await;
    running
}
