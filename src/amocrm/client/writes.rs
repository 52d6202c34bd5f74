//! The write calls: contacts created and changed in batches, links, and the field definitions
//! a writer needs. Batches go out one after another, each all-or-nothing at amoCRM, and their
//! answers are matched to the input by the `request_id` each item carries.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use reqwest::Method;
use serde_json::Value;

use super::{AccessToken, AmoClient, CONTACTS_ENDPOINT};
use crate::amocrm::limiter::Priority;
use crate::amocrm::writes::{
    self, Answered, BatchItem, ContactChange, ContactDraft, FieldDefinition, LinkTarget,
    UpdatedContact, WRITE_BATCH, WriteError,
};
use crate::amocrm::{AmoError, Problem};

const CUSTOM_FIELDS_ENDPOINT: &str = "/api/v4/contacts/custom_fields";
const LINK_ENDPOINT: &str = "/api/v4/contacts/{id}/link";
const UNLINK_ENDPOINT: &str = "/api/v4/contacts/{id}/unlink";
/// amoCRM's own page size bound for field definitions.
const FIELDS_PAGE_SIZE: u32 = 250;
/// A bound for a broken upstream that links next pages forever; accounts have far fewer
/// fields than 20 pages hold even at 50 a page.
const MAX_FIELD_PAGES: u32 = 20;

/// What a batched write makes of amoCRM's answer for one of its items.
trait Written: BatchItem {
    type Output;

    /// Whether an answered item that echoed no `request_id` is surely this one.
    fn is_answered_by(&self, _answered: &Answered) -> bool {
        false
    }

    /// `answered_at` is when amoCRM answered, for answers that leave out `updated_at`.
    fn output(&self, answered: &Answered, answered_at: i64) -> Self::Output;
}

impl Written for ContactDraft {
    type Output = u64;

    fn output(&self, answered: &Answered, _answered_at: i64) -> u64 {
        answered.id
    }
}

impl Written for ContactChange {
    type Output = UpdatedContact;

    /// amoCRM's documented PATCH answer holds no `request_id`, but the id it changed.
    fn is_answered_by(&self, answered: &Answered) -> bool {
        answered.request_id.is_none() && answered.id == self.id
    }

    fn output(&self, answered: &Answered, answered_at: i64) -> UpdatedContact {
        UpdatedContact {
            id: answered.id,
            updated_at: answered.updated_at.unwrap_or(answered_at),
        }
    }
}

/// How one batch ended, for the batches after it.
enum BatchEnd {
    Settled,
    /// Part of it may have been applied: later batches are not sent.
    OutcomeUnknown,
}

impl AmoClient {
    /// Creates contacts (`POST /api/v4/contacts`): one result per draft, in input order, the
    /// new contact's id or why there is none. Drafts go out in batches of [`WRITE_BATCH`],
    /// one after another. A batch amoCRM refuses as invalid applies nothing, so it is sent
    /// once more without the drafts amoCRM named. After a batch whose outcome is unknown the
    /// later ones are not sent ([`WriteError::NotSent`]).
    pub async fn create_contacts(
        &self,
        token: &AccessToken,
        drafts: &[ContactDraft],
    ) -> Vec<Result<u64, WriteError>> {
        self.write_batches(token, Method::POST, drafts).await
    }

    /// Changes contacts (`PATCH /api/v4/contacts`), batched and matched like
    /// [`AmoClient::create_contacts`]. amoCRM answers only the id and the new `updated_at`:
    /// read the contact again to see the result.
    pub async fn update_contacts(
        &self,
        token: &AccessToken,
        changes: &[ContactChange],
    ) -> Vec<Result<UpdatedContact, WriteError>> {
        self.write_batches(token, Method::PATCH, changes).await
    }

