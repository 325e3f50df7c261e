//! Building an [`Acquire`] from the configured credential kind, on top of azure_identity.
//!
//! Every kind maps onto one azure_identity 1.0 credential:
//!
//! | kind | credential | reads |
//! |---|---|---|
//! | `client-secret` | `ClientSecretCredential` | `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET` |
//! | `client-certificate` | `ClientAssertionCredential` with a certificate-signed JWT | `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_CERTIFICATE_PATH`, `AZURE_CLIENT_CERTIFICATE_PASSWORD` |
//! | `workload-identity` | `WorkloadIdentityCredential` | `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE` |
//! | `managed-identity` | `ManagedIdentityCredential` (IMDS or App Service) | `AZURE_CLIENT_ID` (user-assigned), `IDENTITY_ENDPOINT`, `IDENTITY_HEADER` |
//! | `azure-cli` | `AzureCliCredential` (`az account get-access-token`) | |
//! | `azd` | `AzureDeveloperCliCredential` (`azd auth token`) | |
//! | `auto` | the first of the above, in that order, that yields a token | all of the above |
//!
//! Settings (`--tenant-id`, `--client-id`, `--authority-host`) override the environment.
//!
//! `auto` follows DefaultAzureCredential's order. A step whose variables are absent is
//! skipped without any call; managed identity is skipped when IMDS does not answer a 1 s
//! probe like Azure IMDS does (unless `IDENTITY_ENDPOINT` announces App Service); a CLI
//! that is not installed fails at once. A step that applies but fails (a rejected secret,
//! `az` not logged in) is recorded and the chain goes on. The first step that yields a
//! token is used from then on, and the log says which and why the others were passed over;
//! if none does, the error lists every step's reason.
//! `AZURE_AUTHORITY_HOST` / `--authority-host` selects the cloud for the credentials that
//! talk to Entra directly (client secret, certificate, workload identity):
//!
//! | cloud | authority host | Azure OpenAI scope |
//! |---|---|---|
//! | public (default) | [`AZURE_PUBLIC_CLOUD`] `https://login.microsoftonline.com` | `https://cognitiveservices.azure.com/.default` |
//! | US Government | [`AZURE_GOVERNMENT`] `https://login.microsoftonline.us` | `https://cognitiveservices.azure.us/.default` |
//! | China (21Vianet) | [`AZURE_CHINA`] `https://login.chinacloudapi.cn` | `https://cognitiveservices.azure.cn/.default` |
//!
//! The Azure CLI and azd use the cloud they are logged in to (`az cloud set`), and managed
//! identity the cloud it runs in.
//!
//! Two azure_identity behaviours are worked around here:
//! - its credentials cache tokens until five minutes before expiry and offer no bypass, so
//!   every acquisition builds a fresh credential instance (cheap): [`super::TokenCache`]
//!   decides when a new token is needed, and after an upstream 401 it must get a new one;
//! - azure_core's default retry policy (8 tries within a minute) and its 20 s connect
//!   timeout also apply to identity endpoints, so every credential gets a short retry policy
//!   and an HTTP client with short timeouts, and every acquisition a deadline. Managed
//!   identity on a VM keeps azure_identity's IMDS retry guidance (up to 72 s, for a VM that
//!   is still starting), but only after a quick probe has shown that IMDS answers at all.

use super::{Acquire, AuthError, Secret, Token};
use aws_lc_rs::{
    digest,
    rand::SystemRandom,
    signature::{KeyPair as _, RSA_PSS_SHA256, RsaKeyPair},
};
use azure_core::{
    cloud::CustomConfiguration,
    credentials::{AccessToken, TokenCredential},
    http::{ClientMethodOptions, ClientOptions, ExponentialRetryOptions, RetryOptions, Transport},
};
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, AzureDeveloperCliCredential,
    AzureDeveloperCliCredentialOptions, ClientAssertion, ClientAssertionCredential,
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    Executor, ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use base64::Engine as _;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use url::Url;

/// Authority host of the Azure public cloud (the default).
pub const AZURE_PUBLIC_CLOUD: &str = "https://login.microsoftonline.com";
/// Authority host of Azure US Government.
pub const AZURE_GOVERNMENT: &str = "https://login.microsoftonline.us";
/// Authority host of Azure China (operated by 21Vianet).
pub const AZURE_CHINA: &str = "https://login.chinacloudapi.cn";

// The names azure_identity gives its credentials; they label errors and logs.
const CLIENT_SECRET: &str = "ClientSecretCredential";
const CLIENT_CERTIFICATE: &str = "ClientCertificateCredential";
const WORKLOAD_IDENTITY: &str = "WorkloadIdentityCredential";
const MANAGED_IDENTITY: &str = "ManagedIdentityCredential";
const AZURE_CLI: &str = "AzureCliCredential";
const AZD: &str = "AzureDeveloperCliCredential";
/// What `auto` calls itself until a credential has been chosen.
const AUTO: &str = "auto";

/// IMDS's token endpoint. Asked without the `Metadata: true` header, Azure IMDS answers 400
/// at once, with a `Server: IMDS/...` header (what other Azure SDKs probe too).
const IMDS_PROBE_URL: &str =
    "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01";
/// `auto` waits 1 s for IMDS, and wants an answer that looks like Azure's: other clouds
/// and some container runtimes answer on 169.254.169.254 too, and azure_identity would
/// retry their 404s for over a minute.
const AUTO_IMDS_PROBE: ImdsProbe = ImdsProbe {
    timeout: Duration::from_secs(1),
    require_azure: true,
};
/// An explicit `managed-identity` is a little more patient and takes any answer: the user
/// said there is a managed identity, so azure_identity's own error is the better one.
const EXPLICIT_IMDS_PROBE: ImdsProbe = ImdsProbe {
    timeout: Duration::from_secs(5),
    require_azure: false,
};

/// Identity endpoints answer in well under a second; these bound a dead or slow one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(15);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Whole-acquisition deadlines (retries included).
const HTTP_DEADLINE: Duration = Duration::from_secs(30);
const IMDS_DEADLINE: Duration = Duration::from_secs(90);
const CLI_DEADLINE: Duration = Duration::from_secs(60);
/// Lifetime of a certificate client assertion: Entra asks for 5-10 minutes at most.
const ASSERTION_LIFETIME_SECS: u64 = 600;

/// Which Entra credential keyless uses (`--credential`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialKind {
    /// Environment service principal, workload identity, managed identity, Azure CLI, azd.
    #[default]
    Auto,
    /// Managed identity (IMDS, App Service).
    ManagedIdentity,
    /// AKS workload identity (federated token file).
    WorkloadIdentity,
    /// Service principal with a client secret.
    ClientSecret,
    /// Service principal with a certificate.
    ClientCertificate,
    /// `az login`.
    AzureCli,
    /// `azd auth login`.
    Azd,
}

/// Where credentials read their environment variables (`AZURE_CLIENT_ID`, ...).
///
/// The default reads the process environment. [`Env::from_vars`] gives a fixed map, so tests
/// need no `std::env::set_var`. Empty values count as unset. `Debug` shows variable names,
/// never values (`AZURE_CLIENT_SECRET` may be among them).
///
/// azure_identity itself still reads `IDENTITY_ENDPOINT`, `IDENTITY_HEADER` and the other
/// managed identity variables from the process environment.
#[derive(Clone, Default)]
pub struct Env {
    /// `None`: the process environment.
    vars: Option<Arc<HashMap<String, String>>>,
}

impl Env {
    /// The process environment.
    pub fn process() -> Self {
        Self::default()
    }

    /// A fixed set of variables; everything else is unset.
    pub fn from_vars<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Self {
            vars: Some(Arc::new(vars)),
        }
    }

    /// The value of `key`, or `None` when unset, empty or not valid UTF-8.
    pub fn var(&self, key: &str) -> Option<String> {
        let value = match &self.vars {
            None => std::env::var(key).ok(),
            Some(vars) => vars.get(key).cloned(),
        };
        value.filter(|v| !v.is_empty())
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.vars {
            None => f.write_str("Env::Process"),
            Some(vars) => {
                let mut keys: Vec<&str> = vars.keys().map(String::as_str).collect();
                keys.sort_unstable();
                f.debug_struct("Env::Vars").field("keys", &keys).finish()
            }
        }
    }
}

/// Injection points for tests and embedders; leave at the default in production.
#[derive(Clone, Debug, Default)]
pub struct Hooks {
    /// The HTTP client for identity endpoints (Entra, IMDS, App Service). Default: a
    /// reqwest client with short timeouts. Tests pass one that trusts a test CA.
    pub transport: Option<Transport>,
    /// Runs `az` and `azd` (as `/bin/sh -c "cd /bin && az ..."`). Default: a tokio process
    /// that is killed when the acquisition is abandoned.
    pub executor: Option<Arc<dyn Executor>>,
    /// Where `managed-identity` and `auto` probe for IMDS. Default: IMDS's token endpoint on
    /// 169.254.169.254. Tests point it at a closed local port.
    pub imds_probe_url: Option<Url>,
}

