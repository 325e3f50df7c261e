//! What to retry and how long to wait: decided from the response head only.
//!
//! Azure says how long to wait in `retry-after-ms` (documented), `x-ms-retry-after-ms`,
//! or `retry-after` (seconds or an HTTP date). When it says nothing keyless backs off
//! exponentially with full jitter (AWS architecture blog, "Exponential Backoff And
//! Jitter"), so that many clients throttled together do not return together.

use http::{HeaderMap, StatusCode};
use rand::Rng;
use std::time::{Duration, SystemTime};

/// Statuses worth another attempt: timeouts, throttling, and transient server errors.
pub fn is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

/// The wait Azure asked for, if it asked: `retry-after-ms`, then `x-ms-retry-after-ms`,
/// then `retry-after` (delta seconds or HTTP date, RFC 9110 §10.2.3).
pub fn azure_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|ms| ms.is_finite() && *ms >= 0.0)
        {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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
}
