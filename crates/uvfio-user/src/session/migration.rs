//! Live migration over vfio-user, server side: DEVICE_FEATURE (16),
//! MIG_DATA_READ (17), MIG_DATA_WRITE (18), the per-state command filter
//! and the `migration` capability in VERSION.
//!
//! Everything is forwarded to the core ([`DeviceHandle`]'s migration v2
//! API, the connection's own [`uvfio_core::Container`] for dirty logging),
//! which already answers with the kernel's errnos; this module adds the
//! protocol rules on top:
//!
//! - **DEVICE_FEATURE** follows `vfio_check_feature`: an operation the
//!   feature lacks is `EINVAL`; PROBE succeeds (echoing the request) if
//!   every listed operation is supported; otherwise `argsz` must cover the
//!   header and the feature's fixed data (`EINVAL`). A feature we do not
//!   know is `ENOTTY`, as are MIGRATION, MIG_DEVICE_STATE and MIG_DATA_SIZE
//!   on a device without migration. SET and PROBE replies echo the
//!   request; GET replies carry the data with `argsz` = 8 + its size.
//! - **States**: vfio-user does not use the P2P states (spec §3), so the
//!   MIGRATION flags are the device's minus P2P, and requesting
//!   RUNNING_P2P or PRE_COPY_P2P is `EINVAL`. A device that supports P2P
//!   still walks through it internally (the core's paths), unseen.
//! - **Dirty logging** (DMA_LOGGING_START/STOP/REPORT) works on every
//!   device: the connection's container logs every device DMA write.
//!   START takes a power-of-two page size ≥ 4096 and validates the ranges
//!   (page-aligned, non-empty, not overlapping; none = everything), but
//!   logging covers every mapping, a superset as the kernel permits; a
//!   second START is `EBUSY`; STOP is idempotent. REPORT needs logging on,
//!   the logging page size and a page-aligned `iova`; it returns and clears
//!   one bit per page, zero where nothing is mapped.
//! - **MIG_DATA_READ** (PRE_COPY, STOP_COPY) fills the reply as far as the
//!   stream goes: fewer bytes than requested mean the end of the stream,
//!   for now in PRE_COPY (the device's `ENOMSG`, so possibly 0 bytes) and
//!   for good in STOP_COPY. `argsz` must cover 8 + `size`.
//!   **MIG_DATA_WRITE** appends to the stream in RESUMING; the data is
//!   validated on RESUMING → STOP (a bad stream fails that SET and leaves
//!   the device in ERROR).
//! - **Command filter**: in STOP and STOP_COPY only REGION_READ/WRITE
//!   (REGION_WRITE_MULTI being a batch of them), DEVICE_FEATURE and
//!   MIG_DATA_READ are accepted, others get `EINVAL` (libvfio-user's
//!   `should_exec_command`). Checked only for the other commands, so the
//!   region fast path never takes the migration lock.

use rustix::io::Errno;
use uvfio_core::{DeviceHandle, MigFlags};

use super::{reply, Attachment, Output};
use crate::proto::{
    self, Command, DeviceFeature, DmaLoggingControl, DmaLoggingReport, FeatureData, FeatureOp,
    Header, MigDataRead, MigDataReadReply, MigDataWrite, MigState, MigrationCaps, Negotiated,
    Reply, Version,
};

/// Feature 9, `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE` (GET): the bytes
/// STOP_COPY is expected to produce, as a `u64`. Not in the vfio-user
/// table, but the kernel's core handles it and so do we.
pub(crate) const VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: u16 = 9;

/// The migration flags vfio-user reports (no P2P).
const VFIO_USER_MIG_FLAGS: MigFlags = MigFlags::STOP_COPY.union(MigFlags::PRE_COPY);

/// The smallest dirty-logging page size (the host page, as libvfio-user).
const MIN_LOG_PAGE: u64 = 4096;

/// Header (argsz + flags) of DEVICE_FEATURE.
const FEATURE_HDR: u32 = 8;

/// The protocol's state from the core's (same numbers).
pub(crate) fn to_proto(s: uvfio_core::MigState) -> MigState {
    match s {
        uvfio_core::MigState::Error => MigState::Error,
        uvfio_core::MigState::Stop => MigState::Stop,
        uvfio_core::MigState::Running => MigState::Running,
        uvfio_core::MigState::StopCopy => MigState::StopCopy,
        uvfio_core::MigState::Resuming => MigState::Resuming,
        uvfio_core::MigState::RunningP2p => MigState::RunningP2p,
        uvfio_core::MigState::PreCopy => MigState::PreCopy,
        uvfio_core::MigState::PreCopyP2p => MigState::PreCopyP2p,
    }
}

