//! What a GraphQL-over-HTTP request must look like, and why one is refused before it reaches
//! the schema. `POST` carries a JSON object (`application/json`), `GET` URL parameters whose
//! `variables` and `extensions` are JSON text; both name the same four parameters. A refusal
//! names the parameter and its rule and has a 4xx status, so that a client's bug shows as
//! one, never as a Rust type's name.

use async_graphql::{Request, Variables};
use axum::http::StatusCode;
use serde_json::{Map, Value};

/// Why `/graphql` refuses a request as it arrives (code `BAD_REQUEST`).
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("a POST to /graphql needs `Content-Type: application/json`; this one has none")]
    NoContentType,
    #[error("a POST to /graphql needs `Content-Type: application/json`, not `{0}`")]
    UnsupportedContentType(String),
    #[error(
        "`Accept` allows neither application/graphql-response+json nor application/json, \
         the media types /graphql answers with"
    )]
    NotAcceptable,
    #[error("mutations are only accepted over POST")]
    MutationOverGet,
    #[error("the body is empty: send a JSON object such as {{\"query\": \"{{ __typename }}\"}}")]
    EmptyBody,
    #[error("the body is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("batched requests (a JSON array) are not supported: send one JSON object per request")]
    Batch,
    #[error(
        "the body must be a JSON object of `query`, `operationName`, `variables`, `extensions`"
    )]
    NotAnObject,
    #[error("the body is not a GraphQL request: {0}")]
    NotARequest(serde_json::Error),
    #[error("{parameter}: {rule}")]
    Invalid {
        parameter: &'static str,
        rule: String,
    },
    #[error(
        "query: is required, unless `extensions.persistedQuery` names a stored document by its hash"
    )]
    MissingQuery,
    /// Refused before parsing: the parser's time and memory grow with the document.
    #[error(
        "query: the document is {bytes} bytes; this gateway parses documents of at most {limit} \
         bytes (--max-document-bytes)"
    )]
    DocumentTooLong { bytes: usize, limit: usize },
    #[error(
        "query: the document has more than {MAX_DOCUMENT_TOKENS} tokens, the most this gateway \
         parses"
    )]
    TooManyTokens,
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::NoContentType | Rejection::UnsupportedContentType(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Rejection::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            Rejection::MutationOverGet => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::DocumentTooLong { .. } | Rejection::TooManyTokens => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Rejection::EmptyBody
            | Rejection::NotJson(_)
            | Rejection::Batch
            | Rejection::NotAnObject
            | Rejection::NotARequest(_)
            | Rejection::Invalid { .. }
            | Rejection::MissingQuery => StatusCode::BAD_REQUEST,
        }
    }

    fn invalid(parameter: &'static str, rule: impl Into<String>) -> Self {
        Rejection::Invalid {
            parameter,
            rule: rule.into(),
        }
    }
}

/// The most tokens (names, numbers, strings, punctuators) a document may have. The largest
/// honest document, GraphiQL's introspection query, has about 300; a `--max-document-bytes`
/// raised far above its default still parses in bounded time.
pub const MAX_DOCUMENT_TOKENS: usize = 10_000;
/// The deepest brackets (`{`, `(`, `[`) may nest. async-graphql's parser refuses more than 64
/// levels, but only after its grammar has recursed through all of them: refused here, a deep
/// document costs one linear scan.
pub const MAX_DOCUMENT_NESTING: usize = 64;

/// Checks a document's size before it reaches the parser, whose cost grows with it: bytes,
/// then tokens and nesting in one pass that stops at the first excess.
pub fn check_document(document: &str, max_bytes: usize) -> Result<(), Rejection> {
    if document.len() > max_bytes {
        return Err(Rejection::DocumentTooLong {
            bytes: document.len(),
            limit: max_bytes,
        });
    }
    let bytes = document.as_bytes();
    let (mut tokens, mut depth, mut at) = (0usize, 0usize, 0usize);
    while let Some(&byte) = bytes.get(at) {
        at += 1;
        match byte {
            // Insignificant: white space, line ends, commas, and the BOM's bytes.
            b' ' | b'\t' | b'\n' | b'\r' | b',' | 0xEF | 0xBB | 0xBF => continue,
            b'#' => {
                while bytes.get(at).is_some_and(|&b| b != b'\n' && b != b'\r') {
                    at += 1;
                }
                continue;
            }
            b'"' => at = string_end(bytes, at),
            b'{' | b'(' | b'[' => {
                depth += 1;
                if depth > MAX_DOCUMENT_NESTING {
                    return Err(Rejection::invalid(
                        "query",
                        format!("nests brackets deeper than {MAX_DOCUMENT_NESTING} levels"),
                    ));
                }
            }
            b'}' | b')' | b']' => depth = depth.saturating_sub(1),
            b if is_word(b) => {
                while bytes.get(at).copied().is_some_and(is_word) {
                    at += 1;
                }
            }
            // A punctuator, or a byte the parser will refuse: a token either way.
            _ => {}
        }
        tokens += 1;
        if tokens > MAX_DOCUMENT_TOKENS {
            return Err(Rejection::TooManyTokens);
        }
    }
    Ok(())
}

