//! Configuration: command-line flags and environment over a TOML file over defaults,
//! validated into a [`Config`] in which invalid states cannot be represented.
//!
//! Every problem is reported at once (unknown keys, bad values, missing endpoint), so a
//! user fixes a config file in one pass rather than one error per start.

use crate::auth::credential::{CredentialKind, CredentialSettings, parse_authority_host};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

mod read;

use read::{Entries, List, Section};

/// The default listen address: loopback only, so nothing off the machine can use the token.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
/// The default api-version for the `deployments` path style (latest dated GA).
pub const DEFAULT_API_VERSION: &str = "2024-10-21";
/// The default Entra scope for Azure OpenAI.
pub const DEFAULT_SCOPE: &str = "https://cognitiveservices.azure.com/.default";
/// The default cap on a request body keyless must read (to find the model): 32 MiB.
/// Azure accepts audio files up to 25 MB, so this leaves room for a multipart upload.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// [`DEFAULT_MAX_BODY_BYTES`] as the type [`Config::max_body_bytes`] has.
const DEFAULT_MAX_BODY: NonZeroUsize = NonZeroUsize::MIN.saturating_add(DEFAULT_MAX_BODY_BYTES - 1);

/// How keyless writes upstream paths (`--api`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiStyle {
    /// `{endpoint}/openai/v1/{op}`, the GA v1 API; the body's `model` is the deployment.
    #[default]
    V1,
    /// `{endpoint}/openai/deployments/{deployment}/{op}?api-version=V`.
    Deployments,
}

/// Log line format (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The flags shared by `keyless serve` and `keyless check`. Each is optional so that an
/// absent flag falls back to the config file, then to the default.
#[derive(Args, Clone, Debug, Default)]
pub struct Flags {
    /// TOML config file; flags and environment variables override it.
    #[arg(long, env = "KEYLESS_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8787].
    #[arg(long, env = "KEYLESS_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// The Azure OpenAI resource, e.g. https://my-res.openai.azure.com.
    #[arg(long, env = "AZURE_OPENAI_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,
    /// Upstream path style [default: v1].
    #[arg(long, env = "KEYLESS_API", value_name = "STYLE")]
    pub api: Option<ApiStyle>,
    /// api-version for the deployments style [default: 2024-10-21].
    #[arg(long, env = "AZURE_OPENAI_API_VERSION", value_name = "VER")]
    pub api_version: Option<String>,
    /// Deployment for a model with no --model mapping.
    #[arg(long, env = "AZURE_OPENAI_DEPLOYMENT", value_name = "NAME")]
    pub deployment: Option<String>,
    /// Map a model name to a deployment (repeatable): --model gpt-4o-mini=prod-4o-mini.
    #[arg(long = "model", value_name = "NAME=DEPLOYMENT", value_parser = parse_model_mapping)]
    pub models: Vec<(String, String)>,
    /// Entra credential [default: auto].
    #[arg(long, env = "KEYLESS_CREDENTIAL", value_name = "KIND")]
    pub credential: Option<CredentialKind>,
    /// Entra scope [default: https://cognitiveservices.azure.com/.default].
    #[arg(long, env = "KEYLESS_SCOPE", value_name = "SCOPE")]
    pub scope: Option<String>,
    /// Tenant for the credential.
    #[arg(long, env = "AZURE_TENANT_ID", value_name = "ID")]
    pub tenant_id: Option<String>,
    /// Client id: service principal, workload identity, or user-assigned managed identity.
    #[arg(long, env = "AZURE_CLIENT_ID", value_name = "ID")]
    pub client_id: Option<String>,
    /// A user-assigned managed identity by its object (principal) id, instead of
    /// --client-id.
    #[arg(long, env = "KEYLESS_OBJECT_ID", value_name = "ID")]
    pub object_id: Option<String>,
    /// A user-assigned managed identity by its Azure resource id (IMDS only), instead of
    /// --client-id.
    #[arg(long, env = "KEYLESS_RESOURCE_ID", value_name = "ID")]
    pub resource_id: Option<String>,
    /// Entra authority host for sovereign clouds, e.g. https://login.microsoftonline.us.
    #[arg(long, env = "AZURE_AUTHORITY_HOST", value_name = "URL")]
    pub authority_host: Option<String>,
    /// Run against an embedded Azure OpenAI simulator with an in-process identity.
    #[arg(long)]
    pub simulate: bool,
    /// Largest request body keyless reads to find the model [default: 32 MiB].
    #[arg(long, env = "KEYLESS_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Time to connect to Azure [default: 10s].
    #[arg(long, env = "KEYLESS_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Time to wait for Azure's response head; reasoning models think for minutes [default: 10m].
    #[arg(long, env = "KEYLESS_RESPONSE_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub response_timeout: Option<Duration>,
    /// Time to wait for a token from the credential [default: 30s].
    #[arg(long, env = "KEYLESS_TOKEN_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub token_timeout: Option<Duration>,
    /// Longest silence between two body frames from Azure before the response is
    /// aborted [default: 10m].
    #[arg(long, env = "KEYLESS_IDLE_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Attempts per request, the first included [default: 3].
    #[arg(long, env = "KEYLESS_MAX_ATTEMPTS", value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Longest wait keyless accepts before a retry; when Azure asks for more, its answer
    /// goes to the client at once [default: 60s].
    #[arg(long, env = "KEYLESS_RETRY_MAX_WAIT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub retry_max_wait: Option<Duration>,
    /// Extra CA certificates (PEM) to trust for Azure, e.g. a corporate TLS-inspecting
    /// proxy's; the platform's roots (or Mozilla's) stay trusted.
    #[arg(long, env = "KEYLESS_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// A second listener for /metrics, /healthz and /readyz only, so a scraper or the
    /// kubelet can reach them while the proxy stays on loopback.
    #[arg(long, env = "KEYLESS_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Longest silence (no frame either way) of a realtime WebSocket session before
    /// keyless closes it [default: 10m].
    #[arg(long, env = "KEYLESS_REALTIME_IDLE_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub realtime_idle_timeout: Option<Duration>,
    /// Longest realtime WebSocket session; keyless closes it then [default: 2h].
    #[arg(long, env = "KEYLESS_REALTIME_MAX_SESSION", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub realtime_max_session: Option<Duration>,
    /// How long requests and streams in flight may run on after SIGTERM [default: 30s].
    #[arg(long, env = "KEYLESS_SHUTDOWN_GRACE", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// Threads serving the proxy's connections, each with its own upstream connection
    /// pool [default: one a CPU core].
    #[arg(long, env = "KEYLESS_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
    /// Log format [default: text].
    #[arg(long, env = "KEYLESS_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Redis for limits shared by several keyless replicas (with `[limits] backend =
    /// "redis"`), e.g. redis://10.0.0.5:6379.
    #[arg(
        long,
        env = "KEYLESS_REDIS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub redis_url: Option<String>,
    /// Serve a listener that is not loopback without app keys: the network is the guard.
    #[arg(long)]
    pub allow_unauthenticated: bool,
    /// Export traces over OTLP to this collector, e.g. http://127.0.0.1:4318 (HTTP/protobuf;
    /// `OTEL_EXPORTER_OTLP_PROTOCOL=grpc` for gRPC on 4317). Off by default.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

fn parse_model_mapping(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((model, deployment)) if !model.is_empty() && !deployment.is_empty() => {
            Ok((model.to_owned(), deployment.to_owned()))
        }
        _ => Err(format!("expected NAME=DEPLOYMENT, got {s:?}")),
    }
}

