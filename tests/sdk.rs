//! End to end with the official OpenAI SDKs as clients: openai-python and openai-node
//! (pinned in tests/sdk/) run `tests/sdk/python_client.py` and `tests/sdk/node_client.mjs`
//! against a real `keyless` process over real sockets, in three set-ups:
//!
//! - `keyless serve --simulate`: the embedded simulator and its in-process identity;
//! - `keyless serve --api deployments --credential managed-identity` in front of a
//!   standalone `keyless simulator`, whose `/msi/token` the real azure_identity
//!   `ManagedIdentityCredential` reaches through `IDENTITY_ENDPOINT`/`IDENTITY_HEADER`
//!   (the simulator accepts only the tokens it minted there);
//! - the same with `--api v1`.
//!
//! The scripts hold the assertions (chat, streaming, Responses, embeddings, models, audio,
//! the Azure client, errors, model mapping); a test here fails when its script exits
//! non-zero, and shows the script's output and keyless's log.
//!
//! `tests/sdk/setup.sh` installs the SDKs once per test run (a missing python3, node or npm,
//! or a failed install, fails every test here with its reason: nothing is skipped).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;
use support::{KeylessProcess, spawn_keyless, spawn_simulator};

/// keyless runs with these `--model` mappings; the scripts get them as `--map` to know what
/// deployment the simulator must echo (unmapped models keep their name).
const MAPPINGS: &[&str] = &["gpt-4o-mini=prod-mini", "whisper=prod-whisper"];

/// The `x-identity-header` secret of the standalone simulator's `/msi/token`.
const IDENTITY_SECRET: &str = "sdk-test-identity-secret";

/// A script's whole run; it takes a few seconds, the rest is slack for a loaded machine.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

/// The first `setup.sh` may download the SDKs.
const SETUP_TIMEOUT: Duration = Duration::from_secs(600);

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("sdk")
}

/// Runs `tests/sdk/setup.sh` once for all the tests of this binary (the others wait for it);
/// panics with its output if it failed. The script locks itself against other processes.
fn sdks_installed() {
    static SETUP: OnceLock<Result<(), String>> = OnceLock::new();
    let outcome = SETUP.get_or_init(|| {
        let mut command = Command::new("bash");
        command.arg(sdk_dir().join("setup.sh"));
        let finished = support::run_with_timeout(command, SETUP_TIMEOUT);
        if finished.success() {
            Ok(())
        } else {
            Err(finished.report())
        }
    });
    if let Err(report) = outcome {
        panic!("tests/sdk/setup.sh could not install the OpenAI SDKs:\n{report}");
    }
}

/// Which SDK drives keyless.
#[derive(Clone, Copy, Debug)]
enum Sdk {
    Python,
    Node,
}

/// Runs the SDK's client script against `keyless` and fails the test, with the script's
/// output and every process's log, unless it exits 0.
#[track_caller]
fn run_client(sdk: Sdk, keyless: &KeylessProcess, upstream: Option<&KeylessProcess>) {
    sdks_installed();
    let dir = sdk_dir();
    let mut command = match sdk {
        Sdk::Python => {
            let mut c = Command::new(dir.join(".venv").join("bin").join("python"));
            c.arg(dir.join("python_client.py"));
            c
        }
        Sdk::Node => {
            let mut c = Command::new("node");
            c.arg(dir.join("node_client.mjs"));
            c
        }
    };
    command.arg(keyless.url());
    for mapping in MAPPINGS {
        command.args(["--map", mapping]);
    }
    // The scripts talk to loopback only: no proxy, and no OpenAI or Azure setting of the
    // developer's shell (OPENAI_LOG, AZURE_OPENAI_AD_TOKEN...) may change what they send.
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let lower = name.to_ascii_lowercase();
        if name.starts_with("OPENAI_") || name.starts_with("AZURE_") || lower.ends_with("_proxy") {
            command.env_remove(name);
        }
    }
    command
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(&dir);

    let finished = support::run_with_timeout(command, SCRIPT_TIMEOUT);
    if !finished.success() {
        let upstream = upstream.map(KeylessProcess::report).unwrap_or_default();
        panic!(
            "the {sdk:?} SDK client failed against {}: {}\n{}\n{upstream}",
            keyless.url(),
            finished.report(),
            keyless.report(),
        );
    }
}

