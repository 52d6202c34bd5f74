//! The client boundary: the GraphQL schema. It turns arguments and selections into typed
//! upstream requests and never builds a URL.
//!
//! - [`query`]: the Query root, `contacts`, `contact` and `contactCustomFields`.
//! - [`mutation`]: the Mutation root: contact writes, read-your-writes, idempotency keys.
//! - [`subscription`]: the Subscription root: `contactChanged`, from the live hub.
//! - [`custom_fields`]: the account's field definitions as GraphQL objects.
//! - [`contact`]: objects over the upstream models, and the connection types.
//! - [`connection`]: cursor and window arithmetic.
//! - [`selection`]: the operation plan (which relations, which ids), made before execution,
//!   and the size of a document once its fragments are inlined.
//! - [`price`]: what an operation may cost in upstream calls, from its plan.
//! - [`input`]: argument validation.
//! - [`variables`]: every declared variable coerced before execution.
//! - [`overlap`]: one response key, one field (the spec's field selection merging).
//! - [`error`]: the mapping of every failure to `extensions.code`.
//! - [`field_errors`]: errored fields become `null` where the GraphQL spec says.
//! - [`context`]: per-request state and the DataLoader.
//! - [`documents`]: parsed documents, kept by their text.

mod connection;
mod contact;
mod context;
mod custom_fields;
mod documents;
mod error;
mod field_errors;
mod input;
mod mutation;
mod overlap;
mod price;
mod query;
mod scalars;
mod selection;
mod subscription;
mod variables;

use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextPrepareRequest, NextRequest, NextResolve,
    NextValidation, ResolveInfo,
};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{QueryPathSegment, ServerError, ValidationResult, Value};
use async_graphql::{Request, Response, Schema, ServerResult};
use documents::Parsed;
use price::Price;
use selection::Unbounded;

use crate::amocrm::PageSize;

pub use context::{ConnectionContext, RequestContext};
pub use error::{BAD_REQUEST, BAD_USER_INPUT, TOO_MANY_SUBSCRIPTIONS, UNAUTHENTICATED, refusal};
pub use mutation::{CreateOutcome, MAX_WRITES_PER_OPERATION, MutationRoot, Services};
pub use query::QueryRoot;
pub use selection::{OperationPlan, is_mutation};
pub use subscription::SubscriptionRoot;

pub type GatewaySchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// How much one operation may ask for. The cost of a field is 1, and a `contacts` window
/// multiplies the cost of its contacts by `first`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_complexity: usize,
    pub max_depth: usize,
    pub max_aliases: usize,
    /// Selections of the document once fragments are inlined: checked first, because every
    /// later step (our plan, async-graphql's validation) walks that expansion.
    pub max_selections: usize,
    /// Upstream calls one operation may cost ([`price::Price`]).
    pub max_upstream_calls: u64,
    /// The size of the upstream pages that windows are priced in.
    pub page_size: PageSize,
    pub introspection: bool,
    /// `--read-only`: every mutation is refused with `FORBIDDEN` before it runs.
    pub read_only: bool,
}

/// One `contacts(first: 250)` with every field of the schema (custom field values of linked
/// entities included) and `pageInfo` costs 23 500 (measured): this allows six such lists in one
/// operation and refuses a few dozen.
pub const DEFAULT_MAX_COMPLEXITY: usize = 150_000;
/// Deep enough for any query of this schema with fragments (a full contact card nests 7).
pub const DEFAULT_MAX_DEPTH: usize = 15;
/// async-graphql has no alias limit; aliases multiply work without multiplying the document.
pub const DEFAULT_MAX_ALIASES: usize = 64;
/// A contact card with every relation's fields is about 50 selections, so this allows the 64
/// aliases' worth of cards three times over, while async-graphql's validation and execution
/// of a document at the limit take about 40 ms in a debug build (measured; linear in the
/// count).
pub const DEFAULT_MAX_SELECTIONS: usize = 10_000;
/// One `contacts(first: 250)` with every relation's details is priced at 10 calls (1 page,
/// 9 batches of linked entities; it makes 8 against the fake): 16 lets such a list through
/// even straddling two pages with a `contact(id:)` field beside it (priced at exactly 16), and
/// keeps any one operation near two seconds of amoCRM's 7 calls a second.
pub const DEFAULT_MAX_UPSTREAM_CALLS: u64 = 16;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_complexity: DEFAULT_MAX_COMPLEXITY,
            max_depth: DEFAULT_MAX_DEPTH,
            max_aliases: DEFAULT_MAX_ALIASES,
            max_selections: DEFAULT_MAX_SELECTIONS,
            max_upstream_calls: DEFAULT_MAX_UPSTREAM_CALLS,
            page_size: PageSize::MAX,
            introspection: true,
            read_only: false,
        }
    }
}

