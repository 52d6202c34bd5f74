//! Mutation inputs, and their validation against the account's field definitions into the
//! upstream's write models. Every rule broken names the argument in the client's terms
//! (`input[2].customFields[0].values[1].enumCode`); nothing here calls amoCRM.

use async_graphql::{Enum, ID, InputObject, Json, MaybeUndefined};

use super::super::error::ApiError;
use super::super::input::parse_id;
use crate::amocrm::{
    ContactChange, ContactDraft, FieldDefinition, FieldRef, FieldWrite, LinkKind, LinkTarget,
    TagRef, ValueWrite,
};

/// The longest name a contact may be given: amoCRM cuts longer ones.
const MAX_NAME_CHARS: usize = 255;
/// The longest text value of a custom field (amoCRM's textarea holds about this much).
const MAX_TEXT_CHARS: usize = 16_384;
/// Values of one field, tags of one contact, fields of one contact: far above any real form.
const MAX_VALUES: usize = 100;
const MAX_TAGS: usize = 100;
const MAX_FIELDS: usize = 200;

/// A new contact. Every key is optional, as in amoCRM; `tags` is its whole tag set.
#[derive(Debug, Clone, InputObject)]
pub struct ContactCreateInput {
    pub name: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub responsible_user_id: Option<ID>,
    pub custom_fields: Option<Vec<CustomFieldInput>>,
    pub tags: Option<Vec<TagInput>>,
}

/// A change to a contact: only what is given changes.
#[derive(Debug, Clone, InputObject)]
pub struct ContactUpdateInput {
    pub id: ID,
    pub name: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub responsible_user_id: Option<ID>,
    /// The fields to set; a field not named here keeps its values.
    pub custom_fields: Option<Vec<CustomFieldInput>>,
    pub add_tags: Option<Vec<TagInput>>,
    pub remove_tags: Option<Vec<TagInput>>,
}

/// A custom field's new values, the field named by exactly one of `fieldId` and `fieldCode`
/// (see `contactCustomFields`). `values: null` clears the field; a list replaces its values.
#[derive(Debug, Clone, InputObject)]
pub struct CustomFieldInput {
    pub field_id: Option<ID>,
    pub field_code: Option<String>,
    pub values: MaybeUndefined<Vec<CustomFieldValueInput>>,
}

/// One value. `value` is a string for text fields, a number for numeric ones, a boolean for
/// checkboxes and a `DateTime` string for dates; list fields take `enumId` (or an option's text
/// as `value`); phones and e-mails take `value` with an `enumCode` such as `WORK`.
#[derive(Debug, Clone, InputObject)]
pub struct CustomFieldValueInput {
    pub value: Option<Json<serde_json::Value>>,
    pub enum_id: Option<ID>,
    pub enum_code: Option<String>,
}

/// A tag by exactly one of `id` and `name` (a new name creates the tag).
#[derive(Debug, Clone, InputObject)]
pub struct TagInput {
    pub id: Option<ID>,
    pub name: Option<String>,
}

/// What to link a contact to. Catalog elements need `catalogId`, and may carry a `quantity`
/// and a `priceId`.
#[derive(Debug, Clone, InputObject)]
pub struct ContactLinkInput {
    pub kind: LinkKindInput,
    pub id: ID,
    pub catalog_id: Option<ID>,
    pub quantity: Option<f64>,
    pub price_id: Option<ID>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(name = "LinkKind")]
pub enum LinkKindInput {
    Lead,
    Company,
    Customer,
    CatalogElement,
}

/// The definitions a contact's fields are checked against.
pub struct Fields<'a>(pub &'a [FieldDefinition]);

