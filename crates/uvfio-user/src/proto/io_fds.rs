//! DEVICE_GET_REGION_IO_FDS (6): ioeventfds and ioregionfds of a region.
//!
//! Reply entries come in two layouts: the spec's 40 bytes and
//! libvfio-user's 48 bytes (with shadow-ioeventfd fields). The decoder
//! derives the stride from the payload length and `count`, and accepts
//! both; an entry carries `shadow: Some(..)` exactly when it came in (or
//! should go out in) the 48-byte layout.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::error::{illegal, malformed, EncodeError, InvalidMessage, PeerMisbehaved, Result};
use super::limits::DecodeLimits;
use super::reader::{u64_from_usize, usize_from, Reader};
use super::writer::{len_u32, Frame};

/// Entry type: ioeventfd.
pub const VFIO_USER_IO_FD_TYPE_IOEVENTFD: u32 = 0;
/// Entry type: ioregionfd.
pub const VFIO_USER_IO_FD_TYPE_IOREGIONFD: u32 = 1;
/// Entry type (libvfio-user, 48-byte layout only): shadow ioeventfd.
pub const VFIO_USER_IO_FD_TYPE_IOEVENTFD_SHADOW: u32 = 2;
/// Known bits of an entry's `flags` (`KVM_IOEVENTFD_FLAG_*`: DATAMATCH,
/// PIO, DEASSIGN, VIRTIO_CCW_NOTIFY; `KVM_IOREGION_*` use the low two).
pub const IO_FD_KNOWN_FLAGS: u32 = 0xf;

const FIXED: usize = 16;
const SPEC_STRIDE: usize = 40;
const LVU_STRIDE: usize = 48;

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct RegionIoFdsWire {
    argsz: U32,
    flags: U32,
    index: U32,
    count: U32,
}
const _: () = assert!(core::mem::size_of::<RegionIoFdsWire>() == FIXED);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct IoFdEntryWire {
    offset: U64,
    size: U64,
    fd_index: U32,
    type_: U32,
    flags: U32,
    pad: U32,
    datamatch: U64,
}
const _: () = assert!(core::mem::size_of::<IoFdEntryWire>() == SPEC_STRIDE);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct IoFdEntryLvuWire {
    offset: U64,
    size: U64,
    fd_index: U32,
    type_: U32,
    flags: U32,
    shadow_mem_fd_index: U32,
    shadow_offset: U64,
    datamatch: U64,
}
const _: () = assert!(core::mem::size_of::<IoFdEntryLvuWire>() == LVU_STRIDE);

/// DEVICE_GET_REGION_IO_FDS request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionIoFdsRequest {
    /// Room the client has for the reply payload (≥ 16).
    pub argsz: u32,
    /// Region index.
    pub index: u32,
}

impl RegionIoFdsRequest {
    /// Checks: 16 bytes, `argsz` ≥ 16, `flags` and `count` zero.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<RegionIoFdsRequest> {
        let w: RegionIoFdsWire = r.read("region_io_fds request")?;
        let argsz = w.argsz.get();
        if usize_from(argsz) < FIXED {
            return malformed(InvalidMessage::ArgszTooSmall {
                what: "region_io_fds",
                argsz,
                min: 16,
            });
        }
        if w.flags.get() != 0 {
            return malformed(InvalidMessage::UnknownFlags {
                what: "region_io_fds.flags",
                flags: u64::from(w.flags.get()),
                known: 0,
            });
        }
        if w.count.get() != 0 {
            return malformed(InvalidMessage::InvalidValue {
                what: "region_io_fds request count",
                value: u64::from(w.count.get()),
            });
        }
        Ok(RegionIoFdsRequest {
            argsz,
            index: w.index.get(),
        })
    }

    pub(crate) fn encode_payload(&self, f: &mut Frame<'_>) {
        f.put(&RegionIoFdsWire {
            argsz: U32::new(self.argsz),
            flags: U32::new(0),
            index: U32::new(self.index),
            count: U32::new(0),
        });
    }
}

/// libvfio-user's shadow fields (48-byte layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoFdShadow {
    /// Index of the shadow memory fd (meaningful for type 2).
    pub mem_fd_index: u32,
    /// Offset in the shadow memory fd.
    pub offset: u64,
}

