//! Upstream pages by `(scope, list, page, limit)`.
//!
//! An entry is fresh for `ttl` after it was last validated, then servable stale for `stale_ttl`
//! while one background refresh revalidates it, and never kept longer than `max_age` after its
//! last full download (deletions are invisible to the probe, so only a download proves them).
//!
//! Revalidation asks amoCRM the cheap question first: did any contact this scope can see change
//! since the page was downloaded? A 204 renews the entry without downloading it, and the answer
//! is reused for every other entry of the scope downloaded at or after the probed time.
//!
//! The relation set is not part of the key: an entry records the relations it was fetched
//! with, and answers any request that needs a subset of them.
//!
//! With Redis, a miss looks in the shared tier before calling amoCRM, and what this replica
//! downloads or revalidates is stored there for the others, with its freshness as wall-clock
//! times. Concurrent misses of one page on several replicas make one upstream call: the first
//! takes the page's lease, the others wait for its value.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use moka::ops::compute::Op;
use serde::{Deserialize, Serialize};

use super::flight::Flights;
use super::{CacheReport, CacheStatus, Dep};
use crate::amocrm::{
    AmoClient, AmoError, ContactList, ContactsPage, ContactsQuery, PageSize, Priority, Relation,
    Relations,
};
use crate::auth::{Credentials, Scope};
use crate::metrics::{CacheName, Lookup, Metrics, Refresh};
use crate::shared::tier::{Claim, Found, Generation, Lease, Slot, Stamp};
use crate::shared::{Tier, unix_millis};

/// Subtracted from the download time a probe asks about, for the second granularity of
/// `updated_at` and of the `Date` header: asking a little too far back only costs a download.
const PROBE_MARGIN_SECS: i64 = 2;
/// After a failed refresh, the stale copy is served without new attempts for this long, so an
/// outage is not met with a refresh per request.
const REFRESH_BACKOFF: Duration = Duration::from_secs(5);
/// What a cached page costs besides its decoded contacts: key, entry, moka's bookkeeping.
const ENTRY_OVERHEAD_BYTES: usize = 512;
/// While another replica revalidates a stale page, this replica asks Redis for the result at
/// most this often.
const LEASED_ELSEWHERE: Duration = Duration::from_millis(250);
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

#[derive(Debug)]
struct PageEntry {
    page: Arc<ContactsPage>,
    relations: Relations,
    downloaded_at: Instant,
    /// Last download or probe that showed the page current; freshness counts from here.
    validated_at: Instant,
    /// No refresh before this, after one failed.
    retry_after: Option<Instant>,
    /// Read from the shared tier rather than downloaded: the request that brought it in
    /// reports a hit, not a miss.
    from_shared_tier: bool,
}

impl PageEntry {
    fn downloaded(page: ContactsPage, relations: Relations) -> Self {
        let now = Instant::now();
        PageEntry {
            page: Arc::new(page),
            relations,
            downloaded_at: now,
            validated_at: now,
            retry_after: None,
            from_shared_tier: false,
        }
    }

    /// `None` for times this process cannot represent (older than its clock): long expired.
    fn from_record(record: PageRecord<ContactsPage>) -> Option<Self> {
        let mut page = record.page;
        page.recount_heap();
        Some(PageEntry {
            page: Arc::new(page),
            relations: record.relations,
            downloaded_at: instant_of(record.downloaded_at)?,
            validated_at: instant_of(record.validated_at)?,
            retry_after: None,
            from_shared_tier: true,
        })
    }

    fn record(&self) -> PageRecord<&ContactsPage> {
        PageRecord {
            relations: self.relations,
            downloaded_at: unix_millis_of(self.downloaded_at),
            validated_at: unix_millis_of(self.validated_at),
            page: &self.page,
        }
    }

    fn version(&self) -> u64 {
        self.page.content_hash
    }

    fn fresh_until(&self, f: &Freshness) -> Instant {
        (self.validated_at + f.ttl).min(self.downloaded_at + f.max_age)
    }

    fn expires_at(&self, f: &Freshness) -> Instant {
        (self.validated_at + f.ttl + f.stale_ttl).min(self.downloaded_at + f.max_age)
    }

    /// A probe is only worth it while a renewal would still leave a full TTL before `max_age`;
    /// past that, download instead of probing into a renewal that soon expires.
    fn worth_probing(&self, f: &Freshness, now: Instant) -> bool {
        now + f.ttl < self.downloaded_at + f.max_age
    }

    fn renewed(&self, validated_at: Instant) -> Self {
        PageEntry {
            page: self.page.clone(),
            relations: self.relations,
            downloaded_at: self.downloaded_at,
            validated_at,
            retry_after: None,
            from_shared_tier: false,
        }
    }

    fn backing_off(&self, until: Instant) -> Self {
        PageEntry {
            retry_after: Some(until),
            ..self.renewed(self.validated_at)
        }
    }
}