/// The config file as written: the one list of its keys. [`parse_file`] reads it key by
/// key ([`read`]), so every unknown key and every bad value is reported with its path; the
/// validators in [`Config::merge`] then check what types cannot (one a section).
///
/// Every field is optional here, even the required ones (checked by the validators): a key
/// must deserialize alone. Adding a key is one field here, then its use in `merge`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<SocketAddr>,
    endpoint: Option<String>,
    api: Option<ApiStyle>,
    api_version: Option<String>,
    deployment: Option<String>,
    #[serde(default)]
    models: Entries<RawModel>,
    credential: Option<CredentialKind>,
    scope: Option<String>,
    tenant_id: Option<String>,
    client_id: Option<String>,
    object_id: Option<String>,
    resource_id: Option<String>,
    authority_host: Option<String>,
    max_body_bytes: Option<usize>,
    #[serde(default, with = "opt_duration")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    response_timeout: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    token_timeout: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    idle_timeout: Option<Duration>,
    log_format: Option<LogFormat>,
    admin_listen: Option<SocketAddr>,
    #[serde(default, with = "opt_duration")]
    shutdown_grace: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    realtime_idle_timeout: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    realtime_max_session: Option<Duration>,
    ca_file: Option<PathBuf>,
    workers: Option<usize>,
    #[serde(default)]
    retry: Section<RawRetry>,
    #[serde(default)]
    limits: Section<RawLimits>,
    #[serde(default)]
    connections: Section<RawConnections>,
    #[serde(default)]
    apps: List<Section<RawApp>>,
    #[serde(default)]
    usage: Section<RawUsage>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: Option<String>,
    key_sha256: Option<String>,
    models: Option<Vec<String>>,
    rpm: Option<u32>,
    tpm: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUsage {
    stream_include_usage: Option<bool>,
}

/// `[models]` values: a deployment name, or an ordered list of backends.
#[derive(Debug)]
enum RawModel {
    Deployment(String),
    Backends(Vec<RawBackend>),
}

impl<'de> Deserialize<'de> for RawModel {
    // By the value's type rather than `#[serde(untagged)]`, whose one message ("did not
    // match any variant") would hide which backend field is wrong.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        match toml::Value::deserialize(d)? {
            toml::Value::String(deployment) => Ok(RawModel::Deployment(deployment)),
            list @ toml::Value::Array(_) => List::<Section<RawBackend>>::deserialize(list)
                .map(|backends| RawModel::Backends(backends.0.into_iter().map(|b| b.0).collect()))
                .map_err(|e| D::Error::custom(e.message())),
            other => Err(D::Error::custom(format!(
                "expected a deployment name or a list of backends, not {}",
                other.type_str()
            ))),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: Option<String>,
    endpoint: Option<String>,
    deployment: Option<String>,
    priority: Option<u32>,
    weight: Option<u32>,
    scope: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    attempts: Option<u32>,
    #[serde(default, with = "opt_duration")]
    max_wait: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    deadline: Option<Duration>,
    max_replay_bytes: Option<usize>,
    #[serde(default, with = "opt_duration")]
    backoff_base: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    backoff_cap: Option<Duration>,
    replay_budget_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnections {
    #[serde(default, with = "opt_duration")]
    header_timeout: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    idle_timeout: Option<Duration>,
    max: Option<usize>,
    #[serde(default, with = "opt_duration")]
    h2_keepalive_interval: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    h2_keepalive_timeout: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    body_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    mode: Option<LimitMode>,
    #[serde(default, with = "opt_duration")]
    queue_timeout: Option<Duration>,
    #[serde(default)]
    deployments: Entries<Section<DeploymentLimits>>,
    backend: Option<LimitBackendKind>,
    redis_url: Option<String>,
    #[serde(default, with = "opt_duration")]
    redis_timeout: Option<Duration>,
}

/// `[limits] backend`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LimitBackendKind {
    #[default]
    Local,
    Redis,
}
mod opt_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Where requests go and who signs them.
#[derive(Clone, Debug)]
pub enum Target {
    /// A real Azure OpenAI resource, with an Entra credential.
    Azure {
        /// The resource endpoint, normalised: no trailing slash, no `/openai` suffix.
        endpoint: Url,
        /// The credential to use (boxed: it is large and the enum is moved about).
        credential: Box<CredentialSettings>,
    },
    /// The embedded simulator and its in-process identity.
    Simulate,
}

/// Timeouts towards Azure.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// TCP + TLS connect.
    pub connect: Duration,
    /// From sending the request to receiving the response head.
    pub response: Duration,
    /// Longest silence between two body frames.
    pub idle: Duration,
    /// One token acquisition.
    pub token: Duration,
}

/// Limits of realtime WebSocket sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RealtimeLimits {
    /// Longest silence, no frame either way, before keyless closes the session.
    pub idle: Duration,
    /// Longest session.
    pub max_session: Duration,
}

impl Default for RealtimeLimits {
    /// Generous, as a voice session can listen for long: 10 minutes idle, 2 hours in all.
    fn default() -> RealtimeLimits {
        RealtimeLimits {
            idle: Duration::from_secs(600),
            max_session: Duration::from_secs(2 * 3600),
        }
    }
}

/// One app of a shared gateway (`[[apps]]`): who it is, what it may use, how fast.
#[derive(Clone, PartialEq, Eq)]
pub struct AppSpec {
    /// Its label in logs, metrics and `/usage`.
    pub name: String,
    /// SHA-256 of its key (the key itself is never stored).
    pub key_sha256: [u8; 32],
    /// The client-side model names it may use; `None`: any.
    pub models: Option<Vec<String>>,
    /// Requests per minute (burst: the same number).
    pub rpm: Option<NonZeroU32>,
    /// Tokens per minute, by the pre-call estimate (burst: the same number).
    pub tpm: Option<NonZeroU32>,
}

impl fmt::Debug for AppSpec {
    // No key material, not even its hash: the name says which app.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSpec")
            .field("name", &self.name)
            .field("models", &self.models)
            .field("rpm", &self.rpm)
            .field("tpm", &self.tpm)
            .finish_non_exhaustive()
    }
}

/// Where the rate-limit counters live.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum LimitBackend {
    /// In this process.
    #[default]
    Local,
    /// In Redis, shared by every replica that names the same server.
    Redis {
        /// `redis://` or `rediss://` URL (it may hold a password: never printed).
        url: String,
        /// The longest a decision may wait for Redis before this process decides alone.
        timeout: Duration,
    },
}

