//! The simulator over real sockets: each test starts its own on port 0 and drives it with
//! a hyper client.

use super::knobs::*;
use super::*;
use http::Request;
use http::response::Parts as ResponseParts;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// The features of issue 14 and the Responses lifecycle, over the same harness.
mod features;

const SCOPE: &str = "https://cognitiveservices.azure.com/.default";

struct Harness {
    simulator: Simulator,
    token: String,
    client: Client<HttpConnector, Full<Bytes>>,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn harness() -> Harness {
    harness_with(Options::default()).await
}

async fn harness_with(options: Options) -> Harness {
    let shutdown = CancellationToken::new();
    let simulator = Simulator::start_with(options, shutdown.clone())
        .await
        .unwrap();
    let token = simulator.identity().acquire(SCOPE).await.unwrap();
    Harness {
        token: token.secret.expose().to_owned(),
        simulator,
        client: Client::builder(TokioExecutor::new()).build_http(),
        shutdown,
    }
}

impl Harness {
    fn url(&self, path_and_query: &str) -> url::Url {
        self.simulator.endpoint().join(path_and_query).unwrap()
    }

    /// A POST with this harness's bearer token and a JSON body.
    fn post(&self, path: &str, body: &Value) -> Request<Full<Bytes>> {
        Request::post(self.url(path).as_str())
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    }

    /// A bodiless request with this harness's bearer token.
    fn bare(&self, method: Method, path: &str) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .uri(self.url(path).as_str())
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .body(Full::default())
            .unwrap()
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> (ResponseParts, Bytes) {
        let response = self.client.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        (parts, body.collect().await.unwrap().to_bytes())
    }

    async fn send_json(&self, request: Request<Full<Bytes>>) -> (ResponseParts, Value) {
        let (parts, body) = self.send(request).await;
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
        (parts, json)
    }
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(body: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(body).unwrap();
    assert!(
        text.ends_with("\n\n"),
        "body must end with a complete event"
    );
    text.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            event
                .lines()
                .find_map(|line| line.strip_prefix("data: "))
                .unwrap_or_else(|| panic!("event without data: {event:?}"))
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn streamed_chat_starts_with_empty_choices_and_ends_with_done() {
    let h = harness().await;
    let mut request = h.post(
        "/openai/v1/chat/completions",
        &json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "hi"}]}),
    );
    request
        .headers_mut()
        .insert(SIM_CHUNKS, HeaderValue::from_static("5"));
    let (parts, body) = h.send(request).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(
        parts.headers[header::CONTENT_TYPE],
        "text/event-stream; charset=utf-8"
    );
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));

    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    // Azure's first frame: no choices, empty id and model, the prompt verdict.
    assert_eq!(chunks[0]["choices"], json!([]));
    assert_eq!(chunks[0]["id"], "");
    assert_eq!(chunks[0]["model"], "");
    assert!(chunks[0]["prompt_filter_results"].is_array());
    assert_eq!(chunks[1]["choices"][0]["delta"]["role"], "assistant");
    // first, role, 5 content, stop, usage.
    assert_eq!(chunks.len(), 9);
    let content: String = chunks[2..7]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(content, DEFAULT_REPLY);
    assert_eq!(chunks[7]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[8]["choices"], json!([]));
    assert!(chunks[8]["usage"]["total_tokens"].as_u64().unwrap() > 0);
    for chunk in &chunks[1..] {
        assert_eq!(chunk["model"], "gpt-4o");
        assert_eq!(chunk["object"], "chat.completion.chunk");
    }
}

#[tokio::test]
async fn stream_frames_arrive_as_separate_body_frames() {
    let h = harness().await;
    let mut request = h.post(
        "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        &json!({"stream": true, "messages": []}),
    );
    request
        .headers_mut()
        .insert(SIM_CHUNKS, HeaderValue::from_static("3"));
    request
        .headers_mut()
        .insert(SIM_DELAY_MS, HeaderValue::from_static("30"));
    let started = std::time::Instant::now();
    let response = h.client.request(request).await.unwrap();
    let mut body = response.into_body();
    let mut received = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received.push(data);
        }
    }
    // first, role, 3 content, stop: each its own write, 30 ms apart; [DONE] right after
    // the stop frame, so the client may read the two at once.
    assert!((6..=7).contains(&received.len()), "{received:?}");
    assert!(received.iter().all(|frame| frame.ends_with(b"\n\n")));
    assert!(
        received[5].ends_with(b"data: [DONE]\n\n") || received[6][..] == b"data: [DONE]\n\n"[..]
    );
    assert!(started.elapsed() >= Duration::from_millis(5 * 30));
}

