//! The HTTP layer: the router, its middleware stack, and serving (bounded connections, a
//! header-read timeout) with a graceful drain. The
//! handlers, one file per concern, only translate HTTP to calls on the [`Components`] the
//! composition root built, and back. Nothing below this layer imports it.
//!
//! - [`graphql`]: `POST` and `GET /graphql` (APQ, the response cache, response headers);
//!   [`request`]: what a GraphQL-over-HTTP request must look like, and the refusals of those
//!   that do not; [`negotiation`]: the media type answered with, from `Accept`;
//!   [`encoding`]: stored responses compressed once, as the client prefers.
//! - [`webhooks`]: amoCRM's webhooks. [`admin`]: the cache purge.
//! - [`health`]: `/healthz` and `/metrics`. [`playground`]: GraphiQL and its assets.

mod admin;
mod document;
mod encoding;
mod graphql;
mod health;
mod live;
mod negotiation;
mod playground;
mod request;
mod request_id;
mod webhooks;
mod websocket;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, MatchedPath, State};
use axum::http::{HeaderMap, HeaderName, Method, Request, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::amocrm::{AmoClient, PageSize};
use crate::auth::{AuthMode, ClientKeys, Secret};
use crate::cache::Caches;
use crate::config::{CorsOrigins, Settings};
use crate::graphql::GatewaySchema;
use crate::metrics::Metrics;
use crate::persisted::PersistedQueries;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// What the handlers call: built by the composition root, shared by every request.
#[derive(Clone)]
pub struct Components {
    pub schema: GatewaySchema,
    pub persisted: PersistedQueries,
    pub auth: Arc<AuthMode>,
    /// The amoCRM client, for what it knows of forwarded tokens (which it has accepted).
    pub upstream: AmoClient,
    pub caches: Caches,
    /// Subscribers, told of what webhooks say changed.
    pub live: crate::live::Hub,
    pub page_size: PageSize,
    pub metrics: Metrics,
    pub webhook_secret: Option<Secret>,
    pub admin_token: Option<Secret>,
}

/// The handlers' state. axum clones it for every request, so it is one `Arc`: cloning the
/// components themselves (a dozen reference counts, moka handles among them) showed up in the
/// hot path's profile.
#[derive(Clone)]
struct AppState(Arc<Shared>);

/// The components, and what the HTTP layer keeps of its own.
struct Shared {
    components: Components,
    graphiql: Arc<str>,
    /// Set on shutdown: `/healthz` answers 503 from then on.
    draining: Arc<AtomicBool>,
    /// `--max-document-bytes`: checked before a document reaches the parser.
    max_document_bytes: usize,
    /// Turns true when the gateway stops serving: open subscriptions end then.
    closing: tokio::sync::watch::Receiver<bool>,
    /// `--live-keep-alive`: how often idle subscriptions hear from the gateway.
    keep_alive: std::time::Duration,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// How the server holds its connections, and winds down on shutdown (see [`serve`]).
pub struct Drain {
    draining: Arc<AtomicBool>,
    /// Ends the open subscriptions (upgraded connections are not the server's to wait for).
    closing: tokio::sync::watch::Sender<bool>,
    delay: Duration,
    timeout: Duration,
    connections: ConnectionLimits,
}

/// What one client may hold of the server: slow or idle connections are closed, and the
/// number open at once is capped, so a slowloris cannot take every file descriptor.
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    max: usize,
    /// Also bounds the idle time of a kept-alive connection: hyper starts it as soon as the
    /// connection waits for its next request.
    header_read_timeout: Duration,
}

/// How long the connection-limit warning stays quiet after it was logged, while the limit
/// holds: a steady flood would otherwise log a line per connection.
const LIMIT_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The router with its middleware stack, and the drain that [`serve`] runs on shutdown.
pub fn router(components: Components, settings: &Settings) -> (Router, Drain) {
    let header_hint = match components.auth.as_ref() {
        AuthMode::Forward(_) => Some("Bearer <your amoCRM access token>"),
        AuthMode::ServerToken(_, ClientKeys::Required(_)) => Some("Bearer <your client key>"),
        AuthMode::ServerToken(_, ClientKeys::Anyone) => None,
    };
    let draining = Arc::new(AtomicBool::new(false));
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let drain = Drain {
        draining: draining.clone(),
        closing: closing_tx,
        delay: settings.drain_delay,
        timeout: settings.shutdown_timeout,
        connections: ConnectionLimits {
            max: settings.max_connections,
            header_read_timeout: settings.header_read_timeout,
        },
    };
    let state = AppState(Arc::new(Shared {
        graphiql: crate::graphiql::page(header_hint).into(),
        draining,
        max_document_bytes: settings.max_document_bytes,
        closing,
        keep_alive: settings.live_keep_alive,
        components,
    }));
    let mut router = Router::new()
        .route("/graphql", get(get_graphql).post(post_graphql))
        .merge(playground::routes())
        .merge(health::routes());
    // These routes exist only when their secret is configured.
    if state.components.webhook_secret.is_some() {
        router = router.merge(webhooks::routes());
    }
    if state.components.admin_token.is_some() {
        router = router.merge(admin::routes());
    }
    let mut router = router.with_state(state);
    if let Some(cors) = cors(&settings.cors) {
        router = router.layer(cors);
    }
    let router = router
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    let request_id = request
                        .headers()
                        .get(&X_REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    tracing::info_span!(
                        "http",
                        method = %request.method(),
                        // The route's template, never the raw path: that can carry a
                        // search, or the webhook secret, also in near misses of its route.
                        path = request
                            .extensions()
                            .get::<MatchedPath>()
                            .map_or("<no route>", MatchedPath::as_str),
                        request_id
                    )
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
        .layer(SetRequestIdLayer::new(
            X_REQUEST_ID,
            request_id::RandomRequestId,
        ))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            settings.max_body_bytes,
        ));
    (router, drain)
}

