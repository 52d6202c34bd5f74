//! Linked entities (leads, customers, companies, catalog elements) by `(scope, kind, id)`, and
//! each scope's list of users.
//!
//! An entry holds amoCRM's answer about one id: the entity, "not returned" (deleted or not
//! visible to the token), or a rights 403. All three are answers about the caller that asking
//! again within the TTL would only repeat, so all three are cached; transient failures are not.
//! Freshness follows the pages: fresh for the TTL, then served stale while one background batch
//! reloads it.
//!
//! With Redis, a batch first takes what the shared tier holds fresh for its ids, and loads only
//! the rest upstream; what it loads is stored there for the other replicas.
//!
//! - `batch`: loading a batch of ids upstream and storing the answers.
//! - `shared`: the entities' part of the Redis tier.

mod batch;
mod shared;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use moka::Expiry;
use moka::future::Cache;

use self::batch::{Batch, BatchResult, download, refresh};
use self::shared::SharedEntities;
use super::flight::Flights;
use super::pages::Freshness;
use super::{CacheReport, CacheStatus, Dep};
use crate::amocrm::{
    AmoClient, AmoError, EntityKind, MAX_FILTER_IDS, Priority, RelatedEntity, User,
};
use crate::auth::{Credentials, Scope};
use crate::metrics::{CacheName, Lookup, Metrics};
use crate::shared::Tier;
use crate::shared::tier::Generation;

const ENTRY_OVERHEAD_BYTES: usize = 256;

/// What is cached under one key.
#[derive(Debug, Clone)]
pub enum Cached {
    Entity(Arc<RelatedEntity>),
    /// A scope's users, by id.
    Users(Arc<HashMap<u64, User>>),
    /// amoCRM did not return this id.
    Missing,
    /// amoCRM refused this token the data (a problem+json 403).
    Forbidden(Arc<AmoError>),
}

/// The answer for one id within a request: a cached answer, or a failure that is not cached.
#[derive(Debug, Clone)]
pub enum Answer {
    Cached(Cached),
    Failed(Arc<AmoError>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Subject {
    Entity(EntityKind),
    Users,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntityKey {
    scope: Scope,
    subject: Subject,
    id: u64,
}

#[derive(Debug)]
struct Entry {
    value: Cached,
    validated_at: Instant,
    version: u64,
    /// Read from the shared tier: the request that brought it in reports a hit.
    from_shared_tier: bool,
}

impl Entry {
    fn weight(&self) -> usize {
        ENTRY_OVERHEAD_BYTES
            + match &self.value {
                Cached::Entity(e) => e.heap_bytes(),
                Cached::Users(users) => users
                    .values()
                    .map(|u| {
                        64 + u.name.as_ref().map_or(0, String::len)
                            + u.email.as_ref().map_or(0, String::len)
                    })
                    .sum(),
                Cached::Missing | Cached::Forbidden(_) => 0,
            }
    }
}

struct EntryExpiry(Freshness);

impl Expiry<EntityKey, Arc<Entry>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _: &EntityKey,
        entry: &Arc<Entry>,
        now: Instant,
    ) -> Option<Duration> {
        Some((entry.validated_at + self.0.ttl + self.0.stale_ttl).saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        key: &EntityKey,
        entry: &Arc<Entry>,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, entry, now)
    }
}

#[derive(Clone)]
pub struct EntityCache {
    inner: Arc<Inner>,
}

struct Inner {
    client: AmoClient,
    entries: Cache<EntityKey, Arc<Entry>>,
    flights: Arc<Flights<Batch, BatchResult>>,
    freshness: Freshness,
    epoch: AtomicU64,
    /// When each entity was last invalidated: a batch that started before must not store it.
    /// (Per entity, not the global epoch: a busy account's steady webhooks about single leads
    /// must not void every batch in flight.)
    invalidated: Cache<(Subject, u64), Instant>,
    versions: AtomicU64,
    metrics: Metrics,
    shared: Option<SharedEntities>,
}

impl EntityCache {
    pub fn new(
        client: AmoClient,
        freshness: Freshness,
        max_bytes: u64,
        metrics: Metrics,
        shared: Option<Tier>,
    ) -> Self {
        let evictions = metrics.clone();
        let entries = Cache::builder()
            .name("entities")
            .max_capacity(max_bytes)
            .weigher(|_: &EntityKey, entry: &Arc<Entry>| {
                u32::try_from(entry.weight()).unwrap_or(u32::MAX)
            })
            .expire_after(EntryExpiry(freshness))
            .support_invalidation_closures()
            .eviction_listener(move |_, _, cause| {
                if cause.was_evicted() {
                    evictions.cache_eviction(CacheName::Entities);
                }
            })
            .build();
        EntityCache {
            inner: Arc::new(Inner {
                client,
                entries,
                flights: Flights::new(),
                freshness,
                epoch: AtomicU64::new(0),
                invalidated: Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(freshness.ttl + freshness.stale_ttl)
                    .build(),
                versions: AtomicU64::new(1),
                metrics,
                shared: shared.map(|tier| SharedEntities {
                    tier,
                    keep_for: freshness.ttl + freshness.stale_ttl,
                }),
            }),
        }
    }

    /// The shared generations an invalidation must bump; empty without Redis.
    pub fn shared_generations(&self, invalidation: &super::Invalidation) -> Vec<Generation> {
        use super::Invalidation;
        match (&self.inner.shared, invalidation) {
            (Some(shared), Invalidation::All) => vec![shared.all_entities()],
            (Some(shared), Invalidation::Entity(kind, id)) => vec![shared.entity(*kind, *id)],
            _ => Vec::new(),
        }
    }

