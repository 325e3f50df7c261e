//! Header rewriting between client and Azure (pure functions).
//!
//! RFC 9110 §7.6.1: a proxy removes `Connection`, every header `Connection` names, and the
//! hop-by-hop headers of earlier HTTP versions (`Keep-Alive`, `Proxy-Connection`, `TE`,
//! `Trailer`, `Transfer-Encoding`, `Upgrade`). hyper frames bodies itself, so dropping
//! `Transfer-Encoding` is safe; `Content-Length` is kept unless the body was rewritten.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Client credentials meant for OpenAI or Azure keys: never forwarded, whatever their value.
static CLIENT_CREDENTIALS: [HeaderName; 3] = [
    header::AUTHORIZATION,
    HeaderName::from_static("api-key"),
    header::PROXY_AUTHORIZATION,
];

static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those listed in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Fast path: most requests carry no Connection header (HTTP/2 never does).
    if let Some(connection) = headers.get(header::CONNECTION) {
        let named: Vec<HeaderName> = connection
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Prepares a client's request headers for Azure: hop-by-hop and client credentials out,
/// `Host` out (the client sets it from the upstream URI), the Entra bearer in.
///
/// `authorization` must already be marked sensitive, so that no `Debug` of the headers
/// and no HTTP/2 HPACK table ever shows or indexes it.
pub fn request_headers(headers: &mut HeaderMap, authorization: HeaderValue) {
    strip_hop_by_hop(headers);
    for name in &CLIENT_CREDENTIALS {
        headers.remove(name);
    }
    headers.remove(header::HOST);
    headers.insert(header::AUTHORIZATION, authorization);
}

/// Sets `Content-Length` for a body keyless rewrote.
pub fn set_content_length(headers: &mut HeaderMap, len: usize) {
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

/// Prepares Azure's response headers for the client: hop-by-hop out, the rest verbatim
/// (rate-limit headers, `apim-request-id`, `retry-after-ms`, ...).
pub fn response_headers(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
}

/// A `Bearer` authorization value marked sensitive.
pub fn bearer(token: &str) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let mut value = HeaderValue::try_from(format!("Bearer {token}"))?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn request_loses_credentials_and_hop_by_hop_and_gains_bearer() {
        let mut h = map(&[
            ("authorization", "Bearer sk-client"),
            ("api-key", "azure-key"),
            ("proxy-authorization", "Basic x"),
            ("host", "127.0.0.1:8787"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-stainless-retry-count", "0"),
            ("content-type", "application/json"),
            ("content-length", "12"),
        ]);
        request_headers(&mut h, bearer("tok").unwrap());
        assert_eq!(h.get("authorization").unwrap(), "Bearer tok");
        assert!(h.get("authorization").unwrap().is_sensitive());
        for gone in [
            "api-key",
            "proxy-authorization",
            "host",
            "connection",
            "x-private",
            "keep-alive",
            "te",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(h.get(gone).is_none(), "{gone} should be removed");
        }
        assert_eq!(h.get("x-stainless-retry-count").unwrap(), "0");
        assert_eq!(h.get("content-type").unwrap(), "application/json");
        assert_eq!(h.get("content-length").unwrap(), "12");
        assert_eq!(h.get_all("authorization").iter().count(), 1);
    }

    #[test]
    fn response_keeps_azure_headers() {
        let mut h = map(&[
            ("apim-request-id", "abc"),
            ("x-ratelimit-remaining-tokens", "100"),
            ("retry-after-ms", "10"),
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
        ]);
        response_headers(&mut h);
        assert_eq!(h.len(), 3);
        assert!(h.get("connection").is_none());
    }

    #[test]
    fn bearer_debug_hides_the_token() {
        let v = bearer("secret-token").unwrap();
        assert!(!format!("{v:?}").contains("secret-token"));
    }
}
