//! [`PciDevice`]: a vfio-pci style device around a driver's [`PciFunction`].
//!
//! The wrapper implements [`DeviceOps`] with vfio-pci's region and IRQ
//! indexes, so a driver only writes its BAR handlers:
//!
//! - **CONFIG** (index 7) goes through [`ConfigSpace`] (masks, BAR sizing,
//!   capabilities), after the function's optional [`PciFunction::config_write`]
//!   hook.
//! - **BARs** (indexes 0–5) are split into naturally aligned 4/2/1-byte
//!   pieces. Pieces in the MSI-X table or PBA are served by the wrapper;
//!   pieces of a RAM BAR ([`Bar::with_memory`]) go to its memory; the rest
//!   go to [`PciFunction::bar_read`]/[`PciFunction::bar_write`]. An access to
//!   a memory (I/O) BAR while the command register's memory (I/O) decode
//!   bit is clear fails with EIO, as vfio-pci does.
//! - **ROM** (6) is read only; **VGA** (8) is never implemented.
//! - **IRQs**: an [`IrqLines`] configured per vfio-pci — INTx (1 vector,
//!   MASKABLE|AUTOMASKED) if a pin is declared, MSI (the declared vectors),
//!   MSI-X (the table size), ERR (1, PCIe only), REQ (1); INTx, MSI and
//!   MSI-X are mutually exclusive.
//!
//! The function raises interrupts through a [`PciHandle`], which picks the
//! mechanism like hardware does: MSI-X when enabled (in config space or by
//! binding its eventfds), honouring the function mask and per-vector masks
//! (masked vectors latch their PBA bit and fire on unmask); else MSI,
//! honouring per-vector mask bits; else INTx unless the command register
//! disables it (the status INTERRUPT bit follows the line either way). The
//! same handle gates DMA on the bus-master bit.
//!
//! **Migration**: a function that returns a
//! [`crate::migration::FunctionMigration`] from [`PciFunction::migration`]
//! makes the device migratable ([`DeviceOps::migration`]); the wrapper
//! carries config space, MSI-X, interrupt state and RAM BARs in the
//! stream and, while the device is stopped, latches interrupts and refuses
//! DMA through the [`PciHandle`] (see [`crate::migration`]).
//!
//! Locking: one mutex over config space, MSI-X table and INTx state. BAR
//! handlers run without it, so they may raise interrupts; the
//! `config_write` hook runs *with* it and must not use the [`PciHandle`].
//! DMA through the handle holds a read lock that stopping the device takes
//! for writing, so STOP waits for DMA in flight.

use std::collections::BTreeSet;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use uvfio_core::{
    CloseReason, DeviceFlags, DeviceInfo, DeviceOps, Dma, Errno, IrqFlags, IrqIndexConfig, IrqInfo,
    IrqLines, MigrationOps, OpenContext, RegionCap, RegionFlags, RegionInfo, RegionMmap, Result,
    SetIrqs, SharedMemory, SparseArea,
};

use crate::bar::{Bar, Rom, PCI_NUM_BARS};
use crate::cap::msix::MsixTable;
use crate::cap::MsixCap;
use crate::config::{BarInfo, ConfigSpace, PciConfig};
use crate::error::PciError;
use crate::index::*;
use crate::migration::{FunctionMigration, Phase};
use crate::regs::{Command, Status};

/// The interrupt indexes of a function, as GET_IRQ_INFO reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PciIrqs {
    /// INTx (one vector).
    pub intx: bool,
    /// MSI vectors (at most 32).
    pub msi: u32,
    /// MSI-X vectors (at most 2048).
    pub msix: u32,
    /// ERR (one vector).
    pub err: bool,
    /// REQ (one vector).
    pub req: bool,
}

impl PciIrqs {
    /// vfio-pci's rules: INTx if a pin is declared, MSI/MSI-X from the
    /// capabilities, ERR if PCI Express, REQ always.
    pub fn derive(config: &PciConfig) -> Self {
        PciIrqs {
            intx: config.header.interrupt_pin != 0,
            msi: config.msi().map_or(0, |m| m.vectors),
            msix: config.msix().map_or(0, |m| m.table_size),
            err: config.is_pcie(),
            req: true,
        }
    }

    fn count(&self, index: u32) -> u32 {
        match index {
            VFIO_PCI_INTX_IRQ_INDEX => u32::from(self.intx),
            VFIO_PCI_MSI_IRQ_INDEX => self.msi,
            VFIO_PCI_MSIX_IRQ_INDEX => self.msix,
            VFIO_PCI_ERR_IRQ_INDEX => u32::from(self.err),
            VFIO_PCI_REQ_IRQ_INDEX => u32::from(self.req),
            _ => 0,
        }
    }

