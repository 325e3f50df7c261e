//! Realtime: a client's WebSocket upgrade, relayed to Azure's realtime endpoint with the
//! Entra token, and the session's frames copied both ways until one side closes.
//!
//! Order of work, and why:
//! 1. the client's handshake is checked (`GET`, `Upgrade: websocket`, version 13, a key)
//!    before anything goes upstream;
//! 2. the upgrade to Azure is made first, with the client's headers less its keys (the
//!    `Authorization` and `api-key` headers, `api-key` in the query, and the
//!    `openai-insecure-api-key.*` subprotocol entries browsers use) and with the Entra
//!    bearer: Azure's refusal (401, 404, 429) then reaches the client as Azure's own HTTP
//!    answer, and Azure's chosen subprotocol goes into the client's 101;
//! 3. the client gets its 101 and the session runs on a task tracked by the server's
//!    drain: frames are read one at a time on each side and written (flushed) to the
//!    other before the next is read, so a slow reader slows its writer and nothing queues;
//! 4. a close from either side is relayed with its code and reason; keyless closes both
//!    sides itself at the idle timeout, at the maximum session length, and at the end of
//!    the shutdown grace (1001 each time, with a reason that says which).
//!
//! The token is needed only for the upgrade: a session outlives any number of refreshes.
//! Frames are whole WebSocket messages (tungstenite reassembles fragments), copied
//! unchanged; ping and pong frames are relayed too, and the WebSocket library also answers
//! each ping itself, so a peer's ping can get two pongs (RFC 6455 allows unsolicited ones).

use crate::auth::TokenCache;
use crate::body::Body;
use crate::config::{ApiStyle, RealtimeLimits};
use crate::error::Error;
use crate::rewrite;
use crate::telemetry::{Record, SessionStats};
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The largest message keyless relays. Realtime audio arrives base64-encoded in JSON
/// (`input_audio_buffer.append` allows 15 MiB of audio, some 20 MiB of text); anything
/// larger is refused by the library with a 1009 close rather than held in memory.
pub const MAX_MESSAGE: usize = 32 << 20;
/// The largest single frame (a message may come in several).
pub const MAX_FRAME: usize = 16 << 20;
/// Read buffer of each socket: small, as most sessions idle between 20 ms audio frames,
/// and a large frame is read in several rounds.
const READ_BUFFER: usize = 16 * 1024;
/// How long, after a close was relayed, the other side has to answer its close before
/// the socket is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The WebSocket settings of both sides of a session.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // Every message is flushed as it is relayed: no batching in the library.
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_FRAME))
}

/// What every realtime session shares: the TLS set-up towards Azure (the same roots and
/// `--ca-file` as every other upstream request), the limits, and the tracker the server's
/// drain waits on.
#[derive(Clone)]
pub struct Relay {
    tls: TlsConnector,
    sessions: TaskTracker,
    limits: RealtimeLimits,
    connect_timeout: Duration,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("limits", &self.limits)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// `tls` is upstream.rs's client config (its ALPN is set here to HTTP/1.1, the only
    /// protocol a WebSocket upgrade works on); `sessions` is the tracker the server's
    /// drain waits on; the handshake with Azure gets `connect_timeout` to connect and
    /// `handshake_timeout` for Azure's answer.
    pub fn new(
        mut tls: rustls::ClientConfig,
        sessions: TaskTracker,
        limits: RealtimeLimits,
        connect_timeout: Duration,
        handshake_timeout: Duration,
    ) -> Relay {
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Relay {
            tls: TlsConnector::from(Arc::new(tls)),
            sessions,
            limits,
            connect_timeout,
            handshake_timeout,
        }
    }
}

/// Whether a request asks for a WebSocket upgrade (`Upgrade: websocket`, any case).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("websocket"))
}

