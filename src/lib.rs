//! # amocrm-gateway
//!
//! A caching GraphQL gateway in front of the amoCRM (Kommo) REST API v4. Frontend apps ask for
//! contacts with their leads, customers and catalog elements through one GraphQL endpoint; the
//! gateway turns each selection into the smallest upstream request and serves repeated and
//! overlapping views from a per-token cache, so amoCRM's 7 requests per second go a long way.
//!
//! ## Map
//! Layers, top to bottom; each imports only from layers below it, and a test
//! (`tests/it/layers.rs`) fails when an arrow runs back up.
//! - [`gateway`]: the composition root. [`Gateway::build`] turns validated settings into
//!   components (Redis, credentials, the amoCRM client, caches, persisted queries, the schema)
//!   and binds; [`Gateway::run`] serves them.
//! - [`config`]: the command line, every flag with its environment twin, and
//!   [`config::Settings`], the flags checked against each other.
//! - [`http`]: the router, the middleware stack and graceful shutdown, with one file per
//!   concern (GraphQL, webhooks, admin, health and metrics, the playground). Thin handlers.
//! - [`graphql`]: the client boundary (schema, selections, paging, error codes). Builds no URLs.
//! - [`persisted`]: automatic persisted queries (documents by their SHA-256).
//! - [`live`]: live updates for subscriptions: changes from webhooks, mutations and the change
//!   feed, read once per subscribed scope and handed to its subscribers.
//! - [`cache`]: moka caches between the boundaries: upstream pages (stale-while-revalidate,
//!   probes, stale-if-error, relation reuse) and whole responses; coalesces concurrent misses;
//!   turns webhooks and purges into invalidations, coalesced into one batch per 100 ms.
//! - [`shared`]: what replicas share through Redis (`--redis-url`): a second cache tier with
//!   leases for single-flight across replicas, one upstream rate limit, invalidation broadcast.
//!   Off without Redis, and never needed to answer.
//! - [`amocrm`]: the upstream boundary (typed queries; the client with its rate limiter,
//!   retries and circuit breaker; tolerant models; the webhook parser). Knows no GraphQL.
//! - Used by every layer: [`auth`] (whose token calls amoCRM, and the credential scope cached
//!   data belongs to), [`metrics`] (Prometheus, one recorder per gateway), [`background`]
//!   (tasks that end with the gateway).
//! - Beside them: [`graphiql`] (the playground page, its assets embedded at build time) and
//!   [`fake_amocrm`] (a faithful fake of the upstream, for `--demo` and the tests).
//!
//! ## Request flow
//! 1. `http::graphql` resolves the caller's [`auth::Credentials`]. A request whose bytes equal a
//!    recent one's is answered from [`cache::ResponseCache`] before any parsing, while every
//!    page it was built from is unchanged and fresh (compressed once per entry when the client
//!    accepts it); otherwise the request is read (`http::request`: a malformed one is refused
//!    with `BAD_REQUEST` and a 4xx status), refused with `UNAUTHENTICATED` when it has no
//!    usable credentials, its document bounded before any parsing, and a fresh
//!    [`graphql::RequestContext`]
//!    (credentials, DataLoader, cache report) goes into it. The answer's media type comes
//!    from `Accept` (`http::negotiation`).
//! 2. Before execution, `graphql::selection` plans the operation: which relations each root field
//!    selects (following fragments, aliases, `@skip`/`@include`) and every `contact(id:)` id.
//! 3. Resolvers validate arguments into an [`amocrm::ContactList`], and `graphql::connection` cuts
//!    the requested window out of fixed-size upstream pages.
//! 4. [`cache::PageCache`] answers each page from moka (stale ones while one background refresh
//!    revalidates them), or — after a look in Redis, where another replica may have stored it or
//!    be downloading it — calls [`amocrm::AmoClient`] once for all concurrent askers; linked
//!    entities come the same way, one batch per kind for the whole operation. Every upstream
//!    call passes the one rate limiter (in Redis when replicas share it; one lane per verified
//!    token or client key, one shared probation lane for forwarded tokens amoCRM has not yet
//!    accepted) and the circuit breaker.
//! 5. Errors become `extensions.code` in one place (`graphql::error`); `http::graphql` sets
//!    `x-cache` and `Cache-Control` from the request's cache report.

pub mod amocrm;
pub mod auth;
pub mod background;
pub mod cache;
pub mod config;
pub mod fake_amocrm;
pub mod gateway;
pub mod graphiql;
pub mod graphql;
pub mod http;
pub mod live;
pub mod metrics;
pub mod persisted;
pub mod shared;

pub use gateway::{Gateway, StartupError};
