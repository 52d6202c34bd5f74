//! Automatic persisted queries, as Apollo Client's persisted-query link speaks them.
//!
//! A client sends the SHA-256 of its document in `extensions.persistedQuery` instead of the
//! document. A gateway that knows the hash runs the document it stored; one that does not
//! answers `PersistedQueryNotFound` (code `PERSISTED_QUERY_NOT_FOUND`), and the client sends
//! hash and document together once, which stores it. Hash-only requests fit in a GET URL, so
//! browsers can cache their answers.
//!
//! Anyone may send a document, so registering one must cost the store no more than a bounded
//! amount: only verified callers register (a client key, or a forwarded token amoCRM has
//! accepted, by the request that registers at the latest), after the request ran; documents
//! are bounded in size, in count and bytes per scope (per `KEPT_FOR`), and in count and bytes
//! in total, here and in Redis. A document is kept for `KEPT_FOR` after its last use.
//!
//! With `--persisted-only` only documents from the operator's manifest run: anything else is
//! refused with `PERSISTED_QUERY_REQUIRED`, registrations included.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_graphql::{ServerError, Value};
use moka::future::Cache;
use sha2::{Digest, Sha256};

use crate::auth::Scope;
use crate::graphql::{BAD_USER_INPUT, refusal};
use crate::shared::{Operation, Redis};

pub const NOT_FOUND: &str = "PERSISTED_QUERY_NOT_FOUND";
pub const REQUIRED: &str = "PERSISTED_QUERY_REQUIRED";
/// Memory for stored documents in this replica.
const MAX_BYTES: u64 = 16 << 20;
/// Documents stored in this replica at most: each weighs at least `MAX_BYTES / MAX_DOCUMENTS`.
const MAX_DOCUMENTS: u64 = 10_000;
/// The largest document registered. A larger one still runs when sent in full.
const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// What one scope may register per `KEPT_FOR`: an application has tens of operations, not
/// hundreds.
const MAX_SCOPE_DOCUMENTS: u64 = 200;
const MAX_SCOPE_BYTES: u64 = 2 << 20;
/// What all replicas may store (or renew) in Redis per `KEPT_FOR`. Every document in Redis was
/// charged within its last `KEPT_FOR`, so Redis holds at most twice this.
const MAX_SHARED_DOCUMENTS: u64 = 20_000;
const MAX_SHARED_BYTES: u64 = 32 << 20;
/// How long a document nobody uses is kept, here and in Redis; clients re-register on a miss.
const KEPT_FOR: Duration = Duration::from_secs(24 * 3600);
/// The cheapest a registration can weigh: what turns the byte budget into a count bound too.
const MIN_WEIGHT: u64 = MAX_BYTES.div_ceil(MAX_DOCUMENTS);

/// The SHA-256 of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueryHash([u8; 32]);

impl QueryHash {
    pub fn of(document: &str) -> Self {
        QueryHash(Sha256::digest(document.as_bytes()).into())
    }

    /// From the 64 hexadecimal digits clients send.
    pub fn parse(hex_digits: &str) -> Option<Self> {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut hash).ok()?;
        Some(QueryHash(hash))
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Failures reading the operator's manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("could not read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is neither an Apollo persisted-query manifest ({{\"operations\": [{{\"id\", \"body\"}}]}}) nor an object of hashes to documents: {reason}"
    )]
    Format { path: String, reason: String },
    #[error("{path}: {id} is not the SHA-256 of its document")]
    WrongHash { path: String, id: String },
}

/// The documents this gateway runs by hash. Cheap to clone.
#[derive(Clone)]
pub struct PersistedQueries {
    documents: Cache<QueryHash, Arc<str>>,
    /// What each registrant (a scope, and the client key's lane in server-token mode)
    /// registered in its current `KEPT_FOR`.
    quotas: Cache<(Scope, Option<u64>), Arc<Quota>>,
    /// The manifest's documents: always known, never evicted.
    manifest: Arc<HashMap<QueryHash, Arc<str>>>,
    redis: Option<Redis>,
    only: bool,
}

impl PersistedQueries {
    pub fn new(manifest: HashMap<QueryHash, Arc<str>>, redis: Option<Redis>, only: bool) -> Self {
        PersistedQueries {
            documents: Cache::builder()
                .max_capacity(MAX_BYTES)
                .weigher(|_, document: &Arc<str>| weight(document.len()))
                .time_to_idle(KEPT_FOR)
                .build(),
            quotas: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(KEPT_FOR)
                .build(),
            manifest: Arc::new(manifest),
            redis,
            only,
        }
    }

