//! GraphQL objects: thin wrappers over the upstream models, plus the Relay connection types.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_graphql::{
    Context, ErrorExtensions, ID, Json, Object, PathSegment, Pos, QueryPathSegment, SimpleObject,
};
use tokio::sync::OnceCell;

use super::context::RequestContext;
use super::error::ApiError;
use super::scalars::DateTime;
use super::selection::Details;
use crate::amocrm::{EntityKind, RelatedEntity, model};
use crate::cache::{Answer, Cached};

/// amoCRM's fixed status ids for closed leads.
const STATUS_WON: u64 = 142;
const STATUS_LOST: u64 = 143;

fn id(value: u64) -> ID {
    ID(value.to_string())
}

/// An amoCRM contact, and which of its linked entities' details the operation selects.
#[derive(Clone)]
pub struct Contact(pub Arc<model::Contact>, pub Details);

#[Object]
impl Contact {
    async fn id(&self) -> ID {
        id(self.0.id.get())
    }

    async fn name(&self) -> &str {
        &self.0.name
    }

    async fn first_name(&self) -> &str {
        &self.0.first_name
    }

    async fn last_name(&self) -> &str {
        &self.0.last_name
    }

    /// The user responsible for the contact.
    async fn responsible_user_id(&self) -> ID {
        id(self.0.responsible_user_id)
    }

    /// The group of the responsible user.
    async fn group_id(&self) -> ID {
        id(self.0.group_id)
    }

    async fn created_by(&self) -> ID {
        id(self.0.created_by)
    }

    async fn updated_by(&self) -> ID {
        id(self.0.updated_by)
    }

    async fn created_at(&self) -> DateTime {
        DateTime::from_unix(self.0.created_at)
    }

    async fn updated_at(&self) -> DateTime {
        DateTime::from_unix(self.0.updated_at)
    }

    /// When the contact's nearest open task is due, if it has one.
    async fn closest_task_at(&self) -> Option<DateTime> {
        self.0.closest_task_at.map(DateTime::from_unix)
    }

    async fn is_deleted(&self) -> bool {
        self.0.is_deleted
    }

    async fn account_id(&self) -> ID {
        id(self.0.account_id)
    }

    /// Values of the contact's custom fields (phones and e-mails among them); empty when none.
    async fn custom_fields_values(&self) -> Vec<CustomFieldValue<'_>> {
        custom_fields(&self.0.custom_fields_values)
    }

    async fn tags(&self) -> Vec<Tag<'_>> {
        self.0.tags.iter().map(Tag).collect()
    }

    /// The company the contact belongs to (amoCRM links at most one).
    async fn companies(&self) -> Vec<Company> {
        self.0
            .companies
            .iter()
            .map(|c| Company(Linked::new(EntityKind::Company, c.id)))
            .collect()
    }

    /// Leads linked to the contact. Selecting this adds `leads` to the upstream `with`;
    /// selecting more than their `id` loads them, in one batch for the whole operation.
    async fn leads(&self) -> Vec<Lead> {
        self.0
            .leads
            .iter()
            .map(|l| Lead(Linked::new(EntityKind::Lead, l.id)))
            .collect()
    }

    /// Customers linked to the contact. Selecting this adds `customers` to the upstream `with`.
    async fn customers(&self) -> Vec<Customer> {
        self.0
            .customers
            .iter()
            .map(|c| Customer(Linked::new(EntityKind::Customer, c.id)))
            .collect()
    }

    /// Catalog elements linked to the contact. Selecting this adds `catalog_elements` to the
    /// upstream `with`.
    async fn catalog_elements(&self) -> Vec<CatalogElement<'_>> {
        self.0
            .catalog_elements
            .iter()
            .map(|link| CatalogElement {
                link,
                element: Linked::new(
                    EntityKind::CatalogElement {
                        catalog_id: link.catalog_id,
                    },
                    link.id,
                ),
            })
            .collect()
    }

    /// The user responsible for the contact. Its `name` and `email` come from the account's
    /// users list, which amoCRM shows only to admins: for other tokens this is null with a
    /// `FORBIDDEN` error.
    async fn responsible_user(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        let id = self.0.responsible_user_id;
        if id == 0 {
            return Ok(None);
        }
        // The plan decided it, `@skip`/`@include` and fragments included.
        if !self.1.responsible_user {
            return Ok(Some(User { id, user: None }));
        }
        let user = async {
            let upstream = request(ctx)?.upstream()?;
            match upstream.users().await {
                Answer::Cached(Cached::Users(users)) => users
                    .get(&id)
                    .cloned()
                    .map(|user| User {
                        id,
                        user: Some(user),
                    })
                    .ok_or(ApiError::NotFound { noun: "user", id }),
                Answer::Cached(Cached::Forbidden(error)) | Answer::Failed(error) => {
                    Err(ApiError::Upstream(error))
                }
                Answer::Cached(Cached::Missing | Cached::Entity(_)) => {
                    Err(ApiError::NotFound { noun: "user", id })
                }
            }
        };
        user.await.map(Some).map_err(|e| e.extend())
    }
}

