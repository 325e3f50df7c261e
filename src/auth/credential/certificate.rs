//! Client certificates: loading PEM or PKCS#12, and signing the JWT client assertion Entra
//! accepts in place of a secret.

use crate::auth::Secret;
use aws_lc_rs::{
    digest,
    rand::SystemRandom,
    signature::{KeyPair as _, RSA_PSS_SHA256, RsaKeyPair},
};
use azure_core::http::ClientMethodOptions;
use azure_identity::ClientAssertion;
use base64::Engine as _;
use std::fmt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};
use url::Url;

/// Lifetime of a certificate client assertion: Entra asks for 5-10 minutes at most.
pub(super) const ASSERTION_LIFETIME_SECS: u64 = 600;

/// A client assertion made before the credential was built.
#[derive(Clone)]
pub(super) struct FixedAssertion(pub(super) Secret);

impl fmt::Debug for FixedAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FixedAssertion(<redacted>)")
    }
}

#[async_trait::async_trait]
impl ClientAssertion for FixedAssertion {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        Ok(self.0.expose().to_owned())
    }
}

/// A certificate and its RSA private key.
pub(super) struct CertificateKey {
    /// DER of the certificate whose public key matches `key`.
    certificate: Vec<u8>,
    key: RsaKeyPair,
}

impl fmt::Debug for CertificateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateKey")
            .field("certificate_len", &self.certificate.len())
            .finish_non_exhaustive()
    }
}

/// Loads a PEM (certificate and unencrypted private key) or PKCS#12 file.
pub(super) fn load_certificate(
    bytes: &[u8],
    password: Option<&Secret>,
    path: &Path,
) -> Result<CertificateKey, String> {
    let is_pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    let (certificates, key) = if is_pem {
        load_pem(bytes, path)?
    } else {
        load_pkcs12(bytes, password, path)?
    };
    let public_key = key.public_key().as_ref();
    // The certificate for the key is the one embedding its public key (the file may hold
    // the chain too, in any order).
    let certificate = certificates
        .into_iter()
        .find(|der| der.windows(public_key.len()).any(|w| w == public_key))
        .ok_or_else(|| {
            format!(
                "no certificate in {} matches its private key",
                path.display()
            )
        })?;
    Ok(CertificateKey { certificate, key })
}

fn load_pem(bytes: &[u8], path: &Path) -> Result<(Vec<Vec<u8>>, RsaKeyPair), String> {
    use rustls_pki_types::pem::{PemObject as _, SectionKind};
    let mut certificates = Vec::new();
    let mut key = None;
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
        let (kind, der) = item.map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
        match kind {
            SectionKind::Certificate => certificates.push(der),
            SectionKind::PrivateKey if key.is_none() => {
                key = Some(RsaKeyPair::from_pkcs8(&der).map_err(|e| not_rsa(path, e))?);
            }
            SectionKind::RsaPrivateKey if key.is_none() => {
                key = Some(RsaKeyPair::from_der(&der).map_err(|e| not_rsa(path, e))?);
            }
            SectionKind::EcPrivateKey => {
                return Err(not_rsa(path, "it holds an EC key"));
            }
            _ => {}
        }
    }
    let key = key.ok_or_else(|| {
        if bytes.windows(21).any(|w| w == b"ENCRYPTED PRIVATE KEY") {
            format!(
                "{}: encrypted PEM private keys are not supported; use a PKCS#12 file with \
                 AZURE_CLIENT_CERTIFICATE_PASSWORD, or an unencrypted PEM key",
                path.display()
            )
        } else {
            format!("{} holds no private key", path.display())
        }
    })?;
    if certificates.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok((certificates, key))
}

fn load_pkcs12(
    bytes: &[u8],
    password: Option<&Secret>,
    path: &Path,
) -> Result<(Vec<Vec<u8>>, RsaKeyPair), String> {
    use p12_keystore::{KeyStore, KeyStoreEntry, Pkcs12ImportPolicy};
    let password = password.map_or("", Secret::expose);
    let store = KeyStore::from_pkcs12(bytes, password, Pkcs12ImportPolicy::Relaxed).map_err(|e| {
        format!(
            "cannot open {} as PKCS#12 (or PEM): {e}; is AZURE_CLIENT_CERTIFICATE_PASSWORD right?",
            path.display()
        )
    })?;
    let (_, chain) = store
        .private_key_chain()
        .ok_or_else(|| format!("{} holds no private key", path.display()))?;
    let key = RsaKeyPair::from_pkcs8(chain.key().as_der()).map_err(|e| not_rsa(path, e))?;
    let mut certificates: Vec<Vec<u8>> =
        chain.certs().iter().map(|c| c.as_der().to_vec()).collect();
    certificates.extend(store.entries().filter_map(|(_, entry)| match entry {
        KeyStoreEntry::Certificate(c) => Some(c.as_der().to_vec()),
        _ => None,
    }));
    Ok((certificates, key))
}

fn not_rsa(path: &Path, why: impl fmt::Display) -> String {
    format!(
        "the private key in {} is not a usable RSA key ({why}); Entra certificate credentials need RSA",
        path.display()
    )
}

/// `{authority}/{tenant}/oauth2/v2.0/token`, the audience of a client assertion (the same
/// URL azure_identity posts to).
pub(super) fn token_endpoint(authority: &Url, tenant_id: &str) -> Result<String, String> {
    let mut url = authority.clone();
    url.path_segments_mut()
        .map_err(|()| format!("the authority host {authority} cannot take a path"))?
        .clear()
        .extend([tenant_id, "oauth2", "v2.0", "token"]);
    Ok(url.to_string())
}

/// A JWT client assertion signed with the certificate's key, in the form Entra documents:
/// header `{"alg":"PS256","typ":"JWT","x5t#S256":<SHA-256 thumbprint>}`, claims
/// aud/iss/sub/jti/nbf/iat/exp.
pub(super) fn client_assertion(
    certificate: &CertificateKey,
    client_id: &str,
    audience: &str,
    now: SystemTime,
) -> Result<Secret, String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let thumbprint = digest::digest(&digest::SHA256, &certificate.certificate);
    let header = serde_json::json!({
        "alg": "PS256",
        "typ": "JWT",
        "x5t#S256": b64.encode(thumbprint.as_ref()),
    });
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the system clock is before 1970".to_owned())?
        .as_secs();
    let mut jti = [0u8; 16];
    aws_lc_rs::rand::fill(&mut jti).map_err(|_| "no randomness for the assertion id".to_owned())?;
    let claims = serde_json::json!({
        "aud": audience,
        "iss": client_id,
        "sub": client_id,
        "jti": uuid_v4(jti),
        "nbf": now,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME_SECS,
    });
    let signing_input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let mut signature = vec![0; certificate.key.public_modulus_len()];
    certificate
        .key
        .sign(
            &RSA_PSS_SHA256,
            &SystemRandom::new(),
            signing_input.as_bytes(),
            &mut signature,
        )
        .map_err(|_| "signing the client assertion failed".to_owned())?;
    Ok(Secret::new(format!(
        "{signing_input}.{}",
        b64.encode(signature)
    )))
}

/// Formats 16 random bytes as a version 4 UUID, Entra's suggested `jti`.
fn uuid_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_v4_has_the_version_bits() {
        let id = uuid_v4([0xff; 16]);
        assert_eq!(id, "ffffffff-ffff-4fff-bfff-ffffffffffff");
    }
}
