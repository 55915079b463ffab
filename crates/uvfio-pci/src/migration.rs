//! Live migration of a PCI function: the device side of VFIO migration v2.
//!
//! A function opts in by returning a [`FunctionMigration`] from
//! [`crate::PciFunction::migration`]. [`crate::PciDevice`] then implements
//! [`uvfio_core::MigrationOps`] (and reports it through
//! [`uvfio_core::DeviceOps::migration`]) and does everything that is common
//! to PCI functions:
//!
//! - **the stream**: config space (values, so BAR addresses, the command
//!   register, MSI/MSI-X configuration and device-set bits come along), the
//!   MSI-X table and PBA, interrupt state, the contents of RAM BARs
//!   ([`crate::Bar::with_memory`]) and, as one opaque section, the
//!   function's own state ([`FunctionMigration::save_state`]);
//! - **validation** on RESUMING → STOP: magic, version, section framing and
//!   lengths, and the device layout must match (down to every config bit
//!   software cannot write: [`crate::ConfigSpace::can_restore`]), else
//!   EINVAL (the core then puts the device in ERROR); the function's
//!   section is validated by the function. Nothing is applied unless
//!   everything validated;
//! - **quiescing**: while the device is stopped (STOP, STOP_COPY, RESUMING,
//!   and ERROR until reset) [`crate::PciHandle::raise`] latches interrupts
//!   instead of signalling them and [`crate::PciHandle::dma_read`] /
//!   [`crate::PciHandle::dma_write`] fail with [`crate::PciError::Stopped`].
//!   Entering STOP waits for DMA already in flight through the handle.
//!   Config space and the MSI-X table keep working, but pending MSI/MSI-X
//!   vectors that become deliverable are held back too. On the way back to
//!   RUNNING the held-back and latched interrupts are delivered (latched
//!   ones are part of the stream, so a destination delivers what its
//!   source latched). Drivers get all of this without code of their own.
//!
//! ## Pre-copy
//!
//! In PRE_COPY the stream's *initial* part is available: the header, the
//! [`SECTION_DEVICE`] identity and a [`SECTION_RAM`] copy of every RAM
//! BAR, taken while the device runs, so that the bulk of the data moves
//! before the downtime. Once read, `save` fails with ENOMSG ("no more data
//! for now"). Everything else is produced when the device stops
//! (PRE_COPY → STOP_COPY) and appended to the same stream; reading then
//! ends with `Ok(0)`. That final part carries, per RAM BAR, a
//! [`SECTION_RAM_DELTA`] with the 4 KiB pages that differ from the copy
//! sent: found by comparing the stopped BAR with the pre-copied bytes
//! (still held in the stream buffer) rather than by tracking writes,
//! because a client writes a mappable BAR through its own mapping, where
//! no write can be seen. A copy torn by a concurrent write is therefore
//! harmless: every page it got wrong differs and is sent again. Entering
//! STOP_COPY from STOP produces the whole stream at once, with full RAM
//! sections and no deltas.
//!
//! ## Stream format (all integers little endian)
//!
//! ```text
//! header   u64 magic = PCI_MIG_MAGIC ("uvfioPCI")
//!          u16 major = 1, u16 minor = 1
//!          u32 flags = 0 (reserved)
//! sections { u32 id; u32 len; u8 payload[len] } …
//!          DEVICE    identity and layout, must come first
//!          CONFIG    config space values (exactly the config space size)
//!          MSIX      table (16 bytes per entry) + PBA (u64s), iff MSI-X
//!          IRQ       u8 intx_asserted, u8 intx_blocked, u8 err_latched,
//!                    u8 0, u32 n, n × u32 vectors latched while stopped
//!          RAM       u32 bar, u32 0, the BAR's bytes; one per RAM BAR
//!          RAM_DELTA u32 bar, u32 0, then runs { u64 offset; u64 len;
//!                    u8 bytes[len] } to the end; at most one per RAM
//!                    BAR, applied over its RAM section (minor 1)
//!          FUNCTION  the function's own state (its format)
//!          END       len 0; last, nothing may follow
//! ```
//!
//! Every section is mandatory where it applies and may appear once. A
//! section id with [`SECTION_OPTIONAL`] set is skipped when unknown (room
//! for minor versions); any other unknown id, a different major version,
//! bad magic, non-zero flags, a truncated stream (no END) or a length
//! that does not match the destination is EINVAL. The helpers
//! [`StateWriter`] and [`StateReader`] are there for functions to encode
//! their own section the same way.

use std::collections::BTreeSet;

use uvfio_core::{Errno, MigFlags, MigState, MigrationOps, Result, SharedMemory};

use crate::bar::{BarKind, PCI_NUM_BARS};
use crate::cap::msix::MsixTable;
use crate::device::{PciDevice, PciFunction};
use crate::regs::*;

