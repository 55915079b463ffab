//! Concurrent open/close against register/unregister: no deadlock, no op
//! after unregister returned, every open_device paired with one close_device.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use uvfio_core::*;

#[derive(Default)]
struct Shared {
    /// Highest round whose unregister has returned.
    retired: AtomicU32,
    /// Ops called on a retired round.
    violations: AtomicU32,
    opens: AtomicU64,
    closes: AtomicU64,
    reads: AtomicU64,
}

struct Dev {
    round: u32,
    shared: Arc<Shared>,
    open: AtomicBool,
}

impl Dev {
    fn check(&self) {
        if self.round <= self.shared.retired.load(Ordering::SeqCst) {
            self.shared.violations.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl DeviceOps for Dev {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: DeviceFlags::empty(),
            num_regions: 1,
            num_irqs: 0,
        }
    }
    fn open_device(&self, _: &OpenContext) -> Result<()> {
        self.check();
        // Edges never interleave: open_device only on a closed device.
        assert!(!self.open.swap(true, Ordering::SeqCst));
        self.shared.opens.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn close_device(&self, _: CloseReason) {
        self.check();
        assert!(self.open.swap(false, Ordering::SeqCst));
        self.shared.closes.fetch_add(1, Ordering::SeqCst);
    }
    fn region_info(&self, index: u32) -> Result<RegionInfo> {
        Ok(RegionInfo::rw(index, 8))
    }
    fn read(&self, _: u32, _: u64, buf: &mut [u8]) -> Result<()> {
        self.check();
        buf.fill(0xab);
        self.shared.reads.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn request(&self, _: u32) {
        self.check();
    }
}

#[test]
fn open_close_races_register_unregister_for_10k_rounds() {
    const ROUNDS: u32 = 10_000;
    const OPENERS: usize = 3;
    let reg = Registry::new(RegistryConfig {
        request_interval: Duration::from_millis(1),
    });
    let shared = Arc::new(Shared::default());
    let group_id = GroupId(77);
    // Round 0 creates the group so the openers can attach to it.
    let first = reg
        .init(
            Dev {
                round: 1,
                shared: shared.clone(),
                open: AtomicBool::new(false),
            },
            "s",
            group_id,
        )
        .unwrap()
        .register()
        .unwrap();
    let container = Container::new();
    let group = Arc::new(reg.open_group(group_id).unwrap());
    group.set_container(&container).unwrap();
    container.set_iommu(IommuType::Type1v2).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let openers: Vec<_> = (0..OPENERS)
        .map(|_| {
            let group = group.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let mut ok = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    match group.get_device("s") {
                        Ok(h) => {
                            let mut b = [0u8; 4];
                            h.read(0, 0, &mut b).unwrap();
                            assert_eq!(b, [0xab; 4]);
                            ok += 1;
                        }
                        Err(e) => {
                            assert!([Errno::NODEV, Errno::PERM].contains(&e), "unexpected {e:?}")
                        }
                    }
                }
                ok
            })
        })
        .collect();

    let mut dev = first;
    for round in 1..=ROUNDS {
        let back = dev.unregister();
        assert_eq!(back.round, round);
        assert!(!back.open.load(Ordering::SeqCst), "released before return");
        shared.retired.store(round, Ordering::SeqCst);
        if round == ROUNDS {
            break;
        }
        dev = reg
            .init(
                Dev {
                    round: round + 1,
                    shared: shared.clone(),
                    open: AtomicBool::new(false),
                },
                "s",
                group_id,
            )
            .unwrap()
            .register()
            .unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let opened: u64 = openers.into_iter().map(|t| t.join().unwrap()).sum();

    eprintln!(
        "opened {opened} opens {}",
        shared.opens.load(Ordering::SeqCst)
    );
    assert_eq!(shared.violations.load(Ordering::SeqCst), 0);
    assert_eq!(
        shared.opens.load(Ordering::SeqCst),
        shared.closes.load(Ordering::SeqCst)
    );
    assert_eq!(shared.reads.load(Ordering::SeqCst), opened);
    assert!(reg.devices().is_empty());
}
