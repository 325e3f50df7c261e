//! Realtime over real sockets: WebSocket clients (tokio-tungstenite) through keyless to a
//! WebSocket mock of Azure (tests/support/ws.rs) that records each upgrade.
//!
//! What is checked: the upstream path, query, bearer and subprotocols in both path styles
//! and for Azure-style inbound paths; 1 MiB binary frames and text intact both ways, pings
//! relayed; close codes and reasons both ways; a client that vanishes; a session that
//! outlives a token refresh; the idle and session limits; Azure's refusal of an upgrade;
//! bad handshakes; SIGTERM during a session (the grace, then 1001); metrics and the log
//! line.

mod support;

use futures_util::{SinkExt, StreamExt};
use keyless::auth::{Acquire, AuthError, Secret, Token};
use keyless::config::ApiStyle;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};
use support::mock::{Proxy, TestIdentity, flags};
use support::ws::{Upstream, WsMock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Long enough for anything this test waits for on a loaded machine; never a speed bound.
const PATIENCE: Duration = Duration::from_secs(30);

/// keyless in front of `mock`, with `gpt-realtime` mapped to the deployment `rt-prod`.
async fn proxy_with(mock: &WsMock, change: impl FnOnce(&mut keyless::config::Flags)) -> Proxy {
    let mut f = flags();
    f.models.push(("gpt-realtime".into(), "rt-prod".into()));
    change(&mut f);
    Proxy::start(f, &mock.url, TestIdentity::ok()).await
}

fn ws_url(base: &str, path_and_query: &str) -> String {
    format!("{}{path_and_query}", base.replacen("http://", "ws://", 1))
}

/// Connects with `headers` added to the upgrade.
async fn connect_with(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(Client, tungstenite::handshake::client::Response), tungstenite::Error> {
    let mut request = url.into_client_request().unwrap();
    for (k, v) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let config = WebSocketConfig::default().max_message_size(Some(64 << 20));
    tokio::time::timeout(
        PATIENCE,
        tokio_tungstenite::connect_async_with_config(request, Some(config), false),
    )
    .await
    .expect("the upgrade is answered")
}

async fn connect(url: &str) -> Client {
    connect_with(url, &[])
        .await
        .expect("the upgrade succeeds")
        .0
}

/// The next message that is not a ping or pong.
async fn next_data<S>(socket: &mut S) -> Message
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("a message arrives")
            .expect("the socket is open")
            .expect("a message, not an error");
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return message;
        }
    }
}

/// The next session the mock accepted.
async fn accepted(
    sessions: &mut tokio::sync::mpsc::UnboundedReceiver<(Upstream, support::ws::Handshake)>,
) -> (Upstream, support::ws::Handshake) {
    tokio::time::timeout(PATIENCE, sessions.recv())
        .await
        .expect("the upgrade reaches the mock")
        .expect("the mock runs")
}