/// Magic of a PCI migration stream: `b"uvfioPCI"` as a little-endian u64.
pub const PCI_MIG_MAGIC: u64 = u64::from_le_bytes(*b"uvfioPCI");
/// Major version: a destination refuses any other.
pub const PCI_MIG_VERSION_MAJOR: u16 = 1;
/// Minor version: compatible additions. 1: [`SECTION_RAM_DELTA`] (a
/// destination of minor 0 refuses a stream that has one, as it must).
pub const PCI_MIG_VERSION_MINOR: u16 = 1;
/// Bytes of the stream header.
pub const PCI_MIG_HEADER_LEN: usize = 16;
/// Bytes of a section header (id and length).
pub const PCI_MIG_SECTION_HEADER_LEN: usize = 8;

/// End of the stream (length 0).
pub const SECTION_END: u32 = 0;
/// Device identity and layout; the destination's must match.
pub const SECTION_DEVICE: u32 = 1;
/// Config space values.
pub const SECTION_CONFIG: u32 = 2;
/// MSI-X table and PBA.
pub const SECTION_MSIX: u32 = 3;
/// Interrupt state.
pub const SECTION_IRQ: u32 = 4;
/// Contents of a RAM BAR.
pub const SECTION_RAM: u32 = 5;
/// The function's own state.
pub const SECTION_FUNCTION: u32 = 6;
/// Pages of a RAM BAR that changed after its pre-copy (see the module
/// docs).
pub const SECTION_RAM_DELTA: u32 = 7;
/// Granularity of [`SECTION_RAM_DELTA`]: pages that differ are resent
/// whole.
pub const RAM_DELTA_PAGE: usize = 4096;
/// Flag on a section id: a destination that does not know it skips it.
pub const SECTION_OPTIONAL: u32 = 1 << 31;

/// Largest function section a destination accepts.
pub const FUNCTION_STATE_MAX: usize = 16 << 20;

/// Interrupt vectors that can be latched while stopped (the MSI-X limit).
const MAX_VECTORS: u32 = 2048;

/// A function's side of migration.
///
/// The PCI layer handles config space, MSI-X, interrupts, RAM BARs and the
/// quiescing of DMA and interrupts; the function only (de)serialises its
/// own registers.
pub trait FunctionMigration: Send + Sync {
    /// The features to report. STOP_COPY is always added. Default: all
    /// (the P2P arcs are no-ops unless [`FunctionMigration::step`] acts on
    /// them; PRE_COPY is handled by the PCI layer).
    fn flags(&self) -> MigFlags {
        MigFlags::all()
    }

    /// Appends the function's complete state to `out`. Called with the
    /// device stopped (entering STOP_COPY), and for size estimates.
    fn save_state(&self, out: &mut Vec<u8>) -> Result<()>;

    /// Validates `data` (what [`FunctionMigration::save_state`] produced on
    /// the source) and, only if it is entirely valid, applies it. Bad data
    /// is EINVAL and must leave the function unchanged. Called with the
    /// device stopped (RESUMING → STOP), before the PCI layer applies its
    /// own sections.
    fn load_state(&self, data: &[u8]) -> Result<()>;

    /// Notified of every arc, e.g. to pause the function's own threads on
    /// the way to STOP (called before the PCI layer quiesces) and restart
    /// them on the way back (called after it resumes). An error fails the
    /// arc (the device goes to ERROR). Default: nothing.
    fn step(&self, from: MigState, to: MigState) -> Result<()> {
        let _ = (from, to);
        Ok(())
    }
}

/// Little-endian encoder for migration state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateWriter {
    buf: Vec<u8>,
}

impl StateWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// Appends a bool as one byte (0 or 1).
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    /// Appends a little-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// Appends a little-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// Appends a little-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// Appends raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    /// Appends `len` bytes that `fill` writes in place (zeroed before),
    /// e.g. a large memory read straight into the stream; if `fill` fails,
    /// nothing is appended.
    pub fn fill_with(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<&mut Self> {
        let start = self.buf.len();
        self.buf.resize(start + len, 0);
        if let Err(e) = fill(&mut self.buf[start..]) {
            self.buf.truncate(start);
            return Err(e);
        }
        Ok(self)
    }

    /// Appends a format header: `magic` (its bytes as they are, e.g. a
    /// constant's `to_le_bytes()`), then the major and minor version.
    /// [`StateReader::header`] checks it.
    pub fn header(&mut self, magic: &[u8], major: u16, minor: u16) -> &mut Self {
        self.bytes(magic).u16(major).u16(minor)
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The encoded bytes.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

/// Little-endian decoder for migration state: every read past the end is
/// EINVAL, so a truncated stream fails validation.
#[derive(Debug, Clone)]
pub struct StateReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> StateReader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        StateReader { data, pos: 0 }
    }

    /// The next `n` bytes; EINVAL if fewer remain.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(Errno::INVAL)?;
        let b = self.data.get(self.pos..end).ok_or(Errno::INVAL)?;
        self.pos = end;
        Ok(b)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    /// A bool: 0 or 1, anything else is EINVAL.
    pub fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Errno::INVAL),
        }
    }

    /// Checks a header written by [`StateWriter::header`] and returns its
    /// minor version: EINVAL unless it starts with `magic` and has this
    /// `major` (minor versions are compatible by definition).
    pub fn header(&mut self, magic: &[u8], major: u16) -> Result<u16> {
        if self.bytes(magic.len())? != magic || self.u16()? != major {
            return Err(Errno::INVAL);
        }
        self.u16()
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// Succeeds only if everything was read (trailing bytes are EINVAL).
    pub fn finish(self) -> Result<()> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(Errno::INVAL)
        }
    }
}

