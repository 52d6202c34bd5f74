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
    Closed { failures: u32, contact_403s: u32 },
    Open { until: Instant, reason: OpenReason },
    Trial { since: Instant, reason: OpenReason },
}

#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: Mutex::new(State::Closed {
                failures: 0,
                contact_403s: 0,
            }),
        }
    }
}

impl Breaker {
    /// Whether a call may go out now; refused with the reason and the time left otherwise.
    pub fn admit(&self) -> Result<(), AmoError> {
        let mut state = self.lock();
        let now = Instant::now();
        match *state {
            State::Closed { .. } => Ok(()),
            State::Open { until, reason } if now >= until => {
                *state = State::Trial { since: now, reason };
                Ok(())
            }
            State::Trial { since, reason } if now >= since + TRIAL_TIMEOUT => {
                *state = State::Trial { since: now, reason };
                Ok(())
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

    /// Records how a call to `endpoint` ended.
    pub fn record(&self, endpoint: &str, outcome: Result<(), &AmoError>) {
        let mut state = self.lock();
        let (failures, contact_403s) = match *state {
            State::Closed {
                failures,
                contact_403s,
            } => (failures, contact_403s),
            _ => (0, 0),
        };
        let opened = |reason| {
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
        *state = match outcome {
            Err(AmoError::Forbidden {
                reason: ForbiddenReason::AccountBlocked,
                ..
            }) => opened(OpenReason::Blocked),
            Err(AmoError::Forbidden {
                reason: ForbiddenReason::Rights,
                ..
            }) if endpoint == super::client::CONTACTS_ENDPOINT => {
                if contact_403s + 1 >= CONTACT_403S_TO_OPEN {
                    opened(OpenReason::Blocked)
                } else {
                    State::Closed {
                        failures: 0,
                        contact_403s: contact_403s + 1,
                    }
                }
            }
            Err(error) if error.counts_against_upstream() => {
                if failures + 1 >= FAILURES_TO_OPEN || matches!(*state, State::Trial { .. }) {
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
                contact_403s: 0,
            },
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
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

    #[tokio::test(start_paused = true)]
    async fn one_trial_call_after_the_cool_down_closes_the_circuit() {
        let breaker = Breaker::default();
        breaker.record("/api/v4/contacts", Err(&blocked()));
        assert!(matches!(
            breaker.admit(),
            Err(AmoError::CircuitOpen {
                reason: OpenReason::Blocked,
                ..
            })
        ));
        tokio::time::advance(BLOCKED_COOL_DOWN).await;
        assert!(breaker.admit().is_ok(), "the trial call goes out");
        assert!(breaker.admit().is_err(), "and only the trial");
        breaker.record("/api/v4/contacts", Ok(()));
        assert!(
            breaker.admit().is_ok() && breaker.admit().is_ok(),
            "closed again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_opens_it_again_and_answers_about_the_caller_never_count() {
        let breaker = Breaker::default();
        let rights = AmoError::Forbidden {
            reason: ForbiddenReason::Rights,
            detail: None,
        };
        for _ in 0..10 {
            breaker.record("/api/v4/users", Err(&rights));
            breaker.record("/api/v4/contacts", Err(&AmoError::PaymentRequired));
        }
        assert!(
            breaker.admit().is_ok(),
            "answers about the caller do not open it"
        );
        for _ in 0..FAILURES_TO_OPEN {
            breaker.record("/api/v4/contacts", Err(&AmoError::Server { status: 500 }));
        }
        assert!(breaker.admit().is_err());
        tokio::time::advance(UNAVAILABLE_COOL_DOWN).await;
        assert!(breaker.admit().is_ok());
        breaker.record("/api/v4/contacts", Err(&AmoError::Connect));
        assert!(breaker.admit().is_err(), "the failed trial reopened it");
    }
}
