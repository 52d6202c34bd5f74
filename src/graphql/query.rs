//! The Query root: `contacts` and `contact`.

use std::collections::BTreeSet;

use async_graphql::{Context, ErrorExtensions, ID, Object, Result};

use super::connection::{self, Cursor, ListFingerprint, PageItems, Window};
use super::contact::{Contact, ContactConnection, ContactEdge, PageInfo};
use super::context::RequestContext;
use super::error::ApiError;
use super::input::{self, ContactFilterInput, ContactOrderInput};
use std::sync::Arc;

use super::context::Upstream;
use super::custom_fields::CustomFieldDefinition;
use super::mutation::Services;
use super::selection::{Arrival, ContactNeeds, Details, OperationPlan};
use crate::amocrm::{ContactId, ContactsPage, Relation};

/// The most contacts one window may hold: one full amoCRM page.
/// `first` is read as a 64-bit Int so that any integer a client sends reaches our own range
/// check, whose error names the argument, rather than a bare scalar overflow.
pub const MAX_FIRST: i64 = 250;
pub const DEFAULT_FIRST: i64 = 50;

pub struct QueryRoot;

#[Object(name = "Query")]
impl QueryRoot {
    /// Contacts visible to the caller's token, as a Relay connection: `first` contacts (0..=250)
    /// after the cursor `after`, in amoCRM's order. Selecting `leads`, `customers` or
    /// `catalogElements` on the contacts makes the gateway ask amoCRM for exactly those
    /// relations; pages are cached per token, so repeated and overlapping windows are free.
    #[graphql(complexity = "window_cost(first, child_complexity)")]
    async fn contacts(
        &self,
        ctx: &Context<'_>,
        filter: Option<ContactFilterInput>,
        order: Option<ContactOrderInput>,
        #[graphql(default_with = "Some(DEFAULT_FIRST)")] first: Option<i64>,
        after: Option<String>,
    ) -> Result<ContactConnection> {
        contacts(ctx, filter, order, first, after)
            .await
            .map_err(|e| e.extend())
    }

