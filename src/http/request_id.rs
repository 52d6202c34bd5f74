//! Request ids for requests that bring none: random UUIDs v4, in the form tower-http's
//! `MakeRequestUuid` gives, drawn from the thread's CSPRNG. (`uuid` asks the kernel, one
//! `getrandom` syscall per request.)

use axum::http::{HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

const HEX: &[u8; 16] = b"0123456789abcdef";

#[derive(Debug, Clone, Copy)]
pub(super) struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        HeaderValue::from_bytes(&uuid_v4(rand::random()))
            .ok()
            .map(RequestId::new)
    }
}

/// `bytes` as a version-4, RFC 4122-variant UUID: lowercase hex, hyphenated.
fn uuid_v4(mut bytes: [u8; 16]) -> [u8; 36] {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut text = [0u8; 36];
    let mut at = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text[at] = b'-';
            at += 1;
        }
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0x0f)];
        at += 2;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_version_4_uuids() {
        let text = uuid_v4([0xff; 16]);
        assert_eq!(&text, b"ffffffff-ffff-4fff-bfff-ffffffffffff");
        let text = uuid_v4([0; 16]);
        assert_eq!(&text, b"00000000-0000-4000-8000-000000000000");
        let made = RandomRequestId
            .make_request_id(&Request::new(()))
            .expect("an id");
        let other = RandomRequestId
            .make_request_id(&Request::new(()))
            .expect("an id");
        assert_ne!(made.header_value(), other.header_value());
    }
}
