//! One integration test binary: the gateway over real HTTP against the fake amoCRM.

mod support;

mod auth;
mod caching;
mod cli;
mod contacts;
mod errors;
mod http;
mod paging;
mod selection;
