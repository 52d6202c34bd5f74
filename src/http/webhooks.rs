//! `POST /webhooks/amocrm/{secret}`: amoCRM's webhooks drop what their events make stale.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;

use super::AppState;
use crate::amocrm::webhook;
use crate::cache::Invalidation;
use crate::live;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/webhooks/amocrm/{secret}", post(amocrm_webhook))
}

/// Answers 200 at once, also for events the gateway does not use, because amoCRM retries
/// anything else.
async fn amocrm_webhook(
    State(state): State<AppState>,
    Path(secret): Path<String>,
    body: Bytes,
) -> Response {
    let components = &state.components;
    if !components
        .webhook_secret
        .as_ref()
        .is_some_and(|expected| expected.matches(&secret))
    {
        return StatusCode::NOT_FOUND.into_response();
    }
    let events = match webhook::parse(&body) {
        Ok(events) => events,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    // Subscribers first: the hub gathers this with the other webhooks arriving now (the caches'
    // batching below would spread a burst over two windows), and tells them once the caches
    // have dropped what the changes void.
    components.live.changed(live::changes(&events)).await;
    // Answered once applied, together with the other webhooks of its window.
    components
        .caches
        .invalidate(Invalidation::for_events(&events))
        .await;
    (StatusCode::OK, "ok").into_response()
}