async fn metrics(base: &str) -> String {
    support::mock::client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the metric line starting with `prefix` (labels included), or 0.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Waits (bounded) until `condition` holds on the metrics.
async fn metrics_until(base: &str, what: &str, condition: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = metrics(base).await;
        if condition(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const OPEN: &str = "keyless_realtime_sessions_open ";

#[tokio::test]
async fn v1_upgrades_reach_azure_with_the_deployment_the_bearer_and_no_client_key() {
    let (mock, mut sessions) = WsMock::handing().await;
    let proxy = proxy_with(&mock, |_| {}).await;
    for path in ["/v1/realtime", "/realtime"] {
        let url = ws_url(
            &proxy.base,
            &format!("{path}?model=gpt-realtime&foo=bar&api-key=query-secret"),
        );
        let (mut client, answer) = connect_with(
            &url,
            &[
                ("authorization", "Bearer sk-client-key"),
                ("api-key", "azure-client-key"),
                (
                    "sec-websocket-protocol",
                    "realtime, openai-insecure-api-key.sk-browser-key",
                ),
                ("x-ms-client-request-id", "trace-me"),
            ],
        )
        .await
        .expect("the upgrade succeeds");
        assert_eq!(answer.headers()["sec-websocket-protocol"], "realtime");
        assert_eq!(answer.headers()["apim-request-id"], "mock-apim-id");
        let (mut upstream, seen) = accepted(&mut sessions).await;
        assert_eq!(
            seen.path_and_query,
            "/openai/v1/realtime?model=rt-prod&foo=bar"
        );
        assert_eq!(seen.header("authorization"), "Bearer test-token-0");
        assert_eq!(seen.header("api-key"), "");
        assert_eq!(seen.header("sec-websocket-protocol"), "realtime");
        assert_eq!(seen.header("x-ms-client-request-id"), "trace-me");
        let everything = format!("{seen:?}");
        for secret in [
            "sk-client-key",
            "azure-client-key",
            "sk-browser-key",
            "query-secret",
        ] {
            assert!(
                !everything.contains(secret),
                "{secret} reached Azure: {everything}"
            );
        }

        // The session is counted as open while it is, and frames flow both ways.
        let text = metrics(&proxy.base).await;
        assert_eq!(metric(&text, OPEN), 1.0, "{text}");
        client
            .send(Message::text("{\"type\":\"session.update\"}"))
            .await
            .unwrap();
        assert_eq!(
            next_data(&mut upstream).await,
            Message::text("{\"type\":\"session.update\"}")
        );
        upstream
            .send(Message::text("{\"type\":\"session.updated\"}"))
            .await
            .unwrap();
        assert_eq!(
            next_data(&mut client).await,
            Message::text("{\"type\":\"session.updated\"}")
        );
        client.close(None).await.unwrap();
        metrics_until(&proxy.base, "the session ends", |t| metric(t, OPEN) == 0.0).await;
    }
    let text = metrics(&proxy.base).await;
    assert!(
        text.lines().any(
            |l| l.starts_with("keyless_requests_total{route=\"realtime\"")
                && l.contains("status=\"101\"")
                && l.ends_with(" 2")
        ),
        "both sessions counted under route=\"realtime\":\n{text}"
    );
}

#[tokio::test]
async fn the_deployments_style_names_api_version_and_deployment() {
    let (mock, mut sessions) = WsMock::handing().await;
    let proxy = proxy_with(&mock, |f| f.api = Some(ApiStyle::Deployments)).await;
    let _client = connect(&ws_url(&proxy.base, "/v1/realtime?model=gpt-realtime&x=1")).await;
    let (_upstream, seen) = accepted(&mut sessions).await;
    assert_eq!(
        seen.path_and_query,
        "/openai/realtime?api-version=2025-04-01-preview&deployment=rt-prod&x=1"
    );
    assert_eq!(seen.header("authorization"), "Bearer test-token-0");
}

#[tokio::test]
async fn azure_style_paths_pass_through_unchanged() {
    let (mock, mut sessions) = WsMock::handing().await;
    let proxy = proxy_with(&mock, |_| {}).await;
    for path in [
        "/openai/v1/realtime?model=rt-direct&z=1",
        "/openai/realtime?api-version=2025-04-01-preview&deployment=rt-dated",
    ] {
        let _client = connect(&ws_url(&proxy.base, path)).await;
        let (_upstream, seen) = accepted(&mut sessions).await;
        assert_eq!(seen.path_and_query, path);
        assert_eq!(seen.header("authorization"), "Bearer test-token-0");
    }
}

#[tokio::test]
async fn the_responses_websocket_mode_takes_the_same_relay() {
    let (mock, mut sessions) = WsMock::handing().await;
    let proxy = proxy_with(&mock, |_| {}).await;
    let mut client = connect(&ws_url(&proxy.base, "/v1/responses?x=1&api-key=k")).await;
    let (mut upstream, seen) = accepted(&mut sessions).await;
    assert_eq!(seen.path_and_query, "/openai/v1/responses?x=1");
    assert_eq!(seen.header("authorization"), "Bearer test-token-0");
    client
        .send(Message::text(r#"{"type":"response.create"}"#))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut upstream).await,
        Message::text(r#"{"type":"response.create"}"#)
    );
}

#[tokio::test]
async fn one_mib_binary_frames_text_and_pings_arrive_intact_both_ways() {
    let (mock, mut sessions) = WsMock::handing().await;
    let proxy = proxy_with(&mock, |_| {}).await;
    let mut client = connect(&ws_url(&proxy.base, "/v1/realtime?model=gpt-realtime")).await;
    let (mut upstream, _) = accepted(&mut sessions).await;
    let up: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let down: Vec<u8> = up.iter().rev().map(|b| b ^ 0x5a).collect();

    // Both ways at once: each side sends its megabyte while the other's is in flight.
    let (sent_up, sent_down) = tokio::join!(
        client.send(Message::binary(up.clone())),
        upstream.send(Message::binary(down.clone())),
    );
    sent_up.unwrap();
    sent_down.unwrap();
    assert_eq!(next_data(&mut upstream).await, Message::binary(up.clone()));
    assert_eq!(next_data(&mut client).await, Message::binary(down));
    let text = format!(
        "{{\"type\":\"input_audio_buffer.append\",\"audio\":\"{}\"}}",
        "QUJD".repeat(100_000)
    );
    client.send(Message::text(text.clone())).await.unwrap();
    assert_eq!(next_data(&mut upstream).await, Message::text(text));

    // A ping is relayed with its payload.
    client
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let ping = loop {
        match tokio::time::timeout(PATIENCE, upstream.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Ping(payload))) => break payload,
            Some(Ok(Message::Pong(_))) => continue,
            other => panic!("expected the ping, got {other:?}"),
        }
    };
    assert_eq!(&ping[..], b"are you there");
    upstream
        .send(Message::Ping(b"azure ping".to_vec().into()))
        .await
        .unwrap();
    let ping = loop {
        match tokio::time::timeout(PATIENCE, client.next()).await.unwrap() {
            Some(Ok(Message::Ping(payload))) => break payload,
            Some(Ok(Message::Pong(_))) => continue,
            other => panic!("expected the ping, got {other:?}"),
        }
    };
    assert_eq!(&ping[..], b"azure ping");
    drop(proxy);
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

/// Reads until a close frame (skipping anything else) and returns it.
async fn close_of<S>(socket: &mut S) -> Option<CloseFrame>
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("the close arrives")
        {
            Some(Ok(Message::Close(frame))) => return frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn close_codes_and_reasons_pass_both_ways() {
    let (mock, mut sessions) = WsMock::handing().await;
    let proxy = proxy_with(&mock, |_| {}).await;
    let url = ws_url(&proxy.base, "/v1/realtime?model=gpt-realtime");

    // The client closes.
    let mut client = connect(&url).await;
    let (mut upstream, _) = accepted(&mut sessions).await;
    client.send(close(4001, "client says bye")).await.unwrap();
    let frame = close_of(&mut upstream).await.expect("a code");
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (4001, "client says bye")
    );
    let echoed = close_of(&mut client).await.expect("a code");
    assert_eq!(u16::from(echoed.code), 4001);

    // Azure closes.
    let mut client = connect(&url).await;
    let (mut upstream, _) = accepted(&mut sessions).await;
    upstream
        .send(close(1011, "azure had a problem"))
        .await
        .unwrap();
    let frame = close_of(&mut client).await.expect("a code");
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (1011, "azure had a problem")
    );
    // The client's answer goes back, and Azure's socket is then closed.
    client.close(None).await.ok();
    let end = tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(_)) = upstream.next().await {}
    })
    .await;
    assert!(end.is_ok(), "Azure's socket ends");
    metrics_until(&proxy.base, "both sessions end", |t| metric(t, OPEN) == 0.0).await;
}

