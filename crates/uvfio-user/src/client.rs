//! A vfio-user client: the VMM's side of a connection.
//!
//! [`Client`] negotiates on connect, then offers one method per command,
//! each a blocking round trip bounded by [`ClientConfig::timeout`]. Every
//! error reply becomes [`ClientError::Server`] carrying the command and the
//! errno; a reply that does not decode or does not match the request is
//! [`ClientError::BadReply`] / [`ClientError::UnexpectedReply`]; nothing
//! hangs.
//!
//! DMA: memory the server may map is handed over as a sealed memfd
//! ([`Client::dma_map_shared`] with a [`SharedMemory`]); memory without an
//! fd ([`Client::dma_map_message`]) is reached by the server through
//! DMA_READ/DMA_WRITE, which the client answers from the registered
//! [`DmaBacking`] while it waits for its own replies, or in
//! [`Client::serve_dma`] when it has nothing to send.
//!
//! Methods take `&self`; calls from several threads are serialised.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use uvfio_core::{DmaBacking, DmaPerm, MmapRegion, Protection, SharedMemory};

pub use crate::channel::ChannelError;
use crate::channel::{Channel, Incoming, Outgoing};
use crate::proto::{
    self, Capabilities, Command, DecodeLimits, EncodeError, InvalidMessage, MigrationCaps,
    Negotiated, ProtoError, Reply, Request, Version,
};
use crate::transport::{FrameLimits, Message, Wait};

mod migration;

/// Client settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Longest wait for any reply. A reply later than this fails its call
    /// with [`ChannelError::Timeout`] (`ETIMEDOUT`) and closes the
    /// connection: a peer that late is taken for dead, and no late reply
    /// can be mistaken for a later request's. Kept to within ~50 ms by a
    /// watchdog thread rather than a kernel timer on every wait.
    pub timeout: Duration,
    /// Longest stall inside a message from the server.
    pub io_timeout: Duration,
    /// What we can receive, sent in VERSION. The default proposes the
    /// legacy `migration` object as QEMU does (servers such as rust-vmm's
    /// always answer with one).
    pub capabilities: Capabilities,
    /// How a call waits for its reply ([`Wait`]): blocking by default;
    /// polling lowers round-trip latency for CPU time.
    pub wait: Wait,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(10),
            capabilities: Capabilities {
                max_msg_fds: proto::DEFAULT_MAX_MSG_FDS,
                migration: Some(MigrationCaps {
                    pgsize: Some(4096),
                    max_bitmap_size: None,
                }),
                ..Capabilities::default()
            },
            wait: Wait::Block,
        }
    }
}