    /// Links a contact to leads, companies, customers or catalog elements
    /// (`POST /api/v4/contacts/{id}/link`).
    pub async fn link_contact(
        &self,
        token: &AccessToken,
        contact_id: u64,
        targets: &[LinkTarget],
    ) -> Result<(), AmoError> {
        let path = format!("/api/v4/contacts/{contact_id}/link");
        self.send_links(token, LINK_ENDPOINT, &path, targets).await
    }

    /// Unlinks a contact (`POST /api/v4/contacts/{id}/unlink`, which answers 204).
    pub async fn unlink_contact(
        &self,
        token: &AccessToken,
        contact_id: u64,
        targets: &[LinkTarget],
    ) -> Result<(), AmoError> {
        let path = format!("/api/v4/contacts/{contact_id}/unlink");
        self.send_links(token, UNLINK_ENDPOINT, &path, targets)
            .await
    }

    /// The custom fields of contacts (`GET /api/v4/contacts/custom_fields`), every page.
    pub async fn contact_custom_fields(
        &self,
        token: &AccessToken,
        priority: Priority,
    ) -> Result<Vec<FieldDefinition>, AmoError> {
        let mut fields = Vec::new();
        for page in 1..=MAX_FIELD_PAGES {
            let params = [
                ("limit".to_owned(), FIELDS_PAGE_SIZE.to_string()),
                ("page".to_owned(), page.to_string()),
            ];
            let answer = self
                .get(
                    token,
                    priority,
                    CUSTOM_FIELDS_ENDPOINT,
                    CUSTOM_FIELDS_ENDPOINT,
                    &params,
                )
                .await?;
            let Some(body) = answer.body else { break };
            let (listed, has_next_link) = writes::decode_field_definitions(&body)?;
            // `_links.next` has been seen on last pages too: an empty page ends the list.
            let empty = listed.is_empty();
            fields.extend(listed);
            if empty || !has_next_link {
                break;
            }
        }
        Ok(fields)
    }

    async fn send_links(
        &self,
        token: &AccessToken,
        endpoint: &'static str,
        path: &str,
        targets: &[LinkTarget],
    ) -> Result<(), AmoError> {
        if targets.is_empty() {
            return Ok(());
        }
        let body = serde_json::to_vec(targets)
            .map_err(|e| AmoError::Decode(format!("a link could not be encoded: {e}")))?;
        self.write(token, Method::POST, endpoint, path, Bytes::from(body))
            .await
            .map(|_| ())
    }

    async fn write_batches<T: Written>(
        &self,
        token: &AccessToken,
        method: Method,
        items: &[T],
    ) -> Vec<Result<T::Output, WriteError>> {
        let mut results = Vec::with_capacity(items.len());
        let mut unknown = false;
        for batch in items.chunks(WRITE_BATCH) {
            if unknown {
                results.extend(batch.iter().map(|_| Err(WriteError::NotSent)));
                continue;
            }
            let (outcomes, end) = self.write_batch(token, method.clone(), batch).await;
            results.extend(outcomes);
            unknown = matches!(end, BatchEnd::OutcomeUnknown);
        }
        results
    }

