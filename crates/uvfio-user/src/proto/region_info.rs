//! DEVICE_GET_REGION_INFO (5) and the region-info capability chain.
//!
//! The reply is a `vfio_region_info` (32 bytes) followed by capabilities.
//! `cap_offset` and every capability's `next` count from the start of
//! `vfio_region_info`; `next = 0` ends the chain. `argsz` in the request is
//! the room the client has; in the reply, the room the full answer needs.
//! If the capabilities do not fit, the server sends the 32 bytes alone with
//! the needed `argsz`, no CAPS flag and no fd, and the client asks again
//! ([`RegionInfo::reply_for`], [`RegionInfoReply::send_fd`]).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::error::{illegal, malformed, EncodeError, InvalidMessage, PeerMisbehaved, Result};
use super::limits::DecodeLimits;
use super::reader::{u64_from_usize, usize_from, Reader};
use super::writer::Frame;

/// PCI BAR0 region index (BAR1-5 follow).
pub const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
/// PCI BAR1 region index.
pub const VFIO_PCI_BAR1_REGION_INDEX: u32 = 1;
/// PCI BAR2 region index.
pub const VFIO_PCI_BAR2_REGION_INDEX: u32 = 2;
/// PCI BAR3 region index.
pub const VFIO_PCI_BAR3_REGION_INDEX: u32 = 3;
/// PCI BAR4 region index.
pub const VFIO_PCI_BAR4_REGION_INDEX: u32 = 4;
/// PCI BAR5 region index.
pub const VFIO_PCI_BAR5_REGION_INDEX: u32 = 5;
/// PCI expansion ROM region index.
pub const VFIO_PCI_ROM_REGION_INDEX: u32 = 6;
/// PCI config space region index.
pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
/// PCI VGA region index.
pub const VFIO_PCI_VGA_REGION_INDEX: u32 = 8;
/// Number of standard PCI regions.
pub const VFIO_PCI_NUM_REGIONS: u32 = 9;

/// Region flag: readable.
pub const VFIO_REGION_INFO_FLAG_READ: u32 = 1 << 0;
/// Region flag: writable.
pub const VFIO_REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
/// Region flag: mmap-able (the reply carries the region fd).
pub const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
/// Region flag: capabilities follow (set by the codec from `caps`).
pub const VFIO_REGION_INFO_FLAG_CAPS: u32 = 1 << 3;
const REGION_INFO_KNOWN_FLAGS: u32 = 0xf;

/// Capability id: sparse mmap areas.
pub const VFIO_REGION_INFO_CAP_SPARSE_MMAP: u16 = 1;
/// Capability id: device-specific region type.
pub const VFIO_REGION_INFO_CAP_TYPE: u16 = 2;
/// Capability id: the MSI-X table may be mmap-ed.
pub const VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: u16 = 3;

/// Size of `vfio_region_info`.
pub const REGION_INFO_SIZE: u32 = 32;

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct RegionInfoWire {
    argsz: U32,
    flags: U32,
    index: U32,
    cap_offset: U32,
    size: U64,
    offset: U64,
}
const _: () = assert!(core::mem::size_of::<RegionInfoWire>() == 32);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct CapHeaderWire {
    id: U16,
    version: U16,
    next: U32,
}
const _: () = assert!(core::mem::size_of::<CapHeaderWire>() == 8);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct SparseMmapWire {
    nr_areas: U32,
    reserved: U32,
}
const _: () = assert!(core::mem::size_of::<SparseMmapWire>() == 8);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct SparseAreaWire {
    offset: U64,
    size: U64,
}
const _: () = assert!(core::mem::size_of::<SparseAreaWire>() == 16);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct TypeCapWire {
    type_: U32,
    subtype: U32,
}
const _: () = assert!(core::mem::size_of::<TypeCapWire>() == 8);

/// One mmap-able window of a region (offsets relative to the region).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseMmapArea {
    /// Offset within the region.
    pub offset: u64,
    /// Length.
    pub size: u64,
}

