//! The tokens the simulator trusts, where they come from, and the check every request passes.
//!
//! Tokens are self-verifying, so the check takes no lock: `sim.<nonce>.<expiry>.<tag>`,
//! where the tag is a keyed SipHash of nonce and expiry under a per-simulator random key.
//! That is no cryptography, only enough that a made-up, expired, or other simulator's token
//! is refused, as Azure refuses a bad Entra token.

use super::{Body, State, error_response, json_response, not_found, unix_now};
use crate::auth::{Acquire, AuthError, Secret, Token};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::request::Parts;
use http::{HeaderMap, HeaderName, Method, Response, StatusCode, header};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// How long a minted token stays valid, like an Entra user or app token.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// Mints and verifies the simulator's tokens.
pub(super) struct Minter {
    key: u128,
}

impl Minter {
    pub(super) fn new() -> Self {
        Self {
            key: rand::random(),
        }
    }

    /// A fresh token and its expiry in unix seconds.
    pub(super) fn mint(&self) -> (String, u64) {
        let nonce: u128 = rand::random();
        let expires = unix_now() + TOKEN_LIFETIME.as_secs();
        let tag = self.tag(nonce, expires);
        (format!("sim.{nonce:032x}.{expires}.{tag:016x}"), expires)
    }

    /// Whether this simulator minted `token` and it has not expired at `now` (unix seconds).
    pub(super) fn verify(&self, token: &str, now: u64) -> bool {
        let Some(rest) = token.strip_prefix("sim.") else {
            return false;
        };
        let mut fields = rest.split('.');
        let (Some(nonce), Some(expires), Some(tag), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        let (Ok(nonce), Ok(expires), Ok(tag)) = (
            u128::from_str_radix(nonce, 16),
            expires.parse::<u64>(),
            u64::from_str_radix(tag, 16),
        ) else {
            return false;
        };
        expires > now && self.tag(nonce, expires) == tag
    }

    fn tag(&self, nonce: u128, expires: u64) -> u64 {
        // `DefaultHasher::new()` is the same SipHash in every call within a process; the
        // random key hashed first is what makes the tag unguessable to other simulators.
        let mut hasher = DefaultHasher::new();
        self.key.hash(&mut hasher);
        nonce.hash(&mut hasher);
        expires.hash(&mut hasher);
        hasher.finish()
    }
}

/// The in-process identity of [`super::Simulator::identity`]: an [`Acquire`] that never
/// leaves the process and whose every token the simulator accepts.
pub(super) struct SimulatedIdentity {
    state: Arc<State>,
}

impl SimulatedIdentity {
    pub(super) fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

impl Acquire for SimulatedIdentity {
    fn acquire<'a>(&'a self, _scope: &'a str) -> BoxFuture<'a, Result<Token, AuthError>> {
        let (token, expires) = self.state.minter.mint();
        Box::pin(std::future::ready(Ok(Token {
            secret: Secret::new(token),
            expires_at: UNIX_EPOCH + Duration::from_secs(expires),
        })))
    }

    fn name(&self) -> String {
        "simulated identity".to_owned()
    }
}

const API_KEY: HeaderName = HeaderName::from_static("api-key");

/// Azure's answer to a key it does not accept. keyless must never forward a client's key,
/// so every `api-key` gets it, whatever its value.
const BAD_KEY: &str = r#"{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."}}"#;

/// Azure's answer to a missing or bad Entra token.
const BAD_TOKEN: &str = r#"{"error":{"code":"401","message":"Unauthorized. Access token is missing, invalid, audience is incorrect (https://cognitiveservices.azure.com), or have expired."}}"#;

/// The 401 for a missing, unknown or expired bearer token.
pub(super) fn unauthorized() -> Response<Body> {
    json_response(
        StatusCode::UNAUTHORIZED,
        Bytes::from_static(BAD_TOKEN.as_bytes()),
    )
}

/// The 401 to answer unless the request carries `Authorization: Bearer <a token this
/// simulator minted>` and no `api-key`.
pub(super) fn refusal(minter: &Minter, headers: &HeaderMap) -> Option<Response<Body>> {
    if headers.contains_key(API_KEY) {
        return Some(json_response(
            StatusCode::UNAUTHORIZED,
            Bytes::from_static(BAD_KEY.as_bytes()),
        ));
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        });
    match token {
        Some(token) if minter.verify(token.trim(), unix_now()) => None,
        _ => Some(unauthorized()),
    }
}

const IDENTITY_HEADER: HeaderName = HeaderName::from_static("x-identity-header");

/// `GET /msi/token`: the App Service managed identity protocol (api-version 2019-08-01), as
/// azure_identity's `ManagedIdentityCredential` speaks it when `IDENTITY_ENDPOINT` and
/// `IDENTITY_HEADER` are set.
pub(super) fn msi_token(state: &State, parts: &Parts) -> Response<Body> {
    let Some(secret) = state.identity_header.as_deref() else {
        return not_found();
    };
    if parts.method != Method::GET {
        return not_found();
    }
    // azure_identity shows a non-400 error body to the user, so say what is wrong.
    if parts
        .headers
        .get(IDENTITY_HEADER)
        .map(|value| value.as_bytes())
        != Some(secret.as_bytes())
    {
        return error_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "The x-identity-header request header is missing or does not match the \
             simulator's IDENTITY_HEADER.",
        );
    }
    let mut api_version = None;
    let mut resource = None;
    for (key, value) in url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
        match &*key {
            "api-version" => api_version = Some(value),
            "resource" => resource = Some(value),
            _ => {}
        }
    }
    let (Some(_), Some(resource)) = (api_version, resource.filter(|r| !r.is_empty())) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The api-version and resource query parameters are required.",
        );
    };
    let (token, expires) = state.minter.mint();
    let body = serde_json::json!({
        "access_token": token,
        "expires_on": expires.to_string(),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": "00000000-0000-0000-0000-000000000000",
    });
    json_response(StatusCode::OK, Bytes::from(body.to_string()))
}