    fn lines(&self) -> IrqLines {
        let cfg = |index: u32, flags: IrqFlags, exclusive: bool| IrqIndexConfig {
            info: IrqInfo {
                index,
                flags: IrqFlags::EVENTFD | flags,
                count: self.count(index),
            },
            exclusive,
        };
        IrqLines::new(&[
            cfg(
                VFIO_PCI_INTX_IRQ_INDEX,
                IrqFlags::MASKABLE | IrqFlags::AUTOMASKED,
                true,
            ),
            cfg(VFIO_PCI_MSI_IRQ_INDEX, IrqFlags::NORESIZE, true),
            cfg(VFIO_PCI_MSIX_IRQ_INDEX, IrqFlags::NORESIZE, true),
            cfg(VFIO_PCI_ERR_IRQ_INDEX, IrqFlags::NORESIZE, false),
            cfg(VFIO_PCI_REQ_IRQ_INDEX, IrqFlags::NORESIZE, false),
        ])
    }
}

/// Reporting deviations some emulated devices (the kernel's mtty sample)
/// have from vfio-pci. All off by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PciQuirks {
    /// Report this size for the CONFIG region (mtty reports 0xff); at most
    /// the config space's size.
    pub config_region_size: Option<u64>,
    /// Unimplemented regions report READ|WRITE (still size 0).
    pub absent_regions_rw: bool,
    /// An IRQ index with no vectors fails GET_IRQ_INFO with EINVAL and
    /// SET_IRQS with ENOTTY, instead of reporting count 0.
    pub absent_irqs_einval: bool,
}

/// What the [`PciFunction::config_write`] hook did with a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigWrite {
    /// Apply the write through the masks.
    Default,
    /// The hook applied it (or dropped it) itself.
    Handled,
}

/// A PCI function's behaviour: what a driver implements.
///
/// Handlers get naturally aligned pieces of 1, 2 or 4 bytes. Errors are
/// errnos returned to the user as is.
pub trait PciFunction: Send + Sync + 'static {
    /// Reads `data.len()` bytes of BAR `bar` at `offset`. Default: all-ones.
    fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]) -> Result<()> {
        let _ = (bar, offset);
        data.fill(0xff);
        Ok(())
    }

    /// Writes `data` to BAR `bar` at `offset`. Default: dropped.
    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) -> Result<()> {
        let _ = (bar, offset, data);
        Ok(())
    }

    /// Sees each config write piece first; return [`ConfigWrite::Handled`]
    /// to replace the default masked write. Runs under the config lock: do
    /// not use the [`PciHandle`] here.
    fn config_write(&self, config: &mut ConfigSpace, offset: u16, data: &[u8]) -> ConfigWrite {
        let _ = (config, offset, data);
        ConfigWrite::Default
    }

    /// Whether the function can be reset (`VFIO_DEVICE_FLAGS_RESET`).
    fn supports_reset(&self) -> bool {
        false
    }

    /// Resets the function's own state; the wrapper resets config space.
    fn reset(&self) -> Result<()> {
        Ok(())
    }

    /// The device was opened by its first user.
    fn open(&self, ctx: &OpenContext) -> Result<()> {
        let _ = ctx;
        Ok(())
    }

    /// The last user closed the device.
    fn close(&self) {}

    /// Migration support: return the function's state (de)serialiser to
    /// make the device migratable. The PCI layer adds config space, MSI-X,
    /// interrupt state and RAM BARs to the stream and quiesces interrupts
    /// and DMA while stopped ([`crate::migration`]). Default: none.
    fn migration(&self) -> Option<&dyn FunctionMigration> {
        None
    }
}

/// How [`PciHandle::raise`] disposed of an interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// An eventfd was signalled.
    Signalled,
    /// Masked by the device's own state (MSI-X function/vector mask, MSI
    /// mask bit, INTx disable): latched as pending, delivered on unmask.
    /// Also: the device is stopped for migration; delivered when it runs
    /// again (on the destination, if it migrates meanwhile).
    Latched,
    /// Not signalled: no eventfd bound, or masked by SET_IRQS (the core
    /// keeps a pending bit for the latter).
    NotSignalled,
}

pub(crate) struct State {
    pub(crate) config: ConfigSpace,
    pub(crate) msix: Option<MsixTable>,
    pub(crate) intx_asserted: bool,
    pub(crate) intx_blocked: bool,
    /// Stopped for migration: interrupts are latched, DMA refused.
    pub(crate) stopped: bool,
    /// Vectors raised while stopped.
    pub(crate) latched: BTreeSet<u32>,
    /// ERR signalled while stopped.
    pub(crate) err_latched: bool,
}

