//! What keyless's memory holds at its peak under 1,000 streams: heaptrack (Debian's
//! `heaptrack`, optional) on an extra keyless during one paced batch, read back as the
//! largest allocation sites at the moment of peak heap.
//!
//! heaptrack names functions from the symbol table, so keyless must be built unstripped
//! (`CARGO_PROFILE_BENCH_STRIP=false`); with debug line tables
//! (`CARGO_PROFILE_BENCH_DEBUG=line-tables-only`) it also gives file and line.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;

/// The heap at its peak.
#[derive(Clone, Debug)]
pub struct HeapProfile {
    /// Peak heap, bytes (what heaptrack counts: requested sizes, not pages).
    pub peak_bytes: f64,
    /// `(bytes at peak, where)`, largest first; `where` is the first frame past the allocator.
    pub sites: Vec<(f64, String)>,
}

/// Stops the traced keyless (heaptrack's wrapper then writes its file) and reads it back.
pub fn finish(wrapper_pid: u32, data: &Path, timeout: Duration) -> Result<HeapProfile, Error> {
    // heaptrack runs keyless as its child; SIGTERM makes keyless drain and exit.
    let keyless: Vec<u32> = crate::procs::family(wrapper_pid)
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "keyless")
        })
        .collect();
    for pid in &keyless {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    // heaptrack -o FILE writes FILE.zst.
    let zst = std::path::PathBuf::from(format!("{}.zst", data.display()));
    let deadline = Instant::now() + timeout;
    // The wrapper exits once heaptrack_interpret has written and compressed the file.
    while Path::new(&format!("/proc/{wrapper_pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{wrapper_pid}/stat"))
            .is_ok_and(|s| s.contains(") Z "))
    {
        if Instant::now() > deadline {
            return Err("heaptrack did not finish writing in time".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Command::new("heaptrack_print")
        .args([
            "--print-peaks",
            "1",
            "--print-allocators",
            "0",
            "--print-leaks",
            "0",
        ])
        // No --print-histogram: it takes a file name and would write one.
        .args(["--print-temporary", "0", "--peak-limit", "12", "-f"])
        .arg(&zst)
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let profile = parse(&text);
    if profile.sites.is_empty() {
        return Err(format!(
            "heaptrack_print gave no peak consumers: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(profile)
}

/// `12.5M` -> bytes.
fn size(text: &str) -> Option<f64> {
    let (number, scale) = match text.chars().last()? {
        'K' => (&text[..text.len() - 1], 1e3),
        'M' => (&text[..text.len() - 1], 1e6),
        'G' => (&text[..text.len() - 1], 1e9),
        'B' => (&text[..text.len() - 1], 1.0),
        _ => (text, 1.0),
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// Source files of allocation plumbing (the standard library, `bytes`' buffers).
fn is_plumbing_file(at: &str) -> bool {
    at.starts_with("/rustc/")
        || at.contains("/bytes-")
        || at.starts_with("src/bytes_mut.rs")
        || at.contains("/futures-util-")
        || at.contains("/futures-core-")
}

/// `/root/.cargo/registry/src/index.crates.io-xxxx/hyper-1.12.0/src/x.rs:1` -> `hyper-1.12.0/src/x.rs:1`.
fn short_path(at: &str) -> &str {
    match at.split_once("/src/index.crates.io-") {
        Some((_, rest)) => rest
            .split_once('/')
            .map_or(rest, |(_, crate_path)| crate_path),
        None => at,
    }
}

/// Frames that say nothing about who wanted the memory.
fn is_plumbing(frame: &str) -> bool {
    let frame = frame.trim();
    frame.starts_with("0x")
        || [
            "alloc",
            "realloc",
            "allocate",
            "grow",
            "reserve",
            "finish_grow",
            "do_reserve",
            "with_capacity",
            "try_allocate",
            "exchange_malloc",
            "__rust",
            "_RNv",
            "malloc",
            "calloc",
            "aligned_malloc",
            "new_uninit",
            "box_new",
            "try_reserve",
            "try_grow",
            "reserve_inner",
            "reserve_exact",
            "grow_amortized",
            "grow_exact",
            "try_with_capacity",
        ]
        .iter()
        .any(|p| frame.starts_with(p))
}

fn parse(text: &str) -> HeapProfile {
    let mut peak_bytes = 0.0;
    let mut sites: Vec<(f64, String)> = Vec::new();
    let mut current: Option<(f64, Vec<String>)> = None;
    let flush = |current: &mut Option<(f64, Vec<String>)>, sites: &mut Vec<(f64, String)>| {
        if let Some((bytes, lines)) = current.take() {
            // Lines come as a function name, then optionally "at file:line" and "in binary".
            let mut frames: Vec<(String, Option<String>)> = Vec::new();
            for line in lines {
                if let Some(at) = line.strip_prefix("at ") {
                    if let Some(last) = frames.last_mut() {
                        last.1 = Some(at.to_owned());
                    }
                } else if !line.starts_with("in ") {
                    frames.push((line, None));
                }
            }
            let place = frames
                .iter()
                .find(|(name, at)| {
                    !is_plumbing(name) && !at.as_deref().is_some_and(is_plumbing_file)
                })
                .map_or_else(
                    || "?".to_owned(),
                    |(name, at)| match at {
                        Some(at) => format!("{name} ({})", short_path(at)),
                        None => name.clone(),
                    },
                );
            sites.push((bytes, place.chars().take(160).collect()));
        }
    };
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed
            .strip_suffix(" calls from:")
            .or_else(|| trimmed.strip_suffix(" calls from"))
        {
            // "8.62M consumed over 1606" or "64.56M peak memory consumed over 173610"
            let first = rest.split_whitespace().next().and_then(size);
            if rest.contains("peak memory consumed") {
                // A top-level allocator entry: its callers follow as indented blocks.
                flush(&mut current, &mut sites);
                peak_bytes += first.unwrap_or(0.0);
                continue;
            }
            flush(&mut current, &mut sites);
            if let Some(bytes) = first {
                current = Some((bytes, Vec::new()));
            }
            continue;
        }
        if trimmed.starts_with("and ") && trimmed.contains(" from ") {
            flush(&mut current, &mut sites);
            continue;
        }
        if let Some((_, frames)) = current.as_mut()
            && !trimmed.is_empty()
            && frames.len() < 40
        {
            frames.push(trimmed.to_owned());
        }
    }
    flush(&mut current, &mut sites);
    // The same call site can sit under several allocator entries (alloc, realloc).
    let mut merged: Vec<(f64, String)> = Vec::new();
    for (bytes, place) in sites {
        match merged.iter_mut().find(|(_, p)| *p == place) {
            Some((b, _)) => *b += bytes,
            None => merged.push((bytes, place)),
        }
    }
    merged.sort_by(|a, b| b.0.total_cmp(&a.0));
    HeapProfile {
        peak_bytes,
        sites: merged,
    }
}
