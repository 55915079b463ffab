//! The server side of one connection, sans-I/O: a message and its fds go
//! in, the reply bytes and fds to send come out.
//!
//! States, named for what they await:
//! - [`ExpectVersion`](SessionState::ExpectVersion): the only acceptable
//!   message is VERSION. Anything else, a malformed proposal or a failure
//!   to attach to the device (`EBUSY` while another client holds it,
//!   `ENODEV` once it is being removed) gets an error reply and closes the
//!   connection.
//! - [`Ready`](SessionState::Ready): the connection holds its own
//!   [`Container`], the device's [`Group`] and a [`DeviceHandle`]; every
//!   command is checked by [`crate::proto`] (layout, sizes, fds, negotiated
//!   limits) and by the core (indexes, bounds, DMA rules), then executed.
//!   A bad command gets an error reply carrying the errno and the session
//!   goes on; fds that came with it are closed.
//! - Closed: after a fatal error; everything is released by dropping the
//!   session (handle → `close_device`, group, container → every mapping
//!   unmapped; eventfds are cleared by the core on the last close).
//!
//! What needs I/O is injected: attaching to the device is a closure (the
//! server opens the group there), and a DMA_MAP without an fd gets its
//! backing from a [`MessageDmaFactory`] (the server's sends DMA_READ and
//! DMA_WRITE over the connection). No socket, clock or thread here.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::io::Errno;
use uvfio_core::{Container, DeviceFlags, DeviceHandle, DmaBacking, DmaPerm, Group, RegionFlags};

use crate::proto::{
    self, Capabilities, DecodeLimits, Header, Negotiated, RawHeader, Reply, Request, Version,
};
use crate::transport::{FrameLimits, Message};

pub(crate) mod migration;

mod budget;
pub use budget::{DEFAULT_MAX_DMA_BYTES, DEFAULT_MAX_HELD_FDS};

/// The limits a server advertises (what it can receive).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionConfig {
    /// Largest data transfer accepted in one message (1 MiB).
    pub max_data_xfer_size: u32,
    /// Most fds accepted with one message (16).
    pub max_msg_fds: u32,
    /// Most DMA mappings at once (65535).
    pub max_dma_maps: u32,
    /// DMA page sizes (4 KiB).
    pub pgsizes: u64,
    /// Most bytes one client may have DMA-mapped at once, with or without
    /// fds ([`DEFAULT_MAX_DMA_BYTES`]); past it DMA_MAP is `ENOSPC`.
    pub max_dma_bytes: u64,
    /// Most fds one client may make the server hold: eventfds bound to
    /// interrupts plus fd-backed DMA mappings ([`DEFAULT_MAX_HELD_FDS`]);
    /// past it SET_IRQS or DMA_MAP is `ENOSPC`.
    pub max_held_fds: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_data_xfer_size: proto::DEFAULT_MAX_DATA_XFER_SIZE,
            max_msg_fds: proto::DEFAULT_MAX_MSG_FDS,
            max_dma_maps: proto::DEFAULT_CAP_MAX_DMA_MAPS,
            pgsizes: proto::DEFAULT_CAP_PGSIZES,
            max_dma_bytes: DEFAULT_MAX_DMA_BYTES,
            max_held_fds: DEFAULT_MAX_HELD_FDS,
        }
    }
}

impl SessionConfig {
    /// Sets [`SessionConfig::max_data_xfer_size`].
    #[must_use]
    pub fn max_data_xfer_size(mut self, n: u32) -> Self {
        self.max_data_xfer_size = n;
        self
    }

    /// Sets [`SessionConfig::max_dma_maps`].
    #[must_use]
    pub fn max_dma_maps(mut self, n: u32) -> Self {
        self.max_dma_maps = n;
        self
    }

    /// The capabilities sent in the VERSION reply.
    #[must_use]
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_msg_fds: self.max_msg_fds,
            max_data_xfer_size: self.max_data_xfer_size,
            max_dma_maps: self.max_dma_maps,
            pgsizes: self.pgsizes,
            migration: None,
            twin_socket: None,
            write_multiple: true,
        }
    }
}

/// What a connection holds while attached. Field order is drop order:
/// the handle first (the last one calls `close_device`), then the group,
/// then the container (its mappings go).
#[derive(Debug)]
pub struct Attachment {
    /// The open device.
    pub handle: DeviceHandle,
    /// The device's group, attached to `container`.
    pub group: Group,
    /// This connection's DMA space.
    pub container: Container,
}

