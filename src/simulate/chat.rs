//! `chat/completions`: the benchmark's hot path, so its JSON is written by hand around
//! pre-built constant parts instead of through a `serde_json::Value` tree.
//!
//! What the answer is, in order:
//! - the last message is a tool result: text that says what the tool returned;
//! - the request has `tools`, `tool_choice` is not `"none"` and the last message is the
//!   user's: a call of the tool `tool_choice` names, else of the first, with arguments
//!   generated from its JSON schema (`schema`);
//! - `response_format` `json_schema`: an object valid against the schema (strict or not);
//!   `json_object`: `{"reply": <text>}`;
//! - else the text of `x-sim-reply`, or the default greeting.
//!
//! `x-sim-reply` replaces the text of the first and the last two. `stop` cuts the text
//! before the first stop sequence; `max_completion_tokens` (or `max_tokens`) cuts it to that
//! many tokens with `finish_reason: "length"`; `n` repeats the choice; `logprobs` gives
//! each token a plausible log probability (and `top_logprobs` alternatives).

use super::knobs::{split, split_at};
use super::tokens::{self, MessageText};
use super::{
    Body, Call, FrameWriter, errors, invalid_json, json_response, push_json_str, random_id,
    sse_response, unix_now,
};
use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::borrow::Cow;
use std::fmt::Write as _;

/// The part of a chat request the simulator reads; the rest is skipped.
#[derive(Deserialize)]
struct ChatRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    messages: Option<Vec<Message<'a>>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    tools: Option<Vec<Tool>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<u64>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    stop: Option<Stop>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    /// A string or an array of parts; read only for token counts and tool results.
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(default)]
    name: Option<Value>,
}

impl Message<'_> {
    fn role(&self) -> &str {
        self.role.as_deref().unwrap_or("")
    }

    /// The message's text: the string, or the `text` of each part.
    fn texts(&self) -> Vec<String> {
        let Some(raw) = self.content else {
            return Vec::new();
        };
        if let Ok(text) = serde_json::from_str::<Cow<'_, str>>(raw.get()) {
            return vec![text.into_owned()];
        }
        #[derive(Deserialize)]
        struct Part {
            #[serde(default)]
            text: Option<String>,
        }
        serde_json::from_str::<Vec<Part>>(raw.get())
            .map(|parts| parts.into_iter().filter_map(|p| p.text).collect())
            .unwrap_or_default()
    }
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct Tool {
    #[serde(default)]
    function: Option<Function>,
}

#[derive(Deserialize)]
struct Function {
    name: String,
    #[serde(default)]
    parameters: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Azure's default content filter verdict, as it annotates every choice.
macro_rules! filter_safe {
    () => {
        r#"{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}"#
    };
}
pub(super) use filter_safe;

/// Azure's verdict on the prompt, which it sends before any choice.
macro_rules! prompt_filter_results {
    () => {
        r#"[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},"jailbreak":{"filtered":false,"detected":false},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}}]"#
    };
}
pub(super) use prompt_filter_results;

/// Azure's first streamed frame: no choices, empty id and model, only the prompt verdict.
pub(super) const FIRST_FRAME: &str = concat!(
    r#"data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":"#,
    prompt_filter_results!(),
    "}\n\n"
);
const USAGE_FRAME: &str = r#"data: {"choices":[]"#;
pub(super) const DONE_FRAME: &str = "data: [DONE]\n\n";

/// The most choices one request may ask for (OpenAI's limit is 128).
const MAX_N: u64 = 128;

/// What every choice of the answer says.
enum Answer {
    Text(String),
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
}

/// `POST .../chat/completions`: the model is the URL's deployment, else the body's `model`.
pub(super) async fn completions(deployment: Option<&str>, call: &Call<'_>) -> Response<Body> {
    let knobs = call.knobs;
    let request: ChatRequest<'_> = match serde_json::from_slice(&call.body) {
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
    let Some(messages) = request.messages.as_deref() else {
        return errors::missing("messages");
    };
    let n = request.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return errors::openai_error(
            StatusCode::BAD_REQUEST,
            &format!("Invalid 'n': integer must be between 1 and {MAX_N}, got {n}."),
            Some("n"),
            Some("invalid_value"),
        );
    }

