//! The token cache: one background task acquires tokens, requests read them lock-free.
//!
//! Invariants:
//! - exactly one acquisition is in flight at any time, whatever the request rate: only the
//!   refresher task calls [`Acquire::acquire`];
//! - requests never wait for a refresh while a valid token is held: the refresher runs
//!   well before expiry (linkerd's `identity-client` refreshes at ~70% of the lifetime);
//! - a request that finds no valid token waits for the refresher's current attempt, and
//!   gets that attempt's error if it fails;
//! - a failed refresh keeps the current token while it is valid and retries with backoff.

use super::{Acquire, AuthError, Token};
use crate::rewrite::bearer;
use arc_swap::ArcSwapOption;
use http::HeaderValue;
use rand::Rng;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// A token ready for use: the `Authorization` value and when to stop using it.
struct Held {
    authorization: HeaderValue,
    /// A margin before the real expiry, so that a token never expires in flight.
    usable_until: Instant,
    expires_at: SystemTime,
}

/// What the refresher is doing, for requests that have no valid token to read.
#[derive(Clone, Debug)]
pub enum TokenState {
    /// An acquisition is in flight.
    Acquiring,
    /// A token is held.
    Held,
    /// The last acquisition failed; the refresher retries after a backoff.
    Failed(AuthError),
}

struct Inner {
    source: Arc<dyn Acquire>,
    scope: String,
    timeout: Duration,
    current: ArcSwapOption<Held>,
    state: watch::Sender<TokenState>,
    /// Wakes the refresher early (the token was rejected upstream).
    wake: Notify,
    acquired: AtomicU64,
    failed: AtomicU64,
    /// When a 401 last forced a refresh (off the hot path: only rejected requests lock it).
    last_invalidation: std::sync::Mutex<Option<Instant>>,
}

/// A shared, background-refreshed Entra token for one scope. Cheap to clone.
#[derive(Clone)]
pub struct TokenCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("source", &self.inner.source.name())
            .field("scope", &self.inner.scope)
            .finish_non_exhaustive()
    }
}

/// Shortest time between two refreshes forced by Azure rejecting the held token.
pub const INVALIDATE_COOLDOWN: Duration = Duration::from_secs(30);