/// Everything a credential needs besides the process environment.
#[derive(Clone, Debug, Default)]
pub struct CredentialSettings {
    /// The credential kind.
    pub kind: CredentialKind,
    /// `--tenant-id` (`AZURE_TENANT_ID`). For `azure-cli` and `azd` only this setting is
    /// passed on (`--tenant`), never the environment variable, which usually belongs to a
    /// service principal.
    pub tenant_id: Option<String>,
    /// `--client-id` (`AZURE_CLIENT_ID`): service principal, workload identity, or a
    /// user-assigned managed identity.
    pub client_id: Option<String>,
    /// `--object-id`: a user-assigned managed identity by object (principal) id.
    pub object_id: Option<String>,
    /// `--resource-id`: a user-assigned managed identity by Azure resource id (IMDS only;
    /// App Service does not support it in azure_identity 1.0).
    pub resource_id: Option<String>,
    /// `--authority-host` (`AZURE_AUTHORITY_HOST`): the Entra host, `https` only; see
    /// [`AZURE_PUBLIC_CLOUD`], [`AZURE_GOVERNMENT`], [`AZURE_CHINA`].
    pub authority_host: Option<url::Url>,
    /// Where environment variables come from (default: the process environment).
    pub env: Env,
    /// Test and embedding hooks.
    pub hooks: Hooks,
}

/// Builds the token source for `settings`.
///
/// Fails when the settings cannot work at all (a required variable is missing, the
/// certificate cannot be read, the authority host is not https); a credential that is merely
/// unavailable (not logged in, no managed identity) fails at [`Acquire::acquire`] instead.
pub fn from_settings(settings: &CredentialSettings) -> Result<Arc<dyn Acquire>, AuthError> {
    let inputs = Inputs::new(settings);
    let ctx = Ctx::new(&settings.hooks)?;
    let single =
        |plan: Result<Plan, (&'static str, String)>| -> Result<Arc<dyn Acquire>, AuthError> {
            let plan = plan.map_err(|(credential, message)| AuthError {
                credential: credential.into(),
                message,
            })?;
            Ok(Arc::new(Single {
                plan,
                ctx: ctx.clone(),
            }))
        };
    match settings.kind {
        CredentialKind::ClientSecret => single(inputs.client_secret()),
        CredentialKind::ClientCertificate => single(inputs.client_certificate().and_then(|plan| {
            // Fail at start-up on an unreadable certificate; it is read again (it may be
            // rotated on disk) at every acquisition.
            if let Plan::ClientCertificate { path, password, .. } = &plan {
                let bytes =
                    std::fs::read(path).map_err(|e| (CLIENT_CERTIFICATE, read_error(path, &e)))?;
                load_certificate(&bytes, password.as_ref(), path)
                    .map_err(|message| (CLIENT_CERTIFICATE, message))?;
            }
            Ok(plan)
        })),
        CredentialKind::WorkloadIdentity => single(inputs.workload_identity()),
        CredentialKind::ManagedIdentity => single(inputs.managed_identity(EXPLICIT_IMDS_PROBE)),
        CredentialKind::AzureCli => single(Ok(Plan::AzureCli {
            tenant_id: inputs.cli_tenant_id.clone(),
        })),
        CredentialKind::Azd => single(Ok(Plan::Azd {
            tenant_id: inputs.cli_tenant_id.clone(),
        })),
        CredentialKind::Auto => {
            // A malformed authority host is a configuration error, not a reason to skip.
            inputs.authority().map_err(|message| AuthError {
                credential: AUTO.into(),
                message,
            })?;
            Ok(Arc::new(Auto {
                steps: inputs.auto_steps(),
                ctx,
                chosen: OnceLock::new(),
            }))
        }
    }
}

/// What `keyless check` shows about a token, read from its JWT claims without verifying the
/// signature (Azure OpenAI does that). The token itself is never part of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// `tid`: the tenant that issued the token.
    pub tenant_id: Option<String>,
    /// `oid`: the object id of the user or service principal (the one that needs the
    /// "Cognitive Services OpenAI User" role).
    pub object_id: Option<String>,
    /// `appid` (v1 tokens) or `azp` (v2 tokens): the client application.
    pub app_id: Option<String>,
    /// `upn`, `unique_name` or `preferred_username`, for user tokens.
    pub principal_name: Option<String>,
    /// `aud`: the resource the token is for (several joined by spaces).
    pub audience: Option<String>,
    /// `exp` when the token carries one, otherwise the expiry the identity endpoint reported.
    pub expires_at: SystemTime,
}

/// Reads what [`TokenInfo`] holds from `token`. An opaque (non-JWT) token gives `None` for
/// every claim.
pub fn describe_token(token: &Token) -> TokenInfo {
    let claims = jwt_claims(token.secret.expose()).unwrap_or_default();
    let text = |key: &str| claims.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let audience = match claims.get("aud") {
        Some(serde_json::Value::String(aud)) => Some(aud.clone()),
        Some(serde_json::Value::Array(auds)) => {
            let auds: Vec<&str> = auds.iter().filter_map(|a| a.as_str()).collect();
            (!auds.is_empty()).then(|| auds.join(" "))
        }
        _ => None,
    };
    let expires_at = claims
        .get("exp")
        .and_then(serde_json::Value::as_u64)
        .map(|exp| UNIX_EPOCH + Duration::from_secs(exp))
        .unwrap_or(token.expires_at);
    TokenInfo {
        tenant_id: text("tid"),
        object_id: text("oid"),
        app_id: text("appid").or_else(|| text("azp")),
        principal_name: text("upn")
            .or_else(|| text("unique_name"))
            .or_else(|| text("preferred_username")),
        audience,
        expires_at,
    }
}

/// The payload of a JWS compact token, or `None` when `token` is not one.
fn jwt_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None; // five parts: an encrypted JWE, opaque to us
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine.decode(payload).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        serde_json::Value::Object(claims) => Some(claims),
        _ => None,
    }
}

/// Shared by every acquisition: the HTTP client and the process runner.
#[derive(Clone, Debug)]
struct Ctx {
    transport: Transport,
    executor: Arc<dyn Executor>,
    imds_probe_url: Url,
}

impl Ctx {
    fn new(hooks: &Hooks) -> Result<Self, AuthError> {
        let setup_error = |message: String| AuthError {
            credential: "keyless".into(),
            message,
        };
        let transport = match &hooks.transport {
            Some(transport) => transport.clone(),
            None => {
                let client = reqwest::Client::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .timeout(REQUEST_TIMEOUT)
                    // Entra and IMDS never redirect; following one would only hide an error.
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| {
                        setup_error(format!("cannot build the identity HTTP client: {e}"))
                    })?;
                Transport::new(Arc::new(client))
            }
        };
        let imds_probe_url = match &hooks.imds_probe_url {
            Some(url) => url.clone(),
            None => Url::parse(IMDS_PROBE_URL)
                .map_err(|e| setup_error(format!("bad IMDS probe URL: {e}")))?,
        };
        Ok(Self {
            transport,
            executor: hooks
                .executor
                .clone()
                .unwrap_or_else(|| Arc::new(KillOnDropExecutor)),
            imds_probe_url,
        })
    }

    /// Client options for a fresh credential: our transport, a short retry policy, and the
    /// authority host pinned (so azure_identity does not read `AZURE_AUTHORITY_HOST` from the
    /// process environment behind [`Env`]'s back).
    fn client_options(&self, authority: Option<&Url>) -> ClientOptions {
        let mut options = ClientOptions {
            transport: Some(self.transport.clone()),
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: azure_core::time::Duration::milliseconds(300),
                max_retries: 2,
                max_total_elapsed: azure_core::time::Duration::seconds(10),
                max_delay: azure_core::time::Duration::seconds(2),
            }),
            ..ClientOptions::default()
        };
        if let Some(authority) = authority {
            let mut cloud = CustomConfiguration::default();
            cloud.authority_host = authority.as_str().trim_end_matches('/').to_owned();
            options.cloud = Some(Arc::new(cloud.into()));
        }
        options
    }
}

/// Runs `az`/`azd` on tokio, killing the shell if the acquisition is dropped (deadline), so
/// that a hung CLI does not outlive it the way azure_identity's thread-based runner would.
#[derive(Debug)]
struct KillOnDropExecutor;

#[async_trait::async_trait]
impl Executor for KillOnDropExecutor {
    async fn run(&self, program: &OsStr, args: &[&OsStr]) -> std::io::Result<std::process::Output> {
        tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
    }
}

/// The settings and environment, resolved once.
struct Inputs {
    env: Env,
    tenant_id: Option<String>,
    /// The tenant setting alone: `AZURE_TENANT_ID` usually belongs to a service principal,
    /// not to the account the CLI is logged in with.
    cli_tenant_id: Option<String>,
    client_id: Option<String>,
    object_id: Option<String>,
    resource_id: Option<String>,
    authority_host: Option<Url>,
}

impl Inputs {
    fn new(settings: &CredentialSettings) -> Self {
        let env = settings.env.clone();
        let non_empty = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        Self {
            tenant_id: non_empty(&settings.tenant_id).or_else(|| env.var("AZURE_TENANT_ID")),
            cli_tenant_id: non_empty(&settings.tenant_id),
            client_id: non_empty(&settings.client_id),
            object_id: non_empty(&settings.object_id),
            resource_id: non_empty(&settings.resource_id),
            authority_host: settings.authority_host.clone(),
            env,
        }
    }

    /// The authority host: setting, then `AZURE_AUTHORITY_HOST`, then the public cloud.
    fn authority(&self) -> Result<Url, String> {
        let url = match (&self.authority_host, self.env.var("AZURE_AUTHORITY_HOST")) {
            (Some(url), _) => url.clone(),
            (None, Some(text)) => Url::parse(&text)
                .map_err(|e| format!("AZURE_AUTHORITY_HOST {text:?} is not a URL: {e}"))?,
            (None, None) => Url::parse(AZURE_PUBLIC_CLOUD).map_err(|e| e.to_string())?,
        };
        if url.scheme() != "https" || url.cannot_be_a_base() {
            return Err(format!(
                "the authority host must be an https URL such as {AZURE_PUBLIC_CLOUD}, not {url}"
            ));
        }
        Ok(url)
    }

