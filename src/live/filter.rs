//! Whether a contact matches a subscription's `filter`, decided here from the contact read for
//! the event: asking amoCRM per event and subscriber would spend the budget the coalescing saves.
//! The conditions mean what they mean upstream; `query` (amoCRM's full-text search) is read as
//! a case-insensitive substring of the contact's names and field values, which is what amoCRM
//! matches on for contacts.

use crate::amocrm::{Contact, ContactList, CustomFieldCondition};

pub fn matches(list: &ContactList, contact: &Contact) -> bool {
    let f = &list.filter;
    let any =
        |set: &std::collections::BTreeSet<u64>, value: u64| set.is_empty() || set.contains(&value);
    (f.ids.is_empty() || f.ids.contains(&contact.id))
        && (f.names.is_empty() || f.names.contains(&contact.name))
        && any(&f.responsible_user_ids, contact.responsible_user_id)
        && any(&f.created_by, contact.created_by)
        && any(&f.updated_by, contact.updated_by)
        && f.created_at.is_none_or(|r| r.contains(contact.created_at))
        && f.updated_at.is_none_or(|r| r.contains(contact.updated_at))
        && f.closest_task_at
            .is_none_or(|r| contact.closest_task_at.is_some_and(|at| r.contains(at)))
        && f.custom_fields.iter().all(|(field, condition)| {
            let values = field_values(contact, *field);
            match condition {
                CustomFieldCondition::AnyOf(wanted) => values.iter().any(|v| wanted.contains(v)),
                CustomFieldCondition::Range { from, to } => values.iter().any(|v| {
                    let Ok(v) = v.parse::<f64>() else {
                        return false;
                    };
                    let bound = |b: &Option<String>| b.as_deref().map(str::parse::<f64>);
                    match (bound(from), bound(to)) {
                        (Some(Err(_)), _) | (_, Some(Err(_))) => false,
                        (from, to) => {
                            from.is_none_or(|f| f.is_ok_and(|f| v >= f))
                                && to.is_none_or(|t| t.is_ok_and(|t| v <= t))
                        }
                    }
                }),
            }
        })
        && list
            .search
            .as_deref()
            .is_none_or(|needle| searched(contact, needle))
}

/// A field's values as text, the way a filter names them.
fn field_values(contact: &Contact, field: u64) -> Vec<String> {
    contact
        .custom_fields_values
        .iter()
        .filter(|f| f.field_id == field)
        .flat_map(|f| f.values.iter())
        .filter_map(|item| match &item.value {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        })
        .collect()
}

fn searched(contact: &Contact, needle: &str) -> bool {
    let needle = needle.to_lowercase();
    let mut texts = vec![
        contact.name.as_str(),
        contact.first_name.as_str(),
        contact.last_name.as_str(),
    ];
    let values: Vec<String> = contact
        .custom_fields_values
        .iter()
        .flat_map(|f| f.values.iter())
        .filter_map(|item| item.value.as_str().map(str::to_owned))
        .collect();
    texts.extend(values.iter().map(String::as_str));
    texts.iter().any(|t| t.to_lowercase().contains(&needle))
}
