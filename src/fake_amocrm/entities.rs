//! The fake's linked entities and users: `GET /api/v4/leads`, `/customers`, `/companies`,
//! `/catalogs/{id}/elements` by id (or, as some accounts do, ignoring the ids: see
//! [`super::FakeAmoCrm::ignore_catalog_element_ids`]), one element by
//! `/catalogs/{id}/elements/{id}`, and `/users` (403 for the non-admin token).
//!
//! Entities exist for the ids the contacts link to, with attributes derived from the id; a few
//! linked leads are "deleted" (never returned), as happens in real accounts.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::data::{ACCOUNT_ID, FakeContact, USERS};
use super::{FakeState, Viewer, admit, hal, problem};

/// Linked leads whose id is a multiple of this are deleted: amoCRM no longer returns them.
pub const DELETED_LEAD_EVERY: u64 = 41;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Lead,
    Customer,
    Company,
    CatalogElement,
}

/// The ids that exist, per kind, from what the contacts link to.
#[derive(Debug, Default)]
pub struct LinkedIds {
    leads: BTreeSet<u64>,
    customers: BTreeSet<u64>,
    companies: BTreeSet<u64>,
    /// Element id -> its catalog.
    elements: HashMap<u64, u64>,
}

impl LinkedIds {
    pub fn of(contacts: &[FakeContact]) -> Self {
        let mut ids = LinkedIds::default();
        for c in contacts {
            ids.leads
                .extend(c.lead_ids.iter().filter(|id| *id % DELETED_LEAD_EVERY != 0));
            ids.customers.extend(&c.customer_ids);
            ids.companies.extend(c.company_id);
            ids.elements
                .extend(c.catalog_elements.iter().map(|e| (e.id, e.catalog_id)));
        }
        ids
    }

    pub(super) fn exists(&self, kind: Kind, id: u64, catalog_id: Option<u64>) -> bool {
        match kind {
            Kind::Lead => self.leads.contains(&id),
            Kind::Customer => self.customers.contains(&id),
            Kind::Company => self.companies.contains(&id),
            Kind::CatalogElement => self.elements.get(&id).copied() == catalog_id,
        }
    }

    fn all(&self, kind: Kind, catalog_id: Option<u64>) -> Vec<u64> {
        match kind {
            Kind::Lead => self.leads.iter().copied().collect(),
            Kind::Customer => self.customers.iter().copied().collect(),
            Kind::Company => self.companies.iter().copied().collect(),
            Kind::CatalogElement => {
                let mut ids: Vec<u64> = self
                    .elements
                    .iter()
                    .filter(|(_, catalog)| Some(**catalog) == catalog_id)
                    .map(|(id, _)| *id)
                    .collect();
                ids.sort_unstable();
                ids
            }
        }
    }
}

fn user_of(id: u64) -> u64 {
    USERS[(id % USERS.len() as u64) as usize].0
}

