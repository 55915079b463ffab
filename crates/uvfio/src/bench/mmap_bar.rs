//! Client access through an mmapped BAR: what a vfio-user client does with
//! a sparse-mmap area, against the same accesses to plain memory.

use std::hint::black_box;

use uvfio_core::MmapRegion;
use uvfio_drivers::dma;

use super::socket_paths::DmaServer;
use super::{median_pair, Measurement, Options, PageAligned, Row};

/// Bytes of the BAR the accesses walk (half the engine's default RAM BAR).
const WINDOW: usize = 32 * 1024;

/// 4-byte and 4 KiB reads and writes by a client through its mapping of a
/// dma engine's RAM BAR, obtained the way any client gets one
/// (`REGION_INFO` → sparse-mmap area → the fd the server sent → `mmap`,
/// all through [`uvfio_user::Client`]), vs the same accesses, through the same
/// accessors, to plain private memory ([`MmapRegion::anonymous`]): the
/// two sides differ only in the memory. 4 B: one aligned volatile load or
/// store (`read_u32`/`write_u32`, a register); 4 KiB: a copy
/// (`read_at`/`write_at`). Both walk the same offsets. Ratio = plain /
/// mapped (goal ≥ 0.95: once mapped, a BAR is memory).
pub fn rows(opts: &Options) -> anyhow::Result<Vec<Row>> {
    let (server, client) = DmaServer::start(uvfio_user::Wait::Block)?;
    let region = client.region_info(u32::from(dma::DMA_RAM_BAR))?;
    anyhow::ensure!(
        !region.sparse_areas().is_empty(),
        "the RAM BAR offers no mmap area"
    );
    let view = region.map_area(0)?;
    anyhow::ensure!(view.len() >= WINDOW, "the mmap area is too small");
    let plain = MmapRegion::anonymous(WINDOW)?;
    // One CPU for both sides, so they are not measured on different cores.
    super::socket_paths::pin(Some(0));
    let iters = opts.iterations.saturating_mul(50).max(1000);
    let mut rows = Vec::new();

    let reg_at = |i: u32| ((i as usize * 64) % WINDOW) as u64;
    let (rd, base_rd) = median_pair(
        15,
        iters,
        |n| {
            for i in 0..n {
                black_box(view.read_u32(black_box(reg_at(i))).expect("in bounds"));
            }
        },
        |n| {
            for i in 0..n {
                black_box(plain.read_u32(black_box(reg_at(i))).expect("in bounds"));
            }
        },
    );
    let (wr, base_wr) = median_pair(
        15,
        iters,
        |n| {
            for i in 0..n {
                view.write_u32(black_box(reg_at(i)), black_box(0x5a5a_5a5a))
                    .expect("in bounds");
            }
        },
        |n| {
            for i in 0..n {
                plain
                    .write_u32(black_box(reg_at(i)), black_box(0x5a5a_5a5a))
                    .expect("in bounds");
            }
        },
    );
    push(&mut rows, "read 4 B", rd, base_rd);
    push(&mut rows, "write 4 B", wr, base_wr);

    const BULK: usize = 4096;
    let it = (iters / 20).max(100);
    let bulk_at = |i: u32| ((i as usize * 64) % (WINDOW - BULK)) as u64;
    // Page-aligned on both sides: two heap buffers (aligned however the
    // allocator placed them) swung this ratio 0.77–1.08 between builds.
    let mut buf = PageAligned::new(BULK);
    let mut buf2 = PageAligned::new(BULK);
    let (rd, base_rd) = median_pair(
        15,
        it,
        |n| {
            for i in 0..n {
                view.read_at(black_box(bulk_at(i)), buf.get())
                    .expect("in bounds");
                black_box(buf.get());
            }
        },
        |n| {
            for i in 0..n {
                plain
                    .read_at(black_box(bulk_at(i)), buf2.get())
                    .expect("in bounds");
                black_box(buf2.get());
            }
        },
    );
    let data = vec![0x5au8; BULK];
    let (wr, base_wr) = median_pair(
        15,
        it,
        |n| {
            for i in 0..n {
                view.write_at(black_box(bulk_at(i)), black_box(&data))
                    .expect("in bounds");
            }
        },
        |n| {
            for i in 0..n {
                plain
                    .write_at(black_box(bulk_at(i)), black_box(&data))
                    .expect("in bounds");
            }
        },
    );
    push(&mut rows, "read 4 KiB", rd, base_rd);
    push(&mut rows, "write 4 KiB", wr, base_wr);
    super::socket_paths::pin(None);
    // What the client wrote through its mapping is what the device serves.
    let mut seen = [0u8; 4];
    client.region_read(u32::from(dma::DMA_RAM_BAR), 0, &mut seen)?;
    anyhow::ensure!(seen == [0x5a; 4], "a write through the mapping was lost");
    drop(view);
    server.stop([client]);
    Ok(rows)
}

fn push(rows: &mut Vec<Row>, what: &str, ours: Measurement, base: Measurement) {
    let name = format!("mmap'd BAR {what} vs plain memory");
    rows.push(Row::speed(name, ours, base, 0.95, ">= 0.95"));
}
