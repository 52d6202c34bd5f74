//! `POST /graphql` and `GET /graphql`. A request is first looked up in the response cache by
//! its bytes as received (scope, method, content type, body or query string), before any
//! parsing; a hit is answered with the stored bytes, compressed once per entry and encoding.
//! Otherwise it becomes an async-graphql request (persisted queries resolved), runs with a
//! fresh per-request context, and the cache report becomes `x-cache` and `Cache-Control`.

use std::sync::Arc;
use std::time::Duration;

use async_graphql::http::MultipartOptions;
use async_graphql_axum::rejection::GraphQLRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::encoding;
use super::{AppState, X_CACHE};
use crate::auth::{AuthError, Credentials};
use crate::cache::{CacheReport, CacheStatus, ResponseKey};
use crate::graphql::{self, RequestContext};

/// `GET /graphql?query=…&operationName=…&variables=…&extensions=…`: queries and persisted-query
/// hashes in the URL. (async-graphql's own parser reads `operation_name`, which no client sends.)
#[derive(Debug, serde::Deserialize)]
struct GetRequest {
    #[serde(default)]
    query: String,
    #[serde(rename = "operationName", alias = "operation_name")]
    operation_name: Option<String>,
    variables: Option<String>,
    extensions: Option<String>,
}

pub(super) async fn get(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let credentials = credentials(&state, &headers);
    let raw_query = uri.query().unwrap_or_default();
    let key = cache_key(&credentials, &[b"GET", raw_query.as_bytes()]);
    let registers = names_a_persisted_query(raw_query.as_bytes());
    if !registers && let Some(hit) = cached(&state, key.as_ref(), &headers).await {
        return hit;
    }
    let get = match Query::<GetRequest>::try_from_uri(&uri) {
        Ok(Query(get)) => get,
        Err(rejection) => return rejection.into_response(),
    };
    let mut request = async_graphql::Request::new(get.query);
    request.operation_name = get.operation_name;
    let json = |parameter: &str, text: Option<String>| {
        text.map(|t| serde_json::from_str::<serde_json::Value>(&t))
            .transpose()
            .map_err(|e| {
                graphql::refusal(
                    graphql::BAD_USER_INPUT,
                    format!("{parameter}: must be JSON ({e})"),
                )
            })
    };
    let parsed = json("variables", get.variables)
        .and_then(|variables| Ok((variables, json("extensions", get.extensions)?)));
    match parsed {
        Ok((variables, extensions)) => {
            if let Some(variables) = variables {
                request.variables = async_graphql::Variables::from_json(variables);
            }
            if let Some(extensions) = extensions {
                match serde_json::from_value(extensions) {
                    Ok(extensions) => request.extensions = extensions,
                    Err(e) => {
                        return refused(
                            &state,
                            graphql::refusal(
                                graphql::BAD_USER_INPUT,
                                format!("extensions: must be a JSON object ({e})"),
                            ),
                        );
                    }
                }
            }
            answer(&state, &headers, credentials, key, registers, request).await
        }
        Err(error) => refused(&state, error),
    }
}

pub(super) async fn post(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let credentials = credentials(&state, &headers);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let key = cache_key(
        &credentials,
        &[b"POST", content_type.unwrap_or_default().as_bytes(), &body],
    );
    let registers = names_a_persisted_query(&body);
    if !registers && let Some(hit) = cached(&state, key.as_ref(), &headers).await {
        return hit;
    }
    // As async-graphql-axum's extractor parses, with the same rejections.
    let parsed = async_graphql::http::receive_batch_body(
        content_type.map(str::to_owned),
        futures::io::Cursor::new(body),
        MultipartOptions::default(),
    )
    .await
    .and_then(async_graphql::BatchRequest::into_single);
    match parsed {
        Ok(request) => answer(&state, &headers, credentials, key, registers, request).await,
        Err(error) => GraphQLRejection(error).into_response(),
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
) -> Option<Response> {
    let caches = &state.components.caches;
    let (stored, fresh_for) = caches.responses.get(key?, caches).await?;
    state.components.metrics.graphql_request("cached");
    let compressed = encoding::preferred(headers).and_then(|encoding| {
        let body = stored.derived(encoding.form(), |body| encoding.compress(body))?;
        Some((encoding, body))
    });
    let Some((encoding, body)) = compressed else {
        let mut response = stored.body().clone().into_response();
        set_headers(&mut response, true, CacheStatus::Hit, Some(fresh_for));
        return Some(response);
    };
    let mut response = body.into_response();
    set_headers(&mut response, true, CacheStatus::Hit, Some(fresh_for));
    // Marked as encoded, the compression layer passes it through as it is.
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_ENCODING, encoding.header_value());
    headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    Some(response)
}

/// An answer that is only an error: the operation did not run.
fn refused(state: &AppState, error: async_graphql::ServerError) -> Response {
    state.components.metrics.graphql_request("error");
    let body = serde_json::to_vec(&async_graphql::Response::from_errors(vec![error]))
        .expect("a GraphQL response always serializes to JSON");
    let mut response = Bytes::from(body).into_response();
    set_headers(&mut response, false, CacheStatus::Miss, None);
    response
}

/// A request that names a persisted query must reach the persisted-query store before any
/// cached answer: sent with its document, it registers the document, and a hit that skipped
/// that would leave the client's hash-only requests unknown for as long as the hit lasts.
fn names_a_persisted_query(raw: &[u8]) -> bool {
    const NAME: &[u8] = b"persistedQuery";
    raw.windows(NAME.len()).any(|window| window == NAME)
}

/// Resolves persisted queries, then answers from the response cache when `look_up` (the
/// lookup was put off until now), or else runs the operation and stores a clean answer.
async fn answer(
    state: &AppState,
    headers: &HeaderMap,
    credentials: Result<Credentials, AuthError>,
    key: Option<ResponseKey>,
    look_up: bool,
    mut request: async_graphql::Request,
) -> Response {
    let components = &state.components;
    // Only callers who may use the gateway store documents in it.
    let may_register = credentials.is_ok();
    if let Err(error) = components
        .persisted
        .resolve(&mut request, may_register)
        .await
    {
        return refused(state, error);
    }
    if look_up && let Some(hit) = cached(state, key.as_ref(), headers).await {
        return hit;
    }
    let context = RequestContext::new(
        credentials,
        components.caches.pages.clone(),
        components.caches.entities.clone(),
        components.page_size,
    );
    let report: Arc<CacheReport> = context.report_handle();
    let executed = components.schema.execute(request.data(context)).await;
    let ok = executed.is_ok();
    let mut body =
        serde_json::to_vec(&executed).expect("a GraphQL response always serializes to JSON");
    // Stored responses are weighed by length: their allocation must be no larger.
    body.shrink_to_fit();
    let body = Bytes::from(body);
    components
        .metrics
        .graphql_request(if ok { "ok" } else { "error" });
    if ok
        && report.status() != CacheStatus::Stale
        && let Some(key) = key
    {
        components
            .caches
            .responses
            .put(key, body.clone(), report.deps())
            .await;
    }
    let mut response = body.into_response();
    set_headers(&mut response, ok, report.status(), report.fresh_for());
    response
}

fn set_headers(
    response: &mut Response,
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
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, cache_control);
    headers.insert(header::VARY, HeaderValue::from_static("Authorization"));
    headers.insert(X_CACHE, HeaderValue::from_static(status.as_str()));
}
