//! The cache is proven by counting what reached the fake.

use std::time::Duration;

use amocrm_gateway::fake_amocrm::{Failure, FakeOptions};
use futures::future::join_all;

use crate::support::{ADMIN_TOKEN, MANAGER_TOKEN, MANAGER_USER_ID, TestApp, ids};

const QUERY: &str = "{ contacts(first: 20) { nodes { id name leads { id } } } }";

#[tokio::test]
async fn a_repeated_query_costs_no_upstream_call() {
    let app = TestApp::spawn().await;
    let first = app.query(Some(ADMIN_TOKEN), QUERY).await;
    assert_eq!(app.upstream_calls(), 1);
    assert_eq!(first.header("x-cache"), "MISS");
    let again = app.query(Some(ADMIN_TOKEN), QUERY).await;
    assert_eq!(again.data(), first.data());
    assert_eq!(again.header("x-cache"), "HIT");
    assert_eq!(app.upstream_calls(), 1, "served from the cache");
}

#[tokio::test]
async fn overlapping_windows_reuse_the_same_page() {
    let app = TestApp::spawn().await;
    for first in [5, 50, 13, 250] {
        app.query(
            Some(ADMIN_TOKEN),
            &format!("{{ contacts(first: {first}) {{ nodes {{ id }} }} }}"),
        )
        .await
        .data();
    }
    assert_eq!(app.upstream_calls(), 1);
}

#[tokio::test]
async fn fifty_concurrent_identical_cold_queries_make_one_upstream_call() {
    let options = FakeOptions {
        latency: Duration::from_millis(300),
        ..Default::default()
    };
    let app = TestApp::spawn_with(&[], options).await;
    let replies = join_all((0..50).map(|_| app.query(Some(ADMIN_TOKEN), QUERY))).await;
    let expected = replies[0].data().clone();
    for reply in &replies {
        assert_eq!(reply.data(), &expected);
    }
    assert_eq!(app.upstream_calls(), 1);
}

#[tokio::test]
async fn two_tokens_never_share_an_entry() {
    let app = TestApp::spawn().await;
    let admin = app.query(Some(ADMIN_TOKEN), QUERY).await;
    let manager = app.query(Some(MANAGER_TOKEN), QUERY).await;
    assert_eq!(app.upstream_calls(), 2, "the second token missed");
    let tokens: Vec<_> = app.fake.requests().into_iter().map(|r| r.token).collect();
    assert_eq!(
        tokens,
        vec![Some(ADMIN_TOKEN.to_owned()), Some(MANAGER_TOKEN.to_owned())]
    );
    assert_eq!(
        ids(&admin.data()["contacts"]),
        app.fake.visible_ids(ADMIN_TOKEN)[..20].to_vec()
    );
    assert_eq!(
        ids(&manager.data()["contacts"]),
        app.fake.visible_ids(MANAGER_TOKEN)[..20].to_vec()
    );
    assert!(app.fake.visible_ids(MANAGER_TOKEN).iter().all(|id| {
        app.fake
            .contacts()
            .iter()
            .any(|c| c.id == *id && c.responsible_user_id == MANAGER_USER_ID)
    }));
    // Both stay cached, each under its own scope.
    app.query(Some(ADMIN_TOKEN), QUERY).await.data();
    app.query(Some(MANAGER_TOKEN), QUERY).await.data();
    assert_eq!(app.upstream_calls(), 2);
}

#[tokio::test]
async fn errors_are_not_cached() {
    let app = TestApp::spawn().await;
    // Every attempt of the call fails (5xx are retried twice).
    app.fake.fail_next(vec![Failure::empty(503); 3]);
    let failed = app.query(Some(ADMIN_TOKEN), QUERY).await;
    assert_eq!(failed.codes(), vec!["UPSTREAM_UNAVAILABLE"]);
    let retried = app.query(Some(ADMIN_TOKEN), QUERY).await;
    retried.data();
    assert_eq!(app.upstream_calls(), 4, "the failure was not remembered");
}

#[tokio::test]
async fn a_page_is_fetched_again_after_its_ttl() {
    let app = TestApp::spawn_with(&["--cache-ttl", "1s"], FakeOptions::default()).await;
    app.query(Some(ADMIN_TOKEN), QUERY).await.data();
    // Waiting out a TTL is the behaviour under test, not a wait for a server.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.query(Some(ADMIN_TOKEN), QUERY).await.data();
    assert_eq!(app.upstream_calls(), 2);
}

#[tokio::test]
async fn a_wider_cached_page_answers_narrower_relation_sets() {
    let app = TestApp::spawn().await;
    let select = |fields: &str| format!("{{ contacts(first: 30) {{ nodes {{ id {fields} }} }} }}");
    let wide = app
        .query(Some(ADMIN_TOKEN), &select("leads { id } customers { id }"))
        .await;
    assert_eq!(
        app.contact_calls()[0].param("with"),
        Some("leads,customers")
    );
    let narrow = app.query(Some(ADMIN_TOKEN), &select("leads { id }")).await;
    let none = app.query(Some(ADMIN_TOKEN), &select("name")).await;
    assert_eq!(
        (narrow.header("x-cache"), none.header("x-cache")),
        ("HIT", "HIT")
    );
    assert_eq!(app.upstream_calls(), 1);
    assert_eq!(
        narrow.data()["contacts"]["nodes"][0]["leads"],
        wide.data()["contacts"]["nodes"][0]["leads"]
    );
    // Needing more than is cached fetches the union, which then answers every set.
    app.query(Some(ADMIN_TOKEN), &select("catalogElements { id }"))
        .await
        .data();
    assert_eq!(
        app.contact_calls()[1].param("with"),
        Some("leads,customers,catalog_elements")
    );
    app.query(
        Some(ADMIN_TOKEN),
        &select("customers { id } catalogElements { id }"),
    )
    .await
    .data();
    assert_eq!(app.upstream_calls(), 2);
}