impl fmt::Debug for LimitBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitBackend::Local => f.write_str("Local"),
            LimitBackend::Redis { url, timeout } => {
                write!(f, "Redis({}, {timeout:?})", redact_url(url))
            }
        }
    }
}

/// A URL with its user and password replaced, for messages.
pub fn redact_url(text: &str) -> String {
    match Url::parse(text) {
        Ok(mut url) => {
            if !url.username().is_empty() || url.password().is_some() {
                let _ = url.set_username("");
                let _ = url.set_password(Some("redacted"));
            }
            url.to_string()
        }
        Err(_) => "<not a URL>".to_owned(),
    }
}

/// Bounds on client connections (`[connections]`): how long a socket may stay silent or
/// idle, how many may be open, how long a request body may stall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connections {
    /// A new connection's first byte, and then a whole request head, must come within it;
    /// an idle HTTP/1.1 keep-alive connection is closed after it too (hyper's head timer
    /// starts when it waits for the next request).
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2 with a
    /// GOAWAY; HTTP/1.1 when it is shorter than the header timeout).
    pub idle_timeout: Duration,
    /// Connections served at once per listener; `None`: from the open-files limit.
    pub max: Option<usize>,
    /// HTTP/2 keep-alive pings: how often, when the connection is quiet.
    pub h2_keepalive_interval: Duration,
    /// HTTP/2 keep-alive pings: how long an answer may take before the peer is dropped.
    pub h2_keepalive_timeout: Duration,
    /// The longest gap between two chunks of a request body keyless reads (408 after it).
    pub body_timeout: Duration,
}

impl Default for Connections {
    fn default() -> Connections {
        Connections {
            header_timeout: Duration::from_secs(30),
            // Envoy's and nginx's defaults sit between 75 s and an hour; SDK pools keep
            // connections for minutes between calls.
            idle_timeout: Duration::from_secs(300),
            max: None,
            h2_keepalive_interval: Duration::from_secs(30),
            h2_keepalive_timeout: Duration::from_secs(20),
            body_timeout: Duration::from_secs(60),
        }
    }
}

/// Where a model's requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelRoute {
    /// One deployment on the default endpoint.
    Deployment(String),
    /// An ordered list of backends: lowest `priority` first, `weight` within a priority.
    Backends(Vec<BackendSpec>),
}

/// One (endpoint, deployment) a model may be served by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// A name for logs and `x-keyless-backend`; defaults to `host/deployment`.
    pub name: String,
    /// The endpoint; `None` is the default endpoint.
    pub endpoint: Option<Url>,
    /// The deployment on that endpoint.
    pub deployment: String,
    /// Lower is preferred; backends of the next priority serve only when all of this
    /// one are cooling down or at their limits.
    pub priority: u32,
    /// Share of traffic among backends of the same priority.
    pub weight: NonZeroU32,
    /// Entra scope for this endpoint, if not the global one.
    pub scope: Option<String>,
}

/// How keyless retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub attempts: NonZeroU32,
    /// Longest wait before a retry that keyless accepts.
    pub max_wait: Duration,
    /// No attempt starts later than this after the request arrived.
    pub deadline: Duration,
    /// Bodies up to this size are held for replay; larger ones are sent once.
    pub max_replay_bytes: usize,
    /// Request bodies held for replay at once, across all requests: past it a body is
    /// sent once, not held.
    pub replay_budget_bytes: usize,
    /// First backoff ceiling when Azure names no wait.
    pub backoff_base: Duration,
    /// Largest backoff ceiling.
    pub backoff_cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            // 3, without an unwrap.
            attempts: NonZeroU32::MIN.saturating_add(2),
            max_wait: Duration::from_secs(60),
            deadline: Duration::from_secs(300),
            max_replay_bytes: DEFAULT_MAX_BODY_BYTES,
            replay_budget_bytes: 256 * 1024 * 1024,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(8),
        }
    }
}

/// What the rate limiter does with a request over the limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitMode {
    /// Answer 429 with `retry-after` and `retry-after-ms`.
    #[default]
    Reject,
    /// Hold the request up to `queue_timeout`, then answer 429.
    Queue,
}

/// Limits for one deployment (on each endpoint that serves it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentLimits {
    /// Requests per minute.
    pub rpm: Option<std::num::NonZeroU32>,
    /// Tokens per minute, estimated as Azure does before the call.
    pub tpm: Option<std::num::NonZeroU32>,
    /// Requests in flight at once (a stream counts until it ends).
    pub max_concurrent: Option<std::num::NonZeroU32>,
}

/// Rate limiting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Reject or queue.
    pub mode: LimitMode,
    /// Longest time a request waits in queue mode.
    pub queue_timeout: Duration,
    /// Limits by deployment name.
    pub deployments: HashMap<String, DeploymentLimits>,
    /// Where the counters live.
    pub backend: LimitBackend,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Upstream and identity.
    pub target: Target,
    /// Upstream path style.
    pub api: ApiStyle,
    /// api-version for the deployments style.
    pub api_version: String,
    /// Model name -> where it goes.
    pub models: HashMap<String, ModelRoute>,
    /// Deployment for unmapped models; `None` means "a deployment named like the model".
    pub default_deployment: Option<String>,
    /// Entra scope.
    pub scope: String,
    /// Largest body keyless reads.
    pub max_body_bytes: NonZeroUsize,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Retries.
    pub retry: RetryPolicy,
    /// Rate limits.
    pub limits: Limits,
    /// Bounds on client connections.
    pub connections: Connections,
    /// The apps of a shared gateway; empty: no app keys, anyone who reaches the port.
    pub apps: Vec<AppSpec>,
    /// OpenTelemetry trace export, when on.
    pub otlp: Option<crate::otel::Settings>,
    /// Add `stream_options.include_usage` to chat streams that did not ask for it (and
    /// remove the extra frame from what the client gets), so usage is counted.
    pub stream_include_usage: bool,
    /// The admin listener's address, if any.
    pub admin_listen: Option<SocketAddr>,
    /// Time given to requests in flight at shutdown.
    pub shutdown_grace: Duration,
    /// Realtime session limits.
    pub realtime: RealtimeLimits,
    /// Extra CA certificates to trust for Azure.
    pub ca_file: Option<PathBuf>,
    /// Threads serving the proxy's connections.
    pub workers: NonZeroUsize,
    /// Log format.
    pub log_format: LogFormat,
}

