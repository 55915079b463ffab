//! The MSI-X capability and its table and pending-bit array.
//!
//! The capability itself is read only except the enable and function-mask
//! bits of message control. The table and PBA live in BAR space; the
//! wrapper ([`crate::PciDevice`]) serves them from a [`MsixTable`] and
//! never forwards those accesses to the function. Table entries reset
//! masked (vector control bit 0 = 1), as the specification requires.

use super::CapBytes;
use crate::error::PciError;
use crate::regs::{
    PCI_CAP_MSIX_SIZEOF, PCI_MSIX_ENTRY_CTRL_MASKBIT, PCI_MSIX_ENTRY_SIZE,
    PCI_MSIX_ENTRY_VECTOR_CTRL, PCI_MSIX_FLAGS, PCI_MSIX_FLAGS_ENABLE, PCI_MSIX_FLAGS_MASKALL,
    PCI_MSIX_PBA, PCI_MSIX_TABLE,
};

/// MSI-X capability declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixCap {
    /// Number of vectors (table entries): 1..=2048.
    pub table_size: u32,
    /// BAR holding the table (a memory BAR).
    pub table_bar: u8,
    /// Offset of the table in that BAR (8-byte aligned).
    pub table_offset: u32,
    /// BAR holding the PBA (a memory BAR).
    pub pba_bar: u8,
    /// Offset of the PBA in that BAR (8-byte aligned).
    pub pba_offset: u32,
}

impl MsixCap {
    /// Checks the table size and alignments (the BARs are checked by
    /// [`crate::ConfigSpace::new`]).
    pub fn validate(&self) -> Result<(), PciError> {
        if self.table_size == 0 || self.table_size > 2048 {
            return Err(PciError::MsixTableSizeInvalid(self.table_size));
        }
        if !self.table_offset.is_multiple_of(8) || self.table_bar > 5 {
            return Err(PciError::MsixPlacementInvalid {
                bar: self.table_bar,
                offset: u64::from(self.table_offset),
                len: self.table_len(),
            });
        }
        if !self.pba_offset.is_multiple_of(8) || self.pba_bar > 5 {
            return Err(PciError::MsixPlacementInvalid {
                bar: self.pba_bar,
                offset: u64::from(self.pba_offset),
                len: self.pba_len(),
            });
        }
        Ok(())
    }

    /// Bytes of the table.
    pub fn table_len(&self) -> u64 {
        u64::from(self.table_size) * PCI_MSIX_ENTRY_SIZE
    }

    /// Bytes of the PBA (whole qwords).
    pub fn pba_len(&self) -> u64 {
        u64::from(self.table_size).div_ceil(64) * 8
    }

    /// The BAR range of the table.
    pub fn table_range(&self) -> std::ops::Range<u64> {
        let start = u64::from(self.table_offset);
        start..start + self.table_len()
    }

    /// The BAR range of the PBA.
    pub fn pba_range(&self) -> std::ops::Range<u64> {
        let start = u64::from(self.pba_offset);
        start..start + self.pba_len()
    }

    pub(crate) fn layout(&self) -> CapBytes {
        let mut c = CapBytes::new(PCI_CAP_MSIX_SIZEOF);
        let qsize = u16::try_from(self.table_size.saturating_sub(1)).unwrap_or(0x7ff) & 0x7ff;
        c.set_u16(usize::from(PCI_MSIX_FLAGS), qsize);
        c.set_wmask16(
            usize::from(PCI_MSIX_FLAGS),
            PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL,
        );
        c.set_u32(
            usize::from(PCI_MSIX_TABLE),
            self.table_offset | u32::from(self.table_bar),
        );
        c.set_u32(
            usize::from(PCI_MSIX_PBA),
            self.pba_offset | u32::from(self.pba_bar),
        );
        c
    }
}

/// The MSI-X table and PBA of a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsixTable {
    /// Per entry: address low, address high, data, vector control.
    entries: Vec<[u32; 4]>,
    pba: Vec<u64>,
}

impl MsixTable {
    /// A table of `size` entries, all masked, nothing pending.
    pub fn new(size: u32) -> Self {
        MsixTable {
            entries: vec![[0, 0, 0, PCI_MSIX_ENTRY_CTRL_MASKBIT]; size as usize],
            pba: vec![0; (size as usize).div_ceil(64)],
        }
    }

    /// Number of entries.
    pub fn len(&self) -> u32 {
        u32::try_from(self.entries.len()).unwrap_or(u32::MAX)
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether entry `vector` is masked (absent entries count as masked).
    pub fn masked(&self, vector: u32) -> bool {
        self.entries
            .get(vector as usize)
            .is_none_or(|e| e[3] & PCI_MSIX_ENTRY_CTRL_MASKBIT != 0)
    }

    /// The message address and data of entry `vector`.
    pub fn message(&self, vector: u32) -> Option<(u64, u32)> {
        self.entries
            .get(vector as usize)
            .map(|e| (u64::from(e[0]) | (u64::from(e[1]) << 32), e[2]))
    }

    /// Whether `vector` is pending.
    pub fn pending(&self, vector: u32) -> bool {
        let (w, b) = (vector as usize / 64, vector % 64);
        self.pba.get(w).is_some_and(|q| q & (1 << b) != 0)
    }

    /// Sets or clears the pending bit of `vector` (no-op past the end).
    pub fn set_pending(&mut self, vector: u32, pending: bool) {
        let (w, b) = (vector as usize / 64, vector % 64);
        if let Some(q) = self.pba.get_mut(w) {
            if pending {
                *q |= 1 << b;
            } else {
                *q &= !(1 << b);
            }
        }
    }

    /// Reads table bytes at `offset` (relative to the table; within one
    /// dword). Bytes past the table read all-ones.
    pub fn read_table(&self, offset: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            let off = offset + i as u64;
            *b = self
                .table_dword(off)
                .map_or(0xff, |d| d.to_le_bytes()[(off % 4) as usize]);
        }
    }

