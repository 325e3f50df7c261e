//! Request bodies: what keyless reads of them before sending, and how it holds them
//! between attempts.
//!
//! Only what must be read is read: a JSON body (to find and rewrite the model, and to
//! estimate tokens), a multipart audio or image upload (its `model` field), or a small
//! body of declared length that may need replaying. Everything else streams through and
//! is sent once.

use crate::body::Body;
use crate::config::Config;
use crate::error::Error;
use crate::limit;
use crate::model;
use crate::route::Op;
use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, Method, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The bytes of request bodies that may be held for replay at once, across requests: a
/// bound on what concurrent uploads make keyless keep. A body that finds the budget
/// spent streams through and is sent once.
#[derive(Debug)]
pub struct ReplayBudget {
    left: AtomicUsize,
}

impl ReplayBudget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Arc<ReplayBudget> {
        Arc::new(ReplayBudget {
            left: AtomicUsize::new(total),
        })
    }

    /// Takes `bytes` from the budget, if that many are left.
    fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(bytes)
            })
            .ok()?;
        Some(Reservation {
            budget: self.clone(),
            bytes,
        })
    }
}

/// Bytes taken from the [`ReplayBudget`], given back when the request is over.
#[derive(Debug)]
struct Reservation {
    budget: Arc<ReplayBudget>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.left.fetch_add(self.bytes, Ordering::AcqRel);
    }
}

/// A request body as keyless holds it between attempts.
enum Payload {
    /// Bytes keyless read (to find the model, or to be able to replay).
    Held(Bytes),
    /// A body streamed through; it can be sent once.
    Once(Option<Incoming>),
}

/// Where the model sits in a held body, to be rewritten per backend.
pub(crate) struct ModelAt {
    pub(crate) name: String,
    span: Range<usize>,
    kind: Splice,
}

#[derive(Clone, Copy)]
enum Splice {
    Json,
    Form,
}

/// What the body inspection found.
pub(crate) struct Prepared {
    payload: Payload,
    pub(crate) model: Option<ModelAt>,
    /// Azure's pre-call token estimate, for the tokens-per-minute limit.
    pub(crate) tokens: u32,
    /// Whether the body may be sent more than once: held, and within the replay cap.
    replay: bool,
    /// Whether it was sent once already.
    sent: bool,
    /// The body's `store` flag (Responses), for the retry rules.
    pub(crate) store: Option<bool>,
    /// A JSON body with `"stream": true` and no `stream_options`.
    stream_without_options: bool,
    /// keyless changed the held body (its `Content-Length` must follow).
    changed: bool,
    /// The Responses API's `previous_response_id`: where the new response must go.
    pub(crate) previous_response_id: Option<String>,
    /// What this body takes of the replay budget, if it was held for it.
    _reservation: Option<Reservation>,
}

impl Prepared {
    fn once(body: Incoming) -> Prepared {
        Prepared {
            payload: Payload::Once(Some(body)),
            model: None,
            tokens: 0,
            replay: false,
            sent: false,
            store: None,
            stream_without_options: false,
            changed: false,
            previous_response_id: None,
            _reservation: None,
        }
    }

    /// A body keyless holds; replayed only within `cap` bytes, so that a huge upload is
    /// not sent to Azure three times.
    fn held(bytes: Bytes, model: Option<ModelAt>, tokens: u32, cap: usize) -> Prepared {
        Prepared {
            replay: bytes.len() <= cap,
            payload: Payload::Held(bytes),
            model,
            tokens,
            sent: false,
            store: None,
            stream_without_options: false,
            changed: false,
            previous_response_id: None,
            _reservation: None,
        }
    }

    /// Asks a chat stream that did not ask for it to carry usage in its last frame
    /// (`stream_options.include_usage`); `true` when the body was changed, and the client
    /// must not see that frame.
    pub(crate) fn ask_for_usage(&mut self) -> bool {
        if !self.stream_without_options {
            return false;
        }
        let Payload::Held(bytes) = &self.payload else {
            return false;
        };
        let Some(changed) = crate::usage::with_include_usage(bytes) else {
            return false;
        };
        // Inserted after the opening brace, before everything else: the model moves by
        // what was added.
        let added = changed.len() - bytes.len();
        if let Some(at) = &mut self.model {
            at.span = at.span.start + added..at.span.end + added;
        }
        self.payload = Payload::Held(changed);
        self.stream_without_options = false;
        self.changed = true;
        true
    }

    /// Keeps the body's model as it is on every attempt: an Azure-style request whose
    /// path names the deployment is forwarded unchanged.
    pub(crate) fn keep_model(&mut self) {
        self.model = None;
    }

    pub(crate) fn replayable(&self) -> bool {
        self.replay
    }

    /// The body for an attempt on `deployment`, and its new length if keyless rewrote it;
    /// `None` when it cannot be sent again.
    pub(crate) fn body_for(&mut self, deployment: Option<&str>) -> Option<(Body, Option<usize>)> {
        if self.sent && !self.replay {
            return None;
        }
        self.sent = true;
        match &mut self.payload {
            Payload::Once(body) => body.take().map(|b| (Body::Stream(b), None)),
            Payload::Held(bytes) => match (&self.model, deployment) {
                (Some(at), Some(d)) if at.name != d => {
                    let rewritten = match at.kind {
                        Splice::Json => model::splice_json_string(bytes, at.span.clone(), d),
                        Splice::Form => model::splice_form_field(bytes, at.span.clone(), d),
                    };
                    let len = rewritten.len();
                    Some((Body::from(rewritten), Some(len)))
                }
                _ => Some((
                    Body::from(bytes.clone()),
                    self.changed.then_some(bytes.len()),
                )),
            },
        }
    }
}