/// Names and numbers (with their signs, points and exponents) count as one token each.
fn is_word(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'+')
}

/// Where the string that opened just before `at` ends: a block string at its closing `"""`,
/// another at its closing quote (both skip escaped quotes); the end of the text when unclosed.
fn string_end(bytes: &[u8], mut at: usize) -> usize {
    if bytes.get(at..at + 2) == Some(b"\"\"") {
        at += 2;
        while at < bytes.len() {
            if bytes.get(at..at + 4) == Some(b"\\\"\"\"") {
                at += 4;
            } else if bytes.get(at..at + 3) == Some(b"\"\"\"") {
                return at + 3;
            } else {
                at += 1;
            }
        }
        return at;
    }
    while let Some(&byte) = bytes.get(at) {
        at += 1;
        match byte {
            b'\\' => at += 1,
            b'"' | b'\n' | b'\r' => return at,
            _ => {}
        }
    }
    at
}

/// A `POST` body, as sent with `content_type`.
pub fn from_post(content_type: Option<&str>, body: &[u8]) -> Result<Request, Rejection> {
    let content_type = content_type.ok_or(Rejection::NoContentType)?;
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(Rejection::UnsupportedContentType(content_type.to_owned()));
    }
    let parameters = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(Rejection::EmptyBody),
        Some(b'{') => serde_json::from_slice::<Parameters>(body).map_err(|e| {
            if e.is_data() {
                Rejection::NotARequest(e)
            } else {
                Rejection::NotJson(e)
            }
        })?,
        // Told apart only on this failing path: a derived struct would also read an array.
        Some(first) => {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                    Err(e) => Rejection::NotJson(e),
                    Ok(_) if *first == b'[' => Rejection::Batch,
                    Ok(_) => Rejection::NotAnObject,
                },
            );
        }
    };
    parameters.into_request()
}

/// A `GET` query string (`query=…&operationName=…&variables=…&extensions=…`). A parameter sent
/// empty counts as not sent; `operation_name` is read too, as async-graphql spells it. Other
/// parameters are left for others (cache busters, tracing).
pub fn from_get(query_string: &str) -> Result<Request, Rejection> {
    let mut parameters = Parameters::default();
    for (name, value) in url::form_urlencoded::parse(query_string.as_bytes()) {
        // `variables` and `extensions` are JSON text; the others are strings as they are.
        let (slot, parameter, json) = match name.as_ref() {
            "query" => (&mut parameters.query, "query", false),
            "operationName" | "operation_name" => {
                (&mut parameters.operation_name, "operationName", false)
            }
            "variables" => (&mut parameters.variables, "variables", true),
            "extensions" => (&mut parameters.extensions, "extensions", true),
            _ => continue,
        };
        if value.is_empty() {
            continue;
        }
        if slot.is_some() {
            return Err(Rejection::invalid(parameter, "is given more than once"));
        }
        let value = if json {
            serde_json::from_str(&value).map_err(|e| {
                Rejection::invalid(parameter, format!("must be a JSON object ({e})"))
            })?
        } else {
            Value::String(value.into_owned())
        };
        // As in a POST body, `null` is the same as leaving the parameter out.
        *slot = Some(value).filter(|value| !value.is_null());
    }
    parameters.into_request()
}

/// The four parameters, as JSON values whose types are still to be checked (JSON `null` is
/// the same as leaving one out).
#[derive(Debug, Default, serde::Deserialize)]
struct Parameters {
    query: Option<Value>,
    #[serde(rename = "operationName")]
    operation_name: Option<Value>,
    variables: Option<Value>,
    extensions: Option<Value>,
}

