//! Per-request state: the caller's credentials, the DataLoader, and the cache report. Built by
//! the HTTP layer for every request and never shared: a loader's memo holds one user's data.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_graphql::dataloader::{DataLoader, HashMapCache, Loader};
use futures::future::try_join_all;

use super::error::ApiError;
use super::selection::Details;
use crate::amocrm::{
    AmoError, Contact, ContactId, ContactList, ContactsPage, ContactsQuery, EntityKind,
    MAX_FILTER_IDS, PageSize, Relations,
};
use crate::auth::{AuthError, Credentials};
use crate::cache::{Answer, CacheReport, EntityCache, PageCache};

/// Everything a resolver needs to reach amoCRM on behalf of this request's caller.
pub struct RequestContext {
    upstream: Result<Upstream, AuthError>,
    report: Arc<CacheReport>,
    /// The request's `Idempotency-Key` header, for creates.
    idempotency_key: Option<String>,
    /// Subscriptions open on this context's connection (shared by a WebSocket's operations).
    subscriptions: Arc<std::sync::atomic::AtomicUsize>,
}

/// What the operations of one WebSocket connection share: whose they are, and the count of
/// subscriptions it holds. async-graphql gives every operation on a connection the same data,
/// so each gets a [`RequestContext`] of its own from this (in the planning extension): its own
/// loaders, cache report and upstream-call budget.
#[derive(Clone)]
pub struct ConnectionContext {
    credentials: Credentials,
    pages: PageCache,
    entities: EntityCache,
    page_size: PageSize,
    subscriptions: Arc<std::sync::atomic::AtomicUsize>,
}

impl ConnectionContext {
    pub fn new(
        credentials: Credentials,
        pages: PageCache,
        entities: EntityCache,
        page_size: PageSize,
    ) -> Self {
        ConnectionContext {
            credentials,
            pages,
            entities,
            page_size,
            subscriptions: Arc::default(),
        }
    }

    /// A fresh context for one operation on the connection.
    pub fn operation(&self) -> RequestContext {
        let mut context = RequestContext::new(
            Ok(self.credentials.clone()),
            self.pages.clone(),
            self.entities.clone(),
            self.page_size,
        );
        context.subscriptions = self.subscriptions.clone();
        context
    }
}

/// A subscription's place on its connection, given back when dropped.
pub struct SubscriptionSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for SubscriptionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl RequestContext {
    pub fn new(
        credentials: Result<Credentials, AuthError>,
        pages: PageCache,
        entities: EntityCache,
        page_size: PageSize,
    ) -> Self {
        let report = Arc::new(CacheReport::default());
        let upstream = credentials.map(|credentials| Upstream {
            contacts_by_id: Arc::new(DataLoader::with_cache(
                ContactsById {
                    credentials: credentials.clone(),
                    pages: pages.clone(),
                    report: report.clone(),
                },
                tokio::spawn,
                HashMapCache::default(),
            )),
            linked: Arc::new(DataLoader::with_cache(
                LinkedEntities {
                    credentials: credentials.clone(),
                    entities: entities.clone(),
                    report: report.clone(),
                },
                tokio::spawn,
                HashMapCache::default(),
            )),
            users: tokio::sync::OnceCell::new(),
            over_budget: std::sync::OnceLock::new(),
            over_budget_reported: std::sync::atomic::AtomicBool::new(false),
            entities,
            credentials,
            pages,
            page_size,
            report: report.clone(),
        });
        RequestContext {
            upstream,
            report,
            idempotency_key: None,
            subscriptions: Arc::default(),
        }
    }

    /// A place for one more subscription on this connection, if it holds fewer than `max`.
    pub fn subscription_slot(&self, max: usize) -> Option<SubscriptionSlot> {
        use std::sync::atomic::Ordering;
        self.subscriptions
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()?;
        Some(SubscriptionSlot(self.subscriptions.clone()))
    }

    /// What a subscription calls before each event: the loaders' caches and the cache report
    /// hold what one event's answer read, and the next event must read linked entities afresh
    /// (and a long subscription must not keep all it ever read).
    pub fn clear_on_event(&self) -> impl Fn() + Send + Sync + 'static + use<> {
        let loaders = self
            .upstream
            .as_ref()
            .ok()
            .map(|u| (u.contacts_by_id.clone(), u.linked.clone()));
        let report = self.report.clone();
        move || {
            if let Some((by_id, linked)) = &loaders {
                by_id.clear::<ByIdKey>();
                linked.clear::<LinkedKey>();
            }
            report.reset();
        }
    }

    pub fn with_idempotency_key(mut self, key: Option<String>) -> Self {
        self.idempotency_key = key;
        self
    }

    pub fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }

    /// How this request's data was obtained, for the response headers; keep it to read after
    /// the context has moved into the request.
    pub fn report_handle(&self) -> Arc<CacheReport> {
        self.report.clone()
    }

    /// The caller's way to amoCRM; `UNAUTHENTICATED` when the request carried no usable token.
    pub fn upstream(&self) -> Result<&Upstream, ApiError> {
        self.upstream.as_ref().map_err(|e| ApiError::from(*e))
    }
}

