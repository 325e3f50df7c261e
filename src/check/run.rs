//! Running the check: load the configuration, acquire a token per scope, call each endpoint.

use super::explain::{Context, explain_status, explain_transport};
use super::report::{EndpointCheck, Identity, Report, TargetSummary, TokenCheck, Verdict};
use crate::auth::credential;
use crate::auth::{Acquire, AuthError, Token};
use crate::body::Body;
use crate::config::{ApiStyle, Config, Flags, Target};
use crate::rewrite::bearer;
use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt as _, Limited};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use url::Url;

/// Longest wait for the models list (on top of the connect timeout): it is a cheap call.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of an answer body read, to quote Azure's error and list models.
const MAX_BODY: usize = 256 * 1024;

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

    // The pairs the router makes its resources of; one token per scope, as keyless keeps
    // one cache per scope.
    let targets = config.resources(&endpoint);
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

pub(super) fn host_port(url: &Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
#[cfg(test)]
mod tests {
    use super::*;

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
}
