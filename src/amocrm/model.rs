//! What the gateway keeps of amoCRM's HAL JSON, decoded tolerantly.
//!
//! Only `id` is certain to be present (see the shared API reference): a missing boolean is false,
//! a missing string empty, a missing list empty, a value of the wrong type is treated as missing,
//! and unknown fields are ignored. One contact without a usable `id` is dropped (and logged)
//! rather than failing its page.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::AmoError;

/// An amoCRM contact id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContactId(u64);

impl ContactId {
    pub fn new(id: u64) -> Self {
        ContactId(id)
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for ContactId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One upstream page of contacts. Serializable for the shared cache tier, which keeps it in
/// Redis as MessagePack; the heap estimate is recounted after decoding, not stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContactsPage {
    pub contacts: Vec<Arc<Contact>>,
    /// Whether amoCRM linked a next page. It sometimes does when the next page is empty, so this
    /// is a hint, not a promise.
    pub has_next_link: bool,
    /// An estimate of the heap the decoded page occupies, for weighing it in a cache.
    #[serde(skip)]
    pub heap_bytes: usize,
    /// A hash of the body: equal bodies mean an unchanged page.
    pub content_hash: u64,
    /// When amoCRM answered, in Unix seconds by its own clock (its `Date` header).
    pub upstream_time: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    pub id: ContactId,
    pub name: String,
    pub first_name: String,
    pub last_name: String,
    pub responsible_user_id: u64,
    pub group_id: u64,
    pub created_by: u64,
    pub updated_by: u64,
    /// Unix seconds, as amoCRM sends them.
    pub created_at: i64,
    pub updated_at: i64,
    pub closest_task_at: Option<i64>,
    pub is_deleted: bool,
    pub account_id: u64,
    pub custom_fields_values: Vec<CustomFieldValue>,
    pub tags: Vec<Tag>,
    pub companies: Vec<EntityRef>,
    pub leads: Vec<EntityRef>,
    pub customers: Vec<EntityRef>,
    pub catalog_elements: Vec<CatalogElementRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomFieldValue {
    pub field_id: u64,
    pub field_name: Option<String>,
    pub field_code: Option<String>,
    pub field_type: Option<String>,
    pub values: Vec<CustomFieldValueItem>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomFieldValueItem {
    /// Usually a string, but numbers, booleans and objects occur depending on the field type.
    pub value: Value,
    pub enum_id: Option<u64>,
    pub enum_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tag {
    pub id: u64,
    pub name: String,
    pub color: Option<String>,
}

/// A linked entity that amoCRM embeds as just its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityRef {
    pub id: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogElementRef {
    pub id: u64,
    pub catalog_id: u64,
    pub quantity: Option<f64>,
    pub price_id: Option<u64>,
    pub metadata: Option<Value>,
}

/// The list under `_embedded.<key>` of a HAL body (empty when absent), and whether amoCRM
/// linked a next page.
pub(super) fn hal_list<'a>(body: &'a Value, key: &str) -> Result<(&'a [Value], bool), AmoError> {
    let root = body
        .as_object()
        .ok_or_else(|| AmoError::Decode("the body is not a JSON object".to_owned()))?;
    let embedded = root
        .get("_embedded")
        .and_then(Value::as_object)
        .ok_or_else(|| AmoError::Decode("the body has no `_embedded` object".to_owned()))?;
    let items = match embedded.get(key) {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(items)) => items.as_slice(),
        Some(_) => return Err(AmoError::Decode(format!("`_embedded.{key}` is not a list"))),
    };
    let has_next_link = root
        .get("_links")
        .and_then(|links| links.get("next"))
        .and_then(|next| next.get("href"))
        .is_some_and(Value::is_string);
    Ok((items, has_next_link))
}

/// Decodes a 200 body of `GET /api/v4/contacts`.
pub fn decode_contacts_page(body: &[u8]) -> Result<ContactsPage, AmoError> {
    let root: Value = serde_json::from_slice(body)
        .map_err(|e| AmoError::Decode(format!("the body is not JSON ({e})")))?;
    let (items, has_next_link) = hal_list(&root, "contacts")?;
    let contacts: Vec<Arc<Contact>> = tight(items.iter().filter_map(|item| {
        let contact = item.as_object().and_then(decode_contact);
        if contact.is_none() {
            tracing::warn!("skipping a contact without a usable id in an amoCRM page");
        }
        contact.map(Arc::new)
    }));
    let heap_bytes = ContactsPage::heap_of(&contacts);
    Ok(ContactsPage {
        contacts,
        has_next_link,
        heap_bytes,
        content_hash: {
            use std::hash::{DefaultHasher, Hasher};
            let mut hasher = DefaultHasher::new();
            hasher.write(body);
            hasher.finish()
        },
        upstream_time: 0,
    })
}

impl ContactsPage {
    fn heap_of(contacts: &Vec<Arc<Contact>>) -> usize {
        contacts.iter().map(|c| c.heap_bytes()).sum::<usize>()
            + contacts.capacity() * std::mem::size_of::<Arc<Contact>>()
    }

    /// Recounts `heap_bytes`, which is not serialized, after decoding a stored page.
    pub fn recount_heap(&mut self) {
        self.contacts.shrink_to_fit();
        self.heap_bytes = Self::heap_of(&self.contacts);
    }
}

impl Contact {
    /// What this contact occupies on the heap, its own allocation included: every allocation
    /// is counted at its capacity plus the allocator's bookkeeping, so that a cache weighing
    /// pages by this stays within its memory budget.
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let mut heap = Heap(0);
        heap.alloc(size_of::<Contact>() + 2 * size_of::<usize>()); // the Arc around it
        for s in [&self.name, &self.first_name, &self.last_name] {
            heap.string(s);
        }
        heap.0 += custom_fields_heap_bytes(&self.custom_fields_values);
        heap.vec(&self.tags);
        for tag in &self.tags {
            heap.string(&tag.name);
            if let Some(color) = &tag.color {
                heap.string(color);
            }
        }
        heap.vec(&self.companies);
        heap.vec(&self.leads);
        heap.vec(&self.customers);
        heap.vec(&self.catalog_elements);
        for element in &self.catalog_elements {
            if let Some(metadata) = &element.metadata {
                heap.json(metadata);
            }
        }
        heap.0
    }
}

/// The heap that decoded custom field values occupy, the vector itself included.
pub(super) fn custom_fields_heap_bytes(fields: &Vec<CustomFieldValue>) -> usize {
    let mut heap = Heap(0);
    heap.vec(fields);
    for field in fields {
        for s in [&field.field_name, &field.field_code, &field.field_type]
            .into_iter()
            .flatten()
        {
            heap.string(s);
        }
        heap.vec(&field.values);
        for value in &field.values {
            heap.json(&value.value);
            if let Some(code) = &value.enum_code {
                heap.string(code);
            }
        }
    }
    heap.0
}

/// Counts heap bytes, allocation by allocation.
struct Heap(usize);

impl Heap {
    /// Size-class rounding and headers: what an allocator spends on each allocation, on average,
    /// besides the bytes asked for (measured for glibc and jemalloc on decoded pages).
    const PER_ALLOCATION: usize = 16;

