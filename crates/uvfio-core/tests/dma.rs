//! The type1v2 DMA rules, device-side access, dirty logging, and a model
//! check of random map/unmap sequences.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

use proptest::prelude::*;
use uvfio_core::*;

const PG: u64 = 4096;

fn space() -> Arc<DmaSpace> {
    DmaSpace::new(DmaConfig::default())
}

fn mem(size: u64) -> Arc<dyn DmaBacking> {
    Arc::new(SharedMemory::new("dma-test", size).unwrap())
}

const RW: DmaPerm = DmaPerm::READ.union(DmaPerm::WRITE);

#[test]
fn map_rejects_zero_unaligned_and_wrapping_ranges() {
    let s = space();
    let m = mem(4 * PG);
    assert_eq!(s.map(0, 0, RW, m.clone(), 0).unwrap_err(), Errno::INVAL);
    assert_eq!(s.map(1, PG, RW, m.clone(), 0).unwrap_err(), Errno::INVAL);
    assert_eq!(
        s.map(0, PG + 1, RW, m.clone(), 0).unwrap_err(),
        Errno::INVAL
    );
    assert_eq!(
        s.map(u64::MAX - PG + 1, 2 * PG, RW, m.clone(), 0)
            .unwrap_err(),
        Errno::INVAL
    );
    assert_eq!(
        s.map(0, PG, DmaPerm::empty(), m.clone(), 0).unwrap_err(),
        Errno::INVAL
    );
    // Backing too short.
    assert_eq!(
        s.map(0, 8 * PG, RW, m.clone(), 0).unwrap_err(),
        Errno::INVAL
    );
    // The last page of the IOVA space is mappable.
    s.map(u64::MAX - PG + 1, PG, RW, m, 0).unwrap();
}

#[test]
fn overlapping_map_is_eexist() {
    let s = space();
    let m = mem(16 * PG);
    s.map(4 * PG, 2 * PG, RW, m.clone(), 0).unwrap();
    for (iova, size) in [
        (4 * PG, PG),
        (3 * PG, 2 * PG),
        (5 * PG, 2 * PG),
        (0, 16 * PG),
    ] {
        assert_eq!(
            s.map(iova, size, RW, m.clone(), 0).unwrap_err(),
            Errno::EXIST
        );
    }
    s.map(6 * PG, PG, RW, m.clone(), 0).unwrap();
    s.map(3 * PG, PG, RW, m, 0).unwrap();
}

#[test]
fn unmap_returns_bytes_never_bisects_and_empty_is_zero() {
    let s = space();
    let m = mem(8 * PG);
    s.map(0, 2 * PG, RW, m.clone(), 0).unwrap();
    s.map(2 * PG, 2 * PG, RW, m.clone(), 0).unwrap();
    assert_eq!(s.unmap(PG, 2 * PG).unwrap_err(), Errno::INVAL);
    assert_eq!(s.unmap(0, PG).unwrap_err(), Errno::INVAL);
    assert_eq!(s.unmap(100 * PG, PG).unwrap(), 0);
    assert_eq!(s.unmap(0, 0).unwrap_err(), Errno::INVAL);
    assert_eq!(s.unmap(0, 4 * PG).unwrap(), 4 * PG);
    assert!(s.is_empty());
}

#[test]
fn entry_limit_is_enospc() {
    let s = DmaSpace::new(DmaConfig {
        entry_limit: 2,
        ..Default::default()
    });
    let m = mem(PG);
    s.map(0, PG, RW, m.clone(), 0).unwrap();
    s.map(PG, PG, RW, m.clone(), 0).unwrap();
    assert_eq!(s.map(2 * PG, PG, RW, m, 0).unwrap_err(), Errno::NOSPC);
}

