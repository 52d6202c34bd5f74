//! Upstream pages by `(scope, list, page, limit)`.
//!
//! An entry is fresh for `ttl` after it was last validated, then servable stale for `stale_ttl`
//! while one background refresh revalidates it, and never kept longer than `max_age` after its
//! last full download (deletions are invisible to the probe, so only a download proves them).
//!
//! The relation set is not part of the key: an entry records the relations it was fetched
//! with, and answers any request that needs a subset of them.
//!
//! With Redis, a miss looks in the shared tier before calling amoCRM, and what this replica
//! downloads or revalidates is stored there for the others, with its freshness as wall-clock
//! times. Concurrent misses of one page on several replicas make one upstream call: the first
//! takes the page's lease, the others wait for its value.
//!
//! - `entry`: one cached page, its freshness arithmetic, expiry and weight.
//! - `refresh`: stale-while-revalidate: probes, their remembered outcomes, stale-if-error.
//! - `shared`: the pages' part of the Redis tier.

mod entry;
mod refresh;
mod shared;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::future::Cache;

use self::entry::{PageEntry, PageExpiry};
use self::refresh::ProbeSlot;
use self::shared::{PageRecord, SharedPages};
use super::flight::Flights;
use super::{CacheReport, CacheStatus, Dep};
use crate::amocrm::{
    AmoClient, AmoError, Contact, ContactId, ContactList, ContactsPage, ContactsQuery, PageSize,
    Priority, Relation, Relations,
};
use crate::auth::{Credentials, Scope};
use crate::metrics::{CacheName, Lookup, Metrics};
use crate::shared::Tier;
use crate::shared::tier::{Claim, Generation, Lease, Slot, Stamp};

/// How many probe outcomes (one per scope) are remembered.
const MAX_PROBE_SCOPES: u64 = 10_000;

#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    pub ttl: Duration,
    pub stale_ttl: Duration,
    pub max_age: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageKey {
    scope: Scope,
    list: ContactList,
    page: u32,
    limit: PageSize,
}

impl PageKey {
    fn new(scope: &Scope, query: &ContactsQuery) -> Self {
        PageKey {
            scope: scope.clone(),
            list: query.list.clone(),
            page: query.page,
            limit: query.limit,
        }
    }

    fn query(&self, relations: Relations) -> ContactsQuery {
        ContactsQuery {
            list: self.list.clone(),
            page: self.page,
            limit: self.limit,
            relations,
        }
    }
}

/// A page version a response was built from: the response is valid while that version is
/// cached and fresh.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageDep {
    key: PageKey,
    version: u64,
}

impl PageDep {
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of::<PageDep>()
            + self.key.list.search.as_ref().map_or(0, String::len)
            + self.key.list.filter.ids.len() * 8
    }
}

type FlightResult = Result<Arc<PageEntry>, Arc<AmoError>>;

/// A cached page with written contacts replaced, waiting to be stored again.
pub struct Patched {
    key: PageKey,
    entry: Arc<PageEntry>,
}

/// Upstream pages, fetched at most once per validity window however many ask. Cheap to clone.
#[derive(Clone)]
pub struct PageCache {
    inner: Arc<Inner>,
}

struct Inner {
    client: AmoClient,
    entries: Cache<PageKey, Arc<PageEntry>>,
    /// Keyed with the epoch they started in: a request after an invalidation never joins work
    /// that began before it.
    flights: Arc<Flights<(PageKey, u64), FlightResult>>,
    /// Scopes that have stored pages: dropping a scope that never stored any (a stream of
    /// invalid tokens) must cost nothing.
    populated: Cache<Scope, ()>,
    /// One slot per scope: probes of a scope run one at a time and share their answer.
    probes: Cache<Scope, ProbeSlot>,
    freshness: Freshness,
    /// Bumped by every invalidation: work started before it must not store what it fetched.
    epoch: AtomicU64,
    metrics: Metrics,
    shared: Option<SharedPages>,
}

