//! What a credential is built from: the kind, the settings that override the environment,
//! the environment itself, and the two resolved once into [`Inputs`].

use super::adapters::Recipe;
use super::imds::ImdsProbe;
use super::{CLIENT_CERTIFICATE, CLIENT_SECRET, MANAGED_IDENTITY, WORKLOAD_IDENTITY};
use crate::auth::Secret;
use azure_core::http::Transport;
use azure_identity::{Executor, UserAssignedId};
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use url::Url;

/// Authority host of the Azure public cloud (the default).
pub const AZURE_PUBLIC_CLOUD: &str = "https://login.microsoftonline.com";
/// Authority host of Azure US Government.
pub const AZURE_GOVERNMENT: &str = "https://login.microsoftonline.us";
/// Authority host of Azure China (operated by 21Vianet).
pub const AZURE_CHINA: &str = "https://login.chinacloudapi.cn";

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

/// Parses an authority host (`--authority-host`, `authority_host`, `AZURE_AUTHORITY_HOST`)
/// and holds it to [`check_authority_host`]'s rule: the one place that rule is written, for
/// the config and the credentials alike.
pub fn parse_authority_host(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    check_authority_host(url)
}

/// Entra is reached over https only (the token request carries the client's secret or
/// assertion), at a URL that can take the `{tenant}/oauth2/v2.0/token` path.
pub fn check_authority_host(url: Url) -> Result<Url, String> {
    if url.scheme() != "https" || url.cannot_be_a_base() {
        return Err(format!(
            "the authority host must be an https URL such as {AZURE_PUBLIC_CLOUD}, not {url}"
        ));
    }
    Ok(url)
}

/// The settings and environment, resolved once.
pub(super) struct Inputs {
    pub(super) env: Env,
    pub(super) tenant_id: Option<String>,
    /// The tenant setting alone: `AZURE_TENANT_ID` usually belongs to a service principal,
    /// not to the account the CLI is logged in with.
    pub(super) cli_tenant_id: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) object_id: Option<String>,
    pub(super) resource_id: Option<String>,
    pub(super) authority_host: Option<Url>,
}

impl Inputs {
    pub(super) fn new(settings: &CredentialSettings) -> Self {
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

    /// The authority host: setting, then `AZURE_AUTHORITY_HOST`, then the public cloud;
    /// each held to [`check_authority_host`]'s rule.
    pub(super) fn authority(&self) -> Result<Url, String> {
        match (&self.authority_host, self.env.var("AZURE_AUTHORITY_HOST")) {
            (Some(url), _) => check_authority_host(url.clone()),
            (None, Some(text)) => parse_authority_host(&text)
                .map_err(|e| format!("AZURE_AUTHORITY_HOST {text:?}: {e}")),
            (None, None) => Url::parse(AZURE_PUBLIC_CLOUD).map_err(|e| e.to_string()),
        }
    }

    fn service_principal_client_id(&self) -> Option<String> {
        self.client_id
            .clone()
            .or_else(|| self.env.var("AZURE_CLIENT_ID"))
    }

    /// Tenant, client id and authority, which every service principal kind needs.
    pub(super) fn app(
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

    pub(super) fn client_secret(&self) -> Result<Recipe, (&'static str, String)> {
        let (tenant_id, client_id, authority) = self.app(CLIENT_SECRET)?;
        let secret = self
            .env
            .var("AZURE_CLIENT_SECRET")
            .ok_or((CLIENT_SECRET, "AZURE_CLIENT_SECRET is not set".to_owned()))?;
        Ok(Recipe::ClientSecret {
            tenant_id,
            client_id,
            secret: Secret::new(secret),
            authority,
        })
    }

    pub(super) fn client_certificate(&self) -> Result<Recipe, (&'static str, String)> {
        let (tenant_id, client_id, authority) = self.app(CLIENT_CERTIFICATE)?;
        let path = self.env.var("AZURE_CLIENT_CERTIFICATE_PATH").ok_or((
            CLIENT_CERTIFICATE,
            "AZURE_CLIENT_CERTIFICATE_PATH is not set".to_owned(),
        ))?;
        Ok(Recipe::ClientCertificate {
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

    pub(super) fn workload_identity(&self) -> Result<Recipe, (&'static str, String)> {
        let (tenant_id, client_id, authority) = self.app(WORKLOAD_IDENTITY)?;
        let token_file = self.env.var("AZURE_FEDERATED_TOKEN_FILE").ok_or((
            WORKLOAD_IDENTITY,
            "AZURE_FEDERATED_TOKEN_FILE is not set (is workload identity enabled for this pod?)"
                .to_owned(),
        ))?;
        Ok(Recipe::WorkloadIdentity {
            tenant_id,
            client_id,
            token_file: PathBuf::from(token_file),
            authority,
        })
    }

    pub(super) fn managed_identity(
        &self,
        probe: ImdsProbe,
    ) -> Result<Recipe, (&'static str, String)> {
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
        Ok(Recipe::ManagedIdentity {
            id,
            probe: (!announced).then_some(probe),
            imds_answered: AtomicBool::new(false),
        })
    }
}