fn request<'a>(ctx: &Context<'a>) -> Result<&'a RequestContext, ApiError> {
    ctx.data_opt::<RequestContext>()
        .ok_or(ApiError::Internal("the request carries no RequestContext"))
}

/// A linked entity: its id comes embedded in the contact, its details are loaded (in batches,
/// see `Upstream::prefetch`) when a field beyond the id is selected.
struct Linked {
    kind: EntityKind,
    id: u64,
    details: OnceCell<Option<Arc<RelatedEntity>>>,
    reported: AtomicBool,
}

impl Linked {
    fn new(kind: EntityKind, id: u64) -> Self {
        Linked {
            kind,
            id,
            details: OnceCell::new(),
            reported: AtomicBool::new(false),
        }
    }

    fn id(&self) -> ID {
        id(self.id)
    }

    /// The entity, or `None` after reporting why not: once per entity, at the entity's path,
    /// while each detail field just resolves to null and the rest of the response stays.
    async fn details(&self, ctx: &Context<'_>) -> Option<&RelatedEntity> {
        self.details
            .get_or_init(|| async {
                let answer = match request(ctx).and_then(RequestContext::upstream) {
                    Ok(upstream) => upstream.linked(self.kind, self.id).await,
                    Err(error) => {
                        self.report(ctx, error);
                        return None;
                    }
                };
                match answer {
                    Answer::Cached(Cached::Entity(entity)) => Some(entity),
                    Answer::Cached(Cached::Forbidden(error)) | Answer::Failed(error) => {
                        self.report(ctx, ApiError::Upstream(error));
                        None
                    }
                    Answer::Cached(Cached::Missing | Cached::Users(_)) => {
                        self.report(
                            ctx,
                            ApiError::NotFound {
                                noun: self.kind.noun(),
                                id: self.id,
                            },
                        );
                        None
                    }
                }
            })
            .await
            .as_deref()
    }

    fn report(&self, ctx: &Context<'_>, error: ApiError) {
        if self.reported.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut error = error.extend().into_server_error(Pos::default());
        error.locations.clear();
        error.path = entity_path(ctx);
        ctx.add_error(error);
    }
}

/// The path of the entity whose detail field `ctx` resolves: the field's parent.
fn entity_path(ctx: &Context<'_>) -> Vec<PathSegment> {
    let Some(entity) = ctx.path_node.as_ref().and_then(|field| field.parent) else {
        return Vec::new();
    };
    let mut path: Vec<PathSegment> = std::iter::once(entity)
        .chain(entity.parents())
        .map(|node| match node.segment {
            QueryPathSegment::Index(index) => PathSegment::Index(index),
            QueryPathSegment::Name(name) => PathSegment::Field(name.to_owned()),
        })
        .collect();
    path.reverse();
    path
}

fn date(seconds: Option<i64>) -> Option<DateTime> {
    seconds.map(DateTime::from_unix)
}

