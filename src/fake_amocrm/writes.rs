//! `POST /api/v4/contacts`, `PATCH /api/v4/contacts` and `PATCH /api/v4/contacts/{id}`: every
//! item is validated against the field definitions before anything is stored, and one invalid
//! item refuses the whole batch (nothing documents partial application, and clients treat a 400
//! as "nothing applied"). Answers carry ids, not contacts, as amoCRM's do.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::admission::{admit_write, answer_write};
use super::data::{FakeField, FakeFieldValue, TagRegistry};
use super::fields::{FieldDefinition, FieldEnum, contact_field, contact_field_by_code};
use super::validation::{
    Errors, FieldError, ItemErrors, bad_request, batch, join, request_id, validation_problem,
};
use super::{FakeContact, FakeState, USERS, Viewer, hal, lock, problem, unix_now};

const CONTACTS_PATH: &str = "/api/v4/contacts";

pub(super) async fn create_contacts(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (viewer, body) =
        match admit_write(&state, "POST", CONTACTS_PATH.into(), &headers, &body).await {
            Ok(admitted) => admitted,
            Err(response) => return response,
        };
    let items = match batch(body.as_ref()) {
        Ok(items) => items,
        Err(response) => return response,
    };
    let created = {
        let mut contacts = state.write_contacts();
        let mut tags = lock(&state.tags);
        let writes = match parse_all(items, Mode::Create, &contacts, &viewer, &tags) {
            Ok(writes) => writes,
            Err(response) => return response,
        };
        let now = unix_now();
        let first_id = contacts.iter().map(|c| c.id).max().unwrap_or(0) + 1;
        let mut created = Vec::new();
        for (id, write) in (first_id..).zip(writes) {
            let responsible = write.responsible_user_id.unwrap_or(viewer.user_id());
            let mut contact = FakeContact::created(id, responsible, viewer.user_id(), now);
            write.apply_to(&mut contact, &mut tags, viewer.user_id(), now);
            created.push(json!({
                "id": contact.id,
                "request_id": write.request_id,
                "is_deleted": false,
                "is_unsorted": false,
                "_links": self_link(&state.base_url, contact.id),
            }));
            contacts.push(contact);
        }
        created
    };
    let answer = hal(json!({
        "_links": { "self": { "href": format!("{}{CONTACTS_PATH}", state.base_url) } },
        "_embedded": { "contacts": created },
    }));
    answer_write(&state, answer).await
}

pub(super) async fn update_contacts(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (viewer, body) =
        match admit_write(&state, "PATCH", CONTACTS_PATH.into(), &headers, &body).await {
            Ok(admitted) => admitted,
            Err(response) => return response,
        };
    let items = match batch(body.as_ref()) {
        Ok(items) => items,
        Err(response) => return response,
    };
    let updated = match update(&state, items, Mode::Update { path_id: None }, &viewer) {
        Ok(updated) => updated,
        Err(response) => return response,
    };
    let answer = hal(json!({
        "_links": { "self": { "href": format!("{}{CONTACTS_PATH}", state.base_url) } },
        "_embedded": { "contacts": updated },
    }));
    answer_write(&state, answer).await
}

pub(super) async fn update_contact(
    State(state): State<Arc<FakeState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("{CONTACTS_PATH}/{id}");
    let (viewer, body) = match admit_write(&state, "PATCH", path, &headers, &body).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let Ok(id) = id.parse::<u64>() else {
        return problem(StatusCode::NOT_FOUND, "Not Found", "unknown endpoint");
    };
    let item = match body {
        Some(item @ Value::Object(_)) => item,
        // Seen: an array sent to one contact's address is refused as a wrong method.
        Some(Value::Array(_)) => {
            return problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed",
                "Send one contact object to /api/v4/contacts/{id}",
            );
        }
        Some(_) => return bad_request("Request body must be an object"),
        None => return bad_request("Request body is not valid JSON"),
    };
    let mut updated = match update(
        &state,
        std::slice::from_ref(&item),
        Mode::Update { path_id: Some(id) },
        &viewer,
    ) {
        Ok(updated) => updated,
        Err(response) => return response,
    };
    answer_write(&state, hal(updated.pop().unwrap_or(Value::Null))).await
}

