//! `files`: upload (multipart), list, retrieve, content, delete, kept in memory by
//! [`super::store`]. Batches read their input here and leave their output here.

use super::store::StoredFile;
use super::{Body, Call, errors, full, invalid_request, json_ok, random_id, unix_now};
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};
use std::convert::Infallible;

/// What a request does to one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Retrieve,
    Delete,
    Content,
}

/// The purposes Azure accepts for an upload.
const PURPOSES: &[&str] = &[
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
];

/// `POST .../files`: `purpose` and `file` form fields.
pub(super) async fn upload(call: &Call<'_>) -> Response<Body> {
    let Some(boundary) = call
        .parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| multer::parse_boundary(value).ok())
    else {
        return invalid_request("Expected a multipart/form-data body with a boundary.");
    };
    let body = call.body.clone();
    let stream = futures_util::stream::once(std::future::ready(Ok::<_, Infallible>(body)));
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut purpose = None;
    let mut file = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(error) => {
                return invalid_request(&format!("Could not parse the multipart body: {error}"));
            }
        };
        let read = match field.name() {
            Some("purpose") => field.text().await.map(|text| purpose = Some(text)),
            Some("file") => {
                let name = field.file_name().unwrap_or("upload").to_owned();
                field.bytes().await.map(|bytes| file = Some((name, bytes)))
            }
            _ => Ok(()),
        };
        if let Err(error) = read {
            return invalid_request(&format!("Could not parse the multipart body: {error}"));
        }
    }
    let Some(purpose) = purpose else {
        return errors::missing("purpose");
    };
    if !PURPOSES.contains(&purpose.as_str()) {
        return errors::openai_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "Invalid value for purpose: '{purpose}'. Supported: {}.",
                PURPOSES.join(", ")
            ),
            Some("purpose"),
            Some("invalid_value"),
        );
    }
    let Some((name, content)) = file else {
        return errors::missing("file");
    };
    if purpose == "batch"
        && let Err(line) = check_jsonl(&content)
    {
        return errors::openai_error(
            StatusCode::BAD_REQUEST,
            &format!("The batch file is not valid JSONL: line {line} is not a JSON object."),
            Some("file"),
            Some("invalid_file"),
        );
    }
    json_ok(&store(call.state, &name, &purpose, content))
}

/// Stores `content` as a new file; its `file` object.
pub(super) fn store(state: &super::State, name: &str, purpose: &str, content: Bytes) -> Value {
    let id = random_id("file-", 32);
    let object = json!({
        "id": id,
        "object": "file",
        "bytes": content.len(),
        "created_at": unix_now(),
        "filename": name,
        "purpose": purpose,
        "status": "processed",
        "status_details": null,
    });
    state.store.lock().files.insert(
        id,
        StoredFile {
            object: object.clone(),
            content,
        },
    );
    object
}

/// The first line (1-based) that is neither blank nor a JSON object.
fn check_jsonl(content: &[u8]) -> Result<(), usize> {
    for (i, line) in content.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if !serde_json::from_slice::<Value>(line).is_ok_and(|v| v.is_object()) {
            return Err(i + 1);
        }
    }
    Ok(())
}

/// `GET .../files`: every file, newest first.
pub(super) fn list(call: &Call<'_>) -> Response<Body> {
    let store = call.state.store.lock();
    let mut data: Vec<Value> = store.files.iter().map(|f| f.object.clone()).collect();
    drop(store);
    data.reverse();
    json_ok(&list_of(data))
}

/// OpenAI's list envelope.
pub(super) fn list_of(data: Vec<Value>) -> Value {
    let first = data.first().and_then(|v| v.get("id")).cloned();
    let last = data.last().and_then(|v| v.get("id")).cloned();
    json!({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": false})
}

/// `GET .../files/{id}`, `DELETE .../files/{id}`, `GET .../files/{id}/content`.
pub(super) fn handle(op: Op, id: &str, call: &Call<'_>) -> Response<Body> {
    let mut store = call.state.store.lock();
    match op {
        Op::Retrieve => match store.files.get(id) {
            Some(file) => json_ok(&file.object),
            None => errors::no_such("File", id),
        },
        Op::Delete => match store.files.remove(id) {
            Some(_) => json_ok(&json!({"id": id, "object": "file", "deleted": true})),
            None => errors::no_such("File", id),
        },
        Op::Content => match store.files.get(id) {
            Some(file) => {
                let mut response = Response::new(full(file.content.clone()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                response
            }
            None => errors::no_such("File", id),
        },
    }
}
