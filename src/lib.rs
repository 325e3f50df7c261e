//! keyless: a local reverse proxy that lets any OpenAI client talk to Azure OpenAI with
//! Microsoft Entra ID authentication.
//!
//! `main.rs` parses flags into a [`config::Config`] and calls [`run`]; tests and benches
//! call the same function (or [`run_with_identity`] to bring their own token source).
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// STYLE.md 11: no unwrap()/expect() outside tests and start-up; start-up places say so with
// an `#[allow]` of their own. (`clippy.toml` lets tests use them.)
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod affinity;
pub mod app;
pub mod apps;
pub mod auth;
pub mod backend;
pub mod body;
pub mod check;
pub mod config;
pub mod error;
pub mod limit;
pub mod model;
pub mod otel;
mod prepare;
pub mod realtime;
pub mod retry;
pub mod rewrite;
pub mod route;
pub mod server;
pub mod shared_limit;
pub mod simulate;
pub mod telemetry;
pub mod upstream;
pub mod usage;

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
    /// Anything else about the configuration.
    #[error("{0}")]
    Invalid(String),
    /// The proxy could not serve (no worker thread could run).
    #[error("cannot serve: {0}")]
    Serve(String),
}

/// The sockets keyless serves on.
#[derive(Debug)]
pub struct Listeners {
    /// The proxy.
    pub main: TcpListener,
    /// `/metrics`, `/healthz` and `/readyz` only.
    pub admin: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(main: TcpListener) -> Listeners {
        Listeners { main, admin: None }
    }
}

/// Runs keyless on `listeners` until `shutdown` fires, then drains for the grace period.
pub async fn run(
    config: Config,
    listeners: impl Into<Listeners>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    match config.target.clone() {
        Target::Azure {
            endpoint,
            credential,
        } => {
            let identity = auth::credential::from_settings(&credential)?;
            run_with_identity(config, endpoint, identity, listeners, shutdown).await
        }
        Target::Simulate => {
            // The simulator outlives the proxy's drain, so that streams in flight at
            // shutdown can finish.
            let simulator_stop = CancellationToken::new();
            let simulator = simulate::Simulator::start(simulator_stop.clone())
                .await
                .map_err(StartError::Simulator)?;
            let endpoint = simulator.endpoint();
            let result =
                run_with_identity(config, endpoint, simulator.identity(), listeners, shutdown)
                    .await;
            simulator_stop.cancel();
            simulator.stopped().await;
            result
        }
    }
}

/// Runs keyless against `endpoint` with tokens from `identity`.
pub async fn run_with_identity(
    config: Config,
    endpoint: Url,
    identity: Arc<dyn Acquire>,
    listeners: impl Into<Listeners>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let listeners = listeners.into();
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
    // One resource for each (endpoint, scope) pair of the config, the default first.
    let router = backend::Router::new(&config, &endpoint, |url, scope| {
        Ok(Arc::new(backend::Resource {
            endpoint: backend::Endpoint::new(url)?,
            tokens: cache_for(scope),
        }))
    })
    .map_err(StartError::Invalid)?;
    let tls = upstream::tls_config(config.ca_file.as_deref()).map_err(StartError::Invalid)?;
    let connect_timeout = config.timeouts.connect;
    let client = upstream::client_with(connect_timeout, tls.clone());
    // The default scope's cache first: readiness reports it at the top level.
    let default_tokens = router.default_resource().tokens.clone();
    let mut tokens: Vec<TokenCache> = vec![default_tokens.clone()];
    tokens.extend(
        caches
            .into_values()
            .filter(|c| c.scope() != default_tokens.scope()),
    );
    let mut telemetry = telemetry::Telemetry::new(tokens.clone());
    // Limits shared with the other replicas: never waited for at start beyond a moment
    // (requests are decided per process until Redis answers).
    let shared = match &config.limits.backend {
        config::LimitBackend::Redis { url, timeout } => {
            let shared =
                shared_limit::SharedLimits::connect(url, *timeout, refresher_stop.clone(), &tasks)
                    .map_err(|e| StartError::Invalid(e.to_string()))?;
            telemetry.register_limits_backend(shared.up_gauge());
            if !shared.wait_up(Duration::from_secs(1)).await {
                tracing::warn!("Redis is not answering yet: limits are per process until it does");
            }
            Some(shared)
        }
        config::LimitBackend::Local => None,
    };
    let telemetry = Arc::new(telemetry);
    let grace = config.shutdown_grace;
    let workers = config.workers.get();
    let bounds = config.connections;
    // WebSocket sessions outlive their connection in hyper's eyes: the drain waits on
    // this tracker for them, and they close (1001) when the grace is over.
    let sessions = TaskTracker::new();
    let relay = realtime::Relay::new(
        tls.clone(),
        sessions.clone(),
        config.realtime,
        connect_timeout,
        config.timeouts.response,
    );
    // Started here, on the runtime that outlives the server: gRPC's channel runs on it.
    let traces = match &config.otlp {
        Some(settings) => Some(otel::Traces::start(settings).map_err(StartError::Invalid)?),
        None => None,
    };
    let app = Arc::new(
        app::App::new(config, router, client, tokens, telemetry, shutdown.clone())
            .with_traces(traces.clone())
            .with_shared_limits(shared),
    );
    let service = |app: Arc<app::App>, role: app::Listener| {
        hyper::service::service_fn(move |req| app.clone().handle(role, req))
    };
    let admin = listeners.admin.map(|admin| {
        tasks.spawn(server::serve_with(
            admin,
            service(app.clone(), app::Listener::Admin),
            bounds,
            shutdown.clone(),
            grace,
            "admin",
        ))
    });
    // Each worker gets its own upstream client: a pool whose connections live on the
    // worker's runtime, beside the client connections they serve.
    let cut = CancellationToken::new();
    let served = server::serve_on_workers(
        workers,
        listeners.main,
        |_| {
            let app = app
                .with_client(upstream::client_with(connect_timeout, tls.clone()))
                .with_cut(cut.clone())
                .with_realtime(relay.clone());
            service(Arc::new(app), app::Listener::Main)
        },
        bounds,
        shutdown.clone(),
        grace,
        cut.clone(),
        sessions,
        "proxy",
    )
    .await;
    if served.is_err() {
        // Nothing can be served: stop the admin listener too.
        shutdown.cancel();
    }
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    if let Some(traces) = traces {
        // The last spans go out (the SDK bounds the wait); blocking, so off the runtime.
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    }
    refresher_stop.cancel();
    tasks.close();
    tasks.wait().await;
    served.map_err(StartError::Serve)
}
