//! Live migration and dirty logging over vfio-user: DEVICE_FEATURE,
//! MIG_DATA_READ/WRITE and the per-state command filter, first through the
//! sans-I/O session, then through the server driven by our client over
//! real sockets; the dirty bitmap is checked against a model (proptest).

mod common;

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use proptest::prelude::*;
use rustix::io::Errno;
use uvfio_core::{
    DeviceFlags, DeviceInfo, DeviceOps, Dma, DmaBacking, DmaPerm, GroupId, MigFlags, MigrationOps,
    OpenContext, RegionInfo, RegisteredDevice, Registry, SharedMemory,
};
use uvfio_user::proto::{
    self, Capabilities, Command, DecodeLimits, DeviceFeature, DmaLoggingControl, DmaLoggingRange,
    DmaLoggingReport, FeatureData, FeatureOp, MigState, MigrationCaps, Negotiated, Reply, Request,
    Version,
};
use uvfio_user::session::{
    AttachFn, Attachment, MessageDmaFactory, Output, Session, SessionConfig, SessionState,
};
use uvfio_user::transport::Message;
use uvfio_user::{Client, ClientError, Server, ServerConfig};

// ---------------------------------------------------------------------------
// A migratable device.

const MAGIC: &[u8; 4] = b"MIGD";
const BLOB: usize = 300;

/// One u32 register in BAR0 (4 bytes); migrates with STOP_COPY, PRE_COPY
/// and P2P. Stream: `MAGIC` (the pre-copy part), then the register and
/// [`BLOB`] bytes derived from it (so the stream spans several messages
/// when the transfer size is small). Resuming checks all of it.
#[derive(Default)]
struct MigDev {
    reg: Mutex<u32>,
    /// (stream, read position, complete).
    out: Mutex<(Vec<u8>, usize, bool)>,
    incoming: Mutex<Vec<u8>>,
    dma: Mutex<Option<Dma>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn blob(reg: u32) -> Vec<u8> {
    (0..BLOB).map(|i| (reg as usize + i * 7) as u8).collect()
}

fn final_part(reg: u32) -> Vec<u8> {
    let mut v = reg.to_le_bytes().to_vec();
    v.extend(blob(reg));
    v
}

impl MigDev {
    /// A DMA write by the device, as its engine would do it.
    fn dma_write(&self, iova: u64, data: &[u8]) -> uvfio_core::Result<()> {
        lock(&self.dma)
            .clone()
            .ok_or(Errno::NODEV)?
            .write(iova, data)
    }
}

impl MigrationOps for MigDev {
    fn flags(&self) -> MigFlags {
        MigFlags::all()
    }

    fn step(&self, from: uvfio_core::MigState, to: uvfio_core::MigState) -> uvfio_core::Result<()> {
        use uvfio_core::MigState as S;
        let reg = *lock(&self.reg);
        match (from, to) {
            (_, S::PreCopy | S::PreCopyP2p) if !from.is_saving() => {
                *lock(&self.out) = (MAGIC.to_vec(), 0, false);
            }
            (S::PreCopy | S::PreCopyP2p, S::StopCopy) => {
                let mut out = lock(&self.out);
                out.0.extend(final_part(reg));
                out.2 = true;
            }
            (S::Stop, S::StopCopy) => {
                let mut v = MAGIC.to_vec();
                v.extend(final_part(reg));
                *lock(&self.out) = (v, 0, true);
            }
            (S::Stop, S::Resuming) => lock(&self.incoming).clear(),
            (S::Resuming, S::Stop) => {
                let data = std::mem::take(&mut *lock(&self.incoming));
                if data.len() != 8 + BLOB || &data[..4] != MAGIC {
                    return Err(Errno::INVAL);
                }
                let v = u32::from_le_bytes(data[4..8].try_into().unwrap());
                if data[8..] != blob(v)[..] {
                    return Err(Errno::INVAL);
                }
                *lock(&self.reg) = v;
            }
            _ => {}
        }
        Ok(())
    }

    fn save(&self, buf: &mut [u8]) -> uvfio_core::Result<usize> {
        let mut out = lock(&self.out);
        let (data, pos, complete) = &mut *out;
        let n = buf.len().min(data.len() - *pos);
        if n == 0 && !buf.is_empty() && !*complete {
            return Err(Errno::NOMSG);
        }
        buf[..n].copy_from_slice(&data[*pos..*pos + n]);
        *pos += n;
        Ok(n)
    }

    fn load(&self, data: &[u8]) -> uvfio_core::Result<()> {
        let mut v = lock(&self.incoming);
        if v.len() + data.len() > 1 << 20 {
            return Err(Errno::FBIG);
        }
        v.extend_from_slice(data);
        Ok(())
    }
}

impl DeviceOps for MigDev {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: DeviceFlags::PCI | DeviceFlags::RESET,
            num_regions: 9,
            num_irqs: 5,
        }
    }
    fn open_device(&self, ctx: &OpenContext) -> uvfio_core::Result<()> {
        *lock(&self.dma) = Some(ctx.dma.clone());
        Ok(())
    }
    fn close_device(&self, _: uvfio_core::CloseReason) {
        *lock(&self.dma) = None;
    }
    fn region_info(&self, index: u32) -> uvfio_core::Result<RegionInfo> {
        Ok(if index == 0 {
            RegionInfo::rw(0, 4)
        } else {
            RegionInfo::absent(index)
        })
    }
    fn read(&self, _: u32, _: u64, buf: &mut [u8]) -> uvfio_core::Result<()> {
        let v = lock(&self.reg).to_le_bytes();
        buf.copy_from_slice(&v[..buf.len()]);
        Ok(())
    }
    fn write(&self, _: u32, _: u64, data: &[u8]) -> uvfio_core::Result<()> {
        let mut b = lock(&self.reg).to_le_bytes();
        b[..data.len()].copy_from_slice(data);
        *lock(&self.reg) = u32::from_le_bytes(b);
        Ok(())
    }
    fn reset(&self) -> uvfio_core::Result<()> {
        *lock(&self.reg) = 0;
        Ok(())
    }
    fn migration(&self) -> Option<&dyn MigrationOps> {
        Some(self)
    }
}

