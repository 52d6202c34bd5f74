//! What an operation may cost in upstream calls, known from its plan before any call: amoCRM
//! allows 7 calls a second for the whole account, so one operation must not be able to take
//! many seconds of it.

use super::selection::{Details, OperationPlan};
use crate::amocrm::MAX_FILTER_IDS;

/// Linked entities of each kind a contact is priced with. amoCRM embeds a contact's linked ids
/// with the contact, so their number is only known once its page has arrived; these are above
/// what a typical contact holds (and a contact belongs to one company at most).
const LEADS_PER_CONTACT: u64 = 2;
const CUSTOMERS_PER_CONTACT: u64 = 2;
const COMPANIES_PER_CONTACT: u64 = 1;
const CATALOG_ELEMENTS_PER_CONTACT: u64 = 2;
/// Catalog elements load per catalog: each catalog beyond the first may add one batch.
const CATALOGS: u64 = 2;

/// An operation's upstream calls, at most, by what they fetch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Price {
    /// Pages of contact lists that the `contacts` windows span (cached ones included: whether
    /// a page is cached when the operation runs is not known when it is priced).
    pub pages: u64,
    /// Batches of the `contact(id:)` fields: one per 250 ids.
    pub contact_batches: u64,
    /// Batches of linked entities, for the whole operation: one per kind per 250 ids.
    pub linked_batches: u64,
}

impl Price {
    pub fn of(plan: &OperationPlan, page_size: usize) -> Price {
        let mut price = Price::default();
        let mut contacts: u64 = 0;
        for window in plan.windows() {
            price.pages = price.pages.saturating_add(window.pages(page_size));
            contacts = contacts.saturating_add(window.len);
        }
        let ids = plan.contact_batch().0.len() as u64;
        price.contact_batches = ids.div_ceil(MAX_FILTER_IDS as u64);
        contacts = contacts.saturating_add(ids);
        price.linked_batches = linked_batches(contacts, plan.details());
        price
    }

    pub fn total(self) -> u64 {
        self.pages
            .saturating_add(self.contact_batches)
            .saturating_add(self.linked_batches)
    }
}

/// The root fields' contacts meet at the prefetch gate and load their linked entities
/// together, so the batches depend on all contacts of the operation at once.
fn linked_batches(contacts: u64, details: Details) -> u64 {
    if contacts == 0 {
        return 0;
    }
    let batches = |selected: bool, per_contact: u64| {
        if selected {
            contacts
                .saturating_mul(per_contact)
                .div_ceil(MAX_FILTER_IDS as u64)
        } else {
            0
        }
    };
    [
        batches(details.leads, LEADS_PER_CONTACT),
        batches(details.customers, CUSTOMERS_PER_CONTACT),
        batches(details.companies, COMPANIES_PER_CONTACT),
        batches(details.catalog_elements, CATALOG_ELEMENTS_PER_CONTACT).saturating_add(
            if details.catalog_elements {
                CATALOGS - 1
            } else {
                0
            },
        ),
        // The scope's users come in one call, whatever the contacts.
        u64::from(details.responsible_user),
    ]
    .into_iter()
    .fold(0, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use async_graphql::Variables;
    use async_graphql::parser::parse_query;

    use super::*;
    use crate::graphql::connection::{Cursor, ListFingerprint};

    fn price(query: &str) -> Price {
        let document = parse_query(query).expect("valid query");
        Price::of(
            &OperationPlan::new(&document, None, &Variables::default()),
            250,
        )
    }

    /// A cursor at `offset`, forged for some other list: the price only reads its offset.
    fn cursor(offset: u64) -> String {
        Cursor {
            offset,
            list: ListFingerprint::of(&Default::default()),
        }
        .encode()
    }

    const EVERY_RELATION: &str = "nodes { leads { name } customers { name } companies { name }
        catalogElements { name } responsibleUser { name } }";

    #[test]
    fn a_full_window_with_every_relation_is_its_page_and_one_batch_set() {
        let price = price(&format!(
            "{{ contacts(first: 250) {{ {EVERY_RELATION} }} }}"
        ));
        assert_eq!(
            price,
            Price {
                pages: 1,
                contact_batches: 0,
                // leads 2, customers 2, companies 1, catalog elements 2 + 1, users 1
                linked_batches: 9,
            }
        );
    }

    #[test]
    fn the_default_limit_admits_a_straddling_full_list_with_a_contact_beside_it() {
        let price = price(&format!(
            r#"{{ contacts(first: 250, after: "{}") {{ {EVERY_RELATION} }}
                  contact(id: 7) {{ leads {{ name }} }} }}"#,
            cursor(99)
        ));
        assert_eq!(price.total(), crate::graphql::DEFAULT_MAX_UPSTREAM_CALLS);
    }

    #[test]
    fn forged_cursors_price_every_page_their_windows_span() {
        let windows: String = (0..64)
            .map(|i| {
                format!(
                    r#"w{i}: contacts(first: 250, after: "{}") {{ nodes {{ id }} }} "#,
                    cursor(99)
                )
            })
            .collect();
        let price = price(&format!("{{ {windows} }}"));
        assert_eq!(price.pages, 128);
        assert_eq!(price.linked_batches, 0);
    }

    #[test]
    fn refused_arguments_cost_nothing_and_defaults_cost_one_page() {
        assert_eq!(
            price("{ contacts(first: 251) { nodes { id } } }").total(),
            0
        );
        assert_eq!(
            price(r#"{ contacts(after: "%%") { nodes { id } } }"#).total(),
            0
        );
        assert_eq!(price("{ contacts { nodes { id } } }").total(), 1);
        assert_eq!(price("{ contacts(first: 0) { nodes { id } } }").total(), 0);
    }

    #[test]
    fn contact_fields_are_one_batch_and_share_the_linked_batches() {
        let price = price(
            r#"{ a: contact(id: 1) { leads { name } } b: contact(id: "2") { leads { name } }
                 c: contacts(first: 10) { nodes { leads { name } } } }"#,
        );
        assert_eq!(
            price,
            Price {
                pages: 1,
                contact_batches: 1,
                linked_batches: 1,
            }
        );
    }
}
