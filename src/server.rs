//! The accept loop: HTTP/1.1 and h2c on one listener (hyper-util's auto builder), with
//! graceful shutdown: stop accepting, let requests and streams in flight finish within
//! the grace period, then close what is left. The proxy's listeners and the simulator
//! both serve through it.

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Serves `service` on `listener` until `shutdown` fires; then stops accepting at once
/// (new connections are refused), gives the connections in flight `grace` to finish, and
/// closes the rest. Every connection task is tracked: none outlives the call. `name` is
/// for the log.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: CancellationToken,
    grace: Duration,
    name: &'static str,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
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
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // SSE frames are small writes: Nagle would hold them back.
        let _ = stream.set_nodelay(true);
        let connection = builder
            .serve_connection(TokioIo::new(stream), service.clone())
            .into_owned();
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(name, %peer, error = %e, "connection ended with an error");
            }
        });
    }
    // Refuse new connections at once, then give the ones in flight their grace.
    drop(listener);
    tracing::info!(name, "listener closed: draining");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!(name, "all connections finished"),
        _ = tokio::time::sleep(grace) => tracing::warn!(name, ?grace, "grace period over, closing the connections left"),
    }
    connections.shutdown().await;
}
