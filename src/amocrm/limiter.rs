//! The one rate limiter every upstream call passes: lists, by-id loads, batches, probes,
//! refreshes and retries alike.
//!
//! amoCRM counts requests per second and blocks integrations that exceed about 7, so this is a
//! sliding log, not a token bucket: no window of `WINDOW` (a second plus a safety margin for
//! clock and network jitter) ever sees more than `rate` calls start, bursts included. Callers
//! queue per caller (a verified token, a client key, or all unverified tokens together: see
//! `client::trust`), and slots go round-robin over callers, so one client crawling
//! cannot starve the others; background refreshes get a slot only when no one waits in front.
//! A caller that would wait longer than the queue timeout is refused instead.
//!
//! A call reaches amoCRM at some moment between being granted and completing, and on a busy
//! machine the gap can be long; so a slot counts from its call's completion, and while the call
//! `rate` calls back is still in flight, no new call starts. Then no window of amoCRM's clock
//! can see more than `rate` arrivals, whatever the delays.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

/// One second, as amoCRM counts, plus a margin: jitter can bring two calls a little closer
/// together on arrival than they were on departure.
pub const WINDOW: Duration = Duration::from_millis(1_100);
/// Waiters beyond this are refused at once: a queue this long cannot drain within any sane
/// timeout at amoCRM's rates.
const MAX_WAITERS: usize = 10_000;

/// Who waits: a request someone is waiting on, or background work that can wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Foreground,
    /// The second half of work amoCRM has already done: a write's read-back. First in its
    /// caller's lane, so that a burst of writes answers whole writes rather than applying
    /// many and reading back none in time; other callers' turns are kept.
    Completion,
    Background,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the upstream rate limit would be exceeded past the queue timeout")]
    WouldWaitTooLong,
    #[error("too many requests are waiting for the upstream rate limit")]
    QueueFull,
}

struct Lane {
    caller: u64,
    waiters: VecDeque<oneshot::Sender<u64>>,
}

/// One of the last `rate` calls.
struct Slot {
    id: u64,
    /// When it was granted, then, once it completed, when it completed.
    at: Instant,
    done: bool,
}

#[derive(Default)]
struct State {
    /// The last calls, oldest first, at most `rate` of them.
    started: VecDeque<Slot>,
    next_id: u64,
    /// Foreground waiters per caller, served round-robin.
    lanes: VecDeque<Lane>,
    background: VecDeque<oneshot::Sender<u64>>,
    waiting: usize,
}

pub struct Limiter {
    rate: usize,
    queue_timeout: Duration,
    state: Mutex<State>,
    wake: Notify,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").field("rate", &self.rate).finish()
    }
}

impl Limiter {
    /// A limiter of `rate` calls per window; `None` for no limit at all (benchmarks of the
    /// gateway's own overhead). Spawns its dispatcher on the current runtime.
    pub fn new(rate: Option<u32>, queue_timeout: Duration) -> Option<Arc<Self>> {
        let rate = usize::try_from(rate?).ok().filter(|r| *r > 0)?;
        let limiter = Arc::new(Limiter {
            rate,
            queue_timeout,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        });
        tokio::spawn(dispatch(Arc::downgrade(&limiter)));
        Some(limiter)
    }

    pub fn queue_timeout(&self) -> Duration {
        self.queue_timeout
    }

    /// Waits for a slot to start one upstream call, for the queue timeout or `at_most`,
    /// whichever is shorter. The call holds the permit until it completes.
    pub async fn acquire(
        self: &Arc<Self>,
        caller: u64,
        priority: Priority,
        at_most: Duration,
    ) -> Result<Permit, Refused> {
        let granted = {
            let mut state = self.lock();
            if state.waiting == 0 && self.has_slot(&state, Instant::now()) {
                let id = self.record(&mut state, Instant::now());
                return Ok(self.permit(id));
            }
            if state.waiting >= MAX_WAITERS {
                return Err(Refused::QueueFull);
            }
            // Refuse now rather than after the whole timeout when the wait is sure to be longer.
            if self.estimated_wait(&state, caller, priority) > self.queue_timeout.min(at_most) {
                return Err(Refused::WouldWaitTooLong);
            }
            let (grant, granted) = oneshot::channel::<u64>();
            match priority {
                Priority::Foreground | Priority::Completion => {
                    let lane = match state.lanes.iter().position(|l| l.caller == caller) {
                        Some(at) => &mut state.lanes[at],
                        None => {
                            state.lanes.push_back(Lane {
                                caller,
                                waiters: VecDeque::new(),
                            });
                            let last = state.lanes.len() - 1;
                            &mut state.lanes[last]
                        }
                    };
                    if priority == Priority::Completion {
                        lane.waiters.push_front(grant);
                    } else {
                        lane.waiters.push_back(grant);
                    }
                }
                Priority::Background => state.background.push_back(grant),
            }
            state.waiting += 1;
            granted
        };
        self.wake.notify_one();
        match tokio::time::timeout(self.queue_timeout.min(at_most), granted).await {
            Ok(Ok(id)) => Ok(self.permit(id)),
            // Timed out (the dispatcher skips a waiter that has gone), or the limiter is gone.
            _ => Err(Refused::WouldWaitTooLong),
        }
    }

