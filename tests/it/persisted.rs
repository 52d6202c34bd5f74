//! Automatic persisted queries as Apollo Client speaks them, over POST and GET, and the
//! `--persisted-only` mode.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{ADMIN_TOKEN, RedisServer, Reply, TestApp};

const QUERY: &str = "query Page($first: Int!) { contacts(first: $first) { nodes { id name } } }";

fn hash(document: &str) -> String {
    hex::encode(Sha256::digest(document.as_bytes()))
}

fn persisted(document: &str) -> Value {
    json!({ "persistedQuery": { "version": 1, "sha256Hash": hash(document) } })
}

async fn post(app: &TestApp, body: Value) -> Reply {
    post_as(app, ADMIN_TOKEN, body).await
}

async fn post_as(app: &TestApp, token: &str, body: Value) -> Reply {
    let request = app
        .http()
        .post(app.url("/graphql"))
        .bearer_auth(token)
        .json(&body);
    TestApp::reply(request.send().await.expect("the gateway answers")).await
}

async fn get(app: &TestApp, params: &[(&str, String)]) -> Reply {
    let request = app
        .http()
        .get(app.url("/graphql"))
        .bearer_auth(ADMIN_TOKEN)
        .query(params);
    TestApp::reply(request.send().await.expect("the gateway answers")).await
}

#[tokio::test]
async fn an_unknown_hash_is_asked_for_then_the_hash_alone_runs_over_post_and_get() {
    let app = TestApp::spawn().await;
    let variables = json!({ "first": 2 });

    let unknown = post(
        &app,
        json!({ "extensions": persisted(QUERY), "variables": variables }),
    )
    .await;
    assert_eq!(unknown.codes(), vec!["PERSISTED_QUERY_NOT_FOUND"]);
    assert_eq!(unknown.first_error()["message"], "PersistedQueryNotFound");
    assert_eq!(unknown.header("cache-control"), "no-store");
    assert_eq!(app.upstream_calls(), 0);

    let registered = post(
        &app,
        json!({ "query": QUERY, "extensions": persisted(QUERY), "variables": variables }),
    )
    .await;
    let data = registered.data().clone();
    assert_eq!(data["contacts"]["nodes"].as_array().map(Vec::len), Some(2));

    let by_hash = post(
        &app,
        json!({ "extensions": persisted(QUERY), "variables": variables }),
    )
    .await;
    assert_eq!(by_hash.data(), &data);

    let by_get = get(
        &app,
        &[
            ("operationName", "Page".to_owned()),
            ("variables", variables.to_string()),
            ("extensions", persisted(QUERY).to_string()),
        ],
    )
    .await;
    assert_eq!(by_get.data(), &data);
    assert_eq!(by_get.header("vary"), "Authorization, Accept");
    assert!(
        by_get
            .header("cache-control")
            .starts_with("private, max-age=")
    );
    assert_eq!(app.upstream_calls(), 1, "one page, then the cache");
}

#[tokio::test]
async fn a_hash_that_does_not_match_its_document_is_refused() {
    let app = TestApp::spawn().await;
    let reply = post(
        &app,
        json!({ "query": QUERY, "extensions": persisted("{ other }"), "variables": { "first": 1 } }),
    )
    .await;
    assert_eq!(reply.codes(), vec!["BAD_USER_INPUT"]);
    assert!(
        reply.first_error()["message"]
            .as_str()
            .unwrap_or_default()
            .contains("sha256Hash")
    );
    for bad in [
        json!({ "persistedQuery": { "version": 2, "sha256Hash": hash(QUERY) } }),
        json!({ "persistedQuery": { "version": 1, "sha256Hash": "xyz" } }),
        json!({ "persistedQuery": "yes" }),
    ] {
        let reply = post(&app, json!({ "extensions": bad })).await;
        assert_eq!(reply.codes(), vec!["BAD_USER_INPUT"], "{}", reply.body);
    }
    assert_eq!(app.upstream_calls(), 0);
}

