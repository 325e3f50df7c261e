//! Token usage read from Azure's answers as they pass to the client, never by holding them.
//!
//! [`Scan`] is a small state machine over the bytes of a response: it looks for the key
//! `"usage"` followed by an object, copies that object alone (a few hundred bytes, capped)
//! and parses it once it closes. The last object found wins: a JSON answer has one; a chat
//! stream asked for usage has it in its last frame (`choices: []`); a Responses stream has
//! `"usage": null` early and the real one in `response.completed`. A key inside a string
//! cannot match: its quotes would be escaped.
//!
//! [`UsageFrameFilter`] removes the one extra frame from a chat stream keyless itself asked
//! to carry usage (`[usage] stream_include_usage`): the client gets exactly the frames it
//! would have got. Events pass whole and uncopied; only an event split across two reads is
//! held until its end, and only while that filter is on.

use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde::Deserialize;
use std::collections::VecDeque;

/// Tokens one answer used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt (input) tokens.
    pub prompt: u64,
    /// Completion (output) tokens.
    pub completion: u64,
    /// Both; Azure's `total_tokens`, else their sum.
    pub total: u64,
    /// Prompt tokens served from the prompt cache.
    pub cached: u64,
    /// Completion tokens spent reasoning.
    pub reasoning: u64,
}

#[derive(Deserialize)]
struct RawUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
    input_tokens_details: Option<Details>,
    completion_tokens_details: Option<Details>,
    output_tokens_details: Option<Details>,
}

#[derive(Deserialize)]
struct Details {
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

impl Usage {
    /// A `usage` object in either naming (chat/completions/embeddings, or Responses);
    /// `None` when it is not one.
    pub fn parse(object: &[u8]) -> Option<Usage> {
        let raw: RawUsage = serde_json::from_slice(object).ok()?;
        let prompt = raw.prompt_tokens.or(raw.input_tokens);
        let completion = raw.completion_tokens.or(raw.output_tokens);
        if prompt.is_none() && completion.is_none() && raw.total_tokens.is_none() {
            return None;
        }
        let (prompt, completion) = (prompt.unwrap_or(0), completion.unwrap_or(0));
        let detail = |a: &Option<Details>, b: &Option<Details>, f: fn(&Details) -> Option<u64>| {
            a.as_ref().and_then(f).or_else(|| b.as_ref().and_then(f))
        };
        Some(Usage {
            prompt,
            completion,
            total: raw
                .total_tokens
                .unwrap_or_else(|| prompt.saturating_add(completion)),
            cached: detail(&raw.prompt_tokens_details, &raw.input_tokens_details, |d| {
                d.cached_tokens
            })
            .unwrap_or(0),
            reasoning: detail(
                &raw.completion_tokens_details,
                &raw.output_tokens_details,
                |d| d.reasoning_tokens,
            )
            .unwrap_or(0),
        })
    }
}

const KEY: &[u8] = b"\"usage\"";
/// Built once: a searcher costs more to make than a small answer takes to search.
static USAGE_KEY: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(KEY));
/// The largest `usage` object copied; a real one is under 400 bytes.
const MAX_OBJECT: usize = 4096;

/// Where the scan is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Looking for the key; `matched` bytes of it ended the last read.
    Seeking { matched: usize },
    /// After the key: whitespace, then `:`.
    Colon,
    /// After the colon: whitespace, then `{` (anything else, `null`, ends the match).
    Open,
    /// Inside the object.
    Object {
        depth: u32,
        in_string: bool,
        escaped: bool,
    },
}

/// Finds the last `usage` object in the bytes it is fed, across reads.
#[derive(Debug)]
pub struct Scan {
    state: State,
    object: Vec<u8>,
    found: Option<Usage>,
}

impl Default for Scan {
    fn default() -> Scan {
        Scan::new()
    }
}

impl Scan {
    /// A scan that has seen nothing.
    pub fn new() -> Scan {
        Scan {
            state: State::Seeking { matched: 0 },
            object: Vec::new(),
            found: None,
        }
    }

    /// The usage found so far (the last object).
    pub fn usage(&self) -> Option<Usage> {
        self.found
    }

