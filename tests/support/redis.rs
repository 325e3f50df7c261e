//! A real `redis-server` (Debian's package; `.ci/run` installs it) owned by one test: on
//! a free port, in its own directory, with persistence off, killed when dropped.
//!
//! It can be killed and started again on the same port (a Redis restart, its data gone)
//! and paused with SIGSTOP (a Redis that accepts connections and never answers).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started server may take to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `redis-server`, killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    password: Option<String>,
    /// With TLS: the TLS port, beside the plain one (which readiness is checked on).
    tls_port: Option<u16>,
}

impl RedisServer {
    /// Starts one on a free port on 127.0.0.1 and waits until it answers PING.
    pub fn start() -> RedisServer {
        RedisServer::start_inner(None)
    }

    /// Starts one that requires `password` (`--requirepass`).
    pub fn start_with_password(password: &str) -> RedisServer {
        RedisServer::start_inner(Some(password.to_owned()))
    }

    /// Starts one that also serves TLS, with this certificate and key (PEM), on a second
    /// port: [`RedisServer::tls_url`].
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> RedisServer {
        let dir = tempfile::tempdir().expect("a directory for redis-server");
        std::fs::write(dir.path().join("server.crt"), cert_pem).expect("write certificate");
        std::fs::write(dir.path().join("server.key"), key_pem).expect("write key");
        RedisServer::start_in(dir, None, true)
    }

    fn start_inner(password: Option<String>) -> RedisServer {
        let dir = tempfile::tempdir().expect("a directory for redis-server");
        RedisServer::start_in(dir, password, false)
    }

    fn start_in(dir: tempfile::TempDir, password: Option<String>, tls: bool) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
            password,
            tls_port: None,
        };
        // The port is free when chosen and taken by redis a moment later; if another
        // process took it in between, redis exits and a new port is tried.
        for _ in 0..5 {
            server.port = free_port();
            if tls {
                server.tls_port = Some(free_port());
            }
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// `redis://127.0.0.1:PORT`, or `redis://:PASSWORD@127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// `rediss://127.0.0.1:TLS_PORT` (only for [`RedisServer::start_tls`]).
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port_tls())
    }

    /// The TLS port (only for [`RedisServer::start_tls`]).
    pub fn port_tls(&self) -> u16 {
        self.tls_port.expect("started with start_tls")
    }

    /// The port it listens on (kept across [`RedisServer::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills it (SIGKILL: no goodbye to its clients) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty, and waits until it answers PING.
    pub fn restart(&mut self) {
        self.kill();
        // The port was ours a moment ago; a few tries cover a slow release.
        for _ in 0..5 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("redis-server did not start again on port {}", self.port);
    }

    /// Freezes it (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server is running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Starts the process; `true` once it answers PING, `false` if it exited (port taken).
    fn spawn(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        if let Some(tls_port) = self.tls_port {
            let file = |name: &str| self.dir.path().join(name);
            command
                .args(["--tls-port", &tls_port.to_string()])
                .arg("--tls-cert-file")
                .arg(file("server.crt"))
                .arg("--tls-key-file")
                .arg(file("server.key"))
                // No client certificates: the client checks the server, not the reverse.
                .args(["--tls-auth-clients", "no"]);
        }
        let child = command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(error) => panic!(
                "cannot run redis-server ({error}): install it (apt-get install redis-server)"
            ),
        };
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                self.child = None;
                return false;
            }
            if ping(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        panic!(
            "redis-server on port {} did not answer PING within {READY_TIMEOUT:?}",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a Redis on `port` answers PING (with PONG, or NOAUTH when it wants a password)
/// within a second.
pub fn ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut answer = [0u8; 7];
    stream.read_exact(&mut answer).is_ok() && (&answer == b"+PONG\r\n" || &answer == b"-NOAUTH")
}

/// A port on 127.0.0.1 that was free a moment ago (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}
