//! OpenTelemetry traces: one server span a request, one client span an attempt (a retry
//! or failover is a second child), with the GenAI semantic conventions, exported over OTLP
//! (HTTP/protobuf or gRPC) in batches, off the request path.
//!
//! The batch processor runs on a thread of its own with a bounded queue: a collector that
//! is down or slow costs a dropped span, never a request's time. A client's W3C
//! `traceparent`/`tracestate` is continued, and each attempt's context goes to Azure on
//! the upstream request; without one, keyless starts the trace. No prompt or completion
//! content is ever put on a span.
//!
//! The attribute names live in [`names`]: the GenAI conventions are still marked
//! "development", and a rename is then one line.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span};
use std::sync::Arc;
use std::time::Duration;

mod export;

/// Attribute names and values, in one place.
pub mod names {
    /// Which GenAI provider: Azure OpenAI.
    pub const PROVIDER: &str = "gen_ai.provider.name";
    /// Its value.
    pub const AZURE_OPENAI: &str = "azure.ai.openai";
    /// `chat`, `embeddings`, `text_completion`, ...
    pub const OPERATION: &str = "gen_ai.operation.name";
    /// The model the client asked for.
    pub const REQUEST_MODEL: &str = "gen_ai.request.model";
    /// The model Azure says answered.
    pub const RESPONSE_MODEL: &str = "gen_ai.response.model";
    /// Prompt tokens.
    pub const INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
    /// Completion tokens.
    pub const OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
    /// Prompt tokens read from the prompt cache.
    pub const CACHED_TOKENS: &str = "gen_ai.usage.cache_read.input_tokens";
    /// Completion tokens spent reasoning.
    pub const REASONING_TOKENS: &str = "gen_ai.usage.reasoning.output_tokens";
    /// The Azure deployment.
    pub const DEPLOYMENT: &str = "azure.openai.deployment";
    /// keyless's backend name.
    pub const BACKEND: &str = "keyless.backend";
    /// The app of a shared gateway.
    pub const APP: &str = "keyless.app";
    /// The attempt's number, from 1.
    pub const ATTEMPT: &str = "keyless.attempt";
    /// Azure's request id.
    pub const APIM_REQUEST_ID: &str = "azure.apim_request_id";
    /// The Azure region that answered.
    pub const REGION: &str = "azure.region";
    /// Why it failed.
    pub const ERROR_TYPE: &str = "error.type";
    /// HTTP method, path, status, peer.
    pub const METHOD: &str = "http.request.method";
    /// The request path (never the query: it may hold secrets).
    pub const PATH: &str = "url.path";
    /// The status sent.
    pub const STATUS: &str = "http.response.status_code";
    /// Azure's host.
    pub const SERVER_ADDRESS: &str = "server.address";
}

/// The GenAI operation of an OpenAI operation path.
pub fn operation(op: &str) -> &'static str {
    match op {
        "chat/completions" => "chat",
        "responses" => "chat",
        "completions" => "text_completion",
        "embeddings" => "embeddings",
        "images/generations" => "image_generation",
        _ if op.starts_with("audio/") => "audio",
        _ if op.starts_with("responses/") => "responses",
        _ => "other",
    }
}

/// Where spans go, from `--otlp-endpoint` and the standard `OTEL_*` variables.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The collector, e.g. `http://127.0.0.1:4318` (HTTP) or `http://127.0.0.1:4317` (gRPC).
    pub endpoint: String,
    /// `http/protobuf` (default) or `grpc` (`OTEL_EXPORTER_OTLP_PROTOCOL`).
    pub grpc: bool,
}

impl Settings {
    /// The protocol named by `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`; an error for one keyless does not speak.
    pub fn from_env(endpoint: String) -> Result<Settings, String> {
        let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|_| "http/protobuf".to_owned());
        let grpc = match protocol.as_str() {
            "grpc" => true,
            "http/protobuf" => false,
            other => {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL {other:?}: keyless exports `http/protobuf` or `grpc`"
                ));
            }
        };
        Ok(Settings { endpoint, grpc })
    }
}

/// The tracer and its exporter.
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces").finish_non_exhaustive()
    }
}

impl Traces {
    /// Starts exporting to `settings.endpoint`. Must run inside the tokio runtime that
    /// lives as long as keyless (gRPC's channel runs on it).
    pub fn start(settings: &Settings) -> Result<Arc<Traces>, String> {
        let cannot = |e: &dyn std::fmt::Display| {
            format!("cannot export traces to {}: {e}", settings.endpoint)
        };
        let provider = if settings.grpc {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(settings.endpoint.clone())
                .with_timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| cannot(&e))?;
            provider(exporter)
        } else {
            // Given in code, the endpoint is used as it is: the signal's path is added
            // here, as the variable's rules add it.
            let base = settings.endpoint.trim_end_matches('/');
            let url = if base.ends_with("/v1/traces") {
                base.to_owned()
            } else {
                format!("{base}/v1/traces")
            };
            provider(export::HttpExporter::new(url).map_err(|e| cannot(&e))?)
        };
        let tracer = provider.tracer("keyless");
        Ok(Arc::new(Traces {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        }))
    }

    /// A request's server span, continuing the client's trace when it sent one.
    pub fn server_span(
        self: &Arc<Self>,
        headers: &HeaderMap,
        method: &str,
        path: &str,
    ) -> ServerSpan {
        let parent = self.propagator.extract(&Headers(headers));
        let span = self
            .tracer
            .span_builder(method.to_owned())
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new(names::METHOD, method.to_owned()),
                KeyValue::new(names::PATH, path.to_owned()),
                KeyValue::new(names::PROVIDER, names::AZURE_OPENAI),
            ])
            .start_with_context(&self.tracer, &parent);
        ServerSpan {
            context: span.span_context().clone(),
            span,
            traces: self.clone(),
        }
    }

    /// Sends what is queued and stops the exporter (at shutdown, bounded by the SDK's
    /// own timeout).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "trace exporter shutdown");
        }
    }
}

