//! `keyless check`: would keyless work with this configuration, and if not, why not?
//!
//! Four steps, each explained in plain words; a step that fails stops only what depends on
//! it (no token for a scope: its endpoints are not called):
//! 1. load and validate the configuration (every problem listed; exit 2);
//! 2. build the credential and acquire one token per scope in use, bounded by the token
//!    timeout; show the credential and what the token says about the identity (tenant,
//!    object id, app id, audience, expiry: read from the JWT claims when the token is one,
//!    "unknown" when it is opaque). The token itself is never printed;
//! 3. call each endpoint in use with a cheap GET of the models list, through the same
//!    upstream client keyless uses (same TLS roots, same connect timeout);
//! 4. turn the outcome into advice: a missing role assignment on 403, a wrong scope,
//!    audience or tenant on 401, a wrong URL or path style on 404, and DNS, connect and TLS
//!    failures by name and host.
//!
//! Exit status: 0 when keyless would work, 2 for an invalid configuration, 1 otherwise.

use crate::auth::credential::{self, TokenInfo};
use crate::auth::{Acquire, AuthError, Token};
use crate::body::Body;
use crate::config::{ApiStyle, Config, Flags, ModelRoute, Target};
use crate::rewrite::bearer;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Limited};
use serde::Serialize;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;
use url::Url;

/// The role Azure OpenAI requires of an Entra identity to call inference APIs.
pub const OPENAI_USER_ROLE: &str = "Cognitive Services OpenAI User";

/// Longest wait for the models list (on top of the connect timeout): it is a cheap call.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of an answer body read, to quote Azure's error and list models.
const MAX_BODY: usize = 256 * 1024;
/// Models listed when the call succeeds.
const MODELS_SHOWN: usize = 5;
/// Longest quote of Azure's own error message.
const MAX_QUOTE: usize = 400;

/// `keyless check`: the same flags as `keyless serve`, and `--json`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct CheckArgs {
    /// The configuration to check.
    #[command(flatten)]
    pub flags: Flags,
    /// Print the report as one JSON object (for scripts) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs the check, prints the report on stdout, and returns the exit status.
pub async fn run(args: &CheckArgs) -> ExitCode {
    let report = check(&args.flags).await;
    let text = if args.json {
        serde_json::to_string_pretty(&report)
            .map(|mut s| {
                s.push('\n');
                s
            })
            .unwrap_or_else(|e| format!("{{\"ok\":false,\"error\":\"cannot write JSON: {e}\"}}\n"))
    } else {
        report.to_text()
    };
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    report.exit_code()
}

/// Checks the configuration `flags` describe. Never panics, never prints.
pub async fn check(flags: &Flags) -> Report {
    check_config(flags).await.finish()
}

async fn check_config(flags: &Flags) -> Report {
    let config = match Config::load(flags) {
        Ok(config) => config,
        Err(e) => {
            return Report {
                problems: e.0,
                ..Report::default()
            };
        }
    };
    // Stops the embedded simulator, if any, when the check is over.
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    match config.target.clone() {
        Target::Azure {
            endpoint,
            credential,
        } => match credential::from_settings(&credential) {
            Ok(identity) => check_with(&config, endpoint, identity).await,
            Err(e) => Report {
                target: Some(TargetSummary::new(&config, &endpoint, false)),
                credential: Some(e.credential.clone()),
                credential_error: Some(e.message.clone()),
                ..Report::default()
            },
        },
        Target::Simulate => match crate::simulate::Simulator::start(shutdown.child_token()).await {
            Ok(simulator) => {
                let mut report =
                    check_with(&config, simulator.endpoint(), simulator.identity()).await;
                if let Some(target) = &mut report.target {
                    target.simulated = true;
                }
                report
            }
            Err(e) => Report {
                setup_error: Some(format!("cannot start the simulator: {e}")),
                ..Report::default()
            },
        },
    }
}

/// Checks `config` against `endpoint` (the default endpoint) with tokens from `identity`.
pub async fn check_with(config: &Config, endpoint: Url, identity: Arc<dyn Acquire>) -> Report {
    let mut report = Report {
        target: Some(TargetSummary::new(config, &endpoint, false)),
        ..Report::default()
    };

    // One token per scope, as keyless keeps one cache per scope.
    let targets = targets(config, &endpoint);
    let mut tokens: Vec<(String, Option<Token>)> = Vec::new();
    for (_, scope) in &targets {
        if tokens.iter().any(|(s, _)| s == scope) {
            continue;
        }
        let started = Instant::now();
        let result =
            match tokio::time::timeout(config.timeouts.token, identity.acquire(scope)).await {
                Ok(result) => result,
                Err(_) => Err(AuthError {
                    credential: identity.name(),
                    message: format!(
                        "no token within {} (the token timeout; --token-timeout to change it)",
                        humantime::format_duration(config.timeouts.token)
                    ),
                }),
            };
        let elapsed_ms = millis(started.elapsed());
        // `auto` names the credential it chose only once it has a token.
        report.credential = Some(identity.name());
        match result {
            Ok(token) => {
                report.tokens.push(TokenCheck {
                    scope: scope.clone(),
                    elapsed_ms,
                    identity: Some(Identity::from_info(&credential::describe_token(&token))),
                    error: None,
                });
                tokens.push((scope.clone(), Some(token)));
            }
            Err(e) => {
                report.tokens.push(TokenCheck {
                    scope: scope.clone(),
                    elapsed_ms,
                    identity: None,
                    error: Some(e.to_string()),
                });
                tokens.push((scope.clone(), None));
            }
        }
    }

    let client = match crate::upstream::client(config.timeouts.connect, config.ca_file.as_deref()) {
        Ok(client) => client,
        Err(e) => {
            report.setup_error = Some(format!("cannot set up the client towards Azure: {e}"));
            return report.finish();
        }
    };
    for (url, scope) in &targets {
        let token = tokens
            .iter()
            .find(|(s, _)| s == scope)
            .and_then(|(_, t)| t.as_ref());
        let Some(token) = token else {
            continue; // no token: the token section already says why
        };
        report
            .endpoints
            .push(call_endpoint(&client, config, url, scope, token).await);
    }
    report.finish()
}

