//! `cargo bench --bench load`: keyless against nginx and against no proxy at all, on
//! loopback, in front of the same fast simulated Azure OpenAI upstream.
//!
//! One run: install wrk and nginx when missing (Debian's packages), start the simulator,
//! keyless and nginx on ephemeral ports, then measure in rounds whose rows are rotated
//! (direct, nginx, keyless; nginx, keyless, direct; ...) so drift of the machine spreads
//! over all three; report medians. Then 1,000 SSE streams held open at once, direct,
//! through a fresh keyless, and through a fresh keyless with app keys and usage accounting
//! on; then, when `redis-server` is installed, the latency limits kept in Redis add over the
//! same limits kept in the process. With perf, heaptrack and valgrind present (none is required),
//! also where each proxy's CPU goes, keyless's heap at its peak, and the user-space
//! instructions a request costs each proxy (callgrind: the figure noise does not move).
//! Prints a markdown table and writes it to `BENCHMARKS.md` with `benches/latency.svg`;
//! `--smoke` (or `KEYLESS_BENCH_SMOKE=1`) does the same in seconds and writes under
//! `target/load-smoke/` instead, leaving the committed figures alone.
//!
//! Why a Rust bench binary rather than a shell script: `cargo bench` builds the release
//! binary it measures (`CARGO_BIN_EXE_keyless`), the stream client must be light enough not
//! to compete with the proxy for the two cores (a Python asyncio client of 1,000 streams
//! would), and the statistics, table and chart stay in one typed program.
//!
//! Flags after `--`: `--smoke`, `--no-profile` (skip perf, heaptrack and callgrind),
//! `--callgrind` (count instructions in smoke mode too, some minutes more),
//! `--no-install` (fail instead of running apt-get). Environment: `KEYLESS_BENCH_ROUNDS`,
//! `KEYLESS_BENCH_SECONDS` (rounds and seconds a row), `KEYLESS_BENCH_RAMP_MS` (paced
//! streams' start window), `KEYLESS_BENCH_DUMP=DIR` (each stream's start and TTFB as CSV),
//! `KEYLESS_BENCH_CALLGRIND=1` (as `--callgrind`).
//! `CARGO_PROFILE_BENCH_STRIP=false` keeps keyless's symbols for the profiles.
//!
//! A benchmark, not a test: it asserts no timing. It exits non-zero only when the set-up
//! is broken (a server fails, a row answers errors, a stream does not complete), so a
//! smoke run in CI catches a broken harness or proxy without flaking on a slow machine.

#![forbid(unsafe_code)]

mod env;
mod heap;
mod instructions;
mod limits;
mod otlp;
mod procs;
mod profile;
mod realtime;
mod report;
mod streams;
mod wrk;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use procs::{Proc, Spawn};

/// Errors end the run with a message; nothing here is recoverable.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A row of the tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Row {
    Direct,
    Nginx,
    Keyless,
    /// keyless with an app key checked and usage read from the answers (`KEYLESS_APPS`):
    /// a row of the streams (and of the instruction counts), not of the request rounds.
    KeylessApps,
}

impl Row {
    /// The rows of the request rounds.
    pub const ALL: [Row; 3] = [Row::Direct, Row::Nginx, Row::Keyless];
    /// The rows of the streams.
    pub const STREAMS: [Row; 3] = [Row::Direct, Row::Keyless, Row::KeylessApps];

    pub fn name(self) -> &'static str {
        match self {
            Row::Direct => "direct",
            Row::Nginx => "nginx",
            Row::Keyless => "keyless",
            Row::KeylessApps => KEYLESS_APPS,
        }
    }
}

/// The app key of the shared-gateway row.
const APP_KEY: &str = "sk-bench-app-key";
/// That row's name.
pub const KEYLESS_APPS: &str = "keyless + app key + usage";
/// The same app key without quotas (no rpm, no tpm), usage read: an instruction count row.
pub const KEYLESS_KEYS: &str = "keyless + app key + usage, no quotas";
/// keyless exporting its spans over OTLP/HTTP to a sink of the bench's: an instruction
/// count row.
pub const KEYLESS_OTEL: &str = "keyless + OTLP export";

/// How much to measure.
#[derive(Clone, Debug)]
pub struct Plan {
    pub smoke: bool,
    pub rounds: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: Vec<u32>,
    pub stream_rounds: usize,
    pub streams: usize,
    pub chunks: u32,
    pub delay_ms: u32,
    /// Paced streams start evenly over this long; shorter than one stream lasts, so all
    /// of them are open at once.
    pub ramp: Duration,
    pub profile: Option<Duration>,
    /// Count instructions under callgrind (when valgrind is installed).
    pub callgrind: bool,
    pub may_install: bool,
}

