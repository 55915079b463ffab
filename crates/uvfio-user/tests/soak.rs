//! Stress/soak, bounded in time (5 s by default; `UVFIO_SOAK_SECS`
//! overrides): client threads connect to random devices, map sealed
//! memfds and message-DMA memory, bind eventfds, do I/O and device DMA,
//! and go away abruptly (mid-message, mid-DMA, or just closing), while
//! another thread creates and removes devices under them. At the end:
//! every device removable (unregister returns), and no fds, threads or
//! mappings left behind, memory back near where it started.
//!
//! One test function on purpose: it counts the process's fds and threads.

mod common;
#[path = "support/raw.rs"]
mod raw;

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use raw::*;
use uvfio_core::{DmaPerm, GroupId, RegisteredDevice, Registry, RegistryConfig, SharedMemory};
use uvfio_user::proto::{self, Request};
use uvfio_user::{Client, ClientConfig, Server, ServerConfig};

const CLIENTS: usize = 8;
const MAX_DEVICES: usize = 6;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count)
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    pages * 4
}

/// Mappings of memfds the clients made (and the server mapped).
fn soak_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("memfd:soak"))
        .count()
}

#[derive(Default)]
struct Counts {
    sessions: AtomicU64,
    refused: AtomicU64,
    round_trips: AtomicU64,
    maps: AtomicU64,
    dma: AtomicU64,
    created: AtomicU64,
    removed: AtomicU64,
}

type Live = Arc<Mutex<BTreeMap<String, PathBuf>>>;

fn bar0_write(r: &mut Raw, off: u64, data: &[u8]) -> bool {
    let req = Request::RegionWrite(proto::RegionWrite {
        offset: off,
        region: BAR0,
        data,
    });
    let b = r.encode(&req, false);
    if r.try_send(&b, &[]).is_err() {
        return false;
    }
    matches!(r.recv(), Ok(m) if errno_of(&m).is_none())
}

