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
use http::{HeaderMap, Method, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::ops::Range;

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
}

impl Prepared {
    fn once(body: Incoming) -> Prepared {
        Prepared {
            payload: Payload::Once(Some(body)),
            model: None,
            tokens: 0,
            replay: false,
            sent: false,
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
        }
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
                _ => Some((Body::from(bytes.clone()), None)),
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
) -> Result<Prepared, Error> {
    if method == Method::GET || method == Method::HEAD || method == Method::DELETE {
        return hold_if_small(config, headers, body).await;
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    let is_json = mime.is_empty()
        || mime.eq_ignore_ascii_case("application/json")
        || mime.to_ascii_lowercase().ends_with("+json");

    if is_json {
        let bytes = read_bounded(headers, body, config.max_body_bytes).await?;
        if bytes.is_empty() {
            return Ok(Prepared::held(
                bytes,
                None,
                0,
                config.retry.max_replay_bytes,
            ));
        }
        let fields = model::read_json(&bytes).map_err(|e| Error::InvalidJson(e.to_string()))?;
        let tokens = limit::estimate_tokens(bytes.len(), fields.max_tokens);
        let model = fields.model.map(|m| ModelAt {
            name: m.name.into_owned(),
            span: m.span,
            kind: Splice::Json,
        });
        return Ok(Prepared::held(
            bytes,
            model,
            tokens,
            config.retry.max_replay_bytes,
        ));
    }
    if mime.eq_ignore_ascii_case("multipart/form-data") && op.has_multipart_model() {
        let boundary = multer::parse_boundary(content_type)
            .map_err(|e| Error::BadRequest(format!("invalid multipart content type: {e}")))?;
        let bytes = read_bounded(headers, body, config.max_body_bytes).await?;
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
    hold_if_small(config, headers, body).await
}

/// A body keyless need not read is held for replay when its declared length is within
/// the replay cap (a bodiless GET, a small upload); otherwise it streams, sent once.
pub(crate) async fn hold_if_small(
    config: &Config,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Prepared, Error> {
    use http_body::Body as _;
    if body.is_end_stream() {
        return Ok(Prepared::held(Bytes::new(), None, 0, 0));
    }
    let cap = config.retry.max_replay_bytes;
    match declared_length(headers) {
        Some(len) if len <= cap as u64 && config.retry.attempts > 1 => {
            let bytes = read_bounded(headers, body, cap).await?;
            Ok(Prepared::held(bytes, None, 0, cap))
        }
        _ => Ok(Prepared::once(body)),
    }
}

/// Reads a whole body, refusing more than `limit` (early from `Content-Length` when
/// the client sent one).
async fn read_bounded(headers: &HeaderMap, body: Incoming, limit: usize) -> Result<Bytes, Error> {
    if declared_length(headers).is_some_and(|len| len > limit as u64) {
        return Err(Error::BodyTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::BodyTooLarge { limit }),
        Err(e) => Err(Error::BodyRead(e.to_string())),
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}
