//! The Subscription root: `contactChanged`, fed by the live hub (`crate::live`).

use std::collections::BTreeSet;
use std::sync::Arc;

use async_graphql::{Context, Enum, ErrorExtensions, ID, Object, Result, Subscription};
use futures::{Stream, StreamExt};
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
    /// A subscriber that falls more than 1 024 events behind is ended with an error.
    async fn contact_changed(
        &self,
        ctx: &Context<'_>,
        ids: Option<Vec<ID>>,
        filter: Option<ContactFilterInput>,
    ) -> Result<impl Stream<Item = Result<ContactEvent>> + use<>> {
        let Subscribed {
            subscription,
            wanted,
            slot,
            hub,
            credentials,
            clear,
        } = subscribe(ctx, ids, filter).map_err(|e| e.extend())?;
        let (receiver, membership) = subscription.split();
        // Named contacts are read once now, so that their deletion is told to this scope only
        // if it may see them.
        let named = wanted.ids.clone();
        let learning = async move {
            hub.learn(&credentials, &named).await;
        };
        let stream = events(receiver, wanted, move || {
            // Held as long as the stream: its place in the scope and on the connection.
            let _held = (&membership, &slot);
            clear();
        });
        Ok(futures::stream::once(learning)
            .filter_map(|()| futures::future::ready(None))
            .chain(stream))
    }
}

/// The stream of a subscription: the events it wants, `before_each` run before each goes
/// out; an error, then the end, for a subscriber that fell more than the hub's backlog behind.
fn events<F: Fn() + Send + Sync + 'static>(
    receiver: tokio::sync::broadcast::Receiver<Arc<live::Event>>,
    wanted: Wanted,
    before_each: F,
) -> impl Stream<Item = Result<ContactEvent>> + use<F> {
    futures::stream::unfold(Some((receiver, wanted, before_each)), |state| async move {
        let (mut receiver, wanted, before_each) = state?;
        loop {
            match receiver.recv().await {
                Ok(event) => {
                    if !wanted.admits(&event) {
                        continue;
                    }
                    before_each();
                    let item = Ok(ContactEvent(event));
                    return Some((item, Some((receiver, wanted, before_each))));
                }
                Err(RecvError::Lagged(missed)) => {
                    return Some((Err(ApiError::Lagged(missed).extend()), None));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    })
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
            // A deleted contact can no longer be read nor matched: told only where the scope
            // saw it (named ids are read when the subscription starts), to those who named it
            // or want every change.
            (list, None) => {
                event.seen
                    && (self.ids.contains(&event.id) || (list.is_none() && self.ids.is_empty()))
            }
            (None, Some(_)) => true,
            (Some(list), Some(contact)) => live::filter::matches(list, contact),
        }
    }
}

/// A subscription, with what its stream holds and needs.
struct Subscribed<C> {
    subscription: Live,
    wanted: Wanted,
    /// Its place on the connection.
    slot: super::context::SubscriptionSlot,
    hub: crate::live::Hub,
    credentials: crate::auth::Credentials,
    /// Run before each event (see [`RequestContext::clear_on_event`]).
    clear: C,
}

fn subscribe(
    ctx: &Context<'_>,
    ids: Option<Vec<ID>>,
    filter: Option<ContactFilterInput>,
) -> Result<Subscribed<impl Fn() + Send + Sync + 'static + use<>>, ApiError> {
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
    // The connection's own limit first: it costs nothing to check.
    let slot = request
        .subscription_slot(live::MAX_SUBSCRIPTIONS_PER_CONNECTION)
        .ok_or(ApiError::Live(live::LiveError::ConnectionFull(
            live::MAX_SUBSCRIPTIONS_PER_CONNECTION,
        )))?;
    let subscription = services
        .live
        .subscribe(credentials, &ids)
        .map_err(ApiError::Live)?;
    Ok(Subscribed {
        subscription,
        wanted: Wanted { ids, list },
        slot,
        hub: services.live.clone(),
        credentials: credentials.clone(),
        clear: request.clear_on_event(),
    })
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

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn event(id: u64) -> Arc<live::Event> {
        Arc::new(live::Event {
            kind: ChangeKind::Deleted,
            id: ContactId::new(id),
            contact: None,
            seen: true,
        })
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_gets_an_error_and_its_stream_ends() {
        let (sender, receiver) = tokio::sync::broadcast::channel(live::SUBSCRIBER_BACKLOG);
        let wanted = Wanted {
            ids: BTreeSet::new(),
            list: None,
        };
        let stream = events(receiver, wanted, || {});
        futures::pin_mut!(stream);
        for id in 1..=(live::SUBSCRIBER_BACKLOG as u64 + 10) {
            sender.send(event(id)).expect("a receiver");
        }
        let first = stream.next().await.expect("an item");
        let error = first.err().expect("the lag, as an error");
        assert!(
            error.message.contains("fell 10 events behind"),
            "{}",
            error.message
        );
        assert!(stream.next().await.is_none(), "and then the end");
    }

    #[tokio::test]
    async fn only_the_named_contacts_are_told() {
        let (sender, receiver) = tokio::sync::broadcast::channel(8);
        let wanted = Wanted {
            ids: BTreeSet::from([ContactId::new(2)]),
            list: None,
        };
        let stream = events(receiver, wanted, || {});
        futures::pin_mut!(stream);
        for id in [1, 2, 3] {
            sender.send(event(id)).expect("a receiver");
        }
        drop(sender);
        let told: Vec<u64> = stream
            .map(|item| item.map(|e| e.0.id.get()).unwrap_or(0))
            .collect()
            .await;
        assert_eq!(told, [2]);
    }
}