/// A region-info capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionCap {
    /// SPARSE_MMAP (id 1, v1): only these areas may be mmap-ed.
    SparseMmap(Vec<SparseMmapArea>),
    /// TYPE (id 2, v1): a device-specific region.
    Type {
        /// Region type.
        type_: u32,
        /// Region subtype.
        subtype: u32,
    },
    /// MSIX_MAPPABLE (id 3, v1): the MSI-X table may be mmap-ed.
    MsixMappable,
}

impl RegionCap {
    /// The capability id.
    #[must_use]
    pub fn id(&self) -> u16 {
        match self {
            RegionCap::SparseMmap(_) => VFIO_REGION_INFO_CAP_SPARSE_MMAP,
            RegionCap::Type { .. } => VFIO_REGION_INFO_CAP_TYPE,
            RegionCap::MsixMappable => VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
        }
    }

    /// Bytes this capability takes, header included.
    #[must_use]
    pub fn wire_len(&self) -> u64 {
        match self {
            RegionCap::SparseMmap(a) => {
                16u64.saturating_add(u64_from_usize(a.len()).saturating_mul(16))
            }
            RegionCap::Type { .. } => 16,
            RegionCap::MsixMappable => 8,
        }
    }
}

/// Bytes the capabilities take when laid out back to back.
fn caps_len(caps: &[RegionCap]) -> u64 {
    caps.iter()
        .map(RegionCap::wire_len)
        .fold(0u64, u64::saturating_add)
}

