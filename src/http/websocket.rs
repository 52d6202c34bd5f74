//! Subscriptions over WebSocket at `/graphql`, in the `graphql-transport-ws` protocol.
//!
//! async-graphql speaks the protocol; this file puts the gateway's rules around it:
//! - credentials from `connection_init`'s payload or the upgrade request's header, checked as
//!   every request is (closed with 4401 without usable ones, 4408 without `connection_init`
//!   in time);
//! - each `subscribe` held to the same rules as a POST before async-graphql sees it: the
//!   document's size bound, persisted queries and `--persisted-only` (refused with an `error`
//!   message for that operation); a `subscribe` before the acknowledgement closes 4401 and a
//!   second one with an id in use closes 4409, as the protocol says;
//! - liveness: a ping every `--live-keep-alive`; a client that sends nothing back (not even the
//!   pong) for two intervals, or does not take a message within one, is disconnected, so a
//!   slow or vanished consumer holds no more than one message and its socket buffers;
//! - shutdown: close 1001.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_graphql::http::{WebSocket as GraphQLWebSocket, WebSocketProtocols, WsMessage};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;

use super::AppState;
use super::live::{connection_data, refusal};
use super::request;
use crate::auth::Credentials;

/// A client that has not sent `connection_init` by then is closed (4408, as the protocol says).
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest message a client may send over the WebSocket: a subscribe with its document.
const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Operations running at once on one connection: its subscriptions (at most
/// `live::MAX_SUBSCRIPTIONS_PER_CONNECTION`) and queries. Each holds a request context.
const MAX_OPERATIONS: usize = 2 * crate::live::MAX_SUBSCRIPTIONS_PER_CONNECTION;
/// Keep-alive intervals a client may stay silent before it is taken for gone.
const SILENT_INTERVALS: u32 = 2;
/// A close frame that cannot be written within this goes unsent: the peer is not reading.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether a GET to `/graphql` asks for a WebSocket.
pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

pub(super) fn upgrade(
    state: AppState,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
    permit: Option<super::ConnectionPermit>,
) -> Response {
    let offered = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if !offered
        .split(',')
        .any(|p| p.trim() == "graphql-transport-ws")
    {
        return (
            StatusCode::BAD_REQUEST,
            "the WebSocket at /graphql speaks the graphql-transport-ws protocol: offer it in \
             Sec-WebSocket-Protocol",
        )
            .into_response();
    }
    let authorization = headers.get(header::AUTHORIZATION).cloned();
    upgrade
        .protocols(["graphql-transport-ws"])
        .max_message_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| async move {
            serve(state, socket, authorization).await;
            drop(permit);
        })
}

/// What the gateway knows of one connection's protocol state, between the client's messages
/// and async-graphql's.
#[derive(Default)]
struct Session {
    /// `connection_init` arrived: the 4408 deadline no longer runs (its credentials may take
    /// a call to amoCRM to verify).
    initialising: bool,
    acknowledged: bool,
    /// Whose connection it is, once acknowledged: documents it sends with their hash are
    /// stored as persisted queries of its scope.
    credentials: Option<Credentials>,
    /// Operations running: a `subscribe` reusing one of these ids closes the connection.
    running: HashSet<String>,
}

type Shared<T> = Arc<Mutex<T>>;

