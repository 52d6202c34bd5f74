//! The fake's deterministic dataset and how it renders as amoCRM JSON.
//!
//! Written from the fake's own definitions, never through the client's types: a field the
//! client misspells must fail the tests, not be misspelled the same way on both sides.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

/// The account all fake contacts belong to.
pub const ACCOUNT_ID: u64 = 28_805_383;

/// The fake's users: `(id, name)`. Contacts are spread over them as responsible users.
pub const USERS: [(u64, &str); 5] = [
    (504_141, "Анна Смирнова"),
    (504_142, "Иван Петров"),
    (504_143, "Olga Kim"),
    (504_144, "Дмитрий Соколов"),
    (504_145, "Liam O'Connor"),
];

const FIRST_NAMES: [&str; 14] = [
    "Иван",
    "Мария",
    "Алексей",
    "Ольга",
    "Дмитрий",
    "Анна",
    "Сергей",
    "Екатерина",
    "Михаил",
    "Наталья",
    "Пётр",
    "John",
    "Emily",
    "Zoë",
];
const LAST_NAMES: [&str; 12] = [
    "Иванов",
    "Петрова",
    "Смирнов",
    "Кузнецова",
    "Попов",
    "Соколова",
    "Лебедев",
    "Новикова",
    "Lee",
    "O'Brien",
    "Müller",
    "Núñez",
];
/// Names that break naive code: empty, whitespace, quotes, markup, emoji, newlines, very long.
const ODD_NAMES: [&str; 10] = [
    "",
    "   ",
    "\"Кавычки\" и <b>теги</b>",
    "🚀 Ракета & Co",
    "Robert'); DROP TABLE contacts;--",
    "Строка\nс переводом",
    "\\обратный\\слэш\\",
    "李雷",
    "NULL",
    "Очень длинное имя контакта, которое тянется и тянется и тянется и тянется и тянется и \
     тянется и тянется и тянется и тянется и тянется и тянется и тянется и никак не кончается",
];
const TAGS: [(u64, &str); 6] = [
    (101, "VIP"),
    (102, "опт"),
    (103, "новый"),
    (104, "партнёр"),
    (105, "cold lead"),
    (106, "🔥"),
];
const POSITIONS: [&str; 5] = ["Директор", "Менеджер", "CTO", "Бухгалтер", "Закупщик"];
const SOURCES: [(u64, &str); 3] = [(3001, "Сайт"), (3002, "Реклама"), (3003, "Звонок")];

pub const PHONE_FIELD_ID: u64 = 300_001;
pub const EMAIL_FIELD_ID: u64 = 300_002;
pub const POSITION_FIELD_ID: u64 = 300_003;
pub const BUDGET_FIELD_ID: u64 = 300_004;
pub const SOURCE_FIELD_ID: u64 = 300_005;
pub const VIP_FIELD_ID: u64 = 300_006;
pub const BIRTHDAY_FIELD_ID: u64 = 300_007;

