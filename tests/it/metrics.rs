//! `/metrics` speaks Prometheus text with the promised names, and the counters move.

use std::time::Duration;

use amocrm_gateway::fake_amocrm::{Failure, FakeOptions};
use futures::future::join_all;

use crate::support::{ADMIN_TOKEN, TestApp};

#[tokio::test]
async fn counters_follow_what_happened() {
    let options = FakeOptions {
        latency: Duration::from_millis(200),
        ..Default::default()
    };
    let app = TestApp::spawn_with(&[], options).await;
    let query = |n: u32| format!("{{ contacts(first: {n}) {{ nodes {{ id }} }} }}");
    // Ten concurrent misses of one page: one call, nine waiters.
    let queries: Vec<String> = (1..=10).map(query).collect();
    join_all(queries.iter().map(|q| app.query(Some(ADMIN_TOKEN), q))).await;
    app.query(Some(ADMIN_TOKEN), &query(1)).await;
    app.fake.fail_next(vec![Failure::empty(500); 3]);
    app.query(
        Some(ADMIN_TOKEN),
        "{ contacts(filter: { query: \"x\" }) { nodes { id } } }",
    )
    .await;

    let pages = |result: &str| {
        format!("gateway_cache_lookups_total{{cache=\"pages\",result=\"{result}\"}}")
    };
    assert_eq!(app.metric(&pages("miss")).await, 11.0);
    assert_eq!(
        app.metric(&pages("hit")).await,
        0.0,
        "the repeat came from the response cache"
    );
    assert_eq!(
        app.metric("gateway_cache_lookups_total{cache=\"responses\",result=\"hit\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("gateway_cache_coalesced_waiters_total{cache=\"pages\"}")
            .await,
        9.0
    );
    assert_eq!(
        app.metric("gateway_upstream_requests_total{endpoint=\"/api/v4/contacts\",status=\"200\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("gateway_upstream_requests_total{endpoint=\"/api/v4/contacts\",status=\"500\"}")
            .await,
        3.0,
        "a first attempt and two retries"
    );
    assert_eq!(
        app.metric("gateway_upstream_duration_seconds_count{endpoint=\"/api/v4/contacts\"}")
            .await,
        4.0
    );
    assert!(
        app.metric(
            "gateway_upstream_duration_seconds_bucket{endpoint=\"/api/v4/contacts\",le=\"0.25\"}"
        )
        .await
            >= 1.0
    );
    assert_eq!(
        app.metric("gateway_graphql_requests_total{outcome=\"ok\"}")
            .await,
        10.0
    );
    assert_eq!(
        app.metric("gateway_graphql_requests_total{outcome=\"cached\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("gateway_graphql_requests_total{outcome=\"error\"}")
            .await,
        1.0
    );
    assert_eq!(
        app.metric("gateway_cache_entries{cache=\"pages\"}").await,
        1.0
    );
    assert!(
        app.metric("gateway_cache_weighted_bytes{cache=\"pages\"}")
            .await
            > 10_000.0
    );
    let text = app
        .http()
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("answer")
        .text()
        .await
        .expect("text");
    assert!(text.contains("# TYPE gateway_upstream_duration_seconds histogram"));
    assert!(!text.contains(ADMIN_TOKEN), "no token in metrics");
}

#[tokio::test]
async fn evictions_are_counted_when_the_budget_is_small() {
    let app = TestApp::spawn_with(&["--cache-max-bytes", "256KiB"], FakeOptions::default()).await;
    for i in 0..8 {
        app.query(
            Some(ADMIN_TOKEN),
            &format!("{{ contacts(first: 250, after: null, filter: {{ createdBy: [\"50414{}\"] }}) {{ nodes {{ id }} }} }}", i % 5 + 1),
        )
        .await
        .data();
        app.query(
            Some(ADMIN_TOKEN),
            &format!("{{ contacts(first: 1, filter: {{ updatedBy: [\"50414{}\"] }}) {{ nodes {{ id }} }} }}", i % 5 + 1),
        )
        .await
        .data();
    }
    assert!(
        app.metric("gateway_cache_evictions_total{cache=\"pages\"}")
            .await
            >= 1.0
    );
    assert!(
        app.metric("gateway_cache_weighted_bytes{cache=\"pages\"}")
            .await
            <= 196_608.0
    );
}
