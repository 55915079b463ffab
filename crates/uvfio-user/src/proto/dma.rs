//! DMA_MAP (2), DMA_UNMAP (3), and the server-to-client DMA_READ (11) and
//! DMA_WRITE (12).

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::error::{illegal, malformed, EncodeError, InvalidMessage, PeerMisbehaved, Result};
use super::limits::DecodeLimits;
use super::reader::{u64_from_usize, Reader};
use super::writer::Frame;

/// DMA_MAP flag: the server may read the region.
pub const VFIO_USER_F_DMA_REGION_READ: u32 = 1 << 0;
/// DMA_MAP flag: the server may write the region.
pub const VFIO_USER_F_DMA_REGION_WRITE: u32 = 1 << 1;
/// DMA_MAP flag (libvfio-user): the region may be mmap-ed.
pub const VFIO_USER_F_DMA_REGION_MMAP: u32 = 1 << 2;
/// DMA_MAP flag (libvfio-user): the region may be accessed with file I/O.
pub const VFIO_USER_F_DMA_REGION_FILE_IO: u32 = 1 << 3;
const DMA_MAP_KNOWN_FLAGS: u32 = 0xf;

/// DMA_UNMAP flag (legacy, libvfio-user): return the dirty bitmap.
pub const VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: u32 = 1 << 0;
/// DMA_UNMAP flag (libvfio-user): unmap everything (address = size = 0).
pub const VFIO_DMA_UNMAP_FLAG_ALL: u32 = 1 << 1;
const DMA_UNMAP_KNOWN_FLAGS: u32 = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP | VFIO_DMA_UNMAP_FLAG_ALL;

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct DmaMapWire {
    argsz: U32,
    flags: U32,
    offset: U64,
    address: U64,
    size: U64,
}
const _: () = assert!(core::mem::size_of::<DmaMapWire>() == 32);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct DmaUnmapWire {
    argsz: U32,
    flags: U32,
    address: U64,
    size: U64,
}
const _: () = assert!(core::mem::size_of::<DmaUnmapWire>() == 24);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct DirtyBitmapWire {
    pgsize: U64,
    size: U64,
}
const _: () = assert!(core::mem::size_of::<DirtyBitmapWire>() == 16);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct DmaAccessWire {
    address: U64,
    count: U64,
}
const _: () = assert!(core::mem::size_of::<DmaAccessWire>() == 16);

/// `end = start + len - 1` must not overflow (the kernel's rule).
pub(crate) fn check_range_end(what: &'static str, start: u64, len: u64) -> Result<()> {
    if len != 0 && start.checked_add(len - 1).is_none() {
        return malformed(InvalidMessage::Overflow { what });
    }
    Ok(())
}

fn check_argsz(what: &'static str, argsz: u32, min: u32) -> Result<()> {
    if argsz < min {
        return malformed(InvalidMessage::ArgszTooSmall { what, argsz, min });
    }
    Ok(())
}

/// DMA_MAP request (the reply has no payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaMap {
    /// `argsz` (at least [`DmaMap::ARGSZ`]).
    pub argsz: u32,
    /// `VFIO_USER_F_DMA_REGION_*`.
    pub flags: u32,
    /// Offset of the region in the fd; 0 without an fd.
    pub offset: u64,
    /// IOVA of the region.
    pub address: u64,
    /// Length of the region.
    pub size: u64,
}

impl DmaMap {
    /// Size of the payload (and the usual `argsz`).
    pub const ARGSZ: u32 = 32;

