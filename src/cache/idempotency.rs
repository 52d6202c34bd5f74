//! Idempotency keys: the outcome of a write kept per scope and key for a day, so that a client
//! retrying a create (after a timeout, a lost connection, a crashed tab) gets the first outcome
//! instead of a second contact. amoCRM has no such thing: its `request_id` is echoed, not kept.
//!
//! The first request with a key runs the write in a task of its own, so that it completes and
//! is recorded even when that client goes away; concurrent requests with the same key wait for
//! it. A key sent again with a different input is refused.
//!
//! With replicas the record lives in Redis too: a replica claims a key's write with `SET NX`
//! on a lease that expires (so a crashed replica does not hold the key for a day), and the
//! others wait for the record it leaves. Without Redis, or while Redis is away, keys hold on
//! each replica alone.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::Scope;
use crate::shared::{Operation, Redis};

/// A write holds its key's lease this long at most: longer than any write's retries.
const LEASE: Duration = Duration::from_secs(60);
/// How often a replica waiting for another's write looks for its record: soon at first, then
/// less often, so that a long write costs its waiters a few Redis calls a second, not fifty.
const WAIT_POLL: Duration = Duration::from_millis(20);
const MAX_WAIT_POLL: Duration = Duration::from_millis(500);

/// What Redis keeps under a key.
#[derive(Serialize, Deserialize)]
struct Record<T> {
    input: String,
    outcome: T,
}

/// How long an outcome is kept.
pub const KEEP: Duration = Duration::from_secs(24 * 60 * 60);
/// Keys are the client's strings: bounded, so that a key cannot be a memory attack.
pub const MAX_KEY_BYTES: usize = 255;
const MAX_KEYS: u64 = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdempotencyError {
    #[error(
        "this idempotency key was first used with a different input; use a new key for a new write"
    )]
    OtherInput,
    #[error(
        "a write under this idempotency key is still under way on another replica; retry with the same key"
    )]
    InProgress,
    #[error(
        "the replicas' shared store (Redis) cannot be reached to hold this idempotency key, and \
         writing without it could write twice; retry with the same key"
    )]
    Unshared,
    #[error("the write under this idempotency key failed inside the gateway")]
    Failed,
}

struct Slot<T> {
    /// SHA-256 of the input the key's write was made with, once this replica made or learned
    /// one: a request with another input that reached this replica first must not bind it.
    input: std::sync::Mutex<Option<[u8; 32]>>,
    outcome: Arc<tokio::sync::Mutex<Option<T>>>,
}

impl<T> Slot<T> {
    /// Whether `input` may use the key here (binding it, if nothing has yet).
    fn admits(&self, input: [u8; 32]) -> bool {
        let mut bound = self.input.lock().unwrap_or_else(|e| e.into_inner());
        *bound.get_or_insert(input) == input
    }

    fn is_bound_to_other(&self, input: [u8; 32]) -> bool {
        let bound = self.input.lock().unwrap_or_else(|e| e.into_inner());
        bound.is_some_and(|bound| bound != input)
    }
}

pub struct Idempotency<T> {
    slots: moka::future::Cache<(Scope, String), Arc<Slot<T>>>,
    redis: Option<Redis>,
}

impl<T> Clone for Idempotency<T> {
    fn clone(&self) -> Self {
        Idempotency {
            slots: self.slots.clone(),
            redis: self.redis.clone(),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Default for Idempotency<T> {
    fn default() -> Self {
        Self::new(None)
    }
}

impl<T: Clone + Send + Sync + 'static> Idempotency<T> {
    pub fn new(redis: Option<Redis>) -> Self {
        Idempotency {
            slots: moka::future::Cache::builder()
                .max_capacity(MAX_KEYS)
                .time_to_live(KEEP)
                .build(),
            redis,
        }
    }
}

impl<T: Clone + Send + Sync + Serialize + DeserializeOwned + 'static> Idempotency<T> {
    /// The outcome under `key`: the kept one when `settled` says it is final, or what `write`
    /// makes of the kept one (`None` the first time; an unsettled one, such as an outcome
    /// amoCRM never confirmed, to be completed). One `write` at a time per key.
    pub async fn run<W, F>(
        &self,
        scope: &Scope,
        key: &str,
        input: [u8; 32],
        settled: impl Fn(&T) -> bool,
        write: W,
    ) -> Result<T, IdempotencyError>
    where
        W: FnOnce(Option<T>) -> F + Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let slot = self
            .slots
            .get_with((scope.clone(), key.to_owned()), async move {
                Arc::new(Slot {
                    input: std::sync::Mutex::new(None),
                    outcome: Arc::default(),
                })
            })
            .await;
        if slot.is_bound_to_other(input) {
            return Err(IdempotencyError::OtherInput);
        }
        let mut outcome = slot.outcome.clone().lock_owned().await;
        // Checked again under the lock: the write before this one bound the key.
        if slot.is_bound_to_other(input) {
            return Err(IdempotencyError::OtherInput);
        }
        if let Some(kept) = outcome.as_ref()
            && settled(kept)
        {
            return Ok(kept.clone());
        }
        let shared = self
            .redis
            .clone()
            .map(|redis| Shared::new(redis, scope, key, input));
        let mut kept = outcome.clone();
        let mut lease = None;
        if let Some(shared) = &shared {
            match shared.claim(&settled).await? {
                Claimed::Settled(found) => {
                    slot.admits(input);
                    *outcome = Some(found.clone());
                    return Ok(found);
                }
                Claimed::Lease(token, found) => {
                    kept = found.or(kept);
                    lease = Some(token);
                }
            }
        }
        if !slot.admits(input) {
            return Err(IdempotencyError::OtherInput);
        }
        // The write finishes and is recorded even if this request is dropped meanwhile; the
        // lock, held by the task, keeps the key's other requests waiting until then, and the
        // lease is renewed for as long as the write takes.
        tokio::spawn(async move {
            let renewing = shared
                .as_ref()
                .zip(lease.as_ref())
                .map(|(shared, token)| shared.renew_while_held(token.clone()));
            let made = write(kept).await;
            *outcome = Some(made.clone());
            if let Some(renewing) = renewing {
                renewing.abort();
            }
            if let Some(shared) = shared {
                shared.record(&made, lease).await;
            }
            made
        })
        .await
        .map_err(|_| IdempotencyError::Failed)
    }

