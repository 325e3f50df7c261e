//! Shared limits (issue 12.6) against a real `redis-server` that each test starts on a
//! free port of its own: two handles are two replicas sharing one budget; the GCRA's
//! arithmetic (burst, the wait after it, costs); and what happens when Redis is killed,
//! frozen, restarted or never there.
//!
//! The decision timeout here is seconds, not production's few milliseconds: these
//! tests check decisions and transitions, and a busy 2-core machine must not turn a
//! decision into `Unavailable`. Waits are read from the verdicts (Redis's clock), never
//! slept through; the only time bounds are generous ones ("within a second").

mod support;

use keyless::shared_limit::{Budget, Decision, SharedLimits, Verdict};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use support::redis::{RedisServer, free_port};
use tokio::sync::Barrier;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The decision timeout in these tests (see the module comment).
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long a fresh handle may take to connect, and a restarted Redis to be found again
/// (the reconnection backoff tops out at 2 s).
const UP_WITHIN: Duration = Duration::from_secs(15);
/// "At once", for calls that must not wait on a dead or frozen Redis.
const PROMPT: Duration = Duration::from_secs(1);

fn n(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).expect("non-zero")
}

/// A replica's handle with its own connection, and what stops its background task.
struct Replica {
    limits: SharedLimits,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Replica {
    fn connect(url: &str, timeout: Duration) -> Replica {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let limits = SharedLimits::connect(url, timeout, stop.clone(), &tasks).expect("connect");
        Replica {
            limits,
            stop,
            tasks,
        }
    }

    async fn up(url: &str) -> Replica {
        let replica = Replica::connect(url, TIMEOUT);
        assert!(
            replica.limits.wait_up(UP_WITHIN).await,
            "not connected to {url} within {UP_WITHIN:?}"
        );
        assert_eq!(replica.limits.up_gauge().get(), 1);
        replica
    }

    /// Stops the background task and checks that it ends (it must not outlive shutdown).
    async fn shut_down(self) {
        self.stop.cancel();
        self.tasks.close();
        tokio::time::timeout(PROMPT * 5, self.tasks.wait())
            .await
            .expect("the reconnecting task ends when stopped");
    }
}

/// Asserts `actual` is `expected` less at most `slack` (the time that passed since the
/// budget was last changed, on a busy machine).
fn assert_about(actual: Duration, expected: Duration, slack: Duration, what: &str) {
    assert!(
        actual <= expected && actual + slack >= expected,
        "{what}: {actual:?}, expected {expected:?} (less at most {slack:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_admit_one_burst_between_them() {
    let redis = RedisServer::start();
    let a = Replica::up(&redis.url()).await;
    let b = Replica::up(&redis.url()).await;
    // One unit a minute: nothing refills while the test runs, so the burst is all there is.
    const BURST: u32 = 10;
    let callers = 3 * BURST as usize;
    let barrier = Arc::new(Barrier::new(callers));
    let mut calls = Vec::new();
    for i in 0..callers {
        let limits = if i % 2 == 0 {
            a.limits.clone()
        } else {
            b.limits.clone()
        };
        let barrier = barrier.clone();
        calls.push(tokio::spawn(async move {
            barrier.wait().await;
            limits
                .check("app:billing:requests", n(1), n(BURST), 1)
                .await
        }));
    }
    let mut remaining_seen = Vec::new();
    let mut rejected = 0;
    for call in calls {
        match call.await.expect("check task") {
            Verdict::Admit { remaining, .. } => remaining_seen.push(remaining),
            Verdict::Reject { remaining, .. } => {
                assert_eq!(remaining, 0, "a rejection with units left");
                rejected += 1;
            }
            other => panic!("every call is decided in Redis, got {other:?}"),
        }
    }
    remaining_seen.sort_unstable();
    // Exactly the burst, and each admission saw a different state: the script is atomic.
    assert_eq!(remaining_seen, (0..BURST).collect::<Vec<_>>());
    assert_eq!(rejected, 2 * BURST);
    a.shut_down().await;
    b.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_after_the_burst_is_one_emission_interval() {
    let redis = RedisServer::start();
    let replica = Replica::up(&redis.url()).await;
    let limits = &replica.limits;
    // 6 a minute: one every 10 s; a burst of 3.
    let (rate, burst) = (n(6), n(3));
    let interval = Duration::from_secs(10);
    let slack = Duration::from_secs(2);
    for expected_remaining in [2, 1, 0] {
        match limits.check("deployment:gpt-4o:rpm", rate, burst, 1).await {
            Verdict::Admit { remaining, reset } => {
                assert_eq!(remaining, expected_remaining);
                // Full again once each spent unit is back: (3 - remaining) intervals.
                let spent = 3 - expected_remaining;
                assert_about(reset, interval * spent, slack, "reset");
            }
            other => panic!("within the burst, got {other:?}"),
        }
    }
    match limits.check("deployment:gpt-4o:rpm", rate, burst, 1).await {
        Verdict::Reject {
            retry_after,
            remaining,
            reset,
        } => {
            assert_about(retry_after, interval, slack, "retry_after");
            assert_eq!(remaining, 0);
            assert_about(reset, interval * 3, slack, "reset");
        }
        other => panic!("past the burst, got {other:?}"),
    }
    // Another key is another budget.
    assert!(matches!(
        limits.check("deployment:other:rpm", rate, burst, 1).await,
        Verdict::Admit { remaining: 2, .. }
    ));
    replica.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_spends_that_many_units() {
    let redis = RedisServer::start();
    let replica = Replica::up(&redis.url()).await;
    let limits = &replica.limits;
    // One unit a minute, a burst of 5 (tokens, say).
    let (rate, burst) = (n(1), n(5));
    let minute = Duration::from_secs(60);
    let slack = Duration::from_secs(2);
    assert!(matches!(
        limits.check("app:a:tpm", rate, burst, 3).await,
        Verdict::Admit { remaining: 2, .. }
    ));
    // 3 more need 1 unit more than the 2 left: one interval.
    match limits.check("app:a:tpm", rate, burst, 3).await {
        Verdict::Reject {
            retry_after,
            remaining,
            ..
        } => {
            assert_about(retry_after, minute, slack, "retry_after");
            assert_eq!(remaining, 2);
        }
        other => panic!("3 of 2 left, got {other:?}"),
    }
    // The rejection spent nothing: 2 still pass.
    match limits.check("app:a:tpm", rate, burst, 2).await {
        Verdict::Admit { remaining, reset } => {
            assert_eq!(remaining, 0);
            assert_about(reset, minute * 5, slack, "reset");
        }
        other => panic!("2 of 2 left, got {other:?}"),
    }
    // A cost of 0 looks without spending.
    assert!(matches!(
        limits.check("app:a:tpm", rate, burst, 0).await,
        Verdict::Admit { remaining: 0, .. }
    ));
    replica.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_above_the_burst_is_never_admitted() {
    let redis = RedisServer::start();
    let replica = Replica::up(&redis.url()).await;
    let limits = &replica.limits;
    assert_eq!(
        limits.check("app:b:tpm", n(60), n(5), 6).await,
        Verdict::TooLarge { burst: 5 }
    );
    // It spent nothing: the whole burst is still there.
    assert!(matches!(
        limits.check("app:b:tpm", n(60), n(5), 5).await,
        Verdict::Admit { remaining: 0, .. }
    ));
    replica.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_is_unavailable_at_once_and_a_restart_brings_it_back() {
    let mut redis = RedisServer::start();
    let replica = Replica::up(&redis.url()).await;
    let limits = &replica.limits;
    let gauge = limits.up_gauge();
    let (rate, burst) = (n(1), n(10));
    assert!(matches!(
        limits.check("k", rate, burst, 1).await,
        Verdict::Admit { remaining: 9, .. }
    ));

    redis.kill();
    let started = Instant::now();
    assert_eq!(
        limits.check("k", rate, burst, 1).await,
        Verdict::Unavailable
    );
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    assert!(
        !limits.is_up(),
        "a dropped connection takes the backend down"
    );
    assert_eq!(gauge.get(), 0);
    // While down: no network call, so no wait either.
    let started = Instant::now();
    for _ in 0..100 {
        assert_eq!(
            limits.check("k", rate, burst, 1).await,
            Verdict::Unavailable
        );
    }
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());

    redis.restart();
    assert!(
        limits.wait_up(UP_WITHIN).await,
        "reconnected after the restart"
    );
    assert_eq!(gauge.get(), 1);
    // The restarted Redis is empty (no persistence), and the script is loaded again.
    assert!(matches!(
        limits.check("k", rate, burst, 1).await,
        Verdict::Admit { remaining: 9, .. }
    ));
    replica.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_costs_at_most_the_timeout_and_is_left_after_a_few() {
    let redis = RedisServer::start();
    let replica = Replica::up(&redis.url()).await;
    let limits = &replica.limits;
    let (rate, burst) = (n(1), n(100));
    assert!(matches!(
        limits.check("f", rate, burst, 1).await,
        Verdict::Admit { .. }
    ));

    redis.pause();
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(
            limits.check("f", rate, burst, 1).await,
            Verdict::Unavailable
        );
        assert!(
            started.elapsed() < TIMEOUT + PROMPT,
            "bounded by the timeout, took {:?}",
            started.elapsed()
        );
    }
    // Three timeouts in a row (or the health probe) take it down: no more waiting.
    assert!(!limits.is_up(), "a Redis that never answers is down");
    let started = Instant::now();
    assert_eq!(
        limits.check("f", rate, burst, 1).await,
        Verdict::Unavailable
    );
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());

    redis.resume();
    assert!(
        limits.wait_up(UP_WITHIN).await,
        "back once Redis answers again"
    );
    assert!(matches!(
        limits.check("f", rate, burst, 1).await,
        Verdict::Admit { .. }
    ));
    replica.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_at_start_is_unavailable_without_a_stall() {
    // Nothing listens on this port.
    let refused = format!("redis://127.0.0.1:{}", free_port());
    // This one accepts connections (the kernel's backlog) and never answers.
    let silent_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent = format!(
        "redis://127.0.0.1:{}",
        silent_listener.local_addr().expect("addr").port()
    );
    for url in [refused, silent] {
        let replica = Replica::connect(&url, Duration::from_millis(5));
        let started = Instant::now();
        for _ in 0..10 {
            assert_eq!(
                replica.limits.check("k", n(60), n(10), 1).await,
                Verdict::Unavailable,
                "{url}"
            );
        }
        assert!(
            started.elapsed() < PROMPT,
            "{url}: took {:?}",
            started.elapsed()
        );
        assert!(
            !replica.limits.wait_up(Duration::from_millis(300)).await,
            "{url}"
        );
        assert_eq!(replica.limits.up_gauge().get(), 0, "{url}");
        replica.shut_down().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_match_governor_on_the_same_sequence() {
    use governor::clock::{Clock, FakeRelativeClock};
    use governor::{Quota, RateLimiter};
    let redis = RedisServer::start();
    let replica = Replica::up(&redis.url()).await;
    // One unit a minute, so nothing refills between the Redis calls; governor's clock
    // stands still.
    let (rate, burst) = (n(1), n(7));
    let clock = FakeRelativeClock::default();
    let governor =
        RateLimiter::direct_with_clock(Quota::per_minute(rate).allow_burst(burst), clock.clone());
    let slack = Duration::from_secs(2);
    for cost in [1u32, 3, 2, 2, 4, 1, 1, 5, 1] {
        let expected = governor.check_n(n(cost)).expect("cost within the burst");
        let got = replica.limits.check("g", rate, burst, cost).await;
        match (expected, got) {
            (Ok(()), Verdict::Admit { .. }) => {}
            (Err(not_until), Verdict::Reject { retry_after, .. }) => {
                let wait = not_until.wait_time_from(clock.now());
                assert_about(retry_after, wait, slack, &format!("cost {cost}"));
            }
            (expected, got) => panic!("cost {cost}: governor {expected:?}, Redis {got:?}"),
        }
    }
    replica.shut_down().await;
}

/// Everything this test binary logs (tests run in parallel in one process: each picks
/// its own lines by its Redis port).
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().expect("log").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber once; returns the lines logged so far that name `port`.
fn log_lines(port: u16) -> Vec<String> {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(|| LogWriter)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
    });
    let text = String::from_utf8_lossy(&LOG.lock().expect("log")).into_owned();
    let needle = format!("127.0.0.1:{port}");
    text.lines()
        .filter(|line| line.contains(&needle))
        .map(str::to_owned)
        .collect()
}

fn count(lines: &[String], level: &str, words: &str) -> usize {
    lines
        .iter()
        .filter(|l| l.contains(level) && l.contains(words))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_and_up_are_logged_once_each_and_the_password_never() {
    const PASSWORD: &str = "s3cret-redis-pw";
    let _ = log_lines(0);
    let mut redis = RedisServer::start_with_password(PASSWORD);
    let port = redis.port();
    let replica = Replica::up(&redis.url()).await;
    let limits = &replica.limits;
    assert!(matches!(
        limits.check("p", n(1), n(10), 1).await,
        Verdict::Admit { .. }
    ));
    redis.kill();
    for _ in 0..20 {
        assert_eq!(
            limits.check("p", n(1), n(10), 1).await,
            Verdict::Unavailable
        );
    }
    // Wait (by counting, not by the clock) until several reconnections have failed.
    let deadline = Instant::now() + UP_WITHIN;
    while count(&log_lines(port), "DEBUG", "reconnection failed") < 3 {
        assert!(Instant::now() < deadline, "no reconnection attempts logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.restart();
    assert!(limits.wait_up(UP_WITHIN).await);
    let lines = log_lines(port);
    assert_eq!(count(&lines, "INFO", "connected"), 1, "{lines:#?}");
    assert_eq!(count(&lines, "WARN", "unavailable"), 1, "{lines:#?}");
    assert_eq!(count(&lines, "INFO", "recovered"), 1, "{lines:#?}");
    assert_eq!(count(&lines, "WARN", ""), 1, "{lines:#?}");
    replica.shut_down().await;

    // A wrong password: one warning however many attempts, with the reason and no secret.
    let wrong = format!("redis://:not-{PASSWORD}@127.0.0.1:{port}");
    let replica = Replica::connect(&wrong, TIMEOUT);
    assert_eq!(
        replica.limits.check("p", n(1), n(10), 1).await,
        Verdict::Unavailable
    );
    let deadline = Instant::now() + UP_WITHIN;
    while count(&log_lines(port), "DEBUG", "reconnection failed") < 6 {
        assert!(Instant::now() < deadline, "no reconnection attempts logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = log_lines(port);
    assert_eq!(count(&lines, "WARN", "cannot reach Redis"), 1, "{lines:#?}");
    assert!(!replica.limits.is_up());
    replica.shut_down().await;

    let everything = String::from_utf8_lossy(&LOG.lock().expect("log")).into_owned();
    assert!(
        !everything.contains(PASSWORD),
        "the password was logged:\n{everything}"
    );
    assert!(everything.contains("redis://***@127.0.0.1"), "{everything}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_verifies_the_server_against_the_given_roots() {
    // The log is read below: capture it before anything connects.
    let _ = log_lines(0);
    // A private CA and a certificate for 127.0.0.1 it signed.
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
    let server_key = rcgen::KeyPair::generate().expect("server key");
    let server_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("server params")
        .signed_by(&server_key, &ca)
        .expect("server certificate");
    let redis = RedisServer::start_tls(&server_cert.pem(), &server_key.serialize_pem());

    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let trusted = SharedLimits::connect_with_roots(
        &redis.tls_url(),
        ca.pem().as_bytes(),
        TIMEOUT,
        stop.clone(),
        &tasks,
    )
    .expect("connect");
    assert!(trusted.wait_up(UP_WITHIN).await, "TLS with the private CA");
    assert!(matches!(
        trusted.check("t", n(1), n(2), 1).await,
        Verdict::Admit { remaining: 1, .. }
    ));

    // The system's roots do not know that CA: the connection is refused, never used.
    let untrusted = Replica::connect(&redis.tls_url(), TIMEOUT);
    let deadline = Instant::now() + UP_WITHIN;
    while count(&log_lines(redis.port_tls()), "WARN", "cannot reach Redis") == 0 {
        assert!(Instant::now() < deadline, "no failed TLS connection logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!untrusted.limits.is_up());
    let refused = log_lines(redis.port_tls());
    assert!(
        refused
            .iter()
            .any(|l| l.to_lowercase().contains("certificate")),
        "refused for its certificate: {refused:#?}"
    );
    assert_eq!(
        untrusted.limits.check("t", n(1), n(2), 1).await,
        Verdict::Unavailable
    );
    untrusted.shut_down().await;
    stop.cancel();
    tasks.close();
    tokio::time::timeout(PROMPT * 5, tasks.wait())
        .await
        .expect("stopped");
}

fn budget(key: &str, per_minute: u32, burst: u32, cost: u32) -> Budget<'_> {
    Budget {
        key,
        per_minute: n(per_minute),
        burst: n(burst),
        cost,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_budgets_are_spent_all_or_nothing() {
    let redis = RedisServer::start();
    let replica = Replica::up(&redis.url()).await;
    let limits = &replica.limits;
    let slack = Duration::from_secs(2);
    // An app's request budget (10 at once) and its deployment's (2 at once, one every 30 s).
    let app = budget("app:a:rpm", 1, 10, 1);
    let deployment = budget("deployment:d:rpm", 2, 2, 1);
    for left in [1, 0] {
        match limits.check_all(&[app, deployment]).await {
            Decision::Admit(headroom) => {
                assert_eq!(headroom.len(), 2);
                assert_eq!(headroom[0].remaining, 8 + left);
                assert_eq!(headroom[1].remaining, left);
            }
            other => panic!("within both budgets, got {other:?}"),
        }
    }
    // The deployment refuses: nothing is spent, the app's budget included.
    for _ in 0..3 {
        match limits.check_all(&[app, deployment]).await {
            Decision::Reject {
                retry_after,
                limiting,
                budgets,
            } => {
                assert_eq!(limiting, 1, "the deployment limits");
                assert_about(retry_after, Duration::from_secs(30), slack, "retry_after");
                assert_eq!(budgets[0].remaining, 8, "the app's budget is untouched");
                assert_eq!(budgets[1].remaining, 0);
            }
            other => panic!("past the deployment's burst, got {other:?}"),
        }
    }
    assert!(matches!(
        limits.check("app:a:rpm", n(1), n(10), 0).await,
        Verdict::Admit { remaining: 8, .. }
    ));
    // The longest wait of those that refuse is the wait for all of them.
    let tokens = budget("app:a:tpm", 1, 100, 100);
    assert!(matches!(
        limits.check_all(&[tokens]).await,
        Decision::Admit(_)
    ));
    match limits.check_all(&[deployment, tokens]).await {
        Decision::Reject {
            retry_after,
            limiting,
            ..
        } => {
            assert_eq!(limiting, 1, "100 tokens at one a minute wait longest");
            assert_about(
                retry_after,
                Duration::from_secs(100 * 60),
                slack,
                "retry_after",
            );
        }
        other => panic!("both refuse, got {other:?}"),
    }
    // A cost above a burst is found without Redis and names its budget.
    assert_eq!(
        limits
            .check_all(&[app, budget("app:a:tpm", 1, 100, 101)])
            .await,
        Decision::TooLarge {
            index: 1,
            burst: 100
        }
    );
    assert_eq!(limits.check_all(&[]).await, Decision::Admit(Vec::new()));
    replica.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_spend_joint_budgets_together() {
    let redis = RedisServer::start();
    let a = Replica::up(&redis.url()).await;
    let b = Replica::up(&redis.url()).await;
    // The deployment admits 6 of the 30; the app, with room for 10, must lose exactly those 6.
    let callers = 30;
    let barrier = Arc::new(Barrier::new(callers));
    let mut calls = Vec::new();
    for i in 0..callers {
        let limits = if i % 2 == 0 {
            a.limits.clone()
        } else {
            b.limits.clone()
        };
        let barrier = barrier.clone();
        calls.push(tokio::spawn(async move {
            barrier.wait().await;
            limits
                .check_all(&[
                    budget("app:j:rpm", 1, 10, 1),
                    budget("deployment:j:rpm", 1, 6, 1),
                ])
                .await
        }));
    }
    let mut admitted = 0;
    for call in calls {
        match call.await.expect("check task") {
            Decision::Admit(_) => admitted += 1,
            Decision::Reject { limiting, .. } => assert_eq!(limiting, 1),
            other => panic!("every call is decided in Redis, got {other:?}"),
        }
    }
    assert_eq!(admitted, 6);
    assert!(matches!(
        a.limits.check("app:j:rpm", n(1), n(10), 0).await,
        Verdict::Admit { remaining: 4, .. }
    ));
    a.shut_down().await;
    b.shut_down().await;
}