    /// How long a new waiter of `caller` would wait at least. Round-robin serves the caller's
    /// k-th waiter after at most k waiters of every other lane, so only those count, not the
    /// whole queue: a light caller behind a crawler's backlog is not refused for it. Waiters
    /// that gave up still count until their turn, so this errs on the long side only by them.
    fn estimated_wait(&self, state: &State, caller: u64, priority: Priority) -> Duration {
        let foreground = || state.lanes.iter().map(|l| l.waiters.len()).sum::<usize>();
        let ahead = match priority {
            Priority::Foreground | Priority::Completion => {
                let mine = match priority {
                    Priority::Completion => 1,
                    _ => {
                        state
                            .lanes
                            .iter()
                            .find(|l| l.caller == caller)
                            .map_or(0, |l| l.waiters.len())
                            + 1
                    }
                };
                let others: usize = state
                    .lanes
                    .iter()
                    .filter(|l| l.caller != caller)
                    .map(|l| l.waiters.len().min(mine))
                    .sum();
                mine + others
            }
            Priority::Background => foreground() + state.background.len() + 1,
        };
        // Each full window lets `rate` more through.
        let windows = (ahead.saturating_sub(1) / self.rate) as u32;
        WINDOW * windows
    }

    fn permit(self: &Arc<Self>, id: u64) -> Permit {
        Permit {
            limiter: Arc::downgrade(self),
            id,
        }
    }

    fn has_slot(&self, state: &State, now: Instant) -> bool {
        state.started.len() < self.rate
            || state
                .started
                .front()
                .is_some_and(|slot| slot.done && slot.at + WINDOW <= now)
    }

    fn record(&self, state: &mut State, now: Instant) -> u64 {
        let id = state.next_id;
        state.next_id += 1;
        state.started.push_back(Slot {
            id,
            at: now,
            done: false,
        });
        while state.started.len() > self.rate {
            state.started.pop_front();
        }
        id
    }

    fn complete(&self, id: u64) {
        {
            let mut state = self.lock();
            if let Some(slot) = state.started.iter_mut().find(|slot| slot.id == id) {
                slot.at = slot.at.max(Instant::now());
                slot.done = true;
            }
        }
        self.wake.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Grants the next slot to the next live waiter, if a slot is free now; otherwise says when
    /// one will be, or that one will be when a call completes. `Idle`: nobody waits.
    fn grant_next(&self) -> Next {
        let mut state = self.lock();
        loop {
            if state.waiting == 0 {
                return Next::Idle;
            }
            let now = Instant::now();
            if !self.has_slot(&state, now) {
                return match state.started.front() {
                    Some(slot) if slot.done => Next::At(slot.at + WINDOW),
                    _ => Next::Completion,
                };
            }
            let Some(grant) = next_waiter(&mut state) else {
                state.waiting = 0;
                return Next::Idle;
            };
            state.waiting -= 1;
            let id = self.record(&mut state, now);
            // A waiter that timed out is gone: it starts no call, so its slot is done at once.
            if grant.send(id).is_err()
                && let Some(slot) = state.started.back_mut()
            {
                slot.done = true;
            }
        }
    }
}

enum Next {
    Idle,
    At(Instant),
    Completion,
}

/// The right to one upstream call; dropped when the call completes (or is abandoned), which
/// is when its slot starts counting.
#[must_use = "the slot counts from when the permit is dropped"]
pub struct Permit {
    limiter: std::sync::Weak<Limiter>,
    id: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(limiter) = self.limiter.upgrade() {
            limiter.complete(self.id);
        }
    }
}

/// Round-robin over callers' lanes, then background work.
fn next_waiter(state: &mut State) -> Option<oneshot::Sender<u64>> {
    while let Some(mut lane) = state.lanes.pop_front() {
        if let Some(grant) = lane.waiters.pop_front() {
            if !lane.waiters.is_empty() {
                state.lanes.push_back(lane);
            }
            return Some(grant);
        }
    }
    state.background.pop_front()
}

