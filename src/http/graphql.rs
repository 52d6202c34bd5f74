//! `POST /graphql` and `GET /graphql`: a request becomes an async-graphql request (persisted
//! queries resolved), is answered from the response cache while what it read is unchanged, or
//! else executed with a fresh per-request context; the cache report becomes `x-cache` and
//! `Cache-Control`.

use std::sync::Arc;
use std::time::Duration;

use async_graphql_axum::GraphQLRequest;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::{AppState, X_CACHE};
use crate::cache::{CacheReport, CacheStatus, ResponseKey};
use crate::graphql::{self, RequestContext};

/// `GET /graphql?query=…&operationName=…&variables=…&extensions=…`: queries and persisted-query
/// hashes in the URL. (async-graphql's own parser reads `operation_name`, which no client sends.)
#[derive(Debug, serde::Deserialize)]
pub(super) struct GetRequest {
    #[serde(default)]
    query: String,
    #[serde(rename = "operationName", alias = "operation_name")]
    operation_name: Option<String>,
    variables: Option<String>,
    extensions: Option<String>,
}

pub(super) async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(get): Query<GetRequest>,
) -> Response {
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
            serve(state, headers, request).await
        }
        Err(error) => refused(&state, error),
    }
}

pub(super) async fn post(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: GraphQLRequest,
) -> Response {
    serve(state, headers, request.into_inner()).await
}

/// An answer that is only an error: the operation did not run.
fn refused(state: &AppState, error: async_graphql::ServerError) -> Response {
    state.components.metrics.graphql_request("error");
    let body = serde_json::to_vec(&async_graphql::Response::from_errors(vec![error]))
        .expect("a GraphQL response always serializes to JSON");
    response(body.into(), false, CacheStatus::Miss, None)
}

async fn serve(
    state: AppState,
    headers: HeaderMap,
    mut request: async_graphql::Request,
) -> Response {
    let components = &state.components;
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let credentials = components.auth.credentials(authorization);
    // Only callers who may use the gateway store documents in it.
    let may_register = credentials.is_ok();
    if let Err(error) = components
        .persisted
        .resolve(&mut request, may_register)
        .await
    {
        return refused(&state, error);
    }

    let stored_as = credentials.as_ref().ok().map(|credentials| {
        ResponseKey::new(
            &credentials.scope,
            &request.query,
            request.operation_name.as_deref(),
            &request.variables,
        )
    });
    if let Some(key) = &stored_as
        && let Some((body, fresh_for)) = components
            .caches
            .responses
            .get(key, &components.caches)
            .await
    {
        components.metrics.graphql_request("cached");
        return response(body, true, CacheStatus::Hit, Some(fresh_for));
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
        && let Some(key) = stored_as
    {
        components
            .caches
            .responses
            .put(key, body.clone(), report.deps())
            .await;
    }
    response(body, ok, report.status(), report.fresh_for())
}

fn response(body: Bytes, ok: bool, status: CacheStatus, fresh_for: Option<Duration>) -> Response {
    let cache_control = if ok {
        format!("private, max-age={}", fresh_for.map_or(0, |f| f.as_secs()))
    } else {
        "no-store".to_owned()
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&cache_control).expect("built from ASCII digits and words"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Authorization"));
    headers.insert(X_CACHE, HeaderValue::from_static(status.as_str()));
    response
}
