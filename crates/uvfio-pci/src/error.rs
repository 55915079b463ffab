//! Errors of the PCI layer. Every variant carries the value that was
//! wrong; [`From<&PciError>`] for [`Errno`] is the one place they become
//! errnos.

use uvfio_core::Errno;

/// What went wrong declaring or operating a PCI function.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PciError {
    /// A BAR slot is taken (declared twice, or the upper half of a 64-bit BAR).
    #[error("BAR {0} is already in use")]
    BarInUse(u8),
    /// A BAR index past 5 (or a 64-bit BAR at index 5).
    #[error("BAR index {0} is invalid")]
    BarIndexInvalid(u8),
    /// A BAR or ROM size that is not a power of two within the kind's limits.
    #[error("BAR size {0:#x} is invalid")]
    BarSizeInvalid(u64),
    /// RAM backing on an I/O BAR, or backing memory shorter than the BAR.
    #[error("BAR {index} cannot be backed by {len:#x} bytes of memory")]
    BarMemoryInvalid {
        /// BAR index.
        index: u8,
        /// Length of the memory offered.
        len: u64,
    },
    /// A capability does not fit in the capability area.
    #[error("capability {id:#x} ({len} bytes) does not fit at {offset:#x}")]
    CapabilityNoSpace {
        /// Capability ID.
        id: u16,
        /// Its length.
        len: usize,
        /// Where it would have gone.
        offset: usize,
    },
    /// A capability that may appear once was declared twice.
    #[error("capability {0:#x} declared twice")]
    CapabilityDuplicate(u8),
    /// An MSI vector count that is not 1, 2, 4, 8, 16 or 32.
    #[error("MSI vector count {0} is invalid")]
    MsiVectorsInvalid(u32),
    /// An MSI-X table size outside 1..=2048.
    #[error("MSI-X table size {0} is invalid")]
    MsixTableSizeInvalid(u32),
    /// An MSI-X table or PBA outside its BAR, misaligned, or overlapping.
    #[error("MSI-X structure at BAR {bar} offset {offset:#x} (+{len:#x}) is invalid")]
    MsixPlacementInvalid {
        /// BAR index.
        bar: u8,
        /// Offset in the BAR.
        offset: u64,
        /// Length of the structure.
        len: u64,
    },
    /// Extended capabilities need a PCI Express capability.
    #[error("extended capability {0:#x} needs a PCI Express function")]
    ExtendedCapabilityWithoutPcie(u16),
    /// Raw bytes outside the device-specific area of config space.
    #[error("raw config bytes at {offset:#x} (+{len}) are invalid")]
    RawBytesInvalid {
        /// Offset.
        offset: usize,
        /// Length.
        len: usize,
    },
    /// An interrupt pin outside 0..=4.
    #[error("interrupt pin {0} is invalid")]
    InterruptPinInvalid(u8),
    /// A config-space access past the end or of a size other than 1, 2, 4.
    #[error("config access at {offset:#x} of {len} bytes is invalid")]
    ConfigAccessInvalid {
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
    },
    /// A vector the index does not have.
    #[error("interrupt vector {vector} of index {index} is invalid")]
    VectorInvalid {
        /// IRQ index.
        index: u32,
        /// Vector.
        vector: u32,
    },
    /// DMA while the command register's bus-master bit is clear.
    #[error("bus master is disabled")]
    BusMasterDisabled,
    /// DMA while the device is stopped for migration.
    #[error("the device is stopped for migration")]
    Stopped,
    /// DMA while no user has the device open (no DMA space).
    #[error("the device is not open")]
    NotOpen,
    /// The DMA space refused the access.
    #[error("DMA at {iova:#x} (+{len:#x}) failed: {errno}")]
    Dma {
        /// IOVA.
        iova: u64,
        /// Length.
        len: usize,
        /// What the DMA space said.
        errno: Errno,
    },
    /// The interrupt state refused a trigger.
    #[error("interrupt delivery failed: {0}")]
    Irq(Errno),
    /// An OS call failed (e.g. duplicating a memory fd).
    #[error("OS error: {0}")]
    Os(Errno),
}

impl From<&PciError> for Errno {
    fn from(e: &PciError) -> Errno {
        match e {
            PciError::BusMasterDisabled | PciError::Stopped => Errno::IO,
            PciError::NotOpen => Errno::NODEV,
            PciError::Dma { errno, .. } | PciError::Irq(errno) | PciError::Os(errno) => *errno,
            _ => Errno::INVAL,
        }
    }
}

impl From<PciError> for Errno {
    fn from(e: PciError) -> Errno {
        Errno::from(&e)
    }
}
