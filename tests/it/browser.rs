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

/// A gateway in demo mode, and a headless Chromium session to drive its playground.
struct Playground {
    addr: std::net::SocketAddr,
    browser: fantoccini::Client,
    _driver: Chromedriver,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Playground {
    async fn open() -> Playground {
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
        Playground {
            addr,
            browser,
            _driver: driver,
            stop,
        }
    }

    async fn close(self) {
        let _ = self.browser.close().await;
        drop(self.stop);
    }
}

/// Saves a screenshot in `test-artifacts/{name}`.
async fn keep_screenshot(
    browser: &fantoccini::Client,
    name: &str,
) -> Result<(), fantoccini::error::CmdError> {
    let screenshot = browser.screenshot().await?;
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("a folder for artifacts");
    std::fs::write(artifacts.join(name), screenshot).expect("the screenshot saved");
    Ok(())
}

/// The result pane's text, once it shows what `done` looks for (or after 30 s, as it is).
async fn result_when(
    browser: &fantoccini::Client,
    done: impl Fn(&str) -> bool,
) -> Result<String, fantoccini::error::CmdError> {
    let result = browser
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(".result-window"))
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut shown = String::new();
    while tokio::time::Instant::now() < deadline {
        shown = result.text().await?;
        if done(&shown) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(shown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_runs_the_example_query_in_headless_chromium() {
    let playground = Playground::open().await;
    let (addr, browser) = (playground.addr, &playground.browser);
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
        let shown = result_when(browser, |shown| {
            shown.contains("\"contacts\"") && shown.contains("\"name\"")
        })
        .await?;
        keep_screenshot(browser, "graphiql.png").await?;
        Ok::<_, fantoccini::error::CmdError>(shown)
    }
    .await;
    playground.close().await;
    let shown = outcome.expect("the browser ran the example");
    assert!(
        shown.contains("\"contacts\"") && shown.contains("\"nodes\""),
        "the result pane shows no contacts: {shown}"
    );
    assert!(!shown.contains("\"errors\""), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_subscribes_in_its_third_tab_and_shows_a_change_as_it_happens() {
    let playground = Playground::open().await;
    let (addr, browser) = (playground.addr, &playground.browser);
    let http = reqwest::Client::new();
    let post = |body: serde_json::Value| {
        let http = http.clone();
        async move {
            let answer = http
                .post(format!("http://{addr}/graphql"))
                .json(&body)
                .send()
                .await;
            let answer = answer.expect("answers").json::<serde_json::Value>().await;
            answer.expect("json")
        }
    };
    let outcome = async {
        browser.goto(&format!("http://{addr}/graphiql")).await?;
        browser
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(".graphiql-execute-button"))
            .await?;
        let tabs = browser.find_all(Locator::Css(".graphiql-tab-button")).await?;
        assert_eq!(tabs.len(), 3, "query, mutation and subscription tabs");
        tabs[2].click().await?;
        let editor = browser.find(Locator::Css(".graphiql-query-editor")).await?;
        let document = editor.text().await?;
        assert!(document.contains("contactChanged"), "{document}");
        // Found again: switching tabs renders the editor anew.
        let run = browser
            .find(Locator::Css(".graphiql-execute-button"))
            .await?;
        run.click().await?;
        // GraphiQL's WebSocket is open and subscribed once the gateway counts it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let subscribed = || async {
            let text = crate::support::metrics_text(&http, addr).await;
            crate::support::series_value(&text, "gateway_live_subscriptions")
        };
        while subscribed().await < 1.0 {
            if tokio::time::Instant::now() >= deadline {
                keep_screenshot(browser, "graphiql-subscription.png").await?;
                let shown = browser.find(Locator::Css(".result-window")).await?.text().await?;
                panic!("GraphiQL never subscribed: {shown}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A write through the gateway, as the mutation tab would make it.
        let first = post(serde_json::json!({ "query": "{ contacts(first: 1) { nodes { id } } }" })).await;
        let id = first["data"]["contacts"]["nodes"][0]["id"].as_str().expect("an id").to_owned();
        let renamed = post(serde_json::json!({
            "query": "mutation($input: [ContactUpdateInput!]!) { updateContacts(input: $input) { contacts { id name } } }",
            "variables": { "input": [{ "id": id, "name": "Показано Вживую" }] },
        }))
        .await;
        assert_eq!(renamed["data"]["updateContacts"]["contacts"][0]["name"], "Показано Вживую", "{renamed}");
        let shown = result_when(browser, |shown| shown.contains("Показано Вживую")).await?;
        keep_screenshot(browser, "graphiql-subscription.png").await?;
        Ok::<_, fantoccini::error::CmdError>((id, shown))
    }
    .await;
    playground.close().await;
    let (id, shown) = outcome.expect("the browser ran the subscription");
    assert!(
        shown.contains("\"UPDATED\"")
            && shown.contains(&format!("\"{id}\""))
            && shown.contains("Показано Вживую"),
        "the result pane shows no event: {shown}"
    );
    assert!(!shown.contains("\"errors\""), "{shown}");
}
