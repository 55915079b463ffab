//! Command numbers (spec §3) and which side sends each command.

use core::fmt;

use super::error::{malformed, InvalidMessage, Result};

/// `VFIO_USER_VERSION`.
pub const VFIO_USER_VERSION: u16 = 1;
/// `VFIO_USER_DMA_MAP`.
pub const VFIO_USER_DMA_MAP: u16 = 2;
/// `VFIO_USER_DMA_UNMAP`.
pub const VFIO_USER_DMA_UNMAP: u16 = 3;
/// `VFIO_USER_DEVICE_GET_INFO`.
pub const VFIO_USER_DEVICE_GET_INFO: u16 = 4;
/// `VFIO_USER_DEVICE_GET_REGION_INFO`.
pub const VFIO_USER_DEVICE_GET_REGION_INFO: u16 = 5;
/// `VFIO_USER_DEVICE_GET_REGION_IO_FDS`.
pub const VFIO_USER_DEVICE_GET_REGION_IO_FDS: u16 = 6;
/// `VFIO_USER_DEVICE_GET_IRQ_INFO`.
pub const VFIO_USER_DEVICE_GET_IRQ_INFO: u16 = 7;
/// `VFIO_USER_DEVICE_SET_IRQS`.
pub const VFIO_USER_DEVICE_SET_IRQS: u16 = 8;
/// `VFIO_USER_REGION_READ`.
pub const VFIO_USER_REGION_READ: u16 = 9;
/// `VFIO_USER_REGION_WRITE`.
pub const VFIO_USER_REGION_WRITE: u16 = 10;
/// `VFIO_USER_DMA_READ` (server to client).
pub const VFIO_USER_DMA_READ: u16 = 11;
/// `VFIO_USER_DMA_WRITE` (server to client).
pub const VFIO_USER_DMA_WRITE: u16 = 12;
/// `VFIO_USER_DEVICE_RESET`.
pub const VFIO_USER_DEVICE_RESET: u16 = 13;
/// Removed from the spec (`VFIO_USER_DIRTY_PAGES`, migration v1).
pub const VFIO_USER_DIRTY_PAGES: u16 = 14;
/// `VFIO_USER_REGION_WRITE_MULTI`.
pub const VFIO_USER_REGION_WRITE_MULTI: u16 = 15;
/// `VFIO_USER_DEVICE_FEATURE`.
pub const VFIO_USER_DEVICE_FEATURE: u16 = 16;
/// `VFIO_USER_MIG_DATA_READ`.
pub const VFIO_USER_MIG_DATA_READ: u16 = 17;
/// `VFIO_USER_MIG_DATA_WRITE`.
pub const VFIO_USER_MIG_DATA_WRITE: u16 = 18;

/// A command the protocol defines (1-18 without the removed 14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum Command {
    /// 1: version and capability negotiation.
    Version = VFIO_USER_VERSION,
    /// 2: map client memory for DMA.
    DmaMap = VFIO_USER_DMA_MAP,
    /// 3: unmap client memory.
    DmaUnmap = VFIO_USER_DMA_UNMAP,
    /// 4: device flags and counts.
    DeviceGetInfo = VFIO_USER_DEVICE_GET_INFO,
    /// 5: one region's description.
    DeviceGetRegionInfo = VFIO_USER_DEVICE_GET_REGION_INFO,
    /// 6: ioeventfds/ioregionfds of a region.
    DeviceGetRegionIoFds = VFIO_USER_DEVICE_GET_REGION_IO_FDS,
    /// 7: one IRQ index's description.
    DeviceGetIrqInfo = VFIO_USER_DEVICE_GET_IRQ_INFO,
    /// 8: configure interrupts.
    DeviceSetIrqs = VFIO_USER_DEVICE_SET_IRQS,
    /// 9: read device region.
    RegionRead = VFIO_USER_REGION_READ,
    /// 10: write device region.
    RegionWrite = VFIO_USER_REGION_WRITE,
    /// 11: server reads client memory.
    DmaRead = VFIO_USER_DMA_READ,
    /// 12: server writes client memory.
    DmaWrite = VFIO_USER_DMA_WRITE,
    /// 13: reset the device.
    DeviceReset = VFIO_USER_DEVICE_RESET,
    /// 15: several small region writes.
    RegionWriteMulti = VFIO_USER_REGION_WRITE_MULTI,
    /// 16: get/set/probe a device feature.
    DeviceFeature = VFIO_USER_DEVICE_FEATURE,
    /// 17: read migration data.
    MigDataRead = VFIO_USER_MIG_DATA_READ,
    /// 18: write migration data.
    MigDataWrite = VFIO_USER_MIG_DATA_WRITE,
}

/// One end of a vfio-user connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The VMM side (QEMU).
    Client,
    /// The device side.
    Server,
}

impl Command {
    /// Every defined command, in numeric order.
    pub const ALL: [Command; 17] = [
        Command::Version,
        Command::DmaMap,
        Command::DmaUnmap,
        Command::DeviceGetInfo,
        Command::DeviceGetRegionInfo,
        Command::DeviceGetRegionIoFds,
        Command::DeviceGetIrqInfo,
        Command::DeviceSetIrqs,
        Command::RegionRead,
        Command::RegionWrite,
        Command::DmaRead,
        Command::DmaWrite,
        Command::DeviceReset,
        Command::RegionWriteMulti,
        Command::DeviceFeature,
        Command::MigDataRead,
        Command::MigDataWrite,
    ];

