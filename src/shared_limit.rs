//! Rate limits shared by every replica through Redis (issue 12.6).
//!
//! Each decision is one Lua script in Redis (`EVALSHA`, one round trip, atomic) that runs
//! a GCRA step for every budget the request must fit in ([`SharedLimits::check_all`]: an
//! app's and its deployment's requests and tokens; all are spent or none is), timed by the
//! Redis server's own clock (`TIME`), so replicas on machines whose clocks disagree still
//! share one budget. A single Redis, not Redis Cluster: the budgets of one decision are
//! keys of one script. The arithmetic is governor's (the crate
//! behind [`crate::limit`]): a rate of N per minute is one unit every 60/N s, a burst of B
//! lets B units through at once, and a request of cost k needs k units.
//!
//! Redis is a helper, never a dependency of a request: every call is bounded by a short
//! timeout (a few milliseconds), and while Redis is down [`SharedLimits::check`] answers
//! [`Verdict::Unavailable`] at once, without touching the network, so that the caller
//! falls back to its per-process limits. A background task reconnects with backoff, and
//! the transitions are logged once each way and exported as `keyless_limits_backend_up`.
//!
//! The Redis URL may carry a password: it appears nowhere (logs, errors, `Debug`) except
//! in the connection itself; everywhere else it is shown with its user information and
//! query replaced (see [`redact`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), keyless::shared_limit::Error> {
//! use keyless::shared_limit::{Budget, Decision, SharedLimits, DEFAULT_TIMEOUT};
//! use std::num::NonZeroU32;
//! use tokio_util::{sync::CancellationToken, task::TaskTracker};
//!
//! let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
//! let limits = SharedLimits::connect("redis://10.0.0.5:6379", DEFAULT_TIMEOUT, stop, &tasks)?;
//! let per_minute = NonZeroU32::MIN.saturating_add(59); // 60
//! let request = [
//!     Budget { key: "app:billing:rpm", per_minute, burst: per_minute, cost: 1 },
//!     Budget { key: "deployment:prod-4o-mini:rpm", per_minute, burst: per_minute, cost: 1 },
//! ];
//! match limits.check_all(&request).await {
//!     Decision::Admit(headroom) => { /* serve; headroom[i] feeds x-ratelimit-*-requests */ }
//!     Decision::Reject { retry_after, .. } => { /* 429 with retry-after */ }
//!     Decision::TooLarge { .. } => { /* 429 that no wait cures */ }
//!     Decision::Unavailable => { /* decide with the per-process limits */ }
//! }
//! # Ok(()) }
//! ```

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::gauge::Gauge;
use rand::Rng;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Script, TlsCertificates};
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use url::Url;

/// The bound on the background work: connecting, loading the script, the health probe.
/// Requests never wait for it; it only decides how soon a dead Redis is noticed by a
/// replica that sends no requests.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a connection that is up is probed when no request notices a failure.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Reconnection backoff: doubling from the first to the last, each wait with up to a
/// quarter of jitter so that replicas restarted together do not reconnect in step.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A connection that breaks within this long of being made counts as flapping.
const FLAP_WINDOW: Duration = Duration::from_secs(30);
/// The decision timeout to use when nothing else is configured: a Redis round trip in the
/// same region is well under a millisecond, and a request must never wait long for one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5);
/// Timeouts in a row that take a connection down. One slow answer is one `Unavailable`;
/// a run of them means Redis hangs (or the network drops packets), and reconnecting
/// (which checks the latency again) is better than paying the timeout on every request.
const TIMEOUTS_TO_DOWN: u32 = 3;
/// Unexpected server replies (not connection failures) are logged at most this often.
const SERVER_ERROR_LOG_EVERY: Duration = Duration::from_secs(60);
/// Every key this module writes starts with this.
pub const KEY_PREFIX: &str = "keyless:gcra:";

