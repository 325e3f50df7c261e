//! Per-deployment rate limits: requests per minute, tokens per minute, requests in
//! flight. governor's GCRA does the counting; keyless decides what to do with a request
//! over the limit (reject with a wait, or queue up to a deadline).
//!
//! Azure enforces a deployment's RPM over 1 s or 10 s windows and counts TPM from an
//! estimate made before the call, so both quotas here allow a burst of one sixth of the
//! minute's quota (a 10 s window) rather than the whole minute at once.

use crate::config::{DeploymentLimits, LimitMode};
use crate::shared_limit::{Budget, Decision, SharedLimits};
use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

type Gcra<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The limits of one deployment on one endpoint.
pub struct Limiter<C: Clock = MonotonicClock> {
    requests: Option<Gcra<C>>,
    tokens: Option<(Gcra<C>, NonZeroU32)>,
    /// The quotas per minute, for the budgets shared through Redis.
    rpm: Option<NonZeroU32>,
    tpm: Option<NonZeroU32>,
    in_flight: Option<(Arc<Semaphore>, u32)>,
    clock: C,
}

/// Why a request was not admitted, and when to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Which limit.
    pub limit: &'static str,
    /// How long until the limit would admit the request.
    pub retry_after: Duration,
}

/// Holds a concurrency slot until dropped (at the end of the response body).
pub type Permit = Option<OwnedSemaphorePermit>;

fn ten_second_burst(per_minute: NonZeroU32) -> NonZeroU32 {
    NonZeroU32::new(per_minute.get().div_ceil(6)).unwrap_or(NonZeroU32::MIN)
}

impl Limiter<MonotonicClock> {
    /// Limits with the real clock: std's monotonic one (governor's default, quanta, first
    /// calibrates the TSC for a while at start, for a saving per decision too small to
    /// matter here).
    pub fn new(limits: &DeploymentLimits) -> Option<Limiter> {
        Limiter::with_clock(limits, MonotonicClock)
    }
}

impl<C: Clock + Clone> Limiter<C> {
    /// Limits on an injected clock (governor's `FakeRelativeClock` in tests). `None` when
    /// `limits` sets nothing.
    pub fn with_clock(limits: &DeploymentLimits, clock: C) -> Option<Limiter<C>> {
        if limits.rpm.is_none() && limits.tpm.is_none() && limits.max_concurrent.is_none() {
            return None;
        }
        let gcra = |per_minute: NonZeroU32| {
            RateLimiter::direct_with_clock(
                Quota::per_minute(per_minute).allow_burst(ten_second_burst(per_minute)),
                clock.clone(),
            )
        };
        Some(Limiter {
            rpm: limits.rpm,
            tpm: limits.tpm,
            requests: limits.rpm.map(gcra),
            tokens: limits.tpm.map(|tpm| (gcra(tpm), ten_second_burst(tpm))),
            in_flight: limits
                .max_concurrent
                .map(|n| (Arc::new(Semaphore::new(n.get() as usize)), n.get())),
            clock,
        })
    }

