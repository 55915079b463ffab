//! The `uvfio` command. See `uvfio --help`.
//!
//! Exit codes: 0 success, 1 runtime error (one line on stderr naming the
//! problem), 2 usage error (from the argument parser).

use clap::Parser;
use uvfio::{cli, cmd};

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = cli::Cli::parse();
    let r = match cli.command {
        cli::Command::Serve(a) => cmd::serve::run(a),
        cli::Command::Create(a) => cmd::manage::create(a),
        cli::Command::Remove(a) => cmd::manage::remove(a),
        cli::Command::List(a) => cmd::manage::list(a),
        cli::Command::Info(a) => cmd::info::run(a),
        cli::Command::Bench(a) => cmd::bench::run(a),
        cli::Command::Migrate(a) => cmd::migrate::run(a),
    };
    if let Err(e) = r {
        eprintln!("uvfio: {e:#}");
        std::process::exit(1);
    }
}
