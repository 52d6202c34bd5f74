//! amoCRM's answers to writes it refuses: the 400 `validation-errors` problem, grouped per item
//! by `request_id` with dot paths into what was sent, and the plain 400 for a body it cannot
//! read at all.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The most items one write request may carry.
pub const MAX_WRITE_BATCH: usize = 250;

/// One entry of a group's `errors`.
#[derive(Debug, Clone)]
pub(super) struct FieldError {
    code: &'static str,
    path: String,
    detail: String,
}

impl FieldError {
    pub(super) fn not_supported_choice(path: impl Into<String>) -> Self {
        Self::new(
            "NotSupportedChoice",
            path,
            "The value you selected is not a valid choice.",
        )
    }

    /// `expected` as amoCRM names types: `int`, `string`, `bool`, `array`, `numeric`.
    pub(super) fn invalid_type(path: impl Into<String>, expected: &str) -> Self {
        Self::new(
            "InvalidType",
            path,
            &format!("This value should be of type {expected}."),
        )
    }

    pub(super) fn not_expected(path: impl Into<String>) -> Self {
        Self::new("FieldNotExpected", path, "This field was not expected.")
    }

    pub(super) fn missing(path: impl Into<String>) -> Self {
        Self::new("FieldMissing", path, "This field is missing.")
    }

    pub(super) fn not_found(path: impl Into<String>) -> Self {
        Self::new("NotFound", path, "Entity not found.")
    }

    fn new(code: &'static str, path: impl Into<String>, detail: &str) -> Self {
        FieldError {
            code,
            path: path.into(),
            detail: detail.to_owned(),
        }
    }
}

/// The errors of one item, under the `request_id` that names it.
#[derive(Debug)]
pub(super) struct ItemErrors {
    pub(super) request_id: String,
    pub(super) errors: Vec<FieldError>,
}

/// What a write item is called in answers: the `request_id` it sent (as a string), or its
/// index in the batch.
pub(super) fn request_id(item: &Value, index: usize) -> (String, bool) {
    match item.get("request_id") {
        Some(Value::String(id)) => (id.clone(), true),
        Some(Value::Null) | None => (index.to_string(), false),
        Some(other) => (other.to_string(), true),
    }
}

/// `Request validation failed`, with every failing item's errors.
pub(super) fn validation_problem(items: &[ItemErrors]) -> Response {
    let groups: Vec<Value> = items
        .iter()
        .map(|item| {
            json!({
                "request_id": item.request_id,
                "errors": item.errors.iter()
                    .map(|e| json!({ "code": e.code, "path": e.path, "detail": e.detail }))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    problem_400(json!({
        "validation-errors": groups,
        "title": "Bad Request",
        "type": "https://httpstatus.es/400",
        "status": 400,
        "detail": "Request validation failed",
    }))
}

/// A 400 without `validation-errors`, as amoCRM answers a body it cannot take at all.
pub(super) fn bad_request(detail: &str) -> Response {
    problem_400(json!({
        "title": "Bad Request",
        "type": "https://httpstatus.es/400",
        "status": 400,
        "detail": detail,
    }))
}

fn problem_400(body: Value) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

/// The items of a batch body: a JSON array of 1..=[`MAX_WRITE_BATCH`] items.
pub(super) fn batch(body: Option<&Value>) -> Result<&[Value], Response> {
    match body {
        None => Err(bad_request("Request body is not valid JSON")),
        Some(Value::Array(items)) if items.is_empty() => Err(bad_request("Request is empty")),
        Some(Value::Array(items)) if items.len() > MAX_WRITE_BATCH => Err(bad_request(&format!(
            "Too many entities in one request: at most {MAX_WRITE_BATCH}"
        ))),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(bad_request("Request body must be an array")),
    }
}

/// Accumulates one item's errors, with paths relative to where it was sent.
#[derive(Debug, Default)]
pub(super) struct Errors(pub(super) Vec<FieldError>);

impl Errors {
    pub(super) fn push(&mut self, error: FieldError) {
        self.0.push(error);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `a.b` from a prefix and a key, with no leading dot at the top of an item.
pub(super) fn join(prefix: &str, key: impl std::fmt::Display) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}
