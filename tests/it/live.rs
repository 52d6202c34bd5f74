//! Subscriptions (issue 15), driven by the real npm clients (`graphql-ws`, `graphql-sse`)
//! against the gateway, with changes made in the fake and told by webhooks, mutations or the
//! change feed.

use std::time::Duration;

use amocrm_gateway::fake_amocrm::FakeOptions;
use serde_json::{Value, json};

use crate::live_client::LiveClient;
use crate::support::{ADMIN_TOKEN, MANAGER_TOKEN, RedisServer, TestApp};

const SECRET: &str = "live-webhook-secret";
const CHANGED: &str = "subscription($ids: [ID!]) { contactChanged(ids: $ids) { kind id \
    contact { id name } } }";
const WITHIN: Duration = Duration::from_secs(10);

fn bearer(token: &str) -> Value {
    json!(format!("Bearer {token}"))
}

async fn webhook(app: &TestApp, action: &str, id: u64) {
    let answer = app
        .post(
            &format!("/webhooks/amocrm/{SECRET}"),
            None,
            &format!("contacts%5B{action}%5D%5B0%5D%5Bid%5D={id}&account[subdomain]=demo"),
        )
        .await;
    assert_eq!(answer.status(), 200);
}

/// A subscriber of every change the admin may see, over `transport`, once it is connected.
async fn admin_subscriber(app: &TestApp, transport: &str) -> LiveClient {
    let mut client = LiveClient::start(
        transport,
        &app.url("/graphql"),
        json!({ "query": CHANGED, "authorization": bearer(ADMIN_TOKEN) }),
    )
    .await;
    match transport {
        "ws" => client.ready().await,
        _ => client.established().await,
    }
    client
}

/// A contact the admin sees and the manager does not.
fn admin_only(app: &TestApp) -> u64 {
    let manager = app.fake.visible_ids(MANAGER_TOKEN);
    app.fake
        .visible_ids(ADMIN_TOKEN)
        .into_iter()
        .find(|id| !manager.contains(id))
        .expect("a contact only the admin sees")
}

#[tokio::test]
async fn a_webhook_reaches_the_subscribers_who_may_see_the_contact_over_both_transports() {
    let app = TestApp::spawn_with(&["--webhook-secret", SECRET], FakeOptions::default()).await;
    let id = admin_only(&app);
    let mut ws = LiveClient::start(
        "ws",
        &app.url("/graphql"),
        json!({ "query": CHANGED, "authorization": bearer(ADMIN_TOKEN) }),
    )
    .await;
    let mut sse = LiveClient::start(
        "sse",
        &app.url("/graphql"),
        json!({ "query": CHANGED, "variables": { "ids": [id.to_string()] },
            "authorization": bearer(ADMIN_TOKEN) }),
    )
    .await;
    let mut manager = LiveClient::start(
        "ws",
        &app.url("/graphql"),
        json!({ "query": CHANGED, "authorization": bearer(MANAGER_TOKEN), "authIn": "header" }),
    )
    .await;
    ws.ready().await;
    sse.established().await;
    manager.ready().await;
    // The subscriptions are registered once the server has handled the subscribe messages.
    app.wait_for_metric("gateway_live_subscriptions", 3.0).await;

    app.fake.rename_contact(id, "Живое Имя");
    webhook(&app, "update", id).await;
    for client in [&mut ws, &mut sse] {
        let event = client.expect_next(WITHIN).await;
        assert_eq!(
            event["data"]["contactChanged"],
            json!({ "kind": "UPDATED", "id": id.to_string(),
                "contact": { "id": id.to_string(), "name": "Живое Имя" } })
        );
    }
    manager.expect_nothing(Duration::from_millis(500)).await;
    // One read per scope, each with its own token: the admin's, and the manager's (whose token
    // amoCRM has not verified yet, so it waits in the shared probation lane), which found
    // nothing to tell; and, before the change, the SSE subscription's read of the contact it
    // names (to know its token may see it).
    let reads = |app: &TestApp| {
        let mut tokens: Vec<String> = app
            .fake
            .requests()
            .into_iter()
            .filter(|r| r.params("filter[id][]").contains(&id.to_string().as_str()))
            .filter_map(|r| r.token)
            .collect();
        tokens.sort();
        tokens
    };
    let deadline = tokio::time::Instant::now() + WITHIN;
    while reads(&app).len() < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reads(&app), [ADMIN_TOKEN, ADMIN_TOKEN, MANAGER_TOKEN]);
}