/// Applies validated updates and answers one `{id, name, updated_at, request_id?, _links}` each.
fn update(
    state: &FakeState,
    items: &[Value],
    mode: Mode,
    viewer: &Viewer,
) -> Result<Vec<Value>, Response> {
    let mut contacts = state.write_contacts();
    let mut tags = lock(&state.tags);
    let writes = parse_all(items, mode, &contacts, viewer, &tags)?;
    let now = unix_now();
    let mut updated = Vec::new();
    for write in writes {
        let Some(contact) = contacts.iter_mut().find(|c| Some(c.id) == write.id) else {
            continue;
        };
        write.apply_to(contact, &mut tags, viewer.user_id(), now);
        let mut answer = Map::new();
        answer.insert("id".into(), json!(contact.id));
        answer.insert("name".into(), json!(contact.name));
        answer.insert("updated_at".into(), json!(contact.updated_at));
        if write.request_id_sent {
            answer.insert("request_id".into(), json!(write.request_id));
        }
        answer.insert("_links".into(), self_link(&state.base_url, contact.id));
        updated.push(Value::Object(answer));
    }
    Ok(updated)
}

fn self_link(base_url: &str, id: u64) -> Value {
    json!({ "self": { "href": format!("{base_url}{CONTACTS_PATH}/{id}") } })
}

#[derive(Clone, Copy)]
enum Mode {
    Create,
    /// `path_id`: the contact addressed by `/contacts/{id}`, whose body needs no `id`.
    Update {
        path_id: Option<u64>,
    },
}

/// Every item's write, or the 400 that lists every invalid item.
fn parse_all(
    items: &[Value],
    mode: Mode,
    contacts: &[FakeContact],
    viewer: &Viewer,
    tags: &TagRegistry,
) -> Result<Vec<ContactWrite>, Response> {
    let mut writes = Vec::new();
    let mut invalid = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let (request_id, request_id_sent) = request_id(item, index);
        let mut errors = Errors::default();
        let write = ContactWrite::parse(item, mode, contacts, viewer, tags, &mut errors);
        if errors.is_empty() {
            writes.push(ContactWrite {
                request_id,
                request_id_sent,
                ..write
            });
        } else {
            invalid.push(ItemErrors {
                request_id,
                errors: errors.0,
            });
        }
    }
    if invalid.is_empty() {
        Ok(writes)
    } else {
        Err(validation_problem(&invalid))
    }
}

enum TagRef {
    Known(u64, String),
    /// A name the account has no tag for: created when the write applies.
    New(String),
}

#[derive(Default)]
struct TagWrite {
    /// `_embedded.tags`: the whole new set, which makes the add and delete lists ignored.
    replace: Option<Vec<TagRef>>,
    add: Vec<TagRef>,
    delete: Vec<TagRef>,
}

