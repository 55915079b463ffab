//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::spec::DeviceSpec;

/// uvfio — userspace VFIO devices over vfio-user.
///
/// Exit codes: 0 success, 1 runtime error, 2 usage error.
#[derive(Debug, Parser)]
#[command(name = "uvfio", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve devices over vfio-user until Ctrl-C/SIGTERM.
    #[command(after_help = "Examples:\n  \
        uvfio serve                                 # one mtty and one gpio device\n  \
        uvfio serve --dir /tmp/u --device mtty:ser0,ports=2 --device gpio:io0\n  \
        uvfio serve --config devices.toml --ready-file /tmp/u/ready\n  \
        uvfio serve --poll spin:50us   # clients on other CPUs: lower latency for CPU time")]
    Serve(ServeArgs),
    /// Create a device instance in a running server (like mdev's `create`).
    #[command(after_help = "Example:\n  uvfio create --dir /tmp/u mtty ser1 --opt ports=2")]
    Create(CreateArgs),
    /// Remove a device instance from a running server (waits for its client).
    #[command(after_help = "Example:\n  uvfio remove --dir /tmp/u ser1 --timeout 5")]
    Remove(RemoveArgs),
    /// List device types and instances of a running server.
    #[command(after_help = "Example:\n  uvfio list --dir /tmp/u")]
    List(DirArg),
    /// Describe any vfio-user device like `lspci -vv`.
    #[command(after_help = "Examples:\n  uvfio info /tmp/u/ser0.sock\n  \
        uvfio info --json /tmp/u/ser0.sock\n  uvfio info --hexdump /tmp/u/ser0.sock")]
    Info(InfoArgs),
    /// Benchmark the message path, DMA and lifecycle against baselines.
    #[command(
        after_help = "Examples:\n  uvfio bench\n  uvfio bench --json\n  uvfio bench --socket /tmp/u/gpio0.sock"
    )]
    Bench(BenchArgs),
    /// Live-migrate a device's state from one vfio-user server to another.
    ///
    /// Does what a VMM does: destination → RESUMING; source → PRE_COPY
    /// (if supported) with pre-copy rounds until the stream has nothing
    /// new; source → STOP_COPY, read to the end; destination → RUNNING
    /// (which validates the stream: a foreign or corrupted one leaves the
    /// destination in ERROR); source → STOP. On failure the source is
    /// resumed and the command exits 1.
    #[command(after_help = "Examples:\n  \
        uvfio migrate --from /tmp/a/ser0.sock --to /tmp/b/ser0.sock\n  \
        uvfio migrate --from /tmp/a/dma0.sock --to /tmp/b/dma0.sock --precopy-rounds 0   # stop-copy only\n  \
        uvfio migrate --from A.sock --to B.sock --wait 10   # wait for the VM's client to detach")]
    Migrate(MigrateArgs),
}

/// `--dir`, shared by the management commands.
#[derive(Debug, Args)]
pub struct DirArg {
    /// Socket folder of the server [default: $XDG_RUNTIME_DIR/uvfio or /tmp/uvfio-$UID].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `uvfio serve`.
// The field docs are clap help text, shown verbatim: `[...]` there is
// option syntax, not a rustdoc link.
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Socket folder [default: $XDG_RUNTIME_DIR/uvfio or /tmp/uvfio-$UID].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// A device: TYPE[:NAME][,key=value…]; repeatable. Without any (and
    /// without --config), one mtty and one gpio device.
    #[arg(long = "device", value_name = "SPEC")]
    pub devices: Vec<DeviceSpec>,
    /// TOML file with `dir` and `[[device]]` tables.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Written once every socket listens.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Seconds a client gets to release a device being removed before the
    /// server disconnects it.
    #[arg(long, default_value_t = 5.0)]
    pub grace: f64,
    /// How connection threads wait for the next request: `block` (no CPU
    /// while idle), or poll for up to a time before blocking:
    /// `spin:DURATION` (for clients running on other CPUs) or
    /// `yield:DURATION` (for clients sharing the server's CPU). DURATION
    /// is a number with `us` or `ms`, at most 100ms. Default: the config
    /// file's `poll`, else `block`.
    #[arg(long, value_parser = parse_wait, value_name = "MODE")]
    pub poll: Option<uvfio_user::Wait>,
}

