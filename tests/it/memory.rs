//! A hostile or broken upstream must not blow up the gateway's memory. The gateway runs as a
//! process of its own here, so that its peak RSS is its own and not the test binary's.

use amocrm_gateway::fake_amocrm::{Failure, FakeAmoCrm, FakeOptions};

use crate::cli::spawn_in_front_of;
use crate::support::TestApp;

/// The most the gateway process may have held at any time: an idle debug build holds about
/// 20 MiB, and decoding a page at the body cap must not take more than its share.
const PEAK_RSS_BOUND: u64 = 128 << 20;

/// The process's peak resident set (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib << 10)
        .expect("VmHWM")
}

/// A HAL page of about `bytes` bytes of small contacts: the shape that costs the most memory
/// per byte once decoded as a tree.
fn hostile_page(bytes: usize) -> String {
    let item =
        r#"{"id":1,"name":"x","custom_fields_values":[{"field_id":1,"values":[{"value":"v"}]}]},"#;
    let mut body = String::with_capacity(bytes + 64);
    body.push_str(r#"{"_page":1,"_links":{},"_embedded":{"contacts":["#);
    while body.len() < bytes {
        body.push_str(item);
    }
    body.push_str(r#"{"id":2}]}}"#);
    body
}

/// A gateway process in front of a fake whose next contacts page is `page`; the fake must
/// outlive the process's requests, so it is returned too.
struct Served {
    _fake: FakeAmoCrm,
    _child: tokio::process::Child,
    pid: u32,
    graphql: String,
}

impl Served {
    async fn page(page: String) -> Served {
        let fake = FakeAmoCrm::start(([127, 0, 0, 1], 0).into(), FakeOptions::default())
            .await
            .expect("the fake starts");
        fake.fail_next([Failure::body("application/hal+json", page)]);
        let (child, url) = spawn_in_front_of(&fake.base_url(), &[]).await;
        Served {
            pid: child.id().expect("running"),
            graphql: url.replace("/graphiql", "/graphql"),
            _fake: fake,
            _child: child,
        }
    }

    async fn five_contacts(&self) -> crate::support::Reply {
        let response = reqwest::Client::new()
            .post(&self.graphql)
            .json(&serde_json::json!({ "query": "{ contacts(first: 5) { nodes { id } } }" }))
            .send()
            .await
            .expect("the gateway answers");
        TestApp::reply(response).await
    }
}

#[tokio::test]
async fn a_huge_upstream_page_is_refused_and_memory_stays_bounded() {
    // Under the former 32 MiB body cap: a page like this took the gateway to 3.5 GB.
    let served = Served::page(hostile_page(31 << 20)).await;
    let reply = served.five_contacts().await;
    assert_eq!(reply.codes(), vec!["UPSTREAM_ERROR"], "{}", reply.body);
    let message = reply.first_error()["message"].as_str().expect("message");
    assert!(message.contains("larger than"), "{message}");
    let peak = peak_rss(served.pid);
    assert!(peak < PEAK_RSS_BOUND, "peak RSS {} MiB", peak >> 20);
}

/// What decoding a hostile page just under the 4 MiB body cap may add to the peak.
const GROWTH_BOUND: u64 = 80 << 20;

#[tokio::test]
async fn a_page_just_under_the_cap_is_decoded_in_bounded_memory() {
    let served = Served::page(hostile_page((4 << 20) - 1024)).await;
    let before = peak_rss(served.pid);
    let reply = served.five_contacts().await;
    assert_eq!(reply.data()["contacts"]["nodes"][0]["id"], "1");
    // Measured: decoded as one tree of JSON values the page took 144 MiB more, one contact at
    // a time 36 MiB (most of it the 45 000 decoded contacts themselves).
    let grew = peak_rss(served.pid).saturating_sub(before);
    assert!(grew < GROWTH_BOUND, "grew by {} MiB", grew >> 20);
}