/// `keyless serve --simulate` with the test's model mappings.
fn simulated() -> KeylessProcess {
    let mut args = vec!["--simulate", "--listen", "127.0.0.1:0"];
    for mapping in MAPPINGS {
        args.extend(["--model", mapping]);
    }
    spawn_keyless(&args, &[])
}

/// A standalone simulator with `/msi/token`, and keyless in front of it with the real
/// managed identity credential and the `api` path style.
fn behind_managed_identity(api: &str) -> (KeylessProcess, KeylessProcess) {
    let simulator = spawn_simulator(Some(IDENTITY_SECRET));
    let endpoint = simulator.url();
    let identity_endpoint = format!("{endpoint}/msi/token");
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--endpoint",
        &endpoint,
        "--api",
        api,
        "--credential",
        "managed-identity",
    ];
    for mapping in MAPPINGS {
        args.extend(["--model", mapping]);
    }
    let keyless = spawn_keyless(
        &args,
        &[
            ("IDENTITY_ENDPOINT", &identity_endpoint),
            ("IDENTITY_HEADER", IDENTITY_SECRET),
        ],
    );
    (keyless, simulator)
}

#[test]
fn python_sdk_through_simulate() {
    let keyless = simulated();
    run_client(Sdk::Python, &keyless, None);
}

#[test]
fn node_sdk_through_simulate() {
    let keyless = simulated();
    run_client(Sdk::Node, &keyless, None);
}

#[test]
fn python_sdk_through_managed_identity_deployments_api() {
    let (keyless, simulator) = behind_managed_identity("deployments");
    run_client(Sdk::Python, &keyless, Some(&simulator));
}

#[test]
fn node_sdk_through_managed_identity_deployments_api() {
    let (keyless, simulator) = behind_managed_identity("deployments");
    run_client(Sdk::Node, &keyless, Some(&simulator));
}

#[test]
fn python_sdk_through_managed_identity_v1_api() {
    let (keyless, simulator) = behind_managed_identity("v1");
    run_client(Sdk::Python, &keyless, Some(&simulator));
}

#[test]
fn node_sdk_through_managed_identity_v1_api() {
    let (keyless, simulator) = behind_managed_identity("v1");
    run_client(Sdk::Node, &keyless, Some(&simulator));
}

// ---------------------------------------------------------------------------------------
// An app built against `--simulate` (issue 14): tests/sdk/python_simulator.py and
// tests/sdk/node_simulator.mjs drive tools, structured output, n, legacy completions,
// models, images, files, batches, audio, the Responses lifecycle and the fault-injection
// headers through `keyless serve --simulate`, in both upstream path styles.

/// Runs one of the simulator scripts against `keyless` and fails the test, with the
/// script's output and keyless's log, unless it exits 0.
#[track_caller]
fn run_simulator_script(sdk: Sdk, keyless: &KeylessProcess) {
    sdks_installed();
    let dir = sdk_dir();
    let mut command = match sdk {
        Sdk::Python => {
            let mut c = Command::new(dir.join(".venv").join("bin").join("python"));
            c.arg(dir.join("python_simulator.py"));
            c
        }
        Sdk::Node => {
            let mut c = Command::new("node");
            c.arg(dir.join("node_simulator.mjs"));
            c
        }
    };
    command.arg(keyless.url());
    // Loopback only, and nothing from the developer's shell changes what the SDKs send.
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let lower = name.to_ascii_lowercase();
        if name.starts_with("OPENAI_") || name.starts_with("AZURE_") || lower.ends_with("_proxy") {
            command.env_remove(name);
        }
    }
    command
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(&dir);
    let finished = support::run_with_timeout(command, SCRIPT_TIMEOUT);
    if !finished.success() {
        panic!(
            "the {sdk:?} simulator script failed against {}: {}\n{}",
            keyless.url(),
            finished.report(),
            keyless.report(),
        );
    }
}

