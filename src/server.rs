//! The accept loops: HTTP/1.1 and h2c on one listener (told apart by the first bytes), with
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
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
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
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        // A client that opens a connection and sends no complete head is dropped; hyper
        // starts this timer again whenever it waits for the next request, so it also
        // closes an idle keep-alive connection.
        .header_read_timeout(bounds.header_timeout)
        .keep_alive(true);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
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
        let (http1, http2) = (http1.clone(), http2.clone());
        let (service, shutdown) = (service.clone(), shutdown.clone());
        connections.spawn(async move {
            let _load = load;
            // The first bytes must come within the header timeout (hyper then bounds the
            // rest of the head): a socket that sends nothing is closed, not kept.
            let h2 = tokio::select! {
                found = tokio::time::timeout(bounds.header_timeout, speaks_h2(&stream)) => match found {
                    Ok(Ok(h2)) => h2,
                    Ok(Err(e)) => {
                        tracing::debug!(name, %peer, error = %e, "connection failed before its first request");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(name, %peer, "nothing sent within the header timeout: closed");
                        return;
                    }
                },
                () = shutdown.cancelled() => return,
            };
            let activity = Arc::new(Activity::new());
            let tracked = {
                let activity = activity.clone();
                hyper::service::service_fn(move |req| {
                    // In flight from the call until the response body is dropped (its
                    // last byte sent, or the stream cut).
                    let busy = activity.begin();
                    let service = service.clone();
                    // Boxed: hyper keeps room for the service's future in every connection
                    // for the connection's life, and the handling's kilobytes of state are
                    // needed only until the response head, not while a stream flows or a
                    // connection idles. The box is freed when the head is returned.
                    // The service's future is made inside the block, on its first poll, in
                    // place in the box. Made out here and moved in, its ~12 KB were copied
                    // twice a request (callgrind: 11.7k instructions of memcpy).
                    Box::pin(async move {
                        let response = service.call(req).await?;
                        Ok::<_, Infallible>(response.map(|body| Tracked { body, _busy: busy }))
                    })
                })
            };
            let io = TokioIo::new(stream);
            if h2 {
                let connection = http2.serve_connection(io, tracked);
                drive(connection, |c| c.graceful_shutdown(), &activity, bounds.idle_timeout, &shutdown, name, peer).await;
            } else {
                // With upgrades: a WebSocket handshake (realtime) gets its socket handed over.
                let connection = http1.serve_connection(io, tracked).with_upgrades();
                drive(connection, |c| c.graceful_shutdown(), &activity, bounds.idle_timeout, &shutdown, name, peer).await;
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

/// The first bytes of HTTP/2 with prior knowledge (RFC 9113, 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client speaks HTTP/2 (h2c) rather than HTTP/1.1, told from its first bytes,
/// which stay in the socket for hyper to read. hyper-util's auto builder reads them instead
/// and hands them back through a prefix, which made hyper's read buffer grow from 8 KB
/// to 16 KB on every HTTP/1.1 connection, a stream's included. An HTTP/1.1 request differs
/// from the preface by its second byte at the latest ("POST", "PUT", "GET").
async fn speaks_h2(stream: &TcpStream) -> std::io::Result<bool> {
    let mut first = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut first).await?;
        if n == 0 || first[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // The start of the preface and no more yet: the socket stays readable with those
        // bytes in it, so peeking again at once would spin. The caller bounds the wait.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs one connection to its end: on shutdown, or after `idle` with no request in
/// flight, it is asked to close gracefully (HTTP/2: a GOAWAY) and finishes what it has.
async fn drive<C>(
    connection: C,
    graceful: fn(Pin<&mut C>),
    activity: &Activity,
    idle: Duration,
    shutdown: &CancellationToken,
    name: &'static str,
    peer: SocketAddr,
) where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let mut connection = std::pin::pin!(connection);
    let mut closing = false;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(name, %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            // Shutdown: finish what is in flight, take no more.
            () = shutdown.cancelled(), if !closing => {
                closing = true;
                graceful(connection.as_mut());
            }
            () = activity.idle_for(idle), if !closing => {
                tracing::debug!(name, %peer, "idle: closed");
                closing = true;
                graceful(connection.as_mut());
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected pair on loopback: (client, server side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    /// Waits until `n` bytes sit in the server side's receive queue, so the split between
    /// the client's writes is what `speaks_h2` sees, not what the scheduler merged.
    async fn queued(server: &TcpStream, n: usize) {
        let mut buf = [0u8; 64];
        while server.peek(&mut buf).await.unwrap() < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_preface_that_arrives_in_pieces_is_http2() {
        let (mut client, server) = pair().await;
        client.write_all(&H2_PREFACE[..9]).await.unwrap();
        queued(&server, 9).await;
        let told = tokio::spawn(async move { (speaks_h2(&server).await.unwrap(), server) });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            !told.is_finished(),
            "decided on 9 bytes that are the preface's start"
        );
        client.write_all(&H2_PREFACE[9..]).await.unwrap();
        let (h2, mut server) = told.await.unwrap();
        assert!(h2);
        // Peeked, not read: hyper gets every byte.
        let mut read = [0u8; 24];
        server.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, H2_PREFACE);
    }

    #[tokio::test]
    async fn an_http1_request_is_told_apart_by_its_second_byte_and_left_unread() {
        let (mut client, server) = pair().await;
        // "P" could begin the preface; "PO" cannot.
        client.write_all(b"P").await.unwrap();
        queued(&server, 1).await;
        let told = tokio::spawn(async move { (speaks_h2(&server).await.unwrap(), server) });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            !told.is_finished(),
            "decided on one byte the preface shares"
        );
        client.write_all(b"OST / HTTP/1.1\r\n").await.unwrap();
        let (h2, mut server) = told.await.unwrap();
        assert!(!h2);
        let mut read = [0u8; 17];
        server.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"POST / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_client_that_closes_at_once_is_not_http2() {
        let (client, server) = pair().await;
        drop(client);
        assert!(!speaks_h2(&server).await.unwrap());
    }
}
