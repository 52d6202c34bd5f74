//! # amocrm-gateway
//!
//! A caching GraphQL gateway in front of the amoCRM (Kommo) REST API v4. Frontend apps ask for
//! contacts with their leads, customers and catalog elements through one GraphQL endpoint; the
//! gateway turns each selection into the smallest upstream request and serves repeated and
//! overlapping views from a per-token cache, so amoCRM's 7 requests per second go a long way.
//!
//! ## Map
//! - [`config`]: the command line, every flag with its environment twin.
//! - [`server`]: axum router, the GraphQL handler and its headers, GraphiQL, health;
//!   [`server::Gateway`] separates binding from serving.
//! - [`auth`]: whose token calls amoCRM, and the credential scope cached data belongs to.
//! - [`graphql`]: the client boundary (schema, selections, paging, error codes). Builds no URLs.
//! - [`cache`]: moka caches between the boundaries: upstream pages (stale-while-revalidate,
//!   probes, stale-if-error, relation reuse) and whole responses; coalesces concurrent misses.
//! - [`shared`]: what replicas share through Redis (`--redis-url`): a second cache tier with
//!   leases for single-flight across replicas, one upstream rate limit, invalidation broadcast.
//!   Off without Redis, and never needed to answer.
//! - [`amocrm`]: the upstream boundary (typed queries; the client with its rate limiter,
//!   retries and circuit breaker; tolerant models; the webhook parser). Knows no GraphQL.
//! - [`graphiql`]: the playground, its assets embedded at build time when fetched.
//! - [`persisted`]: automatic persisted queries (documents by their SHA-256).
//! - [`metrics`]: Prometheus metrics, one recorder per gateway.
//! - [`fake_amocrm`]: a faithful fake of the upstream, for `--demo` and the tests.
//!
//! ## Request flow
//! 1. `server` resolves the caller's [`auth::Credentials`]. An operation identical to a recent
//!    one is answered from [`cache::ResponseCache`] while every page it was built from is
//!    unchanged and fresh; otherwise a fresh [`graphql::RequestContext`] (credentials,
//!    DataLoader, cache report) goes into the request.
//! 2. Before execution, `graphql::selection` plans the operation: which relations each root field
//!    selects (following fragments, aliases, `@skip`/`@include`) and every `contact(id:)` id.
//! 3. Resolvers validate arguments into an [`amocrm::ContactList`], and `graphql::connection` cuts
//!    the requested window out of fixed-size upstream pages.
//! 4. [`cache::PageCache`] answers each page from moka (stale ones while one background refresh
//!    revalidates them), or — after a look in Redis, where another replica may have stored it or
//!    be downloading it — calls [`amocrm::AmoClient`] once for all concurrent askers; linked
//!    entities come the same way, one batch per kind for the whole operation. Every upstream
//!    call passes the one rate limiter (in Redis when replicas share it) and the circuit
//!    breaker.
//! 5. Errors become `extensions.code` in one place (`graphql::error`); `server` sets `x-cache`
//!    and `Cache-Control` from the request's cache report.

pub mod amocrm;
pub mod auth;
pub mod cache;
pub mod config;
pub mod fake_amocrm;
pub mod graphiql;
pub mod graphql;
pub mod metrics;
pub mod persisted;
pub mod server;
pub mod shared;

pub use server::Gateway;
