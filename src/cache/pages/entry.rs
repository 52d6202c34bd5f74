//! One cached page and the arithmetic of its times: until when it is fresh, when moka drops
//! it, whether a probe can still renew it, and what it weighs. Nothing here calls out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;

use super::{Freshness, PageKey};
use crate::amocrm::{ContactsPage, Relations};

/// What a cached page costs besides its decoded contacts: key, entry, moka's bookkeeping.
const ENTRY_OVERHEAD_BYTES: usize = 512;

#[derive(Debug)]
pub(super) struct PageEntry {
    pub(super) page: Arc<ContactsPage>,
    pub(super) relations: Relations,
    pub(super) downloaded_at: Instant,
    /// Last download or probe that showed the page current; freshness counts from here.
    pub(super) validated_at: Instant,
    /// No refresh before this, after one failed.
    pub(super) retry_after: Option<Instant>,
    /// Read from the shared tier rather than downloaded: the request that brought it in
    /// reports a hit, not a miss.
    pub(super) from_shared_tier: bool,
}

impl PageEntry {
    pub(super) fn downloaded(page: ContactsPage, relations: Relations) -> Self {
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

    /// The same page with the contacts in `fresh` replaced where it holds them, as a new
    /// version: responses built from the old one no longer match it.
    pub(super) fn with_contacts_replaced(
        &self,
        fresh: &std::collections::HashMap<crate::amocrm::ContactId, Arc<crate::amocrm::Contact>>,
    ) -> Self {
        let contacts: Vec<_> = self
            .page
            .contacts
            .iter()
            .map(|c| fresh.get(&c.id).map_or_else(|| c.clone(), Arc::clone))
            .collect();
        let mut page = ContactsPage {
            contacts,
            has_next_link: self.page.has_next_link,
            heap_bytes: 0,
            // Any value but the old one's, and never one a download could repeat by chance.
            content_hash: rand::random(),
            upstream_time: self.page.upstream_time,
        };
        page.recount_heap();
        PageEntry {
            page: Arc::new(page),
            relations: self.relations,
            downloaded_at: self.downloaded_at,
            validated_at: self.validated_at,
            retry_after: None,
            from_shared_tier: false,
        }
    }

    pub(super) fn version(&self) -> u64 {
        self.page.content_hash
    }

    pub(super) fn fresh_until(&self, f: &Freshness) -> Instant {
        (self.validated_at + f.ttl).min(self.downloaded_at + f.max_age)
    }

    pub(super) fn expires_at(&self, f: &Freshness) -> Instant {
        (self.validated_at + f.ttl + f.stale_ttl).min(self.downloaded_at + f.max_age)
    }

    /// A probe is only worth it while a renewal would still leave a full TTL before `max_age`;
    /// past that, download instead of probing into a renewal that soon expires.
    pub(super) fn worth_probing(&self, f: &Freshness, now: Instant) -> bool {
        now + f.ttl < self.downloaded_at + f.max_age
    }

    pub(super) fn renewed(&self, validated_at: Instant) -> Self {
        PageEntry {
            page: self.page.clone(),
            relations: self.relations,
            downloaded_at: self.downloaded_at,
            validated_at,
            retry_after: None,
            from_shared_tier: false,
        }
    }

    pub(super) fn backing_off(&self, until: Instant) -> Self {
        PageEntry {
            retry_after: Some(until),
            ..self.renewed(self.validated_at)
        }
    }

    /// What moka counts against the pages' share of the memory budget.
    pub(super) fn weight(&self) -> u32 {
        u32::try_from(self.page.heap_bytes + ENTRY_OVERHEAD_BYTES).unwrap_or(u32::MAX)
    }
}

pub(super) struct PageExpiry(pub(super) Freshness);

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
