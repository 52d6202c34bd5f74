//! Invalidations for every replica's moka caches, through Redis pub/sub.
//!
//! Pub/sub delivers only to those listening at the moment, so a replica whose subscription
//! broke may have missed messages: when it subscribes again it is told of the gap, and drops
//! what it holds rather than serve what a missed message voided.
//!
//! A message may ask to be confirmed ([`Broadcast::publish_confirmed`]): every listener counts
//! it in Redis once it has been applied, and the publisher waits for as many confirmations as
//! Redis delivered copies. A write's answer waits for that, so a read sent to any replica after
//! it never meets what the write voided.

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use std::time::Duration;

use super::{Operation, RETRY_EVERY, Redis};

/// How often the subscription's connection is checked: a connection cut without a close (a
/// partition) would otherwise lose messages unnoticed.
pub const PING_EVERY: Duration = Duration::from_secs(5);

/// How often a publisher looks for its confirmations.
const CONFIRMATION_POLL: Duration = Duration::from_millis(2);
/// Confirmation counters outlive any wait for them.
const CONFIRMATION_TTL_SECONDS: u64 = 60;

/// What a listener hears.
#[derive(Debug, PartialEq)]
pub enum Heard<T> {
    /// Another replica's message.
    Message(T),
    /// Another replica's message that waits to hear it was applied: [`Confirm::send`] once it
    /// has been.
    Confirm(T, Confirm),
    /// (Re)subscribed after a break: messages may have been missed.
    Gap,
}

/// A confirmation owed to a publisher.
#[derive(Clone)]
pub struct Confirm {
    redis: Redis,
    key: String,
}

impl std::fmt::Debug for Confirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Confirm").field("key", &self.key).finish()
    }
}

impl PartialEq for Confirm {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Confirm {
    pub async fn send(self) {
        let key = self.key;
        self.redis
            .run_always(Operation::Publish, |mut conn| {
                let mut pipe = redis::pipe();
                pipe.cmd("INCR")
                    .arg(&key)
                    .ignore()
                    .cmd("EXPIRE")
                    .arg(&key)
                    .arg(CONFIRMATION_TTL_SECONDS)
                    .ignore();
                async move { pipe.query_async::<()>(&mut conn).await }
            })
            .await;
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    from: String,
    message: T,
    /// Where listeners count their confirmations, when the publisher waits for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    confirm: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Broadcast {
    redis: Redis,
    channel: String,
}

impl Broadcast {
    pub fn new(redis: Redis) -> Self {
        Self::on(redis, "v1:invalidations")
    }

    /// A broadcast on a channel of its own (under the configured prefix).
    pub fn on(redis: Redis, channel: &str) -> Self {
        Broadcast {
            channel: redis.key(format_args!("{channel}")),
            redis,
        }
    }

    /// Tells every other replica. Whether Redis took it.
    pub async fn publish<T: Serialize>(&self, message: &T) -> bool {
        self.send(message, None).await.is_some()
    }

    /// Tells every replica, and waits up to `within` until each listener that got it has
    /// applied it. Whether Redis took it and every listener confirmed in time.
    pub async fn publish_confirmed<T: Serialize>(&self, message: &T, within: Duration) -> bool {
        let key = self.redis.key(format_args!(
            "v1:confirmations:{}:{:016x}",
            self.redis.replica(),
            rand::random::<u64>()
        ));
        let Some(delivered) = self.send(message, Some(key.clone())).await else {
            return false;
        };
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let confirmed = self
                .redis
                .run(Operation::Read, |mut conn| {
                    let mut get = redis::cmd("GET");
                    get.arg(&key);
                    async move { get.query_async::<Option<i64>>(&mut conn).await }
                })
                .await;
            match confirmed {
                Some(count) if count.unwrap_or(0) >= delivered => return true,
                Some(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(CONFIRMATION_POLL).await;
                }
                _ => {
                    tracing::warn!(
                        delivered,
                        "not every replica confirmed an invalidation in time"
                    );
                    return false;
                }
            }
        }
    }

    /// Publishes; how many listeners Redis delivered it to.
    async fn send<T: Serialize>(&self, message: &T, confirm: Option<String>) -> Option<i64> {
        let envelope = Envelope {
            from: self.redis.replica().to_owned(),
            message,
            confirm,
        };
        let payload = serde_json::to_vec(&envelope).ok()?;
        let channel = self.channel.clone();
        self.redis
            .run(Operation::Publish, |mut conn| {
                let mut publish = redis::cmd("PUBLISH");
                publish.arg(&channel).arg(&payload);
                async move { publish.query_async::<i64>(&mut conn).await }
            })
            .await
    }

    /// Listens until the receiver is dropped, resubscribing after every break.
    pub fn listen<T>(&self) -> mpsc::Receiver<Heard<T>>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let (heard, receiver) = mpsc::channel(256);
        tokio::spawn(listen(self.redis.clone(), self.channel.clone(), heard));
        receiver
    }
}

async fn listen<T: DeserializeOwned>(redis: Redis, channel: String, heard: mpsc::Sender<Heard<T>>) {
    // Whether messages may have been missed: after any failed attempt to subscribe (the
    // replica may have cached data meanwhile), and after every break.
    let mut missed = false;
    loop {
        let pubsub = tokio::select! {
            () = heard.closed() => return,
            pubsub = redis.subscribe(&channel) => pubsub,
        };
        let Some(pubsub) = pubsub else {
            missed = true;
            tokio::select! {
                () = heard.closed() => return,
                () = tokio::time::sleep(RETRY_EVERY) => continue,
            }
        };
        redis.inner.metrics.redis_subscribed(true);
        if missed && heard.send(Heard::Gap).await.is_err() {
            return;
        }
        missed = true;
        let (mut sink, mut messages) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            let message = tokio::select! {
                () = heard.closed() => return,
                _ = ping.tick() => {
                    match tokio::time::timeout(redis.timeout(), sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => continue,
                        _ => break,
                    }
                }
                message = messages.next() => message,
            };
            let Some(message) = message else { break };
            let envelope = serde_json::from_slice::<Envelope<T>>(message.get_payload_bytes());
            match envelope {
                // Our own message: applied before it was sent.
                Ok(envelope) if envelope.from == redis.replica() => {
                    if let Some(key) = envelope.confirm {
                        Confirm {
                            redis: redis.clone(),
                            key,
                        }
                        .send()
                        .await;
                    }
                }
                Ok(envelope) => {
                    let heard_now = match envelope.confirm {
                        Some(key) => Heard::Confirm(
                            envelope.message,
                            Confirm {
                                redis: redis.clone(),
                                key,
                            },
                        ),
                        None => Heard::Message(envelope.message),
                    };
                    if heard.send(heard_now).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ignoring an unreadable broadcast"),
            }
        }
        redis.inner.metrics.redis_subscribed(false);
        redis.mark_down(Operation::Subscribe, "the subscription's connection closed");
    }
}
