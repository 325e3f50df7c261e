//! The one body type keyless sends and answers with.
//!
//! Either a body read through untouched (a client's upload, Azure's response, SSE above
//! all: frames go on as they arrive, nothing is buffered or re-framed) or bytes keyless
//! holds (a rewritten JSON request, its own error answers). An enum rather than a boxed
//! trait object: no allocation per request, and `size_hint` stays exact so hyper keeps
//! `Content-Length` framing where there was one.

use crate::affinity::{FirstString, Learner};
use crate::upstream::pool::Lease;
use crate::usage::{Scan, Usage, UsageFrameFilter};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Errors carried by a streamed body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body.
#[derive(Debug)]
pub enum Body {
    /// Streamed from the other side, frame by frame.
    Stream(Incoming),
    /// Held in memory; `None` once sent.
    Full(Option<Bytes>),
    /// Azure's response, watched for silence and holding what must live as long as it.
    Upstream(Box<UpstreamBody>),
}

/// How a response body ended.
#[derive(Debug)]
pub enum End {
    /// Every byte reached hyper.
    Complete,
    /// Azure's side failed (reset, idle timeout): the client's response was aborted.
    Failed(String),
    /// The client went away before the end.
    ClientGone,
}

/// What is known of a response body once it is over.
#[derive(Debug)]
pub struct Ended {
    /// Bytes sent to the client.
    pub bytes: u64,
    /// How it ended.
    pub end: End,
    /// When its first byte came from Azure.
    pub first_byte: Option<Instant>,
    /// The tokens the answer says it used, when it said.
    pub usage: Option<Usage>,
    /// The model Azure says answered (read only when tracing).
    pub response_model: Option<String>,
}

/// Told once, when a response body ends, how many bytes went through and how it ended.
pub trait BodyEnd: Send + Sync {
    /// The body is over.
    fn end(self: Box<Self>, ended: Ended);
}

/// What watches an answer's bytes on their way to the client: the usage scan, and (when
/// keyless asked for a usage frame the client did not) the filter that removes it.
#[derive(Debug, Default)]
pub struct Tap {
    scan: Scan,
    filter: Option<UsageFrameFilter>,
    learn: Option<Learner>,
    model: Option<(FirstString, Option<String>)>,
}

impl Tap {
    /// Reads usage; with `remove_usage_frame`, also takes the usage frame out.
    pub fn new(remove_usage_frame: bool) -> Tap {
        Tap {
            scan: Scan::new(),
            filter: remove_usage_frame.then(UsageFrameFilter::default),
            learn: None,
            model: None,
        }
    }

    /// Also reads the model Azure names in the answer (for the trace).
    pub fn reading_model(mut self) -> Tap {
        self.model = Some((FirstString::new(&crate::affinity::MODEL_KEY, ""), None));
        self
    }

    /// Also learns which backend created the response the answer carries.
    pub fn learning(mut self, learner: Learner) -> Tap {
        self.learn = Some(learner);
        self
    }

    /// Whether it takes the usage frame out.
    pub fn removes_usage_frame(&self) -> bool {
        self.filter.is_some()
    }
}

/// Azure's response body on its way to the client: passed through frame by frame, but
/// aborted when Azure goes silent for longer than the idle timeout. Whatever is attached
/// (the request's log record and concurrency slot) is told when the body ends.
pub struct UpstreamBody {
    inner: Incoming,
    idle: Duration,
    last_frame: Instant,
    /// Created only when a poll finds no frame ready: small answers that arrive whole
    /// never touch the timer.
    timer: Option<Pin<Box<Sleep>>>,
    bytes: u64,
    on_end: Option<Box<dyn BodyEnd>>,
    /// The upstream connection, back to the pool once the body is read to its end.
    lease: Lease<Body>,
    first_byte: Option<Instant>,
    /// Set for answers that carry usage.
    tap: Option<Box<Tap>>,
    /// Azure's side is over; what the filter still holds goes out, then the end.
    upstream_done: bool,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("idle", &self.idle)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // An empty body hyper never polled is over all the same.
        if http_body::Body::is_end_stream(&self.inner) {
            self.lease.release();
        }
        let ended = self.ended(End::ClientGone);
        if let Some(on_end) = self.on_end.take() {
            on_end.end(ended);
        }
    }
}

impl UpstreamBody {
    /// Wraps `inner`; `on_end` hears when it ends.
    pub fn new(inner: Incoming, idle: Duration, on_end: Option<Box<dyn BodyEnd>>) -> UpstreamBody {
        UpstreamBody {
            inner,
            idle,
            last_frame: Instant::now(),
            timer: None,
            bytes: 0,
            on_end,
            lease: Lease::default(),
            first_byte: None,
            tap: None,
            upstream_done: false,
        }
    }

    /// Watches the body's bytes with `tap` as they pass.
    pub fn with_tap(mut self, tap: Tap) -> UpstreamBody {
        self.tap = Some(Box::new(tap));
        self
    }

    fn ended(&self, end: End) -> Ended {
        Ended {
            bytes: self.bytes,
            end,
            first_byte: self.first_byte,
            usage: self.tap.as_ref().and_then(|t| t.scan.usage()),
            response_model: self
                .tap
                .as_ref()
                .and_then(|t| t.model.as_ref())
                .and_then(|(_, found)| found.clone()),
        }
    }

