//! Webhooks and purges drop what they make stale; the response cache never outlives its pages.

use amocrm_gateway::fake_amocrm::FakeOptions;

use crate::support::{ADMIN_TOKEN, MANAGER_TOKEN, TestApp, ids};

const SECRET: &str = "hook-secret-123";
const ADMIN: &str = "admin-token-456";
const QUERY: &str = "{ contacts(first: 10) { nodes { id name } } }";
const CACHED: &str = "gateway_graphql_requests_total{outcome=\"cached\"}";

async fn spawn() -> TestApp {
    TestApp::spawn_with(
        &["--webhook-secret", SECRET, "--admin-token", ADMIN],
        FakeOptions::default(),
    )
    .await
}

/// Caches the query for both tokens and checks both are hits.
async fn warm(app: &TestApp) {
    for token in [ADMIN_TOKEN, MANAGER_TOKEN] {
        app.query(Some(token), QUERY).await.data();
        assert_eq!(app.query(Some(token), QUERY).await.header("x-cache"), "HIT");
    }
    app.fake.clear_requests();
}

async fn cache_states(app: &TestApp) -> Vec<String> {
    let mut states = Vec::new();
    for token in [ADMIN_TOKEN, MANAGER_TOKEN] {
        states.push(
            app.query(Some(token), QUERY)
                .await
                .header("x-cache")
                .to_owned(),
        );
    }
    states
}

#[tokio::test]
async fn an_identical_operation_is_answered_without_executing_it() {
    let app = spawn().await;
    let first = app.query(Some(ADMIN_TOKEN), QUERY).await;
    let page_lookups = "gateway_cache_lookups_total{cache=\"pages\",result=\"miss\"}";
    assert_eq!(app.metric(page_lookups).await, 1.0);
    let second = app.query(Some(ADMIN_TOKEN), QUERY).await;
    assert_eq!(second.body, first.body);
    assert_eq!(app.metric(CACHED).await, 1.0, "answered from stored bytes");
    assert_eq!(
        app.metric("gateway_cache_lookups_total{cache=\"pages\",result=\"hit\"}")
            .await,
        0.0,
        "no resolver ran"
    );
    // Other variables are another operation.
    let other = app
        .query_with(
            Some(ADMIN_TOKEN),
            "query($n: Int) { contacts(first: $n) { nodes { id name } } }",
            serde_json::json!({ "n": 3 }),
        )
        .await;
    other.data();
    assert_eq!(app.metric(CACHED).await, 1.0);
}

#[tokio::test]
async fn responses_with_errors_are_not_stored() {
    let app = spawn().await;
    let query = r#"{ good: contacts(first: 2) { nodes { id } } bad: contact(id: "x") { id } }"#;
    for _ in 0..2 {
        assert_eq!(
            app.query(Some(ADMIN_TOKEN), query).await.codes(),
            vec!["BAD_USER_INPUT"]
        );
    }
    assert_eq!(app.metric(CACHED).await, 0.0);
}

#[tokio::test]
async fn a_contact_webhook_drops_pages_and_responses_of_every_scope() {
    let app = spawn().await;
    warm(&app).await;
    let id = app.fake.visible_ids(ADMIN_TOKEN)[0];
    app.fake.rename_contact(id, "Новое имя");
    let answer = app
        .post(
            &format!("/webhooks/amocrm/{SECRET}"),
            None,
            &format!("contacts%5Bupdate%5D%5B0%5D%5Bid%5D={id}&contacts[update][0][name]=x&account[subdomain]=demo"),
        )
        .await;
    assert_eq!(answer.status(), 200);
    assert_eq!(cache_states(&app).await, vec!["MISS", "MISS"]);
    let reply = app.query(Some(ADMIN_TOKEN), QUERY).await;
    assert_eq!(reply.data()["contacts"]["nodes"][0]["name"], "Новое имя");
    assert_eq!(app.upstream_calls(), 2, "one download per scope");
}

#[tokio::test]
async fn webhooks_with_a_wrong_secret_or_no_id_change_nothing() {
    let app = spawn().await;
    warm(&app).await;
    let wrong = app
        .post(
            "/webhooks/amocrm/not-the-secret",
            None,
            "contacts[update][0][id]=7000000",
        )
        .await;
    assert_eq!(wrong.status(), 404);
    let unreadable = app
        .post(
            &format!("/webhooks/amocrm/{SECRET}"),
            None,
            "account[subdomain]=demo",
        )
        .await;
    assert_eq!(unreadable.status(), 400);
    let unused = app
        .post(
            &format!("/webhooks/amocrm/{SECRET}"),
            None,
            "tasks[add][0][id]=5&leads[status][0][id]=9",
        )
        .await;
    assert_eq!(unused.status(), 200, "amoCRM would retry anything else");
    assert_eq!(cache_states(&app).await, vec!["HIT", "HIT"]);
    assert_eq!(app.upstream_calls(), 0);
}

