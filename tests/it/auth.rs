//! Whose token reaches amoCRM, and what happens without one.

use amocrm_gateway::fake_amocrm::FakeOptions;

use crate::support::{ADMIN_TOKEN, TestApp, UNPAID_TOKEN};

const QUERY: &str = "{ contacts(first: 1) { nodes { id } } }";

#[tokio::test]
async fn without_a_token_forwarding_mode_answers_unauthenticated_and_calls_nothing() {
    let app = TestApp::spawn().await;
    let reply = app.query(None, QUERY).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.codes(), vec!["UNAUTHENTICATED"]);
    let basic = app
        .http()
        .post(app.url("/graphql"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .json(&serde_json::json!({ "query": QUERY }))
        .send()
        .await
        .expect("answer");
    assert_eq!(TestApp::reply(basic).await.codes(), vec!["UNAUTHENTICATED"]);
    assert_eq!(app.upstream_calls(), 0);
}

/// About 1 MiB of fields that would take the parser seconds in a debug build, ending in a
/// syntax error: had it been parsed, the answer would name that error.
fn long_broken_document() -> String {
    format!(
        "{{ {} contacts(",
        "contacts(first: 1) { nodes { id name } } ".repeat(25_000)
    )
}

#[tokio::test]
async fn strangers_documents_are_refused_before_they_are_parsed() {
    let flags = ["--max-document-bytes", "2MiB", "--max-body-bytes", "4MiB"];
    let forwarding = TestApp::spawn_with(&flags, FakeOptions::default()).await;
    let mut with_keys = vec![
        "--access-token",
        ADMIN_TOKEN,
        "--client-key",
        "key-one-1234",
    ];
    with_keys.extend_from_slice(&flags);
    let keyed = TestApp::spawn_with(&with_keys, FakeOptions::default()).await;
    let document = long_broken_document();
    for (app, key) in [
        (&forwarding, None),
        (&keyed, None),
        (&keyed, Some("not-a-key-000")),
    ] {
        let started = std::time::Instant::now();
        let reply = app.query(key, &document).await;
        let took = started.elapsed();
        assert_eq!(reply.codes(), vec!["UNAUTHENTICATED"], "{key:?}");
        assert!(
            reply.body.get("data").is_none(),
            "a request error: {}",
            reply.first_error()
        );
        // Parsing it took seconds in a debug build; refusing it takes milliseconds (the margin
        // is for a busy machine).
        assert!(took < std::time::Duration::from_secs(1), "{took:?}");
        assert_eq!(app.upstream_calls(), 0);
    }
    // With a key, the same document reaches the next check: it has too many tokens.
    let reply = keyed.query(Some("key-one-1234"), &document).await;
    assert_eq!(reply.status, 413, "{}", reply.first_error());
    assert_eq!(reply.codes(), vec!["BAD_REQUEST"]);
}

#[tokio::test]
async fn the_callers_token_is_forwarded() {
    let app = TestApp::spawn().await;
    app.query(Some(ADMIN_TOKEN), QUERY).await.data();
    let requests = app.fake.requests();
    assert_eq!(requests[0].token.as_deref(), Some(ADMIN_TOKEN));
}

#[tokio::test]
async fn with_a_server_token_the_gateway_uses_its_own() {
    let app = TestApp::spawn_with(
        &["--access-token", ADMIN_TOKEN, "--allow-anonymous"],
        FakeOptions::default(),
    )
    .await;
    app.query(None, QUERY).await.data();
    app.query(Some("some-client-credential"), QUERY)
        .await
        .data();
    let tokens: Vec<_> = app.fake.requests().into_iter().map(|r| r.token).collect();
    assert_eq!(
        tokens,
        vec![Some(ADMIN_TOKEN.to_owned())],
        "one shared scope, one call"
    );
}

#[tokio::test]
async fn amocrm_401_is_unauthenticated_and_402_is_payment_required() {
    let app = TestApp::spawn().await;
    let reply = app.query(Some("revoked-token"), QUERY).await;
    assert_eq!(reply.codes(), vec!["UNAUTHENTICATED"]);
    let message = reply.first_error()["message"].as_str().expect("message");
    assert!(message.contains("401"), "{message}");
    assert!(
        !message.contains("revoked-token"),
        "the token never appears in an error"
    );
    let reply = app.query(Some(UNPAID_TOKEN), QUERY).await;
    assert_eq!(reply.codes(), vec!["PAYMENT_REQUIRED"]);
    assert_eq!(reply.header("cache-control"), "no-store");
}

#[tokio::test]
async fn client_keys_are_required_accepted_and_never_forwarded() {
    let app = TestApp::spawn_with(
        &[
            "--access-token",
            ADMIN_TOKEN,
            "--client-key",
            "key-one-1234",
            "--client-key",
            "key-two-5678",
        ],
        FakeOptions::default(),
    )
    .await;
    for key in [None, Some("not-a-key-000")] {
        assert_eq!(app.query(key, QUERY).await.codes(), vec!["UNAUTHENTICATED"]);
    }
    assert_eq!(app.upstream_calls(), 0, "no key, no upstream call");
    app.query(Some("key-two-5678"), QUERY).await.data();
    app.query(
        Some("key-one-1234"),
        "{ contacts(first: 2) { nodes { id } } }",
    )
    .await
    .data();
    let tokens: Vec<_> = app.fake.requests().into_iter().map(|r| r.token).collect();
    assert!(
        tokens.iter().all(|t| t.as_deref() == Some(ADMIN_TOKEN)),
        "{tokens:?}"
    );
}

#[tokio::test]
async fn a_server_token_without_client_keys_must_be_meant() {
    let cli = <amocrm_gateway::config::Cli as clap::Parser>::try_parse_from([
        "amocrm-gateway",
        "--listen",
        "127.0.0.1:0",
        "--upstream-url",
        "http://127.0.0.1:9",
        "--access-token",
        ADMIN_TOKEN,
    ])
    .expect("flags");
    let refused = amocrm_gateway::Gateway::build(cli.serve)
        .await
        .err()
        .expect("refused");
    assert!(refused.to_string().contains("--client-key"), "{refused}");
}
