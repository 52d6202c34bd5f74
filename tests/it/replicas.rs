//! Two replicas on one Redis (a real `redis-server` started here) in front of one fake: they
//! share pages and entities, make one upstream call for concurrent misses, keep to one rate
//! limit, hear each other's invalidations, and keep answering when Redis goes away.

use std::time::Duration;

use amocrm_gateway::fake_amocrm::FakeOptions;
use futures::future::join_all;

use crate::support::{ADMIN_TOKEN, RedisServer, Reply, TestApp, kept_to_the_rate_limit};

use crate::support::{REPLICA_WEBHOOK_SECRET as SECRET, replicas};
const QUERY: &str = "{ contacts(first: 3) { nodes { id name leads { id name } } } }";
use crate::support::SUBSCRIBED;

/// Sends a webhook about `event` to replica `to` and waits until `other` has applied it.
async fn webhook_heard(to: &TestApp, other: &TestApp, event: &str) {
    let answer = to
        .post(
            &format!("/webhooks/amocrm/{SECRET}"),
            None,
            &format!("{event}&account[subdomain]=demo"),
        )
        .await;
    assert_eq!(answer.status(), 200);
    other
        .wait_for_metric(
            r#"gateway_broadcast_invalidations_total{kind="message"}"#,
            1.0,
        )
        .await;
}

fn names(reply: &Reply) -> Vec<String> {
    reply.data()["contacts"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["name"].as_str().expect("a name").to_owned())
        .collect()
}