/// A page as the shared tier stores it: instants become Unix milliseconds, which mean the same
/// on every replica.
#[derive(Serialize, Deserialize)]
struct PageRecord<P> {
    relations: Relations,
    downloaded_at: i64,
    validated_at: i64,
    page: P,
}

/// The instant `unix_ms` was, by this process's monotonic clock (a future time is now); `None`
/// before the clock's start.
fn instant_of(unix_ms: i64) -> Option<Instant> {
    let ago = u64::try_from(unix_millis().saturating_sub(unix_ms)).unwrap_or(0);
    Instant::now().checked_sub(Duration::from_millis(ago))
}

fn unix_millis_of(instant: Instant) -> i64 {
    let ago = i64::try_from(instant.elapsed().as_millis()).unwrap_or(i64::MAX);
    unix_millis().saturating_sub(ago)
}

/// The pages' part of the shared tier.
struct SharedPages {
    tier: Tier,
    /// The longest a miss waits for another replica's download of the same page.
    wait: Duration,
    /// How long a per-scope generation must outlive its last bump.
    keep_for: Duration,
}

impl SharedPages {
    fn slot(&self, key: &PageKey) -> Slot {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for (name, value) in key.query(Relations::NONE).to_params() {
            hasher.update(name.as_bytes());
            hasher.update([0]);
            hasher.update(value.as_bytes());
            hasher.update([0]);
        }
        let digest = hex::encode(hasher.finalize());
        self.tier.slot(
            format_args!("page:{}:{digest}", key.scope.as_str()),
            vec![self.all_pages(), self.scope(&key.scope)],
        )
    }

    /// Bumped by an invalidation of contacts or their links.
    fn all_pages(&self) -> Generation {
        self.tier.generation(format_args!("pages"), None)
    }

    /// Bumped when a scope's token turns out dead or unpaid.
    fn scope(&self, scope: &Scope) -> Generation {
        self.tier.generation(
            format_args!("scope:{}", scope.as_str()),
            Some(self.keep_for),
        )
    }

    /// Stores what this replica downloaded or revalidated, until its stale window ends.
    async fn put(&self, slot: &Slot, stamp: &Stamp, entry: &PageEntry, freshness: &Freshness) {
        let ttl = entry
            .expires_at(freshness)
            .saturating_duration_since(Instant::now());
        self.tier.put(slot, stamp, entry.record(), ttl).await;
    }
}

struct PageExpiry(Freshness);

impl Expiry<PageKey, Arc<PageEntry>> for PageExpiry {
    fn expire_after_create(
        &self,
        _key: &PageKey,
        entry: &Arc<PageEntry>,
        now: Instant,
    ) -> Option<Duration> {
        Some(entry.expires_at(&self.0).saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _key: &PageKey,
        entry: &Arc<PageEntry>,
        now: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.expires_at(&self.0).saturating_duration_since(now))
    }
}

type FlightResult = Result<Arc<PageEntry>, Arc<AmoError>>;

/// The last "nothing changed" answer of a scope: no contact it can see changed between `since`
/// and `sent_at`.
#[derive(Debug, Clone, Copy)]
struct Unchanged {
    since: i64,
    sent_at: Instant,
}

