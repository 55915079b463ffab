//! `uvfio migrate --from SOCKET --to SOCKET`: moves a device's state from
//! one vfio-user server to another, the way a VMM does it (migration v2
//! over DEVICE_FEATURE and MIG_DATA_READ/WRITE):
//!
//! 1. connect to both (waiting a little while a previous client detaches),
//!    negotiate, and check that both devices migrate (MIGRATION flags);
//! 2. destination RUNNING → RESUMING, before the source is touched;
//! 3. if the source supports PRE_COPY: source → PRE_COPY, then pre-copy
//!    rounds, each reading until the stream's temporary end (a short read)
//!    and writing every chunk to the destination as it comes, until a
//!    round brings nothing new (or `--precopy-rounds`);
//! 4. source → STOP_COPY (the device stops: downtime starts), read to the
//!    end of the stream, write it to the destination;
//! 5. destination → RUNNING: RESUMING → STOP validates the stream, a bad
//!    or foreign one fails the SET and leaves the destination in ERROR;
//! 6. source → STOP, where it stays (its VM would now be gone).
//!
//! On any failure the source is moved back to RUNNING (best effort, as a
//! VMM cancels a migration) and the command fails with one line naming the
//! step and the states both devices were left in.
//!
//! Progress goes to stdout: a live line per transfer phase on a terminal,
//! plain lines otherwise.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rustix::io::Errno;
use uvfio_core::MigFlags;
use uvfio_user::proto::MigState;
use uvfio_user::{Client, ClientConfig, ClientError};

use crate::cli::MigrateArgs;

/// Config space index and the vendor/device ids at offset 0.
const CONFIG_REGION: u32 = 7;

/// `STOP_COPY|PRE_COPY` etc.
pub fn flags_name(f: MigFlags) -> String {
    let names: Vec<&str> = [
        (MigFlags::STOP_COPY, "STOP_COPY"),
        (MigFlags::P2P, "P2P"),
        (MigFlags::PRE_COPY, "PRE_COPY"),
    ]
    .iter()
    .filter(|(b, _)| f.contains(*b))
    .map(|&(_, n)| n)
    .collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join("|")
    }
}

/// The uAPI name of a state.
pub fn state_name(s: MigState) -> &'static str {
    match s {
        MigState::Error => "ERROR",
        MigState::Stop => "STOP",
        MigState::Running => "RUNNING",
        MigState::StopCopy => "STOP_COPY",
        MigState::Resuming => "RESUMING",
        MigState::RunningP2p => "RUNNING_P2P",
        MigState::PreCopy => "PRE_COPY",
        MigState::PreCopyP2p => "PRE_COPY_P2P",
    }
}

fn bytes(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else if n < 1 << 20 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20))
    }
}

fn plural(n: u64, one: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {one}s")
    }
}

/// Progress output: live `\r` lines on a terminal, plain lines otherwise.
struct Progress {
    tty: bool,
    live: bool,
    out: std::io::Stdout,
}

impl Progress {
    fn new() -> Progress {
        let out = std::io::stdout();
        Progress {
            tty: out.is_terminal(),
            live: false,
            out,
        }
    }

    /// A finished line.
    fn line(&mut self, s: &str) {
        let mut o = self.out.lock();
        if self.live {
            let _ = write!(o, "\r\x1b[2K");
            self.live = false;
        }
        let _ = writeln!(o, "{s}");
        let _ = o.flush();
    }

    /// A line that the next update replaces (terminal only).
    fn update(&mut self, s: &str) {
        if !self.tty {
            return;
        }
        let mut o = self.out.lock();
        let _ = write!(o, "\r\x1b[2K{s}");
        let _ = o.flush();
        self.live = true;
    }
}

/// `[#####-----]  50%` of `done` against an estimate.
fn bar(done: u64, estimate: u64) -> String {
    if estimate == 0 {
        return String::new();
    }
    let pct = (done.saturating_mul(100) / estimate).min(100);
    let filled = (pct / 5) as usize;
    format!(
        " [{}{}] {pct:>3}%",
        "#".repeat(filled),
        "-".repeat(20 - filled)
    )
}

