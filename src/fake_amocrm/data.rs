//! The fake's deterministic dataset and how it renders as amoCRM JSON.
//!
//! Written from the fake's own definitions, never through the client's types: a field the
//! client misspells must fail the tests, not be misspelled the same way on both sides.
//!
//! It writes the shapes real accounts send where they differ from the documentation's table:
//! catalog links nested in `metadata` (some without `price_id`, quantities as float literals),
//! object values (legal entities, files), chained lists (entries without `value`), smart
//! addresses, dates before 1970, `enum_code: null`, relations left out, `tags: null`, null
//! first names, keys the documentation does not list, and ids beyond 2^31.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use super::fields::{
    ADDRESS_FIELD_ID, BIRTHDAY_FIELD_ID, BUDGET_FIELD_ID, CONTRACT_FIELD_ID, EMAIL_FIELD_ID,
    LAST_VISIT_FIELD_ID, LEGAL_ENTITY_FIELD_ID, MODEL_FIELD_ID, PHONE_FIELD_ID, POSITION_FIELD_ID,
    SOURCE_FIELD_ID, UTM_SOURCE_FIELD_ID, VIP_FIELD_ID,
};

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

/// The account's tags: the dataset's, then those writes created by name.
#[derive(Debug)]
pub(super) struct TagRegistry(Vec<(u64, String)>);

impl Default for TagRegistry {
    fn default() -> Self {
        TagRegistry(
            TAGS.iter()
                .map(|(id, name)| (*id, (*name).to_owned()))
                .collect(),
        )
    }
}

impl TagRegistry {
    pub(super) fn by_id(&self, id: u64) -> Option<(u64, String)> {
        self.0.iter().find(|(tag, _)| *tag == id).cloned()
    }

    pub(super) fn by_name(&self, name: &str) -> Option<(u64, String)> {
        self.0.iter().find(|(_, tag)| tag == name).cloned()
    }

    /// The tag called `name`, created if the account has none: amoCRM creates tags on write.
    pub(super) fn named(&mut self, name: &str) -> (u64, String) {
        if let Some(tag) = self.by_name(name) {
            return tag;
        }
        let id = self.0.iter().map(|(id, _)| *id).max().unwrap_or(0) + 1;
        self.0.push((id, name.to_owned()));
        (id, name.to_owned())
    }
}

const POSITIONS: [&str; 5] = ["Директор", "Менеджер", "CTO", "Бухгалтер", "Закупщик"];
const SOURCES: [(u64, &str); 3] = [(3001, "Сайт"), (3002, "Реклама"), (3003, "Звонок")];

/// The catalogs elements are linked from: goods, and services. The services catalog was
/// created later, and its element ids are beyond 2^31.
pub const GOODS_CATALOG_ID: u64 = 1_001;
pub const SERVICES_CATALOG_ID: u64 = 1_002;
const SERVICES_FIRST_ID: u64 = 2_200_000_000;

