//! # uvfio-drivers — emulated PCI devices
//!
//! Each driver is a [`uvfio_pci::PciFunction`] wrapped in a
//! [`uvfio_pci::PciDevice`], created the way a bus driver probes: build the
//! state, [`uvfio_core::Registry::init`] it, finish setup, and register
//! last. Removing is [`uvfio_core::RegisteredDevice::unregister`], which
//! waits for users and hands the device back. Every driver has a
//! `create(registry, name, group, options)` constructor so a CLI can add
//! instances at run time:
//!
//! - [`mtty`]: the kernel's mtty sample — a one- or two-port 16550 UART
//!   with a loopback FIFO, drawing ports from a shared [`mtty::MttyPool`].
//! - [`gpio`]: a 16-in/16-out digital I/O card with change-of-state
//!   interrupts; inputs are driven from the device side
//!   ([`gpio::Gpio::set_inputs`]).
//! - [`dma`]: a memcpy engine that copies between IOVAs (and its RAM BAR)
//!   with an MSI-X completion interrupt.
//!
//! All three support live migration (STOP_COPY, PRE_COPY, P2P) through
//! [`uvfio_pci::migration`]: the PCI layer carries config space, MSI-X,
//! interrupt state and RAM BARs and quiesces the device while stopped;
//! each driver adds its own registers in a versioned section.
//!
//! ```
//! use uvfio_core::{GroupId, Registry};
//! use uvfio_drivers::mtty::{self, MttyOptions, MttyPool, MttyType};
//!
//! let registry = Registry::default();
//! let pool = MttyPool::default();
//! let dev = mtty::create(&registry, "mtty0", GroupId(1), &MttyOptions {
//!     ty: MttyType::Dual,
//!     pool: pool.clone(),
//! })?;
//! assert_eq!(pool.available_instances(MttyType::Dual), 11);
//! drop(dev.unregister()); // the ports go back to the pool
//! assert_eq!(pool.available_instances(MttyType::Dual), 12);
//! # Ok::<(), uvfio_drivers::DriverError>(())
//! ```

#![warn(missing_docs)]

pub mod dma;
#[doc(hidden)]
pub mod fuzzing;
pub mod gpio;
pub mod mtty;

use uvfio_core::{Errno, GroupId, RegisteredDevice, Registry};
use uvfio_pci::{PciDevice, PciError, PciFunction};

/// Vendor ID of the uvfio devices other than mtty (not a registered PCI
/// vendor: for emulation only).
pub const UVFIO_VENDOR_ID: u16 = 0x1ee7;

/// Why creating or driving a device failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The mtty pool has fewer free ports than the type needs.
    #[error("mtty pool exhausted: {requested} ports requested, {available} free")]
    PoolExhausted {
        /// Ports the type needs.
        requested: u32,
        /// Ports left.
        available: u32,
    },
    /// The PCI layout was rejected.
    #[error(transparent)]
    Pci(#[from] PciError),
    /// `Registry::init` refused the device (e.g. a bad name).
    #[error("init of {name:?} failed: {errno}")]
    Init {
        /// Device name.
        name: String,
        /// The errno.
        errno: Errno,
    },
    /// `register` refused the device (e.g. a duplicate name).
    #[error("register of {name:?} failed: {errno}")]
    Register {
        /// Device name.
        name: String,
        /// The errno.
        errno: Errno,
    },
    /// A bad option value.
    #[error("invalid option {name}: {value}")]
    InvalidOption {
        /// Option name.
        name: &'static str,
        /// The value given.
        value: String,
    },
    /// A GPIO pin past 15.
    #[error("GPIO pin {0} does not exist")]
    PinInvalid(u8),
    /// An OS call failed (e.g. creating shared memory).
    #[error("OS error: {0}")]
    Os(Errno),
}

impl From<&DriverError> for Errno {
    fn from(e: &DriverError) -> Errno {
        match e {
            DriverError::PoolExhausted { .. } => Errno::NOSPC,
            DriverError::Pci(p) => Errno::from(p),
            DriverError::Init { errno, .. }
            | DriverError::Register { errno, .. }
            | DriverError::Os(errno) => *errno,
            DriverError::InvalidOption { .. } | DriverError::PinInvalid(_) => Errno::INVAL,
        }
    }
}

/// A dword register file's side of a BAR read (the PCI layer splits
/// accesses into aligned 1/2/4-byte pieces): copies the bytes of `value`,
/// the register at `offset & !3`, that the piece at `offset` covers.
pub(crate) fn read_dword_piece(offset: u64, value: u32, data: &mut [u8]) {
    let at = (offset % 4) as usize;
    data.copy_from_slice(&value.to_le_bytes()[at..at + data.len()]);
}

/// The write side: `(register offset, value shifted into place, byte mask
/// of the bytes written)`.
pub(crate) fn write_dword_piece(offset: u64, data: &[u8]) -> (u64, u32, u32) {
    let at = (offset % 4) as usize;
    let mut bytes = [0u8; 4];
    let mut mask = [0u8; 4];
    bytes[at..at + data.len()].copy_from_slice(data);
    mask[at..at + data.len()].fill(0xff);
    (
        offset & !3,
        u32::from_le_bytes(bytes),
        u32::from_le_bytes(mask),
    )
}

/// init → register, for devices whose setup is complete at construction.
/// On failure the device is dropped (which releases what it holds).
pub(crate) fn register<F: PciFunction>(
    registry: &Registry,
    name: &str,
    group: GroupId,
    device: PciDevice<F>,
) -> Result<RegisteredDevice<PciDevice<F>>, DriverError> {
    let dev = registry
        .init(device, name, group)
        .map_err(|errno| DriverError::Init {
            name: name.to_owned(),
            errno,
        })?;
    // Register last: from here on users can open the device.
    dev.register().map_err(|e| DriverError::Register {
        name: name.to_owned(),
        errno: e.errno,
    })
}

#[cfg(test)]
pub(crate) mod testutil;
