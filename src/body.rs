//! The one body type keyless sends and answers with.
//!
//! Either a body read through untouched (a client's upload, Azure's response, SSE above
//! all: frames go on as they arrive, nothing is buffered or re-framed) or bytes keyless
//! holds (a rewritten JSON request, its own error answers). An enum rather than a boxed
//! trait object: no allocation per request, and `size_hint` stays exact so hyper keeps
//! `Content-Length` framing where there was one.

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

/// Azure's response body on its way to the client: passed through frame by frame, but
/// aborted when Azure goes silent for longer than the idle timeout, and keeping a
/// concurrency slot (and whatever else is attached) until the body ends or is dropped.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    idle: Duration,
    last_frame: Instant,
    /// Created only when a poll finds no frame ready: small answers that arrive whole
    /// never touch the timer.
    timer: Option<Pin<Box<Sleep>>>,
    _guard: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl UpstreamBody {
    /// Wraps `inner`; `guard` is dropped with the body.
    pub fn new(
        inner: Incoming,
        idle: Duration,
        guard: Option<Box<dyn std::any::Any + Send + Sync>>,
    ) -> UpstreamBody {
        UpstreamBody {
            inner,
            idle,
            last_frame: Instant::now(),
            timer: None,
            _guard: guard,
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match http_body::Body::poll_frame(Pin::new(&mut self.inner), cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.last_frame = Instant::now();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                self._guard = None;
                Poll::Ready(None)
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
                    Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                        "Azure OpenAI sent nothing for {:?}; the response was aborted",
                        self.idle
                    )
                    .into()))),
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
            Body::Upstream(body) => body.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Stream(incoming) => incoming.size_hint(),
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Upstream(body) => body.inner.size_hint(),
        }
    }
}
