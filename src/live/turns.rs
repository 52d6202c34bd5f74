//! With replicas on Redis, one replica at a time polls a scope's change feed: the one that
//! holds the scope's turn (a key in Redis that lapses unless its holder keeps it). It tells the
//! others what it found on a channel of their own, the contacts included, so that their
//! subscribers hear of the changes without a call of their own, and their feeds follow its
//! position for when the turn passes to them (its holder's subscribers left, or it stopped).

use std::time::Duration;

use redis::Script;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::amocrm::Contact;
use crate::auth::Scope;
use crate::shared::broadcast::Heard;
use crate::shared::{Broadcast, Operation, Redis};

/// What a scope's feed found, for the other replicas' subscribers of that scope.
#[derive(Debug, Serialize, Deserialize)]
pub struct Found {
    /// The scope, as every replica names it (scopes are keyed by the shared scope secret).
    pub scope: String,
    /// The feed's position after this call: the others start from here when the turn passes.
    pub since: i64,
    pub contacts: Vec<Contact>,
}

#[derive(Clone)]
pub struct Turns {
    redis: Redis,
    take: Script,
    channel: Broadcast,
}

impl Turns {
    pub fn new(redis: Redis) -> Self {
        Turns {
            channel: Broadcast::on(redis.clone(), "v1:live-feed"),
            redis,
            // Taken when free, kept (renewed) by its holder, refused to anyone else.
            take: Script::new(
                "local holder = redis.call('GET', KEYS[1]) \
                 if holder == ARGV[1] then \
                   redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 \
                 elseif not holder then \
                   redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 \
                 end \
                 return 0",
            ),
        }
    }

    /// Whether this replica polls `scope` now, taking or keeping its turn for `hold`. When
    /// Redis does not answer: yes, as a replica alone would (each keeps to its own share of
    /// the budget), rather than tell nobody.
    pub async fn mine(&self, scope: &Scope, hold: Duration) -> bool {
        let key = self
            .redis
            .key(format_args!("v1:live-feed-turn:{}", scope.as_str()));
        let me = self.redis.replica().to_owned();
        let millis = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX).max(1);
        let taken: Option<i64> = self
            .redis
            .run(Operation::Lease, |mut conn| {
                let (script, key, me) = (self.take.clone(), key.clone(), me.clone());
                async move {
                    script
                        .key(&key)
                        .arg(&me)
                        .arg(millis)
                        .invoke_async(&mut conn)
                        .await
                }
            })
            .await;
        taken != Some(0)
    }

    /// Tells the other replicas what this one's feed found.
    pub async fn tell(&self, found: &Found) {
        self.channel.publish(found).await;
    }

    /// What the other replicas' feeds find.
    pub fn listen(&self) -> mpsc::Receiver<Heard<Found>> {
        self.channel.listen()
    }
}