/// One GCRA decision over several budgets, all or nothing, in microseconds on the Redis
/// server's clock.
///
/// KEYS: the budgets' keys. ARGV: per budget, its rate per minute, burst and this
/// request's cost (all positive integers but the cost, which may be 0: a look at the
/// budget that spends nothing).
/// Each key holds its theoretical arrival time (TAT), a float of microseconds since the
/// epoch (about 1.8e15: exact to a quarter of a microsecond in a double), written with
/// `%.17g` so it round-trips. governor's test, with T the emission interval and
/// tau = T * (burst - 1): a budget admits at `now` iff now >= TAT + (cost - 1) * T - tau,
/// and then TAT' = max(TAT, now) + cost * T. The request is admitted only if every budget
/// admits it, and then every budget is spent; otherwise none is.
/// Returns {admitted (1 or 0), then per budget: wait_us, remaining, reset_us}. `wait` is how
/// long until that budget alone would admit the request (0 if it does now, -1 never: a cost
/// above the burst); `remaining` the units a request could still spend now; `reset` the
/// time until the whole burst is available again (what OpenAI's `x-ratelimit-reset-*`
/// headers mean). Both are floored/ceiled with a microsecond of slack for the float error
/// of subtracting two large times.
const GCRA_LUA: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local budgets = {}
local admit = true
for i = 1, #KEYS do
  local per_minute = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local t = 60000000 / per_minute
  local tau = t * (burst - 1)
  local tat = tonumber(redis.call('GET', KEYS[i]) or now) or now
  if tat < now then tat = now end
  local wait = 0
  if cost > burst then
    wait = -1
    admit = false
  elseif cost > 0 then
    local earliest = tat + (cost - 1) * t - tau
    if now < earliest then
      wait = math.ceil(earliest - now)
      admit = false
    end
  end
  budgets[i] = {t = t, tau = tau, burst = burst, cost = cost, tat = tat, wait = wait}
end
local out = {admit and 1 or 0}
for i, b in ipairs(budgets) do
  local at = b.tat
  if admit and b.cost > 0 then
    at = b.tat + b.cost * b.t
    redis.call('SET', KEYS[i], string.format('%.17g', at), 'PX', math.ceil((at - now) / 1000) + 1)
  end
  local remaining = math.floor((now + b.tau + b.t - at + 1) / b.t)
  if remaining < 0 then remaining = 0 end
  if remaining > b.burst then remaining = b.burst end
  out[#out + 1] = b.wait
  out[#out + 1] = remaining
  out[#out + 1] = math.max(0, math.ceil(at - now - 1))
end
return out
"#;

/// One budget a request must fit in, for [`SharedLimits::check_all`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget<'a> {
    /// The budget's name, stored as `keyless:gcra:{key}` (e.g. `app:billing:rpm`).
    pub key: &'a str,
    /// Units a minute.
    pub per_minute: NonZeroU32,
    /// Units that may be spent at once.
    pub burst: NonZeroU32,
    /// What this request costs (1 for a request budget, the token estimate for a token
    /// budget; 0 looks at the budget without spending).
    pub cost: u32,
}

/// A budget's state after a decision, for OpenAI's `x-ratelimit-remaining-*` and
/// `x-ratelimit-reset-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    /// Units a request could still spend now.
    pub remaining: u32,
    /// Time until the whole burst is available again.
    pub reset: Duration,
}

/// What Redis decided about one request against several budgets at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every budget admitted the request, and every one is spent. One [`Headroom`] a
    /// budget, in the order given.
    Admit(Vec<Headroom>),
    /// At least one budget refused, and none is spent.
    Reject {
        /// How long until every budget would admit the request: the longest wait of the
        /// budgets that refused (nothing is spent meanwhile, so the others still will).
        retry_after: Duration,
        /// The budget with that wait (an index into the budgets given).
        limiting: usize,
        /// One [`Headroom`] a budget, in the order given, none of them spent.
        budgets: Vec<Headroom>,
    },
    /// Budget `index`'s cost is larger than its burst: no wait would ever admit it.
    /// Decided without Redis, so also the answer while Redis is down.
    TooLarge {
        /// The budget (an index into the budgets given).
        index: usize,
        /// Its burst.
        burst: u32,
    },
    /// Redis is down, or did not answer within the timeout: decide with the per-process
    /// limits instead. Nothing is known about the shared budgets.
    Unavailable,
}

