//! Who is calling a shared gateway: app keys, each app's model allowlist and quotas.
//!
//! With `[[apps]]` configured, every route that reaches Azure needs a key, presented the
//! way the client's SDK already does: `Authorization: Bearer KEY` (OpenAI SDKs, curl) or
//! `api-key: KEY` (AzureOpenAI SDKs). Only the key's SHA-256 is kept; a presented key is
//! hashed and compared with every app's hash in constant time, all of them each time, so
//! a failed comparison costs the same whatever the key. The key never goes further:
//! `rewrite` removes both headers before Azure, and nothing here logs it.
//!
//! The first time an app's key matches, the app also keeps the key's fingerprint: two
//! SipHash-1-3 values under keys drawn at start, 128 bits this process alone can compute.
//! Later requests compare fingerprints (in constant time, every app's) and skip the
//! SHA-256, which was a quarter of what a key cost a request. Only keys that matched are
//! learned, one an app, so the fingerprints are as bounded as the apps; a key that matches
//! none takes the full SHA-256 path every time, as before.
//!
//! An app's `rpm` and `tpm` are GCRAs of rate N a minute with a burst of N (rpm = 3: three
//! at once, then one every 20 s), on top of the deployment limits (both must admit).

use crate::config::AppSpec;
use crate::error::Error;
use crate::shared_limit::{Budget as SharedBudget, Decision, Headroom, SharedLimits};
use bytes::BufMut;
use governor::clock::{Clock, MonotonicClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use std::fmt::Write as _;
use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// On std's monotonic clock, as the deployment limits (see `Limiter::new`).
type Gcra = RateLimiter<NotKeyed, InMemoryState, MonotonicClock, StateInformationMiddleware>;

/// The apps of a shared gateway.
pub struct Apps {
    apps: Vec<Arc<App>>,
    /// The fingerprint's two SipHash keys, drawn at start.
    seeds: [RandomState; 2],
}

/// One app: its name, allowlist and quotas.
pub struct App {
    /// Its name: the label in logs, metrics and `/usage`.
    pub name: Arc<str>,
    key_sha256: [u8; 32],
    /// The fingerprint of the key that matched `key_sha256`, once one has.
    learned: OnceLock<[u8; 16]>,
    models: Option<Vec<String>>,
    requests: Option<Budget>,
    tokens: Option<Budget>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One per-minute quota of an app, counted in this process.
struct Budget {
    limit: NonZeroU32,
    gcra: Gcra,
    /// What the last decision left: governor tells it only on a decision, and looking
    /// must not spend.
    last_remaining: AtomicU32,
}

/// What an app's quotas said of a request: the `x-ratelimit-*` values its answer carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Standing {
    /// Requests: limit, remaining, time until the quota is whole again.
    pub requests: Option<Level>,
    /// Tokens: the same.
    pub tokens: Option<Level>,
}

/// One quota's state after a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    /// The quota per minute (also the burst).
    pub limit: u32,
    /// What is left now.
    pub remaining: u32,
    /// Until the quota is whole again.
    pub reset: Duration,
}

/// An app's quota refused a request.
#[derive(Debug)]
pub struct Refused {
    /// The 429 to answer.
    pub error: Error,
    /// The quotas' state, for the answer's headers.
    pub standing: Standing,
}

impl Apps {
    /// The apps of `specs`; `None` when there are none (no keys asked for).
    pub fn new(specs: &[AppSpec]) -> Option<Apps> {
        if specs.is_empty() {
            return None;
        }
        let budget = |limit: Option<NonZeroU32>| {
            limit.map(|limit| Budget {
                limit,
                gcra: RateLimiter::direct_with_clock(
                    Quota::per_minute(limit).allow_burst(limit),
                    MonotonicClock,
                )
                .with_middleware::<StateInformationMiddleware>(),
                last_remaining: AtomicU32::new(limit.get()),
            })
        };
        Some(Apps {
            apps: specs
                .iter()
                .map(|spec| {
                    Arc::new(App {
                        name: Arc::from(spec.name.as_str()),
                        key_sha256: spec.key_sha256,
                        learned: OnceLock::new(),
                        models: spec.models.clone(),
                        requests: budget(spec.rpm),
                        tokens: budget(spec.tpm),
                    })
                })
                .collect(),
            seeds: [RandomState::new(), RandomState::new()],
        })
    }

