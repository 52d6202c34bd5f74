//! What an amoCRM answer means: the status, a 204 or an empty 200, a problem+json body,
//! `Retry-After`, the `Date` the answer was given at, and transport failures, each turned into
//! a body or an [`AmoError`]. Which of those errors are retried, transient or held against the
//! upstream is [`AmoError`]'s to say; this file only decides which error an answer is.

use std::time::Duration;

use reqwest::{StatusCode, header};

use crate::amocrm::{AmoError, ForbiddenReason, Problem, Rejection};

/// The longest `Retry-After` taken as sent (a day); longer ones count as a day.
const MAX_RETRY_AFTER_SECS: u64 = 24 * 60 * 60;

/// Bodies larger than this are refused rather than buffered. The largest honest page, 250
/// contacts with every relation, is 370 KiB from the fake (measured); ten times that leaves
/// room for accounts with many custom fields, and bounds what one answer can cost in memory
/// (a 31 MiB page under the former 32 MiB cap took 3.5 GB to decode).
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Error bodies are only read for their short problem text.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// Problem details are shown to clients; a long one is cut, not forwarded whole.
const MAX_DETAIL_CHARS: usize = 300;

/// The body of a 2xx answer (`None` for "no content"), or the error a failed answer means.
/// `endpoint` is the route template that logs and errors name. `write` says the call sent
/// data: only then does a 400 name items amoCRM refused (`validation-errors`).
pub(super) async fn outcome(
    response: reqwest::Response,
    endpoint: &'static str,
    request_timeout: Duration,
    write: bool,
) -> Result<Option<Vec<u8>>, AmoError> {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"));

    if status == StatusCode::NO_CONTENT {
        Ok(None)
    } else if status.is_success() {
        match read_capped(response, MAX_BODY_BYTES).await {
            Ok(body) if body.is_empty() => {
                tracing::warn!(endpoint, "amoCRM answered 200 with an empty body");
                Ok(None)
            }
            Ok(body) => Ok(Some(body)),
            Err(e) => Err(body_error(e, request_timeout)),
        }
    } else {
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            // Any wait past the retry deadline means "not now"; capping it keeps every later
            // sum of instants and durations far from overflow, whatever the header says.
            .map(|secs| Duration::from_secs(secs.min(MAX_RETRY_AFTER_SECS)));
        // A batch's validation errors can name every item: read them like a page.
        let cap = if write && status == StatusCode::BAD_REQUEST {
            MAX_BODY_BYTES
        } else {
            MAX_ERROR_BODY_BYTES
        };
        let body = read_capped(response, cap).await.unwrap_or_default();
        if write
            && status == StatusCode::BAD_REQUEST
            && let Some(rejections) = validation_errors(&body)
        {
            return Err(AmoError::Invalid(rejections));
        }
        Err(classify_error(
            status,
            is_json,
            &body,
            retry_after,
            endpoint,
        ))
    }
}

