//! The examples in `examples/` run against a gateway in demo mode and do what they say.

use std::process::Command;

use amocrm_gateway::Gateway;
use amocrm_gateway::config::Cli;
use clap::Parser;

async fn demo() -> (String, tokio::sync::oneshot::Sender<()>) {
    let cli = Cli::try_parse_from(["amocrm-gateway", "--listen", "127.0.0.1:0", "--demo"])
        .expect("valid flags");
    let gateway = Gateway::build(cli.serve).await.expect("the gateway starts");
    let url = format!("http://{}", gateway.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(gateway.run(async {
        let _ = stopped.await;
    }));
    (url, stop)
}

/// Runs `program` with `args` off the runtime (the gateway serves on it meanwhile).
async fn run(program: &'static str, args: Vec<String>) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let argv = args.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(program).args(&argv).current_dir(root).output()
    })
    .await
    .expect("joined")
    .unwrap_or_else(|e| panic!("{program} could not start: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fetch_example_pages_and_round_trips_a_persisted_query() {
    let (url, _stop) = demo().await;
    let out = run("node", vec!["examples/fetch.mjs".to_owned(), url]).await;
    assert!(out.contains("page 3: "), "{out}");
    assert!(
        out.contains("APQ: the gateway did not know the hash"),
        "{out}"
    );
    assert!(
        out.contains("APQ: by hash alone the second time: 2 contacts"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curl_session_pages_and_round_trips_a_persisted_query() {
    let (url, _stop) = demo().await;
    let out = run("bash", vec!["examples/curl-session.sh".to_owned(), url]).await;
    assert!(out.contains("# page 2, after "), "{out}");
    assert!(
        out.contains(r#"{"message":"PersistedQueryNotFound","code":"PERSISTED_QUERY_NOT_FOUND"}"#),
        "{out}"
    );
    assert!(
        out.to_lowercase()
            .contains("cache-control: private, max-age="),
        "{out}"
    );
}