    /// Checks: 32 bytes, `argsz` ≥ 32, known flags, `address + size` and
    /// `offset + size` do not overflow, `offset` 0 unless an fd came.
    pub(crate) fn decode(r: &mut Reader<'_>, nfds: usize) -> Result<DmaMap> {
        let w: DmaMapWire = r.read("dma_map")?;
        let m = DmaMap {
            argsz: w.argsz.get(),
            flags: w.flags.get(),
            offset: w.offset.get(),
            address: w.address.get(),
            size: w.size.get(),
        };
        check_argsz("dma_map", m.argsz, Self::ARGSZ)?;
        if m.flags & !DMA_MAP_KNOWN_FLAGS != 0 {
            return malformed(InvalidMessage::UnknownFlags {
                what: "dma_map.flags",
                flags: u64::from(m.flags),
                known: u64::from(DMA_MAP_KNOWN_FLAGS),
            });
        }
        check_range_end("dma_map.address + size", m.address, m.size)?;
        check_range_end("dma_map.offset + size", m.offset, m.size)?;
        if nfds == 0 && m.offset != 0 {
            return malformed(InvalidMessage::InvalidValue {
                what: "dma_map.offset without an fd",
                value: m.offset,
            });
        }
        Ok(m)
    }

    pub(crate) fn encode_payload(&self, f: &mut Frame<'_>) {
        f.put(&DmaMapWire {
            argsz: U32::new(self.argsz),
            flags: U32::new(self.flags),
            offset: U64::new(self.offset),
            address: U64::new(self.address),
            size: U64::new(self.size),
        });
    }
}

/// The legacy dirty bitmap request appended to DMA_UNMAP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtyBitmap {
    /// Page size one bit stands for.
    pub pgsize: u64,
    /// Bitmap size in bytes.
    pub size: u64,
}

/// DMA_UNMAP request, and the fixed part of its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaUnmap {
    /// `argsz` (≥ 24; with a bitmap, ≥ 40 + bitmap size).
    pub argsz: u32,
    /// 0, `VFIO_DMA_UNMAP_FLAG_ALL` or `VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP`.
    pub flags: u32,
    /// IOVA; 0 with `FLAG_ALL`.
    pub address: u64,
    /// Length; 0 with `FLAG_ALL`.
    pub size: u64,
    /// Present exactly when `GET_DIRTY_BITMAP` is set.
    pub dirty_bitmap: Option<DirtyBitmap>,
}

impl DmaUnmap {
    /// Size of the fixed payload (and the usual `argsz`).
    pub const ARGSZ: u32 = 24;

    /// A plain unmap of `[address, address + size)`.
    #[must_use]
    pub fn new(address: u64, size: u64) -> DmaUnmap {
        DmaUnmap {
            argsz: Self::ARGSZ,
            flags: 0,
            address,
            size,
            dirty_bitmap: None,
        }
    }

    fn decode(r: &mut Reader<'_>, limits: &DecodeLimits, is_reply: bool) -> Result<DmaUnmap> {
        let w: DmaUnmapWire = r.read("dma_unmap")?;
        let mut m = DmaUnmap {
            argsz: w.argsz.get(),
            flags: w.flags.get(),
            address: w.address.get(),
            size: w.size.get(),
            dirty_bitmap: None,
        };
        check_argsz("dma_unmap", m.argsz, Self::ARGSZ)?;
        if m.flags & !DMA_UNMAP_KNOWN_FLAGS != 0 {
            return malformed(InvalidMessage::UnknownFlags {
                what: "dma_unmap.flags",
                flags: u64::from(m.flags),
                known: u64::from(DMA_UNMAP_KNOWN_FLAGS),
            });
        }
        if m.flags == DMA_UNMAP_KNOWN_FLAGS {
            return malformed(InvalidMessage::InvalidFlagCombination {
                what: "dma_unmap.flags",
                flags: u64::from(m.flags),
            });
        }
        if m.flags & VFIO_DMA_UNMAP_FLAG_ALL != 0 && (m.address != 0 || m.size != 0) {
            return malformed(InvalidMessage::InvalidValue {
                what: "dma_unmap address/size with FLAG_ALL",
                value: m.address | m.size,
            });
        }
        check_range_end("dma_unmap.address + size", m.address, m.size)?;
        if m.flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0 {
            let b: DirtyBitmapWire = r.read("dma_unmap.bitmap")?;
            let bitmap = DirtyBitmap {
                pgsize: b.pgsize.get(),
                size: b.size.get(),
            };
            if bitmap.size > u64::from(limits.max_data_xfer_size) {
                return illegal(PeerMisbehaved::DataTooLarge {
                    what: "dma_unmap.bitmap.size",
                    len: bitmap.size,
                    max: u64::from(limits.max_data_xfer_size),
                });
            }
            // The reply must fit in argsz (checked on requests only: a
            // reply's argsz is the size it needs).
            let needed = 40u64.saturating_add(bitmap.size);
            if !is_reply && u64::from(m.argsz) < needed {
                return malformed(InvalidMessage::ArgszTooSmall {
                    what: "dma_unmap with dirty bitmap",
                    argsz: m.argsz,
                    min: u32::try_from(needed).unwrap_or(u32::MAX),
                });
            }
            m.dirty_bitmap = Some(bitmap);
        }
        Ok(m)
    }