impl State {
    /// Function reset: keeps `stopped` (the migration state is the
    /// core's), drops what was latched.
    fn reset(&mut self) {
        self.config.reset();
        if let Some(t) = &mut self.msix {
            *t = MsixTable::new(t.len());
        }
        self.intx_asserted = false;
        self.intx_blocked = false;
        self.latched.clear();
        self.err_latched = false;
    }

    /// Whether INTx is the mechanism a raise would use now.
    fn intx_mode(&self, irqs: &IrqLines) -> bool {
        !(self.config.msix_enabled()
            || irqs.enabled(VFIO_PCI_MSIX_IRQ_INDEX)
            || self.config.msi_enabled()
            || irqs.enabled(VFIO_PCI_MSI_IRQ_INDEX))
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    irqs: IrqLines,
    pub(crate) counts: PciIrqs,
    dma: Mutex<Option<Dma>>,
    /// True while stopped; DMA holds it for reading during the access.
    run: RwLock<bool>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run_write(&self) -> std::sync::RwLockWriteGuard<'_, bool> {
        self.run.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Quiesces: waits for DMA in flight, then latches interrupts and
    /// refuses DMA.
    pub(crate) fn stop(&self) {
        let mut run = self.run_write();
        *run = true;
        self.lock().stopped = true;
    }

    /// Back to running: delivers what became deliverable while stopped and
    /// what was latched, in one critical section (so nothing overtakes).
    pub(crate) fn resume(&self) {
        let mut run = self.run_write();
        *run = false;
        let mut st = self.lock();
        drop(run);
        st.stopped = false;
        self.deliver_pending(&mut st);
        for v in std::mem::take(&mut st.latched) {
            if let Err(e) = self.raise(&mut st, v) {
                tracing::warn!(vector = v, "interrupt latched while stopped lost: {e}");
            }
        }
        if std::mem::take(&mut st.err_latched) {
            if let Err(e) = self.trigger(VFIO_PCI_ERR_IRQ_INDEX, 0) {
                tracing::warn!("error interrupt latched while stopped lost: {e}");
            }
        }
    }

    /// Back to running without delivering anything (reset, close).
    pub(crate) fn unstop(&self) {
        let mut run = self.run_write();
        *run = false;
        let mut st = self.lock();
        st.stopped = false;
        st.latched.clear();
        st.err_latched = false;
    }

    fn trigger(&self, index: u32, vector: u32) -> std::result::Result<Delivery, PciError> {
        match self.irqs.trigger(index, vector) {
            Ok(true) => Ok(Delivery::Signalled),
            Ok(false) => Ok(Delivery::NotSignalled),
            Err(e) => Err(PciError::Irq(e)),
        }
    }

    fn raise(&self, st: &mut State, vector: u32) -> std::result::Result<Delivery, PciError> {
        if st.stopped {
            let max = self.counts.msix.max(self.counts.msi).max(1);
            if vector >= max {
                return Err(PciError::VectorInvalid {
                    index: if self.counts.msix > 0 {
                        VFIO_PCI_MSIX_IRQ_INDEX
                    } else {
                        VFIO_PCI_MSI_IRQ_INDEX
                    },
                    vector,
                });
            }
            st.latched.insert(vector);
            return Ok(Delivery::Latched);
        }
        let cfg_msix = st.config.msix_enabled();
        if cfg_msix || self.irqs.enabled(VFIO_PCI_MSIX_IRQ_INDEX) {
            if vector >= self.counts.msix {
                return Err(PciError::VectorInvalid {
                    index: VFIO_PCI_MSIX_IRQ_INDEX,
                    vector,
                });
            }
            let fmask = st.config.msix_function_masked();
            if let (true, Some(t)) = (cfg_msix, st.msix.as_mut()) {
                if fmask || t.masked(vector) {
                    t.set_pending(vector, true);
                    return Ok(Delivery::Latched);
                }
            }
            return self.trigger(VFIO_PCI_MSIX_IRQ_INDEX, vector);
        }
        let cfg_msi = st.config.msi_enabled();
        if cfg_msi || self.irqs.enabled(VFIO_PCI_MSI_IRQ_INDEX) {
            if vector >= self.counts.msi {
                return Err(PciError::VectorInvalid {
                    index: VFIO_PCI_MSI_IRQ_INDEX,
                    vector,
                });
            }
            if cfg_msi && st.config.msi_masked(vector) {
                st.config.set_msi_pending(vector, true);
                return Ok(Delivery::Latched);
            }
            return self.trigger(VFIO_PCI_MSI_IRQ_INDEX, vector);
        }
        if !self.counts.intx {
            return Ok(Delivery::NotSignalled);
        }
        st.intx_asserted = true;
        st.config.set_status(Status::INTERRUPT, true);
        if st.config.command().contains(Command::INTX_DISABLE) {
            st.intx_blocked = true;
            return Ok(Delivery::Latched);
        }
        self.trigger(VFIO_PCI_INTX_IRQ_INDEX, 0)
    }

    /// Delivers what became deliverable after a config or table write
    /// (nothing while stopped: [`Shared::resume`] calls it again).
    fn deliver_pending(&self, st: &mut State) {
        if st.stopped {
            return;
        }
        let mut fire: Vec<(u32, u32)> = Vec::new();
        if st.config.msix_enabled() && !st.config.msix_function_masked() {
            if let Some(t) = st.msix.as_mut() {
                for v in 0..t.len() {
                    if t.pending(v) && !t.masked(v) {
                        t.set_pending(v, false);
                        fire.push((VFIO_PCI_MSIX_IRQ_INDEX, v));
                    }
                }
            }
        }
        if st.config.msi_enabled() {
            for v in 0..st.config.msi_vectors() {
                if st.config.msi_pending(v) && !st.config.msi_masked(v) {
                    st.config.set_msi_pending(v, false);
                    fire.push((VFIO_PCI_MSI_IRQ_INDEX, v));
                }
            }
        }
        if st.intx_blocked && !st.config.command().contains(Command::INTX_DISABLE) {
            st.intx_blocked = false;
            if st.intx_asserted {
                fire.push((VFIO_PCI_INTX_IRQ_INDEX, 0));
            }
        }
        for (index, vector) in fire {
            if let Err(e) = self.irqs.trigger(index, vector) {
                tracing::warn!(index, vector, "pending interrupt lost: {e}");
            }
        }
    }
}

/// The function's side of its device: raise interrupts, DMA, look at
/// config space. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct PciHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PciHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciHandle").finish_non_exhaustive()
    }
}

