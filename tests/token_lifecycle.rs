//! The token's life in keyless, end to end: one acquisition for a cold-start burst,
//! background refresh that no request waits for, a rotated federated token file, a failed
//! refresh that serves on until expiry, recovery from an upstream 401, and no token or
//! secret in any log line, even at trace level.
//!
//! Most tests run keyless in-process ([`Proxy`]) with a scripted [`Acquire`]; those where
//! the real credential matters run the binary against local fakes (the simulator's managed
//! identity endpoint, a local HTTPS token endpoint trusted through `SSL_CERT_FILE`).

mod support;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use keyless::auth::{Acquire, AuthError, Secret, Token};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::mock::{Mock, Proxy, Reply, Seen, TestIdentity, client, flags, post_json_with};
use support::sts::{FakeSts, StsAnswer};
use support::{KeylessProcess, spawn_keyless, spawn_simulator};

const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

fn unix_millis(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis()
}

async fn chat(c: &reqwest::Client, base: &str) -> reqwest::Response {
    post_json_with(c, base, "/v1/chat/completions", CHAT).await
}

fn bearer(seen: &Seen) -> String {
    seen.headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// A token source whose tokens live `lifetime` from the moment they are asked for and
/// carry their expiry in their text (`tok<n>.exp<unix ms>`), so that the upstream can
/// check every bearer it receives. Each acquisition takes `delay`; after `successes`
/// acquisitions every further one fails.
struct Expiring {
    calls: AtomicUsize,
    delay: Duration,
    lifetime: Duration,
    successes: usize,
    /// When each acquisition started and ended, for failure messages.
    windows: Mutex<Vec<(Instant, Instant)>>,
}

impl Expiring {
    fn new(delay: Duration, lifetime: Duration, successes: usize) -> Arc<Expiring> {
        Arc::new(Expiring {
            calls: AtomicUsize::new(0),
            delay,
            lifetime,
            successes,
            windows: Mutex::default(),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Acquire for Expiring {
    fn acquire<'a>(&'a self, _scope: &'a str) -> BoxFuture<'a, Result<Token, AuthError>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let (started, expires_at) = (Instant::now(), SystemTime::now() + self.lifetime);
            tokio::time::sleep(self.delay).await;
            self.windows.lock().unwrap().push((started, Instant::now()));
            if n >= self.successes {
                return Err(AuthError {
                    credential: "Expiring".into(),
                    message: "the identity endpoint is down for maintenance".into(),
                });
            }
            Ok(Token {
                secret: Secret::new(format!("tok{n}.exp{}", unix_millis(expires_at))),
                expires_at,
            })
        })
    }

    fn name(&self) -> String {
        "Expiring".into()
    }
}

/// The expiry an [`Expiring`] token carries.
fn expiry_of(authorization: &str) -> Option<u128> {
    authorization.split(".exp").nth(1)?.parse().ok()
}

/// A mock that answers 200 to unexpired [`Expiring`] tokens and records (and refuses with
/// 401) any expired or unreadable one.
async fn expiry_checking_mock() -> (Mock, Arc<Mutex<Vec<String>>>) {
    let violations: Arc<Mutex<Vec<String>>> = Arc::default();
    let v = violations.clone();
    let mock = Mock::start(move |seen| {
        let auth = bearer(seen);
        let now = unix_millis(SystemTime::now());
        match expiry_of(&auth) {
            Some(expiry) if now < expiry => Reply::json(r#"{"ok":true}"#),
            _ => {
                v.lock().unwrap().push(format!("{auth} received at {now}"));
                Reply::Full {
                    status: 401,
                    headers: vec![],
                    body: Bytes::new(),
                }
            }
        }
    })
    .await;
    (mock, violations)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_on_a_cold_start_make_one_acquisition() {
    // Four sockets per request live at once in this process (client, proxy in, proxy out,
    // mock): make room whatever the shell's soft limit.
    let _ = rlimit::increase_nofile_limit(16_384);
    let identity = TestIdentity::slow(Duration::from_secs(1));
    let mock = Mock::start(|_| Reply::json(r#"{"ok":true}"#)).await;
    let proxy = Proxy::start(flags(), &mock.url, identity.clone()).await;

    // Every request arrives while the first acquisition (1 s) is in flight.
    let c = client();
    let requests = (0..1000).map(|_| chat(&c, &proxy.base));
    let responses = futures_util::future::join_all(requests).await;
    for r in &responses {
        assert_eq!(r.status(), 200);
    }
    assert_eq!(identity.calls(), 1, "one acquisition for the whole burst");
    let seen = mock.seen();
    assert_eq!(seen.len(), 1000);
    assert!(seen.iter().all(|s| bearer(s) == "Bearer test-token-0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_are_refreshed_in_the_background_and_never_sent_expired() {
    // Tokens live 5 s from the moment they are asked for; an acquisition takes 1 s, so
    // keyless holds each for 4 s and refreshes it about 2 s in. A request waits on
    // identity only when no valid token is held, which is exactly when /readyz says 503:
    // a poller watching /readyz every 20 ms through the run proves no request could have
    // waited (a refresh left until expiry would open a gap of about a second), with no
    // timing bound on the requests themselves.
    let acquisition = Duration::from_secs(1);
    let identity = Expiring::new(acquisition, Duration::from_secs(5), usize::MAX);
    let (mock, violations) = expiry_checking_mock().await;
    let proxy = Proxy::start(flags(), &mock.url, identity.clone()).await;
    let c = client();

    // The cold start waits for the first token, as it must.
    assert_eq!(chat(&c, &proxy.base).await.status(), 200);

    // Then a steady stream from four clients for 9 s: several refreshes happen meanwhile.
    let started = Instant::now();
    let workers = (0..4).map(|_| {
        let (c, base) = (c.clone(), proxy.base.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while started.elapsed() < Duration::from_secs(9) {
                let sent = Instant::now();
                let status = chat(&c, &base).await.status();
                latencies.push((sent - started, sent.elapsed(), status.as_u16()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            latencies
        })
    });
    let poller = {
        let (c, base) = (c.clone(), proxy.base.clone());
        tokio::spawn(async move {
            let mut not_ready = Vec::new();
            while started.elapsed() < Duration::from_secs(9) {
                let at = started.elapsed();
                let status = c
                    .get(format!("{base}/readyz"))
                    .send()
                    .await
                    .unwrap()
                    .status();
                if status != 200 {
                    not_ready.push(at);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            not_ready
        })
    };
    let mut all = Vec::new();
    for w in futures_util::future::join_all(workers).await {
        all.extend(w.unwrap());
    }
    let not_ready = poller.await.unwrap();
    let refused: Vec<_> = all.iter().filter(|(_, _, s)| *s != 200).collect();
    let slow: Vec<_> = all
        .iter()
        .filter(|(_, d, _)| *d > Duration::from_millis(100))
        .map(|(at, d, _)| format!("at {at:?} took {d:?}"))
        .collect();
    let windows: Vec<_> = identity
        .windows
        .lock()
        .unwrap()
        .iter()
        .map(|(a, b)| {
            let offset = |t: Instant| {
                t.checked_duration_since(started)
                    .map_or(-1.0, |d| d.as_secs_f64())
            };
            format!("{:.3}..{:.3}", offset(*a), offset(*b))
        })
        .collect();
    assert!(refused.is_empty(), "every request succeeds: {refused:?}");
    assert!(all.len() > 100, "a steady stream: {} requests", all.len());
    assert!(
        not_ready.is_empty(),
        "a valid token was held throughout, so no request waited on a refresh (an \
         acquisition takes {acquisition:?}); /readyz was 503 at {not_ready:?}; slow \
         requests: {slow:?}; acquisitions (s): {windows:?}"
    );
    assert!(
        violations.lock().unwrap().is_empty(),
        "an expired token was sent: {:?}",
        violations.lock().unwrap()
    );
    let tokens: BTreeSet<String> = mock.seen().iter().map(bearer).collect();
    assert!(
        identity.calls() >= 3 && tokens.len() >= 3,
        "tokens were refreshed ahead of expiry: {} acquisitions, {} tokens used",
        identity.calls(),
        tokens.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_serves_until_expiry_then_readyz_and_requests_get_503() {
    // One token living 3 s (usable for 2.7 s), then the identity fails for good.
    let identity = Expiring::new(Duration::ZERO, Duration::from_secs(3), 1);
    let (mock, violations) = expiry_checking_mock().await;
    let proxy = Proxy::start(flags(), &mock.url, identity.clone()).await;
    let c = client();
    let started = Instant::now();
    assert_eq!(chat(&c, &proxy.base).await.status(), 200);

    // The refresh fails from ~1.4 s on; requests keep being served with the held token.
    while started.elapsed() < Duration::from_millis(2400) {
        let r = chat(&c, &proxy.base).await;
        assert_eq!(r.status(), 200, "served at {:?}", started.elapsed());
        let ready = c
            .get(format!("{}/readyz", proxy.base))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200, "ready at {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        identity.calls() >= 2,
        "a refresh was tried (and failed) while the token was still served"
    );

    // Past the token's usable life: not ready, and requests get a clear 503.
    tokio::time::sleep(Duration::from_millis(3200).saturating_sub(started.elapsed())).await;
    let ready = c
        .get(format!("{}/readyz", proxy.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("down for maintenance"),
        "{body}"
    );
    let served = mock.seen().len();
    let r = chat(&c, &proxy.base).await;
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_token", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("no valid Entra ID token"), "{message}");
    assert!(message.contains("down for maintenance"), "{message}");
    assert_eq!(
        mock.seen().len(),
        served,
        "nothing goes to Azure without a token"
    );
    assert!(
        violations.lock().unwrap().is_empty(),
        "{:?}",
        violations.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_401_is_recovered_with_exactly_one_new_acquisition() {
    let identity = TestIdentity::ok();
    // Azure refuses the first token (revoked, say) and accepts the next.
    let mock = Mock::start(|seen| {
        if bearer(seen) == "Bearer test-token-0" {
            Reply::Full {
                status: 401,
                headers: vec![("content-type", "application/json".into())],
                body: Bytes::from_static(br#"{"error":{"code":"401","message":"Unauthorized"}}"#),
            }
        } else {
            Reply::json(r#"{"ok":true}"#)
        }
    })
    .await;
    let proxy = Proxy::start(flags(), &mock.url, identity.clone()).await;
    let c = client();
    let r = chat(&c, &proxy.base).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"ok":true}"#);
    let seen: Vec<String> = mock.seen().iter().map(bearer).collect();
    assert_eq!(
        seen,
        ["Bearer test-token-0", "Bearer test-token-1"],
        "replayed once, with the new token"
    );
    assert_eq!(
        mock.seen()[0].body,
        mock.seen()[1].body,
        "the same body, replayed"
    );
    assert_eq!(identity.calls(), 2);

    // The new token stays in use.
    assert_eq!(chat(&c, &proxy.base).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(identity.calls(), 2);
    assert_eq!(bearer(&mock.seen()[2]), "Bearer test-token-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_refused_together_cause_one_acquisition() {
    let identity = TestIdentity::ok();
    let mock = Mock::start(|seen| {
        if bearer(seen) == "Bearer test-token-0" {
            Reply::Full {
                status: 401,
                headers: vec![],
                body: Bytes::new(),
            }
        } else {
            Reply::json(r#"{"ok":true}"#)
        }
    })
    .await;
    let proxy = Proxy::start(flags(), &mock.url, identity.clone()).await;
    let c = client();
    // Wait for the first token so that all fifty carry it.
    while !c
        .get(format!("{}/readyz", proxy.base))
        .send()
        .await
        .unwrap()
        .status()
        .is_success()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let responses = futures_util::future::join_all((0..50).map(|_| chat(&c, &proxy.base))).await;
    assert!(responses.iter().all(|r| r.status() == 200));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        identity.calls(),
        2,
        "fifty rejections of one token, one new token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_401_goes_to_the_client_without_a_loop() {
    let identity = TestIdentity::ok();
    // Azure refuses every token (a wrong audience, say).
    let mock = Mock::start(|_| Reply::Full {
        status: 401,
        headers: vec![("content-type", "application/json".into())],
        body: Bytes::from_static(br#"{"error":{"code":"401","message":"audience is incorrect"}}"#),
    })
    .await;
    let proxy = Proxy::start(flags(), &mock.url, identity.clone()).await;
    let r = chat(&client(), &proxy.base).await;
    assert_eq!(r.status(), 401, "Azure's answer is passed on");
    assert!(r.text().await.unwrap().contains("audience is incorrect"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen: Vec<String> = mock.seen().iter().map(bearer).collect();
    assert_eq!(
        seen,
        ["Bearer test-token-0", "Bearer test-token-1"],
        "one replay, no loop"
    );
    assert_eq!(identity.calls(), 2);
}

/// A token Azure always refuses (wrong tenant or audience) must not make keyless ask
/// Entra once per request: after one forced refresh, further 401s within the cool-down
/// are passed on without another acquisition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_refused_token_does_not_cost_an_acquisition_per_request() {
    let identity = TestIdentity::ok();
    let mock = Mock::start(|_| Reply::Full {
        status: 401,
        headers: vec![("content-type", "application/json".into())],
        body: Bytes::from_static(br#"{"error":{"code":"401","message":"wrong tenant"}}"#),
    })
    .await;
    let proxy = Proxy::start(flags(), &mock.url, identity.clone()).await;
    let c = client();
    for _ in 0..5 {
        assert_eq!(chat(&c, &proxy.base).await.status(), 401);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        identity.calls(),
        2,
        "one forced refresh, not one per request"
    );
    assert_eq!(
        mock.seen().len(),
        6,
        "the first request replayed once, then one call each"
    );
}

/// A streamed upload cannot be replayed, so its 401 goes to the client; but the refused
/// token is still dropped, so the next request carries a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_on_a_streamed_upload_still_replaces_the_token() {
    let identity = TestIdentity::ok();
    let mock = Mock::start(|seen| {
        if bearer(seen) == "Bearer test-token-0" {
            Reply::Full {
                status: 401,
                headers: vec![],
                body: Bytes::from_static(b"{}"),
            }
        } else {
            Reply::json("{}")
        }
    })
    .await;
    let proxy = Proxy::start(flags(), &mock.url, identity.clone()).await;
    let c = client();
    // No Content-Length (a chunked upload): keyless streams it and cannot replay it.
    let upload = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from_static(
        b"file bytes",
    ))]);
    let r = c
        .post(format!("{}/v1/files", proxy.base))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(upload))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "not replayable: Azure's 401 is passed on");
    assert_eq!(
        chat(&c, &proxy.base).await.status(),
        200,
        "the next request has a new token"
    );
    assert_eq!(identity.calls(), 2);
    let seen: Vec<String> = mock.seen().iter().map(bearer).collect();
    assert_eq!(seen, ["Bearer test-token-0", "Bearer test-token-1"]);
}

// ---------------------------------------------------------------------------------------
// Through the binary, with real credentials against local fakes.

/// Waits until `proxy` answers `/readyz` with 200 (or panics after 30 s).
async fn wait_ready(proxy: &KeylessProcess) {
    support::wait_ready(&proxy.url(), Duration::from_secs(30), || proxy.report()).await;
}

/// Panics, naming the line, when `output` contains any of `secrets`.
fn assert_no_secret(output: &str, secrets: &[&str]) {
    for secret in secrets {
        if let Some(line) = output.lines().find(|l| l.contains(secret)) {
            panic!("{secret:?} appears in the log:\n{line}");
        }
    }
}

#[test]
fn the_token_detector_detects() {
    let line =
        "authorization: Bearer sim.0123456789abcdef0123456789abcdef.1900000000.0011223344556677";
    assert!(find_simulator_token(line).is_some());
    assert!(find_simulator_token("sim.nothing to see").is_none());
}

/// Whether `text` holds a simulator token (`sim.<32 hex>`), whole or in part.
fn find_simulator_token(text: &str) -> Option<&str> {
    text.lines().find(|line| {
        line.match_indices("sim.").any(|(at, _)| {
            let rest = &line[at + 4..];
            rest.len() >= 32 && rest[..32].bytes().all(|b| b.is_ascii_hexdigit())
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_show_no_token_identity_header_or_client_key() {
    const IDENTITY_HEADER: &str = "identity-header-secret-0123456789";
    const CLIENT_BEARER: &str = "sk-client-bearer-must-not-leak-0123456789";
    const CLIENT_KEY: &str = "client-api-key-must-not-leak-0123456789";
    let simulator = tokio::task::spawn_blocking(|| spawn_simulator(Some(IDENTITY_HEADER)))
        .await
        .unwrap();
    let msi = format!("{}/msi/token", simulator.url());
    let proxy = support::spawn_keyless_with_msi(
        &simulator.url(),
        &msi,
        IDENTITY_HEADER,
        &[],
        &[("KEYLESS_LOG", "trace")],
    )
    .await;
    wait_ready(&proxy).await;

    let c = client();
    let base = proxy.url();
    let send = |path: &str, body: &'static str, extra: &[(&'static str, &'static str)]| {
        let mut r = c
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {CLIENT_BEARER}"))
            .header("api-key", CLIENT_KEY)
            .body(body);
        for (k, v) in extra {
            r = r.header(*k, *v);
        }
        r.send()
    };
    let r = send("/v1/chat/completions", CHAT, &[]).await.unwrap();
    assert_eq!(r.status(), 200, "{}", proxy.report());
    r.bytes().await.unwrap();
    let stream =
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = send("/v1/chat/completions", stream, &[]).await.unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let r = send(
        "/v1/embeddings",
        r#"{"model":"text-embedding-3-small","input":"hi"}"#,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    // A 401 from Azure: keyless drops the token, fetches another and replays once.
    let r = send("/v1/chat/completions", CHAT, &[("x-sim-status", "401")])
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    r.bytes().await.unwrap();
    // HTTP/2 (h2c) from the client: the client's credentials go through the h2 decoder.
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {CLIENT_BEARER}"))
        .header("api-key", CLIENT_KEY)
        .body(CHAT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    // Nor in the metrics.
    let metrics = c.get(format!("{base}/metrics")).send().await.unwrap();
    if metrics.status() == 200 {
        let text = metrics.text().await.unwrap();
        assert!(find_simulator_token(&text).is_none(), "{text}");
        assert_no_secret(&text, &[IDENTITY_HEADER, CLIENT_BEARER, CLIENT_KEY]);
    }
    let r = c
        .get(format!("{base}/openai/v1/models"))
        .header("api-key", CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // let the last lines out

    let output = proxy.output();
    assert!(
        output.contains("TRACE") && output.contains("DEBUG"),
        "trace logging is on:\n{output}"
    );
    assert!(
        output.contains("Azure refused the token"),
        "the 401 path ran:\n{output}"
    );
    if let Some(line) = find_simulator_token(&output) {
        panic!("a token appears in the log:\n{line}");
    }
    assert_no_secret(&output, &[IDENTITY_HEADER, CLIENT_BEARER, CLIENT_KEY]);
}

/// The test kit's fake STS, whose CA the keyless binary trusts through `SSL_CERT_FILE`.
/// Each answer carries a new token, `sts-token-<n>`, living `lifetime`.
async fn fake_sts(lifetime: Duration) -> FakeSts {
    FakeSts::start(StsAnswer::Tokens(lifetime)).await
}

fn spawn_with_sts(
    sts: &FakeSts,
    mock: &Mock,
    credential: &str,
    extra: Vec<(String, String)>,
) -> impl FnOnce() -> KeylessProcess + use<> {
    let endpoint = mock.url.to_string();
    let credential = credential.to_owned();
    let mut envs: Vec<(String, String)> = vec![
        ("KEYLESS_LOG".into(), "trace".into()),
        ("SSL_CERT_FILE".into(), path_string(sts.ca_file.path())),
        ("AZURE_AUTHORITY_HOST".into(), sts.authority.to_string()),
        ("AZURE_TENANT_ID".into(), "tenant-1".into()),
        ("AZURE_CLIENT_ID".into(), "client-1".into()),
    ];
    envs.extend(extra);
    move || {
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        spawn_keyless(
            &[
                "--listen",
                "127.0.0.1:0",
                "--endpoint",
                &endpoint,
                "--credential",
                &credential,
            ],
            &envs,
        )
    }
}

fn path_string(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_federated_token_file_is_the_one_sent_next() {
    // Entra tokens living 4 s: keyless refreshes about 2 s after each acquisition.
    let sts = fake_sts(Duration::from_secs(4)).await;
    let mock = Mock::start(|_| Reply::json(r#"{"ok":true}"#)).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, "federated-token-one").unwrap();
    let start = spawn_with_sts(
        &sts,
        &mock,
        "workload-identity",
        vec![(
            "AZURE_FEDERATED_TOKEN_FILE".into(),
            path_string(&token_file),
        )],
    );
    let proxy = tokio::task::spawn_blocking(start).await.unwrap();
    let c = client();
    let r = chat(&c, &proxy.url()).await;
    assert_eq!(r.status(), 200, "{}", proxy.report());
    assert_eq!(bearer(&mock.one()), "Bearer sts-token-1");

    // The kubelet rotates the file; the next acquisition must send the new one.
    std::fs::write(&token_file, "federated-token-two").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while sts.forms().len() < 2 {
        assert!(Instant::now() < deadline, "no refresh\n{}", proxy.report());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = sts.forms();
    assert_eq!(seen[0]["client_assertion"], "federated-token-one");
    assert_eq!(seen[1]["client_assertion"], "federated-token-two");
    assert_eq!(seen[1]["client_id"], "client-1");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(chat(&c, &proxy.url()).await.status(), 200);
    assert_eq!(bearer(mock.seen().last().unwrap()), "Bearer sts-token-2");

    tokio::time::sleep(Duration::from_millis(200)).await;
    let output = proxy.output();
    assert!(output.contains("TRACE"), "trace logging is on:\n{output}");
    assert_no_secret(
        &output,
        &["federated-token-one", "federated-token-two", "sts-token-"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_show_no_client_secret() {
    const CLIENT_SECRET: &str = "client-secret-must-not-leak-0123456789";
    let sts = fake_sts(Duration::from_secs(3600)).await;
    let mock = Mock::start(|_| Reply::json(r#"{"ok":true}"#)).await;
    let start = spawn_with_sts(
        &sts,
        &mock,
        "client-secret",
        vec![("AZURE_CLIENT_SECRET".into(), CLIENT_SECRET.into())],
    );
    let proxy = tokio::task::spawn_blocking(start).await.unwrap();
    let r = chat(&client(), &proxy.url()).await;
    assert_eq!(r.status(), 200, "{}", proxy.report());
    assert_eq!(bearer(&mock.one()), "Bearer sts-token-1");
    assert_eq!(sts.forms()[0]["client_secret"], CLIENT_SECRET);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let output = proxy.output();
    assert!(output.contains("TRACE"), "trace logging is on:\n{output}");
    assert_no_secret(&output, &[CLIENT_SECRET, "sts-token-"]);
}
