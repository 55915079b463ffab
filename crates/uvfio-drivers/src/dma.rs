//! dma: a memcpy engine, like the DMA devices the kernel's VFIO selftests
//! drive (ioat, dsa), with an MSI-X completion interrupt and a RAM BAR.
//!
//! PCI `1ee7:0002` ([`crate::UVFIO_VENDOR_ID`]), class 08/01 (DMA
//! controller), a PCI Express endpoint with FLR (so the device supports
//! `VFIO_DEVICE_RESET`), PM, MSI-X (1 vector) and a device serial number.
//!
//! ## BARs
//!
//! - **BAR0** (4 KiB, 32-bit memory): the registers below; the MSI-X table
//!   is at 0x800 and the PBA at 0xC00 (served by the PCI layer).
//! - **BAR2** (64-bit prefetchable, [`DmaOptions::ram_size`]): RAM backed
//!   by a sealed memfd, mmap-able (one sparse area: the whole BAR). A copy
//!   may read or write it instead of an IOVA.
//!
//! ## Registers (BAR0)
//!
//! | offset | name        | access | meaning                                     |
//! |--------|-------------|--------|---------------------------------------------|
//! | 0x00   | `ID`        | RO     | [`DMA_ID`]                                  |
//! | 0x04   | `MAX_LEN`   | RO     | largest transfer, [`DMA_MAX_LEN`] (1 MiB)   |
//! | 0x08   | `SRC_LO`    | RW     | source IOVA (or BAR2 offset), bits 31:0     |
//! | 0x0C   | `SRC_HI`    | RW     | bits 63:32                                  |
//! | 0x10   | `DST_LO`    | RW     | destination IOVA (or BAR2 offset)           |
//! | 0x14   | `DST_HI`    | RW     |                                             |
//! | 0x18   | `LEN`       | RW     | bytes to copy, 1..=`MAX_LEN`                |
//! | 0x1C   | `FLAGS`     | RW     | bit 0: source is BAR2; bit 1: destination is BAR2 |
//! | 0x20   | `DOORBELL`  | WO     | any write starts the copy (reads 0)         |
//! | 0x24   | `STATUS`    | RO/RW1C| bit 0 BUSY, bit 1 DONE (RW1C), bit 2 ERROR (RW1C) |
//! | 0x28   | `ERROR`     | RO     | code of the last failure (`DMA_ERR_*`)      |
//! | 0x2C   | `COMPLETED` | RO     | transfers completed successfully            |
//!
//! A doorbell copies synchronously through the core's DMA API (reads need
//! the mapping's READ permission, writes its WRITE permission; the core
//! marks written pages dirty while logging), then sets DONE or ERROR and
//! raises vector 0 (MSI-X, else INTx, which stays asserted until STATUS is
//! cleared). Host memory is only touched while bus master is enabled.
//!
//! ## Migration
//!
//! STOP_COPY, PRE_COPY and P2P (no-op arcs). The PCI layer carries config
//! space, the MSI-X table/PBA, latched interrupts and the RAM BAR's
//! contents; the engine's section is [`DMA_MIG_MAGIC`], major 1, minor 0,
//! then SRC, DST (u64), LEN, FLAGS, STATUS, ERROR and COMPLETED (u32). A
//! doorbell rung while the device is stopped (or a copy the stop
//! interrupted) leaves STATUS.BUSY set and runs when the engine runs
//! again — on the destination if it migrates meanwhile: BUSY in the
//! stream means "copy still to do".

use std::sync::{Arc, Mutex, MutexGuard};

use uvfio_core::{Errno, GroupId, MigState, RegisteredDevice, Registry, Result, SharedMemory};
use uvfio_pci::{
    Bar, Capability, ExtCapability, FunctionMigration, MsixCap, PciConfig, PciDevice, PciError,
    PciFunction, PciHandle, PciHeader, PcieCap, PmCap, StateReader, StateWriter,
};

use crate::{DriverError, UVFIO_VENDOR_ID};

/// The engine's device ID.
pub const DMA_DEVICE_ID: u16 = 0x0002;
/// Value of the ID register.
pub const DMA_ID: u32 = 0x444d_0100;
/// Largest transfer.
pub const DMA_MAX_LEN: u32 = 1 << 20;
/// Size of BAR0.
pub const DMA_BAR0_SIZE: u64 = 4096;
/// The RAM BAR's index.
pub const DMA_RAM_BAR: u8 = 2;
/// Offset of the MSI-X table in BAR0.
pub const DMA_MSIX_TABLE: u32 = 0x800;
/// Offset of the MSI-X PBA in BAR0.
pub const DMA_MSIX_PBA: u32 = 0xc00;

