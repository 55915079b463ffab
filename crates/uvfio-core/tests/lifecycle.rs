//! The lifecycle rules of issue 2: register publishes, unregister unlinks,
//! waits, requests with back-off, and can be cancelled.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use uvfio_core::*;

/// Records every op call.
#[derive(Default, Debug)]
struct Probe {
    opens: AtomicU32,
    closes: AtomicU32,
    requests: Mutex<Vec<u32>>,
    reg: AtomicU32,
}

impl DeviceOps for Probe {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: DeviceFlags::empty(),
            num_regions: 2,
            num_irqs: 0,
        }
    }
    fn open_device(&self, _ctx: &OpenContext) -> Result<()> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn close_device(&self, _: CloseReason) {
        self.closes.fetch_add(1, Ordering::SeqCst);
    }
    fn region_info(&self, index: u32) -> Result<RegionInfo> {
        Ok(match index {
            0 => RegionInfo::rw(0, 4),
            _ => RegionInfo {
                index,
                flags: RegionFlags::READ,
                size: 8,
                ..Default::default()
            },
        })
    }
    fn read(&self, _index: u32, _offset: u64, buf: &mut [u8]) -> Result<()> {
        let v = self.reg.load(Ordering::SeqCst).to_le_bytes();
        buf.copy_from_slice(&v[..buf.len()]);
        Ok(())
    }
    fn write(&self, _index: u32, _offset: u64, data: &[u8]) -> Result<()> {
        let mut b = [0u8; 4];
        b[..data.len()].copy_from_slice(data);
        self.reg.store(u32::from_le_bytes(b), Ordering::SeqCst);
        Ok(())
    }
    fn request(&self, count: u32) {
        self.requests.lock().unwrap().push(count);
    }
}

fn attach(reg: &Registry, group: GroupId) -> (Container, Group) {
    let c = Container::new();
    let g = reg.open_group(group).unwrap();
    g.set_container(&c).unwrap();
    c.set_iommu(IommuType::Type1v2).unwrap();
    (c, g)
}

#[test]
fn register_duplicate_name_is_eexist_and_hands_device_back() {
    let reg = Registry::default();
    let a = reg
        .init(Probe::default(), "dup", GroupId(1))
        .unwrap()
        .register()
        .unwrap();
    let b = reg.init(Probe::default(), "dup", GroupId(2)).unwrap();
    let err = b.register().unwrap_err();
    assert_eq!(err.errno, Errno::EXIST);
    assert_eq!(err.device.name(), "dup");
    drop(err);
    a.unregister();
}

#[test]
fn init_rejects_bad_names() {
    let reg = Registry::default();
    for bad in ["", "a/b", ".hidden", "nul\0"] {
        assert_eq!(
            reg.init(Probe::default(), bad, GroupId(1)).unwrap_err(),
            Errno::INVAL
        );
    }
}

#[test]
fn registered_device_is_reachable_from_another_thread_at_once() {
    let reg = Registry::default();
    let mut dev = reg.init(Probe::default(), "d0", GroupId(3)).unwrap();
    dev.driver_mut().reg.store(0xfeed, Ordering::SeqCst);
    let dev = dev.register().unwrap();
    let r2 = reg.clone();
    let v = thread::spawn(move || {
        let h = r2.open_device(GroupId(3), "d0").unwrap();
        let mut b = [0u8; 4];
        h.read(0, 0, &mut b).unwrap();
        u32::from_le_bytes(b)
    })
    .join()
    .unwrap();
    assert_eq!(v, 0xfeed);
    let p = dev.unregister();
    assert_eq!(p.opens.load(Ordering::SeqCst), 1);
    assert_eq!(p.closes.load(Ordering::SeqCst), 1);
}

#[test]
fn group_with_unregistered_member_is_not_viable() {
    let reg = Registry::default();
    let a = reg
        .init(Probe::default(), "a", GroupId(4))
        .unwrap()
        .register()
        .unwrap();
    let b = reg.init(Probe::default(), "b", GroupId(4)).unwrap();
    assert_eq!(reg.group_viable(GroupId(4)), Some(false));
    let g = reg.open_group(GroupId(4)).unwrap();
    assert!(!g.status().viable);
    assert_eq!(g.set_container(&Container::new()).unwrap_err(), Errno::PERM);
    // Dropping the unregistered device (uninit) makes the group viable.
    drop(b);
    assert!(g.status().viable);
    g.set_container(&Container::new()).unwrap();
    assert!(g.status().container_set);
    drop(g);
    a.unregister();
}

