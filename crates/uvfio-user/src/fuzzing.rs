//! A whole server connection driven by fuzz input, in process: the
//! harness behind `fuzz/fuzz_targets/session.rs` and the CI smoke test
//! (`tests/session_fuzz.rs`). Not a stable API.
//!
//! One input is one connection. Its bytes are a little program: a
//! configuration byte, then operations that send frames (well-formed
//! requests of every command, corrupted ones, raw bytes, frames split
//! across reads), attach fds of every kind (eventfds, sealed and unsealed
//! memfds, pipes, sockets, `/dev/null`), act as the client on its own
//! memory (shrink, punch holes, close), make the device DMA or interrupt
//! on its own, and switch how message-based DMA answers. Frames go
//! through the server's real receive buffer ([`RecvBuffer`], the same
//! framing and fd-attribution code as on a socket, fed with
//! [`RecvBuffer::push`]) into a real [`Session`] over a real registry,
//! group, container and device ([`device`]); only the socket and the
//! client's DMA replies are simulated.
//!
//! Besides "no panic, no SIGBUS, no hang", every step checks:
//! - each request gets at most one message back, a reply with the
//!   request's id and command that a client can decode, with at most one
//!   fd (none if the client takes none);
//! - the client's DMA mappings stay within `max_dma_maps` and
//!   `max_dma_bytes`;
//! - after the connection ends: the device is closed, its interrupts hold
//!   no eventfd, it unregisters, and (with [`Options::check_fds`]) the
//!   process holds exactly the fds it held before.

pub mod device;

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::Errno;
use uvfio_core::{DmaBacking, GroupId, RegisteredDevice, Registry};

use crate::proto::{self, Capabilities, RawHeader, Request, Version};
use crate::session::{
    Attachment, MessageDmaFactory, Output, Session, SessionConfig, SessionState, Step,
};
use crate::transport::{FrameLimits, Message, RecvBuffer};

use device::{Layout, SampleDevice};

/// Harness options.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Count `/proc/self/fd` before and after (single-threaded callers
    /// only: another thread opening files would be blamed).
    pub check_fds: bool,
}

/// Most fds one input may create (each kind costs a syscall or three).
const MAX_FDS: usize = 48;
/// Most bytes one input may send.
const MAX_STREAM: usize = 256 * 1024;

/// What one input did (for seeds and the smoke test's coverage checks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages handed to the session.
    pub messages: usize,
    /// Whether VERSION was accepted.
    pub negotiated: bool,
    /// Commands that got a successful reply (command numbers).
    pub succeeded: Vec<u16>,
    /// Commands that got an error reply, with the errno.
    pub failed: Vec<(u16, u32)>,
}

/// Runs one input with default options.
pub fn run(data: &[u8]) -> Stats {
    run_with(data, Options::default())
}

/// Runs one input; panics if an invariant (module docs) breaks.
pub fn run_with(data: &[u8], opts: Options) -> Stats {
    let before = opts.check_fds.then(open_fds);
    let stats = {
        let Some(mut h) = Harness::new(data) else {
            return Stats::default();
        };
        h.drive();
        h.finish();
        std::mem::take(&mut h.stats)
    };
    if let Some(before) = before {
        let after = open_fds();
        assert_eq!(after, before, "fds leaked by the connection");
    }
    stats
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// The input as a stream of numbers; zeros once it runs out.
struct Input<'a> {
    d: &'a [u8],
}

impl<'a> Input<'a> {
    fn done(&self) -> bool {
        self.d.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.d.split_first() {
            Some((&b, rest)) => {
                self.d = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.d.len());
        let (a, b) = self.d.split_at(n);
        self.d = b;
        a
    }
    /// An IOVA-like number: mostly small page multiples (so mappings meet),
    /// sometimes anything.
    fn addr(&mut self) -> u64 {
        match self.u8() % 8 {
            7 => self.u64(),
            6 => u64::from(self.u16()),
            _ => u64::from(self.u8() % 32) * 0x1000,
        }
    }
    /// A size-like number: mostly a few pages.
    fn size(&mut self) -> u64 {
        match self.u8() % 8 {
            7 => self.u64(),
            6 => u64::from(self.u16()),
            _ => u64::from(self.u8() % 8 + 1) * 0x1000,
        }
    }
}

/// Message-based DMA as the fuzzer decides: data, or an errno.
struct FuzzMessageDma {
    errno: Arc<AtomicI32>,
}

impl MessageDmaFactory for FuzzMessageDma {
    fn backing(&self, _iova: u64, size: u64, _n: &proto::Negotiated) -> Arc<dyn DmaBacking> {
        Arc::new(FuzzBacking {
            size,
            errno: self.errno.clone(),
        })
    }
}

#[derive(Debug)]
struct FuzzBacking {
    size: u64,
    errno: Arc<AtomicI32>,
}

impl FuzzBacking {
    fn result(&self) -> uvfio_core::Result<()> {
        match self.errno.load(Ordering::Relaxed) {
            0 => Ok(()),
            e => Err(Errno::from_raw_os_error(e)),
        }
    }
}

impl DmaBacking for FuzzBacking {
    fn len(&self) -> u64 {
        self.size
    }
    fn read(&self, _offset: u64, buf: &mut [u8]) -> uvfio_core::Result<()> {
        self.result()?;
        buf.fill(0xa5);
        Ok(())
    }
    fn write(&self, _offset: u64, _data: &[u8]) -> uvfio_core::Result<()> {
        self.result()
    }
}

/// A client-side copy of a memfd it sent.
struct ClientMem {
    fd: OwnedFd,
    sealed: bool,
}

struct Harness<'a> {
    input: Input<'a>,
    /// Kept for the connection's lifetime, like the server's.
    _registry: Registry,
    device: Option<RegisteredDevice<SampleDevice>>,
    session: Option<Session>,
    config: SessionConfig,
    rb: RecvBuffer,
    limits: FrameLimits,
    closed: bool,
    pending_fds: Vec<OwnedFd>,
    mems: Vec<ClientMem>,
    fds_made: usize,
    sent: usize,
    next_id: u16,
    dma_errno: Arc<AtomicI32>,
    msg: Message,
    out: Output,
    stats: Stats,
}

