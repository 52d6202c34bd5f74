//! Issue 13's attacks as a mixed load: one legitimate client keeps asking (hot and cold
//! queries with a real token) while each attack runs in turn against the release gateway in
//! forwarding mode, in front of the fake with 20 ms latency and amoCRM's 7 rps limit. It
//! reports the legitimate client's p50 and p99 and its errors during each phase.
//!
//!     cargo bench --bench attacks             # 8 s a phase; ATTACK_SECONDS=20 for longer

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amocrm_gateway::fake_amocrm::{ADMIN_TOKEN, FakeOptions};
use serde_json::json;
use tokio::io::AsyncWriteExt;

mod common;
use common::{GatewayProcess, client, start_fake};

const WEBHOOK: &str = "attack-webhook-secret";
const ATTACKERS: usize = 8;

fn main() {
    common::runtime().block_on(run(common::seconds_from_env("ATTACK_SECONDS", 8)));
}

#[derive(Clone, Copy)]
enum Attack {
    None,
    ExponentialFragments,
    StrangersBigDocuments,
    JunkTokens,
    ForgedWindows,
    Slowloris,
    WebhookStorm,
    LongFilters,
}

impl Attack {
    fn name(self) -> &'static str {
        match self {
            Attack::None => "none (baseline)",
            Attack::ExponentialFragments => "exponential fragments, 24 levels",
            Attack::StrangersBigDocuments => "1 MiB documents without a token",
            Attack::JunkTokens => "random bearer tokens",
            Attack::ForgedWindows => "64 aliased two-page windows",
            Attack::Slowloris => "600 connections that never finish their headers",
            Attack::WebhookStorm => "webhooks of 1000 contact events",
            Attack::LongFilters => "filters of 3.5 KB values",
        }
    }
}

async fn run(phase: Duration) {
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
            "attack-scope-secret",
            "--webhook-secret",
            WEBHOOK,
        ],
    )
    .await;
    // A real cursor of the unfiltered list, to forge others from.
    let sample: serde_json::Value = client()
        .post(&gateway.url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "query": "{ contacts(first: 1) { edges { cursor } } }" }))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("JSON");
    let sample = sample["data"]["contacts"]["edges"][0]["cursor"]
        .as_str()
        .expect("a cursor")
        .to_owned();
    println!(
        "\n## attacks: one legitimate client (hot and cold queries) while {ATTACKERS} attackers run, {}s a phase",
        phase.as_secs()
    );
    println!(
        "| attack | legitimate requests | p50 | p99 | errors | upstream calls |\n|---|---|---|---|---|---|"
    );
    // Counted across phases, so that every phase's searches are new to the cache.
    let searches = AtomicU64::new(0);
    for attack in [
        Attack::None,
        Attack::ExponentialFragments,
        Attack::StrangersBigDocuments,
        Attack::JunkTokens,
        Attack::ForgedWindows,
        Attack::Slowloris,
        Attack::WebhookStorm,
        Attack::LongFilters,
    ] {
        upstream.fake.clear_requests();
        let stop = Arc::new(AtomicBool::new(false));
        let attackers: Vec<_> = (0..ATTACKERS)
            .map(|i| {
                tokio::spawn(attacker(
                    attack,
                    i,
                    gateway.url.clone(),
                    sample.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        let (latencies, errors) = legitimate(&gateway.url, phase, &searches).await;
        stop.store(true, Ordering::SeqCst);
        for a in attackers {
            let _ = a.await;
        }
        let mut sorted = latencies.clone();
        sorted.sort();
        let at = |p: f64| {
            sorted
                .get(((sorted.len().max(1) - 1) as f64 * p) as usize)
                .map_or("-".to_owned(), |d| {
                    format!("{:.1} ms", d.as_secs_f64() * 1e3)
                })
        };
        println!(
            "| {} | {} | {} | {} | {errors} | {} |",
            attack.name(),
            sorted.len(),
            at(0.5),
            at(0.99),
            upstream.fake.requests().len()
        );
    }
}

/// A client with the admin token: mostly the same view, every fifth a search no phase asked
/// before (a cache miss, so an upstream call under the 7 rps limit).
async fn legitimate(url: &str, phase: Duration, searches: &AtomicU64) -> (Vec<Duration>, u64) {
    let http = client();
    let started = Instant::now();
    let (mut latencies, mut errors) = (Vec::new(), 0);
    while started.elapsed() < phase {
        let n = searches.fetch_add(1, Ordering::Relaxed);
        let query = if n % 5 == 4 {
            format!(
                "{{ contacts(first: 5, filter: {{ query: \"contact{}@\" }}) {{ nodes {{ id name }} }} }}",
                n % 2400
            )
        } else {
            "{ contacts(first: 20) { nodes { id name tags { name } } } }".to_owned()
        };
        let sent = Instant::now();
        let reply = http
            .post(url)
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "query": query }))
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let ok = match reply {
            Ok(r) => r
                .bytes()
                .await
                .is_ok_and(|b| !b.windows(9).any(|w| w == b"\"errors\":")),
            Err(_) => false,
        };
        latencies.push(sent.elapsed());
        if !ok {
            errors += 1;
        }
    }
    (latencies, errors)
}