#[test]
fn device_access_spans_adjacent_mappings_and_checks_rights() {
    let s = space();
    let a = Arc::new(SharedMemory::new("a", PG).unwrap());
    let b = Arc::new(SharedMemory::new("b", PG).unwrap());
    s.map(0, PG, RW, a.clone(), 0).unwrap();
    s.map(PG, PG, DmaPerm::READ, b.clone(), 0).unwrap();
    let dma = s.handle();
    dma.write(PG - 2, b"xy").unwrap();
    let mut out = [0u8; 2];
    a.read_at(PG - 2, &mut out).unwrap();
    assert_eq!(&out, b"xy");
    b.write_at(0, b"zw").unwrap();
    let mut span = [0u8; 4];
    dma.read(PG - 2, &mut span).unwrap();
    assert_eq!(&span, b"xyzw");
    // Read-only mapping: the device may not write it.
    assert_eq!(dma.write(PG, b"q").unwrap_err(), Errno::PERM);
    // Nothing mapped past 2 pages.
    assert_eq!(dma.read(2 * PG - 1, &mut span).unwrap_err(), Errno::FAULT);
    assert_eq!(dma.read(u64::MAX, &mut span).unwrap_err(), Errno::FAULT);
}

#[test]
fn dirty_logging_reports_written_pages_once() {
    let s = space();
    let m = mem(8 * PG);
    s.map(0, 8 * PG, RW, m, 0).unwrap();
    let dma = s.handle();
    dma.write(0, b"before").unwrap(); // not logged
    s.start_dirty_logging(PG).unwrap();
    assert_eq!(s.start_dirty_logging(PG).unwrap_err(), Errno::BUSY);
    dma.write(PG + 10, b"a").unwrap();
    dma.write(5 * PG - 1, b"bc").unwrap(); // touches pages 4 and 5
    assert_eq!(s.report_dirty(0, 8 * PG, PG).unwrap(), vec![0b11_0010]);
    // Reported and cleared.
    assert_eq!(s.report_dirty(0, 8 * PG, PG).unwrap(), vec![0]);
    assert_eq!(s.report_dirty(0, 8 * PG, 2 * PG).unwrap_err(), Errno::INVAL);
    s.stop_dirty_logging().unwrap();
    assert_eq!(s.stop_dirty_logging().unwrap_err(), Errno::INVAL);
}

#[test]
fn container_requires_iommu_and_last_group_release_unmaps() {
    let reg = Registry::default();
    struct Nop;
    impl DeviceOps for Nop {
        fn info(&self) -> DeviceInfo {
            DeviceInfo::default()
        }
    }
    let d = reg.init(Nop, "n", GroupId(1)).unwrap().register().unwrap();
    let c = Container::new();
    assert!(c.check_extension(VFIO_TYPE1V2_IOMMU));
    assert!(!c.check_extension(VFIO_TYPE1_IOMMU));
    assert_eq!(c.map_dma(0, PG, RW, mem(PG), 0).unwrap_err(), Errno::INVAL);
    let g = reg.open_group(GroupId(1)).unwrap();
    g.set_container(&c).unwrap();
    c.set_iommu(IommuType::Type1v2).unwrap();
    c.map_dma(0, PG, RW, mem(PG), 0).unwrap();
    assert_eq!(c.iommu_info().unwrap().iova_pgsizes, PG);
    drop(g);
    assert!(c.dma_space().is_empty());
    assert_eq!(c.iommu(), None);
    d.unregister();
}

