//! Limits shared through Redis: the latency a Redis-backed decision adds to a request.
//!
//! Two keyless processes with the same config (one app with rpm and tpm, and the same on
//! the deployment, all far above the load, so nothing is refused) differ in one key,
//! `[limits] backend`: `local` or `redis`, the latter against a `redis-server` started here
//! on a free loopback port. wrk sends the app key at low concurrency, where a request's
//! latency is its own work and not a queue's; the two rows alternate round by round. Each
//! Redis row resets Redis's command statistics first and reads them after, so the report
//! says how many decisions a request took in Redis: a keyless that fell back to its
//! per-process limits (Redis slower than `redis_timeout`) would otherwise look cheap.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::procs::{self, Proc, Spawn};
use crate::{Error, Plan, wrk};

/// The target: what Redis-backed limits may add at p50.
pub const TARGET_US: f64 = 500.0;

/// One wrk run of one row.
#[derive(Clone, Debug)]
pub struct Cell {
    pub redis: bool,
    pub connections: u32,
    pub run: wrk::Run,
    /// The Lua decisions (`EVALSHA`, `EVAL`) Redis ran during the run (Redis rows only).
    pub decisions: u64,
}

/// Everything this part measured.
#[derive(Clone, Debug, Default)]
pub struct Results {
    pub redis_version: String,
    pub rounds: usize,
    pub duration: Duration,
    pub connections: Vec<u32>,
    pub cells: Vec<Cell>,
    /// Problems that invalidate the figures (errors answered, Redis never asked).
    pub problems: Vec<String>,
}

/// A row's medians over rounds at one connection count.
pub struct Summary {
    pub p50: f64,
    pub p99: f64,
    pub rps: f64,
    /// Redis decisions a request (Redis rows).
    pub decisions_per_request: f64,
}

impl Results {
    pub fn summary(&self, redis: bool, connections: u32) -> Option<Summary> {
        let cells: Vec<&Cell> = self
            .cells
            .iter()
            .filter(|c| c.redis == redis && c.connections == connections)
            .collect();
        if cells.is_empty() {
            return None;
        }
        let median = |f: &dyn Fn(&Cell) -> f64| median(cells.iter().map(|c| f(c)).collect());
        let requests: u64 = cells.iter().map(|c| c.run.requests).sum();
        let decisions: u64 = cells.iter().map(|c| c.decisions).sum();
        Some(Summary {
            p50: median(&|c| c.run.at(50.0)),
            p99: median(&|c| c.run.at(99.0)),
            rps: median(&|c| c.run.rps()),
            decisions_per_request: decisions as f64 / requests.max(1) as f64,
        })
    }

