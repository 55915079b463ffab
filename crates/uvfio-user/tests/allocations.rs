//! The message path allocates nothing per message: a counting global
//! allocator watches steady-state region reads and writes (client and
//! server, both in this process) over a real socket.

mod common;

use std::alloc::System;

use common::*;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use uvfio_user::Client;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn region_round_trips_do_not_allocate() {
    let Served {
        server,
        dev,
        dir: _dir,
        ..
    } = serve_test_device("dev0");
    let client = Client::connect(server.socket_path("dev0").unwrap()).unwrap();
    let mut word = [0u8; 4];
    let mut page = vec![0u8; 4096];
    let round = |word: &mut [u8; 4], page: &mut [u8]| {
        client
            .region_write(BAR0, REG_SCRATCH, &[1, 2, 3, 4])
            .unwrap();
        client.region_read(BAR0, REG_SCRATCH, word).unwrap();
        client.region_read(BAR2, 0, page).unwrap();
        client.region_write(BAR2, 0, &page[..64]).unwrap();
    };
    // Warm up: buffers grow to their working size once.
    for _ in 0..200 {
        round(&mut word, &mut page);
    }
    let region = Region::new(GLOBAL);
    let n = 2000u64;
    for _ in 0..n {
        round(&mut word, &mut page);
    }
    let stats = region.change();
    let allocs = (stats.allocations + stats.reallocations) as u64;
    assert_eq!(word, [1, 2, 3, 4]);
    assert_eq!(
        allocs,
        0,
        "{allocs} allocations in {} round trips ({:.2} per round trip)",
        4 * n,
        allocs as f64 / (4 * n) as f64
    );
    client.shutdown();
    drop(client);
    drop(dev.unregister());
    server.shutdown();
}