fn register_mig(reg: &Registry, name: &str, group: u32) -> RegisteredDevice<MigDev> {
    reg.init(MigDev::default(), name, GroupId(group))
        .unwrap()
        .register()
        .unwrap()
}

fn register_plain(reg: &Registry, name: &str, group: u32) -> RegisteredDevice<common::TestDevice> {
    reg.init(common::test_device(), name, GroupId(group))
        .unwrap()
        .register()
        .unwrap()
}

// ---------------------------------------------------------------------------
// The sans-I/O session.

struct NoDma;

impl MessageDmaFactory for NoDma {
    fn backing(&self, _: u64, size: u64, _: &Negotiated) -> Arc<dyn DmaBacking> {
        Arc::new(SharedMemory::new("t", size).unwrap())
    }
}

/// A session attached to `name` (group `group`), negotiated with `caps`.
struct Sess {
    s: Session,
    out: Output,
    id: u16,
    version_reply: Version,
}

fn client_caps() -> Capabilities {
    Capabilities {
        migration: Some(MigrationCaps {
            pgsize: Some(4096),
            max_bitmap_size: None,
        }),
        ..Capabilities::default()
    }
}

impl Sess {
    fn open(reg: &Registry, name: &str, group: u32) -> Sess {
        Sess::open_with(reg, name, group, client_caps())
    }

    fn open_with(reg: &Registry, name: &str, group: u32, caps: Capabilities) -> Sess {
        let reg = reg.clone();
        let name = name.to_owned();
        let attach: AttachFn = Box::new(move || {
            let (handle, group, container) = reg.open_device(GroupId(group), &name)?.into_parts();
            Ok(Attachment {
                handle,
                group,
                container,
            })
        });
        let mut s = Sess {
            s: Session::new(SessionConfig::default(), attach, NoDma),
            out: Output::default(),
            id: 0,
            version_reply: Version::ours(Capabilities::default()),
        };
        let body = s
            .call(&Request::Version(Version::ours(caps)), Vec::new())
            .expect("negotiated");
        match decode(&body) {
            Reply::Version(v) => s.version_reply = v,
            other => panic!("{other:?}"),
        }
        assert_eq!(s.s.state(), SessionState::Ready);
        s
    }

    /// Sends `req`; the reply bytes, or the errno of an error reply.
    fn call(&mut self, req: &Request<'_>, fds: Vec<OwnedFd>) -> Result<Vec<u8>, Errno> {
        self.id = self.id.wrapping_add(1);
        let mut bytes = Vec::new();
        req.encode(self.id, false, &mut bytes).unwrap();
        let mut m = Message::default();
        m.header.copy_from_slice(&bytes[..16]);
        m.body = bytes[16..].to_vec();
        m.fds = fds;
        self.out.clear();
        let _ = self.s.handle(&mut m, &mut self.out);
        let raw = proto::RawHeader::parse(self.out.bytes[..16].try_into().unwrap());
        assert_eq!(raw.msg_id, self.id);
        if raw.flags & proto::VFIO_USER_F_ERROR != 0 {
            return Err(Errno::from_raw_os_error(raw.error as i32));
        }
        Ok(self.out.bytes.clone())
    }

    fn feature(&mut self, f: DeviceFeature<'_>) -> Result<Vec<u8>, Errno> {
        self.call(&Request::DeviceFeature(f), Vec::new())
    }

    fn get(&mut self, feature: u16, argsz: u32) -> Result<Vec<u8>, Errno> {
        self.feature(DeviceFeature {
            argsz,
            feature,
            op: FeatureOp::Get,
            data: FeatureData::Empty,
        })
    }

    fn state(&mut self) -> MigState {
        let b = self
            .get(proto::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, 16)
            .unwrap();
        match feature_reply(&b).data {
            FeatureData::MigDeviceState {
                device_state,
                data_fd,
            } => {
                assert_eq!(data_fd, u32::MAX);
                device_state
            }
            other => panic!("{other:?}"),
        }
    }

    fn set_state(&mut self, s: MigState) -> Result<(), Errno> {
        let b = self.feature(DeviceFeature {
            argsz: 16,
            feature: proto::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            op: FeatureOp::Set,
            data: FeatureData::MigDeviceState {
                device_state: s,
                data_fd: u32::MAX,
            },
        })?;
        // The reply echoes the request.
        assert_eq!(
            feature_reply(&b).data,
            FeatureData::MigDeviceState {
                device_state: s,
                data_fd: u32::MAX
            }
        );
        Ok(())
    }