    /// Redis's p50 less local's (µs) at `connections`.
    pub fn added_p50(&self, connections: u32) -> Option<(f64, Summary, Summary)> {
        let (local, redis) = (
            self.summary(false, connections)?,
            self.summary(true, connections)?,
        );
        Some((redis.p50 - local.p50, local, redis))
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Measures both rows; `None` (with a note printed) when `redis-server` is not installed.
#[allow(clippy::too_many_arguments)]
pub fn run(
    plan: &Plan,
    wrk_bin: &Path,
    script: &Path,
    keyless_bin: &Path,
    sim: SocketAddr,
    secret: &str,
    dir: &Path,
    app_key: &str,
) -> Result<Option<Results>, Error> {
    let Some(redis_server) = procs::which("redis-server") else {
        println!(
            "load bench: no Redis-backed limits row: redis-server is not installed (Debian's redis-server)"
        );
        return Ok(None);
    };
    let (_redis, redis_addr) = start_redis(&redis_server, dir)?;
    let redis_version = command(redis_addr, "INFO server")
        .ok()
        .and_then(|info| field(&info, "redis_version").map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    let mut started = Vec::new();
    for redis in [false, true] {
        let name = if redis {
            "limits-redis"
        } else {
            "limits-local"
        };
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, config_text(app_key, redis.then_some(redis_addr)))?;
        let config = config.display().to_string();
        let (proc, addr) = crate::start_keyless_under(
            None,
            keyless_bin,
            sim,
            secret,
            dir.join(format!("keyless-{name}.log")),
            &["--config", &config],
        )?;
        started.push((redis, proc, addr));
    }
    let authorization = format!("Authorization: Bearer {app_key}");
    let headers = [authorization];
    let connections: Vec<u32> = if plan.smoke { vec![1] } else { vec![1, 4] };
    // Half a request row's time: at one connection a second holds thousands of requests.
    let duration = (plan.duration / 2).max(Duration::from_secs(1));
    let rounds = plan.rounds.max(1);
    let mut results = Results {
        redis_version,
        rounds,
        duration,
        connections: connections.clone(),
        ..Results::default()
    };
    // Warm-up (pools filled, Redis's script cached): not recorded, and not in smoke mode,
    // whose one short round is a check of the set-up more than a measurement.
    if !plan.smoke {
        for (_, _, addr) in &started {
            let url = format!("http://{addr}/v1/chat/completions");
            wrk::run(wrk_bin, script, &url, 4, plan.warmup, &headers)?;
        }
    }
    for round in 0..rounds {
        for &c in &connections {
            for k in 0..started.len() {
                let (redis, proc, addr) = &mut started[(k + round) % 2];
                let url = format!("http://{addr}/v1/chat/completions");
                if *redis {
                    command(redis_addr, "CONFIG RESETSTAT")?;
                }
                let run = wrk::run(wrk_bin, script, &url, c, duration, &headers)?;
                let decisions = if *redis {
                    let stats = command(redis_addr, "INFO commandstats")?;
                    calls(&stats, "evalsha") + calls(&stats, "eval")
                } else {
                    0
                };
                let row = if *redis { "redis" } else { "local" };
                println!(
                    "load bench: limits {row:>5} c={c}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms{}",
                    run.rps(),
                    run.at(50.0) / 1000.0,
                    run.at(99.0) / 1000.0,
                    if *redis {
                        format!(
                            ", {:.2} Redis decisions a request",
                            decisions as f64 / run.requests.max(1) as f64
                        )
                    } else {
                        String::new()
                    }
                );
                if run.errors + run.non_2xx > 0 {
                    results.problems.push(format!(
                        "limits {row} at {c} connections: {} socket errors, {} non-2xx answers",
                        run.errors, run.non_2xx
                    ));
                }
                if *redis && decisions == 0 {
                    results.problems.push(format!(
                        "limits redis at {c} connections: Redis ran no decision; keyless decided every request locally (see its log)"
                    ));
                }
                proc.check_alive()?;
                results.cells.push(Cell {
                    redis: *redis,
                    connections: c,
                    run,
                    decisions,
                });
            }
        }
    }
    for (_, mut proc, _) in started {
        proc.stop();
    }
    Ok(Some(results))
}

/// The app the requests carry the key of, its quotas and the deployment's, far above the
/// load; `redis`: kept in that Redis.
fn config_text(app_key: &str, redis: Option<SocketAddr>) -> String {
    let backend = match redis {
        Some(addr) => format!("backend = \"redis\"\nredis_url = \"redis://{addr}\"\n"),
        None => "backend = \"local\"\n".to_owned(),
    };
    format!(
        "[[apps]]\nname = \"bench\"\nkey_sha256 = \"{}\"\nrpm = 1000000\ntpm = 1000000000\n\n\
         [limits]\n{backend}\n[limits.deployments.\"gpt-4o-mini\"]\nrpm = 1000000\ntpm = 1000000000\n",
        keyless::apps::sha256_hex(app_key.as_bytes())
    )
}

/// redis-server on a free loopback port, nothing saved to disk.
fn start_redis(bin: &Path, dir: &Path) -> Result<(Proc, SocketAddr), Error> {
    let port = procs::free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let data = dir.join("redis");
    std::fs::create_dir_all(&data)?;
    let args = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &data.display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let (mut proc, _) = Spawn {
        name: "redis-server",
        program: bin,
        args,
        env: vec![],
        log: dir.join("redis.log"),
    }
    .start(false)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match command(addr, "PING") {
            Ok(reply) if reply == "PONG" => break,
            Ok(_) | Err(_) if Instant::now() < deadline => {
                proc.check_alive()?;
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(reply) => return Err(proc.failure(&format!("answered PING with {reply:?}"))),
            Err(e) => return Err(proc.failure(&format!("did not answer PING: {e}"))),
        }
    }
    Ok((proc, addr))
}

/// One inline Redis command on a connection of its own; its simple-string or bulk reply.
fn command(addr: SocketAddr, line: &str) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("{line}\r\n").as_bytes())?;
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(bad("Redis closed the connection".into()));
        }
        raw.extend_from_slice(&buf[..n]);
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..eol]).into_owned();
        match head.split_at(head.len().min(1)) {
            ("+", rest) => return Ok(rest.to_owned()),
            ("-", rest) => return Err(bad(format!("Redis: {rest}"))),
            ("$", len) => {
                let len: usize = len.parse().map_err(|_| bad(format!("reply {head}")))?;
                if raw.len() >= eol + 2 + len {
                    let body = &raw[eol + 2..eol + 2 + len];
                    return Ok(String::from_utf8_lossy(body).into_owned());
                }
            }
            _ => return Err(bad(format!("unexpected reply {head}"))),
        }
    }
}