    /// Reads a manifest: Apollo's format (`{"operations": [{"id", "body", …}]}`) or a plain
    /// object of hashes to documents. Every hash is checked against its document.
    pub fn read_manifest(path: &str) -> Result<HashMap<QueryHash, Arc<str>>, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        let format = |reason: String| ManifestError::Format {
            path: path.to_owned(),
            reason,
        };
        let root: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
        let pairs: Vec<(String, String)> = match root.get("operations") {
            Some(operations) => operations
                .as_array()
                .ok_or_else(|| format("\"operations\" is not a list".to_owned()))?
                .iter()
                .map(|op| match (op["id"].as_str(), op["body"].as_str()) {
                    (Some(id), Some(body)) => Ok((id.to_owned(), body.to_owned())),
                    _ => Err(format("an operation lacks \"id\" or \"body\"".to_owned())),
                })
                .collect::<Result<_, _>>()?,
            None => root
                .as_object()
                .ok_or_else(|| format("not a JSON object".to_owned()))?
                .iter()
                .map(|(id, body)| match body.as_str() {
                    Some(body) => Ok((id.clone(), body.to_owned())),
                    None => Err(format(format!("{id} maps to no document"))),
                })
                .collect::<Result<_, _>>()?,
        };
        pairs
            .into_iter()
            .map(|(id, body)| match QueryHash::parse(&id) {
                Some(hash) if hash == QueryHash::of(&body) => Ok((hash, Arc::from(body))),
                _ => Err(ManifestError::WrongHash {
                    path: path.to_owned(),
                    id,
                }),
            })
            .collect()
    }

    /// Puts the document into `request` for a hash-only request, and enforces
    /// `--persisted-only`. A request sending hash and document together gives the
    /// registration, for [`PersistedQueries::register`] once the caller is known to be
    /// verified. An error is the whole answer: the request must not run.
    pub async fn resolve(
        &self,
        request: &mut async_graphql::Request,
    ) -> Result<Option<Registration>, ServerError> {
        let Some(persisted) = request.extensions.0.get("persistedQuery") else {
            if self.only && !self.manifest.contains_key(&QueryHash::of(&request.query)) {
                return Err(required());
            }
            return Ok(None);
        };
        let hash = requested_hash(persisted)?;
        if request.query.is_empty() {
            return match self.get(hash).await {
                Some(document) => {
                    request.query = document.to_string();
                    Ok(None)
                }
                None if self.only => Err(required()),
                None => Err(refusal(NOT_FOUND, "PersistedQueryNotFound".to_owned())),
            };
        }
        if QueryHash::of(&request.query) != hash {
            return Err(refusal(
                BAD_USER_INPUT,
                "extensions.persistedQuery.sha256Hash: must be the SHA-256 of the query \
                 (lowercase hexadecimal)"
                    .to_owned(),
            ));
        }
        if self.only {
            return match self.manifest.contains_key(&hash) {
                true => Ok(None),
                false => Err(required()),
            };
        }
        if self.manifest.contains_key(&hash) || request.query.len() > MAX_DOCUMENT_BYTES {
            return Ok(None);
        }
        Ok(Some(Registration {
            hash,
            document: request.query.as_str().into(),
        }))
    }

    /// Stores a document a verified caller of `scope` (and `lane`: its client key, where
    /// callers share a scope) sent, within that registrant's quota and the store's. Documents
    /// that do not parse are not stored.
    pub async fn register(&self, registration: Registration, scope: &Scope, lane: Option<u64>) {
        let Registration { hash, document } = registration;
        if self.documents.contains_key(&hash)
            || async_graphql::parser::parse_query(&*document).is_err()
        {
            return;
        }
        let quota = self
            .quotas
            .get_with((scope.clone(), lane), async { Arc::default() })
            .await;
        if !quota.charge(document.len(), MAX_SCOPE_DOCUMENTS, MAX_SCOPE_BYTES) {
            tracing::debug!("a scope's persisted-query quota is spent: not stored");
            return;
        }
        self.documents.insert(hash, document.clone()).await;
        if let Some(redis) = &self.redis
            && charge_shared(redis, document.len()).await
        {
            let key = redis.key(format_args!("v1:apq:{}", hash.hex()));
            redis
                .run(Operation::Write, |mut conn| {
                    let mut set = redis::cmd("SET");
                    set.arg(&key)
                        .arg(&*document)
                        .arg("EX")
                        .arg(KEPT_FOR.as_secs());
                    async move { set.query_async::<()>(&mut conn).await }
                })
                .await;
        }
    }

    async fn get(&self, hash: QueryHash) -> Option<Arc<str>> {
        if let Some(document) = self.manifest.get(&hash) {
            return Some(document.clone());
        }
        if let Some(document) = self.documents.get(&hash).await {
            return Some(document);
        }
        let redis = self.redis.as_ref()?;
        let key = redis.key(format_args!("v1:apq:{}", hash.hex()));
        let (stored, ttl): (Option<String>, i64) = redis
            .run(Operation::Read, |mut conn| {
                let mut pipe = redis::pipe();
                pipe.cmd("GET").arg(&key).cmd("TTL").arg(&key);
                async move { pipe.query_async(&mut conn).await }
            })
            .await?;
        // What Redis holds is checked like anything a client sends.
        let document: Arc<str> = stored.filter(|d| QueryHash::of(d) == hash)?.into();
        // Renewed on use, but only once it is half gone, and charged like a registration:
        // then every document Redis holds was charged within its last `KEPT_FOR`.
        let half = i64::try_from(KEPT_FOR.as_secs() / 2).unwrap_or(i64::MAX);
        if ttl < half && charge_shared(redis, document.len()).await {
            redis
                .run(Operation::Write, |mut conn| {
                    let mut expire = redis::cmd("EXPIRE");
                    expire.arg(&key).arg(KEPT_FOR.as_secs());
                    async move { expire.query_async::<()>(&mut conn).await }
                })
                .await;
        }
        self.documents.insert(hash, document.clone()).await;
        Some(document)
    }
}