fn exponential_document() -> String {
    let mut document = String::from("{ ...F0 }\n");
    for level in 0..24 {
        document.push_str(&format!(
            "fragment F{level} on Query {{ ...F{next} ...F{next} }}\n",
            next = level + 1
        ));
    }
    document.push_str("fragment F24 on Query { __typename }\n");
    document
}

async fn attacker(attack: Attack, i: usize, url: String, sample: String, stop: Arc<AtomicBool>) {
    let http = client();
    let base = url.trim_end_matches("/graphql").to_owned();
    let mut n = 0u64;
    let mut held = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let request = match attack {
            Attack::None => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Attack::ExponentialFragments => http
                .post(&url)
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({ "query": exponential_document() })),
            Attack::StrangersBigDocuments => http.post(&url).json(&json!({
                "query": format!("{{ contacts {{ nodes {{ id }} }} }} #{}", "x".repeat(1 << 20))
            })),
            Attack::JunkTokens => http
                .post(&url)
                .bearer_auth(format!("junk-{i}-{n}-{}", rand_suffix()))
                .json(&json!({ "query": "{ contacts(first: 1) { nodes { id } } }" })),
            Attack::ForgedWindows => {
                let windows: Vec<String> = (0..64)
                    .map(|w| {
                        format!(
                            "w{w}: contacts(first: 250, after: \"{}\") {{ nodes {{ id }} }}",
                            forged_cursor(&sample, 200 + w * 250)
                        )
                    })
                    .collect();
                http.post(&url)
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&json!({ "query": format!("{{ {} }}", windows.join(" ")) }))
            }
            Attack::Slowloris => {
                // Connections that send half a request line and wait.
                if held.len() < 600 / ATTACKERS {
                    if let Ok(mut stream) =
                        tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await
                    {
                        let _ = stream.write_all(b"POST /graphql HTTP/1.1\r\nHost: x\r\n").await;
                        held.push(stream);
                    }
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                continue;
            }
            Attack::WebhookStorm => {
                let events: Vec<String> = (0..1000)
                    .map(|e| format!("contacts[update][{e}][id]={}", 7_000_000 + (e * 7) % 16_800))
                    .collect();
                http.post(format!("{base}/webhooks/amocrm/{WEBHOOK}"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(events.join("&"))
            }
            Attack::LongFilters => http.post(&url).bearer_auth(ADMIN_TOKEN).json(&json!({
                "query": format!(
                    "{{ contacts(filter: {{ names: [\"{0}\", \"{0}\", \"{0}\"] }}) {{ nodes {{ id }} }} }}",
                    "n".repeat(3500)
                )
            })),
        };
        if let Ok(response) = request.timeout(Duration::from_secs(30)).send().await {
            let _ = response.bytes().await;
        }
    }
}

/// A cursor for `offset` in the list `sample` (a real cursor of that list) belongs to: the
/// format is in the source, as an attacker who read it knows.
fn forged_cursor(sample: &str, offset: u64) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let text = URL_SAFE_NO_PAD
        .decode(sample)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .expect("a cursor is base64 text");
    let mut parts = text.splitn(3, ':');
    let (version, _, list) = (parts.next(), parts.next(), parts.next());
    URL_SAFE_NO_PAD.encode(format!(
        "{}:{offset}:{}",
        version.expect("a version"),
        list.expect("a list")
    ))
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}