/// Every problem found in the configuration, one per line.
#[derive(Debug)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for problem in &self.0 {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the config file named by `flags.config` (if any) and merges `flags` over it.
    pub fn load(flags: &Flags) -> Result<Config, ConfigError> {
        let raw = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(vec![format!("cannot read {}: {e}", path.display())])
                })?;
                parse_file(&text).map_err(|mut problems| {
                    for p in &mut problems {
                        *p = format!("{}: {p}", path.display());
                    }
                    ConfigError(problems)
                })?
            }
            None => RawConfig::default(),
        };
        Self::merge(flags, raw)
    }

    /// Merges `flags` over `raw` and validates it, one validator a section, collecting
    /// every problem with its key path.
    fn merge(flags: &Flags, mut raw: RawConfig) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let p = &mut problems;
        // The sections read by reference first; the rest move out of `raw` below.
        let credential = credential(flags, &mut raw, p);
        let timeouts = timeouts(flags, &raw, p);
        let realtime = realtime(flags, &raw, p);

        let api = flags.api.or(raw.api).unwrap_or_default();
        let api_version = flags
            .api_version
            .clone()
            .or(raw.api_version)
            .unwrap_or_else(|| DEFAULT_API_VERSION.to_owned());
        if api_version.is_empty() {
            p.push("api_version must not be empty".to_owned());
        }
        let models = models(flags, raw.models, p);
        let default_deployment = flags.deployment.clone().or(raw.deployment);
        if let Some(d) = &default_deployment {
            check_name(p, "deployment", "deployment", d);
        }
        let scope = flags
            .scope
            .clone()
            .or(raw.scope)
            .unwrap_or_else(|| DEFAULT_SCOPE.to_owned());
        if !scope.starts_with("https://") && !scope.starts_with("api://") {
            p.push(format!(
                "scope {scope:?} should be a URL such as {DEFAULT_SCOPE}"
            ));
        }
        let target = target(flags, raw.endpoint, credential, p);

        let max_body_bytes = flags
            .max_body_bytes
            .or(raw.max_body_bytes)
            .map_or(Some(DEFAULT_MAX_BODY), NonZeroUsize::new)
            .unwrap_or_else(|| {
                p.push("max_body_bytes must be positive".to_owned());
                DEFAULT_MAX_BODY
            });
        // One a core, as nginx's `worker_processes auto`; the cgroup's CPU quota counts.
        let workers = match flags.workers.or(raw.workers) {
            Some(n) => NonZeroUsize::new(n).unwrap_or_else(|| {
                p.push("workers must be at least 1".to_owned());
                NonZeroUsize::MIN
            }),
            None => std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
        };
        let retry = retry(flags, raw.retry.0, p);
        let limits = limits(flags, raw.limits.0, p);
        let apps = apps(raw.apps, p);
        let stream_include_usage = raw.usage.0.stream_include_usage.unwrap_or(false);
        let otlp = otlp(flags, p);
        let listen = flags.listen.or(raw.listen).unwrap_or_else(default_listen);
        if !listen.ip().is_loopback() && apps.is_empty() && !flags.allow_unauthenticated {
            p.push(format!(
                "listen address {listen} is not loopback and no [[apps]] are configured: anyone \
                 who reaches it would spend this identity. Configure app keys ([[apps]] with \
                 key_sha256, see `keyless hash-key`), listen on 127.0.0.1, or pass \
                 --allow-unauthenticated if the network is the guard"
            ));
        }
        let connections = connections(raw.connections.0, p);

        match target {
            Some(target) if problems.is_empty() => Ok(Config {
                listen,
                apps,
                otlp,
                stream_include_usage,
                target,
                api,
                api_version,
                models,
                default_deployment,
                scope,
                max_body_bytes,
                timeouts,
                retry,
                limits,
                connections,
                admin_listen: flags.admin_listen.or(raw.admin_listen),
                ca_file: flags.ca_file.clone().or(raw.ca_file),
                workers,
                shutdown_grace: flags
                    .shutdown_grace
                    .or(raw.shutdown_grace)
                    .unwrap_or(Duration::from_secs(30)),
                realtime,
                log_format: flags.log_format.or(raw.log_format).unwrap_or_default(),
            }),
            _ => Err(ConfigError(problems)),
        }
    }

    /// Every (endpoint, scope) pair keyless sends to, each once: the default endpoint
    /// (`default`, which the simulator knows only once it runs) with the default scope
    /// first, then the backends' pairs by model name (a stable order for `keyless check`).
    /// The router makes one resource of each; `keyless check` acquires a token for each
    /// scope and calls each endpoint.
    pub fn resources(&self, default: &Url) -> Vec<(Url, String)> {
        let mut out = vec![(default.clone(), self.scope.clone())];
        let mut routes: Vec<(&String, &ModelRoute)> = self.models.iter().collect();
        routes.sort_by(|a, b| a.0.cmp(b.0));
        for (_, route) in routes {
            if let ModelRoute::Backends(backends) = route {
                for backend in backends {
                    let pair = (
                        backend.endpoint.clone().unwrap_or_else(|| default.clone()),
                        backend.scope.clone().unwrap_or_else(|| self.scope.clone()),
                    );
                    if !out.contains(&pair) {
                        out.push(pair);
                    }
                }
            }
        }
        out
    }
}

/// `value` (or `default`), refused when zero: every timeout and interval must be positive.
fn positive(
    problems: &mut Vec<String>,
    path: &str,
    value: Option<Duration>,
    default: Duration,
) -> Duration {
    let value = value.unwrap_or(default);
    if value.is_zero() {
        problems.push(format!("{path} must be positive"));
    }
    value
}

/// Names Azure would refuse, or that would reshape the upstream path, are refused here
/// rather than on every request.
fn check_name(problems: &mut Vec<String>, at: &str, kind: &str, name: &str) {
    if let Err(e) = crate::route::check_name(kind, name) {
        problems.push(format!("{at}: {e}"));
    }
}

/// The credential settings: flags over the file; the authority host held to the one rule.
fn credential(
    flags: &Flags,
    raw: &mut RawConfig,
    problems: &mut Vec<String>,
) -> CredentialSettings {
    CredentialSettings {
        kind: flags.credential.or(raw.credential).unwrap_or_default(),
        tenant_id: flags.tenant_id.clone().or(raw.tenant_id.take()),
        client_id: flags.client_id.clone().or(raw.client_id.take()),
        object_id: flags.object_id.clone().or(raw.object_id.take()),
        resource_id: flags.resource_id.clone().or(raw.resource_id.take()),
        authority_host: flags
            .authority_host
            .clone()
            .or(raw.authority_host.take())
            .and_then(|text| {
                parse_authority_host(&text)
                    .map_err(|e| problems.push(format!("authority_host: {e}")))
                    .ok()
            }),
        ..CredentialSettings::default()
    }
}

/// Timeouts towards Azure and the identity: flags over the file, each positive.
fn timeouts(flags: &Flags, raw: &RawConfig, p: &mut Vec<String>) -> Timeouts {
    Timeouts {
        connect: positive(
            p,
            "connect_timeout",
            flags.connect_timeout.or(raw.connect_timeout),
            Duration::from_secs(10),
        ),
        response: positive(
            p,
            "response_timeout",
            flags.response_timeout.or(raw.response_timeout),
            Duration::from_secs(600),
        ),
        idle: positive(
            p,
            "idle_timeout",
            flags.idle_timeout.or(raw.idle_timeout),
            Duration::from_secs(600),
        ),
        token: positive(
            p,
            "token_timeout",
            flags.token_timeout.or(raw.token_timeout),
            Duration::from_secs(30),
        ),
    }
}

