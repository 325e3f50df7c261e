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

use crate::affinity::{self, Affinity, Learner};
use crate::apps::Apps;
use crate::auth::TokenCache;
use crate::backend::{self, Backend, Pick, Route, Router};
use crate::body::{Body, End, Tap, UpstreamBody};
use crate::config::Config;
use crate::error::Error;
use crate::limit;
use crate::otel::Traces;
use crate::prepare::{self, Prepared, ReplayBudget};
use crate::retry::{self, Attempts, Health, NoHead, Reply, Step};
use crate::rewrite;
use crate::route::{self, Azure, Inbound, Op, Target, UpstreamPath};
use crate::shared_limit::SharedLimits;
use crate::telemetry::{BackendLabels, LimitLabels, Record, RetryLabels, Telemetry};
use crate::upstream::{Client, Lease, SendError};
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
    /// Fired when the shutdown grace is over: what is cut then was cut by keyless.
    cut: CancellationToken,
    /// Request bodies held for replay, across requests.
    replay: Arc<ReplayBudget>,
    /// The apps of a shared gateway; `None`: no keys asked for.
    apps: Option<Arc<Apps>>,
    /// Which backend created each stored response.
    affinity: Arc<Affinity>,
    /// OpenTelemetry traces, with `--otlp-endpoint`.
    traces: Option<Arc<Traces>>,
    /// Rate-limit budgets shared with other replicas through Redis.
    shared: Option<SharedLimits>,
    /// WebSocket sessions (realtime); `None` answers upgrades with a 400.
    realtime: Option<crate::realtime::Relay>,
}

/// Which listener a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The proxy's own: everything.
    Main,
    /// `--admin-listen`: `/metrics`, `/healthz` and `/readyz` only.
    Admin,
}