    /// One batch: its items' results in order, and whether later batches may go out.
    async fn write_batch<T: Written>(
        &self,
        token: &AccessToken,
        method: Method,
        batch: &[T],
    ) -> (Vec<Result<T::Output, WriteError>>, BatchEnd) {
        let mut results: Vec<Option<Result<T::Output, WriteError>>> =
            batch.iter().map(|_| None).collect();
        // Indexes into `batch`, which are also the items' request ids, kept when resending so
        // that answers always name the input.
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        let mut resent = false;
        let end = loop {
            let wire = Value::Array(pending.iter().map(|&i| batch[i].to_wire(i)).collect());
            let body = Bytes::from(wire.to_string());
            let failure = match self
                .write(
                    token,
                    method.clone(),
                    CONTACTS_ENDPOINT,
                    CONTACTS_ENDPOINT,
                    body,
                )
                .await
            {
                Ok(answer) => {
                    let answered = answer
                        .body
                        .map_or_else(|| Ok(Vec::new()), |body| writes::decode_written(&body));
                    match answered {
                        Ok(answered) => {
                            settle(
                                batch,
                                &pending,
                                &answered,
                                answer.upstream_time,
                                &mut results,
                            );
                            break BatchEnd::Settled;
                        }
                        // Applied, but which ids it got is lost.
                        Err(cause) => AmoError::OutcomeUnknown {
                            cause: Box::new(cause),
                        },
                    }
                }
                Err(AmoError::Invalid(rejections)) => {
                    if let Some(named) = name_rejected(&rejections, &pending) {
                        for (i, problems) in named {
                            results[i] = Some(Err(WriteError::Invalid(problems)));
                        }
                        pending.retain(|&i| results[i].is_none());
                        if pending.is_empty() {
                            break BatchEnd::Settled;
                        }
                        // Nothing of a refused batch was applied: the rest is safe to send
                        // again, once.
                        if !resent {
                            resent = true;
                            continue;
                        }
                    }
                    AmoError::Invalid(rejections)
                }
                Err(error) => error,
            };
            let end = match failure {
                AmoError::OutcomeUnknown { .. } => BatchEnd::OutcomeUnknown,
                _ => BatchEnd::Settled,
            };
            let failure = Arc::new(failure);
            for &i in &pending {
                results[i] = Some(Err(WriteError::Failed(Arc::clone(&failure))));
            }
            break end;
        };
        let results = results
            .into_iter()
            .map(|result| result.unwrap_or(Err(WriteError::NotSent)))
            .collect();
        (results, end)
    }
}

/// Gives each pending item the answered item that names it. An item amoCRM's 200 does not
/// mention may still have been applied.
fn settle<T: Written>(
    batch: &[T],
    pending: &[usize],
    answered: &[Answered],
    answered_at: i64,
    results: &mut [Option<Result<T::Output, WriteError>>],
) {
    let by_request_id: HashMap<&str, &Answered> = answered
        .iter()
        .filter_map(|a| Some((a.request_id.as_deref()?, a)))
        .collect();
    let mut unmentioned = None;
    for &i in pending {
        let item = &batch[i];
        let found = by_request_id
            .get(i.to_string().as_str())
            .copied()
            .or_else(|| answered.iter().find(|a| item.is_answered_by(a)));
        results[i] = Some(match found {
            Some(answered) => Ok(item.output(answered, answered_at)),
            None => Err(WriteError::Failed(Arc::clone(
                unmentioned.get_or_insert_with(|| {
                    Arc::new(AmoError::OutcomeUnknown {
                        cause: Box::new(AmoError::Decode(
                            "amoCRM's answer does not mention the item".to_owned(),
                        )),
                    })
                }),
            ))),
        });
    }
}

