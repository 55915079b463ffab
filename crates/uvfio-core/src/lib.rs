//! # uvfio-core — the VFIO device model, in userspace
//!
//! A *bus driver* owns a device's state and implements [`DeviceOps`] on its
//! own type. It **inits** the device ([`Registry::init`]), finishes its own
//! setup, and **registers** it last ([`UnregisteredDevice::register`]): from
//! then on users can open it. On remove it **unregisters**
//! ([`RegisteredDevice::unregister`]), which unlinks the device, waits for
//! every user to release it while calling `request`, and hands the driver's
//! data back.
//!
//! Users reach devices the way VFIO users do: a [`Container`] (an IOMMU
//! address space, [`DmaSpace`]), a [`Group`] attached to it, and a
//! [`DeviceHandle`] per open device. [`Registry::open_device`] takes those
//! steps in one call for a user that wants one device ([`OpenDevice`]).
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use uvfio_core::*;
//!
//! /// A device with one 4-byte read/write register.
//! #[derive(Default)]
//! struct Scratch {
//!     reg: AtomicU32,
//! }
//!
//! impl DeviceOps for Scratch {
//!     fn info(&self) -> DeviceInfo {
//!         DeviceInfo { flags: DeviceFlags::empty(), num_regions: 1, num_irqs: 0 }
//!     }
//!     fn region_info(&self, index: u32) -> Result<RegionInfo> {
//!         Ok(RegionInfo::rw(index, 4))
//!     }
//!     fn read(&self, _index: u32, _offset: u64, buf: &mut [u8]) -> Result<()> {
//!         buf.copy_from_slice(&self.reg.load(Ordering::SeqCst).to_le_bytes()[..buf.len()]);
//!         Ok(())
//!     }
//!     fn write(&self, _index: u32, _offset: u64, data: &[u8]) -> Result<()> {
//!         let mut b = [0u8; 4];
//!         b[..data.len()].copy_from_slice(data);
//!         self.reg.store(u32::from_le_bytes(b), Ordering::SeqCst);
//!         Ok(())
//!     }
//! }
//!
//! // probe: init, finish setup, register last.
//! let registry = Registry::default();
//! let mut dev = registry.init(Scratch::default(), "scratch0", GroupId(7))?;
//! dev.driver_mut().reg = AtomicU32::new(0x1234);
//! let dev = dev.register().map_err(|e| e.errno)?;
//!
//! // a user: container → group → device.
//! let container = Container::new();
//! let group = registry.open_group(GroupId(7))?;
//! group.set_container(&container)?;
//! container.set_iommu(IommuType::Type1v2)?;
//! let handle = group.get_device("scratch0")?;
//! let mut buf = [0u8; 4];
//! handle.read(0, 0, &mut buf)?;
//! assert_eq!(u32::from_le_bytes(buf), 0x1234);
//! drop(handle); // release
//!
//! // remove: unregister waits for users, then gives the data back.
//! let scratch: Scratch = dev.unregister();
//! assert_eq!(scratch.reg.load(Ordering::SeqCst), 0x1234);
//! # Ok::<(), Errno>(())
//! ```

#![warn(missing_docs)]

mod container;
pub mod dma;
mod errno;
mod group;
pub mod irq;
mod lifecycle;
pub mod migration;
pub mod mmap;
mod open_device;
mod ops;
mod region;
mod registry;

pub use container::{
    Container, IommuInfo, IommuType, VFIO_TYPE1V2_IOMMU, VFIO_TYPE1_IOMMU, VFIO_UNMAP_ALL,
};
pub use dma::{Dma, DmaBacking, DmaConfig, DmaPerm, DmaSpace};
pub use errno::{Errno, Result};
pub use group::{Group, GroupId, GroupStatus};
pub use irq::{IrqAction, IrqData, IrqFlags, IrqIndexConfig, IrqInfo, IrqLines, SetIrqs};
pub use lifecycle::{
    CancelToken, DeviceHandle, OpenOptions, RegisterError, RegisteredDevice, RequestHook,
    UnregisterOptions, UnregisteredDevice, Unregistering,
};
pub use migration::{MigFlags, MigState, MigrationOps};
pub use mmap::{MmapRegion, Protection, SharedMemory};
pub use open_device::OpenDevice;
pub use ops::{CloseReason, DeviceFlags, DeviceInfo, DeviceOps, OpenContext, MAX_REGIONS};
pub use region::{
    RegionCap, RegionFlags, RegionInfo, RegionMmap, SparseArea, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_REGION_INFO_CAP_TYPE,
};
pub use registry::{
    DeviceSummary, Listener, Registry, RegistryConfig, RegistryEvent, MAX_NAME_LEN,
};
