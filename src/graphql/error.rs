//! The one place where failures become what clients see: a message and a stable
//! `extensions.code` (the table in INTERFACE.md).

use std::sync::Arc;

use async_graphql::{ErrorExtensions, Response};

use crate::amocrm::AmoError;
use crate::amocrm::breaker::OpenReason;
use crate::auth::AuthError;

pub const BAD_USER_INPUT: &str = "BAD_USER_INPUT";

/// Everything a resolver can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// An argument breaks a rule; `argument` is its path, e.g. `filter.ids[3]`.
    #[error("{argument}: {rule}")]
    BadInput { argument: String, rule: String },

    #[error(transparent)]
    Unauthenticated(#[from] AuthError),

    #[error(transparent)]
    Upstream(#[from] Arc<AmoError>),

    /// A linked entity amoCRM no longer returns: deleted, or not visible to this token.
    #[error("amoCRM returned no {noun} {id}: it was deleted, or this token may not see it")]
    NotFound { noun: &'static str, id: u64 },

    /// A catalog element link that names no catalog: amoCRM lists elements per catalog, so
    /// there is nowhere to load it from.
    #[error(
        "amoCRM did not say which catalog the linked catalog element {id} belongs to (its link \
         has no catalog_id), so its details cannot be loaded"
    )]
    CatalogUnknown { id: u64 },

    /// A whole number beyond GraphQL's `Int`, which is 32-bit: the spec makes that a field
    /// error, never a wrapped or clamped value.
    #[error("{what} {value} does not fit GraphQL's 32-bit Int: select {instead}, which carries it")]
    BeyondInt {
        what: &'static str,
        value: i64,
        instead: &'static str,
    },

    /// A bug: the schema was executed without the state it needs.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl ApiError {
    pub fn bad_input(argument: impl Into<String>, rule: impl Into<String>) -> Self {
        ApiError::BadInput {
            argument: argument.into(),
            rule: rule.into(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadInput { .. } => BAD_USER_INPUT,
            ApiError::Unauthenticated(_) => "UNAUTHENTICATED",
            ApiError::Upstream(e) => upstream_code(e),
            ApiError::NotFound { .. } => "NOT_FOUND",
            // Usable data amoCRM did not send, or sent beyond what the field can carry: asking
            // again will not help, and the caller did nothing wrong.
            ApiError::CatalogUnknown { .. } | ApiError::BeyondInt { .. } => "UPSTREAM_ERROR",
            ApiError::Internal(_) => "INTERNAL_SERVER_ERROR",
        }
    }
}

fn upstream_code(error: &AmoError) -> &'static str {
    match error {
        AmoError::Unauthorized { .. } | AmoError::AuthorizationRevoked { .. } => "UNAUTHENTICATED",
        AmoError::TokenRefresh(_) => "UPSTREAM_UNAVAILABLE",
        AmoError::PaymentRequired => "PAYMENT_REQUIRED",
        AmoError::Forbidden { .. } => "FORBIDDEN",
        AmoError::RateLimited { .. } | AmoError::QueueTimeout { .. } => "RATE_LIMITED",
        AmoError::CircuitOpen {
            reason: OpenReason::Blocked,
            ..
        } => "FORBIDDEN",
        AmoError::CircuitOpen {
            reason: OpenReason::Unavailable,
            ..
        } => "UPSTREAM_UNAVAILABLE",
        AmoError::Server { .. }
        | AmoError::Timeout(_)
        | AmoError::Connect
        | AmoError::Transport => "UPSTREAM_UNAVAILABLE",
        AmoError::BadRequest { .. }
        | AmoError::UnknownEndpoint { .. }
        | AmoError::UnexpectedStatus { .. }
        | AmoError::Decode(_) => "UPSTREAM_ERROR",
    }
}

impl ErrorExtensions for ApiError {
    fn extend(&self) -> async_graphql::Error {
        async_graphql::Error::new(self.to_string()).extend_with(|_, ext| {
            ext.set("code", self.code());
            if let ApiError::BadInput { argument, .. } = self {
                ext.set("argument", argument.as_str());
            }
        })
    }
}

/// An operation refused before it runs, with its code.
pub fn refusal(code: &'static str, message: String) -> async_graphql::ServerError {
    let mut error = async_graphql::ServerError::new(message, None);
    let mut extensions = async_graphql::ErrorExtensionValues::default();
    extensions.set("code", code);
    error.extensions = Some(extensions);
    error
}

/// What a scalar's input must look like, added to async-graphql's terse "expected type" errors.
const SCALAR_RULES: [(&str, &str); 2] = [
    (
        "expected type \"DateTime\"",
        "an RFC 3339 date-time such as \"2020-04-01T16:21:05Z\"",
    ),
    ("expected type \"Int\"", "a whole number"),
];

/// async-graphql's own errors (syntax, validation, scalar and argument parsing) carry no code.
/// Every error our resolvers raise has one, so an error without a code is about the request.
pub fn fill_missing_codes(response: &mut Response) {
    for error in &mut response.errors {
        let extensions = error.extensions.get_or_insert_with(Default::default);
        if extensions.get("code").is_none() {
            let code = if error.message.starts_with("Query is too complex") {
                error.message = "the operation is too complex: ask for fewer or smaller lists \
                                 (a contacts window costs its fields times `first`)"
                    .to_owned();
                "QUERY_TOO_COMPLEX"
            } else if error.message.starts_with("Query is nested too deep") {
                error.message = "the operation nests fields too deep".to_owned();
                "QUERY_TOO_DEEP"
            } else {
                BAD_USER_INPUT
            };
            extensions.set("code", code);
            if let Some((_, rule)) = SCALAR_RULES
                .iter()
                .find(|(expected, _)| error.message.ends_with(expected))
            {
                error.message = format!("{}: {rule}", error.message);
            }
        }
    }
}
