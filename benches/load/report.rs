//! Medians, targets, the markdown of BENCHMARKS.md and the latency chart.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::{Error, Results, Row, StreamCell, StreamMode};

/// Nearest-rank percentile of unsorted samples (NaN when there are none).
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// One row at one connection count, over all rounds.
struct Summary {
    rps: f64,
    rps_min: f64,
    rps_max: f64,
    /// Medians over rounds, µs.
    p50: f64,
    p99: f64,
    p999: f64,
    /// CPU milliseconds per 10,000 requests, all rounds pooled.
    proxy_ms_per_10k: Option<f64>,
    upstream_ms_per_10k: f64,
    peak_kib: Option<u64>,
    wrk_ms_per_10k: f64,
    /// Medians over rounds of the machine's busy share and of other work's share.
    busy_share: f64,
    other_share: f64,
    /// Runs measured more than once because the machine was noisy.
    repeated: usize,
    /// `(percentile, µs)`: the median over rounds at each percentile wrk printed.
    spectrum: Vec<(f64, f64)>,
}

fn summarize(results: &Results, row: Row, connections: u32) -> Option<Summary> {
    let cells: Vec<_> = results
        .cells
        .iter()
        .filter(|c| c.row == row && c.connections == connections)
        .collect();
    let first = cells.first()?;
    let rps: Vec<f64> = cells.iter().map(|c| c.run.rps()).collect();
    let at = |p: f64| median(cells.iter().map(|c| c.run.at(p)).collect());
    let requests: u64 = cells.iter().map(|c| c.run.requests).sum::<u64>().max(1);
    let per_10k = |ticks: u64| {
        ticks as f64 / results.clock_ticks as f64 * 1000.0 / requests as f64 * 10_000.0
    };
    Some(Summary {
        rps: median(rps.clone()),
        rps_min: rps.iter().copied().fold(f64::INFINITY, f64::min),
        rps_max: rps.iter().copied().fold(0.0, f64::max),
        p50: at(50.0),
        p99: at(99.0),
        p999: at(99.9),
        proxy_ms_per_10k: (row != Row::Direct)
            .then(|| per_10k(cells.iter().map(|c| c.proxy_ticks).sum())),
        upstream_ms_per_10k: per_10k(cells.iter().map(|c| c.upstream_ticks).sum()),
        peak_kib: cells.iter().filter_map(|c| c.proxy_peak_kib).max(),
        wrk_ms_per_10k: per_10k(cells.iter().map(|c| c.run.cpu_ticks).sum()),
        busy_share: median(
            cells
                .iter()
                .map(|c| c.machine_busy as f64 / c.machine_total.max(1) as f64)
                .collect(),
        ),
        other_share: median(cells.iter().map(|c| c.other_share()).collect()),
        repeated: cells.iter().filter(|c| c.tries > 1).count(),
        spectrum: first
            .run
            .percentiles
            .iter()
            .map(|&(p, _)| (p, at(p)))
            .collect(),
    })
}

/// Streams of one row and mode, all rounds pooled.
struct StreamSummary {
    streams: usize,
    completed: usize,
    /// The fewest streams open at once in any batch.
    open_min: usize,
    ttfb: Vec<f64>,
    gaps: Vec<f64>,
    events: (usize, usize),
    peak_kib: Option<u64>,
    listen_overflows: u64,
    /// keyless's CPU ticks over all batches, and the events it relayed.
    proxy_ticks: u64,
    events_total: usize,
}

fn summarize_streams(cells: &[StreamCell], row: Row, mode: StreamMode) -> Option<StreamSummary> {
    let cells: Vec<_> = cells
        .iter()
        .filter(|c| c.row == row && c.mode == mode)
        .collect();
    if cells.is_empty() {
        return None;
    }
    Some(StreamSummary {
        streams: cells.iter().map(|c| c.outcome.streams).sum(),
        completed: cells.iter().map(|c| c.outcome.completed).sum(),
        open_min: cells.iter().map(|c| c.outcome.peak_open).min().unwrap_or(0),
        ttfb: cells
            .iter()
            .flat_map(|c| c.outcome.ttfb_us.iter().copied())
            .collect(),
        gaps: cells
            .iter()
            .flat_map(|c| c.outcome.gaps_us.iter().copied())
            .collect(),
        events: (
            cells.iter().map(|c| c.outcome.events.0).min().unwrap_or(0),
            cells.iter().map(|c| c.outcome.events.1).max().unwrap_or(0),
        ),
        peak_kib: cells.iter().filter_map(|c| c.proxy_peak_kib).max(),
        proxy_ticks: cells.iter().filter_map(|c| c.proxy_ticks).sum(),
        listen_overflows: cells.iter().map(|c| c.listen_overflows).sum(),
        // Gaps are events less one a stream; count the events themselves.
        events_total: cells
            .iter()
            .map(|c| c.outcome.gaps_us.len() + c.outcome.completed)
            .sum(),
    })
}

