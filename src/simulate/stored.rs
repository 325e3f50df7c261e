//! The Responses lifecycle on stored responses: `GET responses/{id}` (a background one is
//! `in_progress` until due, then `completed`; with `?stream=true&starting_after=N`, a
//! streamed background response's events after `N` again), `POST responses/{id}/cancel` (background
//! responses only, until they finish), `DELETE responses/{id}`, and
//! `GET responses/{id}/input_items`.

use super::{Body, Call, errors, json_ok};
use http::{Response, StatusCode};
use serde_json::{Value, json};
use std::time::Instant;

/// What a request does to one stored response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Retrieve,
    Cancel,
    Delete,
    InputItems,
}

/// One lifecycle request on the response `id`.
pub(super) fn handle(op: Op, id: &str, call: &Call<'_>) -> Response<Body> {
    let now = Instant::now();
    let mut store = call.state.store.lock();
    let responses = &mut store.responses;
    match op {
        Op::Retrieve => match responses.get(id) {
            Some(stored) => match resume_from(call.parts.uri.query()) {
                Some(after) => match &stored.events {
                    Some(events) => {
                        let start = after.map_or(0, |n| n.saturating_add(1));
                        let rest = events.get(start..).unwrap_or_default().to_vec();
                        super::sse_response(rest, call.knobs.delay, 0)
                    }
                    None => errors::openai_error(
                        StatusCode::BAD_REQUEST,
                        "Only background responses created with stream=true can be streamed again.",
                        Some("stream"),
                        None,
                    ),
                },
                None => json_ok(&stored.current(now)),
            },
            None => errors::no_such("Response", id),
        },
        Op::Delete => match responses.remove(id) {
            Some(_) => json_ok(&json!({"id": id, "object": "response", "deleted": true})),
            None => errors::no_such("Response", id),
        },
        Op::InputItems => match responses.get(id) {
            // Newest first, as the API lists them by default.
            Some(stored) => {
                let mut data: Vec<Value> = stored.input_items.clone();
                data.reverse();
                json_ok(&super::files::list_of(data))
            }
            None => errors::no_such("Response", id),
        },
        Op::Cancel => match responses.get_mut(id) {
            None => errors::no_such("Response", id),
            Some(stored) if stored.ready_at.is_none() => errors::openai_error(
                StatusCode::BAD_REQUEST,
                "Only responses created with background=true can be cancelled.",
                None,
                None,
            ),
            Some(stored) if stored.cancelled => json_ok(&stored.current(now)),
            Some(stored) if stored.is_done(now) => errors::openai_error(
                StatusCode::BAD_REQUEST,
                "Cannot cancel a completed response.",
                None,
                None,
            ),
            Some(stored) => {
                stored.cancelled = true;
                json_ok(&stored.current(now))
            }
        },
    }
}

/// `Some(starting_after)` when the query asks for the stream (`stream=true`), else `None`.
fn resume_from(query: Option<&str>) -> Option<Option<usize>> {
    let mut stream = false;
    let mut after = None;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*key {
            "stream" => stream = value == "true",
            "starting_after" => after = value.parse().ok(),
            _ => {}
        }
    }
    stream.then_some(after)
}
