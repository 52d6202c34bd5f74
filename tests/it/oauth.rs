//! OAuth 2.0 mode against the fake's token endpoint, whose refresh tokens work once: the
//! gateway refreshes before expiry and once after a 401, one refresh for many concurrent
//! requests, and keeps the new pair in its token file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use amocrm_gateway::fake_amocrm::{
    FakeOptions, OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, OAUTH_REDIRECT_URI, OAUTH_REFRESH_TOKEN,
};
use futures::future::join_all;
use serde_json::{Value, json};

use crate::support::{TestApp, outlive};

/// A token file of this test's own, holding `content`.
fn token_file(name: &str, content: &Value) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "amocrm-gateway-oauth-{}-{name}.json",
        std::process::id()
    ));
    std::fs::write(&path, content.to_string()).expect("a temporary file");
    path
}

/// The flags of a gateway on OAuth with the fake's integration, keeping its pair in `file`.
fn oauth_flags<'a>(file: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut flags = vec![
        "--oauth-client-id",
        OAUTH_CLIENT_ID,
        "--oauth-client-secret",
        OAUTH_CLIENT_SECRET,
        "--oauth-redirect-uri",
        OAUTH_REDIRECT_URI,
        "--oauth-token-file",
        file,
        "--allow-anonymous",
        // Distinct pages at once, not queued behind the rate limit.
        "--upstream-rps",
        "0",
    ];
    flags.extend_from_slice(extra);
    flags
}

async fn oauth_gateway(file: &Path, extra: &[&str]) -> TestApp {
    let path = file.to_string_lossy().into_owned();
    TestApp::spawn_with(&oauth_flags(&path, extra), FakeOptions::default()).await
}

fn stored(file: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(file).expect("the token file")).expect("JSON")
}

/// 20 different queries at once, none asked before (`round` tells them apart); every one must
/// be answered.
async fn twenty_at_once(app: &TestApp, round: usize) {
    let queries: Vec<String> = (20 * round..20 * (round + 1))
        .map(|i| format!("{{ contacts(first: 1, filter: {{ query: \"contact{i}@\" }}) {{ nodes {{ id }} }} }}"))
        .collect();
    for reply in join_all(queries.iter().map(|q| app.query(None, q))).await {
        reply.data();
    }
}

