//! The circuit breaker: after signs that amoCRM is blocking the account, or a run of failures,
//! stop calling it for a cool-down instead of making things worse; then let one trial call
//! through, which closes the circuit again if it succeeds.
//!
//! Only the upstream's own state counts. Answers about the caller (401, 402, a rights 403 with
//! a problem body, on any endpoint, from any number of tokens) never do: otherwise a few tokens
//! whose users lack rights could shut every caller out. Only the block signature, an HTML 403
//! from amoCRM's front proxy, is about the whole account. Failures caused by the shape of our
//! own request (400, 413, 414, 431) are not the upstream's either and never count.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{AmoError, ForbiddenReason};

/// A blocked account is unblocked by amoCRM's support, not by waiting: try rarely.
const BLOCKED_COOL_DOWN: Duration = Duration::from_secs(60);
const UNAVAILABLE_COOL_DOWN: Duration = Duration::from_secs(10);
/// Consecutive transient failures (after their own retries) that open the circuit.
const FAILURES_TO_OPEN: u32 = 5;
/// A trial call whose outcome never arrived (its request was cancelled) is given up after this.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the circuit is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenReason {
    /// The account-block signature: a 403 without a problem body, from amoCRM's front proxy.
    Blocked,
    /// A run of timeouts, connection errors, 5xx or 429 answers.
    Unavailable,
}

#[derive(Debug)]
enum State {
    /// `failures` is the current run of transient failures.
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
        reason: OpenReason,
    },
    Trial {
        since: Instant,
        reason: OpenReason,
    },
}

/// Admission to call: it must come back with the call's outcome. Outcomes of calls admitted
/// before the circuit last changed (opened, or let a trial through) say nothing about now and
/// are ignored: otherwise the timeouts of calls in flight when it opened would close it again.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    generation: u64,
}

#[derive(Debug)]
pub struct Breaker {
    state: Mutex<(State, u64)>,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: Mutex::new((State::Closed { failures: 0 }, 0)),
        }
    }
}

impl Breaker {
    /// Refuses at once while the circuit is open and not yet due for a trial, without taking
    /// the trial: for a caller about to queue for the rate limiter.
    pub fn check(&self) -> Result<(), AmoError> {
        let guard = self.lock();
        let now = Instant::now();
        match guard.0 {
            State::Open { until, reason } if now < until => Err(AmoError::CircuitOpen {
                reason,
                retry_in: until - now,
            }),
            State::Trial { since, reason } if now < since + TRIAL_TIMEOUT => {
                Err(AmoError::CircuitOpen {
                    reason,
                    retry_in: Duration::ZERO,
                })
            }
            _ => Ok(()),
        }
    }

    /// Whether a call may go out now; refused with the reason and the time left otherwise.
    pub fn admit(&self) -> Result<Ticket, AmoError> {
        let mut guard = self.lock();
        let (state, generation) = &mut *guard;
        let now = Instant::now();
        match *state {
            State::Closed { .. } => Ok(Ticket {
                generation: *generation,
            }),
            State::Open { until, reason } if now >= until => {
                *state = State::Trial { since: now, reason };
                *generation += 1;
                Ok(Ticket {
                    generation: *generation,
                })
            }
            State::Trial { since, reason } if now >= since + TRIAL_TIMEOUT => {
                *state = State::Trial { since: now, reason };
                *generation += 1;
                Ok(Ticket {
                    generation: *generation,
                })
            }
            State::Open { until, reason } => Err(AmoError::CircuitOpen {
                reason,
                retry_in: until - now,
            }),
            State::Trial { reason, .. } => Err(AmoError::CircuitOpen {
                reason,
                retry_in: Duration::ZERO,
            }),
        }
    }

