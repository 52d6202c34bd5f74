//! Every declared variable coerced before execution, as the spec's CoerceVariableValues does.
//! async-graphql checks a variable's value only where a field reads it, so a value of the wrong
//! type for a variable no field reads (or reads only under `@skip`) ran as if valid; the
//! GraphQL-over-HTTP spec makes a coercion failure a request error (400 with
//! `application/graphql-response+json`).
//!
//! The input types come from the schema's own SDL, read once: the rules stay in step with the
//! schema without a second description of it.

use std::collections::HashMap;
use std::sync::LazyLock;

use async_graphql::parser::types::{
    BaseType, Type, TypeKind, TypeSystemDefinition, VariableDefinition,
};
use async_graphql::{Name, Positioned, ServerError, Value, Variables};

use super::error::{BAD_USER_INPUT, refusal};

/// What a named input type accepts.
enum InputType {
    Object(Vec<InputField>),
    Enum(Vec<String>),
    /// A scalar this schema defines; `DateTime` is the only one with rules of its own.
    CustomScalar,
}

struct InputField {
    name: String,
    ty: Type,
    has_default: bool,
}

static INPUT_TYPES: LazyLock<HashMap<String, InputType>> = LazyLock::new(|| {
    let mut types = HashMap::new();
    let Ok(document) = async_graphql::parser::parse_schema(super::sdl()) else {
        return types;
    };
    for definition in document.definitions {
        let TypeSystemDefinition::Type(definition) = definition else {
            continue;
        };
        let definition = definition.node;
        let kind = match definition.kind {
            TypeKind::InputObject(object) => InputType::Object(
                object
                    .fields
                    .into_iter()
                    .map(|f| InputField {
                        name: f.node.name.node.to_string(),
                        ty: f.node.ty.node,
                        has_default: f.node.default_value.is_some(),
                    })
                    .collect(),
            ),
            TypeKind::Enum(values) => InputType::Enum(
                values
                    .values
                    .into_iter()
                    .map(|v| v.node.value.node.to_string())
                    .collect(),
            ),
            TypeKind::Scalar => InputType::CustomScalar,
            _ => continue,
        };
        types.insert(definition.name.node.to_string(), kind);
    }
    types
});

/// Checks every variable `definitions` declare against the value sent (or its default): the
/// first that does not coerce is a request error naming the variable, the place and the rule.
pub fn coerce(
    definitions: &[Positioned<VariableDefinition>],
    variables: &Variables,
) -> Result<(), ServerError> {
    for definition in definitions {
        let name = &definition.node.name.node;
        let Some(value) = variables.get(name) else {
            // Not sent: a default applies, or a missing required variable is reported apart.
            continue;
        };
        if let Err(rule) = check(value, &definition.node.var_type.node, 0) {
            let mut error = refusal(BAD_USER_INPUT, format!("variables.{name}: {rule}"));
            error.locations = vec![definition.pos];
            return Err(error);
        }
    }
    Ok(())
}

/// Nesting deeper than any input of this schema is refused, not recursed into.
const MAX_DEPTH: usize = 32;

fn check(value: &Value, ty: &Type, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("nested too deeply".to_owned());
    }
    if matches!(value, Value::Null) {
        return if ty.nullable {
            Ok(())
        } else {
            Err(format!("must not be null (type {ty})"))
        };
    }
    match &ty.base {
        // A single value where a list is expected is a list of one.
        BaseType::List(item) => match value {
            Value::List(items) => items.iter().enumerate().try_for_each(|(i, v)| {
                check(v, item, depth + 1).map_err(|rule| format!("[{i}] {rule}"))
            }),
            single => check(single, item, depth + 1),
        },
        BaseType::Named(name) => check_named(value, name, depth),
    }
}

