//! `POST /graphql` and `GET /graphql`. A request is first looked up in the response cache by
//! its bytes as received (scope, method, the media type negotiated from `Accept`, content type,
//! body or query string), before any parsing; a hit is answered with the stored bytes,
//! compressed once per entry and encoding. Otherwise it is read as a GraphQL-over-HTTP request
//! (`request`; a malformed one is refused with its 4xx status); a caller without credentials is
//! refused and the document bounded, both before anything parses it; persisted queries are resolved,
//! and it runs with a fresh per-request context; the cache report becomes `x-cache` and
//! `Cache-Control`. A request error (nothing executed) has no `data` entry, and is HTTP 400 when
//! answered as `application/graphql-response+json`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::encoding;
use super::negotiation::{self, MediaType};
use super::request::{self, Rejection};
use super::{AppState, X_CACHE};
use crate::auth::{AuthError, AuthMode, Credentials};
use crate::cache::{CacheReport, CacheStatus, ResponseKey};
use crate::graphql::{self, RequestContext};

/// `GET /graphql?query=…&operationName=…&variables=…&extensions=…`: queries and persisted-query
/// hashes in the URL.
pub(super) async fn get(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let Some(media) = negotiation::negotiate(&headers) else {
        return rejected(&state, Rejection::NotAcceptable, MediaType::Json);
    };
    let raw_query = uri.query().unwrap_or_default();
    let arrival = Arrival::new(
        &state,
        &headers,
        media,
        &[b"GET", media.name().as_bytes(), raw_query.as_bytes()],
        raw_query.as_bytes(),
    );
    if let Some(hit) = arrival.cached(&state, &headers).await {
        return hit;
    }
    match request::from_get(raw_query) {
        Ok(request) => answer(&state, &headers, arrival, request, Method::GET).await,
        Err(rejection) => rejected(&state, rejection, media),
    }
}

pub(super) async fn post(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(media) = negotiation::negotiate(&headers) else {
        return rejected(&state, Rejection::NotAcceptable, MediaType::Json);
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let arrival = Arrival::new(
        &state,
        &headers,
        media,
        &[
            b"POST",
            media.name().as_bytes(),
            content_type.unwrap_or_default().as_bytes(),
            &body,
        ],
        &body,
    );
    // Only answers to well-formed requests are stored, so a hit needs no checks.
    if let Some(hit) = arrival.cached(&state, &headers).await {
        return hit;
    }
    match request::from_post(content_type, &body) {
        Ok(request) => answer(&state, &headers, arrival, request, Method::POST).await,
        Err(rejection) => rejected(&state, rejection, media),
    }
}

/// What is known of a request before it is parsed.
struct Arrival {
    media: MediaType,
    credentials: Result<Credentials, AuthError>,
    /// The response-cache key of the raw request. It includes the media type: bodies of
    /// both types are alike today only because answers with errors are never stored.
    key: Option<ResponseKey>,
    /// The request names a persisted query: the cache is looked up only once that is resolved.
    registers: bool,
}

impl Arrival {
    fn new(
        state: &AppState,
        headers: &HeaderMap,
        media: MediaType,
        key_parts: &[&[u8]],
        raw: &[u8],
    ) -> Self {
        let credentials = credentials(state, headers);
        let key = cache_key(&credentials, key_parts);
        Arrival {
            media,
            credentials,
            key,
            registers: names_a_persisted_query(raw),
        }
    }

    async fn cached(&self, state: &AppState, headers: &HeaderMap) -> Option<Response> {
        if self.registers {
            return None;
        }
        cached(state, self.key.as_ref(), headers, self.media).await
    }
}

fn credentials(state: &AppState, headers: &HeaderMap) -> Result<Credentials, AuthError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    state.components.auth.credentials(authorization)
}

/// Only callers who may use the gateway have a key: nothing is cached for the others.
fn cache_key(credentials: &Result<Credentials, AuthError>, parts: &[&[u8]]) -> Option<ResponseKey> {
    let credentials = credentials.as_ref().ok()?;
    Some(ResponseKey::new(&credentials.scope, parts))
}

