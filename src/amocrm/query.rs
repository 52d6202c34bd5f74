//! [`ContactsQuery`]: a typed, normalized contacts request. Two requests that mean the same thing
//! are equal and hash alike (sets are sorted and deduplicated), which is what makes it a cache key.

use std::collections::{BTreeMap, BTreeSet};

use super::model::ContactId;

/// amoCRM's documented maximum for `limit`, and the most ids worth sending in one `filter[id]`.
pub const MAX_PAGE_SIZE: u16 = 250;
/// No maximum is documented for id filters; one full page is the most one request can return.
pub const MAX_FILTER_IDS: usize = MAX_PAGE_SIZE as usize;
/// The longest URL the gateway sends. Front proxies refuse longer request lines (414, or a
/// reset while the line is still being sent), which says nothing about amoCRM: such a request
/// is refused before it goes out. Room for the longest honest call, a batch of 250 catalog
/// element ids sent twice (`id[]` and `filter[id][]`), with a margin.
pub const MAX_URL_BYTES: usize = 32 * 1024;
/// What one list's search, filter and order may take of a URL, encoded: 250 ids of the
/// largest size, with room to spare. Paging, `with` and the account's address come on top.
pub const MAX_LIST_PARAM_BYTES: usize = 12 * 1024;

/// An upstream page size, 1..=250.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageSize(u16);

impl PageSize {
    pub const MAX: PageSize = PageSize(MAX_PAGE_SIZE);

    pub fn new(size: u64) -> Option<Self> {
        u16::try_from(size)
            .ok()
            .filter(|s| (1..=MAX_PAGE_SIZE).contains(s))
            .map(PageSize)
    }

    pub fn get(self) -> usize {
        usize::from(self.0)
    }
}

/// A relation that amoCRM only embeds when it is named in `with`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Relation {
    Leads,
    Customers,
    CatalogElements,
}

impl Relation {
    pub const ALL: [Relation; 3] = [Self::Leads, Self::Customers, Self::CatalogElements];

    /// The value amoCRM expects in `with`.
    pub fn as_with(self) -> &'static str {
        match self {
            Self::Leads => "leads",
            Self::Customers => "customers",
            Self::CatalogElements => "catalog_elements",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Self::Leads => 1,
            Self::Customers => 2,
            Self::CatalogElements => 4,
        }
    }
}

/// A set of [`Relation`]s. A bit set, so it is `Copy` and hashes in one byte.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Relations(u8);

impl Relations {
    pub const NONE: Relations = Relations(0);

    pub fn insert(&mut self, relation: Relation) {
        self.0 |= relation.bit();
    }

    pub fn contains(self, relation: Relation) -> bool {
        self.0 & relation.bit() != 0
    }

    pub fn union(self, other: Relations) -> Relations {
        Relations(self.0 | other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Relation> {
        Relation::ALL.into_iter().filter(move |r| self.contains(*r))
    }

    /// The `with` parameter value, in a fixed order; `None` when nothing is needed, because
    /// amoCRM then must receive no `with` at all.
    pub fn with_param(self) -> Option<String> {
        (!self.is_empty()).then(|| {
            self.iter()
                .map(Relation::as_with)
                .collect::<Vec<_>>()
                .join(",")
        })
    }
}

impl FromIterator<Relation> for Relations {
    fn from_iter<I: IntoIterator<Item = Relation>>(iter: I) -> Self {
        let mut set = Relations::NONE;
        iter.into_iter().for_each(|r| set.insert(r));
        set
    }
}

/// The two fields amoCRM sorts contacts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderField {
    Id,
    UpdatedAt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Asc,
    Desc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Order {
    pub field: OrderField,
    pub direction: Direction,
}

/// An inclusive range of Unix seconds; at least one end is set and `from <= to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeRange {
    from: Option<i64>,
    to: Option<i64>,
}

impl TimeRange {
    /// Whether `at` (Unix seconds) lies in the range.
    pub fn contains(&self, at: i64) -> bool {
        self.from.is_none_or(|from| at >= from) && self.to.is_none_or(|to| at <= to)
    }

    /// `None` when the range is empty of bounds or inverted; the caller names the rule broken.
    pub fn new(from: Option<i64>, to: Option<i64>) -> Option<Self> {
        match (from, to) {
            (None, None) => None,
            (Some(f), Some(t)) if f > t => None,
            _ => Some(TimeRange { from, to }),
        }
    }
}

/// What one custom field must match: one of several values, or a range (numeric and date fields).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CustomFieldCondition {
    AnyOf(BTreeSet<String>),
    Range {
        from: Option<String>,
        to: Option<String>,
    },
}

