//! Contacts come through whole and as amoCRM sent them; filters and order reach amoCRM as its
//! parameters; `contact(id)` fields are batched.

use serde_json::{Value, json};

use amocrm_gateway::fake_amocrm::{BUDGET_FIELD_ID, PHONE_FIELD_ID};

use crate::support::{ADMIN_TOKEN, MANAGER_TOKEN, MANAGER_USER_ID, TestApp, ids};

const FULL_CONTACT: &str = "
    id name firstName lastName responsibleUserId groupId createdBy updatedBy
    createdAt updatedAt closestTaskAt isDeleted accountId
    customFieldsValues { fieldId fieldName fieldCode fieldType values { value enumId enumCode entry } }
    tags { id name color } companies { id } leads { id } customers { id }
    catalogElements { id catalogId quantity priceId metadata }";

#[tokio::test]
async fn every_field_matches_the_fake_data() {
    let app = TestApp::spawn().await;
    let reply = app
        .query(
            Some(ADMIN_TOKEN),
            &format!("{{ contacts(first: 250) {{ nodes {{ {FULL_CONTACT} }} }} }}"),
        )
        .await;
    let nodes = reply.data()["contacts"]["nodes"]
        .as_array()
        .expect("nodes")
        .clone();
    assert_eq!(nodes.len(), 250);
    for (node, fake) in nodes.iter().zip(app.fake.contacts()) {
        assert_eq!(node["id"], json!(fake.id.to_string()));
        assert_eq!(node["name"], json!(fake.name));
        assert_eq!(
            node["firstName"],
            json!(fake.first_name.clone().unwrap_or_default())
        );
        assert_eq!(
            node["responsibleUserId"],
            json!(fake.responsible_user_id.to_string())
        );
        assert_eq!(node["isDeleted"], json!(false));
        assert_eq!(node["accountId"], json!("28805383"));
        let created = chrono_like(fake.created_at);
        assert_eq!(node["createdAt"], json!(created));
        assert_eq!(
            node["closestTaskAt"],
            fake.closest_task_at
                .map_or(Value::Null, |t| json!(chrono_like(t)))
        );
        assert_eq!(
            node["leads"].as_array().expect("leads").len(),
            fake.lead_ids.len()
        );
        assert_eq!(
            node["customers"].as_array().expect("customers").len(),
            fake.customer_ids.len()
        );
        let elements = node["catalogElements"].as_array().expect("elements");
        assert_eq!(elements.len(), fake.catalog_elements.len());
        for (element, link) in elements.iter().zip(&fake.catalog_elements) {
            // Sent nested in `metadata` only, as real accounts do.
            assert_eq!(element["id"], json!(link.id.to_string()));
            assert_eq!(element["catalogId"], json!(link.catalog_id.to_string()));
            assert_eq!(element["quantity"].as_f64(), link.quantity.as_f64());
            assert_eq!(
                element["priceId"],
                json!(link.price_id.map(|p| p.to_string()))
            );
            assert_eq!(element["metadata"]["catalog_id"], json!(link.catalog_id));
        }
        assert_eq!(
            node["companies"].as_array().expect("companies").len(),
            usize::from(fake.company_id.is_some())
        );
        assert_eq!(
            node["tags"].as_array().expect("tags").len(),
            fake.tags.len()
        );
        let fields = node["customFieldsValues"]
            .as_array()
            .expect("a list, never null");
        assert_eq!(
            fields.len(),
            fake.custom_fields.as_ref().map_or(0, Vec::len)
        );
        for (field, fake_field) in fields.iter().zip(fake.custom_fields.iter().flatten()) {
            assert_eq!(field["fieldId"], json!(fake_field.id.to_string()));
            for (value, fake_value) in field["values"]
                .as_array()
                .expect("values")
                .iter()
                .zip(&fake_field.values)
            {
                assert_eq!(
                    value["value"], fake_value.value,
                    "values keep their JSON type"
                );
                // Whether amoCRM wrote `enum_code` or the legacy `enum`.
                assert_eq!(value["enumCode"], json!(fake_value.enum_code));
                if let Some(entry) = &fake_value.entry {
                    assert_eq!(value.get("value"), Some(&Value::Null), "no `value` sent");
                    assert_eq!(value["entry"], *entry, "the entry's own keys");
                } else {
                    assert_eq!(value["entry"]["value"], fake_value.value);
                }
            }
        }
    }
    let sample: Vec<_> = app.fake.contacts()[..250]
        .iter()
        .flat_map(|c| c.custom_fields.clone().unwrap_or_default())
        .collect();
    assert!(
        sample
            .iter()
            .any(|f| f.id == PHONE_FIELD_ID && f.values.iter().any(|v| v.legacy_enum_key)),
        "the sample covers the legacy `enum` key"
    );
    for field_type in [
        "legal_entity",
        "file",
        "smart_address",
        "chained_list",
        "date_time",
        "tracking_data",
    ] {
        assert!(
            sample.iter().any(|f| f.field_type == field_type),
            "the sample covers {field_type}"
        );
    }
}

