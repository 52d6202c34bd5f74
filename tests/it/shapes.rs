//! amoCRM answers in shapes its documentation's tables do not list (issue 12): catalog links
//! nested in `metadata`, custom field values of every JSON type, entries without `value`,
//! relations left out, nulls, unknown keys, ids beyond 2^31, exact prices beside whole ones,
//! and catalogs that ignore the id selection. Each comes through unchanged, and nothing fails
//! a page.

use amocrm_gateway::fake_amocrm::{
    DELETED_LEAD_EVERY, Failure, FakeContact, GOODS_CATALOG_ID, SERVICES_CATALOG_ID,
};
use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, Reply, TestApp, ids};

/// Beyond 2^31, and beyond what GraphQL's 32-bit `Int` can carry.
const BIG_ID: u64 = 3_000_000_001;

fn hal_contacts(contacts: Value) -> Failure {
    Failure::body(
        "application/hal+json",
        json!({ "_page": 1, "_links": {}, "_embedded": { "contacts": contacts } }).to_string(),
    )
}

/// The `contacts` nodes of an answer without errors.
fn nodes(reply: &Reply) -> Vec<Value> {
    reply.data()["contacts"]["nodes"]
        .as_array()
        .expect("nodes")
        .clone()
}

/// The paths of the catalog calls that reached the fake, in order.
fn catalog_calls(app: &TestApp) -> Vec<String> {
    app.fake
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| p.starts_with("/api/v4/catalogs/"))
        .collect()
}

/// The first fake contact linked to elements of both catalogs, so that a test sees two.
fn contact_with_elements_of_both_catalogs(app: &TestApp) -> FakeContact {
    app.fake
        .contacts()
        .into_iter()
        .find(|c| {
            let catalogs: Vec<u64> = c.catalog_elements.iter().map(|e| e.catalog_id).collect();
            catalogs.contains(&GOODS_CATALOG_ID) && catalogs.contains(&SERVICES_CATALOG_ID)
        })
        .expect("some contact links both catalogs")
}

/// A contact as a real account sends it: written by hand here, not by the fake's generator.
fn real_contact(id: u64, elements: &[(u64, u64)]) -> Value {
    let (goods, services) = (elements[0], elements[1]);
    json!({
        "id": id, "name": "ООО «Ромашка»", "first_name": null, "last_name": "Иванов",
        "responsible_user_id": 2_147_483_650_u64, "group_id": 0, "created_by": 0,
        "updated_by": 0, "created_at": 1_585_758_065, "updated_at": 1_585_758_065,
        "closest_task_at": null, "is_deleted": false, "is_unsorted": false,
        "is_computed": false, "account_id": 28_805_383,
        "custom_fields_values": [
            { "field_id": 1, "field_name": "Бюджет", "field_code": null, "field_type": "numeric",
              "values": [{ "value": "10000" }] },
            { "field_id": 2, "field_name": "Бюджет (число)", "field_code": null,
              "field_type": "numeric", "values": [{ "value": 10000.5 }] },
            { "field_id": 3, "field_name": "День рождения", "field_code": null,
              "field_type": "birthday", "values": [{ "value": -315_630_000 }] },
            { "field_id": 4, "field_name": "VIP", "field_code": null, "field_type": "checkbox",
              "values": [{ "value": true }] },
            { "field_id": 5, "field_name": "Юр. лицо", "field_code": null,
              "field_type": "legal_entity",
              "values": [{ "value": { "name": "ООО «Ромашка»", "entity_type": 2,
                                      "vat_id": "7701234567", "kpp": null } }] },
            { "field_id": 6, "field_name": "Адрес", "field_code": null,
              "field_type": "smart_address",
              "values": [{ "value": "ул. Ленина, 5", "enum_id": 1, "enum_code": "address_line_1" },
                         { "value": "Казань", "enum_id": 3, "enum_code": "city" }] },
            { "field_id": 7, "field_name": "Модель", "field_code": null,
              "field_type": "chained_list",
              "values": [{ "catalog_id": goods.1, "catalog_element_id": goods.0 }] },
            { "field_id": 8, "field_name": null, "field_code": null, "field_type": "org_legal_name",
              "values": [{ "value": "Ромашка", "enum": "LEGAL" }] },
            { "field_id": 9, "field_name": "Пусто", "field_code": null, "field_type": "text",
              "values": [] }
        ],
        "_embedded": {
            "tags": null,
            "leads": [{ "id": 20_000_000 }],
            "catalog_elements": [
                { "id": goods.0, "metadata": { "quantity": 1.0, "catalog_id": goods.1,
                                               "price_id": 500_001 } },
                { "id": services.0, "metadata": { "quantity": 2.5, "catalog_id": services.1 } }
            ]
        }
    })
}

