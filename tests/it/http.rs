//! The HTTP surface: headers on /graphql, GET requests, GraphiQL, health, CORS, request ids.

use amocrm_gateway::fake_amocrm::FakeOptions;

use crate::support::{ADMIN_TOKEN, TestApp};

const QUERY: &str = "{ contacts(first: 2) { nodes { id } } }";

#[tokio::test]
async fn graphql_responses_carry_cache_headers() {
    let app = TestApp::spawn_with(&["--cache-ttl", "60s"], FakeOptions::default()).await;
    let miss = app.query(Some(ADMIN_TOKEN), QUERY).await;
    assert_eq!(miss.header("x-cache"), "MISS");
    assert_eq!(miss.header("vary"), "Authorization, Accept");
    let max_age: u64 = miss
        .header("cache-control")
        .strip_prefix("private, max-age=")
        .and_then(|s| s.parse().ok())
        .expect("private, max-age=N");
    assert!((58..=60).contains(&max_age), "{max_age}");
    let hit = app.query(Some(ADMIN_TOKEN), QUERY).await;
    assert_eq!(hit.header("x-cache"), "HIT");
    let introspection = app.query(Some(ADMIN_TOKEN), "{ __typename }").await;
    assert_eq!(
        introspection.header("x-cache"),
        "MISS",
        "no cached data read"
    );
    assert_eq!(introspection.header("cache-control"), "private, max-age=0");
}

#[tokio::test]
async fn request_ids_are_kept_or_generated() {
    let app = TestApp::spawn().await;
    let given = app
        .http()
        .post(app.url("/graphql"))
        .header("x-request-id", "abc-123")
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "query": QUERY }))
        .send()
        .await
        .expect("answer");
    assert_eq!(given.headers()["x-request-id"], "abc-123");
    let generated = app.query(Some(ADMIN_TOKEN), QUERY).await;
    assert_eq!(generated.header("x-request-id").len(), 36, "a UUID");
}

#[tokio::test]
async fn queries_work_over_get() {
    let app = TestApp::spawn().await;
    let response = app
        .http()
        .get(app.url("/graphql"))
        .query(&[
            (
                "query",
                "query Q($n: Int) { contacts(first: $n) { nodes { id } } }",
            ),
            ("operationName", "Q"),
            ("variables", r#"{"n": 3}"#),
        ])
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("answer");
    let reply = TestApp::reply(response).await;
    assert_eq!(
        reply.data()["contacts"]["nodes"].as_array().map(Vec::len),
        Some(3)
    );
}

#[tokio::test]
async fn graphiql_health_and_the_root_redirect() {
    let app = TestApp::spawn().await;
    let page = app
        .http()
        .get(app.url("/graphiql"))
        .send()
        .await
        .expect("answer");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(html.contains("query Contacts($first: Int = 10, $after: String)"));
    assert!(html.contains("leads { id name price }"));
    assert!(html.contains("\"endpoint\":\"/graphql\""));
    // The committed assets are embedded: the playground is the gateway's own.
    let script = app
        .http()
        .get(app.url("/graphiql/assets/graphiql.min.js"))
        .send()
        .await
        .expect("answer");
    assert_eq!(script.status(), 200);
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let missing = app
        .http()
        .get(app.url("/graphiql/assets/nothing.js"))
        .send()
        .await
        .expect("answer");
    assert_eq!(missing.status(), 404);
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(app.url("/"))
        .send()
        .await
        .expect("answer");
    assert_eq!(redirect.headers()["location"], "/graphiql");
    let health = app
        .http()
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("answer");
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.expect("body"), "ok");
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let closed = TestApp::spawn().await;
    let preflight = |app: &TestApp, origin: &'static str| {
        app.http()
            .request(reqwest::Method::OPTIONS, app.url("/graphql"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let response = preflight(&closed, "https://app.example.com")
        .await
        .expect("answer");
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    let open = TestApp::spawn_with(
        &["--cors-origin", "https://app.example.com"],
        FakeOptions::default(),
    )
    .await;
    let allowed = preflight(&open, "https://app.example.com")
        .await
        .expect("answer");
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let other = preflight(&open, "https://evil.example.com")
        .await
        .expect("answer");
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn responses_are_compressed_as_the_client_prefers() {
    use std::io::Read;
    let app = TestApp::spawn().await;
    let query = serde_json::json!({ "query": "{ contacts(first: 50) { nodes { id name } } }" });
    // A client that decompresses nothing itself, to see the bytes on the wire.
    let raw = reqwest::Client::builder()
        .no_gzip()
        .build()
        .expect("a client");
    // The first answer is built; the others are response-cache hits, compressed once per entry.
    let fetch = |encoding: &'static str, expected_cache: &'static str| {
        let request = raw
            .post(app.url("/graphql"))
            .bearer_auth(ADMIN_TOKEN)
            .header("accept-encoding", encoding)
            .json(&query);
        async move {
            let response = request.send().await.expect("the gateway answers");
            let encoding = response
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().expect("ASCII").to_owned());
            let vary: Vec<String> = response
                .headers()
                .get_all("vary")
                .iter()
                .flat_map(|v| v.to_str().expect("ASCII").split(','))
                .map(|v| v.trim().to_ascii_lowercase())
                .collect();
            assert!(
                vary.contains(&"authorization".to_owned())
                    && vary.contains(&"accept".to_owned())
                    && vary.contains(&"accept-encoding".to_owned()),
                "{vary:?}"
            );
            assert_eq!(response.headers()["x-cache"], expected_cache);
            (encoding, response.bytes().await.expect("a body").to_vec())
        }
    };
    let (none, plain) = fetch("identity", "MISS").await;
    assert_eq!(none, None);
    let plain: serde_json::Value = serde_json::from_slice(&plain).expect("JSON");
    assert!(plain.get("errors").is_none(), "{plain}");

    let (gzip, zipped) = fetch("gzip", "HIT").await;
    assert_eq!(gzip.as_deref(), Some("gzip"));
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&zipped[..])
        .read_to_end(&mut unzipped)
        .expect("gzip");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&unzipped).expect("JSON"),
        plain
    );

    let (br, brotli_bytes) = fetch("gzip;q=0.5, br", "HIT").await;
    assert_eq!(br.as_deref(), Some("br"));
    let mut unbrotli = Vec::new();
    brotli::Decompressor::new(&brotli_bytes[..], 4096)
        .read_to_end(&mut unbrotli)
        .expect("brotli");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&unbrotli).expect("JSON"),
        plain
    );
    assert!(brotli_bytes.len() * 3 < unbrotli.len(), "it shrank");
    let (_, again) = fetch("br", "HIT").await;
    assert_eq!(again, brotli_bytes, "the stored compressed bytes");
    let (none, identity) = fetch("br;q=0, gzip;q=0", "HIT").await;
    assert_eq!(none, None);
    assert_eq!(
        identity, unbrotli,
        "plain bytes for a client that takes no coding"
    );
}