    fn service_principal_client_id(&self) -> Option<String> {
        self.client_id
            .clone()
            .or_else(|| self.env.var("AZURE_CLIENT_ID"))
    }

    /// Tenant, client id and authority, which every service principal kind needs.
    fn app(
        &self,
        credential: &'static str,
    ) -> Result<(String, String, Url), (&'static str, String)> {
        let tenant_id = self.tenant_id.clone().ok_or((
            credential,
            "AZURE_TENANT_ID is not set (nor --tenant-id)".to_owned(),
        ))?;
        let client_id = self.service_principal_client_id().ok_or((
            credential,
            "AZURE_CLIENT_ID is not set (nor --client-id)".to_owned(),
        ))?;
        let authority = self.authority().map_err(|message| (credential, message))?;
        Ok((tenant_id, client_id, authority))
    }

    fn client_secret(&self) -> Result<Plan, (&'static str, String)> {
        let (tenant_id, client_id, authority) = self.app(CLIENT_SECRET)?;
        let secret = self
            .env
            .var("AZURE_CLIENT_SECRET")
            .ok_or((CLIENT_SECRET, "AZURE_CLIENT_SECRET is not set".to_owned()))?;
        Ok(Plan::ClientSecret {
            tenant_id,
            client_id,
            secret: Secret::new(secret),
            authority,
        })
    }

    fn client_certificate(&self) -> Result<Plan, (&'static str, String)> {
        let (tenant_id, client_id, authority) = self.app(CLIENT_CERTIFICATE)?;
        let path = self.env.var("AZURE_CLIENT_CERTIFICATE_PATH").ok_or((
            CLIENT_CERTIFICATE,
            "AZURE_CLIENT_CERTIFICATE_PATH is not set".to_owned(),
        ))?;
        Ok(Plan::ClientCertificate {
            tenant_id,
            client_id,
            path: PathBuf::from(path),
            password: self
                .env
                .var("AZURE_CLIENT_CERTIFICATE_PASSWORD")
                .map(Secret::new),
            authority,
        })
    }

    fn workload_identity(&self) -> Result<Plan, (&'static str, String)> {
        let (tenant_id, client_id, authority) = self.app(WORKLOAD_IDENTITY)?;
        let token_file = self.env.var("AZURE_FEDERATED_TOKEN_FILE").ok_or((
            WORKLOAD_IDENTITY,
            "AZURE_FEDERATED_TOKEN_FILE is not set (is workload identity enabled for this pod?)"
                .to_owned(),
        ))?;
        Ok(Plan::WorkloadIdentity {
            tenant_id,
            client_id,
            token_file: PathBuf::from(token_file),
            authority,
        })
    }

    fn managed_identity(&self, probe: ImdsProbe) -> Result<Plan, (&'static str, String)> {
        let explicit: Vec<UserAssignedId> = [
            self.client_id.clone().map(UserAssignedId::ClientId),
            self.object_id.clone().map(UserAssignedId::ObjectId),
            self.resource_id.clone().map(UserAssignedId::ResourceId),
        ]
        .into_iter()
        .flatten()
        .collect();
        if explicit.len() > 1 {
            return Err((
                MANAGED_IDENTITY,
                "give at most one of --client-id, --object-id and --resource-id".to_owned(),
            ));
        }
        let id = explicit.into_iter().next().or_else(|| {
            self.env
                .var("AZURE_CLIENT_ID")
                .map(UserAssignedId::ClientId)
        });
        // Only IMDS, the fallback source, needs probing: the others announce themselves
        // through these variables (azure_identity reads the same ones).
        let announced = ["IDENTITY_ENDPOINT", "MSI_ENDPOINT"]
            .iter()
            .any(|key| self.env.var(key).is_some());
        Ok(Plan::ManagedIdentity {
            id,
            probe: (!announced).then_some(probe),
            imds_answered: AtomicBool::new(false),
        })
    }

    /// The `auto` chain, in DefaultAzureCredential's order. An `Err` step is skipped without
    /// any call, its reason kept for the log and the final error.
    fn auto_steps(&self) -> Vec<Step> {
        let reason = |r: Result<Plan, (&'static str, String)>| r.map_err(|(_, why)| why);
        let service_principal = if self.env.var("AZURE_CLIENT_SECRET").is_some() {
            reason(self.client_secret())
        } else if self.env.var("AZURE_CLIENT_CERTIFICATE_PATH").is_some() {
            reason(self.client_certificate())
        } else {
            Err("neither AZURE_CLIENT_SECRET nor AZURE_CLIENT_CERTIFICATE_PATH is set".to_owned())
        };
        let workload = if self.env.var("AZURE_FEDERATED_TOKEN_FILE").is_some() {
            reason(self.workload_identity())
        } else {
            Err("AZURE_FEDERATED_TOKEN_FILE is not set".to_owned())
        };
        vec![
            Step {
                label: "environment service principal",
                plan: service_principal,
            },
            Step {
                label: "workload identity",
                plan: workload,
            },
            Step {
                label: "managed identity",
                plan: reason(self.managed_identity(AUTO_IMDS_PROBE)),
            },
            Step {
                label: "Azure CLI",
                plan: Ok(Plan::AzureCli {
                    tenant_id: self.cli_tenant_id.clone(),
                }),
            },
            Step {
                label: "Azure Developer CLI",
                plan: Ok(Plan::Azd {
                    tenant_id: self.cli_tenant_id.clone(),
                }),
            },
        ]
    }
}

/// One configured credential: what it needs to build a fresh azure_identity credential.
#[derive(Debug)]
enum Plan {
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret: Secret,
        authority: Url,
    },
    ClientCertificate {
        tenant_id: String,
        client_id: String,
        path: PathBuf,
        password: Option<Secret>,
        authority: Url,
    },
    WorkloadIdentity {
        tenant_id: String,
        client_id: String,
        token_file: PathBuf,
        authority: Url,
    },
    ManagedIdentity {
        id: Option<UserAssignedId>,
        /// `Some`: IMDS is the source, probe it before the first acquisition.
        probe: Option<ImdsProbe>,
        /// IMDS has answered once: no need to probe again.
        imds_answered: AtomicBool,
    },
    AzureCli {
        tenant_id: Option<String>,
    },
    Azd {
        tenant_id: Option<String>,
    },
}

impl Plan {
    fn name(&self) -> &'static str {
        match self {
            Plan::ClientSecret { .. } => CLIENT_SECRET,
            Plan::ClientCertificate { .. } => CLIENT_CERTIFICATE,
            Plan::WorkloadIdentity { .. } => WORKLOAD_IDENTITY,
            Plan::ManagedIdentity { .. } => MANAGED_IDENTITY,
            Plan::AzureCli { .. } => AZURE_CLI,
            Plan::Azd { .. } => AZD,
        }
    }

    /// Acquires a brand-new token within the kind's deadline.
    async fn acquire(&self, ctx: &Ctx, scope: &str) -> Result<Token, AuthError> {
        let deadline = match self {
            Plan::AzureCli { .. } | Plan::Azd { .. } => CLI_DEADLINE,
            Plan::ManagedIdentity { probe: Some(_), .. } => IMDS_DEADLINE,
            _ => HTTP_DEADLINE,
        };
        match tokio::time::timeout(deadline, self.acquire_now(ctx, scope)).await {
            Ok(result) => result,
            Err(_) => Err(AuthError {
                credential: self.name().into(),
                message: format!("no token within {} s", deadline.as_secs()),
            }),
        }
    }

    async fn acquire_now(&self, ctx: &Ctx, scope: &str) -> Result<Token, AuthError> {
        let name = self.name();
        let fail = |message: String| AuthError {
            credential: name.into(),
            message,
        };
        let token = match self {
            Plan::ClientSecret {
                tenant_id,
                client_id,
                secret,
                authority,
            } => {
                let scrub = [secret.expose()];
                let options = ClientSecretCredentialOptions {
                    client_options: ctx.client_options(Some(authority)),
                };
                let credential = ClientSecretCredential::new(
                    tenant_id,
                    client_id.clone(),
                    azure_core::credentials::Secret::new(secret.expose().to_owned()),
                    Some(options),
                )
                .map_err(|e| fail(explain(&e, &scrub)))?;
                get_token(credential.as_ref(), scope, &scrub).await
            }
            Plan::ClientCertificate {
                tenant_id,
                client_id,
                path,
                password,
                authority,
            } => {
                // Read at every acquisition: a rotated certificate is picked up.
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|e| fail(read_error(path, &e)))?;
                let certificate =
                    load_certificate(&bytes, password.as_ref(), path).map_err(fail)?;
                let audience = token_endpoint(authority, tenant_id).map_err(fail)?;
                let assertion =
                    client_assertion(&certificate, client_id, &audience, SystemTime::now())
                        .map_err(fail)?;
                let scrub = [assertion.expose()];
                let options = ClientAssertionCredentialOptions {
                    client_options: ctx.client_options(Some(authority)),
                };
                let credential = ClientAssertionCredential::new(
                    tenant_id.clone(),
                    client_id.clone(),
                    FixedAssertion(assertion.clone()),
                    Some(options),
                )
                .map_err(|e| fail(explain(&e, &scrub)))?;
                get_token(credential.as_ref(), scope, &scrub).await
            }
            Plan::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
                authority,
            } => {
                // A new credential reads the token file anew (in `new`): the kubelet rotates
                // it, and a stale one is rejected with AADSTS700024.
                let options = WorkloadIdentityCredentialOptions {
                    credential_options: ClientAssertionCredentialOptions {
                        client_options: ctx.client_options(Some(authority)),
                    },
                    client_id: Some(client_id.clone()),
                    tenant_id: Some(tenant_id.clone()),
                    token_file_path: Some(token_file.clone()),
                };
                let credential = WorkloadIdentityCredential::new(Some(options))
                    .map_err(|e| fail(explain(&e, &[])))?;
                get_token(credential.as_ref(), scope, &[]).await
            }
            Plan::ManagedIdentity {
                id,
                probe,
                imds_answered,
            } => {
                if let Some(probe) = probe {
                    if !imds_answered.load(Ordering::Relaxed) {
                        probe.run(&ctx.imds_probe_url).await.map_err(fail)?;
                        imds_answered.store(true, Ordering::Relaxed);
                    }
                }
                let options = ManagedIdentityCredentialOptions {
                    user_assigned_id: id.clone(),
                    client_options: ctx.client_options(None),
                };
                let credential = ManagedIdentityCredential::new(Some(options))
                    .map_err(|e| fail(explain(&e, &[])))?;
                get_token(credential.as_ref(), scope, &[]).await
            }
            Plan::AzureCli { tenant_id } => {
                let options = AzureCliCredentialOptions {
                    tenant_id: tenant_id.clone(),
                    executor: Some(ctx.executor.clone()),
                    ..AzureCliCredentialOptions::default()
                };
                let credential =
                    AzureCliCredential::new(Some(options)).map_err(|e| fail(explain(&e, &[])))?;
                get_token(credential.as_ref(), scope, &[])
                    .await
                    .map_err(|message| {
                        cli_advice(message, "az", "Azure CLI", "az login", tenant_id)
                    })
            }
            Plan::Azd { tenant_id } => {
                let options = AzureDeveloperCliCredentialOptions {
                    tenant_id: tenant_id.clone(),
                    executor: Some(ctx.executor.clone()),
                };
                let credential = AzureDeveloperCliCredential::new(Some(options))
                    .map_err(|e| fail(explain(&e, &[])))?;
                get_token(credential.as_ref(), scope, &[])
                    .await
                    .map_err(|message| {
                        cli_advice(
                            message,
                            "azd",
                            "Azure Developer CLI",
                            "azd auth login",
                            tenant_id,
                        )
                    })
            }
        };
        token.map_err(fail)
    }
}

