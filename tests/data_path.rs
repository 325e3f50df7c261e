//! The data path, end to end over real sockets: a client, an in-process keyless, and a
//! recording mock Azure upstream. Each test owns its ports.

mod support;

use bytes::Bytes;
use futures_util::StreamExt;
use keyless::config::ApiStyle;
use std::time::{Duration, Instant};
use support::mock::{Mock, Proxy, Reply, TestIdentity, client, flags, post_json};
use tokio::sync::mpsc;

fn models(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

const CHAT: &str = r#"{"messages":[{"role":"user","content":"the model is \"x\""}],"model":"gpt-4o-mini","temperature":1.0e0,"n":1,"unknown_field":{"model":"keep-me"}}"#;

#[tokio::test]
async fn v1_style_maps_the_model_and_keeps_every_other_byte() {
    let mock = Mock::start(|_| Reply::json(r#"{"ok":true}"#)).await;
    let mut f = flags();
    f.models = models(&[("gpt-4o-mini", "prod-4o-mini")]);
    let proxy = Proxy::start(f, &mock.url, TestIdentity::ok()).await;

    let r = post_json(&proxy.base, "/v1/chat/completions", CHAT).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"ok":true}"#);

    let seen = mock.one();
    assert_eq!(seen.path_and_query, "/openai/v1/chat/completions");
    assert_eq!(
        seen.body,
        CHAT.replace(r#""model":"gpt-4o-mini""#, r#""model":"prod-4o-mini""#)
    );
    assert_eq!(
        seen.headers["content-length"],
        seen.body.len().to_string().as_str()
    );
}

#[tokio::test]
async fn unmapped_model_goes_to_the_default_deployment_else_its_own_name() {
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let proxy = Proxy::start(flags(), &mock.url, TestIdentity::ok()).await;
    post_json(
        &proxy.base,
        "/v1/embeddings",
        r#"{"model":"text-embedding-3-small","input":"hi"}"#,
    )
    .await;
    assert_eq!(
        mock.one().body,
        r#"{"model":"text-embedding-3-small","input":"hi"}"#
    );

    let mock = Mock::start(|_| Reply::json("{}")).await;
    let mut f = flags();
    f.deployment = Some("catch-all".into());
    let proxy = Proxy::start(f, &mock.url, TestIdentity::ok()).await;
    post_json(
        &proxy.base,
        "/v1/embeddings",
        r#"{"model":"text-embedding-3-small","input":"hi"}"#,
    )
    .await;
    assert_eq!(mock.one().body, r#"{"model":"catch-all","input":"hi"}"#);
}

#[tokio::test]
async fn deployments_style_scopes_deployment_ops_and_adds_the_api_version() {
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let mut f = flags();
    f.api = Some(ApiStyle::Deployments);
    f.models = models(&[("gpt-4o-mini", "prod-4o")]);
    let proxy = Proxy::start(f, &mock.url, TestIdentity::ok()).await;
    let c = client();
    post_json(&proxy.base, "/v1/chat/completions", CHAT).await;
    c.get(format!("{}/v1/models?limit=5", proxy.base))
        .send()
        .await
        .unwrap();
    c.post(format!("{}/v1/responses", proxy.base))
        .header("content-type", "application/json")
        .body(r#"{"model":"gpt-4o-mini","input":"hi"}"#)
        .send()
        .await
        .unwrap();
    let seen = mock.seen();
    assert_eq!(
        seen[0].path_and_query,
        "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(
        seen[1].path_and_query,
        "/openai/models?limit=5&api-version=2024-10-21"
    );
    assert_eq!(
        seen[2].path_and_query,
        "/openai/responses?api-version=2025-04-01-preview"
    );
    assert_eq!(seen[2].body, r#"{"model":"prod-4o","input":"hi"}"#);
}

#[tokio::test]
async fn deployment_op_without_a_model_is_a_clear_400_in_deployments_style() {
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let mut f = flags();
    f.api = Some(ApiStyle::Deployments);
    let proxy = Proxy::start(f, &mock.url, TestIdentity::ok()).await;
    let r = post_json(&proxy.base, "/v1/embeddings", r#"{"input":"hi"}"#).await;
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("model"));
    assert!(mock.seen().is_empty());
}

#[tokio::test]
async fn paths_without_v1_are_accepted() {
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let proxy = Proxy::start(flags(), &mock.url, TestIdentity::ok()).await;
    let r = post_json(&proxy.base, "/chat/completions", CHAT).await;
    assert_eq!(r.status(), 200);
    assert_eq!(mock.one().path_and_query, "/openai/v1/chat/completions");
}

#[tokio::test]
async fn headers_lose_client_credentials_and_hop_by_hop_and_gain_the_bearer() {
    let mock = Mock::start(|_| Reply::Full {
        status: 200,
        headers: vec![
            ("content-type", "application/json".into()),
            ("apim-request-id", "req-123".into()),
            ("x-ratelimit-remaining-tokens", "999".into()),
            ("x-ms-region", "Sweden Central".into()),
        ],
        body: Bytes::from_static(b"{}"),
    })
    .await;
    let proxy = Proxy::start(flags(), &mock.url, TestIdentity::ok()).await;
    let r = client()
        .post(format!("{}/v1/chat/completions", proxy.base))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-client-key")
        .header("api-key", "azure-client-key")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("x-stainless-retry-count", "0")
        .header("user-agent", "OpenAI/Python 1.0")
        .body(CHAT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["apim-request-id"], "req-123");
    assert_eq!(r.headers()["x-ratelimit-remaining-tokens"], "999");
    assert_eq!(r.headers()["x-ms-region"], "Sweden Central");

    let seen = mock.one();
    let auth: Vec<_> = seen.headers.get_all("authorization").iter().collect();
    assert_eq!(auth, ["Bearer test-token-0"]);
    assert!(seen.headers.get("api-key").is_none());
    assert!(seen.headers.get("x-hop").is_none());
    assert_eq!(seen.headers["x-stainless-retry-count"], "0");
    assert_eq!(seen.headers["user-agent"], "OpenAI/Python 1.0");
    assert_eq!(seen.headers["host"], mock.url.authority());
}

#[tokio::test]
async fn azure_style_paths_pass_through_with_their_query_and_bytes() {
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let mut f = flags();
    f.models = models(&[("d", "must-not-be-applied")]);
    let proxy = Proxy::start(f, &mock.url, TestIdentity::ok()).await;
    let body = r#"{"input":"x","model":"d"}"#;
    client()
        .post(format!(
            "{}/openai/deployments/d/embeddings?api-version=2024-06-01",
            proxy.base
        ))
        .header("content-type", "application/json")
        .header("api-key", "client-key")
        .body(body)
        .send()
        .await
        .unwrap();
    let seen = mock.one();
    assert_eq!(
        seen.path_and_query,
        "/openai/deployments/d/embeddings?api-version=2024-06-01"
    );
    assert_eq!(seen.body, body);
    assert!(seen.headers.get("api-key").is_none());
    assert_eq!(seen.headers["authorization"], "Bearer test-token-0");
}

#[tokio::test]
async fn azure_errors_pass_through_verbatim() {
    let azure_429 = r#"{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation have exceeded the rate limit. Please retry after 37 seconds."}}"#;
    let mock = Mock::start(move |_| Reply::Full {
        status: 429,
        headers: vec![
            ("content-type", "application/json".into()),
            ("retry-after-ms", "37000".into()),
            ("retry-after", "37".into()),
        ],
        body: Bytes::from_static(azure_429.as_bytes()),
    })
    .await;
    let mut f = flags();
    f.max_attempts = Some(1); // retries have their own tests
    let proxy = Proxy::start(f, &mock.url, TestIdentity::ok()).await;
    let r = post_json(&proxy.base, "/v1/chat/completions", CHAT).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after-ms"], "37000");
    assert_eq!(r.headers()["retry-after"], "37");
    assert_eq!(r.text().await.unwrap(), azure_429);
}

async fn expect_error(r: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(r.status(), status);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["type"].is_string(), "{v}");
    v["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn invalid_json_is_a_400_and_nothing_goes_upstream() {
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let proxy = Proxy::start(flags(), &mock.url, TestIdentity::ok()).await;
    let r = post_json(
        &proxy.base,
        "/v1/chat/completions",
        r#"{"model":"gpt-4o","messages":[}"#,
    )
    .await;
    let message = expect_error(r, 400, "invalid_json").await;
    assert!(message.contains("not valid JSON"), "{message}");
    assert!(mock.seen().is_empty());
}

#[tokio::test]
async fn unknown_route_is_a_404() {
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let proxy = Proxy::start(flags(), &mock.url, TestIdentity::ok()).await;
    for path in ["/", "/admin", "/openaix", "/v1/"] {
        let r = client()
            .get(format!("{}{path}", proxy.base))
            .send()
            .await
            .unwrap();
        expect_error(r, 404, "unknown_url").await;
    }
    assert!(mock.seen().is_empty());
}

/// HTTP clients resolve `..` themselves, so this one writes the request by hand: a path
/// that climbs out of `/v1/` must not reach another Azure path.
#[tokio::test]
async fn dot_segments_cannot_climb_out_of_the_route() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let proxy = Proxy::start(flags(), &mock.url, TestIdentity::ok()).await;
    for path in [
        "/v1/../deployments/x/chat/completions",
        "/v1/%2e%2e/x",
        "/openai/v1/../../admin",
    ] {
        let mut stream = tokio::net::TcpStream::connect(proxy.base.trim_start_matches("http://"))
            .await
            .unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("invalid_path"), "{path}: {answer}");
    }
    assert!(mock.seen().is_empty());
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413() {
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let mut f = flags();
    f.max_body_bytes = Some(1024);
    let proxy = Proxy::start(f, &mock.url, TestIdentity::ok()).await;
    let big = format!(r#"{{"model":"m","input":"{}"}}"#, "x".repeat(4096));
    // Declared length over the limit.
    let r = post_json(&proxy.base, "/v1/embeddings", big.clone()).await;
    expect_error(r, 413, "request_too_large").await;
    // Chunked, with no declared length.
    let chunks = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from(big))]);
    let r = post_json(
        &proxy.base,
        "/v1/embeddings",
        reqwest::Body::wrap_stream(chunks),
    )
    .await;
    expect_error(r, 413, "request_too_large").await;
    assert!(mock.seen().is_empty());
}

fn multipart_body(boundary: &str, model: &str, file: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(file);
    body.extend_from_slice(
        format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n--{boundary}--\r\n").as_bytes(),
    );
    body
}

#[tokio::test]
async fn multipart_uploads_route_by_their_model_field_without_reencoding() {
    let file: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let boundary = "----keylessTestBoundary";

    // v1: the model field is replaced, every other byte stays.
    let mock = Mock::start(|_| Reply::json(r#"{"text":"hi"}"#)).await;
    let mut f = flags();
    f.models = models(&[("whisper-1", "prod-whisper")]);
    let proxy = Proxy::start(f.clone(), &mock.url, TestIdentity::ok()).await;
    let r = client()
        .post(format!("{}/v1/audio/transcriptions", proxy.base))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(multipart_body(boundary, "whisper-1", &file))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = mock.one();
    assert_eq!(seen.path_and_query, "/openai/v1/audio/transcriptions");
    assert_eq!(seen.body, multipart_body(boundary, "prod-whisper", &file));

    // deployments: the deployment goes into the path.
    let mock = Mock::start(|_| Reply::json(r#"{"text":"hi"}"#)).await;
    f.api = Some(ApiStyle::Deployments);
    let proxy = Proxy::start(f, &mock.url, TestIdentity::ok()).await;
    client()
        .post(format!("{}/v1/audio/transcriptions", proxy.base))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(multipart_body(boundary, "whisper-1", &file))
        .send()
        .await
        .unwrap();
    assert_eq!(
        mock.one().path_and_query,
        "/openai/deployments/prod-whisper/audio/transcriptions?api-version=2024-10-21"
    );
}

#[tokio::test]
async fn a_broken_multipart_upload_is_a_400() {
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let proxy = Proxy::start(flags(), &mock.url, TestIdentity::ok()).await;
    let r = client()
        .post(format!("{}/v1/audio/transcriptions", proxy.base))
        .header("content-type", "multipart/form-data; boundary=abc")
        .body("this is not multipart")
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "bad_request").await;
    assert!(mock.seen().is_empty());
}

/// A stream whose frames the test releases one at a time: if keyless buffered anything,
/// the client would never see frame N before the test released frame N+1.
#[tokio::test]
async fn sse_frames_reach_the_client_one_by_one() {
    let (tx, rx) = mpsc::channel(1);
    let rx = std::sync::Mutex::new(Some(rx));
    let mock = Mock::start(move |_| Reply::Stream {
        status: 200,
        headers: vec![("content-type", "text/event-stream".into())],
        frames: rx.lock().unwrap().take().expect("one stream"),
    })
    .await;
    let proxy = Proxy::start(flags(), &mock.url, TestIdentity::ok()).await;
    let response = client()
        .post(format!("{}/v1/chat/completions", proxy.base))
        .header("content-type", "application/json")
        .body(r#"{"model":"m","stream":true,"messages":[]}"#)
        .send();
    let frames = [
        "data: {\"choices\":[],\"prompt_filter_results\":[{\"prompt_index\":0}]}\n\n".to_owned(),
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n".to_owned(),
        "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n".to_owned(),
        "data: [DONE]\n\n".to_owned(),
    ];
    tx.send(Ok(Bytes::from(frames[0].clone()))).await.unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    for (i, frame) in frames.iter().enumerate() {
        if i > 0 {
            tx.send(Ok(Bytes::from(frame.clone()))).await.unwrap();
        }
        let mut got = Vec::new();
        while got.len() < frame.len() {
            let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
                .await
                .unwrap_or_else(|_| panic!("frame {i} was held back by the proxy"))
                .unwrap()
                .unwrap();
            got.extend_from_slice(&chunk);
        }
        assert_eq!(String::from_utf8(got).unwrap(), *frame, "frame {i} changed");
    }
    drop(tx);
    assert!(
        body.next().await.is_none(),
        "the stream ends when Azure's ends"
    );
}

/// Frames spaced 300 ms apart upstream arrive spread out, not in one burst.
#[tokio::test]
async fn spaced_frames_arrive_spaced() {
    let mock = Mock::start(|_| {
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            for i in 0..4 {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                let _ = tx.send(Ok(Bytes::from(format!("data: {i}\n\n")))).await;
            }
        });
        Reply::Stream {
            status: 200,
            headers: vec![("content-type", "text/event-stream".into())],
            frames: rx,
        }
    })
    .await;
    let proxy = Proxy::start(flags(), &mock.url, TestIdentity::ok()).await;
    let response = post_json(
        &proxy.base,
        "/v1/chat/completions",
        r#"{"model":"m","stream":true}"#,
    )
    .await;
    let mut body = response.bytes_stream();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        arrivals.push(Instant::now());
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert_eq!(text, "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n");
    assert_eq!(arrivals.len(), 4, "each frame arrives on its own");
    for pair in arrivals.windows(2) {
        // Upstream spaces frames by 300 ms; a buffering proxy would deliver them together.
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(150),
            "frames arrived in a burst"
        );
    }
}

#[tokio::test]
async fn an_upstream_that_dies_mid_stream_fails_the_clients_stream() {
    let mock = Mock::start(|_| {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(Bytes::from_static(b"data: {\"partial\":true}\n\n")))
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = tx.send(Err(std::io::Error::other("upstream died"))).await;
        });
        Reply::Stream {
            status: 200,
            headers: vec![("content-type", "text/event-stream".into())],
            frames: rx,
        }
    })
    .await;
    let proxy = Proxy::start(flags(), &mock.url, TestIdentity::ok()).await;
    let response = post_json(
        &proxy.base,
        "/v1/chat/completions",
        r#"{"model":"m","stream":true}"#,
    )
    .await;
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert_eq!(&first[..], b"data: {\"partial\":true}\n\n");
    let end = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("the client's stream must end promptly, not hang");
    assert!(
        matches!(end, Some(Err(_))),
        "the stream must end as a failure, got {end:?}"
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = url::Url::parse(&format!("http://{}", closed.local_addr().unwrap())).unwrap();
    drop(closed);
    let proxy = Proxy::start(flags(), &url, TestIdentity::ok()).await;
    let r = post_json(&proxy.base, "/v1/chat/completions", CHAT).await;
    let message = expect_error(r, 502, "upstream_unreachable").await;
    assert!(message.to_lowercase().contains("connect"), "{message}");
}

#[tokio::test]
async fn a_silent_upstream_is_a_504() {
    let mock = Mock::start(|_| Reply::Hang).await;
    let mut f = flags();
    f.response_timeout = Some(Duration::from_millis(300));
    let proxy = Proxy::start(f, &mock.url, TestIdentity::ok()).await;
    let r = post_json(&proxy.base, "/v1/chat/completions", CHAT).await;
    expect_error(r, 504, "upstream_timeout").await;
}

#[tokio::test]
async fn no_token_is_a_503_with_the_credentials_explanation() {
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let proxy = Proxy::start(
        flags(),
        &mock.url,
        TestIdentity::failing("Azure CLI not logged in: run `az login`"),
    )
    .await;
    let r = post_json(&proxy.base, "/v1/chat/completions", CHAT).await;
    let message = expect_error(r, 503, "no_token").await;
    assert!(message.contains("run `az login`"), "{message}");
    let ready = client()
        .get(format!("{}/readyz", proxy.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("az login"));
    assert!(mock.seen().is_empty());
}

#[tokio::test]
async fn fifty_cold_requests_share_one_acquisition() {
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let identity = TestIdentity::slow(Duration::from_millis(500));
    let proxy = Proxy::start(flags(), &mock.url, identity.clone()).await;
    let c = client();
    let requests = (0..50).map(|_| {
        c.post(format!("{}/v1/chat/completions", proxy.base))
            .header("content-type", "application/json")
            .body(CHAT)
            .send()
    });
    for r in futures_util::future::join_all(requests).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    assert_eq!(identity.calls(), 1);
    assert_eq!(mock.seen().len(), 50);
}

#[tokio::test]
async fn health_and_readiness() {
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let identity = TestIdentity::slow(Duration::from_millis(300));
    let proxy = Proxy::start(flags(), &mock.url, identity).await;
    let c = client();
    let health = c
        .get(format!("{}/healthz", proxy.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let not_yet = c
        .get(format!("{}/readyz", proxy.base))
        .send()
        .await
        .unwrap();
    assert_eq!(not_yet.status(), 503, "no token held yet");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c
            .get(format!("{}/readyz", proxy.base))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["credential"], "TestIdentity");
            assert!(
                !v.to_string().contains("test-token"),
                "readiness must not show the token"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let mock = Mock::start(|_| Reply::json(r#"{"h2":true}"#)).await;
    let proxy = Proxy::start(flags(), &mock.url, TestIdentity::ok()).await;
    let c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = c
        .post(format!("{}/v1/chat/completions", proxy.base))
        .header("content-type", "application/json")
        .body(CHAT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"h2":true}"#);
}

/// An upload keyless need not inspect (a file for `/v1/files`) streams through: the
/// upstream sees its first part while the client is still holding back the rest.
#[tokio::test]
async fn uninspected_request_bodies_stream() {
    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    let (first_seen_tx, mut first_seen_rx) = mpsc::channel::<Bytes>(1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = url::Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let tx = first_seen_tx.clone();
            async move {
                let mut body = req.into_body();
                let mut total = Vec::new();
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame.unwrap().into_data() {
                        if total.is_empty() {
                            tx.send(data.clone()).await.unwrap();
                        }
                        total.extend_from_slice(&data);
                    }
                }
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    Bytes::from(format!("{{\"bytes\":{}}}", total.len())),
                )))
            }
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await
            .unwrap();
    });
    let proxy = Proxy::start(flags(), &url, TestIdentity::ok()).await;
    let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let body =
        futures_util::stream::unfold(
            body_rx,
            |mut rx| async move { rx.recv().await.map(|x| (x, rx)) },
        );
    let request = client()
        .post(format!("{}/v1/files", proxy.base))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let request = tokio::spawn(request);
    body_tx
        .send(Ok(Bytes::from_static(b"first part;")))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), first_seen_rx.recv())
        .await
        .expect("the upstream must see the first part before the client sends the rest")
        .unwrap();
    assert_eq!(&first[..], b"first part;");
    body_tx
        .send(Ok(Bytes::from_static(b"second part")))
        .await
        .unwrap();
    drop(body_tx);
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.text().await.unwrap(), r#"{"bytes":22}"#);
}
