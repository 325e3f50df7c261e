//! Identity end to end through the `keyless` binary: the real azure_identity credentials
//! against local fakes (an App Service-style managed identity endpoint, a fake `az` first
//! on PATH), and what a request sees when there is no identity.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::identity::FakeIdentity;
use support::mock::{Mock, Reply, client};
use support::{spawn_keyless, spawn_keyless_with_msi};

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_cold_start_makes_one_acquisition_for_fifty_requests() {
    let identity = FakeIdentity::start("the-identity-header", Duration::from_millis(1500), |n| {
        format!("mi-token-{n}")
    })
    .await;
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let proxy = spawn_keyless_with_msi(
        mock.url.as_str(),
        &identity.url,
        "the-identity-header",
        &[],
        &[],
    )
    .await;

    // All fifty arrive while the first acquisition (1.5 s) is still in flight.
    let c = client();
    let requests = (0..50).map(|_| {
        c.post(format!("{}/v1/chat/completions", proxy.url()))
            .header("content-type", "application/json")
            .body(CHAT)
            .send()
    });
    for r in futures_util::future::join_all(requests).await {
        assert_eq!(r.unwrap().status(), 200, "{}", proxy.report());
    }
    assert_eq!(
        identity.calls.load(Ordering::SeqCst),
        1,
        "{}",
        proxy.report()
    );
    let seen = mock.seen();
    assert_eq!(seen.len(), 50);
    assert!(
        seen.iter()
            .all(|s| s.headers["authorization"] == "Bearer mi-token-0")
    );

    let (query, header) = identity.seen.lock().unwrap()[0].clone();
    assert!(query.contains("api-version=2019-08-01"), "{query}");
    assert!(
        query.contains("resource=https%3A%2F%2Fcognitiveservices.azure.com"),
        "{query}"
    );
    assert_eq!(header.as_deref(), Some("the-identity-header"));

    let ready = c
        .get(format!("{}/readyz", proxy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert!(
        !proxy.output().contains("mi-token"),
        "the token must never be logged:\n{}",
        proxy.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_cli_credential_runs_az_from_path_with_scope_and_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("az.log");
    let expires = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> '{}'\ncat <<EOF\n{{\"accessToken\":\"cli-token\",\"expiresOn\":\"2099-01-01 00:00:00.000000\",\"expires_on\":{expires},\"subscription\":\"sub\",\"tenant\":\"tenant-1\",\"tokenType\":\"Bearer\"}}\nEOF\n",
        log.display()
    );
    let az = dir.path().join("az");
    std::fs::write(&az, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let mock = Mock::start(|_| Reply::json("{}")).await;
    let endpoint = mock.url.to_string();
    let proxy = tokio::task::spawn_blocking(move || {
        spawn_keyless(
            &[
                "--listen",
                "127.0.0.1:0",
                "--endpoint",
                &endpoint,
                "--credential",
                "azure-cli",
                "--tenant-id",
                "tenant-1",
            ],
            &[("PATH", &path)],
        )
    })
    .await
    .unwrap();
    let r = client()
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .header("content-type", "application/json")
        .body(CHAT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", proxy.report());
    assert_eq!(mock.one().headers["authorization"], "Bearer cli-token");
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(calls.lines().count(), 1, "{calls}");
    assert!(calls.contains("account get-access-token"), "{calls}");
    assert!(
        calls.contains("--scope https://cognitiveservices.azure.com/.default"),
        "{calls}"
    );
    assert!(calls.contains("--tenant tenant-1"), "{calls}");
    assert!(
        !proxy.output().contains("cli-token"),
        "the token must never be logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_identity_is_a_prompt_503_that_says_why() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let id_url = format!("http://{}/msi/token", closed.local_addr().unwrap());
    drop(closed);
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let proxy = spawn_keyless_with_msi(mock.url.as_str(), &id_url, "x", &[], &[]).await;
    // "Promptly": the credential's short retry policy answers in seconds; the bound here
    // only stops a hang from passing, it is no speed target.
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        client()
            .post(format!("{}/v1/chat/completions", proxy.url()))
            .header("content-type", "application/json")
            .body(CHAT)
            .send(),
    )
    .await
    .expect("a request without identity must not hang")
    .unwrap();
    assert_eq!(r.status(), 503, "{}", proxy.report());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_token");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("ManagedIdentityCredential"), "{message}");
    let ready = client()
        .get(format!("{}/readyz", proxy.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(mock.seen().is_empty());
}
