//! `models` and `models/{id}`: the base models of a typical resource, with v1's OpenAI
//! fields and the dated API's Azure ones (`capabilities`, `lifecycle_status`).

use super::knobs::Knobs;
use super::{Body, errors, json_response};
use bytes::Bytes;
use http::{Response, StatusCode};
use std::sync::LazyLock;

/// (id, created, chat, completion, embeddings, fine-tune).
const MODELS: &[(&str, u64, bool, bool, bool, bool)] = &[
    ("gpt-4o", 1_715_558_400, true, false, false, false),
    ("gpt-4o-mini", 1_721_260_800, true, false, false, true),
    ("gpt-4.1", 1_744_588_800, true, false, false, true),
    ("gpt-4.1-mini", 1_744_588_800, true, false, false, true),
    ("o3-mini", 1_738_281_600, true, false, false, false),
    (
        "gpt-35-turbo-instruct",
        1_695_168_000,
        false,
        true,
        false,
        false,
    ),
    (
        "text-embedding-3-small",
        1_705_968_000,
        false,
        false,
        true,
        false,
    ),
    (
        "text-embedding-3-large",
        1_705_968_000,
        false,
        false,
        true,
        false,
    ),
    ("whisper", 1_696_896_000, false, false, false, false),
    ("tts", 1_706_745_600, false, false, false, false),
    ("dall-e-3", 1_699_488_000, false, false, false, false),
    ("gpt-image-1", 1_745_366_400, false, false, false, false),
];

fn model_json(model: &(&str, u64, bool, bool, bool, bool)) -> serde_json::Value {
    let (id, created, chat, completion, embeddings, fine_tune) = *model;
    serde_json::json!({
        "id": id,
        "object": "model",
        "created": created,
        "created_at": created,
        "owned_by": "system",
        "status": "succeeded",
        "lifecycle_status": "generally-available",
        "capabilities": {
            "chat_completion": chat,
            "completion": completion,
            "embeddings": embeddings,
            "fine_tune": fine_tune,
            "inference": true,
        },
    })
}

/// The list, serialized once.
static LIST: LazyLock<Bytes> = LazyLock::new(|| {
    let data: Vec<_> = MODELS.iter().map(model_json).collect();
    Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string())
});

/// `GET .../models`.
pub(super) async fn list(knobs: &Knobs) -> Response<Body> {
    knobs.pause().await;
    json_response(StatusCode::OK, LIST.clone())
}

/// `GET .../models/{id}`: one of the list, else Azure's 404.
pub(super) async fn retrieve(id: &str, knobs: &Knobs) -> Response<Body> {
    knobs.pause().await;
    match MODELS.iter().find(|model| model.0 == id) {
        Some(model) => super::json_ok(&model_json(model)),
        None => errors::error_response(
            StatusCode::NOT_FOUND,
            "ModelNotFound",
            &format!("The model '{id}' does not exist."),
        ),
    }
}