/// `GET /graphql`: a query, or a WebSocket for subscriptions.
async fn get_graphql(
    State(state): State<AppState>,
    request: Request<axum::body::Body>,
) -> Response {
    let (mut parts, _) = request.into_parts();
    if websocket::is_upgrade(&parts.headers) {
        let permit = parts.extensions.get::<ConnectionPermit>().cloned();
        return match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
            Ok(upgrade) => websocket::upgrade(state, parts.headers, upgrade, permit),
            Err(rejection) => rejection.into_response(),
        };
    }
    graphql::get(State(state), parts.headers, parts.uri).await
}

/// `POST /graphql`: an operation, answered as JSON or (for `text/event-stream`) as events.
async fn post_graphql(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if live::wants_event_stream(&headers) {
        return live::event_stream(state, headers, body).await;
    }
    graphql::post(State(state), headers, body).await
}

/// Serves until `shutdown` resolves; then drains: `/healthz` answers 503 at once while
/// requests are still served for the drain delay (load balancers notice and stop sending),
/// then the listener closes and in-flight requests get the shutdown timeout to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    drain: Drain,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(accept(listener, router, drain.connections, async {
        let _ = stopped.await;
    }));
    tokio::select! {
        // The server ended on its own (an accept loop error): nothing to drain.
        ended = &mut server => return ended.unwrap_or_else(|e| Err(std::io::Error::other(e))),
        () = shutdown => {}
    }
    tracing::info!(drain = ?drain.delay, "shutting down: draining");
    drain.draining.store(true, Ordering::SeqCst);
    tokio::time::sleep(drain.delay).await;
    let _ = stop.send(());
    let _ = drain.closing.send(true);
    match tokio::time::timeout(drain.timeout, server).await {
        Ok(ended) => ended.unwrap_or_else(|e| Err(std::io::Error::other(e))),
        Err(_) => {
            tracing::warn!("in-flight requests did not finish within the shutdown timeout");
            Ok(())
        }
    }
}

/// Accepts connections until `stop` resolves, at most `limits.max` open at once, and serves
/// each with HTTP/1.1 (what axum::serve did, but with the timer that hyper's header-read
/// timeout needs). Then it waits for the open connections to finish their requests.
async fn accept(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max));
    // Told to open connections when the server stops: each finishes its request and closes.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut last_warning: Option<tokio::time::Instant> = None;
    tokio::pin!(stop);
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if last_warning.is_none_or(|at| at.elapsed() >= LIMIT_WARNING_INTERVAL) {
                    tracing::warn!(
                        max_connections = limits.max,
                        "connection limit reached: new connections wait until one closes \
                         (--max-connections)"
                    );
                    last_warning = Some(tokio::time::Instant::now());
                }
                tokio::select! {
                    permit = permits.clone().acquire_owned() => permit.map_err(std::io::Error::other)?,
                    () = &mut stop => break,
                }
            }
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if accept_failed(&e, &mut stop).await => break,
                Err(_) => continue,
            },
            () = &mut stop => break,
        };
        // Responses go out as soon as they are written: an API answers in one burst, and
        // Nagle's wait for an ACK would only add latency.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        // With upgrades: a subscription's WebSocket leaves hyper for its own task, and takes
        // the connection's permit along (see `ConnectionPermit`).
        let permit = ConnectionPermit(Arc::new(permit));
        let service = {
            let permit = permit.clone();
            tower::util::MapRequest::new(router.clone(), move |mut request: Request<_>| {
                request.extensions_mut().insert(permit.clone());
                request
            })
        };
        let connection = http
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
            .with_upgrades();
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = async { let _ = stopping.wait_for(|stopping| *stopping).await; } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            // Timeouts and resets end connections all the time: worth a debug line only.
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    // Every connection has returned its permit once it has finished.
    let all = u32::try_from(limits.max).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
    Ok(())
}

/// A connection's place under `--max-connections`. An upgraded connection (a WebSocket) leaves
/// hyper, so its task holds the permit until it closes: it counts, and the server's shutdown
/// waits for it.
#[derive(Clone)]
pub(super) struct ConnectionPermit(
    #[allow(dead_code, reason = "held for its Drop")] Arc<tokio::sync::OwnedSemaphorePermit>,
);

/// A failed accept: a connection that went away before it was taken costs nothing, but
/// anything else (no file descriptors left) would fail again at once, so the loop pauses.
/// True when `stop` resolved meanwhile.
async fn accept_failed(
    error: &std::io::Error,
    stop: &mut (impl std::future::Future<Output = ()> + Unpin),
) -> bool {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return false;
    }
    tracing::error!(error = %error, "accepting a connection failed; pausing for a second");
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(1)) => false,
        () = stop => true,
    }
}

fn cors(origins: &CorsOrigins) -> Option<CorsLayer> {
    let allow_origin = match origins {
        CorsOrigins::None => return None,
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(origins) => AllowOrigin::list(origins.iter().cloned()),
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, X_REQUEST_ID])
            .expose_headers([X_CACHE, X_REQUEST_ID]),
    )
}