impl PageCache {
    /// `shared`: the Redis tier, and the longest a miss waits for another replica's download.
    pub fn new(
        client: AmoClient,
        freshness: Freshness,
        max_bytes: u64,
        metrics: Metrics,
        shared: Option<(Tier, Duration)>,
    ) -> Self {
        let evictions = metrics.clone();
        let entries = Cache::builder()
            .name("pages")
            .max_capacity(max_bytes)
            .weigher(|_key: &PageKey, entry: &Arc<PageEntry>| entry.weight())
            .expire_after(PageExpiry(freshness))
            .support_invalidation_closures()
            .eviction_listener(move |_key, _entry, cause| {
                if cause.was_evicted() {
                    evictions.cache_eviction(CacheName::Pages);
                }
            })
            .build();
        let probes = Cache::builder()
            .max_capacity(MAX_PROBE_SCOPES)
            .time_to_idle(freshness.max_age.max(freshness.ttl))
            .build();
        let populated = Cache::builder()
            .max_capacity(MAX_PROBE_SCOPES)
            .time_to_idle(freshness.max_age.max(freshness.ttl) + freshness.stale_ttl)
            .build();
        PageCache {
            inner: Arc::new(Inner {
                client,
                entries,
                flights: Flights::new(),
                populated,
                probes,
                freshness,
                epoch: AtomicU64::new(0),
                metrics,
                shared: shared.map(|(tier, wait)| SharedPages {
                    tier,
                    wait,
                    keep_for: freshness.max_age.max(freshness.ttl) + freshness.stale_ttl,
                }),
            }),
        }
    }

    /// The shared generations an invalidation must bump; empty without Redis.
    pub fn shared_generations(&self, invalidation: &super::Invalidation) -> Vec<Generation> {
        use super::Invalidation;
        match (&self.inner.shared, invalidation) {
            (
                Some(shared),
                Invalidation::All | Invalidation::Contact(_) | Invalidation::Relation(_),
            ) => {
                vec![shared.all_pages()]
            }
            _ => Vec::new(),
        }
    }

    /// One page of contacts with at least `query.relations` embedded: fresh from the cache,
    /// stale from the cache while it is refreshed in the background, or from amoCRM.
    pub async fn get(
        &self,
        credentials: &Credentials,
        query: ContactsQuery,
        report: &CacheReport,
    ) -> Result<Arc<ContactsPage>, Arc<AmoError>> {
        let inner = &self.inner;
        let key = PageKey::new(&credentials.scope, &query);
        let needed = query.relations;
        let mut counted = false;
        // A joined flight may have fetched fewer relations than needed: try a few times.
        for _ in 0..3 {
            let cached = inner.entries.get(&key).await;
            let relations = match &cached {
                Some(entry) if covers(entry.relations, needed) => {
                    let now = Instant::now();
                    let fresh_until = entry.fresh_until(&inner.freshness);
                    let dep = PageDep {
                        key: key.clone(),
                        version: entry.version(),
                    };
                    if now < fresh_until {
                        inner.metrics.cache_lookup(CacheName::Pages, Lookup::Hit);
                        report.record(
                            CacheStatus::Hit,
                            fresh_until - now,
                            Dep::Page(Box::new(dep)),
                        );
                    } else {
                        inner.metrics.cache_lookup(CacheName::Pages, Lookup::Stale);
                        report.record(CacheStatus::Stale, Duration::ZERO, Dep::Page(Box::new(dep)));
                        self.refresh_in_background(&key, credentials, entry.clone());
                    }
                    return Ok(entry.page.clone());
                }
                // Fetch the union: two clients alternating between relation sets of one page
                // would otherwise replace each other's entry on every request.
                Some(entry) => entry.relations.union(needed),
                None => needed,
            };
            if !counted {
                inner.metrics.cache_lookup(CacheName::Pages, Lookup::Miss);
                counted = true;
            }
            let epoch = inner.epoch.load(Ordering::SeqCst);
            let (flight, joined) = inner.flights.join_or_start((key.clone(), epoch), || {
                download(
                    self.inner.clone(),
                    key.clone(),
                    credentials.clone(),
                    relations,
                    epoch,
                )
            });
            if joined {
                inner.metrics.coalesced_waiter(CacheName::Pages);
            }
            let entry = flight.await?;
            if covers(entry.relations, needed) {
                let fresh_for = entry
                    .fresh_until(&inner.freshness)
                    .saturating_duration_since(Instant::now());
                let dep = PageDep {
                    key: key.clone(),
                    version: entry.version(),
                };
                let status = match (entry.from_shared_tier, fresh_for.is_zero()) {
                    (false, _) => CacheStatus::Miss,
                    (true, false) => CacheStatus::Hit,
                    (true, true) => {
                        self.refresh_in_background(&key, credentials, entry.clone());
                        CacheStatus::Stale
                    }
                };
                report.record(status, fresh_for, Dep::Page(Box::new(dep)));
                return Ok(entry.page.clone());
            }
        }
        // Relation sets kept changing under us; answer this request without the cache, and say
        // so: nothing of it is fresh for anyone to keep.
        let page = match inner
            .client
            .contacts(&credentials.token, &key.query(needed), Priority::Foreground)
            .await
        {
            Ok(page) => page,
            Err(error) => {
                inner.forget_after(&error, &key).await;
                return Err(Arc::new(error));
            }
        };
        let dep = PageDep {
            key,
            version: page.content_hash,
        };
        report.record(CacheStatus::Miss, Duration::ZERO, Dep::Page(Box::new(dep)));
        Ok(Arc::new(page))
    }

