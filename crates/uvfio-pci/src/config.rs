//! Configuration space: values plus per-byte write and RW1C masks.
//!
//! Every byte has a value, a write mask and an RW1C mask. A user write of
//! `v` to a byte with value `r` stores
//! `((r & !wmask) | (v & wmask)) & !(v & w1c)`: bits outside the write mask
//! are dropped, RW1C bits are cleared by writing 1. Because the rule is per
//! byte, accesses of 1, 2 or 4 bytes at any offset — also those crossing a
//! dword — behave like the individual bytes. BAR sizing, read-only IDs and
//! RW1C status bits all fall out of the masks; the only fix-up after a write
//! is the MSI QSIZE clamp.
//!
//! The layout is declared once ([`PciConfig`]): a [`PciHeader`], the BARs,
//! an expansion ROM, typed capabilities, and device-specific read-only
//! bytes. The function (device side) changes values behind the masks
//! through the `set_*` methods, e.g. to reflect an interrupt.

use crate::bar::{Bar, BarKind, Rom, PCI_NUM_BARS};
use crate::cap::msi::MsiLayout;
use crate::cap::msix::MsixLayout;
use crate::cap::{
    walk_capabilities, walk_extended_capabilities, CapWalk, Capability, ExtCapability,
};
use crate::device::{PciIrqs, PciQuirks};
use crate::error::PciError;
use crate::regs::*;

/// The identity and fixed fields of a type 0 header.
///
/// ```
/// use uvfio_pci::PciHeader;
/// let h = PciHeader {
///     vendor_id: 0x4348,
///     device_id: 0x3253,
///     class_code: 0x07,
///     interrupt_pin: 1,
///     ..Default::default()
/// };
/// # let _ = h;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PciHeader {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// Revision ID.
    pub revision: u8,
    /// Base class code.
    pub class_code: u8,
    /// Sub-class code.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Interrupt pin: 0 none, 1 INTA# … 4 INTD#.
    pub interrupt_pin: u8,
    /// Multi-function device (header type bit 7).
    pub multifunction: bool,
    /// Initial command register. `None`: I/O and memory decode enabled for
    /// the BAR kinds declared, bus master off (the state vfio-pci hands out
    /// after `pci_enable_device`).
    pub command: Option<u16>,
    /// Extra read-only status bits (e.g. DEVSEL timing `0x0200`); the
    /// INTERRUPT and CAP_LIST bits are managed by the config space.
    pub status: u16,
}

/// Device-specific read-only bytes placed in config space (outside the
/// header and the capabilities), e.g. vendor registers at `0x40`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawBytes {
    /// Offset (at least `0x40`).
    pub offset: u16,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// Everything a PCI function declares about itself.
#[derive(Debug, Clone, Default)]
pub struct PciConfig {
    /// Header fields.
    pub header: PciHeader,
    /// BAR slots; a 64-bit BAR at `n` also takes `n + 1`, which must be `None`.
    pub bars: [Option<Bar>; PCI_NUM_BARS],
    /// Expansion ROM.
    pub rom: Option<Rom>,
    /// Conventional capabilities, in list order.
    pub capabilities: Vec<Capability>,
    /// Extended capabilities (needs a PCI Express capability).
    pub extended_capabilities: Vec<ExtCapability>,
    /// Where the first capability goes (default `0x40`; dword aligned).
    pub capabilities_offset: Option<u16>,
    /// Device-specific read-only bytes.
    pub raw: Vec<RawBytes>,
    /// Interrupt indexes; `None` derives them with vfio-pci's rules.
    pub irqs: Option<PciIrqs>,
    /// Deviations from vfio-pci reporting some emulated devices have.
    pub quirks: PciQuirks,
}

impl PciConfig {
    /// Whether the function is PCI Express.
    pub fn is_pcie(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::PciExpress(_)))
    }

    /// The MSI-X declaration, if any.
    pub fn msix(&self) -> Option<crate::cap::MsixCap> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::Msix(m) => Some(*m),
            _ => None,
        })
    }

    /// The MSI declaration, if any.
    pub fn msi(&self) -> Option<crate::cap::MsiCap> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::Msi(m) => Some(*m),
            _ => None,
        })
    }
}

/// A BAR as the config space knows it (no backing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarInfo {
    /// Kind.
    pub kind: BarKind,
    /// Size.
    pub size: u64,
}