/// One section of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section<'a> {
    /// Section id (`SECTION_*`).
    pub id: u32,
    /// Its payload.
    pub payload: &'a [u8],
}

fn put_header(w: &mut StateWriter) {
    w.header(
        &PCI_MIG_MAGIC.to_le_bytes(),
        PCI_MIG_VERSION_MAJOR,
        PCI_MIG_VERSION_MINOR,
    )
    .u32(0);
}

fn put_section(w: &mut StateWriter, id: u32, payload: &[u8]) -> Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| Errno::FBIG)?;
    w.u32(id).u32(len).bytes(payload);
    Ok(())
}

/// Checks a stream's header and framing and splits it into sections
/// (without the END marker). EINVAL on bad magic, another major version,
/// non-zero flags, a section running past the end, a missing END, or
/// bytes after it.
pub fn parse_stream(data: &[u8]) -> Result<Vec<Section<'_>>> {
    let mut r = StateReader::new(data);
    r.header(&PCI_MIG_MAGIC.to_le_bytes(), PCI_MIG_VERSION_MAJOR)?;
    if r.u32()? != 0 {
        return Err(Errno::INVAL);
    }
    let mut sections = Vec::new();
    loop {
        let id = r.u32()?;
        let len = usize::try_from(r.u32()?).map_err(|_| Errno::INVAL)?;
        let payload = r.bytes(len)?;
        if id == SECTION_END {
            if len != 0 {
                return Err(Errno::INVAL);
            }
            r.finish()?;
            return Ok(sections);
        }
        sections.push(Section { id, payload });
    }
}

/// The migration session of a [`PciDevice`].
#[derive(Debug, Default)]
pub(crate) enum Phase {
    /// No stream.
    #[default]
    Idle,
    /// Being read; `stop_copy` once the final part is in `buf`.
    Saving {
        buf: Vec<u8>,
        pos: usize,
        stop_copy: bool,
        /// RAM BARs sent in the initial part, and where in `buf` their
        /// bytes are (what the final part's deltas compare against).
        precopied: Vec<Precopied>,
    },
    /// Being written.
    Resuming { buf: Vec<u8> },
}

/// A RAM BAR sent in PRE_COPY: its index, and the offset of its bytes in
/// the stream buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Precopied {
    bar: usize,
    at: usize,
}

/// The pages of a RAM BAR that differ from `sent` (the bytes pre-copy
/// sent), as a [`SECTION_RAM_DELTA`] payload for `bar`, adjacent pages
/// merged into one run; `None` if nothing changed. `read(offset, buf)`
/// reads the BAR as it is now, one page at a time, so no second copy of
/// the BAR is made.
fn ram_delta(
    bar: usize,
    sent: &[u8],
    mut read: impl FnMut(u64, &mut [u8]) -> Result<()>,
) -> Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    out.extend_from_slice(&(bar as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    // Where the open run's length field is, and the length so far.
    let mut run: Option<(usize, u64)> = None;
    let mut page = [0u8; RAM_DELTA_PAGE];
    for (i, was) in sent.chunks(RAM_DELTA_PAGE).enumerate() {
        let offset = (i * RAM_DELTA_PAGE) as u64;
        let now = &mut page[..was.len()];
        read(offset, now)?;
        if now == was {
            run = None;
            continue;
        }
        let (at, len) = run.get_or_insert_with(|| {
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&0u64.to_le_bytes());
            (out.len() - 8, 0)
        });
        *len += now.len() as u64;
        out[*at..*at + 8].copy_from_slice(&len.to_le_bytes());
        out.extend_from_slice(now);
    }
    Ok((out.len() > 8).then_some(out))
}

