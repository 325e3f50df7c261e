//! The simulator's realtime endpoint: Azure's WebSocket realtime API, GA event shapes.
//!
//! `GET /openai/v1/realtime?model={deployment}` or
//! `GET /openai/realtime?api-version=V&deployment={deployment}`, upgraded to a WebSocket with
//! one of the simulator's bearer tokens, opens a session that:
//! - sends `session.created` at once;
//! - answers `session.update` with `session.updated` (the session with the update's fields);
//! - answers `response.create` with a short scripted response: `response.created`, the output
//!   item and content part, then audio (`response.output_audio.delta`, a 440 Hz tone in PCM16
//!   at 24 kHz, with its transcript as `response.output_audio_transcript.delta`) or text
//!   (`response.output_text.delta`) by the modalities asked for, then the `.done` events and
//!   `response.done` with usage;
//! - answers `input_audio_buffer.commit` and `conversation.item.create` as Azure does, takes
//!   `input_audio_buffer.append` silently, and answers anything else with an `error` event.
//!
//! The text comes from `x-sim-reply` on the upgrade, else a fixed greeting. A session ends
//! when the client closes or leaves, or after [`MAX_SESSION`].

use super::{Body, Knobs, random_id, unix_now};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::request::Parts;
use http::{HeaderValue, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// A simulated session's longest life (Azure's is 30 minutes).
const MAX_SESSION: Duration = Duration::from_secs(30 * 60);
/// Audio chunks in a scripted response, each [`CHUNK_SAMPLES`] long.
const AUDIO_CHUNKS: usize = 3;
/// 100 ms at 24 kHz.
const CHUNK_SAMPLES: usize = 2400;

/// Answers a realtime upgrade, or `None` when `parts` is not for the realtime endpoint
/// (the caller routes it as usual).
pub(super) fn answer(state: &super::State, parts: &mut Parts) -> Option<Response<Body>> {
    let path = parts.uri.path();
    let query = parts.uri.query();
    let deployment = match path {
        "/openai/v1/realtime" => param(query, "model"),
        "/openai/realtime" if super::api_version(query).is_some() => param(query, "deployment"),
        _ => return None,
    };
    if let Some(refused) = super::identity::refusal(&state.minter, &parts.headers) {
        return Some(refused);
    }
    let Some(deployment) = deployment.filter(|d| !d.is_empty()) else {
        return Some(super::invalid_request(
            "Missing the deployment: pass ?model= (v1) or &deployment= (dated API)",
        ));
    };
    let upgrade = parts
        .headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let key = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let (Some(key), Some(on_upgrade), true) = (key, on_upgrade, upgrade) else {
        return Some(super::invalid_request(
            "The realtime API is a WebSocket: send an upgrade",
        ));
    };
    // Azure speaks `realtime` when offered it; no other subprotocol is chosen.
    let offered_realtime = parts
        .headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "realtime");
    let reply = Knobs::read(&parts.headers).reply().to_owned();

    let mut response = Response::new(super::full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if offered_realtime {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("realtime"),
        );
    }
    super::azure_headers(headers);
    // Bounded by the session's own end (the client, or MAX_SESSION).
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let _ = tokio::time::timeout(MAX_SESSION, session(socket, deployment, reply)).await;
    });
    Some(response)
}

