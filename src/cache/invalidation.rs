//! What changed upstream, and what that voids: the one place a webhook's events (or an
//! operator's purge) become cache invalidations.

use crate::amocrm::webhook::{Entity, WebhookEvent};
use crate::amocrm::{ContactId, EntityKind, Relation};

/// What changed upstream, from a webhook or an operator's purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Invalidation {
    /// Forget everything.
    All,
    /// A contact changed: any list may now include or exclude it, so every contact page of
    /// every scope goes, and with them the responses built from them.
    Contact(ContactId),
    /// Links to this relation were added or removed: pages that embed it go.
    Relation(Relation),
    /// A linked entity changed: what is cached about it goes.
    Entity(EntityKind, u64),
}

impl Invalidation {
    /// The fewest invalidations that cover `events`: each entity once, and nothing that one
    /// contact event (which drops every contact page) already covers.
    pub fn for_events(events: &[WebhookEvent]) -> Vec<Invalidation> {
        let mut invalidations: Vec<Invalidation> = Vec::new();
        for event in events {
            // Adding, deleting or restoring a lead or customer changes which ids the contacts
            // linked to it embed; any event about it changes what is cached about it.
            let links_change = matches!(event.action.as_str(), "add" | "delete" | "restore");
            match event.entity {
                Entity::Contact(id) => invalidations.push(Invalidation::Contact(id)),
                Entity::Lead(id) => {
                    invalidations.push(Invalidation::Entity(EntityKind::Lead, id));
                    if links_change {
                        invalidations.push(Invalidation::Relation(Relation::Leads));
                    }
                }
                Entity::Customer(id) => {
                    invalidations.push(Invalidation::Entity(EntityKind::Customer, id));
                    if links_change {
                        invalidations.push(Invalidation::Relation(Relation::Customers));
                    }
                }
                Entity::Company(id) => {
                    invalidations.push(Invalidation::Entity(EntityKind::Company, id))
                }
                Entity::Other => {}
            }
        }
        Self::coalesce(invalidations)
    }

    /// The fewest invalidations that cover `invalidations`: each once, nothing beside
    /// `All`, and nothing that one contact invalidation (which drops every contact page)
    /// already covers.
    pub fn coalesce(mut invalidations: Vec<Invalidation>) -> Vec<Invalidation> {
        if invalidations.contains(&Invalidation::All) {
            return vec![Invalidation::All];
        }
        invalidations.sort_by_cached_key(|i| format!("{i:?}"));
        invalidations.dedup();
        // One contact event already drops every contact page.
        if let Some(contact) = invalidations
            .iter()
            .find(|i| matches!(i, Invalidation::Contact(_)))
            .copied()
        {
            invalidations
                .retain(|i| !matches!(i, Invalidation::Contact(_) | Invalidation::Relation(_)));
            invalidations.push(contact);
        }
        invalidations
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(entity: Entity, action: &str) -> WebhookEvent {
        WebhookEvent {
            entity,
            action: action.to_owned(),
        }
    }

    #[test]
    fn a_contact_event_covers_every_relation_and_other_contact() {
        let events = [
            event(Entity::Lead(7), "add"),
            event(Entity::Contact(ContactId::new(1)), "update"),
            event(Entity::Contact(ContactId::new(2)), "update"),
            event(Entity::Company(3), "update"),
        ];
        let invalidations = Invalidation::for_events(&events);
        assert_eq!(invalidations.len(), 3, "{invalidations:?}");
        assert!(invalidations.contains(&Invalidation::Entity(EntityKind::Lead, 7)));
        assert!(invalidations.contains(&Invalidation::Entity(EntityKind::Company, 3)));
        assert!(matches!(
            invalidations.last(),
            Some(Invalidation::Contact(_))
        ));
    }

    #[test]
    fn only_link_changes_drop_embedding_pages() {
        let update = Invalidation::for_events(&[event(Entity::Customer(5), "update")]);
        assert_eq!(update, [Invalidation::Entity(EntityKind::Customer, 5)]);
        let added = Invalidation::for_events(&[
            event(Entity::Customer(5), "add"),
            event(Entity::Customer(5), "update"),
            event(Entity::Other, "add"),
        ]);
        assert_eq!(added.len(), 2, "{added:?}");
        assert!(added.contains(&Invalidation::Relation(Relation::Customers)));
    }

    #[test]
    fn coalescing_keeps_all_alone_and_each_entity_once() {
        let lead = Invalidation::Entity(EntityKind::Lead, 7);
        let all = Invalidation::coalesce(vec![lead, Invalidation::All, lead]);
        assert_eq!(all, [Invalidation::All]);
        let leads = Invalidation::coalesce(vec![
            lead,
            Invalidation::Relation(Relation::Leads),
            lead,
            Invalidation::Relation(Relation::Leads),
        ]);
        assert_eq!(leads.len(), 2, "{leads:?}");
    }
}