    /// Admits a request estimated at `tokens` now, or says how long until it could be.
    pub fn try_admit(&self, tokens: u32) -> Result<Permit, Rejected> {
        // The concurrency slot first: it is the only check that can be undone (by dropping
        // the permit) if a quota below refuses.
        let permit = match &self.in_flight {
            Some((semaphore, _)) => match semaphore.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => return Err(no_slot()),
            },
            None => None,
        };
        self.check_quotas(tokens)?;
        Ok(permit)
    }

    /// The rate quotas alone: requests per minute, then tokens per minute.
    fn check_quotas(&self, tokens: u32) -> Result<(), Rejected> {
        if let Some(gcra) = &self.requests
            && let Err(not_until) = gcra.check()
        {
            return Err(Rejected {
                limit: "requests per minute",
                retry_after: not_until.wait_time_from(self.clock.now()),
            });
        }
        if let Some((gcra, burst)) = &self.tokens {
            // A request larger than the burst could never pass: count it as a full burst.
            let n = NonZeroU32::new(tokens.max(1))
                .unwrap_or(NonZeroU32::MIN)
                .min(*burst);
            if let Ok(Err(not_until)) = gcra.check_n(n) {
                return Err(Rejected {
                    limit: "tokens per minute",
                    retry_after: not_until.wait_time_from(self.clock.now()),
                });
            }
        }
        Ok(())
    }

    /// [`Limiter::admit`], with the rate quotas kept in Redis (`shared`, under `key`) so
    /// that every replica spends one budget; the concurrency slot stays this process's.
    /// Redis down or slow: this process's quotas decide, as without Redis.
    pub async fn admit_shared(
        &self,
        tokens: u32,
        mode: LimitMode,
        queue_timeout: Duration,
        shared: &SharedLimits,
        key: &str,
    ) -> Result<Permit, Rejected> {
        if self.rpm.is_none() && self.tpm.is_none() {
            return self.admit(tokens, mode, queue_timeout).await;
        }
        let deadline = Instant::now() + queue_timeout;
        let permit = match &self.in_flight {
            Some((semaphore, _)) if mode == LimitMode::Queue => {
                match tokio::time::timeout(queue_timeout, semaphore.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => Some(permit),
                    _ => return Err(no_slot()),
                }
            }
            Some((semaphore, _)) => match semaphore.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => return Err(no_slot()),
            },
            None => None,
        };
        let (rpm_key, tpm_key) = (format!("{key}:rpm"), format!("{key}:tpm"));
        let mut budgets = Vec::with_capacity(2);
        let mut names = Vec::with_capacity(2);
        if let Some(rpm) = self.rpm {
            budgets.push(Budget {
                key: &rpm_key,
                per_minute: rpm,
                burst: ten_second_burst(rpm),
                cost: 1,
            });
            names.push("requests per minute");
        }
        if let Some(tpm) = self.tpm {
            let burst = ten_second_burst(tpm);
            budgets.push(Budget {
                key: &tpm_key,
                per_minute: tpm,
                burst,
                // As locally: a request larger than the burst counts as a whole burst.
                cost: tokens.max(1).min(burst.get()),
            });
            names.push("tokens per minute");
        }
        loop {
            match shared.check_all(&budgets).await {
                Decision::Admit(_) => return Ok(permit),
                Decision::Reject {
                    retry_after,
                    limiting,
                    ..
                } => {
                    let rejected = Rejected {
                        limit: names
                            .get(limiting)
                            .copied()
                            .unwrap_or("requests per minute"),
                        retry_after,
                    };
                    if mode == LimitMode::Reject || Instant::now() + retry_after > deadline {
                        return Err(rejected);
                    }
                    tokio::time::sleep(retry_after.max(Duration::from_millis(1))).await;
                }
                // Cannot happen (costs are capped at the burst); decided locally if it did.
                Decision::TooLarge { .. } | Decision::Unavailable => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    return self.quotas_then(permit, tokens, mode, left).await;
                }
            }
        }
    }

    /// This process's quotas, for a request already holding its slot.
    async fn quotas_then(
        &self,
        permit: Permit,
        tokens: u32,
        mode: LimitMode,
        queue_timeout: Duration,
    ) -> Result<Permit, Rejected> {
        let deadline = Instant::now() + queue_timeout;
        loop {
            match self.check_quotas(tokens) {
                Ok(()) => return Ok(permit),
                Err(rejected) => {
                    if mode == LimitMode::Reject || Instant::now() + rejected.retry_after > deadline
                    {
                        return Err(rejected);
                    }
                    tokio::time::sleep(rejected.retry_after.max(Duration::from_millis(1))).await;
                }
            }
        }
    }

    /// Admits a request according to `mode`: at once or not at all (`Reject`), or waiting
    /// up to `queue_timeout` for the limits to allow it (`Queue`).
    pub async fn admit(
        &self,
        tokens: u32,
        mode: LimitMode,
        queue_timeout: Duration,
    ) -> Result<Permit, Rejected> {
        if mode == LimitMode::Reject {
            return self.try_admit(tokens);
        }
        let deadline = Instant::now() + queue_timeout;
        // Wait for a slot in the semaphore's own fair queue, and keep the one granted:
        // handing it back to re-check would pass it to the next waiter, round and round.
        let permit = match &self.in_flight {
            Some((semaphore, _)) => {
                let wait = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(wait, semaphore.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => Some(permit),
                    _ => return Err(no_slot()),
                }
            }
            None => None,
        };
        // Then the quotas, holding the slot.
        loop {
            match self.check_quotas(tokens) {
                Ok(()) => return Ok(permit),
                Err(rejected) => {
                    if Instant::now() + rejected.retry_after > deadline {
                        return Err(rejected);
                    }
                    tokio::time::sleep(rejected.retry_after.max(Duration::from_millis(1))).await;
                }
            }
        }
    }
}

fn no_slot() -> Rejected {
    Rejected {
        limit: "concurrent requests",
        // A slot frees when a request ends: no better guess than a second.
        retry_after: Duration::from_secs(1),
    }
}

