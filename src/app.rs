//! The request handler: route, read what must be read, rewrite, sign, forward, stream back.
//!
//! Order of work for one request, and why:
//! 1. classify the path (pure, no allocation) so unknown routes cost nothing upstream;
//! 2. read the body only when the model must be found (JSON, or a multipart audio/image
//!    upload), capped at `max_body_bytes`; anything else streams through untouched;
//! 3. map model -> deployment and build the upstream URI;
//! 4. read the token last: a lock-free load when one is held, so a request that fails
//!    validation never waits on identity;
//! 5. send, bounded by the response-head timeout; the response body is handed to hyper as
//!    it is, so SSE frames reach the client as Azure sends them.

use crate::auth::TokenCache;
use crate::body::Body;
use crate::config::{ApiStyle, Config};
use crate::error::Error;
use crate::model;
use crate::rewrite;
use crate::route::{self, Inbound, Op};
use crate::upstream::Client;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use url::Url;

/// Where upstream requests go, split once at start-up so the hot path only joins parts.
#[derive(Debug, Clone)]
struct Endpoint {
    scheme: Scheme,
    authority: Authority,
    /// The endpoint's own path, e.g. `` or `/gateway` (never ending in `/`).
    base_path: String,
}

impl Endpoint {
    fn new(url: &Url) -> Result<Endpoint, String> {
        let uri: Uri = url
            .as_str()
            .parse()
            .map_err(|e| format!("endpoint {url} is not a valid URI: {e}"))?;
        let parts = uri.into_parts();
        Ok(Endpoint {
            scheme: parts.scheme.ok_or("endpoint has no scheme")?,
            authority: parts.authority.ok_or("endpoint has no host")?,
            base_path: url.path().trim_end_matches('/').to_owned(),
        })
    }

    fn uri(&self, path_and_query: &str) -> Result<Uri, Error> {
        let pq = PathAndQuery::try_from(path_and_query)
            .map_err(|e| Error::BadRequest(format!("cannot build the upstream path: {e}")))?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| Error::BadRequest(format!("cannot build the upstream URI: {e}")))
    }
}

/// Everything a request needs, shared by all connections.
pub struct App {
    config: Config,
    endpoint: Endpoint,
    tokens: TokenCache,
    client: Client,
    draining: AtomicBool,
}

/// What the body inspection found.
struct Prepared {
    body: Body,
    /// `Some(len)` when keyless replaced the body and must set `Content-Length`.
    new_len: Option<usize>,
    deployment: Option<String>,
}

impl App {
    /// Builds the handler state.
    pub fn new(
        config: Config,
        endpoint: &Url,
        tokens: TokenCache,
        client: Client,
    ) -> Result<App, String> {
        Ok(App {
            endpoint: Endpoint::new(endpoint)?,
            config,
            tokens,
            client,
            draining: AtomicBool::new(false),
        })
    }

    /// The token cache (for readiness and `keyless check`).
    pub fn tokens(&self) -> &TokenCache {
        &self.tokens
    }

    /// Marks the proxy as shutting down: `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Handles one request. Never fails: errors become OpenAI-shaped answers.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let outcome = self.dispatch(req).await;
        let (response, deployment) = match outcome {
            Ok(pair) => pair,
            Err(err) => {
                tracing::warn!(%method, %path, status = err.status().as_u16(), error = %err, "request refused");
                (err.to_response(), None)
            }
        };
        tracing::info!(
            %method,
            %path,
            deployment = deployment.as_deref().unwrap_or("-"),
            status = response.status().as_u16(),
            upstream_request_id = response
                .headers()
                .get("apim-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-"),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
        Ok(response)
    }