#[tokio::test]
async fn a_client_that_vanishes_closes_the_upstream_socket() {
    let (mock, mut sessions) = WsMock::handing().await;
    let proxy = proxy_with(&mock, |_| {}).await;
    let mut client = connect(&ws_url(&proxy.base, "/v1/realtime?model=gpt-realtime")).await;
    let (mut upstream, _) = accepted(&mut sessions).await;
    client.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_data(&mut upstream).await, Message::text("hello"));
    // No close frame: the TCP connection just goes.
    let tcp = client.into_inner();
    drop(tcp);
    let frame = close_of(&mut upstream).await.expect("a code");
    assert_eq!(u16::from(frame.code), 1001, "{frame:?}");
    assert!(frame.reason.contains("client went away"), "{frame:?}");
    metrics_until(&proxy.base, "the session ends", |t| metric(t, OPEN) == 0.0).await;
}

#[tokio::test]
async fn azure_vanishing_closes_the_client_with_1011() {
    let (mock, mut sessions) = WsMock::handing().await;
    let proxy = proxy_with(&mock, |_| {}).await;
    let mut client = connect(&ws_url(&proxy.base, "/v1/realtime?model=gpt-realtime")).await;
    let (upstream, _) = accepted(&mut sessions).await;
    drop(upstream.into_inner());
    let frame = close_of(&mut client).await.expect("a code");
    assert_eq!(u16::from(frame.code), 1011, "{frame:?}");
    assert_eq!(
        frame.reason.as_str(),
        "keyless: Azure's connection was lost"
    );
    metrics_until(&proxy.base, "the session ends", |t| metric(t, OPEN) == 0.0).await;
}

