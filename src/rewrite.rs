//! Header rewriting between client and Azure (pure functions).
//!
//! RFC 9110 §7.6.1: a proxy removes `Connection`, every header `Connection` names, and the
//! hop-by-hop headers of earlier HTTP versions (`Keep-Alive`, `Proxy-Connection`, `TE`,
//! `Trailer`, `Transfer-Encoding`, `Upgrade`). hyper frames bodies itself, so dropping
//! `Transfer-Encoding` is safe; `Content-Length` is kept unless the body was rewritten.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The headers a proxy does not pass on. The first [`HOP_BY_HOP`] are hop-by-hop; the
/// rest never go to Azure: every header that carries a client's key (whatever its value),
/// and `Host` (the client sets it from the upstream URI).
///
/// The keys: `Authorization` (OpenAI), `api-key` (Azure OpenAI), `Proxy-Authorization`,
/// `Ocp-Apim-Subscription-Key` (Azure AI services and API Management: if keys are still
/// enabled on the resource, Azure would authenticate the client's key instead of
/// keyless's identity), `x-api-key` (Anthropic and many gateways), `api_key` (the
/// underscore spelling some clients send, which hyper accepts) and `x-goog-api-key`
/// (Gemini's OpenAI-compatible clients). `OpenAI-Organization` and `OpenAI-Project` are
/// not secrets and pass.
static NOT_FORWARDED: [HeaderName; 15] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::AUTHORIZATION,
    HeaderName::from_static("api-key"),
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("ocp-apim-subscription-key"),
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api_key"),
    HeaderName::from_static("x-goog-api-key"),
    header::HOST,
];

// `remove_listed` marks what it found in one bit a header.
const _: () = assert!(NOT_FORWARDED.len() <= u16::BITS as usize);

const HOP_BY_HOP: usize = 7;

/// Where `name` is in [`NOT_FORWARDED`].
fn not_forwarded(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "te" => 3,
        "trailer" => 4,
        "transfer-encoding" => 5,
        "upgrade" => 6,
        "authorization" => 7,
        "api-key" => 8,
        "proxy-authorization" => 9,
        "ocp-apim-subscription-key" => 10,
        "x-api-key" => 11,
        "api_key" => 12,
        "x-goog-api-key" => 13,
        "host" => 14,
        _ => return None,
    })
}

/// Removes the first `count` headers of [`NOT_FORWARDED`], and those `Connection` names.
///
/// One pass over the names present finds them (most requests carry none but `Host`),
/// and only those found are removed: a `remove` hashes its name, and trying all eleven
/// the list then held on every request and seven on every response cost about 1,500 instructions a request
/// (callgrind; 2.6% of all keyless's user-space work).
fn remove_listed(headers: &mut HeaderMap, count: usize) {
    let mut found = 0u16;
    for name in headers.keys() {
        if let Some(i) = not_forwarded(name).filter(|&i| i < count) {
            found |= 1 << i;
        }
    }
    if found & 1 != 0 {
        // `Connection` may name further hop-by-hop headers.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("").split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in NOT_FORWARDED[..count].iter().enumerate() {
        if found & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Removes hop-by-hop headers, including those listed in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    remove_listed(headers, HOP_BY_HOP);
}

/// Prepares a client's request headers for Azure: hop-by-hop and client credentials out,
/// `Host` out (the client sets it from the upstream URI), the Entra bearer in.
///
/// `authorization` must already be marked sensitive, so that no `Debug` of the headers
/// and no HTTP/2 HPACK table ever shows or indexes it.
pub fn request_headers(headers: &mut HeaderMap, authorization: HeaderValue) {
    remove_listed(headers, NOT_FORWARDED.len());
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
            ("ocp-apim-subscription-key", "azure-key"),
            ("x-api-key", "anthropic-key"),
            ("api_key", "underscored-key"),
            ("x-goog-api-key", "gemini-key"),
            ("openai-organization", "org-1"),
            ("openai-project", "proj-1"),
            ("host", "127.0.0.1:8787"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("trailer", "x-checksum"),
            ("connection", "x-also-private"),
            ("x-also-private", "2"),
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
            "ocp-apim-subscription-key",
            "x-api-key",
            "api_key",
            "x-goog-api-key",
            "host",
            "connection",
            "x-private",
            "keep-alive",
            "te",
            "transfer-encoding",
            "upgrade",
            "proxy-connection",
            "trailer",
            "x-also-private",
        ] {
            assert!(h.get(gone).is_none(), "{gone} should be removed");
        }
        assert_eq!(h.get("x-stainless-retry-count").unwrap(), "0");
        assert_eq!(h.get("content-type").unwrap(), "application/json");
        assert_eq!(h.get("content-length").unwrap(), "12");
        assert_eq!(h.get("openai-organization").unwrap(), "org-1");
        assert_eq!(h.get("openai-project").unwrap(), "proj-1");
        assert_eq!(h.get_all("authorization").iter().count(), 1);
        assert_eq!(h.len(), 6, "only what must go is gone: {h:?}");
    }

    #[test]
    fn the_list_and_its_lookup_agree() {
        for (i, name) in NOT_FORWARDED.iter().enumerate() {
            assert_eq!(not_forwarded(name), Some(i), "{name}");
        }
        for kept in [
            "content-type",
            "openai-organization",
            "openai-project",
            "x-api-key-id",
        ] {
            assert_eq!(
                not_forwarded(&HeaderName::from_static(kept)),
                None,
                "{kept}"
            );
        }
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
        assert!(h.get("transfer-encoding").is_none());
        assert_eq!(h.get("apim-request-id").unwrap(), "abc");
    }

    #[test]
    fn bearer_debug_hides_the_token() {
        let v = bearer("secret-token").unwrap();
        assert!(!format!("{v:?}").contains("secret-token"));
    }
}
