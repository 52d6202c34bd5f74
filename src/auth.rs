//! Whose token calls amoCRM, and which cache scope a request's data belongs to.
//!
//! Two modes that never mix (see INTERFACE.md): with a server token every caller shares one fixed
//! scope; otherwise each caller's own bearer token is forwarded and its scope is a keyed hash of
//! that token, so a scope names a token without revealing it (not in cache keys, logs or metrics).

use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::amocrm::AccessToken;

/// The scope shared by all callers of a gateway that holds its own token; the same on every
/// replica, so a shared cache tier can use it as is.
pub const SERVER_SCOPE: &str = "server";

/// A credential scope: cached data is only ever shared within one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(Arc<str>);

impl Scope {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    #[cfg(test)]
    pub fn for_tests(name: &str) -> Self {
        Scope(name.into())
    }
}

/// The token to call amoCRM with, and the scope its answers are cached under.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub token: AccessToken,
    pub scope: Scope,
}

/// An operator's secret (scope secret, webhook secret, admin token). Never printed, and
/// compared in constant time.
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(secret: &str) -> Self {
        Secret(secret.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares digests rather than the strings, so that neither the position of the first
    /// difference nor the secret's length shows in the time taken.
    pub fn matches(&self, candidate: &str) -> bool {
        use sha2::Digest;
        let expected = Sha256::digest(self.0.as_bytes());
        let given = Sha256::digest(candidate.as_bytes());
        expected
            .iter()
            .zip(given.iter())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The token of an `Authorization: Bearer <token>` header, if it has that form.
pub fn bearer_token(header: Option<&[u8]>) -> Result<&str, AuthError> {
    let header = header.ok_or(AuthError::MissingToken)?;
    let header = std::str::from_utf8(header).map_err(|_| AuthError::MalformedHeader)?;
    let header = header.trim();
    let (scheme, token) = header.split_once(' ').unwrap_or((header, ""));
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::MalformedHeader);
    }
    if token.is_empty() {
        return Err(AuthError::MissingToken);
    }
    Ok(token)
}

/// The key for hashing forwarded tokens into scopes. Never printed.
#[derive(Clone)]
pub struct ScopeKey([u8; 32]);

impl ScopeKey {
    /// Derives the key from an operator-given secret, so every replica given the same secret
    /// computes the same scopes.
    pub fn from_secret(secret: &str) -> Self {
        use sha2::Digest;
        ScopeKey(Sha256::digest(secret.as_bytes()).into())
    }

    /// A key for this process only: scopes change on restart, which only costs cache hits.
    pub fn random() -> Self {
        ScopeKey(rand::random())
    }

    fn scope_of(&self, token: &str) -> Scope {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(token.as_bytes());
        let digest = mac.finalize().into_bytes();
        // 128 bits are plenty to keep scopes apart and keep keys short.
        Scope(format!("token:{}", hex::encode(&digest[..16])).into())
    }
}

impl std::fmt::Debug for ScopeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScopeKey(<redacted>)")
    }
}

/// Who may call a gateway that holds its own token.
#[derive(Debug, Clone)]
pub enum ClientKeys {
    /// `--allow-anonymous` (and `--demo`): anyone who reaches the gateway.
    Anyone,
    /// Callers sending `Authorization: Bearer <one of these>`.
    Required(Vec<Secret>),
}

#[derive(Debug)]
pub enum AuthMode {
    /// `--access-token`: the gateway calls amoCRM with its own token, for callers with a key.
    ServerToken(Credentials, ClientKeys),
    /// Each caller's `Authorization: Bearer <amoCRM token>` is forwarded.
    Forward(ScopeKey),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no amoCRM token: send `Authorization: Bearer <amoCRM access token>` (this gateway \
         forwards each caller's own token)"
    )]
    MissingToken,
    #[error("the Authorization header must be `Bearer <amoCRM access token>`")]
    MalformedHeader,
    #[error("this gateway needs a client key: send `Authorization: Bearer <client key>`")]
    NoClientKey,
    #[error("the client key is not one this gateway accepts")]
    WrongClientKey,
}

/// The rate-limiter lane of the `index`-th client key: a small number no keyed hash of a token
/// is likely to equal, and the same for a key on every request.
fn client_lane(index: usize) -> u64 {
    u64::try_from(index).map_or(u64::MAX - 1, |i| i + 1)
}

impl AuthMode {
    pub fn server_token(token: AccessToken, keys: ClientKeys) -> Self {
        AuthMode::ServerToken(
            Credentials {
                token,
                scope: Scope(SERVER_SCOPE.into()),
            },
            keys,
        )
    }

    /// The credentials for one request, from its `Authorization` header.
    pub fn credentials(&self, authorization: Option<&[u8]>) -> Result<Credentials, AuthError> {
        match self {
            AuthMode::ServerToken(credentials, ClientKeys::Anyone) => Ok(credentials.clone()),
            AuthMode::ServerToken(credentials, ClientKeys::Required(keys)) => {
                let key = bearer_token(authorization).map_err(|_| AuthError::NoClientKey)?;
                // Every key is compared, so the time taken says nothing about which matched.
                let matched = keys
                    .iter()
                    .enumerate()
                    .fold(None, |matched, (i, expected)| {
                        let this = expected.matches(key).then_some(i);
                        this.or(matched)
                    });
                match matched {
                    // Each key queues in its own lane of the rate limiter, so that one crawling
                    // client cannot starve the others; anonymous callers share the token's.
                    Some(i) => Ok(Credentials {
                        token: credentials.token.clone().in_lane(client_lane(i)),
                        scope: credentials.scope.clone(),
                    }),
                    None => Err(AuthError::WrongClientKey),
                }
            }
            AuthMode::Forward(key) => {
                let token = bearer_token(authorization)?;
                Ok(Credentials {
                    scope: key.scope_of(token),
                    token: AccessToken::new(token),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_tokens_get_distinct_scopes_that_hide_the_token() {
        let mode = AuthMode::Forward(ScopeKey::from_secret("s"));
        let a = mode.credentials(Some(b"Bearer alpha")).expect("valid");
        let b = mode.credentials(Some(b"bearer beta")).expect("valid");
        assert_ne!(a.scope, b.scope);
        assert!(!a.scope.as_str().contains("alpha"));
        let again = AuthMode::Forward(ScopeKey::from_secret("s"))
            .credentials(Some(b"Bearer alpha"))
            .expect("valid");
        assert_eq!(a.scope, again.scope, "the same secret gives the same scope");
    }

    #[test]
    fn secrets_match_only_themselves() {
        let secret = Secret::new("s3cret");
        assert!(secret.matches("s3cret"));
        assert!(!secret.matches("s3cre"));
        assert!(!secret.matches(""));
        assert!(!format!("{secret:?}").contains("s3cret"));
    }

    #[test]
    fn forwarding_requires_a_bearer_token() {
        let mode = AuthMode::Forward(ScopeKey::random());
        assert_eq!(mode.credentials(None).err(), Some(AuthError::MissingToken));
        assert_eq!(
            mode.credentials(Some(b"Bearer  ")).err(),
            Some(AuthError::MissingToken)
        );
        assert_eq!(
            mode.credentials(Some(b"Basic abc")).err(),
            Some(AuthError::MalformedHeader)
        );
    }
}