fn config_for(sel: u8) -> SessionConfig {
    let d = SessionConfig::default();
    match sel % 4 {
        0 => d,
        1 => d
            .max_dma_maps(4)
            .max_dma_bytes(64 * 1024)
            .max_held_fds(3)
            .max_msg_fds(2)
            .max_data_xfer_size(4096),
        2 => d.max_data_xfer_size(64).max_held_fds(8),
        _ => d.max_msg_fds(0).max_held_fds(0).max_dma_maps(1),
    }
}

impl<'a> Harness<'a> {
    fn new(data: &'a [u8]) -> Option<Harness<'a>> {
        let mut input = Input { d: data };
        let flags = input.u8();
        let config = config_for(flags >> 1);
        let registry = Registry::default();
        let dev = SampleDevice::new(Layout::FUZZ).ok()?;
        let device = registry
            .init(dev, "fuzz0", GroupId(1))
            .ok()?
            .register()
            .ok()?;
        let reg = registry.clone();
        let attach = Box::new(move || -> Result<Attachment, Errno> {
            let (handle, group, container) = reg.open_device(GroupId(1), "fuzz0")?.into_parts();
            Ok(Attachment {
                handle,
                group,
                container,
            })
        });
        let dma_errno = Arc::new(AtomicI32::new(0));
        let session = Session::new(
            config.clone(),
            attach,
            FuzzMessageDma {
                errno: dma_errno.clone(),
            },
        );
        let limits = crate::server::pre_negotiation_limits(&config, std::time::Duration::ZERO);
        let mut h = Harness {
            input,
            _registry: registry,
            device: Some(device),
            session: Some(session),
            config,
            rb: RecvBuffer::new(),
            limits,
            closed: false,
            pending_fds: Vec::new(),
            mems: Vec::new(),
            fds_made: 0,
            sent: 0,
            next_id: 0,
            dma_errno,
            msg: Message::default(),
            out: Output::default(),
            stats: Stats::default(),
        };
        if flags & 1 != 0 {
            let caps = Capabilities {
                max_msg_fds: u32::from(flags >> 3) % 3,
                ..Capabilities::default()
            };
            h.send_request(&Request::Version(Version::ours(caps)), false);
        }
        Some(h)
    }

    fn drive(&mut self) {
        while !self.input.done() && !self.closed {
            match self.input.u8() % 12 {
                0 => {
                    let n = usize::from(self.input.u8());
                    let bytes = self.input.bytes(n).to_vec();
                    self.send(&bytes);
                }
                1..=3 => {
                    let no_reply = self.input.u8() % 8 == 7;
                    self.structured(no_reply);
                }
                4 => self.split(),
                5 => self.corrupted(),
                6 => {
                    let kind = self.input.u8();
                    self.make_fd(kind);
                }
                7 => self.client_memory(),
                8 => self.device_acts(),
                9 => {
                    let e = match self.input.u8() % 4 {
                        0 | 1 => 0,
                        2 => Errno::IO.raw_os_error(),
                        _ => Errno::TIMEDOUT.raw_os_error(),
                    };
                    self.dma_errno.store(e, Ordering::Relaxed);
                }
                10 => self.map_burst(),
                _ => {
                    let kind = self.input.u8();
                    self.make_fd(kind);
                    self.structured(false);
                }
            }
        }
    }

    /// End of input: the client goes away; everything must be released.
    fn finish(&mut self) {
        // EOF: a partial message is a truncated stream either way.
        self.pending_fds.clear();
        let session = self.session.take();
        drop(session);
        self.mems.clear();
        let Some(device) = self.device.take() else {
            return;
        };
        assert_eq!(
            device.open_count(),
            0,
            "device still open after the session"
        );
        for index in 0..5 {
            assert!(
                !device.driver().irq_lines().enabled(index),
                "eventfds still bound to IRQ index {index} after the session"
            );
        }
        let dev = device.unregister();
        assert!(dev.dma().is_none(), "device kept its DMA after close");
    }

    fn id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// One chunk of the stream, with the pending fds.
    fn send(&mut self, bytes: &[u8]) {
        if self.closed || self.sent.saturating_add(bytes.len()) > MAX_STREAM {
            self.closed = true;
            return;
        }
        self.sent += bytes.len();
        let fds = std::mem::take(&mut self.pending_fds);
        if self.rb.push(bytes, fds, &self.limits).is_err() {
            self.closed = true;
            return;
        }
        self.pump();
    }

    fn send_request(&mut self, req: &Request<'_>, no_reply: bool) {
        let id = self.id();
        let mut bytes = Vec::new();
        if req.encode(id, no_reply, &mut bytes).is_ok() {
            self.send(&bytes);
        }
    }

    /// Hands every complete message to the session.
    fn pump(&mut self) {
        while !self.closed {
            match self.rb.pop(&self.limits, &mut self.msg) {
                Ok(true) => self.handle_one(),
                Ok(false) => return,
                Err(_) => self.closed = true,
            }
        }
    }

    fn handle_one(&mut self) {
        let Some(session) = self.session.as_mut() else {
            self.closed = true;
            return;
        };
        let raw = RawHeader::parse(&self.msg.header);
        let step = session.handle(&mut self.msg, &mut self.out);
        assert!(self.msg.fds.is_empty(), "the session must consume the fds");
        // What the client said it can receive (none before VERSION).
        let client_fds = session
            .negotiated()
            .map_or(0, proto::Negotiated::max_send_fds);
        check_output(&raw, &self.out, client_fds, &self.config);
        self.stats.messages += 1;
        if self.out.bytes.len() >= 16 {
            let mut hb = [0u8; 16];
            hb.copy_from_slice(&self.out.bytes[..16]);
            let h = RawHeader::parse(&hb);
            if h.flags & proto::VFIO_USER_F_ERROR != 0 {
                self.stats.failed.push((h.command, h.error));
            } else {
                self.stats.succeeded.push(h.command);
            }
        }
        if session.state() == SessionState::Ready {
            self.stats.negotiated = true;
        }
        self.out.clear();
        if let Some(l) = session.take_new_limits() {
            self.limits = FrameLimits {
                frame_timeout: self.limits.frame_timeout,
                ..l
            };
        }
        if let Some(att) = session.attachment() {
            let maps = att.container.dma_space().mappings();
            assert!(maps.len() <= self.config.max_dma_maps as usize);
            let bytes: u64 = maps.iter().map(|m| m.size).sum();
            assert!(bytes <= self.config.max_dma_bytes, "max_dma_bytes exceeded");
        }
        if step == Step::Close {
            assert_ne!(session.state(), SessionState::Ready);
            self.closed = true;
        }
    }

    fn make_fd(&mut self, kind: u8) {
        if self.fds_made >= MAX_FDS {
            return;
        }
        self.fds_made += 1;
        let pages = u64::from(self.input.u8() % 8 + 1);
        let fd = match kind % 10 {
            0 | 9 => uvfio_core::irq::eventfd().ok(),
            1 => self.memfd(
                pages * 0x1000,
                SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
            ),
            2 => self.memfd(pages * 0x1000, SealFlags::SHRINK),
            3 => self.memfd(pages * 0x1000, SealFlags::empty()),
            4 => rustix::fs::memfd_create("fuzz-nosealing", MemfdFlags::CLOEXEC)
                .ok()
                .filter(|fd| rustix::fs::ftruncate(fd, pages * 0x1000).is_ok()),
            5 => rustix::pipe::pipe().ok().map(|(r, _w)| r),
            6 => rustix::net::socketpair(
                rustix::net::AddressFamily::UNIX,
                rustix::net::SocketType::STREAM,
                rustix::net::SocketFlags::CLOEXEC,
                None,
            )
            .ok()
            .map(|(a, _b)| a),
            7 => rustix::fs::open(
                "/dev/null",
                rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok(),
            _ => rustix::fs::open(
                "/",
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok(),
        };
        if let Some(fd) = fd {
            self.pending_fds.push(fd);
        }
    }

    /// A memfd of `size` with `seals`; the client keeps a copy.
    fn memfd(&mut self, size: u64, seals: SealFlags) -> Option<OwnedFd> {
        let fd =
            rustix::fs::memfd_create("fuzz-mem", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
                .ok()?;
        rustix::fs::ftruncate(&fd, size).ok()?;
        if !seals.is_empty() {
            rustix::fs::fcntl_add_seals(&fd, seals).ok()?;
        }
        let copy = fd.try_clone().ok()?;
        self.mems.push(ClientMem {
            fd: copy,
            sealed: seals.contains(SealFlags::SHRINK),
        });
        Some(fd)
    }

    /// The client does things to its own memory.
    fn client_memory(&mut self) {
        if self.mems.is_empty() {
            return;
        }
        let i = usize::from(self.input.u8()) % self.mems.len();
        let op = self.input.u8() % 4;
        let arg = u64::from(self.input.u16());
        match op {
            0 => {
                let m = &self.mems[i];
                let cur = rustix::fs::fstat(&m.fd).map_or(0, |s| s.st_size as u64);
                let r = rustix::fs::ftruncate(&m.fd, arg);
                if m.sealed && arg < cur {
                    assert_eq!(r, Err(Errno::PERM), "a sealed memfd shrank");
                }
            }
            1 => {
                // Punching a hole frees pages; shmem refills them with
                // zeros on the next access, no SIGBUS.
                let m = &self.mems[i];
                let _ = rustix::fs::fallocate(
                    &m.fd,
                    rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                    0,
                    arg.max(1) * 64,
                );
            }
            2 => {
                let m = &self.mems[i];
                let _ = rustix::io::pwrite(&m.fd, &[0x3c; 64], arg);
            }
            _ => {
                self.mems.swap_remove(i);
            }
        }
    }

    /// The device DMAs or interrupts on its own (a timer, an input).
    fn device_acts(&mut self) {
        let kind = self.input.u8() % 3;
        let Some(device) = &self.device else { return };
        let d = device.driver();
        match kind {
            0 | 1 => {
                let addr = self.input.addr();
                let len = usize::from(self.input.u16() % 0x2000);
                let Some(dma) = d.dma() else { return };
                if kind == 0 {
                    let mut buf = vec![0u8; len];
                    let _ = dma.read(addr, &mut buf);
                } else {
                    let _ = dma.write(addr, &vec![0x5au8; len]);
                }
            }
            _ => {
                let index = u32::from(self.input.u8() % 5);
                let vector = u32::from(self.input.u8() % 8);
                let _ = d.irq_lines().trigger(index, vector);
            }
        }
    }

    /// Many DMA_MAPs in a row (to reach the limits), mostly without fds.
    fn map_burst(&mut self) {
        let n = self.input.u8() % 40;
        let base = u64::from(self.input.u8()) * 0x10_0000;
        let size = u64::from(self.input.u8() % 4 + 1) * 0x1000;
        let with_fd = self.input.u8() % 4 == 3;
        for i in 0..u64::from(n) {
            if with_fd {
                self.make_fd(1);
            }
            let req = Request::DmaMap(proto::DmaMap {
                argsz: proto::DmaMap::ARGSZ,
                flags: proto::VFIO_USER_F_DMA_REGION_READ | proto::VFIO_USER_F_DMA_REGION_WRITE,
                offset: 0,
                address: base + i * size,
                size,
            });
            self.send_request(&req, false);
        }
    }

    /// A well-formed request, sent whole.
    fn structured(&mut self, no_reply: bool) {
        let id = self.id();
        if let Some(bytes) = self.build(id, no_reply) {
            for b in bytes {
                self.send(&b);
            }
        }
    }

    /// A request sent in two pieces, the fds with either.
    fn split(&mut self) {
        let id = self.id();
        let at = usize::from(self.input.u8());
        let fds_first = self.input.u8().is_multiple_of(2);
        let Some(frames) = self.build(id, false) else {
            return;
        };
        for b in frames {
            let at = at.min(b.len());
            let (x, y) = b.split_at(at);
            if fds_first {
                self.send(x);
                self.send(y);
            } else {
                let fds = std::mem::take(&mut self.pending_fds);
                self.send(x);
                self.pending_fds = fds;
                self.send(y);
            }
        }
    }

    /// A request with one header field changed.
    fn corrupted(&mut self) {
        let id = self.id();
        let field = self.input.u8();
        let value = self.input.u32();
        let Some(frames) = self.build(id, false) else {
            return;
        };
        for mut b in frames {
            if b.len() < 16 {
                continue;
            }
            match field % 6 {
                0 => b[2..4].copy_from_slice(&value.to_le_bytes()[..2]),
                1 => b[4..8].copy_from_slice(&value.to_le_bytes()),
                2 => {
                    // msg_size off by a little: the body is short or long.
                    let size = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                    let delta = (value % 33) as i64 - 16;
                    let new = (i64::from(size) + delta).max(0);
                    b[4..8].copy_from_slice(&u32::try_from(new).unwrap_or(0).to_le_bytes());
                }
                3 => b[8..12].copy_from_slice(&value.to_le_bytes()),
                4 => b[12..16].copy_from_slice(&value.to_le_bytes()),
                _ => {
                    // A body byte.
                    let n = b.len();
                    if n > 16 {
                        let i = 16 + (value as usize % (n - 16));
                        b[i] ^= (value >> 24) as u8 | 1;
                    }
                }
            }
            self.send(&b);
        }
    }

    /// Encodes the request the input describes (some are several frames).
    fn build(&mut self, id: u16, no_reply: bool) -> Option<Vec<Vec<u8>>> {
        let mut frames = Vec::new();
        let sel = self.input.u8() % 20;
        let mut enc = |req: &Request<'_>| -> bool {
            let mut v = Vec::new();
            let ok = req.encode(id, no_reply, &mut v).is_ok();
            if ok {
                frames.push(v);
            }
            ok
        };
        let inp = &mut self.input;
        match sel {
            0 => {
                // Zeros give a valid proposal.
                let caps = Capabilities {
                    max_msg_fds: [1, 0, 2, 16][usize::from(inp.u8() % 4)],
                    max_data_xfer_size: match inp.u8() % 4 {
                        0 => proto::DEFAULT_MAX_DATA_XFER_SIZE,
                        1 => 4096,
                        2 => 64,
                        _ => inp.u32(),
                    },
                    max_dma_maps: match inp.u16() {
                        0 => proto::DEFAULT_CAP_MAX_DMA_MAPS,
                        n => u32::from(n - 1),
                    },
                    pgsizes: if inp.u8() % 4 == 3 { inp.u64() } else { 4096 },
                    write_multiple: inp.u8() % 2 == 1,
                    ..Capabilities::default()
                };
                let v = Version {
                    major: u16::from(inp.u8() % 8 == 7),
                    minor: [proto::VFIO_USER_MINOR, 0, 1, 3][usize::from(inp.u8() % 4)],
                    capabilities: Some(caps),
                };
                enc(&Request::Version(v));
            }
            1 => {
                // VERSION with fuzzed JSON.
                let n = usize::from(inp.u8());
                let json = inp.bytes(n);
                let mut b = Vec::new();
                let size = u32::try_from(16 + 4 + json.len()).unwrap_or(u32::MAX);
                b.extend_from_slice(&id.to_le_bytes());
                b.extend_from_slice(&proto::VFIO_USER_VERSION.to_le_bytes());
                b.extend_from_slice(&size.to_le_bytes());
                b.extend_from_slice(&0u32.to_le_bytes());
                b.extend_from_slice(&0u32.to_le_bytes());
                b.extend_from_slice(&[0, 0, 2, 0]);
                b.extend_from_slice(json);
                frames.push(b);
            }
            2 => {
                let m = proto::DmaMap {
                    argsz: proto::DmaMap::ARGSZ,
                    flags: [3, 1, 2, 0][usize::from(inp.u8() % 4)],
                    offset: if inp.u8() % 4 == 3 { inp.addr() } else { 0 },
                    address: inp.addr(),
                    size: inp.size(),
                };
                enc(&Request::DmaMap(m));
            }
            3 => {
                let kind = inp.u8() % 4;
                let mut m = proto::DmaUnmap::new(inp.addr(), inp.size());
                match kind {
                    0 => {
                        m.flags = proto::VFIO_DMA_UNMAP_FLAG_ALL;
                        m.address = 0;
                        m.size = 0;
                    }
                    1 => {
                        let pgsize = if inp.u8() % 2 == 1 { inp.u64() } else { 4096 };
                        let size = u64::from(inp.u16() % 4096);
                        m.flags = proto::VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;
                        m.dirty_bitmap = Some(proto::DirtyBitmap { pgsize, size });
                        m.argsz = m
                            .argsz
                            .saturating_add(16)
                            .saturating_add(u32::try_from(size).unwrap_or(0));
                    }
                    _ => {}
                }
                enc(&Request::DmaUnmap(m));
            }
            4 => {
                enc(&Request::DeviceGetInfo(proto::DeviceInfoRequest {
                    argsz: 16 + u32::from(inp.u8() % 32),
                }));
            }
            5 => {
                enc(&Request::DeviceGetRegionInfo(proto::RegionInfoRequest {
                    argsz: 32 + u32::from(inp.u8()),
                    index: u32::from(inp.u8() % 12),
                }));
            }
            6 => {
                enc(&Request::DeviceGetRegionIoFds(proto::RegionIoFdsRequest {
                    argsz: 16 + u32::from(inp.u8()),
                    index: u32::from(inp.u8() % 12),
                }));
            }
            7 => {
                enc(&Request::DeviceGetIrqInfo(proto::IrqInfoRequest {
                    argsz: 16,
                    index: u32::from(inp.u8() % 7),
                }));
            }
            8 => {
                let index = u32::from(inp.u8() % 6);
                let start = u32::from(inp.u8() % 10);
                let count = u32::from(inp.u8() % 10);
                let action = match inp.u8() % 3 {
                    0 => proto::IrqAction::Trigger,
                    1 => proto::IrqAction::Mask,
                    _ => proto::IrqAction::Unmask,
                };
                let data = match inp.u8() % 3 {
                    0 => proto::IrqData::Eventfd,
                    1 => proto::IrqData::None,
                    _ => proto::IrqData::Bool(inp.bytes(count as usize)),
                };
                enc(&Request::DeviceSetIrqs(proto::SetIrqs {
                    index,
                    start,
                    count,
                    action,
                    data,
                }));
            }
            9 => {
                enc(&Request::RegionRead(proto::RegionAccess {
                    region: u32::from(inp.u8() % 10),
                    offset: if inp.u8() % 8 == 7 {
                        inp.u64()
                    } else {
                        u64::from(inp.u16() % 0x2000)
                    },
                    count: if inp.u8() % 8 == 7 {
                        inp.u32()
                    } else {
                        u32::from(inp.u16() % 0x1000)
                    },
                }));
            }
            10 => {
                let region = u32::from(inp.u8() % 10);
                let offset = u64::from(inp.u16() % 0x2000);
                let n = usize::from(inp.u8());
                let data = inp.bytes(n);
                enc(&Request::RegionWrite(proto::RegionWrite {
                    offset,
                    region,
                    data,
                }));
            }
            11 => {
                // Program a DMA and ring the doorbell: three writes.
                let addr = inp.addr();
                let len = u32::from(inp.u16() % 0x900);
                let cmd = u32::from(inp.u8() % 3);
                for (off, data) in [
                    (device::REG_DMA_ADDR, addr.to_le_bytes().to_vec()),
                    (device::REG_DMA_LEN, len.to_le_bytes().to_vec()),
                    (device::REG_DOORBELL, cmd.to_le_bytes().to_vec()),
                ] {
                    enc(&Request::RegionWrite(proto::RegionWrite {
                        offset: off,
                        region: device::BAR0,
                        data: &data,
                    }));
                }
            }
            12 => {
                enc(&Request::DeviceReset);
            }
            13 => {
                let n = usize::from(inp.u8() % 6);
                let mut datas = Vec::new();
                let mut spec = Vec::new();
                for _ in 0..n {
                    let region = u32::from(inp.u8() % 10);
                    let offset = u64::from(inp.u16() % 0x1000);
                    let len = usize::from(inp.u8() % 9);
                    datas.push(inp.bytes(len));
                    spec.push((region, offset));
                }
                let entries: Vec<proto::WriteMultiEntry<'_>> = spec
                    .iter()
                    .zip(&datas)
                    .map(|(&(region, offset), data)| proto::WriteMultiEntry {
                        offset,
                        region,
                        data,
                    })
                    .collect();
                if let Ok(m) = proto::RegionWriteMulti::new(&entries) {
                    enc(&Request::RegionWriteMulti(m));
                }
            }
            14 => {
                let op = match inp.u8() % 4 {
                    0 => proto::FeatureOp::Get,
                    1 => proto::FeatureOp::Set,
                    _ => proto::FeatureOp::Probe {
                        get: inp.u8().is_multiple_of(2),
                        set: inp.u8().is_multiple_of(2),
                    },
                };
                let feature = u16::from(inp.u8() % 10);
                let argsz_extra = u32::from(inp.u8());
                let data = match inp.u8() % 5 {
                    0 => proto::FeatureData::Empty,
                    1 => proto::FeatureData::MigDeviceState {
                        device_state: proto::MigState::from_raw(u32::from(inp.u8() % 8))
                            .unwrap_or(proto::MigState::Running),
                        data_fd: u32::MAX,
                    },
                    2 => {
                        let n = usize::from(inp.u8() % 4);
                        let ranges = (0..n)
                            .map(|_| proto::DmaLoggingRange {
                                iova: inp.addr(),
                                length: inp.size(),
                            })
                            .collect();
                        proto::FeatureData::DmaLogging(proto::DmaLoggingControl {
                            page_size: if inp.u8().is_multiple_of(2) {
                                4096
                            } else {
                                inp.u64()
                            },
                            ranges,
                        })
                    }
                    3 => proto::FeatureData::DmaLoggingReport(proto::DmaLoggingReport {
                        iova: inp.addr(),
                        length: inp.size(),
                        page_size: if inp.u8().is_multiple_of(2) {
                            4096
                        } else {
                            inp.u64()
                        },
                        bitmap: &[],
                    }),
                    _ => {
                        let n = usize::from(inp.u8() % 32);
                        proto::FeatureData::Raw(inp.bytes(n))
                    }
                };
                let f = proto::DeviceFeature {
                    argsz: 0,
                    feature,
                    op,
                    data,
                };
                // argsz: what the request needs plus some room.
                let mut v = Vec::new();
                if Request::DeviceFeature(f.clone())
                    .encode(id, no_reply, &mut v)
                    .is_ok()
                    && v.len() >= 20
                {
                    let need = u32::try_from(v.len() - 16).unwrap_or(0);
                    let argsz = need.saturating_add(argsz_extra);
                    v[16..20].copy_from_slice(&argsz.to_le_bytes());
                    frames.push(v);
                }
            }
            15 => {
                let size = u32::from(inp.u16() % 0x2000);
                enc(&Request::MigDataRead(proto::MigDataRead {
                    argsz: 8 + size + u32::from(inp.u8() % 2),
                    size,
                }));
            }
            16 => {
                let n = usize::from(inp.u16() % 0x1100);
                let data = inp.bytes(n);
                enc(&Request::MigDataWrite(proto::MigDataWrite::new(data)));
            }
            17 => {
                enc(&Request::DmaRead(proto::DmaAccess {
                    address: inp.addr(),
                    count: u64::from(inp.u8()),
                }));
            }
            18 => {
                // An unsolicited reply.
                let mut b = Vec::new();
                b.extend_from_slice(&id.to_le_bytes());
                b.extend_from_slice(&u16::from(inp.u8() % 20).to_le_bytes());
                b.extend_from_slice(&16u32.to_le_bytes());
                b.extend_from_slice(&proto::VFIO_USER_F_TYPE_REPLY.to_le_bytes());
                b.extend_from_slice(&0u32.to_le_bytes());
                frames.push(b);
            }
            _ => {
                // A command with no body or an unknown number.
                let mut b = Vec::new();
                let command = u16::from(inp.u8() % 24);
                b.extend_from_slice(&id.to_le_bytes());
                b.extend_from_slice(&command.to_le_bytes());
                b.extend_from_slice(&16u32.to_le_bytes());
                b.extend_from_slice(&0u32.to_le_bytes());
                b.extend_from_slice(&0u32.to_le_bytes());
                frames.push(b);
            }
        }
        (!frames.is_empty()).then_some(frames)
    }
}

/// What came back for one request must be one well-formed reply to it.
fn check_output(req: &RawHeader, out: &Output, client_fds: u32, config: &SessionConfig) {
    if out.bytes.is_empty() {
        assert!(out.fds.is_empty(), "fds without a message");
        return;
    }
    assert!(out.bytes.len() >= 16, "short reply");
    let mut hb = [0u8; 16];
    hb.copy_from_slice(&out.bytes[..16]);
    let h = RawHeader::parse(&hb);
    assert_eq!(
        h.msg_size as usize,
        out.bytes.len(),
        "one message per request"
    );
    assert_eq!(
        h.flags & proto::VFIO_USER_F_TYPE_MASK,
        proto::VFIO_USER_F_TYPE_REPLY,
        "not a reply"
    );
    assert_eq!(h.msg_id, req.msg_id, "reply id");
    assert_eq!(h.command, req.command, "reply command");
    assert!(out.fds.len() <= 1, "more than one fd in a reply");
    if client_fds == 0 {
        assert!(out.fds.is_empty(), "fd sent to a client that takes none");
    }
    if h.flags & proto::VFIO_USER_F_ERROR != 0 {
        assert_eq!(h.msg_size, 16, "error replies are a header");
        assert_ne!(h.error, 0, "error reply without an errno");
        return;
    }
    let limits = proto::DecodeLimits {
        max_msg_size: u32::MAX,
        max_data_xfer_size: config.max_data_xfer_size,
        max_fds: 1,
        ..proto::DecodeLimits::default()
    };
    if let Err(e) = proto::decode_message(&out.bytes, out.fds.len(), &limits) {
        panic!("reply to command {} does not decode: {e}", req.command);
    }
}

/// Writes inputs in the harness's language (see `Harness::drive` and
/// `Harness::build`), for seeds.
#[derive(Debug, Clone, Default)]
pub struct Program(pub Vec<u8>);

impl Program {
    /// An input with configuration `config` (0-3, see `config_for`) that
    /// starts with a valid VERSION if `version` (the client taking 1 fd).
    #[must_use]
    pub fn new(config: u8, version: bool) -> Program {
        Program(vec![u8::from(version) | (config % 4) << 1])
    }

    fn raw(mut self, b: &[u8]) -> Program {
        self.0.extend_from_slice(b);
        self
    }

    /// A request (selector and fields follow).
    fn req(self, no_reply: bool) -> Program {
        self.raw(&[1, if no_reply { 7 } else { 0 }])
    }

    /// An fd of `kind` (see `make_fd`) attached to the next frame.
    #[must_use]
    pub fn fd(self, kind: u8, pages: u8) -> Program {
        self.raw(&[6, kind, pages.saturating_sub(1)])
    }

    /// DEVICE_GET_INFO, then every region's and IRQ index's info.
    #[must_use]
    pub fn describe(mut self) -> Program {
        self = self.req(false).raw(&[4, 16]);
        for i in 0..10u8 {
            self = self.req(false).raw(&[5, 0, i]);
        }
        for i in 0..6u8 {
            self = self.req(false).raw(&[7, i]);
        }
        self
    }

    /// DMA_MAP of `pages` pages at page `page`, read/write.
    #[must_use]
    pub fn dma_map(self, page: u8, pages: u8) -> Program {
        self.req(false)
            .raw(&[2, 0, 0, 2, page, 2, pages.saturating_sub(1)])
    }

    /// DMA_UNMAP of exactly that mapping.
    #[must_use]
    pub fn dma_unmap(self, page: u8, pages: u8) -> Program {
        self.req(false)
            .raw(&[3, 2, 2, page, 2, pages.saturating_sub(1)])
    }

    /// DMA_UNMAP with a dirty bitmap of `bytes`.
    #[must_use]
    pub fn dma_unmap_dirty(self, page: u8, pages: u8, bytes: u16) -> Program {
        let [a, b] = bytes.to_le_bytes();
        self.req(false)
            .raw(&[3, 1, 2, page, 2, pages.saturating_sub(1), 0, a, b])
    }

    /// Programs a device DMA of `len` bytes at page `page` and rings the
    /// doorbell (`cmd` 1: to the client, 2: from it).
    #[must_use]
    pub fn doorbell(self, page: u8, len: u16, cmd: u8) -> Program {
        let [a, b] = len.to_le_bytes();
        self.req(false).raw(&[11, 2, page, a, b, cmd])
    }

    /// SET_IRQS TRIGGER|EVENTFD on `index`, `start..start+count` (send
    /// `count` eventfds first to bind, none to unbind).
    #[must_use]
    pub fn set_irqs_eventfd(self, index: u8, start: u8, count: u8) -> Program {
        self.req(false).raw(&[8, index, start, count, 0, 0])
    }

    /// SET_IRQS MASK or UNMASK (DATA_NONE) on `index`.
    #[must_use]
    pub fn mask(self, index: u8, unmask: bool) -> Program {
        self.req(false)
            .raw(&[8, index, 0, 1, if unmask { 2 } else { 1 }, 1])
    }

    /// The device fires `index`/`vector` on its own.
    #[must_use]
    pub fn device_irq(self, index: u8, vector: u8) -> Program {
        self.raw(&[8, 2, index, vector])
    }

    /// The device reads (or writes) client memory at page `page` on its own.
    #[must_use]
    pub fn device_dma(self, page: u8, len: u16, write: bool) -> Program {
        let [a, b] = len.to_le_bytes();
        self.raw(&[8, u8::from(write), 2, page, a, b])
    }

    /// The client shrinks (`op` 0), punches (1), writes (2) or closes (3)
    /// its copy of memfd `i`.
    #[must_use]
    pub fn client(self, i: u8, op: u8, arg: u16) -> Program {
        let [a, b] = arg.to_le_bytes();
        self.raw(&[7, i, op, a, b])
    }

    /// Message DMA answers with an errno from now on (0: data, 2: EIO,
    /// 3: ETIMEDOUT).
    #[must_use]
    pub fn dma_answers(self, sel: u8) -> Program {
        self.raw(&[9, sel])
    }

    /// REGION_READ.
    #[must_use]
    pub fn read(self, region: u8, offset: u16, count: u16) -> Program {
        let [a, b] = offset.to_le_bytes();
        let [c, d] = count.to_le_bytes();
        self.req(false).raw(&[9, region, 0, a, b, 0, c, d])
    }

    /// REGION_WRITE of `data`.
    #[must_use]
    pub fn write(self, region: u8, offset: u16, data: &[u8], no_reply: bool) -> Program {
        let [a, b] = offset.to_le_bytes();
        let n = u8::try_from(data.len()).unwrap_or(u8::MAX);
        self.req(no_reply)
            .raw(&[10, region, a, b, n])
            .raw(&data[..usize::from(n)])
    }

    /// DEVICE_FEATURE: `op` 0 GET, 1 SET, 2 PROBE; `data` selector 0
    /// empty, 1 MIG_DEVICE_STATE (then the state), 2 DMA_LOGGING (no
    /// ranges, 4 KiB pages), 3 DMA_LOGGING_REPORT (then page, pages).
    #[must_use]
    pub fn feature(self, feature: u8, op: u8, data: &[u8]) -> Program {
        let p = self.req(false).raw(&[14, op]);
        let p = if op >= 2 { p.raw(&[0, 0]) } else { p };
        p.raw(&[feature, 64]).raw(data)
    }

    /// MIG_DATA_READ of `size` bytes.
    #[must_use]
    pub fn mig_read(self, size: u16) -> Program {
        let [a, b] = size.to_le_bytes();
        self.req(false).raw(&[15, a, b, 0])
    }

    /// MIG_DATA_WRITE of `n` bytes of whatever follows.
    #[must_use]
    pub fn mig_write(self, n: u16) -> Program {
        let [a, b] = n.to_le_bytes();
        let data = vec![0u8; usize::from(n)];
        self.req(false).raw(&[16, a, b]).raw(&data)
    }

    /// Raw bytes on the stream.
    #[must_use]
    pub fn garbage(self, bytes: &[u8]) -> Program {
        let n = u8::try_from(bytes.len()).unwrap_or(u8::MAX);
        self.raw(&[0, n]).raw(&bytes[..usize::from(n)])
    }

    /// DEVICE_GET_INFO with header field `field` (see `corrupted`) set to
    /// `value`.
    #[must_use]
    pub fn corrupt(self, field: u8, value: u32) -> Program {
        self.raw(&[5, field])
            .raw(&value.to_le_bytes())
            .raw(&[4, 16])
    }

    /// DEVICE_GET_INFO sent in two reads split at `at`.
    #[must_use]
    pub fn split_info(self, at: u8) -> Program {
        self.raw(&[4, at, 0, 4, 16])
    }

    /// `n` DMA_MAPs of `pages` pages from MiB `base` on.
    #[must_use]
    pub fn map_burst(self, n: u8, base: u8, pages: u8, with_fd: bool) -> Program {
        self.raw(&[
            10,
            n,
            base,
            pages.saturating_sub(1),
            if with_fd { 3 } else { 0 },
        ])
    }

    /// DEVICE_RESET.
    #[must_use]
    pub fn reset(self) -> Program {
        self.req(false).raw(&[12])
    }

    /// The bytes.
    #[must_use]
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Seeds worth starting from: a negotiation followed by each family of
/// commands.
#[must_use]
pub fn seeds() -> Vec<Vec<u8>> {
    let p = Program::new;
    vec![
        p(0, true).describe(),
        // Client memory: map a sealed memfd, DMA both ways, the client
        // tries to pull it away, the device keeps DMAing, unmap.
        p(0, true)
            .fd(1, 2)
            .dma_map(1, 2)
            .doorbell(1, 0x100, 1)
            .doorbell(1, 0x100, 2)
            .client(0, 0, 0)
            .client(0, 1, 64)
            .client(0, 3, 0)
            .device_dma(1, 0x2000, false)
            .device_dma(1, 0x800, true)
            .dma_unmap(1, 2),
        // Unsealed and odd fds for DMA_MAP.
        p(0, true)
            .fd(3, 1)
            .dma_map(4, 1)
            .fd(5, 1)
            .dma_map(4, 1)
            .fd(6, 1)
            .dma_map(4, 1)
            .fd(4, 1)
            .dma_map(4, 1)
            .fd(2, 1)
            .dma_map(4, 1)
            .client(0, 0, 0),
        // Interrupts.
        p(0, true)
            .fd(0, 1)
            .fd(0, 1)
            .set_irqs_eventfd(2, 0, 2)
            .device_irq(2, 1)
            .fd(0, 1)
            .set_irqs_eventfd(1, 0, 1)
            .set_irqs_eventfd(2, 0, 2)
            .fd(0, 1)
            .set_irqs_eventfd(0, 0, 1)
            .mask(0, false)
            .device_irq(0, 0)
            .mask(0, true)
            .set_irqs_eventfd(0, 0, 1),
        // Message DMA, then failing message DMA.
        p(0, true)
            .dma_map(8, 4)
            .doorbell(8, 0x800, 1)
            .doorbell(8, 0x800, 2)
            .dma_answers(2)
            .doorbell(8, 0x10, 2)
            .dma_answers(3)
            .device_dma(8, 16, true),
        // Dirty logging and the legacy dirty bitmap.
        p(0, true)
            .fd(1, 4)
            .dma_map(2, 4)
            .feature(6, 1, &[2, 0, 0])
            .doorbell(2, 0x200, 1)
            .feature(8, 0, &[3, 2, 2, 2, 3, 0])
            .dma_unmap_dirty(2, 4, 8)
            .feature(7, 1, &[2, 0, 0]),
        // Migration: save, then resume what was saved.
        p(0, true)
            .write(0, 0x40, &[1, 2, 3, 4], false)
            .feature(1, 0, &[0])
            .feature(2, 1, &[1, 3])
            .mig_read(0x800)
            .mig_read(0x1000)
            .feature(2, 1, &[1, 1])
            .feature(2, 1, &[1, 4])
            .mig_write(0x1000)
            .feature(2, 1, &[1, 2])
            .reset(),
        // Region accesses, posted writes, the mmap-able BAR.
        p(0, true)
            .write(7, 4, &[0xff; 4], true)
            .read(7, 0, 64)
            .write(2, 0x1000, &[9; 16], false)
            .read(2, 0x1000, 16)
            .read(0, 0xffc, 8)
            .read(5, 0, 4),
        // The small limits: too many maps, too many held fds.
        p(1, true)
            .map_burst(6, 1, 1, false)
            .fd(0, 1)
            .fd(0, 1)
            .set_irqs_eventfd(2, 0, 2)
            .fd(0, 1)
            .fd(0, 1)
            .set_irqs_eventfd(2, 2, 2),
        // Framing: garbage before VERSION, split and corrupted frames.
        p(0, false).garbage(b"GET / HTTP/1.1\r\n\r\n"),
        p(0, true)
            .split_info(7)
            .split_info(20)
            .corrupt(2, 3)
            .corrupt(3, 0x40)
            .corrupt(1, 8)
            .describe(),
    ]
    .into_iter()
    .map(Program::into_bytes)
    .collect()
}

/// Inputs that once broke an invariant, by name (kept as regression
/// tests and corpus entries).
#[must_use]
pub fn regressions() -> Vec<(&'static str, Vec<u8>)> {
    let p = Program::new;
    vec![
        // A socket bound as an "eventfd": once its peer was gone, the
        // device's interrupt was a write raising SIGPIPE (found by the
        // session fuzzer; now EINVAL: SET_IRQS takes eventfds only).
        (
            "sigpipe-socket-as-eventfd",
            p(0, true)
                .fd(6, 1)
                .set_irqs_eventfd(1, 0, 1)
                .dma_map(1, 1)
                .doorbell(1, 16, 1)
                .device_irq(1, 0)
                .into_bytes(),
        ),
        (
            "sigpipe-pipe-as-eventfd",
            p(0, true)
                .fd(5, 1)
                .set_irqs_eventfd(4, 0, 1)
                .device_irq(4, 0)
                .into_bytes(),
        ),
    ]
}

/// A small deterministic mutator (xorshift) for the smoke test: flips,
/// inserts, deletes, splices of seeds.
pub fn mutate(data: &mut Vec<u8>, seed: &mut u64, pool: &[Vec<u8>]) {
    let mut next = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    let rounds = 1 + next() % 4;
    for _ in 0..rounds {
        let r = next();
        let len = data.len();
        match r % 6 {
            0 if len > 0 => {
                let i = (next() as usize) % len;
                data[i] ^= 1 << (next() % 8);
            }
            1 if len > 0 => {
                let i = (next() as usize) % len;
                data[i] = next() as u8;
            }
            2 => {
                let i = (next() as usize) % (len + 1);
                data.insert(i, next() as u8);
            }
            3 if len > 1 => {
                let i = (next() as usize) % len;
                data.remove(i);
            }
            4 if !pool.is_empty() => {
                let other = &pool[(next() as usize) % pool.len()];
                let i = (next() as usize) % (len + 1);
                let tail: Vec<u8> = other.iter().skip(1).copied().collect();
                data.splice(i..i, tail);
            }
            _ => {
                let i = (next() as usize) % (len + 1);
                let n = (next() % 16) as usize;
                let fill: Vec<u8> = (0..n).map(|_| next() as u8).collect();
                data.splice(i..i, fill);
            }
        }
    }
    data.truncate(4096);
}
