//! Helpers shared by the integration tests.
//!
//! - [`spawn_keyless`] and [`spawn_simulator`] start the `keyless` binary cargo built for
//!   this test run on an ephemeral port and read its address from the first stdout line;
//!   the returned [`KeylessProcess`] kills the process when dropped.
//! - [`wait_ready`] polls `/readyz` until the proxy holds its tokens.
//! - `mock` (a mock Azure that records and answers as scripted, an in-process proxy),
//!   `identity` (a fake App Service identity endpoint), `sts` (a fake Entra token
//!   endpoint, shared with the credential unit tests), `tls` (a test CA) and `running`
//!   (the binary in front of a mock) make up the rest of the kit.
//! - [`run_with_timeout`] runs a command (a client script) to completion or a deadline and
//!   keeps its output for the failure message.
//!
//! Every test owns its processes and ports: nothing here is shared between tests.
#![allow(dead_code)]

pub mod identity;
pub mod mock;
pub mod redis;
pub mod running;
pub mod sts;
pub mod tls;
pub mod ws;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Polls `{base}/readyz` until it answers 200 (the proxy holds its tokens); panics with
/// `report()` (the process output, say) when that takes longer than `within`. The one
/// readiness wait of the test kit.
pub async fn wait_ready(base: &str, within: Duration, report: impl Fn() -> String) {
    let client = mock::client();
    let deadline = Instant::now() + within;
    while !client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "never ready\n{}", report());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long a spawned process may take to print the line that says where it listens.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The first stdout line of `keyless serve`, before the address.
pub const SERVE_BANNER: &str = "keyless listening on http://";
/// The first stdout line of `keyless simulator`, before the address.
pub const SIMULATOR_BANNER: &str = "keyless simulator listening on http://";

/// A running `keyless` process (proxy or simulator), killed when dropped.
///
/// Its stdout (after the banner) and stderr are drained by background threads, so a chatty
/// log never blocks it, and kept for [`KeylessProcess::output`].
pub struct KeylessProcess {
    name: String,
    child: Child,
    addr: SocketAddr,
    output: Arc<Mutex<String>>,
}

impl KeylessProcess {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything it printed so far after the banner, stdout and stderr interleaved by line.
    pub fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends it SIGTERM (through `kill`, so the tests need no unsafe signal code).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `timeout` for it to exit; `None` if it is still running then.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its output under a heading, for a failure message.
    pub fn report(&self) -> String {
        format!("--- {} output ---\n{}", self.name, self.output())
    }
}

impl Drop for KeylessProcess {
    fn drop(&mut self) {
        // SIGKILL: the tests need no graceful drain, and nothing may outlive the test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `Command` for the `keyless` binary under test, with an environment that cannot
/// change its configuration: every `KEYLESS_*` (but `KEYLESS_LOG`), `AZURE_*`,
/// `IDENTITY_*` and `MSI_*` variable of the developer's shell is removed, and log colours
/// are off so that captured logs read cleanly.
pub fn keyless_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyless"));
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let configures = ["KEYLESS_", "AZURE_", "IDENTITY_", "MSI_"]
            .iter()
            .any(|prefix| name.starts_with(prefix));
        if configures && name != "KEYLESS_LOG" {
            command.env_remove(name);
        }
    }
    command.env("NO_COLOR", "1");
    command
}

/// Starts `keyless serve ARGS` with the extra environment `envs` (after the clean-up of
/// [`keyless_command`]) and waits for it to listen. Pass `--listen 127.0.0.1:0` in `args`.
///
/// Panics, with the process's output, when it exits or stays silent for [`START_TIMEOUT`].
#[track_caller]
pub fn spawn_keyless(args: &[&str], envs: &[(&str, &str)]) -> KeylessProcess {
    let mut command = keyless_command();
    command.arg("serve").args(args).envs(envs.iter().copied());
    spawn(command, SERVE_BANNER, "keyless serve")
}

