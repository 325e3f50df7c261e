//! One identity, many apps (issue 12), through the real `keyless` binary in front of a
//! recording mock Azure: app keys in both header forms, allowlists, per-app quotas and
//! their headers, usage read from answers, `stream_include_usage`, the refusal to listen
//! beyond loopback without keys, `keyless hash-key`.

mod support;

use bytes::Bytes;
use std::io::Write as _;
use std::process::Stdio;
use support::mock::{Mock, Reply, Seen, client};
use support::running::{self, Running};
use support::{keyless_command, spawn_keyless};

const KEY_A: &str = "sk-app-a-0123456789";
const KEY_B: &str = "sk-app-b-9876543210";

fn sha256_hex(key: &str) -> String {
    keyless::apps::sha256_hex(key.as_bytes())
}

/// Two apps: `a` (only gpt-4o-mini, `a_limits`) and `b` (anything, no limits).
fn apps_toml(a_limits: &str, extra: &str) -> String {
    format!(
        "{extra}\n[[apps]]\nname = \"a\"\nkey_sha256 = \"{}\"\nmodels = [\"gpt-4o-mini\"]\n{a_limits}\n\n[[apps]]\nname = \"b\"\nkey_sha256 = \"{}\"\n",
        sha256_hex(KEY_A),
        sha256_hex(KEY_B)
    )
}

const USAGE_JSON: &str = r#"{"id":"c","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":3}}}"#;

const FIRST: &str = "data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{}}]}\n\n";
const DELTA: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"},\"index\":0}],\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"usage\":null}\n\n";
const LAST: &str = "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\",\"index\":0}],\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"usage\":null}\n\n";
const USAGE_FRAME: &str = "data: {\"choices\":[],\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n";
const DONE: &str = "data: [DONE]\n\n";

/// A stream of `frames`, each its own body frame.
fn stream(frames: Vec<String>) -> Reply {
    let (tx, rx) = tokio::sync::mpsc::channel(frames.len().max(1));
    for f in frames {
        tx.try_send(Ok(Bytes::from(f))).unwrap();
    }
    Reply::Stream {
        status: 200,
        headers: vec![("content-type", "text/event-stream".to_owned())],
        frames: rx,
    }
}

/// The mock Azure: chat streams (with the usage frame only when the body asks for it),
/// Responses streams, and JSON answers with usage and Azure's own x-ratelimit headers.
fn azure(seen: &Seen) -> Reply {
    let body = String::from_utf8_lossy(&seen.body);
    if seen.path_and_query.contains("/responses") {
        return stream(vec![
            "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"usage\":null}}\n\n".into(),
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\n".into(),
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"usage\":{\"input_tokens\":13,\"input_tokens_details\":{\"cached_tokens\":2},\"output_tokens\":9,\"output_tokens_details\":{\"reasoning_tokens\":5},\"total_tokens\":22}}}\n\n".into(),
        ]);
    }
    if body.contains("\"stream\":true") {
        let mut frames: Vec<String> = vec![FIRST.into(), DELTA.into(), DELTA.into(), LAST.into()];
        if body.contains("\"include_usage\":true") {
            frames.push(USAGE_FRAME.into());
        }
        frames.push(DONE.into());
        return stream(frames);
    }
    Reply::status(
        200,
        &[
            ("x-ratelimit-remaining-requests", "999"),
            ("x-ratelimit-limit-requests", "1000"),
        ],
        USAGE_JSON,
    )
}

async fn start(mock: &Mock, toml: &str, args: &[&str]) -> Running {
    running::start(mock.url.as_str(), toml, args).await
}

async fn chat_as(
    base: &str,
    header: Option<(&str, String)>,
    model: &str,
    extra: &str,
) -> reqwest::Response {
    let mut request = client()
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#
        ));
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    request.send().await.unwrap()
}

fn bearer(key: &str) -> Option<(&'static str, String)> {
    Some(("authorization", format!("Bearer {key}")))
}

fn api_key(key: &str) -> Option<(&'static str, String)> {
    Some(("api-key", key.to_owned()))
}

