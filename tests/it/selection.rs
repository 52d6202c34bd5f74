//! What the client selects decides the `with` that reaches amoCRM, and nothing else does.

use serde_json::json;

use crate::support::{ADMIN_TOKEN, TestApp};

async fn with_param_for(query: &str, variables: serde_json::Value) -> Vec<Option<String>> {
    let app = TestApp::spawn().await;
    let reply = app.query_with(Some(ADMIN_TOKEN), query, variables).await;
    reply.data();
    app.contact_calls()
        .iter()
        .map(|call| call.param("with").map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn no_relation_selected_sends_no_with() {
    let calls = with_param_for(
        "{ contacts(first: 5) { nodes { id name tags { name } companies { id } customFieldsValues { fieldId } } } }",
        json!({}),
    )
    .await;
    assert_eq!(calls, vec![None]);
}

#[tokio::test]
async fn each_relation_field_adds_exactly_its_with_value() {
    for (field, with) in [
        ("leads { id }", "leads"),
        ("customers { id }", "customers"),
        (
            "catalogElements { id catalogId quantity }",
            "catalog_elements",
        ),
    ] {
        let query = format!("{{ contacts(first: 3) {{ edges {{ node {{ id {field} }} }} }} }}");
        let calls = with_param_for(&query, json!({})).await;
        assert_eq!(calls, vec![Some(with.to_owned())], "for {field}");
    }
}

#[tokio::test]
async fn named_and_inline_fragments_and_aliases_are_followed() {
    let query = r#"
        query {
            list: contacts(first: 3) {
                edges { node { ...Card } }
                nodes { ... on Contact { c: customers { id } } }
            }
        }
        fragment Card on Contact { id ...Deals }
        fragment Deals on Contact { myLeads: leads { id } }
    "#;
    let calls = with_param_for(query, json!({})).await;
    assert_eq!(calls, vec![Some("leads,customers".to_owned())]);
}

#[tokio::test]
async fn two_aliased_lists_each_get_their_own_relations() {
    let app = TestApp::spawn().await;
    app.query(
        Some(ADMIN_TOKEN),
        r#"{ a: contacts(first: 2) { nodes { leads { id } } }
             b: contacts(first: 2, filter: { query: "Иван" }) { nodes { id } } }"#,
    )
    .await
    .data();
    let mut calls: Vec<(Option<String>, Option<String>)> = app
        .contact_calls()
        .iter()
        .map(|c| {
            (
                c.param("query").map(str::to_owned),
                c.param("with").map(str::to_owned),
            )
        })
        .collect();
    calls.sort();
    assert_eq!(
        calls,
        vec![
            (None, Some("leads".to_owned())),
            (Some("Иван".to_owned()), None)
        ]
    );
}

#[tokio::test]
async fn include_uses_the_variable_default_when_the_variable_is_not_sent() {
    let app = TestApp::spawn().await;
    let reply = app
        .query(
            Some(ADMIN_TOKEN),
            "query($v: Boolean = true) { contacts(first: 20) { nodes { id leads @include(if: $v) { id } } } }",
        )
        .await;
    let nodes = reply.data()["contacts"]["nodes"]
        .as_array()
        .expect("nodes")
        .clone();
    assert!(
        nodes.iter().all(|n| n.get("leads").is_some()),
        "leads are in the response"
    );
    assert!(
        nodes
            .iter()
            .any(|n| !n["leads"].as_array().expect("list").is_empty())
    );
    assert_eq!(app.contact_calls()[0].param("with"), Some("leads"));
}

#[tokio::test]
async fn skipped_relations_are_not_requested() {
    let calls = with_param_for(
        "query($s: Boolean!) { contacts(first: 2) { nodes { id leads @skip(if: $s) { id } ... @include(if: false) { customers { id } } } } }",
        json!({ "s": true }),
    )
    .await;
    assert_eq!(calls, vec![None]);
}

#[tokio::test]
async fn contact_by_id_uses_the_same_selection_logic() {
    let app = TestApp::spawn().await;
    let id = app.fake.visible_ids(ADMIN_TOKEN)[3];
    let reply = app
        .query(
            Some(ADMIN_TOKEN),
            &format!(
                "{{ contact(id: \"{id}\") {{ id ... on Contact {{ catalogElements {{ id }} }} }} }}"
            ),
        )
        .await;
    assert_eq!(reply.data()["contact"]["id"], json!(id.to_string()));
    let calls = app.contact_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].param("with"), Some("catalog_elements"));
    assert_eq!(
        calls[0].params("filter[id][]"),
        vec![id.to_string().as_str()]
    );
}
