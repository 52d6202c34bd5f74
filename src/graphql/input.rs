//! Input types of `contacts`, and their validation into the upstream's typed [`ContactList`].
//! Every rule broken names the argument; nothing here calls amoCRM.

use std::collections::{BTreeMap, BTreeSet};

use async_graphql::{Enum, ID, InputObject};

use super::error::ApiError;
use super::scalars::DateTime;
use crate::amocrm::{
    ContactFilter, ContactId, ContactList, CustomFieldCondition, Direction, MAX_FILTER_IDS,
    MAX_LIST_PARAM_BYTES, Order, OrderField, TimeRange,
};

/// The longest search text passed on; longer input is a mistake, not a search.
const MAX_SEARCH_CHARS: usize = 1000;
/// The longest name or custom-field value in a filter: longer than any field amoCRM shows,
/// and short enough that a full list of them cannot make the URL fail (`MAX_LIST_PARAM_BYTES`
/// still bounds the whole).
const MAX_FILTER_STRING_CHARS: usize = 256;

/// Which contacts to list. All conditions must hold; a list condition matches any of its values.
#[derive(Debug, Default, InputObject)]
#[graphql(name = "ContactFilter")]
pub struct ContactFilterInput {
    /// Search over the contact's filled fields (amoCRM's `query`).
    pub query: Option<String>,
    /// Contacts with these ids (at most 250).
    pub ids: Option<Vec<ID>>,
    /// Contacts with exactly these names.
    pub names: Option<Vec<String>>,
    /// Contacts whose responsible user is one of these.
    pub responsible_user_ids: Option<Vec<ID>>,
    /// Contacts created by one of these users.
    pub created_by: Option<Vec<ID>>,
    /// Contacts last changed by one of these users.
    pub updated_by: Option<Vec<ID>>,
    pub created_at: Option<DateTimeRange>,
    pub updated_at: Option<DateTimeRange>,
    /// The date of the contact's nearest open task.
    pub closest_task_at: Option<DateTimeRange>,
    /// Conditions on custom fields (a paid per-account option in amoCRM; where it is off,
    /// amoCRM may ignore these).
    pub custom_fields: Option<Vec<CustomFieldFilter>>,
}

/// An inclusive range; give at least one end.
#[derive(Debug, Default, InputObject)]
pub struct DateTimeRange {
    pub from: Option<DateTime>,
    pub to: Option<DateTime>,
}

/// A custom field condition: either `values` (any of them matches) or a `from`/`to` range for
/// numeric and date fields.
#[derive(Debug, InputObject)]
pub struct CustomFieldFilter {
    pub field_id: ID,
    pub values: Option<Vec<String>>,
    pub from: Option<String>,
    pub to: Option<String>,
}

#[derive(Debug, InputObject)]
#[graphql(name = "ContactOrder")]
pub struct ContactOrderInput {
    pub field: ContactOrderField,
    #[graphql(default_with = "OrderDirection::Asc")]
    pub direction: OrderDirection,
}

/// The fields amoCRM can sort contacts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum ContactOrderField {
    Id,
    UpdatedAt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum OrderDirection {
    Asc,
    Desc,
}

/// Validates the arguments of `contacts` into the list they select.
pub fn contact_list(
    filter: Option<ContactFilterInput>,
    order: Option<ContactOrderInput>,
) -> Result<ContactList, ApiError> {
    let filter = filter.unwrap_or_default();
    let search = match filter.query.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(filter_string("filter.query", text, MAX_SEARCH_CHARS)?.to_owned()),
    };
    let ids = id_set("filter.ids", filter.ids)?;
    let contact_filter = ContactFilter {
        ids: ids.into_iter().map(ContactId::new).collect(),
        names: filter_strings("filter.names", filter.names)?,
        responsible_user_ids: id_set("filter.responsibleUserIds", filter.responsible_user_ids)?,
        created_by: id_set("filter.createdBy", filter.created_by)?,
        updated_by: id_set("filter.updatedBy", filter.updated_by)?,
        created_at: time_range("filter.createdAt", filter.created_at)?,
        updated_at: time_range("filter.updatedAt", filter.updated_at)?,
        closest_task_at: time_range("filter.closestTaskAt", filter.closest_task_at)?,
        custom_fields: custom_fields(filter.custom_fields)?,
    };
    let list = ContactList {
        search,
        filter: contact_filter,
        order: order.map(|o| Order {
            field: match o.field {
                ContactOrderField::Id => OrderField::Id,
                ContactOrderField::UpdatedAt => OrderField::UpdatedAt,
            },
            direction: match o.direction {
                OrderDirection::Asc => Direction::Asc,
                OrderDirection::Desc => Direction::Desc,
            },
        }),
    };
    // Each string is bounded, but enough of them still make a URL no front proxy takes.
    let bytes = list.encoded_len();
    if bytes > MAX_LIST_PARAM_BYTES {
        return Err(ApiError::bad_input(
            "filter",
            format!(
                "the conditions take {bytes} bytes as upstream parameters, at most \
                 {MAX_LIST_PARAM_BYTES} fit: ask for fewer or shorter values"
            ),
        ));
    }
    Ok(list)
}

