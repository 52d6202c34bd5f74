//! The Mutation root: contact writes, with read-your-writes caching and safe retries.
//!
//! A write goes out only after its input passed every check here (the account's field
//! definitions included), so a bad value costs no upstream call. amoCRM answers writes with ids
//! only: the written contacts are read back once, and the caches updated from that read before
//! the answer leaves (`cache::writes`). Items fail one by one: a payload holds the contacts
//! that were written, in the input's order, and each failed item has its own error naming its
//! argument.
//!
//! - `input`: the input types and their validation.
//! - `create`: creates, with idempotency keys.

mod create;
mod input;

use std::collections::BTreeSet;
use std::sync::Arc;

use async_graphql::parser::types::{
    ExecutableDocument, OperationDefinition, Selection, SelectionSet,
};
use async_graphql::{Context, ErrorExtensions, ID, Object, Pos, Result, SimpleObject, Variables};
use async_graphql_value::{ConstValue, Value};

use super::contact::Contact;
use super::context::RequestContext;
use super::error::ApiError;
use super::selection::Details;
use crate::amocrm::{AmoClient, AmoError, ContactId, EntityKind, LinkKind, WriteError};
use crate::auth::Credentials;
use crate::cache::{Caches, Idempotency};
use crate::live::{Change, ChangeKind};

pub use create::CreateOutcome;
pub use input::client_path;
pub use input::{ContactCreateInput, ContactLinkInput, ContactUpdateInput};

/// The most contacts (created, updated or linked) one operation may write: five of amoCRM's
/// write batches, a few seconds of its rate limit.
pub const MAX_WRITES_PER_OPERATION: usize = 250;

/// What writes and subscriptions need beyond a request's own context, shared by every request:
/// given to the schema once.
#[derive(Clone)]
pub struct Services {
    pub client: AmoClient,
    pub caches: Caches,
    pub idempotency: Idempotency<CreateOutcome>,
    /// Where writes tell subscribers what changed.
    pub live: crate::live::Hub,
}

impl Services {
    /// `redis` keeps idempotency keys across replicas.
    pub fn new(
        client: AmoClient,
        caches: Caches,
        redis: Option<crate::shared::Redis>,
        live: crate::live::Hub,
    ) -> Self {
        Services {
            client,
            caches,
            idempotency: Idempotency::new(redis),
            live,
        }
    }
}

#[derive(SimpleObject)]
pub struct CreateContactsPayload {
    /// The created contacts as amoCRM now has them, in the input's order; an item that failed
    /// is left out and has its own error.
    pub contacts: Vec<Contact>,
}

#[derive(SimpleObject)]
pub struct UpdateContactsPayload {
    /// The updated contacts as amoCRM now has them, in the input's order; an item that failed
    /// is left out and has its own error.
    pub contacts: Vec<Contact>,
}

#[derive(SimpleObject)]
pub struct LinkContactPayload {
    /// The contact with its links as amoCRM now has them; null if the caller's token can no
    /// longer see it.
    pub contact: Option<Contact>,
}

pub struct MutationRoot;

#[Object(name = "Mutation")]
impl MutationRoot {
    /// Creates contacts (at most 250 per operation; amoCRM takes them 50 at a time). Give an
    /// `idempotencyKey` (or the `Idempotency-Key` header) to make retries safe: for 24 hours
    /// the same key returns the first outcome instead of creating the contacts again.
    async fn create_contacts(
        &self,
        ctx: &Context<'_>,
        input: Vec<ContactCreateInput>,
        idempotency_key: Option<String>,
    ) -> Result<CreateContactsPayload> {
        create::create_contacts(ctx, input, idempotency_key)
            .await
            .map_err(|e| e.extend())
    }

    /// Changes contacts: only what each input gives changes. amoCRM takes them 50 at a time.
    async fn update_contacts(
        &self,
        ctx: &Context<'_>,
        input: Vec<ContactUpdateInput>,
    ) -> Result<UpdateContactsPayload> {
        update_contacts(ctx, input).await.map_err(|e| e.extend())
    }

    /// Links the contact to leads, companies, customers or catalog elements.
    async fn link_contact(
        &self,
        ctx: &Context<'_>,
        id: ID,
        links: Vec<ContactLinkInput>,
    ) -> Result<LinkContactPayload> {
        link(ctx, id, links, Direction::Link)
            .await
            .map_err(|e| e.extend())
    }

    /// Removes links of the contact (a catalog element's `quantity` and `priceId` are ignored).
    async fn unlink_contact(
        &self,
        ctx: &Context<'_>,
        id: ID,
        links: Vec<ContactLinkInput>,
    ) -> Result<LinkContactPayload> {
        link(ctx, id, links, Direction::Unlink)
            .await
            .map_err(|e| e.extend())
    }
}

