//! How one call goes out: the circuit breaker and the rate limiter before every attempt, the
//! request itself, and the retry loop with its backoff, deadline and one refresh after a 401.

use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, header};
use secrecy::{ExposeSecret, SecretString};

use super::{AccessToken, AmoClient, TokenKind, classify, trust};
use crate::amocrm::limiter::{Permit, Priority};
use crate::amocrm::{AmoError, MAX_URL_BYTES};
use crate::shared::limiter::{Grant, SharedSlot, WouldWaitTooLong};

/// Attempts of one call, the first included, for failures a retry can cure.
const MAX_ATTEMPTS: u32 = 3;
/// No call is retried past this, whatever its attempts.
const RETRY_DEADLINE: Duration = Duration::from_secs(20);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// The rate limit's permission for one call, held until it completes: dropping each part
/// starts its slot's last window.
#[derive(Default)]
struct Admission {
    _local: Option<Permit>,
    _shared: Option<SharedSlot>,
    _fallback: Option<Permit>,
}

/// A successful answer: the body (`None` for 204) and when amoCRM says it answered.
pub(super) struct Answer {
    pub(super) body: Option<Vec<u8>>,
    /// Unix seconds from amoCRM's `Date` header (or our clock when it has none), less the time
    /// the request took: no change after this can be missing from the answer.
    pub(super) upstream_time: i64,
}

/// One upstream call: what goes out, and which of its failures may be sent again.
pub(super) struct Call<'a> {
    pub(super) method: Method,
    /// The route template that logs and metrics name, never a concrete id.
    pub(super) endpoint: &'static str,
    pub(super) path: &'a str,
    pub(super) params: &'a [(String, String)],
    /// A JSON body; cheap to clone for each attempt.
    pub(super) body: Option<Bytes>,
    pub(super) priority: Priority,
    pub(super) retry: RetryPolicy,
}

/// Which failed attempts are tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RetryPolicy {
    /// Reads: anything a retry can cure (429, 5xx, timeouts, connection errors).
    Transient,
    /// Writes, which amoCRM cannot deduplicate: only failures that surely never reached it (a
    /// connection never made, a 429). After a timeout, a connection lost mid-call, a 5xx or
    /// an unreadable success the write may have been applied, so the call ends in
    /// [`AmoError::OutcomeUnknown`] instead.
    SurelyNotApplied,
}

impl RetryPolicy {
    pub(super) fn may_retry(self, error: &AmoError) -> bool {
        match self {
            RetryPolicy::Transient => error.is_retryable(),
            RetryPolicy::SurelyNotApplied => {
                matches!(error, AmoError::Connect | AmoError::RateLimited { .. })
            }
        }
    }

    /// The error a call ends with once it is not retried.
    pub(super) fn settle(self, error: AmoError) -> AmoError {
        match (self, error) {
            (
                RetryPolicy::SurelyNotApplied,
                cause @ (AmoError::Timeout(_)
                | AmoError::Transport
                | AmoError::Server { .. }
                | AmoError::Decode(_)),
            ) => AmoError::OutcomeUnknown {
                cause: Box::new(cause),
            },
            (_, error) => error,
        }
    }
}

impl AmoClient {
    /// Sends one GET and returns the body of a 2xx answer, or `None` for "no content".
    pub(super) async fn get(
        &self,
        token: &AccessToken,
        priority: Priority,
        endpoint: &'static str,
        path: &str,
        params: &[(String, String)],
    ) -> Result<Answer, AmoError> {
        self.call(
            token,
            Call {
                method: Method::GET,
                endpoint,
                path,
                params,
                body: None,
                priority,
                retry: RetryPolicy::Transient,
            },
        )
        .await
    }

    /// Sends a JSON body (POST or PATCH) at the foreground priority, under the write retry
    /// policy.
    pub(super) async fn write(
        &self,
        token: &AccessToken,
        method: Method,
        endpoint: &'static str,
        path: &str,
        body: Bytes,
    ) -> Result<Answer, AmoError> {
        self.call(
            token,
            Call {
                method,
                endpoint,
                path,
                params: &[],
                body: Some(body),
                priority: Priority::Foreground,
                retry: RetryPolicy::SurelyNotApplied,
            },
        )
        .await
    }