    fn read_data(&mut self, size: u32) -> Result<Vec<u8>, Errno> {
        let b = self.call(
            &Request::MigDataRead(proto::MigDataRead {
                argsz: 8 + size,
                size,
            }),
            Vec::new(),
        )?;
        match decode(&b) {
            Reply::MigDataRead(r) => Ok(r.data.to_vec()),
            other => panic!("{other:?}"),
        }
    }

    fn write_data(&mut self, data: &[u8]) -> Result<(), Errno> {
        self.call(
            &Request::MigDataWrite(proto::MigDataWrite::new(data)),
            Vec::new(),
        )
        .map(drop)
    }

    fn logging(
        &mut self,
        feature: u16,
        page_size: u64,
        ranges: &[(u64, u64)],
    ) -> Result<(), Errno> {
        let ranges: Vec<_> = ranges
            .iter()
            .map(|&(iova, length)| DmaLoggingRange { iova, length })
            .collect();
        self.feature(DeviceFeature {
            argsz: 24 + 16 * ranges.len() as u32,
            feature,
            op: FeatureOp::Set,
            data: FeatureData::DmaLogging(DmaLoggingControl { page_size, ranges }),
        })
        .map(drop)
    }

    fn start_logging(&mut self, page_size: u64, ranges: &[(u64, u64)]) -> Result<(), Errno> {
        self.logging(
            proto::VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
            page_size,
            ranges,
        )
    }

    fn report(&mut self, iova: u64, length: u64, page_size: u64) -> Result<Vec<u64>, Errno> {
        let want = DmaLoggingReport {
            iova,
            length,
            page_size,
            bitmap: &[],
        };
        let argsz = 32 + want.bitmap_len().unwrap() as u32;
        let b = self.feature(DeviceFeature {
            argsz,
            feature: proto::VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
            op: FeatureOp::Get,
            data: FeatureData::DmaLoggingReport(want),
        })?;
        let f = feature_reply(&b);
        assert_eq!(f.argsz, argsz, "GET reply argsz = 8 + data");
        match f.data {
            FeatureData::DmaLoggingReport(r) => {
                assert_eq!((r.iova, r.length, r.page_size), (iova, length, page_size));
                Ok(r.bitmap
                    .chunks_exact(8)
                    .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
                    .collect())
            }
            other => panic!("{other:?}"),
        }
    }

    fn map(&mut self, iova: u64, mem: &SharedMemory) -> Result<(), Errno> {
        let fd = mem.fd().try_clone_to_owned().unwrap();
        self.call(
            &Request::DmaMap(proto::DmaMap {
                argsz: proto::DmaMap::ARGSZ,
                flags: proto::VFIO_USER_F_DMA_REGION_READ | proto::VFIO_USER_F_DMA_REGION_WRITE,
                offset: 0,
                address: iova,
                size: mem.len(),
            }),
            vec![fd],
        )
        .map(drop)
    }

    fn device_info(&mut self) -> Result<(), Errno> {
        self.call(
            &Request::DeviceGetInfo(proto::DeviceInfoRequest { argsz: 16 }),
            Vec::new(),
        )
        .map(drop)
    }

    fn region_read(&mut self) -> Result<u32, Errno> {
        let b = self.call(
            &Request::RegionRead(proto::RegionAccess {
                offset: 0,
                region: 0,
                count: 4,
            }),
            Vec::new(),
        )?;
        match decode(&b) {
            Reply::RegionRead(r) => Ok(u32::from_le_bytes(r.data.try_into().unwrap())),
            other => panic!("{other:?}"),
        }
    }

    fn region_write(&mut self, v: u32) -> Result<(), Errno> {
        self.call(
            &Request::RegionWrite(proto::RegionWrite {
                offset: 0,
                region: 0,
                data: &v.to_le_bytes(),
            }),
            Vec::new(),
        )
        .map(drop)
    }

    fn reset(&mut self) -> Result<(), Errno> {
        self.call(&Request::DeviceReset, Vec::new()).map(drop)
    }
}

fn decode(bytes: &[u8]) -> Reply<'_> {
    match proto::decode_message(bytes, 0, &DecodeLimits::default()) {
        Ok((_, proto::Message::Reply(r))) => r,
        other => panic!("not a reply: {other:?}"),
    }
}

fn feature_reply(bytes: &[u8]) -> DeviceFeature<'_> {
    match decode(bytes) {
        Reply::DeviceFeature(f) => f,
        other => panic!("{other:?}"),
    }
}

fn probe(feature: u16, get: bool, set: bool) -> DeviceFeature<'static> {
    DeviceFeature {
        argsz: 8,
        feature,
        op: FeatureOp::Probe { get, set },
        data: FeatureData::Raw(&[]),
    }
}

#[test]
fn version_offers_migration_only_to_a_client_that_asks_for_a_migratable_device() {
    let reg = Registry::default();
    let _m = register_mig(&reg, "m0", 1);
    let _p = register_plain(&reg, "p0", 2);
    let s = Sess::open(&reg, "m0", 1);
    let caps = s.version_reply.capabilities.clone().unwrap();
    let pgsize = rustix::param::page_size() as u64;
    assert_eq!(caps.migration.unwrap().pgsize, Some(pgsize));
    assert_eq!(
        s.s.negotiated().unwrap().ours.migration.unwrap().pgsize,
        Some(pgsize)
    );
    drop(s);
    let s = Sess::open_with(&reg, "m0", 1, Capabilities::default());
    assert_eq!(
        s.version_reply.capabilities.as_ref().unwrap().migration,
        None
    );
    drop(s);
    let s = Sess::open(&reg, "p0", 2);
    assert_eq!(
        s.version_reply.capabilities.as_ref().unwrap().migration,
        None
    );
}