/// An item of a write's `input`, checked into what is sent for it.
pub trait ItemInput {
    type Checked;
    /// Whether it names custom fields, so needs the definitions to be checked.
    fn has_custom_fields(&self) -> bool;
    fn validate(&self, at: &str, fields: &Fields<'_>) -> Result<Self::Checked, ApiError>;
}

/// What creates and updates share: the names, the responsible user and custom fields.
struct Common {
    name: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    responsible_user_id: Option<u64>,
    custom_fields: Vec<FieldWrite>,
}

#[allow(
    clippy::too_many_arguments,
    reason = "the shared keys of two input types"
)]
fn common(
    at: &str,
    given_name: &Option<String>,
    given_first: &Option<String>,
    given_last: &Option<String>,
    responsible: &Option<ID>,
    given_fields: &Option<Vec<CustomFieldInput>>,
    fields: &Fields<'_>,
) -> Result<Common, ApiError> {
    Ok(Common {
        name: name(&format!("{at}.name"), given_name)?,
        first_name: name(&format!("{at}.firstName"), given_first)?,
        last_name: name(&format!("{at}.lastName"), given_last)?,
        responsible_user_id: user(&format!("{at}.responsibleUserId"), responsible)?,
        custom_fields: custom_fields(&format!("{at}.customFields"), given_fields, fields)?,
    })
}

/// [`common`] of an input with the shared keys.
macro_rules! common {
    ($input:expr, $at:expr, $fields:expr) => {
        common(
            $at,
            &$input.name,
            &$input.first_name,
            &$input.last_name,
            &$input.responsible_user_id,
            &$input.custom_fields,
            $fields,
        )
    };
}

impl ItemInput for ContactCreateInput {
    type Checked = ContactDraft;

    fn has_custom_fields(&self) -> bool {
        self.custom_fields.as_ref().is_some_and(|f| !f.is_empty())
    }

    fn validate(&self, at: &str, fields: &Fields<'_>) -> Result<ContactDraft, ApiError> {
        let c = common!(self, at, fields)?;
        Ok(ContactDraft {
            name: c.name,
            first_name: c.first_name,
            last_name: c.last_name,
            responsible_user_id: c.responsible_user_id,
            custom_fields: c.custom_fields,
            tags: self
                .tags
                .as_deref()
                .map(|tags| tag_refs(&format!("{at}.tags"), tags))
                .transpose()?,
        })
    }
}

impl ItemInput for ContactUpdateInput {
    type Checked = ContactChange;

    fn has_custom_fields(&self) -> bool {
        self.custom_fields.as_ref().is_some_and(|f| !f.is_empty())
    }

    fn validate(&self, at: &str, fields: &Fields<'_>) -> Result<ContactChange, ApiError> {
        let id = parse_id(&format!("{at}.id"), &self.id)?;
        let c = common!(self, at, fields)?;
        let tags = |key: &str, given: &Option<Vec<TagInput>>| {
            tag_refs(&format!("{at}.{key}"), given.as_deref().unwrap_or_default())
        };
        Ok(ContactChange {
            id,
            name: c.name,
            first_name: c.first_name,
            last_name: c.last_name,
            responsible_user_id: c.responsible_user_id,
            custom_fields: c.custom_fields,
            tags_to_add: tags("addTags", &self.add_tags)?,
            tags_to_delete: tags("removeTags", &self.remove_tags)?,
        })
    }
}

