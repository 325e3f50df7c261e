//! Resilience, end to end over real sockets: retries decided from the response head,
//! Azure's retry headers, the longest wait keyless accepts, the deadline, body replay,
//! client disconnects, the per-deployment limiter (reject and queue), failover across
//! backends with cool-down, timeouts, and what the client and the log are told.
//!
//! keyless runs on the real clock (its timers and real sockets do not mix with paused
//! tokio time), so every wait here is short and measured with tolerance: "at least what
//! Azure asked" and "far less than the 120 s Azure asked" are behaviour, not speed
//! targets. The limiter's exact arithmetic is unit-tested on governor's fake clock in
//! `src/limit.rs`; here it is checked through the proxy.

mod support;

use bytes::Bytes;
use futures_util::StreamExt;
use keyless::config::{Config, Flags, LimitMode};
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use support::mock::{Mock, Proxy, Reply, Seen, TestIdentity, client, flags, post_json, script};
use tokio::sync::mpsc;
use url::Url;

const CHAT: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;

/// Retries without a wait named by Azure back off for milliseconds, not seconds.
const FAST: &str = "[retry]\nbackoff_base = \"10ms\"\nbackoff_cap = \"20ms\"\n";

/// "At once", for an answer whose alternative is waiting for the 120 s Azure asked.
const AT_ONCE: Duration = Duration::from_secs(10);

/// Starts keyless in front of `upstream` with `toml` as its config file.
async fn start(toml: &str, mut f: Flags, upstream: &Url) -> Proxy {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(toml.as_bytes()).unwrap();
    f.config = Some(file.path().to_owned());
    // The file is read once, at start.
    Proxy::start(f, upstream, TestIdentity::ok()).await
}

async fn chat(proxy: &Proxy) -> reqwest::Response {
    post_json(&proxy.base, "/v1/chat/completions", CHAT).await
}

