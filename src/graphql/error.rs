//! The one place where failures become what clients see: a message and a stable
//! `extensions.code` (the table in INTERFACE.md).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::Arc;

use async_graphql::parser::types::VariableDefinition;
use async_graphql::{ErrorExtensions, PathSegment, Positioned, Response, ServerError};

use crate::amocrm::breaker::OpenReason;
use crate::amocrm::{AmoError, Problem};
use crate::auth::AuthError;

pub const BAD_USER_INPUT: &str = "BAD_USER_INPUT";
pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
/// The HTTP request is not a GraphQL request (the HTTP layer's refusals, with a 4xx status).
pub const BAD_REQUEST: &str = "BAD_REQUEST";
pub const TOO_MANY_SUBSCRIPTIONS: &str = "TOO_MANY_SUBSCRIPTIONS";

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

    /// The linked entities of the operation's contacts, known once their pages arrived, need
    /// more upstream calls than the operation's price left for them.
    #[error(
        "the linked entities of this operation's contacts need {needed} upstream calls, more than \
         the {left} that --max-upstream-calls leaves them: ask for fewer contacts, or for fewer \
         linked details; their ids are still answered"
    )]
    OverBudget { needed: u64, left: u64 },

    /// amoCRM refused a written item; `argument` is the item's (`input[3]`), and each problem's
    /// path is amoCRM's, into what was sent for it.
    #[error("amoCRM refused {argument}: {}", describe(problems))]
    Rejected {
        argument: String,
        problems: Vec<Problem>,
    },

    /// An item of a write that was not sent, because an earlier batch's outcome is unknown.
    #[error(
        "not sent: an earlier batch of this write may or may not have reached amoCRM; retry \
         (with the same idempotency key, for creates) to send it"
    )]
    NotSent,

    /// An idempotency key could not be held across replicas (Redis is away).
    #[error("{0}")]
    Unshared(String),

    /// The write went through, but reading the written contacts back failed.
    #[error("the write was applied, but reading the written contacts back failed: {0}")]
    ReadBack(Arc<AmoError>),

    /// A write may or may not have reached amoCRM (kept under an idempotency key as text).
    #[error("{0}")]
    OutcomeUnknown(String),

    /// An error kept under an idempotency key, told again.
    #[error("{message}")]
    Kept {
        code: &'static str,
        message: String,
        argument: Option<String>,
        /// amoCRM's own code, for an item amoCRM refused.
        upstream_code: Option<String>,
    },

    /// A subscriber fell too far behind its events.
    #[error(
        "this subscription fell {0} events behind and was ended, rather than let the gateway \
         hold events for it without bound; subscribe again (and read faster)"
    )]
    Lagged(u64),

    /// A subscription beyond the gateway's limits.
    #[error(transparent)]
    Live(crate::live::LiveError),

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

    pub fn rejected(argument: &str, problems: &[Problem]) -> Self {
        ApiError::Rejected {
            argument: argument.to_owned(),
            problems: problems.to_vec(),
        }
    }

    /// The client's argument an error is about: for an upstream refusal, the first problem's
    /// path into the item, in the client's terms.
    fn argument(&self) -> Option<String> {
        match self {
            ApiError::BadInput { argument, .. } => Some(argument.clone()),
            ApiError::Kept { argument, .. } => argument.clone(),
            ApiError::Rejected { argument, problems } => {
                let path = problems
                    .first()
                    .map(|p| super::mutation::client_path(&p.path))
                    .unwrap_or_default();
                Some(match (argument.is_empty(), path.is_empty()) {
                    (_, true) => argument.clone(),
                    (true, false) => path,
                    (false, false) if path.starts_with('[') => format!("{argument}{path}"),
                    (false, false) => format!("{argument}.{path}"),
                })
            }
            _ => None,
        }
    }

    /// amoCRM's code for a refused item.
    fn upstream_code(&self) -> Option<&str> {
        match self {
            ApiError::Rejected { problems, .. } => problems.first().map(|p| p.code.as_str()),
            ApiError::Kept { upstream_code, .. } => upstream_code.as_deref(),
            _ => None,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Rejected { .. } => BAD_USER_INPUT,
            ApiError::OutcomeUnknown(_) => "UPSTREAM_OUTCOME_UNKNOWN",
            ApiError::Kept { code, .. } => code,
            ApiError::NotSent | ApiError::Unshared(_) => "UPSTREAM_UNAVAILABLE",
            ApiError::Lagged(_) => "SUBSCRIBER_TOO_SLOW",
            ApiError::Live(_) => TOO_MANY_SUBSCRIPTIONS,
            ApiError::ReadBack(e) => upstream_code(e),
            ApiError::BadInput { .. } => BAD_USER_INPUT,
            ApiError::Unauthenticated(_) => UNAUTHENTICATED,
            ApiError::Upstream(e) => upstream_code(e),
            ApiError::NotFound { .. } => "NOT_FOUND",
            ApiError::OverBudget { .. } => "QUERY_TOO_COMPLEX",
            // Usable data amoCRM did not send, or sent beyond what the field can carry: asking
            // again will not help, and the caller did nothing wrong.
            ApiError::CatalogUnknown { .. } | ApiError::BeyondInt { .. } => "UPSTREAM_ERROR",
            ApiError::Internal(_) => "INTERNAL_SERVER_ERROR",
        }
    }
}

