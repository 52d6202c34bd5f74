//! Linked entities load in one batch per kind per operation, are cached per scope, and fail
//! one entity at a time.

use std::collections::BTreeMap;

use amocrm_gateway::fake_amocrm::{DELETED_LEAD_EVERY, FakeOptions};
use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, MANAGER_TOKEN, TestApp};

/// How many calls reached each path.
fn calls_by_path(app: &TestApp) -> BTreeMap<String, usize> {
    let mut calls = BTreeMap::new();
    for request in app.fake.requests() {
        *calls.entry(request.path).or_default() += 1;
    }
    calls
}

fn paths(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(p, n)| ((*p).to_owned(), *n)).collect()
}

#[tokio::test]
async fn fifty_contacts_with_their_leads_cost_one_call_each() {
    let app = TestApp::spawn().await;
    let reply = app
        .query(
            Some(ADMIN_TOKEN),
            "{ contacts(first: 50) { nodes { id leads { id name price isWon } } } }",
        )
        .await;
    assert_eq!(
        calls_by_path(&app),
        paths(&[("/api/v4/contacts", 1), ("/api/v4/leads", 1)])
    );
    let contacts = app.fake.contacts();
    let expected_ids: Vec<u64> = {
        let mut ids: Vec<u64> = contacts[..50]
            .iter()
            .flat_map(|c| c.lead_ids.clone())
            .collect();
        ids.sort_unstable();
        ids
    };
    let leads_call = app
        .fake
        .requests()
        .into_iter()
        .find(|r| r.path == "/api/v4/leads")
        .expect("a leads call");
    let asked: Vec<u64> = leads_call
        .params("filter[id][]")
        .iter()
        .map(|id| id.parse().expect("numeric"))
        .collect();
    assert_eq!(asked, expected_ids, "every lead of the window, in one call");
    assert_eq!(leads_call.param("limit"), Some("250"));

    // Each lead: details, or (deleted upstream) nulls and one NOT_FOUND at its own path.
    let nodes = reply.body["data"]["contacts"]["nodes"]
        .as_array()
        .expect("nodes")
        .clone();
    let mut expected_errors = Vec::new();
    for (i, (node, contact)) in nodes.iter().zip(&contacts).enumerate() {
        for (j, (lead, id)) in node["leads"]
            .as_array()
            .expect("leads")
            .iter()
            .zip(&contact.lead_ids)
            .enumerate()
        {
            assert_eq!(lead["id"], json!(id.to_string()));
            if id % DELETED_LEAD_EVERY == 0 {
                assert_eq!(lead.get("name"), Some(&Value::Null), "present, as null");
                expected_errors.push(json!(["contacts", "nodes", i, "leads", j]));
            } else {
                assert_eq!(lead["name"], json!(format!("Сделка №{id}")));
                assert_eq!(lead["price"], json!((id % 100) * 1_000));
                assert_eq!(lead["isWon"], json!(id % 10 == 0));
            }
        }
    }
    assert!(
        !expected_errors.is_empty(),
        "the window holds a deleted lead"
    );
    let errors = reply.body["errors"].as_array().cloned().unwrap_or_default();
    let error_paths: Vec<Value> = errors.iter().map(|e| e["path"].clone()).collect();
    assert_eq!(
        error_paths, expected_errors,
        "one error per missing lead, at the lead"
    );
    assert!(
        errors
            .iter()
            .all(|e| e["extensions"]["code"] == "NOT_FOUND")
    );
}

