//! The entities a contact links to (companies, leads, customers, catalog elements): their ids
//! come with the contact, their details load in batches for the whole operation, and a failed
//! load is reported once per entity while its detail fields resolve to null.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_graphql::{
    Context, ErrorExtensions, ID, Json, Object, PathSegment, Pos, QueryPathSegment,
};
use tokio::sync::OnceCell;

use super::{CustomFieldValue, custom_fields, id, request};
use crate::amocrm::{EntityKind, RelatedEntity, model};
use crate::cache::{Answer, Cached};
use crate::graphql::context::RequestContext;
use crate::graphql::error::ApiError;
use crate::graphql::scalars::DateTime;

/// amoCRM's fixed status ids for closed leads.
const STATUS_WON: u64 = 142;
const STATUS_LOST: u64 = 143;

/// A linked entity: its id comes embedded in the contact, its details are loaded (in batches,
/// see `Upstream::prefetch`) when a field beyond the id is selected.
pub(super) struct Linked {
    /// Where the details load from, or why they cannot.
    source: Result<EntityKind, ApiError>,
    id: u64,
    details: OnceCell<Option<Arc<RelatedEntity>>>,
    reported: AtomicBool,
}

impl Linked {
    pub(super) fn new(kind: EntityKind, id: u64) -> Self {
        Self::from_source(Ok(kind), id)
    }

    /// An entity whose details cannot load: each detail field is null, and `why` is reported
    /// once, as for a failed load.
    pub(super) fn unloadable(why: ApiError, id: u64) -> Self {
        Self::from_source(Err(why), id)
    }

    fn from_source(source: Result<EntityKind, ApiError>, id: u64) -> Self {
        Linked {
            source,
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
                let kind = match &self.source {
                    Ok(kind) => *kind,
                    Err(why) => {
                        self.report(ctx, why.clone());
                        return None;
                    }
                };
                let answer = match request(ctx).and_then(RequestContext::upstream) {
                    Ok(upstream) => {
                        if let Some((why, report)) = upstream.over_budget() {
                            if report {
                                self.report(ctx, why);
                            }
                            return None;
                        }
                        upstream.linked(kind, self.id).await
                    }
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
                                noun: kind.noun(),
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

/// An amount as GraphQL's 32-bit `Int`, or the field error the spec asks for when it does not
/// fit, pointing to the `Float` field that carries it.
fn int(
    value: Option<i64>,
    what: &'static str,
    instead: &'static str,
) -> async_graphql::Result<Option<i32>> {
    value
        .map(|value| {
            i32::try_from(value).map_err(|_| {
                ApiError::BeyondInt {
                    what,
                    value,
                    instead,
                }
                .extend()
            })
        })
        .transpose()
}

/// An exact amount: amoCRM's `…_with_minor_units`, or the whole amount where an account does
/// not send it (exact up to 2^53, far beyond any price).
fn exact(with_minor_units: Option<f64>, whole: Option<i64>) -> Option<f64> {
    with_minor_units.or_else(|| whole.map(|w| w as f64))
}

/// What a detail field resolves to when its entity did not load.
trait Unloaded {
    fn unloaded() -> Self;
}

impl<T> Unloaded for Option<T> {
    fn unloaded() -> Self {
        None
    }
}

impl<T> Unloaded for async_graphql::Result<Option<T>> {
    fn unloaded() -> Self {
        Ok(None)
    }
}

/// Writes the `#[Object]` impl of a linked entity: its `id`, from the link, then one detail
/// field per `field: Type = |entity| value`. A detail field resolves to `value` computed from the
/// loaded entity, or to null when the entity does not load (`Linked::details` reports why, once).
/// The fields' `///` docs become their schema descriptions, as in a hand-written impl. The
/// struct's doc does not: `#[Object]` reads the impl's, and these types have none in the SDL.
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
                    let Some($entity) = self.0.details(ctx).await else {
                        return Unloaded::unloaded();
                    };
                    $value
                }
            )*
        }
    };
}

/// A company linked to a contact.
pub struct Company(pub(super) Linked);

linked_entity_object!(Company {
    name: Option<&str> = |company| company.name.as_deref(),
    responsible_user_id: Option<ID> = |company| company.responsible_user_id.map(id),
    created_at: Option<DateTime> = |company| date(company.created_at),
    updated_at: Option<DateTime> = |company| date(company.updated_at),
    custom_fields_values: Option<Vec<CustomFieldValue<'_>>> =
        |company| Some(custom_fields(&company.custom_fields_values)),
});

/// A lead (deal) linked to a contact.
pub struct Lead(pub(super) Linked);

linked_entity_object!(Lead {
    name: Option<&str> = |lead| lead.name.as_deref(),
    /// The deal's price in whole units of the account's currency. GraphQL's `Int` is 32-bit:
    /// a larger price is null here with an `UPSTREAM_ERROR`; `priceWithMinorUnits` carries
    /// any price.
    price: async_graphql::Result<Option<i32>> =
        |lead| int(lead.price, "the price", "priceWithMinorUnits"),
    /// The exact price, fraction included: amoCRM's `price_with_minor_units`, or `price`
    /// where the account does not send it.
    price_with_minor_units: Option<f64> =
        |lead| exact(lead.price_with_minor_units, lead.price),
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
pub struct Customer(pub(super) Linked);

linked_entity_object!(Customer {
    name: Option<&str> = |customer| customer.name.as_deref(),
    /// The expected price of the next purchase, in whole units; null with an
    /// `UPSTREAM_ERROR` beyond GraphQL's 32-bit `Int` (see `nextPriceWithMinorUnits`).
    next_price: async_graphql::Result<Option<i32>> =
        |customer| int(customer.next_price, "the next price", "nextPriceWithMinorUnits"),
    /// The exact expected price, fraction included: amoCRM's `next_price_with_minor_units`,
    /// or `nextPrice` where the account does not send it.
    next_price_with_minor_units: Option<f64> =
        |customer| exact(customer.next_price_with_minor_units, customer.next_price),
    /// The expected date of the next purchase.
    next_date: Option<DateTime> = |customer| date(customer.next_date),
    status_id: Option<ID> = |customer| customer.status_id.map(id),
    responsible_user_id: Option<ID> = |customer| customer.responsible_user_id.map(id),
    created_at: Option<DateTime> = |customer| date(customer.created_at),
    updated_at: Option<DateTime> = |customer| date(customer.updated_at),
});

/// A catalog element linked to a contact, with the link's own quantity and price field.
pub struct CatalogElement<'a> {
    pub(super) link: &'a model::CatalogElementRef,
    pub(super) element: Linked,
}

#[Object]
impl CatalogElement<'_> {
    async fn id(&self) -> ID {
        id(self.link.id)
    }

    /// The catalog the element belongs to; null when amoCRM's link does not say (then `name`
    /// cannot load either).
    async fn catalog_id(&self) -> Option<ID> {
        self.link.catalog_id.map(id)
    }

    async fn quantity(&self) -> Option<f64> {
        self.link.quantity
    }

    async fn price_id(&self) -> Option<ID> {
        self.link.price_id.map(id)
    }

    /// The link's `metadata` exactly as amoCRM sent it.
    async fn metadata(&self) -> Option<Json<&serde_json::Value>> {
        self.link.metadata.as_ref().map(Json)
    }

    /// The element's name, loaded from its catalog (null with an `UPSTREAM_ERROR` when the
    /// link names no catalog).
    async fn name(&self, ctx: &Context<'_>) -> Option<&str> {
        self.element.details(ctx).await?.name.as_deref()
    }
}
