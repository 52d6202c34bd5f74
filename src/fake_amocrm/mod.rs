//! A faithful fake of the amoCRM endpoints the gateway uses, served over real HTTP.
//!
//! Used by `--demo`, by `amocrm-gateway fake-amocrm`, and by the tests, which assert on what it
//! recorded (every request: path, parameters, token). It follows the shared API reference: the
//! parameters and filters of `GET /api/v4/contacts`, 204 for "nothing", problem+json errors,
//! `_links.next` on every full page (even when nothing follows, as amoCRM does), and a `limit`
//! over 250 falling back to 50.
//!
//! It also serves the batch endpoints for linked entities (`/api/v4/leads`, `/customers`,
//! `/companies`, `/catalogs/{id}/elements`) and `/api/v4/users`.
//!
//! Tokens (fixed, documented in the README):
//! - [`ADMIN_TOKEN`] sees every contact;
//! - [`MANAGER_TOKEN`] is a non-admin who sees only contacts of user [`MANAGER_USER_ID`], and
//!   gets 403 from `/api/v4/users`;
//! - [`UNPAID_TOKEN`] belongs to an unpaid account and gets 402;
//! - anything else gets 401.
#![allow(
    clippy::result_large_err,
    reason = "handlers return early with a whole response; the fake is no hot path"
)]

mod data;
mod entities;
mod oauth;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use data::{
    ACCOUNT_ID, BUDGET_FIELD_ID, EMAIL_FIELD_ID, FakeContact, PHONE_FIELD_ID, SOURCE_FIELD_ID,
    USERS,
};
pub use entities::DELETED_LEAD_EVERY;
pub use oauth::{OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, OAUTH_REDIRECT_URI, OAUTH_REFRESH_TOKEN};

pub const ADMIN_TOKEN: &str = "demo-admin-token";
pub const MANAGER_TOKEN: &str = "demo-manager-token";
pub const UNPAID_TOKEN: &str = "demo-unpaid-token";
/// The user behind [`MANAGER_TOKEN`]: it sees only the contacts this user is responsible for.
pub const MANAGER_USER_ID: u64 = USERS[2].0;

/// How many contacts the fake holds unless told otherwise.
pub const DEFAULT_CONTACTS: usize = 2_400;

#[derive(Debug, Clone)]
pub struct FakeOptions {
    pub contacts: usize,
    /// Added to every answer, so that concurrent requests really overlap.
    pub latency: Duration,
    /// Like amoCRM, answer 429 (an HTML page, no `Retry-After`) to a request that would make
    /// more than this many in one second.
    pub rate_limit: Option<u32>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            contacts: DEFAULT_CONTACTS,
            latency: Duration::ZERO,
            rate_limit: None,
        }
    }
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Decoded query parameters, in the order they arrived.
    pub query: Vec<(String, String)>,
    /// The bearer token, if any.
    pub token: Option<String>,
    /// When it arrived.
    pub at: std::time::Instant,
    /// Whether the fake's rate limit refused it with 429.
    pub rate_limited: bool,
}

impl RecordedRequest {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn params(&self, key: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// An answer to give instead of the normal one, for testing how the gateway copes.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: u16,
    pub content_type: Option<&'static str>,
    pub body: String,
}

impl Failure {
    /// amoCRM's problem+json error.
    pub fn problem(status: u16, title: &str, detail: &str) -> Self {
        Failure {
            status,
            content_type: Some("application/problem+json"),
            body: json!({ "title": title, "type": "https://httpstatus.es/", "status": status,
                          "detail": detail })
            .to_string(),
        }
    }

    /// An HTML page from the front proxy, as amoCRM sends for blocks and some 429s.
    pub fn html(status: u16) -> Self {
        Failure {
            status,
            content_type: Some("text/html; charset=utf-8"),
            body: "<html><body><h1>Access denied</h1></body></html>".to_owned(),
        }
    }

    pub fn empty(status: u16) -> Self {
        Failure {
            status,
            content_type: None,
            body: String::new(),
        }
    }

