//! Revalidation of stale pages, in the background and once per page however many ask: another
//! replica's result when Redis holds one, a probe when that can spare the download, the download
//! otherwise, and the stale copy kept (with a backoff) while amoCRM fails.
//!
//! Revalidation asks amoCRM the cheap question first: did any contact this scope can see change
//! since the page was downloaded? A 204 renews the entry without downloading it, and the answer
//! is reused for every other entry of the scope downloaded at or after the probed time.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use moka::ops::compute::Op;

use super::entry::PageEntry;
use super::shared::PageRecord;
use super::{FlightResult, Inner, PageCache, PageKey, ShareAs, covers};
use crate::amocrm::{AmoError, ContactsPage, Priority};
use crate::auth::Credentials;
use crate::metrics::{CacheName, Refresh};
use crate::shared::tier::Found;

/// Subtracted from the download time a probe asks about, for the second granularity of
/// `updated_at` and of the `Date` header: asking a little too far back only costs a download.
const PROBE_MARGIN_SECS: i64 = 2;
/// After a failed refresh, the stale copy is served without new attempts for this long, so an
/// outage is not met with a refresh per request.
const REFRESH_BACKOFF: Duration = Duration::from_secs(5);
/// While another replica revalidates a stale page, this replica asks Redis for the result at
/// most this often.
const LEASED_ELSEWHERE: Duration = Duration::from_millis(250);

/// The last "nothing changed" answer of a scope: no contact it can see changed between `since`
/// and `sent_at`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Unchanged {
    since: i64,
    sent_at: Instant,
}

pub(super) type ProbeSlot = Arc<tokio::sync::Mutex<Option<Unchanged>>>;

impl PageCache {
    pub(super) fn refresh_in_background(
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

impl Inner {
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
