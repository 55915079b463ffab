//! DEVICE_FEATURE (16): get, set or probe a device feature.
//!
//! Payload: `argsz u32@0`, `flags u32@4` (feature index in bits 0-15, GET
//! bit 16, SET bit 17, PROBE bit 18), data@8. What the data holds depends on
//! the feature, the operation and the direction; [`FeatureData`] has a typed
//! variant for every combination the spec defines and [`FeatureData::Raw`]
//! for the rest (a probe, whose data is unused, or a feature the server
//! will answer with `ENOTTY`).

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::dma::{check_range_end, check_xfer};
use super::error::{illegal, malformed, EncodeError, InvalidMessage, PeerMisbehaved, Result};
use super::limits::DecodeLimits;
use super::migration::{MigState, VFIO_MIGRATION_KNOWN_FLAGS, VFIO_MIGRATION_STOP_COPY};
use super::reader::{u64_from_usize, usize_from, Reader};
use super::writer::{len_u32, Frame};

/// Feature index bits of `flags`.
pub const VFIO_DEVICE_FEATURE_MASK: u32 = 0xffff;
/// Get the feature's data.
pub const VFIO_DEVICE_FEATURE_GET: u32 = 1 << 16;
/// Set the feature's data.
pub const VFIO_DEVICE_FEATURE_SET: u32 = 1 << 17;
/// Probe for support.
pub const VFIO_DEVICE_FEATURE_PROBE: u32 = 1 << 18;
const FEATURE_KNOWN_FLAGS: u32 = VFIO_DEVICE_FEATURE_MASK
    | VFIO_DEVICE_FEATURE_GET
    | VFIO_DEVICE_FEATURE_SET
    | VFIO_DEVICE_FEATURE_PROBE;

/// Feature: migration support flags (GET).
pub const VFIO_DEVICE_FEATURE_MIGRATION: u16 = 1;
/// Feature: migration device state (GET, SET).
pub const VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE: u16 = 2;
/// Feature: start DMA dirty logging (SET).
pub const VFIO_DEVICE_FEATURE_DMA_LOGGING_START: u16 = 6;
/// Feature: stop DMA dirty logging (SET).
pub const VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP: u16 = 7;
/// Feature: report the dirty bitmap (GET).
pub const VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT: u16 = 8;

const FEATURE_SIZE: u32 = 8;

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct DeviceFeatureWire {
    argsz: U32,
    flags: U32,
}
const _: () = assert!(core::mem::size_of::<DeviceFeatureWire>() == 8);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct MigrationWire {
    flags: U64,
}
const _: () = assert!(core::mem::size_of::<MigrationWire>() == 8);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct MigStateWire {
    device_state: U32,
    data_fd: U32,
}
const _: () = assert!(core::mem::size_of::<MigStateWire>() == 8);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct DmaLoggingControlWire {
    page_size: U64,
    num_ranges: U32,
    reserved: U32,
}
const _: () = assert!(core::mem::size_of::<DmaLoggingControlWire>() == 16);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct DmaLoggingRangeWire {
    iova: U64,
    length: U64,
}
const _: () = assert!(core::mem::size_of::<DmaLoggingRangeWire>() == 16);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct DmaLoggingReportWire {
    iova: U64,
    length: U64,
    page_size: U64,
}
const _: () = assert!(core::mem::size_of::<DmaLoggingReportWire>() == 24);

/// The operation in `flags`. GET and SET are exclusive except in a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureOp {
    /// GET.
    Get,
    /// SET.
    Set,
    /// PROBE, optionally asking whether GET and/or SET are supported.
    Probe {
        /// GET is also set.
        get: bool,
        /// SET is also set.
        set: bool,
    },
}

impl FeatureOp {
    fn bits(self) -> u32 {
        match self {
            FeatureOp::Get => VFIO_DEVICE_FEATURE_GET,
            FeatureOp::Set => VFIO_DEVICE_FEATURE_SET,
            FeatureOp::Probe { get, set } => {
                let mut b = VFIO_DEVICE_FEATURE_PROBE;
                if get {
                    b |= VFIO_DEVICE_FEATURE_GET;
                }
                if set {
                    b |= VFIO_DEVICE_FEATURE_SET;
                }
                b
            }
        }
    }
}