    pub(crate) fn decode_request(r: &mut Reader<'_>, limits: &DecodeLimits) -> Result<DmaUnmap> {
        Self::decode(r, limits, false)
    }

    fn encode_fixed(&self, f: &mut Frame<'_>) -> core::result::Result<(), EncodeError> {
        let has_flag = self.flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP != 0;
        if has_flag != self.dirty_bitmap.is_some() {
            return Err(EncodeError::Inconsistent {
                what: "dma_unmap.flags vs dirty_bitmap",
            });
        }
        f.put(&DmaUnmapWire {
            argsz: U32::new(self.argsz),
            flags: U32::new(self.flags),
            address: U64::new(self.address),
            size: U64::new(self.size),
        });
        if let Some(b) = self.dirty_bitmap {
            f.put(&DirtyBitmapWire {
                pgsize: U64::new(b.pgsize),
                size: U64::new(b.size),
            });
        }
        Ok(())
    }

    pub(crate) fn encode_payload(
        &self,
        f: &mut Frame<'_>,
    ) -> core::result::Result<(), EncodeError> {
        self.encode_fixed(f)
    }
}

/// DMA_UNMAP reply: the request echoed, plus the bitmap when one was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaUnmapReply<'a> {
    /// Echo of the request.
    pub unmap: DmaUnmap,
    /// The dirty bitmap (`dirty_bitmap.size` bytes), empty without one.
    pub bitmap: &'a [u8],
}

impl<'a> DmaUnmapReply<'a> {
    pub(crate) fn decode(r: &mut Reader<'a>, limits: &DecodeLimits) -> Result<DmaUnmapReply<'a>> {
        let unmap = DmaUnmap::decode(r, limits, true)?;
        let bitmap = match unmap.dirty_bitmap {
            Some(b) => {
                let len = usize::try_from(b.size).map_err(|_| InvalidMessage::Overflow {
                    what: "dma_unmap.bitmap.size",
                })?;
                r.take(len, "dma_unmap.bitmap data")?
            }
            None => &[],
        };
        Ok(DmaUnmapReply { unmap, bitmap })
    }

    pub(crate) fn encode_payload(
        &self,
        f: &mut Frame<'_>,
    ) -> core::result::Result<(), EncodeError> {
        let want = self.unmap.dirty_bitmap.map_or(0, |b| b.size);
        if want != u64_from_usize(self.bitmap.len()) {
            return Err(EncodeError::Inconsistent {
                what: "dma_unmap bitmap length vs dirty_bitmap.size",
            });
        }
        self.unmap.encode_fixed(f)?;
        f.put_bytes(self.bitmap);
        Ok(())
    }
}

/// DMA_READ request and DMA_WRITE reply: `address`, `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaAccess {
    /// IOVA.
    pub address: u64,
    /// Bytes.
    pub count: u64,
}