impl PciHandle {
    /// Raises interrupt `vector`: MSI-X if enabled, else MSI if enabled,
    /// else INTx (the vector is then ignored: there is one pin) unless
    /// INTx is disabled in the command register. INTx stays asserted
    /// (status INTERRUPT bit) until [`PciHandle::lower_intx`].
    pub fn raise(&self, vector: u32) -> std::result::Result<Delivery, PciError> {
        let mut st = self.shared.lock();
        self.shared.raise(&mut st, vector)
    }

    /// Deasserts INTx: clears the status INTERRUPT bit and forgets an
    /// interrupt held back by INTx-disable (or, in INTx mode, latched
    /// while stopped for migration: a level that went away).
    pub fn lower_intx(&self) {
        let mut st = self.shared.lock();
        if st.stopped && st.intx_mode(&self.shared.irqs) {
            st.latched.clear();
        }
        st.intx_asserted = false;
        st.intx_blocked = false;
        st.config.set_status(Status::INTERRUPT, false);
    }

    /// Whether INTx is asserted.
    pub fn intx_asserted(&self) -> bool {
        self.shared.lock().intx_asserted
    }

    /// Signals the ERR (AER) interrupt of a PCI Express function (latched
    /// while stopped for migration).
    pub fn signal_error(&self) -> std::result::Result<Delivery, PciError> {
        if !self.shared.counts.err {
            return Err(PciError::VectorInvalid {
                index: VFIO_PCI_ERR_IRQ_INDEX,
                vector: 0,
            });
        }
        let mut st = self.shared.lock();
        if st.stopped {
            st.err_latched = true;
            return Ok(Delivery::Latched);
        }
        drop(st);
        self.shared.trigger(VFIO_PCI_ERR_IRQ_INDEX, 0)
    }

    /// Whether the device is stopped for migration (STOP, STOP_COPY,
    /// RESUMING, or ERROR until reset): interrupts are latched and DMA is
    /// refused.
    pub fn is_stopped(&self) -> bool {
        self.shared.lock().stopped
    }

    /// Whether the function may DMA: the bus-master bit is set.
    pub fn bus_master_enabled(&self) -> bool {
        self.shared
            .lock()
            .config
            .command()
            .contains(Command::MASTER)
    }

    /// The DMA space, if the device is open, bus master is on and the
    /// device is not stopped for migration. The check is made once: a
    /// function that keeps the [`Dma`] must stop using it when told to
    /// stop ([`FunctionMigration::step`]); [`PciHandle::dma_read`] and
    /// [`PciHandle::dma_write`] are checked for their whole duration.
    pub fn dma(&self) -> std::result::Result<Dma, PciError> {
        {
            let st = self.shared.lock();
            if !st.config.command().contains(Command::MASTER) {
                return Err(PciError::BusMasterDisabled);
            }
            if st.stopped {
                return Err(PciError::Stopped);
            }
        }
        self.shared
            .dma
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(PciError::NotOpen)
    }