fn lock(session: &Shared<Session>) -> std::sync::MutexGuard<'_, Session> {
    session.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn serve(state: AppState, socket: WebSocket, header: Option<HeaderValue>) {
    let (mut sink, stream) = socket.split();
    let session: Shared<Session> = Arc::default();
    let heard = Arc::new(AtomicBool::new(false));
    // What the gateway answers itself (a refused `subscribe`, a protocol close), beside what
    // async-graphql answers; bounded, so a client flooding refusals waits for its own reads.
    let (answers, mut own_answers) = mpsc::channel::<Message>(8);
    // The socket is read in a task of its own, so that pongs are heard even while
    // async-graphql reads nothing (verifying credentials, resolving a persisted query).
    let (received, mut from_client) = mpsc::channel::<Bytes>(16);
    let reader = {
        let heard = heard.clone();
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(Ok(message)) = stream.next().await {
                // Anything from the client, a pong included, shows that it is there and
                // reading.
                heard.store(true, Ordering::Relaxed);
                let bytes = match message {
                    Message::Text(text) => Bytes::from(text),
                    Message::Binary(bytes) => bytes,
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                if received.send(bytes).await.is_err() {
                    break;
                }
            }
        })
    };
    let input = {
        let (state, session) = (state.clone(), session.clone());
        futures::stream::poll_fn(move |cx| from_client.poll_recv(cx)).filter_map(move |bytes| {
            let (state, session, answers) = (state.clone(), session.clone(), answers.clone());
            async move { admit(&state, &session, &answers, bytes).await }
        })
    };
    let refused = Arc::new(AtomicBool::new(false));
    let init = {
        let (state, refused, session) = (state.clone(), refused.clone(), session.clone());
        move |payload: Value| async move {
            match connection_data(&state, &payload, header.as_ref()).await {
                Ok((data, credentials)) => {
                    lock(&session).credentials = Some(credentials);
                    Ok(data)
                }
                Err(error) => {
                    refused.store(true, Ordering::SeqCst);
                    Err(error)
                }
            }
        }
    };
    let messages = {
        let session = session.clone();
        GraphQLWebSocket::new(
            state.components.schema.clone(),
            input,
            WebSocketProtocols::GraphQLWS,
        )
        .on_connection_init(init)
        .map(move |message| match message {
            WsMessage::Text(text) => {
                observe(&session, &text);
                Message::Text(text.into())
            }
            // async-graphql closes a refused `connection_init` and an unreadable message
            // alike with 1002; the protocol (and its clients) know 4401 and 4400.
            WsMessage::Close(code, reason) => {
                let code = match code {
                    1002 if refused.load(Ordering::SeqCst) => 4401,
                    1002 => 4400,
                    code => code,
                };
                close(code, reason)
            }
        })
    };
    futures::pin_mut!(messages);
    let mut closing = state.closing.clone();
    let keep_alive = state.keep_alive;
    let mut ticks = tokio::time::interval(keep_alive);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut silent = 0;
    let init_deadline = tokio::time::sleep(INIT_TIMEOUT);
    tokio::pin!(init_deadline);
    loop {
        let initialising = lock(&session).initialising;
        let message = tokio::select! {
            message = messages.next() => match message {
                Some(message) => message,
                None => break,
            },
            Some(answer) = own_answers.recv() => answer,
            _ = ticks.tick() => {
                silent = if heard.swap(false, Ordering::Relaxed) { 0 } else { silent + 1 };
                if silent >= SILENT_INTERVALS {
                    close(1013, "the client stopped answering")
                } else {
                    Message::Ping(Bytes::new())
                }
            }
            () = &mut init_deadline, if !initialising => {
                close(4408, "Connection initialisation timeout")
            }
            _ = closing.wait_for(|closing| *closing) => {
                close(1001, "the gateway is shutting down")
            }
        };
        let last = matches!(message, Message::Close(_));
        if silent >= SILENT_INTERVALS {
            state.components.metrics.live_disconnect("silent");
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(message)).await;
            break;
        }
        match tokio::time::timeout(keep_alive, sink.send(message)).await {
            Ok(Ok(())) if !last => {}
            Ok(_) => break,
            // Not taking a message for a whole interval: a slow consumer, cut off before what
            // it has not read piles up (its subscriptions' backlogs are bounded by the hub).
            Err(_) => {
                state.components.metrics.live_disconnect("slow");
                reader.abort();
                return;
            }
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
    reader.abort();
}

fn close(code: u16, reason: impl Into<String>) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into().into(),
    }))
}

/// Notes what async-graphql told the client: the acknowledgement, and operations ended (it
/// sends no `error` messages; the gateway's own never pass here).
fn observe(session: &Shared<Session>, text: &str) {
    // async-graphql writes `type` first; only these few messages are read further.
    if text.starts_with(r#"{"type":"connection_ack""#) {
        lock(session).acknowledged = true;
    } else if text.starts_with(r#"{"type":"complete""#)
        && let Ok(ended) = serde_json::from_str::<Envelope>(text)
        && let Some(id) = ended.id
    {
        lock(session).running.remove(&id);
    }
}

#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
    payload: Option<Value>,
}