#[tokio::test]
async fn missing_or_foreign_token_is_rejected_with_401() {
    let h = harness().await;
    let path = "/openai/v1/chat/completions";
    let body = Full::new(Bytes::from_static(br#"{"model":"gpt-4o","messages":[]}"#));

    let missing = Request::post(h.url(path).as_str())
        .body(body.clone())
        .unwrap();
    let (parts, json) = h.send_json(missing).await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    assert_eq!(json["error"]["code"], "401");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Unauthorized. Access token is missing")
    );
    assert!(parts.headers.contains_key(APIM_REQUEST_ID));

    let other = Minter::new().mint().0;
    let foreign = Request::post(h.url(path).as_str())
        .header(header::AUTHORIZATION, format!("Bearer {other}"))
        .body(body.clone())
        .unwrap();
    assert_eq!(h.send(foreign).await.0.status, StatusCode::UNAUTHORIZED);

    // A client key is refused even next to a valid token: keyless must never forward one.
    let mut keyed = h.post(path, &json!({"model": "gpt-4o"}));
    keyed
        .headers_mut()
        .insert(API_KEY_FOR_TEST, HeaderValue::from_static("sk-client"));
    let (parts, json) = h.send_json(keyed).await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Access denied due to invalid subscription key")
    );
}

const API_KEY_FOR_TEST: HeaderName = HeaderName::from_static("api-key");

