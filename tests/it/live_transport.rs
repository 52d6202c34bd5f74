//! Subscriptions at the transport level (issue 15): keep-alives, a consumer that stops
//! reading, SIGTERM on the real binary, and the `graphql-transport-ws` protocol's rules for
//! clients that break them. Frames are read with tokio-tungstenite (`raw_ws`), bytes of the
//! event stream with reqwest: the npm clients hide exactly what is checked here.

use std::time::Duration;

use amocrm_gateway::fake_amocrm::{FakeAmoCrm, FakeOptions};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::live_client::LiveClient;
use crate::raw_ws::{Ended, RawWs};
use crate::support::{ADMIN_TOKEN, TestApp};

const CHANGED: &str = "subscription { contactChanged { kind id contact { id name } } }";
const WITHIN: Duration = Duration::from_secs(10);

fn admin() -> Value {
    json!({ "Authorization": format!("Bearer {ADMIN_TOKEN}") })
}

fn subscribe(id: &str, payload: Value) -> Value {
    json!({ "id": id, "type": "subscribe", "payload": payload })
}

#[tokio::test]
async fn idle_subscriptions_hear_a_ping_or_a_comment_every_keep_alive_interval() {
    let app = TestApp::spawn_with(&["--live-keep-alive", "500ms"], FakeOptions::default()).await;

    let mut ws = RawWs::connect(app.addr, None).await;
    ws.init(admin()).await;
    ws.send(subscribe("1", json!({ "query": CHANGED }))).await;
    // Reading (which answers each ping with a pong) for eight intervals: pings keep coming,
    // and the connection stays, since the client answers.
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        match ws.frame(Duration::from_secs(2)).await {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Close(frame))) => panic!("closed while answering pings: {frame:?}"),
            Some(Err(e)) => panic!("the connection failed: {e}"),
            None => panic!("no frame within 2 s: no ping in four intervals"),
            Some(Ok(other)) => panic!("unexpected {other:?}"),
        }
    }
    assert!((5..=9).contains(&pings), "{pings} pings in 4 s");
    assert_eq!(
        app.metric_total("gateway_live_disconnects_total").await,
        0.0
    );

    let mut response = app
        .http()
        .post(app.url("/graphql"))
        .bearer_auth(ADMIN_TOKEN)
        .header("accept", "text/event-stream")
        .json(&json!({ "query": CHANGED }))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), 200);
    let mut seen = String::new();
    while seen.matches(":\n\n").count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(2), response.chunk())
            .await
            .expect("a keep-alive within four intervals")
            .expect("bytes")
            .expect("the stream is open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Comments only: nothing happened, so no event.
    assert!(!seen.contains("event:"), "{seen:?}");
}

/// A contact's name changed in the fake for each of `ids`, and one webhook saying so.
async fn change_all(app: &TestApp, ids: &[u64], round: usize) {
    let mut body = String::from("account[subdomain]=demo");
    for (i, id) in ids.iter().enumerate() {
        app.fake
            .rename_contact(*id, &format!("Контакт {id} версия {round}"));
        body.push_str(&format!("&contacts%5Bupdate%5D%5B{i}%5D%5Bid%5D={id}"));
    }
    let answer = app
        .post(&format!("/webhooks/amocrm/{SECRET}"), None, &body)
        .await;
    assert_eq!(answer.status(), 200);
}