/// ID (RO).
pub const DMA_REG_ID: u64 = 0x00;
/// Largest transfer (RO).
pub const DMA_REG_MAX_LEN: u64 = 0x04;
/// Source, low dword.
pub const DMA_REG_SRC_LO: u64 = 0x08;
/// Source, high dword.
pub const DMA_REG_SRC_HI: u64 = 0x0c;
/// Destination, low dword.
pub const DMA_REG_DST_LO: u64 = 0x10;
/// Destination, high dword.
pub const DMA_REG_DST_HI: u64 = 0x14;
/// Length.
pub const DMA_REG_LEN: u64 = 0x18;
/// Flags.
pub const DMA_REG_FLAGS: u64 = 0x1c;
/// Doorbell.
pub const DMA_REG_DOORBELL: u64 = 0x20;
/// Status.
pub const DMA_REG_STATUS: u64 = 0x24;
/// Error code.
pub const DMA_REG_ERROR: u64 = 0x28;
/// Completed transfers.
pub const DMA_REG_COMPLETED: u64 = 0x2c;

/// FLAGS: the source is an offset in BAR2.
pub const DMA_FLAG_SRC_RAM: u32 = 1 << 0;
/// FLAGS: the destination is an offset in BAR2.
pub const DMA_FLAG_DST_RAM: u32 = 1 << 1;

/// STATUS: a copy is in progress.
pub const DMA_STATUS_BUSY: u32 = 1 << 0;
/// STATUS: the last copy completed (RW1C).
pub const DMA_STATUS_DONE: u32 = 1 << 1;
/// STATUS: the last copy failed (RW1C); see ERROR.
pub const DMA_STATUS_ERROR: u32 = 1 << 2;

/// No error.
pub const DMA_ERR_NONE: u32 = 0;
/// LEN is 0 or above MAX_LEN.
pub const DMA_ERR_LEN: u32 = 1;
/// Bus master is disabled.
pub const DMA_ERR_BUS_MASTER: u32 = 2;
/// Reading the source failed (unmapped, no READ permission).
pub const DMA_ERR_READ: u32 = 3;
/// Writing the destination failed (unmapped, no WRITE permission).
pub const DMA_ERR_WRITE: u32 = 4;
/// A BAR2 range past the end of the RAM.
pub const DMA_ERR_RAM_RANGE: u32 = 5;
/// A doorbell while a copy was running.
pub const DMA_ERR_BUSY: u32 = 6;
/// Internal: the device was stopped under the copy; it runs on resume.
const DEFERRED: u32 = u32::MAX;

/// Magic of the engine's migration state (`"DMAE"`).
pub const DMA_MIG_MAGIC: u32 = u32::from_le_bytes(*b"DMAE");
/// Major version of the engine's migration state.
pub const DMA_MIG_MAJOR: u16 = 1;
/// Minor version of the engine's migration state.
pub const DMA_MIG_MINOR: u16 = 0;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Regs {
    src: u64,
    dst: u64,
    len: u32,
    flags: u32,
    status: u32,
    error: u32,
    completed: u32,
}

/// The engine function.
#[derive(Debug)]
pub struct DmaEngine {
    regs: Mutex<Regs>,
    ram: Arc<SharedMemory>,
    irq: PciHandle,
}

fn set_lo(v: u64, lo: u32) -> u64 {
    (v & !0xffff_ffff) | u64::from(lo)
}

fn set_hi(v: u64, hi: u32) -> u64 {
    (v & 0xffff_ffff) | (u64::from(hi) << 32)
}

impl DmaEngine {
    fn lock(&self) -> MutexGuard<'_, Regs> {
        self.regs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The RAM behind BAR2 (what a client sees through its mmap).
    pub fn ram(&self) -> &Arc<SharedMemory> {
        &self.ram
    }

    /// Transfers completed successfully.
    pub fn completed(&self) -> u32 {
        self.lock().completed
    }

    fn read_reg(&self, reg: u64) -> u32 {
        let r = self.lock();
        match reg {
            DMA_REG_ID => DMA_ID,
            DMA_REG_MAX_LEN => DMA_MAX_LEN,
            DMA_REG_SRC_LO => r.src as u32,
            DMA_REG_SRC_HI => (r.src >> 32) as u32,
            DMA_REG_DST_LO => r.dst as u32,
            DMA_REG_DST_HI => (r.dst >> 32) as u32,
            DMA_REG_LEN => r.len,
            DMA_REG_FLAGS => r.flags,
            DMA_REG_STATUS => r.status,
            DMA_REG_ERROR => r.error,
            DMA_REG_COMPLETED => r.completed,
            _ => 0,
        }
    }