pub struct Upstream {
    credentials: Credentials,
    pages: PageCache,
    entities: EntityCache,
    page_size: PageSize,
    report: Arc<CacheReport>,
    contacts_by_id: Arc<DataLoader<ContactsById, HashMapCache>>,
    /// Linked entities, memoized for this request (failures included, so that one failed
    /// batch is not retried by every field that wanted it).
    linked: Arc<DataLoader<LinkedEntities, HashMapCache>>,
    users: tokio::sync::OnceCell<Answer>,
    /// Set when the linked entities' real batches exceeded what the price left them.
    over_budget: std::sync::OnceLock<ApiError>,
    over_budget_reported: std::sync::atomic::AtomicBool,
}

impl Upstream {
    /// The size of the upstream pages that windows are cut from.
    pub fn page_size(&self) -> PageSize {
        self.page_size
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Page `page` (1-based) of `list`, with `relations` embedded.
    pub async fn contacts_page(
        &self,
        list: &ContactList,
        page: u32,
        relations: Relations,
    ) -> Result<Arc<ContactsPage>, ApiError> {
        let query = ContactsQuery {
            list: list.clone(),
            page,
            limit: self.page_size,
            relations,
        };
        Ok(self
            .pages
            .get(&self.credentials, query, &self.report)
            .await?)
    }

    /// Contacts by id, batched through the request's DataLoader. Every `contact` field of an
    /// operation asks for the operation's whole id set (see `selection`), so they share one
    /// batch, and a batch split by timing repeats an identical, cached upstream request.
    pub async fn contacts_by_id(
        &self,
        ids: &BTreeSet<ContactId>,
        relations: Relations,
    ) -> Result<HashMap<ContactId, Arc<Contact>>, ApiError> {
        let keys = ids.iter().map(|&id| ByIdKey { id, relations });
        let found = self.contacts_by_id.load_many(keys).await?;
        Ok(found.into_iter().map(|(key, c)| (key.id, c)).collect())
    }
}

impl Upstream {
    /// amoCRM's answer about one linked entity.
    /// Why no linked entity loads in this operation, if their batches were over its budget.
    /// `report` is true for the first asker only: one error for the operation, not one per
    /// entity.
    pub fn over_budget(&self) -> Option<(ApiError, bool)> {
        use std::sync::atomic::Ordering;
        let why = self.over_budget.get()?.clone();
        let report = !self.over_budget_reported.swap(true, Ordering::Relaxed);
        Some((why, report))
    }

    pub async fn linked(&self, kind: EntityKind, id: u64) -> Answer {
        match self.linked.load_one(LinkedKey { kind, id }).await {
            Ok(Some(answer)) => answer,
            // The loader answers every key it is given.
            Ok(None) | Err(_) => Answer::Cached(crate::cache::Cached::Missing),
        }
    }

    /// The scope's users, loaded once per request at most.
    pub async fn users(&self) -> Answer {
        self.users
            .get_or_init(|| self.entities.users(&self.credentials, &self.report))
            .await
            .clone()
    }

