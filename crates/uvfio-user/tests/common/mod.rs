//! A small PCI-like test device and helpers shared by the integration tests.
//!
//! Layout (vfio-pci indexes, 9 regions, 5 IRQ indexes):
//! - region 0 (BAR0, 8 KiB, RW): registers
//!   - `0x00` scratch u32
//!   - `0x08` DMA address (u64), `0x10` DMA length (u32)
//!   - `0x14` doorbell: write [`CMD_DMA_TO_CLIENT`] (copy the data buffer to
//!     the client's memory at the DMA address) or [`CMD_DMA_FROM_CLIENT`]
//!     (copy the client's memory into the data buffer); the device then
//!     fires MSI vector 0 (or INTx if MSI has no eventfd)
//!   - `0x18` status: 0, or the errno of the last DMA
//!   - `0x1000..0x2000` data buffer
//! - region 2 (BAR2, 8 KiB, RW + MMAP): a [`SharedMemory`]; the second page
//!   is a sparse mmap area, the first is served through read/write only
//! - region 7 (config, 256 B, RW): vendor 0x1af4, device 0x10f0 at 0
//! - IRQs: INTx (1), MSI (1), MSI-X (4), ERR (1), REQ (1); `request`
//!   signals REQ

#![allow(dead_code)]

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use uvfio_core::{
    DeviceFlags, DeviceInfo, DeviceOps, Dma, Errno, IrqFlags, IrqIndexConfig, IrqInfo, IrqLines,
    OpenContext, RegionCap, RegionFlags, RegionInfo, RegionMmap, SharedMemory, SparseArea,
};

pub const BAR0: u32 = 0;
pub const BAR2: u32 = 2;
pub const CONFIG: u32 = 7;
pub const BAR0_SIZE: u64 = 0x2000;
pub const BAR2_SIZE: u64 = 0x2000;
pub const CONFIG_SIZE: u64 = 256;

pub const REG_SCRATCH: u64 = 0x00;
pub const REG_DMA_ADDR: u64 = 0x08;
pub const REG_DMA_LEN: u64 = 0x10;
pub const REG_DOORBELL: u64 = 0x14;
pub const REG_STATUS: u64 = 0x18;
pub const DATA_BUF: u64 = 0x1000;
pub const DATA_BUF_SIZE: u64 = 0x1000;

pub const CMD_DMA_TO_CLIENT: u32 = 1;
pub const CMD_DMA_FROM_CLIENT: u32 = 2;

pub const INTX: u32 = 0;
pub const MSI: u32 = 1;
pub const MSIX: u32 = 2;
pub const ERR: u32 = 3;
pub const REQ: u32 = 4;

pub const VENDOR_ID: u16 = 0x1af4;
pub const DEVICE_ID: u16 = 0x10f0;

#[derive(Debug)]
struct Regs {
    bar0: Vec<u8>,
    config: Vec<u8>,
}

/// The test device.
#[derive(Debug)]
pub struct TestDevice {
    regs: Mutex<Regs>,
    bar2: SharedMemory,
    bar2_fd: Arc<OwnedFd>,
    irqs: IrqLines,
    dma: Mutex<Option<Dma>>,
    pub opens: AtomicU32,
    pub closes: AtomicU32,
    pub requests: AtomicU32,
    pub resets: AtomicU32,
}

impl TestDevice {
    pub fn new() -> TestDevice {
        let bar2 = SharedMemory::new("test-bar2", BAR2_SIZE).expect("memfd");
        let bar2_fd = Arc::new(bar2.fd().try_clone_to_owned().expect("dup"));
        let mut config = vec![0u8; CONFIG_SIZE as usize];
        config[0..2].copy_from_slice(&VENDOR_ID.to_le_bytes());
        config[2..4].copy_from_slice(&DEVICE_ID.to_le_bytes());
        let irq = |index, count, flags, exclusive| IrqIndexConfig {
            info: IrqInfo {
                index,
                flags,
                count,
            },
            exclusive,
        };
        let ev = IrqFlags::EVENTFD;
        TestDevice {
            regs: Mutex::new(Regs {
                bar0: vec![0u8; BAR0_SIZE as usize],
                config,
            }),
            bar2,
            bar2_fd,
            irqs: IrqLines::new(&[
                irq(
                    INTX,
                    1,
                    ev | IrqFlags::MASKABLE | IrqFlags::AUTOMASKED,
                    true,
                ),
                irq(MSI, 1, ev | IrqFlags::NORESIZE, true),
                irq(MSIX, 4, ev | IrqFlags::NORESIZE, true),
                irq(ERR, 1, ev, false),
                irq(REQ, 1, ev, false),
            ]),
            dma: Mutex::new(None),
            opens: AtomicU32::new(0),
            closes: AtomicU32::new(0),
            requests: AtomicU32::new(0),
            resets: AtomicU32::new(0),
        }
    }

