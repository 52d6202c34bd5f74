//! Subscriptions over HTTP: WebSocket at `/graphql` with the `graphql-transport-ws` protocol,
//! and server-sent events in the `graphql-sse` protocol's distinct-connections mode (a POST to
//! `/graphql` that accepts `text/event-stream`).
//!
//! Both authenticate as every request does (`auth`): the WebSocket by its `connection_init`
//! payload (`{"Authorization": "Bearer …"}`) or its upgrade request's header, closing with
//! 4401 without one that is usable; SSE by its header, answering 401 before any work. Both
//! keep idle connections alive (WebSocket pings, SSE comments), and end their streams with the
//! protocol's own ending when the gateway shuts down (close 1001; a `complete` event).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_graphql::Data;
use async_graphql::http::{WebSocket as GraphQLWebSocket, WebSocketProtocols, WsMessage};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};

use super::AppState;
use super::request::{self, Rejection};
use crate::graphql::{self, RequestContext};

/// Idle connections hear from the gateway this often, so that proxies keep them open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// A client that has not sent `connection_init` by then is closed (4408, as the protocol says).
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest message a client may send over the WebSocket: a subscribe with its document.
const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Whether a GET to `/graphql` asks for a WebSocket.
pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Whether a POST to `/graphql` asks for server-sent events: `text/event-stream` is what its
/// `Accept` prefers (highest q, then first listed). Clients such as urql list it among others
/// on every query, and those want JSON.
pub(super) fn wants_event_stream(headers: &HeaderMap) -> bool {
    let mut best: Option<(f32, bool)> = None;
    for range in headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if best.is_none_or(|(top, _)| q > top) {
            best = Some((q, media.eq_ignore_ascii_case("text/event-stream")));
        }
    }
    best.is_some_and(|(q, sse)| sse && q > 0.0)
}

pub(super) fn websocket(
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
            serve_websocket(state, socket, authorization).await;
            drop(permit);
        })
}

async fn serve_websocket(state: AppState, socket: WebSocket, header: Option<HeaderValue>) {
    let (mut sink, stream) = socket.split();
    let input = stream
        .take_while(|message| futures::future::ready(message.is_ok()))
        .filter_map(|message| {
            futures::future::ready(match message {
                Ok(Message::Text(text)) => Some(Bytes::from(text.to_string()).to_vec()),
                Ok(Message::Binary(bytes)) => Some(bytes.to_vec()),
                _ => None,
            })
        });
    let refused = Arc::new(AtomicBool::new(false));
    let init = {
        let (state, refused) = (state.clone(), refused.clone());
        move |payload: serde_json::Value| async move {
            let result = connection_data(&state, &payload, header.as_ref()).await;
            if result.is_err() {
                refused.store(true, Ordering::SeqCst);
            }
            result
        }
    };
    let messages = GraphQLWebSocket::new(
        state.components.schema.clone(),
        input,
        WebSocketProtocols::GraphQLWS,
    )
    .on_connection_init(init)
    .map(move |message| match message {
        WsMessage::Text(text) => Message::Text(text.into()),
        // async-graphql closes a refused `connection_init` with 1002; the protocol (and the
        // clients) know 4401 for "unauthorized".
        WsMessage::Close(code, reason) => {
            let code = if code == 1002 && refused.load(Ordering::SeqCst) {
                4401
            } else {
                code
            };
            Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }))
        }
    });
    futures::pin_mut!(messages);
    let mut closing = state.closing.clone();
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.tick().await;
    let init_deadline = tokio::time::sleep(INIT_TIMEOUT);
    tokio::pin!(init_deadline);
    let mut initialised = false;
    loop {
        let message = tokio::select! {
            message = messages.next() => match message {
                Some(message) => message,
                None => break,
            },
            _ = keep_alive.tick() => Message::Ping(Bytes::new()),
            () = &mut init_deadline, if !initialised => Message::Close(Some(CloseFrame {
                code: 4408,
                reason: "connection initialisation timeout".into(),
            })),
            _ = closing.wait_for(|closing| *closing) => Message::Close(Some(CloseFrame {
                code: 1001,
                reason: "the gateway is shutting down".into(),
            })),
        };
        if let Message::Text(text) = &message
            && text.contains("\"connection_ack\"")
        {
            initialised = true;
        }
        let last = matches!(message, Message::Close(_));
        if sink.send(message).await.is_err() || last {
            break;
        }
    }
    let _ = sink.close().await;
}