/// `x-keyless-attempts` as a number.
fn attempts(r: &reqwest::Response) -> u32 {
    r.headers()
        .get("x-keyless-attempts")
        .unwrap_or_else(|| panic!("no x-keyless-attempts in {:?}", r.headers()))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// `x-keyless-backend`.
fn backend(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-keyless-backend")
        .unwrap_or_else(|| panic!("no x-keyless-backend in {:?}", r.headers()))
        .to_str()
        .unwrap()
        .to_owned()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", r.headers()))
        .to_str()
        .unwrap()
}

fn ok(_: &Seen) -> Reply {
    Reply::json(r#"{"ok":true}"#)
}

/// The gap between the upstream's n-th and (n+1)-th request.
fn gap(mock: &Mock, n: usize) -> Duration {
    let seen = mock.seen();
    seen[n + 1].at - seen[n].at
}

/// Polls `cond` for up to 5 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An OpenAI-shaped error: its `error.code` and message.
async fn openai_error(r: reqwest::Response) -> (String, String) {
    assert_eq!(header(&r, "content-type"), "application/json");
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["error"]["type"].is_string(), "{v}");
    (
        v["error"]["code"].as_str().unwrap_or_default().to_owned(),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// The model of a request body the upstream saw.
fn model_of(seen: &Seen) -> String {
    let v: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    v["model"].as_str().unwrap().to_owned()
}

// ---------------------------------------------------------------------------------------
// 1. Retries
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn each_retryable_status_is_retried_and_the_body_replayed_whole() {
    for status in [408, 429, 500, 502, 503, 504] {
        let mock = Mock::start(script(
            vec![Reply::status(status, &[], r#"{"error":{}}"#)],
            ok,
        ))
        .await;
        let proxy = start(FAST, flags(), &mock.url).await;
        let r = chat(&proxy).await;
        assert_eq!(r.status(), 200, "{status} is retried");
        assert_eq!(attempts(&r), 2, "{status}");
        assert_eq!(r.text().await.unwrap(), r#"{"ok":true}"#);
        let seen = mock.seen();
        assert_eq!(seen.len(), 2, "{status}");
        assert_eq!(
            seen[0].body, seen[1].body,
            "{status}: the replay sends the same bytes"
        );
        assert_eq!(seen[1].body, CHAT);
    }
}

#[tokio::test]
async fn other_statuses_pass_through_at_once() {
    for status in [400, 403, 404, 409, 413, 422, 501] {
        let body = format!(r#"{{"error":{{"code":"{status}"}}}}"#);
        let reply_body = body.clone();
        let mock = Mock::start(move |_| Reply::status(status, &[], &reply_body)).await;
        let proxy = start(FAST, flags(), &mock.url).await;
        let r = chat(&proxy).await;
        assert_eq!(r.status(), status);
        assert_eq!(attempts(&r), 1, "{status} is not retried");
        assert_eq!(r.text().await.unwrap(), body);
        assert_eq!(mock.seen().len(), 1, "{status}");
    }
}

#[tokio::test]
async fn a_503_burst_spends_the_attempts_then_passes_azures_last_answer_on() {
    // Default: 3 attempts in all. Each answer is numbered so the client's can be told apart.
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = n.clone();
    let mock = Mock::start(move |_| {
        let i = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        Reply::status(
            503,
            &[("apim-request-id", &format!("req-{i}"))],
            &format!(r#"{{"answer":{i}}}"#),
        )
    })
    .await;
    let proxy = start(FAST, flags(), &mock.url).await;
    let r = chat(&proxy).await;
    assert_eq!(r.status(), 503);
    assert_eq!(attempts(&r), 3);
    assert_eq!(header(&r, "apim-request-id"), "req-3");
    assert_eq!(r.text().await.unwrap(), r#"{"answer":3}"#);
    assert_eq!(mock.seen().len(), 3);

    // A burst of four 503s ends within five attempts.
    let burst = (0..4).map(|_| Reply::status(503, &[], "{}")).collect();
    let mock = Mock::start(script(burst, ok)).await;
    let mut f = flags();
    f.max_attempts = Some(5);
    let proxy = start(FAST, f, &mock.url).await;
    let r = chat(&proxy).await;
    assert_eq!(r.status(), 200);
    assert_eq!(attempts(&r), 5);

    // One attempt: no retry at all.
    let mock = Mock::start(script(vec![Reply::status(503, &[], "{}")], ok)).await;
    let mut f = flags();
    f.max_attempts = Some(1);
    let proxy = start(FAST, f, &mock.url).await;
    let r = chat(&proxy).await;
    assert_eq!(r.status(), 503);
    assert_eq!(attempts(&r), 1);
    assert_eq!(mock.seen().len(), 1);
}

/// For each form of Azure's retry header, the retry comes no sooner than asked, and not
/// much later (so it is Azure's wait being followed, not another one). The cases run
/// side by side, each with its own mock and proxy.
#[tokio::test]
async fn the_wait_before_a_retry_is_the_one_azure_names() {
    /// The 429's retry headers, made when the mock answers.
    type Headers = fn() -> Vec<(&'static str, String)>;
    // (headers of the 429, least wait, most wait)
    let cases: Vec<(Headers, Duration, Duration)> = vec![
        (|| vec![("retry-after-ms", "400".into())], ms(400), ms(2400)),
        (
            || vec![("x-ms-retry-after-ms", "400".into())],
            ms(400),
            ms(2400),
        ),
        (|| vec![("retry-after", "1".into())], ms(1000), ms(3000)),
        // An HTTP date has whole seconds: "in two seconds" is one to two seconds away.
        (
            || {
                vec![(
                    "retry-after",
                    httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2)),
                )]
            },
            ms(1000),
            ms(4000),
        ),
        // The milliseconds win over the seconds.
        (
            || {
                vec![
                    ("retry-after-ms", "300".into()),
                    ("retry-after", "30".into()),
                ]
            },
            ms(300),
            ms(2300),
        ),
    ];
    let runs = cases.into_iter().map(|(headers, least, most)| async move {
        let label = format!("{:?}", headers());
        let first = move |_: &Seen| Reply::Full {
            status: 429,
            headers: headers(),
            body: Bytes::from_static(b"{}"),
        };
        let answered = Mutex::new(false);
        let mock = Mock::start(move |seen| {
            if std::mem::replace(&mut *answered.lock().unwrap(), true) {
                ok(seen)
            } else {
                first(seen)
            }
        })
        .await;
        let proxy = start(FAST, flags(), &mock.url).await;
        let r = chat(&proxy).await;
        assert_eq!(r.status(), 200, "{label}");
        assert_eq!(attempts(&r), 2, "{label}");
        let waited = gap(&mock, 0);
        assert!(
            waited >= least,
            "{label}: retried after {waited:?}, before the {least:?} asked"
        );
        assert!(
            waited <= most,
            "{label}: retried after {waited:?}, not after Azure's wait"
        );
    });
    futures_util::future::join_all(runs).await;
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Without a named wait keyless backs off, never longer than `backoff_cap` per retry.
#[tokio::test]
async fn without_a_named_wait_the_backoff_stays_under_its_cap() {
    let mock = Mock::start(|_| Reply::status(503, &[], "{}")).await;
    let mut f = flags();
    f.max_attempts = Some(5);
    let toml = "[retry]\nbackoff_base = \"50ms\"\nbackoff_cap = \"100ms\"\n";
    let proxy = start(toml, f, &mock.url).await;
    let r = chat(&proxy).await;
    assert_eq!(r.status(), 503);
    assert_eq!(attempts(&r), 5);
    for n in 0..4 {
        let waited = gap(&mock, n);
        // The cap plus the time a loopback round trip may take on a busy machine.
        assert!(waited < ms(100) + ms(900), "retry {n} after {waited:?}");
    }
}

#[tokio::test]
async fn a_429_asking_longer_than_keyless_waits_comes_back_at_once_with_its_headers() {
    let in_two_minutes = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
    let forms: Vec<Vec<(&'static str, String)>> = vec![
        vec![
            ("retry-after-ms", "120000".into()),
            ("retry-after", "120".into()),
        ],
        vec![("x-ms-retry-after-ms", "120000".into())],
        vec![("retry-after", "120".into())],
        vec![("retry-after", in_two_minutes)],
    ];
    for form in forms {
        let label = format!("{form:?}");
        let azure = r#"{"error":{"code":"429","message":"Please retry after 120 seconds."}}"#;
        let reply = form.clone();
        let mock = Mock::start(move |_| Reply::Full {
            status: 429,
            headers: reply.clone(),
            body: Bytes::from_static(azure.as_bytes()),
        })
        .await;
        let proxy = start(FAST, flags(), &mock.url).await;
        let started = Instant::now();
        let r = chat(&proxy).await;
        assert!(
            started.elapsed() < AT_ONCE,
            "{label}: took {:?}",
            started.elapsed()
        );
        assert_eq!(r.status(), 429, "{label}");
        assert_eq!(attempts(&r), 1, "{label}");
        for (name, value) in &form {
            assert_eq!(
                header(&r, name),
                value,
                "{label}: Azure's retry header reaches the client"
            );
        }
        assert_eq!(r.text().await.unwrap(), azure, "{label}");
        assert_eq!(mock.seen().len(), 1, "{label}");

        // The deployment now cools down, but never longer than `retry.max_wait` (60 s
        // by default; issue 11: a 27-hour ask must not shut keyless off for 27 hours):
        // the next request is not sent, and keyless says how long is left.
        let r = chat(&proxy).await;
        assert_eq!(r.status(), 429, "{label}");
        let left: u64 = header(&r, "retry-after-ms").parse().unwrap();
        assert!((40_000..=60_000).contains(&left), "{label}: {left} ms left");
        let (code, _) = openai_error(r).await;
        assert_eq!(code, "rate_limit_exceeded", "{label}");
        assert_eq!(
            mock.seen().len(),
            1,
            "{label}: nothing sent during the cool-down"
        );
    }
}

#[tokio::test]
async fn the_longest_wait_is_configurable() {
    let first = Reply::status(429, &[("retry-after-ms", "5000")], "{}");
    let mock = Mock::start(script(vec![first], ok)).await;
    let mut f = flags();
    f.retry_max_wait = Some(ms(200));
    let proxy = start(FAST, f, &mock.url).await;
    let started = Instant::now();
    let r = chat(&proxy).await;
    assert_eq!(
        r.status(),
        429,
        "5 s is more than the 200 ms keyless accepts"
    );
    assert_eq!(header(&r, "retry-after-ms"), "5000");
    assert!(
        started.elapsed() < ms(5000),
        "answered before the wait Azure asked had passed"
    );
    assert_eq!(mock.seen().len(), 1);

    // A wait within the longest is waited.
    let first = Reply::status(429, &[("retry-after-ms", "150")], "{}");
    let mock = Mock::start(script(vec![first], ok)).await;
    let mut f = flags();
    f.retry_max_wait = Some(ms(200));
    let proxy = start(FAST, f, &mock.url).await;
    let r = chat(&proxy).await;
    assert_eq!(r.status(), 200);
    assert_eq!(attempts(&r), 2);
    assert!(gap(&mock, 0) >= ms(150));
}

#[tokio::test]
async fn the_deadline_bounds_the_retries() {
    let mock = Mock::start(|_| Reply::status(503, &[("retry-after-ms", "300")], "{}")).await;
    let mut f = flags();
    f.max_attempts = Some(20);
    let toml = "[retry]\ndeadline = \"1s\"\n";
    let proxy = start(toml, f, &mock.url).await;
    let started = Instant::now();
    let r = chat(&proxy).await;
    let elapsed = started.elapsed();
    assert_eq!(r.status(), 503);
    let n = attempts(&r);
    assert!(
        (2..=4).contains(&n),
        "{n} attempts of 20 within a 1 s deadline and 300 ms waits"
    );
    let seen = mock.seen();
    assert_eq!(seen.len() as u32, n);
    let last = seen.last().unwrap().at - seen[0].at;
    assert!(
        last < Duration::from_secs(1),
        "an attempt started {last:?} after the first"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "gave up after {elapsed:?}"
    );
}

/// An upload keyless need not read is held for replay when its declared length fits
/// `retry.max_replay_bytes`; a larger one, or one of unknown length, is sent once and
/// Azure's answer passed on.
#[tokio::test]
async fn an_uninspected_body_over_the_replay_cap_is_sent_once() {
    let toml = format!("{FAST}max_replay_bytes = 1024\n");
    let upload = |size: usize| vec![b'x'; size];
    for (size, chunked, replayed) in [(512, false, true), (4096, false, false), (512, true, false)]
    {
        let label = format!("{size} bytes, chunked: {chunked}");
        let mock = Mock::start(script(vec![Reply::status(503, &[], "{}")], ok)).await;
        let proxy = start(&toml, flags(), &mock.url).await;
        let request = client()
            .post(format!("{}/v1/files", proxy.base))
            .header("content-type", "application/octet-stream");
        let request = if chunked {
            let chunks = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from(
                upload(size),
            ))]);
            request.body(reqwest::Body::wrap_stream(chunks))
        } else {
            request.body(upload(size))
        };
        let r = request.send().await.unwrap();
        let seen = mock.seen();
        assert_eq!(seen[0].body.len(), size, "{label}: the whole body went out");
        if replayed {
            assert_eq!(r.status(), 200, "{label}");
            assert_eq!(attempts(&r), 2, "{label}");
            assert_eq!(seen[1].body, seen[0].body, "{label}");
        } else {
            assert_eq!(r.status(), 503, "{label}: Azure's answer, not a retry");
            assert_eq!(attempts(&r), 1, "{label}");
            assert_eq!(seen.len(), 1, "{label}");
        }
    }
}

/// The issue: "the request body is held for replay up to a cap; a larger body is sent
/// once, not retried". A JSON body over `retry.max_replay_bytes` (but within
/// `max_body_bytes`, since keyless reads JSON to find the model) is sent once.
#[tokio::test]
async fn a_json_body_over_the_replay_cap_is_sent_once() {
    let toml = format!("{FAST}max_replay_bytes = 1024\n");
    let big = format!(r#"{{"model":"gpt-4o","input":"{}"}}"#, "x".repeat(4096));
    let mock = Mock::start(script(vec![Reply::status(503, &[], "{}")], ok)).await;
    let proxy = start(&toml, flags(), &mock.url).await;
    let r = post_json(&proxy.base, "/v1/embeddings", big).await;
    assert_eq!(r.status(), 503, "a body over the replay cap is not retried");
    assert_eq!(attempts(&r), 1);
    assert_eq!(mock.seen().len(), 1);
}

#[tokio::test]
async fn connection_refused_is_retried_then_a_502() {
    let dead = Mock::refusing_url();
    let proxy = start(FAST, flags(), &dead).await;
    let r = chat(&proxy).await;
    assert_eq!(attempts(&r), 3);
    assert_eq!(r.status(), 502);
    let (code, message) = openai_error(r).await;
    assert_eq!(code, "upstream_unreachable");
    assert!(message.to_lowercase().contains("connect"), "{message}");
}

#[tokio::test]
async fn a_reset_before_the_head_is_retried() {
    let mock = Mock::start(script(vec![Reply::Reset], ok)).await;
    let proxy = start(FAST, flags(), &mock.url).await;
    let r = chat(&proxy).await;
    assert_eq!(r.status(), 200);
    assert_eq!(attempts(&r), 2);
    assert_eq!(mock.seen().len(), 2);
    assert!(mock.connections() >= 2, "the retry needs a new connection");

    // Reset every time: the attempts run out and the client gets a 502.
    let mock = Mock::start(|_| Reply::Reset).await;
    let proxy = start(FAST, flags(), &mock.url).await;
    let r = chat(&proxy).await;
    assert_eq!(attempts(&r), 3);
    assert_eq!(r.status(), 502);
    assert_eq!(openai_error(r).await.0, "upstream_unreachable");
    assert_eq!(mock.seen().len(), 3);
}

#[tokio::test]
async fn a_slow_head_times_out_and_is_retried_and_the_slow_request_is_dropped() {
    let slow = Reply::After(
        Duration::from_secs(5),
        Box::new(Reply::json(r#"{"slow":true}"#)),
    );
    let mock = Mock::start(script(vec![slow], |_| Reply::json(r#"{"fast":true}"#))).await;
    let mut f = flags();
    f.response_timeout = Some(ms(300));
    let proxy = start(FAST, f, &mock.url).await;
    let started = Instant::now();
    let r = chat(&proxy).await;
    let elapsed = started.elapsed();
    assert_eq!(r.status(), 200);
    assert_eq!(attempts(&r), 2);
    assert_eq!(r.text().await.unwrap(), r#"{"fast":true}"#);
    assert!(elapsed >= ms(300), "the first attempt had its 300 ms");
    assert!(
        elapsed < Duration::from_secs(5),
        "the slow head was not waited for"
    );
    // keyless let go of the slow request: the upstream sees its caller leave.
    eventually("the timed-out request is abandoned upstream", || {
        mock.abandoned() == 1
    })
    .await;
    assert_eq!(mock.active(), 0);

    // Silent every time: a 504 after every attempt.
    let mock = Mock::start(|_| Reply::Hang).await;
    let mut f = flags();
    f.response_timeout = Some(ms(200));
    let proxy = start(FAST, f, &mock.url).await;
    let r = chat(&proxy).await;
    assert_eq!(attempts(&r), 3);
    assert_eq!(r.status(), 504);
    assert_eq!(openai_error(r).await.0, "upstream_timeout");
}

/// A stream that breaks after its first frame: the head went to the client, so no retry;
/// the client sees the stream end in an error rather than a clean end.
#[tokio::test]
async fn a_reset_mid_stream_is_not_retried() {
    let mock = Mock::start(|_| {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(Bytes::from_static(b"data: {\"n\":1}\n\n")))
                .await;
            tokio::time::sleep(ms(100)).await;
            let _ = tx.send(Err(std::io::Error::other("reset"))).await;
        });
        Reply::Stream {
            status: 200,
            headers: vec![("content-type", "text/event-stream".into())],
            frames: rx,
        }
    })
    .await;
    let proxy = start(FAST, flags(), &mock.url).await;
    let r = post_json(
        &proxy.base,
        "/v1/chat/completions",
        r#"{"model":"gpt-4o","stream":true}"#,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(attempts(&r), 1);
    let mut body = r.bytes_stream();
    assert_eq!(
        &body.next().await.unwrap().unwrap()[..],
        b"data: {\"n\":1}\n\n"
    );
    let end = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("the stream ends");
    assert!(
        matches!(end, Some(Err(_))),
        "the stream ends in an error: {end:?}"
    );
    tokio::time::sleep(ms(200)).await;
    assert_eq!(mock.seen().len(), 1, "no retry once the stream began");
}

// ---------------------------------------------------------------------------------------
// Client disconnects
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream_request() {
    let mock = Mock::start(|_| Reply::Hang).await;
    let proxy = start(FAST, flags(), &mock.url).await;
    let base = proxy.base.clone();
    let request = tokio::spawn(async move { post_json(&base, "/v1/chat/completions", CHAT).await });
    eventually("the upstream works on the request", || mock.active() == 1).await;
    request.abort();
    eventually("the upstream request is dropped", || mock.active() == 0).await;
    assert_eq!(mock.abandoned(), 1);
    assert_eq!(mock.seen().len(), 1);
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_a_pending_retry() {
    let mock = Mock::start(|_| Reply::status(429, &[("retry-after-ms", "800")], "{}")).await;
    let proxy = start(FAST, flags(), &mock.url).await;
    let base = proxy.base.clone();
    let request = tokio::spawn(async move { post_json(&base, "/v1/chat/completions", CHAT).await });
    eventually("the first attempt", || mock.seen().len() == 1).await;
    tokio::time::sleep(ms(100)).await;
    request.abort();
    // Past the 800 ms Azure asked, with room to spare: the retry never comes.
    tokio::time::sleep(ms(1200)).await;
    assert_eq!(
        mock.seen().len(),
        1,
        "the retry was sent after the client had gone"
    );
}

// ---------------------------------------------------------------------------------------
// 2. Rate limits
// ---------------------------------------------------------------------------------------

fn limits(mode: &str, queue_timeout: &str, deployment: &str, limits: &str) -> String {
    format!(
        "{FAST}[limits]\nmode = \"{mode}\"\nqueue_timeout = \"{queue_timeout}\"\n\
         [limits.deployments.\"{deployment}\"]\n{limits}\n"
    )
}

#[tokio::test]
async fn over_the_request_rate_keyless_answers_429_with_both_retry_headers() {
    // 60 a minute: a burst of 10 (Azure's 10 s window), then one a second.
    let mock = Mock::start(ok).await;
    let proxy = start(
        &limits("reject", "1s", "gpt-4o", "rpm = 60"),
        flags(),
        &mock.url,
    )
    .await;
    let started = Instant::now();
    let mut admitted = 0;
    let refused = loop {
        let r = chat(&proxy).await;
        if r.status() == 429 {
            break r;
        }
        assert_eq!(r.status(), 200);
        admitted += 1;
        assert!(admitted <= 30, "the limit never applied");
    };
    // The burst, plus one a second for however long the burst took to send.
    let most = 10 + started.elapsed().as_secs() as usize + 1;
    assert!(
        (10..=most).contains(&admitted),
        "{admitted} admitted before the first 429"
    );
    let wait_ms: u64 = header(&refused, "retry-after-ms").parse().unwrap();
    assert!((1..=1000).contains(&wait_ms), "retry-after-ms {wait_ms}");
    assert_eq!(
        header(&refused, "retry-after"),
        "1",
        "whole seconds, rounded up"
    );
    assert!(
        refused.headers().get("x-keyless-attempts").is_none(),
        "nothing was sent"
    );
    let (code, message) = openai_error(refused).await;
    assert_eq!(code, "rate_limit_exceeded");
    assert!(message.contains("requests per minute"), "{message}");
    assert_eq!(mock.seen().len(), admitted);

    // An SDK that waits what it was told gets through.
    tokio::time::sleep(ms(wait_ms + 20)).await;
    assert_eq!(chat(&proxy).await.status(), 200);
}

#[tokio::test]
async fn the_token_rate_counts_the_prompt_and_the_completion_budget() {
    // 6000 a minute: a burst of 1000 tokens, then 100 a second.
    let mock = Mock::start(ok).await;
    let proxy = start(
        &limits("reject", "1s", "gpt-4o", "tpm = 6000"),
        flags(),
        &mock.url,
    )
    .await;
    let big = r#"{"model":"gpt-4o","max_tokens":900,"messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(
        post_json(&proxy.base, "/v1/chat/completions", big)
            .await
            .status(),
        200
    );
    // Some 80 tokens are left: a 500-token budget does not fit...
    let budget = r#"{"model":"gpt-4o","max_completion_tokens":500,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = post_json(&proxy.base, "/v1/chat/completions", budget).await;
    assert_eq!(r.status(), 429);
    let wait_ms: u64 = header(&r, "retry-after-ms").parse().unwrap();
    // About 440 tokens short at 100 a second.
    assert!(
        (2_000..=6_000).contains(&wait_ms),
        "retry-after-ms {wait_ms}"
    );
    let (_, message) = openai_error(r).await;
    assert!(message.contains("tokens per minute"), "{message}");
    // ...while the same prompt without a budget does.
    assert_eq!(chat(&proxy).await.status(), 200);
    assert_eq!(mock.seen().len(), 2);
}

#[tokio::test]
async fn queue_mode_holds_a_request_until_the_rate_admits_it() {
    let mock = Mock::start(ok).await;
    let proxy = start(
        &limits("queue", "5s", "gpt-4o", "rpm = 60"),
        flags(),
        &mock.url,
    )
    .await;
    let started = Instant::now();
    for _ in 0..10 {
        assert_eq!(chat(&proxy).await.status(), 200);
    }
    // The 11th is over the burst: it waits for the next slot, a second after the first.
    let r = chat(&proxy).await;
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() >= ms(950),
        "admitted after {:?}",
        started.elapsed()
    );
    assert_eq!(mock.seen().len(), 11);
}

#[tokio::test]
async fn queue_mode_rejects_what_cannot_be_admitted_within_its_maximum_wait() {
    // Six a minute: a burst of one, then one every 10 s; the queue waits at most 300 ms.
    let mock = Mock::start(ok).await;
    let proxy = start(
        &limits("queue", "300ms", "gpt-4o", "rpm = 6"),
        flags(),
        &mock.url,
    )
    .await;
    assert_eq!(chat(&proxy).await.status(), 200);
    let started = Instant::now();
    let r = chat(&proxy).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not held for the 10 s the rate needs"
    );
    assert_eq!(r.status(), 429);
    let wait_ms: u64 = header(&r, "retry-after-ms").parse().unwrap();
    assert!(
        (5_000..=10_000).contains(&wait_ms),
        "retry-after-ms {wait_ms}"
    );
    assert_eq!(header(&r, "retry-after"), "10");
    assert_eq!(mock.seen().len(), 1);

    // Waiting on a concurrency slot: held for the queue's 300 ms, then refused.
    let mock =
        Mock::start(|_| Reply::After(Duration::from_secs(3), Box::new(Reply::json("{}")))).await;
    let proxy = start(
        &limits("queue", "300ms", "gpt-4o", "max_concurrent = 1"),
        flags(),
        &mock.url,
    )
    .await;
    let base = proxy.base.clone();
    let _first = tokio::spawn(async move { post_json(&base, "/v1/chat/completions", CHAT).await });
    eventually("the first request is upstream", || mock.active() == 1).await;
    let started = Instant::now();
    let r = chat(&proxy).await;
    let held = started.elapsed();
    assert_eq!(r.status(), 429);
    assert!(
        held >= ms(290),
        "held {held:?}, less than the queue's 300 ms"
    );
    assert!(
        held < Duration::from_secs(3),
        "held {held:?}, past the queue's maximum"
    );
    let (_, message) = openai_error(r).await;
    assert!(message.contains("concurrent"), "{message}");
}

/// Six requests through two slots, each held 200 ms upstream: all are served, two at a
/// time. Runs on a multi-threaded runtime like `keyless serve`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_mode_keeps_the_concurrency_cap() {
    let mock = Mock::start(|_| Reply::After(ms(200), Box::new(Reply::json("{}")))).await;
    let proxy = start(
        &limits("queue", "3s", "gpt-4o", "max_concurrent = 2"),
        flags(),
        &mock.url,
    )
    .await;
    let started = Instant::now();
    let all = futures_util::future::join_all((0..6).map(|_| chat(&proxy)));
    let answers = tokio::time::timeout(Duration::from_secs(10), all)
        .await
        .expect("every request is answered");
    let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses, [200; 6], "answered after {:?}", started.elapsed());
    assert_eq!(mock.seen().len(), 6);
    assert_eq!(mock.peak(), 2, "two at a time upstream");
}

/// A stream holds its concurrency slot until it ends.
#[tokio::test]
async fn the_concurrency_cap_counts_a_stream_until_it_ends() {
    let (tx, rx) = mpsc::channel(4);
    let rx = Mutex::new(Some(rx));
    let mock = Mock::start(move |_| match rx.lock().unwrap().take() {
        Some(frames) => Reply::Stream {
            status: 200,
            headers: vec![("content-type", "text/event-stream".into())],
            frames,
        },
        None => Reply::json("{}"),
    })
    .await;
    let proxy = start(
        &limits("reject", "1s", "gpt-4o", "max_concurrent = 1"),
        flags(),
        &mock.url,
    )
    .await;
    tx.send(Ok(Bytes::from_static(b"data: 1\n\n")))
        .await
        .unwrap();
    let streaming = post_json(
        &proxy.base,
        "/v1/chat/completions",
        r#"{"model":"gpt-4o","stream":true}"#,
    )
    .await;
    assert_eq!(streaming.status(), 200);

    let r = chat(&proxy).await;
    assert_eq!(r.status(), 429, "the stream still holds the only slot");
    assert!(r.headers().get("retry-after-ms").is_some());
    assert!(r.headers().get("retry-after").is_some());
    let (_, message) = openai_error(r).await;
    assert!(message.contains("concurrent"), "{message}");

    drop(tx);
    assert_eq!(streaming.text().await.unwrap(), "data: 1\n\n");
    assert_eq!(
        chat(&proxy).await.status(),
        200,
        "the slot is free once the stream ended"
    );
}

/// The issue: limits are per deployment. An Azure-style client (`AzureOpenAI`) names the
/// deployment in the path; its requests count against that deployment's limits too.
#[tokio::test]
async fn azure_style_requests_count_against_their_deployments_limits() {
    let mock = Mock::start(ok).await;
    let proxy = start(
        &limits("reject", "1s", "gpt-4o", "rpm = 6"),
        flags(),
        &mock.url,
    )
    .await;
    let path = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21";
    assert_eq!(post_json(&proxy.base, path, CHAT).await.status(), 200);
    let r = post_json(&proxy.base, path, CHAT).await;
    assert_eq!(
        r.status(),
        429,
        "the second request a minute is over `rpm = 6`'s burst of one"
    );
    assert_eq!(mock.seen().len(), 1);
}

// ---------------------------------------------------------------------------------------
// 3. Several backends for one model
// ---------------------------------------------------------------------------------------

/// `[models]` with one model served by `backends`: (name, url, deployment, priority, weight).
fn backends(model: &str, list: &[(&str, &Url, &str, u32, u32)]) -> String {
    let mut toml = format!("[models]\n\"{model}\" = [\n");
    for (name, url, deployment, priority, weight) in list {
        toml.push_str(&format!(
            "  {{ name = \"{name}\", endpoint = \"{url}\", deployment = \"{deployment}\", priority = {priority}, weight = {weight} }},\n"
        ));
    }
    toml.push_str("]\n");
    toml
}

#[tokio::test]
async fn failover_follows_priority_and_traffic_returns_when_the_cool_down_ends() {
    let ptu = Mock::start(script(
        vec![Reply::status(429, &[("retry-after-ms", "700")], "{}")],
        |_| Reply::json(r#"{"from":"ptu"}"#),
    ))
    .await;
    let paygo = Mock::start(|_| Reply::json(r#"{"from":"paygo"}"#)).await;
    // Listed out of order: priority decides.
    let toml = format!(
        "{FAST}{}",
        backends(
            "gpt-4o",
            &[
                ("paygo", &paygo.url, "gpt-4o-paygo", 1, 1),
                ("ptu", &ptu.url, "gpt-4o-ptu", 0, 1)
            ]
        )
    );
    let proxy = start(&toml, flags(), &ptu.url).await;

    let r = chat(&proxy).await;
    assert_eq!(r.status(), 200);
    assert_eq!(attempts(&r), 2);
    assert_eq!(backend(&r), "paygo");
    assert_eq!(r.text().await.unwrap(), r#"{"from":"paygo"}"#);
    assert_eq!(
        model_of(&ptu.one()),
        "gpt-4o-ptu",
        "each backend gets its own deployment"
    );
    assert_eq!(model_of(&paygo.one()), "gpt-4o-paygo");

    // While the PTU cools down, requests go straight to pay-as-you-go.
    let r = chat(&proxy).await;
    assert_eq!((attempts(&r), backend(&r)), (1, "paygo".to_owned()));
    assert_eq!(ptu.seen().len(), 1);

    // Once its 700 ms are over, the PTU serves again.
    let cooled = ptu.seen()[0].at + ms(700) + ms(100);
    tokio::time::sleep_until(cooled.into()).await;
    let r = chat(&proxy).await;
    assert_eq!((attempts(&r), backend(&r)), (1, "ptu".to_owned()));
    assert_eq!(r.text().await.unwrap(), r#"{"from":"ptu"}"#);
}

#[tokio::test]
async fn an_unreachable_or_failing_backend_hands_over_to_the_next() {
    // Long backoffs, so that the failed backend's cool-down (a random fraction of them)
    // outlasts the request: see `a_failed_backend_is_not_tried_again_while_the_next_is_free`.
    let toml_with = |list: &[(&str, &Url, &str, u32, u32)]| {
        format!(
            "[retry]\nbackoff_base = \"60s\"\nbackoff_cap = \"60s\"\n{}",
            backends("gpt-4o", list)
        )
    };
    let dead = Mock::refusing_url();
    let alive = Mock::start(ok).await;
    let toml = toml_with(&[("dead", &dead, "d", 0, 1), ("alive", &alive.url, "d", 1, 1)]);
    let proxy = start(&toml, flags(), &alive.url).await;
    let r = chat(&proxy).await;
    assert_eq!(r.status(), 200);
    assert_eq!((attempts(&r), backend(&r)), (2, "alive".to_owned()));

    for (name, reply) in [
        ("503", Reply::status(503, &[], "{}")),
        ("reset", Reply::Reset),
        ("500", Reply::status(500, &[], "{}")),
    ] {
        let failing = Mock::start(script(vec![reply], ok)).await;
        let alive = Mock::start(ok).await;
        let toml = toml_with(&[
            ("first", &failing.url, "d", 0, 1),
            ("second", &alive.url, "d", 1, 1),
        ]);
        let proxy = start(&toml, flags(), &alive.url).await;
        let r = chat(&proxy).await;
        assert_eq!(r.status(), 200, "{name}");
        assert_eq!(
            (attempts(&r), backend(&r)),
            (2, "second".to_owned()),
            "{name}"
        );
    }
}

/// The issue: a backend that cannot be reached "cools down ... and the request goes to
/// the next one". Here backoffs are tiny, so the dead backend's cool-down may be over by
/// the time the request picks a backend for its retry.
#[tokio::test]
async fn a_failed_backend_is_not_tried_again_while_the_next_is_free() {
    let dead = Mock::refusing_url();
    let alive = Mock::start(ok).await;
    let toml = format!(
        "[retry]\nbackoff_base = \"1ms\"\nbackoff_cap = \"1ms\"\n{}",
        backends(
            "gpt-4o",
            &[("dead", &dead, "d", 0, 1), ("alive", &alive.url, "d", 1, 1)]
        )
    );
    let mut f = flags();
    f.max_attempts = Some(2);
    let proxy = start(&toml, f, &alive.url).await;
    let mut refused = 0;
    for _ in 0..20 {
        let r = chat(&proxy).await;
        if r.status() != 200 {
            assert_eq!((attempts(&r), backend(&r)), (2, "dead".to_owned()));
            refused += 1;
        }
    }
    assert_eq!(
        refused, 0,
        "{refused} of 20 requests tried `dead` twice and got a 502 while `alive` was free"
    );
}

#[tokio::test]
async fn a_429_asking_too_long_fails_over_when_another_backend_is_free() {
    let long = |_: &Seen| {
        Reply::status(
            429,
            &[("retry-after-ms", "120000"), ("retry-after", "120")],
            r#"{"error":{"code":"429"}}"#,
        )
    };
    let ptu = Mock::start(long).await;
    let paygo = Mock::start(ok).await;
    let toml = format!(
        "{FAST}{}",
        backends(
            "gpt-4o",
            &[
                ("ptu", &ptu.url, "a", 0, 1),
                ("paygo", &paygo.url, "b", 1, 1)
            ]
        )
    );
    let proxy = start(&toml, flags(), &ptu.url).await;
    let started = Instant::now();
    let r = chat(&proxy).await;
    assert!(started.elapsed() < AT_ONCE);
    assert_eq!(r.status(), 200);
    assert_eq!((attempts(&r), backend(&r)), (2, "paygo".to_owned()));

    // Every backend asks for two minutes: the last 429 comes back at once.
    let other = Mock::start(long).await;
    let toml = format!(
        "{FAST}{}",
        backends(
            "gpt-4o",
            &[
                ("ptu", &ptu.url, "a2", 0, 1),
                ("other", &other.url, "b2", 1, 1)
            ]
        )
    );
    let proxy = start(&toml, flags(), &ptu.url).await;
    let started = Instant::now();
    let r = chat(&proxy).await;
    assert!(started.elapsed() < AT_ONCE);
    assert_eq!(r.status(), 429);
    assert_eq!((attempts(&r), backend(&r)), (2, "other".to_owned()));
    assert_eq!(header(&r, "retry-after-ms"), "120000");
    assert_eq!(header(&r, "retry-after"), "120");
}

#[tokio::test]
async fn weights_share_traffic_within_a_priority_and_lower_priorities_wait() {
    let a = Mock::start(ok).await;
    let b = Mock::start(ok).await;
    let c = Mock::start(ok).await;
    let toml = format!(
        "{FAST}{}",
        backends(
            "gpt-4o",
            &[
                ("a", &a.url, "d", 0, 3),
                ("b", &b.url, "d", 0, 1),
                ("c", &c.url, "d", 1, 100)
            ]
        )
    );
    let proxy = start(&toml, flags(), &a.url).await;
    for _ in 0..60 {
        assert_eq!(chat(&proxy).await.status(), 200);
    }
    let (na, nb) = (a.seen().len(), b.seen().len());
    assert_eq!(na + nb, 60);
    assert_eq!(
        c.seen().len(),
        0,
        "priority 1 serves only when priority 0 cannot"
    );
    // 3:1 on average over 60; "a more than b, b some" fails about once in 10^5 runs.
    assert!(nb > 0 && na > nb, "weights 3:1 gave {na}:{nb}");
}

#[tokio::test]
async fn a_backend_at_its_limit_sends_the_request_to_the_next() {
    let ptu = Mock::start(ok).await;
    let paygo = Mock::start(ok).await;
    let toml = format!(
        "{}{}",
        limits("reject", "1s", "gpt-4o-ptu", "rpm = 6"),
        backends(
            "gpt-4o",
            &[
                ("ptu", &ptu.url, "gpt-4o-ptu", 0, 1),
                ("paygo", &paygo.url, "gpt-4o-paygo", 1, 1)
            ]
        )
    );
    let proxy = start(&toml, flags(), &ptu.url).await;
    let r = chat(&proxy).await;
    assert_eq!(backend(&r), "ptu");
    let r = chat(&proxy).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        (attempts(&r), backend(&r)),
        (1, "paygo".to_owned()),
        "the limiter's refusal costs no attempt"
    );
    assert_eq!(ptu.seen().len(), 1);
}

/// Cool-down is per deployment: a 429 for one deployment named in an Azure-style path
/// must not hold back requests for another.
#[tokio::test]
async fn an_azure_style_429_cools_down_only_its_own_deployment() {
    let mock = Mock::start(|seen| {
        if seen.path_and_query.contains("/deployments/busy/") {
            Reply::status(429, &[("retry-after-ms", "120000")], "{}")
        } else {
            Reply::json("{}")
        }
    })
    .await;
    let proxy = start(FAST, flags(), &mock.url).await;
    let r = post_json(
        &proxy.base,
        "/openai/deployments/busy/chat/completions?api-version=2024-10-21",
        CHAT,
    )
    .await;
    assert_eq!(r.status(), 429);
    let r = post_json(
        &proxy.base,
        "/openai/deployments/idle/chat/completions?api-version=2024-10-21",
        CHAT,
    )
    .await;
    assert_eq!(r.status(), 200, "another deployment is not cooling down");
    assert_eq!(mock.seen().len(), 2);
}

// ---------------------------------------------------------------------------------------
// 4. Timeouts
// ---------------------------------------------------------------------------------------

/// A listener whose accept queue is full and that never accepts: the kernel drops new
/// SYNs, so connecting hangs until the connect timeout.
struct Blackhole {
    url: Url,
    _listener: tokio::net::TcpListener,
    _queued: Vec<std::net::TcpStream>,
}

fn blackhole() -> Blackhole {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, ms(200)) {
            Ok(stream) => queued.push(stream),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Blackhole {
                    url: Url::parse(&format!("http://{addr}")).unwrap(),
                    _listener: listener,
                    _queued: queued,
                };
            }
            Err(e) => panic!("filling the accept queue: {e}"),
        }
    }
    panic!("the accept queue never filled");
}

#[tokio::test]
async fn the_connect_timeout_applies_and_fails_over() {
    let hole = blackhole();
    let mut f = flags();
    f.connect_timeout = Some(ms(200));
    f.max_attempts = Some(1);
    let proxy = start(FAST, f.clone(), &hole.url).await;
    let started = Instant::now();
    let r = chat(&proxy).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "gave up after {:?}",
        started.elapsed()
    );
    assert_eq!(r.status(), 502);
    let (code, message) = openai_error(r).await;
    assert_eq!(code, "upstream_unreachable");
    assert!(
        ["timed out", "timeout", "deadline"]
            .iter()
            .any(|w| message.contains(w)),
        "{message}"
    );

    let alive = Mock::start(ok).await;
    f.max_attempts = None;
    let toml = format!(
        "{FAST}{}",
        backends(
            "gpt-4o",
            &[
                ("hole", &hole.url, "d", 0, 1),
                ("alive", &alive.url, "d", 1, 1)
            ]
        )
    );
    let proxy = start(&toml, f, &alive.url).await;
    let r = chat(&proxy).await;
    assert_eq!(r.status(), 200);
    assert_eq!((attempts(&r), backend(&r)), (2, "alive".to_owned()));
}

/// The idle timeout is the silence between two frames, not the length of the stream;
/// a stream cut by it is not retried.
#[tokio::test]
async fn the_idle_timeout_cuts_a_silent_stream_and_only_a_silent_one() {
    let spaced = |gap: Duration, frames: usize, then_silence: bool| {
        move |_: &Seen| {
            let (tx, rx) = mpsc::channel(8);
            tokio::spawn(async move {
                for i in 0..frames {
                    if i > 0 {
                        tokio::time::sleep(gap).await;
                    }
                    let _ = tx.send(Ok(Bytes::from(format!("data: {i}\n\n")))).await;
                }
                if then_silence {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    drop(tx);
                }
            });
            Reply::Stream {
                status: 200,
                headers: vec![("content-type", "text/event-stream".into())],
                frames: rx,
            }
        }
    };
    let mut f = flags();
    f.idle_timeout = Some(ms(400));

    // Four frames 150 ms apart: 450 ms in all, longer than the idle timeout, never silent for it.
    let mock = Mock::start(spaced(ms(150), 4, false)).await;
    let proxy = start(FAST, f.clone(), &mock.url).await;
    let r = post_json(
        &proxy.base,
        "/v1/chat/completions",
        r#"{"model":"gpt-4o","stream":true}"#,
    )
    .await;
    assert_eq!(
        r.text().await.unwrap(),
        "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n"
    );

    // One frame, then silence.
    let mock = Mock::start(spaced(ms(0), 1, true)).await;
    let proxy = start(FAST, f, &mock.url).await;
    let r = post_json(
        &proxy.base,
        "/v1/chat/completions",
        r#"{"model":"gpt-4o","stream":true}"#,
    )
    .await;
    assert_eq!(attempts(&r), 1);
    let mut body = r.bytes_stream();
    assert_eq!(&body.next().await.unwrap().unwrap()[..], b"data: 0\n\n");
    let started = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(4), body.next())
        .await
        .expect("cut before Azure's 5 s silence ended");
    assert!(
        matches!(end, Some(Err(_))),
        "the stream ends in an error: {end:?}"
    );
    assert!(
        started.elapsed() >= ms(300),
        "cut after {:?}",
        started.elapsed()
    );
    assert_eq!(mock.seen().len(), 1, "no retry once the stream began");
}

#[tokio::test]
async fn timeouts_and_retry_limits_have_defaults_and_are_configurable() {
    let mut f = flags();
    f.endpoint = Some("https://res.openai.azure.com".into());
    let c = Config::load(&f).unwrap();
    assert_eq!(c.timeouts.connect, Duration::from_secs(10));
    assert_eq!(c.timeouts.response, Duration::from_secs(600));
    assert_eq!(c.timeouts.idle, Duration::from_secs(600));
    assert_eq!(c.retry.attempts.get(), 3);
    assert_eq!(c.retry.max_wait, Duration::from_secs(60));
    assert_eq!(c.limits.mode, LimitMode::Reject);

    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(
        b"connect_timeout = \"1s\"\nresponse_timeout = \"2s\"\nidle_timeout = \"3s\"\n\
          [retry]\nattempts = 4\nmax_wait = \"5s\"\ndeadline = \"6s\"\nmax_replay_bytes = 7\n\
          [limits]\nmode = \"queue\"\nqueue_timeout = \"8s\"\n",
    )
    .unwrap();
    f.config = Some(file.path().to_owned());
    let c = Config::load(&f).unwrap();
    assert_eq!(c.timeouts.connect, Duration::from_secs(1));
    assert_eq!(c.timeouts.response, Duration::from_secs(2));
    assert_eq!(c.timeouts.idle, Duration::from_secs(3));
    assert_eq!(
        (c.retry.attempts.get(), c.retry.max_wait, c.retry.deadline),
        (4, Duration::from_secs(5), Duration::from_secs(6))
    );
    assert_eq!(c.retry.max_replay_bytes, 7);
    assert_eq!(
        (c.limits.mode, c.limits.queue_timeout),
        (LimitMode::Queue, Duration::from_secs(8))
    );

    // Flags win over the file.
    f.connect_timeout = Some(ms(100));
    f.max_attempts = Some(2);
    let c = Config::load(&f).unwrap();
    assert_eq!(c.timeouts.connect, ms(100));
    assert_eq!(c.retry.attempts.get(), 2);
}

// ---------------------------------------------------------------------------------------
// 5. What happened is visible
// ---------------------------------------------------------------------------------------

/// The `keyless` binary, as users run it (a managed identity served by a mock), logs one
/// line per request naming the attempts and the backend; the client sees the same in
/// `x-keyless-attempts` and `x-keyless-backend`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_and_backend_are_in_the_log_line_and_the_headers() {
    let identity = Mock::start(|_| {
        let expires = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() + 3600;
        Reply::json(&format!(
            r#"{{"access_token":"mi-token","expires_on":"{expires}","resource":"https://cognitiveservices.azure.com","token_type":"Bearer"}}"#
        ))
    })
    .await;
    let ptu = Mock::start(|_| Reply::status(503, &[("retry-after-ms", "5000")], "{}")).await;
    let paygo = Mock::start(ok).await;
    let toml = format!(
        "{FAST}{}",
        backends(
            "gpt-4o",
            &[
                ("ptu", &ptu.url, "gpt-4o-ptu", 0, 1),
                ("paygo", &paygo.url, "gpt-4o-paygo", 1, 1)
            ]
        )
    );
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(toml.as_bytes()).unwrap();

    for format in ["json", "text"] {
        let config = file.path().display().to_string();
        let id_url = format!("{}msi/token", identity.url);
        let proxy = support::spawn_keyless_with_msi(
            ptu.url.as_str(),
            &id_url,
            "secret",
            &["--config", &config, "--log-format", format],
            &[],
        )
        .await;
        let r = post_json(&proxy.url(), "/v1/chat/completions", CHAT).await;
        assert_eq!(r.status(), 200, "{}", proxy.report());
        assert_eq!(header(&r, "x-keyless-attempts"), "2");
        assert_eq!(header(&r, "x-keyless-backend"), "paygo");

        let request_line = || {
            proxy
                .output()
                .lines()
                .find(|l| l.contains("/v1/chat/completions") && l.contains("status"))
                .map(str::to_owned)
        };
        eventually("the request line is written", || request_line().is_some()).await;
        let line = request_line().unwrap();
        if format == "json" {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["message"], "request", "{line}");
            assert_eq!(v["attempts"], 2, "{line}");
            assert_eq!(v["backend"], "paygo", "{line}");
            assert_eq!(v["deployment"], "gpt-4o-paygo", "{line}");
            assert_eq!(v["status"], 200, "{line}");
        } else {
            assert!(line.contains("attempts=2"), "{line}");
            assert!(
                line.contains("backend=paygo") || line.contains(r#"backend="paygo""#),
                "{line}"
            );
        }
    }
}
