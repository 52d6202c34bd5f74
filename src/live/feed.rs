//! The change feed: for a scope with subscribers, one call at an interval asks amoCRM for the
//! contacts changed since the last one (`filter[updated_at][from]`, oldest first), which names
//! the changed contacts themselves. It finds what no webhook told, except deletions (amoCRM
//! lists no deleted contacts): those come only from webhooks.
//!
//! The interval (`--live-poll-interval`) stretches so that the feeds of all scopes together
//! never take more than `FEED_SHARE` of the upstream budget.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::{Change, ChangeKind, Hub};
use crate::amocrm::{Contact, ContactId};
use crate::auth::Credentials;
use crate::cache::Invalidation;

/// The share of the upstream rate limit the change feeds may take together.
pub const FEED_SHARE: f64 = 0.1;

/// Starts the scope's feed; it runs until aborted (when the scope's last subscriber leaves).
pub(super) fn start(hub: Hub, credentials: Credentials) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        // A second back: amoCRM's clock and ours differ, and `from` is inclusive.
        let mut since = chrono::Utc::now().timestamp() - 1;
        // Contacts already told at `since`, the inclusive edge of the next call.
        let mut told_at_edge: HashSet<(ContactId, i64)> = HashSet::new();
        // Past page 1 only while more than a page of contacts share the second `since`.
        let mut page = 1;
        loop {
            tokio::time::sleep(interval(&hub)).await;
            let changed = hub.caches().changed_since(&credentials, since, page).await;
            let contacts = match changed {
                Ok(contacts) => {
                    hub.metrics().live_feed_call("ok");
                    contacts
                }
                Err(error) => {
                    hub.metrics().live_feed_call("error");
                    tracing::warn!(%error, "the change feed could not ask amoCRM");
                    continue;
                }
            };
            let full = contacts.len() >= crate::amocrm::PageSize::MAX.get();
            let fresh: Vec<Arc<Contact>> = contacts
                .into_iter()
                .filter(|c| !told_at_edge.contains(&(c.id, c.updated_at)))
                .collect();
            if fresh.is_empty() {
                if full {
                    // A full page of changes all told already: more than a page changed in
                    // the second `since` (a bulk edit), and asking from it again would return
                    // the same page. The next page goes on from there.
                    page += 1;
                }
                continue;
            }
            if let Some(newest) = fresh.iter().map(|c| c.updated_at).max()
                && newest > since
            {
                since = newest;
                page = 1;
                told_at_edge.clear();
            }
            told_at_edge.extend(
                fresh
                    .iter()
                    .filter(|c| c.updated_at == since)
                    .map(|c| (c.id, c.updated_at)),
            );
            // What a webhook would have dropped, had one come.
            hub.caches()
                .invalidate(fresh.iter().map(|c| Invalidation::Contact(c.id)))
                .await;
            let changes = fresh
                .into_iter()
                .map(|contact| {
                    let kind = if contact.created_at == contact.updated_at {
                        ChangeKind::Created
                    } else {
                        ChangeKind::Updated
                    };
                    (
                        Change {
                            id: contact.id,
                            kind,
                        },
                        contact,
                    )
                })
                .collect();
            hub.changed_in(&credentials.scope, changes);
        }
    })
    .abort_handle()
}

/// The configured interval, stretched so that every scope's feed together stays within its
/// share of the upstream rate.
fn interval(hub: &Hub) -> Duration {
    let limits = hub.limits();
    if limits.upstream_rps == 0 {
        return limits.poll_interval;
    }
    let per_second = f64::from(limits.upstream_rps) * FEED_SHARE;
    let stretched = Duration::from_secs_f64(hub.scopes().max(1) as f64 / per_second);
    limits.poll_interval.max(stretched)
}
