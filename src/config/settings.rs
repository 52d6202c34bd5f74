//! The flags checked against each other: [`ServeConfig::validate`] turns what clap parsed into
//! [`Settings`], the only input of the composition root, or a [`ConfigError`] that names the
//! flag and its environment twin. Every rule that involves more than one flag lives here, so
//! building the gateway never has to second-guess its input.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::HeaderValue;
use secrecy::SecretString;
use url::Url;

use super::ServeConfig;
use crate::amocrm::oauth::OAuthConfig;
use crate::amocrm::{AccessToken, PageSize};
use crate::auth::{ClientKeys, ScopeKey, Secret};
use crate::cache::Freshness;
use crate::graphql::Limits;

/// The longest duration any flag accepts: far beyond sense, far below overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// What no combination of flags may be. Messages name flags and environment twins, never a
/// flag's secret value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no amoCRM account: set --upstream-url (AMOCRM_BASE_URL), or use --demo")]
    NoUpstream,
    #[error(
        "invalid --cors-origin (GATEWAY_CORS_ORIGIN) {0:?}: must be an origin such as \
         https://app.example.com, or *"
    )]
    CorsOrigin(String),
    #[error(
        "with --access-token anyone who reaches the gateway reads what the token sees: set \
         --client-key (GATEWAY_CLIENT_KEY), or --allow-anonymous if that is intended"
    )]
    NoClientKeys,
    #[error("{flag} ({env}) is {value:?}, longer than a year")]
    DurationTooLong {
        flag: &'static str,
        env: &'static str,
        value: Duration,
    },
    #[error("{flag} ({env}) must be longer than zero")]
    DurationZero {
        flag: &'static str,
        env: &'static str,
    },
    #[error(
        "--cache-max-age (GATEWAY_CACHE_MAX_AGE, {max_age:?}) must not be shorter than \
         --cache-ttl (GATEWAY_CACHE_TTL, {ttl:?})"
    )]
    MaxAgeBelowTtl { max_age: Duration, ttl: Duration },
    #[error(
        "--redis-url with forwarded tokens needs --scope-secret (GATEWAY_SCOPE_SECRET), the same \
         on every replica: replicas only share what they file under the same scopes"
    )]
    ScopeSecretRequired,
    #[error(
        "--upstream-rps (GATEWAY_UPSTREAM_RPS) {rps} cannot be split over --replicas-hint \
         (GATEWAY_REPLICAS_HINT) {replicas} replicas: each needs at least one call a second"
    )]
    RpsBelowReplicas { rps: u32, replicas: u32 },
    #[error("{flag} ({env}) must be at least {MIN_SECRET_LEN} characters (the value is not shown)")]
    ShortSecret {
        flag: &'static str,
        env: &'static str,
    },
    #[error(
        "--redis-url (GATEWAY_REDIS_URL) is not a Redis URL such as redis://127.0.0.1:6379/0 \
         (the value is not shown: it may hold a password)"
    )]
    RedisUrl,
}

/// The shortest secret accepted: anything shorter is guessable.
pub const MIN_SECRET_LEN: usize = 8;

/// Where the gateway's data comes from.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// `--demo`: the built-in fake, started on a loopback port by the composition root.
    Demo,
    /// `--upstream-url`: a real account.
    Account(Url),
}

/// Whose token calls amoCRM (INTERFACE.md, "Whose token is used").
#[derive(Debug)]
pub enum CredentialPlan {
    /// `--demo`: the fake's admin token, and anyone may call.
    Demo,
    /// `--access-token`.
    ServerToken(AccessToken, ClientKeys),
    /// `--oauth-*`: the gateway obtains and refreshes its own tokens.
    OAuth(OAuthConfig, ClientKeys),
    /// Neither: each caller's own token is forwarded, its scope keyed by this.
    Forward(ScopeKey),
}

/// Browser origins allowed by CORS.
#[derive(Debug, Clone)]
pub enum CorsOrigins {
    None,
    Any,
    List(Vec<HeaderValue>),
}

/// Redis shared by replicas, when configured.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: Secret,
    pub prefix: String,
    pub timeout: Duration,
}

/// The upstream's rate limit and timeouts.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamLimits {
    /// Calls started in any one second; `None` lifts the limit (measurements only).
    pub rate_limit: Option<u32>,
    /// How many replicas share `rate_limit`.
    pub replicas: u32,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub queue_timeout: Duration,
    pub page_size: PageSize,
}

