use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use amocrm_gateway::config::{Cli, Command, LogFormat};
use amocrm_gateway::fake_amocrm::{self, FakeOptions};
use amocrm_gateway::{Gateway, graphql};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Some(Command::PrintSchema) => print!("{}", graphql::sdl()),
        Some(Command::FakeAmocrm(config)) => {
            let listener = TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("could not listen on {}", config.listen))?;
            println!("fake amoCRM on http://{}", listener.local_addr()?);
            let options = FakeOptions {
                contacts: config.contacts,
                latency: config.latency,
                rate_limit: config.rate_limit,
            };
            fake_amocrm::serve(listener, options, shutdown_signal()).await?;
        }
        None => {
            let gateway = Gateway::build(cli.serve).await?;
            let addr = gateway.local_addr();
            if gateway.is_demo() {
                println!(
                    "demo mode: serving the built-in fake amoCRM; no token needed\nGraphiQL: http://{addr}/graphiql"
                );
            } else {
                println!("GraphiQL: http://{addr}/graphiql");
            }
            tracing::info!(%addr, "serving");
            gateway.run(shutdown_signal()).await?;
        }
    }
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        // A handler that cannot be installed must not read as a signal.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
