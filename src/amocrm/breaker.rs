//! The circuit breaker: after signs that amoCRM is blocking the account, or a run of failures,
//! stop calling it for a cool-down instead of making things worse; then let one trial call
//! through, which closes the circuit again if it succeeds.
//!
//! Answers about the caller (401, 402, a rights 403 with a problem body on a related endpoint)
//! are not failures of the upstream and never count.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{AmoError, ForbiddenReason};

/// A blocked account is unblocked by amoCRM's support, not by waiting: try rarely.
const BLOCKED_COOL_DOWN: Duration = Duration::from_secs(60);
const UNAVAILABLE_COOL_DOWN: Duration = Duration::from_secs(10);
/// Consecutive transient failures (after their own retries) that open the circuit.
const FAILURES_TO_OPEN: u32 = 5;
/// Consecutive 403s on the contacts list itself that mean the account, not one right, is gone.
const CONTACT_403S_TO_OPEN: u32 = 3;
/// A trial call whose outcome never arrived (its request was cancelled) is given up after this.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the circuit is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenReason {
    /// The account-block signature: an HTML 403, or 403s on the contacts list in a row.
    Blocked,
    /// A run of timeouts, connection errors, 5xx or 429 answers.
    Unavailable,
}

#[derive(Debug)]
enum State {
    /// `contact_403s` holds the callers of the current run of 403s on the contacts list.
    Closed {
        failures: u32,
        contact_403s: Vec<u64>,
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
    caller: u64,
}

#[derive(Debug)]
pub struct Breaker {
    state: Mutex<(State, u64)>,
    /// Whether all callers share one token (`--access-token`): then a run of 403s on the
    /// contacts list is about the account. With forwarded tokens one caller without rights
    /// must not shut everyone out, so the run must come from several callers.
    shared_token: bool,
}

impl Breaker {
    pub fn new(shared_token: bool) -> Self {
        Breaker {
            state: Mutex::new((
                State::Closed {
                    failures: 0,
                    contact_403s: Vec::new(),
                },
                0,
            )),
            shared_token,
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

    /// Whether `caller` may call now; refused with the reason and the time left otherwise.
    pub fn admit(&self, caller: u64) -> Result<Ticket, AmoError> {
        let mut guard = self.lock();
        let (state, generation) = &mut *guard;
        let now = Instant::now();
        match *state {
            State::Closed { .. } => Ok(Ticket {
                generation: *generation,
                caller,
            }),
            State::Open { until, reason } if now >= until => {
                *state = State::Trial { since: now, reason };
                *generation += 1;
                Ok(Ticket {
                    generation: *generation,
                    caller,
                })
            }
            State::Trial { since, reason } if now >= since + TRIAL_TIMEOUT => {
                *state = State::Trial { since: now, reason };
                *generation += 1;
                Ok(Ticket {
                    generation: *generation,
                    caller,
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

    /// Records how the call admitted with `ticket` to `endpoint` ended.
    pub fn record(&self, ticket: Ticket, endpoint: &str, outcome: Result<(), &AmoError>) {
        let mut guard = self.lock();
        let (state, generation) = &mut *guard;
        if ticket.generation != *generation || matches!(state, State::Open { .. }) {
            return;
        }
        let was_trial = matches!(state, State::Trial { .. });
        let (failures, mut contact_403s) = match state {
            State::Closed {
                failures,
                contact_403s,
            } => (*failures, std::mem::take(contact_403s)),
            _ => (0, Vec::new()),
        };
        let shared_token = self.shared_token;
        let mut generation_after = *generation;
        let mut opened = |reason| {
            generation_after += 1;
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
            }) => opened(OpenReason::Blocked),
            Err(AmoError::Forbidden {
                reason: ForbiddenReason::Rights,
                ..
            }) if endpoint == super::client::CONTACTS_ENDPOINT => {
                // The run is the last few refusals: bounded, whoever keeps trying.
                contact_403s.push(ticket.caller);
                if contact_403s.len() > CONTACT_403S_TO_OPEN as usize {
                    contact_403s.remove(0);
                }
                let mut callers = contact_403s.clone();
                callers.sort_unstable();
                callers.dedup();
                let about_the_account = shared_token || callers.len() > 1;
                if contact_403s.len() >= CONTACT_403S_TO_OPEN as usize && about_the_account {
                    opened(OpenReason::Blocked)
                } else {
                    State::Closed {
                        failures: 0,
                        contact_403s,
                    }
                }
            }
            Err(error) if error.counts_against_upstream() => {
                if failures + 1 >= FAILURES_TO_OPEN || was_trial {
                    opened(OpenReason::Unavailable)
                } else {
                    State::Closed {
                        failures: failures + 1,
                        contact_403s,
                    }
                }
            }
            // Success, or an answer about the caller: amoCRM is there and answering.
            _ => State::Closed {
                failures: 0,
                contact_403s: Vec::new(),
            },
        };
        *state = next;
        *generation = generation_after;
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

    const CONTACTS: &str = "/api/v4/contacts";

    #[tokio::test(start_paused = true)]
    async fn one_trial_call_after_the_cool_down_closes_the_circuit() {
        let breaker = Breaker::new(true);
        let ticket = breaker.admit(1).expect("closed");
        breaker.record(ticket, CONTACTS, Err(&blocked()));
        assert!(breaker.check().is_err() && breaker.admit(1).is_err());
        tokio::time::advance(BLOCKED_COOL_DOWN).await;
        assert!(breaker.check().is_ok(), "a peek does not take the trial");
        let trial = breaker.admit(1).expect("the trial call goes out");
        assert!(breaker.admit(2).is_err(), "and only the trial");
        breaker.record(trial, CONTACTS, Ok(()));
        assert!(
            breaker.admit(1).is_ok() && breaker.admit(2).is_ok(),
            "closed again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn late_outcomes_and_answers_about_the_caller_do_not_move_it() {
        let breaker = Breaker::new(true);
        for _ in 0..10 {
            let ticket = breaker.admit(1).expect("closed");
            breaker.record(ticket, "/api/v4/users", Err(&rights()));
            let ticket = breaker.admit(1).expect("closed");
            breaker.record(ticket, CONTACTS, Err(&AmoError::PaymentRequired));
        }
        assert!(
            breaker.admit(1).is_ok(),
            "answers about the caller do not open it"
        );
        // Calls in flight when it opens: their outcomes must not close it.
        let in_flight: Vec<Ticket> = (0..10).map(|_| breaker.admit(1).expect("closed")).collect();
        let (first, rest) = in_flight.split_at(FAILURES_TO_OPEN as usize);
        for ticket in first {
            breaker.record(*ticket, CONTACTS, Err(&AmoError::Server { status: 500 }));
        }
        for ticket in rest {
            breaker.record(*ticket, CONTACTS, Ok(()));
        }
        assert!(breaker.admit(1).is_err(), "late outcomes left it open");
        tokio::time::advance(UNAVAILABLE_COOL_DOWN).await;
        let trial = breaker.admit(1).expect("a trial");
        breaker.record(trial, CONTACTS, Err(&AmoError::Connect));
        assert!(breaker.admit(1).is_err(), "the failed trial reopened it");
    }

    #[tokio::test(start_paused = true)]
    async fn one_forwarded_token_without_rights_does_not_shut_everyone_out() {
        let forwarding = Breaker::new(false);
        for _ in 0..10 {
            let ticket = forwarding.admit(7).expect("closed");
            forwarding.record(ticket, CONTACTS, Err(&rights()));
        }
        assert!(forwarding.admit(8).is_ok());
        // Three in a row, from more than one caller.
        let ticket = forwarding.admit(8).expect("closed");
        forwarding.record(ticket, CONTACTS, Err(&rights()));
        assert!(
            forwarding.admit(1).is_err(),
            "several callers refused: the account is blocked"
        );
    }
}
