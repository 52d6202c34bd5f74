//! `GET /healthz` (503 while draining) and `GET /metrics` (Prometheus text).

use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
}

async fn healthz(State(state): State<AppState>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        "ok".into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let components = &state.components;
    components.caches.publish_sizes().await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        components.metrics.render(),
    )
        .into_response()
}