/// One ioeventfd/ioregionfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoFdEntry {
    /// Offset within the region.
    pub offset: u64,
    /// Length of the access.
    pub size: u64,
    /// Index into the reply's fds.
    pub fd_index: u32,
    /// `VFIO_USER_IO_FD_TYPE_*`.
    pub type_: u32,
    /// `KVM_IOEVENTFD_FLAG_*` / `KVM_IOREGION_*`.
    pub flags: u32,
    /// `datamatch` (ioeventfd) or `user_data` (ioregionfd).
    pub datamatch: u64,
    /// `Some` in the 48-byte libvfio-user layout.
    pub shadow: Option<IoFdShadow>,
}

impl IoFdEntry {
    /// Highest fd index this entry refers to.
    fn max_fd_index(&self) -> u32 {
        match self.shadow {
            Some(s) if self.type_ == VFIO_USER_IO_FD_TYPE_IOEVENTFD_SHADOW => {
                self.fd_index.max(s.mem_fd_index)
            }
            _ => self.fd_index,
        }
    }
}

/// DEVICE_GET_REGION_IO_FDS reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionIoFdsReply {
    /// Size the full reply needs.
    pub argsz: u32,
    /// Region index.
    pub index: u32,
    /// Number of entries the region has.
    pub count: u32,
    /// The entries; empty when they were left out for lack of room (then
    /// no fds come either).
    pub entries: Vec<IoFdEntry>,
}

impl RegionIoFdsReply {
    /// Server: the reply to a request with `requested_argsz`. Entries go out
    /// only if they fit; otherwise `argsz` says how much room is needed.
    pub fn for_request(
        requested_argsz: u32,
        index: u32,
        entries: Vec<IoFdEntry>,
    ) -> core::result::Result<RegionIoFdsReply, EncodeError> {
        let stride = stride_of(&entries)?;
        let count = len_u32("region_io_fds count", entries.len())?;
        let needed = u64_from_usize(FIXED)
            .saturating_add(u64::from(count).saturating_mul(u64_from_usize(stride)));
        let argsz = u32::try_from(needed).map_err(|_| EncodeError::TooLarge {
            what: "region_io_fds argsz",
            len: needed,
            max: u64::from(u32::MAX),
        })?;
        let entries = if requested_argsz < argsz {
            Vec::new()
        } else {
            entries
        };
        Ok(RegionIoFdsReply {
            argsz,
            index,
            count,
            entries,
        })
    }

    /// Number of fds that must go with this reply (one past the largest
    /// index referenced; 0 without entries).
    #[must_use]
    pub fn fds_needed(&self) -> usize {
        self.entries
            .iter()
            .map(|e| usize_from(e.max_fd_index()).saturating_add(1))
            .max()
            .unwrap_or(0)
    }

    /// Checks: `flags` 0, `count` ≤ `limits.max_io_fd_entries`, entries
    /// absent or exactly `count` of 40 or 48 bytes, `argsz` covers what was
    /// sent, types known (shadow only in 48-byte entries), flags known,
    /// padding zero, ranges do not overflow.
    pub(crate) fn decode(r: &mut Reader<'_>, limits: &DecodeLimits) -> Result<RegionIoFdsReply> {
        let w: RegionIoFdsWire = r.read("region_io_fds reply")?;
        let argsz = w.argsz.get();
        let count = w.count.get();
        if w.flags.get() != 0 {
            return malformed(InvalidMessage::UnknownFlags {
                what: "region_io_fds.flags",
                flags: u64::from(w.flags.get()),
                known: 0,
            });
        }
        if count > limits.max_io_fd_entries {
            return illegal(PeerMisbehaved::TooMany {
                what: "region_io_fds count",
                count: u64::from(count),
                max: u64::from(limits.max_io_fd_entries),
            });
        }
        let body = r.rest();
        let n = usize_from(count);
        let stride = if body.is_empty() {
            0
        } else if n != 0 && body.len() == n.saturating_mul(SPEC_STRIDE) {
            SPEC_STRIDE
        } else if n != 0 && body.len() == n.saturating_mul(LVU_STRIDE) {
            LVU_STRIDE
        } else {
            return malformed(InvalidMessage::LengthMismatch {
                what: "region_io_fds entries (count x 40 or 48)",
                declared: u64::from(count),
                actual: u64_from_usize(body.len()),
            });
        };
        let min_argsz = u64_from_usize(FIXED.saturating_add(body.len()));
        if u64::from(argsz) < min_argsz {
            return malformed(InvalidMessage::ArgszTooSmall {
                what: "region_io_fds reply",
                argsz,
                min: u32::try_from(min_argsz).unwrap_or(u32::MAX),
            });
        }
        let mut entries = Vec::with_capacity(if stride == 0 { 0 } else { n });
        if stride != 0 {
            for (i, chunk) in body.chunks_exact(stride).enumerate() {
                entries.push(decode_entry(
                    chunk,
                    FIXED.saturating_add(i.saturating_mul(stride)),
                )?);
            }
        }
        Ok(RegionIoFdsReply {
            argsz,
            index: w.index.get(),
            count,
            entries,
        })
    }