/// The schema. Independent of HTTP: per-request state arrives as request data
/// ([`RequestContext`]), and what writes and field definitions need as `services` (without
/// them those fields fail with an internal error: for printing the SDL).
pub fn schema(limits: Limits, services: Option<Services>) -> GatewaySchema {
    let mut builder = Schema::build(QueryRoot, MutationRoot, SubscriptionRoot);
    if let Some(services) = services {
        builder = builder.data(services);
    }
    let builder = builder
        .extension(PlanningExtension {
            limits,
            documents: documents::Documents::new(),
            fresh: std::sync::Mutex::new(None),
        })
        .extension(field_errors::SpecFieldErrors)
        .limit_complexity(limits.max_complexity)
        .limit_depth(limits.max_depth);
    if limits.introspection {
        builder.finish()
    } else {
        builder.disable_introspection().finish()
    }
}

/// The SDL that `schema.graphql` holds and `print-schema` prints.
pub fn sdl() -> String {
    schema(Limits::default(), None).sdl()
}

/// Prepares every request: fills in variable defaults, plans the operation's upstream needs
/// ([`OperationPlan`]), refuses a document that does not parse (in one readable sentence) or
/// lacks a required variable, and gives async-graphql's own errors their `extensions.code`,
/// each error once.
struct PlanningExtension {
    limits: Limits,
    documents: documents::Documents,
    /// This request's newly parsed document, kept in `documents` once it validates.
    fresh: std::sync::Mutex<Option<(String, Arc<ExecutableDocument>)>>,
}

impl ExtensionFactory for PlanningExtension {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(PlanningExtension {
            limits: self.limits,
            documents: self.documents.clone(),
            fresh: std::sync::Mutex::new(None),
        })
    }
}

#[async_trait::async_trait]
impl Extension for PlanningExtension {
    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let validated = next.run(ctx).await;
        let fresh = self.fresh.lock().unwrap_or_else(|e| e.into_inner()).take();
        if validated.is_ok()
            && let Some((text, document)) = fresh
        {
            self.documents.keep(&text, document).await;
        }
        validated
    }

    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let mut response = next.run(ctx).await;
        error::fill_missing_codes(&mut response);
        error::drop_duplicates(&mut response.errors);
        response
    }

    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        let operation_name = request.operation_name.clone();
        let mut variables = std::mem::take(&mut request.variables);
        let parsed = self
            .documents
            .prepare(&mut request)
            .await
            .map_err(error::readable_parse_error)?;
        if let Parsed::Fresh(document) = parsed {
            *self.fresh.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((request.query.clone(), document));
        }
        let document = request
            .parsed_query()
            .map_err(error::readable_parse_error)?;
        self.check_expansion(document)?;
        let aliases = selection::count_aliases(document);
        if aliases > self.limits.max_aliases {
            return Err(error::refusal(
                "TOO_MANY_ALIASES",
                format!(
                    "the operation uses {aliases} aliases; at most {} are allowed",
                    self.limits.max_aliases
                ),
            ));
        }
        if !self.limits.introspection && selection::introspects(document, operation_name.as_deref())
        {
            return Err(error::refusal(
                "INTROSPECTION_DISABLED",
                "introspection is disabled on this gateway".to_owned(),
            ));
        }
        selection::fill_variable_defaults(document, operation_name.as_deref(), &mut variables);
        if let Some(definition) =
            selection::unprovided_variable(document, operation_name.as_deref(), &variables)
        {
            return Err(error::variable_not_provided(definition));
        }
        if let Some(operation) = selection::find_operation(document, operation_name.as_deref()) {
            if operation.ty == async_graphql::parser::types::OperationType::Mutation {
                self.check_writes(document, operation, &variables)?;
            }
            variables::coerce(&operation.variable_definitions, &variables)?;
            overlap::conflict(document, operation)?;
        }
        let plan = OperationPlan::new(document, operation_name.as_deref(), &variables);
        let price = self.check_price(&plan)?;
        // What the pages and contact batches leave is what linked entities may really cost.
        let plan = plan.with_linked_budget(
            self.limits
                .max_upstream_calls
                .saturating_sub(price.pages.saturating_add(price.contact_batches)),
        );
        request.variables = variables;
        let mut request = request.data(plan);
        // An operation over a WebSocket: its own context, from the connection's.
        if !request
            .data
            .contains_key(&std::any::TypeId::of::<RequestContext>())
            && let Some(connection) = ctx.data_opt::<ConnectionContext>()
        {
            request = request.data(connection.operation());
        }
        next.run(ctx, request).await
    }

    /// A root field that has resolved, whatever the outcome, releases its place at the
    /// prefetch gate: one refused before its resolver ran (or before it joined) would
    /// otherwise hold the others until the gate's timeout.
    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        let root_key = match (info.path_node.parent, info.path_node.segment) {
            (None, QueryPathSegment::Name(key)) => Some(key.to_owned()),
            _ => None,
        };
        let resolved = next.run(ctx, info).await;
        if let Some(key) = root_key
            && let Some(plan) = ctx.data_opt::<OperationPlan>()
        {
            plan.gate().release(&key);
        }
        resolved
    }
}