    /// A 200 with an arbitrary body, for malformed and truncated responses.
    pub fn body(content_type: &'static str, body: impl Into<String>) -> Self {
        Failure {
            status: 200,
            content_type: Some(content_type),
            body: body.into(),
        }
    }
}

pub(crate) struct FakeState {
    linked: entities::LinkedIds,
    contacts: std::sync::RwLock<Vec<FakeContact>>,
    latency_ms: AtomicU64,
    requests: Mutex<Vec<RecordedRequest>>,
    rate_limit: Option<u32>,
    failures: Mutex<Vec<Failure>>,
    base_url: String,
    oauth: Mutex<oauth::OAuthState>,
}

/// A running fake. Stops when dropped.
pub struct FakeAmoCrm {
    addr: SocketAddr,
    state: Arc<FakeState>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl FakeAmoCrm {
    /// Binds `addr` (port 0 for any free port) and serves in the background.
    pub async fn start(addr: SocketAddr, options: FakeOptions) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(FakeState::new(addr, &options));
        let (shutdown, stop) = oneshot::channel::<()>();
        let app = router(state.clone());
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the fake amoCRM stopped");
            }
        });
        Ok(FakeAmoCrm {
            addr,
            state,
            shutdown: Some(shutdown),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the value for `--upstream-url`.
    pub fn base_url(&self) -> String {
        self.state.base_url.clone()
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.state.requests).clear();
    }

    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.state.latency_ms.store(ms, Ordering::Relaxed);
    }

    /// Answers the next requests with these failures, one each, in order.
    pub fn fail_next(&self, failures: impl IntoIterator<Item = Failure>) {
        lock(&self.state.failures).extend(failures);
    }

    /// The most requests that arrived within any one second: what amoCRM's limit counts.
    pub fn busiest_second(&self) -> usize {
        let mut arrivals: Vec<std::time::Instant> =
            lock(&self.state.requests).iter().map(|r| r.at).collect();
        arrivals.sort_unstable();
        let mut first = 0;
        let mut busiest = 0;
        for (last, at) in arrivals.iter().enumerate() {
            while at.duration_since(arrivals[first]) >= Duration::from_secs(1) {
                first += 1;
            }
            busiest = busiest.max(last - first + 1);
        }
        busiest
    }

    /// Forgets failures queued by [`FakeAmoCrm::fail_next`] that were not used.
    /// How long the access tokens it issues from now on live.
    pub fn set_oauth_lifetime(&self, lifetime: Duration) {
        lock(&self.state.oauth).lifetime = lifetime;
    }

    /// Makes every access token it issued invalid (401), as a revocation would.
    pub fn revoke_oauth_access_tokens(&self) {
        lock(&self.state.oauth).revoke_access_tokens();
    }

    /// The one refresh token that works now.
    pub fn oauth_refresh_token(&self) -> String {
        lock(&self.state.oauth).current_refresh_token()
    }

    /// How many times the token endpoint was called.
    pub fn oauth_refreshes(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path == oauth::TOKEN_PATH)
            .count()
    }

    pub fn clear_failures(&self) {
        lock(&self.state.failures).clear();
    }

    /// The ids of the contacts `token` may see, in the default (id) order.
    pub fn visible_ids(&self, token: &str) -> Vec<u64> {
        let viewer = Viewer::from_token(Some(token));
        self.state
            .read_contacts()
            .iter()
            .filter(|c| viewer.as_ref().is_ok_and(|v| v.sees(c)))
            .map(|c| c.id)
            .collect()
    }

    /// The fake's data, to compute expected answers in tests.
    pub fn contacts(&self) -> Vec<FakeContact> {
        self.state.read_contacts().clone()
    }

    /// Renames a contact as a user would: `updated_at` becomes now.
    pub fn rename_contact(&self, id: u64, name: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let mut contacts = self
            .state
            .contacts
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(contact) = contacts.iter_mut().find(|c| c.id == id) {
            contact.name = name.to_owned();
            contact.updated_at = now;
            contact.reindex();
        }
    }
}

impl Drop for FakeAmoCrm {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Serves the fake on `listener` until `shutdown` resolves (the `fake-amocrm` subcommand).
pub async fn serve(
    listener: TcpListener,
    options: FakeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = Arc::new(FakeState::new(listener.local_addr()?, &options));
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

impl FakeState {
    fn new(addr: SocketAddr, options: &FakeOptions) -> Self {
        let contacts = data::generate(options.contacts);
        FakeState {
            linked: entities::LinkedIds::of(&contacts),
            contacts: std::sync::RwLock::new(contacts),
            latency_ms: AtomicU64::new(u64::try_from(options.latency.as_millis()).unwrap_or(0)),
            requests: Mutex::new(Vec::new()),
            rate_limit: options.rate_limit,
            failures: Mutex::new(Vec::new()),
            base_url: format!("http://{addr}"),
            oauth: Mutex::new(oauth::OAuthState::default()),
        }
    }
}

impl FakeState {
    fn read_contacts(&self) -> std::sync::RwLockReadGuard<'_, Vec<FakeContact>> {
        self.contacts.read().unwrap_or_else(|e| e.into_inner())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn router(state: Arc<FakeState>) -> Router {
    Router::new()
        .route("/api/v4/contacts", get(list_contacts))
        .route("/api/v4/contacts/{id}", get(contact_by_id))
        .route("/api/v4/leads", get(entities::leads))
        .route("/api/v4/customers", get(entities::customers))
        .route("/api/v4/companies", get(entities::companies))
        .route(
            "/api/v4/catalogs/{catalog_id}/elements",
            get(entities::catalog_elements),
        )
        .route("/api/v4/users", get(entities::users))
        .route(oauth::TOKEN_PATH, axum::routing::post(oauth::access_token))
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "Not Found", "unknown endpoint") })
        .with_state(state)
}

