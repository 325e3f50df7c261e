//! `keyless check` through the binary: against the simulator with the real managed identity
//! credential, against a mock Azure that refuses (401, 403, 404), against endpoints that
//! cannot be reached (refused, bad TLS), and with an invalid configuration.
//!
//! The identity is always an App Service-style managed identity endpoint on 127.0.0.1
//! (`IDENTITY_ENDPOINT`), so nothing probes IMDS and no test leaves the machine.

mod support;

use base64::Engine as _;
use bytes::Bytes;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::identity::FakeIdentity;
use support::mock::{Mock, Reply};
use support::{Finished, keyless_command, run_with_timeout, spawn_simulator};

/// A generous bound: a check takes well under a second here; this only stops a hang.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

const OBJECT_ID: &str = "6f1c1a7e-1111-4a2b-9c3d-00000000beef";
const TENANT_ID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const APP_ID: &str = "a5b4c3d2-2222-4e5f-8a9b-0000000000aa";
const SIGNATURE: &str = "c2lnbmF0dXJlLXRoYXQtbXVzdC1uZXZlci1iZS1wcmludGVk";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An unsigned, JWT-shaped token with the claims `keyless check` reads.
fn fake_jwt(audience: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = serde_json::json!({
        "aud": audience,
        "iss": format!("https://sts.windows.net/{TENANT_ID}/"),
        "tid": TENANT_ID,
        "oid": OBJECT_ID,
        "appid": APP_ID,
        "exp": unix_now() + 3600,
    });
    format!(
        "{}.{}.{SIGNATURE}",
        b64.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    )
}

const MSI_HEADER: &str = "msi-header-secret-for-check";

/// A managed identity endpoint on 127.0.0.1 that hands out `token` for [`MSI_HEADER`].
async fn fake_msi(token: String) -> FakeIdentity {
    FakeIdentity::start(MSI_HEADER, Duration::ZERO, move |_| token.clone()).await
}

/// `keyless check ARGS` with the managed identity environment of `msi_url`.
async fn check(args: &[&str], msi_url: &str) -> Finished {
    let mut command = keyless_command();
    command
        .arg("check")
        .args(args)
        .args(["--credential", "managed-identity"])
        .env("IDENTITY_ENDPOINT", msi_url)
        .env("IDENTITY_HEADER", MSI_HEADER);
    run(command).await
}

async fn run(command: Command) -> Finished {
    tokio::task::spawn_blocking(move || run_with_timeout(command, CHECK_TIMEOUT))
        .await
        .unwrap()
}