impl ClientConfig {
    /// Sets [`ClientConfig::timeout`].
    #[must_use]
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Sets [`ClientConfig::wait`].
    #[must_use]
    pub fn wait(mut self, wait: Wait) -> Self {
        self.wait = wait;
        self
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The socket could not be connected.
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The server answered with an error reply.
    #[error("{command}: the server replied with {errno}")]
    Server {
        /// The command that failed.
        command: Command,
        /// The errno of the error reply.
        errno: Errno,
    },
    /// VERSION negotiation failed on our side (the server's answer is not
    /// acceptable).
    #[error("negotiation failed: {0}")]
    Negotiation(#[source] ProtoError),
    /// The reply did not decode.
    #[error("bad reply to {command}: {source}")]
    BadReply {
        /// The command sent.
        command: Command,
        /// Why the reply was rejected.
        #[source]
        source: ProtoError,
    },
    /// The reply decoded but does not answer the request.
    #[error("reply to {command} does not match the request: {what}")]
    UnexpectedReply {
        /// The command sent.
        command: Command,
        /// What did not match.
        what: &'static str,
    },
    /// The connection failed or timed out.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The request could not be encoded.
    #[error("cannot encode {command}: {source}")]
    Encode {
        /// The command.
        command: Command,
        /// Why.
        #[source]
        source: EncodeError,
    },
    /// A local operation failed (mmap, fd duplication, ...).
    #[error("{what}: {errno}")]
    Local {
        /// What was attempted.
        what: &'static str,
        /// The errno.
        errno: Errno,
    },
}

impl ClientError {
    /// The errno that best describes the failure: the server's for an
    /// error reply.
    #[must_use]
    pub fn errno(&self) -> Errno {
        match self {
            ClientError::Connect(e) => Errno::from_io_error(e).unwrap_or(Errno::IO),
            ClientError::Server { errno, .. } | ClientError::Local { errno, .. } => *errno,
            ClientError::Negotiation(_)
            | ClientError::BadReply { .. }
            | ClientError::UnexpectedReply { .. } => Errno::PROTO,
            ClientError::Channel(e) => e.errno(),
            ClientError::Encode { .. } => Errno::INVAL,
        }
    }
}

/// Shorthand for client results.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A region as the server describes it, with its fd when it is mappable.
#[derive(Debug, Clone)]
pub struct Region {
    /// The description (flags, size, offset in the fd, capabilities).
    pub info: proto::RegionInfo,
    /// The fd to mmap (sent with MMAP regions).
    pub fd: Option<Arc<OwnedFd>>,
}

impl Region {
    /// The sparse-mmap areas, if the region has the capability.
    #[must_use]
    pub fn sparse_areas(&self) -> &[proto::SparseMmapArea] {
        self.info
            .caps
            .iter()
            .find_map(|c| match c {
                proto::RegionCap::SparseMmap(a) => Some(a.as_slice()),
                _ => None,
            })
            .unwrap_or(&[])
    }

    /// Maps sparse area `area` (shared; writable if the region is).
    pub fn map_area(&self, area: usize) -> Result<MmapRegion> {
        let a = self
            .sparse_areas()
            .get(area)
            .copied()
            .ok_or(ClientError::Local {
                what: "no such sparse area",
                errno: Errno::INVAL,
            })?;
        self.map_range(a.offset, a.size)
    }

    /// Maps `size` bytes of the region at `offset` through its fd.
    pub fn map_range(&self, offset: u64, size: u64) -> Result<MmapRegion> {
        let local = |what, errno| ClientError::Local { what, errno };
        let fd = self
            .fd
            .as_ref()
            .ok_or(local("region has no fd", Errno::INVAL))?;
        if self.info.flags & proto::VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(local("region is not mappable", Errno::INVAL));
        }
        let end = offset
            .checked_add(size)
            .ok_or(local("range overflows", Errno::INVAL))?;
        if end > self.info.size {
            return Err(local("range past the region", Errno::INVAL));
        }
        let at = self
            .info
            .offset
            .checked_add(offset)
            .ok_or(local("range overflows", Errno::INVAL))?;
        let len = usize::try_from(size).map_err(|_| local("range too large", Errno::INVAL))?;
        let prot = if self.info.flags & proto::VFIO_REGION_INFO_FLAG_WRITE != 0 {
            Protection::ReadWrite
        } else {
            Protection::Read
        };
        MmapRegion::map(fd.as_fd(), at, len, prot).map_err(|e| local("mmap", e))
    }
}

/// The data of a SET_IRQS request.
#[derive(Debug, Clone, Copy)]
pub enum IrqSetData<'a> {
    /// DATA_NONE: apply to every vector in range.
    None,
    /// DATA_BOOL: one flag per vector.
    Bool(&'a [bool]),
    /// DATA_EVENTFD: one eventfd per vector; an empty slice de-assigns.
    Eventfds(&'a [BorrowedFd<'a>]),
}

/// Memory registered with [`Client::dma_map_message`].
#[derive(Debug, Clone)]
struct MsgDmaRegion {
    iova: u64,
    size: u64,
    perm: DmaPerm,
    backing: Arc<dyn DmaBacking>,
}

type DmaTable = Arc<Mutex<Vec<MsgDmaRegion>>>;

struct Bufs {
    out: Vec<u8>,
    reply: Message,
}

