//! HTTP: the axum router, the GraphQL handler and its headers, GraphiQL and health.
//!
//! [`Gateway::build`] binds and wires everything (so callers know the port before serving);
//! [`Gateway::run`] serves until the shutdown future resolves.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::Duration;

use async_graphql_axum::GraphQLRequest;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use bytes::Bytes;
use tokio::net::TcpListener;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::amocrm::oauth::{OAuthConfig, TokenSource};
use crate::amocrm::webhook::{self, Entity};
use crate::amocrm::{
    AccessToken, AmoClient, ClientConfig, ContactId, EntityKind, PageSize, Relation,
};
use crate::auth::{AuthMode, ClientKeys, ScopeKey, Secret, bearer_token};
use crate::cache::{
    CacheReport, CacheStatus, Caches, Freshness, Invalidation, ResponseKey, SharedConfig,
};
use crate::config::ServeConfig;
use crate::fake_amocrm::{self, FakeAmoCrm, FakeOptions};
use crate::graphql::{self, GatewaySchema, RequestContext};
use crate::metrics::Metrics;
use crate::persisted::PersistedQueries;
use crate::shared::{Redis, SharedLimiter};
use secrecy::SecretString;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// The longest duration any flag accepts: far beyond sense, far below overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

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
    #[error(
        "with --access-token anyone who reaches the gateway reads what the token sees: set \
         --client-key (GATEWAY_CLIENT_KEY), or --allow-anonymous if that is intended"
    )]
    NoClientKeys,
    #[error("{flag} ({value:?}) is longer than a year")]
    DurationTooLong { flag: &'static str, value: Duration },
    #[error("--cache-max-age ({max_age:?}) must not be shorter than --cache-ttl ({ttl:?})")]
    MaxAgeBelowTtl { max_age: Duration, ttl: Duration },
    #[error(
        "--redis-url with forwarded tokens needs --scope-secret (GATEWAY_SCOPE_SECRET), the same \
         on every replica: replicas only share what they file under the same scopes"
    )]
    ScopeSecretRequired,
    #[error(
        "--upstream-rps {rps} cannot be split over --replicas-hint {replicas} replicas: each \
         needs at least one call a second"
    )]
    RpsBelowReplicas { rps: u32, replicas: u32 },
    #[error("could not set up Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("OAuth: {0}")]
    OAuth(#[from] crate::amocrm::oauth::OAuthError),
    #[error("--persisted-queries: {0}")]
    Manifest(#[from] crate::persisted::ManifestError),
}

#[derive(Clone)]
struct AppState {
    schema: GatewaySchema,
    persisted: PersistedQueries,
    auth: Arc<AuthMode>,
    caches: Caches,
    page_size: PageSize,
    graphiql: Arc<str>,
    metrics: Metrics,
    webhook_secret: Option<Secret>,
    admin_token: Option<Secret>,
    /// Set on shutdown: `/healthz` answers 503 from then on.
    draining: Arc<AtomicBool>,
}

/// A gateway bound to its port, ready to serve.
pub struct Gateway {
    listener: TcpListener,
    router: Router,
    draining: Arc<AtomicBool>,
    drain_delay: Duration,
    shutdown_timeout: Duration,
    /// The in-process fake of `--demo`; it lives as long as the gateway.
    demo: Option<FakeAmoCrm>,
    /// Tasks that live as long as the gateway (listening to other replicas).
    background: Background,
}

/// Aborts its tasks when dropped.
#[derive(Default)]
pub struct Background(pub Vec<tokio::task::AbortHandle>);

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Gateway {
    pub async fn build(config: ServeConfig) -> Result<Gateway, StartupError> {
        let metrics = Metrics::new();
        let redis = match &config.redis_url {
            Some(url) => Some(Redis::new(
                url.expose(),
                &config.redis_prefix,
                config.redis_timeout,
                metrics.clone(),
            )?),
            None => None,
        };
        let (upstream_url, auth, demo) = if config.demo {
            let fake = FakeAmoCrm::start(([127, 0, 0, 1], 0).into(), FakeOptions::default())
                .await
                .map_err(StartupError::Demo)?;
            let url = fake
                .base_url()
                .parse()
                .map_err(|_| StartupError::NoUpstream)?;
            // The demo is for trying things out: no client keys.
            let auth = AuthMode::server_token(
                AccessToken::new(fake_amocrm::ADMIN_TOKEN),
                ClientKeys::Anyone,
            );
            (url, auth, Some(fake))
        } else {
            let url = config
                .upstream_url
                .clone()
                .ok_or(StartupError::NoUpstream)?;
            let server_token = match (&config.access_token, &config.oauth_client_id) {
                (Some(token), _) => Some(token.clone()),
                (None, Some(client_id)) => {
                    let oauth = OAuthConfig {
                        client_id: client_id.clone(),
                        client_secret: config
                            .oauth_client_secret
                            .as_ref()
                            .map(|s| SecretString::from(s.expose().to_owned()))
                            .unwrap_or_default(),
                        redirect_uri: config.oauth_redirect_uri.clone().unwrap_or_default(),
                        token_file: config.oauth_token_file.clone().unwrap_or_default(),
                    };
                    Some(AccessToken::oauth(TokenSource::load(
                        oauth,
                        &url,
                        config.upstream_timeout,
                        redis.clone(),
                        metrics.clone(),
                    )?))
                }
                (None, None) => None,
            };
            let auth = match server_token {
                Some(token) => {
                    let keys = if !config.client_keys.is_empty() {
                        ClientKeys::Required(config.client_keys.clone())
                    } else if config.allow_anonymous {
                        ClientKeys::Anyone
                    } else {
                        return Err(StartupError::NoClientKeys);
                    };
                    AuthMode::server_token(token, keys)
                }
                None if config.redis_url.is_some() && config.scope_secret.is_none() => {
                    return Err(StartupError::ScopeSecretRequired);
                }
                None => AuthMode::Forward(
                    config
                        .scope_secret
                        .as_ref()
                        .map_or_else(ScopeKey::random, |s| ScopeKey::from_secret(s.expose())),
                ),
            };
            (url, auth, None)
        };

        for (flag, value) in [
            ("--cache-ttl", config.cache_ttl),
            ("--cache-stale-ttl", config.cache_stale_ttl),
            ("--cache-max-age", config.cache_max_age),
            ("--upstream-timeout", config.upstream_timeout),
            (
                "--upstream-connect-timeout",
                config.upstream_connect_timeout,
            ),
            ("--upstream-queue-timeout", config.upstream_queue_timeout),
            ("--drain-delay", config.drain_delay),
            ("--shutdown-timeout", config.shutdown_timeout),
        ] {
            if value > MAX_DURATION {
                return Err(StartupError::DurationTooLong { flag, value });
            }
        }
        if config.cache_max_age < config.cache_ttl {
            return Err(StartupError::MaxAgeBelowTtl {
                max_age: config.cache_max_age,
                ttl: config.cache_ttl,
            });
        }
        if !crate::graphiql::embedded() {
            tracing::warn!(
                "GraphiQL's assets were not embedded in this build (run scripts/fetch-graphiql.sh, \
                 then build again): /graphiql loads them from unpkg.com, which needs internet"
            );
        }
        let replicas = config.replicas();
        if config.upstream_rps > 0 && config.upstream_rps < replicas {
            return Err(StartupError::RpsBelowReplicas {
                rps: config.upstream_rps,
                replicas,
            });
        }
        let manifest = match &config.persisted_queries {
            Some(path) => PersistedQueries::read_manifest(path)?,
            None => Default::default(),
        };
        let persisted = PersistedQueries::new(manifest, redis.clone(), config.persisted_only);
        let rate_limit = (config.upstream_rps > 0).then_some(config.upstream_rps);
        let client = AmoClient::new(
            ClientConfig {
                base_url: upstream_url,
                connect_timeout: config.upstream_connect_timeout,
                request_timeout: config.upstream_timeout,
                rate_limit,
                replicas_hint: replicas,
                shared_limiter: redis.clone().zip(rate_limit).map(|(redis, rate)| {
                    SharedLimiter::new(
                        redis,
                        rate,
                        crate::amocrm::WINDOW,
                        // One attempt holds its slot in flight for at most its timeout (a slot
                        // is taken per attempt); the margin covers a busy replica.
                        config.upstream_timeout + Duration::from_secs(5),
                    )
                }),
                queue_timeout: config.upstream_queue_timeout,
                shared_token: matches!(auth, AuthMode::ServerToken(..)),
            },
            metrics.clone(),
        )?;
        let freshness = Freshness {
            ttl: config.cache_ttl,
            stale_ttl: config.cache_stale_ttl,
            max_age: config.cache_max_age,
        };
        let header_hint = match &auth {
            AuthMode::Forward(_) => Some("Bearer <your amoCRM access token>"),
            AuthMode::ServerToken(_, ClientKeys::Required(_)) => Some("Bearer <your client key>"),
            AuthMode::ServerToken(_, ClientKeys::Anyone) => None,
        };
        let state = AppState {
            persisted,
            schema: graphql::schema(graphql::Limits {
                max_complexity: config.max_complexity,
                max_depth: config.max_depth,
                max_aliases: config.max_aliases,
                introspection: !config.disable_introspection,
            }),
            auth: Arc::new(auth),
            caches: Caches::new(
                client,
                freshness,
                config.cache_max_bytes,
                metrics.clone(),
                redis.map(|redis| SharedConfig {
                    redis,
                    // As long as the other replica's download may take.
                    lease_wait: config.upstream_queue_timeout + config.upstream_timeout,
                }),
            ),
            page_size: PageSize::new(u64::from(config.upstream_page_size)).unwrap_or(PageSize::MAX),
            graphiql: crate::graphiql::page(header_hint).into(),
            metrics,
            webhook_secret: config.webhook_secret.clone(),
            admin_token: config.admin_token.clone(),
            draining: Arc::new(AtomicBool::new(false)),
        };
        let draining = state.draining.clone();
        let background = state.caches.follow_other_replicas();
        let max_body_bytes = usize::try_from(config.max_body_bytes).unwrap_or(usize::MAX);
        let router = router(state, &config.cors_origins)?.layer(
            tower_http::limit::RequestBodyLimitLayer::new(max_body_bytes),
        );
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
            draining,
            drain_delay: config.drain_delay,
            shutdown_timeout: config.shutdown_timeout,
            demo,
            background,
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

    /// Serves until `shutdown` resolves; then drains: `/healthz` answers 503 at once while
    /// requests are still served for the drain delay (load balancers notice and stop sending),
    /// then the listener closes and in-flight requests get the shutdown timeout to finish.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // Responses go out as soon as they are written: an API answers in one burst, and Nagle's
        // wait for an ACK would only add latency.
        let listener = self.listener.tap_io(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut server = tokio::spawn(
            axum::serve(listener, self.router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .into_future(),
        );
        tokio::select! {
            // The server ended on its own (an accept loop error): nothing to drain.
            ended = &mut server => return ended.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            () = shutdown => {}
        }
        tracing::info!(drain = ?self.drain_delay, "shutting down: draining");
        self.draining.store(true, Ordering::SeqCst);
        tokio::time::sleep(self.drain_delay).await;
        let _ = stop.send(());
        let served = match tokio::time::timeout(self.shutdown_timeout, server).await {
            Ok(ended) => ended.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            Err(_) => {
                tracing::warn!("in-flight requests did not finish within the shutdown timeout");
                Ok(())
            }
        };
        drop(self.demo);
        drop(self.background);
        served
    }
}

fn router(state: AppState, cors_origins: &[String]) -> Result<Router, StartupError> {
    let mut router = Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/graphiql", get(graphiql))
        .route(
            &format!("{}/{{name}}", crate::graphiql::ASSETS_PATH),
            get(graphiql_asset),
        )
        .route("/", get(|| async { Redirect::temporary("/graphiql") }))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics));
    // These routes exist only when their secret is configured.
    if state.webhook_secret.is_some() {
        router = router.route("/webhooks/amocrm/{secret}", post(amocrm_webhook));
    }
    if state.admin_token.is_some() {
        router = router.route("/admin/cache/purge", post(purge_cache));
    }
    let mut router = router.with_state(state);
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
                tracing::info_span!("http", method = %request.method(), path = loggable_path(request.uri().path()), request_id)
            })
            // One access-log line per request, carrying the span's request id.
            .on_response(
                tower_http::trace::DefaultOnResponse::new()
                    .level(tracing::Level::INFO)
                    .latency_unit(tower_http::LatencyUnit::Micros),
            ),
        )
        // gzip or brotli, as the client's Accept-Encoding prefers: a page of contacts is JSON
        // that shrinks about tenfold.
        .layer(CompressionLayer::new().gzip(true).br(true))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
        .layer(SetRequestIdLayer::new(X_REQUEST_ID, MakeRequestUuid)))
}