/// RFC 3339 in UTC, computed independently of the gateway's formatter.
fn chrono_like(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[tokio::test]
async fn filters_and_order_reach_amocrm_as_its_parameters() {
    let app = TestApp::spawn().await;
    let reply = app
        .query(
            Some(ADMIN_TOKEN),
            &format!(
                r#"{{ contacts(first: 5, order: {{ field: UPDATED_AT, direction: DESC }}, filter: {{
                    query: " Иван "
                    ids: ["7000070", "7000007", "7000070"]
                    names: ["Иван Петров"]
                    responsibleUserIds: ["504143"]
                    createdBy: ["504141"]
                    updatedBy: ["504142"]
                    createdAt: {{ from: "2020-04-01T16:21:05Z", to: "2020-04-01T19:21:06+03:00" }}
                    updatedAt: {{ from: "2020-01-01T00:00:00Z" }}
                    closestTaskAt: {{ to: "2030-01-01T00:00:00Z" }}
                    customFields: [{{ fieldId: "{BUDGET_FIELD_ID}", from: "1000", to: "9000" }},
                                   {{ fieldId: "300005", values: ["Сайт", "Звонок"] }}]
                }}) {{ nodes {{ id }} }} }}"#
            ),
        )
        .await;
    reply.data();
    let calls = app.contact_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.param("query"), Some("Иван"));
    assert_eq!(
        call.params("filter[id][]"),
        vec!["7000007", "7000070"],
        "sorted, deduplicated"
    );
    assert_eq!(call.params("filter[name][]"), vec!["Иван Петров"]);
    assert_eq!(call.params("filter[responsible_user_id][]"), vec!["504143"]);
    assert_eq!(call.params("filter[created_by][]"), vec!["504141"]);
    assert_eq!(call.params("filter[updated_by][]"), vec!["504142"]);
    assert_eq!(call.param("filter[created_at][from]"), Some("1585758065"));
    assert_eq!(call.param("filter[created_at][to]"), Some("1585758066"));
    assert_eq!(call.param("filter[updated_at][from]"), Some("1577836800"));
    assert_eq!(call.param("filter[updated_at][to]"), None);
    assert_eq!(
        call.param("filter[closest_task_at][to]"),
        Some("1893456000")
    );
    assert_eq!(
        call.param(&format!(
            "filter[custom_fields_values][{BUDGET_FIELD_ID}][from]"
        )),
        Some("1000")
    );
    assert_eq!(
        call.param(&format!(
            "filter[custom_fields_values][{BUDGET_FIELD_ID}][to]"
        )),
        Some("9000")
    );
    assert_eq!(
        call.params("filter[custom_fields_values][300005][]"),
        vec!["Звонок", "Сайт"]
    );
    assert_eq!(call.param("order[updated_at]"), Some("desc"));
    assert_eq!(call.param("page"), Some("1"));
    assert_eq!(call.param("limit"), Some("250"));
    assert_eq!(call.param("with"), None);
    assert_eq!(call.param("only_deleted"), None);
}

#[tokio::test]
async fn filtered_and_ordered_results_are_the_fakes_answer() {
    let app = TestApp::spawn().await;
    let reply = app
        .query(
            Some(ADMIN_TOKEN),
            r#"{ contacts(first: 250, order: { field: ID, direction: DESC },
                          filter: { responsibleUserIds: ["504143"] }) {
                    nodes { id responsibleUserId } } }"#,
        )
        .await;
    let nodes = reply.data()["contacts"].clone();
    let got = ids(&nodes);
    let mut expected: Vec<u64> = app
        .fake
        .contacts()
        .iter()
        .filter(|c| c.responsible_user_id == 504_143)
        .map(|c| c.id)
        .collect();
    expected.reverse();
    assert_eq!(got, expected[..250.min(expected.len())].to_vec());
}