/// An item's error as an idempotency key keeps it: plain data, its argument relative to the
/// item (`customFields[0].values[1].enumCode`), since the item's place in a retried input is
/// the same but the request is not.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Kept {
    code: String,
    message: String,
    within: Option<String>,
    upstream_code: Option<String>,
}

impl Kept {
    /// Keeps `error`, an item's error whose argument is `""` or starts with the item's.
    pub fn of(error: &ApiError) -> Self {
        Kept {
            code: error.code().to_owned(),
            message: error.to_string(),
            within: error.argument().filter(|a| !a.is_empty()),
            upstream_code: error.upstream_code().map(str::to_owned),
        }
    }

    /// The error again, for the item at `argument`.
    pub fn at(&self, argument: &str) -> ApiError {
        let argument = match &self.within {
            Some(within) if within.starts_with('[') => format!("{argument}{within}"),
            Some(within) => format!("{argument}.{within}"),
            None => argument.to_owned(),
        };
        ApiError::Kept {
            code: static_code(&self.code),
            message: self
                .message
                .replace("amoCRM refused :", &format!("amoCRM refused {argument}:")),
            argument: Some(argument),
            upstream_code: self.upstream_code.clone(),
        }
    }
}

/// The `'static` form of a code that was kept as text.
fn static_code(code: &str) -> &'static str {
    const KNOWN: [&str; 16] = [
        BAD_USER_INPUT,
        UNAUTHENTICATED,
        BAD_REQUEST,
        "PAYMENT_REQUIRED",
        "FORBIDDEN",
        "NOT_FOUND",
        "RATE_LIMITED",
        "UPSTREAM_UNAVAILABLE",
        "UPSTREAM_ERROR",
        "UPSTREAM_OUTCOME_UNKNOWN",
        "QUERY_TOO_COMPLEX",
        "QUERY_TOO_DEEP",
        "TOO_MANY_ALIASES",
        "INTROSPECTION_DISABLED",
        "PERSISTED_QUERY_NOT_FOUND",
        "PERSISTED_QUERY_REQUIRED",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == code)
        .unwrap_or("INTERNAL_SERVER_ERROR")
}

