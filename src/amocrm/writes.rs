//! What the gateway writes to amoCRM, typed: contact drafts and changes, custom field values,
//! tags and links, each serialized to amoCRM's exact keys with only what is set (amoCRM refuses
//! keys a field type does not take, even as null, and echoing unchanged data back can fail on a
//! deleted user). Also the decoding of what writes answer, and of the contact field definitions
//! a caller needs to write custom fields.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use super::model::{self, as_u64};
use super::{AmoError, Problem};

/// Items per write request at most: the official client's advice (amoCRM documents no limit
/// for contacts, and enforces 50 where it enforces one).
pub const WRITE_BATCH: usize = 50;

/// A contact to create.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContactDraft {
    pub name: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub responsible_user_id: Option<u64>,
    pub custom_fields: Vec<FieldWrite>,
    /// The whole tag set; sent as `_embedded.tags`.
    pub tags: Option<Vec<TagRef>>,
}

/// A change to an existing contact: only what is set is sent, and so only that changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContactChange {
    pub id: u64,
    pub name: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub responsible_user_id: Option<u64>,
    /// Each replaces that field's values as a whole (for phones: every number to keep).
    pub custom_fields: Vec<FieldWrite>,
    pub tags_to_add: Vec<TagRef>,
    pub tags_to_delete: Vec<TagRef>,
}

/// The values to give one custom field.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldWrite {
    #[serde(flatten)]
    pub field: FieldRef,
    /// `None` clears the field (sent as `"values": null`).
    pub values: Option<Vec<ValueWrite>>,
}

/// A custom field by id, or by its code (`PHONE`, `EMAIL`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum FieldRef {
    #[serde(rename = "field_id")]
    Id(u64),
    #[serde(rename = "field_code")]
    Code(String),
}

/// One value of a custom field. Which keys a field takes depends on its type: enum fields take
/// `enum_id` or `enum_code`, and an `enum_code` sent to any other type is refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ValueWrite {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enum_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enum_code: Option<String>,
}

/// A tag by id, or by name (amoCRM creates a tag it does not know).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum TagRef {
    #[serde(rename = "id")]
    Id(u64),
    #[serde(rename = "name")]
    Name(String),
}

/// What a contact can be linked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkKind {
    Leads,
    Companies,
    Customers,
    CatalogElements,
}

/// One entity to link a contact to (or unlink it from). The metadata applies to catalog
/// elements.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkTarget {
    pub kind: LinkKind,
    pub id: u64,
    pub catalog_id: Option<u64>,
    pub quantity: Option<f64>,
    pub price_id: Option<u64>,
}

impl Serialize for LinkTarget {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Metadata {
            #[serde(skip_serializing_if = "Option::is_none")]
            catalog_id: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            quantity: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            price_id: Option<u64>,
        }
        #[derive(Serialize)]
        struct Wire {
            to_entity_id: u64,
            to_entity_type: LinkKind,
            #[serde(skip_serializing_if = "Option::is_none")]
            metadata: Option<Metadata>,
        }
        let any_metadata =
            self.catalog_id.is_some() || self.quantity.is_some() || self.price_id.is_some();
        Wire {
            to_entity_id: self.id,
            to_entity_type: self.kind,
            metadata: any_metadata.then_some(Metadata {
                catalog_id: self.catalog_id,
                quantity: self.quantity,
                price_id: self.price_id,
            }),
        }
        .serialize(serializer)
    }
}

/// What amoCRM answered for one updated contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdatedContact {
    pub id: u64,
    pub updated_at: i64,
}

/// Why one item of a batched write has no result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// amoCRM refused this item; nothing of it was applied.
    #[error("amoCRM refused the item as invalid: {}", problems_message(.0))]
    Invalid(Vec<Problem>),
    /// Its request failed; the error says whether it may have been applied
    /// ([`AmoError::OutcomeUnknown`]) or surely was not. Shared by the items of one request.
    #[error(transparent)]
    Failed(Arc<AmoError>),
    /// Never sent: an earlier request's outcome was unknown, and sending more while amoCRM's
    /// state is unclear would only add to what has to be checked. Nothing of it was applied.
    #[error(
        "not sent to amoCRM: an earlier part of the same write may or may not have been applied"
    )]
    NotSent,
}

fn problems_message(problems: &[Problem]) -> String {
    let shown: Vec<String> = problems.iter().map(Problem::to_string).collect();
    if shown.is_empty() {
        "no details given".to_owned()
    } else {
        shown.join("; ")
    }
}