    /// One call, through the circuit breaker and the rate limiter, retried with backoff for
    /// the failures its [`RetryPolicy`] allows (never a 4xx other than 429). Every attempt
    /// passes the breaker and the limiter again.
    async fn call(&self, token: &AccessToken, call: Call<'_>) -> Result<Answer, AmoError> {
        let Call {
            ref method,
            endpoint,
            path,
            params,
            ref body,
            priority,
            retry,
        } = call;
        let deadline = tokio::time::Instant::now() + RETRY_DEADLINE;
        let url = self.url(path, params)?;
        let mut attempt = 1;
        let caller = token.caller(&self.token_key);
        // What amoCRM said of this token before, for forwarded tokens.
        let trust = self
            .trust
            .as_deref()
            .zip(token.fingerprint(&self.token_key));
        if let Some((trust, fingerprint)) = trust
            && trust.was_rejected(fingerprint)
        {
            return Err(trust::rejected_again());
        }
        // Under OAuth a 401 is answered by one refresh and one more try of the same call.
        let mut refreshed_after_401 = false;
        loop {
            let (bearer, generation) = token.bearer().await?;
            // Fail fast while the circuit is open, without queueing for the limiter.
            self.breaker.check()?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let mut unverified =
                trust.filter(|(trust, fingerprint)| !trust.is_accepted(*fingerprint));
            // One call of an unverified token at a time asks amoCRM; the token's other calls
            // wait for its answer instead of queueing with strangers, so a new client's first
            // burst costs one probation slot, not one each.
            let mut verifying = None;
            if let Some((trust, fingerprint)) = unverified {
                let gate = trust.gate(fingerprint).await;
                let turn = tokio::time::timeout(left, gate.lock_owned())
                    .await
                    .map_err(|_| AmoError::QueueTimeout {
                        rate: self.rate_limit,
                    })?;
                if trust.was_rejected(fingerprint) {
                    return Err(trust::rejected_again());
                }
                if trust.is_accepted(fingerprint) {
                    unverified = None;
                } else {
                    verifying = Some(turn);
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // Unverified tokens first pass their shared lane, then count as one caller.
            let probation = match unverified.and_then(|(trust, _)| trust.probation()) {
                Some(limiter) => {
                    Some(limiter.acquire(caller, priority, left).await.map_err(|_| {
                        AmoError::QueueTimeout {
                            rate: self.rate_limit,
                        }
                    })?)
                }
                None => None,
            };
            let lane = match unverified {
                Some(_) => trust::PROBATION_LANE,
                None => caller,
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // Held until the call completes: the limiter counts the slot from then on.
            let permit = self.admit(lane, priority, left).await?;
            // Admitted again now that the call really goes out: the circuit may have opened
            // while this call waited in the queue.
            let ticket = self.breaker.admit()?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let once = self.send_once(&bearer, method, endpoint, &url, body.clone());
            let outcome = match tokio::time::timeout(left, once).await {
                Ok(outcome) => outcome,
                Err(_) => Err(AmoError::Timeout(RETRY_DEADLINE)),
            };
            drop(permit);
            drop(probation);
            self.breaker.record(ticket, outcome.as_ref().map(|_| ()));
            if let Some((trust, fingerprint)) = trust {
                let accepted = match &outcome {
                    Ok(_) => Some(true),
                    Err(AmoError::Unauthorized { .. }) => Some(false),
                    Err(_) => None,
                };
                trust.learn(fingerprint, accepted).await;
            }
            drop(verifying);
            if let (Err(AmoError::Unauthorized { .. }), Some(generation), TokenKind::OAuth(source)) =
                (&outcome, generation, &token.kind)
                && !refreshed_after_401
            {
                tracing::info!(%method, endpoint, "amoCRM answered 401: refreshing the access token");
                source.refresh_after_401(generation).await?;
                refreshed_after_401 = true;
                continue;
            }
            let error = match outcome {
                Err(error) if retry.may_retry(&error) && attempt < MAX_ATTEMPTS => error,
                Err(error) => return Err(retry.settle(error)),
                ok => return ok,
            };
            let wait = match &error {
                AmoError::RateLimited {
                    retry_after: Some(after),
                } => *after,
                _ => backoff(attempt),
            };
            // Compared as durations: an instant plus whatever amoCRM asked for could overflow.
            if wait > deadline.saturating_duration_since(tokio::time::Instant::now()) {
                return Err(retry.settle(error));
            }
            tracing::info!(%error, attempt, ?wait, %method, endpoint, "retrying an amoCRM call");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Waits for the rate limit: this replica's queue, then (with Redis) a slot in the shared
    /// log, or this replica's share of the budget while Redis is unreachable. Everything
    /// returned is held until the call completes.
    async fn admit(
        &self,
        caller: u64,
        priority: Priority,
        left: Duration,
    ) -> Result<Admission, AmoError> {
        let refused = || AmoError::QueueTimeout {
            rate: self.rate_limit,
        };
        let Some(limiter) = &self.limiter else {
            return Ok(Admission::default());
        };
        let started = tokio::time::Instant::now();
        let local = limiter
            .acquire(caller, priority, left)
            .await
            .map_err(|_| refused())?;
        let Some((shared, fallback)) = &self.shared else {
            return Ok(Admission {
                _local: Some(local),
                ..Admission::default()
            });
        };
        let deadline = started + left.min(limiter.queue_timeout());
        match shared.acquire(deadline).await {
            Ok(Grant::Slot(slot)) => Ok(Admission {
                _local: Some(local),
                _shared: Some(slot),
                _fallback: None,
            }),
            Ok(Grant::Unavailable) => {
                // Slots Redis counted for this replica still count until their window ends.
                if let Some(quiet_from) = shared.quiet_from() {
                    if quiet_from > deadline {
                        return Err(refused());
                    }
                    tokio::time::sleep_until(quiet_from).await;
                }
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let fallback = fallback
                    .acquire(caller, priority, left)
                    .await
                    .map_err(|_| refused())?;
                Ok(Admission {
                    _local: Some(local),
                    _shared: None,
                    _fallback: Some(fallback),
                })
            }
            Err(WouldWaitTooLong) => Err(refused()),
        }
    }

    /// The URL of a call, refused before anything goes out when it is longer than any front
    /// proxy takes: the failure would be our request's, and its resets look like the upstream's.
    fn url(&self, path: &str, params: &[(String, String)]) -> Result<url::Url, AmoError> {
        let mut url = self.base_url.clone();
        url.set_path(path);
        if !params.is_empty() {
            url.query_pairs_mut().extend_pairs(params);
        }
        let bytes = url.as_str().len();
        if bytes > MAX_URL_BYTES {
            return Err(AmoError::RequestTooLong { bytes });
        }
        Ok(url)
    }

    /// `endpoint` is the route template that logs and metrics name.
    async fn send_once(
        &self,
        token: &SecretString,
        method: &Method,
        endpoint: &'static str,
        url: &url::Url,
        body: Option<Bytes>,
    ) -> Result<Answer, AmoError> {
        let started = std::time::Instant::now();
        let write = body.is_some();
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .bearer_auth(token.expose_secret())
            .header(header::ACCEPT, "application/hal+json, application/json");
        if let Some(body) = body {
            request = request
                .header(header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request.send().await.map_err(|e| {
            let error = classify::transport_error(&e, self.request_timeout);
            self.metrics
                .upstream_request(endpoint, error.transport_label(), started.elapsed());
            error
        })?;

        let status = response.status();
        let upstream_time = classify::upstream_time(response.headers(), started);
        let upstream_request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let outcome = classify::outcome(response, endpoint, self.request_timeout, write).await;

        self.metrics
            .upstream_request(endpoint, status.as_str(), started.elapsed());
        let elapsed_ms = started.elapsed().as_millis();
        match &outcome {
            Ok(_) => tracing::debug!(
                %method,
                endpoint,
                status = status.as_u16(),
                elapsed_ms,
                upstream_request_id,
                "amoCRM call"
            ),
            Err(error) => tracing::warn!(
                %method,
                endpoint,
                status = status.as_u16(),
                elapsed_ms,
                upstream_request_id,
                %error,
                "amoCRM call failed"
            ),
        }
        outcome.map(|body| Answer {
            body,
            upstream_time,
        })
    }
}

/// Exponential backoff with jitter: 250 ms, 500 ms, ... each scaled by a random 0.5..1.5, so
/// that callers failing together do not retry together.
fn backoff(attempt: u32) -> Duration {
    let base = FIRST_BACKOFF * 2u32.saturating_pow(attempt.saturating_sub(1));
    base.mul_f64(rand::random_range(0.5..1.5))
}