/// Tokens living `lifetime` from each acquisition, named `tok<n>`.
struct ShortLived {
    calls: AtomicUsize,
    lifetime: Duration,
}

impl Acquire for ShortLived {
    fn acquire<'a>(
        &'a self,
        _scope: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Token, AuthError>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(Token {
                secret: Secret::new(format!("tok{n}")),
                expires_at: SystemTime::now() + self.lifetime,
            })
        })
    }
    fn name(&self) -> String {
        "ShortLived".into()
    }
}

#[tokio::test]
async fn a_session_keeps_working_across_token_refreshes() {
    let (mock, mut sessions) = WsMock::handing().await;
    let identity = Arc::new(ShortLived {
        calls: AtomicUsize::new(0),
        lifetime: Duration::from_secs(3),
    });
    let mut f = flags();
    f.models.push(("gpt-realtime".into(), "rt-prod".into()));
    let proxy = Proxy::start(f, &mock.url, identity.clone()).await;
    let url = ws_url(&proxy.base, "/v1/realtime?model=gpt-realtime");
    let mut client = connect(&url).await;
    let (mut upstream, first) = accepted(&mut sessions).await;
    assert_eq!(first.header("authorization"), "Bearer tok0");

    // Frames keep flowing while the token is replaced (twice, so that the first one has
    // certainly expired).
    let deadline = Instant::now() + PATIENCE;
    let mut exchanged = 0;
    while identity.calls.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < deadline, "the token was never refreshed");
        client
            .send(Message::text(format!("frame {exchanged}")))
            .await
            .unwrap();
        assert_eq!(
            next_data(&mut upstream).await,
            Message::text(format!("frame {exchanged}"))
        );
        upstream
            .send(Message::text(format!("answer {exchanged}")))
            .await
            .unwrap();
        assert_eq!(
            next_data(&mut client).await,
            Message::text(format!("answer {exchanged}"))
        );
        exchanged += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
        .send(Message::text("after the refresh"))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut upstream).await,
        Message::text("after the refresh")
    );

    // A new session is signed with the new token.
    let _second = connect(&url).await;
    let (_upstream, second) = accepted(&mut sessions).await;
    assert_ne!(second.header("authorization"), "Bearer tok0");
    assert!(second.header("authorization").starts_with("Bearer tok"));
}

#[tokio::test]
async fn an_idle_session_is_closed_with_1001_on_both_sides() {
    let (mock, mut sessions) = WsMock::handing().await;
    let proxy = proxy_with(&mock, |f| {
        f.realtime_idle_timeout = Some(Duration::from_millis(500))
    })
    .await;
    let mut client = connect(&ws_url(&proxy.base, "/v1/realtime?model=gpt-realtime")).await;
    let (mut upstream, _) = accepted(&mut sessions).await;
    let (to_client, to_upstream) = tokio::join!(close_of(&mut client), close_of(&mut upstream));
    for frame in [to_client, to_upstream] {
        let frame = frame.expect("a code");
        assert_eq!(u16::from(frame.code), 1001);
        assert_eq!(frame.reason.as_str(), "keyless: idle timeout");
    }
}

