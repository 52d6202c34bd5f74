//! `POST /api/v4/contacts/{id}/link` and `/unlink`, and their bulk forms `/contacts/link` and
//! `/contacts/unlink` (an `entity_id` per item). Link answers the links it made; unlink answers
//! 204 without a body. Like other writes, one invalid item refuses the whole request, and a
//! link leaves the contact's `updated_at` alone (nothing says amoCRM bumps it).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::admission::{admit_write, answer_write};
use super::data::FakeCatalogLink;
use super::entities::{Kind, LinkedIds};
use super::validation::{
    Errors, FieldError, ItemErrors, batch, join, request_id, validation_problem,
};
use super::{FakeContact, FakeState, Viewer, hal};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Link,
    Unlink,
}

pub(super) async fn link(
    state: State<Arc<FakeState>>,
    id: Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    one_contact(state, id, headers, body, Action::Link).await
}

pub(super) async fn unlink(
    state: State<Arc<FakeState>>,
    id: Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    one_contact(state, id, headers, body, Action::Unlink).await
}

pub(super) async fn bulk_link(
    state: State<Arc<FakeState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    bulk(state, headers, body, Action::Link).await
}

pub(super) async fn bulk_unlink(
    state: State<Arc<FakeState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    bulk(state, headers, body, Action::Unlink).await
}

fn action_path(action: Action) -> &'static str {
    match action {
        Action::Link => "link",
        Action::Unlink => "unlink",
    }
}

async fn one_contact(
    State(state): State<Arc<FakeState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
    action: Action,
) -> Response {
    let path = format!("/api/v4/contacts/{id}/{}", action_path(action));
    let (viewer, body) = match admit_write(&state, "POST", path, &headers, &body).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let Ok(id) = id.parse::<u64>() else {
        return super::problem(StatusCode::NOT_FOUND, "Not Found", "unknown endpoint");
    };
    let items = match batch(body.as_ref()) {
        Ok(items) => items,
        Err(response) => return response,
    };
    let self_href = format!("{}/api/v4/contacts/{id}/links", state.base_url);
    apply(&state, items, Some(id), &viewer, action, self_href).await
}

async fn bulk(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    body: Bytes,
    action: Action,
) -> Response {
    let path = format!("/api/v4/contacts/{}", action_path(action));
    let (viewer, body) = match admit_write(&state, "POST", path.clone(), &headers, &body).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let items = match batch(body.as_ref()) {
        Ok(items) => items,
        Err(response) => return response,
    };
    let self_href = format!("{}{path}", state.base_url);
    apply(&state, items, None, &viewer, action, self_href).await
}

/// A checked link item.
struct LinkWrite {
    contact_id: u64,
    kind: Kind,
    to_entity_id: u64,
    catalog_id: Option<u64>,
    quantity: Option<Value>,
    price_id: Option<u64>,
    is_main: Option<bool>,
}

async fn apply(
    state: &FakeState,
    items: &[Value],
    contact_id: Option<u64>,
    viewer: &Viewer,
    action: Action,
    self_href: String,
) -> Response {
    let links = {
        let mut contacts = state.write_contacts();
        let mut writes = Vec::new();
        let mut invalid = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let mut errors = Errors::default();
            let write = parse(
                item,
                contact_id,
                &contacts,
                viewer,
                &state.linked,
                &mut errors,
            );
            match write {
                Some(write) if errors.is_empty() => writes.push(write),
                _ => invalid.push(ItemErrors {
                    request_id: request_id(item, index).0,
                    errors: errors.0,
                }),
            }
        }
        if !invalid.is_empty() {
            return validation_problem(&invalid);
        }
        let mut links = Vec::new();
        for write in writes {
            if let Some(contact) = contacts.iter_mut().find(|c| c.id == write.contact_id) {
                match action {
                    Action::Link => links.push(write.link(contact)),
                    Action::Unlink => write.unlink(contact),
                }
            }
        }
        links
    };
    let answer = match action {
        Action::Link => hal(json!({
            "_total_items": links.len(),
            "_links": { "self": { "href": self_href } },
            "_embedded": { "links": links },
        })),
        Action::Unlink => StatusCode::NO_CONTENT.into_response(),
    };
    answer_write(state, answer).await
}

