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

#[tokio::test]
async fn the_callers_token_is_forwarded() {
    let app = TestApp::spawn().await;
    app.query(Some(ADMIN_TOKEN), QUERY).await.data();
    let requests = app.fake.requests();
    assert_eq!(requests[0].token.as_deref(), Some(ADMIN_TOKEN));
}

#[tokio::test]
async fn with_a_server_token_the_gateway_uses_its_own() {
    let app = TestApp::spawn_with(&["--access-token", ADMIN_TOKEN], FakeOptions::default()).await;
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
