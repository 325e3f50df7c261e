//! The proxy's own errors: one flat enum, one status table, one OpenAI-shaped body.
//!
//! Upstream 4xx/5xx answers are not errors here: they pass through verbatim. These are
//! the answers keyless gives itself, when it cannot or must not forward a request.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// Everything keyless can answer on its own.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No route matches the request path.
    #[error(
        "Unknown route: {method} {path}. keyless serves OpenAI-style paths such as /v1/chat/completions and Azure-style paths under /openai/"
    )]
    NotFound {
        /// Request method.
        method: String,
        /// Request path (no query: it may carry secrets).
        path: String,
    },
    /// The method is not allowed on this route.
    #[error("Method {0} is not allowed on this route")]
    MethodNotAllowed(String),
    /// The path would reach something other than what it names upstream (a backslash,
    /// an encoded `/` or `\`, a dot segment): refused, never forwarded.
    #[error("Refused path: {0}")]
    BadPath(String),
    /// A model or deployment name Azure could not have (path tricks, odd characters,
    /// too long).
    #[error("{0}")]
    InvalidName(String),
    /// The client stopped sending its body for longer than keyless waits.
    #[error("The request body stalled: nothing arrived for {0:?}")]
    BodyTimeout(std::time::Duration),
    /// The JSON body did not parse.
    #[error("The request body is not valid JSON: {0}")]
    InvalidJson(String),
    /// A request the proxy cannot make sense of.
    #[error("{0}")]
    BadRequest(String),
    /// The request body exceeds the configured limit.
    #[error("The request body exceeds keyless's limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The client's body could not be read.
    #[error("Could not read the request body: {0}")]
    BodyRead(String),
    /// No valid Entra token is held.
    #[error("keyless has no valid Entra ID token: {0}")]
    NoToken(String),
    /// The upstream could not be reached (DNS, connect, TLS, reset before the head).
    #[error("Azure OpenAI endpoint unreachable: {0}")]
    UpstreamUnreachable(String),
    /// The upstream sent no response head in time.
    #[error("Azure OpenAI did not answer within {0:?}")]
    UpstreamTimeout(std::time::Duration),
    /// No app key, or one no app has (a shared gateway with `[[apps]]`).
    #[error("{0}")]
    Unauthenticated(String),
    /// The app may not use this model.
    #[error("{0}")]
    ModelNotAllowed(String),
    /// The proxy is shutting down and takes no new requests.
    #[error("keyless is shutting down")]
    ShuttingDown,
    /// keyless's own rate limit (or every backend cooling down) refused the request.
    #[error("Rate limit reached ({limit}); retry after {:.3} seconds", retry_after.as_secs_f64())]
    RateLimited {
        /// Which limit.
        limit: &'static str,
        /// When the request would be admitted.
        retry_after: std::time::Duration,
    },
}