/// Checks a [`SECTION_RAM_DELTA`] payload against a BAR of `size` bytes:
/// its runs, each non-empty and inside the BAR.
fn parse_ram_delta(payload: &[u8], size: u64) -> Result<Vec<(u64, &[u8])>> {
    let mut r = StateReader::new(payload);
    r.bytes(8)?;
    let mut runs = Vec::new();
    while r.remaining() > 0 {
        let offset = r.u64()?;
        let len = r.u64()?;
        let end = offset.checked_add(len).ok_or(Errno::INVAL)?;
        if len == 0 || end > size {
            return Err(Errno::INVAL);
        }
        let bytes = r.bytes(usize::try_from(len).map_err(|_| Errno::INVAL)?)?;
        runs.push((offset, bytes));
    }
    Ok(runs)
}

/// The interrupt section, parsed.
struct IrqSnapshot {
    intx_asserted: bool,
    intx_blocked: bool,
    err_latched: bool,
    latched: BTreeSet<u32>,
}

impl IrqSnapshot {
    fn parse(data: &[u8]) -> Result<Self> {
        let mut r = StateReader::new(data);
        let intx_asserted = r.bool()?;
        let intx_blocked = r.bool()?;
        let err_latched = r.bool()?;
        if r.u8()? != 0 {
            return Err(Errno::INVAL);
        }
        let n = r.u32()?;
        if n > MAX_VECTORS {
            return Err(Errno::INVAL);
        }
        let mut latched = BTreeSet::new();
        for _ in 0..n {
            let v = r.u32()?;
            if v >= MAX_VECTORS || !latched.insert(v) {
                return Err(Errno::INVAL);
            }
        }
        r.finish()?;
        Ok(IrqSnapshot {
            intx_asserted,
            intx_blocked,
            err_latched,
            latched,
        })
    }
}

