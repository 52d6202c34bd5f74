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

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use super::AmoError;
use crate::metrics::Metrics;
use crate::shared::{Operation, Redis};

const TOKEN_ENDPOINT: &str = "/oauth2/access_token";
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

/// The token file's content, and the pair shared through Redis.
#[derive(Clone, Serialize, Deserialize)]
struct StoredPair {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_token: Option<String>,
    refresh_token: String,
    /// Unix seconds.
    #[serde(default)]
    expires_at: i64,
}

/// What amoCRM's token endpoint answers.
#[derive(Deserialize)]
struct Granted {
    access_token: String,
    refresh_token: String,
    expires_in: i64,
}

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
}

/// The gateway's access token under OAuth. Cheap to share (`Arc`).
pub struct TokenSource {
    config: OAuthConfig,
    endpoint: Url,
    http: reqwest::Client,
    current: Mutex<Pair>,
    refreshing: tokio::sync::Mutex<()>,
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
        let path = config.token_file.display().to_string();
        let text =
            std::fs::read_to_string(&config.token_file).map_err(|source| OAuthError::Read {
                path: path.clone(),
                source,
            })?;
        let stored: StoredPair = serde_json::from_str(&text).map_err(|e| OAuthError::Format {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if stored.refresh_token.trim().is_empty() {
            return Err(OAuthError::Format {
                path,
                reason: "refresh_token is empty".to_owned(),
            });
        }
        let mut endpoint = base_url.clone();
        endpoint.set_path(TOKEN_ENDPOINT);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("amocrm-gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Arc::new(TokenSource {
            current: Mutex::new(Pair {
                access: stored.access_token.map(SecretString::from),
                refresh: SecretString::from(stored.refresh_token),
                expires_at: stored.expires_at,
                lifetime: 86_400,
                generation: 0,
            }),
            config,
            endpoint,
            http,
            refreshing: tokio::sync::Mutex::new(()),
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
        self.refresh(seen).await
    }

    /// Refreshes, unless someone did since generation `seen` was handed out (after a 401, or
    /// at expiry). Serialized: concurrent callers wait for one refresh and share it.
    pub async fn refresh(&self, seen: u64) -> Result<(SecretString, u64), AmoError> {
        let _serial = self.refreshing.lock().await;
        if let Some(current) = self.newer_than(seen) {
            return Ok(current);
        }
        let _lock = self.lock_replicas().await;
        // Another replica may have refreshed while this one waited: its pair is the valid one.
        let ours = self.lock().refresh.expose_secret().to_owned();
        if let Some(shared) = self.shared_pair().await
            && shared.refresh_token != ours
        {
            self.store(&shared).await?;
            if let Some(current) = self.adopt(shared, seen) {
                return Ok(current);
            }
        }
        let refresh = self.lock().refresh.clone();
        let granted = self.grant(&refresh).await?;
        let stored = StoredPair {
            access_token: Some(granted.access_token),
            refresh_token: granted.refresh_token,
            expires_at: unix_now() + granted.expires_in,
        };
        // Written before it is used: the old refresh token is dead from now on.
        self.store(&stored).await?;
        self.share(&stored).await;
        tracing::info!(
            expires_in = granted.expires_in,
            "obtained a new amoCRM access token"
        );
        let mut pair = self.lock();
        *pair = Pair {
            access: stored.access_token.map(SecretString::from),
            refresh: SecretString::from(stored.refresh_token),
            expires_at: stored.expires_at,
            lifetime: granted.expires_in,
            generation: pair.generation + 1,
        };
        let access = pair.access.clone().expect("just set");
        Ok((access, pair.generation))
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
        };
        drop(pair);
        self.newer_than(seen)
    }

    /// `POST /oauth2/access_token` with the refresh token.
    async fn grant(&self, refresh: &SecretString) -> Result<Granted, AmoError> {
        let started = std::time::Instant::now();
        let body = serde_json::json!({
            "client_id": self.config.client_id,
            "client_secret": self.config.client_secret.expose_secret(),
            "grant_type": "refresh_token",
            "refresh_token": refresh.expose_secret(),
            "redirect_uri": self.config.redirect_uri,
        });
        let response = self
            .http
            .post(self.endpoint.clone())
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                let error = if e.is_timeout() {
                    AmoError::Timeout(started.elapsed())
                } else {
                    AmoError::Connect
                };
                self.metrics.upstream_request(
                    TOKEN_ENDPOINT,
                    error.transport_label(),
                    started.elapsed(),
                );
                error
            })?;
        let status = response.status();
        self.metrics
            .upstream_request(TOKEN_ENDPOINT, status.as_str(), started.elapsed());
        let text = response.text().await.map_err(|_| AmoError::Transport)?;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::BAD_REQUEST {
            let hint = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| {
                    v.get("hint")
                        .or_else(|| v.get("detail"))
                        .and_then(|h| h.as_str())
                        .map(|h| h.chars().take(200).collect::<String>())
                });
            tracing::error!(
                status = status.as_u16(),
                hint = hint.as_deref().unwrap_or_default(),
                "amoCRM refused the gateway's refresh token: the integration must be re-authorized"
            );
            return Err(AmoError::AuthorizationRevoked {
                hint,
                token_file: self.config.token_file.display().to_string(),
            });
        }
        if status.is_server_error() {
            return Err(AmoError::Server {
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(AmoError::UnexpectedStatus {
                status: status.as_u16(),
            });
        }
        serde_json::from_str::<Granted>(&text)
            .map_err(|e| AmoError::Decode(format!("the token endpoint's answer: {e}")))
    }

    /// Replaces the token file atomically: a temporary file beside it, synced, then renamed.
    async fn store(&self, pair: &StoredPair) -> Result<(), AmoError> {
        let path = self.config.token_file.clone();
        let json = serde_json::to_vec_pretty(pair).expect("a token pair serializes");
        let written = tokio::task::spawn_blocking(move || write_atomically(&path, &json))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        written.map_err(|e| AmoError::TokenFile {
            path: self.config.token_file.display().to_string(),
            reason: e.to_string(),
        })
    }

    fn redis_key(&self, what: &str) -> Option<(Redis, String)> {
        let redis = self.redis.clone()?;
        let key = redis.key(format_args!("v1:oauth:{what}"));
        Some((redis, key))
    }

    /// The pair another replica stored last, if any.
    async fn shared_pair(&self) -> Option<StoredPair> {
        let (redis, key) = self.redis_key("pair")?;
        let text: Option<String> = redis
            .run_always(Operation::Read, |mut conn| {
                let mut get = redis::cmd("GET");
                get.arg(&key);
                async move { get.query_async(&mut conn).await }
            })
            .await
            .flatten();
        serde_json::from_str(&text?).ok()
    }

    async fn share(&self, pair: &StoredPair) {
        let Some((redis, key)) = self.redis_key("pair") else {
            return;
        };
        let json = serde_json::to_string(pair).expect("a token pair serializes");
        redis
            .run_always(Operation::Write, |mut conn| {
                let mut set = redis::cmd("SET");
                set.arg(&key).arg(&json);
                async move { set.query_async::<()>(&mut conn).await }
            })
            .await;
    }

    /// Holds the replicas' refresh lock until the guard drops; `None` without Redis, or when
    /// Redis does not answer (then only this process is serialized).
    async fn lock_replicas(&self) -> Option<ReplicaLock> {
        let (redis, key) = self.redis_key("refresh-lock")?;
        let token = format!("{}:{:016x}", redis.replica(), rand::random::<u64>());
        let deadline = tokio::time::Instant::now() + LOCK_FOR;
        loop {
            let taken: Option<String> = redis
                .run_always(Operation::Lease, |mut conn| {
                    let mut set = redis::cmd("SET");
                    set.arg(&key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(u64::try_from(LOCK_FOR.as_millis()).unwrap_or(u64::MAX));
                    async move { set.query_async(&mut conn).await }
                })
                .await?;
            if taken.is_some() {
                return Some(ReplicaLock { redis, key, token });
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("another replica held the OAuth refresh lock too long");
                return None;
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

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let directory = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tokens".to_owned());
    let temporary = directory.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Tokens are secrets: readable by the gateway's user only.
        options.mode(0o600);
    }
    let mut file = options.open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(directory)?.sync_all()
}
