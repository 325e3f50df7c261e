//! The connections to one endpoint, and the lease by which a response body hands its
//! HTTP/1.1 connection back.
//!
//! Generic over the request body so that this file needs nothing of `body.rs`: a response
//! body holds a [`Lease`] (it must, to return the connection when it ends), and nothing here
//! needs to know what a body is. `upstream.rs` names the one body keyless sends.

use http::HeaderValue;
use http::uri::{Authority, Scheme};
use hyper::client::conn::{http1, http2};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Azure closes idle connections after about four minutes; keyless drops its own before.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The connections to one endpoint.
pub(super) struct Pool<B> {
    pub(super) scheme: Scheme,
    pub(super) authority: Authority,
    /// The `Host` header of HTTP/1.1 requests, made once.
    pub(super) host: HeaderValue,
    state: Mutex<PoolState<B>>,
}

struct PoolState<B> {
    /// Idle HTTP/1.1 connections, the most recently used last.
    idle: Vec<(http1::SendRequest<B>, Instant)>,
    /// The HTTP/2 connection every request shares, once Azure chose HTTP/2.
    h2: Option<http2::SendRequest<B>>,
}

/// An HTTP/1.1 connection lent to one response: handed back to the pool when the body
/// was read to its end, closed when it is dropped before (hyper cannot reuse it then).
pub struct Lease<B>(Option<(Arc<Pool<B>>, http1::SendRequest<B>)>);

impl<B> Default for Lease<B> {
    fn default() -> Self {
        Lease(None)
    }
}

impl<B> Lease<B> {
    /// `sender`, lent from `pool`.
    pub(super) fn new(pool: Arc<Pool<B>>, sender: http1::SendRequest<B>) -> Self {
        Lease(Some((pool, sender)))
    }

    /// The body ended cleanly: the connection can carry the next request.
    pub fn release(&mut self) {
        if let Some((pool, sender)) = self.0.take() {
            pool.lock().idle.push((sender, Instant::now()));
        }
    }
}

impl<B> std::fmt::Debug for Lease<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Lease").field(&self.0.is_some()).finish()
    }
}

impl<B> Pool<B> {
    /// An empty pool for `scheme://authority`.
    pub(super) fn new(scheme: Scheme, authority: Authority, host: HeaderValue) -> Self {
        Pool {
            scheme,
            authority,
            host,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                h2: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState<B>> {
        // A panic elsewhere cannot leave the lists half-changed: every change is one push,
        // pop or assignment.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shared HTTP/2 connection while it is open.
    pub(super) fn h2(&self) -> Option<http2::SendRequest<B>> {
        let mut state = self.lock();
        match &state.h2 {
            Some(h2) if !h2.is_closed() => Some(h2.clone()),
            Some(_) => {
                state.h2 = None;
                None
            }
            None => None,
        }
    }

    /// Shares `h2` with every request from now on.
    pub(super) fn set_h2(&self, h2: http2::SendRequest<B>) {
        self.lock().h2 = Some(h2);
    }

    /// The most recently used idle connection that has not idled too long.
    pub(super) fn idle(&self) -> Option<http1::SendRequest<B>> {
        let mut state = self.lock();
        while let Some((sender, since)) = state.idle.pop() {
            if since.elapsed() > IDLE_TIMEOUT {
                // The rest are older still.
                state.idle.clear();
                return None;
            }
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }
}