/// The configuration space of one function.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    values: Vec<u8>,
    wmask: Vec<u8>,
    w1c: Vec<u8>,
    initial: Vec<u8>,
    bars: [Option<BarInfo>; PCI_NUM_BARS],
    rom_size: Option<u64>,
    msi: Option<MsiLayout>,
    msix: Option<MsixLayout>,
    pcie: Option<u16>,
    caps: Vec<(u16, u16, usize)>,
}

fn align4(x: usize) -> usize {
    (x + 3) & !3
}

fn u16_of(x: usize) -> u16 {
    u16::try_from(x).unwrap_or(u16::MAX)
}

impl ConfigSpace {
    /// Lays out `config`: 256 bytes, or 4096 with a PCI Express capability.
    pub fn new(config: &PciConfig) -> Result<Self, PciError> {
        let len = if config.is_pcie() {
            PCI_CFG_SPACE_EXP_SIZE
        } else {
            PCI_CFG_SPACE_SIZE
        };
        let mut cs = ConfigSpace {
            values: vec![0; len],
            wmask: vec![0; len],
            w1c: vec![0; len],
            initial: Vec::new(),
            bars: [None; PCI_NUM_BARS],
            rom_size: None,
            msi: None,
            msix: None,
            pcie: None,
            caps: Vec::new(),
        };
        let h = &config.header;
        if h.interrupt_pin > 4 {
            return Err(PciError::InterruptPinInvalid(h.interrupt_pin));
        }
        cs.set_u16(PCI_VENDOR_ID, h.vendor_id);
        cs.set_u16(PCI_DEVICE_ID, h.device_id);
        cs.set_u8(PCI_REVISION_ID, h.revision);
        cs.set_u8(PCI_CLASS_PROG, h.prog_if);
        cs.set_u8(PCI_CLASS_DEVICE, h.subclass);
        cs.set_u8(PCI_CLASS_BASE, h.class_code);
        cs.set_u8(PCI_HEADER_TYPE, if h.multifunction { 0x80 } else { 0 });
        cs.set_u16(PCI_SUBSYSTEM_VENDOR_ID, h.subsystem_vendor_id);
        cs.set_u16(PCI_SUBSYSTEM_ID, h.subsystem_id);
        cs.set_u8(PCI_INTERRUPT_PIN, h.interrupt_pin);
        cs.set_wmask(PCI_CACHE_LINE_SIZE, &[0xff]);
        cs.set_wmask(PCI_INTERRUPT_LINE, &[0xff]);

        cs.place_bars(config)?;

        let mut decode = Command::empty();
        for b in cs.bars.iter().flatten() {
            decode |= if b.kind.is_memory() {
                Command::MEMORY
            } else {
                Command::IO
            };
        }
        if cs.rom_size.is_some() {
            decode |= Command::MEMORY;
        }
        cs.set_u16(PCI_COMMAND, h.command.unwrap_or(decode.bits()));
        cs.set_wmask(PCI_COMMAND, &PCI_COMMAND_WRITABLE.to_le_bytes());
        let mut status = h.status & !(Status::INTERRUPT | Status::CAP_LIST).bits();
        if !config.capabilities.is_empty() {
            status |= Status::CAP_LIST.bits();
        }
        cs.set_u16(PCI_STATUS, status);
        cs.set_w1c_mask(PCI_STATUS, &PCI_STATUS_RW1C.to_le_bytes());

        cs.place_caps(config)?;
        cs.place_ext_caps(config)?;
        cs.place_raw(config)?;
        cs.initial = cs.values.clone();
        Ok(cs)
    }

    fn place_bars(&mut self, config: &PciConfig) -> Result<(), PciError> {
        let mut upper = [false; PCI_NUM_BARS];
        for (i, bar) in config.bars.iter().enumerate() {
            let Some(bar) = bar else { continue };
            let idx = i as u8;
            if upper[i] {
                return Err(PciError::BarInUse(idx));
            }
            bar.validate(idx)?;
            let off = PCI_BASE_ADDRESS_0 + 4 * u16::from(idx);
            self.set_u32(off, bar.kind.type_bits());
            self.set_wmask(off, &bar.low_write_mask().to_le_bytes());
            if matches!(bar.kind, BarKind::Memory64 { .. }) {
                if i + 1 >= PCI_NUM_BARS {
                    return Err(PciError::BarIndexInvalid(idx));
                }
                if config.bars[i + 1].is_some() {
                    return Err(PciError::BarInUse(idx + 1));
                }
                upper[i + 1] = true;
                self.set_wmask(off + 4, &bar.high_write_mask().to_le_bytes());
            }
            self.bars[i] = Some(BarInfo {
                kind: bar.kind,
                size: bar.size,
            });
        }
        if let Some(rom) = &config.rom {
            rom.validate()?;
            self.set_wmask(PCI_ROM_ADDRESS, &rom.write_mask().to_le_bytes());
            self.rom_size = Some(rom.size);
        }
        Ok(())
    }

