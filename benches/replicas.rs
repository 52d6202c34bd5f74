//! One replica against two, on the same workload: how many upstream calls they make and how
//! many requests a second the hot path answers. Two replicas run alone (each with its own
//! caches and budget) and on one Redis (one shared tier and budget).
//!
//! `cargo bench --bench replicas`; REPLICAS_SECONDS sets the length of each hot run (default
//! 5). Needs `redis-server` (scripts/test installs it). The gateways are real processes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use amocrm_gateway::fake_amocrm::FakeOptions;
use common::{GatewayProcess, RedisProcess, client, load, start_fake};

/// Distinct pages the clients ask for, in random order.
const PAGES: u64 = 40;
const CLIENTS: usize = 16;
const SCOPE_SECRET: &str = "bench-scope-secret";

fn main() {
    let seconds: u64 = std::env::var("REPLICAS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        println!("| setup | upstream calls (cold, {PAGES} pages) | hot requests/s | hot p50 |");
        println!("|---|---|---|---|");
        for setup in [Setup::One, Setup::TwoAlone, Setup::TwoOnRedis] {
            let row = run(setup, seconds).await;
            println!(
                "| {} | {} | {:.0} | {:.2} ms |",
                setup.name(),
                row.upstream_calls,
                row.rps,
                row.p50.as_secs_f64() * 1000.0
            );
        }
    });
}

#[derive(Clone, Copy)]
enum Setup {
    One,
    TwoAlone,
    TwoOnRedis,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::One => "1 replica",
            Setup::TwoAlone => "2 replicas, no Redis",
            Setup::TwoOnRedis => "2 replicas on Redis",
        }
    }
}

struct Row {
    upstream_calls: usize,
    rps: f64,
    p50: Duration,
}

fn query(page: u64) -> String {
    format!(
        "{{ contacts(first: 5, filter: {{ query: \"contact{page}@\" }}) {{ nodes {{ id name }} }} }}"
    )
}

async fn run(setup: Setup, seconds: u64) -> Row {
    let upstream = start_fake(FakeOptions {
        latency: Duration::from_millis(50),
        rate_limit: Some(7),
        ..FakeOptions::default()
    })
    .await;
    let base = upstream.fake.base_url();
    let redis = RedisProcess::start();
    let redis_url = redis.url();
    let mut flags = vec![
        "--scope-secret",
        SCOPE_SECRET,
        "--upstream-queue-timeout",
        "30s",
    ];
    if matches!(setup, Setup::TwoOnRedis) {
        flags.extend(["--redis-url", redis_url.as_str()]);
    }
    if matches!(setup, Setup::TwoAlone) {
        // Without Redis each replica must keep to half the budget.
        flags.extend(["--replicas-hint", "2"]);
    }
    let count = if matches!(setup, Setup::One) { 1 } else { 2 };
    let mut replicas = Vec::new();
    for _ in 0..count {
        replicas.push(GatewayProcess::start(&base, &flags).await);
    }
    let urls: Arc<Vec<String>> = Arc::new(replicas.iter().map(|r| r.url.clone()).collect());
    let http = client();

    // Cold: every client asks for every page once, spread over the replicas.
    let cold: Vec<_> = (0..CLIENTS as u64)
        .map(|c| {
            let (http, urls) = (http.clone(), urls.clone());
            tokio::spawn(async move {
                for i in 0..PAGES {
                    let page = (i + c * 7) % PAGES;
                    let url = &urls[((page + c) % urls.len() as u64) as usize];
                    ask(&http, url, &query(page)).await;
                }
            })
        })
        .collect();
    for task in cold {
        task.await.expect("a cold client");
    }
    let upstream_calls = upstream.fake.requests().len();

    // Hot: random pages, requests alternating over the replicas.
    let run = load(CLIENTS, seconds, move |n| {
        let (http, urls) = (http.clone(), urls.clone());
        async move {
            let page = n.wrapping_mul(2_654_435_761) % PAGES;
            let url = &urls[(n % urls.len() as u64) as usize];
            ask(&http, url, &query(page)).await;
        }
    })
    .await;
    Row {
        upstream_calls,
        rps: run.rps(),
        p50: run.percentile(0.5),
    }
}

async fn ask(http: &reqwest::Client, url: &str, query: &str) {
    common::graphql(http, url, query, serde_json::json!({})).await;
}
