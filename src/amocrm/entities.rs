//! The entities linked to contacts — leads, customers, companies, catalog elements — and the
//! account's users, loaded by id in batches.
//!
//! One decoded shape serves the four linked kinds: they share most fields, and the GraphQL
//! layer exposes the ones each kind has. Decoding is as tolerant as for contacts.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::AmoError;
use super::model::{self, CustomFieldValue};

/// A kind of linked entity, and where amoCRM lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EntityKind {
    Lead,
    Customer,
    Company,
    /// Catalog elements are listed per catalog.
    CatalogElement {
        catalog_id: u64,
    },
}

impl EntityKind {
    /// The route template, for logs and metrics: never a concrete id.
    pub fn route(self) -> &'static str {
        match self {
            EntityKind::Lead => "/api/v4/leads",
            EntityKind::Customer => "/api/v4/customers",
            EntityKind::Company => "/api/v4/companies",
            EntityKind::CatalogElement { .. } => "/api/v4/catalogs/{catalog_id}/elements",
        }
    }

    pub fn path(self) -> String {
        match self {
            EntityKind::CatalogElement { catalog_id } => {
                format!("/api/v4/catalogs/{catalog_id}/elements")
            }
            other => other.route().to_owned(),
        }
    }

    /// The key of the list under `_embedded`.
    fn embedded_key(self) -> &'static str {
        match self {
            EntityKind::Lead => "leads",
            EntityKind::Customer => "customers",
            EntityKind::Company => "companies",
            EntityKind::CatalogElement { .. } => "elements",
        }
    }

    /// The route template of one entity by id, for logs and metrics.
    pub fn item_route(self) -> &'static str {
        match self {
            EntityKind::Lead => "/api/v4/leads/{id}",
            EntityKind::Customer => "/api/v4/customers/{id}",
            EntityKind::Company => "/api/v4/companies/{id}",
            EntityKind::CatalogElement { .. } => "/api/v4/catalogs/{catalog_id}/elements/{id}",
        }
    }

    pub fn item_path(self, id: u64) -> String {
        format!("{}/{id}", self.path())
    }

    /// The parameters that select `ids`: `filter[id][]`, and for catalog elements also the
    /// top-level `id[]` amoCRM's own client sends (which of the two amoCRM honours there is
    /// undocumented; some accounts honour neither, see `AmoClient::entities`).
    pub(super) fn id_params(self, ids: &[u64]) -> Vec<(String, String)> {
        let keys: &[&str] = match self {
            EntityKind::CatalogElement { .. } => &["id[]", "filter[id][]"],
            _ => &["filter[id][]"],
        };
        keys.iter()
            .flat_map(|key| ids.iter().map(|id| ((*key).to_owned(), id.to_string())))
            .collect()
    }

    /// What a person calls one of these, for error messages.
    pub fn noun(self) -> &'static str {
        match self {
            EntityKind::Lead => "lead",
            EntityKind::Customer => "customer",
            EntityKind::Company => "company",
            EntityKind::CatalogElement { .. } => "catalog element",
        }
    }
}

/// A lead, customer, company or catalog element; fields a kind lacks stay empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RelatedEntity {
    pub id: u64,
    pub name: Option<String>,
    /// Leads: the deal's price in whole units, and (accounts send it since 2026) the exact
    /// price with its fraction.
    pub price: Option<i64>,
    pub price_with_minor_units: Option<f64>,
    /// Customers: the next purchase's price (whole, and exact as for leads) and date.
    pub next_price: Option<i64>,
    pub next_price_with_minor_units: Option<f64>,
    pub next_date: Option<i64>,
    pub status_id: Option<u64>,
    pub pipeline_id: Option<u64>,
    pub responsible_user_id: Option<u64>,
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
    pub closed_at: Option<i64>,
    pub is_deleted: Option<bool>,
    pub custom_fields_values: Vec<CustomFieldValue>,
}

impl RelatedEntity {
    /// What it occupies on the heap, its own allocation included.
    pub fn heap_bytes(&self) -> usize {
        // The struct behind its Arc, and the name, each with the allocator's overhead.
        std::mem::size_of::<Self>()
            + 32
            + self.name.as_ref().map_or(0, |n| n.capacity() + 16)
            + model::custom_fields_heap_bytes(&self.custom_fields_values)
    }
}

/// An account user, as `GET /api/v4/users` lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub name: Option<String>,
    pub email: Option<String>,
}

/// A page of a list, decoded: the items, how many amoCRM sent (readable or not), and whether
/// it linked a next page.
pub struct Listed<T> {
    pub items: Vec<T>,
    pub sent: usize,
    pub has_next_link: bool,
}

fn parse(body: &[u8]) -> Result<Value, AmoError> {
    serde_json::from_slice(body)
        .map_err(|e| AmoError::Decode(format!("the body is not JSON ({e})")))
}

/// Decodes a 200 body of a linked-entity list.
pub fn decode_entities(kind: EntityKind, body: &[u8]) -> Result<Vec<RelatedEntity>, AmoError> {
    let (items, _) = model::hal_list(body, kind.embedded_key())?;
    Ok(items
        .iter()
        .filter_map(|item| decode_entity(&model::json_object(item)?))
        .collect())
}