/// One raw session that ends abruptly in one of several ways.
fn raw_session(path: &PathBuf, rng: &mut Rng, counts: &Counts) {
    let Ok(s) = std::os::unix::net::UnixStream::connect(path) else {
        return;
    };
    let mut r = Raw { s, id: 1 };
    let v = r.encode(&Raw::version(), false);
    if r.try_send(&v, &[]).is_err() {
        return;
    }
    match r.recv() {
        Ok(m) if errno_of(&m).is_none() => {}
        _ => {
            counts.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    counts.sessions.fetch_add(1, Ordering::Relaxed);
    let mem = SharedMemory::new("soak-raw", 0x4000).unwrap();
    let b = r.encode(&dma_map(0x10_0000, 0x4000), false);
    if r.try_send(&b, &[mem.fd()]).is_err() || r.recv().is_err() {
        return;
    }
    counts.maps.fetch_add(1, Ordering::Relaxed);
    let efds = eventfds(2);
    let b = r.encode(&set_eventfds(MSIX, 0, 2), false);
    if r.try_send(&b, &borrow(&efds)).is_err() || r.recv().is_err() {
        return;
    }
    for _ in 0..rng.below(20) {
        if !bar0_write(&mut r, REG_DMA_ADDR, &0x10_1000u64.to_le_bytes())
            || !bar0_write(&mut r, REG_DMA_LEN, &256u32.to_le_bytes())
            || !bar0_write(&mut r, REG_DOORBELL, &CMD_DMA_TO_CLIENT.to_le_bytes())
        {
            return;
        }
        counts.dma.fetch_add(1, Ordering::Relaxed);
    }
    match rng.below(3) {
        // Half a message, then gone.
        0 => {
            let mut h = header(9, proto::VFIO_USER_REGION_WRITE, 16 + 16 + 64, 0);
            h.extend_from_slice(&[0u8; 20]);
            let _ = r.try_send(&h, &[]);
        }
        // A message-DMA mapping and a doorbell whose DMA_READ is never
        // answered: gone while the device waits.
        1 => {
            let b = r.encode(&dma_map(0x20_0000, 0x1000), false);
            if r.try_send(&b, &[]).is_ok() && r.recv().is_ok() {
                let _ = bar0_write(&mut r, REG_DMA_ADDR, &0x20_0000u64.to_le_bytes());
                let d = Request::RegionWrite(proto::RegionWrite {
                    offset: REG_DOORBELL,
                    region: BAR0,
                    data: &CMD_DMA_FROM_CLIENT.to_le_bytes(),
                });
                let b = r.encode(&d, false);
                let _ = r.try_send(&b, &[]);
            }
        }
        // Just close.
        _ => {}
    }
}

/// One session through our client: DMA both ways, interrupts, I/O.
fn client_session(path: &PathBuf, rng: &mut Rng, counts: &Counts) {
    let config = ClientConfig::default().timeout(Duration::from_secs(5));
    let Ok(c) = Client::connect_with(path, config) else {
        counts.refused.fetch_add(1, Ordering::Relaxed);
        return;
    };
    counts.sessions.fetch_add(1, Ordering::Relaxed);
    let mem = SharedMemory::new("soak-client", 0x2000).unwrap();
    if c.dma_map_shared(0x1000, &mem, DmaPerm::READ | DmaPerm::WRITE)
        .is_err()
    {
        return;
    }
    counts.maps.fetch_add(1, Ordering::Relaxed);
    let efd = uvfio_core::irq::eventfd().unwrap();
    let _ = c.set_irq_eventfds(MSI, 0, &[efd.as_fd()]);
    let mut b = [0u8; 4];
    for _ in 0..rng.below(50) {
        if c.region_read(CONFIG, 0, &mut b).is_err()
            || c.region_write(BAR0, REG_SCRATCH, &b).is_err()
        {
            return;
        }
        counts.round_trips.fetch_add(1, Ordering::Relaxed);
    }
    if rng.below(2) == 0 {
        let _ = c.region_write(BAR0, REG_DMA_ADDR, &0x1000u64.to_le_bytes());
        let _ = c.region_write(BAR0, REG_DMA_LEN, &512u32.to_le_bytes());
        if c.region_write(BAR0, REG_DOORBELL, &CMD_DMA_FROM_CLIENT.to_le_bytes())
            .is_ok()
        {
            counts.dma.fetch_add(1, Ordering::Relaxed);
        }
    }
    if rng.below(2) == 0 {
        let _ = c.dma_unmap_all();
    }
}

#[test]
fn soak_clients_and_devices_come_and_go_and_nothing_leaks() {
    let secs: u64 = std::env::var("UVFIO_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let fds0 = open_fds();
    let threads0 = threads();
    let rss0 = rss_kib();

    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new(RegistryConfig {
        request_interval: Duration::from_millis(20),
    });
    let server = Server::new(
        registry.clone(),
        ServerConfig::new(dir.path())
            .grace_period(Duration::from_millis(200))
            .io_timeout(Duration::from_millis(500))
            .dma_timeout(Duration::from_millis(300))
            .negotiation_timeout(Duration::from_secs(1)),
    )
    .unwrap();
    let live: Live = Arc::default();
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(secs);

    // Devices come and go.
    let manager = {
        let (registry, live, counts, stop) =
            (registry.clone(), live.clone(), counts.clone(), stop.clone());
        let dir = dir.path().to_owned();
        std::thread::spawn(move || {
            let mut rng = Rng(0x5eed);
            let mut devices: Vec<RegisteredDevice<TestDevice>> = Vec::new();
            let mut next = 0u32;
            while !stop.load(Ordering::Relaxed) {
                if devices.len() < MAX_DEVICES && rng.below(2) == 0 {
                    next += 1;
                    let name = format!("soak{next}");
                    let dev = registry
                        .init(test_device(), &name, GroupId(next))
                        .unwrap()
                        .register()
                        .unwrap();
                    live.lock()
                        .unwrap()
                        .insert(name.clone(), dir.join(format!("{name}.sock")));
                    devices.push(dev);
                    counts.created.fetch_add(1, Ordering::Relaxed);
                } else if !devices.is_empty() {
                    let dev = devices.remove(rng.below(devices.len() as u64) as usize);
                    live.lock().unwrap().remove(dev.name());
                    // Returns once its client (if any) has gone: the REQ
                    // interrupt, then the grace period.
                    drop(dev.unregister());
                    counts.removed.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(rng.below(40)));
            }
            devices
        })
    };

    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (live, counts) = (live.clone(), counts.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x1234_5678 + i as u64 * 7919);
                while Instant::now() < deadline {
                    let path = {
                        let l = live.lock().unwrap();
                        if l.is_empty() {
                            None
                        } else {
                            l.values().nth(rng.below(l.len() as u64) as usize).cloned()
                        }
                    };
                    let Some(path) = path else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    if rng.below(2) == 0 {
                        raw_session(&path, &mut rng, &counts);
                    } else {
                        client_session(&path, &mut rng, &counts);
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let devices = manager.join().unwrap();
    // Every device left is removable.
    for d in devices {
        drop(d.unregister());
        counts.removed.fetch_add(1, Ordering::Relaxed);
    }
    assert_eq!(server.connections(), 0);
    assert!(server.devices().is_empty());
    server.shutdown();
    drop(registry);
    drop(dir);

    wait_until("fds back to the baseline", || open_fds() == fds0);
    wait_until("threads back to the baseline", || threads() == threads0);
    assert_eq!(soak_mappings(), 0, "client memory still mapped");
    let rss1 = rss_kib();
    eprintln!(
        "soak {secs}s: {} sessions ({} refused: busy or removed), {} round trips, {} DMA maps, \
         {} device DMAs, {} devices created / {} removed; fds {fds0}->{}, threads \
         {threads0}->{}, RSS {rss0} KiB -> {rss1} KiB",
        counts.sessions.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
        counts.round_trips.load(Ordering::Relaxed),
        counts.maps.load(Ordering::Relaxed),
        counts.dma.load(Ordering::Relaxed),
        counts.created.load(Ordering::Relaxed),
        counts.removed.load(Ordering::Relaxed),
        open_fds(),
        threads(),
    );
    assert!(counts.sessions.load(Ordering::Relaxed) > 0);
    assert_eq!(
        counts.created.load(Ordering::Relaxed),
        counts.removed.load(Ordering::Relaxed)
    );
    // Freed memory may stay with the allocator; growth must stay small.
    assert!(
        rss1 < rss0 + 64 * 1024,
        "RSS grew from {rss0} KiB to {rss1} KiB"
    );
}
