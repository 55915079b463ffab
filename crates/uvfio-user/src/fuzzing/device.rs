//! The device behind the fuzzed connection, and (with a [`Layout`] of their
//! own) the uvfio-user integration tests' device: every kind of resource a
//! client can touch, in a few hundred bytes of state. Not a stable API.
//!
//! - BAR0 ([`Layout::bar0_size`], RW): registers; [`REG_SCRATCH`] a u32 of
//!   scratch, [`REG_DMA_ADDR`] DMA address (u64), [`REG_DMA_LEN`] DMA
//!   length (u32), [`REG_DOORBELL`] doorbell ([`CMD_DMA_TO_CLIENT`]: copy
//!   the data buffer to the client, [`CMD_DMA_FROM_CLIENT`]: copy the
//!   client's memory into it), [`REG_STATUS`] status (0, or the errno of
//!   the last DMA). The data buffer is BAR0's second half
//!   ([`Layout::data_buf`]). A finished DMA fires MSI vector 0 if MSI has
//!   an eventfd, else INTx.
//! - BAR2 ([`BAR2_SIZE`], RW + MMAP): a sealed memfd; its second page is a
//!   sparse mmap area, the first is served through read/write only.
//! - config ([`CONFIG_SIZE`], RW): the vendor and device id (read-only) at
//!   0; the other indexes up to 8 are absent.
//! - IRQs: INTx (1, maskable, automasked), MSI (1), MSI-X
//!   ([`Layout::msix_count`]), ERR (1), REQ (1); a request signals REQ.
//! - Reset zeroes BAR0; with [`Layout::migration`], migration (STOP_COPY +
//!   PRE_COPY) of BAR0's contents.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use uvfio_core::{
    DeviceFlags, DeviceInfo, DeviceOps, Dma, Errno, IrqFlags, IrqIndexConfig, IrqInfo, IrqLines,
    MigFlags, MigState, MigrationOps, OpenContext, RegionCap, RegionFlags, RegionInfo, RegionMmap,
    SharedMemory, SparseArea,
};

/// BAR0's region index.
pub const BAR0: u32 = 0;
/// BAR2's region index.
pub const BAR2: u32 = 2;
/// The config space's region index.
pub const CONFIG: u32 = 7;
/// BAR2's size.
pub const BAR2_SIZE: u64 = 0x2000;
/// The config space's size.
pub const CONFIG_SIZE: u64 = 256;

/// BAR0: a u32 the device does not look at.
pub const REG_SCRATCH: u64 = 0x00;
/// BAR0: the DMA address (u64).
pub const REG_DMA_ADDR: u64 = 0x08;
/// BAR0: the DMA length (u32), capped at the data buffer's size.
pub const REG_DMA_LEN: u64 = 0x10;
/// BAR0: a u32 written here is a command (`CMD_*`).
pub const REG_DOORBELL: u64 = 0x14;
/// BAR0: 0, or the errno of the last command (u32).
pub const REG_STATUS: u64 = 0x18;
/// Doorbell: copy the data buffer to the client's memory at the DMA
/// address.
pub const CMD_DMA_TO_CLIENT: u32 = 1;
/// Doorbell: copy the client's memory at the DMA address into the data
/// buffer.
pub const CMD_DMA_FROM_CLIENT: u32 = 2;

/// The INTx IRQ index.
pub const INTX: u32 = 0;
/// The MSI IRQ index.
pub const MSI: u32 = 1;
/// The MSI-X IRQ index.
pub const MSIX: u32 = 2;
/// The ERR IRQ index.
pub const ERR: u32 = 3;
/// The REQ IRQ index.
pub const REQ: u32 = 4;

/// Most bytes a resuming stream may hold.
const MAX_STREAM: usize = 64 * 1024;
/// BAR0 must hold the registers below the data buffer.
const MIN_BAR0_SIZE: u64 = 0x40;

/// What differs between users of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// BAR0's size (at least 64 bytes): registers, then the data buffer in
    /// its second half.
    pub bar0_size: u64,
    /// The vendor id in config space.
    pub vendor_id: u16,
    /// The device id in config space.
    pub device_id: u16,
    /// MSI-X vectors.
    pub msix_count: u32,
    /// Whether the device migrates.
    pub migration: bool,
}

impl Layout {
    /// The fuzzing harness's device (the committed corpus was grown on
    /// it: changing it changes what those inputs reach).
    pub const FUZZ: Layout = Layout {
        bar0_size: 0x1000,
        vendor_id: 0x1ee7,
        device_id: 0x1000,
        msix_count: 8,
        migration: true,
    };

    /// The data buffer's offset in BAR0.
    #[must_use]
    pub const fn data_buf(&self) -> u64 {
        self.bar0_size / 2
    }

