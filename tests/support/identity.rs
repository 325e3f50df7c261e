//! A fake App Service-style managed identity endpoint (`IDENTITY_ENDPOINT`).

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The query and `x-identity-header` of each identity request.
pub type IdentityRequests = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// An App Service-style managed identity endpoint on 127.0.0.1: answers
/// `GET ?api-version=2019-08-01&resource=...` carrying `x-identity-header`.
pub struct FakeIdentity {
    /// `http://127.0.0.1:PORT/msi/token`.
    pub url: String,
    /// How many requests it has had.
    pub calls: Arc<AtomicUsize>,
    /// The query and `x-identity-header` of each request, in order.
    pub seen: IdentityRequests,
}

impl FakeIdentity {
    /// Starts one. Each request is recorded, then answered after `delay`: with
    /// `token(n)` (`n` counting requests from 0), living an hour, when its
    /// `x-identity-header` is `secret`, else with a 401.
    pub async fn start(
        secret: &'static str,
        delay: Duration,
        token: impl Fn(usize) -> String + Send + Sync + 'static,
    ) -> FakeIdentity {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/msi/token", listener.local_addr().unwrap());
        let calls = Arc::new(AtomicUsize::new(0));
        let seen: IdentityRequests = Arc::default();
        let token = Arc::new(token);
        let (c, s) = (calls.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (c, s, token) = (c.clone(), s.clone(), token.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (c, s, token) = (c.clone(), s.clone(), token.clone());
                        async move {
                            let n = c.fetch_add(1, Ordering::SeqCst);
                            let header = req
                                .headers()
                                .get("x-identity-header")
                                .map(|v| v.to_str().unwrap().to_owned());
                            s.lock()
                                .unwrap()
                                .push((req.uri().query().unwrap_or("").to_owned(), header.clone()));
                            tokio::time::sleep(delay).await;
                            let expires = SystemTime::now()
                                .duration_since(UNIX_EPOCH)
                                .unwrap()
                                .as_secs()
                                + 3600;
                            let (status, body) = if header.as_deref() == Some(secret) {
                                let body = serde_json::json!({
                                    "access_token": token(n),
                                    "expires_on": expires.to_string(),
                                    "resource": "https://cognitiveservices.azure.com",
                                    "token_type": "Bearer",
                                });
                                (200, body.to_string())
                            } else {
                                (401, r#"{"error":"bad identity header"}"#.to_owned())
                            };
                            let mut r = http::Response::new(Full::new(Bytes::from(body)));
                            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            r.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeIdentity { url, calls, seen }
    }
}
