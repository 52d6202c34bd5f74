//! `GET /graphiql` (the playground page), its embedded assets, and `GET /` redirecting there.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;

use super::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/graphiql", get(graphiql))
        .route(
            &format!("{}/{{name}}", crate::graphiql::ASSETS_PATH),
            get(asset),
        )
        .route("/", get(|| async { Redirect::temporary("/graphiql") }))
}

async fn graphiql(State(state): State<AppState>) -> Html<String> {
    Html(state.graphiql.to_string())
}

async fn asset(Path(name): Path<String>) -> Response {
    match crate::graphiql::asset(&name) {
        Some(asset) => (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CACHE_CONTROL, "public, max-age=86400"),
            ],
            asset.bytes,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
