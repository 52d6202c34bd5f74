//! Spawns the fake amoCRM and a gateway in front of it, both on port 0, and talks GraphQL to the
//! gateway over real HTTP. Nothing here mocks the gateway: assertions are on what reached the
//! fake.

use std::net::SocketAddr;
use std::sync::Arc;

use amocrm_gateway::Gateway;
use amocrm_gateway::config::Cli;
use amocrm_gateway::fake_amocrm::{FakeAmoCrm, FakeOptions, RecordedRequest};
use clap::Parser;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub use amocrm_gateway::fake_amocrm::{ADMIN_TOKEN, MANAGER_TOKEN, MANAGER_USER_ID, UNPAID_TOKEN};

pub struct TestApp {
    /// Shared by the replicas of a test that runs several gateways.
    pub fake: Arc<FakeAmoCrm>,
    pub addr: SocketAddr,
    http: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn data(&self) -> &Value {
        assert!(
            self.body.get("errors").is_none(),
            "unexpected errors: {}",
            self.body
        );
        &self.body["data"]
    }

    /// The codes of all errors, in order.
    pub fn codes(&self) -> Vec<String> {
        error_codes(&self.body)
    }

    pub fn first_error(&self) -> &Value {
        &self.body["errors"][0]
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

impl TestApp {
    /// A gateway that forwards each caller's token to a default fake.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(&[], FakeOptions::default()).await
    }

    /// A gateway started with these extra command-line flags, in front of a fake with `options`.
    pub async fn spawn_with(flags: &[&str], options: FakeOptions) -> TestApp {
        let fake = FakeAmoCrm::start(([127, 0, 0, 1], 0).into(), options)
            .await
            .expect("the fake binds a free port");
        let (addr, stop) = start_gateway(&fake.base_url(), flags).await;
        TestApp {
            fake: Arc::new(fake),
            addr,
            http: reqwest::Client::new(),
            _stop: stop,
        }
    }

    /// A gateway started elsewhere (another process) at `addr`, in front of `fake`.
    pub fn beside(fake: FakeAmoCrm, addr: SocketAddr) -> TestApp {
        let (stop, _) = oneshot::channel();
        TestApp {
            fake: Arc::new(fake),
            addr,
            http: reqwest::Client::new(),
            _stop: stop,
        }
    }

    /// Another gateway in front of the same fake: a replica.
    pub async fn replica(&self, flags: &[&str]) -> TestApp {
        let (addr, stop) = start_gateway(&self.fake.base_url(), flags).await;
        TestApp {
            fake: self.fake.clone(),
            addr,
            http: reqwest::Client::new(),
            _stop: stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn query(&self, token: Option<&str>, query: &str) -> Reply {
        self.query_with(token, query, json!({})).await
    }

    pub async fn query_with(&self, token: Option<&str>, query: &str, variables: Value) -> Reply {
        let mut request = self
            .http
            .post(self.url("/graphql"))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Self::reply(request.send().await.expect("the gateway answers")).await
    }

    pub async fn reply(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("a body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The contacts-list calls the fake received.
    pub fn contact_calls(&self) -> Vec<RecordedRequest> {
        self.fake
            .requests()
            .into_iter()
            .filter(|r| r.path == "/api/v4/contacts")
            .collect()
    }

    pub fn upstream_calls(&self) -> usize {
        self.fake.requests().len()
    }

    /// The value of one series of `/metrics`, e.g.
    /// `gateway_cache_lookups_total{cache="pages",result="hit"}`; 0 when not yet recorded.
    pub async fn metric(&self, series: &str) -> f64 {
        series_value(&metrics_text(&self.http, self.addr).await, series)
    }

    /// The sum of every series of the metric `name`, whatever their labels.
    pub async fn metric_total(&self, name: &str) -> f64 {
        metrics_text(&self.http, self.addr)
            .await
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(name)?;
                let value = match rest.strip_prefix('{') {
                    Some(labelled) => labelled.split_once("} ")?.1,
                    None => rest.strip_prefix(' ')?,
                };
                value.trim().parse::<f64>().ok()
            })
            .sum()
    }

    /// Waits until `series` reaches `at_least`: the signal that background work finished.
    pub async fn wait_for_metric(&self, series: &str, at_least: f64) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if self.metric(series).await >= at_least {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} never reached {at_least}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    pub async fn post(&self, path: &str, bearer: Option<&str>, body: &str) -> reqwest::Response {
        let mut request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned());
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("the gateway answers")
    }
}

/// Checks a burst of `replies` against a fake that 429s above `limit` calls a second: each
/// was answered or refused with RATE_LIMITED, amoCRM never said 429, no second held more than
/// `limit` calls, and every refused query made no upstream call. Returns (answered, refused).
pub fn kept_to_the_rate_limit(
    fake: &FakeAmoCrm,
    replies: &[Reply],
    limit: usize,
) -> (usize, usize) {
    let (mut answered, mut limited) = (0, 0);
    for reply in replies {
        match reply.codes().as_slice() {
            [] => answered += 1,
            [code] if code == "RATE_LIMITED" => limited += 1,
            other => panic!(
                "neither answered nor RATE_LIMITED: {other:?} {}",
                reply.body
            ),
        }
    }
    let requests = fake.requests();
    assert_eq!(
        requests.iter().filter(|r| r.rate_limited).count(),
        0,
        "amoCRM never said 429"
    );
    let busiest = fake.busiest_second();
    assert!(busiest <= limit, "{busiest} calls in one second");
    assert_eq!(
        answered,
        requests.len(),
        "a refused query made no upstream call"
    );
    (answered, limited)
}

/// The `extensions.code` of each error in a GraphQL response `body`, in order.
pub fn error_codes(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    e["extensions"]["code"]
                        .as_str()
                        .unwrap_or("<none>")
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The gateway at `addr`'s `/metrics`, as text.
pub async fn metrics_text(http: &reqwest::Client, addr: SocketAddr) -> String {
    http.get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("text")
}

/// One series' value in a `/metrics` text; 0 when not yet recorded.
pub fn series_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

/// Lets a cache TTL pass: the passing of time is what these tests are about.
pub async fn outlive(ttl: std::time::Duration) {
    tokio::time::sleep(ttl + std::time::Duration::from_millis(100)).await;
}

/// Starts a gateway in front of `upstream_url` on a free port; it stops when the sender drops.
pub async fn start_gateway(
    upstream_url: &str,
    flags: &[&str],
) -> (SocketAddr, oneshot::Sender<()>) {
    let mut args = vec![
        "amocrm-gateway",
        "--listen",
        "127.0.0.1:0",
        "--upstream-url",
        upstream_url,
    ];
    args.extend_from_slice(flags);
    let cli = Cli::try_parse_from(args).expect("valid flags");
    let gateway = Gateway::build(cli.serve).await.expect("the gateway starts");
    let addr = gateway.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(gateway.run(async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// The ids in a connection's `nodes` or `edges`, as numbers.
pub fn ids(connection: &Value) -> Vec<u64> {
    let nodes = match connection.get("nodes") {
        Some(nodes) => nodes.as_array().cloned().unwrap_or_default(),
        None => connection["edges"]
            .as_array()
            .map(|edges| edges.iter().map(|e| e["node"].clone()).collect())
            .unwrap_or_default(),
    };
    nodes
        .iter()
        .map(|n| {
            n["id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("numeric id")
        })
        .collect()
}

/// A real `redis-server` of the test's own, on a free loopback port; killed when dropped.
pub struct RedisServer {
    port: u16,
    process: Option<std::process::Child>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut server = RedisServer {
            port,
            process: None,
        };
        server.restart().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again, on the same port, empty: it keeps nothing on disk) and waits until it
    /// answers.
    pub async fn restart(&mut self) {
        let process = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server could not start ({e}); scripts/test installs it (Debian package redis-server)")
            });
        self.process = Some(process);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut pong = [0u8; 7];
                if stream.write_all(b"PING\r\n").await.is_ok()
                    && stream.read_exact(&mut pong).await.is_ok()
                    && &pong == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not answer on port {}",
                self.port
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The webhook secret of [`replicas`].
pub const REPLICA_WEBHOOK_SECRET: &str = "webhook-secret-1";
/// Whether a replica listens to the others.
pub const SUBSCRIBED: &str = "gateway_redis_subscribed";

/// Replica A (with the fake) and replica B, both on `redis`.
pub async fn replicas(
    redis: &RedisServer,
    options: FakeOptions,
    extra: &[&str],
) -> (TestApp, TestApp) {
    let url = redis.url();
    let mut flags = vec![
        "--redis-url",
        url.as_str(),
        "--scope-secret",
        "shared-scope-secret",
        "--webhook-secret",
        REPLICA_WEBHOOK_SECRET,
        // Generous: the tests run every replica on one thread, where a busy moment would
        // otherwise read as Redis being slow.
        "--redis-timeout",
        "2s",
    ];
    flags.extend_from_slice(extra);
    let a = TestApp::spawn_with(&flags, options).await;
    let b = a.replica(&flags).await;
    // Listening to each other before the test begins: pub/sub only tells those listening.
    a.wait_for_metric(SUBSCRIBED, 1.0).await;
    b.wait_for_metric(SUBSCRIBED, 1.0).await;
    (a, b)
}
