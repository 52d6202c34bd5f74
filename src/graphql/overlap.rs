//! One response key, one field: the spec's "Field Selection Merging" rule, which
//! async-graphql 7 checks only within one fragment's type condition. Across fragments,
//! `{ c: contact(id: "1") { id } ... on Query { c: contact(id: "2") { id } } }` passed
//! validation, both fields ran, and whichever finished first filled `c`.
//!
//! The schema has no interfaces or unions, so every selection of one response key in one
//! place is the same field of the same type: its name and arguments must agree, and so must
//! the selections merged under it.

use std::collections::HashMap;

use async_graphql::parser::types::{
    ExecutableDocument, Field, FragmentDefinition, OperationDefinition, Selection, SelectionSet,
};
use async_graphql::{Name, Positioned, ServerError};

use super::error::{BAD_USER_INPUT, refusal};

/// The first response key selected as two different fields, or with two different argument
/// lists, anywhere in `operation`.
pub fn conflict(
    document: &ExecutableDocument,
    operation: &OperationDefinition,
) -> Result<(), ServerError> {
    let walk = Walk {
        fragments: &document.fragments,
    };
    walk.merged(&[&operation.selection_set.node])
}

struct Walk<'a> {
    fragments: &'a HashMap<Name, Positioned<FragmentDefinition>>,
}

impl<'a> Walk<'a> {
    /// Checks the fields these sets select together, then, key by key, the sets merged under
    /// them.
    fn merged(&self, sets: &[&'a SelectionSet]) -> Result<(), ServerError> {
        let mut by_key: Vec<(&'a str, Vec<&'a Positioned<Field>>)> = Vec::new();
        let mut expanding = Vec::new();
        for set in sets {
            self.collect(set, &mut by_key, &mut expanding);
        }
        for (key, fields) in &by_key {
            let first = fields[0];
            if let Some(other) = fields[1..]
                .iter()
                .find(|f| !same_field(&first.node, &f.node))
            {
                let mut error = refusal(
                    BAD_USER_INPUT,
                    format!(
                        "the response key {key} is selected as two different fields ({} and {}): \
                         give one of them another alias",
                        describe(&first.node),
                        describe(&other.node)
                    ),
                );
                error.locations = vec![first.pos, other.pos];
                return Err(error);
            }
            let below: Vec<&SelectionSet> = fields
                .iter()
                .map(|f| &f.node.selection_set.node)
                .filter(|set| !set.items.is_empty())
                .collect();
            if !below.is_empty() {
                self.merged(&below)?;
            }
        }
        Ok(())
    }

    /// The fields of `set` by response key, fragments inlined. A fragment that spreads itself
    /// (validation refuses it later; this runs before) is not followed twice.
    fn collect(
        &self,
        set: &'a SelectionSet,
        by_key: &mut Vec<(&'a str, Vec<&'a Positioned<Field>>)>,
        expanding: &mut Vec<&'a str>,
    ) {
        for item in &set.items {
            match &item.node {
                Selection::Field(field) => {
                    let key = field.node.response_key().node.as_str();
                    match by_key.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, fields)) => fields.push(field),
                        None => by_key.push((key, vec![field])),
                    }
                }
                Selection::InlineFragment(fragment) => {
                    self.collect(&fragment.node.selection_set.node, by_key, expanding);
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    if expanding.contains(&name) {
                        continue;
                    }
                    if let Some(fragment) = self.fragments.get(name) {
                        expanding.push(name);
                        self.collect(&fragment.node.selection_set.node, by_key, expanding);
                        expanding.pop();
                    }
                }
            }
        }
    }
}

/// The same field with the same arguments, in any order.
fn same_field(a: &Field, b: &Field) -> bool {
    if a.name.node != b.name.node || a.arguments.len() != b.arguments.len() {
        return false;
    }
    a.arguments.iter().all(|(name, value)| {
        b.arguments
            .iter()
            .any(|(other, other_value)| other.node == name.node && other_value.node == value.node)
    })
}

fn describe(field: &Field) -> String {
    let arguments: Vec<String> = field
        .arguments
        .iter()
        .map(|(name, value)| format!("{}: {}", name.node, value.node))
        .collect();
    if arguments.is_empty() {
        field.name.node.to_string()
    } else {
        format!("{}({})", field.name.node, arguments.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use async_graphql::parser::parse_query;
    use async_graphql::parser::types::DocumentOperations;

    fn check(query: &str) -> Result<(), String> {
        let document = parse_query(query).expect("parses");
        let DocumentOperations::Single(operation) = &document.operations else {
            panic!("one operation");
        };
        super::conflict(&document, &operation.node).map_err(|e| e.message)
    }

    #[test]
    fn one_key_as_two_fields_or_with_two_argument_lists_is_refused() {
        for query in [
            r#"{ c: contact(id: "1") { id } ... on Query { c: contact(id: "2") { id } } }"#,
            r#"{ contact(id: "1") { id } ...F } fragment F on Query { contact(id: "x") { id } }"#,
            r#"{ c: contact(id: "1") { n: id } c: contact(id: "1") { n: name } }"#,
            r#"{ contacts { nodes { id } } ... on Query { contacts(first: 3) { nodes { id } } } }"#,
        ] {
            let refused = check(query).expect_err(query);
            assert!(refused.contains("two different fields"), "{refused}");
        }
    }

    #[test]
    fn the_same_field_twice_merges() {
        for query in [
            r#"{ c: contact(id: "1") { id } ... on Query { c: contact(id: "1") { name } } }"#,
            r#"{ contacts(first: 2, after: "x") { nodes { id } } contacts(after: "x", first: 2) { pageInfo { hasNextPage } } }"#,
            "{ ...F ...F } fragment F on Query { contacts { nodes { id } } }",
            "{ ...F } fragment F on Query { ...F contacts { nodes { id } } }",
        ] {
            assert_eq!(check(query), Ok(()), "{query}");
        }
    }
}
