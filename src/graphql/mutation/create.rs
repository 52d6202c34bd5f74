//! `createContacts`: the one write amoCRM cannot take twice safely, since a retried POST
//! creates a second contact. With an idempotency key, the outcome of each item is kept (see
//! `cache::idempotency`); an item whose POST went out but whose answer never came is looked
//! for among the contacts created since, before it is sent again.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use async_graphql::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::input::ContactCreateInput;
use super::{
    CreateContactsPayload, Services, live_changes, payload_contacts, report, valid_items,
    write_error, writer,
};
use crate::amocrm::{AmoError, ContactDraft, ContactId, WriteError};
use crate::auth::Credentials;
use crate::cache::IdempotencyError;
use crate::cache::idempotency::MAX_KEY_BYTES;
use crate::graphql::error::{ApiError, Kept};
use crate::live::ChangeKind;

/// How far back, before the first attempt, a contact created by it may be dated: amoCRM's
/// clock and ours differ.
const CLOCK_SLACK_SECONDS: i64 = 120;
/// How long after giving up on a create's answer the gateway looks for what it made: amoCRM
/// may still be working on a request whose answer the gateway stopped waiting for.
const RECONCILE_AFTER_MS: i64 = 3_000;

/// What became of each valid item of a create, kept under its idempotency key (in Redis too,
/// so it is plain data).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateOutcome {
    /// When the first attempt started, in Unix seconds.
    started: i64,
    items: Vec<Item>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Item {
    Created(u64),
    /// amoCRM refused it as invalid: final.
    Failed(Kept),
    /// It failed before reaching amoCRM (a queue timeout, an open circuit, a 429): sent again
    /// by a retry.
    Refused(Kept),
    /// Sent, with no answer: it may exist. `at` is when the gateway gave up (Unix ms).
    Unknown {
        message: String,
        at: i64,
    },
    /// Not sent, because an earlier batch's outcome was unknown.
    NotSent,
}

impl CreateOutcome {
    fn settled(&self) -> bool {
        self.items
            .iter()
            .all(|item| matches!(item, Item::Created(_) | Item::Failed(_)))
    }
}

pub async fn create_contacts(
    ctx: &Context<'_>,
    input: Vec<ContactCreateInput>,
    idempotency_key: Option<String>,
) -> Result<CreateContactsPayload, ApiError> {
    let (credentials, services) = writer(ctx)?;
    let key = match (idempotency_key, super::idempotency_header(ctx)) {
        (Some(argument), Some(header)) if argument != header => {
            return Err(ApiError::bad_input(
                "idempotencyKey",
                "differs from the Idempotency-Key header; send one of them",
            ));
        }
        (Some(key), _) => Some(key),
        (None, header) => header.map(str::to_owned),
    };
    if let Some(key) = &key
        && (key.is_empty() || key.len() > MAX_KEY_BYTES)
    {
        return Err(ApiError::bad_input(
            "idempotencyKey",
            format!("must be 1 to {MAX_KEY_BYTES} bytes"),
        ));
    }
    let (drafts, arguments) = valid_items(ctx, services, credentials, &input).await?;
    if drafts.is_empty() {
        return Ok(CreateContactsPayload {
            contacts: Vec::new(),
        });
    }
    let outcome = match &key {
        None => write(services.clone(), credentials.clone(), drafts, None).await,
        Some(key) => {
            let digest = digest(&input_digest_source(&drafts));
            let (services, credentials) = (services.clone(), credentials.clone());
            services
                .idempotency
                .clone()
                .run(
                    &credentials.scope.clone(),
                    key,
                    digest,
                    CreateOutcome::settled,
                    move |kept| write(services, credentials, drafts, kept),
                )
                .await
                .map_err(|e| match e {
                    IdempotencyError::OtherInput => {
                        ApiError::bad_input("idempotencyKey", e.to_string())
                    }
                    IdempotencyError::InProgress => ApiError::OutcomeUnknown(e.to_string()),
                    IdempotencyError::Unshared => ApiError::Unshared(e.to_string()),
                    IdempotencyError::Failed => {
                        ApiError::Internal("a create failed inside the gateway")
                    }
                })?
        }
    };
    let mut created = Vec::new();
    for (item, argument) in outcome.items.into_iter().zip(arguments) {
        let error = match item {
            Item::Created(id) => {
                created.push(ContactId::new(id));
                continue;
            }
            Item::Failed(kept) | Item::Refused(kept) => kept.at(&argument),
            Item::Unknown { message, at } => {
                let wait = (at + RECONCILE_AFTER_MS - chrono::Utc::now().timestamp_millis()).max(0);
                let advice = if key.is_some() {
                    format!(
                        " Retry with the same idempotency key{}: the gateway then looks for the \
                         contact in amoCRM before sending it again.",
                        if wait > 0 {
                            format!(" in {} s or later", (wait + 999) / 1000)
                        } else {
                            String::new()
                        }
                    )
                } else {
                    " Without an idempotency key, sending it again may create a second contact."
                        .to_owned()
                };
                Kept::of(&ApiError::OutcomeUnknown(message + &advice)).at(&argument)
            }
            Item::NotSent => Kept::of(&ApiError::NotSent).at(&argument),
        };
        report(ctx, &error);
    }
    if created.is_empty() {
        return Ok(CreateContactsPayload {
            contacts: Vec::new(),
        });
    }
    let ids: BTreeSet<ContactId> = created.iter().copied().collect();
    let written = match services.caches.read_back(credentials, &ids).await {
        Ok(written) => written,
        Err(error) => {
            report(ctx, &ApiError::ReadBack(error));
            Default::default()
        }
    };
    Ok(CreateContactsPayload {
        contacts: payload_contacts(created, &written),
    })
}

