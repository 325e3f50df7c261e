//! Where a proxy's CPU goes: `perf record` on its processes during an extra run, read back
//! as shares by crate (or kernel, allocator, copies) and the hottest symbols.
//!
//! The release profile strips keyless's symbols; `CARGO_PROFILE_BENCH_STRIP=false` keeps
//! them (the code is the same), else keyless's own share shows as one unnamed lump.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Error, procs};

/// One proxy's profile.
#[derive(Clone, Debug)]
pub struct Profile {
    /// `(group, share of samples)`, largest first: `kernel`, `libc malloc/free`, a crate...
    pub groups: Vec<(String, f64)>,
    /// `(share, dso, symbol)`, hottest first.
    pub top: Vec<(f64, String, String)>,
    pub samples: u64,
}

/// Samples `pids` at 999 Hz while `load` runs for about `duration`.
pub fn record(
    perf: &Path,
    pids: &[u32],
    duration: Duration,
    data: &Path,
    load: impl FnOnce(Duration) -> Result<(), Error>,
) -> Result<Profile, Error> {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let mut recorder = procs::command(perf)
        .args(["record", "-F", "999", "-o"])
        .arg(data)
        .args(["-p", &pids.join(","), "--", "sleep"])
        .arg(duration.as_secs().max(1).to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // The load outlasts the recording by a second, so every sample is taken under load.
    let loaded = load(duration + Duration::from_secs(1));
    let status = recorder.wait()?;
    loaded?;
    if !status.success() {
        return Err(format!("perf record exited with {status}").into());
    }
    let out = Command::new(perf)
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "dso,symbol",
            "-i",
        ])
        .arg(data)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let profile = parse(&text);
    if profile.top.is_empty() {
        return Err(format!(
            "perf report printed nothing: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(profile)
}

fn parse(text: &str) -> Profile {
    let mut samples = 0;
    let mut top = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# Samples: ") {
            let n = rest.split_whitespace().next().unwrap_or("0");
            let (digits, scale) = match n.strip_suffix('K') {
                Some(k) => (k, 1e3),
                None => (n, 1.0),
            };
            samples = digits.parse::<f64>().map_or(0, |x| (x * scale) as u64);
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        // "12.34%  keyless  [.] hyper::proto::h1::..." (columns padded with spaces)
        let mut words = line.split_whitespace();
        let (Some(share), Some(dso), Some(kind)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let Ok(share) = share.trim_end_matches('%').parse::<f64>() else {
            continue;
        };
        // perf may add empty columns ("-") after the symbol.
        let mut rest: Vec<&str> = words.collect();
        while rest.last() == Some(&"-") {
            rest.pop();
        }
        let symbol = rest.join(" ");
        let dso = if kind == "[k]" {
            "[kernel]".to_owned()
        } else {
            dso.to_owned()
        };
        top.push((share, dso, symbol));
    }
    let mut groups: Vec<(String, f64)> = Vec::new();
    for (share, dso, symbol) in &top {
        let group = group_of(dso, symbol);
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, total)) => *total += share,
            None => groups.push((group, *share)),
        }
    }
    groups.sort_by(|a, b| b.1.total_cmp(&a.1));
    top.sort_by(|a, b| b.0.total_cmp(&a.0));
    Profile {
        groups,
        top,
        samples,
    }
}

/// The kernel, the allocator, copies, or the crate a symbol belongs to.
fn group_of(dso: &str, symbol: &str) -> String {
    if dso == "[kernel]" {
        return "kernel (sockets, scheduling, loopback TCP)".into();
    }
    if dso.starts_with("libc") || dso.starts_with("ld-linux") {
        let allocator = [
            "malloc",
            "free",
            "_int_",
            "consolidate",
            "unlink_chunk",
            "tcache",
            "realloc",
            "calloc",
        ];
        return if allocator.iter().any(|a| symbol.contains(a)) {
            "libc malloc/free".into()
        } else if symbol.contains("memmove")
            || symbol.contains("memcpy")
            || symbol.contains("memset")
        {
            "libc memcpy/memmove".into()
        } else {
            "libc, other (syscall wrappers)".into()
        };
    }
    if dso.starts_with("[vdso]") {
        return "vdso (clock_gettime)".into();
    }
    if symbol.starts_with("0x") {
        return format!("{dso} (stripped: no symbol names)");
    }
    // "<hyper::proto::h1::role::Client as ...>::parse" -> hyper; "tokio::runtime::..." -> tokio
    let name = symbol
        .trim_start_matches(['<', '&', '*'])
        .trim_start_matches("mut ")
        .trim_start_matches("dyn ");
    match name.split_once("::") {
        Some((krate, _)) if !krate.contains(' ') => format!("{dso}: {krate}"),
        // A C program (nginx), or a symbol of no crate.
        _ => dso.to_owned(),
    }
}
