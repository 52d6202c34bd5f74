//! The page cache between the two boundaries: GraphQL asks for upstream pages, this module
//! answers from moka or calls amoCRM once for all concurrent askers.
//!
//! Keys are `(credential scope, normalized request)`: two tokens never share an entry, because
//! amoCRM shows each user only what their rights allow. Errors are never cached.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::future::Cache;

use crate::amocrm::{AmoClient, AmoError, ContactsPage, ContactsQuery};
use crate::auth::{Credentials, Scope};

/// The share of `--cache-max-bytes` given to upstream pages. The other caches of the roadmap
/// (response cache, related entities) take their shares from the same budget.
pub const PAGE_CACHE_SHARE_PERCENT: u64 = 100;

/// What a cached page costs besides its body: the key, the Arcs, moka's bookkeeping.
const ENTRY_OVERHEAD_BYTES: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PageKey {
    scope: Scope,
    query: ContactsQuery,
}

#[derive(Debug, Clone)]
struct CachedPage {
    page: Arc<ContactsPage>,
    fetched_at: Instant,
}

/// Where a response's data came from, reported as `x-cache` (the most severe wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CacheStatus {
    Hit,
    Miss,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
        }
    }
}

/// Collects, for one GraphQL request, how its pages were obtained and how long the oldest of
/// them stays fresh: the `x-cache` and `Cache-Control` headers are derived from it.
#[derive(Debug, Default)]
pub struct CacheReport(Mutex<ReportState>);

#[derive(Debug, Default, Clone, Copy)]
struct ReportState {
    status: Option<CacheStatus>,
    fresh_for: Option<Duration>,
}

impl CacheReport {
    fn record(&self, status: CacheStatus, fresh_for: Duration) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.status = state.status.max(Some(status));
        state.fresh_for = Some(state.fresh_for.map_or(fresh_for, |f| f.min(fresh_for)));
    }

    /// The overall status; a response that read no cached data is a miss.
    pub fn status(&self) -> CacheStatus {
        self.state().status.unwrap_or(CacheStatus::Miss)
    }

    /// Freshness left on the oldest page used, if any page was used.
    pub fn fresh_for(&self) -> Option<Duration> {
        self.state().fresh_for
    }

    fn state(&self) -> ReportState {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Upstream pages by scope and request, fetched at most once per TTL however many ask.
#[derive(Debug, Clone)]
pub struct PageCache {
    client: AmoClient,
    pages: Cache<PageKey, CachedPage>,
    ttl: Duration,
}

impl PageCache {
    pub fn new(client: AmoClient, ttl: Duration, max_bytes: u64) -> Self {
        let pages = Cache::builder()
            .name("pages")
            .max_capacity(max_bytes)
            .weigher(|_key: &PageKey, value: &CachedPage| {
                u32::try_from(value.page.body_bytes + ENTRY_OVERHEAD_BYTES).unwrap_or(u32::MAX)
            })
            .time_to_live(ttl)
            .build();
        PageCache { client, pages, ttl }
    }

    /// One page of contacts, from the cache or from amoCRM. Concurrent misses for the same key
    /// wait for a single upstream call; a failed call is not cached, so the next asker retries.
    pub async fn contacts(
        &self,
        credentials: &Credentials,
        query: ContactsQuery,
        report: &CacheReport,
    ) -> Result<Arc<ContactsPage>, Arc<AmoError>> {
        let key = PageKey {
            scope: credentials.scope.clone(),
            query,
        };
        if let Some(hit) = self.pages.get(&key).await {
            report.record(CacheStatus::Hit, self.fresh_for(&hit));
            return Ok(hit.page);
        }
        let fetch = async {
            let page = self.client.contacts(&credentials.token, &key.query).await?;
            Ok::<_, AmoError>(CachedPage {
                page: Arc::new(page),
                fetched_at: Instant::now(),
            })
        };
        let entry = self.pages.try_get_with(key.clone(), fetch).await?;
        report.record(CacheStatus::Miss, self.fresh_for(&entry));
        Ok(entry.page)
    }

    fn fresh_for(&self, entry: &CachedPage) -> Duration {
        self.ttl.saturating_sub(entry.fetched_at.elapsed())
    }
}
