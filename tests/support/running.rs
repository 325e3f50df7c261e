//! The `keyless` binary in front of a mock Azure, with the real managed identity
//! credential against a fake identity endpoint and a config file of the test's own.

use super::KeylessProcess;
use super::identity::FakeIdentity;
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
    start_with(endpoint, toml, args, &[]).await
}

/// [`start`], with more environment variables for keyless.
pub async fn start_with(
    endpoint: &str,
    toml: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Running {
    let identity =
        FakeIdentity::start("probe-header", Duration::ZERO, |n| format!("tok-{n}")).await;
    let mut config = tempfile::NamedTempFile::new().unwrap();
    config.write_all(toml.as_bytes()).unwrap();
    let config_path = config.path().display().to_string();
    let mut all: Vec<&str> = vec!["--config", &config_path];
    all.extend(args);
    let keyless = super::spawn_keyless_with_msi(
        endpoint,
        &identity.url,
        "probe-header",
        &all,
        &[[("KEYLESS_LOG", "info")].as_slice(), envs].concat(),
    )
    .await;
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
