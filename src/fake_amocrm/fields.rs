//! The account's contact custom fields: their definitions, which the dataset's values follow and
//! every write is validated against, and `GET /api/v4/contacts/custom_fields` that lists them.
//!
//! The ids and enum ids are the ones the dataset was generated with, so a test can name a field
//! or an option by constant and find it both in what the fake answers and in what it accepts.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::data::ACCOUNT_ID;
use super::{FakeState, admit, hal, problem};

pub const PHONE_FIELD_ID: u64 = 300_001;
pub const EMAIL_FIELD_ID: u64 = 300_002;
pub const POSITION_FIELD_ID: u64 = 300_003;
pub const BUDGET_FIELD_ID: u64 = 300_004;
pub const SOURCE_FIELD_ID: u64 = 300_005;
pub const VIP_FIELD_ID: u64 = 300_006;
pub const BIRTHDAY_FIELD_ID: u64 = 300_007;
pub const LEGAL_ENTITY_FIELD_ID: u64 = 300_008;
pub const ADDRESS_FIELD_ID: u64 = 300_009;
pub const MODEL_FIELD_ID: u64 = 300_010;
pub const CONTRACT_FIELD_ID: u64 = 300_011;
pub const LAST_VISIT_FIELD_ID: u64 = 300_012;
pub const UTM_SOURCE_FIELD_ID: u64 = 300_013;
/// A `date` field no generated contact has a value for: only writes fill it.
pub const CONTRACT_DATE_FIELD_ID: u64 = 300_014;

/// One option of an enum field. For phones, e-mails and address parts its `value` is also the
/// `enum_code` values carry (`WORK`, `city`); a select's options have no code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldEnum {
    pub id: u64,
    pub value: &'static str,
    pub sort: u32,
}

const fn option(id: u64, value: &'static str, sort: u32) -> FieldEnum {
    FieldEnum { id, value, sort }
}

/// The dataset's phones use the first four ids; FAX and HOME exist but no contact has them.
pub const PHONE_ENUMS: [FieldEnum; 6] = [
    option(1001, "WORK", 2),
    option(1002, "WORKDD", 4),
    option(1003, "MOB", 6),
    option(1005, "FAX", 8),
    option(1006, "HOME", 10),
    option(1004, "OTHER", 12),
];
pub const EMAIL_ENUMS: [FieldEnum; 3] = [
    option(2001, "WORK", 2),
    option(2002, "PRIV", 4),
    option(2003, "OTHER", 6),
];
pub const SOURCE_ENUMS: [FieldEnum; 3] = [
    option(3001, "Сайт", 1),
    option(3002, "Реклама", 2),
    option(3003, "Звонок", 3),
];
/// A smart address's parts: the ids are fixed by amoCRM, the same in every account.
pub const ADDRESS_ENUMS: [FieldEnum; 6] = [
    option(1, "address_line_1", 1),
    option(2, "address_line_2", 2),
    option(3, "city", 3),
    option(4, "state", 4),
    option(5, "zip", 5),
    option(6, "country", 6),
];

/// A custom field of contacts as `GET /api/v4/contacts/custom_fields` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldDefinition {
    pub id: u64,
    pub name: &'static str,
    pub code: Option<&'static str>,
    /// amoCRM's type name: `multitext`, `select`, `numeric`, `date`, ...
    pub field_type: &'static str,
    pub sort: u32,
    pub is_api_only: bool,
    /// Fields every account has (phone, e-mail, position): they cannot be deleted.
    pub is_predefined: bool,
    /// `None` for types without options (`enums: null`).
    pub enums: Option<&'static [FieldEnum]>,
}

const fn field(
    id: u64,
    name: &'static str,
    code: Option<&'static str>,
    field_type: &'static str,
    sort: u32,
) -> FieldDefinition {
    FieldDefinition {
        id,
        name,
        code,
        field_type,
        sort,
        is_api_only: false,
        is_predefined: false,
        enums: None,
    }
}

/// Every contact custom field of the fake account, in `sort` order.
pub const CONTACT_FIELDS: [FieldDefinition; 14] = [
    FieldDefinition {
        is_predefined: true,
        enums: Some(&PHONE_ENUMS),
        ..field(PHONE_FIELD_ID, "Телефон", Some("PHONE"), "multitext", 4)
    },
    FieldDefinition {
        is_predefined: true,
        enums: Some(&EMAIL_ENUMS),
        ..field(EMAIL_FIELD_ID, "Email", Some("EMAIL"), "multitext", 6)
    },
    FieldDefinition {
        is_predefined: true,
        ..field(POSITION_FIELD_ID, "Должность", Some("POSITION"), "text", 8)
    },
    field(BUDGET_FIELD_ID, "Бюджет", None, "numeric", 10),
    FieldDefinition {
        enums: Some(&SOURCE_ENUMS),
        ..field(SOURCE_FIELD_ID, "Источник", None, "select", 12)
    },
    field(VIP_FIELD_ID, "VIP", None, "checkbox", 14),
    field(BIRTHDAY_FIELD_ID, "День рождения", None, "birthday", 16),
    field(LEGAL_ENTITY_FIELD_ID, "Юр. лицо", None, "legal_entity", 18),
    FieldDefinition {
        enums: Some(&ADDRESS_ENUMS),
        ..field(ADDRESS_FIELD_ID, "Адрес", None, "smart_address", 20)
    },
    field(MODEL_FIELD_ID, "Модель", None, "chained_list", 22),
    field(CONTRACT_FIELD_ID, "Договор", None, "file", 24),
    field(
        LAST_VISIT_FIELD_ID,
        "Последний визит",
        None,
        "date_time",
        26,
    ),
    FieldDefinition {
        is_api_only: true,
        ..field(
            UTM_SOURCE_FIELD_ID,
            "utm_source",
            Some("UTM_SOURCE"),
            "tracking_data",
            28,
        )
    },
    field(CONTRACT_DATE_FIELD_ID, "Дата договора", None, "date", 30),
];

