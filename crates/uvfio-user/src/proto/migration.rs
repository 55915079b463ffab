//! MIG_DATA_READ (17), MIG_DATA_WRITE (18) and the migration constants
//! shared with DEVICE_FEATURE.

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::dma::{check_xfer, take_data};
use super::error::{malformed, EncodeError, InvalidMessage, Result};
use super::limits::DecodeLimits;
use super::reader::Reader;
use super::writer::{len_u32, Frame};

/// Migration flag: STOP_COPY supported (required).
pub const VFIO_MIGRATION_STOP_COPY: u64 = 1 << 0;
/// Migration flag: P2P states supported.
pub const VFIO_MIGRATION_P2P: u64 = 1 << 1;
/// Migration flag: PRE_COPY supported.
pub const VFIO_MIGRATION_PRE_COPY: u64 = 1 << 2;
/// Known migration flags.
pub const VFIO_MIGRATION_KNOWN_FLAGS: u64 =
    VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;

/// `VFIO_DEVICE_STATE_ERROR`.
pub const VFIO_DEVICE_STATE_ERROR: u32 = 0;
/// `VFIO_DEVICE_STATE_STOP`.
pub const VFIO_DEVICE_STATE_STOP: u32 = 1;
/// `VFIO_DEVICE_STATE_RUNNING`.
pub const VFIO_DEVICE_STATE_RUNNING: u32 = 2;
/// `VFIO_DEVICE_STATE_STOP_COPY`.
pub const VFIO_DEVICE_STATE_STOP_COPY: u32 = 3;
/// `VFIO_DEVICE_STATE_RESUMING`.
pub const VFIO_DEVICE_STATE_RESUMING: u32 = 4;
/// `VFIO_DEVICE_STATE_RUNNING_P2P` (unused in vfio-user).
pub const VFIO_DEVICE_STATE_RUNNING_P2P: u32 = 5;
/// `VFIO_DEVICE_STATE_PRE_COPY`.
pub const VFIO_DEVICE_STATE_PRE_COPY: u32 = 6;
/// `VFIO_DEVICE_STATE_PRE_COPY_P2P` (unused in vfio-user).
pub const VFIO_DEVICE_STATE_PRE_COPY_P2P: u32 = 7;

/// A device migration state (`enum vfio_device_mig_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MigState {
    /// Failed; only DEVICE_RESET leaves it.
    Error = VFIO_DEVICE_STATE_ERROR,
    /// Stopped.
    Stop = VFIO_DEVICE_STATE_STOP,
    /// Running.
    Running = VFIO_DEVICE_STATE_RUNNING,
    /// Stopped, state being saved.
    StopCopy = VFIO_DEVICE_STATE_STOP_COPY,
    /// Stopped, state being loaded.
    Resuming = VFIO_DEVICE_STATE_RESUMING,
    /// Unused in vfio-user.
    RunningP2p = VFIO_DEVICE_STATE_RUNNING_P2P,
    /// Running, state being saved.
    PreCopy = VFIO_DEVICE_STATE_PRE_COPY,
    /// Unused in vfio-user.
    PreCopyP2p = VFIO_DEVICE_STATE_PRE_COPY_P2P,
}

impl MigState {
    /// The wire value.
    #[must_use]
    pub const fn raw(self) -> u32 {
        self as u32
    }

    /// Parse a wire value (0-7).
    pub fn from_raw(v: u32) -> Result<MigState> {
        Ok(match v {
            VFIO_DEVICE_STATE_ERROR => MigState::Error,
            VFIO_DEVICE_STATE_STOP => MigState::Stop,
            VFIO_DEVICE_STATE_RUNNING => MigState::Running,
            VFIO_DEVICE_STATE_STOP_COPY => MigState::StopCopy,
            VFIO_DEVICE_STATE_RESUMING => MigState::Resuming,
            VFIO_DEVICE_STATE_RUNNING_P2P => MigState::RunningP2p,
            VFIO_DEVICE_STATE_PRE_COPY => MigState::PreCopy,
            VFIO_DEVICE_STATE_PRE_COPY_P2P => MigState::PreCopyP2p,
            _ => {
                return malformed(InvalidMessage::InvalidValue {
                    what: "device_state",
                    value: u64::from(v),
                })
            }
        })
    }
}

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct MigDataWire {
    argsz: U32,
    size: U32,
}
const _: () = assert!(core::mem::size_of::<MigDataWire>() == 8);
const MIG_DATA_SIZE: u32 = 8;

/// MIG_DATA_READ request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigDataRead {
    /// Room for the reply payload (≥ 8).
    pub argsz: u32,
    /// Bytes wanted (≤ `max_data_xfer_size`).
    pub size: u32,
}

impl MigDataRead {
    pub(crate) fn decode(r: &mut Reader<'_>, limits: &DecodeLimits) -> Result<MigDataRead> {
        let w: MigDataWire = r.read("mig_data_read")?;
        let m = MigDataRead {
            argsz: w.argsz.get(),
            size: w.size.get(),
        };
        if m.argsz < MIG_DATA_SIZE {
            return malformed(InvalidMessage::ArgszTooSmall {
                what: "mig_data_read",
                argsz: m.argsz,
                min: MIG_DATA_SIZE,
            });
        }
        check_xfer("mig_data_read.size", u64::from(m.size), limits)?;
        Ok(m)
    }

