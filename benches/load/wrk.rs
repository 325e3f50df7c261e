//! Closed-loop request load with wrk, read back through a Lua `done` hook.
//!
//! wrk keeps every latency in a per-microsecond histogram, so its percentiles are exact
//! up to p99.9 and beyond (given enough requests): the hook prints them, with the error
//! counts, as `KB ...` lines that are parsed here. wrk is C on epoll, so the load generator
//! takes less of the two cores from the servers than a heavier client would.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::Error;
use crate::procs;

/// The request every row sends: a small chat completion.
pub const CHAT_BODY: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

/// One wrk run.
#[derive(Clone, Debug)]
pub struct Run {
    /// Completed requests (any status).
    pub requests: u64,
    /// What wrk measured the run to last.
    pub elapsed: Duration,
    /// Socket errors (connect, read, write, timeout) and non-2xx/3xx answers.
    pub errors: u64,
    pub non_2xx: u64,
    /// `(percentile, latency in µs)`, ascending.
    pub percentiles: Vec<(f64, f64)>,
    /// wrk's own CPU time, clock ticks.
    pub cpu_ticks: u64,
}

impl Run {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at percentile `p` (one the script prints), in µs.
    pub fn at(&self, p: f64) -> f64 {
        self.percentiles
            .iter()
            .min_by(|a, b| (a.0 - p).abs().total_cmp(&(b.0 - p).abs()))
            .map_or(f64::NAN, |x| x.1)
    }
}

/// The percentiles the script prints: the three the tables show, and a spectrum of
/// 20 points a decade of "nines" (0, 90, 99, 99.9, 99.99) for the chart.
const SCRIPT: &str = r#"
wrk.method = "POST"
wrk.body = '__BODY__'
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("KB summary %d %d %d %d %d %d %d\n", summary.duration,
    summary.requests, e.connect, e.read, e.write, e.timeout, e.status))
  local ps = {50, 99, 99.9}
  for i = 0, 80 do ps[#ps + 1] = 100 * (1 - 10 ^ (-i / 20)) end
  for _, p in ipairs(ps) do
    io.write(string.format("KB pct %.6f %d\n", p, latency:percentile(p)))
  end
  io.write(string.format("KB pct 100 %d\n", latency.max))
end
"#;

/// Writes the Lua script into `dir`.
pub fn write_script(dir: &Path) -> Result<PathBuf, Error> {
    let path = dir.join("chat.lua");
    std::fs::write(&path, SCRIPT.replace("__BODY__", CHAT_BODY))?;
    Ok(path)
}

/// Runs wrk for `duration` (whole seconds) with `connections` against `url`.
pub fn run(
    wrk: &Path,
    script: &Path,
    url: &str,
    connections: u32,
    duration: Duration,
    headers: &[String],
) -> Result<Run, Error> {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get() as u32)
        .min(connections);
    let mut command = procs::command(wrk);
    command
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        // wrk takes whole seconds (s, m, h), no milliseconds.
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .args(["--timeout", "10s", "-s"])
        .arg(script);
    for header in headers {
        command.args(["-H", header]);
    }
    command
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", wrk.display()))?;
    let (mut text, mut errors) = (String::new(), String::new());
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut text)?;
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut errors)?;
    }
    // wrk has closed its output, so it has exited; until it is reaped, /proc still has
    // its CPU time (the load generator's share of the two cores).
    let cpu_ticks = procs::process_ticks(child.id());
    let status = child.wait()?;
    let mut run = parse(&text)
        .ok_or_else(|| format!("wrk against {url} gave no result ({status}):\n{text}{errors}"))?;
    run.cpu_ticks = cpu_ticks;
    Ok(run)
}

fn parse(text: &str) -> Option<Run> {
    let mut summary = None;
    let mut percentiles = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("KB") {
            continue;
        }
        match words.next() {
            Some("summary") => {
                let n: Vec<u64> = words.filter_map(|w| w.parse().ok()).collect();
                if let [duration, requests, connect, read, write, timeout, status] = n[..] {
                    summary = Some((duration, requests, connect + read + write + timeout, status));
                }
            }
            Some("pct") => {
                if let (Some(Ok(p)), Some(Ok(us))) = (
                    words.next().map(str::parse::<f64>),
                    words.next().map(str::parse::<f64>),
                ) {
                    percentiles.push((p, us));
                }
            }
            _ => {}
        }
    }
    let (duration, requests, errors, non_2xx) = summary?;
    percentiles.sort_by(|a, b| a.0.total_cmp(&b.0));
    percentiles.dedup_by(|a, b| a.0 == b.0);
    Some(Run {
        requests,
        elapsed: Duration::from_micros(duration),
        errors,
        non_2xx,
        percentiles,
        cpu_ticks: 0,
    })
}
