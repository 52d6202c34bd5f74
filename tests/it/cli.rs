//! The binary, its subcommands, the checked-in schema and the compose file.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use amocrm_gateway::config::Cli;
use clap::{CommandFactory, Parser};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_amocrm-gateway");

fn repo_file(name: &str) -> String {
    std::fs::read_to_string(format!("{}/{name}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn schema_graphql_is_the_served_sdl() {
    assert_eq!(
        repo_file("schema.graphql"),
        amocrm_gateway::graphql::sdl(),
        "schema.graphql drifted: run `cargo run -- print-schema > schema.graphql`"
    );
}

#[tokio::test]
async fn print_schema_prints_the_checked_in_sdl() {
    let output = Command::new(BIN)
        .arg("print-schema")
        .output()
        .await
        .expect("runs");
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        repo_file("schema.graphql")
    );
}

#[tokio::test]
async fn demo_mode_serves_the_fake_without_a_token() {
    let (mut child, url) =
        spawn_printing(&["--demo", "--listen", "127.0.0.1:0"], "GraphiQL: ").await;
    let graphql = url.replace("/graphiql", "/graphql");
    let body: serde_json::Value = reqwest::Client::new()
        .post(&graphql)
        .json(&json!({ "query": "{ contacts(first: 3) { nodes { id name leads { id } } } }" }))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(
        body["data"]["contacts"]["nodes"].as_array().map(Vec::len),
        Some(3),
        "{body}"
    );
    child.kill().await.expect("stops");
}

/// Starts the binary in front of `upstream` with the fake's admin token, for anyone, with
/// `extra` flags; returns it with the GraphiQL URL it printed once listening.
pub(crate) async fn spawn_in_front_of(
    upstream: &str,
    extra: &[&str],
) -> (tokio::process::Child, String) {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--upstream-url",
        upstream,
        "--access-token",
        amocrm_gateway::fake_amocrm::ADMIN_TOKEN,
        "--allow-anonymous",
    ];
    args.extend_from_slice(extra);
    spawn_printing(&args, "GraphiQL: ").await
}

/// Starts the binary and returns it with the URL it printed after `prefix` once listening.
async fn spawn_printing(args: &[&str], prefix: &str) -> (tokio::process::Child, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starts");
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    // The printed URL is the signal that the process listens.
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("reads") {
            if let Some(url) = line.strip_prefix(prefix) {
                return url.to_owned();
            }
        }
        panic!("{args:?} exited without printing {prefix:?}");
    })
    .await
    .expect("the process starts");
    (child, url)
}

#[tokio::test]
async fn the_fake_runs_alone() {
    let (mut child, url) = spawn_printing(
        &["fake-amocrm", "--listen", "127.0.0.1:0", "--contacts", "30"],
        "fake amoCRM on ",
    )
    .await;
    let client = reqwest::Client::new();
    let page: serde_json::Value = client
        .get(format!("{url}/api/v4/contacts?limit=250"))
        .bearer_auth(amocrm_gateway::fake_amocrm::ADMIN_TOKEN)
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(
        page["_embedded"]["contacts"].as_array().map(Vec::len),
        Some(30)
    );
    let anonymous = client
        .get(format!("{url}/api/v4/contacts"))
        .send()
        .await
        .expect("answers");
    assert_eq!(anonymous.status(), 401);
    assert_eq!(
        anonymous.headers()["content-type"],
        "application/problem+json"
    );
    child.kill().await.expect("stops");
}

#[tokio::test]
async fn demo_with_an_upstream_is_a_startup_error() {
    let output = Command::new(BIN)
        .args(["--demo", "--upstream-url", "https://example.amocrm.ru"])
        .output()
        .await
        .expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--upstream-url"));
}

#[tokio::test]
async fn without_an_upstream_the_gateway_says_what_to_set() {
    let output = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("AMOCRM_BASE_URL")
        .env_remove("GATEWAY_DEMO")
        .output()
        .await
        .expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("AMOCRM_BASE_URL"));
}

