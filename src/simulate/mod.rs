//! An embedded Azure OpenAI simulator: a fake upstream that speaks Azure's wire format.
//!
//! Two uses: `keyless serve --simulate` proxies to it through the production code path, so
//! keyless can be tried without an Azure account; tests and the load benchmark use it as a
//! fast, controllable upstream (`keyless simulator --listen ADDR` runs it alone).
//!
//! It serves both Azure URL styles (`/openai/v1/...` and the dated
//! `/openai/deployments/{d}/...?api-version=V`), accepts only Entra-style bearer tokens it
//! minted itself (the `identity` submodule), and answers with Azure's shapes: the content-filter
//! annotations, the first streamed chat frame with `"choices": []`, the `apim-request-id`
//! and rate-limit headers.
//!
//! Request headers tune each answer (keyless forwards unknown headers):
//!
//! | header                    | effect                                                     |
//! |---------------------------|------------------------------------------------------------|
//! | `x-sim-chunks: N`         | content frames (text deltas) in a stream; default 8        |
//! | `x-sim-delay-ms: N`       | pause between streamed frames, or once before a non-streamed answer; default 0 |
//! | `x-sim-status: NNN`       | answer this 4xx/5xx with Azure's error body for it          |
//! | `x-sim-retry-after-ms: N` | `retry-after-ms` of a simulated 429 (and `retry-after` in seconds); default 1000 |
//! | `x-sim-reply: text`       | the generated text (repeated if shorter than the chunks)   |
//!
//! Speed matters (it is the upstream of a benchmark): static bodies are pre-serialized, the
//! hot chat path writes JSON by hand, and nothing is logged per request.

mod audio;
mod chat;
mod embeddings;
mod identity;
mod responses;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};
use http_body::{Body as HttpBody, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use identity::Minter;

/// The simulator's response body: a pre-built buffer or a paced stream of SSE frames.
type Body = UnsyncBoxBody<Bytes, Infallible>;

/// How long shutdown waits for in-flight answers (a slow `x-sim-delay-ms` stream) before
/// cutting the remaining connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The largest request body read: Azure's audio limit is 25 MB, plus multipart overhead.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// A running simulator on a loopback port, with an in-process identity it trusts.
pub struct Simulator {
    endpoint: url::Url,
    state: Arc<State>,
    /// The server task, for [`Simulator::stopped`].
    task: tokio::task::JoinHandle<()>,
}

impl Simulator {
    /// Binds 127.0.0.1:0, spawns the server task (stopped by `shutdown`), returns at once.
    pub async fn start(shutdown: CancellationToken) -> std::io::Result<Simulator> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let endpoint = url::Url::parse(&format!("http://{addr}")).map_err(std::io::Error::other)?;
        let state = Arc::new(State::new(None));
        let task = tokio::spawn(run(listener, Arc::clone(&state), shutdown));
        Ok(Simulator {
            endpoint,
            state,
            task,
        })
    }

    /// The endpoint to give keyless, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> url::Url {
        self.endpoint.clone()
    }

    /// Waits for the server task to end, once its `shutdown` has fired (bounded by its
    /// own grace period), so that shutdown leaves no task of it behind.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }

    /// The in-process identity whose tokens this simulator accepts.
    pub fn identity(&self) -> Arc<dyn crate::auth::Acquire> {
        Arc::new(identity::SimulatedIdentity::new(Arc::clone(&self.state)))
    }
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("endpoint", &self.endpoint.as_str())
            .finish_non_exhaustive()
    }
}

/// Serves the simulator on `listener` until `shutdown` fires (graceful: in-flight streams end).
///
/// `identity_header`: when `Some(secret)`, also serve an App Service-style managed identity
/// endpoint at `GET /msi/token?api-version=2019-08-01&resource=...` requiring header
/// `x-identity-header: <secret>` and answering
/// `{"access_token","expires_on":"<unix secs as string>","resource","token_type":"Bearer"}`
/// with a token this simulator accepts. So `keyless serve --credential managed-identity` with
/// `IDENTITY_ENDPOINT=http://127.0.0.1:PORT/msi/token IDENTITY_HEADER=secret` works against
/// it with the real azure_identity `ManagedIdentityCredential`.
pub async fn serve(
    listener: TcpListener,
    identity_header: Option<String>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    run(listener, Arc::new(State::new(identity_header)), shutdown).await;
    Ok(())
}

