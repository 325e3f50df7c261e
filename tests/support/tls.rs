//! A test CA and a TLS server certificate it signed, made with rcgen at test time.

use std::sync::Arc;

/// A CA (its PEM, for a client to trust) and a TLS acceptor serving a certificate it signed.
pub struct TestTls {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// Accepts TLS connections with the server certificate.
    pub acceptor: tokio_rustls::TlsAcceptor,
}

/// Makes a CA and a server certificate for `names` (DNS names or IP addresses) signed by
/// it, and an acceptor offering `alpn` (none when empty).
pub fn test_tls(names: &[&str], alpn: &[&[u8]]) -> TestTls {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let server_cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![server_cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
    )
    .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TestTls {
        ca_pem: ca.pem(),
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    }
}