const SECRET: &str = "transport-secret";

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("the gateway's status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn a_consumer_that_stops_reading_is_disconnected_and_memory_stays_flat() {
    let fake = FakeAmoCrm::start(([127, 0, 0, 1], 0).into(), FakeOptions::default())
        .await
        .expect("the fake starts");
    let (mut gateway, graphiql) = crate::cli::spawn_in_front_of(
        &fake.base_url(),
        &[
            "--webhook-secret",
            SECRET,
            "--live-keep-alive",
            "2s",
            "--upstream-rps",
            "100",
        ],
    )
    .await;
    let pid = gateway.id().expect("running");
    let addr: std::net::SocketAddr = graphiql
        .trim_start_matches("http://")
        .trim_end_matches("/graphiql")
        .parse()
        .expect("an address");
    let app = TestApp::beside(fake, addr);
    let ids = app.fake.visible_ids(ADMIN_TOKEN);

    // A large selection, so that what the consumer leaves unread is large.
    let everything = "subscription { contactChanged { kind id contact { id name firstName \
        lastName responsibleUserId groupId createdBy updatedBy createdAt updatedAt isDeleted \
        accountId customFieldsValues { fieldId fieldName fieldCode fieldType values { value \
        enumId enumCode } } tags { id name } leads { id } } } }";
    // It answers nothing the gateway sends (it reads nothing), but keeps sending the
    // protocol's own pings: not silent, only slow.
    let mut slow = RawWs::connect(addr, Some(4096)).await;
    slow.init(json!({})).await;
    for n in 0..20 {
        let id = format!("slow-{n}");
        slow.send(subscribe(&id, json!({ "query": everything })))
            .await;
    }
    app.wait_for_metric("gateway_live_subscriptions", 20.0)
        .await;

    // A first round warms the gateway up (its allocator, the caches); the consumer has read
    // nothing since subscribing, and never will while the changes go on.
    change_all(&app, &ids, 0).await;
    app.wait_for_metric("gateway_live_events_delivered_total", 1.0)
        .await;
    let before = rss_kib(pid);
    let mut peak = before;
    let started = tokio::time::Instant::now();
    let mut rounds = 0;
    let mut samples = Vec::new();
    while app.metric_total("gateway_live_disconnects_total").await == 0.0 {
        assert!(started.elapsed() < WITHIN, "the consumer was never cut off");
        rounds += 1;
        change_all(&app, &ids, rounds).await;
        slow.send(json!({ "type": "ping" })).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rss = rss_kib(pid);
        samples.push(rss);
        peak = peak.max(rss);
    }
    // Every change of every round was read for the consumer's scope and offered to its
    // subscription: 2 400 contacts per round, a kilobyte or more each as selected.
    assert!(rounds >= 3, "only {rounds} rounds before the cut");
    let grown_kib = peak.saturating_sub(before);
    eprintln!(
        "slow consumer: {rounds} rounds of {} changes, RSS {before} KiB -> peak {peak} KiB: {samples:?}",
        ids.len()
    );
    // Cut off for not taking what it was sent, not for silence.
    let slow_cuts = app
        .metric("gateway_live_disconnects_total{reason=\"slow\"}")
        .await;
    let silent_cuts = app
        .metric("gateway_live_disconnects_total{reason=\"silent\"}")
        .await;
    assert_eq!((slow_cuts, silent_cuts), (1.0, 0.0));
    assert!(
        grown_kib < 16 * 1024,
        "RSS grew by {grown_kib} KiB over {rounds} rounds of {} changes (from {before} KiB)",
        ids.len()
    );
    // And it levels off (the first rounds fill the caches and the allocator's arenas): over
    // the second half of the rounds, while the consumer still held its place, it hardly moved.
    let half = &samples[samples.len() / 2..];
    let late_kib = half.iter().max().copied().unwrap_or(0) - half[0];
    assert!(late_kib < 4 * 1024, "RSS still grew late: {samples:?} KiB");
    // It was disconnected: what it had been sent, then the end.
    let ended = slow.ended(WITHIN).await;
    assert_eq!(ended, Some(Ended::Dropped));
    gateway.kill().await.expect("stops");
}