    pub fn invalidate_all(&self) {
        self.slots.invalidate_all();
    }
}

/// A key's record and lease in Redis.
struct Shared {
    redis: Redis,
    record: String,
    lease: String,
    input: String,
}

enum Claimed<T> {
    /// Another write under the key settled it.
    Settled(T),
    /// This replica writes now, under the lease with this token, from what is recorded so far.
    Lease(String, Option<T>),
}

impl Shared {
    fn new(redis: Redis, scope: &Scope, key: &str, input: [u8; 32]) -> Self {
        // Hashed: the client's key and the scope are neither printed nor kept as they are.
        let name = hex::encode(Sha256::digest(format!("{}\n{key}", scope.as_str())));
        Shared {
            record: redis.key(format_args!("v1:idempotency:{name}")),
            lease: redis.key(format_args!("v1:idempotency:{name}:lease")),
            input: hex::encode(input),
            redis,
        }
    }

    /// Waits until the key is settled elsewhere or this replica holds its lease. Fails closed:
    /// without Redis's word, writing could write twice.
    async fn claim<T: DeserializeOwned>(
        &self,
        settled: &impl Fn(&T) -> bool,
    ) -> Result<Claimed<T>, IdempotencyError> {
        let deadline = tokio::time::Instant::now() + LEASE;
        let token = format!("{}:{:016x}", self.redis.replica(), rand::random::<u64>());
        let mut poll = WAIT_POLL;
        loop {
            let recorded = match self.read::<T>().await {
                None => return Err(IdempotencyError::Unshared),
                Some(Some(record)) if record.input != self.input => {
                    return Err(IdempotencyError::OtherInput);
                }
                Some(Some(record)) if settled(&record.outcome) => {
                    return Ok(Claimed::Settled(record.outcome));
                }
                Some(record) => record.map(|r| r.outcome),
            };
            let (lease, token_arg) = (self.lease.clone(), token.clone());
            let won = self
                .redis
                .run(Operation::Lease, |mut conn| {
                    let mut set = redis::cmd("SET");
                    set.arg(&lease)
                        .arg(&token_arg)
                        .arg("NX")
                        .arg("PX")
                        .arg(LEASE.as_millis() as u64);
                    async move { set.query_async::<Option<String>>(&mut conn).await }
                })
                .await;
            match won {
                None => return Err(IdempotencyError::Unshared),
                Some(Some(_)) => {
                    // Read again under the lease: the previous holder may have just recorded.
                    return match self.read::<T>().await {
                        None => {
                            self.release(&token);
                            Err(IdempotencyError::Unshared)
                        }
                        Some(Some(record)) if record.input != self.input => {
                            self.release(&token);
                            Err(IdempotencyError::OtherInput)
                        }
                        Some(Some(record)) if settled(&record.outcome) => {
                            self.release(&token);
                            Ok(Claimed::Settled(record.outcome))
                        }
                        Some(record) => Ok(Claimed::Lease(
                            token,
                            record.map(|r| r.outcome).or(recorded),
                        )),
                    };
                }
                Some(None) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(poll).await;
                    poll = (poll * 2).min(MAX_WAIT_POLL);
                }
                // Its holder renews the lease while it writes: it is still under way.
                Some(None) => return Err(IdempotencyError::InProgress),
            }
        }
    }

    /// Keeps the lease alive while this replica writes: a write waiting for the rate limit
    /// may outlast one lease, and another replica must not take the key meanwhile.
    fn renew_while_held(&self, token: String) -> tokio::task::JoinHandle<()> {
        const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                               return redis.call('PEXPIRE', KEYS[1], ARGV[2]) \
                             end \
                             return 0";
        let (redis, lease) = (self.redis.clone(), self.lease.clone());
        tokio::spawn(async move {
            let script = redis::Script::new(RENEW);
            loop {
                tokio::time::sleep(LEASE / 3).await;
                let renewed = redis
                    .run_always(Operation::Lease, |mut conn| {
                        let (script, lease, token) = (script.clone(), lease.clone(), token.clone());
                        async move {
                            script
                                .key(&lease)
                                .arg(&token)
                                .arg(LEASE.as_millis() as u64)
                                .invoke_async::<i64>(&mut conn)
                                .await
                        }
                    })
                    .await;
                // Lost (it lapsed while Redis was away): nothing is left to renew. A failed
                // call is tried again.
                if renewed == Some(0) {
                    return;
                }
            }
        })
    }

    /// The record: `None` when Redis is away, `Some(None)` when there is none.
    async fn read<T: DeserializeOwned>(&self) -> Option<Option<Record<T>>> {
        let record = self.record.clone();
        let bytes = self
            .redis
            .run(Operation::Read, |mut conn| {
                let mut get = redis::cmd("GET");
                get.arg(&record);
                async move { get.query_async::<Option<Vec<u8>>>(&mut conn).await }
            })
            .await?;
        Some(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Records the outcome for the other replicas. The lease is let go only once the record is
    /// in: otherwise it expires on its own, and until then the others wait rather than write.
    async fn record<T: Serialize>(&self, outcome: &T, lease: Option<String>) {
        let record = Record {
            input: self.input.clone(),
            outcome,
        };
        let Ok(bytes) = serde_json::to_vec(&record) else {
            return;
        };
        let key = self.record.clone();
        let recorded = self
            .redis
            .run_always(Operation::Write, |mut conn| {
                let mut set = redis::cmd("SET");
                set.arg(&key)
                    .arg(&bytes)
                    .arg("PX")
                    .arg(KEEP.as_millis() as u64);
                async move { set.query_async::<()>(&mut conn).await }
            })
            .await;
        match (recorded, lease) {
            (Some(()), Some(token)) => self.release(&token),
            (None, _) => tracing::warn!(
                "could not record an idempotency key's outcome in Redis; its lease expires instead"
            ),
            _ => {}
        }
    }

    fn release(&self, token: &str) {
        crate::shared::release_in_background(&self.redis, self.lease.clone(), token.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn scope() -> Scope {
        crate::auth::Scope::for_tests("s")
    }

    #[tokio::test]
    async fn concurrent_requests_with_one_key_write_once() {
        let store: Idempotency<u32> = Idempotency::default();
        let writes = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let run = |store: Idempotency<u32>| {
            let (writes, gate) = (writes.clone(), gate.clone());
            async move {
                store
                    .run(
                        &scope(),
                        "k",
                        [1; 32],
                        |_| true,
                        move |_| async move {
                            writes.fetch_add(1, Ordering::SeqCst);
                            gate.notified().await;
                            7
                        },
                    )
                    .await
            }
        };
        let first = tokio::spawn(run(store.clone()));
        let second = tokio::spawn(run(store.clone()));
        // Both have asked once the first write is under way and the second waits on the key.
        while writes.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        assert_eq!(first.await.expect("the first request"), Ok(7));
        assert_eq!(second.await.expect("the second request"), Ok(7));
        assert_eq!(writes.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn another_input_under_the_key_is_refused_and_unsettled_outcomes_are_completed() {
        let store: Idempotency<u32> = Idempotency::default();
        let unsettled = |v: &u32| *v != 0;
        let first = store
            .run(&scope(), "k", [1; 32], unsettled, |kept| async move {
                assert_eq!(kept, None);
                0
            })
            .await;
        assert_eq!(first, Ok(0));
        let other = store
            .run(&scope(), "k", [2; 32], unsettled, |_| async { 9 })
            .await;
        assert_eq!(other, Err(IdempotencyError::OtherInput));
        let completed = store
            .run(&scope(), "k", [1; 32], unsettled, |kept| async move {
                assert_eq!(kept, Some(0), "the unsettled outcome is handed on");
                5
            })
            .await;
        assert_eq!(completed, Ok(5));
        let kept = store
            .run(&scope(), "k", [1; 32], unsettled, |_| async {
                unreachable!()
            })
            .await;
        assert_eq!(kept, Ok(5));
    }

    #[tokio::test]
    async fn a_write_whose_requester_left_is_still_recorded() {
        let store: Idempotency<u32> = Idempotency::default();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let gate = Arc::new(tokio::sync::Notify::new());
        let requester = {
            let (store, gate) = (store.clone(), gate.clone());
            tokio::spawn(async move {
                store
                    .run(
                        &scope(),
                        "k",
                        [1; 32],
                        |_| true,
                        move |_| async move {
                            let _ = started_tx.send(());
                            gate.notified().await;
                            3
                        },
                    )
                    .await
            })
        };
        started.await.expect("the write started");
        requester.abort();
        gate.notify_one();
        let kept = store
            .run(
                &scope(),
                "k",
                [1; 32],
                |_| true,
                |_| async { unreachable!() },
            )
            .await;
        assert_eq!(kept, Ok(3));
    }
}