#[tokio::test]
async fn a_page_in_real_shapes_comes_through_whole_and_unchanged() {
    let app = TestApp::spawn().await;
    let linked = contact_with_elements_of_both_catalogs(&app);
    let elements: Vec<(u64, u64)> = linked
        .catalog_elements
        .iter()
        .map(|e| (e.id, e.catalog_id))
        .collect();
    app.fake.fail_next([hal_contacts(json!([
        real_contact(BIG_ID, &elements),
        { "id": 5, "name": "Kommo", "custom_fields_values": [], "_embedded": {} },
        { "id": 6, "name": "Без _embedded", "first_name": "Анна", "custom_fields_values": null }
    ]))]);
    let reply = app
        .query(
            Some(ADMIN_TOKEN),
            "{ contacts(first: 10) { nodes { id name firstName responsibleUserId tags { id }
                leads { id } customers { id }
                customFieldsValues { fieldId fieldName fieldCode fieldType
                    values { value enumId enumCode entry } }
                catalogElements { id catalogId quantity priceId metadata } } } }",
        )
        .await;
    let nodes = nodes(&reply);
    assert_eq!(
        ids(&reply.data()["contacts"]),
        vec![BIG_ID, 5, 6],
        "every contact"
    );

    let odd = &nodes[0];
    assert_eq!(odd["id"], json!(BIG_ID.to_string()));
    assert_eq!(odd["responsibleUserId"], json!("2147483650"));
    assert_eq!(odd["firstName"], json!(""), "a null first name is empty");
    assert_eq!(odd["tags"], json!([]), "null tags are none");
    assert_eq!(odd["customers"], json!([]), "a relation left out is none");
    for plain in &nodes[1..] {
        for list in [
            "tags",
            "leads",
            "customers",
            "customFieldsValues",
            "catalogElements",
        ] {
            assert_eq!(plain.get(list), Some(&json!([])), "{list} of {plain}");
        }
    }

    let sent = real_contact(BIG_ID, &elements);
    let fields = odd["customFieldsValues"].as_array().expect("fields");
    let sent_fields = sent["custom_fields_values"].as_array().expect("sent");
    assert_eq!(fields.len(), sent_fields.len(), "every field, every type");
    for (field, sent) in fields.iter().zip(sent_fields) {
        let name = &sent["field_name"];
        assert_eq!(field.get("fieldName"), Some(name), "null names stay null");
        assert_eq!(field["fieldType"], sent["field_type"]);
        let values = field["values"].as_array().expect("values");
        let sent_values = sent["values"].as_array().expect("sent values");
        assert_eq!(values.len(), sent_values.len(), "{name}");
        for (value, sent) in values.iter().zip(sent_values) {
            assert_eq!(value["entry"], *sent, "the entry exactly as sent: {name}");
            assert_eq!(
                value.get("value"),
                Some(sent.get("value").unwrap_or(&Value::Null)),
                "the value exactly as sent: {name}"
            );
        }
    }
    let value_of = |field: usize| &fields[field]["values"][0]["value"];
    assert_eq!(
        *value_of(0),
        json!("10000"),
        "a numeric string stays a string"
    );
    assert_eq!(*value_of(1), json!(10000.5));
    assert_eq!(*value_of(2), json!(-315_630_000), "a birthday before 1970");
    assert_eq!(*value_of(3), json!(true));
    assert_eq!(value_of(4)["entity_type"], json!(2), "an object value");
    assert_eq!(fields[5]["values"][1]["enumCode"], json!("city"));
    let chained = &fields[6]["values"][0];
    assert_eq!(chained.get("value"), Some(&Value::Null), "no `value` key");
    assert_eq!(
        chained["entry"],
        json!({ "catalog_id": elements[0].1, "catalog_element_id": elements[0].0 }),
        "its keys are exposed"
    );
    assert_eq!(fields[7]["values"][0]["enumCode"], json!("LEGAL"), "`enum`");

    let links = odd["catalogElements"].as_array().expect("elements");
    assert_eq!(links[0]["catalogId"], json!(elements[0].1.to_string()));
    assert_eq!(links[0]["quantity"].as_f64(), Some(1.0), "a float literal");
    assert_eq!(links[0]["priceId"], json!("500001"));
    assert_eq!(links[1]["catalogId"], json!(elements[1].1.to_string()));
    assert_eq!(links[1]["quantity"], json!(2.5));
    assert_eq!(
        links[1].get("priceId"),
        Some(&Value::Null),
        "no price_id sent"
    );
    assert_eq!(
        links[1]["metadata"],
        json!({ "quantity": 2.5, "catalog_id": elements[1].1 }),
        "metadata exactly as sent"
    );
}

