//! `chat/completions`: the benchmark's hot path, so its JSON is written by hand around
//! pre-built constant parts instead of through a `serde_json::Value` tree.

use super::{
    Body, FrameWriter, Knobs, estimate_tokens, invalid_json, invalid_request, json_response,
    push_json_str, random_id, split_reply, sse_response, unix_now, word_starts,
};
use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt::Write as _;

/// The part of a chat request the simulator reads; `messages` and the rest are skipped.
#[derive(Deserialize)]
struct ChatRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Azure's default content filter verdict, as it annotates every choice.
macro_rules! filter_safe {
    () => {
        r#"{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}"#
    };
}

/// Azure's verdict on the prompt, which it sends before any choice.
macro_rules! prompt_filter_results {
    () => {
        r#"[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},"jailbreak":{"filtered":false,"detected":false},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}}]"#
    };
}

/// Azure's first streamed frame: no choices, empty id and model, only the prompt verdict.
const FIRST_FRAME: &str = concat!(
    r#"data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":"#,
    prompt_filter_results!(),
    "}\n\n"
);
const ROLE_FRAME: &str = r#"data: {"choices":[{"content_filter_results":{},"delta":{"content":"","refusal":null,"role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}]"#;
const CONTENT_FRAME_HEAD: &str = concat!(
    r#"data: {"choices":[{"content_filter_results":"#,
    filter_safe!(),
    r#","delta":{"content":"#
);
const CONTENT_FRAME_TAIL: &str = r#"},"finish_reason":null,"index":0,"logprobs":null}]"#;
const STOP_FRAME: &str = r#"data: {"choices":[{"content_filter_results":{},"delta":{},"finish_reason":"stop","index":0,"logprobs":null}]"#;
const USAGE_FRAME: &str = r#"data: {"choices":[]"#;
const DONE_FRAME: &str = "data: [DONE]\n\n";

const COMPLETION_HEAD: &str = concat!(
    r#"{"choices":[{"content_filter_results":"#,
    filter_safe!(),
    r#","finish_reason":"stop","index":0,"logprobs":null,"message":{"annotations":[],"content":"#
);
const COMPLETION_MESSAGE_TAIL: &str = r#","refusal":null,"role":"assistant"}}]"#;

/// `POST .../chat/completions`: the model is the URL's deployment, else the body's `model`.
pub(super) async fn completions(
    deployment: Option<&str>,
    body: &[u8],
    knobs: &Knobs,
) -> Response<Body> {
    let request: ChatRequest<'_> = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(error) => return invalid_json(&error),
    };
    let Some(model) = deployment
        .or(request.model.as_deref())
        .filter(|model| !model.is_empty())
    else {
        return invalid_request("you must provide a model parameter");
    };
    let (text, pieces) = split_reply(knobs.reply(), knobs.chunks);
    // The answer is what the content frames carry, so streamed and non-streamed agree.
    let content = if pieces.is_empty() { "" } else { text.as_str() };
    let usage = Usage {
        prompt: estimate_tokens(body.len()),
        completion: word_starts(content).count() as u64,
    };

    // `,"created":..,"id":..,"model":..,"object":..,"system_fingerprint":..`: what every
    // frame after the first repeats (Azure orders keys alphabetically).
    let streamed = request.stream.unwrap_or(false);
    let mut common = String::with_capacity(128 + model.len());
    let _ = write!(
        common,
        r#","created":{},"id":"{}","model":"#,
        unix_now(),
        random_id("chatcmpl-", 29)
    );
    push_json_str(&mut common, model);
    common.push_str(if streamed {
        r#","object":"chat.completion.chunk","system_fingerprint":"fp_sim""#
    } else {
        r#","object":"chat.completion","system_fingerprint":"fp_sim""#
    });

    if !streamed {
        knobs.pause().await;
        let mut out = String::with_capacity(1024 + content.len() + common.len());
        out.push_str(COMPLETION_HEAD);
        push_json_str(&mut out, content);
        out.push_str(COMPLETION_MESSAGE_TAIL);
        out.push_str(&common);
        out.push_str(concat!(
            r#","prompt_filter_results":"#,
            prompt_filter_results!()
        ));
        out.push_str(r#","usage":"#);
        usage.push_json(&mut out);
        out.push('}');
        return json_response(StatusCode::OK, Bytes::from(out));
    }

    let include_usage = request
        .stream_options
        .and_then(|options| options.include_usage)
        .unwrap_or(false);
    let mut frames = FrameWriter::new(
        pieces.len() + 5,
        (pieces.len() + 4) * (CONTENT_FRAME_HEAD.len() + common.len() + 80) + content.len(),
    );
    frames.buf.push_str(FIRST_FRAME);
    frames.end();
    // With `include_usage`, OpenAI and Azure put `"usage":null` on every chunk but the last.
    let close = if include_usage {
        ",\"usage\":null}\n\n"
    } else {
        "}\n\n"
    };
    frames.buf.push_str(ROLE_FRAME);
    frames.buf.push_str(&common);
    frames.buf.push_str(close);
    frames.end();
    for piece in pieces {
        frames.buf.push_str(CONTENT_FRAME_HEAD);
        push_json_str(&mut frames.buf, &text[piece]);
        frames.buf.push_str(CONTENT_FRAME_TAIL);
        frames.buf.push_str(&common);
        frames.buf.push_str(close);
        frames.end();
    }
    frames.buf.push_str(STOP_FRAME);
    frames.buf.push_str(&common);
    frames.buf.push_str(close);
    frames.end();
    if include_usage {
        frames.buf.push_str(USAGE_FRAME);
        frames.buf.push_str(&common);
        frames.buf.push_str(r#","usage":"#);
        usage.push_json(&mut frames.buf);
        frames.buf.push_str("}\n\n");
        frames.end();
    }
    frames.buf.push_str(DONE_FRAME);
    frames.end();
    sse_response(frames.finish(), knobs.delay)
}

/// Token counts, in chat's `usage` shape.
struct Usage {
    prompt: u64,
    completion: u64,
}

impl Usage {
    fn push_json(&self, out: &mut String) {
        let _ = write!(
            out,
            r#"{{"completion_tokens":{},"completion_tokens_details":{{"accepted_prediction_tokens":0,"audio_tokens":0,"reasoning_tokens":0,"rejected_prediction_tokens":0}},"prompt_tokens":{},"prompt_tokens_details":{{"audio_tokens":0,"cached_tokens":0}},"total_tokens":{}}}"#,
            self.completion,
            self.prompt,
            self.prompt + self.completion
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_frames_are_valid_json() {
        let json = FIRST_FRAME.strip_prefix("data: ").unwrap().trim_end();
        assert!(
            serde_json::from_str::<serde_json::Value>(json).is_ok(),
            "{json}"
        );
        let mut usage = String::new();
        Usage {
            prompt: 3,
            completion: 4,
        }
        .push_json(&mut usage);
        let usage: serde_json::Value = serde_json::from_str(&usage).unwrap();
        assert_eq!(usage["total_tokens"], 7);
    }
}
