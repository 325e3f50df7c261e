//! The credentials driven against local fakes: a TLS token endpoint, scripted CLIs, a closed
//! IMDS port.

use super::adapters::Recipe;
use super::certificate::ASSERTION_LIFETIME_SECS;
use super::certificate::FixedAssertion;
use super::imds::AUTO_IMDS_PROBE;
use super::settings::Inputs;
use super::*;
use crate::auth::Secret;
use aws_lc_rs::{
    digest,
    signature::{KeyPair as _, RsaKeyPair},
};
use azure_core::http::Transport;
use azure_identity::Executor;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use url::Url;

const SCOPE: &str = "https://cognitiveservices.azure.com/.default";
const TENANT: &str = "tenant-1";
const CLIENT: &str = "client-1";
const CLIENT_SECRET_VALUE: &str = "very-secret-client-secret";

// The test kit's one fake STS (and the test CA it needs), shared with tests/support.
#[path = "../../../tests/support/sts.rs"]
#[allow(dead_code)] // what only the integration tests use
mod sts;
#[path = "../../../tests/support/tls.rs"]
mod tls;
use sts::{FakeSts, StsAnswer};

/// Starts the fake token endpoint. `reject`: answer every request like Entra does for a
/// wrong client secret. Otherwise each answer carries a new token, `sts-token-<n>`.
async fn fake_sts(reject: bool) -> FakeSts {
    let answer = if reject {
        StsAnswer::Reject
    } else {
        StsAnswer::Tokens(Duration::from_secs(3600))
    };
    FakeSts::start(answer).await
}

/// An HTTP client for the credentials that trusts `sts`'s test CA only.
fn transport(sts: &FakeSts) -> Transport {
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(sts.ca_pem.as_bytes()).unwrap()])
        .no_proxy()
        .build()
        .unwrap();
    Transport::new(Arc::new(client))
}

/// Runs the `/bin/sh -c "cd /bin && az ..."` it is given with `PATH` set to one directory
/// (per child: the process environment is untouched), recording each command line.
#[derive(Debug)]
struct ScriptExecutor {
    path: PathBuf,
    commands: Mutex<Vec<String>>,
    calls: AtomicUsize,
}

impl ScriptExecutor {
    fn new(path: &Path) -> Arc<Self> {
        Arc::new(Self {
            path: path.to_owned(),
            commands: Mutex::default(),
            calls: AtomicUsize::new(0),
        })
    }

    fn commands(&self) -> Vec<String> {
        self.commands.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Executor for ScriptExecutor {
    async fn run(&self, program: &OsStr, args: &[&OsStr]) -> std::io::Result<std::process::Output> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let line: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        self.commands.lock().unwrap().push(line.join(" "));
        tokio::process::Command::new(program)
            .args(args)
            .env("PATH", &self.path)
            .env("FAKE_CALL", call.to_string())
            .output()
            .await
    }
}

/// Writes an executable shell script `name` into `dir`.
fn script(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

const FAKE_AZ: &str = r#"printf '{"accessToken":"cli-token-%s","expires_on":4102444800,"tokenType":"Bearer"}\n' "$FAKE_CALL""#;
const FAKE_AZD: &str =
    r#"printf '{"token":"azd-token-%s","expiresOn":"2100-01-01T00:00:00Z"}\n' "$FAKE_CALL""#;

/// A URL nothing listens on: the IMDS probe is refused at once.
async fn closed_port_url() -> Url {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    Url::parse(&format!(
        "http://127.0.0.1:{port}/metadata/identity/oauth2/token"
    ))
    .unwrap()
}

/// Settings for `kind` with exactly `vars` as the environment, the fake token endpoint as
/// authority and transport, `executor` for the CLIs, and no IMDS.
async fn settings(
    kind: CredentialKind,
    sts: Option<&FakeSts>,
    executor: Arc<dyn Executor>,
    vars: &[(&str, &str)],
) -> CredentialSettings {
    let mut vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    if let Some(sts) = sts {
        vars.push(("AZURE_AUTHORITY_HOST".into(), sts.authority.to_string()));
    }
    CredentialSettings {
        kind,
        env: Env::from_vars(vars),
        hooks: Hooks {
            transport: sts.map(transport),
            executor: Some(executor),
            imds_probe_url: Some(closed_port_url().await),
        },
        ..CredentialSettings::default()
    }
}

fn no_cli() -> (tempfile::TempDir, Arc<ScriptExecutor>) {
    let dir = tempfile::tempdir().unwrap();
    let executor = ScriptExecutor::new(dir.path());
    (dir, executor)
}

fn sp_vars() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", CLIENT),
        ("AZURE_CLIENT_SECRET", CLIENT_SECRET_VALUE),
    ]
}