/// Asks `credential` once and converts the answer; the error is a readable message.
async fn get_token(
    credential: &dyn TokenCredential,
    scope: &str,
    scrub: &[&str],
) -> Result<Token, String> {
    let token: AccessToken = credential
        .get_token(&[scope], None)
        .await
        .map_err(|e| explain(&e, scrub))?;
    Ok(Token {
        secret: Secret::new(token.token.secret()),
        expires_at: SystemTime::from(token.expires_on),
    })
}

/// Rewrites a CLI credential's message into advice: what to install or which login to run.
fn cli_advice(
    message: String,
    tool: &str,
    product: &str,
    login: &str,
    tenant_id: &Option<String>,
) -> String {
    let command = match tenant_id {
        Some(tenant) if tool == "az" => format!("{login} --tenant {tenant}"),
        Some(tenant) => format!("{login} --tenant-id {tenant}"),
        None => login.to_owned(),
    };
    if message.contains("not found on PATH") || message.contains("wasn't found on PATH") {
        format!(
            "{product} not installed (`{tool}` not found on PATH): install it, then run `{command}`"
        )
    } else if message.contains(login) || message.contains("not logged in") {
        // The troubleshooting link adds nothing to "run az login".
        let said = message.split(" (see https://").next().unwrap_or_default();
        format!("{product} not logged in: run `{command}` ({tool} said: {said})")
    } else {
        message
    }
}

/// Turns an azure_identity error into one readable line: without the "X authentication
/// failed." prefix, with the HTTP status and the root cause azure_core keeps behind its
/// context messages, and with every string in `scrub` (secrets) replaced.
fn explain(err: &azure_core::Error, scrub: &[&str]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut link = None;
    let mut status = None;
    // azure_core's Display shows only the outermost context message: walk the causes for
    // the HTTP status and the root cause (connection refused, timed out, ...) too.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(core) = e.downcast_ref::<azure_core::Error>() {
            if let azure_core::error::ErrorKind::HttpResponse { status: s, .. } = core.kind() {
                status.get_or_insert(*s);
            }
        }
        let (text, troubleshoot) = strip_boilerplate(&e.to_string());
        link = link.or(troubleshoot);
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    let mut message = parts.join(": ");
    if let Some(status) = status {
        message = format!("identity endpoint answered HTTP {status}: {message}");
    }
    if let Some(link) = link {
        message.push_str(&format!(" (see {link})"));
    }
    redact(message, scrub)
}

/// Splits azure_identity's "`<Credential>` authentication failed. `<why>`\nTo troubleshoot,
/// visit `<link>`" into `<why>` (on one line) and the link.
fn strip_boilerplate(text: &str) -> (String, Option<String>) {
    const TROUBLESHOOT: &str = "To troubleshoot, visit ";
    let (body, link) = match text.split_once(TROUBLESHOOT) {
        Some((body, link)) => (body, Some(link.trim().to_owned())),
        None => (text, None),
    };
    let body = match body.split_once(" authentication failed.") {
        Some((prefix, rest)) if !prefix.trim().contains(' ') => rest,
        _ => body,
    };
    (one_line(body), link)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Replaces every occurrence of each secret (long enough to be one) with `<redacted>`.
fn redact(mut message: String, secrets: &[&str]) -> String {
    for secret in secrets {
        if secret.len() >= 8 && message.contains(secret) {
            message = message.replace(secret, "<redacted>");
        }
    }
    message
}

fn read_error(path: &Path, err: &std::io::Error) -> String {
    format!("cannot read {}: {err}", path.display())
}

/// How to check for IMDS before asking it for a token.
#[derive(Clone, Copy, Debug)]
struct ImdsProbe {
    timeout: Duration,
    /// Only an answer that looks like Azure IMDS's counts, not any HTTP answer.
    require_azure: bool,
}

impl ImdsProbe {
    /// Checks that IMDS answers: a refused or silent connection means there is none. No
    /// proxy: 169.254.169.254 is link-local.
    async fn run(&self, url: &Url) -> Result<(), String> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .build()
            .map_err(|e| format!("cannot build the IMDS probe client: {e}"))?;
        let host = url.host_str().unwrap_or("IMDS");
        match client.get(url.clone()).send().await {
            Ok(response) => {
                let status = response.status();
                let server = response
                    .headers()
                    .get(reqwest::header::SERVER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if !self.require_azure || status.as_u16() == 400 || server.starts_with("IMDS/") {
                    Ok(())
                } else {
                    Err(format!(
                        "no managed identity endpoint: {host} answered HTTP {} but not like \
                         Azure IMDS (another cloud's metadata service?) and IDENTITY_ENDPOINT \
                         is not set",
                        status.as_u16()
                    ))
                }
            }
            Err(e) => {
                let cause = if e.is_timeout() {
                    format!("no answer within {} ms", self.timeout.as_millis())
                } else {
                    crate::error::chain_text(&e)
                };
                Err(format!(
                    "no managed identity endpoint: IMDS ({host}) is unreachable ({cause}) and \
                     IDENTITY_ENDPOINT is not set; not an Azure VM, AKS node or App Service?"
                ))
            }
        }
    }
}

/// A credential chosen by `--credential`.
#[derive(Debug)]
struct Single {
    plan: Plan,
    ctx: Ctx,
}

impl Acquire for Single {
    fn acquire<'a>(&'a self, scope: &'a str) -> BoxFuture<'a, Result<Token, AuthError>> {
        self.plan.acquire(&self.ctx, scope).boxed()
    }

    fn name(&self) -> String {
        self.plan.name().into()
    }
}

/// One link of the `auto` chain.
#[derive(Debug)]
struct Step {
    /// What the log and the error call it.
    label: &'static str,
    /// `Err`: why it does not apply (no call is made).
    plan: Result<Plan, String>,
}

/// `--credential auto`: tries each step in order until one yields a token, then sticks to it.
#[derive(Debug)]
struct Auto {
    steps: Vec<Step>,
    ctx: Ctx,
    /// Index of the step that yielded the first token.
    chosen: OnceLock<usize>,
}

impl Auto {
    async fn acquire(&self, scope: &str) -> Result<Token, AuthError> {
        if let Some(plan) = self.chosen_plan() {
            return plan.acquire(&self.ctx, scope).await;
        }
        let mut skipped = Vec::new();
        for (index, step) in self.steps.iter().enumerate() {
            let plan = match &step.plan {
                Ok(plan) => plan,
                Err(why) => {
                    tracing::debug!(credential = step.label, reason = %why, "auto: skipped");
                    skipped.push(format!("{}: {why}", step.label));
                    continue;
                }
            };
            match plan.acquire(&self.ctx, scope).await {
                Ok(token) => {
                    let _ = self.chosen.set(index);
                    tracing::info!(
                        credential = plan.name(),
                        skipped = %skipped.join("; "),
                        "auto: using {} from now on",
                        plan.name()
                    );
                    return Ok(token);
                }
                Err(err) => {
                    tracing::debug!(credential = plan.name(), reason = %err.message, "auto: failed");
                    skipped.push(format!(
                        "{} ({}): {}",
                        step.label, err.credential, err.message
                    ));
                }
            }
        }
        Err(AuthError {
            credential: AUTO.into(),
            message: format!("no credential could get a token. {}", skipped.join("; ")),
        })
    }

    fn chosen_plan(&self) -> Option<&Plan> {
        let index = *self.chosen.get()?;
        self.steps.get(index)?.plan.as_ref().ok()
    }
}

impl Acquire for Auto {
    fn acquire<'a>(&'a self, scope: &'a str) -> BoxFuture<'a, Result<Token, AuthError>> {
        Auto::acquire(self, scope).boxed()
    }

    fn name(&self) -> String {
        self.chosen_plan().map_or(AUTO, Plan::name).into()
    }
}

/// A client assertion made before the credential was built.
#[derive(Clone)]
struct FixedAssertion(Secret);

impl fmt::Debug for FixedAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FixedAssertion(<redacted>)")
    }
}

