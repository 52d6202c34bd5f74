//! The upstream is protected: one rate limit for every call, retries that cure transient
//! failures, and a circuit breaker that stops calling a blocked or failing amoCRM.

use std::time::Duration;

use amocrm_gateway::fake_amocrm::{Failure, FakeOptions};
use futures::future::join_all;

use crate::support::{ADMIN_TOKEN, MANAGER_TOKEN, TestApp, kept_to_the_rate_limit};

#[tokio::test]
async fn five_hundred_cold_queries_never_exceed_the_upstream_limit() {
    let options = FakeOptions {
        rate_limit: Some(7),
        latency: Duration::from_millis(20),
        ..FakeOptions::default()
    };
    let app = TestApp::spawn_with(&["--upstream-queue-timeout", "2s"], options).await;
    let queries: Vec<String> = (0..500)
        .map(|i| format!("{{ contacts(first: 5, filter: {{ query: \"contact{i}@\" }}) {{ nodes {{ id }} }} }}"))
        .collect();
    let replies = join_all(queries.iter().map(|q| app.query(Some(ADMIN_TOKEN), q))).await;
    let (answered, limited) = kept_to_the_rate_limit(&app.fake, &replies, 7);
    assert!(
        answered >= 7 && limited > 0,
        "answered {answered}, limited {limited}"
    );
}

#[tokio::test]
async fn a_burst_of_5xx_is_retried_and_answered() {
    let app = TestApp::spawn().await;
    app.fake
        .fail_next([Failure::empty(502), Failure::html(503)]);
    let reply = app
        .query(Some(ADMIN_TOKEN), "{ contacts(first: 3) { nodes { id } } }")
        .await;
    reply.data();
    assert_eq!(app.upstream_calls(), 3, "two failures, then the answer");
}

#[tokio::test]
async fn repeated_blocks_open_the_circuit_and_later_requests_make_no_call() {
    let app = TestApp::spawn().await;
    app.fake.fail_next(vec![Failure::html(403); 10]);
    let search =
        |i: usize| format!("{{ contacts(filter: {{ query: \"q{i}\" }}) {{ nodes {{ id }} }} }}");
    let first = app.query(Some(ADMIN_TOKEN), &search(0)).await;
    assert_eq!(first.codes(), vec!["FORBIDDEN"]);
    for i in 1..5 {
        let reply = app.query(Some(ADMIN_TOKEN), &search(i)).await;
        assert_eq!(reply.codes(), vec!["FORBIDDEN"]);
        let message = reply.first_error()["message"].as_str().expect("message");
        assert!(message.contains("circuit open"), "{message}");
    }
    assert_eq!(app.upstream_calls(), 1, "the open circuit made no calls");
}

#[tokio::test]
async fn a_run_of_failures_opens_the_circuit_as_unavailable() {
    let app = TestApp::spawn().await;
    app.fake.fail_next(vec![Failure::empty(500); 20]);
    let search =
        |i: usize| format!("{{ contacts(filter: {{ query: \"q{i}\" }}) {{ nodes {{ id }} }} }}");
    for i in 0..2 {
        assert_eq!(
            app.query(Some(ADMIN_TOKEN), &search(i)).await.codes(),
            vec!["UPSTREAM_UNAVAILABLE"]
        );
    }
    let calls = app.upstream_calls();
    let reply = app.query(Some(ADMIN_TOKEN), &search(9)).await;
    assert_eq!(reply.codes(), vec!["UPSTREAM_UNAVAILABLE"]);
    assert!(
        reply.first_error()["message"]
            .as_str()
            .expect("message")
            .contains("circuit open")
    );
    assert_eq!(app.upstream_calls(), calls);
}

#[tokio::test]
async fn a_rights_403_on_users_never_opens_the_circuit() {
    let app =
        TestApp::spawn_with(&["--admin-token", "admin-token-1"], FakeOptions::default()).await;
    for _ in 0..8 {
        let reply = app
            .query(
                Some(MANAGER_TOKEN),
                "{ contacts(first: 2) { nodes { responsibleUser { name } } } }",
            )
            .await;
        let codes = reply.codes();
        assert!(
            !codes.is_empty() && codes.iter().all(|c| c == "FORBIDDEN"),
            "{codes:?}"
        );
        // Forget the cached refusal, so that the next request asks amoCRM again.
        assert_eq!(
            app.post("/admin/cache/purge", Some("admin-token-1"), "")
                .await
                .status(),
            200
        );
    }
    let users_403s = app
        .fake
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v4/users")
        .count();
    assert_eq!(users_403s, 8);
    app.query(Some(ADMIN_TOKEN), "{ contacts(first: 2) { nodes { id } } }")
        .await
        .data();
}

/// A `Retry-After` no clock can add (u64::MAX seconds) once panicked the request that read
/// it, and the requests coalesced on the same page waited for their timeout. Now every one of
/// them is answered `RATE_LIMITED` at once, and the next request works.
#[tokio::test]
async fn an_overflowing_retry_after_is_rate_limited_for_every_coalesced_request() {
    let app = TestApp::spawn().await;
    app.fake
        .fail_next([Failure::problem(429, "Too Many Requests", "slow down")
            .with_retry_after(u64::MAX.to_string())]);
    let started = std::time::Instant::now();
    let replies = join_all(
        (0..8).map(|_| app.query(Some(ADMIN_TOKEN), "{ contacts(first: 2) { nodes { id } } }")),
    )
    .await;
    for reply in &replies {
        assert_eq!(reply.codes(), ["RATE_LIMITED"], "{}", reply.body);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered in {:?}",
        started.elapsed()
    );
    assert_eq!(app.upstream_calls(), 1, "the 8 requests shared one call");
    let after = app
        .query(Some(ADMIN_TOKEN), "{ contacts(first: 2) { nodes { id } } }")
        .await;
    assert_eq!(
        after.data()["contacts"]["nodes"].as_array().map(Vec::len),
        Some(2)
    );
}
