//! `petrel-bench`: the load generator on its own, for machines that only
//! drive load. `petrel bench` runs the same code.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "petrel-bench",
    version,
    about = "Generate MQTT load against a broker and report throughput and latency"
)]
struct Cli {
    #[command(flatten)]
    args: petrel_bench::BenchArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("petrel-bench: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(petrel_bench::run(cli.args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("petrel-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
