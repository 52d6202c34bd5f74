//! Stale-while-revalidate, revalidation by probe, stale-if-error, and what a 401 forgets.

use std::time::Duration;

use amocrm_gateway::fake_amocrm::{Failure, FakeOptions};
use futures::future::join_all;
use serde_json::json;

use crate::support::{ADMIN_TOKEN, MANAGER_TOKEN, TestApp, ids, outlive};

const TTL: Duration = Duration::from_secs(1);
const FLAGS: &[&str] = &[
    "--cache-ttl",
    "1s",
    "--cache-stale-ttl",
    "1m",
    "--cache-max-age",
    "5m",
];
const QUERY: &str = "{ contacts(first: 5) { nodes { id name } } }";
const REFRESHES: &str = "gateway_cache_refreshes_total{cache=\"pages\",outcome=";

fn refreshes(outcome: &str) -> String {
    format!("{REFRESHES}\"{outcome}\"}}")
}

async fn spawn() -> TestApp {
    TestApp::spawn_with(FLAGS, FakeOptions::default()).await
}

#[tokio::test]
async fn a_stale_entry_is_served_at_once_and_refreshed_once() {
    let app = spawn().await;
    let fresh = app.query(Some(ADMIN_TOKEN), QUERY).await;
    outlive(TTL).await;
    app.fake.clear_requests();
    // The refresh takes a while, so that all twenty requests see the entry stale.
    app.fake.set_latency(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let replies = join_all((0..20).map(|_| app.query(Some(ADMIN_TOKEN), QUERY))).await;
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "nobody waited for the upstream"
    );
    for reply in &replies {
        assert_eq!(reply.data(), fresh.data());
        assert_eq!(reply.header("x-cache"), "STALE");
        assert_eq!(reply.header("cache-control"), "private, max-age=0");
    }
    app.wait_for_metric(&refreshes("probe_unchanged"), 1.0)
        .await;
    let calls = app.fake.requests();
    assert_eq!(calls.len(), 1, "one refresh for twenty stale hits");
    assert_eq!(calls[0].param("limit"), Some("1"), "and it was a probe");
    assert!(calls[0].param("filter[updated_at][from]").is_some());
    let renewed = app.query(Some(ADMIN_TOKEN), QUERY).await;
    assert_eq!(renewed.header("x-cache"), "HIT");
    assert_eq!(app.upstream_calls(), 1);
}

#[tokio::test]
async fn one_probe_renews_every_stale_page_of_the_scope_and_a_change_downloads() {
    let app = spawn().await;
    let pages: Vec<String> = (0..3)
        .map(|i| format!(r#"{{ contacts(first: 3, filter: {{ responsibleUserIds: ["50414{}"] }}) {{ nodes {{ id name }} }} }}"#, i + 1))
        .collect();
    for page in &pages {
        app.query(Some(ADMIN_TOKEN), page).await.data();
    }
    outlive(TTL).await;
    app.fake.clear_requests();
    for page in &pages {
        assert_eq!(
            app.query(Some(ADMIN_TOKEN), page).await.header("x-cache"),
            "STALE"
        );
    }
    app.wait_for_metric(&refreshes("probe_unchanged"), 1.0)
        .await;
    app.wait_for_metric(&refreshes("probe_reused"), 2.0).await;
    assert_eq!(app.upstream_calls(), 1, "one probe, no download");
    for page in &pages {
        assert_eq!(
            app.query(Some(ADMIN_TOKEN), page).await.header("x-cache"),
            "HIT"
        );
    }
    assert_eq!(app.upstream_calls(), 1);

    // A contact of the first page changes: the next refresh sees it and downloads.
    let first_page = app.query(Some(ADMIN_TOKEN), &pages[0]).await;
    let id = ids(&first_page.data()["contacts"])[0];
    app.fake.rename_contact(id, "Переименован");
    outlive(TTL).await;
    app.fake.clear_requests();
    assert_eq!(
        app.query(Some(ADMIN_TOKEN), &pages[0])
            .await
            .header("x-cache"),
        "STALE"
    );
    app.wait_for_metric(&refreshes("downloaded"), 1.0).await;
    let calls = app.fake.requests();
    assert_eq!(
        calls.len(),
        2,
        "a probe that saw the change, then the download"
    );
    assert_eq!(calls[0].param("limit"), Some("1"));
    assert_eq!(calls[1].param("limit"), Some("250"));
    let after = app.query(Some(ADMIN_TOKEN), &pages[0]).await;
    assert_eq!(after.header("x-cache"), "HIT");
    assert_eq!(
        after.data()["contacts"]["nodes"][0]["name"],
        json!("Переименован")
    );
}

#[tokio::test]
async fn past_max_age_a_refresh_downloads_without_probing() {
    let app = TestApp::spawn_with(
        &[
            "--cache-ttl",
            "1s",
            "--cache-stale-ttl",
            "1m",
            "--cache-max-age",
            "1500ms",
        ],
        FakeOptions::default(),
    )
    .await;
    app.query(Some(ADMIN_TOKEN), QUERY).await.data();
    outlive(TTL).await;
    app.fake.clear_requests();
    app.query(Some(ADMIN_TOKEN), QUERY).await;
    app.wait_for_metric(&refreshes("downloaded"), 1.0).await;
    let calls = app.fake.requests();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].param("limit"),
        Some("250"),
        "a download, not a probe"
    );
}