/// Shortest and longest wait between failed acquisitions.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl TokenCache {
    /// Starts the refresher, which acquires the first token at once and runs until
    /// `shutdown` fires. `timeout` bounds each acquisition.
    pub fn start(
        source: Arc<dyn Acquire>,
        scope: String,
        timeout: Duration,
        shutdown: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> TokenCache {
        let (state, _) = watch::channel(TokenState::Acquiring);
        let inner = Arc::new(Inner {
            source,
            scope,
            timeout,
            current: ArcSwapOption::empty(),
            state,
            wake: Notify::new(),
            acquired: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_invalidation: std::sync::Mutex::new(None),
        });
        tasks.spawn(refresh_loop(inner.clone(), shutdown));
        TokenCache { inner }
    }

    /// The `Authorization` value to send. A lock-free load on the hot path; waits only
    /// when no valid token is held, and then for the one acquisition in flight.
    pub async fn authorization(&self) -> Result<HeaderValue, AuthError> {
        if let Some(value) = self.valid() {
            return Ok(value);
        }
        let mut rx = self.inner.state.subscribe();
        loop {
            if let Some(value) = self.valid() {
                return Ok(value);
            }
            match &*rx.borrow_and_update() {
                TokenState::Failed(err) => return Err(err.clone()),
                TokenState::Held | TokenState::Acquiring => {}
            }
            if rx.changed().await.is_err() {
                return Err(AuthError {
                    credential: self.inner.source.name(),
                    message: "the token refresher has stopped".into(),
                });
            }
        }
    }

    fn valid(&self) -> Option<HeaderValue> {
        let guard = self.inner.current.load();
        match guard.as_deref() {
            Some(held) if Instant::now() < held.usable_until => Some(held.authorization.clone()),
            _ => None,
        }
    }

    /// Whether a valid token is held (readiness).
    pub fn is_ready(&self) -> bool {
        self.valid().is_some()
    }

    /// When the held token expires, if one is held.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.inner.current.load().as_deref().map(|h| h.expires_at)
    }

    /// The refresher's state.
    pub fn state(&self) -> TokenState {
        self.inner.state.borrow().clone()
    }

    /// The scope this cache holds tokens for.
    pub fn scope(&self) -> &str {
        &self.inner.scope
    }

    /// Acquisitions so far: (succeeded, failed).
    pub fn acquisitions(&self) -> (u64, u64) {
        (
            self.inner.acquired.load(Ordering::Relaxed),
            self.inner.failed.load(Ordering::Relaxed),
        )
    }

    /// Which credential is in use.
    pub fn source_name(&self) -> String {
        self.inner.source.name()
    }

    /// Drops the held token if it is `rejected` (Azure answered 401 to it) and asks the
    /// refresher for a new one now. Returns whether a request should be replayed with the
    /// token the cache will hand out next.
    ///
    /// A token already replaced is left alone (many requests rejected together cause one
    /// acquisition), and so is one rejected again within [`INVALIDATE_COOLDOWN`] of the
    /// last forced refresh: a token Azure always refuses (wrong tenant or audience) must
    /// not make keyless ask Entra once per request.
    pub fn invalidate(&self, rejected: &HeaderValue) -> bool {
        // The whole decision is made under the lock: every invalidation reads and changes
        // the held token and the cool-down together. Checked before the lock, a request
        // could see the rejected token still held, then find the cool-down another
        // request had just set for that very token, and pass Azure's 401 on instead of
        // replaying with the new token.
        let Ok(mut last) = self.inner.last_invalidation.lock() else {
            return false;
        };
        let current = self.inner.current.load();
        match decide_invalidation(
            current.as_deref().map(|h| &h.authorization),
            rejected,
            *last,
            Instant::now(),
        ) {
            Invalidation::Replay => true,
            Invalidation::PassOn => false,
            Invalidation::Drop => {
                *last = Some(Instant::now());
                self.inner
                    .current
                    .compare_and_swap(&current, None::<Arc<Held>>);
                self.inner.state.send_replace(TokenState::Acquiring);
                self.inner.wake.notify_one();
                true
            }
        }
    }
}

/// What a 401 to `rejected` does, given the token `held` now and the last forced refresh.
#[derive(Debug, PartialEq, Eq)]
enum Invalidation {
    /// The token was already replaced (or is being): replay with the next one.
    Replay,
    /// Drop the held token, fetch a new one, and replay.
    Drop,
    /// The token fetched by a forced refresh moments ago is refused too: pass Azure's
    /// answer on, and ask Entra no more within the cool-down.
    PassOn,
}

fn decide_invalidation(
    held: Option<&HeaderValue>,
    rejected: &HeaderValue,
    last: Option<Instant>,
    now: Instant,
) -> Invalidation {
    match held {
        None => Invalidation::Replay,
        Some(held) if held != rejected => Invalidation::Replay,
        Some(_)
            if last.is_some_and(|at| now.saturating_duration_since(at) < INVALIDATE_COOLDOWN) =>
        {
            Invalidation::PassOn
        }
        Some(_) => Invalidation::Drop,
    }
}

async fn refresh_loop(inner: Arc<Inner>, shutdown: CancellationToken) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if usable_for(&inner).is_none() {
            inner.state.send_replace(TokenState::Acquiring);
        }
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(inner.timeout, inner.source.acquire(&inner.scope)) => r,
        };
        let result = result.unwrap_or_else(|_| {
            Err(AuthError {
                credential: inner.source.name(),
                message: format!("no token within {:?}", inner.timeout),
            })
        });
        let next = match result.and_then(|token| store(&inner, token)) {
            Ok(refresh_in) => {
                inner.acquired.fetch_add(1, Ordering::Relaxed);
                backoff = BACKOFF_MIN;
                tracing::debug!(credential = %inner.source.name(), refresh_in = ?refresh_in, "token acquired");
                refresh_in
            }
            Err(err) => {
                inner.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %err, retry_in = ?backoff, "token acquisition failed");
                if usable_for(&inner).is_none() {
                    inner.current.store(None);
                    inner.state.send_replace(TokenState::Failed(err));
                }
                let wait = backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                wait
            }
        };
        // Sleep until the next refresh, or until the held token becomes unusable (so that
        // waiting requests see a fresh attempt rather than a stale state), or until woken
        // by an invalidation.
        let next = usable_for(&inner).map_or(next, |left| next.min(left));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(next) => {}
            _ = inner.wake.notified() => {}
        }
    }
}