/// amoCRM's problems with an item, in one line.
fn describe(problems: &[Problem]) -> String {
    if problems.is_empty() {
        return "it did not say why".to_owned();
    }
    problems
        .iter()
        .map(|p| {
            let detail = p
                .detail
                .as_deref()
                .filter(|d| !d.is_empty())
                .unwrap_or("refused");
            if p.path.is_empty() {
                format!("{detail} ({})", p.code)
            } else {
                format!(
                    "{}: {detail} ({})",
                    super::mutation::client_path(&p.path),
                    p.code
                )
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
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
        AmoError::OutcomeUnknown { .. } => "UPSTREAM_OUTCOME_UNKNOWN",
        // amoCRM refused what the client asked to write.
        AmoError::Invalid(_) => BAD_USER_INPUT,
        AmoError::BadRequest { .. }
        | AmoError::RequestTooLarge { .. }
        | AmoError::RequestTooLong { .. }
        | AmoError::UnknownEndpoint { .. }
        | AmoError::UnexpectedStatus { .. }
        | AmoError::Decode(_) => "UPSTREAM_ERROR",
    }
}

impl ErrorExtensions for ApiError {
    fn extend(&self) -> async_graphql::Error {
        async_graphql::Error::new(self.to_string()).extend_with(|_, ext| {
            ext.set("code", self.code());
            if let Some(argument) = self.argument() {
                ext.set("argument", argument);
            }
            if let Some(code) = self.upstream_code() {
                ext.set("upstreamCode", code);
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

/// The parser's message for a syntax error is a multi-line drawing of the document
/// (` --> 1:36\n  |\n1 | { …\n  |    ^---\n  |\n  = expected selection`), which clients show
/// as it is: one sentence instead, the position staying in `locations`. Its other errors
/// (several anonymous operations, …) are sentences already.
pub fn readable_parse_error(mut error: ServerError) -> ServerError {
    let Some(reason) = error
        .message
        .lines()
        .filter_map(|line| line.trim().strip_prefix("= "))
        .next_back()
    else {
        return error;
    };
    let reason = rule_names(reason);
    error.message = match error.locations.first() {
        Some(at) => format!(
            "Syntax error at line {}, column {}: {reason}",
            at.line, at.column
        ),
        None => format!("Syntax error: {reason}"),
    };
    error
}

/// pest lists what it expected by grammar rule names (`EOI or executable_definition`,
/// `type_`): words instead.
fn rule_names(reason: &str) -> String {
    let words: Vec<String> = reason
        .split(' ')
        .map(|word| {
            let (name, comma) = match word.strip_suffix(',') {
                Some(name) => (name, ","),
                None => (word, ""),
            };
            let name = match name {
                "EOI" => "end of document".to_owned(),
                name => name.trim_end_matches('_').replace('_', " "),
            };
            name + comma
        })
        .collect();
    words.join(" ")
}

/// A required variable without a value, worded as graphql-js words it.
pub fn variable_not_provided(definition: &Positioned<VariableDefinition>) -> ServerError {
    let mut error = refusal(
        BAD_USER_INPUT,
        format!(
            "Variable \"${}\" of required type \"{}\" was not provided.",
            definition.node.name.node, definition.node.var_type.node
        ),
    );
    error.locations = vec![definition.pos];
    error
}

/// Keeps the first of equal errors: async-graphql's validation can report one problem twice
/// ("Schema is not configured for mutations." from two rules). Linear, since a response can
/// hold an error per list item.
pub fn drop_duplicates(errors: &mut Vec<ServerError>) {
    if errors.len() < 2 {
        return;
    }
    let hashing = RandomState::new();
    let mut kept: Vec<ServerError> = Vec::with_capacity(errors.len());
    // Errors by the hash of message, locations and path; equal errors hash alike.
    let mut by_hash: HashMap<u64, Vec<usize>> = HashMap::new();
    for error in errors.drain(..) {
        let mut hasher = hashing.build_hasher();
        error.message.hash(&mut hasher);
        error.locations.hash(&mut hasher);
        for segment in &error.path {
            match segment {
                PathSegment::Field(name) => name.hash(&mut hasher),
                PathSegment::Index(index) => index.hash(&mut hasher),
            }
        }
        let alike = by_hash.entry(hasher.finish()).or_default();
        if alike.iter().any(|&index| kept[index] == error) {
            continue;
        }
        alike.push(kept.len());
        kept.push(error);
    }
    *errors = kept;
}

#[cfg(test)]
mod tests {
    use async_graphql::Pos;

    use super::*;

    #[test]
    fn a_syntax_error_is_one_sentence_with_its_location() {
        let error: ServerError = async_graphql::parser::parse_query("{ contacts { nodes { id }")
            .expect_err("does not parse")
            .into();
        assert!(
            error.message.contains('\n'),
            "the parser draws: {}",
            error.message
        );
        let readable = readable_parse_error(error);
        assert!(
            readable
                .message
                .starts_with("Syntax error at line 1, column "),
            "{}",
            readable.message
        );
        assert!(!readable.message.contains('\n'), "{}", readable.message);
        assert_eq!(readable.locations.len(), 1);
        assert_eq!(
            rule_names("expected EOI, executable_definition, or type_"),
            "expected end of document, executable definition, or type"
        );
        let other: ServerError = async_graphql::parser::parse_query("query A { a } { b }")
            .expect_err("an anonymous operation among others")
            .into();
        let message = other.message.clone();
        assert_eq!(
            readable_parse_error(other).message,
            message,
            "already a sentence"
        );
    }

    #[test]
    fn equal_errors_are_kept_once_in_order() {
        let at = |line, column| Pos { line, column };
        let error = |message: &str, pos: Option<Pos>, path: &[&str]| {
            let mut error = ServerError::new(message, pos);
            error.path = path
                .iter()
                .map(|p| PathSegment::Field((*p).to_owned()))
                .collect();
            error
        };
        let mut errors = vec![
            error(
                "Schema is not configured for mutations.",
                Some(at(1, 1)),
                &[],
            ),
            error("not found", None, &["a"]),
            error(
                "Schema is not configured for mutations.",
                Some(at(1, 1)),
                &[],
            ),
            error("not found", None, &["b"]),
            error("not found", Some(at(2, 1)), &["a"]),
            error("not found", None, &["a"]),
        ];
        let mut coded = error("not found", None, &["a"]);
        coded.extensions = Some(Default::default());
        if let Some(extensions) = coded.extensions.as_mut() {
            extensions.set("code", "NOT_FOUND");
        }
        errors.push(coded);
        drop_duplicates(&mut errors);
        let summary: Vec<(String, Vec<Pos>, usize)> = errors
            .iter()
            .map(|e| (e.message.clone(), e.locations.clone(), e.path.len()))
            .collect();
        assert_eq!(summary.len(), 5, "{summary:?}");
        assert_eq!(errors[0].message, "Schema is not configured for mutations.");
        assert_eq!(errors[2].path, vec![PathSegment::Field("b".to_owned())]);
        assert!(
            errors[4].extensions.is_some(),
            "other extensions: another error"
        );
    }
}
