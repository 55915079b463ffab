//! Round-trip latency of a 4-byte REGION_READ through the uvfio server,
//! next to a raw UNIX-socket ping-pong with the same message sizes (32-byte
//! request, 36-byte reply), measured in the same run.
//!
//! `cargo bench -p uvfio-user` (release). Prints ns per round trip for
//! both and their ratio. Plain `Instant`, no statistics crate: each figure
//! is the median of several timed batches.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use uvfio_core::{DeviceFlags, DeviceInfo, DeviceOps, GroupId, RegionInfo, Registry};
use uvfio_user::{Client, Server, ServerConfig};

const BATCH: u32 = 20_000;
const BATCHES: usize = 7;
const CONFIG: u32 = 7;

/// One 4-byte register in the config region.
struct Reg;

impl DeviceOps for Reg {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: DeviceFlags::PCI,
            num_regions: 9,
            num_irqs: 5,
        }
    }
    fn region_info(&self, index: u32) -> uvfio_core::Result<RegionInfo> {
        Ok(if index == CONFIG {
            RegionInfo::rw(index, 256)
        } else {
            RegionInfo::absent(index)
        })
    }
    fn read(&self, _index: u32, offset: u64, buf: &mut [u8]) -> uvfio_core::Result<()> {
        buf.copy_from_slice(&(offset as u32 ^ 0x5a5a_5a5a).to_le_bytes()[..buf.len()]);
        Ok(())
    }
}

/// Median ns per operation over `BATCHES` batches of `BATCH` operations.
fn measure(mut op: impl FnMut()) -> f64 {
    for _ in 0..BATCH / 4 {
        op();
    }
    let mut per_op: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..BATCH {
                op();
            }
            t.elapsed().as_nanos() as f64 / f64::from(BATCH)
        })
        .collect();
    per_op.sort_by(f64::total_cmp);
    per_op[BATCHES / 2]
}

fn bench_region_read() -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::default();
    let server = Server::new(registry.clone(), ServerConfig::new(dir.path())).expect("server");
    let dev = registry
        .init(Reg, "bench0", GroupId(1))
        .expect("init")
        .register()
        .expect("register");
    let client = Client::connect(server.socket_path("bench0").expect("served")).expect("connect");
    let mut buf = [0u8; 4];
    let ns = measure(|| {
        client
            .region_read(CONFIG, 0, &mut buf)
            .expect("region_read");
    });
    assert_eq!(u32::from_le_bytes(buf), 0x5a5a_5a5a);
    drop(client);
    drop(server);
    let _ = dev.unregister_with(&uvfio_core::UnregisterOptions {
        timeout: Some(Duration::from_secs(5)),
        ..Default::default()
    });
    ns
}

fn bench_raw_ping_pong() -> f64 {
    let (mut a, mut b) = UnixStream::pair().expect("socketpair");
    let echo = std::thread::spawn(move || {
        let mut req = [0u8; 32];
        let rep = [0u8; 36];
        while b.read_exact(&mut req).is_ok() {
            if b.write_all(&rep).is_err() {
                break;
            }
        }
    });
    let req = [1u8; 32];
    let mut rep = [0u8; 36];
    let ns = measure(|| {
        a.write_all(&req).expect("write");
        a.read_exact(&mut rep).expect("read");
    });
    drop(a);
    echo.join().expect("echo thread");
    ns
}

fn main() {
    // `cargo test --benches` runs this too; keep that quick.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let raw = bench_raw_ping_pong();
    let vfio_user = bench_region_read();
    println!("raw UNIX-socket ping-pong (32 B / 36 B): {raw:>9.0} ns/round trip");
    println!("vfio-user REGION_READ 4 B (uvfio Client+Server): {vfio_user:>9.0} ns/round trip");
    println!("ratio REGION_READ / raw ping-pong: {:.2}x", vfio_user / raw);
}