/// Where a request goes: its route (backends, upstream path, operation) and query.
struct Destination<'a> {
    route: Route<'a>,
    query: Option<&'a str>,
    /// keyless asked this chat stream for a usage frame the client did not ask for: the
    /// frame is taken out of the answer.
    remove_usage_frame: bool,
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
            replay: ReplayBudget::new(config.retry.replay_budget_bytes),
            apps: Apps::new(&config.apps).map(Arc::new),
            affinity: Affinity::new(),
            traces: None,
            shared: None,
            config: Arc::new(config),
            router: Arc::new(router),
            client,
            tokens: tokens.into(),
            telemetry,
            shutdown,
            cut: CancellationToken::new(),
            realtime: None,
        }
    }

    /// The same state, relaying WebSocket upgrades (realtime) through `relay`.
    pub fn with_realtime(mut self, relay: crate::realtime::Relay) -> App {
        self.realtime = Some(relay);
        self
    }

    /// The same state with another upstream client: a worker's own.
    pub fn with_client(&self, client: Client) -> App {
        App {
            client,
            ..self.clone()
        }
    }

    /// The same state, with the app and deployment quotas kept in Redis.
    pub fn with_shared_limits(mut self, shared: Option<SharedLimits>) -> App {
        self.shared = shared;
        self
    }

    /// The same state, exporting a trace of each request to `traces`.
    pub fn with_traces(mut self, traces: Option<Arc<Traces>>) -> App {
        self.traces = traces;
        self
    }

    /// The same state, whose records call a body cut once `cut` fires a cut by
    /// shutdown (the end of the grace period).
    pub fn with_cut(mut self, cut: CancellationToken) -> App {
        self.cut = cut;
        self
    }

    /// Handles one request. Never fails: errors become OpenAI-shaped answers.
    pub async fn handle(
        self: Arc<Self>,
        listener: Listener,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        // A handle on the URI (reference-counted, not copied) classifies the path while
        // the request itself moves on.
        let uri = req.uri().clone();
        let inbound = route::classify(uri.path());
        let (request_id, from_client) = request_id(req.headers_mut());
        // The record comes first: from here on, however the request ends (the client
        // leaving before the head included), it is logged and counted exactly once.
        // Its path is copied, not shared: a `Bytes` slice of what hyper read would keep
        // its whole read buffer (8 KB and more) alive for a stream's lifetime.
        let mut record = Record::start(
            self.telemetry.clone(),
            req.method().clone(),
            uri.path().to_owned(),
            route::label(&inbound),
            request_id.clone(),
        );
        record.cut_by(self.cut.clone());
        // Probes and keyless's own endpoints are not traced: they are noise to a trace
        // backend, and a kubelet calls them every few seconds.
        if let Some(traces) = &self.traces
            && listener == Listener::Main
            && !matches!(
                inbound,
                Inbound::Health | Inbound::Ready | Inbound::Metrics | Inbound::Usage
            )
        {
            record.span =
                Some(traces.server_span(req.headers(), req.method().as_str(), uri.path()));
        }
        let result = match listener {
            // Not boxed here: the server boxes the whole of a request's handling (see
            // `server::serve_from`), freed once the response head is returned.
            Listener::Main => self.dispatch(inbound, req, &mut record).await,
            Listener::Admin => self.admin(&inbound, req.method(), uri.path()),
        };
        let mut response = match result {
            Ok(response) => response,
            Err(err) => {
                tracing::debug!(method = %record.method, path = %record.path, status = err.status().as_u16(), error = %err, "keyless answered itself");
                record.error = Some(err.to_string());
                err.to_response()
            }
        };
        record.status = response.status().as_u16();
        let headers = response.headers_mut();
        // An app with quotas sees its own standing, not the deployment's (shared by every
        // app), on every answer, refusals included.
        if let Some(standing) = &record.standing {
            standing.apply(headers);
        }
        if record.attempts > 0 {
            headers.insert(X_KEYLESS_ATTEMPTS, attempts_value(record.attempts));
            if let Some(name) = record
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
            headers.insert(X_REQUEST_ID, request_id);
        }
        if headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
        {
            record.streaming();
        }
        if record.span.is_some() {
            record.region = headers
                .get(X_MS_REGION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
        }
        // Copied, like the path: Azure's response head shares its read buffer.
        record.upstream_request_id = headers
            .get(APIM_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match response.body_mut() {
            // Finished when the last byte goes out (or the stream is cut).
            Body::Upstream(body) => body.set_on_end(Box::new(record)),
            _ => record.finish(0, End::Complete),
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
        if *inbound == Inbound::Usage {
            return only_get(method)
                .map(|()| json(StatusCode::OK, self.telemetry.usage.render(None).into()));
        }
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
        record: &mut Record,
    ) -> Result<Response<Body>, Error> {
        if !route::method_allowed(req.method()) {
            return Err(Error::MethodNotAllowed(req.method().to_string()));
        }
        if let Some(answer) = self.own_endpoint(&inbound, req.method()) {
            return answer;
        }
        // A shared gateway: everything past the probes needs an app's key.
        let app = match &self.apps {
            Some(apps) => {
                let app = apps.identify(req.headers())?;
                record.app = Some(app.name.clone());
                Some(app)
            }
            None => None,
        };
        if inbound == Inbound::Usage {
            only_get(req.method())?;
            let rows = self.telemetry.usage.render(app.as_ref().map(|a| &*a.name));
            return Ok(json(StatusCode::OK, rows.into()));
        }
        // A WebSocket upgrade (realtime, or the Responses WebSocket mode): the same path
        // rules and app keys, its own relay.
        if crate::realtime::is_upgrade(req.headers())
            && matches!(inbound, Inbound::OpenAi(_) | Inbound::Azure(_))
        {
            // Boxed, like the Redis round trip below: a relay's handshake state is ~15 KB,
            // and unboxed it sat in every request's future, copied with it at each move
            // (callgrind: +50% instructions a plain request, mostly memcpy).
            // Bound, then awaited: see `upstream::Client::send`.
            let session = Box::pin(self.realtime(inbound, req, app.as_ref(), record));
            return session.await;
        }
        let (mut parts, body) = req.into_parts();
        let uri = parts.uri.clone();
        let query = uri.query();
        // The model the client named (the deployment, for Azure-style paths naming one):
        // what an app's allowlist is checked against.
        let client_model: Option<String>;
        // Kept only when an allowlist or a trace needs it: a copy a request otherwise.
        let want_model = app.is_some() || record.span.is_some();
        let (mut destination, mut prepared) = match inbound {
            Inbound::Health
            | Inbound::Ready
            | Inbound::Metrics
            | Inbound::Usage
            | Inbound::Unknown => {
                return Err(not_found(&parts.method, uri.path()));
            }
            Inbound::Refused(why) => return Err(Error::BadPath(why.into())),
            Inbound::Azure(azure) => {
                // Azure-style clients already name the deployment: same path and query, on
                // the default endpoint. The deployment (from the path, or the body's model
                // on every other Azure path: `/openai/v1/...`, `/openai/responses`) picks
                // the limits, cool-down and metric label that apply; nothing is rewritten.
                let mut prepared = prepare::prepare(
                    &self.config,
                    Op { path: azure.op },
                    &parts.method,
                    &parts.headers,
                    body,
                    &self.replay,
                )
                .await?;
                if azure.deployment.is_some() {
                    prepared.keep_model();
                }
                let model = prepared.model.as_ref().map(|m| m.name.as_str());
                client_model = want_model
                    .then(|| azure.deployment.as_deref().or(model).map(str::to_owned))
                    .flatten();
                let mut route = self.router.resolve(&Target::Azure(azure), model)?;
                route.backends = self.stored_response(route.op, &prepared, route.backends);
                let destination = Destination {
                    route,
                    query,
                    remove_usage_frame: false,
                };
                (destination, prepared)
            }
            Inbound::OpenAi(op) => {
                let prepared = prepare::prepare(
                    &self.config,
                    op,
                    &parts.method,
                    &parts.headers,
                    body,
                    &self.replay,
                )
                .await?;
                let model = prepared.model.as_ref().map(|m| m.name.as_str());
                let mut route = self.router.resolve(&Target::OpenAi(op), model)?;
                route.backends = self.stored_response(op.path, &prepared, route.backends);
                // `/usage` rows name configured models; others go by their deployment.
                record.model_label = model
                    .filter(|m| self.config.models.contains_key(*m))
                    .map(Arc::from);
                client_model = want_model.then(|| model.map(str::to_owned)).flatten();
                let destination = Destination {
                    route,
                    query,
                    remove_usage_frame: false,
                };
                (destination, prepared)
            }
        };
        record.operation = Some(crate::otel::operation(destination.route.op));
        if record.span.is_some() {
            record.request_model.clone_from(&client_model);
        }
        if let Some(app) = &app {
            // The allowlist first: a refused request spends none of the app's quota.
            app.allows(client_model.as_deref())?;
            if app.has_quotas() {
                let decided = match &self.shared {
                    Some(shared) => {
                        // Bound, then awaited: see `upstream::Client::send`.
                        let deciding = Box::pin(app.admit_shared(prepared.tokens, shared));
                        deciding.await
                    }
                    None => app.admit(prepared.tokens),
                };
                match decided {
                    Ok(standing) => record.standing = Some(standing),
                    Err(refused) => {
                        record.standing = Some(refused.standing);
                        return Err(refused.error);
                    }
                }
            }
        }
        if self.config.stream_include_usage && destination.route.op == "chat/completions" {
            destination.remove_usage_frame = prepared.ask_for_usage();
        }
        self.proxy(&mut parts, destination, prepared, record).await
    }

    /// Where a request about a stored response goes: back to the backend that created it
    /// (`responses/{id}...`), or to the previous response's endpoint (a new response with
    /// `previous_response_id`). Unknown ids change nothing.
    fn stored_response(
        &self,
        op: &str,
        prepared: &Prepared,
        backends: Arc<[Backend]>,
    ) -> Arc<[Backend]> {
        if !op.starts_with("responses") || self.affinity.is_empty() {
            return backends;
        }
        if let Some(id) = affinity::id_in_path(op) {
            return match self.affinity.get(id) {
                Some(creator) => Arc::from([creator]),
                None => backends,
            };
        }
        let Some(creator) = prepared
            .previous_response_id
            .as_deref()
            .and_then(|id| self.affinity.get(id))
        else {
            return backends;
        };
        // The model's backends on the creator's resource; the creator itself when the
        // model has none there (Azure then says what it thinks).
        let endpoint = &creator.deployment.upstream.endpoint;
        let same: Vec<Backend> = backends
            .iter()
            .filter(|b| b.deployment.upstream.endpoint == *endpoint)
            .cloned()
            .collect();
        if same.is_empty() {
            Arc::from([creator])
        } else {
            Arc::from(same)
        }
    }

    /// A WebSocket upgrade: the backend from the model (`?model=`) or the Azure-style
    /// path's deployment, its limiter, its URI, then the relay (`realtime.rs`). One
    /// attempt: a session cannot be replayed once frames flowed, and Azure's refusal of
    /// the upgrade goes to the client as it came.
    async fn realtime(
        &self,
        inbound: Inbound<'_>,
        req: Request<Incoming>,
        app: Option<&Arc<crate::apps::App>>,
        record: &mut Record,
    ) -> Result<Response<Body>, Error> {
        use crate::realtime;
        let Some(relay) = &self.realtime else {
            return Err(Error::BadRequest(
                "keyless does not relay WebSocket upgrades here".into(),
            ));
        };
        let (mut parts, _body) = req.into_parts();
        let uri = parts.uri.clone();
        let query = uri.query();
        // A session names its model in the query (`model=`), and an Azure-style session
        // its deployment (`model=` on `/openai/v1/realtime`, `deployment=` on
        // `/openai/realtime`): the query is to a session what the body is to a request.
        // An Azure-style path's own deployment segment is not read for an upgrade, nor is
        // the model routed on for an upgrade of another OpenAI operation (the Responses
        // WebSocket mode names it in its frames); the app's allowlist is still held to it.
        let named = match &inbound {
            Inbound::OpenAi(_) => realtime::query_value(query, "model"),
            Inbound::Azure(azure) => realtime::azure_deployment(azure.path, query),
            _ => None,
        };
        let (target, model) = match inbound {
            Inbound::OpenAi(op) if op.path == "realtime" => {
                record.route = "realtime";
                (Target::Session, named.as_deref())
            }
            Inbound::OpenAi(op) => (Target::OpenAi(op), None),
            Inbound::Azure(azure) => {
                if matches!(
                    azure.path.trim_end_matches('/'),
                    "/openai/v1/realtime" | "/openai/realtime"
                ) {
                    record.route = "realtime";
                }
                let azure = Azure {
                    deployment: None,
                    ..azure
                };
                (Target::Azure(azure), named.as_deref())
            }
            _ => return Err(not_found(&parts.method, uri.path())),
        };
        let route = self.router.resolve(&target, model)?;
        if let Some(app) = app {
            // The model a session names (or the deployment of an Azure-style path) is
            // what the app's allowlist holds; a session counts as one request.
            app.allows(named.as_deref())?;
            if app.has_quotas() {
                let decided = match &self.shared {
                    Some(shared) => app.admit_shared(0, shared).await,
                    None => app.admit(0),
                };
                match decided {
                    Ok(standing) => record.standing = Some(standing),
                    Err(refused) => {
                        record.standing = Some(refused.standing);
                        return Err(refused.error);
                    }
                }
            }
        }
        let backends = route.backends;
        let index = match backend::pick(&backends, 0, Instant::now(), true, &mut rand::rng()) {
            Pick::Use(i) => i,
            _ => match backend::pick(&backends, 0, Instant::now(), false, &mut rand::rng()) {
                Pick::Use(i) => i,
                Pick::Wait(wait) | Pick::Refuse(wait) => {
                    return Err(Error::RateLimited {
                        limit: "backend cool-down",
                        retry_after: wait,
                    });
                }
                Pick::None => return Err(Error::UpstreamUnreachable("no backend".into())),
            },
        };
        let backend = &backends[index];
        let deployment = &backend.deployment;
        // The session holds its concurrency slot until it ends.
        record.permit = self
            .admit(backend, 0)
            .await
            .map_err(|rejected| Error::RateLimited {
                limit: rejected.limit,
                retry_after: rejected.retry_after,
            })?;
        let endpoint = &deployment.upstream.endpoint;
        let name = deployment.name.as_deref();
        let (base, version) = (&endpoint.base_path, &self.config.api_version);
        // The session's own path builder drops the key parameters itself; the others get
        // the query without them.
        let pq = match route.path {
            path @ UpstreamPath::Session => {
                path.build(base, self.config.api, name, version, query)?
            }
            path => {
                let query = realtime::without_keys(query);
                path.build(base, self.config.api, name, version, query.as_deref())?
            }
        };
        let upstream_uri = endpoint.uri(pq)?;
        record.attempts = 1;
        record.backend = Some(backend.name.clone());
        record.backend_label = Some(backend.label.clone());
        record.deployment = deployment.name.clone();
        record.deployment_label = deployment.name.as_ref().map(|_| deployment.label.clone());
        realtime::open(
            relay,
            &mut parts,
            &upstream_uri,
            &deployment.upstream.tokens,
            record,
            self.cut.clone(),
        )
        .await
    }

    /// The attempt loop's driver: the decisions are [`Attempts`]'s; this does the I/O
    /// (pick, limit, sign, send, wait) and records what happened. Only the response head
    /// is looked at: once a response is returned, its body belongs to the client.
    async fn proxy(
        &self,
        parts: &mut http::request::Parts,
        destination: Destination<'_>,
        mut prepared: Prepared,
        record: &mut Record,
    ) -> Result<Response<Body>, Error> {
        let backends = &destination.route.backends;
        let op = destination.route.op;
        let repeatable = retry::repeatable(&parts.method, op, prepared.store);
        let mut attempts = Attempts::new(
            self.config.retry,
            Instant::now(),
            prepared.replayable(),
            repeatable,
        );
        // A request that must not reach Azure twice, or whose body goes once, never takes
        // an idle pooled connection that Azure may be closing as it is picked.
        let fresh = !repeatable || !prepared.replayable();
        let timeout = self.config.timeouts.response;
        let mut limited: Option<limit::Rejected> = None;
        // Azure's last retryable answer (and its backend), or the last transport error:
        // what the client gets if no later attempt does better.
        let mut last: Option<(Response<Incoming>, usize)> = None;
        let mut last_error: Option<Error> = None;

        loop {
            // The thread-local generator must not live across an await.
            let choice = attempts.choose(backends, Instant::now(), &mut rand::rng());
            let index = match choice {
                Pick::Use(i) => i,
                Pick::Wait(wait) if attempts.may_wait(wait, Instant::now()) => {
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Pick::Wait(wait) | Pick::Refuse(wait) => {
                    return self.give_up(last, last_error, limited, Some(wait), backends, record);
                }
                Pick::None => {
                    return self.give_up(last, last_error, limited, None, backends, record);
                }
            };
            let backend = &backends[index];
            let deployment = &backend.deployment;
            let permit = match self.admit(backend, prepared.tokens).await {
                Ok(permit) => permit,
                Err(rejected) => {
                    attempts.refused(index);
                    limited = Some(match limited {
                        Some(l) if l.retry_after <= rejected.retry_after => l,
                        _ => rejected,
                    });
                    continue;
                }
            };
            let Some((body, new_len)) = prepared.body_for(deployment.name.as_deref()) else {
                // A streamed body already went out once: nothing left to send.
                return self.give_up(last, last_error, limited, None, backends, record);
            };
            let uri = self.uri_for(&destination, backend)?;
            let authorization = deployment
                .upstream
                .tokens
                .authorization()
                .await
                .map_err(|e| Error::NoToken(e.to_string()))?;

            let mut request = upstream_request(
                parts,
                body,
                uri,
                authorization.clone(),
                new_len,
                carries_usage(op),
                prepared.replayable(),
            );
            attempts.sending();
            let attempt_span = record.span.as_ref().map(|span| {
                let attempt = span.attempt(
                    &backend.name,
                    deployment.upstream.endpoint.host(),
                    attempts.made(),
                    parts.method.as_str(),
                );
                attempt.inject(request.headers_mut());
                attempt
            });
            record.attempts = attempts.made();
            record.backend = Some(backend.name.clone());
            record.backend_label = Some(backend.label.clone());
            record.deployment = deployment.name.clone();
            record.deployment_label = deployment.name.as_ref().map(|_| deployment.label.clone());
            let sent_at = Instant::now();
            let sent = if fresh {
                tokio::time::timeout(timeout, self.client.request_fresh(request)).await
            } else {
                tokio::time::timeout(timeout, self.client.request(request)).await
            };
            let (answer, reply) = self.read_reply(sent, backend, sent_at, timeout);
            if let Some(attempt) = attempt_span {
                match &answer {
                    Ok((response, _)) => attempt.end(Some(response.status().as_u16()), None),
                    Err(error) => attempt.end(None, Some(error.kind_and_code().1)),
                }
            }
            let now = Instant::now();
            let backoff = self.backoff(deployment);
            let other_free = attempts.has_other(backends, index, now);
            let (step, health) = attempts.judge(index, reply, backoff, other_free, now);
            match health {
                Health::Unchanged => {}
                Health::Healthy => deployment.succeed(),
                Health::Throttled { wait, capped } => deployment.throttle(wait, capped),
                Health::Failing => deployment.fail(backoff),
            }
            let step = match step {
                Step::Refresh => {
                    // Azure refused a token the cache thought valid (revoked, or a role
                    // just granted): a new one, and one replay outside the budget when the
                    // body allows it. A streamed upload gets the 401, but the next request
                    // still gets the new token.
                    let replace = deployment.upstream.tokens.invalidate(&authorization);
                    let step = attempts.after_refresh(replace);
                    if step != Step::Respond {
                        tracing::info!(backend = %backend.name, "Azure refused the token: replaying with a new one");
                    }
                    step
                }
                step => step,
            };
            match (step, answer) {
                (Step::Retry(reason), answer) => {
                    self.count_retry(backend, reason);
                    match answer {
                        Ok((response, _)) => {
                            tracing::info!(backend = %backend.name, status = response.status().as_u16(), ?health, attempt = attempts.made(), "Azure refused; retrying");
                            // Kept in case no later attempt does better (not a refused
                            // token's 401); its connection is not reused (the lease is
                            // dropped), a rare cost on a path that failed.
                            if reason != "unauthorized" {
                                last = Some((response, index));
                                last_error = None;
                            }
                        }
                        Err(error) => {
                            tracing::info!(backend = %backend.name, error = %error, attempt = attempts.made(), "no answer from Azure; retrying");
                            last = None;
                            last_error = Some(error);
                        }
                    }
                }
                (_, Ok((response, lease))) => {
                    if retry::is_retryable(response.status()) {
                        // Out of attempts, or Azure asks for longer than keyless waits: its
                        // answer (with its retry headers) goes to the client at once.
                        tracing::info!(backend = %backend.name, status = response.status().as_u16(), ?health, attempt = attempts.made(), "Azure refused; passing its answer on");
                    }
                    record.permit = permit;
                    let tap = self.tap_for(&response, &parts.method, &destination, backend, record);
                    return Ok(self.respond(response, lease, tap));
                }
                (_, Err(error)) => {
                    tracing::info!(backend = %backend.name, error = %error, attempt = attempts.made(), repeatable, "no answer from Azure; not retrying");
                    return Err(error);
                }
            }
        }
    }

    /// What one attempt's send came to: Azure's head (timed), or why there is none, and
    /// the attempt loop's view of it.
    fn read_reply(
        &self,
        sent: Result<Result<(Response<Incoming>, Lease), SendError>, tokio::time::error::Elapsed>,
        backend: &Backend,
        sent_at: Instant,
        timeout: std::time::Duration,
    ) -> (Result<(Response<Incoming>, Lease), Error>, Reply) {
        match sent {
            Ok(Ok((response, lease))) => {
                self.telemetry
                    .upstream_head
                    .get_or_create(&BackendLabels {
                        backend: backend.label.clone(),
                    })
                    .observe(sent_at.elapsed().as_secs_f64());
                let reply = Reply::Head {
                    status: response.status(),
                    asked: retry::azure_wait(response.headers(), SystemTime::now()),
                };
                (Ok((response, lease)), reply)
            }
            Ok(Err(e)) => {
                let why = match e {
                    SendError::Connect { .. } | SendError::NotAbsolute(_) => NoHead::NotSent,
                    SendError::Http(_) => NoHead::MaybeDelivered,
                };
                let error = Error::UpstreamUnreachable(crate::error::chain_text(&e));
                (Err(error), Reply::NoHead(why))
            }
            Err(_) => (
                Err(Error::UpstreamTimeout(timeout)),
                Reply::NoHead(NoHead::TimedOut),
            ),
        }
    }

    /// The scan over a successful answer's bytes, for the operations whose answers carry
    /// usage: usage (and the model, when tracing), the frame keyless asked for taken out,
    /// and a stored response's id learned for affinity.
    fn tap_for(
        &self,
        response: &Response<Incoming>,
        method: &Method,
        destination: &Destination<'_>,
        backend: &Backend,
        record: &Record,
    ) -> Option<Tap> {
        let op = destination.route.op;
        if !(response.status().is_success() && *method == Method::POST && carries_usage(op)) {
            return None;
        }
        let mut tap = Tap::new(destination.remove_usage_frame);
        if record.span.is_some() {
            tap = tap.reading_model();
        }
        Some(if op == "responses" {
            tap.learning(Learner::new(self.affinity.clone(), backend.clone()))
        } else {
            tap
        })
    }

    /// Passes the request through the backend's limiter, counting a refusal.
    async fn admit(
        &self,
        backend: &Backend,
        tokens: u32,
    ) -> Result<limit::Permit, limit::Rejected> {
        let Some(limiter) = &backend.deployment.limiter else {
            return Ok(None);
        };
        let limits = &self.config.limits;
        let admitted = match (&self.shared, &backend.deployment.name) {
            (Some(shared), Some(name)) => {
                // One budget per deployment on its resource, whichever replica spends it.
                let key = format!(
                    "deployment:{}/{name}",
                    backend.deployment.upstream.endpoint.host()
                );
                limiter
                    .admit_shared(tokens, limits.mode, limits.queue_timeout, shared, &key)
                    .await
            }
            _ => {
                limiter
                    .admit(tokens, limits.mode, limits.queue_timeout)
                    .await
            }
        };
        admitted.inspect_err(|rejected| {
            tracing::debug!(backend = %backend.name, limit = rejected.limit, "limiter refused");
            self.telemetry
                .rate_limited
                .get_or_create(&LimitLabels {
                    backend: backend.label.clone(),
                    limit: rejected.limit,
                })
                .inc();
        })
    }

    /// When no further attempt is possible: Azure's last answer if there is one, else the
    /// last transport error, else the limiter's 429.
    fn give_up(
        &self,
        last: Option<(Response<Incoming>, usize)>,
        last_error: Option<Error>,
        limited: Option<limit::Rejected>,
        cooling: Option<std::time::Duration>,
        backends: &[Backend],
        record: &mut Record,
    ) -> Result<Response<Body>, Error> {
        if let Some((response, index)) = last {
            let backend = &backends[index];
            record.backend = Some(backend.name.clone());
            record.backend_label = Some(backend.label.clone());
            return Ok(self.respond(response, Lease::default(), None));
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

    fn uri_for(&self, destination: &Destination<'_>, backend: &Backend) -> Result<Uri, Error> {
        let endpoint = &backend.deployment.upstream.endpoint;
        let pq = destination.route.path.build(
            &endpoint.base_path,
            self.config.api,
            backend.deployment.name.as_deref(),
            &self.config.api_version,
            destination.query,
        )?;
        endpoint.uri(pq)
    }

    /// Azure's answer, on its way to the client; `lease` is its connection, handed back
    /// to the pool when the body ends.
    fn respond(
        &self,
        response: Response<Incoming>,
        lease: Lease,
        tap: Option<Tap>,
    ) -> Response<Body> {
        let (mut parts, body) = response.into_parts();
        rewrite::response_headers(&mut parts.headers);
        parts.version = Version::default();
        let mut body = UpstreamBody::new(body, self.config.timeouts.idle, None).with_lease(lease);
        if let Some(tap) = tap {
            if tap.removes_usage_frame() {
                // Bytes are taken out: the length Azure declared no longer holds.
                parts.headers.remove(header::CONTENT_LENGTH);
            }
            body = body.with_tap(tap);
        }
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
const X_MS_REGION: HeaderName = HeaderName::from_static("x-ms-region");

/// `x-keyless-attempts`: the usual counts without formatting or allocating.
fn attempts_value(attempts: u32) -> HeaderValue {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match SMALL.get(attempts as usize) {
        Some(text) => HeaderValue::from_static(text),
        None => HeaderValue::from(attempts),
    }
}

/// One attempt's request to Azure: the client's method and headers (kept for a replay
/// only when one can happen), the Azure URI, the Entra token, and the body's new length
/// when keyless rewrote it.
fn upstream_request(
    parts: &mut http::request::Parts,
    body: crate::body::Body,
    uri: Uri,
    authorization: HeaderValue,
    new_len: Option<usize>,
    scans_usage: bool,
    replayable: bool,
) -> Request<crate::body::Body> {
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    // hyper's client picks HTTP/2 itself through ALPN; a request marked HTTP/2 (from an
    // h2c client) would be refused on an HTTP/1.1 connection.
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = if replayable {
        parts.headers.clone()
    } else {
        std::mem::take(&mut parts.headers)
    };
    rewrite::request_headers(request.headers_mut(), authorization);
    if scans_usage {
        // The usage scan reads the answer's bytes: they must come uncompressed (the
        // client's leg is loopback or a cluster network, where gzip buys little).
        request.headers_mut().remove(header::ACCEPT_ENCODING);
    }
    if let Some(len) = new_len {
        rewrite::set_content_length(request.headers_mut(), len);
    }
    request
}

/// Whether answers to this operation carry a `usage` object worth counting.
fn carries_usage(op: &str) -> bool {
    matches!(
        op,
        "chat/completions" | "completions" | "embeddings" | "responses"
    )
}

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