/// Attaches the connection to its device (called once, on VERSION).
pub type AttachFn = Box<dyn FnOnce() -> Result<Attachment, Errno> + Send>;

/// Makes the backing of a DMA_MAP that came without an fd: accesses become
/// DMA_READ/DMA_WRITE messages to the client.
pub trait MessageDmaFactory: Send {
    /// A backing for `size` bytes at `iova`; `negotiated` gives the
    /// transfer limits of both sides.
    fn backing(&self, iova: u64, size: u64, negotiated: &Negotiated) -> Arc<dyn DmaBacking>;
}

/// What the connection should do after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Step {
    /// Send the output (if any) and read the next message.
    Continue,
    /// Send the output (if any), then close the connection.
    Close,
}

/// Bytes and fds to send for one message (reused across messages).
#[derive(Debug, Default)]
pub struct Output {
    /// Whole messages to send.
    pub bytes: Vec<u8>,
    /// Fds to attach to them.
    pub fds: Vec<Arc<OwnedFd>>,
}

impl Output {
    /// Empties the buffers, keeping their capacity.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.fds.clear();
    }
}

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Awaiting VERSION.
    ExpectVersion,
    /// Negotiated and attached.
    Ready,
    /// Closed after a fatal error.
    Closed,
}

struct Ready {
    negotiated: Negotiated,
    limits: DecodeLimits,
    att: Attachment,
    budget: budget::Budget,
}

enum State {
    ExpectVersion(Option<AttachFn>),
    Ready(Box<Ready>),
    Closed,
}

/// One connection's protocol state, see the module docs.
pub struct Session {
    config: SessionConfig,
    state: State,
    dma: Box<dyn MessageDmaFactory>,
    new_limits: Option<FrameLimits>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("state", &self.state())
            .finish()
    }
}

/// The error reply for `header`, unless it asked for no reply.
fn fail(out: &mut Output, header: &Header, errno: Errno) {
    out.fds.clear();
    if !header.no_reply {
        proto::encode_error_reply(header.msg_id, header.command, errno, &mut out.bytes);
    }
}

fn reply(out: &mut Output, header: &Header, r: &Reply<'_>) {
    if header.no_reply {
        out.fds.clear();
        return;
    }
    if let Err(e) = r.encode(header.msg_id, &mut out.bytes) {
        tracing::error!(command = header.command, "cannot encode reply: {e}");
        fail(out, header, Errno::OVERFLOW);
    }
}

fn perm_of(flags: u32) -> DmaPerm {
    let mut p = DmaPerm::empty();
    if flags & proto::VFIO_USER_F_DMA_REGION_READ != 0 {
        p |= DmaPerm::READ;
    }
    if flags & proto::VFIO_USER_F_DMA_REGION_WRITE != 0 {
        p |= DmaPerm::WRITE;
    }
    p
}

fn region_caps(caps: &[uvfio_core::RegionCap]) -> Vec<proto::RegionCap> {
    caps.iter()
        .filter_map(|c| match c {
            uvfio_core::RegionCap::SparseMmap(areas) => Some(proto::RegionCap::SparseMmap(
                areas
                    .iter()
                    .map(|a| proto::SparseMmapArea {
                        offset: a.offset,
                        size: a.size,
                    })
                    .collect(),
            )),
            uvfio_core::RegionCap::Type { r#type, subtype } => Some(proto::RegionCap::Type {
                type_: *r#type,
                subtype: *subtype,
            }),
            uvfio_core::RegionCap::MsixMappable => Some(proto::RegionCap::MsixMappable),
            _ => None,
        })
        .collect()
}

impl Session {
    /// A session that attaches with `attach` once VERSION is negotiated.
    pub fn new(
        config: SessionConfig,
        attach: AttachFn,
        dma: impl MessageDmaFactory + 'static,
    ) -> Session {
        Session {
            config,
            state: State::ExpectVersion(Some(attach)),
            dma: Box::new(dma),
            new_limits: None,
        }
    }