    /// Records how the call admitted with `ticket` ended.
    pub fn record(&self, ticket: Ticket, outcome: Result<(), &AmoError>) {
        let mut guard = self.lock();
        let (state, generation) = &mut *guard;
        if ticket.generation != *generation || matches!(state, State::Open { .. }) {
            return;
        }
        let was_trial = matches!(state, State::Trial { .. });
        let failures = match state {
            State::Closed { failures } => *failures,
            _ => 0,
        };
        let open = |reason: OpenReason| {
            tracing::error!(?reason, "opening the circuit to amoCRM");
            let cool_down = match reason {
                OpenReason::Blocked => BLOCKED_COOL_DOWN,
                OpenReason::Unavailable => UNAVAILABLE_COOL_DOWN,
            };
            State::Open {
                until: Instant::now() + cool_down,
                reason,
            }
        };
        let next = match outcome {
            Err(AmoError::Forbidden {
                reason: ForbiddenReason::AccountBlocked,
                ..
            }) => Some(open(OpenReason::Blocked)),
            Err(error) if error.counts_against_upstream() => {
                if failures + 1 >= FAILURES_TO_OPEN || was_trial {
                    Some(open(OpenReason::Unavailable))
                } else {
                    *state = State::Closed {
                        failures: failures + 1,
                    };
                    None
                }
            }
            // Success, or an answer about the caller or about our request: amoCRM is there
            // and answering.
            _ => {
                *state = State::Closed { failures: 0 };
                None
            }
        };
        if let Some(open) = next {
            *state = open;
            *generation += 1;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (State, u64)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked() -> AmoError {
        AmoError::Forbidden {
            reason: ForbiddenReason::AccountBlocked,
            detail: None,
        }
    }

    fn rights() -> AmoError {
        AmoError::Forbidden {
            reason: ForbiddenReason::Rights,
            detail: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_trial_call_after_the_cool_down_closes_the_circuit() {
        let breaker = Breaker::default();
        let ticket = breaker.admit().expect("closed");
        breaker.record(ticket, Err(&blocked()));
        assert!(breaker.check().is_err() && breaker.admit().is_err());
        tokio::time::advance(BLOCKED_COOL_DOWN).await;
        assert!(breaker.check().is_ok(), "a peek does not take the trial");
        let trial = breaker.admit().expect("the trial call goes out");
        assert!(breaker.admit().is_err(), "and only the trial");
        breaker.record(trial, Ok(()));
        assert!(
            breaker.admit().is_ok() && breaker.admit().is_ok(),
            "closed again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn late_outcomes_and_answers_about_the_caller_do_not_move_it() {
        let breaker = Breaker::default();
        for _ in 0..10 {
            let ticket = breaker.admit().expect("closed");
            breaker.record(ticket, Err(&rights()));
            let ticket = breaker.admit().expect("closed");
            breaker.record(ticket, Err(&AmoError::PaymentRequired));
        }
        assert!(
            breaker.admit().is_ok(),
            "answers about the caller do not open it"
        );
        // Calls in flight when it opens: their outcomes must not close it.
        let in_flight: Vec<Ticket> = (0..10).map(|_| breaker.admit().expect("closed")).collect();
        let (first, rest) = in_flight.split_at(FAILURES_TO_OPEN as usize);
        for ticket in first {
            breaker.record(*ticket, Err(&AmoError::Server { status: 500 }));
        }
        for ticket in rest {
            breaker.record(*ticket, Ok(()));
        }
        assert!(breaker.admit().is_err(), "late outcomes left it open");
        tokio::time::advance(UNAVAILABLE_COOL_DOWN).await;
        let trial = breaker.admit().expect("a trial");
        breaker.record(trial, Err(&AmoError::Connect));
        assert!(breaker.admit().is_err(), "the failed trial reopened it");
    }

    /// Two tokens whose users lacked contact rights once opened the circuit as "blocked" for
    /// every token. A rights 403 is about its caller, however many callers get one.
    #[tokio::test(start_paused = true)]
    async fn rights_403s_from_many_callers_never_open_it() {
        let breaker = Breaker::default();
        for _ in 0..50 {
            let ticket = breaker.admit().expect("closed");
            breaker.record(ticket, Err(&rights()));
        }
        assert!(breaker.check().is_ok() && breaker.admit().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_of_our_own_request_never_open_it() {
        let breaker = Breaker::default();
        for _ in 0..(FAILURES_TO_OPEN * 3) {
            for error in [
                AmoError::BadRequest { detail: None },
                AmoError::RequestTooLarge { status: 414 },
                AmoError::RequestTooLong { bytes: 1 << 20 },
            ] {
                let ticket = breaker.admit().expect("closed");
                breaker.record(ticket, Err(&error));
            }
        }
        assert!(breaker.admit().is_ok());
    }
}
