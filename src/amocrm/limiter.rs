//! The one rate limiter every upstream call passes: lists, by-id loads, batches, probes,
//! refreshes and retries alike.
//!
//! amoCRM counts requests per second and blocks integrations that exceed about 7, so this is a
//! sliding log, not a token bucket: no window of `WINDOW` (a second plus a safety margin for
//! clock and network jitter) ever sees more than `rate` calls start, bursts included. Callers
//! queue per caller (token), and slots go round-robin over callers, so one client crawling
//! cannot starve the others; background refreshes get a slot only when no one waits in front.
//! A caller that would wait longer than the queue timeout is refused instead.

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
    waiters: VecDeque<oneshot::Sender<()>>,
}

#[derive(Default)]
struct State {
    /// Start times of the last calls, oldest first, at most `rate` of them.
    started: VecDeque<Instant>,
    /// Foreground waiters per caller, served round-robin.
    lanes: VecDeque<Lane>,
    background: VecDeque<oneshot::Sender<()>>,
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

    /// Waits for a slot to start one upstream call, for the queue timeout or `at_most`,
    /// whichever is shorter.
    pub async fn acquire(
        &self,
        caller: u64,
        priority: Priority,
        at_most: Duration,
    ) -> Result<(), Refused> {
        let granted = {
            let mut state = self.lock();
            if state.waiting == 0 && self.has_slot(&state, Instant::now()) {
                self.record(&mut state, Instant::now());
                return Ok(());
            }
            if state.waiting >= MAX_WAITERS {
                return Err(Refused::QueueFull);
            }
            let (grant, granted) = oneshot::channel();
            match priority {
                Priority::Foreground => match state.lanes.iter_mut().find(|l| l.caller == caller) {
                    Some(lane) => lane.waiters.push_back(grant),
                    None => state.lanes.push_back(Lane {
                        caller,
                        waiters: VecDeque::from([grant]),
                    }),
                },
                Priority::Background => state.background.push_back(grant),
            }
            state.waiting += 1;
            granted
        };
        self.wake.notify_one();
        match tokio::time::timeout(self.queue_timeout.min(at_most), granted).await {
            Ok(Ok(())) => Ok(()),
            // Timed out (the dispatcher skips a waiter that has gone), or the limiter is gone.
            _ => Err(Refused::WouldWaitTooLong),
        }
    }

    fn has_slot(&self, state: &State, now: Instant) -> bool {
        state.started.len() < self.rate || state.started.front().is_some_and(|t| *t + WINDOW <= now)
    }

    fn record(&self, state: &mut State, now: Instant) {
        state.started.push_back(now);
        while state.started.len() > self.rate {
            state.started.pop_front();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Grants the next slot to the next live waiter, if a slot is free now; otherwise says when
    /// one will be. `None`: nobody waits.
    fn grant_next(&self) -> Option<Instant> {
        let mut state = self.lock();
        loop {
            if state.waiting == 0 {
                return None;
            }
            let now = Instant::now();
            if !self.has_slot(&state, now) {
                return state.started.front().map(|t| *t + WINDOW);
            }
            let Some(grant) = next_waiter(&mut state) else {
                state.waiting = 0;
                return None;
            };
            state.waiting -= 1;
            // A waiter that timed out is gone: its slot goes to the next one.
            if grant.send(()).is_ok() {
                self.record(&mut state, now);
            }
        }
    }
}

/// Round-robin over callers' lanes, then background work.
fn next_waiter(state: &mut State) -> Option<oneshot::Sender<()>> {
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
            Some(next_slot) => {
                drop(strong);
                tokio::time::sleep_until(next_slot).await;
            }
            None => {
                let wake = async { strong.wake.notified().await };
                // Re-check now and then so a dropped limiter ends this task.
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
                    limiter
                        .acquire(caller, Priority::Foreground, Duration::MAX)
                        .await
                        .expect("granted");
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
    async fn a_caller_that_would_wait_too_long_is_refused() {
        let limiter = Limiter::new(Some(1), Duration::from_millis(500)).expect("a limit");
        limiter
            .acquire(1, Priority::Foreground, Duration::MAX)
            .await
            .expect("the first is free");
        assert_eq!(
            limiter
                .acquire(1, Priority::Foreground, Duration::MAX)
                .await,
            Err(Refused::WouldWaitTooLong)
        );
    }
}