/// amoCRM's contact filters, normalized: sets are sorted and deduplicated so that equal filters
/// produce equal parameters and equal cache keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ContactFilter {
    pub ids: BTreeSet<ContactId>,
    pub names: BTreeSet<String>,
    pub responsible_user_ids: BTreeSet<u64>,
    pub created_by: BTreeSet<u64>,
    pub updated_by: BTreeSet<u64>,
    pub created_at: Option<TimeRange>,
    pub updated_at: Option<TimeRange>,
    pub closest_task_at: Option<TimeRange>,
    pub custom_fields: BTreeMap<u64, CustomFieldCondition>,
}

/// Which list: search, filter and order, without paging or relations. Everything that decides
/// which contacts appear at which offset, so a cursor fingerprints exactly this.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ContactList {
    pub search: Option<String>,
    pub filter: ContactFilter,
    pub order: Option<Order>,
}

impl ContactList {
    /// A list of exactly these contacts (the by-id lookup).
    pub fn by_ids(ids: impl IntoIterator<Item = ContactId>) -> Self {
        ContactList {
            filter: ContactFilter {
                ids: ids.into_iter().collect(),
                ..ContactFilter::default()
            },
            ..ContactList::default()
        }
    }

    /// Whether updating a contact can neither move it into or out of this list nor change its
    /// place in it: no search, filters only on what a write cannot change (ids, creation), and
    /// amoCRM's default order or the id's.
    pub fn stable_under_update(&self) -> bool {
        let f = &self.filter;
        self.search.is_none()
            && f.names.is_empty()
            && f.responsible_user_ids.is_empty()
            && f.updated_by.is_empty()
            && f.updated_at.is_none()
            && f.closest_task_at.is_none()
            && f.custom_fields.is_empty()
            && self.order.is_none_or(|order| order.field == OrderField::Id)
    }

    /// How many bytes the list's parameters take in a URL query, percent-encoded.
    pub fn encoded_len(&self) -> usize {
        encoded_len(&self.to_params())
    }

    /// The parameters that select and order the list, in a canonical order.
    pub fn to_params(&self) -> Vec<(String, String)> {
        let mut params = Vec::new();
        if let Some(search) = &self.search {
            params.push(("query".to_owned(), search.clone()));
        }
        let f = &self.filter;
        push_set(&mut params, "id", f.ids.iter().map(|id| id.get()));
        push_set(&mut params, "name", f.names.iter());
        push_set(&mut params, "responsible_user_id", &f.responsible_user_ids);
        push_set(&mut params, "created_by", &f.created_by);
        push_set(&mut params, "updated_by", &f.updated_by);
        push_range(&mut params, "created_at", f.created_at);
        push_range(&mut params, "updated_at", f.updated_at);
        push_range(&mut params, "closest_task_at", f.closest_task_at);
        for (field_id, condition) in &f.custom_fields {
            let key = format!("filter[custom_fields_values][{field_id}]");
            match condition {
                CustomFieldCondition::AnyOf(values) => {
                    params.extend(values.iter().map(|v| (format!("{key}[]"), v.clone())));
                }
                CustomFieldCondition::Range { from, to } => {
                    if let Some(from) = from {
                        params.push((format!("{key}[from]"), from.clone()));
                    }
                    if let Some(to) = to {
                        params.push((format!("{key}[to]"), to.clone()));
                    }
                }
            }
        }
        if let Some(order) = self.order {
            let field = match order.field {
                OrderField::Id => "id",
                OrderField::UpdatedAt => "updated_at",
            };
            let direction = match order.direction {
                Direction::Asc => "asc",
                Direction::Desc => "desc",
            };
            params.push((format!("order[{field}]"), direction.to_owned()));
        }
        params
    }
}

/// The length of `params` as a URL query (`k=v&k=v`), encoded as the client encodes them.
pub fn encoded_len(params: &[(String, String)]) -> usize {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
        .len()
}

fn push_set<T: ToString>(
    params: &mut Vec<(String, String)>,
    name: &str,
    values: impl IntoIterator<Item = T>,
) {
    // The array form `filter[x][]` even for one value: amoCRM reads it the same way, and one
    // spelling keeps the cache key and the fake's parser simple.
    params.extend(
        values
            .into_iter()
            .map(|v| (format!("filter[{name}][]"), v.to_string())),
    );
}

