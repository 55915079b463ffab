//! The benchmark suite behind `uvfio bench` and `cargo bench -p uvfio`.
//!
//! Every figure is a ratio against a baseline measured in the same run on
//! the same machine (raw socket ping-pong, `memcpy`, plain memory), so the
//! table holds on a noisy shared host. Each measurement is the median of
//! several repetitions, ours and its baselines in alternating batches. The
//! message path is measured in two pinned layouts, the same for ours and
//! the ping-pongs: client and server threads on one CPU (no cross-CPU
//! wake-up, so closest to the software path) and on two CPUs (adds two
//! cross-CPU wake-ups, which on a VM cost an IPI through the hypervisor
//! each and can dwarf everything else). Its goal is judged against the
//! fastest plain ping-pong (`send`/`recv`); a `read`/`write` ping-pong
//! (the baseline of earlier runs, ~10 % slower here) and one whose echo
//! end uses `recvmsg` with a control buffer (the floor of any server that
//! accepts fds with any request) are reported beside it.

mod core_paths;
mod mmap_bar;
mod socket_paths;
mod timing;

pub use timing::{median_group, median_ns, median_pair, Measurement};

use serde::Serialize;

/// One line of the result table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What was measured.
    pub name: String,
    /// Our figure (ns per operation, or operations per second for rates).
    pub ours: f64,
    /// The baseline figure in the same unit.
    pub baseline: f64,
    /// Unit of `ours` and `baseline`.
    pub unit: &'static str,
    /// ours vs baseline, oriented so that > 1 means "better than baseline"
    /// for throughput goals and < 1 for latency goals (see `goal`).
    pub ratio: f64,
    /// The goal, as text.
    pub goal: &'static str,
    /// Whether the goal is met.
    pub met: Option<bool>,
}

impl Row {
    /// A row timing the same operation both ways, whose goal is to run
    /// at `min` or more of the baseline's speed (ratio = baseline time /
    /// our time; `goal` is how the table prints `min`).
    fn speed(
        name: String,
        ours: Measurement,
        base: Measurement,
        min: f64,
        goal: &'static str,
    ) -> Row {
        let ratio = base.ns_per_op / ours.ns_per_op;
        Row {
            name,
            ours: ours.ns_per_op,
            baseline: base.ns_per_op,
            unit: "ns/op",
            ratio,
            goal,
            met: Some(ratio >= min),
        }
    }
}

/// A page-aligned buffer of `len` bytes, so that both sides of a
/// comparison copy to and from the same alignment (a copy's speed depends
/// on where its buffers start).
struct PageAligned {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl PageAligned {
    pub(super) fn new(len: usize) -> Self {
        let storage = vec![0u8; len + 4096];
        let start = storage.as_ptr().align_offset(4096);
        PageAligned {
            storage,
            start,
            len,
        }
    }

    pub(super) fn get(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// Options for a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Operations per measurement for round-trip style benches.
    pub iterations: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options { iterations: 20_000 }
    }
}

/// Runs the in-process (core) benchmarks.
pub fn run_core(opts: &Options) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    rows.extend(core_paths::dma(opts)?);
    rows.extend(core_paths::lifecycle(opts)?);
    Ok(rows)
}

/// Runs the socket benchmarks against a fresh in-process server, or the
/// message-path ones against `socket`.
/// `wait` is how our client waits with `socket` (the in-process run sets
/// its own).
pub fn run_socket(
    opts: &Options,
    socket: Option<&std::path::Path>,
    wait: uvfio_user::Wait,
) -> anyhow::Result<Vec<Row>> {
    match socket {
        Some(s) => socket_paths::external(s, opts, wait),
        None => {
            let mut rows = socket_paths::in_process(opts)?;
            rows.extend(mmap_bar::rows(opts)?);
            Ok(rows)
        }
    }
}

/// Runs the scale benchmark (1,000 devices, 256 clients by default).
pub fn run_scale(devices: u32, clients: u32, seconds: f64) -> anyhow::Result<Vec<Row>> {
    socket_paths::scale(
        devices,
        clients,
        std::time::Duration::from_secs_f64(seconds),
    )
}

/// Prints rows as a table.
pub fn print_table(rows: &[Row]) {
    println!(
        "{:<62} {:>12} {:>12} {:>6} {:>7}  goal",
        "benchmark", "ours", "baseline", "unit", "ratio"
    );
    for r in rows {
        let met = match r.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        println!(
            "{:<62} {:>12.1} {:>12.1} {:>6} {:>7.3}  {} {}",
            r.name, r.ours, r.baseline, r.unit, r.ratio, r.goal, met
        );
    }
}