impl Plan {
    fn from_args() -> Option<Plan> {
        let mut smoke =
            std::env::var("KEYLESS_BENCH_SMOKE").is_ok_and(|v| !v.is_empty() && v != "0");
        let mut profile = true;
        let mut callgrind =
            std::env::var("KEYLESS_BENCH_CALLGRIND").is_ok_and(|v| !v.is_empty() && v != "0");
        let mut may_install = true;
        let mut filters = Vec::new();
        let mut benching = false;
        for arg in std::env::args().skip(1) {
            match arg.as_str() {
                "--bench" => benching = true,
                "--smoke" => smoke = true,
                "--no-profile" => profile = false,
                "--callgrind" => callgrind = true,
                "--no-install" => may_install = false,
                // cargo passes --bench to harness-less benches; other flags are criterion's.
                a if a.starts_with('-') => {}
                filter => filters.push(filter.to_owned()),
            }
        }
        // `cargo test --benches` (and `--all-targets`) runs this binary without `--bench`: a
        // benchmark is not a test, so it does nothing there.
        if !benching {
            println!("load bench: not run outside `cargo bench` (cargo bench --bench load)");
            return None;
        }
        // `cargo bench -- classify` filters criterion benches: the load run is not one of them.
        if !filters.is_empty() && !filters.iter().any(|f| "load".contains(f.as_str())) {
            return None;
        }
        let number = |key: &str, default: u64| {
            std::env::var(key)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Some(if smoke {
            Plan {
                smoke,
                rounds: 1,
                duration: Duration::from_secs(2),
                warmup: Duration::from_secs(1),
                connections: vec![32, 256],
                stream_rounds: 1,
                streams: 1000,
                chunks: 20,
                delay_ms: 50,
                ramp: Duration::from_millis(number("KEYLESS_BENCH_RAMP_MS", 1000)),
                profile: None,
                callgrind,
                may_install,
            }
        } else {
            Plan {
                smoke,
                rounds: number("KEYLESS_BENCH_ROUNDS", 5) as usize,
                duration: Duration::from_secs(number("KEYLESS_BENCH_SECONDS", 10)),
                warmup: Duration::from_secs(3),
                connections: vec![32, 256],
                stream_rounds: 3,
                streams: 1000,
                chunks: 20,
                delay_ms: 50,
                ramp: Duration::from_millis(number("KEYLESS_BENCH_RAMP_MS", 1000)),
                profile: profile.then_some(Duration::from_secs(8)),
                callgrind: profile,
                may_install,
            }
        })
    }
}

/// One wrk run of one row.
#[derive(Clone, Debug)]
pub struct Cell {
    pub row: Row,
    pub connections: u32,
    pub run: wrk::Run,
    /// CPU ticks the proxy (keyless, or nginx's master and workers) and the upstream spent.
    pub proxy_ticks: u64,
    pub upstream_ticks: u64,
    /// The proxy's peak RSS during the run (KiB), when there is a proxy.
    pub proxy_peak_kib: Option<u64>,
    /// Busy and total clock ticks of the whole machine (all cores) during the run.
    pub machine_busy: u64,
    pub machine_total: u64,
    /// 1 unless the run was repeated because other work shared the machine.
    pub tries: u32,
}

impl Cell {
    /// The share of the machine's capacity that went to anything but the proxy, the
    /// upstream and wrk: other processes, kernel threads.
    pub fn other_share(&self) -> f64 {
        let ours = self.proxy_ticks + self.upstream_ticks + self.run.cpu_ticks;
        self.machine_busy.saturating_sub(ours) as f64 / self.machine_total.max(1) as f64
    }
}

/// A run in which other work took more than this share of the machine is repeated (twice
/// at most, keeping the quietest): developers' builds share this machine.
const NOISY: f64 = 0.10;

/// How a batch of streams starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamMode {
    /// Paced, the first batch through the row: a fresh keyless pays one-time costs here
    /// (its file descriptor table grows, its heap grows), so this batch is kept apart.
    Cold,
    /// Started evenly over `Plan::ramp`.
    Paced,
    /// All started at the same instant.
    Burst,
}

impl StreamMode {
    pub fn name(self) -> &'static str {
        match self {
            StreamMode::Cold => "paced, first batch",
            StreamMode::Paced => "paced",
            StreamMode::Burst => "burst",
        }
    }
}

/// One batch of streams through one row.
#[derive(Clone, Debug)]
pub struct StreamCell {
    pub row: Row,
    pub mode: StreamMode,
    pub outcome: streams::Outcome,
    pub proxy_peak_kib: Option<u64>,
    /// keyless's CPU ticks during the batch.
    pub proxy_ticks: Option<u64>,
    /// Share of the machine taken by other work during the batch (see [`Cell::other_share`]).
    pub other_share: f64,
    /// Connections the kernel dropped from a full accept queue during the batch.
    pub listen_overflows: u64,
    /// Share of the machine busy (with anything) during the batch.
    pub busy_share: f64,
}

