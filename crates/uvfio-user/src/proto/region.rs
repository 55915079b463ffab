//! REGION_READ (9), REGION_WRITE (10) and REGION_WRITE_MULTI (15).
//!
//! These are the hot path: decoding borrows the data from the input and
//! allocates nothing; a REGION_READ reply can be filled in place with
//! [`encode_region_read_reply_with`](super::encode_region_read_reply_with).

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::dma::{check_range_end, check_xfer, take_data};
use super::error::{illegal, malformed, EncodeError, InvalidMessage, PeerMisbehaved, Result};
use super::limits::DecodeLimits;
use super::reader::{u64_from_usize, Reader};
use super::writer::{len_u32, Frame};

/// Most data bytes one REGION_WRITE_MULTI entry carries.
pub const VFIO_USER_MULTI_DATA: usize = 8;

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct RegionAccessWire {
    offset: U64,
    region: U32,
    count: U32,
}
const _: () = assert!(core::mem::size_of::<RegionAccessWire>() == 16);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct WriteMultiHeaderWire {
    wr_cnt: U64,
}
const _: () = assert!(core::mem::size_of::<WriteMultiHeaderWire>() == 8);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct WriteMultiEntryWire {
    offset: U64,
    region: U32,
    count: U32,
    data: [u8; VFIO_USER_MULTI_DATA],
}
const _: () = assert!(core::mem::size_of::<WriteMultiEntryWire>() == 24);
const ENTRY_SIZE: usize = core::mem::size_of::<WriteMultiEntryWire>();

/// REGION_READ request and REGION_WRITE reply: `offset`, `region`, `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionAccess {
    /// Offset within the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Bytes.
    pub count: u32,
}

impl RegionAccess {
    /// Checks `count` ≤ `max_data_xfer_size` and no overflow of the range.
    pub(crate) fn decode(
        r: &mut Reader<'_>,
        limits: &DecodeLimits,
        what: &'static str,
    ) -> Result<RegionAccess> {
        let w: RegionAccessWire = r.read(what)?;
        let a = RegionAccess {
            offset: w.offset.get(),
            region: w.region.get(),
            count: w.count.get(),
        };
        check_xfer(what, u64::from(a.count), limits)?;
        check_range_end("region offset + count", a.offset, u64::from(a.count))?;
        Ok(a)
    }

    pub(crate) fn encode_payload(&self, f: &mut Frame<'_>) {
        f.put(&RegionAccessWire {
            offset: U64::new(self.offset),
            region: U32::new(self.region),
            count: U32::new(self.count),
        });
    }
}

/// REGION_WRITE request: write `data` at `offset` of `region`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionWrite<'a> {
    /// Offset within the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Bytes to write (the wire `count` is `data.len()`).
    pub data: &'a [u8],
}

impl RegionWrite<'_> {
    /// The REGION_WRITE reply that acknowledges this write.
    #[must_use]
    pub fn ack(&self) -> RegionAccess {
        RegionAccess {
            offset: self.offset,
            region: self.region,
            count: u32::try_from(self.data.len()).unwrap_or(u32::MAX),
        }
    }
}

/// REGION_READ reply: the bytes read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionReadReply<'a> {
    /// Offset echoed.
    pub offset: u64,
    /// Region echoed.
    pub region: u32,
    /// Bytes read (the wire `count` is `data.len()`).
    pub data: &'a [u8],
}

/// Shared body of REGION_WRITE requests and REGION_READ replies.
pub(crate) fn decode_region_data<'a>(
    r: &mut Reader<'a>,
    limits: &DecodeLimits,
    what: &'static str,
) -> Result<(u64, u32, &'a [u8])> {
    let a = RegionAccess::decode(r, limits, what)?;
    let data = take_data(r, u64::from(a.count), what)?;
    Ok((a.offset, a.region, data))
}

pub(crate) fn encode_region_data(
    f: &mut Frame<'_>,
    offset: u64,
    region: u32,
    data: &[u8],
) -> core::result::Result<(), EncodeError> {
    RegionAccess {
        offset,
        region,
        count: len_u32("region data", data.len())?,
    }
    .encode_payload(f);
    f.put_bytes(data);
    Ok(())
}

/// One REGION_WRITE_MULTI write: at most 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteMultiEntry<'a> {
    /// Offset within the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Bytes to write (at most [`VFIO_USER_MULTI_DATA`]).
    pub data: &'a [u8],
}

#[derive(Debug, Clone, Copy)]
enum MultiRepr<'a> {
    /// Entries as they came off the wire (validated, `len` × 24 bytes).
    Wire(&'a [u8]),
    /// Entries given by a sender.
    Entries(&'a [WriteMultiEntry<'a>]),
}

