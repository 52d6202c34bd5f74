//! The `DateTime` scalar: RFC 3339 on the GraphQL side, Unix seconds on amoCRM's.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};
use chrono::{SecondsFormat, TimeZone, Utc};

/// An instant, always written in UTC (`2020-04-01T16:21:05Z`). Input accepts any RFC 3339 offset;
/// amoCRM counts whole seconds, so a fraction is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    unix_seconds: i64,
}

impl DateTime {
    pub fn from_unix(unix_seconds: i64) -> Self {
        DateTime { unix_seconds }
    }

    pub fn unix_seconds(self) -> i64 {
        self.unix_seconds
    }
}

#[Scalar(name = "DateTime")]
/// An RFC 3339 date-time, written in UTC (`2020-04-01T16:21:05Z`); input accepts any offset.
impl ScalarType for DateTime {
    fn parse(value: Value) -> InputValueResult<Self> {
        let Value::String(text) = &value else {
            return Err(InputValueError::expected_type(value));
        };
        let parsed = chrono::DateTime::parse_from_rfc3339(text).map_err(|_| {
            InputValueError::custom(format!(
                "expected an RFC 3339 date-time such as \"2020-04-01T16:21:05Z\", got {text:?}"
            ))
        })?;
        Ok(DateTime::from_unix(parsed.timestamp()))
    }

    /// Makes validation refuse a malformed date-time before execution, with an error that
    /// names the argument (`filter.createdAt.from`).
    fn is_valid(value: &Value) -> bool {
        matches!(value, Value::String(text) if chrono::DateTime::parse_from_rfc3339(text).is_ok())
    }

    fn to_value(&self) -> Value {
        match Utc.timestamp_opt(self.unix_seconds, 0).single() {
            Some(t) => Value::String(t.to_rfc3339_opts(SecondsFormat::Secs, true)),
            // Out of chrono's range: only a broken upstream sends that, and null beats a lie.
            None => Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_unix_seconds_through_rfc3339() {
        let t = DateTime::from_unix(1_585_758_065);
        assert_eq!(t.to_value(), Value::String("2020-04-01T16:21:05Z".into()));
        let parsed = DateTime::parse(Value::String("2020-04-01T19:21:05+03:00".into()));
        assert_eq!(parsed.ok(), Some(t));
        assert!(DateTime::parse(Value::String("2020-04-01".into())).is_err());
        assert!(DateTime::parse(Value::Number(5.into())).is_err());
    }
}