/// The caller's credentials and the write services, or why there are none.
fn writer<'a>(ctx: &Context<'a>) -> Result<(&'a Credentials, &'a Services), ApiError> {
    let request = ctx
        .data_opt::<RequestContext>()
        .ok_or(ApiError::Internal("the request carries no RequestContext"))?;
    let services = ctx.data_opt::<Services>().ok_or(ApiError::Internal(
        "the schema was built without write services",
    ))?;
    Ok((request.upstream()?.credentials(), services))
}

fn idempotency_header<'a>(ctx: &Context<'a>) -> Option<&'a str> {
    ctx.data_opt::<RequestContext>()
        .and_then(RequestContext::idempotency_key)
}

/// Reports a failed item as an error of the mutation field, beside the payload.
fn report(ctx: &Context<'_>, error: &ApiError) {
    let mut error = error.extend().into_server_error(Pos::default());
    error.locations.clear();
    error.path = ctx
        .path_node
        .map(|node| {
            node.to_string_vec()
                .into_iter()
                .map(async_graphql::PathSegment::Field)
                .collect()
        })
        .unwrap_or_default();
    ctx.add_error(error);
}

/// Each item of `input` checked (against the account's field definitions, when one names
/// custom fields): the valid ones with their arguments (`input[3]`); each invalid one reported
/// as its own error.
async fn valid_items<I: input::ItemInput>(
    ctx: &Context<'_>,
    services: &Services,
    credentials: &Credentials,
    input: &[I],
) -> Result<(Vec<I::Checked>, Vec<String>), ApiError> {
    let definitions = if input.iter().any(I::has_custom_fields) {
        services.caches.fields.get(credentials).await?
    } else {
        Arc::default()
    };
    let fields = input::Fields(&definitions);
    let mut valid = Vec::new();
    let mut arguments = Vec::new();
    for (i, item) in input.iter().enumerate() {
        let argument = format!("input[{i}]");
        match item.validate(&argument, &fields) {
            Ok(checked) => {
                valid.push(checked);
                arguments.push(argument);
            }
            Err(error) => report(ctx, &error),
        }
    }
    Ok((valid, arguments))
}

/// What became of a written item that amoCRM did not take.
fn write_error(argument: String, error: WriteError) -> ApiError {
    match error {
        WriteError::Invalid(problems) => ApiError::rejected(&argument, &problems),
        WriteError::Failed(error) => ApiError::Upstream(error),
        WriteError::NotSent => ApiError::NotSent,
    }
}

/// The contacts in `written` for the given ids, in that order, as payload objects.
fn payload_contacts(
    ids: impl IntoIterator<Item = ContactId>,
    written: &crate::cache::Written,
) -> Vec<Contact> {
    ids.into_iter()
        .filter_map(|id| written.get(&id).cloned())
        .map(|contact| Contact(contact, Details::all()))
        .collect()
}

async fn update_contacts(
    ctx: &Context<'_>,
    input: Vec<ContactUpdateInput>,
) -> Result<UpdateContactsPayload, ApiError> {
    let (credentials, services) = writer(ctx)?;
    let (changes, arguments) = valid_items(ctx, services, credentials, &input).await?;
    if changes.is_empty() {
        return Ok(UpdateContactsPayload {
            contacts: Vec::new(),
        });
    }
    let outcomes = services
        .client
        .update_contacts(&credentials.token, &changes)
        .await;
    let mut updated = Vec::new();
    // Contacts whose change may or may not have been applied: cached copies go all the same.
    let mut maybe = Vec::new();
    for ((outcome, argument), change) in outcomes.into_iter().zip(arguments).zip(&changes) {
        match outcome {
            Ok(contact) => updated.push(ContactId::new(contact.id)),
            Err(error) => {
                if matches!(&error, WriteError::Failed(e) if matches!(**e, AmoError::OutcomeUnknown { .. }))
                {
                    maybe.push(ContactId::new(change.id));
                }
                report(ctx, &item_error(error, &argument));
            }
        }
    }
    if updated.is_empty() && maybe.is_empty() {
        return Ok(UpdateContactsPayload {
            contacts: Vec::new(),
        });
    }
    let epoch = services.caches.epoch();
    let written = if updated.is_empty() {
        Default::default()
    } else {
        let ids: BTreeSet<ContactId> = updated.iter().copied().collect();
        // The write happened whatever the read: the caches must forget the old contacts.
        services
            .caches
            .read_back(credentials, &ids)
            .await
            .unwrap_or_else(|error| {
                report(ctx, &ApiError::ReadBack(error));
                Default::default()
            })
    };
    let touched: Vec<ContactId> = updated.iter().chain(&maybe).copied().collect();
    services
        .caches
        .after_update(credentials, &touched, &written, epoch)
        .await;
    services
        .live
        .changed(live_changes(&updated, ChangeKind::Updated))
        .await;
    Ok(UpdateContactsPayload {
        contacts: payload_contacts(updated, &written),
    })
}

/// What subscribers are told of written contacts.
fn live_changes(ids: &[ContactId], kind: ChangeKind) -> Vec<Change> {
    ids.iter().map(|&id| Change { id, kind }).collect()
}