    fn write_reg(&self, reg: u64, value: u32, mask: u32) {
        let mut lower = false;
        {
            let mut r = self.lock();
            let merge = |old: u32| (old & !mask) | (value & mask);
            match reg {
                DMA_REG_SRC_LO => r.src = set_lo(r.src, merge(r.src as u32)),
                DMA_REG_SRC_HI => r.src = set_hi(r.src, merge((r.src >> 32) as u32)),
                DMA_REG_DST_LO => r.dst = set_lo(r.dst, merge(r.dst as u32)),
                DMA_REG_DST_HI => r.dst = set_hi(r.dst, merge((r.dst >> 32) as u32)),
                DMA_REG_LEN => r.len = merge(r.len),
                DMA_REG_FLAGS => r.flags = merge(r.flags) & (DMA_FLAG_SRC_RAM | DMA_FLAG_DST_RAM),
                DMA_REG_STATUS => {
                    r.status &= !(value & mask & (DMA_STATUS_DONE | DMA_STATUS_ERROR));
                    lower = r.status & (DMA_STATUS_DONE | DMA_STATUS_ERROR) == 0;
                }
                DMA_REG_DOORBELL => {}
                _ => tracing::debug!(reg, "dma: write to read-only register dropped"),
            }
        }
        if reg == DMA_REG_DOORBELL {
            self.doorbell();
        } else if lower {
            self.irq.lower_intx();
        }
    }

    fn ram_range(&self, offset: u64, len: u32) -> std::result::Result<(), u32> {
        match offset.checked_add(u64::from(len)) {
            Some(end) if end <= self.ram.len() => Ok(()),
            _ => Err(DMA_ERR_RAM_RANGE),
        }
    }

    fn copy(&self, job: Regs) -> std::result::Result<(), u32> {
        if job.len == 0 || job.len > DMA_MAX_LEN {
            return Err(DMA_ERR_LEN);
        }
        let host_err = |e: PciError, code: u32| match e {
            PciError::BusMasterDisabled | PciError::NotOpen => DMA_ERR_BUS_MASTER,
            PciError::Stopped => DEFERRED,
            _ => code,
        };
        if self.irq.is_stopped() {
            return Err(DEFERRED);
        }
        let mut buf = vec![0u8; job.len as usize];
        if job.flags & DMA_FLAG_SRC_RAM != 0 {
            self.ram_range(job.src, job.len)?;
            self.ram
                .read_at(job.src, &mut buf)
                .map_err(|_| DMA_ERR_RAM_RANGE)?;
        } else {
            self.irq
                .dma_read(job.src, &mut buf)
                .map_err(|e| host_err(e, DMA_ERR_READ))?;
        }
        if job.flags & DMA_FLAG_DST_RAM != 0 {
            self.ram_range(job.dst, job.len)?;
            self.ram
                .write_at(job.dst, &buf)
                .map_err(|_| DMA_ERR_RAM_RANGE)?;
        } else {
            self.irq
                .dma_write(job.dst, &buf)
                .map_err(|e| host_err(e, DMA_ERR_WRITE))?;
        }
        Ok(())
    }

    fn doorbell(&self) {
        let job = {
            let mut r = self.lock();
            if r.status & DMA_STATUS_BUSY != 0 {
                r.status |= DMA_STATUS_ERROR;
                r.error = DMA_ERR_BUSY;
                None
            } else {
                r.status |= DMA_STATUS_BUSY;
                Some(*r)
            }
        };
        self.execute(job);
    }

    /// Runs `job` (BUSY is set) and completes it, or reports the BUSY
    /// error if `None`; leaves BUSY set if the device is stopped.
    fn execute(&self, job: Option<Regs>) {
        if let Some(job) = job {
            let result = self.copy(job);
            let mut r = self.lock();
            if result == Err(DEFERRED) {
                tracing::debug!("dma: device stopped, transfer deferred");
                return;
            }
            r.status &= !DMA_STATUS_BUSY;
            match result {
                Ok(()) => {
                    r.status |= DMA_STATUS_DONE;
                    r.error = DMA_ERR_NONE;
                    r.completed = r.completed.wrapping_add(1);
                }
                Err(code) => {
                    tracing::debug!(code, "dma: transfer failed");
                    r.status |= DMA_STATUS_ERROR;
                    r.error = code;
                }
            }
        }
        if let Err(e) = self.irq.raise(0) {
            tracing::debug!("dma: completion interrupt not delivered: {e}");
        }
    }
}

impl PciFunction for DmaEngine {
    fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]) -> Result<()> {
        if bar != 0 {
            data.fill(0xff);
            return Ok(());
        }
        crate::read_dword_piece(offset, self.read_reg(offset & !3), data);
        Ok(())
    }

    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) -> Result<()> {
        if bar != 0 {
            return Ok(());
        }
        let (reg, value, mask) = crate::write_dword_piece(offset, data);
        self.write_reg(reg, value, mask);
        Ok(())
    }

    fn supports_reset(&self) -> bool {
        true
    }

    fn reset(&self) -> Result<()> {
        *self.lock() = Regs::default();
        Ok(())
    }

    fn migration(&self) -> Option<&dyn FunctionMigration> {
        Some(self)
    }
}

