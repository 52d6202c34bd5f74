//! amoCRM's OAuth token endpoint, `POST /oauth2/access_token`, with single-use refresh tokens:
//! a refresh token works once, after which it answers 401 "Token has been revoked" (as amoCRM
//! does). Access tokens it issues see what [`super::ADMIN_TOKEN`] sees until they expire.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{FakeState, RecordedRequest, lock};

pub const OAUTH_CLIENT_ID: &str = "demo-client-id";
pub const OAUTH_CLIENT_SECRET: &str = "demo-client-secret";
pub const OAUTH_REDIRECT_URI: &str = "https://gateway.example/oauth";
/// The refresh token the fake accepts first.
pub const OAUTH_REFRESH_TOKEN: &str = "demo-refresh-token-0";
pub const TOKEN_PATH: &str = "/oauth2/access_token";

pub(crate) struct OAuthState {
    /// The one refresh token that works now.
    refresh: String,
    /// Issued access tokens and when each expires.
    access: HashMap<String, Instant>,
    issued: u64,
    pub(crate) lifetime: Duration,
}

impl Default for OAuthState {
    fn default() -> Self {
        OAuthState {
            refresh: OAUTH_REFRESH_TOKEN.to_owned(),
            access: HashMap::new(),
            issued: 0,
            lifetime: Duration::from_secs(86_400),
        }
    }
}

impl OAuthState {
    /// Whether `token` is an access token this endpoint issued that has not expired.
    pub(crate) fn accepts(&self, token: &str) -> bool {
        self.access
            .get(token)
            .is_some_and(|expires| Instant::now() < *expires)
    }

    pub(crate) fn revoke_access_tokens(&mut self) {
        self.access.clear();
    }

    pub(crate) fn current_refresh_token(&self) -> String {
        self.refresh.clone()
    }
}

pub(crate) async fn access_token(
    State(state): State<std::sync::Arc<FakeState>>,
    body: Option<Json<Value>>,
) -> Response {
    lock(&state.requests).push(RecordedRequest {
        method: "POST".to_owned(),
        path: TOKEN_PATH.to_owned(),
        query: Vec::new(),
        token: None,
        at: Instant::now(),
        rate_limited: false,
        // Left out: it carries the client secret and the refresh token.
        body: None,
    });
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let field = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or_default();
    if field("client_id") != OAUTH_CLIENT_ID
        || field("client_secret") != OAUTH_CLIENT_SECRET
        || field("redirect_uri") != OAUTH_REDIRECT_URI
        || field("grant_type") != "refresh_token"
    {
        return refusal(StatusCode::BAD_REQUEST, "Client authentication failed");
    }
    let mut oauth = lock(&state.oauth);
    if field("refresh_token") != oauth.refresh {
        return refusal(StatusCode::UNAUTHORIZED, "Token has been revoked");
    }
    oauth.issued += 1;
    let n = oauth.issued;
    let access = format!("oauth-access-{n}");
    let expires_at = Instant::now() + oauth.lifetime;
    oauth.access.insert(access.clone(), expires_at);
    oauth.refresh = format!("oauth-refresh-{n}");
    Json(json!({
        "token_type": "Bearer",
        "expires_in": oauth.lifetime.as_secs(),
        "access_token": access,
        "refresh_token": oauth.refresh,
    }))
    .into_response()
}

/// amoCRM's OAuth errors: a JSON body with a `hint`.
fn refusal(status: StatusCode, hint: &str) -> Response {
    (
        status,
        Json(json!({
            "title": status.canonical_reason().unwrap_or_default(),
            "type": "https://developers.amocrm.ru/v3/errors/OAuthProblemJson",
            "status": status.as_u16(),
            "detail": "The refresh token is invalid.",
            "hint": hint,
        })),
    )
        .into_response()
}