#[derive(Debug, Clone)]
pub struct FakeContact {
    pub id: u64,
    pub name: String,
    /// `None`: the key is left out of the JSON, as amoCRM sometimes does.
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub responsible_user_id: u64,
    pub group_id: u64,
    pub created_by: u64,
    pub updated_by: u64,
    pub created_at: i64,
    pub updated_at: i64,
    pub closest_task_at: Option<i64>,
    /// `None`: the key is left out (the documentation's own example does that).
    pub is_deleted: Option<bool>,
    /// `None`: `"custom_fields_values": null`; `Some(empty)` never occurs, amoCRM sends null.
    pub custom_fields: Option<Vec<FakeField>>,
    pub tags: Vec<(u64, &'static str)>,
    pub company_id: Option<u64>,
    pub lead_ids: Vec<u64>,
    pub customer_ids: Vec<u64>,
    pub catalog_elements: Vec<FakeCatalogLink>,
    /// Lowercased names and field values, what amoCRM's `query` searches; kept up to date by
    /// [`FakeContact::reindex`].
    search_text: String,
}

#[derive(Debug, Clone)]
pub struct FakeField {
    pub id: u64,
    pub name: &'static str,
    pub code: Option<&'static str>,
    pub field_type: &'static str,
    pub values: Vec<FakeFieldValue>,
}

#[derive(Debug, Clone)]
pub struct FakeFieldValue {
    pub value: Value,
    pub enum_id: Option<u64>,
    pub enum_code: Option<&'static str>,
    /// Write the code under the legacy key `enum` instead of `enum_code`.
    pub legacy_enum_key: bool,
}

#[derive(Debug, Clone)]
pub struct FakeCatalogLink {
    pub id: u64,
    pub catalog_id: u64,
    pub quantity: Value,
    pub price_id: Option<u64>,
}

/// SplitMix64: tiny, deterministic, and good enough to make data look varied.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// `count` contacts, the same on every run.
pub fn generate(count: usize) -> Vec<FakeContact> {
    let mut rng = Rng(0x5EED_A40C_0000_0001);
    (0..count as u64)
        .map(|i| {
            let first = rng.pick(&FIRST_NAMES);
            let last = rng.pick(&LAST_NAMES);
            let name = if i % 37 == 5 {
                ODD_NAMES[(i / 37) as usize % ODD_NAMES.len()].to_owned()
            } else {
                format!("{first} {last}")
            };
            let created_at = 1_585_000_000 + i as i64 * 5_000 + rng.below(3_000) as i64;
            let responsible = USERS[(i % USERS.len() as u64) as usize].0;
            let author = rng.pick(&USERS).0;
            let omit_names = rng.chance(10);
            FakeContact {
                id: 7_000_000 + i * 7,
                name,
                first_name: (!omit_names).then(|| first.to_owned()),
                last_name: (!omit_names).then(|| last.to_owned()),
                responsible_user_id: responsible,
                group_id: if responsible.is_multiple_of(2) {
                    0
                } else {
                    1_201
                },
                created_by: author,
                updated_by: rng.pick(&USERS).0,
                created_at,
                updated_at: created_at + rng.below(90 * 86_400) as i64,
                closest_task_at: rng
                    .chance(30)
                    .then(|| 1_700_000_000 + rng.below(10_000_000) as i64),
                is_deleted: (!rng.chance(20)).then_some(false),
                custom_fields: (!rng.chance(15)).then(|| custom_fields(&mut rng, i)),
                tags: {
                    let mut tags: Vec<_> = (0..rng.below(4)).map(|_| rng.pick(&TAGS)).collect();
                    tags.sort_unstable();
                    tags.dedup();
                    tags
                },
                company_id: rng.chance(50).then(|| 9_000_000 + i % 300),
                lead_ids: (0..rng.below(4)).map(|k| 20_000_000 + i * 3 + k).collect(),
                customer_ids: (0..rng.below(3)).map(|k| 30_000_000 + i * 2 + k).collect(),
                catalog_elements: (0..rng.below(3))
                    .map(|k| FakeCatalogLink {
                        id: 40_000_000 + i * 2 + k,
                        catalog_id: rng.pick(&[1_001, 1_002]),
                        quantity: if rng.chance(50) {
                            json!(rng.below(10) + 1)
                        } else {
                            json!(0.5 + rng.below(10) as f64)
                        },
                        price_id: rng.chance(70).then_some(500_001),
                    })
                    .collect(),
                search_text: String::new(),
            }
        })
        .map(|mut contact| {
            contact.reindex();
            contact
        })
        .collect()
}

fn custom_fields(rng: &mut Rng, i: u64) -> Vec<FakeField> {
    let value = |value: Value| FakeFieldValue {
        value,
        enum_id: None,
        enum_code: None,
        legacy_enum_key: false,
    };
    let mut fields = vec![FakeField {
        id: PHONE_FIELD_ID,
        name: "Телефон",
        code: Some("PHONE"),
        field_type: "multitext",
        values: (0..1 + rng.below(2))
            .map(|k| {
                let (enum_id, code) = rng.pick(&[
                    (1001, "WORK"),
                    (1002, "WORKDD"),
                    (1003, "MOB"),
                    (1004, "OTHER"),
                ]);
                FakeFieldValue {
                    value: json!(format!(
                        "+7 9{:02} {:03}-{:02}-{:02}",
                        i % 100,
                        i % 1000,
                        k,
                        i % 97
                    )),
                    enum_id: Some(enum_id),
                    enum_code: Some(code),
                    legacy_enum_key: rng.chance(10),
                }
            })
            .collect(),
    }];
    if rng.chance(70) {
        let (enum_id, code) = rng.pick(&[(2001, "WORK"), (2002, "PRIV")]);
        fields.push(FakeField {
            id: EMAIL_FIELD_ID,
            name: "Email",
            code: Some("EMAIL"),
            field_type: "multitext",
            values: vec![FakeFieldValue {
                value: json!(format!("contact{i}@example.ru")),
                enum_id: Some(enum_id),
                enum_code: Some(code),
                legacy_enum_key: false,
            }],
        });
    }
    if rng.chance(50) {
        fields.push(FakeField {
            id: POSITION_FIELD_ID,
            name: "Должность",
            code: Some("POSITION"),
            field_type: "text",
            values: vec![value(json!(rng.pick(&POSITIONS)))],
        });
    }
    if rng.chance(40) {
        let budget = 1_000 * (1 + rng.below(500));
        fields.push(FakeField {
            id: BUDGET_FIELD_ID,
            name: "Бюджет",
            code: None,
            field_type: "numeric",
            // amoCRM usually sends numbers as strings, but not always.
            values: vec![value(if rng.chance(80) {
                json!(budget.to_string())
            } else {
                json!(budget)
            })],
        });
    }
    if rng.chance(40) {
        let (enum_id, source) = rng.pick(&SOURCES);
        fields.push(FakeField {
            id: SOURCE_FIELD_ID,
            name: "Источник",
            code: None,
            field_type: "select",
            values: vec![FakeFieldValue {
                value: json!(source),
                enum_id: Some(enum_id),
                enum_code: None,
                legacy_enum_key: false,
            }],
        });
    }
    if rng.chance(20) {
        fields.push(FakeField {
            id: VIP_FIELD_ID,
            name: "VIP",
            code: None,
            field_type: "checkbox",
            values: vec![value(json!(true))],
        });
    }
    if rng.chance(25) {
        fields.push(FakeField {
            id: BIRTHDAY_FIELD_ID,
            name: "День рождения",
            code: None,
            field_type: "birthday",
            values: vec![value(json!(315_532_800 + rng.below(900_000_000)))],
        });
    }
    fields
}

impl FakeContact {
    /// Whether amoCRM's `query` finds this contact: a substring of its names or field values.
    pub fn matches_search(&self, needle_lowercase: &str) -> bool {
        self.search_text.contains(needle_lowercase)
    }

