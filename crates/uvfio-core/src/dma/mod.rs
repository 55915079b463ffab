//! The DMA address space of a container: an IOMMU type1v2-style map table
//! and the device-side accesses that go through it.
//!
//! Users map IOVA ranges onto *backings* ([`DmaBacking`]): memory this
//! process has mapped from the user's fd, or a channel back to the user
//! (vfio-user DMA_READ/DMA_WRITE). Devices read and write IOVAs through
//! [`Dma`]; every access is bounds- and permission-checked against the
//! table, and writes mark pages dirty while logging is on.
//!
//! Locking: one `RwLock` around the table. Device accesses take it shared,
//! so DMA from many threads proceeds in parallel; map, unmap and the dirty
//! report take it exclusively. Dirty bits are atomics so that writers under
//! the shared lock can set them.

mod dirty;
mod table;

use std::fmt;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use dirty::DirtyBitmap;
pub use table::{DmaMapping, MappingInfo};

use crate::errno::Result;
use crate::mmap::{MmapRegion, Protection};

bitflags::bitflags! {
    /// Rights of the *device* on a mapping (`VFIO_DMA_MAP_FLAG_READ/WRITE`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct DmaPerm: u32 {
        /// The device may read the memory.
        const READ = 1 << 0;
        /// The device may write the memory.
        const WRITE = 1 << 1;
    }
}

/// Where the bytes behind a mapping live.
///
/// Offsets are relative to the backing; the table checks every access
/// against the mapping before it gets here.
pub trait DmaBacking: Send + Sync + fmt::Debug {
    /// Bytes available from offset 0.
    fn len(&self) -> u64;
    /// Whether the backing is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies out of the backing.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Copies into the backing.
    fn write(&self, offset: u64, data: &[u8]) -> Result<()>;
}

impl DmaBacking for MmapRegion {
    fn len(&self) -> u64 {
        MmapRegion::len(self) as u64
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_at(offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.write_at(offset, data)
    }
}

impl DmaBacking for crate::mmap::SharedMemory {
    fn len(&self) -> u64 {
        crate::mmap::SharedMemory::len(self)
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_at(offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.write_at(offset, data)
    }
}

/// Maps a user's fd for DMA (sealed memfds only, see [`MmapRegion::map_sealed`]).
pub fn map_user_fd(
    fd: std::os::fd::BorrowedFd<'_>,
    offset: u64,
    size: u64,
    perm: DmaPerm,
) -> Result<Arc<dyn DmaBacking>> {
    let prot = if perm.contains(DmaPerm::WRITE) {
        Protection::ReadWrite
    } else {
        Protection::Read
    };
    Ok(Arc::new(MmapRegion::map_sealed(fd, offset, size, prot)?))
}

/// Limits of a DMA space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaConfig {
    /// Supported IOMMU page sizes (a bitmap; the smallest one is the
    /// alignment of map/unmap). Default: 4 KiB.
    pub pgsizes: u64,
    /// Most mappings at once (`dma_entry_limit`, default 65535).
    pub entry_limit: usize,
}

impl Default for DmaConfig {
    fn default() -> Self {
        DmaConfig {
            pgsizes: 4096,
            entry_limit: 65535,
        }
    }
}

impl DmaConfig {
    /// The smallest supported page size.
    pub fn min_page(&self) -> u64 {
        1u64 << self.pgsizes.trailing_zeros().min(63)
    }
}

/// The IOMMU address space of one container.
#[derive(Debug)]
pub struct DmaSpace {
    config: DmaConfig,
    table: RwLock<table::DmaTable>,
}

/// A cheap, clonable handle to a [`DmaSpace`], given to devices.
#[derive(Debug, Clone)]
pub struct Dma(Arc<DmaSpace>);

impl Dma {
    /// Reads guest memory at `iova` into `buf` (device reads need
    /// [`DmaPerm::READ`] on every mapping touched). The range may span
    /// adjacent mappings; any hole is `EFAULT`.
    pub fn read(&self, iova: u64, buf: &mut [u8]) -> Result<()> {
        self.0.read(iova, buf)
    }

