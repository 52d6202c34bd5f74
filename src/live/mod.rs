//! Live updates: which contacts changed, told to the subscribers of every scope that may see
//! them, within amoCRM's budget.
//!
//! Changes come from amoCRM's webhooks (on any replica: through Redis), from the gateway's own
//! mutations, and from a change feed that polls amoCRM for scopes with subscribers when no
//! webhook tells (`feed`). A change is read once per subscribed scope, with that scope's own
//! credentials, in one call for every change that arrived within a window (`COALESCE`): a
//! subscriber sees a contact only as its own token may, and a burst of webhooks costs one
//! read per scope, never one per subscriber.
//!
//! - `filter`: whether a contact matches a subscription's `filter`, decided locally.
//! - `feed`: the change feed.

mod feed;
pub mod filter;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::amocrm::{Contact, ContactId};
use crate::auth::{Credentials, Scope};
use crate::background::Background;
use crate::cache::Caches;
use crate::shared::Broadcast;
use crate::shared::broadcast::Heard;

/// Changes arriving within this window are read together. Webhooks are already batched by the
/// caches' invalidation window (100 ms), whose batch tells the hub at once: this only gathers
/// those, so an event waits at most this long before its read.
pub const COALESCE: Duration = Duration::from_millis(20);
/// Events a subscriber may fall behind by before it is cut off: a slow consumer must not make
/// the gateway hold events for it without bound. Four rounds of `ROUND` changes and a little
/// more (a power of two, as the channel's capacity is): a bulk edit in amoCRM (thousands of
/// contacts in one webhook) is told a round at a time, so that subscribers who keep up never
/// fall this far behind.
pub const SUBSCRIBER_BACKLOG: usize = 1024;
/// Changes one read takes (amoCRM's page): a scope's pending changes are read and told this
/// many at a time.
const ROUND: usize = 250;
/// The longest a scope waits for its subscribers between two rounds.
const PACE_LIMIT: Duration = Duration::from_millis(100);
/// Subscriptions one replica holds at most: idle ones are measured (README) at about 25 KiB
/// each, so these stay within about 550 MiB.
pub const MAX_SUBSCRIPTIONS: usize = 20_000;
/// Subscriptions of one client on one replica: a page of tabs, not a crawler.
pub const MAX_SUBSCRIPTIONS_PER_CLIENT: usize = 1_000;
/// Subscriptions on one connection (one WebSocket).
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 100;
/// Ids of deleted contacts a scope is told of only if it saw them: how many it remembers.
const SEEN_PER_SCOPE: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChangeKind {
    Created,
    Updated,
    Deleted,
    Restored,
}

/// A contact that changed, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub id: ContactId,
    pub kind: ChangeKind,
}

