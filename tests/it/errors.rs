//! Bad input is refused before any upstream call, naming the argument; upstream failures of
//! every shape become the documented codes, and the next request works.

use std::time::Duration;

use amocrm_gateway::fake_amocrm::{Failure, FakeOptions};
use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, MANAGER_TOKEN, TestApp, start_gateway};

#[tokio::test]
async fn bad_input_is_bad_user_input_naming_the_argument_with_no_upstream_call() {
    let app = TestApp::spawn().await;
    let many_ids: Vec<String> = (1..=251).map(|i| format!("\"{i}\"")).collect();
    let many_ids = many_ids.join(",");
    let cases: Vec<(String, &str)> = vec![
        ("{ contacts(first: 251) { nodes { id } } }".into(), "first"),
        ("{ contacts(first: -1) { nodes { id } } }".into(), "first"),
        ("{ contacts(first: 99999999999) { nodes { id } } }".into(), "first"),
        (r#"{ contacts(after: "bm90IGEgY3Vyc29y") { nodes { id } } }"#.into(), "after"),
        (r#"{ contacts(after: "%%%") { nodes { id } } }"#.into(), "after"),
        (r#"{ contacts(filter: { ids: ["12", "abc"] }) { nodes { id } } }"#.into(), "filter.ids[1]"),
        (r#"{ contacts(filter: { ids: [] }) { nodes { id } } }"#.into(), "filter.ids"),
        (format!("{{ contacts(filter: {{ ids: [{many_ids}] }}) {{ nodes {{ id }} }} }}"), "filter.ids"),
        (r#"{ contacts(filter: { responsibleUserIds: ["-3"] }) { nodes { id } } }"#.into(), "filter.responsibleUserIds[0]"),
        (
            r#"{ contacts(filter: { createdAt: { from: "2021-01-02T00:00:00Z", to: "2021-01-01T00:00:00Z" } }) { nodes { id } } }"#.into(),
            "filter.createdAt",
        ),
        (r#"{ contacts(filter: { updatedAt: {} }) { nodes { id } } }"#.into(), "filter.updatedAt"),
        (r#"{ contacts(filter: { createdAt: { from: "yesterday" } }) { nodes { id } } }"#.into(), "filter.createdAt.from"),
        (r#"{ contacts(filter: { customFields: [{ fieldId: "5" }] }) { nodes { id } } }"#.into(), "filter.customFields[0]"),
        (r#"{ contacts(filter: { customFields: [{ fieldId: "x", values: ["a"] }] }) { nodes { id } } }"#.into(), "filter.customFields[0].fieldId"),
        (r#"{ contact(id: "abc") { id } }"#.into(), "id"),
        (r#"{ contact(id: "0") { id } }"#.into(), "id"),
        ("{ contacts { nodes { nope } } }".into(), "nope"),
        ("{ contacts(order: { field: NAME }) { nodes { id } } }".into(), "order"),
        ("{ contacts { nodes { id }".into(), ""),
    ];
    for (query, argument) in &cases {
        let reply = app.query(Some(ADMIN_TOKEN), query).await;
        assert_eq!(reply.status, 200, "{query}");
        assert_eq!(
            reply.codes(),
            vec!["BAD_USER_INPUT"],
            "{query}: {}",
            reply.body
        );
        let message = reply.first_error()["message"].as_str().expect("message");
        assert!(
            message.contains(argument),
            "{query}: {message:?} should name {argument}"
        );
        assert_eq!(reply.header("cache-control"), "no-store");
    }
    let variable = app
        .query_with(
            Some(ADMIN_TOKEN),
            "query($first: Int) { contacts(first: $first) { nodes { id } } }",
            json!({ "first": "many" }),
        )
        .await;
    // Both the variable's coercion and the argument check report it.
    assert!(!variable.codes().is_empty());
    assert!(variable.codes().iter().all(|code| code == "BAD_USER_INPUT"));
    let date = app
        .query_with(
            Some(ADMIN_TOKEN),
            "query($t: DateTime) { contacts(filter: { updatedAt: { to: $t } }) { nodes { id } } }",
            json!({ "t": "2021-13-45" }),
        )
        .await;
    assert_eq!(date.codes(), vec!["BAD_USER_INPUT"]);
    let message = date.first_error()["message"].as_str().expect("message");
    assert!(message.contains("RFC 3339"), "{message}");
    assert_eq!(app.upstream_calls(), 0, "no bad input reached amoCRM");
}

#[tokio::test]
async fn argument_errors_carry_the_argument_path() {
    let app = TestApp::spawn().await;
    let reply = app
        .query(
            Some(ADMIN_TOKEN),
            r#"{ contacts(filter: { ids: ["1", "x"] }) { nodes { id } } }"#,
        )
        .await;
    assert_eq!(
        reply.first_error()["extensions"]["argument"],
        json!("filter.ids[1]")
    );
}

#[tokio::test]
async fn every_upstream_failure_shape_gets_its_code_and_the_next_request_works() {
    let cases = [
        (
            Failure::problem(400, "Bad Request", "invalid filter"),
            "UPSTREAM_ERROR",
            "invalid filter",
        ),
        (
            Failure::problem(403, "Forbidden", "no rights"),
            "FORBIDDEN",
            "rights",
        ),
        (Failure::html(403), "FORBIDDEN", "blocked"),
        (Failure::empty(403), "FORBIDDEN", "blocked"),
        (Failure::html(429), "RATE_LIMITED", "429"),
        (Failure::empty(500), "UPSTREAM_UNAVAILABLE", "500"),
        (Failure::html(502), "UPSTREAM_UNAVAILABLE", "502"),
        (
            Failure::problem(404, "Not Found", "x"),
            "UPSTREAM_ERROR",
            "404",
        ),
        (
            Failure::body(
                "application/hal+json",
                "{\"_embedded\": {\"contacts\": [tru",
            ),
            "UPSTREAM_ERROR",
            "not JSON",
        ),
        (
            Failure::body("text/html", "<html>maintenance</html>"),
            "UPSTREAM_ERROR",
            "not JSON",
        ),
        (
            Failure::body("application/hal+json", "[1, 2, 3]"),
            "UPSTREAM_ERROR",
            "object",
        ),
        (
            Failure::body(
                "application/hal+json",
                "{\"_embedded\": {\"contacts\": {}}}",
            ),
            "UPSTREAM_ERROR",
            "list",
        ),
    ];
    // Each request searches for something new, so that none is answered from the cache.
    let search = |text: String| {
        format!("{{ contacts(filter: {{ query: \"{text}\" }}) {{ nodes {{ id }} }} }}")
    };
    for (i, (failure, code, hint)) in cases.into_iter().enumerate() {
        // A gateway each: a block signature rightly opens the circuit for what follows.
        let app = TestApp::spawn().await;
        // Enough for every attempt: 429 and 5xx are retried twice.
        app.fake.fail_next(vec![failure.clone(); 3]);
        let reply = app
            .query(Some(ADMIN_TOKEN), &search(format!("failing {i}")))
            .await;
        assert_eq!(reply.codes(), vec![code], "{failure:?}");
        let message = reply.first_error()["message"].as_str().expect("message");
        assert!(message.contains(hint), "{failure:?}: {message}");
        assert!(
            !message.contains("<html"),
            "raw bodies are never shown: {message}"
        );
        app.fake.clear_failures();
        if code == "FORBIDDEN" && hint == "blocked" {
            continue;
        }
        let calls = app.upstream_calls();
        app.query(Some(ADMIN_TOKEN), &search(format!("next {i}")))
            .await
            .data();
        assert_eq!(app.upstream_calls(), calls + 1);
    }
}

#[tokio::test]
async fn a_slow_upstream_times_out_as_unavailable() {
    let options = FakeOptions {
        latency: Duration::from_secs(5),
        ..Default::default()
    };
    let app = TestApp::spawn_with(&["--upstream-timeout", "200ms"], options).await;
    let reply = app
        .query(Some(ADMIN_TOKEN), "{ contacts { nodes { id } } }")
        .await;
    assert_eq!(reply.codes(), vec!["UPSTREAM_UNAVAILABLE"]);
}

#[tokio::test]
async fn an_unreachable_upstream_is_unavailable() {
    let app = TestApp::spawn().await;
    // A port that was free a moment ago and has nothing listening now.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let (addr, _stop) = start_gateway(&format!("http://127.0.0.1:{port}"), &[]).await;
    let reply = TestApp::reply(
        app.http()
            .post(format!("http://{addr}/graphql"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "query": "{ contacts { nodes { id } } }" }))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(reply.codes(), vec!["UPSTREAM_UNAVAILABLE"]);
}

#[tokio::test]
async fn one_odd_contact_never_fails_its_page() {
    let app = TestApp::spawn().await;
    let page = json!({
        "_page": 1,
        "_links": {},
        "_embedded": { "contacts": [
            { "id": 1, "name": "Fine", "created_at": 1585758065 },
            { "name": "no id at all" },
            { "id": "2", "name": 42, "first_name": null, "is_deleted": "maybe", "created_at": "soon",
              "custom_fields_values": [{ "field_id": 5, "values": [{ "value": { "nested": true }, "enum": "WORK" }] },
                                       "not an object"],
              "_embedded": { "tags": [{ "id": 3 }], "catalog_elements": [{ "id": 4, "quantity": 1.5 }] } },
            7
        ] }
    });
    app.fake
        .fail_next([Failure::body("application/hal+json", page.to_string())]);
    let reply = app
        .query(
            Some(ADMIN_TOKEN),
            "{ contacts { nodes { id name firstName isDeleted createdAt tags { id name }
                customFieldsValues { fieldId values { value enumCode } } catalogElements { id quantity } } } }",
        )
        .await;
    assert_eq!(
        reply.data()["contacts"]["nodes"],
        json!([
            { "id": "1", "name": "Fine", "firstName": "", "isDeleted": false,
              "createdAt": "2020-04-01T16:21:05Z", "tags": [], "customFieldsValues": [],
              "catalogElements": [] },
            { "id": "2", "name": "", "firstName": "", "isDeleted": false,
              "createdAt": "1970-01-01T00:00:00Z", "tags": [{ "id": "3", "name": "" }],
              "customFieldsValues": [{ "fieldId": "5", "values": [{ "value": { "nested": true }, "enumCode": "WORK" }] }],
              "catalogElements": [{ "id": "4", "quantity": 1.5 }] }
        ])
    );
}

#[tokio::test]
async fn each_operation_limit_refuses_before_any_call() {
    let app = TestApp::spawn_with(
        &[
            "--max-depth",
            "4",
            "--max-aliases",
            "3",
            "--max-body-bytes",
            "2KiB",
            "--disable-introspection",
        ],
        FakeOptions::default(),
    )
    .await;
    let deep = app
        .query(
            Some(ADMIN_TOKEN),
            "{ contacts { edges { node { customFieldsValues { values { value } } } } } }",
        )
        .await;
    assert_eq!(deep.codes(), vec!["QUERY_TOO_DEEP"]);
    let aliases = app
        .query(
            Some(ADMIN_TOKEN),
            "{ a: contacts { nodes { id } } b: contacts { nodes { i: id n: name } } }",
        )
        .await;
    assert_eq!(aliases.codes(), vec!["TOO_MANY_ALIASES"]);
    let introspection = app
        .query(Some(ADMIN_TOKEN), "{ __schema { types { name } } }")
        .await;
    assert_eq!(introspection.codes(), vec!["INTROSPECTION_DISABLED"]);
    let big = format!("{{ contacts {{ nodes {{ id }} }} }} #{}", "x".repeat(4096));
    let too_big = app
        .http()
        .post(app.url("/graphql"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "query": big }))
        .send()
        .await
        .expect("an answer");
    assert_eq!(too_big.status(), 413);
    assert_eq!(app.upstream_calls(), 0);
    // Within every limit, the same gateway answers.
    app.query(
        Some(ADMIN_TOKEN),
        "{ a: contacts(first: 2) { nodes { id } } }",
    )
    .await
    .data();
}

/// Field errors as the GraphQL spec handles them: the key of an errored nullable field is
/// present and null; an errored non-null field nulls its nearest nullable ancestor, `data` at
/// the root. A missing key is not a null, so these check presence.
mod null_propagation {
    use super::*;

    /// The object's keys, sorted (the parsed `Value` sorts them anyway).
    fn keys(value: &Value) -> Vec<&str> {
        let mut keys: Vec<&str> = value
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        keys.sort_unstable();
        keys
    }

    #[tokio::test]
    async fn a_forbidden_responsible_user_is_a_present_null_in_every_node() {
        let app = TestApp::spawn().await;
        let reply = app
            .query(
                Some(MANAGER_TOKEN),
                "{ contacts(first: 3) { nodes { id responsibleUser { name } \
                 owner: responsibleUser { id } } } }",
            )
            .await;
        let nodes = reply.body["data"]["contacts"]["nodes"]
            .as_array()
            .expect("the list is there");
        assert_eq!(nodes.len(), 3);
        for node in nodes {
            assert_eq!(keys(node), ["id", "owner", "responsibleUser"], "{node}");
            assert_eq!(node["responsibleUser"], Value::Null);
            assert_eq!(node["owner"], Value::Null);
        }
        // One error for each field of each node, each with its own path.
        let paths: Vec<&Value> = reply.body["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|e| &e["path"])
            .collect();
        assert!(paths.contains(&&json!(["contacts", "nodes", 0, "responsibleUser"])));
        assert!(paths.contains(&&json!(["contacts", "nodes", 2, "owner"])));
        assert!(reply.codes().iter().all(|c| c == "FORBIDDEN"));
    }

    #[tokio::test]
    async fn the_only_root_field_failing_answers_its_key_as_null() {
        let app = TestApp::spawn().await;
        let reply = app
            .query(
                Some(ADMIN_TOKEN),
                r#"{ contact(id: "not-a-number") { id } }"#,
            )
            .await;
        assert_eq!(reply.body["data"], json!({ "contact": null }));
        assert_eq!(reply.codes(), ["BAD_USER_INPUT"]);
        assert_eq!(reply.first_error()["path"], json!(["contact"]));
        assert_eq!(app.upstream_calls(), 0);
    }

    #[tokio::test]
    async fn a_failed_non_null_root_field_nulls_data_beside_a_healthy_one() {
        let app = TestApp::spawn().await;
        let reply = app
            .query(
                Some(ADMIN_TOKEN),
                r#"{ contact(id: "7000000") { id } contacts(first: 251) { nodes { id } } }"#,
            )
            .await;
        let body = reply.body.as_object().expect("an object");
        assert!(body.contains_key("data"), "{}", reply.body);
        assert_eq!(reply.body["data"], Value::Null);
        assert_eq!(reply.codes(), ["BAD_USER_INPUT"]);
        assert_eq!(reply.first_error()["path"], json!(["contacts"]));
    }

    #[tokio::test]
    async fn an_aliased_failing_root_field_keeps_its_alias_as_null() {
        let app = TestApp::spawn().await;
        let reply = app
            .query(
                Some(ADMIN_TOKEN),
                r#"{ good: contact(id: "7000000") { id } bad: contact(id: "x") { id } }"#,
            )
            .await;
        assert_eq!(
            reply.body["data"],
            json!({ "good": { "id": "7000000" }, "bad": null })
        );
        assert_eq!(reply.first_error()["path"], json!(["bad"]));
    }
}