/// Connects, retrying while the device is busy with a client that is
/// still detaching (`EBUSY` to VERSION) for up to `wait`.
fn connect(path: &Path, wait: Duration) -> Result<Client, ClientError> {
    let deadline = Instant::now() + wait;
    loop {
        match Client::connect_with(path, ClientConfig::default()) {
            Err(ClientError::Server { errno, .. })
                if errno == Errno::BUSY && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// `VVVV:DDDD` from config space, if readable.
fn pci_id(c: &Client) -> String {
    let mut id = [0u8; 4];
    match c.region_read(CONFIG_REGION, 0, &mut id) {
        Ok(()) => format!(
            "{:04x}:{:04x}",
            u16::from_le_bytes([id[0], id[1]]),
            u16::from_le_bytes([id[2], id[3]])
        ),
        Err(_) => "????:????".to_owned(),
    }
}

/// One side of the migration.
struct Side<'a> {
    role: &'static str,
    client: &'a Client,
}

impl Side<'_> {
    fn set(&self, p: &mut Progress, s: MigState) -> anyhow::Result<()> {
        self.client
            .set_mig_state(s)
            .with_context(|| format!("{} → {}", self.role, state_name(s)))?;
        p.line(&format!("{:<12} {}", self.role, state_name(s)));
        Ok(())
    }

    /// The state as the device reports it, for error messages.
    fn state(&self) -> String {
        match self.client.mig_state() {
            Ok(s) => state_name(s).to_owned(),
            Err(e) => format!("unknown ({e})"),
        }
    }
}

/// Counters of the transfer.
#[derive(Default)]
struct Stats {
    pre_bytes: u64,
    pre_rounds: u64,
    stop_bytes: u64,
    reads: u64,
}

/// Reads from `src` until a short read (the stream's end, for now in
/// PRE_COPY) and writes every chunk to `dst`; returns the bytes moved.
fn drain(
    src: &Client,
    dst: &Client,
    chunk: usize,
    stats: &mut Stats,
    mut show: impl FnMut(u64, u64),
) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; chunk];
    let mut moved = 0u64;
    let mut reads = 0u64;
    loop {
        let n = src
            .mig_read_into(&mut buf)
            .context("source: MIG_DATA_READ")?;
        reads += 1;
        stats.reads += 1;
        if n > 0 {
            dst.mig_write(&buf[..n])
                .context("destination: MIG_DATA_WRITE")?;
        }
        moved += n as u64;
        show(moved, reads);
        if n < chunk {
            return Ok(moved);
        }
    }
}

/// Steps 3-4: pre-copy and stop-copy.
fn transfer(
    src: &Side<'_>,
    dst: &Side<'_>,
    flags: MigFlags,
    rounds: u32,
    p: &mut Progress,
    stats: &mut Stats,
) -> anyhow::Result<Instant> {
    let chunk = {
        let n = src.client.negotiated();
        n.theirs
            .max_data_xfer_size
            .min(n.ours.max_data_xfer_size)
            .max(1) as usize
    };
    if flags.contains(MigFlags::PRE_COPY) && rounds > 0 {
        src.set(p, MigState::PreCopy)?;
        loop {
            let round = stats.pre_rounds + 1;
            let got = drain(src.client, dst.client, chunk, stats, |b, r| {
                p.update(&format!(
                    "{:<12} round {round}: {}, {}",
                    "pre-copy",
                    bytes(b),
                    plural(r, "read")
                ));
            })?;
            if got == 0 {
                break;
            }
            stats.pre_rounds = round;
            stats.pre_bytes += got;
            p.line(&format!("{:<12} round {round}: {}", "pre-copy", bytes(got)));
            if round >= u64::from(rounds) {
                break;
            }
        }
        p.line(&format!(
            "{:<12} {} in {}",
            "pre-copy",
            bytes(stats.pre_bytes),
            plural(stats.pre_rounds, "round")
        ));
    }
    // MIG_DATA_SIZE: what STOP_COPY will still produce (in PRE_COPY, net
    // of what pre-copy offered), for the progress bar.
    let estimate = src.client.stop_copy_size().unwrap_or(0);
    let stopped = Instant::now();
    src.set(p, MigState::StopCopy)?;
    let got = drain(src.client, dst.client, chunk, stats, |b, _| {
        p.update(&format!(
            "{:<12} {}{}",
            "stop-copy",
            bytes(b),
            bar(b, estimate)
        ));
    })?;
    stats.stop_bytes = got;
    p.line(&format!("{:<12} {}", "stop-copy", bytes(got)));
    Ok(stopped)
}