/// A change as one scope sees it: `contact` read with the scope's credentials, `None` when it
/// was deleted.
#[derive(Debug)]
pub struct Event {
    pub kind: ChangeKind,
    pub id: ContactId,
    pub contact: Option<Arc<Contact>>,
    /// For a deletion: whether the scope was told of the contact before. A deleted contact can
    /// no longer be read to check who may see it, so only subscribers that named its id, or
    /// whose scope saw it, hear of it.
    pub seen: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct LiveLimits {
    /// Subscriptions on this replica.
    pub total: usize,
    /// Subscriptions of one client (a forwarded token, or a client key of the gateway's own
    /// token) on this replica.
    pub per_client: usize,
    /// How often the change feed asks amoCRM, at most, for each scope with subscribers.
    pub poll_interval: Duration,
    /// This replica's share of the upstream calls a second the account allows (0: no limit),
    /// of which the change feed takes at most `FEED_SHARE`.
    pub upstream_rps: u32,
    /// Whether the change feed runs: not where amoCRM's webhooks tell of changes.
    pub feed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LiveError {
    #[error("this gateway holds its maximum of {0} subscriptions; try again later")]
    Full(usize),
    #[error("this client holds its maximum of {0} subscriptions on this gateway")]
    ClientFull(usize),
    #[error("this connection holds its maximum of {0} subscriptions: open another")]
    ConnectionFull(usize),
}

/// The contact changes among a webhook's events: `add` is a creation, `delete` and `restore`
/// say so, and every other action (`update`, `responsible`, `note`...) is an update.
pub fn changes(events: &[crate::amocrm::webhook::WebhookEvent]) -> Vec<Change> {
    use crate::amocrm::webhook::Entity;
    events
        .iter()
        .filter_map(|event| match event.entity {
            Entity::Contact(id) => Some(Change {
                id,
                kind: match event.action.as_str() {
                    "add" => ChangeKind::Created,
                    "delete" => ChangeKind::Deleted,
                    "restore" => ChangeKind::Restored,
                    _ => ChangeKind::Updated,
                },
            }),
            _ => None,
        })
        .collect()
}

/// Changes waiting for one scope's read, at most.
const MAX_PENDING: usize = 10_000;
/// How many times a scope's read of a batch is tried before the batch is given up.
const FLUSH_ATTEMPTS: u32 = 3;
const FLUSH_RETRY: Duration = Duration::from_secs(1);
/// What `seen_at` holds for a contact told as deleted: no digest of a contact.
const DELETED: u64 = 0;
/// What `seen_at` holds for a contact the scope may see but was not told as it is now (read
/// when a subscription named it, or changed while nobody of the scope wanted it): no digest
/// of a contact either, so its next change is told.
const UNTOLD: u64 = 1;

/// The scope's state, if it is still the one of `generation` (a scope whose subscribers all
/// left may have been made again under the same name since).
fn live_of<'a>(
    scopes: &'a mut HashMap<Scope, ScopeLive>,
    scope: &Scope,
    generation: u64,
) -> Option<&'a mut ScopeLive> {
    scopes
        .get_mut(scope)
        .filter(|live| live.generation == generation)
}

/// The limiter lane of the hub's reads for a scope whose callers share the gateway's token
/// (each client key has a lane of its own): those reads serve every client of the scope.
const HUB_LANE: u64 = u64::MAX;

/// The credentials a scope's reads and feed run with: a forwarded token is the scope itself;
/// a shared token's reads wait in the hub's own lane, not in the lane of whichever client
/// subscribed first (which would pay for every other client's events).
fn hub_credentials(credentials: &Credentials) -> Credentials {
    match credentials.token.lane() {
        Some(_) => Credentials {
            token: credentials.token.clone().in_lane(HUB_LANE),
            scope: credentials.scope.clone(),
        },
        None => credentials.clone(),
    }
}

