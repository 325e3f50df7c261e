//! The azure_identity adapters: one [`Recipe`] a configured credential, turned into a fresh
//! azure_identity credential at every acquisition, with our transport, retry policy and
//! deadlines.

use super::certificate::{FixedAssertion, client_assertion, load_certificate, token_endpoint};
use super::explain::{explain, read_error};
use super::imds::{IMDS_PROBE_URL, ImdsProbe};
use super::settings::Hooks;
use super::{
    AZD, AZURE_CLI, CLIENT_CERTIFICATE, CLIENT_SECRET, MANAGED_IDENTITY, WORKLOAD_IDENTITY,
};
use crate::auth::{AuthError, Secret, Token};
use azure_core::{
    cloud::CustomConfiguration,
    credentials::{AccessToken, TokenCredential},
    http::{ClientOptions, ExponentialRetryOptions, RetryOptions, Transport},
};
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, AzureDeveloperCliCredential,
    AzureDeveloperCliCredentialOptions, ClientAssertionCredential,
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    Executor, ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
    WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};
use url::Url;

/// Identity endpoints answer in well under a second; these bound a dead or slow one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(15);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Whole-acquisition deadlines (retries included).
const HTTP_DEADLINE: Duration = Duration::from_secs(30);
const IMDS_DEADLINE: Duration = Duration::from_secs(90);
const CLI_DEADLINE: Duration = Duration::from_secs(60);

/// Shared by every acquisition: the HTTP client and the process runner.
#[derive(Clone, Debug)]
pub(super) struct Ctx {
    transport: Transport,
    executor: Arc<dyn Executor>,
    imds_probe_url: Url,
}

impl Ctx {
    pub(super) fn new(hooks: &Hooks) -> Result<Self, AuthError> {
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

/// One configured credential: what it needs to build a fresh azure_identity credential.
#[derive(Debug)]
pub(super) enum Recipe {
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

impl Recipe {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Recipe::ClientSecret { .. } => CLIENT_SECRET,
            Recipe::ClientCertificate { .. } => CLIENT_CERTIFICATE,
            Recipe::WorkloadIdentity { .. } => WORKLOAD_IDENTITY,
            Recipe::ManagedIdentity { .. } => MANAGED_IDENTITY,
            Recipe::AzureCli { .. } => AZURE_CLI,
            Recipe::Azd { .. } => AZD,
        }
    }

    /// Acquires a brand-new token within the kind's deadline.
    pub(super) async fn acquire(&self, ctx: &Ctx, scope: &str) -> Result<Token, AuthError> {
        let deadline = match self {
            Recipe::AzureCli { .. } | Recipe::Azd { .. } => CLI_DEADLINE,
            Recipe::ManagedIdentity { probe: Some(_), .. } => IMDS_DEADLINE,
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
        let token = match self {
            Recipe::ClientSecret {
                tenant_id,
                client_id,
                secret,
                authority,
            } => client_secret(ctx, scope, tenant_id, client_id, secret, authority).await,
            Recipe::ClientCertificate {
                tenant_id,
                client_id,
                path,
                password,
                authority,
            } => {
                let app = (tenant_id.as_str(), client_id.as_str(), authority);
                client_certificate(ctx, scope, app, path, password.as_ref()).await
            }
            Recipe::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
                authority,
            } => workload_identity(ctx, scope, tenant_id, client_id, token_file, authority).await,
            Recipe::ManagedIdentity {
                id,
                probe,
                imds_answered,
            } => managed_identity(ctx, scope, id, probe.as_ref(), imds_answered).await,
            Recipe::AzureCli { tenant_id } => azure_cli(ctx, scope, tenant_id).await,
            Recipe::Azd { tenant_id } => azd(ctx, scope, tenant_id).await,
        };
        token.map_err(|message| AuthError {
            credential: self.name().into(),
            message,
        })
    }
}

async fn client_secret(
    ctx: &Ctx,
    scope: &str,
    tenant_id: &str,
    client_id: &str,
    secret: &Secret,
    authority: &Url,
) -> Result<Token, String> {
    let scrub = [secret.expose()];
    let options = ClientSecretCredentialOptions {
        client_options: ctx.client_options(Some(authority)),
    };
    let credential = ClientSecretCredential::new(
        tenant_id,
        client_id.to_owned(),
        azure_core::credentials::Secret::new(secret.expose().to_owned()),
        Some(options),
    )
    .map_err(|e| explain(&e, &scrub))?;
    get_token(credential.as_ref(), scope, &scrub).await
}

/// `app`: tenant id, client id, authority.
async fn client_certificate(
    ctx: &Ctx,
    scope: &str,
    (tenant_id, client_id, authority): (&str, &str, &Url),
    path: &Path,
    password: Option<&Secret>,
) -> Result<Token, String> {
    // Read at every acquisition: a rotated certificate is picked up.
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| read_error(path, &e))?;
    let certificate = load_certificate(&bytes, password, path)?;
    let audience = token_endpoint(authority, tenant_id)?;
    let assertion = client_assertion(&certificate, client_id, &audience, SystemTime::now())?;
    let scrub = [assertion.expose()];
    let options = ClientAssertionCredentialOptions {
        client_options: ctx.client_options(Some(authority)),
    };
    let credential = ClientAssertionCredential::new(
        tenant_id.to_owned(),
        client_id.to_owned(),
        FixedAssertion(assertion.clone()),
        Some(options),
    )
    .map_err(|e| explain(&e, &scrub))?;
    get_token(credential.as_ref(), scope, &scrub).await
}

