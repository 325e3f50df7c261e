//! Azure's error answers: the `{"error":{"code","message"}}` envelope of the resource
//! itself, and OpenAI's `{"error":{"message","type","param","code"}}` that Azure passes
//! through from the model service for request validation.

use super::knobs::Knobs;
use super::{Body, identity, json_response, push_json_str};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};

/// Azure's `{"error":{"code","message"}}` envelope (its `code` is often the status as a string).
pub(super) fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let mut body = String::with_capacity(40 + code.len() + message.len());
    body.push_str(r#"{"error":{"code":"#);
    push_json_str(&mut body, code);
    body.push_str(r#","message":"#);
    push_json_str(&mut body, message);
    body.push_str("}}");
    json_response(status, Bytes::from(body))
}

/// OpenAI's envelope with no `param` or `code`.
pub(super) fn invalid_request(message: &str) -> Response<Body> {
    openai_error(StatusCode::BAD_REQUEST, message, None, None)
}

/// OpenAI's envelope: `type` is `invalid_request_error`, `param` and `code` as given.
pub(super) fn openai_error(
    status: StatusCode,
    message: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response<Body> {
    let mut body = String::with_capacity(120 + message.len());
    body.push_str(r#"{"error":{"message":"#);
    push_json_str(&mut body, message);
    body.push_str(r#","type":"invalid_request_error","param":"#);
    match param {
        Some(param) => push_json_str(&mut body, param),
        None => body.push_str("null"),
    }
    body.push_str(r#","code":"#);
    match code {
        Some(code) => push_json_str(&mut body, code),
        None => body.push_str("null"),
    }
    body.push_str("}}");
    json_response(status, Bytes::from(body))
}

/// A required body field is absent (Azure's wording and code).
pub(super) fn missing(param: &str) -> Response<Body> {
    openai_error(
        StatusCode::BAD_REQUEST,
        &format!("Missing required parameter: '{param}'."),
        Some(param),
        Some("missing_required_parameter"),
    )
}

/// The prompt (and the room asked for the answer) exceeds the model's context window.
pub(super) fn context_length_exceeded(window: u64, tokens: u64) -> Response<Body> {
    openai_error(
        StatusCode::BAD_REQUEST,
        &format!(
            "This model's maximum context length is {window} tokens. However, your messages \
             resulted in {tokens} tokens. Please reduce the length of the messages."
        ),
        Some("messages"),
        Some("context_length_exceeded"),
    )
}

pub(super) fn invalid_json(error: &serde_json::Error) -> Response<Body> {
    invalid_request(&format!(
        "We could not parse the JSON body of your request. ({error}) \
         (HINT: This likely means you aren't using your HTTP library correctly.)"
    ))
}

const NOT_FOUND: &str = r#"{"error":{"code":"404","message":"Resource not found"}}"#;

/// Azure's answer to a path it does not serve.
pub(super) fn not_found() -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        Bytes::from_static(NOT_FOUND.as_bytes()),
    )
}

/// Azure's answer for a deployment the resource does not have.
pub(super) fn deployment_not_found() -> Response<Body> {
    error_response(
        StatusCode::NOT_FOUND,
        "DeploymentNotFound",
        "The API deployment for this resource does not exist. If you created the deployment \
         within the last 5 minutes, please wait a moment and try again.",
    )
}

/// Azure's answer for an api-version it does not know.
pub(super) fn unsupported_api_version() -> Response<Body> {
    error_response(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        "API version not supported",
    )
}

/// A stored object (file, batch, response) that is not, or no longer, there.
pub(super) fn no_such(kind: &str, id: &str) -> Response<Body> {
    openai_error(
        StatusCode::NOT_FOUND,
        &format!("{kind} with id '{id}' not found."),
        None,
        None,
    )
}

const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");

/// The answer to `x-sim-status`, in the shape Azure gives that status. `deployment`: the
/// request names a deployment, so a 404 is `DeploymentNotFound`.
pub(super) fn simulated(status: StatusCode, knobs: &Knobs, deployment: bool) -> Response<Body> {
    match status {
        StatusCode::UNAUTHORIZED => identity::unauthorized(),
        StatusCode::FORBIDDEN => error_response(
            status,
            "PermissionDenied",
            "The principal `00000000-0000-0000-0000-000000000000` lacks the required data action \
             `Microsoft.CognitiveServices/accounts/OpenAI/deployments/chat/completions/action` to \
             perform `POST /openai/deployments/{deployment-id}/chat/completions` operation.",
        ),
        StatusCode::NOT_FOUND if deployment => deployment_not_found(),
        StatusCode::NOT_FOUND => not_found(),
        StatusCode::BAD_REQUEST => openai_error(
            status,
            "The response was filtered due to the prompt triggering Azure OpenAI's content \
             management policy. (simulated: x-sim-status)",
            Some("prompt"),
            Some("content_filter"),
        ),
        StatusCode::TOO_MANY_REQUESTS => {
            let seconds = knobs.retry_after_ms.div_ceil(1000);
            let mut response = error_response(
                status,
                "429",
                &format!(
                    "Requests to the ChatCompletions_Create Operation under Azure OpenAI API \
                     version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 \
                     pricing tier. Please retry after {seconds} seconds. (simulated: x-sim-status)"
                ),
            );
            let headers = response.headers_mut();
            headers.insert(RETRY_AFTER_MS, HeaderValue::from(knobs.retry_after_ms));
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            response
        }
        StatusCode::INTERNAL_SERVER_ERROR => error_response(
            status,
            "InternalServerError",
            "The server had an error while processing your request. Sorry about that! \
             (simulated: x-sim-status)",
        ),
        StatusCode::SERVICE_UNAVAILABLE => error_response(
            status,
            "ServiceUnavailable",
            "The service is temporarily unable to process your request. Please try again later. \
             (simulated: x-sim-status)",
        ),
        _ => error_response(
            status,
            status.as_str(),
            &format!("Simulated error {status} (x-sim-status)"),
        ),
    }
}

#[cfg(test)]
pub(super) const RETRY_AFTER_MS_FOR_TEST: HeaderName = RETRY_AFTER_MS;