/// REGION_WRITE_MULTI request: a batch of small writes, in order. Decoding
/// borrows the entries without allocating; iterate with [`Self::iter`].
#[derive(Debug, Clone, Copy)]
pub struct RegionWriteMulti<'a> {
    repr: MultiRepr<'a>,
}

impl<'a> RegionWriteMulti<'a> {
    /// A batch to send. Fails if an entry carries more than 8 bytes.
    pub fn new(entries: &'a [WriteMultiEntry<'a>]) -> core::result::Result<Self, EncodeError> {
        if entries.iter().any(|e| e.data.len() > VFIO_USER_MULTI_DATA) {
            return Err(EncodeError::TooLarge {
                what: "region_write_multi entry data",
                len: entries
                    .iter()
                    .map(|e| u64_from_usize(e.data.len()))
                    .max()
                    .unwrap_or(0),
                max: u64_from_usize(VFIO_USER_MULTI_DATA),
            });
        }
        Ok(RegionWriteMulti {
            repr: MultiRepr::Entries(entries),
        })
    }

    /// Number of writes.
    #[must_use]
    pub fn len(&self) -> usize {
        match self.repr {
            MultiRepr::Wire(b) => b.len() / ENTRY_SIZE,
            MultiRepr::Entries(e) => e.len(),
        }
    }

    /// True for an empty batch.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The writes, in order.
    pub fn iter(&self) -> impl Iterator<Item = WriteMultiEntry<'a>> + 'a {
        let (wire, given): (&'a [u8], &'a [WriteMultiEntry<'a>]) = match self.repr {
            MultiRepr::Wire(b) => (b, &[]),
            MultiRepr::Entries(e) => (&[], e),
        };
        wire.chunks_exact(ENTRY_SIZE)
            .filter_map(entry_from_wire)
            .chain(given.iter().copied())
    }

    /// Checks: `wr_cnt` matches the payload (24 bytes per entry), is within
    /// `limits.max_write_multi_entries`, and every `count` ≤ 8.
    pub(crate) fn decode(
        r: &mut Reader<'a>,
        limits: &DecodeLimits,
    ) -> Result<RegionWriteMulti<'a>> {
        let h: WriteMultiHeaderWire = r.read("region_write_multi")?;
        let wr_cnt = h.wr_cnt.get();
        if wr_cnt > limits.max_write_multi_entries {
            return illegal(PeerMisbehaved::TooMany {
                what: "region_write_multi.wr_cnt",
                count: wr_cnt,
                max: limits.max_write_multi_entries,
            });
        }
        let body = r.rest();
        let expected = wr_cnt.checked_mul(u64_from_usize(ENTRY_SIZE));
        if expected != Some(u64_from_usize(body.len())) {
            return malformed(InvalidMessage::LengthMismatch {
                what: "region_write_multi.wr_cnt * 24",
                declared: expected.unwrap_or(u64::MAX),
                actual: u64_from_usize(body.len()),
            });
        }
        for (i, chunk) in body.chunks_exact(ENTRY_SIZE).enumerate() {
            let Ok(w) = WriteMultiEntryWire::read_from_bytes(chunk) else {
                return malformed(InvalidMessage::Truncated {
                    what: "region_write_multi entry",
                    offset: 8 + i * ENTRY_SIZE,
                    needed: ENTRY_SIZE,
                    available: chunk.len(),
                });
            };
            let count = w.count.get();
            if count > 8 {
                return malformed(InvalidMessage::InvalidValue {
                    what: "region_write_multi entry count",
                    value: u64::from(count),
                });
            }
            check_range_end(
                "region_write_multi offset + count",
                w.offset.get(),
                u64::from(count),
            )?;
        }
        Ok(RegionWriteMulti {
            repr: MultiRepr::Wire(body),
        })
    }

    pub(crate) fn encode_payload(&self, f: &mut Frame<'_>) {
        f.put(&WriteMultiHeaderWire {
            wr_cnt: U64::new(u64_from_usize(self.len())),
        });
        for e in self.iter() {
            let mut data = [0u8; VFIO_USER_MULTI_DATA];
            let n = e.data.len().min(VFIO_USER_MULTI_DATA);
            data[..n].copy_from_slice(&e.data[..n]);
            f.put(&WriteMultiEntryWire {
                offset: U64::new(e.offset),
                region: U32::new(e.region),
                count: U32::new(u32::try_from(n).unwrap_or(0)),
                data,
            });
        }
    }
}

fn entry_from_wire(chunk: &[u8]) -> Option<WriteMultiEntry<'_>> {
    let w = WriteMultiEntryWire::ref_from_bytes(chunk).ok()?;
    let n = usize::try_from(w.count.get())
        .ok()?
        .min(VFIO_USER_MULTI_DATA);
    Some(WriteMultiEntry {
        offset: w.offset.get(),
        region: w.region.get(),
        data: &w.data[..n],
    })
}

impl PartialEq for RegionWriteMulti<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for RegionWriteMulti<'_> {}