/// One item of a write, checked: only what was sent is `Some`.
#[derive(Default)]
struct ContactWrite {
    request_id: String,
    request_id_sent: bool,
    id: Option<u64>,
    name: Option<String>,
    first_name: Option<Option<String>>,
    last_name: Option<Option<String>>,
    responsible_user_id: Option<u64>,
    /// `None` values clear the field.
    fields: Vec<(&'static FieldDefinition, Option<Vec<FakeFieldValue>>)>,
    tags: TagWrite,
}

impl ContactWrite {
    fn parse(
        item: &Value,
        mode: Mode,
        contacts: &[FakeContact],
        viewer: &Viewer,
        tags: &TagRegistry,
        errors: &mut Errors,
    ) -> ContactWrite {
        let mut write = ContactWrite::default();
        let Some(object) = item.as_object() else {
            errors.push(FieldError::invalid_type("", "array"));
            return write;
        };
        for (key, value) in object {
            match (key.as_str(), mode) {
                ("request_id", _) => {}
                ("id", Mode::Update { path_id }) => {
                    write.id = parse_id(value, path_id, contacts, viewer, errors);
                }
                ("name", _) => write.name = string(value, key, errors),
                ("first_name", _) => write.first_name = Some(nullable_string(value, key, errors)),
                ("last_name", _) => write.last_name = Some(nullable_string(value, key, errors)),
                ("responsible_user_id", _) => {
                    write.responsible_user_id = user(value, key, errors);
                }
                ("custom_fields_values", _) => write.fields = parse_fields(value, errors),
                ("tags_to_add", _) => write.tags.add = tag_list(value, key, tags, true, errors),
                ("tags_to_delete", Mode::Update { .. }) => {
                    write.tags.delete = tag_list(value, key, tags, false, errors);
                }
                ("_embedded", _) => match value.as_object() {
                    Some(embedded) => {
                        for (key, value) in embedded {
                            let path = join("_embedded", key);
                            match key.as_str() {
                                "tags" if value.is_null() => {
                                    write.tags.replace = Some(Vec::new());
                                }
                                "tags" => {
                                    write.tags.replace =
                                        Some(tag_list(value, &path, tags, true, errors));
                                }
                                _ => errors.push(FieldError::not_expected(path)),
                            }
                        }
                    }
                    None => errors.push(FieldError::invalid_type(key, "array")),
                },
                // Read-only keys of a fetched contact (`created_at`, `updated_by`, `_links`,
                // `account_id`, ...) are refused: echoing a contact back fails upstream.
                _ => errors.push(FieldError::not_expected(key)),
            }
        }
        if let Mode::Update { path_id } = mode
            && !object.contains_key("id")
        {
            match path_id {
                Some(id) => write.id = parse_id(&json!(id), None, contacts, viewer, errors),
                None => errors.push(FieldError::missing("id")),
            }
        }
        write
    }

    fn apply_to(&self, contact: &mut FakeContact, tags: &mut TagRegistry, user: u64, now: i64) {
        if let Some(first_name) = &self.first_name {
            contact.first_name.clone_from(first_name);
        }
        if let Some(last_name) = &self.last_name {
            contact.last_name.clone_from(last_name);
        }
        match &self.name {
            Some(name) => contact.name.clone_from(name),
            // amoCRM composes the name from the parts when only they are sent.
            None if self.first_name.is_some() || self.last_name.is_some() => {
                contact.name = [&contact.first_name, &contact.last_name]
                    .into_iter()
                    .flatten()
                    .filter(|part| !part.is_empty())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" ");
            }
            None => {}
        }
        if let Some(responsible) = self.responsible_user_id {
            contact.responsible_user_id = responsible;
        }
        for (definition, values) in &self.fields {
            let fields = contact.custom_fields.get_or_insert_default();
            let at = fields.iter().position(|f| f.id == definition.id);
            match (at, values) {
                (Some(at), None) => {
                    fields.remove(at);
                }
                (Some(at), Some(values)) => fields[at].values.clone_from(values),
                (None, Some(values)) => fields.push(FakeField {
                    id: definition.id,
                    name: definition.name,
                    code: definition.code,
                    field_type: definition.field_type,
                    values: values.clone(),
                }),
                (None, None) => {}
            }
        }
        // amoCRM writes `null`, never `[]`, for a contact without fields.
        if contact.custom_fields.as_ref().is_some_and(Vec::is_empty) {
            contact.custom_fields = None;
        }
        let mut resolve = |tag: &TagRef| match tag {
            TagRef::Known(id, name) => (*id, name.clone()),
            TagRef::New(name) => tags.named(name),
        };
        match &self.tags.replace {
            Some(replace) => contact.tags = replace.iter().map(&mut resolve).collect(),
            None => {
                for tag in self.tags.add.iter().map(&mut resolve) {
                    if !contact.tags.iter().any(|(id, _)| *id == tag.0) {
                        contact.tags.push(tag);
                    }
                }
                for tag in self.tags.delete.iter().map(&mut resolve) {
                    contact.tags.retain(|(id, _)| *id != tag.0);
                }
            }
        }
        contact.tags.sort_unstable();
        contact.tags.dedup();
        contact.updated_by = user;
        // Second resolution, as amoCRM's: a change is found by `filter[updated_at][from]=now`.
        contact.updated_at = contact.updated_at.max(now);
        contact.reindex();
    }
}

