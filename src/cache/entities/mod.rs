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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use moka::Expiry;
use moka::future::Cache;
use serde::{Deserialize, Serialize};

use super::flight::Flights;
use super::pages::Freshness;
use super::{CacheReport, CacheStatus, Dep};
use crate::amocrm::{
    AmoClient, AmoError, EntityKind, ForbiddenReason, MAX_FILTER_IDS, Priority, RelatedEntity, User,
};
use crate::auth::{Credentials, Scope};
use crate::metrics::{CacheName, Lookup, Metrics, Refresh};
use crate::shared::tier::{Found, Generation, Slot, Stamp};
use crate::shared::{Tier, unix_millis};

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

/// An answer as the shared tier stores it.
#[derive(Serialize, Deserialize)]
enum StoredAnswer {
    Entity(RelatedEntity),
    Users(Vec<User>),
    Missing,
    /// A rights 403, with amoCRM's detail.
    Forbidden(Option<String>),
}

#[derive(Serialize, Deserialize)]
struct EntityRecord {
    /// Unix milliseconds: the same instant on every replica.
    validated_at: i64,
    answer: StoredAnswer,
}

impl EntityRecord {
    fn of(entry: &Entry) -> Option<EntityRecord> {
        let answer = match &entry.value {
            Cached::Entity(entity) => StoredAnswer::Entity(RelatedEntity::clone(entity)),
            Cached::Users(users) => StoredAnswer::Users(users.values().cloned().collect()),
            Cached::Missing => StoredAnswer::Missing,
            Cached::Forbidden(error) => match error.as_ref() {
                AmoError::Forbidden { detail, .. } => StoredAnswer::Forbidden(detail.clone()),
                _ => return None,
            },
        };
        let ago = i64::try_from(entry.validated_at.elapsed().as_millis()).unwrap_or(i64::MAX);
        Some(EntityRecord {
            validated_at: unix_millis().saturating_sub(ago),
            answer,
        })
    }

    fn into_value(self) -> Cached {
        match self.answer {
            StoredAnswer::Entity(entity) => Cached::Entity(Arc::new(entity)),
            StoredAnswer::Users(users) => {
                Cached::Users(Arc::new(users.into_iter().map(|u| (u.id, u)).collect()))
            }
            StoredAnswer::Missing => Cached::Missing,
            StoredAnswer::Forbidden(detail) => Cached::Forbidden(Arc::new(AmoError::Forbidden {
                reason: ForbiddenReason::Rights,
                detail,
            })),
        }
    }

    /// When it was validated, by this process's clock; `None` once it is no longer fresh.
    fn fresh_since(&self, ttl: Duration) -> Option<Instant> {
        let ago = Duration::from_millis(
            u64::try_from(unix_millis().saturating_sub(self.validated_at)).unwrap_or(0),
        );
        (ago < ttl)
            .then(|| Instant::now().checked_sub(ago))
            .flatten()
    }
}

/// The entities' part of the shared tier.
struct SharedEntities {
    tier: Tier,
    /// How long a per-entity or per-scope generation must outlive its last bump.
    keep_for: Duration,
}

impl SharedEntities {
    fn slot(&self, scope: &Scope, subject: Subject, id: u64) -> Slot {
        let mut generations = vec![
            self.all_entities(),
            self.tier.generation(
                format_args!("scope:{}", scope.as_str()),
                Some(self.keep_for),
            ),
        ];
        match subject {
            Subject::Entity(kind) => {
                generations.push(self.entity(kind, id));
                self.tier.slot(
                    format_args!("entity:{}:{}:{id}", scope.as_str(), kind.path()),
                    generations,
                )
            }
            Subject::Users => self
                .tier
                .slot(format_args!("users:{}", scope.as_str()), generations),
        }
    }

    fn all_entities(&self) -> Generation {
        self.tier.generation(format_args!("entities"), None)
    }

