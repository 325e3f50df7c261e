//! The accept loops: HTTP/1.1 and h2c on one listener (hyper-util's auto builder), with
//! graceful shutdown: stop accepting, let requests and streams in flight finish within
//! the grace period, then close what is left.
//!
//! The proxy serves on [`Workers`]: one thread a core, each with a single-threaded tokio
//! runtime of its own, fed connections by one acceptor. A connection lives its whole life
//! on one worker, with that worker's upstream pool, so relaying a request wakes no other
//! thread: on a shared work-stealing runtime, the parking and waking of idle workers
//! (futex calls, context switches) cost more than the proxying. The admin listener and
//! the simulator serve through [`serve`] on the caller's runtime.

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
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
    serve_from(Source::Listener(listener), service, shutdown, grace, name).await;
}

/// A connection the acceptor handed to a worker. It counts towards the worker's load
/// until it is dropped, wherever that happens.
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    _load: Load,
}

/// One open connection on a worker.
struct Load(Arc<AtomicUsize>);

impl Load {
    fn new(count: &Arc<AtomicUsize>) -> Load {
        count.fetch_add(1, Ordering::Relaxed);
        Load(count.clone())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where an accept loop's connections come from.
enum Source {
    Listener(TcpListener),
    Handed(mpsc::UnboundedReceiver<Handoff>),
}

impl Source {
    /// The next connection; `None` once the acceptor is gone.
    async fn next(&mut self) -> Option<std::io::Result<(TcpStream, SocketAddr, Option<Load>)>> {
        match self {
            Source::Listener(listener) => Some(
                listener
                    .accept()
                    .await
                    .map(|(stream, peer)| (stream, peer, None)),
            ),
            Source::Handed(handed) => {
                let Handoff {
                    stream,
                    peer,
                    _load,
                } = handed.recv().await?;
                Some(TcpStream::from_std(stream).map(|stream| (stream, peer, Some(_load))))
            }
        }
    }
}

async fn serve_from<S, B>(
    mut source: Source,
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
        let (stream, peer, load) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            next = source.next() => match next {
                Some(Ok(accepted)) => accepted,
                Some(Err(e)) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                None => break,
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
            drop(load);
        });
    }
    // Refuse new connections at once, then give the ones in flight their grace.
    drop(source);
    tracing::info!(name, "listener closed: draining");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!(name, "all connections finished"),
        _ = tokio::time::sleep(grace) => tracing::warn!(name, ?grace, "grace period over, closing the connections left"),
    }
    connections.shutdown().await;
}

/// Serves `listener` like [`serve`], on `workers` threads (at least one), each running
/// a single-threaded tokio runtime with the service `make(i)` builds for it (on the
/// caller's thread). This task accepts and hands every connection to the worker with the
/// fewest open; the connection stays there. At `shutdown` the listener closes and every
/// worker drains as [`serve`] does; returns when all have stopped. An error when no
/// worker is left to serve on.
pub async fn serve_on_workers<S, B>(
    workers: usize,
    listener: TcpListener,
    mut make: impl FnMut(usize) -> S,
    shutdown: CancellationToken,
    grace: Duration,
    name: &'static str,
) -> Result<(), String>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut result = Ok(());
    let mut handoffs = Vec::with_capacity(workers);
    let mut stopped = Vec::with_capacity(workers);
    for i in 0..workers.max(1) {
        let (send, receive) = mpsc::unbounded_channel();
        let (done, finished) = oneshot::channel::<()>();
        let service = make(i);
        let shutdown = shutdown.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("keyless-{name}-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!(name, worker = i, error = %e, "cannot start a worker's runtime");
                        return;
                    }
                };
                runtime.block_on(serve_from(
                    Source::Handed(receive),
                    service,
                    shutdown,
                    grace,
                    name,
                ));
                // Idle upstream connections and timers end with the runtime.
                drop(runtime);
                let _ = done.send(());
            });
        match spawned {
            Ok(_) => {
                handoffs.push((send, Arc::new(AtomicUsize::new(0))));
                stopped.push(finished);
            }
            Err(e) => {
                tracing::error!(name, worker = i, error = %e, "cannot start a worker thread")
            }
        }
    }
    if handoffs.is_empty() {
        return Err("no worker thread could start".to_owned());
    }
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
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
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(name, %peer, error = %e, "cannot hand a connection over");
                continue;
            }
        };
        let Some(at) = (0..handoffs.len()).min_by_key(|&w| handoffs[w].1.load(Ordering::Relaxed))
        else {
            // No worker is left (none started, or all stopped): serving is impossible.
            result = Err("no worker thread is running".to_owned());
            break;
        };
        let (send, count) = &handoffs[at];
        let handoff = Handoff {
            stream,
            peer,
            _load: Load::new(count),
        };
        if send.send(handoff).is_err() {
            // That worker has stopped; this connection closes, the next goes elsewhere.
            tracing::error!(name, worker = at, "a worker thread has stopped");
            handoffs.swap_remove(at);
        }
    }
    drop(listener);
    drop(handoffs);
    for finished in stopped {
        let _ = finished.await;
    }
    result
}