#[tokio::test]
async fn sigterm_ends_every_stream_with_its_protocols_ending() {
    let fake = FakeAmoCrm::start(([127, 0, 0, 1], 0).into(), FakeOptions::default())
        .await
        .expect("the fake starts");
    let (mut gateway, graphiql) =
        crate::cli::spawn_in_front_of(&fake.base_url(), &["--drain-delay", "0s"]).await;
    let url = graphiql.replace("/graphiql", "/graphql");
    let mut ws = LiveClient::start("ws", &url, json!({ "query": CHANGED })).await;
    let mut sse = LiveClient::start("sse", &url, json!({ "query": CHANGED })).await;
    ws.ready().await;
    sse.established().await;
    let pid = gateway.id().expect("running").to_string();
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill runs");
    assert!(status.success());
    assert_eq!(ws.closed_with(WITHIN).await, Some(1001));
    let ended = sse.next_line(WITHIN).await.expect("a line");
    assert_eq!(ended["type"], "complete", "{ended}");
    let exit = tokio::time::timeout(WITHIN, gateway.wait())
        .await
        .expect("the gateway exits")
        .expect("its status");
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn a_subscribe_before_the_acknowledgement_is_closed_unauthorized() {
    let app = TestApp::spawn().await;
    let mut ws = RawWs::connect(app.addr, None).await;
    ws.send(subscribe("1", json!({ "query": CHANGED }))).await;
    assert_eq!(ws.ended(WITHIN).await, Some(Ended::Closed(4401)));
    assert_eq!(app.upstream_calls(), 0);
}

#[tokio::test]
async fn a_second_subscribe_with_a_running_id_is_closed_4409() {
    let app = TestApp::spawn().await;
    let mut ws = RawWs::connect(app.addr, None).await;
    ws.init(admin()).await;
    ws.send(subscribe("same", json!({ "query": CHANGED })))
        .await;
    app.wait_for_metric("gateway_live_subscriptions", 1.0).await;
    ws.send(subscribe("same", json!({ "query": CHANGED })))
        .await;
    assert_eq!(ws.ended(WITHIN).await, Some(Ended::Closed(4409)));
}

#[tokio::test]
async fn an_id_may_be_used_again_once_its_operation_completed() {
    let app = TestApp::spawn().await;
    let mut ws = RawWs::connect(app.addr, None).await;
    ws.init(admin()).await;
    ws.send(subscribe("again", json!({ "query": CHANGED })))
        .await;
    app.wait_for_metric("gateway_live_subscriptions", 1.0).await;
    ws.send(json!({ "id": "again", "type": "complete" })).await;
    // async-graphql confirms the client's `complete` with its own (clients ignore it).
    assert_eq!(
        ws.next_json(WITHIN).await,
        json!({ "type": "complete", "id": "again" })
    );
    // A query over the socket completes by itself; its id is free afterwards, too.
    let query = json!({ "query": "{ contacts(first: 1) { nodes { id } } }" });
    ws.send(subscribe("again", query.clone())).await;
    let next = ws.next_json(WITHIN).await;
    assert_eq!(next["type"], "next", "{next}");
    assert_eq!(next["id"], "again");
    let complete = ws.next_json(WITHIN).await;
    assert_eq!(complete, json!({ "type": "complete", "id": "again" }));
    ws.send(subscribe("again", query)).await;
    assert_eq!(ws.next_json(WITHIN).await["type"], "next");
}

#[tokio::test]
async fn an_unreadable_message_is_closed_4400() {
    let app = TestApp::spawn().await;
    let mut ws = RawWs::connect(app.addr, None).await;
    ws.init(admin()).await;
    ws.send(json!({ "type": "subscribe", "id": 7 })).await;
    assert_eq!(ws.ended(WITHIN).await, Some(Ended::Closed(4400)));
}

#[tokio::test]
async fn a_subscribe_is_held_to_the_document_bound_and_persisted_only() {
    let manifest = std::env::temp_dir().join(format!("live-manifest-{}.json", std::process::id()));
    let hash = amocrm_gateway::persisted::QueryHash::of(CHANGED).hex();
    let body = json!({
        "format": "apollo-persisted-query-manifest",
        "version": 1,
        "operations": [{ "id": hash, "name": "Changed", "type": "subscription", "body": CHANGED }]
    });
    std::fs::write(&manifest, body.to_string()).expect("a temporary file");
    let path = manifest.to_string_lossy().into_owned();
    let app = TestApp::spawn_with(
        &[
            "--persisted-queries",
            &path,
            "--persisted-only",
            "--max-document-bytes",
            "200",
        ],
        FakeOptions::default(),
    )
    .await;
    let mut ws = RawWs::connect(app.addr, None).await;
    ws.init(admin()).await;

    let other = "subscription { contactChanged { id } }";
    ws.send(subscribe("new", json!({ "query": other }))).await;
    let refused = ws.next_json(WITHIN).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["id"], "new");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"], "PERSISTED_QUERY_REQUIRED",
        "{refused}"
    );

    let long = format!(
        "subscription {{ contactChanged {{ id {} }} }}",
        "kind ".repeat(60)
    );
    ws.send(subscribe("long", json!({ "query": long }))).await;
    let refused = ws.next_json(WITHIN).await;
    assert_eq!(refused["id"], "long", "{refused}");
    assert_eq!(refused["payload"][0]["extensions"]["code"], "BAD_REQUEST");
    assert!(
        refused["payload"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("200")),
        "{refused}"
    );

    // By its hash alone, the manifest's subscription runs; the refused ids are free again.
    let by_hash = json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } });
    ws.send(subscribe("new", json!({ "extensions": by_hash })))
        .await;
    app.wait_for_metric("gateway_live_subscriptions", 1.0).await;
    assert_eq!(app.metric("gateway_live_subscriptions").await, 1.0);

    // The older protocol's `start`, which async-graphql would also run, is no way around it.
    let mut legacy = RawWs::connect(app.addr, None).await;
    legacy.init(admin()).await;
    legacy
        .send(json!({ "id": "old", "type": "start", "payload": { "query": other } }))
        .await;
    assert_eq!(legacy.ended(WITHIN).await, Some(Ended::Closed(4400)));
    assert_eq!(app.metric("gateway_live_subscriptions").await, 1.0);
    let _ = std::fs::remove_file(manifest);
}