/// What Redis decided about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted: the units are spent.
    Admit {
        /// Units a request could still spend now (`x-ratelimit-remaining-*`).
        remaining: u32,
        /// Time until the whole burst is available again (`x-ratelimit-reset-*`).
        reset: Duration,
    },
    /// Not admitted now; nothing was spent.
    Reject {
        /// How long until this request (this cost) would be admitted (`retry-after`).
        retry_after: Duration,
        /// Units a request could still spend now (fewer than this request's cost).
        remaining: u32,
        /// Time until the whole burst is available again.
        reset: Duration,
    },
    /// The cost is larger than the burst: no wait would ever admit it, so there is no
    /// `retry_after`. Decided without Redis (it does not depend on the budget's state),
    /// so it is also the answer while Redis is down. A caller that wants
    /// [`crate::limit`]'s rule for oversized token estimates (count them as a full
    /// burst) asks again with `cost.min(burst)`.
    TooLarge {
        /// The burst the cost exceeded.
        burst: u32,
    },
    /// Redis is down, or did not answer within the timeout: decide with the per-process
    /// limits instead. Nothing is known about the shared budget.
    Unavailable,
}

/// Why [`SharedLimits::connect`] refused. Nothing about Redis being reachable: that is
/// found out (and recovered from) in the background.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL is not one the Redis client accepts. The message never holds the URL's
    /// user information.
    #[error("invalid Redis URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, redacted ([`redact`]).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A zero timeout would make every decision `Unavailable`.
    #[error("the Redis timeout must be more than zero")]
    ZeroTimeout,
    /// `connect` was called outside a Tokio runtime, so the reconnecting task cannot run.
    #[error("shared limits need a Tokio runtime to reconnect in")]
    NoRuntime,
}

/// Shared GCRA budgets kept in one Redis. Cheap to clone: every clone uses the same
/// connection and state. The background task ends when the `stop` token given to
/// [`SharedLimits::connect`] fires or the last clone is dropped.
#[derive(Clone)]
pub struct SharedLimits {
    shared: Arc<Shared>,
    // Dropped with the last clone: stops the background task.
    _stop: Arc<DropGuard>,
}

/// The state the handles and the background task share.
struct Shared {
    /// The URL as it may be shown.
    target: String,
    timeout: Duration,
    script: Script,
    /// `Some` exactly while Redis is up: requests read it without a lock.
    connection: ArcSwapOption<MultiplexedConnection>,
    /// Timeouts in a row on the current connection.
    timeouts: AtomicU32,
    /// A request found the connection broken: wakes the background task.
    failed: Notify,
    /// Up (`true`) or down, for [`SharedLimits::wait_up`].
    up: watch::Sender<bool>,
    gauge: Gauge,
    /// Milliseconds since `started` when a server error was last logged (0: never).
    server_error_logged: AtomicU64,
    started: Instant,
}

impl fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedLimits")
            .field("redis", &self.shared.target)
            .field("timeout", &self.shared.timeout)
            .field("up", &self.is_up())
            .finish()
    }
}