    fn entity(&self, kind: EntityKind, id: u64) -> Generation {
        self.tier.generation(
            format_args!("entity:{}:{id}", kind.path()),
            Some(self.keep_for),
        )
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

/// A batch to load: one upstream call.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Batch {
    scope: Scope,
    subject: Subject,
    ids: Vec<u64>,
    /// The invalidation epoch it started in: later requests never join earlier work.
    epoch: u64,
}

type BatchResult = Result<Arc<HashMap<u64, Arc<Entry>>>, Arc<AmoError>>;

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

/// Loads one batch and stores every answer in it.
async fn download(
    inner: Arc<Inner>,
    credentials: Credentials,
    batch: Batch,
    priority: Priority,
) -> BatchResult {
    let epoch = batch.epoch;
    let started = Instant::now();
    // With Redis: what other replicas stored fresh needs no upstream call; the rest is loaded
    // and stored there under the stamps read now.
    let mut known: Vec<(u64, Cached, Instant)> = Vec::new();
    let mut share_as: HashMap<u64, (Slot, Stamp)> = HashMap::new();
    let mut upstream = batch.clone();
    if let Some(shared) = &inner.shared {
        let slots: Vec<Slot> = batch
            .ids
            .iter()
            .map(|id| shared.slot(&batch.scope, batch.subject, *id))
            .collect();
        if let Some(found) = shared
            .tier
            .get_many::<EntityRecord>(CacheName::Entities, &slots)
            .await
        {
            upstream.ids.clear();
            for ((id, slot), found) in batch.ids.iter().zip(slots).zip(found) {
                let stamp = match found {
                    Found::Value(record, stamp) => match record.fresh_since(inner.freshness.ttl) {
                        Some(validated_at) => {
                            known.push((*id, record.into_value(), validated_at));
                            continue;
                        }
                        None => stamp,
                    },
                    Found::Absent(stamp) => stamp,
                };
                upstream.ids.push(*id);
                share_as.insert(*id, (slot, stamp));
            }
        }
    }
    let loaded: HashMap<u64, Cached> = if upstream.ids.is_empty() {
        HashMap::new()
    } else {
        match fetch(&inner, &credentials, &upstream, priority).await {
            Ok(values) => values,
            Err(error) => return Err(Arc::new(error)),
        }
    };
    let now = Instant::now();
    let values = loaded
        .into_iter()
        .map(|(id, value)| (id, value, now, false))
        .chain(
            known
                .into_iter()
                .map(|(id, value, at)| (id, value, at, true)),
        );
    let mut entries = HashMap::with_capacity(batch.ids.len());
    let mut to_share = Vec::new();
    for (id, value, validated_at, from_shared_tier) in values {
        let entry = Arc::new(Entry {
            value,
            validated_at,
            version: inner.versions.fetch_add(1, Ordering::Relaxed),
            from_shared_tier,
        });
        if let Some((slot, stamp)) = share_as.remove(&id)
            && let Some(record) = EntityRecord::of(&entry)
        {
            to_share.push((slot, stamp, record));
        }
        let invalidated_since = inner
            .invalidated
            .get(&(batch.subject, id))
            .await
            .is_some_and(|at| at >= started);
        if inner.epoch.load(Ordering::SeqCst) == epoch && !invalidated_since {
            let key = EntityKey {
                scope: batch.scope.clone(),
                subject: batch.subject,
                id,
            };
            inner.entries.insert(key.clone(), entry.clone()).await;
            if inner.epoch.load(Ordering::SeqCst) != epoch {
                inner.entries.invalidate(&key).await;
            }
        }
        entries.insert(id, entry);
    }
    if let Some(shared) = &inner.shared
        && !to_share.is_empty()
    {
        let ttl = inner.freshness.ttl + inner.freshness.stale_ttl;
        let values: Vec<_> = to_share
            .iter()
            .map(|(slot, stamp, record)| (slot, stamp, record, ttl))
            .collect();
        shared.tier.put_many(&values).await;
    }
    Ok(Arc::new(entries))
}

async fn refresh(inner: Arc<Inner>, credentials: Credentials, batch: Batch) -> BatchResult {
    let result = download(inner.clone(), credentials, batch, Priority::Background).await;
    let outcome = if result.is_ok() {
        Refresh::Downloaded
    } else {
        // Stale-if-error: the stale answers stay until their window ends.
        Refresh::Failed
    };
    inner.metrics.cache_refresh(CacheName::Entities, outcome);
    result
}

/// One upstream call for a batch: every id gets an answer, or the call failed.
async fn fetch(
    inner: &Inner,
    credentials: &Credentials,
    batch: &Batch,
    priority: Priority,
) -> Result<HashMap<u64, Cached>, AmoError> {
    let answer = match batch.subject {
        Subject::Entity(kind) => inner
            .client
            .entities(&credentials.token, kind, &batch.ids, priority)
            .await
            .map(|found| {
                let mut found: HashMap<u64, Cached> = found
                    .into_iter()
                    .map(|e| (e.id, Cached::Entity(Arc::new(e))))
                    .collect();
                found.retain(|id, _| batch.ids.contains(id));
                for id in &batch.ids {
                    found.entry(*id).or_insert(Cached::Missing);
                }
                found
            }),
        Subject::Users => inner
            .client
            .users(&credentials.token, priority)
            .await
            .map(|users| {
                let users = users.into_iter().map(|u| (u.id, u)).collect();
                HashMap::from([(0, Cached::Users(Arc::new(users)))])
            }),
    };
    match answer {
        Ok(values) => Ok(values),
        // A rights 403 is the same answer for the whole batch, and a lasting one.
        Err(
            error @ AmoError::Forbidden {
                reason: ForbiddenReason::Rights,
                ..
            },
        ) => {
            let error = Arc::new(error);
            Ok(batch
                .ids
                .iter()
                .map(|id| (*id, Cached::Forbidden(error.clone())))
                .collect())
        }
        Err(error) => Err(error),
    }
}