/// Decode a capability chain.
///
/// `info` is the whole `vfio_region_info` including the 32-byte fixed part
/// (so offsets in it are the wire's); `cap_offset` is the first capability.
/// Rejects: a capability outside `info` or running past its end, a `next`
/// that loops back, capabilities overlapping each other or the fixed part,
/// unknown ids or versions, a repeated id, more than
/// `limits.max_region_caps` capabilities or `limits.max_sparse_areas`
/// areas, a non-zero reserved field, and areas whose end overflows.
pub fn decode_region_caps(
    info: &[u8],
    cap_offset: u32,
    limits: &DecodeLimits,
) -> Result<Vec<RegionCap>> {
    let bound = u64_from_usize(info.len());
    let mut caps: Vec<RegionCap> = Vec::new();
    // Spans taken so far: the fixed part, then each capability.
    let mut spans: Vec<(u64, u64)> = vec![(0, u64::from(REGION_INFO_SIZE))];
    let mut at = u64::from(cap_offset);
    loop {
        if caps.len() >= limits.max_region_caps {
            return illegal(PeerMisbehaved::TooMany {
                what: "region capabilities",
                count: u64_from_usize(caps.len()).saturating_add(1),
                max: u64_from_usize(limits.max_region_caps),
            });
        }
        if spans.iter().skip(1).any(|&(start, _)| start == at) {
            return malformed(InvalidMessage::CapLoop { offset: at });
        }
        let hdr_end = at.saturating_add(8);
        if hdr_end > bound {
            return malformed(InvalidMessage::CapOutOfBounds {
                offset: at,
                len: 8,
                bound,
            });
        }
        // In bounds of a slice, so it fits usize.
        let start =
            usize::try_from(at).map_err(|_| InvalidMessage::Overflow { what: "cap offset" })?;
        let mut r = Reader::new(&info[start..]);
        let h: CapHeaderWire = r.read("region cap header")?;
        let (id, version, next) = (h.id.get(), h.version.get(), h.next.get());
        let len = match id {
            VFIO_REGION_INFO_CAP_SPARSE_MMAP => {
                if at.saturating_add(16) > bound {
                    return malformed(InvalidMessage::CapOutOfBounds {
                        offset: at,
                        len: 16,
                        bound,
                    });
                }
                let nr = info
                    .get(start.saturating_add(8)..start.saturating_add(12))
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map_or(0, u32::from_le_bytes);
                if nr > limits.max_sparse_areas {
                    return illegal(PeerMisbehaved::TooMany {
                        what: "sparse mmap areas",
                        count: u64::from(nr),
                        max: u64::from(limits.max_sparse_areas),
                    });
                }
                16 + u64::from(nr) * 16 // nr ≤ u32::MAX: no overflow in u64
            }
            VFIO_REGION_INFO_CAP_TYPE => 16,
            VFIO_REGION_INFO_CAP_MSIX_MAPPABLE => 8,
            _ => return malformed(InvalidMessage::UnknownCap { id, offset: at }),
        };
        if version != 1 {
            return malformed(InvalidMessage::UnsupportedCapVersion { id, version });
        }
        let end = at.saturating_add(len);
        if end > bound {
            return malformed(InvalidMessage::CapOutOfBounds {
                offset: at,
                len,
                bound,
            });
        }
        if spans.iter().any(|&(s, e)| at < e && s < end) {
            return malformed(InvalidMessage::CapOverlap { offset: at });
        }
        if caps.iter().any(|c| c.id() == id) {
            return malformed(InvalidMessage::DuplicateCap { id });
        }
        let cap = match id {
            VFIO_REGION_INFO_CAP_SPARSE_MMAP => {
                let s: SparseMmapWire = r.read("sparse mmap cap")?;
                if s.reserved.get() != 0 {
                    return malformed(InvalidMessage::ReservedNonZero {
                        what: "sparse mmap reserved",
                        offset: start.saturating_add(12),
                    });
                }
                let nr = s.nr_areas.get();
                let mut areas = Vec::with_capacity(usize_from(nr));
                for _ in 0..nr {
                    let a: SparseAreaWire = r.read("sparse mmap area")?;
                    let area = SparseMmapArea {
                        offset: a.offset.get(),
                        size: a.size.get(),
                    };
                    if area.offset.checked_add(area.size).is_none() {
                        return malformed(InvalidMessage::Overflow {
                            what: "sparse area offset + size",
                        });
                    }
                    areas.push(area);
                }
                RegionCap::SparseMmap(areas)
            }
            VFIO_REGION_INFO_CAP_TYPE => {
                let t: TypeCapWire = r.read("type cap")?;
                RegionCap::Type {
                    type_: t.type_.get(),
                    subtype: t.subtype.get(),
                }
            }
            _ => RegionCap::MsixMappable,
        };
        caps.push(cap);
        spans.push((at, end));
        if next == 0 {
            return Ok(caps);
        }
        at = u64::from(next);
    }
}

/// Append `caps` back to back, the first at `first` (an offset from the
/// start of `vfio_region_info`), chaining `next`.
fn encode_caps(
    f: &mut Frame<'_>,
    caps: &[RegionCap],
    first: u64,
) -> core::result::Result<(), EncodeError> {
    let mut at = first;
    for (i, cap) in caps.iter().enumerate() {
        let end = at.saturating_add(cap.wire_len());
        let next = if i + 1 == caps.len() { 0 } else { end };
        let next = u32::try_from(next).map_err(|_| EncodeError::TooLarge {
            what: "region cap next",
            len: next,
            max: u64::from(u32::MAX),
        })?;
        f.put(&CapHeaderWire {
            id: U16::new(cap.id()),
            version: U16::new(1),
            next: U32::new(next),
        });
        match cap {
            RegionCap::SparseMmap(areas) => {
                let nr = u32::try_from(areas.len()).map_err(|_| EncodeError::TooLarge {
                    what: "sparse mmap areas",
                    len: u64_from_usize(areas.len()),
                    max: u64::from(u32::MAX),
                })?;
                f.put(&SparseMmapWire {
                    nr_areas: U32::new(nr),
                    reserved: U32::new(0),
                });
                for a in areas {
                    f.put(&SparseAreaWire {
                        offset: U64::new(a.offset),
                        size: U64::new(a.size),
                    });
                }
            }
            RegionCap::Type { type_, subtype } => f.put(&TypeCapWire {
                type_: U32::new(*type_),
                subtype: U32::new(*subtype),
            }),
            RegionCap::MsixMappable => {}
        }
        at = end;
    }
    Ok(())
}