    /// The data buffer's size.
    #[must_use]
    pub const fn data_buf_size(&self) -> u64 {
        self.bar0_size - self.data_buf()
    }
}

#[derive(Debug, Default)]
struct Mig {
    /// Saving: the stream and how far it was read.
    out: Vec<u8>,
    pos: usize,
    /// Resuming: what was written.
    incoming: Vec<u8>,
}

/// See the module docs. The counters are for tests' assertions.
#[derive(Debug)]
pub struct SampleDevice {
    layout: Layout,
    /// `layout.bar0_size` and `layout.data_buf()`, as indexes.
    bar0_size: usize,
    data: usize,
    bar0: Mutex<Vec<u8>>,
    config: Mutex<Vec<u8>>,
    bar2: SharedMemory,
    bar2_fd: Arc<OwnedFd>,
    irqs: IrqLines,
    dma: Mutex<Option<Dma>>,
    mig: Mutex<Mig>,
    /// `open_device` calls.
    pub opens: AtomicU32,
    /// `close_device` calls.
    pub closes: AtomicU32,
    /// `request` calls.
    pub requests: AtomicU32,
    /// `reset` calls.
    pub resets: AtomicU32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SampleDevice {
    /// A device shaped by `layout`.
    ///
    /// # Errors
    ///
    /// `INVAL` if BAR0 is smaller than 64 bytes (or too large to hold),
    /// else the errno of making BAR2's memfd.
    pub fn new(layout: Layout) -> Result<SampleDevice, Errno> {
        if layout.bar0_size < MIN_BAR0_SIZE {
            return Err(Errno::INVAL);
        }
        let bar0_size = usize::try_from(layout.bar0_size).map_err(|_| Errno::INVAL)?;
        let data = usize::try_from(layout.data_buf()).map_err(|_| Errno::INVAL)?;
        let bar2 = SharedMemory::new("sample-bar2", BAR2_SIZE)?;
        let bar2_fd = Arc::new(bar2.fd().try_clone_to_owned().map_err(|_| Errno::MFILE)?);
        let irq = |index, count, flags, exclusive| IrqIndexConfig {
            info: IrqInfo {
                index,
                flags,
                count,
            },
            exclusive,
        };
        let ev = IrqFlags::EVENTFD;
        let mut config = vec![0u8; CONFIG_SIZE as usize];
        config[0..2].copy_from_slice(&layout.vendor_id.to_le_bytes());
        config[2..4].copy_from_slice(&layout.device_id.to_le_bytes());
        Ok(SampleDevice {
            layout,
            bar0_size,
            data,
            bar0: Mutex::new(vec![0u8; bar0_size]),
            config: Mutex::new(config),
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
                irq(MSIX, layout.msix_count, ev | IrqFlags::NORESIZE, true),
                irq(ERR, 1, ev, false),
                irq(REQ, 1, ev, false),
            ]),
            dma: Mutex::new(None),
            mig: Mutex::new(Mig::default()),
            opens: AtomicU32::new(0),
            closes: AtomicU32::new(0),
            requests: AtomicU32::new(0),
            resets: AtomicU32::new(0),
        })
    }

    /// The IRQ state.
    #[must_use]
    pub fn irq_lines(&self) -> &IrqLines {
        &self.irqs
    }

    /// The DMA handle while open.
    #[must_use]
    pub fn dma(&self) -> Option<Dma> {
        lock(&self.dma).clone()
    }

    /// The BAR2 memory as the device sees it.
    #[must_use]
    pub fn bar2(&self) -> &SharedMemory {
        &self.bar2
    }

    fn doorbell(&self, cmd: u32) -> Result<(), Errno> {
        let (addr, len) = {
            let r = lock(&self.bar0);
            let mut a = [0u8; 8];
            a.copy_from_slice(&r[0x08..0x10]);
            let mut l = [0u8; 4];
            l.copy_from_slice(&r[0x10..0x14]);
            let len = usize::try_from(u32::from_le_bytes(l)).unwrap_or(usize::MAX);
            (u64::from_le_bytes(a), len.min(self.bar0_size - self.data))
        };
        let dma = self.dma().ok_or(Errno::NODEV)?;
        let data = self.data;
        match cmd {
            CMD_DMA_TO_CLIENT => {
                let buf = lock(&self.bar0)[data..data + len].to_vec();
                dma.write(addr, &buf)?;
            }
            CMD_DMA_FROM_CLIENT => {
                let mut buf = vec![0u8; len];
                dma.read(addr, &mut buf)?;
                lock(&self.bar0)[data..data + len].copy_from_slice(&buf);
            }
            _ => return Err(Errno::INVAL),
        }
        let index = if self.irqs.enabled(MSI) { MSI } else { INTX };
        self.irqs.trigger(index, 0)?;
        Ok(())
    }
}

