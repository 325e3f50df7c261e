//! A mock Azure OpenAI upstream that records every request and answers as each test
//! scripts it, plus an in-process keyless with a counting identity.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use keyless::auth::{Acquire, AuthError, Secret, Token};
use keyless::config::{Config, Flags};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the mock saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    /// HTTP/1.1, or HTTP/2 (over TLS, when the client chose it through ALPN).
    pub version: http::Version,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the mock had read the whole request.
    pub at: Instant,
}

/// How the mock answers.
pub enum Reply {
    /// A whole response.
    Full {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Bytes,
    },
    /// A streamed response: each item the test (or a task) sends becomes one body frame;
    /// `Err` aborts the body mid-stream (the connection is cut, not closed cleanly).
    Stream {
        status: u16,
        headers: Vec<(&'static str, String)>,
        frames: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    },
    /// Never answer (until the mock stops).
    Hang,
    /// Read the request, then reset the connection (TCP RST) without sending a head
    /// (plain TCP only: over TLS it never answers, like [`Reply::Hang`]).
    Reset,
    /// Answer with the inner reply after a delay: a slow response head.
    After(Duration, Box<Reply>),
}

impl Reply {
    /// A whole response with `status`, `headers` and a JSON body.
    pub fn status(status: u16, headers: &[(&'static str, &str)], body: &str) -> Reply {
        let mut all = vec![("content-type", "application/json".to_owned())];
        all.extend(headers.iter().map(|(k, v)| (*k, (*v).to_owned())));
        Reply::Full {
            status,
            headers: all,
            body: Bytes::from(body.to_owned()),
        }
    }

    /// 200 with a JSON body.
    pub fn json(body: &str) -> Reply {
        Reply::Full {
            status: 200,
            headers: vec![("content-type", "application/json".into())],
            body: Bytes::from(body.to_owned()),
        }
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// What the mock counts besides the requests: connections accepted, requests whose
/// answer is still being worked on (the handler's future alive), the most at once, and
/// those dropped before an answer (the caller went away).
#[derive(Default)]
struct Counters {
    connections: AtomicUsize,
    active: AtomicUsize,
    peak: AtomicUsize,
    abandoned: AtomicUsize,
}

/// Counts a request as active until dropped; as abandoned if dropped before `done`.
struct Working {
    counters: Arc<Counters>,
    done: bool,
}

impl Working {
    fn new(counters: Arc<Counters>) -> Working {
        let now = counters.active.fetch_add(1, Ordering::SeqCst) + 1;
        counters.peak.fetch_max(now, Ordering::SeqCst);
        Working {
            counters,
            done: false,
        }
    }
}

impl Drop for Working {
    fn drop(&mut self) {
        self.counters.active.fetch_sub(1, Ordering::SeqCst);
        if !self.done {
            self.counters.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The mock upstream.
pub struct Mock {
    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` from [`Mock::start_tls`].
    pub url: url::Url,
    /// The CA a client must trust, from [`Mock::start_tls`].
    pub ca_pem: Option<String>,
    seen: Arc<Mutex<Vec<Seen>>>,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Mock {
    /// Starts a mock whose every answer comes from `handler`. The request body is read
    /// whole before `handler` runs.
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Mock {
        Self::start_inner(Arc::new(handler), None).await
    }

    /// The same over TLS, with a certificate for `localhost` from a test CA (in
    /// [`Mock::ca_pem`]), offering `alpn` (`h2`, `http/1.1`) to the client.
    pub async fn start_tls(
        alpn: &[&[u8]],
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Mock {
        let tls = super::tls::test_tls(&["localhost"], alpn);
        let mut mock = Self::start_inner(Arc::new(handler), Some(tls.acceptor)).await;
        mock.url.set_scheme("https").unwrap();
        mock.url.set_host(Some("localhost")).unwrap();
        mock.ca_pem = Some(tls.ca_pem);
        mock
    }

    async fn start_inner(handler: Handler, tls: Option<tokio_rustls::TlsAcceptor>) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let (seen2, counters2, stop2) = (seen.clone(), counters.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop2.cancelled() => return,
                    r = listener.accept() => r.unwrap(),
                };
                counters2.connections.fetch_add(1, Ordering::SeqCst);
                let (handler, seen, counters, stop, tls) = (
                    handler.clone(),
                    seen2.clone(),
                    counters2.clone(),
                    stop2.clone(),
                    tls.clone(),
                );
                tokio::spawn(async move {
                    let reset = CancellationToken::new();
                    let reset2 = reset.clone();
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (handler, seen, counters, stop, reset) = (
                            handler.clone(),
                            seen.clone(),
                            counters.clone(),
                            stop.clone(),
                            reset2.clone(),
                        );
                        async move {
                            let mut working = Working::new(counters);
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let record = Seen {
                                method: parts.method,
                                version: parts.version,
                                path_and_query: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                headers: parts.headers,
                                body,
                                at: Instant::now(),
                            };
                            seen.lock().unwrap().push(record.clone());
                            let response = respond(handler(&record), stop, reset).await;
                            working.done = true;
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    if let Some(acceptor) = tls {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        return;
                    }
                    // A second handle on the socket, to reset it (zero linger) on cue.
                    let (stream, twin) = split_for_reset(stream);
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = reset.cancelled() => {
                            // Zero linger on the twin, then close every handle: the kernel
                            // answers with RST instead of FIN.
                            if let Some(twin) = twin.and_then(|t| TcpStream::from_std(t).ok()) {
                                let _ = twin.set_zero_linger();
                            }
                        }
                    }
                });
            }
        });
        Mock {
            url: url::Url::parse(&format!("http://{addr}")).unwrap(),
            ca_pem: None,
            seen,
            counters,
            stop,
        }
    }

    /// A URL on which nothing listens: connecting to it is refused.
    pub fn refusing_url() -> url::Url {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = url::Url::parse(&format!("http://{}", closed.local_addr().unwrap())).unwrap();
        drop(closed);
        url
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.counters.connections.load(Ordering::SeqCst)
    }

    /// Requests whose answer is still being worked on (a hanging or slow head).
    pub fn active(&self) -> usize {
        self.counters.active.load(Ordering::SeqCst)
    }

    /// The most requests worked on at once.
    pub fn peak(&self) -> usize {
        self.counters.peak.load(Ordering::SeqCst)
    }

    /// Requests dropped before their answer was ready: the caller went away.
    pub fn abandoned(&self) -> usize {
        self.counters.abandoned.load(Ordering::SeqCst)
    }

    /// Everything seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The only request seen (panics if there were not exactly one).
    pub fn one(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(
            seen.len(),
            1,
            "expected exactly one upstream request, got {seen:#?}"
        );
        seen.into_iter().next().unwrap()
    }
}

type MockBody = BoxBody<Bytes, std::io::Error>;

/// The stream, and a second handle on the same socket (`None` if it cannot be made).
fn split_for_reset(stream: TcpStream) -> (TcpStream, Option<std::net::TcpStream>) {
    let std = stream.into_std().unwrap();
    let twin = std.try_clone().ok();
    (TcpStream::from_std(std).unwrap(), twin)
}

fn respond(
    reply: Reply,
    stop: CancellationToken,
    reset: CancellationToken,
) -> BoxFuture<'static, Response<MockBody>> {
    Box::pin(respond_inner(reply, stop, reset))
}

async fn respond_inner(
    reply: Reply,
    stop: CancellationToken,
    reset: CancellationToken,
) -> Response<MockBody> {
    match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => {
            let mut r = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            for (k, v) in headers {
                r.headers_mut().append(k, v.parse().unwrap());
            }
            r
        }
        Reply::Stream {
            status,
            headers,
            frames,
        } => {
            let stream = futures_util::stream::unfold(frames, |mut rx| async move {
                rx.recv().await.map(|item| (item.map(Frame::data), rx))
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            for (k, v) in headers {
                r.headers_mut().append(k, v.parse().unwrap());
            }
            r
        }
        Reply::Hang => {
            stop.cancelled().await;
            Response::new(
                Full::new(Bytes::new())
                    .map_err(|never| match never {})
                    .boxed(),
            )
        }
        Reply::Reset => {
            reset.cancel();
            std::future::pending().await
        }
        Reply::After(delay, reply) => {
            tokio::time::sleep(delay).await;
            respond(*reply, stop, reset).await
        }
    }
}

/// A token source that counts its acquisitions.
pub struct TestIdentity {
    pub calls: AtomicUsize,
    pub delay: Duration,
    pub failure: Option<String>,
}

impl TestIdentity {
    pub fn ok() -> Arc<TestIdentity> {
        Arc::new(TestIdentity {
            calls: AtomicUsize::new(0),
            delay: Duration::ZERO,
            failure: None,
        })
    }
    pub fn slow(delay: Duration) -> Arc<TestIdentity> {
        Arc::new(TestIdentity {
            calls: AtomicUsize::new(0),
            delay,
            failure: None,
        })
    }
    pub fn failing(message: &str) -> Arc<TestIdentity> {
        Arc::new(TestIdentity {
            calls: AtomicUsize::new(0),
            delay: Duration::ZERO,
            failure: Some(message.to_owned()),
        })
    }
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Acquire for TestIdentity {
    fn acquire<'a>(&'a self, _scope: &'a str) -> BoxFuture<'a, Result<Token, AuthError>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            match &self.failure {
                Some(message) => Err(AuthError {
                    credential: "TestIdentity".into(),
                    message: message.clone(),
                }),
                None => Ok(Token {
                    secret: Secret::new(format!("test-token-{n}")),
                    expires_at: SystemTime::now() + Duration::from_secs(3600),
                }),
            }
        })
    }
    fn name(&self) -> String {
        "TestIdentity".into()
    }
}

/// An in-process keyless in front of `upstream`.
pub struct Proxy {
    pub base: String,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Proxy {
    /// Starts keyless with `flags` (the endpoint is set to `upstream`).
    pub async fn start(mut flags: Flags, upstream: &url::Url, identity: Arc<dyn Acquire>) -> Proxy {
        flags.endpoint = Some(upstream.to_string());
        let config = Config::load(&flags).expect("test config is valid");
        Self::start_with(config, upstream.clone(), identity).await
    }

    /// Starts keyless with a ready-made config.
    pub async fn start_with(
        config: Config,
        upstream: url::Url,
        identity: Arc<dyn Acquire>,
    ) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            keyless::run_with_identity(config, upstream, identity, listener, s)
                .await
                .unwrap();
        });
        Proxy {
            base,
            stop,
            task: Some(task),
        }
    }

    /// Stops keyless and waits for it to finish.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// A plain HTTP/1.1 client for tests: no proxy, no retries.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// `POST {base}{path}` with `content-type: application/json` and `body`, through `c`.
pub async fn post_json_with(
    c: &reqwest::Client,
    base: &str,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    c.post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// `POST {base}{path}` with `content-type: application/json` and `body`, through a new
/// [`client`].
pub async fn post_json(
    base: &str,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    post_json_with(&client(), base, path, body).await
}

/// A handler that answers `first` in order, one per request, then `rest` for every
/// later request.
pub fn script(
    first: Vec<Reply>,
    rest: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
) -> impl Fn(&Seen) -> Reply + Send + Sync + 'static {
    let queue = Mutex::new(std::collections::VecDeque::from(first));
    move |seen| {
        queue
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| rest(seen))
    }
}

/// Flags with nothing set.
pub fn flags() -> Flags {
    Flags::default()
}