impl SharedLimits {
    /// Starts keeping budgets in the Redis at `url` (`redis://`, `rediss://` with rustls
    /// and the system's roots, `redis+unix://`). Never waits for Redis and never fails
    /// because it is unreachable: it starts down ([`Verdict::Unavailable`]) and connects
    /// in a background task, tracked by `tasks`, that reconnects with backoff until
    /// `stop` fires. `timeout` bounds each decision (a few milliseconds: a decision that
    /// takes longer is `Unavailable`, and the caller decides locally).
    ///
    /// Fails only for a URL the client cannot use, a zero timeout, or no Tokio runtime.
    pub fn connect(
        url: &str,
        timeout: Duration,
        stop: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<SharedLimits, Error> {
        SharedLimits::start(url, None, timeout, stop, tasks)
    }

    /// [`SharedLimits::connect`] for a `rediss://` URL whose server certificate is signed
    /// by a private CA: `roots_pem` (PEM certificates) are the only roots trusted, instead
    /// of the system's.
    pub fn connect_with_roots(
        url: &str,
        roots_pem: &[u8],
        timeout: Duration,
        stop: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<SharedLimits, Error> {
        SharedLimits::start(url, Some(roots_pem), timeout, stop, tasks)
    }

    fn start(
        url: &str,
        roots_pem: Option<&[u8]>,
        timeout: Duration,
        stop: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<SharedLimits, Error> {
        let target = redact(url);
        let invalid = |reason: String| Error::InvalidUrl {
            url: target.clone(),
            reason,
        };
        let parsed = Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        // The client's own error text is not shown: it is not ours to vouch that it
        // never quotes the URL. Its kind says enough.
        let client = match roots_pem {
            None => Client::open(parsed),
            Some(roots) => Client::build_with_tls(
                parsed,
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(roots.to_vec()),
                },
            ),
        }
        .map_err(|e| invalid(format!("{:?}", e.kind())))?;
        if timeout.is_zero() {
            return Err(Error::ZeroTimeout);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let gauge = Gauge::default();
        gauge.set(0);
        let shared = Arc::new(Shared {
            target,
            timeout,
            script: Script::new(GCRA_LUA),
            connection: ArcSwapOption::empty(),
            timeouts: AtomicU32::new(0),
            failed: Notify::new(),
            up: watch::Sender::new(false),
            gauge,
            server_error_logged: AtomicU64::new(0),
            started: Instant::now(),
        });
        let stop = stop.child_token();
        tasks.spawn_on(supervise(shared.clone(), client, stop.clone()), &runtime);
        Ok(SharedLimits {
            shared,
            _stop: Arc::new(stop.drop_guard()),
        })
    }

    /// One GCRA decision for the budget `key` (stored as `keyless:gcra:{key}`): a rate of
    /// `per_minute` units a minute, a burst of `burst` units, and this request costs
    /// `cost` units (0 looks at the budget without spending). One round trip, bounded by
    /// the timeout; no network call at all while Redis is down.
    ///
    /// Every replica must use the same `per_minute` and `burst` for a key: the key holds
    /// only the time the budget is next full, which the rate and burst interpret.
    pub async fn check(
        &self,
        key: &str,
        per_minute: NonZeroU32,
        burst: NonZeroU32,
        cost: u32,
    ) -> Verdict {
        let budget = Budget {
            key,
            per_minute,
            burst,
            cost,
        };
        match self.check_all(&[budget]).await {
            Decision::Admit(budgets) => match budgets.first() {
                Some(h) => Verdict::Admit {
                    remaining: h.remaining,
                    reset: h.reset,
                },
                None => Verdict::Unavailable,
            },
            Decision::Reject {
                retry_after,
                budgets,
                ..
            } => match budgets.first() {
                Some(h) => Verdict::Reject {
                    retry_after,
                    remaining: h.remaining,
                    reset: h.reset,
                },
                None => Verdict::Unavailable,
            },
            Decision::TooLarge { burst, .. } => Verdict::TooLarge { burst },
            Decision::Unavailable => Verdict::Unavailable,
        }
    }

    /// One decision for a request that must fit in every one of `budgets` (an app's
    /// requests and tokens, its deployment's requests and tokens): one script, one round
    /// trip, atomic, all or nothing, so a request one budget refuses spends nothing from
    /// the others. Bounded by the timeout; no network call at all while Redis is down,
    /// none either for no budgets (`Admit` of nothing) or a cost above its burst.
    pub async fn check_all(&self, budgets: &[Budget<'_>]) -> Decision {
        if let Some((index, b)) = budgets
            .iter()
            .enumerate()
            .find(|(_, b)| b.cost > b.burst.get())
        {
            return Decision::TooLarge {
                index,
                burst: b.burst.get(),
            };
        }
        if budgets.is_empty() {
            return Decision::Admit(Vec::new());
        }
        let shared = &self.shared;
        let Some(connection) = shared.connection.load_full() else {
            return Decision::Unavailable;
        };
        let mut conn = (*connection).clone();
        let mut invocation = shared.script.prepare_invoke();
        for b in budgets {
            invocation
                .key(format!("{KEY_PREFIX}{}", b.key))
                .arg(b.per_minute.get())
                .arg(b.burst.get())
                .arg(b.cost);
        }
        let answer = tokio::time::timeout(
            shared.timeout,
            invocation.invoke_async::<Vec<i64>>(&mut conn),
        )
        .await;
        match answer {
            Ok(Ok(reply)) => {
                shared.timeouts.store(0, Ordering::Relaxed);
                match decision(&reply, budgets.len()) {
                    Some(d) => d,
                    None => {
                        shared.server_error(&format!("unexpected reply {reply:?}"));
                        Decision::Unavailable
                    }
                }
            }
            Ok(Err(error)) if is_connection_failure(&error) => {
                shared.take_down(&connection, &error.to_string());
                Decision::Unavailable
            }
            Ok(Err(error)) => {
                // A reply, so the connection works: an error about a key or the script
                // (a key of another type, the script killed, out of memory).
                shared.server_error(&error.to_string());
                Decision::Unavailable
            }
            Err(_elapsed) => {
                let late = shared.timeouts.fetch_add(1, Ordering::Relaxed) + 1;
                if late >= TIMEOUTS_TO_DOWN {
                    let reason = format!(
                        "no answer within {} {late} times in a row",
                        humantime::format_duration(shared.timeout)
                    );
                    shared.take_down(&connection, &reason);
                }
                Decision::Unavailable
            }
        }
    }

    /// Whether decisions are being made in Redis now (`false` while connecting, after a
    /// failure, and until the reconnection succeeds).
    pub fn is_up(&self) -> bool {
        self.shared.connection.load().is_some()
    }

    /// Waits up to `within` for Redis to be up; returns [`SharedLimits::is_up`]. For
    /// start-up (so the first requests are shared when Redis is there) and tests.
    pub async fn wait_up(&self, within: Duration) -> bool {
        let mut up = self.shared.up.subscribe();
        let _ = tokio::time::timeout(within, up.wait_for(|up| *up)).await;
        self.is_up()
    }

    /// `keyless_limits_backend_up`: 1 while Redis is up, 0 while limits are per process.
    /// The same gauge each call (a handle on it): register it once, as `limits_backend_up`
    /// in telemetry's `keyless`-prefixed registry.
    pub fn up_gauge(&self) -> Gauge {
        self.shared.gauge.clone()
    }
}

impl Shared {
    /// Takes `broken` out of service (if it is still the current connection: a late
    /// failure of an old connection must not take down its replacement), logs the
    /// transition once and wakes the background task to reconnect.
    fn take_down(&self, broken: &Arc<MultiplexedConnection>, reason: &str) {
        let current = self.connection.load_full();
        let is_current = current.as_ref().is_some_and(|c| Arc::ptr_eq(c, broken));
        if !is_current {
            return;
        }
        let previous = self.connection.compare_and_swap(&current, None);
        let we_took_it = previous.as_ref().is_some_and(|c| Arc::ptr_eq(c, broken));
        if we_took_it {
            self.gauge.set(0);
            self.up.send_replace(false);
            tracing::warn!(
                redis = %self.target,
                reason,
                "shared rate limits unavailable: limits are per process until Redis answers again"
            );
            self.failed.notify_one();
        }
    }

    /// Logs an unexpected server reply, at most once a minute.
    fn server_error(&self, reason: &str) {
        let now = (self.started.elapsed().as_millis() as u64).max(1);
        let last = self.server_error_logged.load(Ordering::Relaxed);
        let due =
            last == 0 || now.saturating_sub(last) >= SERVER_ERROR_LOG_EVERY.as_millis() as u64;
        if due
            && self
                .server_error_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                redis = %self.target,
                reason,
                "a shared rate limit decision failed; this request was limited per process"
            );
        }
    }
}

/// The background task: connect (with backoff), then watch the connection (a request's
/// failure or the periodic probe) until it breaks, and again, until `stop`.
async fn supervise(shared: Arc<Shared>, client: Client, stop: CancellationToken) {
    let mut ever_up = false;
    let mut said_unreachable = false;
    let mut backoff = BACKOFF_FIRST;
    let mut up_since: Option<Instant> = None;
    loop {
        // Down: connect, with backoff. A connection that broke soon after it was made
        // means a flapping Redis: then the backoff goes on from where it was, before the
        // first attempt too, so that Redis and the log see at most one reconnection per
        // backoff. Otherwise the first attempt is at once, for a quick recovery.
        if up_since.is_some_and(|since| since.elapsed() < FLAP_WINDOW) {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(jittered(backoff)) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        } else {
            backoff = BACKOFF_FIRST;
        }
        let connection = loop {
            let attempt = tokio::select! {
                _ = stop.cancelled() => return,
                attempt = establish(&shared, &client) => attempt,
            };
            match attempt {
                Ok(connection) => break connection,
                Err(reason) => {
                    if !ever_up && !said_unreachable {
                        // Down transitions after start are logged by `take_down`; this
                        // is the one line for a Redis that was never reached.
                        said_unreachable = true;
                        tracing::warn!(
                            redis = %shared.target,
                            reason,
                            "cannot reach Redis for shared rate limits: limits are per process until it answers"
                        );
                    } else {
                        tracing::debug!(redis = %shared.target, reason, "Redis reconnection failed");
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(jittered(backoff)) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        };
        // Logged before it is published, so that the line comes before any effect of it.
        tracing::info!(
            redis = %shared.target,
            "shared rate limits {}: decisions are made in Redis",
            if ever_up || said_unreachable { "recovered" } else { "connected" }
        );
        ever_up = true;
        up_since = Some(Instant::now());
        let connection = Arc::new(connection);
        shared.timeouts.store(0, Ordering::Relaxed);
        shared.connection.store(Some(connection.clone()));
        shared.gauge.set(1);
        shared.up.send_replace(true);
        // Up: until a request or the probe finds the connection broken.
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = shared.failed.notified() => {}
                _ = tokio::time::sleep(PROBE_EVERY) => {
                    let mut conn = (*connection).clone();
                    let ping = redis::cmd("PING");
                    let ping = tokio::time::timeout(
                        PROBE_TIMEOUT,
                        ping.query_async::<String>(&mut conn),
                    )
                    .await;
                    match ping {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => shared.take_down(&connection, &error.to_string()),
                        Err(_) => shared.take_down(&connection, "no answer to a health check"),
                    }
                }
            }
            // A wake-up left over from an older connection leaves this one up.
            let still_current = shared
                .connection
                .load()
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(c, &connection));
            if !still_current {
                break;
            }
        }
    }
}

/// `backoff` plus up to a quarter more, at random.
fn jittered(backoff: Duration) -> Duration {
    let quarter = backoff.as_millis() as u64 / 4;
    backoff + Duration::from_millis(rand::rng().random_range(0..=quarter))
}

/// One connection attempt, all of it bounded by [`PROBE_TIMEOUT`]: connect, load the
/// script (so requests' `EVALSHA` finds it), and check that Redis answers within the
/// decision timeout, so a Redis that answers but too slowly stays down rather than
/// costing every request the timeout.
async fn establish(shared: &Shared, client: &Client) -> Result<MultiplexedConnection, String> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(PROBE_TIMEOUT))
        // Requests bound themselves (`check`); the probe here bounds itself too.
        .set_response_timeout(None);
    let work = async {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        shared
            .script
            .load_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let mut fast = false;
        for _ in 0..3 {
            let ping = redis::cmd("PING");
            let ping = ping.query_async::<String>(&mut conn);
            if let Ok(Ok(_)) = tokio::time::timeout(shared.timeout, ping).await {
                fast = true;
                break;
            }
        }
        if !fast {
            return Err(format!(
                "Redis answers, but not within {}",
                humantime::format_duration(shared.timeout)
            ));
        }
        Ok(conn)
    };
    tokio::time::timeout(PROBE_TIMEOUT * 2, work)
        .await
        .unwrap_or_else(|_| Err("no answer in time".to_owned()))
}

