//! The Responses API: `POST /openai/v1/responses` and `/openai/responses?api-version=`.
//!
//! The streamed event sequence follows what openai-python's `ResponseStreamState` needs to
//! rebuild a response: `response.created` first, an output item before its content part,
//! a content part before its text deltas (addressed by `item_id`, `output_index`,
//! `content_index`), `logprobs` on text events, a strictly increasing `sequence_number`,
//! and no `[DONE]` at the end.

use super::knobs::split;
use super::store::StoredResponse;
use super::{
    Body, Call, FrameWriter, errors, invalid_json, json_response, random_id, sse_response, tokens,
    unix_now,
};
use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// How long a background response takes when `x-sim-complete-after-ms` does not say.
const DEFAULT_BACKGROUND: Duration = Duration::from_millis(300);

#[derive(Deserialize)]
struct ResponsesRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    instructions: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    background: Option<bool>,
    #[serde(default)]
    store: Option<bool>,
    #[serde(default)]
    previous_response_id: Option<String>,
    #[serde(default)]
    text: Option<Value>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
}

/// `POST .../responses`: a completed `response` object, or its event stream; with
/// `background: true`, a queued one to poll. Stored unless `store: false`.
pub(super) async fn create(req: &Call<'_>) -> Response<Body> {
    let knobs = req.knobs;
    let request: ResponsesRequest<'_> = match serde_json::from_slice(&req.body) {
        Ok(request) => request,
        Err(error) => return invalid_json(&error),
    };
    let Some(model) = request.model.as_deref().filter(|model| !model.is_empty()) else {
        return errors::missing("model");
    };
    if let Some(missing) = req.missing_deployment(model) {
        return missing;
    }
    let Some(input) = request.input.as_ref() else {
        return errors::missing("input");
    };
    let background = request.background.unwrap_or(false);
    let store = request.store.unwrap_or(true);
    if background && !store {
        return errors::openai_error(
            StatusCode::BAD_REQUEST,
            "Background responses must be stored: 'store' cannot be false with 'background'.",
            Some("store"),
            None,
        );
    }
    // A continued conversation counts the earlier turns' tokens again, as Azure does.
    let mut earlier_tokens = 0;
    if let Some(previous) = &request.previous_response_id {
        match req.state.store.lock().responses.get(previous) {
            Some(stored) => earlier_tokens = stored.context_tokens,
            None => {
                return errors::openai_error(
                    StatusCode::BAD_REQUEST,
                    &format!("Previous response with id '{previous}' not found."),
                    Some("previous_response_id"),
                    Some("previous_response_not_found"),
                );
            }
        }
    }
    let input_items = input_items(input);
    let input_tokens = earlier_tokens
        + request.instructions.as_deref().map_or(0, tokens::count)
        + input_items
            .iter()
            .map(|item| tokens::count(&item_text(item)))
            .sum::<u64>()
        + 3 * input_items.len() as u64;

    let (content, status, call) = decide(&request, &input_items, knobs);
    let (pieces, output_tokens) = match &call {
        Some(call) => (
            split(&call.arguments, knobs.chunks),
            tokens::count(&call.name) + tokens::count(&call.arguments) + 3,
        ),
        None => (split(&content, knobs.chunks), tokens::count(&content)),
    };
    let usage = json!({
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    });
    let item_id = call
        .as_ref()
        .map_or_else(|| random_id("msg_", 48), |call| call.id.clone());
    let part = json!({"type": "output_text", "text": content, "annotations": [], "logprobs": []});
    let item = match &call {
        Some(call) => json!({
            "id": call.id,
            "type": "function_call",
            "status": "completed",
            "arguments": call.arguments,
            "call_id": call.call_id,
            "name": call.name,
        }),
        None => json!({
            "id": item_id,
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [part],
        }),
    };
    let shell = ResponseShell {
        id: random_id("resp_", 48),
        created_at: unix_now(),
        model,
        background,
        store,
        previous_response_id: request.previous_response_id.as_deref(),
        instructions: request.instructions.as_deref(),
        text: request
            .text
            .clone()
            .unwrap_or_else(|| json!({"format": {"type": "text"}})),
        metadata: request.metadata.clone().unwrap_or_else(|| json!({})),
        tools: request
            .tools
            .clone()
            .map_or_else(|| json!([]), Value::Array),
    };
    let mut completed = shell.build(status, json!([item]), usage);
    if status == "incomplete" {
        completed["incomplete_details"] = json!({"reason": "max_output_tokens"});
        completed["max_output_tokens"] = json!(request.max_output_tokens);
    }
    if store {
        let now = Instant::now();
        req.state.store.lock().responses.insert(
            shell.id.clone(),
            StoredResponse {
                completed: completed.clone(),
                input_items,
                ready_at: background
                    .then(|| now + knobs.complete_after.unwrap_or(DEFAULT_BACKGROUND)),
                cancelled: false,
                context_tokens: input_tokens + output_tokens,
                events: None,
            },
        );
    }

    if background && !request.stream.unwrap_or(false) {
        let queued = shell.build("queued", json!([]), Value::Null);
        return json_response(StatusCode::OK, Bytes::from(queued.to_string()));
    }
    if !request.stream.unwrap_or(false) {
        knobs.pause().await;
        return json_response(StatusCode::OK, Bytes::from(completed.to_string()));
    }
    let in_progress = shell.build("in_progress", json!([]), Value::Null);
    let last_event = if status == "incomplete" {
        // A cut response ends with `response.incomplete`, as OpenAI's stream does.
        "response.incomplete"
    } else {
        "response.completed"
    };
    let frames = stream_events(
        &in_progress,
        call.as_ref(),
        &item_id,
        &content,
        pieces,
        [&part, &item],
        (last_event, &completed),
    );
    // A streamed background response can be streamed again from any event
    // (`GET responses/{id}?stream=true&starting_after=N`): keep its frames.
    if background
        && store
        && let Some(stored) = req.state.store.lock().responses.get_mut(&shell.id)
    {
        stored.events = Some(frames.clone());
    }
    sse_response(frames, knobs.delay, 0)
}

