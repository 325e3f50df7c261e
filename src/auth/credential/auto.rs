//! `--credential auto`: DefaultAzureCredential's chain of steps, tried in order until one
//! yields a token, then kept.

use super::AUTO;
use super::adapters::{Ctx, Recipe};
use super::imds::AUTO_IMDS_PROBE;
use super::settings::Inputs;
use crate::auth::{Acquire, AuthError, Token};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use std::sync::OnceLock;

impl Inputs {
    /// The `auto` chain, in DefaultAzureCredential's order. An `Err` step is skipped without
    /// any call, its reason kept for the log and the final error.
    pub(super) fn auto_steps(&self) -> Vec<Step> {
        let reason = |r: Result<Recipe, (&'static str, String)>| r.map_err(|(_, why)| why);
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
                recipe: service_principal,
            },
            Step {
                label: "workload identity",
                recipe: workload,
            },
            Step {
                label: "managed identity",
                recipe: reason(self.managed_identity(AUTO_IMDS_PROBE)),
            },
            Step {
                label: "Azure CLI",
                recipe: Ok(Recipe::AzureCli {
                    tenant_id: self.cli_tenant_id.clone(),
                }),
            },
            Step {
                label: "Azure Developer CLI",
                recipe: Ok(Recipe::Azd {
                    tenant_id: self.cli_tenant_id.clone(),
                }),
            },
        ]
    }
}

/// One link of the `auto` chain.
#[derive(Debug)]
pub(super) struct Step {
    /// What the log and the error call it.
    label: &'static str,
    /// `Err`: why it does not apply (no call is made).
    recipe: Result<Recipe, String>,
}

/// `--credential auto`: tries each step in order until one yields a token, then sticks to it.
#[derive(Debug)]
pub(super) struct Auto {
    steps: Vec<Step>,
    ctx: Ctx,
    /// Index of the step that yielded the first token.
    chosen: OnceLock<usize>,
}

impl Auto {
    /// The chain of `steps`, nothing chosen yet.
    pub(super) fn new(steps: Vec<Step>, ctx: Ctx) -> Auto {
        Auto {
            steps,
            ctx,
            chosen: OnceLock::new(),
        }
    }

    pub(super) async fn acquire(&self, scope: &str) -> Result<Token, AuthError> {
        if let Some(recipe) = self.chosen_recipe() {
            return recipe.acquire(&self.ctx, scope).await;
        }
        let mut skipped = Vec::new();
        for (index, step) in self.steps.iter().enumerate() {
            let recipe = match &step.recipe {
                Ok(recipe) => recipe,
                Err(why) => {
                    tracing::debug!(credential = step.label, reason = %why, "auto: skipped");
                    skipped.push(format!("{}: {why}", step.label));
                    continue;
                }
            };
            match recipe.acquire(&self.ctx, scope).await {
                Ok(token) => {
                    let _ = self.chosen.set(index);
                    tracing::info!(
                        credential = recipe.name(),
                        skipped = %skipped.join("; "),
                        "auto: using {} from now on",
                        recipe.name()
                    );
                    return Ok(token);
                }
                Err(err) => {
                    tracing::debug!(credential = recipe.name(), reason = %err.message, "auto: failed");
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

    fn chosen_recipe(&self) -> Option<&Recipe> {
        let index = *self.chosen.get()?;
        self.steps.get(index)?.recipe.as_ref().ok()
    }
}

impl Acquire for Auto {
    fn acquire<'a>(&'a self, scope: &'a str) -> BoxFuture<'a, Result<Token, AuthError>> {
        Auto::acquire(self, scope).boxed()
    }

    fn name(&self) -> String {
        self.chosen_recipe().map_or(AUTO, Recipe::name).into()
    }
}