    async fn dispatch(
        &self,
        req: Request<Incoming>,
    ) -> Result<(Response<Body>, Option<String>), Error> {
        match route::classify(req.uri().path()) {
            Inbound::Health => {
                only_get(&req)?;
                Ok((json(StatusCode::OK, r#"{"status":"ok"}"#.into()), None))
            }
            Inbound::Ready => {
                only_get(&req)?;
                Ok((self.readiness(), None))
            }
            Inbound::Unknown => Err(Error::NotFound {
                method: req.method().to_string(),
                path: req.uri().path().to_owned(),
            }),
            Inbound::Azure(path) => {
                // Azure-style clients already name the deployment: same path and query.
                let pq = match req.uri().query() {
                    Some(q) => format!("{}{path}?{q}", self.endpoint.base_path),
                    None => format!("{}{path}", self.endpoint.base_path),
                };
                let uri = self.endpoint.uri(&pq)?;
                let (parts, body) = req.into_parts();
                let prepared = Prepared {
                    body: Body::Stream(body),
                    new_len: None,
                    deployment: None,
                };
                self.forward(parts, uri, prepared).await
            }
            Inbound::OpenAi(op) => {
                // Own the op path: the request is consumed below.
                let op_path = op.path.to_owned();
                let query = req.uri().query().map(str::to_owned);
                let (parts, body) = req.into_parts();
                let op = Op { path: &op_path };
                let prepared = self.prepare(op, &parts.method, &parts.headers, body).await?;
                let pq = route::upstream_path(
                    &self.endpoint.base_path,
                    self.config.api,
                    op,
                    prepared.deployment.as_deref(),
                    &self.config.api_version,
                    query.as_deref(),
                );
                let uri = self.endpoint.uri(&pq)?;
                self.forward(parts, uri, prepared).await
            }
        }
    }

    /// Reads the model from the body when the request carries one, and maps it.
    async fn prepare(
        &self,
        op: Op<'_>,
        method: &Method,
        headers: &HeaderMap,
        body: Incoming,
    ) -> Result<Prepared, Error> {
        let stream = |body| Prepared {
            body: Body::Stream(body),
            new_len: None,
            deployment: None,
        };
        if method == Method::GET || method == Method::HEAD || method == Method::DELETE {
            return Ok(stream(body));
        }
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();

        let (body, found) = if mime.is_empty() || mime == "application/json" || mime.ends_with("+json") {
            let bytes = self.read_bounded(headers, body).await?;
            if bytes.is_empty() {
                (bytes, None)
            } else {
                let found = model::find_json_model(&bytes)
                    .map_err(|e| Error::InvalidJson(e.to_string()))?
                    .map(|m| (m.name.into_owned(), m.span, Splice::Json));
                (bytes, found)
            }
        } else if mime == "multipart/form-data" && op.has_multipart_model() {
            let boundary = multer::parse_boundary(content_type)
                .map_err(|e| Error::BadRequest(format!("invalid multipart content type: {e}")))?;
            let bytes = self.read_bounded(headers, body).await?;
            let found = model::find_form_model(&bytes, &boundary)
                .await
                .map_err(|e| Error::BadRequest(format!("invalid multipart body: {e}")))?
                .map(|m| (m.name, m.span, Splice::Form));
            (bytes, found)
        } else {
            return Ok(stream(body));
        };

        let Some((model, span, kind)) = found else {
            if self.config.api == ApiStyle::Deployments && op.is_deployment_scoped() {
                match &self.config.default_deployment {
                    Some(d) => {
                        return Ok(Prepared {
                            body: Body::from(body),
                            new_len: None,
                            deployment: Some(d.clone()),
                        });
                    }
                    None => {
                        return Err(Error::BadRequest(
                            "you must provide a model parameter".into(),
                        ));
                    }
                }
            }
            return Ok(Prepared {
                body: Body::from(body),
                new_len: None,
                deployment: None,
            });
        };

        let deployment = self.config.deployment_for(&model);
        if deployment == model {
            // Nothing to rewrite: forward the very bytes received.
            return Ok(Prepared {
                body: Body::from(body),
                new_len: None,
                deployment: Some(model),
            });
        }
        let rewritten = match kind {
            Splice::Json => model::splice_json_string(&body, span, deployment),
            Splice::Form => model::splice_form_field(&body, span, deployment),
        };
        Ok(Prepared {
            new_len: Some(rewritten.len()),
            body: Body::from(rewritten),
            deployment: Some(deployment.to_owned()),
        })
    }

    /// Reads a whole body, refusing more than `max_body_bytes` (early from
    /// `Content-Length` when the client sent one).
    async fn read_bounded(&self, headers: &HeaderMap, body: Incoming) -> Result<Bytes, Error> {
        let limit = self.config.max_body_bytes;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(Error::BodyTooLarge { limit });
        }
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(Error::BodyTooLarge { limit })
            }
            Err(e) => Err(Error::BodyRead(e.to_string())),
        }
    }

    /// Signs and sends the request; hands Azure's answer back as it streams in.
    async fn forward(
        &self,
        mut parts: http::request::Parts,
        uri: Uri,
        prepared: Prepared,
    ) -> Result<(Response<Body>, Option<String>), Error> {
        let authorization = self
            .tokens
            .authorization()
            .await
            .map_err(|e| Error::NoToken(e.to_string()))?;
        parts.uri = uri;
        // hyper's client picks HTTP/2 itself through ALPN; a request marked HTTP/2 (from an
        // h2c client) would be refused on an HTTP/1.1 connection.
        parts.version = Version::HTTP_11;
        rewrite::request_headers(&mut parts.headers, authorization);
        if let Some(len) = prepared.new_len {
            rewrite::set_content_length(&mut parts.headers, len);
        }
        let request = Request::from_parts(parts, prepared.body);

        let timeout = self.config.timeouts.response;
        let response = match tokio::time::timeout(timeout, self.client.request(request)).await {
            Err(_) => return Err(Error::UpstreamTimeout(timeout)),
            Ok(Err(e)) => return Err(Error::UpstreamUnreachable(error_chain(&e))),
            Ok(Ok(response)) => response,
        };
        let (mut parts, body) = response.into_parts();
        rewrite::response_headers(&mut parts.headers);
        parts.version = Version::default();
        Ok((Response::from_parts(parts, Body::Stream(body)), prepared.deployment))
    }

    fn readiness(&self) -> Response<Body> {
        if self.draining.load(Ordering::Relaxed) {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"shutting down"}"#.into(),
            );
        }
        if self.tokens.is_ready() {
            let expires_in = self
                .tokens
                .expires_at()
                .and_then(|at| at.duration_since(std::time::SystemTime::now()).ok())
                .map_or(0, |d| d.as_secs());
            let body = serde_json::json!({
                "status": "ready",
                "credential": self.tokens.source_name(),
                "token_expires_in_secs": expires_in,
            });
            return json(StatusCode::OK, body.to_string().into());
        }
        let reason = match self.tokens.state() {
            crate::auth::TokenState::Failed(e) => e.to_string(),
            _ => "acquiring the first token".to_owned(),
        };
        let body = serde_json::json!({ "status": "not ready", "reason": reason });
        json(StatusCode::SERVICE_UNAVAILABLE, body.to_string().into())
    }
}

#[derive(Clone, Copy)]
enum Splice {
    Json,
    Form,
}

fn only_get(req: &Request<Incoming>) -> Result<(), Error> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        Ok(())
    } else {
        Err(Error::MethodNotAllowed(req.method().to_string()))
    }
}

fn json(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An error and its causes, `outer: inner: innermost`, for a readable 502.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
