//! `audio/transcriptions`: a multipart upload answered with a made-up transcript that names
//! what arrived (the `model` field and the file's size), so a test can see the upload passed
//! through keyless intact.

use super::{Body, Knobs, full, invalid_request, json_response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use std::convert::Infallible;

/// `POST .../audio/transcriptions`.
pub(super) async fn transcriptions(
    deployment: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
    knobs: &Knobs,
) -> Response<Body> {
    let Some(boundary) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| multer::parse_boundary(value).ok())
    else {
        return invalid_request("Expected a multipart/form-data body with a boundary.");
    };
    let stream = futures_util::stream::once(std::future::ready(Ok::<_, Infallible>(body)));
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut model = None;
    let mut file = None;
    let mut response_format = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(error) => {
                return invalid_request(&format!("Could not parse the multipart body: {error}"));
            }
        };
        let name = field.name().map(str::to_owned);
        let read = match name.as_deref() {
            Some("model") => field.text().await.map(|text| model = Some(text)),
            Some("response_format") => field.text().await.map(|text| response_format = Some(text)),
            Some("file") => {
                let file_name = field.file_name().unwrap_or("audio").to_owned();
                field
                    .bytes()
                    .await
                    .map(|bytes| file = Some((file_name, bytes.len())))
            }
            _ => Ok(()),
        };
        if let Err(error) = read {
            return invalid_request(&format!("Could not parse the multipart body: {error}"));
        }
    }
    let Some((file_name, size)) = file else {
        return invalid_request("Missing required parameter: 'file'.");
    };
    let model = model
        .as_deref()
        .or(deployment)
        .unwrap_or("(no model field)");
    let text = format!("Simulated transcription of {file_name} ({size} bytes) by {model}.");
    knobs.pause().await;
    // `text`, `srt` and `vtt` are plain text; `json` and `verbose_json` are JSON.
    if matches!(response_format.as_deref(), Some("text" | "srt" | "vtt")) {
        let mut response = Response::new(full(Bytes::from(text + "\n")));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return response;
    }
    let body = serde_json::json!({ "text": text });
    json_response(StatusCode::OK, Bytes::from(body.to_string()))
}