/// DEVICE_GET_REGION_INFO request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfoRequest {
    /// Room the client has for the reply payload (≥ 32).
    pub argsz: u32,
    /// Region index.
    pub index: u32,
}

impl RegionInfoRequest {
    /// Checks: 32 bytes, `argsz` ≥ 32. The other fields are ignored, as the
    /// kernel and libvfio-user do.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<RegionInfoRequest> {
        let w: RegionInfoWire = r.read("region_info request")?;
        let argsz = w.argsz.get();
        if argsz < REGION_INFO_SIZE {
            return malformed(InvalidMessage::ArgszTooSmall {
                what: "region_info",
                argsz,
                min: REGION_INFO_SIZE,
            });
        }
        Ok(RegionInfoRequest {
            argsz,
            index: w.index.get(),
        })
    }

    pub(crate) fn encode_payload(&self, f: &mut Frame<'_>) {
        f.put(&RegionInfoWire {
            argsz: U32::new(self.argsz),
            flags: U32::new(0),
            index: U32::new(self.index),
            cap_offset: U32::new(0),
            size: U64::new(0),
            offset: U64::new(0),
        });
    }
}

/// A region as the server describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInfo {
    /// READ, WRITE, MMAP (CAPS is derived from `caps`, and stripped here).
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Region size.
    pub size: u64,
    /// Offset of the region in its fd (for mmap).
    pub offset: u64,
    /// Capabilities.
    pub caps: Vec<RegionCap>,
}

impl RegionInfo {
    /// `argsz` needed for the whole answer: 32 + the capabilities.
    pub fn argsz_needed(&self) -> core::result::Result<u32, EncodeError> {
        let len = u64::from(REGION_INFO_SIZE).saturating_add(caps_len(&self.caps));
        u32::try_from(len).map_err(|_| EncodeError::TooLarge {
            what: "region_info argsz",
            len,
            max: u64::from(u32::MAX),
        })
    }

    /// The reply to a request with `requested_argsz`: the full answer if it
    /// fits, else the fixed part only with `argsz` = the size needed.
    pub fn reply_for(
        &self,
        requested_argsz: u32,
    ) -> core::result::Result<RegionInfoReply, EncodeError> {
        let needed = self.argsz_needed()?;
        let mut info = self.clone();
        info.flags &= !VFIO_REGION_INFO_FLAG_CAPS;
        if requested_argsz < needed {
            info.caps.clear();
        }
        Ok(RegionInfoReply {
            argsz: needed,
            info,
        })
    }
}

/// DEVICE_GET_REGION_INFO reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionInfoReply {
    /// The size the full answer needs.
    pub argsz: u32,
    /// The region; `caps` is empty when they were left out for lack of room.
    pub info: RegionInfo,
}