    /// Looks at the next bytes of the answer.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            data = match self.state {
                State::Seeking { matched } => self.seek(matched, data),
                _ => self.step(data),
            };
        }
    }

    /// Finds the key; returns what follows it (empty when it is not in `data`).
    fn seek<'a>(&mut self, matched: usize, data: &'a [u8]) -> &'a [u8] {
        // The key split across reads: the rest of it must open this one.
        if matched > 0 {
            let need = &KEY[matched..];
            let n = need.len().min(data.len());
            if data[..n] == need[..n] {
                if n == need.len() {
                    self.state = State::Colon;
                    return &data[n..];
                }
                self.state = State::Seeking {
                    matched: matched + n,
                };
                return &[];
            }
        }
        if let Some(at) = USAGE_KEY.find(data) {
            self.state = State::Colon;
            return &data[at + KEY.len()..];
        }
        // Does the read end with the start of the key?
        let tail = data.len().min(KEY.len() - 1);
        let matched = (1..=tail)
            .rev()
            .find(|&n| data[data.len() - n..] == KEY[..n])
            .unwrap_or(0);
        self.state = State::Seeking { matched };
        &[]
    }

    /// After the key: the colon and the brace one byte at a time (a few bytes), then the
    /// object by [`object_end`], a jump from one quote or brace to the next.
    fn step<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        for (i, &b) in data.iter().enumerate() {
            match &mut self.state {
                State::Seeking { .. } => return &data[i..],
                State::Colon => match b {
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    b':' => self.state = State::Open,
                    _ => self.state = State::Seeking { matched: 0 },
                },
                State::Open => match b {
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    b'{' => {
                        self.object.clear();
                        self.state = State::Object {
                            depth: 0,
                            in_string: false,
                            escaped: false,
                        };
                        // The brace itself is the object's first byte.
                        return &data[i..];
                    }
                    _ => self.state = State::Seeking { matched: 0 },
                },
                State::Object {
                    depth,
                    in_string,
                    escaped,
                } => {
                    let rest = &data[i..];
                    let end = object_end(rest, depth, in_string, escaped);
                    let taken = &rest[..end.unwrap_or(rest.len())];
                    if self.object.len() + taken.len() > MAX_OBJECT {
                        self.object.clear();
                        self.state = State::Seeking { matched: 0 };
                        return rest;
                    }
                    self.object.extend_from_slice(taken);
                    let Some(end) = end else { return &[] };
                    if let Some(usage) = Usage::parse(&self.object) {
                        self.found = Some(usage);
                    }
                    self.object.clear();
                    self.state = State::Seeking { matched: 0 };
                    return &rest[end..];
                }
            }
        }
        &[]
    }
}

/// Where the JSON value being read ends in `data` (the index after its closing brace),
/// or `None` when it goes on past `data`; the state carries over to the next read. It
/// jumps with `memchr` from one byte that matters to the next: inside a string a quote
/// or a backslash, outside one a quote or a brace.
fn object_end(
    data: &[u8],
    depth: &mut u32,
    in_string: &mut bool,
    escaped: &mut bool,
) -> Option<usize> {
    let mut i = 0;
    while i < data.len() {
        if *escaped {
            *escaped = false;
            i += 1;
            continue;
        }
        if *in_string {
            let at = i + memchr::memchr2(b'"', b'\\', &data[i..])?;
            if data[at] == b'\\' {
                *escaped = true;
            } else {
                *in_string = false;
            }
            i = at + 1;
            continue;
        }
        let at = i + memchr::memchr3(b'"', b'{', b'}', &data[i..])?;
        match data[at] {
            b'"' => *in_string = true,
            b'{' => *depth += 1,
            _ => {
                *depth = depth.saturating_sub(1);
                if *depth == 0 {
                    return Some(at + 1);
                }
            }
        }
        i = at + 1;
    }
    None
}

/// Removes the usage frame (`choices: []` with a `usage` object) from a chat stream, which
/// keyless asked for and the client did not. Every other byte passes as it came.
#[derive(Debug, Default)]
pub struct UsageFrameFilter {
    /// The start of an event whose end has not come yet.
    partial: BytesMut,
    /// What is ready for the client, in order.
    ready: VecDeque<Bytes>,
}