pub(crate) enum Viewer {
    Admin,
    Manager,
}

impl Viewer {
    fn from_token(token: Option<&str>) -> Result<Viewer, Response> {
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

    fn sees(&self, contact: &FakeContact) -> bool {
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
            method: "GET".to_owned(),
            path,
            query: query.clone(),
            token: token.clone(),
            at,
            rate_limited: limited,
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

impl Failure {
    fn into_response(self) -> Response {
        let failure = self;
        let mut response = (
            StatusCode::from_u16(failure.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            failure.body,
        )
            .into_response();
        match failure.content_type {
            Some(ct) => {
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            }
            None => {
                response.headers_mut().remove(header::CONTENT_TYPE);
            }
        }
        response
    }
}

async fn list_contacts(
    State(state): State<Arc<FakeState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (viewer, query) =
        match admit(&state, "/api/v4/contacts".into(), raw.as_deref(), &headers).await {
            Ok(admitted) => admitted,
            Err(response) => return response,
        };
    let params = match ListParams::parse(&query) {
        Ok(params) => params,
        Err(detail) => return problem(StatusCode::BAD_REQUEST, "Bad Request", &detail),
    };
    let contacts = state.read_contacts();
    let mut matches: Vec<&FakeContact> = contacts
        .iter()
        .filter(|c| viewer.sees(c) && params.matches(c))
        .collect();
    if let Some((field, direction)) = &params.order {
        let key = |c: &&FakeContact| match field.as_str() {
            "updated_at" => (c.updated_at, c.id),
            _ => (c.id as i64, c.id),
        };
        matches.sort_by_key(key);
        if direction == "desc" {
            matches.reverse();
        }
    }
    let start = (params.page - 1).saturating_mul(params.limit);
    let page: Vec<&FakeContact> = matches
        .iter()
        .skip(start)
        .take(params.limit)
        .copied()
        .collect();
    if page.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let href = |page: usize| {
        format!(
            "{}/api/v4/contacts?limit={}&page={page}",
            state.base_url, params.limit
        )
    };
    let mut links = json!({ "self": { "href": href(params.page) } });
    // amoCRM links a next page whenever this one is full, even when nothing follows.
    if page.len() == params.limit {
        links["next"] = json!({ "href": href(params.page + 1) });
    }
    if params.page > 1 {
        links["prev"] = json!({ "href": href(params.page - 1) });
    }
    hal(json!({
        "_page": params.page,
        "_links": links,
        "_embedded": {
            "contacts": page.iter().map(|c| c.to_json(&params.with, &state.base_url)).collect::<Vec<_>>(),
        },
    }))
}

async fn contact_by_id(
    State(state): State<Arc<FakeState>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let path = format!("/api/v4/contacts/{id}");
    let (viewer, query) = match admit(&state, path, raw.as_deref(), &headers).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let Ok(id) = id.parse::<u64>() else {
        return problem(StatusCode::NOT_FOUND, "Not Found", "unknown endpoint");
    };
    let with = with_set(&query);
    match state
        .read_contacts()
        .iter()
        .find(|c| c.id == id && viewer.sees(c))
    {
        Some(contact) => hal(contact.to_json(&with, &state.base_url)),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

pub(crate) fn hal(body: Value) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/hal+json"),
            (
                header::HeaderName::from_static("x-request-id"),
                "fake-amocrm",
            ),
        ],
        body.to_string(),
    )
        .into_response()
}

pub(crate) fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        json!({ "title": title, "type": "https://httpstatus.es/", "status": status.as_u16(),
                "detail": detail })
        .to_string(),
    )
        .into_response()
}

fn with_set(query: &[(String, String)]) -> HashSet<String> {
    query
        .iter()
        .filter(|(k, _)| k == "with")
        .flat_map(|(_, v)| v.split(','))
        .map(|s| s.trim().to_owned())
        .collect()
}

#[derive(Default)]
struct Range {
    from: Option<i64>,
    to: Option<i64>,
}

impl Range {
    fn contains(&self, value: Option<i64>) -> bool {
        let Some(value) = value else { return false };
        self.from.is_none_or(|f| value >= f) && self.to.is_none_or(|t| value <= t)
    }
}

#[derive(Default)]
struct CustomCondition {
    values: Vec<String>,
    from: Option<String>,
    to: Option<String>,
}

/// The parameters of `GET /api/v4/contacts`, parsed the way amoCRM reads them: `filter[x][]`,
/// `filter[x][0]` and `filter[x]` all give values; `[from]`/`[to]` give ranges.
#[derive(Default)]
struct ListParams {
    with: HashSet<String>,
    page: usize,
    limit: usize,
    search: Option<String>,
    sets: BTreeMap<String, Vec<String>>,
    ranges: BTreeMap<String, Range>,
    custom: BTreeMap<u64, CustomCondition>,
    order: Option<(String, String)>,
}

/// Splits `filter[a][b][]` into `("filter", ["a", "b", ""])`.
fn key_path(key: &str) -> (&str, Vec<&str>) {
    let Some(open) = key.find('[') else {
        return (key, Vec::new());
    };
    let parts = key[open..]
        .split(']')
        .filter_map(|part| part.strip_prefix('['))
        .collect();
    (&key[..open], parts)
}

impl ListParams {
    fn parse(query: &[(String, String)]) -> Result<ListParams, String> {
        let number = |name: &str, value: &str| {
            value
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name} must be a positive integer"))
        };
        let mut params = ListParams {
            with: with_set(query),
            page: 1,
            limit: 50,
            ..ListParams::default()
        };
        for (key, value) in query {
            let (base, path) = key_path(key);
            match (base, path.as_slice()) {
                ("page", []) => params.page = number("page", value)?,
                ("limit", []) => {
                    let limit = number("limit", value)?;
                    params.limit = if limit > 250 { 50 } else { limit };
                }
                ("query", []) => params.search = Some(value.to_lowercase()),
                ("order", [field]) => {
                    if !matches!(*field, "id" | "updated_at")
                        || !matches!(value.as_str(), "asc" | "desc")
                    {
                        return Err(format!("order[{field}]={value} is not supported"));
                    }
                    params.order = Some(((*field).to_owned(), value.clone()));
                }
                ("filter", ["custom_fields_values", field_id, rest @ ..]) => {
                    let field_id = field_id
                        .parse::<u64>()
                        .map_err(|_| format!("bad custom field id {field_id}"))?;
                    let condition = params.custom.entry(field_id).or_default();
                    match rest {
                        ["from"] => condition.from = Some(value.clone()),
                        ["to"] => condition.to = Some(value.clone()),
                        [] | [_] => condition.values.push(value.clone()),
                        _ => return Err(format!("unsupported filter key {key}")),
                    }
                }
                (
                    "filter",
                    [
                        name @ ("created_at" | "updated_at" | "closest_task_at"),
                        bound,
                    ],
                ) => {
                    let seconds = value
                        .parse::<i64>()
                        .map_err(|_| format!("{key} must be Unix seconds"))?;
                    let range = params.ranges.entry((*name).to_owned()).or_default();
                    match *bound {
                        "from" => range.from = Some(seconds),
                        "to" => range.to = Some(seconds),
                        _ => return Err(format!("unsupported filter key {key}")),
                    }
                }
                (
                    "filter",
                    [
                        name
                        @ ("id" | "name" | "responsible_user_id" | "created_by" | "updated_by"),
                        ..,
                    ],
                ) => {
                    if *name != "name" && value.parse::<u64>().is_err() {
                        return Err(format!("{key} must be numeric"));
                    }
                    params
                        .sets
                        .entry((*name).to_owned())
                        .or_default()
                        .push(value.clone());
                }
                ("filter", _) => return Err(format!("unsupported filter key {key}")),
                _ => {}
            }
        }
        Ok(params)
    }