fn push_range(params: &mut Vec<(String, String)>, name: &str, range: Option<TimeRange>) {
    let Some(range) = range else { return };
    if let Some(from) = range.from {
        params.push((format!("filter[{name}][from]"), from.to_string()));
    }
    if let Some(to) = range.to {
        params.push((format!("filter[{name}][to]"), to.to_string()));
    }
}

/// One upstream page of one list, with the relations to embed: the full description of a
/// `GET /api/v4/contacts` call, and the page cache's key (with the credential scope).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContactsQuery {
    pub list: ContactList,
    /// 1-based, as amoCRM counts.
    pub page: u32,
    pub limit: PageSize,
    pub relations: Relations,
}

/// A SHA-256 digest of request parameters that two different parameter lists never share:
/// each name and value goes in with its length first. (Separators alone are not enough: a
/// filter value holding the separator could make two different lists one cache key, and one
/// caller's page another's.)
pub fn params_digest(params: &[(String, String)]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update((params.len() as u64).to_be_bytes());
    for (name, value) in params {
        for part in [name, value] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
    }
    hasher.finalize().into()
}

impl ContactsQuery {
    pub fn to_params(&self) -> Vec<(String, String)> {
        let mut params = Vec::new();
        if let Some(with) = self.relations.with_param() {
            params.push(("with".to_owned(), with));
        }
        params.push(("page".to_owned(), self.page.to_string()));
        params.push(("limit".to_owned(), self.limit.get().to_string()));
        params.extend(self.list.to_params());
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_param_is_absent_for_no_relations_and_ordered_otherwise() {
        assert_eq!(Relations::NONE.with_param(), None);
        let all: Relations = [Relation::CatalogElements, Relation::Leads]
            .into_iter()
            .collect();
        assert_eq!(all.with_param().as_deref(), Some("leads,catalog_elements"));
    }

    #[test]
    fn equal_filters_give_equal_params_whatever_the_input_order() {
        let a = ContactList::by_ids([ContactId::new(3), ContactId::new(1), ContactId::new(3)]);
        let b = ContactList::by_ids([ContactId::new(1), ContactId::new(3)]);
        assert_eq!(a, b);
        assert_eq!(
            a.to_params(),
            vec![
                ("filter[id][]".to_owned(), "1".to_owned()),
                ("filter[id][]".to_owned(), "3".to_owned())
            ]
        );
    }

    #[test]
    fn the_longest_honest_calls_fit_the_url_bounds() {
        let ids = (0..MAX_FILTER_IDS as u64).map(|i| ContactId::new(u64::MAX - i));
        assert!(ContactList::by_ids(ids).encoded_len() <= MAX_LIST_PARAM_BYTES);
        let catalog = super::super::EntityKind::CatalogElement {
            catalog_id: u64::MAX,
        };
        let ids: Vec<u64> = (0..MAX_FILTER_IDS as u64).map(|i| u64::MAX - i).collect();
        assert!(encoded_len(&catalog.id_params(&ids)) + 1024 <= MAX_URL_BYTES);
    }

    #[test]
    fn page_size_bounds() {
        assert!(PageSize::new(0).is_none());
        assert!(PageSize::new(251).is_none());
        assert_eq!(PageSize::new(250), Some(PageSize::MAX));
    }

    #[test]
    fn time_range_rejects_inverted_and_empty() {
        assert!(TimeRange::new(Some(2), Some(1)).is_none());
        assert!(TimeRange::new(None, None).is_none());
        assert!(TimeRange::new(Some(1), Some(1)).is_some());
    }

    #[test]
    fn a_separator_inside_a_value_cannot_make_two_lists_one_digest() {
        let p = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect()
        };
        // Equal under "name NUL value NUL" hashing, as the keys were built before.
        let one = p(&[("query", "x\0filter[id][]\0y")]);
        let two = p(&[("query", "x"), ("filter[id][]", "y")]);
        assert_ne!(super::params_digest(&one), super::params_digest(&two));
        assert_ne!(
            super::params_digest(&p(&[("a", "b")])),
            super::params_digest(&p(&[("ab", "")]))
        );
        assert_eq!(
            super::params_digest(&two),
            super::params_digest(&two.clone())
        );
    }
}
