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
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, Tracer as _,
    TracerProvider as _,
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

/// At most 256 bytes of `text`, cut at a character boundary: a span's values stay small
/// whatever a client or Azure sent.
fn clip(text: &str) -> &str {
    &text[..boundary(text, 256)]
}

/// The largest character boundary of `text` at or below `max` (`str::floor_char_boundary`,
/// stable only since Rust 1.91).
fn boundary(text: &str, max: usize) -> usize {
    if text.len() <= max {
        return text.len();
    }
    (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

/// A keyless name (deployment, backend, app) as an attribute value, shared, not copied.
fn shared(name: &Arc<str>) -> opentelemetry::Value {
    opentelemetry::Value::String(name.clone().into())
}

/// The most attributes a server span gets: 3 at the start, up to 14 at the end.
const SERVER_ATTRIBUTES: usize = 17;
/// An attempt's: 5 at the start, up to 2 at the end.
const ATTEMPT_ATTRIBUTES: usize = 7;

/// The first attributes in a vector with room for all a span will get: the SDK keeps the
/// builder's vector as the span's, so later ones need no reallocation.
fn room_for<const N: usize>(all: usize, first: [KeyValue; N]) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(all);
    attributes.extend(first);
    attributes
}

/// The method as a span name: the standard ones without a copy.
fn static_method(method: &str) -> std::borrow::Cow<'static, str> {
    match method {
        "GET" => "GET".into(),
        "POST" => "POST".into(),
        "DELETE" => "DELETE".into(),
        "PUT" => "PUT".into(),
        "PATCH" => "PATCH".into(),
        "HEAD" => "HEAD".into(),
        "OPTIONS" => "OPTIONS".into(),
        other => other.to_owned().into(),
    }
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
        let method = static_method(method);
        let span = self
            .tracer
            .span_builder(method.clone())
            .with_kind(SpanKind::Server)
            .with_attributes(room_for(
                SERVER_ATTRIBUTES,
                [
                    KeyValue::new(names::METHOD, method),
                    KeyValue::new(names::PATH, clip(path).to_owned()),
                    KeyValue::new(names::PROVIDER, names::AZURE_OPENAI),
                ],
            ))
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
    pub request_model: Option<String>,
    /// Azure's model.
    pub response_model: Option<String>,
    /// Deployment and backend used.
    pub deployment: Option<&'a Arc<str>>,
    /// Backend used.
    pub backend: Option<&'a Arc<str>>,
    /// App of a shared gateway.
    pub app: Option<&'a Arc<str>>,
    /// Status sent.
    pub status: u16,
    /// Why it failed, if it did.
    pub error: Option<&'a str>,
    /// Tokens.
    pub usage: Option<crate::usage::Usage>,
    /// Azure's request id and region.
    pub apim_request_id: Option<&'a str>,
    /// Azure's region.
    pub region: Option<String>,
}

impl ServerSpan {
    /// A client span for one attempt, child of this one.
    pub fn attempt(&self, backend: &Arc<str>, host: &str, n: u32, method: &str) -> AttemptSpan {
        let parent = Context::new().with_remote_span_context(self.context.clone());
        let tracer = &self.traces.tracer;
        let method = static_method(method);
        let span = tracer
            .span_builder(method.clone())
            .with_kind(SpanKind::Client)
            .with_attributes(room_for(
                ATTEMPT_ATTRIBUTES,
                [
                    KeyValue::new(names::METHOD, method),
                    KeyValue::new(names::BACKEND, shared(backend)),
                    KeyValue::new(names::SERVER_ADDRESS, host.to_owned()),
                    KeyValue::new(names::ATTEMPT, i64::from(n)),
                    KeyValue::new(names::PROVIDER, names::AZURE_OPENAI),
                ],
            ))
            .start_with_context(tracer, &parent);
        AttemptSpan {
            context: span.span_context().clone(),
            span,
        }
    }

