//! `GET /api/v4/contacts` and `GET /api/v4/contacts/{id}`: the parameters amoCRM accepts, the
//! filters, ordering and paging it applies, and the HAL page it answers with.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{FakeContact, FakeState, admit, hal, problem};

pub(super) async fn list_contacts(
    State(state): State<Arc<FakeState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (viewer, query) =
        match admit(&state, "/api/v4/contacts".into(), raw.as_deref(), &headers).await {
            Ok(admitted) => admitted,
            Err(response) => return response,
        };
    let params = match ListParams::parse(&query) {
        Ok(params) => params,
        Err(detail) => return problem(StatusCode::BAD_REQUEST, "Bad Request", &detail),
    };
    let contacts = state.read_contacts();
    let mut matches: Vec<&FakeContact> = contacts
        .iter()
        .filter(|c| viewer.sees(c) && params.matches(c))
        .collect();
    if let Some((field, direction)) = &params.order {
        let key = |c: &&FakeContact| match field.as_str() {
            "updated_at" => (c.updated_at, c.id),
            _ => (c.id as i64, c.id),
        };
        matches.sort_by_key(key);
        if direction == "desc" {
            matches.reverse();
        }
    }
    let start = (params.page - 1).saturating_mul(params.limit);
    let page: Vec<&FakeContact> = matches
        .iter()
        .skip(start)
        .take(params.limit)
        .copied()
        .collect();
    if page.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let href = |page: usize| {
        format!(
            "{}/api/v4/contacts?limit={}&page={page}",
            state.base_url, params.limit
        )
    };
    let mut links = json!({ "self": { "href": href(params.page) } });
    // amoCRM links a next page whenever this one is full, even when nothing follows.
    if page.len() == params.limit {
        links["next"] = json!({ "href": href(params.page + 1) });
    }
    if params.page > 1 {
        links["prev"] = json!({ "href": href(params.page - 1) });
    }
    hal(json!({
        "_page": params.page,
        "_links": links,
        "_embedded": {
            "contacts": page.iter().map(|c| c.to_json(&params.with, &state.base_url)).collect::<Vec<_>>(),
        },
    }))
}