    /// Whether the filter may drop bytes (then the length is not known in advance).
    fn filtering(&self) -> bool {
        self.tap.as_ref().is_some_and(|t| t.filter.is_some())
    }

    /// Hands `lease`'s connection back to its pool when the body ends cleanly.
    pub fn with_lease(mut self, lease: Lease<Body>) -> UpstreamBody {
        self.lease = lease;
        self
    }

    /// Attaches what must hear the end of the body.
    pub fn set_on_end(&mut self, on_end: Box<dyn BodyEnd>) {
        self.on_end = Some(on_end);
    }

    fn finish(&mut self, end: End) {
        if matches!(end, End::Complete) {
            self.lease.release();
        }
        let ended = self.ended(end);
        if let Some(on_end) = self.on_end.take() {
            on_end.end(ended);
        }
    }

    /// Bytes the filter has ready, counted as sent.
    fn ready(&mut self) -> Option<Bytes> {
        let data = self.tap.as_mut()?.filter.as_mut()?.pop()?;
        self.bytes += data.len() as u64;
        Some(data)
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(data) = self.ready() {
                if self.upstream_done && self.filtering_drained() {
                    self.finish(End::Complete);
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if self.upstream_done {
                self.finish(End::Complete);
                return Poll::Ready(None);
            }
            match self.poll_upstream(cx) {
                // Held by the filter (the start of an event): read on.
                Poll::Ready(Some(Ok(None))) => continue,
                Poll::Ready(Some(Ok(Some(frame)))) => return Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Whether the filter has nothing more to give.
    fn filtering_drained(&self) -> bool {
        self.tap
            .as_ref()
            .and_then(|t| t.filter.as_ref())
            .is_none_or(UsageFrameFilter::is_drained)
    }

    /// One frame from Azure: passed on (`Some`), or taken by the filter (`None`).
    #[allow(clippy::type_complexity)]
    fn poll_upstream(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Option<Frame<Bytes>>, BoxError>>> {
        match http_body::Body::poll_frame(Pin::new(&mut self.inner), cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let now = Instant::now();
                self.last_frame = now;
                let done = http_body::Body::is_end_stream(&self.inner);
                let frame = match (frame.into_data(), self.tap.as_deref_mut()) {
                    (Ok(data), Some(tap)) => {
                        self.first_byte.get_or_insert(now);
                        tap.scan.feed(&data);
                        if let Some(learn) = &mut tap.learn {
                            learn.feed(&data);
                        }
                        if let Some((find, found)) = &mut tap.model
                            && found.is_none()
                        {
                            *found = find.feed(&data);
                        }
                        match &mut tap.filter {
                            Some(filter) => {
                                filter.push(data);
                                if done {
                                    filter.finish();
                                    self.upstream_done = true;
                                }
                                return Poll::Ready(Some(Ok(None)));
                            }
                            None => {
                                self.bytes += data.len() as u64;
                                Frame::data(data)
                            }
                        }
                    }
                    (Ok(data), None) => {
                        self.first_byte.get_or_insert(now);
                        self.bytes += data.len() as u64;
                        Frame::data(data)
                    }
                    (Err(frame), _) => frame,
                };
                if done {
                    self.finish(End::Complete);
                }
                Poll::Ready(Some(Ok(Some(frame))))
            }
            Poll::Ready(None) => {
                if let Some(filter) = self.tap.as_mut().and_then(|t| t.filter.as_mut()) {
                    filter.finish();
                    self.upstream_done = true;
                    return Poll::Ready(Some(Ok(None)));
                }
                self.finish(End::Complete);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.finish(End::Failed(e.to_string()));
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => {
                let deadline = self.last_frame + self.idle;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let message = format!(
                            "Azure OpenAI sent nothing for {:?}; the response was aborted",
                            self.idle
                        );
                        self.finish(End::Failed(message.clone()));
                        Poll::Ready(Some(Err(message.into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl Body {
    /// An empty body.
    pub fn empty() -> Body {
        Body::Full(None)
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Body {
        if bytes.is_empty() {
            Body::Full(None)
        } else {
            Body::Full(Some(bytes))
        }
    }
}

impl From<&'static str> for Body {
    fn from(text: &'static str) -> Body {
        Body::from(Bytes::from_static(text.as_bytes()))
    }
}

impl From<Incoming> for Body {
    fn from(incoming: Incoming) -> Body {
        Body::Stream(incoming)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Stream(incoming) => Pin::new(incoming).poll_frame(cx).map_err(Into::into),
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Upstream(body) => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Stream(incoming) => incoming.is_end_stream(),
            Body::Full(bytes) => bytes.is_none(),
            Body::Upstream(body) => body.inner.is_end_stream() && body.filtering_drained(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Stream(incoming) => incoming.size_hint(),
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            // The filter may take bytes out: the length is no longer known.
            Body::Upstream(body) if body.filtering() => SizeHint::default(),
            Body::Upstream(body) => body.inner.size_hint(),
        }
    }
}