    pub(crate) fn encode_payload(&self, f: &mut Frame<'_>) {
        f.put(&MigDataWire {
            argsz: U32::new(self.argsz),
            size: U32::new(self.size),
        });
    }
}

/// MIG_DATA_READ reply: `argsz` = 8 + `size`; fewer bytes than asked for
/// means the end of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigDataReadReply<'a> {
    /// Migration data.
    pub data: &'a [u8],
}

impl<'a> MigDataReadReply<'a> {
    pub(crate) fn decode(
        r: &mut Reader<'a>,
        limits: &DecodeLimits,
    ) -> Result<MigDataReadReply<'a>> {
        let w: MigDataWire = r.read("mig_data_read reply")?;
        let (argsz, size) = (w.argsz.get(), w.size.get());
        check_xfer("mig_data_read reply size", u64::from(size), limits)?;
        let total = u64::from(MIG_DATA_SIZE).saturating_add(u64::from(size));
        if u64::from(argsz) != total {
            return malformed(InvalidMessage::LengthMismatch {
                what: "mig_data_read reply argsz",
                declared: u64::from(argsz),
                actual: total,
            });
        }
        let data = take_data(r, u64::from(size), "mig_data_read reply size")?;
        Ok(MigDataReadReply { data })
    }

    pub(crate) fn encode_payload(
        &self,
        f: &mut Frame<'_>,
    ) -> core::result::Result<(), EncodeError> {
        let size = len_u32("mig_data size", self.data.len())?;
        let argsz = len_u32("mig_data argsz", self.data.len().saturating_add(8))?;
        f.put(&MigDataWire {
            argsz: U32::new(argsz),
            size: U32::new(size),
        });
        f.put_bytes(self.data);
        Ok(())
    }
}

/// MIG_DATA_WRITE request (the reply has no payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigDataWrite<'a> {
    /// `argsz` (≥ 8; libvfio-user sends 8 + size).
    pub argsz: u32,
    /// Migration data (the wire `size` is `data.len()`).
    pub data: &'a [u8],
}

impl<'a> MigDataWrite<'a> {
    /// A write with the usual `argsz` of 8 + `data.len()`.
    #[must_use]
    pub fn new(data: &'a [u8]) -> MigDataWrite<'a> {
        MigDataWrite {
            argsz: u32::try_from(data.len().saturating_add(8)).unwrap_or(u32::MAX),
            data,
        }
    }

    pub(crate) fn decode(r: &mut Reader<'a>, limits: &DecodeLimits) -> Result<MigDataWrite<'a>> {
        let w: MigDataWire = r.read("mig_data_write")?;
        let (argsz, size) = (w.argsz.get(), w.size.get());
        if argsz < MIG_DATA_SIZE {
            return malformed(InvalidMessage::ArgszTooSmall {
                what: "mig_data_write",
                argsz,
                min: MIG_DATA_SIZE,
            });
        }
        check_xfer("mig_data_write.size", u64::from(size), limits)?;
        let data = take_data(r, u64::from(size), "mig_data_write.size")?;
        Ok(MigDataWrite { argsz, data })
    }

    pub(crate) fn encode_payload(
        &self,
        f: &mut Frame<'_>,
    ) -> core::result::Result<(), EncodeError> {
        let size = len_u32("mig_data size", self.data.len())?;
        f.put(&MigDataWire {
            argsz: U32::new(self.argsz),
            size: U32::new(size),
        });
        f.put_bytes(self.data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::error::{PeerMisbehaved, ProtoError};

    fn mig(argsz: u32, size: u32, data: &[u8]) -> Vec<u8> {
        let mut v = argsz.to_le_bytes().to_vec();
        v.extend_from_slice(&size.to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn mig_state_from_raw_all_and_invalid() {
        for v in 0..8 {
            assert_eq!(MigState::from_raw(v).unwrap().raw(), v);
        }
        assert!(MigState::from_raw(0xabcd).is_err());
    }

    #[test]
    fn mig_data_read_reply_argsz_must_cover_data() {
        let b = mig(9, 4, &[1, 2, 3, 4]);
        assert!(matches!(
            MigDataReadReply::decode(&mut Reader::new(&b), &DecodeLimits::default()).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::LengthMismatch { .. })
        ));
        let b = mig(12, 4, &[1, 2, 3, 4]);
        let r = MigDataReadReply::decode(&mut Reader::new(&b), &DecodeLimits::default()).unwrap();
        assert_eq!(r.data, &[1, 2, 3, 4]);
    }

    #[test]
    fn mig_data_write_size_mismatch_is_rejected() {
        let b = mig(12, 4, &[1, 2, 3]);
        assert!(MigDataWrite::decode(&mut Reader::new(&b), &DecodeLimits::default()).is_err());
    }

    #[test]
    fn mig_data_read_size_over_max_is_e2big() {
        let b = mig(8, u32::MAX, &[]);
        assert!(matches!(
            MigDataRead::decode(&mut Reader::new(&b), &DecodeLimits::default()).unwrap_err(),
            ProtoError::Illegal(PeerMisbehaved::DataTooLarge { .. })
        ));
    }
}