impl UsageFrameFilter {
    /// Takes the next read from Azure.
    pub fn push(&mut self, data: Bytes) {
        // Only complete events are judged; the tail after the last event end waits.
        let Some(end) = last_event_end(&data) else {
            self.partial.extend_from_slice(&data);
            return;
        };
        let (complete, rest) = (data.slice(..end), data.slice(end..));
        let complete = if self.partial.is_empty() {
            complete
        } else {
            // An event split across reads: joined (a copy of one event, rare).
            self.partial.extend_from_slice(&complete);
            std::mem::take(&mut self.partial).freeze()
        };
        self.judge(complete);
        if !rest.is_empty() {
            self.partial.extend_from_slice(&rest);
        }
    }

    /// The next bytes for the client.
    pub fn pop(&mut self) -> Option<Bytes> {
        self.ready.pop_front()
    }

    /// Whether nothing is held or waiting.
    pub fn is_drained(&self) -> bool {
        self.ready.is_empty() && self.partial.is_empty()
    }

    /// Azure's stream ended: whatever is held goes out as it is.
    pub fn finish(&mut self) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial).freeze();
            self.ready.push_back(rest);
        }
    }

    /// Passes complete events on, without the usage frame.
    fn judge(&mut self, events: Bytes) {
        // The usual read holds no usage frame: it passes whole.
        if memmem::find(&events, b"\"usage\":{").is_none()
            && memmem::find(&events, b"\"usage\": {").is_none()
        {
            self.ready.push_back(events);
            return;
        }
        let mut start = 0;
        let mut kept = start;
        while start < events.len() {
            let end = next_event_end(&events[start..]).map_or(events.len(), |e| start + e);
            let event = &events[start..end];
            if is_usage_frame(event) {
                if kept < start {
                    self.ready.push_back(events.slice(kept..start));
                }
                kept = end;
            }
            start = end;
        }
        if kept < events.len() {
            self.ready.push_back(events.slice(kept..));
        }
    }
}

/// The usage frame: a data event whose JSON has `"choices":[]` and a `usage` object.
fn is_usage_frame(event: &[u8]) -> bool {
    let has_usage = memmem::find(event, b"\"usage\":{").is_some()
        || memmem::find(event, b"\"usage\": {").is_some();
    let no_choices = memmem::find(event, b"\"choices\":[]").is_some()
        || memmem::find(event, b"\"choices\": []").is_some();
    has_usage && no_choices
}

