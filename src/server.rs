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
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Connections;

/// Serves `service` on `listener` until `shutdown` fires; then stops accepting at once
/// (new connections are refused), gives the connections in flight `grace` to finish, and
/// closes the rest. Every connection task is tracked: none outlives the call. `name` is
/// for the log. Connections are bounded by the defaults of [`Connections`].
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
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_with(
        listener,
        service,
        Connections::default(),
        shutdown,
        grace,
        name,
    )
    .await;
}

/// [`serve`], with connections bounded by `bounds`.
pub async fn serve_with<S, B>(
    listener: TcpListener,
    service: S,
    bounds: Connections,
    shutdown: CancellationToken,
    grace: Duration,
    name: &'static str,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let cut = CancellationToken::new();
    serve_from(
        Source::Listener(listener),
        service,
        bounds,
        shutdown,
        grace,
        cut,
        TaskTracker::new(),
        name,
    )
    .await;
}

/// Descriptors kept for upstream sockets, the admin listener, token fetches and logs:
/// the connection cap is what the open-files limit leaves after them, halved (a proxied
/// request holds a client and an upstream socket).
const RESERVED_DESCRIPTORS: u64 = 64;
/// The most client connections served at once per listener, whatever the limit allows.
const MAX_CONNECTIONS: usize = 16_384;
/// How long upgraded connections (WebSocket sessions) may take, once the grace is over and
/// they were told to close, to send their close frames before the worker stops.
const UPGRADED_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The cap on concurrent client connections: beyond it a new connection is closed at once,
/// so the listener's backlog never fills and `/healthz` (and the admin listener) keep
/// answering under a flood of sockets.
pub fn connection_cap(bounds: &Connections) -> usize {
    if let Some(max) = bounds.max {
        return max;
    }
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    let usable = soft.saturating_sub(RESERVED_DESCRIPTORS) / 2;
    usize::try_from(usable)
        .unwrap_or(usize::MAX)
        .clamp(16, MAX_CONNECTIONS)
}

/// Accept errors (EMFILE above all) back off exponentially, and are logged at most once
/// a second, with how many were not.
struct AcceptBackoff {
    wait: Duration,
    last_log: Option<std::time::Instant>,
    quiet: u64,
}

impl AcceptBackoff {
    const MIN: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn new() -> AcceptBackoff {
        AcceptBackoff {
            wait: Self::MIN,
            last_log: None,
            quiet: 0,
        }
    }

    fn ok(&mut self) {
        self.wait = Self::MIN;
    }

    async fn failed(&mut self, name: &'static str, error: &std::io::Error) {
        if self
            .last_log
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(name, error = %error, suppressed = self.quiet, retry_in = ?self.wait, "accept failed");
            self.last_log = Some(std::time::Instant::now());
            self.quiet = 0;
        } else {
            self.quiet += 1;
        }
        tokio::time::sleep(self.wait).await;
        self.wait = (self.wait * 2).min(Self::MAX);
    }
}

/// Connections open on a listener, shared by its workers.
#[derive(Clone)]
struct Open(Arc<AtomicUsize>);

/// One connection's place under the cap, given back when the connection ends.
struct Slot(Arc<AtomicUsize>);

impl Open {
    fn take(&self, cap: usize) -> Option<Slot> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()?;
        Some(Slot(self.0.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection the acceptor handed to a worker. It counts towards the worker's load
/// until it is dropped, wherever that happens.
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    _load: Load,
    slot: Slot,
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
    async fn next(
        &mut self,
    ) -> Option<std::io::Result<(TcpStream, SocketAddr, Option<(Load, Slot)>)>> {
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
                    slot,
                } = handed.recv().await?;
                Some(TcpStream::from_std(stream).map(|stream| (stream, peer, Some((_load, slot)))))
            }
        }
    }
}