/// The path for logs: never a query string (it can carry a customer's search), and never the
/// webhook secret that is part of the webhook's path.
fn loggable_path(path: &str) -> &str {
    if path.starts_with(WEBHOOK_PREFIX) {
        "/webhooks/amocrm/{secret}"
    } else {
        path
    }
}

const WEBHOOK_PREFIX: &str = "/webhooks/amocrm/";

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

async fn graphql_get(
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
            serve_graphql(state, headers, request).await
        }
        Err(error) => refused(&state, error),
    }
}

async fn graphql_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: GraphQLRequest,
) -> Response {
    serve_graphql(state, headers, request.into_inner()).await
}

/// An answer that is only an error: the operation did not run.
fn refused(state: &AppState, error: async_graphql::ServerError) -> Response {
    state.metrics.graphql_request("error");
    let body = serde_json::to_vec(&async_graphql::Response::from_errors(vec![error]))
        .expect("a GraphQL response always serializes to JSON");
    graphql_response(body.into(), false, CacheStatus::Miss, None)
}

async fn serve_graphql(
    state: AppState,
    headers: HeaderMap,
    mut request: async_graphql::Request,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let credentials = state.auth.credentials(authorization);
    // Only callers who may use the gateway store documents in it.
    let may_register = credentials.is_ok();
    if let Err(error) = state.persisted.resolve(&mut request, may_register).await {
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
        && let Some((body, fresh_for)) = state.caches.responses.get(key, &state.caches).await
    {
        state.metrics.graphql_request("cached");
        return graphql_response(body, true, CacheStatus::Hit, Some(fresh_for));
    }

    let context = RequestContext::new(
        credentials,
        state.caches.pages.clone(),
        state.caches.entities.clone(),
        state.page_size,
    );
    let report: Arc<CacheReport> = context.report_handle();
    let response = state.schema.execute(request.data(context)).await;
    let ok = response.is_ok();
    let mut body =
        serde_json::to_vec(&response).expect("a GraphQL response always serializes to JSON");
    // Stored responses are weighed by length: their allocation must be no larger.
    body.shrink_to_fit();
    let body = Bytes::from(body);
    state
        .metrics
        .graphql_request(if ok { "ok" } else { "error" });
    if ok
        && report.status() != CacheStatus::Stale
        && let Some(key) = stored_as
    {
        state
            .caches
            .responses
            .put(key, body.clone(), report.deps())
            .await;
    }
    graphql_response(body, ok, report.status(), report.fresh_for())
}

fn graphql_response(
    body: Bytes,
    ok: bool,
    status: CacheStatus,
    fresh_for: Option<Duration>,
) -> Response {
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

async fn healthz(State(state): State<AppState>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        "ok".into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    state.caches.publish_sizes().await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// amoCRM's webhooks: drop what the events make stale. Answers 200 at once, also for events
/// the gateway does not use, because amoCRM retries anything else.
async fn amocrm_webhook(
    State(state): State<AppState>,
    Path(secret): Path<String>,
    body: Bytes,
) -> Response {
    if !state
        .webhook_secret
        .as_ref()
        .is_some_and(|expected| expected.matches(&secret))
    {
        return StatusCode::NOT_FOUND.into_response();
    }
    let events = match webhook::parse(&body) {
        Ok(events) => events,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut invalidations: Vec<Invalidation> = Vec::new();
    for event in &events {
        // Adding, deleting or restoring a lead or customer changes which ids the contacts
        // linked to it embed; any event about it changes what is cached about it.
        let links_change = matches!(event.action.as_str(), "add" | "delete" | "restore");
        match event.entity {
            Entity::Contact(id) => invalidations.push(Invalidation::Contact(id)),
            Entity::Lead(id) => {
                invalidations.push(Invalidation::Entity(EntityKind::Lead, id));
                if links_change {
                    invalidations.push(Invalidation::Relation(Relation::Leads));
                }
            }
            Entity::Customer(id) => {
                invalidations.push(Invalidation::Entity(EntityKind::Customer, id));
                if links_change {
                    invalidations.push(Invalidation::Relation(Relation::Customers));
                }
            }
            Entity::Company(id) => {
                invalidations.push(Invalidation::Entity(EntityKind::Company, id))
            }
            Entity::Other => {}
        }
    }
    invalidations.sort_by_key(|i| format!("{i:?}"));
    invalidations.dedup();
    // One contact event already drops every contact page.
    if let Some(contact) = invalidations
        .iter()
        .find(|i| matches!(i, Invalidation::Contact(_)))
        .copied()
    {
        invalidations
            .retain(|i| !matches!(i, Invalidation::Contact(_) | Invalidation::Relation(_)));
        invalidations.push(contact);
    }
    for invalidation in invalidations {
        state.caches.invalidate(invalidation).await;
    }
    (StatusCode::OK, "ok").into_response()
}

#[derive(serde::Deserialize)]
struct PurgeParams {
    contact_id: Option<String>,
}

/// `POST /admin/cache/purge[?contact_id=N]`, for operators.
async fn purge_cache(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<PurgeParams>,
) -> Response {
    let authorized = bearer_token(
        headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
    )
    .is_ok_and(|token| {
        state
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
    state.caches.invalidate(invalidation).await;
    axum::Json(answer).into_response()
}

async fn graphiql(State(state): State<AppState>) -> Html<String> {
    Html(state.graphiql.to_string())
}

async fn graphiql_asset(Path(name): Path<String>) -> Response {
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
