//! The upstream boundary: everything that knows how amoCRM's REST API v4 looks on the wire.
//!
//! Nothing here knows about GraphQL. [`ContactsQuery`] is the one typed description of a contacts
//! request (the only place `with`, filters and order become query parameters), [`AmoClient`] sends
//! it and turns statuses, 204s and problem bodies into [`AmoError`], and [`model`] decodes the HAL
//! JSON tolerantly.
//!
//! Writes go through the same breaker, rate limiter and token handling as reads, at foreground
//! priority, but are retried only when they surely never reached amoCRM (no connection, a 429,
//! the one OAuth refresh after a 401): amoCRM has no idempotency keys, so a write whose answer
//! was lost ends in [`AmoError::OutcomeUnknown`] rather than risking a second copy.
//! - [`AmoClient::create_contacts`] (`POST /api/v4/contacts`) and
//!   [`AmoClient::update_contacts`] (`PATCH /api/v4/contacts`) take [`ContactDraft`]s and
//!   [`ContactChange`]s and answer one result per item, in input order. Items go out in
//!   batches of [`WRITE_BATCH`], matched to amoCRM's answer by `request_id`. A batch refused as
//!   invalid applies nothing, so it is sent once more without the items amoCRM named (they get
//!   [`WriteError::Invalid`]); after a batch with an unknown outcome the rest are
//!   [`WriteError::NotSent`].
//! - [`AmoClient::link_contact`] and [`AmoClient::unlink_contact`]
//!   (`POST /api/v4/contacts/{id}/link|unlink`) take [`LinkTarget`]s; a refusal is
//!   [`AmoError::Invalid`].
//! - [`AmoClient::contact_custom_fields`] reads the [`FieldDefinition`]s that custom field
//!   values ([`FieldWrite`]) refer to.

pub mod breaker;
mod client;
pub mod entities;
mod error;
pub mod limiter;
pub mod model;
pub mod oauth;
mod query;
pub mod webhook;
mod writes;

pub use client::{AccessToken, AmoClient, ClientConfig};
pub use entities::{EntityKind, RelatedEntity, User};
pub use error::{AmoError, ForbiddenReason, Problem, Rejection};
pub use limiter::{Priority, WINDOW};
pub use model::{Contact, ContactId, ContactsPage};
pub use query::{
    ContactFilter, ContactList, ContactsQuery, CustomFieldCondition, Direction, MAX_FILTER_IDS,
    MAX_LIST_PARAM_BYTES, MAX_URL_BYTES, Order, OrderField, PageSize, Relation, Relations,
    TimeRange, params_digest,
};
pub use writes::{
    ContactChange, ContactDraft, FieldDefinition, FieldEnum, FieldRef, FieldWrite, LinkKind,
    LinkTarget, TagRef, UpdatedContact, ValueWrite, WRITE_BATCH, WriteError,
};
