//! The upstream is protected: one rate limit for every call, retries that cure transient
//! failures, and a circuit breaker that stops calling a blocked or failing amoCRM.

use std::time::Duration;

use amocrm_gateway::fake_amocrm::{Failure, FakeOptions};
use futures::future::join_all;

use crate::support::{ADMIN_TOKEN, MANAGER_TOKEN, Reply, TestApp, kept_to_the_rate_limit};

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

const ONE: &str = "{ contacts(first: 1) { nodes { id } } }";

/// Two tokens whose users lacked contact rights once opened the circuit as "blocked" for every
/// token for a minute. A rights 403 (a problem body from amoCRM itself) is about its caller:
/// however many callers get one, everyone else is still served.
#[tokio::test]
async fn rights_403s_from_many_tokens_never_open_the_circuit() {
    let app = TestApp::spawn().await;
    let search =
        |i: usize| format!("{{ contacts(filter: {{ query: \"r{i}\" }}) {{ nodes {{ id }} }} }}");
    for token in [ADMIN_TOKEN, MANAGER_TOKEN] {
        app.query(Some(token), ONE).await.data();
    }
    app.fake
        .fail_next(vec![Failure::problem(403, "Forbidden", "no rights"); 12]);
    for i in 0..12 {
        let token = [ADMIN_TOKEN, MANAGER_TOKEN][i % 2];
        let reply = app.query(Some(token), &search(i)).await;
        assert_eq!(reply.codes(), vec!["FORBIDDEN"], "{}", reply.body);
        let message = reply.first_error()["message"].as_str().expect("message");
        assert!(message.contains("rights"), "{message}");
    }
    assert_eq!(app.upstream_calls(), 14, "every refusal was amoCRM's own");
    for token in [ADMIN_TOKEN, MANAGER_TOKEN] {
        app.query(Some(token), "{ contacts(first: 2) { nodes { id } } }")
            .await
            .data();
    }
}

/// One `BAD_USER_INPUT` whose `extensions.argument` names `argument`.
fn assert_bad_input(reply: &Reply, argument: &str) {
    assert_eq!(reply.codes(), vec!["BAD_USER_INPUT"], "{}", reply.body);
    assert_eq!(
        reply.first_error()["extensions"]["argument"],
        argument,
        "{}",
        reply.body
    );
}

/// Filter values of a few KB each once made the upstream request fail (its URL too long for
/// the front proxy), and two such requests opened the circuit. Each string and the whole are
/// bounded now, and refused naming the argument before any call.
#[tokio::test]
async fn long_filter_values_are_refused_without_a_call() {
    let app = TestApp::spawn().await;
    let query = "query($names: [String!]) { contacts(filter: { names: $names }) { nodes { id } } }";
    let long = serde_json::json!({ "names": ["Anna", "x".repeat(3500)] });
    let many: Vec<String> = (0..250)
        .map(|i| format!("{i}{}", "ж".repeat(200)))
        .collect();
    for (variables, argument) in [
        (long, "filter.names[1]"),
        (serde_json::json!({ "names": many }), "filter"),
    ] {
        for _ in 0..3 {
            let reply = app
                .query_with(Some(ADMIN_TOKEN), query, variables.clone())
                .await;
            assert_bad_input(&reply, argument);
        }
    }
    assert_eq!(app.upstream_calls(), 0, "refused before any call");
    app.query(Some(ADMIN_TOKEN), "{ contacts(first: 1) { nodes { id } } }")
        .await
        .data();
}

/// A NUL or any other control character in a filter string is refused: no name holds one, and
/// separator-joined keys once let two different lists share one cache entry through them.
#[tokio::test]
async fn a_control_character_in_a_filter_string_is_refused() {
    let app = TestApp::spawn().await;
    let query = "query($q: String, $names: [String!]) { contacts(filter: { query: $q, names: $names }) { nodes { id } } }";
    for (variables, argument) in [
        (serde_json::json!({ "q": "a\u{0}b" }), "filter.query"),
        (
            serde_json::json!({ "names": ["Anna", "B\u{1f}ob"] }),
            "filter.names[1]",
        ),
    ] {
        let reply = app.query_with(Some(ADMIN_TOKEN), query, variables).await;
        assert_bad_input(&reply, argument);
        let message = reply.first_error()["message"].as_str().expect("message");
        assert!(message.contains("control characters"), "{message}");
    }
    assert_eq!(app.upstream_calls(), 0);
}