    /// Ends the connection's hold on its device, in the order dropping the
    /// session would (the device handle, whose last close runs
    /// `close_device`; the group; the container with every mapping), and
    /// says whether the driver's `close_device` panicked: dropping cannot
    /// report that, and the server marks the device faulted for it.
    pub fn close(mut self) -> bool {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Ready(ready) => {
                let Attachment {
                    handle,
                    group,
                    container,
                } = ready.att;
                let panicked = handle.close().is_err();
                drop(group);
                drop(container);
                panicked
            }
            _ => false,
        }
    }

    /// Where the session is.
    #[must_use]
    pub fn state(&self) -> SessionState {
        match self.state {
            State::ExpectVersion(_) => SessionState::ExpectVersion,
            State::Ready(_) => SessionState::Ready,
            State::Closed => SessionState::Closed,
        }
    }

    /// The outcome of negotiation, once ready.
    #[must_use]
    pub fn negotiated(&self) -> Option<&Negotiated> {
        match &self.state {
            State::Ready(r) => Some(&r.negotiated),
            _ => None,
        }
    }

    /// The attachment, once ready.
    #[must_use]
    pub fn attachment(&self) -> Option<&Attachment> {
        match &self.state {
            State::Ready(r) => Some(&r.att),
            _ => None,
        }
    }

    /// New read limits for the transport, once after negotiation.
    pub fn take_new_limits(&mut self) -> Option<FrameLimits> {
        self.new_limits.take()
    }

    fn limits(&self) -> DecodeLimits {
        match &self.state {
            State::Ready(r) => r.limits,
            _ => DecodeLimits {
                max_fds: usize::try_from(self.config.max_msg_fds).unwrap_or(usize::MAX),
                ..DecodeLimits::default()
            },
        }
    }

    /// Handles one message read off the connection (header, body, fds);
    /// appends what to send to `out`. The message's fds are consumed: kept
    /// when the command takes them, closed otherwise.
    pub fn handle(&mut self, msg: &mut Message, out: &mut Output) -> Step {
        let fds = std::mem::take(&mut msg.fds);
        let raw = RawHeader::parse(&msg.header);
        let limits = self.limits();
        let header = match raw.validate(&limits) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(
                    msg_id = raw.msg_id,
                    command = raw.command,
                    "bad header: {e}"
                );
                if e.is_desync() {
                    self.state = State::Closed;
                    return Step::Close;
                }
                // Answer what we can: the header says nothing trustworthy
                // about NO_REPLY, so always answer.
                proto::encode_error_reply(raw.msg_id, raw.command, e.errno(), &mut out.bytes);
                return self.continue_unless_expecting_version();
            }
        };
        if header.msg_type == proto::MsgType::Reply {
            // Replies to our DMA requests are routed before they get here:
            // this one answers nothing.
            tracing::warn!(
                msg_id = header.msg_id,
                command = header.command,
                "unsolicited reply dropped"
            );
            return self.continue_unless_expecting_version();
        }
        if msg.fds_rejected {
            fail(out, &header, Errno::INVAL);
            return self.continue_unless_expecting_version();
        }
        let req = match proto::decode_request(&header, &msg.body, fds.len(), &limits) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(
                    msg_id = header.msg_id,
                    command = header.command,
                    "rejected: {e}"
                );
                fail(out, &header, e.errno());
                return self.continue_unless_expecting_version();
            }
        };
        match &mut self.state {
            State::Closed => Step::Close,
            State::ExpectVersion(attach) => {
                let attach = attach.take();
                let step = self.on_version(&header, &req, attach, out);
                if step == Step::Close {
                    self.state = State::Closed;
                }
                step
            }
            State::Ready(ready) => {
                if let Err(e) = ready.execute(&header, req, fds, out, &*self.dma) {
                    fail(out, &header, e);
                }
                Step::Continue
            }
        }
    }

    fn continue_unless_expecting_version(&mut self) -> Step {
        match self.state {
            State::Ready(_) => Step::Continue,
            _ => {
                self.state = State::Closed;
                Step::Close
            }
        }
    }

    fn on_version(
        &mut self,
        header: &Header,
        req: &Request<'_>,
        attach: Option<AttachFn>,
        out: &mut Output,
    ) -> Step {
        let Request::Version(proposal) = req else {
            tracing::debug!(command = header.command, "command before VERSION");
            fail(out, header, Errno::INVAL);
            return Step::Close;
        };
        let offer = Version::ours(self.config.capabilities());
        let (mut ver_reply, mut negotiated) = match proto::negotiate_server(&offer, proposal) {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!("negotiation failed: {e}");
                fail(out, header, e.errno());
                return Step::Close;
            }
        };
        let Some(attach) = attach else {
            fail(out, header, Errno::INVAL);
            return Step::Close;
        };
        let att = match attach() {
            Ok(a) => a,
            Err(e) => {
                tracing::info!("cannot attach: {e}");
                fail(out, header, e);
                return Step::Close;
            }
        };
        migration::advertise(&att, &mut ver_reply, &mut negotiated);
        let limits = negotiated.decode_limits();
        self.new_limits = Some(FrameLimits {
            max_msg_size: limits.max_msg_size,
            max_fds: limits.max_fds,
            ..FrameLimits::default()
        });
        reply(out, header, &Reply::Version(ver_reply));
        self.state = State::Ready(Box::new(Ready {
            negotiated,
            limits,
            att,
            budget: budget::Budget::new(&self.config),
        }));
        Step::Continue
    }
}

