//! OpenTelemetry traces (issue 16), through the real binary: an OTLP/HTTP receiver here
//! decodes what keyless exports with the protocol's generated types and checks the spans
//! of a plain request, a stream, a retried request and a failed one, the `traceparent`
//! the mock Azure receives, and that a collector that is down or slow changes nothing for
//! the client.

mod support;

use bytes::Bytes;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::mock::{Mock, Reply, client, script};
use support::running::{self, Running};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// An OTLP/HTTP collector: every span it is sent; `delay` before it answers.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    /// Each export's headers and its resource's `service.name`.
    exports: Arc<Mutex<Vec<(http::HeaderMap, String)>>>,
}

impl Collector {
    async fn start(delay: Duration) -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        let exports = Arc::new(Mutex::new(Vec::new()));
        let seen = exports.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let kept = kept.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let kept = kept.clone();
                            let seen = seen.clone();
                            async move {
                                assert_eq!(req.uri().path(), "/v1/traces");
                                let headers = req.headers().clone();
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let export = ExportTraceServiceRequest::decode(body).unwrap();
                                let service = export
                                    .resource_spans
                                    .iter()
                                    .flat_map(|rs| rs.resource.iter())
                                    .flat_map(|r| r.attributes.iter())
                                    .find(|kv| kv.key == "service.name")
                                    .and_then(|kv| kv.value.as_ref()?.value.clone());
                                let service = match service {
                                    Some(Value::StringValue(s)) => s,
                                    other => format!("{other:?}"),
                                };
                                seen.lock().unwrap().push((headers, service));
                                tokio::time::sleep(delay).await;
                                let mut spans = kept.lock().unwrap();
                                for rs in export.resource_spans {
                                    for ss in rs.scope_spans {
                                        spans.extend(ss.spans);
                                    }
                                }
                                Ok::<_, std::convert::Infallible>(http::Response::new(
                                    http_body_util::Full::new(Bytes::new()),
                                ))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Collector {
            url,
            spans,
            exports,
        }
    }