fn check_named(value: &Value, name: &Name, depth: usize) -> Result<(), String> {
    let wrong = |expected: &str| Err(format!("must be {expected}, got {}", kind(value)));
    match name.as_str() {
        "Int" => match value {
            Value::Number(n) if n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()) => Ok(()),
            _ => wrong("an Int (a 32-bit integer)"),
        },
        "Float" => match value {
            Value::Number(_) => Ok(()),
            _ => wrong("a Float"),
        },
        "String" => match value {
            Value::String(_) => Ok(()),
            _ => wrong("a String"),
        },
        "Boolean" => match value {
            Value::Boolean(_) => Ok(()),
            _ => wrong("a Boolean"),
        },
        "ID" => match value {
            Value::String(_) => Ok(()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(()),
            _ => wrong("an ID (a string or an integer)"),
        },
        "DateTime" => match value {
            Value::String(s) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => Ok(()),
            _ => wrong("a DateTime (an RFC 3339 date-time such as 2020-04-01T16:21:05Z)"),
        },
        other => match INPUT_TYPES.get(other) {
            Some(InputType::Enum(values)) => {
                let given = match value {
                    Value::String(s) => Some(s.as_str()),
                    Value::Enum(name) => Some(name.as_str()),
                    _ => None,
                };
                if given.is_some_and(|g| values.iter().any(|v| v == g)) {
                    Ok(())
                } else {
                    Err(format!("must be one of {}", values.join(", ")))
                }
            }
            Some(InputType::Object(fields)) => check_object(value, other, fields, depth),
            // JSON, and any scalar without rules here: its own parser decides where it is used.
            Some(InputType::CustomScalar) | None => Ok(()),
        },
    }
}

fn check_object(
    value: &Value,
    type_name: &str,
    fields: &[InputField],
    depth: usize,
) -> Result<(), String> {
    let Value::Object(object) = value else {
        return Err(format!(
            "must be an input object {type_name}, got {}",
            kind(value)
        ));
    };
    if let Some(unknown) = object
        .keys()
        .find(|key| !fields.iter().any(|f| f.name == key.as_str()))
    {
        return Err(format!("{type_name} has no field {unknown}"));
    }
    for field in fields {
        match object.get(field.name.as_str()) {
            Some(value) => check(value, &field.ty, depth + 1)
                .map_err(|rule| format!(".{} {rule}", field.name))?,
            None if !field.ty.nullable && !field.has_default => {
                return Err(format!(".{} is required", field.name));
            }
            None => {}
        }
    }
    Ok(())
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Boolean(_) => "a boolean",
        Value::Binary(_) => "binary data",
        Value::Enum(_) => "an enum value",
        Value::List(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use async_graphql::parser::parse_query;
    use async_graphql::parser::types::DocumentOperations;
    use serde_json::json;

    fn coerce(document: &str, variables: serde_json::Value) -> Result<(), String> {
        let document = parse_query(document).expect("parses");
        let DocumentOperations::Single(operation) = document.operations else {
            panic!("one operation");
        };
        super::coerce(
            &operation.node.variable_definitions,
            &async_graphql::Variables::from_json(variables),
        )
        .map_err(|e| e.message)
    }

    #[test]
    fn unused_variables_are_coerced_too() {
        let query = "query($x: Int!) { __typename }";
        assert!(coerce(query, json!({ "x": 5 })).is_ok());
        let refused = coerce(query, json!({ "x": "a" })).expect_err("a string is no Int");
        assert_eq!(
            refused,
            "variables.x: must be an Int (a 32-bit integer), got a string"
        );
        assert!(coerce(query, json!({ "x": null })).is_err());
        assert!(coerce(query, json!({ "x": 1u64 << 40 })).is_err());
    }

    #[test]
    fn input_objects_enums_lists_and_dates_follow_the_schema() {
        let query = "query($f: ContactFilter, $o: ContactOrder, $ids: [ID!]) { __typename }";
        assert!(
            coerce(
                query,
                json!({ "f": { "query": "x", "ids": ["1", 2], "updatedAt": { "from": "2020-04-01T16:21:05Z" } },
                        "o": { "field": "UPDATED_AT" }, "ids": "7" })
            )
            .is_ok()
        );
        let refusals = [
            json!({ "f": { "nope": 1 } }),
            json!({ "f": { "updatedAt": { "from": "yesterday" } } }),
            json!({ "f": { "ids": [null] } }),
            json!({ "o": { "field": "NAME" } }),
            json!({ "o": { "direction": "ASC" } }),
            json!({ "f": "x" }),
            json!({ "ids": [true] }),
        ];
        for variables in refusals {
            assert!(coerce(query, variables.clone()).is_err(), "{variables}");
        }
    }
}