impl Ready {
    fn execute(
        &mut self,
        header: &Header,
        req: Request<'_>,
        mut fds: Vec<OwnedFd>,
        out: &mut Output,
        dma: &dyn MessageDmaFactory,
    ) -> Result<(), Errno> {
        let h = &self.att.handle;
        migration::check_command(h, req.command())?;
        match req {
            Request::Version(_) => return Err(Errno::INVAL),
            Request::DmaMap(m) => {
                let perm = perm_of(m.flags);
                if perm.is_empty() {
                    return Err(Errno::INVAL);
                }
                let with_fd = !fds.is_empty();
                self.budget.check_map(m.size, with_fd)?;
                let backing = match fds.pop() {
                    // map_user_fd insists on a memfd sealed against
                    // shrinking: a client cannot make us fault later.
                    Some(fd) => uvfio_core::dma::map_user_fd(fd.as_fd(), m.offset, m.size, perm)?,
                    None => dma.backing(m.address, m.size, &self.negotiated),
                };
                self.att
                    .container
                    .map_dma(m.address, m.size, perm, backing, 0)?;
                self.budget.note_map(m.address, m.size, with_fd);
                reply(out, header, &Reply::DmaMap);
            }
            Request::DmaUnmap(m) => {
                let bitmap = self.dma_unmap(&m)?;
                self.budget.note_unmap(&m);
                reply(
                    out,
                    header,
                    &Reply::DmaUnmap(proto::DmaUnmapReply {
                        unmap: m,
                        bitmap: &bitmap,
                    }),
                );
            }
            Request::DeviceGetInfo(_) => {
                let i = h.info();
                let flags = i.flags & (DeviceFlags::RESET | DeviceFlags::PCI);
                reply(
                    out,
                    header,
                    &Reply::DeviceGetInfo(proto::DeviceInfo::new(
                        flags.bits(),
                        i.num_regions,
                        i.num_irqs,
                    )),
                );
            }
            Request::DeviceGetRegionInfo(q) => {
                let r = h.region_info(q.index)?;
                let mut flags =
                    r.flags & (RegionFlags::READ | RegionFlags::WRITE | RegionFlags::MMAP);
                if r.mmap.is_none() {
                    flags.remove(RegionFlags::MMAP);
                }
                let info = proto::RegionInfo {
                    flags: flags.bits(),
                    index: q.index,
                    size: r.size,
                    offset: r.mmap.as_ref().map_or(0, |m| m.offset),
                    caps: region_caps(&r.caps),
                };
                let rep = info.reply_for(q.argsz).map_err(|_| Errno::OVERFLOW)?;
                // Never more fds than the client said it can take.
                let send_fd = rep.send_fd() && self.negotiated.max_send_fds() >= 1;
                reply(out, header, &Reply::DeviceGetRegionInfo(rep));
                if send_fd && !header.no_reply {
                    if let Some(m) = r.mmap {
                        out.fds.push(m.fd);
                    }
                }
            }
            Request::DeviceGetRegionIoFds(q) => {
                // Checks the index; no ioeventfds are offered.
                h.region_info(q.index)?;
                let rep = proto::RegionIoFdsReply::for_request(q.argsz, q.index, Vec::new())
                    .map_err(|_| Errno::OVERFLOW)?;
                reply(out, header, &Reply::DeviceGetRegionIoFds(rep));
            }
            Request::DeviceGetIrqInfo(q) => {
                let i = h.irq_info(q.index)?;
                reply(
                    out,
                    header,
                    &Reply::DeviceGetIrqInfo(proto::IrqInfo::new(q.index, i.flags.bits(), i.count)),
                );
            }
            Request::DeviceSetIrqs(s) => {
                // Bound the vectors by the device before sizing anything.
                let info = h.irq_info(s.index)?;
                let end = s.start.checked_add(s.count).ok_or(Errno::INVAL)?;
                if end > info.count {
                    return Err(Errno::INVAL);
                }
                let count = usize::try_from(s.count).map_err(|_| Errno::INVAL)?;
                let nfds = fds.len();
                self.budget.check_irqs(&s, &fds)?;
                let action = match s.action {
                    proto::IrqAction::Mask => uvfio_core::IrqAction::Mask,
                    proto::IrqAction::Unmask => uvfio_core::IrqAction::Unmask,
                    proto::IrqAction::Trigger => uvfio_core::IrqAction::Trigger,
                };
                let data = match s.data {
                    proto::IrqData::None => uvfio_core::IrqData::None,
                    proto::IrqData::Bool(b) => {
                        uvfio_core::IrqData::Bool(b.iter().map(|&x| x != 0).collect())
                    }
                    proto::IrqData::Eventfd if fds.is_empty() => {
                        uvfio_core::IrqData::Eventfd((0..count).map(|_| None).collect())
                    }
                    proto::IrqData::Eventfd => uvfio_core::IrqData::Eventfd(
                        std::mem::take(&mut fds).into_iter().map(Some).collect(),
                    ),
                };
                h.set_irqs(uvfio_core::SetIrqs {
                    index: s.index,
                    start: s.start,
                    count: s.count,
                    action,
                    data,
                })?;
                self.budget.note_irqs(&s, nfds);
                reply(out, header, &Reply::DeviceSetIrqs);
            }
            Request::RegionRead(a) => {
                if header.no_reply {
                    let mut scratch =
                        vec![0u8; usize::try_from(a.count).map_err(|_| Errno::INVAL)?];
                    return h.read(a.region, a.offset, &mut scratch);
                }
                let r = proto::encode_region_read_reply_with(
                    header.msg_id,
                    &a,
                    &mut out.bytes,
                    |buf| h.read(a.region, a.offset, buf),
                );
                match r {
                    Ok(()) => {}
                    Err(proto::FillError::Fill(e)) => return Err(e),
                    Err(proto::FillError::Encode(_)) => return Err(Errno::OVERFLOW),
                }
            }
            Request::RegionWrite(w) => {
                h.write(w.region, w.offset, w.data)?;
                reply(out, header, &Reply::RegionWrite(w.ack()));
            }
            Request::DeviceReset => {
                h.reset()?;
                reply(out, header, &Reply::DeviceReset);
            }
            Request::RegionWriteMulti(m) => {
                let mut done = 0u64;
                for e in m.iter() {
                    if let Err(err) = h.write(e.region, e.offset, e.data) {
                        if done == 0 {
                            return Err(err);
                        }
                        tracing::debug!("region_write_multi stopped after {done} writes: {err}");
                        break;
                    }
                    done = done.saturating_add(1);
                }
                reply(
                    out,
                    header,
                    &Reply::RegionWriteMulti(proto::RegionWriteMultiReply { wr_cnt: done }),
                );
            }
            // Sent by the server only.
            Request::DmaRead(_) | Request::DmaWrite(_) => return Err(Errno::INVAL),
            Request::DeviceFeature(f) => migration::device_feature(&self.att, &f, header, out)?,
            Request::MigDataRead(r) => migration::mig_data_read(h, &r, header, out)?,
            Request::MigDataWrite(w) => migration::mig_data_write(h, &w, header, out)?,
        }
        Ok(())
    }

