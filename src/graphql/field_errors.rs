//! Field errors as the GraphQL spec handles them ("Handling Execution Errors"): an error in a
//! nullable field leaves its key, set to `null`; an error in a non-null field nulls the nearest
//! nullable ancestor, up to `data: null` at the root.
//!
//! async-graphql 7 instead drops an errored field's key from its parent object (its
//! `do_resolve_container` records the error and inserts nothing), so a node comes back without
//! `responsibleUser`, and an operation whose only field failed answers `data: null`. Strict
//! clients (Apollo iOS and Kotlin, Relay) reject responses with missing keys. This extension
//! sits on every field's resolution: it catches the error where the spec says it stops, and
//! lets it travel up (as async-graphql does) where the field is non-null.
//!
//! Lists in this schema hold only non-null items (`[T!]`), so an item's error always travels
//! to the list's field, which this extension sees; a nullable item type would need a hook that
//! async-graphql does not offer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextResolve, ResolveInfo,
};
use async_graphql::{QueryPathNode, QueryPathSegment, Response, ServerError, ServerResult, Value};

/// Registers [`FieldErrors`] for each request.
pub(super) struct SpecFieldErrors;

impl ExtensionFactory for SpecFieldErrors {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(FieldErrors::default())
    }
}

/// One request's field errors, and the fields whose value a failed non-null field spoiled.
///
/// async-graphql does not let a non-null field's error travel up: the parent object records
/// it and leaves the key out. So a failed non-null field marks the field that owns it (its
/// parent field, through any list items, whose types are all non-null here) as spoiled, and
/// when that field's own resolution returns, it becomes null, or, non-null itself, spoils its
/// owner in turn, up to `data`. Children resolve within their parent's resolution, so every
/// mark is made before its owner looks.
#[derive(Default)]
struct FieldErrors {
    state: Mutex<State>,
    /// Set once anything is spoiled: until then no field pays for building its path.
    any_spoiled: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Errors of nullable fields, which this extension turns into nulls.
    errors: Vec<ServerError>,
    /// Response paths of fields whose value must not stand.
    spoiled: Vec<Vec<Segment>>,
    null_data: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl FieldErrors {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Only pushes happen under the lock: a poisoned one still holds consistent data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A non-null field failed, or was spoiled: the field that holds it cannot stand either.
    fn spoil_owner_of(&self, node: &QueryPathNode<'_>) {
        let mut owner = path_of(node);
        owner.pop();
        // List items here are all non-null: an item's failure is its list field's.
        while matches!(owner.last(), Some(Segment::Index(_))) {
            owner.pop();
        }
        let mut state = self.state();
        if owner.is_empty() {
            state.null_data = true;
        } else {
            state.spoiled.push(owner);
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
        response.errors.extend(state.errors);
        if state.null_data {
            response.data = Value::Null;
        }
        response
    }

    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        let non_null = info.return_type.ends_with('!');
        let node = info.path_node;
        match next.run(ctx, info).await {
            Ok(value) if !self.is_spoiled(node) => Ok(value),
            // A non-null descendant failed and this is the nearest nullable field: null.
            // The descendant's error is recorded already.
            Ok(_) if !non_null => Ok(Some(Value::Null)),
            Ok(_) => {
                self.spoil_owner_of(node);
                Ok(Some(Value::Null))
            }
            // The error stops at a nullable field, whose key stays, null.
            Err(error) if !non_null => {
                self.state().errors.push(error);
                Ok(Some(Value::Null))
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
}