/// A string passed on to amoCRM: bounded, and free of control characters, which no name or
/// field holds and which some layers treat as separators.
fn filter_string<'a>(argument: &str, text: &'a str, max_chars: usize) -> Result<&'a str, ApiError> {
    if text.chars().any(char::is_control) {
        return Err(ApiError::bad_input(
            argument,
            "must not contain control characters (U+0000 to U+001F, U+007F to U+009F)",
        ));
    }
    if text.chars().count() > max_chars {
        return Err(ApiError::bad_input(
            argument,
            format!("must be at most {max_chars} characters"),
        ));
    }
    Ok(text)
}

/// A bounded list of filter strings, each checked by [`filter_string`] under its index.
fn filter_strings(
    argument: &str,
    values: Option<Vec<String>>,
) -> Result<BTreeSet<String>, ApiError> {
    let values = bounded(argument, values)?;
    for (i, value) in values.iter().enumerate() {
        filter_string(&format!("{argument}[{i}]"), value, MAX_FILTER_STRING_CHARS)?;
    }
    Ok(values.into_iter().collect())
}

/// Parses an amoCRM id given as a GraphQL `ID`.
pub fn parse_id(argument: &str, id: &ID) -> Result<u64, ApiError> {
    id.trim()
        .parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            ApiError::bad_input(
                argument,
                format!(
                    "must be a numeric amoCRM id (a positive integer), got {:?}",
                    id.as_str()
                ),
            )
        })
}

/// A list argument: absent is "no condition", empty is refused (it would silently mean "no
/// condition" upstream, the opposite of what an empty selection means), long is refused.
fn bounded<T>(argument: &str, values: Option<Vec<T>>) -> Result<Vec<T>, ApiError> {
    let Some(values) = values else {
        return Ok(Vec::new());
    };
    if values.is_empty() {
        return Err(ApiError::bad_input(
            argument,
            "must not be empty (leave it out to not filter by it)",
        ));
    }
    if values.len() > MAX_FILTER_IDS {
        return Err(ApiError::bad_input(
            argument,
            format!("at most {MAX_FILTER_IDS} values, got {}", values.len()),
        ));
    }
    Ok(values)
}

fn id_set(argument: &str, ids: Option<Vec<ID>>) -> Result<BTreeSet<u64>, ApiError> {
    bounded(argument, ids)?
        .iter()
        .enumerate()
        .map(|(i, id)| parse_id(&format!("{argument}[{i}]"), id))
        .collect()
}

fn time_range(argument: &str, range: Option<DateTimeRange>) -> Result<Option<TimeRange>, ApiError> {
    let Some(range) = range else { return Ok(None) };
    let (from, to) = (
        range.from.map(DateTime::unix_seconds),
        range.to.map(DateTime::unix_seconds),
    );
    TimeRange::new(from, to).map(Some).ok_or_else(|| {
        let rule = if from.is_none() && to.is_none() {
            "give `from`, `to` or both"
        } else {
            "`from` must not be after `to`"
        };
        ApiError::bad_input(argument, rule)
    })
}