#[derive(Debug, Clone)]
enum Op {
    Map(u64, u64),
    Unmap(u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    // A small IOVA window (32 pages) so that overlaps are common.
    (any::<bool>(), 0u64..32, 0u64..6).prop_map(|(map, p, n)| {
        if map {
            Op::Map(p * PG, n * PG)
        } else {
            Op::Unmap(p * PG, n * PG)
        }
    })
}

proptest! {
    /// Random map/unmap sequences agree with a page-array model.
    #[test]
    fn map_unmap_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let s = space();
        let dma = s.handle();
        let shm = Arc::new(SharedMemory::new("dma-model", 8 * PG).unwrap());
        // Each backing page carries its index, so reads show the translation.
        for k in 0..8u64 {
            shm.write_at(k * PG + 8, &k.to_le_bytes()).unwrap();
        }
        let m: Arc<dyn DmaBacking> = shm;
        // model: which mapping (by start) covers each page.
        let mut model: Vec<Option<(u64, u64)>> = vec![None; 40];
        for op in ops {
            match op {
                Op::Map(iova, size) => {
                    let got = s.map(iova, size, RW, m.clone(), 0);
                    let (p, n) = ((iova / PG) as usize, (size / PG) as usize);
                    let want = if size == 0 {
                        Err(Errno::INVAL)
                    } else if model[p..p + n].iter().any(Option::is_some) {
                        Err(Errno::EXIST)
                    } else {
                        for slot in &mut model[p..p + n] {
                            *slot = Some((iova, size));
                        }
                        Ok(())
                    };
                    prop_assert_eq!(got, want);
                }
                Op::Unmap(iova, size) => {
                    let got = s.unmap(iova, size);
                    let (p, n) = ((iova / PG) as usize, (size / PG) as usize);
                    let want = if size == 0 {
                        Err(Errno::INVAL)
                    } else {
                        let end = iova + size;
                        let bisects = model[p..p + n].iter().flatten().any(|&(mi, ms)| mi < iova || mi + ms > end);
                        if bisects {
                            Err(Errno::INVAL)
                        } else {
                            let bytes = model[p..p + n].iter().filter(|x| x.is_some()).count() as u64 * PG;
                            for slot in &mut model[p..p + n] {
                                *slot = None;
                            }
                            Ok(bytes)
                        }
                    };
                    prop_assert_eq!(got, want);
                }
            }
            let mapped: u64 = s.mappings().iter().map(|x| x.size).sum();
            prop_assert_eq!(mapped, model.iter().filter(|x| x.is_some()).count() as u64 * PG);
            // The device sees exactly the model, through the same thread's
            // lookaside of earlier accesses: a stale translation would read
            // another page's tag or succeed on an unmapped page.
            for (p, slot) in model.iter().enumerate() {
                let mut tag = [0u8; 8];
                let got = dma.read(p as u64 * PG + 8, &mut tag);
                match slot {
                    None => prop_assert_eq!(got, Err(Errno::FAULT), "page {}", p),
                    Some((mi, _)) => {
                        prop_assert_eq!(got, Ok(()));
                        prop_assert_eq!(u64::from_le_bytes(tag), p as u64 - mi / PG, "page {}", p);
                    }
                }
            }
        }
    }

    /// Device writes at random places are reported exactly by the dirty log.
    #[test]
    fn dirty_bitmap_matches_model(writes in proptest::collection::vec((0u64..16 * PG, 1usize..9000), 0..20)) {
        let s = space();
        s.map(0, 8 * PG, RW, mem(8 * PG), 0).unwrap();
        s.map(10 * PG, 6 * PG, RW, mem(6 * PG), 0).unwrap();
        s.start_dirty_logging(PG).unwrap();
        let dma = s.handle();
        let mut model = [false; 16];
        for (iova, len) in writes {
            let data = vec![1u8; len];
            if dma.write(iova, &data).is_ok() {
                for p in iova / PG..=(iova + len as u64 - 1) / PG {
                    model[p as usize] = true;
                }
            }
        }
        let bits = s.report_dirty(0, 16 * PG, PG).unwrap()[0];
        for (p, dirty) in model.iter().enumerate() {
            prop_assert_eq!(bits >> p & 1 == 1, *dirty, "page {}", p);
        }
    }
}