/// Reads the model from the body when the request carries one.
pub(crate) async fn prepare(
    config: &Config,
    op: Op<'_>,
    method: &Method,
    headers: &HeaderMap,
    body: Incoming,
    budget: &Arc<ReplayBudget>,
) -> Result<Prepared, Error> {
    if method == Method::GET || method == Method::HEAD || method == Method::DELETE {
        return hold_if_small(config, headers, body, budget).await;
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    let declared_json = mime.is_empty()
        || mime.eq_ignore_ascii_case("application/json")
        || mime.to_ascii_lowercase().ends_with("+json");
    let multipart = mime.eq_ignore_ascii_case("multipart/form-data");

    if declared_json || (!multipart && expects_json(op)) {
        let bytes = read_bounded(config, headers, body, config.max_body_bytes.get()).await?;
        let cap = config.retry.max_replay_bytes;
        if bytes.is_empty() {
            return Ok(Prepared::held(bytes, None, 0, cap));
        }
        let fields = match model::read_json(&bytes) {
            Ok(fields) => fields,
            Err(e) if declared_json => return Err(Error::InvalidJson(e.to_string())),
            // Sent as text/plain (or so) and not JSON after all: Azure says what is wrong.
            Err(_) => return Ok(Prepared::held(bytes, None, 0, cap)),
        };
        let tokens = limit::estimate_tokens(bytes.len(), fields.max_tokens);
        let store = fields.store;
        let model = fields.model.map(|m| ModelAt {
            name: m.name.into_owned(),
            span: m.span,
            kind: Splice::Json,
        });
        let stream_without_options = fields.stream == Some(true) && !fields.stream_options;
        let previous_response_id = fields.previous_response_id;
        let mut prepared = Prepared::held(bytes, model, tokens, cap);
        prepared.store = store;
        prepared.stream_without_options = stream_without_options;
        prepared.previous_response_id = previous_response_id;
        return Ok(prepared);
    }
    if multipart && op.has_multipart_model() {
        let boundary = multer::parse_boundary(content_type)
            .map_err(|e| Error::BadRequest(format!("invalid multipart content type: {e}")))?;
        let bytes = read_bounded(config, headers, body, config.max_body_bytes.get()).await?;
        let model = model::find_form_model(&bytes, &boundary)
            .await
            .map_err(|e| Error::BadRequest(format!("invalid multipart body: {e}")))?
            .map(|m| ModelAt {
                name: m.name,
                span: m.span,
                kind: Splice::Form,
            });
        return Ok(Prepared::held(
            bytes,
            model,
            0,
            config.retry.max_replay_bytes,
        ));
    }
    hold_if_small(config, headers, body, budget).await
}

/// Operations whose body is JSON whatever the client's `Content-Type` says: a JSON body
/// sent as `text/plain` must still have its model mapped and its tokens counted.
fn expects_json(op: Op<'_>) -> bool {
    matches!(
        op.path,
        "chat/completions"
            | "completions"
            | "embeddings"
            | "responses"
            | "images/generations"
            | "audio/speech"
            | "moderations"
    )
}

/// A body keyless need not read is held for replay when its declared length is within
/// the replay cap (and the body limit: a held body is a body keyless reads) and the
/// replay budget has room (a bodiless GET, a small upload); otherwise it streams, sent
/// once.
pub(crate) async fn hold_if_small(
    config: &Config,
    headers: &HeaderMap,
    body: Incoming,
    budget: &Arc<ReplayBudget>,
) -> Result<Prepared, Error> {
    use http_body::Body as _;
    if body.is_end_stream() {
        return Ok(Prepared::held(Bytes::new(), None, 0, 0));
    }
    let cap = config
        .retry
        .max_replay_bytes
        .min(config.max_body_bytes.get());
    let reservation = match declared_length(headers) {
        Some(len) if len <= cap as u64 && config.retry.attempts.get() > 1 => {
            budget.reserve(len as usize)
        }
        _ => None,
    };
    match reservation {
        Some(reservation) => {
            let bytes = read_bounded(config, headers, body, reservation.bytes).await?;
            let mut prepared = Prepared::held(bytes, None, 0, cap);
            prepared._reservation = Some(reservation);
            Ok(prepared)
        }
        None => Ok(Prepared::once(body)),
    }
}

/// Reads a whole body, refusing more than `limit` (early from `Content-Length` when
/// the client sent one), and a client that stops sending for longer than the body
/// timeout.
async fn read_bounded(
    config: &Config,
    headers: &HeaderMap,
    mut body: Incoming,
    limit: usize,
) -> Result<Bytes, Error> {
    if declared_length(headers).is_some_and(|len| len > limit as u64) {
        return Err(Error::BodyTooLarge { limit });
    }
    let gap = config.connections.body_timeout;
    // One frame is kept as it came (no copy); only a body in several is joined.
    let mut one: Option<Bytes> = None;
    let mut joined = bytes::BytesMut::new();
    loop {
        // A frame already there costs no timer: most JSON bodies arrive with their head.
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None => tokio::time::timeout(gap, body.frame())
                .await
                .map_err(|_| Error::BodyTimeout(gap))?,
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| Error::BodyRead(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let held = one.as_ref().map_or(0, Bytes::len) + joined.len();
        if held + data.len() > limit {
            return Err(Error::BodyTooLarge { limit });
        }
        match one.take() {
            None if joined.is_empty() => one = Some(data),
            None => joined.extend_from_slice(&data),
            Some(first) => {
                joined.reserve(first.len() + data.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(one.unwrap_or_else(|| joined.freeze()))
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}