    /// Writes `data` to guest memory at `iova` (needs [`DmaPerm::WRITE`]);
    /// marks the pages dirty while logging.
    pub fn write(&self, iova: u64, data: &[u8]) -> Result<()> {
        self.0.write(iova, data)
    }

    /// The space itself.
    pub fn space(&self) -> &DmaSpace {
        &self.0
    }
}

impl DmaSpace {
    /// An empty space.
    pub fn new(config: DmaConfig) -> Arc<Self> {
        Arc::new(DmaSpace {
            config,
            table: RwLock::new(table::DmaTable::new(config)),
        })
    }

    /// A device handle on this space.
    pub fn handle(self: &Arc<Self>) -> Dma {
        Dma(self.clone())
    }

    /// The limits in force.
    pub fn config(&self) -> DmaConfig {
        self.config
    }

    fn read_table(&self) -> RwLockReadGuard<'_, table::DmaTable> {
        // The table is consistent at every await point of a writer: a panic
        // elsewhere cannot leave it half-updated.
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_table(&self) -> RwLockWriteGuard<'_, table::DmaTable> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// `VFIO_IOMMU_MAP_DMA`: maps `size` bytes at `iova` onto `backing`
    /// starting at `backing_offset`.
    ///
    /// Errors, in the kernel's order: size 0, unaligned iova/size, no
    /// permission, or iova+size wrapping → EINVAL; a backing too short →
    /// EINVAL; any overlap → EEXIST; the entry limit → ENOSPC.
    pub fn map(
        &self,
        iova: u64,
        size: u64,
        perm: DmaPerm,
        backing: Arc<dyn DmaBacking>,
        backing_offset: u64,
    ) -> Result<()> {
        self.write_table()
            .map(iova, size, perm, backing, backing_offset)
    }

    /// `VFIO_IOMMU_UNMAP_DMA`: removes every mapping inside
    /// `iova..iova+size` and returns the bytes unmapped (0 if none). A range
    /// that would split a mapping is EINVAL and unmaps nothing.
    pub fn unmap(&self, iova: u64, size: u64) -> Result<u64> {
        self.write_table().unmap(iova, size)
    }

    /// `VFIO_DMA_UNMAP_FLAG_ALL`: removes everything; returns the bytes.
    pub fn unmap_all(&self) -> u64 {
        self.write_table().unmap_all()
    }

    /// The mappings, in IOVA order.
    pub fn mappings(&self) -> Vec<MappingInfo> {
        self.read_table().mappings()
    }

    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.read_table().len()
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self, iova: u64, buf: &mut [u8]) -> Result<()> {
        self.read_table()
            .access(iova, buf.len(), DmaPerm::READ, |m, off, range| {
                m.backing.read(off, &mut buf[range])
            })
    }

    fn write(&self, iova: u64, data: &[u8]) -> Result<()> {
        self.read_table()
            .access(iova, data.len(), DmaPerm::WRITE, |m, off, range| {
                let n = (range.end - range.start) as u64;
                m.backing.write(off, &data[range])?;
                if let Some(d) = &m.dirty {
                    d.mark(off - m.backing_offset, n);
                }
                Ok(())
            })
    }

    /// Starts dirty-page logging at `pgsize` (a power of two ≥ the IOMMU's
    /// smallest page): every mapping, present and future, gets a bitmap.
    /// EINVAL for a bad page size; EBUSY if logging is already on.
    pub fn start_dirty_logging(&self, pgsize: u64) -> Result<()> {
        self.write_table().start_dirty(pgsize)
    }

    /// Stops logging and drops the bitmaps. EINVAL if it was off.
    pub fn stop_dirty_logging(&self) -> Result<()> {
        self.write_table().stop_dirty()
    }

    /// The dirty-logging page size, if logging is on.
    pub fn dirty_page_size(&self) -> Option<u64> {
        self.read_table().dirty_pgsize()
    }

    /// Reports and clears the dirty bits of `iova..iova+size` at `pgsize`
    /// (which must be the logging page size): one bit per page, LSB first
    /// in u64 words, pages outside any mapping zero. The read-and-clear of
    /// each word is atomic with respect to concurrent device writes.
    pub fn report_dirty(&self, iova: u64, size: u64, pgsize: u64) -> Result<Vec<u64>> {
        self.read_table().report_dirty(iova, size, pgsize)
    }
}
