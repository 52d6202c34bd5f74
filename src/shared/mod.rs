//! What replicas share through Redis (`--redis-url`). Without it nothing here exists and every
//! replica is on its own.
//!
//! - [`tier`]: the second cache tier under each replica's moka caches, with generations that
//!   void entries on invalidation and short leases that let one replica fetch for all.
//! - [`limiter`]: one sliding-log rate limit for every replica's upstream calls.
//! - [`broadcast`]: invalidations reach every replica's moka caches through pub/sub.
//!
//! Redis speeds the gateway up and keeps replicas within one budget, but it is never needed to
//! answer: every operation has a short timeout, a failure makes the caller carry on as if Redis
//! were not configured, and while Redis is down only one operation a second tries it (the rest
//! skip it at once), so an outage costs requests no latency. The first failure is logged, and
//! so is the recovery; `/metrics` counts every failure.

pub mod broadcast;
pub mod limiter;
pub mod tier;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::RedisResult;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::metrics::Metrics;

pub use broadcast::Broadcast;
pub use limiter::SharedLimiter;
pub use tier::Tier;

/// While Redis is down, one operation tries it this often; the others skip it.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// What a Redis operation is for, as the `operation` label of its error count names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Read,
    Write,
    Lease,
    Limit,
    Invalidate,
    Publish,
    Subscribe,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Lease => "lease",
            Operation::Limit => "limit",
            Operation::Invalidate => "invalidate",
            Operation::Publish => "publish",
            Operation::Subscribe => "subscribe",
        }
    }
}

/// A handle to Redis shared by the tier, the limiter and the broadcast. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    /// Multiplexed and reconnecting: one connection carries every replica's concurrent calls.
    conn: ConnectionManager,
    prefix: Arc<str>,
    timeout: Duration,
    /// Tells this replica's own broadcasts and leases apart from the others'.
    replica: Arc<str>,
    /// Whether the caches, the broadcast and the leases can use Redis.
    health: Health,
    metrics: Metrics,
}

/// Whether Redis answers one user of it. The rate limiter keeps its own: a cache read that
/// timed out on a busy replica must not switch the limiter to its fallback.
#[derive(Debug)]
pub struct Health {
    state: Mutex<HealthState>,
    /// Logged once when Redis stops answering this user, and when it answers again.
    on_down: &'static str,
    on_up: &'static str,
    /// Whether `gateway_redis_up` follows this one.
    gauge: bool,
}

#[derive(Debug)]
struct HealthState {
    up: bool,
    /// While down: when the next operation may try Redis again.
    retry_at: Instant,
}

impl Health {
    pub fn new(on_down: &'static str, on_up: &'static str, gauge: bool) -> Self {
        Health {
            state: Mutex::new(HealthState {
                up: true,
                retry_at: Instant::now(),
            }),
            on_down,
            on_up,
            gauge,
        }
    }

    /// Whether an operation should try Redis now: always while it is up; while it is down, one
    /// operation per `RETRY_EVERY`.
    fn due(&self) -> bool {
        let mut state = self.lock();
        if state.up {
            return true;
        }
        let now = Instant::now();
        if now < state.retry_at {
            return false;
        }
        state.retry_at = now + RETRY_EVERY;
        true
    }

    fn mark_up(&self, metrics: &Metrics) {
        let mut state = self.lock();
        if !state.up {
            state.up = true;
            tracing::info!("{}", self.on_up);
            if self.gauge {
                metrics.redis_up(true);
            }
        }
    }

    fn mark_down(&self, metrics: &Metrics, operation: Operation, error: &str) {
        metrics.redis_error(operation.as_str());
        let mut state = self.lock();
        state.retry_at = Instant::now() + RETRY_EVERY;
        if state.up {
            state.up = false;
            tracing::warn!(operation = operation.as_str(), error, "{}", self.on_down);
            if self.gauge {
                metrics.redis_up(false);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.inner.prefix)
            .field("replica", &self.inner.replica)
            .finish()
    }
}

impl Redis {
    /// A handle that connects on first use, so a gateway starts (and serves) while Redis is
    /// down. Fails only for a URL that is not a Redis URL.
    pub fn new(url: &str, prefix: &str, timeout: Duration, metrics: Metrics) -> RedisResult<Redis> {
        let client = redis::Client::open(url)?;
        // Responses are timed by each operation (`run_as`), so that the rate limiter can give
        // Redis longer than a cache read does.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(None)
            // Reconnecting is retried by the next operation, not inside this one: a request
            // must not wait for Redis to come back.
            .set_number_of_retries(1)
            .set_max_delay(RETRY_EVERY);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        metrics.redis_up(true);
        Ok(Redis {
            inner: Arc::new(Inner {
                client,
                conn,
                prefix: prefix.into(),
                timeout,
                replica: format!("{:016x}", rand::random::<u64>()).into(),
                health: Health::new(
                    "Redis is unavailable: this replica serves from its own caches and the \
                     upstream until it answers again",
                    "Redis answers again: sharing with the other replicas resumes",
                    true,
                ),
                metrics,
            }),
        })
    }

