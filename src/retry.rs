//! The attempt loop's decisions, as plain functions over the attempt so far, what Azure
//! answered (or that it did not), and the clock. The I/O (pick, limit, sign, send,
//! sleep) is a thin driver in `app.rs` that asks [`Attempts`] what to do next.
//!
//! Azure says how long to wait in `retry-after-ms` (documented), `x-ms-retry-after-ms`,
//! or `retry-after` (seconds or an HTTP date). When it says nothing keyless backs off
//! exponentially with full jitter (AWS architecture blog, "Exponential Backoff And
//! Jitter"), so that many clients throttled together do not return together.
//!
//! The rules, each a case in the tests below:
//! - only the response head is looked at; a body that went to the client is never retried;
//! - 408, 429, 500, 502, 503, 504 and "no head" are retried, within `retry.attempts`, the
//!   deadline, and only when the body can be sent again;
//! - a request that may already have reached Azure (the connection failed after it was
//!   written, or no head came in time) is sent again only when repeating it has no side
//!   effect ([`repeatable`]); one that was never sent (no connection) always may be;
//! - a wait Azure names cools the backend down for every request, but never for longer
//!   than `retry.max_wait`; a longer ask is passed to the client at once when no other
//!   backend can serve;
//! - a failure with no named wait (5xx, unreachable, too slow) makes this request back off
//!   and steers other requests to healthy backends, but holds no later request when the
//!   failing backend is the only one left;
//! - a 401 gets one new token and one replay, outside the attempt budget.

use crate::backend::{Backend, Pick};
use crate::config::RetryPolicy;
use http::{HeaderMap, Method, StatusCode};
use rand::Rng;
use std::time::{Duration, Instant, SystemTime};

/// The longest wait keyless reads from a header: any larger value (`1e300`, `u64::MAX`
/// seconds) is taken as this, so that no `Duration` or `Instant` arithmetic can overflow.
pub const LONGEST_NAMED_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Statuses worth another attempt: timeouts, throttling, and transient server errors.
pub fn is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

/// The wait Azure asked for, if it asked: `retry-after-ms`, then `x-ms-retry-after-ms`,
/// then `retry-after` (delta seconds or HTTP date, RFC 9110 §10.2.3). Saturating: never
/// more than [`LONGEST_NAMED_WAIT`], whatever the header says.
pub fn azure_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|ms| !ms.is_nan() && *ms >= 0.0)
        {
            let longest = LONGEST_NAMED_WAIT.as_secs_f64() * 1000.0;
            return Some(Duration::from_secs_f64(ms.min(longest) / 1000.0));
        }
    }
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits but too large for u64 is still "a very long time".
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(LONGEST_NAMED_WAIT));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or_default()
            .min(LONGEST_NAMED_WAIT),
    )
}

/// Exponential backoff with full jitter: uniform in `[0, min(cap, base * 2^attempt)]`.
/// `attempt` counts from 0 for the first retry.
pub fn backoff(attempt: u32, base: Duration, cap: Duration, rng: &mut impl Rng) -> Duration {
    let ceiling = base
        .checked_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .unwrap_or(cap)
        .min(cap);
    ceiling.mul_f64(rng.random_range(0.0..=1.0))
}

/// Whether sending a request again after it may have reached Azure repeats no side
/// effect: reads, and the operations Azure keeps no state for. Chat or an embedding sent
/// twice costs tokens twice but changes nothing; a batch, a file, an upload, a
/// fine-tuning job, a vector store, an assistant or a stored response would be made
/// twice. `op` is the OpenAI operation path (`chat/completions`), `store` the body's
/// `store` flag (the Responses API stores by default).
pub fn repeatable(method: &Method, op: &str, store: Option<bool>) -> bool {
    if method == Method::GET || method == Method::HEAD || method == Method::OPTIONS {
        return true;
    }
    if method != Method::POST {
        return false;
    }
    match op {
        "chat/completions"
        | "completions"
        | "embeddings"
        | "audio/transcriptions"
        | "audio/translations" => true,
        "responses" => store == Some(false),
        _ => false,
    }
}