pub(super) async fn contact_by_id(
    State(state): State<Arc<FakeState>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let path = format!("/api/v4/contacts/{id}");
    let (viewer, query) = match admit(&state, path, raw.as_deref(), &headers).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let Ok(id) = id.parse::<u64>() else {
        return problem(StatusCode::NOT_FOUND, "Not Found", "unknown endpoint");
    };
    let with = with_set(&query);
    match state
        .read_contacts()
        .iter()
        .find(|c| c.id == id && viewer.sees(c))
    {
        Some(contact) => hal(contact.to_json(&with, &state.base_url)),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

/// `GET /api/v4/contacts/link`: the segment has a write route of its own now, and is read as
/// the (invalid) contact id it was before, so that reads answer as they did.
pub(super) async fn link_segment(
    state: State<Arc<FakeState>>,
    raw: RawQuery,
    headers: HeaderMap,
) -> Response {
    contact_by_id(state, Path("link".to_owned()), raw, headers).await
}

/// `GET /api/v4/contacts/unlink`, as [`link_segment`].
pub(super) async fn unlink_segment(
    state: State<Arc<FakeState>>,
    raw: RawQuery,
    headers: HeaderMap,
) -> Response {
    contact_by_id(state, Path("unlink".to_owned()), raw, headers).await
}

fn with_set(query: &[(String, String)]) -> HashSet<String> {
    query
        .iter()
        .filter(|(k, _)| k == "with")
        .flat_map(|(_, v)| v.split(','))
        .map(|s| s.trim().to_owned())
        .collect()
}

#[derive(Default)]
struct Range {
    from: Option<i64>,
    to: Option<i64>,
}

impl Range {
    fn contains(&self, value: Option<i64>) -> bool {
        let Some(value) = value else { return false };
        self.from.is_none_or(|f| value >= f) && self.to.is_none_or(|t| value <= t)
    }
}

#[derive(Default)]
struct CustomCondition {
    values: Vec<String>,
    from: Option<String>,
    to: Option<String>,
}

/// The parameters of `GET /api/v4/contacts`, parsed the way amoCRM reads them: `filter[x][]`,
/// `filter[x][0]` and `filter[x]` all give values; `[from]`/`[to]` give ranges.
#[derive(Default)]
struct ListParams {
    with: HashSet<String>,
    page: usize,
    limit: usize,
    search: Option<String>,
    sets: BTreeMap<String, Vec<String>>,
    ranges: BTreeMap<String, Range>,
    custom: BTreeMap<u64, CustomCondition>,
    order: Option<(String, String)>,
}

/// Splits `filter[a][b][]` into `("filter", ["a", "b", ""])`.
fn key_path(key: &str) -> (&str, Vec<&str>) {
    let Some(open) = key.find('[') else {
        return (key, Vec::new());
    };
    let parts = key[open..]
        .split(']')
        .filter_map(|part| part.strip_prefix('['))
        .collect();
    (&key[..open], parts)
}

impl ListParams {
    fn parse(query: &[(String, String)]) -> Result<ListParams, String> {
        let number = |name: &str, value: &str| {
            value
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name} must be a positive integer"))
        };
        let mut params = ListParams {
            with: with_set(query),
            page: 1,
            limit: 50,
            ..ListParams::default()
        };
        for (key, value) in query {
            let (base, path) = key_path(key);
            match (base, path.as_slice()) {
                ("page", []) => params.page = number("page", value)?,
                ("limit", []) => {
                    let limit = number("limit", value)?;
                    params.limit = if limit > 250 { 50 } else { limit };
                }
                ("query", []) => params.search = Some(value.to_lowercase()),
                ("order", [field]) => {
                    if !matches!(*field, "id" | "updated_at")
                        || !matches!(value.as_str(), "asc" | "desc")
                    {
                        return Err(format!("order[{field}]={value} is not supported"));
                    }
                    params.order = Some(((*field).to_owned(), value.clone()));
                }
                ("filter", ["custom_fields_values", field_id, rest @ ..]) => {
                    let field_id = field_id
                        .parse::<u64>()
                        .map_err(|_| format!("bad custom field id {field_id}"))?;
                    let condition = params.custom.entry(field_id).or_default();
                    match rest {
                        ["from"] => condition.from = Some(value.clone()),
                        ["to"] => condition.to = Some(value.clone()),
                        [] | [_] => condition.values.push(value.clone()),
                        _ => return Err(format!("unsupported filter key {key}")),
                    }
                }
                (
                    "filter",
                    [
                        name @ ("created_at" | "updated_at" | "closest_task_at"),
                        bound,
                    ],
                ) => {
                    let seconds = value
                        .parse::<i64>()
                        .map_err(|_| format!("{key} must be Unix seconds"))?;
                    let range = params.ranges.entry((*name).to_owned()).or_default();
                    match *bound {
                        "from" => range.from = Some(seconds),
                        "to" => range.to = Some(seconds),
                        _ => return Err(format!("unsupported filter key {key}")),
                    }
                }
                (
                    "filter",
                    [
                        name
                        @ ("id" | "name" | "responsible_user_id" | "created_by" | "updated_by"),
                        ..,
                    ],
                ) => {
                    if *name != "name" && value.parse::<u64>().is_err() {
                        return Err(format!("{key} must be numeric"));
                    }
                    params
                        .sets
                        .entry((*name).to_owned())
                        .or_default()
                        .push(value.clone());
                }
                ("filter", _) => return Err(format!("unsupported filter key {key}")),
                _ => {}
            }
        }
        Ok(params)
    }

    fn matches(&self, c: &FakeContact) -> bool {
        let in_set = |name: &str, value: String| {
            self.sets
                .get(name)
                .is_none_or(|values| values.contains(&value))
        };
        let in_range = |name: &str, value: Option<i64>| {
            self.ranges
                .get(name)
                .is_none_or(|range| range.contains(value))
        };
        in_set("id", c.id.to_string())
            && in_set("name", c.name.clone())
            && in_set("responsible_user_id", c.responsible_user_id.to_string())
            && in_set("created_by", c.created_by.to_string())
            && in_set("updated_by", c.updated_by.to_string())
            && in_range("created_at", Some(c.created_at))
            && in_range("updated_at", Some(c.updated_at))
            && in_range("closest_task_at", c.closest_task_at)
            && self.search.as_deref().is_none_or(|q| c.matches_search(q))
            && self.custom.iter().all(|(field_id, condition)| {
                let values = c.field_values(*field_id);
                let numeric = |s: &str| s.trim().parse::<f64>().ok();
                values.iter().any(|v| {
                    if !condition.values.is_empty() {
                        return condition.values.contains(v);
                    }
                    let (Some(v), from, to) = (
                        numeric(v),
                        condition.from.as_deref().and_then(numeric),
                        condition.to.as_deref().and_then(numeric),
                    ) else {
                        return false;
                    };
                    from.is_none_or(|f| v >= f) && to.is_none_or(|t| v <= t)
                })
            })
    }
}