    /// One contact by id, or null when amoCRM has none the caller may see. All `contact`
    /// fields of an operation are loaded together in one upstream call.
    async fn contact(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Contact>> {
        contact(ctx, id).await.map_err(|e| e.extend())
    }

    /// The custom fields of the account's contacts, with the choices of list fields: what a
    /// form needs, and what mutation input is checked against. Kept per token for ten
    /// minutes, then refreshed behind the answer.
    async fn contact_custom_fields(&self, ctx: &Context<'_>) -> Result<Vec<CustomFieldDefinition>> {
        custom_fields(ctx).await.map_err(|e| e.extend())
    }
}

async fn contacts(
    ctx: &Context<'_>,
    filter: Option<ContactFilterInput>,
    order: Option<ContactOrderInput>,
    first: Option<i64>,
    after: Option<String>,
) -> Result<ContactConnection, ApiError> {
    let first = first.unwrap_or(DEFAULT_FIRST);
    if !(0..=MAX_FIRST).contains(&first) {
        return Err(ApiError::bad_input(
            "first",
            format!("must be between 0 and {MAX_FIRST}, got {first}"),
        ));
    }
    let list = input::contact_list(filter, order)?;
    let fingerprint = ListFingerprint::of(&list);
    let start = match after {
        Some(after) => {
            Cursor::decode(&after, fingerprint)
                .map_err(|e| ApiError::bad_input("after", e.to_string()))?
                .offset
                + 1
        }
        None => 0,
    };
    let upstream = request(ctx)?.upstream()?;
    let key = response_key(ctx);
    let needs = plan(ctx).map_or_else(everything, |plan| plan.needs_of(&key));
    let relations = needs.relations;
    let arrival = plan(ctx)
        .filter(|_| needs.details.any())
        .map(|plan| plan.gate().join(key, needs.details));

    let window = Window {
        start,
        len: u64::try_from(first).unwrap_or(0),
    };
    let slice = connection::slice(window, upstream.page_size().get(), |page| {
        let list = &list;
        async move {
            let page = upstream.contacts_page(list, page, relations).await?;
            let has_more = page.has_next_link;
            Ok::<_, ApiError>(PageItems {
                items: CachedContacts(page),
                has_more,
            })
        }
    })
    .await?;

    prefetch(
        upstream,
        arrival,
        &slice.items,
        needs.details,
        linked_budget(ctx),
    )
    .await;
    let edges: Vec<ContactEdge> = slice
        .items
        .into_iter()
        .zip(start..)
        .map(|(contact, offset)| ContactEdge {
            cursor: Cursor {
                offset,
                list: fingerprint,
            }
            .encode(),
            node: Contact(contact, needs.details),
        })
        .collect();
    let page_info = PageInfo {
        has_next_page: slice.has_next_page,
        has_previous_page: start > 0,
        start_cursor: edges.first().map(|e| e.cursor.clone()),
        end_cursor: edges.last().map(|e| e.cursor.clone()),
    };
    Ok(ContactConnection { edges, page_info })
}

async fn custom_fields(ctx: &Context<'_>) -> Result<Vec<CustomFieldDefinition>, ApiError> {
    let credentials = request(ctx)?.upstream()?.credentials();
    let services = ctx.data_opt::<Services>().ok_or(ApiError::Internal(
        "the schema was built without its services",
    ))?;
    let definitions = services.caches.fields.get(credentials).await?;
    Ok(CustomFieldDefinition::all(definitions))
}

async fn contact(ctx: &Context<'_>, id: ID) -> Result<Option<Contact>, ApiError> {
    let id = ContactId::new(input::parse_id("id", &id)?);
    let upstream = request(ctx)?.upstream()?;
    let mut ids = BTreeSet::new();
    let needs = match plan(ctx) {
        Some(plan) => {
            let (batch, needs) = plan.contact_batch();
            ids.extend(batch.iter().copied());
            needs
        }
        None => everything(),
    };
    let arrival = plan(ctx)
        .filter(|_| needs.details.any())
        .map(|plan| plan.gate().join(response_key(ctx), needs.details));
    ids.insert(id);
    let found = upstream.contacts_by_id(&ids, needs.relations).await?;
    let mine: Vec<_> = found.get(&id).cloned().into_iter().collect();
    prefetch(upstream, arrival, &mine, needs.details, linked_budget(ctx)).await;
    Ok(found.get(&id).cloned().map(|c| Contact(c, needs.details)))
}

/// The contacts of a cached page, lent to the window arithmetic without copying the list.
struct CachedContacts(Arc<ContactsPage>);

impl AsRef<[Arc<crate::amocrm::Contact>]> for CachedContacts {
    fn as_ref(&self) -> &[Arc<crate::amocrm::Contact>] {
        &self.0.contacts
    }
}

/// A window costs what one contact costs, times the contacts it may hold.
fn window_cost(first: Option<i64>, per_contact: usize) -> usize {
    let first = first.unwrap_or(DEFAULT_FIRST).clamp(0, MAX_FIRST);
    usize::try_from(first)
        .unwrap_or(0)
        .max(1)
        .saturating_mul(per_contact)
}

/// Loads the linked entities the operation needs: through the gate, for the contacts of every
/// root field at once; without a plan, for these contacts alone.
async fn prefetch(
    upstream: &Upstream,
    arrival: Option<Arrival<'_>>,
    contacts: &[Arc<crate::amocrm::Contact>],
    details: Details,
    budget: Option<u64>,
) {
    match arrival {
        Some(arrival) => {
            let (all, details) = arrival.arrive(contacts).await;
            upstream.prefetch(&all, details, budget).await;
        }
        None if details.any() => upstream.prefetch(contacts, details, budget).await,
        None => {}
    }
}

/// What the operation's price left for linked entities (none without a plan).
fn linked_budget(ctx: &Context<'_>) -> Option<u64> {
    plan(ctx).and_then(OperationPlan::linked_budget)
}

fn request<'a>(ctx: &Context<'a>) -> Result<&'a RequestContext, ApiError> {
    ctx.data_opt::<RequestContext>()
        .ok_or(ApiError::Internal("the request carries no RequestContext"))
}

fn plan<'a>(ctx: &Context<'a>) -> Option<&'a OperationPlan> {
    ctx.data_opt::<OperationPlan>()
}

/// Without a plan (the schema was built without its planning extension) asking for everything
/// is the only choice that never returns a relation as empty when it is not.
fn everything() -> ContactNeeds {
    ContactNeeds {
        relations: Relation::ALL.into_iter().collect(),
        details: Details {
            leads: true,
            customers: true,
            companies: true,
            catalog_elements: true,
            responsible_user: true,
        },
    }
}

fn response_key(ctx: &Context<'_>) -> String {
    match ctx.path_node.as_ref().map(|node| node.segment) {
        Some(async_graphql::QueryPathSegment::Name(name)) => name.to_owned(),
        _ => String::new(),
    }
}
