//! An embedded Azure OpenAI simulator: a fake upstream that speaks Azure's wire format.
//!
//! Two uses: `keyless serve --simulate` proxies to it through the production code path, so
//! keyless can be tried, and apps built and tested, without an Azure account; tests and the
//! load benchmark use it as a fast, controllable upstream (`keyless simulator --listen ADDR`
//! runs it alone).
//!
//! It serves both Azure URL styles (`/openai/v1/...` and the dated
//! `/openai/deployments/{d}/...?api-version=V`), accepts only Entra-style bearer tokens it
//! minted itself (the `identity` submodule), and answers with Azure's shapes: the content-filter
//! annotations, the first streamed chat frame with `"choices": []`, `usage` with details, the
//! `apim-request-id`, `x-ms-region` and rate-limit headers, and Azure's errors. Answers are
//! deterministic: the same request gives the same content (ids and timestamps differ, as
//! they do on Azure).
//!
//! What it covers, by module: `chat` (text, tools, structured output through `schema`, `n`,
//! `logprobs`, `max_tokens`, `stop`), `completions` (legacy), `responses` and `stored`
//! (the Responses API and its lifecycle), `embeddings`, `models`, `images`, `files` and
//! `batches` (kept in memory by `store`), `audio` (transcriptions, translations, speech).
//! Usage is counted with o200k_base (`tokens`).
//!
//! Request headers tune each answer (keyless forwards unknown headers):
//!
//! | header                       | effect                                                     |
//! |------------------------------|------------------------------------------------------------|
//! | `x-sim-reply: text`          | the generated text (said once; `x-sim-chunks` splits it)   |
//! | `x-sim-chunks: N`            | content frames of a stream, at most one a character; default 8 |
//! | `x-sim-delay-ms: N`          | pause between streamed frames, or once before a non-streamed answer; default 0 |
//! | `x-sim-head-delay-ms: N`     | pause before the response head of any answer, errors included |
//! | `x-sim-status: NNN`          | answer this 4xx/5xx with Azure's error body for it          |
//! | `x-sim-retry-after-ms: N`    | `retry-after-ms` of a simulated 429 (and `retry-after` in seconds); default 1000 |
//! | `x-sim-drop-after: N`        | cut the connection after N body frames (SSE events; a JSON answer is one frame) |
//! | `x-sim-complete-after-ms: N` | when a background response or a batch finishes; default 300 and 1000 |
//!
//! Speed matters (it is the upstream of a benchmark): static bodies are pre-serialized, the
//! hot chat path writes JSON by hand, and nothing is logged per request.

mod audio;
mod batches;
mod chat;
mod completions;
mod embeddings;
mod errors;
mod files;
mod identity;
mod images;
mod knobs;
mod models;
mod realtime;
mod responses;
mod schema;
mod sse;
mod store;
mod stored;
#[cfg(test)]
mod tests;
mod tokens;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use errors::{error_response, invalid_json, invalid_request, not_found};
use identity::Minter;
use knobs::Knobs;
use sse::{FrameWriter, SseBody};

/// The error a simulator body can end with: only [`sse::Dropped`], on request.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The simulator's response body: a pre-built buffer or a paced stream of SSE frames.
type Body = UnsyncBoxBody<Bytes, BoxError>;

/// How long shutdown waits for in-flight answers (a slow `x-sim-delay-ms` stream) before
/// cutting the remaining connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The largest request body read: Azure's audio limit is 25 MB, plus multipart overhead.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// What the simulated resource has.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The deployments it has: `None` (the default) is every name, so any model name an
    /// app uses works; `Some(names)` answers any other deployment with Azure's 404
    /// `DeploymentNotFound`.
    pub deployments: Option<HashSet<String>>,
}

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
        Self::start_with(Options::default(), shutdown).await
    }

    /// [`Simulator::start`] for a resource with these `options`.
    pub async fn start_with(
        options: Options,
        shutdown: CancellationToken,
    ) -> std::io::Result<Simulator> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let endpoint = endpoint_of(&listener)?;
        let state = Arc::new(State::new(None, options, endpoint.clone()));
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

fn endpoint_of(listener: &TcpListener) -> std::io::Result<url::Url> {
    let addr = listener.local_addr()?;
    url::Url::parse(&format!("http://{addr}")).map_err(std::io::Error::other)
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
    serve_with(listener, identity_header, Options::default(), shutdown).await
}