    fn run_read(&self) -> std::result::Result<std::sync::RwLockReadGuard<'_, bool>, PciError> {
        let run = self.shared.run.read().unwrap_or_else(|e| e.into_inner());
        if *run {
            return Err(PciError::Stopped);
        }
        Ok(run)
    }

    /// Device read of guest memory (needs bus master; refused while
    /// stopped for migration, and stopping waits for it).
    pub fn dma_read(&self, iova: u64, buf: &mut [u8]) -> std::result::Result<(), PciError> {
        let len = buf.len();
        let _run = self.run_read()?;
        self.dma()?
            .read(iova, buf)
            .map_err(|errno| PciError::Dma { iova, len, errno })
    }

    /// Device write of guest memory (needs bus master; refused while
    /// stopped for migration, and stopping waits for it); the core marks
    /// the pages dirty while logging.
    pub fn dma_write(&self, iova: u64, data: &[u8]) -> std::result::Result<(), PciError> {
        let _run = self.run_read()?;
        self.dma()?
            .write(iova, data)
            .map_err(|errno| PciError::Dma {
                iova,
                len: data.len(),
                errno,
            })
    }

    /// Runs `f` on the config space (under its lock).
    pub fn with_config<R>(&self, f: impl FnOnce(&ConfigSpace) -> R) -> R {
        f(&self.shared.lock().config)
    }

    /// Runs `f` on the config space, device side (under its lock).
    pub fn with_config_mut<R>(&self, f: impl FnOnce(&mut ConfigSpace) -> R) -> R {
        f(&mut self.shared.lock().config)
    }

    /// Runs `f` on the MSI-X table, if the function has one.
    pub fn with_msix<R>(&self, f: impl FnOnce(&MsixTable) -> R) -> Option<R> {
        self.shared.lock().msix.as_ref().map(f)
    }

    /// The interrupt state (what SET_IRQS changes).
    pub fn irqs(&self) -> &IrqLines {
        &self.shared.irqs
    }
}

#[derive(Debug)]
pub(crate) struct BarSlot {
    pub(crate) info: BarInfo,
    pub(crate) memory: Option<Arc<SharedMemory>>,
    mmap: Option<RegionMmap>,
    sparse: Vec<SparseArea>,
}

const PAGE: u64 = 4096;

/// The mmap-able areas of a RAM BAR: all of it minus the pages holding
/// MSI-X structures (which the wrapper must see).
fn sparse_areas(size: u64, holes: &[Range<u64>]) -> Vec<SparseArea> {
    let mut holes: Vec<Range<u64>> = holes
        .iter()
        .map(|h| (h.start / PAGE * PAGE)..h.end.div_ceil(PAGE) * PAGE)
        .collect();
    holes.sort_by_key(|h| h.start);
    let mut areas = Vec::new();
    let mut pos = 0;
    for h in holes {
        if h.start > pos {
            areas.push(SparseArea {
                offset: pos,
                size: h.start - pos,
            });
        }
        pos = pos.max(h.end);
    }
    if pos < size {
        areas.push(SparseArea {
            offset: pos,
            size: size - pos,
        });
    }
    areas
}

/// Calls `f` for each naturally aligned piece (4, 2 or 1 bytes) of an
/// access of `len` bytes at `offset`, with the piece's offset and its range
/// in the caller's buffer.
pub fn for_each_piece(
    offset: u64,
    len: usize,
    mut f: impl FnMut(u64, Range<usize>) -> Result<()>,
) -> Result<()> {
    let mut pos = 0;
    while pos < len {
        let off = offset + pos as u64;
        let rem = len - pos;
        let n = if off.is_multiple_of(4) && rem >= 4 {
            4
        } else if off.is_multiple_of(2) && rem >= 2 {
            2
        } else {
            1
        };
        f(off, pos..pos + n)?;
        pos += n;
    }
    Ok(())
}

/// A PCI device: config space, BARs and interrupts around a function `F`.
pub struct PciDevice<F: PciFunction> {
    pub(crate) function: F,
    pub(crate) shared: Arc<Shared>,
    pub(crate) bars: [Option<BarSlot>; PCI_NUM_BARS],
    pub(crate) rom: Option<Rom>,
    pub(crate) msix: Option<MsixCap>,
    quirks: PciQuirks,
    config_region_size: u64,
    pub(crate) mig: Mutex<Phase>,
}

