//! Invalidations for every replica's moka caches, through Redis pub/sub.
//!
//! Pub/sub delivers only to those listening at the moment, so a replica whose subscription
//! broke may have missed messages: when it subscribes again it is told of the gap, and drops
//! what it holds rather than serve what a missed message voided.

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use std::time::Duration;

use super::{Operation, RETRY_EVERY, Redis};

/// How often the subscription's connection is checked: a connection cut without a close (a
/// partition) would otherwise lose messages unnoticed.
pub const PING_EVERY: Duration = Duration::from_secs(5);

/// What a listener hears.
#[derive(Debug, PartialEq)]
pub enum Heard<T> {
    /// Another replica's message.
    Message(T),
    /// (Re)subscribed after a break: messages may have been missed.
    Gap,
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    from: String,
    message: T,
}

#[derive(Clone, Debug)]
pub struct Broadcast {
    redis: Redis,
    channel: String,
}

impl Broadcast {
    pub fn new(redis: Redis) -> Self {
        Broadcast {
            channel: redis.key(format_args!("v1:invalidations")),
            redis,
        }
    }

    /// Tells every other replica. Whether Redis took it.
    pub async fn publish<T: Serialize>(&self, message: &T) -> bool {
        let envelope = Envelope {
            from: self.redis.replica().to_owned(),
            message,
        };
        let Ok(payload) = serde_json::to_vec(&envelope) else {
            return false;
        };
        let channel = self.channel.clone();
        self.redis
            .run(Operation::Publish, |mut conn| {
                let mut publish = redis::cmd("PUBLISH");
                publish.arg(&channel).arg(&payload);
                async move { publish.query_async::<i64>(&mut conn).await }
            })
            .await
            .is_some()
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
                Ok(envelope) if envelope.from == redis.replica() => {}
                Ok(envelope) => {
                    if heard.send(Heard::Message(envelope.message)).await.is_err() {
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
