//! The client towards Azure: pooled connections, rustls, HTTP/2 when the server offers it
//! through ALPN, HTTP/1.1 otherwise (and for plain-http loopback endpoints).

pub mod pool;

use crate::body::Body;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, header};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pool::Pool;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tower::ServiceExt;

/// The most headers an HTTP/1 answer of Azure's may carry. hyper's default (100) is less
/// than Azure's front doors and gateways can send (a few hundred with APIM policies and
/// diagnostics), and an answer over it fails as "message head is too large" (a 502 that
/// Azure never meant). Bounded: hyper allocates the parser's array this long for each
/// answer (on the heap once set; its docs say parsing costs about 5% more). The head's
/// bytes stay bounded by the exact 8 KB read buffer below, which a whole head must fit in.
const MAX_HEADERS: usize = 512;

/// The same bound for HTTP/2, in HPACK's measure (each header's name and value plus 32
/// bytes): h2's default, 16 KB, holds only about 200 headers of Azure's usual size.
const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;

/// The client keyless sends every upstream request through: one a worker, with a pool per
/// endpoint of idle HTTP/1.1 connections (reused most recent first) and one shared
/// HTTP/2 connection when Azure offers HTTP/2 through ALPN.
///
/// It is built on hyper's connection-level API rather than hyper-util's general client:
/// keyless knows its few endpoints and runs each worker on one thread, so checking a
/// connection out is a short list scan, and a request costs no boxed multi-kilobyte
/// future, no connect future, no pool-key hashing and no extra task to return the
/// connection (the response body hands it back through its [`Lease`] when it ends).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    connector: HttpsConnector<HttpConnector>,
    pools: Mutex<Vec<Arc<Pool<Body>>>>,
}

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection: DNS, TCP, TLS (an untrusted certificate lands here).
    #[error("cannot connect to {authority}")]
    Connect {
        /// Where to.
        authority: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The connection failed while the request was sent or its head awaited.
    #[error("the connection to Azure failed")]
    Http(#[source] hyper::Error),
    /// The request's URI has no scheme or host.
    #[error("the upstream URI {0} is not absolute")]
    NotAbsolute(Uri),
}

/// The lease of the HTTP/1.1 connection a response came on, for its body to hand back.
pub type Lease = pool::Lease<Body>;

impl Client {
    /// Sends `request` (its URI absolute) and returns the response head, with the lease of
    /// its HTTP/1.1 connection for the body to hand back.
    pub async fn request(
        &self,
        request: Request<Body>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        self.send(request, true).await
    }

    /// Like [`Client::request`], but never on an idle pooled HTTP/1.1 connection: for a
    /// request that must not be sent twice, or whose body can be sent only once. A pooled
    /// connection that Azure closes just as it is picked can fail a request after part of
    /// it went out, and then it can be neither replayed nor safely repeated; a new
    /// connection has no such race. HTTP/2 is still shared: a closing HTTP/2 connection
    /// hands the request back unsent.
    pub async fn request_fresh(
        &self,
        request: Request<Body>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        self.send(request, false).await
    }

    async fn send(
        &self,
        mut request: Request<Body>,
        pooled: bool,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let pool = self.pool(request.uri())?;
        if let Some(mut h2) = pool.h2() {
            match h2.try_send_request(request).await {
                Ok(response) => return Ok((response, Lease::default())),
                // Never sent (Azure is closing that connection): a new one below.
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
        while let Some(mut sender) = pooled.then(|| pool.idle()).flatten() {
            if sender.ready().await.is_err() {
                continue;
            }
            origin_form(&mut request, &pool.host);
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, Lease::new(pool, sender))),
                // Never written (the connection closed as it was picked): try another.
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
        // Boxed: connecting (TCP, TLS, handshake) takes kilobytes of future state, which
        // would otherwise sit in every request's future, each stream's included.
        // Bound first, awaited next: in one statement (`Box::pin(...).await`) the unboxed
        // future stays a temporary of the statement, and the compiler keeps room for it in
        // this future for the whole await, which undid the boxing (7 KB a request).
        let connecting = Box::pin(self.connect_and_send(pool, request));
        connecting.await
    }

    async fn connect_and_send(
        &self,
        pool: Arc<Pool<Body>>,
        mut request: Request<Body>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let connect_error = |source: Box<dyn std::error::Error + Send + Sync>| SendError::Connect {
            authority: pool.authority.to_string(),
            source,
        };
        let io = self
            .inner
            .connector
            .clone()
            .oneshot(request.uri().clone())
            .await
            .map_err(connect_error)?;
        if io.connected().is_negotiated_h2() {
            // Boxed: the HTTP/2 handshake's 5 KB of state would otherwise make this
            // future 7 KB instead of 3, on every new connection, HTTP/1.1's included.
            let handshake = Box::pin(
                http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_while_idle(false)
                    .max_header_list_size(MAX_HEADER_LIST_SIZE)
                    .handshake(io),
            );
            let (mut sender, connection) = handshake.await.map_err(|e| connect_error(e.into()))?;
            spawn_connection(connection);
            pool.set_h2(sender.clone());
            let response = sender
                .send_request(request)
                .await
                .map_err(SendError::Http)?;
            return Ok((response, Lease::default()));
        }
        let (mut sender, connection) = http1::Builder::new()
            // hyper's adaptive buffer grows to 16 KB and more on a connection that once
            // read a large answer, and an idle pooled connection keeps it. SSE frames are
            // small and large answers stream through 8 KB reads as well.
            .read_buf_exact_size(Some(8192))
            .max_headers(MAX_HEADERS)
            .handshake(io)
            .await
            .map_err(|e| connect_error(e.into()))?;
        spawn_connection(connection);
        origin_form(&mut request, &pool.host);
        let response = sender
            .send_request(request)
            .await
            .map_err(SendError::Http)?;
        Ok((response, Lease::new(pool, sender)))
    }

    /// The pool of the request's endpoint, made on first use.
    fn pool(&self, uri: &Uri) -> Result<Arc<Pool<Body>>, SendError> {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(SendError::NotAbsolute(uri.clone()));
        };
        let mut pools = self
            .inner
            .pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(pool) = pools
            .iter()
            .find(|p| p.scheme == *scheme && p.authority == *authority)
        {
            return Ok(pool.clone());
        }
        // The port only when it is not the scheme's own, as browsers and hyper-util do.
        let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(port) if port != default_port => format!("{}:{port}", authority.host()),
            _ => authority.host().to_owned(),
        };
        let host = HeaderValue::from_maybe_shared(bytes::Bytes::from(host))
            .map_err(|_| SendError::NotAbsolute(uri.clone()))?;
        let pool = Arc::new(Pool::new(scheme.clone(), authority.clone(), host));
        pools.push(pool.clone());
        Ok(pool)
    }
}

