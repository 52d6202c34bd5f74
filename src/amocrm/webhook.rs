//! amoCRM's webhook bodies: `application/x-www-form-urlencoded`, such as
//! `contacts[update][0][id]=123&contacts[update][0][name]=…&account[subdomain]=…`.
//!
//! Requests are not signed (a secret in the URL guards them) and deliveries get lost, so they
//! are a hint to drop cached data early, never the only way it expires.

use std::collections::BTreeMap;

use super::ContactId;

/// The entity an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Contact(ContactId),
    Company(u64),
    Lead(u64),
    Customer(u64),
    /// Tasks, catalogs and anything else the gateway does not cache.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    pub entity: Entity,
    /// `add`, `update`, `delete`, `restore`, `responsible`, `note`, `status`, ...
    pub action: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the body names no entity id (expected fields such as contacts[update][0][id]=123)")]
pub struct NoEntityId;

/// `(entity, action, index)` of one event in the body.
type EventKey = (String, String, String);
/// The fields of one event that matter: its id and its `type`.
type EventFields = (Option<u64>, Option<String>);

/// Parses a webhook body into its events. A body from which no event with a numeric id can be
/// read is refused.
pub fn parse(body: &[u8]) -> Result<Vec<WebhookEvent>, NoEntityId> {
    let mut events: BTreeMap<EventKey, EventFields> = BTreeMap::new();
    for (key, value) in url::form_urlencoded::parse(body) {
        let Some((entity, rest)) = key.split_once('[') else {
            continue;
        };
        let path: Vec<&str> = rest
            .split('[')
            .map(|part| part.strip_suffix(']').unwrap_or(part))
            .collect();
        let [action, index, field, ..] = path.as_slice() else {
            continue;
        };
        let event = events
            .entry((entity.to_owned(), (*action).to_owned(), (*index).to_owned()))
            .or_default();
        match *field {
            "id" => event.0 = value.trim().parse().ok(),
            "type" => event.1 = Some(value.into_owned()),
            _ => {}
        }
    }
    let events: Vec<WebhookEvent> = events
        .into_iter()
        .filter_map(|((entity, action, _), (id, kind))| {
            let id = id?;
            let entity = match entity.as_str() {
                // Older hooks report company events as contact events of type `company`.
                "contacts" if kind.as_deref() == Some("company") => Entity::Company(id),
                "contacts" => Entity::Contact(ContactId::new(id)),
                "companies" => Entity::Company(id),
                "leads" => Entity::Lead(id),
                "customers" => Entity::Customer(id),
                _ => Entity::Other,
            };
            Some(WebhookEvent { entity, action })
        })
        .collect();
    if events.is_empty() {
        return Err(NoEntityId);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        /// Any body: events or a refusal, never a panic.
        #[test]
        fn fuzz_webhook_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&body);
        }

        /// Bodies shaped like amoCRM's: every readable id becomes an event.
        #[test]
        fn fuzz_webhook_forms(fields in proptest::collection::vec(
            ("(contacts|leads|companies|customers|tasks|x)", "(add|update|delete|\\[|)", "[0-9]{0,3}", "(id|type|name|\\]\\[)", ".{0,12}"),
            0..12,
        )) {
            let body: String = fields
                .iter()
                .map(|(entity, action, index, field, value)| {
                    let value: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
                    format!("{entity}[{action}][{index}][{field}]={value}&")
                })
                .collect();
            if let Ok(events) = parse(body.as_bytes()) {
                prop_assert!(!events.is_empty());
            }
        }
    }

    use super::*;

    #[test]
    fn reads_every_entity_and_the_company_type() {
        let body = b"contacts%5Bupdate%5D%5B0%5D%5Bid%5D=123&contacts[update][0][name]=A\
            &contacts[add][0][id]=5&contacts[add][0][type]=company\
            &leads[status][0][id]=7&customers[delete][1][id]=8&tasks[add][0][id]=9\
            &account[id]=1&account[subdomain]=example";
        let mut entities: Vec<Entity> = parse(body)
            .expect("events")
            .into_iter()
            .map(|e| e.entity)
            .collect();
        entities.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(
            entities,
            vec![
                Entity::Company(5),
                Entity::Contact(ContactId::new(123)),
                Entity::Customer(8),
                Entity::Lead(7),
                Entity::Other
            ]
        );
    }

    #[test]
    fn a_body_without_ids_is_refused() {
        for body in [
            &b""[..],
            b"account[id]=1",
            b"contacts[update][0][id]=abc",
            b"\xff\xfe",
            b"[[[=]]]",
        ] {
            assert_eq!(parse(body), Err(NoEntityId), "{body:?}");
        }
    }
}