#[tokio::test]
async fn every_kind_is_one_call_and_kinds_load_together() {
    let app = TestApp::spawn().await;
    let reply = app
        .query(
            Some(ADMIN_TOKEN),
            "{ contacts(first: 100) { nodes { id
                leads { name } companies { name customFieldsValues { fieldName values { value } } }
                customers { name nextPrice nextDate } catalogElements { id quantity name } } } }",
        )
        .await;
    assert_eq!(
        calls_by_path(&app),
        paths(&[
            ("/api/v4/catalogs/1001/elements", 1),
            ("/api/v4/catalogs/1002/elements", 1),
            ("/api/v4/companies", 1),
            ("/api/v4/contacts", 1),
            ("/api/v4/customers", 1),
            ("/api/v4/leads", 1),
        ])
    );
    let first_with_company = reply.body["data"]["contacts"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| !n["companies"].as_array().expect("list").is_empty())
        .expect("some contact has a company")
        .clone();
    let company = &first_with_company["companies"][0];
    assert!(
        company["name"]
            .as_str()
            .expect("a name")
            .starts_with("ООО «Компания")
    );
    assert_eq!(company["customFieldsValues"][0]["fieldName"], json!("ИНН"));
    let element = reply.body["data"]["contacts"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .flat_map(|n| n["catalogElements"].as_array().cloned().unwrap_or_default())
        .next()
        .expect("some catalog element");
    assert!(
        element["name"]
            .as_str()
            .expect("a name")
            .starts_with("Товар №")
    );

    // The same entities again, in another operation: all from the caches.
    app.fake.clear_requests();
    app.query(
        Some(ADMIN_TOKEN),
        "{ contacts(first: 100) { nodes { name leads { id name } customers { name } } } }",
    )
    .await;
    assert_eq!(app.upstream_calls(), 0);
}

#[tokio::test]
async fn selecting_only_ids_costs_no_extra_call() {
    let app = TestApp::spawn().await;
    app.query(
        Some(ADMIN_TOKEN),
        "{ contacts(first: 50) { nodes { leads { id } customers { id __typename } companies { id }
            catalogElements { id catalogId quantity priceId metadata } responsibleUser { id } } } }",
    )
    .await
    .data();
    assert_eq!(calls_by_path(&app), paths(&[("/api/v4/contacts", 1)]));
}