impl ContactLinkInput {
    pub fn validate(&self, at: &str) -> Result<LinkTarget, ApiError> {
        let id = parse_id(&format!("{at}.id"), &self.id)?;
        let optional_id = |name: &str, id: &Option<ID>| {
            id.as_ref()
                .map(|id| parse_id(&format!("{at}.{name}"), id))
                .transpose()
        };
        let catalog_id = optional_id("catalogId", &self.catalog_id)?;
        let price_id = optional_id("priceId", &self.price_id)?;
        let kind = match self.kind {
            LinkKindInput::Lead => LinkKind::Leads,
            LinkKindInput::Company => LinkKind::Companies,
            LinkKindInput::Customer => LinkKind::Customers,
            LinkKindInput::CatalogElement => LinkKind::CatalogElements,
        };
        let is_element = kind == LinkKind::CatalogElements;
        if is_element && catalog_id.is_none() {
            return Err(ApiError::bad_input(
                format!("{at}.catalogId"),
                "is required for a CATALOG_ELEMENT: amoCRM keeps elements per catalog",
            ));
        }
        for (name, given) in [
            ("catalogId", catalog_id.is_some()),
            ("quantity", self.quantity.is_some()),
            ("priceId", price_id.is_some()),
        ] {
            if given && !is_element {
                return Err(ApiError::bad_input(
                    format!("{at}.{name}"),
                    "applies only to a CATALOG_ELEMENT link",
                ));
            }
        }
        if let Some(quantity) = self.quantity
            && !(quantity.is_finite() && quantity >= 0.0)
        {
            return Err(ApiError::bad_input(
                format!("{at}.quantity"),
                format!("must be a finite number of at least 0, got {quantity}"),
            ));
        }
        Ok(LinkTarget {
            kind,
            id,
            catalog_id,
            quantity: self.quantity,
            price_id,
        })
    }
}

fn name(at: &str, value: &Option<String>) -> Result<Option<String>, ApiError> {
    let Some(value) = value else {
        return Ok(None);
    };
    text(at, value, MAX_NAME_CHARS)?;
    Ok(Some(value.clone()))
}

fn text(at: &str, value: &str, max_chars: usize) -> Result<(), ApiError> {
    if value.chars().count() > max_chars {
        return Err(ApiError::bad_input(
            at,
            format!("must be at most {max_chars} characters"),
        ));
    }
    // Newlines and tabs are text; other control characters only break what shows it.
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ApiError::bad_input(
            at,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn user(at: &str, id: &Option<ID>) -> Result<Option<u64>, ApiError> {
    id.as_ref().map(|id| parse_id(at, id)).transpose()
}

fn tag_refs(at: &str, tags: &[TagInput]) -> Result<Vec<TagRef>, ApiError> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::bad_input(at, format!("at most {MAX_TAGS} tags")));
    }
    tags.iter()
        .enumerate()
        .map(|(i, tag)| {
            let at = format!("{at}[{i}]");
            match (&tag.id, &tag.name) {
                (Some(id), None) => Ok(TagRef::Id(parse_id(&format!("{at}.id"), id)?)),
                (None, Some(name)) if !name.trim().is_empty() => {
                    text(&format!("{at}.name"), name, MAX_NAME_CHARS)?;
                    Ok(TagRef::Name(name.clone()))
                }
                (None, Some(_)) => Err(ApiError::bad_input(
                    format!("{at}.name"),
                    "must not be empty",
                )),
                _ => Err(ApiError::bad_input(
                    at,
                    "give exactly one of `id` and `name`",
                )),
            }
        })
        .collect()
}

fn custom_fields(
    at: &str,
    given: &Option<Vec<CustomFieldInput>>,
    fields: &Fields<'_>,
) -> Result<Vec<FieldWrite>, ApiError> {
    let given = given.as_deref().unwrap_or_default();
    if given.len() > MAX_FIELDS {
        return Err(ApiError::bad_input(
            at,
            format!("at most {MAX_FIELDS} fields"),
        ));
    }
    given
        .iter()
        .enumerate()
        .map(|(i, field)| field.validate(&format!("{at}[{i}]"), fields))
        .collect()
}