    fn check_msix_bars(&self, m: &crate::cap::MsixCap) -> Result<(), PciError> {
        m.validate()?;
        for (bar, range) in [(m.table_bar, m.table_range()), (m.pba_bar, m.pba_range())] {
            let ok = self.bars[usize::from(bar)]
                .is_some_and(|b| b.kind.is_memory() && range.end <= b.size);
            if !ok {
                return Err(PciError::MsixPlacementInvalid {
                    bar,
                    offset: range.start,
                    len: range.end - range.start,
                });
            }
        }
        let (t, p) = (m.table_range(), m.pba_range());
        if m.table_bar == m.pba_bar && t.start < p.end && p.start < t.end {
            return Err(PciError::MsixPlacementInvalid {
                bar: m.pba_bar,
                offset: p.start,
                len: p.end - p.start,
            });
        }
        Ok(())
    }

    fn place_caps(&mut self, config: &PciConfig) -> Result<(), PciError> {
        let mut seen: Vec<u8> = Vec::new();
        let start = config
            .capabilities_offset
            .map_or(usize::from(PCI_STD_HEADER_SIZEOF), usize::from);
        let mut off = align4(start.max(usize::from(PCI_STD_HEADER_SIZEOF)));
        let mut prev: Option<usize> = None;
        for cap in &config.capabilities {
            let id = cap.id();
            if id != PCI_CAP_ID_VNDR {
                if seen.contains(&id) {
                    return Err(PciError::CapabilityDuplicate(id));
                }
                seen.push(id);
            }
            match cap {
                Capability::Msi(m) => m.validate()?,
                Capability::Msix(m) => self.check_msix_bars(m)?,
                _ => {}
            }
            let bytes = cap.layout();
            let len = bytes.len();
            if off + len > PCI_CFG_SPACE_SIZE || len > 255 {
                return Err(PciError::CapabilityNoSpace {
                    id: u16::from(id),
                    len,
                    offset: off,
                });
            }
            self.values[off..off + len].copy_from_slice(&bytes.values);
            self.wmask[off..off + len].copy_from_slice(&bytes.wmask);
            self.w1c[off..off + len].copy_from_slice(&bytes.w1c);
            let at = u16_of(off);
            match cap {
                Capability::Msi(m) => self.msi = Some(MsiLayout::new(at, *m)),
                Capability::Msix(m) => {
                    self.msix = Some(MsixLayout {
                        cap: *m,
                        flags: at + PCI_MSIX_FLAGS,
                    })
                }
                Capability::PciExpress(_) => self.pcie = Some(at),
                _ => {}
            }
            match prev {
                None => self.values[usize::from(PCI_CAPABILITY_LIST)] = at as u8,
                Some(p) => self.values[p + 1] = at as u8,
            }
            self.caps.push((u16::from(id), at, len));
            prev = Some(off);
            off = align4(off + len);
        }
        Ok(())
    }

    fn place_ext_caps(&mut self, config: &PciConfig) -> Result<(), PciError> {
        let mut off = PCI_CFG_SPACE_SIZE;
        let mut prev: Option<usize> = None;
        for cap in &config.extended_capabilities {
            if self.pcie.is_none() {
                return Err(PciError::ExtendedCapabilityWithoutPcie(cap.id()));
            }
            let bytes = cap.layout();
            let len = bytes.len();
            if off + len > self.values.len() {
                return Err(PciError::CapabilityNoSpace {
                    id: cap.id(),
                    len,
                    offset: off,
                });
            }
            self.values[off..off + len].copy_from_slice(&bytes.values);
            if let Some(p) = prev {
                let mut h = self.read_u32(u16_of(p));
                h = (h & 0x000f_ffff) | ((off as u32) << 20);
                self.set_u32(u16_of(p), h);
            }
            self.caps.push((cap.id(), u16_of(off), len));
            prev = Some(off);
            off = align4(off + len);
        }
        Ok(())
    }