type ProbeSlot = Arc<tokio::sync::Mutex<Option<Unchanged>>>;

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
            .weigher(|_key: &PageKey, entry: &Arc<PageEntry>| {
                u32::try_from(entry.page.heap_bytes + ENTRY_OVERHEAD_BYTES).unwrap_or(u32::MAX)
            })
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

    fn refresh_in_background(
        &self,
        key: &PageKey,
        credentials: &Credentials,
        stale: Arc<PageEntry>,
    ) {
        if stale
            .retry_after
            .is_some_and(|until| Instant::now() < until)
        {
            return;
        }
        // A running flight (refresh or download) already brings news of this page.
        let epoch = self.inner.epoch.load(Ordering::SeqCst);
        self.inner.flights.join_or_spawn((key.clone(), epoch), || {
            refresh(
                self.inner.clone(),
                key.clone(),
                credentials.clone(),
                stale,
                epoch,
            )
        });
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

    /// Replaces `stale` with `fresh` (or removes it) only if `stale` is still what is cached: a
    /// refresh must not overwrite what a newer download stored meanwhile.
    async fn replace(
        &self,
        epoch: u64,
        key: PageKey,
        stale: &Arc<PageEntry>,
        fresh: Option<Arc<PageEntry>>,
    ) {
        let current_epoch = &self.epoch;
        self.entries
            .entry(key)
            .and_compute_with(|current| async move {
                let unchanged = current.is_some_and(|c| Arc::ptr_eq(c.value(), stale))
                    && current_epoch.load(Ordering::SeqCst) == epoch;
                match (unchanged, fresh) {
                    (false, _) => Op::Nop,
                    (true, Some(fresh)) => Op::Put(fresh),
                    (true, None) => Op::Remove,
                }
            })
            .await;
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

    /// Whether amoCRM changed nothing this scope can see since `since`, as of when? `Some`
    /// carries the time the answering probe was sent, `None` means something changed.
    async fn unchanged_since(
        &self,
        credentials: &Credentials,
        since: i64,
        newer_than: Instant,
    ) -> Result<Option<(Instant, Refresh)>, AmoError> {
        let slot: ProbeSlot = self
            .probes
            .get_with(credentials.scope.clone(), async { ProbeSlot::default() })
            .await;
        let mut last = slot.lock().await;
        if let Some(known) = *last
            && known.since <= since
            && known.sent_at > newer_than
            && known.sent_at + self.freshness.ttl > Instant::now()
        {
            return Ok(Some((known.sent_at, Refresh::ProbeReused)));
        }
        let sent_at = Instant::now();
        if self
            .client
            .contacts_changed_since(&credentials.token, since)
            .await?
        {
            *last = None;
            return Ok(None);
        }
        *last = Some(Unchanged { since, sent_at });
        Ok(Some((sent_at, Refresh::ProbeUnchanged)))
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

/// Revalidates a stale entry: a probe when that can spare the download, the download otherwise.
async fn refresh(
    inner: Arc<Inner>,
    key: PageKey,
    credentials: Credentials,
    stale: Arc<PageEntry>,
    epoch: u64,
) -> FlightResult {
    // Someone may have refreshed or replaced it since it was seen stale.
    if let Some(current) = inner.entries.get(&key).await
        && !Arc::ptr_eq(&current, &stale)
    {
        return Ok(current);
    }
    let freshness = inner.freshness;
    // With Redis: another replica may have revalidated it already, or be doing so now.
    let mut share_as: ShareAs = (None, None);
    if let Some(shared) = &inner.shared {
        let slot = shared.slot(&key);
        let found = shared
            .tier
            .get::<PageRecord<ContactsPage>>(CacheName::Pages, &slot)
            .await;
        let stamp = match found {
            Some(Found::Value(record, stamp)) => {
                if let Some(entry) = PageEntry::from_record(record)
                    && covers(entry.relations, stale.relations)
                    && Instant::now() < entry.fresh_until(&freshness)
                {
                    let entry = Arc::new(entry);
                    inner
                        .metrics
                        .cache_refresh(CacheName::Pages, Refresh::Shared);
                    inner.replace(epoch, key, &stale, Some(entry.clone())).await;
                    return Ok(entry);
                }
                Some(stamp)
            }
            Some(Found::Absent(stamp)) => Some(stamp),
            None => None,
        };
        if let Some(stamp) = stamp {
            match shared.tier.try_lease(&slot).await {
                // Another replica revalidates it: its result will be found here shortly. Until
                // then the stale copy is served without asking Redis on every request.
                Some(None) => {
                    let waiting = Arc::new(stale.backing_off(Instant::now() + LEASED_ELSEWHERE));
                    inner.replace(epoch, key, &stale, Some(waiting)).await;
                    return Ok(stale);
                }
                Some(Some(lease)) => share_as = (Some((slot, stamp)), Some(lease)),
                None => {}
            }
        }
    }
    let outcome = async {
        if stale.worth_probing(&freshness, Instant::now()) {
            let since = stale.page.upstream_time - PROBE_MARGIN_SECS;
            match inner
                .unchanged_since(&credentials, since, stale.validated_at)
                .await?
            {
                Some((validated_at, how)) => {
                    inner.metrics.cache_refresh(CacheName::Pages, how);
                    return Ok(Arc::new(stale.renewed(validated_at)));
                }
                None => inner
                    .metrics
                    .cache_refresh(CacheName::Pages, Refresh::ProbeChanged),
            }
        }
        let page = inner
            .client
            .contacts(
                &credentials.token,
                &key.query(stale.relations),
                Priority::Background,
            )
            .await?;
        inner
            .metrics
            .cache_refresh(CacheName::Pages, Refresh::Downloaded);
        Ok::<_, AmoError>(Arc::new(PageEntry::downloaded(page, stale.relations)))
    }
    .await;

    match outcome {
        Ok(entry) => {
            inner.replace(epoch, key, &stale, Some(entry.clone())).await;
            if let (Some(shared), (Some((slot, stamp)), _lease)) = (&inner.shared, &share_as) {
                shared.put(slot, stamp, &entry, &freshness).await;
            }
            Ok(entry)
        }
        Err(error) => {
            inner
                .metrics
                .cache_refresh(CacheName::Pages, Refresh::Failed);
            if error.is_transient() {
                // Stale-if-error: the copy stays servable until its window ends.
                tracing::warn!(%error, "refreshing a cached page failed; serving the stale copy");
                let backing_off = Arc::new(stale.backing_off(Instant::now() + REFRESH_BACKOFF));
                inner.replace(epoch, key, &stale, Some(backing_off)).await;
            } else {
                tracing::warn!(%error, "refreshing a cached page was refused; dropping it");
                inner.replace(epoch, key.clone(), &stale, None).await;
                inner.forget_after(&error, &key).await;
            }
            Err(Arc::new(error))
        }
    }
}