impl PlanningExtension {
    /// Refuses a document whose fragments expand beyond `--max-selections`, before anything
    /// walks that expansion: a few hundred bytes of fragments that each spread the next twice
    /// expand to millions of fields.
    fn check_expansion(&self, document: &ExecutableDocument) -> Result<(), ServerError> {
        let max = self.limits.max_selections;
        let (code, message) = match selection::expanded_selections(document) {
            Ok(count) if count <= max => return Ok(()),
            Ok(count) => (
                "QUERY_TOO_COMPLEX",
                format!(
                    "the document expands to {count} selections once its fragments are \
                     inlined; at most {max} are allowed (--max-selections)"
                ),
            ),
            // Validation would refuse it too, with the same code, after walking it.
            Err(Unbounded::Cycle(name)) => (
                BAD_USER_INPUT,
                format!("fragment `{name}` spreads itself: fragments must not form a cycle"),
            ),
            Err(Unbounded::Nesting) => (
                "QUERY_TOO_COMPLEX",
                format!(
                    "fragments are spread inside fragments more than {} deep",
                    selection::MAX_FRAGMENT_NESTING
                ),
            ),
        };
        Err(error::refusal(code, message))
    }

    /// Refuses a mutation on a `--read-only` gateway, and one that would write more contacts
    /// than [`MAX_WRITES_PER_OPERATION`], before anything is written.
    fn check_writes(
        &self,
        document: &ExecutableDocument,
        operation: &async_graphql::parser::types::OperationDefinition,
        variables: &async_graphql::Variables,
    ) -> Result<(), ServerError> {
        if self.limits.read_only {
            return Err(error::refusal(
                "FORBIDDEN",
                "this gateway is read-only (--read-only): mutations are refused".to_owned(),
            ));
        }
        let writes = mutation::count_writes(document, operation, variables);
        if writes > MAX_WRITES_PER_OPERATION {
            return Err(error::refusal(
                "QUERY_TOO_COMPLEX",
                format!(
                    "the operation writes {writes} contacts or links; at most \
                     {MAX_WRITES_PER_OPERATION} are allowed per operation"
                ),
            ));
        }
        Ok(())
    }

    /// Refuses an operation that may cost more upstream calls than `--max-upstream-calls`,
    /// before its first call.
    fn check_price(&self, plan: &OperationPlan) -> Result<Price, ServerError> {
        let price = Price::of(plan, self.limits.page_size.get());
        let max = self.limits.max_upstream_calls;
        if price.total() <= max {
            return Ok(price);
        }
        Err(error::refusal(
            "QUERY_TOO_COMPLEX",
            format!(
                "the operation may cost {} upstream calls ({} contact pages, {} contact(id:) \
                 batches, {} linked-entity batches); at most {max} are allowed per operation \
                 (--max-upstream-calls)",
                price.total(),
                price.pages,
                price.contact_batches,
                price.linked_batches
            ),
        ))
    }
}
