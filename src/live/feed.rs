//! The change feed: for a scope with subscribers, one call at an interval asks amoCRM for the
//! contacts changed since the last one (`filter[updated_at][from]`, oldest first), which names
//! the changed contacts themselves. It finds what no webhook told, except deletions (amoCRM
//! lists no deleted contacts): those come only from webhooks.
//!
//! The interval (`--live-poll-interval`) stretches so that the feeds of all scopes together
//! never take more than `FEED_SHARE` of the upstream budget.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Change, ChangeKind, Hub, digest};
use crate::amocrm::{Contact, ContactId};
use crate::auth::Credentials;
use crate::cache::Invalidation;

/// After this, no contact changes any more in a second gone by (amoCRM's clock and ours
/// may differ by a little).
const SETTLED: Duration = Duration::from_secs(60);

/// The share of the upstream rate limit the change feeds may take together.
pub const FEED_SHARE: f64 = 0.1;

/// Starts the scope's feed; it runs until aborted (when the scope's last subscriber leaves).
pub(super) fn start(hub: Hub, credentials: Credentials) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        // A second back: amoCRM's clock and ours differ, and `from` is inclusive.
        let mut since = chrono::Utc::now().timestamp() - 1;
        // What was told of the contacts changed in the second `since`, the inclusive edge of
        // every call: a digest, so that a second edit within that second is told too.
        let mut told_at_edge: HashMap<ContactId, u64> = HashMap::new();
        // Past page 1 only while more contacts changed in the second `since` than a page holds.
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
            let newest = contacts.iter().map(|c| c.updated_at).max();
            let fresh: Vec<Arc<Contact>> = contacts
                .iter()
                .filter(|c| c.updated_at > since || told_at_edge.get(&c.id) != Some(&digest(c)))
                .cloned()
                .collect();
            match newest {
                // A whole page in the second `since`: the rest of it is on the next page.
                Some(newest) if full && newest <= since => page += 1,
                // Newer changes: the edge moves to the newest (whose contacts the next call
                // returns again, and are told only if they changed again).
                Some(newest) if newest > since => {
                    since = newest;
                    page = 1;
                    told_at_edge.clear();
                }
                // The end of the list, past page 1: the second `since` was paged through.
                // Once it is long past, nothing more can change in it; until then it is
                // swept again from page 1, so that a contact that moved to an earlier page
                // while the pages were read (another contact left that second) is found.
                _ if page > 1 => {
                    page = 1;
                    if since < chrono::Utc::now().timestamp() - SETTLED.as_secs() as i64 {
                        since += 1;
                        told_at_edge.clear();
                    }
                }
                _ => {}
            }
            told_at_edge.extend(
                contacts
                    .iter()
                    .filter(|c| c.updated_at == since)
                    .map(|c| (c.id, digest(c))),
            );
            if fresh.is_empty() {
                continue;
            }
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
