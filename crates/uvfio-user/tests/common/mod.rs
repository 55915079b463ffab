//! The test device and helpers shared by the integration tests.
//!
//! The device is the fuzzing harness's ([`uvfio_user::fuzzing::device`],
//! which documents its registers, regions and IRQs) with the tests' own
//! [`LAYOUT`].

#![allow(dead_code)]

use std::os::fd::AsFd;

use uvfio_user::fuzzing::device::Layout;
// Each test binary uses its own subset.
#[allow(unused_imports)]
pub use uvfio_user::fuzzing::device::{
    SampleDevice as TestDevice, BAR0, BAR2, BAR2_SIZE, CMD_DMA_FROM_CLIENT, CMD_DMA_TO_CLIENT,
    CONFIG, CONFIG_SIZE, ERR, INTX, MSI, MSIX, REG_DMA_ADDR, REG_DMA_LEN, REG_DOORBELL,
    REG_SCRATCH, REG_STATUS, REQ,
};

/// The tests' device: an 8 KiB BAR0 (a 4 KiB data buffer at 0x1000), 4
/// MSI-X vectors, and no migration (tests/migration.rs uses it as the
/// device that cannot migrate).
pub const LAYOUT: Layout = Layout {
    bar0_size: 0x2000,
    vendor_id: 0x1af4,
    device_id: 0x10f0,
    msix_count: 4,
    migration: false,
};

pub const BAR0_SIZE: u64 = LAYOUT.bar0_size;
pub const DATA_BUF: u64 = LAYOUT.data_buf();
pub const DATA_BUF_SIZE: u64 = LAYOUT.data_buf_size();
pub const VENDOR_ID: u16 = LAYOUT.vendor_id;
pub const DEVICE_ID: u16 = LAYOUT.device_id;

/// A new test device.
pub fn test_device() -> TestDevice {
    TestDevice::new(LAYOUT).expect("memfd")
}

/// Entries in /proc/self/fd.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits (hang guard: 20 s) until `f` holds.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Reads an eventfd, waiting (hang guard: 20 s) until it is signalled.
pub fn wait_eventfd(fd: &impl AsFd) -> u64 {
    let mut v = 0;
    wait_until("eventfd", || {
        v = uvfio_core::irq::read_eventfd(fd).unwrap_or(0);
        v != 0
    });
    v
}

/// A server in a fresh temp folder serving one [`TestDevice`].
pub struct Served {
    pub server: uvfio_user::Server,
    pub dev: uvfio_core::RegisteredDevice<TestDevice>,
    pub registry: uvfio_core::Registry,
    /// Removed when dropped: keep it while the server runs (a `..` in a
    /// destructuring pattern drops it at once; bind it to `_dir`).
    pub dir: tempfile::TempDir,
}

/// Serves a [`TestDevice`] called `name` (group 1) with the default
/// server configuration.
pub fn serve_test_device(name: &str) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let registry = uvfio_core::Registry::default();
    let server =
        uvfio_user::Server::new(registry.clone(), uvfio_user::ServerConfig::new(dir.path()))
            .unwrap();
    let dev = registry
        .init(test_device(), name, uvfio_core::GroupId(1))
        .unwrap()
        .register()
        .unwrap();
    Served {
        server,
        dev,
        registry,
        dir,
    }
}