#[test]
fn feature_migration_reports_flags_without_p2p_and_probes_follow_check_feature() {
    let reg = Registry::default();
    let _m = register_mig(&reg, "m0", 1);
    let mut s = Sess::open(&reg, "m0", 1);
    let b = s.get(proto::VFIO_DEVICE_FEATURE_MIGRATION, 16).unwrap();
    let f = feature_reply(&b);
    assert_eq!(f.argsz, 16);
    assert_eq!(f.op, FeatureOp::Get);
    assert_eq!(
        f.data,
        FeatureData::Migration {
            flags: proto::VFIO_MIGRATION_STOP_COPY | proto::VFIO_MIGRATION_PRE_COPY
        }
    );
    // argsz must cover the reply data.
    assert_eq!(
        s.get(proto::VFIO_DEVICE_FEATURE_MIGRATION, 8),
        Err(Errno::INVAL)
    );
    // MIGRATION is GET-only: SET → EINVAL (the codec gives SET raw data).
    assert_eq!(
        s.feature(DeviceFeature {
            argsz: 16,
            feature: proto::VFIO_DEVICE_FEATURE_MIGRATION,
            op: FeatureOp::Set,
            data: FeatureData::Raw(&[0; 8]),
        }),
        Err(Errno::INVAL)
    );
    // PROBE: 0 if every listed op is supported, echoing the request.
    let b = s
        .feature(probe(proto::VFIO_DEVICE_FEATURE_MIGRATION, true, false))
        .unwrap();
    assert_eq!(
        feature_reply(&b),
        probe(proto::VFIO_DEVICE_FEATURE_MIGRATION, true, false)
    );
    assert!(s
        .feature(probe(proto::VFIO_DEVICE_FEATURE_MIGRATION, false, false))
        .is_ok());
    assert_eq!(
        s.feature(probe(proto::VFIO_DEVICE_FEATURE_MIGRATION, true, true)),
        Err(Errno::INVAL)
    );
    for f in [
        proto::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
        proto::VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
        proto::VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
        proto::VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
        9,
    ] {
        assert!(s.feature(probe(f, false, false)).is_ok(), "feature {f}");
    }
    assert!(s
        .feature(probe(
            proto::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            true,
            true
        ))
        .is_ok());
    assert_eq!(
        s.feature(probe(
            proto::VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
            true,
            false
        )),
        Err(Errno::INVAL)
    );
    assert_eq!(
        s.feature(probe(
            proto::VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
            false,
            true
        )),
        Err(Errno::INVAL)
    );
    // Unknown features: ENOTTY, probe or not.
    assert_eq!(s.feature(probe(0x55, false, false)), Err(Errno::NOTTY));
    assert_eq!(s.get(0x55, 64), Err(Errno::NOTTY));
    assert_eq!(s.get(0, 64), Err(Errno::NOTTY));
    // MIG_DATA_SIZE (9): the STOP_COPY size estimate.
    let b = s.get(9, 16).unwrap();
    assert_eq!(
        feature_reply(&b).data,
        FeatureData::Raw(&0u64.to_le_bytes())
    );
}

#[test]
fn migration_features_on_a_device_without_migration_are_enotty() {
    let reg = Registry::default();
    let _p = register_plain(&reg, "p0", 2);
    let mut s = Sess::open(&reg, "p0", 2);
    assert_eq!(
        s.get(proto::VFIO_DEVICE_FEATURE_MIGRATION, 16),
        Err(Errno::NOTTY)
    );
    assert_eq!(
        s.get(proto::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, 16),
        Err(Errno::NOTTY)
    );
    assert_eq!(
        s.feature(probe(proto::VFIO_DEVICE_FEATURE_MIGRATION, true, false)),
        Err(Errno::NOTTY)
    );
    assert_eq!(s.set_state(MigState::Stop), Err(Errno::NOTTY));
    assert_eq!(s.get(9, 16), Err(Errno::NOTTY));
    // The data commands are EINVAL, as libvfio-user's without migration.
    assert_eq!(s.read_data(16), Err(Errno::INVAL));
    assert_eq!(s.write_data(b"x"), Err(Errno::INVAL));
    // No state filter applies: everything else works.
    s.device_info().unwrap();
    // Dirty logging does not need migration: the container logs.
    s.start_logging(4096, &[]).unwrap();
}