/// REGION_WRITE_MULTI reply: how many writes completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionWriteMultiReply {
    /// Writes completed.
    pub wr_cnt: u64,
}

impl RegionWriteMultiReply {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<RegionWriteMultiReply> {
        let h: WriteMultiHeaderWire = r.read("region_write_multi reply")?;
        Ok(RegionWriteMultiReply {
            wr_cnt: h.wr_cnt.get(),
        })
    }

    pub(crate) fn encode_payload(&self, f: &mut Frame<'_>) {
        f.put(&WriteMultiHeaderWire {
            wr_cnt: U64::new(self.wr_cnt),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::error::ProtoError;
    use rustix::io::Errno;

    fn access(offset: u64, region: u32, count: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&offset.to_le_bytes());
        v.extend_from_slice(&region.to_le_bytes());
        v.extend_from_slice(&count.to_le_bytes());
        v
    }

    #[test]
    fn region_read_count_over_max_is_e2big() {
        let b = access(0, 0, (1 << 20) + 1);
        let err = RegionAccess::decode(
            &mut Reader::new(&b),
            &DecodeLimits::default(),
            "region_read",
        )
        .unwrap_err();
        assert!(matches!(
            err,
            ProtoError::Illegal(PeerMisbehaved::DataTooLarge { .. })
        ));
        assert_eq!(err.errno(), Errno::TOOBIG);
    }

    #[test]
    fn region_write_count_disagrees_with_payload() {
        let mut b = access(0, 0, 4);
        b.extend_from_slice(&[1, 2, 3, 4, 5]);
        let err = decode_region_data(
            &mut Reader::new(&b),
            &DecodeLimits::default(),
            "region_write",
        )
        .unwrap_err();
        assert_eq!(
            err,
            ProtoError::Malformed(InvalidMessage::LengthMismatch {
                what: "region_write",
                declared: 4,
                actual: 5
            })
        );
    }

    #[test]
    fn region_offset_wrap_is_overflow() {
        let b = access(u64::MAX, 0, 2);
        let err = RegionAccess::decode(
            &mut Reader::new(&b),
            &DecodeLimits::default(),
            "region_read",
        )
        .unwrap_err();
        assert_eq!(err.errno(), Errno::OVERFLOW);
    }

    fn multi(wr_cnt: u64, entries: &[(u64, u32, u32)]) -> Vec<u8> {
        let mut v = wr_cnt.to_le_bytes().to_vec();
        for &(o, r, c) in entries {
            v.extend_from_slice(&o.to_le_bytes());
            v.extend_from_slice(&r.to_le_bytes());
            v.extend_from_slice(&c.to_le_bytes());
            v.extend_from_slice(&[0xaa; 8]);
        }
        v
    }

    #[test]
    fn write_multi_decodes_entries_without_copy() {
        let b = multi(2, &[(0x10, 0, 4), (0x20, 1, 8)]);
        let m = RegionWriteMulti::decode(&mut Reader::new(&b), &DecodeLimits::default()).unwrap();
        let v: Vec<_> = m.iter().collect();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].offset, 0x10);
        assert_eq!(v[0].data, &[0xaa; 4]);
        assert_eq!(v[1].region, 1);
        assert_eq!(v[1].data.len(), 8);
    }

    #[test]
    fn write_multi_count_mismatch_is_rejected() {
        let b = multi(3, &[(0x10, 0, 4), (0x20, 1, 8)]);
        let err =
            RegionWriteMulti::decode(&mut Reader::new(&b), &DecodeLimits::default()).unwrap_err();
        assert!(matches!(
            err,
            ProtoError::Malformed(InvalidMessage::LengthMismatch { .. })
        ));
    }

    #[test]
    fn write_multi_huge_count_is_too_many() {
        let b = multi(u64::MAX, &[]);
        let err =
            RegionWriteMulti::decode(&mut Reader::new(&b), &DecodeLimits::default()).unwrap_err();
        assert!(matches!(
            err,
            ProtoError::Illegal(PeerMisbehaved::TooMany { .. })
        ));
        assert_eq!(err.errno(), Errno::TOOBIG);
    }

    #[test]
    fn write_multi_entry_count_over_8_is_rejected() {
        let b = multi(1, &[(0x10, 0, 9)]);
        let err =
            RegionWriteMulti::decode(&mut Reader::new(&b), &DecodeLimits::default()).unwrap_err();
        assert!(matches!(
            err,
            ProtoError::Malformed(InvalidMessage::InvalidValue { value: 9, .. })
        ));
    }

    #[test]
    fn write_multi_new_rejects_long_entry() {
        let data = [0u8; 9];
        let entries = [WriteMultiEntry {
            offset: 0,
            region: 0,
            data: &data,
        }];
        assert!(RegionWriteMulti::new(&entries).is_err());
    }
}