    /// Freshness left on `dep`'s page if that version is still cached and fresh.
    pub async fn fresh_for(&self, dep: &PageDep) -> Option<Duration> {
        let entry = self.inner.entries.get(&dep.key).await?;
        if entry.version() != dep.version {
            return None;
        }
        entry
            .fresh_until(&self.inner.freshness)
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
    }

    pub fn invalidate_all(&self) {
        self.inner.epoch.fetch_add(1, Ordering::SeqCst);
        self.inner.entries.invalidate_all();
    }

    /// The invalidation count: a write notes it before reading its contacts back, so that its
    /// patched pages are not stored over a change that came in meanwhile.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::SeqCst)
    }

    /// The scope's cached pages that hold written contacts and whose list an update cannot move
    /// them into, out of or within (see [`ContactList::stable_under_update`]), each with the
    /// contacts replaced by `fresh`: taken before a write's invalidation, [`PageCache::restore`]d
    /// after it, so the writer's next read of them costs no upstream call and shows the write.
    /// A page holding a written contact the read-back did not return (the writer may no longer
    /// see it) is left to be downloaded again.
    pub fn patched(
        &self,
        scope: &Scope,
        written: &[ContactId],
        fresh: &HashMap<ContactId, Arc<Contact>>,
    ) -> Vec<Patched> {
        let gone: std::collections::HashSet<ContactId> = written
            .iter()
            .filter(|id| !fresh.contains_key(id))
            .copied()
            .collect();
        self.inner
            .entries
            .iter()
            .filter(|(key, _)| key.scope == *scope && key.list.stable_under_update())
            .filter_map(|(key, entry)| {
                let holds = |ids: &dyn Fn(&ContactId) -> bool| {
                    entry.page.contacts.iter().any(|c| ids(&c.id))
                };
                if !holds(&|id| fresh.contains_key(id)) || holds(&|id| gone.contains(id)) {
                    return None;
                }
                Some(Patched {
                    key: (*key).clone(),
                    entry: Arc::new(entry.with_contacts_replaced(fresh)),
                })
            })
            .collect()
    }

    /// Stores pages [`PageCache::patched`] before a write's own invalidation, provided that was
    /// the only one since `epoch` (noted before the read-back): after any other, the read-back
    /// may predate a newer change, and the pages are downloaded again instead.
    pub async fn restore(&self, patched: Vec<Patched>, epoch: u64) {
        let expected = epoch + 1;
        if self.epoch() != expected {
            return;
        }
        for Patched { key, entry } in patched {
            self.inner.store(expected, key, entry).await;
        }
    }

    /// Drops the pages that embed `relation`.
    pub fn invalidate_embedding(&self, relation: Relation) {
        self.inner
            .invalidate_where(move |_, entry| entry.relations.contains(relation));
    }

    /// Entries and their weight, once pending maintenance has run.
    pub async fn size(&self) -> (u64, u64) {
        self.inner.entries.run_pending_tasks().await;
        (
            self.inner.entries.entry_count(),
            self.inner.entries.weighted_size(),
        )
    }
}

fn covers(cached: Relations, needed: Relations) -> bool {
    cached.union(needed) == cached
}

