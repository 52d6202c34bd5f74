//! The command line. Every flag has an environment twin (INTERFACE.md): `--upstream-url` ↔
//! `AMOCRM_BASE_URL`, `--access-token` ↔ `AMOCRM_ACCESS_TOKEN`, any other `--some-flag` ↔
//! `GATEWAY_SOME_FLAG`. Defaults are named constants.
//!
//! This file is what clap parses, flag by flag; [`settings`] checks the flags against each
//! other and yields the validated [`Settings`] the gateway is built from.

mod settings;

pub use settings::{
    ConfigError, CorsOrigins, CredentialPlan, MAX_DURATION, RedisSettings, Settings, Upstream,
    UpstreamLimits,
};

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use url::Url;

use crate::amocrm::AccessToken;
use crate::auth::Secret;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_FAKE_LISTEN: &str = "127.0.0.1:8081";
pub const DEFAULT_CACHE_TTL: &str = "60s";
pub const DEFAULT_CACHE_STALE_TTL: &str = "10m";
pub const DEFAULT_CACHE_MAX_AGE: &str = "10m";
pub const DEFAULT_CACHE_MAX_BYTES: &str = "256MiB";
pub const DEFAULT_UPSTREAM_PAGE_SIZE: &str = "250";
pub const DEFAULT_UPSTREAM_TIMEOUT: &str = "10s";
pub const DEFAULT_UPSTREAM_RPS: u32 = 7;
pub const DEFAULT_MAX_BODY_BYTES: &str = "1MiB";
/// Sixteen times the largest honest document (GraphiQL's introspection query, about 4 KiB).
pub const DEFAULT_MAX_DOCUMENT_BYTES: &str = "64KiB";
/// Under the common soft limit of 1024 open files, with room left for upstream and Redis
/// connections, log files and the listener.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 512;
pub const DEFAULT_HEADER_READ_TIMEOUT: &str = "10s";
pub const DEFAULT_DRAIN_DELAY: &str = "5s";
pub const DEFAULT_SHUTDOWN_TIMEOUT: &str = "30s";
pub const DEFAULT_UPSTREAM_QUEUE_TIMEOUT: &str = "10s";
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: &str = "3s";
pub const DEFAULT_REDIS_PREFIX: &str = "amocrm-gateway:";
pub const DEFAULT_REDIS_TIMEOUT: &str = "250ms";
/// Replicas assumed to share the rate limit with Redis configured, when not told otherwise.
pub const DEFAULT_REPLICAS_WITH_REDIS: u32 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "amocrm-gateway",
    version,
    about = "A caching GraphQL gateway in front of the amoCRM (Kommo) REST API v4",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeConfig,

    /// Log format on stderr; the level comes from RUST_LOG (default `info`).
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the GraphQL schema (SDL); `schema.graphql` is its output.
    PrintSchema,
    /// Run the built-in fake amoCRM on its own (for compose files, benchmarks, frontend work).
    FakeAmocrm(FakeConfig),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Serving the gateway.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to serve on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// The amoCRM account, `scheme://host[:port]` (e.g. https://example.amocrm.ru).
    #[arg(long, env = "AMOCRM_BASE_URL", value_parser = parse_upstream_url)]
    pub upstream_url: Option<Url>,

    /// The gateway's own amoCRM token. Without it each caller's `Authorization: Bearer` token
    /// is forwarded.
    #[arg(long, env = "AMOCRM_ACCESS_TOKEN", hide_env_values = true, value_parser = parse_token)]
    pub access_token: Option<AccessToken>,

    /// Key for hashing forwarded tokens into cache scopes; random per process when not given.
    #[arg(long, env = "GATEWAY_SCOPE_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub scope_secret: Option<Secret>,

    /// Start the built-in fake amoCRM on a loopback port and serve it with its admin token.
    #[arg(long, env = "GATEWAY_DEMO", conflicts_with_all = ["upstream_url", "access_token"])]
    pub demo: bool,

    /// How long an upstream page stays fresh.
    #[arg(long, env = "GATEWAY_CACHE_TTL", default_value = DEFAULT_CACHE_TTL, value_parser = humantime::parse_duration)]
    pub cache_ttl: Duration,

    /// How long a page may still be served stale after its TTL while it is revalidated.
    #[arg(long, env = "GATEWAY_CACHE_STALE_TTL", default_value = DEFAULT_CACHE_STALE_TTL, value_parser = humantime::parse_duration)]
    pub cache_stale_ttl: Duration,

    /// The longest a page is kept after its last full download (probes cannot see deletions).
    #[arg(long, env = "GATEWAY_CACHE_MAX_AGE", default_value = DEFAULT_CACHE_MAX_AGE, value_parser = humantime::parse_duration)]
    pub cache_max_age: Duration,

    /// Memory budget of all caches together (bytes or IEC units: 64MiB, 1GiB).
    #[arg(long, env = "GATEWAY_CACHE_MAX_BYTES", default_value = DEFAULT_CACHE_MAX_BYTES, value_parser = parse_bytes)]
    pub cache_max_bytes: u64,

    /// Size of the upstream pages windows are cut from (1..=250). Upstream calls, not bytes,
    /// are the scarce resource, so the default is amoCRM's maximum.
    #[arg(long, env = "GATEWAY_UPSTREAM_PAGE_SIZE", default_value = DEFAULT_UPSTREAM_PAGE_SIZE, value_parser = clap::value_parser!(u16).range(1..=250))]
    pub upstream_page_size: u16,

    /// Upstream calls started in any one second, at most (amoCRM allows 7 per integration).
    /// 0 lifts the limit: only for measuring the gateway itself.
    #[arg(long, env = "GATEWAY_UPSTREAM_RPS", default_value_t = DEFAULT_UPSTREAM_RPS)]
    pub upstream_rps: u32,

    /// The longest a request waits for the upstream rate limit before it gets RATE_LIMITED.
    #[arg(long, env = "GATEWAY_UPSTREAM_QUEUE_TIMEOUT", default_value = DEFAULT_UPSTREAM_QUEUE_TIMEOUT, value_parser = humantime::parse_duration)]
    pub upstream_queue_timeout: Duration,

    /// Timeout of one upstream request, connection included.
    #[arg(long, env = "GATEWAY_UPSTREAM_TIMEOUT", default_value = DEFAULT_UPSTREAM_TIMEOUT, value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,

    /// Timeout for connecting to amoCRM.
    #[arg(long, env = "GATEWAY_UPSTREAM_CONNECT_TIMEOUT", default_value = DEFAULT_UPSTREAM_CONNECT_TIMEOUT, value_parser = humantime::parse_duration)]
    pub upstream_connect_timeout: Duration,

    /// A browser origin allowed by CORS (repeat, or comma-separate in the variable; `*` for
    /// any). None by default.
    #[arg(
        long = "cors-origin",
        env = "GATEWAY_CORS_ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// The most an operation may cost: 1 per field, a contacts window multiplying its contacts'
    /// cost by `first`. Costlier operations get QUERY_TOO_COMPLEX before any upstream call.
    #[arg(long, env = "GATEWAY_MAX_COMPLEXITY", default_value_t = crate::graphql::DEFAULT_MAX_COMPLEXITY)]
    pub max_complexity: usize,

    /// The deepest an operation may nest fields (QUERY_TOO_DEEP beyond).
    #[arg(long, env = "GATEWAY_MAX_DEPTH", default_value_t = crate::graphql::DEFAULT_MAX_DEPTH)]
    pub max_depth: usize,

    /// The most aliases an operation may use (TOO_MANY_ALIASES beyond).
    #[arg(long, env = "GATEWAY_MAX_ALIASES", default_value_t = crate::graphql::DEFAULT_MAX_ALIASES)]
    pub max_aliases: usize,

    /// The most selections (fields, and the fragments that bring them) a document may hold once
    /// its fragments are inlined; checked before anything else reads it (QUERY_TOO_COMPLEX
    /// beyond).
    #[arg(long, env = "GATEWAY_MAX_SELECTIONS", default_value_t = crate::graphql::DEFAULT_MAX_SELECTIONS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_selections: u64,

    /// The most upstream calls one operation may cost, priced from its windows, `contact`
    /// fields and linked entities before its first call (QUERY_TOO_COMPLEX beyond).
    #[arg(long, env = "GATEWAY_MAX_UPSTREAM_CALLS", default_value_t = crate::graphql::DEFAULT_MAX_UPSTREAM_CALLS, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_upstream_calls: u64,

    /// The largest request body accepted (HTTP 413 beyond); bytes or IEC units.
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES", default_value = DEFAULT_MAX_BODY_BYTES, value_parser = parse_bytes)]
    pub max_body_bytes: u64,

    /// The longest GraphQL document accepted (HTTP 413 beyond), checked before it is parsed and
    /// only after the caller's token or client key; bytes or IEC units.
    #[arg(long, env = "GATEWAY_MAX_DOCUMENT_BYTES", default_value = DEFAULT_MAX_DOCUMENT_BYTES, value_parser = parse_bytes)]
    pub max_document_bytes: u64,

    /// The most client connections open at once; further ones wait in the listen backlog
    /// until one closes (logged when the limit is reached).
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// How long a client has to send a request's headers, counted from the end of the
    /// previous answer on a kept-alive connection: it also closes idle connections.
    #[arg(long, env = "GATEWAY_HEADER_READ_TIMEOUT", default_value = DEFAULT_HEADER_READ_TIMEOUT, value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// Refuse introspection (INTROSPECTION_DISABLED); GraphiQL then has no schema docs.
    #[arg(long, env = "GATEWAY_DISABLE_INTROSPECTION")]
    pub disable_introspection: bool,

    /// How often the change feed asks amoCRM what changed, for each token with subscribers; it
    /// stretches so that all feeds together take at most a tenth of --upstream-rps.
    #[arg(long, env = "GATEWAY_LIVE_POLL_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub live_poll_interval: Duration,

    /// How often an idle subscription hears from the gateway (a WebSocket ping, an SSE
    /// comment), so that proxies keep it open. A WebSocket client that sends nothing back (not
    /// even the pong) for two of these, or does not take a message within one, is disconnected.
    #[arg(long, env = "GATEWAY_LIVE_KEEP_ALIVE", default_value = "15s", value_parser = humantime::parse_duration)]
    pub live_keep_alive: Duration,

    /// Refuse every mutation with FORBIDDEN before any upstream call: a gateway for
    /// dashboards that must never write to the account.
    #[arg(long, env = "GATEWAY_READ_ONLY")]
    pub read_only: bool,

    /// A key clients must send as `Authorization: Bearer <key>` when the gateway uses its own
    /// amoCRM token (repeat, or comma-separate in the variable). Never forwarded to amoCRM.
    #[arg(long = "client-key", env = "GATEWAY_CLIENT_KEY", value_delimiter = ',', hide_env_values = true, value_parser = parse_secret)]
    pub client_keys: Vec<Secret>,

    /// With the gateway's own token, let anyone who reaches it call without a client key.
    #[arg(long, env = "GATEWAY_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,

    /// On SIGTERM, how long `/healthz` answers 503 while requests are still served, so that
    /// load balancers stop sending new ones.
    #[arg(long, env = "GATEWAY_DRAIN_DELAY", default_value = DEFAULT_DRAIN_DELAY, value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,

    /// After the drain, how long in-flight requests get to finish.
    #[arg(long, env = "GATEWAY_SHUTDOWN_TIMEOUT", default_value = DEFAULT_SHUTDOWN_TIMEOUT, value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Enables `POST /webhooks/amocrm/{secret}` with this secret in the path.
    #[arg(long, env = "GATEWAY_WEBHOOK_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub webhook_secret: Option<Secret>,

    /// Enables `POST /admin/cache/purge` for callers sending `Authorization: Bearer <token>`.
    #[arg(long, env = "GATEWAY_ADMIN_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub admin_token: Option<Secret>,

    /// Redis shared by the replicas (`redis://[:password@]host:port[/db]`): a second cache
    /// tier, one upstream rate limit, single-flight and invalidations across replicas. Off
    /// when not set.
    #[arg(long, env = "GATEWAY_REDIS_URL", hide_env_values = true, value_parser = parse_secret)]
    pub redis_url: Option<Secret>,

    /// Prefix of every Redis key and channel; replicas that share data must use the same.
    #[arg(long, env = "GATEWAY_REDIS_PREFIX", default_value = DEFAULT_REDIS_PREFIX)]
    pub redis_prefix: String,

    /// The longest one Redis operation may take; past it the gateway goes on without Redis.
    #[arg(long, env = "GATEWAY_REDIS_TIMEOUT", default_value = DEFAULT_REDIS_TIMEOUT, value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,

    /// How many replicas share --upstream-rps: while Redis is unreachable (or without it)
    /// each replica keeps to --upstream-rps divided by this. Default: 2 with --redis-url, 1
    /// without.
    #[arg(long, env = "GATEWAY_REPLICAS_HINT", value_parser = clap::value_parser!(u32).range(1..))]
    pub replicas_hint: Option<u32>,

    /// Persisted queries that are always known: an Apollo persisted-query manifest, or a JSON
    /// object of SHA-256 hashes to documents.
    #[arg(long, env = "GATEWAY_PERSISTED_QUERIES")]
    pub persisted_queries: Option<String>,

    /// Run only the documents of --persisted-queries, by hash; anything else gets
    /// PERSISTED_QUERY_REQUIRED (GraphiQL too).
    #[arg(long, env = "GATEWAY_PERSISTED_ONLY", requires = "persisted_queries")]
    pub persisted_only: bool,

    /// OAuth 2.0: the integration's id. With --oauth-client-secret, --oauth-redirect-uri and
    /// --oauth-token-file the gateway obtains and refreshes its own access tokens (instead of
    /// --access-token); client keys apply as with --access-token.
    #[arg(
        long,
        env = "GATEWAY_OAUTH_CLIENT_ID",
        requires_all = ["oauth_client_secret", "oauth_redirect_uri", "oauth_token_file"],
        conflicts_with_all = ["access_token", "demo"]
    )]
    pub oauth_client_id: Option<String>,

    /// OAuth 2.0: the integration's secret key.
    #[arg(long, env = "GATEWAY_OAUTH_CLIENT_SECRET", hide_env_values = true, value_parser = parse_secret, requires = "oauth_client_id")]
    pub oauth_client_secret: Option<Secret>,

    /// OAuth 2.0: the integration's redirect URI, as registered in amoCRM.
    #[arg(long, env = "GATEWAY_OAUTH_REDIRECT_URI", requires = "oauth_client_id")]
    pub oauth_redirect_uri: Option<String>,

    /// OAuth 2.0: a JSON file holding at least {"refresh_token": "…"}; the gateway keeps the
    /// current pair in it (rewritten atomically on every refresh; keep it on a volume).
    #[arg(long, env = "GATEWAY_OAUTH_TOKEN_FILE", requires = "oauth_client_id")]
    pub oauth_token_file: Option<std::path::PathBuf>,
}