/// Just past the end of the first event (`\n\n`, or `\r\n\r\n`).
fn next_event_end(data: &[u8]) -> Option<usize> {
    let lf = memmem::find(data, b"\n\n").map(|i| i + 2);
    let crlf = memmem::find(data, b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Just past the end of the last complete event.
fn last_event_end(data: &[u8]) -> Option<usize> {
    let lf = memmem::rfind(data, b"\n\n").map(|i| i + 2);
    let crlf = memmem::rfind(data, b"\r\n\r\n").map(|i| i + 4);
    lf.max(crlf)
}

/// Adds `"stream_options":{"include_usage":true}` to a JSON object body (after its `{`).
pub fn with_include_usage(body: &[u8]) -> Option<Bytes> {
    let open = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[open] != b'{' {
        return None;
    }
    let rest = &body[open + 1..];
    let empty =
        rest.iter().all(u8::is_ascii_whitespace) || rest.trim_ascii_start().first() == Some(&b'}');
    let mut out = BytesMut::with_capacity(body.len() + 48);
    out.extend_from_slice(&body[..=open]);
    out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
    if !empty {
        out.extend_from_slice(b",");
    }
    out.extend_from_slice(rest);
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(text: &str, size: usize) -> Option<Usage> {
        let mut scan = Scan::new();
        for piece in text.as_bytes().chunks(size) {
            scan.feed(piece);
        }
        scan.usage()
    }

    #[test]
    fn chat_json_usage_with_details() {
        let body = r#"{"id":"x","choices":[{"message":{"content":"the \"usage\": {\"prompt_tokens\":999}"}}],"usage":{"completion_tokens":7,"completion_tokens_details":{"reasoning_tokens":3},"prompt_tokens":11,"prompt_tokens_details":{"cached_tokens":4},"total_tokens":18}}"#;
        let want = Usage {
            prompt: 11,
            completion: 7,
            total: 18,
            cached: 4,
            reasoning: 3,
        };
        for size in [1, 2, 3, 7, 64, body.len()] {
            assert_eq!(scan_in_pieces(body, size), Some(want), "pieces of {size}");
        }
    }

    #[test]
    fn responses_stream_usage_is_the_completed_events() {
        let stream = concat!(
            "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"usage\":null}}\n\n",
            "event: response.output_text.delta\ndata: {\"delta\":\"hi\"}\n\n",
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\": {\"input_tokens\":5,\"input_tokens_details\":{\"cached_tokens\":1},\"output_tokens\":9,\"output_tokens_details\":{\"reasoning_tokens\":2},\"total_tokens\":14}}}\n\n",
        );
        for size in [1, 5, 100, stream.len()] {
            assert_eq!(
                scan_in_pieces(stream, size),
                Some(Usage {
                    prompt: 5,
                    completion: 9,
                    total: 14,
                    cached: 1,
                    reasoning: 2
                })
            );
        }
    }

    #[test]
    fn no_usage_is_none_and_huge_objects_are_dropped() {
        assert_eq!(scan_in_pieces(r#"{"usage":null}"#, 3), None);
        assert_eq!(scan_in_pieces(r#"{"data":[1,2,3]}"#, 3), None);
        let huge = format!(
            r#"{{"usage":{{"x":"{}","prompt_tokens":1}}}}"#,
            "a".repeat(5000)
        );
        assert_eq!(scan_in_pieces(&huge, 100), None);
        // An embeddings answer: only prompt and total.
        let e = r#"{"data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        assert_eq!(scan_in_pieces(e, 4).unwrap().total, 8);
    }

    #[test]
    fn braces_quotes_and_backslashes_in_strings_do_not_end_the_object() {
        // A string holding `}`, `{`, an escaped quote and an escaped backslash, then a
        // nested object: the object ends at its own closing brace, at every split.
        let body = r#"{"usage":{"note":"} { \" \\","prompt_tokens_details":{"cached_tokens":2},"prompt_tokens":3,"total_tokens":3},"tail":"}"}"#;
        for size in 1..=body.len() {
            let usage = scan_in_pieces(body, size);
            assert_eq!(
                usage.map(|u| (u.prompt, u.cached)),
                Some((3, 2)),
                "pieces of {size}"
            );
        }
    }

    fn filtered(reads: &[&str]) -> String {
        let mut f = UsageFrameFilter::default();
        let mut out = Vec::new();
        for r in reads {
            f.push(Bytes::copy_from_slice(r.as_bytes()));
            while let Some(b) = f.pop() {
                out.extend_from_slice(&b);
            }
        }
        f.finish();
        while let Some(b) = f.pop() {
            out.extend_from_slice(&b);
        }
        String::from_utf8(out).unwrap()
    }

    const FIRST: &str = "data: {\"choices\":[],\"prompt_filter_results\":[]}\n\n";
    const DELTA: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n";
    const USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    #[test]
    fn the_usage_frame_is_removed_and_nothing_else() {
        let want = format!("{FIRST}{DELTA}{DONE}");
        let whole = format!("{FIRST}{DELTA}{USAGE}{DONE}");
        assert_eq!(filtered(&[FIRST, DELTA, USAGE, DONE]), want);
        assert_eq!(filtered(&[&whole]), want);
        for cut in 1..whole.len() {
            let (a, b) = whole.split_at(cut);
            assert_eq!(filtered(&[a, b]), want, "split at {cut}");
        }
    }

    #[test]
    fn include_usage_is_added_to_the_body() {
        assert_eq!(
            &with_include_usage(br#"{"model":"m","stream":true}"#).unwrap()[..],
            br#"{"stream_options":{"include_usage":true},"model":"m","stream":true}"#
        );
        assert_eq!(
            &with_include_usage(b" {}").unwrap()[..],
            br#" {"stream_options":{"include_usage":true}}"#
        );
        assert!(with_include_usage(b"[1]").is_none());
    }
}
