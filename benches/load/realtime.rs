//! Realtime sessions: many WebSocket sessions exchanging small audio-sized frames, direct to
//! an echoing mock of Azure's realtime endpoint and through keyless to the same mock.
//!
//! Each session sends a ~1 KB text frame (an `input_audio_buffer.append` event with 20 ms
//! of 24 kHz PCM16, base64-encoded, cut to 1 KB) every 20 ms for a fixed time; the mock
//! echoes each frame. A frame's round trip is measured from just before it is written to
//! when its echo is read, so the latency keyless adds is the difference between the rows'
//! round trips (two passes through keyless: one each way). Also measured: keyless's CPU
//! time per relayed frame (both directions counted) and its resident memory per session,
//! with the sessions open and idle, and under the traffic.
//!
//! The mock and the client run in this process, each on a current-thread runtime of its
//! own thread, and cost the same in both rows.

use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::Error;
use crate::procs::{self, Proc, Spawn};

/// How much to measure.
#[derive(Clone, Debug)]
pub struct Spec {
    pub sessions: usize,
    pub interval: Duration,
    pub frame_bytes: usize,
    pub duration: Duration,
}

/// What one row saw.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub sessions: usize,
    /// Sessions that opened and kept going to the end (over all passes).
    pub completed: usize,
    pub failures: Vec<String>,
    /// Frames whose echo came back.
    pub frames: u64,
    /// Round trips, µs.
    pub rtt_us: Vec<f64>,
    pub wall: Duration,
}

impl Outcome {
    /// Adds another pass of the same row.
    fn merge(&mut self, other: Outcome) {
        self.sessions += other.sessions;
        self.completed += other.completed;
        self.frames += other.frames;
        self.rtt_us.extend(other.rtt_us);
        self.failures.extend(other.failures);
        self.failures.truncate(5);
        self.wall += other.wall;
    }
}

/// The realtime rows: direct and through keyless, with keyless's costs.
#[derive(Clone, Debug, Default)]
pub struct Results {
    pub spec: Option<Spec>,
    pub direct: Outcome,
    pub keyless: Outcome,
    /// keyless's CPU ticks during its row, and the clock's ticks a second.
    pub keyless_ticks: u64,
    pub clock_ticks: u64,
    /// keyless's RSS (KiB) before any session, with all open and idle, and at the end of
    /// the traffic.
    pub rss_before_kib: Option<u64>,
    pub rss_idle_kib: Option<u64>,
    pub rss_busy_kib: Option<u64>,
    pub problems: Vec<String>,
}

impl Results {
    /// Added round-trip latency at percentile `p`, µs.
    pub fn added_us(&self, p: f64) -> f64 {
        crate::report::percentile(&self.keyless.rtt_us, p)
            - crate::report::percentile(&self.direct.rtt_us, p)
    }

    /// keyless's CPU µs per relayed frame (each echo is two frames through keyless).
    pub fn cpu_us_per_frame(&self) -> f64 {
        let seconds = self.keyless_ticks as f64 / self.clock_ticks.max(1) as f64;
        seconds * 1e6 / (2 * self.keyless.frames).max(1) as f64
    }

    /// KiB a session adds to keyless's RSS, from `at` over the baseline.
    pub fn per_session_kib(&self, at: Option<u64>) -> Option<f64> {
        let sessions = self.spec.as_ref()?.sessions.max(1) as f64;
        Some(at?.saturating_sub(self.rss_before_kib?) as f64 / sessions)
    }
}

/// A WebSocket echo server on 127.0.0.1, on its own thread; stops with `stop`.
struct EchoMock {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl EchoMock {
    fn start() -> Result<EchoMock, Error> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("realtime-mock".into())
            .spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(std_listener) else {
                        return;
                    };
                    while !flag.load(Ordering::Relaxed) {
                        let accepted =
                            tokio::time::timeout(Duration::from_millis(200), listener.accept())
                                .await;
                        let Ok(Ok((stream, _))) = accepted else {
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(async move {
                            let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await
                            else {
                                return;
                            };
                            while let Some(Ok(message)) = socket.next().await {
                                if message.is_close() {
                                    break;
                                }
                                let data = message.is_text() || message.is_binary();
                                if data && socket.send(message).await.is_err() {
                                    break;
                                }
                            }
                        });
                    }
                });
            })?;
        Ok(EchoMock { addr, stop })
    }
}

