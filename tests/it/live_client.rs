//! The reference GraphQL subscription clients, driven from the tests: npm `graphql-ws` (the
//! graphql-transport-ws protocol over WebSocket) and `graphql-sse` (distinct connections mode),
//! pinned in `tests/live/package.json`. Node runs them (`tests/live/subscribe.mjs`), which
//! prints what the client sees as one JSON object a line; a [`LiveClient`] reads the lines.
//! `scripts/test` installs the packages (`npm ci`); without Node or the packages a test fails.
//!
//! The lines: `{"type":"ready"}` (ws: the server acknowledged the connection and the subscribe
//! messages went out; sse: right after subscribing), `{"type":"open","status":200}` (sse: the
//! streaming response arrived), `{"type":"next","payload":…}` (with `"index"` when options hold
//! `"subscriptions": K`), `{"type":"complete"}`, `{"type":"error","error":…,"code":4403}` (ws
//! closes carry the code; sse HTTP failures carry `"status"` and `"body"`) and
//! `{"type":"stopped"}` after [`LiveClient::stop`].

// Each test uses the helpers it needs; the rest are for the next test.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::Instant;

/// How long [`LiveClient::ready`] and [`LiveClient::established`] wait: Node starts, loads the
/// client and connects.
const READY_WITHIN: Duration = Duration::from_secs(15);

/// The packages `subscribe.mjs` imports.
const PACKAGES: [&str; 4] = ["graphql", "graphql-ws", "graphql-sse", "ws"];

/// The directory of `subscribe.mjs` and its `node_modules`.
pub fn live_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/live")
}

/// One run of `node subscribe.mjs`: one client, one connection (ws) and one subscription, or
/// `"subscriptions": K` of them on that connection. Dropping it kills the client.
pub struct LiveClient {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// Lines read while looking for others ([`LiveClient::expect_nothing`]), read again first.
    pending: VecDeque<Value>,
    /// graphql-sse rather than graphql-ws.
    sse: bool,
}