#[tokio::test]
async fn a_hundred_subscribers_of_one_scope_cost_one_read_per_change() {
    let app = TestApp::spawn_with(&["--webhook-secret", SECRET], FakeOptions::default()).await;
    let id = app.fake.visible_ids(ADMIN_TOKEN)[5];
    let mut client = LiveClient::start(
        "ws",
        &app.url("/graphql"),
        json!({ "query": CHANGED, "authorization": bearer(ADMIN_TOKEN), "subscriptions": 100 }),
    )
    .await;
    client.ready().await;
    app.wait_for_metric("gateway_live_subscriptions", 100.0)
        .await;
    app.fake.clear_requests();
    app.fake.rename_contact(id, "Сто Раз");
    // A burst: three webhooks at once.
    futures::future::join_all((0..3).map(|_| webhook(&app, "update", id))).await;
    let mut told = std::collections::HashSet::new();
    for _ in 0..100 {
        let line = client.expect_next_line(WITHIN).await;
        assert_eq!(
            line["payload"]["data"]["contactChanged"]["contact"]["name"],
            "Сто Раз"
        );
        told.insert(line["index"].as_u64().expect("an index"));
    }
    assert_eq!(told.len(), 100, "every subscriber heard it");
    client.expect_nothing(Duration::from_millis(300)).await;
    assert_eq!(app.upstream_calls(), 1, "{:#?}", app.fake.requests());
}

#[tokio::test]
async fn a_deleted_contact_is_told_with_no_contact() {
    let app = TestApp::spawn_with(&["--webhook-secret", SECRET], FakeOptions::default()).await;
    let id = app.fake.visible_ids(ADMIN_TOKEN)[7];
    let mut client = LiveClient::start(
        "ws",
        &app.url("/graphql"),
        json!({ "query": CHANGED, "variables": { "ids": [id.to_string()] },
            "authorization": bearer(ADMIN_TOKEN) }),
    )
    .await;
    client.ready().await;
    app.wait_for_metric("gateway_live_subscriptions", 1.0).await;
    // The subscription reads the contacts it names, to know its token may see them: a
    // deleted one can no longer be read.
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !app
        .fake
        .requests()
        .iter()
        .any(|r| r.params("filter[id][]") == [id.to_string().as_str()])
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the named contact was never read"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    webhook(&app, "delete", id).await;
    let event = client.expect_next(WITHIN).await;
    assert_eq!(
        event["data"]["contactChanged"],
        json!({ "kind": "DELETED", "id": id.to_string(), "contact": null })
    );
}

#[tokio::test]
async fn a_mutation_at_one_replica_reaches_a_subscriber_at_the_other() {
    let redis = RedisServer::start().await;
    let (a, b) = crate::support::replicas(&redis, FakeOptions::default(), &[]).await;
    let id = a.fake.visible_ids(ADMIN_TOKEN)[2];
    let mut client = admin_subscriber(&b, "sse").await;
    b.wait_for_metric("gateway_live_subscriptions", 1.0).await;
    let renamed = a
        .query_with(
            Some(ADMIN_TOKEN),
            "mutation($id: ID!) { updateContacts(input: [{ id: $id, name: \"С Реплики А\" }]) \
             { contacts { id } } }",
            json!({ "id": id.to_string() }),
        )
        .await;
    renamed.data();
    let event = client.expect_next(WITHIN).await;
    assert_eq!(event["data"]["contactChanged"]["kind"], "UPDATED");
    assert_eq!(
        event["data"]["contactChanged"]["contact"]["name"],
        "С Реплики А"
    );
}

