//! Whole GraphQL responses, as the bytes sent, for requests identical to a recent one (same
//! scope, and the same bytes on the wire).
//!
//! A stored response lists the page versions it was built from, and is served only while every
//! one of them is still cached, unchanged and fresh: a refresh that changes a page, a purge or a
//! webhook makes it miss, so it never outlives its pages. Responses with errors are not stored.
//!
//! Keys are taken from the request as received, before any parsing: a hit then costs a hash
//! and a lookup, not a JSON parse. Two spellings of one operation are two entries, which only
//! costs memory: clients repeat their own requests byte for byte.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use moka::future::Cache;
use sha2::{Digest, Sha256};

use super::{Caches, Dep};
use crate::auth::Scope;
use crate::metrics::{CacheName, Lookup, Metrics};

const ENTRY_OVERHEAD_BYTES: usize = 256;
/// How many derived forms of a body (compressed encodings) an entry can keep.
pub const DERIVED_FORMS: usize = 2;
/// A derived form is kept only while it is at most this share of the body, so that the room
/// reserved in an entry's weight (`DERIVED_FORMS` of them) is never exceeded.
const DERIVED_SHARE_DIVISOR: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResponseKey {
    scope: Scope,
    /// SHA-256 of the request's parts: documents can be large, keys should not be.
    request: [u8; 32],
}

impl ResponseKey {
    /// The key of a request in `scope` made of `parts` (say its method, content type and body).
    /// Each part is length-prefixed, so no two different requests share a key.
    pub fn new(scope: &Scope, parts: &[&[u8]]) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        ResponseKey {
            scope: scope.clone(),
            request: hasher.finalize().into(),
        }
    }
}

/// A stored response: its bytes, what they were built from, and the forms derived from them.
#[derive(Debug)]
pub struct StoredResponse {
    body: Bytes,
    deps: Vec<Dep>,
    derived: [OnceLock<Option<Bytes>>; DERIVED_FORMS],
}

impl StoredResponse {
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The body's derived form number `form` (a compressed encoding, say), made by `make` the
    /// first time it is asked for and kept with the entry. `None` when it cannot be made, or
    /// would be larger than the room the entry's weight reserves for it.
    pub fn derived(&self, form: usize, make: impl FnOnce(&[u8]) -> Option<Bytes>) -> Option<Bytes> {
        let slot = self.derived.get(form)?;
        if let Some(made) = slot.get() {
            return made.clone();
        }
        // Made outside the lock: two first askers may both make it, and one result is kept.
        let made = make(&self.body)
            .filter(|derived| derived.len() <= self.body.len() / DERIVED_SHARE_DIVISOR);
        let _ = slot.set(made);
        slot.get().cloned().flatten()
    }

    /// What the entry weighs: the body, room for its derived forms, its deps and bookkeeping.
    fn weight(&self) -> u32 {
        let deps: usize = self.deps.iter().map(Dep::heap_bytes).sum();
        let derived = DERIVED_FORMS * (self.body.len() / DERIVED_SHARE_DIVISOR);
        u32::try_from(self.body.len() + derived + deps + ENTRY_OVERHEAD_BYTES).unwrap_or(u32::MAX)
    }
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
            .weigher(|_key: &ResponseKey, stored: &Arc<StoredResponse>| stored.weight())
            .eviction_listener(move |_key, _value, cause| {
                if cause.was_evicted() {
                    evictions.cache_eviction(CacheName::Responses);
                }
            })
            .build();
        ResponseCache { entries, metrics }
    }

    /// The stored response and the freshness left on its oldest data, if everything it was
    /// built from is still cached, unchanged and fresh.
    pub async fn get(
        &self,
        key: &ResponseKey,
        caches: &Caches,
    ) -> Option<(Arc<StoredResponse>, Duration)> {
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
        Some((stored, fresh_for))
    }

    /// Stores a response built from `deps`. One that read no page is cheap to build again and
    /// has nothing to expire with, so it is not stored.
    pub async fn put(&self, key: ResponseKey, body: Bytes, deps: Vec<Dep>) {
        if deps.is_empty() {
            return;
        }
        self.entries
            .insert(
                key,
                Arc::new(StoredResponse {
                    body,
                    deps,
                    derived: Default::default(),
                }),
            )
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn stored(body: &[u8]) -> StoredResponse {
        StoredResponse {
            body: Bytes::copy_from_slice(body),
            deps: Vec::new(),
            derived: Default::default(),
        }
    }

    #[test]
    fn a_derived_form_is_made_once_and_only_kept_within_its_reserved_room() {
        let response = stored(&[b'x'; 400]);
        let made = AtomicUsize::new(0);
        let shrink = |body: &[u8]| {
            made.fetch_add(1, Ordering::SeqCst);
            Some(Bytes::copy_from_slice(&body[..100]))
        };
        assert_eq!(response.derived(0, shrink).map(|b| b.len()), Some(100));
        assert_eq!(response.derived(0, shrink).map(|b| b.len()), Some(100));
        assert_eq!(made.load(Ordering::SeqCst), 1, "made on the first ask only");

        let too_big = |body: &[u8]| Some(Bytes::copy_from_slice(&body[..101]));
        assert_eq!(
            response.derived(1, too_big),
            None,
            "over a quarter of the body"
        );
        assert_eq!(
            response.derived(DERIVED_FORMS, shrink),
            None,
            "no such form"
        );
        assert_eq!(
            response.weight(),
            u32::try_from(400 + 2 * 100 + ENTRY_OVERHEAD_BYTES).expect("small"),
            "the room for both forms is weighed from the start"
        );
    }

    #[test]
    fn keys_tell_apart_requests_whose_parts_split_differently() {
        let mode = crate::auth::AuthMode::server_token(
            crate::amocrm::AccessToken::new("token"),
            crate::auth::ClientKeys::Anyone,
        );
        let scope = mode.credentials(None).expect("anyone may call").scope;
        assert_ne!(
            ResponseKey::new(&scope, &[b"POST", b"ab", b"c"]),
            ResponseKey::new(&scope, &[b"POST", b"a", b"bc"])
        );
        assert_eq!(
            ResponseKey::new(&scope, &[b"GET", b"query=x"]),
            ResponseKey::new(&scope, &[b"GET", b"query=x"])
        );
    }
}