    /// The BAR2 memory as the device sees it.
    pub fn bar2(&self) -> &SharedMemory {
        &self.bar2
    }

    /// The IRQ state.
    pub fn irq_lines(&self) -> &IrqLines {
        &self.irqs
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Regs> {
        self.regs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn doorbell(&self, cmd: u32) -> Result<(), Errno> {
        let (addr, len) = {
            let r = self.lock();
            let addr = u64::from_le_bytes(r.bar0[0x08..0x10].try_into().unwrap());
            let len = u32::from_le_bytes(r.bar0[0x10..0x14].try_into().unwrap());
            (addr, len.min(DATA_BUF_SIZE as u32) as usize)
        };
        let dma = self
            .dma
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(Errno::NODEV)?;
        let start = DATA_BUF as usize;
        match cmd {
            CMD_DMA_TO_CLIENT => {
                let data = self.lock().bar0[start..start + len].to_vec();
                dma.write(addr, &data)?;
            }
            CMD_DMA_FROM_CLIENT => {
                let mut data = vec![0u8; len];
                dma.read(addr, &mut data)?;
                self.lock().bar0[start..start + len].copy_from_slice(&data);
            }
            _ => return Err(Errno::INVAL),
        }
        if self.irqs.enabled(MSI) {
            self.irqs.trigger(MSI, 0)?;
        } else {
            self.irqs.trigger(INTX, 0)?;
        }
        Ok(())
    }
}

impl Default for TestDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceOps for TestDevice {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: DeviceFlags::PCI | DeviceFlags::RESET,
            num_regions: 9,
            num_irqs: 5,
        }
    }

    fn open_device(&self, ctx: &OpenContext) -> uvfio_core::Result<()> {
        *self.dma.lock().unwrap_or_else(|e| e.into_inner()) = Some(ctx.dma.clone());
        self.opens.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn close_device(&self, _: uvfio_core::CloseReason) {
        *self.dma.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.closes.fetch_add(1, Ordering::SeqCst);
    }

    fn region_info(&self, index: u32) -> uvfio_core::Result<RegionInfo> {
        Ok(match index {
            BAR0 => RegionInfo::rw(index, BAR0_SIZE),
            BAR2 => RegionInfo {
                index,
                flags: RegionFlags::READ | RegionFlags::WRITE | RegionFlags::MMAP,
                size: BAR2_SIZE,
                caps: vec![RegionCap::SparseMmap(vec![SparseArea {
                    offset: 0x1000,
                    size: 0x1000,
                }])],
                mmap: Some(RegionMmap {
                    fd: self.bar2_fd.clone(),
                    offset: 0,
                }),
            },
            CONFIG => RegionInfo::rw(index, CONFIG_SIZE),
            _ => RegionInfo::absent(index),
        })
    }

    fn read(&self, index: u32, offset: u64, buf: &mut [u8]) -> uvfio_core::Result<()> {
        let off = offset as usize;
        match index {
            BAR0 => buf.copy_from_slice(&self.lock().bar0[off..off + buf.len()]),
            BAR2 => self.bar2.read_at(offset, buf)?,
            CONFIG => buf.copy_from_slice(&self.lock().config[off..off + buf.len()]),
            _ => return Err(Errno::INVAL),
        }
        Ok(())
    }

    fn write(&self, index: u32, offset: u64, data: &[u8]) -> uvfio_core::Result<()> {
        let off = offset as usize;
        match index {
            BAR0 => {
                self.lock().bar0[off..off + data.len()].copy_from_slice(data);
                if offset == REG_DOORBELL && data.len() == 4 {
                    let cmd = u32::from_le_bytes(data.try_into().unwrap());
                    let status = match self.doorbell(cmd) {
                        Ok(()) => 0u32,
                        Err(e) => e.raw_os_error() as u32,
                    };
                    self.lock().bar0[0x18..0x1c].copy_from_slice(&status.to_le_bytes());
                }
            }
            BAR2 => self.bar2.write_at(offset, data)?,
            // Vendor and device ids are read-only.
            CONFIG => {
                let mut r = self.lock();
                for (i, b) in data.iter().enumerate() {
                    if off + i >= 4 {
                        r.config[off + i] = *b;
                    }
                }
            }
            _ => return Err(Errno::INVAL),
        }
        Ok(())
    }

    fn irqs(&self) -> Option<&IrqLines> {
        Some(&self.irqs)
    }

    fn reset(&self) -> uvfio_core::Result<()> {
        let mut r = self.lock();
        r.bar0.iter_mut().for_each(|b| *b = 0);
        self.resets.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn request(&self, count: u32) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.irqs.trigger(REQ, 0) {
            eprintln!("REQ trigger failed: {e} (count {count})");
        }
    }
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
        .init(TestDevice::new(), name, uvfio_core::GroupId(1))
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