/// How long the held token stays usable, if one is held and usable.
fn usable_for(inner: &Inner) -> Option<Duration> {
    let held = inner.current.load();
    let left = held
        .as_deref()?
        .usable_until
        .checked_duration_since(Instant::now())?;
    (!left.is_zero()).then_some(left)
}

/// Stores a fresh token; returns how long until the next refresh.
fn store(inner: &Inner, token: Token) -> Result<Duration, AuthError> {
    let now = SystemTime::now();
    let lifetime = token.expires_at.duration_since(now).unwrap_or_default();
    if lifetime.is_zero() {
        return Err(AuthError {
            credential: inner.source.name(),
            message: "the credential returned a token that has already expired".into(),
        });
    }
    let authorization = bearer(token.secret.expose()).map_err(|_| AuthError {
        credential: inner.source.name(),
        message: "the credential returned a token that is not a valid header value".into(),
    })?;
    // Stop using a token shortly before it expires: 30 s, or a tenth of a short lifetime.
    let margin = (lifetime / 10).min(Duration::from_secs(30));
    let usable_for = lifetime - margin;
    inner.current.store(Some(Arc::new(Held {
        authorization,
        usable_until: Instant::now() + usable_for,
        expires_at: token.expires_at,
    })));
    inner.state.send_replace(TokenState::Held);
    Ok(refresh_delay(lifetime, &mut rand::rng()))
}

