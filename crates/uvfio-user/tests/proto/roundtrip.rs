//! `decode(encode(m)) == m` for every request and reply variant.
//!
//! Strategies build owned models ([`OwnedReq`], [`OwnedReply`]) because the
//! codec's messages borrow their data; `with_request`/`with_reply` lend a
//! borrowed view to the property.

use proptest::collection::vec;
use proptest::prelude::*;
use uvfio_user::proto::*;

pub const MAX_DATA: usize = 64;

// ---------- owned models ----------

#[derive(Debug, Clone)]
pub enum OwnedFeatureData {
    Empty,
    Migration(u64),
    MigState(MigState, u32),
    Logging(DmaLoggingControl),
    Report(u64, u64, u64, Vec<u8>),
    Raw(Vec<u8>),
}

impl OwnedFeatureData {
    fn view(&self) -> FeatureData<'_> {
        match self {
            OwnedFeatureData::Empty => FeatureData::Empty,
            OwnedFeatureData::Migration(flags) => FeatureData::Migration { flags: *flags },
            OwnedFeatureData::MigState(s, fd) => FeatureData::MigDeviceState {
                device_state: *s,
                data_fd: *fd,
            },
            OwnedFeatureData::Logging(c) => FeatureData::DmaLogging(c.clone()),
            OwnedFeatureData::Report(iova, length, page_size, bitmap) => {
                FeatureData::DmaLoggingReport(DmaLoggingReport {
                    iova: *iova,
                    length: *length,
                    page_size: *page_size,
                    bitmap,
                })
            }
            OwnedFeatureData::Raw(b) => FeatureData::Raw(b),
        }
    }
}

#[derive(Debug, Clone)]
pub struct OwnedFeature {
    argsz: u32,
    feature: u16,
    op: FeatureOp,
    data: OwnedFeatureData,
}

