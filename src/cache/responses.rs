//! Whole GraphQL responses, as the bytes sent, for operations identical to a recent one (same
//! document, operation name, variables and scope).
//!
//! A stored response lists the page versions it was built from, and is served only while every
//! one of them is still cached, unchanged and fresh: a refresh that changes a page, a purge or a
//! webhook makes it miss, so it never outlives its pages. Responses with errors are not stored.

use std::sync::Arc;
use std::time::Duration;

use async_graphql::Variables;
use bytes::Bytes;
use moka::future::Cache;
use sha2::{Digest, Sha256};

use super::{Caches, Dep};
use crate::auth::Scope;
use crate::metrics::{CacheName, Lookup, Metrics};

const ENTRY_OVERHEAD_BYTES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResponseKey {
    scope: Scope,
    /// SHA-256 of the operation: documents can be large, keys should not be.
    operation: [u8; 32],
}

impl ResponseKey {
    pub fn new(
        scope: &Scope,
        document: &str,
        operation_name: Option<&str>,
        variables: &Variables,
    ) -> Self {
        let mut hasher = Sha256::new();
        for part in [document, operation_name.unwrap_or("")] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        // Variables are a sorted map, so equal variables serialize equally.
        hasher.update(serde_json::to_vec(variables).unwrap_or_default());
        ResponseKey {
            scope: scope.clone(),
            operation: hasher.finalize().into(),
        }
    }
}

#[derive(Debug)]
struct StoredResponse {
    body: Bytes,
    deps: Vec<Dep>,
}

#[derive(Clone)]
pub struct ResponseCache {
    entries: Cache<ResponseKey, Arc<StoredResponse>>,
    metrics: Metrics,
}

impl ResponseCache {
    /// `ttl` bounds how long a response lives even while its pages keep being renewed: building
    /// it again from cached pages is cheap.
    pub fn new(max_bytes: u64, ttl: Duration, metrics: Metrics) -> Self {
        let evictions = metrics.clone();
        let entries = Cache::builder()
            .name("responses")
            .max_capacity(max_bytes)
            .time_to_live(ttl)
            .weigher(|_key: &ResponseKey, stored: &Arc<StoredResponse>| {
                let deps: usize = stored.deps.iter().map(Dep::heap_bytes).sum();
                u32::try_from(stored.body.len() + deps + ENTRY_OVERHEAD_BYTES).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |_key, _value, cause| {
                if cause.was_evicted() {
                    evictions.cache_eviction(CacheName::Responses);
                }
            })
            .build();
        ResponseCache { entries, metrics }
    }

    /// The stored bytes and the freshness left on their oldest data, if everything they were
    /// built from is still cached, unchanged and fresh.
    pub async fn get(&self, key: &ResponseKey, caches: &Caches) -> Option<(Bytes, Duration)> {
        let Some(stored) = self.entries.get(key).await else {
            self.metrics
                .cache_lookup(CacheName::Responses, Lookup::Miss);
            return None;
        };
        let mut fresh_for = Duration::MAX;
        for dep in &stored.deps {
            let left = match dep {
                Dep::Page(page) => caches.pages.fresh_for(page).await,
                Dep::Entity(key, version) => caches.entities.fresh_for(key, *version).await,
            };
            match left {
                Some(left) => fresh_for = fresh_for.min(left),
                None => {
                    // Something it was built from changed, went stale or went away.
                    self.entries.invalidate(key).await;
                    self.metrics
                        .cache_lookup(CacheName::Responses, Lookup::Miss);
                    return None;
                }
            }
        }
        self.metrics.cache_lookup(CacheName::Responses, Lookup::Hit);
        Some((stored.body.clone(), fresh_for))
    }

    /// Stores a response built from `deps`. One that read no page is cheap to build again and
    /// has nothing to expire with, so it is not stored.
    pub async fn put(&self, key: ResponseKey, body: Bytes, deps: Vec<Dep>) {
        if deps.is_empty() {
            return;
        }
        self.entries
            .insert(key, Arc::new(StoredResponse { body, deps }))
            .await;
    }

    pub fn invalidate_all(&self) {
        self.entries.invalidate_all();
    }

    pub async fn size(&self) -> (u64, u64) {
        self.entries.run_pending_tasks().await;
        (self.entries.entry_count(), self.entries.weighted_size())
    }
}