/// An unmap racing a device that writes as fast as it can: when unmap
/// returns, no write is still in flight (the page is not torn and does not
/// change afterwards), and every later write faults.
#[test]
fn no_device_write_lands_after_unmap_returns() {
    let s = space();
    let shm = Arc::new(SharedMemory::new("dma-race", 2 * PG).unwrap());
    for round in 0..300u32 {
        s.map(0, 2 * PG, RW, shm.clone(), 0).unwrap();
        let dma = s.handle();
        let go = Arc::new(Barrier::new(2));
        let unmapped = Arc::new(AtomicBool::new(false));
        let writer = {
            let (go, unmapped) = (go.clone(), unmapped.clone());
            std::thread::spawn(move || {
                let mut k = 0u8;
                go.wait();
                loop {
                    k = k.wrapping_add(1) | 1;
                    let after = unmapped.load(Ordering::SeqCst);
                    match dma.write(PG, &[k; PG as usize]) {
                        Err(e) => return Ok(e),
                        Ok(()) if after => return Err("a write started after unmap succeeded"),
                        Ok(()) => {}
                    }
                }
            })
        };
        go.wait();
        // Let the writer get going (varying how far, round by round).
        for _ in 0..(round % 7) * 200 {
            std::hint::spin_loop();
        }
        s.unmap(0, 2 * PG).unwrap();
        let mut at_return = vec![0u8; PG as usize];
        shm.read_at(PG, &mut at_return).unwrap();
        unmapped.store(true, Ordering::SeqCst);
        assert_eq!(writer.join().unwrap(), Ok(Errno::FAULT), "round {round}");
        let mut after = vec![0u8; PG as usize];
        shm.read_at(PG, &mut after).unwrap();
        assert!(
            at_return.iter().all(|&b| b == at_return[0]),
            "round {round}: a write was still running when unmap returned"
        );
        assert_eq!(
            at_return, after,
            "round {round}: memory changed after unmap returned"
        );
        shm.write_at(PG, &[0u8; PG as usize]).unwrap();
    }
}

/// Dirty logging switched on while a device writes: every write that
/// starts after `start_dirty_logging` returned is in the report.
#[test]
fn writes_after_logging_starts_are_always_logged() {
    for _ in 0..300 {
        let s = space();
        s.map(0, 4 * PG, RW, mem(4 * PG), 0).unwrap();
        let dma = s.handle();
        let started = Arc::new(AtomicBool::new(false));
        let writer = {
            let started = started.clone();
            std::thread::spawn(move || loop {
                let after_start = started.load(Ordering::SeqCst);
                dma.write(2 * PG + 16, &[7u8; 64]).unwrap();
                if after_start {
                    return;
                }
            })
        };
        s.start_dirty_logging(PG).unwrap();
        started.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        let bits = s.report_dirty(0, 4 * PG, PG).unwrap()[0];
        assert_eq!(bits, 0b0100, "the write after start must be logged");
    }
}

/// The same device handle used from many short-lived threads, with the
/// mapping replaced in between: every thread sees the current mapping.
#[test]
fn device_threads_see_remaps() {
    let s = space();
    let a = Arc::new(SharedMemory::new("dma-a", PG).unwrap());
    let b = Arc::new(SharedMemory::new("dma-b", PG).unwrap());
    a.write_at(0, b"AAAA").unwrap();
    b.write_at(0, b"BBBB").unwrap();
    let dma = s.handle();
    for i in 0..50 {
        let (backing, want) = if i % 2 == 0 {
            (&a, b"AAAA")
        } else {
            (&b, b"BBBB")
        };
        s.map(0, PG, RW, backing.clone(), 0).unwrap();
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let dma = dma.clone();
                std::thread::spawn(move || {
                    let mut got = [0u8; 4];
                    for _ in 0..100 {
                        dma.read(0, &mut got).unwrap();
                    }
                    got
                })
            })
            .collect();
        let mut got = [0u8; 4];
        dma.read(0, &mut got).unwrap();
        assert_eq!(&got, want);
        for t in threads {
            assert_eq!(&t.join().unwrap(), want);
        }
        s.unmap(0, PG).unwrap();
        assert_eq!(dma.read(0, &mut got), Err(Errno::FAULT));
    }
}