impl CustomFieldInput {
    fn validate(&self, at: &str, fields: &Fields<'_>) -> Result<FieldWrite, ApiError> {
        let (definition, field) = match (&self.field_id, &self.field_code) {
            (Some(id), None) => {
                let argument = format!("{at}.fieldId");
                let id = parse_id(&argument, id)?;
                let definition = fields.0.iter().find(|d| d.id == id).ok_or_else(|| {
                    ApiError::bad_input(
                        &argument,
                        format!("the account has no contact field {id} (see contactCustomFields)"),
                    )
                })?;
                (definition, FieldRef::Id(id))
            }
            (None, Some(code)) => {
                let definition = fields
                    .0
                    .iter()
                    .find(|d| d.code.as_deref() == Some(code.as_str()))
                    .ok_or_else(|| {
                        ApiError::bad_input(
                            format!("{at}.fieldCode"),
                            format!(
                                "the account has no contact field with the code {code:?} (see \
                                 contactCustomFields)"
                            ),
                        )
                    })?;
                (definition, FieldRef::Code(code.clone()))
            }
            _ => {
                return Err(ApiError::bad_input(
                    at,
                    "name the field by exactly one of `fieldId` and `fieldCode`",
                ));
            }
        };
        let values = match &self.values {
            MaybeUndefined::Undefined => {
                return Err(ApiError::bad_input(
                    format!("{at}.values"),
                    "is required: a list sets the field's values, null clears the field",
                ));
            }
            MaybeUndefined::Null => None,
            MaybeUndefined::Value(values) => {
                if values.len() > MAX_VALUES {
                    return Err(ApiError::bad_input(
                        format!("{at}.values"),
                        format!("at most {MAX_VALUES} values"),
                    ));
                }
                Some(
                    values
                        .iter()
                        .enumerate()
                        .map(|(j, value)| value.validate(&format!("{at}.values[{j}]"), definition))
                        .collect::<Result<Vec<_>, _>>()?,
                )
            }
        };
        Ok(FieldWrite { field, values })
    }
}

/// How a field type takes its values.
enum Kind {
    Text,
    Number,
    Flag,
    Date,
    /// One of the field's enums, by id or code (`value` may also name one).
    Choice,
    /// A text with an enum code saying which kind it is (phones, e-mails).
    TaggedText,
    /// Types whose values are structured (addresses, legal entities, chained lists...): passed
    /// on as given, for amoCRM to check.
    Other,
}

fn kind_of(field_type: &str) -> Kind {
    match field_type {
        "text" | "textarea" | "url" | "streetaddress" => Kind::Text,
        "numeric" | "price" => Kind::Number,
        "checkbox" => Kind::Flag,
        "date" | "date_time" | "birthday" => Kind::Date,
        "select" | "multiselect" | "radiobutton" | "category" => Kind::Choice,
        "multitext" => Kind::TaggedText,
        _ => Kind::Other,
    }
}