/// keyless's CPU (µs) an event relayed, connection set-up included.
fn cpu_us_an_event(results: &Results, s: &StreamSummary) -> f64 {
    s.proxy_ticks as f64 / results.clock_ticks as f64 * 1e6 / s.events_total.max(1) as f64
}

fn ms(us: f64) -> String {
    if us.is_nan() {
        "-".into()
    } else {
        format!("{:.3}", us / 1000.0)
    }
}

fn added_ms(us: f64) -> String {
    if us.is_nan() {
        "-".into()
    } else {
        format!("{:+.3}", us / 1000.0)
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

/// BENCHMARKS.md.
pub fn markdown(results: &Results, image: &str) -> String {
    let plan = &results.plan;
    let m = &results.machine;
    let v = &results.versions;
    let mut out = String::new();
    let date = crate::procs::output("date", ["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let _ = writeln!(out, "# keyless load benchmark\n");
    // The settings this run was started with (cargo passes its environment on to benches).
    let mut command: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("CARGO_PROFILE_") || k.starts_with("KEYLESS_BENCH_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    command.sort();
    command.push("cargo bench --bench load".into());
    if plan.smoke {
        command.push("-- --smoke".into());
    }
    let _ = writeln!(
        out,
        "Written by `{}` on {date}{}. Every figure below comes from this one run on this one \
         machine: compare ratios, not absolute numbers, across machines.\n",
        command.join(" "),
        if plan.smoke {
            " (smoke mode: a few seconds a row, figures are rough)"
        } else {
            ""
        }
    );
    if !results.problems.is_empty() {
        let _ = writeln!(
            out,
            "**This run had problems; its figures are not valid:**\n"
        );
        for p in &results.problems {
            let _ = writeln!(out, "- {p}");
        }
        out.push('\n');
    }

    let _ = writeln!(out, "## Machine and versions\n");
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(
        out,
        "| machine | {} cores (`nproc`), {}, {:.0} GiB |",
        m.cores, m.cpu, m.memory_gib
    );
    let _ = writeln!(out, "| system | {}, Linux {} |", m.os, m.kernel);
    let _ = writeln!(out, "| keyless | {} |", v.keyless);
    let _ = writeln!(out, "| nginx | {} |", v.nginx);
    let _ = writeln!(out, "| load generator | {} |", v.wrk);
    let _ = writeln!(out, "| rustc | {} |\n", v.rustc);

    targets(&mut out, results);
    requests(&mut out, results);
    streams(&mut out, results);
    if let Some(limits) = &results.limits {
        crate::limits::markdown(&mut out, limits);
    }
    if let Some(realtime) = &results.realtime {
        crate::realtime::markdown(&mut out, realtime);
    }

    let _ = writeln!(out, "## Latency distribution\n");
    let _ = writeln!(
        out,
        "![Latency by percentile of direct, nginx and keyless]({image})\n\n\
         Latency (log scale) at each percentile, median of the rounds; the further right, the \
         rarer the request. The gap between a proxy's line and direct's is the latency that \
         proxy adds.\n"
    );
    method(&mut out, results);
    profile(&mut out, results);
    instructions(&mut out, results);
    out
}

fn targets(out: &mut String, results: &Results) {
    let c = results.plan.connections.first().copied().unwrap_or(32);
    let _ = writeln!(out, "## Targets\n");
    let _ = writeln!(
        out,
        "| target | measured | ratio | verdict |\n|---|---|---|---|"
    );
    let mut missed = Vec::new();
    if let (Some(d), Some(n), Some(k)) = (
        summarize(results, Row::Direct, c),
        summarize(results, Row::Nginx, c),
        summarize(results, Row::Keyless, c),
    ) {
        let ratio = k.rps / n.rps;
        let _ = writeln!(
            out,
            "| keyless req/s >= nginx's, {c} connections | keyless {} vs nginx {} req/s | {ratio:.2} | {} |",
            thousands(k.rps),
            thousands(n.rps),
            verdict(ratio >= 1.0)
        );
        if ratio < 1.0 {
            missed.push("throughput");
        }
        let (k_add, n_add) = (k.p99 - d.p99, n.p99 - d.p99);
        let met = k_add <= n_add;
        let _ = writeln!(
            out,
            "| keyless added p99 <= nginx's, {c} connections | keyless {} ms vs nginx {} ms | {} | {} |",
            added_ms(k_add),
            added_ms(n_add),
            if n_add > 0.0 {
                format!("{:.2}", k_add / n_add)
            } else {
                "-".into()
            },
            verdict(met)
        );
        if !met {
            missed.push("added p99 latency");
        }
    }
    let paced_k = summarize_streams(&results.streams, Row::Keyless, StreamMode::Paced);
    let paced_d = summarize_streams(&results.streams, Row::Direct, StreamMode::Paced);
    for row in [Row::Keyless, Row::KeylessApps] {
        let batches: Vec<_> = results.streams.iter().filter(|s| s.row == row).collect();
        if batches.is_empty() {
            continue;
        }
        let peak = batches
            .iter()
            .filter_map(|s| s.proxy_peak_kib)
            .max()
            .unwrap_or(0);
        let done: usize = batches.iter().map(|s| s.outcome.completed).sum();
        let total: usize = batches.iter().map(|s| s.outcome.streams).sum();
        let open = batches
            .iter()
            .map(|s| s.outcome.peak_open)
            .min()
            .unwrap_or(0);
        let limit = 64 * 1024;
        let met = peak < limit && done == total;
        let _ = writeln!(
            out,
            "| {} concurrent streams through {} under 64 MiB RSS, all complete | peak {}; {done}/{total} complete in {} batches; at least {open} open at once | {:.2} of 64 MiB | {} |",
            thousands(results.plan.streams as f64),
            row.name(),
            mib(peak),
            batches.len(),
            peak as f64 / limit as f64,
            verdict(met)
        );
        if !met {
            missed.push(if row == Row::Keyless {
                "streams"
            } else {
                "streams with app keys and usage"
            });
        }
    }
    if let (Some(pk), Some(pa)) = (
        &paced_k,
        summarize_streams(&results.streams, Row::KeylessApps, StreamMode::Paced),
    ) {
        let (k, a) = (cpu_us_an_event(results, pk), cpu_us_an_event(results, &pa));
        let ratio = a / k;
        let met = ratio <= 1.05;
        let _ = writeln!(
            out,
            "| CPU an event of paced streams with app key and usage within +5% of keyless's | {} {a:.1} µs vs keyless {k:.1} µs an event | {ratio:.2} | {} |",
            crate::KEYLESS_APPS,
            verdict(met)
        );
        if !met {
            missed.push("CPU of streams with app keys and usage");
        }
    }
    let per_request = |name: &str| {
        results
            .instructions
            .iter()
            .find(|(row, _)| *row == name)
            .map(|(_, c)| c.per_request)
    };
    // Instruction counts (callgrind) against plain keyless, each within +5%.
    for (row, target, miss) in [
        (
            crate::KEYLESS_KEYS,
            "CPU per request with keys and usage within +5% of keyless without them (callgrind instructions)",
            "instructions with app keys and usage",
        ),
        (
            crate::KEYLESS_APPS,
            "CPU per request with keys, usage and per-app quotas (rpm, tpm and their six x-ratelimit-* headers) within +5% of keyless without them (callgrind instructions)",
            "instructions with app keys, usage and quotas",
        ),
        (
            crate::KEYLESS_OTEL,
            "CPU per request with OTLP export on within +5% of off (callgrind instructions)",
            "instructions with OTLP export",
        ),
    ] {
        let (Some(k), Some(a)) = (per_request("keyless"), per_request(row)) else {
            continue;
        };
        let ratio = a / k;
        let met = ratio <= 1.05;
        let _ = writeln!(
            out,
            "| {target} | {row} {} vs keyless {} | {ratio:.3} | {} |",
            thousands(a),
            thousands(k),
            verdict(met)
        );
        if !met {
            missed.push(miss);
        }
    }
    if let Some((added, local, redis)) = results.limits.as_ref().and_then(|l| l.added_p50(1)) {
        let met = added < crate::limits::TARGET_US;
        let _ = writeln!(
            out,
            "| limits in Redis add < 0.5 ms at p50, 1 connection | redis {} ms vs local {} ms: {} ms; {:.2} Redis decisions a request | {:.2} of 0.5 ms | {} |",
            ms(redis.p50),
            ms(local.p50),
            added_ms(added),
            redis.decisions_per_request,
            added / crate::limits::TARGET_US,
            verdict(met)
        );
        if !met {
            missed.push("Redis-backed limits' latency");
        }
    }
    if let (Some(pk), Some(pd)) = (&paced_k, &paced_d) {
        let added = percentile(&pk.ttfb, 99.0) - percentile(&pd.ttfb, 99.0);
        let met = added < 1000.0;
        let cold = match (
            summarize_streams(&results.streams, Row::Keyless, StreamMode::Cold),
            summarize_streams(&results.streams, Row::Direct, StreamMode::Cold),
        ) {
            (Some(k), Some(d)) => format!(
                "; first batch through a fresh keyless: {} ms",
                added_ms(percentile(&k.ttfb, 99.0) - percentile(&d.ttfb, 99.0))
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "| added time to first byte < 1 ms at p99, paced streams | keyless {} ms vs direct {} ms: {} ms{cold} | {:.2} of 1 ms | {} |",
            ms(percentile(&pk.ttfb, 99.0)),
            ms(percentile(&pd.ttfb, 99.0)),
            added_ms(added),
            added / 1000.0,
            verdict(met)
        );
        if !met {
            missed.push("time to first byte");
        }
    }
    out.push('\n');
    if missed.is_empty() {
        let _ = writeln!(out, "All targets met in this run.\n");
    } else {
        let _ = writeln!(
            out,
            "Missed in this run: {}. Why: *Where the proxies' CPU goes* below for throughput \
             and latency; *Streams* for memory (with the heap at its peak) and time to first \
             byte.\n",
            missed.join(", ")
        );
    }
}

fn requests(out: &mut String, results: &Results) {
    let _ = writeln!(out, "## Requests: small chat completions\n");
    let _ = writeln!(
        out,
        "Medians of {} rounds of {} s a row. *Added* is the row's latency minus direct's at the \
         same percentile; *vs nginx* is keyless's added latency over nginx's.\n",
        results.plan.rounds,
        results.plan.duration.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| conns | row | req/s | range | x direct | p50 ms | p99 ms | p99.9 ms | added p50 | added p99 | added p99.9 | added p99 vs nginx |"
    );
    let _ = writeln!(
        out,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for &c in &results.plan.connections {
        let Some(d) = summarize(results, Row::Direct, c) else {
            continue;
        };
        let n = summarize(results, Row::Nginx, c);
        for row in Row::ALL {
            let Some(s) = summarize(results, row, c) else {
                continue;
            };
            let added = |a: f64, b: f64| {
                if row == Row::Direct {
                    "-".into()
                } else {
                    added_ms(a - b)
                }
            };
            let vs_nginx = match (&n, row) {
                (Some(n), Row::Keyless) if n.p99 > d.p99 => {
                    format!("{:.2}", (s.p99 - d.p99) / (n.p99 - d.p99))
                }
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "| {c} | {} | {} | {}-{} | {:.2} | {} | {} | {} | {} | {} | {} | {vs_nginx} |",
                row.name(),
                thousands(s.rps),
                thousands(s.rps_min),
                thousands(s.rps_max),
                s.rps / d.rps,
                ms(s.p50),
                ms(s.p99),
                ms(s.p999),
                added(s.p50, d.p50),
                added(s.p99, d.p99),
                added(s.p999, d.p999),
            );
        }
    }
    out.push('\n');
    let negative = results.plan.connections.iter().any(|&c| {
        let Some(d) = summarize(results, Row::Direct, c) else {
            return false;
        };
        [Row::Nginx, Row::Keyless].iter().any(|&row| {
            summarize(results, row, c)
                .is_some_and(|s| s.p50 < d.p50 || s.p99 < d.p99 || s.p999 < d.p999)
        })
    });
    if negative {
        let _ = writeln!(
            out,
            "A negative *added* latency is a proxy row faster than direct at that percentile. \
             Each row is a closed loop on a saturated machine: direct runs at about twice a \
             proxy's rate, so its tail holds the scheduling delays of wrk and the simulator \
             sharing two busy cores, which a slower row does not reach. Tails are compared \
             between rows at different rates; CPU per request (below) is the figure that does \
             not depend on it.\n"
        );
    }

    let _ = writeln!(out, "### Where the CPU went\n");
    let _ = writeln!(
        out,
        "User + system CPU time per 10,000 requests (all rounds pooled) of the proxy's \
         processes (nginx: master and workers), of the upstream simulator and of wrk; 100 ms \
         per 10k requests is 10 µs a request. *Machine busy* is the share of all {} cores in \
         use during the runs (median); *other* is the part of it that was none of these three \
         (other processes, kernel threads): a run with more than {:.0}% other was measured \
         again, up to three times, keeping the quietest.\n",
        results.machine.cores,
        crate::NOISY * 100.0
    );
    let _ = writeln!(
        out,
        "| conns | row | proxy CPU ms / 10k req | proxy µs / req | proxy peak RSS | upstream CPU ms / 10k req | wrk CPU ms / 10k req | machine busy | other | runs repeated |"
    );
    let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &c in &results.plan.connections {
        for row in Row::ALL {
            let Some(s) = summarize(results, row, c) else {
                continue;
            };
            let _ = writeln!(
                out,
                "| {c} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0}% | {:.1}% | {} |",
                row.name(),
                s.proxy_ms_per_10k.map_or("-".into(), |x| format!("{x:.0}")),
                s.proxy_ms_per_10k
                    .map_or("-".into(), |x| format!("{:.1}", x / 10.0)),
                s.peak_kib.map_or("-".into(), mib),
                s.upstream_ms_per_10k,
                s.wrk_ms_per_10k,
                s.busy_share * 100.0,
                s.other_share * 100.0,
                s.repeated,
            );
        }
    }
    out.push('\n');
}

fn streams(out: &mut String, results: &Results) {
    let plan = &results.plan;
    let _ = writeln!(out, "## Streams\n");
    let _ = writeln!(
        out,
        "{} SSE chat streams a batch, each on its own connection, each {} content events \
         `x-sim-delay-ms: {}` apart (`x-sim-chunks: {}`). keyless here is a fresh process, so \
         its peak RSS is the streams' own (it was {} right after start).\n\n\
         - *paced*: started evenly over {} ms, shorter than a stream lasts, so all are open at \
         once (*open at once* checks it); {} batches a row, alternated, pooled.\n\
         - *paced, first batch*: the same, but the first batch through each row, kept apart: a \
         fresh process pays one-time costs there. The largest is the kernel growing its file \
         descriptor table as connections pass 256, 512 and 1,024 descriptors: in a \
         multi-threaded process `accept4`/`socket` then wait in `expand_files` -> \
         `synchronize_rcu` for an RCU grace period (10-20 ms on this VM), and every new stream \
         waits behind it. keyless holds two descriptors a stream, so it hits this twice as \
         early as the simulator does.\n\
         - *burst*: all started at the same instant, once a row. *Listen overflows* counts \
         connections the kernel dropped because a listener's accept queue (both ask for 4,096, \
         capped by `net.core.somaxconn`) was full, keyless's or the simulator's; each costs its client a SYN \
         retransmission, one second, which is what a burst's TTFB tail is made of.\n\
         - TTFB runs from before connect to the first body byte; a gap is the time between two \
         consecutive events of a stream as the client reads them.\n\
         - *{}*: a third fresh keyless, started with one app (`rpm`, `tpm` far above the load) \
         and `[usage] stream_include_usage = true`; each stream sends the app key. keyless \
         adds `stream_options.include_usage` upstream, reads the usage event at the end and \
         holds it back from the client, which did not ask for it: the client gets the same \
         events as through plain keyless. Its CPU an event is compared with plain keyless's \
         paced batches of the same run.\n",
        thousands(plan.streams as f64),
        plan.chunks,
        plan.delay_ms,
        plan.chunks,
        results.stream_idle_kib.map_or("-".into(), mib),
        plan.ramp.as_millis(),
        plan.stream_rounds,
        crate::KEYLESS_APPS,
    );
    let _ = writeln!(
        out,
        "| start | row | complete | open at once | events a stream | TTFB p50 ms | TTFB p99 ms | gap p50 ms | gap p99 ms | gap max ms | keyless peak RSS | listen overflows |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for mode in [StreamMode::Cold, StreamMode::Paced, StreamMode::Burst] {
        for row in Row::STREAMS {
            let Some(s) = summarize_streams(&results.streams, row, mode) else {
                continue;
            };
            let _ = writeln!(
                out,
                "| {} | {} | {}/{} | {} | {}-{} | {} | {} | {} | {} | {} | {} | {} |",
                mode.name(),
                row.name(),
                s.completed,
                s.streams,
                s.open_min,
                s.events.0,
                s.events.1,
                ms(percentile(&s.ttfb, 50.0)),
                ms(percentile(&s.ttfb, 99.0)),
                ms(percentile(&s.gaps, 50.0)),
                ms(percentile(&s.gaps, 99.0)),
                ms(percentile(&s.gaps, 100.0)),
                s.peak_kib.map_or("-".into(), mib),
                s.listen_overflows,
            );
        }
    }
    out.push('\n');
    for mode in [StreamMode::Cold, StreamMode::Paced, StreamMode::Burst] {
        for row in [Row::Keyless, Row::KeylessApps] {
            if let (Some(k), Some(d)) = (
                summarize_streams(&results.streams, row, mode),
                summarize_streams(&results.streams, Row::Direct, mode),
            ) {
                let add =
                    |v: &[f64], w: &[f64], p: f64| added_ms(percentile(v, p) - percentile(w, p));
                let _ = writeln!(
                    out,
                    "- {}: {} adds {} ms to TTFB at p50 and {} ms at p99; {} ms to the gap at p50, {} ms at p99.",
                    mode.name(),
                    row.name(),
                    add(&k.ttfb, &d.ttfb, 50.0),
                    add(&k.ttfb, &d.ttfb, 99.0),
                    add(&k.gaps, &d.gaps, 50.0),
                    add(&k.gaps, &d.gaps, 99.0),
                );
            }
        }
    }
    let plain = summarize_streams(&results.streams, Row::Keyless, StreamMode::Paced);
    for row in [Row::Keyless, Row::KeylessApps] {
        let Some(k) = summarize_streams(&results.streams, row, StreamMode::Paced) else {
            continue;
        };
        let seconds = k.proxy_ticks as f64 / results.clock_ticks as f64;
        let vs = match (&plain, row) {
            (Some(p), Row::KeylessApps) => {
                // keyless read one event a stream more than it passed on: the usage event.
                let read = k.events_total + k.completed;
                let per_read =
                    k.proxy_ticks as f64 / results.clock_ticks as f64 * 1e6 / read.max(1) as f64;
                format!(
                    "; {:.2} x keyless's. It read {} events from upstream, the held-back usage \
                     event of each stream included: {per_read:.1} µs an event read, {:.2} x keyless's",
                    cpu_us_an_event(results, &k) / cpu_us_an_event(results, p),
                    thousands(read as f64),
                    per_read / cpu_us_an_event(results, p)
                )
            }
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "- {}'s CPU while relaying paced streams: {:.1} µs an event, connection set-up \
             included ({:.2} s for {} events){vs}.",
            row.name(),
            cpu_us_an_event(results, &k),
            seconds,
            thousands(k.events_total as f64)
        );
    }
    let other = results
        .streams
        .iter()
        .map(|c| c.other_share)
        .fold(0.0, f64::max);
    let _ = writeln!(
        out,
        "- Other work took at most {:.1}% of the machine during a stream batch.",
        other * 100.0
    );
    out.push('\n');
    if let Some(heap) = &results.heap {
        let _ = writeln!(
            out,
            "### What keyless's memory holds under {} streams\n\n\
             heaptrack on a separate keyless through one paced batch (it slows keyless, so none \
             of the figures above come from it): {:.1} MB of heap at the peak, about {:.0} KB a \
             stream. The largest allocation sites at that moment (first frame past the \
             allocator):\n",
            thousands(plan.streams as f64),
            heap.peak_bytes / 1e6,
            heap.peak_bytes / 1e3 / plan.streams.max(1) as f64,
        );
        let _ = writeln!(
            out,
            "| heap at peak | per stream | allocated in |\n|---:|---:|---|"
        );
        for (bytes, place) in heap.sites.iter().filter(|(b, _)| *b >= 100e3).take(12) {
            let _ = writeln!(
                out,
                "| {:.1} MB | {:.1} KB | `{}` |",
                bytes / 1e6,
                bytes / 1e3 / plan.streams.max(1) as f64,
                place.replace('`', "'")
            );
        }
        out.push('\n');
    }
}

fn method(out: &mut String, results: &Results) {
    let plan = &results.plan;
    let _ = writeln!(out, "## How this was measured\n");
    let _ = writeln!(
        out,
        "- Everything on 127.0.0.1, on the machine above: the load generator, the proxy and the \
         upstream share its {} cores, so a proxy's CPU per request decides its throughput.\n\
         - Upstream: `keyless simulator` (the embedded Azure OpenAI simulator), shared by all rows.\n\
         - direct: wrk to the simulator's `/openai/v1/chat/completions` with a bearer token from \
         its `/msi/token`.\n\
         - keyless: `keyless serve --endpoint http://<simulator> --credential managed-identity` \
         with `IDENTITY_ENDPOINT`/`IDENTITY_HEADER` pointing at the simulator; \
         `KEYLESS_LOG=warn`, so the per-request info line is not written (it is on by default); \
         `--workers` at its default, one a core: each worker thread runs its own single-threaded \
         tokio runtime and upstream pool, and an acceptor hands it connections.\n\
         - nginx: `worker_processes {}` (one a core, as keyless's threads), an upstream \
         `keepalive 256` pool, `proxy_http_version 1.1`, `proxy_set_header Connection \"\"`, \
         `proxy_buffering off`, `access_log off`, `keepalive_requests 1000000` on both sides, and \
         a static `Authorization: Bearer` header standing in for the Entra token it cannot get. \
         Request bodies are read whole before forwarding (nginx's default `proxy_request_buffering \
         on`), as keyless reads a JSON body to find the model.\n\
         - Requests: `wrk -t{} -c<conns> -d{}s --timeout 10s`, a Lua script posting \
         `{}` and printing wrk's exact percentiles in its `done` hook. Rounds: {}; in each, \
         both connection counts, the three rows rotated by one place a round \
         (direct-nginx-keyless, nginx-keyless-direct, ...). A {} s warm-up a row first.\n\
         - CPU: `utime + stime` from `/proc/PID/stat` before and after each run. Peak RSS: \
         `VmHWM` from `/proc/PID/status`, {} (for nginx, the sum over its processes).\n\
         - The machine was {:.0}% busy just before the first run (the benchmark waits up to two \
         minutes for other work to fall under 10%).\n",
        results.machine.cores,
        results.nginx_workers,
        results.machine.cores.min(32),
        plan.duration.as_secs_f64(),
        crate::wrk::CHAT_BODY,
        plan.rounds,
        plan.warmup.as_secs_f64(),
        if results.peak_reset {
            "reset before each run through `/proc/PID/clear_refs`"
        } else {
            "the process's peak since start (this kernel refused `clear_refs`)"
        },
        results.busy_at_start * 100.0,
    );
}

fn profile(out: &mut String, results: &Results) {
    let _ = writeln!(out, "## Where the proxies' CPU goes (perf)\n");
    if results.profiles.is_empty() {
        let _ = writeln!(
            out,
            "{}\n",
            if results.plan.smoke {
                "Not taken in smoke mode."
            } else {
                "Not taken: `perf` is not available here (Debian's `linux-perf`), or `--no-profile`."
            }
        );
        return;
    }
    let c = results.plan.connections.first().copied().unwrap_or(32);
    let _ = writeln!(
        out,
        "`perf record -F 999` on each proxy's processes during an extra {} s run at {c} \
         connections, after (and not part of) the measured rounds; self time by symbol, grouped. \
         *µs / req* spreads the proxy's measured CPU per request (table above) over the groups.\n",
        results.plan.profile.map_or(0, |d| d.as_secs())
    );
    for (row, p) in &results.profiles {
        let per_req = summarize(results, *row, c)
            .and_then(|s| s.proxy_ms_per_10k)
            .map(|ms| ms / 10.0);
        let _ = writeln!(
            out,
            "**{}** ({} samples{}):\n",
            row.name(),
            thousands(p.samples as f64),
            per_req.map_or(String::new(), |us| format!(", {us:.1} µs CPU a request"))
        );
        let _ = writeln!(out, "| where | share | µs / req |\n|---|---:|---:|");
        let mut rest = 0.0;
        for (i, (group, share)) in p.groups.iter().enumerate() {
            if i >= 12 || *share < 0.5 {
                rest += share;
                continue;
            }
            let _ = writeln!(
                out,
                "| {group} | {share:.1}% | {} |",
                per_req.map_or("-".into(), |us| format!("{:.1}", us * share / 100.0))
            );
        }
        if rest > 0.0 {
            let _ = writeln!(
                out,
                "| everything else | {rest:.1}% | {} |",
                per_req.map_or("-".into(), |us| format!("{:.1}", us * rest / 100.0))
            );
        }
        out.push('\n');
        if *row == Row::Keyless {
            if p.groups.iter().any(|(g, _)| g.contains("stripped")) {
                let _ = writeln!(
                    out,
                    "keyless was built stripped (`strip = true` in the release profile), so its own \
                     code has no names here: `CARGO_PROFILE_BENCH_STRIP=false cargo bench --bench \
                     load` keeps them (the machine code is the same).\n"
                );
            }
            let _ = writeln!(out, "Hottest symbols of keyless:\n\n```");
            for (share, dso, symbol) in p.top.iter().take(30) {
                let symbol: String = symbol.chars().take(130).collect();
                let _ = writeln!(out, "{share:5.2}%  {dso:<10} {symbol}");
            }
            let _ = writeln!(out, "```\n");
        }
    }
}

// ---------------------------------------------------------------------------------------
// The chart

const COLORS: [(Row, RGBColor); 3] = [
    (Row::Direct, RGBColor(0x44, 0x77, 0xaa)),
    (Row::Nginx, RGBColor(0x22, 0x99, 0x55)),
    (Row::Keyless, RGBColor(0xcc, 0x33, 0x44)),
];

/// Percentile -> "nines" (0 -> 0, 90 -> 1, 99 -> 2, 99.9 -> 3, ...), the usual x axis of a
/// latency spectrum: each step right is ten times rarer.
fn nines(p: f64) -> f64 {
    -(1.0 - p / 100.0).log10()
}

fn nines_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let text = format!("{p:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("p{text}")
}

/// A connection count and each row's `(nines, ms)` points.
type Panel = (u32, Vec<(Row, Vec<(f64, f64)>)>);

/// Latency by percentile, one panel a connection count, direct/nginx/keyless in each.
pub fn svg(results: &Results, path: &Path) -> Result<(), Error> {
    const MAX_NINES: f64 = 4.0;
    let panels: Vec<Panel> = results
        .plan
        .connections
        .iter()
        .map(|&c| {
            let rows = Row::ALL
                .iter()
                .filter_map(|&row| {
                    let s = summarize(results, row, c)?;
                    let points = s
                        .spectrum
                        .iter()
                        .filter(|(p, us)| {
                            (50.0..100.0).contains(p) && nines(*p) <= MAX_NINES + 1e-9 && *us > 0.0
                        })
                        .map(|&(p, us)| (nines(p), us / 1000.0))
                        .collect();
                    Some((row, points))
                })
                .collect();
            (c, rows)
        })
        .collect();
    let width = 560 * panels.len().max(1) as u32;
    let root = SVGBackend::new(path, (width, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(
            "Request latency from the median to p99.99: direct vs nginx vs keyless (small chat bodies, loopback)",
            ("sans-serif", 18),
        )
        .map_err(|e| e.to_string())?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (area, (connections, rows)) in areas.iter().zip(&panels) {
        let all = rows.iter().flat_map(|(_, pts)| pts.iter().map(|p| p.1));
        let (lo, hi) = all.fold((f64::INFINITY, 0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
        if !lo.is_finite() {
            continue;
        }
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{connections} connections"), ("sans-serif", 16))
            .margin(14)
            .margin_right(30)
            .x_label_area_size(36)
            .y_label_area_size(56)
            // From the median rightwards: below it every row is fast and the curves say little.
            .build_cartesian_2d(nines(50.0)..MAX_NINES, (lo * 0.8..hi * 1.25).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_labels(5)
            .x_label_formatter(&|x| nines_label(*x))
            .y_desc("latency (ms, log scale)")
            .y_label_formatter(&|y| {
                if *y >= 10.0 {
                    format!("{y:.0}")
                } else if *y >= 1.0 {
                    format!("{y:.1}")
                } else {
                    format!("{y:.2}")
                }
            })
            .x_desc("percentile")
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| e.to_string())?;
        for (row, points) in rows {
            let color = COLORS
                .iter()
                .find(|(r, _)| r == row)
                .map_or(BLACK, |(_, c)| *c);
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(row.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

fn instructions(out: &mut String, results: &Results) {
    let _ = writeln!(out, "## Instructions a request (callgrind)\n");
    if results.instructions.is_empty() {
        let _ = writeln!(
            out,
            "{}\n",
            if results.plan.smoke && !results.plan.callgrind {
                "Not counted in smoke mode (`--callgrind` counts them)."
            } else {
                "Not counted: valgrind is not installed (Debian's `valgrind`), or `--no-profile`."
            }
        );
        return;
    }
    let _ = writeln!(
        out,
        "User-space instructions a request costs each proxy, counted by callgrind (valgrind): \
         unlike CPU time, the same from run to run, so a change's cost or saving shows here \
         when the machine's noise hides it in the tables above. Each proxy ran alone as one \
         process (keyless `--workers 1`, nginx `master_process off`) relaying {} and, in a \
         second run, {} chat requests one after another on one keep-alive connection; the \
         difference over the {} extra requests leaves start-up out. Not counted: the \
         kernel's work (the larger share of both, per the perf profiles) and the time cache \
         misses take.\n",
        crate::instructions::FEW,
        crate::instructions::MANY,
        crate::instructions::MANY - crate::instructions::FEW,
    );
    let per = |name: &str| {
        results
            .instructions
            .iter()
            .find(|(row, _)| *row == name)
            .map(|(_, c)| c.per_request)
    };
    let (nginx, keyless) = (per("nginx"), per("keyless"));
    let _ = writeln!(
        out,
        "| proxy | instructions a request | x nginx | x keyless |\n|---|---:|---:|---:|"
    );
    for (row, count) in &results.instructions {
        let ratio = |base: Option<f64>| {
            base.map_or("-".into(), |n| format!("{:.3}", count.per_request / n))
        };
        let _ = writeln!(
            out,
            "| {row} | {} | {} | {} |",
            thousands(count.per_request),
            ratio(nginx),
            ratio(keyless),
        );
    }
    let _ = writeln!(
        out,
        "\n`{}`: the same requests carrying an app key (checked against its SHA-256) with \
         usage read from each answer and `stream_include_usage` on, the app without rpm or \
         tpm. `{}`: the same with the app's rpm and tpm taken and their six \
         `x-ratelimit-*` headers written. `{}`: plain keyless exporting its spans over \
         OTLP/HTTP (`--otlp-endpoint`, batches every 200 ms) to a sink of the bench's that \
         reads each body and answers 200, keyless kept a second past the last answer in \
         both runs so the last batches are counted. Each target is within +5% of keyless.",
        crate::KEYLESS_KEYS,
        crate::KEYLESS_APPS,
        crate::KEYLESS_OTEL,
    );
    out.push('\n');
    for (row, count) in &results.instructions {
        let _ = writeln!(
            out,
            "**{row}**, by the crate of the function running (code inlined into a function \
             counts as that function's):\n\n| where | instructions a request | share |\n|---|---:|---:|",
        );
        let mut rest = 0.0;
        for (i, (group, n)) in count.groups.iter().enumerate() {
            if i >= 12 {
                rest += n;
                continue;
            }
            let _ = writeln!(
                out,
                "| {group} | {} | {:.1}% |",
                thousands(*n),
                100.0 * n / count.per_request
            );
        }
        if rest > 0.0 {
            let _ = writeln!(
                out,
                "| everything else | {} | {:.1}% |",
                thousands(rest),
                100.0 * rest / count.per_request
            );
        }
        out.push('\n');
    }
}