/// Validated settings: everything the composition root needs, each rule already checked.
#[derive(Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub upstream: Upstream,
    pub credentials: CredentialPlan,
    pub redis: Option<RedisSettings>,
    pub limits: UpstreamLimits,
    pub freshness: Freshness,
    pub cache_max_bytes: u64,
    pub operation_limits: Limits,
    pub max_body_bytes: usize,
    pub max_document_bytes: usize,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub cors: CorsOrigins,
    pub webhook_secret: Option<Secret>,
    pub admin_token: Option<Secret>,
    /// An Apollo manifest or hash → document object to read at start.
    pub persisted_queries: Option<String>,
    pub persisted_only: bool,
    pub drain_delay: Duration,
    pub shutdown_timeout: Duration,
    pub live_poll_interval: Duration,
    pub live_keep_alive: Duration,
}

impl ServeConfig {
    /// Checks the flags against each other, in the order an operator would fix them: where the
    /// data comes from, whose token, then the numbers.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        self.check_secrets()?;
        let (upstream, credentials) = self.upstream_and_credentials()?;
        self.check_durations()?;
        if self.cache_max_age < self.cache_ttl {
            return Err(ConfigError::MaxAgeBelowTtl {
                max_age: self.cache_max_age,
                ttl: self.cache_ttl,
            });
        }
        let replicas = self.replicas();
        if self.upstream_rps > 0 && self.upstream_rps < replicas {
            return Err(ConfigError::RpsBelowReplicas {
                rps: self.upstream_rps,
                replicas,
            });
        }
        let cors = cors_origins(&self.cors_origins)?;
        let page_size = PageSize::new(u64::from(self.upstream_page_size)).unwrap_or(PageSize::MAX);
        Ok(Settings {
            listen: self.listen,
            upstream,
            credentials,
            redis: self.redis_url.map(|url| RedisSettings {
                url,
                prefix: self.redis_prefix,
                timeout: self.redis_timeout,
            }),
            limits: UpstreamLimits {
                rate_limit: (self.upstream_rps > 0).then_some(self.upstream_rps),
                replicas,
                timeout: self.upstream_timeout,
                connect_timeout: self.upstream_connect_timeout,
                queue_timeout: self.upstream_queue_timeout,
                page_size,
            },
            freshness: Freshness {
                ttl: self.cache_ttl,
                stale_ttl: self.cache_stale_ttl,
                max_age: self.cache_max_age,
            },
            cache_max_bytes: self.cache_max_bytes,
            operation_limits: Limits {
                max_complexity: self.max_complexity,
                max_depth: self.max_depth,
                max_aliases: self.max_aliases,
                max_selections: usize::try_from(self.max_selections).unwrap_or(usize::MAX),
                max_upstream_calls: self.max_upstream_calls,
                page_size,
                introspection: !self.disable_introspection,
                read_only: self.read_only,
            },
            max_body_bytes: usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX),
            max_document_bytes: usize::try_from(self.max_document_bytes).unwrap_or(usize::MAX),
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            header_read_timeout: self.header_read_timeout,
            cors,
            webhook_secret: self.webhook_secret,
            admin_token: self.admin_token,
            persisted_queries: self.persisted_queries,
            persisted_only: self.persisted_only,
            drain_delay: self.drain_delay,
            shutdown_timeout: self.shutdown_timeout,
            live_poll_interval: self.live_poll_interval,
            live_keep_alive: self.live_keep_alive,
        })
    }

    fn upstream_and_credentials(&self) -> Result<(Upstream, CredentialPlan), ConfigError> {
        if self.demo {
            // clap already refuses --demo with --upstream-url, --access-token or OAuth.
            return Ok((Upstream::Demo, CredentialPlan::Demo));
        }
        let url = self.upstream_url.clone().ok_or(ConfigError::NoUpstream)?;
        let client_keys = || {
            if !self.client_keys.is_empty() {
                Ok(ClientKeys::Required(self.client_keys.clone()))
            } else if self.allow_anonymous {
                Ok(ClientKeys::Anyone)
            } else {
                Err(ConfigError::NoClientKeys)
            }
        };
        let credentials = match (&self.access_token, &self.oauth_client_id) {
            (Some(token), _) => CredentialPlan::ServerToken(token.clone(), client_keys()?),
            // clap requires the other three OAuth flags with --oauth-client-id.
            (None, Some(client_id)) => CredentialPlan::OAuth(
                OAuthConfig {
                    client_id: client_id.clone(),
                    client_secret: self
                        .oauth_client_secret
                        .as_ref()
                        .map(|s| SecretString::from(s.expose().to_owned()))
                        .unwrap_or_default(),
                    redirect_uri: self.oauth_redirect_uri.clone().unwrap_or_default(),
                    token_file: self.oauth_token_file.clone().unwrap_or_default(),
                },
                client_keys()?,
            ),
            (None, None) if self.redis_url.is_some() && self.scope_secret.is_none() => {
                return Err(ConfigError::ScopeSecretRequired);
            }
            (None, None) => CredentialPlan::Forward(
                self.scope_secret
                    .as_ref()
                    .map_or_else(ScopeKey::random, |s| ScopeKey::from_secret(s.expose())),
            ),
        };
        Ok((Upstream::Account(url), credentials))
    }

    /// Secrets are checked here, not by the command-line parser, whose errors quote the value.
    fn check_secrets(&self) -> Result<(), ConfigError> {
        let secrets = [
            (
                "--scope-secret",
                "GATEWAY_SCOPE_SECRET",
                self.scope_secret.as_ref(),
            ),
            (
                "--webhook-secret",
                "GATEWAY_WEBHOOK_SECRET",
                self.webhook_secret.as_ref(),
            ),
            (
                "--admin-token",
                "GATEWAY_ADMIN_TOKEN",
                self.admin_token.as_ref(),
            ),
            (
                "--oauth-client-secret",
                "GATEWAY_OAUTH_CLIENT_SECRET",
                self.oauth_client_secret.as_ref(),
            ),
        ]
        .into_iter()
        .filter_map(|(flag, env, secret)| Some((flag, env, secret?)))
        .chain(
            self.client_keys
                .iter()
                .map(|key| ("--client-key", "GATEWAY_CLIENT_KEY", key)),
        );
        for (flag, env, secret) in secrets {
            if secret.expose().len() < MIN_SECRET_LEN {
                return Err(ConfigError::ShortSecret { flag, env });
            }
        }
        if let Some(url) = &self.redis_url
            && redis::Client::open(url.expose()).is_err()
        {
            return Err(ConfigError::RedisUrl);
        }
        Ok(())
    }

    fn check_durations(&self) -> Result<(), ConfigError> {
        for (flag, env, value) in [
            ("--cache-ttl", "GATEWAY_CACHE_TTL", self.cache_ttl),
            (
                "--cache-stale-ttl",
                "GATEWAY_CACHE_STALE_TTL",
                self.cache_stale_ttl,
            ),
            (
                "--cache-max-age",
                "GATEWAY_CACHE_MAX_AGE",
                self.cache_max_age,
            ),
            (
                "--upstream-timeout",
                "GATEWAY_UPSTREAM_TIMEOUT",
                self.upstream_timeout,
            ),
            (
                "--upstream-connect-timeout",
                "GATEWAY_UPSTREAM_CONNECT_TIMEOUT",
                self.upstream_connect_timeout,
            ),
            (
                "--upstream-queue-timeout",
                "GATEWAY_UPSTREAM_QUEUE_TIMEOUT",
                self.upstream_queue_timeout,
            ),
            ("--drain-delay", "GATEWAY_DRAIN_DELAY", self.drain_delay),
            (
                "--header-read-timeout",
                "GATEWAY_HEADER_READ_TIMEOUT",
                self.header_read_timeout,
            ),
            (
                "--shutdown-timeout",
                "GATEWAY_SHUTDOWN_TIMEOUT",
                self.shutdown_timeout,
            ),
        ] {
            if value > MAX_DURATION {
                return Err(ConfigError::DurationTooLong { flag, env, value });
            }
        }
        // Intervals: zero would spin.
        for (flag, env, value) in [
            (
                "--live-poll-interval",
                "GATEWAY_LIVE_POLL_INTERVAL",
                self.live_poll_interval,
            ),
            (
                "--live-keep-alive",
                "GATEWAY_LIVE_KEEP_ALIVE",
                self.live_keep_alive,
            ),
        ] {
            if value.is_zero() {
                return Err(ConfigError::DurationZero { flag, env });
            }
            if value > MAX_DURATION {
                return Err(ConfigError::DurationTooLong { flag, env, value });
            }
        }
        Ok(())
    }
}