/// A rejected secret is named by its flag and environment twin, never printed back, whether it
/// came as a flag or from the environment (issue 13, point 15).
#[tokio::test]
async fn a_rejected_secret_is_named_never_printed() {
    let secrets = [
        ("--webhook-secret", "GATEWAY_WEBHOOK_SECRET", "wh-s3c"),
        ("--admin-token", "GATEWAY_ADMIN_TOKEN", "adm-s3c"),
        ("--client-key", "GATEWAY_CLIENT_KEY", "ck-s3c"),
        ("--scope-secret", "GATEWAY_SCOPE_SECRET", "sc-s3c"),
        (
            "--redis-url",
            "GATEWAY_REDIS_URL",
            "redis://:hunter2pw@[::1",
        ),
    ];
    for (flag, env, value) in secrets {
        for from_env in [false, true] {
            let mut command = Command::new(BIN);
            command.args(["--listen", "127.0.0.1:0", "--demo"]);
            if from_env {
                command.env(env, value);
            } else {
                command.args([flag, value]);
            }
            let output = command.output().await.expect("runs");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{flag} {value} was accepted");
            assert!(
                stderr.contains(flag) && stderr.contains(env),
                "the error names {flag} and {env}: {stderr}"
            );
            let secret_part = value.trim_start_matches("redis://:");
            assert!(
                !stderr.contains(secret_part) && !stderr.contains("hunter2"),
                "the error prints the value of {flag}: {stderr}"
            );
        }
    }
}

/// The image builds from what the Dockerfile copies: the manifest, the lock file, the build
/// script and what it embeds, the sources and the bench targets the manifest names.
#[test]
fn the_dockerfile_copies_everything_the_build_reads() {
    let dockerfile = repo_file("Dockerfile");
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter_map(|line| line.strip_prefix("COPY "))
        .filter(|line| !line.starts_with("--from"))
        .flat_map(|line| {
            let mut parts: Vec<&str> = line.split_whitespace().collect();
            parts.pop(); // the destination
            parts
        })
        .collect();
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "src",
        "assets",
        "benches",
    ] {
        assert!(
            copied.contains(&needed),
            "the Dockerfile does not copy {needed}"
        );
    }
}

/// `env var -> (long flag, takes a value)` for the gateway and for each subcommand.
fn env_twins(command: &clap::Command) -> HashMap<String, (String, bool)> {
    command
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_str()?.to_owned();
            let long = arg.get_long()?.to_owned();
            let takes_value = arg.get_action().takes_values();
            Some((env, (long, takes_value)))
        })
        .collect()
}

#[test]
fn every_env_twin_follows_the_naming_rule() {
    let root = Cli::command();
    let commands = std::iter::once(&root).chain(root.get_subcommands());
    for command in commands {
        for (env, (long, _)) in env_twins(command) {
            let expected = match long.as_str() {
                "upstream-url" => "AMOCRM_BASE_URL".to_owned(),
                "access-token" => "AMOCRM_ACCESS_TOKEN".to_owned(),
                other => format!("GATEWAY_{}", other.replace('-', "_").to_uppercase()),
            };
            assert_eq!(env, expected, "--{long}");
        }
    }
}