/// One IOVA range to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaLoggingRange {
    /// Start IOVA.
    pub iova: u64,
    /// Length.
    pub length: u64,
}

/// DMA_LOGGING_START/STOP data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaLoggingControl {
    /// Tracking granularity (the reply may change it).
    pub page_size: u64,
    /// Ranges to log; empty means everything.
    pub ranges: Vec<DmaLoggingRange>,
}

/// DMA_LOGGING_REPORT data (request without bitmap, reply with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaLoggingReport<'a> {
    /// Start IOVA.
    pub iova: u64,
    /// Length.
    pub length: u64,
    /// Bitmap granularity (a power of two).
    pub page_size: u64,
    /// One bit per page, as u64 words; empty in the request.
    pub bitmap: &'a [u8],
}

impl DmaLoggingReport<'_> {
    /// Bitmap bytes the reply carries: one bit per page, rounded up to u64s.
    #[must_use]
    pub fn bitmap_len(&self) -> Option<u64> {
        if self.page_size == 0 {
            return None;
        }
        let pages = self.length.div_ceil(self.page_size);
        pages.div_ceil(64).checked_mul(8)
    }
}

/// DEVICE_FEATURE data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeatureData<'a> {
    /// No data (GET request of MIGRATION or MIG_DEVICE_STATE; STOP without
    /// ranges).
    Empty,
    /// MIGRATION GET reply: `VFIO_MIGRATION_*` flags (STOP_COPY required).
    Migration {
        /// Supported migration flags.
        flags: u64,
    },
    /// MIG_DEVICE_STATE SET request/reply and GET reply.
    MigDeviceState {
        /// The state (target for SET, current for GET).
        device_state: MigState,
        /// Unused in vfio-user; kept as sent (libvfio-user sends -1).
        data_fd: u32,
    },
    /// DMA_LOGGING_START/STOP SET request and reply.
    DmaLogging(DmaLoggingControl),
    /// DMA_LOGGING_REPORT GET request and reply.
    DmaLoggingReport(DmaLoggingReport<'a>),
    /// Uninterpreted: probes, and features or operations the spec does not
    /// define data for.
    Raw(&'a [u8]),
}

/// DEVICE_FEATURE request and reply (SET/PROBE replies echo the request;
/// GET replies carry the data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFeature<'a> {
    /// Request: room for the reply payload; reply: its size.
    pub argsz: u32,
    /// Feature index (bits 0-15 of flags).
    pub feature: u16,
    /// Operation.
    pub op: FeatureOp,
    /// Data.
    pub data: FeatureData<'a>,
}

impl<'a> DeviceFeature<'a> {
    /// The raw `flags` word.
    #[must_use]
    pub fn flags(&self) -> u32 {
        u32::from(self.feature) | self.op.bits()
    }

