//! Load benchmark: the gateway (the release binary, in its own process) against the fake amoCRM
//! on loopback, next to a minimal axum handler serving the same bytes, all in one run.
//!
//!     cargo bench --bench load                 # hot, cold and memory
//!     cargo bench --bench load -- hot          # or cold, or memory
//!
//! Every response body is checked for GraphQL errors; a run with any fails. `LOAD_HOT_ROUNDS`
//! and `LOAD_COLD_ROUNDS` change the number of alternating rounds; `GATEWAY_BIN` measures another
//! build of the gateway (an older commit's, say) under the same load.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amocrm_gateway::fake_amocrm::{ADMIN_TOKEN, FakeOptions};

mod common;
use common::{Background, GatewayProcess, client, load, serve_in_background, start_fake};

const HOT_SECONDS: u64 = 5;
const COLD_SECONDS: u64 = 3;
const COLD_ROUNDS: usize = 5;
const HOT_ROUNDS: usize = 3;
const HOT_CLIENTS: usize = 16;
const UPSTREAM_LATENCY: Duration = Duration::from_millis(20);
/// The budget of the memory run; `LOAD_MEMORY_BUDGET_MIB` overrides it.
const MEMORY_BUDGET_MIB: u64 = 64;
const MEMORY_PAGES: usize = 1_500;

/// The gateway under measurement: its own token, long TTLs, and no upstream rate limit, so the
/// figures are the gateway's own overhead.
const BENCH_FLAGS: [&str; 9] = [
    "--access-token",
    ADMIN_TOKEN,
    "--allow-anonymous",
    "--cache-ttl",
    "10m",
    "--cache-max-age",
    "10m",
    "--upstream-rps",
    "0",
];

const HOT_QUERY: &str = "{ contacts(first: 50) { edges { cursor node { id name updatedAt \
    customFieldsValues { fieldId fieldCode values { value enumCode } } tags { id name } \
    leads { id } } } pageInfo { hasNextPage endCursor } } }";

fn main() {
    let modes: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |mode: &str| modes.is_empty() || modes.iter().any(|m| m == mode);
    common::runtime().block_on(async {
        if wants("hot") {
            hot().await;
        }
        if wants("cold") {
            cold().await;
        }
        if wants("memory") {
            memory().await;
        }
    });
}

async fn post_graphql(client: &reqwest::Client, url: &str, query: &str) -> bytes::Bytes {
    post_body(client, url, &serde_json::json!({ "query": query })).await
}

async fn post_body(client: &reqwest::Client, url: &str, body: &serde_json::Value) -> bytes::Bytes {
    let body = client
        .post(url)
        .json(body)
        .send()
        .await
        .expect("the gateway answers")
        .bytes()
        .await
        .expect("a body");
    assert!(
        !body.windows(9).any(|w| w == b"\"errors\":"),
        "a GraphQL error: {}",
        String::from_utf8_lossy(&body)
    );
    body
}