/// FNV-1a, for a compact fingerprint of the config masks.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl<F: PciFunction> PciDevice<F> {
    fn mig_lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.mig.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fmig(&self) -> Result<&dyn FunctionMigration> {
        self.function.migration().ok_or(Errno::NOTTY)
    }

    /// What must match between source and destination: the identity, the
    /// config layout (size and masks), the interrupt counts and the BARs.
    fn fingerprint(&self) -> Vec<u8> {
        let st = self.shared.lock();
        let cs = &st.config;
        let mut w = StateWriter::new();
        w.u16(cs.read_u16(PCI_VENDOR_ID))
            .u16(cs.read_u16(PCI_DEVICE_ID))
            .u16(cs.read_u16(PCI_SUBSYSTEM_VENDOR_ID))
            .u16(cs.read_u16(PCI_SUBSYSTEM_ID))
            .u8(cs.read_u8(PCI_REVISION_ID))
            .u8(cs.read_u8(PCI_CLASS_PROG))
            .u8(cs.read_u8(PCI_CLASS_DEVICE))
            .u8(cs.read_u8(PCI_CLASS_BASE))
            .u8(cs.read_u8(PCI_HEADER_TYPE))
            .u8(cs.read_u8(PCI_INTERRUPT_PIN))
            .u16(0)
            .u32(u32::try_from(cs.len()).unwrap_or(u32::MAX))
            .u64(fnv1a(&[cs.wmask_bytes(), cs.w1c_bytes()]));
        let c = self.shared.counts;
        w.bool(c.intx)
            .bool(c.err)
            .bool(c.req)
            .u8(0)
            .u32(c.msi)
            .u32(c.msix);
        for i in 0..PCI_NUM_BARS {
            let (kind, size, ram) = match &self.bars[i] {
                None => (0u8, 0u64, false),
                Some(slot) => {
                    let k = match slot.info.kind {
                        BarKind::Io => 1,
                        BarKind::Memory32 { prefetchable } => 2 | (u8::from(prefetchable) << 4),
                        BarKind::Memory64 { prefetchable } => 3 | (u8::from(prefetchable) << 4),
                    };
                    (k, slot.info.size, slot.memory.is_some())
                }
            };
            w.u8(kind).bool(ram).u16(0).u32(0).u64(size);
        }
        w.u64(self.rom.as_ref().map_or(0, |r| r.size));
        w.into_vec()
    }

    /// Header and DEVICE section: the start of every stream.
    fn save_initial(&self) -> Result<StateWriter> {
        let mut w = StateWriter::new();
        put_header(&mut w);
        put_section(&mut w, SECTION_DEVICE, &self.fingerprint())?;
        Ok(w)
    }

    /// The RAM BARs: `(index, size, memory)`.
    fn ram_bars(&self) -> impl Iterator<Item = (usize, u64, &SharedMemory)> {
        self.bars.iter().enumerate().filter_map(|(i, slot)| {
            let slot = slot.as_ref()?;
            Some((i, slot.info.size, slot.memory.as_deref()?))
        })
    }

    /// Appends a full RAM section for `bar`; returns where its bytes are
    /// in the stream.
    fn put_ram(w: &mut StateWriter, bar: usize, size: u64, mem: &SharedMemory) -> Result<usize> {
        let size = usize::try_from(size).map_err(|_| Errno::FBIG)?;
        let section_len = u32::try_from(8 + size).map_err(|_| Errno::FBIG)?;
        // The BAR is read straight into the stream: one copy.
        w.u32(SECTION_RAM).u32(section_len).u32(bar as u32).u32(0);
        let at = w.len();
        w.fill_with(size, |b| mem.read_at(0, b))?;
        Ok(at)
    }

    /// What PRE_COPY offers: header, DEVICE, and every RAM BAR as it is
    /// now (the device runs on).
    fn save_precopy(&self) -> Result<(StateWriter, Vec<Precopied>)> {
        let mut w = self.save_initial()?;
        let mut precopied = Vec::new();
        for (bar, size, mem) in self.ram_bars() {
            let at = Self::put_ram(&mut w, bar, size, mem)?;
            precopied.push(Precopied { bar, at });
        }
        Ok((w, precopied))
    }

    /// Everything after what was offered before, taken with the device
    /// stopped: RAM BARs in full, or (those in `precopied`) as deltas
    /// against the bytes `sent` holds.
    fn save_final(&self, w: &mut StateWriter, precopied: &[Precopied], sent: &[u8]) -> Result<()> {
        let (config, msix, irq) = {
            let st = self.shared.lock();
            let mut irq = StateWriter::new();
            irq.bool(st.intx_asserted)
                .bool(st.intx_blocked)
                .bool(st.err_latched)
                .u8(0)
                .u32(u32::try_from(st.latched.len()).unwrap_or(0));
            for v in &st.latched {
                irq.u32(*v);
            }
            (
                st.config.as_bytes().to_vec(),
                st.msix.as_ref().map(MsixTable::to_bytes),
                irq.into_vec(),
            )
        };
        put_section(w, SECTION_CONFIG, &config)?;
        if let Some(m) = msix {
            put_section(w, SECTION_MSIX, &m)?;
        }
        put_section(w, SECTION_IRQ, &irq)?;
        for (bar, size, mem) in self.ram_bars() {
            let Some(p) = precopied.iter().find(|p| p.bar == bar) else {
                Self::put_ram(w, bar, size, mem)?;
                continue;
            };
            let len = usize::try_from(size).map_err(|_| Errno::FBIG)?;
            let was = sent.get(p.at..p.at + len).ok_or(Errno::INVAL)?;
            if let Some(delta) = ram_delta(bar, was, |off, buf| mem.read_at(off, buf))? {
                put_section(w, SECTION_RAM_DELTA, &delta)?;
            }
        }
        let mut state = Vec::new();
        self.fmig()?.save_state(&mut state)?;
        put_section(w, SECTION_FUNCTION, &state)?;
        put_section(w, SECTION_END, &[])
    }

    /// An upper bound of the stream a destination accepts.
    fn stream_limit(&self) -> usize {
        let cfg = self.shared.lock().config.len();
        let ram: u64 = self
            .ram_bars()
            // The RAM section, and a delta that may resend every page.
            .map(|(_, size, _)| 2 * (size + 16) + size.div_ceil(RAM_DELTA_PAGE as u64) * 16)
            .sum();
        let fixed = PCI_MIG_HEADER_LEN + 64 * 1024 + cfg + 2 * MAX_VECTORS as usize * 16;
        usize::try_from(ram)
            .unwrap_or(usize::MAX)
            .saturating_add(fixed + FUNCTION_STATE_MAX)
    }

    /// RESUMING → STOP: validate everything, then apply it.
    fn restore(&self, data: &[u8]) -> Result<()> {
        let sections = parse_stream(data)?;
        let mut it = sections.into_iter();
        match it.next() {
            Some(s) if s.id == SECTION_DEVICE && s.payload == self.fingerprint().as_slice() => {}
            Some(s) if s.id == SECTION_DEVICE => {
                tracing::warn!("migration stream is for a different device layout");
                return Err(Errno::INVAL);
            }
            _ => return Err(Errno::INVAL),
        }
        let mut config = None;
        let mut msix = None;
        let mut irq = None;
        let mut function = None;
        let mut ram: [Option<&[u8]>; PCI_NUM_BARS] = Default::default();
        let mut ram_delta: [Option<&[u8]>; PCI_NUM_BARS] = Default::default();
        for s in it {
            let slot = match s.id {
                SECTION_CONFIG => &mut config,
                SECTION_MSIX => &mut msix,
                SECTION_IRQ => &mut irq,
                SECTION_FUNCTION => &mut function,
                SECTION_RAM | SECTION_RAM_DELTA => {
                    let mut r = StateReader::new(s.payload);
                    let bar = usize::try_from(r.u32()?).map_err(|_| Errno::INVAL)?;
                    if r.u32()? != 0 {
                        return Err(Errno::INVAL);
                    }
                    let per_bar = if s.id == SECTION_RAM {
                        &mut ram
                    } else {
                        &mut ram_delta
                    };
                    per_bar.get_mut(bar).ok_or(Errno::INVAL)?
                }
                SECTION_DEVICE => return Err(Errno::INVAL),
                id if id & SECTION_OPTIONAL != 0 => {
                    tracing::debug!(id, "unknown optional migration section skipped");
                    continue;
                }
                id => {
                    tracing::warn!(id, "unknown migration section");
                    return Err(Errno::INVAL);
                }
            };
            if slot.replace(s.payload).is_some() {
                return Err(Errno::INVAL);
            }
        }

        let config = config.ok_or(Errno::INVAL)?;
        if !self.shared.lock().config.can_restore(config) {
            tracing::warn!("migration stream's config space does not fit this function");
            return Err(Errno::INVAL);
        }
        let msix = match (self.msix, msix) {
            (None, None) => None,
            (Some(m), Some(bytes)) => {
                Some(MsixTable::from_bytes(m.table_size, bytes).ok_or(Errno::INVAL)?)
            }
            _ => return Err(Errno::INVAL),
        };
        let irq = IrqSnapshot::parse(irq.ok_or(Errno::INVAL)?)?;
        let mut ram_apply = Vec::new();
        for (i, slot) in self.bars.iter().enumerate() {
            let mem = slot.as_ref().and_then(|s| Some((s, s.memory.as_ref()?)));
            match (mem, ram[i], ram_delta[i]) {
                (None, None, None) => {}
                (Some((s, mem)), Some(bytes), delta) => {
                    let bytes = &bytes[8..];
                    if bytes.len() as u64 != s.info.size {
                        return Err(Errno::INVAL);
                    }
                    let runs = match delta {
                        Some(d) => parse_ram_delta(d, s.info.size)?,
                        None => Vec::new(),
                    };
                    ram_apply.push((mem, bytes, runs));
                }
                _ => return Err(Errno::INVAL),
            }
        }
        let function = function.ok_or(Errno::INVAL)?;

        // Everything of ours is valid: let the function validate and apply
        // its state, then apply the rest (nothing below can fail on data).
        self.fmig()?.load_state(function)?;
        {
            let mut st = self.shared.lock();
            st.config.set_bytes(0, config);
            if let Some(t) = msix {
                st.msix = Some(t);
            }
            st.intx_asserted = irq.intx_asserted;
            st.intx_blocked = irq.intx_blocked;
            st.err_latched = irq.err_latched;
            st.latched = irq.latched;
        }
        for (mem, bytes, runs) in ram_apply {
            mem.write_at(0, bytes)?;
            for (offset, run) in runs {
                mem.write_at(offset, run)?;
            }
        }
        Ok(())
    }

    /// Drops any session and un-quiesces without delivering anything: the
    /// device was reset or closed.
    pub(crate) fn reset_migration(&self) {
        *self.mig_lock() = Phase::Idle;
        self.shared.unstop();
    }
}

