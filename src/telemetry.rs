//! What operators see: Prometheus metrics and one log line per request.
//!
//! The log line is written when the response body ends (or is cut), not when its head
//! goes out, so that a stream's line carries its real duration and byte count. Nothing
//! here ever holds a header value: tokens and keys cannot reach a log line or a label.

use crate::apps::Standing;
use crate::auth::TokenCache;
use crate::body::{BodyEnd, End, Ended};
use crate::limit::Permit;
use crate::usage::Usage;
use http::Method;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

mod family;
pub use family::Family;

/// Labels of `keyless_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The operation (`chat/completions`, `responses`, `azure`, ...), a bounded set.
    pub route: &'static str,
    /// The app (a configured name), or empty.
    pub app: Arc<str>,
    /// The deployment, or empty.
    pub deployment: Arc<str>,
    /// The backend, or empty.
    pub backend: Arc<str>,
    /// The status sent to the client.
    pub status: u16,
}

/// Labels with a route only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The operation.
    pub route: &'static str,
}

/// Labels with a backend only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// The backend.
    pub backend: Arc<str>,
}

/// Labels of `keyless_retries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    /// The backend that failed.
    pub backend: Arc<str>,
    /// `status_429`, `status_503`, ..., `connect`, `timeout`, `unauthorized`.
    pub reason: &'static str,
}

/// Labels of `keyless_rate_limited_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// The deployment (or backend) refused.
    pub backend: Arc<str>,
    /// Which limit refused.
    pub limit: &'static str,
}

/// Labels of `keyless_tokens_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenUseLabels {
    /// The app, or empty.
    pub app: Arc<str>,
    /// The deployment (bounded, as everywhere).
    pub deployment: Arc<str>,
    /// `prompt`, `completion`, `cached` or `reasoning`.
    pub kind: &'static str,
}

/// A `/usage` row's key: app (empty: none), deployment, model.
type RowKey = (Arc<str>, Arc<str>, Arc<str>);

/// Labels of the GenAI metrics (the OpenTelemetry conventions' names, in Prometheus form).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GenAiLabels {
    /// `chat`, `embeddings`, `text_completion`, ...
    pub gen_ai_operation_name: &'static str,
    /// `azure.ai.openai`.
    pub gen_ai_provider_name: &'static str,
    /// The model (bounded: a configured name, else the deployment's label).
    pub gen_ai_request_model: Arc<str>,
}

/// Labels of `gen_ai_client_token_usage`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GenAiTokenLabels {
    /// As [`GenAiLabels`].
    pub gen_ai_operation_name: &'static str,
    /// As [`GenAiLabels`].
    pub gen_ai_provider_name: &'static str,
    /// As [`GenAiLabels`].
    pub gen_ai_request_model: Arc<str>,
    /// `input` or `output`.
    pub gen_ai_token_type: &'static str,
}

/// The GenAI metrics of the OpenTelemetry conventions, on `/metrics` beside keyless's own.
pub struct GenAi {
    registry: Registry,
    /// `gen_ai.client.token.usage`.
    pub token_usage: Family<GenAiTokenLabels, Histogram>,
    /// `gen_ai.client.operation.duration`.
    pub operation_duration: Family<GenAiLabels, Histogram>,
    /// `gen_ai.server.time_to_first_token`.
    pub time_to_first_token: Family<GenAiLabels, Histogram>,
}

/// The conventions' advice for `gen_ai.client.operation.duration`: 10 ms to 82 s.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// The conventions' advice for `gen_ai.server.time_to_first_token`.
fn first_token_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    ])
}

fn token_histogram() -> Histogram {
    // The conventions' advice: 1, 4, 16, ... 67,108,864 tokens.
    Histogram::new(exponential_buckets(1.0, 4.0, 14))
}

