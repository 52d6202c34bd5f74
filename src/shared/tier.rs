//! The second cache tier: values in Redis, shared by every replica, under each replica's moka.
//!
//! **Generations instead of deletes.** An invalidation cannot find every key it voids (they
//! are spread over scopes), and a replica may be writing what it fetched before the change. So
//! every value is stored with the generations current when its fetch began (its [`Stamp`]),
//! and a read returns it only while those generations are still current: bumping a generation
//! voids everything stamped before, including writes that land after the bump.
//!
//! **Leases.** When several replicas miss the same key at once, the first takes a short lease
//! and fetches; the others wait (bounded) for its value instead of calling the upstream too.
//! The holder renews the lease while it works, so a replica that dies holding one blocks the
//! key for at most the lease's length.
//!
//! Values are MessagePack (compact, and self-describing where JSON values are embedded), and
//! expire in Redis at the end of their stale window.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::Script;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Operation, Redis, millis};
use crate::metrics::{CacheName, Metrics};

/// Bumped when the stored format changes: replicas of different versions then ignore each
/// other's values instead of misreading them.
const FORMAT: &str = "v2";
/// How long a lease lasts without renewal: the longest a dead holder blocks a key.
pub const LEASE: Duration = Duration::from_secs(3);
/// How often a live holder renews its lease.
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// Polling for a value another replica is fetching: first after this, then doubling.
const FIRST_POLL: Duration = Duration::from_millis(5);
const MAX_POLL: Duration = Duration::from_millis(50);
/// Added to how long a short-lived generation is kept after its last bump: longer than any
/// fetch takes, so that a value a fetch stamped before the bump and stored after it expires
/// before the generation's count could start over and make it current again.
const GENERATION_MARGIN: Duration = Duration::from_secs(3600);

/// A generation counter in Redis: bumping it voids every value stamped with its older count.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Generation {
    key: String,
    /// For a generation that only guards short-lived values: how long it must outlive its last
    /// bump. By then every value it guarded has expired, and a count that starts over voids
    /// nothing new. `None` keeps it forever.
    keep_for: Option<Duration>,
}

/// The generations current when a fetch began. A value written with them is visible only
/// while none of them has been bumped since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp(Vec<i64>);

#[derive(Serialize, Deserialize)]
struct Stored<T> {
    stamp: Stamp,
    value: T,
}

/// A key of the tier and the generations that void its value.
#[derive(Debug, Clone)]
pub struct Slot {
    key: String,
    generations: Vec<Generation>,
}

/// What Redis holds for one slot.
#[derive(Debug)]
pub enum Found<T> {
    /// A current value.
    Value(T, Stamp),
    /// Nothing current: fetch it, and store it with this stamp.
    Absent(Stamp),
}

/// What [`Tier::find_or_lead`] got: the value, or the task of fetching it.
#[derive(Debug)]
pub enum Claim<T> {
    /// Stored by another replica (or an earlier request of this one).
    Found(T, Stamp),
    /// Fetch it yourself, then [`Tier::put`] it with the stamp (when there is one: without,
    /// Redis could not tell which generations are current, so nothing may be stored). The
    /// lease, when held, keeps the other replicas waiting for that value until it drops.
    Fetch {
        stamp: Option<Stamp>,
        lease: Option<Lease>,
    },
}

/// Values shared by every replica. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Tier {
    redis: Redis,
    metrics: Metrics,
    /// Invalidations Redis has not taken yet: until it does, what it holds may be what they
    /// void, so this replica neither reads nor writes the tier.
    pending: Arc<AtomicUsize>,
    renew: Script,
}

