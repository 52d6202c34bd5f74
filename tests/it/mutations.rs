//! Writes through the gateway (issue 14): what reached the fake, and what every later read
//! shows. The fake answers writes as amoCRM does: ids only, 204 on unlink, problem+json
//! validation errors, and a switch that applies a write and then never answers it.

use std::time::Duration;

use amocrm_gateway::fake_amocrm::{FakeOptions, PHONE_FIELD_ID, SOURCE_FIELD_ID};
use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, MANAGER_TOKEN, MANAGER_USER_ID, RedisServer, TestApp, ids};

const CREATE: &str = "mutation($input: [ContactCreateInput!]!, $key: String) {
    createContacts(input: $input, idempotencyKey: $key) {
        contacts { id name responsibleUserId customFieldsValues { fieldId values { value enumCode } } }
    } }";

const UPDATE: &str = "mutation($input: [ContactUpdateInput!]!) {
    updateContacts(input: $input) {
        contacts { id name updatedAt customFieldsValues { fieldId values { value enumCode } } }
    } }";

/// The writes that reached the fake, as (method, path).
fn writes(app: &TestApp) -> Vec<(String, String)> {
    app.fake
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .map(|r| (r.method, r.path))
        .collect()
}

fn phone_of(contact: &Value) -> Vec<String> {
    contact["customFieldsValues"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["fieldId"] == json!(PHONE_FIELD_ID.to_string()))
        .flat_map(|f| f["values"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v["value"].as_str().map(str::to_owned))
        .collect()
}

fn phone(value: &str) -> Value {
    json!([{ "fieldId": PHONE_FIELD_ID.to_string(), "values": [{ "value": value, "enumCode": "WORK" }] }])
}

#[tokio::test]
async fn a_created_contact_is_in_the_first_page_and_its_search_at_once() {
    let app = TestApp::spawn().await;
    let newest =
        "{ contacts(first: 5, order: { field: ID, direction: DESC }) { nodes { id name } } }";
    let search = "{ contacts(filter: { query: \"Зиновий Квитко\" }) { nodes { id name } } }";
    // Both lists cached before the write.
    let before = app.query(Some(ADMIN_TOKEN), newest).await;
    assert!(
        app.query(Some(ADMIN_TOKEN), search).await.data()["contacts"]["nodes"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
    assert_eq!(
        app.query(Some(ADMIN_TOKEN), newest).await.header("x-cache"),
        "HIT"
    );

    let created = app
        .query_with(
            Some(ADMIN_TOKEN),
            CREATE,
            json!({ "input": [{ "name": "Зиновий Квитко", "customFields": phone("+7 900 111-22-33") }] }),
        )
        .await;
    let contact = &created.data()["createContacts"]["contacts"][0];
    assert_eq!(contact["name"], "Зиновий Квитко");
    assert_eq!(phone_of(contact), ["+7 900 111-22-33"]);
    assert_eq!(created.header("cache-control"), "no-store");
    let id: u64 = contact["id"]
        .as_str()
        .expect("present")
        .parse()
        .expect("present");

    let after = app.query(Some(ADMIN_TOKEN), newest).await;
    assert_ne!(after.header("x-cache"), "HIT", "no stale page is served");
    assert_eq!(ids(&after.data()["contacts"])[0], id);
    assert_ne!(after.data(), before.data());
    let found = app.query(Some(ADMIN_TOKEN), search).await;
    assert_eq!(ids(&found.data()["contacts"]), [id]);
    // One POST: nothing else was written for it.
    assert_eq!(
        writes(&app),
        [("POST".to_owned(), "/api/v4/contacts".to_owned())]
    );
}

#[tokio::test]
async fn an_updated_phone_shows_at_once_for_the_writer_and_for_another_token() {
    let app = TestApp::spawn().await;
    let list = "{ contacts(first: 50) { nodes { id name customFieldsValues { fieldId values { value enumCode } } } } }";
    // A contact the manager sees too.
    let target = app.fake.visible_ids(MANAGER_TOKEN)[0];
    let admin_before = app.query(Some(ADMIN_TOKEN), list).await;
    assert!(ids(&admin_before.data()["contacts"]).contains(&target));
    app.query(Some(MANAGER_TOKEN), list).await.data();
    // The form that edits the phone has loaded the field definitions.
    app.query(Some(ADMIN_TOKEN), "{ contactCustomFields { id } }")
        .await
        .data();
    app.fake.clear_requests();

    let updated = app
        .query_with(
            Some(ADMIN_TOKEN),
            UPDATE,
            json!({ "input": [{ "id": target.to_string(), "customFields": phone("+7 999 000-00-01") }] }),
        )
        .await;
    assert_eq!(
        phone_of(&updated.data()["updateContacts"]["contacts"][0]),
        ["+7 999 000-00-01"]
    );
    // One write plus one read-back.
    let calls = app.fake.requests();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    assert_eq!(
        (calls[0].method.as_str(), calls[0].path.as_str()),
        ("PATCH", "/api/v4/contacts")
    );
    assert_eq!(calls[1].params("filter[id][]"), [target.to_string()]);

    let shown = |reply: &crate::support::Reply| {
        reply.data()["contacts"]["nodes"]
            .as_array()
            .expect("present")
            .iter()
            .find(|c| c["id"] == json!(target.to_string()))
            .map(phone_of)
            .expect("present")
    };
    let admin_after = app.query(Some(ADMIN_TOKEN), list).await;
    assert_eq!(shown(&admin_after), ["+7 999 000-00-01"]);
    assert_eq!(
        app.fake.requests().len(),
        2,
        "the writer's page was kept with the fresh contact"
    );
    let manager_after = app.query(Some(MANAGER_TOKEN), list).await;
    assert_eq!(shown(&manager_after), ["+7 999 000-00-01"]);
}

#[tokio::test]
async fn a_mutation_at_one_replica_is_seen_at_the_other() {
    let redis = RedisServer::start().await;
    let (a, b) = crate::support::replicas(&redis, FakeOptions::default(), &[]).await;
    let target = a.fake.visible_ids(ADMIN_TOKEN)[3];
    let one = format!("{{ contact(id: {target}) {{ name }} }}");
    let old = b.query(Some(ADMIN_TOKEN), &one).await;
    assert_ne!(old.data()["contact"]["name"], "Переименован на A");
    a.query_with(
        Some(ADMIN_TOKEN),
        UPDATE,
        json!({ "input": [{ "id": target.to_string(), "name": "Переименован на A" }] }),
    )
    .await
    .data();
    let seen = b.query(Some(ADMIN_TOKEN), &one).await;
    assert_eq!(seen.data()["contact"]["name"], "Переименован на A");
}

#[tokio::test]
async fn a_create_retried_with_its_key_after_a_lost_answer_makes_one_contact() {
    let app = TestApp::spawn_with(&["--upstream-timeout", "1s"], FakeOptions::default()).await;
    let newest =
        "{ contacts(first: 5, order: { field: ID, direction: DESC }) { nodes { id name } } }";
    app.query(Some(ADMIN_TOKEN), newest).await.data();
    let input = json!({ "input": [{ "name": "Единственный Экземпляр" }], "key": "form-17" });
    app.fake.time_out_next_write();
    let lost = app
        .query_with(Some(ADMIN_TOKEN), CREATE, input.clone())
        .await;
    assert_eq!(lost.codes(), ["UPSTREAM_OUTCOME_UNKNOWN"], "{}", lost.body);
    assert_eq!(lost.first_error()["extensions"]["argument"], "input[0]");
    assert_eq!(lost.body["data"]["createContacts"]["contacts"], json!([]));
    // The contact may exist: no list is served from before the create.
    let listed = app.query(Some(ADMIN_TOKEN), newest).await;
    assert_ne!(listed.header("x-cache"), "HIT");
    assert_eq!(
        listed.data()["contacts"]["nodes"][0]["name"],
        "Единственный Экземпляр"
    );

    // Too soon: amoCRM may still be working on it, so the gateway neither looks nor sends.
    let early = app
        .query_with(Some(ADMIN_TOKEN), CREATE, input.clone())
        .await;
    assert_eq!(
        early.codes(),
        ["UPSTREAM_OUTCOME_UNKNOWN"],
        "{}",
        early.body
    );
    assert_eq!(writes(&app).len(), 1);
    // Past the settling time the retry finds the contact instead of creating another.
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    let retried = app
        .query_with(Some(ADMIN_TOKEN), CREATE, input.clone())
        .await;
    let contact = &retried.data()["createContacts"]["contacts"][0];
    assert_eq!(contact["name"], "Единственный Экземпляр");
    let same = app.query_with(Some(ADMIN_TOKEN), CREATE, input).await;
    assert_eq!(same.data(), retried.data(), "the kept outcome");
    let named = app
        .fake
        .contacts()
        .into_iter()
        .filter(|c| c.name == "Единственный Экземпляр")
        .count();
    assert_eq!(named, 1, "one contact upstream");
    assert_eq!(writes(&app).len(), 1, "the retry was not sent again");
}

#[tokio::test]
async fn a_create_refused_before_reaching_amocrm_is_sent_again_under_its_key() {
    use amocrm_gateway::fake_amocrm::Failure;
    let app = TestApp::spawn().await;
    let input = json!({ "input": [{ "name": "Со Второго Раза" }], "key": "form-18" });
    // A 429 asking for an hour: not retried within the request, and surely not applied.
    app.fake
        .fail_next([Failure::html(429).with_retry_after("3600")]);
    let refused = app
        .query_with(Some(ADMIN_TOKEN), CREATE, input.clone())
        .await;
    assert_eq!(refused.codes(), ["RATE_LIMITED"], "{}", refused.body);
    assert_eq!(refused.first_error()["extensions"]["argument"], "input[0]");
    let retried = app.query_with(Some(ADMIN_TOKEN), CREATE, input).await;
    assert_eq!(
        retried.data()["createContacts"]["contacts"][0]["name"],
        "Со Второго Раза"
    );
    assert_eq!(writes(&app).len(), 2, "refused once, then sent again");
}

#[tokio::test]
async fn concurrent_creates_with_one_key_make_one_post() {
    let app = TestApp::spawn_with(
        &[],
        FakeOptions {
            latency: Duration::from_millis(100),
            ..FakeOptions::default()
        },
    )
    .await;
    let input = json!({ "input": [{ "name": "Двойной Клик" }], "key": "click-1" });
    let (first, second) = tokio::join!(
        app.query_with(Some(ADMIN_TOKEN), CREATE, input.clone()),
        app.query_with(Some(ADMIN_TOKEN), CREATE, input.clone()),
    );
    assert_eq!(first.data(), second.data());
    assert_eq!(writes(&app).len(), 1);
    let other_input = json!({ "input": [{ "name": "Другое Имя" }], "key": "click-1" });
    let refused = app.query_with(Some(ADMIN_TOKEN), CREATE, other_input).await;
    assert_eq!(refused.codes(), ["BAD_USER_INPUT"]);
    assert_eq!(
        refused.first_error()["extensions"]["argument"],
        "idempotencyKey"
    );
    assert_eq!(writes(&app).len(), 1);
}

#[tokio::test]
async fn a_batch_of_120_with_one_invalid_item_creates_119_in_three_calls() {
    let app = TestApp::spawn().await;
    let input: Vec<Value> = (0..120)
        .map(|i| {
            let mut item = json!({ "name": format!("Пакет {i:03}") });
            if i == 6 {
                item["customFields"] = json!([{
                    "fieldId": PHONE_FIELD_ID.to_string(),
                    "values": [{ "value": "+7 900", "enumCode": "NOPE" }]
                }]);
            }
            item
        })
        .collect();
    let reply = app
        .query_with(Some(ADMIN_TOKEN), CREATE, json!({ "input": input }))
        .await;
    let contacts = reply.body["data"]["createContacts"]["contacts"]
        .as_array()
        .expect("present");
    assert_eq!(contacts.len(), 119);
    assert_eq!(
        contacts[6]["name"], "Пакет 007",
        "the input's order, the failed item left out"
    );
    assert_eq!(reply.codes(), ["BAD_USER_INPUT"]);
    assert_eq!(
        reply.first_error()["extensions"]["argument"],
        "input[6].customFields[0].values[0].enumCode"
    );
    assert_eq!(reply.first_error()["path"], json!(["createContacts"]));
    let posts = writes(&app);
    assert_eq!(posts.len(), 3, "{posts:?}");
}

#[tokio::test]
async fn an_unknown_enum_is_refused_before_any_write() {
    let app = TestApp::spawn().await;
    // The definitions, as a form would load them first.
    let fields = app
        .query(
            Some(ADMIN_TOKEN),
            "{ contactCustomFields { id code type enums { id value } } }",
        )
        .await;
    let phone = fields.data()["contactCustomFields"]
        .as_array()
        .expect("present")
        .iter()
        .find(|f| f["code"] == "PHONE")
        .cloned()
        .expect("present");
    assert_eq!(phone["type"], "multitext");
    assert!(
        phone["enums"]
            .as_array()
            .expect("present")
            .iter()
            .any(|e| e["value"] == "WORK")
    );
    app.fake.clear_requests();
    let reply = app
        .query_with(
            Some(ADMIN_TOKEN),
            CREATE,
            json!({ "input": [{ "name": "X", "customFields": [{
                "fieldCode": "PHONE", "values": [{ "value": "1", "enumCode": "CARRIER_PIGEON" }]
            }] }] }),
        )
        .await;
    assert_eq!(reply.codes(), ["BAD_USER_INPUT"]);
    assert_eq!(
        reply.first_error()["extensions"]["argument"],
        "input[0].customFields[0].values[0].enumCode"
    );
    assert_eq!(app.upstream_calls(), 0, "no upstream call at all");
    // A select takes one of its options.
    let select = app
        .query_with(
            Some(ADMIN_TOKEN),
            CREATE,
            json!({ "input": [{ "customFields": [{
                "fieldId": SOURCE_FIELD_ID.to_string(), "values": [{ "enumId": "999999" }]
            }] }] }),
        )
        .await;
    assert_eq!(select.codes(), ["BAD_USER_INPUT"]);
    assert_eq!(
        select.first_error()["extensions"]["argument"],
        "input[0].customFields[0].values[0].enumId"
    );
    assert_eq!(app.upstream_calls(), 0);
}

#[tokio::test]
async fn a_linked_catalog_element_shows_at_once_and_an_unlink_removes_it() {
    use amocrm_gateway::fake_amocrm::GOODS_CATALOG_ID;
    let app = TestApp::spawn().await;
    let target = app.fake.visible_ids(ADMIN_TOKEN)[10];
    let elements = format!("{{ contact(id: {target}) {{ catalogElements {{ id quantity }} }} }}");
    let before = app.query(Some(ADMIN_TOKEN), &elements).await;
    // A goods element another contact holds, and this one does not.
    let contacts = app.fake.contacts();
    let element = contacts
        .iter()
        .flat_map(|c| c.catalog_elements.iter())
        .find(|e| {
            e.catalog_id == GOODS_CATALOG_ID
                && !contacts
                    .iter()
                    .any(|c| c.id == target && c.catalog_elements.iter().any(|o| o.id == e.id))
        })
        .map(|e| e.id)
        .expect("a goods element");
    assert!(
        !before.data()["contact"]["catalogElements"]
            .as_array()
            .expect("present")
            .iter()
            .any(|e| e["id"] == json!(element.to_string()))
    );
    let link = "mutation($id: ID!, $links: [ContactLinkInput!]!) {
        linkContact(id: $id, links: $links) { contact { catalogElements { id quantity } } } }";
    let links = json!([{ "kind": "CATALOG_ELEMENT", "id": element.to_string(),
        "catalogId": GOODS_CATALOG_ID.to_string(), "quantity": 2.5 }]);
    let linked = app
        .query_with(
            Some(ADMIN_TOKEN),
            link,
            json!({ "id": target.to_string(), "links": links }),
        )
        .await;
    let shown = |v: &Value| {
        v.as_array()
            .expect("present")
            .iter()
            .find(|e| e["id"] == json!(element.to_string()))
            .map(|e| e["quantity"].clone())
    };
    assert_eq!(
        shown(&linked.data()["linkContact"]["contact"]["catalogElements"]),
        Some(json!(2.5))
    );
    let after = app.query(Some(ADMIN_TOKEN), &elements).await;
    assert_eq!(
        shown(&after.data()["contact"]["catalogElements"]),
        Some(json!(2.5))
    );

    let unlink = link.replace("linkContact", "unlinkContact");
    let unlinked = app
        .query_with(
            Some(ADMIN_TOKEN),
            &unlink,
            json!({ "id": target.to_string(), "links": links }),
        )
        .await;
    assert_eq!(
        shown(&unlinked.data()["unlinkContact"]["contact"]["catalogElements"]),
        None
    );
    let gone = app.query(Some(ADMIN_TOKEN), &elements).await;
    assert_eq!(shown(&gone.data()["contact"]["catalogElements"]), None);
    let posts = writes(&app);
    assert_eq!(
        posts,
        [
            ("POST".to_owned(), format!("/api/v4/contacts/{target}/link")),
            (
                "POST".to_owned(),
                format!("/api/v4/contacts/{target}/unlink")
            ),
        ]
    );
}

#[tokio::test]
async fn a_read_only_gateway_refuses_mutations_and_get_refuses_them_everywhere() {
    let app = TestApp::spawn_with(&["--read-only"], FakeOptions::default()).await;
    let reply = app
        .query_with(
            Some(ADMIN_TOKEN),
            CREATE,
            json!({ "input": [{ "name": "Нет" }] }),
        )
        .await;
    assert_eq!(reply.codes(), ["FORBIDDEN"]);
    assert!(
        reply.body.get("data").is_none(),
        "a request error has no data entry: {}",
        reply.body
    );
    assert_eq!(app.upstream_calls(), 0);

    let writable = TestApp::spawn().await;
    let over_get = writable
        .http()
        .get(writable.url("/graphql"))
        .query(&[(
            "query",
            "mutation { createContacts(input: [{ name: \"G\" }]) { contacts { id } } }",
        )])
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("present");
    assert_eq!(over_get.status(), 405);
    assert_eq!(over_get.headers()["allow"], "POST");
    assert_eq!(writable.upstream_calls(), 0);
}

#[tokio::test]
async fn an_operation_writing_more_than_250_contacts_is_refused_before_any_call() {
    let app = TestApp::spawn().await;
    let input: Vec<Value> = (0..251)
        .map(|i| json!({ "name": format!("N{i}") }))
        .collect();
    let reply = app
        .query_with(Some(ADMIN_TOKEN), CREATE, json!({ "input": input }))
        .await;
    assert_eq!(reply.codes(), ["QUERY_TOO_COMPLEX"]);
    assert_eq!(app.upstream_calls(), 0);
}

#[tokio::test]
async fn a_manager_creates_contacts_it_is_responsible_for() {
    let app = TestApp::spawn().await;
    let reply = app
        .query_with(
            Some(MANAGER_TOKEN),
            CREATE,
            json!({ "input": [{ "name": "Свой Контакт" }] }),
        )
        .await;
    let contact = &reply.data()["createContacts"]["contacts"][0];
    assert_eq!(
        contact["responsibleUserId"],
        json!(MANAGER_USER_ID.to_string())
    );
    let token = app
        .fake
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .expect("present")
        .token;
    assert_eq!(
        token.as_deref(),
        Some(MANAGER_TOKEN),
        "the caller's own token wrote"
    );
}

#[tokio::test]
async fn an_item_amocrm_refuses_is_named_in_the_clients_terms_and_the_rest_are_created() {
    let app = TestApp::spawn().await;
    // A responsible user the account does not have: only amoCRM can tell.
    let input: Vec<Value> = (0..60)
        .map(|i| {
            let mut item = json!({ "name": format!("Сверка {i:02}") });
            if i == 6 {
                item["responsibleUserId"] = json!("999999");
            }
            item
        })
        .collect();
    let reply = app
        .query_with(Some(ADMIN_TOKEN), CREATE, json!({ "input": input }))
        .await;
    let contacts = reply.body["data"]["createContacts"]["contacts"]
        .as_array()
        .expect("the created contacts");
    assert_eq!(contacts.len(), 59);
    assert_eq!(reply.codes(), ["BAD_USER_INPUT"]);
    let error = reply.first_error();
    assert_eq!(
        error["extensions"]["argument"],
        "input[6].responsibleUserId"
    );
    assert_eq!(error["extensions"]["upstreamCode"], "NotSupportedChoice");
    // The first batch refused whole, then sent again without the item; then the last ten.
    let posts: Vec<usize> = app
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.body.and_then(|b| b.as_array().map(Vec::len)).unwrap_or(0))
        .collect();
    assert_eq!(posts, [50, 49, 10]);
    let named = app
        .fake
        .contacts()
        .into_iter()
        .filter(|c| c.name.starts_with("Сверка "))
        .count();
    assert_eq!(named, 59);
}

#[tokio::test]
async fn one_key_sent_to_two_replicas_at_once_makes_one_post() {
    let redis = RedisServer::start().await;
    let options = FakeOptions {
        latency: Duration::from_millis(200),
        ..FakeOptions::default()
    };
    let (a, b) = crate::support::replicas(&redis, options, &[]).await;
    let input = json!({ "input": [{ "name": "Через Две Реплики" }], "key": "twice-1" });
    let (at_a, at_b) = tokio::join!(
        a.query_with(Some(ADMIN_TOKEN), CREATE, input.clone()),
        b.query_with(Some(ADMIN_TOKEN), CREATE, input.clone()),
    );
    assert_eq!(at_a.data(), at_b.data());
    assert_eq!(writes(&a).len(), 1, "{:?}", writes(&a));
    let other = json!({ "input": [{ "name": "Иначе" }], "key": "twice-1" });
    let refused = b.query_with(Some(ADMIN_TOKEN), CREATE, other).await;
    assert_eq!(refused.codes(), ["BAD_USER_INPUT"]);
}

#[tokio::test]
async fn a_persisted_mutation_runs_over_post_by_its_hash() {
    use sha2::{Digest, Sha256};
    let app = TestApp::spawn().await;
    let document = "mutation($name: String!) { createContacts(input: [{ name: $name }]) \
        { contacts { name } } }";
    let extensions = json!({ "persistedQuery": {
        "version": 1, "sha256Hash": hex::encode(Sha256::digest(document.as_bytes())) } });
    let send = |body: Value| {
        let request = app
            .http()
            .post(app.url("/graphql"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body);
        async move { TestApp::reply(request.send().await.expect("answers")).await }
    };
    let registered = send(
        json!({ "query": document, "variables": { "name": "APQ Один" },
        "extensions": extensions }),
    )
    .await;
    assert_eq!(
        registered.data()["createContacts"]["contacts"][0]["name"],
        "APQ Один"
    );
    let by_hash =
        send(json!({ "variables": { "name": "APQ Два" }, "extensions": extensions })).await;
    assert_eq!(
        by_hash.data()["createContacts"]["contacts"][0]["name"],
        "APQ Два"
    );
    // The same bytes again are another write, never a cached answer.
    let again = send(json!({ "variables": { "name": "APQ Два" }, "extensions": extensions })).await;
    assert_eq!(again.header("cache-control"), "no-store");
    assert_eq!(writes(&app).len(), 3);
}

#[tokio::test]
async fn the_idempotency_key_header_works_like_the_argument() {
    let app = TestApp::spawn().await;
    let send = |key: &'static str, argument: Option<&'static str>| {
        let request = app
            .http()
            .post(app.url("/graphql"))
            .bearer_auth(ADMIN_TOKEN)
            .header("idempotency-key", key)
            .json(&json!({ "query": CREATE, "variables": {
                "input": [{ "name": "По Заголовку" }], "key": argument } }));
        async move { TestApp::reply(request.send().await.expect("answers")).await }
    };
    let first = send("header-1", None).await;
    let second = send("header-1", None).await;
    assert_eq!(first.data(), second.data());
    assert_eq!(writes(&app).len(), 1);
    let both = send("header-1", Some("another")).await;
    assert_eq!(both.codes(), ["BAD_USER_INPUT"]);
    assert_eq!(
        both.first_error()["extensions"]["argument"],
        "idempotencyKey"
    );
    assert_eq!(writes(&app).len(), 1);
}

#[tokio::test]
async fn a_burst_of_writes_keeps_to_the_upstream_rate_limit() {
    let app = TestApp::spawn_with(
        &["--upstream-queue-timeout", "2s"],
        FakeOptions {
            rate_limit: Some(7),
            latency: Duration::from_millis(20),
            ..FakeOptions::default()
        },
    )
    .await;
    let ids = app.fake.visible_ids(ADMIN_TOKEN);
    let replies = futures::future::join_all((0..40).map(|i| {
        app.query_with(
            Some(ADMIN_TOKEN),
            UPDATE,
            json!({ "input": [{ "id": ids[i].to_string(), "name": format!("Всплеск {i}") }] }),
        )
    }))
    .await;
    let mut answered = 0;
    for reply in &replies {
        match reply.codes().as_slice() {
            [] => answered += 1,
            codes => assert!(
                codes.iter().all(|c| c == "RATE_LIMITED"),
                "neither answered nor RATE_LIMITED: {}",
                reply.body
            ),
        }
    }
    // Read-backs go first in the caller's lane: the writes that went out are answered whole,
    // about one for every two slots of the queue timeout.
    assert!(answered >= 5, "answered {answered}");
    let requests = app.fake.requests();
    assert!(
        requests.iter().all(|r| !r.rate_limited),
        "amoCRM never said 429"
    );
    let busiest = app.fake.busiest_second();
    assert!(busiest <= 7, "{busiest} calls in one second");
}

#[tokio::test]
async fn graphiqls_example_mutation_runs_and_creates_its_contact() {
    use amocrm_gateway::graphiql::{EXAMPLE_MUTATION, page};
    let app = TestApp::spawn().await;
    assert!(
        page(None).contains("createContacts"),
        "the playground opens it in a tab"
    );
    let reply = app
        .query_with(
            Some(ADMIN_TOKEN),
            EXAMPLE_MUTATION,
            json!({ "name": "Анна Смирнова", "phone": "+7 900 123-45-67", "key": "example-1" }),
        )
        .await;
    let contact = &reply.data()["createContacts"]["contacts"][0];
    assert_eq!(contact["name"], "Анна Смирнова");
    assert_eq!(
        contact["customFieldsValues"][0]["values"][0],
        json!({ "value": "+7 900 123-45-67", "enumCode": "WORK" })
    );
    assert_eq!(
        writes(&app),
        [("POST".to_owned(), "/api/v4/contacts".to_owned())]
    );
}