impl CustomFieldValueInput {
    fn validate(&self, at: &str, definition: &FieldDefinition) -> Result<ValueWrite, ApiError> {
        let value = self.value.as_ref().map(|v| &v.0);
        let field_type = definition.field_type.as_str();
        let wrong = |rule: String| ApiError::bad_input(format!("{at}.value"), rule);
        let enum_id = self
            .enum_id
            .as_ref()
            .map(|id| parse_id(&format!("{at}.enumId"), id))
            .transpose()?;
        if let Some(id) = enum_id
            && !definition.enums.iter().any(|e| e.id == id)
        {
            return Err(ApiError::bad_input(
                format!("{at}.enumId"),
                format!("field {} has no enum {id}", definition.id),
            ));
        }
        let kind = kind_of(field_type);
        let has_enums = !definition.enums.is_empty();
        if enum_id.is_some() && !has_enums {
            return Err(ApiError::bad_input(
                format!("{at}.enumId"),
                format!("field {} ({field_type}) has no enums", definition.id),
            ));
        }
        // A select's options have ids, not codes: codes name the kind of a phone or e-mail,
        // or the part of an address.
        if self.enum_code.is_some() && (!has_enums || matches!(kind, Kind::Choice)) {
            return Err(ApiError::bad_input(
                format!("{at}.enumCode"),
                format!(
                    "field {} ({field_type}) takes no enumCode{}",
                    definition.id,
                    if has_enums {
                        ": give enumId, or the option's text as value"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if let Some(code) = &self.enum_code
            && !definition.enums.iter().any(|e| e.value == *code)
        {
            let known: Vec<&str> = definition.enums.iter().map(|e| e.value.as_str()).collect();
            return Err(ApiError::bad_input(
                format!("{at}.enumCode"),
                format!(
                    "field {} has no enum {code:?}; it has {}",
                    definition.id,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }

        let value = match (kind, value) {
            (Kind::Choice, None) if enum_id.is_some() || self.enum_code.is_some() => None,
            (Kind::Choice, Some(serde_json::Value::String(text))) => {
                if !definition.enums.iter().any(|e| e.value == *text) {
                    return Err(wrong(format!(
                        "field {} has no choice {text:?}",
                        definition.id
                    )));
                }
                Some(serde_json::Value::String(text.clone()))
            }
            (Kind::Choice, _) => {
                return Err(wrong(format!(
                    "field {} ({field_type}) takes `enumId`, or an option's text as `value`",
                    definition.id
                )));
            }
            (_, None) => return Err(wrong("is required for this field".to_owned())),
            (Kind::Text | Kind::TaggedText, Some(serde_json::Value::String(text))) => {
                text_value(&format!("{at}.value"), text)?
            }
            (Kind::Text | Kind::TaggedText, Some(_)) => {
                return Err(wrong(format!("must be a string for a {field_type} field")));
            }
            (Kind::Number, Some(serde_json::Value::Number(n))) => {
                Some(serde_json::Value::Number(n.clone()))
            }
            (Kind::Number, Some(serde_json::Value::String(s)))
                if s.trim().parse::<f64>().is_ok_and(f64::is_finite) =>
            {
                Some(serde_json::Value::String(s.trim().to_owned()))
            }
            (Kind::Number, Some(_)) => {
                return Err(wrong(format!("must be a number for a {field_type} field")));
            }
            (Kind::Flag, Some(serde_json::Value::Bool(b))) => Some(serde_json::Value::Bool(*b)),
            (Kind::Flag, Some(_)) => {
                return Err(wrong(
                    "must be true or false for a checkbox field".to_owned(),
                ));
            }
            (Kind::Date, Some(serde_json::Value::String(text))) => {
                let parsed = chrono::DateTime::parse_from_rfc3339(text).map_err(|_| {
                    wrong(format!(
                        "must be a DateTime (RFC 3339, e.g. 2024-05-01T00:00:00Z) for a \
                         {field_type} field, got {text:?}"
                    ))
                })?;
                // amoCRM takes dates as Unix seconds.
                Some(serde_json::Value::from(parsed.timestamp()))
            }
            (Kind::Date, Some(_)) => {
                return Err(wrong(format!(
                    "must be a DateTime string (RFC 3339) for a {field_type} field"
                )));
            }
            (Kind::Other, Some(value)) => Some(value.clone()),
        };
        Ok(ValueWrite {
            value,
            enum_id,
            enum_code: self.enum_code.clone(),
        })
    }
}

fn text_value(at: &str, text: &str) -> Result<Option<serde_json::Value>, ApiError> {
    self::text(at, text, MAX_TEXT_CHARS)?;
    Ok(Some(serde_json::Value::String(text.to_owned())))
}

/// The client's name for a path into what was sent upstream: amoCRM's validation errors name
/// `custom_fields_values.0.values.1.enum_code`; the client sent `customFields[0].values[1].enumCode`.
pub fn client_path(upstream: &str) -> String {
    let mut path = String::new();
    let mut segments = upstream.split('.').peekable();
    while let Some(segment) = segments.next() {
        if segment.parse::<usize>().is_ok() {
            path.push_str(&format!("[{segment}]"));
            continue;
        }
        let name = match segment {
            "_embedded" if segments.peek() == Some(&"tags") => {
                segments.next();
                "tags"
            }
            "custom_fields_values" => "customFields",
            "first_name" => "firstName",
            "last_name" => "lastName",
            "responsible_user_id" => "responsibleUserId",
            "field_id" => "fieldId",
            "field_code" => "fieldCode",
            "enum_id" => "enumId",
            "enum_code" => "enumCode",
            "tags_to_add" => "addTags",
            "tags_to_delete" => "removeTags",
            "to_entity_id" => "id",
            "to_entity_type" => "kind",
            "catalog_id" => "catalogId",
            "price_id" => "priceId",
            other => other,
        };
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(name);
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(id: u64, field_type: &str, enums: &[(u64, &str)]) -> FieldDefinition {
        FieldDefinition {
            id,
            name: format!("field {id}"),
            code: None,
            field_type: field_type.to_owned(),
            sort: None,
            enums: enums
                .iter()
                .map(|&(id, value)| crate::amocrm::FieldEnum {
                    id,
                    value: value.to_owned(),
                    sort: 0,
                })
                .collect(),
        }
    }

    fn value(json: serde_json::Value) -> CustomFieldValueInput {
        CustomFieldValueInput {
            value: Some(Json(json)),
            enum_id: None,
            enum_code: None,
        }
    }

    #[test]
    fn values_are_checked_and_converted_for_their_field_type() {
        let date = definition(1, "date", &[]);
        let sent = value(serde_json::json!("2024-05-01T12:00:00+03:00"))
            .validate("v", &date)
            .expect("a date");
        assert_eq!(
            sent.value,
            Some(serde_json::json!(1_714_554_000)),
            "Unix seconds"
        );
        let refused = value(serde_json::json!("01.05.2024")).validate("v", &date);
        assert!(
            matches!(refused, Err(ApiError::BadInput { argument, .. }) if argument == "v.value")
        );

        let flag = definition(2, "checkbox", &[]);
        assert!(value(serde_json::json!(true)).validate("v", &flag).is_ok());
        assert!(
            value(serde_json::json!("yes"))
                .validate("v", &flag)
                .is_err()
        );

        let number = definition(3, "numeric", &[]);
        assert!(
            value(serde_json::json!(12.5))
                .validate("v", &number)
                .is_ok()
        );
        assert!(
            value(serde_json::json!(" 12 "))
                .validate("v", &number)
                .is_ok()
        );
        assert!(
            value(serde_json::json!("twelve"))
                .validate("v", &number)
                .is_err()
        );

        let select = definition(4, "select", &[(41, "Сайт")]);
        let by_text = value(serde_json::json!("Сайт")).validate("v", &select);
        assert!(by_text.is_ok());
        assert!(
            value(serde_json::json!("Радио"))
                .validate("v", &select)
                .is_err()
        );
        let by_code = CustomFieldValueInput {
            value: None,
            enum_id: None,
            enum_code: Some("Сайт".to_owned()),
        }
        .validate("v", &select);
        assert!(
            matches!(by_code, Err(ApiError::BadInput { argument, .. }) if argument == "v.enumCode"),
            "a select's options have no codes"
        );

        let phone = definition(5, "multitext", &[(51, "WORK")]);
        let work = CustomFieldValueInput {
            value: Some(Json(serde_json::json!("+7 900"))),
            enum_id: None,
            enum_code: Some("WORK".to_owned()),
        };
        assert!(work.validate("v", &phone).is_ok());
        let text = definition(6, "text", &[]);
        let control = value(serde_json::json!("a\u{7}b")).validate("v", &text);
        assert!(control.is_err(), "control characters are refused");
    }

    #[test]
    fn upstream_paths_read_in_the_clients_terms() {
        assert_eq!(
            client_path("custom_fields_values.0.values.1.enum_code"),
            "customFields[0].values[1].enumCode"
        );
        assert_eq!(client_path("_embedded.tags.2.name"), "tags[2].name");
        assert_eq!(client_path("first_name"), "firstName");
        assert_eq!(client_path("tags_to_delete.0.id"), "removeTags[0].id");
    }
}