/// A client message on its way to async-graphql: a `subscribe` is held to the gateway's
/// rules first (answered here, and not passed on, when it breaks one); the rest pass as sent.
async fn admit(
    state: &AppState,
    session: &Shared<Session>,
    answers: &mpsc::Sender<Message>,
    bytes: Bytes,
) -> Option<Vec<u8>> {
    let envelope = match serde_json::from_slice::<Envelope>(&bytes) {
        Ok(envelope) => envelope,
        Err(error) => {
            let why = format!("Invalid message received: {error}");
            let _ = answers.send(close(4400, why)).await;
            return None;
        }
    };
    match envelope.kind.as_str() {
        "subscribe" => {}
        "connection_init" => {
            lock(session).initialising = true;
            return Some(bytes.to_vec());
        }
        "complete" => {
            if let Some(id) = &envelope.id {
                lock(session).running.remove(id);
            }
            return Some(bytes.to_vec());
        }
        "ping" | "pong" => return Some(bytes.to_vec()),
        // async-graphql also reads the older protocol's `start`, `stop` and
        // `connection_terminate`: none is graphql-transport-ws, and `start` would run a
        // document past every check below.
        other => {
            let why = format!("Invalid message received: unknown type `{other}`");
            let _ = answers.send(close(4400, why)).await;
            return None;
        }
    }
    let (Some(id), Some(payload)) = (envelope.id, envelope.payload) else {
        let why = "Invalid message received: a subscribe needs an id and a payload";
        let _ = answers.send(close(4400, why)).await;
        return None;
    };
    let refusal = {
        let mut session = lock(session);
        if !session.acknowledged {
            Err(close(4401, "Unauthorized"))
        } else if session.running.contains(&id) {
            Err(close(4409, format!("Subscriber for {id} already exists")))
        } else if session.running.len() >= MAX_OPERATIONS {
            Ok(Some(crate::graphql::refusal(
                crate::graphql::TOO_MANY_SUBSCRIPTIONS,
                format!(
                    "this connection runs its maximum of {MAX_OPERATIONS} operations at once: \
                     open another, or wait for one to complete"
                ),
            )))
        } else {
            session.running.insert(id.clone());
            Ok(None)
        }
    };
    match refusal {
        Err(close) => {
            let _ = answers.send(close).await;
            return None;
        }
        Ok(Some(error)) => {
            let message = serde_json::json!({ "id": id, "type": "error", "payload": [error] });
            let _ = answers
                .send(Message::Text(message.to_string().into()))
                .await;
            return None;
        }
        Ok(None) => {}
    }
    let credentials = lock(session).credentials.clone();
    match checked(state, credentials.as_ref(), payload).await {
        Ok(payload) => {
            let message = serde_json::json!({ "id": id, "type": "subscribe", "payload": payload });
            Some(message.to_string().into_bytes())
        }
        Err(error) => {
            lock(session).running.remove(&id);
            let message = serde_json::json!({ "id": id, "type": "error", "payload": [error] });
            let _ = answers
                .send(Message::Text(message.to_string().into()))
                .await;
            None
        }
    }
}

/// A `subscribe` payload under the rules a POST is held to: its shape, the document's size,
/// persisted queries. Returns the payload to run (with the persisted document put in).
async fn checked(
    state: &AppState,
    credentials: Option<&Credentials>,
    mut payload: Value,
) -> Result<Value, async_graphql::ServerError> {
    let body = payload.to_string();
    let mut request = request::from_post(Some("application/json"), body.as_bytes())
        .map_err(|rejection| refusal(&rejection))?;
    let by_hash = request.query.is_empty();
    let registration = super::document::admit(
        &state.components.persisted,
        state.max_document_bytes,
        &mut request,
    )
    .await
    .map_err(|refused| match refused {
        super::document::Refused::Rejected(rejection) => refusal(&rejection),
        super::document::Refused::Persisted(error) => error,
    })?;
    // A verified connection (it was acknowledged) stores what it sends with its hash, as a
    // POST would.
    if let (Some(registration), Some(credentials)) = (registration, credentials) {
        state
            .components
            .persisted
            .register(registration, &credentials.scope, credentials.token.lane())
            .await;
    }
    if by_hash && let Some(fields) = payload.as_object_mut() {
        fields.insert("query".to_owned(), Value::String(request.query));
    }
    Ok(payload)
}
