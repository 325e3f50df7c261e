//! The client towards Azure: rustls, HTTP/2 when the server offers it through ALPN,
//! HTTP/1.1 when it does not, pooled connections either way, and a clear 502 when the
//! server's certificate is not trusted. The upstream here is a local TLS server whose
//! certificate comes from a CA made at test time and handed to keyless by `ca_file`.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use support::mock::{Proxy, TestIdentity, client, flags};

struct TlsUpstream {
    url: url::Url,
    ca_pem: String,
    connections: Arc<AtomicUsize>,
    versions: Arc<Mutex<Vec<http::Version>>>,
}

async fn tls_upstream(alpn: &[&[u8]]) -> TlsUpstream {
    let support::tls::TestTls { ca_pem, acceptor } = support::tls::test_tls(&["localhost"], alpn);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let versions = Arc::new(Mutex::new(Vec::new()));
    let (c, v) = (connections.clone(), versions.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            let (acceptor, v) = (acceptor.clone(), v.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        v.lock().unwrap().push(req.version());
                        async move {
                            let mut r = http::Response::new(Full::new(Bytes::from_static(
                                b"{\"ok\":true}",
                            )));
                            r.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    TlsUpstream {
        url: url::Url::parse(&format!("https://localhost:{port}")).unwrap(),
        ca_pem,
        connections,
        versions,
    }
}

/// Five requests, each on a new client connection, through keyless with `workers`
/// threads (each keeps its own upstream pool).
async fn five_requests(upstream: &TlsUpstream, trust: bool, workers: usize) -> Vec<(u16, String)> {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &upstream.ca_pem).unwrap();
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
    assert_eq!(
        *upstream.versions.lock().unwrap(),
        vec![http::Version::HTTP_2; 5]
    );
    assert_eq!(
        upstream.connections.load(Ordering::SeqCst),
        1,
        "one connection, reused"
    );
}

#[tokio::test]
async fn http1_when_azure_offers_only_that_with_the_connection_reused() {
    let upstream = tls_upstream(&[b"http/1.1"]).await;
    for (status, body) in five_requests(&upstream, true, 1).await {
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        *upstream.versions.lock().unwrap(),
        vec![http::Version::HTTP_11; 5]
    );
    assert_eq!(
        upstream.connections.load(Ordering::SeqCst),
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
    let opened = upstream.connections.load(Ordering::SeqCst);
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
    assert!(upstream.versions.lock().unwrap().is_empty());
}