/// Where requests go: the simulator, or the endpoint with `credential`.
fn target(
    flags: &Flags,
    endpoint: Option<String>,
    credential: CredentialSettings,
    problems: &mut Vec<String>,
) -> Option<Target> {
    if flags.simulate {
        return Some(Target::Simulate);
    }
    let Some(text) = flags.endpoint.clone().or(endpoint) else {
        problems.push(
            "no Azure OpenAI endpoint: pass --endpoint https://<resource>.openai.azure.com \
             (or set AZURE_OPENAI_ENDPOINT, or `endpoint` in the config file), \
             or try keyless with --simulate"
                .to_owned(),
        );
        return None;
    };
    match normalise_endpoint(&text) {
        Ok(endpoint) => Some(Target::Azure {
            endpoint,
            credential: Box::new(credential),
        }),
        Err(problem) => {
            problems.push(problem);
            None
        }
    }
}

/// `[models]` and `--model`: every route checked, the flags winning.
fn models(
    flags: &Flags,
    raw: Entries<RawModel>,
    problems: &mut Vec<String>,
) -> HashMap<String, ModelRoute> {
    let mut models = HashMap::new();
    for (model, route) in raw.0 {
        match validate_route(&model, route) {
            Ok(route) => {
                models.insert(model, route);
            }
            Err(mut p) => problems.append(&mut p),
        }
    }
    for (model, deployment) in &flags.models {
        models.insert(model.clone(), ModelRoute::Deployment(deployment.clone()));
    }
    for (model, route) in &models {
        let at = format!("models.{model}");
        check_name(problems, &at, "model", model);
        match route {
            ModelRoute::Deployment(d) => check_name(problems, &at, "deployment", d),
            ModelRoute::Backends(backends) => {
                for (i, b) in backends.iter().enumerate() {
                    check_name(problems, &format!("{at}[{i}]"), "deployment", &b.deployment);
                }
            }
        }
    }
    models
}

/// `[retry]`, with `--max-attempts` and `--retry-max-wait` over it.
fn retry(flags: &Flags, raw: RawRetry, problems: &mut Vec<String>) -> RetryPolicy {
    let defaults = RetryPolicy::default();
    let attempts = match flags.max_attempts.or(raw.attempts) {
        Some(n) => NonZeroU32::new(n).unwrap_or_else(|| {
            problems.push("retry.attempts must be at least 1 (1 means no retry)".to_owned());
            defaults.attempts
        }),
        None => defaults.attempts,
    };
    RetryPolicy {
        attempts,
        max_wait: flags
            .retry_max_wait
            .or(raw.max_wait)
            .unwrap_or(defaults.max_wait),
        deadline: positive(problems, "retry.deadline", raw.deadline, defaults.deadline),
        max_replay_bytes: raw.max_replay_bytes.unwrap_or(defaults.max_replay_bytes),
        backoff_base: raw.backoff_base.unwrap_or(defaults.backoff_base),
        backoff_cap: positive(
            problems,
            "retry.backoff_cap",
            raw.backoff_cap,
            defaults.backoff_cap,
        ),
        replay_budget_bytes: raw
            .replay_budget_bytes
            .unwrap_or(defaults.replay_budget_bytes),
    }
}

/// `[limits]`, with `--redis-url` over `limits.redis_url`.
fn limits(flags: &Flags, raw: RawLimits, problems: &mut Vec<String>) -> Limits {
    let redis_url = flags.redis_url.clone().or(raw.redis_url);
    let backend = match (raw.backend.unwrap_or_default(), redis_url) {
        (LimitBackendKind::Local, _) => LimitBackend::Local,
        (LimitBackendKind::Redis, Some(url)) => {
            match Url::parse(&url) {
                Ok(u) if matches!(u.scheme(), "redis" | "rediss") => {}
                _ => problems.push(format!(
                    "limits.redis_url {} must be a redis:// or rediss:// URL",
                    redact_url(&url)
                )),
            }
            let timeout = raw
                .redis_timeout
                .unwrap_or(crate::shared_limit::DEFAULT_TIMEOUT);
            if timeout.is_zero() {
                problems.push("limits.redis_timeout must be positive".to_owned());
            }
            LimitBackend::Redis { url, timeout }
        }
        (LimitBackendKind::Redis, None) => {
            problems.push(
                "limits.backend = \"redis\" needs limits.redis_url (or --redis-url, KEYLESS_REDIS_URL)"
                    .to_owned(),
            );
            LimitBackend::Local
        }
    };
    let mut deployments = HashMap::new();
    for (name, limits) in raw.deployments.0 {
        check_name(
            problems,
            &format!("limits.deployments.{name}"),
            "deployment",
            &name,
        );
        deployments.insert(name, limits.0);
    }
    Limits {
        mode: raw.mode.unwrap_or_default(),
        queue_timeout: raw.queue_timeout.unwrap_or(Duration::from_secs(30)),
        deployments,
        backend,
    }
}

/// `--otlp-endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`) and the protocol variables.
fn otlp(flags: &Flags, problems: &mut Vec<String>) -> Option<crate::otel::Settings> {
    let endpoint = flags.otlp_endpoint.clone().filter(|e| !e.is_empty())?;
    match Url::parse(&endpoint) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        _ => problems.push(format!(
            "--otlp-endpoint {} must be an http:// or https:// URL",
            redact_url(&endpoint)
        )),
    }
    crate::otel::Settings::from_env(endpoint)
        .map_err(|problem| problems.push(problem))
        .ok()
}

/// `realtime_idle_timeout` and `realtime_max_session`, flags over the file.
fn realtime(flags: &Flags, raw: &RawConfig, problems: &mut Vec<String>) -> RealtimeLimits {
    let defaults = RealtimeLimits::default();
    RealtimeLimits {
        idle: positive(
            problems,
            "realtime_idle_timeout",
            flags.realtime_idle_timeout.or(raw.realtime_idle_timeout),
            defaults.idle,
        ),
        max_session: positive(
            problems,
            "realtime_max_session",
            flags.realtime_max_session.or(raw.realtime_max_session),
            defaults.max_session,
        ),
    }
}

/// `[connections]`.
fn connections(raw: RawConnections, problems: &mut Vec<String>) -> Connections {
    let defaults = Connections::default();
    if raw.max == Some(0) {
        problems.push("connections.max must be at least 1".to_owned());
    }
    Connections {
        header_timeout: positive(
            problems,
            "connections.header_timeout",
            raw.header_timeout,
            defaults.header_timeout,
        ),
        idle_timeout: positive(
            problems,
            "connections.idle_timeout",
            raw.idle_timeout,
            defaults.idle_timeout,
        ),
        max: raw.max.or(defaults.max),
        h2_keepalive_interval: positive(
            problems,
            "connections.h2_keepalive_interval",
            raw.h2_keepalive_interval,
            defaults.h2_keepalive_interval,
        ),
        h2_keepalive_timeout: positive(
            problems,
            "connections.h2_keepalive_timeout",
            raw.h2_keepalive_timeout,
            defaults.h2_keepalive_timeout,
        ),
        body_timeout: positive(
            problems,
            "connections.body_timeout",
            raw.body_timeout,
            defaults.body_timeout,
        ),
    }
}