/// A custom field of contacts, as `GET /api/v4/contacts/custom_fields` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDefinition {
    pub id: u64,
    pub name: String,
    pub code: Option<String>,
    /// amoCRM's `type` (`text`, `multitext`, `select`, ...); new types keep appearing, so it is
    /// kept as sent.
    pub field_type: String,
    pub sort: Option<i64>,
    /// The choices of enum fields (and the enum codes of `multitext`), empty for other types.
    pub enums: Vec<FieldEnum>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldEnum {
    pub id: u64,
    pub value: String,
    pub sort: i64,
}

#[derive(Serialize)]
struct Embedded<'a> {
    tags: &'a [TagRef],
}

/// A draft as one item of `POST /api/v4/contacts`.
#[derive(Serialize)]
struct DraftItem<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    responsible_user_id: Option<u64>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    custom_fields_values: &'a [FieldWrite],
    #[serde(rename = "_embedded", skip_serializing_if = "Option::is_none")]
    embedded: Option<Embedded<'a>>,
    request_id: String,
}

/// A change as one item of `PATCH /api/v4/contacts`.
#[derive(Serialize)]
struct ChangeItem<'a> {
    id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    responsible_user_id: Option<u64>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    custom_fields_values: &'a [FieldWrite],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tags_to_add: &'a [TagRef],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tags_to_delete: &'a [TagRef],
    request_id: String,
}

/// An item of a batch, with the `request_id` amoCRM echoes back: its index in the batch.
pub(super) trait BatchItem {
    fn to_wire(&self, request_id: usize) -> Value;
}

impl ContactDraft {
    /// The draft as it is sent, without its place in a batch: what an idempotency key binds.
    pub fn as_sent(&self) -> Value {
        self.to_wire(0)
    }
}

impl BatchItem for ContactDraft {
    fn to_wire(&self, request_id: usize) -> Value {
        to_value(&DraftItem {
            name: self.name.as_deref(),
            first_name: self.first_name.as_deref(),
            last_name: self.last_name.as_deref(),
            responsible_user_id: self.responsible_user_id,
            custom_fields_values: &self.custom_fields,
            embedded: self.tags.as_deref().map(|tags| Embedded { tags }),
            request_id: request_id.to_string(),
        })
    }
}

impl BatchItem for ContactChange {
    fn to_wire(&self, request_id: usize) -> Value {
        to_value(&ChangeItem {
            id: self.id,
            name: self.name.as_deref(),
            first_name: self.first_name.as_deref(),
            last_name: self.last_name.as_deref(),
            responsible_user_id: self.responsible_user_id,
            custom_fields_values: &self.custom_fields,
            tags_to_add: &self.tags_to_add,
            tags_to_delete: &self.tags_to_delete,
            request_id: request_id.to_string(),
        })
    }
}

/// Serializing these types cannot fail: every map key is a string. A non-finite float (a
/// quantity of NaN, say) becomes null rather than an error.
fn to_value<T: Serialize>(item: &T) -> Value {
    serde_json::to_value(item).unwrap_or(Value::Null)
}

/// One item of a write's 200 answer: its `request_id` when echoed, and what amoCRM says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Answered {
    pub request_id: Option<String>,
    pub id: u64,
    pub updated_at: Option<i64>,
}

/// The items of a 200 answer of `POST` or `PATCH /api/v4/contacts`; items without an id are
/// skipped.
pub(super) fn decode_written(body: &[u8]) -> Result<Vec<Answered>, AmoError> {
    let (items, _) = model::hal_list(body, "contacts")?;
    Ok(items
        .iter()
        .filter_map(|item| {
            let item = model::json_object(item)?;
            Some(Answered {
                request_id: model::request_id(&item),
                id: item.get("id").and_then(as_u64)?,
                updated_at: model::int(&item, "updated_at"),
            })
        })
        .collect())
}

/// One page of `GET /api/v4/contacts/custom_fields`, and whether it links a next page.
pub(super) fn decode_field_definitions(
    body: &[u8],
) -> Result<(Vec<FieldDefinition>, bool), AmoError> {
    let (items, has_next_link) = model::hal_list(body, "custom_fields")?;
    let fields = items
        .iter()
        .filter_map(|item| {
            let field = model::json_object(item)?;
            Some(FieldDefinition {
                id: field.get("id").and_then(as_u64)?,
                name: model::opt_string(&field, "name").unwrap_or_default(),
                code: model::opt_string(&field, "code"),
                field_type: model::opt_string(&field, "type").unwrap_or_default(),
                sort: model::int(&field, "sort"),
                enums: field
                    .get("enums")
                    .and_then(Value::as_array)
                    .map(|enums| enums.iter().filter_map(decode_enum).collect())
                    .unwrap_or_default(),
            })
        })
        .collect();
    Ok((fields, has_next_link))
}