#[test]
fn group_opens_once_and_open_needs_iommu() {
    let reg = Registry::default();
    let d = reg
        .init(Probe::default(), "x", GroupId(5))
        .unwrap()
        .register()
        .unwrap();
    let g = reg.open_group(GroupId(5)).unwrap();
    assert_eq!(reg.open_group(GroupId(5)).unwrap_err(), Errno::BUSY);
    assert_eq!(reg.open_group(GroupId(99)).unwrap_err(), Errno::NOENT);
    assert_eq!(g.get_device("x").unwrap_err(), Errno::INVAL);
    let c = Container::new();
    assert_eq!(c.set_iommu(IommuType::Type1v2).unwrap_err(), Errno::INVAL);
    g.set_container(&c).unwrap();
    assert_eq!(g.set_container(&c).unwrap_err(), Errno::INVAL);
    assert_eq!(g.get_device("x").unwrap_err(), Errno::INVAL);
    c.set_iommu(IommuType::Type1v2).unwrap();
    assert_eq!(c.set_iommu(IommuType::Type1v2).unwrap_err(), Errno::INVAL);
    assert_eq!(g.get_device("nope").unwrap_err(), Errno::NODEV);
    let h = g.get_device("x").unwrap();
    assert_eq!(g.unset_container().unwrap_err(), Errno::BUSY);
    drop(h);
    g.unset_container().unwrap();
    assert_eq!(g.unset_container().unwrap_err(), Errno::INVAL);
    drop(g);
    // Closed: can be opened again.
    drop(reg.open_group(GroupId(5)).unwrap());
    d.unregister();
}

#[test]
fn open_close_edges_call_driver_once() {
    let reg = Registry::default();
    let d = reg
        .init(Probe::default(), "e", GroupId(6))
        .unwrap()
        .register()
        .unwrap();
    let (_c, g) = attach(&reg, GroupId(6));
    let h1 = g.get_device("e").unwrap();
    let h2 = g.get_device("e").unwrap();
    assert_eq!(d.open_count(), 2);
    assert_eq!(d.driver().opens.load(Ordering::SeqCst), 1);
    drop(h1);
    assert_eq!(d.driver().closes.load(Ordering::SeqCst), 0);
    drop(h2);
    assert_eq!(d.driver().closes.load(Ordering::SeqCst), 1);
    drop(g);
    d.unregister();
}

#[test]
fn region_access_is_bounds_and_flag_checked_before_the_driver() {
    let reg = Registry::default();
    let d = reg
        .init(Probe::default(), "r", GroupId(7))
        .unwrap()
        .register()
        .unwrap();
    let h = reg.open_device(GroupId(7), "r").unwrap();
    let mut b = [0u8; 4];
    assert_eq!(h.read(0, 1, &mut b).unwrap_err(), Errno::INVAL);
    assert_eq!(h.read(0, u64::MAX, &mut b).unwrap_err(), Errno::INVAL);
    assert_eq!(h.read(2, 0, &mut b).unwrap_err(), Errno::INVAL);
    assert_eq!(h.write(1, 0, &b).unwrap_err(), Errno::INVAL); // read-only
    assert_eq!(h.region_info(9).unwrap_err(), Errno::INVAL);
    assert_eq!(h.irq_info(0).unwrap_err(), Errno::INVAL);
    assert_eq!(h.reset().unwrap_err(), Errno::INVAL); // no RESET flag
    h.write(0, 0, &7u32.to_le_bytes()).unwrap();
    h.read(0, 0, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 7);
    drop(h);
    d.unregister();
}

#[test]
fn unregister_blocks_requests_with_backoff_and_returns_on_release() {
    let reg = Registry::new(RegistryConfig {
        request_interval: Duration::from_millis(20),
    });
    let d = reg
        .init(Probe::default(), "u", GroupId(8))
        .unwrap()
        .register()
        .unwrap();
    let (_c, g) = attach(&reg, GroupId(8));
    let (tx, rx) = std::sync::mpsc::channel::<u32>();
    let h = g
        .get_device_with(
            "u",
            OpenOptions {
                label: "test user".into(),
                on_request: Some(Arc::new(move |n| {
                    let _ = tx.send(n);
                })),
                ..Default::default()
            },
        )
        .unwrap();
    let remover = thread::spawn(move || d.unregister());
    // The user sees request 0, 1, 2 in order…
    for want in 0..3 {
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), want);
    }
    // …and new opens already fail: the device is unlinked.
    assert_eq!(g.get_device("u").unwrap_err(), Errno::NODEV);
    assert!(!remover.is_finished());
    drop(h);
    let probe = remover.join().unwrap();
    let reqs = probe.requests.lock().unwrap().clone();
    assert!(reqs.len() >= 3);
    assert_eq!(reqs[..3], [0, 1, 2]);
    assert_eq!(probe.closes.load(Ordering::SeqCst), 1);
}