fn custom_fields(values: &[model::CustomFieldValue]) -> Vec<CustomFieldValue<'_>> {
    values.iter().map(CustomFieldValue).collect()
}

/// The values of one custom field of a contact.
pub struct CustomFieldValue<'a>(&'a model::CustomFieldValue);

#[Object]
impl CustomFieldValue<'_> {
    async fn field_id(&self) -> ID {
        id(self.0.field_id)
    }

    async fn field_name(&self) -> Option<&str> {
        self.0.field_name.as_deref()
    }

    /// A stable code for system fields, such as `PHONE` or `EMAIL`.
    async fn field_code(&self) -> Option<&str> {
        self.0.field_code.as_deref()
    }

    /// amoCRM's field type: `text`, `numeric`, `multitext`, `select`, `date`, ...
    async fn field_type(&self) -> Option<&str> {
        self.0.field_type.as_deref()
    }

    async fn values(&self) -> Vec<CustomFieldValueItem<'_>> {
        self.0.values.iter().map(CustomFieldValueItem).collect()
    }
}

/// One value of a custom field.
pub struct CustomFieldValueItem<'a>(&'a model::CustomFieldValueItem);

#[Object]
impl CustomFieldValueItem<'_> {
    /// The value as amoCRM sent it: usually a string, but a number, boolean or object for some
    /// field types.
    async fn value(&self) -> Option<Json<&serde_json::Value>> {
        (!self.0.value.is_null()).then_some(Json(&self.0.value))
    }

    async fn enum_id(&self) -> Option<ID> {
        self.0.enum_id.map(id)
    }

    /// The value's kind for enumerated fields, such as `WORK` or `MOB` for phones.
    async fn enum_code(&self) -> Option<&str> {
        self.0.enum_code.as_deref()
    }
}

pub struct Tag<'a>(&'a model::Tag);

#[Object]
impl Tag<'_> {
    async fn id(&self) -> ID {
        id(self.0.id)
    }

    async fn name(&self) -> &str {
        &self.0.name
    }

    async fn color(&self) -> Option<&str> {
        self.0.color.as_deref()
    }
}

