//! The caches between the two boundaries: GraphQL asks them for upstream pages (and whole
//! responses), they answer from moka or call amoCRM once for all concurrent askers.
//!
//! - [`pages`]: upstream pages with stale-while-revalidate, cheap revalidation by probe,
//!   stale-if-error and relation reuse.
//! - [`responses`]: whole GraphQL responses, valid only while the pages they were built from are
//!   fresh and unchanged.
//!
//! Every key starts with the credential scope: two tokens never share an entry, because amoCRM
//! shows each user only what their rights allow. Errors are never cached.
//!
//! With Redis ([`crate::shared`]), pages and entities have a second tier shared by all
//! replicas, and an invalidation received by any replica voids the shared entries (by bumping
//! their generations) and reaches the other replicas' moka caches through pub/sub. Whole
//! responses stay per replica: they are cheap to rebuild from shared pages, and a Redis round
//! trip would cost the hot path more than it saves.

pub mod entities;
pub mod fields;
mod flight;
pub mod idempotency;
mod invalidation;
pub mod pages;
pub mod responses;
mod writes;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::watch;

pub use entities::{Answer, Cached, EntityCache, EntityKey};
pub use fields::FieldDefinitions;
pub use idempotency::{Idempotency, IdempotencyError};
pub use invalidation::Invalidation;
pub use pages::{Freshness, PageCache, PageDep};
pub use responses::{ResponseCache, ResponseKey, StoredResponse};
pub use writes::Written;

use crate::amocrm::AmoClient;
use crate::background::Background;
use crate::metrics::Metrics;
use crate::shared::broadcast::Heard;
use crate::shared::{Broadcast, Redis, Tier};

/// Shares of `--cache-max-bytes`, in percent. Pages and entities are what saves upstream calls;
/// responses only save CPU.
pub const PAGE_CACHE_SHARE_PERCENT: u64 = 60;
pub const ENTITY_CACHE_SHARE_PERCENT: u64 = 15;
pub const RESPONSE_CACHE_SHARE_PERCENT: u64 = 25;

/// Invalidations are applied together, at most once per window: each application drops every
/// response (and a contact's every page) of every scope, and costs Redis round trips, so a
/// storm of webhooks applied one by one kept the caches empty and Redis busy. The first after
/// a quiet window is applied at once.
pub const INVALIDATION_WINDOW: Duration = Duration::from_millis(100);

/// A version of cached data a response was built from: the response stays valid while every
/// one of them is cached, unchanged and fresh.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dep {
    Page(Box<PageDep>),
    Entity(EntityKey, u64),
}

impl Dep {
    pub fn heap_bytes(&self) -> usize {
        match self {
            Dep::Page(page) => page.heap_bytes(),
            Dep::Entity(..) => std::mem::size_of::<Dep>(),
        }
    }
}

/// Where a response's data came from, reported as `x-cache`. Ordered by severity: the most
/// severe status of the pages a response used is the response's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CacheStatus {
    Hit,
    Miss,
    Stale,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
        }
    }
}

/// Collects, for one GraphQL request, how its pages were obtained, how long the oldest stays
/// fresh, and which page versions it used (what a stored response depends on).
#[derive(Debug, Default)]
pub struct CacheReport(Mutex<ReportState>);

#[derive(Debug, Default)]
struct ReportState {
    status: Option<CacheStatus>,
    fresh_for: Option<Duration>,
    deps: Vec<Dep>,
    /// The same deps, for a constant-time "already recorded?": a response can read thousands.
    recorded: std::collections::HashSet<Dep>,
}

impl CacheReport {
    /// Forgets what was recorded: a subscription's context lives through many events, each
    /// answered on its own, and must not keep every entity it ever read.
    pub fn reset(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = ReportState::default();
    }