#[async_trait::async_trait]
impl ClientAssertion for FixedAssertion {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        Ok(self.0.expose().to_owned())
    }
}

/// A certificate and its RSA private key.
struct CertificateKey {
    /// DER of the certificate whose public key matches `key`.
    certificate: Vec<u8>,
    key: RsaKeyPair,
}

impl fmt::Debug for CertificateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateKey")
            .field("certificate_len", &self.certificate.len())
            .finish_non_exhaustive()
    }
}

/// Loads a PEM (certificate and unencrypted private key) or PKCS#12 file.
fn load_certificate(
    bytes: &[u8],
    password: Option<&Secret>,
    path: &Path,
) -> Result<CertificateKey, String> {
    let is_pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    let (certificates, key) = if is_pem {
        load_pem(bytes, path)?
    } else {
        load_pkcs12(bytes, password, path)?
    };
    let public_key = key.public_key().as_ref();
    // The certificate for the key is the one embedding its public key (the file may hold
    // the chain too, in any order).
    let certificate = certificates
        .into_iter()
        .find(|der| der.windows(public_key.len()).any(|w| w == public_key))
        .ok_or_else(|| {
            format!(
                "no certificate in {} matches its private key",
                path.display()
            )
        })?;
    Ok(CertificateKey { certificate, key })
}

fn load_pem(bytes: &[u8], path: &Path) -> Result<(Vec<Vec<u8>>, RsaKeyPair), String> {
    use rustls_pki_types::pem::{PemObject as _, SectionKind};
    let mut certificates = Vec::new();
    let mut key = None;
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
        let (kind, der) = item.map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
        match kind {
            SectionKind::Certificate => certificates.push(der),
            SectionKind::PrivateKey if key.is_none() => {
                key = Some(RsaKeyPair::from_pkcs8(&der).map_err(|e| not_rsa(path, e))?);
            }
            SectionKind::RsaPrivateKey if key.is_none() => {
                key = Some(RsaKeyPair::from_der(&der).map_err(|e| not_rsa(path, e))?);
            }
            SectionKind::EcPrivateKey => {
                return Err(not_rsa(path, "it holds an EC key"));
            }
            _ => {}
        }
    }
    let key = key.ok_or_else(|| {
        if bytes.windows(21).any(|w| w == b"ENCRYPTED PRIVATE KEY") {
            format!(
                "{}: encrypted PEM private keys are not supported; use a PKCS#12 file with \
                 AZURE_CLIENT_CERTIFICATE_PASSWORD, or an unencrypted PEM key",
                path.display()
            )
        } else {
            format!("{} holds no private key", path.display())
        }
    })?;
    if certificates.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok((certificates, key))
}

fn load_pkcs12(
    bytes: &[u8],
    password: Option<&Secret>,
    path: &Path,
) -> Result<(Vec<Vec<u8>>, RsaKeyPair), String> {
    use p12_keystore::{KeyStore, KeyStoreEntry, Pkcs12ImportPolicy};
    let password = password.map_or("", Secret::expose);
    let store = KeyStore::from_pkcs12(bytes, password, Pkcs12ImportPolicy::Relaxed).map_err(|e| {
        format!(
            "cannot open {} as PKCS#12 (or PEM): {e}; is AZURE_CLIENT_CERTIFICATE_PASSWORD right?",
            path.display()
        )
    })?;
    let (_, chain) = store
        .private_key_chain()
        .ok_or_else(|| format!("{} holds no private key", path.display()))?;
    let key = RsaKeyPair::from_pkcs8(chain.key().as_der()).map_err(|e| not_rsa(path, e))?;
    let mut certificates: Vec<Vec<u8>> =
        chain.certs().iter().map(|c| c.as_der().to_vec()).collect();
    certificates.extend(store.entries().filter_map(|(_, entry)| match entry {
        KeyStoreEntry::Certificate(c) => Some(c.as_der().to_vec()),
        _ => None,
    }));
    Ok((certificates, key))
}

fn not_rsa(path: &Path, why: impl fmt::Display) -> String {
    format!(
        "the private key in {} is not a usable RSA key ({why}); Entra certificate credentials need RSA",
        path.display()
    )
}

/// `{authority}/{tenant}/oauth2/v2.0/token`, the audience of a client assertion (the same
/// URL azure_identity posts to).
fn token_endpoint(authority: &Url, tenant_id: &str) -> Result<String, String> {
    let mut url = authority.clone();
    url.path_segments_mut()
        .map_err(|()| format!("the authority host {authority} cannot take a path"))?
        .clear()
        .extend([tenant_id, "oauth2", "v2.0", "token"]);
    Ok(url.to_string())
}

/// A JWT client assertion signed with the certificate's key, in the form Entra documents:
/// header `{"alg":"PS256","typ":"JWT","x5t#S256":<SHA-256 thumbprint>}`, claims
/// aud/iss/sub/jti/nbf/iat/exp.
fn client_assertion(
    certificate: &CertificateKey,
    client_id: &str,
    audience: &str,
    now: SystemTime,
) -> Result<Secret, String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let thumbprint = digest::digest(&digest::SHA256, &certificate.certificate);
    let header = serde_json::json!({
        "alg": "PS256",
        "typ": "JWT",
        "x5t#S256": b64.encode(thumbprint.as_ref()),
    });
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the system clock is before 1970".to_owned())?
        .as_secs();
    let mut jti = [0u8; 16];
    aws_lc_rs::rand::fill(&mut jti).map_err(|_| "no randomness for the assertion id".to_owned())?;
    let claims = serde_json::json!({
        "aud": audience,
        "iss": client_id,
        "sub": client_id,
        "jti": uuid_v4(jti),
        "nbf": now,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME_SECS,
    });
    let signing_input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let mut signature = vec![0; certificate.key.public_modulus_len()];
    certificate
        .key
        .sign(
            &RSA_PSS_SHA256,
            &SystemRandom::new(),
            signing_input.as_bytes(),
            &mut signature,
        )
        .map_err(|_| "signing the client assertion failed".to_owned())?;
    Ok(Secret::new(format!(
        "{signing_input}.{}",
        b64.encode(signature)
    )))
}