/// Everything measured, for the report.
pub struct Results {
    pub plan: Plan,
    pub machine: env::Machine,
    pub versions: env::Versions,
    pub nginx_workers: usize,
    pub clock_ticks: u64,
    pub peak_reset: bool,
    pub cells: Vec<Cell>,
    pub streams: Vec<StreamCell>,
    /// keyless's RSS (KiB) right after start, before any stream.
    pub stream_idle_kib: Option<u64>,
    /// keyless's heap at its peak under one paced batch of streams (heaptrack).
    pub heap: Option<heap::HeapProfile>,
    /// perf profiles of nginx and keyless at the first connection count.
    pub profiles: Vec<(Row, profile::Profile)>,
    /// User-space instructions a request of nginx, keyless, and keyless with app keys
    /// and usage accounting (callgrind), by the row's name.
    pub instructions: Vec<(&'static str, instructions::Count)>,
    /// Realtime sessions, direct and through keyless.
    pub realtime: Option<realtime::Results>,
    /// Limits in Redis against limits in the process (none without `redis-server`).
    pub limits: Option<limits::Results>,
    /// Problems that invalidate figures (errors answered, servers failing).
    pub problems: Vec<String>,
    /// Share of the machine busy just before the run started.
    pub busy_at_start: f64,
}

fn main() -> ExitCode {
    let Some(plan) = Plan::from_args() else {
        return ExitCode::SUCCESS;
    };
    // However a run goes wrong, it stops by itself: the servers die with this process.
    let limit = match (plan.smoke, plan.callgrind) {
        (true, false) => 300,
        (true, true) => 1500,
        (false, _) => 2400,
    };
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(limit));
        eprintln!("load bench: still running after {limit} s; giving up");
        std::process::exit(3);
    });
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    match run(plan, manifest) {
        Ok(results) => {
            let (md_path, svg_path, image) = if results.plan.smoke {
                let dir = manifest.join("target").join("load-smoke");
                let _ = std::fs::create_dir_all(&dir);
                (
                    dir.join("BENCHMARKS.md"),
                    dir.join("latency.svg"),
                    "latency.svg",
                )
            } else {
                (
                    manifest.join("BENCHMARKS.md"),
                    manifest.join("benches").join("latency.svg"),
                    "benches/latency.svg",
                )
            };
            let markdown = report::markdown(&results, image);
            println!("\n{markdown}");
            let mut failed = !results.problems.is_empty();
            if let Err(e) = std::fs::write(&md_path, &markdown) {
                eprintln!("load bench: cannot write {}: {e}", md_path.display());
                failed = true;
            }
            if let Err(e) = report::svg(&results, &svg_path) {
                eprintln!("load bench: cannot draw {}: {e}", svg_path.display());
                failed = true;
            }
            println!(
                "load bench: wrote {} and {}",
                md_path.display(),
                svg_path.display()
            );
            if failed {
                eprintln!("load bench: the run had problems:");
                for p in &results.problems {
                    eprintln!("  - {p}");
                }
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("load bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where a row's requests go, and which processes are its proxy.
struct Target {
    row: Row,
    url: String,
    headers: Vec<String>,
    /// keyless's pid, or nginx's master (its workers are found at each measurement).
    proxy_pid: Option<u32>,
}

fn run(plan: Plan, manifest: &Path) -> Result<Results, Error> {
    let started = Instant::now();
    let keyless_bin = PathBuf::from(env!("CARGO_BIN_EXE_keyless"));
    let tools = env::tools(plan.may_install)?;
    let machine = env::machine();
    let versions = env::versions(&keyless_bin, &tools, manifest);
    // 1,000 streams take 1,000 sockets here and 2,000 in keyless; the servers inherit this.
    let nofile = rlimit::increase_nofile_limit(65_536)?;
    if nofile < 4096 {
        return Err(
            format!("open files limit is {nofile}; raise `ulimit -n` to 4096 or more").into(),
        );
    }
    let dir = tempfile::Builder::new().prefix("keyless-load-").tempdir()?;
    let log = |name: &str| dir.path().join(format!("{name}.log"));
    println!(
        "load bench: {} mode, {} round(s) of {:?} a row, logs in {}",
        if plan.smoke { "smoke" } else { "full" },
        plan.rounds,
        plan.duration,
        dir.path().display()
    );

    // The upstream, with the identity endpoint keyless's managed identity credential uses.
    let secret = format!("keyless-bench-{}", std::process::id());
    let (mut simulator, sim_addr) = Spawn {
        name: "simulator",
        program: &keyless_bin,
        args: strings(&[
            "simulator",
            "--listen",
            "127.0.0.1:0",
            "--identity-header",
            &secret,
        ]),
        env: vec![("KEYLESS_LOG", "warn".into())],
        log: log("simulator"),
    }
    .start(true)?;
    let sim_addr = sim_addr.ok_or("the simulator printed no address")?;
    let bearer = format!("Bearer {}", fetch_token(sim_addr, &secret)?);

    let (mut keyless, keyless_addr) =
        start_keyless(&keyless_bin, sim_addr, &secret, log("keyless"))?;
    let nginx_workers = machine.cores.max(1);
    let (mut nginx, nginx_addr) = start_nginx(
        &tools.nginx,
        dir.path(),
        sim_addr,
        &bearer,
        nginx_workers,
        None,
    )?;

    let targets = [
        Target {
            row: Row::Direct,
            url: format!("http://{sim_addr}/openai/v1/chat/completions"),
            headers: vec![format!("Authorization: {bearer}")],
            proxy_pid: None,
        },
        Target {
            row: Row::Nginx,
            url: format!("http://{nginx_addr}/v1/chat/completions"),
            headers: vec![],
            proxy_pid: Some(nginx.pid()),
        },
        Target {
            row: Row::Keyless,
            url: format!("http://{keyless_addr}/v1/chat/completions"),
            headers: vec![],
            proxy_pid: Some(keyless.pid()),
        },
    ];
    for target in &targets {
        check_chat(target)?;
    }

    let busy_at_start = wait_for_quiet(if plan.smoke { 10 } else { 120 });
    let sim_pid = simulator.pid();
    let script = wrk::write_script(dir.path())?;
    let mut problems = Vec::new();
    let mut peak_reset = true;
    let measure_once =
        |target: &Target, connections: u32, duration: Duration, peak_reset: &mut bool| {
            let proxy = target.proxy_pid.map(procs::family).unwrap_or_default();
            *peak_reset &= procs::reset_peak_rss(&proxy);
            let (cpu0, up0) = (procs::cpu_ticks(&proxy), procs::cpu_ticks(&[sim_pid]));
            let machine0 = procs::machine_ticks();
            let run = wrk::run(
                &tools.wrk,
                &script,
                &target.url,
                connections,
                duration,
                &target.headers,
            )?;
            let machine1 = procs::machine_ticks();
            let (cpu1, up1) = (procs::cpu_ticks(&proxy), procs::cpu_ticks(&[sim_pid]));
            Ok::<_, Error>(Cell {
                row: target.row,
                connections,
                proxy_ticks: cpu1.saturating_sub(cpu0),
                upstream_ticks: up1.saturating_sub(up0),
                proxy_peak_kib: target.proxy_pid.map(|_| procs::peak_rss_kib(&proxy)),
                machine_busy: machine1.0.saturating_sub(machine0.0),
                machine_total: machine1.1.saturating_sub(machine0.1),
                tries: 1,
                run,
            })
        };
    // Time spent waiting out other work and measuring again, bounded so a busy machine
    // cannot stretch the run without end.
    let retry_budget = std::cell::Cell::new(if plan.smoke {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(480)
    });
    // Charges the wait and the measurement to come (`cost`) to the budget.
    let may_retry = |noisy: bool, cost: Duration| {
        if !noisy || retry_budget.get().is_zero() {
            return false;
        }
        let waited = Instant::now();
        wait_for_quiet(20);
        let spent = waited.elapsed() + cost;
        retry_budget.set(retry_budget.get().saturating_sub(spent));
        true
    };
    let measure = |target: &Target, connections: u32, duration: Duration, peak_reset: &mut bool| {
        let mut best = measure_once(target, connections, duration, peak_reset)?;
        for attempt in 2..=3 {
            if !may_retry(best.other_share() > NOISY, duration) {
                break;
            }
            println!(
                "load bench: other work took {:.0}% of the machine during {} c={connections}; measuring again",
                best.other_share() * 100.0,
                target.row.name()
            );
            let again = measure_once(target, connections, duration, peak_reset)?;
            if again.other_share() < best.other_share() {
                best = again;
            }
            best.tries = attempt;
        }
        Ok::<_, Error>(best)
    };

    // Warm-up: connection pools filled, code paged in; not recorded.
    let widest = plan.connections.iter().copied().max().unwrap_or(256);
    for target in targets.iter().filter(|_| plan.rounds > 0) {
        measure_once(target, widest, plan.warmup, &mut peak_reset)?;
    }
    let mut cells = Vec::new();
    let total = plan.rounds * plan.connections.len() * targets.len();
    for round in 0..plan.rounds {
        for &connections in &plan.connections {
            for k in 0..targets.len() {
                let target = &targets[(k + round) % targets.len()];
                let cell = measure(target, connections, plan.duration, &mut peak_reset)?;
                println!(
                    "load bench: [{:>2}/{total}] round {} {:>7} c={:<3} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms{}",
                    cells.len() + 1,
                    round + 1,
                    target.row.name(),
                    connections,
                    cell.run.rps(),
                    cell.run.at(50.0) / 1000.0,
                    cell.run.at(99.0) / 1000.0,
                    cell.run.at(99.9) / 1000.0,
                    if cell.run.errors + cell.run.non_2xx > 0 {
                        format!(
                            "  ({} errors, {} non-2xx)",
                            cell.run.errors, cell.run.non_2xx
                        )
                    } else {
                        String::new()
                    }
                );
                if cell.run.non_2xx > 0 || cell.run.errors > 0 {
                    problems.push(format!(
                        "{} at {connections} connections: {} socket errors, {} non-2xx answers",
                        target.row.name(),
                        cell.run.errors,
                        cell.run.non_2xx
                    ));
                }
                cells.push(cell);
            }
            simulator.check_alive()?;
            keyless.check_alive()?;
            nginx.check_alive()?;
        }
    }

    // Profiles after the measured rounds, so perf's own cost touches none of them.
    let mut profiles = Vec::new();
    if let (Some(perf), Some(duration)) = (&tools.perf, plan.profile) {
        let connections = plan.connections.first().copied().unwrap_or(32);
        for target in targets.iter().filter(|t| t.proxy_pid.is_some()) {
            let pids = target.proxy_pid.map(procs::family).unwrap_or_default();
            let data = dir.path().join(format!("perf-{}.data", target.row.name()));
            let load = |d| {
                wrk::run(
                    &tools.wrk,
                    &script,
                    &target.url,
                    connections,
                    d,
                    &target.headers,
                )
                .map(|_| ())
            };
            match profile::record(perf, &pids, duration, &data, load) {
                Ok(p) => profiles.push((target.row, p)),
                Err(e) => println!("load bench: no profile of {}: {e}", target.row.name()),
            }
        }
    }

    // Streams: a keyless of its own, so its peak RSS is the streams' and not the load's.
    drop(targets);
    nginx.stop();
    keyless.stop();

    // The shared gateway: an app key checked, its quotas taken, usage read from the
    // answer (`[usage]` on); for the instruction counts and the streams.
    let apps_config = dir.path().join("apps.toml");
    std::fs::write(
        &apps_config,
        format!(
            "[[apps]]\nname = \"bench\"\nkey_sha256 = \"{}\"\nrpm = 1000000\ntpm = 1000000000\n\n[usage]\nstream_include_usage = true\n",
            keyless::apps::sha256_hex(APP_KEY.as_bytes())
        ),
    )?;
    let apps_config = apps_config.display().to_string();
    // The same app and usage without quotas (`KEYLESS_KEYS`): what the key and the usage
    // cost apart from the rate limits and their headers.
    let keys_config = dir.path().join("keys.toml");
    std::fs::write(
        &keys_config,
        format!(
            "[[apps]]\nname = \"bench\"\nkey_sha256 = \"{}\"\n\n[usage]\nstream_include_usage = true\n",
            keyless::apps::sha256_hex(APP_KEY.as_bytes())
        ),
    )?;
    let keys_config = keys_config.display().to_string();
    let bearer_key = format!("Bearer {APP_KEY}");

    // Instructions a request, each proxy alone under callgrind.
    let mut instructions = Vec::new();
    let callgrind = procs::which("valgrind").zip(procs::which("callgrind_annotate"));
    if let Some((valgrind, annotate)) = callgrind.filter(|_| plan.callgrind) {
        let under = |out: &Path| {
            let args = vec![
                "--tool=callgrind".to_owned(),
                format!("--callgrind-out-file={}", out.display()),
            ];
            (valgrind.as_path(), args)
        };
        let keyless_count = instructions::count(
            &annotate,
            dir.path(),
            "keyless",
            &[],
            Duration::ZERO,
            |out| {
                start_keyless_under(
                    Some(under(out)),
                    &keyless_bin,
                    sim_addr,
                    &secret,
                    log("keyless-callgrind"),
                    &["--workers", "1"],
                )
            },
        );
        // The shared gateway (`apps_config`) on the same requests.
        let apps_count = instructions::count(
            &annotate,
            dir.path(),
            "keyless-apps",
            &[("authorization", bearer_key.as_str())],
            Duration::ZERO,
            |out| {
                start_keyless_under(
                    Some(under(out)),
                    &keyless_bin,
                    sim_addr,
                    &secret,
                    log("keyless-apps-callgrind"),
                    &["--workers", "1", "--config", &apps_config],
                )
            },
        );
        // The app key and usage without quotas (`keys_config`).
        let keys_count = instructions::count(
            &annotate,
            dir.path(),
            "keyless-keys",
            &[("authorization", bearer_key.as_str())],
            Duration::ZERO,
            |out| {
                start_keyless_under(
                    Some(under(out)),
                    &keyless_bin,
                    sim_addr,
                    &secret,
                    log("keyless-keys-callgrind"),
                    &["--workers", "1", "--config", &keys_config],
                )
            },
        );
        let otel_count = otel_count(&annotate, dir.path(), |out, endpoint| {
            start_keyless_env(
                Some(under(out)),
                &keyless_bin,
                sim_addr,
                &secret,
                log("keyless-otel-callgrind"),
                &["--workers", "1", "--otlp-endpoint", endpoint],
                // Batches go out every 200 ms (5 s by default), so they do during the run.
                &[("OTEL_BSP_SCHEDULE_DELAY", "200".into())],
            )
        });
        let nginx_count =
            instructions::count(&annotate, dir.path(), "nginx", &[], Duration::ZERO, |out| {
                start_nginx(
                    &tools.nginx,
                    dir.path(),
                    sim_addr,
                    &bearer,
                    1,
                    Some(under(out)),
                )
            });
        for (row, count) in [
            ("nginx", nginx_count),
            ("keyless", keyless_count),
            (KEYLESS_KEYS, keys_count),
            (KEYLESS_APPS, apps_count),
            (KEYLESS_OTEL, otel_count),
        ] {
            match count {
                Ok(c) => instructions.push((row, c)),
                Err(e) => println!("load bench: no instruction count of {row}: {e}"),
            }
        }
    }
    let (mut stream_keyless, stream_addr) =
        start_keyless(&keyless_bin, sim_addr, &secret, log("keyless-streams"))?;
    let stream_pid = stream_keyless.pid();
    let stream_idle_kib = procs::status_kib(stream_pid, "VmRSS");
    // The shared gateway's streams: a fresh keyless of its own too, the app key sent.
    let (mut apps_keyless, apps_addr) = start_keyless_under(
        None,
        &keyless_bin,
        sim_addr,
        &secret,
        log("keyless-apps-streams"),
        &["--config", &apps_config],
    )?;
    let apps_pid = apps_keyless.pid();
    // The keyless a row's streams go through.
    let proxy_of = |row: Row| match row {
        Row::Keyless => Some(stream_pid),
        Row::KeylessApps => Some(apps_pid),
        Row::Direct | Row::Nginx => None,
    };
    let spec = |row: Row, mode: StreamMode| streams::Spec {
        addr: match row {
            Row::Keyless => stream_addr,
            Row::KeylessApps => apps_addr,
            Row::Direct | Row::Nginx => sim_addr,
        },
        path: if row == Row::Direct {
            "/openai/v1/chat/completions".into()
        } else {
            "/v1/chat/completions".into()
        },
        authorization: match row {
            Row::Direct => Some(bearer.clone()),
            Row::KeylessApps => Some(bearer_key.clone()),
            Row::Keyless | Row::Nginx => None,
        },
        streams: plan.streams,
        chunks: plan.chunks,
        delay_ms: plan.delay_ms,
        ramp: if mode == StreamMode::Burst {
            Duration::ZERO
        } else {
            plan.ramp
        },
        timeout: Duration::from_secs(60),
    };
    let mut stream_cells = Vec::new();
    let mut batches: Vec<_> = Row::STREAMS.map(|row| (row, StreamMode::Cold)).into();
    // Paced batches rotated by one place a round (direct, keyless, apps; keyless, apps,
    // direct; ...), as the request rows are.
    for round in 0..plan.stream_rounds {
        let rows = Row::STREAMS;
        batches
            .extend((0..rows.len()).map(|k| (rows[(k + round) % rows.len()], StreamMode::Paced)));
    }
    // Smoke mode keeps its few seconds: no burst through the shared gateway's keyless.
    batches.extend(
        Row::STREAMS
            .into_iter()
            .filter(|&row| !(plan.smoke && row == Row::KeylessApps))
            .map(|row| (row, StreamMode::Burst)),
    );
    let stream_once = |row: Row, mode: StreamMode, peak_reset: &mut bool| {
        let pid: Vec<u32> = proxy_of(row).into_iter().collect();
        if !pid.is_empty() {
            *peak_reset &= procs::reset_peak_rss(&pid);
        }
        let ours = || procs::cpu_ticks(&[stream_pid, apps_pid, sim_pid, std::process::id()]);
        let overflows = procs::listen_overflows();
        let (cpu0, ours0, machine0) = (procs::cpu_ticks(&pid), ours(), procs::machine_ticks());
        let outcome = streams::run(&spec(row, mode))?;
        let (cpu1, ours1, machine1) = (procs::cpu_ticks(&pid), ours(), procs::machine_ticks());
        let busy = machine1.0.saturating_sub(machine0.0);
        let other = busy.saturating_sub(ours1.saturating_sub(ours0));
        Ok::<_, Error>(StreamCell {
            row,
            mode,
            outcome,
            proxy_peak_kib: (!pid.is_empty()).then(|| procs::peak_rss_kib(&pid)),
            proxy_ticks: (!pid.is_empty()).then(|| cpu1.saturating_sub(cpu0)),
            other_share: other as f64 / machine1.1.saturating_sub(machine0.1).max(1) as f64,
            listen_overflows: procs::listen_overflows().saturating_sub(overflows),
            busy_share: busy as f64 / machine1.1.saturating_sub(machine0.1).max(1) as f64,
        })
    };
    for (row, mode) in batches {
        let mut cell = stream_once(row, mode, &mut peak_reset)?;
        for _ in 2..=3 {
            if !may_retry(cell.other_share > NOISY, cell.outcome.wall) {
                break;
            }
            println!(
                "load bench: other work took {:.0}% of the machine during {} {mode:?} streams; measuring again",
                cell.other_share * 100.0,
                row.name()
            );
            let again = stream_once(row, mode, &mut peak_reset)?;
            if again.other_share < cell.other_share {
                cell = again;
            }
        }
        let StreamCell {
            outcome,
            proxy_peak_kib: peak,
            ..
        } = &cell;
        println!(
            "load bench: streams {:>7} {:?}: {}/{} complete, {} open at once, TTFB p50 {:.2} p99 {:.2} ms, gap p99 {:.2} ms, {:.1} s, machine {:.0}% busy{}",
            row.name(),
            mode,
            outcome.completed,
            outcome.streams,
            outcome.peak_open,
            report::percentile(&outcome.ttfb_us, 50.0) / 1000.0,
            report::percentile(&outcome.ttfb_us, 99.0) / 1000.0,
            report::percentile(&outcome.gaps_us, 99.0) / 1000.0,
            outcome.wall.as_secs_f64(),
            cell.busy_share * 100.0,
            peak.map_or(String::new(), |kib| format!(
                ", keyless peak RSS {:.1} MiB",
                kib as f64 / 1024.0
            )),
        );
        if outcome.completed < outcome.streams {
            problems.push(format!(
                "{} {:?} streams: {} of {} did not complete: {}",
                row.name(),
                mode,
                outcome.streams - outcome.completed,
                outcome.streams,
                outcome.failures.join("; ")
            ));
        }
        if let Some(dir) = std::env::var_os("KEYLESS_BENCH_DUMP") {
            // Diagnostics: each stream's start and TTFB, to see when slow ones happen.
            let path = Path::new(&dir).join(format!(
                "streams-{}-{mode:?}-{}.csv",
                row.name(),
                stream_cells.len()
            ));
            let rows: Vec<String> = outcome
                .started_ms
                .iter()
                .zip(&outcome.ttfb_us)
                .map(|(s, t)| format!("{s:.3},{t:.0}"))
                .collect();
            let _ = std::fs::write(path, format!("started_ms,ttfb_us\n{}\n", rows.join("\n")));
        }
        stream_cells.push(cell);
        // Let closed connections settle (keyless's pool, TIME_WAIT) before the next batch.
        std::thread::sleep(Duration::from_millis(500));
    }
    stream_keyless.check_alive()?;
    apps_keyless.check_alive()?;
    apps_keyless.stop();
    // Limits in Redis against the same limits in the process, at low concurrency.
    let limits = limits::run(
        &plan,
        &tools.wrk,
        &script,
        &keyless_bin,
        sim_addr,
        &secret,
        dir.path(),
        APP_KEY,
    )?;
    if let Some(limits) = &limits {
        problems.extend(limits.problems.iter().cloned());
    }
    // Realtime: 200 sessions of 20 ms audio-sized frames, direct and through a keyless of
    // its own (in front of an echoing WebSocket mock).
    let realtime_spec = realtime::Spec {
        sessions: 200,
        interval: Duration::from_millis(20),
        frame_bytes: 1024,
        duration: Duration::from_secs(
            std::env::var("KEYLESS_BENCH_RT_SECONDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(if plan.smoke { 2 } else { 10 }),
        ),
    };
    let realtime = realtime::run(&realtime_spec, &keyless_bin, sim_addr, &secret, dir.path())?;
    println!(
        "load bench: realtime {} sessions: direct {}/{} ok, keyless {}/{} ok, round trip p50 {:.3} / {:.3} ms, p99 {:.3} / {:.3} ms, added p99 {:.3} ms, {:.1} us CPU a frame, {:.1} KiB a session idle",
        realtime_spec.sessions,
        realtime.direct.completed,
        realtime.direct.sessions,
        realtime.keyless.completed,
        realtime.keyless.sessions,
        report::percentile(&realtime.direct.rtt_us, 50.0) / 1000.0,
        report::percentile(&realtime.keyless.rtt_us, 50.0) / 1000.0,
        report::percentile(&realtime.direct.rtt_us, 99.0) / 1000.0,
        report::percentile(&realtime.keyless.rtt_us, 99.0) / 1000.0,
        realtime.added_us(99.0) / 1000.0,
        realtime.cpu_us_per_frame(),
        realtime
            .per_session_kib(realtime.rss_idle_kib)
            .unwrap_or(f64::NAN),
    );
    problems.extend(realtime.problems.iter().cloned());
    // The heap at its peak, for the memory target: a keyless of its own, since heaptrack
    // slows it and would skew every figure above.
    let heap = match (procs::which("heaptrack"), plan.profile) {
        (Some(heaptrack), Some(_)) if procs::which("heaptrack_print").is_some() => {
            println!("load bench: one paced batch through keyless under heaptrack");
            let spec = spec(Row::Keyless, StreamMode::Paced);
            match heap_profile(
                &heaptrack,
                &keyless_bin,
                sim_addr,
                &secret,
                dir.path(),
                &spec,
            ) {
                Ok(h) => Some(h),
                Err(e) => {
                    println!("load bench: no heap profile: {e}");
                    None
                }
            }
        }
        _ => None,
    };
    simulator.check_alive()?;
    stream_keyless.stop();
    simulator.stop();
    println!(
        "load bench: measured in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    Ok(Results {
        plan,
        machine,
        versions,
        nginx_workers,
        clock_ticks: procs::clock_ticks(),
        peak_reset,
        cells,
        streams: stream_cells,
        stream_idle_kib,
        profiles,
        instructions,
        heap,
        realtime: Some(realtime),
        limits,
        problems,
        busy_at_start,
    })
}

/// Waits (up to `max_secs`) until the machine is nearly idle, so the run does not start
/// in the middle of someone's build; returns the busy share last seen.
fn wait_for_quiet(max_secs: u64) -> f64 {
    let started = Instant::now();
    loop {
        let a = procs::machine_ticks();
        std::thread::sleep(Duration::from_secs(2));
        let b = procs::machine_ticks();
        let busy = b.0.saturating_sub(a.0) as f64 / b.1.saturating_sub(a.1).max(1) as f64;
        if busy < 0.10 || started.elapsed().as_secs() >= max_secs {
            if busy >= 0.10 {
                println!(
                    "load bench: the machine is still {:.0}% busy; starting anyway",
                    busy * 100.0
                );
            }
            return busy;
        }
        println!(
            "load bench: the machine is {:.0}% busy with other work; waiting for it to settle",
            busy * 100.0
        );
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// A token from the simulator's managed identity endpoint, for the direct row and nginx.
fn fetch_token(sim: SocketAddr, secret: &str) -> Result<String, Error> {
    let (status, body) = procs::http(
        sim,
        "GET",
        "/msi/token?api-version=2019-08-01&resource=https%3A%2F%2Fcognitiveservices.azure.com",
        &[("x-identity-header", secret)],
        b"",
    )?;
    if status != 200 {
        return Err(format!(
            "/msi/token answered {status}: {}",
            String::from_utf8_lossy(&body)
        )
        .into());
    }
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(json["access_token"]
        .as_str()
        .ok_or("/msi/token gave no access_token")?
        .to_owned())
}

fn start_keyless(
    bin: &Path,
    sim: SocketAddr,
    secret: &str,
    log: PathBuf,
) -> Result<(Proc, SocketAddr), Error> {
    start_keyless_under(None, bin, sim, secret, log, &[])
}

/// keyless with `extra` arguments, or keyless run by `wrapper` (`heaptrack -o FILE`),
/// which passes its stdout on.
pub(crate) fn start_keyless_under(
    wrapper: Option<(&Path, Vec<String>)>,
    bin: &Path,
    sim: SocketAddr,
    secret: &str,
    log: PathBuf,
    extra: &[&str],
) -> Result<(Proc, SocketAddr), Error> {
    start_keyless_env(wrapper, bin, sim, secret, log, extra, &[])
}

/// [`start_keyless_under`] with variables `env` added to keyless's environment.
fn start_keyless_env(
    wrapper: Option<(&Path, Vec<String>)>,
    bin: &Path,
    sim: SocketAddr,
    secret: &str,
    log: PathBuf,
    extra: &[&str],
    env: &[(&'static str, String)],
) -> Result<(Proc, SocketAddr), Error> {
    let mut args = strings(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--endpoint",
        &format!("http://{sim}"),
        "--credential",
        "managed-identity",
    ]);
    args.extend(strings(extra));
    let (program, args) = wrapped(wrapper, bin, args);
    let mut vars = vec![
        // Per-request info lines would cost more than the proxying measured here.
        ("KEYLESS_LOG", "warn".into()),
        ("IDENTITY_ENDPOINT", format!("http://{sim}/msi/token")),
        ("IDENTITY_HEADER", secret.to_owned()),
    ];
    vars.extend_from_slice(env);
    let (mut proc, addr) = Spawn {
        name: "keyless",
        program,
        args,
        env: vars,
        log,
    }
    .start(true)?;
    let addr = addr.ok_or("keyless printed no address")?;
    if let Err(e) = procs::wait_ok(addr, "GET", "/readyz", &[], b"", Duration::from_secs(60)) {
        return Err(proc.failure(&e.to_string()));
    }
    proc.check_alive()?;
    Ok((proc, addr))
}

/// `bin args`, or `wrapper`'s program running it: `program [its args] bin args`.
fn wrapped<'a>(
    wrapper: Option<(&'a Path, Vec<String>)>,
    bin: &'a Path,
    args: Vec<String>,
) -> (&'a Path, Vec<String>) {
    match wrapper {
        Some((program, mut before)) => {
            before.push(bin.display().to_string());
            before.extend(args);
            (program, before)
        }
        None => (bin, args),
    }
}

/// The instructions a chat request costs keyless exporting its spans over OTLP/HTTP
/// (`KEYLESS_OTEL`) to a sink started here, which `start(out, endpoint)` starts keyless
/// under callgrind to send to. keyless runs a second after the last answer, in both runs,
/// so the last batches are exported inside the count and not only at shutdown.
fn otel_count(
    annotate: &Path,
    dir: &Path,
    start: impl Fn(&Path, &str) -> Result<(Proc, SocketAddr), Error>,
) -> Result<instructions::Count, Error> {
    let sink = otlp::start()?;
    let endpoint = format!("http://{}", sink.addr);
    let count = instructions::count(
        annotate,
        dir,
        "keyless-otel",
        &[],
        Duration::from_secs(1),
        |out| start(out, &endpoint),
    )?;
    if sink.bodies() == 0 {
        return Err(format!("no span reached the OTLP sink at {endpoint}").into());
    }
    Ok(count)
}

/// One paced batch through a keyless run under heaptrack; the heap at its peak.
fn heap_profile(
    heaptrack: &Path,
    bin: &Path,
    sim: SocketAddr,
    secret: &str,
    dir: &Path,
    spec: &streams::Spec,
) -> Result<heap::HeapProfile, Error> {
    let data = dir.join("heaptrack.keyless");
    let wrapper = (heaptrack, vec!["-o".to_owned(), data.display().to_string()]);
    let (proc, addr) = start_keyless_under(
        Some(wrapper),
        bin,
        sim,
        secret,
        dir.join("heaptrack.log"),
        &[],
    )?;
    let outcome = streams::run(&streams::Spec {
        addr,
        ..spec.clone()
    })?;
    if outcome.completed < outcome.streams {
        return Err(format!(
            "{} of {} streams did not complete under heaptrack",
            outcome.streams - outcome.completed,
            outcome.streams
        )
        .into());
    }
    let heap = heap::finish(proc.pid(), &data, Duration::from_secs(120));
    drop(proc);
    heap
}

/// nginx as the reference reverse proxy: the same route keyless serves, a static bearer
/// in place of the Entra token it cannot get, a keepalive pool, nothing buffered, no logs.
/// Run by `wrapper` (callgrind), it is one process: no master, one worker's work.
fn start_nginx(
    bin: &Path,
    dir: &Path,
    sim: SocketAddr,
    bearer: &str,
    workers: usize,
    wrapper: Option<(&Path, Vec<String>)>,
) -> Result<(Proc, SocketAddr), Error> {
    let prefix = dir.join(if wrapper.is_some() {
        "nginx-wrapped"
    } else {
        "nginx"
    });
    std::fs::create_dir_all(&prefix)?;
    let port = procs::free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let p = prefix.display();
    let master = if wrapper.is_some() { "off" } else { "on" };
    let config = format!(
        r#"# Generated by `cargo bench --bench load`.
worker_processes {workers};
master_process {master};
daemon off;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    # keyless (hyper) never closes a client connection after N requests: neither does this.
    keepalive_requests 1000000;
    upstream azure {{
        server {sim};
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 90s;
    }}
    server {{
        listen {addr};
        location = /v1/chat/completions {{
            proxy_pass http://azure/openai/v1/chat/completions;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "{bearer}";
            proxy_buffering off;
        }}
    }}
}}
"#
    );
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, config)?;
    let args = vec![
        "-p".into(),
        prefix.display().to_string(),
        "-e".into(),
        prefix.join("error.log").display().to_string(),
        "-c".into(),
        conf.display().to_string(),
    ];
    let (program, args) = wrapped(wrapper, bin, args);
    let (mut proc, _) = Spawn {
        name: "nginx",
        program,
        args,
        env: vec![],
        log: prefix.join("stderr.log"),
    }
    .start(false)?;
    let body = wrk::CHAT_BODY.as_bytes();
    let json = [("content-type", "application/json")];
    if let Err(e) = procs::wait_ok(
        addr,
        "POST",
        "/v1/chat/completions",
        &json,
        body,
        Duration::from_secs(15),
    ) {
        return Err(proc.failure(&e.to_string()));
    }
    proc.check_alive()?;
    Ok((proc, addr))
}

/// One chat request through a row answers 200 with a chat completion.
fn check_chat(target: &Target) -> Result<(), Error> {
    let rest = target.url.trim_start_matches("http://");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr: SocketAddr = authority.parse()?;
    let mut headers = vec![("content-type", "application/json")];
    let auth: Vec<(String, String)> = target
        .headers
        .iter()
        .filter_map(|h| {
            h.split_once(": ")
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    headers.extend(auth.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let (status, body) = procs::http(addr, "POST", path, &headers, wrk::CHAT_BODY.as_bytes())?;
    let text = String::from_utf8_lossy(&body);
    if status != 200 || !text.contains("\"chat.completion\"") {
        return Err(format!("{} answered {status}: {text}", target.row.name()).into());
    }
    Ok(())
}
