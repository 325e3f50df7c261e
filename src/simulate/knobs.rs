//! The `x-sim-*` request headers that shape one answer, and the generated reply text.

use http::{HeaderMap, HeaderName, StatusCode};
use std::ops::Range;
use std::time::Duration;

pub(super) const SIM_CHUNKS: HeaderName = HeaderName::from_static("x-sim-chunks");
pub(super) const SIM_DELAY_MS: HeaderName = HeaderName::from_static("x-sim-delay-ms");
pub(super) const SIM_HEAD_DELAY_MS: HeaderName = HeaderName::from_static("x-sim-head-delay-ms");
pub(super) const SIM_STATUS: HeaderName = HeaderName::from_static("x-sim-status");
pub(super) const SIM_RETRY_AFTER_MS: HeaderName = HeaderName::from_static("x-sim-retry-after-ms");
pub(super) const SIM_REPLY: HeaderName = HeaderName::from_static("x-sim-reply");
pub(super) const SIM_DROP_AFTER: HeaderName = HeaderName::from_static("x-sim-drop-after");
pub(super) const SIM_COMPLETE_AFTER_MS: HeaderName =
    HeaderName::from_static("x-sim-complete-after-ms");

/// What the test or benchmark asked of this answer, read from `x-sim-*` request headers.
/// Unparsable values fall back to the defaults: a knob never turns into an error.
#[derive(Debug, Clone)]
pub(super) struct Knobs {
    /// Content frames in a stream (at most one a character of the reply).
    pub(super) chunks: usize,
    /// Pause between streamed frames, or once before a non-streamed answer.
    pub(super) delay: Duration,
    /// Pause before the response head of any answer, errors included.
    pub(super) head_delay: Duration,
    /// A 4xx/5xx to answer instead of the operation.
    pub(super) status: Option<StatusCode>,
    /// `retry-after-ms` of a simulated 429.
    pub(super) retry_after_ms: u64,
    /// The generated text; `None` is the operation's default.
    pub(super) reply: Option<String>,
    /// Cut the connection after this many body frames.
    pub(super) drop_after: Option<usize>,
    /// When a background response or a batch finishes, from its creation.
    pub(super) complete_after: Option<Duration>,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs::read(&HeaderMap::new())
    }
}

impl Knobs {
    const DEFAULT_CHUNKS: usize = 8;
    /// Bounds that keep a typo from building a gigabyte answer or sleeping for a day.
    const MAX_CHUNKS: usize = 100_000;
    const MAX_DELAY_MS: u64 = 60_000;

    pub(super) fn read(headers: &HeaderMap) -> Self {
        fn number(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
            headers.get(name)?.to_str().ok()?.trim().parse().ok()
        }
        let millis = |name: &HeaderName| {
            number(headers, name).map(|n| Duration::from_millis(n.min(Self::MAX_DELAY_MS)))
        };
        Knobs {
            chunks: number(headers, &SIM_CHUNKS).map_or(Self::DEFAULT_CHUNKS, |n| {
                usize::try_from(n)
                    .unwrap_or(Self::MAX_CHUNKS)
                    .min(Self::MAX_CHUNKS)
            }),
            delay: millis(&SIM_DELAY_MS).unwrap_or_default(),
            head_delay: millis(&SIM_HEAD_DELAY_MS).unwrap_or_default(),
            status: number(headers, &SIM_STATUS)
                .and_then(|n| StatusCode::from_u16(u16::try_from(n).ok()?).ok())
                .filter(|status| status.is_client_error() || status.is_server_error()),
            retry_after_ms: number(headers, &SIM_RETRY_AFTER_MS)
                .unwrap_or(1000)
                .min(Self::MAX_DELAY_MS * 60),
            reply: headers
                .get(&SIM_REPLY)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
                .filter(|reply| !reply.trim().is_empty()),
            drop_after: number(headers, &SIM_DROP_AFTER)
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            complete_after: millis(&SIM_COMPLETE_AFTER_MS),
        }
    }

    /// The pause a non-streamed answer takes before its head.
    pub(super) async fn pause(&self) {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
    }

    /// The generated text.
    pub(super) fn reply(&self) -> &str {
        self.reply.as_deref().unwrap_or(DEFAULT_REPLY)
    }
}

/// The answer when `x-sim-reply` names none.
pub(super) const DEFAULT_REPLY: &str = "Hello from the keyless simulator! This answer came from a simulated \
    Azure OpenAI deployment, reached with a Microsoft Entra ID token instead of an API key.";

/// `text` split into at most `chunks` contiguous pieces that concatenate back to it.
///
/// Pieces break where words start (so a piece ends with the spaces before the next word)
/// when the text has at least `chunks` words, else at characters; a text of fewer characters than `chunks` gives
/// one piece a character. The text is said once: it never repeats to fill the chunks.
/// An empty text gives no piece; `chunks: 0` gives none either.
pub(super) fn split(text: &str, chunks: usize) -> Vec<Range<usize>> {
    if chunks == 0 || text.is_empty() {
        return Vec::new();
    }
    let mut starts: Vec<usize> = word_starts(text).collect();
    // Leading spaces belong to the first piece.
    if let Some(first) = starts.first_mut() {
        *first = 0;
    }
    if starts.len() < chunks {
        starts = text.char_indices().map(|(i, _)| i).collect();
    }
    split_at(text, &starts, chunks)
}

/// `text` split into at most `chunks` pieces that break only at `starts` (ascending byte
/// offsets of char boundaries, the first 0), spread evenly over them.
pub(super) fn split_at(text: &str, starts: &[usize], chunks: usize) -> Vec<Range<usize>> {
    if chunks == 0 || text.is_empty() || starts.is_empty() {
        return Vec::new();
    }
    let total = starts.len();
    let pieces = chunks.min(total);
    // Piece i runs from unit i*total/pieces to unit (i+1)*total/pieces; the first starts at
    // 0 and the last ends at the end, so no byte is lost.
    let boundary = |i: usize| {
        if i == pieces {
            text.len()
        } else {
            starts
                .get(i * total / pieces)
                .copied()
                .unwrap_or(text.len())
        }
    };
    (0..pieces).map(|i| boundary(i)..boundary(i + 1)).collect()
}

/// Byte offsets where a word begins (a non-space after a space, or the first character).
pub(super) fn word_starts(text: &str) -> impl Iterator<Item = usize> + '_ {
    let mut previous_space = true;
    text.char_indices().filter_map(move |(i, c)| {
        let space = c.is_whitespace();
        let start = previous_space && !space;
        previous_space = space;
        start.then_some(i)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_said_once_whatever_the_chunk_count() {
        for (text, chunks, expected) in [
            ("one two  three", 0, 0),
            ("one two  three", 1, 1),
            ("one two  three", 3, 3),
            ("one two  three", 8, 8),
            ("one two  three", 40, 14),
            ("pong", 8, 4),
            ("  leading space", 2, 2),
            ("é日本", 5, 3),
            ("", 4, 0),
        ] {
            let pieces = split(text, chunks);
            assert_eq!(pieces.len(), expected, "{text:?} in {chunks}");
            if expected > 0 {
                let joined: String = pieces.iter().map(|r| &text[r.clone()]).collect();
                assert_eq!(joined, text);
                assert!(pieces.iter().all(|r| !r.is_empty()), "{text:?} {pieces:?}");
            }
        }
        // Enough words: the pieces break only where words start.
        let pieces = split("one two  three", 3);
        assert_eq!(pieces, [0..4, 4..9, 9..14]);
    }
}
