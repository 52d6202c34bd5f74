//! HTTP: the axum router, the GraphQL handler and its headers, GraphiQL and health.
//!
//! [`Gateway::build`] binds and wires everything (so callers know the port before serving);
//! [`Gateway::run`] serves until the shutdown future resolves.

use std::net::SocketAddr;
use std::sync::Arc;

use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::amocrm::{AccessToken, AmoClient, ClientConfig, PageSize};
use crate::auth::{AuthMode, ScopeKey};
use crate::cache::{PAGE_CACHE_SHARE_PERCENT, PageCache};
use crate::config::ServeConfig;
use crate::fake_amocrm::{self, FakeAmoCrm, FakeOptions};
use crate::graphql::{self, GatewaySchema, RequestContext};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// The example GraphiQL opens with: contacts with their leads, paged with variables.
const EXAMPLE_QUERY: &str = r#"# Contacts with their leads, newest changes first.
# Run it, then put pageInfo.endCursor into "after" for the next page.
query Contacts($first: Int = 10, $after: String) {
  contacts(first: $first, after: $after, order: { field: UPDATED_AT, direction: DESC }) {
    pageInfo { hasNextPage endCursor }
    nodes {
      id
      name
      updatedAt
      tags { name }
      customFieldsValues { fieldCode values { value enumCode } }
      leads { id }
    }
  }
}
"#;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("no amoCRM account: set --upstream-url (AMOCRM_BASE_URL), or use --demo")]
    NoUpstream,
    #[error("could not listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("could not start the demo's fake amoCRM: {0}")]
    Demo(std::io::Error),
    #[error("could not build the HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    #[error("invalid --cors-origin {0:?}: must be an origin such as https://app.example.com, or *")]
    CorsOrigin(String),
}

#[derive(Clone)]
struct AppState {
    schema: GatewaySchema,
    auth: Arc<AuthMode>,
    pages: PageCache,
    page_size: PageSize,
    graphiql: Arc<str>,
}

/// A gateway bound to its port, ready to serve.
pub struct Gateway {
    listener: TcpListener,
    router: Router,
    /// The in-process fake of `--demo`; it lives as long as the gateway.
    demo: Option<FakeAmoCrm>,
}

impl Gateway {
    pub async fn build(config: ServeConfig) -> Result<Gateway, StartupError> {
        let (upstream_url, auth, demo) = if config.demo {
            let fake = FakeAmoCrm::start(([127, 0, 0, 1], 0).into(), FakeOptions::default())
                .await
                .map_err(StartupError::Demo)?;
            let url = fake
                .base_url()
                .parse()
                .map_err(|_| StartupError::NoUpstream)?;
            let auth = AuthMode::server_token(AccessToken::new(fake_amocrm::ADMIN_TOKEN));
            (url, auth, Some(fake))
        } else {
            let url = config
                .upstream_url
                .clone()
                .ok_or(StartupError::NoUpstream)?;
            let auth = match &config.access_token {
                Some(token) => AuthMode::server_token(token.clone()),
                None => AuthMode::Forward(
                    config
                        .scope_secret
                        .as_ref()
                        .map_or_else(ScopeKey::random, |s| ScopeKey::from_secret(s.expose())),
                ),
            };
            (url, auth, None)
        };

        let client = AmoClient::new(ClientConfig {
            base_url: upstream_url,
            connect_timeout: config.upstream_connect_timeout,
            request_timeout: config.upstream_timeout,
        })?;
        let page_budget = config.cache_max_bytes / 100 * PAGE_CACHE_SHARE_PERCENT;
        let forwarding = matches!(auth, AuthMode::Forward(_));
        let state = AppState {
            schema: graphql::schema(),
            auth: Arc::new(auth),
            pages: PageCache::new(client, config.cache_ttl, page_budget),
            page_size: PageSize::new(u64::from(config.upstream_page_size)).unwrap_or(PageSize::MAX),
            graphiql: graphiql_page(forwarding).into(),
        };
        let router = router(state, &config.cors_origins)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartupError::Bind {
                    addr: config.listen,
                    source,
                })?;
        Ok(Gateway {
            listener,
            router,
            demo,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// Whether this gateway serves the built-in fake (`--demo`).
    pub fn is_demo(&self) -> bool {
        self.demo.is_some()
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await;
        drop(self.demo);
        served
    }
}

fn router(state: AppState, cors_origins: &[String]) -> Result<Router, StartupError> {
    let mut router = Router::new()
        .route("/graphql", get(graphql_handler).post(graphql_handler))
        .route("/graphiql", get(graphiql))
        .route("/", get(|| async { Redirect::temporary("/graphiql") }))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state);
    if !cors_origins.is_empty() {
        router = router.layer(cors(cors_origins)?);
    }
    Ok(router
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                let request_id = request
                    .headers()
                    .get(&X_REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                // The path only: a GET query string can carry a customer's search text.
                tracing::info_span!("http", method = %request.method(), path = request.uri().path(), request_id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
        .layer(SetRequestIdLayer::new(X_REQUEST_ID, MakeRequestUuid)))
}

fn cors(origins: &[String]) -> Result<CorsLayer, StartupError> {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o.trim_end_matches('/'))
                    .ok()
                    .filter(|_| o.starts_with("http://") || o.starts_with("https://"))
                    .ok_or_else(|| StartupError::CorsOrigin(o.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    Ok(CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, X_REQUEST_ID])
        .expose_headers([X_CACHE, X_REQUEST_ID]))
}

async fn graphql_handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: GraphQLRequest,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let context = RequestContext::new(
        state.auth.credentials(authorization),
        state.pages.clone(),
        state.page_size,
    );
    let report = context.report_handle();
    let response = state
        .schema
        .execute(request.into_inner().data(context))
        .await;

    let cache_control = if response.is_ok() {
        let max_age = report.fresh_for().map_or(0, |fresh| fresh.as_secs());
        format!("private, max-age={max_age}")
    } else {
        "no-store".to_owned()
    };
    let mut http = GraphQLResponse::from(response).into_response();
    let headers = http.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&cache_control).expect("built from ASCII digits and words"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Authorization"));
    headers.insert(X_CACHE, HeaderValue::from_static(report.status().as_str()));
    http
}

async fn graphiql(State(state): State<AppState>) -> Html<String> {
    Html(state.graphiql.to_string())
}

fn graphiql_page(forwarding: bool) -> String {
    let headers = if forwarding {
        r#"{ "Authorization": "Bearer <your amoCRM access token>" }"#
    } else {
        ""
    };
    let config = serde_json::json!({
        "endpoint": "/graphql",
        "query": EXAMPLE_QUERY,
        "variables": "{ \"first\": 10 }",
        "headers": headers,
    });
    // `</` must not close the script element the config is embedded in.
    let config = config.to_string().replace("</", "<\\/");
    include_str!("graphiql.html").replace("__CONFIG__", &config)
}
