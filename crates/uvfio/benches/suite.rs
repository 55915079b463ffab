//! `cargo bench -p uvfio`: the same suite as `uvfio bench`, printed as a
//! table of ratios against baselines measured in the same run.

fn suite() -> anyhow::Result<Vec<uvfio::bench::Row>> {
    let opts = uvfio::bench::Options::default();
    let mut rows = uvfio::bench::run_socket(&opts, None, uvfio_user::Wait::Block)?;
    rows.extend(uvfio::bench::run_core(&opts)?);
    rows.extend(uvfio::bench::run_scale(1000, 256, 2.0)?);
    Ok(rows)
}

fn main() {
    match suite() {
        Ok(rows) => uvfio::bench::print_table(&rows),
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            std::process::exit(1);
        }
    }
}