fn parse_id(
    value: &Value,
    path_id: Option<u64>,
    contacts: &[FakeContact],
    viewer: &Viewer,
    errors: &mut Errors,
) -> Option<u64> {
    let Some(id) = value.as_u64() else {
        errors.push(FieldError::invalid_type("id", "int"));
        return None;
    };
    if path_id.is_some_and(|path_id| path_id != id) {
        errors.push(FieldError::not_supported_choice("id"));
        return None;
    }
    // A contact the token may not see is answered as one that does not exist.
    if !contacts.iter().any(|c| c.id == id && viewer.sees(c)) {
        errors.push(FieldError::not_found("id"));
        return None;
    }
    Some(id)
}

fn string(value: &Value, path: &str, errors: &mut Errors) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        _ => {
            errors.push(FieldError::invalid_type(path, "string"));
            None
        }
    }
}

fn nullable_string(value: &Value, path: &str, errors: &mut Errors) -> Option<String> {
    match value {
        Value::Null => None,
        other => string(other, path, errors),
    }
}

fn user(value: &Value, path: &str, errors: &mut Errors) -> Option<u64> {
    let Some(id) = value.as_u64() else {
        errors.push(FieldError::invalid_type(path, "int"));
        return None;
    };
    if USERS.iter().any(|(user, _)| *user == id) {
        Some(id)
    } else {
        errors.push(FieldError::not_supported_choice(path));
        None
    }
}

/// `[{id} | {name}]`. Unknown ids are refused; unknown names are created when `may_create`.
fn tag_list(
    value: &Value,
    path: &str,
    tags: &TagRegistry,
    may_create: bool,
    errors: &mut Errors,
) -> Vec<TagRef> {
    let Some(items) = value.as_array() else {
        errors.push(FieldError::invalid_type(path, "array"));
        return Vec::new();
    };
    let mut refs = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = join(path, i);
        let Some(object) = item.as_object() else {
            errors.push(FieldError::invalid_type(path, "array"));
            continue;
        };
        for key in object.keys() {
            // `color` comes with tags read from amoCRM and is ignored on write.
            if !matches!(key.as_str(), "id" | "name" | "color") {
                errors.push(FieldError::not_expected(join(&path, key)));
            }
        }
        match (object.get("id"), object.get("name")) {
            (Some(id), _) if !id.is_null() => match id.as_u64() {
                Some(id) => match tags.by_id(id) {
                    Some((id, name)) => refs.push(TagRef::Known(id, name)),
                    None => errors.push(FieldError::not_supported_choice(join(&path, "id"))),
                },
                None => errors.push(FieldError::invalid_type(join(&path, "id"), "int")),
            },
            (_, Some(Value::String(name))) => match tags.by_name(name) {
                Some((id, name)) => refs.push(TagRef::Known(id, name)),
                None if may_create => refs.push(TagRef::New(name.clone())),
                None => errors.push(FieldError::not_supported_choice(join(&path, "name"))),
            },
            (_, Some(_)) => errors.push(FieldError::invalid_type(join(&path, "name"), "string")),
            (_, None) => errors.push(FieldError::missing(join(&path, "id"))),
        }
    }
    refs
}