    fn place_raw(&mut self, config: &PciConfig) -> Result<(), PciError> {
        for raw in &config.raw {
            let start = usize::from(raw.offset);
            let end = start + raw.bytes.len();
            let bad = start < usize::from(PCI_STD_HEADER_SIZEOF)
                || end > self.values.len()
                || self.caps.iter().any(|&(_, at, len)| {
                    let at = usize::from(at);
                    start < at + len && at < end
                });
            if bad {
                return Err(PciError::RawBytesInvalid {
                    offset: start,
                    len: raw.bytes.len(),
                });
            }
            self.values[start..end].copy_from_slice(&raw.bytes);
        }
        Ok(())
    }

    /// Size in bytes (256 or 4096).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Whether the function has a PCI Express capability.
    pub fn is_pcie(&self) -> bool {
        self.pcie.is_some()
    }

    /// The current values.
    pub fn as_bytes(&self) -> &[u8] {
        &self.values
    }

    fn check(&self, offset: u16, len: usize) -> Result<usize, PciError> {
        let off = usize::from(offset);
        if !matches!(len, 1 | 2 | 4) || off + len > self.values.len() {
            return Err(PciError::ConfigAccessInvalid {
                offset: u64::from(offset),
                len,
            });
        }
        Ok(off)
    }

    /// A user read of 1, 2 or 4 bytes at any offset.
    pub fn read(&self, offset: u16, buf: &mut [u8]) -> Result<(), PciError> {
        let off = self.check(offset, buf.len())?;
        buf.copy_from_slice(&self.values[off..off + buf.len()]);
        Ok(())
    }

    /// A user write of 1, 2 or 4 bytes at any offset, through the masks.
    pub fn write(&mut self, offset: u16, data: &[u8]) -> Result<(), PciError> {
        let off = self.check(offset, data.len())?;
        for (i, &v) in data.iter().enumerate() {
            let o = off + i;
            let wm = self.wmask[o];
            let c = self.w1c[o];
            self.values[o] = ((self.values[o] & !wm) | (v & wm)) & !(v & c);
        }
        if let Some(msi) = self.msi {
            let f = usize::from(msi.flags);
            if off < f + 2 && f < off + data.len() {
                self.clamp_msi_qsize(msi);
            }
        }
        Ok(())
    }

    fn clamp_msi_qsize(&mut self, msi: MsiLayout) {
        let flags = self.read_u16(msi.flags);
        let qmask = (flags & PCI_MSI_FLAGS_QMASK) >> 1;
        let qsize = (flags & PCI_MSI_FLAGS_QSIZE) >> 4;
        if qsize > qmask {
            self.set_u16(msi.flags, (flags & !PCI_MSI_FLAGS_QSIZE) | (qmask << 4));
        }
    }

    /// Device-side read of a byte; all-ones past the end.
    pub fn read_u8(&self, offset: u16) -> u8 {
        self.values
            .get(usize::from(offset))
            .copied()
            .unwrap_or(0xff)
    }

    /// Device-side little-endian read; all-ones past the end.
    pub fn read_u16(&self, offset: u16) -> u16 {
        u16::from_le_bytes([self.read_u8(offset), self.read_u8(offset.wrapping_add(1))])
    }

    /// Device-side little-endian read; all-ones past the end.
    pub fn read_u32(&self, offset: u16) -> u32 {
        u32::from(self.read_u16(offset)) | (u32::from(self.read_u16(offset.wrapping_add(2))) << 16)
    }

    /// Device-side store of raw bytes, ignoring the masks. Bytes past the
    /// end are dropped and logged.
    pub fn set_bytes(&mut self, offset: u16, bytes: &[u8]) {
        let off = usize::from(offset);
        let Some(dst) = self.values.get_mut(off..off + bytes.len()) else {
            tracing::warn!(
                offset,
                len = bytes.len(),
                "config store past the end dropped"
            );
            return;
        };
        dst.copy_from_slice(bytes);
    }

    /// Device-side store, ignoring the masks.
    pub fn set_u8(&mut self, offset: u16, v: u8) {
        self.set_bytes(offset, &[v]);
    }

