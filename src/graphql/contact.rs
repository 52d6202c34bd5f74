//! GraphQL objects: thin wrappers over the upstream models, plus the Relay connection types.

use std::sync::Arc;

use async_graphql::{ID, Json, Object, SimpleObject};

use super::scalars::DateTime;
use crate::amocrm::model;

fn id(value: u64) -> ID {
    ID(value.to_string())
}

/// An amoCRM contact.
#[derive(Clone)]
pub struct Contact(pub Arc<model::Contact>);

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
        self.0
            .custom_fields_values
            .iter()
            .map(CustomFieldValue)
            .collect()
    }

    async fn tags(&self) -> Vec<Tag<'_>> {
        self.0.tags.iter().map(Tag).collect()
    }

    /// The company the contact belongs to (amoCRM links at most one).
    async fn companies(&self) -> Vec<Company> {
        self.0
            .companies
            .iter()
            .map(|c| Company { id: c.id })
            .collect()
    }

    /// Leads linked to the contact. Selecting this adds `leads` to the upstream `with`.
    async fn leads(&self) -> Vec<Lead> {
        self.0.leads.iter().map(|l| Lead { id: l.id }).collect()
    }

    /// Customers linked to the contact. Selecting this adds `customers` to the upstream `with`.
    async fn customers(&self) -> Vec<Customer> {
        self.0
            .customers
            .iter()
            .map(|c| Customer { id: c.id })
            .collect()
    }

    /// Catalog elements linked to the contact. Selecting this adds `catalog_elements` to the
    /// upstream `with`.
    async fn catalog_elements(&self) -> Vec<CatalogElement<'_>> {
        self.0.catalog_elements.iter().map(CatalogElement).collect()
    }
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

pub struct Company {
    id: u64,
}

#[Object]
impl Company {
    async fn id(&self) -> ID {
        id(self.id)
    }
}

pub struct Lead {
    id: u64,
}

#[Object]
impl Lead {
    async fn id(&self) -> ID {
        id(self.id)
    }
}

pub struct Customer {
    id: u64,
}

#[Object]
impl Customer {
    async fn id(&self) -> ID {
        id(self.id)
    }
}

/// A catalog element linked to a contact, with the link's own quantity and price field.
pub struct CatalogElement<'a>(&'a model::CatalogElementRef);

#[Object]
impl CatalogElement<'_> {
    async fn id(&self) -> ID {
        id(self.0.id)
    }

    async fn catalog_id(&self) -> ID {
        id(self.0.catalog_id)
    }

    async fn quantity(&self) -> Option<f64> {
        self.0.quantity
    }

    async fn price_id(&self) -> Option<ID> {
        self.0.price_id.map(id)
    }

    async fn metadata(&self) -> Option<Json<&serde_json::Value>> {
        self.0.metadata.as_ref().map(Json)
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
