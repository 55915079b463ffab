//! Benchmarks of paths inside one process: device DMA through the DMA
//! space and the device lifecycle.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use uvfio_core::*;

use super::{median_ns, median_pair, Options, PageAligned, Row};

const SIZES: [(usize, &str); 3] = [(4096, "4 KiB"), (65536, "64 KiB"), (1 << 20, "1 MiB")];

/// Where in its buffer slot each successive access starts: half page
/// aligned (the common case for DMA buffers, and the worst for the fixed
/// cost, since a copy ending on a page boundary makes the loads after it
/// wait for the stores), half not.
const JITTER: [u64; 8] = [0, 64, 0, 2048, 0, 4032, 0, 256];

/// Device-side DMA read/write through a mapped client memfd vs a plain
/// `memcpy` of the same size to/from the same mapped memory (so the ratio
/// is the cost of the IOVA translation, permission and bounds checks and
/// dirty marking, not of shared vs heap pages). Both sides walk the same
/// sequence of addresses (eight buffers, offsets from [`JITTER`]) and copy
/// to/from the same page-aligned local buffer. Ratio = memcpy time / DMA
/// time (1.0 = memory speed; goal ≥ 0.9).
pub fn dma(opts: &Options) -> anyhow::Result<Vec<Row>> {
    let slot_of = |size: usize| size as u64 + 4096;
    let window = JITTER.len() as u64 * slot_of(1 << 20);
    let mem = Arc::new(SharedMemory::new("bench-dma", window)?);
    let space = DmaSpace::new(DmaConfig::default());
    space.map(0, window, DmaPerm::READ | DmaPerm::WRITE, mem.clone(), 0)?;
    let dma = space.handle();
    let region = mem.region();
    let mut rows = Vec::new();
    for (size, label) in SIZES {
        let iters = (opts.iterations as usize * 4096 / size).clamp(20, 20_000) as u32;
        let addrs: Vec<u64> = (0..JITTER.len() as u64)
            .map(|i| i * slot_of(size) + JITTER[i as usize])
            .collect();
        let at = |i: u32| addrs[i as usize % addrs.len()];
        let mut local = PageAligned::new(size);
        let (rd, base) = {
            let local = std::cell::RefCell::new(&mut local);
            median_pair(
                15,
                iters,
                |n| {
                    let mut buf = local.borrow_mut();
                    for i in 0..n {
                        dma.read(black_box(at(i)), buf.get()).expect("mapped");
                        black_box(buf.get());
                    }
                },
                |n| {
                    let mut buf = local.borrow_mut();
                    for i in 0..n {
                        region
                            .read_at(black_box(at(i)), buf.get())
                            .expect("in bounds");
                        black_box(buf.get());
                    }
                },
            )
        };
        local.get().fill(0x5a);
        let src: &[u8] = local.get();
        let (wr, base_w) = median_pair(
            15,
            iters,
            |n| {
                for i in 0..n {
                    dma.write(black_box(at(i)), black_box(src)).expect("mapped");
                }
            },
            |n| {
                for i in 0..n {
                    region
                        .write_at(black_box(at(i)), black_box(src))
                        .expect("in bounds");
                }
            },
        );
        for (what, m, base) in [("read", rd, base), ("write", wr, base_w)] {
            let name = format!("dma {what} {label} vs memcpy (same memory)");
            rows.push(Row::speed(name, m, base, 0.9, ">= 0.90"));
        }
    }
    Ok(rows)
}

struct Nop;
impl DeviceOps for Nop {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: DeviceFlags::PCI,
            num_regions: 9,
            num_irqs: 5,
        }
    }
}

/// Register+unregister of unused devices per second (goal ≥ 100k/s), and
/// the latency from the last user's release to unregister returning (goal
/// < 1 ms).
pub fn lifecycle(opts: &Options) -> anyhow::Result<Vec<Row>> {
    let reg = Registry::default();
    let n = opts.iterations.max(1000);
    let m = median_ns(5, n, |n| {
        for i in 0..n {
            let d = reg
                .init(Nop, &format!("n{}", i % 64), GroupId(1_000 + i % 64))
                .expect("init")
                .register()
                .expect("register");
            black_box(d.unregister());
        }
    });
    let per_sec = 1e9 / m.ns_per_op;
    let mut rows = vec![Row {
        name: "register+unregister (no users)".into(),
        ours: per_sec,
        baseline: 100_000.0,
        unit: "ops/s",
        ratio: per_sec / 100_000.0,
        goal: ">= 100k/s",
        met: Some(per_sec >= 100_000.0),
    }];

    // Unregister latency: a user holds the device; unregister waits; the
    // user releases; measure release → unregister returned.
    let mut lat = Vec::new();
    for i in 0..200u32 {
        let g = GroupId(5_000 + i);
        let dev = reg.init(Nop, "lat", g)?.register().map_err(|e| e.errno)?;
        let c = Container::new();
        let group = reg.open_group(g)?;
        group.set_container(&c)?;
        c.set_iommu(IommuType::Type1v2)?;
        let h = group.get_device("lat")?;
        let (tx, rx) = std::sync::mpsc::channel::<Instant>();
        let t = std::thread::spawn(move || {
            let _ = dev.unregister();
            let _ = tx.send(Instant::now());
        });
        // Let unregister reach its wait (it calls request(0) first).
        std::thread::sleep(Duration::from_micros(200));
        let released = Instant::now();
        drop(h);
        let done = rx.recv()?;
        t.join()
            .map_err(|_| anyhow::anyhow!("unregister thread panicked"))?;
        drop(group);
        lat.push(done.duration_since(released).as_nanos() as f64);
    }
    lat.sort_by(f64::total_cmp);
    let med = lat[lat.len() / 2];
    rows.push(Row {
        name: "unregister latency after last release".into(),
        ours: med,
        baseline: 1_000_000.0,
        unit: "ns",
        ratio: med / 1_000_000.0,
        goal: "< 1 ms",
        met: Some(med < 1_000_000.0),
    });
    Ok(rows)
}