impl ServeConfig {
    /// How many replicas share the upstream rate limit.
    pub fn replicas(&self) -> u32 {
        self.replicas_hint.unwrap_or(if self.redis_url.is_some() {
            DEFAULT_REPLICAS_WITH_REDIS
        } else {
            1
        })
    }
}

/// Running the fake amoCRM alone.
#[derive(Debug, Clone, Args)]
pub struct FakeConfig {
    /// Address to serve the fake on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = DEFAULT_FAKE_LISTEN)]
    pub listen: SocketAddr,

    /// Latency added to every answer, to imitate a remote amoCRM.
    #[arg(long, env = "GATEWAY_LATENCY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub latency: Duration,

    /// Answer 429 above this many requests in one second, as amoCRM does (none by default).
    #[arg(long, env = "GATEWAY_RATE_LIMIT")]
    pub rate_limit: Option<u32>,

    /// How many contacts the fake holds.
    #[arg(long, env = "GATEWAY_CONTACTS", default_value_t = crate::fake_amocrm::DEFAULT_CONTACTS)]
    pub contacts: usize,
}

fn parse_token(value: &str) -> Result<AccessToken, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(AccessToken::new(value))
}

/// Never fails: clap would quote a rejected value in its error. A secret's rules are checked
/// by [`ServeConfig::validate`], whose errors name the flag only.
fn parse_secret(value: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(value.trim()))
}

