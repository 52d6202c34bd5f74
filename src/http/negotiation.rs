//! Content negotiation: which media type a `/graphql` answer is sent as, chosen from `Accept`
//! as GraphQL over HTTP describes it, and the weighted lists that `Accept` and
//! `Accept-Encoding` share (RFC 9110 §12.4.2).

use std::cmp::Reverse;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

/// A media type `/graphql` answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    /// `application/json`: every GraphQL response is HTTP 200, as clients have long expected.
    Json,
    /// `application/graphql-response+json`: a request that did not execute is HTTP 400, so
    /// that caches and proxies see the failure.
    GraphqlResponse,
}

impl MediaType {
    const ALL: [MediaType; 2] = [MediaType::Json, MediaType::GraphqlResponse];

    pub fn name(self) -> &'static str {
        match self {
            MediaType::Json => "application/json",
            MediaType::GraphqlResponse => "application/graphql-response+json",
        }
    }

    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.name())
    }

    /// The status of an answer that is only request errors (the operation did not run).
    pub fn request_error_status(self) -> StatusCode {
        match self {
            MediaType::Json => StatusCode::OK,
            MediaType::GraphqlResponse => StatusCode::BAD_REQUEST,
        }
    }

    /// How closely `range` (from `Accept`) names this type: `*/*`, `application/*`, or exactly.
    fn specificity(self, range: &str) -> Option<u8> {
        if range == "*/*" {
            Some(0)
        } else if range.eq_ignore_ascii_case("application/*") {
            Some(1)
        } else if range.eq_ignore_ascii_case(self.name()) {
            Some(2)
        } else {
            None
        }
    }
}

/// The media type the client prefers; `None` when its `Accept` allows neither (HTTP 406).
///
/// Each type takes the q-value of the most specific range that names it (RFC 9110 §12.5.1). The
/// higher q-value wins, then the more specific range, then the one listed first: Apollo
/// Client 4 sends `application/graphql-response+json, application/json;q=0.9`, urql lists both
/// at the same q-value with graphql-response first, and `*/*` alone means JSON, the default.
pub fn negotiate(headers: &HeaderMap) -> Option<MediaType> {
    // Per type: (specificity, q-value, position) of the range that decides its q-value.
    let mut decided: [Option<(u8, u16, usize)>; 2] = [None, None];
    let mut ranges = 0;
    for (position, (range, q)) in weighted(headers, header::ACCEPT).enumerate() {
        ranges += 1;
        for (slot, media) in decided.iter_mut().zip(MediaType::ALL) {
            if let Some(specificity) = media.specificity(range)
                && slot.is_none_or(|(known, _, _)| specificity > known)
            {
                *slot = Some((specificity, q, position));
            }
        }
    }
    if ranges == 0 {
        return Some(MediaType::Json);
    }
    MediaType::ALL
        .into_iter()
        .zip(decided)
        .filter_map(|(media, decided)| {
            let (specificity, q, position) = decided?;
            (q > 0).then_some((
                (q, specificity, Reverse(position), media == MediaType::Json),
                media,
            ))
        })
        .max_by_key(|(rank, _)| *rank)
        .map(|(_, media)| media)
}

/// The items of a weighted list header, in the order sent: each item's value without its
/// parameters, and its q-value in thousandths. An item whose q-value is malformed is left out,
/// as if it had not been sent.
pub(super) fn weighted(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = (&str, u16)> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|item| {
            let mut parts = item.split(';');
            let value = parts.next()?.trim();
            if value.is_empty() {
                return None;
            }
            let mut q = 1000;
            for parameter in parts {
                let parameter = parameter.trim();
                if let Some(("q" | "Q", text)) = parameter.split_once('=') {
                    q = q_value(text)?;
                }
            }
            Some((value, q))
        })
}

/// A q-value (RFC 9110 §12.4.2) in thousandths: `0.5` → 500; `None` when malformed.
fn q_value(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u16 = match whole {
        "0" => 0,
        "1" => 1000,
        _ => return None,
    };
    let fraction = fraction
        .bytes()
        .zip([100u16, 10, 1])
        .map(|(digit, factor)| u16::from(digit - b'0') * factor)
        .sum::<u16>();
    Some(whole + fraction).filter(|q| *q <= 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chosen(accept: &[&str]) -> Option<MediaType> {
        let mut headers = HeaderMap::new();
        for value in accept {
            headers.append(header::ACCEPT, HeaderValue::from_str(value).expect("ascii"));
        }
        negotiate(&headers)
    }

    #[test]
    fn graphql_response_json_when_preferred_json_otherwise() {
        use MediaType::{GraphqlResponse, Json};
        // Apollo Client 4, urql, graphql-http's audits.
        let apollo = "application/graphql-response+json,application/json;q=0.9";
        assert_eq!(chosen(&[apollo]), Some(GraphqlResponse));
        let urql = "application/graphql-response+json, application/graphql+json, \
                    application/json, text/event-stream, multipart/mixed";
        assert_eq!(chosen(&[urql]), Some(GraphqlResponse));
        assert_eq!(
            chosen(&["application/graphql-response+json"]),
            Some(GraphqlResponse)
        );
        // GraphiQL, browsers, curl, and clients that send nothing.
        assert_eq!(chosen(&["application/json, multipart/mixed"]), Some(Json));
        assert_eq!(
            chosen(&["text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"]),
            Some(Json)
        );
        assert_eq!(chosen(&["*/*"]), Some(Json));
        assert_eq!(chosen(&["application/*"]), Some(Json));
        assert_eq!(chosen(&[]), Some(Json));
        assert_eq!(chosen(&[""]), Some(Json));
        // Order breaks a tie of equal q-values; q-values and specificity come first.
        assert_eq!(
            chosen(&["application/json, application/graphql-response+json"]),
            Some(Json)
        );
        assert_eq!(
            chosen(&["application/json;q=0.5, application/graphql-response+json"]),
            Some(GraphqlResponse)
        );
        assert_eq!(
            chosen(&["*/*, application/json;q=0.1"]),
            Some(GraphqlResponse),
            "the wildcard's q-value applies only to what no more specific range names"
        );
        assert_eq!(
            chosen(&[
                "application/json;charset=utf-8;q=0.8",
                "application/graphql-response+json;q=0.7"
            ]),
            Some(Json),
            "parameters other than q are ignored, and header lines are one list"
        );
        assert_eq!(chosen(&["APPLICATION/JSON"]), Some(Json));
    }

    #[test]
    fn neither_type_acceptable_is_none() {
        assert_eq!(chosen(&["text/html"]), None);
        assert_eq!(chosen(&["text/event-stream"]), None);
        assert_eq!(
            chosen(&["application/json;q=0, application/graphql-response+json;q=0"]),
            None
        );
        assert_eq!(
            chosen(&["*/*, application/json;q=0"]),
            Some(MediaType::GraphqlResponse)
        );
    }

    #[test]
    fn q_values_are_read_in_thousandths() {
        assert_eq!(q_value("1"), Some(1000));
        assert_eq!(q_value("0.5"), Some(500));
        assert_eq!(q_value("0.125"), Some(125));
        assert_eq!(q_value("1.000"), Some(1000));
        assert_eq!(q_value("1.5"), None);
        assert_eq!(q_value("2"), None);
        assert_eq!(q_value("0.1234"), None);
        assert_eq!(q_value("abc"), None);
    }
}