    fn alloc(&mut self, bytes: usize) {
        if bytes > 0 {
            self.0 += bytes + Self::PER_ALLOCATION;
        }
    }

    fn string(&mut self, s: &String) {
        self.alloc(s.capacity());
    }

    fn vec<T>(&mut self, v: &Vec<T>) {
        self.alloc(v.capacity() * std::mem::size_of::<T>());
    }

    fn json(&mut self, value: &Value) {
        match value {
            Value::String(s) => self.string(s),
            Value::Array(items) => {
                self.vec(items);
                items.iter().for_each(|item| self.json(item));
            }
            Value::Object(map) => {
                // A B-tree node per few entries; count each entry's share of one.
                for (key, item) in map {
                    self.string(key);
                    self.alloc(std::mem::size_of::<(String, Value)>() + 8);
                    self.json(item);
                }
            }
            _ => {}
        }
    }
}

/// Collects into a vector without spare capacity: decoded pages live long in caches.
fn tight<T>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut collected: Vec<T> = items.collect();
    collected.shrink_to_fit();
    collected
}

fn decode_contact(c: &Map<String, Value>) -> Option<Contact> {
    let id = ContactId(c.get("id").and_then(as_u64)?);
    let embedded = c.get("_embedded").and_then(Value::as_object);
    let embedded_list = |key: &str| -> &[Value] {
        embedded
            .and_then(|e| e.get(key))
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    };
    let refs = |key: &str| -> Vec<EntityRef> {
        tight(
            embedded_list(key)
                .iter()
                .filter_map(|r| r.get("id").and_then(as_u64).map(|id| EntityRef { id })),
        )
    };
    Some(Contact {
        id,
        name: string(c, "name"),
        first_name: string(c, "first_name"),
        last_name: string(c, "last_name"),
        responsible_user_id: uint(c, "responsible_user_id"),
        group_id: uint(c, "group_id"),
        created_by: uint(c, "created_by"),
        updated_by: uint(c, "updated_by"),
        created_at: int(c, "created_at").unwrap_or(0),
        updated_at: int(c, "updated_at").unwrap_or(0),
        closest_task_at: int(c, "closest_task_at"),
        is_deleted: c
            .get("is_deleted")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        account_id: uint(c, "account_id"),
        custom_fields_values: c
            .get("custom_fields_values")
            .and_then(Value::as_array)
            .map(|fields| decode_custom_fields(fields))
            .unwrap_or_default(),
        tags: tight(embedded_list("tags").iter().filter_map(|t| {
            let t = t.as_object()?;
            Some(Tag {
                id: t.get("id").and_then(as_u64)?,
                name: string(t, "name"),
                color: opt_string(t, "color"),
            })
        })),
        companies: refs("companies"),
        leads: refs("leads"),
        customers: refs("customers"),
        catalog_elements: tight(embedded_list("catalog_elements").iter().filter_map(|e| {
            let e = e.as_object()?;
            Some(CatalogElementRef {
                id: e.get("id").and_then(as_u64)?,
                catalog_id: uint(e, "catalog_id"),
                quantity: e.get("quantity").and_then(as_f64),
                price_id: e.get("price_id").and_then(as_u64),
                metadata: e.get("metadata").filter(|m| !m.is_null()).cloned(),
            })
        })),
    })
}

