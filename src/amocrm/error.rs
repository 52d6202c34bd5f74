use std::time::Duration;

/// Why amoCRM answered 403. The two need different handling: a rights problem is an answer about
/// the caller, a blocked account is an emergency for every caller of the integration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForbiddenReason {
    /// A problem+json 403: the token's user lacks the rights for this call.
    Rights,
    /// A 403 from amoCRM's front proxy (an HTML page, or no JSON at all): the IP or the whole
    /// account is blocked, typically after repeated rate-limit violations.
    AccountBlocked,
}

/// Everything that can go wrong calling amoCRM. Messages are safe to show to clients: they
/// never contain a token or a raw upstream body, only amoCRM's own short problem text.
#[derive(Debug, thiserror::Error)]
pub enum AmoError {
    #[error("amoCRM rejected the access token (401){}", detail_suffix(.detail))]
    Unauthorized { detail: Option<String> },

    #[error("the amoCRM account is not paid (402)")]
    PaymentRequired,

    /// amoCRM refused the gateway's own refresh token: only an operator can mend this.
    #[error(
        "amoCRM refused the gateway's OAuth refresh token{}: an operator must re-authorize the \
         integration in amoCRM, put the new refresh token into the gateway's token file and restart \
         it",
        hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default()
    )]
    AuthorizationRevoked {
        hint: Option<String>,
        token_file: String,
    },

    /// Obtaining a new access token failed for another reason (amoCRM unreachable, say).
    #[error("the gateway could not refresh its amoCRM access token: {0}")]
    TokenRefresh(String),

    #[error("{}", forbidden_message(*.reason, .detail))]
    Forbidden {
        reason: ForbiddenReason,
        detail: Option<String>,
    },

    #[error("amoCRM is rate limiting this integration (429)")]
    RateLimited { retry_after: Option<Duration> },

    #[error("amoCRM rejected the request as invalid (400){}", detail_suffix(.detail))]
    BadRequest { detail: Option<String> },

    /// amoCRM (or its front proxy) refused the request as too large: 413, 414 or 431. About
    /// our request's shape, never about the upstream's health.
    #[error("amoCRM refused the request as too large (HTTP {status})")]
    RequestTooLarge { status: u16 },

    /// The gateway's own bound on the URL it sends (`MAX_URL_BYTES`): refused before any call.
    #[error("the upstream request would be {bytes} bytes long, more than amoCRM accepts")]
    RequestTooLong { bytes: usize },

    #[error("amoCRM does not know the endpoint {endpoint} (404)")]
    UnknownEndpoint { endpoint: &'static str },

    #[error("amoCRM failed with HTTP {status}")]
    Server { status: u16 },

    #[error("amoCRM answered with unexpected HTTP status {status}")]
    UnexpectedStatus { status: u16 },

    #[error("amoCRM did not answer within {0:?}")]
    Timeout(Duration),

    #[error("could not connect to amoCRM")]
    Connect,

    #[error("the connection to amoCRM failed while transferring the response")]
    Transport,

    #[error("amoCRM sent a response that could not be read: {0}")]
    Decode(String),

    #[error(
        "the upstream rate limit ({rate} requests a second) would be exceeded: try again shortly"
    )]
    QueueTimeout { rate: u32 },

    #[error("{}", circuit_message(*.reason, *.retry_in))]
    CircuitOpen {
        reason: super::breaker::OpenReason,
        retry_in: Duration,
    },

    /// A write's 400 that names what amoCRM refused (`validation-errors`): nothing of the
    /// request was applied. Reads never produce it; their 400s stay [`AmoError::BadRequest`].
    #[error("amoCRM refused the data as invalid (400): {}", rejections_message(.0))]
    Invalid(Vec<Rejection>),

    /// A write whose answer was lost after it may have reached amoCRM (a timeout, a dropped
    /// connection, a 5xx, an unreadable success): amoCRM has no idempotency keys, so sending it
    /// again could apply it twice. Only reading the data back tells.
    #[error(
        "amoCRM's answer to a write was lost ({cause}): the write may or may not have been \
         applied; read the data back before trying again"
    )]
    OutcomeUnknown { cause: Box<AmoError> },
}

/// One entry of amoCRM's `validation-errors`: the item it names (by the `request_id` sent with
/// it, when amoCRM says) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub request_id: Option<String>,
    pub problems: Vec<Problem>,
}

/// One problem amoCRM found in an item. `path` is a dot path into the item as sent, with
/// 0-based indexes (`custom_fields_values.0.values.0.enum_code`), not field ids. `code` is
/// usually an identifier such as `NotSupportedChoice`, but amoCRM has sent prose there too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub code: String,
    pub path: String,
    pub detail: Option<String>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "(the item)"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.code)?;
        match &self.detail {
            Some(detail) => write!(f, " ({detail})"),
            None => Ok(()),
        }
    }
}

/// The first problem and how many more: a batch can hold hundreds, and the message is a line.
fn rejections_message(rejections: &[Rejection]) -> String {
    let mut problems = rejections.iter().flat_map(|r| &r.problems);
    let Some(first) = problems.next() else {
        return "no details given".to_owned();
    };
    match problems.count() {
        0 => first.to_string(),
        more => format!("{first}, and {more} more"),
    }
}

impl AmoError {
    /// The `status` label of a call that got no HTTP status.
    pub fn transport_label(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Connect => "connect",
            _ => "transport",
        }
    }

    /// Whether retrying the call at once (after a backoff) is worth it.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. }
                | Self::Server { .. }
                | Self::Timeout(_)
                | Self::Connect
                | Self::Transport
        )
    }

    /// Whether this says the upstream is failing (as opposed to an answer about the caller).
    pub fn counts_against_upstream(&self) -> bool {
        self.is_retryable() || matches!(self, Self::Decode(_) | Self::OutcomeUnknown { .. })
    }

    /// Whether retrying later could succeed: the failure says something about the upstream or the
    /// network, not about the caller or the request.
    pub fn is_transient(&self) -> bool {
        self.counts_against_upstream()
            || matches!(
                self,
                Self::QueueTimeout { .. }
                    | Self::CircuitOpen { .. }
                    | Self::Forbidden {
                        reason: ForbiddenReason::AccountBlocked,
                        ..
                    }
            )
    }
}

fn circuit_message(reason: super::breaker::OpenReason, retry_in: Duration) -> String {
    let why = match reason {
        super::breaker::OpenReason::Blocked => {
            "amoCRM answered as if the account or IP were blocked"
        }
        super::breaker::OpenReason::Unavailable => "amoCRM failed repeatedly",
    };
    format!(
        "{why}; the gateway is not calling it for {}s (circuit open) and answers from its cache \
         where it can",
        retry_in.as_secs().max(1)
    )
}

fn detail_suffix(detail: &Option<String>) -> String {
    detail
        .as_deref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

fn forbidden_message(reason: ForbiddenReason, detail: &Option<String>) -> String {
    match reason {
        ForbiddenReason::Rights => format!(
            "amoCRM denied access: the token's user lacks the rights for this data (403){}",
            detail_suffix(detail)
        ),
        ForbiddenReason::AccountBlocked => "amoCRM refused the request at its front proxy (403 \
             without a problem body): the IP or the account appears to be blocked"
            .to_owned(),
    }
}