/// `[[apps]]`: unique names and keys, a well-formed SHA-256, positive limits.
fn apps(raw: List<Section<RawApp>>, problems: &mut Vec<String>) -> Vec<AppSpec> {
    let mut apps: Vec<AppSpec> = Vec::with_capacity(raw.0.len());
    for (i, Section(app)) in raw.0.into_iter().enumerate() {
        let mut ok = true;
        let named = app.name.is_some();
        let (at, name) = match app.name {
            Some(name) => (format!("apps[{i}] ({name})"), name),
            None => {
                problems.push(format!("apps[{i}]: name is missing"));
                ok = false;
                (format!("apps[{i}]"), String::new())
            }
        };
        let well_formed = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if named && !well_formed {
            problems.push(format!(
                "{at}: name must be 1 to 64 letters, digits, '-', '_' or '.'"
            ));
            ok = false;
        }
        let hash = app.key_sha256.as_deref().and_then(parse_sha256);
        if hash.is_none() {
            // The value is not shown: it may be a key pasted by mistake.
            problems.push(format!(
                "{at}: key_sha256 must be 64 lowercase hex digits (the output of `keyless hash-key`)"
            ));
            ok = false;
        }
        let mut at_least_one = |key: &str, value: Option<u32>| match value.map(NonZeroU32::new) {
            Some(None) => {
                problems.push(format!("{at}: {key} must be at least 1"));
                ok = false;
                None
            }
            Some(n) => n,
            None => None,
        };
        let rpm = at_least_one("rpm", app.rpm);
        let tpm = at_least_one("tpm", app.tpm);
        if app.models.as_ref().is_some_and(Vec::is_empty) {
            problems.push(format!(
                "{at}: models is empty (leave it out to allow any model)"
            ));
            ok = false;
        }
        if named && apps.iter().any(|a| a.name == name) {
            problems.push(format!("{at}: another app has this name"));
            ok = false;
        }
        if let Some(hash) = hash
            && apps.iter().any(|a| a.key_sha256 == hash)
        {
            problems.push(format!("{at}: another app has the same key"));
            ok = false;
        }
        if let (true, Some(key_sha256)) = (ok, hash) {
            apps.push(AppSpec {
                name,
                key_sha256,
                models: app.models,
                rpm,
                tpm,
            });
        }
    }
    apps
}

/// 64 lowercase hex digits -> 32 bytes.
fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn validate_route(model: &str, route: RawModel) -> Result<ModelRoute, Vec<String>> {
    let backends = match route {
        RawModel::Deployment(d) if d.is_empty() => {
            return Err(vec![format!(
                "models.{model}: the deployment name is empty"
            )]);
        }
        RawModel::Deployment(d) => return Ok(ModelRoute::Deployment(d)),
        RawModel::Backends(b) => b,
    };
    if backends.is_empty() {
        return Err(vec![format!("models.{model}: the backend list is empty")]);
    }
    let max = crate::backend::MAX_BACKENDS;
    if backends.len() > max {
        return Err(vec![format!("models.{model}: at most {max} backends")]);
    }
    let mut problems = Vec::new();
    let mut specs = Vec::new();
    for (i, raw) in backends.into_iter().enumerate() {
        let at = format!("models.{model}[{i}]");
        let endpoint = match raw.endpoint.as_deref().map(normalise_endpoint) {
            Some(Ok(url)) => Some(url),
            Some(Err(e)) => {
                problems.push(format!("{at}: {e}"));
                continue;
            }
            None => None,
        };
        let deployment = match raw.deployment {
            Some(d) if d.is_empty() => {
                problems.push(format!("{at}: deployment is empty"));
                d
            }
            Some(d) => d,
            None => {
                problems.push(format!("{at}: deployment is missing"));
                continue;
            }
        };
        let weight = match raw.weight.map(NonZeroU32::new) {
            Some(None) => {
                problems.push(format!("{at}: weight must be at least 1"));
                NonZeroU32::MIN
            }
            Some(Some(w)) => w,
            None => NonZeroU32::MIN,
        };
        let name = raw.name.unwrap_or_else(|| match &endpoint {
            Some(url) => format!("{}/{}", url.host_str().unwrap_or("endpoint"), deployment),
            None => deployment.clone(),
        });
        specs.push(BackendSpec {
            name,
            endpoint,
            deployment,
            priority: raw.priority.unwrap_or(0),
            weight,
            scope: raw.scope,
        });
    }
    if problems.is_empty() {
        // A stable order: by priority, then as written.
        specs.sort_by_key(|b| b.priority);
        Ok(ModelRoute::Backends(specs))
    } else {
        Err(problems)
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8787))
}