    /// Checks: `argsz` ≥ 8; known flag bits; GET and SET together only with
    /// PROBE, and at least one operation; then the data per feature/op/
    /// direction: exact sizes, valid device state, known migration flags
    /// with STOP_COPY, zero reserved field, `num_ranges` matching the data
    /// and within `limits.max_dma_logging_ranges`, range ends that do not
    /// overflow, a power-of-two report page size, a report bitmap of
    /// exactly the right size (at most `max_data_xfer_size`).
    pub(crate) fn decode(
        r: &mut Reader<'a>,
        limits: &DecodeLimits,
        is_reply: bool,
    ) -> Result<DeviceFeature<'a>> {
        let w: DeviceFeatureWire = r.read("device_feature")?;
        let (argsz, flags) = (w.argsz.get(), w.flags.get());
        if argsz < FEATURE_SIZE {
            return malformed(InvalidMessage::ArgszTooSmall {
                what: "device_feature",
                argsz,
                min: FEATURE_SIZE,
            });
        }
        if flags & !FEATURE_KNOWN_FLAGS != 0 {
            return malformed(InvalidMessage::UnknownFlags {
                what: "device_feature.flags",
                flags: u64::from(flags),
                known: u64::from(FEATURE_KNOWN_FLAGS),
            });
        }
        let get = flags & VFIO_DEVICE_FEATURE_GET != 0;
        let set = flags & VFIO_DEVICE_FEATURE_SET != 0;
        let op = match (flags & VFIO_DEVICE_FEATURE_PROBE != 0, get, set) {
            (true, get, set) => FeatureOp::Probe { get, set },
            (false, true, false) => FeatureOp::Get,
            (false, false, true) => FeatureOp::Set,
            _ => {
                return malformed(InvalidMessage::InvalidFlagCombination {
                    what: "device_feature GET/SET/PROBE",
                    flags: u64::from(flags),
                })
            }
        };
        let feature = u16::try_from(flags & VFIO_DEVICE_FEATURE_MASK).unwrap_or(u16::MAX);
        let data = decode_data(r, feature, op, is_reply, limits)?;
        r.expect_end("device_feature")?;
        Ok(DeviceFeature {
            argsz,
            feature,
            op,
            data,
        })
    }

    pub(crate) fn encode_payload(
        &self,
        f: &mut Frame<'_>,
    ) -> core::result::Result<(), EncodeError> {
        f.put(&DeviceFeatureWire {
            argsz: U32::new(self.argsz),
            flags: U32::new(self.flags()),
        });
        match &self.data {
            FeatureData::Empty => {}
            FeatureData::Migration { flags } => f.put(&MigrationWire {
                flags: U64::new(*flags),
            }),
            FeatureData::MigDeviceState {
                device_state,
                data_fd,
            } => f.put(&MigStateWire {
                device_state: U32::new(device_state.raw()),
                data_fd: U32::new(*data_fd),
            }),
            FeatureData::DmaLogging(c) => {
                f.put(&DmaLoggingControlWire {
                    page_size: U64::new(c.page_size),
                    num_ranges: U32::new(len_u32("dma_logging num_ranges", c.ranges.len())?),
                    reserved: U32::new(0),
                });
                for range in &c.ranges {
                    f.put(&DmaLoggingRangeWire {
                        iova: U64::new(range.iova),
                        length: U64::new(range.length),
                    });
                }
            }
            FeatureData::DmaLoggingReport(rep) => {
                f.put(&DmaLoggingReportWire {
                    iova: U64::new(rep.iova),
                    length: U64::new(rep.length),
                    page_size: U64::new(rep.page_size),
                });
                f.put_bytes(rep.bitmap);
            }
            FeatureData::Raw(b) => f.put_bytes(b),
        }
        Ok(())
    }
}

fn decode_data<'a>(
    r: &mut Reader<'a>,
    feature: u16,
    op: FeatureOp,
    is_reply: bool,
    limits: &DecodeLimits,
) -> Result<FeatureData<'a>> {
    let data = match (feature, op) {
        (_, FeatureOp::Probe { .. }) => FeatureData::Raw(r.rest()),
        (VFIO_DEVICE_FEATURE_MIGRATION, FeatureOp::Get) if !is_reply => FeatureData::Empty,
        (VFIO_DEVICE_FEATURE_MIGRATION, FeatureOp::Get) => {
            let w: MigrationWire = r.read("feature migration")?;
            let flags = w.flags.get();
            if flags & !VFIO_MIGRATION_KNOWN_FLAGS != 0 {
                return malformed(InvalidMessage::UnknownFlags {
                    what: "migration flags",
                    flags,
                    known: VFIO_MIGRATION_KNOWN_FLAGS,
                });
            }
            if flags & VFIO_MIGRATION_STOP_COPY == 0 {
                return malformed(InvalidMessage::InvalidValue {
                    what: "migration flags without STOP_COPY",
                    value: flags,
                });
            }
            FeatureData::Migration { flags }
        }
        (VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, FeatureOp::Get) if !is_reply => FeatureData::Empty,
        (VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, FeatureOp::Get | FeatureOp::Set) => {
            let w: MigStateWire = r.read("feature mig_device_state")?;
            FeatureData::MigDeviceState {
                device_state: MigState::from_raw(w.device_state.get())?,
                data_fd: w.data_fd.get(),
            }
        }
        (VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, FeatureOp::Set) if r.left() == 0 => {
            FeatureData::Empty
        }
        (
            VFIO_DEVICE_FEATURE_DMA_LOGGING_START | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
            FeatureOp::Set,
        ) => FeatureData::DmaLogging(decode_logging_control(r, limits)?),
        (VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, FeatureOp::Get) => {
            let w: DmaLoggingReportWire = r.read("feature dma_logging_report")?;
            let mut rep = DmaLoggingReport {
                iova: w.iova.get(),
                length: w.length.get(),
                page_size: w.page_size.get(),
                bitmap: &[],
            };
            if !rep.page_size.is_power_of_two() {
                return malformed(InvalidMessage::InvalidValue {
                    what: "dma_logging_report.page_size (power of two)",
                    value: rep.page_size,
                });
            }
            check_range_end("dma_logging_report iova + length", rep.iova, rep.length)?;
            let len = rep.bitmap_len().unwrap_or(u64::MAX);
            check_xfer("dma_logging_report bitmap", len, limits)?;
            if is_reply {
                rep.bitmap = r.rest();
                if u64_from_usize(rep.bitmap.len()) != len {
                    return malformed(InvalidMessage::LengthMismatch {
                        what: "dma_logging_report bitmap",
                        declared: len,
                        actual: u64_from_usize(rep.bitmap.len()),
                    });
                }
            }
            FeatureData::DmaLoggingReport(rep)
        }
        _ => FeatureData::Raw(r.rest()),
    };
    Ok(data)
}

