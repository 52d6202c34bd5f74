//! The fake's front door, which every amoCRM endpoint passes through before it answers: it
//! records the request, applies the rate limit and the latency, hands out queued failures, and
//! turns the bearer token into a [`Viewer`] (or the 401/402 amoCRM gives instead). Writes also
//! leave here, through [`answer_write`], which can hold an answer back after the write applied.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::Value;

use super::{
    ADMIN_TOKEN, Failure, FakeContact, FakeState, MANAGER_TOKEN, MANAGER_USER_ID, RecordedRequest,
    UNPAID_TOKEN, USERS, lock, problem,
};

pub(crate) enum Viewer {
    Admin,
    Manager,
}

impl Viewer {
    pub(super) fn from_token(token: Option<&str>) -> Result<Viewer, Response> {
        match token {
            Some(ADMIN_TOKEN) => Ok(Viewer::Admin),
            Some(MANAGER_TOKEN) => Ok(Viewer::Manager),
            Some(UNPAID_TOKEN) => Err(problem(
                StatusCode::PAYMENT_REQUIRED,
                "Payment Required",
                "Account is not paid",
            )),
            _ => Err(problem(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Token is invalid or expired",
            )),
        }
    }

    /// The user a write is made as: `created_by`/`updated_by` of what it changes.
    pub(super) fn user_id(&self) -> u64 {
        match self {
            Viewer::Admin => USERS[0].0,
            Viewer::Manager => MANAGER_USER_ID,
        }
    }

    pub(super) fn sees(&self, contact: &FakeContact) -> bool {
        match self {
            Viewer::Admin => true,
            Viewer::Manager => contact.responsible_user_id == MANAGER_USER_ID,
        }
    }
}

/// Records the request, waits the configured latency, and answers with a queued failure or
/// authenticates the caller.
pub(crate) async fn admit(
    state: &FakeState,
    path: String,
    raw_query: Option<&str>,
    headers: &HeaderMap,
) -> Result<(Viewer, Vec<(String, String)>), Response> {
    admit_as(state, "GET", path, raw_query, headers, None).await
}

/// [`admit`] for a write: records its method and body, and returns the body as JSON (`None`
/// when it is not JSON).
pub(crate) async fn admit_write(
    state: &FakeState,
    method: &str,
    path: String,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Viewer, Option<Value>), Response> {
    let json = serde_json::from_slice::<Value>(body).ok();
    let recorded = json
        .clone()
        .unwrap_or_else(|| Value::String(String::from_utf8_lossy(body).into_owned()));
    let (viewer, _) = admit_as(state, method, path, None, headers, Some(recorded)).await?;
    Ok((viewer, json))
}

/// Gives a write's answer, or, when [`super::FakeAmoCrm::time_out_next_write`] asked for it,
/// keeps the caller waiting with the write already applied: the outcome a client cannot know.
pub(crate) async fn answer_write(state: &FakeState, answer: Response) -> Response {
    if state.time_out_next_write.swap(false, Ordering::SeqCst) {
        let mut closing = state.closing.subscribe();
        // Released when the fake stops, so that a graceful shutdown does not wait on it.
        let _ = tokio::time::timeout(HELD_AT_MOST, closing.wait_for(|closed| *closed)).await;
    }
    answer
}

/// Longer than any client waits.
const HELD_AT_MOST: Duration = Duration::from_secs(600);

async fn admit_as(
    state: &FakeState,
    method: &str,
    path: String,
    raw_query: Option<&str>,
    headers: &HeaderMap,
    body: Option<Value>,
) -> Result<(Viewer, Vec<(String, String)>), Response> {
    let query: Vec<(String, String)> = raw_query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let at = std::time::Instant::now();
    let rate_limited = {
        let mut requests = lock(&state.requests);
        let limited = state.rate_limit.is_some_and(|limit| {
            let recent = requests
                .iter()
                .rev()
                .take_while(|r| at.duration_since(r.at) < Duration::from_secs(1))
                .count();
            recent >= limit as usize
        });
        requests.push(RecordedRequest {
            method: method.to_owned(),
            path,
            query: query.clone(),
            token: token.clone(),
            at,
            rate_limited: limited,
            body,
        });
        limited
    };
    if rate_limited {
        return Err(Failure::html(429).into_response());
    }
    let latency = state.latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        // A thread's sleep is precise to microseconds where tokio's timer rounds up to the next
        // millisecond: benchmarks that subtract this latency need it exact.
        let latency = Duration::from_millis(latency);
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(latency)).await;
    }
    let failure = {
        let mut failures = lock(&state.failures);
        (!failures.is_empty()).then(|| failures.remove(0))
    };
    if let Some(failure) = failure {
        return Err(failure.into_response());
    }
    if let Some(token) = token.as_deref()
        && token.starts_with("oauth-access-")
    {
        return match lock(&state.oauth).accepts(token) {
            true => Ok((Viewer::Admin, query)),
            false => Err(problem(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Token is invalid or expired",
            )),
        };
    }
    let viewer = Viewer::from_token(token.as_deref())?;
    Ok((viewer, query))
}