impl Tier {
    pub fn new(redis: Redis, metrics: Metrics) -> Tier {
        Tier {
            redis,
            metrics,
            pending: Arc::new(AtomicUsize::new(0)),
            renew: Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                   return redis.call('PEXPIRE', KEYS[1], ARGV[2]) \
                 end \
                 return 0",
            ),
        }
    }

    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// The generation named `name` (e.g. `pages`, `scope:…`).
    pub fn generation(
        &self,
        name: std::fmt::Arguments<'_>,
        keep_for: Option<Duration>,
    ) -> Generation {
        Generation {
            key: self.redis.key(format_args!("{FORMAT}:gen:{name}")),
            keep_for: keep_for.map(|k| k + GENERATION_MARGIN),
        }
    }

    /// Stops this replica from using the tier until the returned guard drops: an invalidation
    /// is waiting for Redis.
    pub fn suspend(&self) -> Suspension {
        self.pending.fetch_add(1, Ordering::SeqCst);
        Suspension(self.pending.clone())
    }

    /// The slot named `name`, voided by a bump of any of `generations`.
    pub fn slot(&self, name: std::fmt::Arguments<'_>, generations: Vec<Generation>) -> Slot {
        Slot {
            key: self.redis.key(format_args!("{FORMAT}:{name}")),
            generations,
        }
    }

    /// Reads the slots and their generations in one round trip. `None` when Redis could not
    /// answer.
    pub async fn get_many<T: DeserializeOwned>(
        &self,
        cache: CacheName,
        slots: &[Slot],
    ) -> Option<Vec<Found<T>>> {
        if self.pending.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let mut generations: Vec<&Generation> = Vec::new();
        for generation in slots.iter().flat_map(|s| &s.generations) {
            if !generations.contains(&generation) {
                generations.push(generation);
            }
        }
        let mut command = redis::cmd("MGET");
        for generation in &generations {
            command.arg(&generation.key);
        }
        for slot in slots {
            command.arg(&slot.key);
        }
        let replies: Vec<Option<Vec<u8>>> = self
            .redis
            .run(Operation::Read, |mut conn| {
                let command = command.clone();
                async move { command.query_async(&mut conn).await }
            })
            .await?;
        let (current, values) = replies.split_at(generations.len().min(replies.len()));
        let mut current_counts = Vec::with_capacity(current.len());
        for count in current {
            let parsed = match count.as_deref() {
                None => Some(0),
                Some(c) => std::str::from_utf8(c)
                    .ok()
                    .and_then(|c| c.parse::<i64>().ok()),
            };
            match parsed {
                Some(count) => current_counts.push(count),
                // Not a counter: nothing can tell which values are current.
                None => {
                    tracing::warn!("a generation key in Redis holds no number; not using the tier");
                    return None;
                }
            }
        }
        let current = current_counts;
        let found = slots
            .iter()
            .enumerate()
            .map(|(i, slot)| {
                let stamp = Stamp(
                    slot.generations
                        .iter()
                        .map(|g| {
                            generations
                                .iter()
                                .position(|known| *known == g)
                                .and_then(|at| current.get(at))
                                .copied()
                                .unwrap_or(0)
                        })
                        .collect(),
                );
                let stored = values.get(i).and_then(Option::as_deref).and_then(|bytes| {
                    rmp_serde::from_slice::<Stored<T>>(bytes)
                        .inspect_err(|e| {
                            tracing::debug!(error = %e, "ignoring an unreadable shared entry");
                        })
                        .ok()
                });
                match stored {
                    Some(stored) if stored.stamp == stamp => {
                        self.metrics.shared_lookup(cache, true);
                        Found::Value(stored.value, stamp)
                    }
                    _ => {
                        self.metrics.shared_lookup(cache, false);
                        Found::Absent(stamp)
                    }
                }
            })
            .collect();
        Some(found)
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        cache: CacheName,
        slot: &Slot,
    ) -> Option<Found<T>> {
        self.get_many(cache, std::slice::from_ref(slot))
            .await?
            .pop()
    }

    /// Stores values stamped with what was current when their fetch began, for `ttl` each.
    pub async fn put_many<T: Serialize>(&self, values: &[(&Slot, &Stamp, T, Duration)]) {
        let mut pipe = redis::pipe();
        for (slot, stamp, value, ttl) in values {
            if ttl.is_zero() {
                continue;
            }
            let stored = Stored {
                stamp: (*stamp).clone(),
                value,
            };
            match rmp_serde::to_vec(&stored) {
                Ok(bytes) => {
                    pipe.cmd("SET")
                        .arg(&slot.key)
                        .arg(bytes)
                        .arg("PX")
                        .arg(millis(*ttl))
                        .ignore();
                }
                Err(e) => tracing::error!(error = %e, "could not serialize a shared entry"),
            }
        }
        if pipe.is_empty() {
            return;
        }
        self.redis
            .run(Operation::Write, |mut conn| {
                let pipe = pipe.clone();
                async move { pipe.query_async::<()>(&mut conn).await }
            })
            .await;
    }

    pub async fn put<T: Serialize>(&self, slot: &Slot, stamp: &Stamp, value: T, ttl: Duration) {
        self.put_many(&[(slot, stamp, value, ttl)]).await;
    }

    /// Voids every value stamped with the current count of `generations`. Whether Redis took
    /// it.
    pub async fn bump(&self, generations: &[Generation]) -> bool {
        if generations.is_empty() {
            return true;
        }
        let mut pipe = redis::pipe();
        for generation in generations {
            pipe.cmd("INCR").arg(&generation.key).ignore();
            if let Some(keep_for) = generation.keep_for {
                pipe.cmd("PEXPIRE")
                    .arg(&generation.key)
                    .arg(millis(keep_for))
                    .ignore();
            }
        }
        self.redis
            .run_always(Operation::Invalidate, |mut conn| {
                let pipe = pipe.clone();
                async move { pipe.query_async::<()>(&mut conn).await }
            })
            .await
            .is_some()
    }

    /// A current value of `slot`; or, when there is none, the lease to fetch it, waiting up to
    /// `wait_at_most` for another replica that holds the lease to store it.
    pub async fn find_or_lead<T: DeserializeOwned>(
        &self,
        cache: CacheName,
        slot: &Slot,
        wait_at_most: Duration,
    ) -> Claim<T> {
        let deadline = tokio::time::Instant::now() + wait_at_most;
        let mut poll = FIRST_POLL;
        let mut waited = false;
        loop {
            let stamp = match self.get::<T>(cache, slot).await {
                None => {
                    return Claim::Fetch {
                        stamp: None,
                        lease: None,
                    };
                }
                Some(Found::Value(value, stamp)) => return Claim::Found(value, stamp),
                Some(Found::Absent(stamp)) => stamp,
            };
            match self.try_lease(slot).await {
                Some(Some(lease)) => {
                    return Claim::Fetch {
                        stamp: Some(stamp),
                        lease: Some(lease),
                    };
                }
                // Redis stopped answering: fetch without it.
                None => {
                    return Claim::Fetch {
                        stamp: Some(stamp),
                        lease: None,
                    };
                }
                Some(None) => {}
            }
            if !waited {
                waited = true;
                self.metrics.shared_lease_wait(cache);
            }
            if tokio::time::Instant::now() + poll > deadline {
                tracing::debug!("gave up waiting for another replica's fetch");
                return Claim::Fetch {
                    stamp: Some(stamp),
                    lease: None,
                };
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(MAX_POLL);
        }
    }

    /// Where the lease on `slot` lives.
    pub fn lease_key(&self, slot: &Slot) -> String {
        self.redis.key(format_args!("{FORMAT}:lease:{}", slot.key))
    }

    /// Takes the lease on `slot` if it is free: `Some(None)` when another replica holds it,
    /// `None` when Redis did not answer.
    pub async fn try_lease(&self, slot: &Slot) -> Option<Option<Lease>> {
        let key = &self.lease_key(slot);
        let token = format!("{}:{:016x}", self.redis.replica(), rand::random::<u64>());
        let taken: Option<String> = self
            .redis
            .run(Operation::Lease, |mut conn| {
                let (key, token) = (key.to_owned(), token.clone());
                async move {
                    redis::cmd("SET")
                        .arg(key)
                        .arg(token)
                        .arg("NX")
                        .arg("PX")
                        .arg(millis(LEASE))
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        if taken.is_none() {
            return Some(None);
        }
        let renewing = tokio::spawn({
            let (tier, key, token) = (self.clone(), key.to_owned(), token.clone());
            async move {
                let mut every = tokio::time::interval(RENEW_EVERY);
                every.tick().await;
                loop {
                    every.tick().await;
                    let (script, key, token) = (tier.renew.clone(), key.clone(), token.clone());
                    let renewed: Option<i64> = tier
                        .redis
                        .run_always(Operation::Lease, |mut conn| {
                            let (script, key, token) = (script.clone(), key.clone(), token.clone());
                            async move {
                                script
                                    .key(&key)
                                    .arg(&token)
                                    .arg(millis(LEASE))
                                    .invoke_async(&mut conn)
                                    .await
                            }
                        })
                        .await;
                    // Lost (it expired while Redis was away): the value will still be stored.
                    // A failed renewal is tried again on the next tick.
                    if renewed == Some(0) {
                        return;
                    }
                }
            }
        });
        Some(Some(Lease {
            tier: self.clone(),
            key: key.to_owned(),
            token,
            renewing,
        }))
    }
}

/// The right to fetch a key for every replica. Renewed while held; released on drop, which
/// comes after the value was stored.
#[derive(Debug)]
pub struct Lease {
    tier: Tier,
    key: String,
    token: String,
    renewing: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewing.abort();
        super::release_in_background(
            &self.tier.redis,
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.token),
        );
    }
}

/// Keeps the tier unused by this replica while it lives.
#[derive(Debug)]
pub struct Suspension(Arc<AtomicUsize>);

impl Drop for Suspension {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