/// `keyless serve --simulate --api API`, no model mappings (the scripts name deployments).
fn simulated_with_api(api: &str) -> KeylessProcess {
    spawn_keyless(
        &["--simulate", "--listen", "127.0.0.1:0", "--api", api],
        &[],
    )
}

#[test]
fn python_app_against_simulate_v1() {
    run_simulator_script(Sdk::Python, &simulated_with_api("v1"));
}

#[test]
fn node_app_against_simulate_v1() {
    run_simulator_script(Sdk::Node, &simulated_with_api("v1"));
}

#[test]
fn python_app_against_simulate_deployments() {
    run_simulator_script(Sdk::Python, &simulated_with_api("deployments"));
}

#[test]
fn node_app_against_simulate_deployments() {
    run_simulator_script(Sdk::Node, &simulated_with_api("deployments"));
}

/// App keys for a shared gateway (issue 12): `a` may use gpt-4o-mini only, 3 a minute;
/// `b` anything.
const APP_KEY_A: &str = "sk-sdk-app-a-5f1d";
const APP_KEY_B: &str = "sk-sdk-app-b-93c2";

/// `keyless serve --simulate` with two apps, and the config file that holds them.
fn simulated_with_apps() -> (KeylessProcess, tempfile::NamedTempFile) {
    use std::io::Write as _;
    let hash = |key: &str| keyless::apps::sha256_hex(key.as_bytes());
    let mut config = tempfile::NamedTempFile::new().unwrap();
    write!(
        config,
        "[[apps]]\nname = \"a\"\nkey_sha256 = \"{}\"\nmodels = [\"gpt-4o-mini\"]\nrpm = 3\n\n[[apps]]\nname = \"b\"\nkey_sha256 = \"{}\"\n",
        hash(APP_KEY_A),
        hash(APP_KEY_B)
    )
    .unwrap();
    let path = config.path().display().to_string();
    let keyless = spawn_keyless(
        &["--simulate", "--listen", "127.0.0.1:0", "--config", &path],
        &[],
    );
    (keyless, config)
}

/// Runs an app-key script (`python_apps.py`, `node_apps.mjs`) against a keyless with apps.
#[track_caller]
fn run_apps_client(sdk: Sdk) {
    sdks_installed();
    let (keyless, _config) = simulated_with_apps();
    let dir = sdk_dir();
    let mut command = match sdk {
        Sdk::Python => {
            let mut c = Command::new(dir.join(".venv").join("bin").join("python"));
            c.arg(dir.join("python_apps.py"));
            c
        }
        Sdk::Node => {
            let mut c = Command::new("node");
            c.arg(dir.join("node_apps.mjs"));
            c
        }
    };
    command
        .args([keyless.url().as_str(), APP_KEY_A, APP_KEY_B])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(&dir);
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("OPENAI_")
            || name.starts_with("AZURE_")
            || name.to_ascii_lowercase().ends_with("_proxy")
        {
            command.env_remove(name);
        }
    }
    let finished = support::run_with_timeout(command, SCRIPT_TIMEOUT);
    assert!(
        finished.success(),
        "the {sdk:?} SDK failed with app keys: {}\n{}",
        finished.report(),
        keyless.report()
    );
    let log = keyless.output();
    for key in [APP_KEY_A, APP_KEY_B] {
        assert!(!log.contains(key), "an app key reached the log");
    }
}

#[test]
fn python_sdk_with_app_keys() {
    run_apps_client(Sdk::Python);
}

