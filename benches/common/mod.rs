//! What the benchmarks share: servers on their own runtimes, the gateway as a process.
#![allow(dead_code, reason = "each benchmark uses its own part of this")]

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amocrm_gateway::fake_amocrm::{FakeAmoCrm, FakeOptions};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A runtime on its own thread, so that servers in this process are not scheduled behind the
/// load generator. Dropped from async code, it is shut down by its thread, where that is allowed.
pub struct Background {
    pub handle: tokio::runtime::Handle,
    _stop: std::sync::mpsc::Sender<()>,
}

pub fn background(workers: usize) -> Background {
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .expect("a runtime");
        handle_tx
            .send(runtime.handle().clone())
            .expect("main waits");
        let _ = stopped.recv();
    });
    Background {
        handle: handle_rx.recv().expect("the runtime starts"),
        _stop: stop,
    }
}

/// The benchmark's own runtime: two workers, as the machine has two cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Seconds from the environment variable `name`, or `default`.
pub fn seconds_from_env(name: &str, default: u64) -> std::time::Duration {
    std::time::Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default),
    )
}

/// Serves `app` on a free loopback port, on a runtime of its own (so that it is not scheduled
/// behind the load generator).
pub async fn serve_in_background(app: axum::Router) -> (std::net::SocketAddr, Background) {
    let runtime = background(2);
    let addr = runtime
        .handle
        .spawn(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move { axum::serve(listener, app).await });
            addr
        })
        .await
        .expect("spawned");
    (addr, runtime)
}

pub struct Upstream {
    pub fake: FakeAmoCrm,
    _runtime: Background,
}

pub async fn start_fake(options: FakeOptions) -> Upstream {
    let runtime = background(1);
    let fake = runtime
        .handle
        .spawn(FakeAmoCrm::start(([127, 0, 0, 1], 0).into(), options))
        .await
        .expect("spawned")
        .expect("the fake starts");
    Upstream {
        fake,
        _runtime: runtime,
    }
}

pub struct GatewayProcess {
    child: Child,
    pub url: String,
}

impl GatewayProcess {
    pub async fn start(upstream: &str, flags: &[&str]) -> Self {
        // `GATEWAY_BIN` measures another build (an older commit's, say) with the same load.
        let binary = std::env::var_os("GATEWAY_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_amocrm-gateway").into());
        let mut child = Command::new(binary)
            .args(["--listen", "127.0.0.1:0", "--upstream-url", upstream])
            .args(flags)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the gateway binary starts");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut url = String::new();
        while let Some(line) = lines.next_line().await.expect("reads") {
            if let Some(graphiql) = line.strip_prefix("GraphiQL: ") {
                url = graphiql.replace("/graphiql", "/graphql");
                break;
            }
        }
        assert!(!url.is_empty(), "the gateway printed no URL");
        GatewayProcess { child, url }
    }

    pub fn rss_bytes(&self) -> u64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_gzip()
        .pool_max_idle_per_host(64)
        .build()
        .expect("a client")
}

/// Latencies of one run, and how many requests it made.
pub struct Run {
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
}

impl Run {
    pub fn rps(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        percentile(&sorted, p)
    }
}

/// The `p` quantile (0..=1) of `sorted` samples, nearest rank; zero for none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

/// `clients` loops sending `request(n)` for `seconds`, with `n` unique across the run.
pub async fn load<F, Fut>(clients: usize, seconds: u64, request: F) -> Run
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let request = Arc::new(request);
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let request = request.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let sent = Instant::now();
                    request(n).await;
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.expect("a worker"));
    }
    Run {
        latencies,
        elapsed: started.elapsed(),
    }
}

/// A Redis server of the benchmark's own, on a free port; stopped on drop.
pub struct RedisProcess {
    child: std::process::Child,
    port: u16,
}

impl RedisProcess {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts (scripts/test installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        RedisProcess { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GraphQL request with the fake's admin token; the answer, checked for errors.
pub async fn graphql(
    http: &reqwest::Client,
    url: &str,
    query: &str,
    variables: serde_json::Value,
) -> serde_json::Value {
    let body: serde_json::Value = http
        .post(url)
        .bearer_auth(amocrm_gateway::fake_amocrm::ADMIN_TOKEN)
        .json(&serde_json::json!({ "query": query, "variables": variables }))
        .send()
        .await
        .expect("the gateway answers")
        .json()
        .await
        .expect("JSON");
    assert!(body.get("errors").is_none(), "{body}");
    body
}