#[tokio::test]
async fn catalog_element_names_load_from_the_catalog_their_metadata_names() {
    let app = TestApp::spawn().await;
    let reply = app
        .query(
            Some(ADMIN_TOKEN),
            "{ contacts(first: 40) { nodes { catalogElements { id catalogId name } } } }",
        )
        .await;
    let window = &app.fake.contacts()[..40];
    let nodes = nodes(&reply);
    let mut expected_paths = Vec::new();
    for (node, contact) in nodes.iter().zip(window) {
        let elements = node["catalogElements"].as_array().expect("elements");
        assert_eq!(elements.len(), contact.catalog_elements.len());
        for (element, link) in elements.iter().zip(&contact.catalog_elements) {
            assert_eq!(element["catalogId"], json!(link.catalog_id.to_string()));
            assert_eq!(element["name"], json!(format!("Товар №{}", link.id)));
            expected_paths.push(format!("/api/v4/catalogs/{}/elements", link.catalog_id));
        }
    }
    expected_paths.sort();
    expected_paths.dedup();
    assert_eq!(expected_paths.len(), 2, "the window links both catalogs");
    let mut catalog_paths = catalog_calls(&app);
    catalog_paths.sort();
    assert_eq!(catalog_paths, expected_paths, "one call per catalog named");
    let services = app
        .fake
        .requests()
        .into_iter()
        .find(|r| r.path == format!("/api/v4/catalogs/{SERVICES_CATALOG_ID}/elements"))
        .expect("the services call");
    let asked: Vec<u64> = window
        .iter()
        .flat_map(|c| &c.catalog_elements)
        .filter(|e| e.catalog_id == SERVICES_CATALOG_ID)
        .map(|e| e.id)
        .collect();
    assert!(asked.iter().all(|id| *id > 1 << 31), "ids beyond 2^31");
    let mut sorted = asked.clone();
    sorted.sort_unstable();
    let as_strings: Vec<String> = sorted.iter().map(u64::to_string).collect();
    assert_eq!(
        services.params("id[]"),
        as_strings,
        "both selections are sent"
    );
    assert_eq!(services.params("filter[id][]"), as_strings);
}

