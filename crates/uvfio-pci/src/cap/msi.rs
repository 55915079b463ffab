//! The MSI capability.
//!
//! Writable: the enable bit, QSIZE (clamped to QMASK after each write, as
//! vfio-pci does), the message address and data, and — with per-vector
//! masking — the mask bits of implemented vectors. QMASK, the 64-bit and
//! mask-capable bits and the pending bits are read only; the pending bits
//! are set by the wrapper when a masked vector fires.

use super::CapBytes;
use crate::error::PciError;
use crate::regs::{
    PCI_MSI_ADDRESS_HI, PCI_MSI_ADDRESS_LO, PCI_MSI_DATA_32, PCI_MSI_DATA_64, PCI_MSI_FLAGS,
    PCI_MSI_FLAGS_64BIT, PCI_MSI_FLAGS_ENABLE, PCI_MSI_FLAGS_MASKBIT, PCI_MSI_FLAGS_QSIZE,
    PCI_MSI_MASK_32, PCI_MSI_MASK_64, PCI_MSI_PENDING_32, PCI_MSI_PENDING_64,
};

/// MSI capability declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiCap {
    /// Vectors the function supports: 1, 2, 4, 8, 16 or 32.
    pub vectors: u32,
    /// 64-bit message address.
    pub addr64: bool,
    /// Per-vector mask and pending bits.
    pub per_vector_mask: bool,
}

impl Default for MsiCap {
    fn default() -> Self {
        MsiCap {
            vectors: 1,
            addr64: true,
            per_vector_mask: true,
        }
    }
}

impl MsiCap {
    /// Checks the vector count.
    pub fn validate(&self) -> Result<(), PciError> {
        if !self.vectors.is_power_of_two() || self.vectors > 32 {
            return Err(PciError::MsiVectorsInvalid(self.vectors));
        }
        Ok(())
    }

    /// Length of the capability: 10, 14, 20 or 24 bytes.
    pub fn len(&self) -> usize {
        match (self.addr64, self.per_vector_mask) {
            (false, false) => 10,
            (true, false) => 14,
            (false, true) => 20,
            (true, true) => 24,
        }
    }

    /// Always false: the capability has a header.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn qmask(&self) -> u16 {
        self.vectors.trailing_zeros() as u16
    }

    pub(crate) fn layout(&self) -> CapBytes {
        let mut c = CapBytes::new(self.len());
        let mut flags = self.qmask() << 1;
        if self.addr64 {
            flags |= PCI_MSI_FLAGS_64BIT;
        }
        if self.per_vector_mask {
            flags |= PCI_MSI_FLAGS_MASKBIT;
        }
        c.set_u16(usize::from(PCI_MSI_FLAGS), flags);
        c.set_wmask16(
            usize::from(PCI_MSI_FLAGS),
            PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE,
        );
        c.set_wmask32(usize::from(PCI_MSI_ADDRESS_LO), 0xffff_fffc);
        let l = MsiLayout::new(0, *self);
        if self.addr64 {
            c.set_wmask32(usize::from(PCI_MSI_ADDRESS_HI), 0xffff_ffff);
        }
        c.set_wmask16(usize::from(l.data), 0xffff);
        if let Some(mask) = l.mask {
            c.set_wmask32(usize::from(mask), l.vector_bits());
        }
        c
    }
}

/// Where the registers of a placed MSI capability are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MsiLayout {
    pub(crate) cap: MsiCap,
    /// Offset of the capability.
    pub(crate) base: u16,
    /// Offset of the message control register.
    pub(crate) flags: u16,
    /// Offset of the data register.
    pub(crate) data: u16,
    /// Offset of the mask bits, with per-vector masking.
    pub(crate) mask: Option<u16>,
    /// Offset of the pending bits, with per-vector masking.
    pub(crate) pending: Option<u16>,
}

impl MsiLayout {
    pub(crate) fn new(base: u16, cap: MsiCap) -> Self {
        let (data, mask, pending) = if cap.addr64 {
            (PCI_MSI_DATA_64, PCI_MSI_MASK_64, PCI_MSI_PENDING_64)
        } else {
            (PCI_MSI_DATA_32, PCI_MSI_MASK_32, PCI_MSI_PENDING_32)
        };
        MsiLayout {
            cap,
            base,
            flags: base + PCI_MSI_FLAGS,
            data: base + data,
            mask: cap.per_vector_mask.then_some(base + mask),
            pending: cap.per_vector_mask.then_some(base + pending),
        }
    }

    /// One bit per implemented vector.
    pub(crate) fn vector_bits(&self) -> u32 {
        if self.cap.vectors >= 32 {
            u32::MAX
        } else {
            (1u32 << self.cap.vectors) - 1
        }
    }
}
