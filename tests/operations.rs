//! What operators see and rely on: metrics after a scripted set of requests, a JSON log
//! line, the admin listener, and a graceful shutdown during an open stream.

mod support;

use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::mock::{Mock, Proxy, Reply, TestIdentity, client, flags};
use support::{spawn_keyless, spawn_simulator};

/// The value of the first sample line of `metrics` that starts with `prefix` and
/// contains every one of `parts`.
fn sample(metrics: &str, prefix: &str, parts: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix) && parts.iter().all(|p| l.contains(p)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_retries_rejections_and_tokens() {
    // Azure answers the first request 503 (retried), then 200; one deployment is limited
    // to one request in flight.
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let mock = Mock::start(move |_| {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::Full {
                status: 503,
                headers: vec![("retry-after-ms", "10".into())],
                body: Bytes::from_static(b"{}"),
            }
        } else {
            Reply::json("{}")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyless.toml");
    std::fs::write(&config, "[limits.deployments.limited]\nrpm = 1\n").unwrap();
    let mut f = flags();
    f.config = Some(config);
    let proxy = Proxy::start(f, &mock.url, TestIdentity::ok()).await;
    let http = client();
    let chat = |model: &str| {
        http.post(format!("{}/v1/chat/completions", proxy.base))
            .header("content-type", "application/json")
            .body(format!(r#"{{"model":"{model}","messages":[]}}"#))
            .send()
    };
    let first = chat("gpt-4o").await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-keyless-attempts"], "2");
    first.bytes().await.unwrap();
    assert_eq!(chat("limited").await.unwrap().status(), 200);
    let refused = chat("limited").await.unwrap();
    assert_eq!(refused.status(), 429, "rpm = 1 admits one request");
    refused.bytes().await.unwrap();
    let missing = http
        .get(format!("{}/nope", proxy.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let metrics = http
        .get(format!("{}/metrics", proxy.base))
        .send()
        .await
        .unwrap();
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let m = metrics.text().await.unwrap();
    let requests = "keyless_requests_total{";
    assert_eq!(
        sample(
            &m,
            requests,
            &[
                r#"route="chat/completions""#,
                r#"deployment="gpt-4o""#,
                r#"status="200""#
            ]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            requests,
            &[r#"deployment="limited""#, r#"status="200""#]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            requests,
            &[r#"route="chat/completions""#, r#"status="429""#]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, requests, &[r#"route="unknown""#, r#"status="404""#]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "keyless_retries_total{",
            &[r#"backend="gpt-4o""#, r#"reason="status_503""#]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "keyless_rate_limited_total{",
            &[r#"backend="limited""#, r#"limit="requests per minute""#]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "keyless_token_acquisitions_total{",
            &[r#"result="success""#]
        ),
        Some(1.0),
        "{m}"
    );
    assert!(
        sample(&m, "keyless_token_expires_in_seconds{", &[]).unwrap() > 3000.0,
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "keyless_upstream_response_seconds_count{",
            &[r#"backend="gpt-4o""#]
        ),
        Some(2.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            "keyless_request_duration_seconds_count{",
            &[r#"route="chat/completions""#]
        )
        .unwrap()
            >= 3.0,
        "{m}"
    );
    // The scrape itself is the only request in flight while it is being answered.
    assert_eq!(
        sample(&m, "keyless_in_flight_requests", &[]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, "keyless_open_streams", &[]), Some(0.0), "{m}");
    assert!(!m.contains("test-token"), "no token in metrics");
}

#[tokio::test]
async fn open_streams_are_counted_until_they_end() {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let rx = std::sync::Mutex::new(Some(rx));
    let mock = Mock::start(move |_| Reply::Stream {
        status: 200,
        headers: vec![("content-type", "text/event-stream".into())],
        frames: rx.lock().unwrap().take().unwrap(),
    })
    .await;
    let proxy = Proxy::start(flags(), &mock.url, TestIdentity::ok()).await;
    let http = client();
    tx.send(Ok(Bytes::from_static(b"data: 1\n\n")))
        .await
        .unwrap();
    let response = http
        .post(format!("{}/v1/chat/completions", proxy.base))
        .header("content-type", "application/json")
        .body(r#"{"model":"m","stream":true}"#)
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    body.next().await.unwrap().unwrap();
    let scrape = || async {
        http.get(format!("{}/metrics", proxy.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    assert_eq!(
        sample(&scrape().await, "keyless_open_streams", &[]),
        Some(1.0)
    );
    drop(tx);
    assert!(body.next().await.is_none());
    // The body's end is accounted just after its last frame.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sample(&scrape().await, "keyless_open_streams", &[]) != Some(0.0) {
        assert!(Instant::now() < deadline, "the stream stayed counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn simulator_env(simulator: &support::KeylessProcess) -> [(&'static str, String); 2] {
    [
        (
            "IDENTITY_ENDPOINT",
            format!("{}/msi/token", simulator.url()),
        ),
        ("IDENTITY_HEADER", "ops-secret".to_owned()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_request() {
    let (simulator, proxy) = tokio::task::spawn_blocking(|| {
        let simulator = spawn_simulator(Some("ops-secret"));
        let env = simulator_env(&simulator);
        let proxy = spawn_keyless(
            &[
                "--listen",
                "127.0.0.1:0",
                "--endpoint",
                &simulator.url(),
                "--credential",
                "managed-identity",
                "--log-format",
                "json",
                "--model",
                "gpt-4o-mini=prod-mini",
            ],
            &[(env[0].0, &env[0].1), (env[1].0, &env[1].1)],
        );
        (simulator, proxy)
    })
    .await
    .unwrap();
    let r = client()
        .post(format!("{}/v1/chat/completions", proxy.url()))
        .header("content-type", "application/json")
        .header("x-request-id", "req-abc-123")
        .body(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "req-abc-123");
    let body = r.bytes().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let found = proxy.output().lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["message"] == "request").then_some(v)
        });
        if let Some(v) = found {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no JSON request line:\n{}",
            proxy.report()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(line["method"], "POST");
    assert_eq!(line["route"], "chat/completions");
    assert_eq!(line["path"], "/v1/chat/completions");
    assert_eq!(line["deployment"], "prod-mini");
    assert_eq!(line["status"], 200);
    assert_eq!(line["attempts"], 1);
    assert_eq!(line["request_id"], "req-abc-123");
    assert_eq!(line["bytes"], body.len() as u64);
    assert_eq!(line["outcome"], "complete");
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(
        line["upstream_request_id"].as_str().unwrap().len() > 10,
        "{line}"
    );
    assert_eq!(line["level"], "INFO");
    assert!(!proxy.output().contains("ops-secret"));
    drop(simulator);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_serves_metrics_and_probes_only() {
    let (simulator, proxy, admin) = tokio::task::spawn_blocking(|| {
        let simulator = spawn_simulator(Some("ops-secret"));
        let env = simulator_env(&simulator);
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = free.local_addr().unwrap();
        drop(free);
        let proxy = spawn_keyless(
            &[
                "--listen",
                "127.0.0.1:0",
                "--endpoint",
                &simulator.url(),
                "--credential",
                "managed-identity",
                "--admin-listen",
                &admin.to_string(),
            ],
            &[(env[0].0, &env[0].1), (env[1].0, &env[1].1)],
        );
        (simulator, proxy, admin)
    })
    .await
    .unwrap();
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(
            Instant::now() < deadline,
            "admin /readyz never turned 200\n{}",
            proxy.report()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        http.get(format!("http://{admin}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("keyless_token_acquisitions_total"),
        "{metrics}"
    );
    let proxied = http
        .post(format!("http://{admin}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(r#"{"model":"m","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        proxied.status(),
        404,
        "the admin listener never reaches Azure"
    );
    let posted = http
        .post(format!("http://{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        posted.status(),
        405,
        "probes are GET only, as on the main listener"
    );
    drop(simulator);
}

/// SIGTERM during an open SSE stream: the stream runs to its end, new connections are
/// refused, and keyless exits 0 within the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_open_stream_finish_then_exits_zero() {
    let mut proxy = tokio::task::spawn_blocking(|| {
        spawn_keyless(
            &[
                "--listen",
                "127.0.0.1:0",
                "--simulate",
                "--shutdown-grace",
                "20s",
            ],
            &[],
        )
    })
    .await
    .unwrap();
    let url = proxy.url();
    let response = client()
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-sim-chunks", "10")
        .header("x-sim-delay-ms", "150")
        .body(
            r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::from_utf8(body.next().await.unwrap().unwrap().to_vec()).unwrap();

    proxy.terminate();
    // New connections are refused once the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if tokio::net::TcpStream::connect(proxy.addr()).await.is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still accepting connections after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The stream in flight completes.
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.expect("the stream must not be cut")).unwrap());
    }
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let status = tokio::task::spawn_blocking(move || {
        let status = proxy.wait_exit(Duration::from_secs(20));
        (status, proxy.report())
    })
    .await
    .unwrap();
    assert_eq!(status.0.map(|s| s.code()), Some(Some(0)), "{}", status.1);
}