    /// Device-side store, ignoring the masks.
    pub fn set_u16(&mut self, offset: u16, v: u16) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    /// Device-side store, ignoring the masks.
    pub fn set_u32(&mut self, offset: u16, v: u32) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    fn set_mask(mask: &mut [u8], offset: u16, m: &[u8]) {
        let off = usize::from(offset);
        match mask.get_mut(off..off + m.len()) {
            Some(dst) => dst.copy_from_slice(m),
            None => tracing::warn!(offset, "config mask past the end dropped"),
        }
    }

    /// Replaces the write mask of `mask.len()` bytes at `offset`.
    pub fn set_wmask(&mut self, offset: u16, mask: &[u8]) {
        Self::set_mask(&mut self.wmask, offset, mask);
    }

    /// Replaces the RW1C mask of `mask.len()` bytes at `offset`.
    pub fn set_w1c_mask(&mut self, offset: u16, mask: &[u8]) {
        Self::set_mask(&mut self.w1c, offset, mask);
    }

    /// All write masks.
    pub fn wmask_bytes(&self) -> &[u8] {
        &self.wmask
    }

    /// All RW1C masks.
    pub fn w1c_bytes(&self) -> &[u8] {
        &self.w1c
    }

    /// The write mask of the byte at `offset` (0 past the end).
    pub fn wmask(&self, offset: u16) -> u8 {
        self.wmask.get(usize::from(offset)).copied().unwrap_or(0)
    }

    /// The command register.
    pub fn command(&self) -> Command {
        Command::from_bits_retain(self.read_u16(PCI_COMMAND))
    }

    /// The status register.
    pub fn status(&self) -> Status {
        Status::from_bits_retain(self.read_u16(PCI_STATUS))
    }

    /// Device side: sets or clears status bits (e.g. INTERRUPT).
    pub fn set_status(&mut self, bits: Status, on: bool) {
        let s = self.status();
        let s = if on { s | bits } else { s - bits };
        self.set_u16(PCI_STATUS, s.bits());
    }

    /// BAR `index` as declared (`None` if unassigned or the upper half of a
    /// 64-bit BAR).
    pub fn bar(&self, index: u8) -> Option<BarInfo> {
        self.bars.get(usize::from(index)).copied().flatten()
    }

    /// The address BAR `index` is programmed with.
    pub fn bar_address(&self, index: u8) -> Option<u64> {
        let b = self.bar(index)?;
        let off = PCI_BASE_ADDRESS_0 + 4 * u16::from(index);
        let low = u64::from(self.read_u32(off));
        let addr = match b.kind {
            BarKind::Io => low & !0x3,
            BarKind::Memory32 { .. } => low & !0xf,
            BarKind::Memory64 { .. } => (low & !0xf) | (u64::from(self.read_u32(off + 4)) << 32),
        };
        Some(addr)
    }

    /// Size of the expansion ROM, if declared.
    pub fn rom_size(&self) -> Option<u64> {
        self.rom_size
    }

    /// The conventional capability list, walked from the bytes.
    pub fn capabilities(&self) -> CapWalk {
        walk_capabilities(&self.values)
    }

    /// The extended capability list, walked from the bytes.
    pub fn extended_capabilities(&self) -> CapWalk {
        walk_extended_capabilities(&self.values)
    }

    /// Offset of the first capability with `id` (declared, not walked).
    pub fn capability_offset(&self, id: u8) -> Option<u16> {
        self.caps
            .iter()
            .find(|&&(cid, at, _)| cid == u16::from(id) && at < 0x100)
            .map(|&(_, at, _)| at)
    }

    /// Whether the MSI enable bit is set.
    pub fn msi_enabled(&self) -> bool {
        self.msi
            .is_some_and(|m| self.read_u16(m.flags) & PCI_MSI_FLAGS_ENABLE != 0)
    }

    /// Whether MSI `vector` is masked by its per-vector mask bit.
    pub fn msi_masked(&self, vector: u32) -> bool {
        self.msi
            .and_then(|m| m.mask)
            .is_some_and(|at| vector < 32 && self.read_u32(at) & (1 << vector) != 0)
    }

    /// Whether MSI `vector`'s pending bit is set.
    pub fn msi_pending(&self, vector: u32) -> bool {
        self.msi
            .and_then(|m| m.pending)
            .is_some_and(|at| vector < 32 && self.read_u32(at) & (1 << vector) != 0)
    }

    /// Device side: sets or clears MSI `vector`'s pending bit.
    pub fn set_msi_pending(&mut self, vector: u32, pending: bool) {
        let Some(at) = self.msi.and_then(|m| m.pending) else {
            return;
        };
        if vector >= 32 {
            return;
        }
        let v = self.read_u32(at);
        let v = if pending {
            v | (1 << vector)
        } else {
            v & !(1 << vector)
        };
        self.set_u32(at, v);
    }

