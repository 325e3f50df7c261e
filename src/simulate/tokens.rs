//! Token counts with o200k_base, the tokenizer of gpt-4o, gpt-4.1 and the o-series, so the
//! simulator's `usage` matches what Azure would count for the same text (and keyless's TPM
//! estimates can be compared with it).
//!
//! The tokenizer's tables (about 200,000 entries, some 45 MB of memory) are built when the
//! first request that counts arrives, not at start-up: `keyless serve --simulate` starts at
//! once, and that first answer waits for the load (about 0.3 s in a release build), on a
//! blocking thread ([`load`]) so that the runtime it shares with keyless's accept loop is
//! not stalled. After that a short prompt takes microseconds: the chat path stays as fast as
//! it was with the old four-bytes-a-token estimate (measured with wrk against `keyless
//! simulator`).

use super::knobs::DEFAULT_REPLY;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use tiktoken_rs::{CoreBPE, o200k_base_singleton};

fn bpe() -> &'static CoreBPE {
    o200k_base_singleton()
}

/// Set once the tables are built, so every later request skips [`load`] with one load.
static LOADED: AtomicBool = AtomicBool::new(false);

/// Builds the tables on a blocking thread if they are not built yet; awaited by the request
/// that needs them (concurrent first requests wait on the same build).
pub(super) async fn load() {
    if LOADED.load(Ordering::Acquire) {
        return;
    }
    // If the runtime refuses (it is shutting down), the first count builds them inline.
    let _ = tokio::task::spawn_blocking(|| {
        bpe();
    })
    .await;
    LOADED.store(true, Ordering::Release);
}

/// The number of o200k_base tokens in `text`.
pub(super) fn count(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    // The default reply is most answers' text (the load benchmark's every answer): counted once.
    static DEFAULT_REPLY_TOKENS: LazyLock<u64> =
        LazyLock::new(|| bpe().encode_ordinary(DEFAULT_REPLY).len() as u64);
    if text == DEFAULT_REPLY {
        return *DEFAULT_REPLY_TOKENS;
    }
    bpe().encode_ordinary(text).len() as u64
}

/// Chat's prompt tokens: OpenAI's published formula (3 tokens of framing a message, the
/// role and content tokens, 1 more for a `name`, 3 to prime the reply).
pub(super) fn count_messages<'a>(messages: impl Iterator<Item = MessageText<'a>>) -> u64 {
    let mut total = 3;
    for message in messages {
        total += 3 + count(message.role) + message.texts.iter().map(|t| count(t)).sum::<u64>();
        if message.named {
            total += 1;
        }
    }
    total
}

/// What of one chat message counts as tokens.
pub(super) struct MessageText<'a> {
    pub(super) role: &'a str,
    pub(super) texts: Vec<&'a str>,
    pub(super) named: bool,
}

/// The first `max` tokens of `text`, when it has more; `None` when it fits. Cut at a
/// character boundary (a token can end inside a multi-byte character).
pub(super) fn truncate(text: &str, max: u64) -> Option<String> {
    let tokens = bpe().encode_ordinary(text);
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    if tokens.len() <= max {
        return None;
    }
    let bytes = bpe().decode_bytes(&tokens[..max]).unwrap_or_default();
    Some(match std::str::from_utf8(&bytes) {
        Ok(text) => text.to_owned(),
        Err(error) => String::from_utf8_lossy(&bytes[..error.valid_up_to()]).into_owned(),
    })
}

/// The tokens of `text` as the strings (and bytes) they stand for, for `logprobs`.
pub(super) fn pieces(text: &str) -> Vec<Vec<u8>> {
    let tokens = bpe().encode_ordinary(text);
    bpe()._decode_native_and_split(tokens).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_match_o200k_base() {
        // Reference counts from OpenAI's tiktoken (o200k_base).
        assert_eq!(count("hello world"), 2);
        assert_eq!(count(""), 0);
        assert_eq!(
            count(DEFAULT_REPLY),
            bpe().encode_ordinary(DEFAULT_REPLY).len() as u64
        );
        assert_eq!(
            count_messages(
                [MessageText {
                    role: "user",
                    texts: vec!["hello world"],
                    named: false
                }]
                .into_iter()
            ),
            3 + 3 + 1 + 2
        );
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("hello world", 5), None);
        assert_eq!(truncate("hello world", 1).as_deref(), Some("hello"));
        let cut = truncate("日本語のテキストです", 2).unwrap();
        assert!("日本語のテキストです".starts_with(&cut), "{cut}");
        let joined: Vec<u8> = pieces("a b c").concat();
        assert_eq!(joined, b"a b c");
    }
}