fn param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// One session: `session.created`, then an answer to each client event.
async fn session<S>(mut socket: WebSocketStream<S>, deployment: String, reply: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut session = json!({
        "type": "realtime",
        "object": "realtime.session",
        "id": random_id("sess_", 24),
        "model": deployment,
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": null,
        "truncation": "auto",
        "prompt": null,
        "expires_at": unix_now() + MAX_SESSION.as_secs(),
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": null,
                "noise_reduction": null,
                "turn_detection": null,
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "alloy",
                "speed": 1.0,
            },
        },
        "include": null,
    });
    if send(
        &mut socket,
        event("session.created", json!({ "session": session })),
    )
    .await
    .is_err()
    {
        return;
    }
    while let Some(Ok(message)) = socket.next().await {
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => break,
            Message::Binary(_) => {
                let e = error(
                    "invalid_request_error",
                    "binary_not_supported",
                    "Send events as JSON text frames",
                    None,
                );
                if send(&mut socket, e).await.is_err() {
                    return;
                }
                continue;
            }
            _ => continue,
        };
        let client: Value = match serde_json::from_str(text.as_str()) {
            Ok(value) => value,
            Err(e) => {
                let e = error(
                    "invalid_request_error",
                    "invalid_json",
                    &format!("The event is not valid JSON: {e}"),
                    None,
                );
                if send(&mut socket, e).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let event_id = client
            .get("event_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let kind = client.get("type").and_then(Value::as_str).unwrap_or("");
        let answers = match kind {
            "session.update" => {
                if let (Some(update), Some(current)) = (
                    client.get("session").and_then(Value::as_object),
                    session.as_object_mut(),
                ) {
                    for (k, v) in update {
                        // The session's kind and id are the server's.
                        if !matches!(k.as_str(), "id" | "object") {
                            current.insert(k.clone(), v.clone());
                        }
                    }
                }
                vec![event("session.updated", json!({ "session": session }))]
            }
            // Audio is taken in silence, as Azure does without turn detection.
            "input_audio_buffer.append" => Vec::new(),
            "input_audio_buffer.commit" => {
                let item = random_id("item_", 20);
                vec![event(
                    "input_audio_buffer.committed",
                    json!({ "item_id": item, "previous_item_id": null }),
                )]
            }
            "conversation.item.create" => {
                let mut item = client.get("item").cloned().unwrap_or_else(|| json!({}));
                if item.get("id").is_none() {
                    item["id"] = random_id("item_", 20).into();
                }
                item["object"] = "realtime.item".into();
                item["status"] = "completed".into();
                vec![
                    event(
                        "conversation.item.added",
                        json!({ "item": item, "previous_item_id": null }),
                    ),
                    event(
                        "conversation.item.done",
                        json!({ "item": item, "previous_item_id": null }),
                    ),
                ]
            }
            "response.create" => {
                let asked = client
                    .pointer("/response/output_modalities")
                    .or_else(|| session.get("output_modalities"))
                    .cloned();
                let audio = !asked.as_ref().is_some_and(|m| {
                    m.as_array()
                        .is_some_and(|m| m.iter().all(|v| v.as_str() != Some("audio")))
                });
                scripted_response(&reply, audio, &deployment)
            }
            "response.cancel" | "output_audio_buffer.clear" | "input_audio_buffer.clear" => {
                Vec::new()
            }
            other => vec![error(
                "invalid_request_error",
                "unknown_event",
                &format!("Unknown event type {other:?}"),
                event_id.as_deref(),
            )],
        };
        for answer in answers {
            if send(&mut socket, answer).await.is_err() {
                return;
            }
        }
    }
    let _ = socket.close(None).await;
}

async fn send<S>(socket: &mut WebSocketStream<S>, event: Value) -> Result<(), ()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    socket
        .send(Message::text(event.to_string()))
        .await
        .map_err(|_| ())
}

/// A server event of `kind` with a new `event_id` and `fields`.
fn event(kind: &str, fields: Value) -> Value {
    let mut event = json!({ "type": kind, "event_id": random_id("event_", 20) });
    if let (Some(event), Value::Object(fields)) = (event.as_object_mut(), fields) {
        event.extend(fields);
    }
    event
}

fn error(kind: &str, code: &str, message: &str, event_id: Option<&str>) -> Value {
    event(
        "error",
        json!({ "error": { "type": kind, "code": code, "message": message, "param": null, "event_id": event_id } }),
    )
}