impl GenAi {
    fn new() -> GenAi {
        // No `keyless_` prefix: these are the conventions' names.
        let mut registry = Registry::default();
        let token_usage = Family::<GenAiTokenLabels, Histogram>::new_with_constructor(
            token_histogram as fn() -> Histogram,
        );
        let operation_duration = Family::<GenAiLabels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let time_to_first_token = Family::<GenAiLabels, Histogram>::new_with_constructor(
            first_token_histogram as fn() -> Histogram,
        );
        registry.register(
            "gen_ai_client_token_usage",
            "Tokens an operation used, by type (gen_ai.client.token.usage)",
            token_usage.clone(),
        );
        registry.register_with_unit(
            "gen_ai_client_operation_duration",
            "Duration of a GenAI operation (gen_ai.client.operation.duration)",
            prometheus_client::registry::Unit::Seconds,
            operation_duration.clone(),
        );
        registry.register_with_unit(
            "gen_ai_server_time_to_first_token",
            "Time to the first byte of a streamed answer (gen_ai.server.time_to_first_token)",
            prometheus_client::registry::Unit::Seconds,
            time_to_first_token.clone(),
        );
        GenAi {
            registry,
            token_usage,
            operation_duration,
            time_to_first_token,
        }
    }
}

/// Token usage totals, by app, deployment and model, since start: `GET /usage`.
pub struct UsageBook {
    since: SystemTime,
    rows: Mutex<HashMap<RowKey, Totals, foldhash::fast::RandomState>>,
}

/// One row's totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Requests answered.
    pub requests: u64,
    /// Tokens, as Azure counted them.
    pub usage: Usage,
}

impl UsageBook {
    fn new() -> UsageBook {
        UsageBook {
            since: SystemTime::now(),
            rows: Mutex::new(HashMap::default()),
        }
    }

    fn add(&self, key: RowKey, usage: Option<Usage>) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let row = rows.entry(key).or_default();
        row.requests += 1;
        if let Some(u) = usage {
            let t = &mut row.usage;
            t.prompt += u.prompt;
            t.completion += u.completion;
            t.total += u.total;
            t.cached += u.cached;
            t.reasoning += u.reasoning;
        }
    }

    /// `{"since", "usage": [...]}` for one app, or for all (`None`).
    pub fn render(&self, app: Option<&str>) -> String {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<_> = rows
            .iter()
            .filter(|((a, _, _), _)| app.is_none_or(|want| &**a == want))
            .map(|((a, d, m), t)| {
                serde_json::json!({
                    "app": if a.is_empty() { serde_json::Value::Null } else { (&**a).into() },
                    "deployment": &**d,
                    "model": &**m,
                    "requests": t.requests,
                    "prompt_tokens": t.usage.prompt,
                    "completion_tokens": t.usage.completion,
                    "total_tokens": t.usage.total,
                    "cached_tokens": t.usage.cached,
                    "reasoning_tokens": t.usage.reasoning,
                })
            })
            .collect();
        drop(rows);
        list.sort_by_key(|row| row.to_string());
        serde_json::json!({
            "since": humantime::format_rfc3339_seconds(self.since).to_string(),
            "usage": list,
        })
        .to_string()
    }
}

