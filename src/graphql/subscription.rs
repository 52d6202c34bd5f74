//! The Subscription root: `contactChanged`, fed by the live hub (`crate::live`).

use std::collections::BTreeSet;
use std::sync::Arc;

use async_graphql::{Context, Enum, ErrorExtensions, ID, Object, Result, Subscription};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::contact::Contact;
use super::context::RequestContext;
use super::error::ApiError;
use super::input::{self, ContactFilterInput};
use super::mutation::Services;
use super::selection::Details;
use crate::amocrm::{ContactId, ContactList, MAX_FILTER_IDS};
use crate::live::{self, ChangeKind, Subscription as Live};

pub struct SubscriptionRoot;

#[Subscription(name = "Subscription")]
impl SubscriptionRoot {
    /// Changes of the contacts the caller's token may see, as they happen: from amoCRM's
    /// webhooks, from writes through the gateway, and from a change feed that asks amoCRM
    /// every `--live-poll-interval` while anyone subscribes (deletions come only from
    /// webhooks). `ids` and `filter` narrow the stream; without them, every contact the
    /// caller may see. `contact` is as the caller's own token sees it, null when deleted.
    /// A subscriber that falls more than 256 events behind is ended with an error.
    async fn contact_changed(
        &self,
        ctx: &Context<'_>,
        ids: Option<Vec<ID>>,
        filter: Option<ContactFilterInput>,
    ) -> Result<impl Stream<Item = Result<ContactEvent>> + use<>> {
        let (subscription, wanted) = subscribe(ctx, ids, filter).map_err(|e| e.extend())?;
        let request = ctx
            .data_opt::<RequestContext>()
            .map(RequestContext::clear_on_event);
        Ok(futures::stream::unfold(
            Some((subscription, wanted, request)),
            |state| async move {
                let (mut subscription, wanted, request) = state?;
                loop {
                    match subscription.events.recv().await {
                        Ok(event) => {
                            if !wanted.admits(&event) {
                                continue;
                            }
                            if let Some(clear) = &request {
                                clear();
                            }
                            let item = Ok(ContactEvent(event));
                            return Some((item, Some((subscription, wanted, request))));
                        }
                        Err(RecvError::Lagged(missed)) => {
                            let error = ApiError::Lagged(missed).extend();
                            return Some((Err(error), None));
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            },
        ))
    }
}

/// What one subscription asked for.
struct Wanted {
    ids: BTreeSet<ContactId>,
    list: Option<ContactList>,
}

impl Wanted {
    fn admits(&self, event: &live::Event) -> bool {
        if !self.ids.is_empty() && !self.ids.contains(&event.id) {
            return false;
        }
        match (&self.list, &event.contact) {
            // A deleted contact can no longer be read nor matched: told to those who named
            // it, and to those who want every change if their scope saw it.
            (list, None) => {
                self.ids.contains(&event.id)
                    || (list.is_none() && self.ids.is_empty() && event.seen)
            }
            (None, Some(_)) => true,
            (Some(list), Some(contact)) => live::filter::matches(list, contact),
        }
    }
}

fn subscribe(
    ctx: &Context<'_>,
    ids: Option<Vec<ID>>,
    filter: Option<ContactFilterInput>,
) -> Result<(Live, Wanted), ApiError> {
    let ids = match ids {
        Some(ids) if ids.len() > MAX_FILTER_IDS => {
            return Err(ApiError::bad_input(
                "ids",
                format!("at most {MAX_FILTER_IDS} ids"),
            ));
        }
        Some(ids) => ids
            .iter()
            .enumerate()
            .map(|(i, id)| input::parse_id(&format!("ids[{i}]"), id).map(ContactId::new))
            .collect::<Result<BTreeSet<_>, _>>()?,
        None => BTreeSet::new(),
    };
    let list = filter
        .map(|filter| input::contact_list(Some(filter), None))
        .transpose()?;
    let request = ctx.data_opt::<RequestContext>().ok_or(ApiError::Internal(
        "the subscription carries no RequestContext",
    ))?;
    let credentials = request.upstream()?.credentials();
    let services = ctx.data_opt::<Services>().ok_or(ApiError::Internal(
        "the schema was built without its services",
    ))?;
    let subscription = services
        .live
        .subscribe(credentials)
        .map_err(ApiError::Live)?;
    Ok((subscription, Wanted { ids, list }))
}

/// A change of a contact.
pub struct ContactEvent(Arc<live::Event>);

#[Object]
impl ContactEvent {
    async fn kind(&self) -> ContactEventKind {
        match self.0.kind {
            ChangeKind::Created => ContactEventKind::Created,
            ChangeKind::Updated => ContactEventKind::Updated,
            ChangeKind::Deleted => ContactEventKind::Deleted,
            ChangeKind::Restored => ContactEventKind::Restored,
        }
    }

    async fn id(&self) -> ID {
        ID(self.0.id.get().to_string())
    }

    /// The contact as the subscriber's token sees it now; null when it was deleted.
    async fn contact(&self) -> Option<Contact> {
        self.0
            .contact
            .clone()
            .map(|contact| Contact(contact, Details::all()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum ContactEventKind {
    Created,
    Updated,
    Deleted,
    Restored,
}