#[test]
fn node_sdk_with_app_keys() {
    run_apps_client(Sdk::Node);
}

// ---- Realtime (issue 13) ---------------------------------------------------------------
//
// tests/sdk/python_realtime.py (`client.realtime.connect`, and AzureOpenAI on the dated
// path) and tests/sdk/node_realtime.mjs (`OpenAIRealtimeWebSocket`, which sends its key as
// a subprotocol) through keyless, against `--simulate` and against a WebSocket mock that
// checks what reached it.

/// The realtime model the scripts ask for, and the deployment keyless maps it to.
const REALTIME_MODEL: &str = "gpt-realtime";

/// Runs a realtime script against `keyless`; the upstream session must name `deployment`.
#[track_caller]
fn run_realtime(sdk: Sdk, keyless: &KeylessProcess, deployment: &str, audio: bool) {
    sdks_installed();
    let dir = sdk_dir();
    let mut command = match sdk {
        Sdk::Python => {
            let mut c = Command::new(dir.join(".venv").join("bin").join("python"));
            c.arg(dir.join("python_realtime.py"));
            c
        }
        Sdk::Node => {
            let mut c = Command::new("node");
            c.arg(dir.join("node_realtime.mjs"));
            c
        }
    };
    command
        .arg(keyless.url())
        .args(["--deployment", deployment]);
    if audio {
        command.arg("--audio");
    }
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let lower = name.to_ascii_lowercase();
        if name.starts_with("OPENAI_") || name.starts_with("AZURE_") || lower.ends_with("_proxy") {
            command.env_remove(name);
        }
    }
    command
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(&dir);
    let finished = support::run_with_timeout(command, SCRIPT_TIMEOUT);
    assert!(
        finished.success(),
        "the {sdk:?} SDK realtime client failed against {}: {}\n{}",
        keyless.url(),
        finished.report(),
        keyless.report(),
    );
}

fn realtime_simulated() -> KeylessProcess {
    let mapping = format!("{REALTIME_MODEL}=rt-sim");
    spawn_keyless(
        &["--simulate", "--listen", "127.0.0.1:0", "--model", &mapping],
        &[],
    )
}

#[test]
fn python_realtime_through_simulate() {
    let keyless = realtime_simulated();
    run_realtime(Sdk::Python, &keyless, "rt-sim", true);
}

#[test]
fn node_realtime_through_simulate() {
    let keyless = realtime_simulated();
    run_realtime(Sdk::Node, &keyless, "rt-sim", true);
}

/// Answers a realtime session as Azure would, briefly: `session.created` naming the
/// deployment from the URL, `session.updated`, and a two-delta text response.
async fn scripted_realtime(mut socket: support::ws::Upstream, handshake: support::ws::Handshake) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let query = handshake
        .path_and_query
        .split_once('?')
        .map_or("", |(_, q)| q)
        .to_owned();
    let deployment = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "model" || k == "deployment")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let mut session = serde_json::json!({
        "type": "realtime", "object": "realtime.session", "id": "sess_mock",
        "model": deployment, "instructions": "", "output_modalities": ["audio"],
    });
    let event = |kind: &str, mut fields: serde_json::Value| {
        fields["type"] = kind.into();
        fields["event_id"] = format!("event_{kind}").into();
        Message::text(fields.to_string())
    };
    let created = event("session.created", serde_json::json!({ "session": session }));
    if socket.send(created).await.is_err() {
        return;
    }
    while let Some(Ok(Message::Text(text))) = socket.next().await {
        let Ok(client) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
            continue;
        };
        let response =
            serde_json::json!({ "object": "realtime.response", "id": "resp_mock", "output": [] });
        let ids = serde_json::json!({ "response_id": "resp_mock", "item_id": "item_mock", "output_index": 0, "content_index": 0 });
        let with = |mut fields: serde_json::Value| {
            for (k, v) in ids.as_object().into_iter().flatten() {
                fields[k] = v.clone();
            }
            fields
        };
        let answers = match client["type"].as_str().unwrap_or("") {
            "session.update" => {
                for (k, v) in client["session"].as_object().into_iter().flatten() {
                    session[k] = v.clone();
                }
                vec![event(
                    "session.updated",
                    serde_json::json!({ "session": session }),
                )]
            }
            "conversation.item.create" => vec![event(
                "conversation.item.added",
                serde_json::json!({ "item": client["item"], "previous_item_id": null }),
            )],
            "response.create" => {
                let mut done = response.clone();
                done["status"] = "completed".into();
                let mut started = response.clone();
                started["status"] = "in_progress".into();
                vec![
                    event(
                        "response.created",
                        serde_json::json!({ "response": started }),
                    ),
                    event(
                        "response.output_text.delta",
                        with(serde_json::json!({ "delta": "Hello " })),
                    ),
                    event(
                        "response.output_text.delta",
                        with(serde_json::json!({ "delta": "from the mock." })),
                    ),
                    event(
                        "response.output_text.done",
                        with(serde_json::json!({ "text": "Hello from the mock." })),
                    ),
                    event("response.done", serde_json::json!({ "response": done })),
                ]
            }
            _ => Vec::new(),
        };
        for answer in answers {
            if socket.send(answer).await.is_err() {
                return;
            }
        }
    }
}

