//! The fake amoCRM answers contact writes as amoCRM does (issue 14): talked to over real HTTP
//! without the gateway, asserting whole answers (a missing key is not a null), that one bad item
//! refuses the whole batch, that what was written reads back, is searched and filtered at once,
//! and that a write can apply and then never answer.

use std::time::Duration;

use amocrm_gateway::fake_amocrm::{
    BUDGET_FIELD_ID, CONTACT_FIELDS, CONTRACT_DATE_FIELD_ID, EMAIL_FIELD_ID, Failure, FakeAmoCrm,
    FakeContact, FakeOptions, GOODS_CATALOG_ID, MAX_WRITE_BATCH, PHONE_ENUMS, PHONE_FIELD_ID,
    POSITION_FIELD_ID, SOURCE_ENUMS, SOURCE_FIELD_ID, USERS, VIP_FIELD_ID,
};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{ADMIN_TOKEN, MANAGER_TOKEN, MANAGER_USER_ID, UNPAID_TOKEN};

struct Fake {
    fake: FakeAmoCrm,
    http: reqwest::Client,
}

struct Answer {
    status: u16,
    content_type: String,
    /// The body as JSON, or as a string when it is not JSON (an empty body is `""`).
    body: Value,
}

impl Fake {
    async fn start() -> Fake {
        let options = FakeOptions {
            contacts: 300,
            ..FakeOptions::default()
        };
        Fake {
            fake: FakeAmoCrm::start(([127, 0, 0, 1], 0).into(), options)
                .await
                .expect("the fake binds a free port"),
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.fake.base_url())
    }

