//! What a token says about itself: its JWT claims, read without verifying the signature.

use crate::auth::Token;
use base64::Engine as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What `keyless check` shows about a token, read from its JWT claims without verifying the
/// signature (Azure OpenAI does that). The token itself is never part of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// `tid`: the tenant that issued the token.
    pub tenant_id: Option<String>,
    /// `oid`: the object id of the user or service principal (the one that needs the
    /// "Cognitive Services OpenAI User" role).
    pub object_id: Option<String>,
    /// `appid` (v1 tokens) or `azp` (v2 tokens): the client application.
    pub app_id: Option<String>,
    /// `upn`, `unique_name` or `preferred_username`, for user tokens.
    pub principal_name: Option<String>,
    /// `aud`: the resource the token is for (several joined by spaces).
    pub audience: Option<String>,
    /// `exp` when the token carries one, otherwise the expiry the identity endpoint reported.
    pub expires_at: SystemTime,
}

/// Reads what [`TokenInfo`] holds from `token`. An opaque (non-JWT) token gives `None` for
/// every claim.
pub fn describe_token(token: &Token) -> TokenInfo {
    let claims = jwt_claims(token.secret.expose()).unwrap_or_default();
    let text = |key: &str| claims.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let audience = match claims.get("aud") {
        Some(serde_json::Value::String(aud)) => Some(aud.clone()),
        Some(serde_json::Value::Array(auds)) => {
            let auds: Vec<&str> = auds.iter().filter_map(|a| a.as_str()).collect();
            (!auds.is_empty()).then(|| auds.join(" "))
        }
        _ => None,
    };
    let expires_at = claims
        .get("exp")
        .and_then(serde_json::Value::as_u64)
        .map(|exp| UNIX_EPOCH + Duration::from_secs(exp))
        .unwrap_or(token.expires_at);
    TokenInfo {
        tenant_id: text("tid"),
        object_id: text("oid"),
        app_id: text("appid").or_else(|| text("azp")),
        principal_name: text("upn")
            .or_else(|| text("unique_name"))
            .or_else(|| text("preferred_username")),
        audience,
        expires_at,
    }
}

/// The payload of a JWS compact token, or `None` when `token` is not one.
fn jwt_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None; // five parts: an encrypted JWE, opaque to us
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine.decode(payload).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        serde_json::Value::Object(claims) => Some(claims),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;

    #[test]
    fn describe_token_reads_jwt_claims() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = serde_json::json!({
            "aud": "https://cognitiveservices.azure.com",
            "tid": "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "oid": "00000000-0000-0000-0000-00000000000a",
            "appid": "04b07795-8ddb-461a-bbee-02f9e1bf7b46",
            "upn": "alice@contoso.com",
            "exp": 1_900_000_000u64,
        });
        let jwt = format!(
            "{}.{}.signature",
            b64.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            b64.encode(claims.to_string())
        );
        let token = Token {
            secret: Secret::new(jwt.as_str()),
            expires_at: UNIX_EPOCH,
        };
        let info = describe_token(&token);
        assert_eq!(
            info.tenant_id.as_deref(),
            Some("72f988bf-86f1-41af-91ab-2d7cd011db47")
        );
        assert_eq!(
            info.object_id.as_deref(),
            Some("00000000-0000-0000-0000-00000000000a")
        );
        assert_eq!(
            info.app_id.as_deref(),
            Some("04b07795-8ddb-461a-bbee-02f9e1bf7b46")
        );
        assert_eq!(info.principal_name.as_deref(), Some("alice@contoso.com"));
        assert_eq!(
            info.audience.as_deref(),
            Some("https://cognitiveservices.azure.com")
        );
        assert_eq!(
            info.expires_at,
            UNIX_EPOCH + Duration::from_secs(1_900_000_000)
        );
        assert!(!format!("{info:?}").contains(&jwt));

        // v2 tokens name the client `azp`; audiences may be a list; padding is tolerated.
        let claims = serde_json::json!({"azp": "app-2", "aud": ["a", "b"]});
        let padded = base64::engine::general_purpose::URL_SAFE.encode(claims.to_string());
        let token = Token {
            secret: Secret::new(format!("e30.{padded}.sig")),
            expires_at: UNIX_EPOCH,
        };
        let info = describe_token(&token);
        assert_eq!(info.app_id.as_deref(), Some("app-2"));
        assert_eq!(info.audience.as_deref(), Some("a b"));
        assert_eq!(info.expires_at, UNIX_EPOCH);
    }

    #[test]
    fn describe_token_copes_with_opaque_tokens() {
        for opaque in [
            "sts-token-1",
            "a.b",
            "a.%%%.c",
            "e30.WzFd.c",
            "a.b.c.d.e",
            "",
        ] {
            let expires_at = UNIX_EPOCH + Duration::from_secs(42);
            let info = describe_token(&Token {
                secret: Secret::new(opaque),
                expires_at,
            });
            assert_eq!(
                info,
                TokenInfo {
                    tenant_id: None,
                    object_id: None,
                    app_id: None,
                    principal_name: None,
                    audience: None,
                    expires_at,
                },
                "{opaque}"
            );
        }
    }
}