/// Writes the `#[Object]` impl of a linked entity: its `id`, from the link, then one detail
/// field per `field: Type = |entity| value`. A detail field resolves to `value` computed from the
/// loaded entity, or to null when the entity does not load (`Linked::details` reports why, once).
/// The fields' `///` docs become their schema descriptions, as in a hand-written impl; the
/// struct's doc does not, since `#[Object]` reads the impl's (and these types have none in the SDL).
macro_rules! linked_entity_object {
    ($object:ident {
        $( $(#[$attr:meta])* $field:ident: $ty:ty = |$entity:ident| $value:expr ),* $(,)?
    }) => {
        #[Object]
        impl $object {
            async fn id(&self) -> ID {
                self.0.id()
            }

            $(
                $(#[$attr])*
                async fn $field(&self, ctx: &Context<'_>) -> $ty {
                    let $entity = self.0.details(ctx).await?;
                    $value
                }
            )*
        }
    };
}

/// A company linked to a contact.
pub struct Company(Linked);

linked_entity_object!(Company {
    name: Option<&str> = |company| company.name.as_deref(),
    responsible_user_id: Option<ID> = |company| company.responsible_user_id.map(id),
    created_at: Option<DateTime> = |company| date(company.created_at),
    updated_at: Option<DateTime> = |company| date(company.updated_at),
    custom_fields_values: Option<Vec<CustomFieldValue<'_>>> =
        |company| Some(custom_fields(&company.custom_fields_values)),
});

/// A lead (deal) linked to a contact.
pub struct Lead(Linked);

linked_entity_object!(Lead {
    name: Option<&str> = |lead| lead.name.as_deref(),
    /// The deal's price, in the account's currency.
    price: Option<i64> = |lead| lead.price,
    status_id: Option<ID> = |lead| lead.status_id.map(id),
    pipeline_id: Option<ID> = |lead| lead.pipeline_id.map(id),
    responsible_user_id: Option<ID> = |lead| lead.responsible_user_id.map(id),
    created_at: Option<DateTime> = |lead| date(lead.created_at),
    updated_at: Option<DateTime> = |lead| date(lead.updated_at),
    closed_at: Option<DateTime> = |lead| date(lead.closed_at),
    is_deleted: Option<bool> = |lead| Some(lead.is_deleted.unwrap_or(false)),
    custom_fields_values: Option<Vec<CustomFieldValue<'_>>> =
        |lead| Some(custom_fields(&lead.custom_fields_values)),
    /// Closed as won (amoCRM status 142).
    is_won: Option<bool> = |lead| Some(lead.status_id == Some(STATUS_WON)),
    /// Closed as lost (amoCRM status 143).
    is_lost: Option<bool> = |lead| Some(lead.status_id == Some(STATUS_LOST)),
});

/// A customer (periodic purchases) linked to a contact.
pub struct Customer(Linked);

linked_entity_object!(Customer {
    name: Option<&str> = |customer| customer.name.as_deref(),
    /// The expected price of the next purchase.
    next_price: Option<i64> = |customer| customer.next_price,
    /// The expected date of the next purchase.
    next_date: Option<DateTime> = |customer| date(customer.next_date),
    status_id: Option<ID> = |customer| customer.status_id.map(id),
    responsible_user_id: Option<ID> = |customer| customer.responsible_user_id.map(id),
    created_at: Option<DateTime> = |customer| date(customer.created_at),
    updated_at: Option<DateTime> = |customer| date(customer.updated_at),
});

/// A catalog element linked to a contact, with the link's own quantity and price field.
pub struct CatalogElement<'a> {
    link: &'a model::CatalogElementRef,
    element: Linked,
}

#[Object]
impl CatalogElement<'_> {
    async fn id(&self) -> ID {
        id(self.link.id)
    }

    async fn catalog_id(&self) -> ID {
        id(self.link.catalog_id)
    }

    async fn quantity(&self) -> Option<f64> {
        self.link.quantity
    }

    async fn price_id(&self) -> Option<ID> {
        self.link.price_id.map(id)
    }

    async fn metadata(&self) -> Option<Json<&serde_json::Value>> {
        self.link.metadata.as_ref().map(Json)
    }

    /// The element's name, loaded from its catalog.
    async fn name(&self, ctx: &Context<'_>) -> Option<&str> {
        self.element.details(ctx).await?.name.as_deref()
    }
}

/// An amoCRM user.
pub struct User {
    id: u64,
    user: Option<crate::amocrm::User>,
}

#[Object]
impl User {
    async fn id(&self) -> ID {
        id(self.id)
    }

    async fn name(&self) -> Option<&str> {
        self.user.as_ref()?.name.as_deref()
    }

    async fn email(&self) -> Option<&str> {
        self.user.as_ref()?.email.as_deref()
    }
}

/// A window of a contact list (Relay connection).
pub struct ContactConnection {
    pub edges: Vec<ContactEdge>,
    pub page_info: PageInfo,
}

#[Object]
impl ContactConnection {
    async fn edges(&self) -> &[ContactEdge] {
        &self.edges
    }

    /// The contacts of `edges`, without cursors.
    async fn nodes(&self) -> Vec<Contact> {
        self.edges.iter().map(|e| e.node.clone()).collect()
    }

    async fn page_info(&self) -> &PageInfo {
        &self.page_info
    }
}

#[derive(SimpleObject)]
pub struct ContactEdge {
    /// Pass as `after` to continue after this contact.
    pub cursor: String,
    pub node: Contact,
}

#[derive(SimpleObject)]
pub struct PageInfo {
    /// Whether contacts follow this window. Exact at the end of the list; when a window ends on
    /// the last contact of a full upstream page it may be `true` and the next window empty.
    pub has_next_page: bool,
    /// Whether contacts precede this window.
    pub has_previous_page: bool,
    pub start_cursor: Option<String>,
    pub end_cursor: Option<String>,
}