/// Azure's pre-call token estimate: the prompt (about four bytes of request JSON per
/// token, an overestimate that errs on the side of the quota) plus the completion budget
/// (`max_tokens`, `max_completion_tokens` or `max_output_tokens`; 0 when absent).
pub fn estimate_tokens(body_len: usize, max_tokens: Option<u64>) -> u32 {
    let prompt = body_len.div_ceil(4) as u64;
    u32::try_from(prompt.saturating_add(max_tokens.unwrap_or(0))).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limits(rpm: Option<u32>, tpm: Option<u32>, conc: Option<u32>) -> DeploymentLimits {
        DeploymentLimits {
            rpm: rpm.and_then(NonZeroU32::new),
            tpm: tpm.and_then(NonZeroU32::new),
            max_concurrent: conc.and_then(NonZeroU32::new),
        }
    }

    #[test]
    fn nothing_set_is_no_limiter() {
        assert!(Limiter::new(&limits(None, None, None)).is_none());
    }

    #[test]
    fn rpm_allows_a_ten_second_burst_then_says_when() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(&limits(Some(60), None, None), clock.clone()).unwrap();
        for _ in 0..10 {
            l.try_admit(1).unwrap();
        }
        let rejected = l.try_admit(1).unwrap_err();
        assert_eq!(rejected.limit, "requests per minute");
        assert_eq!(rejected.retry_after, Duration::from_secs(1));
        clock.advance(Duration::from_secs(1));
        l.try_admit(1).unwrap();
    }

    #[test]
    fn tpm_counts_the_estimate() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(&limits(None, Some(6000), None), clock.clone()).unwrap();
        l.try_admit(600).unwrap();
        l.try_admit(400).unwrap();
        let rejected = l.try_admit(100).unwrap_err();
        assert_eq!(rejected.limit, "tokens per minute");
        assert_eq!(rejected.retry_after, Duration::from_secs(1));
        clock.advance(Duration::from_secs(1));
        l.try_admit(100).unwrap();
        // Larger than any burst: admitted once the bucket is full again.
        clock.advance(Duration::from_secs(60));
        l.try_admit(1_000_000).unwrap();
    }

    #[test]
    fn concurrency_slots_free_on_drop() {
        let l = Limiter::new(&limits(None, None, Some(2))).unwrap();
        let a = l.try_admit(1).unwrap();
        let _b = l.try_admit(1).unwrap();
        assert_eq!(l.try_admit(1).unwrap_err().limit, "concurrent requests");
        drop(a);
        l.try_admit(1).unwrap();
    }

    #[tokio::test]
    async fn queue_mode_waits_for_a_slot_and_reject_mode_does_not() {
        let l = Arc::new(Limiter::new(&limits(None, None, Some(1))).unwrap());
        let held = l.try_admit(1).unwrap();
        assert!(
            l.admit(1, LimitMode::Reject, Duration::from_secs(5))
                .await
                .is_err()
        );
        let l2 = l.clone();
        let waiter = tokio::spawn(async move {
            l2.admit(1, LimitMode::Queue, Duration::from_secs(5))
                .await
                .map(|_| ())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "queued behind the held slot");
        drop(held);
        waiter.await.unwrap().unwrap();
    }

    /// Two waiters behind one held slot, on a single-threaded runtime: both must get
    /// through once the slot frees (a slot handed back to re-check would circle between
    /// the waiters forever).
    #[tokio::test]
    async fn queued_waiters_keep_the_slot_they_are_given() {
        let l = Arc::new(Limiter::new(&limits(Some(600), None, Some(1))).unwrap());
        let held = l.try_admit(1).unwrap();
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move {
                    let permit = l.admit(1, LimitMode::Queue, Duration::from_secs(5)).await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    permit.map(|_| ())
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("a queued waiter never got through")
                .unwrap()
                .unwrap();
        }
    }

    #[tokio::test]
    async fn queue_mode_gives_up_at_its_timeout() {
        let l = Limiter::new(&limits(None, None, Some(1))).unwrap();
        let _held = l.try_admit(1).unwrap();
        let r = l
            .admit(1, LimitMode::Queue, Duration::from_millis(100))
            .await;
        assert_eq!(r.unwrap_err().limit, "concurrent requests");
    }

    #[test]
    fn estimate_adds_the_completion_budget() {
        assert_eq!(estimate_tokens(400, Some(1000)), 1100);
        assert_eq!(estimate_tokens(3, None), 1);
    }
}