impl OwnedFeature {
    fn view(&self) -> DeviceFeature<'_> {
        DeviceFeature {
            argsz: self.argsz,
            feature: self.feature,
            op: self.op,
            data: self.data.view(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum OwnedReq {
    /// Variants without borrowed data.
    Plain(Request<'static>, usize),
    SetIrqsBool(u32, u32, IrqAction, Vec<u8>),
    RegionWrite(u64, u32, Vec<u8>),
    DmaWrite(u64, Vec<u8>),
    WriteMulti(Vec<(u64, u32, Vec<u8>)>),
    Feature(OwnedFeature),
    MigDataWrite(u32, Vec<u8>),
}

/// Lend `f` the borrowed request and the number of fds it travels with.
pub fn with_request<R>(o: &OwnedReq, f: impl FnOnce(&Request<'_>, usize) -> R) -> R {
    match o {
        OwnedReq::Plain(r, nfds) => f(r, *nfds),
        OwnedReq::SetIrqsBool(index, start, action, data) => f(
            &Request::DeviceSetIrqs(SetIrqs {
                index: *index,
                start: *start,
                count: u32::try_from(data.len()).unwrap(),
                action: *action,
                data: IrqData::Bool(data),
            }),
            0,
        ),
        OwnedReq::RegionWrite(offset, region, data) => f(
            &Request::RegionWrite(RegionWrite {
                offset: *offset,
                region: *region,
                data,
            }),
            0,
        ),
        OwnedReq::DmaWrite(address, data) => f(
            &Request::DmaWrite(DmaWrite {
                address: *address,
                data,
            }),
            0,
        ),
        OwnedReq::WriteMulti(entries) => {
            let view: Vec<WriteMultiEntry<'_>> = entries
                .iter()
                .map(|(offset, region, data)| WriteMultiEntry {
                    offset: *offset,
                    region: *region,
                    data,
                })
                .collect();
            f(
                &Request::RegionWriteMulti(RegionWriteMulti::new(&view).unwrap()),
                0,
            )
        }
        OwnedReq::Feature(feat) => f(&Request::DeviceFeature(feat.view()), 0),
        OwnedReq::MigDataWrite(argsz, data) => f(
            &Request::MigDataWrite(MigDataWrite {
                argsz: *argsz,
                data,
            }),
            0,
        ),
    }
}

#[derive(Debug, Clone)]
pub enum OwnedReply {
    Plain(Reply<'static>, usize),
    DmaUnmap(DmaUnmap, Vec<u8>),
    RegionRead(u64, u32, Vec<u8>),
    DmaRead(u64, Vec<u8>),
    Feature(OwnedFeature),
    MigDataRead(Vec<u8>),
}

pub fn with_reply<R>(o: &OwnedReply, f: impl FnOnce(&Reply<'_>, usize) -> R) -> R {
    match o {
        OwnedReply::Plain(r, nfds) => f(r, *nfds),
        OwnedReply::DmaUnmap(unmap, bitmap) => f(
            &Reply::DmaUnmap(DmaUnmapReply {
                unmap: *unmap,
                bitmap,
            }),
            0,
        ),
        OwnedReply::RegionRead(offset, region, data) => f(
            &Reply::RegionRead(RegionReadReply {
                offset: *offset,
                region: *region,
                data,
            }),
            0,
        ),
        OwnedReply::DmaRead(address, data) => f(
            &Reply::DmaRead(DmaReadReply {
                address: *address,
                data,
            }),
            0,
        ),
        OwnedReply::Feature(feat) => f(&Reply::DeviceFeature(feat.view()), 0),
        OwnedReply::MigDataRead(data) => f(&Reply::MigDataRead(MigDataReadReply { data }), 0),
    }
}

// ---------- strategies ----------

fn data() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..MAX_DATA)
}

/// `(start, len)` whose end does not wrap.
fn range() -> impl Strategy<Value = (u64, u64)> {
    (any::<u64>(), any::<u64>()).prop_map(|(a, l)| {
        (
            a,
            if a == 0 {
                l
            } else {
                l % (u64::MAX - a + 1).max(1)
            },
        )
    })
}

fn capabilities() -> impl Strategy<Value = Capabilities> {
    (
        0u32..=1024,
        1u32..,
        any::<u32>(),
        1u64..,
        proptest::option::of((
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
        )),
        proptest::option::of((any::<bool>(), proptest::option::of(any::<u32>()))),
        any::<bool>(),
    )
        .prop_map(|(fds, xfer, maps, pgsizes, mig, twin, wm)| Capabilities {
            max_msg_fds: fds,
            max_data_xfer_size: xfer,
            max_dma_maps: maps,
            pgsizes,
            migration: mig.map(|(pgsize, max_bitmap_size)| MigrationCaps {
                pgsize,
                max_bitmap_size,
            }),
            twin_socket: twin.map(|(supported, fd_index)| TwinSocket {
                supported,
                fd_index,
            }),
            write_multiple: wm,
        })
}

fn version() -> impl Strategy<Value = Version> {
    (
        any::<u16>(),
        any::<u16>(),
        proptest::option::of(capabilities()),
    )
        .prop_map(|(major, minor, capabilities)| Version {
            major,
            minor,
            capabilities,
        })
}

fn dma_unmap() -> impl Strategy<Value = DmaUnmap> {
    prop_oneof![
        (24u32.., range()).prop_map(|(argsz, (address, size))| DmaUnmap {
            argsz,
            flags: 0,
            address,
            size,
            dirty_bitmap: None,
        }),
        (24u32..).prop_map(|argsz| DmaUnmap {
            argsz,
            flags: VFIO_DMA_UNMAP_FLAG_ALL,
            address: 0,
            size: 0,
            dirty_bitmap: None,
        }),
        (range(), any::<u64>(), 0u64..(MAX_DATA as u64), 0u32..1000).prop_map(
            |((address, size), pgsize, bsize, extra)| DmaUnmap {
                argsz: 40 + u32::try_from(bsize).unwrap() + extra,
                flags: VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
                address,
                size,
                dirty_bitmap: Some(DirtyBitmap {
                    pgsize,
                    size: bsize
                }),
            }
        ),
    ]
}

fn action() -> impl Strategy<Value = IrqAction> {
    prop_oneof![
        Just(IrqAction::Mask),
        Just(IrqAction::Unmask),
        Just(IrqAction::Trigger)
    ]
}

fn mig_state() -> impl Strategy<Value = MigState> {
    (0u32..8).prop_map(|v| MigState::from_raw(v).unwrap())
}

fn logging_control() -> impl Strategy<Value = DmaLoggingControl> {
    (any::<u64>(), vec(range(), 0..5)).prop_map(|(page_size, ranges)| DmaLoggingControl {
        page_size,
        ranges: ranges
            .into_iter()
            .map(|(iova, length)| DmaLoggingRange { iova, length })
            .collect(),
    })
}

/// A report whose bitmap is small: length ≤ 64 pages * 8.
fn report(with_bitmap: bool) -> impl Strategy<Value = OwnedFeatureData> {
    (0u32..20, 0u64..(1 << 40), 0u64..=512).prop_flat_map(move |(shift, iova, pages)| {
        let page_size = 1u64 << shift;
        let length = pages * page_size;
        let len = usize::try_from(pages.div_ceil(64) * 8).unwrap();
        let bitmap = if with_bitmap {
            vec(any::<u8>(), len..=len).boxed()
        } else {
            Just(Vec::new()).boxed()
        };
        bitmap.prop_map(move |b| OwnedFeatureData::Report(iova, length, page_size, b))
    })
}

fn probe() -> impl Strategy<Value = FeatureOp> {
    (any::<bool>(), any::<bool>()).prop_map(|(get, set)| FeatureOp::Probe { get, set })
}

fn raw_feature() -> impl Strategy<Value = u16> {
    prop_oneof![Just(3u16), Just(4), Just(5), 9u16..]
}

fn feature(is_reply: bool) -> impl Strategy<Value = OwnedFeature> {
    let mk = |argsz: u32, feature: u16, op: FeatureOp, data: OwnedFeatureData| OwnedFeature {
        argsz,
        feature,
        op,
        data,
    };
    let migration_get = if is_reply {
        (8u32.., any::<u64>())
            .prop_map(move |(a, f)| {
                mk(
                    a,
                    VFIO_DEVICE_FEATURE_MIGRATION,
                    FeatureOp::Get,
                    OwnedFeatureData::Migration(
                        (f & VFIO_MIGRATION_KNOWN_FLAGS) | VFIO_MIGRATION_STOP_COPY,
                    ),
                )
            })
            .boxed()
    } else {
        (8u32..)
            .prop_map(move |a| {
                mk(
                    a,
                    VFIO_DEVICE_FEATURE_MIGRATION,
                    FeatureOp::Get,
                    OwnedFeatureData::Empty,
                )
            })
            .boxed()
    };
    let state_get = if is_reply {
        (8u32.., mig_state(), any::<u32>())
            .prop_map(move |(a, s, fd)| {
                mk(
                    a,
                    VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
                    FeatureOp::Get,
                    OwnedFeatureData::MigState(s, fd),
                )
            })
            .boxed()
    } else {
        (8u32..)
            .prop_map(move |a| {
                mk(
                    a,
                    VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
                    FeatureOp::Get,
                    OwnedFeatureData::Empty,
                )
            })
            .boxed()
    };
    prop_oneof![
        migration_get,
        state_get,
        (8u32.., mig_state(), any::<u32>()).prop_map(move |(a, s, fd)| mk(
            a,
            VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            FeatureOp::Set,
            OwnedFeatureData::MigState(s, fd)
        )),
        (8u32.., logging_control()).prop_map(move |(a, c)| mk(
            a,
            VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
            FeatureOp::Set,
            OwnedFeatureData::Logging(c)
        )),
        (8u32.., proptest::option::of(logging_control())).prop_map(move |(a, c)| mk(
            a,
            VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
            FeatureOp::Set,
            c.map_or(OwnedFeatureData::Empty, OwnedFeatureData::Logging)
        )),
        (8u32.., report(is_reply)).prop_map(move |(a, r)| mk(
            a,
            VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
            FeatureOp::Get,
            r
        )),
        (8u32.., any::<u16>(), probe(), data()).prop_map(move |(a, feat, op, d)| mk(
            a,
            feat,
            op,
            OwnedFeatureData::Raw(d)
        )),
        (
            8u32..,
            raw_feature(),
            prop_oneof![Just(FeatureOp::Get), Just(FeatureOp::Set)],
            data()
        )
            .prop_map(move |(a, feat, op, d)| mk(a, feat, op, OwnedFeatureData::Raw(d))),
        (8u32.., prop_oneof![Just(FeatureOp::Set)], data()).prop_map(move |(a, op, d)| mk(
            a,
            VFIO_DEVICE_FEATURE_MIGRATION,
            op,
            OwnedFeatureData::Raw(d)
        )),
    ]
}

fn xfer() -> impl Strategy<Value = u32> {
    0u32..=DEFAULT_MAX_DATA_XFER_SIZE
}

pub fn request() -> impl Strategy<Value = OwnedReq> {
    prop_oneof![
        version().prop_map(|v| OwnedReq::Plain(Request::Version(v), 0)),
        (32u32.., 0u32..16, range(), any::<u64>(), 0usize..=1).prop_map(
            |(argsz, flags, (address, size), off, nfds)| {
                let offset = if nfds == 0 || size == 0 {
                    0
                } else {
                    off % (u64::MAX - size + 1).max(1)
                };
                OwnedReq::Plain(
                    Request::DmaMap(DmaMap {
                        argsz,
                        flags,
                        offset,
                        address,
                        size,
                    }),
                    nfds,
                )
            }
        ),
        dma_unmap().prop_map(|m| OwnedReq::Plain(Request::DmaUnmap(m), 0)),
        (16u32..).prop_map(|argsz| OwnedReq::Plain(
            Request::DeviceGetInfo(DeviceInfoRequest { argsz }),
            0
        )),
        (32u32.., any::<u32>()).prop_map(|(argsz, index)| OwnedReq::Plain(
            Request::DeviceGetRegionInfo(RegionInfoRequest { argsz, index }),
            0
        )),
        (16u32.., any::<u32>()).prop_map(|(argsz, index)| OwnedReq::Plain(
            Request::DeviceGetRegionIoFds(RegionIoFdsRequest { argsz, index }),
            0
        )),
        (16u32.., any::<u32>()).prop_map(|(argsz, index)| OwnedReq::Plain(
            Request::DeviceGetIrqInfo(IrqInfoRequest { argsz, index }),
            0
        )),
        (
            any::<u32>(),
            0u32..1000,
            1u32..100,
            action(),
            prop_oneof![Just(false), Just(true)],
            any::<bool>()
        )
            .prop_map(|(index, start, count, action, eventfd, with_fds)| {
                let (data, nfds) = if eventfd {
                    (
                        IrqData::Eventfd,
                        if with_fds {
                            usize::try_from(count).unwrap().min(16)
                        } else {
                            0
                        },
                    )
                } else {
                    (IrqData::None, 0)
                };
                // Keep the fd count within DecodeLimits::default().
                let count = if eventfd && with_fds {
                    u32::try_from(nfds).unwrap()
                } else {
                    count
                };
                OwnedReq::Plain(
                    Request::DeviceSetIrqs(SetIrqs {
                        index,
                        start,
                        count,
                        action,
                        data,
                    }),
                    nfds,
                )
            }),
        any::<u32>().prop_map(|index| OwnedReq::Plain(
            Request::DeviceSetIrqs(SetIrqs {
                index,
                start: 0,
                count: 0,
                action: IrqAction::Trigger,
                data: IrqData::None,
            }),
            0
        )),
        (
            any::<u32>(),
            0u32..1000,
            action(),
            vec(any::<u8>(), 1..MAX_DATA)
        )
            .prop_map(|(index, start, action, d)| OwnedReq::SetIrqsBool(index, start, action, d)),
        (0u64..(1 << 62), any::<u32>(), xfer()).prop_map(
            |(offset, region, count)| OwnedReq::Plain(
                Request::RegionRead(RegionAccess {
                    offset,
                    region,
                    count
                }),
                0
            )
        ),
        (0u64..(1 << 62), any::<u32>(), data())
            .prop_map(|(o, r, d)| OwnedReq::RegionWrite(o, r, d)),
        (0u64..(1 << 62), xfer()).prop_map(|(address, count)| OwnedReq::Plain(
            Request::DmaRead(DmaAccess {
                address,
                count: u64::from(count)
            }),
            0
        )),
        (0u64..(1 << 62), data()).prop_map(|(a, d)| OwnedReq::DmaWrite(a, d)),
        Just(OwnedReq::Plain(Request::DeviceReset, 0)),
        vec(
            (0u64..(1 << 62), any::<u32>(), vec(any::<u8>(), 0..=8)),
            0..10
        )
        .prop_map(OwnedReq::WriteMulti),
        feature(false).prop_map(OwnedReq::Feature),
        (8u32.., xfer()).prop_map(|(argsz, size)| OwnedReq::Plain(
            Request::MigDataRead(MigDataRead { argsz, size }),
            0
        )),
        (8u32.., data()).prop_map(|(a, d)| OwnedReq::MigDataWrite(a, d)),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    proptest::sample::select(Command::ALL.to_vec())
}

fn region_caps(size: u64) -> impl Strategy<Value = Vec<RegionCap>> {
    let area = (0..=size, 0..=size).prop_map(|(a, b)| {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        SparseMmapArea {
            offset: lo,
            size: hi - lo,
        }
    });
    (
        proptest::option::of(vec(area, 0..6)),
        proptest::option::of((any::<u32>(), any::<u32>())),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(sparse, ty, msix, reverse)| {
            let mut caps = Vec::new();
            if let Some(a) = sparse {
                caps.push(RegionCap::SparseMmap(a));
            }
            if let Some((type_, subtype)) = ty {
                caps.push(RegionCap::Type { type_, subtype });
            }
            if msix {
                caps.push(RegionCap::MsixMappable);
            }
            if reverse {
                caps.reverse();
            }
            caps
        })
}

fn region_info_reply() -> impl Strategy<Value = (RegionInfoReply, usize)> {
    (
        0u64..(1 << 40),
        0u32..8,
        any::<u32>(),
        any::<u64>(),
        any::<u32>(),
        any::<bool>(),
    )
        .prop_flat_map(|(size, flags, index, offset, requested, fd)| {
            region_caps(size).prop_map(move |caps| {
                let info = RegionInfo {
                    flags,
                    index,
                    size,
                    offset,
                    caps,
                };
                let reply = info.reply_for(requested % 512).unwrap();
                let nfds = usize::from(fd && flags & VFIO_REGION_INFO_FLAG_MMAP != 0);
                (reply, nfds)
            })
        })
}

fn io_fds_reply() -> impl Strategy<Value = RegionIoFdsReply> {
    let entry = (
        range(),
        0u32..4,
        0u32..2,
        0u32..16,
        any::<u64>(),
        0u32..4,
        any::<u64>(),
    );
    (vec(entry, 0..5), any::<bool>(), any::<u32>(), any::<u32>()).prop_map(
        |(entries, lvu, index, requested)| {
            let entries = entries
                .into_iter()
                .map(
                    |((offset, size), fd_index, type_, flags, datamatch, shadow_fd, shadow_off)| {
                        IoFdEntry {
                            offset,
                            size,
                            fd_index,
                            type_: if lvu && shadow_fd == 3 {
                                VFIO_USER_IO_FD_TYPE_IOEVENTFD_SHADOW
                            } else {
                                type_
                            },
                            flags,
                            datamatch,
                            shadow: lvu.then_some(IoFdShadow {
                                mem_fd_index: shadow_fd,
                                offset: shadow_off,
                            }),
                        }
                    },
                )
                .collect();
            RegionIoFdsReply::for_request(requested % 300, index, entries).unwrap()
        },
    )
}

pub fn reply() -> impl Strategy<Value = OwnedReply> {
    prop_oneof![
        (command(), any::<u32>()).prop_map(|(command, errno)| OwnedReply::Plain(
            Reply::Error(ErrorReply { command, errno }),
            0
        )),
        version().prop_map(|v| OwnedReply::Plain(Reply::Version(v), 0)),
        Just(OwnedReply::Plain(Reply::DmaMap, 0)),
        (dma_unmap(), any::<u8>()).prop_map(|(u, fill)| {
            let len = u
                .dirty_bitmap
                .map_or(0, |b| usize::try_from(b.size).unwrap());
            OwnedReply::DmaUnmap(u, vec![fill; len])
        }),
        (16u32.., 0u32..4, 9u32..100, 0u32..100).prop_map(|(argsz, flags, regions, irqs)| {
            let irqs = if flags & VFIO_DEVICE_FLAGS_PCI != 0 {
                VFIO_PCI_NUM_IRQS
            } else {
                irqs
            };
            OwnedReply::Plain(
                Reply::DeviceGetInfo(DeviceInfo {
                    argsz,
                    flags,
                    num_regions: regions,
                    num_irqs: irqs,
                }),
                0,
            )
        }),
        region_info_reply()
            .prop_map(|(r, nfds)| OwnedReply::Plain(Reply::DeviceGetRegionInfo(r), nfds)),
        io_fds_reply().prop_map(|r| {
            let nfds = r.fds_needed();
            OwnedReply::Plain(Reply::DeviceGetRegionIoFds(r), nfds)
        }),
        (16u32.., 0u32..16, any::<u32>(), any::<u32>()).prop_map(|(argsz, flags, index, count)| {
            OwnedReply::Plain(
                Reply::DeviceGetIrqInfo(IrqInfo {
                    argsz,
                    flags,
                    index,
                    count,
                }),
                0,
            )
        }),
        Just(OwnedReply::Plain(Reply::DeviceSetIrqs, 0)),
        (0u64..(1 << 62), any::<u32>(), data())
            .prop_map(|(o, r, d)| OwnedReply::RegionRead(o, r, d)),
        (0u64..(1 << 62), any::<u32>(), xfer()).prop_map(|(offset, region, count)| {
            OwnedReply::Plain(
                Reply::RegionWrite(RegionAccess {
                    offset,
                    region,
                    count,
                }),
                0,
            )
        }),
        (0u64..(1 << 62), data()).prop_map(|(a, d)| OwnedReply::DmaRead(a, d)),
        (0u64..(1 << 62), xfer()).prop_map(|(address, count)| OwnedReply::Plain(
            Reply::DmaWrite(DmaAccess {
                address,
                count: u64::from(count)
            }),
            0
        )),
        Just(OwnedReply::Plain(Reply::DeviceReset, 0)),
        any::<u64>().prop_map(|wr_cnt| OwnedReply::Plain(
            Reply::RegionWriteMulti(RegionWriteMultiReply { wr_cnt }),
            0
        )),
        feature(true).prop_map(OwnedReply::Feature),
        data().prop_map(OwnedReply::MigDataRead),
        Just(OwnedReply::Plain(Reply::MigDataWrite, 0)),
    ]
}

// ---------- properties ----------

fn split(bytes: &[u8]) -> (Header, &[u8]) {
    let hdr = Header::decode(
        bytes[..HEADER_SIZE].try_into().unwrap(),
        &DecodeLimits::default(),
    )
    .unwrap();
    assert_eq!(usize::try_from(hdr.msg_size).unwrap(), bytes.len());
    (hdr, &bytes[HEADER_SIZE..])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn request_round_trips(o in request(), msg_id in any::<u16>(), no_reply in any::<bool>()) {
        with_request(&o, |req, nfds| {
            let mut out = Vec::new();
            req.encode(msg_id, no_reply, &mut out).unwrap();
            let (hdr, body) = split(&out);
            prop_assert_eq!(hdr.msg_id, msg_id);
            prop_assert_eq!(hdr.no_reply, no_reply);
            prop_assert_eq!(hdr.command, req.command().raw());
            let back = decode_request(&hdr, body, nfds, &DecodeLimits::default()).unwrap();
            prop_assert_eq!(&back, req);
            Ok(())
        })?;
    }

    #[test]
    fn reply_round_trips(o in reply(), msg_id in any::<u16>()) {
        with_reply(&o, |rep, nfds| {
            let mut out = Vec::new();
            rep.encode(msg_id, &mut out).unwrap();
            let (hdr, body) = split(&out);
            prop_assert_eq!(hdr.msg_id, msg_id);
            prop_assert_eq!(hdr.command, rep.command().raw());
            let back = decode_reply(&hdr, body, nfds, &DecodeLimits::default()).unwrap();
            prop_assert_eq!(&back, rep);
            Ok(())
        })?;
    }

    #[test]
    fn region_caps_round_trip(caps in region_caps(1 << 30)) {
        let info = RegionInfo { flags: 0, index: 0, size: 1 << 30, offset: 0, caps: caps.clone() };
        let reply = info.reply_for(u32::MAX).unwrap();
        let mut out = Vec::new();
        Reply::DeviceGetRegionInfo(reply).encode(0, &mut out).unwrap();
        let body = &out[HEADER_SIZE..];
        let decoded = if caps.is_empty() {
            Vec::new()
        } else {
            decode_region_caps(body, 32, &DecodeLimits::default()).unwrap()
        };
        prop_assert_eq!(decoded, caps);
    }
}