/// What every connection shares: the token minter and the managed identity secret.
struct State {
    minter: Minter,
    /// The `x-identity-header` secret of `/msi/token`; `None` disables the endpoint.
    identity_header: Option<String>,
}

impl State {
    fn new(identity_header: Option<String>) -> Self {
        Self {
            minter: Minter::new(),
            identity_header,
        }
    }
}

/// The accept loop is the proxy's own (`server::serve`): in-flight answers get
/// [`SHUTDOWN_GRACE`] to finish at shutdown, then the rest are closed.
async fn run(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    let service = hyper::service::service_fn(move |req| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(handle(&state, req).await) }
    });
    crate::server::serve(listener, service, shutdown, SHUTDOWN_GRACE, "simulator").await;
}

/// One request: route, authenticate, apply the knobs, answer.
async fn handle(state: &State, req: http::Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    if parts.uri.path() == "/msi/token" {
        return identity::msi_token(state, &parts);
    }
    let mut response = match route(&parts.method, parts.uri.path(), parts.uri.query()) {
        None => not_found(),
        Some(route) => match identity::refusal(&state.minter, &parts.headers) {
            Some(refused) => refused,
            None => dispatch(route, &parts, body).await,
        },
    };
    azure_headers(response.headers_mut());
    response
}

/// The operation a path names, with the deployment when the URL carries one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route<'a> {
    Chat(Option<&'a str>),
    Responses,
    Embeddings(Option<&'a str>),
    Models,
    Transcriptions(Option<&'a str>),
}

/// Maps a method and path to an operation; `None` is Azure's 404.
fn route<'a>(method: &Method, path: &'a str, query: Option<&str>) -> Option<Route<'a>> {
    let rest = path.strip_prefix("/openai/")?;
    // The v1 API: api-version is optional, the deployment is the body's `model`.
    if let Some(op) = rest.strip_prefix("v1/") {
        return match (method, op) {
            (&Method::POST, "chat/completions") => Some(Route::Chat(None)),
            (&Method::POST, "responses") => Some(Route::Responses),
            (&Method::POST, "embeddings") => Some(Route::Embeddings(None)),
            (&Method::GET, "models") => Some(Route::Models),
            (&Method::POST, "audio/transcriptions") => Some(Route::Transcriptions(None)),
            _ => None,
        };
    }
    // The dated API: Azure answers 404 "Resource not found" when api-version is missing.
    if !has_api_version(query) {
        return None;
    }
    if let Some(rest) = rest.strip_prefix("deployments/") {
        let (deployment, op) = rest.split_once('/')?;
        if deployment.is_empty() {
            return None;
        }
        return match (method, op) {
            (&Method::POST, "chat/completions") => Some(Route::Chat(Some(deployment))),
            (&Method::POST, "embeddings") => Some(Route::Embeddings(Some(deployment))),
            (&Method::POST, "audio/transcriptions") => {
                Some(Route::Transcriptions(Some(deployment)))
            }
            _ => None,
        };
    }
    match (method, rest) {
        (&Method::POST, "responses") => Some(Route::Responses),
        (&Method::GET, "models") => Some(Route::Models),
        _ => None,
    }
}

fn has_api_version(query: Option<&str>) -> bool {
    query.is_some_and(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .any(|(key, value)| key == "api-version" && !value.is_empty())
    })
}

/// Reads the body, applies `x-sim-status`, then runs the operation.
async fn dispatch(route: Route<'_>, parts: &Parts, body: Incoming) -> Response<Body> {
    let knobs = Knobs::read(&parts.headers);
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                "The request body is too large.",
            );
        }
        Err(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "The request body could not be read.",
            );
        }
    };
    if let Some(status) = knobs.status {
        return simulated_error(status, &knobs);
    }
    match route {
        Route::Chat(deployment) => chat::completions(deployment, &body, &knobs).await,
        Route::Responses => responses::create(&body, &knobs).await,
        Route::Embeddings(deployment) => embeddings::create(deployment, &body, &knobs).await,
        Route::Models => {
            knobs.pause().await;
            json_response(StatusCode::OK, Bytes::from_static(MODELS.as_bytes()))
        }
        Route::Transcriptions(deployment) => {
            audio::transcriptions(deployment, &parts.headers, body, &knobs).await
        }
    }
}

