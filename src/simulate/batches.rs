//! `batches`: create over an uploaded JSONL file, retrieve, list, cancel.
//!
//! The answers are computed when the batch is created (each line through the same
//! handler a direct request reaches), and revealed when it is due (`x-sim-complete-after-ms`,
//! default [`DEFAULT_DURATION`]): `validating`, then `in_progress` past half the time, then
//! `completed` with an output file (and an error file for the lines that failed).

use super::knobs::Knobs;
use super::store::{Inner, StoredBatch, StoredFile};
use super::{Body, Call, errors, json_ok, random_id, unix_now};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// How long a batch takes when the request does not say.
const DEFAULT_DURATION: Duration = Duration::from_millis(1000);

/// The most lines one batch runs (Azure's limit is 100,000; the simulator keeps it small).
const MAX_LINES: usize = 10_000;

const ENDPOINTS: &[&str] = &[
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/embeddings",
    "/embeddings",
    "/v1/completions",
    "/completions",
];

#[derive(Deserialize)]
struct BatchRequest {
    #[serde(default)]
    input_file_id: Option<String>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    completion_window: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
}

#[derive(Deserialize)]
struct Line {
    #[serde(default)]
    custom_id: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    body: Option<Value>,
}

/// `POST .../batches`.
pub(super) async fn create(call: &Call<'_>) -> Response<Body> {
    let request: BatchRequest = match serde_json::from_slice(&call.body) {
        Ok(request) => request,
        Err(error) => return super::invalid_json(&error),
    };
    let Some(input_file_id) = request.input_file_id else {
        return errors::missing("input_file_id");
    };
    let Some(endpoint) = request.endpoint else {
        return errors::missing("endpoint");
    };
    if !ENDPOINTS.contains(&endpoint.as_str()) {
        return errors::openai_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "Invalid endpoint '{endpoint}'. Supported: {}.",
                ENDPOINTS.join(", ")
            ),
            Some("endpoint"),
            Some("invalid_value"),
        );
    }
    let input = {
        let store = call.state.store.lock();
        match store.files.get(&input_file_id) {
            Some(file) if file.object["purpose"] == "batch" => file.content.clone(),
            Some(_) => {
                return errors::openai_error(
                    StatusCode::BAD_REQUEST,
                    "The input file's purpose must be 'batch'.",
                    Some("input_file_id"),
                    Some("invalid_value"),
                );
            }
            None => return errors::no_such("File", &input_file_id),
        }
    };
    let (output, errors_out, total, failed) = run_lines(call, &endpoint, &input).await;
    let created_at = unix_now();
    let id = random_id("batch_", 32);
    let object = json!({
        "id": id,
        "object": "batch",
        "endpoint": endpoint,
        "errors": null,
        "input_file_id": input_file_id,
        "completion_window": request.completion_window.unwrap_or_else(|| "24h".to_owned()),
        "status": "validating",
        "output_file_id": null,
        "error_file_id": null,
        "created_at": created_at,
        "in_progress_at": null,
        "expires_at": created_at + 86_400,
        "finalizing_at": null,
        "completed_at": null,
        "failed_at": null,
        "expired_at": null,
        "cancelling_at": null,
        "cancelled_at": null,
        "request_counts": {"total": total, "completed": total - failed, "failed": failed},
        "metadata": request.metadata,
    });
    let now = Instant::now();
    let duration = call.knobs.complete_after.unwrap_or(DEFAULT_DURATION);
    let mut answer = object.clone();
    // Until it completes, nothing is counted as done.
    answer["request_counts"] = json!({"total": total, "completed": 0, "failed": 0});
    call.state.store.lock().batches.insert(
        id,
        StoredBatch {
            object,
            created: now,
            ready_at: now + duration,
            pending: Some((output, errors_out)),
        },
    );
    json_ok(&answer)
}