    pub(crate) fn record(&self, status: CacheStatus, fresh_for: Duration, dep: Dep) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.status = state.status.max(Some(status));
        state.fresh_for = Some(state.fresh_for.map_or(fresh_for, |f| f.min(fresh_for)));
        if state.recorded.insert(dep.clone()) {
            state.deps.push(dep);
        }
    }

    /// The overall status; a response that read no cached data is a miss.
    pub fn status(&self) -> CacheStatus {
        self.lock().status.unwrap_or(CacheStatus::Miss)
    }

    /// Freshness left on the oldest page used (zero once anything stale was served).
    pub fn fresh_for(&self) -> Option<Duration> {
        let state = self.lock();
        if state.status == Some(CacheStatus::Stale) {
            return Some(Duration::ZERO);
        }
        state.fresh_for
    }

    /// The versions of cached data the response was built from.
    pub fn deps(&self) -> Vec<Dep> {
        self.lock().deps.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReportState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The longest a write's answer waits for every replica to confirm its invalidation; past it,
/// the write answers anyway (a replica that slow is likely cut off, and then drops everything
/// when its subscription returns).
const CONFIRMATION_WAIT: Duration = Duration::from_millis(500);

/// All of the gateway's caches, sharing one memory budget.
#[derive(Clone)]
pub struct Caches {
    /// For reading written contacts back: the one call whose answer is never taken from a
    /// cache.
    client: AmoClient,
    pub pages: PageCache,
    pub entities: EntityCache,
    pub responses: ResponseCache,
    /// The account's contact field definitions, per scope.
    pub fields: FieldDefinitions,
    metrics: Metrics,
    shared: Option<Shared>,
    pending: Arc<Mutex<Pending>>,
}

/// Invalidations waiting for their window.
#[derive(Default)]
struct Pending {
    invalidations: Vec<Invalidation>,
    /// Tells when the waiting ones have been applied; `None` while none wait.
    applied: Option<watch::Receiver<bool>>,
    last_applied: Option<tokio::time::Instant>,
}

/// A broadcast: one invalidation from replicas before batching, or a batch.
#[derive(Deserialize)]
#[serde(untagged)]
enum Broadcasted {
    One(Invalidation),
    Batch(Vec<Invalidation>),
}

/// What the caches share with other replicas.
#[derive(Clone)]
struct Shared {
    tier: Tier,
    broadcast: Broadcast,
    /// After this, every value an invalidation could void has expired from Redis anyway.
    longest_life: Duration,
}

/// Redis for the caches: the shared tier, and the longest a miss waits for another replica's
/// download of the same page.
pub struct SharedConfig {
    pub redis: Redis,
    pub lease_wait: Duration,
}

impl Caches {
    pub fn new(
        client: AmoClient,
        freshness: Freshness,
        max_bytes: u64,
        metrics: Metrics,
        shared: Option<SharedConfig>,
    ) -> Self {
        let share = |percent: u64| max_bytes / 100 * percent;
        let tier = shared
            .as_ref()
            .map(|config| Tier::new(config.redis.clone(), metrics.clone()));
        Caches {
            client: client.clone(),
            pages: PageCache::new(
                client.clone(),
                freshness,
                share(PAGE_CACHE_SHARE_PERCENT),
                metrics.clone(),
                tier.clone()
                    .zip(shared.as_ref().map(|config| config.lease_wait)),
            ),
            entities: EntityCache::new(
                client.clone(),
                freshness,
                share(ENTITY_CACHE_SHARE_PERCENT),
                metrics.clone(),
                tier.clone(),
            ),
            fields: FieldDefinitions::new(client.clone()),
            responses: ResponseCache::new(
                share(RESPONSE_CACHE_SHARE_PERCENT),
                freshness.ttl,
                metrics.clone(),
            ),
            metrics,
            shared: tier.zip(shared).map(|(tier, config)| Shared {
                tier,
                broadcast: Broadcast::new(config.redis),
                longest_life: freshness.max_age.max(freshness.ttl) + freshness.stale_ttl,
            }),
            pending: Arc::default(),
        }
    }

    /// Applies `invalidations` together with those that arrive within the same window
    /// ([`INVALIDATION_WINDOW`]), and returns once they have been applied.
    pub async fn invalidate(&self, invalidations: impl IntoIterator<Item = Invalidation>) {
        let mut applied = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.invalidations.extend(invalidations);
            match &pending.applied {
                Some(applied) => applied.clone(),
                None => {
                    let (done, applied) = watch::channel(false);
                    pending.applied = Some(applied.clone());
                    let due = pending
                        .last_applied
                        .map_or_else(tokio::time::Instant::now, |at| at + INVALIDATION_WINDOW);
                    let caches = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep_until(due).await;
                        let batch = {
                            let mut pending =
                                caches.pending.lock().unwrap_or_else(|e| e.into_inner());
                            pending.applied = None;
                            pending.last_applied = Some(tokio::time::Instant::now());
                            std::mem::take(&mut pending.invalidations)
                        };
                        caches.apply(Invalidation::coalesce(batch), None).await;
                        let _ = done.send(true);
                    });
                    applied
                }
            }
        };
        // An error means the applying task ended early (a panic): nothing is left to wait for.
        let _ = applied.wait_for(|applied| *applied).await;
    }

    /// Returns once the invalidations waiting for their window (if any) have been applied.
    pub async fn settled(&self) {
        let applied = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .applied
            .clone();
        if let Some(mut applied) = applied {
            let _ = applied.wait_for(|applied| *applied).await;
        }
    }

    /// Applies `invalidations` at once, outside the batching window, and returns once they
    /// have been applied here, in Redis and in the broadcast: a write's answer must not wait
    /// for a window, nor come before its invalidation.
    pub async fn invalidate_now(&self, invalidations: Vec<Invalidation>) {
        self.apply(
            Invalidation::coalesce(invalidations),
            Some(CONFIRMATION_WAIT),
        )
        .await;
    }

    /// Applies what changed everywhere: in Redis first (once the generations moved, no replica
    /// reads the old values back into its moka), then here, then on the other replicas; one
    /// Redis round trip for the generations and one message for the whole batch.
    async fn apply(&self, invalidations: Vec<Invalidation>, confirmed_within: Option<Duration>) {
        self.metrics.invalidations_applied(invalidations.len());
        let Some(shared) = &self.shared else {
            self.invalidate_here(&invalidations).await;
            return;
        };
        let mut generations: Vec<_> = invalidations
            .iter()
            .flat_map(|invalidation| {
                let mut generations = self.pages.shared_generations(invalidation);
                generations.extend(self.entities.shared_generations(invalidation));
                generations
            })
            .collect();
        generations.dedup();
        let bumped = shared.tier.bump(&generations).await;
        // Until Redis has taken it, Redis may hold what it voids: this replica stops using
        // the tier meanwhile.
        let suspension = (!bumped).then(|| shared.tier.suspend());
        self.invalidate_here(&invalidations).await;
        let published = bumped
            && match confirmed_within {
                Some(within) => {
                    shared
                        .broadcast
                        .publish_confirmed(&invalidations, within)
                        .await
                }
                None => shared.broadcast.publish(&invalidations).await,
            };
        if published {
            return;
        }
        // Redis is away: keep trying until every value this voids would have expired anyway.
        let (shared, give_up) = (shared.clone(), Instant::now() + shared.longest_life);
        tokio::spawn(async move {
            let _suspension = suspension;
            let mut bumped = bumped;
            while Instant::now() < give_up {
                tokio::time::sleep(Duration::from_secs(1)).await;
                bumped = bumped || shared.tier.bump(&generations).await;
                if bumped && shared.broadcast.publish(&invalidations).await {
                    return;
                }
            }
        });
    }

    /// Applies other replicas' invalidations to this replica's caches until the gateway's
    /// returned handle is dropped. A gap in them (Redis was away) drops everything held here.
    pub fn follow_other_replicas(&self) -> Background {
        let mut background = Background::default();
        let Some(shared) = &self.shared else {
            return background;
        };
        let mut heard = shared.broadcast.listen::<Broadcasted>();
        let caches = self.clone();
        let task = tokio::spawn(async move {
            while let Some(heard) = heard.recv().await {
                let (message, confirm, kind) = match heard {
                    Heard::Message(message) => (Some(message), None, "message"),
                    Heard::Confirm(message, confirm) => (Some(message), Some(confirm), "message"),
                    Heard::Gap => (None, None, "gap"),
                };
                let invalidations = match message {
                    Some(Broadcasted::One(invalidation)) => vec![invalidation],
                    Some(Broadcasted::Batch(invalidations)) => invalidations,
                    None => vec![Invalidation::All],
                };
                caches.invalidate_here(&invalidations).await;
                if let Some(confirm) = confirm {
                    confirm.send().await;
                }
                caches.metrics.broadcast_applied(kind);
            }
        });
        background.hold(&task);
        background
    }

    /// Drops what `invalidations` void from this replica's moka caches.
    async fn invalidate_here(&self, invalidations: &[Invalidation]) {
        tracing::info!(
            count = invalidations.len(),
            first = ?invalidations.first(),
            "invalidating cached data"
        );
        for invalidation in invalidations {
            match *invalidation {
                Invalidation::All => {
                    self.pages.invalidate_all();
                    self.entities.invalidate_all();
                    self.fields.invalidate_all();
                }
                Invalidation::Contact(_) => self.pages.invalidate_all(),
                Invalidation::Relation(relation) => self.pages.invalidate_embedding(relation),
                Invalidation::Entity(kind, id) => self.entities.invalidate(kind, id).await,
            }
        }
        // Responses also check their pages on every hit; dropping them here frees their
        // memory at once.
        self.responses.invalidate_all();
    }

    /// Publishes entry counts and weights to the metrics.
    pub async fn publish_sizes(&self) {
        let (entries, bytes) = self.pages.size().await;
        self.metrics
            .cache_size(crate::metrics::CacheName::Pages, entries, bytes);
        let (entries, bytes) = self.entities.size().await;
        self.metrics
            .cache_size(crate::metrics::CacheName::Entities, entries, bytes);
        let (entries, bytes) = self.responses.size().await;
        self.metrics
            .cache_size(crate::metrics::CacheName::Responses, entries, bytes);
    }
}
