//! Parsed documents, kept by their text. Apps send the same few documents again and again with
//! other variables (Apollo, urql and Relay all do), and async-graphql's parser is the largest
//! single cost of a cold request (about 170 k of its 560 k instructions, measured with
//! callgrind): a cached document is cloned instead, for a fraction of that.
//!
//! Only documents that parsed are kept. The cache is weighed by document length and bounded,
//! and its admission policy (moka's TinyLFU) keeps a flood of one-off documents from pushing
//! out the ones that recur.

use std::sync::Arc;

use async_graphql::parser::types::ExecutableDocument;
use moka::future::Cache;

/// What the cache may hold, weighed as text length times [`AST_FACTOR`].
const CAPACITY_BYTES: u64 = 16 << 20;
/// A parsed document takes several times its text on the heap (every name, position and
/// selection is a node of its own): an estimate on the generous side keeps the bound honest.
const AST_FACTOR: u64 = 10;

#[derive(Clone)]
pub(super) struct Documents {
    parsed: Cache<Arc<str>, Arc<ExecutableDocument>>,
}

impl Documents {
    pub(super) fn new() -> Self {
        Documents {
            parsed: Cache::builder()
                .max_capacity(CAPACITY_BYTES)
                .weigher(|text: &Arc<str>, _| {
                    u32::try_from(text.len() as u64 * AST_FACTOR).unwrap_or(u32::MAX)
                })
                .build(),
        }
    }

    /// Parses `request`'s document, or takes it from the cache; a document that does not parse
    /// is not kept, and its error is the caller's to report.
    pub(super) async fn prepare(&self, request: &mut async_graphql::Request) {
        if let Some(document) = self.parsed.get(request.query.as_str()).await {
            request.set_parsed_query(ExecutableDocument::clone(&document));
            return;
        }
        if let Ok(document) = request.parsed_query() {
            let document = Arc::new(document.clone());
            self.parsed
                .insert(Arc::from(request.query.as_str()), document)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_repeated_document_is_taken_from_the_cache() {
        let documents = Documents::new();
        let text = "query Q($id: ID!) { contact(id: $id) { id name } }";
        let mut first = async_graphql::Request::new(text);
        documents.prepare(&mut first).await;
        documents.parsed.run_pending_tasks().await;
        assert_eq!(documents.parsed.entry_count(), 1);

        // What the cache holds for the text is what the next request gets, unparsed.
        let other = async_graphql::parser::parse_query("{ marker }").expect("parses");
        documents
            .parsed
            .insert(Arc::from(text), Arc::new(other))
            .await;
        let mut second = async_graphql::Request::new(text);
        documents.prepare(&mut second).await;
        let document = format!("{:?}", second.parsed_query().expect("from the cache"));
        assert!(document.contains("marker"), "{document}");
    }

    #[tokio::test]
    async fn a_document_that_does_not_parse_is_not_kept() {
        let documents = Documents::new();
        let mut request = async_graphql::Request::new("{ contact(");
        documents.prepare(&mut request).await;
        documents.parsed.run_pending_tasks().await;
        assert_eq!(documents.parsed.entry_count(), 0);
        assert!(request.parsed_query().is_err());
    }
}