/// The stored answer to an identical request, while everything it was built from is fresh.
async fn cached(
    state: &AppState,
    key: Option<&ResponseKey>,
    headers: &HeaderMap,
    media: MediaType,
) -> Option<Response> {
    let caches = &state.components.caches;
    let (stored, fresh_for) = caches.responses.get(key?, caches).await?;
    state.components.metrics.graphql_request("cached");
    let compressed = encoding::preferred(headers).and_then(|encoding| {
        let body = stored.derived(encoding.form(), |body| encoding.compress(body))?;
        Some((encoding, body))
    });
    let (body, encoding) = match compressed {
        Some((encoding, body)) => (body, Some(encoding)),
        None => (stored.body().clone(), None),
    };
    let mut response = body.into_response();
    set_headers(
        &mut response,
        media,
        true,
        CacheStatus::Hit,
        Some(fresh_for),
    );
    if let Some(encoding) = encoding {
        // Marked as encoded, the compression layer passes it through as it is.
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_ENCODING, encoding.header_value());
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    Some(response)
}

/// A GraphQL request refused before it ran (no usable credentials, a persisted query that
/// cannot be used).
fn refused(state: &AppState, error: async_graphql::ServerError, media: MediaType) -> Response {
    state.components.metrics.graphql_request("error");
    let status = media.request_error_status();
    errors_only(&[error], &BTreeMap::new(), status, media, CacheStatus::Miss)
}

/// An HTTP request that is not a GraphQL request, answered with its status.
fn rejected(state: &AppState, rejection: Rejection, media: MediaType) -> Response {
    state.components.metrics.graphql_request("error");
    let status = rejection.status();
    let error = graphql::refusal(graphql::BAD_REQUEST, rejection.to_string());
    let mut response = errors_only(&[error], &BTreeMap::new(), status, media, CacheStatus::Miss);
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    response
}

/// An answer of request errors: `errors` and no `data` entry at all, as the GraphQL spec asks
/// of errors raised before execution (async-graphql would write `"data": null`).
fn errors_only(
    errors: &[async_graphql::ServerError],
    extensions: &BTreeMap<String, async_graphql::Value>,
    status: StatusCode,
    media: MediaType,
    cache_status: CacheStatus,
) -> Response {
    #[derive(serde::Serialize)]
    struct RequestErrors<'a> {
        errors: &'a [async_graphql::ServerError],
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        extensions: &'a BTreeMap<String, async_graphql::Value>,
    }
    let body = serde_json::to_vec(&RequestErrors { errors, extensions })
        .expect("GraphQL errors always serialize to JSON");
    let mut response = (status, Bytes::from(body)).into_response();
    set_headers(&mut response, media, false, cache_status, None);
    response
}

/// Whether a response is a request error: nothing executed, and no error belongs to a field.
/// A field error always has a `path`, even when null propagation reached `data` itself.
fn is_request_error(response: &async_graphql::Response) -> bool {
    !response.errors.is_empty()
        && response.data == async_graphql::Value::Null
        && response.errors.iter().all(|error| error.path.is_empty())
}

/// A request that names a persisted query must reach the persisted-query store before any
/// cached answer: sent with its document, it registers the document, and a hit that skipped
/// that would leave the client's hash-only requests unknown for as long as the hit lasts.
fn names_a_persisted_query(raw: &[u8]) -> bool {
    const NAME: &[u8] = b"persistedQuery";
    raw.windows(NAME.len()).any(|window| window == NAME)
}

