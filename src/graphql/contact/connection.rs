//! The Relay connection types a contact list is served as. The cursor and window arithmetic
//! behind them is `graphql::connection`.

use async_graphql::{Object, SimpleObject};

use super::Contact;

/// A window of a contact list (Relay connection).
pub struct ContactConnection {
    pub edges: Vec<ContactEdge>,
    pub page_info: PageInfo,
}

#[Object]
impl ContactConnection {
    async fn edges(&self) -> &[ContactEdge] {
        &self.edges
    }

    /// The contacts of `edges`, without cursors.
    async fn nodes(&self) -> Vec<Contact> {
        self.edges.iter().map(|e| e.node.clone()).collect()
    }

    async fn page_info(&self) -> &PageInfo {
        &self.page_info
    }
}

#[derive(SimpleObject)]
pub struct ContactEdge {
    /// Pass as `after` to continue after this contact.
    pub cursor: String,
    pub node: Contact,
}

#[derive(SimpleObject)]
pub struct PageInfo {
    /// Whether contacts follow this window. Exact at the end of the list; when a window ends on
    /// the last contact of a full upstream page it may be `true` and the next window empty.
    pub has_next_page: bool,
    /// Whether contacts precede this window.
    pub has_previous_page: bool,
    pub start_cursor: Option<String>,
    pub end_cursor: Option<String>,
}