/// Decodes a 200 body of one entity by id (`GET .../elements/{id}`): the entity itself, not a
/// list. `None` when it carries no usable id.
pub fn decode_one_entity(body: &[u8]) -> Result<Option<RelatedEntity>, AmoError> {
    let body = parse(body)?;
    let entity = body
        .as_object()
        .ok_or_else(|| AmoError::Decode("the body is not a JSON object".to_owned()))?;
    Ok(decode_entity(entity))
}

fn decode_entity(e: &Map<String, Value>) -> Option<RelatedEntity> {
    Some(RelatedEntity {
        id: e.get("id").and_then(model::as_u64)?,
        name: model::opt_string(e, "name"),
        price: model::int(e, "price"),
        price_with_minor_units: e.get("price_with_minor_units").and_then(model::as_f64),
        next_price: model::int(e, "next_price"),
        next_price_with_minor_units: e.get("next_price_with_minor_units").and_then(model::as_f64),
        next_date: model::int(e, "next_date"),
        status_id: e.get("status_id").and_then(model::as_u64),
        pipeline_id: e.get("pipeline_id").and_then(model::as_u64),
        responsible_user_id: e.get("responsible_user_id").and_then(model::as_u64),
        created_at: model::int(e, "created_at"),
        updated_at: model::int(e, "updated_at"),
        closed_at: model::int(e, "closed_at"),
        is_deleted: e.get("is_deleted").and_then(Value::as_bool),
        custom_fields_values: e
            .get("custom_fields_values")
            .and_then(Value::as_array)
            .map(|fields| model::decode_custom_fields(fields))
            .unwrap_or_default(),
    })
}

/// Decodes a 200 body of `GET /api/v4/users`.
pub fn decode_users(body: &[u8]) -> Result<Listed<User>, AmoError> {
    let (items, has_next_link) = model::hal_list(body, "users")?;
    let sent = items.len();
    let items = items
        .iter()
        .filter_map(|item| {
            let u = &model::json_object(item)?;
            Some(User {
                id: u.get("id").and_then(model::as_u64)?,
                name: model::opt_string(u, "name"),
                email: model::opt_string(u, "email"),
            })
        })
        .collect();
    Ok(Listed {
        items,
        sent,
        has_next_link,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_leads_tolerantly() {
        let body = br#"{"_embedded":{"leads":[{"id":1,"name":"Deal","price":"1500","status_id":142,
            "custom_fields_values":null},{"name":"no id"},{"id":2,"price":{"odd":1}}]}}"#;
        let leads = decode_entities(EntityKind::Lead, body).expect("decodes");
        assert_eq!(leads.len(), 2);
        assert_eq!(leads[0].price, Some(1500));
        assert_eq!(leads[0].status_id, Some(142));
        assert_eq!(leads[1].price, None);
    }

    #[test]
    fn catalog_elements_are_selected_by_both_id_parameters() {
        let kind = EntityKind::CatalogElement { catalog_id: 7 };
        assert_eq!(kind.path(), "/api/v4/catalogs/7/elements");
        assert_eq!(kind.item_path(3), "/api/v4/catalogs/7/elements/3");
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(
            kind.id_params(&[3, 4]),
            vec![
                pair("id[]", "3"),
                pair("id[]", "4"),
                pair("filter[id][]", "3"),
                pair("filter[id][]", "4"),
            ]
        );
        assert_eq!(
            EntityKind::Lead.id_params(&[3]),
            vec![pair("filter[id][]", "3")]
        );
    }

    #[test]
    fn leads_keep_the_exact_price_beside_the_whole_one() {
        let body = br#"{"_embedded":{"leads":[
            {"id":2147483653,"price":1500,"price_with_minor_units":1500.75,"labor_cost":null,
             "is_price_computed":false},
            {"id":2,"price":3000000000.0},
            {"id":3,"price":10}]}}"#;
        let leads = decode_entities(EntityKind::Lead, body).expect("decodes");
        assert_eq!(leads[0].id, 2_147_483_653);
        assert_eq!(
            (leads[0].price, leads[0].price_with_minor_units),
            (Some(1500), Some(1500.75))
        );
        assert_eq!(leads[1].price, Some(3_000_000_000), "a float literal");
        assert_eq!(leads[2].price_with_minor_units, None);
        let customers = decode_entities(
            EntityKind::Customer,
            br#"{"_embedded":{"customers":[{"id":1,"next_price":200,"next_price_with_minor_units":200.75}]}}"#,
        )
        .expect("decodes");
        assert_eq!(customers[0].next_price_with_minor_units, Some(200.75));
    }

    #[test]
    fn one_entity_by_id_is_the_body_itself() {
        let element = decode_one_entity(br#"{"id":5,"name":"Item","catalog_id":7}"#)
            .expect("decodes")
            .expect("an id");
        assert_eq!((element.id, element.name.as_deref()), (5, Some("Item")));
        assert_eq!(
            decode_one_entity(br#"{"name":"no id"}"#).expect("decodes"),
            None
        );
        assert!(decode_one_entity(b"[]").is_err());
    }
}