impl<F: PciFunction + std::fmt::Debug> std::fmt::Debug for PciDevice<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciDevice")
            .field("function", &self.function)
            .field("bars", &self.bars)
            .finish_non_exhaustive()
    }
}

enum Target<'a> {
    MsixTable(u64),
    MsixPba(u64),
    Memory(&'a SharedMemory),
    Function,
}

impl<F: PciFunction> PciDevice<F> {
    /// Lays out `config` and builds the function with a handle on it.
    pub fn new(
        config: PciConfig,
        make: impl FnOnce(PciHandle) -> F,
    ) -> std::result::Result<Self, PciError> {
        Self::try_new(config, |h| Ok::<F, PciError>(make(h)))
    }

    /// Like [`PciDevice::new`], with a fallible constructor.
    pub fn try_new<E: From<PciError>>(
        config: PciConfig,
        make: impl FnOnce(PciHandle) -> std::result::Result<F, E>,
    ) -> std::result::Result<Self, E> {
        let cs = ConfigSpace::new(&config)?;
        let counts = config.irqs.unwrap_or_else(|| PciIrqs::derive(&config));
        if counts.msi > 32 {
            return Err(PciError::MsiVectorsInvalid(counts.msi).into());
        }
        if counts.msix > 2048 {
            return Err(PciError::MsixTableSizeInvalid(counts.msix).into());
        }
        let msix = config.msix();
        let mut bars: [Option<BarSlot>; PCI_NUM_BARS] = Default::default();
        for (i, bar) in config.bars.iter().enumerate() {
            let (Some(bar), Some(info)) = (bar, cs.bar(i as u8)) else {
                continue;
            };
            bars[i] = Some(Self::slot(i as u8, bar, info, msix.as_ref())?);
        }
        let config_region_size = config
            .quirks
            .config_region_size
            .map_or(cs.len() as u64, |s| s.min(cs.len() as u64));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                msix: msix.map(|m| MsixTable::new(m.table_size)),
                config: cs,
                intx_asserted: false,
                intx_blocked: false,
                stopped: false,
                latched: BTreeSet::new(),
                err_latched: false,
            }),
            irqs: counts.lines(),
            counts,
            dma: Mutex::new(None),
            run: RwLock::new(false),
        });
        let function = make(PciHandle {
            shared: shared.clone(),
        })?;
        Ok(PciDevice {
            function,
            shared,
            bars,
            rom: config.rom,
            msix,
            quirks: config.quirks,
            config_region_size,
            mig: Mutex::new(Phase::Idle),
        })
    }

    fn slot(
        index: u8,
        bar: &Bar,
        info: BarInfo,
        msix: Option<&MsixCap>,
    ) -> std::result::Result<BarSlot, PciError> {
        let mut slot = BarSlot {
            info,
            memory: bar.memory.clone(),
            mmap: None,
            sparse: Vec::new(),
        };
        if let Some(mem) = &bar.memory {
            if bar.size >= PAGE {
                let fd: OwnedFd = mem
                    .fd()
                    .try_clone_to_owned()
                    .map_err(|e| PciError::Os(Errno::from_io_error(&e).unwrap_or(Errno::IO)))?;
                let mut holes = Vec::new();
                if let Some(m) = msix {
                    if m.table_bar == index {
                        holes.push(m.table_range());
                    }
                    if m.pba_bar == index {
                        holes.push(m.pba_range());
                    }
                }
                slot.sparse = sparse_areas(bar.size, &holes);
                slot.mmap = Some(RegionMmap {
                    fd: Arc::new(fd),
                    offset: 0,
                });
            }
        }
        Ok(slot)
    }

    /// The function.
    pub fn function(&self) -> &F {
        &self.function
    }

    /// Gives the function back (after unregister).
    pub fn into_function(self) -> F {
        self.function
    }

    /// The function, mutably (before register).
    pub fn function_mut(&mut self) -> &mut F {
        &mut self.function
    }

    /// A handle on the device's interrupts, DMA and config space.
    pub fn handle(&self) -> PciHandle {
        PciHandle {
            shared: self.shared.clone(),
        }
    }

    /// Runs `f` on the config space.
    pub fn with_config<R>(&self, f: impl FnOnce(&ConfigSpace) -> R) -> R {
        f(&self.shared.lock().config)
    }

    fn absent(&self, index: u32) -> RegionInfo {
        let mut r = RegionInfo::absent(index);
        if self.quirks.absent_regions_rw {
            r.flags = RegionFlags::READ | RegionFlags::WRITE;
        }
        r
    }

    fn bar_slot(&self, index: u32) -> Result<&BarSlot> {
        let slot = self
            .bars
            .get(index as usize)
            .and_then(Option::as_ref)
            .ok_or(Errno::INVAL)?;
        let cmd = self.shared.lock().config.command();
        let need = if slot.info.kind.is_memory() {
            Command::MEMORY
        } else {
            Command::IO
        };
        if !cmd.contains(need) {
            return Err(Errno::IO);
        }
        Ok(slot)
    }

    fn target<'a>(&self, bar: u8, slot: &'a BarSlot, off: u64) -> Target<'a> {
        if let Some(m) = &self.msix {
            if m.table_bar == bar && m.table_range().contains(&off) {
                return Target::MsixTable(off - m.table_range().start);
            }
            if m.pba_bar == bar && m.pba_range().contains(&off) {
                return Target::MsixPba(off - m.pba_range().start);
            }
        }
        match &slot.memory {
            Some(mem) => Target::Memory(mem),
            None => Target::Function,
        }
    }

    fn touches_msix(&self, bar: u8, offset: u64, len: usize) -> bool {
        let end = offset + len as u64;
        self.msix.is_some_and(|m| {
            (m.table_bar == bar && m.table_range().start < end && offset < m.table_range().end)
                || (m.pba_bar == bar && m.pba_range().start < end && offset < m.pba_range().end)
        })
    }

    fn bar_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let slot = self.bar_slot(index)?;
        let bar = index as u8;
        if let Some(mem) = &slot.memory {
            if !self.touches_msix(bar, offset, buf.len()) {
                return mem.read_at(offset, buf);
            }
        }
        for_each_piece(offset, buf.len(), |off, r| {
            let piece = &mut buf[r];
            match self.target(bar, slot, off) {
                Target::MsixTable(rel) => {
                    if let Some(t) = &self.shared.lock().msix {
                        t.read_table(rel, piece);
                    }
                    Ok(())
                }
                Target::MsixPba(rel) => {
                    if let Some(t) = &self.shared.lock().msix {
                        t.read_pba(rel, piece);
                    }
                    Ok(())
                }
                Target::Memory(mem) => mem.read_at(off, piece),
                Target::Function => self.function.bar_read(bar, off, piece),
            }
        })
    }

    fn bar_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        let slot = self.bar_slot(index)?;
        let bar = index as u8;
        if let Some(mem) = &slot.memory {
            if !self.touches_msix(bar, offset, data.len()) {
                return mem.write_at(offset, data);
            }
        }
        for_each_piece(offset, data.len(), |off, r| {
            let piece = &data[r];
            match self.target(bar, slot, off) {
                Target::MsixTable(rel) => {
                    let mut st = self.shared.lock();
                    if let Some(t) = st.msix.as_mut() {
                        t.write_table(rel, piece);
                    }
                    self.shared.deliver_pending(&mut st);
                    Ok(())
                }
                Target::MsixPba(rel) => {
                    tracing::debug!(bar, offset = rel, "write to the MSI-X PBA dropped");
                    Ok(())
                }
                Target::Memory(mem) => mem.write_at(off, piece),
                Target::Function => self.function.bar_write(bar, off, piece),
            }
        })
    }

    fn rom_read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let rom = self.rom.as_ref().ok_or(Errno::INVAL)?;
        for (i, b) in buf.iter_mut().enumerate() {
            let at = usize::try_from(offset + i as u64).map_err(|_| Errno::INVAL)?;
            *b = rom.data.get(at).copied().unwrap_or(0xff);
        }
        Ok(())
    }

    fn config_read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let st = self.shared.lock();
        for_each_piece(offset, buf.len(), |off, r| {
            let off = u16::try_from(off).map_err(|_| Errno::INVAL)?;
            st.config.read(off, &mut buf[r]).map_err(Errno::from)
        })
    }

    fn config_write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let flr = {
            let mut st = self.shared.lock();
            for_each_piece(offset, data.len(), |off, r| {
                let off = u16::try_from(off).map_err(|_| Errno::INVAL)?;
                let piece = &data[r];
                match self.function.config_write(&mut st.config, off, piece) {
                    ConfigWrite::Handled => Ok(()),
                    ConfigWrite::Default => st.config.write(off, piece).map_err(Errno::from),
                }
            })?;
            let flr = st.config.take_flr_request();
            self.shared.deliver_pending(&mut st);
            flr
        };
        if flr {
            self.reset_all()?;
        }
        Ok(())
    }

    fn reset_all(&self) -> Result<()> {
        self.shared.lock().reset();
        self.function.reset()
    }
}