impl DmaAccess {
    /// Checks `count` ≤ `max_data_xfer_size` and no overflow of the range.
    pub(crate) fn decode(
        r: &mut Reader<'_>,
        limits: &DecodeLimits,
        what: &'static str,
    ) -> Result<DmaAccess> {
        let w: DmaAccessWire = r.read(what)?;
        let a = DmaAccess {
            address: w.address.get(),
            count: w.count.get(),
        };
        check_xfer(what, a.count, limits)?;
        check_range_end("dma address + count", a.address, a.count)?;
        Ok(a)
    }

    pub(crate) fn encode_payload(&self, f: &mut Frame<'_>) {
        f.put(&DmaAccessWire {
            address: U64::new(self.address),
            count: U64::new(self.count),
        });
    }
}

/// Fail when a data length exceeds the negotiated transfer size.
pub(crate) fn check_xfer(what: &'static str, len: u64, limits: &DecodeLimits) -> Result<()> {
    let max = u64::from(limits.max_data_xfer_size);
    if len > max {
        return illegal(PeerMisbehaved::DataTooLarge { what, len, max });
    }
    Ok(())
}

/// Read `count` data bytes that must be exactly the rest of the payload.
pub(crate) fn take_data<'a>(
    r: &mut Reader<'a>,
    count: u64,
    what: &'static str,
) -> Result<&'a [u8]> {
    let data = r.rest();
    if u64_from_usize(data.len()) != count {
        return malformed(InvalidMessage::LengthMismatch {
            what,
            declared: count,
            actual: u64_from_usize(data.len()),
        });
    }
    Ok(data)
}

/// DMA_WRITE request (server to client): write `data` at `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaWrite<'a> {
    /// IOVA.
    pub address: u64,
    /// Bytes to write (the wire `count` is `data.len()`).
    pub data: &'a [u8],
}

/// DMA_READ reply (client to server): the bytes read at `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaReadReply<'a> {
    /// IOVA echoed.
    pub address: u64,
    /// Bytes read (the wire `count` is `data.len()`).
    pub data: &'a [u8],
}

/// Shared body of DMA_WRITE requests and DMA_READ replies.
pub(crate) fn decode_dma_data<'a>(
    r: &mut Reader<'a>,
    limits: &DecodeLimits,
    what: &'static str,
) -> Result<(u64, &'a [u8])> {
    let a = DmaAccess::decode(r, limits, what)?;
    let data = take_data(r, a.count, what)?;
    Ok((a.address, data))
}