/// Every (endpoint, scope) pair keyless would send to, the default first.
fn targets(config: &Config, default: &Url) -> Vec<(Url, String)> {
    let mut out = vec![(default.clone(), config.scope.clone())];
    let mut routes: Vec<(&String, &ModelRoute)> = config.models.iter().collect();
    routes.sort_by(|a, b| a.0.cmp(b.0)); // a stable order for the report
    for (_, route) in routes {
        if let ModelRoute::Backends(backends) = route {
            for backend in backends {
                let pair = (
                    backend.endpoint.clone().unwrap_or_else(|| default.clone()),
                    backend
                        .scope
                        .clone()
                        .unwrap_or_else(|| config.scope.clone()),
                );
                if !out.contains(&pair) {
                    out.push(pair);
                }
            }
        }
    }
    out
}

/// The models list URL for `endpoint` in the configured path style.
pub fn models_url(endpoint: &Url, api: ApiStyle, api_version: &str) -> Url {
    let mut url = endpoint.clone();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty();
        match api {
            ApiStyle::V1 => segments.extend(["openai", "v1", "models"]),
            ApiStyle::Deployments => segments.extend(["openai", "models"]),
        };
    }
    if api == ApiStyle::Deployments {
        url.query_pairs_mut()
            .append_pair("api-version", api_version);
    }
    url
}

async fn call_endpoint(
    client: &crate::upstream::Client,
    config: &Config,
    endpoint: &Url,
    scope: &str,
    token: &Token,
) -> EndpointCheck {
    let url = models_url(endpoint, config.api, &config.api_version);
    let mut check = EndpointCheck {
        endpoint: endpoint.to_string(),
        request: format!("GET {url}"),
        scope: scope.to_owned(),
        status: None,
        verdict: Verdict::Unreachable,
        summary: String::new(),
        advice: Vec::new(),
        azure_message: None,
        models: Vec::new(),
        elapsed_ms: 0,
    };
    let started = Instant::now();
    let request = match build_request(&url, token) {
        Ok(request) => request,
        Err(e) => {
            check.summary = e;
            return check;
        }
    };
    let wait = config.timeouts.response.min(REQUEST_TIMEOUT) + config.timeouts.connect;
    let sent = tokio::time::timeout(wait, client.request(request)).await;
    let response = match sent {
        // The connection closes with the check: nothing to hand back.
        Ok(Ok((response, _lease))) => response,
        Ok(Err(e)) => {
            check.elapsed_ms = millis(started.elapsed());
            let host = host_port(endpoint);
            let (verdict, summary, advice) = explain_transport(&e, &host, endpoint);
            check.verdict = verdict;
            check.summary = summary;
            check.advice = advice;
            return check;
        }
        Err(_) => {
            check.elapsed_ms = millis(started.elapsed());
            check.verdict = Verdict::Timeout;
            check.summary = format!(
                "{} accepted the connection but sent no answer within {}",
                host_port(endpoint),
                humantime::format_duration(wait)
            );
            check.advice.push(
                "A proxy or firewall may be holding the request; check HTTPS_PROXY and the \
                 network path to the endpoint."
                    .to_owned(),
            );
            return check;
        }
    };
    let status = response.status();
    let (parts, body) = response.into_parts();
    let body = match tokio::time::timeout(wait, Limited::new(body, MAX_BODY).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        _ => Bytes::new(),
    };
    check.elapsed_ms = millis(started.elapsed());
    check.status = Some(status.as_u16());
    let info = credential::describe_token(token);
    let context = Context {
        endpoint,
        api: config.api,
        api_version: &config.api_version,
        scope,
        token: &info,
    };
    let explained = explain_status(status, &parts.headers, &body, &context);
    check.verdict = explained.verdict;
    check.summary = explained.summary;
    check.advice = explained.advice;
    // Azure's words, scrubbed of the token should it ever echo it.
    check.azure_message = explained
        .azure_message
        .map(|m| m.replace(token.secret.expose(), "<redacted>"));
    check.models = explained.models;
    check
}

fn build_request(url: &Url, token: &Token) -> Result<Request<Body>, String> {
    let uri: http::Uri = url
        .as_str()
        .parse()
        .map_err(|e| format!("cannot build the request URI {url}: {e}"))?;
    let authorization = bearer(token.secret.expose()).map_err(|_| {
        "the credential returned a token that is not a valid header value".to_owned()
    })?;
    Request::get(uri)
        .header(header::AUTHORIZATION, authorization)
        .header(header::ACCEPT, "application/json")
        .header(
            header::USER_AGENT,
            concat!("keyless-check/", env!("CARGO_PKG_VERSION")),
        )
        .body(Body::from(Bytes::new()))
        .map_err(|e| format!("cannot build the request: {e}"))
}

fn host_port(url: &Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// -------------------------------------------------------------------------------------
// The report

/// What `keyless check` found. `Serialize` gives `--json`; [`Report::to_text`] the text.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Whether keyless would work: every token acquired and every endpoint accepted it.
    pub ok: bool,
    /// Configuration problems (the check stopped there).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// What was checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetSummary>,
    /// The credential (the one `auto` chose, once it has chosen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Why the credential could not be built (a missing variable, an unreadable file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_error: Option<String>,
    /// One acquisition per scope.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenCheck>,
    /// Why the check itself could not go on (the simulator or the HTTP client failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup_error: Option<String>,
    /// One call per (endpoint, scope).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointCheck>,
}

/// The configuration under check, as far as the check is concerned.
#[derive(Clone, Debug, Serialize)]
pub struct TargetSummary {
    /// The default endpoint.
    pub endpoint: String,
    /// `v1` or `deployments`.
    pub api: &'static str,
    /// The api-version (deployments style only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// The default scope.
    pub scope: String,
    /// Whether this is the embedded simulator (`--simulate`).
    pub simulated: bool,
}

impl TargetSummary {
    fn new(config: &Config, endpoint: &Url, simulated: bool) -> Self {
        TargetSummary {
            endpoint: endpoint.to_string(),
            api: match config.api {
                ApiStyle::V1 => "v1",
                ApiStyle::Deployments => "deployments",
            },
            api_version: (config.api == ApiStyle::Deployments).then(|| config.api_version.clone()),
            scope: config.scope.clone(),
            simulated,
        }
    }
}

