//! The accept loop: HTTP/1.1 and h2c on one listener (hyper-util's auto builder), with
//! graceful shutdown: stop accepting, let requests and streams in flight finish within
//! the grace period, then return.

use crate::app::{App, Listener};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `app` on `listener` until `shutdown` fires, then drains for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    role: Listener,
    app: Arc<App>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // A client that opens a connection and sends no complete head is dropped.
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024);

    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = service_fn(move |req| app.clone().handle(role, req));
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    // Refuse new connections at once, then give the ones in flight their grace.
    drop(listener);
    app.start_draining();
    tracing::info!(?role, "listener closed: draining");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections finished"),
        _ = tokio::time::sleep(grace) => tracing::warn!(?grace, "grace period over, closing the connections left"),
    }
}