impl RegionInfoReply {
    /// True when the reply holds everything (`argsz` equals what was sent).
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.info.argsz_needed().is_ok_and(|n| n == self.argsz)
    }

    /// Whether the region fd goes with this reply: MMAP is set and the reply
    /// is complete (libvfio-user and rust-vmm send the fd only when the
    /// capabilities fit).
    #[must_use]
    pub fn send_fd(&self) -> bool {
        self.info.flags & VFIO_REGION_INFO_FLAG_MMAP != 0 && self.is_complete()
    }

    /// Checks: `argsz` ≥ 32, known flags; with CAPS, the payload is exactly
    /// `argsz` and the chain decodes; without, `cap_offset` is 0 and the
    /// payload is 32 bytes; sparse areas lie within the region.
    pub(crate) fn decode(body: &[u8], limits: &DecodeLimits) -> Result<RegionInfoReply> {
        let mut r = Reader::new(body);
        let w: RegionInfoWire = r.read("region_info reply")?;
        let argsz = w.argsz.get();
        let flags = w.flags.get();
        let cap_offset = w.cap_offset.get();
        if argsz < REGION_INFO_SIZE {
            return malformed(InvalidMessage::ArgszTooSmall {
                what: "region_info reply",
                argsz,
                min: REGION_INFO_SIZE,
            });
        }
        if flags & !REGION_INFO_KNOWN_FLAGS != 0 {
            return malformed(InvalidMessage::UnknownFlags {
                what: "region_info.flags",
                flags: u64::from(flags),
                known: u64::from(REGION_INFO_KNOWN_FLAGS),
            });
        }
        let size = w.size.get();
        // The kernel's (and rust-vmm's) answer to a too-small argsz: CAPS
        // set, cap_offset 0, argsz = the size needed, no chain. The caller
        // retries with that argsz.
        let truncated = flags & VFIO_REGION_INFO_FLAG_CAPS != 0
            && cap_offset == 0
            && argsz > REGION_INFO_SIZE
            && u64_from_usize(body.len()) == u64::from(REGION_INFO_SIZE);
        let caps = if truncated {
            Vec::new()
        } else if flags & VFIO_REGION_INFO_FLAG_CAPS != 0 {
            if u64::from(argsz) != u64_from_usize(body.len()) {
                return malformed(InvalidMessage::LengthMismatch {
                    what: "region_info argsz with CAPS",
                    declared: u64::from(argsz),
                    actual: u64_from_usize(body.len()),
                });
            }
            decode_region_caps(body, cap_offset, limits)?
        } else {
            if cap_offset != 0 {
                return malformed(InvalidMessage::InvalidValue {
                    what: "region_info.cap_offset without CAPS",
                    value: u64::from(cap_offset),
                });
            }
            r.expect_end("region_info reply")?;
            Vec::new()
        };
        for cap in &caps {
            if let RegionCap::SparseMmap(areas) = cap {
                for a in areas {
                    let end = a.offset.saturating_add(a.size);
                    if end > size {
                        return illegal(PeerMisbehaved::OutOfRange {
                            what: "sparse area end",
                            value: end,
                            limit: size.saturating_add(1),
                        });
                    }
                }
            }
        }
        let info = RegionInfo {
            flags: flags & !VFIO_REGION_INFO_FLAG_CAPS,
            index: w.index.get(),
            size,
            offset: w.offset.get(),
            caps,
        };
        Ok(RegionInfoReply { argsz, info })
    }

    pub(crate) fn encode_payload(
        &self,
        f: &mut Frame<'_>,
    ) -> core::result::Result<(), EncodeError> {
        let has_caps = !self.info.caps.is_empty();
        if has_caps && self.info.argsz_needed()? != self.argsz {
            return Err(EncodeError::Inconsistent {
                what: "region_info argsz vs caps",
            });
        }
        let mut flags = self.info.flags & !VFIO_REGION_INFO_FLAG_CAPS;
        if has_caps {
            flags |= VFIO_REGION_INFO_FLAG_CAPS;
        }
        f.put(&RegionInfoWire {
            argsz: U32::new(self.argsz),
            flags: U32::new(flags),
            index: U32::new(self.info.index),
            cap_offset: U32::new(if has_caps { REGION_INFO_SIZE } else { 0 }),
            size: U64::new(self.info.size),
            offset: U64::new(self.info.offset),
        });
        encode_caps(f, &self.info.caps, u64::from(REGION_INFO_SIZE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::error::ProtoError;
    use rustix::io::Errno;

    /// 32-byte fixed part with `cap_offset`, followed by `caps`.
    fn info_with(cap_offset: u32, caps: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 32];
        let argsz = u32::try_from(32 + caps.len()).unwrap();
        v[0..4].copy_from_slice(&argsz.to_le_bytes());
        v[4..8].copy_from_slice(&(VFIO_REGION_INFO_FLAG_CAPS | 7).to_le_bytes());
        v[12..16].copy_from_slice(&cap_offset.to_le_bytes());
        v[16..24].copy_from_slice(&0x10000u64.to_le_bytes());
        v.extend_from_slice(caps);
        v
    }

    fn cap_hdr(id: u16, version: u16, next: u32) -> Vec<u8> {
        let mut v = id.to_le_bytes().to_vec();
        v.extend_from_slice(&version.to_le_bytes());
        v.extend_from_slice(&next.to_le_bytes());
        v
    }

    fn decode(info: &[u8], cap_offset: u32) -> Result<Vec<RegionCap>> {
        decode_region_caps(info, cap_offset, &DecodeLimits::default())
    }

    #[test]
    fn caps_msix_then_type_decode_in_chain_order() {
        let mut caps = cap_hdr(3, 1, 40);
        caps.extend(cap_hdr(2, 1, 0));
        caps.extend_from_slice(&5u32.to_le_bytes());
        caps.extend_from_slice(&6u32.to_le_bytes());
        let info = info_with(32, &caps);
        assert_eq!(
            decode(&info, 32).unwrap(),
            vec![
                RegionCap::MsixMappable,
                RegionCap::Type {
                    type_: 5,
                    subtype: 6
                }
            ]
        );
    }

    #[test]
    fn caps_next_pointing_back_is_loop() {
        let mut caps = cap_hdr(3, 1, 40);
        caps.extend(cap_hdr(2, 1, 32));
        caps.extend_from_slice(&[0; 8]);
        let info = info_with(32, &caps);
        assert_eq!(
            decode(&info, 32).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::CapLoop { offset: 32 })
        );
    }

    #[test]
    fn caps_self_loop_is_loop() {
        let info = info_with(32, &cap_hdr(3, 1, 32));
        assert_eq!(
            decode(&info, 32).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::CapLoop { offset: 32 })
        );
    }

    #[test]
    fn caps_next_out_of_bounds_is_rejected() {
        let info = info_with(32, &cap_hdr(3, 1, 1000));
        assert_eq!(
            decode(&info, 32).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::CapOutOfBounds {
                offset: 1000,
                len: 8,
                bound: 40
            })
        );
    }

    #[test]
    fn caps_huge_next_does_not_overflow() {
        let info = info_with(32, &cap_hdr(3, 1, u32::MAX));
        assert!(matches!(
            decode(&info, 32).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::CapOutOfBounds { .. })
        ));
    }

    #[test]
    fn caps_overlapping_is_rejected() {
        // TYPE at 32 (16 bytes), then MSIX at 40, inside it.
        let mut caps = cap_hdr(2, 1, 40);
        caps.extend(cap_hdr(3, 1, 0));
        let info = info_with(32, &caps);
        assert_eq!(
            decode(&info, 32).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::CapOverlap { offset: 40 })
        );
    }

    #[test]
    fn caps_offset_inside_fixed_part_is_overlap() {
        let mut info = info_with(8, &[]);
        info[8..16].copy_from_slice(&cap_hdr(3, 1, 0));
        assert_eq!(
            decode(&info, 8).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::CapOverlap { offset: 8 })
        );
    }

    #[test]
    fn caps_sparse_past_end_is_out_of_bounds() {
        let mut caps = cap_hdr(1, 1, 0);
        caps.extend_from_slice(&2u32.to_le_bytes());
        caps.extend_from_slice(&0u32.to_le_bytes());
        caps.extend_from_slice(&[0; 16]); // only one of two areas
        let info = info_with(32, &caps);
        assert_eq!(
            decode(&info, 32).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::CapOutOfBounds {
                offset: 32,
                len: 48,
                bound: 64
            })
        );
    }

    #[test]
    fn caps_too_many_areas_is_e2big() {
        let mut caps = cap_hdr(1, 1, 0);
        caps.extend_from_slice(&u32::MAX.to_le_bytes());
        caps.extend_from_slice(&0u32.to_le_bytes());
        let info = info_with(32, &caps);
        let err = decode(&info, 32).unwrap_err();
        assert!(matches!(
            err,
            ProtoError::Illegal(PeerMisbehaved::TooMany { .. })
        ));
        assert_eq!(err.errno(), Errno::TOOBIG);
    }

    #[test]
    fn caps_unknown_id_and_version_are_rejected() {
        let info = info_with(32, &cap_hdr(9, 1, 0));
        assert_eq!(
            decode(&info, 32).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::UnknownCap { id: 9, offset: 32 })
        );
        let info = info_with(32, &cap_hdr(3, 2, 0));
        assert_eq!(
            decode(&info, 32).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::UnsupportedCapVersion { id: 3, version: 2 })
        );
    }

    #[test]
    fn caps_duplicate_id_is_rejected() {
        let mut caps = cap_hdr(3, 1, 40);
        caps.extend(cap_hdr(3, 1, 0));
        let info = info_with(32, &caps);
        assert_eq!(
            decode(&info, 32).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::DuplicateCap { id: 3 })
        );
    }

    #[test]
    fn caps_sparse_reserved_nonzero_is_rejected() {
        let mut caps = cap_hdr(1, 1, 0);
        caps.extend_from_slice(&0u32.to_le_bytes());
        caps.extend_from_slice(&1u32.to_le_bytes());
        let info = info_with(32, &caps);
        assert!(matches!(
            decode(&info, 32).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::ReservedNonZero { .. })
        ));
    }

    #[test]
    fn reply_for_small_argsz_omits_caps_and_fd() {
        let info = RegionInfo {
            flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_MMAP,
            index: 0,
            size: 0x1000,
            offset: 0,
            caps: vec![RegionCap::SparseMmap(vec![SparseMmapArea {
                offset: 0,
                size: 0x1000,
            }])],
        };
        let small = info.reply_for(32).unwrap();
        assert_eq!(small.argsz, 64);
        assert!(small.info.caps.is_empty());
        assert!(!small.is_complete());
        assert!(!small.send_fd());
        let full = info.reply_for(64).unwrap();
        assert_eq!(full.argsz, 64);
        assert_eq!(full.info.caps.len(), 1);
        assert!(full.send_fd());
    }

    #[test]
    fn reply_for_without_caps_sends_fd_when_mmap() {
        let info = RegionInfo {
            flags: VFIO_REGION_INFO_FLAG_MMAP,
            index: 1,
            size: 0x1000,
            offset: 0,
            caps: vec![],
        };
        let r = info.reply_for(32).unwrap();
        assert_eq!(r.argsz, 32);
        assert!(r.send_fd());
    }

    #[test]
    fn reply_sparse_area_beyond_region_is_illegal() {
        let mut caps = cap_hdr(1, 1, 0);
        caps.extend_from_slice(&1u32.to_le_bytes());
        caps.extend_from_slice(&0u32.to_le_bytes());
        caps.extend_from_slice(&0xf000u64.to_le_bytes());
        caps.extend_from_slice(&0x2000u64.to_le_bytes());
        let info = info_with(32, &caps); // region size 0x10000
        let err = RegionInfoReply::decode(&info, &DecodeLimits::default()).unwrap_err();
        assert!(matches!(
            err,
            ProtoError::Illegal(PeerMisbehaved::OutOfRange { .. })
        ));
    }

    #[test]
    fn reply_caps_flag_with_wrong_argsz_is_rejected() {
        let mut info = info_with(32, &cap_hdr(3, 1, 0));
        info[0..4].copy_from_slice(&100u32.to_le_bytes());
        assert!(matches!(
            RegionInfoReply::decode(&info, &DecodeLimits::default()).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::LengthMismatch { .. })
        ));
    }
}