/// Parses the config file, collecting every unknown key and every bad value at every depth
/// (see [`read`]).
fn parse_file(text: &str) -> Result<RawConfig, Vec<String>> {
    let table: toml::Table = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
    read::table(table).map_err(read::lines)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Checks and normalises an endpoint: https (or http on a loopback host), no query, and
/// without a trailing `/`, `/openai` or `/openai/v1` (people paste those from the portal).
pub fn normalise_endpoint(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text).map_err(|e| format!("endpoint {text:?} is not a URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(format!(
                "endpoint {text:?} must be https (plain http is accepted only for a loopback host)"
            ));
        }
        other => return Err(format!("endpoint {text:?}: unsupported scheme {other:?}")),
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "endpoint {text:?} must not carry a query or fragment"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("endpoint {text:?} must not carry credentials"));
    }
    let path = url.path().trim_end_matches('/');
    let path = path
        .strip_suffix("/openai/v1")
        .or_else(|| path.strip_suffix("/openai"))
        .unwrap_or(path)
        .to_owned();
    url.set_path(&path);
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::deployment_of;

    fn flags() -> Flags {
        Flags {
            endpoint: Some("https://res.openai.azure.com".into()),
            ..Flags::default()
        }
    }

    #[test]
    fn defaults_apply() {
        let c = Config::merge(&flags(), RawConfig::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.api, ApiStyle::V1);
        assert_eq!(c.api_version, DEFAULT_API_VERSION);
        assert_eq!(c.scope, DEFAULT_SCOPE);
        assert_eq!(c.max_body_bytes.get(), DEFAULT_MAX_BODY_BYTES);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.workers.get(), cores, "one worker a core");
    }

    #[test]
    fn workers_come_from_the_file_and_zero_is_refused() {
        let raw = parse_file("workers = 3\n").unwrap();
        assert_eq!(Config::merge(&flags(), raw).unwrap().workers.get(), 3);
        let mut f = flags();
        f.workers = Some(0);
        let err = Config::merge(&f, RawConfig::default()).unwrap_err();
        assert!(
            err.to_string().contains("workers must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn flags_override_file() {
        let raw = parse_file(
            "listen = \"127.0.0.1:9000\"\napi = \"deployments\"\n[models]\na = \"file-a\"\nb = \"file-b\"\n",
        )
        .unwrap();
        let mut f = flags();
        f.api = Some(ApiStyle::V1);
        f.models = vec![("a".into(), "flag-a".into())];
        let c = Config::merge(&f, raw).unwrap();
        assert_eq!(c.listen.port(), 9000, "file value used when no flag");
        assert_eq!(c.api, ApiStyle::V1, "flag wins over file");
        assert_eq!(deployment_of(&c, "a"), "flag-a");
        assert_eq!(deployment_of(&c, "b"), "file-b");
    }

    #[test]
    fn unmapped_model_goes_to_default_deployment_else_same_name() {
        let mut c = Config::merge(&flags(), RawConfig::default()).unwrap();
        assert_eq!(deployment_of(&c, "gpt-4o"), "gpt-4o");
        c.default_deployment = Some("fallback".into());
        assert_eq!(deployment_of(&c, "gpt-4o"), "fallback");
    }

    #[test]
    fn every_bad_key_is_reported() {
        let problems =
            parse_file("listn = \"x\"\napi = \"v3\"\nmax_body_bytes = \"big\"\nfoo = 1\n")
                .unwrap_err();
        let text = problems.join("\n");
        assert_eq!(problems.len(), 4, "{text}");
        assert!(text.contains("`listn`"), "{text}");
        assert!(text.contains("`foo`"), "{text}");
        assert!(text.contains("`api`"), "{text}");
        assert!(text.contains("`max_body_bytes`"), "{text}");
    }

    #[test]
    fn problems_at_every_depth_are_reported_in_one_pass_with_their_paths() {
        let problems = parse_file(
            r#"
listn = 1
[retry]
attempts = "three"
max_wait = 5
atempts = 1
[limits]
mode = "later"
[limits.deployments.d]
rpm = 0
rpmm = 1
[models]
ok = "dep"
a = [ { deployment = "x" }, { deploymnet = "x", weight = "heavy" } ]
b = 3
[[apps]]
nam = "x"
[usage]
stream_include_usage = "yes"
"#,
        )
        .unwrap_err();
        let text = problems.join("\n");
        for at in [
            "`listn`: unknown key",
            "`retry.attempts`: invalid type",
            "`retry.max_wait`: invalid type",
            "`retry.atempts`: unknown key",
            "`limits.mode`: unknown variant",
            "`limits.deployments.d.rpm`: invalid value",
            "`limits.deployments.d.rpmm`: unknown key",
            "`models.a[1].deploymnet`: unknown key",
            "`models.a[1].weight`: invalid type",
            "`models.b`: expected a deployment name or a list of backends",
            "`apps[0].nam`: unknown key",
            "`usage.stream_include_usage`: invalid type",
        ] {
            assert!(text.contains(at), "{at} in\n{text}");
        }
        assert_eq!(problems.len(), 12, "{text}");
    }

    #[test]
    fn missing_required_fields_are_named() {
        let raw = parse_file("[models]\na = [{ weight = 2 }]\n[[apps]]\nrpm = 1\n").unwrap();
        let text = Config::merge(&flags(), raw).unwrap_err().to_string();
        assert!(
            text.contains("models.a[0]: deployment is missing"),
            "{text}"
        );
        assert!(text.contains("apps[0]: name is missing"), "{text}");
        assert!(text.contains("apps[0]: key_sha256 must be"), "{text}");
        let raw = parse_file("[[apps]]\nname = \"a\"\n").unwrap();
        let text = Config::merge(&flags(), raw).unwrap_err().to_string();
        assert!(text.contains("apps[0] (a): key_sha256 must be"), "{text}");
    }

    #[test]
    fn the_authority_host_is_held_to_the_credential_rule() {
        for bad in [
            "http://127.0.0.1:9",
            "http://login.microsoftonline.us",
            "not a url",
        ] {
            let raw = parse_file(&format!("authority_host = {bad:?}\n")).unwrap();
            let text = Config::merge(&flags(), raw).unwrap_err().to_string();
            assert!(text.contains("authority_host:"), "{text}");
        }
        let raw = parse_file("authority_host = \"https://login.microsoftonline.us\"\n").unwrap();
        let Target::Azure { credential, .. } = Config::merge(&flags(), raw).unwrap().target else {
            panic!("azure")
        };
        assert_eq!(
            credential.authority_host.unwrap().as_str(),
            "https://login.microsoftonline.us/"
        );
    }

    #[test]
    fn a_user_assigned_identity_by_object_or_resource_id() {
        let raw = parse_file("object_id = \"oid-1\"\n").unwrap();
        let mut f = flags();
        f.resource_id = Some("/subscriptions/s/resourceGroups/g/providers/x/id".into());
        let Target::Azure { credential, .. } = Config::merge(&f, raw).unwrap().target else {
            panic!("azure")
        };
        assert_eq!(credential.object_id.as_deref(), Some("oid-1"));
        assert_eq!(
            credential.resource_id.as_deref(),
            Some("/subscriptions/s/resourceGroups/g/providers/x/id")
        );
    }

    #[test]
    fn backend_lists_retry_and_limits_parse() {
        let raw = parse_file(
            r#"
[models]
simple = "dep"
"gpt-4o" = [
  { endpoint = "https://ptu.openai.azure.com", deployment = "gpt4o-ptu", priority = 0 },
  { deployment = "gpt-4o", priority = 1, weight = 3, name = "paygo" },
]
[retry]
attempts = 5
max_wait = "10s"
[limits]
mode = "queue"
queue_timeout = "5s"
[limits.deployments.dep]
rpm = 60
tpm = 1000
max_concurrent = 2
"#,
        )
        .unwrap();
        let c = Config::merge(&flags(), raw).unwrap();
        assert_eq!(c.models["simple"], ModelRoute::Deployment("dep".into()));
        let ModelRoute::Backends(b) = &c.models["gpt-4o"] else {
            panic!("a list")
        };
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].name, "ptu.openai.azure.com/gpt4o-ptu");
        assert_eq!(b[1].name, "paygo");
        assert_eq!(b[1].endpoint, None);
        assert_eq!(b[1].weight.get(), 3);
        assert_eq!(c.retry.attempts.get(), 5);
        assert_eq!(c.retry.max_wait, Duration::from_secs(10));
        assert_eq!(c.limits.mode, LimitMode::Queue);
        assert_eq!(c.limits.deployments["dep"].rpm.unwrap().get(), 60);
        assert_eq!(deployment_of(&c, "gpt-4o"), "gpt4o-ptu");
    }

    #[test]
    fn bad_backends_are_all_reported() {
        let raw = parse_file(
            r#"
[models]
a = [ { endpoint = "http://evil.example.com", deployment = "x" }, { deployment = "", weight = 0 } ]
b = []
"#,
        )
        .unwrap();
        let err = Config::merge(&flags(), raw).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.0.len(), 4, "{text}");
        assert!(text.contains("must be https"), "{text}");
        assert!(text.contains("weight"), "{text}");
        assert!(text.contains("empty"), "{text}");
    }

    #[test]
    fn a_model_lists_at_most_64_backends() {
        let list = vec![r#"{ deployment = "d" }"#; 65].join(", ");
        let raw = parse_file(&format!("[models]\nm = [ {list} ]\n")).unwrap();
        let err = Config::merge(&flags(), raw).unwrap_err();
        assert_eq!(err.0, ["models.m: at most 64 backends"]);
    }

    #[test]
    fn resources_are_each_endpoint_and_scope_once_the_default_first() {
        let raw = parse_file(
            r#"
[models]
b = [ { endpoint = "https://two.openai.azure.com", deployment = "x" }, { deployment = "y" } ]
a = [ { endpoint = "https://one.openai.azure.com", deployment = "x", scope = "api://s/.default" },
      { endpoint = "https://two.openai.azure.com", deployment = "z" } ]
c = "plain"
"#,
        )
        .unwrap();
        let c = Config::merge(&flags(), raw).unwrap();
        let default = Url::parse("https://zero.openai.azure.com").unwrap();
        let pairs: Vec<(String, String)> = c
            .resources(&default)
            .into_iter()
            .map(|(url, scope)| (url.host_str().unwrap().to_owned(), scope))
            .collect();
        let scope = c.scope.clone();
        assert_eq!(
            pairs,
            [
                ("zero.openai.azure.com".to_owned(), scope.clone()),
                (
                    "one.openai.azure.com".to_owned(),
                    "api://s/.default".to_owned()
                ),
                ("two.openai.azure.com".to_owned(), scope),
            ]
        );
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let raw = parse_file(include_str!("../config/keyless.toml")).unwrap();
        let c = Config::merge(&Flags::default(), raw).unwrap();
        assert!(matches!(c.models["gpt-4o"], ModelRoute::Backends(ref b) if b.len() == 3));
        assert_eq!(c.limits.deployments["prod-4o-mini"].rpm.unwrap().get(), 600);
    }

    #[test]
    fn connections_and_the_replay_budget_are_read_and_checked() {
        let raw = parse_file(
            "[retry]\nreplay_budget_bytes = 1024\n[connections]\nheader_timeout = \"5s\"\nidle_timeout = \"2s\"\nmax = 8\nbody_timeout = \"3s\"\n",
        )
        .unwrap();
        let c = Config::merge(&flags(), raw).unwrap();
        assert_eq!(c.retry.replay_budget_bytes, 1024);
        assert_eq!(c.connections.header_timeout, Duration::from_secs(5));
        assert_eq!(c.connections.idle_timeout, Duration::from_secs(2));
        assert_eq!(c.connections.max, Some(8));
        assert_eq!(c.connections.body_timeout, Duration::from_secs(3));
        assert_eq!(
            c.connections.h2_keepalive_interval,
            Connections::default().h2_keepalive_interval
        );

        let raw = parse_file("[connections]\nmax = 0\nidle_timeout = \"0s\"\n").unwrap();
        let text = Config::merge(&flags(), raw).unwrap_err().to_string();
        assert!(
            text.contains("connections.max must be at least 1"),
            "{text}"
        );
        assert!(
            text.contains("connections.idle_timeout must be positive"),
            "{text}"
        );
    }

    #[test]
    fn names_azure_would_refuse_are_refused_at_start() {
        let raw = parse_file(
            "deployment = \"..\"\n[models]\n\"a/b\" = \"ok\"\n\"fine\" = \"has space\"\n[limits.deployments.\"x%2f\"]\nrpm = 1\n",
        )
        .unwrap();
        let err = Config::merge(&flags(), raw).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.0.len(), 4, "{text}");
        for at in [
            "deployment:",
            "models.a/b:",
            "models.fine:",
            "limits.deployments.x%2f:",
        ] {
            assert!(text.contains(at), "{at} in {text}");
        }
    }

    #[test]
    fn realtime_limits_default_parse_and_must_be_positive() {
        let c = Config::merge(&flags(), RawConfig::default()).unwrap();
        assert_eq!(c.realtime.idle, Duration::from_secs(600));
        assert_eq!(c.realtime.max_session, Duration::from_secs(7200));
        let raw = parse_file("realtime_idle_timeout = \"45s\"\nrealtime_max_session = \"30m\"\n")
            .unwrap();
        let c = Config::merge(&flags(), raw).unwrap();
        assert_eq!(c.realtime.idle, Duration::from_secs(45));
        assert_eq!(c.realtime.max_session, Duration::from_secs(1800));
        let f = Flags {
            realtime_idle_timeout: Some(Duration::from_secs(5)),
            ..flags()
        };
        assert_eq!(
            Config::merge(&f, RawConfig::default())
                .unwrap()
                .realtime
                .idle,
            Duration::from_secs(5),
            "the flag wins"
        );
        let raw =
            parse_file("realtime_idle_timeout = \"0s\"\nrealtime_max_session = \"0s\"\n").unwrap();
        let err = Config::merge(&flags(), raw).unwrap_err().to_string();
        assert!(
            err.contains("realtime_idle_timeout must be positive"),
            "{err}"
        );
        assert!(
            err.contains("realtime_max_session must be positive"),
            "{err}"
        );
    }

    #[test]
    fn durations_parse() {
        let raw = parse_file("connect_timeout = \"250ms\"\nresponse_timeout = \"2m\"\n").unwrap();
        let c = Config::merge(&flags(), raw).unwrap();
        assert_eq!(c.timeouts.connect, Duration::from_millis(250));
        assert_eq!(c.timeouts.response, Duration::from_secs(120));
    }

    #[test]
    fn endpoint_rules() {
        assert!(normalise_endpoint("http://res.openai.azure.com").is_err());
        assert!(normalise_endpoint("http://127.0.0.1:9").is_ok());
        assert!(normalise_endpoint("http://localhost:9").is_ok());
        assert!(normalise_endpoint("http://[::1]:9").is_ok());
        assert!(normalise_endpoint("ftp://x").is_err());
        assert_eq!(
            normalise_endpoint("https://res.openai.azure.com/openai/v1/")
                .unwrap()
                .as_str(),
            "https://res.openai.azure.com/"
        );
        assert_eq!(
            normalise_endpoint("https://gw.example.com/prefix/openai")
                .unwrap()
                .as_str(),
            "https://gw.example.com/prefix"
        );
    }

    #[test]
    fn missing_endpoint_says_how_to_fix_it() {
        let err = Config::merge(&Flags::default(), RawConfig::default()).unwrap_err();
        assert!(err.to_string().contains("--endpoint"), "{err}");
        assert!(err.to_string().contains("--simulate"), "{err}");
    }

    #[test]
    fn simulate_needs_no_endpoint() {
        let f = Flags {
            simulate: true,
            ..Flags::default()
        };
        let c = Config::merge(&f, RawConfig::default()).unwrap();
        assert!(matches!(c.target, Target::Simulate));
    }

    #[test]
    fn bad_model_flag_is_rejected() {
        assert!(parse_model_mapping("gpt4o").is_err());
        assert!(parse_model_mapping("=x").is_err());
        assert_eq!(
            parse_model_mapping("a=b=c").unwrap(),
            ("a".to_owned(), "b=c".to_owned())
        );
    }
}