#[tokio::test]
async fn an_upstream_outage_is_answered_from_the_stale_copy() {
    for failure in [
        Failure::empty(503),
        Failure::html(429),
        Failure::html(403),
        Failure::body("application/hal+json", "{\"_embedded\": tru"),
    ] {
        let app = spawn().await;
        let fresh = app.query(Some(ADMIN_TOKEN), QUERY).await;
        outlive(TTL).await;
        app.fake.fail_next(vec![failure.clone(); 5]);
        let stale = app.query(Some(ADMIN_TOKEN), QUERY).await;
        assert_eq!(stale.data(), fresh.data(), "{failure:?}");
        app.wait_for_metric(&refreshes("failed"), 1.0).await;
        let again = app.query(Some(ADMIN_TOKEN), QUERY).await;
        assert_eq!(
            again.data(),
            fresh.data(),
            "still served after the failed refresh"
        );
        assert_eq!(again.header("x-cache"), "STALE");
    }
}

#[tokio::test]
async fn answers_about_the_caller_are_never_hidden_behind_a_stale_copy() {
    for (failure, code) in [
        (
            Failure::problem(402, "Payment Required", "Account is not paid"),
            "PAYMENT_REQUIRED",
        ),
        (Failure::problem(403, "Forbidden", "no rights"), "FORBIDDEN"),
    ] {
        let app = spawn().await;
        app.query(Some(ADMIN_TOKEN), QUERY).await.data();
        outlive(TTL).await;
        app.fake.fail_next(vec![failure.clone(); 2]);
        app.query(Some(ADMIN_TOKEN), QUERY).await.data();
        app.wait_for_metric(&refreshes("failed"), 1.0).await;
        let reply = app.query(Some(ADMIN_TOKEN), QUERY).await;
        assert_eq!(
            reply.codes(),
            vec![code],
            "{failure:?}: the stale copy was dropped"
        );
    }
}

#[tokio::test]
async fn a_401_empties_that_scope_only() {
    let app = spawn().await;
    let other_page = "{ contacts(first: 3, filter: { query: \"Иван\" }) { nodes { id } } }";
    app.query(Some(ADMIN_TOKEN), QUERY).await.data();
    app.query(Some(ADMIN_TOKEN), other_page).await.data();
    app.query(Some(MANAGER_TOKEN), QUERY).await.data();
    outlive(TTL).await;
    app.fake.fail_next([Failure::problem(
        401,
        "Unauthorized",
        "Token has been revoked",
    )]);
    // Stale-while-revalidate serves this one; its refresh meets the 401.
    app.query(Some(ADMIN_TOKEN), QUERY).await.data();
    app.wait_for_metric(&refreshes("failed"), 1.0).await;
    app.fake.clear_requests();
    let dropped = app.query(Some(ADMIN_TOKEN), other_page).await;
    assert_eq!(
        dropped.header("x-cache"),
        "MISS",
        "every page of the scope went"
    );
    // The token amoCRM refused is remembered for a while, and refused without a call.
    assert_eq!(dropped.codes(), vec!["UNAUTHENTICATED"]);
    assert_eq!(app.upstream_calls(), 0);
    let kept = app.query(Some(MANAGER_TOKEN), QUERY).await;
    assert_eq!(
        kept.header("x-cache"),
        "STALE",
        "another token's pages stay"
    );
}