#[test]
fn mig_device_state_walks_the_kernel_arcs_and_refuses_p2p_and_impossible_requests() {
    let reg = Registry::default();
    let _m = register_mig(&reg, "m0", 1);
    let mut s = Sess::open(&reg, "m0", 1);
    assert_eq!(s.state(), MigState::Running);
    // GET needs room for the data.
    assert_eq!(
        s.get(proto::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, 12),
        Err(Errno::INVAL)
    );
    s.set_state(MigState::Stop).unwrap();
    assert_eq!(s.state(), MigState::Stop);
    s.set_state(MigState::StopCopy).unwrap();
    // STOP_COPY → PRE_COPY is impossible: EINVAL, state unchanged.
    assert_eq!(s.set_state(MigState::PreCopy), Err(Errno::INVAL));
    assert_eq!(s.state(), MigState::StopCopy);
    // The P2P states are unused in vfio-user; ERROR can't be requested.
    for bad in [MigState::RunningP2p, MigState::PreCopyP2p, MigState::Error] {
        assert_eq!(s.set_state(bad), Err(Errno::INVAL), "{bad:?}");
    }
    // A combination: STOP_COPY → RUNNING goes through STOP.
    s.set_state(MigState::Running).unwrap();
    assert_eq!(s.state(), MigState::Running);
    s.set_state(MigState::PreCopy).unwrap();
    assert_eq!(s.state(), MigState::PreCopy);
    // PRE_COPY → STOP_COPY (internally through PRE_COPY_P2P).
    s.set_state(MigState::StopCopy).unwrap();
    assert_eq!(s.state(), MigState::StopCopy);
}

#[test]
fn mig_data_read_ends_short_and_write_resumes_on_another_device() {
    let reg = Registry::default();
    let src_dev = register_mig(&reg, "src", 1);
    let dst_dev = register_mig(&reg, "dst", 2);
    let mut src = Sess::open(&reg, "src", 1);
    let mut dst = Sess::open(&reg, "dst", 2);
    src.region_write(0xfeed_f00d).unwrap();
    // Not saving: EINVAL.
    assert_eq!(src.read_data(64), Err(Errno::INVAL));
    assert_eq!(dst.write_data(b"MIGD"), Err(Errno::INVAL));
    dst.set_state(MigState::Resuming).unwrap();
    src.set_state(MigState::PreCopy).unwrap();
    // argsz must cover 8 + size.
    assert_eq!(
        src.call(
            &Request::MigDataRead(proto::MigDataRead {
                argsz: 16,
                size: 64
            }),
            Vec::new()
        )
        .map(drop),
        Err(Errno::INVAL)
    );
    // PRE_COPY: the initial part, short = the end for now; then 0 bytes.
    let pre = src.read_data(1024).unwrap();
    assert_eq!(pre, MAGIC);
    assert_eq!(src.read_data(1024).unwrap(), b"");
    // Writing is RESUMING-only.
    assert_eq!(src.write_data(&pre), Err(Errno::INVAL));
    dst.write_data(&pre).unwrap();
    src.set_state(MigState::StopCopy).unwrap();
    // Reads fill the reply as far as the stream goes.
    let a = src.read_data(100).unwrap();
    assert_eq!(a.len(), 100);
    let b = src.read_data(1024).unwrap();
    assert_eq!(a.len() + b.len(), 4 + BLOB);
    assert_eq!(src.read_data(1024).unwrap(), b"");
    dst.write_data(&a).unwrap();
    dst.write_data(&b).unwrap();
    dst.set_state(MigState::Running).unwrap();
    assert_eq!(dst.region_read().unwrap(), 0xfeed_f00d);
    assert_eq!(*lock(&dst_dev.driver().reg), 0xfeed_f00d);
    src.set_state(MigState::Stop).unwrap();
    assert_eq!(*lock(&src_dev.driver().reg), 0xfeed_f00d);
}

#[test]
fn a_bad_stream_fails_resuming_into_error_and_reset_recovers() {
    let reg = Registry::default();
    let _m = register_mig(&reg, "m0", 1);
    let mut s = Sess::open(&reg, "m0", 1);
    s.set_state(MigState::Resuming).unwrap();
    s.write_data(b"not a MIGD stream").unwrap();
    assert_eq!(s.set_state(MigState::Running), Err(Errno::INVAL));
    assert_eq!(s.state(), MigState::Error);
    // ERROR is not a stopped state for the filter: reset goes through.
    s.device_info().unwrap();
    s.reset().unwrap();
    assert_eq!(s.state(), MigState::Running);
}

#[test]
fn stopped_states_accept_only_region_access_features_and_data_reads() {
    let reg = Registry::default();
    let _m = register_mig(&reg, "m0", 1);
    let mut s = Sess::open(&reg, "m0", 1);
    let mem = SharedMemory::new("filter", 0x4000).unwrap();
    for state in [MigState::Stop, MigState::StopCopy] {
        s.set_state(state).unwrap();
        assert_eq!(s.device_info(), Err(Errno::INVAL), "{state:?}");
        assert_eq!(s.map(0x10_0000, &mem), Err(Errno::INVAL), "{state:?}");
        assert_eq!(s.reset(), Err(Errno::INVAL), "{state:?}");
        assert_eq!(s.write_data(b"x"), Err(Errno::INVAL), "{state:?}");
        assert_eq!(
            s.call(
                &Request::DeviceGetIrqInfo(proto::IrqInfoRequest {
                    argsz: 16,
                    index: 0
                }),
                Vec::new()
            )
            .map(drop),
            Err(Errno::INVAL)
        );
        // Allowed: region access, DEVICE_FEATURE, MIG_DATA_READ.
        s.region_write(7).unwrap();
        assert_eq!(s.region_read().unwrap(), 7);
        assert_eq!(s.state(), state);
        let read = s.read_data(8);
        if state == MigState::StopCopy {
            assert_eq!(read.unwrap(), b"MIGD\x07\0\0\0");
        } else {
            assert_eq!(read, Err(Errno::INVAL), "not saving");
        }
    }
    // RESUMING is not filtered: a VMM maps memory before the device runs.
    s.set_state(MigState::Resuming).unwrap();
    s.device_info().unwrap();
    s.map(0x10_0000, &mem).unwrap();
    // Neither is PRE_COPY.
    s.set_state(MigState::Stop).unwrap_err(); // empty stream: ERROR
    s.reset().unwrap();
    s.set_state(MigState::PreCopy).unwrap();
    s.device_info().unwrap();
}

