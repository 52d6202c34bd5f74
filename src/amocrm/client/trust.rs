//! What amoCRM has said about each forwarded token, so that strangers cannot spend the account's
//! budget: anyone can send a random bearer string, and each used to cost a 401 call and get a
//! round-robin lane of its own.
//!
//! A token is unverified until amoCRM has answered one of its calls with success. Unverified
//! tokens share one small lane (`PROBATION_RATE` calls a window between all of them) before
//! the common limiter, where together they count as a single caller; verified tokens keep
//! their own lanes. While a token is unverified, one of its calls at a time asks amoCRM and the
//! others wait for that answer, so a new client's first burst costs one probation slot. A 401
//! is remembered for a while, and the token is refused without a call.
//! Tokens are known only by a keyed hash (HMAC-SHA256 under a key of this process), like
//! credential scopes: never by themselves.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

use crate::amocrm::AmoError;
use crate::amocrm::limiter::Limiter;

/// Calls a window that all unverified tokens share: a legitimate new token is verified by its
/// first call, and a flood of junk ones costs amoCRM at most this.
const PROBATION_RATE: u32 = 1;
/// How long a 401 is remembered: short, since the same token can become valid (a user logs in
/// again), long enough that retrying a junk token costs nothing.
const REJECTED_FOR: Duration = Duration::from_secs(30);
/// A verified token unused this long is verified again by its next call.
const ACCEPTED_IDLE: Duration = Duration::from_secs(24 * 3600);
/// Tokens remembered either way; past this the least used are forgotten, which only costs a
/// verification again.
const MAX_TOKENS: u64 = 100_000;

/// The answer to a token amoCRM refused moments ago, given without asking again.
pub(super) fn rejected_again() -> AmoError {
    AmoError::Unauthorized {
        detail: Some("it did so moments ago, and is not asked again yet".to_owned()),
    }
}

/// The lane of the common limiter that every unverified token's calls share.
pub(super) const PROBATION_LANE: u64 = u64::MAX;

/// A token's keyed hash: 128 bits keep tokens apart, and the key keeps an attacker from aiming
/// at another token's entry.
pub(super) type Fingerprint = u128;

pub(super) struct TokenTrust {
    accepted: Cache<Fingerprint, ()>,
    rejected: Cache<Fingerprint, ()>,
    /// One lock per unverified token being asked about: its holder's call verifies it.
    gates: Cache<Fingerprint, Arc<tokio::sync::Mutex<()>>>,
    /// `None` without a rate limit (benchmarks of the gateway itself).
    probation: Option<Arc<Limiter>>,
}

impl std::fmt::Debug for TokenTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenTrust")
            .field("accepted", &self.accepted.entry_count())
            .field("rejected", &self.rejected.entry_count())
            .finish()
    }
}

impl TokenTrust {
    pub(super) fn new(rate_limit: Option<u32>, queue_timeout: Duration) -> Self {
        TokenTrust {
            accepted: Cache::builder()
                .max_capacity(MAX_TOKENS)
                .time_to_idle(ACCEPTED_IDLE)
                .build(),
            rejected: Cache::builder()
                .max_capacity(MAX_TOKENS)
                .time_to_live(REJECTED_FOR)
                .build(),
            // Forgotten soon after use; losing one while held only lets a second call ask.
            gates: Cache::builder()
                .max_capacity(MAX_TOKENS)
                .time_to_idle(Duration::from_secs(60))
                .build(),
            probation: rate_limit.and_then(|_| Limiter::new(Some(PROBATION_RATE), queue_timeout)),
        }
    }

    pub(super) fn is_accepted(&self, token: Fingerprint) -> bool {
        self.accepted.contains_key(&token)
    }

    pub(super) fn was_rejected(&self, token: Fingerprint) -> bool {
        self.rejected.contains_key(&token)
    }

    /// The lock whose holder asks amoCRM about an unverified `token`; its other calls wait.
    pub(super) async fn gate(&self, token: Fingerprint) -> Arc<tokio::sync::Mutex<()>> {
        self.gates.get_with(token, async { Arc::default() }).await
    }

    /// The shared lane unverified tokens pass before the common limiter.
    pub(super) fn probation(&self) -> Option<&Arc<Limiter>> {
        self.probation.as_ref()
    }

    /// Learns from one answer to `token`'s call: success verifies it, a 401 refuses it for a
    /// while (and unverifies it: a revoked token is a stranger again). Anything else says
    /// nothing about the token.
    pub(super) async fn learn(&self, token: Fingerprint, accepted: Option<bool>) {
        match accepted {
            Some(true) => {
                self.rejected.invalidate(&token).await;
                self.accepted.insert(token, ()).await;
            }
            Some(false) => {
                self.accepted.invalidate(&token).await;
                self.rejected.insert(token, ()).await;
            }
            None => {}
        }
    }
}