fn search(prefix: &str, i: usize) -> String {
    format!("{{ contacts(first: 2, filter: {{ query: \"{prefix}{i}\" }}) {{ nodes {{ id }} }} }}")
}

/// 100 parallel requests with random bearer strings once cost a 401 call each, every one in a
/// round-robin lane of its own, and the admin's queries failed with `RATE_LIMITED`. Unverified
/// tokens now share one small lane, a 401 is remembered, and a verified token keeps its share.
#[tokio::test]
async fn a_junk_token_flood_costs_a_handful_of_calls_while_a_valid_token_is_served() {
    let app =
        TestApp::spawn_with(&["--upstream-queue-timeout", "3s"], FakeOptions::default()).await;
    // amoCRM accepts the admin's token once: it is verified from then on.
    app.query(Some(ADMIN_TOKEN), ONE).await.data();
    let junk: Vec<String> = (0..100)
        .map(|i| format!("junk-{i}-{:016x}", rand::random::<u64>()))
        .collect();
    let flood = join_all(junk.iter().map(|token| app.query(Some(token), ONE)));
    let searches: Vec<String> = (0..8).map(|i| search("v", i)).collect();
    let valid = join_all(searches.iter().map(|q| app.query(Some(ADMIN_TOKEN), q)));
    let (flood, valid) = tokio::join!(flood, valid);
    for reply in &valid {
        reply.data();
    }
    for reply in &flood {
        let codes = reply.codes();
        assert!(
            codes == ["UNAUTHENTICATED"] || codes == ["RATE_LIMITED"],
            "{}",
            reply.body
        );
    }
    let junk_calls = || {
        app.fake
            .requests()
            .iter()
            .filter(|r| r.token.as_deref() != Some(ADMIN_TOKEN))
            .count()
    };
    let during_flood = junk_calls();
    assert!(
        during_flood <= 5,
        "{during_flood} junk tokens reached amoCRM"
    );
    // A token amoCRM refused is refused again without asking.
    let refused = flood
        .iter()
        .position(|reply| reply.codes() == ["UNAUTHENTICATED"])
        .expect("some junk token was asked about");
    let again = app.query(Some(&junk[refused]), ONE).await;
    assert_eq!(again.codes(), vec!["UNAUTHENTICATED"]);
    assert_eq!(junk_calls(), during_flood, "the 401 was remembered");
}

/// In server-token mode every client key once shared one limiter lane, so one crawling client
/// starved the others into `RATE_LIMITED`. Each key has its own lane now.
#[tokio::test]
async fn two_client_keys_share_the_budget_fairly_when_one_crawls() {
    let options = FakeOptions {
        latency: Duration::from_millis(20),
        ..FakeOptions::default()
    };
    let app = TestApp::spawn_with(
        &[
            "--access-token",
            ADMIN_TOKEN,
            "--client-key",
            "crawler-key-0001",
            "--client-key",
            "polite-key-0002",
            "--upstream-queue-timeout",
            "3s",
        ],
        options,
    )
    .await;
    let crawls: Vec<String> = (0..60).map(|i| search("c", i)).collect();
    // Round-robin gives the polite client every other slot: its 4 queries fit two windows,
    // well within the queue timeout, whatever the crawler has queued.
    let polites: Vec<String> = (0..4).map(|i| search("p", i)).collect();
    let crawl = join_all(
        crawls
            .iter()
            .map(|q| app.query(Some("crawler-key-0001"), q)),
    );
    let polite = async {
        // The polite client asks once the crawler has taken a whole window and queued more.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while app.upstream_calls() < 7 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the crawler never ran"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        join_all(
            polites
                .iter()
                .map(|q| app.query(Some("polite-key-0002"), q)),
        )
        .await
    };
    let (crawled, polite) = tokio::join!(crawl, polite);
    for reply in &polite {
        reply.data();
    }
    assert!(
        crawled
            .iter()
            .any(|reply| reply.codes() == ["RATE_LIMITED"]),
        "the crawler asked for more than the budget"
    );
}
