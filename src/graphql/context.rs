//! Per-request state: the caller's credentials, the DataLoader, and the cache report. Built by
//! the HTTP layer for every request and never shared: a loader's memo holds one user's data.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_graphql::dataloader::{DataLoader, HashMapCache, Loader};
use futures::future::try_join_all;

use super::error::ApiError;
use crate::amocrm::{
    AmoError, Contact, ContactId, ContactList, ContactsPage, ContactsQuery, MAX_FILTER_IDS,
    PageSize, Relations,
};
use crate::auth::{AuthError, Credentials};
use crate::cache::{CacheReport, PageCache};

/// Everything a resolver needs to reach amoCRM on behalf of this request's caller.
pub struct RequestContext {
    upstream: Result<Upstream, AuthError>,
    report: Arc<CacheReport>,
}

impl RequestContext {
    pub fn new(
        credentials: Result<Credentials, AuthError>,
        pages: PageCache,
        page_size: PageSize,
    ) -> Self {
        let report = Arc::new(CacheReport::default());
        let upstream = credentials.map(|credentials| Upstream {
            contacts_by_id: DataLoader::with_cache(
                ContactsById {
                    credentials: credentials.clone(),
                    pages: pages.clone(),
                    report: report.clone(),
                },
                tokio::spawn,
                HashMapCache::default(),
            ),
            credentials,
            pages,
            page_size,
            report: report.clone(),
        });
        RequestContext { upstream, report }
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
    page_size: PageSize,
    report: Arc<CacheReport>,
    contacts_by_id: DataLoader<ContactsById, HashMapCache>,
}

impl Upstream {
    /// The size of the upstream pages that windows are cut from.
    pub fn page_size(&self) -> PageSize {
        self.page_size
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