#[tokio::test]
async fn a_connection_runs_at_most_two_hundred_operations_at_once() {
    let options = FakeOptions {
        latency: Duration::from_secs(2),
        ..FakeOptions::default()
    };
    let app = TestApp::spawn_with(&[], options).await;
    let mut ws = RawWs::connect(app.addr, None).await;
    ws.init(admin()).await;
    let query = json!({ "query": "{ contacts(first: 1) { nodes { id } } }" });
    for n in 0..=200 {
        ws.send(subscribe(&format!("q{n}"), query.clone())).await;
    }
    // The 201st is refused at once; the others wait for the slow upstream, then answer.
    let refused = ws.next_json(WITHIN).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["id"], "q200");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"],
        "TOO_MANY_SUBSCRIPTIONS"
    );
    let answered = ws.next_json(WITHIN).await;
    assert_eq!(answered["type"], "next", "{answered}");
}

#[tokio::test]
async fn a_document_sent_with_its_hash_over_a_websocket_is_stored_for_later() {
    let app = TestApp::spawn().await;
    let hash = amocrm_gateway::persisted::QueryHash::of(CHANGED).hex();
    let extensions = json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } });
    let mut first = RawWs::connect(app.addr, None).await;
    first.init(admin()).await;
    first
        .send(subscribe(
            "1",
            json!({ "query": CHANGED, "extensions": extensions }),
        ))
        .await;
    app.wait_for_metric("gateway_live_subscriptions", 1.0).await;
    // By its hash alone, on another connection.
    let mut second = RawWs::connect(app.addr, None).await;
    second.init(admin()).await;
    second
        .send(subscribe("1", json!({ "extensions": extensions })))
        .await;
    app.wait_for_metric("gateway_live_subscriptions", 2.0).await;
}