/// Every metric keyless keeps.
pub struct Telemetry {
    registry: Registry,
    /// Requests answered, by route, deployment, backend and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from request to the end of the response body.
    pub duration: Family<RouteLabels, Histogram>,
    /// Time from sending to Azure to its response head (time to first byte).
    pub upstream_head: Family<BackendLabels, Histogram>,
    /// Attempts after the first, by backend and reason.
    pub retries: Family<RetryLabels, Counter>,
    /// Requests refused by keyless's own limits.
    pub rate_limited: Family<LimitLabels, Counter>,
    /// Requests being handled (a stream counts until it ends).
    pub in_flight: Gauge,
    /// SSE responses open.
    pub open_streams: Gauge,
    /// Tokens Azure says answers used, by app, deployment and kind.
    pub tokens: Family<TokenUseLabels, Counter>,
    /// Time from request to the first byte of a streamed answer.
    pub first_token: Family<RouteLabels, Histogram>,
    /// Usage totals for `/usage`.
    pub usage: UsageBook,
    /// The GenAI conventions' metrics.
    pub gen_ai: GenAi,
    /// Realtime (WebSocket) sessions open.
    pub open_sessions: Gauge,
    /// The label value for "none", made once rather than per request.
    empty_label: Arc<str>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~9 minutes: model calls range from milliseconds (embeddings) to minutes
    // (reasoning models).
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

impl Telemetry {
    /// Registers every metric; `tokens` are reported at each scrape.
    pub fn new(tokens: Vec<TokenCache>) -> Telemetry {
        let mut registry = Registry::with_prefix("keyless");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let upstream_head = Family::<BackendLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let retries = Family::<RetryLabels, Counter>::default();
        let rate_limited = Family::<LimitLabels, Counter>::default();
        let in_flight = Gauge::default();
        let open_streams = Gauge::default();
        let tokens_used = Family::<TokenUseLabels, Counter>::default();
        let first_token = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "tokens",
            "Tokens Azure OpenAI's answers say they used, by app, deployment and kind",
            tokens_used.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time from request to the first byte of a streamed answer",
            first_token.clone(),
        );
        let open_sessions = Gauge::default();
        registry.register("requests", "Requests answered", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time from request to the end of the response body",
            duration.clone(),
        );
        registry.register(
            "upstream_response_seconds",
            "Time from sending to Azure OpenAI to its response head",
            upstream_head.clone(),
        );
        registry.register(
            "retries",
            "Attempts after the first, by backend and reason",
            retries.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by keyless's own limits",
            rate_limited.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests being handled",
            in_flight.clone(),
        );
        registry.register(
            "open_streams",
            "Server-sent event responses open",
            open_streams.clone(),
        );
        registry.register(
            "realtime_sessions_open",
            "Realtime WebSocket sessions open",
            open_sessions.clone(),
        );
        registry.register_collector(Box::new(TokenCollector { tokens }));
        Telemetry {
            registry,
            requests,
            duration,
            upstream_head,
            retries,
            rate_limited,
            in_flight,
            open_streams,
            tokens: tokens_used,
            first_token,
            usage: UsageBook::new(),
            gen_ai: GenAi::new(),
            open_sessions,
            empty_label: Arc::from(""),
        }
    }

    /// Registers `keyless_limits_backend_up` (1 while Redis keeps the limits, 0 while they
    /// are per process).
    pub fn register_limits_backend(&mut self, up: Gauge) {
        self.registry.register(
            "limits_backend_up",
            "Whether the shared limits' Redis answers (1) or limits are per process (0)",
            up,
        );
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.gen_ai.registry);
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }
}

/// Token metrics, read from the caches at scrape time.
#[derive(Debug)]
struct TokenCollector {
    tokens: Vec<TokenCache>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    scope: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: String,
}

