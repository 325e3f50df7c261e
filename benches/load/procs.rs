//! The servers under test as child processes, and what `/proc` says about them.
//!
//! Every child is started through `setpriv --pdeathsig` (util-linux) when it is there, so a
//! benchmark killed outright (SIGKILL, a CI time-out) still takes its servers down with it;
//! a normal exit or a panic stops them through [`Proc`]'s `Drop`. Children are spawned from
//! the main thread only: the death signal follows the thread that forked, not the process.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::Error;

/// A server the benchmark started; stopped when dropped.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// Set once stopped and reaped, so `Drop` never signals a pid the kernel reused.
    stopped: bool,
}

/// How to start one server.
pub struct Spawn<'a> {
    /// Shown in errors.
    pub name: &'a str,
    pub program: &'a Path,
    pub args: Vec<String>,
    /// The only environment the child gets, besides `PATH` and `HOME`: a developer's
    /// `AZURE_*` or `KEYLESS_*` variables must not change what is measured.
    pub env: Vec<(&'a str, String)>,
    /// stderr goes here (and stdout too when no address is awaited).
    pub log: PathBuf,
}

impl Spawn<'_> {
    /// Starts the child; with `await_address`, waits for the first `http://ADDR` it prints
    /// on stdout (keyless and its simulator announce the port they bound that way).
    pub fn start(self, await_address: bool) -> Result<(Proc, Option<SocketAddr>), Error> {
        let mut command = command(self.program);
        command.args(&self.args).env_clear();
        for key in ["PATH", "HOME", "LANG"] {
            if let Some(value) = std::env::var_os(key) {
                command.env(key, value);
            }
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let log = fs::File::create(&self.log)?;
        command.stdin(Stdio::null()).stderr(log.try_clone()?);
        if await_address {
            command.stdout(Stdio::piped());
        } else {
            command.stdout(log);
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.name))?;
        let stdout = child.stdout.take();
        let mut proc = Proc {
            name: self.name.to_owned(),
            child,
            log: self.log,
            stopped: false,
        };
        let Some(stdout) = stdout else {
            return Ok((proc, None));
        };
        let (tx, rx) = mpsc::channel();
        // Reads the banner, then drains stdout so a chatty child never blocks on a full pipe.
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut sent = false;
            while let Some(Ok(line)) = lines.next() {
                if !sent && let Some(addr) = address_in(&line) {
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(addr) => return Ok((proc, Some(addr))),
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = proc.child.try_wait() {
                        return Err(proc.failure(&format!("exited with {status} before listening")));
                    }
                }
                Err(_) => return Err(proc.failure("printed no listening address within 30 s")),
            }
        }
    }
}

/// A command that dies with the benchmark: `setpriv --pdeathsig TERM -- program` (TERM, not
/// KILL: nginx's master must live long enough to stop its workers).
pub fn command(program: &Path) -> Command {
    match which("setpriv") {
        Some(setpriv) => {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "TERM", "--"]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// `http://127.0.0.1:1234` anywhere in a line.
fn address_in(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("http://")? + "http://".len()..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '/')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl Proc {
    /// The process id (setpriv execs, so it is the server's own).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has exited.
    pub fn check_alive(&mut self) -> Result<(), Error> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.failure(&format!("exited with {status}"))),
            Err(e) => Err(self.failure(&e.to_string())),
        }
    }

    /// An error naming the process, with the end of its log.
    pub fn failure(&self, what: &str) -> Error {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "{} {what}; last lines of {}:\n{}",
            self.name,
            self.log.display(),
            tail.join("\n")
        )
        .into()
    }

    /// SIGTERM, up to 5 s to exit, then SIGKILL.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A program on `PATH`, or in the sbin directories a non-root `PATH` may lack (nginx).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Runs a program to completion and returns its stdout and stderr, joined.
pub fn output<I, S>(program: &str, args: I) -> Option<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(which(program)?).args(args).output().ok()?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Some(text.trim().to_owned())
}

/// A port that was free a moment ago (for nginx, which cannot report the one it bound).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------
// /proc

/// Clock ticks a second, for `utime`/`stime`.
pub fn clock_ticks() -> u64 {
    output("getconf", ["CLK_TCK"])
        .and_then(|t| t.parse().ok())
        .unwrap_or(100)
}

/// `(ppid, utime + stime)` of a process, from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let fields: Vec<&str> = text[text.rfind(')')? + 2..].split(' ').collect();
    // After the name: state(3) ppid(4) ... utime(14) stime(15), so index = field - 3.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// `pid` and its children (nginx's master and workers). This kernel may lack
/// `/proc/PID/task/TID/children`, so the parent links of every process are read.
pub fn family(pid: u32) -> Vec<u32> {
    let mut parents: HashMap<u32, u32> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                && let Some((ppid, _)) = stat(p)
            {
                parents.insert(p, ppid);
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            parents
                .iter()
                .filter(|(_, pp)| **pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out
}

/// CPU time (user + system) of a set of processes, in clock ticks.
pub fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| stat(p)).map(|(_, t)| t).sum()
}

/// `(busy, total)` clock ticks of the whole machine since boot, from `/proc/stat`
/// (busy: everything but idle and iowait).
pub fn machine_ticks() -> (u64, u64) {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let n: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = n.iter().take(8).sum();
    let idle = n.get(3).copied().unwrap_or(0) + n.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// The kernel's count of connections dropped because a listener's accept queue was full
/// (`TcpExt: ListenOverflows` in `/proc/net/netstat`): each costs its client a SYN
/// retransmission, a second or more.
pub fn listen_overflows() -> u64 {
    let text = fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// CPU ticks of one process, `(utime + stime)`; readable until it is reaped, so a child
/// that has exited but not been waited for still tells its total.
pub fn process_ticks(pid: u32) -> u64 {
    stat(pid).map_or(0, |(_, t)| t)
}

/// A `/proc/PID/status` field in KiB (`VmHWM`, `VmRSS`).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Peak resident set size of a set of processes, in KiB (shared pages count once per process).
pub fn peak_rss_kib(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| status_kib(p, "VmHWM")).sum()
}

/// Resets `VmHWM` to the current RSS (Linux >= 4.0, `clear_refs` value 5), so each
/// measurement reports its own peak; false when the kernel or permissions refuse.
pub fn reset_peak_rss(pids: &[u32]) -> bool {
    pids.iter()
        .all(|p| fs::write(format!("/proc/{p}/clear_refs"), "5").is_ok())
}

// ---------------------------------------------------------------------------------------
// A blocking HTTP/1.1 request, for set-up and readiness (not for measuring).

/// An HTTP/1.1 request's bytes: head and body; `close` asks the server to close after.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\n");
    if close {
        head.push_str("connection: close\r\n");
    }
    head.push_str(&format!("content-length: {}\r\n", body.len()));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends one request with `Connection: close`; returns the status and the (de-chunked) body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(&request(addr, method, path, headers, body, true))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed HTTP response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body).ok_or_else(bad)?;
    }
    Ok((status, body))
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// Polls until `GET path` answers 200 (or `timeout` passes).
pub fn wait_ok(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match http(addr, method, path, headers, body) {
            Ok((200, _)) => return Ok(()),
            Ok((status, body)) => {
                last = format!("{status}: {}", String::from_utf8_lossy(&body));
            }
            Err(e) => last = e.to_string(),
        }
        thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{method} http://{addr}{path} not 200 within {timeout:?}: {last}").into())
}