/// Why an attempt got no response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoHead {
    /// No connection could be made: nothing reached Azure.
    NotSent,
    /// The connection failed after the request was (perhaps partly) written.
    MaybeDelivered,
    /// No head within the response timeout: Azure may be working on it.
    TimedOut,
}

impl NoHead {
    /// The `reason` label of `keyless_retries_total`.
    pub fn reason(self) -> &'static str {
        match self {
            NoHead::NotSent | NoHead::MaybeDelivered => "connect",
            NoHead::TimedOut => "timeout",
        }
    }
}

/// What one attempt came to, as far as the decisions need to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Azure answered with a head: its status and the wait it named, if any (already
    /// bounded by [`azure_wait`]).
    Head {
        /// The status.
        status: StatusCode,
        /// `retry-after-ms` and friends.
        asked: Option<Duration>,
    },
    /// No head came.
    NoHead(NoHead),
}

/// What the backend's shared state learns from an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Nothing to record (a 401 being handled).
    Unchanged,
    /// It answered: a failure streak is over.
    Healthy,
    /// Azure named a wait: every request keeps away this long (already capped at
    /// `retry.max_wait`; `capped` when Azure asked for longer, and later requests are
    /// refused at once instead of held).
    Throttled {
        /// How long.
        wait: Duration,
        /// Cut short at `retry.max_wait`.
        capped: bool,
    },
    /// It failed with no named wait: other requests prefer other backends for a backoff.
    Failing,
}

/// The step after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Hand this answer to the client.
    Respond,
    /// Azure refused the token: invalidate it, then ask [`Attempts::after_refresh`].
    Refresh,
    /// Another attempt; the reason is for `keyless_retries_total`. Azure's answer is kept
    /// in case no later attempt does better.
    Retry(&'static str),
    /// No head and no retry: keyless's own error goes to the client.
    Fail,
}

/// One request's attempts so far: the state every decision reads.
#[derive(Debug)]
pub struct Attempts {
    policy: RetryPolicy,
    deadline: Instant,
    made: u32,
    reauthorised: bool,
    /// The body can be sent again.
    replayable: bool,
    /// Sending it again after a possible delivery repeats no side effect.
    repeatable: bool,
    /// Backends that failed this request: others are tried first.
    failed: u64,
    /// Backends whose limiter refused this request: not tried again.
    excluded: u64,
    /// This request's own backoff after a failure Azure named no wait for.
    not_before: Option<Instant>,
}

impl Attempts {
    /// A request that arrived at `now`.
    pub fn new(policy: RetryPolicy, now: Instant, replayable: bool, repeatable: bool) -> Attempts {
        Attempts {
            policy,
            deadline: now.checked_add(policy.deadline).unwrap_or(now),
            made: 0,
            reauthorised: false,
            replayable,
            repeatable,
            failed: 0,
            excluded: 0,
            not_before: None,
        }
    }

    /// Attempts sent so far.
    pub fn made(&self) -> u32 {
        self.made
    }

    /// Counts an attempt as sent.
    pub fn sending(&mut self) {
        self.made += 1;
    }

    /// Attempts allowed: the policy's, and one more after a token refresh.
    fn budget(&self) -> u32 {
        self.policy.attempts.get() + u32::from(self.reauthorised)
    }

    fn can_retry(&self, now: Instant) -> bool {
        self.replayable && self.made < self.budget() && now < self.deadline
    }

    /// The backend for the next attempt. A healthy backend this request has not failed
    /// on goes first (failover is immediate); otherwise this request serves its own
    /// backoff, then takes any backend not throttled (a failing backend is better than
    /// none); otherwise it may wait for the soonest throttle to end.
    pub fn choose(&self, backends: &[Backend], now: Instant, rng: &mut impl Rng) -> Pick {
        if let Pick::Use(i) =
            crate::backend::pick(backends, self.excluded | self.failed, now, true, rng)
        {
            return Pick::Use(i);
        }
        if let Some(wait) = self
            .not_before
            .and_then(|at| at.checked_duration_since(now))
            && !wait.is_zero()
        {
            return Pick::Wait(wait);
        }
        crate::backend::pick(backends, self.excluded, now, false, rng)
    }