/// `--poll`'s value: `block`, `spin:DURATION` or `yield:DURATION`.
pub(crate) fn parse_wait(s: &str) -> Result<uvfio_user::Wait, String> {
    use uvfio_user::Wait;
    let bad = || format!("`{s}` is not block, spin:DURATION or yield:DURATION (e.g. spin:50us)");
    if s == "block" {
        return Ok(Wait::Block);
    }
    let (mode, time) = s.split_once(':').ok_or_else(bad)?;
    let (digits, unit) = if let Some(d) = time.strip_suffix("us") {
        (d, 1u64)
    } else if let Some(d) = time.strip_suffix("ms") {
        (d, 1000)
    } else {
        return Err(bad());
    };
    let us = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|&us| us > 0 && us <= 100_000)
        .ok_or_else(bad)?;
    let d = std::time::Duration::from_micros(us);
    match mode {
        "spin" => Ok(Wait::Spin(d)),
        "yield" => Ok(Wait::Yield(d)),
        _ => Err(bad()),
    }
}

/// `uvfio create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub dir: DirArg,
    /// Device type (see `uvfio list`).
    pub ty: String,
    /// Instance name [default: generated].
    pub name: Option<String>,
    /// Type option key=value; repeatable.
    #[arg(long = "opt", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
}

/// `uvfio remove`.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub dir: DirArg,
    /// Instance name.
    pub name: String,
    /// Give up waiting for the client after this many seconds.
    #[arg(long)]
    pub timeout: Option<f64>,
}

/// `uvfio info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The device's vfio-user socket.
    pub socket: PathBuf,
    /// One JSON object instead of text.
    #[arg(long, conflicts_with = "hexdump")]
    pub json: bool,
    /// Raw config space, like `lspci -xxx`.
    #[arg(long)]
    pub hexdump: bool,
}

/// `uvfio bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Measure against this server instead of a fresh in-process one.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Round trips per measurement.
    #[arg(long, default_value_t = 20_000)]
    pub iterations: u32,
    /// Devices registered for the scale run (0 skips it).
    #[arg(long, default_value_t = 1000)]
    pub devices: u32,
    /// Clients connected for the scale run.
    #[arg(long, default_value_t = 256)]
    pub clients: u32,
    /// Seconds each scale measurement runs.
    #[arg(long, default_value_t = 2.0, value_parser = positive_seconds)]
    pub scale_seconds: f64,
    /// With --socket: how our client waits for replies (as `serve --poll`);
    /// a polling client is compared with ping-pongs that poll the same way.
    #[arg(long, default_value = "block", value_parser = parse_wait, value_name = "MODE", requires = "socket")]
    pub poll: uvfio_user::Wait,
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds in (0, 3600]")),
    }
}

/// `uvfio migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The source device's vfio-user socket.
    #[arg(long, value_name = "SOCKET")]
    pub from: PathBuf,
    /// The destination device's vfio-user socket (same device type).
    #[arg(long, value_name = "SOCKET")]
    pub to: PathBuf,
    /// Most pre-copy rounds before stopping the source (0: no pre-copy).
    #[arg(long, default_value_t = 8)]
    pub precopy_rounds: u32,
    /// Seconds to keep retrying a device that is busy with another client.
    #[arg(long, default_value_t = 5.0)]
    pub wait: f64,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use uvfio_user::Wait;

    use super::parse_wait;

    #[test]
    fn poll_modes_parse_with_a_bounded_duration() {
        assert_eq!(parse_wait("block"), Ok(Wait::Block));
        assert_eq!(
            parse_wait("spin:50us"),
            Ok(Wait::Spin(Duration::from_micros(50)))
        );
        assert_eq!(
            parse_wait("yield:2ms"),
            Ok(Wait::Yield(Duration::from_millis(2)))
        );
        assert_eq!(
            parse_wait("spin:100ms"),
            Ok(Wait::Spin(Duration::from_millis(100)))
        );
        for bad in [
            "",
            "spin",
            "spin:",
            "spin:0us",
            "spin:101ms",
            "spin:5s",
            "nap:5us",
            "spin:-1us",
            "yield:1.5ms",
        ] {
            assert!(parse_wait(bad).is_err(), "{bad:?}");
        }
    }
}
