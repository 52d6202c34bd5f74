//! The contact object and the small values it carries (custom fields, tags, its responsible
//! user). Its linked entities, loaded in batches, are in [`linked`]; the Relay connection types
//! that page through contacts are in [`connection`].

mod connection;
mod linked;

use std::sync::Arc;

use async_graphql::{Context, ErrorExtensions, ID, Json, Object};

use super::context::RequestContext;
use super::error::ApiError;
use super::scalars::DateTime;
use super::selection::Details;
use crate::amocrm::{EntityKind, model};
use crate::cache::{Answer, Cached};
use linked::{CatalogElement, Company, Customer, Lead, Linked};

pub use connection::{ContactConnection, ContactEdge, PageInfo};

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
                element: match link.kind() {
                    Some(kind) => Linked::new(kind, link.id),
                    None => Linked::unloadable(ApiError::CatalogUnknown { id: link.id }, link.id),
                },
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
            // Over budget, the users list does not load either; the field is null, and the
            // operation's one error says why (every contact reporting it would say nothing new).
            if let Some((why, report)) = upstream.over_budget() {
                return if report { Err(why) } else { Ok(None) };
            }
            match upstream.users().await {
                Answer::Cached(Cached::Users(users)) => users
                    .get(&id)
                    .cloned()
                    .map(|user| {
                        Some(User {
                            id,
                            user: Some(user),
                        })
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
        user.await.map_err(|e| e.extend())
    }
}

fn request<'a>(ctx: &Context<'a>) -> Result<&'a RequestContext, ApiError> {
    ctx.data_opt::<RequestContext>()
        .ok_or(ApiError::Internal("the request carries no RequestContext"))
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
    /// The value exactly as amoCRM sent it: usually a string (numeric fields too, as
    /// `"10000"`), but a number, a boolean (checkbox), Unix seconds (date, date_time,
    /// birthday; negative before 1970) or an object (legal_entity, file, linked_entity, items,
    /// payer, supplier) for some field types. Null when the entry has no `value`, as a chained
    /// list's has not: see `entry`.
    async fn value(&self) -> Option<Json<&serde_json::Value>> {
        (!self.0.value.is_null()).then_some(Json(&self.0.value))
    }

    async fn enum_id(&self) -> Option<ID> {
        self.0.enum_id.map(id)
    }

    /// The value's kind for enumerated fields, such as `WORK` or `MOB` for phones, or the part
    /// of a smart address (`city`, `zip`, ...). amoCRM's `enum_code`, or its legacy `enum`.
    async fn enum_code(&self) -> Option<&str> {
        self.0.enum_code.as_deref()
    }

    /// The entry exactly as amoCRM sent it, every key included: for entries that are more
    /// than `value`, `enumId` and `enumCode`, such as a chained list's
    /// `{"catalog_id": …, "catalog_element_id": …}`, which has no `value`. Null only for an
    /// entry that is JSON null.
    async fn entry(&self) -> Option<Json<std::borrow::Cow<'_, serde_json::Value>>> {
        let entry = self.0.entry();
        (!entry.is_null()).then_some(Json(entry))
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