/// Operations over one WebSocket are separate requests: one that ran over its upstream-call
/// budget does not refuse the next one's linked entities (async-graphql hands every operation
/// on a connection the same data; each gets a request context of its own).
#[tokio::test]
async fn each_operation_over_a_websocket_has_its_own_budget() {
    use amocrm_gateway::fake_amocrm::Failure;
    let app = TestApp::spawn_with(&["--max-upstream-calls", "3"], FakeOptions::default()).await;
    let mut ws = RawWs::connect(app.addr, None).await;
    ws.init(admin()).await;
    let codes = |next: &Value| crate::support::error_codes(&next["payload"]);
    // 10 contacts with 100 leads each: 4 lead batches, beyond the 2 the price left.
    app.fake.fail_next([Failure::body(
        "application/hal+json",
        crate::planning::page_with_leads(10, 100),
    )]);
    let over = "{ contacts(first: 10) { nodes { id leads { id name } } } }";
    ws.send(subscribe("over", json!({ "query": over }))).await;
    let next = ws.next_json(WITHIN).await;
    assert_eq!(codes(&next), ["QUERY_TOO_COMPLEX"], "{next}");
    assert_eq!(ws.next_json(WITHIN).await["type"], "complete");

    // Within the budget, on the same connection: the leads are asked for (these made-up ones
    // are not in the fake, so NOT_FOUND), never QUERY_TOO_COMPLEX.
    app.fake.clear_requests();
    app.fake.fail_next([Failure::body(
        "application/hal+json",
        crate::planning::page_with_leads(10, 2),
    )]);
    let within =
        "{ contacts(first: 10, filter: { query: \"c\" }) { nodes { id leads { id name } } } }";
    ws.send(subscribe("within", json!({ "query": within })))
        .await;
    let next = ws.next_json(WITHIN).await;
    let codes = codes(&next);
    assert!(
        !codes.is_empty() && codes.iter().all(|c| c == "NOT_FOUND"),
        "{next}"
    );
    assert!(
        app.fake
            .requests()
            .iter()
            .any(|r| r.path.contains("/leads")),
        "the leads were asked for"
    );
}

/// One client (a client key of the gateway's own token) holds at most 1 000 subscriptions on
/// a replica, however many connections it opens; another client is not held back by it.
#[tokio::test]
async fn a_client_holds_at_most_a_thousand_subscriptions() {
    let (greedy, other) = (
        "greedy-client-key-0123456789",
        "other-client-key-0123456789",
    );
    let keys = format!("{greedy},{other}");
    let app = TestApp::spawn_with(
        &["--access-token", ADMIN_TOKEN, "--client-key", &keys],
        FakeOptions::default(),
    )
    .await;
    let as_client = |key: &str| json!({ "Authorization": format!("Bearer {key}") });
    let mut held = Vec::new();
    for c in 0..10 {
        let mut ws = RawWs::connect(app.addr, None).await;
        ws.init(as_client(greedy)).await;
        for s in 0..100 {
            ws.send(subscribe(&format!("{c}-{s}"), json!({ "query": CHANGED })))
                .await;
        }
        held.push(ws);
    }
    app.wait_for_metric("gateway_live_subscriptions", 1_000.0)
        .await;
    let mut one_more = RawWs::connect(app.addr, None).await;
    one_more.init(as_client(greedy)).await;
    one_more
        .send(subscribe("1001", json!({ "query": CHANGED })))
        .await;
    let refused = one_more.next_json(WITHIN).await;
    assert_eq!(refused["id"], "1001", "{refused}");
    assert_eq!(
        refused["payload"]["errors"][0]["extensions"]["code"], "TOO_MANY_SUBSCRIPTIONS",
        "{refused}"
    );
    let mut another = RawWs::connect(app.addr, None).await;
    another.init(as_client(other)).await;
    another
        .send(subscribe("1", json!({ "query": CHANGED })))
        .await;
    app.wait_for_metric("gateway_live_subscriptions", 1_001.0)
        .await;
    assert_eq!(app.metric("gateway_live_subscriptions").await, 1_001.0);
}