    /// Number of MSI vectors the function supports (0 without MSI).
    pub fn msi_vectors(&self) -> u32 {
        self.msi.map_or(0, |m| m.cap.vectors)
    }

    /// The MSI message (address, data) programmed by the user.
    pub fn msi_message(&self) -> Option<(u64, u16)> {
        let m = self.msi?;
        let lo = u64::from(self.read_u32(m.base + PCI_MSI_ADDRESS_LO));
        let hi = if m.cap.addr64 {
            u64::from(self.read_u32(m.base + PCI_MSI_ADDRESS_HI))
        } else {
            0
        };
        Some((lo | (hi << 32), self.read_u16(m.data)))
    }

    /// Whether the MSI-X enable bit is set.
    pub fn msix_enabled(&self) -> bool {
        self.msix
            .is_some_and(|m| self.read_u16(m.flags) & PCI_MSIX_FLAGS_ENABLE != 0)
    }

    /// Whether the MSI-X function mask bit is set.
    pub fn msix_function_masked(&self) -> bool {
        self.msix
            .is_some_and(|m| self.read_u16(m.flags) & PCI_MSIX_FLAGS_MASKALL != 0)
    }

    /// The MSI-X declaration.
    pub fn msix(&self) -> Option<crate::cap::MsixCap> {
        self.msix.map(|m| m.cap)
    }

    /// If the user set PCIe `DEVCTL.BCR_FLR`, clears it and returns true:
    /// the caller then resets the function (the bit always reads back 0).
    pub fn take_flr_request(&mut self) -> bool {
        let Some(at) = self.pcie else { return false };
        let devctl = self.read_u16(at + PCI_EXP_DEVCTL);
        if devctl & PCI_EXP_DEVCTL_BCR_FLR == 0 {
            return false;
        }
        self.set_u16(at + PCI_EXP_DEVCTL, devctl & !PCI_EXP_DEVCTL_BCR_FLR);
        true
    }

    /// Whether `bytes` can be the whole config space of this function as
    /// saved by a source: the same size, every bit software cannot write
    /// (outside the write and write-1-to-clear masks) as declared, except
    /// the ones the device itself changes (the status register's INTERRUPT
    /// bit, the MSI pending bits), and no MSI queue size above the
    /// function's. A migration stream is client input: without this, one
    /// could rewrite identity registers, BAR size bits or capability
    /// pointers of the destination.
    pub fn can_restore(&self, bytes: &[u8]) -> bool {
        if bytes.len() != self.values.len() {
            return false;
        }
        let mut device_owned = vec![0u8; bytes.len()];
        device_owned[usize::from(PCI_STATUS)] |= Status::INTERRUPT.bits() as u8;
        if let Some(at) = self.msi.and_then(|m| m.pending) {
            let at = usize::from(at);
            device_owned[at..at + 4].fill(0xff);
        }
        let read_only_match = bytes.iter().enumerate().all(|(i, &b)| {
            let free = self.wmask[i] | self.w1c[i] | device_owned[i];
            b & !free == self.initial[i] & !free
        });
        let msi_ok = self.msi.is_none_or(|m| {
            let at = usize::from(m.flags);
            let flags = u16::from_le_bytes([bytes[at], bytes[at + 1]]);
            (flags & PCI_MSI_FLAGS_QSIZE) >> 4 <= (flags & PCI_MSI_FLAGS_QMASK) >> 1
        });
        read_only_match && msi_ok
    }

    /// Back to the declared values, keeping what a reset keeps: the BAR
    /// and ROM addresses and the interrupt line (vfio-pci holds them
    /// virtual across resets).
    pub fn reset(&mut self) {
        let keep = [
            (PCI_BASE_ADDRESS_0, 24usize),
            (PCI_ROM_ADDRESS, 4),
            (PCI_INTERRUPT_LINE, 1),
        ];
        let saved: Vec<(u16, Vec<u8>)> = keep
            .iter()
            .map(|&(o, n)| (o, self.values[usize::from(o)..usize::from(o) + n].to_vec()))
            .collect();
        self.values.copy_from_slice(&self.initial);
        for (o, bytes) in saved {
            self.set_bytes(o, &bytes);
        }
    }
}