/// The definition of contact field `id`.
pub fn contact_field(id: u64) -> Option<&'static FieldDefinition> {
    CONTACT_FIELDS.iter().find(|f| f.id == id)
}

/// The definition of the contact field whose `code` is this (codes are case-sensitive).
pub fn contact_field_by_code(code: &str) -> Option<&'static FieldDefinition> {
    CONTACT_FIELDS.iter().find(|f| f.code == Some(code))
}

impl FieldDefinition {
    pub fn enum_by_id(&self, id: u64) -> Option<&'static FieldEnum> {
        self.enums?.iter().find(|e| e.id == id)
    }

    /// The option an `enum_code` names. Only types whose options are codes have one.
    pub fn enum_by_code(&self, code: &str) -> Option<&'static FieldEnum> {
        if !self.enum_values_are_codes() {
            return None;
        }
        self.enums?.iter().find(|e| e.value == code)
    }

    pub fn enum_by_value(&self, value: &str) -> Option<&'static FieldEnum> {
        self.enums?.iter().find(|e| e.value == value)
    }

    pub(super) fn enum_values_are_codes(&self) -> bool {
        matches!(self.field_type, "multitext" | "smart_address")
    }

    fn to_json(self, base_url: &str) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "type": self.field_type,
            "account_id": ACCOUNT_ID,
            "code": self.code,
            "sort": self.sort,
            "is_api_only": self.is_api_only,
            "enums": self.enums.map(|enums| enums.iter()
                .map(|e| json!({ "id": e.id, "value": e.value, "sort": e.sort }))
                .collect::<Vec<_>>()),
            "group_id": null,
            "required_statuses": [],
            "is_deletable": !self.is_predefined,
            "is_predefined": self.is_predefined,
            "entity_type": "contacts",
            "remind": null,
            "triggers": [],
            "currency": null,
            "hidden_statuses": [],
            "_links": { "self": {
                "href": format!("{base_url}/api/v4/contacts/custom_fields/{}", self.id) } },
        })
    }
}

const PATH: &str = "/api/v4/contacts/custom_fields";

/// `GET /api/v4/contacts/custom_fields`: pages of definitions; 204 past the last page.
pub(super) async fn list_custom_fields(
    State(state): State<Arc<FakeState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (_, query) = match admit(&state, PATH.into(), raw.as_deref(), &headers).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let (page, limit) = match super::entities::paging(&query) {
        Ok(paging) => paging,
        Err(detail) => return problem(StatusCode::BAD_REQUEST, "Bad Request", &detail),
    };
    let items: Vec<Value> = CONTACT_FIELDS
        .iter()
        .skip((page - 1).saturating_mul(limit))
        .take(limit)
        .map(|f| f.to_json(&state.base_url))
        .collect();
    if items.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let page_count = CONTACT_FIELDS.len().div_ceil(limit);
    let href = |page: usize| json!({ "href": format!("{}{PATH}?limit={limit}&page={page}", state.base_url) });
    let mut links = json!({ "self": href(page), "last": href(page_count) });
    // Unlike contacts, a definitions page links a next one only when there is one (a real
    // account answered 25 of 25 fields without `next`).
    if page < page_count {
        links["next"] = href(page + 1);
    }
    hal(json!({
        "_total_items": CONTACT_FIELDS.len(),
        "_page": page,
        "_page_count": page_count,
        "_links": links,
        "_embedded": { "custom_fields": items },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_amocrm::data::generate;

    /// What the dataset holds is what the definitions promise: a write validated against them
    /// reads back like generated data.
    #[test]
    fn the_dataset_follows_the_definitions() {
        for contact in generate(600) {
            for f in contact.custom_fields.iter().flatten() {
                let def = contact_field(f.id).expect("every field has a definition");
                assert_eq!(
                    (def.name, def.code, def.field_type),
                    (f.name, f.code, f.field_type),
                    "field {}",
                    f.id
                );
                for v in &f.values {
                    if let Some(enum_id) = v.enum_id {
                        let option = def.enum_by_id(enum_id).expect("a defined option");
                        let code = def.enum_values_are_codes().then_some(option.value);
                        assert_eq!(v.enum_code, code, "field {} option {enum_id}", f.id);
                        if def.field_type == "select" {
                            assert_eq!(v.value, json!(option.value));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn ids_and_codes_are_unique() {
        let mut ids: Vec<u64> = CONTACT_FIELDS.iter().map(|f| f.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), CONTACT_FIELDS.len());
        assert!(CONTACT_FIELDS.windows(2).all(|w| w[0].sort < w[1].sort));
    }
}