impl LiveClient {
    /// Starts the client: `transport` is `"ws"` (an `http://` URL is taken as the `ws://` one) or
    /// `"sse"`; `options` are `{"query", "variables", "authorization": "Bearer x" | null,
    /// "authIn": "init" | "header", "count", "subscriptions", "timeoutMs"}` (see
    /// `tests/live/subscribe.mjs`). The script ends itself after `timeoutMs` (30 s).
    pub async fn start(transport: &str, url: &str, options: Value) -> LiveClient {
        assert!(
            transport == "ws" || transport == "sse",
            "the transport is \"ws\" or \"sse\", not {transport:?}"
        );
        let dir = live_dir();
        for package in PACKAGES {
            assert!(
                dir.join("node_modules")
                    .join(package)
                    .join("package.json")
                    .is_file(),
                "{package} is not installed in {}: run scripts/test, or `npm ci` there",
                dir.display()
            );
        }
        let mut child = Command::new("node")
            .arg("subscribe.mjs")
            .arg(transport)
            .arg(url)
            .arg(options.to_string())
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "node could not start ({e}): the live clients need Node.js 20 or later; \
                     run scripts/test"
                )
            });
        let stdout = child.stdout.take().expect("the client's stdout is piped");
        LiveClient {
            child,
            lines: BufReader::new(stdout).lines(),
            pending: VecDeque::new(),
            sse: transport == "sse",
        }
    }

    /// The next line the client printed, parsed; `None` when none came within `within` or the
    /// client exited.
    pub async fn next_line(&mut self, within: Duration) -> Option<Value> {
        if let Some(line) = self.pending.pop_front() {
            return Some(line);
        }
        let line = match tokio::time::timeout(within, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return None,
        };
        let value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the client printed a line that is not JSON ({e}): {line}"));
        Some(value)
    }

    /// Waits for `{"type":"ready"}` (see the module's documentation for when each transport
    /// prints it); panics on any other line but sse's `"open"`, or when it does not come.
    pub async fn ready(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            match self.next_line(left(deadline)).await {
                Some(line) if kind(&line) == "ready" => return,
                Some(line) if kind(&line) == "open" => continue,
                Some(line) => panic!("the client was not ready, it printed {line}"),
                None => panic!(
                    "the client was not ready within {READY_WITHIN:?} (it exited or stayed \
                     silent)"
                ),
            }
        }
    }

    /// [`LiveClient::ready`], and for sse also the streaming response's arrival: the server has
    /// the subscription once this returns (ws: as far as the client can tell, its subscribe
    /// messages are on the wire). Panics on anything else.
    pub async fn established(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        let mut ready = false;
        let mut open = !self.sse;
        while !(ready && open) {
            match self.next_line(left(deadline)).await {
                Some(line) if kind(&line) == "ready" => ready = true,
                Some(line) if kind(&line) == "open" => open = true,
                Some(line) => {
                    panic!("the subscription was not established, the client printed {line}")
                }
                None => panic!(
                    "the subscription was not established within {READY_WITHIN:?} (the client \
                     exited or stayed silent)"
                ),
            }
        }
    }

    /// The payload of the next `"next"` line (skipping `"ready"` and `"open"`); panics with what
    /// came instead, or when nothing came within `within`.
    pub async fn expect_next(&mut self, within: Duration) -> Value {
        let mut line = self.expect_next_line(within).await;
        line["payload"].take()
    }

    /// The whole next `"next"` line, `{"type":"next","payload":…,"index":i}` (the index only with
    /// `"subscriptions"`); panics like [`LiveClient::expect_next`].
    pub async fn expect_next_line(&mut self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            match self.next_line(left(deadline)).await {
                Some(line) if kind(&line) == "next" => return line,
                Some(line) if kind(&line) == "ready" || kind(&line) == "open" => continue,
                Some(line) => panic!("expected a result, the client printed {line}"),
                None => panic!("no result within {within:?} (the client exited or stayed silent)"),
            }
        }
    }

    /// Asserts that no `"next"` line arrives within `within` (it waits that long). Other lines
    /// are kept for the next read, so a close is still seen by [`LiveClient::closed_with`].
    pub async fn expect_nothing(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        let mut kept = VecDeque::new();
        let mut seen = std::mem::take(&mut self.pending);
        loop {
            let line = match seen.pop_front() {
                Some(line) => Some(line),
                None => match tokio::time::timeout(left(deadline), self.lines.next_line()).await {
                    Ok(Ok(Some(line))) => Some(serde_json::from_str(&line).unwrap_or_else(|e| {
                        panic!("the client printed a line that is not JSON ({e}): {line}")
                    })),
                    _ => None,
                },
            };
            match line {
                Some(line) if kind(&line) == "next" => {
                    panic!("expected no result within {within:?}, the client printed {line}")
                }
                Some(line) => kept.push_back(line),
                // The time is up, or the client exited: nothing more can arrive.
                None => break,
            }
        }
        self.pending = kept;
    }

    /// The close code of the next `"error"` line (skipping `"ready"`, `"open"` and results):
    /// `Some(4403)` for a WebSocket closed with 4403; `None` when the error carried no code
    /// (sse, or a client-side failure) or no error came within `within`. Panics when the
    /// subscription completed instead.
    pub async fn closed_with(&mut self, within: Duration) -> Option<u16> {
        let line = self.error_line(within).await?;
        line["code"].as_u64().map(|code| {
            u16::try_from(code).unwrap_or_else(|_| panic!("a close code out of range: {line}"))
        })
    }

    /// The next `"error"` line as printed (skipping `"ready"`, `"open"` and results, which are
    /// logged): `error` (the close reason, a message, or the GraphQL errors), `code` (ws
    /// closes), `status` and `body` (sse HTTP failures). `None` when none came within `within`.
    /// Panics when the subscription completed instead.
    pub async fn error_line(&mut self, within: Duration) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            let line = self.next_line(left(deadline)).await?;
            match kind(&line) {
                "error" => return Some(line),
                "ready" | "open" => {}
                "next" => eprintln!("a result before the error: {line}"),
                _ => panic!("expected an error, the client printed {line}"),
            }
        }
    }

    /// Unsubscribes the way the client does when its user is done (ws: `complete` messages and
    /// a normal close; sse: the request is aborted), waits for the client to confirm and exit.
    pub async fn stop(&mut self) {
        let stdin = self
            .child
            .stdin
            .as_mut()
            .expect("the client's stdin is piped");
        stdin
            .write_all(b"stop\n")
            .await
            .expect("the client reads its stdin");
        stdin.flush().await.expect("the client reads its stdin");
        loop {
            match self.next_line(READY_WITHIN).await {
                Some(line) if kind(&line) == "stopped" => break,
                Some(_) => continue,
                None => panic!("the client did not stop within {READY_WITHIN:?}"),
            }
        }
        let _ = tokio::time::timeout(READY_WITHIN, self.child.wait()).await;
    }
}

/// A line's `"type"`.
fn kind(line: &Value) -> &str {
    line["type"].as_str().unwrap_or_default()
}

/// The time left until `deadline` (zero when past).
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}