/// The list both models routes answer: v1's OpenAI fields plus the dated API's Azure ones.
const MODELS: &str = concat!(
    r#"{"object":"list","data":["#,
    r#"{"id":"gpt-4o","object":"model","created":1715558400,"created_at":1715558400,"owned_by":"system","status":"succeeded","lifecycle_status":"generally-available","#,
    r#""capabilities":{"chat_completion":true,"completion":false,"embeddings":false,"fine_tune":false,"inference":true}},"#,
    r#"{"id":"gpt-4o-mini","object":"model","created":1721260800,"created_at":1721260800,"owned_by":"system","status":"succeeded","lifecycle_status":"generally-available","#,
    r#""capabilities":{"chat_completion":true,"completion":false,"embeddings":false,"fine_tune":true,"inference":true}},"#,
    r#"{"id":"text-embedding-3-small","object":"model","created":1705968000,"created_at":1705968000,"owned_by":"system","status":"succeeded","lifecycle_status":"generally-available","#,
    r#""capabilities":{"chat_completion":false,"completion":false,"embeddings":true,"fine_tune":false,"inference":true}},"#,
    r#"{"id":"whisper","object":"model","created":1696896000,"created_at":1696896000,"owned_by":"system","status":"succeeded","lifecycle_status":"generally-available","#,
    r#""capabilities":{"chat_completion":false,"completion":false,"embeddings":false,"fine_tune":false,"inference":true}}"#,
    "]}"
);

// ---------------------------------------------------------------------------------------
// Knobs

const SIM_CHUNKS: HeaderName = HeaderName::from_static("x-sim-chunks");
const SIM_DELAY_MS: HeaderName = HeaderName::from_static("x-sim-delay-ms");
const SIM_STATUS: HeaderName = HeaderName::from_static("x-sim-status");
const SIM_RETRY_AFTER_MS: HeaderName = HeaderName::from_static("x-sim-retry-after-ms");
const SIM_REPLY: HeaderName = HeaderName::from_static("x-sim-reply");

/// What the test or benchmark asked of this answer, read from `x-sim-*` request headers.
/// Unparsable values fall back to the defaults: a knob never turns into an error.
#[derive(Debug)]
struct Knobs {
    /// Content frames in a stream.
    chunks: usize,
    /// Pause between streamed frames, or once before a non-streamed answer.
    delay: Duration,
    /// A 4xx/5xx to answer instead of the operation.
    status: Option<StatusCode>,
    /// `retry-after-ms` of a simulated 429.
    retry_after_ms: u64,
    /// The generated text; `None` is the default greeting.
    reply: Option<String>,
}

impl Knobs {
    const DEFAULT_CHUNKS: usize = 8;
    /// Bounds that keep a typo from building a gigabyte answer or sleeping for a day.
    const MAX_CHUNKS: usize = 100_000;
    const MAX_DELAY_MS: u64 = 60_000;

    fn read(headers: &HeaderMap) -> Self {
        fn number(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
            headers.get(name)?.to_str().ok()?.trim().parse().ok()
        }
        Knobs {
            chunks: number(headers, &SIM_CHUNKS).map_or(Self::DEFAULT_CHUNKS, |n| {
                usize::try_from(n)
                    .unwrap_or(Self::MAX_CHUNKS)
                    .min(Self::MAX_CHUNKS)
            }),
            delay: Duration::from_millis(
                number(headers, &SIM_DELAY_MS)
                    .unwrap_or(0)
                    .min(Self::MAX_DELAY_MS),
            ),
            status: number(headers, &SIM_STATUS)
                .and_then(|n| StatusCode::from_u16(u16::try_from(n).ok()?).ok())
                .filter(|status| status.is_client_error() || status.is_server_error()),
            retry_after_ms: number(headers, &SIM_RETRY_AFTER_MS)
                .unwrap_or(1000)
                .min(Self::MAX_DELAY_MS * 60),
            reply: headers
                .get(&SIM_REPLY)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
                .filter(|reply| !reply.trim().is_empty()),
        }
    }

    /// The pause a non-streamed answer takes before its head.
    async fn pause(&self) {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
    }

    /// The generated text.
    fn reply(&self) -> &str {
        self.reply.as_deref().unwrap_or(DEFAULT_REPLY)
    }
}

const DEFAULT_REPLY: &str = "Hello from the keyless simulator! This answer came from a simulated \
    Azure OpenAI deployment, reached with a Microsoft Entra ID token instead of an API key.";