    pub(crate) fn encode_payload(
        &self,
        f: &mut Frame<'_>,
    ) -> core::result::Result<(), EncodeError> {
        if !self.entries.is_empty() && self.entries.len() != usize_from(self.count) {
            return Err(EncodeError::Inconsistent {
                what: "region_io_fds count vs entries",
            });
        }
        stride_of(&self.entries)?;
        f.put(&RegionIoFdsWire {
            argsz: U32::new(self.argsz),
            flags: U32::new(0),
            index: U32::new(self.index),
            count: U32::new(self.count),
        });
        for e in &self.entries {
            match e.shadow {
                None => f.put(&IoFdEntryWire {
                    offset: U64::new(e.offset),
                    size: U64::new(e.size),
                    fd_index: U32::new(e.fd_index),
                    type_: U32::new(e.type_),
                    flags: U32::new(e.flags),
                    pad: U32::new(0),
                    datamatch: U64::new(e.datamatch),
                }),
                Some(s) => f.put(&IoFdEntryLvuWire {
                    offset: U64::new(e.offset),
                    size: U64::new(e.size),
                    fd_index: U32::new(e.fd_index),
                    type_: U32::new(e.type_),
                    flags: U32::new(e.flags),
                    shadow_mem_fd_index: U32::new(s.mem_fd_index),
                    shadow_offset: U64::new(s.offset),
                    datamatch: U64::new(e.datamatch),
                }),
            }
        }
        Ok(())
    }
}

/// The entry stride for `entries`: all 40-byte or all 48-byte.
fn stride_of(entries: &[IoFdEntry]) -> core::result::Result<usize, EncodeError> {
    let lvu = entries.iter().filter(|e| e.shadow.is_some()).count();
    if lvu != 0 && lvu != entries.len() {
        return Err(EncodeError::Inconsistent {
            what: "region_io_fds entries mix 40- and 48-byte layouts",
        });
    }
    Ok(if lvu == 0 { SPEC_STRIDE } else { LVU_STRIDE })
}