#[tokio::test]
async fn minted_token_is_accepted() {
    let h = harness().await;
    let request = h.post(
        "/openai/deployments/my-gpt/chat/completions?api-version=2024-10-21",
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
    );
    let (parts, json) = h.send_json(request).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(json["model"], "my-gpt");
    assert_eq!(json["choices"][0]["message"]["role"], "assistant");
    assert_eq!(json["choices"][0]["message"]["content"], DEFAULT_REPLY);
    assert_eq!(json["choices"][0]["finish_reason"], "stop");
    assert!(json["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert!(json["prompt_filter_results"].is_array());
    assert_eq!(parts.headers[X_MS_REGION], "Simulated");
    assert_eq!(parts.headers[APIM_REQUEST_ID].len(), 36);
    assert_eq!(parts.headers[APIM_REQUEST_ID], parts.headers[X_REQUEST_ID]);
}

#[tokio::test]
async fn msi_token_endpoint_requires_the_identity_header() {
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(listener, Some("s3cret".to_owned()), shutdown.clone()));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let url = format!(
        "http://{addr}/msi/token?api-version=2019-08-01&resource=https://cognitiveservices.azure.com"
    );
    let get = |secret: Option<&str>| {
        let mut request = Request::get(&url).header("metadata", "true");
        if let Some(secret) = secret {
            request = request.header("x-identity-header", secret);
        }
        client.request(request.body(Full::default()).unwrap())
    };

    assert_eq!(get(None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        get(Some("wrong")).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    let response = get(Some("s3cret")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["resource"], "https://cognitiveservices.azure.com");
    let expires_on: u64 = json["expires_on"].as_str().unwrap().parse().unwrap();
    assert!(expires_on > unix_now() + 3000);

    // The token it hands out opens the API.
    let token = json["access_token"].as_str().unwrap();
    let request = Request::get(format!("http://{addr}/openai/v1/models"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::default())
        .unwrap();
    assert_eq!(
        client.request(request).await.unwrap().status(),
        StatusCode::OK
    );

    shutdown.cancel();
    server.await.unwrap().unwrap();
}

/// The real azure_identity `ManagedIdentityCredential` reads `IDENTITY_ENDPOINT` and
/// `IDENTITY_HEADER` from the process environment, so it runs in a child process (this
/// test binary, running only [`managed_identity_child`]) instead of mutating ours.
#[tokio::test]
async fn azure_identity_managed_identity_credential_works_against_msi_endpoint() {
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(listener, Some("s3cret".to_owned()), shutdown.clone()));
    let output = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "simulate::tests::managed_identity_child"])
        .args(["--ignored", "--nocapture", "--test-threads=1"])
        .env("IDENTITY_ENDPOINT", format!("http://{addr}/msi/token"))
        .env("IDENTITY_HEADER", "s3cret")
        .env(
            "KEYLESS_SIM_CHILD_API",
            format!("http://{addr}/openai/v1/models"),
        )
        .env_remove("IDENTITY_SERVER_THUMBPRINT")
        .env_remove("MSI_ENDPOINT")
        .env_remove("IMDS_ENDPOINT")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test]
#[ignore = "run in a child process by azure_identity_managed_identity_credential_works_against_msi_endpoint"]
async fn managed_identity_child() {
    use azure_core::credentials::TokenCredential;
    let Ok(api) = std::env::var("KEYLESS_SIM_CHILD_API") else {
        return;
    };
    let credential = azure_identity::ManagedIdentityCredential::new(None).unwrap();
    let token = credential.get_token(&[SCOPE], None).await.unwrap();
    assert!(token.expires_on > azure_core::time::OffsetDateTime::now_utc());
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let request = Request::get(api)
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", token.token.secret()),
        )
        .body(Full::default())
        .unwrap();
    assert_eq!(
        client.request(request).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn msi_token_endpoint_is_absent_without_a_secret() {
    let h = harness().await;
    let request = Request::get(
        h.url("/msi/token?api-version=2019-08-01&resource=x")
            .as_str(),
    )
    .header("x-identity-header", "anything")
    .body(Full::default())
    .unwrap();
    assert_eq!(h.send(request).await.0.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn responses_stream_sequence_numbers_increase() {
    let h = harness().await;
    let request = h.post(
        "/openai/responses?api-version=2025-04-01-preview",
        &json!({"model": "gpt-4o", "input": "hi", "stream": true}),
    );
    let (parts, body) = h.send(request).await;
    assert_eq!(parts.status, StatusCode::OK);
    let text = std::str::from_utf8(&body).unwrap();
    assert!(!text.contains("[DONE]"));
    let events: Vec<(String, Value)> = text
        .split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            let kind = event
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap();
            let data = event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap();
            (kind.to_owned(), serde_json::from_str(data).unwrap())
        })
        .collect();
    for (i, (kind, data)) in events.iter().enumerate() {
        assert_eq!(&data["type"], kind.as_str());
        assert_eq!(data["sequence_number"], i, "{kind}");
    }
    let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(
        kinds[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "response.output_text.delta")
            .count(),
        8
    );
    assert_eq!(
        kinds[kinds.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    let deltas: String = events
        .iter()
        .filter(|(kind, _)| kind == "response.output_text.delta")
        .map(|(_, data)| data["delta"].as_str().unwrap())
        .collect();
    let completed = &events[events.len() - 1].1["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["model"], "gpt-4o");
    assert_eq!(
        completed["output"][0]["content"][0]["text"],
        deltas.as_str()
    );
}

#[tokio::test]
async fn embeddings_base64_decodes_to_the_float_vectors() {
    let h = harness().await;
    let path = "/openai/deployments/embed/embeddings?api-version=2024-10-21";
    let input = json!(["first text", "second text"]);
    let (parts, floats) = h.send_json(h.post(path, &json!({"input": input}))).await;
    assert_eq!(parts.status, StatusCode::OK);
    let (_, encoded) = h
        .send_json(h.post(path, &json!({"input": input, "encoding_format": "base64"})))
        .await;
    assert_eq!(encoded["model"], "embed");
    assert_eq!(encoded["data"].as_array().unwrap().len(), 2);
    for i in 0..2 {
        let bytes = decode_base64(encoded["data"][i]["embedding"].as_str().unwrap());
        let decoded: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let expected: Vec<f32> = floats["data"][i]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(decoded.len(), 8);
        assert_eq!(decoded, expected);
        assert_eq!(encoded["data"][i]["index"], i);
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

#[tokio::test]
async fn dated_route_without_api_version_is_404() {
    let h = harness().await;
    let request = h.post("/openai/deployments/gpt-4o/chat/completions", &json!({}));
    let (parts, json) = h.send_json(request).await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    assert_eq!(
        json,
        json!({"error": {"code": "404", "message": "Resource not found"}})
    );
}

#[tokio::test]
async fn invalid_json_is_400() {
    let h = harness().await;
    let mut request = h.post("/openai/v1/chat/completions", &json!({}));
    *request.body_mut() = Full::new(Bytes::from_static(b"{not json"));
    let (parts, json) = h.send_json(request).await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    assert_eq!(json["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn simulated_429_carries_retry_after_headers() {
    let h = harness().await;
    let mut request = h.post("/openai/v1/chat/completions", &json!({"model": "gpt-4o"}));
    request
        .headers_mut()
        .insert(SIM_STATUS, HeaderValue::from_static("429"));
    request
        .headers_mut()
        .insert(SIM_RETRY_AFTER_MS, HeaderValue::from_static("1500"));
    let (parts, json) = h.send_json(request).await;
    assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(parts.headers[errors::RETRY_AFTER_MS_FOR_TEST], "1500");
    assert_eq!(parts.headers[header::RETRY_AFTER], "2");
    assert_eq!(json["error"]["code"], "429");
}

#[tokio::test]
async fn reply_knob_sets_the_content() {
    let h = harness().await;
    let mut request = h.post(
        "/openai/v1/chat/completions",
        &json!({"model": "m", "messages": [{"role": "user", "content": "ping"}]}),
    );
    request
        .headers_mut()
        .insert(SIM_REPLY, HeaderValue::from_static("pong"));
    let (_, json) = h.send_json(request).await;
    // One word, eight chunks: the reply is said once all the same.
    assert_eq!(json["choices"][0]["message"]["content"], "pong");
}

#[tokio::test]
async fn models_and_transcriptions_answer() {
    let h = harness().await;
    let request = Request::get(h.url("/openai/models?api-version=2024-10-21").as_str())
        .header(header::AUTHORIZATION, format!("Bearer {}", h.token))
        .body(Full::default())
        .unwrap();
    let (parts, json) = h.send_json(request).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(json["object"], "list");
    assert!(!json["data"].as_array().unwrap().is_empty());

    let audio = [0u8; 1234];
    let mut body = Vec::new();
    body.extend_from_slice(
        b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n",
    );
    body.extend_from_slice(
        b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\
          Content-Type: audio/wav\r\n\r\n",
    );
    body.extend_from_slice(&audio);
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    let request = Request::post(h.url("/openai/v1/audio/transcriptions").as_str())
        .header(header::AUTHORIZATION, format!("Bearer {}", h.token))
        .header(header::CONTENT_TYPE, "multipart/form-data; boundary=XyZ")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let (parts, json) = h.send_json(request).await;
    assert_eq!(parts.status, StatusCode::OK);
    let text = json["text"].as_str().unwrap();
    assert!(
        text.contains("whisper-1") && text.contains("1234 bytes"),
        "{text}"
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let h = harness().await;
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let request = h.post(
        "/openai/v1/chat/completions",
        &json!({"model": "gpt-4o", "stream": true, "messages": []}),
    );
    let response = client.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(sse_data(&body).last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let server = tokio::spawn(serve(listener, None, shutdown.clone()));
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[test]
fn routes_cover_both_azure_url_styles() {
    let v = Some("api-version=2024-10-21");
    let preview = Some("api-version=2025-04-01-preview");
    let op = Routed::Op;
    let cases = [
        (
            Method::POST,
            "/openai/v1/chat/completions",
            None,
            op(Route::Chat(None)),
        ),
        (
            Method::POST,
            "/openai/v1/chat/completions",
            Some("api-version=preview"),
            op(Route::Chat(None)),
        ),
        (
            Method::POST,
            "/openai/v1/chat/completions",
            Some("api-version=2024-10-21"),
            Routed::BadApiVersion,
        ),
        (
            Method::POST,
            "/openai/deployments/d/chat/completions",
            v,
            op(Route::Chat(Some("d"))),
        ),
        (
            Method::POST,
            "/openai/deployments/d/chat/completions",
            None,
            Routed::NotFound,
        ),
        (
            Method::POST,
            "/openai/deployments/d/chat/completions",
            Some("api-version="),
            Routed::NotFound,
        ),
        (
            Method::POST,
            "/openai/deployments/d/chat/completions",
            Some("api-version=2024-13-01"),
            Routed::BadApiVersion,
        ),
        (
            Method::POST,
            "/openai/deployments/d/chat/completions",
            Some("api-version=2021-01-01"),
            Routed::BadApiVersion,
        ),
        (
            Method::POST,
            "/openai/deployments/d/chat/completions",
            Some("api-version=latest"),
            Routed::BadApiVersion,
        ),
        (
            Method::POST,
            "/openai/deployments//chat/completions",
            v,
            Routed::NotFound,
        ),
        (
            Method::POST,
            "/openai/deployments/d/completions",
            v,
            op(Route::Completions(Some("d"))),
        ),
        (
            Method::POST,
            "/openai/v1/completions",
            None,
            op(Route::Completions(None)),
        ),
        (
            Method::POST,
            "/openai/v1/responses",
            None,
            op(Route::Responses),
        ),
        (
            Method::POST,
            "/openai/responses",
            preview,
            op(Route::Responses),
        ),
        (
            Method::POST,
            "/openai/responses",
            v,
            Routed::ResponsesNeedNewerApiVersion,
        ),
        (
            Method::GET,
            "/openai/responses/resp_1",
            v,
            Routed::ResponsesNeedNewerApiVersion,
        ),
        (
            Method::GET,
            "/openai/responses/resp_1",
            preview,
            op(Route::Response(stored::Op::Retrieve, "resp_1")),
        ),
        (
            Method::POST,
            "/openai/v1/responses/resp_1/cancel",
            None,
            op(Route::Response(stored::Op::Cancel, "resp_1")),
        ),
        (
            Method::DELETE,
            "/openai/v1/responses/resp_1",
            None,
            op(Route::Response(stored::Op::Delete, "resp_1")),
        ),
        (
            Method::GET,
            "/openai/v1/responses/resp_1/input_items",
            None,
            op(Route::Response(stored::Op::InputItems, "resp_1")),
        ),
        (
            Method::POST,
            "/openai/v1/embeddings",
            None,
            op(Route::Embeddings(None)),
        ),
        (
            Method::POST,
            "/openai/deployments/e/embeddings",
            v,
            op(Route::Embeddings(Some("e"))),
        ),
        (Method::GET, "/openai/v1/models", None, op(Route::Models)),
        (Method::GET, "/openai/models", v, op(Route::Models)),
        (
            Method::GET,
            "/openai/v1/models/gpt-4o",
            None,
            op(Route::Model("gpt-4o")),
        ),
        (
            Method::POST,
            "/openai/v1/audio/transcriptions",
            None,
            op(Route::Transcriptions(None)),
        ),
        (
            Method::POST,
            "/openai/deployments/w/audio/transcriptions",
            v,
            op(Route::Transcriptions(Some("w"))),
        ),
        (
            Method::POST,
            "/openai/deployments/w/audio/translations",
            v,
            op(Route::Translations(Some("w"))),
        ),
        (
            Method::POST,
            "/openai/v1/audio/speech",
            None,
            op(Route::Speech(None)),
        ),
        (
            Method::POST,
            "/openai/deployments/i/images/generations",
            v,
            op(Route::Images(Some("i"))),
        ),
        (Method::POST, "/openai/files", v, op(Route::UploadFile)),
        (Method::GET, "/openai/v1/files", None, op(Route::Files)),
        (
            Method::GET,
            "/openai/v1/files/file-1/content",
            None,
            op(Route::File(files::Op::Content, "file-1")),
        ),
        (
            Method::DELETE,
            "/openai/files/file-1",
            v,
            op(Route::File(files::Op::Delete, "file-1")),
        ),
        (Method::POST, "/openai/batches", v, op(Route::CreateBatch)),
        (
            Method::POST,
            "/openai/v1/batches/b/cancel",
            None,
            op(Route::CancelBatch("b")),
        ),
        // Deployment operations need the deployment on the dated surface, and the others
        // must not have one.
        (
            Method::POST,
            "/openai/chat/completions",
            v,
            Routed::NotFound,
        ),
        (
            Method::GET,
            "/openai/deployments/d/models",
            v,
            Routed::NotFound,
        ),
        (
            Method::GET,
            "/openai/v1/chat/completions",
            None,
            Routed::NotFound,
        ),
        (Method::POST, "/v1/chat/completions", None, Routed::NotFound),
    ];
    for (method, path, query, expected) in cases {
        assert_eq!(
            route(&method, path, query),
            expected,
            "{method} {path}?{query:?}"
        );
    }
}

#[test]
fn tokens_verify_only_when_minted_here_and_unexpired() {
    let minter = Minter::new();
    let (token, expires) = minter.mint();
    assert!(minter.verify(&token, unix_now()));
    assert!(!minter.verify(&token, expires));
    assert!(!Minter::new().verify(&token, unix_now()));
    assert!(!minter.verify(&token.replacen("sim.", "sim.f", 1), unix_now()));
    assert!(!minter.verify("sim.", unix_now()));
}

#[test]
fn json_strings_are_escaped() {
    let mut out = String::new();
    push_json_str(&mut out, "a\"b\\c\nd\u{1}é");
    assert_eq!(
        serde_json::from_str::<String>(&out).unwrap(),
        "a\"b\\c\nd\u{1}é"
    );
}