/// The tokens the contact calls were made with, in order.
fn tokens_used(app: &TestApp) -> Vec<String> {
    app.contact_calls()
        .into_iter()
        .map(|r| r.token.unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn expiry_leads_to_one_refresh_however_many_requests_need_a_token() {
    let file = token_file("expiry", &json!({ "refresh_token": OAUTH_REFRESH_TOKEN }));
    let app = oauth_gateway(&file, &[]).await;
    app.fake.set_oauth_lifetime(Duration::from_secs(2));

    // No access token yet: 20 requests, one refresh.
    twenty_at_once(&app, 0).await;
    assert_eq!(app.fake.oauth_refreshes(), 1);
    assert!(tokens_used(&app).iter().all(|t| t == "oauth-access-1"));
    let pair = stored(&file);
    assert_eq!(pair["access_token"], "oauth-access-1");
    assert_eq!(pair["refresh_token"], app.fake.oauth_refresh_token());

    // The token expires: refreshed before use, once, and no call goes out with the old one.
    outlive(Duration::from_secs(2)).await;
    app.fake.clear_requests();
    twenty_at_once(&app, 1).await;
    assert_eq!(app.fake.oauth_refreshes(), 1);
    assert!(tokens_used(&app).iter().all(|t| t == "oauth-access-2"));
    assert_eq!(stored(&file)["access_token"], "oauth-access-2");
    assert_eq!(stored(&file)["refresh_token"], "oauth-refresh-2");
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn a_401_leads_to_one_refresh_and_each_request_is_retried_once() {
    let file = token_file("revoked", &json!({ "refresh_token": OAUTH_REFRESH_TOKEN }));
    let app = oauth_gateway(&file, &[]).await;
    app.query(None, "{ contacts(first: 1) { nodes { id } } }")
        .await
        .data();
    assert_eq!(app.fake.oauth_refreshes(), 1);

    app.fake.revoke_oauth_access_tokens();
    app.fake.clear_requests();
    twenty_at_once(&app, 1).await;
    assert_eq!(app.fake.oauth_refreshes(), 1, "one refresh for 20 refusals");
    let used = tokens_used(&app);
    let refused = used.iter().filter(|t| *t == "oauth-access-1").count();
    let retried = used.iter().filter(|t| *t == "oauth-access-2").count();
    assert!((1..=20).contains(&refused), "{used:?}");
    assert_eq!(
        retried, 20,
        "each request retried once with the new token: {used:?}"
    );
    assert_eq!(
        stored(&file)["refresh_token"],
        app.fake.oauth_refresh_token()
    );
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn a_reused_refresh_token_tells_the_operator_to_re_authorize() {
    let stale = json!({ "refresh_token": "a-refresh-token-used-before" });
    let file = token_file("reused", &stale);
    let app = oauth_gateway(&file, &[]).await;
    let reply = app
        .query(None, "{ contacts(first: 1) { nodes { id } } }")
        .await;
    assert_eq!(reply.codes(), vec!["UNAUTHENTICATED"]);
    let message = reply.first_error()["message"].as_str().unwrap_or_default();
    assert!(message.contains("re-authorize"), "{message}");
    assert!(message.contains("Token has been revoked"), "{message}");
    assert!(
        !message.contains("a-refresh-token-used-before"),
        "{message}"
    );
    assert_eq!(app.fake.oauth_refreshes(), 1);
    assert_eq!(app.contact_calls().len(), 0);
    assert_eq!(stored(&file), stale, "the token file is left as it was");
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn oauth_excludes_an_access_token_and_needs_client_keys_like_it() {
    use amocrm_gateway::Gateway;
    use amocrm_gateway::config::Cli;
    use clap::Parser;
    let file = token_file("flags", &json!({ "refresh_token": OAUTH_REFRESH_TOKEN }));
    let path = file.to_string_lossy().into_owned();
    let oauth: Vec<&str> = oauth_flags(&path, &[])
        .into_iter()
        .filter(|f| !["--allow-anonymous", "--upstream-rps", "0"].contains(f))
        .collect();
    let base = [
        "amocrm-gateway",
        "--listen",
        "127.0.0.1:0",
        "--upstream-url",
        "http://127.0.0.1:9",
    ];
    let both = Cli::try_parse_from(base.iter().chain(&oauth).chain(&["--access-token", "t"]));
    let error = both.expect_err("refused").to_string();
    assert!(error.contains("--access-token"), "{error}");

    let cli = Cli::try_parse_from(base.iter().chain(&oauth)).expect("valid flags");
    let error = Gateway::build(cli.serve).await.err().expect("refused");
    assert!(error.to_string().contains("--client-key"), "{error}");

    let app = oauth_gateway(&file, &["--client-key", "a-client-key-1"]).await;
    let reply = app
        .query(None, "{ contacts(first: 1) { nodes { id } } }")
        .await;
    assert_eq!(reply.codes(), vec!["UNAUTHENTICATED"]);
    assert_eq!(app.upstream_calls(), 0);
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn replicas_on_redis_refresh_once_between_them_and_both_keep_the_new_pair() {
    let redis = crate::support::RedisServer::start().await;
    let url = redis.url();
    let start = json!({ "refresh_token": OAUTH_REFRESH_TOKEN });
    // Two containers, two token files, one integration.
    let (file_a, file_b) = (
        token_file("replica-a", &start),
        token_file("replica-b", &start),
    );
    let shared = ["--redis-url", url.as_str(), "--redis-timeout", "2s"];
    let a = oauth_gateway(&file_a, &shared).await;
    let path_b = file_b.to_string_lossy().into_owned();
    let b = a.replica(&oauth_flags(&path_b, &shared)).await;
    let queries: Vec<String> = (0..20)
        .map(|i| format!("{{ contacts(first: 1, filter: {{ query: \"contact{i}@\" }}) {{ nodes {{ id }} }} }}"))
        .collect();
    let replies = join_all(queries.iter().enumerate().map(|(i, q)| {
        let replica = if i % 2 == 0 { &a } else { &b };
        replica.query(None, q)
    }))
    .await;
    for reply in &replies {
        reply.data();
    }
    assert_eq!(a.fake.oauth_refreshes(), 1, "one refresh for both replicas");
    let current = a.fake.oauth_refresh_token();
    assert_eq!(stored(&file_a)["refresh_token"], current);
    assert_eq!(stored(&file_b)["refresh_token"], current);
    let _ = std::fs::remove_file(file_a);
    let _ = std::fs::remove_file(file_b);
}

#[tokio::test]
async fn a_pair_in_redis_that_does_not_succeed_ours_is_ignored() {
    // Left in Redis from before the operator re-authorized: unrelated to the file's token.
    let redis = crate::support::RedisServer::start().await;
    let client = redis::Client::open(redis.url()).expect("a URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers");
    let old = json!({
        "access_token": "oauth-access-old",
        "refresh_token": "oauth-refresh-old",
        "expires_at": 4_000_000_000_i64,
        "replaces": ["0000"],
    });
    let _: () = redis::cmd("SET")
        .arg("amocrm-gateway:v1:oauth:pair")
        .arg(old.to_string())
        .query_async(&mut conn)
        .await
        .expect("SET");
    let file = token_file(
        "reauthorized",
        &json!({ "refresh_token": OAUTH_REFRESH_TOKEN }),
    );
    let url = redis.url();
    let app = oauth_gateway(&file, &["--redis-url", &url, "--redis-timeout", "2s"]).await;
    app.query(None, "{ contacts(first: 1) { nodes { id } } }")
        .await
        .data();
    assert_eq!(app.fake.oauth_refreshes(), 1);
    assert_eq!(tokens_used(&app), vec!["oauth-access-1"]);
    assert_eq!(
        stored(&file)["refresh_token"],
        app.fake.oauth_refresh_token()
    );
    let _ = std::fs::remove_file(file);
}