#[tokio::test]
async fn client_secret_gets_a_brand_new_token_each_time() {
    let sts = fake_sts(false).await;
    let (_dir, cli) = no_cli();
    let settings = settings(CredentialKind::ClientSecret, Some(&sts), cli, &sp_vars()).await;
    let credential = from_settings(&settings).unwrap();
    assert_eq!(credential.name(), "ClientSecretCredential");

    let first = credential.acquire(SCOPE).await.unwrap();
    let second = credential.acquire(SCOPE).await.unwrap();
    // azure_identity would have served the first token again from its cache.
    assert_eq!(first.secret.expose(), "sts-token-1");
    assert_eq!(second.secret.expose(), "sts-token-2");
    let lifetime = first.expires_at.duration_since(SystemTime::now()).unwrap();
    assert!(lifetime > Duration::from_secs(3500) && lifetime <= Duration::from_secs(3600));

    let seen = sts.seen();
    assert_eq!(seen.len(), 2);
    let (path, form) = &seen[0];
    assert_eq!(path, "/tenant-1/oauth2/v2.0/token");
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["client_id"], CLIENT);
    assert_eq!(form["client_secret"], CLIENT_SECRET_VALUE);
    assert_eq!(form["scope"], SCOPE);
}

#[tokio::test]
async fn settings_override_the_environment() {
    let sts = fake_sts(false).await;
    let (_dir, cli) = no_cli();
    let mut settings = settings(CredentialKind::ClientSecret, Some(&sts), cli, &sp_vars()).await;
    settings.tenant_id = Some("tenant-2".into());
    settings.client_id = Some("client-2".into());
    settings.authority_host = Some(sts.authority.clone());
    settings.env = Env::from_vars([
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", CLIENT),
        ("AZURE_CLIENT_SECRET", CLIENT_SECRET_VALUE),
        // Would fail the https check if it were used.
        ("AZURE_AUTHORITY_HOST", "http://login.invalid"),
    ]);
    from_settings(&settings)
        .unwrap()
        .acquire(SCOPE)
        .await
        .unwrap();
    let (path, form) = &sts.seen()[0];
    assert_eq!(path, "/tenant-2/oauth2/v2.0/token");
    assert_eq!(form["client_id"], "client-2");
}

#[tokio::test]
async fn a_rejected_secret_reads_well_and_never_shows_the_secret() {
    let sts = fake_sts(true).await;
    let (_dir, cli) = no_cli();
    let settings = settings(CredentialKind::ClientSecret, Some(&sts), cli, &sp_vars()).await;
    let err = from_settings(&settings)
        .unwrap()
        .acquire(SCOPE)
        .await
        .unwrap_err();
    assert_eq!(err.credential, "ClientSecretCredential");
    assert!(err.message.contains("HTTP 401"), "{}", err.message);
    assert!(err.message.contains("AADSTS7000215"), "{}", err.message);
    assert!(
        !err.message.contains("authentication failed."),
        "{}",
        err.message
    );
    assert!(!err.message.contains(CLIENT_SECRET_VALUE));
    // A 401 is not retried.
    assert_eq!(sts.seen().len(), 1);
}

