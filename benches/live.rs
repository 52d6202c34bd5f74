//! Subscriptions: memory (the gateway's RSS) against the number of idle subscriptions, and the
//! time from a webhook's arrival to the event at a subscriber, on the same replica and on
//! another one through Redis.
//!
//!     cargo bench --bench live
//!
//! `LIVE_SUBSCRIPTIONS` sets the largest count (default 10 000; measured at 1 000 and at it),
//! `LIVE_EVENTS` the webhooks of the latency run (default 100), `LIVE_SPACING_MS` the pause
//! between them (default 150). Subscriptions are raw
//! graphql-transport-ws WebSockets, 100 to a connection, from 20 client keys. Needs
//! `redis-server` (scripts/test installs it). The gateways are real processes.

mod common;

use std::time::{Duration, Instant};

use amocrm_gateway::fake_amocrm::{ADMIN_TOKEN, FakeOptions};
use common::{GatewayProcess, RedisProcess, start_fake};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const PER_CONNECTION: usize = 100;
const KEYS: usize = 20;
const SECRET: &str = "bench-webhook-secret";

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn key(i: usize) -> String {
    format!("bench-client-key-{i:04}-0123456789")
}

fn main() {
    let total: usize = std::env::var("LIVE_SUBSCRIPTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let events: usize = std::env::var("LIVE_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let spacing = Duration::from_millis(
        std::env::var("LIVE_SPACING_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(150),
    );
    common::runtime().block_on(async move {
        let upstream = start_fake(FakeOptions::default()).await;
        let base = upstream.fake.base_url();
        let redis = RedisProcess::start();
        let redis_url = redis.url();
        let keys: Vec<String> = (0..KEYS).map(key).collect();
        let keys_flag = keys.join(",");
        let flags = [
            "--access-token",
            ADMIN_TOKEN,
            "--client-key",
            keys_flag.as_str(),
            "--redis-url",
            redis_url.as_str(),
            "--webhook-secret",
            SECRET,
            "--upstream-rps",
            "0",
            "--live-poll-interval",
            "1h",
        ];
        let a = GatewayProcess::start(&base, &flags).await;
        let b = GatewayProcess::start(&base, &flags).await;
        let id = upstream.fake.visible_ids(ADMIN_TOKEN)[0];

        // Memory: idle subscriptions of contacts nobody changes.
        println!("\n## idle subscriptions on one replica (its RSS)");
        println!("| subscriptions | RSS | per subscription |\n|---|---|---|");
        let idle = a.rss_bytes();
        println!("| 0 | {:.1} MiB | — |", mib(idle));
        let mut sockets = Vec::new();
        for level in [1_000.min(total), total] {
            while sockets.len() * PER_CONNECTION < level {
                let n = sockets.len();
                let mut socket = connect(&a.url, &keys[n % KEYS]).await;
                for s in 0..PER_CONNECTION {
                    subscribe(&mut socket, &format!("{n}-{s}"), 9_000_000 + n as u64).await;
                }
                // Read as a client does, which answers the gateway's pings (a socket silent
                // for two keep-alive intervals is taken for gone).
                sockets.push(tokio::spawn(async move {
                    while let Some(Ok(_)) = socket.next().await {}
                }));
            }
            settle(&a.url, level).await;
            let rss = a.rss_bytes();
            println!(
                "| {level} | {:.1} MiB | {:.1} KiB |",
                mib(rss),
                (rss.saturating_sub(idle)) as f64 / level as f64 / 1024.0
            );
        }
        for socket in sockets {
            socket.abort();
        }

        // Latency: a webhook to replica A, one subscriber on A and one on B.
        let mut here = connect(&a.url, &keys[0]).await;
        let mut there = connect(&b.url, &keys[1]).await;
        subscribe(&mut here, "here", id).await;
        subscribe(&mut there, "there", id).await;
        settle(&a.url, 1).await;
        settle(&b.url, 1).await;
        let http = common::client();
        let webhook = a.url.replace("/graphql", &format!("/webhooks/amocrm/{SECRET}"));
        let (mut near, mut far) = (Vec::new(), Vec::new());
        for n in 0..events {
            // Webhooks apart by more than the caches' invalidation window (100 ms), as they
            // come from amoCRM for separate edits: a webhook inside the window of the one
            // before waits for that window (see the README).
            tokio::time::sleep(spacing).await;
            upstream.fake.rename_contact(id, &format!("Задержка {n}"));
            let sent = Instant::now();
            let answer = http
                .post(&webhook)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("contacts%5Bupdate%5D%5B0%5D%5Bid%5D={id}"))
                .send()
                .await
                .expect("the webhook is taken");
            assert!(answer.status().is_success());
            let (a_at, b_at) = tokio::join!(next_event(&mut here), next_event(&mut there));
            near.push(a_at.duration_since(sent));
            far.push(b_at.duration_since(sent));
        }
        println!(
            "\n## webhook to subscriber, {events} webhooks {spacing:?} apart (the fake answers the read at once)"
        );
        println!("| subscriber | p50 | p99 |\n|---|---|---|");
        for (name, samples) in [("same replica", &mut near), ("other replica", &mut far)] {
            samples.sort();
            let at = |p: f64| common::percentile(samples, p);
            println!(
                "| {name} | {:.1} ms | {:.1} ms |",
                at(0.5).as_secs_f64() * 1e3,
                at(0.99).as_secs_f64() * 1e3
            );
        }
    });
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}

async fn connect(url: &str, key: &str) -> Socket {
    let mut request = url
        .replace("http://", "ws://")
        .into_client_request()
        .expect("a WebSocket URL");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().expect("a header value"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the WebSocket opens");
    let init = json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {key}") } });
    socket
        .send(Message::text(init.to_string()))
        .await
        .expect("sent");
    loop {
        let message = socket.next().await.expect("open").expect("a message");
        if let Message::Text(text) = message
            && text.contains("connection_ack")
        {
            return socket;
        }
    }
}

async fn subscribe(socket: &mut Socket, id: &str, contact: u64) {
    let message = json!({ "type": "subscribe", "id": id, "payload": {
        "query": "subscription($ids: [ID!]) { contactChanged(ids: $ids) { kind contact { name } } }",
        "variables": { "ids": [contact.to_string()] } } });
    socket
        .send(Message::text(message.to_string()))
        .await
        .expect("sent");
}

/// When the next event arrived.
async fn next_event(socket: &mut Socket) -> Instant {
    loop {
        let message = socket.next().await.expect("open").expect("a message");
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).expect("JSON");
            if value["type"] == "next" {
                assert!(value["payload"].get("errors").is_none(), "{value}");
                return Instant::now();
            }
        }
    }
}

/// Waits until the replica holds `count` subscriptions.
async fn settle(url: &str, count: usize) {
    let metrics = url.replace("/graphql", "/metrics");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = reqwest::get(&metrics)
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let now = text
            .lines()
            .find_map(|l| l.strip_prefix("gateway_live_subscriptions "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if now >= count as f64 {
            return;
        }
        assert!(Instant::now() < deadline, "{now} of {count} subscriptions");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
