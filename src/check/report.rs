//! What `keyless check` found, and how it reads: text for people, JSON for scripts.

use crate::auth::credential::TokenInfo;
use crate::config::{ApiStyle, Config};
use http::StatusCode;
use serde::Serialize;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};
use url::Url;

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
    pub(super) fn new(config: &Config, endpoint: &Url, simulated: bool) -> Self {
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
    pub(super) fn from_info(info: &TokenInfo) -> Self {
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
    pub(super) fn finish(mut self) -> Self {
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
            token.write_text(out)?;
        }
        for endpoint in &self.endpoints {
            writeln!(out)?;
            endpoint.write_text(out)?;
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

impl TokenCheck {
    /// The token section: what the token says, or why there is none.
    fn write_text(&self, out: &mut String) -> std::fmt::Result {
        match (&self.identity, &self.error) {
            (Some(id), _) => {
                writeln!(
                    out,
                    "Token for {}: acquired in {} ms",
                    self.scope, self.elapsed_ms
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
                    self.scope, self.elapsed_ms
                )?;
                paragraph(out, error)?;
            }
            (None, None) => {}
        }
        Ok(())
    }
}

impl EndpointCheck {
    /// One endpoint's section: the answer, the verdict, Azure's words and the advice.
    fn write_text(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "Endpoint: {}", self.request)?;
        match self.status {
            Some(status) => {
                let reason = StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("");
                field(
                    out,
                    "answer",
                    &format!("HTTP {status} {reason} in {} ms", self.elapsed_ms),
                )?
            }
            None => field(
                out,
                "answer",
                &format!("none (after {} ms)", self.elapsed_ms),
            )?,
        }
        let mark = if self.verdict.works() { "OK" } else { "FAILED" };
        paragraph(out, &format!("{mark}: {}", self.summary))?;
        if !self.models.is_empty() {
            paragraph(out, &format!("models: {}", self.models.join(", ")))?;
        }
        if let Some(message) = &self.azure_message {
            paragraph(out, &format!("Azure said: {message}"))?;
        }
        for advice in &self.advice {
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

#[cfg(test)]
mod tests {
    use super::*;

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
