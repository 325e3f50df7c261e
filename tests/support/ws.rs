//! A WebSocket mock of Azure's realtime endpoint (tokio-tungstenite): records every upgrade
//! it accepts and hands each session to the test, or echoes, or refuses the upgrade.

use http::HeaderMap;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

/// The upstream side of one relayed session.
pub type Upstream = WebSocketStream<TcpStream>;

/// What the mock saw of one upgrade.
#[derive(Clone, Debug)]
pub struct Handshake {
    pub path_and_query: String,
    pub headers: HeaderMap,
}

impl Handshake {
    /// A header's value as text, or "" when absent.
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    }
}

/// How the mock answers an upgrade.
#[derive(Clone)]
enum Mode {
    /// Accept, and send the session to the test.
    Hand(mpsc::UnboundedSender<(Upstream, Handshake)>),
    /// Accept and echo every data frame; answer a close with the same close.
    Echo,
    /// Refuse with this status and JSON body.
    Refuse(u16, &'static str),
}

/// The mock, on 127.0.0.1; stops accepting when dropped.
pub struct WsMock {
    /// `http://127.0.0.1:PORT`: the endpoint keyless is given.
    pub url: url::Url,
    seen: Arc<Mutex<Vec<Handshake>>>,
    stop: CancellationToken,
}

impl Drop for WsMock {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl WsMock {
    /// A mock that hands every accepted session, with its handshake, to the receiver.
    pub async fn handing() -> (WsMock, mpsc::UnboundedReceiver<(Upstream, Handshake)>) {
        let (send, receive) = mpsc::unbounded_channel();
        (Self::start(Mode::Hand(send)).await, receive)
    }

    /// A mock that echoes.
    pub async fn echo() -> WsMock {
        Self::start(Mode::Echo).await
    }

    /// A mock that refuses every upgrade with `status` and `body` (JSON).
    pub async fn refusing(status: u16, body: &'static str) -> WsMock {
        Self::start(Mode::Refuse(status, body)).await
    }

    /// Every upgrade seen so far, refused ones included.
    pub fn seen(&self) -> Vec<Handshake> {
        self.seen.lock().unwrap().clone()
    }

    async fn start(mode: Mode) -> WsMock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = url::Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let seen: Arc<Mutex<Vec<Handshake>>> = Arc::default();
        let stop = CancellationToken::new();
        let (s, st) = (seen.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = st.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                let (seen, mode) = (s.clone(), mode.clone());
                tokio::spawn(async move { session(stream, seen, mode).await });
            }
        });
        WsMock { url, seen, stop }
    }
}

async fn session(stream: TcpStream, seen: Arc<Mutex<Vec<Handshake>>>, mode: Mode) {
    let recorded: Arc<Mutex<Option<Handshake>>> = Arc::default();
    let r = recorded.clone();
    let refuse = match &mode {
        Mode::Refuse(status, body) => Some((*status, *body)),
        _ => None,
    };
    // The library's callback type returns its (large) error response by value.
    #[allow(clippy::result_large_err)]
    let callback = move |request: &Request, mut response: Response| {
        let handshake = Handshake {
            path_and_query: request
                .uri()
                .path_and_query()
                .map_or_else(String::new, |pq| pq.to_string()),
            headers: request.headers().clone(),
        };
        seen.lock().unwrap().push(handshake.clone());
        *r.lock().unwrap() = Some(handshake);
        if let Some((status, body)) = refuse {
            let mut refused = ErrorResponse::new(Some(body.to_owned()));
            *refused.status_mut() = http::StatusCode::from_u16(status).unwrap();
            refused
                .headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            return Err(refused);
        }
        // Azure picks `realtime` when it is offered.
        let offered = request
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|p| p.trim() == "realtime"));
        if offered {
            response
                .headers_mut()
                .insert("sec-websocket-protocol", "realtime".parse().unwrap());
        }
        response
            .headers_mut()
            .insert("apim-request-id", "mock-apim-id".parse().unwrap());
        Ok(response)
    };
    let config = WebSocketConfig::default().max_message_size(Some(64 << 20));
    let Ok(mut socket) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await
    else {
        return;
    };
    let handshake = recorded.lock().unwrap().take().unwrap();
    match mode {
        Mode::Hand(hand) => {
            let _ = hand.send((socket, handshake));
        }
        Mode::Echo => {
            use futures_util::{SinkExt, StreamExt};
            while let Some(Ok(message)) = socket.next().await {
                if message.is_close() {
                    // The library answers the close itself.
                    let _ = socket.close(None).await;
                    return;
                }
                let data = message.is_text() || message.is_binary();
                if data && socket.send(message).await.is_err() {
                    return;
                }
            }
        }
        Mode::Refuse(..) => {}
    }
}