fn parse(
    item: &Value,
    contact_id: Option<u64>,
    contacts: &[FakeContact],
    viewer: &Viewer,
    linked: &LinkedIds,
    errors: &mut Errors,
) -> Option<LinkWrite> {
    let Some(object) = item.as_object() else {
        errors.push(FieldError::invalid_type("", "array"));
        return None;
    };
    for key in object.keys() {
        let expected = match key.as_str() {
            "to_entity_id" | "to_entity_type" | "metadata" | "request_id" => true,
            // The official client sends `entity_id`/`entity_type` as null to `/{id}/link`.
            "entity_id" | "entity_type" => true,
            _ => false,
        };
        if !expected {
            errors.push(FieldError::not_expected(key.as_str()));
        }
    }
    if let Some(entity_type) = object.get("entity_type").filter(|v| !v.is_null())
        && entity_type.as_str() != Some("contacts")
    {
        errors.push(FieldError::not_supported_choice("entity_type"));
    }
    let contact_id = match (contact_id, object.get("entity_id").filter(|v| !v.is_null())) {
        (Some(id), _) => Some(id),
        (None, Some(id)) => id.as_u64().or_else(|| {
            errors.push(FieldError::invalid_type("entity_id", "int"));
            None
        }),
        (None, None) => {
            errors.push(FieldError::missing("entity_id"));
            None
        }
    };
    // A contact the token may not see is answered as one that does not exist.
    let contact_id = contact_id.filter(|id| {
        let found = contacts.iter().any(|c| c.id == *id && viewer.sees(c));
        if !found {
            errors.push(FieldError::not_found("entity_id"));
        }
        found
    });
    let kind = match object.get("to_entity_type") {
        Some(Value::String(t)) => match t.as_str() {
            "leads" => Some(Kind::Lead),
            "customers" => Some(Kind::Customer),
            "companies" => Some(Kind::Company),
            "catalog_elements" => Some(Kind::CatalogElement),
            _ => {
                errors.push(FieldError::not_supported_choice("to_entity_type"));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::invalid_type("to_entity_type", "string"));
            None
        }
        None => {
            errors.push(FieldError::missing("to_entity_type"));
            None
        }
    };
    let to_entity_id = match object.get("to_entity_id") {
        Some(id) => id.as_u64().or_else(|| {
            errors.push(FieldError::invalid_type("to_entity_id", "int"));
            None
        }),
        None => {
            errors.push(FieldError::missing("to_entity_id"));
            None
        }
    };
    let metadata = match object.get("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(metadata)) => metadata.clone(),
        Some(_) => {
            errors.push(FieldError::invalid_type("metadata", "array"));
            Map::new()
        }
    };
    let mut write = LinkWrite {
        contact_id: contact_id?,
        kind: kind?,
        to_entity_id: to_entity_id?,
        catalog_id: None,
        quantity: None,
        price_id: None,
        is_main: None,
    };
    for (key, value) in &metadata {
        let path = join("metadata", key);
        match key.as_str() {
            "catalog_id" => write.catalog_id = int(value, &path, errors),
            "price_id" if value.is_null() => {}
            "price_id" => write.price_id = int(value, &path, errors),
            "quantity" if value.is_number() => write.quantity = Some(value.clone()),
            "quantity" => errors.push(FieldError::invalid_type(path, "numeric")),
            "is_main" => match value {
                Value::Bool(main) => write.is_main = Some(*main),
                _ => errors.push(FieldError::invalid_type(path, "bool")),
            },
            "updated_by" => {}
            _ => errors.push(FieldError::not_expected(path)),
        }
    }
    if write.kind == Kind::CatalogElement && write.catalog_id.is_none() {
        errors.push(FieldError::missing("metadata.catalog_id"));
        return None;
    }
    if !linked.exists(write.kind, write.to_entity_id, write.catalog_id) {
        errors.push(FieldError::not_found("to_entity_id"));
        return None;
    }
    Some(write)
}

fn int(value: &Value, path: &str, errors: &mut Errors) -> Option<u64> {
    let id = value.as_u64();
    if id.is_none() {
        errors.push(FieldError::invalid_type(path, "int"));
    }
    id
}

impl LinkWrite {
    /// Links and answers the link as amoCRM reads it back: `is_main` comes back as
    /// `main_contact`, a company link has `metadata: null`.
    fn link(&self, contact: &mut FakeContact) -> Value {
        let id = self.to_entity_id;
        let main_contact = || match self.is_main {
            Some(main) => json!({ "main_contact": main }),
            None => Value::Null,
        };
        let (to_entity_type, metadata) = match self.kind {
            Kind::Lead => {
                if !contact.lead_ids.contains(&id) {
                    contact.lead_ids.push(id);
                }
                ("leads", main_contact())
            }
            Kind::Customer => {
                if !contact.customer_ids.contains(&id) {
                    contact.customer_ids.push(id);
                }
                ("customers", main_contact())
            }
            // A contact belongs to one company at most: linking another moves it.
            Kind::Company => {
                contact.company_id = Some(id);
                ("companies", Value::Null)
            }
            Kind::CatalogElement => {
                let catalog_id = self.catalog_id.unwrap_or_default();
                let quantity = self.quantity.clone().unwrap_or(json!(1));
                let link = FakeCatalogLink {
                    id,
                    catalog_id,
                    quantity: quantity.clone(),
                    price_id: self.price_id,
                };
                match contact.catalog_elements.iter_mut().find(|e| e.id == id) {
                    Some(existing) => *existing = link,
                    None => contact.catalog_elements.push(link),
                }
                let mut metadata = json!({ "quantity": quantity, "catalog_id": catalog_id });
                if let Some(price_id) = self.price_id {
                    metadata["price_id"] = json!(price_id);
                }
                ("catalog_elements", metadata)
            }
        };
        json!({
            "entity_id": contact.id,
            "entity_type": "contacts",
            "to_entity_id": id,
            "to_entity_type": to_entity_type,
            "metadata": metadata,
        })
    }

    fn unlink(&self, contact: &mut FakeContact) {
        let id = self.to_entity_id;
        match self.kind {
            Kind::Lead => contact.lead_ids.retain(|l| *l != id),
            Kind::Customer => contact.customer_ids.retain(|c| *c != id),
            Kind::Company => {
                if contact.company_id == Some(id) {
                    contact.company_id = None;
                }
            }
            Kind::CatalogElement => contact.catalog_elements.retain(|e| e.id != id),
        }
    }
}