/// What the response says, whether it was cut (`incomplete`), and the function it calls:
/// a function call when the request has function tools and the user spoke last; text
/// quoting the output when the last item is a function's output (the tool loop's end).
fn decide(
    request: &ResponsesRequest<'_>,
    input_items: &[Value],
    knobs: &super::Knobs,
) -> (String, &'static str, Option<FunctionCall>) {
    let last = input_items.last();
    let last_type = last.and_then(|i| i.get("type")).and_then(Value::as_str);
    let user_last = last_type == Some("message")
        && last.and_then(|i| i.get("role")).and_then(Value::as_str) == Some("user");
    let call = chosen_function(
        request.tools.as_deref().unwrap_or(&[]),
        request.tool_choice.as_ref(),
    )
    .filter(|_| user_last);
    let format = request.text.as_ref().and_then(|t| t.get("format"));
    let content = match (
        &knobs.reply,
        format.and_then(|f| f.get("type")).and_then(Value::as_str),
    ) {
        (Some(reply), _) => reply.clone(),
        (None, Some("json_schema")) => {
            let schema = format
                .and_then(|f| f.get("schema"))
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"}));
            super::schema::generate(&schema).to_string()
        }
        (None, _) if last_type == Some("function_call_output") => format!(
            "The tool returned: {}",
            last.and_then(|i| i.get("output"))
                .and_then(Value::as_str)
                .unwrap_or("")
        ),
        (None, Some("json_object")) => json!({"reply": knobs.reply()}).to_string(),
        (None, _) => knobs.reply().to_owned(),
    };
    // `max_output_tokens` cuts the text; the response is then `incomplete`, as Azure's is.
    let (content, status) = match request
        .max_output_tokens
        .filter(|_| call.is_none())
        .and_then(|max| tokens::truncate(&content, max))
    {
        Some(cut) => (cut, "incomplete"),
        None => (content, "completed"),
    };
    let call = call.map(|(name, parameters)| FunctionCall {
        id: random_id("fc_", 48),
        call_id: random_id("call_", 24),
        name: name.to_owned(),
        arguments: parameters
            .map_or_else(|| json!({}), super::schema::generate)
            .to_string(),
    });
    (content, status, call)
}

