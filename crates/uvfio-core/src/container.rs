//! Containers: an IOMMU context (`/dev/vfio/vfio`) that groups attach to,
//! holding one DMA space shared by every device of those groups.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::dma::{Dma, DmaBacking, DmaConfig, DmaPerm, DmaSpace};
use crate::errno::{Errno, Result};
use crate::group::GroupId;

/// `VFIO_TYPE1v2_IOMMU`.
pub const VFIO_TYPE1V2_IOMMU: u32 = 3;
/// `VFIO_TYPE1_IOMMU` (legacy unmap semantics; not offered).
pub const VFIO_TYPE1_IOMMU: u32 = 1;
/// `VFIO_UNMAP_ALL` extension.
pub const VFIO_UNMAP_ALL: u32 = 9;

/// An IOMMU backend a container can be set to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IommuType {
    /// Type1 with v2 semantics: unmaps never bisect a mapping.
    Type1v2,
}

impl IommuType {
    /// From the `VFIO_SET_IOMMU` argument; EINVAL for anything we lack.
    pub fn from_raw(v: u32) -> Result<Self> {
        match v {
            VFIO_TYPE1V2_IOMMU => Ok(IommuType::Type1v2),
            _ => Err(Errno::INVAL),
        }
    }
}

/// What `VFIO_IOMMU_GET_INFO` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IommuInfo {
    /// Supported page sizes (bitmap).
    pub iova_pgsizes: u64,
    /// Mapping entries still available (`DMA_AVAIL` cap).
    pub dma_avail: u32,
}

#[derive(Debug, Default)]
pub(crate) struct ContainerState {
    pub(crate) groups: Vec<GroupId>,
    iommu: Option<IommuType>,
}

#[derive(Debug)]
pub(crate) struct ContainerInner {
    pub(crate) id: u64,
    state: Mutex<ContainerState>,
    pub(crate) dma: Arc<DmaSpace>,
}

impl ContainerInner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, ContainerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn iommu_set(&self) -> bool {
        self.lock().iommu.is_some()
    }

    /// A group left. The last one releases the backend, like the kernel:
    /// every mapping goes, and the container can be set up afresh.
    pub(crate) fn detach_group(&self, id: GroupId) {
        let mut st = self.lock();
        st.groups.retain(|g| *g != id);
        if st.groups.is_empty() && st.iommu.take().is_some() {
            drop(st);
            self.dma.unmap_all();
        }
    }
}

/// A container. Cloning gives another handle on the same container.
#[derive(Debug, Clone)]
pub struct Container {
    pub(crate) inner: Arc<ContainerInner>,
}

static NEXT_CONTAINER: AtomicU64 = AtomicU64::new(1);

impl Default for Container {
    fn default() -> Self {
        Self::new()
    }
}

impl Container {
    /// A container with default limits (4 KiB pages, 65535 entries).
    pub fn new() -> Self {
        Self::with_config(DmaConfig::default())
    }

    /// A container with the given DMA limits.
    pub fn with_config(config: DmaConfig) -> Self {
        Container {
            inner: Arc::new(ContainerInner {
                id: NEXT_CONTAINER.fetch_add(1, Ordering::Relaxed),
                state: Mutex::new(ContainerState::default()),
                dma: DmaSpace::new(config),
            }),
        }
    }

    /// `VFIO_GET_API_VERSION`.
    pub const API_VERSION: u32 = 0;

    /// `VFIO_CHECK_EXTENSION`.
    pub fn check_extension(&self, ext: u32) -> bool {
        matches!(ext, VFIO_TYPE1V2_IOMMU | VFIO_UNMAP_ALL)
    }

    /// `VFIO_SET_IOMMU`: needs at least one group attached and no backend
    /// yet (EINVAL otherwise).
    pub fn set_iommu(&self, ty: IommuType) -> Result<()> {
        let mut st = self.inner.lock();
        if st.groups.is_empty() || st.iommu.is_some() {
            return Err(Errno::INVAL);
        }
        st.iommu = Some(ty);
        Ok(())
    }

    /// A process-unique number, for logs.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The backend, once set.
    pub fn iommu(&self) -> Option<IommuType> {
        self.inner.lock().iommu
    }

    /// Groups attached.
    pub fn groups(&self) -> Vec<GroupId> {
        self.inner.lock().groups.clone()
    }

    fn require_iommu(&self) -> Result<()> {
        if self.inner.iommu_set() {
            Ok(())
        } else {
            Err(Errno::INVAL)
        }
    }

    /// `VFIO_IOMMU_GET_INFO`.
    pub fn iommu_info(&self) -> Result<IommuInfo> {
        self.require_iommu()?;
        let cfg = self.inner.dma.config();
        let used = self.inner.dma.len();
        Ok(IommuInfo {
            iova_pgsizes: cfg.pgsizes,
            dma_avail: u32::try_from(cfg.entry_limit.saturating_sub(used)).unwrap_or(u32::MAX),
        })
    }

    /// `VFIO_IOMMU_MAP_DMA` (see [`DmaSpace::map`] for the rules).
    pub fn map_dma(
        &self,
        iova: u64,
        size: u64,
        perm: DmaPerm,
        backing: Arc<dyn DmaBacking>,
        backing_offset: u64,
    ) -> Result<()> {
        self.require_iommu()?;
        self.inner
            .dma
            .map(iova, size, perm, backing, backing_offset)
    }

    /// `VFIO_IOMMU_UNMAP_DMA`: returns the bytes unmapped.
    pub fn unmap_dma(&self, iova: u64, size: u64) -> Result<u64> {
        self.require_iommu()?;
        self.inner.dma.unmap(iova, size)
    }

    /// `VFIO_IOMMU_UNMAP_DMA` with `VFIO_DMA_UNMAP_FLAG_ALL`.
    pub fn unmap_all(&self) -> Result<u64> {
        self.require_iommu()?;
        Ok(self.inner.dma.unmap_all())
    }

    /// `VFIO_IOMMU_DIRTY_PAGES_FLAG_START`.
    pub fn start_dirty_logging(&self, pgsize: u64) -> Result<()> {
        self.require_iommu()?;
        self.inner.dma.start_dirty_logging(pgsize)
    }

    /// `VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP`.
    pub fn stop_dirty_logging(&self) -> Result<()> {
        self.require_iommu()?;
        self.inner.dma.stop_dirty_logging()
    }

    /// `VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP`: report and clear.
    pub fn report_dirty(&self, iova: u64, size: u64, pgsize: u64) -> Result<Vec<u64>> {
        self.require_iommu()?;
        self.inner.dma.report_dirty(iova, size, pgsize)
    }

    /// The DMA space, for inspection.
    pub fn dma_space(&self) -> &Arc<DmaSpace> {
        &self.inner.dma
    }

    /// A device-side handle on the DMA space.
    pub fn dma(&self) -> Dma {
        self.inner.dma.handle()
    }
}