/// `key:value` in an INFO reply.
fn field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

/// `calls=N` of `cmdstat_NAME` in `INFO commandstats`.
fn calls(stats: &str, name: &str) -> u64 {
    field(stats, &format!("cmdstat_{name}"))
        .and_then(|v| v.split(',').find_map(|kv| kv.strip_prefix("calls=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The section of BENCHMARKS.md.
pub fn markdown(out: &mut String, r: &Results) {
    use std::fmt::Write as _;
    let ms = |us: f64| format!("{:.3}", us / 1000.0);
    let _ = writeln!(out, "## Limits shared through Redis\n");
    let _ = writeln!(
        out,
        "Two keyless processes with the same config, an app (its key sent as `Authorization: \
         Bearer`) with `rpm` and `tpm` and the same on the deployment (`[limits.deployments]`), \
         all far above the load, differing in `[limits] backend`: `local` (per process, \
         governor) or `redis` (a redis-server {} on a loopback port of this machine, \
         `redis_timeout` at its default). wrk at low concurrency, {} round(s) of {} s a row, \
         the two rows alternated; medians of the rounds. *Redis decisions a request* counts \
         the Lua decisions Redis ran (`INFO commandstats`) over the requests answered: one \
         for the app's budgets and one for the deployment's; fewer means some requests were \
         decided locally because Redis did not answer within `redis_timeout`.\n",
        r.redis_version,
        r.rounds,
        r.duration.as_secs_f64(),
    );
    let _ = writeln!(
        out,
        "| conns | limits | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | Redis decisions a request |\n|---:|---|---:|---:|---:|---:|---:|---:|"
    );
    for &c in &r.connections {
        let local = r.summary(false, c);
        for redis in [false, true] {
            let Some(s) = r.summary(redis, c) else {
                continue;
            };
            let added = |f: fn(&Summary) -> f64| match (&local, redis) {
                (Some(l), true) => format!("{:+.3}", (f(&s) - f(l)) / 1000.0),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "| {c} | {} | {:.0} | {} | {} | {} | {} | {} |",
                if redis { "redis" } else { "local" },
                s.rps,
                ms(s.p50),
                ms(s.p99),
                added(|s| s.p50),
                added(|s| s.p99),
                if redis {
                    format!("{:.2}", s.decisions_per_request)
                } else {
                    "-".into()
                },
            );
        }
    }
    out.push('\n');
}