#[tokio::test]
async fn contact_fields_share_one_batch_of_linked_entities() {
    let app = TestApp::spawn().await;
    let visible = app.fake.visible_ids(ADMIN_TOKEN);
    let fields: String = visible[..6]
        .iter()
        .enumerate()
        .map(|(i, id)| format!(r#"c{i}: contact(id: "{id}") {{ leads {{ name }} }} "#))
        .collect();
    app.query(Some(ADMIN_TOKEN), &format!("{{ {fields} }}"))
        .await;
    assert_eq!(
        calls_by_path(&app),
        paths(&[("/api/v4/contacts", 1), ("/api/v4/leads", 1)])
    );
}

#[tokio::test]
async fn two_tokens_never_share_loaded_entities() {
    let app = TestApp::spawn().await;
    let id = app.fake.visible_ids(MANAGER_TOKEN)[0];
    let query = format!(r#"{{ contact(id: "{id}") {{ leads {{ name }} companies {{ name }} }} }}"#);
    app.query(Some(ADMIN_TOKEN), &query).await;
    let admin_calls = app.upstream_calls();
    app.query(Some(MANAGER_TOKEN), &query).await;
    assert_eq!(
        app.upstream_calls(),
        admin_calls * 2,
        "the manager loaded its own"
    );
    let tokens: Vec<_> = app
        .fake
        .requests()
        .into_iter()
        .skip(admin_calls)
        .map(|r| r.token)
        .collect();
    assert!(tokens.iter().all(|t| t.as_deref() == Some(MANAGER_TOKEN)));
}

#[tokio::test]
async fn a_non_admin_gets_a_forbidden_responsible_user_and_the_rest_of_the_data() {
    let app = TestApp::spawn().await;
    let query = "{ contacts(first: 5) { nodes { id name responsibleUser { id name email } } } }";
    let reply = app.query(Some(MANAGER_TOKEN), query).await;
    let nodes = reply.body["data"]["contacts"]["nodes"]
        .as_array()
        .expect("nodes")
        .clone();
    assert_eq!(nodes.len(), 5);
    for (i, node) in nodes.iter().enumerate() {
        assert!(node["name"].is_string(), "the contact is intact");
        assert_eq!(
            node.get("responsibleUser"),
            Some(&Value::Null),
            "present, as null"
        );
        let error = &reply.body["errors"][i];
        assert_eq!(error["extensions"]["code"], "FORBIDDEN");
        assert_eq!(
            error["path"],
            json!(["contacts", "nodes", i, "responsibleUser"])
        );
    }
    assert_eq!(reply.header("cache-control"), "no-store");
    // The refusal is an answer about the token, cached like one: asking again costs nothing.
    let calls = app.upstream_calls();
    app.query(
        Some(MANAGER_TOKEN),
        "{ contacts(first: 6) { nodes { responsibleUser { name } } } }",
    )
    .await;
    assert_eq!(app.upstream_calls(), calls);
    assert_eq!(calls_by_path(&app).get("/api/v4/users"), Some(&1));

    let admin = app.query(Some(ADMIN_TOKEN), query).await;
    let user = &admin.data()["contacts"]["nodes"][0]["responsibleUser"];
    assert!(user["name"].is_string() && user["email"].as_str().expect("email").contains('@'));
}

#[tokio::test]
async fn a_webhook_about_a_lead_drops_it_from_the_cache() {
    let app = TestApp::spawn_with(
        &["--webhook-secret", "hook-secret-1"],
        FakeOptions::default(),
    )
    .await;
    let query = "{ contacts(first: 10) { nodes { leads { id name } } } }";
    app.query(Some(ADMIN_TOKEN), query).await;
    let lead = app.fake.contacts()[..10]
        .iter()
        .flat_map(|c| c.lead_ids.clone())
        .find(|id| id % DELETED_LEAD_EVERY != 0)
        .expect("a lead");
    app.fake.clear_requests();
    let answer = app
        .post(
            "/webhooks/amocrm/hook-secret-1",
            None,
            &format!("leads[update][0][id]={lead}"),
        )
        .await;
    assert_eq!(answer.status(), 200);
    app.query(Some(ADMIN_TOKEN), query).await;
    let calls = app.fake.requests();
    assert_eq!(
        calls.len(),
        1,
        "only the lead's batch is loaded again: {calls:?}"
    );
    assert_eq!(
        calls[0].params("filter[id][]"),
        vec![lead.to_string().as_str()]
    );
}

#[tokio::test]
async fn an_over_complex_operation_is_refused_before_any_call() {
    let app = TestApp::spawn().await;
    let full = "contacts(first: 250) { edges { cursor node { id name firstName lastName
        responsibleUserId groupId createdBy updatedBy createdAt updatedAt closestTaskAt isDeleted accountId
        customFieldsValues { fieldId fieldName fieldCode fieldType values { value enumId enumCode } }
        tags { id name color } companies { id name responsibleUserId createdAt updatedAt
            customFieldsValues { fieldId values { value } } }
        leads { id name price statusId pipelineId responsibleUserId createdAt updatedAt closedAt
            isDeleted isWon isLost customFieldsValues { fieldId values { value } } }
        customers { id name nextPrice nextDate statusId responsibleUserId createdAt updatedAt }
        catalogElements { id catalogId quantity priceId metadata name }
        responsibleUser { id name email } } } pageInfo { hasNextPage endCursor } }";
    let one = app.query(Some(ADMIN_TOKEN), &format!("{{ {full} }}")).await;
    assert!(
        one.body["data"]["contacts"]["edges"]
            .as_array()
            .is_some_and(|e| e.len() == 250)
    );
    app.fake.clear_requests();
    let many: String = (0..24).map(|i| format!("l{i}: {full} ")).collect();
    let refused = app.query(Some(ADMIN_TOKEN), &format!("{{ {many} }}")).await;
    assert_eq!(refused.codes(), vec!["QUERY_TOO_COMPLEX"]);
    assert_eq!(app.upstream_calls(), 0);
}