#[tokio::test]
async fn a_lead_link_webhook_drops_only_pages_that_embed_leads() {
    let app = spawn().await;
    let with_leads = "{ contacts(first: 4) { nodes { id leads { id } } } }";
    let without = "{ contacts(first: 4, filter: { query: \"Иван\" }) { nodes { id } } }";
    app.query(Some(ADMIN_TOKEN), with_leads).await.data();
    app.query(Some(ADMIN_TOKEN), without).await.data();
    let answer = app
        .post(
            &format!("/webhooks/amocrm/{SECRET}"),
            None,
            "leads[add][0][id]=20000000",
        )
        .await;
    assert_eq!(answer.status(), 200);
    assert_eq!(
        app.query(Some(ADMIN_TOKEN), with_leads)
            .await
            .header("x-cache"),
        "MISS"
    );
    assert_eq!(
        app.query(Some(ADMIN_TOKEN), without)
            .await
            .header("x-cache"),
        "HIT"
    );
}

#[tokio::test]
async fn the_admin_purge_needs_the_admin_token() {
    let app = spawn().await;
    warm(&app).await;
    assert_eq!(app.post("/admin/cache/purge", None, "").await.status(), 401);
    assert_eq!(
        app.post("/admin/cache/purge", Some("wrong-token"), "")
            .await
            .status(),
        401
    );
    assert_eq!(cache_states(&app).await, vec!["HIT", "HIT"]);
    let bad = app
        .post("/admin/cache/purge?contact_id=abc", Some(ADMIN), "")
        .await;
    assert_eq!(bad.status(), 400);

    let one = app
        .post("/admin/cache/purge?contact_id=7000000", Some(ADMIN), "")
        .await;
    assert_eq!(one.status(), 200);
    let body: serde_json::Value = one.json().await.expect("json");
    assert_eq!(
        body,
        serde_json::json!({ "purged": "contact", "contactId": "7000000" })
    );
    assert_eq!(cache_states(&app).await, vec!["MISS", "MISS"]);

    let all = app.post("/admin/cache/purge", Some(ADMIN), "").await;
    assert_eq!(all.status(), 200);
    assert_eq!(cache_states(&app).await, vec!["MISS", "MISS"]);
    assert_eq!(
        ids(&app.query(Some(ADMIN_TOKEN), QUERY).await.data()["contacts"]).len(),
        10
    );
}

#[tokio::test]
async fn without_their_secrets_the_routes_do_not_exist() {
    let app = TestApp::spawn().await;
    assert_eq!(
        app.post(
            "/webhooks/amocrm/anything",
            None,
            "contacts[update][0][id]=1"
        )
        .await
        .status(),
        404
    );
    assert_eq!(
        app.post("/admin/cache/purge", Some("anything"), "")
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn a_burst_of_webhooks_is_applied_in_few_batches() {
    let app = spawn().await;
    warm(&app).await;
    const BATCHES: &str = "gateway_invalidation_batches_total";
    let ids = app.fake.visible_ids(ADMIN_TOKEN);
    let path = format!("/webhooks/amocrm/{SECRET}");
    let bodies: Vec<String> = ids
        .iter()
        .take(30)
        .map(|id| {
            format!("contacts[update][0][id]={id}&leads[add][0][id]={id}&account[subdomain]=demo")
        })
        .collect();
    let webhooks = bodies.iter().map(|body| app.post(&path, None, body));
    for answer in futures::future::join_all(webhooks).await {
        assert_eq!(answer.status(), 200);
    }
    // Each webhook was answered once applied: nothing cached survived.
    assert_eq!(cache_states(&app).await, vec!["MISS", "MISS"]);
    let batches = app.metric(BATCHES).await;
    // The first applied at once, the rest together in the next window (or a few more, on a
    // busy machine that spreads their arrival): at most one batch per 100 ms.
    assert!(
        (1.0..=10.0).contains(&batches),
        "{batches} batches for 30 webhooks"
    );
}