/// A minimal axum handler that returns `body` for every POST: the ceiling for the hot path.
async fn start_reference(body: bytes::Bytes) -> (SocketAddr, Background) {
    serve_in_background(axum::Router::new().route(
        "/graphql",
        axum::routing::post(move || {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    ))
    .await
}

/// A bare reverse proxy in front of the fake: an axum handler that passes the query string on
/// with reqwest and returns the body. What one proxy hop costs on this machine, as a floor for
/// what the gateway adds on a cold request.
async fn start_proxy(upstream: String) -> (String, Background) {
    let http = reqwest::Client::new();
    let (addr, runtime) = serve_in_background(axum::Router::new().route(
        "/proxy",
        axum::routing::get(move |uri: axum::http::Uri| {
            let http = http.clone();
            let url = format!(
                "{upstream}/api/v4/contacts?{}",
                uri.query().unwrap_or_default()
            );
            async move {
                let body = http
                    .get(url)
                    .bearer_auth(ADMIN_TOKEN)
                    .send()
                    .await
                    .expect("the fake answers")
                    .bytes()
                    .await
                    .expect("a body");
                ([("content-type", "application/json")], body)
            }
        }),
    ))
    .await;
    (format!("http://{addr}/proxy"), runtime)
}

async fn hot() {
    let upstream = start_fake(FakeOptions::default()).await;
    let gateway = GatewayProcess::start(&upstream.fake.base_url(), &BENCH_FLAGS).await;
    let client = client();
    let body = post_graphql(&client, &gateway.url, HOT_QUERY).await;
    let (reference_addr, _reference) = start_reference(body.clone()).await;
    let reference_url = format!("http://{reference_addr}/graphql");

    let run = |url: String| {
        let client = client.clone();
        load(HOT_CLIENTS, HOT_SECONDS, move |_| {
            let client = client.clone();
            let url = url.clone();
            async move {
                post_graphql(&client, &url, HOT_QUERY).await;
            }
        })
    };
    // Alternating rounds, compared by their medians: on a shared 2-core machine one unlucky
    // window would otherwise decide the ratio.
    let (mut reference, mut gateway_runs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds("LOAD_HOT_ROUNDS", HOT_ROUNDS) {
        let r = run(reference_url.clone()).await;
        let g = run(gateway.url.clone()).await;
        ratios.push(g.rps() / r.rps());
        reference.push(r);
        gateway_runs.push(g);
    }
    let upstream_calls = upstream.fake.requests().len();
    let requests: usize = gateway_runs.iter().map(|g| g.latencies.len()).sum();

    println!(
        "\n## hot: the same 50-contact query, {HOT_CLIENTS} clients, {} alternating rounds of {HOT_SECONDS}s, {} bytes a response (medians of the rounds)",
        ratios.len(),
        body.len()
    );
    println!("| server | req/s | p50 | p99 |\n|---|---|---|---|");
    for (name, runs) in [
        ("reference (axum, same bytes)", &reference),
        ("gateway", &gateway_runs),
    ] {
        let of =
            |f: &dyn Fn(&common::Run) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
        println!(
            "| {name} | {:.0} | {:.3} ms | {:.3} ms |",
            of(&|r| r.rps()),
            of(&|r| r.percentile(0.5).as_secs_f64() * 1e3),
            of(&|r| r.percentile(0.99).as_secs_f64() * 1e3),
        );
    }
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "gateway/reference throughput: median {:.0} % (rounds: {}); upstream calls for {} requests: {upstream_calls}",
        100.0 * median(&mut ratios),
        sorted
            .iter()
            .map(|r| format!("{:.0} %", 100.0 * r))
            .collect::<Vec<_>>()
            .join(", "),
        requests + 1
    );
}

/// `default` rounds, or as many as the environment variable `name` says.
fn rounds(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(default)
}

async fn cold() {
    let latency = std::env::var("LOAD_UPSTREAM_LATENCY_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(UPSTREAM_LATENCY, Duration::from_millis);
    let upstream = start_fake(FakeOptions {
        latency,
        ..FakeOptions::default()
    })
    .await;
    let gateway = GatewayProcess::start(&upstream.fake.base_url(), &BENCH_FLAGS).await;
    let client = client();
    let base = upstream.fake.base_url();
    let cold_rounds = rounds("LOAD_COLD_ROUNDS", COLD_ROUNDS);
    println!(
        "\n## cold: every request a distinct search, upstream latency {latency:?}; \
         {cold_rounds} alternating rounds of {COLD_SECONDS}s direct, through a bare proxy and through the gateway"
    );
    let (proxy_url, _proxy) = start_proxy(base.clone()).await;
    // The hops measured beside the gateway, each as a floor of what forwarding costs here.
    let mut hops = vec![("a bare proxy hop (in this process)", proxy_url)];
    let _nginx = std::env::var("LOAD_NGINX").ok().map(|binary| {
        let nginx = Nginx::start(&binary, &base);
        hops.push(("an nginx hop (a process of its own)", nginx.url.clone()));
        nginx
    });
    println!(
        "| clients | direct p50 | gateway p50 | added at p50 (median of rounds) | added at p99 (median) |{} upstream calls / gateway requests |\n|---|---|---|---|---|{}---|",
        hops.iter()
            .map(|(name, _)| format!(" {name} adds at p50 (median) |"))
            .collect::<String>(),
        "---|".repeat(hops.len()),
    );
    // Each search finds one contact by its e-mail; a counter keeps every search distinct.
    let searches = Arc::new(AtomicU64::new(0));
    for clients in [1, 8] {
        let (mut added_p50, mut added_p99, mut direct_p50, mut gateway_p50) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut hop_added = vec![Vec::new(); hops.len()];
        let (mut requests, mut calls) = (0, 0);
        for _ in 0..cold_rounds {
            let direct = searches_at(&client, clients, format!("{base}/api/v4/contacts")).await;
            for ((_, hop_url), added) in hops.iter().zip(&mut hop_added) {
                let proxied = searches_at(&client, clients, hop_url.clone()).await;
                added.push(
                    proxied.percentile(0.5).as_secs_f64() - direct.percentile(0.5).as_secs_f64(),
                );
            }
            upstream.fake.clear_requests();
            let through = {
                let client = client.clone();
                let url = gateway.url.clone();
                let searches = searches.clone();
                load(clients, COLD_SECONDS, move |_| {
                    let client = client.clone();
                    let url = url.clone();
                    let n = searches.fetch_add(1, Ordering::Relaxed);
                    let search = cold_search(n);
                    async move {
                        post_body(&client, &url, &search).await;
                    }
                })
                .await
            };
            calls += upstream.fake.requests().len();
            requests += through.latencies.len();
            added_p50
                .push(through.percentile(0.5).as_secs_f64() - direct.percentile(0.5).as_secs_f64());
            added_p99.push(
                through.percentile(0.99).as_secs_f64() - direct.percentile(0.99).as_secs_f64(),
            );
            direct_p50.push(direct.percentile(0.5).as_secs_f64());
            gateway_p50.push(through.percentile(0.5).as_secs_f64());
        }
        let ms = |v: f64| format!("{:.2} ms", v * 1000.0);
        println!(
            "| {clients} | {} | {} | {} | {} |{} {calls} / {requests} |",
            ms(median(&mut direct_p50)),
            ms(median(&mut gateway_p50)),
            ms(median(&mut added_p50)),
            ms(median(&mut added_p99)),
            hop_added
                .iter_mut()
                .map(|added| format!(" {} |", ms(median(added))))
                .collect::<String>(),
        );
    }

    // The same cold load under amoCRM's real limit: what clients see when the gateway keeps
    // the account safe.
    {
        let limited = GatewayProcess::start(
            &upstream.fake.base_url(),
            &[
                &BENCH_FLAGS[..7],
                &["--upstream-rps", "7", "--upstream-queue-timeout", "10s"],
            ]
            .concat(),
        )
        .await;
        upstream.fake.clear_requests();
        let client = client.clone();
        let url = limited.url.clone();
        let searches = searches.clone();
        let run = load(8, COLD_SECONDS * 2, move |_| {
            let client = client.clone();
            let url = url.clone();
            let n = searches.fetch_add(1, Ordering::Relaxed);
            let search = cold_search(n);
            async move {
                post_body(&client, &url, &search).await;
            }
        })
        .await;
        let busiest = upstream.fake.busiest_second();
        println!(
            "under the default 7 rps limit, 8 clients, {}s: {:.1} req/s, p50 {:.0} ms, p99 {:.0} ms, busiest upstream second {busiest}",
            COLD_SECONDS * 2,
            run.rps(),
            run.percentile(0.5).as_secs_f64() * 1000.0,
            run.percentile(0.99).as_secs_f64() * 1000.0,
        );
    }

    // One distinct page asked by many clients at once, cold: one upstream call.
    upstream.fake.clear_requests();
    let query = "{ contacts(first: 50, filter: { query: \"Иван\" }) { nodes { id } } }";
    let burst: Vec<_> = (0..64)
        .map(|_| post_graphql(&client, &gateway.url, query))
        .collect();
    futures::future::join_all(burst).await;
    println!(
        "64 concurrent identical cold requests: {} upstream call(s)",
        upstream.fake.requests().len()
    );
}

/// `clients` loops of distinct amoCRM searches sent straight to `url` (the fake or a hop in
/// front of it), each checked for a 200.
async fn searches_at(client: &reqwest::Client, clients: usize, url: String) -> common::Run {
    let client = client.clone();
    load(clients, COLD_SECONDS, move |n| {
        let client = client.clone();
        let url = format!("{url}?page=1&limit=250&query=contact{}%40", n % 2400);
        async move {
            let response = client
                .get(url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .expect("answers");
            assert!(response.status().is_success(), "answers 200");
            response.bytes().await.expect("a body");
        }
    })
    .await
}

/// The `n`-th distinct search of a run, as a request body: the e-mail picks one contact, the
/// date range makes the search distinct, so each is a cold miss. Each is a document of its own,
/// or with `LOAD_COLD_VARIABLES=1` one document with the search in its variables, as apps send
/// searches.
fn cold_search(n: u64) -> serde_json::Value {
    let (email, from) = (
        format!("contact{}@", n % 2400),
        rfc3339(946_684_800 + n as i64),
    );
    if std::env::var_os("LOAD_COLD_VARIABLES").is_some_and(|v| v == "1") {
        serde_json::json!({
            "query": "query Search($query: String!, $from: DateTime!) { contacts(first: 50, \
                filter: { query: $query, updatedAt: { from: $from } }) { nodes { id name } } }",
            "variables": { "query": email, "from": from },
        })
    } else {
        serde_json::json!({ "query": format!(
            "{{ contacts(first: 50, filter: {{ query: \"{email}\", updatedAt: {{ from: \"{from}\" }} }}) {{ nodes {{ id name }} }} }}"
        ) })
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn memory() {
    let upstream = start_fake(FakeOptions::default()).await;
    let budget_mib: u64 = std::env::var("LOAD_MEMORY_BUDGET_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MEMORY_BUDGET_MIB);
    let budget = format!("{budget_mib}MiB");
    let gateway = GatewayProcess::start(
        &upstream.fake.base_url(),
        &[&BENCH_FLAGS[..], &["--cache-max-bytes", &budget]].concat(),
    )
    .await;
    let client = client();
    let idle = gateway.rss_bytes();
    let mut peak = idle;
    let started = Instant::now();
    // Distinct lists of up to 250 contacts with every relation: far more than the budget holds.
    for i in 0..MEMORY_PAGES {
        let query = format!(
            "{{ contacts(first: 250, filter: {{ createdAt: {{ from: \"{}\" }} }}) {{ nodes {{ id name \
             customFieldsValues {{ fieldId values {{ value enumCode }} }} tags {{ name }} leads {{ id }} \
             customers {{ id }} catalogElements {{ id metadata }} }} }} }}",
            rfc3339(1_585_000_000 + i as i64 * 3_000)
        );
        post_graphql(&client, &gateway.url, &query).await;
        if i % 25 == 0 {
            peak = peak.max(gateway.rss_bytes());
        }
    }
    let end = gateway.rss_bytes();
    peak = peak.max(end);
    let metrics = client
        .get(gateway.url.replace("/graphql", "/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let weighted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("gateway_cache_weighted_bytes"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "\n## memory: {MEMORY_PAGES} distinct full pages (every relation) through --cache-max-bytes {budget}"
    );
    println!(
        "| RSS idle | RSS peak | RSS end | caches' weighted bytes | peak over budget |\n|---|---|---|---|---|"
    );
    println!(
        "| {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
        mib(idle),
        mib(peak),
        mib(end),
        weighted / (1 << 20) as f64,
        mib(peak.saturating_sub(budget_mib << 20))
    );
    println!(
        "({:.1}s, {} upstream calls)",
        started.elapsed().as_secs_f64(),
        upstream.fake.requests().len()
    );
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .expect("a date in range")
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// nginx as a reverse proxy in front of the fake, in a process of its own as the gateway is,
/// with upstream keep-alive: the hop the reference figure was measured with. Started
/// when `LOAD_NGINX` names the binary; stopped on drop.
struct Nginx {
    child: std::process::Child,
    dir: std::path::PathBuf,
    url: String,
}

impl Nginx {
    fn start(binary: &str, upstream: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("load-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for nginx");
        // A free port: nginx cannot report the one it was given for port 0.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let upstream = upstream.trim_start_matches("http://");
        let d = dir.display();
        let config = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;\n\
             error_log stderr warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               upstream fake {{ server {upstream}; keepalive 64; }}\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 location / {{ proxy_pass http://fake; proxy_http_version 1.1; \
                   proxy_set_header Connection \"\"; proxy_buffering on; }}\n\
               }}\n\
             }}\n"
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).expect("nginx.conf written");
        let child = std::process::Command::new(binary)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("nginx starts");
        // Ready when it accepts; bounded, so a broken config fails the run instead of hanging.
        let ready = (0..500).any(|_| {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() || {
                std::thread::sleep(Duration::from_millis(10));
                false
            }
        });
        assert!(ready, "nginx did not start listening on {port}");
        Nginx {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}/api/v4/contacts"),
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