/// Checks the client's side of the handshake (RFC 6455 §4.2.1); its `Sec-WebSocket-Key`.
fn client_key(parts: &http::request::Parts) -> Result<HeaderValue, Error> {
    if parts.method != http::Method::GET {
        return Err(Error::MethodNotAllowed(format!(
            "{} (a WebSocket upgrade is a GET)",
            parts.method
        )));
    }
    if parts.version != Version::HTTP_11 {
        return Err(Error::BadRequest(
            "a WebSocket upgrade needs HTTP/1.1".into(),
        ));
    }
    let connection_upgrade = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade {
        return Err(Error::BadRequest(
            "a WebSocket upgrade needs `Connection: Upgrade`".into(),
        ));
    }
    if parts
        .headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(Error::BadRequest(
            "a WebSocket upgrade needs `Sec-WebSocket-Version: 13`".into(),
        ));
    }
    match parts.headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(key) if !key.is_empty() => Ok(key.clone()),
        _ => Err(Error::BadRequest(
            "a WebSocket upgrade needs a `Sec-WebSocket-Key`".into(),
        )),
    }
}

/// The value of query parameter `name` (percent-decoded), if the query has it.
pub fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The query less the parameters that carry a key (`api-key`): the other pairs as they came.
pub fn without_keys(query: Option<&str>) -> Option<String> {
    let kept: Vec<&str> = query?
        .split('&')
        .filter(|pair| !pair.is_empty() && !is_key_param(pair))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

fn is_key_param(pair: &str) -> bool {
    let name = pair.split('=').next().unwrap_or("");
    let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
    name.eq_ignore_ascii_case("api-key") || name.eq_ignore_ascii_case("api_key")
}

/// Characters to escape in a query value.
const QUERY_VALUE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'%')
    .add(b'&')
    .add(b'=')
    .add(b'+')
    .add(b'\\')
    .add(b'^')
    .add(b'|')
    .add(b'[')
    .add(b']');

/// The api-version of the realtime preview surface when the configured one predates it
/// (the GA default, 2024-10-21, has no realtime).
pub const REALTIME_API_VERSION: &str = "2025-04-01-preview";

/// The upstream path and query of an OpenAI-style realtime upgrade (`/v1/realtime?model=M`):
/// - `v1`: `{base}/openai/v1/realtime?model={deployment}&...`;
/// - `deployments`: `{base}/openai/realtime?api-version={v}&deployment={deployment}&...`.
///
/// The client's other parameters follow in their order, as they came; its `model` is
/// replaced by the deployment (dropped in the deployments style, where `deployment` names
/// it), its `api-key` is removed, its own `api-version` wins over the configured one.
/// `deployment` is `None` for a session that names none (`?intent=transcription`).
pub fn upstream_path(
    base_path: &str,
    style: ApiStyle,
    deployment: Option<&str>,
    api_version: &str,
    query: Option<&str>,
) -> Result<String, Error> {
    if let Some(d) = deployment {
        crate::route::check_name("deployment", d)?;
    }
    let base = base_path.trim_end_matches('/');
    let rest = without_keys(query);
    let pairs = rest.as_deref().map(|q| q.split('&')).into_iter().flatten();
    let mut out = String::with_capacity(base.len() + 64 + query.map_or(0, str::len));
    out.push_str(base);
    let mut params: Vec<String> = Vec::new();
    let encoded = deployment.map(|d| utf8_percent_encode(d, QUERY_VALUE).to_string());
    match style {
        ApiStyle::V1 => {
            out.push_str("/openai/v1/realtime");
            let mut placed = false;
            for pair in pairs {
                if param_name(pair) == "model" {
                    if let (Some(d), false) = (&encoded, placed) {
                        params.push(format!("model={d}"));
                        placed = true;
                    }
                    continue;
                }
                params.push(pair.to_owned());
            }
            if let (Some(d), false) = (&encoded, placed) {
                params.insert(0, format!("model={d}"));
            }
        }
        ApiStyle::Deployments => {
            out.push_str("/openai/realtime");
            let client: Vec<&str> = pairs
                .filter(|p| !matches!(param_name(p).as_ref(), "model" | "deployment"))
                .collect();
            if !client.iter().any(|p| param_name(p) == "api-version") {
                let version = if is_before(api_version, REALTIME_API_VERSION) {
                    REALTIME_API_VERSION
                } else {
                    api_version
                };
                params.push(format!(
                    "api-version={}",
                    utf8_percent_encode(version, QUERY_VALUE)
                ));
            }
            if let Some(d) = &encoded {
                params.push(format!("deployment={d}"));
            }
            params.extend(client.into_iter().map(str::to_owned));
        }
    }
    if !params.is_empty() {
        out.push('?');
        out.push_str(&params.join("&"));
    }
    Ok(out)
}