impl FunctionMigration for DmaEngine {
    fn save_state(&self, out: &mut Vec<u8>) -> Result<()> {
        let r = *self.lock();
        let mut w = StateWriter::new();
        w.header(&DMA_MIG_MAGIC.to_le_bytes(), DMA_MIG_MAJOR, DMA_MIG_MINOR)
            .u64(r.src)
            .u64(r.dst)
            .u32(r.len)
            .u32(r.flags)
            .u32(r.status)
            .u32(r.error)
            .u32(r.completed);
        out.extend_from_slice(&w.into_vec());
        Ok(())
    }

    fn load_state(&self, data: &[u8]) -> Result<()> {
        let mut rd = StateReader::new(data);
        let _minor = rd.header(&DMA_MIG_MAGIC.to_le_bytes(), DMA_MIG_MAJOR)?;
        let r = Regs {
            src: rd.u64()?,
            dst: rd.u64()?,
            len: rd.u32()?,
            flags: rd.u32()?,
            status: rd.u32()?,
            error: rd.u32()?,
            completed: rd.u32()?,
        };
        rd.finish()?;
        let status_bits = DMA_STATUS_BUSY | DMA_STATUS_DONE | DMA_STATUS_ERROR;
        if r.flags & !(DMA_FLAG_SRC_RAM | DMA_FLAG_DST_RAM) != 0
            || r.status & !status_bits != 0
            || r.error > DMA_ERR_BUSY
        {
            return Err(Errno::INVAL);
        }
        *self.lock() = r;
        Ok(())
    }

    fn step(&self, from: MigState, to: MigState) -> Result<()> {
        let resumes =
            from == MigState::Stop && matches!(to, MigState::Running | MigState::RunningP2p);
        if resumes {
            // A copy rung (or interrupted) while stopped runs now.
            let job = {
                let r = self.lock();
                (r.status & DMA_STATUS_BUSY != 0).then_some(*r)
            };
            if job.is_some() {
                self.execute(job);
            }
        }
        Ok(())
    }
}

/// How to create an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaOptions {
    /// Size of the RAM BAR: a power of two from 4 KiB to 1 GiB.
    pub ram_size: u64,
    /// Device serial number reported in the DSN capability.
    pub serial: u64,
}

impl Default for DmaOptions {
    fn default() -> Self {
        DmaOptions {
            ram_size: 64 * 1024,
            serial: 0,
        }
    }
}

/// A registered engine.
pub type DmaDevice = RegisteredDevice<PciDevice<DmaEngine>>;

/// The PCI declaration of the engine around `ram`.
pub fn pci_config(ram: Arc<SharedMemory>, serial: u64) -> PciConfig {
    let mut bars: [Option<Bar>; 6] = Default::default();
    bars[0] = Some(Bar::mem32(DMA_BAR0_SIZE));
    bars[usize::from(DMA_RAM_BAR)] = Some(Bar::mem64(ram.len()).prefetchable().with_memory(ram));
    PciConfig {
        header: PciHeader {
            vendor_id: UVFIO_VENDOR_ID,
            device_id: DMA_DEVICE_ID,
            subsystem_vendor_id: UVFIO_VENDOR_ID,
            subsystem_id: DMA_DEVICE_ID,
            revision: 1,
            class_code: 0x08,
            subclass: 0x01,
            interrupt_pin: 1,
            ..Default::default()
        },
        bars,
        capabilities: vec![
            Capability::PowerManagement(PmCap::default()),
            Capability::Msix(MsixCap {
                table_size: 1,
                table_bar: 0,
                table_offset: DMA_MSIX_TABLE,
                pba_bar: 0,
                pba_offset: DMA_MSIX_PBA,
            }),
            Capability::PciExpress(PcieCap {
                flr: true,
                ..Default::default()
            }),
        ],
        extended_capabilities: vec![ExtCapability::DeviceSerialNumber(serial)],
        ..Default::default()
    }
}

/// Creates and registers an engine called `name` in `group`.
pub fn create(
    registry: &Registry,
    name: &str,
    group: GroupId,
    options: &DmaOptions,
) -> std::result::Result<DmaDevice, DriverError> {
    let size = options.ram_size;
    if !size.is_power_of_two() || !(4096..=1 << 30).contains(&size) {
        return Err(DriverError::InvalidOption {
            name: "ram_size",
            value: size.to_string(),
        });
    }
    let ram = Arc::new(SharedMemory::new(name, size).map_err(DriverError::Os)?);
    let device = PciDevice::new(pci_config(ram.clone(), options.serial), |irq| DmaEngine {
        regs: Mutex::new(Regs::default()),
        ram,
        irq,
    })?;
    crate::register(registry, name, group, device)
}

#[cfg(test)]
mod tests;