/// A connection to one vfio-user device, see the module docs.
pub struct Client {
    chan: Arc<Channel>,
    negotiated: Negotiated,
    limits: DecodeLimits,
    config: ClientConfig,
    dma: DmaTable,
    bufs: Mutex<Bufs>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("negotiated", &self.negotiated)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Answers one server command (DMA_READ/DMA_WRITE) from `table`.
fn answer_server_command(chan: &Channel, table: &DmaTable, limits: &DecodeLimits, msg: &Message) {
    let raw = proto::RawHeader::parse(&msg.header);
    let mut out = Vec::new();
    let header = match raw.validate(limits) {
        Ok(h) => h,
        Err(e) => {
            proto::encode_error_reply(raw.msg_id, raw.command, e.errno(), &mut out);
            let _ = chan.send(&out, &[]);
            return;
        }
    };
    let result: std::result::Result<(), Errno> =
        match proto::decode_request(&header, &msg.body, msg.fds.len(), limits) {
            Err(e) => Err(e.errno()),
            Ok(Request::DmaRead(a)) => match find_dma(table, a.address, a.count, DmaPerm::READ) {
                Ok((r, off)) => {
                    let filled =
                        proto::encode_dma_read_reply_with(header.msg_id, &a, &mut out, |buf| {
                            r.backing.read(off, buf)
                        });
                    match filled {
                        Ok(()) => Ok(()),
                        Err(proto::FillError::Fill(e)) => Err(e),
                        Err(proto::FillError::Encode(_)) => Err(Errno::INVAL),
                    }
                }
                Err(e) => Err(e),
            },
            Ok(Request::DmaWrite(w)) => {
                let count = u64::try_from(w.data.len()).unwrap_or(u64::MAX);
                find_dma(table, w.address, count, DmaPerm::WRITE)
                    .and_then(|(r, off)| r.backing.write(off, w.data))
                    .and_then(|()| {
                        Reply::DmaWrite(proto::DmaAccess {
                            address: w.address,
                            count,
                        })
                        .encode(header.msg_id, &mut out)
                        .map_err(|_| Errno::INVAL)
                    })
            }
            Ok(_) => Err(Errno::INVAL),
        };
    if let Err(e) = result {
        out.clear();
        tracing::debug!(
            command = header.command,
            "answering server command with {e}"
        );
        proto::encode_error_reply(header.msg_id, header.command, e, &mut out);
    }
    if header.no_reply {
        return;
    }
    if let Err(e) = chan.send(&out, &[]) {
        tracing::debug!("cannot answer server command: {e}");
    }
}

/// The registered region holding `address..address+count` with `need`,
/// and the offset into it.
fn find_dma(
    table: &DmaTable,
    address: u64,
    count: u64,
    need: DmaPerm,
) -> std::result::Result<(MsgDmaRegion, u64), Errno> {
    let t = lock(table);
    let end = address.checked_add(count).ok_or(Errno::FAULT)?;
    let r = t
        .iter()
        .find(|r| address >= r.iova && end <= r.iova.saturating_add(r.size))
        .ok_or(Errno::FAULT)?;
    if !r.perm.contains(need) {
        return Err(Errno::PERM);
    }
    Ok((r.clone(), address - r.iova))
}

impl Client {
    /// Connects to the socket at `path` and negotiates, with defaults.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client> {
        Self::connect_with(path, ClientConfig::default())
    }

    /// Connects to the socket at `path` and negotiates.
    pub fn connect_with(path: impl AsRef<Path>, config: ClientConfig) -> Result<Client> {
        let stream = UnixStream::connect(path).map_err(ClientError::Connect)?;
        Self::from_stream(stream, config)
    }