/// PCI migration (see the [module docs](crate::migration)); reported by
/// [`uvfio_core::DeviceOps::migration`] when the function opts in.
impl<F: PciFunction> MigrationOps for PciDevice<F> {
    fn flags(&self) -> MigFlags {
        self.function
            .migration()
            .map_or(MigFlags::STOP_COPY, |m| m.flags() | MigFlags::STOP_COPY)
    }

    fn step(&self, from: MigState, to: MigState) -> Result<()> {
        use MigState::*;
        let fm = self.fmig()?;
        let mut phase = self.mig_lock();
        match (from, to) {
            (Running | RunningP2p, Stop) => {
                fm.step(from, to)?;
                self.shared.stop();
            }
            (Stop, Running | RunningP2p) => {
                self.shared.resume();
                fm.step(from, to)?;
            }
            (Running, RunningP2p)
            | (RunningP2p, Running)
            | (PreCopy, PreCopyP2p)
            | (PreCopyP2p, PreCopy) => fm.step(from, to)?,
            (Running, PreCopy) | (RunningP2p, PreCopyP2p) => {
                fm.step(from, to)?;
                let (w, precopied) = self.save_precopy()?;
                *phase = Phase::Saving {
                    buf: w.into_vec(),
                    pos: 0,
                    stop_copy: false,
                    precopied,
                };
            }
            (PreCopy, Running) | (PreCopyP2p, RunningP2p) => {
                *phase = Phase::Idle;
                fm.step(from, to)?;
            }
            (PreCopy | PreCopyP2p, StopCopy) => {
                fm.step(from, to)?;
                self.shared.stop();
                match &mut *phase {
                    Phase::Saving {
                        buf,
                        stop_copy,
                        precopied,
                        ..
                    } => {
                        let mut w = StateWriter::new();
                        self.save_final(&mut w, precopied, buf)?;
                        buf.extend_from_slice(&w.into_vec());
                        *stop_copy = true;
                    }
                    other => {
                        let mut all = self.save_initial()?;
                        self.save_final(&mut all, &[], &[])?;
                        *other = Phase::Saving {
                            buf: all.into_vec(),
                            pos: 0,
                            stop_copy: true,
                            precopied: Vec::new(),
                        };
                    }
                }
            }
            (Stop, StopCopy) => {
                fm.step(from, to)?;
                let mut w = self.save_initial()?;
                self.save_final(&mut w, &[], &[])?;
                *phase = Phase::Saving {
                    buf: w.into_vec(),
                    pos: 0,
                    stop_copy: true,
                    precopied: Vec::new(),
                };
            }
            (StopCopy, Stop) => {
                *phase = Phase::Idle;
                fm.step(from, to)?;
            }
            (Stop, Resuming) => {
                fm.step(from, to)?;
                *phase = Phase::Resuming { buf: Vec::new() };
            }
            (Resuming, Stop) => {
                let Phase::Resuming { buf } = std::mem::take(&mut *phase) else {
                    return Err(Errno::INVAL);
                };
                self.restore(&buf)?;
                fm.step(from, to)?;
            }
            _ => return Err(Errno::INVAL),
        }
        Ok(())
    }

