//! Where the token pair is kept: the token file (read at start, replaced atomically by every
//! new pair) and the copy in Redis that other replicas adopt. Both hold the same JSON shape.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{OAuthError, TokenSource};
use crate::shared::Operation;

/// The token file's content, and the pair shared through Redis.
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct StoredPair {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) access_token: Option<String>,
    pub(super) refresh_token: String,
    /// Unix seconds.
    #[serde(default)]
    pub(super) expires_at: i64,
    /// In Redis only: SHA-256 digests of the refresh tokens this pair succeeds, newest first.
    /// A replica adopts the shared pair only if its own refresh token is among them: never an
    /// unrelated pair (after the operator re-authorized, say), never an older one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) replaces: Vec<String>,
}

/// Names a refresh token in `replaces` without putting the token itself into Redis.
pub(super) fn digest(refresh_token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(refresh_token.as_bytes()))
}

/// Reads the token file and checks that it holds a refresh token.
pub(super) fn read(file: &Path) -> Result<StoredPair, OAuthError> {
    let path = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|source| OAuthError::Read {
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
    Ok(stored)
}

impl TokenSource {
    /// Replaces the token file atomically: a temporary file beside it, synced, then renamed.
    /// A failure is logged, not returned: the new pair is the only valid one whether or not
    /// the file took it, so it is used (and shared) anyway.
    pub(super) async fn store(&self, pair: &StoredPair) {
        let path = self.config.token_file.clone();
        let file = StoredPair {
            replaces: Vec::new(),
            ..pair.clone()
        };
        let json = serde_json::to_vec_pretty(&file).expect("a token pair serializes");
        let written = tokio::task::spawn_blocking(move || write_atomically(&path, &json))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        if let Err(error) = written {
            tracing::error!(
                %error,
                file = %self.config.token_file.display(),
                "could not save the new amoCRM token pair: the gateway uses it, but after a \
                 restart the file's refresh token is revoked; fix the file's permissions or \
                 space now"
            );
        }
    }

    /// The pair another replica stored last, if any.
    pub(super) async fn shared_pair(&self) -> Option<StoredPair> {
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

    pub(super) async fn share(&self, pair: &StoredPair) {
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
    // Makes the rename durable where the file system supports syncing a directory; the file
    // itself is in place either way.
    if let Ok(directory) = std::fs::File::open(directory) {
        let _ = directory.sync_all();
    }
    Ok(())
}