impl DeviceOps for SampleDevice {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: DeviceFlags::PCI | DeviceFlags::RESET,
            num_regions: 9,
            num_irqs: 5,
        }
    }

    fn open_device(&self, ctx: &OpenContext) -> uvfio_core::Result<()> {
        *lock(&self.dma) = Some(ctx.dma.clone());
        self.opens.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn close_device(&self, _: uvfio_core::CloseReason) {
        *lock(&self.dma) = None;
        self.closes.fetch_add(1, Ordering::SeqCst);
    }

    fn region_info(&self, index: u32) -> uvfio_core::Result<RegionInfo> {
        Ok(match index {
            BAR0 => RegionInfo::rw(index, self.layout.bar0_size),
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
        let off = usize::try_from(offset).map_err(|_| Errno::INVAL)?;
        let end = off.checked_add(buf.len()).ok_or(Errno::INVAL)?;
        match index {
            BAR0 => buf.copy_from_slice(lock(&self.bar0).get(off..end).ok_or(Errno::INVAL)?),
            BAR2 => self.bar2.read_at(offset, buf)?,
            CONFIG => buf.copy_from_slice(lock(&self.config).get(off..end).ok_or(Errno::INVAL)?),
            _ => return Err(Errno::INVAL),
        }
        Ok(())
    }

    fn write(&self, index: u32, offset: u64, data: &[u8]) -> uvfio_core::Result<()> {
        let off = usize::try_from(offset).map_err(|_| Errno::INVAL)?;
        let end = off.checked_add(data.len()).ok_or(Errno::INVAL)?;
        match index {
            BAR0 => {
                lock(&self.bar0)
                    .get_mut(off..end)
                    .ok_or(Errno::INVAL)?
                    .copy_from_slice(data);
                if offset == REG_DOORBELL && data.len() == 4 {
                    let mut c = [0u8; 4];
                    c.copy_from_slice(data);
                    let status = match self.doorbell(u32::from_le_bytes(c)) {
                        Ok(()) => 0u32,
                        Err(e) => u32::try_from(e.raw_os_error()).unwrap_or(u32::MAX),
                    };
                    lock(&self.bar0)[0x18..0x1c].copy_from_slice(&status.to_le_bytes());
                }
            }
            BAR2 => self.bar2.write_at(offset, data)?,
            CONFIG => {
                let mut c = lock(&self.config);
                for (i, b) in data.iter().enumerate() {
                    // The ids are read-only.
                    if off + i >= 4 {
                        if let Some(x) = c.get_mut(off + i) {
                            *x = *b;
                        }
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
        lock(&self.bar0).iter_mut().for_each(|b| *b = 0);
        self.resets.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn request(&self, _count: u32) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.irqs.trigger(REQ, 0) {
            tracing::debug!("REQ: {e}");
        }
    }

    fn migration(&self) -> Option<&dyn MigrationOps> {
        self.layout.migration.then_some(self as &dyn MigrationOps)
    }
}

impl MigrationOps for SampleDevice {
    fn flags(&self) -> MigFlags {
        MigFlags::STOP_COPY | MigFlags::PRE_COPY
    }

    fn step(&self, _from: MigState, to: MigState) -> uvfio_core::Result<()> {
        let mut m = lock(&self.mig);
        match to {
            MigState::PreCopy | MigState::StopCopy => {
                m.out = lock(&self.bar0).clone();
                m.pos = 0;
            }
            MigState::Resuming => m.incoming.clear(),
            MigState::Stop if !m.incoming.is_empty() => {
                let data = std::mem::take(&mut m.incoming);
                if data.len() != self.bar0_size {
                    return Err(Errno::INVAL);
                }
                lock(&self.bar0).copy_from_slice(&data);
            }
            _ => {}
        }
        Ok(())
    }

    fn save(&self, buf: &mut [u8]) -> uvfio_core::Result<usize> {
        let mut m = lock(&self.mig);
        let left = m.out.len().saturating_sub(m.pos);
        let n = left.min(buf.len());
        let pos = m.pos;
        buf[..n].copy_from_slice(&m.out[pos..pos + n]);
        m.pos += n;
        Ok(n)
    }

    fn load(&self, data: &[u8]) -> uvfio_core::Result<()> {
        let mut m = lock(&self.mig);
        if m.incoming.len().saturating_add(data.len()) > MAX_STREAM {
            return Err(Errno::NOSPC);
        }
        m.incoming.extend_from_slice(data);
        Ok(())
    }

    fn precopy_info(&self) -> (u64, u64) {
        let m = lock(&self.mig);
        (m.out.len().saturating_sub(m.pos) as u64, 0)
    }

    fn stop_copy_size(&self) -> u64 {
        self.layout.bar0_size
    }
}
