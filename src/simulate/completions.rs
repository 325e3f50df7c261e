//! Legacy `completions` (gpt-35-turbo-instruct and the like): the reply as `text`,
//! plain or streamed, cut by `stop` and by `max_tokens`, which defaults to 16 here as on
//! Azure and OpenAI (so an unbounded request answers with `finish_reason: "length"`).

use super::chat::{
    DONE_FRAME, FIRST_FRAME, Usage, context_window, filter_safe, prompt_filter_results,
};
use super::knobs::split;
use super::{
    Body, Call, FrameWriter, errors, invalid_json, json_response, push_json_str, random_id,
    sse_response, tokens, unix_now,
};
use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use std::fmt::Write as _;

/// What `max_tokens` is when the request says nothing.
const DEFAULT_MAX_TOKENS: u64 = 16;

#[derive(Deserialize)]
struct CompletionRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    prompt: Option<Value>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    stop: Option<Value>,
}

/// `POST .../completions`.
pub(super) async fn create(deployment: Option<&str>, call: &Call<'_>) -> Response<Body> {
    let knobs = call.knobs;
    let request: CompletionRequest = match serde_json::from_slice(&call.body) {
        Ok(request) => request,
        Err(error) => return invalid_json(&error),
    };
    let Some(model) = deployment
        .or(request.model.as_deref())
        .filter(|model| !model.is_empty())
    else {
        return errors::missing("model");
    };
    if deployment.is_none()
        && let Some(missing) = call.missing_deployment(model)
    {
        return missing;
    }
    let prompt_tokens = match &request.prompt {
        Some(Value::String(prompt)) => tokens::count(prompt),
        Some(Value::Array(prompts)) => prompts
            .iter()
            .map(|p| p.as_str().map_or(1, tokens::count))
            .sum(),
        Some(_) | None => return errors::missing("prompt"),
    };
    let max_tokens = request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    let window = context_window(model);
    // Saturating: `max_tokens` is the client's number, up to u64::MAX.
    let needed = prompt_tokens.saturating_add(max_tokens);
    if needed > window {
        return errors::context_length_exceeded(window, needed);
    }
    let n = request.n.unwrap_or(1).clamp(1, 128);

    let mut text = knobs.reply().to_owned();
    let stops: Vec<&str> = match &request.stop {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if let Some(cut) = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s))
        .min()
    {
        text.truncate(cut);
    }
    let mut finish = "stop";
    if let Some(cut) = tokens::truncate(&text, max_tokens) {
        text = cut;
        finish = "length";
    }
    let usage = Usage {
        prompt: prompt_tokens,
        completion: tokens::count(&text) * n,
    };
    let mut common = String::with_capacity(96 + model.len());
    let _ = write!(
        common,
        r#","created":{},"id":"{}","model":"#,
        unix_now(),
        random_id("cmpl-", 29)
    );
    push_json_str(&mut common, model);
    common.push_str(r#","object":"text_completion""#);

    if !request.stream.unwrap_or(false) {
        knobs.pause().await;
        let mut out = String::with_capacity(512 + text.len() * n as usize);
        out.push_str(r#"{"choices":["#);
        for index in 0..n {
            if index > 0 {
                out.push(',');
            }
            out.push_str(concat!(r#"{"content_filter_results":"#, filter_safe!()));
            let _ = write!(
                out,
                r#","finish_reason":"{finish}","index":{index},"logprobs":null,"text":"#
            );
            push_json_str(&mut out, &text);
            out.push('}');
        }
        out.push(']');
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

    let pieces = split(&text, knobs.chunks);
    let mut frames = FrameWriter::new(
        (pieces.len() + 1) * n as usize + 2,
        256 * (pieces.len() + 2) * n as usize,
    );
    frames.buf.push_str(FIRST_FRAME);
    frames.end();
    for index in 0..n {
        for piece in &pieces {
            frames.buf.push_str(concat!(
                r#"data: {"choices":[{"content_filter_results":"#,
                filter_safe!(),
                r#","finish_reason":null"#
            ));
            let _ = write!(frames.buf, r#","index":{index},"logprobs":null,"text":"#);
            push_json_str(&mut frames.buf, &text[piece.clone()]);
            frames.buf.push_str("}]");
            frames.buf.push_str(&common);
            frames.buf.push_str("}\n\n");
            frames.end();
        }
        let _ = write!(
            frames.buf,
            r#"data: {{"choices":[{{"content_filter_results":{{}},"finish_reason":"{finish}","index":{index},"logprobs":null,"text":""}}]{common}}}"#
        );
        frames.buf.push_str("\n\n");
        frames.end();
    }
    frames.buf.push_str(DONE_FRAME);
    frames.end();
    sse_response(frames.finish(), knobs.delay, 1)
}