async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_keys_in_either_header_and_nothing_without_one() {
    let mock = Mock::start(azure).await;
    let keyless = start(&mock, &apps_toml("", ""), &[]).await;
    let base = keyless.url();

    assert_eq!(
        chat_as(&base, bearer(KEY_A), "gpt-4o-mini", "")
            .await
            .status(),
        200
    );
    assert_eq!(
        chat_as(&base, api_key(KEY_B), "gpt-4o", "").await.status(),
        200
    );
    for header in [None, bearer("sk-nobody"), api_key("sk-nobody"), api_key("")] {
        let (status, code) = error_code(chat_as(&base, header, "gpt-4o-mini", "").await).await;
        assert_eq!((status, code.as_str()), (401, "invalid_api_key"));
    }
    // Azure-style paths need a key too; keyless's own probes do not.
    let azure_style = client()
        .post(format!(
            "{base}/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"
        ))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(azure_style).await.0, 401);
    let health = client()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let seen = mock.seen();
    assert_eq!(seen.len(), 2, "only the two known keys reached Azure");
    for request in seen {
        let auth = request.headers["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with("Bearer tok-"),
            "the Entra token, not the key: {auth}"
        );
        assert!(!request.headers.contains_key("api-key"));
    }
    let log = keyless.keyless.output();
    for key in [KEY_A, KEY_B, "sk-nobody"] {
        assert!(!log.contains(key), "no key in the log");
    }
    assert!(
        log.contains("app=\"a\"") || log.contains("\"app\":\"a\""),
        "the log names the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_outside_the_allowlist_is_refused_before_any_budget() {
    let mock = Mock::start(azure).await;
    let keyless = start(&mock, &apps_toml("rpm = 1", ""), &[]).await;
    let base = keyless.url();
    for _ in 0..3 {
        let (status, code) = error_code(chat_as(&base, bearer(KEY_A), "gpt-4o", "").await).await;
        assert_eq!((status, code.as_str()), (403, "model_not_allowed"));
    }
    // Three refusals spent none of the one request a minute.
    assert_eq!(
        chat_as(&base, bearer(KEY_A), "gpt-4o-mini", "")
            .await
            .status(),
        200
    );
    assert_eq!(
        chat_as(&base, bearer(KEY_A), "gpt-4o-mini", "")
            .await
            .status(),
        429
    );
    assert_eq!(mock.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_app_rpm_is_a_burst_of_n_then_a_429_with_openai_headers() {
    let mock = Mock::start(azure).await;
    let keyless = start(&mock, &apps_toml("rpm = 3", ""), &[]).await;
    let base = keyless.url();
    for remaining in ["2", "1", "0"] {
        let ok = chat_as(&base, bearer(KEY_A), "gpt-4o-mini", "").await;
        assert_eq!(ok.status(), 200);
        let h = ok.headers();
        assert_eq!(
            h["x-ratelimit-limit-requests"], "3",
            "keyless's, not Azure's 1000"
        );
        assert_eq!(h["x-ratelimit-remaining-requests"], remaining);
        assert!(h.contains_key("x-ratelimit-reset-requests"));
    }
    let refused = chat_as(&base, bearer(KEY_A), "gpt-4o-mini", "").await;
    assert_eq!(refused.status(), 429);
    let h = refused.headers().clone();
    let ms: u64 = h["retry-after-ms"].to_str().unwrap().parse().unwrap();
    assert!(
        (15_000..=20_000).contains(&ms),
        "one request every 20 s: {ms} ms"
    );
    assert_eq!(h["retry-after"], "20");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    assert_eq!(error_code(refused).await.1, "rate_limit_exceeded");
    // Another app has its own budget (none), and Azure's headers.
    let other = chat_as(&base, bearer(KEY_B), "gpt-4o-mini", "").await;
    assert_eq!(other.status(), 200);
    assert_eq!(other.headers()["x-ratelimit-remaining-requests"], "999");
    assert_eq!(mock.seen().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_app_tpm_counts_the_estimate() {
    let mock = Mock::start(azure).await;
    let keyless = start(&mock, &apps_toml("tpm = 200", ""), &[]).await;
    let base = keyless.url();
    // About 20 prompt tokens plus a budget of 150.
    let ok = chat_as(&base, bearer(KEY_A), "gpt-4o-mini", r#","max_tokens":150"#).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-ratelimit-limit-tokens"], "200");
    let left: u32 = ok.headers()["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((20..50).contains(&left), "{left} tokens left");
    let refused = chat_as(&base, bearer(KEY_A), "gpt-4o-mini", r#","max_tokens":150"#).await;
    assert_eq!(
        error_code(refused).await,
        (429, "rate_limit_exceeded".to_owned())
    );
}

async fn get_json(url: String, header: Option<(&str, String)>) -> (u16, serde_json::Value) {
    let mut request = client().get(url);
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_read_from_json_answers_chat_streams_and_responses_streams() {
    let mock = Mock::start(azure).await;
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_addr = admin.local_addr().unwrap().to_string();
    drop(admin);
    let keyless = start(&mock, &apps_toml("", ""), &["--admin-listen", &admin_addr]).await;
    let base = keyless.url();

    let json = chat_as(&base, bearer(KEY_A), "gpt-4o-mini", "").await;
    assert_eq!(
        json.text().await.unwrap(),
        USAGE_JSON,
        "passed on untouched"
    );
    let streamed = chat_as(
        &base,
        bearer(KEY_A),
        "gpt-4o-mini",
        r#","stream":true,"stream_options":{"include_usage":true}"#,
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(streamed.contains(USAGE_FRAME), "asked for: kept");
    let responses = client()
        .post(format!("{base}/v1/responses"))
        .header("authorization", format!("Bearer {KEY_B}"))
        .header("content-type", "application/json")
        .body(r#"{"model":"gpt-4o","input":"hi","stream":true}"#)
        .send()
        .await
        .unwrap();
    assert!(
        responses
            .text()
            .await
            .unwrap()
            .contains("response.completed")
    );

    let (status, mine) = get_json(format!("{base}/usage"), bearer(KEY_A)).await;
    assert_eq!(status, 200);
    let rows = mine["usage"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "only app a's rows: {mine}");
    let row = &rows[0];
    assert_eq!(row["app"], "a");
    assert_eq!(row["deployment"], "gpt-4o-mini");
    assert_eq!(row["requests"], 2);
    assert_eq!(row["prompt_tokens"], 11 + 5);
    assert_eq!(row["completion_tokens"], 7 + 2);
    assert_eq!(row["total_tokens"], 18 + 7);
    assert_eq!(row["cached_tokens"], 4);
    assert_eq!(row["reasoning_tokens"], 3);
    assert!(mine["since"].as_str().unwrap().ends_with('Z'));
    assert_eq!(get_json(format!("{base}/usage"), None).await.0, 401);

    let (_, all) = get_json(format!("http://{admin_addr}/usage"), None).await;
    let b = all["usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["app"] == "b")
        .cloned()
        .unwrap();
    assert_eq!(
        (
            &b["prompt_tokens"],
            &b["completion_tokens"],
            &b["cached_tokens"],
            &b["reasoning_tokens"]
        ),
        (&13.into(), &9.into(), &2.into(), &5.into())
    );

    let metrics = client()
        .get(format!("http://{admin_addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains(r#"keyless_tokens_total{app="a",deployment="gpt-4o-mini",kind="prompt"} 16"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"app="b""#));
    assert!(metrics.contains("keyless_time_to_first_token_seconds"));
    let log = keyless.keyless.output();
    assert!(
        log.contains("prompt_tokens=11") || log.contains("\"prompt_tokens\":11"),
        "{log}"
    );
}

/// The client's stream, and what the mock was sent, with `[usage] stream_include_usage`
/// on or off.
async fn stream_through(include: bool) -> (String, bool, serde_json::Value) {
    let mock = Mock::start(azure).await;
    let extra = if include {
        "[usage]\nstream_include_usage = true\n"
    } else {
        ""
    };
    let keyless = start(&mock, &apps_toml("", extra), &[]).await;
    let base = keyless.url();
    let text = chat_as(&base, bearer(KEY_A), "gpt-4o-mini", r#","stream":true"#)
        .await
        .text()
        .await
        .unwrap();
    let asked = String::from_utf8_lossy(&mock.one().body).contains("\"include_usage\":true");
    let (_, usage) = get_json(format!("{base}/usage"), bearer(KEY_A)).await;
    (text, asked, usage["usage"][0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_include_usage_counts_usage_and_keeps_the_clients_bytes() {
    let (with, asked_with, usage_with) = stream_through(true).await;
    let (without, asked_without, usage_without) = stream_through(false).await;
    assert!(asked_with && !asked_without);
    assert_eq!(
        with, without,
        "byte for byte the frames the client would have got"
    );
    assert_eq!(with.matches("data: ").count(), 5, "5 frames stay 5");
    assert_eq!(usage_with["total_tokens"], 7);
    assert_eq!(usage_without["total_tokens"], 0);
    assert_eq!(usage_without["requests"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_listener_needs_app_keys_or_the_override() {
    let mut refused = keyless_command();
    refused
        .args(["serve", "--simulate", "--listen", "0.0.0.0:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = tokio::task::spawn_blocking(move || refused.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--allow-unauthenticated"), "{stderr}");

    let open = tokio::task::spawn_blocking(|| {
        spawn_keyless(
            &[
                "--simulate",
                "--listen",
                "0.0.0.0:0",
                "--allow-unauthenticated",
            ],
            &[],
        )
    })
    .await
    .unwrap();
    let port = open.addr().port();
    let health = client()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let mut config = tempfile::NamedTempFile::new().unwrap();
    config.write_all(apps_toml("", "").as_bytes()).unwrap();
    let path = config.path().display().to_string();
    let keyed = tokio::task::spawn_blocking(move || {
        spawn_keyless(
            &["--simulate", "--listen", "0.0.0.0:0", "--config", &path],
            &[],
        )
    })
    .await
    .unwrap();
    let port = keyed.addr().port();
    let no_key = chat_as(&format!("http://127.0.0.1:{port}"), None, "gpt-4o-mini", "").await;
    assert_eq!(no_key.status(), 401);
}

#[test]
fn hash_key_prints_the_sha256_of_stdin() {
    let mut command = keyless_command();
    let mut child = command
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"abc\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n"
    );
}

/// Two keyless replicas with `[limits] backend = "redis"` and one real `redis-server`:
/// together they admit one budget (the app's, and a deployment's), decided atomically in
/// Redis whatever the interleaving; with Redis killed, they serve on with per-process
/// limits and say so in `keyless_limits_backend_up`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_budget_through_redis_and_serve_on_without_it() {
    let mut redis = tokio::task::spawn_blocking(support::redis::RedisServer::start)
        .await
        .unwrap();
    let mock = Mock::start(azure).await;
    let extra = format!(
        "[limits]\nbackend = \"redis\"\nredis_url = \"{}\"\nredis_timeout = \"2s\"\n\n[limits.deployments.\"gpt-4o\"]\nrpm = 12\n",
        redis.url()
    );
    let toml = apps_toml("rpm = 6", &extra);
    let one = start(&mock, &toml, &[]).await;
    let two = start(&mock, &toml, &[]).await;
    let bases = [one.url(), two.url()];

    // App a: rpm 6, a burst of 6, across both replicas. Twelve requests at once.
    let sent = (0..12).map(|i| chat_as(&bases[i % 2], bearer(KEY_A), "gpt-4o-mini", ""));
    let statuses: Vec<u16> = futures_util::future::join_all(sent)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        6,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        6,
        "{statuses:?}"
    );

    // The deployment gpt-4o: rpm 12 is a 10-second burst of 2, for app b (no limits).
    let sent = (0..6).map(|i| chat_as(&bases[i % 2], bearer(KEY_B), "gpt-4o", ""));
    let statuses: Vec<u16> = futures_util::future::join_all(sent)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );

    // Redis gone: both replicas serve on, with their own limits.
    redis.kill();
    for base in &bases {
        let answer = chat_as(base, bearer(KEY_B), "gpt-4o-mini", "").await;
        assert_eq!(answer.status(), 200, "served without Redis");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let metrics = client()
            .get(format!("{}/metrics", bases[0]))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("keyless_limits_backend_up 0") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let log = one.keyless.output();
    assert!(!log.contains(KEY_A), "no key in the log");
}