/// HTTP/1.1 wants `/path?query` on the request line and the endpoint in `Host`; the
/// request keeps its absolute URI until a connection is chosen, as HTTP/2 needs it.
fn origin_form(request: &mut Request<Body>, host: &HeaderValue) {
    if request.uri().scheme().is_some() {
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::from(path);
    }
    request
        .headers_mut()
        .entry(header::HOST)
        .or_insert_with(|| host.clone());
}

/// Runs a connection on this worker's runtime; it ends when the connection closes.
fn spawn_connection<F>(connection: F)
where
    F: std::future::Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
}

/// Builds the upstream client, trusting `ca_file`'s certificates besides the usual roots.
pub fn client(connect_timeout: Duration, ca_file: Option<&Path>) -> Result<Client, String> {
    Ok(client_with(connect_timeout, tls_config(ca_file)?))
}

/// Builds an upstream client over `tls` (from [`tls_config`]): one a worker, each with
/// its own pools, from one TLS configuration read once.
pub fn client_with(connect_timeout: Duration, tls: rustls::ClientConfig) -> Client {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));

    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Client {
        inner: Arc::new(Inner {
            connector,
            pools: Mutex::default(),
        }),
    }
}

/// rustls with the platform's roots when it has any (corporate proxies add theirs there),
/// else the Mozilla roots compiled in (distroless images have no CA bundle).
pub fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read --ca-file {}: {e}", path.display()))?;
        let mut added = 0;
        for cert in certs {
            let cert = cert.map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!(
                "--ca-file {} holds no PEM certificate",
                path.display()
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A raw HTTP/1.1 server on loopback: answers each request with `reply(n)` (n counts
    /// the server's requests from 0), then closes the connection if the reply says so by
    /// returning `true`. Counts connections.
    async fn server(
        reply: impl Fn(usize) -> (&'static [u8], bool) + Send + Sync + 'static,
    ) -> (Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}/x", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let reply = Arc::new(reply);
        let requests = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let reply = reply.clone();
                let requests = requests.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        // Every test request is one small read: a head with no body.
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        let (bytes, close) = reply(requests.fetch_add(1, Ordering::SeqCst));
                        if stream.write_all(bytes).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        (uri, connections)
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    fn get(uri: &Uri) -> Request<Body> {
        Request::get(uri.clone()).body(Body::empty()).unwrap()
    }

    fn test_client() -> Client {
        client_with(Duration::from_secs(5), tls_config(None).unwrap())
    }

    /// Reads the body to its end and hands the connection back, as `UpstreamBody` does.
    async fn read_all(response: Response<Incoming>, mut lease: Lease) -> Bytes {
        let body = response.into_body().collect().await.unwrap().to_bytes();
        lease.release();
        body
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (uri, connections) = server(|_| (OK, false)).await;
        let client = test_client();
        for _ in 0..3 {
            let (response, lease) = client.request(get(&uri)).await.unwrap();
            assert_eq!(read_all(response, lease).await, "ok");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_get_a_connection_each_and_both_are_reused() {
        let (uri, connections) = server(|_| (OK, false)).await;
        let client = test_client();
        for _ in 0..2 {
            let (a, b) = tokio::join!(client.request(get(&uri)), client.request(get(&uri)));
            let ((ra, la), (rb, lb)) = (a.unwrap(), b.unwrap());
            assert_eq!(read_all(ra, la).await, "ok");
            assert_eq!(read_all(rb, lb).await, "ok");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_does_not_return_its_connection() {
        // The first answer promises ten bytes and sends two: its body never ends.
        let (uri, connections) = server(|n| match n {
            0 => (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok", false),
            _ => (OK, false),
        })
        .await;
        let client = test_client();
        let (response, lease) = client.request(get(&uri)).await.unwrap();
        drop((response, lease));
        let (response, lease) = client.request(get(&uri)).await.unwrap();
        assert_eq!(read_all(response, lease).await, "ok");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_idle_connection_the_server_closed_is_skipped() {
        // Azure closing an idle connection without saying so beforehand.
        let (uri, connections) = server(|_| (OK, true)).await;
        let client = test_client();
        let (response, lease) = client.request(get(&uri)).await.unwrap();
        assert_eq!(read_all(response, lease).await, "ok");
        // Let the connection task see the close.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (response, lease) = client.request(get(&uri)).await.unwrap();
        assert_eq!(read_all(response, lease).await, "ok");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn http1_requests_carry_origin_form_and_host() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let head = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = stream.read(&mut buf).await.unwrap();
            stream.write_all(OK).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let uri: Uri = format!("http://{addr}/openai/v1/chat?a=1").parse().unwrap();
        let (response, lease) = test_client().request(get(&uri)).await.unwrap();
        read_all(response, lease).await;
        let head = head.await.unwrap().to_lowercase();
        assert!(
            head.starts_with("get /openai/v1/chat?a=1 http/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("host: {addr}\r\n")), "{head}");
    }

    #[tokio::test]
    async fn a_relative_uri_is_refused_and_an_unreachable_host_is_a_connect_error() {
        let client = test_client();
        let relative = Request::get("/x").body(Body::empty()).unwrap();
        assert!(matches!(
            client.request(relative).await,
            Err(SendError::NotAbsolute(_))
        ));
        // A port nothing listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let uri: Uri = format!("http://{}/x", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        drop(listener);
        match client.request(get(&uri)).await {
            Err(SendError::Connect { source, .. }) => {
                let text = crate::error::chain_text(source.as_ref());
                assert!(text.to_lowercase().contains("refused"), "{text}");
            }
            other => panic!(
                "expected a connect error, got {:?}",
                other.map(|r| r.0.status())
            ),
        }
    }
}