impl Drop for EchoMock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// keyless in front of the mock, signing with the simulator's identity endpoint.
fn start_keyless(
    bin: &Path,
    mock: SocketAddr,
    sim: SocketAddr,
    secret: &str,
    log: std::path::PathBuf,
) -> Result<(Proc, SocketAddr), Error> {
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--endpoint",
        &format!("http://{mock}"),
        "--credential",
        "managed-identity",
    ]
    .map(str::to_owned)
    .to_vec();
    let (mut proc, addr) = Spawn {
        name: "keyless (realtime)",
        program: bin,
        args,
        env: vec![
            ("KEYLESS_LOG", "warn".into()),
            ("IDENTITY_ENDPOINT", format!("http://{sim}/msi/token")),
            ("IDENTITY_HEADER", secret.to_owned()),
        ],
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

/// Both rows, in passes of half the duration ordered direct, keyless, keyless, direct, so
/// that drift of a shared machine spreads over both; keyless is one process of its own for
/// both its passes. Its RSS per idle session is taken in its first pass (a fresh process).
pub fn run(
    spec: &Spec,
    bin: &Path,
    sim: SocketAddr,
    secret: &str,
    dir: &Path,
) -> Result<Results, Error> {
    let mock = EchoMock::start()?;
    let mut results = Results {
        spec: Some(spec.clone()),
        clock_ticks: procs::clock_ticks(),
        ..Results::default()
    };
    let (mut keyless, addr) = start_keyless(
        bin,
        mock.addr,
        sim,
        secret,
        dir.join("keyless-realtime.log"),
    )?;
    let pid = [keyless.pid()];
    results.rss_before_kib = procs::status_kib(pid[0], "VmRSS");
    let direct_url = format!("ws://{}/openai/v1/realtime?model=rt-bench", mock.addr);
    let keyless_url = format!("ws://{addr}/v1/realtime?model=rt-bench");
    let pass = Spec {
        duration: spec.duration / 2,
        ..spec.clone()
    };
    for (i, through_keyless) in [false, true, true, false].into_iter().enumerate() {
        if !through_keyless {
            let outcome = drive(&pass, &direct_url, || {}, || {})?;
            results.direct.merge(outcome);
            continue;
        }
        let first = i == 1;
        let (mut idle, mut busy, mut ticks0, mut ticks1) = (None, None, 0, 0);
        let outcome = drive(
            &pass,
            &keyless_url,
            || {
                // Every session open, none sending yet: the idle figure, and CPU from
                // here on is the traffic's, not the handshakes'.
                idle = procs::status_kib(pid[0], "VmRSS");
                ticks0 = procs::cpu_ticks(&pid);
            },
            || {
                busy = procs::status_kib(pid[0], "VmRSS");
                ticks1 = procs::cpu_ticks(&pid);
            },
        )?;
        if first {
            results.rss_idle_kib = idle;
        }
        results.rss_busy_kib = busy;
        results.keyless_ticks += ticks1.saturating_sub(ticks0);
        results.keyless.merge(outcome);
        keyless.check_alive()?;
    }
    keyless.stop();
    for (name, outcome) in [("direct", &results.direct), ("keyless", &results.keyless)] {
        if outcome.completed < outcome.sessions {
            results.problems.push(format!(
                "realtime {name}: {} of {} sessions failed: {}",
                outcome.sessions - outcome.completed,
                outcome.sessions,
                outcome.failures.join("; ")
            ));
        }
    }
    drop(mock);
    Ok(results)
}

/// Opens `spec.sessions` sessions to `url`, calls `all_open` once every one is open, runs
/// the traffic for `spec.duration`, calls `traffic_done` while they are still open, then
/// closes them.
fn drive(
    spec: &Spec,
    url: &str,
    all_open: impl FnOnce(),
    traffic_done: impl FnOnce(),
) -> Result<Outcome, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(async {
        let started = Instant::now();
        let mut sockets = Vec::with_capacity(spec.sessions);
        let mut failures = Vec::new();
        for _ in 0..spec.sessions {
            match tokio_tungstenite::connect_async_with_config(url, None, true).await {
                Ok((socket, _)) => sockets.push(socket),
                Err(e) if failures.len() < 5 => failures.push(format!("connect: {e}")),
                Err(_) => {}
            }
        }
        // Let the last handshakes settle before the idle figure is taken.
        tokio::time::sleep(Duration::from_millis(300)).await;
        all_open();
        let frame = frame_text(spec.frame_bytes);
        let until = tokio::time::Instant::now() + spec.duration;
        let mut set = tokio::task::JoinSet::new();
        for (i, socket) in sockets.into_iter().enumerate() {
            let frame = frame.clone();
            let interval = spec.interval;
            // Sessions start spread over one interval, as independent callers do.
            let offset = interval.mul_f64(i as f64 / spec.sessions.max(1) as f64);
            set.spawn(session(socket, frame, interval, offset, until));
        }
        let mut outcome = Outcome {
            sessions: spec.sessions,
            ..Outcome::default()
        };
        let mut open = Vec::with_capacity(spec.sessions);
        while let Some(joined) = set.join_next().await {
            match joined.map_err(|e| e.to_string()).and_then(|r| r) {
                Ok((frames, rtts, socket)) => {
                    outcome.completed += 1;
                    outcome.frames += frames;
                    outcome.rtt_us.extend(rtts);
                    open.push(socket);
                }
                Err(e) if failures.len() < 5 => failures.push(e),
                Err(_) => {}
            }
        }
        traffic_done();
        for mut socket in open {
            let _ = socket.close(None).await;
        }
        outcome.failures = failures;
        outcome.wall = started.elapsed();
        outcome
    }))
}