fn cors_origins(origins: &[String]) -> Result<CorsOrigins, ConfigError> {
    if origins.is_empty() {
        return Ok(CorsOrigins::None);
    }
    if origins.iter().any(|o| o == "*") {
        return Ok(CorsOrigins::Any);
    }
    origins
        .iter()
        .map(|o| {
            HeaderValue::from_str(o.trim_end_matches('/'))
                .ok()
                .filter(|_| o.starts_with("http://") || o.starts_with("https://"))
                .ok_or_else(|| ConfigError::CorsOrigin(o.clone()))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(CorsOrigins::List)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::Cli;

    fn validate(args: &[&str]) -> Result<Settings, ConfigError> {
        let cli =
            Cli::try_parse_from(std::iter::once("amocrm-gateway").chain(args.iter().copied()))
                .expect("flags parse");
        cli.serve.validate()
    }

    const ACCOUNT: [&str; 2] = ["--upstream-url", "https://example.amocrm.ru"];

    #[test]
    fn each_rule_names_its_flag_and_environment_twin() {
        let cases: [(&[&str], &[&str]); 7] = [
            (&[], &["--upstream-url", "AMOCRM_BASE_URL"]),
            (
                &[&ACCOUNT[..], &["--access-token", "t"]].concat(),
                &["--client-key", "GATEWAY_CLIENT_KEY"],
            ),
            (
                &[&ACCOUNT[..], &["--cache-ttl", "2years"]].concat(),
                &["--cache-ttl", "GATEWAY_CACHE_TTL"],
            ),
            (
                &[
                    &ACCOUNT[..],
                    &["--cache-ttl", "20m", "--cache-max-age", "10m"],
                ]
                .concat(),
                &[
                    "--cache-max-age",
                    "GATEWAY_CACHE_MAX_AGE",
                    "GATEWAY_CACHE_TTL",
                ],
            ),
            (
                &[&ACCOUNT[..], &["--redis-url", "redis://127.0.0.1:9"]].concat(),
                &["--scope-secret", "GATEWAY_SCOPE_SECRET"],
            ),
            (
                &[
                    &ACCOUNT[..],
                    &["--upstream-rps", "2", "--replicas-hint", "3"],
                ]
                .concat(),
                &[
                    "--upstream-rps",
                    "GATEWAY_UPSTREAM_RPS",
                    "GATEWAY_REPLICAS_HINT",
                ],
            ),
            (
                &[
                    &ACCOUNT[..],
                    &["--access-token", "t", "--allow-anonymous"],
                    &["--live-keep-alive", "0s"],
                ]
                .concat(),
                &["--live-keep-alive", "GATEWAY_LIVE_KEEP_ALIVE", "zero"],
            ),
        ];
        for (args, names) in cases {
            let error = validate(args).expect_err("refused").to_string();
            for name in names {
                assert!(error.contains(name), "{args:?}: {error:?} lacks {name}");
            }
        }
    }

    #[test]
    fn cors_origins_must_be_origins() {
        let error = validate(&[&ACCOUNT[..], &["--cors-origin", "example.com"]].concat())
            .expect_err("refused")
            .to_string();
        assert!(error.contains("--cors-origin"), "{error}");
        let settings = validate(
            &[
                &ACCOUNT[..],
                &[
                    "--cors-origin",
                    "https://app.example.com/,http://localhost:3000",
                ],
            ]
            .concat(),
        )
        .expect("valid");
        assert!(matches!(settings.cors, CorsOrigins::List(ref l) if l.len() == 2));
    }

    #[test]
    fn the_mode_follows_the_flags() {
        assert!(matches!(
            validate(&["--demo"]).expect("valid").credentials,
            CredentialPlan::Demo
        ));
        assert!(matches!(
            validate(&ACCOUNT).expect("valid").credentials,
            CredentialPlan::Forward(_)
        ));
        let anonymous =
            validate(&[&ACCOUNT[..], &["--access-token", "t", "--allow-anonymous"]].concat())
                .expect("valid");
        assert!(matches!(
            anonymous.credentials,
            CredentialPlan::ServerToken(_, ClientKeys::Anyone)
        ));
        let limited = validate(&[&ACCOUNT[..], &["--upstream-rps", "0"]].concat()).expect("valid");
        assert_eq!(limited.limits.rate_limit, None);
    }
}