/// The tracer provider over `exporter`: batches on the SDK's own thread, the service's
/// name from `OTEL_SERVICE_NAME`, the sampler from `OTEL_TRACES_SAMPLER` / `_ARG` (the SDK
/// reads them; parent-based always-on by default).
fn provider(exporter: impl opentelemetry_sdk::trace::SpanExporter + 'static) -> SdkTracerProvider {
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "keyless".to_owned());
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service)
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        )
        .build()
}

/// A request's span, ended with the request (a stream's with its last byte).
pub struct ServerSpan {
    span: Span,
    context: SpanContext,
    traces: Arc<Traces>,
}

impl std::fmt::Debug for ServerSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSpan").finish_non_exhaustive()
    }
}

/// What a request's span says when it ends.
#[derive(Debug, Default)]
pub struct Outcome<'a> {
    /// GenAI operation.
    pub operation: &'static str,
    /// The client's model.
    pub request_model: Option<&'a str>,
    /// Azure's model.
    pub response_model: Option<&'a str>,
    /// Deployment and backend used.
    pub deployment: Option<&'a str>,
    /// Backend used.
    pub backend: Option<&'a str>,
    /// App of a shared gateway.
    pub app: Option<&'a str>,
    /// Status sent.
    pub status: u16,
    /// Why it failed, if it did.
    pub error: Option<&'a str>,
    /// Tokens.
    pub usage: Option<crate::usage::Usage>,
    /// Azure's request id and region.
    pub apim_request_id: Option<&'a str>,
    /// Azure's region.
    pub region: Option<&'a str>,
}

impl ServerSpan {
    /// A client span for one attempt, child of this one.
    pub fn attempt(&self, backend: &str, host: &str, n: u32, method: &str) -> AttemptSpan {
        let parent = Context::new().with_remote_span_context(self.context.clone());
        let tracer = &self.traces.tracer;
        let span = tracer
            .span_builder(method.to_owned())
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new(names::METHOD, method.to_owned()),
                KeyValue::new(names::BACKEND, backend.to_owned()),
                KeyValue::new(names::SERVER_ADDRESS, host.to_owned()),
                KeyValue::new(names::ATTEMPT, i64::from(n)),
                KeyValue::new(names::PROVIDER, names::AZURE_OPENAI),
            ])
            .start_with_context(tracer, &parent);
        AttemptSpan {
            context: span.span_context().clone(),
            span,
        }
    }

    /// Ends the span with what happened.
    pub fn end(mut self, outcome: Outcome<'_>) {
        let name = match outcome.request_model {
            Some(model) => format!("{} {model}", outcome.operation),
            None => outcome.operation.to_owned(),
        };
        self.span.update_name(name);
        let mut attributes = vec![
            KeyValue::new(names::OPERATION, outcome.operation),
            KeyValue::new(names::STATUS, i64::from(outcome.status)),
        ];
        let text = |key: &'static str, value: Option<&str>| {
            value.map(|v| KeyValue::new(key, v.chars().take(256).collect::<String>()))
        };
        attributes.extend(
            [
                text(names::REQUEST_MODEL, outcome.request_model),
                text(names::RESPONSE_MODEL, outcome.response_model),
                text(names::DEPLOYMENT, outcome.deployment),
                text(names::BACKEND, outcome.backend),
                text(names::APP, outcome.app),
                text(names::APIM_REQUEST_ID, outcome.apim_request_id),
                text(names::REGION, outcome.region),
                text(names::ERROR_TYPE, outcome.error),
            ]
            .into_iter()
            .flatten(),
        );
        if let Some(u) = outcome.usage {
            let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            attributes.extend([
                KeyValue::new(names::INPUT_TOKENS, n(u.prompt)),
                KeyValue::new(names::OUTPUT_TOKENS, n(u.completion)),
                KeyValue::new(names::CACHED_TOKENS, n(u.cached)),
                KeyValue::new(names::REASONING_TOKENS, n(u.reasoning)),
            ]);
        }
        self.span.set_attributes(attributes);
        if outcome.error.is_some() {
            self.span
                .set_status(Status::error(outcome.error.unwrap_or_default().to_owned()));
        }
        self.span.end();
    }
}

/// One attempt's span: its context goes to Azure in `traceparent`.
pub struct AttemptSpan {
    span: Span,
    context: SpanContext,
}

impl AttemptSpan {
    /// Sets `traceparent` (and `tracestate`) on the upstream request.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let cx = Context::new().with_remote_span_context(self.context.clone());
        TraceContextPropagator::new().inject_context(&cx, &mut HeadersMut(headers));
    }

    /// Ends it with Azure's status, or the error that left no status.
    pub fn end(mut self, status: Option<u16>, error: Option<&str>) {
        if let Some(status) = status {
            self.span
                .set_attribute(KeyValue::new(names::STATUS, i64::from(status)));
        }
        let error = error
            .map(str::to_owned)
            .or_else(|| status.filter(|s| *s >= 400).map(|s| s.to_string()));
        if let Some(error) = error {
            self.span
                .set_attribute(KeyValue::new(names::ERROR_TYPE, error.clone()));
            self.span.set_status(Status::error(error));
        }
        self.span.end();
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}