pub(super) fn decode_custom_fields(fields: &[Value]) -> Vec<CustomFieldValue> {
    tight(fields.iter().filter_map(decode_custom_field))
}

fn decode_custom_field(field: &Value) -> Option<CustomFieldValue> {
    let field = field.as_object()?;
    Some(CustomFieldValue {
        field_id: field.get("field_id").and_then(as_u64)?,
        field_name: opt_string(field, "field_name"),
        field_code: opt_string(field, "field_code"),
        field_type: opt_string(field, "field_type"),
        values: field
            .get("values")
            .and_then(Value::as_array)
            .map(|values| {
                tight(values.iter().filter_map(Value::as_object).map(|v| {
                    CustomFieldValueItem {
                        value: v.get("value").cloned().unwrap_or(Value::Null),
                        enum_id: v.get("enum_id").and_then(as_u64),
                        // One documentation example spells it `enum`.
                        enum_code: opt_string(v, "enum_code").or_else(|| opt_string(v, "enum")),
                    }
                }))
            })
            .unwrap_or_default(),
    })
}

/// Ids arrive as numbers, but a numeric string is accepted too.
pub(super) fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|f: &f64| f.is_finite())
}

pub(super) fn int(obj: &Map<String, Value>, key: &str) -> Option<i64> {
    match obj.get(key)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn uint(obj: &Map<String, Value>, key: &str) -> u64 {
    obj.get(key).and_then(as_u64).unwrap_or(0)
}

fn string(obj: &Map<String, Value>, key: &str) -> String {
    opt_string(obj, key).unwrap_or_default()
}

pub(super) fn opt_string(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key).and_then(Value::as_str).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("id".to_owned()),
                        Just("name".to_owned()),
                        Just("_embedded".to_owned()),
                        Just("custom_fields_values".to_owned()),
                        Just("values".to_owned()),
                        Just("catalog_elements".to_owned()),
                        Just("tags".to_owned()),
                        ".{0,8}"
                    ],
                    inner,
                    0..6,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any bytes as a body: an answer or UPSTREAM_ERROR material, never a panic.
        #[test]
        fn fuzz_upstream_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_contacts_page(&body);
            let _ = super::super::entities::decode_users(&body);
        }

        /// Any JSON where contacts belong: every contact with a usable id comes through.
        #[test]
        fn fuzz_upstream_contacts(contacts in proptest::collection::vec(json(), 0..8)) {
            let body = serde_json::json!({ "_embedded": { "contacts": contacts } }).to_string();
            let page = decode_contacts_page(body.as_bytes()).expect("a well-formed envelope decodes");
            prop_assert!(page.contacts.len() <= contacts.len());
            let entities = serde_json::json!({ "_embedded": { "leads": contacts } }).to_string();
            let _ = super::super::entities::decode_entities(super::super::EntityKind::Lead, entities.as_bytes());
        }
    }

    use super::*;

    #[test]
    fn decodes_the_documented_example_and_tolerates_odd_contacts() {
        let body = br#"{"_page":1,"_links":{"next":{"href":"x?page=2"}},"_embedded":{"contacts":[
            {"id":7143599,"name":"1","first_name":"","last_name":"","responsible_user_id":504141,
             "group_id":0,"created_by":504141,"updated_by":504141,"created_at":1585758065,
             "updated_at":1585758065,"closest_task_at":null,"custom_fields_values":null,
             "account_id":28805383,"_embedded":{"tags":[],"companies":[]}},
            {"id":"12","name":42,"is_deleted":"yes","custom_fields_values":[{"field_id":5,
             "values":[{"value":"a","enum":"WORK"},{"value":3}]},{"no_id":1}],
             "_embedded":{"catalog_elements":[{"id":1,"quantity":"1.5","catalog_id":9}]}},
            {"name":"no id"}, 17
        ]}}"#;
        let page = decode_contacts_page(body).expect("decodes");
        assert!(page.has_next_link);
        assert_eq!(page.contacts.len(), 2);
        let odd = &page.contacts[1];
        assert_eq!(odd.id, ContactId(12));
        assert_eq!(odd.name, "");
        assert!(!odd.is_deleted);
        assert_eq!(odd.custom_fields_values.len(), 1);
        assert_eq!(
            odd.custom_fields_values[0].values[0].enum_code.as_deref(),
            Some("WORK")
        );
        assert_eq!(odd.catalog_elements[0].quantity, Some(1.5));
    }

    #[test]
    fn rejects_bodies_that_are_not_a_contacts_page() {
        for body in [
            &b"<html>"[..],
            b"[]",
            b"{}",
            br#"{"_embedded":{"contacts":5}}"#,
        ] {
            assert!(matches!(
                decode_contacts_page(body),
                Err(AmoError::Decode(_))
            ));
        }
        let empty = decode_contacts_page(br#"{"_embedded":{}}"#).expect("empty is fine");
        assert!(empty.contacts.is_empty() && !empty.has_next_link);
    }
}
