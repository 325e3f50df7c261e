//! The Responses lifecycle across backends (issue 13): a stored response lives on the
//! resource that created it, so retrieve, cancel, delete, `input_items` and a new
//! response's `previous_response_id` go back there. Through the real binary, with two mock
//! Azure resources: the default endpoint `a`, and `b`.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use support::mock::{Mock, Reply, Seen, client};
use support::running::{self, Running};

/// A resource that names itself in every answer and numbers the responses it creates.
fn resource(name: &'static str) -> impl Fn(&Seen) -> Reply + Send + Sync + 'static {
    let made = Arc::new(AtomicUsize::new(0));
    move |seen: &Seen| {
        let body = String::from_utf8_lossy(&seen.body);
        if seen.method == http::Method::POST && seen.path_and_query.ends_with("/responses") {
            let n = made.fetch_add(1, Ordering::SeqCst);
            let id = format!("resp_{name}{n}");
            if body.contains("\"stream\":true") {
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                for frame in [
                    format!(
                        "event: response.created\ndata: {{\"type\":\"response.created\",\"response\":{{\"id\":\"{id}\",\"status\":\"in_progress\",\"output\":[]}}}}\n\n"
                    ),
                    format!(
                        "event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{{\"id\":\"{id}\",\"status\":\"completed\"}}}}\n\n"
                    ),
                ] {
                    tx.try_send(Ok(bytes::Bytes::from(frame))).unwrap();
                }
                return Reply::Stream {
                    status: 200,
                    headers: vec![("content-type", "text/event-stream".to_owned())],
                    frames: rx,
                };
            }
            return Reply::json(&format!(
                r#"{{"id":"{id}","object":"response","status":"queued","from":"{name}","output":[{{"id":"msg_{n}"}}]}}"#
            ));
        }
        Reply::json(&format!(r#"{{"from":"{name}"}}"#))
    }
}

async fn start(a: &Mock, b: &Mock) -> Running {
    let toml = format!(
        "[models]\n\
         \"on-b\" = [ {{ name = \"b\", endpoint = \"{b}\", deployment = \"d-b\" }} ]\n\
         \"prefers-a\" = [\n  {{ name = \"a\", deployment = \"d-a\", priority = 0 }},\n  {{ name = \"b2\", endpoint = \"{b}\", deployment = \"d-b2\", priority = 1 }},\n]\n",
        b = b.url
    );
    running::start(a.url.as_str(), &toml, &[]).await
}

async fn send(method: reqwest::Method, url: String, body: Option<String>) -> serde_json::Value {
    let mut request = client()
        .request(method, url)
        .header("x-ms-user-isolation-key", "user-7");
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body);
    }
    let response = request.send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_about_a_stored_response_reaches_the_resource_that_made_it() {
    let a = Mock::start(resource("a")).await;
    let b = Mock::start(resource("b")).await;
    let keyless = start(&a, &b).await;
    let base = keyless.url();

    // A background response, created on b (the model's only backend).
    let created = send(
        reqwest::Method::POST,
        format!("{base}/v1/responses"),
        Some(r#"{"model":"on-b","input":"hi","background":true}"#.into()),
    )
    .await;
    assert_eq!(created["from"], "b");
    let id = created["id"].as_str().unwrap().to_owned();
    // And one streamed: its id comes in `response.created`.
    let streamed = send(
        reqwest::Method::POST,
        format!("{base}/v1/responses"),
        Some(r#"{"model":"on-b","input":"hi","stream":true}"#.into()),
    )
    .await;
    let streamed_id = "resp_b1";
    assert!(streamed.as_str().unwrap().contains(streamed_id));

    let before_a = a.seen().len();
    for (method, path) in [
        (reqwest::Method::GET, format!("/v1/responses/{id}")),
        (reqwest::Method::GET, format!("/v1/responses/{streamed_id}")),
        (reqwest::Method::POST, format!("/v1/responses/{id}/cancel")),
        (
            reqwest::Method::GET,
            format!("/v1/responses/{id}/input_items"),
        ),
        (reqwest::Method::DELETE, format!("/v1/responses/{id}")),
        // Azure-style clients too.
        (reqwest::Method::GET, format!("/openai/v1/responses/{id}")),
    ] {
        let answer = send(method.clone(), format!("{base}{path}"), None).await;
        assert_eq!(answer["from"], "b", "{method} {path}");
    }
    // A new response continuing it, for a model whose first choice is a: b, where the
    // previous response lives (the model's backend there).
    let next = send(
        reqwest::Method::POST,
        format!("{base}/v1/responses"),
        Some(format!(
            r#"{{"model":"prefers-a","input":"and then?","previous_response_id":"{id}"}}"#
        )),
    )
    .await;
    assert_eq!(next["from"], "b");
    let continued = b.seen().last().unwrap().clone();
    assert!(
        String::from_utf8_lossy(&continued.body).contains("\"d-b2\""),
        "the model's own deployment on b"
    );
    assert_eq!(
        a.seen().len(),
        before_a,
        "nothing about b's responses reached a"
    );

    // Without a previous response, the model's order holds; an unknown id goes to the
    // default endpoint.
    let fresh = send(
        reqwest::Method::POST,
        format!("{base}/v1/responses"),
        Some(r#"{"model":"prefers-a","input":"hi"}"#.into()),
    )
    .await;
    assert_eq!(fresh["from"], "a");
    let unknown = send(
        reqwest::Method::GET,
        format!("{base}/v1/responses/resp_unknown"),
        None,
    )
    .await;
    assert_eq!(unknown["from"], "a");
    // Every request header passes on, the isolation key included.
    for seen in b.seen() {
        assert_eq!(seen.headers["x-ms-user-isolation-key"], "user-7");
    }
}
