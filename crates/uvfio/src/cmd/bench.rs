//! `uvfio bench`.

use crate::bench::{self, Options};
use crate::cli::BenchArgs;

/// Runs the suite and prints the table (or JSON).
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let opts = Options {
        iterations: args.iterations.max(100),
    };
    let mut rows = bench::run_socket(&opts, args.socket.as_deref(), args.poll)?;
    if args.socket.is_none() {
        rows.extend(bench::run_core(&opts)?);
        if args.devices > 0 {
            rows.extend(bench::run_scale(
                args.devices,
                args.clients,
                args.scale_seconds,
            )?);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        bench::print_table(&rows);
    }
    Ok(())
}