fn decode_enum(choice: &Value) -> Option<FieldEnum> {
    let choice: &Map<String, Value> = choice.as_object()?;
    Some(FieldEnum {
        id: choice.get("id").and_then(as_u64)?,
        value: match choice.get("value") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        },
        sort: model::int(choice, "sort").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn value(text: &str) -> ValueWrite {
        ValueWrite {
            value: Some(json!(text)),
            ..ValueWrite::default()
        }
    }

    #[test]
    fn a_bare_draft_sends_only_its_request_id() {
        assert_eq!(
            ContactDraft::default().to_wire(0),
            json!({"request_id": "0"})
        );
    }

    #[test]
    fn a_full_draft_uses_amocrm_keys_and_embeds_its_tags() {
        let draft = ContactDraft {
            name: Some("Иван Иванов".to_owned()),
            first_name: Some("Иван".to_owned()),
            last_name: Some("Иванов".to_owned()),
            responsible_user_id: Some(504141),
            custom_fields: vec![
                FieldWrite {
                    field: FieldRef::Code("PHONE".to_owned()),
                    values: Some(vec![
                        ValueWrite {
                            value: Some(json!("+79121234567")),
                            enum_id: Some(48224),
                            enum_code: None,
                        },
                        ValueWrite {
                            value: Some(json!("+74991234567")),
                            enum_id: None,
                            enum_code: Some("HOME".to_owned()),
                        },
                    ]),
                },
                FieldWrite {
                    field: FieldRef::Id(66192),
                    values: Some(vec![ValueWrite {
                        enum_id: Some(17),
                        ..ValueWrite::default()
                    }]),
                },
                FieldWrite {
                    field: FieldRef::Id(3),
                    values: Some(vec![ValueWrite {
                        value: Some(json!(1577836800)),
                        ..ValueWrite::default()
                    }]),
                },
            ],
            tags: Some(vec![TagRef::Id(1), TagRef::Name("vip".to_owned())]),
        };
        assert_eq!(
            draft.to_wire(7),
            json!({
                "name": "Иван Иванов",
                "first_name": "Иван",
                "last_name": "Иванов",
                "responsible_user_id": 504141,
                "custom_fields_values": [
                    {"field_code": "PHONE", "values": [
                        {"value": "+79121234567", "enum_id": 48224},
                        {"value": "+74991234567", "enum_code": "HOME"}
                    ]},
                    {"field_id": 66192, "values": [{"enum_id": 17}]},
                    {"field_id": 3, "values": [{"value": 1577836800}]}
                ],
                "_embedded": {"tags": [{"id": 1}, {"name": "vip"}]},
                "request_id": "7"
            })
        );
    }

    #[test]
    fn an_empty_tag_set_is_sent_but_no_tag_set_is_not() {
        let cleared = ContactDraft {
            tags: Some(Vec::new()),
            ..ContactDraft::default()
        };
        assert_eq!(
            cleared.to_wire(1),
            json!({"_embedded": {"tags": []}, "request_id": "1"})
        );
    }

    #[test]
    fn a_change_sends_its_id_what_changes_and_the_tag_edits() {
        let change = ContactChange {
            id: 3,
            first_name: Some("Иван".to_owned()),
            custom_fields: vec![
                FieldWrite {
                    field: FieldRef::Id(66192),
                    values: Some(vec![value("79999999999")]),
                },
                FieldWrite {
                    field: FieldRef::Code("EMAIL".to_owned()),
                    values: None,
                },
            ],
            tags_to_add: vec![TagRef::Name("vip".to_owned())],
            tags_to_delete: vec![TagRef::Id(145471)],
            ..ContactChange::default()
        };
        assert_eq!(
            change.to_wire(2),
            json!({
                "id": 3,
                "first_name": "Иван",
                "custom_fields_values": [
                    {"field_id": 66192, "values": [{"value": "79999999999"}]},
                    {"field_code": "EMAIL", "values": null}
                ],
                "tags_to_add": [{"name": "vip"}],
                "tags_to_delete": [{"id": 145471}],
                "request_id": "2"
            })
        );
        let bare = ContactChange {
            id: 9,
            ..ContactChange::default()
        };
        assert_eq!(bare.to_wire(0), json!({"id": 9, "request_id": "0"}));
    }

    #[test]
    fn link_targets_send_metadata_only_when_set() {
        let targets = [
            LinkTarget {
                kind: LinkKind::CatalogElements,
                id: 10,
                catalog_id: Some(1026),
                quantity: Some(1.5),
                price_id: None,
            },
            LinkTarget {
                kind: LinkKind::Companies,
                id: 457282,
                catalog_id: None,
                quantity: None,
                price_id: None,
            },
            LinkTarget {
                kind: LinkKind::Leads,
                id: 1,
                catalog_id: None,
                quantity: None,
                price_id: Some(4),
            },
            LinkTarget {
                kind: LinkKind::Customers,
                id: 2,
                catalog_id: None,
                quantity: None,
                price_id: None,
            },
        ];
        assert_eq!(
            serde_json::to_value(targets).expect("serializes"),
            json!([
                {"to_entity_id": 10, "to_entity_type": "catalog_elements",
                 "metadata": {"catalog_id": 1026, "quantity": 1.5}},
                {"to_entity_id": 457282, "to_entity_type": "companies"},
                {"to_entity_id": 1, "to_entity_type": "leads", "metadata": {"price_id": 4}},
                {"to_entity_id": 2, "to_entity_type": "customers"}
            ])
        );
    }

    #[test]
    fn created_and_updated_answers_decode_with_their_request_ids() {
        let created = br#"{"_links":{"self":{"href":"https://example.amocrm.ru/api/v4/contacts"}},
            "_embedded":{"contacts":[
              {"id":40401635,"request_id":"0","is_deleted":false,"is_unsorted":false,
               "_links":{"self":{"href":"https://example.amocrm.ru/api/v4/contacts/40401635"}}},
              {"id":40401636,"request_id":1},
              {"request_id":"2"}]}}"#;
        assert_eq!(
            decode_written(created).expect("decodes"),
            [
                Answered {
                    request_id: Some("0".to_owned()),
                    id: 40401635,
                    updated_at: None
                },
                Answered {
                    request_id: Some("1".to_owned()),
                    id: 40401636,
                    updated_at: None
                },
            ]
        );
        let updated = r#"{"_links":{"self":{"href":"https://example.amocrm.ru/api/v4/contacts"}},
            "_embedded":{"contacts":[{"id":3,"name":"Иван Иванов","updated_at":1590945248,
              "_links":{"self":{"href":"https://example.amocrm.ru/api/v4/contacts/3"}}}]}}"#;
        assert_eq!(
            decode_written(updated.as_bytes()).expect("decodes"),
            [Answered {
                request_id: None,
                id: 3,
                updated_at: Some(1590945248)
            }]
        );
    }

    #[test]
    fn field_definitions_decode_tolerantly() {
        let body = br#"{"_total_items":3,"_page":1,"_page_count":1,
            "_links":{"self":{"href":"https://x.amocrm.ru/api/v4/contacts/custom_fields?limit=250&page=1"},
                      "next":{"href":"https://x.amocrm.ru/api/v4/contacts/custom_fields?limit=250&page=2"}},
            "_embedded":{"custom_fields":[
              {"id":1876814,"name":"Phone","type":"multitext","account_id":30842051,"code":"PHONE",
               "sort":4,"is_api_only":false,
               "enums":[{"id":1297240,"value":"WORK","sort":2},{"id":1297242,"value":"WORKDD","sort":4},{"value":"no id"}],
               "group_id":null,"required_statuses":[],"remind":null,"triggers":[],"currency":null},
              {"id":5,"name":"Notes","type":"textarea","code":null,"sort":510,"enums":null},
              {"name":"no id","type":"text"},
              {"id":"6","type":"org_legal_name"}]}}"#;
        let (fields, has_next) = decode_field_definitions(body).expect("decodes");
        assert!(has_next);
        assert_eq!(
            fields,
            [
                FieldDefinition {
                    id: 1876814,
                    name: "Phone".to_owned(),
                    code: Some("PHONE".to_owned()),
                    field_type: "multitext".to_owned(),
                    sort: Some(4),
                    enums: vec![
                        FieldEnum {
                            id: 1297240,
                            value: "WORK".to_owned(),
                            sort: 2
                        },
                        FieldEnum {
                            id: 1297242,
                            value: "WORKDD".to_owned(),
                            sort: 4
                        },
                    ],
                },
                FieldDefinition {
                    id: 5,
                    name: "Notes".to_owned(),
                    code: None,
                    field_type: "textarea".to_owned(),
                    sort: Some(510),
                    enums: Vec::new(),
                },
                FieldDefinition {
                    id: 6,
                    name: String::new(),
                    code: None,
                    field_type: "org_legal_name".to_owned(),
                    sort: None,
                    enums: Vec::new(),
                },
            ]
        );
    }

    #[test]
    fn write_errors_say_what_happened() {
        let invalid = WriteError::Invalid(vec![Problem {
            code: "NotSupportedChoice".to_owned(),
            path: "custom_fields_values.0.field_id".to_owned(),
            detail: Some("The value you selected is not a valid choice.".to_owned()),
        }]);
        assert_eq!(
            invalid.to_string(),
            "amoCRM refused the item as invalid: custom_fields_values.0.field_id: \
             NotSupportedChoice (The value you selected is not a valid choice.)"
        );
        let unknown = WriteError::Failed(Arc::new(AmoError::OutcomeUnknown {
            cause: Box::new(AmoError::Server { status: 502 }),
        }));
        assert!(
            unknown
                .to_string()
                .contains("may or may not have been applied"),
            "{unknown}"
        );
    }
}