/// The reply split into `chunks` contiguous pieces of whole words, each piece keeping its
/// leading space so the pieces concatenate back to the text. When the reply has fewer words
/// than `chunks`, it is repeated until every piece has at least one word, so `x-sim-chunks`
/// always yields exactly that many content frames (up to [`MAX_TEXT`] bytes of text; past
/// that, some pieces are empty).
fn split_reply(reply: &str, chunks: usize) -> (String, Vec<std::ops::Range<usize>>) {
    let words = word_starts(reply).count().max(1);
    let copies = chunks
        .div_ceil(words)
        .min(MAX_TEXT / (reply.len() + 1))
        .max(1);
    let mut text = String::with_capacity(copies * (reply.len() + 1));
    text.push_str(reply);
    for _ in 1..copies {
        text.push(' ');
        text.push_str(reply);
    }
    let starts: Vec<usize> = word_starts(&text).collect();
    let total = starts.len();
    // Piece i runs from word i*total/chunks to word (i+1)*total/chunks; the first starts at
    // 0 and the last ends at the end, so no byte is lost.
    let boundary = |i: usize| {
        if i == 0 {
            0
        } else if i == chunks {
            text.len()
        } else {
            starts
                .get(i * total / chunks)
                .copied()
                .unwrap_or(text.len())
        }
    };
    let pieces = (0..chunks).map(|i| boundary(i)..boundary(i + 1)).collect();
    (text, pieces)
}

/// The most reply text one answer generates, however many chunks are asked for.
const MAX_TEXT: usize = 8 * 1024 * 1024;

/// Byte offsets where a word begins (a non-space after a space, or the first character).
fn word_starts(text: &str) -> impl Iterator<Item = usize> + '_ {
    let mut previous_space = true;
    text.char_indices().filter_map(move |(i, c)| {
        let space = c.is_whitespace();
        let start = previous_space && !space;
        previous_space = space;
        start.then_some(i)
    })
}

/// A rough token count for `usage`: four bytes a token, like OpenAI's rule of thumb.
fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4).max(1)
}

// ---------------------------------------------------------------------------------------
// Responses and errors

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream; charset=utf-8");

fn full(body: Bytes) -> Body {
    Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, APPLICATION_JSON);
    response
}

/// An SSE answer whose frames go out one body frame each, `delay` apart.
fn sse_response(frames: Vec<Bytes>, delay: Duration) -> Response<Body> {
    let mut response = Response::new(SseBody::new(frames, delay).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, EVENT_STREAM);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Azure's `{"error":{"code","message"}}` envelope (its `code` is often the status as a string).
fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let mut body = String::with_capacity(40 + code.len() + message.len());
    body.push_str(r#"{"error":{"code":"#);
    push_json_str(&mut body, code);
    body.push_str(r#","message":"#);
    push_json_str(&mut body, message);
    body.push_str("}}");
    json_response(status, Bytes::from(body))
}

/// OpenAI's envelope, which Azure passes through for request validation errors.
fn invalid_request(message: &str) -> Response<Body> {
    let mut body = String::with_capacity(80 + message.len());
    body.push_str(r#"{"error":{"message":"#);
    push_json_str(&mut body, message);
    body.push_str(r#","type":"invalid_request_error","param":null,"code":null}}"#);
    json_response(StatusCode::BAD_REQUEST, Bytes::from(body))
}

fn invalid_json(error: &serde_json::Error) -> Response<Body> {
    invalid_request(&format!(
        "We could not parse the JSON body of your request. ({error}) \
         (HINT: This likely means you aren't using your HTTP library correctly.)"
    ))
}

const NOT_FOUND: &str = r#"{"error":{"code":"404","message":"Resource not found"}}"#;

fn not_found() -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        Bytes::from_static(NOT_FOUND.as_bytes()),
    )
}

const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");

/// The answer to `x-sim-status`, in the shape Azure gives that status.
fn simulated_error(status: StatusCode, knobs: &Knobs) -> Response<Body> {
    match status {
        StatusCode::UNAUTHORIZED => identity::unauthorized(),
        StatusCode::FORBIDDEN => error_response(
            status,
            "PermissionDenied",
            "The principal `00000000-0000-0000-0000-000000000000` lacks the required data action \
             `Microsoft.CognitiveServices/accounts/OpenAI/deployments/chat/completions/action` to \
             perform `POST /openai/deployments/{deployment-id}/chat/completions` operation.",
        ),
        StatusCode::NOT_FOUND => not_found(),
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
        _ => error_response(
            status,
            status.as_str(),
            &format!("Simulated error {status} (x-sim-status)"),
        ),
    }
}

const APIM_REQUEST_ID: HeaderName = HeaderName::from_static("apim-request-id");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_MS_REGION: HeaderName = HeaderName::from_static("x-ms-region");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");

/// The headers Azure puts on every answer, errors included.
fn azure_headers(headers: &mut HeaderMap) {
    let id = request_id();
    headers.insert(APIM_REQUEST_ID, id.clone());
    headers.insert(X_REQUEST_ID, id);
    headers.insert(REMAINING_REQUESTS, HeaderValue::from_static("999"));
    headers.insert(REMAINING_TOKENS, HeaderValue::from_static("999000"));
    headers.insert(X_MS_REGION, HeaderValue::from_static("Simulated"));
}

/// A random version-4 UUID, formatted without allocating.
fn request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Version 4 in the 13th hex digit, variant 0b10 in the 17th.
    let bits = (rand::random::<u128>() & !(0xf << 76)) | (0x4 << 76);
    let bits = (bits & !(0x3 << 62)) | (0x2 << 62);
    let mut out = [0u8; 36];
    let mut nibble = 32;
    for (i, byte) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            *byte = b'-';
        } else {
            nibble -= 1;
            *byte = HEX[((bits >> (nibble * 4)) & 0xf) as usize];
        }
    }
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static(
        "00000000-0000-4000-8000-000000000000",
    ))
}