/// Starts `keyless serve --listen 127.0.0.1:0 --endpoint ENDPOINT --credential
/// managed-identity ARGS` with the App Service-style identity endpoint `identity_url` and
/// its `identity_header` (so nothing probes IMDS), plus `envs`. For async tests: the
/// blocking start runs on tokio's blocking pool.
pub async fn spawn_keyless_with_msi(
    endpoint: &str,
    identity_url: &str,
    identity_header: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> KeylessProcess {
    let all: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--endpoint",
        endpoint,
        "--credential",
        "managed-identity",
    ]
    .iter()
    .chain(args)
    .map(|s| (*s).to_owned())
    .collect();
    let mut env: Vec<(String, String)> = vec![
        ("IDENTITY_ENDPOINT".into(), identity_url.to_owned()),
        ("IDENTITY_HEADER".into(), identity_header.to_owned()),
    ];
    env.extend(envs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        spawn_keyless(&args, &envs)
    })
    .await
    .unwrap()
}

/// Starts `keyless simulator --listen 127.0.0.1:0`, with the managed identity endpoint
/// `/msi/token` when `identity_header` is given, and waits for it to listen.
#[track_caller]
pub fn spawn_simulator(identity_header: Option<&str>) -> KeylessProcess {
    let mut command = keyless_command();
    command.args(["simulator", "--listen", "127.0.0.1:0"]);
    if let Some(secret) = identity_header {
        command.args(["--identity-header", secret]);
    }
    spawn(command, SIMULATOR_BANNER, "keyless simulator")
}

/// Spawns `command` and reads its address from a first stdout line `{banner}ADDR`.
#[track_caller]
pub fn spawn(mut command: Command, banner: &str, name: &str) -> KeylessProcess {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
    let output = Arc::new(Mutex::new(String::new()));
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let first_line = drain_stdout(stdout, Arc::clone(&output));
    drain_stderr(stderr, Arc::clone(&output));

    let mut process = KeylessProcess {
        name: name.to_owned(),
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        output,
    };
    let line = match first_line.recv_timeout(START_TIMEOUT) {
        Ok(line) => line,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!(
            "{name} printed no first line within {START_TIMEOUT:?}\n{}",
            process.report()
        ),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // Its stdout closed: it exited. Give the stderr thread a moment to catch up.
            let status = process.child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "{name} exited before listening ({status:?}): {command:?}\n{}",
                process.report()
            )
        }
    };
    process.addr = line
        .trim_end()
        .strip_prefix(banner)
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{name}'s first line is not `{banner}ADDR`: {line:?}\n{}",
                process.report()
            )
        });
    process
}

/// Sends the first stdout line through the returned channel, then appends the rest to `output`.
fn drain_stdout(stdout: ChildStdout, output: Arc<Mutex<String>>) -> mpsc::Receiver<String> {
    let (first_tx, first_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        match lines.next() {
            Some(Ok(line)) => {
                let _ = first_tx.send(line);
            }
            _ => return, // dropping the sender tells the reader the process ended
        }
        for line in lines.map_while(Result::ok) {
            append(&output, &line);
        }
    });
    first_rx
}

fn drain_stderr(stderr: ChildStderr, output: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            append(&output, &line);
        }
    });
}

fn append(output: &Mutex<String>, line: &str) {
    if let Ok(mut output) = output.lock() {
        output.push_str(line);
        output.push('\n');
    }
}

/// What [`run_with_timeout`] saw.
#[derive(Debug)]
pub struct Finished {
    /// The exit status; `None` when the command was killed at the deadline.
    pub status: Option<ExitStatus>,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Finished {
    /// Whether it exited by itself with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Its exit status and output, for a failure message.
    pub fn report(&self) -> String {
        let status = match self.status {
            Some(status) => status.to_string(),
            None => "killed at the deadline".to_owned(),
        };
        format!(
            "{status} after {:.1?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Runs `command` (stdin closed, stdout and stderr captured) until it exits or `timeout`
/// passes, in which case it is killed. Panics only when it cannot be started.
#[track_caller]
pub fn run_with_timeout(mut command: Command, timeout: Duration) -> Finished {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    Finished {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        elapsed: started.elapsed(),
    }
}

fn read_all(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}