#[tokio::test]
async fn without_webhooks_the_change_feed_finds_a_change_within_two_intervals() {
    let app = TestApp::spawn_with(&["--live-poll-interval", "1s"], FakeOptions::default()).await;
    let id = app.fake.visible_ids(ADMIN_TOKEN)[9];
    let mut client = admin_subscriber(&app, "ws").await;
    app.wait_for_metric("gateway_live_subscriptions", 1.0).await;
    // A change made in amoCRM, of which no webhook tells. Its `updated_at` is this second,
    // which the feed (asking from a second before it started) covers.
    app.fake.rename_contact(id, "Из Ленты");
    let started = tokio::time::Instant::now();
    let event = client.expect_next(Duration::from_secs(3)).await;
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(event["data"]["contactChanged"]["id"], id.to_string());
    assert_eq!(
        event["data"]["contactChanged"]["contact"]["name"],
        "Из Ленты"
    );
    // The feed's calls: one an interval, and each names the changed contacts itself.
    let feed_calls = app
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.param("filter[updated_at][from]").is_some())
        .count();
    assert!((1..=4).contains(&feed_calls), "{feed_calls} feed calls");
    assert!(
        !app.fake
            .requests()
            .iter()
            .any(|r| r.params("filter[id][]").contains(&id.to_string().as_str())),
        "no second read for the feed's own scope"
    );
}