    /// Waits until `n` spans came, and returns them all.
    async fn spans(&self, n: usize) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans.lock().unwrap().clone();
            if spans.len() >= n || Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn text(span: &Span, key: &str) -> String {
    match attr(span, key) {
        Some(Value::StringValue(s)) => s.clone(),
        other => panic!("{key}: {other:?} on {}", span.name),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        Some(Value::IntValue(n)) => *n,
        other => panic!("{key}: {other:?} on {}", span.name),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn start(mock: &Mock, collector: &str) -> Running {
    running::start_with(
        mock.url.as_str(),
        "[retry]\nbackoff_base = \"10ms\"\nbackoff_cap = \"20ms\"\n",
        &["--otlp-endpoint", collector],
        // The batch goes out every 100 ms rather than 5 s; a collector's key, as the
        // variable carries it (percent-encoded).
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-collector-key=k%20v,x-tenant=t1",
            ),
        ],
    )
    .await
}

const USAGE: &str = r#"{"id":"c","model":"gpt-4o-mini-2024-07-18","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":3}}}"#;

async fn chat(base: &str, headers: &[(&str, &str)], extra: &str) -> reqwest::Response {
    let mut request = client()
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#
        ));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_request_is_a_server_span_with_one_attempt_and_the_context_reaches_azure() {
    let collector = Collector::start(Duration::ZERO).await;
    let mock = Mock::start(|_| Reply::json(USAGE)).await;
    let keyless = start(&mock, &collector.url).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let answer = chat(
        &keyless.url(),
        &[("traceparent", &format!("00-{trace_id}-{client_span}-01"))],
        "",
    )
    .await;
    assert_eq!(answer.status(), 200);
    answer.text().await.unwrap();

    let spans = collector.spans(2).await;
    let server = spans
        .iter()
        .find(|s| s.kind == SERVER)
        .expect("a server span");
    let attempt = spans
        .iter()
        .find(|s| s.kind == CLIENT)
        .expect("an attempt span");
    assert_eq!(
        hex(&server.trace_id),
        trace_id,
        "the client's trace continued"
    );
    assert_eq!(hex(&server.parent_span_id), client_span);
    assert_eq!(attempt.parent_span_id, server.span_id);
    assert_eq!(server.name, "chat gpt-4o-mini");
    assert_eq!(text(server, "gen_ai.provider.name"), "azure.ai.openai");
    assert_eq!(text(server, "gen_ai.operation.name"), "chat");
    assert_eq!(text(server, "gen_ai.request.model"), "gpt-4o-mini");
    assert_eq!(
        text(server, "gen_ai.response.model"),
        "gpt-4o-mini-2024-07-18"
    );
    assert_eq!(int(server, "gen_ai.usage.input_tokens"), 11);
    assert_eq!(int(server, "gen_ai.usage.output_tokens"), 7);
    assert_eq!(int(server, "gen_ai.usage.cache_read.input_tokens"), 4);
    assert_eq!(int(server, "gen_ai.usage.reasoning.output_tokens"), 3);
    assert_eq!(int(server, "http.response.status_code"), 200);
    assert!(attr(server, "error.type").is_none());
    // No content on a span, ever.
    for span in &spans {
        for kv in &span.attributes {
            assert!(!format!("{:?}", kv.value).contains("\"hi\""), "{}", kv.key);
        }
    }
    // Azure got the attempt's context.
    let seen = mock.one();
    let sent = seen.headers["traceparent"].to_str().unwrap();
    assert_eq!(sent, format!("00-{trace_id}-{}-01", hex(&attempt.span_id)));
    // The export: protobuf, the variable's headers, the service's name.
    let exports = collector.exports.lock().unwrap().clone();
    assert!(!exports.is_empty());
    for (headers, service) in exports {
        assert_eq!(headers["content-type"], "application/x-protobuf");
        assert_eq!(headers["x-collector-key"], "k v");
        assert_eq!(headers["x-tenant"], "t1");
        assert_eq!(service, "keyless");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_a_retry_and_a_failure() {
    let collector = Collector::start(Duration::ZERO).await;
    let mock = Mock::start(script(
        vec![
            // A retried request: a 503, then its 200 (a stream).
            Reply::status(503, &[("retry-after-ms", "10")], "{}"),
        ],
        |seen| {
            if String::from_utf8_lossy(&seen.body).contains("fail") {
                return Reply::status(400, &[], r#"{"error":{"code":"bad"}}"#);
            }
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            for frame in [
                "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"model\":\"m-1\"}\n\n",
                "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
                "data: [DONE]\n\n",
            ] {
                tx.try_send(Ok(Bytes::from(frame))).unwrap();
            }
            Reply::Stream {
                status: 200,
                headers: vec![("content-type", "text/event-stream".to_owned())],
                frames: rx,
            }
        },
    ))
    .await;
    let keyless = start(&mock, &collector.url).await;
    let streamed = chat(
        &keyless.url(),
        &[],
        r#","stream":true,"stream_options":{"include_usage":true}"#,
    )
    .await;
    assert_eq!(streamed.headers()["x-keyless-attempts"], "2");
    assert!(streamed.text().await.unwrap().ends_with("[DONE]\n\n"));
    let failed = chat(&keyless.url(), &[], r#","user":"fail""#).await;
    assert_eq!(failed.status(), 400);

    let spans = collector.spans(5).await;
    let servers: Vec<&Span> = spans.iter().filter(|s| s.kind == SERVER).collect();
    assert_eq!(servers.len(), 2, "{spans:?}");
    let stream = servers
        .iter()
        .find(|s| int(s, "http.response.status_code") == 200)
        .unwrap();
    let attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == CLIENT && s.parent_span_id == stream.span_id)
        .collect();
    assert_eq!(attempts.len(), 2, "a retry is a second child");
    let first = attempts
        .iter()
        .find(|s| int(s, "keyless.attempt") == 1)
        .unwrap();
    assert_eq!(text(first, "error.type"), "503");
    assert_eq!(
        int(stream, "gen_ai.usage.input_tokens"),
        5,
        "the stream's usage"
    );
    assert!(
        stream.end_time_unix_nano > attempts.iter().map(|a| a.end_time_unix_nano).max().unwrap(),
        "the server span ends with the stream"
    );
    let failure = servers
        .iter()
        .find(|s| int(s, "http.response.status_code") == 400)
        .unwrap();
    assert_eq!(text(failure, "error.type"), "400");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_down_or_slow_changes_nothing_for_the_client() {
    let mock = Mock::start(|_| Reply::json(USAGE)).await;
    // Down: nothing listens there.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down_url = format!("http://{}", down.local_addr().unwrap());
    drop(down);
    // Slow: holds every export for 20 s.
    let slow = Collector::start(Duration::from_secs(20)).await;
    for url in [down_url, slow.url.clone()] {
        let keyless = start(&mock, &url).await;
        for _ in 0..50 {
            let answer = chat(&keyless.url(), &[], "").await;
            assert_eq!(answer.status(), 200);
            assert_eq!(answer.text().await.unwrap(), USAGE);
        }
        let health = client()
            .get(format!("{}/healthz", keyless.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
    }
}
