//! What must never reach Azure, over real sockets: path tricks (backslashes, encoded
//! separators, dot segments in any spelling), methods outside the APIs, client keys in
//! any header, model and deployment names that are path tricks; and what must: answers
//! with a few hundred headers, ordinary requests. Each test owns its mock and its keyless.
//!
//! HTTP clients resolve dot segments and may escape backslashes before sending, so the
//! path tests write their requests by hand on a plain TCP socket.

mod support;

use keyless::config::ApiStyle;
use support::mock::{Mock, Proxy, Reply, TestIdentity, client, flags, post_json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `head` (a request line and headers, without the blank line) and `body` on a new
/// connection that closes after the answer; returns the status and the whole answer.
async fn raw(base: &str, head: &str, body: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let request = format!(
        "{head}\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    (status, answer)
}

async fn start(style: ApiStyle, mock: &Mock) -> Proxy {
    let mut f = flags();
    f.api = Some(style);
    Proxy::start(f, &mock.url, TestIdentity::ok()).await
}

const CHAT: &str = r#"{"model":"gpt-4o","messages":[]}"#;

#[tokio::test]
async fn path_tricks_are_a_400_that_says_why_and_never_reach_azure() {
    for style in [ApiStyle::V1, ApiStyle::Deployments] {
        let mock = Mock::start(|_| Reply::json("{}")).await;
        let proxy = start(style, &mock).await;
        for (method, path) in [
            ("GET", r"/v1/files/..\..\x"),
            ("GET", r"/openai/..\..\x"),
            ("GET", r"/files/..\x"),
            ("GET", "/v1/files/a%5cb"),
            ("GET", "/openai/v1/files/a%5Cb"),
            ("GET", "/v1/files/a%2fb"),
            ("GET", "/openai/v1/files/a%2Fb"),
            ("POST", "/openai/deployments/a%2fb/chat/completions"),
            ("GET", "/v1/%2e%2e/x"),
            ("GET", "/v1/files/.%2E/x"),
            ("GET", "/openai/%2e%2e/x"),
            ("GET", "/openai/v1/%2E./x"),
            ("POST", "/chat/completions/%2e%2e/%2e%2e/x"),
            ("GET", "/v1/files/%252e%252e/x"),
            ("GET", "/v1/files/%252f"),
            ("GET", "/v1/files/a%00"),
            ("GET", "/v1/files/%c0%ae%c0%ae/x"),
            ("POST", "/openai/deployments/../chat/completions"),
            ("POST", "/openai/deployments/a%20b/chat/completions"),
        ] {
            let (status, answer) =
                raw(&proxy.base, &format!("{method} {path} HTTP/1.1"), CHAT).await;
            assert_eq!(status, 400, "{style:?} {path}: {answer}");
            assert!(
                answer.contains("invalid_path"),
                "{style:?} {path}: {answer}"
            );
            assert!(
                answer.contains("Refused path: "),
                "{style:?} {path}: {answer}"
            );
        }
        assert!(mock.seen().is_empty(), "{style:?}: {:?}", mock.seen());
    }
}

#[tokio::test]
async fn each_refusal_says_what_it_refused() {
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let proxy = start(ApiStyle::V1, &mock).await;
    for (path, says) in [
        (r"/v1/files/..\x", "backslash"),
        ("/v1/files/a%2fb", "encoded '/'"),
        ("/v1/files/%2e%2e/x", "'..' segment"),
        ("/v1/files/a%00", "control character"),
        ("/v1/files/a%255c", "double-encoded"),
    ] {
        let (status, answer) = raw(&proxy.base, &format!("GET {path} HTTP/1.1"), "").await;
        assert_eq!(status, 400, "{path}: {answer}");
        assert!(answer.contains(says), "{path} should say {says}: {answer}");
    }
    assert!(mock.seen().is_empty());
}

#[tokio::test]
async fn methods_outside_the_apis_are_a_405() {
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let proxy = start(ApiStyle::V1, &mock).await;
    for head in [
        "CONNECT example.com:443 HTTP/1.1",
        "TRACE /v1/models HTTP/1.1",
        "BREW /v1/chat/completions HTTP/1.1",
        "PROPFIND /openai/v1/files HTTP/1.1",
    ] {
        let (status, answer) = raw(&proxy.base, head, "").await;
        assert_eq!(status, 405, "{head}: {answer}");
        assert!(answer.contains("method_not_allowed"), "{head}: {answer}");
    }
    assert!(mock.seen().is_empty());
    // keyless's own endpoints keep their GET/HEAD-only rule; the API methods pass.
    let (status, _) = raw(&proxy.base, "POST /healthz HTTP/1.1", "").await;
    assert_eq!(status, 405);
    for method in ["OPTIONS", "DELETE", "PATCH", "PUT", "HEAD"] {
        let (status, answer) =
            raw(&proxy.base, &format!("{method} /v1/files/f-1 HTTP/1.1"), "").await;
        assert_eq!(status, 200, "{method}: {answer}");
    }
    assert_eq!(mock.seen().len(), 5);
}

#[tokio::test]
async fn client_keys_in_any_header_never_reach_azure() {
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let proxy = start(ApiStyle::V1, &mock).await;
    let r = client()
        .post(format!("{}/v1/chat/completions", proxy.base))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-client")
        .header("api-key", "azure-key")
        .header("Ocp-Apim-Subscription-Key", "apim-key")
        .header("x-api-key", "anthropic-key")
        .header("api_key", "underscored-key")
        .header("x-goog-api-key", "gemini-key")
        .header("openai-organization", "org-1")
        .body(CHAT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = mock.one();
    for gone in [
        "api-key",
        "ocp-apim-subscription-key",
        "x-api-key",
        "api_key",
        "x-goog-api-key",
    ] {
        assert!(seen.headers.get(gone).is_none(), "{gone} reached Azure");
    }
    assert!(
        seen.headers["authorization"]
            .to_str()
            .unwrap()
            .starts_with("Bearer test-token-"),
        "keyless signs with its own token"
    );
    assert_eq!(seen.headers["openai-organization"], "org-1");
    for (name, value) in &seen.headers {
        let value = value.to_str().unwrap_or("");
        assert!(!value.contains("key"), "{name}: {value} reached Azure");
    }
}

#[tokio::test]
async fn model_names_that_are_path_tricks_are_a_400_in_either_style() {
    let long = "m".repeat(300);
    for style in [ApiStyle::Deployments, ApiStyle::V1] {
        let mock = Mock::start(|_| Reply::json("{}")).await;
        let proxy = start(style, &mock).await;
        for model in [
            "..",
            ".",
            "",
            "a/b",
            "a b",
            "../../x",
            "x?api-version=1",
            long.as_str(),
        ] {
            let body = serde_json::json!({ "model": model, "input": "hi" }).to_string();
            let r = post_json(&proxy.base, "/v1/embeddings", body).await;
            assert_eq!(r.status(), 400, "{style:?} {model:?}");
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "invalid_model", "{style:?} {model:?}");
            let message = v["error"]["message"].as_str().unwrap();
            assert!(message.contains("letters, digits"), "{message}");
        }
        assert!(mock.seen().is_empty(), "{style:?}: {:?}", mock.seen());
    }
}

#[tokio::test]
async fn a_model_name_that_is_no_deployment_name_stays_out_of_the_path() {
    // A fine-tuned id is a fine model name, but not a deployment: in the deployments
    // style it would become one, in the path.
    let body = r#"{"model":"ft:gpt-4o-mini:org::abc","input":"hi"}"#;
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let proxy = start(ApiStyle::Deployments, &mock).await;
    let r = post_json(&proxy.base, "/v1/embeddings", body).await;
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_model");
    assert!(mock.seen().is_empty());

    // In the v1 style it goes in the body only: Azure judges it.
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let proxy = start(ApiStyle::V1, &mock).await;
    let r = post_json(&proxy.base, "/v1/embeddings", body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(mock.one().path_and_query, "/openai/v1/embeddings");
}

#[tokio::test]
async fn an_answer_with_300_headers_reaches_the_client_intact() {
    let headers: Vec<(&'static str, String)> = (0..300)
        .map(|i| {
            let name: &'static str = Box::leak(format!("x-many-{i:03}").into_boxed_str());
            (name, format!("v{i}"))
        })
        .collect();
    let reply = headers.clone();
    let mock = Mock::start(move |_| Reply::Full {
        status: 200,
        headers: reply.clone(),
        body: bytes::Bytes::from_static(b"{}"),
    })
    .await;
    let proxy = start(ApiStyle::V1, &mock).await;
    // By hand: the test's own HTTP client would stop at its 100-header default too.
    let (status, answer) = raw(&proxy.base, "GET /v1/models HTTP/1.1", "").await;
    assert_eq!(status, 200, "{answer}");
    for (name, value) in &headers {
        assert!(
            answer.contains(&format!("\r\n{name}: {value}\r\n")),
            "{name} missing: {answer}"
        );
    }
    assert!(answer.ends_with("\r\n\r\n{}"), "{answer}");
}

#[tokio::test]
async fn ordinary_requests_still_pass() {
    for style in [ApiStyle::V1, ApiStyle::Deployments] {
        let mock = Mock::start(|_| Reply::json(r#"{"ok":true}"#)).await;
        let proxy = start(style, &mock).await;
        let r = post_json(&proxy.base, "/v1/chat/completions", CHAT).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), r#"{"ok":true}"#);
        for path in [
            "/v1/files/file-abc.jsonl/content",
            "/openai/deployments/gpt-4o.v2_x/chat/completions?api-version=2024-10-21",
            "/openai/v1/files/a%20b",
        ] {
            let (status, answer) = raw(&proxy.base, &format!("GET {path} HTTP/1.1"), "").await;
            assert_eq!(status, 200, "{style:?} {path}: {answer}");
        }
        let seen: Vec<String> = mock.seen().into_iter().map(|s| s.path_and_query).collect();
        let expected = match style {
            ApiStyle::V1 => "/openai/v1/chat/completions",
            ApiStyle::Deployments => {
                "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
            }
        };
        assert_eq!(seen[0], expected);
        assert_eq!(
            seen[2],
            "/openai/deployments/gpt-4o.v2_x/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(seen.len(), 4);
    }
}