    /// DMA_UNMAP: everything, or exactly one earlier mapping (ENOENT
    /// otherwise), optionally reporting its dirty bitmap first.
    fn dma_unmap(&self, m: &proto::DmaUnmap) -> Result<Vec<u8>, Errno> {
        let c = &self.att.container;
        if m.flags & proto::VFIO_DMA_UNMAP_FLAG_ALL != 0 {
            c.unmap_all()?;
            return Ok(Vec::new());
        }
        let exact = c
            .dma_space()
            .mappings()
            .iter()
            .any(|x| x.iova == m.address && x.size == m.size);
        if !exact {
            return Err(Errno::NOENT);
        }
        let bitmap = match m.dirty_bitmap {
            Some(b) => {
                if b.pgsize == 0 {
                    return Err(Errno::INVAL);
                }
                let pages = m.size.div_ceil(b.pgsize);
                if b.size < pages.div_ceil(8) {
                    return Err(Errno::INVAL);
                }
                let len = usize::try_from(b.size).map_err(|_| Errno::INVAL)?;
                let words = c.report_dirty(m.address, m.size, b.pgsize)?;
                let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
                bytes.resize(len, 0);
                bytes
            }
            None => Vec::new(),
        };
        c.unmap_dma(m.address, m.size)?;
        Ok(bitmap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uvfio_core::{DeviceInfo, DeviceOps, GroupId, RegionInfo, RegisteredDevice, Registry};

    /// One 4-byte read/write register in region 0.
    struct Reg;

    impl DeviceOps for Reg {
        fn info(&self) -> DeviceInfo {
            DeviceInfo {
                flags: DeviceFlags::PCI,
                num_regions: 9,
                num_irqs: 5,
            }
        }
        fn region_info(&self, index: u32) -> uvfio_core::Result<uvfio_core::RegionInfo> {
            Ok(if index == 0 {
                RegionInfo::rw(0, 4)
            } else {
                RegionInfo::absent(index)
            })
        }
        fn read(&self, _: u32, _: u64, buf: &mut [u8]) -> uvfio_core::Result<()> {
            buf.fill(0xab);
            Ok(())
        }
    }

    struct NoDma;

    impl MessageDmaFactory for NoDma {
        fn backing(&self, _: u64, size: u64, _: &Negotiated) -> Arc<dyn DmaBacking> {
            Arc::new(uvfio_core::SharedMemory::new("t", size).unwrap())
        }
    }

    fn setup() -> (Registry, RegisteredDevice<Reg>) {
        let reg = Registry::default();
        let dev = reg.init(Reg, "r0", GroupId(5)).unwrap().register().unwrap();
        (reg, dev)
    }

    fn session(reg: &Registry) -> Session {
        let reg = reg.clone();
        let attach: AttachFn = Box::new(move || {
            let (handle, group, container) = reg.open_device(GroupId(5), "r0")?.into_parts();
            Ok(Attachment {
                handle,
                group,
                container,
            })
        });
        Session::new(SessionConfig::default(), attach, NoDma)
    }

    /// A session past VERSION, with its output buffer cleared.
    fn negotiated(reg: &Registry) -> (Session, Output) {
        let mut s = session(reg);
        let mut out = Output::default();
        let _ = s.handle(&mut msg(&version(), 1, false), &mut out);
        out.clear();
        (s, out)
    }

    fn msg(req: &Request<'_>, id: u16, no_reply: bool) -> Message {
        let mut bytes = Vec::new();
        req.encode(id, no_reply, &mut bytes).unwrap();
        let mut m = Message::default();
        m.header.copy_from_slice(&bytes[..16]);
        m.body = bytes[16..].to_vec();
        m
    }

    fn version() -> Request<'static> {
        Request::Version(Version::ours(Capabilities::default()))
    }

    fn errno_of(out: &Output) -> Option<u32> {
        let h = RawHeader::parse(out.bytes[..16].try_into().unwrap());
        (h.flags & proto::VFIO_USER_F_ERROR != 0).then_some(h.error)
    }

    #[test]
    fn handle_command_before_version_replies_einval_and_closes() {
        let (reg, _dev) = setup();
        let mut s = session(&reg);
        let mut out = Output::default();
        let req = Request::DeviceGetInfo(proto::DeviceInfoRequest { argsz: 16 });
        let step = s.handle(&mut msg(&req, 1, false), &mut out);
        assert_eq!(step, Step::Close);
        assert_eq!(errno_of(&out), Some(22));
        assert_eq!(s.state(), SessionState::Closed);
    }

    #[test]
    fn handle_version_attaches_and_device_info_answers() {
        let (reg, dev) = setup();
        let mut s = session(&reg);
        let mut out = Output::default();
        assert_eq!(
            s.handle(&mut msg(&version(), 1, false), &mut out),
            Step::Continue
        );
        assert_eq!(errno_of(&out), None);
        assert_eq!(s.state(), SessionState::Ready);
        assert!(s.take_new_limits().is_some());
        assert_eq!(dev.open_count(), 1);
        out.clear();
        let req = Request::DeviceGetInfo(proto::DeviceInfoRequest { argsz: 32 });
        assert_eq!(s.handle(&mut msg(&req, 2, false), &mut out), Step::Continue);
        let limits = DecodeLimits::default();
        let (h, m) = proto::decode_message(&out.bytes, 0, &limits).unwrap();
        assert_eq!(h.msg_id, 2);
        assert_eq!(
            m,
            proto::Message::Reply(Reply::DeviceGetInfo(proto::DeviceInfo::new(
                proto::VFIO_DEVICE_FLAGS_PCI,
                9,
                5
            )))
        );
        drop(s);
        assert_eq!(dev.open_count(), 0);
    }

    #[test]
    fn handle_version_while_group_is_busy_replies_ebusy_and_closes() {
        let (reg, _dev) = setup();
        let _held = reg.open_group(GroupId(5)).unwrap();
        let mut s = session(&reg);
        let mut out = Output::default();
        assert_eq!(
            s.handle(&mut msg(&version(), 1, false), &mut out),
            Step::Close
        );
        assert_eq!(errno_of(&out), Some(Errno::BUSY.raw_os_error() as u32));
    }

    #[test]
    fn handle_unknown_command_when_ready_replies_einval_and_continues() {
        let (reg, _dev) = setup();
        let (mut s, mut out) = negotiated(&reg);
        let mut m = Message::default();
        m.header[0..2].copy_from_slice(&9u16.to_le_bytes());
        m.header[2..4].copy_from_slice(&77u16.to_le_bytes());
        m.header[4..8].copy_from_slice(&16u32.to_le_bytes());
        assert_eq!(s.handle(&mut m, &mut out), Step::Continue);
        assert_eq!(errno_of(&out), Some(22));
        assert_eq!(s.state(), SessionState::Ready);
    }

    #[test]
    fn handle_desync_header_closes_without_reply() {
        let (reg, _dev) = setup();
        let (mut s, mut out) = negotiated(&reg);
        let mut m = Message::default();
        m.header[4..8].copy_from_slice(&8u32.to_le_bytes());
        assert_eq!(s.handle(&mut m, &mut out), Step::Close);
        assert!(out.bytes.is_empty());
    }

    #[test]
    fn handle_no_reply_read_sends_nothing() {
        let (reg, _dev) = setup();
        let (mut s, mut out) = negotiated(&reg);
        let req = Request::RegionRead(proto::RegionAccess {
            offset: 0,
            region: 0,
            count: 4,
        });
        assert_eq!(s.handle(&mut msg(&req, 3, true), &mut out), Step::Continue);
        assert!(out.bytes.is_empty());
    }

    #[test]
    fn handle_region_read_fills_the_reply_in_place() {
        let (reg, _dev) = setup();
        let (mut s, mut out) = negotiated(&reg);
        let req = Request::RegionRead(proto::RegionAccess {
            offset: 0,
            region: 0,
            count: 4,
        });
        let _ = s.handle(&mut msg(&req, 4, false), &mut out);
        assert_eq!(out.bytes.len(), 36);
        assert_eq!(&out.bytes[32..], &[0xab; 4]);
    }

    #[test]
    fn handle_rejected_fds_reply_einval() {
        let (reg, _dev) = setup();
        let (mut s, mut out) = negotiated(&reg);
        let req = Request::DeviceGetInfo(proto::DeviceInfoRequest { argsz: 16 });
        let mut m = msg(&req, 5, false);
        m.fds_rejected = true;
        assert_eq!(s.handle(&mut m, &mut out), Step::Continue);
        assert_eq!(errno_of(&out), Some(22));
    }

    #[test]
    fn handle_dma_map_without_fd_uses_the_factory_backing() {
        let (reg, _dev) = setup();
        let (mut s, mut out) = negotiated(&reg);
        let req = Request::DmaMap(proto::DmaMap {
            argsz: 32,
            flags: proto::VFIO_USER_F_DMA_REGION_READ,
            offset: 0,
            address: 0x1000,
            size: 0x1000,
        });
        let _ = s.handle(&mut msg(&req, 6, false), &mut out);
        assert_eq!(errno_of(&out), None);
        let maps = s.attachment().unwrap().container.dma_space().mappings();
        assert_eq!(maps.len(), 1);
        assert_eq!((maps[0].iova, maps[0].size), (0x1000, 0x1000));
    }
}
