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
//!
//! One idea a file: `settings` (kind, environment, hooks, resolved inputs), `auto` (the
//! chain), `adapters` (a `Recipe` -> an azure_identity credential),
//! `certificate` (PEM/PKCS#12 and the signed assertion), `imds` (the probe), `claims`
//! (what a token says about itself), `explain` (azure_identity errors on one line).

use super::{Acquire, AuthError, Token};
use adapters::{Ctx, Recipe};
use auto::Auto;
use certificate::load_certificate;
use explain::read_error;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use imds::EXPLICIT_IMDS_PROBE;
use settings::Inputs;
use std::sync::Arc;

// The names azure_identity gives its credentials; they label errors and logs.
const CLIENT_SECRET: &str = "ClientSecretCredential";
const CLIENT_CERTIFICATE: &str = "ClientCertificateCredential";
const WORKLOAD_IDENTITY: &str = "WorkloadIdentityCredential";
const MANAGED_IDENTITY: &str = "ManagedIdentityCredential";
const AZURE_CLI: &str = "AzureCliCredential";
const AZD: &str = "AzureDeveloperCliCredential";
/// What `auto` calls itself until a credential has been chosen.
const AUTO: &str = "auto";

mod adapters;
mod auto;
mod certificate;
mod claims;
mod explain;
mod imds;
mod settings;
#[cfg(test)]
mod tests;

pub use claims::{TokenInfo, describe_token};
pub use settings::{
    AZURE_CHINA, AZURE_GOVERNMENT, AZURE_PUBLIC_CLOUD, CredentialKind, CredentialSettings, Env,
    Hooks, check_authority_host, parse_authority_host,
};

/// Builds the token source for `settings`.
///
/// Fails when the settings cannot work at all (a required variable is missing, the
/// certificate cannot be read, the authority host is not https); a credential that is merely
/// unavailable (not logged in, no managed identity) fails at [`Acquire::acquire`] instead.
pub fn from_settings(settings: &CredentialSettings) -> Result<Arc<dyn Acquire>, AuthError> {
    let inputs = Inputs::new(settings);
    let ctx = Ctx::new(&settings.hooks)?;
    let single =
        |recipe: Result<Recipe, (&'static str, String)>| -> Result<Arc<dyn Acquire>, AuthError> {
            let recipe = recipe.map_err(|(credential, message)| AuthError {
                credential: credential.into(),
                message,
            })?;
            Ok(Arc::new(Single {
                recipe,
                ctx: ctx.clone(),
            }))
        };
    match settings.kind {
        CredentialKind::ClientSecret => single(inputs.client_secret()),
        CredentialKind::ClientCertificate => {
            single(inputs.client_certificate().and_then(|recipe| {
                // Fail at start-up on an unreadable certificate; it is read again (it may be
                // rotated on disk) at every acquisition.
                if let Recipe::ClientCertificate { path, password, .. } = &recipe {
                    let bytes = std::fs::read(path)
                        .map_err(|e| (CLIENT_CERTIFICATE, read_error(path, &e)))?;
                    load_certificate(&bytes, password.as_ref(), path)
                        .map_err(|message| (CLIENT_CERTIFICATE, message))?;
                }
                Ok(recipe)
            }))
        }
        CredentialKind::WorkloadIdentity => single(inputs.workload_identity()),
        CredentialKind::ManagedIdentity => single(inputs.managed_identity(EXPLICIT_IMDS_PROBE)),
        CredentialKind::AzureCli => single(Ok(Recipe::AzureCli {
            tenant_id: inputs.cli_tenant_id.clone(),
        })),
        CredentialKind::Azd => single(Ok(Recipe::Azd {
            tenant_id: inputs.cli_tenant_id.clone(),
        })),
        CredentialKind::Auto => {
            // A malformed authority host is a configuration error, not a reason to skip.
            inputs.authority().map_err(|message| AuthError {
                credential: AUTO.into(),
                message,
            })?;
            Ok(Arc::new(Auto::new(inputs.auto_steps(), ctx)))
        }
    }
}

/// A credential chosen by `--credential`.
#[derive(Debug)]
struct Single {
    recipe: Recipe,
    ctx: Ctx,
}

impl Acquire for Single {
    fn acquire<'a>(&'a self, scope: &'a str) -> BoxFuture<'a, Result<Token, AuthError>> {
        self.recipe.acquire(&self.ctx, scope).boxed()
    }

    fn name(&self) -> String {
        self.recipe.name().into()
    }
}
