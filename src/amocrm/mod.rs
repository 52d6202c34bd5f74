//! The upstream boundary: everything that knows how amoCRM's REST API v4 looks on the wire.
//!
//! Nothing here knows about GraphQL. [`ContactsQuery`] is the one typed description of a contacts
//! request (the only place `with`, filters and order become query parameters), [`AmoClient`] sends
//! it and turns statuses, 204s and problem bodies into [`AmoError`], and [`model`] decodes the HAL
//! JSON tolerantly.

pub mod breaker;
mod client;
pub mod entities;
mod error;
pub mod limiter;
pub mod model;
pub mod oauth;
mod query;
pub mod webhook;

pub use client::{AccessToken, AmoClient, ClientConfig};
pub use entities::{EntityKind, RelatedEntity, User};
pub use error::{AmoError, ForbiddenReason};
pub use limiter::{Priority, WINDOW};
pub use model::{Contact, ContactId, ContactsPage};
pub use query::{
    ContactFilter, ContactList, ContactsQuery, CustomFieldCondition, Direction, MAX_FILTER_IDS,
    MAX_LIST_PARAM_BYTES, MAX_URL_BYTES, Order, OrderField, PageSize, Relation, Relations,
    TimeRange, params_digest,
};