    fn matches(&self, c: &FakeContact) -> bool {
        let in_set = |name: &str, value: String| {
            self.sets
                .get(name)
                .is_none_or(|values| values.contains(&value))
        };
        let in_range = |name: &str, value: Option<i64>| {
            self.ranges
                .get(name)
                .is_none_or(|range| range.contains(value))
        };
        in_set("id", c.id.to_string())
            && in_set("name", c.name.clone())
            && in_set("responsible_user_id", c.responsible_user_id.to_string())
            && in_set("created_by", c.created_by.to_string())
            && in_set("updated_by", c.updated_by.to_string())
            && in_range("created_at", Some(c.created_at))
            && in_range("updated_at", Some(c.updated_at))
            && in_range("closest_task_at", c.closest_task_at)
            && self.search.as_deref().is_none_or(|q| c.matches_search(q))
            && self.custom.iter().all(|(field_id, condition)| {
                let values = c.field_values(*field_id);
                let numeric = |s: &str| s.trim().parse::<f64>().ok();
                values.iter().any(|v| {
                    if !condition.values.is_empty() {
                        return condition.values.contains(v);
                    }
                    let (Some(v), from, to) = (
                        numeric(v),
                        condition.from.as_deref().and_then(numeric),
                        condition.to.as_deref().and_then(numeric),
                    ) else {
                        return false;
                    };
                    from.is_none_or(|f| v >= f) && to.is_none_or(|t| v <= t)
                })
            })
    }
}