/// keyless (real managed identity credential, against a fake identity endpoint) in front
/// of a scripted WebSocket mock; runs the `sdk` script, then checks every upgrade that
/// reached the mock: `paths`, the Entra bearer, no client key anywhere.
fn realtime_through_the_mock(sdk: Sdk, paths: &[&str]) {
    const SECRET: &str = "realtime-identity-secret";
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mock, identity) = runtime.block_on(async {
        let (mock, mut sessions) = support::ws::WsMock::handing().await;
        tokio::spawn(async move {
            while let Some((socket, handshake)) = sessions.recv().await {
                tokio::spawn(scripted_realtime(socket, handshake));
            }
        });
        let identity = support::identity::FakeIdentity::start(SECRET, Duration::ZERO, |n| {
            format!("mi-token-{n}")
        })
        .await;
        (mock, identity)
    });
    let endpoint = mock.url.to_string();
    let mapping = format!("{REALTIME_MODEL}=rt-mock");
    let keyless = spawn_keyless(
        &[
            "--listen",
            "127.0.0.1:0",
            "--endpoint",
            &endpoint,
            "--credential",
            "managed-identity",
            "--model",
            &mapping,
        ],
        &[
            ("IDENTITY_ENDPOINT", &identity.url),
            ("IDENTITY_HEADER", SECRET),
        ],
    );
    run_realtime(sdk, &keyless, "rt-mock", false);
    let seen = mock.seen();
    let reached: Vec<&str> = seen.iter().map(|h| h.path_and_query.as_str()).collect();
    assert_eq!(reached, paths, "{}", keyless.report());
    for handshake in &seen {
        assert_eq!(
            handshake.header("authorization"),
            "Bearer mi-token-0",
            "{handshake:?}"
        );
        assert_eq!(handshake.header("api-key"), "");
        let all = format!("{handshake:?}");
        for key in ["sk-unused", "azure-client-key", "openai-insecure-api-key"] {
            assert!(!all.contains(key), "{key} reached Azure: {all}");
        }
    }
    drop(keyless);
    drop(mock);
    runtime.shutdown_background();
}

#[test]
fn python_realtime_through_the_mock() {
    realtime_through_the_mock(
        Sdk::Python,
        &[
            "/openai/v1/realtime?model=rt-mock",
            "/openai/realtime?api-version=2025-04-01-preview&deployment=rt-mock",
        ],
    );
}

#[test]
fn node_realtime_through_the_mock() {
    realtime_through_the_mock(Sdk::Node, &["/openai/v1/realtime?model=rt-mock"]);
}
