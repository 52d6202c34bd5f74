//! OAuth 2.0 for the gateway's own amoCRM access: it holds a token pair, refreshes the access
//! token before it expires and once after amoCRM answers 401, and keeps the pair in a file.
//!
//! amoCRM's refresh tokens are single-use: two refreshes racing with the same refresh token
//! leave one of them holding a revoked token, and the integration must be re-authorized by
//! hand. So refreshes are serialized — within the process by a mutex, across replicas (with
//! Redis) by a lock in Redis, under which a replica first adopts a pair another replica has
//! just obtained — and each new pair is written to the token file (atomically: a temporary
//! file renamed over it) before it is used, so a crash never loses the only valid refresh
//! token.
//!
//! The token file is JSON: `{"refresh_token": "…"}` is enough to start; the gateway adds
//! `access_token` and `expires_at` (Unix seconds).
//!
//! This file is the token's lifecycle: when to refresh, who refreshes, and when to adopt
//! another replica's pair. Where the pair is kept (the file, the Redis copy) is `store.rs`'s;
//! how amoCRM's token endpoint is called and what it answers is `endpoint.rs`'s.

mod endpoint;
mod store;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::AmoError;
use crate::metrics::Metrics;
use crate::shared::{Operation, Redis};
use store::{StoredPair, digest};

/// An access token is refreshed when it has less than this left (or a tenth of its lifetime,
/// for short-lived ones), so that no call goes out with a token about to expire.
const REFRESH_AHEAD: Duration = Duration::from_secs(300);
/// The longest a replica holds the cross-replica refresh lock.
const LOCK_FOR: Duration = Duration::from_secs(30);
const LOCK_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct OAuthConfig {
    pub client_id: String,
    pub client_secret: SecretString,
    pub redirect_uri: String,
    pub token_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("could not read the OAuth token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the OAuth token file {path} must be JSON with at least {{\"refresh_token\": \"…\"}}: {reason}"
    )]
    Format { path: String, reason: String },
    #[error("could not build the OAuth HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// How many predecessors a shared pair remembers.
const MAX_ANCESTORS: usize = 16;
/// The longest a token lifetime amoCRM grants is taken to be, and the shortest.
const MIN_LIFETIME: i64 = 1;
const MAX_LIFETIME: i64 = 365 * 86_400;
/// A 401 for a token that a refresh after a 401 obtained this recently is not the token's
/// fault: no further refresh (one per 401 would be a refresh storm).
const FRESH_TOKEN: Duration = Duration::from_secs(10);
/// After a refresh failed (not revoked), callers within this time get the same failure
/// instead of a refresh each.
const FAILED_REFRESH_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct Pair {
    access: Option<SecretString>,
    refresh: SecretString,
    /// Unix seconds.
    expires_at: i64,
    /// Lifetime granted with it, for the refresh-ahead margin.
    lifetime: i64,
    /// Bumped by every refresh: a caller that saw a 401 with generation `n` refreshes only if
    /// nobody has since.
    generation: u64,
    obtained_at: Option<std::time::Instant>,
    /// Whether it was obtained because amoCRM answered 401 to its predecessor.
    after_401: bool,
    /// Digests of the refresh tokens this pair succeeds (for the shared pair).
    ancestors: Vec<String>,
}

/// Why the last refresh failed, shared with the callers that waited for it.
#[derive(Clone)]
enum Failed {
    /// amoCRM refused the refresh token: only an operator can mend it, so no more attempts.
    Revoked { hint: Option<String> },
    Other {
        at: std::time::Instant,
        generation: u64,
        reason: String,
    },
}

/// The gateway's access token under OAuth. Cheap to share (`Arc`).
pub struct TokenSource {
    config: OAuthConfig,
    endpoint: Url,
    http: reqwest::Client,
    current: Mutex<Pair>,
    refreshing: tokio::sync::Mutex<Option<Failed>>,
    redis: Option<Redis>,
    metrics: Metrics,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("token_file", &self.config.token_file)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// Reads the token file. No call is made: the first request refreshes if it must, so the
    /// gateway starts while amoCRM is unreachable.
    pub fn load(
        config: OAuthConfig,
        base_url: &Url,
        timeout: Duration,
        redis: Option<Redis>,
        metrics: Metrics,
    ) -> Result<Arc<Self>, OAuthError> {
        let stored = store::read(&config.token_file)?;
        // Well within the replicas' refresh lock, which is not renewed.
        let (endpoint, http) = endpoint::client(base_url, timeout.min(LOCK_FOR / 3))?;
        Ok(Arc::new(TokenSource {
            current: Mutex::new(Pair {
                access: stored.access_token.map(SecretString::from),
                refresh: SecretString::from(stored.refresh_token),
                expires_at: stored.expires_at,
                lifetime: 86_400,
                generation: 0,
                obtained_at: None,
                after_401: false,
                ancestors: Vec::new(),
            }),
            config,
            endpoint,
            http,
            refreshing: tokio::sync::Mutex::new(None),
            redis,
            metrics,
        }))
    }

