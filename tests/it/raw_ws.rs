//! A `graphql-transport-ws` client at the frame level (tokio-tungstenite), for what the npm
//! client never does: send out of order, reuse ids, stop reading, watch pings.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{WebSocketStream, client_async};

pub struct RawWs {
    ws: WebSocketStream<TcpStream>,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// A close frame with this code.
    Closed(u16),
    /// The TCP connection ended (or was reset) with no close frame.
    Dropped,
}

impl RawWs {
    /// Opens `/graphql` at `addr` offering `graphql-transport-ws`; with `receive_buffer`, the
    /// client's socket takes no more than about that many bytes until it is read.
    pub async fn connect(addr: std::net::SocketAddr, receive_buffer: Option<u32>) -> RawWs {
        let socket = TcpSocket::new_v4().expect("a socket");
        if let Some(bytes) = receive_buffer {
            socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        }
        let stream = socket.connect(addr).await.expect("connects");
        let mut request = format!("ws://{addr}/graphql")
            .into_client_request()
            .expect("a request");
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().expect("a header"),
        );
        let (ws, _) = client_async(request, stream).await.expect("upgrades");
        RawWs { ws }
    }

    pub async fn send(&mut self, message: Value) {
        use futures::SinkExt;
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .expect("sends");
    }

    /// `connection_init` (with `payload`), then the acknowledgement.
    pub async fn init(&mut self, payload: Value) {
        self.send(json!({ "type": "connection_init", "payload": payload }))
            .await;
        let ack = self.next_json(Duration::from_secs(10)).await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
    }

    /// The next frame, whatever it is; None when nothing came within `within` or it ended.
    pub async fn frame(&mut self, within: Duration) -> Option<Result<Message, String>> {
        use futures::StreamExt;
        tokio::time::timeout(within, self.ws.next())
            .await
            .ok()
            .flatten()
            .map(|m| m.map_err(|e| e.to_string()))
    }

    /// The next protocol message (text frames; pings and pongs are skipped).
    pub async fn next_json(&mut self, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.frame(left).await {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(&text).expect("JSON messages");
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// Reads (and drops) everything until the connection ends, within `within`.
    pub async fn ended(&mut self, within: Duration) -> Option<Ended> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.frame(left).await {
                Some(Ok(Message::Close(frame))) => {
                    return Some(Ended::Closed(frame.map_or(1005, |f| u16::from(f.code))));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) => return Some(Ended::Dropped),
                None if tokio::time::Instant::now() >= deadline => return None,
                None => return Some(Ended::Dropped),
            }
        }
    }
}