    fn save(&self, out: &mut [u8]) -> Result<usize> {
        let mut phase = self.mig_lock();
        let Phase::Saving {
            buf,
            pos,
            stop_copy,
            ..
        } = &mut *phase
        else {
            return Err(Errno::INVAL);
        };
        let n = out.len().min(buf.len() - *pos);
        if n == 0 && !out.is_empty() && !*stop_copy {
            return Err(Errno::NOMSG);
        }
        out[..n].copy_from_slice(&buf[*pos..*pos + n]);
        *pos += n;
        Ok(n)
    }

    fn load(&self, data: &[u8]) -> Result<()> {
        let limit = self.stream_limit();
        let mut phase = self.mig_lock();
        let Phase::Resuming { buf } = &mut *phase else {
            return Err(Errno::INVAL);
        };
        if buf.len().saturating_add(data.len()) > limit {
            return Err(Errno::FBIG);
        }
        buf.extend_from_slice(data);
        Ok(())
    }

    fn precopy_info(&self) -> (u64, u64) {
        match &*self.mig_lock() {
            Phase::Saving {
                buf,
                pos,
                stop_copy: false,
                ..
            } => ((buf.len() - pos) as u64, 0),
            _ => (0, 0),
        }
    }

    fn stop_copy_size(&self) -> u64 {
        let mut state = Vec::new();
        if let Ok(fm) = self.fmig() {
            if let Err(e) = fm.save_state(&mut state) {
                tracing::debug!("function state size unknown: {e}");
            }
        }
        let fingerprint = self.fingerprint().len() as u64;
        let (config, latched) = {
            let st = self.shared.lock();
            (st.config.len() as u64, st.latched.len() as u64)
        };
        let sh = PCI_MIG_SECTION_HEADER_LEN as u64;
        let mut n = PCI_MIG_HEADER_LEN as u64
            + (sh + fingerprint)
            + (sh + config)
            + (sh + 8 + 4 * latched)
            + (sh + state.len() as u64)
            + sh;
        if let Some(m) = &self.msix {
            n += sh + m.table_len() + m.pba_len();
        }
        for (_, size, _) in self.ram_bars() {
            n += sh + 8 + size;
        }
        // In PRE_COPY the initial part (header, DEVICE, the RAM copies) is
        // already offered, so STOP_COPY adds the rest: the estimate counts
        // no RAM page as changed since.
        match &*self.mig_lock() {
            Phase::Saving {
                buf,
                stop_copy: false,
                ..
            } => n.saturating_sub(buf.len() as u64),
            _ => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(sections: &[(u32, &[u8])]) -> Vec<u8> {
        let mut w = StateWriter::new();
        put_header(&mut w);
        for (id, p) in sections {
            put_section(&mut w, *id, p).unwrap();
        }
        w.into_vec()
    }

    fn runs(payload: &[u8], size: u64) -> Vec<(u64, Vec<u8>)> {
        parse_ram_delta(payload, size)
            .unwrap()
            .into_iter()
            .map(|(o, b)| (o, b.to_vec()))
            .collect()
    }

    #[test]
    fn ram_delta_sends_changed_pages_merging_neighbours() {
        let page = RAM_DELTA_PAGE;
        let sent = vec![0u8; 5 * page + 100];
        let delta_of = |now: &[u8]| {
            ram_delta(2, &sent, |off, buf| {
                let off = off as usize;
                buf.copy_from_slice(&now[off..off + buf.len()]);
                Ok(())
            })
            .unwrap()
        };
        assert_eq!(delta_of(&sent), None, "nothing changed");
        let mut now = sent.clone();
        now[1] = 1; // page 0
        now[page + 7] = 2; // page 1: merges with page 0
        now[3 * page] = 3; // page 3, alone
        now[5 * page + 99] = 4; // the short last page
        let delta = delta_of(&now).unwrap();
        assert_eq!(&delta[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
        let size = now.len() as u64;
        let got = runs(&delta, size);
        let want: Vec<(u64, Vec<u8>)> = [(0, 2 * page), (3 * page, page), (5 * page, 100)]
            .iter()
            .map(|&(o, l)| (o as u64, now[o..o + l].to_vec()))
            .collect();
        assert_eq!(got, want);
        // Applying it to what was sent gives what is now.
        let mut rebuilt = sent.clone();
        for (o, b) in got {
            rebuilt[o as usize..o as usize + b.len()].copy_from_slice(&b);
        }
        assert_eq!(rebuilt, now);
    }

    #[test]
    fn parse_ram_delta_rejects_bad_runs() {
        let run = |o: u64, l: u64, have: usize| {
            let mut w = StateWriter::new();
            w.u32(2).u32(0).u64(o).u64(l).bytes(&vec![1; have]);
            w.into_vec()
        };
        assert_eq!(runs(&run(0, 4, 4), 8), [(0, vec![1; 4])]);
        assert_eq!(runs(&run(4, 4, 4), 8), [(4, vec![1; 4])], "ends at the end");
        for (what, p) in [
            ("past the end", run(5, 4, 4)),
            ("empty", run(0, 0, 0)),
            ("overflow", run(u64::MAX, 2, 2)),
            ("truncated", run(0, 4, 3)),
            ("short header", vec![2, 0, 0]),
        ] {
            assert_eq!(parse_ram_delta(&p, 8).unwrap_err(), Errno::INVAL, "{what}");
        }
    }

    #[test]
    fn parse_round_trips_sections() {
        let s = stream(&[(SECTION_DEVICE, b"dev"), (SECTION_CONFIG, b"cfg"), (0, b"")]);
        let p = parse_stream(&s).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].id, SECTION_CONFIG);
        assert_eq!(p[1].payload, b"cfg");
    }

    #[test]
    fn parse_rejects_bad_magic_version_flags_truncation_and_trailers() {
        let good = stream(&[(SECTION_DEVICE, b"d"), (0, b"")]);
        assert!(parse_stream(&good).is_ok());
        let mut bad = good.clone();
        bad[0] ^= 1;
        assert_eq!(parse_stream(&bad).unwrap_err(), Errno::INVAL);
        let mut bad = good.clone();
        bad[8] = 2;
        assert_eq!(parse_stream(&bad).unwrap_err(), Errno::INVAL);
        let mut minor = good.clone();
        minor[10] = 7;
        assert!(
            parse_stream(&minor).is_ok(),
            "minor versions are compatible"
        );
        let mut bad = good.clone();
        bad[12] = 1;
        assert_eq!(parse_stream(&bad).unwrap_err(), Errno::INVAL);
        for n in 0..good.len() {
            assert_eq!(parse_stream(&good[..n]).unwrap_err(), Errno::INVAL, "{n}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(parse_stream(&trailing).unwrap_err(), Errno::INVAL);
        let end_with_len = stream(&[(0, b"x")]);
        assert_eq!(parse_stream(&end_with_len).unwrap_err(), Errno::INVAL);
    }

    #[test]
    fn reader_rejects_short_reads_bad_bools_and_leftovers() {
        let mut r = StateReader::new(&[1, 2, 0x34, 0x12]);
        assert!(r.bool().unwrap());
        assert_eq!(r.bool().unwrap_err(), Errno::INVAL);
        assert_eq!(r.u16().unwrap(), 0x1234);
        assert_eq!(r.u8().unwrap_err(), Errno::INVAL);
        r.finish().unwrap();
        let mut r = StateReader::new(&[1, 2]);
        r.u8().unwrap();
        assert_eq!(r.finish().unwrap_err(), Errno::INVAL);
    }

    #[test]
    fn irq_snapshot_validates_vectors() {
        let mut w = StateWriter::new();
        w.bool(true)
            .bool(false)
            .bool(false)
            .u8(0)
            .u32(2)
            .u32(1)
            .u32(5);
        let s = IrqSnapshot::parse(&w.clone().into_vec()).unwrap();
        assert_eq!(s.latched.into_iter().collect::<Vec<_>>(), vec![1, 5]);
        let mut dup = StateWriter::new();
        dup.bool(true)
            .bool(false)
            .bool(false)
            .u8(0)
            .u32(2)
            .u32(1)
            .u32(1);
        assert!(IrqSnapshot::parse(&dup.into_vec()).is_err());
        let mut big = StateWriter::new();
        big.bool(true)
            .bool(false)
            .bool(false)
            .u8(0)
            .u32(1)
            .u32(MAX_VECTORS);
        assert!(IrqSnapshot::parse(&big.into_vec()).is_err());
    }
}