    /// An access token good for a while, and its generation; refreshed first when it is about
    /// to expire.
    pub async fn access(&self) -> Result<(SecretString, u64), AmoError> {
        let seen = {
            let pair = self.lock();
            if let Some(access) = &pair.access
                && pair.expires_at - unix_now() > ahead(pair.lifetime)
            {
                return Ok((access.clone(), pair.generation));
            }
            pair.generation
        };
        match self.refresh(seen).await {
            Ok(fresh) => Ok(fresh),
            // Refreshing ahead of expiry failed: the current token still works meanwhile.
            Err(error) => {
                let pair = self.lock();
                match &pair.access {
                    Some(access) if pair.expires_at > unix_now() => {
                        tracing::warn!(%error, "refreshing ahead of expiry failed; using the current token");
                        Ok((access.clone(), pair.generation))
                    }
                    _ => Err(error),
                }
            }
        }
    }

    /// After amoCRM answered 401 to the token of generation `seen`: refreshes, unless that
    /// token is seconds old (then the 401 is not about its age, and a refresh would not help).
    pub async fn refresh_after_401(&self, seen: u64) -> Result<(SecretString, u64), AmoError> {
        {
            let pair = self.lock();
            if pair.generation == seen
                && pair.after_401
                && pair
                    .obtained_at
                    .is_some_and(|at| at.elapsed() < FRESH_TOKEN)
            {
                return Err(AmoError::Unauthorized {
                    detail: Some("amoCRM refused an access token obtained moments ago".to_owned()),
                });
            }
        }
        self.refresh_for(seen, true).await
    }

    /// Refreshes, unless someone did since generation `seen` was handed out (after a 401, or
    /// at expiry). Serialized: concurrent callers wait for one refresh and share it, or share
    /// its failure.
    pub async fn refresh(&self, seen: u64) -> Result<(SecretString, u64), AmoError> {
        self.refresh_for(seen, false).await
    }

    async fn refresh_for(
        &self,
        seen: u64,
        after_401: bool,
    ) -> Result<(SecretString, u64), AmoError> {
        let mut failed = self.refreshing.lock().await;
        if let Some(current) = self.newer_than(seen) {
            return Ok(current);
        }
        match &*failed {
            Some(Failed::Revoked { hint }) => return Err(self.revoked(hint.clone())),
            Some(Failed::Other {
                at,
                generation,
                reason,
            }) if *generation == seen && at.elapsed() < FAILED_REFRESH_BACKOFF => {
                return Err(AmoError::TokenRefresh(reason.clone()));
            }
            _ => {}
        }
        let outcome = self.refresh_now(seen, after_401).await;
        *failed = match &outcome {
            Ok(_) => None,
            Err(AmoError::AuthorizationRevoked { hint, .. }) => {
                Some(Failed::Revoked { hint: hint.clone() })
            }
            Err(error) => Some(Failed::Other {
                at: std::time::Instant::now(),
                generation: seen,
                reason: error.to_string(),
            }),
        };
        outcome
    }

