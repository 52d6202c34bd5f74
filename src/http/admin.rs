//! `POST /admin/cache/purge[?contact_id=N]`, for operators holding `--admin-token`.

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::AppState;
use crate::amocrm::ContactId;
use crate::auth::bearer_token;
use crate::cache::Invalidation;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/admin/cache/purge", post(purge_cache))
}

#[derive(serde::Deserialize)]
struct PurgeParams {
    contact_id: Option<String>,
}

async fn purge_cache(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<PurgeParams>,
) -> Response {
    let components = &state.components;
    let authorized = bearer_token(
        headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
    )
    .is_ok_and(|token| {
        components
            .admin_token
            .as_ref()
            .is_some_and(|admin| admin.matches(token))
    });
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(serde_json::json!({ "error": "send Authorization: Bearer <admin token>" })),
        )
            .into_response();
    }
    let (invalidation, answer) = match params.contact_id.as_deref() {
        None => (Invalidation::All, serde_json::json!({ "purged": "all" })),
        Some(id) => match id.trim().parse::<u64>() {
            Ok(id) if id > 0 => (
                Invalidation::Contact(ContactId::new(id)),
                serde_json::json!({ "purged": "contact", "contactId": id.to_string() }),
            ),
            _ => {
                return (
                    StatusCode::BAD_REQUEST,
                    axum::Json(serde_json::json!({
                        "error": "contact_id must be a numeric amoCRM id"
                    })),
                )
                    .into_response();
            }
        },
    };
    components.caches.invalidate([invalidation]).await;
    axum::Json(answer).into_response()
}