    /// Loads, for all `contacts` at once, the linked entities whose details are selected: one
    /// batch per kind (per catalog for catalog elements), the kinds concurrently. Run before the
    /// nested fields resolve, so that they find everything in the request's memo and the batch
    /// does not depend on a DataLoader's time window.
    ///
    /// With a `budget` (the upstream calls the operation's price left to linked entities),
    /// the real batches are counted first, now that the ids are known: beyond the budget
    /// nothing loads, and every detail field reports [`ApiError::OverBudget`] instead.
    pub async fn prefetch(&self, contacts: &[Arc<Contact>], details: Details, budget: Option<u64>) {
        let mut keys = Vec::new();
        for contact in contacts {
            if details.leads {
                keys.extend(contact.leads.iter().map(|l| LinkedKey {
                    kind: EntityKind::Lead,
                    id: l.id,
                }));
            }
            if details.customers {
                keys.extend(contact.customers.iter().map(|c| LinkedKey {
                    kind: EntityKind::Customer,
                    id: c.id,
                }));
            }
            if details.companies {
                keys.extend(contact.companies.iter().map(|c| LinkedKey {
                    kind: EntityKind::Company,
                    id: c.id,
                }));
            }
            if details.catalog_elements {
                // An element whose link names no catalog has nowhere to load from.
                keys.extend(contact.catalog_elements.iter().filter_map(|e| {
                    Some(LinkedKey {
                        kind: e.kind()?,
                        id: e.id,
                    })
                }));
            }
        }
        let users_needed =
            details.responsible_user && contacts.iter().any(|c| c.responsible_user_id != 0);
        if let Some(left) = budget {
            let needed = batches(&keys).saturating_add(u64::from(users_needed));
            if needed > left {
                let _ = self.over_budget.set(ApiError::OverBudget { needed, left });
                return;
            }
        }
        let users = async {
            if users_needed {
                self.users().await;
            }
        };
        let linked = async {
            if !keys.is_empty() {
                let _ = self.linked.load_many(keys).await;
            }
        };
        futures::join!(users, linked);
    }
}

/// The upstream calls `keys` need: one per 250 ids of a kind (of a catalog, for catalog
/// elements), as the entity cache batches them.
fn batches(keys: &[LinkedKey]) -> u64 {
    let mut per_kind: HashMap<EntityKind, std::collections::HashSet<u64>> = HashMap::new();
    for key in keys {
        per_kind.entry(key.kind).or_default().insert(key.id);
    }
    per_kind
        .values()
        .map(|ids| (ids.len() as u64).div_ceil(crate::amocrm::MAX_FILTER_IDS as u64))
        .sum()
}

/// A linked entity to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct LinkedKey {
    kind: EntityKind,
    id: u64,
}

/// Loads linked entities through the entity cache, one batch per kind, kinds concurrently.
struct LinkedEntities {
    credentials: Credentials,
    entities: EntityCache,
    report: Arc<CacheReport>,
}

impl Loader<LinkedKey> for LinkedEntities {
    type Value = Answer;
    type Error = std::convert::Infallible;

    async fn load(&self, keys: &[LinkedKey]) -> Result<HashMap<LinkedKey, Answer>, Self::Error> {
        let mut by_kind: HashMap<EntityKind, Vec<u64>> = HashMap::new();
        for key in keys {
            by_kind.entry(key.kind).or_default().push(key.id);
        }
        let loads = by_kind.into_iter().map(|(kind, ids)| async move {
            let answers = self
                .entities
                .entities(&self.credentials, kind, &ids, &self.report)
                .await;
            answers
                .into_iter()
                .map(move |(id, answer)| (LinkedKey { kind, id }, answer))
        });
        Ok(futures::future::join_all(loads)
            .await
            .into_iter()
            .flatten()
            .collect())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ByIdKey {
    id: ContactId,
    relations: Relations,
}

/// Loads contacts through the list endpoint with `filter[id][]`, up to a full page per call.
struct ContactsById {
    credentials: Credentials,
    pages: PageCache,
    report: Arc<CacheReport>,
}

impl Loader<ByIdKey> for ContactsById {
    type Value = Arc<Contact>;
    type Error = Arc<AmoError>;

    async fn load(
        &self,
        keys: &[ByIdKey],
    ) -> Result<HashMap<ByIdKey, Arc<Contact>>, Arc<AmoError>> {
        let mut by_relations: HashMap<Relations, BTreeSet<ContactId>> = HashMap::new();
        for key in keys {
            by_relations
                .entry(key.relations)
                .or_default()
                .insert(key.id);
        }
        let calls = by_relations.into_iter().flat_map(|(relations, ids)| {
            let ids: Vec<ContactId> = ids.into_iter().collect();
            ids.chunks(MAX_FILTER_IDS)
                .map(|chunk| ContactsQuery {
                    list: ContactList::by_ids(chunk.iter().copied()),
                    page: 1,
                    limit: PageSize::MAX,
                    relations,
                })
                .collect::<Vec<_>>()
        });
        let pages = try_join_all(calls.map(|query| async move {
            let relations = query.relations;
            let page = self
                .pages
                .get(&self.credentials, query, &self.report)
                .await?;
            Ok::<_, Arc<AmoError>>((relations, page))
        }))
        .await?;
        Ok(pages
            .into_iter()
            .flat_map(|(relations, page)| {
                page.contacts
                    .iter()
                    .map(|c| {
                        (
                            ByIdKey {
                                id: c.id,
                                relations,
                            },
                            c.clone(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect())
    }
}
