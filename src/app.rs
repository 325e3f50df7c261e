//! The request handler: route, read what must be read, pick a backend, sign, forward,
//! retry what Azure asks to be retried, stream the answer back.
//!
//! Order of work for one request, and why:
//! 1. classify the path (pure, no allocation) so unknown routes cost nothing upstream;
//! 2. read the body only when the model must be found (JSON, or a multipart audio/image
//!    upload), capped at `max_body_bytes`; a small body of known length is held for
//!    replay; anything else streams through untouched and is sent once (`prepare.rs`);
//! 3. per attempt: pick a backend (priority, weight, cool-down), pass its limiter, build
//!    the URI and body for its deployment, read its token (a lock-free load when held);
//! 4. send, bounded by the response-head timeout; decide from the head alone whether to
//!    retry (never once a byte went to the client), then hand the body to hyper as it
//!    streams in, so SSE frames reach the client as Azure sends them.

use crate::auth::TokenCache;
use crate::backend::{self, Backend, Pick, Router};
use crate::body::{Body, End, UpstreamBody};
use crate::config::{ApiStyle, Config};
use crate::error::Error;
use crate::limit;
use crate::prepare::{self, Prepared};
use crate::retry;
use crate::rewrite;
use crate::route::{self, Inbound, Op};
use crate::telemetry::{BackendLabels, LimitLabels, RequestLog, RetryLabels, Telemetry};
use crate::upstream::{Client, Lease};
use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header,
};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// Everything a request needs, shared by all connections.
///
/// Each worker thread holds its own copy: the state is shared, the upstream client (its
/// pool, whose connection tasks live on that worker's runtime) is the worker's own.
#[derive(Clone)]
pub struct App {
    config: Arc<Config>,
    router: Arc<Router>,
    client: Client,
    /// Every scope's token cache, the default scope's first (readiness).
    tokens: Arc<[TokenCache]>,
    telemetry: Arc<Telemetry>,
    /// Fired at SIGTERM: `/readyz` answers 503 from then on.
    shutdown: CancellationToken,
}

/// Which listener a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The proxy's own: everything.
    Main,
    /// `--admin-listen`: `/metrics`, `/healthz` and `/readyz` only.
    Admin,
}

/// Where an OpenAI-style request goes: its op (for the path) and its backends.
struct Plan<'a> {
    op: Option<Op<'a>>,
    /// The path for Azure-style requests, sent as it came.
    path: Option<&'a str>,
    query: Option<&'a str>,
    backends: Arc<[Backend]>,
}

/// What the log line and the `x-keyless-*` headers report.
#[derive(Default)]
struct Outcome {
    attempts: u32,
    backend: Option<Arc<str>>,
    deployment: Option<Arc<str>>,
    /// The concurrency slot of the backend that answered, held until the body ends.
    permit: limit::Permit,
}

impl App {
    /// Builds the handler state. `tokens` lists every scope's cache, the default first;
    /// `shutdown` is the signal that starts draining.
    pub fn new(
        config: Config,
        router: Router,
        client: Client,
        tokens: Vec<TokenCache>,
        telemetry: Arc<Telemetry>,
        shutdown: CancellationToken,
    ) -> App {
        App {
            config: Arc::new(config),
            router: Arc::new(router),
            client,
            tokens: tokens.into(),
            telemetry,
            shutdown,
        }
    }

    /// The same state with another upstream client: a worker's own.
    pub fn with_client(&self, client: Client) -> App {
        App {
            client,
            ..self.clone()
        }
    }

