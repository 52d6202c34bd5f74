//! Field errors as the GraphQL spec handles them ("Handling Execution Errors"): an error in a
//! nullable field leaves its key, set to `null`; an error in a non-null field nulls the nearest
//! nullable ancestor, up to `data: null` at the root.
//!
//! async-graphql 7 instead drops an errored field's key from its parent object (its
//! `do_resolve_container` records the error and inserts nothing), so a node comes back without
//! `responsibleUser`, and an operation whose only field failed answers `data: null`. Strict
//! clients (Apollo iOS and Kotlin, Relay) reject responses with missing keys. This extension
//! sits on the resolution of every field and every list item (async-graphql calls it for
//! both): it catches the error where the spec says it stops, and lets it travel up where the
//! field or item is non-null.
//!
//! Two more of async-graphql's answers are mended on the way: a selection that `@skip` or
//! `@include` left empty is `{}`, not `null` (graphql-js agrees), and so is `data` when every
//! root field was skipped.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextResolve, ResolveInfo,
};
use async_graphql::{
    Name, QueryPathNode, QueryPathSegment, Response, ServerError, ServerResult, Value,
};

/// Registers [`FieldErrors`] for each request.
pub(super) struct SpecFieldErrors;

impl ExtensionFactory for SpecFieldErrors {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(FieldErrors::default())
    }
}

/// One request's field errors, and the places whose value a failed non-null field spoiled.
///
/// async-graphql does not let a non-null field's error travel up: the parent object records
/// it and leaves the key out. So a failed non-null field or item marks its owner (the field or
/// list item that holds it) as spoiled, and when the owner's own resolution returns, it becomes
/// null, or, non-null itself, spoils its owner in turn, up to `data`. Children resolve within
/// their owner's resolution, so every mark is made before its owner looks.
///
/// The nulls are also written into `data` at the end: a response key selected twice (a field
/// and a fragment) resolves twice, and async-graphql merges the copies keeping an object over a
/// later `null`.
#[derive(Default)]
struct FieldErrors {
    state: Mutex<State>,
    /// Set once anything is spoiled: until then no field pays for building its path.
    any_spoiled: AtomicBool,
    /// Set once a list with nullable items is resolved (this schema has none).
    any_nullable_items: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Errors of nullable fields, which this extension turns into nulls.
    errors: Vec<ServerError>,
    /// Response paths of fields and items whose value must not stand.
    spoiled: HashSet<Vec<Segment>>,
    /// Where `null` must be in `data`, whatever the merge of duplicate keys kept.
    nulls: Vec<Vec<Segment>>,
    null_data: bool,
    /// Response paths of list fields whose items may be null.
    nullable_item_lists: HashSet<Vec<Segment>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Key(String),
    Index(usize),
}

impl FieldErrors {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Only pushes happen under the lock: a poisoned one still holds consistent data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A non-null field or item failed, or was spoiled: whatever holds it cannot stand either.
    fn spoil_owner_of(&self, node: &QueryPathNode<'_>) {
        let mut owner = path_of(node);
        owner.pop();
        let mut state = self.state();
        if owner.is_empty() {
            state.null_data = true;
        } else {
            state.spoiled.insert(owner);
        }
        self.any_spoiled.store(true, Ordering::Release);
    }

    fn is_spoiled(&self, node: &QueryPathNode<'_>) -> bool {
        if !self.any_spoiled.load(Ordering::Acquire) {
            return false;
        }
        let path = path_of(node);
        self.state().spoiled.contains(&path)
    }

    /// A list field whose items may be null: remembered for its items' failures.
    fn record_nullable_items(&self, list: &QueryPathNode<'_>) {
        self.state().nullable_item_lists.insert(path_of(list));
        self.any_nullable_items.store(true, Ordering::Release);
    }

    fn items_are_nullable(&self, item: &QueryPathNode<'_>) -> bool {
        if !self.any_nullable_items.load(Ordering::Acquire) {
            return false;
        }
        let mut list = path_of(item);
        list.pop();
        self.state().nullable_item_lists.contains(&list)
    }

    /// This nullable field or item is null because of an error: so it must be in `data`.
    fn null_at(&self, node: &QueryPathNode<'_>) -> ServerResult<Option<Value>> {
        self.state().nulls.push(path_of(node));
        Ok(Some(Value::Null))
    }
}