impl<F: PciFunction> DeviceOps for PciDevice<F> {
    fn info(&self) -> DeviceInfo {
        let mut flags = DeviceFlags::PCI;
        if self.function.supports_reset() {
            flags |= DeviceFlags::RESET;
        }
        DeviceInfo {
            flags,
            num_regions: VFIO_PCI_NUM_REGIONS,
            num_irqs: VFIO_PCI_NUM_IRQS,
        }
    }

    fn open_device(&self, ctx: &OpenContext) -> Result<()> {
        // The core starts every open in RUNNING.
        self.reset_migration();
        *self.shared.dma.lock().unwrap_or_else(|e| e.into_inner()) = Some(ctx.dma.clone());
        if let Err(e) = self.function.open(ctx) {
            *self.shared.dma.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return Err(e);
        }
        Ok(())
    }

    fn close_device(&self, reason: CloseReason) {
        self.function.close();
        *self.shared.dma.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mut st = self.shared.lock();
        match reason {
            // Like vfio-pci's disable path: the next user gets a reset
            // function.
            CloseReason::Released => st.reset(),
            // A vfio-user client left and may reconnect: config space
            // (BARs, command register, MSI/MSI-X setup) and the MSI-X table
            // stay as programmed; what was latched for the old client's
            // eventfds (gone with it) is dropped.
            CloseReason::Disconnected => {
                st.latched.clear();
                st.err_latched = false;
            }
        }
        drop(st);
        self.reset_migration();
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo> {
        let r = match index {
            VFIO_PCI_BAR0_REGION_INDEX..=VFIO_PCI_BAR5_REGION_INDEX => {
                match &self.bars[index as usize] {
                    Some(slot) => {
                        let mut r = RegionInfo::rw(index, slot.info.size);
                        if let Some(m) = &slot.mmap {
                            r.flags |= RegionFlags::MMAP;
                            r.caps.push(RegionCap::SparseMmap(slot.sparse.clone()));
                            r.mmap = Some(m.clone());
                        }
                        r
                    }
                    None => self.absent(index),
                }
            }
            VFIO_PCI_ROM_REGION_INDEX => match &self.rom {
                Some(rom) => RegionInfo {
                    index,
                    flags: RegionFlags::READ,
                    size: rom.size,
                    ..Default::default()
                },
                None => self.absent(index),
            },
            VFIO_PCI_CONFIG_REGION_INDEX => RegionInfo::rw(index, self.config_region_size),
            _ => self.absent(index),
        };
        Ok(r)
    }

    fn read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        match index {
            VFIO_PCI_BAR0_REGION_INDEX..=VFIO_PCI_BAR5_REGION_INDEX => {
                self.bar_read(index, offset, buf)
            }
            VFIO_PCI_ROM_REGION_INDEX => self.rom_read(offset, buf),
            VFIO_PCI_CONFIG_REGION_INDEX => self.config_read(offset, buf),
            _ => Err(Errno::INVAL),
        }
    }

