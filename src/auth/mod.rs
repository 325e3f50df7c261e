//! Entra tokens: where they come from ([`Acquire`]) and how requests read them ([`TokenCache`]).
//!
//! Acquisition is rare and slow (an HTTP call to an identity endpoint, or running `az`);
//! reading is per request and must be a lock-free load. The two meet in [`TokenCache`],
//! which acquires in the background and hands requests a pre-built `Authorization` value.

mod cache;
pub mod credential;

pub use cache::{TokenCache, TokenState};

use futures_util::future::BoxFuture;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// A secret string (an access token, a client secret, an app key) whose `Debug` and
/// `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// The secret itself: call this only where the value must leave the process
    /// (an `Authorization` header), never to log or format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// An access token and the instant it stops being valid.
#[derive(Clone, Debug)]
pub struct Token {
    /// The bearer token.
    pub secret: Secret,
    /// When Entra says the token expires.
    pub expires_at: SystemTime,
}

/// Why a token could not be acquired, in the credential's own words.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{credential}: {message}")]
pub struct AuthError {
    /// Which credential failed (e.g. `ManagedIdentityCredential`).
    pub credential: String,
    /// The credential's explanation; must never contain a secret.
    pub message: String,
}

/// Something that can fetch a brand-new token for a scope.
///
/// Implementations must bypass any cache of their own: [`TokenCache`] decides when a new
/// token is needed (ahead of expiry, after an upstream 401) and calls this only then, one
/// call at a time.
pub trait Acquire: Send + Sync + 'static {
    /// Fetches a new token for `scope` (e.g. `https://cognitiveservices.azure.com/.default`).
    fn acquire<'a>(&'a self, scope: &'a str) -> BoxFuture<'a, Result<Token, AuthError>>;

    /// A short name for logs and `keyless check`: which credential this is.
    fn name(&self) -> String;
}