/// One token acquisition.
#[derive(Clone, Debug, Serialize)]
pub struct TokenCheck {
    /// The scope asked for.
    pub scope: String,
    /// How long the acquisition took.
    pub elapsed_ms: u64,
    /// What the token says about the identity (never the token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// Why no token came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The identity a token stands for, from its claims; `None` is unknown.
#[derive(Clone, Debug, Serialize)]
pub struct Identity {
    /// Whether the token is a JWT whose claims could be read.
    pub readable: bool,
    /// `tid`.
    pub tenant_id: Option<String>,
    /// `oid`: the principal that needs the role.
    pub object_id: Option<String>,
    /// `appid` / `azp`.
    pub app_id: Option<String>,
    /// `upn` and the like, for users.
    pub principal_name: Option<String>,
    /// `aud`.
    pub audience: Option<String>,
    /// Expiry, RFC 3339.
    pub expires_at: String,
    /// Seconds until expiry (negative when already expired).
    pub expires_in_secs: i64,
}

impl Identity {
    fn from_info(info: &TokenInfo) -> Self {
        let now = SystemTime::now();
        let expires_in_secs = match info.expires_at.duration_since(now) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        };
        Identity {
            readable: info.tenant_id.is_some()
                || info.object_id.is_some()
                || info.app_id.is_some()
                || info.audience.is_some(),
            tenant_id: info.tenant_id.clone(),
            object_id: info.object_id.clone(),
            app_id: info.app_id.clone(),
            principal_name: info.principal_name.clone(),
            audience: info.audience.clone(),
            expires_at: humantime::format_rfc3339_seconds(info.expires_at).to_string(),
            expires_in_secs,
        }
    }
}

/// One call of an endpoint's models list.
#[derive(Clone, Debug, Serialize)]
pub struct EndpointCheck {
    /// The endpoint.
    pub endpoint: String,
    /// The request made (method and URL; the URL carries no secret).
    pub request: String,
    /// The scope of the token sent.
    pub scope: String,
    /// Azure's HTTP status, when it answered.
    pub status: Option<u16>,
    /// The outcome in one word.
    pub verdict: Verdict,
    /// The outcome in one sentence.
    pub summary: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub advice: Vec<String>,
    /// Azure's own error message, quoted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub azure_message: Option<String>,
    /// A few model ids from the list, when it came.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// How long the call took.
    pub elapsed_ms: u64,
}

/// The outcome of calling an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// 2xx: keyless would work.
    Ok,
    /// 429: the token was accepted; Azure is only busy. keyless would work.
    RateLimited,
    /// 401: the token was refused (scope, audience, tenant, expiry).
    TokenRejected,
    /// 403: no role assignment for the identity on the resource.
    MissingRole,
    /// 403 from the resource's network rules (firewall, private endpoint).
    NetworkBlocked,
    /// 404: not an Azure OpenAI resource, or the wrong path style.
    NotFound,
    /// Any other answer.
    UnexpectedStatus,
    /// 5xx: Azure's own trouble.
    ServerError,
    /// The host name did not resolve.
    Dns,
    /// TCP connection refused, reset or timed out.
    Connect,
    /// The TLS handshake failed (certificate, or not TLS at all).
    Tls,
    /// Connected, but no answer in time.
    Timeout,
    /// Any other transport failure.
    Unreachable,
}

impl Verdict {
    /// Whether keyless would work with this outcome.
    pub fn works(self) -> bool {
        matches!(self, Verdict::Ok | Verdict::RateLimited)
    }
}

impl Report {
    fn finish(mut self) -> Self {
        self.ok = self.problems.is_empty()
            && self.credential_error.is_none()
            && self.setup_error.is_none()
            && !self.tokens.is_empty()
            && self.tokens.iter().all(|t| t.error.is_none())
            && !self.endpoints.is_empty()
            && self.endpoints.iter().all(|e| e.verdict.works());
        self
    }

    /// The exit status: 0 when keyless would work, 2 for an invalid configuration, 1 else.
    pub fn exit_code(&self) -> ExitCode {
        if !self.problems.is_empty() {
            ExitCode::from(2)
        } else if self.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = self.write_text(&mut out);
        out
    }