/// Sends the drafts that still need it: all of them the first time; after an unsettled
/// outcome, those not sent or refused before reaching amoCRM, and those whose answer never came
/// once amoCRM has had time to finish them, if it holds no contact made of them.
async fn write(
    services: Services,
    credentials: Credentials,
    drafts: Vec<ContactDraft>,
    kept: Option<CreateOutcome>,
) -> CreateOutcome {
    let mut outcome = kept.unwrap_or_else(|| CreateOutcome {
        started: chrono::Utc::now().timestamp(),
        items: vec![Item::NotSent; drafts.len()],
    });
    let now = chrono::Utc::now().timestamp_millis();
    let unknown: Vec<usize> = (0..drafts.len())
        .filter(|&i| {
            matches!(outcome.items[i], Item::Unknown { at, .. } if at + RECONCILE_AFTER_MS <= now)
        })
        .collect();
    let mut found_ids = Vec::new();
    if !unknown.is_empty() {
        match find_created(&services, &credentials, outcome.started, &drafts, &unknown).await {
            Ok(found) => {
                for (i, found) in found {
                    match found {
                        Found::One(id) => {
                            found_ids.push(ContactId::new(id));
                            outcome.items[i] = Item::Created(id);
                        }
                        Found::None => outcome.items[i] = Item::NotSent,
                        // Still unknown: sending again could make a second contact.
                        Found::Unsure => {}
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "could not look for contacts of an unanswered create");
            }
        }
    }
    let pending: Vec<usize> = (0..drafts.len())
        .filter(|&i| matches!(outcome.items[i], Item::NotSent | Item::Refused(_)))
        .collect();
    let mut ids = found_ids;
    let mut lost = false;
    if !pending.is_empty() {
        let batch: Vec<ContactDraft> = pending.iter().map(|&i| drafts[i].clone()).collect();
        let results = services
            .client
            .create_contacts(&credentials.token, &batch)
            .await;
        for (&i, result) in pending.iter().zip(results) {
            outcome.items[i] = match result {
                Ok(id) => {
                    ids.push(ContactId::new(id));
                    Item::Created(id)
                }
                Err(WriteError::Failed(error))
                    if matches!(*error, AmoError::OutcomeUnknown { .. }) =>
                {
                    lost = true;
                    Item::Unknown {
                        message: error.to_string(),
                        at: chrono::Utc::now().timestamp_millis(),
                    }
                }
                Err(WriteError::NotSent) => Item::NotSent,
                Err(error @ WriteError::Invalid(_)) => {
                    Item::Failed(Kept::of(&write_error(String::new(), error)))
                }
                Err(error) => Item::Refused(Kept::of(&write_error(String::new(), error))),
            };
        }
    }
    if !ids.is_empty() || lost {
        // Every list may now hold new contacts, the unanswered ones included.
        services.caches.after_create(ids.clone(), lost).await;
        services
            .live
            .changed(live_changes(&ids, ChangeKind::Created))
            .await;
    }
    outcome
}

/// What amoCRM holds of an unanswered draft.
enum Found {
    One(u64),
    /// Nothing, and the search saw every contact created since: safe to send again.
    None,
    /// Several candidates, or more contacts since than one search shows, or a draft too bare
    /// to recognize: still unknown.
    Unsure,
}

/// For each unanswered draft in `unknown`, the one contact created since the first attempt
/// that matches it (each contact matched once), if amoCRM holds exactly one.
async fn find_created(
    services: &Services,
    credentials: &Credentials,
    started: i64,
    drafts: &[ContactDraft],
    unknown: &[usize],
) -> Result<Vec<(usize, Found)>, Arc<AmoError>> {
    let (candidates, complete) = services
        .caches
        .created_since(credentials, started - CLOCK_SLACK_SECONDS)
        .await?;
    let mut taken = HashSet::new();
    Ok(unknown
        .iter()
        .map(|&i| {
            let draft = &drafts[i];
            let named =
                draft.name.is_some() || draft.first_name.is_some() || draft.last_name.is_some();
            let matches: Vec<_> = candidates
                .iter()
                .filter(|c| {
                    !taken.contains(&c.id)
                        && draft.name.as_ref().is_none_or(|n| *n == c.name)
                        && draft.first_name.as_ref().is_none_or(|n| *n == c.first_name)
                        && draft.last_name.as_ref().is_none_or(|n| *n == c.last_name)
                        && draft
                            .responsible_user_id
                            .is_none_or(|u| u == c.responsible_user_id)
                })
                .collect();
            let found = match matches.as_slice() {
                _ if !named => Found::Unsure,
                [one] => {
                    taken.insert(one.id);
                    Found::One(one.id.get())
                }
                [] if complete => Found::None,
                _ => Found::Unsure,
            };
            (i, found)
        })
        .collect())
}

/// What the idempotency key is bound to: the drafts as they would be sent.
fn input_digest_source(drafts: &[ContactDraft]) -> Vec<u8> {
    let sent: Vec<serde_json::Value> = drafts.iter().map(ContactDraft::as_sent).collect();
    serde_json::to_vec(&sent).unwrap_or_default()
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}
