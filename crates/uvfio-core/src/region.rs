//! Region descriptions: what `VFIO_DEVICE_GET_REGION_INFO` returns.

use std::os::fd::OwnedFd;
use std::sync::Arc;

bitflags::bitflags! {
    /// `VFIO_REGION_INFO_FLAG_*`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct RegionFlags: u32 {
        /// The region may be read.
        const READ = 1 << 0;
        /// The region may be written.
        const WRITE = 1 << 1;
        /// (Parts of) the region may be mmapped through its fd.
        const MMAP = 1 << 2;
        /// The info carries a capability chain.
        const CAPS = 1 << 3;
    }
}

/// One mmap-able window of a region (`vfio_region_sparse_mmap_area`),
/// relative to the start of the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseArea {
    /// Offset from the start of the region.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
}

/// `VFIO_REGION_INFO_CAP_TYPE` id.
pub const VFIO_REGION_INFO_CAP_SPARSE_MMAP: u16 = 1;
/// `VFIO_REGION_INFO_CAP_TYPE` id.
pub const VFIO_REGION_INFO_CAP_TYPE: u16 = 2;
/// `VFIO_REGION_INFO_CAP_MSIX_MAPPABLE` id.
pub const VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: u16 = 3;

/// A region-info capability (the typed form of the kernel's chain).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegionCap {
    /// Only these areas may be mmapped.
    SparseMmap(Vec<SparseArea>),
    /// Device-specific region type/subtype (indexes past the bus's fixed ones).
    Type {
        /// e.g. `(1 << 31) | vendor_id` for PCI vendor types.
        r#type: u32,
        /// Type-specific subtype.
        subtype: u32,
    },
    /// The MSI-X table's BAR may be mmapped.
    MsixMappable,
}

/// The fd through which a mappable region is mmapped, and where the region
/// starts inside it.
#[derive(Debug, Clone)]
pub struct RegionMmap {
    /// Shared so a driver can hand the same fd to every user.
    pub fd: Arc<OwnedFd>,
    /// Offset of the region's first byte within `fd`.
    pub offset: u64,
}

/// What a driver reports for one region index.
#[derive(Debug, Clone, Default)]
pub struct RegionInfo {
    /// Region index (`VFIO_PCI_*_REGION_INDEX` for PCI devices).
    pub index: u32,
    /// Access flags. `CAPS` is derived from `caps` by transports; drivers
    /// need not set it.
    pub flags: RegionFlags,
    /// Size in bytes; 0 means the region is not implemented.
    pub size: u64,
    /// Capability chain.
    pub caps: Vec<RegionCap>,
    /// Set for regions with [`RegionFlags::MMAP`].
    pub mmap: Option<RegionMmap>,
}

impl RegionInfo {
    /// An unimplemented region (size 0, no flags), as VFIO reports unused indexes.
    pub fn absent(index: u32) -> Self {
        RegionInfo {
            index,
            ..Default::default()
        }
    }

    /// A read/write region of `size` bytes served through `read`/`write`.
    pub fn rw(index: u32, size: u64) -> Self {
        RegionInfo {
            index,
            flags: RegionFlags::READ | RegionFlags::WRITE,
            size,
            ..Default::default()
        }
    }

    /// The sparse-mmap areas, if the chain has them.
    pub fn sparse_areas(&self) -> Option<&[SparseArea]> {
        self.caps.iter().find_map(|c| match c {
            RegionCap::SparseMmap(a) => Some(a.as_slice()),
            _ => None,
        })
    }
}