#[tokio::test]
async fn get_reads_the_operation_name_clients_send() {
    let app = TestApp::spawn().await;
    let document =
        "query A { contacts(first: 1) { nodes { id } } } query B { contact(id: \"1\") { id } }";
    let reply = get(
        &app,
        &[
            ("query", document.to_owned()),
            ("operationName", "A".to_owned()),
        ],
    )
    .await;
    assert_eq!(
        reply.data()["contacts"]["nodes"].as_array().map(Vec::len),
        Some(1)
    );
    let bad = get(
        &app,
        &[
            ("query", "{ __typename }".to_owned()),
            ("variables", "{".to_owned()),
        ],
    )
    .await;
    // Not a GraphQL request at all, so BAD_REQUEST with HTTP 400, naming the parameter.
    assert_eq!(bad.status, 400);
    assert_eq!(bad.codes(), vec!["BAD_REQUEST"]);
    assert!(
        bad.first_error()["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("variables:")
    );
}

#[tokio::test]
async fn persisted_only_runs_the_manifest_and_refuses_new_documents() {
    let manifest = std::env::temp_dir().join(format!("apq-manifest-{}.json", std::process::id()));
    let body = json!({
        "format": "apollo-persisted-query-manifest",
        "version": 1,
        "operations": [{ "id": hash(QUERY), "name": "Page", "type": "query", "body": QUERY }]
    });
    std::fs::write(&manifest, body.to_string()).expect("a temporary file");
    let path = manifest.to_string_lossy().into_owned();
    let app = TestApp::spawn_with(
        &["--persisted-queries", &path, "--persisted-only"],
        Default::default(),
    )
    .await;

    let known = post(
        &app,
        json!({ "extensions": persisted(QUERY), "variables": { "first": 1 } }),
    )
    .await;
    assert_eq!(
        known.data()["contacts"]["nodes"].as_array().map(Vec::len),
        Some(1)
    );

    let other = "{ contacts(first: 3) { nodes { id } } }";
    for body in [
        json!({ "query": other }),
        json!({ "query": other, "extensions": persisted(other) }),
        json!({ "extensions": persisted(other) }),
    ] {
        let reply = post(&app, body).await;
        assert_eq!(
            reply.codes(),
            vec!["PERSISTED_QUERY_REQUIRED"],
            "{}",
            reply.body
        );
    }
    assert_eq!(app.upstream_calls(), 1);
    let _ = std::fs::remove_file(manifest);
}

/// Sends hash and document with a bearer string amoCRM refuses; returns the document.
async fn register_as_a_stranger(app: &TestApp) -> &'static str {
    let document = "query Junk { contacts(first: 1) { nodes { id } } }";
    let refused = post_as(
        app,
        "junk-bearer-string",
        json!({ "query": document, "extensions": persisted(document) }),
    )
    .await;
    assert_eq!(refused.codes(), vec!["UNAUTHENTICATED"]);
    document
}

/// Any bearer string once registered documents, each kept for days, without a bound: about
/// 10 MiB a second from one client. Now only a token amoCRM has accepted registers, and each
/// registrant only so many documents.
#[tokio::test]
async fn only_verified_callers_register_and_each_only_so_many() {
    let app = TestApp::spawn().await;
    let junk_document = register_as_a_stranger(&app).await;
    let by_hash = post(&app, json!({ "extensions": persisted(junk_document) })).await;
    assert_eq!(
        by_hash.codes(),
        vec!["PERSISTED_QUERY_NOT_FOUND"],
        "a junk token stored nothing"
    );

    // amoCRM accepts the admin's token, which may then register: up to its quota.
    app.query(Some(ADMIN_TOKEN), "{ contacts(first: 1) { nodes { id } } }")
        .await
        .data();
    let documents: Vec<String> = (0..260)
        .map(|i| format!("query Q{i} {{ __typename }}"))
        .collect();
    for document in &documents {
        let reply = post(
            &app,
            json!({ "query": document, "extensions": persisted(document) }),
        )
        .await;
        reply.data();
    }
    let first = post(&app, json!({ "extensions": persisted(&documents[0]) })).await;
    assert_eq!(first.data()["__typename"], "Query");
    let last = post(&app, json!({ "extensions": persisted(&documents[259]) })).await;
    assert_eq!(
        last.codes(),
        vec!["PERSISTED_QUERY_NOT_FOUND"],
        "past the quota nothing is stored, though the query ran"
    );
}

/// With Redis, any bearer string's documents were shared with every replica for 7 days. Now
/// only a verified caller's document reaches Redis, kept a day from its last use.
#[tokio::test]
async fn with_redis_only_verified_documents_are_shared_and_for_a_day() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let flags = [
        "--redis-url",
        url.as_str(),
        "--scope-secret",
        "shared-scope-secret",
        "--redis-timeout",
        "2s",
    ];
    let app = TestApp::spawn_with(&flags, Default::default()).await;
    register_as_a_stranger(&app).await;
    let mine = "query Mine { contacts(first: 2) { nodes { id } } }";
    post(
        &app,
        json!({ "query": mine, "extensions": persisted(mine) }),
    )
    .await
    .data();

    let mut conn = redis::Client::open(url)
        .expect("a URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*apq:*")
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert_eq!(
        keys.len(),
        1,
        "only the verified caller's document: {keys:?}"
    );
    assert!(keys[0].ends_with(&hash(mine)), "{keys:?}");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .expect("TTL");
    assert!(ttl > 0 && ttl <= 24 * 3600, "kept for {ttl} s");
}