    fn write_text(&self, out: &mut String) -> std::fmt::Result {
        if !self.problems.is_empty() {
            writeln!(out, "Configuration: INVALID")?;
            for problem in &self.problems {
                writeln!(out, "  - {problem}")?;
            }
            writeln!(
                out,
                "\nkeyless would not start: fix the configuration above."
            )?;
            return Ok(());
        }
        if let Some(target) = &self.target {
            writeln!(out, "Configuration: ok")?;
            let endpoint = if target.simulated {
                format!("{} (the embedded simulator)", target.endpoint)
            } else {
                target.endpoint.clone()
            };
            field(out, "endpoint", &endpoint)?;
            match &target.api_version {
                Some(version) => field(
                    out,
                    "api",
                    &format!("{} (api-version {version})", target.api),
                )?,
                None => field(out, "api", target.api)?,
            }
            field(out, "scope", &target.scope)?;
        }
        writeln!(out)?;
        let credential = self.credential.as_deref().unwrap_or("?");
        if let Some(error) = &self.credential_error {
            writeln!(out, "Credential: {credential}: FAILED")?;
            paragraph(out, error)?;
            writeln!(
                out,
                "\nkeyless would not work: the credential cannot be set up."
            )?;
            return Ok(());
        }
        if self.credential.is_some() {
            writeln!(out, "Credential: {credential}")?;
        }
        for token in &self.tokens {
            writeln!(out)?;
            match (&token.identity, &token.error) {
                (Some(id), _) => {
                    writeln!(
                        out,
                        "Token for {}: acquired in {} ms",
                        token.scope, token.elapsed_ms
                    )?;
                    let unknown = if id.readable {
                        "unknown (not in the token)"
                    } else {
                        "unknown (the token is opaque, not a JWT)"
                    };
                    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| unknown.to_owned());
                    field(out, "tenant id", &show(&id.tenant_id))?;
                    field(out, "object id", &show(&id.object_id))?;
                    field(out, "app id", &show(&id.app_id))?;
                    if let Some(name) = &id.principal_name {
                        field(out, "user", name)?;
                    }
                    field(out, "audience", &show(&id.audience))?;
                    let left = if id.expires_in_secs >= 0 {
                        format!(
                            "in {}",
                            humantime::format_duration(Duration::from_secs(
                                id.expires_in_secs.unsigned_abs()
                            ))
                        )
                    } else {
                        "ALREADY EXPIRED".to_owned()
                    };
                    field(out, "expires", &format!("{} ({left})", id.expires_at))?;
                }
                (None, Some(error)) => {
                    writeln!(
                        out,
                        "Token for {}: FAILED after {} ms",
                        token.scope, token.elapsed_ms
                    )?;
                    paragraph(out, error)?;
                }
                (None, None) => {}
            }
        }
        for endpoint in &self.endpoints {
            writeln!(out)?;
            writeln!(out, "Endpoint: {}", endpoint.request)?;
            match endpoint.status {
                Some(status) => {
                    let reason = StatusCode::from_u16(status)
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("");
                    field(
                        out,
                        "answer",
                        &format!("HTTP {status} {reason} in {} ms", endpoint.elapsed_ms),
                    )?
                }
                None => field(
                    out,
                    "answer",
                    &format!("none (after {} ms)", endpoint.elapsed_ms),
                )?,
            }
            let mark = if endpoint.verdict.works() {
                "OK"
            } else {
                "FAILED"
            };
            paragraph(out, &format!("{mark}: {}", endpoint.summary))?;
            if !endpoint.models.is_empty() {
                paragraph(out, &format!("models: {}", endpoint.models.join(", ")))?;
            }
            if let Some(message) = &endpoint.azure_message {
                paragraph(out, &format!("Azure said: {message}"))?;
            }
            for advice in &endpoint.advice {
                writeln!(out)?;
                for line in advice.lines() {
                    if line.starts_with(' ') || line.is_empty() {
                        // A command: copied as written.
                        writeln!(out, "  {line}")?;
                    } else {
                        paragraph(out, line)?;
                    }
                }
            }
        }
        if let Some(error) = &self.setup_error {
            writeln!(out, "\nFAILED: {error}")?;
        }
        writeln!(out)?;
        if self.ok {
            writeln!(out, "keyless would work.")?;
        } else if self.tokens.iter().any(|t| t.error.is_some()) {
            writeln!(out, "keyless would not work: no token (see above).")?;
        } else {
            writeln!(out, "keyless would not work (see above).")?;
        }
        Ok(())
    }
}

/// Text width for paragraphs (commands and URLs may run longer).
const WIDTH: usize = 92;

/// `text` indented by two spaces and wrapped at [`WIDTH`], on word boundaries.
fn paragraph(out: &mut String, text: &str) -> std::fmt::Result {
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && 2 + line.len() + 1 + word.len() > WIDTH {
            writeln!(out, "  {line}")?;
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

fn field(out: &mut String, name: &str, value: &str) -> std::fmt::Result {
    writeln!(out, "  {:<11} {value}", format!("{name}:"))
}

// -------------------------------------------------------------------------------------
// Explaining what happened

/// What [`explain_status`] needs to know besides the answer.
struct Context<'a> {
    endpoint: &'a Url,
    api: ApiStyle,
    api_version: &'a str,
    scope: &'a str,
    token: &'a TokenInfo,
}

struct Explained {
    verdict: Verdict,
    summary: String,
    advice: Vec<String>,
    azure_message: Option<String>,
    models: Vec<String>,
}

/// Azure OpenAI's scopes, by cloud, with the audience their tokens carry.
const KNOWN_SCOPES: &[(&str, &str)] = &[
    (
        "https://cognitiveservices.azure.com/.default",
        "https://cognitiveservices.azure.com",
    ),
    ("https://ai.azure.com/.default", "https://ai.azure.com"),
    (
        "https://cognitiveservices.azure.us/.default",
        "https://cognitiveservices.azure.us",
    ),
    (
        "https://cognitiveservices.azure.cn/.default",
        "https://cognitiveservices.azure.cn",
    ),
];

/// The first-party app id of Cognitive Services, which some tokens carry as `aud`.
const COGNITIVE_SERVICES_APP_ID: &str = "7d312290-28c8-473c-a0ed-8e53749b6d6d";

fn explain_status(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    cx: &Context<'_>,
) -> Explained {
    let azure_message = azure_message(body);
    let mut out = Explained {
        verdict: Verdict::UnexpectedStatus,
        summary: String::new(),
        advice: Vec::new(),
        azure_message: azure_message.clone(),
        models: Vec::new(),
    };
    let who = principal(cx.token);
    match status.as_u16() {
        200..=299 => {
            out.verdict = Verdict::Ok;
            out.summary = "Azure OpenAI accepted the token.".to_owned();
            out.azure_message = None;
            out.models = model_ids(body);
        }
        401 => {
            out.verdict = Verdict::TokenRejected;
            out.summary = "Azure OpenAI rejected the token (wrong scope, audience or tenant, or \
                           an expired token)."
                .to_owned();
            out.advice = advise_401(headers, cx);
        }
        403 => {
            let message = azure_message.as_deref().unwrap_or("").to_ascii_lowercase();
            let network = [
                "virtual network",
                "firewall",
                "private endpoint",
                "private link",
                "public access",
                "ip address",
                "not from an approved",
            ]
            .iter()
            .any(|k| message.contains(k));
            if network {
                out.verdict = Verdict::NetworkBlocked;
                out.summary =
                    "The resource's network rules refuse this machine (HTTP 403).".to_owned();
                out.advice.push(
                    "The resource accepts calls only from allowed networks. Add this machine's \
                     public IP address to its firewall (Networking > Firewalls and virtual \
                     networks), or reach it through its private endpoint (check that the host \
                     name resolves to the private IP address here)."
                        .to_owned(),
                );
            } else {
                out.verdict = Verdict::MissingRole;
                out.summary = format!(
                    "The token is valid, but {who} has no role assignment that allows calling \
                     Azure OpenAI on this resource: it needs \"{OPENAI_USER_ROLE}\"."
                );
                out.advice.push(advise_role(cx));
            }
        }
        404 => {
            out.verdict = Verdict::NotFound;
            out.summary = format!(
                "{} answered 404 Not Found: it is not an Azure OpenAI resource, or it does not \
                 serve this path style.",
                host_port(cx.endpoint)
            );
            out.advice = advise_404(cx);
        }
        429 => {
            out.verdict = Verdict::RateLimited;
            out.summary = "Azure OpenAI accepted the token but is rate limiting this resource \
                           right now (HTTP 429); keyless retries such answers."
                .to_owned();
        }
        400 => {
            out.summary = "Azure OpenAI refused the request as malformed (HTTP 400).".to_owned();
            if cx.api == ApiStyle::Deployments {
                out.advice.push(format!(
                    "The api-version {} may not exist for this resource: try \
                     --api-version 2024-10-21 or --api v1.",
                    cx.api_version
                ));
            }
        }
        500..=599 => {
            out.verdict = Verdict::ServerError;
            out.summary = format!(
                "Azure OpenAI answered HTTP {}: a problem on Azure's side (or on a gateway in \
                 between). The token may well be fine; try again later.",
                status.as_u16()
            );
        }
        300..=399 => {
            out.summary = format!(
                "The endpoint answered with a redirect (HTTP {}); Azure OpenAI never \
                 redirects, so this is not an Azure OpenAI endpoint (a sign-in page or portal?).",
                status.as_u16()
            );
            if let Some(location) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
                out.advice.push(format!("It redirects to {location}"));
            }
        }
        other => {
            out.summary =
                format!("Azure OpenAI answered HTTP {other}, which keyless did not expect.");
        }
    }
    out
}