/// The text with every run of whitespace made one space: the report wraps its paragraphs.
fn flat(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn exit_code(finished: &Finished) -> Option<i32> {
    finished.status.and_then(|s| s.code())
}

/// Whether `text` holds a simulator token (`sim.<32 hex>.`), whole or in part.
fn holds_simulator_token(text: &str) -> bool {
    text.match_indices("sim.").any(|(at, _)| {
        let rest = &text[at + 4..];
        rest.len() >= 32 && rest[..32].bytes().all(|b| b.is_ascii_hexdigit())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_the_simulator_with_managed_identity_it_passes() {
    let secret = "simulator-identity-header-secret";
    let simulator = tokio::task::spawn_blocking(move || spawn_simulator(Some(secret)))
        .await
        .unwrap();
    let msi = format!("{}/msi/token", simulator.url());
    let endpoint = simulator.url();
    let mut command = keyless_command();
    command
        .args([
            "check",
            "--endpoint",
            &endpoint,
            "--credential",
            "managed-identity",
        ])
        .env("IDENTITY_ENDPOINT", &msi)
        .env("IDENTITY_HEADER", secret);
    let text = run(command).await;
    assert!(text.success(), "{}", text.report());
    let out = &flat(&text.stdout);
    assert!(
        out.contains("Credential: ManagedIdentityCredential"),
        "{out}"
    );
    assert!(out.contains("HTTP 200"), "{out}");
    assert!(out.contains("/openai/v1/models"), "{out}");
    assert!(
        out.contains("gpt-4o-mini"),
        "the models found are listed: {out}"
    );
    assert!(out.contains("opaque"), "a simulator token is no JWT: {out}");
    assert!(out.contains("keyless would work."), "{out}");
    let all = format!("{}{}", text.stdout, text.stderr);
    assert!(
        !holds_simulator_token(&all),
        "the token must never be printed:\n{all}"
    );
    assert!(
        !all.contains(secret),
        "the identity header must never be printed:\n{all}"
    );

    // The same for machines.
    let mut command = keyless_command();
    command
        .args([
            "check",
            "--json",
            "--endpoint",
            &endpoint,
            "--credential",
            "managed-identity",
        ])
        .env("IDENTITY_ENDPOINT", &msi)
        .env("IDENTITY_HEADER", secret);
    let json = run(command).await;
    assert!(json.success(), "{}", json.report());
    let v: serde_json::Value =
        serde_json::from_str(&json.stdout).unwrap_or_else(|e| panic!("{e}: {}", json.stdout));
    assert_eq!(v["ok"], true);
    assert_eq!(v["credential"], "ManagedIdentityCredential");
    assert_eq!(v["tokens"][0]["identity"]["readable"], false);
    assert_eq!(v["endpoints"][0]["status"], 200);
    assert_eq!(v["endpoints"][0]["verdict"], "ok");
    assert!(!holds_simulator_token(&json.stdout), "{}", json.stdout);
}

#[test]
fn simulate_checks_the_embedded_simulator() {
    let mut command = keyless_command();
    command.args(["check", "--simulate"]);
    let done = run_with_timeout(command, CHECK_TIMEOUT);
    assert!(done.success(), "{}", done.report());
    assert!(
        done.stdout.contains("Credential: simulated identity"),
        "{}",
        done.stdout
    );
    assert!(
        done.stdout.contains("the embedded simulator"),
        "{}",
        done.stdout
    );
    assert!(
        done.stdout.contains("keyless would work."),
        "{}",
        done.stdout
    );
    assert!(!holds_simulator_token(&done.stdout), "{}", done.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_names_the_role_and_the_object_id() {
    let token = fake_jwt("https://cognitiveservices.azure.com");
    let msi = fake_msi(token.clone()).await;
    // Azure's answer to a principal without a data-plane role.
    let mock = Mock::start(|_| Reply::Full {
        status: 403,
        headers: vec![("content-type", "application/json".into())],
        body: Bytes::from(format!(
            r#"{{"error":{{"code":"PermissionDenied","message":"The principal `{OBJECT_ID}` lacks the required data action `Microsoft.CognitiveServices/accounts/OpenAI/models/read` to perform `GET /openai/v1/models` operation."}}}}"#
        )),
    })
    .await;
    let done = check(&["--endpoint", mock.url.as_str()], &msi.url).await;
    assert_eq!(exit_code(&done), Some(1), "{}", done.report());
    let out = &flat(&done.stdout);
    assert!(out.contains("\"Cognitive Services OpenAI User\""), "{out}");
    assert!(out.contains(&format!("object id: {OBJECT_ID}")), "{out}");
    assert!(out.contains(&format!("tenant id: {TENANT_ID}")), "{out}");
    assert!(out.contains(&format!("app id: {APP_ID}")), "{out}");
    assert!(
        out.contains(&format!("az role assignment create --assignee {OBJECT_ID}")),
        "{out}"
    );
    assert!(out.contains("--scope <resource id>"), "{out}");
    assert!(out.contains("Azure said: The principal"), "{out}");
    assert!(out.contains("keyless would not work"), "{out}");
    let all = format!("{}{}", done.stdout, done.stderr);
    assert!(
        !all.contains(&token),
        "the token must never be printed:\n{all}"
    );
    assert!(!all.contains(SIGNATURE), "not even its signature:\n{all}");
    assert!(!all.contains(MSI_HEADER), "{all}");

    let seen = mock.one();
    assert_eq!(seen.path_and_query, "/openai/v1/models");
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {token}").as_str()
    );
    assert_eq!(msi.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_explains_scope_audience_and_tenant() {
    let other_tenant = "11111111-2222-3333-4444-555555555555";
    // A token for the wrong resource, refused by a resource of another tenant.
    let msi = fake_msi(fake_jwt("https://management.azure.com")).await;
    let challenge = format!(
        r#"Bearer authorization_uri="https://login.microsoftonline.com/{other_tenant}", error="invalid_token""#
    );
    let mock = Mock::start(move |_| Reply::Full {
        status: 401,
        headers: vec![
            ("content-type", "application/json".into()),
            ("www-authenticate", challenge.clone()),
        ],
        body: Bytes::from_static(br#"{"error":{"code":"401","message":"Unauthorized. Access token is missing, invalid, audience is incorrect (https://cognitiveservices.azure.com), or have expired."}}"#),
    })
    .await;
    let done = check(&["--endpoint", mock.url.as_str()], &msi.url).await;
    assert_eq!(exit_code(&done), Some(1), "{}", done.report());
    let out = &flat(&done.stdout);
    assert!(out.contains("rejected the token"), "{out}");
    assert!(
        out.contains("requested for scope https://cognitiveservices.azure.com/.default"),
        "{out}"
    );
    assert!(
        out.contains("carries audience https://management.azure.com"),
        "{out}"
    );
    assert!(
        out.contains("The audience does not match the scope"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "Wrong tenant: the token was issued by tenant {TENANT_ID}"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("--tenant-id {other_tenant}")),
        "{out}"
    );
    assert!(
        out.contains("audience is incorrect"),
        "Azure's words are quoted: {out}"
    );
    // A 401 on a check is not replayed: the check reports the first answer.
    assert_eq!(mock.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_explains_the_endpoint_and_path_style() {
    let msi = fake_msi(fake_jwt("https://cognitiveservices.azure.com")).await;
    let mock = Mock::start(|_| Reply::Full {
        status: 404,
        headers: vec![("content-type", "application/json".into())],
        body: Bytes::from_static(br#"{"error":{"code":"404","message":"Resource not found"}}"#),
    })
    .await;
    let done = check(&["--endpoint", mock.url.as_str()], &msi.url).await;
    assert_eq!(exit_code(&done), Some(1), "{}", done.report());
    let out = &flat(&done.stdout);
    assert!(out.contains("not an Azure OpenAI resource"), "{out}");
    assert!(out.contains("--api deployments"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_style_calls_the_dated_models_list() {
    let msi = fake_msi(fake_jwt("https://cognitiveservices.azure.com")).await;
    let mock = Mock::start(|_| {
        Reply::json(r#"{"data":[{"id":"gpt-4o"},{"id":"o3-mini"}],"object":"list"}"#)
    })
    .await;
    let done = check(
        &[
            "--endpoint",
            mock.url.as_str(),
            "--api",
            "deployments",
            "--api-version",
            "2024-10-21",
        ],
        &msi.url,
    )
    .await;
    assert!(done.success(), "{}", done.report());
    assert_eq!(
        mock.one().path_and_query,
        "/openai/models?api-version=2024-10-21"
    );
    assert!(
        done.stdout.contains("models: gpt-4o, o3-mini"),
        "{}",
        done.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_explained_with_the_host() {
    let msi = fake_msi(fake_jwt("https://cognitiveservices.azure.com")).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let endpoint = format!("http://{addr}");
    let done = check(&["--endpoint", &endpoint], &msi.url).await;
    assert_eq!(exit_code(&done), Some(1), "{}", done.report());
    let out = &flat(&done.stdout);
    assert!(
        out.contains(&format!("Connection refused by {addr}")),
        "{out}"
    );
    assert!(out.contains("keyless would not work"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_explained_as_tls() {
    // A TLS endpoint on 127.0.0.1 whose certificate comes from a CA nobody trusts.
    let acceptor = support::tls::test_tls(&["127.0.0.1"], &[]).acceptor;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await; // the client gives up in the handshake
            });
        }
    });
    let msi = fake_msi(fake_jwt("https://cognitiveservices.azure.com")).await;
    let endpoint = format!("https://{addr}");
    let done = check(&["--endpoint", &endpoint], &msi.url).await;
    assert_eq!(exit_code(&done), Some(1), "{}", done.report());
    let out = &flat(&done.stdout);
    assert!(
        out.contains(&format!("TLS handshake with {addr} failed")),
        "{out}"
    );
    assert!(out.contains("not signed by a trusted CA"), "{out}");
    assert!(out.contains("--ca-file"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_explained_and_azure_is_not_called() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let msi_url = format!("http://{}/msi/token", closed.local_addr().unwrap());
    drop(closed);
    let mock = Mock::start(|_| Reply::json("{}")).await;
    let done = check(&["--endpoint", mock.url.as_str()], &msi_url).await;
    assert_eq!(exit_code(&done), Some(1), "{}", done.report());
    let out = &flat(&done.stdout);
    assert!(
        out.contains("Token for https://cognitiveservices.azure.com/.default: FAILED"),
        "{out}"
    );
    assert!(out.contains("ManagedIdentityCredential"), "{out}");
    assert!(out.contains("no token"), "{out}");
    assert!(mock.seen().is_empty());
}

#[test]
fn an_invalid_configuration_exits_2_listing_every_problem() {
    let mut command = keyless_command();
    command.args([
        "check",
        "--endpoint",
        "http://res.openai.example.com",
        "--max-attempts",
        "0",
        "--scope",
        "cognitiveservices",
    ]);
    let done = run_with_timeout(command, CHECK_TIMEOUT);
    assert_eq!(exit_code(&done), Some(2), "{}", done.report());
    let out = &flat(&done.stdout);
    assert!(out.contains("Configuration: INVALID"), "{out}");
    assert!(out.contains("must be https"), "{out}");
    assert!(out.contains("retry.attempts"), "{out}");
    assert!(out.contains("scope \"cognitiveservices\""), "{out}");

    let mut command = keyless_command();
    command.args([
        "check",
        "--json",
        "--endpoint",
        "ftp://x",
        "--max-attempts",
        "0",
    ]);
    let done = run_with_timeout(command, CHECK_TIMEOUT);
    assert_eq!(exit_code(&done), Some(2), "{}", done.report());
    let v: serde_json::Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"].as_array().unwrap().len(), 2, "{v}");
}

#[test]
fn a_credential_that_cannot_be_built_is_explained() {
    let mut command = keyless_command();
    command.args([
        "check",
        "--endpoint",
        "http://127.0.0.1:9",
        "--credential",
        "client-secret",
    ]);
    let done = run_with_timeout(command, CHECK_TIMEOUT);
    assert_eq!(exit_code(&done), Some(1), "{}", done.report());
    let out = &flat(&done.stdout);
    assert!(
        out.contains("Credential: ClientSecretCredential: FAILED"),
        "{out}"
    );
    assert!(out.contains("AZURE_TENANT_ID is not set"), "{out}");
}
