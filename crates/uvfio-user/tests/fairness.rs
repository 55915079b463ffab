//! Fairness: clients flooding pipelined requests on their own devices do
//! not stop another device's client from making progress. The test
//! asserts progress (every round trip of the victim completes while the
//! floods demonstrably run), never time; it prints the victim's slowdown
//! (mean round trip under flood / alone) for the record.

mod common;
#[path = "support/raw.rs"]
mod raw;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use raw::*;
use uvfio_core::{GroupId, RegisteredDevice, Registry};
use uvfio_user::proto::{self, Request};
use uvfio_user::{Client, Server, ServerConfig};

const ROUND_TRIPS: usize = 2000;

fn victim_round_trips(c: &Client, n: usize) -> Duration {
    let start = Instant::now();
    let mut id = [0u8; 2];
    for _ in 0..n {
        c.region_read(CONFIG, 0, &mut id).unwrap();
        assert_eq!(u16::from_le_bytes(id), VENDOR_ID);
    }
    start.elapsed()
}

/// Posted writes (NO_REPLY) as fast as the socket takes them.
fn flood_posted_writes(path: PathBuf, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let mut r = Raw::connect(&path);
    r.negotiate();
    let data = [0u8; 4];
    let req = Request::RegionWrite(proto::RegionWrite {
        offset: REG_SCRATCH,
        region: BAR0,
        data: &data,
    });
    let mut batch = Vec::new();
    for _ in 0..64 {
        batch.extend(r.encode(&req, true));
    }
    while !stop.load(Ordering::Relaxed) {
        if r.try_send(&batch, &[]).is_err() {
            return;
        }
        sent.fetch_add(64, Ordering::Relaxed);
    }
}

/// Requests whose replies are never read; reconnects when the server
/// gives up on it.
fn flood_unread_requests(path: PathBuf, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(s) = std::os::unix::net::UnixStream::connect(&path) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let mut r = Raw { s, id: 0 };
        // The device may still be held by the previous connection.
        let m = r.request(&Raw::version(), &[]);
        if errno_of(&m).is_some() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let b = r.encode(&region_read(BAR0, 0, 0x1000), false);
        while !stop.load(Ordering::Relaxed) {
            if r.try_send(&b, &[]).is_err() {
                break;
            }
            sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn register(reg: &Registry, name: &str, group: u32) -> RegisteredDevice<TestDevice> {
    reg.init(test_device(), name, GroupId(group))
        .unwrap()
        .register()
        .unwrap()
}

fn path_of(server: &Server, name: &str) -> PathBuf {
    server.socket_path(name).unwrap()
}

#[test]
fn fairness_flooding_clients_do_not_stop_another_devices_client() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::default();
    let server = Server::new(
        reg.clone(),
        ServerConfig::new(dir.path()).io_timeout(Duration::from_millis(200)),
    )
    .unwrap();
    let _victim_dev = register(&reg, "victim", 1);
    let _flood_a = register(&reg, "flood-a", 2);
    let _flood_b = register(&reg, "flood-b", 3);
    let victim = Client::connect(path_of(&server, "victim")).unwrap();

    // Alone (after a warm-up).
    victim_round_trips(&victim, 200);
    let alone = victim_round_trips(&victim, ROUND_TRIPS);

    let stop = Arc::new(AtomicBool::new(false));
    let posted = Arc::new(AtomicU64::new(0));
    let unread = Arc::new(AtomicU64::new(0));
    let floods = [
        {
            let (p, s, n) = (path_of(&server, "flood-a"), stop.clone(), posted.clone());
            std::thread::spawn(move || flood_posted_writes(p, s, n))
        },
        {
            let (p, s, n) = (path_of(&server, "flood-b"), stop.clone(), unread.clone());
            std::thread::spawn(move || flood_unread_requests(p, s, n))
        },
    ];
    wait_until("the floods to run", || {
        posted.load(Ordering::Relaxed) > 10_000 && unread.load(Ordering::Relaxed) > 100
    });
    let posted_before = posted.load(Ordering::Relaxed);
    let loaded = victim_round_trips(&victim, ROUND_TRIPS);
    let posted_during = posted.load(Ordering::Relaxed) - posted_before;
    stop.store(true, Ordering::Relaxed);
    for f in floods {
        f.join().unwrap();
    }
    // Progress on both sides: every round trip completed while the flood
    // kept going.
    assert!(
        posted_during > 0,
        "the flood stalled during the measurement"
    );
    let factor = loaded.as_secs_f64() / alone.as_secs_f64().max(1e-9);
    eprintln!(
        "fairness: {ROUND_TRIPS} victim round trips: {:.1} us each alone, {:.1} us each \
         under flood ({posted_during} posted writes flooded meanwhile): slowdown {factor:.2}x",
        alone.as_secs_f64() * 1e6 / ROUND_TRIPS as f64,
        loaded.as_secs_f64() * 1e6 / ROUND_TRIPS as f64,
    );
    drop(victim);
}