/// A streamed response's events: created and in progress, the output item with its
/// deltas (text or function arguments), its end, and the `last` event with the final
/// response.
fn stream_events(
    in_progress: &Value,
    call: Option<&FunctionCall>,
    item_id: &str,
    content: &str,
    pieces: Vec<std::ops::Range<usize>>,
    [part, item]: [&Value; 2],
    last: (&str, &Value),
) -> Vec<Bytes> {
    let mut events = Events::new(pieces.len() + 8);
    events.push("response.created", json!({"response": in_progress}));
    events.push("response.in_progress", json!({"response": in_progress}));
    if let Some(call) = call {
        events.push(
            "response.output_item.added",
            json!({
                "output_index": 0,
                "item": {
                    "id": call.id, "type": "function_call", "status": "in_progress",
                    "arguments": "", "call_id": call.call_id, "name": call.name,
                },
            }),
        );
        for piece in pieces {
            events.push(
                "response.function_call_arguments.delta",
                json!({"item_id": call.id, "output_index": 0, "delta": &call.arguments[piece]}),
            );
        }
        events.push(
            "response.function_call_arguments.done",
            json!({"item_id": call.id, "output_index": 0, "arguments": call.arguments}),
        );
    } else {
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
                    "delta": &content[piece], "logprobs": [],
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
    }
    events.push(
        "response.output_item.done",
        json!({"output_index": 0, "item": item}),
    );
    events.push(last.0, json!({"response": last.1}));
    events.frames.finish()
}

/// A function call the answer makes.
struct FunctionCall {
    id: String,
    call_id: String,
    name: String,
    arguments: String,
}

/// The function tool to call (`tool_choice` names it, else the first), with its
/// parameters schema; `None` when there is none or `tool_choice` is `"none"`.
fn chosen_function<'t>(
    tools: &'t [Value],
    choice: Option<&Value>,
) -> Option<(&'t str, Option<&'t Value>)> {
    let functions = tools
        .iter()
        .filter(|tool| tool.get("type").and_then(Value::as_str) == Some("function"))
        .filter_map(|tool| Some((tool.get("name")?.as_str()?, tool.get("parameters"))));
    let mut functions = functions.peekable();
    match choice {
        Some(Value::String(choice)) if choice == "none" => None,
        Some(Value::Object(choice)) => {
            let name = choice.get("name").and_then(Value::as_str)?;
            functions.find(|(n, _)| *n == name)
        }
        _ => functions.next(),
    }
}

/// What the `response` object repeats in each state.
struct ResponseShell<'a> {
    id: String,
    created_at: u64,
    model: &'a str,
    background: bool,
    store: bool,
    previous_response_id: Option<&'a str>,
    instructions: Option<&'a str>,
    text: Value,
    metadata: Value,
    tools: Value,
}

impl ResponseShell<'_> {
    fn build(&self, status: &str, output: Value, usage: Value) -> Value {
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": self.background,
            "error": null,
            "incomplete_details": null,
            "instructions": self.instructions,
            "max_output_tokens": null,
            "metadata": self.metadata,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": self.previous_response_id,
            "reasoning": {"effort": null, "summary": null},
            "store": self.store,
            "temperature": 1.0,
            "text": self.text,
            "tool_choice": "auto",
            "tools": self.tools,
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": null,
        })
    }
}

/// The request's `input` as items with ids: a string is one user message.
fn input_items(input: &Value) -> Vec<Value> {
    let items = match input {
        Value::String(text) => vec![json!({
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": text}],
        })],
        Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    };
    items
        .into_iter()
        .map(|mut item| {
            if let Some(fields) = item.as_object_mut() {
                // A message given as `{"role","content":"text"}` is stored in its full form.
                if let Some(Value::String(text)) = fields.get("content").cloned() {
                    fields.insert(
                        "content".into(),
                        json!([{"type": "input_text", "text": text}]),
                    );
                }
                fields.entry("type").or_insert_with(|| json!("message"));
                fields.entry("status").or_insert_with(|| json!("completed"));
                fields
                    .entry("id")
                    .or_insert_with(|| json!(random_id("msg_", 48)));
            }
            item
        })
        .collect()
}

/// The text of an input item, for its token count.
fn item_text(item: &Value) -> String {
    match item.get("content") {
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        Some(Value::String(text)) => text.clone(),
        _ => item
            .get("output")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
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
