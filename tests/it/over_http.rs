//! GraphQL over HTTP: the media type answered with, request errors without a `data` entry
//! (HTTP 400 as `application/graphql-response+json`), malformed requests refused with
//! `BAD_REQUEST` and a 4xx status, and mutations refused over GET.

use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, Reply, TestApp};

const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";
const JSON: &str = "application/json";
/// What Apollo Client 4 sends.
const APOLLO_ACCEPT: &str = "application/graphql-response+json,application/json;q=0.9";

/// A POST of `body` as it is, with the given headers.
async fn post(
    app: &TestApp,
    accept: Option<&str>,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> Reply {
    let mut request = app
        .http()
        .post(app.url("/graphql"))
        .bearer_auth(ADMIN_TOKEN)
        .body(body);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    TestApp::reply(request.send().await.expect("the gateway answers")).await
}

async fn post_json(app: &TestApp, accept: Option<&str>, body: Value) -> Reply {
    post(app, accept, Some(JSON), body.to_string()).await
}

async fn get(app: &TestApp, accept: Option<&str>, params: &[(&str, &str)]) -> Reply {
    let mut request = app
        .http()
        .get(app.url("/graphql"))
        .bearer_auth(ADMIN_TOKEN)
        .query(params);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    TestApp::reply(request.send().await.expect("the gateway answers")).await
}

fn has_data_entry(reply: &Reply) -> bool {
    reply
        .body
        .as_object()
        .unwrap_or_else(|| panic!("a JSON object: {}", reply.body))
        .contains_key("data")
}

#[tokio::test]
async fn the_answer_is_graphql_response_json_when_the_client_prefers_it() {
    let app = TestApp::spawn().await;
    let query = json!({ "query": "{ __typename }" });
    for (accept, expected) in [
        (Some(APOLLO_ACCEPT), GRAPHQL_RESPONSE),
        (
            Some("application/graphql-response+json, application/graphql+json, application/json"),
            GRAPHQL_RESPONSE,
        ),
        (Some(GRAPHQL_RESPONSE), GRAPHQL_RESPONSE),
        (Some(JSON), JSON),
        (Some("application/json, multipart/mixed"), JSON),
        (Some("*/*"), JSON),
        (None, JSON),
    ] {
        let reply = post_json(&app, accept, query.clone()).await;
        assert_eq!(reply.status, 200, "{accept:?}");
        assert_eq!(reply.header("content-type"), expected, "{accept:?}");
        assert_eq!(reply.data()["__typename"], "Query");
    }
    let over_get = get(&app, Some(APOLLO_ACCEPT), &[("query", "{ __typename }")]).await;
    assert_eq!(over_get.header("content-type"), GRAPHQL_RESPONSE);
    assert_eq!(over_get.data()["__typename"], "Query");

    let neither = post_json(&app, Some("text/html"), query).await;
    assert_eq!(neither.status, 406);
    assert_eq!(neither.header("content-type"), JSON);
    assert_eq!(neither.codes(), vec!["BAD_REQUEST"]);
    assert!(!has_data_entry(&neither));
}

#[tokio::test]
async fn request_errors_have_no_data_entry_and_are_400_only_as_graphql_response_json() {
    let app = TestApp::spawn().await;
    let cases = [
        (
            "a syntax error",
            json!({ "query": "{ contacts { nodes { id }" }),
        ),
        (
            "a validation error",
            json!({ "query": "{ contacts { nodes { nope } } }" }),
        ),
        (
            "a variable that does not coerce",
            json!({
                "query": "query($first: Int!) { contacts(first: $first) { nodes { id } } }",
                "variables": { "first": "many" },
            }),
        ),
        (
            "a variable left out",
            json!({ "query": "query($id: ID!) { contact(id: $id) { id } }" }),
        ),
        (
            "an unknown persisted query",
            json!({ "extensions": { "persistedQuery": { "version": 1, "sha256Hash": "0".repeat(64) } } }),
        ),
        (
            "a subscription, which plain JSON cannot carry",
            json!({ "query": "subscription { __typename }" }),
        ),
    ];
    for (case, body) in &cases {
        for (accept, status, content_type) in [
            (Some(JSON), 200, JSON),
            (None, 200, JSON),
            (Some(APOLLO_ACCEPT), 400, GRAPHQL_RESPONSE),
        ] {
            let reply = post_json(&app, accept, body.clone()).await;
            assert_eq!(reply.status, status, "{case}, {accept:?}: {}", reply.body);
            assert_eq!(reply.header("content-type"), content_type, "{case}");
            assert!(
                !has_data_entry(&reply),
                "{case}, {accept:?}: {}",
                reply.body
            );
            assert!(!reply.codes().is_empty(), "{case}: {}", reply.body);
            assert_eq!(reply.header("cache-control"), "no-store", "{case}");
        }
    }
    assert_eq!(app.upstream_calls(), 0);
}

#[tokio::test]
async fn field_errors_keep_200_and_the_data_entry_in_both_media_types() {
    let app = TestApp::spawn().await;
    // A token amoCRM refuses: the resolver's UNAUTHENTICATED belongs to the field.
    for accept in [JSON, APOLLO_ACCEPT] {
        let request = app
            .http()
            .post(app.url("/graphql"))
            .bearer_auth("revoked-token")
            .header("accept", accept)
            .json(&json!({ "query": "{ contact(id: \"1\") { id } }" }));
        let reply = TestApp::reply(request.send().await.expect("the gateway answers")).await;
        assert_eq!(reply.status, 200, "{accept}: {}", reply.body);
        assert_eq!(reply.codes(), vec!["UNAUTHENTICATED"]);
        assert!(
            reply.first_error().get("path").is_some(),
            "{accept}: {}",
            reply.body
        );
        assert!(has_data_entry(&reply), "{accept}: {}", reply.body);
    }
}

#[tokio::test]
async fn a_syntax_error_is_one_sentence_with_its_location() {
    let app = TestApp::spawn().await;
    let reply = post_json(&app, None, json!({ "query": "{ contacts { nodes { id }" })).await;
    assert_eq!(reply.codes(), vec!["BAD_USER_INPUT"]);
    let error = reply.first_error();
    let message = error["message"].as_str().expect("a message");
    assert!(
        message.starts_with("Syntax error at line 1, column "),
        "{message}"
    );
    assert!(!message.contains('\n'), "{message:?}");
    assert!(!message.contains("-->"), "{message:?}");
    let location = &error["locations"][0];
    assert_eq!(location["line"], 1, "{error}");
    assert!(
        location["column"].as_u64().is_some_and(|c| c > 1),
        "{error}"
    );
    let column = location["column"].to_string();
    assert!(message.contains(&format!("column {column}:")), "{message}");
}

#[tokio::test]
async fn an_error_reported_twice_appears_once() {
    let app = TestApp::spawn().await;
    let reply = post_json(
        &app,
        None,
        json!({ "query": "subscription { contactChanged { id } }" }),
    )
    .await;
    let messages: Vec<&str> = reply.body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert_eq!(
        messages,
        vec!["Subscriptions are not supported on this transport."],
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn malformed_posts_get_bad_request_naming_what_is_wrong() {
    let app = TestApp::spawn().await;
    let json = Some(JSON);
    let cases: [(Option<&str>, &str, u16, &str); 17] = [
        (json, r#"{ "not a JSON"#, 400, "not valid JSON"),
        (json, "", 400, "the body is empty"),
        (
            json,
            r#"[{"query": "{ __typename }"}]"#,
            400,
            "batched requests",
        ),
        (json, r#""{ __typename }""#, 400, "must be a JSON object"),
        (
            json,
            r#"{"qeury": "{ __typename }"}"#,
            400,
            "query: is required",
        ),
        (
            json,
            r#"{"query": {"obj": "ect"}}"#,
            400,
            "query: must be a string",
        ),
        (json, r#"{"query": 0}"#, 400, "query: must be a string"),
        (json, r#"{"query": false}"#, 400, "query: must be a string"),
        (
            json,
            r#"{"query": ["array"]}"#,
            400,
            "query: must be a string",
        ),
        (
            json,
            r#"{"query": "{ __typename }", "operationName": 0}"#,
            400,
            "operationName: must be a string",
        ),
        (
            json,
            r#"{"query": "{ __typename }", "variables": "string"}"#,
            400,
            "variables: must be an object",
        ),
        (
            json,
            r#"{"query": "{ __typename }", "variables": ["array"]}"#,
            400,
            "variables: must be an object",
        ),
        (
            json,
            r#"{"query": "{ __typename }", "extensions": 0}"#,
            400,
            "extensions: must be an object",
        ),
        (
            None,
            r#"{"query": "{ __typename }"}"#,
            415,
            "Content-Type: application/json",
        ),
        (
            Some("application/x-www-form-urlencoded"),
            "query=%7B__typename%7D",
            415,
            "not `application/x-www-form-urlencoded`",
        ),
        (
            Some("application/graphql"),
            "{ __typename }",
            415,
            "not `application/graphql`",
        ),
        (
            Some("text/plain"),
            r#"{"query": "{ __typename }"}"#,
            415,
            "not `text/plain`",
        ),
    ];
    for (content_type, body, status, message) in cases {
        for (accept, answered_as) in [(JSON, JSON), (APOLLO_ACCEPT, GRAPHQL_RESPONSE)] {
            let reply = post(&app, Some(accept), content_type, body).await;
            let case = format!("{content_type:?} {body:?} ({accept})");
            assert_eq!(reply.status, status, "{case}: {}", reply.body);
            assert_eq!(reply.header("content-type"), answered_as, "{case}");
            assert_eq!(reply.codes(), vec!["BAD_REQUEST"], "{case}: {}", reply.body);
            assert!(!has_data_entry(&reply), "{case}");
            let got = reply.first_error()["message"].as_str().expect("a message");
            assert!(
                got.contains(message),
                "{case}: {got:?} should say {message:?}"
            );
            assert!(!got.contains("InvalidRequest"), "{case}: {got}");
        }
    }
    assert_eq!(app.upstream_calls(), 0);
}

#[tokio::test]
async fn malformed_gets_get_bad_request_naming_the_parameter() {
    let app = TestApp::spawn().await;
    for (params, message) in [
        (vec![], "query: is required"),
        (vec![("operationName", "Q")], "query: is required"),
        (
            vec![("query", "{ __typename }"), ("variables", "{")],
            "variables: must be a JSON object",
        ),
        (
            vec![("query", "{ __typename }"), ("variables", "[1]")],
            "variables: must be an object",
        ),
        (
            vec![("query", "{ __typename }"), ("extensions", "\"x\"")],
            "extensions: must be an object",
        ),
        (
            vec![("query", "{ __typename }"), ("query", "{ __typename }")],
            "query: is given more than once",
        ),
    ] {
        let reply = get(&app, None, &params).await;
        assert_eq!(reply.status, 400, "{params:?}: {}", reply.body);
        assert_eq!(reply.header("content-type"), JSON);
        assert_eq!(reply.codes(), vec!["BAD_REQUEST"], "{params:?}");
        assert!(!has_data_entry(&reply));
        let got = reply.first_error()["message"].as_str().expect("a message");
        assert!(got.starts_with(message), "{params:?}: {got}");
    }
}

#[tokio::test]
async fn a_mutation_over_get_is_405_allowing_post() {
    let app = TestApp::spawn().await;
    for (params, accept) in [
        (vec![("query", "mutation { __typename }")], None),
        (
            vec![("query", "mutation { __typename }")],
            Some(APOLLO_ACCEPT),
        ),
        (
            vec![
                ("query", "query A { __typename } mutation B { __typename }"),
                ("operationName", "B"),
            ],
            None,
        ),
    ] {
        let reply = get(&app, accept, &params).await;
        assert_eq!(reply.status, 405, "{params:?}: {}", reply.body);
        assert_eq!(reply.header("allow"), "POST");
        assert_eq!(reply.codes(), vec!["BAD_REQUEST"]);
        assert!(!has_data_entry(&reply));
    }
    // The query of the same document is not refused for its method: it runs.
    let query = get(
        &app,
        None,
        &[
            ("query", "query A { __typename } mutation B { __typename }"),
            ("operationName", "A"),
        ],
    )
    .await;
    assert_eq!(query.status, 200, "{}", query.body);
    assert_eq!(query.body["data"], json!({ "__typename": "Query" }));
}

#[tokio::test]
async fn cached_answers_keep_the_negotiated_media_type() {
    let app = TestApp::spawn().await;
    let query = json!({ "query": "{ contacts(first: 2) { nodes { id } } }" });
    let first = post_json(&app, Some(JSON), query.clone()).await;
    assert_eq!(first.header("x-cache"), "MISS");
    let json_hit = post_json(&app, Some(JSON), query.clone()).await;
    assert_eq!(json_hit.header("x-cache"), "HIT");
    assert_eq!(json_hit.header("content-type"), JSON);
    let other_type = post_json(&app, Some(APOLLO_ACCEPT), query.clone()).await;
    assert_eq!(other_type.header("content-type"), GRAPHQL_RESPONSE);
    let other_hit = post_json(&app, Some(APOLLO_ACCEPT), query).await;
    assert_eq!(other_hit.header("x-cache"), "HIT");
    assert_eq!(other_hit.header("content-type"), GRAPHQL_RESPONSE);
    assert_eq!(other_hit.body, first.body);
    assert_eq!(app.upstream_calls(), 1, "one page, then the cache");
}

/// The spec coerces every declared variable before execution; async-graphql checks a value
/// only where a field reads it. A variable of the wrong type that no field reads is still a
/// request error, with no upstream call.
#[tokio::test]
async fn a_variable_that_does_not_coerce_is_a_request_error_even_unused() {
    let app = TestApp::spawn().await;
    for (query, variables) in [
        ("query($x: Int!) { __typename }", json!({ "x": "a" })),
        (
            "query($f: ContactFilter) { contacts(first: 1) { nodes { id } } }",
            json!({ "f": { "updatedAt": { "from": "yesterday" } } }),
        ),
        (
            "query($on: Boolean!, $n: Int) { contacts(first: 1) @include(if: $on) { nodes { id } } }",
            json!({ "on": false, "n": 1.5 }),
        ),
    ] {
        let reply = post_json(
            &app,
            Some(GRAPHQL_RESPONSE),
            json!({ "query": query, "variables": variables }),
        )
        .await;
        assert_eq!(reply.status, 400, "{}", reply.body);
        assert!(!has_data_entry(&reply), "{}", reply.body);
        assert_eq!(reply.codes(), ["BAD_USER_INPUT"]);
        let message = reply.first_error()["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("variables."), "{message}");
    }
    assert_eq!(app.upstream_calls(), 0);
}

/// One response key selected as two fields through a fragment passed async-graphql's
/// validation, and whichever ran first filled the key. It is a validation error, before any
/// upstream call.
#[tokio::test]
async fn one_response_key_for_two_fields_is_a_request_error() {
    let app = TestApp::spawn().await;
    let reply = post_json(
        &app,
        Some(GRAPHQL_RESPONSE),
        json!({ "query": r#"{ c: contact(id: "7000000") { id } ... on Query { c: contact(id: "7000007") { id } } }"# }),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(!has_data_entry(&reply), "{}", reply.body);
    assert_eq!(reply.codes(), ["BAD_USER_INPUT"]);
    assert_eq!(app.upstream_calls(), 0);
}

#[tokio::test]
async fn a_document_longer_than_the_limit_is_413_before_it_is_parsed() {
    let app = TestApp::spawn().await;
    // Valid, and cheap to parse: only its length (a comment costs no tokens) exceeds 64 KiB.
    let long = format!(
        "{{ contacts(first: 1) {{ nodes {{ id }} }} }}\n#{}",
        "x".repeat(64 * 1024)
    );
    for accept in [None, Some(GRAPHQL_RESPONSE)] {
        let reply = post_json(&app, accept, json!({ "query": long })).await;
        assert_eq!(reply.status, 413, "{}", reply.body);
        assert_eq!(reply.codes(), vec!["BAD_REQUEST"]);
        let message = reply.first_error()["message"].as_str().expect("message");
        assert!(message.contains("--max-document-bytes"), "{message}");
        assert!(!has_data_entry(&reply));
    }
    assert_eq!(app.upstream_calls(), 0);
    // GET too (a URL holds less than 64 KiB, hence the lower limit).
    let small = TestApp::spawn_with(&["--max-document-bytes", "1KiB"], Default::default()).await;
    let over_get = get(&small, None, &[("query", &long[..2048])]).await;
    assert_eq!(over_get.status, 413, "{}", over_get.body);
    assert_eq!(over_get.codes(), vec!["BAD_REQUEST"]);
    // Just within the limit, it runs.
    let within = format!(
        "{{ contacts(first: 1) {{ nodes {{ id }} }} }}\n#{}",
        "x".repeat(60 * 1024)
    );
    post_json(&app, None, json!({ "query": within }))
        .await
        .data();
}