#[derive(Debug, Clone)]
pub struct FakeContact {
    pub id: u64,
    pub name: String,
    /// `None`: `null` for contacts with an even id, else the key is left out, as amoCRM
    /// sometimes does.
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
    pub tags: Vec<(u64, String)>,
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

/// One entry of a field's `values`: `{value, enum_id, enum_code}` (with `enum_code: null`
/// beside an `enum_id` that has no code), or an entry of its own shape.
#[derive(Debug, Clone)]
pub struct FakeFieldValue {
    /// What searches and filters compare with; null for entries without a `value`.
    pub value: Value,
    pub enum_id: Option<u64>,
    pub enum_code: Option<&'static str>,
    /// Write the code under the legacy key `enum` instead of `enum_code`.
    pub legacy_enum_key: bool,
    /// Written as it is instead, for entries that are not `{value, ...}`: a chained list's
    /// `{catalog_id, catalog_element_id}`.
    pub entry: Option<Value>,
}

impl FakeFieldValue {
    /// Just a `value`, as text, numeric, date and object fields have.
    pub(super) fn plain(value: Value) -> Self {
        FakeFieldValue {
            value,
            enum_id: None,
            enum_code: None,
            legacy_enum_key: false,
            entry: None,
        }
    }
}

/// A catalog element linked to a contact: written as amoCRM does, with everything but the id
/// nested in `metadata`.
#[derive(Debug, Clone)]
pub struct FakeCatalogLink {
    pub id: u64,
    pub catalog_id: u64,
    pub quantity: Value,
    /// `None`: the key is left out.
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
                    tags.into_iter()
                        .map(|(id, name)| (id, name.to_owned()))
                        .collect()
                },
                company_id: rng.chance(50).then(|| 9_000_000 + i % 300),
                lead_ids: (0..rng.below(4)).map(|k| 20_000_000 + i * 3 + k).collect(),
                customer_ids: (0..rng.below(3)).map(|k| 30_000_000 + i * 2 + k).collect(),
                catalog_elements: (0..rng.below(3))
                    .map(|k| {
                        let catalog_id = rng.pick(&[GOODS_CATALOG_ID, SERVICES_CATALOG_ID]);
                        let first_id = match catalog_id {
                            GOODS_CATALOG_ID => 40_000_000,
                            _ => SERVICES_FIRST_ID,
                        };
                        FakeCatalogLink {
                            id: first_id + i * 3 + k,
                            catalog_id,
                            // Whole quantities come as float literals (`1.0`) from most
                            // accounts, as integers from some.
                            quantity: if rng.chance(50) {
                                let whole = rng.below(10) + 1;
                                if whole.is_multiple_of(2) {
                                    json!(whole)
                                } else {
                                    json!(whole as f64)
                                }
                            } else {
                                json!(0.5 + rng.below(10) as f64)
                            },
                            price_id: rng.chance(70).then_some(500_001),
                        }
                    })
                    .collect(),
                search_text: String::new(),
            }
        })
        .map(|mut contact| {
            // From a generator of its own, so that the fields added for real shapes leave the
            // rest of the data as it was.
            let mut rng = Rng(0x5EED_5A9E_0000_0002 ^ contact.id);
            if contact.custom_fields.is_some() {
                let more = real_shaped_fields(&mut rng, &contact);
                contact.custom_fields.get_or_insert_default().extend(more);
            }
            contact.reindex();
            contact
        })
        .collect()
}

/// Fields whose values are more than a string: objects, Unix seconds, parts, entries without
/// `value`, a newer field type.
fn real_shaped_fields(rng: &mut Rng, contact: &FakeContact) -> Vec<FakeField> {
    let value = FakeFieldValue::plain;
    let mut fields = Vec::new();
    let n = contact.id;
    if rng.chance(10) {
        fields.push(FakeField {
            id: LEGAL_ENTITY_FIELD_ID,
            name: "Юр. лицо",
            code: None,
            field_type: "legal_entity",
            values: vec![value(json!({
                "name": format!(
                    "ООО «{}»",
                    rng.pick(&["Ромашка", "Вектор", "СтройИнвест", "Альфа-Трейд", "Северный ветер"])
                ),
                "entity_type": rng.pick(&[1, 2]),
                "vat_id": format!("77{:08}", n % 100_000_000),
                "kpp": if rng.chance(50) { json!("770101001") } else { Value::Null },
                "tax_registration_reason_code": null,
                "address": "г. Москва, ул. Тверская, д. 1",
                "external_uid": null,
            }))],
        });
    }
    if rng.chance(15) {
        let parts: &[(u64, &'static str, &str)] = &[
            (1, "address_line_1", "ул. Ленина, д. 5"),
            (3, "city", rng.pick(&["Москва", "Казань", "Новосибирск"])),
            (5, "zip", "101000"),
            (6, "country", "RU"),
        ];
        fields.push(FakeField {
            id: ADDRESS_FIELD_ID,
            name: "Адрес",
            code: None,
            field_type: "smart_address",
            values: parts
                .iter()
                .map(|(enum_id, code, text)| FakeFieldValue {
                    enum_id: Some(*enum_id),
                    enum_code: Some(code),
                    ..value(json!(text))
                })
                .collect(),
        });
    }
    if let Some(link) = contact.catalog_elements.first().filter(|_| rng.chance(60)) {
        fields.push(FakeField {
            id: MODEL_FIELD_ID,
            name: "Модель",
            code: None,
            field_type: "chained_list",
            values: vec![FakeFieldValue {
                entry: Some(
                    json!({ "catalog_id": link.catalog_id, "catalog_element_id": link.id }),
                ),
                ..value(Value::Null)
            }],
        });
    }
    if rng.chance(5) {
        fields.push(FakeField {
            id: CONTRACT_FIELD_ID,
            name: "Договор",
            code: None,
            field_type: "file",
            values: vec![value(json!({
                "file_uuid": format!("6f1c2a9e-0000-4000-8000-{n:012}"),
                "version_uuid": format!("0b7d1e44-0000-4000-8000-{n:012}"),
                "file_name": format!("dogovor-{n}.pdf"),
                "file_size": 20_000 + rng.below(500_000),
                "is_deleted": false,
            }))],
        });
    }
    if rng.chance(15) {
        fields.push(FakeField {
            id: LAST_VISIT_FIELD_ID,
            name: "Последний визит",
            code: None,
            field_type: "date_time",
            values: vec![value(json!(1_700_000_000 + rng.below(30_000_000)))],
        });
    }
    if rng.chance(10) {
        fields.push(FakeField {
            id: UTM_SOURCE_FIELD_ID,
            name: "utm_source",
            code: Some("UTM_SOURCE"),
            field_type: "tracking_data",
            values: vec![value(json!(rng.pick(&["yandex", "google", "vk"])))],
        });
    }
    fields
}

fn custom_fields(rng: &mut Rng, i: u64) -> Vec<FakeField> {
    let value = FakeFieldValue::plain;
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
                    entry: None,
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
                entry: None,
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
                entry: None,
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
            // Local midnights, some before 1970 (negative).
            values: vec![value(json!(
                -631_152_000 + 86_400 * rng.below(18_000) as i64 - 10_800
            ))],
        });
    }
    fields
}