/// The core's state from the protocol's (same numbers).
pub(crate) fn to_core(s: MigState) -> uvfio_core::MigState {
    match s {
        MigState::Error => uvfio_core::MigState::Error,
        MigState::Stop => uvfio_core::MigState::Stop,
        MigState::Running => uvfio_core::MigState::Running,
        MigState::StopCopy => uvfio_core::MigState::StopCopy,
        MigState::Resuming => uvfio_core::MigState::Resuming,
        MigState::RunningP2p => uvfio_core::MigState::RunningP2p,
        MigState::PreCopy => uvfio_core::MigState::PreCopy,
        MigState::PreCopyP2p => uvfio_core::MigState::PreCopyP2p,
    }
}

/// VERSION: offer the legacy `migration` object (`pgsize` = host page, as
/// libvfio-user does) when the client proposed one and the device
/// migrates. Real clients (QEMU, rust-vmm) propose it and look for it.
pub(super) fn advertise(att: &Attachment, reply: &mut Version, negotiated: &mut Negotiated) {
    if negotiated.theirs.migration.is_none() || att.handle.migration_flags().is_err() {
        return;
    }
    let caps = MigrationCaps {
        pgsize: Some(rustix::param::page_size() as u64),
        max_bitmap_size: None,
    };
    if let Some(c) = reply.capabilities.as_mut() {
        c.migration = Some(caps);
    }
    negotiated.ours.migration = Some(caps);
}

/// The per-state command filter (see the module docs).
pub(super) fn check_command(h: &DeviceHandle, command: Command) -> Result<(), Errno> {
    if matches!(
        command,
        Command::RegionRead
            | Command::RegionWrite
            | Command::RegionWriteMulti
            | Command::DeviceFeature
            | Command::MigDataRead
    ) {
        return Ok(());
    }
    match h.mig_state() {
        Ok(uvfio_core::MigState::Stop | uvfio_core::MigState::StopCopy) => {
            tracing::debug!(?command, "refused while the device is stopped");
            Err(Errno::INVAL)
        }
        _ => Ok(()),
    }
}

/// The device's migration flags, ENOTTY without migration.
fn flags(h: &DeviceHandle) -> Result<MigFlags, Errno> {
    h.migration_flags()
}