/// `upgraded` tracks the sessions of upgraded connections (WebSocket): hyper hands their
/// socket over and forgets the connection, so the drain waits for them separately, within
/// the same grace; they close themselves when `cut` fires.
#[allow(clippy::too_many_arguments)]
async fn serve_from<S, B>(
    mut source: Source,
    service: S,
    bounds: Connections,
    shutdown: CancellationToken,
    grace: Duration,
    cut: CancellationToken,
    upgraded: TaskTracker,
    name: &'static str,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // A client that opens a connection and sends no complete head is dropped; hyper
        // starts this timer again whenever it waits for the next request, so it also
        // closes an idle keep-alive connection.
        .header_read_timeout(bounds.header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        // A peer that stops answering pings is dropped.
        .keep_alive_interval(bounds.h2_keepalive_interval)
        .keep_alive_timeout(bounds.h2_keepalive_timeout)
        .max_concurrent_streams(1024);
    // The admin listener and the simulator have no acceptor in front: they cap here.
    let open = Open(Arc::new(AtomicUsize::new(0)));
    let cap = connection_cap(&bounds);
    let mut backoff = AcceptBackoff::new();

    let mut connections = JoinSet::new();
    loop {
        let (stream, peer, load) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            next = source.next() => match next {
                Some(Ok(accepted)) => {
                    backoff.ok();
                    accepted
                }
                Some(Err(e)) => {
                    // EMFILE and friends: back off rather than spin.
                    backoff.failed(name, &e).await;
                    continue;
                }
                None => break,
            },
        };
        // A handed connection took its slot in the acceptor; one accepted here takes it now.
        let load = match load {
            Some((load, slot)) => (Some(load), slot),
            None => match open.take(cap) {
                Some(slot) => (None, slot),
                None => {
                    tracing::debug!(name, %peer, cap, "connection cap reached: closed");
                    continue;
                }
            },
        };
        // SSE frames are small writes: Nagle would hold them back.
        let _ = stream.set_nodelay(true);
        let (builder, service, shutdown) = (builder.clone(), service.clone(), shutdown.clone());
        connections.spawn(async move {
            let _load = load;
            // The first byte must come within the header timeout (hyper then bounds the
            // rest of the head): a socket that sends nothing is closed, not kept.
            tokio::select! {
                ready = tokio::time::timeout(bounds.header_timeout, stream.readable()) => {
                    if ready.is_err() {
                        tracing::debug!(name, %peer, "nothing sent within the header timeout: closed");
                        return;
                    }
                }
                () = shutdown.cancelled() => return,
            }
            let activity = Arc::new(Activity::new());
            let tracked = {
                let activity = activity.clone();
                hyper::service::service_fn(move |req| {
                    // In flight from the call until the response body is dropped (its
                    // last byte sent, or the stream cut).
                    let busy = activity.begin();
                    let answer = service.call(req);
                    async move {
                        let response = answer.await?;
                        Ok::<_, Infallible>(response.map(|body| Tracked { body, _busy: busy }))
                    }
                })
            };
            // With upgrades: a WebSocket handshake (realtime) gets its socket handed over.
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), tracked);
            let mut connection = std::pin::pin!(connection);
            let mut closing = false;
            loop {
                tokio::select! {
                    ended = connection.as_mut() => {
                        if let Err(e) = ended {
                            tracing::debug!(name, %peer, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    // Shutdown: finish what is in flight (HTTP/2: a GOAWAY), take no more.
                    () = shutdown.cancelled(), if !closing => {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    () = activity.idle_for(bounds.idle_timeout), if !closing => {
                        tracing::debug!(name, %peer, "idle: closed");
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
    // Refuse new connections at once, then give the ones in flight their grace.
    drop(source);
    tracing::info!(name, "listener closed: draining");
    // Closed, so that `wait` ends once the sessions open now have ended.
    upgraded.close();
    let drained = async {
        while connections.join_next().await.is_some() {}
        upgraded.wait().await;
    };
    tokio::select! {
        () = drained => tracing::info!(name, "all connections finished"),
        () = tokio::time::sleep(grace) => tracing::warn!(name, ?grace, "grace period over, closing the connections left"),
    }
    // Before the cut: a request ended by it is logged as cut by shutdown.
    cut.cancel();
    connections.shutdown().await;
    // Sessions close both their sockets (1001) at the cut: give them the time to say so.
    if tokio::time::timeout(UPGRADED_CLOSE_WAIT, upgraded.wait())
        .await
        .is_err()
    {
        tracing::warn!(name, "upgraded sessions did not close in time");
    }
}

/// The requests in flight on one connection, and since when it has had none: the
/// connection's idle timer.
struct Activity {
    in_flight: AtomicUsize,
    /// When the last request ended (or the connection began), in milliseconds since `base`.
    idle_since: AtomicU64,
    base: Instant,
}

/// One request in flight, until dropped.
struct Busy(Arc<Activity>);

/// A response body that keeps its request counted as in flight until it is dropped. Its
/// size hint is the body's own, so a body of known length keeps its `Content-Length`.
struct Tracked<B> {
    body: B,
    _busy: Busy,
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Resolves once the connection has had no request in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        loop {
            let wait = if self.in_flight.load(Ordering::Acquire) > 0 {
                idle_ms
            } else {
                let since = self.idle_since.load(Ordering::Acquire);
                match (since.saturating_add(idle_ms)).checked_sub(self.now()) {
                    Some(0) | None => return,
                    Some(left) => left,
                }
            };
            tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.idle_since.store(activity.now(), Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `listener` like [`serve`], on `workers` threads (at least one), each running
/// a single-threaded tokio runtime with the service `make(i)` builds for it (on the
/// caller's thread). This task accepts and hands every connection to the worker with the
/// fewest open; the connection stays there. At `shutdown` the listener closes and every
/// worker drains as [`serve`] does, firing `cut` when the grace is over, just before it
/// closes what is left; returns when all have stopped. An error when no worker is left
/// to serve on.
#[allow(clippy::too_many_arguments)]
pub async fn serve_on_workers<S, B>(
    workers: usize,
    listener: TcpListener,
    mut make: impl FnMut(usize) -> S,
    bounds: Connections,
    shutdown: CancellationToken,
    grace: Duration,
    cut: CancellationToken,
    upgraded: TaskTracker,
    name: &'static str,
) -> Result<(), String>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
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
        let cut = cut.clone();
        let upgraded = upgraded.clone();
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
                    bounds,
                    shutdown,
                    grace,
                    cut,
                    upgraded,
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
    let open = Open(Arc::new(AtomicUsize::new(0)));
    let cap = connection_cap(&bounds);
    tracing::debug!(name, cap, "connection cap");
    let mut backoff = AcceptBackoff::new();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => {
                    backoff.ok();
                    pair
                }
                Err(e) => {
                    // EMFILE and friends: back off rather than spin.
                    backoff.failed(name, &e).await;
                    continue;
                }
            },
        };
        // Over the cap the connection is closed at once: accepting goes on, so the
        // backlog never fills with sockets nobody will serve.
        let Some(slot) = open.take(cap) else {
            tracing::debug!(name, %peer, cap, "connection cap reached: closed");
            continue;
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
            slot,
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