    let texts: Vec<Vec<String>> = messages.iter().map(Message::texts).collect();
    let tools: Vec<&Function> = request
        .tools
        .iter()
        .flatten()
        .filter_map(|tool| tool.function.as_ref())
        .collect();
    let prompt_tokens = prompt_tokens(messages, &texts, &tools);
    let max_tokens = request.max_completion_tokens.or(request.max_tokens);
    let window = context_window(model);
    // Saturating: `max_tokens` is the client's number, up to u64::MAX.
    let needed = prompt_tokens.saturating_add(max_tokens.unwrap_or(0));
    if needed > window {
        return errors::context_length_exceeded(window, needed);
    }

    let (answer, finish) = answer(&request, &texts, &tools, knobs, max_tokens);
    let usage = Usage {
        prompt: prompt_tokens,
        completion: answer.tokens() * n,
    };
    let streamed = request.stream.unwrap_or(false);
    let common = common_fields(model, streamed);
    let reply = Reply {
        answer: &answer,
        finish,
        n: n as usize,
        logprobs: request
            .logprobs
            .unwrap_or(false)
            .then(|| request.top_logprobs.unwrap_or(0).min(20) as usize),
        common: &common,
        usage: &usage,
    };
    if !streamed {
        knobs.pause().await;
        return json_response(StatusCode::OK, Bytes::from(reply.json()));
    }
    let include_usage = request
        .stream_options
        .and_then(|options| options.include_usage)
        .unwrap_or(false);
    sse_response(
        reply.frames(knobs.chunks, include_usage),
        knobs.delay,
        1 + usize::from(include_usage),
    )
}