/// The connection's credentials, from `connection_init`'s `Authorization` (any case) or else
/// the upgrade request's header, as the data every subscription on it runs with.
async fn connection_data(
    state: &AppState,
    payload: &serde_json::Value,
    header: Option<&HeaderValue>,
) -> async_graphql::Result<Data> {
    let from_payload = payload.as_object().and_then(|fields| {
        fields
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
            .and_then(|(_, value)| value.as_str())
    });
    let authorization = from_payload
        .map(str::as_bytes)
        .or_else(|| header.map(HeaderValue::as_bytes));
    let credentials = state
        .components
        .auth
        .credentials(authorization)
        .map_err(|e| async_graphql::Error::new(e.to_string()))?;
    verified(state, &credentials)
        .await
        .map_err(async_graphql::Error::new)?;
    let mut data = Data::default();
    data.insert(request_context(state, Ok(credentials)));
    Ok(data)
}

/// A subscription holds a connection and a place in the hub for as long as it lasts, so only a
/// credential amoCRM has accepted may open one: a forwarded token not yet seen is tried with
/// one small call first (in the shared probation lane of unverified tokens).
async fn verified(state: &AppState, credentials: &crate::auth::Credentials) -> Result<(), String> {
    use crate::amocrm::{ContactList, ContactsQuery, PageSize, Priority, Relations};
    let forwarded = matches!(&*state.components.auth, crate::auth::AuthMode::Forward(_));
    if !forwarded || state.components.upstream.has_accepted(&credentials.token) {
        return Ok(());
    }
    let query = ContactsQuery {
        list: ContactList::default(),
        page: 1,
        limit: PageSize::new(1).unwrap_or(PageSize::MAX),
        relations: Relations::default(),
    };
    match state
        .components
        .upstream
        .contacts(&credentials.token, &query, Priority::Foreground)
        .await
    {
        Ok(_) => Ok(()),
        Err(error) => Err(format!("amoCRM did not accept this token: {error}")),
    }
}

fn request_context(
    state: &AppState,
    credentials: Result<crate::auth::Credentials, crate::auth::AuthError>,
) -> RequestContext {
    RequestContext::new(
        credentials,
        state.components.caches.pages.clone(),
        state.components.caches.entities.clone(),
        state.components.page_size,
    )
}

/// A POST that accepts `text/event-stream`: the operation's results as `next` events, then
/// `complete`.
pub(super) async fn event_stream(state: AppState, headers: HeaderMap, body: Bytes) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let credentials = match state.components.auth.credentials(authorization) {
        Ok(credentials) => credentials,
        Err(error) => {
            let error = graphql::refusal(graphql::UNAUTHENTICATED, error.to_string());
            return json_errors(StatusCode::UNAUTHORIZED, error);
        }
    };
    if let Err(why) = verified(&state, &credentials).await {
        let error = graphql::refusal(graphql::UNAUTHENTICATED, why);
        return json_errors(StatusCode::UNAUTHORIZED, error);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let request = request::from_post(content_type, &body).and_then(|request| {
        request::check_document(&request.query, state.max_document_bytes)?;
        Ok(request)
    });
    let mut request = match request {
        Ok(request) => request,
        Err(rejection) => return json_errors(rejection.status(), refusal(&rejection)),
    };
    // Persisted queries (and `--persisted-only`) hold here as for any request.
    if let Err(error) = state.components.persisted.resolve(&mut request).await {
        return json_errors(StatusCode::BAD_REQUEST, error);
    }
    if let Err(rejection) = request::check_document(&request.query, state.max_document_bytes) {
        return json_errors(rejection.status(), refusal(&rejection));
    }
    let context = request_context(&state, Ok(credentials));
    let results = state
        .components
        .schema
        .execute_stream(request.data(context))
        .map(|response| {
            let data = serde_json::to_string(&response).unwrap_or_else(|_| "{}".to_owned());
            Ok::<_, std::convert::Infallible>(Event::default().event("next").data(data))
        });
    let mut closing = state.closing.clone();
    let until_closing = async move {
        let _ = closing.wait_for(|closing| *closing).await;
    };
    let complete = futures::stream::once(async {
        Ok::<_, std::convert::Infallible>(Event::default().event("complete").data(""))
    });
    let events = results.take_until(until_closing).chain(complete);
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

fn refusal(rejection: &Rejection) -> async_graphql::ServerError {
    graphql::refusal(graphql::BAD_REQUEST, rejection.to_string())
}

fn json_errors(status: StatusCode, error: async_graphql::ServerError) -> Response {
    let body = serde_json::json!({ "errors": [error] });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