/// "object id X (name)", or a description when the token does not say.
fn principal(token: &TokenInfo) -> String {
    match (&token.object_id, &token.principal_name, &token.app_id) {
        (Some(oid), Some(name), _) => format!("the identity {name} (object id {oid})"),
        (Some(oid), None, Some(app)) => format!("the identity with object id {oid} (app id {app})"),
        (Some(oid), None, None) => format!("the identity with object id {oid}"),
        (None, _, _) => "the identity (object id unknown: the token is not a JWT)".to_owned(),
    }
}

fn advise_role(cx: &Context<'_>) -> String {
    let assignee = cx
        .token
        .object_id
        .clone()
        .unwrap_or_else(|| "<object id>".to_owned());
    let mut text = format!(
        "Grant the role (as an Owner or User Access Administrator of the resource):\n\n  \
         az role assignment create --assignee {assignee} \\\n    --role \"{OPENAI_USER_ROLE}\" \
         \\\n    --scope <resource id>\n\n"
    );
    // The endpoint does not reveal the subscription and resource group; the subdomain is
    // the resource's custom subdomain, which az can look up.
    match subdomain(cx.endpoint) {
        Some(name) => {
            let _ = write!(
                text,
                "keyless cannot tell the resource id from the endpoint; look it up with:\n\n  \
                 az cognitiveservices account list \\\n    --query \
                 \"[?properties.customSubDomainName=='{name}'].id\" -o tsv\n"
            );
        }
        None => text.push_str(
            "keyless cannot tell the resource id from the endpoint: copy it from the \
             resource's Properties page in the Azure portal \
             (/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.CognitiveServices/\
             accounts/<name>).\n",
        ),
    }
    if cx.token.object_id.is_none() {
        text.push_str(
            "\nThe object id could not be read from the token. For a user: `az ad \
             signed-in-user show --query id -o tsv`; for an app or a managed identity: `az ad \
             sp show --id <client id> --query id -o tsv`.\n",
        );
    }
    text.push_str(
        "\nA new role assignment can take a few minutes to apply. Owner and Contributor alone \
         do not allow inference calls.",
    );
    text
}

/// The resource name in `https://<name>.openai.azure.com` (and the other Azure hosts).
fn subdomain(endpoint: &Url) -> Option<String> {
    let host = endpoint.host_str()?.to_ascii_lowercase();
    const SUFFIXES: &[&str] = &[
        ".openai.azure.com",
        ".cognitiveservices.azure.com",
        ".services.ai.azure.com",
        ".openai.azure.us",
        ".cognitiveservices.azure.us",
        ".openai.azure.cn",
        ".cognitiveservices.azure.cn",
    ];
    SUFFIXES
        .iter()
        .find_map(|suffix| host.strip_suffix(suffix))
        .filter(|name| !name.is_empty() && !name.contains('.'))
        .map(str::to_owned)
}