async fn dispatch(limiter: std::sync::Weak<Limiter>) {
    loop {
        let Some(strong) = limiter.upgrade() else {
            return;
        };
        match strong.grant_next() {
            Next::At(next_slot) => {
                drop(strong);
                tokio::time::sleep_until(next_slot).await;
            }
            Next::Idle | Next::Completion => {
                // A new waiter or a completed call wakes this; re-check now and then so that a
                // dropped limiter ends this task.
                let wake = async { strong.wake.notified().await };
                let _ = tokio::time::timeout(Duration::from_secs(5), wake).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn no_window_sees_more_than_the_rate_and_callers_take_turns() {
        let limiter = Limiter::new(Some(3), Duration::from_secs(60)).expect("a limit");
        let started = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Caller 1 floods first, caller 2 asks twice after it.
        for (caller, n) in [(1u64, 9), (2u64, 2)] {
            for _ in 0..n {
                let (limiter, started) = (limiter.clone(), started.clone());
                tasks.push(tokio::spawn(async move {
                    let permit = limiter
                        .acquire(caller, Priority::Foreground, Duration::MAX)
                        .await
                        .expect("granted");
                    drop(permit);
                    started.lock().expect("lock").push((Instant::now(), caller));
                }));
                tokio::task::yield_now().await;
            }
        }
        for task in tasks {
            task.await.expect("task");
        }
        let started = started.lock().expect("lock").clone();
        for (i, (at, _)) in started.iter().enumerate() {
            let in_window = started[i..]
                .iter()
                .filter(|(t, _)| *t < *at + WINDOW)
                .count();
            assert!(in_window <= 3, "{in_window} calls within one window");
        }
        // Caller 2 got a slot before caller 1 had all of its own.
        let last_of_2 = started
            .iter()
            .rposition(|(_, c)| *c == 2)
            .expect("caller 2 ran");
        assert!(last_of_2 < started.len() - 1, "round-robin: {started:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_back_goes_before_its_callers_queued_calls_but_not_before_others() {
        let limiter = Limiter::new(Some(1), Duration::from_secs(60)).expect("a limit");
        let busy = limiter
            .acquire(1, Priority::Foreground, Duration::MAX)
            .await
            .expect("a free slot");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (caller, priority, name) in [
            (1, Priority::Foreground, "1: write"),
            (2, Priority::Foreground, "2: read"),
            (1, Priority::Completion, "1: read-back"),
        ] {
            let (limiter, order) = (limiter.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let permit = limiter
                    .acquire(caller, priority, Duration::MAX)
                    .await
                    .expect("granted");
                order.lock().expect("lock").push(name);
                drop(permit);
            }));
            tokio::task::yield_now().await;
        }
        drop(busy);
        for task in tasks {
            task.await.expect("task");
        }
        assert_eq!(
            *order.lock().expect("lock"),
            ["1: read-back", "2: read", "1: write"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_sure_long_wait_is_refused_at_once_but_not_for_someone_elses_backlog() {
        let limiter = Limiter::new(Some(2), Duration::from_secs(2)).expect("a limit");
        let mut in_flight = Vec::new();
        for _ in 0..2 {
            in_flight.push(
                limiter
                    .acquire(1, Priority::Foreground, Duration::MAX)
                    .await
                    .expect("free slots"),
            );
        }
        // Caller 1 queues a backlog: its 5th waiter and later would wait more than 2 s, and are
        // refused at once.
        let mut queued = Vec::new();
        for _ in 0..8 {
            let limiter = limiter.clone();
            queued.push(tokio::spawn(async move {
                limiter
                    .acquire(1, Priority::Foreground, Duration::MAX)
                    .await
            }));
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        let refused = limiter
            .acquire(1, Priority::Foreground, Duration::MAX)
            .await;
        assert_eq!(refused.err(), Some(Refused::WouldWaitTooLong));
        assert_eq!(started.elapsed(), Duration::ZERO, "refused without waiting");
        // The calls in flight complete; caller 2 is near the front of the rotation whatever
        // caller 1 has queued.
        drop(in_flight);
        let second_caller = limiter
            .acquire(2, Priority::Foreground, Duration::MAX)
            .await;
        assert!(second_caller.is_ok(), "{:?}", second_caller.err());
        for task in queued {
            let _ = task.await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_would_wait_too_long_is_refused() {
        let limiter = Limiter::new(Some(1), Duration::from_millis(500)).expect("a limit");
        let _in_flight = limiter
            .acquire(1, Priority::Foreground, Duration::MAX)
            .await
            .expect("the first is free");
        let second = limiter
            .acquire(1, Priority::Foreground, Duration::MAX)
            .await;
        assert_eq!(second.err(), Some(Refused::WouldWaitTooLong));
    }
}