fn path_of(node: &QueryPathNode<'_>) -> Vec<Segment> {
    let mut path: Vec<Segment> = std::iter::once(node)
        .chain(node.parents())
        .map(|node| match node.segment {
            QueryPathSegment::Name(key) => Segment::Key(key.to_owned()),
            QueryPathSegment::Index(index) => Segment::Index(index),
        })
        .collect();
    path.reverse();
    path
}

/// The item type of a list type (`Item` of `[Item]!`), or `None` for other types.
fn list_item_type(type_name: &str) -> Option<&str> {
    type_name
        .strip_suffix('!')
        .unwrap_or(type_name)
        .strip_prefix('[')?
        .strip_suffix(']')
}

/// Sets the value at `path` to null, if `data` still reaches that far (an ancestor may have
/// been nulled already).
fn write_null(data: &mut Value, path: &[Segment]) {
    let mut at = data;
    for segment in path {
        let next = match (at, segment) {
            (Value::Object(map), Segment::Key(key)) => map.get_mut(&Name::new(key)),
            (Value::List(items), Segment::Index(index)) => items.get_mut(*index),
            _ => None,
        };
        match next {
            Some(next) => at = next,
            None => return,
        }
    }
    *at = Value::Null;
}

#[async_trait::async_trait]
impl Extension for FieldErrors {
    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let mut response = next.run(ctx, operation_name).await;
        let state = std::mem::take(&mut *self.state());
        for path in &state.nulls {
            write_null(&mut response.data, path);
        }
        response.errors.extend(state.errors);
        if state.null_data {
            response.data = Value::Null;
        } else if response.data == Value::Null && response.errors.is_empty() {
            // Every root field was skipped: an empty selection, not a failure.
            response.data = Value::Object(Default::default());
        }
        response
    }

    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        let node = info.path_node;
        // async-graphql names a list item's type wrongly (`Item!` for the items of `[Item]`),
        // so an item's nullability comes from its list field, and is looked up only when it
        // matters, on the way out of a failure.
        let declared = match node.segment {
            QueryPathSegment::Index(_) => None,
            QueryPathSegment::Name(_) => {
                if list_item_type(info.return_type).is_some_and(|item| !item.ends_with('!')) {
                    self.record_nullable_items(node);
                }
                Some(info.return_type.ends_with('!'))
            }
        };
        let non_null = || declared.unwrap_or_else(|| !self.items_are_nullable(node));
        match next.run(ctx, info).await {
            Ok(value) if !self.is_spoiled(node) => match value {
                // async-graphql answers an object whose selection `@skip` emptied with null;
                // a non-null field cannot be null without an error, so it is that object.
                Some(Value::Null) | None if non_null() => {
                    Ok(Some(Value::Object(Default::default())))
                }
                value => Ok(value),
            },
            // A non-null descendant failed and this is the nearest nullable place: null. The
            // descendant's error is recorded already.
            Ok(_) if !non_null() => self.null_at(node),
            Ok(_) => {
                self.spoil_owner_of(node);
                Ok(Some(Value::Null))
            }
            // The error stops at a nullable field, whose key stays, null.
            Err(error) if !non_null() => {
                self.state().errors.push(error);
                self.null_at(node)
            }
            // async-graphql records the error of a non-null field; its owner must not stand.
            Err(error) => {
                self.spoil_owner_of(node);
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! A small schema of its own covers the shapes this gateway's schema may not reach today
    //! (non-null fields failing deep inside lists); the gateway's cases are tested end to end
    //! in `tests/it/errors.rs`.

    use async_graphql::{EmptyMutation, EmptySubscription, Object, Result, Schema};
    use serde_json::{Value as Json, json};

    struct Query;

    #[Object]
    impl Query {
        async fn ok(&self) -> i32 {
            1
        }
        async fn nullable_fails(&self) -> Result<Option<i32>> {
            Err("nullable failed".into())
        }
        async fn non_null_fails(&self) -> Result<i32> {
            Err("non-null failed".into())
        }
        async fn item(&self) -> Option<Item> {
            Some(Item)
        }
        async fn items(&self) -> Option<Vec<Item>> {
            Some(vec![Item, Item])
        }
        async fn required_items(&self) -> Vec<Item> {
            vec![Item]
        }
        async fn maybe_items(&self) -> Vec<Option<Item>> {
            vec![Some(Item), Some(Item)]
        }
    }

    struct Item;

    #[Object]
    impl Item {
        async fn name(&self) -> &str {
            "item"
        }
        async fn nullable_fails(&self) -> Result<Option<i32>> {
            Err("inner nullable failed".into())
        }
        async fn non_null_fails(&self) -> Result<i32> {
            Err("inner non-null failed".into())
        }
        async fn child(&self) -> Item {
            Item
        }
    }

    async fn run(query: &str) -> Json {
        let schema = Schema::build(Query, EmptyMutation, EmptySubscription)
            .extension(super::SpecFieldErrors)
            .finish();
        serde_json::to_value(schema.execute(query).await).expect("serializes")
    }

    fn paths(response: &Json) -> Vec<Json> {
        let mut paths: Vec<Json> = response["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|e| e["path"].clone())
            .collect();
        paths.sort_by_key(Json::to_string);
        paths
    }

    #[tokio::test]
    async fn a_failed_nullable_field_keeps_its_key_as_null() {
        let response = run("{ ok nullableFails alias: nullableFails }").await;
        assert_eq!(
            response["data"],
            json!({ "ok": 1, "nullableFails": null, "alias": null })
        );
        assert_eq!(
            paths(&response),
            [json!(["alias"]), json!(["nullableFails"])]
        );
    }

    #[tokio::test]
    async fn the_only_root_field_failing_leaves_an_object_with_its_key() {
        let response = run("{ nullableFails }").await;
        assert_eq!(response["data"], json!({ "nullableFails": null }));
    }

    #[tokio::test]
    async fn a_failed_non_null_root_field_nulls_data() {
        let response = run("{ ok nonNullFails }").await;
        let object = response.as_object().expect("an object");
        assert!(object.contains_key("data"));
        assert_eq!(response["data"], Json::Null);
        assert_eq!(paths(&response), [json!(["nonNullFails"])]);
    }

    #[tokio::test]
    async fn a_failed_non_null_field_nulls_the_nearest_nullable_ancestor() {
        let response = run("{ ok item { name child { child { nonNullFails } } } }").await;
        assert_eq!(response["data"], json!({ "ok": 1, "item": null }));
        assert_eq!(
            paths(&response),
            [json!(["item", "child", "child", "nonNullFails"])]
        );
    }

    #[tokio::test]
    async fn inside_lists_nullable_fields_stay_and_non_null_ones_null_the_list() {
        let response = run("{ items { name n: nullableFails } }").await;
        assert_eq!(
            response["data"],
            json!({ "items": [{ "name": "item", "n": null }, { "name": "item", "n": null }] })
        );
        assert_eq!(
            paths(&response),
            [json!(["items", 0, "n"]), json!(["items", 1, "n"])]
        );

        let response = run("{ ok items { name nonNullFails } }").await;
        assert_eq!(response["data"], json!({ "ok": 1, "items": null }));

        // A non-null list of non-null items: the error reaches the root, and `data` is null.
        let response = run("{ ok requiredItems { nonNullFails } }").await;
        assert_eq!(response["data"], Json::Null);
    }

    #[tokio::test]
    async fn a_nullable_list_item_spoiled_by_its_field_is_null_and_the_list_stays() {
        let response = run("{ maybeItems { name nonNullFails } }").await;
        assert_eq!(response["data"], json!({ "maybeItems": [null, null] }));
        assert_eq!(
            paths(&response),
            [
                json!(["maybeItems", 0, "nonNullFails"]),
                json!(["maybeItems", 1, "nonNullFails"])
            ]
        );
    }

    #[tokio::test]
    async fn a_key_selected_twice_is_nulled_whichever_copy_resolves_first() {
        for query in [
            "{ item { name } item { child { nonNullFails } } }",
            "{ item { child { nonNullFails } } item { name } }",
            "{ item { name } ... on Query { item { child { nonNullFails } } } }",
        ] {
            let response = run(query).await;
            assert_eq!(response["data"], json!({ "item": null }), "{query}");
            assert_eq!(
                paths(&response),
                [json!(["item", "child", "nonNullFails"])],
                "{query}"
            );
        }
    }

    #[tokio::test]
    async fn a_selection_emptied_by_skip_is_an_empty_object() {
        let response = run("{ requiredItems { name @skip(if: true) } }").await;
        assert_eq!(response["data"], json!({ "requiredItems": [{}] }));
        assert!(response.get("errors").is_none(), "{response}");
        let response = run("{ ok @skip(if: true) }").await;
        assert_eq!(response["data"], json!({}));
        assert!(response.get("errors").is_none(), "{response}");
    }
}