/// Whether dated api-version `a` is older than `b` (`YYYY-MM-DD[-preview]`, by date).
fn is_before(a: &str, b: &str) -> bool {
    match (a.get(..10), b.get(..10)) {
        (Some(a), Some(b)) if a.as_bytes()[0].is_ascii_digit() => a < b,
        _ => false,
    }
}

fn param_name(pair: &str) -> std::borrow::Cow<'_, str> {
    let name = pair.split('=').next().unwrap_or("");
    percent_encoding::percent_decode_str(name).decode_utf8_lossy()
}

/// The deployment an Azure-style realtime path names: `model=` on `/openai/v1/realtime`,
/// `deployment=` on `/openai/realtime`.
pub fn azure_deployment(path: &str, query: Option<&str>) -> Option<String> {
    match path.trim_end_matches('/') {
        "/openai/v1/realtime" => query_value(query, "model"),
        "/openai/realtime" => query_value(query, "deployment"),
        _ => None,
    }
}

/// The client's subprotocol list without the entries that carry a key
/// (`openai-insecure-api-key.<key>`); `realtime` and every other entry stay, in order.
pub fn subprotocols(headers: &HeaderMap) -> Option<HeaderValue> {
    let kept: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| {
            !p.is_empty()
                && !p
                    .get(..INSECURE_KEY.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(INSECURE_KEY))
        })
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join(", ")).ok()
}

/// The prefix of the subprotocol entry in which browsers send their key.
const INSECURE_KEY: &str = "openai-insecure-api-key.";

/// The handshake headers keyless makes itself for each side: the client's never go on.
const HANDSHAKE: [HeaderName; 5] = [
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_PROTOCOL,
    // No extension is negotiated: permessage-deflate would have keyless inflate and
    // deflate every frame; the relay copies frames as they are.
    header::SEC_WEBSOCKET_EXTENSIONS,
    header::SEC_WEBSOCKET_ACCEPT,
];

/// The upgrade request to Azure: `uri` (http or https) as ws or wss, the client's headers
/// less hop-by-hop ones, its keys and the handshake it made with keyless, and the Entra
/// bearer (`authorization`, already marked sensitive).
pub fn upstream_request(
    uri: &Uri,
    client: &HeaderMap,
    authorization: HeaderValue,
) -> Result<Request<()>, Error> {
    let scheme = match uri.scheme_str() {
        Some("https") => "wss",
        Some("http") => "ws",
        _ => {
            return Err(Error::BadRequest(format!(
                "cannot make a WebSocket URI of {uri}"
            )));
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| Error::BadRequest("the upstream URI has no host".into()))?;
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let ws_uri: Uri = format!("{scheme}://{authority}{pq}")
        .parse()
        .map_err(|e| Error::BadRequest(format!("cannot build the upstream URI: {e}")))?;
    let mut headers = client.clone();
    for name in &HANDSHAKE {
        headers.remove(name);
    }
    rewrite::request_headers(&mut headers, authorization);
    let host = HeaderValue::from_str(authority.as_str())
        .map_err(|e| Error::BadRequest(format!("cannot build the Host header: {e}")))?;
    headers.insert(header::HOST, host);
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    let key = HeaderValue::from_str(&generate_key())
        .map_err(|e| Error::BadRequest(format!("cannot make a WebSocket key: {e}")))?;
    headers.insert(header::SEC_WEBSOCKET_KEY, key);
    if let Some(protocols) = subprotocols(client) {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocols);
    }
    let mut request = Request::new(());
    *request.uri_mut() = ws_uri;
    *request.headers_mut() = headers;
    Ok(request)
}

