//! The vfio-user wire protocol, sans-I/O.
//!
//! This module turns bytes into typed messages and back. It owns no socket,
//! clock or thread; a transport pushes bytes in and a session decides what
//! the messages mean. Everything here is deterministic, never panics on
//! input, and contains no `unsafe`.
//!
//! # Receiving
//!
//! 1. Read exactly [`HEADER_SIZE`] bytes (plus any `SCM_RIGHTS` fds) and call
//!    [`Header::decode`]. It checks the framing: `16 ≤ msg_size ≤
//!    limits.max_msg_size`, no unknown flag bits, NO_REPLY/ERROR only where
//!    allowed. On failure [`RawHeader::parse`] still yields `msg_id`,
//!    `command` and `msg_size`; [`ProtoError::is_desync`] says whether the
//!    frame length can be trusted at all.
//! 2. Read exactly [`Header::body_len`] more bytes.
//! 3. Call [`decode_request`] (for commands) or [`decode_reply`] (for
//!    replies) with the header, the body, the number of fds received and
//!    the [`DecodeLimits`]. These check the command number, the payload
//!    layout, every length/count/flag field, arithmetic overflow, the
//!    negotiated limits and the fd count, and reject trailing bytes.
//!    Payload data (`REGION_WRITE` data, `REGION_READ` reply data, ...) is
//!    borrowed from the body: the hot path allocates nothing.
//! 4. On error, reply with [`encode_error_reply`] and the errno from
//!    [`ProtoError::errno`], close the fds, and keep the connection (unless
//!    [`ProtoError::is_desync`]).
//!
//! What is *not* checked here, because it needs device state: region and
//! IRQ indexes against the device, region bounds, DMA overlap, migration
//! state, which side may send a command ([`Command::sender`]), and that a
//! reply matches an outstanding request. The session does that.
//!
//! # Sending
//!
//! [`Request::encode`], [`Reply::encode`] and [`encode_error_reply`] append
//! one whole message to a caller-owned `Vec<u8>`; reuse the buffer and no
//! message allocates. A failed encode leaves the buffer as it was.
//! [`encode_region_read_reply_with`] and [`encode_dma_read_reply_with`] let
//! the backend fill the data in place.
//!
//! # Example: one server step
//!
//! ```
//! use uvfio_user::proto::*;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let limits = DecodeLimits::default();
//! // What the client sent (here produced by our own encoder).
//! let mut wire = Vec::new();
//! let read = RegionAccess { offset: 0, region: VFIO_PCI_CONFIG_REGION_INDEX, count: 4 };
//! Request::RegionRead(read).encode(1, false, &mut wire)?;
//!
//! // Transport: header first, then exactly body_len() bytes.
//! let header = Header::decode(wire[..HEADER_SIZE].try_into()?, &limits)?;
//! let body = &wire[HEADER_SIZE..HEADER_SIZE + header.body_len()];
//!
//! let mut out = Vec::new(); // reused across messages
//! match decode_request(&header, body, 0, &limits) {
//!     Ok(Request::RegionRead(a)) => {
//!         encode_region_read_reply_with(header.msg_id, &a, &mut out, |buf| {
//!             buf.copy_from_slice(&[0x86, 0x80, 0x00, 0x10]); // the backend fills in place
//!             Ok::<(), rustix::io::Errno>(())
//!         })?;
//!     }
//!     Ok(_) => encode_error_reply(header.msg_id, header.command, rustix::io::Errno::NOTSUP, &mut out),
//!     Err(e) => encode_error_reply(header.msg_id, header.command, e.errno(), &mut out),
//! }
//! assert_eq!(out.len(), 16 + 16 + 4);
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! One file per message family (`version`, `dma`, `device`, `region_info`,
//! `io_fds`, `irq`, `region`, `feature`, `migration`), plus the header,
//! command numbers, fd rules, limits, the bounded reader and the frame
//! writer. Wire layouts are `zerocopy` structs named `*Wire`, little-endian
//! (the protocol is host-endian; every real peer is little-endian), with a
//! compile-time size assert each, and stay private to this module.

#![forbid(unsafe_code)]

mod command;
mod device;
mod dma;
mod errno;
mod error;
mod fds;
mod feature;
mod header;
mod io_fds;
mod irq;
mod limits;
mod migration;
mod reader;
mod region;
mod region_info;
mod version;
mod writer;

pub use command::*;
pub use device::*;
pub use dma::{
    DirtyBitmap, DmaAccess, DmaMap, DmaReadReply, DmaUnmap, DmaUnmapReply, DmaWrite,
    VFIO_DMA_UNMAP_FLAG_ALL, VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP, VFIO_USER_F_DMA_REGION_FILE_IO,
    VFIO_USER_F_DMA_REGION_MMAP, VFIO_USER_F_DMA_REGION_READ, VFIO_USER_F_DMA_REGION_WRITE,
};
pub use error::{EncodeError, InvalidMessage, JsonErrorKind, PeerMisbehaved, ProtoError};
pub use fds::FdRule;
pub use feature::*;
pub use header::{
    Header, MsgType, RawHeader, HEADER_SIZE, VFIO_USER_F_ERROR, VFIO_USER_F_NO_REPLY,
    VFIO_USER_F_TYPE_COMMAND, VFIO_USER_F_TYPE_MASK, VFIO_USER_F_TYPE_REPLY,
};
pub use io_fds::*;
pub use irq::*;
pub use limits::*;
pub use migration::*;
pub use region::{
    RegionAccess, RegionReadReply, RegionWrite, RegionWriteMulti, RegionWriteMultiReply,
    WriteMultiEntry, VFIO_USER_MULTI_DATA,
};
pub use region_info::*;
pub use version::{
    negotiate_client, negotiate_server, parse_capabilities, Capabilities, MigrationCaps,
    Negotiated, TwinSocket, Version, DEFAULT_CAP_MAX_DMA_MAPS, DEFAULT_CAP_MAX_MSG_FDS,
    DEFAULT_CAP_PGSIZES, VFIO_USER_MAJOR, VFIO_USER_MINOR,
};

use error::{illegal, malformed, Result};
use reader::{u64_from_usize, Reader};
use writer::Frame;

/// A command message (client to server, or server to client for DMA_READ
/// and DMA_WRITE), with data borrowed from the received body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// 1.
    Version(Version),
    /// 2 (0 or 1 fd).
    DmaMap(DmaMap),
    /// 3.
    DmaUnmap(DmaUnmap),
    /// 4.
    DeviceGetInfo(DeviceInfoRequest),
    /// 5.
    DeviceGetRegionInfo(RegionInfoRequest),
    /// 6.
    DeviceGetRegionIoFds(RegionIoFdsRequest),
    /// 7.
    DeviceGetIrqInfo(IrqInfoRequest),
    /// 8 (`count` fds or none with DATA_EVENTFD).
    DeviceSetIrqs(SetIrqs<'a>),
    /// 9.
    RegionRead(RegionAccess),
    /// 10.
    RegionWrite(RegionWrite<'a>),
    /// 11 (server to client).
    DmaRead(DmaAccess),
    /// 12 (server to client).
    DmaWrite(DmaWrite<'a>),
    /// 13.
    DeviceReset,
    /// 15.
    RegionWriteMulti(RegionWriteMulti<'a>),
    /// 16.
    DeviceFeature(DeviceFeature<'a>),
    /// 17.
    MigDataRead(MigDataRead),
    /// 18.
    MigDataWrite(MigDataWrite<'a>),
}

/// A reply message, with data borrowed from the received body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    /// An error reply (header only) to `command`.
    Error(ErrorReply),
    /// 1 (1 fd in twin-socket mode).
    Version(Version),
    /// 2.
    DmaMap,
    /// 3.
    DmaUnmap(DmaUnmapReply<'a>),
    /// 4.
    DeviceGetInfo(DeviceInfo),
    /// 5 (0 or 1 fd with MMAP).
    DeviceGetRegionInfo(RegionInfoReply),
    /// 6 (fds indexed by the entries).
    DeviceGetRegionIoFds(RegionIoFdsReply),
    /// 7.
    DeviceGetIrqInfo(IrqInfo),
    /// 8.
    DeviceSetIrqs,
    /// 9.
    RegionRead(RegionReadReply<'a>),
    /// 10.
    RegionWrite(RegionAccess),
    /// 11 (client to server).
    DmaRead(DmaReadReply<'a>),
    /// 12 (client to server).
    DmaWrite(DmaAccess),
    /// 13.
    DeviceReset,
    /// 15.
    RegionWriteMulti(RegionWriteMultiReply),
    /// 16.
    DeviceFeature(DeviceFeature<'a>),
    /// 17.
    MigDataRead(MigDataReadReply<'a>),
    /// 18.
    MigDataWrite,
}

/// An error reply: the header alone, with the ERROR flag and an errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorReply {
    /// The command that failed.
    pub command: Command,
    /// The errno as sent (may be 0).
    pub errno: u32,
}

impl ErrorReply {
    /// The errno to report locally: the sent value when it is a plausible
    /// errno (1..4096), else `EINVAL` (the spec allows 0 here).
    #[must_use]
    pub fn errno(&self) -> rustix::io::Errno {
        match i32::try_from(self.errno) {
            Ok(e @ 1..=4095) => rustix::io::Errno::from_raw_os_error(e),
            _ => rustix::io::Errno::INVAL,
        }
    }
}

impl Request<'_> {
    /// The command of this request.
    #[must_use]
    pub fn command(&self) -> Command {
        match self {
            Request::Version(_) => Command::Version,
            Request::DmaMap(_) => Command::DmaMap,
            Request::DmaUnmap(_) => Command::DmaUnmap,
            Request::DeviceGetInfo(_) => Command::DeviceGetInfo,
            Request::DeviceGetRegionInfo(_) => Command::DeviceGetRegionInfo,
            Request::DeviceGetRegionIoFds(_) => Command::DeviceGetRegionIoFds,
            Request::DeviceGetIrqInfo(_) => Command::DeviceGetIrqInfo,
            Request::DeviceSetIrqs(_) => Command::DeviceSetIrqs,
            Request::RegionRead(_) => Command::RegionRead,
            Request::RegionWrite(_) => Command::RegionWrite,
            Request::DmaRead(_) => Command::DmaRead,
            Request::DmaWrite(_) => Command::DmaWrite,
            Request::DeviceReset => Command::DeviceReset,
            Request::RegionWriteMulti(_) => Command::RegionWriteMulti,
            Request::DeviceFeature(_) => Command::DeviceFeature,
            Request::MigDataRead(_) => Command::MigDataRead,
            Request::MigDataWrite(_) => Command::MigDataWrite,
        }
    }

    /// How many fds must accompany this request.
    #[must_use]
    pub fn fd_rule(&self) -> FdRule {
        match self {
            Request::DmaMap(_) => FdRule::AtMostOne,
            Request::DeviceSetIrqs(s) => s.fd_rule(),
            _ => FdRule::None,
        }
    }

    /// Append this request as one message (`msg_id`, NO_REPLY if
    /// `no_reply`) to `out`. On error `out` is unchanged.
    pub fn encode(
        &self,
        msg_id: u16,
        no_reply: bool,
        out: &mut Vec<u8>,
    ) -> core::result::Result<(), EncodeError> {
        let flags = VFIO_USER_F_TYPE_COMMAND | if no_reply { VFIO_USER_F_NO_REPLY } else { 0 };
        let mut f = Frame::begin(out, msg_id, self.command().raw(), flags, 0);
        match self {
            Request::Version(v) => v.encode_payload(&mut f)?,
            Request::DmaMap(m) => m.encode_payload(&mut f),
            Request::DmaUnmap(m) => m.encode_payload(&mut f)?,
            Request::DeviceGetInfo(m) => m.encode_payload(&mut f),
            Request::DeviceGetRegionInfo(m) => m.encode_payload(&mut f),
            Request::DeviceGetRegionIoFds(m) => m.encode_payload(&mut f),
            Request::DeviceGetIrqInfo(m) => m.encode_payload(&mut f),
            Request::DeviceSetIrqs(m) => m.encode_payload(&mut f)?,
            Request::RegionRead(m) => m.encode_payload(&mut f),
            Request::RegionWrite(m) => {
                region::encode_region_data(&mut f, m.offset, m.region, m.data)?
            }
            Request::DmaRead(m) => m.encode_payload(&mut f),
            Request::DmaWrite(m) => dma::encode_dma_data(&mut f, m.address, m.data),
            Request::DeviceReset => {}
            Request::RegionWriteMulti(m) => m.encode_payload(&mut f),
            Request::DeviceFeature(m) => m.encode_payload(&mut f)?,
            Request::MigDataRead(m) => m.encode_payload(&mut f),
            Request::MigDataWrite(m) => m.encode_payload(&mut f)?,
        }
        f.finish()
    }
}

impl Reply<'_> {
    /// The command this reply answers.
    #[must_use]
    pub fn command(&self) -> Command {
        match self {
            Reply::Error(e) => e.command,
            Reply::Version(_) => Command::Version,
            Reply::DmaMap => Command::DmaMap,
            Reply::DmaUnmap(_) => Command::DmaUnmap,
            Reply::DeviceGetInfo(_) => Command::DeviceGetInfo,
            Reply::DeviceGetRegionInfo(_) => Command::DeviceGetRegionInfo,
            Reply::DeviceGetRegionIoFds(_) => Command::DeviceGetRegionIoFds,
            Reply::DeviceGetIrqInfo(_) => Command::DeviceGetIrqInfo,
            Reply::DeviceSetIrqs => Command::DeviceSetIrqs,
            Reply::RegionRead(_) => Command::RegionRead,
            Reply::RegionWrite(_) => Command::RegionWrite,
            Reply::DmaRead(_) => Command::DmaRead,
            Reply::DmaWrite(_) => Command::DmaWrite,
            Reply::DeviceReset => Command::DeviceReset,
            Reply::RegionWriteMulti(_) => Command::RegionWriteMulti,
            Reply::DeviceFeature(_) => Command::DeviceFeature,
            Reply::MigDataRead(_) => Command::MigDataRead,
            Reply::MigDataWrite => Command::MigDataWrite,
        }
    }

    /// How many fds may accompany this reply: one (the twin socket) for
    /// VERSION, one (the region fd) for a REGION_INFO with MMAP, exactly
    /// the indexed ones for REGION_IO_FDS, none otherwise.
    #[must_use]
    pub fn fd_rule(&self) -> FdRule {
        match self {
            Reply::Version(_) => FdRule::AtMostOne,
            Reply::DeviceGetRegionInfo(r) if r.info.flags & VFIO_REGION_INFO_FLAG_MMAP != 0 => {
                FdRule::AtMostOne
            }
            Reply::DeviceGetRegionIoFds(r) => FdRule::Exactly(r.fds_needed()),
            _ => FdRule::None,
        }
    }

    /// Append this reply as one message with `msg_id` to `out`. On error
    /// `out` is unchanged.
    pub fn encode(&self, msg_id: u16, out: &mut Vec<u8>) -> core::result::Result<(), EncodeError> {
        if let Reply::Error(e) = self {
            encode_error_reply_raw(msg_id, e.command.raw(), e.errno, out);
            return Ok(());
        }
        let mut f = Frame::begin(out, msg_id, self.command().raw(), VFIO_USER_F_TYPE_REPLY, 0);
        match self {
            Reply::Error(_) => {}
            Reply::Version(v) => v.encode_payload(&mut f)?,
            Reply::DmaMap | Reply::DeviceSetIrqs | Reply::DeviceReset | Reply::MigDataWrite => {}
            Reply::DmaUnmap(m) => m.encode_payload(&mut f)?,
            Reply::DeviceGetInfo(m) => m.encode_payload(&mut f),
            Reply::DeviceGetRegionInfo(m) => m.encode_payload(&mut f)?,
            Reply::DeviceGetRegionIoFds(m) => m.encode_payload(&mut f)?,
            Reply::DeviceGetIrqInfo(m) => m.encode_payload(&mut f),
            Reply::RegionRead(m) => region::encode_region_data(&mut f, m.offset, m.region, m.data)?,
            Reply::RegionWrite(m) => m.encode_payload(&mut f),
            Reply::DmaRead(m) => dma::encode_dma_data(&mut f, m.address, m.data),
            Reply::DmaWrite(m) => m.encode_payload(&mut f),
            Reply::RegionWriteMulti(m) => m.encode_payload(&mut f),
            Reply::DeviceFeature(m) => m.encode_payload(&mut f)?,
            Reply::MigDataRead(m) => m.encode_payload(&mut f)?,
        }
        f.finish()
    }
}

/// Common checks before the payload: message type, body length, fd cap,
/// command number.
fn precheck(
    header: &Header,
    body: &[u8],
    nfds: usize,
    limits: &DecodeLimits,
    want: MsgType,
) -> Result<Command> {
    if header.msg_type != want {
        return illegal(PeerMisbehaved::UnexpectedMsgType {
            expected: want,
            got: header.msg_type,
        });
    }
    if body.len() != header.body_len() {
        return malformed(InvalidMessage::BodyLenMismatch {
            expected: header.body_len(),
            actual: body.len(),
        });
    }
    if header.msg_size > limits.max_msg_size {
        return illegal(PeerMisbehaved::MsgTooLarge {
            msg_size: header.msg_size,
            max: limits.max_msg_size,
        });
    }
    if nfds > limits.max_fds {
        return illegal(PeerMisbehaved::TooManyFds {
            nfds,
            max: limits.max_fds,
        });
    }
    header.command()
}

fn check_fds(command: Command, rule: FdRule, nfds: usize) -> Result<()> {
    if !rule.allows(nfds) {
        return illegal(PeerMisbehaved::UnexpectedFds {
            command,
            nfds,
            rule,
        });
    }
    Ok(())
}

/// Decode the body of a command message.
///
/// `header` must come from [`Header::decode`] with the same `limits`;
/// `body` is exactly [`Header::body_len`] bytes; `nfds` is the number of
/// fds received with the header. See the module docs for what is checked.
pub fn decode_request<'a>(
    header: &Header,
    body: &'a [u8],
    nfds: usize,
    limits: &DecodeLimits,
) -> Result<Request<'a>> {
    let command = precheck(header, body, nfds, limits, MsgType::Command)?;
    let mut r = Reader::new(body);
    let req = match command {
        Command::Version => Request::Version(version::Version::decode(r.rest())?),
        Command::DmaMap => Request::DmaMap(DmaMap::decode(&mut r, nfds)?),
        Command::DmaUnmap => Request::DmaUnmap(DmaUnmap::decode_request(&mut r, limits)?),
        Command::DeviceGetInfo => Request::DeviceGetInfo(DeviceInfoRequest::decode(&mut r)?),
        Command::DeviceGetRegionInfo => {
            Request::DeviceGetRegionInfo(RegionInfoRequest::decode(&mut r)?)
        }
        Command::DeviceGetRegionIoFds => {
            Request::DeviceGetRegionIoFds(RegionIoFdsRequest::decode(&mut r)?)
        }
        Command::DeviceGetIrqInfo => Request::DeviceGetIrqInfo(IrqInfoRequest::decode(&mut r)?),
        Command::DeviceSetIrqs => Request::DeviceSetIrqs(SetIrqs::decode(&mut r)?),
        Command::RegionRead => {
            Request::RegionRead(RegionAccess::decode(&mut r, limits, "region_read")?)
        }
        Command::RegionWrite => {
            let (offset, region, data) =
                region::decode_region_data(&mut r, limits, "region_write")?;
            Request::RegionWrite(RegionWrite {
                offset,
                region,
                data,
            })
        }
        Command::DmaRead => Request::DmaRead(DmaAccess::decode(&mut r, limits, "dma_read")?),
        Command::DmaWrite => {
            let (address, data) = dma::decode_dma_data(&mut r, limits, "dma_write")?;
            Request::DmaWrite(DmaWrite { address, data })
        }
        Command::DeviceReset => Request::DeviceReset,
        Command::RegionWriteMulti => {
            Request::RegionWriteMulti(RegionWriteMulti::decode(&mut r, limits)?)
        }
        Command::DeviceFeature => {
            Request::DeviceFeature(DeviceFeature::decode(&mut r, limits, false)?)
        }
        Command::MigDataRead => Request::MigDataRead(MigDataRead::decode(&mut r, limits)?),
        Command::MigDataWrite => Request::MigDataWrite(MigDataWrite::decode(&mut r, limits)?),
    };
    r.expect_end(command.name())?;
    check_fds(command, req.fd_rule(), nfds)?;
    Ok(req)
}

/// Decode the body of a reply message (an error reply becomes
/// [`Reply::Error`]). Arguments as for [`decode_request`].
pub fn decode_reply<'a>(
    header: &Header,
    body: &'a [u8],
    nfds: usize,
    limits: &DecodeLimits,
) -> Result<Reply<'a>> {
    let command = precheck(header, body, nfds, limits, MsgType::Reply)?;
    if let Some(errno) = header.error {
        if !body.is_empty() {
            return illegal(PeerMisbehaved::ErrorReplyWithPayload { len: body.len() });
        }
        check_fds(command, FdRule::None, nfds)?;
        return Ok(Reply::Error(ErrorReply { command, errno }));
    }
    let mut r = Reader::new(body);
    let reply = match command {
        Command::Version => Reply::Version(version::Version::decode(r.rest())?),
        Command::DmaMap => Reply::DmaMap,
        Command::DmaUnmap => Reply::DmaUnmap(DmaUnmapReply::decode(&mut r, limits)?),
        Command::DeviceGetInfo => Reply::DeviceGetInfo(DeviceInfo::decode(&mut r)?),
        Command::DeviceGetRegionInfo => {
            Reply::DeviceGetRegionInfo(RegionInfoReply::decode(r.rest(), limits)?)
        }
        Command::DeviceGetRegionIoFds => {
            Reply::DeviceGetRegionIoFds(RegionIoFdsReply::decode(&mut r, limits)?)
        }
        Command::DeviceGetIrqInfo => Reply::DeviceGetIrqInfo(IrqInfo::decode(&mut r)?),
        Command::DeviceSetIrqs => Reply::DeviceSetIrqs,
        Command::RegionRead => {
            let (offset, region, data) =
                region::decode_region_data(&mut r, limits, "region_read reply")?;
            Reply::RegionRead(RegionReadReply {
                offset,
                region,
                data,
            })
        }
        Command::RegionWrite => {
            Reply::RegionWrite(RegionAccess::decode(&mut r, limits, "region_write reply")?)
        }
        Command::DmaRead => {
            let (address, data) = dma::decode_dma_data(&mut r, limits, "dma_read reply")?;
            Reply::DmaRead(DmaReadReply { address, data })
        }
        Command::DmaWrite => Reply::DmaWrite(DmaAccess::decode(&mut r, limits, "dma_write reply")?),
        Command::DeviceReset => Reply::DeviceReset,
        Command::RegionWriteMulti => {
            Reply::RegionWriteMulti(region::RegionWriteMultiReply::decode(&mut r)?)
        }
        Command::DeviceFeature => {
            Reply::DeviceFeature(DeviceFeature::decode(&mut r, limits, true)?)
        }
        Command::MigDataRead => Reply::MigDataRead(MigDataReadReply::decode(&mut r, limits)?),
        Command::MigDataWrite => Reply::MigDataWrite,
    };
    r.expect_end(command.name())?;
    check_fds(command, reply.fd_rule(), nfds)?;
    Ok(reply)
}

/// Append an error reply (header only: Type reply, ERROR, `errno`) to
/// `command` — a raw number, so unknown commands can be answered too.
pub fn encode_error_reply(msg_id: u16, command: u16, errno: rustix::io::Errno, out: &mut Vec<u8>) {
    let raw = u32::try_from(errno.raw_os_error()).unwrap_or(22);
    encode_error_reply_raw(msg_id, command, raw, out);
}

fn encode_error_reply_raw(msg_id: u16, command: u16, errno: u32, out: &mut Vec<u8>) {
    let hdr = Header {
        msg_id,
        command,
        msg_size: 16,
        msg_type: MsgType::Reply,
        no_reply: false,
        error: Some(errno),
    };
    out.extend_from_slice(&hdr.to_bytes());
}

/// Append a REGION_READ reply for `access` whose `access.count` data bytes
/// are written in place by `fill` (zeroed before the call). If `fill`
/// fails, `out` is left unchanged and its error is returned.
pub fn encode_region_read_reply_with<E>(
    msg_id: u16,
    access: &RegionAccess,
    out: &mut Vec<u8>,
    fill: impl FnOnce(&mut [u8]) -> core::result::Result<(), E>,
) -> core::result::Result<(), FillError<E>> {
    let mut f = Frame::begin(
        out,
        msg_id,
        Command::RegionRead.raw(),
        VFIO_USER_F_TYPE_REPLY,
        0,
    );
    access.encode_payload(&mut f);
    let data = f.put_zeroed(reader::usize_from(access.count));
    fill(data).map_err(FillError::Fill)?;
    f.finish().map_err(FillError::Encode)
}

/// Append a DMA_READ reply for `access` whose `access.count` data bytes are
/// written in place by `fill` (zeroed before the call). If `fill` fails,
/// `out` is left unchanged and its error is returned.
pub fn encode_dma_read_reply_with<E>(
    msg_id: u16,
    access: &DmaAccess,
    out: &mut Vec<u8>,
    fill: impl FnOnce(&mut [u8]) -> core::result::Result<(), E>,
) -> core::result::Result<(), FillError<E>> {
    let len = usize::try_from(access.count).map_err(|_| {
        FillError::Encode(EncodeError::TooLarge {
            what: "dma_read count",
            len: access.count,
            max: u64_from_usize(usize::MAX),
        })
    })?;
    let mut f = Frame::begin(
        out,
        msg_id,
        Command::DmaRead.raw(),
        VFIO_USER_F_TYPE_REPLY,
        0,
    );
    access.encode_payload(&mut f);
    let data = f.put_zeroed(len);
    fill(data).map_err(FillError::Fill)?;
    f.finish().map_err(FillError::Encode)
}

/// Failure of an in-place encoder: the fill callback's error, or ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FillError<E> {
    /// The callback failed.
    #[error("fill callback failed")]
    Fill(E),
    /// The message could not be encoded.
    #[error(transparent)]
    Encode(EncodeError),
}

/// Decode a whole message (header + body) in one call: a convenience for
/// tests and fuzzers. Returns the header and either the request or the
/// reply, by the header's type. `bytes` must be exactly one message.
pub fn decode_message<'a>(
    bytes: &'a [u8],
    nfds: usize,
    limits: &DecodeLimits,
) -> Result<(Header, Message<'a>)> {
    let Some((hdr, body)) = bytes.split_first_chunk::<HEADER_SIZE>() else {
        return malformed(InvalidMessage::Truncated {
            what: "header",
            offset: 0,
            needed: HEADER_SIZE,
            available: bytes.len(),
        });
    };
    let header = Header::decode(hdr, limits)?;
    let msg = match header.msg_type {
        MsgType::Command => Message::Request(decode_request(&header, body, nfds, limits)?),
        MsgType::Reply => Message::Reply(decode_reply(&header, body, nfds, limits)?),
    };
    Ok((header, msg))
}

/// A decoded message of either type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// A command.
    Request(Request<'a>),
    /// A reply.
    Reply(Reply<'a>),
}
