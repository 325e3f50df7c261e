//! keyless: a local reverse proxy that lets any OpenAI client talk to Azure OpenAI with
//! Microsoft Entra ID authentication.
//!
//! `main.rs` parses flags into a [`config::Config`] and calls [`run`]; tests and benches
//! call the same function (or [`run_with_identity`] to bring their own token source).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod auth;
pub mod backend;
pub mod body;
pub mod config;
pub mod error;
pub mod limit;
pub mod model;
pub mod retry;
pub mod rewrite;
pub mod route;
pub mod server;
pub mod simulate;
pub mod upstream;

use auth::{Acquire, TokenCache};
use config::{Config, Target};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

/// Why keyless could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The credential could not be built.
    #[error("{0}")]
    Credential(#[from] auth::AuthError),
    /// The simulator could not start.
    #[error("cannot start the simulator: {0}")]
    Simulator(std::io::Error),
    /// TLS set-up failed.
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// Anything else about the configuration.
    #[error("{0}")]
    Invalid(String),
}

/// How long in-flight requests may run on after shutdown starts.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Runs keyless on `listener` until `shutdown` fires.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    match config.target.clone() {
        Target::Azure {
            endpoint,
            credential,
        } => {
            let identity = auth::credential::from_settings(&credential)?;
            run_with_identity(config, endpoint, identity, listener, shutdown).await
        }
        Target::Simulate => {
            let simulator = simulate::Simulator::start(shutdown.child_token())
                .await
                .map_err(StartError::Simulator)?;
            let endpoint = simulator.endpoint();
            run_with_identity(config, endpoint, simulator.identity(), listener, shutdown).await
        }
    }
}

/// Runs keyless against `endpoint` with tokens from `identity`.
pub async fn run_with_identity(
    config: Config,
    endpoint: Url,
    identity: Arc<dyn Acquire>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let tasks = TaskTracker::new();
    // The refreshers stop only after the server has drained, so requests finishing in the
    // grace period can still be signed.
    let refresher_stop = CancellationToken::new();
    // One token cache per scope, shared by every endpoint that uses the scope.
    let mut caches: HashMap<String, TokenCache> = HashMap::new();
    let mut cache_for = |scope: &str| {
        caches
            .entry(scope.to_owned())
            .or_insert_with(|| {
                TokenCache::start(
                    identity.clone(),
                    scope.to_owned(),
                    config.timeouts.token,
                    refresher_stop.clone(),
                    &tasks,
                )
            })
            .clone()
    };
    let default = Arc::new(backend::Upstream {
        endpoint: backend::Endpoint::new(&endpoint).map_err(StartError::Invalid)?,
        tokens: cache_for(&config.scope),
    });
    let mut upstreams: HashMap<(String, String), Arc<backend::Upstream>> = HashMap::new();
    let router = backend::Router::new(&config, default.clone(), |url, scope| {
        let url = url.unwrap_or(&endpoint);
        let scope = scope.unwrap_or(&config.scope);
        let key = (url.to_string(), scope.to_owned());
        if let Some(up) = upstreams.get(&key) {
            return Ok(up.clone());
        }
        let up = Arc::new(backend::Upstream {
            endpoint: backend::Endpoint::new(url)?,
            tokens: cache_for(scope),
        });
        upstreams.insert(key, up.clone());
        Ok(up)
    })
    .map_err(StartError::Invalid)?;
    let client = upstream::client(config.timeouts.connect)?;
    let app = Arc::new(app::App::new(config, router, client));
    server::serve(listener, app, shutdown, DEFAULT_GRACE).await;
    refresher_stop.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}
