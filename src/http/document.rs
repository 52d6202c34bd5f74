//! The document a request runs, whatever its transport (POST or GET, server-sent events, a
//! WebSocket `subscribe`): bounded by `--max-document-bytes` before the persisted-query store
//! parses or keeps it, put in from that store when only its hash came (and bounded then too:
//! another replica may allow larger ones), and refused under `--persisted-only` unless the
//! manifest has it.

use async_graphql::{Request, ServerError};

use super::request::{self, Rejection};
use crate::persisted::{PersistedQueries, Registration};

/// Why a request's document does not run: its shape or size (a 4xx with `BAD_REQUEST`), or
/// the persisted-query rules (their own codes).
pub(super) enum Refused {
    Rejected(Rejection),
    Persisted(ServerError),
}

/// Makes `request`'s document the one to run, or says why none runs. A document sent with its
/// hash comes back as the registration to store once the caller is known to be verified.
pub(super) async fn admit(
    persisted: &PersistedQueries,
    max_bytes: usize,
    request: &mut Request,
) -> Result<Option<Registration>, Refused> {
    let sent = !request.query.is_empty();
    if sent {
        request::check_document(&request.query, max_bytes).map_err(Refused::Rejected)?;
    }
    let registration = persisted
        .resolve(request)
        .await
        .map_err(Refused::Persisted)?;
    if !sent {
        request::check_document(&request.query, max_bytes).map_err(Refused::Rejected)?;
    }
    Ok(registration)
}