fn entity_json(kind: Kind, id: u64, catalog_id: Option<u64>, base_url: &str) -> Value {
    let created_at = 1_600_000_000 + (id % 1_000_000) as i64;
    match kind {
        Kind::Lead => {
            let status_id = match id % 10 {
                0 => 142,
                1 => 143,
                n => 40_000_000 + n,
            };
            let price = (id % 100) * 1_000;
            json!({
                "id": id, "name": format!("Сделка №{id}"), "price": price,
                // The exact price beside the whole one, as accounts send it since 2026.
                "price_with_minor_units": price as f64 + ((id * 37) % 100) as f64 / 100.0,
                "labor_cost": null, "is_price_computed": false,
                "responsible_user_id": user_of(id), "group_id": 0, "status_id": status_id,
                "pipeline_id": 3_000_000 + id % 3, "loss_reason_id": null,
                "created_by": user_of(id + 1), "updated_by": user_of(id + 2),
                "created_at": created_at, "updated_at": created_at + 3_600,
                "closed_at": if status_id < 200 { json!(created_at + 86_400) } else { Value::Null },
                "closest_task_at": null, "is_deleted": false, "custom_fields_values": null,
                "score": null, "account_id": ACCOUNT_ID,
                "_links": { "self": { "href": format!("{base_url}/api/v4/leads/{id}") } },
                "_embedded": { "tags": [], "companies": [] },
            })
        }
        Kind::Customer => json!({
            "id": id, "name": format!("Покупатель №{id}"), "next_price": (id % 50) * 500,
            "next_price_with_minor_units": ((id % 50) * 500) as f64 + 0.5,
            "next_date": created_at + 30 * 86_400, "responsible_user_id": user_of(id),
            "status_id": 50_000 + id % 4, "periodicity": 30, "created_by": user_of(id),
            "updated_by": user_of(id), "created_at": created_at, "updated_at": created_at + 600,
            "closest_task_at": null, "is_deleted": false, "custom_fields_values": null,
            "ltv": 12_000, "purchases_count": 3, "average_check": 4_000, "account_id": ACCOUNT_ID,
            "_links": { "self": { "href": format!("{base_url}/api/v4/customers/{id}") } },
            "_embedded": { "segments": [], "tags": [] },
        }),
        Kind::Company => json!({
            "id": id, "name": format!("ООО «Компания {id}»"), "responsible_user_id": user_of(id),
            "group_id": 0, "created_by": user_of(id), "updated_by": user_of(id),
            "created_at": created_at, "updated_at": created_at + 7_200, "closest_task_at": null,
            "custom_fields_values": [{ "field_id": 400_001, "field_name": "ИНН", "field_code": null,
                "field_type": "text", "values": [{ "value": format!("77{:08}", id % 100_000_000) }] }],
            "is_deleted": false, "account_id": ACCOUNT_ID,
            "_links": { "self": { "href": format!("{base_url}/api/v4/companies/{id}") } },
            "_embedded": { "tags": [] },
        }),
        Kind::CatalogElement => json!({
            "id": id, "name": format!("Товар №{id}"), "created_by": user_of(id),
            "updated_by": user_of(id), "created_at": created_at, "updated_at": created_at,
            "is_deleted": false, "custom_fields_values": null, "catalog_id": catalog_id,
            "account_id": ACCOUNT_ID,
        }),
    }
}

/// Ids from `filter[id][]`, `filter[id][N]`, `filter[id]`, and the top-level `id[]`/`id`.
fn requested_ids(query: &[(String, String)]) -> Result<Option<Vec<u64>>, String> {
    let mut ids = Vec::new();
    let mut filtered = false;
    for (key, value) in query {
        let is_id = key == "id"
            || key.starts_with("id[")
            || key == "filter[id]"
            || key.starts_with("filter[id][");
        if is_id {
            filtered = true;
            ids.push(
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{key} must be numeric"))?,
            );
        }
    }
    Ok(filtered.then_some(ids))
}

/// `page` and `limit` as amoCRM reads them (a limit over 250 falls back to 50).
pub(super) fn paging(query: &[(String, String)]) -> Result<(usize, usize), String> {
    let get = |name: &str, default: usize| -> Result<usize, String> {
        match query.iter().find(|(k, _)| k == name) {
            None => Ok(default),
            Some((_, v)) => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name} must be a positive integer")),
        }
    };
    let limit = get("limit", 50)?;
    Ok((get("page", 1)?, if limit > 250 { 50 } else { limit }))
}