    /// Negotiates over an already connected stream.
    pub fn from_stream(stream: UnixStream, config: ClientConfig) -> Result<Client> {
        let sock: OwnedFd = stream.into();
        crate::transport::set_send_timeout(&sock, Some(config.io_timeout)).map_err(|errno| {
            ClientError::Local {
                what: "SO_SNDTIMEO",
                errno,
            }
        })?;
        let proposal = Version::ours(config.capabilities.clone());
        let pre = Negotiated {
            major: proposal.major,
            minor: proposal.minor,
            ours: config.capabilities.clone(),
            theirs: Capabilities::default(),
            twin_socket_fd_index: None,
        };
        let limits = pre.decode_limits();
        // Replies are awaited inside a plain blocking recvmsg (one syscall
        // per round trip, no poll, no SO_RCVTIMEO timer); the watchdog keeps
        // the deadline.
        let chan = Arc::new(
            Channel::new(sock, frame_limits(&limits, &config), 64 << 20)
                .with_watchdog()
                .with_plain_reads()
                .with_wait(config.wait),
        );
        crate::watchdog::watch(&chan);
        let mut client = Client {
            chan,
            negotiated: pre,
            limits,
            config,
            dma: Arc::new(Mutex::new(Vec::new())),
            bufs: Mutex::new(Bufs {
                out: Vec::new(),
                reply: Message::default(),
            }),
        };
        let negotiated =
            client.call(
                &Request::Version(proposal.clone()),
                &[],
                |reply, nfds| match reply {
                    Reply::Version(v) => proto::negotiate_client(&proposal, &v, nfds)
                        .map_err(ClientError::Negotiation),
                    _ => Err(ClientError::UnexpectedReply {
                        command: Command::Version,
                        what: "reply type",
                    }),
                },
            )?;
        client.limits = negotiated.decode_limits();
        client.negotiated = negotiated;
        client
            .chan
            .set_limits(frame_limits(&client.limits, &client.config));
        Ok(client)
    }

