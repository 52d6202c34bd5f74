//! Automatic persisted queries, as Apollo Client's persisted-query link speaks them.
//!
//! A client sends the SHA-256 of its document in `extensions.persistedQuery` instead of the
//! document. A gateway that knows the hash runs the document it stored; one that does not
//! answers `PersistedQueryNotFound` (code `PERSISTED_QUERY_NOT_FOUND`), and the client sends
//! hash and document together once, which stores it. Hash-only requests fit in a GET URL, so
//! browsers can cache their answers.
//!
//! Documents are kept in a bounded moka cache and, with Redis, for every replica. With
//! `--persisted-only` only documents from the operator's manifest run: anything else is
//! refused with `PERSISTED_QUERY_REQUIRED`, registrations included.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::{ServerError, Value};
use moka::future::Cache;
use sha2::{Digest, Sha256};

use crate::graphql::{BAD_USER_INPUT, refusal};
use crate::shared::{Operation, Redis};

pub const NOT_FOUND: &str = "PERSISTED_QUERY_NOT_FOUND";
pub const REQUIRED: &str = "PERSISTED_QUERY_REQUIRED";
/// Memory for stored documents in this replica.
const MAX_BYTES: u64 = 16 << 20;
/// How long Redis keeps a document nobody registers again; clients re-register on a miss.
const SHARED_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

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
                .weigher(|_, document: &Arc<str>| {
                    u32::try_from(document.len() + 64).unwrap_or(u32::MAX)
                })
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

    /// Puts the document into `request` for a hash-only request, stores a registration (from
    /// callers that `may_register`, of documents that parse), and enforces `--persisted-only`.
    /// An error is the whole answer: the request must not run.
    pub async fn resolve(
        &self,
        request: &mut async_graphql::Request,
        may_register: bool,
    ) -> Result<(), ServerError> {
        let Some(persisted) = request.extensions.0.get("persistedQuery") else {
            if self.only && !self.manifest.contains_key(&QueryHash::of(&request.query)) {
                return Err(required());
            }
            return Ok(());
        };
        let hash = requested_hash(persisted)?;
        if request.query.is_empty() {
            return match self.get(hash).await {
                Some(document) => {
                    request.query = document.to_string();
                    Ok(())
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
                true => Ok(()),
                false => Err(required()),
            };
        }
        if may_register && async_graphql::parser::parse_query(&request.query).is_ok() {
            self.put(hash, &request.query).await;
        }
        Ok(())
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
        let stored: Option<String> = redis
            .run(Operation::Read, |mut conn| {
                let mut get = redis::cmd("GET");
                get.arg(&key);
                async move { get.query_async(&mut conn).await }
            })
            .await
            .flatten();
        // What Redis holds is checked like anything a client sends.
        let document: Arc<str> = stored.filter(|d| QueryHash::of(d) == hash)?.into();
        self.documents.insert(hash, document.clone()).await;
        Some(document)
    }

    async fn put(&self, hash: QueryHash, document: &str) {
        if self.documents.contains_key(&hash) {
            return;
        }
        self.documents.insert(hash, document.into()).await;
        if let Some(redis) = &self.redis {
            let key = redis.key(format_args!("v1:apq:{}", hash.hex()));
            redis
                .run(Operation::Write, |mut conn| {
                    let mut set = redis::cmd("SET");
                    set.arg(&key)
                        .arg(document)
                        .arg("EX")
                        .arg(SHARED_FOR.as_secs());
                    async move { set.query_async::<()>(&mut conn).await }
                })
                .await;
        }
    }
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
