//! A faithful fake of the amoCRM endpoints the gateway uses, served over real HTTP.
//!
//! Used by `--demo`, by `amocrm-gateway fake-amocrm`, and by the tests, which assert on what it
//! recorded (every request: method, path, parameters, token, and a write's body). It follows the
//! shared API reference: the parameters and filters of `GET /api/v4/contacts`, 204 for
//! "nothing", problem+json errors, `_links.next` on every full page (even when nothing follows,
//! as amoCRM does), and a `limit` over 250 falling back to 50.
//!
//! Reads:
//! - `GET /api/v4/contacts` and `GET /api/v4/contacts/{id}`;
//! - `GET /api/v4/contacts/custom_fields`: the field definitions ([`CONTACT_FIELDS`]), paged;
//! - the batch endpoints for linked entities (`/api/v4/leads`, `/customers`, `/companies`,
//!   `/catalogs/{id}/elements`), one catalog element by id (`/catalogs/{id}/elements/{id}`) and
//!   `/api/v4/users`.
//!
//! Writes, answered as amoCRM answers them (ids only; 400 `validation-errors` problems naming
//! each bad item by `request_id` and a dot path; one bad item refuses the whole request):
//! - `POST /api/v4/contacts` (an array) creates contacts;
//! - `PATCH /api/v4/contacts` (an array, each with `id`) and `PATCH /api/v4/contacts/{id}` (one
//!   object) change only the keys sent;
//! - `POST /api/v4/contacts/{id}/link` and `/unlink`, and the bulk `POST /api/v4/contacts/link`
//!   and `/unlink` (with `entity_id` per item); unlink answers 204 without a body.
//!
//! Its contacts come in the shapes real accounts send, not only those the documentation's
//! tables list (see `data`), and what a write stores reads back in the same shapes.
//!
//! Tokens (fixed, documented in the README):
//! - [`ADMIN_TOKEN`] sees every contact;
//! - [`MANAGER_TOKEN`] is a non-admin who sees (and may change) only contacts of user
//!   [`MANAGER_USER_ID`], and gets 403 from `/api/v4/users`;
//! - [`UNPAID_TOKEN`] belongs to an unpaid account and gets 402;
//! - anything else gets 401.
//!
//! Its parts: `admission` is the front door every endpoint passes (recording, rate limit,
//! latency, queued failures, tokens) and the way out of every write (answers held back);
//! `contacts` and `entities` answer reads; `writes` creates and changes contacts, `links` links
//! them, both refusing through `validation`; `fields` defines the custom fields; `oauth` issues
//! tokens; `data` holds the dataset. This file is what the tests and the binary see: the
//! options, the running server with its controls, the route table and the shapes of answers.
#![allow(
    clippy::result_large_err,
    reason = "handlers return early with a whole response; the fake is no hot path"
)]

mod admission;
mod contacts;
mod data;
mod entities;
mod fields;
mod links;
mod oauth;
mod validation;
mod writes;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub(crate) use admission::{Viewer, admit};
pub use data::{
    ACCOUNT_ID, FakeCatalogLink, FakeContact, FakeField, FakeFieldValue, GOODS_CATALOG_ID,
    SERVICES_CATALOG_ID, USERS,
};
pub use entities::DELETED_LEAD_EVERY;
pub use fields::{
    ADDRESS_ENUMS, ADDRESS_FIELD_ID, BIRTHDAY_FIELD_ID, BUDGET_FIELD_ID, CONTACT_FIELDS,
    CONTRACT_DATE_FIELD_ID, CONTRACT_FIELD_ID, EMAIL_ENUMS, EMAIL_FIELD_ID, FieldDefinition,
    FieldEnum, LAST_VISIT_FIELD_ID, LEGAL_ENTITY_FIELD_ID, MODEL_FIELD_ID, PHONE_ENUMS,
    PHONE_FIELD_ID, POSITION_FIELD_ID, SOURCE_ENUMS, SOURCE_FIELD_ID, UTM_SOURCE_FIELD_ID,
    VIP_FIELD_ID, contact_field, contact_field_by_code,
};
pub use oauth::{OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, OAUTH_REDIRECT_URI, OAUTH_REFRESH_TOKEN};
pub use validation::MAX_WRITE_BATCH;

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
    /// A write's body as JSON (a string when it was not JSON); `None` for reads.
    pub body: Option<Value>,
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
    /// A `Retry-After` header, sent as it is.
    pub retry_after: Option<String>,
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
            retry_after: None,
        }
    }

    /// An HTML page from the front proxy, as amoCRM sends for blocks and some 429s.
    pub fn html(status: u16) -> Self {
        Failure {
            status,
            content_type: Some("text/html; charset=utf-8"),
            body: "<html><body><h1>Access denied</h1></body></html>".to_owned(),
            retry_after: None,
        }
    }

    pub fn empty(status: u16) -> Self {
        Failure {
            status,
            content_type: None,
            body: String::new(),
            retry_after: None,
        }
    }

    /// The same answer with a `Retry-After` header, whatever it says.
    pub fn with_retry_after(mut self, value: impl Into<String>) -> Self {
        self.retry_after = Some(value.into());
        self
    }

    /// A 200 with an arbitrary body, for malformed and truncated responses.
    pub fn body(content_type: &'static str, body: impl Into<String>) -> Self {
        Failure {
            status: 200,
            content_type: Some(content_type),
            body: body.into(),
            retry_after: None,
        }
    }
}