#[tokio::test]
async fn an_element_whose_link_names_no_catalog_is_never_asked_for() {
    let app = TestApp::spawn().await;
    let linked = contact_with_elements_of_both_catalogs(&app);
    let known = &linked.catalog_elements[0];
    app.fake.fail_next([hal_contacts(json!([{
        "id": 7, "name": "Без каталога",
        "_embedded": { "catalog_elements": [
            { "id": 1_126_317, "metadata": { "quantity": 1.0 } },
            { "id": 1_126_318, "metadata": { "quantity": 1.0, "catalog_id": 0 } },
            { "id": known.id, "metadata": { "quantity": 1.0, "catalog_id": known.catalog_id } }
        ] }
    }]))]);
    let reply = app
        .query(
            Some(ADMIN_TOKEN),
            "{ contacts(first: 1) { nodes { catalogElements { id catalogId quantity name } } } }",
        )
        .await;
    let elements = &reply.body["data"]["contacts"]["nodes"][0]["catalogElements"];
    for unknown in [&elements[0], &elements[1]] {
        assert_eq!(unknown.get("catalogId"), Some(&Value::Null), "not a fake 0");
        assert_eq!(unknown.get("name"), Some(&Value::Null));
        assert_eq!(unknown["quantity"], json!(1.0), "the link's own data stays");
    }
    assert_eq!(elements[2]["name"], json!(format!("Товар №{}", known.id)));
    let errors = reply.body["errors"].as_array().expect("errors").clone();
    assert_eq!(
        errors.len(),
        2,
        "one per element that cannot load: {errors:?}"
    );
    for (i, error) in errors.iter().enumerate() {
        assert_eq!(error["extensions"]["code"], "UPSTREAM_ERROR");
        assert_eq!(
            error["path"],
            json!(["contacts", "nodes", 0, "catalogElements", i])
        );
        let message = error["message"].as_str().expect("message");
        assert!(message.contains("which catalog"), "{message}");
        assert!(!message.contains("deleted"), "{message}");
    }
    assert_eq!(
        catalog_calls(&app),
        vec![format!("/api/v4/catalogs/{}/elements", known.catalog_id)],
        "only the catalog that was named"
    );
}

#[tokio::test]
async fn a_catalog_that_ignores_the_id_selection_still_yields_the_asked_elements() {
    let app = TestApp::spawn().await;
    app.fake.ignore_catalog_element_ids(true);
    // Far down the list: its elements are not among the first a catalog lists.
    let contact = app
        .fake
        .contacts()
        .into_iter()
        .skip(2_000)
        .find(|c| c.catalog_elements.len() >= 2)
        .expect("a contact with elements");
    let query = format!(
        r#"{{ contact(id: "{}") {{ catalogElements {{ id catalogId name }} }} }}"#,
        contact.id
    );
    let reply = app.query(Some(ADMIN_TOKEN), &query).await;
    let elements = reply.data()["contact"]["catalogElements"]
        .as_array()
        .expect("elements")
        .clone();
    assert_eq!(elements.len(), contact.catalog_elements.len());
    for (element, link) in elements.iter().zip(&contact.catalog_elements) {
        assert_eq!(element["name"], json!(format!("Товар №{}", link.id)));
    }
    let requests = app.fake.requests();
    let mut by_id: Vec<String> = requests
        .iter()
        .map(|r| r.path.clone())
        .filter(|p| p.matches('/').count() == 6 && p.contains("/elements/"))
        .collect();
    by_id.sort();
    let mut expected: Vec<String> = contact
        .catalog_elements
        .iter()
        .map(|e| format!("/api/v4/catalogs/{}/elements/{}", e.catalog_id, e.id))
        .collect();
    expected.sort();
    assert_eq!(by_id, expected, "each lacking element read by id");
    let lists = requests
        .iter()
        .filter(|r| r.path.ends_with("/elements"))
        .count();
    let catalogs = {
        let mut c: Vec<u64> = contact
            .catalog_elements
            .iter()
            .map(|e| e.catalog_id)
            .collect();
        c.sort_unstable();
        c.dedup();
        c.len()
    };
    assert_eq!(lists, catalogs, "one list call per catalog first");

    // What was read one by one is cached like the rest.
    app.fake.clear_requests();
    app.query(
        Some(ADMIN_TOKEN),
        &format!(
            r#"{{ again: contact(id: "{}") {{ catalogElements {{ name }} }} }}"#,
            contact.id
        ),
    )
    .await
    .data();
    assert_eq!(app.upstream_calls(), 0);
}