/// A written item's error, naming the item (`input[3]`, or a path into it).
fn item_error(error: WriteError, argument: &str) -> ApiError {
    crate::graphql::error::Kept::of(&write_error(String::new(), error)).at(argument)
}

#[derive(Clone, Copy)]
enum Direction {
    Link,
    Unlink,
}

async fn link(
    ctx: &Context<'_>,
    id: ID,
    links: Vec<ContactLinkInput>,
    direction: Direction,
) -> Result<LinkContactPayload, ApiError> {
    let (credentials, services) = writer(ctx)?;
    let id = super::input::parse_id("id", &id)?;
    if links.is_empty() {
        return Err(ApiError::bad_input("links", "give at least one link"));
    }
    let targets = links
        .iter()
        .enumerate()
        .map(|(i, link)| link.validate(&format!("links[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let linked = match direction {
        Direction::Link => {
            services
                .client
                .link_contact(&credentials.token, id, &targets)
                .await
        }
        Direction::Unlink => {
            services
                .client
                .unlink_contact(&credentials.token, id, &targets)
                .await
        }
    };
    let contact = ContactId::new(id);
    let entities: Vec<(EntityKind, u64)> = targets
        .iter()
        .filter_map(|t| {
            let kind = match t.kind {
                LinkKind::Leads => EntityKind::Lead,
                LinkKind::Companies => EntityKind::Company,
                LinkKind::Customers => EntityKind::Customer,
                LinkKind::CatalogElements => EntityKind::CatalogElement {
                    catalog_id: t.catalog_id?,
                },
            };
            Some((kind, t.id))
        })
        .collect();
    if let Err(AmoError::OutcomeUnknown { .. }) = &linked {
        // It may have been applied: nothing cached about either side may be trusted.
        let epoch = services.caches.epoch();
        services
            .caches
            .after_link(credentials, contact, &Default::default(), epoch, &entities)
            .await;
    }
    linked.map_err(|error| match error {
        AmoError::Invalid(rejections) => {
            // amoCRM names the refused link by its place in what was sent, as the client's.
            let argument = match rejections.as_slice() {
                [one] => one
                    .request_id
                    .as_deref()
                    .and_then(|id| id.parse::<usize>().ok())
                    .filter(|i| *i < links.len())
                    .map_or_else(|| "links".to_owned(), |i| format!("links[{i}]")),
                _ => "links".to_owned(),
            };
            let problems: Vec<_> = rejections.into_iter().flat_map(|r| r.problems).collect();
            ApiError::rejected(&argument, &problems)
        }
        error => ApiError::Upstream(Arc::new(error)),
    })?;
    let epoch = services.caches.epoch();
    let written = services
        .caches
        .read_back(credentials, &BTreeSet::from([contact]))
        .await;
    let written = written.unwrap_or_else(|error| {
        report(ctx, &ApiError::ReadBack(error));
        Default::default()
    });
    services
        .caches
        .after_link(credentials, contact, &written, epoch, &entities)
        .await;
    services
        .live
        .changed(live_changes(&[contact], ChangeKind::Updated))
        .await;
    Ok(LinkContactPayload {
        contact: payload_contacts([contact], &written).pop(),
    })
}

/// How many contacts or links an operation's mutation fields write, from their literal
/// arguments and variables (fragments on the Mutation root included): counted before anything
/// runs. Fragment cycles were refused before this.
pub fn count_writes(
    document: &ExecutableDocument,
    operation: &OperationDefinition,
    variables: &Variables,
) -> usize {
    count_in(document, &operation.selection_set.node, variables, 0)
}

fn count_in(
    document: &ExecutableDocument,
    selections: &SelectionSet,
    variables: &Variables,
    depth: usize,
) -> usize {
    // Fragments on the root nest no deeper than this in any document that passed the
    // expansion check; a bound all the same.
    if depth > 32 {
        return usize::MAX;
    }
    selections
        .items
        .iter()
        .map(|selection| match &selection.node {
            Selection::Field(field) => {
                let argument = match field.node.name.node.as_str() {
                    "createContacts" | "updateContacts" => "input",
                    "linkContact" | "unlinkContact" => "links",
                    _ => return 0,
                };
                field
                    .node
                    .get_argument(argument)
                    .map_or(0, |value| list_len(&value.node, variables))
            }
            Selection::InlineFragment(fragment) => count_in(
                document,
                &fragment.node.selection_set.node,
                variables,
                depth + 1,
            ),
            Selection::FragmentSpread(spread) => document
                .fragments
                .get(&spread.node.fragment_name.node)
                .map_or(0, |fragment| {
                    count_in(
                        document,
                        &fragment.node.selection_set.node,
                        variables,
                        depth + 1,
                    )
                }),
        })
        .fold(0, usize::saturating_add)
}

fn list_len(value: &Value, variables: &Variables) -> usize {
    match value {
        Value::List(items) => items.len(),
        Value::Variable(name) => match variables.get(name) {
            Some(ConstValue::List(items)) => items.len(),
            _ => 1,
        },
        // A single item is coerced to a list of one.
        _ => 1,
    }
}
