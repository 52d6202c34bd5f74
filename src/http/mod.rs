//! The HTTP layer: the router, its middleware stack, and serving with a graceful drain. The
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
mod encoding;
mod graphql;
mod health;
mod negotiation;
mod playground;
mod request;
mod request_id;
mod webhooks;

use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::MatchedPath;
use axum::http::{HeaderName, Method, Request, header};
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
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
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// How the server winds down on shutdown (see [`serve`]).
pub struct Drain {
    draining: Arc<AtomicBool>,
    delay: Duration,
    timeout: Duration,
}

/// The router with its middleware stack, and the drain that [`serve`] runs on shutdown.
pub fn router(components: Components, settings: &Settings) -> (Router, Drain) {
    let header_hint = match components.auth.as_ref() {
        AuthMode::Forward(_) => Some("Bearer <your amoCRM access token>"),
        AuthMode::ServerToken(_, ClientKeys::Required(_)) => Some("Bearer <your client key>"),
        AuthMode::ServerToken(_, ClientKeys::Anyone) => None,
    };
    let draining = Arc::new(AtomicBool::new(false));
    let drain = Drain {
        draining: draining.clone(),
        delay: settings.drain_delay,
        timeout: settings.shutdown_timeout,
    };
    let state = AppState(Arc::new(Shared {
        graphiql: crate::graphiql::page(header_hint).into(),
        draining,
        components,
    }));
    let mut router = Router::new()
        .route("/graphql", get(graphql::get).post(graphql::post))
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

/// Serves until `shutdown` resolves; then drains: `/healthz` answers 503 at once while
/// requests are still served for the drain delay (load balancers notice and stop sending),
/// then the listener closes and in-flight requests get the shutdown timeout to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    drain: Drain,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Responses go out as soon as they are written: an API answers in one burst, and Nagle's
    // wait for an ACK would only add latency.
    let listener = listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(
        axum::serve(listener, router)
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
    tracing::info!(drain = ?drain.delay, "shutting down: draining");
    drain.draining.store(true, Ordering::SeqCst);
    tokio::time::sleep(drain.delay).await;
    let _ = stop.send(());
    match tokio::time::timeout(drain.timeout, server).await {
        Ok(ended) => ended.unwrap_or_else(|e| Err(std::io::Error::other(e))),
        Err(_) => {
            tracing::warn!("in-flight requests did not finish within the shutdown timeout");
            Ok(())
        }
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