/// [`serve`] for a resource with these `options`.
pub async fn serve_with(
    listener: TcpListener,
    identity_header: Option<String>,
    options: Options,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let endpoint = endpoint_of(&listener)?;
    let state = Arc::new(State::new(identity_header, options, endpoint));
    run(listener, state, shutdown).await;
    Ok(())
}

/// What every connection shares: the token minter, the managed identity secret, the
/// resource's deployments and what it stores (files, batches, responses, images).
struct State {
    minter: Minter,
    /// The `x-identity-header` secret of `/msi/token`; `None` disables the endpoint.
    identity_header: Option<String>,
    options: Options,
    /// This simulator's own address, for the image URLs it hands out.
    endpoint: url::Url,
    store: store::Store,
}

impl State {
    fn new(identity_header: Option<String>, options: Options, endpoint: url::Url) -> Self {
        Self {
            minter: Minter::new(),
            identity_header,
            options,
            endpoint,
            store: store::Store::default(),
        }
    }

    /// Azure's 404 for a deployment this resource does not have, if it does not.
    fn missing_deployment(&self, name: &str) -> Option<Response<Body>> {
        match &self.options.deployments {
            Some(known) if !known.contains(name) => Some(errors::deployment_not_found()),
            _ => None,
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
    let (mut parts, body) = req.into_parts();
    if parts.uri.path() == "/msi/token" {
        return identity::msi_token(state, &parts);
    }
    // The realtime WebSocket endpoint, with the whole request (an upgrade needs it).
    if let Some(answer) = realtime::answer(state, &mut parts) {
        return answer;
    }
    let path = parts.uri.path();
    // Generated images are fetched like Azure's blob URLs: the URL is the credential.
    if let Some(name) = path.strip_prefix(images::URL_PREFIX) {
        return images::serve(state, &parts.method, name);
    }
    let knobs = Knobs::read(&parts.headers);
    if !knobs.head_delay.is_zero() {
        tokio::time::sleep(knobs.head_delay).await;
    }
    let mut response = match route(&parts.method, path, parts.uri.query()) {
        Routed::NotFound => not_found(),
        Routed::BadApiVersion => errors::unsupported_api_version(),
        Routed::ResponsesNeedNewerApiVersion => error_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Azure OpenAI Responses API is enabled only for api-version 2025-03-01-preview and later",
        ),
        Routed::Op(route) => match identity::refusal(&state.minter, &parts.headers) {
            Some(refused) => refused,
            None => dispatch(state, route, &parts, body, &knobs).await,
        },
    };
    if let Some(frames) = knobs.drop_after {
        let (head, body) = response.into_parts();
        response = Response::from_parts(head, sse::drop_after(body, frames));
    }
    azure_headers(response.headers_mut());
    response
}

/// The operation a path names, with the deployment when the URL carries one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route<'a> {
    Chat(Option<&'a str>),
    Completions(Option<&'a str>),
    Embeddings(Option<&'a str>),
    Transcriptions(Option<&'a str>),
    Translations(Option<&'a str>),
    Speech(Option<&'a str>),
    Images(Option<&'a str>),
    Responses,
    Response(stored::Op, &'a str),
    Models,
    Model(&'a str),
    Files,
    UploadFile,
    File(files::Op, &'a str),
    Batches,
    CreateBatch,
    Batch(&'a str),
    CancelBatch(&'a str),
}

impl Route<'_> {
    /// The deployment the URL names, if it names one.
    fn deployment(&self) -> Option<&str> {
        match *self {
            Route::Chat(d)
            | Route::Completions(d)
            | Route::Embeddings(d)
            | Route::Transcriptions(d)
            | Route::Translations(d)
            | Route::Speech(d)
            | Route::Images(d) => d,
            _ => None,
        }
    }

    /// Whether the operation runs on a deployment (named by the URL or the body's `model`).
    fn on_deployment(&self) -> bool {
        matches!(
            self,
            Route::Chat(_)
                | Route::Completions(_)
                | Route::Embeddings(_)
                | Route::Transcriptions(_)
                | Route::Translations(_)
                | Route::Speech(_)
                | Route::Images(_)
                | Route::Responses
        )
    }
}

/// What a path and query come to before authentication.
#[derive(Debug, PartialEq, Eq)]
enum Routed<'a> {
    Op(Route<'a>),
    NotFound,
    BadApiVersion,
    ResponsesNeedNewerApiVersion,
}

/// Maps a method, path and query to an operation, or to Azure's refusal.
fn route<'a>(method: &Method, path: &'a str, query: Option<&str>) -> Routed<'a> {
    let Some(rest) = path.strip_prefix("/openai/") else {
        return Routed::NotFound;
    };
    let version = api_version(query);
    // The v1 API: api-version is optional (`v1`, `preview` or `latest` when given), the
    // deployment is the body's `model`.
    if let Some(op) = rest.strip_prefix("v1/") {
        if version
            .as_deref()
            .is_some_and(|v| !matches!(v, "v1" | "preview" | "latest"))
        {
            return Routed::BadApiVersion;
        }
        return operation(method, op, None).map_or(Routed::NotFound, Routed::Op);
    }
    // The dated API: Azure answers 404 "Resource not found" when api-version is missing.
    let Some(version) = version else {
        return Routed::NotFound;
    };
    let Some(date) = dated_version(&version) else {
        return Routed::BadApiVersion;
    };
    let found = if let Some(rest) = rest.strip_prefix("deployments/") {
        match rest.split_once('/') {
            Some((deployment, op)) if !deployment.is_empty() => {
                operation(method, op, Some(deployment)).filter(|r| r.deployment().is_some())
            }
            _ => None,
        }
    } else {
        operation(method, rest, None).filter(|r| !r.on_deployment() || *r == Route::Responses)
    };
    match found {
        None => Routed::NotFound,
        // Responses exists on the dated surface only from 2025-03-01-preview on.
        Some(Route::Responses | Route::Response(..)) if date < "2025-03-01" => {
            Routed::ResponsesNeedNewerApiVersion
        }
        Some(route) => Routed::Op(route),
    }
}

/// The operation below `/openai/v1/`, `/openai/` or `/openai/deployments/{d}/`.
fn operation<'a>(method: &Method, op: &'a str, deployment: Option<&'a str>) -> Option<Route<'a>> {
    let segments: Vec<&str> = op.split('/').collect();
    Some(match (method, segments.as_slice()) {
        (&Method::POST, ["chat", "completions"]) => Route::Chat(deployment),
        (&Method::POST, ["completions"]) => Route::Completions(deployment),
        (&Method::POST, ["embeddings"]) => Route::Embeddings(deployment),
        (&Method::POST, ["audio", "transcriptions"]) => Route::Transcriptions(deployment),
        (&Method::POST, ["audio", "translations"]) => Route::Translations(deployment),
        (&Method::POST, ["audio", "speech"]) => Route::Speech(deployment),
        (&Method::POST, ["images", "generations"]) => Route::Images(deployment),
        (&Method::POST, ["responses"]) => Route::Responses,
        (&Method::GET, ["responses", id]) => Route::Response(stored::Op::Retrieve, id),
        (&Method::DELETE, ["responses", id]) => Route::Response(stored::Op::Delete, id),
        (&Method::POST, ["responses", id, "cancel"]) => Route::Response(stored::Op::Cancel, id),
        (&Method::GET, ["responses", id, "input_items"]) => {
            Route::Response(stored::Op::InputItems, id)
        }
        (&Method::GET, ["models"]) => Route::Models,
        (&Method::GET, ["models", id]) => Route::Model(id),
        (&Method::GET, ["files"]) => Route::Files,
        (&Method::POST, ["files"]) => Route::UploadFile,
        (&Method::GET, ["files", id]) => Route::File(files::Op::Retrieve, id),
        (&Method::DELETE, ["files", id]) => Route::File(files::Op::Delete, id),
        (&Method::GET, ["files", id, "content"]) => Route::File(files::Op::Content, id),
        (&Method::GET, ["batches"]) => Route::Batches,
        (&Method::POST, ["batches"]) => Route::CreateBatch,
        (&Method::GET, ["batches", id]) => Route::Batch(id),
        (&Method::POST, ["batches", id, "cancel"]) => Route::CancelBatch(id),
        _ => return None,
    })
    .filter(|route| match route {
        Route::Response(_, id)
        | Route::Model(id)
        | Route::File(_, id)
        | Route::Batch(id)
        | Route::CancelBatch(id) => !id.is_empty(),
        _ => true,
    })
}

/// The request's `api-version`, when it has a non-empty one.
fn api_version(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == "api-version")
        .map(|(_, value)| value.into_owned())
        .filter(|value| !value.is_empty())
}

/// The date of a dated api-version (`YYYY-MM-DD` or `YYYY-MM-DD-preview`) Azure could
/// have: the first dated version is 2022-12-01.
fn dated_version(version: &str) -> Option<&str> {
    let date = version.strip_suffix("-preview").unwrap_or(version);
    let b = date.as_bytes();
    let shape = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        });
    let month = date.get(5..7).and_then(|m| m.parse::<u8>().ok());
    let day = date.get(8..10).and_then(|d| d.parse::<u8>().ok());
    (shape
        && month.is_some_and(|m| (1..=12).contains(&m))
        && day.is_some_and(|d| (1..=31).contains(&d))
        && date >= "2022-12-01")
        .then_some(date)
}

/// What an operation handler gets: the shared state, the request and its knobs.
struct Call<'a> {
    state: &'a State,
    parts: &'a Parts,
    body: Bytes,
    knobs: &'a Knobs,
}

impl Call<'_> {
    /// Azure's 404 when `deployment` is not one of the resource's.
    fn missing_deployment(&self, deployment: &str) -> Option<Response<Body>> {
        self.state.missing_deployment(deployment)
    }
}

/// Reads the body, applies `x-sim-status`, then runs the operation.
async fn dispatch(
    state: &State,
    route: Route<'_>,
    parts: &Parts,
    body: Incoming,
    knobs: &Knobs,
) -> Response<Body> {
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
        return errors::simulated(status, knobs, route.on_deployment());
    }
    if let Some(missing) = route.deployment().and_then(|d| state.missing_deployment(d)) {
        return missing;
    }
    if matches!(
        route,
        Route::Chat(_)
            | Route::Completions(_)
            | Route::Embeddings(_)
            | Route::Responses
            | Route::CreateBatch
    ) {
        tokens::load().await;
    }
    let call = Call {
        state,
        parts,
        body,
        knobs,
    };
    match route {
        Route::Chat(deployment) => chat::completions(deployment, &call).await,
        Route::Completions(deployment) => completions::create(deployment, &call).await,
        Route::Embeddings(deployment) => embeddings::create(deployment, &call).await,
        Route::Transcriptions(deployment) => {
            audio::transcribe(audio::Task::Transcribe, deployment, &call).await
        }
        Route::Translations(deployment) => {
            audio::transcribe(audio::Task::Translate, deployment, &call).await
        }
        Route::Speech(deployment) => audio::speech(deployment, &call).await,
        Route::Images(deployment) => images::generate(deployment, &call).await,
        Route::Responses => responses::create(&call).await,
        Route::Response(op, id) => stored::handle(op, id, &call),
        Route::Models => models::list(knobs).await,
        Route::Model(id) => models::retrieve(id, knobs).await,
        Route::Files => files::list(&call),
        Route::UploadFile => files::upload(&call).await,
        Route::File(op, id) => files::handle(op, id, &call),
        Route::Batches => batches::list(&call),
        Route::CreateBatch => batches::create(&call).await,
        Route::Batch(id) => batches::retrieve(id, &call),
        Route::CancelBatch(id) => batches::cancel(id, &call),
    }
}

// ---------------------------------------------------------------------------------------
// Answers

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

/// A 200 with `value` as its JSON body.
fn json_ok(value: &serde_json::Value) -> Response<Body> {
    json_response(StatusCode::OK, Bytes::from(value.to_string()))
}

/// An SSE answer whose frames go out one body frame each, `delay` apart.
fn sse_response(frames: Vec<Bytes>, delay: Duration, tail: usize) -> Response<Body> {
    let mut response = Response::new(SseBody::new(frames, delay, tail).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, EVENT_STREAM);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
const APIM_REQUEST_ID: HeaderName = HeaderName::from_static("apim-request-id");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_MS_REGION: HeaderName = HeaderName::from_static("x-ms-region");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");

/// The headers Azure puts on every answer, errors included.
fn azure_headers(headers: &mut HeaderMap) {
    let id = request_id();
    headers.insert(APIM_REQUEST_ID, id.clone());
    headers.insert(X_REQUEST_ID, id);
    headers.insert(REMAINING_REQUESTS, HeaderValue::from_static("999"));
    headers.insert(REMAINING_TOKENS, HeaderValue::from_static("999000"));
    headers.insert(LIMIT_REQUESTS, HeaderValue::from_static("1000"));
    headers.insert(LIMIT_TOKENS, HeaderValue::from_static("1000000"));
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