impl Parameters {
    fn into_request(self) -> Result<Request, Rejection> {
        let query = string("query", self.query)?;
        let operation_name = string("operationName", self.operation_name)?;
        let variables = object("variables", self.variables)?;
        let extensions = object("extensions", self.extensions)?;
        let persisted = extensions
            .as_ref()
            .is_some_and(|extensions| extensions.contains_key("persistedQuery"));
        if query.is_none() && !persisted {
            return Err(Rejection::MissingQuery);
        }
        let mut request = Request::new(query.unwrap_or_default());
        request.operation_name = operation_name;
        if let Some(variables) = variables {
            request.variables = Variables::from_json(Value::Object(variables));
        }
        if let Some(extensions) = extensions {
            request.extensions = serde_json::from_value(Value::Object(extensions))
                .map_err(|e| Rejection::invalid("extensions", format!("{e}")))?;
        }
        Ok(request)
    }
}

fn string(parameter: &'static str, value: Option<Value>) -> Result<Option<String>, Rejection> {
    typed(parameter, value, "a string", |value| match value {
        Value::String(text) => Ok(text),
        other => Err(other),
    })
}

fn object(
    parameter: &'static str,
    value: Option<Value>,
) -> Result<Option<Map<String, Value>>, Rejection> {
    typed(parameter, value, "an object", |value| match value {
        Value::Object(map) => Ok(map),
        other => Err(other),
    })
}

