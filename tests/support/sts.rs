//! A fake Entra token endpoint (STS): HTTPS on 127.0.0.1 behind a test CA, answering
//! `POST /{tenant}/oauth2/v2.0/token` like Entra does.
//!
//! The one fake STS of the test kit: the integration tests use it as `support::sts`, and the
//! credential unit tests in `src/auth/credential/tests.rs` include this file (and `tls.rs`)
//! with `#[path]`, since unit tests cannot reach `tests/support` otherwise. So it needs
//! nothing but dev-dependencies and its sibling `tls` module.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the fake STS received: its path and form fields.
pub type StsRequest = (String, HashMap<String, String>);

/// How the fake STS answers.
#[derive(Clone, Copy, Debug)]
pub enum StsAnswer {
    /// Each answer carries a new token, `sts-token-<n>` (`n` counting from 1), living this long.
    Tokens(Duration),
    /// Every answer is Entra's 401 for a wrong client secret (AADSTS7000215).
    Reject,
}

/// A running fake STS; stops (with its connections) when dropped.
pub struct FakeSts {
    /// `https://127.0.0.1:PORT/`, the authority host to give a credential.
    pub authority: url::Url,
    /// The test CA that signed its certificate, PEM.
    pub ca_pem: String,
    /// The CA in a file, for `SSL_CERT_FILE` of a spawned keyless.
    pub ca_file: tempfile::NamedTempFile,
    seen: Arc<Mutex<Vec<StsRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSts {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeSts {
    /// Starts one on an ephemeral port.
    pub async fn start(answer: StsAnswer) -> FakeSts {
        let super::tls::TestTls { ca_pem, acceptor } = super::tls::test_tls(&["127.0.0.1"], &[]);
        let ca_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(ca_file.path(), &ca_pem).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<StsRequest>>> = Arc::default();
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                // Connections live in the set, so aborting this task ends them too.
                let mut connections = tokio::task::JoinSet::new();
                while let Ok((tcp, _)) = listener.accept().await {
                    let (acceptor, seen) = (acceptor.clone(), seen.clone());
                    connections.spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = hyper::service::service_fn(move |request| {
                            token(request, seen.clone(), answer)
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            }
        });
        FakeSts {
            authority: url::Url::parse(&format!("https://127.0.0.1:{port}")).unwrap(),
            ca_pem,
            ca_file,
            seen,
            task,
        }
    }

    /// Every request so far, in order.
    pub fn seen(&self) -> Vec<StsRequest> {
        self.seen.lock().unwrap().clone()
    }

    /// The form fields of every request so far, in order.
    pub fn forms(&self) -> Vec<HashMap<String, String>> {
        self.seen().into_iter().map(|(_, form)| form).collect()
    }
}

/// Records one token request and answers it.
async fn token(
    request: hyper::Request<hyper::body::Incoming>,
    seen: Arc<Mutex<Vec<StsRequest>>>,
    answer: StsAnswer,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let form = url::form_urlencoded::parse(&body).into_owned().collect();
    let n = {
        let mut seen = seen.lock().unwrap();
        seen.push((path, form));
        seen.len()
    };
    let (status, body) = match answer {
        StsAnswer::Reject => (
            401,
            serde_json::json!({
                "error": "invalid_client",
                "error_description": "AADSTS7000215: Invalid client secret provided.",
                "error_codes": [7000215],
            }),
        ),
        StsAnswer::Tokens(lifetime) => (
            200,
            serde_json::json!({
                "token_type": "Bearer",
                "expires_in": lifetime.as_secs(),
                "ext_expires_in": lifetime.as_secs(),
                "access_token": format!("sts-token-{n}"),
            }),
        ),
    };
    Ok(hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap())
}