fn advise_401(headers: &HeaderMap, cx: &Context<'_>) -> Vec<String> {
    let mut advice = Vec::new();
    let audience = cx.token.audience.as_deref();
    let expected = KNOWN_SCOPES
        .iter()
        .find(|(scope, _)| scope.eq_ignore_ascii_case(cx.scope))
        .map(|(_, aud)| *aud);
    let shown = audience.unwrap_or("unknown (the token is not a JWT)");
    advice.push(format!(
        "The token was requested for scope {} and carries audience {shown}.",
        cx.scope
    ));
    match expected {
        None => advice.push(format!(
            "{} is not an Azure OpenAI scope: use --scope \
             https://cognitiveservices.azure.com/.default (Azure Government: \
             https://cognitiveservices.azure.us/.default; China: \
             https://cognitiveservices.azure.cn/.default).",
            cx.scope
        )),
        Some(expected) => {
            if let Some(aud) = audience {
                let matches = aud.split(' ').any(|a| {
                    a.trim_end_matches('/').eq_ignore_ascii_case(expected)
                        || a.eq_ignore_ascii_case(COGNITIVE_SERVICES_APP_ID)
                });
                if !matches {
                    advice.push(format!(
                        "The audience does not match the scope (expected {expected}): the \
                         credential handed out a token for another resource."
                    ));
                }
            }
        }
    }
    // A resource accepts tokens from its own tenant only. Its WWW-Authenticate header may
    // name that tenant.
    let resource_tenant = headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(tenant_in_challenge);
    match (&cx.token.tenant_id, resource_tenant) {
        (Some(ours), Some(theirs)) if !ours.eq_ignore_ascii_case(&theirs) => advice.push(format!(
            "Wrong tenant: the token was issued by tenant {ours}, but the resource belongs to \
             tenant {theirs}. Pass --tenant-id {theirs} (with the Azure CLI: az login --tenant \
             {theirs})."
        )),
        (Some(ours), _) => advice.push(format!(
            "The token was issued by tenant {ours}. A resource accepts tokens only from its own \
             tenant: if it lives in another one, pass --tenant-id <its tenant id> (with the \
             Azure CLI: az login --tenant <its tenant id>)."
        )),
        (None, Some(theirs)) => advice.push(format!(
            "The resource belongs to tenant {theirs}: make sure the credential signs in there \
             (--tenant-id {theirs})."
        )),
        (None, None) => advice.push(
            "The token's tenant is unknown (it is not a JWT). A resource accepts tokens only \
             from its own tenant: pass --tenant-id <its tenant id> if it lives in another one."
                .to_owned(),
        ),
    }
    if cx.token.expires_at < SystemTime::now() {
        advice.push(
            "The token has already expired by its own expiry time: check this machine's clock."
                .to_owned(),
        );
    }
    if cx
        .endpoint
        .host_str()
        .is_some_and(|h| h.ends_with(".api.cognitive.microsoft.com"))
    {
        advice.push(
            "Entra ID tokens need the resource's own endpoint \
             (https://<resource>.openai.azure.com), not a regional one."
                .to_owned(),
        );
    }
    advice
}

/// The tenant id in a `WWW-Authenticate: Bearer authorization_uri="https://login.../<tenant>"`.
fn tenant_in_challenge(challenge: &str) -> Option<String> {
    let start = challenge.find("authorization_uri=\"")? + "authorization_uri=\"".len();
    let rest = &challenge[start..];
    let uri = &rest[..rest.find('"')?];
    let url = Url::parse(uri).ok()?;
    let tenant = url.path_segments()?.find(|s| !s.is_empty())?;
    Some(tenant.to_owned())
}

fn advise_404(cx: &Context<'_>) -> Vec<String> {
    let mut advice = vec![format!(
        "Check the endpoint: it should be the resource's \"Endpoint\" from the Azure portal \
         (Keys and Endpoint), such as https://<resource>.openai.azure.com; {} was used.",
        cx.endpoint
    )];
    match cx.api {
        ApiStyle::V1 => advice.push(
            "keyless calls the v1 API (/openai/v1/...) by default; if this resource or a \
             gateway in front of it does not serve it, try --api deployments."
                .to_owned(),
        ),
        ApiStyle::Deployments => advice.push(format!(
            "With --api deployments keyless calls /openai/...?api-version={}; Azure answers 404 \
             for an api-version it does not know: try --api-version 2024-10-21, or --api v1.",
            cx.api_version
        )),
    }
    let path = cx.endpoint.path().trim_matches('/');
    if !path.is_empty() {
        advice.push(format!(
            "The endpoint has a path (/{path}): keyless appends /openai/... to it. Leave it out \
             unless a gateway needs it."
        ));
    }
    advice
}

/// Azure's `{"error":{"message":...}}` (or `{"message":...}`), on one line, capped.
fn azure_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let message = value
        .pointer("/error/message")
        .or_else(|| value.get("message"))
        .and_then(|m| m.as_str())?;
    let mut line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.len() > MAX_QUOTE {
        let mut cut = MAX_QUOTE;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str("...");
    }
    (!line.is_empty()).then_some(line)
}

/// The first few `data[].id` of a models list, and how many more there are.
fn model_ids(body: &[u8]) -> Vec<String> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let Some(data) = value.get("data").and_then(|d| d.as_array()) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = data
        .iter()
        .filter_map(|m| m.get("id").and_then(|id| id.as_str()))
        .take(MODELS_SHOWN)
        .map(str::to_owned)
        .collect();
    if data.len() > MODELS_SHOWN {
        ids.push(format!("and {} more", data.len() - MODELS_SHOWN));
    }
    ids
}

