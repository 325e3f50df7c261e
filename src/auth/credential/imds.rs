//! The quick IMDS probe that runs before managed identity asks IMDS for a token.

use std::time::Duration;
use url::Url;

/// IMDS's token endpoint. Asked without the `Metadata: true` header, Azure IMDS answers 400
/// at once, with a `Server: IMDS/...` header (what other Azure SDKs probe too).
pub(super) const IMDS_PROBE_URL: &str =
    "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01";
/// `auto` waits 1 s for IMDS, and wants an answer that looks like Azure's: other clouds
/// and some container runtimes answer on 169.254.169.254 too, and azure_identity would
/// retry their 404s for over a minute.
pub(super) const AUTO_IMDS_PROBE: ImdsProbe = ImdsProbe {
    timeout: Duration::from_secs(1),
    require_azure: true,
};
/// An explicit `managed-identity` is a little more patient and takes any answer: the user
/// said there is a managed identity, so azure_identity's own error is the better one.
pub(super) const EXPLICIT_IMDS_PROBE: ImdsProbe = ImdsProbe {
    timeout: Duration::from_secs(5),
    require_azure: false,
};

/// How to check for IMDS before asking it for a token.
#[derive(Clone, Copy, Debug)]
pub(super) struct ImdsProbe {
    timeout: Duration,
    /// Only an answer that looks like Azure IMDS's counts, not any HTTP answer.
    require_azure: bool,
}

impl ImdsProbe {
    /// Checks that IMDS answers: a refused or silent connection means there is none. No
    /// proxy: 169.254.169.254 is link-local.
    pub(super) async fn run(&self, url: &Url) -> Result<(), String> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .build()
            .map_err(|e| format!("cannot build the IMDS probe client: {e}"))?;
        let host = url.host_str().unwrap_or("IMDS");
        match client.get(url.clone()).send().await {
            Ok(response) => {
                let status = response.status();
                let server = response
                    .headers()
                    .get(reqwest::header::SERVER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if !self.require_azure || status.as_u16() == 400 || server.starts_with("IMDS/") {
                    Ok(())
                } else {
                    Err(format!(
                        "no managed identity endpoint: {host} answered HTTP {} but not like \
                         Azure IMDS (another cloud's metadata service?) and IDENTITY_ENDPOINT \
                         is not set",
                        status.as_u16()
                    ))
                }
            }
            Err(e) => {
                let cause = if e.is_timeout() {
                    format!("no answer within {} ms", self.timeout.as_millis())
                } else {
                    crate::error::chain_text(&e)
                };
                Err(format!(
                    "no managed identity endpoint: IMDS ({host}) is unreachable ({cause}) and \
                     IDENTITY_ENDPOINT is not set; not an Azure VM, AKS node or App Service?"
                ))
            }
        }
    }
}