#[tokio::test]
async fn a_page_fetched_through_one_replica_is_served_by_the_other() {
    let redis = RedisServer::start().await;
    let (a, b) = replicas(&redis, FakeOptions::default(), &[]).await;
    let first = a.query(Some(ADMIN_TOKEN), QUERY).await;
    assert_eq!(first.header("x-cache"), "MISS");
    let calls = a.upstream_calls();
    assert_eq!(calls, 2, "one page and one batch of leads");

    let second = b.query(Some(ADMIN_TOKEN), QUERY).await;
    assert_eq!(second.data(), first.data());
    assert_eq!(
        second.header("x-cache"),
        "HIT",
        "served from the shared tier"
    );
    assert_eq!(a.upstream_calls(), calls, "replica B called nobody");
    assert_eq!(
        b.metric(r#"gateway_shared_cache_lookups_total{cache="pages",result="hit"}"#)
            .await,
        1.0
    );
    assert!(
        b.metric(r#"gateway_shared_cache_lookups_total{cache="entities",result="hit"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn concurrent_cold_requests_over_both_replicas_make_one_upstream_call() {
    let redis = RedisServer::start().await;
    let options = FakeOptions {
        latency: Duration::from_millis(300),
        ..FakeOptions::default()
    };
    let (a, b) = replicas(&redis, options, &[]).await;
    let query = "{ contacts(first: 5) { nodes { id name } } }";
    let replies = join_all((0..40).map(|i| {
        let replica = if i % 2 == 0 { &a } else { &b };
        replica.query(Some(ADMIN_TOKEN), query)
    }))
    .await;
    for reply in &replies {
        assert_eq!(reply.data(), replies[0].data());
    }
    assert_eq!(a.contact_calls().len(), 1, "{:?}", a.contact_calls());
    assert_eq!(
        a.metric(r#"gateway_shared_cache_lease_waits_total{cache="pages"}"#)
            .await
            + b.metric(r#"gateway_shared_cache_lease_waits_total{cache="pages"}"#)
                .await,
        1.0,
        "one replica waited for the other's download"
    );
}

#[tokio::test]
async fn distinct_cold_requests_over_both_replicas_keep_to_one_rate_limit() {
    let redis = RedisServer::start().await;
    let options = FakeOptions {
        rate_limit: Some(7),
        latency: Duration::from_millis(20),
        ..FakeOptions::default()
    };
    let (a, b) = replicas(&redis, options, &["--upstream-queue-timeout", "3s"]).await;
    let queries: Vec<String> = (0..300)
        .map(|i| format!("{{ contacts(first: 5, filter: {{ query: \"contact{i}@\" }}) {{ nodes {{ id }} }} }}"))
        .collect();
    let replies = join_all(queries.iter().enumerate().map(|(i, q)| {
        let replica = if i % 2 == 0 { &a } else { &b };
        replica.query(Some(ADMIN_TOKEN), q)
    }))
    .await;
    let (answered, limited) = kept_to_the_rate_limit(&a.fake, &replies, 7);
    // Both replicas together, not each, got the budget: 3 s of queueing lets about 7 × 4 in.
    assert!(
        (14..=40).contains(&answered),
        "answered {answered}, limited {limited}"
    );
}

#[tokio::test]
async fn a_webhook_to_one_replica_reaches_the_others_caches() {
    let redis = RedisServer::start().await;
    let (a, b) = replicas(&redis, FakeOptions::default(), &[]).await;
    let before = b.query(Some(ADMIN_TOKEN), QUERY).await;
    assert_eq!(
        a.query(Some(ADMIN_TOKEN), QUERY).await.header("x-cache"),
        "HIT"
    );
    let calls = a.upstream_calls();

    let id = a.fake.visible_ids(ADMIN_TOKEN)[0];
    a.fake.rename_contact(id, "Renamed elsewhere");
    webhook_heard(&a, &b, &format!("contacts[update][0][id]={id}")).await;

    let after = b.query(Some(ADMIN_TOKEN), QUERY).await;
    assert_eq!(after.header("x-cache"), "MISS");
    assert_eq!(names(&after)[0], "Renamed elsewhere");
    assert_ne!(names(&after), names(&before));
    assert_eq!(
        a.upstream_calls(),
        calls + 1,
        "one new download of the page"
    );
    // Replica A reads what B downloaded: the old copy in Redis was voided, not served.
    let on_a = a.query(Some(ADMIN_TOKEN), QUERY).await;
    assert_eq!(names(&on_a)[0], "Renamed elsewhere");
    assert_eq!(a.upstream_calls(), calls + 1);
}

#[tokio::test]
async fn redis_going_away_is_not_an_outage_and_sharing_resumes_when_it_returns() {
    let mut redis = RedisServer::start().await;
    let (a, b) = replicas(&redis, FakeOptions::default(), &[]).await;
    let page = |n: u32| {
        format!(
            "{{ contacts(first: 2, filter: {{ query: \"contact{n}@\" }}) {{ nodes {{ id name }} }} }}"
        )
    };
    a.query(Some(ADMIN_TOKEN), &page(1)).await.data();

    redis.kill();
    for replica in [&a, &b] {
        for n in 1..=3 {
            let reply = replica.query(Some(ADMIN_TOKEN), &page(n)).await;
            reply.data();
        }
        assert_eq!(replica.metric("gateway_redis_up").await, 0.0);
    }

    redis.restart().await;
    for replica in [&a, &b] {
        // Each listens again, after dropping what it holds: it may have missed invalidations.
        replica
            .wait_for_metric(r#"gateway_broadcast_invalidations_total{kind="gap"}"#, 1.0)
            .await;
        replica.wait_for_metric(SUBSCRIBED, 1.0).await;
        assert_eq!(replica.metric("gateway_redis_up").await, 1.0);
    }
    let calls = a.upstream_calls();
    a.query(Some(ADMIN_TOKEN), &page(9)).await.data();
    assert_eq!(a.upstream_calls(), calls + 1);
    let reply = b.query(Some(ADMIN_TOKEN), &page(9)).await;
    reply.data();
    assert_eq!(reply.header("x-cache"), "HIT");
    assert_eq!(a.upstream_calls(), calls + 1, "shared again");
}

#[tokio::test]
async fn forwarded_tokens_on_redis_need_a_scope_secret_shared_by_the_replicas() {
    use amocrm_gateway::Gateway;
    use amocrm_gateway::config::Cli;
    use clap::Parser;
    let cli = Cli::try_parse_from([
        "amocrm-gateway",
        "--listen",
        "127.0.0.1:0",
        "--upstream-url",
        "http://127.0.0.1:9",
        "--redis-url",
        "redis://127.0.0.1:9",
    ])
    .expect("flags parse");
    let error = Gateway::build(cli.serve).await.err().expect("refused");
    assert!(error.to_string().contains("--scope-secret"), "{error}");
}

#[tokio::test]
async fn a_lease_blocks_a_page_while_its_holder_lives_and_no_longer_once_it_is_dead() {
    use amocrm_gateway::metrics::{CacheName, Metrics};
    use amocrm_gateway::shared::tier::{Claim, LEASE};
    use amocrm_gateway::shared::{Redis, Tier};

    let redis = RedisServer::start().await;
    let tier = |name: &str| {
        let handle = Redis::new(
            &redis.url(),
            "test:",
            Duration::from_secs(2),
            Metrics::new(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        Tier::new(handle, Metrics::new())
    };
    let (a, b) = (tier("a"), tier("b"));
    let slot = |tier: &Tier| tier.slot(format_args!("page:test"), Vec::new());

    // A live holder renews its lease past its length: B gives up waiting, without a lease.
    let Claim::<()>::Fetch {
        lease: Some(held), ..
    } = a
        .find_or_lead(CacheName::Pages, &slot(&a), Duration::ZERO)
        .await
    else {
        panic!("A takes the free lease");
    };
    let waited = tokio::time::Instant::now();
    let claim = b
        .find_or_lead::<()>(CacheName::Pages, &slot(&b), LEASE + Duration::from_secs(1))
        .await;
    assert!(
        matches!(claim, Claim::Fetch { lease: None, .. }),
        "B waited out its bound while A held on: {claim:?}"
    );
    assert!(waited.elapsed() >= LEASE);
    drop(held);

    // A holder that died (its lease set and never renewed) blocks the page for one lease.
    let client = redis::Client::open(redis.url()).expect("a URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers");
    let lease_key = b.lease_key(&slot(&b));
    let _: () = redis::cmd("SET")
        .arg(&lease_key)
        .arg("a-dead-replica")
        .arg("PX")
        .arg(LEASE.as_millis() as u64)
        .query_async(&mut conn)
        .await
        .expect("SET");
    let waited = tokio::time::Instant::now();
    let claim = b
        .find_or_lead::<()>(CacheName::Pages, &slot(&b), Duration::from_secs(30))
        .await;
    assert!(
        matches!(claim, Claim::Fetch { lease: Some(_), .. }),
        "B took over the lease: {claim:?}"
    );
    assert!(
        waited.elapsed() < LEASE + Duration::from_secs(1),
        "blocked {:?}",
        waited.elapsed()
    );
}

#[tokio::test]
async fn the_subscription_survives_its_health_checks() {
    use amocrm_gateway::shared::broadcast::PING_EVERY;
    let redis = RedisServer::start().await;
    let (a, b) = replicas(&redis, FakeOptions::default(), &[]).await;
    b.query(Some(ADMIN_TOKEN), QUERY).await.data();
    // Let a ping or two go by: the passing of time is what this test is about.
    crate::support::outlive(PING_EVERY * 2).await;
    for replica in [&a, &b] {
        assert_eq!(
            replica
                .metric(r#"gateway_redis_errors_total{operation="subscribe"}"#)
                .await,
            0.0
        );
        assert_eq!(replica.metric("gateway_redis_up").await, 1.0);
    }
    webhook_heard(&a, &b, "contacts[delete][0][id]=1").await;
    assert_eq!(
        b.metric(r#"gateway_broadcast_invalidations_total{kind="gap"}"#)
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_webhook_of_thousands_of_events_is_one_redis_batch() {
    let redis = RedisServer::start().await;
    let (a, b) = replicas(
        &redis,
        FakeOptions::default(),
        &["--max-body-bytes", "2MiB"],
    )
    .await;
    // About 1 MiB: 32 000 lead events took 5.2 s at one Redis round trip per event.
    let events: String = (1..=32_000)
        .map(|id| format!("leads[update][{id}][id]={id}&"))
        .collect();
    let started = std::time::Instant::now();
    webhook_heard(&a, &b, events.trim_end_matches('&')).await;
    let took = started.elapsed();
    // About 1 s in a debug build; the margin is for a busy machine.
    assert!(took < std::time::Duration::from_secs(4), "{took:?}");
    assert_eq!(
        b.metric(r#"gateway_broadcast_invalidations_total{kind="message"}"#)
            .await,
        1.0,
        "one message for the whole batch"
    );
    assert_eq!(a.metric("gateway_invalidations_total").await, 32_000.0);
}