    /// Handles one request. Never fails: errors become OpenAI-shaped answers.
    pub async fn handle(
        self: Arc<Self>,
        listener: Listener,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let started = Instant::now();
        self.telemetry.in_flight.inc();
        let method = req.method().clone();
        // Copied, not shared: a `Bytes` slice of what hyper read would keep its whole read
        // buffer (8 KB and more) alive for as long as the log record, a stream's lifetime.
        let path = req.uri().path().to_owned();
        let inbound = route::classify(&path);
        let route = route::label(&inbound);
        let (request_id, from_client) = request_id(req.headers_mut());
        let mut outcome = Outcome::default();
        let result = match listener {
            // Boxed: hyper keeps room for this future in every connection for the
            // connection's life; the proxying's kilobytes of state are needed only until
            // the response head, not while a stream flows or a connection idles.
            Listener::Main => Box::pin(self.dispatch(inbound, req, &mut outcome)).await,
            Listener::Admin => self.admin(&inbound, req.method(), &path),
        };
        let mut response = match result {
            Ok(response) => response,
            Err(err) => {
                tracing::debug!(%method, %path, status = err.status().as_u16(), error = %err, "keyless answered itself");
                err.to_response()
            }
        };
        let headers = response.headers_mut();
        if outcome.attempts > 0 {
            headers.insert(X_KEYLESS_ATTEMPTS, attempts_value(outcome.attempts));
            if let Some(name) = outcome
                .backend
                .as_deref()
                .and_then(|n| HeaderValue::from_str(n).ok())
            {
                headers.insert(X_KEYLESS_BACKEND, name);
            }
        }
        // A client that sent an id gets it back; otherwise Azure's own passes through,
        // and keyless's when Azure sent none. Azure's id is always in `apim-request-id`.
        if from_client || !headers.contains_key(&X_REQUEST_ID) {
            headers.insert(X_REQUEST_ID, request_id.clone());
        }
        let stream = headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if stream {
            self.telemetry.open_streams.inc();
        }
        let log = RequestLog {
            telemetry: self.telemetry.clone(),
            method,
            path,
            route,
            request_id,
            deployment: outcome.deployment,
            backend: outcome.backend,
            attempts: outcome.attempts,
            status: response.status().as_u16(),
            // Copied, like the path: Azure's response head shares its read buffer.
            upstream_request_id: response
                .headers()
                .get(APIM_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            started,
            stream,
            permit: outcome.permit,
        };
        match response.body_mut() {
            // Logged when the last byte goes out (or the stream is cut).
            Body::Upstream(body) => body.set_on_end(Box::new(log)),
            _ => log.finish(0, End::Complete),
        }
        Ok(response)
    }

    /// The admin listener: metrics and probes, nothing that reaches Azure.
    fn admin(
        &self,
        inbound: &Inbound<'_>,
        method: &Method,
        path: &str,
    ) -> Result<Response<Body>, Error> {
        self.own_endpoint(inbound, method)
            .unwrap_or_else(|| Err(not_found(method, path)))
    }

    /// keyless's own endpoints, the same on either listener: probes and metrics, GET or
    /// HEAD only. `None` for every other route.
    fn own_endpoint(
        &self,
        inbound: &Inbound<'_>,
        method: &Method,
    ) -> Option<Result<Response<Body>, Error>> {
        if !matches!(inbound, Inbound::Health | Inbound::Ready | Inbound::Metrics) {
            return None;
        }
        Some(only_get(method).map(|()| match inbound {
            Inbound::Ready => self.readiness(),
            Inbound::Metrics => self.metrics(),
            _ => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
        }))
    }

    fn metrics(&self) -> Response<Body> {
        let mut response = Response::new(Body::from(Bytes::from(self.telemetry.encode())));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        response
    }

    /// The main listener: `inbound` is the request's path, classified once by `handle`.
    async fn dispatch(
        &self,
        inbound: Inbound<'_>,
        req: Request<Incoming>,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, Error> {
        if !route::method_allowed(req.method()) {
            return Err(Error::MethodNotAllowed(req.method().to_string()));
        }
        if let Some(answer) = self.own_endpoint(&inbound, req.method()) {
            return answer;
        }
        let (parts, body) = req.into_parts();
        match inbound {
            Inbound::Health | Inbound::Ready | Inbound::Metrics | Inbound::Unknown => {
                Err(not_found(&parts.method, parts.uri.path()))
            }
            Inbound::Refused(why) => Err(Error::BadPath(why.into())),
            Inbound::Azure(path) => {
                // Azure-style clients already name the deployment: same path and query, on
                // the default endpoint. The deployment (from the path, or the body's model
                // on the v1 API) picks the limits and cool-down that apply; nothing is
                // rewritten.
                let (prepared, backends) = if let Some(d) = azure_deployment(path) {
                    let prepared =
                        prepare::hold_if_small(&self.config, &parts.headers, body).await?;
                    (prepared, self.router.on_default(&d))
                } else if let Some(op) =
                    path.strip_prefix("/openai/v1/").filter(|op| !op.is_empty())
                {
                    let prepared = prepare::prepare(
                        &self.config,
                        Op { path: op },
                        &parts.method,
                        &parts.headers,
                        body,
                    )
                    .await?;
                    let backends = match &prepared.model {
                        Some(model) => self.router.on_default(&model.name),
                        None => self.router.passthrough(),
                    };
                    (prepared, backends)
                } else {
                    let prepared =
                        prepare::hold_if_small(&self.config, &parts.headers, body).await?;
                    (prepared, self.router.passthrough())
                };
                let plan = Plan {
                    op: None,
                    path: Some(path),
                    query: parts.uri.query(),
                    backends,
                };
                self.proxy(&parts, plan, prepared, outcome).await
            }
            Inbound::OpenAi(op) => {
                let prepared =
                    prepare::prepare(&self.config, op, &parts.method, &parts.headers, body).await?;
                let backends =
                    self.backends_for(op, prepared.model.as_ref().map(|m| m.name.as_str()))?;
                let plan = Plan {
                    op: Some(op),
                    path: None,
                    query: parts.uri.query(),
                    backends,
                };
                self.proxy(&parts, plan, prepared, outcome).await
            }
        }
    }

    /// The backends for a model (or for a request without one).
    fn backends_for(&self, op: Op<'_>, model: Option<&str>) -> Result<Arc<[Backend]>, Error> {
        if let Some(model) = model {
            route::check_name("model", model)?;
            if let Some(backends) = self.router.configured(model) {
                return Ok(backends);
            }
            return Ok(self.router.on_default(self.config.deployment_for(model)));
        }
        if self.config.api == ApiStyle::Deployments && op.is_deployment_scoped() {
            return match &self.config.default_deployment {
                Some(d) => Ok(self.router.on_default(d)),
                None => Err(Error::BadRequest(
                    "you must provide a model parameter".into(),
                )),
            };
        }
        Ok(self.router.passthrough())
    }

    /// The attempt loop. Each turn picks a backend, passes its limiter, signs and sends;
    /// a retryable answer cools the backend down and the next turn goes elsewhere, or
    /// waits for Azure's named time. Only the response head is looked at: once a
    /// response is returned, its body belongs to the client.
    async fn proxy(
        &self,
        parts: &http::request::Parts,
        plan: Plan<'_>,
        mut prepared: Prepared,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, Error> {
        let policy = self.config.retry;
        let deadline = Instant::now() + policy.deadline;
        let mut excluded = 0u64; // backends whose limiter refused this request
        let mut limited: Option<limit::Rejected> = None;
        let mut last: Option<(Response<Incoming>, Arc<str>)> = None;
        let mut last_error: Option<Error> = None;
        let mut reauthorised = false;
        let mut failed = 0u64; // backends that failed this request: others are tried first

        loop {
            let choice = {
                // The thread-local generator must not live across an await.
                let mut rng = rand::rng();
                match backend::pick(&plan.backends, excluded | failed, Instant::now(), &mut rng) {
                    Pick::Use(i) => Pick::Use(i),
                    // Nothing else is free: a backend that failed may be tried again.
                    _ if failed != 0 => {
                        backend::pick(&plan.backends, excluded, Instant::now(), &mut rng)
                    }
                    other => other,
                }
            };
            let index = match choice {
                Pick::Use(i) => i,
                Pick::Wait(wait) => {
                    // Everything in play cools down. Wait for the soonest if that is
                    // acceptable; otherwise hand back what Azure last said.
                    let can_wait = wait <= policy.max_wait
                        && Instant::now() + wait < deadline
                        && outcome.attempts < policy.attempts + u32::from(reauthorised)
                        && (outcome.attempts == 0 || prepared.replayable());
                    if !can_wait {
                        return self.give_up(last, last_error, limited, Some(wait), outcome);
                    }
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Pick::None => return self.give_up(last, last_error, limited, None, outcome),
            };
            let backend = &plan.backends[index];
            let deployment = &backend.deployment;

            let permit = match &deployment.limiter {
                Some(limiter) => {
                    let mode = self.config.limits.mode;
                    match limiter
                        .admit(prepared.tokens, mode, self.config.limits.queue_timeout)
                        .await
                    {
                        Ok(permit) => permit,
                        Err(rejected) => {
                            tracing::debug!(backend = %backend.name, limit = rejected.limit, "limiter refused");
                            self.telemetry
                                .rate_limited
                                .get_or_create(&LimitLabels {
                                    backend: backend.name.clone(),
                                    limit: rejected.limit,
                                })
                                .inc();
                            excluded |= 1 << index;
                            limited = Some(match limited {
                                Some(l) if l.retry_after <= rejected.retry_after => l,
                                _ => rejected,
                            });
                            continue;
                        }
                    }
                }
                None => None,
            };

            let Some((body, new_len)) = prepared.body_for(deployment.name.as_deref()) else {
                // A streamed body already went out once: nothing left to send.
                return self.give_up(last, last_error, limited, None, outcome);
            };
            let uri = self.uri_for(&plan, backend)?;
            let authorization = deployment
                .upstream
                .tokens
                .authorization()
                .await
                .map_err(|e| Error::NoToken(e.to_string()))?;

            let mut request = Request::new(body);
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = uri;
            // hyper's client picks HTTP/2 itself through ALPN; a request marked HTTP/2 (from
            // an h2c client) would be refused on an HTTP/1.1 connection.
            *request.version_mut() = Version::HTTP_11;
            *request.headers_mut() = parts.headers.clone();
            rewrite::request_headers(request.headers_mut(), authorization.clone());
            if let Some(len) = new_len {
                rewrite::set_content_length(request.headers_mut(), len);
            }

            outcome.attempts += 1;
            outcome.backend = Some(backend.name.clone());
            outcome.deployment = deployment.name.clone();
            let timeout = self.config.timeouts.response;
            let sent_at = Instant::now();
            let sent = tokio::time::timeout(timeout, self.client.request(request)).await;
            if let Ok(Ok(_)) = &sent {
                self.telemetry
                    .upstream_head
                    .get_or_create(&BackendLabels {
                        backend: backend.name.clone(),
                    })
                    .observe(sent_at.elapsed().as_secs_f64());
            }
            let budget = policy.attempts + u32::from(reauthorised);
            let can_retry =
                prepared.replayable() && outcome.attempts < budget && Instant::now() < deadline;

            match sent {
                Ok(Ok((response, lease))) => {
                    let status = response.status();
                    if status == StatusCode::UNAUTHORIZED && !reauthorised {
                        // Azure refused a token the cache thought valid (revoked, or a role
                        // just granted): fetch a new one, and replay once (outside the retry
                        // budget) when the body allows it. A streamed upload gets the 401,
                        // but the next request still gets the new token.
                        reauthorised = true;
                        let replay = deployment.upstream.tokens.invalidate(&authorization)
                            && prepared.replayable();
                        if replay {
                            self.count_retry(backend, "unauthorized");
                            tracing::info!(backend = %backend.name, "Azure refused the token: replaying with a new one");
                            continue;
                        }
                    }
                    if !retry::is_retryable(status) {
                        deployment.record_success();
                        outcome.permit = permit;
                        return Ok(self.respond(response, lease));
                    }
                    failed |= 1 << index;
                    let asked = retry::azure_wait(response.headers(), SystemTime::now());
                    let wait = asked.unwrap_or_else(|| self.backoff(deployment));
                    deployment.record_failure();
                    deployment.cool_down(wait);
                    let too_long = asked.is_some_and(|w| w > policy.max_wait)
                        && !has_other(&plan.backends, index, excluded);
                    if !can_retry || too_long {
                        // Out of attempts, or Azure asks for longer than keyless waits: its
                        // answer (with its retry headers) goes to the client at once.
                        tracing::info!(backend = %backend.name, status = status.as_u16(), cool_down = ?wait, attempt = outcome.attempts, "Azure refused; no retry left, passing its answer on");
                        outcome.permit = permit;
                        return Ok(self.respond(response, lease));
                    }
                    tracing::info!(backend = %backend.name, status = status.as_u16(), cool_down = ?wait, attempt = outcome.attempts, "Azure refused; retrying");
                    self.count_retry(backend, status_reason(status));
                    // Kept in case no later attempt does better; its connection is not
                    // reused (the lease is dropped), a rare cost on a path that failed.
                    last = Some((response, backend.name.clone()));
                    last_error = None;
                }
                failure => {
                    // No response head: unreachable (connect, TLS, reset) or too slow.
                    let (error, reason) = match failure {
                        Ok(Err(e)) => (
                            Error::UpstreamUnreachable(crate::error::chain_text(&e)),
                            "connect",
                        ),
                        _ => (Error::UpstreamTimeout(timeout), "timeout"),
                    };
                    tracing::info!(backend = %backend.name, error = %error, attempt = outcome.attempts, "no answer from Azure");
                    failed |= 1 << index;
                    deployment.cool_down(self.backoff(deployment));
                    deployment.record_failure();
                    if !can_retry {
                        return Err(error);
                    }
                    self.count_retry(backend, reason);
                    last = None;
                    last_error = Some(error);
                }
            }
        }
    }

    /// When no further attempt is possible: Azure's last answer if there is one, else the
    /// last transport error, else the limiter's 429.
    fn give_up(
        &self,
        last: Option<(Response<Incoming>, Arc<str>)>,
        last_error: Option<Error>,
        limited: Option<limit::Rejected>,
        cooling: Option<std::time::Duration>,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, Error> {
        if let Some((response, name)) = last {
            outcome.backend = Some(name);
            return Ok(self.respond(response, Lease::default()));
        }
        if let Some(err) = last_error {
            return Err(err);
        }
        if let Some(rejected) = limited {
            return Err(Error::RateLimited {
                limit: rejected.limit,
                retry_after: rejected.retry_after,
            });
        }
        Err(Error::RateLimited {
            limit: "backend cool-down",
            retry_after: cooling.unwrap_or_default(),
        })
    }

    fn uri_for(&self, plan: &Plan<'_>, backend: &Backend) -> Result<Uri, Error> {
        let endpoint = &backend.deployment.upstream.endpoint;
        let pq = match (plan.op, plan.path) {
            (Some(op), _) => route::upstream_path(
                &endpoint.base_path,
                self.config.api,
                op,
                backend.deployment.name.as_deref(),
                &self.config.api_version,
                plan.query,
            )?,
            (None, Some(path)) => route::azure_path(&endpoint.base_path, path, plan.query),
            (None, None) => return Err(Error::BadRequest("nothing to forward".into())),
        };
        endpoint.uri(pq)
    }

    /// Azure's answer, on its way to the client.
    /// Azure's answer, on its way to the client; `lease` is its connection, handed back
    /// to the pool when the body ends.
    fn respond(&self, response: Response<Incoming>, lease: Lease) -> Response<Body> {
        let (mut parts, body) = response.into_parts();
        rewrite::response_headers(&mut parts.headers);
        parts.version = Version::default();
        let body = UpstreamBody::new(body, self.config.timeouts.idle, None).with_lease(lease);
        Response::from_parts(parts, Body::Upstream(Box::new(body)))
    }

    /// The cool-down after a failure Azure named no wait for: exponential in the
    /// deployment's consecutive failures (across requests), with full jitter.
    fn backoff(&self, deployment: &backend::Deployment) -> std::time::Duration {
        let policy = &self.config.retry;
        retry::backoff(
            deployment.consecutive_failures(),
            policy.backoff_base,
            policy.backoff_cap,
            &mut rand::rng(),
        )
    }

    fn count_retry(&self, backend: &Backend, reason: &'static str) {
        self.telemetry
            .retries
            .get_or_create(&RetryLabels {
                backend: backend.name.clone(),
                reason,
            })
            .inc();
    }

    /// 200 once every scope in use holds a valid token; 503 with the reasons otherwise.
    fn readiness(&self) -> Response<Body> {
        if self.shutdown.is_cancelled() {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"shutting down"}"#.into(),
            );
        }
        let mut scopes = Vec::with_capacity(self.tokens.len());
        let mut ready = true;
        for tokens in self.tokens.iter() {
            let expires_in = tokens
                .expires_at()
                .and_then(|at| at.duration_since(SystemTime::now()).ok())
                .map_or(0, |d| d.as_secs());
            if tokens.is_ready() {
                scopes.push(serde_json::json!({
                    "scope": tokens.scope(),
                    "credential": tokens.source_name(),
                    "token_expires_in_secs": expires_in,
                }));
                continue;
            }
            ready = false;
            let reason = match tokens.state() {
                crate::auth::TokenState::Failed(e) => e.to_string(),
                _ if tokens.expires_at().is_some() => "the token expired; refreshing".to_owned(),
                _ => "acquiring the first token".to_owned(),
            };
            scopes.push(serde_json::json!({ "scope": tokens.scope(), "reason": reason }));
        }
        let (status, text) = if ready {
            (StatusCode::OK, "ready")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready")
        };
        // The first scope's fields at the top level, for people reading it with curl.
        let mut body = scopes
            .first()
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        body["status"] = text.into();
        body["scopes"] = scopes.into();
        json(status, body.to_string().into())
    }
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_KEYLESS_ATTEMPTS: HeaderName = HeaderName::from_static("x-keyless-attempts");
const X_KEYLESS_BACKEND: HeaderName = HeaderName::from_static("x-keyless-backend");
const APIM_REQUEST_ID: HeaderName = HeaderName::from_static("apim-request-id");

/// `x-keyless-attempts`: the usual counts without formatting or allocating.
fn attempts_value(attempts: u32) -> HeaderValue {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match SMALL.get(attempts as usize) {
        Some(text) => HeaderValue::from_static(text),
        None => HeaderValue::from(attempts),
    }
}

/// The deployment named by an Azure-style path `/openai/deployments/{d}/...`, decoded.
fn azure_deployment(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/openai/deployments/")?;
    let segment = rest.split('/').next().filter(|s| !s.is_empty())?;
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|d| d.into_owned())
}

/// The request's id and whether the client sent it: the client's `x-request-id` when it
/// is a sane one, else a new one, set on the request so that Azure sees it too.
/// The request's id: the client's `x-request-id` when it sent a usable one (`true`), else
/// a new random one, set on the request so that Azure sees it too.
fn request_id(headers: &mut HeaderMap) -> (HeaderValue, bool) {
    if let Some(id) = headers
        .get(&X_REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.to_str().is_ok())
    {
        // A copy, like the path: the client's header shares hyper's read buffer.
        let copy = HeaderValue::from_bytes(id.as_bytes()).unwrap_or_else(|_| id.clone());
        return (copy, true);
    }
    let mut hex = [0u8; 32];
    let random = rand::random::<u128>();
    for (i, digit) in hex.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((random >> (124 - 4 * i)) & 0xf) as usize];
    }
    let id = HeaderValue::from_maybe_shared(Bytes::copy_from_slice(&hex))
        .unwrap_or_else(|_| HeaderValue::from_static("-"));
    headers.insert(X_REQUEST_ID, id.clone());
    (id, false)
}

fn status_reason(status: StatusCode) -> &'static str {
    match status.as_u16() {
        408 => "status_408",
        429 => "status_429",
        500 => "status_500",
        502 => "status_502",
        503 => "status_503",
        504 => "status_504",
        _ => "status_other",
    }
}

/// Whether another backend than `index` is in play and not cooling down.
fn has_other(backends: &[Backend], index: usize, excluded: u64) -> bool {
    let now = Instant::now();
    backends.iter().enumerate().any(|(i, b)| {
        i != index && excluded & (1 << i) == 0 && b.deployment.cooling_for(now).is_none()
    })
}

fn not_found(method: &Method, path: &str) -> Error {
    Error::NotFound {
        method: method.to_string(),
        path: path.to_owned(),
    }
}

fn only_get(method: &Method) -> Result<(), Error> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(Error::MethodNotAllowed(method.to_string()))
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
