//! One integration test binary: the gateway over real HTTP against the fake amoCRM.

mod support;

mod audits;
mod auth;
mod browser;
mod caching;
mod cli;
mod connections;
mod contacts;
mod errors;
mod examples;
mod fake_writes;
mod freshness;
mod http;
mod invalidation;
mod layers;
mod live;
mod live_client;
mod live_transport;
mod memory;
mod metrics;
mod mutations;
mod oauth;
mod over_http;
mod paging;
mod persisted;
mod planning;
mod protection;
mod raw_ws;
mod related;
mod replicas;
mod selection;
mod shapes;
