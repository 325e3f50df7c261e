//! The defects two outside probes found (issues 11 and 17), each reproduced through the
//! real `keyless` binary in front of a recording mock Azure, with the real managed
//! identity credential against a fake identity endpoint. Each test failed on the code
//! before the fix.
//!
//! Waits here are behaviour with wide margins ("answered at once" where the alternative
//! is 27 hours or a second's backoff), never speed targets.

mod support;

use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::mock::{Mock, Reply, client, script};
use support::running::{self, Running};

const CHAT: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;

async fn start(mock: &Mock, toml: &str, args: &[&str]) -> Running {
    running::start(mock.url.as_str(), toml, args).await
}

async fn post(
    base: &str,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    client()
        .post(format!("{base}{path}"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn chat(base: &str) -> reqwest::Response {
    post(base, "/v1/chat/completions", "application/json", CHAT).await
}

async fn metrics(base: &str) -> String {
    client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Issue 11.1: absurd waits from Azure are answered, not a dropped connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_retry_after_values_are_answered_not_dropped() {
    for (name, value) in [
        ("retry-after", "18446744073709551615"),
        ("retry-after-ms", "1e300"),
        ("x-ms-retry-after-ms", "1.7976931348623157e308"),
    ] {
        let mock = Mock::start(move |_| {
            Reply::status(429, &[(name, value)], r#"{"error":{"code":"429"}}"#)
        })
        .await;
        let keyless = start(&mock, "", &["--retry-max-wait", "1s"]).await;
        let r = tokio::time::timeout(Duration::from_secs(20), chat(&keyless.url()))
            .await
            .expect("an answer");
        assert_eq!(
            r.status(),
            429,
            "{name}: {value}\n{}",
            keyless.keyless.report()
        );
        assert_eq!(
            r.headers()[name],
            value,
            "Azure's header is passed on verbatim"
        );
        // keyless is still serving.
        let health = client()
            .get(format!("{}/healthz", keyless.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
    }
}

/// Issue 11.2: a 27-hour named wait cools the deployment down for `retry.max_wait`, then
/// Azure is asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_named_wait_cools_down_for_max_wait_only() {
    let mock = Mock::start(script(
        vec![Reply::status(429, &[("retry-after-ms", "100000000")], "{}")],
        |_| Reply::json(r#"{"ok":true}"#),
    ))
    .await;
    let keyless = start(&mock, "", &["--retry-max-wait", "1s"]).await;
    let r = chat(&keyless.url()).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after-ms"], "100000000");
    // Past the cool-down (max_wait), Azure is asked again and answers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = chat(&keyless.url()).await;
    assert_eq!(r.status(), 200, "{}", keyless.keyless.report());
    assert_eq!(mock.seen().len(), 2);
}

/// Issue 11.3: after retries on a 503 ran out, the next request on the only backend is
/// sent at once (the backoff here is 20 s: waiting for it would be unmistakable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_cool_down_holds_no_later_request_on_the_only_backend() {
    let mock = Mock::start(script(vec![Reply::status(503, &[], "{}")], |_| {
        Reply::json(r#"{"ok":true}"#)
    }))
    .await;
    let toml = "[retry]\nattempts = 1\nbackoff_base = \"20s\"\nbackoff_cap = \"20s\"\n";
    let keyless = start(&mock, toml, &[]).await;
    assert_eq!(chat(&keyless.url()).await.status(), 503);
    let asked = Instant::now();
    let r = chat(&keyless.url()).await;
    assert_eq!(r.status(), 200);
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "the next request waited for the failed one's backoff"
    );
    assert_eq!(mock.seen().len(), 2);
}

/// Issue 11.4: Azure-style `/openai/responses` reads the deployment from the body: its
/// limits apply and it is the metrics' label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_style_responses_use_the_body_deployment() {
    let mock = Mock::start(|_| Reply::json(r#"{"id":"resp_1"}"#)).await;
    let toml = "[limits.deployments.dep-r]\nrpm = 1\n";
    let keyless = start(&mock, toml, &[]).await;
    let body = r#"{"model":"dep-r","input":"hi"}"#;
    let path = "/openai/responses?api-version=2025-04-01-preview";
    let first = post(&keyless.url(), path, "application/json", body).await;
    assert_eq!(first.status(), 200);
    let second = post(&keyless.url(), path, "application/json", body).await;
    assert_eq!(second.status(), 429, "the deployment's rpm applies");
    let text: serde_json::Value = second.json().await.unwrap();
    assert_eq!(text["error"]["code"], "rate_limit_exceeded");
    assert_eq!(mock.seen().len(), 1);
    assert_eq!(
        mock.seen()[0].path_and_query,
        path,
        "the path is sent as it came"
    );
    assert_eq!(
        &mock.seen()[0].body[..],
        body.as_bytes(),
        "nothing is rewritten"
    );
    let m = metrics(&keyless.url()).await;
    assert!(m.contains(r#"deployment="dep-r""#), "{m}");
}

/// Issue 11.5: a client that leaves before the head is logged, counted, and leaves the
/// in-flight gauge where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_before_the_head_is_counted_and_logged() {
    let mock = Mock::start(|_| Reply::Hang).await;
    let keyless = start(&mock, "", &["--log-format", "json"]).await;
    let url = keyless.url();
    let gone = tokio::time::timeout(Duration::from_millis(500), chat(&url)).await;
    assert!(gone.is_err(), "the mock never answers");
    // The mock saw the request, so keyless was waiting for Azure when the client left.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = metrics(&url).await;
        let gauge_back = m.lines().any(|l| l == "keyless_in_flight_requests 1");
        let counted = m.lines().any(|l| {
            l.starts_with("keyless_requests_total{")
                && l.contains(r#"route="chat/completions""#)
                && l.contains(r#"status="499""#)
        });
        let logged = keyless
            .keyless
            .output()
            .contains(r#""outcome":"client_gone""#);
        // `1`: the /metrics request itself is in flight while it is answered.
        if gauge_back && counted && logged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{m}\n{}",
            keyless.keyless.report()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 17.1: thousands of distinct model names neither grow `/metrics` without bound
/// nor give each name its own label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_stay_bounded_under_distinct_model_names() {
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let keyless = start(&mock, "", &[]).await;
    let url = keyless.url();
    let c = client();
    let names = 2_000;
    let pad = "x".repeat(60);
    for chunk in (0..names).collect::<Vec<_>>().chunks(50) {
        let requests = chunk.iter().map(|i| {
            let body = format!(r#"{{"model":"m{i}-{pad}","messages":[]}}"#);
            c.post(format!("{url}/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(body)
                .send()
        });
        for r in futures_util::future::join_all(requests).await {
            assert_eq!(r.unwrap().status(), 200);
        }
    }
    let m = metrics(&url).await;
    // Bounded whatever the names: 64 learned deployments' series (keyless's and the GenAI
    // conventions' histograms) come to about half a megabyte; the probe saw 312 MB.
    assert!(m.len() < 1024 * 1024, "/metrics is {} bytes", m.len());
    assert!(m.contains(r#"deployment="other""#));
    let labelled: std::collections::HashSet<&str> = m
        .lines()
        .filter(|l| l.starts_with("keyless_requests_total{"))
        .filter_map(|l| l.split("deployment=\"").nth(1)?.split('"').next())
        .filter(|l| !l.is_empty())
        .collect();
    // The first 64 learned names, and `other`.
    assert!(labelled.len() <= 65, "{} deployment labels", labelled.len());
    assert!(labelled.iter().all(|l| l.len() <= 64));
}

/// Issue 17.3: a request with a side effect that may have reached Azure is not sent again;
/// a chat request is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_possible_delivery_is_repeated_only_without_side_effects() {
    let mock = Mock::start(script(vec![Reply::Reset], |_| Reply::json("{}"))).await;
    let keyless = start(
        &mock,
        "[retry]\nbackoff_base = \"10ms\"\nbackoff_cap = \"20ms\"\n",
        &[],
    )
    .await;
    let batch =
        r#"{"input_file_id":"file-1","endpoint":"/v1/chat/completions","completion_window":"24h"}"#;
    let r = post(&keyless.url(), "/v1/batches", "application/json", batch).await;
    assert_eq!(r.status(), 502, "{}", keyless.keyless.report());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(mock.seen().len(), 1, "the batch reached Azure once");

    let mock = Mock::start(script(vec![Reply::Reset], |_| Reply::json("{}"))).await;
    let keyless = start(
        &mock,
        "[retry]\nbackoff_base = \"10ms\"\nbackoff_cap = \"20ms\"\n",
        &[],
    )
    .await;
    let r = chat(&keyless.url()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-keyless-attempts"], "2");
}

/// Issue 17.3: the response-head timeout is a possible delivery too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_timeout_does_not_repeat_a_stored_response() {
    let mock = Mock::start(script(vec![Reply::Hang], |_| Reply::json("{}"))).await;
    let keyless = start(
        &mock,
        "[retry]\nbackoff_base = \"10ms\"\nbackoff_cap = \"20ms\"\n",
        &["--response-timeout", "500ms"],
    )
    .await;
    let stored = r#"{"model":"gpt-4o","input":"hi"}"#;
    let r = post(&keyless.url(), "/v1/responses", "application/json", stored).await;
    assert_eq!(r.status(), 504);
    assert_eq!(mock.seen().len(), 1, "a stored response is made once");
    let stateless = r#"{"model":"gpt-4o","input":"hi","store":false}"#;
    let r = post(
        &keyless.url(),
        "/v1/responses",
        "application/json",
        stateless,
    )
    .await;
    assert_eq!(r.status(), 200, "store:false is repeated");
}

/// Issue 17.6: bodies held for replay stay within the replay cap and the body limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_the_body_limit_are_streamed_once_not_held() {
    // Every first attempt fails; only a held body can be replayed.
    let count = Arc::new(AtomicUsize::new(0));
    let c2 = count.clone();
    let mock = Mock::start(move |_| {
        if c2.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
            Reply::status(503, &[], "{}")
        } else {
            Reply::json("{}")
        }
    })
    .await;
    let toml = "[retry]\nbackoff_base = \"10ms\"\nbackoff_cap = \"20ms\"\n";
    let keyless = start(&mock, toml, &["--max-body-bytes", "1000"]).await;
    let small = post(
        &keyless.url(),
        "/v1/files",
        "application/octet-stream",
        vec![b'a'; 500],
    )
    .await;
    assert_eq!(small.status(), 200, "a small upload is held and replayed");
    let big = post(
        &keyless.url(),
        "/v1/files",
        "application/octet-stream",
        vec![b'a'; 5000],
    )
    .await;
    assert_eq!(
        big.status(),
        503,
        "over --max-body-bytes: streamed once, not held"
    );
    assert_eq!(
        mock.seen().last().unwrap().body.len(),
        5000,
        "and streamed whole"
    );
}

/// Issue 17.7: a JSON body sent as text/plain is read as JSON (model mapped, limits
/// counted); a multipart body with two models is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_by_content_and_one_multipart_model() {
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let keyless = start(&mock, "", &["--model", "gpt-4o=dep-mapped"]).await;
    let r = post(&keyless.url(), "/v1/chat/completions", "text/plain", CHAT).await;
    assert_eq!(r.status(), 200);
    let seen = mock.one();
    assert!(
        String::from_utf8_lossy(&seen.body).contains(r#""model":"dep-mapped""#),
        "{:?}",
        seen.body
    );
    let boundary = "b0undary";
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nother\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\
         Content-Type: audio/wav\r\n\r\nRIFF\r\n--{boundary}--\r\n"
    );
    let r = post(
        &keyless.url(),
        "/v1/audio/transcriptions",
        &format!("multipart/form-data; boundary={boundary}"),
        Bytes::from(form),
    )
    .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("more than one model"));
    assert_eq!(
        mock.seen().len(),
        1,
        "the refused upload never reached Azure"
    );
}

/// Issue 17.2: sockets that send nothing (or half a head) are closed after the header
/// timeout (30 s), and keyless serves on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_are_closed_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let keyless = start(&mock, "", &[]).await;
    let addr = keyless.keyless.addr();
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
    half.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    silent.push(half);
    assert_eq!(chat(&keyless.url()).await.status(), 200, "served meanwhile");
    let deadline = Duration::from_secs(30 + 15);
    for mut socket in silent {
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(deadline, socket.read(&mut buf))
            .await
            .expect("keyless closed the socket within the header timeout and a margin");
        // Closed (0 bytes or a reset); hyper may first answer a half head with a 408.
        if let Ok(n) = read
            && n > 0
        {
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"));
        }
    }
}

/// Issue 17.2: past `[connections] max` a new connection is closed at once (the listener's
/// backlog never fills with sockets nobody serves), the admin listener answers meanwhile,
/// and slots come back when connections end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_closes_the_excess_at_once() {
    use tokio::io::AsyncReadExt;
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_addr = admin.local_addr().unwrap();
    drop(admin);
    let keyless = start(
        &mock,
        "[connections]\nmax = 4\n",
        &["--admin-listen", &admin_addr.to_string()],
    )
    .await;
    let addr = keyless.keyless.addr();
    // The readiness polls' connections may still be open: wait until the 4 held here are
    // the only ones (a fifth is then closed unread).
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let excess_closed = loop {
        let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        match tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            _ if Instant::now() > deadline => break false,
            // A slot was still held by a readiness poll's connection: that one is now
            // served and silent; drop it and try again.
            _ => drop(extra),
        }
    };
    assert!(excess_closed, "a connection over the cap is closed unread");
    let admin_health = client()
        .get(format!("http://{admin_addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(admin_health.status(), 200, "the admin listener answers");
    drop(held);
    // The server sees the four end and gives their slots back.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client()
            .get(format!("{}/healthz", keyless.url()))
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => break,
            _ => assert!(Instant::now() < deadline, "slots came back"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 17.2: a connection with no request in flight for `[connections] idle_timeout` is
/// closed, over HTTP/2 (h2c, whose pings the client answers) and HTTP/1.1 alike; one with a
/// request in flight longer than that is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock =
        Mock::start(|_| Reply::After(Duration::from_secs(3), Box::new(Reply::json("{}")))).await;
    let keyless = start(&mock, "[connections]\nidle_timeout = \"1s\"\n", &[]).await;
    let addr = keyless.keyless.addr();

    // h2c: one request, then nothing; the connection must end well before the 30 s
    // header timeout, which does not apply to HTTP/2.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::get(format!("http://{addr}/healthz"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(15), connection).await;
    assert!(ended.is_ok(), "the idle h2c connection was closed");

    // HTTP/1.1 keep-alive: the same.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle HTTP/1.1 connection was closed");

    // A request in flight for 3 s (the mock's slow head) outlives three idle timeouts.
    let answer = chat(&keyless.url()).await;
    assert_eq!(answer.status(), 200, "a slow answer is not cut as idle");
}

/// Issue 17.2: a request body that stalls (fewer bytes than its Content-Length) gets a
/// 408 after `[connections] body_timeout`, and nothing reaches Azure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_a_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let keyless = start(&mock, "[connections]\nbody_timeout = \"1s\"\n", &[]).await;
    let mut tcp = tokio::net::TcpStream::connect(keyless.keyless.addr())
        .await
        .unwrap();
    tcp.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}}") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "answered, not left hanging");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#""code":"request_timeout""#), "{text}");
    assert!(mock.seen().is_empty(), "nothing reached Azure");
}

/// The idle timer's bookkeeping (issue 17.2) wraps every answer: a body of known length
/// keeps its `Content-Length` (not chunked), for keyless's own answers and Azure's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_of_known_length_keep_their_content_length() {
    let mock = Mock::start(|_| Reply::json(r#"{"id":"x","choices":[]}"#)).await;
    let keyless = start(&mock, "", &[]).await;
    let proxied = chat(&keyless.url()).await;
    assert_eq!(proxied.headers()["content-length"], "23");
    assert!(!proxied.headers().contains_key("transfer-encoding"));
    let own = client()
        .get(format!("{}/healthz", keyless.url()))
        .send()
        .await
        .unwrap();
    assert!(
        own.headers().contains_key("content-length"),
        "{:?}",
        own.headers()
    );
}
