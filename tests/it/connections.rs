//! What a client may hold of the server: a slow or idle connection is closed after the
//! header-read timeout, and connections beyond `--max-connections` wait for one to close.

use std::time::{Duration, Instant};

use amocrm_gateway::fake_amocrm::FakeOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::TestApp;

const HEALTH_REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n";

/// Reads until the server closes the connection (end of file or reset), for at most `limit`;
/// returns how long that took, or `None` when it stayed open.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buffer = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return started.elapsed(),
                // A 408 may come first: the connection is what matters.
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// Sends a health check and reads its whole answer (`ok`, two bytes), leaving the connection
/// open and idle.
async fn healthy_connection(app: &TestApp) -> TcpStream {
    let mut stream = TcpStream::connect(app.addr).await.expect("connects");
    stream.write_all(HEALTH_REQUEST).await.expect("writes");
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while !answer.ends_with(b"\r\n\r\nok") {
        let read = stream.read(&mut buffer).await.expect("reads");
        assert!(
            read > 0,
            "closed early: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buffer[..read]);
    }
    stream
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let timeout = Duration::from_millis(300);
    let app =
        TestApp::spawn_with(&["--header-read-timeout", "300ms"], FakeOptions::default()).await;
    let mut slow = TcpStream::connect(app.addr).await.expect("connects");
    slow.write_all(b"POST /graphql HTTP/1.1\r\nHost: gateway\r\nContent-Type: appl")
        .await
        .expect("writes");
    let took = closed_within(&mut slow, Duration::from_secs(5))
        .await
        .expect("closed after the header-read timeout");
    assert!(took >= timeout - Duration::from_millis(50), "{took:?}");

    // A kept-alive connection that sends nothing more is closed the same way.
    let mut idle = healthy_connection(&app).await;
    let took = closed_within(&mut idle, Duration::from_secs(5))
        .await
        .expect("an idle connection is closed");
    assert!(took >= timeout - Duration::from_millis(50), "{took:?}");
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_closes() {
    let app = TestApp::spawn_with(&["--max-connections", "2"], FakeOptions::default()).await;
    // Both answered, so both were accepted, and both stay open.
    let first = healthy_connection(&app).await;
    let _second = healthy_connection(&app).await;
    let third = tokio::spawn({
        let client = reqwest::Client::new();
        let url = app.url("/healthz");
        async move { client.get(url).send().await?.text().await }
    });
    let mut third = std::pin::pin!(third);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut third)
            .await
            .is_err(),
        "a third connection is not served while two are open"
    );
    drop(first);
    let answer = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a connection closed")
        .expect("the task ran")
        .expect("an answer");
    assert_eq!(answer, "ok");
}