/// Whether `error` means the connection is unusable (rather than a reply about the key).
fn is_connection_failure(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
        || error.is_timeout()
}

/// The script's reply for `n` budgets as a decision; `None` if it is not the
/// `1 + 3n` numbers the script returns, or says what `check_all` rules out first.
fn decision(reply: &[i64], n: usize) -> Option<Decision> {
    let (&admitted, rest) = reply.split_first()?;
    if rest.len() != 3 * n {
        return None;
    }
    let micros = |us: i64| Duration::from_micros(us.max(0) as u64);
    let mut budgets = Vec::with_capacity(n);
    let mut longest: Option<(usize, i64)> = None;
    for (i, chunk) in rest.chunks_exact(3).enumerate() {
        let [wait, remaining, reset] = [chunk[0], chunk[1], chunk[2]];
        if wait < 0 {
            // A cost above the burst: `check_all` answers that without asking.
            return None;
        }
        if longest.is_none_or(|(_, w)| wait > w) && wait > 0 {
            longest = Some((i, wait));
        }
        budgets.push(Headroom {
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            reset: micros(reset),
        });
    }
    match (admitted, longest) {
        (1, _) => Some(Decision::Admit(budgets)),
        (0, Some((limiting, wait))) => Some(Decision::Reject {
            retry_after: micros(wait),
            limiting,
            budgets,
        }),
        _ => None,
    }
}

