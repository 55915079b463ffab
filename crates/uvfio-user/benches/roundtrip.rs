//! Round-trip latency of a 4-byte REGION_READ through the uvfio server,
//! next to a raw UNIX-socket ping-pong with the same message sizes (32-byte
//! request, 36-byte reply), measured in the same run.
//!
//! `cargo bench -p uvfio-user` (release). Batches of the two alternate, so
//! both see the same machine load; the figures are medians over batches
//! (ns per round trip) and the median of the per-batch ratios. Plain
//! `Instant`, no statistics crate.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use uvfio_core::{DeviceFlags, DeviceInfo, DeviceOps, GroupId, RegionInfo, Registry};
use uvfio_user::{Client, Server, ServerConfig};

const BATCH: u32 = 10_000;
const BATCHES: usize = 15;
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

/// ns per operation for one batch.
fn batch(op: &mut impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..BATCH {
        op();
    }
    t.elapsed().as_nanos() as f64 / f64::from(BATCH)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` runs this too; keep that quick.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }

    // The raw ping-pong: an echo thread answering 32 bytes with 36.
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
    let mut raw = || {
        a.write_all(&req).expect("write");
        a.read_exact(&mut rep).expect("read");
    };

    // The same exchange as vfio-user: uvfio Client → Server → device.
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
    let mut region_read = || {
        client
            .region_read(CONFIG, 0, &mut buf)
            .expect("region_read");
    };

    // Warm up both, then alternate batches.
    batch(&mut raw);
    batch(&mut region_read);
    let mut raw_ns = Vec::with_capacity(BATCHES);
    let mut vu_ns = Vec::with_capacity(BATCHES);
    let mut ratios = Vec::with_capacity(BATCHES);
    for _ in 0..BATCHES {
        let r = batch(&mut raw);
        let v = batch(&mut region_read);
        raw_ns.push(r);
        vu_ns.push(v);
        ratios.push(v / r);
    }
    assert_eq!(u32::from_le_bytes(buf), 0x5a5a_5a5a);

    println!(
        "raw UNIX-socket ping-pong (32 B / 36 B):           {:>8.0} ns/round trip",
        median(raw_ns)
    );
    println!(
        "vfio-user REGION_READ 4 B (uvfio Client + Server):  {:>8.0} ns/round trip",
        median(vu_ns)
    );
    println!(
        "ratio REGION_READ / raw ping-pong (median of {BATCHES} batch pairs): {:.2}x",
        median(ratios)
    );

    drop(client);
    drop(server);
    let _ = dev.unregister_with(&uvfio_core::UnregisterOptions {
        timeout: Some(Duration::from_secs(5)),
        ..Default::default()
    });
    drop(a);
    echo.join().expect("echo thread");
}