    /// Parse a wire command number. 14 is [`InvalidMessage::RemovedCommand`],
    /// 0 and anything above 18 is [`InvalidMessage::UnknownCommand`].
    pub fn from_raw(command: u16) -> Result<Command> {
        Ok(match command {
            VFIO_USER_VERSION => Command::Version,
            VFIO_USER_DMA_MAP => Command::DmaMap,
            VFIO_USER_DMA_UNMAP => Command::DmaUnmap,
            VFIO_USER_DEVICE_GET_INFO => Command::DeviceGetInfo,
            VFIO_USER_DEVICE_GET_REGION_INFO => Command::DeviceGetRegionInfo,
            VFIO_USER_DEVICE_GET_REGION_IO_FDS => Command::DeviceGetRegionIoFds,
            VFIO_USER_DEVICE_GET_IRQ_INFO => Command::DeviceGetIrqInfo,
            VFIO_USER_DEVICE_SET_IRQS => Command::DeviceSetIrqs,
            VFIO_USER_REGION_READ => Command::RegionRead,
            VFIO_USER_REGION_WRITE => Command::RegionWrite,
            VFIO_USER_DMA_READ => Command::DmaRead,
            VFIO_USER_DMA_WRITE => Command::DmaWrite,
            VFIO_USER_DEVICE_RESET => Command::DeviceReset,
            VFIO_USER_DIRTY_PAGES => {
                return malformed(InvalidMessage::RemovedCommand { command });
            }
            VFIO_USER_REGION_WRITE_MULTI => Command::RegionWriteMulti,
            VFIO_USER_DEVICE_FEATURE => Command::DeviceFeature,
            VFIO_USER_MIG_DATA_READ => Command::MigDataRead,
            VFIO_USER_MIG_DATA_WRITE => Command::MigDataWrite,
            _ => return malformed(InvalidMessage::UnknownCommand { command }),
        })
    }

    /// The wire number.
    #[must_use]
    pub const fn raw(self) -> u16 {
        self as u16
    }

    /// The spec's name, e.g. `VFIO_USER_DMA_MAP`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Command::Version => "VFIO_USER_VERSION",
            Command::DmaMap => "VFIO_USER_DMA_MAP",
            Command::DmaUnmap => "VFIO_USER_DMA_UNMAP",
            Command::DeviceGetInfo => "VFIO_USER_DEVICE_GET_INFO",
            Command::DeviceGetRegionInfo => "VFIO_USER_DEVICE_GET_REGION_INFO",
            Command::DeviceGetRegionIoFds => "VFIO_USER_DEVICE_GET_REGION_IO_FDS",
            Command::DeviceGetIrqInfo => "VFIO_USER_DEVICE_GET_IRQ_INFO",
            Command::DeviceSetIrqs => "VFIO_USER_DEVICE_SET_IRQS",
            Command::RegionRead => "VFIO_USER_REGION_READ",
            Command::RegionWrite => "VFIO_USER_REGION_WRITE",
            Command::DmaRead => "VFIO_USER_DMA_READ",
            Command::DmaWrite => "VFIO_USER_DMA_WRITE",
            Command::DeviceReset => "VFIO_USER_DEVICE_RESET",
            Command::RegionWriteMulti => "VFIO_USER_REGION_WRITE_MULTI",
            Command::DeviceFeature => "VFIO_USER_DEVICE_FEATURE",
            Command::MigDataRead => "VFIO_USER_MIG_DATA_READ",
            Command::MigDataWrite => "VFIO_USER_MIG_DATA_WRITE",
        }
    }

    /// Which side sends this command (DMA_READ/WRITE come from the server,
    /// everything else from the client). The codec decodes both directions;
    /// the session rejects a command from the wrong side.
    #[must_use]
    pub const fn sender(self) -> Role {
        match self {
            Command::DmaRead | Command::DmaWrite => Role::Server,
            _ => Role::Client,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<u16> for Command {
    type Error = super::error::ProtoError;

    fn try_from(v: u16) -> Result<Command> {
        Command::from_raw(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::error::ProtoError;

    #[test]
    fn from_raw_all_defined_round_trip() {
        let raws: Vec<u16> = Command::ALL.iter().map(|c| c.raw()).collect();
        let back: Vec<Command> = raws
            .iter()
            .map(|&r| Command::from_raw(r).unwrap())
            .collect();
        assert_eq!(back, Command::ALL);
        assert_eq!(
            raws,
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16, 17, 18]
        );
    }

    #[test]
    fn from_raw_14_is_removed() {
        assert_eq!(
            Command::from_raw(14),
            Err(ProtoError::Malformed(InvalidMessage::RemovedCommand {
                command: 14
            }))
        );
    }

    #[test]
    fn from_raw_0_and_19_are_unknown() {
        assert_eq!(
            Command::from_raw(0),
            Err(ProtoError::Malformed(InvalidMessage::UnknownCommand {
                command: 0
            }))
        );
        assert_eq!(
            Command::from_raw(19),
            Err(ProtoError::Malformed(InvalidMessage::UnknownCommand {
                command: 19
            }))
        );
    }
}