#[test]
fn dma_logging_start_stop_validate_and_report_the_pages_the_device_wrote() {
    let reg = Registry::default();
    let dev = register_mig(&reg, "m0", 1);
    let mut s = Sess::open(&reg, "m0", 1);
    let mem = SharedMemory::new("dirty", 0x10000).unwrap();
    s.map(0x10_0000, &mem).unwrap();
    // Not logging: REPORT is EINVAL.
    assert_eq!(s.report(0x10_0000, 0x10000, 4096), Err(Errno::INVAL));
    // Page sizes: a power of two ≥ 4096.
    assert_eq!(s.start_logging(1000, &[]), Err(Errno::INVAL));
    assert_eq!(s.start_logging(2048, &[]), Err(Errno::INVAL));
    // Ranges: page aligned, non-empty, not overlapping.
    assert_eq!(s.start_logging(4096, &[(0x100, 0x1000)]), Err(Errno::INVAL));
    assert_eq!(s.start_logging(4096, &[(0x1000, 0)]), Err(Errno::INVAL));
    assert_eq!(
        s.start_logging(4096, &[(0x1000, 0x2000), (0x2000, 0x1000)]),
        Err(Errno::INVAL)
    );
    assert_eq!(
        s.start_logging(4096, &[(u64::MAX - 0xfff, 0x2000)]),
        Err(Errno::OVERFLOW)
    );
    // START's argsz must cover the control header.
    assert_eq!(
        s.feature(DeviceFeature {
            argsz: 8,
            feature: proto::VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
            op: FeatureOp::Set,
            data: FeatureData::DmaLogging(DmaLoggingControl {
                page_size: 4096,
                ranges: Vec::new()
            }),
        })
        .map(drop),
        Err(Errno::INVAL)
    );
    s.start_logging(4096, &[(0x10_0000, 0x10000), (0x40_0000, 0x1000)])
        .unwrap();
    assert_eq!(s.start_logging(4096, &[]), Err(Errno::BUSY));
    // Nothing written yet.
    assert_eq!(s.report(0x10_0000, 0x10000, 4096).unwrap(), vec![0]);
    let d = dev.driver();
    d.dma_write(0x10_0000, b"page 0").unwrap();
    d.dma_write(0x10_2ffe, b"spans 2 and 3").unwrap();
    d.dma_write(0x10_f000, &[1; 0x1000]).unwrap();
    // A report at another page size, or unaligned: EINVAL.
    assert_eq!(s.report(0x10_0000, 0x10000, 8192), Err(Errno::INVAL));
    assert_eq!(s.report(0x10_0800, 0x1000, 4096), Err(Errno::INVAL));
    // A report of part of the range: bits relative to its iova; the other
    // pages stay dirty for a later report.
    assert_eq!(s.report(0x10_2000, 0x2000, 4096).unwrap(), vec![0b11]);
    assert_eq!(
        s.report(0x10_0000, 0x10000, 4096).unwrap(),
        vec![1 | 1 << 15]
    );
    // Reported pages are clean again; unmapped pages are zero.
    assert_eq!(s.report(0x0f_0000, 0x30000, 4096).unwrap(), vec![0]);
    // A length that is not a page multiple reports the last page whole.
    d.dma_write(0x10_4000, b"x").unwrap();
    assert_eq!(s.report(0x10_4000, 0x800, 4096).unwrap(), vec![1]);
    // STOP, twice (idempotent), then REPORT is EINVAL again.
    s.logging(proto::VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, 0, &[])
        .unwrap();
    s.feature(DeviceFeature {
        argsz: 8,
        feature: proto::VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
        op: FeatureOp::Set,
        data: FeatureData::Empty,
    })
    .unwrap();
    assert_eq!(s.report(0x10_0000, 0x10000, 4096), Err(Errno::INVAL));
    // And it can start again, at another page size.
    s.start_logging(0x4000, &[]).unwrap();
    d.dma_write(0x10_5000, b"x").unwrap();
    assert_eq!(s.report(0x10_0000, 0x10000, 0x4000).unwrap(), vec![0b10]);
}

// ---------------------------------------------------------------------------
// The dirty bitmap against a model, through DMA_LOGGING_REPORT.

#[derive(Debug, Clone)]
struct DirtyCase {
    /// log2 of the logging page size (12 or 14).
    shift: u32,
    /// (gap before, length) in pages, laid out one after the other.
    maps: Vec<(u64, u64)>,
    /// (mapping seed, page offset seed, byte offset, length) of device writes.
    writes: Vec<(usize, u64, u64, u64)>,
    /// (first page, pages) of the reports, in order.
    reports: Vec<(u64, u64)>,
}