#[tokio::test]
async fn a_search_that_finds_nothing_is_an_empty_connection() {
    let app = TestApp::spawn().await;
    let reply = app
        .query(
            Some(ADMIN_TOKEN),
            r#"{ contacts(filter: { query: "no such contact anywhere" }) {
                edges { cursor } nodes { id } pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } }"#,
        )
        .await;
    assert_eq!(
        reply.data()["contacts"],
        json!({ "edges": [], "nodes": [], "pageInfo": { "hasNextPage": false,
                "hasPreviousPage": false, "startCursor": null, "endCursor": null } })
    );
    assert_eq!(app.contact_calls().len(), 1, "amoCRM answered 204");
}

#[tokio::test]
async fn contact_returns_the_contact_or_null() {
    let app = TestApp::spawn().await;
    let id = app.fake.visible_ids(ADMIN_TOKEN)[10];
    let reply = app
        .query(
            Some(ADMIN_TOKEN),
            &format!(r#"{{ found: contact(id: "{id}") {{ id name }} missing: contact(id: "1") {{ id }} }}"#),
        )
        .await;
    let data = reply.data();
    assert_eq!(data["found"]["id"], json!(id.to_string()));
    assert_eq!(data["found"]["name"], json!(app.fake.contacts()[10].name));
    assert_eq!(data.get("missing"), Some(&Value::Null), "present, as null");
}

#[tokio::test]
async fn several_contact_fields_are_one_upstream_call() {
    let app = TestApp::spawn().await;
    let visible = app.fake.visible_ids(ADMIN_TOKEN);
    let fields: String = visible[..20]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let relation = if i == 3 { "leads { id }" } else { "" };
            format!(r#"c{i}: contact(id: "{id}") {{ id {relation} }} "#)
        })
        .collect();
    let reply = app
        .query(
            Some(ADMIN_TOKEN),
            &format!("{{ {fields} missing: contact(id: 5) {{ id }} }}"),
        )
        .await;
    let data = reply.data();
    for (i, id) in visible[..20].iter().enumerate() {
        assert_eq!(data[format!("c{i}")]["id"], json!(id.to_string()));
    }
    assert_eq!(data.get("missing"), Some(&Value::Null), "present, as null");
    let calls = app.contact_calls();
    assert_eq!(calls.len(), 1, "one batch for all contact fields");
    assert_eq!(calls[0].params("filter[id][]").len(), 21);
    assert_eq!(calls[0].param("with"), Some("leads"));
}

#[tokio::test]
async fn contact_fields_batch_even_when_the_machine_is_busy() {
    // Load both cores while the operation runs: the batch must not depend on timing.
    let app = TestApp::spawn().await;
    let visible = app.fake.visible_ids(ADMIN_TOKEN);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let burners: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = x.wrapping_mul(31).wrapping_add(7);
                }
                x
            })
        })
        .collect();
    for round in 0..5 {
        let fields: String = visible[round * 10..round * 10 + 10]
            .iter()
            .enumerate()
            .map(|(i, id)| format!(r#"c{i}: contact(id: "{id}") {{ id }} "#))
            .collect();
        app.query(Some(ADMIN_TOKEN), &format!("{{ {fields} }}"))
            .await
            .data();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    burners.into_iter().for_each(|b| {
        b.join().expect("burner thread");
    });
    assert_eq!(app.contact_calls().len(), 5, "one call per operation");
}

#[tokio::test]
async fn a_non_admin_token_sees_only_its_contacts() {
    let app = TestApp::spawn().await;
    let reply = app
        .query(
            Some(MANAGER_TOKEN),
            "{ contacts(first: 250) { nodes { id responsibleUserId } } }",
        )
        .await;
    let nodes = reply.data()["contacts"]["nodes"]
        .as_array()
        .expect("nodes")
        .clone();
    assert!(!nodes.is_empty());
    assert!(
        nodes
            .iter()
            .all(|n| n["responsibleUserId"] == json!(MANAGER_USER_ID.to_string()))
    );
}
