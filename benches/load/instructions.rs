//! User-space instructions a proxied request costs, counted by callgrind (valgrind).
//!
//! CPU time a request moves by a tenth between runs on a shared machine; an instruction
//! count hardly moves, so it shows what a change costs or saves where the noise hides it.
//! Each proxy runs alone under callgrind as one process (keyless with `--workers 1`,
//! nginx with `master_process off`) and relays [`FEW`] requests, then, in a second run,
//! [`MANY`], sent one after another on one keep-alive connection: the difference over
//! `MANY - FEW` requests leaves start-up out (keyless reading the system's root
//! certificates, nginx its configuration). The kernel's share is not counted (the perf
//! profiles show it), nor are cache misses: this is the work, not its time.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::procs::{self, Proc};
use crate::{Error, wrk};

/// Requests in the short run and in the long run.
pub const FEW: usize = 200;
pub const MANY: usize = 1200;

/// One proxy's count.
#[derive(Clone, Debug)]
pub struct Count {
    /// User-space instructions a request.
    pub per_request: f64,
    /// `(group, instructions a request)`, largest first: a crate, `libc`, `Rust std`, ...
    pub groups: Vec<(String, f64)>,
}

/// Counts the instructions a chat request (the one wrk sends) costs the proxy
/// `start(out)` starts under callgrind, which writes its counts to `out` as it exits.
/// The proxy runs `linger` longer after the last answer, in both runs, so work it does
/// after the requests (a batch of spans exported) is in the count; the idle time itself
/// costs both runs alike and cancels in the difference.
pub fn count(
    annotate: &Path,
    dir: &Path,
    name: &str,
    headers: &[(&str, &str)],
    linger: Duration,
    start: impl Fn(&Path) -> Result<(Proc, SocketAddr), Error>,
) -> Result<Count, Error> {
    let mut runs = Vec::new();
    for n in [FEW, MANY] {
        let out = dir.join(format!("callgrind-{name}-{n}.out"));
        let (mut proxy, addr) = start(&out)?;
        let sent = sequential(addr, n, headers);
        std::thread::sleep(linger);
        // callgrind writes the counts as the proxy exits.
        proxy.stop();
        sent.map_err(|e| format!("{name} under callgrind, request failed: {e}"))?;
        runs.push(groups(annotate, &out)?);
    }
    let (few, many) = (&runs[0], &runs[1]);
    let span = (MANY - FEW) as f64;
    let mut groups: Vec<(String, f64)> = many
        .iter()
        .map(|(g, &n)| {
            let before = few.get(g).copied().unwrap_or(0);
            (g.clone(), n.saturating_sub(before) as f64 / span)
        })
        .filter(|(_, n)| *n >= 1.0)
        .collect();
    groups.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let per_request = groups.iter().map(|(_, n)| n).sum();
    Ok(Count {
        per_request,
        groups,
    })
}

/// `n` chat requests one after another on one keep-alive connection, each answered 200.
fn sequential(addr: SocketAddr, n: usize, extra: &[(&str, &str)]) -> io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    // callgrind runs code some fifty times slower than it is.
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut headers = vec![("content-type", "application/json")];
    headers.extend_from_slice(extra);
    let request = procs::request(
        addr,
        "POST",
        "/v1/chat/completions",
        &headers,
        wrk::CHAT_BODY.as_bytes(),
        false,
    );
    let mut buf = Vec::with_capacity(16 * 1024);
    for _ in 0..n {
        stream.write_all(&request)?;
        read_response(&mut stream, &mut buf)?;
    }
    Ok(())
}

/// Reads one response (its body framed by `content-length` or chunked) and checks it
/// is a 200. `buf` is scratch space.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    buf.clear();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("connection closed before a response head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(bad(head.lines().next().unwrap_or("no status line")));
    }
    let length = head.lines().find_map(|line| {
        line.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    let done = |buf: &[u8]| match length {
        Some(len) => buf.len() >= head_end + len,
        None => buf[head_end..].ends_with(b"0\r\n\r\n"),
    };
    if length.is_none() && !head.contains("transfer-encoding: chunked") {
        return Err(bad("a response with neither content-length nor chunks"));
    }
    while !done(buf) {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("connection closed inside a response body"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// Instructions by group in one callgrind output, from `callgrind_annotate`'s table of
/// functions (exclusive counts).
fn groups(annotate: &Path, out: &Path) -> Result<HashMap<String, u64>, Error> {
    let output = Command::new(annotate)
        .args(["--threshold=100", "--inclusive=no", "--auto=no"])
        .arg(out)
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "callgrind_annotate failed on {}: {}",
            out.display(),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let mut groups = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        // `1,234,567 ( 1.23%)  file:function [object]`
        let Some((count, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(n) = count.replace(',', "").parse::<u64>() else {
            continue;
        };
        let Some((_, place)) = rest.split_once(")  ") else {
            continue;
        };
        if place.starts_with("PROGRAM TOTALS") || place.starts_with("events annotated") {
            continue;
        }
        *groups.entry(group(place)).or_insert(0) += n;
    }
    if groups.is_empty() {
        return Err(format!("callgrind_annotate listed no function in {}", out.display()).into());
    }
    Ok(groups)
}

/// The group a `file:function [object]` line belongs to: the crate of the function
/// (of the type, for a trait method or a drop), `Rust std` for core and alloc, and for
/// code without Rust names its object file (`libc`, `nginx`: it has no symbols).
fn group(place: &str) -> String {
    let (place, object) = match place.rsplit_once(" [") {
        Some((p, o)) => (p, o.trim_end_matches(']')),
        None => (place, ""),
    };
    let function = place.split_once(':').map_or(place, |(_, f)| f);
    if function.contains("::") {
        let f = function
            .strip_prefix("core::ptr::drop_in_place<")
            .unwrap_or(function);
        let f = f.trim_start_matches(['<', '&', '*', '[', '(']);
        let f = f.strip_prefix("mut ").unwrap_or(f);
        let krate = f.split("::").next().unwrap_or(f);
        return match krate {
            "core" | "alloc" | "std" => "Rust std".to_owned(),
            _ => krate.to_owned(),
        };
    }
    let object = object.rsplit('/').next().unwrap_or(object);
    if object.starts_with("libc.so") || object.starts_with("ld-linux") {
        return "libc".to_owned();
    }
    if object.is_empty() {
        return "other".to_owned();
    }
    object.to_owned()
}
