//! Subscriptions over server-sent events, in the `graphql-sse` protocol's distinct-connections
//! mode (a POST to `/graphql` that prefers `text/event-stream`), and what both subscription
//! transports share with `websocket`: who may subscribe, and the context they run with.
//!
//! SSE authenticates by its header as every request does (`auth`), answering 401 before any
//! work; keeps idle connections alive with comments every `--live-keep-alive`; and ends its
//! stream with a `complete` event when the gateway shuts down.

use async_graphql::Data;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;

use super::AppState;
use super::request::{self, Rejection};
use crate::graphql::{self, ConnectionContext, RequestContext};

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

/// The connection's credentials, from `connection_init`'s `Authorization` (any case) or else
/// the upgrade request's header, as the data every subscription on it runs with.
pub(super) async fn connection_data(
    state: &AppState,
    payload: &serde_json::Value,
    header: Option<&HeaderValue>,
) -> async_graphql::Result<(Data, crate::auth::Credentials)> {
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
    data.insert(ConnectionContext::new(
        credentials.clone(),
        state.components.caches.pages.clone(),
        state.components.caches.entities.clone(),
        state.components.page_size,
    ));
    Ok((data, credentials))
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
    let mut request = match request::from_post(content_type, &body) {
        Ok(request) => request,
        Err(rejection) => return json_errors(rejection.status(), refusal(&rejection)),
    };
    // Persisted queries (and `--persisted-only`) hold here as for any request.
    let registration = match super::document::admit(
        &state.components.persisted,
        state.max_document_bytes,
        &mut request,
    )
    .await
    {
        Ok(registration) => registration,
        Err(super::document::Refused::Rejected(rejection)) => {
            return json_errors(rejection.status(), refusal(&rejection));
        }
        Err(super::document::Refused::Persisted(error)) => {
            return json_errors(StatusCode::BAD_REQUEST, error);
        }
    };
    // A verified caller (see above) stores what it sends with its hash, as a POST would.
    if let Some(registration) = registration {
        state
            .components
            .persisted
            .register(registration, &credentials.scope, credentials.token.lane())
            .await;
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
        .keep_alive(KeepAlive::new().interval(state.keep_alive))
        .into_response()
}

pub(super) fn refusal(rejection: &Rejection) -> async_graphql::ServerError {
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