impl Inner {
    /// Drops matching pages everywhere, and makes work in flight store nothing: what it fetched
    /// may predate the change.
    fn invalidate_where(
        &self,
        predicate: impl Fn(&PageKey, &Arc<PageEntry>) -> bool + Send + Sync + 'static,
    ) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.drop_where(predicate);
    }

    fn drop_where(
        &self,
        predicate: impl Fn(&PageKey, &Arc<PageEntry>) -> bool + Send + Sync + 'static,
    ) {
        if let Err(e) = self.entries.invalidate_entries_if(predicate) {
            // Only possible without `support_invalidation_closures`, which is set above.
            tracing::error!(error = %e, "could not invalidate cache entries; dropping all");
            self.entries.invalidate_all();
        }
    }

    /// Stores `entry` unless an invalidation happened since `epoch`; checked again after the
    /// insert, which an invalidation may overtake.
    async fn store(&self, epoch: u64, key: PageKey, entry: Arc<PageEntry>) {
        if self.epoch.load(Ordering::SeqCst) != epoch {
            return;
        }
        let scope = key.scope.clone();
        self.entries.insert(key.clone(), entry).await;
        if self.epoch.load(Ordering::SeqCst) != epoch {
            self.entries.invalidate(&key).await;
        }
        self.populated.insert(scope, ()).await;
    }

    /// What a failed upstream call means for the cached data of its scope. Answers about the
    /// caller are never hidden behind a cached copy.
    async fn forget_after(&self, error: &AmoError, key: &PageKey) {
        match error {
            // A dead token or an unpaid account: nothing the scope fetched may be served.
            AmoError::Unauthorized { .. } | AmoError::PaymentRequired => {
                let scope = key.scope.clone();
                if let Some(shared) = &self.shared {
                    shared.tier.bump(&[shared.scope(&scope)]).await;
                }
                if self.populated.contains_key(&scope) {
                    tracing::warn!(%error, "dropping every cached page of that token");
                    self.populated.invalidate(&scope).await;
                    self.drop_where(move |k, _| k.scope == scope);
                }
            }
            error if !error.is_transient() => self.entries.invalidate(key).await,
            _ => {}
        }
    }
}

/// Where a download stores its page in the shared tier, and the lease that makes the other
/// replicas wait for it (released once the page is stored).
type ShareAs = (Option<(Slot, Stamp)>, Option<Lease>);

/// A foreground download: the page with `relations`, stored for everyone. With Redis, another
/// replica's copy (or the wait for its download) comes first.
async fn download(
    inner: Arc<Inner>,
    key: PageKey,
    credentials: Credentials,
    mut relations: Relations,
    epoch: u64,
) -> FlightResult {
    let mut share_as: ShareAs = (None, None);
    if let Some(shared) = &inner.shared {
        let slot = shared.slot(&key);
        match shared
            .tier
            .find_or_lead::<PageRecord<ContactsPage>>(CacheName::Pages, &slot, shared.wait)
            .await
        {
            Claim::Found(record, stamp) => {
                if let Some(entry) = PageEntry::from_record(record) {
                    if covers(entry.relations, relations)
                        && Instant::now() < entry.expires_at(&inner.freshness)
                    {
                        let entry = Arc::new(entry);
                        inner.store(epoch, key, entry.clone()).await;
                        return Ok(entry);
                    }
                    // It lacks relations this request needs: download the union for everyone.
                    relations = relations.union(entry.relations);
                }
                share_as = (Some((slot, stamp)), None);
            }
            Claim::Fetch { stamp, lease } => share_as = (stamp.map(|s| (slot, s)), lease),
        }
    }
    match inner
        .client
        .contacts(
            &credentials.token,
            &key.query(relations),
            Priority::Foreground,
        )
        .await
    {
        Ok(page) => {
            let entry = Arc::new(PageEntry::downloaded(page, relations));
            inner.store(epoch, key, entry.clone()).await;
            if let (Some(shared), (Some((slot, stamp)), _lease)) = (&inner.shared, &share_as) {
                shared.put(slot, stamp, &entry, &inner.freshness).await;
            }
            Ok(entry)
        }
        Err(error) => {
            inner.forget_after(&error, &key).await;
            Err(Arc::new(error))
        }
    }
}