fn custom_fields(
    filters: Option<Vec<CustomFieldFilter>>,
) -> Result<BTreeMap<u64, CustomFieldCondition>, ApiError> {
    let mut conditions = BTreeMap::new();
    for (i, filter) in bounded("filter.customFields", filters)?
        .into_iter()
        .enumerate()
    {
        let argument = format!("filter.customFields[{i}]");
        let field_id = parse_id(&format!("{argument}.fieldId"), &filter.field_id)?;
        let condition = match (filter.values, filter.from, filter.to) {
            (Some(values), None, None) => CustomFieldCondition::AnyOf(filter_strings(
                &format!("{argument}.values"),
                Some(values),
            )?),
            (None, from, to) if from.is_some() || to.is_some() => {
                for (end, value) in [("from", &from), ("to", &to)] {
                    if let Some(value) = value {
                        let end = format!("{argument}.{end}");
                        filter_string(&end, value, MAX_FILTER_STRING_CHARS)?;
                    }
                }
                CustomFieldCondition::Range { from, to }
            }
            _ => {
                return Err(ApiError::bad_input(
                    argument,
                    "give either `values` or a `from`/`to` range",
                ));
            }
        };
        if conditions.insert(field_id, condition).is_some() {
            return Err(ApiError::bad_input(
                argument,
                format!("field {field_id} appears more than once"),
            ));
        }
    }
    Ok(conditions)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    fn ids() -> impl Strategy<Value = Option<Vec<ID>>> {
        proptest::option::of(proptest::collection::vec(
            prop_oneof!["[0-9]{1,20}", ".{0,12}"].prop_map(ID::from),
            0..300,
        ))
    }

    proptest! {
        /// Any filter either maps to upstream parameters of known shape, or is refused naming
        /// an argument; never a panic.
        #[test]
        fn fuzz_filter_to_parameters(
            query in proptest::option::of(".{0,50}"),
            ids in ids(),
            users in ids(),
            from in proptest::option::of(any::<i64>()),
            to in proptest::option::of(any::<i64>()),
            field in "[0-9x]{1,12}",
            values in proptest::option::of(proptest::collection::vec(".{0,10}", 0..4)),
            low in proptest::option::of(".{0,10}"),
        ) {
            let filter = ContactFilterInput {
                query,
                ids,
                responsible_user_ids: users,
                updated_at: Some(DateTimeRange {
                    from: from.map(DateTime::from_unix),
                    to: to.map(DateTime::from_unix),
                }),
                custom_fields: Some(vec![CustomFieldFilter {
                    field_id: ID::from(field),
                    values,
                    from: low,
                    to: None,
                }]),
                ..Default::default()
            };
            match contact_list(Some(filter), None) {
                Ok(list) => {
                    for (key, _) in list.to_params() {
                        prop_assert!(key == "query" || key.starts_with("filter[") || key.starts_with("order["), "{key}");
                    }
                }
                Err(ApiError::BadInput { argument, .. }) => prop_assert!(argument.starts_with("filter")),
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }
    }

    use super::*;

    fn argument_of(result: Result<ContactList, ApiError>) -> String {
        match result {
            Err(ApiError::BadInput { argument, .. }) => argument,
            other => panic!("expected bad input, got {other:?}"),
        }
    }

    #[test]
    fn each_rule_names_its_argument() {
        let ids = |ids: Vec<&str>| ContactFilterInput {
            ids: Some(ids.into_iter().map(ID::from).collect()),
            ..Default::default()
        };
        assert_eq!(
            argument_of(contact_list(Some(ids(vec!["1", "x"])), None)),
            "filter.ids[1]"
        );
        assert_eq!(
            argument_of(contact_list(Some(ids(vec![])), None)),
            "filter.ids"
        );
        let many: Vec<String> = (1..=251).map(|i| i.to_string()).collect();
        assert_eq!(
            argument_of(contact_list(
                Some(ids(many.iter().map(String::as_str).collect())),
                None
            )),
            "filter.ids"
        );
        let inverted = ContactFilterInput {
            created_at: Some(DateTimeRange {
                from: Some(DateTime::from_unix(10)),
                to: Some(DateTime::from_unix(5)),
            }),
            ..Default::default()
        };
        assert_eq!(
            argument_of(contact_list(Some(inverted), None)),
            "filter.createdAt"
        );
        let both = ContactFilterInput {
            custom_fields: Some(vec![CustomFieldFilter {
                field_id: ID::from("5"),
                values: Some(vec!["a".into()]),
                from: Some("1".into()),
                to: None,
            }]),
            ..Default::default()
        };
        assert_eq!(
            argument_of(contact_list(Some(both), None)),
            "filter.customFields[0]"
        );
    }

    #[test]
    fn filter_strings_are_bounded_free_of_control_characters_and_fit_a_url() {
        let names = |names: Vec<String>| ContactFilterInput {
            names: Some(names),
            ..Default::default()
        };
        assert_eq!(
            argument_of(contact_list(
                Some(names(vec!["a".into(), "x".repeat(3500)])),
                None
            )),
            "filter.names[1]"
        );
        assert_eq!(
            argument_of(contact_list(Some(names(vec!["a\0b".into()])), None)),
            "filter.names[0]"
        );
        let search = ContactFilterInput {
            query: Some("ab\u{1b}c".into()),
            ..Default::default()
        };
        assert_eq!(
            argument_of(contact_list(Some(search), None)),
            "filter.query"
        );
        let range = ContactFilterInput {
            custom_fields: Some(vec![CustomFieldFilter {
                field_id: ID::from("5"),
                values: None,
                from: Some("1\n".into()),
                to: None,
            }]),
            ..Default::default()
        };
        assert_eq!(
            argument_of(contact_list(Some(range), None)),
            "filter.customFields[0].from"
        );
        // Each value within its bound, the whole too long for a URL.
        let wide: Vec<String> = (0..250)
            .map(|i| format!("{i}{}", "я".repeat(200)))
            .collect();
        assert_eq!(argument_of(contact_list(Some(names(wide)), None)), "filter");
    }

    #[test]
    fn blank_search_is_no_search() {
        let filter = ContactFilterInput {
            query: Some("  ".into()),
            ..Default::default()
        };
        assert_eq!(
            contact_list(Some(filter), None).ok(),
            Some(ContactList::default())
        );
    }
}
