//! Base address registers: what a function declares, and the masks that
//! make the sizing protocol fall out of plain masked writes.
//!
//! A BAR register is a value plus a write mask. The value holds the type
//! bits (I/O bit 0, memory type bits 2:1, prefetch bit 3); the write mask
//! holds the address bits the BAR decodes, `!(size - 1)`. Writing all-ones
//! therefore reads back `!(size - 1) | type bits`, writing an address keeps
//! its aligned part, and an unassigned BAR (mask 0, value 0) reads 0. The
//! upper dword of a 64-bit BAR uses `mask >> 32`; the expansion ROM's mask
//! keeps its enable bit writable.

use std::sync::Arc;

use uvfio_core::SharedMemory;

use crate::error::PciError;
use crate::regs::{
    PCI_BASE_ADDRESS_MEM_PREFETCH, PCI_BASE_ADDRESS_MEM_TYPE_64, PCI_BASE_ADDRESS_SPACE_IO,
    PCI_ROM_ADDRESS_ENABLE, PCI_ROM_ADDRESS_MASK,
};

/// Number of BAR slots in a type 0 header.
pub const PCI_NUM_BARS: usize = 6;

/// The kind of a BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory space.
    Memory32 {
        /// Prefetchable (bit 3).
        prefetchable: bool,
    },
    /// 64-bit memory space: uses this slot and the next one.
    Memory64 {
        /// Prefetchable (bit 3).
        prefetchable: bool,
    },
    /// I/O space (at most 256 bytes).
    Io,
}

impl BarKind {
    /// Whether the BAR decodes memory space.
    pub fn is_memory(self) -> bool {
        !matches!(self, BarKind::Io)
    }

    /// The read-only type bits of the BAR's low dword.
    pub fn type_bits(self) -> u32 {
        match self {
            BarKind::Io => PCI_BASE_ADDRESS_SPACE_IO,
            BarKind::Memory32 { prefetchable } => {
                if prefetchable {
                    PCI_BASE_ADDRESS_MEM_PREFETCH
                } else {
                    0
                }
            }
            BarKind::Memory64 { prefetchable } => {
                PCI_BASE_ADDRESS_MEM_TYPE_64
                    | if prefetchable {
                        PCI_BASE_ADDRESS_MEM_PREFETCH
                    } else {
                        0
                    }
            }
        }
    }

    /// Smallest and largest size of the kind.
    fn size_limits(self) -> (u64, u64) {
        match self {
            BarKind::Io => (4, 256),
            BarKind::Memory32 { .. } => (16, 1 << 31),
            BarKind::Memory64 { .. } => (16, 1 << 63),
        }
    }
}

/// A BAR a function declares.
///
/// ```
/// use uvfio_pci::Bar;
/// let regs = Bar::mem32(4096);
/// let io = Bar::io(8);
/// let big = Bar::mem64(1 << 32).prefetchable();
/// assert_eq!(big.size, 1 << 32);
/// # let _ = (regs, io);
/// ```
#[derive(Debug, Clone)]
pub struct Bar {
    /// Kind.
    pub kind: BarKind,
    /// Size in bytes: a power of two (I/O 4..=256, memory ≥ 16).
    pub size: u64,
    /// RAM backing: accesses are served from this memory by the wrapper
    /// (never reaching the function), and the region is mmap-able when the
    /// BAR is at least a page. Must be at least `size` bytes.
    pub memory: Option<Arc<SharedMemory>>,
}

impl Bar {
    /// A 32-bit, non-prefetchable memory BAR.
    pub fn mem32(size: u64) -> Self {
        Bar {
            kind: BarKind::Memory32 {
                prefetchable: false,
            },
            size,
            memory: None,
        }
    }

    /// A 64-bit, non-prefetchable memory BAR (takes two slots).
    pub fn mem64(size: u64) -> Self {
        Bar {
            kind: BarKind::Memory64 {
                prefetchable: false,
            },
            size,
            memory: None,
        }
    }

    /// An I/O BAR.
    pub fn io(size: u64) -> Self {
        Bar {
            kind: BarKind::Io,
            size,
            memory: None,
        }
    }

    /// Marks a memory BAR prefetchable (no effect on I/O BARs).
    pub fn prefetchable(mut self) -> Self {
        self.kind = match self.kind {
            BarKind::Memory32 { .. } => BarKind::Memory32 { prefetchable: true },
            BarKind::Memory64 { .. } => BarKind::Memory64 { prefetchable: true },
            BarKind::Io => BarKind::Io,
        };
        self
    }

    /// Backs the BAR with shared memory (a RAM BAR).
    pub fn with_memory(mut self, memory: Arc<SharedMemory>) -> Self {
        self.memory = Some(memory);
        self
    }

    /// Checks size and backing for BAR `index`.
    pub fn validate(&self, index: u8) -> Result<(), PciError> {
        let (min, max) = self.kind.size_limits();
        if !self.size.is_power_of_two() || self.size < min || self.size > max {
            return Err(PciError::BarSizeInvalid(self.size));
        }
        if let Some(m) = &self.memory {
            if !self.kind.is_memory() || m.len() < self.size {
                return Err(PciError::BarMemoryInvalid {
                    index,
                    len: m.len(),
                });
            }
        }
        Ok(())
    }

    /// The address bits the BAR decodes: `!(size - 1)`, 64 bits wide.
    pub fn size_mask(&self) -> u64 {
        !(self.size.wrapping_sub(1))
    }

    /// Write mask of the low dword.
    pub(crate) fn low_write_mask(&self) -> u32 {
        let low_bits = if self.kind.is_memory() { 0xf } else { 0x3 };
        (self.size_mask() as u32) & !low_bits
    }

    /// Write mask of the high dword (64-bit BARs only).
    pub(crate) fn high_write_mask(&self) -> u32 {
        (self.size_mask() >> 32) as u32
    }
}

/// The expansion ROM: a read-only image behind `PCI_ROM_ADDRESS`.
#[derive(Debug, Clone)]
pub struct Rom {
    /// Size of the ROM BAR: a power of two, at least 2 KiB.
    pub size: u64,
    /// The image; bytes past its end read as 0xff (erased flash).
    pub data: Vec<u8>,
}

impl Rom {
    /// Checks the size.
    pub fn validate(&self) -> Result<(), PciError> {
        if !self.size.is_power_of_two() || self.size < 2048 || self.size > 1 << 31 {
            return Err(PciError::BarSizeInvalid(self.size));
        }
        Ok(())
    }

    /// Write mask of the ROM BAR: the address bits plus the enable bit.
    pub(crate) fn write_mask(&self) -> u32 {
        ((!(self.size - 1)) as u32 & PCI_ROM_ADDRESS_MASK) | PCI_ROM_ADDRESS_ENABLE
    }
}
