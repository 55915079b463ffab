//! The driver's side of a device: the Rust form of `struct vfio_device_ops`.

use crate::dma::Dma;
use crate::errno::{Errno, Result};
use crate::irq::{IrqInfo, IrqLines, SetIrqs};
use crate::migration::MigrationOps;
use crate::region::RegionInfo;

bitflags::bitflags! {
    /// `VFIO_DEVICE_FLAGS_*`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct DeviceFlags: u32 {
        /// The device supports `reset`.
        const RESET = 1 << 0;
        /// A PCI device (vfio-pci region and IRQ indexes).
        const PCI = 1 << 1;
        /// A platform device.
        const PLATFORM = 1 << 2;
        /// The info carries a capability chain.
        const CAPS = 1 << 7;
    }
}

/// What `VFIO_DEVICE_GET_INFO` returns. Fixed once the device is registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceInfo {
    /// Device flags.
    pub flags: DeviceFlags,
    /// Highest region index + 1 (at most [`MAX_REGIONS`]).
    pub num_regions: u32,
    /// Highest IRQ index + 1.
    pub num_irqs: u32,
}

/// Upper bound on `num_regions` the core accepts from a driver.
pub const MAX_REGIONS: u32 = 1024;

/// Handed to [`DeviceOps::open_device`]: what the device may use while it is
/// open.
#[derive(Debug, Clone)]
pub struct OpenContext {
    /// The DMA space of the container the device's group is attached to.
    /// Keep a clone for DMA from the driver's own threads; drop it in
    /// `close_device`.
    pub dma: Dma,
}

/// The operations of a device, implemented by a bus driver on its own type.
///
/// Every method receives the driver's own type (`&self`): no downcasts.
/// Methods take `&self` because several users may call them concurrently;
/// a driver keeps mutable state behind its own locks.
///
/// The core validates every request before it reaches the driver: region
/// accesses are within the region's size and honour its READ/WRITE flags,
/// IRQ indexes are below `num_irqs`, `reset` is only called when the device
/// reports [`DeviceFlags::RESET`]. A missing operation is an errno, never a
/// panic.
pub trait DeviceOps: Send + Sync + 'static {
    /// Device flags and the number of regions and IRQ indexes. Called once,
    /// at register; the answer must not change afterwards.
    fn info(&self) -> DeviceInfo;

    /// Called when the device goes from 0 to 1 open handles, before the
    /// opener gets its handle. An error fails that open.
    fn open_device(&self, ctx: &OpenContext) -> Result<()> {
        let _ = ctx;
        Ok(())
    }

    /// Called when the last handle is released, with why (see
    /// [`CloseReason`]: the last user's [`OpenOptions::keep_state`]). The
    /// core then clears the [`IrqLines`] returned by [`DeviceOps::irqs`].
    ///
    /// [`OpenOptions::keep_state`]: crate::OpenOptions::keep_state
    fn close_device(&self, reason: CloseReason) {
        let _ = reason;
    }

    /// Describes region `index` (`index < info().num_regions`). The core
    /// reads the layout (size and flags) of every region once at register.
    fn region_info(&self, index: u32) -> Result<RegionInfo> {
        Ok(RegionInfo::absent(index))
    }

    /// Reads `buf.len()` bytes of region `index` at `offset`; the range is
    /// already checked against the region's size.
    fn read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let _ = (index, offset, buf);
        Err(Errno::INVAL)
    }

    /// Writes `data` to region `index` at `offset`; the range is already
    /// checked against the region's size.
    fn write(&self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        let _ = (index, offset, data);
        Err(Errno::INVAL)
    }

    /// The device's interrupt state, if it uses the core's [`IrqLines`]; the
    /// default `irq_info`/`set_irqs` then need no override.
    fn irqs(&self) -> Option<&IrqLines> {
        None
    }

    /// GET_IRQ_INFO for `index` (`index < info().num_irqs`).
    fn irq_info(&self, index: u32) -> Result<IrqInfo> {
        match self.irqs() {
            Some(lines) => lines.info(index),
            None => Ok(IrqInfo {
                index,
                ..Default::default()
            }),
        }
    }

    /// SET_IRQS (`req.index < info().num_irqs`).
    fn set_irqs(&self, req: SetIrqs) -> Result<()> {
        match self.irqs() {
            Some(lines) => lines.set_irqs(req),
            None => Err(Errno::INVAL),
        }
    }

    /// Resets the device. Only called if `info()` reports RESET.
    fn reset(&self) -> Result<()> {
        Err(Errno::NOTTY)
    }

    /// Migration support, if the device has it (VFIO_DEVICE_FEATURE_MIGRATION).
    fn migration(&self) -> Option<&dyn MigrationOps> {
        None
    }

    /// Asks the users to release the device: called by unregister with
    /// `count` = 0, 1, 2, … while handles remain open. vfio-pci signals the
    /// REQ interrupt here.
    fn request(&self, count: u32) {
        let _ = count;
    }
}

/// Why the last user let go of a device ([`DeviceOps::close_device`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The device was released, as the kernel's last close of a device fd:
    /// the next user should find it as after a reset (vfio-pci's disable
    /// path resets the function).
    Released,
    /// The user went away but may come back to the device as it left it:
    /// a vfio-user client's disconnect, after which the spec keeps device
    /// state for a reconnect. DMA and interrupt bindings go either way.
    Disconnected,
}
