//! The HTTP client for amoCRM: its configuration, the caller's token, and the calls the gateway
//! makes (contacts, linked entities, users), each decoded from what amoCRM answers. The write
//! calls (contacts created and changed, links, field definitions) are `writes.rs`'s.
//!
//! How a call goes out (breaker, rate limit, retries) is `execute.rs`'s; what an answer means
//! (statuses, 204s, problem bodies, timeouts) is `classify.rs`'s.

mod classify;
mod execute;
mod trust;
mod writes;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::breaker::Breaker;
use super::entities::{self, EntityKind, RelatedEntity, User};
use super::limiter::{Limiter, Priority};
use super::oauth::TokenSource;
use super::query::MAX_PAGE_SIZE;
use super::{
    AmoError, ContactFilter, ContactList, ContactsPage, ContactsQuery, PageSize, Relations,
    TimeRange, model,
};
use crate::metrics::Metrics;
use crate::shared::SharedLimiter;

pub(super) const CONTACTS_ENDPOINT: &str = "/api/v4/contacts";
const USERS_ENDPOINT: &str = "/api/v4/users";
const MAX_USER_PAGES: u32 = 100;

/// An amoCRM access token: a fixed one, or the gateway's own under OAuth, which is fetched
/// (and refreshed) when a call goes out. It never prints: `Debug` shows a placeholder.
#[derive(Clone)]
pub struct AccessToken {
    kind: TokenKind,
    /// The limiter lane of a caller that is not the token itself: each client key of a gateway
    /// that holds its own token (whose callers all share the token) gets its own.
    lane: Option<u64>,
}

#[derive(Clone)]
enum TokenKind {
    Fixed(SecretString),
    OAuth(Arc<TokenSource>),
}

impl AccessToken {
    pub fn new(token: impl Into<String>) -> Self {
        AccessToken {
            kind: TokenKind::Fixed(SecretString::from(token.into())),
            lane: None,
        }
    }

    pub fn oauth(source: Arc<TokenSource>) -> Self {
        AccessToken {
            kind: TokenKind::OAuth(source),
            lane: None,
        }
    }

    /// The same token, its calls queued in `lane` of the rate limiter rather than the token's
    /// own: for callers that share one token but deserve a fair share each.
    pub fn in_lane(mut self, lane: u64) -> Self {
        self.lane = Some(lane);
        self
    }

    /// The limiter lane given with [`AccessToken::in_lane`]: which client key a caller of a
    /// shared token holds.
    pub fn lane(&self) -> Option<u64> {
        self.lane
    }

    /// The token's keyed hash (`None` under OAuth, whose token is the gateway's own): what
    /// the client knows a forwarded token by, without keeping it.
    fn fingerprint(&self, key: &TokenKey) -> Option<trust::Fingerprint> {
        match &self.kind {
            TokenKind::Fixed(token) => Some(key.fingerprint(token.expose_secret())),
            TokenKind::OAuth(_) => None,
        }
    }

    /// Keys the limiter's per-caller lanes without keeping the token.
    fn caller(&self, key: &TokenKey) -> u64 {
        match (self.lane, self.fingerprint(key)) {
            (Some(lane), _) => lane,
            // Any 64 bits of the keyed hash keep lanes apart well enough: a collision only
            // merges two callers' turns.
            (None, Some(fingerprint)) => fingerprint as u64,
            (None, None) => 0,
        }
    }

