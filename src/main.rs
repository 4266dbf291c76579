//! The `petrel` command: `serve` runs the broker, `bench` the load generator.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use petrel::Broker;
use petrel::config::{LogFormat, Settings};

#[derive(Parser)]
#[command(name = "petrel", version, about = "An MQTT 3.1.1 and 5.0 broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Generate load against a running broker and report throughput and latency.
    Bench(petrel_bench::BenchArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file; without it the embedded default is used.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Port of the first listener, overriding the configuration.
    #[arg(short, long)]
    port: Option<u16>,
    /// Directory for durable state, overriding the configuration.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match petrel::server::runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("petrel: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Bench(args) => runtime
            .block_on(petrel_bench::run(args))
            .map_err(|error| error.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("petrel: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let mut settings = Settings::load(args.config.as_deref()).map_err(|e| e.to_string())?;
    if let Some(port) = args.port
        && let Some(first) = settings.listeners.first_mut()
    {
        first.bind.set_port(port);
    }
    if let Some(dir) = args.data_dir {
        settings.data_dir = dir;
    }
    init_logging(&settings);
    std::fs::create_dir_all(&settings.data_dir).map_err(|error| {
        format!(
            "cannot create data_dir {}: {error}",
            settings.data_dir.display()
        )
    })?;
    let broker = Broker::start(settings).await.map_err(|e| e.to_string())?;
    for addr in broker.local_addrs() {
        tracing::info!(%addr, "listening");
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    broker.shutdown().await;
    Ok(())
}

fn init_logging(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(petrel::config::LOG_FILTER_VARIABLE)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match settings.log.format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