#[tokio::test]
async fn an_unreachable_token_endpoint_fails_in_seconds() {
    let sts = fake_sts(false).await;
    let (_dir, cli) = no_cli();
    let mut settings = settings(CredentialKind::ClientSecret, Some(&sts), cli, &sp_vars()).await;
    // Same TLS client, but a port where nothing listens.
    let dead = closed_port_url().await;
    settings.authority_host =
        Some(Url::parse(&format!("https://127.0.0.1:{}", dead.port().unwrap())).unwrap());
    let started = std::time::Instant::now();
    let err = from_settings(&settings)
        .unwrap()
        .acquire(SCOPE)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.message.to_lowercase().contains("connect"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn workload_identity_rereads_the_federated_token_file() {
    let sts = fake_sts(false).await;
    let (dir, cli) = no_cli();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, "federated-token-one").unwrap();
    let vars = [
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", CLIENT),
        ("AZURE_FEDERATED_TOKEN_FILE", token_file.to_str().unwrap()),
    ];
    let settings = settings(CredentialKind::WorkloadIdentity, Some(&sts), cli, &vars).await;
    let credential = from_settings(&settings).unwrap();
    assert_eq!(credential.name(), "WorkloadIdentityCredential");

    let first = credential.acquire(SCOPE).await.unwrap();
    std::fs::write(&token_file, "federated-token-two").unwrap(); // the kubelet rotates it
    let second = credential.acquire(SCOPE).await.unwrap();
    assert_ne!(first.secret, second.secret);

    let seen = sts.seen();
    assert_eq!(seen[0].0, "/tenant-1/oauth2/v2.0/token");
    assert_eq!(seen[0].1["client_assertion"], "federated-token-one");
    assert_eq!(seen[1].1["client_assertion"], "federated-token-two");
    assert_eq!(
        seen[0].1["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    assert_eq!(seen[0].1["client_id"], CLIENT);
}

/// An RSA key and a self-signed certificate for it.
fn rsa_certificate() -> (rcgen::KeyPair, rcgen::Certificate) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["keyless-test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (key, cert)
}

/// Checks a client assertion: header, claims, and the PS256 signature.
fn check_assertion(
    assertion: &str,
    key: &rcgen::KeyPair,
    cert: &rcgen::Certificate,
    sts: &FakeSts,
) {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = assertion.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: serde_json::Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    let thumbprint = digest::digest(&digest::SHA256, cert.der());
    assert_eq!(header["alg"], "PS256");
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["x5t#S256"], b64.encode(thumbprint.as_ref()));

    let claims: serde_json::Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(
        claims["aud"],
        format!("{}tenant-1/oauth2/v2.0/token", sts.authority)
    );
    assert_eq!(claims["iss"], CLIENT);
    assert_eq!(claims["sub"], CLIENT);
    assert_eq!(claims["jti"].as_str().unwrap().len(), 36);
    let (nbf, exp) = (
        claims["nbf"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - nbf, ASSERTION_LIFETIME_SECS);

    let public_key = RsaKeyPair::from_pkcs8(&key.serialize_der()).unwrap();
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256,
        public_key.public_key().as_ref(),
    )
    .verify(
        format!("{}.{}", parts[0], parts[1]).as_bytes(),
        &b64.decode(parts[2]).unwrap(),
    )
    .unwrap();
}

#[tokio::test]
async fn client_certificate_pem_sends_a_signed_assertion() {
    let sts = fake_sts(false).await;
    let (dir, cli) = no_cli();
    let (key, cert) = rsa_certificate();
    let path = dir.path().join("client.pem");
    // Key first, then the certificate: the order in the file does not matter.
    std::fs::write(&path, format!("{}{}", key.serialize_pem(), cert.pem())).unwrap();
    let vars = [
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", CLIENT),
        ("AZURE_CLIENT_CERTIFICATE_PATH", path.to_str().unwrap()),
    ];
    let settings = settings(CredentialKind::ClientCertificate, Some(&sts), cli, &vars).await;
    let credential = from_settings(&settings).unwrap();
    assert_eq!(credential.name(), "ClientCertificateCredential");
    let first = credential.acquire(SCOPE).await.unwrap();
    let second = credential.acquire(SCOPE).await.unwrap();
    assert_ne!(first.secret, second.secret);

    let seen = sts.seen();
    let form = &seen[0].1;
    assert_eq!(form["client_id"], CLIENT);
    assert_eq!(form["grant_type"], "client_credentials");
    check_assertion(&form["client_assertion"], &key, &cert, &sts);
    // A new assertion (jti) per acquisition.
    assert_ne!(seen[0].1["client_assertion"], seen[1].1["client_assertion"]);
}

#[tokio::test]
async fn client_certificate_pkcs12_with_password() {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
    let sts = fake_sts(false).await;
    let (dir, cli) = no_cli();
    let (key, cert) = rsa_certificate();
    let mut store = KeyStore::new();
    let chain = PrivateKeyChain::new(
        b"client-key".as_slice(),
        PrivateKey::from_der(&key.serialize_der()).unwrap(),
        [Certificate::from_der(cert.der()).unwrap()],
    );
    store.add_entry("client", KeyStoreEntry::PrivateKeyChain(chain));
    let path = dir.path().join("client.pfx");
    std::fs::write(&path, store.writer("pfx-password").write().unwrap()).unwrap();
    let vars = [
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", CLIENT),
        ("AZURE_CLIENT_CERTIFICATE_PATH", path.to_str().unwrap()),
        ("AZURE_CLIENT_CERTIFICATE_PASSWORD", "pfx-password"),
    ];
    let settings = settings(CredentialKind::ClientCertificate, Some(&sts), cli, &vars).await;
    from_settings(&settings)
        .unwrap()
        .acquire(SCOPE)
        .await
        .unwrap();
    check_assertion(&sts.seen()[0].1["client_assertion"], &key, &cert, &sts);

    // A wrong password is a start-up error that names the variable, not the password.
    let mut wrong = settings.clone();
    wrong.env = Env::from_vars([
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", CLIENT),
        ("AZURE_CLIENT_CERTIFICATE_PATH", path.to_str().unwrap()),
        ("AZURE_CLIENT_CERTIFICATE_PASSWORD", "not-the-password"),
    ]);
    let err = from_settings(&wrong).err().unwrap();
    assert_eq!(err.credential, "ClientCertificateCredential");
    assert!(
        err.message.contains("AZURE_CLIENT_CERTIFICATE_PASSWORD"),
        "{}",
        err.message
    );
    assert!(!err.message.contains("not-the-password"));
}

#[tokio::test]
async fn client_certificate_file_problems_are_start_up_errors() {
    let (dir, cli) = no_cli();
    let path = dir.path().join("client.pem");
    let vars = |path: &Path| {
        vec![
            ("AZURE_TENANT_ID".to_owned(), TENANT.to_owned()),
            ("AZURE_CLIENT_ID".to_owned(), CLIENT.to_owned()),
            (
                "AZURE_CLIENT_CERTIFICATE_PATH".to_owned(),
                path.display().to_string(),
            ),
        ]
    };
    let mut settings = settings(CredentialKind::ClientCertificate, None, cli, &[]).await;
    settings.env = Env::from_vars(vars(&path));
    let err = from_settings(&settings).err().unwrap();
    assert!(err.message.contains("cannot read"), "{}", err.message);

    // A certificate without its key.
    let (_, cert) = rsa_certificate();
    std::fs::write(&path, cert.pem()).unwrap();
    let err = from_settings(&settings).err().unwrap();
    assert!(err.message.contains("no private key"), "{}", err.message);

    // A key with someone else's certificate.
    let (key, _) = rsa_certificate();
    std::fs::write(&path, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
    let err = from_settings(&settings).err().unwrap();
    assert!(
        err.message.contains("matches its private key"),
        "{}",
        err.message
    );

    // EC keys cannot sign Entra assertions.
    let ec_key = rcgen::KeyPair::generate().unwrap();
    let ec_cert = rcgen::CertificateParams::new(vec!["x".to_owned()])
        .unwrap()
        .self_signed(&ec_key)
        .unwrap();
    std::fs::write(
        &path,
        format!("{}{}", ec_cert.pem(), ec_key.serialize_pem()),
    )
    .unwrap();
    let err = from_settings(&settings).err().unwrap();
    assert!(err.message.contains("RSA"), "{}", err.message);
}

#[tokio::test]
async fn azure_cli_passes_the_tenant_and_gets_a_new_token_each_time() {
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "az", FAKE_AZ);
    let cli = ScriptExecutor::new(dir.path());
    let mut settings = settings(CredentialKind::AzureCli, None, cli.clone(), &[]).await;
    settings.tenant_id = Some("tenant-9".into());
    let credential = from_settings(&settings).unwrap();
    assert_eq!(credential.name(), "AzureCliCredential");

    let first = credential.acquire(SCOPE).await.unwrap();
    let second = credential.acquire(SCOPE).await.unwrap();
    assert_eq!(first.secret.expose(), "cli-token-1");
    assert_eq!(second.secret.expose(), "cli-token-2");
    assert_eq!(
        first.expires_at,
        UNIX_EPOCH + Duration::from_secs(4_102_444_800)
    );
    let commands = cli.commands();
    assert_eq!(
        commands[0],
        format!(
            "-c cd /bin && az account get-access-token -o json --scope {SCOPE} --tenant tenant-9"
        )
    );
}

#[tokio::test]
async fn azure_cli_errors_say_what_to_do() {
    // Not installed.
    let (_dir, cli) = no_cli();
    let settings = settings(CredentialKind::AzureCli, None, cli, &[]).await;
    let err = from_settings(&settings)
        .unwrap()
        .acquire(SCOPE)
        .await
        .unwrap_err();
    assert_eq!(err.credential, "AzureCliCredential");
    assert!(
        err.message.starts_with("Azure CLI not installed"),
        "{}",
        err.message
    );
    assert!(err.message.contains("`az login`"), "{}", err.message);

    // Installed, not logged in.
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "az",
        r#"echo "ERROR: Please run 'az login' to setup account." >&2; exit 1"#,
    );
    let settings = settings_with_executor(settings, ScriptExecutor::new(dir.path()));
    let err = from_settings(&settings)
        .unwrap()
        .acquire(SCOPE)
        .await
        .unwrap_err();
    assert!(
        err.message
            .starts_with("Azure CLI not logged in: run `az login`"),
        "{}",
        err.message
    );
}

fn settings_with_executor(
    mut settings: CredentialSettings,
    executor: Arc<dyn Executor>,
) -> CredentialSettings {
    settings.hooks.executor = Some(executor);
    settings
}

#[tokio::test]
async fn azd_passes_the_tenant() {
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "azd", FAKE_AZD);
    let cli = ScriptExecutor::new(dir.path());
    let mut settings = settings(CredentialKind::Azd, None, cli.clone(), &[]).await;
    settings.tenant_id = Some("tenant-9".into());
    let credential = from_settings(&settings).unwrap();
    assert_eq!(credential.name(), "AzureDeveloperCliCredential");
    assert_eq!(
        credential.acquire(SCOPE).await.unwrap().secret.expose(),
        "azd-token-1"
    );
    assert_eq!(
        credential.acquire(SCOPE).await.unwrap().secret.expose(),
        "azd-token-2"
    );
    assert!(
        cli.commands()[0].ends_with(&format!(
            "azd auth token -o json --no-prompt --scope {SCOPE} --tenant-id tenant-9"
        )),
        "{:?}",
        cli.commands()
    );

    let (_empty, missing) = no_cli();
    let settings = settings_with_executor(settings, missing);
    let err = from_settings(&settings)
        .unwrap()
        .acquire(SCOPE)
        .await
        .unwrap_err();
    assert!(
        err.message.starts_with("Azure Developer CLI not installed"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("azd auth login --tenant-id tenant-9"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn auto_with_nothing_available_says_why_for_each() {
    let (_dir, cli) = no_cli();
    let settings = settings(CredentialKind::Auto, None, cli, &[]).await;
    let credential = from_settings(&settings).unwrap();
    assert_eq!(credential.name(), "auto");
    let started = std::time::Instant::now();
    let err = credential.acquire(SCOPE).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.credential, "auto");
    for expected in [
        "environment service principal: neither AZURE_CLIENT_SECRET nor AZURE_CLIENT_CERTIFICATE_PATH is set",
        "workload identity: AZURE_FEDERATED_TOKEN_FILE is not set",
        "managed identity (ManagedIdentityCredential): no managed identity endpoint",
        "Azure CLI (AzureCliCredential): Azure CLI not installed",
        "Azure Developer CLI (AzureDeveloperCliCredential): Azure Developer CLI not installed",
    ] {
        assert!(
            err.message.contains(expected),
            "missing {expected:?} in {}",
            err.message
        );
    }
    assert_eq!(credential.name(), "auto");
}

#[tokio::test]
async fn auto_skips_a_metadata_service_that_is_not_azure_imds() {
    // Another cloud's metadata service on the probe address answers 404.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            connections.spawn(async move {
                let service = hyper::service::service_fn(|_| async {
                    hyper::Response::builder()
                        .status(404)
                        .body(Full::new(Bytes::from_static(b"not found")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    let (_dir, cli) = no_cli();
    let mut settings = settings(CredentialKind::Auto, None, cli, &[]).await;
    settings.hooks.imds_probe_url = Some(
        Url::parse(&format!(
            "http://127.0.0.1:{port}/metadata/identity/oauth2/token"
        ))
        .unwrap(),
    );
    let err = from_settings(&settings)
        .unwrap()
        .acquire(SCOPE)
        .await
        .unwrap_err();
    server.abort();
    assert!(
        err.message
            .contains("answered HTTP 404 but not like Azure IMDS"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn auto_chooses_the_environment_service_principal() {
    let sts = fake_sts(false).await;
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "az", FAKE_AZ);
    let cli = ScriptExecutor::new(dir.path());
    let settings = settings(CredentialKind::Auto, Some(&sts), cli.clone(), &sp_vars()).await;
    let credential = from_settings(&settings).unwrap();
    let token = credential.acquire(SCOPE).await.unwrap();
    assert_eq!(token.secret.expose(), "sts-token-1");
    assert_eq!(credential.name(), "ClientSecretCredential");
    assert!(cli.commands().is_empty());
}

#[tokio::test]
async fn auto_falls_through_then_sticks_to_its_choice() {
    // The service principal is configured but rejected; the Azure CLI works.
    let sts = fake_sts(true).await;
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "az", FAKE_AZ);
    let cli = ScriptExecutor::new(dir.path());
    let settings = settings(CredentialKind::Auto, Some(&sts), cli.clone(), &sp_vars()).await;
    let credential = from_settings(&settings).unwrap();

    assert_eq!(
        credential.acquire(SCOPE).await.unwrap().secret.expose(),
        "cli-token-1"
    );
    assert_eq!(credential.name(), "AzureCliCredential");
    assert_eq!(
        credential.acquire(SCOPE).await.unwrap().secret.expose(),
        "cli-token-2"
    );
    // The service principal was tried once, before the choice, never after.
    assert_eq!(sts.seen().len(), 1);
    assert_eq!(cli.commands().len(), 2);
}

#[tokio::test]
async fn auto_with_a_federated_token_file_uses_workload_identity() {
    let sts = fake_sts(false).await;
    let (dir, cli) = no_cli();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "federated").unwrap();
    let vars = [
        ("AZURE_TENANT_ID", TENANT),
        ("AZURE_CLIENT_ID", CLIENT),
        ("AZURE_FEDERATED_TOKEN_FILE", token_file.to_str().unwrap()),
    ];
    let settings = settings(CredentialKind::Auto, Some(&sts), cli, &vars).await;
    let credential = from_settings(&settings).unwrap();
    credential.acquire(SCOPE).await.unwrap();
    assert_eq!(credential.name(), "WorkloadIdentityCredential");
}

#[tokio::test]
async fn explicit_kinds_report_missing_configuration_at_start_up() {
    let (_dir, cli) = no_cli();
    let base = settings(CredentialKind::ClientSecret, None, cli, &[]).await;
    let with = |kind, vars: &[(&str, &str)]| {
        let mut settings = base.clone();
        settings.kind = kind;
        settings.env = Env::from_vars(vars.iter().copied());
        settings
    };

    let err = from_settings(&with(
        CredentialKind::ClientSecret,
        &[("AZURE_CLIENT_ID", CLIENT)],
    ))
    .err()
    .unwrap();
    assert_eq!(err.credential, "ClientSecretCredential");
    assert!(err.message.contains("AZURE_TENANT_ID"), "{}", err.message);

    let err = from_settings(&with(
        CredentialKind::ClientSecret,
        &[("AZURE_TENANT_ID", TENANT), ("AZURE_CLIENT_ID", CLIENT)],
    ))
    .err()
    .unwrap();
    assert!(
        err.message.contains("AZURE_CLIENT_SECRET"),
        "{}",
        err.message
    );

    let mut vars = sp_vars();
    vars.push(("AZURE_AUTHORITY_HOST", "http://login.microsoftonline.com"));
    let err = from_settings(&with(CredentialKind::ClientSecret, &vars))
        .err()
        .unwrap();
    assert!(err.message.contains("https"), "{}", err.message);
    let err = from_settings(&with(CredentialKind::Auto, &vars))
        .err()
        .unwrap();
    assert!(err.message.contains("https"), "{}", err.message);

    let err = from_settings(&with(
        CredentialKind::WorkloadIdentity,
        &[("AZURE_TENANT_ID", TENANT), ("AZURE_CLIENT_ID", CLIENT)],
    ))
    .err()
    .unwrap();
    assert!(
        err.message.contains("AZURE_FEDERATED_TOKEN_FILE"),
        "{}",
        err.message
    );

    let mut two_ids = with(CredentialKind::ManagedIdentity, &[]);
    two_ids.client_id = Some("c".into());
    two_ids.object_id = Some("o".into());
    let err = from_settings(&two_ids).err().unwrap();
    assert_eq!(err.credential, "ManagedIdentityCredential");
    assert!(err.message.contains("at most one"), "{}", err.message);
}

#[tokio::test]
async fn managed_identity_without_an_endpoint_fails_fast() {
    let (_dir, cli) = no_cli();
    let settings = settings(CredentialKind::ManagedIdentity, None, cli, &[]).await;
    let started = std::time::Instant::now();
    let err = from_settings(&settings)
        .unwrap()
        .acquire(SCOPE)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.credential, "ManagedIdentityCredential");
    assert!(
        err.message.contains("no managed identity endpoint"),
        "{}",
        err.message
    );
}

#[test]
fn user_assigned_identity_comes_from_settings_or_azure_client_id() {
    let inputs = |settings: &CredentialSettings| Inputs::new(settings);
    let id =
        |settings: &CredentialSettings| match inputs(settings).managed_identity(AUTO_IMDS_PROBE) {
            Ok(Recipe::ManagedIdentity { id, .. }) => format!("{id:?}"),
            other => panic!("{other:?}"),
        };
    let mut settings = CredentialSettings {
        env: Env::from_vars([("AZURE_CLIENT_ID", "from-env")]),
        ..CredentialSettings::default()
    };
    assert_eq!(id(&settings), r#"Some(ClientId("from-env"))"#);
    settings.resource_id = Some("/subscriptions/s/rg/r".into());
    assert_eq!(
        id(&settings),
        r#"Some(ResourceId("/subscriptions/s/rg/r"))"#
    );
    settings.resource_id = None;
    settings.object_id = Some("oid".into());
    assert_eq!(id(&settings), r#"Some(ObjectId("oid"))"#);
    settings.env = Env::from_vars(Vec::<(String, String)>::new());
    settings.object_id = None;
    assert_eq!(id(&settings), "None");
}

#[test]
fn debug_output_never_shows_secrets() {
    let settings = CredentialSettings {
        env: Env::from_vars(sp_vars()),
        ..CredentialSettings::default()
    };
    let debug = format!("{settings:?}");
    assert!(debug.contains("AZURE_CLIENT_SECRET"), "{debug}");
    assert!(!debug.contains(CLIENT_SECRET_VALUE), "{debug}");

    let recipe = Inputs::new(&settings).client_secret().unwrap();
    assert!(!format!("{recipe:?}").contains(CLIENT_SECRET_VALUE));
    let assertion = FixedAssertion(Secret::new("header.claims.signature"));
    assert!(!format!("{assertion:?}").contains("claims"));
}
