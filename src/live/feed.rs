//! The change feed: for a scope with subscribers, one call at an interval asks amoCRM for the
//! contacts changed since the last one (`filter[updated_at][from]`, oldest first), which names
//! the changed contacts themselves. It finds what no webhook told, except deletions (amoCRM
//! lists no deleted contacts): those come only from webhooks.
//!
//! The interval (`--live-poll-interval`) stretches so that the feeds of all scopes together
//! never take more than `FEED_SHARE` of the upstream budget.
//!
//! A second in which more contacts changed than a page holds (a bulk edit) is paged through
//! on its own (`filter[updated_at][from]` and `[to]` both that second), at the budget's pace
//! rather than the configured interval, and swept again until a whole sweep finds nothing
//! new: amoCRM's pages are offsets into a list that moves while it is read (a contact edited
//! again leaves that second, and the ones after it move up a place).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Change, ChangeKind, Hub, digest};
use crate::amocrm::{Contact, ContactId};
use crate::auth::Credentials;
use crate::cache::Invalidation;

/// The share of the upstream rate limit the change feeds may take together.
pub const FEED_SHARE: f64 = 0.1;
/// A crowded second is left only after it has been paged through for this long at least:
/// amoCRM may still be giving contacts that second when the paging starts.
const CROWDED_SECOND_SETTLES: Duration = Duration::from_secs(2);
/// The shortest pause between two pages of a crowded second.
const MIN_PAGE_PAUSE: Duration = Duration::from_millis(100);

/// Where the feed reads next.
enum Cursor {
    /// Page 1 of the changes from `since` on.
    From,
    /// Page `page` of the changes within the second `since`; `found`: whether this sweep
    /// found anything new; `began`: when the paging of that second began.
    Crowded {
        page: u32,
        found: bool,
        began: Instant,
    },
}

/// Starts the scope's feed; it runs until aborted (when the scope's last subscriber leaves).
pub(super) fn start(hub: Hub, credentials: Credentials) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        // A second back: amoCRM's clock and ours differ, and `from` is inclusive.
        let mut since = chrono::Utc::now().timestamp() - 1;
        // What was told of the contacts changed in the second `since`, the inclusive edge of
        // every call: a digest, so that a second edit within that second is told too.
        let mut told_at_edge: HashMap<ContactId, u64> = HashMap::new();
        let mut cursor = Cursor::From;
        loop {
            let (pause, until, page) = match cursor {
                Cursor::From => (interval(&hub), None, 1),
                Cursor::Crowded { page, .. } => (page_pause(&hub), Some(since), page),
            };
            tokio::time::sleep(pause).await;
            let changed = hub
                .caches()
                .changed_since(&credentials, since, until, page)
                .await;
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
            cursor = match cursor {
                // A whole page in the second `since`: more of it than a page holds.
                Cursor::From if full && newest == Some(since) => Cursor::Crowded {
                    page: 2,
                    found: !fresh.is_empty(),
                    began: Instant::now(),
                },
                Cursor::From => {
                    if let Some(newest) = newest.filter(|newest| *newest > since) {
                        since = newest;
                        told_at_edge.clear();
                    }
                    Cursor::From
                }
                Cursor::Crowded { page, found, began } if full => Cursor::Crowded {
                    page: page + 1,
                    found: found || !fresh.is_empty(),
                    began,
                },
                // A sweep of the second ended. Another, unless this one found nothing new
                // and the second has settled; then on past it.
                Cursor::Crowded { found, began, .. } => {
                    if found || !fresh.is_empty() || began.elapsed() < CROWDED_SECOND_SETTLES {
                        Cursor::Crowded {
                            page: 1,
                            found: false,
                            began,
                        }
                    } else {
                        since += 1;
                        told_at_edge.clear();
                        Cursor::From
                    }
                }
            };
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
    hub.limits().poll_interval.max(page_pause(hub))
}

/// The pause that keeps every scope's feed together within its share of the upstream rate:
/// the pace of paging through a crowded second.
fn page_pause(hub: &Hub) -> Duration {
    let limits = hub.limits();
    if limits.upstream_rps == 0 {
        return MIN_PAGE_PAUSE;
    }
    let per_second = f64::from(limits.upstream_rps) * FEED_SHARE;
    let share = Duration::from_secs_f64(hub.scopes().max(1) as f64 / per_second);
    share.max(MIN_PAGE_PAUSE)
}
