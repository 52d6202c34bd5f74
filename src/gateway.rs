//! The composition root: builds the gateway's components from validated [`Settings`], in the
//! order they depend on each other, and hands them to the HTTP layer. Nothing below imports
//! it; it is the one place that knows every component.
//!
//! [`Gateway::build`] binds (so callers know the port before serving); [`Gateway::run`]
//! serves until the shutdown future resolves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use url::Url;

use crate::amocrm::oauth::TokenSource;
use crate::amocrm::{AccessToken, AmoClient, ClientConfig};
use crate::auth::{AuthMode, ClientKeys};
use crate::background::Background;
use crate::cache::{Caches, SharedConfig};
use crate::config::{ConfigError, CredentialPlan, ServeConfig, Settings, Upstream};
use crate::fake_amocrm::{self, FakeAmoCrm, FakeOptions};
use crate::http::{self, Components, Drain};
use crate::metrics::Metrics;
use crate::persisted::PersistedQueries;
use crate::shared::{Redis, SharedLimiter};

/// Why the gateway could not start: a flag (see [`ConfigError`]) or a resource.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("could not listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("could not start the demo's fake amoCRM: {0}")]
    Demo(std::io::Error),
    #[error("could not build the HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    #[error("could not set up Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("OAuth: {0}")]
    OAuth(#[from] crate::amocrm::oauth::OAuthError),
    #[error("--persisted-queries: {0}")]
    Manifest(#[from] crate::persisted::ManifestError),
}

/// A gateway bound to its port, ready to serve.
pub struct Gateway {
    listener: TcpListener,
    router: axum::Router,
    drain: Drain,
    /// The in-process fake of `--demo`; it lives as long as the gateway.
    demo: Option<FakeAmoCrm>,
    /// Tasks that live as long as the gateway (listening to other replicas).
    background: Background,
}

impl Gateway {
    pub async fn build(config: ServeConfig) -> Result<Gateway, StartupError> {
        let settings = config.validate()?;
        let metrics = Metrics::new();
        let redis = connect_redis(&settings, &metrics)?;
        let (upstream_url, demo) = upstream(&settings).await?;
        let auth = auth_mode(&settings, &upstream_url, redis.as_ref(), &metrics)?;
        let client = amocrm_client(&settings, upstream_url, &auth, redis.as_ref(), &metrics)?;
        let caches = caches(&settings, client.clone(), redis.as_ref(), &metrics);
        let live = live_hub(&settings, &caches, redis.as_ref(), &metrics);
        let services = crate::graphql::Services::new(
            client.clone(),
            caches.clone(),
            redis.clone(),
            live.clone(),
        );
        let persisted = persisted_queries(&settings, redis)?;
        let mut background = caches.follow_other_replicas();
        background.merge(live.follow_other_replicas());
        let components = Components {
            schema: crate::graphql::schema(settings.operation_limits, Some(services)),
            persisted,
            auth: Arc::new(auth),
            upstream: client,
            caches,
            live,
            page_size: settings.limits.page_size,
            metrics,
            webhook_secret: settings.webhook_secret.clone(),
            admin_token: settings.admin_token.clone(),
        };
        let (router, drain) = http::router(components, &settings);
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| StartupError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        Ok(Gateway {
            listener,
            router,
            drain,
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

    /// Serves until `shutdown` resolves, then drains (see [`http::serve`]); the demo's fake and
    /// the background tasks end with it.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let served = http::serve(self.listener, self.router, self.drain, shutdown).await;
        drop(self.demo);
        drop(self.background);
        served
    }
}

/// The live hub: its limits, and its channel to the other replicas.
fn live_hub(
    settings: &Settings,
    caches: &Caches,
    redis: Option<&Redis>,
    metrics: &Metrics,
) -> crate::live::Hub {
    let limits = crate::live::LiveLimits {
        total: crate::live::MAX_SUBSCRIPTIONS,
        per_client: crate::live::MAX_SUBSCRIPTIONS_PER_CLIENT,
        poll_interval: settings.live_poll_interval,
        // Every replica polls for its own subscribers: each takes its share of the budget.
        upstream_rps: settings
            .limits
            .rate_limit
            .map_or(0, |rps| (rps / settings.limits.replicas.max(1)).max(1)),
        // Webhooks tell of changes where they are configured; the feed is for where not.
        feed: settings.webhook_secret.is_none(),
    };
    let broadcast = redis.map(|redis| crate::shared::Broadcast::on(redis.clone(), "v1:live"));
    crate::live::Hub::new(caches.clone(), limits, broadcast, metrics.clone())
}

fn connect_redis(settings: &Settings, metrics: &Metrics) -> Result<Option<Redis>, StartupError> {
    let Some(config) = &settings.redis else {
        return Ok(None);
    };
    Ok(Some(Redis::new(
        config.url.expose(),
        &config.prefix,
        config.timeout,
        metrics.clone(),
    )?))
}

/// The account's URL, starting the built-in fake first for `--demo`.
async fn upstream(settings: &Settings) -> Result<(Url, Option<FakeAmoCrm>), StartupError> {
    match &settings.upstream {
        Upstream::Account(url) => Ok((url.clone(), None)),
        Upstream::Demo => {
            let fake = FakeAmoCrm::start(([127, 0, 0, 1], 0).into(), FakeOptions::default())
                .await
                .map_err(StartupError::Demo)?;
            let url = fake
                .base_url()
                .parse()
                .map_err(|_| StartupError::Config(ConfigError::NoUpstream))?;
            Ok((url, Some(fake)))
        }
    }
}

fn auth_mode(
    settings: &Settings,
    upstream_url: &Url,
    redis: Option<&Redis>,
    metrics: &Metrics,
) -> Result<AuthMode, StartupError> {
    Ok(match &settings.credentials {
        // The demo is for trying things out: no client keys.
        CredentialPlan::Demo => AuthMode::server_token(
            AccessToken::new(fake_amocrm::ADMIN_TOKEN),
            ClientKeys::Anyone,
        ),
        CredentialPlan::ServerToken(token, keys) => {
            AuthMode::server_token(token.clone(), keys.clone())
        }
        CredentialPlan::OAuth(oauth, keys) => {
            let source = TokenSource::load(
                oauth.clone(),
                upstream_url,
                settings.limits.timeout,
                redis.cloned(),
                metrics.clone(),
            )?;
            AuthMode::server_token(AccessToken::oauth(source), keys.clone())
        }
        CredentialPlan::Forward(key) => AuthMode::Forward(key.clone()),
    })
}

fn amocrm_client(
    settings: &Settings,
    base_url: Url,
    auth: &AuthMode,
    redis: Option<&Redis>,
    metrics: &Metrics,
) -> Result<AmoClient, StartupError> {
    let limits = settings.limits;
    let shared_limiter = redis.zip(limits.rate_limit).map(|(redis, rate)| {
        SharedLimiter::new(
            redis.clone(),
            rate,
            crate::amocrm::WINDOW,
            // One attempt holds its slot in flight for at most its timeout (a slot is taken
            // per attempt); the margin covers a busy replica.
            limits.timeout + Duration::from_secs(5),
        )
    });
    Ok(AmoClient::new(
        ClientConfig {
            base_url,
            connect_timeout: limits.connect_timeout,
            request_timeout: limits.timeout,
            rate_limit: limits.rate_limit,
            replicas_hint: limits.replicas,
            shared_limiter,
            queue_timeout: limits.queue_timeout,
            shared_token: matches!(auth, AuthMode::ServerToken(..)),
        },
        metrics.clone(),
    )?)
}

fn caches(
    settings: &Settings,
    client: AmoClient,
    redis: Option<&Redis>,
    metrics: &Metrics,
) -> Caches {
    Caches::new(
        client,
        settings.freshness,
        settings.cache_max_bytes,
        metrics.clone(),
        redis.map(|redis| SharedConfig {
            redis: redis.clone(),
            // As long as the other replica's download may take.
            lease_wait: settings.limits.queue_timeout + settings.limits.timeout,
        }),
    )
}

fn persisted_queries(
    settings: &Settings,
    redis: Option<Redis>,
) -> Result<PersistedQueries, StartupError> {
    let manifest = match &settings.persisted_queries {
        Some(path) => PersistedQueries::read_manifest(path)?,
        None => Default::default(),
    };
    Ok(PersistedQueries::new(
        manifest,
        redis,
        settings.persisted_only,
    ))
}