    async fn send(&self, method: Method, path: &str, token: &str, body: &Value) -> Answer {
        let response = self
            .http
            .request(method, self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("the fake answers");
        answer(response).await
    }

    async fn get(&self, path: &str, token: &str) -> Answer {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("the fake answers");
        answer(response).await
    }

    /// One contact as `GET /contacts/{id}?with=...` shows it to the admin.
    async fn contact(&self, id: u64) -> Value {
        let answer = self
            .get(
                &format!("/api/v4/contacts/{id}?with=leads,customers,catalog_elements"),
                ADMIN_TOKEN,
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body
    }

    /// The ids a contacts list answers, `""` meaning its 204.
    async fn list_ids(&self, query: &str, token: &str) -> Vec<u64> {
        let answer = self.get(&format!("/api/v4/contacts?{query}"), token).await;
        if answer.status == 204 {
            return Vec::new();
        }
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body["_embedded"]["contacts"]
            .as_array()
            .expect("contacts")
            .iter()
            .map(|c| c["id"].as_u64().expect("id"))
            .collect()
    }

    fn contact_data(&self, id: u64) -> FakeContact {
        self.fake
            .contacts()
            .into_iter()
            .find(|c| c.id == id)
            .expect("the contact exists")
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.expect("a body");
    Answer {
        status,
        content_type,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs(),
    )
    .expect("fits")
}

fn validation_failed(groups: Value) -> Value {
    json!({
        "validation-errors": groups,
        "title": "Bad Request",
        "type": "https://httpstatus.es/400",
        "status": 400,
        "detail": "Request validation failed",
    })
}

fn error(code: &str, path: &str, detail: &str) -> Value {
    json!({ "code": code, "path": path, "detail": detail })
}

const NOT_A_CHOICE: &str = "The value you selected is not a valid choice.";
const NOT_EXPECTED: &str = "This field was not expected.";

/// A contact of another user than the manager's, which the manager may not see.
fn not_the_managers(fake: &Fake) -> FakeContact {
    fake.fake
        .contacts()
        .into_iter()
        .find(|c| c.responsible_user_id != MANAGER_USER_ID)
        .expect("one exists")
}

#[tokio::test]
async fn fake_writes_custom_fields_come_in_pages() {
    let fake = Fake::start().await;
    let base = fake.fake.base_url();
    let all = fake
        .get("/api/v4/contacts/custom_fields", ADMIN_TOKEN)
        .await;
    assert_eq!(all.status, 200);
    assert_eq!(all.content_type, "application/hal+json");
    let fields = all.body["_embedded"]["custom_fields"]
        .as_array()
        .expect("fields");
    assert_eq!(fields.len(), CONTACT_FIELDS.len());
    assert_eq!(all.body["_total_items"], json!(CONTACT_FIELDS.len()));
    let links = all.body["_links"].as_object().expect("_links");
    assert!(
        links.contains_key("self") && !links.contains_key("next"),
        "one page, no next"
    );
    assert_eq!(
        fields[0],
        json!({
            "id": PHONE_FIELD_ID, "name": "Телефон", "type": "multitext", "account_id": 28_805_383,
            "code": "PHONE", "sort": 4, "is_api_only": false,
            "enums": [
                { "id": 1001, "value": "WORK", "sort": 2 },
                { "id": 1002, "value": "WORKDD", "sort": 4 },
                { "id": 1003, "value": "MOB", "sort": 6 },
                { "id": 1005, "value": "FAX", "sort": 8 },
                { "id": 1006, "value": "HOME", "sort": 10 },
                { "id": 1004, "value": "OTHER", "sort": 12 },
            ],
            "group_id": null, "required_statuses": [], "is_deletable": false, "is_predefined": true,
            "entity_type": "contacts", "remind": null, "triggers": [], "currency": null,
            "hidden_statuses": [],
            "_links": { "self": { "href": format!("{base}/api/v4/contacts/custom_fields/{PHONE_FIELD_ID}") } },
        })
    );
    let by_id = |id: u64| {
        fields
            .iter()
            .find(|f| f["id"] == json!(id))
            .expect("listed")
            .clone()
    };
    assert_eq!(by_id(BUDGET_FIELD_ID)["type"], "numeric");
    assert_eq!(by_id(BUDGET_FIELD_ID).get("enums"), Some(&Value::Null));
    assert_eq!(by_id(CONTRACT_DATE_FIELD_ID)["type"], "date");
    assert_eq!(by_id(VIP_FIELD_ID)["type"], "checkbox");
    assert_eq!(by_id(POSITION_FIELD_ID)["type"], "text");
    assert_eq!(
        by_id(SOURCE_FIELD_ID)["enums"],
        json!([{ "id": 3001, "value": "Сайт", "sort": 1 }, { "id": 3002, "value": "Реклама", "sort": 2 },
               { "id": 3003, "value": "Звонок", "sort": 3 }])
    );
    assert_eq!(
        by_id(EMAIL_FIELD_ID)["enums"]
            .as_array()
            .expect("enums")
            .iter()
            .map(|e| e["value"].as_str().expect("value"))
            .collect::<Vec<_>>(),
        ["WORK", "PRIV", "OTHER"]
    );

    let mut seen = Vec::new();
    for page in 1..=3 {
        let answer = fake
            .get(
                &format!("/api/v4/contacts/custom_fields?limit=5&page={page}"),
                ADMIN_TOKEN,
            )
            .await;
        assert_eq!(answer.status, 200);
        let href = |page: usize| json!({ "href": format!("{base}/api/v4/contacts/custom_fields?limit=5&page={page}") });
        let mut links = json!({ "self": href(page), "last": href(3) });
        if page < 3 {
            links["next"] = href(page + 1);
        }
        assert_eq!(answer.body["_links"], links);
        assert_eq!(answer.body["_page"], json!(page));
        assert_eq!(answer.body["_page_count"], json!(3));
        seen.extend(
            answer.body["_embedded"]["custom_fields"]
                .as_array()
                .expect("fields")
                .iter()
                .map(|f| f["id"].as_u64().expect("id")),
        );
    }
    assert_eq!(
        seen,
        CONTACT_FIELDS.iter().map(|f| f.id).collect::<Vec<_>>()
    );
    let past = fake
        .get("/api/v4/contacts/custom_fields?limit=5&page=4", ADMIN_TOKEN)
        .await;
    assert_eq!((past.status, past.body), (204, json!("")));
}

#[tokio::test]
async fn fake_writes_create_answers_ids_and_the_contacts_read_back_at_once() {
    let fake = Fake::start().await;
    let base = fake.fake.base_url();
    let before = now();
    let first_id = fake
        .fake
        .contacts()
        .iter()
        .map(|c| c.id)
        .max()
        .expect("ids")
        + 1;
    let created = fake
        .send(
            Method::POST,
            "/api/v4/contacts",
            ADMIN_TOKEN,
            &json!([
                {
                    "first_name": "Квазимодо", "last_name": "Звонарёв",
                    "responsible_user_id": MANAGER_USER_ID,
                    "custom_fields_values": [
                        { "field_code": "PHONE", "values": [
                            { "value": "+7 999 000-11-22", "enum_code": "MOB" },
                            { "value": "+7 495 000-11-22", "enum_id": PHONE_ENUMS[4].id },
                        ] },
                        { "field_id": BUDGET_FIELD_ID, "values": [{ "value": 2.5 }] },
                        { "field_id": SOURCE_FIELD_ID, "values": [{ "value": "Звонок" }] },
                        { "field_id": VIP_FIELD_ID, "values": [{ "value": true }] },
                        { "field_id": CONTRACT_DATE_FIELD_ID,
                          "values": [{ "value": "2026-01-02T03:04:05+00:00" }] },
                    ],
                    "_embedded": { "tags": [{ "id": 101 }, { "name": "колокол" }] },
                    "request_id": "bell",
                },
                { "name": "Без имени" },
            ]),
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    assert_eq!(created.content_type, "application/hal+json");
    let link = |id: u64| json!({ "self": { "href": format!("{base}/api/v4/contacts/{id}") } });
    assert_eq!(
        created.body,
        json!({
            "_links": { "self": { "href": format!("{base}/api/v4/contacts") } },
            "_embedded": { "contacts": [
                { "id": first_id, "request_id": "bell", "is_deleted": false, "is_unsorted": false,
                  "_links": link(first_id) },
                { "id": first_id + 1, "request_id": "1", "is_deleted": false,
                  "is_unsorted": false, "_links": link(first_id + 1) },
            ] },
        })
    );

    let contact = fake.contact(first_id).await;
    assert_eq!(
        contact["name"], "Квазимодо Звонарёв",
        "composed from the parts"
    );
    assert_eq!(contact["responsible_user_id"], json!(MANAGER_USER_ID));
    assert_eq!(contact["created_by"], json!(USERS[0].0), "the admin's user");
    assert_eq!(contact["updated_by"], json!(USERS[0].0));
    let created_at = contact["created_at"].as_i64().expect("seconds");
    assert!(created_at >= before && created_at <= now());
    assert_eq!(contact["updated_at"], contact["created_at"]);
    assert_eq!(
        contact["custom_fields_values"],
        json!([
            { "field_id": PHONE_FIELD_ID, "field_name": "Телефон", "field_code": "PHONE",
              "field_type": "multitext", "values": [
                { "value": "+7 999 000-11-22", "enum_id": 1003, "enum_code": "MOB" },
                { "value": "+7 495 000-11-22", "enum_id": 1006, "enum_code": "HOME" },
            ] },
            { "field_id": BUDGET_FIELD_ID, "field_name": "Бюджет", "field_code": null,
              "field_type": "numeric", "values": [{ "value": "2.5" }] },
            { "field_id": SOURCE_FIELD_ID, "field_name": "Источник", "field_code": null,
              "field_type": "select", "values": [
                { "value": "Звонок", "enum_id": SOURCE_ENUMS[2].id, "enum_code": null }] },
            { "field_id": VIP_FIELD_ID, "field_name": "VIP", "field_code": null,
              "field_type": "checkbox", "values": [{ "value": true }] },
            { "field_id": CONTRACT_DATE_FIELD_ID, "field_name": "Дата договора",
              "field_code": null, "field_type": "date", "values": [{ "value": 1_767_323_045 }] },
        ])
    );
    let tags = &contact["_embedded"]["tags"];
    assert_eq!(tags[0], json!({ "id": 101, "name": "VIP", "color": null }));
    assert_eq!(tags[1]["name"], "колокол", "a tag created by name");
    assert_eq!(contact["_embedded"]["leads"], json!([]));
    let unnamed = fake.contact(first_id + 1).await;
    assert_eq!(unnamed["name"], "Без имени");
    assert_eq!(unnamed["responsible_user_id"], json!(USERS[0].0));
    assert_eq!(unnamed.get("custom_fields_values"), Some(&Value::Null));

    assert_eq!(
        fake.list_ids("query=звонарёв", ADMIN_TOKEN).await,
        [first_id]
    );
    assert_eq!(
        fake.list_ids("query=000-11-22", ADMIN_TOKEN).await,
        [first_id]
    );
    assert_eq!(
        fake.list_ids(&format!("filter[updated_at][from]={before}"), ADMIN_TOKEN)
            .await,
        [first_id, first_id + 1]
    );
    assert_eq!(
        fake.list_ids("order[updated_at]=desc&limit=2", ADMIN_TOKEN)
            .await,
        [first_id + 1, first_id]
    );
    let managers = fake
        .list_ids(&format!("filter[created_at][from]={before}"), MANAGER_TOKEN)
        .await;
    assert_eq!(managers, [first_id], "the manager sees what is theirs");
}

#[tokio::test]
async fn fake_writes_one_bad_item_refuses_the_whole_batch() {
    let fake = Fake::start().await;
    let before = fake.fake.contacts().len();
    let refused = fake
        .send(
            Method::POST,
            "/api/v4/contacts",
            ADMIN_TOKEN,
            &json!([
                { "name": "Fine", "tags_to_add": [{ "name": "never-made" }] },
                { "name": "Bad phone", "custom_fields_values": [
                    { "field_code": "PHONE", "values": [
                        { "value": "1", "enum_code": "WORK" }, { "value": "2", "enum_code": "CELL" }] },
                    { "field_id": 999_999, "values": [{ "value": "x" }] },
                ] },
                { "name": "Bad budget", "request_id": "b",
                  "custom_fields_values": [{ "field_id": BUDGET_FIELD_ID, "values": [{ "value": "a lot" }] }] },
            ]),
        )
        .await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.content_type, "application/problem+json");
    assert_eq!(
        refused.body,
        validation_failed(json!([
            { "request_id": "1", "errors": [
                error("NotSupportedChoice", "custom_fields_values.0.values.1.enum_code", NOT_A_CHOICE),
                error("NotSupportedChoice", "custom_fields_values.1.field_id", NOT_A_CHOICE),
            ] },
            { "request_id": "b", "errors": [
                error("InvalidType", "custom_fields_values.0.values.0.value",
                      "This value should be of type numeric."),
            ] },
        ]))
    );
    assert_eq!(fake.fake.contacts().len(), before, "nothing was created");
    assert!(fake.list_ids("query=fine", ADMIN_TOKEN).await.is_empty());

    // The tag the refused batch named was not created: deleting it by name is refused.
    let someone = fake.fake.contacts()[0].id;
    let untagged = fake
        .send(
            Method::PATCH,
            &format!("/api/v4/contacts/{someone}"),
            ADMIN_TOKEN,
            &json!({ "tags_to_delete": [{ "name": "never-made" }] }),
        )
        .await;
    assert_eq!(untagged.status, 400);
    assert_eq!(
        untagged.body["validation-errors"][0]["errors"][0]["path"],
        "tags_to_delete.0.name"
    );
}

#[tokio::test]
async fn fake_writes_validate_each_type_and_refuse_read_only_keys() {
    let fake = Fake::start().await;
    let cases = [
        (
            json!({ "custom_fields_values": [{ "field_id": CONTRACT_DATE_FIELD_ID,
                                             "values": [{ "value": "2020-06-17" }] }] }),
            error(
                "InvalidType",
                "custom_fields_values.0.values.0.value",
                "This value should be of type int.",
            ),
        ),
        (
            json!({ "custom_fields_values": [{ "field_id": VIP_FIELD_ID, "values": [{ "value": "yes" }] }] }),
            error(
                "InvalidType",
                "custom_fields_values.0.values.0.value",
                "This value should be of type bool.",
            ),
        ),
        (
            json!({ "custom_fields_values": [{ "field_code": "POSITION", "values": [{ "value": 5 }] }] }),
            error(
                "InvalidType",
                "custom_fields_values.0.values.0.value",
                "This value should be of type string.",
            ),
        ),
        (
            json!({ "custom_fields_values": [{ "field_id": BUDGET_FIELD_ID,
                                             "values": [{ "value": "1", "enum_code": "WORK" }] }] }),
            error(
                "FieldNotExpected",
                "custom_fields_values.0.values.0.enum_code",
                NOT_EXPECTED,
            ),
        ),
        (
            json!({ "custom_fields_values": [{ "field_id": SOURCE_FIELD_ID, "values": [{ "value": "сайт" }] }] }),
            error(
                "NotSupportedChoice",
                "custom_fields_values.0.values.0.value",
                NOT_A_CHOICE,
            ),
        ),
        (
            json!({ "custom_fields_values": [{ "field_id": SOURCE_FIELD_ID, "values": [{ "enum_id": 1001 }] }] }),
            error(
                "NotSupportedChoice",
                "custom_fields_values.0.values.0.enum_id",
                NOT_A_CHOICE,
            ),
        ),
        (
            json!({ "custom_fields_values": [{ "field_code": "NOPE", "values": [] }] }),
            error(
                "NotSupportedChoice",
                "custom_fields_values.0.field_code",
                NOT_A_CHOICE,
            ),
        ),
        (
            json!({ "responsible_user_id": 1 }),
            error("NotSupportedChoice", "responsible_user_id", NOT_A_CHOICE),
        ),
        (
            json!({ "_embedded": { "tags": [{ "id": 999 }] } }),
            error("NotSupportedChoice", "_embedded.tags.0.id", NOT_A_CHOICE),
        ),
        (
            json!({ "created_at": 1_600_000_000 }),
            error("FieldNotExpected", "created_at", NOT_EXPECTED),
        ),
        (
            json!({ "updated_by": USERS[0].0 }),
            error("FieldNotExpected", "updated_by", NOT_EXPECTED),
        ),
        (
            json!({ "account_id": 28_805_383 }),
            error("FieldNotExpected", "account_id", NOT_EXPECTED),
        ),
        (
            json!({ "_links": {} }),
            error("FieldNotExpected", "_links", NOT_EXPECTED),
        ),
    ];
    for (item, expected) in cases {
        let refused = fake
            .send(
                Method::POST,
                "/api/v4/contacts",
                ADMIN_TOKEN,
                &json!([item]),
            )
            .await;
        assert_eq!(
            refused.body,
            validation_failed(json!([{ "request_id": "0", "errors": [expected] }])),
            "{item}"
        );
    }

    // A contact read from the fake and sent back as it is fails as amoCRM's does.
    let id = fake.fake.contacts()[0].id;
    let mut echoed = fake.contact(id).await;
    echoed["request_id"] = json!("0");
    let refused = fake
        .send(
            Method::PATCH,
            "/api/v4/contacts",
            ADMIN_TOKEN,
            &json!([echoed]),
        )
        .await;
    assert_eq!(refused.status, 400);

    for (body, detail) in [
        (
            json!({ "name": "not an array" }),
            "Request body must be an array",
        ),
        (json!([]), "Request is empty"),
        (
            Value::Array(vec![json!({ "name": "x" }); MAX_WRITE_BATCH + 1]),
            "Too many entities in one request: at most 250",
        ),
    ] {
        let refused = fake
            .send(Method::POST, "/api/v4/contacts", ADMIN_TOKEN, &body)
            .await;
        assert_eq!(
            (refused.status, refused.content_type.as_str(), refused.body),
            (
                400,
                "application/problem+json",
                json!({ "title": "Bad Request", "type": "https://httpstatus.es/400",
                        "status": 400, "detail": detail })
            )
        );
    }
}

#[tokio::test]
async fn fake_writes_patch_changes_only_what_was_sent() {
    let fake = Fake::start().await;
    let base = fake.fake.base_url();
    let original = fake
        .fake
        .contacts()
        .into_iter()
        .find(|c| {
            c.tags.len() >= 2
                && c.custom_fields
                    .as_ref()
                    .is_some_and(|f| f.iter().any(|f| f.id == EMAIL_FIELD_ID) && f.len() >= 3)
        })
        .expect("a contact with tags, an e-mail and more fields");
    let id = original.id;
    let before = fake.contact(id).await;
    let started = now();

    let single = fake
        .send(
            Method::PATCH,
            &format!("/api/v4/contacts/{id}"),
            ADMIN_TOKEN,
            &json!({
                "name": "Новое имя",
                "custom_fields_values": [
                    { "field_id": EMAIL_FIELD_ID, "values": [{ "value": "new@example.ru", "enum_code": "OTHER" }] },
                    { "field_id": PHONE_FIELD_ID, "values": null },
                ],
                "tags_to_add": [{ "id": 106 }],
                "tags_to_delete": [{ "id": original.tags[0].0 }],
            }),
        )
        .await;
    assert_eq!(single.status, 200, "{}", single.body);
    let updated_at = single.body["updated_at"].as_i64().expect("seconds");
    assert!(updated_at >= started);
    assert_eq!(
        single.body,
        json!({ "id": id, "name": "Новое имя", "updated_at": updated_at,
                "_links": { "self": { "href": format!("{base}/api/v4/contacts/{id}") } } }),
        "a bare object, not a collection"
    );
    let after = fake.contact(id).await;
    for unchanged in [
        "first_name",
        "last_name",
        "responsible_user_id",
        "created_at",
        "created_by",
        "group_id",
        "closest_task_at",
    ] {
        assert!(before.get(unchanged).is_some(), "{unchanged} is there");
        assert_eq!(after.get(unchanged), before.get(unchanged), "{unchanged}");
    }
    let fields = after["custom_fields_values"].as_array().expect("fields");
    let field = |field_id: u64| fields.iter().find(|f| f["field_id"] == json!(field_id));
    assert!(field(PHONE_FIELD_ID).is_none(), "null values clear a field");
    assert_eq!(
        field(EMAIL_FIELD_ID).expect("e-mail")["values"],
        json!([{ "value": "new@example.ru", "enum_id": 2003, "enum_code": "OTHER" }])
    );
    let others = |c: &Value| -> Vec<Value> {
        c["custom_fields_values"]
            .as_array()
            .expect("fields")
            .iter()
            .filter(|f| {
                ![PHONE_FIELD_ID, EMAIL_FIELD_ID].contains(&f["field_id"].as_u64().unwrap_or(0))
            })
            .cloned()
            .collect()
    };
    assert_eq!(others(&after), others(&before), "fields not sent stay");
    let tag_ids: Vec<u64> = fake.contact_data(id).tags.iter().map(|t| t.0).collect();
    assert!(tag_ids.contains(&106) && !tag_ids.contains(&original.tags[0].0));
    assert!(tag_ids.contains(&original.tags[1].0));
    assert_eq!(
        fake.list_ids(&format!("filter[updated_at][from]={started}"), ADMIN_TOKEN)
            .await,
        [id]
    );
    assert_eq!(fake.list_ids("query=new@example", ADMIN_TOKEN).await, [id]);

    // `_embedded.tags` replaces the set, and the add and delete lists are ignored.
    let other = fake
        .fake
        .contacts()
        .iter()
        .find(|c| c.id != id)
        .expect("another contact")
        .id;
    let batch = fake
        .send(
            Method::PATCH,
            "/api/v4/contacts",
            ADMIN_TOKEN,
            &json!([
                { "id": id, "_embedded": { "tags": [{ "id": 103 }] }, "tags_to_add": [{ "id": 104 }],
                  "request_id": "r1" },
                { "id": other, "first_name": "Пётр", "last_name": null },
            ]),
        )
        .await;
    assert_eq!(batch.status, 200, "{}", batch.body);
    let updated_at = |i: usize| batch.body["_embedded"]["contacts"][i]["updated_at"].clone();
    assert_eq!(
        batch.body,
        json!({
            "_links": { "self": { "href": format!("{base}/api/v4/contacts") } },
            "_embedded": { "contacts": [
                { "id": id, "name": "Новое имя", "updated_at": updated_at(0), "request_id": "r1",
                  "_links": { "self": { "href": format!("{base}/api/v4/contacts/{id}") } } },
                { "id": other, "name": "Пётр", "updated_at": updated_at(1),
                  "_links": { "self": { "href": format!("{base}/api/v4/contacts/{other}") } } },
            ] },
        })
    );
    let tags: Vec<u64> = fake.contact_data(id).tags.iter().map(|t| t.0).collect();
    assert_eq!(tags, [103]);
    assert_eq!(fake.contact_data(other).last_name, None);

    // `_embedded.tags: null` clears them.
    let cleared = fake
        .send(
            Method::PATCH,
            &format!("/api/v4/contacts/{id}"),
            ADMIN_TOKEN,
            &json!({ "_embedded": { "tags": null }, "request_id": "0" }),
        )
        .await;
    assert_eq!(cleared.body["request_id"], "0");
    assert!(fake.contact_data(id).tags.is_empty());
}

#[tokio::test]
async fn fake_writes_refuse_contacts_that_are_unknown_or_not_visible() {
    let fake = Fake::start().await;
    let hidden = not_the_managers(&fake);
    let own = fake.fake.visible_ids(MANAGER_TOKEN)[0];
    let refused = fake
        .send(
            Method::PATCH,
            "/api/v4/contacts",
            MANAGER_TOKEN,
            &json!([
                { "id": own, "name": "Mine" },
                { "id": hidden.id, "name": "Not mine" },
                { "id": 1, "name": "Nobody" },
                { "name": "No id" },
            ]),
        )
        .await;
    let not_found = || error("NotFound", "id", "Entity not found.");
    assert_eq!(
        refused.body,
        validation_failed(json!([
            { "request_id": "1", "errors": [not_found()] },
            { "request_id": "2", "errors": [not_found()] },
            { "request_id": "3", "errors": [error("FieldMissing", "id", "This field is missing.")] },
        ]))
    );
    assert_ne!(fake.contact_data(own).name, "Mine", "all or nothing");
    assert_eq!(fake.contact_data(hidden.id).name, hidden.name);

    let one = fake
        .send(
            Method::PATCH,
            &format!("/api/v4/contacts/{}", hidden.id),
            MANAGER_TOKEN,
            &json!({ "name": "Not mine" }),
        )
        .await;
    assert_eq!(one.status, 400);
    assert_eq!(
        one.body["validation-errors"],
        json!([{ "request_id": "0", "errors": [not_found()] }])
    );
    let array = fake
        .send(
            Method::PATCH,
            &format!("/api/v4/contacts/{own}"),
            MANAGER_TOKEN,
            &json!([{ "name": "x" }]),
        )
        .await;
    assert_eq!(array.status, 405, "an array to one contact's address");

    let mine = fake
        .send(
            Method::PATCH,
            &format!("/api/v4/contacts/{own}"),
            MANAGER_TOKEN,
            &json!({ "name": "Mine" }),
        )
        .await;
    assert_eq!(mine.status, 200);
    assert_eq!(fake.contact_data(own).updated_by, MANAGER_USER_ID);
}

#[tokio::test]
async fn fake_writes_links_show_at_once_and_unlink_answers_204() {
    let fake = Fake::start().await;
    let contacts = fake.fake.contacts();
    let contact = contacts
        .iter()
        .find(|c| c.lead_ids.is_empty() && c.catalog_elements.is_empty())
        .expect("a contact without leads or goods")
        .clone();
    let donor = contacts
        .iter()
        .find(|c| {
            c.id != contact.id
                && c.lead_ids.iter().any(|l| l % 41 != 0)
                && !c.customer_ids.is_empty()
                && c.company_id
                    .is_some_and(|company| contact.company_id != Some(company))
        })
        .expect("a contact with a live lead, a customer and another company");
    let lead = *donor
        .lead_ids
        .iter()
        .find(|l| *l % 41 != 0)
        .expect("a live lead");
    let customer = donor.customer_ids[0];
    let company = donor.company_id.expect("a company");
    let element = contacts
        .iter()
        .flat_map(|c| c.catalog_elements.iter())
        .find(|e| e.catalog_id == GOODS_CATALOG_ID)
        .expect("a goods element")
        .id;
    let id = contact.id;
    let updated_at = contact.updated_at;
    let base = fake.fake.base_url();

    let linked = fake
        .send(
            Method::POST,
            &format!("/api/v4/contacts/{id}/link"),
            ADMIN_TOKEN,
            &json!([
                { "to_entity_id": lead, "to_entity_type": "leads", "metadata": { "is_main": true } },
                { "to_entity_id": customer, "to_entity_type": "customers" },
                { "to_entity_id": company, "to_entity_type": "companies" },
                { "to_entity_id": element, "to_entity_type": "catalog_elements",
                  "metadata": { "catalog_id": GOODS_CATALOG_ID, "quantity": 2.5, "price_id": null } },
            ]),
        )
        .await;
    assert_eq!(linked.status, 200, "{}", linked.body);
    assert_eq!(linked.content_type, "application/hal+json");
    let link = |to: u64, to_type: &str, metadata: Value| {
        json!({ "entity_id": id, "entity_type": "contacts", "to_entity_id": to,
                "to_entity_type": to_type, "metadata": metadata })
    };
    assert_eq!(
        linked.body,
        json!({
            "_total_items": 4,
            "_links": { "self": { "href": format!("{base}/api/v4/contacts/{id}/links") } },
            "_embedded": { "links": [
                link(lead, "leads", json!({ "main_contact": true })),
                link(customer, "customers", Value::Null),
                link(company, "companies", Value::Null),
                link(element, "catalog_elements", json!({ "quantity": 2.5, "catalog_id": GOODS_CATALOG_ID })),
            ] },
        })
    );
    let read = fake.contact(id).await;
    let relation_ids = |key: &str| -> Vec<u64> {
        read["_embedded"][key]
            .as_array()
            .expect(key)
            .iter()
            .map(|r| r["id"].as_u64().expect("id"))
            .collect()
    };
    assert_eq!(relation_ids("leads"), [lead]);
    assert!(relation_ids("customers").contains(&customer));
    assert_eq!(relation_ids("companies"), [company]);
    assert_eq!(
        read["_embedded"]["catalog_elements"],
        json!([{ "id": element, "metadata": { "quantity": 2.5, "catalog_id": GOODS_CATALOG_ID } }])
    );
    assert_eq!(
        read["updated_at"],
        json!(updated_at),
        "links leave updated_at"
    );

    let unlinked = fake
        .send(
            Method::POST,
            &format!("/api/v4/contacts/{id}/unlink"),
            ADMIN_TOKEN,
            &json!([
                { "to_entity_id": lead, "to_entity_type": "leads" },
                { "to_entity_id": element, "to_entity_type": "catalog_elements",
                  "metadata": { "catalog_id": GOODS_CATALOG_ID } },
            ]),
        )
        .await;
    assert_eq!(
        (unlinked.status, unlinked.body, unlinked.content_type),
        (204, json!(""), String::new())
    );
    let read = fake.contact(id).await;
    assert_eq!(read["_embedded"]["leads"], json!([]));
    assert_eq!(read["_embedded"]["catalog_elements"], json!([]));

    // Bulk: an `entity_id` per item; one unknown entity refuses all.
    let refused = fake
        .send(
            Method::POST,
            "/api/v4/contacts/link",
            ADMIN_TOKEN,
            &json!([
                { "entity_id": id, "to_entity_id": lead, "to_entity_type": "leads" },
                { "entity_id": id, "to_entity_id": 41 * 1_000_000, "to_entity_type": "leads" },
                { "entity_id": 1, "to_entity_id": lead, "to_entity_type": "leads" },
                { "entity_id": id, "to_entity_id": element, "to_entity_type": "catalog_elements" },
            ]),
        )
        .await;
    assert_eq!(
        refused.body,
        validation_failed(json!([
            { "request_id": "1", "errors": [error("NotFound", "to_entity_id", "Entity not found.")] },
            { "request_id": "2", "errors": [error("NotFound", "entity_id", "Entity not found.")] },
            { "request_id": "3", "errors": [error("FieldMissing", "metadata.catalog_id", "This field is missing.")] },
        ]))
    );
    assert_eq!(fake.contact(id).await["_embedded"]["leads"], json!([]));
    let bulk = fake
        .send(
            Method::POST,
            "/api/v4/contacts/link",
            ADMIN_TOKEN,
            &json!([{ "entity_id": id, "to_entity_id": lead, "to_entity_type": "leads" }]),
        )
        .await;
    assert_eq!(bulk.status, 200);
    assert_eq!(
        bulk.body["_embedded"]["links"],
        json!([link(lead, "leads", Value::Null)])
    );
    let bulk_unlink = fake
        .send(
            Method::POST,
            "/api/v4/contacts/unlink",
            ADMIN_TOKEN,
            &json!([{ "entity_id": id, "to_entity_id": lead, "to_entity_type": "leads" }]),
        )
        .await;
    assert_eq!((bulk_unlink.status, bulk_unlink.body), (204, json!("")));
    assert_eq!(fake.contact(id).await["_embedded"]["leads"], json!([]));

    let hidden = not_the_managers(&fake).id;
    let managers = fake
        .send(
            Method::POST,
            &format!("/api/v4/contacts/{hidden}/link"),
            MANAGER_TOKEN,
            &json!([{ "to_entity_id": lead, "to_entity_type": "leads" }]),
        )
        .await;
    assert_eq!(
        managers.status, 400,
        "the manager may not link what it cannot see"
    );
}

#[tokio::test]
async fn fake_writes_time_out_next_write_applies_then_never_answers() {
    let fake = Fake::start().await;
    let id = fake.fake.contacts()[0].id;
    fake.fake.time_out_next_write();
    let sent = fake
        .http
        .patch(fake.url(&format!("/api/v4/contacts/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "name": "Applied, unanswered" }))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    let failed = sent.expect_err("no answer comes");
    assert!(failed.is_timeout(), "{failed}");
    assert_eq!(fake.contact_data(id).name, "Applied, unanswered");

    let next = fake
        .send(
            Method::POST,
            "/api/v4/contacts",
            ADMIN_TOKEN,
            &json!([{ "name": "Answered" }]),
        )
        .await;
    assert_eq!(next.status, 200, "only one write is held");
}

#[tokio::test]
async fn fake_writes_a_queued_failure_refuses_without_applying() {
    let fake = Fake::start().await;
    let before = fake.fake.contacts().len();
    fake.fake
        .fail_next([Failure::problem(500, "Internal", "boom")]);
    let failed = fake
        .send(
            Method::POST,
            "/api/v4/contacts",
            ADMIN_TOKEN,
            &json!([{ "name": "Never" }]),
        )
        .await;
    assert_eq!(failed.status, 500);
    assert_eq!(fake.fake.contacts().len(), before);

    // A refused write leaves the held answer for the next one that applies.
    fake.fake.time_out_next_write();
    let refused = fake
        .send(
            Method::POST,
            "/api/v4/contacts",
            ADMIN_TOKEN,
            &json!([{ "created_at": 1 }]),
        )
        .await;
    assert_eq!(refused.status, 400);
    let held = fake
        .http
        .post(fake.url("/api/v4/contacts"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!([{ "name": "Held" }]))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(held.is_err_and(|e| e.is_timeout()));
    assert_eq!(fake.fake.contacts().len(), before + 1);
}

#[tokio::test]
async fn fake_writes_are_recorded_and_admitted_like_reads() {
    let fake = Fake::start().await;
    let body = json!([{ "name": "Recorded", "request_id": "r" }]);
    for (token, status) in [(UNPAID_TOKEN, 402), ("wrong", 401)] {
        let refused = fake
            .send(Method::POST, "/api/v4/contacts", token, &body)
            .await;
        assert_eq!(refused.status, status);
    }
    let created = fake
        .send(Method::POST, "/api/v4/contacts", MANAGER_TOKEN, &body)
        .await;
    assert_eq!(created.status, 200);
    let id = created.body["_embedded"]["contacts"][0]["id"]
        .as_u64()
        .expect("id");
    let contact = fake.contact_data(id);
    assert_eq!(
        (contact.created_by, contact.responsible_user_id),
        (MANAGER_USER_ID, MANAGER_USER_ID)
    );
    assert!(fake.fake.visible_ids(MANAGER_TOKEN).contains(&id));

    let requests = fake.fake.requests();
    assert_eq!(requests.len(), 3);
    for request in &requests {
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("POST", "/api/v4/contacts")
        );
        assert_eq!(request.body.as_ref(), Some(&body));
    }
    assert_eq!(requests[2].token.as_deref(), Some(MANAGER_TOKEN));
    fake.fake.clear_requests();
    fake.get("/api/v4/contacts?limit=1", ADMIN_TOKEN).await;
    let read = &fake.fake.requests()[0];
    assert_eq!((read.method.as_str(), read.body.as_ref()), ("GET", None));
}