/// Names a transport failure: DNS, connect, TLS, or other, with the host.
fn explain_transport(
    err: &(dyn std::error::Error + 'static),
    host: &str,
    endpoint: &Url,
) -> (Verdict, String, Vec<String>) {
    let chain = crate::error::causes(err);
    let text = chain.join(": ");
    if let Some(tls) = find_cause::<rustls::Error>(err) {
        let (why, advice) = explain_tls(tls, endpoint);
        return (
            Verdict::Tls,
            format!("TLS handshake with {host} failed: {why} ({tls})."),
            advice,
        );
    }
    if chain.iter().any(|c| c == "dns error") {
        let name = endpoint.host_str().unwrap_or(host);
        return (
            Verdict::Dns,
            format!("DNS: cannot resolve {name} ({text})."),
            vec![format!(
                "Check the resource name in the endpoint (https://<resource>.openai.azure.com). \
                 Behind a private endpoint, {name} must resolve through the private DNS zone \
                 (privatelink.openai.azure.com) from this machine."
            )],
        );
    }
    let io_kind = find_cause::<std::io::Error>(err).map(std::io::Error::kind);
    let (verdict, summary) = match io_kind {
        Some(std::io::ErrorKind::ConnectionRefused) => (
            Verdict::Connect,
            format!("Connection refused by {host}: nothing listens there ({text})."),
        ),
        Some(std::io::ErrorKind::TimedOut) => (
            Verdict::Connect,
            format!("Connecting to {host} timed out: a firewall may drop the traffic ({text})."),
        ),
        Some(
            std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::UnexpectedEof,
        ) => (
            Verdict::Connect,
            format!("{host} closed the connection ({text})."),
        ),
        Some(
            std::io::ErrorKind::HostUnreachable
            | std::io::ErrorKind::NetworkUnreachable
            | std::io::ErrorKind::AddrNotAvailable,
        ) => (
            Verdict::Connect,
            format!("{host} is unreachable from this machine ({text})."),
        ),
        _ if chain.iter().any(|c| c.contains("connect")) => (
            Verdict::Connect,
            format!("Cannot connect to {host} ({text})."),
        ),
        _ => (
            Verdict::Unreachable,
            format!("The request to {host} failed ({text})."),
        ),
    };
    (
        verdict,
        summary,
        vec![
            "Check the endpoint URL and that this machine can reach it (a proxy: keyless \
             connects directly; a firewall or private endpoint)."
                .to_owned(),
        ],
    )
}

fn explain_tls(err: &rustls::Error, endpoint: &Url) -> (&'static str, Vec<String>) {
    use rustls::CertificateError as C;
    let inspecting = "A TLS-inspecting proxy or firewall re-signs the traffic? Trust its CA \
                      certificate with --ca-file <PEM file> (or add it to the system trust \
                      store)."
        .to_owned();
    match err {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => (
            "the server's certificate is not signed by a trusted CA",
            vec![inspecting],
        ),
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => (
            "the server's certificate is not valid for this host name",
            vec![format!(
                "The endpoint's host name ({}) does not match the certificate: use the \
                 resource's own endpoint, not an IP address or an alias.",
                endpoint.host_str().unwrap_or("?")
            )],
        ),
        rustls::Error::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => (
            "the server's certificate is expired or not yet valid",
            vec!["Check this machine's clock.".to_owned(), inspecting],
        ),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => (
            "the server does not speak TLS",
            vec!["Is the endpoint plain http? Azure OpenAI endpoints are https.".to_owned()],
        ),
        _ => ("see the error", vec![inspecting]),
    }
}

fn find_cause<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    if let Some(t) = err.downcast_ref::<T>() {
        return Some(t);
    }
    if let Some(io) = err.downcast_ref::<std::io::Error>()
        && let Some(inner) = io.get_ref()
        && let Some(t) = find_cause::<T>(inner)
    {
        return Some(t);
    }
    err.source().and_then(find_cause::<T>)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn info(object_id: Option<&str>, tenant: Option<&str>, audience: Option<&str>) -> TokenInfo {
        TokenInfo {
            tenant_id: tenant.map(str::to_owned),
            object_id: object_id.map(str::to_owned),
            app_id: None,
            principal_name: None,
            audience: audience.map(str::to_owned),
            expires_at: SystemTime::now() + Duration::from_secs(3600),
        }
    }

    fn explain(status: u16, headers: &[(&str, &str)], body: &str, cx: &Context<'_>) -> Explained {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        explain_status(
            StatusCode::from_u16(status).unwrap(),
            &map,
            body.as_bytes(),
            cx,
        )
    }

    fn context<'a>(endpoint: &'a Url, token: &'a TokenInfo, scope: &'a str) -> Context<'a> {
        Context {
            endpoint,
            api: ApiStyle::V1,
            api_version: "2024-10-21",
            scope,
            token,
        }
    }

    const SCOPE: &str = "https://cognitiveservices.azure.com/.default";

    #[test]
    fn models_url_keeps_a_base_path_and_adds_the_api_version() {
        let base = Url::parse("https://gw.example.com/prefix").unwrap();
        assert_eq!(
            models_url(&base, ApiStyle::V1, "x").as_str(),
            "https://gw.example.com/prefix/openai/v1/models"
        );
        let root = Url::parse("https://res.openai.azure.com/").unwrap();
        assert_eq!(
            models_url(&root, ApiStyle::Deployments, "2024-10-21").as_str(),
            "https://res.openai.azure.com/openai/models?api-version=2024-10-21"
        );
    }

    #[test]
    fn a_403_names_the_role_the_object_id_and_how_to_find_the_resource() {
        let endpoint = Url::parse("https://my-res.openai.azure.com/").unwrap();
        let token = info(
            Some("oid-1"),
            Some("tid-1"),
            Some("https://cognitiveservices.azure.com"),
        );
        let out = explain(
            403,
            &[],
            r#"{"error":{"code":"PermissionDenied","message":"The principal `oid-1` lacks the required data action"}}"#,
            &context(&endpoint, &token, SCOPE),
        );
        assert_eq!(out.verdict, Verdict::MissingRole);
        assert!(out.summary.contains(OPENAI_USER_ROLE), "{}", out.summary);
        assert!(out.summary.contains("oid-1"), "{}", out.summary);
        let advice = out.advice.join("\n");
        assert!(
            advice.contains("az role assignment create --assignee oid-1"),
            "{advice}"
        );
        assert!(advice.contains("customSubDomainName=='my-res'"), "{advice}");
        assert!(out.azure_message.unwrap().starts_with("The principal"));
    }

    #[test]
    fn a_403_from_network_rules_is_not_a_missing_role() {
        let endpoint = Url::parse("https://my-res.openai.azure.com/").unwrap();
        let token = info(Some("oid-1"), None, None);
        let out = explain(
            403,
            &[],
            r#"{"error":{"code":"403","message":"Access denied due to Virtual Network/Firewall rules."}}"#,
            &context(&endpoint, &token, SCOPE),
        );
        assert_eq!(out.verdict, Verdict::NetworkBlocked);
        assert!(!out.advice.join(" ").contains("role assignment"));
    }

    #[test]
    fn a_403_with_an_opaque_token_says_how_to_find_the_object_id() {
        let endpoint = Url::parse("https://gw.example.com/").unwrap();
        let token = info(None, None, None);
        let out = explain(403, &[], "", &context(&endpoint, &token, SCOPE));
        let advice = out.advice.join("\n");
        assert!(advice.contains("--assignee <object id>"), "{advice}");
        assert!(advice.contains("az ad signed-in-user show"), "{advice}");
        assert!(advice.contains("Properties page"), "{advice}");
    }

    #[test]
    fn a_401_with_a_foreign_scope_says_which_scope_to_use() {
        let endpoint = Url::parse("https://my-res.openai.azure.com/").unwrap();
        let token = info(None, Some("tid-1"), Some("https://management.azure.com"));
        let scope = "https://management.azure.com/.default";
        let out = explain(401, &[], "", &context(&endpoint, &token, scope));
        assert_eq!(out.verdict, Verdict::TokenRejected);
        let advice = out.advice.join("\n");
        assert!(advice.contains("is not an Azure OpenAI scope"), "{advice}");
        assert!(
            advice.contains("--scope https://cognitiveservices.azure.com/.default"),
            "{advice}"
        );
        assert!(advice.contains("issued by tenant tid-1"), "{advice}");
    }

    #[test]
    fn a_401_with_the_right_audience_blames_neither_scope_nor_audience() {
        let endpoint = Url::parse("https://my-res.openai.azure.com/").unwrap();
        for aud in [
            "https://cognitiveservices.azure.com",
            "https://cognitiveservices.azure.com/",
            COGNITIVE_SERVICES_APP_ID,
        ] {
            let token = info(None, Some("tid-1"), Some(aud));
            let out = explain(401, &[], "", &context(&endpoint, &token, SCOPE));
            let advice = out.advice.join("\n");
            assert!(!advice.contains("does not match"), "{aud}: {advice}");
            assert!(
                !advice.contains("not an Azure OpenAI scope"),
                "{aud}: {advice}"
            );
        }
    }

    #[test]
    fn a_401_reads_the_resource_tenant_from_the_challenge() {
        assert_eq!(
            tenant_in_challenge(
                r#"Bearer authorization_uri="https://login.microsoftonline.com/t-2/oauth2/authorize", error="invalid_token""#
            ),
            Some("t-2".to_owned())
        );
        assert_eq!(tenant_in_challenge("Bearer"), None);
        let endpoint = Url::parse("https://my-res.openai.azure.com/").unwrap();
        let mut token = info(None, Some("t-1"), None);
        token.expires_at = UNIX_EPOCH;
        let out = explain(
            401,
            &[(
                "www-authenticate",
                r#"Bearer authorization_uri="https://login.microsoftonline.com/t-2""#,
            )],
            "",
            &context(&endpoint, &token, SCOPE),
        );
        let advice = out.advice.join("\n");
        assert!(advice.contains("Wrong tenant"), "{advice}");
        assert!(advice.contains("--tenant-id t-2"), "{advice}");
        assert!(advice.contains("already expired"), "{advice}");
    }

    #[test]
    fn other_answers_are_explained() {
        let endpoint = Url::parse("https://my-res.openai.azure.com/").unwrap();
        let token = info(None, None, None);
        let cx = context(&endpoint, &token, SCOPE);
        let ok = explain(
            200,
            &[],
            r#"{"data":[{"id":"a"},{"id":"b"},{"id":"c"},{"id":"d"},{"id":"e"},{"id":"f"},{"id":"g"}]}"#,
            &cx,
        );
        assert_eq!(ok.verdict, Verdict::Ok);
        assert_eq!(ok.models, ["a", "b", "c", "d", "e", "and 2 more"]);
        assert_eq!(explain(429, &[], "", &cx).verdict, Verdict::RateLimited);
        assert!(Verdict::RateLimited.works());
        assert_eq!(explain(503, &[], "", &cx).verdict, Verdict::ServerError);
        let redirect = explain(302, &[("location", "https://login.example.com/")], "", &cx);
        assert!(redirect.advice[0].contains("https://login.example.com/"));
        assert!(!redirect.verdict.works());
        let not_found = explain(404, &[], "", &cx);
        assert!(not_found.advice.join(" ").contains("--api deployments"));
    }

    #[test]
    fn azure_messages_are_one_capped_line() {
        let long = "word ".repeat(200);
        let body = serde_json::json!({"error": {"message": format!("first\nsecond {long}")}});
        let message = azure_message(body.to_string().as_bytes()).unwrap();
        assert!(message.starts_with("first second word"));
        assert!(message.len() <= MAX_QUOTE + 3 && message.ends_with("..."));
        assert_eq!(azure_message(b"<html>"), None);
    }

    #[derive(Debug)]
    struct Wrapper(&'static str, Box<dyn std::error::Error + Send + Sync>);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.1)
        }
    }

    #[test]
    fn transport_errors_are_named() {
        let endpoint = Url::parse("https://my-res.openai.azure.com/").unwrap();
        let host = "my-res.openai.azure.com:443";
        let dns = Wrapper(
            "client error (Connect)",
            Box::new(Wrapper(
                "dns error",
                Box::new(std::io::Error::other(
                    "failed to lookup address information",
                )),
            )),
        );
        let (verdict, summary, advice) = explain_transport(&dns, host, &endpoint);
        assert_eq!(verdict, Verdict::Dns);
        assert!(
            summary.contains("cannot resolve my-res.openai.azure.com"),
            "{summary}"
        );
        assert!(advice[0].contains("privatelink"), "{advice:?}");

        let refused = Wrapper(
            "tcp connect error",
            Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        );
        let (verdict, summary, _) = explain_transport(&refused, host, &endpoint);
        assert_eq!(verdict, Verdict::Connect);
        assert!(
            summary.starts_with("Connection refused by my-res.openai.azure.com:443"),
            "{summary}"
        );

        // hyper-rustls wraps rustls's error in an io::Error, itself in another.
        let tls = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
        ));
        let (verdict, summary, advice) = explain_transport(&tls, host, &endpoint);
        assert_eq!(verdict, Verdict::Tls);
        assert!(
            summary.contains("not valid for this host name"),
            "{summary}"
        );
        assert!(advice[0].contains("my-res.openai.azure.com"), "{advice:?}");
    }

    #[test]
    fn paragraphs_wrap_on_words() {
        let mut out = String::new();
        paragraph(&mut out, &"abcdefghi ".repeat(30)).unwrap();
        assert!(out.lines().count() > 2);
        assert!(
            out.lines().all(|l| l.len() <= WIDTH && l.starts_with("  ")),
            "{out}"
        );
    }

    #[test]
    fn exit_codes() {
        let invalid = Report {
            problems: vec!["x".into()],
            ..Report::default()
        }
        .finish();
        assert_eq!(invalid.exit_code(), ExitCode::from(2));
        assert_eq!(Report::default().finish().exit_code(), ExitCode::FAILURE);
    }
}