fn dirty_case() -> impl Strategy<Value = DirtyCase> {
    (
        prop_oneof![Just(12u32), Just(14u32)],
        prop::collection::vec((0u64..4, 1u64..12), 1..4),
        prop::collection::vec((0usize..8, 0u64..64, 0u64..4096, 1u64..9000), 0..24),
        prop::collection::vec((0u64..48, 1u64..200), 1..4),
    )
        .prop_map(|(shift, maps, writes, reports)| DirtyCase {
            shift,
            maps,
            writes,
            reports,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn dirty_report_matches_a_model_of_device_writes(case in dirty_case()) {
        let reg = Registry::default();
        let dev = register_mig(&reg, "m0", 1);
        let mut s = Sess::open(&reg, "m0", 1);
        let pg = 1u64 << case.shift;
        let base = 0x100_0000u64;
        // Lay the mappings out.
        let mut at = base;
        let mut maps = Vec::new();
        let mut mems = Vec::new();
        for &(gap, len) in &case.maps {
            at += gap * pg;
            let mem = SharedMemory::new("model", len * pg).unwrap();
            s.map(at, &mem).unwrap();
            maps.push((at, len * pg));
            mems.push(mem);
            at += len * pg;
        }
        s.start_logging(pg, &[]).unwrap();
        // The model: dirty page numbers (absolute iova / pg).
        let mut dirty = BTreeSet::new();
        let d = dev.driver();
        for &(m, page, off, len) in &case.writes {
            let (iova, size) = maps[m % maps.len()];
            let start = (page * pg + off) % size;
            let len = len.min(size - start);
            d.dma_write(iova + start, &vec![0xa5; len as usize]).unwrap();
            for p in (iova + start) / pg..=(iova + start + len - 1) / pg {
                dirty.insert(p);
            }
        }
        for &(first, pages) in &case.reports {
            let iova = base + first * pg;
            let bitmap = s.report(iova, pages * pg, pg).unwrap();
            prop_assert_eq!(bitmap.len() as u64, pages.div_ceil(64));
            for i in 0..pages {
                let page = iova / pg + i;
                let bit = bitmap[(i / 64) as usize] >> (i % 64) & 1 == 1;
                prop_assert_eq!(bit, dirty.remove(&page), "page {} of report at {:#x}", i, iova);
            }
            // No bits past the range.
            if pages % 64 != 0 {
                let last = bitmap[bitmap.len() - 1];
                prop_assert_eq!(last >> (pages % 64), 0);
            }
        }
        // Whatever was not reported yet is still dirty, and only that.
        let total = at - base;
        let bitmap = s.report(base, total, pg).unwrap();
        let got: BTreeSet<u64> = (0..total / pg)
            .filter(|i| bitmap[(i / 64) as usize] >> (i % 64) & 1 == 1)
            .map(|i| base / pg + i)
            .collect();
        prop_assert_eq!(got, dirty);
    }
}

// ---------------------------------------------------------------------------
// Over sockets, with our client.

struct Fixture {
    registry: Registry,
    server: Server,
    _dir: tempfile::TempDir,
}

fn fixture(session: SessionConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::default();
    let server = Server::new(
        registry.clone(),
        ServerConfig::new(dir.path()).session(session),
    )
    .unwrap();
    Fixture {
        registry,
        server,
        _dir: dir,
    }
}

fn connect(f: &Fixture, name: &str) -> Client {
    Client::connect(f.server.socket_path(name).expect("served")).unwrap()
}

fn server_errno(e: ClientError) -> (Command, Errno) {
    match e {
        ClientError::Server { command, errno } => (command, errno),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// What a VMM does, through the client API: the destination resumes, the
/// source pre-copies until its temporary end, then stops and copies.
fn migrate(src: &Client, dst: &Client, chunk: usize) -> (usize, usize) {
    let flags = src.migration_flags().unwrap();
    assert!(flags.contains(MigFlags::STOP_COPY));
    dst.set_mig_state(MigState::Resuming).unwrap();
    let mut pre = 0;
    if flags.contains(MigFlags::PRE_COPY) {
        src.set_mig_state(MigState::PreCopy).unwrap();
        loop {
            let data = src.mig_read(chunk).unwrap();
            dst.mig_write(&data).unwrap();
            pre += data.len();
            if data.len() < chunk {
                break;
            }
        }
    }
    src.set_mig_state(MigState::StopCopy).unwrap();
    let mut fin = 0;
    loop {
        let data = src.mig_read(chunk).unwrap();
        dst.mig_write(&data).unwrap();
        fin += data.len();
        if data.len() < chunk {
            break;
        }
    }
    dst.set_mig_state(MigState::Running).unwrap();
    src.set_mig_state(MigState::Stop).unwrap();
    (pre, fin)
}

#[test]
fn client_migrates_a_device_between_connections_with_pre_copy() {
    let f = fixture(SessionConfig::default());
    let src_dev = register_mig(&f.registry, "src", 1);
    let dst_dev = register_mig(&f.registry, "dst", 2);
    let src = connect(&f, "src");
    let dst = connect(&f, "dst");
    assert_eq!(
        src.negotiated().theirs.migration.and_then(|m| m.pgsize),
        Some(rustix::param::page_size() as u64)
    );
    src.device_feature_probe(proto::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, true, true)
        .unwrap();
    assert_eq!(
        src.migration_flags().unwrap(),
        MigFlags::STOP_COPY | MigFlags::PRE_COPY
    );
    src.region_write(0, 0, &0x1234_5678u32.to_le_bytes())
        .unwrap();
    assert_eq!(src.stop_copy_size().unwrap(), 0);
    let (pre, fin) = migrate(&src, &dst, 4096);
    assert_eq!((pre, fin), (4, 4 + BLOB));
    let mut v = [0u8; 4];
    dst.region_read(0, 0, &mut v).unwrap();
    assert_eq!(u32::from_le_bytes(v), 0x1234_5678);
    assert_eq!(dst.mig_state().unwrap(), MigState::Running);
    assert_eq!(src.mig_state().unwrap(), MigState::Stop);
    // Stopped: only region access, features and data reads.
    let (cmd, errno) = server_errno(src.device_info().unwrap_err());
    assert_eq!((cmd, errno), (Command::DeviceGetInfo, Errno::INVAL));
    src.region_read(0, 0, &mut v).unwrap();
    assert_eq!(*lock(&src_dev.driver().reg), *lock(&dst_dev.driver().reg));
}

#[test]
fn client_splits_data_and_reports_to_a_small_transfer_size() {
    // 64-byte transfers: the stream takes several reads and writes, and a
    // report of 2048 pages takes four messages of 8 words.
    let f = fixture(SessionConfig::default().max_data_xfer_size(64));
    let _s = register_mig(&f.registry, "src", 1);
    let _d = register_mig(&f.registry, "dst", 2);
    let src = connect(&f, "src");
    let dst = connect(&f, "dst");
    src.region_write(0, 0, &0xabcdu32.to_le_bytes()).unwrap();
    // mig_read of more than one message: the client loops.
    let (pre, fin) = migrate(&src, &dst, 1000);
    assert_eq!((pre, fin), (4, 4 + BLOB));
    let mut v = [0u8; 4];
    dst.region_read(0, 0, &mut v).unwrap();
    assert_eq!(u32::from_le_bytes(v), 0xabcd);

    let (f2, dev) = {
        let f2 = fixture(SessionConfig::default().max_data_xfer_size(64));
        let dev = register_mig(&f2.registry, "m", 3);
        (f2, dev)
    };
    let c = connect(&f2, "m");
    let mem = SharedMemory::new("big", 2048 * 4096).unwrap();
    c.dma_map_shared(0, &mem, DmaPerm::READ | DmaPerm::WRITE)
        .unwrap();
    assert_eq!(c.start_dirty_logging(4096, &[]).unwrap(), 4096);
    let pages = [0u64, 1, 63, 64, 511, 512, 1000, 1535, 1536, 2047];
    for p in pages {
        dev.driver().dma_write(p * 4096 + 8, b"dirty").unwrap();
    }
    let words = c.report_dirty(0, 2048 * 4096, 4096).unwrap();
    assert_eq!(words.len(), 32);
    let got: Vec<u64> = (0..2048u64)
        .filter(|i| words[(i / 64) as usize] >> (i % 64) & 1 == 1)
        .collect();
    assert_eq!(got, pages);
    assert!(c
        .report_dirty(0, 2048 * 4096, 4096)
        .unwrap()
        .iter()
        .all(|&w| w == 0));
    c.stop_dirty_logging().unwrap();
    let (cmd, errno) = server_errno(c.report_dirty(0, 4096, 4096).unwrap_err());
    assert_eq!((cmd, errno), (Command::DeviceFeature, Errno::INVAL));
}

#[test]
fn client_errors_carry_the_command_and_errno() {
    let f = fixture(SessionConfig::default());
    let _p = register_plain(&f.registry, "p", 1);
    let _m = register_mig(&f.registry, "m", 2);
    let c = connect(&f, "p");
    assert_eq!(c.negotiated().theirs.migration, None);
    let (cmd, errno) = server_errno(c.migration_flags().unwrap_err());
    assert_eq!((cmd, errno), (Command::DeviceFeature, Errno::NOTTY));
    assert_eq!(c.migration_flags().unwrap_err().errno(), Errno::NOTTY);
    let (cmd, errno) = server_errno(c.mig_read(16).unwrap_err());
    assert_eq!((cmd, errno), (Command::MigDataRead, Errno::INVAL));
    let (cmd, errno) = server_errno(c.mig_write(b"x").unwrap_err());
    assert_eq!((cmd, errno), (Command::MigDataWrite, Errno::INVAL));
    let (_, errno) = server_errno(c.device_feature_probe(0x55, false, false).unwrap_err());
    assert_eq!(errno, Errno::NOTTY);
    let m = connect(&f, "m");
    let (_, errno) = server_errno(m.set_mig_state(MigState::RunningP2p).unwrap_err());
    assert_eq!(errno, Errno::INVAL);
    let (_, errno) = server_errno(m.start_dirty_logging(4095, &[]).unwrap_err());
    assert_eq!(errno, Errno::INVAL);
    // The connection is still fine.
    assert_eq!(m.mig_state().unwrap(), MigState::Running);
}

#[test]
fn rust_vmm_client_accepts_the_migration_capability() {
    // rust-vmm's client proposes `migration` and parses the reply's.
    let f = fixture(SessionConfig::default());
    let _m = register_mig(&f.registry, "m", 1);
    let path = f.server.socket_path("m").unwrap();
    let mut c = vfio_user::Client::new(&path).unwrap();
    let mut v = [0u8; 4];
    c.region_write(0, 0, &0x55aa_u32.to_le_bytes()).unwrap();
    c.region_read(0, 0, &mut v).unwrap();
    assert_eq!(u32::from_le_bytes(v), 0x55aa);
}
