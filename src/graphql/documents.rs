//! Parsed documents, kept by their text. Apps send the same few documents again and again with
//! other variables (Apollo, urql and Relay all do), and async-graphql's parser is the largest
//! single cost of a cold request (about 170 k of its 560 k instructions, measured with
//! callgrind): a cached document is cloned instead, for a fraction of that.
//!
//! Only documents that parsed and validated are kept, so malformed or invalid text costs no
//! room. The cache is weighed by document length and bounded, and its admission policy (moka's
//! TinyLFU) keeps a flood of one-off documents from pushing out the ones that recur.

use std::sync::Arc;

use async_graphql::ServerError;
use async_graphql::parser::types::ExecutableDocument;
use moka::future::Cache;

/// What the cache may hold, weighed as text length times [`AST_FACTOR`].
const CAPACITY_BYTES: u64 = 32 << 20;
/// What a parsed document takes on the heap, per byte of its text, at worst: every name,
/// position and selection is a node of its own, and `{a a a …}` spends about 200 bytes on each
/// two-byte field. Weighing by the worst case keeps the bound a bound.
const AST_FACTOR: u64 = 100;

#[derive(Clone)]
pub(super) struct Documents {
    parsed: Cache<Arc<str>, Arc<ExecutableDocument>>,
}

/// A request's document, and whether it came from the cache.
pub(super) enum Parsed {
    Cached,
    /// Parsed now: keep it with [`Documents::keep`] once it has validated.
    Fresh(Arc<ExecutableDocument>),
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

    /// Gives `request` its parsed document, from the cache or parsed now (once).
    pub(super) async fn prepare(
        &self,
        request: &mut async_graphql::Request,
    ) -> Result<Parsed, ServerError> {
        if let Some(document) = self.parsed.get(request.query.as_str()).await {
            request.set_parsed_query(ExecutableDocument::clone(&document));
            return Ok(Parsed::Cached);
        }
        let document = async_graphql::parser::parse_query(&request.query)?;
        request.set_parsed_query(document.clone());
        Ok(Parsed::Fresh(Arc::new(document)))
    }

    /// Keeps a document that parsed and validated, under its text.
    pub(super) async fn keep(&self, text: &str, document: Arc<ExecutableDocument>) {
        self.parsed.insert(Arc::from(text), document).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_kept_document_is_taken_from_the_cache() {
        let documents = Documents::new();
        let text = "query Q($id: ID!) { contact(id: $id) { id name } }";
        let mut first = async_graphql::Request::new(text);
        let Ok(Parsed::Fresh(document)) = documents.prepare(&mut first).await else {
            panic!("a new document is parsed");
        };
        documents.parsed.run_pending_tasks().await;
        assert_eq!(
            documents.parsed.entry_count(),
            0,
            "kept only once validated"
        );
        documents.keep(text, document).await;

        // What the cache holds for the text is what the next request gets, unparsed.
        let other = async_graphql::parser::parse_query("{ marker }").expect("parses");
        documents
            .parsed
            .insert(Arc::from(text), Arc::new(other))
            .await;
        let mut second = async_graphql::Request::new(text);
        assert!(matches!(
            documents.prepare(&mut second).await,
            Ok(Parsed::Cached)
        ));
        let document = format!("{:?}", second.parsed_query().expect("from the cache"));
        assert!(document.contains("marker"), "{document}");
    }

    #[tokio::test]
    async fn a_document_that_does_not_parse_is_an_error() {
        let documents = Documents::new();
        let mut request = async_graphql::Request::new("{ contact(");
        assert!(documents.prepare(&mut request).await.is_err());
        documents.parsed.run_pending_tasks().await;
        assert_eq!(documents.parsed.entry_count(), 0);
    }
}