#[tokio::test]
async fn leads_show_the_exact_price_and_a_price_beyond_int_is_a_field_error() {
    let app = TestApp::spawn().await;
    app.fake.fail_next([
        hal_contacts(json!([{ "id": BIG_ID, "name": "Deals",
            "_embedded": { "leads": [{ "id": 1 }, { "id": 2_147_483_653_u64 }, { "id": 3 }] } }])),
        Failure::body(
            "application/hal+json",
            json!({ "_embedded": { "leads": [
                { "id": 1, "name": "Kopecks", "price": 1500, "price_with_minor_units": 1500.75,
                  "labor_cost": null, "is_price_computed": false },
                { "id": 2_147_483_653_u64, "name": "Rupiah", "price": 3_000_000_000_u64,
                  "price_with_minor_units": 3_000_000_000.5 },
                { "id": 3, "name": "Before 2026", "price": 700 }
            ] } })
            .to_string(),
        ),
    ]);
    let reply = app
        .query(
            Some(ADMIN_TOKEN),
            "{ contacts(first: 1) { nodes { leads { id name price priceWithMinorUnits } } } }",
        )
        .await;
    // The errored nullable `price` is present, as null (the GraphQL spec's field errors).
    let leads = reply.body["data"]["contacts"]["nodes"][0]["leads"].clone();
    assert_eq!(
        leads,
        json!([
            { "id": "1", "name": "Kopecks", "price": 1500, "priceWithMinorUnits": 1500.75 },
            { "id": "2147483653", "name": "Rupiah", "price": null,
              "priceWithMinorUnits": 3_000_000_000.5 },
            { "id": "3", "name": "Before 2026", "price": 700, "priceWithMinorUnits": 700.0 }
        ])
    );
    assert_eq!(reply.codes(), vec!["UPSTREAM_ERROR"]);
    let error = reply.first_error();
    assert_eq!(
        error["path"],
        json!(["contacts", "nodes", 0, "leads", 1, "price"])
    );
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("priceWithMinorUnits")),
        "{error}"
    );
}

#[tokio::test]
async fn the_fakes_leads_carry_exact_prices() {
    let app = TestApp::spawn().await;
    let reply = app
        .query(
            Some(ADMIN_TOKEN),
            "{ contacts(first: 30) { nodes { leads { id price priceWithMinorUnits } } } }",
        )
        .await;
    // Not `nodes`: the fake's deleted leads come with NOT_FOUND errors.
    let leads: Vec<Value> = reply.body["data"]["contacts"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .flat_map(|n| n["leads"].as_array().cloned().unwrap_or_default())
        .filter(|l| {
            l["id"]
                .as_str()
                .and_then(|id| id.parse::<u64>().ok())
                .is_some_and(|id| id % DELETED_LEAD_EVERY != 0)
        })
        .collect();
    assert!(!leads.is_empty());
    for lead in &leads {
        let price = lead["price"].as_f64().expect("a price");
        let exact = lead["priceWithMinorUnits"]
            .as_f64()
            .expect("an exact price");
        assert!((price..price + 1.0).contains(&exact), "{lead}");
    }
    assert!(
        leads.iter().any(|l| l["priceWithMinorUnits"]
            .as_f64()
            .is_some_and(|p| p.fract() != 0.0)),
        "some prices have kopecks"
    );
}

#[tokio::test]
async fn windows_over_ids_beyond_2_31_page_with_cursors() {
    let app = TestApp::spawn().await;
    let big = [BIG_ID, BIG_ID + 7, BIG_ID + 14];
    app.fake.fail_next([hal_contacts(
        big.iter()
            .map(|id| json!({ "id": id, "name": format!("Контакт {id}") }))
            .collect(),
    )]);
    let page = "query($after: String) {
        contacts(first: 2, after: $after, filter: { ids: [\"3000000001\", \"3000000008\", \"3000000015\"] }) {
            nodes { id } pageInfo { hasNextPage endCursor } } }";
    let first = app.query_with(Some(ADMIN_TOKEN), page, json!({})).await;
    assert_eq!(ids(&first.data()["contacts"]), big[..2].to_vec());
    let calls = app.contact_calls();
    assert_eq!(
        calls[0].params("filter[id][]"),
        vec!["3000000001", "3000000008", "3000000015"]
    );
    let after = first.data()["contacts"]["pageInfo"]["endCursor"].clone();
    let next = app
        .query_with(Some(ADMIN_TOKEN), page, json!({ "after": after }))
        .await;
    assert_eq!(ids(&next.data()["contacts"]), big[2..].to_vec());
    assert_eq!(
        next.data()["contacts"]["pageInfo"]["hasNextPage"],
        json!(false)
    );
    assert_eq!(
        app.contact_calls().len(),
        1,
        "both windows cut from one page"
    );
}