/// A socket to Azure: plain (loopback `http` endpoints) or TLS.
type UpstreamIo = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// Opens the session to Azure for the client's upgrade `parts` and answers the client:
/// a 101, with the session started on the relay's tracker, or Azure's own refusal as it
/// came (a 401 also invalidates the token it refused). `record` moves into the session,
/// which logs it at its end; `cut` fires at the end of the shutdown grace.
pub async fn open(
    relay: &Relay,
    parts: &mut http::request::Parts,
    uri: &Uri,
    tokens: &TokenCache,
    record: &mut Record,
    cut: CancellationToken,
) -> Result<Response<Body>, Error> {
    let key = client_key(parts)?;
    // The upgraded socket is taken now: dropping the request later would lose it.
    let on_upgrade = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| Error::BadRequest("this connection cannot be upgraded".into()))?;
    let authorization = tokens
        .authorization()
        .await
        .map_err(|e| Error::NoToken(e.to_string()))?;
    let request = upstream_request(uri, &parts.headers, authorization.clone())?;
    let io = connect(relay, uri).await?;
    let handshake =
        tokio_tungstenite::client_async_with_config(request, io, Some(websocket_config()));
    let (upstream, answer) = match tokio::time::timeout(relay.handshake_timeout, handshake).await {
        Err(_) => return Err(Error::UpstreamTimeout(relay.handshake_timeout)),
        Ok(Ok(done)) => done,
        Ok(Err(tungstenite::Error::Http(refused))) => {
            // Azure answered, and not with a 101: its answer is the client's.
            let (mut head, body) = refused.into_parts();
            if head.status == StatusCode::UNAUTHORIZED {
                tokens.invalidate(&authorization);
            }
            rewrite::response_headers(&mut head.headers);
            head.version = Version::default();
            let body = Body::from(bytes::Bytes::from(body.unwrap_or_default()));
            return Ok(Response::from_parts(head, body));
        }
        Ok(Err(e)) => {
            return Err(Error::UpstreamUnreachable(format!(
                "the WebSocket upgrade to Azure failed: {}",
                crate::error::chain_text(&e)
            )));
        }
    };

    let mut response = Response::new(Body::from(bytes::Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    // Azure's headers (apim-request-id, x-ms-region, ...) come along; the handshake's
    // own are made for this side.
    for (name, value) in answer.headers() {
        if !HANDSHAKE.contains(name) && !is_hop_by_hop(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .map_err(|e| Error::BadRequest(format!("cannot answer the WebSocket key: {e}")))?;
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(chosen) = answer.headers().get(header::SEC_WEBSOCKET_PROTOCOL) {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, chosen.clone());
    }
    record.upstream_request_id = answer
        .headers()
        .get("apim-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    record.status = StatusCode::SWITCHING_PROTOCOLS.as_u16();
    let mut session = record.take();
    let limits = relay.limits;
    relay.sessions.spawn(async move {
        let client = match on_upgrade.await {
            Ok(upgraded) => {
                WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(websocket_config()),
                )
                .await
            }
            Err(e) => {
                // The client left between its request and the 101.
                tracing::debug!(error = %e, "the client's upgrade did not complete");
                session.error = Some("the client left before the upgrade completed".into());
                drop(upstream);
                session.finish(0, crate::body::End::ClientGone);
                return;
            }
        };
        session.session_opened();
        let stats = run(client, upstream, limits, cut).await;
        session.finish_session(stats);
    });
    Ok(response)
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    )
}

/// TCP (and TLS for `https`) to the host of `uri`, within the connect timeout.
async fn connect(relay: &Relay, uri: &Uri) -> Result<UpstreamIo, Error> {
    let host = uri
        .host()
        .ok_or_else(|| Error::BadRequest("the upstream URI has no host".into()))?;
    let tls = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    // `[::1]` in a URI is `::1` to the resolver and to TLS.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let unreachable = |e: &(dyn std::error::Error + 'static)| {
        Error::UpstreamUnreachable(format!(
            "cannot connect to {host}:{port}: {}",
            crate::error::chain_text(e)
        ))
    };
    let connecting = async {
        let tcp = TcpStream::connect((bare, port))
            .await
            .map_err(|e| unreachable(&e))?;
        // Audio frames are small writes: Nagle would hold them back.
        let _ = tcp.set_nodelay(true);
        if !tls {
            return Ok(Either::Left(tcp));
        }
        let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
            .map_err(|e| unreachable(&e))?;
        let stream = relay
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(&e))?;
        Ok(Either::Right(stream))
    };
    match tokio::time::timeout(relay.connect_timeout, connecting).await {
        Ok(result) => result,
        Err(_) => Err(Error::UpstreamUnreachable(format!(
            "cannot connect to {host}:{port} within {:?}",
            relay.connect_timeout
        ))),
    }
}

