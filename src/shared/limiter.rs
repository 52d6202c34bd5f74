//! One upstream rate limit for every replica: a sliding log in a Redis sorted set, changed only
//! by Lua scripts, so that the grants of all replicas are atomic.
//!
//! The rule is the in-process limiter's: a slot counts from its grant until a window after its
//! call completed, and no grant is made while `rate` slots count. Each member's score is when
//! its slot stops counting: far ahead while its call is in flight, completion plus the window
//! after. A replica that dies mid-call leaves a slot that stops counting after `in_flight_max`.
//! Time is Redis's own clock (`TIME`), so the replicas' clocks need not agree.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Script;
use tokio::time::Instant;

use super::{Health, Operation, Redis, millis};

/// Takes a slot if fewer than `ARGV[1]` count; otherwise answers how many milliseconds until
/// the earliest one stops counting.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + 1000)
  return 0
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(first[2]) - now)
";

/// The call of slot `ARGV[2]` completed: it counts for one more window (`ARGV[1]`) from now.
const COMPLETE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) + 1000 then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) + 1000)
end
return 0
";

/// While the earliest slot is still in flight, nobody knows when it frees: ask again this
/// often.
const POLL_IN_FLIGHT: Duration = Duration::from_millis(20);
/// The limiter waits at least this long for Redis before it falls back to the local share: a
/// call is about to wait for its slot anyway, and every fallback risks a second in which
/// other replicas still use Redis.
const MIN_TIMEOUT: Duration = Duration::from_secs(1);

/// What [`SharedLimiter::acquire`] got.
#[derive(Debug)]
pub enum Grant {
    /// A slot in the shared log, counted until a window after it is dropped.
    Slot(SharedSlot),
    /// Redis did not answer: the caller falls back to its own share of the budget.
    Unavailable,
}

/// No slot frees before the caller's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WouldWaitTooLong;

#[derive(Debug)]
pub struct SharedLimiter {
    redis: Redis,
    key: String,
    rate: u32,
    window: Duration,
    in_flight_max: Duration,
    acquire: Script,
    next: AtomicU64,
    health: Health,
    timeout: Duration,
    /// When this replica's last shared slot stopped counting here: falling back to the local
    /// share before then could add a full local share to slots Redis counted.
    quiet_from: Mutex<Option<Instant>>,
}

impl SharedLimiter {
    /// A limit of `rate` calls per `window` for every replica using `redis` with the same
    /// prefix. A slot whose replica died mid-call stops counting after `in_flight_max`.
    pub fn new(redis: Redis, rate: u32, window: Duration, in_flight_max: Duration) -> Arc<Self> {
        Arc::new(SharedLimiter {
            key: redis.key(format_args!("v1:upstream-rate")),
            rate,
            window,
            in_flight_max,
            acquire: Script::new(ACQUIRE),
            next: AtomicU64::new(0),
            health: Health::new(
                "Redis is unavailable to the shared rate limit: this replica keeps to its share \
                 of --upstream-rps (divided by --replicas-hint) until it answers again",
                "Redis answers the shared rate limit again",
                false,
            ),
            timeout: redis.timeout().max(MIN_TIMEOUT),
            quiet_from: Mutex::new(None),
            redis,
        })
    }

    /// Waits for a slot in the shared log until `deadline`.
    pub async fn acquire(self: &Arc<Self>, deadline: Instant) -> Result<Grant, WouldWaitTooLong> {
        let member = format!(
            "{}:{}",
            self.redis.replica(),
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        loop {
            let (script, key, member_arg) =
                (self.acquire.clone(), self.key.clone(), member.clone());
            let (rate, in_flight) = (self.rate, millis(self.in_flight_max));
            let answer: Option<u64> = self
                .redis
                .run_as(&self.health, self.timeout, Operation::Limit, |mut conn| {
                    let (script, key, member) = (script.clone(), key.clone(), member_arg.clone());
                    async move {
                        script
                            .key(&key)
                            .arg(rate)
                            .arg(in_flight)
                            .arg(&member)
                            .invoke_async(&mut conn)
                            .await
                    }
                })
                .await;
            let wait = match answer {
                None => {
                    // The script may have run though its answer was lost: take the slot back.
                    self.forget(member);
                    return Ok(Grant::Unavailable);
                }
                Some(0) => {
                    return Ok(Grant::Slot(SharedSlot {
                        limiter: self.clone(),
                        member,
                    }));
                }
                Some(ms) => Duration::from_millis(ms),
            };
            // A wait longer than a window means the earliest slot is still in flight.
            let wait = if wait > self.window {
                POLL_IN_FLIGHT
            } else {
                wait
            };
            if wait > deadline.saturating_duration_since(Instant::now()) {
                return Err(WouldWaitTooLong);
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// When a fallback to the local share may start: a window after this replica's last
    /// shared slot completed.
    pub fn quiet_from(&self) -> Option<Instant> {
        *self.quiet_from.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forget(self: &Arc<Self>, member: String) {
        let mut remove = redis::cmd("ZREM");
        remove.arg(&self.key).arg(member);
        self.send_in_background(remove);
    }

    fn completed(self: &Arc<Self>, member: String) {
        {
            let mut quiet = self.quiet_from.lock().unwrap_or_else(|e| e.into_inner());
            let until = Instant::now() + self.window;
            *quiet = Some(quiet.map_or(until, |q| q.max(until)));
        }
        let mut complete = redis::cmd("EVAL");
        complete
            .arg(COMPLETE)
            .arg(1)
            .arg(&self.key)
            .arg(millis(self.window))
            .arg(member);
        self.send_in_background(complete);
    }

    /// Sends `command` without making the caller wait. Not skipped while Redis seems down, and
    /// tried again: a completion that never lands keeps its slot counting as in flight until
    /// `in_flight_max`.
    fn send_in_background(self: &Arc<Self>, command: redis::Cmd) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let limiter = self.clone();
        runtime.spawn(async move {
            for _ in 0..3 {
                let sent = limiter
                    .redis
                    .run_anyway(
                        &limiter.health,
                        limiter.timeout,
                        Operation::Limit,
                        |mut conn| {
                            let command = command.clone();
                            async move { command.query_async::<redis::Value>(&mut conn).await }
                        },
                    )
                    .await;
                if sent.is_some() {
                    return;
                }
                tokio::time::sleep(super::RETRY_EVERY).await;
            }
        });
    }
}

/// A slot in the shared log; dropped when its call completes, which starts its last window.
#[derive(Debug)]
#[must_use = "the slot counts from when it is dropped"]
pub struct SharedSlot {
    limiter: Arc<SharedLimiter>,
    member: String,
}

impl Drop for SharedSlot {
    fn drop(&mut self) {
        self.limiter.completed(std::mem::take(&mut self.member));
    }
}