/// `uvfio migrate`.
pub fn run(a: MigrateArgs) -> anyhow::Result<()> {
    if let (Ok(x), Ok(y)) = (a.from.canonicalize(), a.to.canonicalize()) {
        if x == y {
            bail!("--from and --to are the same socket ({})", a.from.display());
        }
    }
    let wait = Duration::from_secs_f64(a.wait.max(0.0));
    let started = Instant::now();
    let mut p = Progress::new();
    let src_client =
        connect(&a.from, wait).with_context(|| format!("source {}", a.from.display()))?;
    let dst_client =
        connect(&a.to, wait).with_context(|| format!("destination {}", a.to.display()))?;
    let src = Side {
        role: "source",
        client: &src_client,
    };
    let dst = Side {
        role: "destination",
        client: &dst_client,
    };
    let mut flags = [MigFlags::empty(); 2];
    for (i, (side, path)) in [(&src, &a.from), (&dst, &a.to)].into_iter().enumerate() {
        let f = match side.client.migration_flags() {
            Ok(f) => f,
            Err(e) if e.errno() == Errno::NOTTY => bail!(
                "{} {}: the device does not support migration",
                side.role,
                path.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("{} {}", side.role, path.display())),
        };
        if !f.contains(MigFlags::STOP_COPY) {
            bail!("{} {}: no STOP_COPY support", side.role, path.display());
        }
        p.line(&format!(
            "{:<12} {}  {}  {}",
            side.role,
            path.display(),
            pci_id(side.client),
            flags_name(f)
        ));
        flags[i] = f;
    }
    // The destination first: nothing has happened to the source if it
    // cannot resume.
    dst.set(&mut p, MigState::Resuming)?;
    let mut stats = Stats::default();
    let result =
        transfer(&src, &dst, flags[0], a.precopy_rounds, &mut p, &mut stats).and_then(|stopped| {
            dst.client
                .set_mig_state(MigState::Running)
                .with_context(|| {
                    format!("destination refused the stream (left in {})", dst.state())
                })?;
            p.line(&format!("{:<12} RUNNING", "destination"));
            Ok(stopped.elapsed())
        });
    let downtime = match result {
        Ok(d) => d,
        Err(e) => {
            // Cancel on the source: it runs again.
            let source = match src.client.set_mig_state(MigState::Running) {
                Ok(()) => "source resumed RUNNING".to_owned(),
                Err(_) => format!("source left in {}", src.state()),
            };
            return Err(e.context(format!("migration failed, {source}")));
        }
    };
    src.set(&mut p, MigState::Stop)?;
    let pre = if stats.pre_rounds == 0 {
        "no pre-copy".to_owned()
    } else {
        format!(
            "pre-copy {} in {}",
            bytes(stats.pre_bytes),
            plural(stats.pre_rounds, "round")
        )
    };
    p.line(&format!(
        "migrated {} ({pre}, stop-copy {}) in {}; downtime {:.1} ms, total {:.1} ms",
        bytes(stats.pre_bytes + stats.stop_bytes),
        bytes(stats.stop_bytes),
        plural(stats.reads, "read"),
        downtime.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3,
    ));
    Ok(())
}
