//! Fuzzing the migration stream a destination device accepts. Not a
//! stable API: shared by `fuzz/fuzz_targets/mig_stream.rs` and this
//! crate's `tests/mig_stream_fuzz.rs`.
//!
//! The stream is hostile input: it arrives from the client
//! (MIG_DATA_WRITE), is buffered by the PCI layer, and is decoded at
//! RESUMING → STOP by [`uvfio_pci::migration`] and then by the driver's
//! own section decoder (`load_state`). One input is:
//!
//! ```text
//! u8  device: 0 mtty (one port), 1 mtty (two ports), 2 gpio, 3 dma
//!     (16 KiB RAM BAR); other values wrap
//! u8  write size: the stream goes to MIG_DATA_WRITE in pieces of
//!     1 + 37 × this many bytes
//! ..  the stream
//! ```
//!
//! Checked for every input, besides "no panic":
//! - a stream the destination refuses leaves it in ERROR, with config
//!   space and every readable BAR exactly as before, and a reset (or,
//!   where the device has none, the last close) brings it back to
//!   RUNNING;
//! - a stream it accepts leaves it RUNNING and readable, and its state
//!   survives a second migration unchanged: the stream saved from it,
//!   loaded into a fresh twin, saves again to the same bytes (what one
//!   side encodes, the other decodes, and nothing is lost or invented on
//!   the way).

use uvfio_core::{GroupId, MigState, OpenDevice, RegionFlags, Registry};

use crate::{dma, gpio, mtty};

/// The kinds of device an input can pick (its first byte, wrapping).
pub const DEVICES: u8 = 4;

/// A device of `kind` (see the module docs) named `name` in `group`, its
/// registration handle (kept so that it stays registered), and an open
/// handle.
fn device(
    registry: &Registry,
    kind: u8,
    name: &str,
    group: u32,
) -> (Box<dyn std::any::Any>, OpenDevice) {
    let g = GroupId(group);
    let registered: Box<dyn std::any::Any> = match kind % DEVICES {
        k @ (0 | 1) => {
            let ty = if k == 0 {
                mtty::MttyType::Single
            } else {
                mtty::MttyType::Dual
            };
            let options = mtty::MttyOptions {
                ty,
                pool: mtty::MttyPool::default(),
            };
            Box::new(mtty::create(registry, name, g, &options).expect("mtty"))
        }
        2 => {
            Box::new(gpio::create(registry, name, g, &gpio::GpioOptions::default()).expect("gpio"))
        }
        _ => {
            let options = dma::DmaOptions {
                ram_size: 16 * 1024,
                ..dma::DmaOptions::default()
            };
            Box::new(dma::create(registry, name, g, &options).expect("dma"))
        }
    };
    let open = registry.open_device(g, name).expect("open");
    (registered, open)
}

/// Every readable region's bytes: what a refused stream must not change.
fn snapshot(dev: &OpenDevice) -> Vec<Vec<u8>> {
    (0..dev.info().num_regions)
        .filter_map(|i| {
            let info = dev.region_info(i).ok()?;
            if !info.flags.contains(RegionFlags::READ) || info.size == 0 {
                return None;
            }
            let mut b = vec![0u8; usize::try_from(info.size).ok()?];
            dev.read(i, 0, &mut b).ok()?;
            Some(b)
        })
        .collect()
}

/// Appends what the saving stream has now to `out`: up to ENOMSG in
/// PRE_COPY, to the end in STOP_COPY.
fn read_stream(dev: &OpenDevice, out: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    loop {
        match dev.mig_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e == uvfio_core::Errno::NOMSG => return,
            Err(e) => panic!("mig_read: {e}"),
        }
    }
}

/// RUNNING → STOP_COPY, the whole stream, → STOP → RUNNING.
fn save(dev: &OpenDevice) -> Vec<u8> {
    dev.set_mig_state(MigState::StopCopy).expect("STOP_COPY");
    let mut out = Vec::new();
    read_stream(dev, &mut out);
    dev.set_mig_state(MigState::Running).expect("RUNNING");
    out
}

/// Loads `stream` in pieces of `piece` bytes; the result of RESUMING →
/// RUNNING (a write refused for size fails it too).
fn load(dev: &OpenDevice, stream: &[u8], piece: usize) -> bool {
    dev.set_mig_state(MigState::Resuming).expect("RESUMING");
    for chunk in stream.chunks(piece.max(1)) {
        if dev.mig_write(chunk).is_err() {
            break;
        }
    }
    dev.set_mig_state(MigState::Running).is_ok()
}

/// Runs one input (see the module docs); panics when a check fails.
/// Returns whether the destination accepted the stream.
pub fn run(data: &[u8]) -> bool {
    let [kind, piece, stream @ ..] = data else {
        return false;
    };
    let piece = 1 + 37 * usize::from(*piece);
    let registry = Registry::default();
    let (_dst, dst) = device(&registry, *kind, "dst", 1);
    let before = snapshot(&dst);
    if !load(&dst, stream, piece) {
        assert_eq!(dst.mig_state(), Ok(MigState::Error), "refused: ERROR");
        assert_eq!(snapshot(&dst), before, "refused: nothing applied");
        // Out of ERROR: a reset where the device has one, else the last
        // close (as in the kernel).
        let dst = if dst.reset().is_ok() {
            dst
        } else {
            drop(dst);
            registry.open_device(GroupId(1), "dst").expect("reopen")
        };
        assert_eq!(dst.mig_state(), Ok(MigState::Running));
        return false;
    }
    assert_eq!(dst.mig_state(), Ok(MigState::Running));
    snapshot(&dst);
    let again = save(&dst);
    let (_twin, twin) = device(&registry, *kind, "twin", 2);
    assert!(
        load(&twin, &again, 4096),
        "a stream saved from an accepted one is accepted"
    );
    assert_eq!(save(&twin), again, "state changes across a migration");
    true
}

/// Valid inputs, one per device kind, with state worth carrying, and one
/// dma stream saved through PRE_COPY, whose RAM BAR changed after it was
/// pre-copied (so it has a RAM_DELTA section): the fuzzer's starting
/// points.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = (0..DEVICES)
        .map(|kind| {
            let registry = Registry::default();
            let (_src, src) = device(&registry, kind, "src", 1);
            // Config space: memory + bus master; BAR0's first registers
            // and, for the dma engine, its RAM BAR.
            let cmd = 0x6u16.to_le_bytes();
            let _ = src.write(7, 4, &cmd);
            for off in (0..32).step_by(4) {
                let _ = src.write(0, off, &(0x0101_0101u32 * (off as u32 + 1)).to_le_bytes());
            }
            let _ = src.write(2, 0x100, b"ram bar contents");
            let mut input = vec![kind, 3];
            input.extend_from_slice(&save(&src));
            input
        })
        .collect();
    let registry = Registry::default();
    let (_src, src) = device(&registry, 3, "src", 1);
    let mut input = vec![3, 0];
    src.set_mig_state(MigState::PreCopy).expect("PRE_COPY");
    read_stream(&src, &mut input);
    let _ = src.write(2, 0x2000, b"changed after pre-copy");
    src.set_mig_state(MigState::StopCopy).expect("STOP_COPY");
    read_stream(&src, &mut input);
    seeds.push(input);
    seeds
}