fn decode_entry(chunk: &[u8], at: usize) -> Result<IoFdEntry> {
    let mut r = Reader::new(chunk);
    let e = if chunk.len() == LVU_STRIDE {
        let w: IoFdEntryLvuWire = r.read("io_fd entry")?;
        IoFdEntry {
            offset: w.offset.get(),
            size: w.size.get(),
            fd_index: w.fd_index.get(),
            type_: w.type_.get(),
            flags: w.flags.get(),
            datamatch: w.datamatch.get(),
            shadow: Some(IoFdShadow {
                mem_fd_index: w.shadow_mem_fd_index.get(),
                offset: w.shadow_offset.get(),
            }),
        }
    } else {
        let w: IoFdEntryWire = r.read("io_fd entry")?;
        if w.pad.get() != 0 {
            return malformed(InvalidMessage::ReservedNonZero {
                what: "io_fd entry pad",
                offset: at.saturating_add(28),
            });
        }
        IoFdEntry {
            offset: w.offset.get(),
            size: w.size.get(),
            fd_index: w.fd_index.get(),
            type_: w.type_.get(),
            flags: w.flags.get(),
            datamatch: w.datamatch.get(),
            shadow: None,
        }
    };
    let max_type = if e.shadow.is_some() {
        VFIO_USER_IO_FD_TYPE_IOEVENTFD_SHADOW
    } else {
        VFIO_USER_IO_FD_TYPE_IOREGIONFD
    };
    if e.type_ > max_type {
        return malformed(InvalidMessage::InvalidValue {
            what: "io_fd entry type",
            value: u64::from(e.type_),
        });
    }
    if e.flags & !IO_FD_KNOWN_FLAGS != 0 {
        return malformed(InvalidMessage::UnknownFlags {
            what: "io_fd entry flags",
            flags: u64::from(e.flags),
            known: u64::from(IO_FD_KNOWN_FLAGS),
        });
    }
    super::dma::check_range_end("io_fd offset + size", e.offset, e.size)?;
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::error::ProtoError;

    fn fixed(argsz: u32, count: u32) -> Vec<u8> {
        let mut v = argsz.to_le_bytes().to_vec();
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&2u32.to_le_bytes());
        v.extend_from_slice(&count.to_le_bytes());
        v
    }

    fn spec_entry(fd_index: u32, type_: u32, pad: u32) -> Vec<u8> {
        let mut v = 0x100u64.to_le_bytes().to_vec();
        v.extend_from_slice(&4u64.to_le_bytes());
        v.extend_from_slice(&fd_index.to_le_bytes());
        v.extend_from_slice(&type_.to_le_bytes());
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&pad.to_le_bytes());
        v.extend_from_slice(&0xdeadu64.to_le_bytes());
        v
    }

    #[test]
    fn reply_spec_40_byte_entries_decode() {
        let mut b = fixed(96, 2);
        b.extend(spec_entry(0, 0, 0));
        b.extend(spec_entry(1, 1, 0));
        let r = RegionIoFdsReply::decode(&mut Reader::new(&b), &DecodeLimits::default()).unwrap();
        assert_eq!(r.entries.len(), 2);
        assert_eq!(r.entries[1].type_, 1);
        assert_eq!(r.entries[0].datamatch, 0xdead);
        assert_eq!(r.fds_needed(), 2);
    }

    #[test]
    fn reply_lvu_48_byte_entries_decode() {
        let mut e = spec_entry(0, 2, 0); // pad becomes shadow_mem_fd_index
        e.truncate(28);
        e.extend_from_slice(&1u32.to_le_bytes());
        e.extend_from_slice(&0x40u64.to_le_bytes());
        e.extend_from_slice(&7u64.to_le_bytes());
        let mut b = fixed(64, 1);
        b.extend(e);
        let r = RegionIoFdsReply::decode(&mut Reader::new(&b), &DecodeLimits::default()).unwrap();
        assert_eq!(
            r.entries[0].shadow,
            Some(IoFdShadow {
                mem_fd_index: 1,
                offset: 0x40
            })
        );
        assert_eq!(r.entries[0].datamatch, 7);
        assert_eq!(r.fds_needed(), 2);
    }

    #[test]
    fn reply_header_only_means_entries_omitted() {
        let b = fixed(96, 2);
        let r = RegionIoFdsReply::decode(&mut Reader::new(&b), &DecodeLimits::default()).unwrap();
        assert!(r.entries.is_empty());
        assert_eq!(r.count, 2);
        assert_eq!(r.fds_needed(), 0);
    }

    #[test]
    fn reply_odd_stride_is_rejected() {
        let mut b = fixed(60, 1);
        b.extend_from_slice(&[0; 44]);
        assert!(matches!(
            RegionIoFdsReply::decode(&mut Reader::new(&b), &DecodeLimits::default()).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::LengthMismatch { .. })
        ));
    }

    #[test]
    fn reply_shadow_type_in_spec_layout_is_rejected() {
        let mut b = fixed(56, 1);
        b.extend(spec_entry(0, 2, 0));
        assert!(matches!(
            RegionIoFdsReply::decode(&mut Reader::new(&b), &DecodeLimits::default()).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::InvalidValue { value: 2, .. })
        ));
    }

    #[test]
    fn reply_nonzero_pad_is_rejected() {
        let mut b = fixed(56, 1);
        b.extend(spec_entry(0, 0, 9));
        assert!(matches!(
            RegionIoFdsReply::decode(&mut Reader::new(&b), &DecodeLimits::default()).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::ReservedNonZero { offset: 44, .. })
        ));
    }

    #[test]
    fn request_with_count_is_rejected() {
        let b = fixed(16, 1);
        assert!(RegionIoFdsRequest::decode(&mut Reader::new(&b)).is_err());
    }

    #[test]
    fn for_request_small_argsz_drops_entries() {
        let e = IoFdEntry {
            offset: 0,
            size: 4,
            fd_index: 0,
            type_: 0,
            flags: 0,
            datamatch: 0,
            shadow: None,
        };
        let r = RegionIoFdsReply::for_request(16, 0, vec![e]).unwrap();
        assert_eq!((r.argsz, r.count, r.entries.len()), (56, 1, 0));
        let r = RegionIoFdsReply::for_request(56, 0, vec![e]).unwrap();
        assert_eq!(r.entries.len(), 1);
    }
}