#[test]
fn unregister_timeout_reports_holders_and_can_resume() {
    let reg = Registry::default();
    let d = reg
        .init(Probe::default(), "t", GroupId(9))
        .unwrap()
        .register()
        .unwrap();
    let (_c, g) = attach(&reg, GroupId(9));
    let h = g
        .get_device_with(
            "t",
            OpenOptions {
                label: "client pid 42".into(),
                ..Default::default()
            },
        )
        .unwrap();
    let pending = d
        .unregister_with(&UnregisterOptions {
            request_interval: Some(Duration::from_millis(5)),
            timeout: Some(Duration::from_millis(50)),
            cancel: None,
        })
        .unwrap_err();
    assert_eq!(pending.holders(), vec!["client pid 42".to_string()]);
    assert!(pending.requests_sent() >= 1);
    drop(h);
    let probe = pending.wait(&UnregisterOptions::default()).unwrap();
    assert_eq!(probe.opens.load(Ordering::SeqCst), 1);
}

#[test]
fn unregister_cancel_stops_the_wait() {
    let reg = Registry::default();
    let d = reg
        .init(Probe::default(), "c", GroupId(10))
        .unwrap()
        .register()
        .unwrap();
    let h = reg.open_device(GroupId(10), "c").unwrap();
    let cancel = CancelToken::new();
    let c2 = cancel.clone();
    let waiter = thread::spawn(move || {
        d.unregister_with(&UnregisterOptions {
            cancel: Some(c2),
            ..Default::default()
        })
        .map(|_| ())
        .map_err(|p| p.requests_sent())
    });
    thread::sleep(Duration::from_millis(30));
    cancel.cancel();
    // Request 0 went out at once; the 10 s interval never elapsed.
    assert_eq!(waiter.join().unwrap().unwrap_err(), 1);
    drop(h);
}

#[test]
fn registry_listener_sees_register_and_unregister() {
    let reg = Registry::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    reg.add_listener(Arc::new(move |e: &RegistryEvent| {
        s2.lock().unwrap().push(e.clone())
    }));
    let d = reg
        .init(Probe::default(), "l", GroupId(11))
        .unwrap()
        .register()
        .unwrap();
    assert_eq!(reg.devices().len(), 1);
    d.unregister();
    assert!(reg.devices().is_empty());
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            RegistryEvent::Registered {
                name: "l".into(),
                group: GroupId(11)
            },
            RegistryEvent::Unregistering { name: "l".into() }
        ]
    );
}

/// Records why `close_device` ran; panics there on demand.
#[derive(Default)]
struct Closer {
    armed: std::sync::atomic::AtomicBool,
    reasons: Mutex<Vec<CloseReason>>,
}

impl Closer {
    fn closes(&self) -> usize {
        self.reasons.lock().unwrap().len()
    }
}

impl DeviceOps for Closer {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: DeviceFlags::empty(),
            num_regions: 1,
            num_irqs: 0,
        }
    }
    fn close_device(&self, reason: CloseReason) {
        self.reasons.lock().unwrap().push(reason);
        if self.armed.load(Ordering::SeqCst) {
            panic!("close_device exploded");
        }
    }
}

#[test]
fn close_reports_a_panicking_close_device_and_releases_anyway() {
    let reg = Registry::default();
    let dev = reg
        .init(Closer::default(), "pc", GroupId(40))
        .unwrap()
        .register()
        .unwrap();
    let (_c, g) = attach(&reg, GroupId(40));
    // A clean close is Ok.
    g.get_device("pc").unwrap().close().unwrap();
    // Not the last open: close_device does not run, nothing to report.
    dev.driver().armed.store(true, Ordering::SeqCst);
    let a = g.get_device("pc").unwrap();
    let b = g.get_device("pc").unwrap();
    assert_eq!(a.close(), Ok(()));
    assert_eq!(dev.driver().closes(), 1);
    // The last one: close_device panics; close says EIO and the device is
    // released all the same.
    assert_eq!(b.close(), Err(Errno::IO));
    assert_eq!(dev.driver().closes(), 2);
    assert_eq!(dev.open_count(), 0);
    dev.driver().armed.store(false, Ordering::SeqCst);
    let again = g.get_device("pc").unwrap();
    drop(again);
    drop(g);
    let d = dev.unregister();
    assert_eq!(d.closes(), 3);
}

#[test]
fn the_last_user_to_close_decides_the_close_reason() {
    let reg = Registry::default();
    let dev = reg
        .init(Closer::default(), "r", GroupId(41))
        .unwrap()
        .register()
        .unwrap();
    let (_c, g) = attach(&reg, GroupId(41));
    let keeper = || {
        g.get_device_with(
            "r",
            OpenOptions {
                keep_state: true,
                ..Default::default()
            },
        )
        .unwrap()
    };
    drop(g.get_device("r").unwrap());
    drop(keeper());
    // Two users; the plain one closes last.
    let (k, p) = (keeper(), g.get_device("r").unwrap());
    drop(k);
    drop(p);
    // Two users; the keeper closes last.
    let (k, p) = (keeper(), g.get_device("r").unwrap());
    drop(p);
    drop(k);
    assert_eq!(
        *dev.driver().reasons.lock().unwrap(),
        [
            CloseReason::Released,
            CloseReason::Disconnected,
            CloseReason::Released,
            CloseReason::Disconnected
        ]
    );
    drop(g);
    let _ = dev.unregister();
}