    /// 128 bits of keyed hash of a presented key: equal fingerprints mean the same key
    /// (a collision by chance is one in 2^128; without the process's seeds none can be
    /// aimed at).
    fn fingerprint(&self, key: &[u8]) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.seeds[0].hash_one(key).to_le_bytes());
        out[8..].copy_from_slice(&self.seeds[1].hash_one(key).to_le_bytes());
        out
    }

    /// The app whose key the request carries: 401 `invalid_api_key` when it carries none
    /// or an unknown one.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Arc<App>, Error> {
        let Some(key) = presented_key(headers) else {
            return Err(Error::Unauthenticated(
                "Missing API key: this keyless gateway needs your app's key, as \
                 `Authorization: Bearer KEY` or `api-key: KEY`"
                    .into(),
            ));
        };
        let print = self.fingerprint(key);
        // Every app is compared, whatever matched: the time taken does not depend on
        // which app (if any) the key belongs to.
        let mut found = None;
        for app in &self.apps {
            if let Some(learned) = app.learned.get()
                && aws_lc_rs::constant_time::verify_slices_are_equal(&print, learned).is_ok()
            {
                found = Some(app);
            }
        }
        if let Some(app) = found {
            return Ok(app.clone());
        }
        let hash = sha256(key);
        for app in &self.apps {
            if aws_lc_rs::constant_time::verify_slices_are_equal(&hash, &app.key_sha256).is_ok() {
                found = Some(app);
            }
        }
        if let Some(app) = found {
            // Set once: the one key whose SHA-256 this is.
            let _ = app.learned.set(print);
        }
        found.cloned().ok_or_else(|| {
            Error::Unauthenticated("Incorrect API key provided for this keyless gateway".into())
        })
    }
}