pub(crate) fn encode_dma_data(f: &mut Frame<'_>, address: u64, data: &[u8]) {
    DmaAccess {
        address,
        count: u64_from_usize(data.len()),
    }
    .encode_payload(f);
    f.put_bytes(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::error::ProtoError;
    use rustix::io::Errno;

    fn map_bytes(argsz: u32, flags: u32, offset: u64, address: u64, size: u64) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&argsz.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&offset.to_le_bytes());
        v.extend_from_slice(&address.to_le_bytes());
        v.extend_from_slice(&size.to_le_bytes());
        v
    }

    #[test]
    fn dma_map_unknown_flag_is_rejected() {
        let b = map_bytes(32, 0x10, 0, 0x1000, 0x1000);
        let err = DmaMap::decode(&mut Reader::new(&b), 0).unwrap_err();
        assert!(matches!(
            err,
            ProtoError::Malformed(InvalidMessage::UnknownFlags { flags: 0x10, .. })
        ));
        assert_eq!(err.errno(), Errno::INVAL);
    }

    #[test]
    fn dma_map_small_argsz_is_rejected() {
        let b = map_bytes(31, 3, 0, 0x1000, 0x1000);
        let err = DmaMap::decode(&mut Reader::new(&b), 0).unwrap_err();
        assert_eq!(
            err,
            ProtoError::Malformed(InvalidMessage::ArgszTooSmall {
                what: "dma_map",
                argsz: 31,
                min: 32
            })
        );
    }

    #[test]
    fn dma_map_wrapping_range_is_overflow() {
        let b = map_bytes(32, 3, 0, u64::MAX, 2);
        let err = DmaMap::decode(&mut Reader::new(&b), 0).unwrap_err();
        assert!(matches!(
            err,
            ProtoError::Malformed(InvalidMessage::Overflow { .. })
        ));
        assert_eq!(err.errno(), Errno::OVERFLOW);
    }

    #[test]
    fn dma_map_range_ending_at_top_is_fine() {
        let b = map_bytes(32, 3, 0, u64::MAX - 0xfff, 0x1000);
        assert!(DmaMap::decode(&mut Reader::new(&b), 0).is_ok());
    }

    #[test]
    fn dma_map_offset_without_fd_is_rejected() {
        let b = map_bytes(32, 3, 0x2000, 0x1000, 0x1000);
        assert!(DmaMap::decode(&mut Reader::new(&b), 0).is_err());
        assert!(DmaMap::decode(&mut Reader::new(&b), 1).is_ok());
    }

    fn unmap_bytes(argsz: u32, flags: u32, address: u64, size: u64) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&argsz.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&address.to_le_bytes());
        v.extend_from_slice(&size.to_le_bytes());
        v
    }

    #[test]
    fn dma_unmap_all_with_address_is_rejected() {
        let b = unmap_bytes(24, VFIO_DMA_UNMAP_FLAG_ALL, 0x1000, 0);
        let err =
            DmaUnmap::decode_request(&mut Reader::new(&b), &DecodeLimits::default()).unwrap_err();
        assert!(matches!(
            err,
            ProtoError::Malformed(InvalidMessage::InvalidValue { .. })
        ));
    }

    #[test]
    fn dma_unmap_all_and_bitmap_together_is_rejected() {
        let b = unmap_bytes(24, 3, 0, 0);
        let err =
            DmaUnmap::decode_request(&mut Reader::new(&b), &DecodeLimits::default()).unwrap_err();
        assert!(matches!(
            err,
            ProtoError::Malformed(InvalidMessage::InvalidFlagCombination { flags: 3, .. })
        ));
    }

    #[test]
    fn dma_unmap_bitmap_needs_argsz_for_reply() {
        let mut b = unmap_bytes(40, VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, 0x1000, 0x8000);
        b.extend_from_slice(&4096u64.to_le_bytes());
        b.extend_from_slice(&8u64.to_le_bytes());
        let err =
            DmaUnmap::decode_request(&mut Reader::new(&b), &DecodeLimits::default()).unwrap_err();
        assert_eq!(
            err,
            ProtoError::Malformed(InvalidMessage::ArgszTooSmall {
                what: "dma_unmap with dirty bitmap",
                argsz: 40,
                min: 48
            })
        );
    }

    #[test]
    fn dma_access_count_over_max_is_e2big() {
        let mut b = Vec::new();
        b.extend_from_slice(&0x1000u64.to_le_bytes());
        b.extend_from_slice(&((1u64 << 20) + 1).to_le_bytes());
        let err = DmaAccess::decode(&mut Reader::new(&b), &DecodeLimits::default(), "dma_read")
            .unwrap_err();
        assert_eq!(
            err,
            ProtoError::Illegal(PeerMisbehaved::DataTooLarge {
                what: "dma_read",
                len: (1 << 20) + 1,
                max: 1 << 20
            })
        );
        assert_eq!(err.errno(), Errno::TOOBIG);
    }

    #[test]
    fn dma_write_count_disagreeing_with_data_is_rejected() {
        let mut b = Vec::new();
        b.extend_from_slice(&0x1000u64.to_le_bytes());
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(&[1, 2, 3]);
        let err = decode_dma_data(&mut Reader::new(&b), &DecodeLimits::default(), "dma_write")
            .unwrap_err();
        assert_eq!(
            err,
            ProtoError::Malformed(InvalidMessage::LengthMismatch {
                what: "dma_write",
                declared: 4,
                actual: 3
            })
        );
    }
}