/// The problems of each pending item a refusal names, by index into the batch; `None` when
/// any of its entries names no item that was sent, since then which items are at fault is
/// unknown.
fn name_rejected(
    rejections: &[crate::amocrm::Rejection],
    pending: &[usize],
) -> Option<Vec<(usize, Vec<Problem>)>> {
    let mut named: Vec<(usize, Vec<Problem>)> = Vec::new();
    for rejection in rejections {
        let index: usize = rejection.request_id.as_deref()?.trim().parse().ok()?;
        if !pending.contains(&index) {
            return None;
        }
        match named.iter_mut().find(|(i, _)| *i == index) {
            Some((_, problems)) => problems.extend(rejection.problems.iter().cloned()),
            None => named.push((index, rejection.problems.clone())),
        }
    }
    (!named.is_empty()).then_some(named)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use axum::http::{HeaderMap, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};
    use serde_json::json;

    use super::*;
    use crate::amocrm::ClientConfig;
    use crate::amocrm::writes::{FieldRef, FieldWrite, LinkKind, TagRef};
    use crate::metrics::Metrics;

    /// What the test server received.
    #[derive(Debug, Clone)]
    struct Received {
        method: String,
        path: String,
        query: Option<String>,
        content_type: Option<String>,
        body: Value,
    }

    /// Answers the n-th request (from 0); `None` leaves it unanswered.
    type Script = dyn Fn(usize, &Received) -> Option<Response> + Send + Sync;

    /// An upstream on a port of its own that records every request; stops on drop.
    struct Upstream {
        base_url: url::Url,
        received: Arc<Mutex<Vec<Received>>>,
        server: tokio::task::JoinHandle<()>,
    }

    impl Drop for Upstream {
        fn drop(&mut self) {
            self.server.abort();
        }
    }

    impl Upstream {
        async fn start(
            script: impl Fn(usize, &Received) -> Option<Response> + Send + Sync + 'static,
        ) -> Upstream {
            let received = Arc::new(Mutex::new(Vec::new()));
            let script: Arc<Script> = Arc::new(script);
            let log = Arc::clone(&received);
            let app = axum::Router::new().fallback(
                move |method: axum::http::Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                    let log = Arc::clone(&log);
                    let script = Arc::clone(&script);
                    async move {
                        let request = Received {
                            method: method.to_string(),
                            path: uri.path().to_owned(),
                            query: uri.query().map(str::to_owned),
                            content_type: headers
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned),
                            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                        };
                        let n = {
                            let mut log = log.lock().expect("not poisoned");
                            log.push(request.clone());
                            log.len() - 1
                        };
                        match script(n, &request) {
                            Some(response) => response,
                            None => std::future::pending().await,
                        }
                    }
                },
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("binds");
            let address = listener.local_addr().expect("has an address");
            let server = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            Upstream {
                base_url: url::Url::parse(&format!("http://{address}")).expect("valid"),
                received,
                server,
            }
        }

        fn received(&self) -> Vec<Received> {
            self.received.lock().expect("not poisoned").clone()
        }
    }

    fn client_for(base_url: url::Url, metrics: Metrics) -> AmoClient {
        AmoClient::new(
            ClientConfig {
                base_url,
                connect_timeout: Duration::from_secs(2),
                request_timeout: Duration::from_millis(500),
                rate_limit: None,
                replicas_hint: 1,
                shared_limiter: None,
                queue_timeout: Duration::from_secs(5),
                shared_token: true,
            },
            metrics,
        )
        .expect("builds")
    }

    fn token() -> AccessToken {
        AccessToken::new("test-token")
    }

    fn hal(body: Value) -> Response {
        (
            StatusCode::OK,
            [("content-type", "application/hal+json")],
            body.to_string(),
        )
            .into_response()
    }

    fn problem(body: Value) -> Response {
        (
            StatusCode::BAD_REQUEST,
            [("content-type", "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }

    /// amoCRM's create answer for what was sent, listed in reverse so that matching by
    /// position would fail: each id is `base` plus the item's request id.
    fn created(request: &Received, base: u64) -> Response {
        let items: Vec<Value> = request
            .body
            .as_array()
            .map(|items| items.iter().rev().cloned().collect())
            .unwrap_or_default();
        let contacts: Vec<Value> = items
            .iter()
            .map(|item| {
                let request_id = item["request_id"].as_str().unwrap_or_default().to_owned();
                let id = base + request_id.parse::<u64>().unwrap_or(999);
                json!({"id": id, "request_id": request_id,
                       "_links": {"self": {"href": format!("https://x.amocrm.ru/api/v4/contacts/{id}")}}})
            })
            .collect();
        hal(
            json!({"_links": {"self": {"href": "https://x.amocrm.ru/api/v4/contacts"}},
                   "_embedded": {"contacts": contacts}}),
        )
    }

    fn named(name: &str) -> ContactDraft {
        ContactDraft {
            name: Some(name.to_owned()),
            ..ContactDraft::default()
        }
    }

    fn request_ids(request: &Received) -> Vec<String> {
        request
            .body
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|item| item["request_id"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn writes_retry_only_what_surely_never_reached_amocrm() {
        let write = crate::amocrm::client::execute::RetryPolicy::SurelyNotApplied;
        let read = crate::amocrm::client::execute::RetryPolicy::Transient;
        assert!(write.may_retry(&AmoError::Connect));
        assert!(write.may_retry(&AmoError::RateLimited { retry_after: None }));
        for lost in [
            AmoError::Timeout(Duration::from_secs(1)),
            AmoError::Transport,
            AmoError::Server { status: 502 },
            AmoError::Decode("cut".to_owned()),
        ] {
            assert!(!write.may_retry(&lost), "{lost:?}");
            let settled = write.settle(lost);
            assert!(
                matches!(settled, AmoError::OutcomeUnknown { .. }),
                "{settled:?}"
            );
        }
        for answered in [
            AmoError::BadRequest { detail: None },
            AmoError::Invalid(Vec::new()),
            AmoError::Unauthorized { detail: None },
        ] {
            assert!(!write.may_retry(&answered));
            assert!(!matches!(
                write.settle(answered),
                AmoError::OutcomeUnknown { .. }
            ));
        }
        // A refusal is an answer about our data, a lost write one about amoCRM.
        assert!(!AmoError::Invalid(Vec::new()).counts_against_upstream());
        assert!(
            AmoError::OutcomeUnknown {
                cause: Box::new(AmoError::Transport)
            }
            .counts_against_upstream()
        );
        // Reads keep retrying anything transient, and their errors stay as they were.
        assert!(read.may_retry(&AmoError::Server { status: 502 }));
        assert!(read.may_retry(&AmoError::Timeout(Duration::from_secs(1))));
        assert!(matches!(
            read.settle(AmoError::Server { status: 502 }),
            AmoError::Server { status: 502 }
        ));
    }

    #[tokio::test]
    async fn drafts_go_out_in_batches_of_fifty_and_come_back_in_input_order() {
        let upstream =
            Upstream::start(|n, request| Some(created(request, 1000 * (n as u64 + 1)))).await;
        let client = client_for(upstream.base_url.clone(), Metrics::new());
        let drafts: Vec<ContactDraft> = (0..120).map(|i| named(&format!("c{i}"))).collect();

        let results = client.create_contacts(&token(), &drafts).await;

        let ids: Vec<u64> = results.into_iter().map(|r| r.expect("created")).collect();
        let expected: Vec<u64> = (0..120u64).map(|i| 1000 * (i / 50 + 1) + i % 50).collect();
        assert_eq!(ids, expected);
        let received = upstream.received();
        assert_eq!(
            received
                .iter()
                .map(|r| request_ids(r).len())
                .collect::<Vec<_>>(),
            [50, 50, 20]
        );
        for request in &received {
            assert_eq!(request.method, "POST");
            assert_eq!(request.path, "/api/v4/contacts");
            assert_eq!(request.content_type.as_deref(), Some("application/json"));
        }
        assert_eq!(
            request_ids(&received[2]),
            (0..20).map(|i| i.to_string()).collect::<Vec<_>>()
        );
        assert_eq!(
            received[1].body[0],
            json!({"name": "c50", "request_id": "0"})
        );
    }

    #[tokio::test]
    async fn a_refused_batch_is_sent_again_without_the_items_amocrm_named() {
        let upstream = Upstream::start(|n, request| {
            Some(match n {
                0 => problem(json!({
                    "validation-errors": [{"request_id": "1", "errors": [{
                        "code": "NotSupportedChoice",
                        "path": "custom_fields_values.0.field_id",
                        "detail": "The value you selected is not a valid choice."}]}],
                    "title": "Bad Request", "type": "https://httpstatus.es/400",
                    "status": 400, "detail": "Request validation failed"})),
                _ => created(request, 100),
            })
        })
        .await;
        let client = client_for(upstream.base_url.clone(), Metrics::new());
        let mut bad = named("b");
        bad.custom_fields = vec![FieldWrite {
            field: FieldRef::Id(1),
            values: None,
        }];
        let drafts = [named("a"), bad, named("c")];

        let results = client.create_contacts(&token(), &drafts).await;

        assert!(matches!(results[0], Ok(100)), "{results:?}");
        match &results[1] {
            Err(WriteError::Invalid(problems)) => {
                assert_eq!(
                    problems,
                    &[Problem {
                        code: "NotSupportedChoice".to_owned(),
                        path: "custom_fields_values.0.field_id".to_owned(),
                        detail: Some("The value you selected is not a valid choice.".to_owned()),
                    }]
                );
            }
            other => panic!("expected the item to be refused, got {other:?}"),
        }
        assert!(matches!(results[2], Ok(102)), "{results:?}");
        let received = upstream.received();
        assert_eq!(received.len(), 2);
        assert_eq!(request_ids(&received[0]), ["0", "1", "2"]);
        // Resent under the request ids they first had, so the answer names the input.
        assert_eq!(request_ids(&received[1]), ["0", "2"]);
    }

    #[tokio::test]
    async fn a_refusal_that_names_no_item_fails_the_whole_batch_unsent_again() {
        let upstream = Upstream::start(|_, _| {
            Some(problem(json!({"validation-errors": [{"errors": [
                {"code": "FieldMissing", "path": "currency", "detail": "This field is missing."}]}]})))
        })
        .await;
        let client = client_for(upstream.base_url.clone(), Metrics::new());

        let results = client
            .create_contacts(&token(), &[named("a"), named("b")])
            .await;

        for result in &results {
            match result {
                Err(WriteError::Failed(error)) => {
                    assert!(matches!(**error, AmoError::Invalid(_)), "{error:?}")
                }
                other => panic!("expected the batch to fail, got {other:?}"),
            }
        }
        assert_eq!(upstream.received().len(), 1);
    }

    #[tokio::test]
    async fn a_5xx_is_not_retried_and_stops_the_later_batches() {
        let upstream = Upstream::start(|_, _| Some(StatusCode::BAD_GATEWAY.into_response())).await;
        let client = client_for(upstream.base_url.clone(), Metrics::new());
        let drafts: Vec<ContactDraft> = (0..51).map(|i| named(&format!("c{i}"))).collect();

        let results = client.create_contacts(&token(), &drafts).await;

        for result in &results[..50] {
            match result {
                Err(WriteError::Failed(error)) => assert!(
                    matches!(**error, AmoError::OutcomeUnknown { ref cause }
                        if matches!(**cause, AmoError::Server { status: 502 })),
                    "{error:?}"
                ),
                other => panic!("expected an unknown outcome, got {other:?}"),
            }
        }
        assert!(
            matches!(results[50], Err(WriteError::NotSent)),
            "{:?}",
            results[50]
        );
        assert_eq!(upstream.received().len(), 1);
    }

    #[tokio::test]
    async fn a_timed_out_write_is_not_retried() {
        let upstream = Upstream::start(|_, _| None).await;
        let client = client_for(upstream.base_url.clone(), Metrics::new());

        let result = client
            .link_contact(
                &token(),
                7,
                &[LinkTarget {
                    kind: LinkKind::Companies,
                    id: 1,
                    catalog_id: None,
                    quantity: None,
                    price_id: None,
                }],
            )
            .await;

        assert!(
            matches!(result, Err(AmoError::OutcomeUnknown { ref cause })
                if matches!(**cause, AmoError::Timeout(_))),
            "{result:?}"
        );
        assert_eq!(upstream.received().len(), 1);
    }

    #[tokio::test]
    async fn a_429_is_retried_since_amocrm_applied_nothing() {
        let upstream = Upstream::start(|n, request| {
            Some(match n {
                0 => (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "0")],
                    "<html>",
                )
                    .into_response(),
                _ => created(request, 500),
            })
        })
        .await;
        let client = client_for(upstream.base_url.clone(), Metrics::new());

        let results = client.create_contacts(&token(), &[named("a")]).await;

        assert!(matches!(results[..], [Ok(500)]), "{results:?}");
        assert_eq!(upstream.received().len(), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_is_retried() {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("binds")
            .port();
        let metrics = Metrics::new();
        let base_url = url::Url::parse(&format!("http://127.0.0.1:{port}")).expect("valid");
        let client = client_for(base_url, metrics.clone());

        let result = client
            .unlink_contact(
                &token(),
                7,
                &[LinkTarget {
                    kind: LinkKind::Leads,
                    id: 1,
                    catalog_id: None,
                    quantity: None,
                    price_id: None,
                }],
            )
            .await;

        assert!(matches!(result, Err(AmoError::Connect)), "{result:?}");
        let attempts = r#"gateway_upstream_requests_total{endpoint="/api/v4/contacts/{id}/unlink",status="connect"} 3"#;
        assert!(metrics.render().contains(attempts), "{}", metrics.render());
    }

    #[tokio::test]
    async fn changes_are_patched_and_matched_by_id_when_amocrm_echoes_no_request_id() {
        let upstream = Upstream::start(|_, request| {
            // The documented answer: ids, names and times, no request ids, in another order.
            let contacts: Vec<Value> = request
                .body
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .rev()
                        .map(
                            |item| json!({"id": item["id"], "name": "x", "updated_at": 1590945248}),
                        )
                        .collect()
                })
                .unwrap_or_default();
            Some(hal(json!({"_embedded": {"contacts": contacts}})))
        })
        .await;
        let client = client_for(upstream.base_url.clone(), Metrics::new());
        let changes = [
            ContactChange {
                id: 3,
                tags_to_add: vec![TagRef::Name("vip".to_owned())],
                ..ContactChange::default()
            },
            ContactChange {
                id: 4,
                last_name: Some("Петров".to_owned()),
                ..ContactChange::default()
            },
        ];

        let results = client.update_contacts(&token(), &changes).await;

        let updated: Vec<UpdatedContact> =
            results.into_iter().map(|r| r.expect("updated")).collect();
        assert_eq!(
            updated,
            [
                UpdatedContact {
                    id: 3,
                    updated_at: 1590945248
                },
                UpdatedContact {
                    id: 4,
                    updated_at: 1590945248
                }
            ]
        );
        let received = upstream.received();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].method, "PATCH");
        assert_eq!(
            received[0].body,
            json!([
                {"id": 3, "tags_to_add": [{"name": "vip"}], "request_id": "0"},
                {"id": 4, "last_name": "Петров", "request_id": "1"}
            ])
        );
    }

    #[tokio::test]
    async fn an_item_the_answer_does_not_mention_has_an_unknown_outcome() {
        let upstream = Upstream::start(|_, _| {
            Some(hal(
                json!({"_embedded": {"contacts": [{"id": 1, "request_id": "0"}]}}),
            ))
        })
        .await;
        let client = client_for(upstream.base_url.clone(), Metrics::new());

        let results = client
            .create_contacts(&token(), &[named("a"), named("b")])
            .await;

        assert!(matches!(results[0], Ok(1)), "{results:?}");
        assert!(
            matches!(&results[1], Err(WriteError::Failed(e)) if matches!(**e, AmoError::OutcomeUnknown { .. })),
            "{results:?}"
        );
    }

    #[tokio::test]
    async fn links_and_unlinks_post_their_targets_and_unlink_answers_no_content() {
        let upstream = Upstream::start(|_, request| {
            Some(if request.path.ends_with("/unlink") {
                StatusCode::NO_CONTENT.into_response()
            } else {
                hal(
                    json!({"_total_items": 1, "_embedded": {"links": [{"entity_id": 7,
                    "entity_type": "contacts", "to_entity_id": 10,
                    "to_entity_type": "catalog_elements",
                    "metadata": {"quantity": 2, "catalog_id": 1026}}]}}),
                )
            })
        })
        .await;
        let client = client_for(upstream.base_url.clone(), Metrics::new());
        let targets = [LinkTarget {
            kind: LinkKind::CatalogElements,
            id: 10,
            catalog_id: Some(1026),
            quantity: Some(2.0),
            price_id: None,
        }];

        client
            .link_contact(&token(), 7, &targets)
            .await
            .expect("linked");
        client
            .unlink_contact(&token(), 7, &targets)
            .await
            .expect("unlinked");

        let received = upstream.received();
        let sent = json!([{"to_entity_id": 10, "to_entity_type": "catalog_elements",
                           "metadata": {"catalog_id": 1026, "quantity": 2.0}}]);
        assert_eq!(received[0].path, "/api/v4/contacts/7/link");
        assert_eq!(received[0].body, sent);
        assert_eq!(received[1].path, "/api/v4/contacts/7/unlink");
        assert_eq!(received[1].body, sent);
    }

    #[tokio::test]
    async fn a_refused_link_says_what_amocrm_refused() {
        let upstream = Upstream::start(|_, _| {
            Some(problem(
                json!({"validation-errors": [{"request_id": "0", "errors": [
                {"code": "NotSupportedChoice", "path": "0.to_entity_id"}]}],
                "status": 400, "detail": "Request validation failed"}),
            ))
        })
        .await;
        let client = client_for(upstream.base_url.clone(), Metrics::new());

        let result = client
            .link_contact(
                &token(),
                7,
                &[LinkTarget {
                    kind: LinkKind::Leads,
                    id: 1,
                    catalog_id: None,
                    quantity: None,
                    price_id: None,
                }],
            )
            .await;

        match result {
            Err(AmoError::Invalid(rejections)) => {
                assert_eq!(rejections[0].problems[0].path, "0.to_entity_id")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(upstream.received().len(), 1);
    }

    #[tokio::test]
    async fn field_definitions_are_read_page_by_page() {
        let upstream = Upstream::start(|n, _| {
            Some(match n {
                0 => hal(json!({"_page": 1,
                    "_links": {"next": {"href": "https://x.amocrm.ru/api/v4/contacts/custom_fields?limit=250&page=2"}},
                    "_embedded": {"custom_fields": [{"id": 1, "name": "Phone", "type": "multitext",
                        "code": "PHONE", "sort": 4, "enums": [{"id": 11, "value": "WORK", "sort": 2}]}]}})),
                1 => hal(json!({"_page": 2,
                    "_links": {"next": {"href": "https://x.amocrm.ru/api/v4/contacts/custom_fields?limit=250&page=3"}},
                    "_embedded": {"custom_fields": [{"id": 2, "name": "Notes", "type": "textarea",
                        "code": null, "sort": 5, "enums": null}]}})),
                _ => StatusCode::NO_CONTENT.into_response(),
            })
        })
        .await;
        let client = client_for(upstream.base_url.clone(), Metrics::new());

        let fields = client
            .contact_custom_fields(&token(), Priority::Foreground)
            .await
            .expect("read");

        assert_eq!(fields.iter().map(|f| f.id).collect::<Vec<_>>(), [1, 2]);
        let received = upstream.received();
        assert_eq!(received.len(), 3);
        for (n, request) in received.iter().enumerate() {
            assert_eq!(request.method, "GET");
            assert_eq!(request.path, "/api/v4/contacts/custom_fields");
            assert_eq!(
                request.query.as_deref(),
                Some(format!("limit=250&page={}", n + 1).as_str())
            );
        }
    }
}