    /// A key under the configured prefix.
    pub fn key(&self, suffix: std::fmt::Arguments<'_>) -> String {
        format!("{}{suffix}", self.inner.prefix)
    }

    /// [`Redis::run_anyway`] with the shared health and timeout.
    pub async fn run_always<T, F>(
        &self,
        operation: Operation,
        call: impl Fn(ConnectionManager) -> F,
    ) -> Option<T>
    where
        F: Future<Output = RedisResult<T>>,
    {
        self.run_anyway(&self.inner.health, self.inner.timeout, operation, call)
            .await
    }

    pub fn replica(&self) -> &str {
        &self.inner.replica
    }

    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Runs one operation within the timeout. `None` when Redis failed, timed out, or is known
    /// to be down and not due for another try: the caller goes on without it.
    pub async fn run<T, F>(
        &self,
        operation: Operation,
        call: impl Fn(ConnectionManager) -> F,
    ) -> Option<T>
    where
        F: Future<Output = RedisResult<T>>,
    {
        self.run_as(&self.inner.health, self.inner.timeout, operation, call)
            .await
    }

    /// [`Redis::run`] for a user with its own health and timeout.
    pub async fn run_as<T, F>(
        &self,
        health: &Health,
        timeout: Duration,
        operation: Operation,
        call: impl Fn(ConnectionManager) -> F,
    ) -> Option<T>
    where
        F: Future<Output = RedisResult<T>>,
    {
        if !health.due() {
            return None;
        }
        self.run_anyway(health, timeout, operation, call).await
    }

    /// Runs one operation within the timeout even while Redis is thought to be down: for what
    /// must not be skipped (invalidations, releasing what this replica holds).
    pub async fn run_anyway<T, F>(
        &self,
        health: &Health,
        timeout: Duration,
        operation: Operation,
        call: impl Fn(ConnectionManager) -> F,
    ) -> Option<T>
    where
        F: Future<Output = RedisResult<T>>,
    {
        let metrics = &self.inner.metrics;
        let attempts = async {
            match call(self.inner.conn.clone()).await {
                // The connection broke (Redis restarted, say): the manager reconnects, and a
                // second attempt on the new connection tells whether Redis is really away.
                Err(e) if e.is_connection_dropped() || e.is_io_error() => {
                    call(self.inner.conn.clone()).await
                }
                outcome => outcome,
            }
        };
        let outcome = tokio::time::timeout(timeout, attempts).await;
        settle(health, metrics, operation, outcome)
    }

    /// A dedicated connection for pub/sub (it cannot share the multiplexed one), subscribed to
    /// `channel`, within the timeout.
    async fn subscribe(&self, channel: &str) -> Option<redis::aio::PubSub> {
        let health = &self.inner.health;
        if !health.due() {
            return None;
        }
        let attempt = async {
            let mut pubsub = self.inner.client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok(pubsub)
        };
        let outcome = tokio::time::timeout(self.inner.timeout, attempt).await;
        settle(health, &self.inner.metrics, Operation::Subscribe, outcome)
    }

    fn mark_down(&self, operation: Operation, error: &str) {
        self.inner
            .health
            .mark_down(&self.inner.metrics, operation, error);
    }
}

/// Deletes `key` in the background if it still holds `token`: a lease or lock this replica
/// took, which may have expired and been taken by another since.
pub fn release_in_background(redis: &Redis, key: String, token: String) {
    const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                             return redis.call('DEL', KEYS[1]) \
                           end \
                           return 0";
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let redis = redis.clone();
    runtime.spawn(async move {
        let script = redis::Script::new(RELEASE);
        redis
            .run_always(Operation::Lease, |mut conn| {
                let (script, key, token) = (script.clone(), key.clone(), token.clone());
                async move {
                    script
                        .key(&key)
                        .arg(&token)
                        .invoke_async::<i64>(&mut conn)
                        .await
                }
            })
            .await;
    });
}

/// What a timed Redis operation means for `health`: its value, or `None` after marking Redis
/// down.
fn settle<T>(
    health: &Health,
    metrics: &Metrics,
    operation: Operation,
    outcome: Result<RedisResult<T>, tokio::time::error::Elapsed>,
) -> Option<T> {
    let error = match outcome {
        Ok(Ok(value)) => {
            health.mark_up(metrics);
            return Some(value);
        }
        Ok(Err(error)) => error.to_string(),
        Err(_) => "timed out".to_owned(),
    };
    health.mark_down(metrics, operation, &error);
    None
}

/// Milliseconds since the Unix epoch: how replicas agree on when something happened.
pub fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Duration in milliseconds, as Redis's `PX` takes it (at least 1: 0 is an error there).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}