async fn workload_identity(
    ctx: &Ctx,
    scope: &str,
    tenant_id: &str,
    client_id: &str,
    token_file: &Path,
    authority: &Url,
) -> Result<Token, String> {
    // A new credential reads the token file anew (in `new`): the kubelet rotates it, and a
    // stale one is rejected with AADSTS700024.
    let options = WorkloadIdentityCredentialOptions {
        credential_options: ClientAssertionCredentialOptions {
            client_options: ctx.client_options(Some(authority)),
        },
        client_id: Some(client_id.to_owned()),
        tenant_id: Some(tenant_id.to_owned()),
        token_file_path: Some(token_file.to_owned()),
    };
    let credential =
        WorkloadIdentityCredential::new(Some(options)).map_err(|e| explain(&e, &[]))?;
    get_token(credential.as_ref(), scope, &[]).await
}

async fn managed_identity(
    ctx: &Ctx,
    scope: &str,
    id: &Option<UserAssignedId>,
    probe: Option<&ImdsProbe>,
    imds_answered: &AtomicBool,
) -> Result<Token, String> {
    if let Some(probe) = probe
        && !imds_answered.load(Ordering::Relaxed)
    {
        probe.run(&ctx.imds_probe_url).await?;
        imds_answered.store(true, Ordering::Relaxed);
    }
    let options = ManagedIdentityCredentialOptions {
        user_assigned_id: id.clone(),
        client_options: ctx.client_options(None),
    };
    let credential = ManagedIdentityCredential::new(Some(options)).map_err(|e| explain(&e, &[]))?;
    get_token(credential.as_ref(), scope, &[]).await
}

async fn azure_cli(ctx: &Ctx, scope: &str, tenant_id: &Option<String>) -> Result<Token, String> {
    let options = AzureCliCredentialOptions {
        tenant_id: tenant_id.clone(),
        executor: Some(ctx.executor.clone()),
        ..AzureCliCredentialOptions::default()
    };
    let credential = AzureCliCredential::new(Some(options)).map_err(|e| explain(&e, &[]))?;
    get_token(credential.as_ref(), scope, &[])
        .await
        .map_err(|message| cli_advice(message, "az", "Azure CLI", "az login", tenant_id))
}

async fn azd(ctx: &Ctx, scope: &str, tenant_id: &Option<String>) -> Result<Token, String> {
    let options = AzureDeveloperCliCredentialOptions {
        tenant_id: tenant_id.clone(),
        executor: Some(ctx.executor.clone()),
    };
    let credential =
        AzureDeveloperCliCredential::new(Some(options)).map_err(|e| explain(&e, &[]))?;
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