pub(crate) struct FakeState {
    linked: entities::LinkedIds,
    contacts: std::sync::RwLock<Vec<FakeContact>>,
    latency_ms: AtomicU64,
    /// Answer catalog element lists as if no ids were asked for, as some accounts do.
    ignore_catalog_element_ids: AtomicBool,
    requests: Mutex<Vec<RecordedRequest>>,
    rate_limit: Option<u32>,
    failures: Mutex<Vec<Failure>>,
    base_url: String,
    oauth: Mutex<oauth::OAuthState>,
    /// Tags writes may name; those created by name join it.
    tags: Mutex<data::TagRegistry>,
    /// Set by [`FakeAmoCrm::time_out_next_write`]; taken by the next write that applies.
    time_out_next_write: AtomicBool,
    /// Becomes true when the fake stops, releasing answers held back.
    closing: tokio::sync::watch::Sender<bool>,
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

    /// Whether `/catalogs/{id}/elements` ignores `id[]` and `filter[id][]`, listing the catalog
    /// from its first element instead, as some real accounts do.
    pub fn ignore_catalog_element_ids(&self, ignore: bool) {
        self.state
            .ignore_catalog_element_ids
            .store(ignore, Ordering::Relaxed);
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

    /// The next write (create, update, link or unlink) that passes validation is applied, and
    /// then its answer never comes: the caller's timeout decides, not knowing whether it
    /// happened. Refused writes and [`FakeAmoCrm::fail_next`] failures apply nothing and
    /// answer as usual, leaving this for the next one.
    pub fn time_out_next_write(&self) {
        self.state.time_out_next_write.store(true, Ordering::SeqCst);
    }

    /// Forgets failures queued by [`FakeAmoCrm::fail_next`] that were not used.
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
        let now = unix_now();
        let mut contacts = self.state.write_contacts();
        if let Some(contact) = contacts.iter_mut().find(|c| c.id == id) {
            contact.name = name.to_owned();
            contact.updated_at = now;
            contact.reindex();
        }
    }
}

impl Drop for FakeAmoCrm {
    fn drop(&mut self) {
        self.state.closing.send_replace(true);
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
            ignore_catalog_element_ids: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
            rate_limit: options.rate_limit,
            failures: Mutex::new(Vec::new()),
            base_url: format!("http://{addr}"),
            oauth: Mutex::new(oauth::OAuthState::default()),
            tags: Mutex::new(data::TagRegistry::default()),
            time_out_next_write: AtomicBool::new(false),
            closing: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl FakeState {
    fn read_contacts(&self) -> std::sync::RwLockReadGuard<'_, Vec<FakeContact>> {
        self.contacts.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_contacts(&self) -> std::sync::RwLockWriteGuard<'_, Vec<FakeContact>> {
        self.contacts.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Now in Unix seconds, the resolution of amoCRM's timestamps.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn router(state: Arc<FakeState>) -> Router {
    Router::new()
        .route(
            "/api/v4/contacts",
            get(contacts::list_contacts)
                .post(writes::create_contacts)
                .patch(writes::update_contacts),
        )
        .route(
            "/api/v4/contacts/{id}",
            get(contacts::contact_by_id).patch(writes::update_contact),
        )
        .route(
            "/api/v4/contacts/custom_fields",
            get(fields::list_custom_fields),
        )
        .route(
            "/api/v4/contacts/link",
            post(links::bulk_link).get(contacts::link_segment),
        )
        .route(
            "/api/v4/contacts/unlink",
            post(links::bulk_unlink).get(contacts::unlink_segment),
        )
        .route("/api/v4/contacts/{id}/link", post(links::link))
        .route("/api/v4/contacts/{id}/unlink", post(links::unlink))
        .route("/api/v4/leads", get(entities::leads))
        .route("/api/v4/customers", get(entities::customers))
        .route("/api/v4/companies", get(entities::companies))
        .route(
            "/api/v4/catalogs/{catalog_id}/elements",
            get(entities::catalog_elements),
        )
        .route(
            "/api/v4/catalogs/{catalog_id}/elements/{id}",
            get(entities::catalog_element),
        )
        .route("/api/v4/users", get(entities::users))
        .route(oauth::TOKEN_PATH, post(oauth::access_token))
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "Not Found", "unknown endpoint") })
        .with_state(state)
}

impl Failure {
    fn into_response(self) -> Response {
        let failure = self;
        let mut response = (
            StatusCode::from_u16(failure.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            failure.body,
        )
            .into_response();
        if let Some(value) = failure
            .retry_after
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
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