impl Collector for TokenCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut family = encoder.encode_descriptor(
                "token_acquisitions",
                "Entra token acquisitions, by scope and result",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for cache in &self.tokens {
                let (ok, failed) = cache.acquisitions();
                for (result, n) in [("success", ok), ("failure", failed)] {
                    let labels = TokenLabels {
                        scope: cache.scope().to_owned(),
                        result,
                    };
                    ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "token_expires_in_seconds",
            "Seconds until the held token expires (0 when none is held)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for cache in &self.tokens {
            let left = cache
                .expires_at()
                .and_then(|at| at.duration_since(SystemTime::now()).ok())
                .map_or(0.0, |d| d.as_secs_f64());
            let labels = ScopeLabels {
                scope: cache.scope().to_owned(),
            };
            ConstGauge::new(left).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// What a realtime session adds to its request's log line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Payload bytes of the frames the client sent (and keyless relayed).
    pub bytes_from_client: u64,
    /// Payload bytes of the frames Azure sent (and keyless relayed).
    pub bytes_to_client: u64,
    /// The close code that ended the session (the one relayed, or keyless's own); 1005
    /// when a close frame carried none, 1006 when a side vanished without one.
    pub close_code: u16,
    /// Who ended it: `client`, `upstream`, `client_gone`, `upstream_gone`, `idle_timeout`,
    /// `max_session` or `shutdown`.
    pub closed_by: &'static str,
}

/// One request's record: made first, before anything can fail, and finished once: when
/// its response body ends, or when it is dropped (the client left before the head, or
/// hyper dropped the body), so that every request is logged and counted and the
/// in-flight gauge never leaks. The log line, the metrics and the `x-keyless-*` headers
/// all come from here.
pub struct Record {
    telemetry: Arc<Telemetry>,
    /// Request method.
    pub method: Method,
    /// Request path (never the query).
    pub path: String,
    /// Route label.
    pub route: &'static str,
    /// `x-request-id`, received or made (visible ASCII).
    pub request_id: http::HeaderValue,
    /// Deployment used.
    pub deployment: Option<Arc<str>>,
    /// Its metric label (bounded).
    pub deployment_label: Option<Arc<str>>,
    /// Backend used.
    pub backend: Option<Arc<str>>,
    /// Its metric label (bounded).
    pub backend_label: Option<Arc<str>>,
    /// Attempts made.
    pub attempts: u32,
    /// Status sent to the client; 0 until the head is made.
    pub status: u16,
    /// keyless's own error, when it answered itself.
    pub error: Option<String>,
    /// Azure's `apim-request-id`.
    pub upstream_request_id: Option<String>,
    /// When the request arrived.
    pub started: Instant,
    /// Whether this is an SSE stream (counted in `open_streams`).
    pub stream: bool,
    /// The concurrency slot, released with the record.
    pub permit: Permit,
    /// The app (shared gateway), when one was identified.
    pub app: Option<Arc<str>>,
    /// The model, for `/usage`: a configured name, else the deployment's label (bounded).
    pub model_label: Option<Arc<str>>,
    /// The app's quotas after this request: its answer's `x-ratelimit-*`.
    pub standing: Option<Standing>,
    /// The request's trace span (with `--otlp-endpoint`).
    pub span: Option<crate::otel::ServerSpan>,
    /// The model the client named (kept only for the span).
    pub request_model: Option<String>,
    /// Azure's `x-ms-region` (kept only for the span).
    pub region: Option<String>,
    /// The GenAI operation (`chat`, `embeddings`, ...), once routed.
    pub operation: Option<&'static str>,
    /// Fired when the shutdown grace is over: a body cut then was cut by keyless.
    cut: Option<tokio_util::sync::CancellationToken>,
    /// A realtime session's counts, once the upgrade succeeded (counted in
    /// `open_sessions` until the record ends).
    session: Option<SessionStats>,
    done: bool,
}

/// The status counted for a request whose client left before its head: nginx's
/// "client closed request".
pub const CLIENT_GONE: u16 = 499;

impl Record {
    /// Starts the record of a request (raising the in-flight gauge).
    pub fn start(
        telemetry: Arc<Telemetry>,
        method: Method,
        path: String,
        route: &'static str,
        request_id: http::HeaderValue,
    ) -> Record {
        telemetry.in_flight.inc();
        Record {
            telemetry,
            method,
            path,
            route,
            request_id,
            deployment: None,
            deployment_label: None,
            backend: None,
            backend_label: None,
            attempts: 0,
            status: 0,
            error: None,
            upstream_request_id: None,
            started: Instant::now(),
            stream: false,
            permit: Permit::default(),
            app: None,
            model_label: None,
            standing: None,
            span: None,
            request_model: None,
            region: None,
            operation: None,
            cut: None,
            session: None,
            done: false,
        }
    }

    /// Moves the record out, leaving a finished husk: for a request that lives on after
    /// its handler returned (a WebSocket session, logged when it ends). The husk counts
    /// and logs nothing.
    pub fn take(&mut self) -> Record {
        let taken = Record {
            telemetry: self.telemetry.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            route: self.route,
            request_id: self.request_id.clone(),
            deployment: self.deployment.clone(),
            deployment_label: self.deployment_label.clone(),
            backend: self.backend.clone(),
            backend_label: self.backend_label.clone(),
            attempts: self.attempts,
            status: self.status,
            error: self.error.take(),
            upstream_request_id: self.upstream_request_id.clone(),
            started: self.started,
            stream: std::mem::take(&mut self.stream),
            permit: std::mem::take(&mut self.permit),
            app: self.app.clone(),
            model_label: self.model_label.clone(),
            standing: self.standing.take(),
            span: self.span.take(),
            request_model: self.request_model.take(),
            region: self.region.take(),
            operation: self.operation,
            cut: self.cut.clone(),
            session: self.session.take(),
            done: false,
        };
        self.done = true;
        taken
    }

    /// Marks the request as an open realtime session (counted in `open_sessions`).
    pub fn session_opened(&mut self) {
        if self.session.is_none() {
            self.session = Some(SessionStats::default());
            self.telemetry.open_sessions.inc();
        }
    }

    /// Counts and logs a realtime session now that it is over.
    pub fn finish_session(mut self, stats: SessionStats) {
        if self.session.is_some() {
            self.session = Some(stats);
        }
        let bytes = self
            .session
            .as_ref()
            .map_or(0, |s| s.bytes_from_client + s.bytes_to_client);
        self.complete(Ended {
            bytes,
            end: End::Complete,
            first_byte: None,
            usage: None,
            response_model: None,
        });
    }

    /// Tells the record which token marks the end of the shutdown grace.
    pub fn cut_by(&mut self, token: tokio_util::sync::CancellationToken) {
        self.cut = Some(token);
    }

    /// Marks the response as an SSE stream (counted in `open_streams` until it ends).
    pub fn streaming(&mut self) {
        if !self.stream {
            self.stream = true;
            self.telemetry.open_streams.inc();
        }
    }

    /// Counts and logs the request now that its response is over.
    pub fn finish(self, bytes: u64, end: End) {
        self.finish_with(Ended {
            bytes,
            end,
            first_byte: None,
            usage: None,
            response_model: None,
        });
    }

    /// [`Record::finish`], with what the body saw: usage, the first byte.
    pub fn finish_with(mut self, ended: Ended) {
        self.complete(ended);
    }

    fn complete(&mut self, ended: Ended) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let Ended {
            bytes,
            end,
            first_byte,
            usage,
            response_model,
        } = ended;
        let elapsed = self.started.elapsed();
        let status = if self.status == 0 {
            CLIENT_GONE
        } else {
            self.status
        };
        // A stream's time to its first byte from Azure, in seconds.
        let first_token = first_byte.filter(|_| self.stream).map(|first| {
            first
                .saturating_duration_since(self.started.into())
                .as_secs_f64()
        });
        let app = self
            .app
            .clone()
            .unwrap_or_else(|| self.telemetry.empty_label.clone());
        self.count(status, elapsed, first_token, &app, usage);
        if let Some(span) = self.span.take() {
            self.end_span(span, &end, status, usage, response_model);
        }
        match &self.session {
            Some(session) => {
                self.telemetry.open_sessions.dec();
                self.log_session(session, status, elapsed);
            }
            None => self.log(&end, status, elapsed, bytes, &app, usage),
        }
        self.permit = Permit::default();
    }

    /// The request's metrics: its count and duration, streams, tokens, the GenAI
    /// metrics, and its row in `/usage`.
    fn count(
        &self,
        status: u16,
        elapsed: std::time::Duration,
        first_token: Option<f64>,
        app: &Arc<str>,
        usage: Option<Usage>,
    ) {
        let telemetry = &self.telemetry;
        let empty = &telemetry.empty_label;
        telemetry
            .requests
            .get_or_create(&RequestLabels {
                route: self.route,
                app: app.clone(),
                deployment: self
                    .deployment_label
                    .clone()
                    .unwrap_or_else(|| empty.clone()),
                backend: self.backend_label.clone().unwrap_or_else(|| empty.clone()),
                status,
            })
            .inc();
        telemetry
            .duration
            .get_or_create(&RouteLabels { route: self.route })
            .observe(elapsed.as_secs_f64());
        telemetry.in_flight.dec();
        if self.stream {
            telemetry.open_streams.dec();
            if let Some(first) = first_token {
                telemetry
                    .first_token
                    .get_or_create(&RouteLabels { route: self.route })
                    .observe(first);
            }
        }
        let Some(deployment) = &self.deployment_label else {
            return;
        };
        if let Some(u) = usage {
            for (kind, n) in [
                ("prompt", u.prompt),
                ("completion", u.completion),
                ("cached", u.cached),
                ("reasoning", u.reasoning),
            ] {
                if n > 0 {
                    telemetry
                        .tokens
                        .get_or_create(&TokenUseLabels {
                            app: app.clone(),
                            deployment: deployment.clone(),
                            kind,
                        })
                        .inc_by(n);
                }
            }
        }
        let model = self
            .model_label
            .clone()
            .unwrap_or_else(|| deployment.clone());
        if let Some(operation) = self.operation.filter(|op| *op != "other") {
            self.count_gen_ai(operation, &model, elapsed, first_token, usage);
        }
        telemetry
            .usage
            .add((app.clone(), deployment.clone(), model), usage);
    }

    /// The GenAI conventions' metrics: operation duration, time to first token, tokens.
    fn count_gen_ai(
        &self,
        operation: &'static str,
        model: &Arc<str>,
        elapsed: std::time::Duration,
        first_token: Option<f64>,
        usage: Option<Usage>,
    ) {
        let labels = GenAiLabels {
            gen_ai_operation_name: operation,
            gen_ai_provider_name: crate::otel::names::AZURE_OPENAI,
            gen_ai_request_model: model.clone(),
        };
        let gen_ai = &self.telemetry.gen_ai;
        gen_ai
            .operation_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if let Some(first) = first_token {
            gen_ai
                .time_to_first_token
                .get_or_create(&labels)
                .observe(first);
        }
        if let Some(u) = usage {
            for (kind, n) in [("input", u.prompt), ("output", u.completion)] {
                gen_ai
                    .token_usage
                    .get_or_create(&GenAiTokenLabels {
                        gen_ai_operation_name: operation,
                        gen_ai_provider_name: crate::otel::names::AZURE_OPENAI,
                        gen_ai_request_model: model.clone(),
                        gen_ai_token_type: kind,
                    })
                    .observe(n as f64);
            }
        }
    }

    /// Ends the request's trace span with its outcome.
    fn end_span(
        &mut self,
        span: crate::otel::ServerSpan,
        end: &End,
        status: u16,
        usage: Option<Usage>,
        response_model: Option<String>,
    ) {
        let error = match end {
            End::Failed(_) => Some("stream_failed".to_owned()),
            End::ClientGone if status == CLIENT_GONE => Some("client_gone".to_owned()),
            _ if status >= 400 => Some(status.to_string()),
            _ => None,
        };
        span.end(crate::otel::Outcome {
            operation: self.operation.unwrap_or("other"),
            request_model: self.request_model.take(),
            response_model,
            deployment: self.deployment.as_ref(),
            backend: self.backend.as_ref(),
            app: self.app.as_ref(),
            status,
            error: error.as_deref(),
            usage,
            apim_request_id: self.upstream_request_id.as_deref(),
            region: self.region.take(),
        });
    }

    /// A realtime session's log line.
    fn log_session(&self, session: &SessionStats, status: u16, elapsed: std::time::Duration) {
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        let request_id = self.request_id.to_str().unwrap_or("-");
        tracing::info!(
            route = self.route,
            path = self.path.as_str(),
            deployment = self.deployment.as_deref().unwrap_or("-"),
            backend = self.backend.as_deref().unwrap_or("-"),
            status,
            duration_ms,
            bytes_from_client = session.bytes_from_client,
            bytes_to_client = session.bytes_to_client,
            close_code = session.close_code,
            closed_by = session.closed_by,
            request_id,
            upstream_request_id = self.upstream_request_id.as_deref().unwrap_or("-"),
            "realtime session"
        );
    }

    /// The request's log line: debug for probes, warn for a failed or cut stream.
    fn log(
        &self,
        end: &End,
        status: u16,
        elapsed: std::time::Duration,
        bytes: u64,
        app: &str,
        usage: Option<Usage>,
    ) {
        let u = usage.unwrap_or_default();
        let (prompt_tokens, completion_tokens, total_tokens) = (u.prompt, u.completion, u.total);
        let (cached_tokens, reasoning_tokens) = (u.cached, u.reasoning);
        let cut = self.cut.as_ref().is_some_and(|t| t.is_cancelled());
        let outcome = match end {
            End::Complete => "complete",
            End::Failed(_) => "upstream_failed",
            End::ClientGone if cut => "shutdown",
            End::ClientGone => "client_gone",
        };
        let error = match end {
            End::Failed(e) => e.as_str(),
            _ => self.error.as_deref().unwrap_or(""),
        };
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        let deployment = self.deployment.as_deref().unwrap_or("-");
        let backend = self.backend.as_deref().unwrap_or("-");
        let upstream_request_id = self.upstream_request_id.as_deref().unwrap_or("-");
        let request_id = self.request_id.to_str().unwrap_or("-");
        let path = self.path.as_str();
        let attempts = self.attempts;
        if matches!(self.route, "healthz" | "readyz" | "metrics") {
            tracing::debug!(method = %self.method, route = self.route, status, duration_ms, "probe");
        } else if matches!(end, End::Failed(_)) || outcome == "shutdown" {
            tracing::warn!(
                method = %self.method, route = self.route, path, app, deployment, backend,
                attempts, status, duration_ms, bytes,
                prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens,
                request_id, upstream_request_id, outcome, error,
                "request"
            );
        } else {
            tracing::info!(
                method = %self.method, route = self.route, path, app, deployment, backend,
                attempts, status, duration_ms, bytes,
                prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens,
                request_id, upstream_request_id, outcome, error,
                "request"
            );
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        // Not finished: the handler's future was dropped before the head (the client
        // went away), or the body was dropped unpolled.
        self.complete(Ended {
            bytes: 0,
            end: End::ClientGone,
            first_byte: None,
            usage: None,
            response_model: None,
        });
    }
}

impl BodyEnd for Record {
    fn end(self: Box<Self>, ended: Ended) {
        (*self).finish_with(ended);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gen_ai_metrics_have_the_conventions_names() {
        let t = Telemetry::new(Vec::new());
        let labels = GenAiLabels {
            gen_ai_operation_name: "chat",
            gen_ai_provider_name: "azure.ai.openai",
            gen_ai_request_model: Arc::from("gpt-4o"),
        };
        t.gen_ai
            .operation_duration
            .get_or_create(&labels)
            .observe(0.5);
        let mut out = String::new();
        prometheus_client::encoding::text::encode_registry(&mut out, &t.gen_ai.registry).unwrap();
        let text = t.encode();
        assert!(
            text.contains(
                "gen_ai_client_operation_duration_seconds_count{gen_ai_operation_name=\"chat\""
            ),
            "{out}\n---\n{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(text.matches("# EOF").count(), 1);
    }
}
