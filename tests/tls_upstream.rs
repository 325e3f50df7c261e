//! The client towards Azure: rustls, HTTP/2 when the server offers it through ALPN,
//! HTTP/1.1 when it does not, pooled connections either way, and a clear 502 when the
//! server's certificate is not trusted. The upstream here is a local TLS server whose
//! certificate comes from a CA made at test time and handed to keyless by `ca_file`.

mod support;

use support::mock::{Mock, Proxy, Reply, TestIdentity, client, flags};

/// The test kit's mock Azure over TLS, answering `{"ok":true}`.
async fn tls_upstream(alpn: &[&[u8]]) -> Mock {
    Mock::start_tls(alpn, |_| Reply::json(r#"{"ok":true}"#)).await
}

/// The HTTP version of every request the mock saw, in order.
fn versions(upstream: &Mock) -> Vec<http::Version> {
    upstream.seen().iter().map(|s| s.version).collect()
}

/// Five requests, each on a new client connection, through keyless with `workers`
/// threads (each keeps its own upstream pool).
async fn five_requests(upstream: &Mock, trust: bool, workers: usize) -> Vec<(u16, String)> {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, upstream.ca_pem.as_deref().unwrap()).unwrap();
    let mut f = flags();
    if trust {
        f.ca_file = Some(ca_file);
    }
    f.max_attempts = Some(1);
    f.workers = Some(workers);
    let proxy = Proxy::start(f, &upstream.url, TestIdentity::ok()).await;
    let mut out = Vec::new();
    for _ in 0..5 {
        let r = client()
            .post(format!("{}/v1/chat/completions", proxy.base))
            .header("content-type", "application/json")
            .body(r#"{"model":"m","messages":[]}"#)
            .send()
            .await
            .unwrap();
        out.push((r.status().as_u16(), r.text().await.unwrap()));
    }
    out
}

#[tokio::test]
async fn http2_when_azure_offers_it_over_one_pooled_connection() {
    let upstream = tls_upstream(&[b"h2", b"http/1.1"]).await;
    for (status, body) in five_requests(&upstream, true, 1).await {
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(versions(&upstream), vec![http::Version::HTTP_2; 5]);
    assert_eq!(upstream.connections(), 1, "one connection, reused");
}

#[tokio::test]
async fn http1_when_azure_offers_only_that_with_the_connection_reused() {
    let upstream = tls_upstream(&[b"http/1.1"]).await;
    for (status, body) in five_requests(&upstream, true, 1).await {
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(versions(&upstream), vec![http::Version::HTTP_11; 5]);
    assert_eq!(
        upstream.connections(),
        1,
        "keep-alive reuses the connection"
    );
}

#[tokio::test]
async fn each_worker_reuses_its_own_pooled_connection() {
    let upstream = tls_upstream(&[b"h2", b"http/1.1"]).await;
    for (status, body) in five_requests(&upstream, true, 2).await {
        assert_eq!(status, 200, "{body}");
    }
    let opened = upstream.connections();
    assert!(
        (1..=2).contains(&opened),
        "two workers open at most one connection each, not one a request: {opened}"
    );
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_502_that_says_so() {
    let upstream = tls_upstream(&[b"h2", b"http/1.1"]).await;
    let (status, body) = five_requests(&upstream, false, 1).await.remove(0);
    assert_eq!(status, 502);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let message = v["error"]["message"].as_str().unwrap().to_lowercase();
    assert!(message.contains("certificate"), "{message}");
    assert!(versions(&upstream).is_empty());
}