    /// Whether waiting `wait` for a backend is worth it: within `retry.max_wait`, the
    /// deadline and the budget, and with a body that can still be sent.
    pub fn may_wait(&self, wait: Duration, now: Instant) -> bool {
        wait <= self.policy.max_wait
            && now.checked_add(wait).is_some_and(|at| at < self.deadline)
            && self.made < self.budget()
            && (self.made == 0 || self.replayable)
    }

    /// Whether a backend other than `index`, not refused by its limiter, is healthy now.
    pub fn has_other(&self, backends: &[Backend], index: usize, now: Instant) -> bool {
        crate::backend::has_other(backends, index, self.excluded, now)
    }

    /// Backend `index`'s limiter refused this request.
    pub fn refused(&mut self, index: usize) {
        self.excluded |= bit(index);
    }

    /// Judges attempt on backend `index`: `backoff` is the wait to use if Azure named
    /// none, `other_free` whether another backend could serve now.
    pub fn judge(
        &mut self,
        index: usize,
        reply: Reply,
        backoff: Duration,
        other_free: bool,
        now: Instant,
    ) -> (Step, Health) {
        match reply {
            Reply::Head { status, .. }
                if status == StatusCode::UNAUTHORIZED && !self.reauthorised =>
            {
                self.reauthorised = true;
                (Step::Refresh, Health::Unchanged)
            }
            Reply::Head { status, .. } if !is_retryable(status) => (Step::Respond, Health::Healthy),
            Reply::Head { status, asked } => {
                self.failed |= bit(index);
                let health = match asked {
                    Some(wait) => Health::Throttled {
                        wait: wait.min(self.policy.max_wait),
                        capped: wait > self.policy.max_wait,
                    },
                    None => Health::Failing,
                };
                let too_long = asked.is_some_and(|w| w > self.policy.max_wait) && !other_free;
                if too_long || !self.can_retry(now) {
                    return (Step::Respond, health);
                }
                if asked.is_none() {
                    self.not_before = now.checked_add(backoff);
                }
                (Step::Retry(status_reason(status)), health)
            }
            Reply::NoHead(why) => {
                self.failed |= bit(index);
                let safe = why == NoHead::NotSent || self.repeatable;
                if !safe || !self.can_retry(now) {
                    return (Step::Fail, Health::Failing);
                }
                self.not_before = now.checked_add(backoff);
                (Step::Retry(why.reason()), Health::Failing)
            }
        }
    }

    /// After [`Step::Refresh`]: `replace` is whether the token cache will give a new
    /// token (not when the same identity was refused moments ago). Replays once when the
    /// body allows it; otherwise Azure's 401 goes to the client.
    pub fn after_refresh(&self, replace: bool) -> Step {
        if replace && self.replayable {
            Step::Retry("unauthorized")
        } else {
            Step::Respond
        }
    }
}

fn bit(index: usize) -> u64 {
    1u64.checked_shl(index as u32).unwrap_or(0)
}

