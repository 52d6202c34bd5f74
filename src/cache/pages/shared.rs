//! The pages' part of the Redis tier: where a page is stored there, which generations void
//! it, and the record it is stored as.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::entry::PageEntry;
use super::{Freshness, PageKey};
use crate::amocrm::{ContactsPage, Relations, params_digest};
use crate::auth::Scope;
use crate::shared::tier::{Generation, Slot, Stamp};
use crate::shared::{Tier, unix_millis};

/// A page as the shared tier stores it: instants become Unix milliseconds, which mean the same
/// on every replica.
#[derive(Serialize, Deserialize)]
pub(super) struct PageRecord<P> {
    relations: Relations,
    downloaded_at: i64,
    validated_at: i64,
    page: P,
}

impl PageEntry {
    /// `None` for times this process cannot represent (older than its clock): long expired.
    pub(super) fn from_record(record: PageRecord<ContactsPage>) -> Option<Self> {
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

    pub(super) fn record(&self) -> PageRecord<&ContactsPage> {
        PageRecord {
            relations: self.relations,
            downloaded_at: unix_millis_of(self.downloaded_at),
            validated_at: unix_millis_of(self.validated_at),
            page: &self.page,
        }
    }
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
pub(super) struct SharedPages {
    pub(super) tier: Tier,
    /// The longest a miss waits for another replica's download of the same page.
    pub(super) wait: Duration,
    /// How long a per-scope generation must outlive its last bump.
    pub(super) keep_for: Duration,
}

impl SharedPages {
    pub(super) fn slot(&self, key: &PageKey) -> Slot {
        let digest = hex::encode(params_digest(&key.query(Relations::NONE).to_params()));
        self.tier.slot(
            format_args!("page:{}:{digest}", key.scope.as_str()),
            vec![self.all_pages(), self.scope(&key.scope)],
        )
    }

    /// Bumped by an invalidation of contacts or their links.
    pub(super) fn all_pages(&self) -> Generation {
        self.tier.generation(format_args!("pages"), None)
    }

    /// Bumped when a scope's token turns out dead or unpaid.
    pub(super) fn scope(&self, scope: &Scope) -> Generation {
        self.tier.generation(
            format_args!("scope:{}", scope.as_str()),
            Some(self.keep_for),
        )
    }

    /// Stores what this replica downloaded or revalidated, until its stale window ends.
    pub(super) async fn put(
        &self,
        slot: &Slot,
        stamp: &Stamp,
        entry: &PageEntry,
        freshness: &Freshness,
    ) {
        let ttl = entry
            .expires_at(freshness)
            .saturating_duration_since(Instant::now());
        self.tier.put(slot, stamp, entry.record(), ttl).await;
    }
}
