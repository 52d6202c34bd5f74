//! The account's contact custom-field definitions, per credential scope: what mutation input is
//! checked against before any write goes out, and what `contactCustomFields` answers.
//!
//! Definitions change rarely (an administrator adds a field), so they are kept long and refreshed
//! in the background once they are older than the refresh age: a form never waits for them twice,
//! and a new field shows up within that age. A purge drops them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::amocrm::limiter::Priority;
use crate::amocrm::{AmoClient, AmoError, FieldDefinition};
use crate::auth::{Credentials, Scope};

/// Kept this long without a read, at most.
const KEEP: Duration = Duration::from_secs(24 * 60 * 60);
/// Older than this, a read answers the kept definitions and refreshes them behind it.
const REFRESH_AFTER: Duration = Duration::from_secs(10 * 60);

#[derive(Clone)]
struct Kept {
    definitions: Arc<Vec<FieldDefinition>>,
    at: Instant,
}

#[derive(Clone)]
pub struct FieldDefinitions {
    client: AmoClient,
    by_scope: moka::future::Cache<Scope, Kept>,
    /// Scopes whose refresh is under way: one at a time each, however many reads see them old.
    refreshing: Arc<Mutex<HashSet<Scope>>>,
}

impl FieldDefinitions {
    pub fn new(client: AmoClient) -> Self {
        FieldDefinitions {
            client,
            // Scopes are per token: a bound keeps a flood of tokens from holding memory.
            by_scope: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_idle(KEEP)
                .build(),
            refreshing: Arc::default(),
        }
    }

    /// The definitions `credentials` see: kept ones (refreshed behind the answer when old), or
    /// one upstream read shared by every concurrent asker of the scope.
    pub async fn get(
        &self,
        credentials: &Credentials,
    ) -> Result<Arc<Vec<FieldDefinition>>, Arc<AmoError>> {
        let scope = credentials.scope.clone();
        let client = self.client.clone();
        let token = credentials.token.clone();
        let kept = self
            .by_scope
            .try_get_with(scope.clone(), async move {
                let definitions = client
                    .contact_custom_fields(&token, Priority::Foreground)
                    .await?;
                Ok::<_, AmoError>(Kept {
                    definitions: Arc::new(definitions),
                    at: Instant::now(),
                })
            })
            .await?;
        if kept.at.elapsed() > REFRESH_AFTER {
            self.refresh_behind(credentials.clone());
        }
        Ok(kept.definitions)
    }

    pub fn invalidate_all(&self) {
        self.by_scope.invalidate_all();
    }

    fn refresh_behind(&self, credentials: Credentials) {
        let fresh_claim = self
            .refreshing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(credentials.scope.clone());
        if !fresh_claim {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let refreshed = this
                .client
                .contact_custom_fields(&credentials.token, Priority::Background)
                .await;
            match refreshed {
                Ok(definitions) => {
                    let kept = Kept {
                        definitions: Arc::new(definitions),
                        at: Instant::now(),
                    };
                    this.by_scope.insert(credentials.scope.clone(), kept).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "could not refresh the contact custom-field definitions")
                }
            }
            this.refreshing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&credentials.scope);
        });
    }
}
