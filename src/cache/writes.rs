//! Read your writes: what a write through the gateway does to the caches before its answer
//! goes out. amoCRM answers writes with ids only, so the written contacts are read back once,
//! by id, through the rate limiter; then
//! - the writer's pages that hold them, in lists the write cannot reorder, are kept with the
//!   fresh contacts in place (its next read of them costs nothing and shows the write);
//! - every other contact page, in every scope and on every replica (through Redis), is
//!   dropped, as a contact webhook drops them: a search, a filter or an `updated_at` order may
//!   now include, exclude or move the contact;
//! - links also drop what is cached about the linked entity.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::{Caches, Invalidation};
use crate::amocrm::{
    AmoError, Contact, ContactFilter, ContactId, ContactList, ContactsQuery, Direction, EntityKind,
    MAX_FILTER_IDS, Order, OrderField, PageSize, Priority, Relation, Relations, TimeRange,
};
use crate::auth::Credentials;

/// The contacts of a write as amoCRM now has them, by id; a written id missing here is one the
/// writer's token can no longer see (it handed the contact to another user, say).
pub type Written = HashMap<ContactId, Arc<Contact>>;

impl Caches {
    /// Reads `ids` back with every relation, bypassing every cache, in as few calls as the id
    /// filter allows.
    pub async fn read_back(
        &self,
        credentials: &Credentials,
        ids: &BTreeSet<ContactId>,
    ) -> Result<Written, Arc<AmoError>> {
        let ids: Vec<ContactId> = ids.iter().copied().collect();
        let mut written = Written::new();
        for chunk in ids.chunks(MAX_FILTER_IDS) {
            let query = ContactsQuery {
                list: ContactList::by_ids(chunk.iter().copied()),
                page: 1,
                limit: PageSize::MAX,
                relations: Relation::ALL.into_iter().collect(),
            };
            let page = self
                .client
                .contacts(&credentials.token, &query, Priority::Completion)
                .await
                .map_err(Arc::new)?;
            written.extend(page.contacts.into_iter().map(|c| (c.id, c)));
        }
        Ok(written)
    }

    /// The newest contacts created at or after `since` (Unix seconds), up to one full page,
    /// read past every cache, and whether that page holds all of them: where a create whose
    /// answer never came looks for what it made.
    pub async fn created_since(
        &self,
        credentials: &Credentials,
        since: i64,
    ) -> Result<(Vec<Arc<Contact>>, bool), Arc<AmoError>> {
        let query = ContactsQuery {
            list: ContactList {
                filter: ContactFilter {
                    created_at: TimeRange::new(Some(since), None),
                    ..ContactFilter::default()
                },
                order: Some(Order {
                    field: OrderField::Id,
                    direction: Direction::Desc,
                }),
                search: None,
            },
            page: 1,
            limit: PageSize::MAX,
            relations: Relations::default(),
        };
        let page = self
            .client
            .contacts(&credentials.token, &query, Priority::Foreground)
            .await
            .map_err(Arc::new)?;
        let complete = !page.has_next_link && page.contacts.len() < PageSize::MAX.get();
        Ok((page.contacts, complete))
    }

    /// Contacts changed at or after `since` (Unix seconds), and no later than `until` when it
    /// is given, oldest change first, one page of them, read past every cache as background
    /// work: the change feed's one call.
    pub async fn changed_since(
        &self,
        credentials: &Credentials,
        since: i64,
        until: Option<i64>,
        page: u32,
    ) -> Result<Vec<Arc<Contact>>, Arc<AmoError>> {
        let query = ContactsQuery {
            list: ContactList {
                filter: ContactFilter {
                    updated_at: TimeRange::new(Some(since), until),
                    ..ContactFilter::default()
                },
                order: Some(Order {
                    field: OrderField::UpdatedAt,
                    direction: Direction::Asc,
                }),
                search: None,
            },
            page,
            limit: PageSize::MAX,
            relations: Relation::ALL.into_iter().collect(),
        };
        let page = self
            .client
            .contacts(&credentials.token, &query, Priority::Background)
            .await
            .map_err(Arc::new)?;
        Ok(page.contacts)
    }

    /// The page cache's invalidation count, noted before a read-back (see
    /// [`Caches::after_update`]).
    pub fn epoch(&self) -> u64 {
        self.pages.epoch()
    }

    /// After contacts were created: every contact list may now hold them. `lost`: a create's
    /// answer never came, so some unknown contact may exist too.
    pub async fn after_create(&self, ids: Vec<ContactId>, lost: bool) {
        let mut invalidations: Vec<Invalidation> =
            ids.into_iter().map(Invalidation::Contact).collect();
        if lost {
            // Id 0 names no contact: what it drops is what any contact's change drops.
            invalidations.push(Invalidation::Contact(ContactId::new(0)));
        }
        if !invalidations.is_empty() {
            self.invalidate_now(invalidations).await;
        }
    }

    /// After contacts were updated or linked, with `written` read back by the writer after
    /// `epoch` ([`Caches::epoch`]); `written` may lack some of `ids` (an unanswered write, or a
    /// contact the writer can no longer see). A contact's invalidation drops every contact page
    /// (those that embed its relations too).
    pub async fn after_update(
        &self,
        credentials: &Credentials,
        ids: &[ContactId],
        written: &Written,
        epoch: u64,
    ) {
        self.after_write(credentials, ids, written, epoch, Vec::new())
            .await;
    }

    /// After a contact's links changed: the contact as after an update, and the linked
    /// entities' own cached copies (their contact lists, their counts), in one invalidation.
    pub async fn after_link(
        &self,
        credentials: &Credentials,
        contact: ContactId,
        written: &Written,
        epoch: u64,
        entities: &[(EntityKind, u64)],
    ) {
        let entities = entities
            .iter()
            .map(|&(kind, id)| Invalidation::Entity(kind, id))
            .collect();
        self.after_write(credentials, &[contact], written, epoch, entities)
            .await;
    }

    /// Patches the pages holding `ids`, invalidates them with `also` (entity invalidations
    /// leave the page epoch alone), and puts the patched pages back.
    async fn after_write(
        &self,
        credentials: &Credentials,
        ids: &[ContactId],
        written: &Written,
        epoch: u64,
        also: Vec<Invalidation>,
    ) {
        let patched = self.pages.patched(&credentials.scope, ids, written);
        let mut invalidations: Vec<Invalidation> =
            ids.iter().copied().map(Invalidation::Contact).collect();
        invalidations.extend(also);
        self.invalidate_now(invalidations).await;
        self.pages.restore(patched, epoch).await;
    }
}