fn decode_logging_control(r: &mut Reader<'_>, limits: &DecodeLimits) -> Result<DmaLoggingControl> {
    let at = r.offset();
    let w: DmaLoggingControlWire = r.read("dma_logging control")?;
    if w.reserved.get() != 0 {
        return malformed(InvalidMessage::ReservedNonZero {
            what: "dma_logging reserved",
            offset: at.saturating_add(12),
        });
    }
    let n = w.num_ranges.get();
    if n > limits.max_dma_logging_ranges {
        return illegal(PeerMisbehaved::TooMany {
            what: "dma_logging num_ranges",
            count: u64::from(n),
            max: u64::from(limits.max_dma_logging_ranges),
        });
    }
    let left = u64_from_usize(r.left());
    let want = u64::from(n).saturating_mul(16);
    if left != want {
        return malformed(InvalidMessage::LengthMismatch {
            what: "dma_logging num_ranges * 16",
            declared: want,
            actual: left,
        });
    }
    let mut ranges = Vec::with_capacity(usize_from(n));
    for _ in 0..n {
        let w: DmaLoggingRangeWire = r.read("dma_logging range")?;
        let range = DmaLoggingRange {
            iova: w.iova.get(),
            length: w.length.get(),
        };
        check_range_end("dma_logging range iova + length", range.iova, range.length)?;
        ranges.push(range);
    }
    Ok(DmaLoggingControl {
        page_size: w.page_size.get(),
        ranges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::error::ProtoError;
    use rustix::io::Errno;

    fn feat(argsz: u32, flags: u32, data: &[u8]) -> Vec<u8> {
        let mut v = argsz.to_le_bytes().to_vec();
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    fn dec(b: &[u8], is_reply: bool) -> Result<DeviceFeature<'_>> {
        DeviceFeature::decode(&mut Reader::new(b), &DecodeLimits::default(), is_reply)
    }

    #[test]
    fn feature_get_and_set_without_probe_is_rejected() {
        let b = feat(
            8,
            VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET | 2,
            &[],
        );
        let err = dec(&b, false).unwrap_err();
        assert!(matches!(
            err,
            ProtoError::Malformed(InvalidMessage::InvalidFlagCombination { .. })
        ));
        assert_eq!(err.errno(), Errno::INVAL);
    }

    #[test]
    fn feature_no_op_is_rejected() {
        assert!(dec(&feat(8, 2, &[]), false).is_err());
    }

    #[test]
    fn feature_unknown_flag_bit_is_rejected() {
        let b = feat(8, VFIO_DEVICE_FEATURE_GET | 1 << 19 | 1, &[]);
        assert!(matches!(
            dec(&b, false).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::UnknownFlags { .. })
        ));
    }

    #[test]
    fn feature_probe_keeps_raw_data() {
        let b = feat(
            8,
            VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_SET | 6,
            &[],
        );
        let f = dec(&b, false).unwrap();
        assert_eq!(
            f.op,
            FeatureOp::Probe {
                get: false,
                set: true
            }
        );
        assert_eq!(f.data, FeatureData::Raw(&[]));
    }

    #[test]
    fn feature_set_mig_state_invalid_state_is_rejected() {
        let mut d = 0xabcdu32.to_le_bytes().to_vec();
        d.extend_from_slice(&u32::MAX.to_le_bytes());
        let b = feat(16, VFIO_DEVICE_FEATURE_SET | 2, &d);
        assert!(matches!(
            dec(&b, false).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::InvalidValue { value: 0xabcd, .. })
        ));
    }

    #[test]
    fn feature_set_mig_state_keeps_data_fd_minus_one() {
        let mut d = 3u32.to_le_bytes().to_vec();
        d.extend_from_slice(&u32::MAX.to_le_bytes());
        let b = feat(16, VFIO_DEVICE_FEATURE_SET | 2, &d);
        assert_eq!(
            dec(&b, false).unwrap().data,
            FeatureData::MigDeviceState {
                device_state: MigState::StopCopy,
                data_fd: u32::MAX
            }
        );
    }

    #[test]
    fn feature_get_migration_request_with_data_is_trailing() {
        let b = feat(16, VFIO_DEVICE_FEATURE_GET | 1, &[0; 8]);
        assert!(matches!(
            dec(&b, false).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::TrailingBytes { .. })
        ));
    }

    #[test]
    fn feature_migration_reply_without_stop_copy_is_rejected() {
        let b = feat(16, VFIO_DEVICE_FEATURE_GET | 1, &4u64.to_le_bytes());
        assert!(dec(&b, true).is_err());
        let b = feat(16, VFIO_DEVICE_FEATURE_GET | 1, &5u64.to_le_bytes());
        assert_eq!(
            dec(&b, true).unwrap().data,
            FeatureData::Migration { flags: 5 }
        );
    }

    #[test]
    fn feature_logging_num_ranges_mismatch_is_rejected() {
        let mut d = 4096u64.to_le_bytes().to_vec();
        d.extend_from_slice(&2u32.to_le_bytes());
        d.extend_from_slice(&0u32.to_le_bytes());
        d.extend_from_slice(&[0; 16]);
        let b = feat(40, VFIO_DEVICE_FEATURE_SET | 6, &d);
        assert!(matches!(
            dec(&b, false).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::LengthMismatch { .. })
        ));
    }

    #[test]
    fn feature_logging_huge_num_ranges_is_e2big() {
        let mut d = 4096u64.to_le_bytes().to_vec();
        d.extend_from_slice(&u32::MAX.to_le_bytes());
        d.extend_from_slice(&0u32.to_le_bytes());
        let b = feat(24, VFIO_DEVICE_FEATURE_SET | 6, &d);
        assert_eq!(dec(&b, false).unwrap_err().errno(), Errno::TOOBIG);
    }

    fn report(iova: u64, length: u64, page_size: u64) -> Vec<u8> {
        let mut d = iova.to_le_bytes().to_vec();
        d.extend_from_slice(&length.to_le_bytes());
        d.extend_from_slice(&page_size.to_le_bytes());
        d
    }

    #[test]
    fn feature_report_page_size_not_power_of_two_is_rejected() {
        let b = feat(32, VFIO_DEVICE_FEATURE_GET | 8, &report(0, 0x10000, 3000));
        assert!(matches!(
            dec(&b, false).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::InvalidValue { value: 3000, .. })
        ));
    }

    #[test]
    fn feature_report_reply_bitmap_must_match_pages() {
        // 16 pages -> one u64.
        let mut d = report(0x10000, 0x10000, 4096);
        d.extend_from_slice(&0xffu64.to_le_bytes());
        let b = feat(40, VFIO_DEVICE_FEATURE_GET | 8, &d);
        let f = dec(&b, true).unwrap();
        match f.data {
            FeatureData::DmaLoggingReport(r) => assert_eq!(r.bitmap.len(), 8),
            other => panic!("{other:?}"),
        }
        let mut short = report(0x10000, 0x10000, 4096);
        short.extend_from_slice(&[0; 4]);
        let b = feat(36, VFIO_DEVICE_FEATURE_GET | 8, &short);
        assert!(dec(&b, true).is_err());
    }

    #[test]
    fn feature_report_huge_bitmap_is_e2big() {
        let b = feat(32, VFIO_DEVICE_FEATURE_GET | 8, &report(0, u64::MAX, 1));
        assert_eq!(dec(&b, false).unwrap_err().errno(), Errno::TOOBIG);
    }
}
