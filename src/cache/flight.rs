//! Single-flight: concurrent askers for one key share one piece of work, errors included.
//! Work that panics ends as an error for every asker (a shared future would otherwise hand the
//! panic on to each of them).
//!
//! The askers drive the work themselves (no hand-off to another task on the path of a miss),
//! and the in-flight map holds it only weakly: when every asker has gone away the work is
//! dropped like any cancelled request, and the next asker starts afresh. Work nobody waits for,
//! such as a background refresh, gets a task of its own to drive it.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared, WeakShared};

use crate::amocrm::AmoError;

/// What a flight's askers get when its work panicked.
pub trait Panicked {
    fn panicked() -> Self;
}

impl<T> Panicked for Result<T, Arc<AmoError>> {
    fn panicked() -> Self {
        // Only an answer the gateway could not handle gets this far: "unusable" is honest.
        Err(Arc::new(AmoError::Decode(
            "the gateway failed while handling amoCRM's answer".to_owned(),
        )))
    }
}

pub type Flight<V> = Shared<BoxFuture<'static, V>>;

type InFlight<K, V> = HashMap<K, (u64, WeakShared<BoxFuture<'static, V>>)>;

pub struct Flights<K, V: Clone> {
    /// Each flight with the number it was started under, so that it only ever removes itself.
    in_flight: Mutex<InFlight<K, V>>,
    started: AtomicU64,
}

/// Removes its flight from the map when the flight ends: completed, or dropped by the last
/// asker that went away.
struct Landing<K: Hash + Eq, V: Clone> {
    flights: Weak<Flights<K, V>>,
    key: Option<K>,
    number: u64,
}

impl<K: Hash + Eq, V: Clone> Drop for Landing<K, V> {
    fn drop(&mut self) {
        if let (Some(flights), Some(key)) = (self.flights.upgrade(), self.key.take()) {
            let mut in_flight = flights.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if in_flight
                .get(&key)
                .is_some_and(|(number, _)| *number == self.number)
            {
                in_flight.remove(&key);
            }
        }
    }
}

impl<K, V> Flights<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + Panicked + 'static,
{
    pub fn new() -> Arc<Self> {
        Arc::new(Flights {
            in_flight: Mutex::new(HashMap::new()),
            started: AtomicU64::new(0),
        })
    }

    /// Joins the flight for `key`, or starts `work` as one. The flag says whether it joined.
    pub fn join_or_start<F>(self: &Arc<Self>, key: K, work: impl FnOnce() -> F) -> (Flight<V>, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let mut in_flight = self.lock();
        if let Some(flight) = in_flight.get(&key).and_then(|(_, weak)| weak.upgrade()) {
            return (flight, true);
        }
        let number = self.started.fetch_add(1, Ordering::Relaxed);
        let landing = Landing {
            flights: Arc::downgrade(self),
            key: Some(key.clone()),
            number,
        };
        let work = work();
        // The landing removes the key when the flight ends; it cannot before the insert below,
        // because it needs the lock held here.
        let flight = async move {
            let value = std::panic::AssertUnwindSafe(work)
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    tracing::error!("a single-flight's work panicked; its askers get an error");
                    V::panicked()
                });
            drop(landing);
            value
        }
        .boxed()
        .shared();
        let weak = flight
            .downgrade()
            .expect("a flight that was never polled has not completed");
        in_flight.insert(key, (number, weak));
        (flight, false)
    }

    /// Joins or starts the flight for `key`, driven by a task of its own.
    pub fn join_or_spawn<F>(self: &Arc<Self>, key: K, work: impl FnOnce() -> F)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (flight, joined) = self.join_or_start(key, work);
        if !joined {
            tokio::spawn(flight);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InFlight<K, V>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    impl Panicked for usize {
        fn panicked() -> Self {
            usize::MAX
        }
    }

    #[tokio::test]
    async fn work_that_panics_ends_as_an_error_for_every_asker_and_lands() {
        let flights: Arc<Flights<u8, Result<usize, Arc<AmoError>>>> = Flights::new();
        let (gate, opened) = tokio::sync::oneshot::channel::<()>();
        let (first, _) = flights.join_or_start(1, move || async move {
            let _ = opened.await;
            panic!("a hostile answer")
        });
        let (second, joined) = flights.join_or_start(1, || async { Ok(7) });
        assert!(joined);
        gate.send(()).expect("the flight waits");
        let (first, second) = futures::join!(first, second);
        for answer in [first, second] {
            let error = answer.expect_err("an error, not a panic");
            assert!(matches!(*error, AmoError::Decode(_)), "{error:?}");
        }
        let (third, joined) = flights.join_or_start(1, || async { Ok(7) });
        assert!(!joined, "the failed flight landed");
        assert_eq!(third.await.ok(), Some(7));
    }

    #[tokio::test]
    async fn concurrent_askers_share_one_run_and_a_finished_flight_lands() {
        let flights: Arc<Flights<u8, usize>> = Flights::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let (gate, opened) = tokio::sync::oneshot::channel::<()>();
        let runs_in = runs.clone();
        let (first, joined) = flights.join_or_start(1, move || async move {
            let _ = opened.await;
            runs_in.fetch_add(1, Ordering::SeqCst) + 42
        });
        assert!(!joined);
        let (second, joined) = flights.join_or_start(1, || async { 7 });
        assert!(joined);
        gate.send(()).expect("the flight waits");
        assert_eq!((first.await, second.await), (42, 42));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let (third, joined) = flights.join_or_start(1, || async { 7 });
        assert!(!joined, "a landed flight is gone");
        assert_eq!(third.await, 7);
    }

    /// The asker that started a flight goes away (its client disconnected): the others drive
    /// the same work on and get its answer at once, without waiting for any timeout.
    #[tokio::test]
    async fn a_cancelled_starter_leaves_the_work_to_the_others() {
        let flights: Arc<Flights<u8, usize>> = Flights::new();
        let (gate, opened) = tokio::sync::oneshot::channel::<()>();
        let (starter, _) = flights.join_or_start(1, move || async move {
            let _ = opened.await;
            9
        });
        let (waiter, joined) = flights.join_or_start(1, || async { 0 });
        assert!(joined);
        // The starter polls once, then is dropped mid-flight.
        let mut starter = Box::pin(starter);
        assert!(futures::poll!(&mut starter).is_pending());
        drop(starter);
        gate.send(()).expect("the work still waits");
        let answer = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter is answered, not left hanging");
        assert_eq!(answer, 9);
    }

    #[tokio::test]
    async fn a_flight_every_asker_left_is_dropped_and_started_again() {
        let flights: Arc<Flights<u8, usize>> = Flights::new();
        let (first, _) = flights.join_or_start(1, std::future::pending::<usize>);
        drop(first);
        assert!(
            flights.lock().is_empty(),
            "a flight nobody awaits leaves no trace"
        );
        let (again, joined) = flights.join_or_start(1, || async { 5 });
        assert!(!joined);
        assert_eq!(again.await, 5);
    }

    #[tokio::test]
    async fn a_spawned_flight_runs_with_nobody_waiting() {
        let flights: Arc<Flights<u8, usize>> = Flights::new();
        let (done, finished) = tokio::sync::oneshot::channel();
        flights.join_or_spawn(1, move || async move {
            let _ = done.send(());
            1
        });
        finished.await.expect("the spawned flight ran");
    }
}
