//! The `keyless` binary in front of a mock Azure, with the real managed identity
//! credential against a fake identity endpoint and a config file of the test's own.

use super::identity::FakeIdentity;
use super::mock::client;
use super::{KeylessProcess, spawn_keyless};
use std::io::Write as _;
use std::time::{Duration, Instant};

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
    let mut env: Vec<(String, String)> = vec![
        ("IDENTITY_ENDPOINT".into(), identity.url.clone()),
        ("IDENTITY_HEADER".into(), "probe-header".into()),
        ("KEYLESS_LOG".into(), "info".into()),
    ];
    env.extend(envs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let keyless = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        spawn_keyless(&args, &env)
    })
    .await
    .unwrap();
    let running = Running {
        keyless,
        _identity: identity,
        _config: config,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client()
        .get(format!("{}/readyz", running.url()))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "{}", running.keyless.report());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running
}
