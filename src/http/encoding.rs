//! Content codings for stored responses. A response-cache hit is sent compressed as the client
//! prefers — chosen by the same rule as the compression layer (highest q-value, brotli over
//! gzip on a tie) — from bytes compressed once per entry, instead of once per request.

use std::io::Write;

use axum::http::{HeaderMap, HeaderValue, header};
use bytes::Bytes;

use super::negotiation::weighted;

/// gzip's level, as the compression layer uses by default.
const GZIP_LEVEL: u32 = 6;
/// Brotli's quality and window: good ratios at a cost paid once per stored response.
const BROTLI_QUALITY: u32 = 5;
const BROTLI_WINDOW_BITS: u32 = 22;

/// A coding the gateway compresses with; ordered as preferred on equal q-values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Encoding {
    Gzip,
    Brotli,
}

/// What `Accept-Encoding` may name, in the order preferred on equal q-values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Coding {
    Identity,
    Compressed(Encoding),
}

impl Encoding {
    /// Which of a stored response's derived forms holds this coding.
    pub fn form(self) -> usize {
        match self {
            Encoding::Gzip => 0,
            Encoding::Brotli => 1,
        }
    }

    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Encoding::Gzip => "gzip",
            Encoding::Brotli => "br",
        })
    }

    pub fn compress(self, body: &[u8]) -> Option<Bytes> {
        let mut out = Vec::with_capacity(body.len() / 4);
        match self {
            Encoding::Gzip => {
                let mut encoder =
                    flate2::write::GzEncoder::new(out, flate2::Compression::new(GZIP_LEVEL));
                encoder.write_all(body).ok()?;
                out = encoder.finish().ok()?;
            }
            Encoding::Brotli => {
                let mut encoder = brotli::CompressorWriter::new(
                    &mut out,
                    4096,
                    BROTLI_QUALITY,
                    BROTLI_WINDOW_BITS,
                );
                encoder.write_all(body).ok()?;
                encoder.flush().ok()?;
                drop(encoder);
            }
        }
        out.shrink_to_fit();
        Some(Bytes::from(out))
    }
}

/// The coding the client prefers among those the gateway makes, `None` for identity.
pub fn preferred(headers: &HeaderMap) -> Option<Encoding> {
    let best = weighted(headers, header::ACCEPT_ENCODING)
        .filter_map(|(name, q)| {
            let coding = match name {
                name if name.eq_ignore_ascii_case("gzip")
                    || name.eq_ignore_ascii_case("x-gzip") =>
                {
                    Coding::Compressed(Encoding::Gzip)
                }
                name if name.eq_ignore_ascii_case("br") => Coding::Compressed(Encoding::Brotli),
                name if name.eq_ignore_ascii_case("identity") => Coding::Identity,
                _ => return None,
            };
            Some((q, coding))
        })
        .filter(|(q, _)| *q > 0)
        .max();
    match best {
        Some((_, Coding::Compressed(encoding))) => Some(encoding),
        Some((_, Coding::Identity)) | None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefers(accept: &str) -> Option<Encoding> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(accept).expect("ascii"),
        );
        preferred(&headers)
    }

    #[test]
    fn the_highest_q_value_wins_and_brotli_breaks_ties() {
        assert_eq!(prefers("gzip, deflate, br, zstd"), Some(Encoding::Brotli));
        assert_eq!(prefers("gzip"), Some(Encoding::Gzip));
        assert_eq!(prefers("br;q=0.5, gzip;q=0.8"), Some(Encoding::Gzip));
        assert_eq!(prefers("br;q=0, gzip;q=0"), None);
        assert_eq!(prefers("identity, gzip;q=0.5"), None);
        assert_eq!(prefers("zstd, deflate"), None);
        assert_eq!(
            prefers("gzip;q=2, br;q=0.1"),
            Some(Encoding::Brotli),
            "a bad q is ignored"
        );
        assert_eq!(HeaderMap::new().get(header::ACCEPT_ENCODING), None);
    }

    #[test]
    fn compressed_bodies_decompress_to_the_original() {
        use std::io::Read;
        let body = br#"{"data":{"contacts":{"nodes":[{"id":"1","name":"Ivan"}]}}}"#.repeat(40);
        let gzip = Encoding::Gzip.compress(&body).expect("compresses");
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&gzip[..])
            .read_to_end(&mut plain)
            .expect("gzip");
        assert_eq!(plain, body);
        let br = Encoding::Brotli.compress(&body).expect("compresses");
        let mut plain = Vec::new();
        brotli::Decompressor::new(&br[..], 4096)
            .read_to_end(&mut plain)
            .expect("brotli");
        assert_eq!(plain, body);
        assert!(br.len() < body.len() / 4 && gzip.len() < body.len() / 4);
    }
}