/// When to refresh a token of `lifetime`: at 2/3 of it or 5 minutes before expiry,
/// whichever is sooner, but not before half of it; minus up to 10% jitter so that many
/// keyless instances started together do not refresh together.
pub(crate) fn refresh_delay(lifetime: Duration, rng: &mut impl Rng) -> Duration {
    let two_thirds = lifetime * 2 / 3;
    let five_before = lifetime.saturating_sub(Duration::from_secs(300));
    let at = two_thirds.min(five_before).max(lifetime / 2);
    let jitter = rng.random_range(0.9..=1.0);
    at.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;
    use futures_util::future::BoxFuture;
    use std::sync::atomic::AtomicUsize;

    struct Counting {
        calls: AtomicUsize,
        lifetime: Duration,
        fail: bool,
        delay: Duration,
    }

    impl Acquire for Counting {
        fn acquire<'a>(&'a self, _scope: &'a str) -> BoxFuture<'a, Result<Token, AuthError>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(self.delay).await;
                if self.fail {
                    return Err(AuthError {
                        credential: "Counting".into(),
                        message: "no identity here".into(),
                    });
                }
                Ok(Token {
                    secret: Secret::new(format!("token-{n}")),
                    expires_at: SystemTime::now() + self.lifetime,
                })
            })
        }
        fn name(&self) -> String {
            "Counting".into()
        }
    }

    fn start(source: Arc<Counting>) -> TokenCache {
        TokenCache::start(
            source,
            "scope".into(),
            Duration::from_secs(5),
            CancellationToken::new(),
            &tokio_util::task::TaskTracker::new(),
        )
    }

    #[test]
    fn refresh_is_at_two_thirds_or_five_minutes_before_expiry() {
        let mut rng = rand::rng();
        for _ in 0..100 {
            let hour = refresh_delay(Duration::from_secs(3600), &mut rng);
            assert!(hour <= Duration::from_secs(2400) && hour >= Duration::from_secs(2160));
            let day = refresh_delay(Duration::from_secs(86_400), &mut rng);
            assert!(day <= Duration::from_secs(57_600) && day >= Duration::from_secs(51_840));
            let short = refresh_delay(Duration::from_secs(6), &mut rng);
            assert!(short <= Duration::from_secs(4) && short >= Duration::from_millis(2700));
        }
    }

    #[tokio::test]
    async fn concurrent_cold_requests_share_one_acquisition() {
        let source = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            lifetime: Duration::from_secs(3600),
            fail: false,
            delay: Duration::from_millis(50),
        });
        let cache = start(source.clone());
        let waiters: Vec<_> = (0..200)
            .map(|_| {
                let c = cache.clone();
                tokio::spawn(async move { c.authorization().await })
            })
            .collect();
        for w in waiters {
            assert_eq!(w.await.unwrap().unwrap(), "Bearer token-0");
        }
        assert_eq!(source.calls.load(Ordering::SeqCst), 1);
        assert!(cache.is_ready());
    }

    #[tokio::test]
    async fn failure_reaches_waiters_with_the_credentials_words() {
        let source = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            lifetime: Duration::from_secs(3600),
            fail: true,
            delay: Duration::from_millis(10),
        });
        let cache = start(source);
        let err = cache.authorization().await.unwrap_err();
        assert_eq!(err.to_string(), "Counting: no identity here");
        assert!(!cache.is_ready());
    }

    #[tokio::test]
    async fn invalidate_gets_a_new_token_once() {
        let source = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            lifetime: Duration::from_secs(3600),
            fail: false,
            delay: Duration::from_millis(10),
        });
        let cache = start(source.clone());
        let first = cache.authorization().await.unwrap();
        assert!(cache.invalidate(&first));
        assert!(
            cache.invalidate(&first),
            "already being replaced: replay with the next"
        );
        let second = cache.authorization().await.unwrap();
        assert_eq!(second, "Bearer token-1");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(source.calls.load(Ordering::SeqCst), 2);
        // Azure refuses the new token too, at once: no third acquisition within the
        // cool-down, and no replay.
        assert!(!cache.invalidate(&second));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(source.calls.load(Ordering::SeqCst), 2);
        assert_eq!(cache.authorization().await.unwrap(), "Bearer token-1");
    }

    #[test]
    fn a_rejection_of_a_replaced_token_always_replays() {
        let old = bearer("old").unwrap();
        let new = bearer("new").unwrap();
        let now = Instant::now();
        let just_now = Some(now);
        // Another request already dropped the old token (the cool-down is set): whether
        // the new one has arrived or not, this request replays.
        assert_eq!(
            decide_invalidation(None, &old, just_now, now),
            Invalidation::Replay
        );
        assert_eq!(
            decide_invalidation(Some(&new), &old, just_now, now),
            Invalidation::Replay
        );
        // The held token itself is refused: drop it, unless a forced refresh just gave it.
        assert_eq!(
            decide_invalidation(Some(&old), &old, None, now),
            Invalidation::Drop
        );
        assert_eq!(
            decide_invalidation(Some(&new), &new, just_now, now),
            Invalidation::PassOn
        );
        let long_ago = now.checked_sub(INVALIDATE_COOLDOWN + Duration::from_secs(1));
        assert_eq!(
            decide_invalidation(Some(&new), &new, long_ago, now),
            Invalidation::Drop
        );
    }

    /// The race of issue 11: many threads refused with one token at once. Released
    /// together by a barrier, each must be told to replay (one drops the token, the rest
    /// see it gone), and the token must be dropped once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rejections_released_together_all_replay() {
        let source = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            lifetime: Duration::from_secs(3600),
            fail: false,
            delay: Duration::from_millis(10),
        });
        let cache = start(source.clone());
        let first = cache.authorization().await.unwrap();
        let threads = 16;
        let barrier = Arc::new(std::sync::Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (cache, barrier, first) = (cache.clone(), barrier.clone(), first.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    cache.invalidate(&first)
                })
            })
            .collect();
        let replays = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|replay| *replay)
            .count();
        assert_eq!(
            replays, threads,
            "every request refused with the old token replays"
        );
        let second = cache.authorization().await.unwrap();
        assert_ne!(second, first);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(source.calls.load(Ordering::SeqCst), 2, "one new token");
    }

    #[test]
    fn debug_shows_no_token() {
        let held = bearer("very-secret").unwrap();
        assert!(!format!("{held:?}").contains("very-secret"));
    }
}