    /// The bearer for one attempt, and (under OAuth) the generation to refresh from after a
    /// 401.
    async fn bearer(&self) -> Result<(SecretString, Option<u64>), AmoError> {
        match &self.kind {
            TokenKind::Fixed(token) => Ok((token.clone(), None)),
            TokenKind::OAuth(source) => {
                let (token, generation) = source.access().await?;
                Ok((token, Some(generation)))
            }
        }
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `scheme://host[:port]` of the account.
    pub base_url: Url,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Calls a second at most, for all replicas together; `None` lifts the limit (benchmarks
    /// of the gateway itself).
    pub rate_limit: Option<u32>,
    /// How many replicas share `rate_limit`: each keeps to its share when there is no shared
    /// limiter, or while the shared limiter's Redis is unreachable.
    pub replicas_hint: u32,
    /// The rate limit kept in Redis for every replica.
    pub shared_limiter: Option<Arc<SharedLimiter>>,
    /// The longest a call waits for the rate limit before it is refused.
    pub queue_timeout: Duration,
    /// Whether every call uses the gateway's own token (not forwarded callers' tokens).
    pub shared_token: bool,
}

/// Calls amoCRM. Cheap to clone: reqwest's client is a handle to one connection pool.
#[derive(Debug, Clone)]
pub struct AmoClient {
    http: reqwest::Client,
    base_url: Url,
    request_timeout: Duration,
    metrics: Metrics,
    /// Orders this replica's callers (per-caller lanes, background last). Without a shared
    /// limiter it is the limit itself, at this replica's share.
    limiter: Option<Arc<Limiter>>,
    /// With Redis: the limit for every replica, and this replica's share for when Redis is
    /// unreachable.
    shared: Option<(Arc<SharedLimiter>, Arc<Limiter>)>,
    rate_limit: u32,
    breaker: Arc<Breaker>,
    /// Keys callers for the limiter's fairness and for `trust` without keeping their tokens.
    token_key: Arc<TokenKey>,
    /// What amoCRM said of forwarded tokens; `None` when every call uses the gateway's own.
    trust: Option<Arc<trust::TokenTrust>>,
}

/// The key of tokens' keyed hashes: random per process, since nothing outside it compares
/// them. Never printed.
struct TokenKey([u8; 32]);

impl TokenKey {
    fn fingerprint(&self, token: &str) -> trust::Fingerprint {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.0)
            .expect("HMAC accepts keys of any length");
        mac.update(token.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        u128::from_le_bytes(first)
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

/// A replica's share of a rate limit shared by `replicas` (at least one call a second).
fn share(rate: u32, replicas: u32) -> u32 {
    (rate / replicas.max(1)).max(1)
}

impl AmoClient {
    pub fn new(config: ClientConfig, metrics: Metrics) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!("amocrm-gateway/", env!("CARGO_PKG_VERSION")))
            // A redirect would be a further upstream call past the rate limiter.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(AmoClient {
            http,
            base_url: config.base_url,
            request_timeout: config.request_timeout,
            metrics,
            limiter: Limiter::new(
                match &config.shared_limiter {
                    Some(_) => config.rate_limit,
                    None => config
                        .rate_limit
                        .map(|rate| share(rate, config.replicas_hint)),
                },
                config.queue_timeout,
            ),
            shared: config.shared_limiter.zip(Limiter::new(
                config
                    .rate_limit
                    .map(|rate| share(rate, config.replicas_hint)),
                config.queue_timeout,
            )),
            rate_limit: config.rate_limit.unwrap_or(0),
            breaker: Arc::new(Breaker::default()),
            token_key: Arc::new(TokenKey(rand::random())),
            trust: (!config.shared_token).then(|| {
                Arc::new(trust::TokenTrust::new(
                    config.rate_limit,
                    config.queue_timeout,
                ))
            }),
        })
    }

    /// Whether amoCRM has accepted this forwarded token (answered one of its calls with
    /// success) lately. Always false for the gateway's own token, which is never forwarded.
    pub fn has_accepted(&self, token: &AccessToken) -> bool {
        let fingerprint = token.fingerprint(&self.token_key);
        self.trust
            .as_deref()
            .zip(fingerprint)
            .is_some_and(|(trust, fingerprint)| trust.is_accepted(fingerprint))
    }

    /// `GET /api/v4/contacts`. amoCRM's "nothing found" (204, also past the last page) is an
    /// empty page, not an error.
    pub async fn contacts(
        &self,
        token: &AccessToken,
        query: &ContactsQuery,
        priority: Priority,
    ) -> Result<ContactsPage, AmoError> {
        let answer = self
            .get(
                token,
                priority,
                CONTACTS_ENDPOINT,
                CONTACTS_ENDPOINT,
                &query.to_params(),
            )
            .await?;
        let mut page = match answer.body {
            Some(body) => model::decode_contacts_page(&body)?,
            None => ContactsPage::default(),
        };
        page.upstream_time = answer.upstream_time;
        Ok(page)
    }