/// Prompt tokens, with OpenAI's framing; tool definitions count as their JSON text.
fn prompt_tokens(messages: &[Message<'_>], texts: &[Vec<String>], tools: &[&Function]) -> u64 {
    let mut prompt_tokens =
        tokens::count_messages(messages.iter().zip(texts).map(|(m, t)| MessageText {
            role: m.role(),
            texts: t.iter().map(String::as_str).collect(),
            named: m.name.is_some(),
        }));
    for function in tools {
        prompt_tokens += tokens::count(&function.name)
            + function
                .parameters
                .as_ref()
                .map_or(0, |p| tokens::count(&p.to_string()));
    }
    prompt_tokens
}

/// What the choices say (see the module's notes) and their `finish_reason`: cut at the
/// first stop sequence and to `max_tokens`, so streamed and non-streamed answers agree.
fn answer(
    request: &ChatRequest<'_>,
    texts: &[Vec<String>],
    tools: &[&Function],
    knobs: &super::Knobs,
    max_tokens: Option<u64>,
) -> (Answer, &'static str) {
    let last_role = request
        .messages
        .as_deref()
        .and_then(<[Message<'_>]>::last)
        .map(Message::role)
        .unwrap_or("");
    let tool_result = matches!(last_role, "tool" | "function");
    let (answer, forced) = if tool_result {
        let result = texts.last().map(|t| t.join(" ")).unwrap_or_default();
        let text = match &knobs.reply {
            Some(reply) => reply.clone(),
            None => format!("The tool returned: {}", clip(&result, 400)),
        };
        (Answer::Text(text), false)
    } else if let Some((function, forced)) =
        chosen_tool(tools, request.tool_choice.as_ref()).filter(|_| last_role == "user")
    {
        let arguments = function
            .parameters
            .as_ref()
            .map_or_else(|| json!({}), super::schema::generate);
        (
            Answer::ToolCall {
                id: random_id("call_", 24),
                name: function.name.clone(),
                arguments: arguments.to_string(),
            },
            forced,
        )
    } else {
        (Answer::Text(text_answer(request, knobs)), false)
    };
    let mut finish = match (&answer, forced) {
        (Answer::ToolCall { .. }, false) => "tool_calls",
        _ => "stop",
    };
    let answer = match answer {
        Answer::Text(mut text) => {
            if let Some(cut) = first_stop(&text, request.stop.as_ref()) {
                text.truncate(cut);
            }
            if let Some(cut) = max_tokens.and_then(|max| tokens::truncate(&text, max)) {
                text = cut;
                finish = "length";
            }
            Answer::Text(text)
        }
        call => call,
    };
    (answer, finish)
}

impl Answer {
    /// The completion tokens of one choice.
    fn tokens(&self) -> u64 {
        match self {
            Answer::Text(text) => tokens::count(text),
            Answer::ToolCall {
                name, arguments, ..
            } => tokens::count(name) + tokens::count(arguments) + 3,
        }
    }
}

/// `,"created":..,"id":..,"model":..,"object":..,"system_fingerprint":..`: what every
/// frame after the first repeats (Azure orders keys alphabetically).
fn common_fields(model: &str, streamed: bool) -> String {
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
    common
}

/// An answer decided, to be written as one JSON body or as SSE frames.
struct Reply<'a> {
    answer: &'a Answer,
    finish: &'static str,
    /// Choices.
    n: usize,
    /// `top_logprobs` when `logprobs` was asked for.
    logprobs: Option<usize>,
    /// [`common_fields`].
    common: &'a str,
    usage: &'a Usage,
}

impl Reply<'_> {
    /// The `chat.completion` object.
    fn json(&self) -> String {
        let (answer, finish) = (self.answer, self.finish);
        let mut out = String::with_capacity(1024 + self.common.len());
        out.push_str(r#"{"choices":["#);
        for index in 0..self.n {
            if index > 0 {
                out.push(',');
            }
            out.push_str(concat!(r#"{"content_filter_results":"#, filter_safe!()));
            let _ = write!(
                out,
                r#","finish_reason":"{finish}","index":{index},"logprobs":"#
            );
            match (answer, self.logprobs) {
                (Answer::Text(text), Some(top)) => {
                    let content: Vec<Value> =
                        token_logprobs(text, top).iter().map(strip_offset).collect();
                    out.push_str(&json!({"content": content, "refusal": null}).to_string());
                }
                _ => out.push_str("null"),
            }
            out.push_str(r#","message":{"annotations":[],"content":"#);
            match answer {
                Answer::Text(text) => {
                    push_json_str(&mut out, text);
                    out.push_str(r#","refusal":null,"role":"assistant"}}"#);
                }
                Answer::ToolCall {
                    id,
                    name,
                    arguments,
                } => {
                    let calls = json!([{"function": {"arguments": arguments, "name": name}, "id": id, "type": "function"}]);
                    let _ = write!(
                        out,
                        r#"null,"refusal":null,"role":"assistant","tool_calls":{calls}}}}}"#
                    );
                }
            }
        }
        out.push(']');
        out.push_str(self.common);
        out.push_str(concat!(
            r#","prompt_filter_results":"#,
            prompt_filter_results!()
        ));
        out.push_str(r#","usage":"#);
        self.usage.push_json(&mut out);
        out.push('}');
        out
    }

    /// The `chat.completion.chunk` frames: Azure's prompt verdict, for each choice its
    /// role, its content in `chunks` pieces and its finish, then the usage frame when
    /// asked for, then `[DONE]`.
    fn frames(&self, chunks: usize, include_usage: bool) -> Vec<Bytes> {
        let answer = self.answer;
        // With `include_usage`, OpenAI and Azure put `"usage":null` on every chunk but the
        // last.
        let close = if include_usage {
            ",\"usage\":null}\n\n"
        } else {
            "}\n\n"
        };
        let pieces = match (answer, self.logprobs) {
            // With logprobs, frames break between tokens, so each frame's logprobs spell
            // its text.
            (Answer::Text(text), Some(_)) => {
                // A token that ends inside a character is no place to break.
                let mut starts = vec![0];
                let mut offset = 0;
                for piece in tokens::pieces(text) {
                    offset += piece.len();
                    if offset < text.len() && text.is_char_boundary(offset) {
                        starts.push(offset);
                    }
                }
                split_at(text, &starts, chunks)
            }
            (Answer::Text(text), None) => split(text, chunks),
            (Answer::ToolCall { arguments, .. }, _) => split(arguments, chunks),
        };
        let n = self.n;
        let common = self.common;
        let mut frames = FrameWriter::new(
            (pieces.len() + 2) * n + 3,
            (pieces.len() + 4) * n * (300 + common.len()),
        );
        frames.buf.push_str(FIRST_FRAME);
        frames.end();
        // Azure annotates the frames that carry generated text with the filter's verdict;
        // the role and finish frames get an empty one.
        let frame = |buf: &mut FrameWriter,
                     index: usize,
                     delta: &str,
                     finish: Option<&str>,
                     lp: &str,
                     annotated: bool| {
            buf.buf
                .push_str(r#"data: {"choices":[{"content_filter_results":"#);
            buf.buf
                .push_str(if annotated { filter_safe!() } else { "{}" });
            let _ = write!(buf.buf, r#","delta":{delta},"finish_reason":"#);
            match finish {
                Some(finish) => {
                    let _ = write!(buf.buf, r#""{finish}""#);
                }
                None => buf.buf.push_str("null"),
            }
            let _ = write!(buf.buf, r#","index":{index},"logprobs":{lp}}}]"#);
            buf.buf.push_str(common);
            buf.buf.push_str(close);
            buf.end();
        };
        for index in 0..n {
            match answer {
                Answer::Text(text) => {
                    frame(
                        &mut frames,
                        index,
                        r#"{"content":"","refusal":null,"role":"assistant"}"#,
                        None,
                        "null",
                        false,
                    );
                    let token_offsets = self.logprobs.map(|top| (top, token_logprobs(text, top)));
                    let mut next_token = 0;
                    for piece in &pieces {
                        let mut delta = String::from(r#"{"content":"#);
                        push_json_str(&mut delta, &text[piece.clone()]);
                        delta.push('}');
                        let lp = match &token_offsets {
                            Some((_, all)) => {
                                // The tokens that start inside this piece.
                                let mut mine = Vec::new();
                                while let Some(entry) = all.get(next_token) {
                                    if entry["offset"].as_u64().unwrap_or(0) as usize >= piece.end {
                                        break;
                                    }
                                    mine.push(strip_offset(entry));
                                    next_token += 1;
                                }
                                json!({"content": mine, "refusal": null}).to_string()
                            }
                            None => "null".to_owned(),
                        };
                        frame(&mut frames, index, &delta, None, &lp, true);
                    }
                }
                Answer::ToolCall {
                    id,
                    name,
                    arguments,
                } => {
                    let head = json!({
                        "content": null, "refusal": null, "role": "assistant",
                        "tool_calls": [{"function": {"arguments": "", "name": name}, "id": id, "index": 0, "type": "function"}],
                    });
                    frame(&mut frames, index, &head.to_string(), None, "null", false);
                    for piece in &pieces {
                        let delta = json!({"tool_calls": [{"function": {"arguments": &arguments[piece.clone()]}, "index": 0}]});
                        frame(&mut frames, index, &delta.to_string(), None, "null", true);
                    }
                }
            }
            frame(&mut frames, index, "{}", Some(self.finish), "null", false);
        }
        if include_usage {
            frames.buf.push_str(USAGE_FRAME);
            frames.buf.push_str(common);
            frames.buf.push_str(r#","usage":"#);
            self.usage.push_json(&mut frames.buf);
            frames.buf.push_str("}\n\n");
            frames.end();
        }
        frames.buf.push_str(DONE_FRAME);
        frames.end();
        frames.finish()
    }
}

/// The text of an answer that is neither a tool call nor about a tool result.
fn text_answer(request: &ChatRequest<'_>, knobs: &super::Knobs) -> String {
    if let Some(reply) = &knobs.reply {
        return reply.clone();
    }
    let format = request.response_format.as_ref();
    match format.and_then(|f| f.get("type")).and_then(Value::as_str) {
        Some("json_schema") => {
            let schema = format
                .and_then(|f| f.get("json_schema"))
                .and_then(|s| s.get("schema"))
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"}));
            let value = super::schema::generate(&schema);
            // A schema whose root is not an object still gets an object, as Azure
            // requires the root to be one.
            if value.is_object() { value } else { json!({}) }.to_string()
        }
        Some("json_object") => json!({"reply": knobs.reply()}).to_string(),
        _ => knobs.reply().to_owned(),
    }
}

/// The tool to call and whether `tool_choice` forced it by name; `None`: answer in text.
fn chosen_tool<'t>(tools: &[&'t Function], choice: Option<&Value>) -> Option<(&'t Function, bool)> {
    match choice {
        Some(Value::String(choice)) if choice == "none" => None,
        Some(Value::Object(choice)) => {
            let name = choice
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)?;
            tools.iter().find(|f| f.name == name).map(|f| (*f, true))
        }
        _ => tools.first().map(|f| (*f, false)),
    }
}

/// Where the first stop sequence begins in `text`.
fn first_stop(text: &str, stop: Option<&Stop>) -> Option<usize> {
    let stops: Vec<&str> = match stop? {
        Stop::One(one) => vec![one.as_str()],
        Stop::Many(many) => many.iter().map(String::as_str).collect(),
    };
    stops
        .into_iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s))
        .min()
}

/// The context window of a deployment named like a model; 128k for what is not known.
pub(super) fn context_window(model: &str) -> u64 {
    let model = model.to_ascii_lowercase();
    if model.contains("gpt-4.1") {
        1_047_576
    } else if model.contains("gpt-35") || model.contains("gpt-3.5") {
        16_385
    } else if model.starts_with("o1") || model.starts_with("o3") || model.starts_with("o4") {
        200_000
    } else {
        128_000
    }
}

/// At most `max` characters of `text`, with `...` when cut.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Plausible log probabilities for each token of `text`, each with its byte `offset` (for
/// the stream to group them; removed before sending) and `top` alternatives.
pub(super) fn token_logprobs(text: &str, top: usize) -> Vec<Value> {
    const ALTERNATIVES: [&str; 5] = [" the", " a", ",", ".", " and"];
    let mut offset = 0;
    tokens::pieces(text)
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| {
            let token = String::from_utf8_lossy(&bytes).into_owned();
            // Deterministic, near zero (the model is sure of itself), varying by position.
            let logprob = -0.0001 * ((i % 7) as f64 + 1.0) * ((i % 3) as f64 + 1.0);
            let mut tops = Vec::with_capacity(top);
            if top > 0 {
                tops.push(json!({"token": token, "logprob": logprob, "bytes": bytes}));
            }
            for (j, alternative) in ALTERNATIVES
                .iter()
                .cycle()
                .take(top.saturating_sub(1))
                .enumerate()
            {
                tops.push(json!({
                    "token": alternative,
                    "logprob": -4.0 - j as f64,
                    "bytes": alternative.as_bytes(),
                }));
            }
            let entry = json!({
                "token": token, "logprob": logprob, "bytes": bytes,
                "top_logprobs": tops, "offset": offset,
            });
            offset += bytes.len();
            entry
        })
        .collect()
}

fn strip_offset(entry: &Value) -> Value {
    let mut entry = entry.clone();
    if let Some(fields) = entry.as_object_mut() {
        fields.remove("offset");
    }
    entry
}

/// Token counts, in chat's `usage` shape.
pub(super) struct Usage {
    pub(super) prompt: u64,
    pub(super) completion: u64,
}

impl Usage {
    pub(super) fn push_json(&self, out: &mut String) {
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

    #[test]
    fn stop_sequences_cut_at_the_first() {
        let stop = Stop::Many(vec!["c".into(), "b".into()]);
        assert_eq!(first_stop("a b c", Some(&stop)), Some(2));
        assert_eq!(first_stop("a b c", None), None);
        assert_eq!(first_stop("abc", Some(&Stop::One("z".into()))), None);
    }
}