impl FakeContact {
    /// A contact created through the API: nothing linked, no fields or tags yet, searchable
    /// once its writer calls [`FakeContact::reindex`].
    pub(super) fn created(id: u64, responsible_user_id: u64, author: u64, now: i64) -> Self {
        FakeContact {
            id,
            name: String::new(),
            first_name: None,
            last_name: None,
            responsible_user_id,
            group_id: if responsible_user_id.is_multiple_of(2) {
                0
            } else {
                1_201
            },
            created_by: author,
            updated_by: author,
            created_at: now,
            updated_at: now,
            closest_task_at: None,
            is_deleted: Some(false),
            custom_fields: None,
            tags: Vec::new(),
            company_id: None,
            lead_ids: Vec::new(),
            customer_ids: Vec::new(),
            catalog_elements: Vec::new(),
            search_text: String::new(),
        }
    }

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
        // amoCRM leaves names out or writes null.
        let absent_as_null = self.id.is_multiple_of(2);
        for (key, name) in [
            ("first_name", &self.first_name),
            ("last_name", &self.last_name),
        ] {
            match name {
                Some(name) => {
                    c.insert(key.into(), json!(name));
                }
                None if absent_as_null => {
                    c.insert(key.into(), Value::Null);
                }
                None => {}
            }
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
        // Keys the documentation does not list.
        c.insert("is_unsorted".into(), json!(false));
        c.insert(
            "_links".into(),
            json!({ "self": { "href": format!("{base_url}/api/v4/contacts/{}", self.id) } }),
        );
        let mut embedded = Map::new();
        // Empty lists come as `[]`, as null or not at all; a contact without tags or company
        // and asked for nothing has `_embedded: {}`.
        match (self.tags.is_empty(), self.id % 3) {
            (true, 0) => {
                embedded.insert("tags".into(), Value::Null);
            }
            (true, 1) => {}
            _ => {
                embedded.insert(
                    "tags".into(),
                    self.tags
                        .iter()
                        .map(|(id, name)| json!({ "id": id, "name": name, "color": null }))
                        .collect(),
                );
            }
        }
        if self.company_id.is_some() || self.id % 2 == 1 {
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
        }
        if with.contains("leads") {
            embedded.insert("leads".into(), ids_json(&self.lead_ids, base_url, "leads"));
        }
        // Kommo leaves `customers` out even when asked for; here, when there are none.
        if with.contains("customers") && !self.customer_ids.is_empty() {
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
                        let mut metadata = Map::new();
                        metadata.insert("quantity".into(), e.quantity.clone());
                        metadata.insert("catalog_id".into(), json!(e.catalog_id));
                        if let Some(price_id) = e.price_id {
                            metadata.insert("price_id".into(), json!(price_id));
                        }
                        json!({ "id": e.id, "metadata": metadata })
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
                if let Some(entry) = &v.entry {
                    return entry.clone();
                }
                let mut value = Map::new();
                value.insert("value".into(), v.value.clone());
                if let Some(enum_id) = v.enum_id {
                    value.insert("enum_id".into(), json!(enum_id));
                }
                match v.enum_code {
                    Some(code) => {
                        let key = if v.legacy_enum_key { "enum" } else { "enum_code" };
                        value.insert(key.into(), json!(code));
                    }
                    // A select's option without a code.
                    None if v.enum_id.is_some() => {
                        value.insert("enum_code".into(), Value::Null);
                    }
                    None => {}
                }
                Value::Object(value)
            }).collect::<Vec<_>>(),
        })
    }
}