/// A bulk edit without webhooks: more contacts changed within one second than a page holds.
/// The feed pages through that second instead of skipping what did not fit.
#[tokio::test]
async fn without_webhooks_the_change_feed_tells_a_bulk_edit_in_full() {
    // The feed's pages come 0.7 s apart (a tenth of 14 calls a second).
    let app = TestApp::spawn_with(
        &["--live-poll-interval", "200ms", "--upstream-rps", "14"],
        FakeOptions::default(),
    )
    .await;
    let ids: Vec<u64> = app.fake.visible_ids(ADMIN_TOKEN)[..600].to_vec();
    let mut client = admin_subscriber(&app, "ws").await;
    app.wait_for_metric("gateway_live_subscriptions", 1.0).await;
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
    };
    let bulk_second = unix_now().as_secs();
    for id in &ids {
        app.fake.rename_contact(*id, &format!("Лента {id}"));
    }
    let mut told = std::collections::HashSet::new();
    let mut again = false;
    while told.len() < ids.len() || !again {
        let event = client.expect_next(Duration::from_secs(15)).await;
        let changed = &event["data"]["contactChanged"];
        let id: u64 = changed["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("an id");
        if changed["contact"]["name"] == "Снова" {
            again = true;
            continue;
        }
        assert_eq!(changed["contact"]["name"], format!("Лента {id}"), "{event}");
        assert!(told.insert(id), "{id} told twice");
        if told.len() == 250 {
            // The first page told, the next not yet read: the first contact is edited again,
            // in a later second, so it leaves the bulk edit's second and every contact after
            // it moves up a place in the list the feed pages through. (The clock must pass
            // that second first: nothing else would.)
            let now = unix_now();
            if now.as_secs() <= bulk_second {
                let next = Duration::from_secs(bulk_second + 1);
                tokio::time::sleep(next.saturating_sub(now)).await;
            }
            app.fake.rename_contact(ids[0], "Снова");
        }
    }
    client.expect_nothing(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_bad_token_in_connection_init_is_closed_with_4401_and_costs_nothing() {
    let app = TestApp::spawn_with(
        &[
            "--access-token",
            ADMIN_TOKEN,
            "--client-key",
            "the-right-key-0123456789",
        ],
        FakeOptions::default(),
    )
    .await;
    let mut wrong = LiveClient::start(
        "ws",
        &app.url("/graphql"),
        json!({ "query": CHANGED, "authorization": "Bearer not-the-key" }),
    )
    .await;
    assert_eq!(wrong.closed_with(WITHIN).await, Some(4401));
    let forwarding = TestApp::spawn().await;
    let mut none = LiveClient::start(
        "ws",
        &forwarding.url("/graphql"),
        json!({ "query": CHANGED, "authorization": null }),
    )
    .await;
    assert_eq!(none.closed_with(WITHIN).await, Some(4401));
    let mut sse = LiveClient::start(
        "sse",
        &forwarding.url("/graphql"),
        json!({ "query": CHANGED, "authorization": null }),
    )
    .await;
    let error = sse.error_line(WITHIN).await.expect("an error");
    assert_eq!(error["status"], 401, "{error}");
    assert_eq!(app.upstream_calls() + forwarding.upstream_calls(), 0);
}

#[tokio::test]
async fn shutting_down_closes_subscriptions_with_going_away() {
    let fake = amocrm_gateway::fake_amocrm::FakeAmoCrm::start(
        ([127, 0, 0, 1], 0).into(),
        FakeOptions::default(),
    )
    .await
    .expect("the fake starts");
    let (addr, stop) =
        crate::support::start_gateway(&fake.base_url(), &["--drain-delay", "0s"]).await;
    let url = format!("http://{addr}/graphql");
    let mut ws = LiveClient::start(
        "ws",
        &url,
        json!({ "query": CHANGED, "authorization": bearer(ADMIN_TOKEN) }),
    )
    .await;
    let mut sse = LiveClient::start(
        "sse",
        &url,
        json!({ "query": CHANGED, "authorization": bearer(ADMIN_TOKEN) }),
    )
    .await;
    ws.ready().await;
    sse.established().await;
    drop(stop);
    assert_eq!(ws.closed_with(WITHIN).await, Some(1001));
    let ended = sse.next_line(WITHIN).await.expect("a line");
    assert_eq!(ended["type"], "complete", "{ended}");
}

#[tokio::test]
async fn a_connection_holds_at_most_a_hundred_subscriptions() {
    let app = TestApp::spawn().await;
    let mut client = LiveClient::start(
        "ws",
        &app.url("/graphql"),
        json!({ "query": CHANGED, "authorization": bearer(ADMIN_TOKEN), "subscriptions": 101 }),
    )
    .await;
    // The refused one is answered with its error, then completed; the others stay open.
    let refused = loop {
        let line = client.next_line(WITHIN).await.expect("a line");
        if line["type"] == "next" {
            break line;
        }
    };
    assert_eq!(
        refused["payload"]["errors"][0]["extensions"]["code"], "TOO_MANY_SUBSCRIPTIONS",
        "{refused}"
    );
    app.wait_for_metric("gateway_live_subscriptions", 100.0)
        .await;
    assert_eq!(app.metric("gateway_live_subscriptions").await, 100.0);
}

#[tokio::test]
async fn a_token_amocrm_refuses_cannot_hold_a_subscription() {
    let app = TestApp::spawn().await;
    let mut ws = LiveClient::start(
        "ws",
        &app.url("/graphql"),
        json!({ "query": CHANGED, "authorization": "Bearer made-up-token" }),
    )
    .await;
    assert_eq!(ws.closed_with(WITHIN).await, Some(4401));
    let mut sse = LiveClient::start(
        "sse",
        &app.url("/graphql"),
        json!({ "query": CHANGED, "authorization": "Bearer another-made-up-token" }),
    )
    .await;
    let error = sse.error_line(WITHIN).await.expect("an error");
    assert_eq!(error["status"], 401, "{error}");
    assert_eq!(app.metric("gateway_live_subscriptions").await, 0.0);
    // One small call each told amoCRM's answer; nothing more was spent on them.
    assert_eq!(app.upstream_calls(), 2);
}

#[tokio::test]
async fn a_query_that_merely_lists_event_streams_among_its_types_is_answered_as_json() {
    let app = TestApp::spawn().await;
    // What urql sends with every query.
    let accept = "application/graphql-response+json, application/graphql+json, \
        application/json, text/event-stream, multipart/mixed";
    let answer = app
        .http()
        .post(app.url("/graphql"))
        .bearer_auth(ADMIN_TOKEN)
        .header("accept", accept)
        .json(&json!({ "query": "{ contacts(first: 1) { nodes { id } } }" }))
        .send()
        .await
        .expect("answers");
    assert_eq!(
        answer.headers()["content-type"],
        "application/graphql-response+json"
    );
    let body: Value = answer.json().await.expect("JSON");
    assert!(body["data"]["contacts"]["nodes"].is_array(), "{body}");
}

#[tokio::test]
async fn a_deletion_is_not_told_to_a_token_that_never_could_see_the_contact() {
    let app = TestApp::spawn_with(&["--webhook-secret", SECRET], FakeOptions::default()).await;
    let hidden = admin_only(&app);
    let mut manager = LiveClient::start(
        "ws",
        &app.url("/graphql"),
        json!({ "query": CHANGED, "variables": { "ids": [hidden.to_string()] },
            "authorization": bearer(MANAGER_TOKEN) }),
    )
    .await;
    // An admin names it too: hearing of the deletion, it shows that the webhook reached the
    // hub, so the manager's silence means something.
    let mut admin = LiveClient::start(
        "ws",
        &app.url("/graphql"),
        json!({ "query": CHANGED, "variables": { "ids": [hidden.to_string()] },
            "authorization": bearer(ADMIN_TOKEN) }),
    )
    .await;
    manager.ready().await;
    admin.ready().await;
    app.wait_for_metric("gateway_live_subscriptions", 2.0).await;
    // Each subscription's first read of the contact it names, one per token.
    let deadline = tokio::time::Instant::now() + WITHIN;
    while app.upstream_calls() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:#?}",
            app.fake.requests()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    webhook(&app, "delete", hidden).await;
    let event = admin.expect_next(WITHIN).await;
    assert_eq!(
        event["data"]["contactChanged"],
        json!({ "kind": "DELETED", "id": hidden.to_string(), "contact": null })
    );
    manager.expect_nothing(Duration::from_millis(500)).await;
}

/// Clients of the gateway's own token (each with its client key) share a scope: one read per
/// change serves them all, and the scope's events go on when the client that subscribed first
/// leaves.
#[tokio::test]
async fn clients_of_a_shared_token_share_one_read_and_outlast_each_other() {
    let (one_key, two_key) = ("live-client-key-one-0123", "live-client-key-two-0123");
    let keys = format!("{one_key},{two_key}");
    let app = TestApp::spawn_with(
        &[
            "--access-token",
            ADMIN_TOKEN,
            "--client-key",
            &keys,
            "--webhook-secret",
            SECRET,
        ],
        FakeOptions::default(),
    )
    .await;
    let id = app.fake.visible_ids(ADMIN_TOKEN)[3];
    let mut one = LiveClient::start(
        "ws",
        &app.url("/graphql"),
        json!({ "query": CHANGED, "authorization": bearer(one_key) }),
    )
    .await;
    let mut two = LiveClient::start(
        "sse",
        &app.url("/graphql"),
        json!({ "query": CHANGED, "authorization": bearer(two_key) }),
    )
    .await;
    one.ready().await;
    two.established().await;
    app.wait_for_metric("gateway_live_subscriptions", 2.0).await;
    app.fake.clear_requests();
    app.fake.rename_contact(id, "Общий Токен");
    webhook(&app, "update", id).await;
    for client in [&mut one, &mut two] {
        let event = client.expect_next(WITHIN).await;
        assert_eq!(
            event["data"]["contactChanged"]["contact"]["name"],
            "Общий Токен"
        );
    }
    assert_eq!(app.upstream_calls(), 1, "{:#?}", app.fake.requests());

    // The first subscriber leaves; the other still hears of changes.
    one.stop().await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    while app.metric("gateway_live_subscriptions").await > 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first never left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.fake.rename_contact(id, "Остался Один");
    webhook(&app, "update", id).await;
    let event = two.expect_next(WITHIN).await;
    assert_eq!(
        event["data"]["contactChanged"]["contact"]["name"],
        "Остался Один"
    );
}

/// A bulk edit in amoCRM (one webhook naming every contact, more than twice the backlog) is
/// read 250 at a time and told in rounds, so a subscriber who keeps up hears of every contact and is never taken
/// for a slow one.
#[tokio::test]
async fn a_bulk_edit_reaches_a_subscriber_who_keeps_up_in_full() {
    let app = TestApp::spawn_with(&["--webhook-secret", SECRET], FakeOptions::default()).await;
    let ids: Vec<u64> = app.fake.visible_ids(ADMIN_TOKEN);
    assert!(ids.len() > 2 * amocrm_gateway::live::SUBSCRIBER_BACKLOG);
    let mut client = admin_subscriber(&app, "ws").await;
    app.wait_for_metric("gateway_live_subscriptions", 1.0).await;
    app.fake.clear_requests();
    let mut body = String::from("account[subdomain]=demo");
    for (i, id) in ids.iter().enumerate() {
        app.fake.rename_contact(*id, &format!("Массово {id}"));
        body.push_str(&format!("&contacts%5Bupdate%5D%5B{i}%5D%5Bid%5D={id}"));
    }
    let answer = app
        .post(&format!("/webhooks/amocrm/{SECRET}"), None, &body)
        .await;
    assert_eq!(answer.status(), 200);
    let mut told = std::collections::HashSet::new();
    while told.len() < ids.len() {
        let event = client.expect_next(Duration::from_secs(30)).await;
        let changed = &event["data"]["contactChanged"];
        assert_eq!(changed["kind"], "UPDATED", "{event}");
        let id: u64 = changed["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("an id");
        assert_eq!(changed["contact"]["name"], format!("Массово {id}"));
        told.insert(id);
    }
    client.expect_nothing(Duration::from_millis(300)).await;
    let rounds = ids.len().div_ceil(250);
    assert_eq!(app.upstream_calls(), rounds, "{:#?}", app.fake.requests());
}

/// Where every subscriber of a scope named its contacts (detail screens), a change of any
/// other contact costs the scope no read.
#[tokio::test]
async fn a_scope_whose_subscribers_name_their_contacts_reads_only_those() {
    let app = TestApp::spawn_with(&["--webhook-secret", SECRET], FakeOptions::default()).await;
    let visible = app.fake.visible_ids(ADMIN_TOKEN);
    let (named, other) = (visible[4], visible[5]);
    let mut client = LiveClient::start(
        "ws",
        &app.url("/graphql"),
        json!({ "query": CHANGED, "variables": { "ids": [named.to_string()] },
            "authorization": bearer(ADMIN_TOKEN) }),
    )
    .await;
    client.ready().await;
    app.wait_for_metric("gateway_live_subscriptions", 1.0).await;
    // The subscription's start reads its named contact once; wait for that, then count.
    let deadline = tokio::time::Instant::now() + WITHIN;
    while app.upstream_calls() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the named contact was never read"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.fake.clear_requests();
    app.fake.rename_contact(other, "Чужой");
    webhook(&app, "update", other).await;
    app.fake.rename_contact(named, "Свой");
    webhook(&app, "update", named).await;
    // A scope's reads run one after another: once the named contact's event is here, a read
    // for the other would have been made before it.
    let event = client.expect_next(WITHIN).await;
    assert_eq!(event["data"]["contactChanged"]["contact"]["name"], "Свой");
    let reads: Vec<Vec<String>> = app
        .fake
        .requests()
        .iter()
        .map(|r| {
            r.params("filter[id][]")
                .iter()
                .map(|id| id.to_string())
                .collect()
        })
        .collect();
    assert_eq!(reads, [vec![named.to_string()]]);
}

/// A subscription reads the contacts it names when it starts, unless its scope knows them
/// already: another subscription to them (a second tab on the same contact) costs no read.
#[tokio::test]
async fn subscribing_again_to_the_same_contact_costs_no_second_read() {
    use crate::raw_ws::RawWs;
    let app = TestApp::spawn_with(&["--webhook-secret", SECRET], FakeOptions::default()).await;
    let id = app.fake.visible_ids(ADMIN_TOKEN)[6];
    let named = |r: &amocrm_gateway::fake_amocrm::RecordedRequest| {
        r.params("filter[id][]") == [id.to_string().as_str()]
    };
    let subscribe = |sub: &str| {
        json!({ "id": sub, "type": "subscribe", "payload": {
            "query": CHANGED, "variables": { "ids": [id.to_string()] } } })
    };
    let mut ws = RawWs::connect(app.addr, None).await;
    ws.init(json!({ "Authorization": format!("Bearer {ADMIN_TOKEN}") }))
        .await;
    ws.send(subscribe("first")).await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !app.fake.requests().iter().any(named) {
        assert!(tokio::time::Instant::now() < deadline, "never read");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ws.send(subscribe("again")).await;
    app.wait_for_metric("gateway_live_subscriptions", 2.0).await;
    app.fake.rename_contact(id, "Снова Открыт");
    webhook(&app, "update", id).await;
    // Both hear of it, which shows the second subscription is past its start.
    let mut told = Vec::new();
    for _ in 0..2 {
        let message = ws.next_json(WITHIN).await;
        assert_eq!(
            message["payload"]["data"]["contactChanged"]["contact"]["name"], "Снова Открыт",
            "{message}"
        );
        told.push(message["id"].as_str().expect("an id").to_owned());
    }
    told.sort();
    assert_eq!(told, ["again", "first"]);
    // The first subscription's read, then the webhook's: none for the second subscription.
    let reads = app.fake.requests().iter().filter(|r| named(r)).count();
    assert_eq!(reads, 2, "{:#?}", app.fake.requests());
}