impl Error {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::InvalidJson(_)
            | Error::BadRequest(_)
            | Error::BodyRead(_)
            | Error::BadPath(_)
            | Error::InvalidName(_) => StatusCode::BAD_REQUEST,
            Error::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::NoToken(_) | Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Error::UpstreamUnreachable(_) => StatusCode::BAD_GATEWAY,
            Error::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Error::ModelNotAllowed(_) => StatusCode::FORBIDDEN,
        }
    }

    /// The OpenAI `error.type` and `error.code` for this error.
    pub fn kind_and_code(&self) -> (&'static str, &'static str) {
        match self {
            Error::NotFound { .. } => ("invalid_request_error", "unknown_url"),
            Error::MethodNotAllowed(_) => ("invalid_request_error", "method_not_allowed"),
            Error::InvalidJson(_) => ("invalid_request_error", "invalid_json"),
            Error::BadPath(_) => ("invalid_request_error", "invalid_path"),
            Error::InvalidName(_) => ("invalid_request_error", "invalid_model"),
            Error::BodyTimeout(_) => ("invalid_request_error", "request_timeout"),
            Error::BadRequest(_) => ("invalid_request_error", "bad_request"),
            Error::BodyRead(_) => ("invalid_request_error", "body_read_error"),
            Error::BodyTooLarge { .. } => ("invalid_request_error", "request_too_large"),
            Error::NoToken(_) => ("keyless_error", "no_token"),
            Error::ShuttingDown => ("keyless_error", "shutting_down"),
            Error::UpstreamUnreachable(_) => ("keyless_error", "upstream_unreachable"),
            Error::UpstreamTimeout(_) => ("keyless_error", "upstream_timeout"),
            Error::RateLimited { .. } => ("rate_limit_error", "rate_limit_exceeded"),
            Error::Unauthenticated(_) => ("invalid_request_error", "invalid_api_key"),
            Error::ModelNotAllowed(_) => ("invalid_request_error", "model_not_allowed"),
        }
    }

    /// The OpenAI-shaped JSON body: `{"error":{"message","type","param","code"}}`.
    pub fn body(&self) -> Bytes {
        let (kind, code) = self.kind_and_code();
        let body = serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": kind,
                "param": null,
                "code": code,
            }
        });
        Bytes::from(body.to_string())
    }

    /// The whole response, `Content-Type: application/json`.
    pub fn to_response<B: From<Bytes>>(&self) -> Response<B> {
        let mut response = Response::new(B::from(self.body()));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Error::RateLimited { retry_after, .. } = self {
            // Both forms: the OpenAI SDKs read retry-after-ms first, other clients
            // retry-after (whole seconds, rounded up so nobody comes back too early).
            let ms = retry_after.as_millis().max(1);
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            let headers = response.headers_mut();
            headers.insert("retry-after-ms", HeaderValue::from(ms as u64));
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

/// Every distinct text in an error's chain, outermost first, looking inside `io::Error`s
/// too (whose `source` skips the error they wrap).
pub fn causes(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    walk(err, &mut |e| {
        let text = e.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push(text);
        }
    });
    out
}

/// The chain on one line, `outer: inner: innermost`, white space folded, leaving out a
/// cause an earlier text already says: a readable reason for a 502 or a failed identity.
pub fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for text in causes(err) {
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

fn walk(
    err: &(dyn std::error::Error + 'static),
    visit: &mut dyn FnMut(&(dyn std::error::Error + 'static)),
) {
    visit(err);
    if let Some(inner) = err
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        walk(inner, visit);
    }
    if let Some(source) = err.source() {
        walk(source, visit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_openai_shaped() {
        let err = Error::InvalidJson("expected value at line 1 column 1".into());
        let v: serde_json::Value = serde_json::from_slice(&err.body()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "invalid_json");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not valid JSON")
        );
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn rate_limited_carries_both_retry_headers() {
        let err = Error::RateLimited {
            limit: "requests per minute",
            retry_after: std::time::Duration::from_millis(1500),
        };
        let r: Response<String> = err
            .to_response::<Bytes>()
            .map(|b| String::from_utf8(b.to_vec()).unwrap());
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after-ms"], "1500");
        assert_eq!(r.headers()["retry-after"], "2");
        assert!(r.body().contains("rate_limit_exceeded"));
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn causes_look_inside_io_errors_and_chain_text_says_each_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("dns error")]
        struct Dns;
        let err = Outer(std::io::Error::other(Dns));
        assert_eq!(causes(&err), ["outer failed", "dns error"]);
        assert_eq!(chain_text(&err), "outer failed: dns error");
        let folded = Outer(std::io::Error::other("line one\n  line two"));
        assert_eq!(chain_text(&folded), "outer failed: line one line two");
    }

    #[test]
    fn statuses_follow_the_table() {
        assert_eq!(Error::BodyTooLarge { limit: 1 }.status(), 413);
        assert_eq!(Error::NoToken("x".into()).status(), 503);
        assert_eq!(Error::UpstreamUnreachable("x".into()).status(), 502);
        assert_eq!(
            Error::UpstreamTimeout(std::time::Duration::from_secs(1)).status(),
            504
        );
        assert_eq!(
            Error::NotFound {
                method: "GET".into(),
                path: "/x".into()
            }
            .status(),
            404
        );
    }
}