#[tokio::test]
async fn a_session_past_its_maximum_length_is_closed_though_busy() {
    let mock = WsMock::echo().await;
    let proxy = proxy_with(&mock, |f| {
        f.realtime_max_session = Some(Duration::from_millis(800))
    })
    .await;
    let mut client = connect(&ws_url(&proxy.base, "/v1/realtime?model=gpt-realtime")).await;
    let deadline = Instant::now() + PATIENCE;
    let frame = loop {
        assert!(Instant::now() < deadline, "the session was never cut");
        if client.send(Message::text("busy")).await.is_err() {
            panic!("the socket failed before a close frame");
        }
        match tokio::time::timeout(PATIENCE, client.next()).await.unwrap() {
            Some(Ok(Message::Text(_))) => tokio::time::sleep(Duration::from_millis(50)).await,
            Some(Ok(Message::Close(frame))) => break frame.expect("a code"),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(u16::from(frame.code), 1001);
    assert_eq!(
        frame.reason.as_str(),
        "keyless: maximum session length reached"
    );
}

#[tokio::test]
async fn a_session_holds_its_deployments_concurrency_slot_until_it_ends() {
    let (mock, mut sessions) = WsMock::handing().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keyless.toml");
    std::fs::write(
        &config,
        "[limits.deployments.rt-prod]\nmax_concurrent = 1\n",
    )
    .unwrap();
    let proxy = proxy_with(&mock, |f| f.config = Some(config)).await;
    let url = ws_url(&proxy.base, "/v1/realtime?model=gpt-realtime");
    let mut first = connect(&url).await;
    let (mut upstream, _) = accepted(&mut sessions).await;
    // The slot is the first session's: a second is refused with keyless's 429.
    let err = connect_with(&url, &[]).await.expect_err("refused");
    let tungstenite::Error::Http(response) = err else {
        panic!("an HTTP answer, got {err:?}")
    };
    assert_eq!(response.status(), 429);
    let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
    assert!(body.contains("rate_limit_exceeded"), "{body}");
    // Once it ends, the slot is free again.
    first.close(None).await.unwrap();
    let _ = close_of(&mut upstream).await;
    metrics_until(&proxy.base, "the session ends", |t| metric(t, OPEN) == 0.0).await;
    let _second = connect(&url).await;
    let _ = accepted(&mut sessions).await;
    assert_eq!(
        mock.seen().len(),
        2,
        "the refused upgrade never reached Azure"
    );
}

#[tokio::test]
async fn azures_refusal_of_the_upgrade_reaches_the_client_as_it_came() {
    const BODY: &str = r#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist."}}"#;
    let mock = WsMock::refusing(404, BODY).await;
    let proxy = proxy_with(&mock, |_| {}).await;
    let err = connect_with(&ws_url(&proxy.base, "/v1/realtime?model=gpt-realtime"), &[])
        .await
        .expect_err("refused");
    let tungstenite::Error::Http(response) = err else {
        panic!("an HTTP answer, got {err:?}")
    };
    assert_eq!(response.status(), 404);
    let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
    assert_eq!(body, BODY);
    assert_eq!(mock.seen().len(), 1);
}

/// A raw HTTP/1.1 exchange: what keyless answers to `request`.
async fn raw(base: &str, request: &str) -> String {
    let mut tcp = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn bad_handshakes_get_openai_shaped_errors_and_reach_no_mock() {
    let (mock, _sessions) = WsMock::handing().await;
    let proxy = proxy_with(&mock, |_| {}).await;
    let base = proxy.base.clone();
    let no_key = "GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let old_version = "GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let post = "POST /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 0\r\n\r\n";
    let trick = "GET /v1/realtime?model=../../x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let dots = "GET /v1/%2e%2e/realtime?model=m HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    // Each request also asks for its connection to close once answered.
    let close = |r: &str| r.replacen("Host: x\r\n", "Host: x\r\nConnection: close\r\n", 1);
    for (request, status, code) in [
        (no_key, "400", "bad_request"),
        (old_version, "400", "bad_request"),
        (post, "405", "method_not_allowed"),
        (trick, "400", "invalid_model"),
        (dots, "400", "invalid_path"),
    ] {
        let answer = raw(&base, &close(request)).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{request:?} -> {answer}"
        );
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        let v: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
        assert_eq!(v["error"]["code"], code, "{answer}");
        assert!(v["error"]["message"].is_string() && v["error"]["type"].is_string());
    }
    assert!(mock.seen().is_empty(), "nothing reached the mock");
}

#[test]
fn sigterm_gives_sessions_the_grace_then_closes_them_with_1001() {
    // The real binary with the real signal, against its embedded simulator.
    let mut keyless = support::spawn_keyless(
        &[
            "--simulate",
            "--listen",
            "127.0.0.1:0",
            "--shutdown-grace",
            "10s",
        ],
        &[],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = connect(&ws_url(&keyless.url(), "/v1/realtime?model=gpt-realtime")).await;
        let created = next_data(&mut client).await;
        assert!(
            created.to_text().unwrap().contains("\"session.created\""),
            "{created:?}"
        );

        let signalled = Instant::now();
        keyless.terminate();
        // Within the grace the session still works: keyless no longer accepts new
        // connections, but this one relays on.
        client
            .send(Message::text(
                r#"{"type":"session.update","session":{"instructions":"still here"}}"#,
            ))
            .await
            .unwrap();
        let updated = next_data(&mut client).await;
        let updated = updated.to_text().unwrap();
        assert!(
            updated.contains("\"session.updated\"") && updated.contains("still here"),
            "{updated}"
        );

        // Then, at the end of the grace, a 1001.
        let frame = close_of(&mut client).await.expect("a code");
        assert_eq!(u16::from(frame.code), 1001, "{frame:?}");
        assert_eq!(frame.reason.as_str(), "keyless: shutting down");
        assert!(
            signalled.elapsed() >= Duration::from_secs(10),
            "the close came only after the grace, not {:?} after the signal",
            signalled.elapsed()
        );
    });
    let status = keyless
        .wait_exit(PATIENCE)
        .expect("keyless exits after the grace");
    assert!(status.success(), "{status:?}\n{}", keyless.report());
    let output = keyless.output();
    let line = output
        .lines()
        .find(|l| l.contains("realtime session"))
        .unwrap_or_else(|| panic!("one log line for the session:\n{output}"));
    for field in [
        "route=\"realtime\"",
        "close_code=1001",
        "closed_by=\"shutdown\"",
        "status=101",
        "duration_ms=",
        "bytes_from_client=",
        "bytes_to_client=",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
}

#[tokio::test]
async fn a_slow_reader_slows_its_writer_and_nothing_is_lost() {
    let (mock, mut sessions) = WsMock::handing().await;
    let proxy = proxy_with(&mock, |_| {}).await;
    let mut client = connect(&ws_url(&proxy.base, "/v1/realtime?model=gpt-realtime")).await;
    let (mut upstream, _) = accepted(&mut sessions).await;
    // Azure reads nothing: the client's sends must stall once the sockets' buffers are
    // full, not be taken into a queue in keyless. (A send that is merely slow also ends
    // the loop: that only makes the bound easier to meet, never a false failure.)
    let frame: bytes::Bytes = (0..1u32 << 20)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let mut sent = 0usize;
    loop {
        match tokio::time::timeout(
            Duration::from_secs(2),
            client.send(Message::binary(frame.clone())),
        )
        .await
        {
            Ok(Ok(())) => sent += 1,
            Ok(Err(e)) => panic!("the send failed: {e}"),
            Err(_) => break,
        }
        assert!(
            sent < 64,
            "keyless took {sent} MiB that Azure never read: an unbounded queue"
        );
    }
    assert!(sent > 0, "the sockets' buffers take at least a megabyte");
    // Azure reads again: every frame arrives, whole and in order, and the stalled send
    // completes.
    let read = async {
        for _ in 0..sent {
            match next_data(&mut upstream).await {
                Message::Binary(got) => assert!(got == frame, "a frame arrived changed"),
                other => panic!("expected a binary frame, got {other:?}"),
            }
        }
    };
    let (_, flushed) = tokio::join!(read, client.flush());
    flushed.unwrap();
}

#[test]
fn trace_logs_of_a_realtime_session_show_no_token_or_client_key() {
    const CLIENT_BEARER: &str = "sk-realtime-client-bearer-0123456789";
    const BROWSER_KEY: &str = "sk-realtime-browser-key-0123456789";
    let keyless = support::spawn_keyless(
        &["--simulate", "--listen", "127.0.0.1:0"],
        &[("KEYLESS_LOG", "trace")],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let bearer = format!("Bearer {CLIENT_BEARER}");
        let protocols = format!("realtime, openai-insecure-api-key.{BROWSER_KEY}");
        let (mut client, _) = connect_with(
            &ws_url(&keyless.url(), "/v1/realtime?model=gpt-realtime"),
            &[
                ("authorization", bearer.as_str()),
                ("sec-websocket-protocol", protocols.as_str()),
            ],
        )
        .await
        .expect("the upgrade succeeds");
        let created = next_data(&mut client).await;
        assert!(created.to_text().unwrap().contains("session.created"));
        client.close(None).await.unwrap();
        let _ = close_of(&mut client).await;
    });
    // The session's line is the last thing logged for it: once it is there, all is.
    let deadline = Instant::now() + PATIENCE;
    while !keyless.output().contains("realtime session") {
        assert!(
            Instant::now() < deadline,
            "no session line:\n{}",
            keyless.report()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = keyless.output();
    assert!(
        output.contains("TRACE") || output.contains("DEBUG"),
        "trace logging is on"
    );
    for secret in [CLIENT_BEARER, BROWSER_KEY] {
        assert!(
            !output.contains(secret),
            "{secret} is in the log:\n{output}"
        );
    }
    // The simulator's tokens are `sim.<32 hex>...`.
    let leaked = output.lines().find(|line| {
        line.match_indices("sim.").any(|(at, _)| {
            let rest = &line[at + 4..];
            rest.len() >= 32 && rest[..32].bytes().all(|b| b.is_ascii_hexdigit())
        })
    });
    assert!(leaked.is_none(), "an Entra token is in the log: {leaked:?}");
}

#[tokio::test]
async fn an_https_endpoint_is_reached_as_wss_with_the_ca_file_roots() {
    // A TLS WebSocket upstream whose certificate a CA made here signed, handed to keyless
    // by `ca_file`; it offers h2 first, as Azure does: the upgrade must still be HTTP/1.1.
    let support::tls::TestTls { ca_pem, acceptor } =
        support::tls::test_tls(&["localhost"], &[b"h2", b"http/1.1"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen_send, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        // The library's callback type returns its (large) error response by value.
        #[allow(clippy::result_large_err)]
        let callback = |request: &tungstenite::handshake::server::Request,
                        response: tungstenite::handshake::server::Response| {
            let auth = request.headers().get("authorization").cloned();
            let _ = seen_send.send((request.uri().to_string(), auth, alpn));
            Ok(response)
        };
        let mut socket = tokio_tungstenite::accept_hdr_async(tls, callback)
            .await
            .unwrap();
        while let Some(Ok(message)) = socket.next().await {
            if message.is_text() {
                socket.send(message).await.unwrap();
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let mut f = flags();
    f.ca_file = Some(ca_file);
    f.models.push(("gpt-realtime".into(), "rt-prod".into()));
    let upstream = url::Url::parse(&format!("https://localhost:{port}")).unwrap();
    let proxy = Proxy::start(f, &upstream, TestIdentity::ok()).await;
    let mut client = connect(&ws_url(&proxy.base, "/v1/realtime?model=gpt-realtime")).await;
    let (uri, auth, alpn) = tokio::time::timeout(PATIENCE, seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(uri, "/openai/v1/realtime?model=rt-prod");
    assert_eq!(auth.unwrap(), "Bearer test-token-0");
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]), "HTTP/1.1 over TLS");
    client.send(Message::text("over tls")).await.unwrap();
    assert_eq!(next_data(&mut client).await, Message::text("over tls"));
}

/// A shared gateway (issue 12) checks the app key, its allowlist and its quota at the
/// upgrade; the key never reaches Azure.
#[tokio::test]
async fn app_keys_are_checked_at_the_upgrade() {
    use std::io::Write as _;
    let (mock, mut sessions) = WsMock::handing().await;
    let key = "sk-voice-app-7c1e";
    let mut config = tempfile::NamedTempFile::new().unwrap();
    write!(
        config,
        "[[apps]]\nname = \"voice\"\nkey_sha256 = \"{}\"\nmodels = [\"gpt-realtime\"]\nrpm = 1\n",
        keyless::apps::sha256_hex(key.as_bytes())
    )
    .unwrap();
    let path = config.path().to_path_buf();
    let proxy = proxy_with(&mock, |f| f.config = Some(path)).await;
    let url = ws_url(&proxy.base, "/v1/realtime?model=gpt-realtime");
    let status = |result: Result<_, tungstenite::Error>| match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("{e}"),
        Ok(_) => 101,
    };
    assert_eq!(status(connect_with(&url, &[]).await), 401, "no key");
    assert_eq!(
        status(connect_with(&url, &[("api-key", "sk-someone-else")]).await),
        401
    );
    let other = ws_url(&proxy.base, "/v1/realtime?model=gpt-4o-realtime");
    assert_eq!(
        status(connect_with(&other, &[("api-key", key)]).await),
        403,
        "a model outside the allowlist"
    );
    let bearer = format!("Bearer {key}");
    let (_client, _) = connect_with(&url, &[("authorization", bearer.as_str())])
        .await
        .expect("the app's key opens a session");
    let (_upstream, seen) = accepted(&mut sessions).await;
    assert_eq!(seen.header("authorization"), "Bearer test-token-0");
    assert!(
        !format!("{seen:?}").contains(key),
        "the key stays in keyless"
    );
    assert_eq!(
        status(connect_with(&url, &[("api-key", key)]).await),
        429,
        "one session a minute"
    );
}