/// `prefix` followed by `n` random hex digits (ids such as `chatcmpl-...`, `resp_...`).
fn random_id(prefix: &str, n: usize) -> String {
    let mut id = String::with_capacity(prefix.len() + n);
    id.push_str(prefix);
    while id.len() < prefix.len() + n {
        let _ = write!(id, "{:016x}", rand::random::<u64>());
    }
    id.truncate(prefix.len() + n);
    id
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Appends `s` as a JSON string literal (quotes included).
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut plain = 0;
    for (i, byte) in s.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[plain..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.push_str(escape);
        }
        plain = i + 1;
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

// ---------------------------------------------------------------------------------------
// The SSE body

/// Writes all frames into one buffer, then slices it: one allocation for the whole stream,
/// and each frame still goes out as its own body frame.
struct FrameWriter {
    /// The frames written so far, back to back.
    buf: String,
    ends: Vec<usize>,
}

impl FrameWriter {
    fn new(frames: usize, bytes: usize) -> Self {
        Self {
            buf: String::with_capacity(bytes),
            ends: Vec::with_capacity(frames),
        }
    }

    /// Marks the end of the frame written since the previous call.
    fn end(&mut self) {
        self.ends.push(self.buf.len());
    }

    fn finish(self) -> Vec<Bytes> {
        let all = Bytes::from(self.buf);
        let mut start = 0;
        self.ends
            .into_iter()
            .map(|end| {
                let frame = all.slice(start..end);
                start = end;
                frame
            })
            .collect()
    }
}

/// A body that hands out pre-built SSE frames one at a time, sleeping `delay` between them,
/// so a client (and keyless in front of it) sees every frame as its own write.
struct SseBody {
    frames: std::vec::IntoIter<Bytes>,
    delay: Duration,
    /// Armed after each frame when `delay` is non-zero; reused to avoid an allocation a frame.
    sleep: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl SseBody {
    fn new(frames: Vec<Bytes>, delay: Duration) -> Self {
        Self {
            frames: frames.into_iter(),
            delay,
            sleep: None,
            waiting: false,
        }
    }
}

impl HttpBody for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.frames.len() == 0 {
            return Poll::Ready(None);
        }
        if this.waiting {
            let delay = this.delay;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            ready!(sleep.as_mut().poll(cx));
            this.waiting = false;
        }
        let frame = this.frames.next();
        if !this.delay.is_zero() && this.frames.len() > 0 {
            this.waiting = true;
            if let Some(sleep) = this.sleep.as_mut() {
                sleep.as_mut().reset(Instant::now() + this.delay);
            }
        }
        Poll::Ready(frame.map(|bytes| Ok(Frame::data(bytes))))
    }

    // No exact `size_hint`: it would make hyper send a content-length, and Azure streams
    // chunked.
    fn is_end_stream(&self) -> bool {
        self.frames.len() == 0
    }
}