/// What was told of a contact, in 8 bytes: its JSON, hashed as it is written (no buffer).
fn digest(contact: &Contact) -> u64 {
    use std::hash::{DefaultHasher, Hasher};
    struct Hashing(DefaultHasher);
    impl std::io::Write for Hashing {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.write(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hashing = Hashing(DefaultHasher::new());
    // Writing into a hasher cannot fail, nor can serializing a contact read from JSON.
    let _ = serde_json::to_writer(&mut hashing, contact);
    // Above the markers `DELETED` and `UNTOLD`.
    hashing.0.finish().max(2)
}

/// Hands changes to subscribers. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    caches: Caches,
    limits: LiveLimits,
    scopes: Mutex<HashMap<Scope, ScopeLive>>,
    active: AtomicUsize,
    generations: std::sync::atomic::AtomicU64,
    broadcast: Option<Broadcast>,
    metrics: crate::metrics::Metrics,
}

struct ScopeLive {
    /// One subscriber's credentials: every token of a scope sees the same.
    credentials: Credentials,
    sender: broadcast::Sender<Arc<Event>>,
    /// Subscribers per client: by client-key lane (`None`: the token itself).
    clients: HashMap<Option<u64>, usize>,
    /// Subscribers that name no ids (every change may be theirs), and how many subscribers
    /// name each id: while `wide` is 0, only changes of named contacts are read.
    wide: usize,
    named: HashMap<ContactId, usize>,
    pending: Vec<Change>,
    /// Contacts already read for pending changes (the change feed's answer names them).
    known: HashMap<ContactId, Arc<Contact>>,
    flushing: bool,
    /// Tells this scope's flush from one of a scope of the same name that ended meanwhile.
    generation: u64,
    /// Contacts told to the scope, oldest first, with a digest of what was told: a change
    /// already told (a mutation's, then amoCRM's webhook for it) is not told twice. A digest of
    /// the whole contact, not its `updated_at`, which has one-second resolution.
    seen: VecDeque<ContactId>,
    seen_at: HashMap<ContactId, u64>,
    feed: Option<tokio::task::AbortHandle>,
}

/// A subscriber's events; it leaves its scope when dropped.
pub struct Subscription {
    pub events: broadcast::Receiver<Arc<Event>>,
    _leave: Leave,
}

struct Leave {
    hub: Hub,
    scope: Scope,
    lane: Option<u64>,
    named: Vec<ContactId>,
}

/// A subscriber's place in its scope, given back when dropped.
pub struct Membership(#[allow(dead_code, reason = "held for its Drop")] Leave);

impl Subscription {
    /// The events, and the place that must be held as long as they are read.
    pub fn split(self) -> (broadcast::Receiver<Arc<Event>>, Membership) {
        (self.events, Membership(self._leave))
    }
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.hub.leave(&self.scope, self.lane, &self.named);
    }
}

impl Hub {
    /// `broadcast`: the replicas' channel for changes (with Redis).
    pub fn new(
        caches: Caches,
        limits: LiveLimits,
        broadcast: Option<Broadcast>,
        metrics: crate::metrics::Metrics,
    ) -> Self {
        Hub {
            inner: Arc::new(Inner {
                caches,
                limits,
                scopes: Mutex::new(HashMap::new()),
                active: AtomicUsize::new(0),
                generations: std::sync::atomic::AtomicU64::new(0),
                broadcast,
                metrics,
            }),
        }
    }

    /// Records which of `ids` the scope may see (one read, past the caches), so that it hears
    /// of their deletion later: a deleted contact can no longer be read to check that.
    pub async fn learn(
        &self,
        credentials: &Credentials,
        ids: &std::collections::BTreeSet<ContactId>,
    ) {
        // Only those the scope does not know yet: a client that subscribes again and again to
        // the same contacts costs one read, not one a subscription.
        let unknown: std::collections::BTreeSet<ContactId> = {
            let scopes = self.lock();
            let Some(live) = scopes.get(&credentials.scope) else {
                return;
            };
            ids.iter()
                .filter(|id| !live.seen_at.contains_key(id))
                .copied()
                .collect()
        };
        if unknown.is_empty() {
            return;
        }
        let read = match self.inner.caches.read_back(credentials, &unknown).await {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(%error, "could not read a subscription's contacts");
                return;
            }
        };
        let mut scopes = self.lock();
        let Some(live) = scopes.get_mut(&credentials.scope) else {
            return;
        };
        // Marked as visible, not as told: a change of it waiting for this scope's read must
        // still be told.
        for (id, _) in read {
            if let std::collections::hash_map::Entry::Vacant(entry) = live.seen_at.entry(id) {
                entry.insert(UNTOLD);
                live.seen.push_back(id);
            }
        }
        while live.seen.len() > SEEN_PER_SCOPE {
            if let Some(old) = live.seen.pop_front() {
                live.seen_at.remove(&old);
            }
        }
    }

    /// Subscriptions on this replica now.
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::SeqCst)
    }

    /// A place in the scope of `credentials`, for a subscriber of the contacts `named` (none:
    /// of every contact it may see).
    pub fn subscribe(
        &self,
        credentials: &Credentials,
        named: &std::collections::BTreeSet<ContactId>,
    ) -> Result<Subscription, LiveError> {
        let limits = self.inner.limits;
        let mut scopes = self.lock();
        if self.active() >= limits.total {
            return Err(LiveError::Full(limits.total));
        }
        let live = scopes
            .entry(credentials.scope.clone())
            .or_insert_with(|| ScopeLive {
                credentials: hub_credentials(credentials),
                sender: broadcast::channel(SUBSCRIBER_BACKLOG).0,
                clients: HashMap::new(),
                wide: 0,
                named: HashMap::new(),
                pending: Vec::new(),
                known: HashMap::new(),
                flushing: false,
                generation: self.inner.generations.fetch_add(1, Ordering::Relaxed),
                seen: VecDeque::new(),
                seen_at: HashMap::new(),
                feed: None,
            });
        let lane = credentials.token.lane();
        let of_client = live.clients.entry(lane).or_default();
        if *of_client >= limits.per_client {
            return Err(LiveError::ClientFull(limits.per_client));
        }
        *of_client += 1;
        if named.is_empty() {
            live.wide += 1;
        }
        for id in named {
            *live.named.entry(*id).or_default() += 1;
        }
        let events = live.sender.subscribe();
        if live.feed.is_none() && limits.feed {
            live.feed = Some(feed::start(self.clone(), live.credentials.clone()));
        }
        // Counted (and shown) under the lock that checked the total, so that two at once
        // cannot both pass, nor a leave's count overtake this one's.
        let active = self.inner.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.inner.metrics.live_subscriptions(active);
        drop(scopes);
        Ok(Subscription {
            events,
            _leave: Leave {
                hub: self.clone(),
                scope: credentials.scope.clone(),
                lane: credentials.token.lane(),
                named: named.iter().copied().collect(),
            },
        })
    }

    fn leave(&self, scope: &Scope, lane: Option<u64>, named: &[ContactId]) {
        let mut scopes = self.lock();
        if let Some(live) = scopes.get_mut(scope) {
            if named.is_empty() {
                live.wide = live.wide.saturating_sub(1);
            }
            for id in named {
                if let Some(count) = live.named.get_mut(id) {
                    *count -= 1;
                    if *count == 0 {
                        live.named.remove(id);
                    }
                }
            }
            if let Some(of_client) = live.clients.get_mut(&lane) {
                *of_client = of_client.saturating_sub(1);
                if *of_client == 0 {
                    live.clients.remove(&lane);
                }
            }
            if live.clients.is_empty() {
                if let Some(feed) = live.feed.take() {
                    feed.abort();
                }
                scopes.remove(scope);
            }
        }
        let active = self
            .inner
            .active
            .fetch_sub(1, Ordering::SeqCst)
            .saturating_sub(1);
        self.inner.metrics.live_subscriptions(active);
        drop(scopes);
    }

    /// Changes this replica learned of (a webhook, a mutation, the feed): told here and, with
    /// Redis, to the other replicas.
    pub async fn changed(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        self.changed_here(&changes);
        if let Some(broadcast) = &self.inner.broadcast {
            broadcast.publish(&changes).await;
        }
    }

    /// Tells this replica's subscribers of another replica's changes until the returned
    /// handle is dropped.
    pub fn follow_other_replicas(&self) -> Background {
        let mut background = Background::default();
        let Some(broadcast) = &self.inner.broadcast else {
            return background;
        };
        let mut heard = broadcast.listen::<Vec<Change>>();
        let hub = self.clone();
        let task = tokio::spawn(async move {
            while let Some(heard) = heard.recv().await {
                match heard {
                    Heard::Message(changes) => hub.changed_here(&changes),
                    Heard::Confirm(changes, confirm) => {
                        hub.changed_here(&changes);
                        confirm.send().await;
                    }
                    // Missed changes are not replayed: the feed and the caches' own expiry
                    // catch up with them.
                    Heard::Gap => {}
                }
            }
        });
        background.hold(&task);
        background
    }

    /// Queues `changes` for every scope with subscribers.
    fn changed_here(&self, changes: &[Change]) {
        self.queue(None, changes, &HashMap::new());
    }

    /// The change feed's answer for `scope`: told to that scope only (the other scopes' own
    /// feeds see what they may), with no second read.
    fn changed_in(&self, scope: &Scope, contacts: Vec<(Change, Arc<Contact>)>) {
        let changes: Vec<Change> = contacts.iter().map(|(change, _)| *change).collect();
        let known = contacts
            .into_iter()
            .map(|(change, contact)| (change.id, contact))
            .collect();
        self.queue(Some(scope), &changes, &known);
    }

    /// Queues `changes` for `only` that scope, or for every scope with subscribers, and starts
    /// a flush after the coalescing window where none is waiting.
    fn queue(
        &self,
        only: Option<&Scope>,
        changes: &[Change],
        known: &HashMap<ContactId, Arc<Contact>>,
    ) {
        let mut scopes = self.lock();
        let due: Vec<(Scope, u64)> = scopes
            .iter_mut()
            .filter(|(scope, _)| only.is_none_or(|only| only == *scope))
            .filter_map(|(scope, live)| {
                // Where every subscriber named its contacts, only their changes are read.
                let (wanted, unread): (Vec<Change>, Vec<Change>) = changes
                    .iter()
                    .partition(|change| live.wide > 0 || live.named.contains_key(&change.id));
                // What the scope was told of those others is out of date now: their next
                // change must be told, and a deletion remembered.
                for change in unread {
                    if let Some(told) = live.seen_at.get_mut(&change.id) {
                        *told = match change.kind {
                            ChangeKind::Deleted => DELETED,
                            _ => UNTOLD,
                        };
                    }
                }
                if wanted.is_empty() {
                    return None;
                }
                // Bounded while a slow read holds the flush: past it, changes are dropped (the
                // caches' own invalidation and expiry still cover them).
                let room = MAX_PENDING.saturating_sub(live.pending.len());
                if room < wanted.len() {
                    tracing::warn!(
                        dropped = wanted.len() - room,
                        "too many changes wait for one scope's read; dropping the rest"
                    );
                }
                let queued = &wanted[..room.min(wanted.len())];
                live.pending.extend_from_slice(queued);
                // Only for what waits here: a contact kept for a change that is not queued
                // would be told, stale, with some later change of it; and a change that
                // comes without the contact (a webhook's) voids a copy kept before it.
                for change in queued {
                    match known.get(&change.id) {
                        Some(contact) => live.known.insert(change.id, contact.clone()),
                        None => live.known.remove(&change.id),
                    };
                }
                (!live.flushing).then(|| {
                    live.flushing = true;
                    (scope.clone(), live.generation)
                })
            })
            .collect();
        drop(scopes);
        for (scope, generation) in due {
            let hub = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(COALESCE).await;
                hub.flush(&scope, generation).await;
            });
        }
    }

    /// Reads the scope's pending changes with its credentials, once, and tells its
    /// subscribers of those its token may see.
    /// One read in flight per scope: changes that arrive during it wait for the next round,
    /// so that an older read can never be told after a newer one.
    async fn flush(&self, scope: &Scope, generation: u64) {
        let mut failures = 0;
        loop {
            let batch = {
                let mut scopes = self.lock();
                let Some(live) = live_of(&mut scopes, scope, generation) else {
                    return;
                };
                if live.pending.is_empty() {
                    live.flushing = false;
                    return;
                }
                let round: Vec<Change> = if live.pending.len() > ROUND {
                    live.pending.drain(..ROUND).collect()
                } else {
                    std::mem::take(&mut live.pending)
                };
                let known = round
                    .iter()
                    .filter_map(|change| live.known.remove_entry(&change.id))
                    .collect();
                (live.credentials.clone(), round, known)
            };
            match self.flush_once(scope, generation, batch).await {
                Ok(()) => {
                    failures = 0;
                    self.paced(scope, generation).await;
                }
                Err((changes, error)) => {
                    failures += 1;
                    tracing::warn!(%error, failures, "could not read changed contacts for subscribers");
                    if failures >= FLUSH_ATTEMPTS {
                        // Given up: the caches' expiry and the next change catch up with them.
                        failures = 0;
                        continue;
                    }
                    // Put back in front of what came meanwhile, and try again after a pause.
                    if let Some(live) = live_of(&mut self.lock(), scope, generation) {
                        let later = std::mem::replace(&mut live.pending, changes);
                        live.pending.extend(later);
                    }
                    tokio::time::sleep(FLUSH_RETRY).await;
                }
            }
        }
    }

    /// Waits, briefly, for the scope's subscribers to take most of the rounds told so far, so
    /// that those who keep up are never a backlog behind; a slow one does not hold the others
    /// up for longer than `PACE_LIMIT` a round.
    async fn paced(&self, scope: &Scope, generation: u64) {
        let started = tokio::time::Instant::now();
        loop {
            let queued =
                live_of(&mut self.lock(), scope, generation).map_or(0, |live| live.sender.len());
            if queued + ROUND <= SUBSCRIBER_BACKLOG || started.elapsed() >= PACE_LIMIT {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Reads and tells one batch; on a failed read, the batch's changes back.
    async fn flush_once(
        &self,
        scope: &Scope,
        generation: u64,
        (credentials, changes, mut known): (
            Credentials,
            Vec<Change>,
            HashMap<ContactId, Arc<Contact>>,
        ),
    ) -> Result<(), (Vec<Change>, Arc<crate::amocrm::AmoError>)> {
        // One event per contact, the last change winning (a delete after an update is a delete).
        let mut last: HashMap<ContactId, ChangeKind> = HashMap::new();
        let mut order = Vec::new();
        for change in &changes {
            if last.insert(change.id, change.kind).is_none() {
                order.push(change.id);
            }
        }
        let to_read: std::collections::BTreeSet<ContactId> = order
            .iter()
            .filter(|id| last[*id] != ChangeKind::Deleted && !known.contains_key(id))
            .copied()
            .collect();
        if !to_read.is_empty() {
            match self.inner.caches.read_back(&credentials, &to_read).await {
                Ok(read) => known.extend(read),
                Err(error) => return Err((changes, error)),
            }
        }
        // What the changes void is dropped from the caches before anyone hears of them, so
        // that a query sent on an event answers as the event does.
        self.inner.caches.settled().await;
        let mut scopes = self.lock();
        let Some(live) = live_of(&mut scopes, scope, generation) else {
            return Ok(());
        };
        let mut delivered = 0;
        for id in order {
            let kind = last[&id];
            let contact = known
                .get(&id)
                .cloned()
                .filter(|_| kind != ChangeKind::Deleted);
            let seen = live.seen_at.get(&id).copied();
            let digest = contact.as_deref().map(digest);
            match (&contact, kind) {
                // Told as deleted: a restore with the same content is news again.
                (_, ChangeKind::Deleted) => {
                    if let Some(told) = live.seen_at.get_mut(&id) {
                        *told = DELETED;
                    }
                }
                // Not visible to this scope's token.
                (None, _) => continue,
                // Told already, as it is now.
                (Some(_), _) if seen.is_some() && seen == digest => continue,
                (Some(_), _) => {
                    if seen.is_none() {
                        live.seen.push_back(id);
                    }
                    live.seen_at.insert(id, digest.unwrap_or_default());
                    if live.seen.len() > SEEN_PER_SCOPE
                        && let Some(old) = live.seen.pop_front()
                    {
                        live.seen_at.remove(&old);
                    }
                }
            }
            let event = Event {
                kind,
                id,
                contact,
                seen: seen.is_some(),
            };
            // No receiver left is not an error: the scope is about to go.
            delivered += live.sender.send(Arc::new(event)).unwrap_or(0);
        }
        drop(scopes);
        self.inner.metrics.live_events_delivered(delivered);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Scope, ScopeLive>> {
        self.inner.scopes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn caches(&self) -> &Caches {
        &self.inner.caches
    }

    pub(crate) fn limits(&self) -> LiveLimits {
        self.inner.limits
    }

    /// How many scopes have subscribers: the feed's interval stretches with it.
    pub(crate) fn scopes(&self) -> usize {
        self.lock().len()
    }

    pub(crate) fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amocrm::AccessToken;

    fn credentials(token: AccessToken) -> Credentials {
        Credentials {
            token,
            scope: Scope::for_tests("scope"),
        }
    }

    #[test]
    fn a_shared_tokens_scope_reads_in_the_hubs_own_lane() {
        let client = credentials(AccessToken::new("shared").in_lane(3));
        assert_eq!(hub_credentials(&client).token.lane(), Some(HUB_LANE));
        assert_eq!(hub_credentials(&client).scope, client.scope);
        // A forwarded token is its own scope and lane.
        let forwarded = credentials(AccessToken::new("forwarded"));
        assert_eq!(hub_credentials(&forwarded).token.lane(), None);
    }
}
