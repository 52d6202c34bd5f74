//! Soak test: many clients for a while against the fake amoCRM with latency, injected failures
//! and amoCRM's 7 requests-a-second limit, through the release gateway with its default limit.
//!
//!     cargo bench --bench soak                # 60 s; SOAK_SECONDS=180 for longer
//!
//! It reports what was served, errors by code, the busiest second upstream, the 429s amoCRM
//! answered, wrong answers and RSS, and fails if the gateway exceeded the limit, drew a 429
//! or answered anything wrong.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amocrm_gateway::fake_amocrm::{ADMIN_TOKEN, Failure, FakeOptions, MANAGER_TOKEN};
use serde_json::{Value, json};

mod common;
use common::{GatewayProcess, client, start_fake};

const CLIENTS: usize = 24;
const WEBHOOK: &str = "soak-webhook-secret";
const ADMIN: &str = "soak-admin-token";
const HOT: [&str; 4] = [
    "{ contacts(first: 50) { nodes { id name tags { name } leads { id } } } }",
    "{ contacts(first: 20, order: { field: UPDATED_AT, direction: DESC }) { nodes { id name } } }",
    "{ contacts(first: 30, filter: { query: \"Иван\" }) { nodes { id name } } }",
    "{ contacts(first: 10) { nodes { id name leads { name price } companies { name } } } }",
];

#[derive(Default)]
struct Tally {
    served: u64,
    errors: BTreeMap<String, u64>,
    wrong: u64,
}

fn main() {
    common::runtime().block_on(soak(common::seconds_from_env("SOAK_SECONDS", 60)));
}

async fn soak(length: Duration) {
    let upstream = start_fake(FakeOptions {
        latency: Duration::from_millis(20),
        rate_limit: Some(7),
        ..FakeOptions::default()
    })
    .await;
    let gateway = GatewayProcess::start(
        &upstream.fake.base_url(),
        &[
            "--scope-secret",
            "soak-scope-secret",
            "--webhook-secret",
            WEBHOOK,
            "--admin-token",
            ADMIN,
            "--cache-ttl",
            "5s",
            "--cache-stale-ttl",
            "1m",
            "--cache-max-age",
            "2m",
            "--upstream-queue-timeout",
            "3s",
        ],
    )
    .await;
    let rss_start = gateway.rss_bytes();
    // What each token may see, and every contact's name: the truth answers are checked against.
    let visible: HashMap<&str, HashSet<String>> = [ADMIN_TOKEN, MANAGER_TOKEN]
        .into_iter()
        .map(|t| {
            (
                t,
                upstream
                    .fake
                    .visible_ids(t)
                    .into_iter()
                    .map(|id| id.to_string())
                    .collect(),
            )
        })
        .collect();
    let names: HashMap<String, String> = upstream
        .fake
        .contacts()
        .into_iter()
        .map(|c| (c.id.to_string(), c.name))
        .collect();
    let (visible, names) = (Arc::new(visible), Arc::new(names));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let deadline = started + length;
    let http = client();

    let workers: Vec<_> = (0..CLIENTS)
        .map(|worker| {
            let (http, url, tally, visible, names) =
                (http.clone(), gateway.url.clone(), tally.clone(), visible.clone(), names.clone());
            tokio::spawn(async move {
                let token = if worker % 2 == 0 { ADMIN_TOKEN } else { MANAGER_TOKEN };
                let mut n = worker as u64 * 1_000_000;
                while Instant::now() < deadline {
                    n += 1;
                    let query = if n % 10 < 7 {
                        HOT[(n % 4) as usize].to_owned()
                    } else {
                        format!("{{ contacts(first: 5, filter: {{ query: \"contact{}@\" }}) {{ nodes {{ id name }} }} }}", n % 2400)
                    };
                    let Ok(response) = http.post(&url).bearer_auth(token).json(&json!({ "query": query })).send().await else {
                        tally.lock().expect("tally").errors.entry("transport".into()).and_modify(|c| *c += 1).or_insert(1);
                        continue;
                    };
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    let mut tally = tally.lock().expect("tally");
                    tally.served += 1;
                    for error in body["errors"].as_array().into_iter().flatten() {
                        let code = error["extensions"]["code"].as_str().unwrap_or("none").to_owned();
                        *tally.errors.entry(code).or_default() += 1;
                    }
                    for node in body["data"]["contacts"]["nodes"].as_array().into_iter().flatten() {
                        let id = node["id"].as_str().unwrap_or_default();
                        let seen = visible[token].contains(id);
                        let named = node["name"].as_str().is_none_or(|name| names.get(id).is_some_and(|n| n == name));
                        if !(seen && named) {
                            tally.wrong += 1;
                        }
                    }
                }
            })
        })
        .collect();

    // Meanwhile: webhooks, purges and upstream failures.
    let base = gateway.url.replace("/graphql", "");
    let mut tick = 0u64;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        tick += 1;
        match tick % 3 {
            0 => {
                http.post(format!("{base}/webhooks/amocrm/{WEBHOOK}"))
                    .body(format!("contacts[update][0][id]={}", 7_000_000 + tick * 7))
                    .send()
                    .await
                    .ok();
            }
            1 => {
                http.post(format!("{base}/admin/cache/purge?contact_id=7000007"))
                    .bearer_auth(ADMIN)
                    .send()
                    .await
                    .ok();
            }
            _ => upstream.fake.fail_next([
                Failure::empty(500),
                Failure::html(502),
                Failure::html(429),
            ]),
        }
    }
    for worker in workers {
        worker.await.expect("a worker");
    }
    let elapsed = started.elapsed();
    let rss_end = gateway.rss_bytes();
    let requests = upstream.fake.requests();
    let limited = requests.iter().filter(|r| r.rate_limited).count();
    let busiest = upstream.fake.busiest_second();
    let tally = tally.lock().expect("tally");
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "\n## soak: {CLIENTS} clients, two tokens, {:.0}s",
        elapsed.as_secs_f64()
    );
    println!(
        "| served | req/s | errors by code | upstream calls | busiest second upstream | 429 from amoCRM | wrong answers | RSS start → end |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {:.0} | {:?} | {} | {busiest} | {limited} | {} | {:.1} → {:.1} MiB |",
        tally.served,
        tally.served as f64 / elapsed.as_secs_f64(),
        tally.errors,
        requests.len(),
        tally.wrong,
        mib(rss_start),
        mib(rss_end)
    );
    assert!(
        busiest <= 7,
        "the upstream saw {busiest} requests in one second"
    );
    assert_eq!(limited, 0, "amoCRM answered 429");
    assert_eq!(tally.wrong, 0, "wrong answers");
}
