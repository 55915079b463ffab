//! The device behind the fuzzed connection: every kind of resource a
//! client can touch, in a few hundred bytes of state.
//!
//! - BAR0 (4 KiB, RW): registers; `0x08` DMA address (u64), `0x10` DMA
//!   length (u32), `0x14` doorbell (1: copy `0x800..` to the client, 2:
//!   copy the client's memory to `0x800..`), `0x18` status (errno of the
//!   last DMA). A finished DMA fires MSI vector 0, else INTx.
//! - BAR2 (8 KiB, RW + MMAP): a sealed memfd, sparse second page.
//! - config (256 B, RW); the other indexes up to 8 are absent.
//! - IRQs: INTx (1, maskable, automasked), MSI (1), MSI-X (8), ERR, REQ.
//! - Reset, and migration (STOP_COPY + PRE_COPY) of BAR0's contents.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use uvfio_core::{
    DeviceFlags, DeviceInfo, DeviceOps, Dma, Errno, IrqFlags, IrqIndexConfig, IrqInfo, IrqLines,
    MigFlags, MigState, MigrationOps, OpenContext, RegionCap, RegionFlags, RegionInfo, RegionMmap,
    SharedMemory, SparseArea,
};

pub(super) const BAR0: u32 = 0;
pub(super) const BAR2: u32 = 2;
pub(super) const CONFIG: u32 = 7;
pub(super) const BAR0_SIZE: usize = 0x1000;
const BAR2_SIZE: u64 = 0x2000;
const CONFIG_SIZE: usize = 256;
pub(super) const REG_DMA_ADDR: u64 = 0x08;
pub(super) const REG_DMA_LEN: u64 = 0x10;
pub(super) const REG_DOORBELL: u64 = 0x14;
const DATA: usize = 0x800;
const MSI: u32 = 1;
/// Most bytes a resuming stream may hold.
const MAX_STREAM: usize = 64 * 1024;

#[derive(Default)]
struct Mig {
    /// Saving: the stream and how far it was read.
    out: Vec<u8>,
    pos: usize,
    /// Resuming: what was written.
    incoming: Vec<u8>,
}

/// See the module docs.
pub(super) struct FuzzDevice {
    bar0: Mutex<Vec<u8>>,
    config: Mutex<Vec<u8>>,
    bar2: SharedMemory,
    bar2_fd: Arc<OwnedFd>,
    irqs: IrqLines,
    dma: Mutex<Option<Dma>>,
    mig: Mutex<Mig>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FuzzDevice {
    pub(super) fn new() -> Result<FuzzDevice, Errno> {
        let bar2 = SharedMemory::new("fuzz-bar2", BAR2_SIZE)?;
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
        let mut config = vec![0u8; CONFIG_SIZE];
        config[0..4].copy_from_slice(&0x1000_1ee7u32.to_le_bytes());
        Ok(FuzzDevice {
            bar0: Mutex::new(vec![0u8; BAR0_SIZE]),
            config: Mutex::new(config),
            bar2,
            bar2_fd,
            irqs: IrqLines::new(&[
                irq(0, 1, ev | IrqFlags::MASKABLE | IrqFlags::AUTOMASKED, true),
                irq(1, 1, ev | IrqFlags::NORESIZE, true),
                irq(2, 8, ev | IrqFlags::NORESIZE, true),
                irq(3, 1, ev, false),
                irq(4, 1, ev, false),
            ]),
            dma: Mutex::new(None),
            mig: Mutex::new(Mig::default()),
        })
    }

    /// The IRQ state.
    pub(super) fn irq_lines(&self) -> &IrqLines {
        &self.irqs
    }

    /// The DMA handle while open.
    pub(super) fn dma(&self) -> Option<Dma> {
        lock(&self.dma).clone()
    }

    fn doorbell(&self, cmd: u32) -> Result<(), Errno> {
        let (addr, len) = {
            let r = lock(&self.bar0);
            let mut a = [0u8; 8];
            a.copy_from_slice(&r[0x08..0x10]);
            let mut l = [0u8; 4];
            l.copy_from_slice(&r[0x10..0x14]);
            let len = usize::try_from(u32::from_le_bytes(l)).unwrap_or(usize::MAX);
            (u64::from_le_bytes(a), len.min(BAR0_SIZE - DATA))
        };
        let dma = self.dma().ok_or(Errno::NODEV)?;
        match cmd {
            1 => {
                let data = lock(&self.bar0)[DATA..DATA + len].to_vec();
                dma.write(addr, &data)?;
            }
            2 => {
                let mut data = vec![0u8; len];
                dma.read(addr, &mut data)?;
                lock(&self.bar0)[DATA..DATA + len].copy_from_slice(&data);
            }
            _ => return Err(Errno::INVAL),
        }
        let index = if self.irqs.enabled(MSI) { MSI } else { 0 };
        self.irqs.trigger(index, 0)?;
        Ok(())
    }
}

impl DeviceOps for FuzzDevice {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: DeviceFlags::PCI | DeviceFlags::RESET,
            num_regions: 9,
            num_irqs: 5,
        }
    }

    fn open_device(&self, ctx: &OpenContext) -> uvfio_core::Result<()> {
        *lock(&self.dma) = Some(ctx.dma.clone());
        Ok(())
    }

    fn close_device(&self, _: uvfio_core::CloseReason) {
        *lock(&self.dma) = None;
    }

    fn region_info(&self, index: u32) -> uvfio_core::Result<RegionInfo> {
        Ok(match index {
            BAR0 => RegionInfo::rw(index, BAR0_SIZE as u64),
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
            CONFIG => RegionInfo::rw(index, CONFIG_SIZE as u64),
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
        Ok(())
    }

    fn request(&self, _count: u32) {
        if let Err(e) = self.irqs.trigger(4, 0) {
            tracing::debug!("REQ: {e}");
        }
    }

    fn migration(&self) -> Option<&dyn MigrationOps> {
        Some(self)
    }
}

impl MigrationOps for FuzzDevice {
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
                if data.len() != BAR0_SIZE {
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
        BAR0_SIZE as u64
    }
}
