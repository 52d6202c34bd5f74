//! Loading one batch of ids, the work a miss or a stale answer starts: the shared tier first,
//! one upstream call for the rest, an answer for every id (not returned and a rights 403 are
//! answers too), each stored unless an invalidation overtook the call.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::shared::EntityRecord;
use super::{Cached, EntityKey, Entry, Inner, Subject};
use crate::amocrm::{AmoError, ForbiddenReason, Priority};
use crate::auth::{Credentials, Scope};
use crate::metrics::{CacheName, Refresh};
use crate::shared::tier::{Found, Slot, Stamp};

/// A batch to load: one upstream call.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Batch {
    pub(super) scope: Scope,
    pub(super) subject: Subject,
    pub(super) ids: Vec<u64>,
    /// The invalidation epoch it started in: later requests never join earlier work.
    pub(super) epoch: u64,
}

pub(super) type BatchResult = Result<Arc<HashMap<u64, Arc<Entry>>>, Arc<AmoError>>;

/// Loads one batch and stores every answer in it.
pub(super) async fn download(
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

pub(super) async fn refresh(
    inner: Arc<Inner>,
    credentials: Credentials,
    batch: Batch,
) -> BatchResult {
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