    fn table_dword(&self, off: u64) -> Option<u32> {
        let entry = usize::try_from(off / PCI_MSIX_ENTRY_SIZE).ok()?;
        let word = ((off % PCI_MSIX_ENTRY_SIZE) / 4) as usize;
        self.entries.get(entry).map(|e| e[word])
    }

    /// Writes table bytes at `offset` (relative to the table). Only bit 0
    /// of vector control is writable; writes past the table are dropped.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let off = offset + i as u64;
            let Ok(entry) = usize::try_from(off / PCI_MSIX_ENTRY_SIZE) else {
                continue;
            };
            let in_entry = off % PCI_MSIX_ENTRY_SIZE;
            let word = (in_entry / 4) as usize;
            let shift = (off % 4) * 8;
            let Some(e) = self.entries.get_mut(entry) else {
                tracing::debug!(offset = off, "MSI-X table write past the end dropped");
                continue;
            };
            let mut mask = 0xffu32 << shift;
            if in_entry >= PCI_MSIX_ENTRY_VECTOR_CTRL {
                mask &= PCI_MSIX_ENTRY_CTRL_MASKBIT;
            }
            e[word] = (e[word] & !mask) | ((u32::from(*b) << shift) & mask);
        }
    }

    /// The table (16 bytes per entry: address low, address high, data,
    /// vector control) followed by the PBA (little-endian u64s): the BAR
    /// bytes of both structures.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 16 + self.pba.len() * 8);
        for e in &self.entries {
            for w in e {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
        for q in &self.pba {
            out.extend_from_slice(&q.to_le_bytes());
        }
        out
    }

    /// The inverse of [`MsixTable::to_bytes`] for a table of `size`
    /// entries; `None` if the length is wrong, a vector control has bits
    /// other than the mask bit, or a pending bit lies past the table.
    pub fn from_bytes(size: u32, bytes: &[u8]) -> Option<Self> {
        let mut t = MsixTable::new(size);
        let table = t.entries.len() * 16;
        if bytes.len() != table + t.pba.len() * 8 {
            return None;
        }
        let (tb, pb) = bytes.split_at(table);
        for (e, chunk) in t.entries.iter_mut().zip(tb.chunks_exact(16)) {
            for (w, b) in e.iter_mut().zip(chunk.chunks_exact(4)) {
                *w = u32::from_le_bytes(b.try_into().ok()?);
            }
            if e[3] & !PCI_MSIX_ENTRY_CTRL_MASKBIT != 0 {
                return None;
            }
        }
        for (i, (q, b)) in t.pba.iter_mut().zip(pb.chunks_exact(8)).enumerate() {
            *q = u64::from_le_bytes(b.try_into().ok()?);
            let valid = size as usize - i * 64;
            if valid < 64 && *q >> valid != 0 {
                return None;
            }
        }
        Some(t)
    }

    /// Reads PBA bytes at `offset` (relative to the PBA).
    pub fn read_pba(&self, offset: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            let off = offset + i as u64;
            *b = usize::try_from(off / 8)
                .ok()
                .and_then(|w| self.pba.get(w))
                .map_or(0, |q| q.to_le_bytes()[(off % 8) as usize]);
        }
    }
}

/// Where a placed MSI-X capability is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MsixLayout {
    pub(crate) cap: MsixCap,
    /// Offset of the message control register.
    pub(crate) flags: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_new_entries_masked_and_not_pending() {
        let t = MsixTable::new(3);
        assert!(t.masked(0) && t.masked(2));
        assert!(!t.pending(1));
    }

    #[test]
    fn table_write_vector_control_only_mask_bit_sticks() {
        let mut t = MsixTable::new(2);
        t.write_table(16 + 12, &0xffff_fffeu32.to_le_bytes());
        let mut b = [0u8; 4];
        t.read_table(16 + 12, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0);
        assert!(!t.masked(1));
    }

    #[test]
    fn table_write_message_reads_back() {
        let mut t = MsixTable::new(1);
        t.write_table(0, &0xfee0_1000u32.to_le_bytes());
        t.write_table(4, &0x1u32.to_le_bytes());
        t.write_table(8, &0x4321u32.to_le_bytes());
        assert_eq!(t.message(0), Some((0x1_fee0_1000, 0x4321)));
    }

    #[test]
    fn pba_pending_bit_readable_as_bytes() {
        let mut t = MsixTable::new(70);
        t.set_pending(65, true);
        let mut b = [0u8; 8];
        t.read_pba(8, &mut b);
        assert_eq!(u64::from_le_bytes(b), 1 << 1);
        t.set_pending(65, false);
        assert!(!t.pending(65));
    }
}