/// Each line's answer: (output JSONL, error JSONL, lines, failed lines).
async fn run_lines(call: &Call<'_>, endpoint: &str, input: &[u8]) -> (Bytes, Bytes, u64, u64) {
    let mut output = Vec::new();
    let mut failures = Vec::new();
    let (mut total, mut failed) = (0u64, 0u64);
    let knobs = Knobs::default();
    let lines = input
        .split(|b| *b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .take(MAX_LINES);
    for (i, raw) in lines.enumerate() {
        total += 1;
        let line: Line = serde_json::from_slice(raw).unwrap_or(Line {
            custom_id: None,
            url: None,
            body: None,
        });
        let custom_id = line.custom_id.unwrap_or_else(|| format!("line-{}", i + 1));
        let url = line.url.unwrap_or_default();
        let (status, body) = match line.body {
            _ if url.trim_start_matches("/v1") != endpoint.trim_start_matches("/v1") => (
                400,
                json!({"error": {"message": format!("The line's url '{url}' is not the batch's endpoint '{endpoint}'."), "type": "invalid_request_error", "param": "url", "code": "invalid_url"}}),
            ),
            None => (
                400,
                json!({"error": {"message": "Missing required parameter: 'body'.", "type": "invalid_request_error", "param": "body", "code": "missing_required_parameter"}}),
            ),
            Some(body) => answer(call, endpoint, body, &knobs).await,
        };
        if status >= 400 {
            failed += 1;
        }
        let record = json!({
            "id": random_id("batch_req_", 32),
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": random_id("", 32), "body": body},
            "error": null,
        });
        let target = if status < 400 {
            &mut output
        } else {
            &mut failures
        };
        target.extend_from_slice(record.to_string().as_bytes());
        target.push(b'\n');
    }
    (Bytes::from(output), Bytes::from(failures), total, failed)
}

/// One line through the operation's handler, as a direct request would be answered.
async fn answer(call: &Call<'_>, endpoint: &str, body: Value, knobs: &Knobs) -> (u16, Value) {
    let line_call = Call {
        state: call.state,
        parts: call.parts,
        body: Bytes::from(body.to_string()),
        knobs,
    };
    let response = match endpoint.trim_start_matches("/v1") {
        "/chat/completions" => super::chat::completions(None, &line_call).await,
        "/embeddings" => super::embeddings::create(None, &line_call).await,
        _ => super::completions::create(None, &line_call).await,
    };
    let status = response.status().as_u16();
    let bytes = match response.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Brings a batch up to date: `in_progress` past half its time, `completed` (with its
/// files) when due. The batch object, or `None` when there is no such batch.
fn refresh(inner: &mut Inner, id: &str, now: Instant) -> Option<Value> {
    let batch = inner.batches.get_mut(id)?;
    let status = batch.object["status"].as_str().unwrap_or("").to_owned();
    if matches!(status.as_str(), "validating" | "in_progress") {
        let half = batch.created + (batch.ready_at - batch.created) / 2;
        if now >= batch.ready_at {
            let (output, failures) = batch.pending.take().unwrap_or_default();
            let done = unix_now();
            let object = &mut batch.object;
            object["status"] = json!("completed");
            object["in_progress_at"] = json!(done);
            object["finalizing_at"] = json!(done);
            object["completed_at"] = json!(done);
            let mut files = Vec::new();
            if !output.is_empty() {
                files.push(("output_file_id", "batch_output.jsonl", output));
            }
            if !failures.is_empty() {
                files.push(("error_file_id", "batch_error.jsonl", failures));
            }
            let mut made = Vec::new();
            for (key, name, content) in files {
                let file_id = random_id("file-", 32);
                object[key] = json!(file_id);
                let file = json!({
                    "id": file_id, "object": "file", "bytes": content.len(),
                    "created_at": done, "filename": name, "purpose": "batch_output",
                    "status": "processed", "status_details": null,
                });
                made.push((
                    file_id,
                    StoredFile {
                        object: file,
                        content,
                    },
                ));
            }
            let object = object.clone();
            for (file_id, file) in made {
                inner.files.insert(file_id, file);
            }
            return Some(object);
        } else if now >= half && status == "validating" {
            batch.object["status"] = json!("in_progress");
            batch.object["in_progress_at"] = json!(unix_now());
        }
    }
    let mut object = batch.object.clone();
    if object["status"] != "completed" {
        let total = object["request_counts"]["total"].clone();
        object["request_counts"] = json!({"total": total, "completed": 0, "failed": 0});
    }
    Some(object)
}

/// `GET .../batches/{id}`.
pub(super) fn retrieve(id: &str, call: &Call<'_>) -> Response<Body> {
    let mut store = call.state.store.lock();
    match refresh(&mut store, id, Instant::now()) {
        Some(object) => json_ok(&object),
        None => errors::no_such("Batch", id),
    }
}

/// `GET .../batches`: newest first.
pub(super) fn list(call: &Call<'_>) -> Response<Body> {
    let mut store = call.state.store.lock();
    let ids: Vec<String> = store
        .batches
        .iter()
        .filter_map(|b| b.object["id"].as_str().map(str::to_owned))
        .collect();
    let now = Instant::now();
    let mut data: Vec<Value> = ids
        .iter()
        .filter_map(|id| refresh(&mut store, id, now))
        .collect();
    drop(store);
    data.reverse();
    json_ok(&super::files::list_of(data))
}

/// `POST .../batches/{id}/cancel`: `cancelling` in the answer, `cancelled` from then on;
/// a batch that already finished cannot be cancelled.
pub(super) fn cancel(id: &str, call: &Call<'_>) -> Response<Body> {
    let mut store = call.state.store.lock();
    let Some(current) = refresh(&mut store, id, Instant::now()) else {
        return errors::no_such("Batch", id);
    };
    let status = current["status"].as_str().unwrap_or("");
    if matches!(status, "completed" | "failed" | "expired") {
        return errors::openai_error(
            StatusCode::BAD_REQUEST,
            &format!("Cannot cancel a batch with status '{status}'."),
            None,
            None,
        );
    }
    let Some(batch) = store.batches.get_mut(id) else {
        return errors::no_such("Batch", id);
    };
    let now = unix_now();
    batch.pending = None;
    if batch.object["status"] != "cancelled" {
        batch.object["cancelling_at"] = json!(now);
        batch.object["cancelled_at"] = json!(now);
        batch.object["status"] = json!("cancelled");
    }
    let mut answer = batch.object.clone();
    if answer["cancelled_at"] == json!(now) {
        answer["status"] = json!("cancelling");
        answer["cancelled_at"] = Value::Null;
    }
    json_ok(&answer)
}