/// Unix seconds from amoCRM's `Date` header (or our clock when it has none), less the time the
/// request took since `started`.
pub(super) fn upstream_time(headers: &header::HeaderMap, started: std::time::Instant) -> i64 {
    headers
        .get(header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(unix_now, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        // amoCRM read the data some time before it answered: count the whole request.
        - i64::try_from(started.elapsed().as_secs() + 1).unwrap_or(i64::MAX)
}

pub(super) fn transport_error(e: &reqwest::Error, request_timeout: Duration) -> AmoError {
    // reqwest's Display can include the URL; ours never does (the URL carries no token, but
    // it can carry a customer's search text).
    if e.is_timeout() {
        AmoError::Timeout(request_timeout)
    } else if e.is_connect() {
        AmoError::Connect
    } else {
        AmoError::Transport
    }
}

fn body_error(e: BodyError, request_timeout: Duration) -> AmoError {
    match e {
        BodyError::TooLarge => {
            AmoError::Decode(format!("the body is larger than {MAX_BODY_BYTES} bytes"))
        }
        BodyError::Transport(e) => transport_error(&e, request_timeout),
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

enum BodyError {
    TooLarge,
    Transport(reqwest::Error),
}

async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>, BodyError> {
    // Sized once when the length is known: growing by doubling would hold up to one and a half
    // bodies at a time. The length is only a hint, so the cap still applies to what arrives.
    let announced = response
        .content_length()
        .and_then(|length| usize::try_from(length).ok());
    if announced.is_some_and(|length| length > cap) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::with_capacity(announced.unwrap_or(0));
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > cap {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// amoCRM's problem body. 403 and 429 often come as HTML from its front proxy instead, so the
/// status decides the error and the body only adds detail when it is JSON.
#[derive(serde::Deserialize, Default)]
struct ProblemBody {
    title: Option<String>,
    detail: Option<String>,
    hint: Option<String>,
}

/// The `validation-errors` of a 400 body, when it has any: other 400s (a rights problem in
/// disguise, say) carry only a `detail` and stay [`AmoError::BadRequest`]. Read tolerantly,
/// since only the grouping by item is reliable: `request_id` may be missing or a number, a
/// problem may lack any of its keys.
pub(super) fn validation_errors(body: &[u8]) -> Option<Vec<Rejection>> {
    let root: serde_json::Value = serde_json::from_slice(body).ok()?;
    let groups = root.get("validation-errors")?.as_array()?;
    let rejections: Vec<Rejection> = groups
        .iter()
        .filter_map(serde_json::Value::as_object)
        .map(|group| Rejection {
            request_id: crate::amocrm::model::request_id(group),
            problems: group
                .get("errors")
                .and_then(serde_json::Value::as_array)
                .map(|errors| {
                    errors
                        .iter()
                        .filter_map(serde_json::Value::as_object)
                        .map(|error| {
                            let text = |key| {
                                error
                                    .get(key)
                                    .and_then(serde_json::Value::as_str)
                                    .map(|s: &str| s.chars().take(MAX_DETAIL_CHARS).collect())
                            };
                            Problem {
                                code: text("code").unwrap_or_default(),
                                path: text("path").unwrap_or_default(),
                                detail: text("detail"),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    (!rejections.is_empty()).then_some(rejections)
}

fn classify_error(
    status: StatusCode,
    is_json: bool,
    body: &[u8],
    retry_after: Option<Duration>,
    endpoint: &'static str,
) -> AmoError {
    let problem: Option<ProblemBody> = serde_json::from_slice(body).ok();
    let detail = problem.as_ref().and_then(|p| {
        let text = p.hint.as_ref().or(p.detail.as_ref()).or(p.title.as_ref())?;
        Some(text.chars().take(MAX_DETAIL_CHARS).collect::<String>())
    });
    match status.as_u16() {
        400 => AmoError::BadRequest { detail },
        401 => AmoError::Unauthorized { detail },
        402 => AmoError::PaymentRequired,
        403 => AmoError::Forbidden {
            reason: if is_json && problem.is_some() {
                ForbiddenReason::Rights
            } else {
                ForbiddenReason::AccountBlocked
            },
            detail,
        },
        404 => AmoError::UnknownEndpoint { endpoint },
        // The request line or headers were too long for the front proxy: our request's shape.
        413 | 414 | 431 => AmoError::RequestTooLarge {
            status: status.as_u16(),
        },
        429 => AmoError::RateLimited { retry_after },
        500..=599 => AmoError::Server {
            status: status.as_u16(),
        },
        other => AmoError::UnexpectedStatus { status: other },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(code: &str, path: &str, detail: Option<&str>) -> Problem {
        Problem {
            code: code.to_owned(),
            path: path.to_owned(),
            detail: detail.map(str::to_owned),
        }
    }

    #[test]
    fn validation_errors_are_grouped_by_the_item_they_name() {
        let body = br#"{"validation-errors":[{"request_id":"3","errors":[{"code":"NotSupportedChoice",
            "path":"custom_fields_values.0.values.0.enum_code","detail":"The value you selected is not a valid choice."}]},
            {"request_id":"0","errors":[{"code":"FieldNotExpected","path":"custom_fields_values.5.values.0.enum_code",
            "detail":"This field was not expected."},{"code":"InvalidType","path":"price","detail":"This value should be of type int."}]}],
            "title":"Bad Request","type":"https://httpstatus.es/400","status":400,"detail":"Request validation failed"}"#;
        assert_eq!(
            validation_errors(body),
            Some(vec![
                Rejection {
                    request_id: Some("3".to_owned()),
                    problems: vec![problem(
                        "NotSupportedChoice",
                        "custom_fields_values.0.values.0.enum_code",
                        Some("The value you selected is not a valid choice.")
                    )],
                },
                Rejection {
                    request_id: Some("0".to_owned()),
                    problems: vec![
                        problem(
                            "FieldNotExpected",
                            "custom_fields_values.5.values.0.enum_code",
                            Some("This field was not expected.")
                        ),
                        problem(
                            "InvalidType",
                            "price",
                            Some("This value should be of type int.")
                        ),
                    ],
                },
            ])
        );
    }

    #[test]
    fn validation_errors_without_or_with_a_numeric_request_id_and_partial_problems() {
        // Seen from Kommo: a group with no request_id at all.
        let missing = br#"{"validation-errors":[{"errors":[{"code":"FieldMissing","path":"currency","detail":"This field is missing."}]}]}"#;
        assert_eq!(
            validation_errors(missing),
            Some(vec![Rejection {
                request_id: None,
                problems: vec![problem(
                    "FieldMissing",
                    "currency",
                    Some("This field is missing.")
                )],
            }])
        );
        let numeric = br#"{"validation-errors":[{"request_id":7,"errors":[{"code":"NotSupportedChoice","path":"code"},{"detail":"odd"}, 5]}, "junk"]}"#;
        assert_eq!(
            validation_errors(numeric),
            Some(vec![Rejection {
                request_id: Some("7".to_owned()),
                problems: vec![
                    problem("NotSupportedChoice", "code", None),
                    problem("", "", Some("odd")),
                ],
            }])
        );
        let long = format!(
            r#"{{"validation-errors":[{{"request_id":"0","errors":[{{"code":"x","path":"y","detail":"{}"}}]}}]}}"#,
            "d".repeat(1000)
        );
        let parsed = validation_errors(long.as_bytes()).expect("parses");
        assert_eq!(
            parsed[0].problems[0].detail.as_deref().map(str::len),
            Some(MAX_DETAIL_CHARS)
        );
    }

    #[test]
    fn a_400_without_validation_errors_is_not_a_rejection() {
        let rights = r#"{"title":"Bad Request","type":"https://httpstatus.es/400","status":400,"detail":"Код ошибки 244."}"#;
        assert_eq!(validation_errors(rights.as_bytes()), None);
        assert_eq!(validation_errors(br#"{"validation-errors":[]}"#), None);
        assert_eq!(validation_errors(b"<html>"), None);
    }

    #[test]
    fn a_403_is_a_block_unless_it_carries_a_problem_body() {
        let html = classify_error(StatusCode::FORBIDDEN, false, b"<html>", None, "/x");
        assert!(matches!(
            html,
            AmoError::Forbidden {
                reason: ForbiddenReason::AccountBlocked,
                ..
            }
        ));
        let json = classify_error(
            StatusCode::FORBIDDEN,
            true,
            br#"{"title":"Forbidden","detail":"no rights"}"#,
            None,
            "/x",
        );
        assert!(matches!(
            json,
            AmoError::Forbidden {
                reason: ForbiddenReason::Rights,
                detail: Some(ref d),
            } if d == "no rights"
        ));
    }
}