/// What `extract` takes out of a parameter's value, or a refusal naming the type it must be.
fn typed<T>(
    parameter: &'static str,
    value: Option<Value>,
    must_be: &str,
    extract: impl FnOnce(Value) -> Result<T, Value>,
) -> Result<Option<T>, Rejection> {
    value
        .map(|value| {
            extract(value).map_err(|other| {
                Rejection::invalid(
                    parameter,
                    format!("must be {must_be}, not {}", kind(&other)),
                )
            })
        })
        .transpose()
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(body: &str) -> Result<Request, Rejection> {
        from_post(Some("application/json"), body.as_bytes())
    }

    fn assert_is_operation_q_with_n_1(request: Request) {
        assert_eq!(request.query, "query Q($n: Int) { __typename }");
        assert_eq!(request.operation_name.as_deref(), Some("Q"));
        assert_eq!(
            request.variables.into_value().into_json().expect("json"),
            serde_json::json!({ "n": 1 })
        );
    }

    fn refusal(result: Result<Request, Rejection>) -> (StatusCode, String) {
        match result {
            Ok(request) => panic!("accepted: {:?}", request.query),
            Err(rejection) => (rejection.status(), rejection.to_string()),
        }
    }

    #[test]
    fn a_post_reads_the_four_parameters() {
        let request = from_post(
            Some("application/json; charset=utf-8"),
            br#"{"query": "query Q($n: Int) { __typename }", "operationName": "Q",
                 "variables": {"n": 1}, "extensions": {"some": "value"}, "id": "ignored"}"#,
        )
        .expect("a request");
        assert!(request.extensions.0.contains_key("some"));
        assert_is_operation_q_with_n_1(request);
        let nulls = post(
            r#"{"query": "{ __typename }", "operationName": null, "variables": null, "extensions": null}"#,
        )
        .expect("null is the same as absent");
        assert_eq!(nulls.operation_name, None);
        let persisted = post(r#"{"extensions": {"persistedQuery": {"version": 1}}}"#)
            .expect("a hash needs no document");
        assert_eq!(persisted.query, "");
    }

    #[test]
    fn malformed_posts_name_the_parameter_and_the_rule() {
        let bad = StatusCode::BAD_REQUEST;
        for (body, status, message) in [
            ("", bad, "the body is empty"),
            ("  \n", bad, "the body is empty"),
            (r#"{ "not a JSON"#, bad, "the body is not valid JSON"),
            (
                r#"{"query": "{ a }"} trailing"#,
                bad,
                "the body is not valid JSON",
            ),
            (r#"[{"query": "{ a }"}]"#, bad, "batched requests"),
            ("[1, ", bad, "the body is not valid JSON"),
            ("\"{ a }\"", bad, "the body must be a JSON object"),
            ("42", bad, "the body must be a JSON object"),
            (
                r#"{"query": "{ a }", "query": "{ b }"}"#,
                bad,
                "duplicate field `query`",
            ),
            (r#"{"notquery": "{ a }"}"#, bad, "query: is required"),
            ("{}", bad, "query: is required"),
            (
                r#"{"query": {"obj": "ect"}}"#,
                bad,
                "query: must be a string, not an object",
            ),
            (
                r#"{"query": 0}"#,
                bad,
                "query: must be a string, not a number",
            ),
            (
                r#"{"query": false}"#,
                bad,
                "query: must be a string, not a boolean",
            ),
            (
                r#"{"query": ["array"]}"#,
                bad,
                "query: must be a string, not an array",
            ),
            (
                r#"{"query": "{ a }", "operationName": 0}"#,
                bad,
                "operationName: must be a string",
            ),
            (
                r#"{"query": "{ a }", "variables": "string"}"#,
                bad,
                "variables: must be an object, not a string",
            ),
            (
                r#"{"query": "{ a }", "variables": ["array"]}"#,
                bad,
                "variables: must be an object",
            ),
            (
                r#"{"query": "{ a }", "extensions": false}"#,
                bad,
                "extensions: must be an object",
            ),
        ] {
            let (got_status, got_message) = refusal(post(body));
            assert_eq!(got_status, status, "{body}");
            assert!(
                got_message.starts_with(message) || got_message.contains(message),
                "{body}: {got_message}"
            );
        }
    }

    #[test]
    fn only_json_bodies_are_read() {
        let unsupported = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        let body = br#"{"query": "{ a }"}"#;
        let (status, message) = refusal(from_post(None, body));
        assert_eq!(status, unsupported);
        assert!(message.contains("has none"), "{message}");
        for content_type in [
            "application/x-www-form-urlencoded",
            "application/graphql",
            "text/plain",
            "multipart/form-data; boundary=x",
        ] {
            let (status, message) = refusal(from_post(Some(content_type), body));
            assert_eq!(status, unsupported, "{content_type}");
            assert!(message.contains(content_type), "{message}");
        }
        from_post(Some("Application/JSON;charset=UTF-8"), body).expect("case and parameters");
    }

    #[test]
    fn documents_are_bounded_in_bytes_tokens_and_nesting_before_parsing() {
        let honest = r#"query Q($id: ID!) { contact(id: $id) { id name ...F } }
            fragment F on Contact { leads { nodes { id name } } } # a comment { { {
            { contacts(filter: { query: "a \" { [ (" }) { nodes { id } } }"#;
        check_document(honest, 1024).expect("an honest document");
        let block = r#"{ a(s: """ { { \""" { """) }"#;
        check_document(block, 1024).expect("brackets in a block string are text");

        let too_long = check_document(honest, 64).expect_err("longer than 64 bytes");
        assert_eq!(too_long.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            too_long.to_string().contains("--max-document-bytes"),
            "{too_long}"
        );

        let many = "{ a }".repeat(MAX_DOCUMENT_TOKENS / 3 + 1);
        let refused = check_document(&many, usize::MAX).expect_err("too many tokens");
        assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let within = "{ a }".repeat(MAX_DOCUMENT_TOKENS / 3);
        check_document(&within, usize::MAX).expect("exactly at the limit");

        let deep = format!(
            "{}{}",
            "{ a ".repeat(MAX_DOCUMENT_NESTING + 1),
            "}".repeat(MAX_DOCUMENT_NESTING + 1)
        );
        let (status, message) =
            refusal(check_document(&deep, usize::MAX).map(|()| Request::new("")));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            message.starts_with("query: nests brackets deeper"),
            "{message}"
        );
        check_document(&"{ a ".repeat(MAX_DOCUMENT_NESTING), usize::MAX)
            .expect("as deep as allowed");
    }

    #[test]
    fn a_get_reads_url_parameters_with_json_variables() {
        let request = from_get(
            "query=query%20Q(%24n%3A%20Int)%20%7B%20__typename%20%7D&operationName=Q\
             &variables=%7B%22n%22%3A1%7D&extensions=&other=1",
        )
        .expect("a request");
        assert_is_operation_q_with_n_1(request);
        let nulls = from_get("query=%7Ba%7D&variables=null&extensions=null").expect("a request");
        assert!(nulls.variables.is_empty());
        let legacy = from_get("query=%7Ba%7D&operation_name=A").expect("a request");
        assert_eq!(legacy.operation_name.as_deref(), Some("A"));
        for (query_string, message) in [
            ("", "query: is required"),
            ("query=", "query: is required"),
            ("operationName=A", "query: is required"),
            (
                "query=%7Ba%7D&variables=%7B",
                "variables: must be a JSON object (",
            ),
            (
                "query=%7Ba%7D&variables=%5B1%5D",
                "variables: must be an object, not an array",
            ),
            (
                "query=%7Ba%7D&extensions=1",
                "extensions: must be an object, not a number",
            ),
            (
                "query=%7Ba%7D&query=%7Bb%7D",
                "query: is given more than once",
            ),
        ] {
            let (status, got) = refusal(from_get(query_string));
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query_string}");
            assert!(got.starts_with(message), "{query_string}: {got}");
        }
    }
}
