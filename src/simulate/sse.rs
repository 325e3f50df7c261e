//! Answer bodies: pre-built SSE frames paced one body frame each, and the cut that
//! `x-sim-drop-after` asks for.

use super::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The error that ends a body cut by `x-sim-drop-after`: hyper then closes the connection
/// (HTTP/1) or resets the stream (HTTP/2) without finishing the body.
#[derive(Debug)]
pub(super) struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose (x-sim-drop-after)")
    }
}

impl std::error::Error for Dropped {}

/// Writes all frames into one buffer, then slices it: one allocation for the whole stream,
/// and each frame still goes out as its own body frame.
pub(super) struct FrameWriter {
    /// The frames written so far, back to back.
    pub(super) buf: String,
    ends: Vec<usize>,
}

impl FrameWriter {
    pub(super) fn new(frames: usize, bytes: usize) -> Self {
        Self {
            buf: String::with_capacity(bytes),
            ends: Vec::with_capacity(frames),
        }
    }

    /// Marks the end of the frame written since the previous call.
    pub(super) fn end(&mut self) {
        self.ends.push(self.buf.len());
    }

    pub(super) fn finish(self) -> Vec<Bytes> {
        let all = Bytes::from(self.buf);
        let mut start = 0;
        self.ends
            .into_iter()
            .map(|end| {
                let frame = all.slice(start..end);
                start = end;
                frame
            })
            .collect()
    }
}

/// A body that hands out pre-built SSE frames one at a time, sleeping `delay` between them,
/// so a client (and keyless in front of it) sees every frame as its own write. The last
/// `tail` frames follow the one before them at once: the usage frame and `[DONE]` come as
/// soon as the model has finished, not a token's time later.
pub(super) struct SseBody {
    frames: std::vec::IntoIter<Bytes>,
    delay: Duration,
    tail: usize,
    /// Armed after each frame when `delay` is non-zero; reused to avoid an allocation a frame.
    sleep: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl SseBody {
    pub(super) fn new(frames: Vec<Bytes>, delay: Duration, tail: usize) -> Self {
        Self {
            frames: frames.into_iter(),
            delay,
            tail,
            sleep: None,
            waiting: false,
        }
    }
}

impl HttpBody for SseBody {
    type Data = Bytes;
    type Error = super::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.frames.len() == 0 {
            return Poll::Ready(None);
        }
        if this.waiting {
            let delay = this.delay;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            ready!(sleep.as_mut().poll(cx));
            this.waiting = false;
        }
        let frame = this.frames.next();
        if !this.delay.is_zero() && this.frames.len() > this.tail {
            this.waiting = true;
            if let Some(sleep) = this.sleep.as_mut() {
                sleep.as_mut().reset(Instant::now() + this.delay);
            }
        }
        Poll::Ready(frame.map(|bytes| Ok(Frame::data(bytes))))
    }

    // No exact `size_hint`: it would make hyper send a content-length, and Azure streams
    // chunked.
    fn is_end_stream(&self) -> bool {
        self.frames.len() == 0
    }
}

/// Passes `left` data frames of `inner`, then fails: the cut of `x-sim-drop-after`.
struct DropAfter {
    inner: Body,
    left: usize,
    /// Whether the body said "not yet" once before the cut: hyper writes out what it has
    /// (the head, the frames so far) when a body is pending, but drops its unsent buffer
    /// when the body fails, so without this pause the client would see no head at all.
    paused: bool,
}

impl HttpBody for DropAfter {
    type Data = Bytes;
    type Error = super::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            if !self.paused {
                self.paused = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            return Poll::Ready(Some(Err(Box::new(Dropped))));
        }
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if matches!(&frame, Some(Ok(frame)) if frame.is_data()) {
            self.left -= 1;
        }
        // A body shorter than the cut point is cut at its end instead of ending cleanly.
        Poll::Ready(frame.or_else(|| Some(Err(Box::new(Dropped)))))
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    // Keeps the inner body's exact length, so a cut JSON answer is one whose
    // content-length was promised and not delivered.
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `body` cut after `frames` data frames.
pub(super) fn drop_after(body: Body, frames: usize) -> Body {
    DropAfter {
        inner: body,
        left: frames,
        paused: false,
    }
    .boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// When each frame of a body of `frames` frames comes, on tokio's paused clock.
    async fn arrivals(frames: usize, tail: usize) -> Vec<Duration> {
        let frames = (0..frames).map(|i| Bytes::from(i.to_string())).collect();
        let mut body = SseBody::new(frames, Duration::from_millis(50), tail);
        let start = Instant::now();
        let mut at = Vec::new();
        while let Some(frame) = body.frame().await {
            frame.unwrap();
            at.push(start.elapsed());
        }
        at
    }

    #[tokio::test(start_paused = true)]
    async fn frames_are_paced_and_the_tail_follows_at_once() {
        let ms = Duration::from_millis;
        assert_eq!(arrivals(4, 0).await, [ms(0), ms(50), ms(100), ms(150)]);
        // The usage frame and [DONE] after the finish frame.
        assert_eq!(arrivals(4, 2).await, [ms(0), ms(50), ms(50), ms(50)]);
        assert_eq!(arrivals(2, 1).await, [ms(0), ms(0)]);
    }
}
