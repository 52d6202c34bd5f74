//! The entities' part of the Redis tier: where an answer is stored there, which generations
//! void it, and the record it is stored as.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Cached, Entry, Subject};
use crate::amocrm::{AmoError, EntityKind, ForbiddenReason, RelatedEntity, User};
use crate::auth::Scope;
use crate::shared::tier::{Generation, Slot};
use crate::shared::{Tier, unix_millis};

/// An answer as the shared tier stores it.
#[derive(Serialize, Deserialize)]
enum StoredAnswer {
    /// Boxed: the other answers are small.
    Entity(Box<RelatedEntity>),
    Users(Vec<User>),
    Missing,
    /// A rights 403, with amoCRM's detail.
    Forbidden(Option<String>),
}

#[derive(Serialize, Deserialize)]
pub(super) struct EntityRecord {
    /// Unix milliseconds: the same instant on every replica.
    validated_at: i64,
    answer: StoredAnswer,
}

impl EntityRecord {
    pub(super) fn of(entry: &Entry) -> Option<EntityRecord> {
        let answer = match &entry.value {
            Cached::Entity(entity) => StoredAnswer::Entity(Box::new(RelatedEntity::clone(entity))),
            Cached::Users(users) => StoredAnswer::Users(users.values().cloned().collect()),
            Cached::Missing => StoredAnswer::Missing,
            Cached::Forbidden(error) => match error.as_ref() {
                AmoError::Forbidden { detail, .. } => StoredAnswer::Forbidden(detail.clone()),
                _ => return None,
            },
        };
        let ago = i64::try_from(entry.validated_at.elapsed().as_millis()).unwrap_or(i64::MAX);
        Some(EntityRecord {
            validated_at: unix_millis().saturating_sub(ago),
            answer,
        })
    }

    pub(super) fn into_value(self) -> Cached {
        match self.answer {
            StoredAnswer::Entity(entity) => Cached::Entity(Arc::new(*entity)),
            StoredAnswer::Users(users) => {
                Cached::Users(Arc::new(users.into_iter().map(|u| (u.id, u)).collect()))
            }
            StoredAnswer::Missing => Cached::Missing,
            StoredAnswer::Forbidden(detail) => Cached::Forbidden(Arc::new(AmoError::Forbidden {
                reason: ForbiddenReason::Rights,
                detail,
            })),
        }
    }

    /// When it was validated, by this process's clock; `None` once it is no longer fresh.
    pub(super) fn fresh_since(&self, ttl: Duration) -> Option<Instant> {
        let ago = Duration::from_millis(
            u64::try_from(unix_millis().saturating_sub(self.validated_at)).unwrap_or(0),
        );
        (ago < ttl)
            .then(|| Instant::now().checked_sub(ago))
            .flatten()
    }
}

/// The entities' part of the shared tier.
pub(super) struct SharedEntities {
    pub(super) tier: Tier,
    /// How long a per-entity or per-scope generation must outlive its last bump.
    pub(super) keep_for: Duration,
}

impl SharedEntities {
    pub(super) fn slot(&self, scope: &Scope, subject: Subject, id: u64) -> Slot {
        let mut generations = vec![
            self.all_entities(),
            self.tier.generation(
                format_args!("scope:{}", scope.as_str()),
                Some(self.keep_for),
            ),
        ];
        match subject {
            Subject::Entity(kind) => {
                generations.push(self.entity(kind, id));
                self.tier.slot(
                    format_args!("entity:{}:{}:{id}", scope.as_str(), kind.path()),
                    generations,
                )
            }
            Subject::Users => self
                .tier
                .slot(format_args!("users:{}", scope.as_str()), generations),
        }
    }

    pub(super) fn all_entities(&self) -> Generation {
        self.tier.generation(format_args!("entities"), None)
    }

    pub(super) fn entity(&self, kind: EntityKind, id: u64) -> Generation {
        self.tier.generation(
            format_args!("entity:{}:{id}", kind.path()),
            Some(self.keep_for),
        )
    }
}