    /// Ends the span with what happened.
    pub fn end(mut self, outcome: Outcome<'_>) {
        let name = match &outcome.request_model {
            Some(model) => format!("{} {}", outcome.operation, clip(model)),
            None => outcome.operation.to_owned(),
        };
        self.span.update_name(name);
        let span = &mut self.span;
        span.set_attribute(KeyValue::new(names::OPERATION, outcome.operation));
        span.set_attribute(KeyValue::new(names::STATUS, i64::from(outcome.status)));
        let owned = |key: &'static str, value: Option<String>| {
            value.map(|mut v| {
                v.truncate(boundary(&v, 256));
                KeyValue::new(key, v)
            })
        };
        let text = |key: &'static str, value: Option<&str>| {
            value.map(|v| KeyValue::new(key, clip(v).to_owned()))
        };
        let name = |key: &'static str, value: Option<&Arc<str>>| {
            value.map(|v| KeyValue::new(key, shared(v)))
        };
        let texts = [
            owned(names::REQUEST_MODEL, outcome.request_model),
            owned(names::RESPONSE_MODEL, outcome.response_model),
            name(names::DEPLOYMENT, outcome.deployment),
            name(names::BACKEND, outcome.backend),
            name(names::APP, outcome.app),
            text(names::APIM_REQUEST_ID, outcome.apim_request_id),
            owned(names::REGION, outcome.region),
            text(names::ERROR_TYPE, outcome.error),
        ];
        for attribute in texts.into_iter().flatten() {
            span.set_attribute(attribute);
        }
        if let Some(u) = outcome.usage {
            let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            span.set_attribute(KeyValue::new(names::INPUT_TOKENS, n(u.prompt)));
            span.set_attribute(KeyValue::new(names::OUTPUT_TOKENS, n(u.completion)));
            span.set_attribute(KeyValue::new(names::CACHED_TOKENS, n(u.cached)));
            span.set_attribute(KeyValue::new(names::REASONING_TOKENS, n(u.reasoning)));
        }
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
        // W3C Trace Context, written as TraceContextPropagator writes it, without its
        // `Context` and `String`s.
        let c = &self.context;
        if !c.is_valid() {
            return;
        }
        let mut text = Vec::with_capacity(55);
        text.extend_from_slice(b"00-");
        push_hex(&mut text, &c.trace_id().to_bytes());
        text.push(b'-');
        push_hex(&mut text, &c.span_id().to_bytes());
        text.push(b'-');
        push_hex(
            &mut text,
            &[c.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8()],
        );
        if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(text)) {
            headers.insert(TRACEPARENT, value);
        }
        let state = c.trace_state().header();
        if !state.is_empty()
            && let Ok(value) = HeaderValue::from_str(&state)
        {
            headers.insert(TRACESTATE, value);
        }
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

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Lowercase hex, two digits a byte.
fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::propagation::Injector;
    use opentelemetry::trace::{SpanId, TraceId, TraceState};
    use std::collections::HashMap;

    struct Map(HashMap<String, String>);

    impl Injector for Map {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key.to_owned(), value);
        }
    }

    #[test]
    fn traceparent_and_tracestate_as_the_sdks_propagator_writes_them() {
        for (flags, state) in [
            (TraceFlags::SAMPLED, TraceState::default()),
            (
                TraceFlags::default(),
                TraceState::from_key_value([("vendor", "a1"), ("other", "b2")]).unwrap(),
            ),
        ] {
            let context = SpanContext::new(
                TraceId::from_bytes([0x0a, 0xf7, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0xff]),
                SpanId::from_bytes([0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]),
                flags,
                false,
                state,
            );
            let mut theirs = Map(HashMap::new());
            TraceContextPropagator::new().inject_context(
                &Context::new().with_remote_span_context(context.clone()),
                &mut theirs,
            );
            let mut ours = HeaderMap::new();
            let span = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .build()
                .tracer("test")
                .start("x");
            AttemptSpan { span, context }.inject(&mut ours);
            assert_eq!(ours["traceparent"], theirs.0["traceparent"].as_str());
            match theirs.0.get("tracestate").filter(|s| !s.is_empty()) {
                Some(state) => assert_eq!(ours["tracestate"], state.as_str()),
                None => assert!(!ours.contains_key("tracestate")),
            }
        }
    }

    #[test]
    fn values_are_clipped_at_a_character_boundary() {
        assert_eq!(clip("gpt-4o"), "gpt-4o");
        let even = "é".repeat(200);
        assert_eq!(clip(&even).len(), 256);
        let odd = format!("a{even}");
        assert_eq!(clip(&odd).len(), 255);
        assert!(odd.starts_with(clip(&odd)));
        assert_eq!(static_method("POST"), "POST");
        assert_eq!(static_method("PROPFIND"), "PROPFIND");
    }
}