/// An `input_audio_buffer.append` event of about `bytes` bytes.
fn frame_text(bytes: usize) -> String {
    let head = r#"{"type":"input_audio_buffer.append","audio":""#;
    let tail = r#""}"#;
    let body = bytes.saturating_sub(head.len() + tail.len());
    let audio: String = "AAECAwQFBgcICQoLDA0ODw"
        .chars()
        .cycle()
        .take(body)
        .collect();
    format!("{head}{audio}{tail}")
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One session: a frame every `interval` until `until`, each echo's round trip recorded;
/// the socket is handed back open.
async fn session(
    socket: Socket,
    frame: String,
    interval: Duration,
    offset: Duration,
    until: tokio::time::Instant,
) -> Result<(u64, Vec<f64>, Socket), String> {
    let (mut write, mut read) = socket.split();
    // Echoes come back in order: the oldest send time is the next echo's.
    let sent: Mutex<VecDeque<Instant>> = Mutex::default();
    let writer = async {
        tokio::time::sleep(offset).await;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n = 0u64;
        loop {
            tick.tick().await;
            if tokio::time::Instant::now() >= until {
                return Ok::<_, String>(n);
            }
            if let Ok(mut sent) = sent.lock() {
                sent.push_back(Instant::now());
            }
            write
                .send(Message::text(frame.clone()))
                .await
                .map_err(|e| format!("send: {e}"))?;
            n += 1;
        }
    };
    let reader = async {
        let mut rtts = Vec::new();
        loop {
            let drained = sent.lock().map(|s| s.is_empty()).unwrap_or(true);
            if tokio::time::Instant::now() >= until && drained {
                return Ok::<_, String>(rtts);
            }
            let wait = until
                .saturating_duration_since(tokio::time::Instant::now())
                .max(Duration::from_millis(50));
            let next = match tokio::time::timeout(wait, read.next()).await {
                Err(_) if drained => continue,
                Err(_) => {
                    // Past the end with echoes owed: they get 10 s more.
                    tokio::time::timeout(Duration::from_secs(10), read.next())
                        .await
                        .map_err(|_| "no echo within 10 s".to_owned())?
                }
                Ok(next) => next,
            };
            match next {
                Some(Ok(message)) if message.is_text() => {
                    if let Some(at) = sent.lock().ok().and_then(|mut s| s.pop_front()) {
                        rtts.push(at.elapsed().as_secs_f64() * 1e6);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("read: {e}")),
                None => return Err("the socket closed".to_owned()),
            }
        }
    };
    let (sent_frames, rtts) = tokio::join!(writer, reader);
    let (sent_frames, rtts) = (sent_frames?, rtts?);
    if (rtts.len() as u64) < sent_frames {
        return Err(format!(
            "{} of {sent_frames} echoes missing",
            sent_frames - rtts.len() as u64
        ));
    }
    let socket = write
        .reunite(read)
        .map_err(|_| "cannot reunite the socket".to_owned())?;
    Ok((sent_frames, rtts, socket))
}

/// The `## Realtime sessions` section of BENCHMARKS.md.
pub fn markdown(out: &mut String, r: &Results) {
    use std::fmt::Write as _;
    let Some(spec) = &r.spec else {
        return;
    };
    let p = crate::report::percentile;
    let ms = |us: f64| us / 1000.0;
    let _ = writeln!(out, "## Realtime sessions\n");
    let _ = writeln!(
        out,
        "{} WebSocket sessions at once, each sending a {}-byte `input_audio_buffer.append` \
         text frame every {} ms for {:?} a row (two passes of half that, ordered direct, \
         keyless, keyless, direct) to a mock of Azure's realtime endpoint that echoes it; \
         round trip from the write of a frame to the read of its echo. The direct row talks \
         to the mock; the keyless row goes through keyless (twice: the frame and its echo). \
         Client and mock run in the benchmark's process on a thread each, so on two cores \
         they compete with keyless: the round trips include their scheduling, the same in \
         both rows.\n",
        spec.sessions,
        spec.frame_bytes,
        spec.interval.as_millis(),
        spec.duration
    );
    let _ = writeln!(
        out,
        "| row | sessions ok (both passes) | frames echoed | round trip p50 | p99 | p99.9 |\n|---|---|---|---|---|---|"
    );
    for (name, o) in [("direct", &r.direct), ("keyless", &r.keyless)] {
        let _ = writeln!(
            out,
            "| {name} | {}/{} | {} | {:.3} ms | {:.3} ms | {:.3} ms |",
            o.completed,
            o.sessions,
            o.frames,
            ms(p(&o.rtt_us, 50.0)),
            ms(p(&o.rtt_us, 99.0)),
            ms(p(&o.rtt_us, 99.9)),
        );
    }
    out.push('\n');
    let kib = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1} KiB"));
    let _ = writeln!(out, "| keyless | |\n|---|---|");
    let _ = writeln!(
        out,
        "| added round trip, p50 / p99 (target: p99 under 1 ms) | {:.3} ms / {:.3} ms |",
        ms(r.added_us(50.0)),
        ms(r.added_us(99.0))
    );
    let _ = writeln!(
        out,
        "| CPU per relayed frame (each echo is two) | {:.1} µs |",
        r.cpu_us_per_frame()
    );
    let _ = writeln!(
        out,
        "| RSS per session, open and idle (target: under 64 KiB) | {} |",
        kib(r.per_session_kib(r.rss_idle_kib))
    );
    let _ = writeln!(
        out,
        "| RSS per session, after the traffic | {} |",
        kib(r.per_session_kib(r.rss_busy_kib))
    );
    let _ = writeln!(
        out,
        "| RSS before any session | {} |\n",
        r.rss_before_kib.map_or("n/a".to_owned(), |k| format!(
            "{:.1} MiB",
            k as f64 / 1024.0
        ))
    );
}