#[test]
fn the_compose_file_uses_only_flags_and_variables_the_binary_accepts() {
    let text = repo_file("docker-compose.yml");
    let compose: serde_json::Value = serde_norway::from_str(&text).expect("valid YAML");
    let root = Cli::command();
    let services = compose["services"].as_object().expect("services");
    assert!(!services.is_empty());
    // Services built from this repository run the binary; the others (Redis, the load
    // balancer) are stock images.
    for (name, service) in services.iter().filter(|(_, s)| s.get("build").is_some()) {
        let command: Vec<String> = service["command"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: command as a list"))
            .iter()
            .map(|a| a.as_str().expect("string").to_owned())
            .collect();
        let subcommand = command
            .first()
            .and_then(|first| root.find_subcommand(first));
        let twins = env_twins(subcommand.unwrap_or(&root));
        let mut args = vec!["amocrm-gateway".to_owned()];
        args.extend(command.iter().cloned());
        for (key, value) in service["environment"].as_object().into_iter().flatten() {
            let (long, takes_value) = twins
                .get(key)
                .unwrap_or_else(|| panic!("{name}: {key} is not a variable the binary reads"));
            let value = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if *takes_value {
                args.extend([format!("--{long}"), value]);
            } else if value == "true" {
                args.push(format!("--{long}"));
            }
        }
        Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{name}: {args:?}: {e}"));
    }
    // The commented settings for a real account must stay valid too.
    let known: Vec<String> = std::iter::once(&root)
        .chain(root.get_subcommands())
        .flat_map(env_twins)
        .map(|(env, _)| env)
        .collect();
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("GATEWAY_") || word.starts_with("AMOCRM_") {
            assert!(
                known.iter().any(|k| k == word),
                "{word} is not a variable the binary reads"
            );
        }
    }
}

/// `scripts/replicas.sh` is the compose topology without Docker: it must give the fake and the
/// replicas the same settings.
#[test]
fn the_replica_script_starts_what_the_compose_file_describes() {
    let compose: serde_json::Value =
        serde_norway::from_str(&repo_file("docker-compose.yml")).expect("valid YAML");
    let script = repo_file("scripts/replicas.sh");
    let services = &compose["services"];
    let replicas: Vec<&str> = ["gateway-a", "gateway-b"]
        .into_iter()
        .filter(|name| services.get(*name).is_some())
        .collect();
    assert_eq!(replicas.len(), 2, "two replicas in the compose file");
    assert_eq!(
        services["gateway-a"]["environment"],
        services["gateway-b"]["environment"]
    );
    for service in ["fake-amocrm", "gateway-a"] {
        let environment = services[service]["environment"]
            .as_object()
            .unwrap_or_else(|| panic!("{service}: environment"));
        for (variable, value) in environment {
            let value = value.as_str().expect("a string");
            let set = format!("{variable}=");
            assert!(
                script.contains(&set),
                "scripts/replicas.sh does not set {variable} ({service})"
            );
            // Addresses differ between containers and local processes; the rest must not.
            if !(variable.ends_with("_LISTEN") || value.contains("://")) {
                assert!(
                    script.contains(&format!("{variable}={value}")),
                    "scripts/replicas.sh sets {variable} to something else than {value:?}"
                );
            }
        }
    }
    assert!(script.contains("redis-server"), "the script starts Redis");
    assert!(
        services["redis"]["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("redis"))
    );
    assert!(services.get("load-balancer").is_some(), "a load balancer");
}

#[tokio::test]
async fn sigterm_drains_finishes_the_slow_request_and_exits_cleanly() {
    use amocrm_gateway::fake_amocrm::{FakeAmoCrm, FakeOptions};
    let fake = FakeAmoCrm::start(
        ([127, 0, 0, 1], 0).into(),
        FakeOptions {
            latency: Duration::from_millis(1500),
            ..FakeOptions::default()
        },
    )
    .await
    .expect("the fake starts");
    let upstream = fake.base_url();
    let (mut child, url) = spawn_in_front_of(&upstream, &["--drain-delay", "300ms"]).await;
    let base = url.replace("/graphiql", "");
    let client = reqwest::Client::new();
    let slow = tokio::spawn({
        let (client, base) = (client.clone(), base.clone());
        async move {
            client
                .post(format!("{base}/graphql"))
                .json(&json!({ "query": "{ contacts(first: 2) { nodes { id } } }" }))
                .send()
                .await
                .expect("answered")
                .json::<serde_json::Value>()
                .await
                .expect("json")
        }
    });
    // The upstream call arriving at the fake is the signal that the request is in flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fake.requests().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request never reached the fake"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = child.id().expect("running").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill runs");
    assert!(killed.success());
    // Once the signal is handled, health says so while requests are still served.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let health = client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("still serving");
        if health.status() == 503 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never announced draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let body = slow.await.expect("the slow request");
    assert_eq!(
        body["data"]["contacts"]["nodes"].as_array().map(Vec::len),
        Some(2),
        "{body}"
    );
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the gateway exits")
        .expect("a status");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn debug_logs_never_contain_a_token() {
    use amocrm_gateway::fake_amocrm::{ADMIN_TOKEN, FakeAmoCrm, FakeOptions};
    let fake = FakeAmoCrm::start(([127, 0, 0, 1], 0).into(), FakeOptions::default())
        .await
        .expect("the fake starts");
    let log = std::env::temp_dir().join(format!("gateway-log-{}.txt", std::process::id()));
    let log_file = std::fs::File::create(&log).expect("a log file");
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream-url",
            &fake.base_url(),
        ])
        .args([
            "--scope-secret",
            "scope-secret-value-1",
            "--webhook-secret",
            "webhook-secret-value-1",
        ])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .expect("starts");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut url = String::new();
    while let Some(line) = lines.next_line().await.expect("reads") {
        if let Some(found) = line.strip_prefix("GraphiQL: ") {
            url = found.replace("/graphiql", "/graphql");
            break;
        }
    }
    let client = reqwest::Client::new();
    for token in [ADMIN_TOKEN, "revoked-token-abcdef", ADMIN_TOKEN] {
        client
            .post(&url)
            .bearer_auth(token)
            .json(&json!({ "query": "{ contacts(first: 2) { nodes { id leads { id } } } }" }))
            .send()
            .await
            .expect("answered");
    }
    // The webhook, and near misses of its path that no route matches (issue 13, point 16).
    for path in [
        "/webhooks/amocrm/webhook-secret-value-1",
        "//webhooks/amocrm/webhook-secret-value-1",
        "/Webhooks/amocrm/webhook-secret-value-1",
        "/webhooks/amocrm/webhook-secret-value-1/x",
        "/webhooks/amocrm/webhook-secret-value-1?webhook-secret-value-1",
    ] {
        client
            .post(url.replace("/graphql", path))
            .body("contacts[update][0][id]=7000000")
            .send()
            .await
            .expect("answered");
    }
    child.kill().await.expect("stops");
    let logs = std::fs::read_to_string(&log).expect("logs");
    let _ = std::fs::remove_file(&log);
    assert!(logs.contains("amoCRM call"), "debug logs were captured");
    for secret in [
        ADMIN_TOKEN,
        "revoked-token-abcdef",
        "scope-secret-value-1",
        "webhook-secret-value-1",
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
    }
}

