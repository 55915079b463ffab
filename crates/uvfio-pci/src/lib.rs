//! # uvfio-pci — PCI functions on top of uvfio-core
//!
//! A driver describes its function once — a [`PciHeader`], [`Bar`]s, an
//! expansion [`Rom`] and typed [`Capability`]s in a [`PciConfig`] — and
//! implements [`PciFunction`] (its BAR handlers and hooks). [`PciDevice`]
//! turns that into a [`uvfio_core::DeviceOps`] with vfio-pci's region and
//! IRQ indexes ([`index`]), so the device can be registered with a
//! [`uvfio_core::Registry`] and used through the in-process uAPI or a
//! vfio-user server.
//!
//! - [`ConfigSpace`]: values plus write and RW1C masks; BAR sizing falls
//!   out of the masks.
//! - [`cap`]: capability layouts and a loop-safe walker over raw bytes
//!   ([`walk_capabilities`]), usable on config space read from any device.
//! - [`PciHandle`]: what the function uses to raise interrupts (MSI-X, MSI
//!   or INTx, whichever is enabled) and to DMA (only while bus master).
//! - [`migration`]: live migration. A function returns a
//!   [`FunctionMigration`] from [`PciFunction::migration`]; the wrapper
//!   migrates config space, MSI-X, interrupt state and RAM BARs with it,
//!   and quiesces interrupts and DMA while the device is stopped.
//!
//! ```
//! use uvfio_core::{DeviceOps, GroupId, Registry};
//! use uvfio_pci::*;
//!
//! /// A function with one 4-byte scratch register in an I/O BAR.
//! #[derive(Default)]
//! struct Scratch(std::sync::atomic::AtomicU32);
//!
//! impl PciFunction for Scratch {
//!     fn bar_read(&self, _bar: u8, _off: u64, data: &mut [u8]) -> uvfio_core::Result<()> {
//!         let v = self.0.load(std::sync::atomic::Ordering::SeqCst).to_le_bytes();
//!         data.copy_from_slice(&v[..data.len()]);
//!         Ok(())
//!     }
//!     fn bar_write(&self, _bar: u8, _off: u64, data: &[u8]) -> uvfio_core::Result<()> {
//!         let mut b = [0u8; 4];
//!         b[..data.len()].copy_from_slice(data);
//!         self.0.store(u32::from_le_bytes(b), std::sync::atomic::Ordering::SeqCst);
//!         Ok(())
//!     }
//! }
//!
//! let config = PciConfig {
//!     header: PciHeader { vendor_id: 0x1234, device_id: 0x5678, ..Default::default() },
//!     bars: [Some(Bar::io(4)), None, None, None, None, None],
//!     ..Default::default()
//! };
//! let dev = PciDevice::new(config, |_handle| Scratch::default())?;
//! assert_eq!(dev.info().num_regions, 9);
//!
//! let registry = Registry::default();
//! let dev = registry.init(dev, "scratch0", GroupId(1))?.register().map_err(|e| e.errno)?;
//! let handle = registry.open_device(GroupId(1), "scratch0")?;
//! let mut id = [0u8; 4];
//! handle.read(index::VFIO_PCI_CONFIG_REGION_INDEX, 0, &mut id)?;
//! assert_eq!(u32::from_le_bytes(id), 0x5678_1234);
//! handle.write(0, 0, &7u32.to_le_bytes())?;
//! drop(handle);
//! assert_eq!(dev.unregister().into_function().0.into_inner(), 7);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod bar;
pub mod cap;
pub mod config;
pub mod device;
pub mod error;
pub mod index;
pub mod migration;
pub mod regs;

pub use bar::{Bar, BarKind, Rom, PCI_NUM_BARS};
pub use cap::msix::MsixTable;
pub use cap::{
    walk_capabilities, walk_extended_capabilities, CapEntry, CapWalk, Capability, ExtCapability,
    MsiCap, MsixCap, PcieCap, PcieDeviceType, PmCap, WalkError,
};
pub use config::{BarInfo, ConfigSpace, PciConfig, PciHeader, RawBytes};
pub use device::{
    for_each_piece, ConfigWrite, Delivery, PciDevice, PciFunction, PciHandle, PciIrqs, PciQuirks,
};
pub use error::PciError;
pub use migration::{FunctionMigration, StateReader, StateWriter};
pub use regs::{Command, Status};

#[cfg(test)]
mod tests;