    /// amoCRM's answers about `ids` of one kind: from the cache, stale ones while a background
    /// batch reloads them, the rest in one upstream call per 250 ids (calls run concurrently).
    pub async fn entities(
        &self,
        credentials: &Credentials,
        kind: EntityKind,
        ids: &[u64],
        report: &CacheReport,
    ) -> HashMap<u64, Answer> {
        self.load(credentials, Subject::Entity(kind), ids, report)
            .await
    }

    /// The scope's users (one cached list per scope: amoCRM cannot filter users by id).
    pub async fn users(&self, credentials: &Credentials, report: &CacheReport) -> Answer {
        self.load(credentials, Subject::Users, &[0], report)
            .await
            .remove(&0)
            .unwrap_or(Answer::Cached(Cached::Missing))
    }

    /// Freshness left on `key` if that version is still cached and fresh.
    pub async fn fresh_for(&self, key: &EntityKey, version: u64) -> Option<Duration> {
        let entry = self.inner.entries.get(key).await?;
        (entry.version == version)
            .then(|| {
                (entry.validated_at + self.inner.freshness.ttl)
                    .checked_duration_since(Instant::now())
            })
            .flatten()
            .filter(|left| !left.is_zero())
    }

    /// Drops what is cached about one entity, in every scope.
    pub async fn invalidate(&self, kind: EntityKind, id: u64) {
        self.inner
            .invalidated
            .insert((Subject::Entity(kind), id), Instant::now())
            .await;
        let dropped = self.inner.entries.invalidate_entries_if(move |key, _| {
            key.id == id
                && match key.subject {
                    Subject::Entity(k) => k == kind,
                    Subject::Users => false,
                }
        });
        if dropped.is_err() {
            self.inner.entries.invalidate_all();
        }
    }

    pub fn invalidate_all(&self) {
        self.inner.epoch.fetch_add(1, Ordering::SeqCst);
        self.inner.entries.invalidate_all();
    }

    pub async fn size(&self) -> (u64, u64) {
        self.inner.entries.run_pending_tasks().await;
        (
            self.inner.entries.entry_count(),
            self.inner.entries.weighted_size(),
        )
    }

    async fn load(
        &self,
        credentials: &Credentials,
        subject: Subject,
        ids: &[u64],
        report: &CacheReport,
    ) -> HashMap<u64, Answer> {
        let inner = &self.inner;
        let now = Instant::now();
        let mut answers = HashMap::with_capacity(ids.len());
        let (mut missing, mut stale) = (Vec::new(), Vec::new());
        for &id in ids {
            let key = EntityKey {
                scope: credentials.scope.clone(),
                subject,
                id,
            };
            match inner.entries.get(&key).await {
                Some(entry) => {
                    let fresh_until = entry.validated_at + inner.freshness.ttl;
                    let status = if now < fresh_until {
                        inner.metrics.cache_lookup(CacheName::Entities, Lookup::Hit);
                        CacheStatus::Hit
                    } else {
                        inner
                            .metrics
                            .cache_lookup(CacheName::Entities, Lookup::Stale);
                        stale.push(id);
                        CacheStatus::Stale
                    };
                    report.record(
                        status,
                        fresh_until.saturating_duration_since(now),
                        Dep::Entity(key, entry.version),
                    );
                    answers.insert(id, Answer::Cached(entry.value.clone()));
                }
                None => {
                    inner
                        .metrics
                        .cache_lookup(CacheName::Entities, Lookup::Miss);
                    missing.push(id);
                }
            }
        }
        // Sorted, so that requests finding the same ids stale share one refresh.
        stale.sort_unstable();
        stale.dedup();
        for chunk in stale.chunks(MAX_FILTER_IDS) {
            let batch = Batch {
                scope: credentials.scope.clone(),
                subject,
                ids: chunk.to_vec(),
                epoch: inner.epoch.load(Ordering::SeqCst),
            };
            let (inner, credentials) = (self.inner.clone(), credentials.clone());
            self.inner
                .flights
                .join_or_spawn(batch.clone(), || refresh(inner, credentials, batch));
        }
        missing.sort_unstable();
        missing.dedup();
        let batches = missing.chunks(MAX_FILTER_IDS).map(|chunk| {
            let batch = Batch {
                scope: credentials.scope.clone(),
                subject,
                ids: chunk.to_vec(),
                epoch: inner.epoch.load(Ordering::SeqCst),
            };
            let (flight, joined) = inner.flights.join_or_start(batch.clone(), || {
                download(
                    self.inner.clone(),
                    credentials.clone(),
                    batch.clone(),
                    Priority::Foreground,
                )
            });
            if joined {
                inner.metrics.coalesced_waiter(CacheName::Entities);
            }
            async move { (batch, flight.await) }
        });
        for (batch, result) in join_all(batches).await {
            for id in batch.ids {
                let answer = match &result {
                    Ok(entries) => match entries.get(&id) {
                        Some(entry) => {
                            let key = EntityKey {
                                scope: credentials.scope.clone(),
                                subject,
                                id,
                            };
                            let status = if entry.from_shared_tier {
                                CacheStatus::Hit
                            } else {
                                CacheStatus::Miss
                            };
                            let fresh_for = (entry.validated_at + inner.freshness.ttl)
                                .saturating_duration_since(Instant::now());
                            report.record(status, fresh_for, Dep::Entity(key, entry.version));
                            Answer::Cached(entry.value.clone())
                        }
                        None => Answer::Cached(Cached::Missing),
                    },
                    Err(error) => Answer::Failed(error.clone()),
                };
                answers.insert(id, answer);
            }
        }
        answers
    }
}