impl App {
    /// Whether the app may use `model` (the client-side name): 403 `model_not_allowed`
    /// otherwise. A request that names no model (files, batches, model lists) passes.
    pub fn allows(&self, model: Option<&str>) -> Result<(), Error> {
        match (&self.models, model) {
            (Some(models), Some(model)) if !models.iter().any(|m| m == model) => {
                Err(Error::ModelNotAllowed(format!(
                    "The app {:?} may not use the model {:?}",
                    &*self.name,
                    model.chars().take(64).collect::<String>()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Whether the app has quotas (and its answers carry `x-ratelimit-*`).
    pub fn has_quotas(&self) -> bool {
        self.requests.is_some() || self.tokens.is_some()
    }

    /// Takes one request and `tokens` estimated tokens from the app's quotas, or says
    /// why not (a 429 with the wait).
    pub fn admit(&self, tokens: u32) -> Result<Standing, Refused> {
        let mut standing = Standing::default();
        if let Some(budget) = &self.requests {
            match budget.take(1) {
                Ok(level) => standing.requests = Some(level),
                Err((wait, level)) => {
                    standing.requests = Some(level);
                    standing.tokens = self.tokens.as_ref().map(Budget::level);
                    return Err(refused("requests per minute", wait, standing));
                }
            }
        }
        if let Some(budget) = &self.tokens {
            match budget.take(tokens) {
                Ok(level) => standing.tokens = Some(level),
                Err((wait, level)) => {
                    standing.tokens = Some(level);
                    return Err(refused("tokens per minute", wait, standing));
                }
            }
        }
        Ok(standing)
    }
}

impl App {
    /// [`App::admit`] with the quotas kept in Redis, shared by every replica: one
    /// decision for both, all or nothing. Redis down or slow: this process decides.
    pub async fn admit_shared(
        &self,
        tokens: u32,
        shared: &SharedLimits,
    ) -> Result<Standing, Refused> {
        let (requests_key, tokens_key) = (
            format!("app:{}:rpm", self.name),
            format!("app:{}:tpm", self.name),
        );
        let mut budgets = Vec::with_capacity(2);
        let mut kinds = Vec::with_capacity(2);
        if let Some(b) = &self.requests {
            budgets.push(SharedBudget {
                key: &requests_key,
                per_minute: b.limit,
                burst: b.limit,
                cost: 1,
            });
            kinds.push(("requests per minute", b.limit.get()));
        }
        if let Some(b) = &self.tokens {
            budgets.push(SharedBudget {
                key: &tokens_key,
                per_minute: b.limit,
                burst: b.limit,
                // As locally: a request larger than the whole quota counts as all of it.
                cost: tokens.max(1).min(b.limit.get()),
            });
            kinds.push(("tokens per minute", b.limit.get()));
        }
        let standing = |rooms: &[Headroom]| {
            let mut standing = Standing::default();
            for ((kind, limit), room) in kinds.iter().zip(rooms) {
                let level = Some(Level {
                    limit: *limit,
                    remaining: room.remaining,
                    reset: room.reset,
                });
                if kind.starts_with("requests") {
                    standing.requests = level;
                } else {
                    standing.tokens = level;
                }
            }
            standing
        };
        match shared.check_all(&budgets).await {
            Decision::Admit(rooms) => Ok(standing(&rooms)),
            Decision::Reject {
                retry_after,
                limiting,
                budgets: rooms,
            } => Err(refused(
                kinds.get(limiting).map_or("requests per minute", |k| k.0),
                retry_after,
                standing(&rooms),
            )),
            Decision::TooLarge { .. } | Decision::Unavailable => self.admit(tokens),
        }
    }
}

fn refused(limit: &'static str, wait: Duration, standing: Standing) -> Refused {
    Refused {
        error: Error::RateLimited {
            limit,
            retry_after: wait,
        },
        standing,
    }
}

impl Budget {
    /// The time one unit takes to come back.
    fn unit(&self) -> Duration {
        Duration::from_secs(60) / self.limit.get()
    }

    fn level_with(&self, remaining: u32) -> Level {
        Level {
            limit: self.limit.get(),
            remaining,
            reset: self.unit() * (self.limit.get() - remaining.min(self.limit.get())),
        }
    }

    /// The state as the last decision left it, without taking anything.
    fn level(&self) -> Level {
        self.level_with(self.last_remaining.load(Ordering::Relaxed))
    }

    /// Takes `n` units (at least one, at most the burst: a request larger than the whole
    /// quota counts as the whole quota), or says how long until they could be taken.
    fn take(&self, n: u32) -> Result<Level, (Duration, Level)> {
        let n = NonZeroU32::new(n.max(1))
            .unwrap_or(NonZeroU32::MIN)
            .min(self.limit);
        match self.gcra.check_n(n) {
            Ok(Ok(snapshot)) => {
                let remaining = snapshot.remaining_burst_capacity();
                self.last_remaining.store(remaining, Ordering::Relaxed);
                Ok(self.level_with(remaining))
            }
            Ok(Err(not_until)) => {
                self.last_remaining.store(0, Ordering::Relaxed);
                let wait = not_until.wait_time_from(MonotonicClock.now());
                Err((wait, self.level_with(0)))
            }
            // Cannot happen: `n` is capped at the burst.
            Err(_) => Err((Duration::from_secs(60), self.level_with(0))),
        }
    }
}

impl Standing {
    /// Writes OpenAI's `x-ratelimit-*` headers for the quotas the app has, replacing
    /// Azure's (which describe the deployment, shared by every app).
    pub fn apply(&self, headers: &mut HeaderMap) {
        let trio = [
            (
                self.requests,
                X_LIMIT_REQUESTS,
                X_REMAINING_REQUESTS,
                X_RESET_REQUESTS,
            ),
            (
                self.tokens,
                X_LIMIT_TOKENS,
                X_REMAINING_TOKENS,
                X_RESET_TOKENS,
            ),
        ];
        // The six values written into one buffer and handed out as slices of it: one
        // allocation for all of them rather than one each.
        let mut text = bytes::BytesMut::with_capacity(96);
        let mut values: [(Option<HeaderName>, usize, usize); 6] = Default::default();
        for (i, (level, limit, remaining, reset)) in trio.into_iter().enumerate() {
            let Some(level) = level else { continue };
            let mut put = |n: usize, name: HeaderName, write: &dyn Fn(&mut bytes::BytesMut)| {
                let at = text.len();
                write(&mut text);
                values[i * 3 + n] = (Some(name), at, text.len());
            };
            put(0, limit, &|t| {
                t.put_slice(itoa::Buffer::new().format(level.limit).as_bytes());
            });
            put(1, remaining, &|t| {
                t.put_slice(itoa::Buffer::new().format(level.remaining).as_bytes());
            });
            put(2, reset, &|t| put_go_duration(t, level.reset));
        }
        let text = text.freeze();
        headers.reserve(6);
        for (name, at, end) in values {
            if let Some(name) = name
                && let Ok(value) = HeaderValue::from_maybe_shared(text.slice(at..end))
            {
                headers.insert(name, value);
            }
        }
    }
}

const X_LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const X_REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const X_RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const X_LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const X_REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const X_RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// A duration as OpenAI writes its reset headers (Go's format): `20ms`, `1s`, `1.5s`,
/// `6m0s`, `1h2m3s`.
pub fn go_duration(d: Duration) -> String {
    let mut out = Vec::with_capacity(16);
    put_go_duration(&mut out, d);
    // Digits and unit letters only.
    String::from_utf8(out).unwrap_or_default()
}

/// [`go_duration`] into `out`, numbers written by itoa (core's formatting machinery was
/// most of what the six `x-ratelimit-*` values cost).
fn put_go_duration(out: &mut impl BufMut, d: Duration) {
    let ms = d.as_millis();
    let mut number = itoa::Buffer::new();
    if ms < 1000 {
        out.put_slice(number.format(ms).as_bytes());
        out.put_slice(b"ms");
        return;
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    if h > 0 {
        out.put_slice(number.format(h).as_bytes());
        out.put_slice(b"h");
    }
    if h > 0 || m > 0 {
        out.put_slice(number.format(m).as_bytes());
        out.put_slice(b"m");
    }
    out.put_slice(number.format(s).as_bytes());
    if frac > 0 {
        // Milliseconds as a decimal fraction, trailing zeros dropped: 1.5s, 1.05s.
        let digits = [
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ];
        let keep = if frac % 100 == 0 {
            2
        } else if frac % 10 == 0 {
            3
        } else {
            4
        };
        out.put_slice(&digits[..keep]);
    }
    out.put_slice(b"s");
}

/// The key a client presents: `Authorization: Bearer KEY`, else `api-key: KEY`.
fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .and_then(|v| {
            (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| v[7..].trim_ascii())
        })
        .filter(|k| !k.is_empty());
    bearer.or_else(|| {
        headers
            .get("api-key")
            .map(|v| v.as_bytes().trim_ascii())
            .filter(|k| !k.is_empty())
    })
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// SHA-256 as 64 lowercase hex digits (`keyless hash-key`).
pub fn sha256_hex(bytes: &[u8]) -> String {
    sha256(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, key: &str, rpm: Option<u32>, tpm: Option<u32>) -> AppSpec {
        AppSpec {
            name: name.into(),
            key_sha256: sha256(key.as_bytes()),
            models: Some(vec!["gpt-4o-mini".into()]),
            rpm: rpm.and_then(NonZeroU32::new),
            tpm: tpm.and_then(NonZeroU32::new),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn sha256_hex_is_the_known_digest() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn keys_in_either_header_identify_their_app() {
        let apps = Apps::new(&[
            spec("a", "key-a", None, None),
            spec("b", "key-b", None, None),
        ])
        .unwrap();
        let by_bearer = apps
            .identify(&headers(&[("authorization", "Bearer key-b")]))
            .unwrap();
        assert_eq!(&*by_bearer.name, "b");
        let by_api_key = apps.identify(&headers(&[("api-key", "key-a")])).unwrap();
        assert_eq!(&*by_api_key.name, "a");
        for bad in [
            headers(&[]),
            headers(&[("authorization", "Bearer nope")]),
            headers(&[("authorization", "Basic key-a")]),
            headers(&[("api-key", "")]),
        ] {
            let err = apps.identify(&bad).unwrap_err();
            assert_eq!(err.status(), 401);
            assert_eq!(err.kind_and_code().1, "invalid_api_key");
        }
    }

    #[test]
    fn a_learned_key_is_known_again_and_no_other_key_passes_for_it() {
        let apps = Apps::new(&[
            spec("a", "key-a", None, None),
            spec("b", "key-b", None, None),
        ])
        .unwrap();
        assert!(apps.apps.iter().all(|app| app.learned.get().is_none()));
        let first = apps.identify(&headers(&[("api-key", "key-a")])).unwrap();
        assert_eq!(&*first.name, "a");
        assert!(apps.apps[0].learned.get().is_some());
        assert!(
            apps.apps[1].learned.get().is_none(),
            "only a matched key is learned"
        );
        // Known now by its fingerprint, in either header form.
        let again = apps
            .identify(&headers(&[("authorization", "Bearer key-a")]))
            .unwrap();
        assert_eq!(&*again.name, "a");
        // Near misses of the learned key, and the other app's unlearned key.
        for bad in ["key-", "key-aa", "Key-a", "key-c"] {
            let err = apps
                .identify(&headers(&[("api-key", bad)]))
                .map(|app| app.name.clone())
                .unwrap_err();
            assert_eq!(err.status(), 401, "{bad:?}");
        }
        assert_eq!(
            &*apps
                .identify(&headers(&[("api-key", "key-b")]))
                .unwrap()
                .name,
            "b"
        );
        assert_ne!(apps.apps[0].learned.get(), apps.apps[1].learned.get());
    }

    #[test]
    fn the_allowlist_names_client_side_models() {
        let apps = Apps::new(&[spec("a", "k", None, None)]).unwrap();
        let app = apps.identify(&headers(&[("api-key", "k")])).unwrap();
        assert!(app.allows(Some("gpt-4o-mini")).is_ok());
        assert!(app.allows(None).is_ok(), "no model named: files, batches");
        let err = app.allows(Some("gpt-4o")).unwrap_err();
        assert_eq!(err.status(), 403);
        assert_eq!(err.kind_and_code().1, "model_not_allowed");
    }

    #[test]
    fn rpm_is_a_burst_of_n_then_one_every_60_over_n_seconds() {
        let apps = Apps::new(&[spec("a", "k", Some(3), None)]).unwrap();
        let app = apps.identify(&headers(&[("api-key", "k")])).unwrap();
        let remaining: Vec<u32> = (0..3)
            .map(|_| app.admit(1).unwrap().requests.unwrap().remaining)
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = app.admit(1).unwrap_err();
        let Error::RateLimited { retry_after, .. } = refused.error else {
            panic!("a 429")
        };
        assert!(
            retry_after > Duration::from_secs(19) && retry_after <= Duration::from_secs(20),
            "{retry_after:?}"
        );
        let level = refused.standing.requests.unwrap();
        assert_eq!((level.limit, level.remaining), (3, 0));
        assert_eq!(level.reset, Duration::from_secs(60));
    }

    #[test]
    fn tpm_counts_the_estimate() {
        let apps = Apps::new(&[spec("a", "k", None, Some(1000))]).unwrap();
        let app = apps.identify(&headers(&[("api-key", "k")])).unwrap();
        let level = app.admit(600).unwrap().tokens.unwrap();
        assert_eq!(level.remaining, 400);
        let refused = app.admit(600).unwrap_err();
        assert!(matches!(
            refused.error,
            Error::RateLimited {
                limit: "tokens per minute",
                ..
            }
        ));
    }

    #[test]
    fn headers_replace_azures() {
        let mut h = headers(&[("x-ratelimit-remaining-requests", "999")]);
        Standing {
            requests: Some(Level {
                limit: 60,
                remaining: 59,
                reset: Duration::from_secs(1),
            }),
            tokens: None,
        }
        .apply(&mut h);
        assert_eq!(h["x-ratelimit-limit-requests"], "60");
        assert_eq!(h["x-ratelimit-remaining-requests"], "59");
        assert_eq!(h["x-ratelimit-reset-requests"], "1s");
        assert!(!h.contains_key("x-ratelimit-limit-tokens"));
    }

    #[test]
    fn durations_in_gos_format() {
        for (ms, text) in [
            (20, "20ms"),
            (1000, "1s"),
            (1500, "1.5s"),
            (1050, "1.05s"),
            (1005, "1.005s"),
            (59_999, "59.999s"),
            (60_000, "1m0s"),
            (360_000, "6m0s"),
            (3_600_000, "1h0m0s"),
            (3_723_000, "1h2m3s"),
        ] {
            assert_eq!(go_duration(Duration::from_millis(ms)), text);
        }
        // The longest there is still fits the header's stack buffer.
        let standing = Standing {
            requests: Some(Level {
                limit: 1,
                remaining: 0,
                reset: Duration::MAX,
            }),
            tokens: None,
        };
        let mut headers = HeaderMap::new();
        standing.apply(&mut headers);
        assert_eq!(
            headers[X_RESET_REQUESTS],
            go_duration(Duration::MAX).as_str()
        );
        assert_eq!(go_duration(Duration::MAX), "5124095576030431h0m15.999s");
    }

    #[test]
    fn debug_shows_no_key_material() {
        let s = spec("billing", "secret-key", Some(1), None);
        let hex = sha256_hex(b"secret-key");
        let shown = format!("{s:?}");
        assert!(shown.contains("billing"));
        assert!(!shown.contains(&hex[..16]));
        assert!(!shown.contains("key_sha256"));
        let apps = Apps::new(&[s]).unwrap();
        let app = apps
            .identify(&headers(&[("api-key", "secret-key")]))
            .unwrap();
        assert!(!format!("{app:?}").contains(&hex[..16]));
    }
}