    /// The outcome of negotiation.
    #[must_use]
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// One round trip: encode `req`, wait for its reply, decode it and hand
    /// it (with the number of fds that came) to `f`. Fds of the reply are
    /// passed through `take_fds` when the caller wants them.
    fn call<T>(
        &self,
        req: &Request<'_>,
        fds: &[BorrowedFd<'_>],
        f: impl FnOnce(Reply<'_>, usize) -> Result<T>,
    ) -> Result<T> {
        self.call_fds(req, fds, |r, fds| {
            let n = fds.len();
            f(r, n)
        })
    }

    fn call_fds<T>(
        &self,
        req: &Request<'_>,
        fds: &[BorrowedFd<'_>],
        f: impl FnOnce(Reply<'_>, Vec<OwnedFd>) -> Result<T>,
    ) -> Result<T> {
        let command = req.command();
        let mut guard = lock(&self.bufs);
        let bufs = &mut *guard;
        bufs.out.clear();
        let id = self.chan.next_id();
        req.encode(id, false, &mut bufs.out)
            .map_err(|source| ClientError::Encode { command, source })?;
        let table = &self.dma;
        let limits = self.limits;
        let mut handler =
            move |chan: &Channel, msg: Message| answer_server_command(chan, table, &limits, &msg);
        // Only the replies to region accesses are read without a control
        // buffer: they never carry fds (VERSION and REGION_INFO replies
        // may), and they are the hot path.
        let may_carry_fds = !matches!(command, Command::RegionRead | Command::RegionWrite);
        let out = Outgoing {
            id,
            bytes: &bufs.out,
            fds,
            timeout: self.config.timeout,
            reply_fds: may_carry_fds,
        };
        self.chan
            .call(&out, Incoming::Handle(&mut handler), &mut bufs.reply)?;
        let reply_fds = std::mem::take(&mut bufs.reply.fds);
        let header = proto::Header::decode(&bufs.reply.header, &self.limits)
            .map_err(|source| ClientError::BadReply { command, source })?;
        if bufs.reply.fds_rejected {
            return Err(ClientError::UnexpectedReply {
                command,
                what: "too many fds",
            });
        }
        let reply = proto::decode_reply(&header, &bufs.reply.body, reply_fds.len(), &self.limits)
            .map_err(|source| ClientError::BadReply { command, source })?;
        if reply.command() != command {
            return Err(ClientError::UnexpectedReply {
                command,
                what: "command",
            });
        }
        if let Reply::Error(e) = reply {
            return Err(ClientError::Server {
                command,
                errno: e.errno(),
            });
        }
        f(reply, reply_fds)
    }

    fn unexpected<T>(command: Command) -> Result<T> {
        Err(ClientError::UnexpectedReply {
            command,
            what: "reply type",
        })
    }

    /// DEVICE_GET_INFO.
    pub fn device_info(&self) -> Result<proto::DeviceInfo> {
        let req = Request::DeviceGetInfo(proto::DeviceInfoRequest {
            argsz: proto::DEVICE_INFO_SIZE,
        });
        self.call(&req, &[], |r, _| match r {
            Reply::DeviceGetInfo(i) => Ok(i),
            _ => Self::unexpected(Command::DeviceGetInfo),
        })
    }

    /// DEVICE_GET_REGION_INFO with its capabilities (asking again with a
    /// larger `argsz` when they did not fit) and its fd, if mappable.
    pub fn region_info(&self, index: u32) -> Result<Region> {
        let mut argsz = proto::REGION_INFO_SIZE;
        for _ in 0..3 {
            let req = Request::DeviceGetRegionInfo(proto::RegionInfoRequest { argsz, index });
            let res = self.call_fds(&req, &[], |r, mut fds| match r {
                Reply::DeviceGetRegionInfo(rep) => Ok((rep, fds.pop())),
                _ => Self::unexpected(Command::DeviceGetRegionInfo),
            });
            let (rep, fd) = match res {
                // Like the kernel, rust-vmm's server sets CAPS and the
                // needed argsz but sends only the fixed part when the
                // capabilities do not fit; the codec reads that as a length
                // mismatch. Ask again with the room it asked for.
                Err(ClientError::BadReply {
                    source:
                        ProtoError::Malformed(InvalidMessage::LengthMismatch {
                            declared,
                            actual: 32,
                            ..
                        }),
                    ..
                }) if declared > u64::from(argsz) => {
                    argsz = u32::try_from(declared).unwrap_or(u32::MAX);
                    continue;
                }
                r => r?,
            };
            if rep.info.index != index {
                return Err(ClientError::UnexpectedReply {
                    command: Command::DeviceGetRegionInfo,
                    what: "region index",
                });
            }
            if rep.argsz <= argsz {
                return Ok(Region {
                    info: rep.info,
                    fd: fd.map(Arc::new),
                });
            }
            argsz = rep.argsz;
        }
        Err(ClientError::UnexpectedReply {
            command: Command::DeviceGetRegionInfo,
            what: "argsz keeps growing",
        })
    }

    /// DEVICE_GET_IRQ_INFO.
    pub fn irq_info(&self, index: u32) -> Result<proto::IrqInfo> {
        let req = Request::DeviceGetIrqInfo(proto::IrqInfoRequest {
            argsz: proto::IRQ_INFO_SIZE,
            index,
        });
        self.call(&req, &[], |r, _| match r {
            Reply::DeviceGetIrqInfo(i) if i.index == index => Ok(i),
            _ => Self::unexpected(Command::DeviceGetIrqInfo),
        })
    }

    /// Largest data transfer per message in both directions.
    fn chunk(&self) -> usize {
        let n = self
            .negotiated
            .max_send_data_xfer_size()
            .min(self.limits.max_data_xfer_size)
            .max(1);
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    /// REGION_READ of `buf.len()` bytes at `offset` (split into messages
    /// of at most the server's `max_data_xfer_size`).
    pub fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let chunk = self.chunk();
        let mut done = 0usize;
        loop {
            let n = (buf.len() - done).min(chunk);
            let at = offset.checked_add(done as u64).ok_or(ClientError::Local {
                what: "offset overflows",
                errno: Errno::OVERFLOW,
            })?;
            let count = u32::try_from(n).unwrap_or(u32::MAX);
            let req = Request::RegionRead(proto::RegionAccess {
                offset: at,
                region: index,
                count,
            });
            let dst = &mut buf[done..done + n];
            self.call(&req, &[], |r, _| match r {
                Reply::RegionRead(d)
                    if d.offset == at && d.region == index && d.data.len() == dst.len() =>
                {
                    dst.copy_from_slice(d.data);
                    Ok(())
                }
                _ => Err(ClientError::UnexpectedReply {
                    command: Command::RegionRead,
                    what: "echo or length",
                }),
            })?;
            done += n;
            if done >= buf.len() {
                return Ok(());
            }
        }
    }

    /// REGION_WRITE of `data` at `offset` (split as for reads).
    pub fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        let chunk = self.chunk();
        let mut done = 0usize;
        loop {
            let n = (data.len() - done).min(chunk);
            let at = offset.checked_add(done as u64).ok_or(ClientError::Local {
                what: "offset overflows",
                errno: Errno::OVERFLOW,
            })?;
            let req = Request::RegionWrite(proto::RegionWrite {
                offset: at,
                region: index,
                data: &data[done..done + n],
            });
            let count = u32::try_from(n).unwrap_or(u32::MAX);
            self.call(&req, &[], |r, _| match r {
                Reply::RegionWrite(a)
                    if a.offset == at && a.region == index && a.count == count =>
                {
                    Ok(())
                }
                _ => Err(ClientError::UnexpectedReply {
                    command: Command::RegionWrite,
                    what: "echo",
                }),
            })?;
            done += n;
            if done >= data.len() {
                return Ok(());
            }
        }
    }

    fn dma_flags(perm: DmaPerm) -> u32 {
        let mut f = 0;
        if perm.contains(DmaPerm::READ) {
            f |= proto::VFIO_USER_F_DMA_REGION_READ;
        }
        if perm.contains(DmaPerm::WRITE) {
            f |= proto::VFIO_USER_F_DMA_REGION_WRITE;
        }
        f
    }

    /// DMA_MAP of `size` bytes of `fd` at `offset` to `iova`. The server
    /// maps the fd; it must be a memfd sealed against shrinking (uvfio's
    /// server refuses anything else).
    pub fn dma_map_fd(
        &self,
        iova: u64,
        size: u64,
        perm: DmaPerm,
        fd: BorrowedFd<'_>,
        offset: u64,
    ) -> Result<()> {
        let req = Request::DmaMap(proto::DmaMap {
            argsz: proto::DmaMap::ARGSZ,
            flags: Self::dma_flags(perm),
            offset,
            address: iova,
            size,
        });
        self.call(&req, &[fd], |r, _| match r {
            Reply::DmaMap => Ok(()),
            _ => Self::unexpected(Command::DmaMap),
        })
    }

    /// DMA_MAP of all of `mem` at `iova`.
    pub fn dma_map_shared(&self, iova: u64, mem: &SharedMemory, perm: DmaPerm) -> Result<()> {
        self.dma_map_fd(iova, mem.len(), perm, mem.fd(), 0)
    }

    /// DMA_MAP without an fd: the server reaches `backing` (all of it, at
    /// `iova`) through DMA_READ/DMA_WRITE, which this client answers.
    pub fn dma_map_message(
        &self,
        iova: u64,
        backing: Arc<dyn DmaBacking>,
        perm: DmaPerm,
    ) -> Result<()> {
        let size = backing.len();
        let region = MsgDmaRegion {
            iova,
            size,
            perm,
            backing,
        };
        // Registered first: the server may DMA as soon as it has mapped.
        lock(&self.dma).push(region);
        let req = Request::DmaMap(proto::DmaMap {
            argsz: proto::DmaMap::ARGSZ,
            flags: Self::dma_flags(perm),
            offset: 0,
            address: iova,
            size,
        });
        let r = self.call(&req, &[], |r, _| match r {
            Reply::DmaMap => Ok(()),
            _ => Self::unexpected(Command::DmaMap),
        });
        if r.is_err() {
            lock(&self.dma).retain(|x| !(x.iova == iova && x.size == size));
        }
        r
    }

    /// DMA_UNMAP of exactly one earlier mapping.
    pub fn dma_unmap(&self, iova: u64, size: u64) -> Result<()> {
        let m = proto::DmaUnmap::new(iova, size);
        self.call(&Request::DmaUnmap(m), &[], |r, _| match r {
            Reply::DmaUnmap(e) if e.unmap.address == iova && e.unmap.size == size => Ok(()),
            _ => Self::unexpected(Command::DmaUnmap),
        })?;
        lock(&self.dma).retain(|x| !(x.iova == iova && x.size == size));
        Ok(())
    }

    /// DMA_UNMAP of everything.
    pub fn dma_unmap_all(&self) -> Result<()> {
        let m = proto::DmaUnmap {
            flags: proto::VFIO_DMA_UNMAP_FLAG_ALL,
            ..proto::DmaUnmap::new(0, 0)
        };
        self.call(&Request::DmaUnmap(m), &[], |r, _| match r {
            Reply::DmaUnmap(_) => Ok(()),
            _ => Self::unexpected(Command::DmaUnmap),
        })?;
        lock(&self.dma).clear();
        Ok(())
    }

    /// DEVICE_SET_IRQS on vectors `start..start+count` of `index`.
    pub fn set_irqs(
        &self,
        index: u32,
        start: u32,
        count: u32,
        action: proto::IrqAction,
        data: IrqSetData<'_>,
    ) -> Result<()> {
        let bools: Vec<u8>;
        let (pdata, fds): (proto::IrqData<'_>, &[BorrowedFd<'_>]) = match data {
            IrqSetData::None => (proto::IrqData::None, &[]),
            IrqSetData::Bool(b) => {
                bools = b.iter().map(|&x| u8::from(x)).collect();
                (proto::IrqData::Bool(&bools), &[])
            }
            IrqSetData::Eventfds(f) => (proto::IrqData::Eventfd, f),
        };
        let req = Request::DeviceSetIrqs(proto::SetIrqs {
            index,
            start,
            count,
            action,
            data: pdata,
        });
        self.call(&req, fds, |r, _| match r {
            Reply::DeviceSetIrqs => Ok(()),
            _ => Self::unexpected(Command::DeviceSetIrqs),
        })
    }

    /// Binds `fds` as the trigger eventfds of vectors `start..` of `index`.
    pub fn set_irq_eventfds(&self, index: u32, start: u32, fds: &[BorrowedFd<'_>]) -> Result<()> {
        let count = u32::try_from(fds.len()).map_err(|_| ClientError::Local {
            what: "too many eventfds",
            errno: Errno::INVAL,
        })?;
        self.set_irqs(
            index,
            start,
            count,
            proto::IrqAction::Trigger,
            IrqSetData::Eventfds(fds),
        )
    }

    /// Disables every vector of `index` (count 0, DATA_NONE|TRIGGER).
    pub fn disable_irqs(&self, index: u32) -> Result<()> {
        self.set_irqs(index, 0, 0, proto::IrqAction::Trigger, IrqSetData::None)
    }

    /// DEVICE_RESET.
    pub fn reset(&self) -> Result<()> {
        self.call(&Request::DeviceReset, &[], |r, _| match r {
            Reply::DeviceReset => Ok(()),
            _ => Self::unexpected(Command::DeviceReset),
        })
    }

    /// Answers the server's DMA_READ/DMA_WRITE requests for `duration`
    /// (for a caller with nothing to send while the device works); returns
    /// how many were answered.
    pub fn serve_dma(&self, duration: Duration) -> Result<usize> {
        let table = self.dma.clone();
        let limits = self.limits;
        let mut handler =
            move |chan: &Channel, msg: Message| answer_server_command(chan, &table, &limits, &msg);
        Ok(self
            .chan
            .serve_until(Instant::now() + duration, &mut handler)?)
    }

    /// Shuts the connection down; later calls fail.
    pub fn shutdown(&self) {
        self.chan.shutdown();
    }

    /// Waits up to `timeout` for the server to close the connection (EOF);
    /// returns whether it did. DMA requests arriving meanwhile are answered.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        self.serve_dma(timeout).is_err()
    }
}

fn frame_limits(limits: &DecodeLimits, config: &ClientConfig) -> FrameLimits {
    FrameLimits {
        max_msg_size: limits.max_msg_size,
        max_fds: limits.max_fds,
        frame_timeout: config.io_timeout,
    }
}
