//! Writes through the gateway: what an update mutation adds over the two upstream calls it
//! makes (the write and the read-back), and whether any read after a mutation's answer, on
//! either of two replicas sharing Redis, ever shows the contact as it was before.
//!
//!     cargo bench --bench writes
//!
//! `WRITES_UPDATES` sets the number of updates of each part (default 200 and 100). Needs
//! `redis-server` (scripts/test installs it). The gateways are real processes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amocrm_gateway::fake_amocrm::{ADMIN_TOKEN, FakeOptions};
use common::{GatewayProcess, RedisProcess, client, graphql, start_fake};
use serde_json::json;

const UPSTREAM_LATENCY: Duration = Duration::from_millis(20);
const READERS: usize = 4;

const UPDATE: &str = "mutation($id: ID!, $name: String!) { updateContacts(input: [{ id: $id, \
    name: $name }]) { contacts { id name } } }";

fn main() {
    let updates: usize = std::env::var("WRITES_UPDATES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    common::runtime().block_on(async move {
        added_latency(if updates > 0 { updates } else { 200 }).await;
        freshness(if updates > 0 { updates } else { 100 }).await;
    });
}

/// The same update sent straight to the fake (PATCH, then a read by id) and through the
/// gateway, alternating.
async fn added_latency(updates: usize) {
    let upstream = start_fake(FakeOptions {
        latency: UPSTREAM_LATENCY,
        ..FakeOptions::default()
    })
    .await;
    let base = upstream.fake.base_url();
    let gateway = GatewayProcess::start(&base, &["--upstream-rps", "0"]).await;
    let http = client();
    let id = upstream.fake.visible_ids(ADMIN_TOKEN)[0];
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for n in 0..updates {
        let started = Instant::now();
        let patched = http
            .patch(format!("{base}/api/v4/contacts"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!([{ "id": id, "name": format!("direct {n}") }]))
            .send()
            .await
            .expect("the fake answers");
        assert!(patched.status().is_success(), "{}", patched.status());
        patched.bytes().await.expect("a body");
        let read = http
            .get(format!(
                "{base}/api/v4/contacts?filter[id][]={id}&with=leads,customers,catalog_elements"
            ))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("the fake answers");
        read.bytes().await.expect("a body");
        direct.push(started.elapsed());

        let started = Instant::now();
        let answer = graphql(
            &http,
            &gateway.url,
            UPDATE,
            json!({ "id": id.to_string(), "name": format!("gateway {n}") }),
        )
        .await;
        through.push(started.elapsed());
        assert_eq!(
            answer["data"]["updateContacts"]["contacts"][0]["name"],
            format!("gateway {n}")
        );
    }
    let (direct_p50, direct_p99) = percentiles(&mut direct);
    let (through_p50, through_p99) = percentiles(&mut through);
    println!(
        "\n## an update mutation, {updates} sequential, the fake answering after {UPSTREAM_LATENCY:?}"
    );
    println!("| path | p50 | p99 |\n|---|---|---|");
    println!(
        "| direct: PATCH, then GET by id | {} | {} |",
        ms(direct_p50),
        ms(direct_p99)
    );
    println!(
        "| gateway: updateContacts | {} | {} |",
        ms(through_p50),
        ms(through_p99)
    );
    println!(
        "| added by the gateway | {} | {} |",
        ms(through_p50.saturating_sub(direct_p50)),
        ms(through_p99.saturating_sub(direct_p99))
    );
}

/// Readers hammer one contact on both replicas while a writer renames it `updates` times on
/// them in turn. A read is stale when it started after the answer to rename `n` and shows an
/// older name.
async fn freshness(updates: usize) {
    let upstream = start_fake(FakeOptions::default()).await;
    let base = upstream.fake.base_url();
    let redis = RedisProcess::start();
    let redis_url = redis.url();
    let flags = [
        "--redis-url",
        redis_url.as_str(),
        "--scope-secret",
        "bench-scope-secret",
        "--upstream-rps",
        "0",
    ];
    let replicas = [
        GatewayProcess::start(&base, &flags).await,
        GatewayProcess::start(&base, &flags).await,
    ];
    let urls: Arc<Vec<String>> = Arc::new(replicas.iter().map(|r| r.url.clone()).collect());
    let http = client();
    let id = upstream.fake.visible_ids(ADMIN_TOKEN)[1];
    graphql(
        &http,
        &urls[0],
        UPDATE,
        json!({ "id": id.to_string(), "name": "v0" }),
    )
    .await;
    // The newest rename whose answer arrived.
    let answered = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let query = format!("{{ contact(id: {id}) {{ name }} }}");
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (http, urls, answered, done, query) = (
                http.clone(),
                urls.clone(),
                answered.clone(),
                done.clone(),
                query.clone(),
            );
            tokio::spawn(async move {
                let (mut reads, mut stale) = (0_u64, 0_u64);
                let mut n = r;
                while !done.load(Ordering::SeqCst) {
                    let floor = answered.load(Ordering::SeqCst);
                    let body = graphql(&http, &urls[n % urls.len()], &query, json!({})).await;
                    let name = body["data"]["contact"]["name"].as_str().unwrap_or_default();
                    let seen: u64 = name.trim_start_matches('v').parse().unwrap_or(0);
                    reads += 1;
                    if seen < floor {
                        stale += 1;
                        eprintln!("stale: saw {name} after v{floor} was answered");
                    }
                    n += 1;
                }
                (reads, stale)
            })
        })
        .collect();
    let started = Instant::now();
    for n in 1..=updates as u64 {
        let url = &urls[(n % 2) as usize];
        graphql(
            &http,
            url,
            UPDATE,
            json!({ "id": id.to_string(), "name": format!("v{n}") }),
        )
        .await;
        answered.store(n, Ordering::SeqCst);
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::SeqCst);
    let (mut reads, mut stale) = (0, 0);
    for reader in readers {
        let (r, s) = reader.await.expect("a reader");
        reads += r;
        stale += s;
    }
    println!(
        "\n## freshness: {updates} renames alternating over 2 replicas on Redis in {:.1} s, {READERS} readers on both",
        elapsed.as_secs_f64()
    );
    println!("reads: {reads}; stale reads (older than an answered rename): {stale}");
    assert_eq!(
        stale, 0,
        "a read after a mutation's answer showed the old contact"
    );
}

fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    (
        common::percentile(samples, 0.5),
        common::percentile(samples, 0.99),
    )
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