/// How one direction of a session ended.
enum Pumped {
    /// The sender closed, with this frame (if it carried a code).
    Closed(Option<CloseFrame>),
    /// The sender vanished (reset, end of stream, a protocol error).
    ReadFailed,
    /// The receiver could not be written to.
    WriteFailed,
}

/// Copies messages from `from` to `to`, one at a time: the next is read only once the
/// last was written and flushed (the back-pressure). Counts payload bytes, and stamps
/// `last` (milliseconds since `epoch`) at each message.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    bytes: &mut u64,
    last: &AtomicU64,
    epoch: Instant,
) -> Pumped
where
    R: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    W: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
{
    loop {
        let message = match from.next().await {
            Some(Ok(message)) => message,
            Some(Err(_)) | None => return Pumped::ReadFailed,
        };
        last.store(millis_since(epoch), Ordering::Relaxed);
        match message {
            Message::Close(frame) => return Pumped::Closed(frame),
            // Raw frames are never read, only written.
            Message::Frame(_) => continue,
            message => {
                *bytes += message.len() as u64;
                if to.send(message).await.is_err() {
                    return Pumped::WriteFailed;
                }
            }
        }
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Why keyless itself ended a session.
#[derive(Clone, Copy)]
enum Ending {
    Idle,
    MaxSession,
    Shutdown,
}

/// Runs a session to its end: the relay both ways, the limits, the shutdown cut. What it
/// saw goes into the session's log line.
async fn run<C, U>(
    client: WebSocketStream<C>,
    upstream: WebSocketStream<U>,
    limits: RealtimeLimits,
    cut: CancellationToken,
) -> SessionStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut to_client, mut from_client) = client.split();
    let (mut to_upstream, mut from_upstream) = upstream.split();
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    let mut stats = SessionStats::default();
    let idle = async {
        loop {
            // Saturating: a configured timeout of centuries must not overflow the clock.
            let deadline = epoch
                .checked_add(Duration::from_millis(last.load(Ordering::Relaxed)))
                .and_then(|quiet_since| quiet_since.checked_add(limits.idle));
            let Some(deadline) = deadline else {
                return std::future::pending().await;
            };
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let (mut up, mut down) = (0u64, 0u64);
    enum End {
        Client(Pumped),
        Upstream(Pumped),
        Keyless(Ending),
    }
    let end = tokio::select! {
        p = pump(&mut from_client, &mut to_upstream, &mut up, &last, epoch) => End::Client(p),
        p = pump(&mut from_upstream, &mut to_client, &mut down, &last, epoch) => End::Upstream(p),
        _ = idle => End::Keyless(Ending::Idle),
        _ = tokio::time::sleep(limits.max_session) => End::Keyless(Ending::MaxSession),
        _ = cut.cancelled() => End::Keyless(Ending::Shutdown),
    };
    stats.bytes_from_client = up;
    stats.bytes_to_client = down;
    match end {
        End::Client(Pumped::Closed(frame)) => {
            stats.closed_by = "client";
            stats.close_code = code_of(&frame);
            // The library answered the client's close already; flushed by `close`.
            let _ = to_client.close().await;
            relay_close(&mut to_upstream, &mut from_upstream, frame).await;
        }
        End::Upstream(Pumped::Closed(frame)) => {
            stats.closed_by = "upstream";
            stats.close_code = code_of(&frame);
            let _ = to_upstream.close().await;
            relay_close(&mut to_client, &mut from_client, frame).await;
        }
        End::Client(Pumped::ReadFailed) | End::Upstream(Pumped::WriteFailed) => {
            // The client vanished (no close frame): Azure is told, its socket closed.
            stats.closed_by = "client_gone";
            stats.close_code = 1006;
            let frame = close_frame(CloseCode::Away, "the client went away");
            relay_close(&mut to_upstream, &mut from_upstream, Some(frame)).await;
        }
        End::Upstream(Pumped::ReadFailed) | End::Client(Pumped::WriteFailed) => {
            stats.closed_by = "upstream_gone";
            stats.close_code = 1006;
            // 1011 (an unexpected condition) rather than 1014 ("bad gateway"), which many
            // WebSocket libraries, tungstenite among them, refuse as a reserved code.
            let frame = close_frame(CloseCode::Error, "keyless: Azure's connection was lost");
            relay_close(&mut to_client, &mut from_client, Some(frame)).await;
        }
        End::Keyless(ending) => {
            let (closed_by, reason) = match ending {
                Ending::Idle => ("idle_timeout", "keyless: idle timeout"),
                Ending::MaxSession => ("max_session", "keyless: maximum session length reached"),
                Ending::Shutdown => ("shutdown", "keyless: shutting down"),
            };
            stats.closed_by = closed_by;
            stats.close_code = 1001;
            let frame = close_frame(CloseCode::Away, reason);
            tokio::join!(
                relay_close(&mut to_client, &mut from_client, Some(frame.clone())),
                relay_close(&mut to_upstream, &mut from_upstream, Some(frame)),
            );
        }
    }
    stats
}

fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

/// The code a close carried: 1005 ("no status") when it had none.
fn code_of(frame: &Option<CloseFrame>) -> u16 {
    frame.as_ref().map_or(1005, |f| u16::from(f.code))
}

/// Sends `frame` as a close to a side and waits, a bounded time, for that side's answer
/// (reading and dropping whatever it still sends), so that it sees a clean close.
async fn relay_close<W, R>(to: &mut W, from: &mut R, frame: Option<CloseFrame>)
where
    W: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
    R: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    // A code the protocol reserves for local use (1005, 1006, 1015) cannot be sent: the
    // close then goes without one.
    let frame = frame.filter(|f| f.code.is_allowed());
    if to.send(Message::Close(frame)).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(message)) = from.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
    let _ = to.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn v1_paths_name_the_deployment_and_keep_other_parameters() {
        assert_eq!(
            upstream_path(
                "",
                ApiStyle::V1,
                Some("rt-prod"),
                "x",
                Some("model=gpt-realtime")
            )
            .unwrap(),
            "/openai/v1/realtime?model=rt-prod"
        );
        assert_eq!(
            upstream_path(
                "/gw",
                ApiStyle::V1,
                Some("rt"),
                "x",
                Some("foo=1&model=m&api-key=secret&bar=b%20c")
            )
            .unwrap(),
            "/gw/openai/v1/realtime?foo=1&model=rt&bar=b%20c"
        );
        assert_eq!(
            upstream_path("", ApiStyle::V1, None, "x", Some("intent=transcription")).unwrap(),
            "/openai/v1/realtime?intent=transcription"
        );
        assert_eq!(
            upstream_path("", ApiStyle::V1, Some("d"), "x", None).unwrap(),
            "/openai/v1/realtime?model=d"
        );
    }

    #[test]
    fn deployments_paths_carry_api_version_and_deployment() {
        assert_eq!(
            upstream_path(
                "",
                ApiStyle::Deployments,
                Some("rt"),
                "2024-10-21",
                Some("model=gpt-realtime&x=1")
            )
            .unwrap(),
            "/openai/realtime?api-version=2025-04-01-preview&deployment=rt&x=1"
        );
        assert_eq!(
            upstream_path(
                "",
                ApiStyle::Deployments,
                Some("rt"),
                "2025-06-01-preview",
                None
            )
            .unwrap(),
            "/openai/realtime?api-version=2025-06-01-preview&deployment=rt"
        );
        // The client's own api-version wins.
        assert_eq!(
            upstream_path(
                "",
                ApiStyle::Deployments,
                Some("rt"),
                "2024-10-21",
                Some("api-version=2024-10-01-preview&model=m")
            )
            .unwrap(),
            "/openai/realtime?deployment=rt&api-version=2024-10-01-preview"
        );
    }

    #[test]
    fn deployment_names_that_are_tricks_are_refused() {
        for bad in ["..", "a/b", "a&b=c", "a b"] {
            assert!(
                upstream_path("", ApiStyle::V1, Some(bad), "x", None).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn keys_leave_the_query_and_the_subprotocols() {
        assert_eq!(
            without_keys(Some("api-key=s&model=m&API_KEY=t&api%2Dkey=u")).as_deref(),
            Some("model=m")
        );
        assert_eq!(without_keys(Some("api-key=s")), None);
        let h = headers(&[(
            "sec-websocket-protocol",
            "realtime, openai-insecure-api-key.sk-secret, openai-beta.realtime-v1",
        )]);
        assert_eq!(
            subprotocols(&h).unwrap(),
            "realtime, openai-beta.realtime-v1"
        );
        let only_key = headers(&[("sec-websocket-protocol", "OpenAI-Insecure-API-Key.sk")]);
        assert_eq!(subprotocols(&only_key), None);
    }

    #[test]
    fn the_upstream_request_is_signed_and_carries_no_client_key() {
        let client = headers(&[
            ("authorization", "Bearer sk-client"),
            ("api-key", "azure-key"),
            ("sec-websocket-key", "client-key=="),
            ("sec-websocket-extensions", "permessage-deflate"),
            (
                "sec-websocket-protocol",
                "realtime, openai-insecure-api-key.sk-x",
            ),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("host", "127.0.0.1:8787"),
            ("x-ms-client-request-id", "abc"),
        ]);
        let uri: Uri = "https://res.openai.azure.com/openai/v1/realtime?model=d"
            .parse()
            .unwrap();
        let bearer = rewrite::bearer("entra-token").unwrap();
        let request = upstream_request(&uri, &client, bearer).unwrap();
        assert_eq!(
            request.uri().to_string(),
            "wss://res.openai.azure.com/openai/v1/realtime?model=d"
        );
        let h = request.headers();
        assert_eq!(h["authorization"], "Bearer entra-token");
        assert!(h["authorization"].is_sensitive());
        assert!(h.get("api-key").is_none());
        assert!(h.get("sec-websocket-extensions").is_none());
        assert_eq!(h["sec-websocket-protocol"], "realtime");
        assert_ne!(h["sec-websocket-key"], "client-key==");
        assert_eq!(h["host"], "res.openai.azure.com");
        assert_eq!(h["x-ms-client-request-id"], "abc");
        let plain: Uri = "http://127.0.0.1:9/openai/realtime".parse().unwrap();
        let request = upstream_request(&plain, &client, rewrite::bearer("t").unwrap()).unwrap();
        assert_eq!(request.uri().scheme_str(), Some("ws"));
    }

    #[test]
    fn upgrades_are_recognised() {
        assert!(is_upgrade(&headers(&[("upgrade", "WebSocket")])));
        assert!(is_upgrade(&headers(&[("upgrade", "h2c, websocket")])));
        assert!(!is_upgrade(&headers(&[("upgrade", "h2c")])));
        assert!(!is_upgrade(&HeaderMap::new()));
    }

    #[test]
    fn azure_paths_name_their_deployment_in_the_query() {
        assert_eq!(
            azure_deployment("/openai/v1/realtime", Some("model=a")).as_deref(),
            Some("a")
        );
        assert_eq!(
            azure_deployment(
                "/openai/realtime",
                Some("api-version=2025-04-01-preview&deployment=b")
            )
            .as_deref(),
            Some("b")
        );
        assert_eq!(
            azure_deployment("/openai/v1/responses", Some("model=a")),
            None
        );
    }
}
