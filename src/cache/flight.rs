//! Single-flight: concurrent askers for one key share one piece of work, errors included.
//!
//! The work runs as its own task, so it finishes (and fills the cache) even when every asker
//! has gone away, and a background refresh and a foreground miss of one key never run twice.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

pub type Flight<V> = Shared<BoxFuture<'static, V>>;

pub struct Flights<K, V: Clone> {
    in_flight: Mutex<HashMap<K, Flight<V>>>,
    /// What a flight yields if its task dies (it never should: tasks do not panic).
    on_abort: fn() -> V,
}

impl<K, V> Flights<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new(on_abort: fn() -> V) -> Arc<Self> {
        Arc::new(Flights {
            in_flight: Mutex::new(HashMap::new()),
            on_abort,
        })
    }

    /// Joins the flight for `key`, or starts `work` as one. The flag says whether it joined.
    pub fn join_or_start<F>(self: &Arc<Self>, key: K, work: impl FnOnce() -> F) -> (Flight<V>, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let mut in_flight = self.lock();
        if let Some(flight) = in_flight.get(&key) {
            return (flight.clone(), true);
        }
        let flights = self.clone();
        let landing = key.clone();
        let work = work();
        // The task removes its key once done; it cannot before the insert below, because it
        // needs the lock held here.
        let task = tokio::spawn(async move {
            let value = work.await;
            flights.lock().remove(&landing);
            value
        });
        let on_abort = self.on_abort;
        let flight = async move { task.await.unwrap_or_else(|_| on_abort()) }
            .boxed()
            .shared();
        in_flight.insert(key, flight.clone());
        (flight, false)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Flight<V>>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_askers_share_one_run_and_a_finished_flight_lands() {
        let flights: Arc<Flights<u8, usize>> = Flights::new(|| 0);
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
}
