//! `uvfio bench`.

use crate::bench::{self, Options};
use crate::cli::BenchArgs;

/// Runs the suite and prints the table (or JSON).
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let opts = Options {
        iterations: args.iterations.max(100),
    };
    let mut rows = Vec::new();
    if args.socket.is_none() {
        rows.extend(bench::run_core(&opts)?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        bench::print_table(&rows);
    }
    Ok(())
}