    /// Rebuilds the searched text after a change.
    pub fn reindex(&mut self) {
        let field_texts = self
            .custom_fields
            .iter()
            .flatten()
            .flat_map(|f| f.values.iter())
            .map(|v| match &v.value {
                Value::String(s) => s.to_lowercase(),
                other => other.to_string(),
            });
        let names = [
            self.name.as_str(),
            self.first_name.as_deref().unwrap_or(""),
            self.last_name.as_deref().unwrap_or(""),
        ]
        .into_iter()
        .map(str::to_lowercase);
        // A separator no search contains keeps a match inside one value.
        self.search_text = names.chain(field_texts).collect::<Vec<_>>().join("\u{0}");
    }

    /// The values of one custom field, as the strings a filter compares with.
    pub fn field_values(&self, field_id: u64) -> Vec<String> {
        self.custom_fields
            .iter()
            .flatten()
            .filter(|f| f.id == field_id)
            .flat_map(|f| f.values.iter())
            .map(|v| match &v.value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect()
    }

    /// The contact as amoCRM writes it, embedding the relations named in `with`.
    pub fn to_json(&self, with: &HashSet<String>, base_url: &str) -> Value {
        let mut c = Map::new();
        c.insert("id".into(), json!(self.id));
        c.insert("name".into(), json!(self.name));
        if let Some(first) = &self.first_name {
            c.insert("first_name".into(), json!(first));
        }
        if let Some(last) = &self.last_name {
            c.insert("last_name".into(), json!(last));
        }
        c.insert(
            "responsible_user_id".into(),
            json!(self.responsible_user_id),
        );
        c.insert("group_id".into(), json!(self.group_id));
        c.insert("created_by".into(), json!(self.created_by));
        c.insert("updated_by".into(), json!(self.updated_by));
        c.insert("created_at".into(), json!(self.created_at));
        c.insert("updated_at".into(), json!(self.updated_at));
        c.insert("closest_task_at".into(), json!(self.closest_task_at));
        if let Some(deleted) = self.is_deleted {
            c.insert("is_deleted".into(), json!(deleted));
        }
        c.insert(
            "custom_fields_values".into(),
            match &self.custom_fields {
                None => Value::Null,
                Some(fields) => fields.iter().map(FakeField::to_json).collect(),
            },
        );
        c.insert("account_id".into(), json!(ACCOUNT_ID));
        c.insert(
            "_links".into(),
            json!({ "self": { "href": format!("{base_url}/api/v4/contacts/{}", self.id) } }),
        );
        let mut embedded = Map::new();
        embedded.insert(
            "tags".into(),
            self.tags
                .iter()
                .map(|(id, name)| json!({ "id": id, "name": name, "color": null }))
                .collect(),
        );
        embedded.insert(
            "companies".into(),
            self.company_id
                .iter()
                .map(|id| {
                    json!({ "id": id, "_links": { "self": {
                        "href": format!("{base_url}/api/v4/companies/{id}") } } })
                })
                .collect(),
        );
        if with.contains("leads") {
            embedded.insert("leads".into(), ids_json(&self.lead_ids, base_url, "leads"));
        }
        if with.contains("customers") {
            embedded.insert(
                "customers".into(),
                ids_json(&self.customer_ids, base_url, "customers"),
            );
        }
        if with.contains("catalog_elements") {
            embedded.insert(
                "catalog_elements".into(),
                self.catalog_elements
                    .iter()
                    .map(|e| {
                        json!({
                            "id": e.id,
                            "metadata": { "quantity": e.quantity, "catalog_id": e.catalog_id,
                                          "price_id": e.price_id },
                            "quantity": e.quantity,
                            "catalog_id": e.catalog_id,
                            "price_id": e.price_id,
                        })
                    })
                    .collect(),
            );
        }
        c.insert("_embedded".into(), Value::Object(embedded));
        Value::Object(c)
    }
}

fn ids_json(ids: &[u64], base_url: &str, entity: &str) -> Value {
    ids.iter()
        .map(|id| {
            json!({ "id": id, "_links": { "self": {
                "href": format!("{base_url}/api/v4/{entity}/{id}") } } })
        })
        .collect()
}

impl FakeField {
    fn to_json(&self) -> Value {
        json!({
            "field_id": self.id,
            "field_name": self.name,
            "field_code": self.code,
            "field_type": self.field_type,
            "values": self.values.iter().map(|v| {
                let mut value = Map::new();
                value.insert("value".into(), v.value.clone());
                if let Some(enum_id) = v.enum_id {
                    value.insert("enum_id".into(), json!(enum_id));
                }
                if let Some(code) = v.enum_code {
                    let key = if v.legacy_enum_key { "enum" } else { "enum_code" };
                    value.insert(key.into(), json!(code));
                }
                Value::Object(value)
            }).collect::<Vec<_>>(),
        })
    }
}