/// Resolves persisted queries, then answers from the response cache when the lookup was put
/// off until now, or else runs the operation and stores a clean answer.
async fn answer(
    state: &AppState,
    headers: &HeaderMap,
    arrival: Arrival,
    mut request: async_graphql::Request,
    method: Method,
) -> Response {
    let components = &state.components;
    let media = arrival.media;
    // Strangers get nothing parsed: the parser's cost grows with the document, and a caller
    // without a token or a valid client key could get no answer from amoCRM anyway.
    if let Err(error) = &arrival.credentials {
        let error = graphql::refusal(graphql::UNAUTHENTICATED, error.to_string());
        return refused(state, error, media);
    }
    let registration = match super::document::admit(
        &components.persisted,
        state.max_document_bytes,
        &mut request,
    )
    .await
    {
        Ok(registration) => registration,
        Err(super::document::Refused::Rejected(rejection)) => {
            return rejected(state, rejection, media);
        }
        Err(super::document::Refused::Persisted(error)) => return refused(state, error, media),
    };
    let mutation = graphql::is_mutation(&mut request);
    // GET must be safe: a link or a prefetch must never change anything.
    if method == Method::GET && mutation {
        return rejected(state, Rejection::MutationOverGet, media);
    }
    if arrival.registers
        && let Some(hit) = cached(state, arrival.key.as_ref(), headers, media).await
    {
        return hit;
    }
    // Kept for after the run: a forwarded token may be verified by this very request.
    let registrant = registration
        .is_some()
        .then(|| arrival.credentials.as_ref().ok().cloned())
        .flatten();
    let context = RequestContext::new(
        arrival.credentials,
        components.caches.pages.clone(),
        components.caches.entities.clone(),
        components.page_size,
    )
    .with_idempotency_key(
        headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    );
    let report: Arc<CacheReport> = context.report_handle();
    let executed = components.schema.execute(request.data(context)).await;
    if let (Some(registration), Some(credentials)) = (registration, registrant)
        && may_register(state, &credentials)
    {
        components
            .persisted
            .register(registration, &credentials.scope, credentials.token.lane())
            .await;
    }
    let ok = executed.is_ok();
    components
        .metrics
        .graphql_request(if ok { "ok" } else { "error" });
    if is_request_error(&executed) {
        let status = media.request_error_status();
        return errors_only(
            &executed.errors,
            &executed.extensions,
            status,
            media,
            report.status(),
        );
    }
    let mut body =
        serde_json::to_vec(&executed).expect("a GraphQL response always serializes to JSON");
    // Stored responses are weighed by length: their allocation must be no larger.
    body.shrink_to_fit();
    let body = Bytes::from(body);
    // A write's answer is never replayed: the same bytes again are another write.
    if ok
        && !mutation
        && report.status() != CacheStatus::Stale
        && let Some(key) = arrival.key
    {
        components
            .caches
            .responses
            .put(key, body.clone(), report.deps())
            .await;
    }
    let mut response = body.into_response();
    set_headers(
        &mut response,
        media,
        ok && !mutation,
        report.status(),
        report.fresh_for(),
    );
    response
}

/// Whether a caller may store documents: one with a client key (or any caller, where the
/// operator allowed anonymous ones), or a forwarded token amoCRM has accepted. A random
/// bearer string is neither.
fn may_register(state: &AppState, credentials: &Credentials) -> bool {
    match &*state.components.auth {
        AuthMode::ServerToken(..) => true,
        AuthMode::Forward(_) => state.components.upstream.has_accepted(&credentials.token),
    }
}

fn set_headers(
    response: &mut Response,
    media: MediaType,
    ok: bool,
    status: CacheStatus,
    fresh_for: Option<Duration>,
) {
    let cache_control = if ok {
        HeaderValue::from_str(&format!(
            "private, max-age={}",
            fresh_for.map_or(0, |f| f.as_secs())
        ))
        .expect("built from ASCII digits and words")
    } else {
        HeaderValue::from_static("no-store")
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, media.header_value());
    headers.insert(header::CACHE_CONTROL, cache_control);
    // The answer depends on the caller (its token) and on the media type its Accept chose.
    headers.insert(
        header::VARY,
        HeaderValue::from_static("Authorization, Accept"),
    );
    headers.insert(X_CACHE, HeaderValue::from_static(status.as_str()));
}