/// The events of one scripted response: audio with its transcript, or text.
fn scripted_response(reply: &str, audio: bool, deployment: &str) -> Vec<Value> {
    let response_id = random_id("resp_", 24);
    let item_id = random_id("item_", 20);
    let modalities = if audio {
        json!(["audio"])
    } else {
        json!(["text"])
    };
    let part_type = if audio { "audio" } else { "output_text" };
    let words: Vec<&str> = reply.split_inclusive(' ').collect();
    let ids = json!({ "response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0 });
    let with_ids = |mut fields: Value| {
        if let (Some(fields), Some(ids)) = (fields.as_object_mut(), ids.as_object()) {
            for (k, v) in ids {
                fields.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        fields
    };
    let response = |status: &str, output: Value, usage: Value| {
        json!({
            "object": "realtime.response",
            "id": response_id,
            "status": status,
            "status_details": null,
            "output": output,
            "conversation_id": "conv_simulated",
            "output_modalities": modalities,
            "max_output_tokens": "inf",
            "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}},
            "usage": usage,
            "metadata": null,
            "model": deployment,
        })
    };
    let item = |status: &str, content: Value| {
        json!({
            "id": item_id, "object": "realtime.item", "type": "message",
            "status": status, "role": "assistant", "content": content,
        })
    };
    let done_part = if audio {
        json!({ "type": "output_audio", "transcript": reply })
    } else {
        json!({ "type": "output_text", "text": reply })
    };
    let mut events = vec![
        event(
            "response.created",
            json!({ "response": response("in_progress", json!([]), Value::Null) }),
        ),
        event(
            "response.output_item.added",
            json!({ "response_id": response_id, "output_index": 0, "item": item("in_progress", json!([])) }),
        ),
        event(
            "conversation.item.added",
            json!({ "item": item("in_progress", json!([])), "previous_item_id": null }),
        ),
        event(
            "response.content_part.added",
            with_ids(json!({ "part": { "type": part_type, "text": "", "transcript": "" } })),
        ),
    ];
    if audio {
        for (i, chunk) in tone_chunks().into_iter().enumerate() {
            events.push(event(
                "response.output_audio.delta",
                with_ids(json!({ "delta": chunk })),
            ));
            if let Some(word) = words.get(i) {
                events.push(event(
                    "response.output_audio_transcript.delta",
                    with_ids(json!({ "delta": word })),
                ));
            }
        }
        for word in words.iter().skip(AUDIO_CHUNKS) {
            events.push(event(
                "response.output_audio_transcript.delta",
                with_ids(json!({ "delta": word })),
            ));
        }
        events.push(event("response.output_audio.done", with_ids(json!({}))));
        events.push(event(
            "response.output_audio_transcript.done",
            with_ids(json!({ "transcript": reply })),
        ));
    } else {
        for word in &words {
            events.push(event(
                "response.output_text.delta",
                with_ids(json!({ "delta": word })),
            ));
        }
        events.push(event(
            "response.output_text.done",
            with_ids(json!({ "text": reply })),
        ));
    }
    let output_tokens = words.len() as u64 + if audio { 30 } else { 0 };
    let usage = json!({
        "total_tokens": 20 + output_tokens,
        "input_tokens": 20,
        "output_tokens": output_tokens,
        "input_token_details": {"text_tokens": 20, "audio_tokens": 0, "cached_tokens": 0},
        "output_token_details": {"text_tokens": words.len(), "audio_tokens": if audio { 30 } else { 0 }},
    });
    events.push(event(
        "response.content_part.done",
        with_ids(json!({ "part": done_part })),
    ));
    events.push(event(
        "response.output_item.done",
        json!({ "response_id": response_id, "output_index": 0, "item": item("completed", json!([done_part])) }),
    ));
    events.push(event(
        "conversation.item.done",
        json!({ "item": item("completed", json!([done_part])), "previous_item_id": null }),
    ));
    events.push(event(
        "response.done",
        json!({ "response": response("completed", json!([item("completed", json!([done_part]))]), usage) }),
    ));
    events
}

/// [`AUDIO_CHUNKS`] chunks of a 440 Hz tone, PCM16 little-endian at 24 kHz, base64.
fn tone_chunks() -> Vec<String> {
    use base64::Engine as _;
    (0..AUDIO_CHUNKS)
        .map(|chunk| {
            let mut pcm = Vec::with_capacity(CHUNK_SAMPLES * 2);
            for i in 0..CHUNK_SAMPLES {
                let t = (chunk * CHUNK_SAMPLES + i) as f32 / 24_000.0;
                let sample = (f32::sin(2.0 * std::f32::consts::PI * 440.0 * t) * 8000.0) as i16;
                pcm.extend_from_slice(&sample.to_le_bytes());
            }
            base64::engine::general_purpose::STANDARD.encode(pcm)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(events: &[Value]) -> Vec<&str> {
        events.iter().map(|e| e["type"].as_str().unwrap()).collect()
    }

    #[test]
    fn an_audio_response_carries_audio_and_its_transcript_and_ends_with_done() {
        let events = scripted_response("one two three four", true, "rt");
        let kinds = types(&events);
        assert_eq!(kinds.first(), Some(&"response.created"));
        assert_eq!(kinds.last(), Some(&"response.done"));
        assert_eq!(
            kinds
                .iter()
                .filter(|k| **k == "response.output_audio.delta")
                .count(),
            AUDIO_CHUNKS
        );
        let transcript: String = events
            .iter()
            .filter(|e| e["type"] == "response.output_audio_transcript.delta")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(transcript, "one two three four");
        let response_id = events[0]["response"]["id"].as_str().unwrap();
        for e in &events {
            if let Some(id) = e.get("response_id") {
                assert_eq!(id, response_id, "{e}");
            }
            assert!(e["event_id"].as_str().unwrap().starts_with("event_"));
        }
        assert_eq!(events.last().unwrap()["response"]["status"], "completed");
    }

    #[test]
    fn a_text_response_has_no_audio() {
        let events = scripted_response("hi there", false, "rt");
        let kinds = types(&events);
        assert!(!kinds.iter().any(|k| k.contains("audio")), "{kinds:?}");
        let text: String = events
            .iter()
            .filter(|e| e["type"] == "response.output_text.delta")
            .map(|e| e["delta"].as_str().unwrap())
            .collect();
        assert_eq!(text, "hi there");
    }

    #[test]
    fn the_tone_is_pcm16_of_the_chunk_length() {
        use base64::Engine as _;
        for chunk in tone_chunks() {
            let pcm = base64::engine::general_purpose::STANDARD
                .decode(chunk)
                .unwrap();
            assert_eq!(pcm.len(), CHUNK_SAMPLES * 2);
            assert!(pcm.iter().any(|b| *b != 0), "not silence");
        }
    }
}