#[tokio::test]
async fn stale_entities_are_served_while_one_batch_reloads_them() {
    let app = TestApp::spawn_with(
        &[
            "--cache-ttl",
            "1s",
            "--cache-stale-ttl",
            "1m",
            "--cache-max-age",
            "5m",
        ],
        FakeOptions::default(),
    )
    .await;
    // Two operations over the same leads: the second reads pages and leads from the caches.
    let first = "{ contacts(first: 20) { nodes { leads { name } } } }";
    let second = "{ contacts(first: 20) { nodes { id leads { id name } } } }";
    let fresh = app.query(Some(ADMIN_TOKEN), first).await;
    crate::support::outlive(std::time::Duration::from_secs(1)).await;
    app.fake.clear_requests();
    let stale = app.query(Some(ADMIN_TOKEN), second).await;
    assert_eq!(stale.header("x-cache"), "STALE");
    let names = |reply: &crate::support::Reply| -> Vec<Value> {
        reply.body["data"]["contacts"]["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .flat_map(|n| n["leads"].as_array().cloned().unwrap_or_default())
            .map(|l| l["name"].clone())
            .collect()
    };
    assert_eq!(
        names(&stale),
        names(&fresh),
        "served at once from the stale copies"
    );
    app.wait_for_metric(
        "gateway_cache_refreshes_total{cache=\"entities\",outcome=\"downloaded\"}",
        1.0,
    )
    .await;
    assert_eq!(
        calls_by_path(&app).get("/api/v4/leads"),
        Some(&1),
        "one batch reload"
    );
}

#[tokio::test]
async fn a_full_window_loads_each_kind_in_as_few_calls_as_its_ids_need() {
    let app = TestApp::spawn().await;
    app.query(
        Some(ADMIN_TOKEN),
        "{ contacts(first: 250) { nodes { leads { name } customers { name } companies { name }
            catalogElements { name } } } }",
    )
    .await;
    let contacts = app.fake.contacts();
    let count = |ids: Vec<u64>| {
        let mut ids = ids;
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    };
    let window = &contacts[..250];
    let leads = count(window.iter().flat_map(|c| c.lead_ids.clone()).collect());
    let customers = count(window.iter().flat_map(|c| c.customer_ids.clone()).collect());
    assert!(
        leads > 250,
        "the window needs more than one page of leads: {leads}"
    );
    let calls = calls_by_path(&app);
    assert_eq!(calls.get("/api/v4/leads"), Some(&leads.div_ceil(250)));
    assert_eq!(
        calls.get("/api/v4/customers"),
        Some(&customers.div_ceil(250))
    );
    assert_eq!(calls.get("/api/v4/companies"), Some(&1));
}

#[tokio::test]
async fn several_root_fields_share_one_call_per_kind() {
    let app = TestApp::spawn().await;
    let id = app.fake.visible_ids(ADMIN_TOKEN)[300];
    // Two lists and a contact, each with leads and companies: one call per kind in all.
    app.query(
        Some(ADMIN_TOKEN),
        &format!(
            r#"{{ a: contacts(first: 20) {{ nodes {{ leads {{ name }} }} }}
                 b: contacts(first: 20, filter: {{ query: "Иван" }}) {{ nodes {{ leads {{ name }} companies {{ name }} }} }}
                 c: contact(id: "{id}") {{ leads {{ name }} }} }}"#
        ),
    )
    .await;
    let calls = calls_by_path(&app);
    assert_eq!(calls.get("/api/v4/leads"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("/api/v4/companies"), Some(&1), "{calls:?}");
}

#[tokio::test]
async fn a_skipped_user_name_loads_no_users() {
    let app = TestApp::spawn().await;
    let reply = app
        .query_with(
            Some(MANAGER_TOKEN),
            "query($names: Boolean = false) { contacts(first: 3) { nodes { responsibleUser { id name @include(if: $names) } } } }",
            json!({}),
        )
        .await;
    reply.data();
    assert_eq!(calls_by_path(&app).get("/api/v4/users"), None);
}