    fn write(&self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        match index {
            VFIO_PCI_BAR0_REGION_INDEX..=VFIO_PCI_BAR5_REGION_INDEX => {
                self.bar_write(index, offset, data)
            }
            VFIO_PCI_CONFIG_REGION_INDEX => self.config_write(offset, data),
            _ => Err(Errno::INVAL),
        }
    }

    fn irqs(&self) -> Option<&IrqLines> {
        Some(&self.shared.irqs)
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo> {
        let count = self.shared.counts.count(index);
        if count == 0 && (self.quirks.absent_irqs_einval || index == VFIO_PCI_ERR_IRQ_INDEX) {
            return Err(Errno::INVAL);
        }
        self.shared.irqs.info(index)
    }

    fn set_irqs(&self, req: SetIrqs) -> Result<()> {
        if self.quirks.absent_irqs_einval && self.shared.counts.count(req.index) == 0 {
            return Err(Errno::NOTTY);
        }
        self.shared.irqs.set_irqs(req)
    }

    fn reset(&self) -> Result<()> {
        if !self.function.supports_reset() {
            return Err(Errno::NOTTY);
        }
        self.reset_all()?;
        // The core lands a migratable device in RUNNING after a reset.
        self.reset_migration();
        Ok(())
    }

    fn migration(&self) -> Option<&dyn MigrationOps> {
        self.function.migration()?;
        Some(self)
    }

    fn request(&self, count: u32) {
        if !self.shared.counts.req {
            return;
        }
        match self.shared.irqs.trigger(VFIO_PCI_REQ_IRQ_INDEX, 0) {
            Ok(true) => {
                if count.is_multiple_of(10) {
                    tracing::info!(count, "relaying device request to user");
                }
            }
            Ok(false) => {
                if count == 0 {
                    tracing::warn!(
                        "no device request channel registered, blocked until released by user"
                    );
                }
            }
            Err(e) => tracing::warn!(count, "device request failed: {e}"),
        }
    }
}
