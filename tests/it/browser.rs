//! GraphiQL in a real browser: headless Chromium, driven over WebDriver by chromedriver, opens
//! the playground of a gateway in demo mode, runs the example query and shows contacts. The
//! screenshot is kept in `test-artifacts/graphiql.png`. Needs the Debian packages chromium and
//! chromium-driver (`scripts/test` installs them). GraphiQL's assets are committed and embedded:
//! nothing is fetched first, and the page loads nothing from anywhere but the gateway.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use amocrm_gateway::Gateway;
use amocrm_gateway::config::Cli;
use clap::Parser;
use fantoccini::{ClientBuilder, Locator};

/// chromedriver on a free port, stopped when dropped.
struct Chromedriver {
    process: Child,
    port: u16,
}

impl Chromedriver {
    async fn start() -> Chromedriver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let process = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("chromedriver could not start ({e}); scripts/test installs chromium and chromium-driver")
            });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver never listened"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Chromedriver { process, port }
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_runs_the_example_query_in_headless_chromium() {
    let cli = Cli::try_parse_from(["amocrm-gateway", "--listen", "127.0.0.1:0", "--demo"])
        .expect("valid flags");
    let gateway = Gateway::build(cli.serve).await.expect("the gateway starts");
    let addr = gateway.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(gateway.run(async {
        let _ = stopped.await;
    }));

    let driver = Chromedriver::start().await;
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900"],
        }),
    );
    let browser = ClientBuilder::rustls()
        .expect("a TLS configuration")
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session");

    let outcome = async {
        browser.goto(&format!("http://{addr}/graphiql")).await?;
        let source = browser.source().await?;
        assert!(
            source.contains("/graphiql/assets/graphiql.min.js") && !source.contains("unpkg.com"),
            "the playground loads its assets from the gateway itself"
        );
        let run = browser
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(".graphiql-execute-button"))
            .await?;
        // Every script and stylesheet came from the gateway, and loaded.
        let loaded = browser
            .execute(
                "return performance.getEntriesByType('resource')\
                   .filter(e => e.initiatorType === 'script' || e.initiatorType === 'link')\
                   .map(e => [e.name, e.responseStatus]);",
                vec![],
            )
            .await?;
        let loaded = loaded.as_array().cloned().unwrap_or_default();
        assert_eq!(
            loaded.len(),
            4,
            "the page's scripts and stylesheet: {loaded:?}"
        );
        for entry in &loaded {
            let url = entry[0].as_str().unwrap_or_default();
            assert!(
                url.starts_with(&format!("http://{addr}/graphiql/assets/")),
                "loaded from elsewhere: {url}"
            );
            assert_eq!(entry[1], serde_json::json!(200), "{url} did not load");
        }
        run.click().await?;
        let result = browser
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(".result-window"))
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut shown = String::new();
        while tokio::time::Instant::now() < deadline {
            shown = result.text().await?;
            if shown.contains("\"contacts\"") && shown.contains("\"name\"") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let screenshot = browser.screenshot().await?;
        let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("test-artifacts");
        std::fs::create_dir_all(&artifacts).expect("a folder for artifacts");
        std::fs::write(artifacts.join("graphiql.png"), screenshot).expect("the screenshot saved");
        Ok::<_, fantoccini::error::CmdError>(shown)
    }
    .await;
    let _ = browser.close().await;
    drop(stop);
    let shown = outcome.expect("the browser ran the example");
    assert!(
        shown.contains("\"contacts\"") && shown.contains("\"nodes\""),
        "the result pane shows no contacts: {shown}"
    );
    assert!(!shown.contains("\"errors\""), "{shown}");
}