    /// The documented cheap question: did any contact this token can see change since `since`
    /// (Unix seconds)? `GET /api/v4/contacts?filter[updated_at][from]=since&limit=1` answers 204
    /// when nothing did. Deletions do not show up in it.
    pub async fn contacts_changed_since(
        &self,
        token: &AccessToken,
        since: i64,
    ) -> Result<bool, AmoError> {
        let probe = ContactsQuery {
            list: ContactList {
                filter: ContactFilter {
                    updated_at: TimeRange::new(Some(since), None),
                    ..ContactFilter::default()
                },
                ..ContactList::default()
            },
            page: 1,
            limit: PageSize::new(1).expect("1 is a valid page size"),
            relations: Relations::NONE,
        };
        let answer = self
            .get(
                token,
                Priority::Background,
                CONTACTS_ENDPOINT,
                CONTACTS_ENDPOINT,
                &probe.to_params(),
            )
            .await?;
        match answer.body {
            None => Ok(false),
            Some(body) => Ok(!model::decode_contacts_page(&body)?.contacts.is_empty()),
        }
    }

    /// Linked entities of one kind by id, at most one page (250) of ids per call. Ids amoCRM
    /// does not return are deleted or not visible to the token.
    ///
    /// Some accounts ignore the id selection (seen for catalog elements, whose selection is
    /// undocumented) and list everything instead: an answer holding an entity that was not
    /// asked for says so. Then the asked entities it lacks may well exist, and each is read by
    /// id, every call through the rate limiter and the breaker like any other.
    pub async fn entities(
        &self,
        token: &AccessToken,
        kind: EntityKind,
        ids: &[u64],
        priority: Priority,
    ) -> Result<Vec<RelatedEntity>, AmoError> {
        let mut params = kind.id_params(ids);
        params.push(("limit".to_owned(), MAX_PAGE_SIZE.to_string()));
        let answer = self
            .get(token, priority, kind.route(), &kind.path(), &params)
            .await?;
        let mut found = match answer.body {
            Some(body) => entities::decode_entities(kind, &body)?,
            None => Vec::new(),
        };
        let asked: HashSet<u64> = ids.iter().copied().collect();
        if found.iter().all(|e| asked.contains(&e.id)) {
            return Ok(found);
        }
        found.retain(|e| asked.contains(&e.id));
        let returned: HashSet<u64> = found.iter().map(|e| e.id).collect();
        let mut lacking: Vec<u64> = asked.difference(&returned).copied().collect();
        lacking.sort_unstable();
        tracing::warn!(
            endpoint = kind.route(),
            lacking = lacking.len(),
            "amoCRM ignored the id selection: reading the lacking entities one by one"
        );
        let one_by_one = lacking
            .iter()
            .map(|id| self.entity(token, kind, *id, priority));
        for entity in futures::future::try_join_all(one_by_one).await? {
            found.extend(entity);
        }
        Ok(found)
    }

    /// One linked entity by id (`GET .../{id}`); `None` when amoCRM has none to show: 204, or
    /// 404 for an id it does not know.
    pub async fn entity(
        &self,
        token: &AccessToken,
        kind: EntityKind,
        id: u64,
        priority: Priority,
    ) -> Result<Option<RelatedEntity>, AmoError> {
        let answer = match self
            .get(token, priority, kind.item_route(), &kind.item_path(id), &[])
            .await
        {
            Ok(answer) => answer,
            Err(AmoError::UnknownEndpoint { .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        match answer.body {
            Some(body) => Ok(entities::decode_one_entity(&body)?.filter(|e| e.id == id)),
            None => Ok(None),
        }
    }

    /// Every user of the account, page by page. amoCRM has no id filter for users and answers
    /// 403 to tokens of non-admins.
    pub async fn users(
        &self,
        token: &AccessToken,
        priority: Priority,
    ) -> Result<Vec<User>, AmoError> {
        let mut users = Vec::new();
        // A bound for a broken upstream that links next pages forever.
        for page in 1..=MAX_USER_PAGES {
            let params = [
                ("page".to_owned(), page.to_string()),
                ("limit".to_owned(), MAX_PAGE_SIZE.to_string()),
            ];
            let answer = self
                .get(token, priority, USERS_ENDPOINT, USERS_ENDPOINT, &params)
                .await?;
            let Some(body) = answer.body else { break };
            let listed = entities::decode_users(&body)?;
            // A full page is judged by what amoCRM sent, not by what decoded.
            let full = listed.sent == usize::from(MAX_PAGE_SIZE);
            users.extend(listed.items);
            if !(full && listed.has_next_link) {
                break;
            }
        }
        Ok(users)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_never_appears_in_debug() {
        let token = AccessToken::new("very-secret");
        assert!(!format!("{token:?}").contains("very-secret"));
    }
}