/// DEVICE_FEATURE.
pub(super) fn device_feature(
    att: &Attachment,
    f: &DeviceFeature<'_>,
    header: &Header,
    out: &mut Output,
) -> Result<(), Errno> {
    let h = &att.handle;
    // (GET supported, SET supported, minimal argsz).
    let (can_get, can_set, minsz) = match f.feature {
        proto::VFIO_DEVICE_FEATURE_MIGRATION => {
            flags(h)?;
            (true, false, FEATURE_HDR + 8)
        }
        proto::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE => {
            flags(h)?;
            (true, true, FEATURE_HDR + 8)
        }
        VFIO_DEVICE_FEATURE_MIG_DATA_SIZE => {
            flags(h)?;
            (true, false, FEATURE_HDR + 8)
        }
        proto::VFIO_DEVICE_FEATURE_DMA_LOGGING_START => (false, true, FEATURE_HDR + 16),
        proto::VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP => (false, true, FEATURE_HDR),
        proto::VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT => (true, false, FEATURE_HDR + 24),
        _ => return Err(Errno::NOTTY),
    };
    let (get, set) = match f.op {
        FeatureOp::Get => (true, false),
        FeatureOp::Set => (false, true),
        FeatureOp::Probe { get, set } => (get, set),
    };
    if (get && !can_get) || (set && !can_set) {
        return Err(Errno::INVAL);
    }
    if matches!(f.op, FeatureOp::Probe { .. }) {
        reply(out, header, &Reply::DeviceFeature(f.clone()));
        return Ok(());
    }
    if f.argsz < minsz {
        return Err(Errno::INVAL);
    }
    fn get_reply(feature: u16, data: FeatureData<'_>, len: usize) -> Reply<'_> {
        Reply::DeviceFeature(DeviceFeature {
            argsz: u32::try_from(len).unwrap_or(u32::MAX).saturating_add(8),
            feature,
            op: FeatureOp::Get,
            data,
        })
    }
    let get_reply = |data, len| get_reply(f.feature, data, len);
    match (f.feature, &f.data) {
        (proto::VFIO_DEVICE_FEATURE_MIGRATION, _) => {
            let flags = (flags(h)? & VFIO_USER_MIG_FLAGS).bits();
            reply(out, header, &get_reply(FeatureData::Migration { flags }, 8));
        }
        (proto::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, _) if get => {
            let device_state = to_proto(h.mig_state()?);
            let data = FeatureData::MigDeviceState {
                device_state,
                data_fd: u32::MAX,
            };
            reply(out, header, &get_reply(data, 8));
        }
        (
            proto::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            FeatureData::MigDeviceState { device_state, .. },
        ) => {
            if matches!(
                device_state,
                MigState::RunningP2p | MigState::PreCopyP2p | MigState::Error
            ) {
                return Err(Errno::INVAL);
            }
            h.set_mig_state(to_core(*device_state))?;
            reply(out, header, &Reply::DeviceFeature(f.clone()));
        }
        (VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, _) => {
            let size = h.stop_copy_size()?.to_le_bytes();
            reply(out, header, &get_reply(FeatureData::Raw(&size), 8));
        }
        (proto::VFIO_DEVICE_FEATURE_DMA_LOGGING_START, FeatureData::DmaLogging(c)) => {
            check_ranges(c)?;
            att.container.start_dirty_logging(c.page_size)?;
            reply(out, header, &Reply::DeviceFeature(f.clone()));
        }
        (proto::VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, _) => {
            if att.container.dma_space().dirty_page_size().is_some() {
                att.container.stop_dirty_logging()?;
            }
            reply(out, header, &Reply::DeviceFeature(f.clone()));
        }
        (proto::VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, FeatureData::DmaLoggingReport(r)) => {
            let bitmap = report(att, r)?;
            let rep = DmaLoggingReport {
                bitmap: &bitmap,
                ..*r
            };
            let len = 24usize.saturating_add(bitmap.len());
            reply(
                out,
                header,
                &get_reply(FeatureData::DmaLoggingReport(rep), len),
            );
        }
        // The codec gives every (feature, op) above its typed data.
        _ => return Err(Errno::INVAL),
    }
    Ok(())
}

/// DMA_LOGGING_START's page size and ranges.
fn check_ranges(c: &DmaLoggingControl) -> Result<(), Errno> {
    let p = c.page_size;
    if !p.is_power_of_two() || p < MIN_LOG_PAGE {
        return Err(Errno::INVAL);
    }
    let mut spans = Vec::with_capacity(c.ranges.len());
    for r in &c.ranges {
        if r.length == 0 || !r.iova.is_multiple_of(p) || !r.length.is_multiple_of(p) {
            return Err(Errno::INVAL);
        }
        let last = r.iova.checked_add(r.length - 1).ok_or(Errno::OVERFLOW)?;
        spans.push((r.iova, last));
    }
    spans.sort_unstable();
    if spans.windows(2).any(|w| w[1].0 <= w[0].1) {
        return Err(Errno::INVAL);
    }
    Ok(())
}

/// DMA_LOGGING_REPORT: the bitmap bytes (read and cleared).
fn report(att: &Attachment, r: &DmaLoggingReport<'_>) -> Result<Vec<u8>, Errno> {
    let logging = att
        .container
        .dma_space()
        .dirty_page_size()
        .ok_or(Errno::INVAL)?;
    let p = r.page_size;
    if p != logging || r.length == 0 || !r.iova.is_multiple_of(p) {
        return Err(Errno::INVAL);
    }
    let len = usize::try_from(r.bitmap_len().ok_or(Errno::INVAL)?).map_err(|_| Errno::INVAL)?;
    // The last page may be partial: report it whole.
    let span = r.length.div_ceil(p).checked_mul(p).ok_or(Errno::OVERFLOW)?;
    let words = att.container.report_dirty(r.iova, span, p)?;
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    bytes.resize(len, 0);
    Ok(bytes)
}

/// MIG_DATA_READ.
pub(super) fn mig_data_read(
    h: &DeviceHandle,
    r: &MigDataRead,
    header: &Header,
    out: &mut Output,
) -> Result<(), Errno> {
    if u64::from(r.argsz) < 8 + u64::from(r.size) {
        return Err(Errno::INVAL);
    }
    // No migration, or not saving: EINVAL (as libvfio-user).
    if !h.mig_state().is_ok_and(|s| s.is_saving()) {
        return Err(Errno::INVAL);
    }
    let mut buf = vec![0u8; usize::try_from(r.size).map_err(|_| Errno::INVAL)?];
    let mut n = 0;
    // Fill as far as the stream goes: a short reply means its end.
    while n < buf.len() {
        match h.mig_read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            // PRE_COPY: no more data for now.
            Err(e) if e == Errno::NOMSG => break,
            Err(e) if n == 0 => return Err(e),
            Err(e) => {
                // Hand over what was read; the next read reports the error.
                tracing::debug!("mig_data_read stopped after {n} bytes: {e}");
                break;
            }
        }
    }
    reply(
        out,
        header,
        &Reply::MigDataRead(MigDataReadReply { data: &buf[..n] }),
    );
    Ok(())
}

/// MIG_DATA_WRITE (RESUMING only).
pub(super) fn mig_data_write(
    h: &DeviceHandle,
    w: &MigDataWrite<'_>,
    header: &Header,
    out: &mut Output,
) -> Result<(), Errno> {
    if h.mig_state() != Ok(uvfio_core::MigState::Resuming) {
        return Err(Errno::INVAL);
    }
    h.mig_write(w.data)?;
    reply(out, header, &Reply::MigDataWrite);
    Ok(())
}
