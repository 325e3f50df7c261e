//! Many SSE streams held open at once: do they all complete, when does each one's first
//! byte arrive, and how far apart do its events arrive?
//!
//! One HTTP/1.1 connection a stream (as an OpenAI SDK with a fresh client would open),
//! driven by hyper's connection-level client on a current-thread runtime: light enough that
//! the client itself takes little of the two cores. An event counts when the `\n\n` that
//! ends it arrives, so two events coalesced into one read show up as a zero gap.

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::Error;

const STREAM_BODY: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

/// What to open.
#[derive(Clone, Debug)]
pub struct Spec {
    pub addr: SocketAddr,
    pub path: String,
    pub authorization: Option<String>,
    pub streams: usize,
    /// `x-sim-chunks`: content events a stream carries.
    pub chunks: u32,
    /// `x-sim-delay-ms`: the upstream's pause between events.
    pub delay_ms: u32,
    /// Streams start evenly over this long (zero: all at once).
    pub ramp: Duration,
    /// A stream that takes longer fails.
    pub timeout: Duration,
}

/// What the streams saw.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub streams: usize,
    /// Streams that got a 200, ended cleanly, and whose last event was `data: [DONE]`.
    pub completed: usize,
    /// The first few distinct reasons streams failed.
    pub failures: Vec<String>,
    /// Most streams open at the same moment (from connect to the end of the body).
    pub peak_open: usize,
    /// Request start (before connect) to the first body byte, µs, one a completed stream.
    pub ttfb_us: Vec<f64>,
    /// When each of those streams started, ms from the start of the batch.
    pub started_ms: Vec<f64>,
    /// Time between consecutive events of a stream, µs.
    pub gaps_us: Vec<f64>,
    /// Fewest and most events a completed stream carried.
    pub events: (usize, usize),
    pub wall: Duration,
}

/// Opens the streams and waits for all of them (each bounded by `spec.timeout`).
pub fn run(spec: &Spec) -> Result<Outcome, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(run_all(Arc::new(spec.clone()))))
}

struct Sample {
    /// When the stream started, from the start of the batch.
    started: Duration,
    ttfb: Duration,
    gaps: Vec<Duration>,
    events: usize,
}

/// Counts streams open now and the most ever open.
#[derive(Default)]
struct Gauge {
    open: AtomicUsize,
    peak: AtomicUsize,
}

struct Open(Arc<Gauge>);

impl Gauge {
    fn open(self: &Arc<Self>) -> Open {
        let now = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        Open(Arc::clone(self))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn run_all(spec: Arc<Spec>) -> Outcome {
    let gauge = Arc::new(Gauge::default());
    let started = tokio::time::Instant::now();
    let wall = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..spec.streams {
        if !spec.ramp.is_zero() {
            let at = started + spec.ramp.mul_f64(i as f64 / spec.streams as f64);
            tokio::time::sleep_until(at).await;
        }
        let (spec, gauge) = (Arc::clone(&spec), Arc::clone(&gauge));
        set.spawn(async move {
            let timeout = spec.timeout;
            match tokio::time::timeout(timeout, one(spec, gauge, wall)).await {
                Ok(result) => result,
                Err(_) => Err(format!("not finished within {timeout:?}")),
            }
        });
    }
    let mut out = Outcome {
        streams: spec.streams,
        events: (usize::MAX, 0),
        ..Outcome::default()
    };
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(sample)) => {
                out.completed += 1;
                out.ttfb_us.push(sample.ttfb.as_secs_f64() * 1e6);
                out.started_ms.push(sample.started.as_secs_f64() * 1e3);
                out.gaps_us
                    .extend(sample.gaps.iter().map(|g| g.as_secs_f64() * 1e6));
                out.events.0 = out.events.0.min(sample.events);
                out.events.1 = out.events.1.max(sample.events);
            }
            Ok(Err(reason)) => {
                if out.failures.len() < 5 && !out.failures.contains(&reason) {
                    out.failures.push(reason);
                }
            }
            Err(e) => out.failures.push(format!("task: {e}")),
        }
    }
    if out.completed == 0 {
        out.events = (0, 0);
    }
    out.peak_open = gauge.peak.load(Ordering::SeqCst);
    out.wall = wall.elapsed();
    out
}

async fn one(spec: Arc<Spec>, gauge: Arc<Gauge>, batch: Instant) -> Result<Sample, String> {
    let _open = gauge.open();
    let t0 = Instant::now();
    let tcp = TcpStream::connect(spec.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(connection);
    let mut request = Request::post(spec.path.as_str())
        .header(header::HOST, spec.addr.to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-sim-chunks", spec.chunks)
        .header("x-sim-delay-ms", spec.delay_ms);
    if let Some(authorization) = &spec.authorization {
        request = request.header(header::AUTHORIZATION, authorization);
    }
    let request = request
        .body(Full::new(Bytes::from_static(STREAM_BODY.as_bytes())))
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let text = body
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(format!(
            "status {status}: {}",
            text.chars().take(200).collect::<String>()
        ));
    }
    let mut first = None;
    let mut arrivals = Vec::with_capacity(spec.chunks as usize + 8);
    let mut pending: Vec<u8> = Vec::with_capacity(1024);
    let mut last_event = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let now = Instant::now();
        first.get_or_insert(now);
        pending.extend_from_slice(&data);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            last_event.clear();
            last_event.extend_from_slice(&pending[..end]);
            pending.drain(..end + 2);
            arrivals.push(now);
        }
    }
    drop(sender);
    let _ = driver.await;
    if last_event != b"data: [DONE]" {
        return Err(format!(
            "ended after {} events without data: [DONE]",
            arrivals.len()
        ));
    }
    let first = first.ok_or("no body")?;
    Ok(Sample {
        started: t0 - batch,
        ttfb: first - t0,
        gaps: arrivals.windows(2).map(|w| w[1] - w[0]).collect(),
        events: arrivals.len(),
    })
}
