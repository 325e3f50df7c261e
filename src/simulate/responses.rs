//! The Responses API: `POST /openai/v1/responses` and `/openai/responses?api-version=`.
//!
//! The streamed event sequence follows what openai-python's `ResponseStreamState` needs to
//! rebuild a response: `response.created` first, an output item before its content part,
//! a content part before its text deltas (addressed by `item_id`, `output_index`,
//! `content_index`), `logprobs` on text events, a strictly increasing `sequence_number`,
//! and no `[DONE]` at the end.

use super::{
    Body, FrameWriter, Knobs, estimate_tokens, invalid_json, invalid_request, json_response,
    random_id, split_reply, sse_response, unix_now, word_starts,
};
use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use std::borrow::Cow;
use std::fmt::Write as _;

#[derive(Deserialize)]
struct ResponsesRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
}

/// `POST .../responses`: a completed `response` object, or its event stream.
pub(super) async fn create(body: &[u8], knobs: &Knobs) -> Response<Body> {
    let request: ResponsesRequest<'_> = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(error) => return invalid_json(&error),
    };
    let Some(model) = request.model.as_deref().filter(|model| !model.is_empty()) else {
        return invalid_request("Missing required parameter: 'model'.");
    };
    let (text, pieces) = split_reply(knobs.reply(), knobs.chunks);
    let content = if pieces.is_empty() { "" } else { text.as_str() };
    let input_tokens = estimate_tokens(body.len());
    let output_tokens = word_starts(content).count() as u64;
    let usage = json!({
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    });
    let item_id = random_id("msg_", 48);
    let part = json!({"type": "output_text", "text": content, "annotations": [], "logprobs": []});
    let item = json!({
        "id": item_id,
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [part],
    });
    let shell = ResponseShell {
        id: random_id("resp_", 48),
        created_at: unix_now(),
        model,
    };

    if !request.stream.unwrap_or(false) {
        knobs.pause().await;
        let response = shell.build("completed", json!([item]), usage);
        return json_response(StatusCode::OK, Bytes::from(response.to_string()));
    }

    let in_progress = shell.build("in_progress", json!([]), Value::Null);
    let mut events = Events::new(pieces.len() + 8);
    events.push("response.created", json!({"response": in_progress}));
    events.push("response.in_progress", json!({"response": in_progress}));
    events.push(
        "response.output_item.added",
        json!({
            "output_index": 0,
            "item": {
                "id": item_id, "type": "message", "status": "in_progress",
                "role": "assistant", "content": [],
            },
        }),
    );
    events.push(
        "response.content_part.added",
        json!({
            "item_id": item_id, "output_index": 0, "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
        }),
    );
    for piece in pieces {
        events.push(
            "response.output_text.delta",
            json!({
                "item_id": item_id, "output_index": 0, "content_index": 0,
                "delta": &text[piece], "logprobs": [],
            }),
        );
    }
    events.push(
        "response.output_text.done",
        json!({
            "item_id": item_id, "output_index": 0, "content_index": 0,
            "text": content, "logprobs": [],
        }),
    );
    events.push(
        "response.content_part.done",
        json!({"item_id": item_id, "output_index": 0, "content_index": 0, "part": part}),
    );
    events.push(
        "response.output_item.done",
        json!({"output_index": 0, "item": item}),
    );
    let completed = shell.build("completed", json!([item]), usage);
    events.push("response.completed", json!({"response": completed}));
    sse_response(events.frames.finish(), knobs.delay)
}

/// What the `response` object repeats in each state.
struct ResponseShell<'a> {
    id: String,
    created_at: u64,
    model: &'a str,
}

impl ResponseShell<'_> {
    fn build(&self, status: &str, output: Value, usage: Value) -> Value {
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": null,
            "instructions": null,
            "max_output_tokens": null,
            "metadata": {},
            "model": self.model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null},
            "store": true,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": null,
        })
    }
}

/// Numbers and frames the stream's events.
struct Events {
    frames: FrameWriter,
    sequence_number: u64,
}

impl Events {
    fn new(count: usize) -> Self {
        Self {
            frames: FrameWriter::new(count, count * 400),
            sequence_number: 0,
        }
    }

    /// Appends `event: <kind>` and its data with `type` and the next `sequence_number`.
    fn push(&mut self, kind: &str, mut data: Value) {
        if let Some(fields) = data.as_object_mut() {
            fields.insert("type".to_owned(), Value::from(kind));
            fields.insert(
                "sequence_number".to_owned(),
                Value::from(self.sequence_number),
            );
        }
        self.sequence_number += 1;
        let _ = write!(self.frames.buf, "event: {kind}\ndata: {data}\n\n");
        self.frames.end();
    }
}