/// The `reason` label for a retried status.
fn status_reason(status: StatusCode) -> &'static str {
    match status.as_u16() {
        408 => "status_408",
        429 => "status_429",
        500 => "status_500",
        502 => "status_502",
        503 => "status_503",
        504 => "status_504",
        _ => "status_other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::num::NonZeroU32;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retryable_statuses() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(is_retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 409, 413, 422, 501] {
            assert!(!is_retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }

    #[test]
    fn azure_wait_prefers_milliseconds() {
        let now = SystemTime::now();
        let h = headers(&[("retry-after-ms", "1500"), ("retry-after", "9")]);
        assert_eq!(azure_wait(&h, now), Some(Duration::from_millis(1500)));
        let h = headers(&[("x-ms-retry-after-ms", "250.5")]);
        assert_eq!(azure_wait(&h, now), Some(Duration::from_micros(250_500)));
        let h = headers(&[("retry-after", "7")]);
        assert_eq!(azure_wait(&h, now), Some(Duration::from_secs(7)));
        assert_eq!(azure_wait(&HeaderMap::new(), now), None);
        let h = headers(&[("retry-after-ms", "soon")]);
        assert_eq!(azure_wait(&h, now), None);
    }

    #[test]
    fn azure_wait_reads_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let h = headers(&[("retry-after", &later)]);
        assert_eq!(azure_wait(&h, now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        let h = headers(&[("retry-after", &past)]);
        assert_eq!(azure_wait(&h, now), Some(Duration::ZERO));
    }

    #[test]
    fn backoff_is_jittered_under_an_exponential_ceiling() {
        let mut rng = rand::rng();
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        for attempt in 0..40 {
            let ceiling = (base * 2u32.pow(attempt.min(20))).min(cap);
            for _ in 0..50 {
                assert!(backoff(attempt, base, cap, &mut rng) <= ceiling);
            }
        }
        let spread: std::collections::HashSet<_> =
            (0..50).map(|_| backoff(3, base, cap, &mut rng)).collect();
        assert!(spread.len() > 10, "full jitter spreads the waits");
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: NonZeroU32::new(3).unwrap(),
            max_wait: Duration::from_secs(60),
            deadline: Duration::from_secs(300),
            ..RetryPolicy::default()
        }
    }

    fn head(status: u16, asked: Option<Duration>) -> Reply {
        Reply::Head {
            status: StatusCode::from_u16(status).unwrap(),
            asked,
        }
    }

    const BACKOFF: Duration = Duration::from_millis(500);

    #[test]
    fn absurd_waits_are_bounded_not_panics() {
        let now = SystemTime::now();
        for (name, value) in [
            ("retry-after", "18446744073709551615"),
            ("retry-after", "99999999999999999999999999"),
            ("retry-after-ms", "1e300"),
            ("retry-after-ms", "inf"),
            ("x-ms-retry-after-ms", "1.7976931348623157e308"),
        ] {
            let h = headers(&[(name, value)]);
            assert_eq!(
                azure_wait(&h, now),
                Some(LONGEST_NAMED_WAIT),
                "{name}: {value}"
            );
        }
        let h = headers(&[("retry-after-ms", "NaN")]);
        assert_eq!(azure_wait(&h, now), None);
        let h = headers(&[("retry-after-ms", "-5")]);
        assert_eq!(azure_wait(&h, now), None);
    }

    #[test]
    fn a_named_wait_longer_than_max_wait_cools_down_for_max_wait_only() {
        let now = Instant::now();
        let mut a = Attempts::new(policy(), now, true, true);
        a.sending();
        let day = Duration::from_secs(100_000);
        let (step, health) = a.judge(0, head(429, Some(day)), BACKOFF, false, now);
        assert_eq!(step, Step::Respond, "passed on at once");
        assert_eq!(
            health,
            Health::Throttled {
                wait: Duration::from_secs(60),
                capped: true
            }
        );
    }

    #[test]
    fn a_long_wait_with_another_backend_free_fails_over() {
        let now = Instant::now();
        let mut a = Attempts::new(policy(), now, true, true);
        a.sending();
        let (step, _) = a.judge(
            0,
            head(429, Some(Duration::from_secs(3600))),
            BACKOFF,
            true,
            now,
        );
        assert_eq!(step, Step::Retry("status_429"));
    }

    #[test]
    fn a_5xx_backs_this_request_off_but_marks_the_backend_failing_only() {
        let now = Instant::now();
        let mut a = Attempts::new(policy(), now, true, true);
        a.sending();
        let (step, health) = a.judge(0, head(503, None), BACKOFF, false, now);
        assert_eq!(step, Step::Retry("status_503"));
        assert_eq!(
            health,
            Health::Failing,
            "no named wait: other requests are not held"
        );
        assert_eq!(a.not_before, Some(now + BACKOFF));
    }

    #[test]
    fn retries_stop_at_the_budget_and_the_last_answer_goes_out() {
        let now = Instant::now();
        let mut a = Attempts::new(policy(), now, true, true);
        for expected in [
            Step::Retry("status_500"),
            Step::Retry("status_500"),
            Step::Respond,
        ] {
            a.sending();
            assert_eq!(a.judge(0, head(500, None), BACKOFF, false, now).0, expected);
        }
    }

    #[test]
    fn a_body_sent_once_is_not_retried() {
        let now = Instant::now();
        let mut a = Attempts::new(policy(), now, false, true);
        a.sending();
        assert_eq!(
            a.judge(0, head(503, None), BACKOFF, true, now).0,
            Step::Respond
        );
        assert!(!a.may_wait(Duration::from_millis(1), now));
    }

    #[test]
    fn past_the_deadline_nothing_is_retried_or_waited_for() {
        let start = Instant::now();
        let mut a = Attempts::new(policy(), start, true, true);
        a.sending();
        let late = start + Duration::from_secs(301);
        assert_eq!(
            a.judge(0, head(503, None), BACKOFF, false, late).0,
            Step::Respond
        );
        assert!(!a.may_wait(Duration::from_secs(1), start + Duration::from_secs(299)));
        assert!(a.may_wait(Duration::from_secs(1), start));
        assert!(!a.may_wait(Duration::from_secs(61), start), "over max_wait");
    }

    #[test]
    fn a_possible_delivery_is_repeated_only_without_side_effects() {
        let now = Instant::now();
        for (why, repeatable, expected) in [
            (NoHead::NotSent, false, Step::Retry("connect")),
            (NoHead::NotSent, true, Step::Retry("connect")),
            (NoHead::MaybeDelivered, false, Step::Fail),
            (NoHead::MaybeDelivered, true, Step::Retry("connect")),
            (NoHead::TimedOut, false, Step::Fail),
            (NoHead::TimedOut, true, Step::Retry("timeout")),
        ] {
            let mut a = Attempts::new(policy(), now, true, repeatable);
            a.sending();
            let (step, health) = a.judge(0, Reply::NoHead(why), BACKOFF, false, now);
            assert_eq!(step, expected, "{why:?} repeatable={repeatable}");
            assert_eq!(health, Health::Failing);
        }
    }

    #[test]
    fn which_operations_may_be_repeated() {
        for (method, op, store, expected) in [
            (Method::POST, "chat/completions", None, true),
            (Method::POST, "embeddings", None, true),
            (Method::POST, "completions", None, true),
            (Method::POST, "audio/transcriptions", None, true),
            (Method::POST, "audio/translations", None, true),
            (Method::POST, "responses", Some(false), true),
            (Method::POST, "responses", None, false),
            (Method::POST, "responses", Some(true), false),
            (Method::POST, "batches", None, false),
            (Method::POST, "files", None, false),
            (Method::POST, "uploads", None, false),
            (Method::POST, "fine_tuning/jobs", None, false),
            (Method::POST, "vector_stores", None, false),
            (Method::DELETE, "files/file-1", None, false),
            (Method::GET, "batches/b-1", None, true),
        ] {
            assert_eq!(
                repeatable(&method, op, store),
                expected,
                "{method} {op} {store:?}"
            );
        }
    }

    #[test]
    fn a_401_refreshes_once_and_replays_outside_the_budget() {
        let now = Instant::now();
        let mut a = Attempts::new(
            RetryPolicy {
                attempts: NonZeroU32::MIN,
                ..policy()
            },
            now,
            true,
            true,
        );
        a.sending();
        assert_eq!(
            a.judge(0, head(401, None), BACKOFF, false, now).0,
            Step::Refresh
        );
        assert_eq!(a.after_refresh(true), Step::Retry("unauthorized"));
        assert!(
            a.may_wait(Duration::ZERO, now),
            "the replay is outside the budget"
        );
        a.sending();
        assert_eq!(
            a.judge(0, head(401, None), BACKOFF, false, now),
            (Step::Respond, Health::Healthy),
            "a second 401 goes to the client"
        );
        let mut b = Attempts::new(policy(), now, true, true);
        b.sending();
        b.judge(0, head(401, None), BACKOFF, false, now);
        assert_eq!(
            b.after_refresh(false),
            Step::Respond,
            "the cache refused to refresh again"
        );
        let mut c = Attempts::new(policy(), now, false, true);
        c.sending();
        c.judge(0, head(401, None), BACKOFF, false, now);
        assert_eq!(
            c.after_refresh(true),
            Step::Respond,
            "a streamed body cannot replay"
        );
    }

    #[test]
    fn success_and_client_errors_are_answered() {
        let now = Instant::now();
        for status in [200, 400, 404, 413] {
            let mut a = Attempts::new(policy(), now, true, true);
            a.sending();
            assert_eq!(
                a.judge(0, head(status, None), BACKOFF, false, now),
                (Step::Respond, Health::Healthy)
            );
        }
    }
}