/// `url` as it may be logged: user name, password and query (`?pass=`) replaced by
/// `***`. Something that is not a URL is shown as `<invalid URL>`, since it might be a
/// password pasted in the wrong place.
pub fn redact(url: &str) -> String {
    let Ok(mut parsed) = Url::parse(url) else {
        return "<invalid URL>".to_owned();
    };
    let had_userinfo = !parsed.username().is_empty() || parsed.password().is_some();
    let had_query = parsed.query().is_some();
    // Both fail only for URLs that cannot have user information (no host), which then
    // have none to hide.
    let _ = parsed.set_password(None);
    let _ = parsed.set_username("");
    parsed.set_query(None);
    parsed.set_fragment(None);
    let mut shown = parsed.to_string();
    if had_userinfo && let Some(at) = shown.find("://") {
        shown.insert_str(at + 3, "***@");
    }
    if had_query {
        shown.push_str("?***");
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_user_information_and_query() {
        assert_eq!(
            redact("redis://:s3cret@cache.example:6380/0"),
            "redis://***@cache.example:6380/0"
        );
        assert_eq!(
            redact("rediss://user:s3cret@cache.example"),
            "rediss://***@cache.example"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        let unix = redact("redis+unix:///run/redis.sock?db=1&pass=s3cret");
        assert!(!unix.contains("s3cret"), "{unix}");
        assert_eq!(redact("s3cret"), "<invalid URL>");
    }

    #[tokio::test]
    async fn a_bad_url_is_refused_without_its_password() {
        let tasks = TaskTracker::new();
        let error = SharedLimits::connect(
            "http://:s3cret@example.com",
            Duration::from_millis(5),
            CancellationToken::new(),
            &tasks,
        )
        .expect_err("http is not a Redis scheme");
        let shown = format!("{error} {error:?}");
        assert!(shown.contains("invalid Redis URL"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[tokio::test]
    async fn debug_shows_no_password() {
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let limits = SharedLimits::connect(
            "redis://:s3cret@127.0.0.1:1",
            Duration::from_millis(5),
            stop.clone(),
            &tasks,
        )
        .expect("a valid URL");
        let shown = format!("{limits:?}");
        assert!(shown.contains("redis://***@127.0.0.1:1"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        stop.cancel();
        tasks.close();
        tasks.wait().await;
    }

    #[test]
    fn zero_timeout_is_refused() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let tasks = TaskTracker::new();
        let result = runtime.block_on(async {
            SharedLimits::connect(
                "redis://127.0.0.1:1",
                Duration::ZERO,
                CancellationToken::new(),
                &tasks,
            )
        });
        assert!(matches!(result, Err(Error::ZeroTimeout)), "{result:?}");
    }

    #[test]
    fn outside_a_runtime_is_an_error_not_a_panic() {
        let tasks = TaskTracker::new();
        let result = SharedLimits::connect(
            "redis://127.0.0.1:1",
            Duration::from_millis(5),
            CancellationToken::new(),
            &tasks,
        );
        assert!(matches!(result, Err(Error::NoRuntime)), "{result:?}");
    }

    #[test]
    fn replies_map_to_decisions() {
        let h = |remaining, secs| Headroom {
            remaining,
            reset: Duration::from_secs(secs),
        };
        assert_eq!(
            decision(&[1, 0, 4, 2_000_000], 1),
            Some(Decision::Admit(vec![h(4, 2)]))
        );
        // The longest wait limits, whatever its position.
        assert_eq!(
            decision(
                &[
                    0, 1_000_000, 0, 30_000_000, 0, 3, 1_000_000, 5_000_000, 0, 60_000_000
                ],
                3
            ),
            Some(Decision::Reject {
                retry_after: Duration::from_secs(5),
                limiting: 2,
                budgets: vec![h(0, 30), h(3, 1), h(0, 60)],
            })
        );
        assert_eq!(decision(&[1, 0, 4], 1), None, "too short");
        assert_eq!(decision(&[1, 0, 4, 2, 0], 1), None, "too long");
        assert_eq!(decision(&[0, 0, 4, 2], 1), None, "refused with no wait");
        assert_eq!(decision(&[0, -1, 0, 0], 1), None, "the script's own guard");
        assert_eq!(decision(&[7, 0, 0, 0], 1), None);
        assert_eq!(decision(&[], 0), None);
    }
}
