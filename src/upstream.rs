//! The client towards Azure: pooled connections, rustls, HTTP/2 when the server offers it
//! through ALPN, HTTP/1.1 otherwise (and for plain-http loopback endpoints).

use crate::body::Body;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The pooled HTTP client keyless sends every upstream request through.
pub type Client = HyperClient<HttpsConnector<HttpConnector>, Body>;

/// Builds the upstream client, trusting `ca_file`'s certificates besides the usual roots.
pub fn client(connect_timeout: Duration, ca_file: Option<&Path>) -> Result<Client, String> {
    Ok(client_with(connect_timeout, tls_config(ca_file)?))
}

/// Builds an upstream client over `tls` (from [`tls_config`]): one a worker, each with
/// its own pool, from one TLS configuration read once.
pub fn client_with(connect_timeout: Duration, tls: rustls::ClientConfig) -> Client {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));

    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);

    HyperClient::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        // Azure closes idle connections after ~4 minutes; drop ours before that. No cap
        // on idle connections: after a wave of streams, the next wave reuses them rather
        // than paying a TLS handshake each; the idle timeout bounds what is kept.
        .pool_idle_timeout(Duration::from_secs(90))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .http2_keep_alive_while_idle(false)
        .build(https)
}

/// rustls with the platform's roots when it has any (corporate proxies add theirs there),
/// else the Mozilla roots compiled in (distroless images have no CA bundle).
pub fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read --ca-file {}: {e}", path.display()))?;
        let mut added = 0;
        for cert in certs {
            let cert = cert.map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!(
                "--ca-file {} holds no PEM certificate",
                path.display()
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The type of a response from upstream.
pub type UpstreamResponse = http::Response<Incoming>;