/// A document sent with its hash, to store once its sender is known to be verified.
#[derive(Debug)]
pub struct Registration {
    hash: QueryHash,
    document: Arc<str>,
}

/// What one scope registered in the current `KEPT_FOR`.
#[derive(Debug, Default)]
struct Quota {
    documents: AtomicU64,
    bytes: AtomicU64,
}

impl Quota {
    /// Counts one more document of `bytes`; false (and nothing stored) once past either bound.
    fn charge(&self, bytes: usize, max_documents: u64, max_bytes: u64) -> bool {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        let documents = self.documents.fetch_add(1, Ordering::Relaxed) + 1;
        let total = self
            .bytes
            .fetch_add(bytes, Ordering::Relaxed)
            .saturating_add(bytes);
        documents <= max_documents && total <= max_bytes
    }
}

/// A document's weight in the local store: its size, but never less than `MIN_WEIGHT`, so the
/// byte budget also bounds the count.
fn weight(len: usize) -> u32 {
    let len = u64::try_from(len).unwrap_or(u64::MAX).saturating_add(64);
    u32::try_from(len.max(MIN_WEIGHT)).unwrap_or(u32::MAX)
}

/// Charges one document of `bytes` to the budget every replica shares in Redis for the
/// current `KEPT_FOR` window; false when it is spent (or Redis did not answer).
async fn charge_shared(redis: &Redis, bytes: usize) -> bool {
    let window = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / KEPT_FOR.as_secs());
    let key = redis.key(format_args!("v1:apq-budget:{window}"));
    let charged: Option<(u64, u64)> = redis
        .run(Operation::Write, |mut conn| {
            let mut pipe = redis::pipe();
            pipe.cmd("HINCRBY")
                .arg(&key)
                .arg("documents")
                .arg(1)
                .cmd("HINCRBY")
                .arg(&key)
                .arg("bytes")
                .arg(bytes)
                .cmd("EXPIRE")
                .arg(&key)
                .arg(2 * KEPT_FOR.as_secs())
                .ignore();
            async move { pipe.query_async(&mut conn).await }
        })
        .await;
    charged.is_some_and(|(documents, total)| {
        documents <= MAX_SHARED_DOCUMENTS && total <= MAX_SHARED_BYTES
    })
}

fn required() -> ServerError {
    refusal(
        REQUIRED,
        "this gateway only runs persisted queries (--persisted-only): send the \
         extensions.persistedQuery hash of a document from its manifest"
            .to_owned(),
    )
}

/// The hash of `{"version": 1, "sha256Hash": "<64 hex digits>"}`.
fn requested_hash(persisted: &Value) -> Result<QueryHash, ServerError> {
    let bad = |rule: &str| refusal(BAD_USER_INPUT, format!("extensions.persistedQuery{rule}"));
    let Value::Object(fields) = persisted else {
        return Err(bad(": must be an object {version: 1, sha256Hash}"));
    };
    match fields.get("version") {
        Some(Value::Number(version)) if version.as_u64() == Some(1) => {}
        _ => return Err(bad(".version: must be 1")),
    }
    match fields.get("sha256Hash") {
        Some(Value::String(hash)) if hash.len() == 64 => {
            QueryHash::parse(hash).ok_or_else(|| bad(".sha256Hash: must be 64 hexadecimal digits"))
        }
        _ => Err(bad(".sha256Hash: must be 64 hexadecimal digits")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_refuses_past_either_bound() {
        let quota = Quota::default();
        assert!(quota.charge(10, 2, 100));
        assert!(quota.charge(10, 2, 100));
        assert!(!quota.charge(10, 2, 100), "a third document");
        let quota = Quota::default();
        assert!(!quota.charge(101, 2, 100), "too many bytes");
    }

    #[tokio::test]
    async fn the_local_store_is_bounded_by_count_as_well_as_bytes() {
        assert_eq!(
            u64::from(weight(1)),
            MIN_WEIGHT,
            "tiny documents weigh the minimum"
        );
        let store = PersistedQueries::new(HashMap::new(), None, false);
        for i in 0..(MAX_DOCUMENTS + 500) {
            let document: Arc<str> = format!("{{a{i}}}").into();
            store
                .documents
                .insert(QueryHash::of(&document), document)
                .await;
        }
        store.documents.run_pending_tasks().await;
        let kept = store.documents.entry_count();
        assert!(kept <= MAX_DOCUMENTS, "{kept} documents kept");
    }
}