async fn list(
    state: Arc<FakeState>,
    path: String,
    raw: Option<String>,
    headers: HeaderMap,
    kind: Kind,
    catalog_id: Option<u64>,
) -> Response {
    let (_, query) = match admit(&state, path, raw.as_deref(), &headers).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let (ids, (page, limit)) = match (requested_ids(&query), paging(&query)) {
        (Ok(ids), Ok(paging)) => (ids, paging),
        (Err(detail), _) | (_, Err(detail)) => {
            return problem(StatusCode::BAD_REQUEST, "Bad Request", &detail);
        }
    };
    let ids = ids.filter(|_| {
        !(kind == Kind::CatalogElement && state.ignore_catalog_element_ids.load(Ordering::Relaxed))
    });
    let linked = &state.linked;
    let mut found: Vec<u64> = match ids {
        Some(ids) => ids
            .into_iter()
            .filter(|id| linked.exists(kind, *id, catalog_id))
            .collect(),
        None => linked.all(kind, catalog_id),
    };
    found.sort_unstable();
    found.dedup();
    let items: Vec<Value> = found
        .iter()
        .skip((page - 1).saturating_mul(limit))
        .take(limit)
        .map(|id| entity_json(kind, *id, catalog_id, &state.base_url))
        .collect();
    if items.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let key = match kind {
        Kind::Lead => "leads",
        Kind::Customer => "customers",
        Kind::Company => "companies",
        Kind::CatalogElement => "elements",
    };
    let mut links = json!({ "self": { "href": format!("{}{}", state.base_url, key) } });
    if items.len() == limit {
        links["next"] = json!({ "href": format!("{}?page={}", key, page + 1) });
    }
    hal(json!({ "_page": page, "_links": links, "_embedded": { key: items } }))
}

pub(super) async fn leads(
    State(state): State<Arc<FakeState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    list(
        state,
        "/api/v4/leads".into(),
        raw,
        headers,
        Kind::Lead,
        None,
    )
    .await
}

pub(super) async fn customers(
    State(state): State<Arc<FakeState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    list(
        state,
        "/api/v4/customers".into(),
        raw,
        headers,
        Kind::Customer,
        None,
    )
    .await
}

pub(super) async fn companies(
    State(state): State<Arc<FakeState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    list(
        state,
        "/api/v4/companies".into(),
        raw,
        headers,
        Kind::Company,
        None,
    )
    .await
}

pub(super) async fn catalog_elements(
    State(state): State<Arc<FakeState>>,
    Path(catalog_id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let path = format!("/api/v4/catalogs/{catalog_id}/elements");
    let Ok(catalog_id) = catalog_id.parse::<u64>() else {
        return problem(StatusCode::NOT_FOUND, "Not Found", "unknown catalog");
    };
    list(
        state,
        path,
        raw,
        headers,
        Kind::CatalogElement,
        Some(catalog_id),
    )
    .await
}

/// One catalog element by id; 204 when the catalog holds none with that id.
pub(super) async fn catalog_element(
    State(state): State<Arc<FakeState>>,
    Path((catalog_id, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let path = format!("/api/v4/catalogs/{catalog_id}/elements/{id}");
    if let Err(response) = admit(&state, path, raw.as_deref(), &headers).await {
        return response;
    }
    let (Ok(catalog_id), Ok(id)) = (catalog_id.parse::<u64>(), id.parse::<u64>()) else {
        return problem(StatusCode::NOT_FOUND, "Not Found", "unknown endpoint");
    };
    if !state
        .linked
        .exists(Kind::CatalogElement, id, Some(catalog_id))
    {
        return StatusCode::NO_CONTENT.into_response();
    }
    hal(entity_json(
        Kind::CatalogElement,
        id,
        Some(catalog_id),
        &state.base_url,
    ))
}

/// The account's users; only admins may list them.
pub(super) async fn users(
    State(state): State<Arc<FakeState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (viewer, query) =
        match admit(&state, "/api/v4/users".into(), raw.as_deref(), &headers).await {
            Ok(admitted) => admitted,
            Err(response) => return response,
        };
    if !matches!(viewer, Viewer::Admin) {
        return problem(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Access denied: only administrators may list users",
        );
    }
    let (page, limit) = match paging(&query) {
        Ok(paging) => paging,
        Err(detail) => return problem(StatusCode::BAD_REQUEST, "Bad Request", &detail),
    };
    let users: Vec<Value> = USERS
        .iter()
        .skip((page - 1).saturating_mul(limit))
        .take(limit)
        .map(|(id, name)| {
            json!({ "id": id, "name": name, "email": format!("user{id}@example.ru"), "lang": "ru",
                    "rights": { "is_admin": *id == USERS[0].0, "is_active": true, "group_id": null } })
        })
        .collect();
    if users.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    hal(json!({ "_page": page, "_links": {}, "_embedded": { "users": users } }))
}