    async fn refresh_now(
        &self,
        seen: u64,
        after_401: bool,
    ) -> Result<(SecretString, u64), AmoError> {
        let _lock = match self.lock_replicas().await {
            Ok(lock) => lock,
            Err(()) => {
                return Err(AmoError::TokenRefresh(
                    "another replica held the refresh lock too long".to_owned(),
                ));
            }
        };
        // Another replica may have refreshed meanwhile: its pair succeeds ours, and ours is
        // dead. Any other pair in Redis (older, or from before a re-authorization) is ignored.
        let ours = digest(self.lock().refresh.expose_secret());
        if let Some(shared) = self.shared_pair().await
            && shared.replaces.contains(&ours)
        {
            self.store(&shared).await;
            if let Some(current) = self.adopt(shared, seen) {
                return Ok(current);
            }
        }
        let (refresh, mut ancestors) = {
            let pair = self.lock();
            (pair.refresh.clone(), pair.ancestors.clone())
        };
        let granted = self.grant(&refresh).await?;
        let lifetime = granted.expires_in.clamp(MIN_LIFETIME, MAX_LIFETIME);
        ancestors.insert(0, digest(refresh.expose_secret()));
        ancestors.truncate(MAX_ANCESTORS);
        let stored = StoredPair {
            access_token: Some(granted.access_token),
            refresh_token: granted.refresh_token,
            expires_at: unix_now().saturating_add(lifetime),
            replaces: ancestors.clone(),
        };
        // The old refresh token is dead from now on: the new pair goes to the file, and to
        // the other replicas, before it is used.
        self.store(&stored).await;
        self.share(&stored).await;
        tracing::info!(expires_in = lifetime, "obtained a new amoCRM access token");
        let mut pair = self.lock();
        *pair = Pair {
            access: stored.access_token.map(SecretString::from),
            refresh: SecretString::from(stored.refresh_token),
            expires_at: stored.expires_at,
            lifetime,
            generation: pair.generation + 1,
            obtained_at: Some(std::time::Instant::now()),
            after_401,
            ancestors,
        };
        let access = pair.access.clone().expect("just set");
        Ok((access, pair.generation))
    }

    fn revoked(&self, hint: Option<String>) -> AmoError {
        AmoError::AuthorizationRevoked {
            hint,
            token_file: self.config.token_file.display().to_string(),
        }
    }

    fn newer_than(&self, seen: u64) -> Option<(SecretString, u64)> {
        let pair = self.lock();
        match &pair.access {
            Some(access)
                if pair.generation != seen
                    && pair.expires_at - unix_now() > ahead(pair.lifetime) =>
            {
                Some((access.clone(), pair.generation))
            }
            _ => None,
        }
    }

    fn adopt(&self, shared: StoredPair, seen: u64) -> Option<(SecretString, u64)> {
        let mut pair = self.lock();
        *pair = Pair {
            access: shared.access_token.map(SecretString::from),
            refresh: SecretString::from(shared.refresh_token),
            expires_at: shared.expires_at,
            lifetime: pair.lifetime,
            generation: pair.generation + 1,
            obtained_at: Some(std::time::Instant::now()),
            after_401: false,
            ancestors: shared.replaces,
        };
        drop(pair);
        self.newer_than(seen)
    }

    fn redis_key(&self, what: &str) -> Option<(Redis, String)> {
        let redis = self.redis.clone()?;
        let key = redis.key(format_args!("v1:oauth:{what}"));
        Some((redis, key))
    }

    /// Holds the replicas' refresh lock until the guard drops; `Ok(None)` without Redis, or
    /// when Redis does not answer (then only this process is serialized), `Err` when another
    /// replica held it past `LOCK_FOR`.
    async fn lock_replicas(&self) -> Result<Option<ReplicaLock>, ()> {
        let Some((redis, key)) = self.redis_key("refresh-lock") else {
            return Ok(None);
        };
        let token = format!("{}:{:016x}", redis.replica(), rand::random::<u64>());
        let deadline = tokio::time::Instant::now() + LOCK_FOR;
        loop {
            let taken: Option<Option<String>> = redis
                .run_always(Operation::Lease, |mut conn| {
                    let mut set = redis::cmd("SET");
                    set.arg(&key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(u64::try_from(LOCK_FOR.as_millis()).unwrap_or(u64::MAX));
                    async move { set.query_async(&mut conn).await }
                })
                .await;
            match taken {
                None => return Ok(None),
                Some(Some(_)) => return Ok(Some(ReplicaLock { redis, key, token })),
                Some(None) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("another replica held the OAuth refresh lock too long");
                return Err(());
            }
            tokio::time::sleep(LOCK_POLL).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pair> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Releases the replicas' refresh lock if this replica still holds it.
struct ReplicaLock {
    redis: Redis,
    key: String,
    token: String,
}

impl Drop for ReplicaLock {
    fn drop(&mut self) {
        crate::shared::release_in_background(
            &self.redis,
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.token),
        );
    }
}

fn ahead(lifetime: i64) -> i64 {
    i64::try_from(REFRESH_AHEAD.as_secs())
        .unwrap_or(i64::MAX)
        .min(lifetime / 10)
}

fn unix_now() -> i64 {
    crate::shared::unix_millis() / 1000
}