type FieldWrite = (&'static FieldDefinition, Option<Vec<FakeFieldValue>>);

fn parse_fields(value: &Value, errors: &mut Errors) -> Vec<FieldWrite> {
    let Some(entries) = value.as_array() else {
        errors.push(FieldError::invalid_type("custom_fields_values", "array"));
        return Vec::new();
    };
    entries
        .iter()
        .enumerate()
        .filter_map(|(i, entry)| parse_field(entry, &format!("custom_fields_values.{i}"), errors))
        .collect()
}

fn parse_field(entry: &Value, path: &str, errors: &mut Errors) -> Option<FieldWrite> {
    let Some(object) = entry.as_object() else {
        errors.push(FieldError::invalid_type(path, "array"));
        return None;
    };
    for key in object.keys() {
        // `field_name` and `field_type` come with values read from amoCRM; its own example
        // sends `field_name`.
        if !matches!(
            key.as_str(),
            "field_id" | "field_code" | "field_name" | "field_type" | "values"
        ) {
            errors.push(FieldError::not_expected(join(path, key)));
        }
    }
    // The official client sends both keys, the unused one as null.
    let present = |key: &str| object.get(key).filter(|v| !v.is_null());
    let definition = match (present("field_id"), present("field_code")) {
        (Some(id), code) => {
            let definition = id.as_u64().and_then(contact_field);
            let code_agrees = code.is_none_or(|code| {
                code.as_str()
                    .is_some_and(|code| definition.is_some_and(|d| d.code == Some(code)))
            });
            if definition.is_none() {
                errors.push(FieldError::not_supported_choice(join(path, "field_id")));
            } else if !code_agrees {
                errors.push(FieldError::not_supported_choice(join(path, "field_code")));
            }
            definition.filter(|_| code_agrees)
        }
        (None, Some(code)) => {
            let definition = code.as_str().and_then(contact_field_by_code);
            if definition.is_none() {
                errors.push(FieldError::not_supported_choice(join(path, "field_code")));
            }
            definition
        }
        (None, None) => {
            errors.push(FieldError::missing(join(path, "field_id")));
            None
        }
    }?;
    let values_path = join(path, "values");
    match object.get("values") {
        None => {
            errors.push(FieldError::missing(values_path));
            None
        }
        Some(Value::Null) => Some((definition, None)),
        Some(Value::Array(values)) => {
            let before = errors.0.len();
            let parsed: Vec<FakeFieldValue> = values
                .iter()
                .enumerate()
                .filter_map(|(i, value)| {
                    parse_value(definition, value, &join(&values_path, i), errors)
                })
                .collect();
            (errors.0.len() == before).then(|| (definition, (!parsed.is_empty()).then_some(parsed)))
        }
        Some(_) => {
            errors.push(FieldError::invalid_type(values_path, "array"));
            None
        }
    }
}

/// One entry of `values`, checked against its field's type and stored as amoCRM answers it
/// (numbers as strings, dates as Unix seconds, options with their id and code).
fn parse_value(
    definition: &FieldDefinition,
    entry: &Value,
    path: &str,
    errors: &mut Errors,
) -> Option<FakeFieldValue> {
    let Some(object) = entry.as_object() else {
        errors.push(FieldError::invalid_type(path, "array"));
        return None;
    };
    let before = errors.0.len();
    let chained = definition.field_type == "chained_list";
    for key in object.keys() {
        let expected = match key.as_str() {
            "value" => !chained,
            "enum_id" | "enum_code" => definition.enums.is_some(),
            "catalog_id" | "catalog_element_id" => chained,
            _ => false,
        };
        if !expected {
            errors.push(FieldError::not_expected(join(path, key)));
        }
    }
    if chained {
        let mut id = |key: &str| match object.get(key) {
            Some(v) if v.is_u64() => v.as_u64(),
            Some(_) => {
                errors.push(FieldError::invalid_type(join(path, key), "int"));
                None
            }
            None => {
                errors.push(FieldError::missing(join(path, key)));
                None
            }
        };
        let (catalog_id, element_id) = (id("catalog_id"), id("catalog_element_id"));
        return Some(FakeFieldValue {
            entry: Some(json!({ "catalog_id": catalog_id?, "catalog_element_id": element_id? })),
            ..FakeFieldValue::plain(Value::Null)
        })
        .filter(|_| errors.0.len() == before);
    }
    let choice_sent = ["enum_id", "enum_code"]
        .iter()
        .any(|key| object.get(*key).is_some_and(|v| !v.is_null()));
    // An option on a type without options was refused above as not expected.
    let option = definition
        .enums
        .and_then(|_| chosen_option(definition, object, path, errors));
    let value = object.get("value");
    let value_path = join(path, "value");
    let stored = match definition.field_type {
        "select" | "radiobutton" | "multiselect" => {
            let option = match (option, value) {
                (Some(option), _) => Some(option),
                // The option sent was refused already.
                (None, _) if choice_sent => None,
                (None, Some(Value::String(label))) => {
                    let option = definition.enum_by_value(label);
                    if option.is_none() {
                        errors.push(FieldError::not_supported_choice(value_path));
                    }
                    option
                }
                (None, Some(_)) => {
                    errors.push(FieldError::invalid_type(value_path, "string"));
                    None
                }
                (None, None) => {
                    errors.push(FieldError::missing(value_path));
                    None
                }
            }?;
            FakeFieldValue {
                enum_id: Some(option.id),
                ..FakeFieldValue::plain(json!(option.value))
            }
        }
        "multitext" | "smart_address" => {
            let text = required(value, &value_path, errors)
                .and_then(|v| string(v, &value_path, errors))?;
            // Without a choice amoCRM files a phone or an e-mail under the first option.
            let option = option.or_else(|| definition.enums.and_then(|enums| enums.first()))?;
            FakeFieldValue {
                enum_id: Some(option.id),
                enum_code: Some(option.value),
                ..FakeFieldValue::plain(json!(text))
            }
        }
        "numeric" | "monetary" | "price" => {
            let number = match required(value, &value_path, errors)? {
                Value::Number(n) => Some(n.to_string()),
                Value::String(s) if s.trim().parse::<f64>().is_ok() => Some(s.clone()),
                _ => None,
            };
            if number.is_none() {
                errors.push(FieldError::invalid_type(value_path, "numeric"));
            }
            FakeFieldValue::plain(json!(number?))
        }
        "checkbox" => match required(value, &value_path, errors)? {
            Value::Bool(checked) => FakeFieldValue::plain(json!(checked)),
            _ => {
                errors.push(FieldError::invalid_type(value_path, "bool"));
                return None;
            }
        },
        "date" | "date_time" | "birthday" => {
            let seconds = match required(value, &value_path, errors)? {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
                    .ok()
                    .map(|t| t.timestamp()),
                _ => None,
            };
            if seconds.is_none() {
                errors.push(FieldError::invalid_type(value_path, "int"));
            }
            FakeFieldValue::plain(json!(seconds?))
        }
        "legal_entity" | "file" => {
            let required_key = if definition.field_type == "file" {
                "file_uuid"
            } else {
                "name"
            };
            let object = required(value, &value_path, errors)?;
            match object.get(required_key) {
                _ if !object.is_object() => {
                    errors.push(FieldError::invalid_type(value_path, "array"));
                }
                Some(Value::String(_)) => {}
                Some(_) => {
                    errors.push(FieldError::invalid_type(
                        join(&value_path, required_key),
                        "string",
                    ));
                }
                None => errors.push(FieldError::missing(join(&value_path, required_key))),
            }
            FakeFieldValue::plain(object.clone())
        }
        // text, textarea, url, streetaddress, tracking_data
        _ => {
            let text = required(value, &value_path, errors)
                .and_then(|v| string(v, &value_path, errors))?;
            FakeFieldValue::plain(json!(text))
        }
    };
    (errors.0.len() == before).then_some(stored)
}

fn required<'a>(value: Option<&'a Value>, path: &str, errors: &mut Errors) -> Option<&'a Value> {
    if value.is_none() {
        errors.push(FieldError::missing(path));
    }
    value
}

/// The option named by `enum_id` and/or `enum_code` (which must agree), if either was sent.
fn chosen_option(
    definition: &FieldDefinition,
    object: &Map<String, Value>,
    path: &str,
    errors: &mut Errors,
) -> Option<&'static FieldEnum> {
    let mut chosen = None;
    if let Some(id) = object.get("enum_id").filter(|v| !v.is_null()) {
        let id_path = join(path, "enum_id");
        match id.as_u64() {
            Some(id) => match definition.enum_by_id(id) {
                Some(option) => chosen = Some(option),
                None => errors.push(FieldError::not_supported_choice(id_path)),
            },
            None => errors.push(FieldError::invalid_type(id_path, "int")),
        }
    }
    if let Some(code) = object.get("enum_code").filter(|v| !v.is_null()) {
        let code_path = join(path, "enum_code");
        match code.as_str() {
            Some(code) => match definition.enum_by_code(code) {
                Some(option) if chosen.is_none_or(|c: &FieldEnum| c.id == option.id) => {
                    chosen = Some(option);
                }
                _ => errors.push(FieldError::not_supported_choice(code_path)),
            },
            None => errors.push(FieldError::invalid_type(code_path, "string")),
        }
    }
    chosen
}