#[tokio::test]
async fn json_logs_carry_the_request_id_of_each_request() {
    let mut child = Command::new(BIN)
        .args(["--demo", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut stderr = BufReader::new(child.stderr.take().expect("piped")).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stdout.next_line().await.expect("reads") {
            if let Some(url) = line.strip_prefix("GraphiQL: ") {
                return url.replace("/graphiql", "");
            }
        }
        panic!("no URL printed");
    })
    .await
    .expect("the gateway starts");
    let answer = reqwest::Client::new()
        .post(format!("{url}/graphql"))
        .header("x-request-id", "trace-me-42")
        .json(&serde_json::json!({ "query": "{ contacts(first: 1) { nodes { id } } }" }))
        .send()
        .await
        .expect("answers");
    assert_eq!(answer.headers()["x-request-id"], "trace-me-42");
    let line = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = stderr.next_line().await.expect("reads") {
            if line.contains("trace-me-42") {
                return line;
            }
        }
        panic!("the log ended without the request id");
    })
    .await
    .expect("a log line with the request id");
    let entry: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(entry["span"]["request_id"], "trace-me-42", "{entry}");
    assert_eq!(entry["span"]["path"], "/graphql", "{entry}");
    assert_eq!(entry["level"], "INFO", "{entry}");
    let _ = child.kill().await;
}