/// Formats 16 random bytes as a version 4 UUID, Entra's suggested `jti`.
fn uuid_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    const SCOPE: &str = "https://cognitiveservices.azure.com/.default";
    const TENANT: &str = "tenant-1";
    const CLIENT: &str = "client-1";
    const CLIENT_SECRET_VALUE: &str = "very-secret-client-secret";

    /// One request the fake token endpoint received: its path and form fields.
    type Seen = (String, HashMap<String, String>);

    /// A local HTTPS Entra token endpoint, trusted by `transport` only.
    struct FakeSts {
        authority: Url,
        transport: Transport,
        seen: Arc<Mutex<Vec<Seen>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for FakeSts {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl FakeSts {
        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    /// Starts a fake token endpoint. `reject`: answer every request like Entra does for a
    /// wrong client secret. Otherwise each answer carries a new token, `sts-token-<n>`.
    async fn fake_sts(reject: bool) -> FakeSts {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();

        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                // Connections live in the set, so aborting this task ends them too.
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let (acceptor, seen) = (acceptor.clone(), seen.clone());
                    connections.spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = hyper::service::service_fn(move |request| {
                            answer(request, seen.clone(), reject)
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            }
        });

        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_der(ca.der()).unwrap()])
            .no_proxy()
            .build()
            .unwrap();
        FakeSts {
            authority: Url::parse(&format!("https://127.0.0.1:{port}")).unwrap(),
            transport: Transport::new(Arc::new(client)),
            seen,
            task,
        }
    }

    async fn answer(
        request: hyper::Request<hyper::body::Incoming>,
        seen: Arc<Mutex<Vec<Seen>>>,
        reject: bool,
    ) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
        let path = request.uri().path().to_owned();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let form = url::form_urlencoded::parse(&body).into_owned().collect();
        let n = {
            let mut seen = seen.lock().unwrap();
            seen.push((path, form));
            seen.len()
        };
        let (status, body) = if reject {
            (
                401,
                serde_json::json!({
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided.",
                    "error_codes": [7000215],
                }),
            )
        } else {
            (
                200,
                serde_json::json!({
                    "token_type": "Bearer",
                    "expires_in": 3600,
                    "ext_expires_in": 3600,
                    "access_token": format!("sts-token-{n}"),
                }),
            )
        };
        Ok(hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap())
    }

    /// Runs the `/bin/sh -c "cd /bin && az ..."` it is given with `PATH` set to one directory
    /// (per child: the process environment is untouched), recording each command line.
    #[derive(Debug)]
    struct ScriptExecutor {
        path: PathBuf,
        commands: Mutex<Vec<String>>,
        calls: AtomicUsize,
    }

    impl ScriptExecutor {
        fn new(path: &Path) -> Arc<Self> {
            Arc::new(Self {
                path: path.to_owned(),
                commands: Mutex::default(),
                calls: AtomicUsize::new(0),
            })
        }

        fn commands(&self) -> Vec<String> {
            self.commands.lock().unwrap().clone()
        }
    }

    #[async_trait::async_trait]
    impl Executor for ScriptExecutor {
        async fn run(
            &self,
            program: &OsStr,
            args: &[&OsStr],
        ) -> std::io::Result<std::process::Output> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let line: Vec<String> = args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            self.commands.lock().unwrap().push(line.join(" "));
            tokio::process::Command::new(program)
                .args(args)
                .env("PATH", &self.path)
                .env("FAKE_CALL", call.to_string())
                .output()
                .await
        }
    }

    /// Writes an executable shell script `name` into `dir`.
    fn script(dir: &Path, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    const FAKE_AZ: &str = r#"printf '{"accessToken":"cli-token-%s","expires_on":4102444800,"tokenType":"Bearer"}\n' "$FAKE_CALL""#;
    const FAKE_AZD: &str =
        r#"printf '{"token":"azd-token-%s","expiresOn":"2100-01-01T00:00:00Z"}\n' "$FAKE_CALL""#;

    /// A URL nothing listens on: the IMDS probe is refused at once.
    async fn closed_port_url() -> Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        Url::parse(&format!(
            "http://127.0.0.1:{port}/metadata/identity/oauth2/token"
        ))
        .unwrap()
    }

    /// Settings for `kind` with exactly `vars` as the environment, the fake token endpoint as
    /// authority and transport, `executor` for the CLIs, and no IMDS.
    async fn settings(
        kind: CredentialKind,
        sts: Option<&FakeSts>,
        executor: Arc<dyn Executor>,
        vars: &[(&str, &str)],
    ) -> CredentialSettings {
        let mut vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        if let Some(sts) = sts {
            vars.push(("AZURE_AUTHORITY_HOST".into(), sts.authority.to_string()));
        }
        CredentialSettings {
            kind,
            env: Env::from_vars(vars),
            hooks: Hooks {
                transport: sts.map(|s| s.transport.clone()),
                executor: Some(executor),
                imds_probe_url: Some(closed_port_url().await),
            },
            ..CredentialSettings::default()
        }
    }

    fn no_cli() -> (tempfile::TempDir, Arc<ScriptExecutor>) {
        let dir = tempfile::tempdir().unwrap();
        let executor = ScriptExecutor::new(dir.path());
        (dir, executor)
    }

    fn sp_vars() -> Vec<(&'static str, &'static str)> {
        vec![
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", CLIENT),
            ("AZURE_CLIENT_SECRET", CLIENT_SECRET_VALUE),
        ]
    }

    #[tokio::test]
    async fn client_secret_gets_a_brand_new_token_each_time() {
        let sts = fake_sts(false).await;
        let (_dir, cli) = no_cli();
        let settings = settings(CredentialKind::ClientSecret, Some(&sts), cli, &sp_vars()).await;
        let credential = from_settings(&settings).unwrap();
        assert_eq!(credential.name(), "ClientSecretCredential");

        let first = credential.acquire(SCOPE).await.unwrap();
        let second = credential.acquire(SCOPE).await.unwrap();
        // azure_identity would have served the first token again from its cache.
        assert_eq!(first.secret.expose(), "sts-token-1");
        assert_eq!(second.secret.expose(), "sts-token-2");
        let lifetime = first.expires_at.duration_since(SystemTime::now()).unwrap();
        assert!(lifetime > Duration::from_secs(3500) && lifetime <= Duration::from_secs(3600));

        let seen = sts.seen();
        assert_eq!(seen.len(), 2);
        let (path, form) = &seen[0];
        assert_eq!(path, "/tenant-1/oauth2/v2.0/token");
        assert_eq!(form["grant_type"], "client_credentials");
        assert_eq!(form["client_id"], CLIENT);
        assert_eq!(form["client_secret"], CLIENT_SECRET_VALUE);
        assert_eq!(form["scope"], SCOPE);
    }

    #[tokio::test]
    async fn settings_override_the_environment() {
        let sts = fake_sts(false).await;
        let (_dir, cli) = no_cli();
        let mut settings =
            settings(CredentialKind::ClientSecret, Some(&sts), cli, &sp_vars()).await;
        settings.tenant_id = Some("tenant-2".into());
        settings.client_id = Some("client-2".into());
        settings.authority_host = Some(sts.authority.clone());
        settings.env = Env::from_vars([
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", CLIENT),
            ("AZURE_CLIENT_SECRET", CLIENT_SECRET_VALUE),
            // Would fail the https check if it were used.
            ("AZURE_AUTHORITY_HOST", "http://login.invalid"),
        ]);
        from_settings(&settings)
            .unwrap()
            .acquire(SCOPE)
            .await
            .unwrap();
        let (path, form) = &sts.seen()[0];
        assert_eq!(path, "/tenant-2/oauth2/v2.0/token");
        assert_eq!(form["client_id"], "client-2");
    }

    #[tokio::test]
    async fn a_rejected_secret_reads_well_and_never_shows_the_secret() {
        let sts = fake_sts(true).await;
        let (_dir, cli) = no_cli();
        let settings = settings(CredentialKind::ClientSecret, Some(&sts), cli, &sp_vars()).await;
        let err = from_settings(&settings)
            .unwrap()
            .acquire(SCOPE)
            .await
            .unwrap_err();
        assert_eq!(err.credential, "ClientSecretCredential");
        assert!(err.message.contains("HTTP 401"), "{}", err.message);
        assert!(err.message.contains("AADSTS7000215"), "{}", err.message);
        assert!(
            !err.message.contains("authentication failed."),
            "{}",
            err.message
        );
        assert!(!err.message.contains(CLIENT_SECRET_VALUE));
        // A 401 is not retried.
        assert_eq!(sts.seen().len(), 1);
    }

    #[tokio::test]
    async fn an_unreachable_token_endpoint_fails_in_seconds() {
        let sts = fake_sts(false).await;
        let (_dir, cli) = no_cli();
        let mut settings =
            settings(CredentialKind::ClientSecret, Some(&sts), cli, &sp_vars()).await;
        // Same TLS client, but a port where nothing listens.
        let dead = closed_port_url().await;
        settings.authority_host =
            Some(Url::parse(&format!("https://127.0.0.1:{}", dead.port().unwrap())).unwrap());
        let started = std::time::Instant::now();
        let err = from_settings(&settings)
            .unwrap()
            .acquire(SCOPE)
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(
            err.message.to_lowercase().contains("connect"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn workload_identity_rereads_the_federated_token_file() {
        let sts = fake_sts(false).await;
        let (dir, cli) = no_cli();
        let token_file = dir.path().join("azure-identity-token");
        std::fs::write(&token_file, "federated-token-one").unwrap();
        let vars = [
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", CLIENT),
            ("AZURE_FEDERATED_TOKEN_FILE", token_file.to_str().unwrap()),
        ];
        let settings = settings(CredentialKind::WorkloadIdentity, Some(&sts), cli, &vars).await;
        let credential = from_settings(&settings).unwrap();
        assert_eq!(credential.name(), "WorkloadIdentityCredential");

        let first = credential.acquire(SCOPE).await.unwrap();
        std::fs::write(&token_file, "federated-token-two").unwrap(); // the kubelet rotates it
        let second = credential.acquire(SCOPE).await.unwrap();
        assert_ne!(first.secret, second.secret);

        let seen = sts.seen();
        assert_eq!(seen[0].0, "/tenant-1/oauth2/v2.0/token");
        assert_eq!(seen[0].1["client_assertion"], "federated-token-one");
        assert_eq!(seen[1].1["client_assertion"], "federated-token-two");
        assert_eq!(
            seen[0].1["client_assertion_type"],
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        );
        assert_eq!(seen[0].1["client_id"], CLIENT);
    }

    /// An RSA key and a self-signed certificate for it.
    fn rsa_certificate() -> (rcgen::KeyPair, rcgen::Certificate) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["keyless-test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (key, cert)
    }

    /// Checks a client assertion: header, claims, and the PS256 signature.
    fn check_assertion(
        assertion: &str,
        key: &rcgen::KeyPair,
        cert: &rcgen::Certificate,
        sts: &FakeSts,
    ) {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let parts: Vec<&str> = assertion.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
        let thumbprint = digest::digest(&digest::SHA256, cert.der());
        assert_eq!(header["alg"], "PS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["x5t#S256"], b64.encode(thumbprint.as_ref()));

        let claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            claims["aud"],
            format!("{}tenant-1/oauth2/v2.0/token", sts.authority)
        );
        assert_eq!(claims["iss"], CLIENT);
        assert_eq!(claims["sub"], CLIENT);
        assert_eq!(claims["jti"].as_str().unwrap().len(), 36);
        let (nbf, exp) = (
            claims["nbf"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert_eq!(exp - nbf, ASSERTION_LIFETIME_SECS);

        let public_key = RsaKeyPair::from_pkcs8(&key.serialize_der()).unwrap();
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256,
            public_key.public_key().as_ref(),
        )
        .verify(
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &b64.decode(parts[2]).unwrap(),
        )
        .unwrap();
    }

    #[tokio::test]
    async fn client_certificate_pem_sends_a_signed_assertion() {
        let sts = fake_sts(false).await;
        let (dir, cli) = no_cli();
        let (key, cert) = rsa_certificate();
        let path = dir.path().join("client.pem");
        // Key first, then the certificate: the order in the file does not matter.
        std::fs::write(&path, format!("{}{}", key.serialize_pem(), cert.pem())).unwrap();
        let vars = [
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", CLIENT),
            ("AZURE_CLIENT_CERTIFICATE_PATH", path.to_str().unwrap()),
        ];
        let settings = settings(CredentialKind::ClientCertificate, Some(&sts), cli, &vars).await;
        let credential = from_settings(&settings).unwrap();
        assert_eq!(credential.name(), "ClientCertificateCredential");
        let first = credential.acquire(SCOPE).await.unwrap();
        let second = credential.acquire(SCOPE).await.unwrap();
        assert_ne!(first.secret, second.secret);

        let seen = sts.seen();
        let form = &seen[0].1;
        assert_eq!(form["client_id"], CLIENT);
        assert_eq!(form["grant_type"], "client_credentials");
        check_assertion(&form["client_assertion"], &key, &cert, &sts);
        // A new assertion (jti) per acquisition.
        assert_ne!(seen[0].1["client_assertion"], seen[1].1["client_assertion"]);
    }

    #[tokio::test]
    async fn client_certificate_pkcs12_with_password() {
        use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
        let sts = fake_sts(false).await;
        let (dir, cli) = no_cli();
        let (key, cert) = rsa_certificate();
        let mut store = KeyStore::new();
        let chain = PrivateKeyChain::new(
            b"client-key".as_slice(),
            PrivateKey::from_der(&key.serialize_der()).unwrap(),
            [Certificate::from_der(cert.der()).unwrap()],
        );
        store.add_entry("client", KeyStoreEntry::PrivateKeyChain(chain));
        let path = dir.path().join("client.pfx");
        std::fs::write(&path, store.writer("pfx-password").write().unwrap()).unwrap();
        let vars = [
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", CLIENT),
            ("AZURE_CLIENT_CERTIFICATE_PATH", path.to_str().unwrap()),
            ("AZURE_CLIENT_CERTIFICATE_PASSWORD", "pfx-password"),
        ];
        let settings = settings(CredentialKind::ClientCertificate, Some(&sts), cli, &vars).await;
        from_settings(&settings)
            .unwrap()
            .acquire(SCOPE)
            .await
            .unwrap();
        check_assertion(&sts.seen()[0].1["client_assertion"], &key, &cert, &sts);

        // A wrong password is a start-up error that names the variable, not the password.
        let mut wrong = settings.clone();
        wrong.env = Env::from_vars([
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", CLIENT),
            ("AZURE_CLIENT_CERTIFICATE_PATH", path.to_str().unwrap()),
            ("AZURE_CLIENT_CERTIFICATE_PASSWORD", "not-the-password"),
        ]);
        let err = from_settings(&wrong).err().unwrap();
        assert_eq!(err.credential, "ClientCertificateCredential");
        assert!(
            err.message.contains("AZURE_CLIENT_CERTIFICATE_PASSWORD"),
            "{}",
            err.message
        );
        assert!(!err.message.contains("not-the-password"));
    }

    #[tokio::test]
    async fn client_certificate_file_problems_are_start_up_errors() {
        let (dir, cli) = no_cli();
        let path = dir.path().join("client.pem");
        let vars = |path: &Path| {
            vec![
                ("AZURE_TENANT_ID".to_owned(), TENANT.to_owned()),
                ("AZURE_CLIENT_ID".to_owned(), CLIENT.to_owned()),
                (
                    "AZURE_CLIENT_CERTIFICATE_PATH".to_owned(),
                    path.display().to_string(),
                ),
            ]
        };
        let mut settings = settings(CredentialKind::ClientCertificate, None, cli, &[]).await;
        settings.env = Env::from_vars(vars(&path));
        let err = from_settings(&settings).err().unwrap();
        assert!(err.message.contains("cannot read"), "{}", err.message);

        // A certificate without its key.
        let (_, cert) = rsa_certificate();
        std::fs::write(&path, cert.pem()).unwrap();
        let err = from_settings(&settings).err().unwrap();
        assert!(err.message.contains("no private key"), "{}", err.message);

        // A key with someone else's certificate.
        let (key, _) = rsa_certificate();
        std::fs::write(&path, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
        let err = from_settings(&settings).err().unwrap();
        assert!(
            err.message.contains("matches its private key"),
            "{}",
            err.message
        );

        // EC keys cannot sign Entra assertions.
        let ec_key = rcgen::KeyPair::generate().unwrap();
        let ec_cert = rcgen::CertificateParams::new(vec!["x".to_owned()])
            .unwrap()
            .self_signed(&ec_key)
            .unwrap();
        std::fs::write(
            &path,
            format!("{}{}", ec_cert.pem(), ec_key.serialize_pem()),
        )
        .unwrap();
        let err = from_settings(&settings).err().unwrap();
        assert!(err.message.contains("RSA"), "{}", err.message);
    }

    #[tokio::test]
    async fn azure_cli_passes_the_tenant_and_gets_a_new_token_each_time() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "az", FAKE_AZ);
        let cli = ScriptExecutor::new(dir.path());
        let mut settings = settings(CredentialKind::AzureCli, None, cli.clone(), &[]).await;
        settings.tenant_id = Some("tenant-9".into());
        let credential = from_settings(&settings).unwrap();
        assert_eq!(credential.name(), "AzureCliCredential");

        let first = credential.acquire(SCOPE).await.unwrap();
        let second = credential.acquire(SCOPE).await.unwrap();
        assert_eq!(first.secret.expose(), "cli-token-1");
        assert_eq!(second.secret.expose(), "cli-token-2");
        assert_eq!(
            first.expires_at,
            UNIX_EPOCH + Duration::from_secs(4_102_444_800)
        );
        let commands = cli.commands();
        assert_eq!(
            commands[0],
            format!(
                "-c cd /bin && az account get-access-token -o json --scope {SCOPE} --tenant tenant-9"
            )
        );
    }

    #[tokio::test]
    async fn azure_cli_errors_say_what_to_do() {
        // Not installed.
        let (_dir, cli) = no_cli();
        let settings = settings(CredentialKind::AzureCli, None, cli, &[]).await;
        let err = from_settings(&settings)
            .unwrap()
            .acquire(SCOPE)
            .await
            .unwrap_err();
        assert_eq!(err.credential, "AzureCliCredential");
        assert!(
            err.message.starts_with("Azure CLI not installed"),
            "{}",
            err.message
        );
        assert!(err.message.contains("`az login`"), "{}", err.message);

        // Installed, not logged in.
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "az",
            r#"echo "ERROR: Please run 'az login' to setup account." >&2; exit 1"#,
        );
        let settings = settings_with_executor(settings, ScriptExecutor::new(dir.path()));
        let err = from_settings(&settings)
            .unwrap()
            .acquire(SCOPE)
            .await
            .unwrap_err();
        assert!(
            err.message
                .starts_with("Azure CLI not logged in: run `az login`"),
            "{}",
            err.message
        );
    }

    fn settings_with_executor(
        mut settings: CredentialSettings,
        executor: Arc<dyn Executor>,
    ) -> CredentialSettings {
        settings.hooks.executor = Some(executor);
        settings
    }

    #[tokio::test]
    async fn azd_passes_the_tenant() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "azd", FAKE_AZD);
        let cli = ScriptExecutor::new(dir.path());
        let mut settings = settings(CredentialKind::Azd, None, cli.clone(), &[]).await;
        settings.tenant_id = Some("tenant-9".into());
        let credential = from_settings(&settings).unwrap();
        assert_eq!(credential.name(), "AzureDeveloperCliCredential");
        assert_eq!(
            credential.acquire(SCOPE).await.unwrap().secret.expose(),
            "azd-token-1"
        );
        assert_eq!(
            credential.acquire(SCOPE).await.unwrap().secret.expose(),
            "azd-token-2"
        );
        assert!(
            cli.commands()[0].ends_with(&format!(
                "azd auth token -o json --no-prompt --scope {SCOPE} --tenant-id tenant-9"
            )),
            "{:?}",
            cli.commands()
        );

        let (_empty, missing) = no_cli();
        let settings = settings_with_executor(settings, missing);
        let err = from_settings(&settings)
            .unwrap()
            .acquire(SCOPE)
            .await
            .unwrap_err();
        assert!(
            err.message.starts_with("Azure Developer CLI not installed"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("azd auth login --tenant-id tenant-9"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn auto_with_nothing_available_says_why_for_each() {
        let (_dir, cli) = no_cli();
        let settings = settings(CredentialKind::Auto, None, cli, &[]).await;
        let credential = from_settings(&settings).unwrap();
        assert_eq!(credential.name(), "auto");
        let started = std::time::Instant::now();
        let err = credential.acquire(SCOPE).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(err.credential, "auto");
        for expected in [
            "environment service principal: neither AZURE_CLIENT_SECRET nor AZURE_CLIENT_CERTIFICATE_PATH is set",
            "workload identity: AZURE_FEDERATED_TOKEN_FILE is not set",
            "managed identity (ManagedIdentityCredential): no managed identity endpoint",
            "Azure CLI (AzureCliCredential): Azure CLI not installed",
            "Azure Developer CLI (AzureDeveloperCliCredential): Azure Developer CLI not installed",
        ] {
            assert!(
                err.message.contains(expected),
                "missing {expected:?} in {}",
                err.message
            );
        }
        assert_eq!(credential.name(), "auto");
    }

    #[tokio::test]
    async fn auto_skips_a_metadata_service_that_is_not_azure_imds() {
        // Another cloud's metadata service on the probe address answers 404.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                connections.spawn(async move {
                    let service = hyper::service::service_fn(|_| async {
                        hyper::Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::from_static(b"not found")))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        let (_dir, cli) = no_cli();
        let mut settings = settings(CredentialKind::Auto, None, cli, &[]).await;
        settings.hooks.imds_probe_url = Some(
            Url::parse(&format!(
                "http://127.0.0.1:{port}/metadata/identity/oauth2/token"
            ))
            .unwrap(),
        );
        let err = from_settings(&settings)
            .unwrap()
            .acquire(SCOPE)
            .await
            .unwrap_err();
        server.abort();
        assert!(
            err.message
                .contains("answered HTTP 404 but not like Azure IMDS"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn auto_chooses_the_environment_service_principal() {
        let sts = fake_sts(false).await;
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "az", FAKE_AZ);
        let cli = ScriptExecutor::new(dir.path());
        let settings = settings(CredentialKind::Auto, Some(&sts), cli.clone(), &sp_vars()).await;
        let credential = from_settings(&settings).unwrap();
        let token = credential.acquire(SCOPE).await.unwrap();
        assert_eq!(token.secret.expose(), "sts-token-1");
        assert_eq!(credential.name(), "ClientSecretCredential");
        assert!(cli.commands().is_empty());
    }

    #[tokio::test]
    async fn auto_falls_through_then_sticks_to_its_choice() {
        // The service principal is configured but rejected; the Azure CLI works.
        let sts = fake_sts(true).await;
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "az", FAKE_AZ);
        let cli = ScriptExecutor::new(dir.path());
        let settings = settings(CredentialKind::Auto, Some(&sts), cli.clone(), &sp_vars()).await;
        let credential = from_settings(&settings).unwrap();

        assert_eq!(
            credential.acquire(SCOPE).await.unwrap().secret.expose(),
            "cli-token-1"
        );
        assert_eq!(credential.name(), "AzureCliCredential");
        assert_eq!(
            credential.acquire(SCOPE).await.unwrap().secret.expose(),
            "cli-token-2"
        );
        // The service principal was tried once, before the choice, never after.
        assert_eq!(sts.seen().len(), 1);
        assert_eq!(cli.commands().len(), 2);
    }

    #[tokio::test]
    async fn auto_with_a_federated_token_file_uses_workload_identity() {
        let sts = fake_sts(false).await;
        let (dir, cli) = no_cli();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "federated").unwrap();
        let vars = [
            ("AZURE_TENANT_ID", TENANT),
            ("AZURE_CLIENT_ID", CLIENT),
            ("AZURE_FEDERATED_TOKEN_FILE", token_file.to_str().unwrap()),
        ];
        let settings = settings(CredentialKind::Auto, Some(&sts), cli, &vars).await;
        let credential = from_settings(&settings).unwrap();
        credential.acquire(SCOPE).await.unwrap();
        assert_eq!(credential.name(), "WorkloadIdentityCredential");
    }

    #[tokio::test]
    async fn explicit_kinds_report_missing_configuration_at_start_up() {
        let (_dir, cli) = no_cli();
        let base = settings(CredentialKind::ClientSecret, None, cli, &[]).await;
        let with = |kind, vars: &[(&str, &str)]| {
            let mut settings = base.clone();
            settings.kind = kind;
            settings.env = Env::from_vars(vars.iter().copied());
            settings
        };

        let err = from_settings(&with(
            CredentialKind::ClientSecret,
            &[("AZURE_CLIENT_ID", CLIENT)],
        ))
        .err()
        .unwrap();
        assert_eq!(err.credential, "ClientSecretCredential");
        assert!(err.message.contains("AZURE_TENANT_ID"), "{}", err.message);

        let err = from_settings(&with(
            CredentialKind::ClientSecret,
            &[("AZURE_TENANT_ID", TENANT), ("AZURE_CLIENT_ID", CLIENT)],
        ))
        .err()
        .unwrap();
        assert!(
            err.message.contains("AZURE_CLIENT_SECRET"),
            "{}",
            err.message
        );

        let mut vars = sp_vars();
        vars.push(("AZURE_AUTHORITY_HOST", "http://login.microsoftonline.com"));
        let err = from_settings(&with(CredentialKind::ClientSecret, &vars))
            .err()
            .unwrap();
        assert!(err.message.contains("https"), "{}", err.message);
        let err = from_settings(&with(CredentialKind::Auto, &vars))
            .err()
            .unwrap();
        assert!(err.message.contains("https"), "{}", err.message);

        let err = from_settings(&with(
            CredentialKind::WorkloadIdentity,
            &[("AZURE_TENANT_ID", TENANT), ("AZURE_CLIENT_ID", CLIENT)],
        ))
        .err()
        .unwrap();
        assert!(
            err.message.contains("AZURE_FEDERATED_TOKEN_FILE"),
            "{}",
            err.message
        );

        let mut two_ids = with(CredentialKind::ManagedIdentity, &[]);
        two_ids.client_id = Some("c".into());
        two_ids.object_id = Some("o".into());
        let err = from_settings(&two_ids).err().unwrap();
        assert_eq!(err.credential, "ManagedIdentityCredential");
        assert!(err.message.contains("at most one"), "{}", err.message);
    }

    #[tokio::test]
    async fn managed_identity_without_an_endpoint_fails_fast() {
        let (_dir, cli) = no_cli();
        let settings = settings(CredentialKind::ManagedIdentity, None, cli, &[]).await;
        let started = std::time::Instant::now();
        let err = from_settings(&settings)
            .unwrap()
            .acquire(SCOPE)
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(err.credential, "ManagedIdentityCredential");
        assert!(
            err.message.contains("no managed identity endpoint"),
            "{}",
            err.message
        );
    }

    #[test]
    fn user_assigned_identity_comes_from_settings_or_azure_client_id() {
        let inputs = |settings: &CredentialSettings| Inputs::new(settings);
        let id = |settings: &CredentialSettings| match inputs(settings)
            .managed_identity(AUTO_IMDS_PROBE)
        {
            Ok(Plan::ManagedIdentity { id, .. }) => format!("{id:?}"),
            other => panic!("{other:?}"),
        };
        let mut settings = CredentialSettings {
            env: Env::from_vars([("AZURE_CLIENT_ID", "from-env")]),
            ..CredentialSettings::default()
        };
        assert_eq!(id(&settings), r#"Some(ClientId("from-env"))"#);
        settings.resource_id = Some("/subscriptions/s/rg/r".into());
        assert_eq!(
            id(&settings),
            r#"Some(ResourceId("/subscriptions/s/rg/r"))"#
        );
        settings.resource_id = None;
        settings.object_id = Some("oid".into());
        assert_eq!(id(&settings), r#"Some(ObjectId("oid"))"#);
        settings.env = Env::from_vars(Vec::<(String, String)>::new());
        settings.object_id = None;
        assert_eq!(id(&settings), "None");
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let settings = CredentialSettings {
            env: Env::from_vars(sp_vars()),
            ..CredentialSettings::default()
        };
        let debug = format!("{settings:?}");
        assert!(debug.contains("AZURE_CLIENT_SECRET"), "{debug}");
        assert!(!debug.contains(CLIENT_SECRET_VALUE), "{debug}");

        let plan = Inputs::new(&settings).client_secret().unwrap();
        assert!(!format!("{plan:?}").contains(CLIENT_SECRET_VALUE));
        let assertion = FixedAssertion(Secret::new("header.claims.signature"));
        assert!(!format!("{assertion:?}").contains("claims"));
    }

    #[test]
    fn describe_token_reads_jwt_claims() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = serde_json::json!({
            "aud": "https://cognitiveservices.azure.com",
            "tid": "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "oid": "00000000-0000-0000-0000-00000000000a",
            "appid": "04b07795-8ddb-461a-bbee-02f9e1bf7b46",
            "upn": "alice@contoso.com",
            "exp": 1_900_000_000u64,
        });
        let jwt = format!(
            "{}.{}.signature",
            b64.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            b64.encode(claims.to_string())
        );
        let token = Token {
            secret: Secret::new(jwt.as_str()),
            expires_at: UNIX_EPOCH,
        };
        let info = describe_token(&token);
        assert_eq!(
            info.tenant_id.as_deref(),
            Some("72f988bf-86f1-41af-91ab-2d7cd011db47")
        );
        assert_eq!(
            info.object_id.as_deref(),
            Some("00000000-0000-0000-0000-00000000000a")
        );
        assert_eq!(
            info.app_id.as_deref(),
            Some("04b07795-8ddb-461a-bbee-02f9e1bf7b46")
        );
        assert_eq!(info.principal_name.as_deref(), Some("alice@contoso.com"));
        assert_eq!(
            info.audience.as_deref(),
            Some("https://cognitiveservices.azure.com")
        );
        assert_eq!(
            info.expires_at,
            UNIX_EPOCH + Duration::from_secs(1_900_000_000)
        );
        assert!(!format!("{info:?}").contains(&jwt));

        // v2 tokens name the client `azp`; audiences may be a list; padding is tolerated.
        let claims = serde_json::json!({"azp": "app-2", "aud": ["a", "b"]});
        let padded = base64::engine::general_purpose::URL_SAFE.encode(claims.to_string());
        let token = Token {
            secret: Secret::new(format!("e30.{padded}.sig")),
            expires_at: UNIX_EPOCH,
        };
        let info = describe_token(&token);
        assert_eq!(info.app_id.as_deref(), Some("app-2"));
        assert_eq!(info.audience.as_deref(), Some("a b"));
        assert_eq!(info.expires_at, UNIX_EPOCH);
    }

    #[test]
    fn describe_token_copes_with_opaque_tokens() {
        for opaque in [
            "sts-token-1",
            "a.b",
            "a.%%%.c",
            "e30.WzFd.c",
            "a.b.c.d.e",
            "",
        ] {
            let expires_at = UNIX_EPOCH + Duration::from_secs(42);
            let info = describe_token(&Token {
                secret: Secret::new(opaque),
                expires_at,
            });
            assert_eq!(
                info,
                TokenInfo {
                    tenant_id: None,
                    object_id: None,
                    app_id: None,
                    principal_name: None,
                    audience: None,
                    expires_at,
                },
                "{opaque}"
            );
        }
    }

    #[test]
    fn uuid_v4_has_the_version_bits() {
        let id = uuid_v4([0xff; 16]);
        assert_eq!(id, "ffffffff-ffff-4fff-bfff-ffffffffffff");
    }
}