fn parse_upstream_url(value: &str) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must start with https:// (or http:// for a local fake)".to_owned());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name the account's host".to_owned());
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(
            "must be scheme://host[:port] only; the gateway adds /api/v4/... itself".to_owned(),
        );
    }
    Ok(url)
}

/// Bytes, or a number with an IEC unit (`KiB`, `MiB`, `GiB`, `TiB`).
pub fn parse_bytes(value: &str) -> Result<u64, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a size such as 1048576 or 64MiB"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit {other:?}; use B, KiB, MiB, GiB or TiB"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{value:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1 GiB"), Ok(1 << 30));
        assert!(parse_bytes("64MB").is_err());
        assert!(parse_bytes("MiB").is_err());
    }

    #[test]
    fn upstream_url_is_an_origin() {
        assert!(parse_upstream_url("https://example.amocrm.ru").is_ok());
        assert!(parse_upstream_url("http://127.0.0.1:9000/").is_ok());
        assert!(parse_upstream_url("https://example.amocrm.ru/api/v4").is_err());
        assert!(parse_upstream_url("ftp://example.amocrm.ru").is_err());
    }

    #[test]
    fn demo_conflicts_with_an_upstream() {
        let parsed = Cli::try_parse_from([
            "amocrm-gateway",
            "--demo",
            "--upstream-url",
            "https://example.amocrm.ru",
        ]);
        assert!(parsed.is_err());
    }
}
