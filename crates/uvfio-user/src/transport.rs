//! Framing over an `AF_UNIX` stream socket, with fds as `SCM_RIGHTS`.
//!
//! One message is read as the spec and every real peer frame it: `recvmsg`
//! the 16-byte header (collecting any fds that came with it), take
//! `msg_size` from it, check it against the cap, then read exactly
//! `msg_size - 16` more bytes into a buffer the caller reuses. Nothing here
//! interprets the message beyond its size: validation is [`crate::proto`]'s
//! job, policy the session's.
//!
//! The rules live in one place, [`RecvBuffer::recv`]. A [`RecvBuffer`]
//! normally reads ahead (as much as the socket has, so a message whose
//! header and body arrive together costs one `recvmsg`); the free
//! [`recv_message`] is the same code in a mode that never reads past the
//! current frame, for peers that keep no buffer between messages.
//!
//! Invariants:
//! - Received fds become [`OwnedFd`]s at once (rustix's ancillary buffer
//!   does that), so every error path closes them by dropping.
//! - `MSG_CTRUNC` (more fds than our control buffer holds) and more fds
//!   than the configured maximum make the message invalid: the body is
//!   still consumed so the stream stays framed, every fd received with it
//!   is closed, and [`Message::fds_rejected`] tells the caller to answer it
//!   with an error.
//! - An EOF before the first byte of a message is a clean close; an EOF
//!   inside a message, a size outside `16..=max_msg_size` and a message
//!   not finished within [`FrameLimits::frame_timeout`] of its first byte
//!   (a slow drip counts, not just one long stall) make the stream
//!   unreadable ([`TransportError::is_fatal`]).
//! - A [`RecvBuffer`] (and so [`recv_message`], within its one message)
//!   holds at most `max_fds` received fds at a time and
//!   at most [`MAX_FD_CHUNKS`] separately received batches of them: fds
//!   beyond are closed at once (their message is rejected), and a peer
//!   that keeps sending fds in tiny pieces is cut off
//!   ([`TransportError::FdFlood`]), so no peer can make the process run
//!   out of fds or grow a list without bound.
//! - Sends carry the fds on the first `sendmsg` and loop over short writes;
//!   `MSG_NOSIGNAL` keeps a vanished peer from raising `SIGPIPE`.
//!
//! No `unsafe`: rustix's `sendmsg`/`recvmsg` and ancillary buffers are safe.
//!
//! # Where the per-message syscalls are issued
//!
//! [`RecvBuffer::recv`] and [`send_message`] (and the channel functions
//! around them) are `#[inline(always)]`, so that the server's serving loop
//! and the client's call issue their `recvmsg`/`send` from their own frame.
//! On the project's VM (AMD Zen 4 guest, SRSO "Safe RET, no microcode") the
//! first `ret` after a syscall into a frame entered before it costs
//! 0.4–1 µs, a whole-pipeline event rather than a plain mispredict: a
//! non-blocking `recvfrom` + `send` pair takes 1.42 µs issued inline and
//! 1.83 µs from a one-line non-inlined wrapper (1.85 µs three wrappers
//! deep; a mispredicted conditional branch after the syscall costs
//! nothing). A blocking one-CPU ping-pong pays it per side: 8.4 µs with
//! both ends inline, 9.1 with one end behind a call, 10.0 with both (in
//! `uvfio bench`, a client behind a call costs ~1 µs). Code that returns
//! after each syscall therefore looks 0.6–1 µs slower per side for no
//! extra work; that is most of what earlier measurements here
//! took for "code placement" (README § Performance). Everything that is
//! not "bytes moved" (fds, errors, waits) stays out of line, called
//! *after* the syscall, which costs nothing.
//!
//! A client call must return to its caller after its `recv`, so it first
//! calls `refill_return_stack`: 32 nested calls and their returns
//! overwrite every return-stack entry the kernel left, after which a
//! return costs what a mispredicted branch does. Measured here: a
//! non-blocking `recvfrom` behind a wrapper went from +400 ns to +0 with
//! 31 or more nested calls after it (16 were not enough); a blocking
//! one-CPU ping-pong whose client returns after each round trip went from
//! 9.0–9.2 to 8.6 µs (8.4 with no return). The refill costs ~60 ns where
//! returns are cheap anyway.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Size of the message header.
pub const HEADER_SIZE: usize = 16;

/// The most fds Linux passes in one `SCM_RIGHTS` message (`SCM_MAX_FD`).
pub const SCM_MAX_FD: usize = 253;

/// Bounds applied while reading a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest `msg_size` accepted, header included.
    pub max_msg_size: u32,
    /// Most fds accepted with one message (capped at [`SCM_MAX_FD`]).
    pub max_fds: usize,
    /// Longest a peer may take to send a message, from its first byte to
    /// its last (a drip-feed is cut off as surely as a stall).
    pub frame_timeout: Duration,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            max_msg_size: crate::proto::DEFAULT_MAX_MSG_SIZE,
            max_fds: 16,
            frame_timeout: Duration::from_secs(10),
        }
    }
}

/// One message as read off the socket: raw header, body, fds.
///
/// The body buffer is reused across reads: [`recv_message`] clears it and
/// grows it only when a message is larger than any before.
#[derive(Debug, Default)]
pub struct Message {
    /// The 16 header bytes as received.
    pub header: [u8; HEADER_SIZE],
    /// `msg_size - 16` body bytes.
    pub body: Vec<u8>,
    /// Fds received with the message, in order.
    pub fds: Vec<OwnedFd>,
    /// More fds than allowed came with the message (or the kernel dropped
    /// some: `MSG_CTRUNC`). They were all closed; the message must be
    /// rejected (EINVAL), but the stream is still in step.
    pub fds_rejected: bool,
}

impl Message {
    /// The `msg_id` field.
    #[must_use]
    pub fn msg_id(&self) -> u16 {
        u16::from_le_bytes([self.header[0], self.header[1]])
    }

    /// The `command` field.
    #[must_use]
    pub fn command(&self) -> u16 {
        u16::from_le_bytes([self.header[2], self.header[3]])
    }

    /// The `msg_size` field.
    #[must_use]
    pub fn msg_size(&self) -> u32 {
        u32::from_le_bytes([
            self.header[4],
            self.header[5],
            self.header[6],
            self.header[7],
        ])
    }

    /// The `flags` field.
    #[must_use]
    pub fn flags(&self) -> u32 {
        u32::from_le_bytes([
            self.header[8],
            self.header[9],
            self.header[10],
            self.header[11],
        ])
    }

    /// Whether the header's Type is Reply (1).
    #[must_use]
    pub fn is_reply(&self) -> bool {
        self.flags() & crate::proto::VFIO_USER_F_TYPE_MASK == crate::proto::VFIO_USER_F_TYPE_REPLY
    }

    /// Moves the contents out, leaving empty buffers behind.
    #[must_use]
    pub fn take(&mut self) -> Message {
        Message {
            header: self.header,
            body: std::mem::take(&mut self.body),
            fds: std::mem::take(&mut self.fds),
            fds_rejected: self.fds_rejected,
        }
    }
}

/// Why a message could not be read or sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer closed the connection between messages.
    #[error("connection closed by peer")]
    Closed,
    /// The peer closed the connection inside a message.
    #[error("connection closed inside a message: {got} of {want} bytes")]
    Truncated {
        /// Bytes of the message read.
        got: usize,
        /// Bytes the message needed.
        want: usize,
    },
    /// `msg_size` is below the header size or over the cap.
    #[error("msg_size {msg_size} is outside 16..={max}")]
    BadSize {
        /// The header's `msg_size`.
        msg_size: u32,
        /// The cap in force.
        max: u32,
    },
    /// More fds than one `sendmsg` can carry.
    #[error("too many fds with one message (limit {max})")]
    TooManyFds {
        /// The limit in force.
        max: usize,
    },
    /// No message started before the deadline (only when one was given).
    #[error("timed out waiting for a message")]
    Timeout,
    /// The peer stopped sending in the middle of a message.
    #[error("peer stalled inside a message ({got} of {want} bytes)")]
    Stalled {
        /// Bytes of the message read.
        got: usize,
        /// Bytes the message needed.
        want: usize,
    },
    /// A socket call failed.
    #[error("socket error: {0}")]
    Io(#[source] Errno),
    /// The peer sent fds in more separate pieces than one message can use.
    #[error("fds arrived in more than {max} separate pieces within one message")]
    FdFlood {
        /// The most pieces allowed ([`MAX_FD_CHUNKS`]).
        max: usize,
    },
}

impl TransportError {
    /// True when the byte stream can no longer be used.
    #[must_use]
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            TransportError::TooManyFds { .. } | TransportError::Timeout
        )
    }

    /// An errno describing the failure, for callers that speak errno.
    #[must_use]
    pub fn errno(&self) -> Errno {
        match self {
            TransportError::Closed | TransportError::Truncated { .. } => Errno::NOTCONN,
            TransportError::BadSize { .. } | TransportError::FdFlood { .. } => Errno::PROTO,
            TransportError::TooManyFds { .. } => Errno::INVAL,
            TransportError::Timeout | TransportError::Stalled { .. } => Errno::TIMEDOUT,
            TransportError::Io(e) => *e,
        }
    }
}

/// Control-buffer size for up to [`SCM_MAX_FD`] fds.
const CMSG_SPACE_MAX: usize = rustix::cmsg_space!(ScmRights(SCM_MAX_FD));

/// Reads one message into `msg` (header, body and fds; previous contents
/// are replaced), without reading ahead: nothing past the message's last
/// byte is taken off the socket, so calls can be mixed with other readers
/// of the stream and no state is kept between them.
///
/// `deadline` bounds the wait for the *first* byte: `None` blocks until a
/// message starts or the peer goes away; `Some(t)` returns
/// [`TransportError::Timeout`] at `t` with nothing consumed. Once a message
/// has started, it must be finished within `limits.frame_timeout`.
///
/// The framing rules are [`RecvBuffer::recv`]'s (this is a one-shot
/// [`RecvBuffer`] that reads exactly one frame), so both enforce the same
/// limits and fail the same way. It costs two `recvmsg`s per message
/// (header, then body), a buffer the size of the message and a copy of
/// the body; a long-lived reader should keep a [`RecvBuffer`].
pub fn recv_message(
    sock: BorrowedFd<'_>,
    limits: &FrameLimits,
    deadline: Option<Instant>,
    msg: &mut Message,
) -> Result<(), TransportError> {
    RecvBuffer::unbuffered().recv(sock, limits, deadline, msg)
}

/// How a reader waits for the next message to start when the socket has
/// nothing yet. Polling trades CPU for latency: a wake-up from a blocking
/// read costs a few µs (much more when it crosses CPUs in a VM: an IPI
/// through the hypervisor), a non-blocking retry a fraction of one. Only
/// reads without a deadline poll (the server's command loop, the client's
/// calls); inside a message the frame timeout rules as always.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wait {
    /// Block in the receive call: no CPU while idle. The default.
    #[default]
    Block,
    /// Retry without blocking, spinning between tries, for up to this long
    /// (from the first empty try), then block. For a peer that runs on
    /// another CPU. Never on one CPU shared with the peer: the spinner
    /// holds the CPU the peer needs to answer.
    Spin(Duration),
    /// Retry without blocking, yielding the CPU (`sched_yield`) between
    /// tries, for up to this long, then block. For a peer that shares this
    /// thread's CPU: the yield runs it directly, with no sleep and no
    /// wake-up. Not across CPUs: yielding with nothing else runnable can
    /// cost far more than it saves (on the project's VM, milliseconds).
    Yield(Duration),
}

/// What is left of `budget` since `started` (all of it before a start).
fn time_left(started: Option<Instant>, budget: Duration) -> Duration {
    match started {
        None => budget,
        Some(s) => budget.saturating_sub(s.elapsed()),
    }
}

/// Most batches of fds (one per `recvmsg` that carried any) a
/// [`RecvBuffer`] keeps at once. An honest peer sends a message and its
/// fds with one `sendmsg`, and Linux ends a read at the first batch, so
/// one or two are ever pending.
pub const MAX_FD_CHUNKS: usize = 8;

/// A read inside a message: how far it got, and how long the rest may
/// still take.
#[derive(Debug, Clone, Copy)]
struct MidMessage {
    /// Bytes of the message in hand.
    got: usize,
    /// Bytes it needs.
    want: usize,
    /// Time left before it counts as stalled.
    left: Duration,
}

/// Where a read's fds go.
struct FdSink<'a> {
    /// Most fds one message may carry.
    max: usize,
    /// Received fds, appended in order.
    fds: &'a mut Vec<OwnedFd>,
    /// Set when fds were dropped: more than `max`, or `MSG_CTRUNC`.
    rejected: &'a mut bool,
}

/// One `recvmsg` into `buf`, appending any fds to the sink (or, with no
/// sink, one `recv` with no control buffer). Between messages (`mid` is
/// `None`) it waits as `wait` says; inside one, a read that would block
/// waits at most `mid.left` for more bytes.
///
/// This and [`RecvBuffer::recv`] are the per-message path: everything
/// that is not "read, got bytes" (fds, errors, waits) is in functions out
/// of line, to keep that path short, and the path itself is inlined into
/// its caller (see the module docs: where the syscalls are issued).
#[inline(always)]
fn recv_chunk(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    mid: Option<MidMessage>,
    mut sink: Option<FdSink<'_>>,
    wait: Wait,
) -> Result<usize, TransportError> {
    let mut polling = mid.is_none() && wait != Wait::Block;
    let mut poll_end = None;
    loop {
        let flags = if mid.is_some() || polling {
            RecvFlags::DONTWAIT
        } else {
            RecvFlags::empty()
        };
        let got = match sink.as_mut() {
            None => rustix::net::recv(sock, &mut *buf, flags).map(|(n, _)| n),
            Some(sink) => {
                // One extra slot: a message carrying more than `max` fds
                // shows up as `max + 1` fds (or MSG_CTRUNC) instead of
                // silently fitting.
                let space_len = rustix::cmsg_space!(ScmRights(sink.max + 1)).min(CMSG_SPACE_MAX);
                let mut space = [MaybeUninit::<u8>::uninit(); CMSG_SPACE_MAX];
                let mut cmsg = RecvAncillaryBuffer::new(&mut space[..space_len]);
                let mut iov = [IoSliceMut::new(&mut *buf)];
                rustix::net::recvmsg(sock, &mut iov, &mut cmsg, flags | RecvFlags::CMSG_CLOEXEC)
                    .map(|r| {
                        collect_fds(cmsg, r.flags, sink);
                        r.bytes
                    })
            }
        };
        match got {
            Ok(n) => return Ok(n),
            Err(Errno::AGAIN) if polling => {
                polling = poll_again(wait, &mut poll_end);
                // Spun or yielded here, not in `poll_again`: a return right
                // after `sched_yield` would cost more than the yield (module
                // docs).
                match wait {
                    Wait::Yield(_) if polling => rustix::thread::sched_yield(),
                    Wait::Spin(_) if polling => std::hint::spin_loop(),
                    _ => {}
                }
            }
            Err(e) => recv_failed(sock, e, mid)?,
        }
    }
}

/// Fills the CPU's return-stack buffer with fresh entries: 32 nested
/// calls and their returns. See the module docs ("Where the per-message
/// syscalls are issued"): after a syscall, the first return that uses an
/// entry the kernel left behind costs 0.4–1 µs on the project's VM; once
/// these calls have overwritten them all, a return costs what a
/// mispredicted branch does. ~60 ns.
#[inline(never)]
pub(crate) fn refill_return_stack() {
    std::hint::black_box(nest(RETURN_STACK_DEPTH));
}

/// Return-stack entries to overwrite (Zen 4 and recent Intel cores have
/// 32).
const RETURN_STACK_DEPTH: u32 = 32;

/// `depth` nested calls; the `black_box` keeps the compiler from turning
/// the recursion into a loop.
#[inline(never)]
fn nest(depth: u32) -> u32 {
    if depth == 0 {
        0
    } else {
        std::hint::black_box(nest(depth - 1)) + 1
    }
}

/// A polling wait found nothing: whether its budget (counted from the
/// first empty try, so a read that finds data costs no clock read) allows
/// another try.
#[inline(never)]
fn poll_again(wait: Wait, end: &mut Option<Instant>) -> bool {
    let (Wait::Spin(budget) | Wait::Yield(budget)) = wait else {
        return false;
    };
    let now = Instant::now();
    now < *end.get_or_insert(now + budget)
}

/// Moves the fds a `recvmsg` brought into the sink (closing them all if
/// there are too many or the kernel truncated them).
#[inline(never)]
fn collect_fds(mut cmsg: RecvAncillaryBuffer<'_>, flags: ReturnFlags, sink: &mut FdSink<'_>) {
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            sink.fds.extend(it);
        }
    }
    if flags.contains(ReturnFlags::CTRUNC) {
        *sink.rejected = true;
    }
    if sink.fds.len() > sink.max {
        *sink.rejected = true;
        sink.fds.clear();
    }
}

/// A read failed with `e`: `Ok(())` to retry it (interrupted, or the
/// socket became readable after a wait), else the error to return.
#[cold]
#[inline(never)]
fn recv_failed(
    sock: BorrowedFd<'_>,
    e: Errno,
    mid: Option<MidMessage>,
) -> Result<(), TransportError> {
    match (e, mid) {
        (Errno::INTR, _) => Ok(()),
        (Errno::AGAIN, Some(mid)) => {
            if wait_readable(sock, Some(Instant::now() + mid.left))? {
                Ok(())
            } else {
                Err(TransportError::Stalled {
                    got: mid.got,
                    want: mid.want,
                })
            }
        }
        // A non-blocking socket: wait for the start of a message.
        (Errno::AGAIN, None) => wait_readable(sock, None).map(drop),
        (e, _) => Err(TransportError::Io(e)),
    }
}

/// Waits until `sock` is readable (or hung up) or `deadline` passes;
/// returns whether it is readable.
pub fn wait_readable(
    sock: BorrowedFd<'_>,
    deadline: Option<Instant>,
) -> Result<bool, TransportError> {
    loop {
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                Some(Timespec {
                    tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                    tv_nsec: i64::from(left.subsec_nanos()),
                })
            }
        };
        let mut pfd = [PollFd::new(&sock, PollFlags::IN)];
        match rustix::event::poll(&mut pfd, timeout.as_ref()) {
            Ok(0) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(false);
                }
            }
            Ok(_) => return Ok(true),
            Err(Errno::INTR) => {}
            Err(e) => return Err(TransportError::Io(e)),
        }
    }
}

/// A read-ahead buffer for one stream: [`RecvBuffer::recv`] reads as much
/// as the socket has (up to the buffer's room) and hands out one message at
/// a time, so a request whose header and body arrive together costs one
/// `recvmsg`, and pipelined messages cost none.
///
/// Fd attribution: Linux ends a stream read right after the first chunk
/// (one `sendmsg`) that carried fds, so the fds a read returns belong to
/// the chunk holding its last byte. They are given to the message that
/// contains that byte. Every known peer sends a message and its fds with
/// one `sendmsg`, so that is the message they came with; a peer that
/// attaches fds elsewhere at worst sees its message rejected.
#[derive(Debug)]
pub struct RecvBuffer {
    buf: Vec<u8>,
    /// Valid bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Stream offset of `buf[start]`.
    consumed: u64,
    /// Fds by the stream offset just past the read that brought them;
    /// `None` marks a read whose fds were dropped (MSG_CTRUNC or too many).
    fds: std::collections::VecDeque<(u64, Option<Vec<OwnedFd>>)>,
    /// When the first byte of the message being assembled arrived.
    msg_started: Option<Instant>,
    /// Reads may run past the message being assembled (false only for
    /// [`recv_message`]: each read stops at the frame's end).
    read_ahead: bool,
    /// Read with `recv`, without a control buffer (see
    /// [`RecvBuffer::set_accept_fds`]).
    no_fds: bool,
    /// How a read waits for a message to start ([`RecvBuffer::set_wait`]).
    wait: Wait,
}

/// Read-ahead room kept free for small messages.
const READ_AHEAD: usize = 16 * 1024;

impl Default for RecvBuffer {
    fn default() -> Self {
        RecvBuffer::with_buffer(vec![0; READ_AHEAD], true)
    }
}

impl RecvBuffer {
    /// An empty buffer.
    #[must_use]
    pub fn new() -> RecvBuffer {
        RecvBuffer::default()
    }

    /// A buffer that never reads past the message it is assembling, and
    /// allocates nothing until the first read ([`recv_message`]).
    fn unbuffered() -> RecvBuffer {
        RecvBuffer::with_buffer(Vec::new(), false)
    }

    fn with_buffer(buf: Vec<u8>, read_ahead: bool) -> RecvBuffer {
        RecvBuffer {
            buf,
            start: 0,
            end: 0,
            consumed: 0,
            fds: std::collections::VecDeque::new(),
            msg_started: None,
            read_ahead,
            no_fds: false,
            wait: Wait::Block,
        }
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Makes room for at least `want` buffered bytes plus read-ahead.
    fn reserve(&mut self, want: usize) {
        let extra = if self.read_ahead { READ_AHEAD } else { 0 };
        let need = want.max(HEADER_SIZE).saturating_add(extra);
        if self.buf.len() - self.start >= need {
            return;
        }
        // Move the valid bytes to the front, then grow if still short.
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
    }

    /// With `false`, reads use `recv` with no control buffer: cheaper than
    /// `recvmsg` (~0.1–0.2 µs a call on the project's VM), but any fds the
    /// peer attaches to what is read are closed by the kernel. Only for a
    /// caller that knows none can come (a client awaiting a REGION_READ
    /// reply, say). Default `true`.
    pub fn set_accept_fds(&mut self, on: bool) {
        self.no_fds = !on;
    }

    /// How reads wait for a message to start when nothing is buffered and
    /// no deadline is given (see [`Wait`]). Default [`Wait::Block`].
    pub fn set_wait(&mut self, wait: Wait) {
        self.wait = wait;
    }

    /// One `recvmsg` appending to the buffer, towards `want` buffered
    /// bytes (and past them only with read-ahead); returns the bytes read.
    #[inline(always)]
    fn fill(
        &mut self,
        sock: BorrowedFd<'_>,
        want: usize,
        limits: &FrameLimits,
    ) -> Result<usize, TransportError> {
        let got = self.buffered();
        // A message has started and we must wait for the rest of it: its
        // frame timeout runs from here (stamped lazily, so a message that
        // arrives whole costs no clock read).
        if got > 0 && self.msg_started.is_none() {
            self.msg_started = Some(Instant::now());
        }
        self.reserve(want);
        let max_fds = limits.max_fds.min(SCM_MAX_FD);
        let mut fds = Vec::new();
        let mut too_many = false;
        let end = self.end;
        let stop = if self.read_ahead {
            self.buf.len()
        } else {
            self.start + want
        };
        let mid = (got > 0).then(|| MidMessage {
            got,
            want,
            left: time_left(self.msg_started, limits.frame_timeout),
        });
        let sink = (!self.no_fds).then_some(FdSink {
            max: max_fds,
            fds: &mut fds,
            rejected: &mut too_many,
        });
        let n = recv_chunk(sock, &mut self.buf[end..stop], mid, sink, self.wait)?;
        self.end += n;
        if !fds.is_empty() || too_many {
            self.commit_fds(fds, too_many, max_fds)?;
        }
        Ok(n)
    }

    /// Files the fds of the read that just ended at `self.end`, within the
    /// caps (see the module docs). `rejected`: the read lost fds already.
    #[cold]
    #[inline(never)]
    fn commit_fds(
        &mut self,
        fds: Vec<OwnedFd>,
        rejected: bool,
        max_fds: usize,
    ) -> Result<(), TransportError> {
        if fds.is_empty() && !rejected {
            return Ok(());
        }
        if self.fds.len() >= MAX_FD_CHUNKS {
            self.fds.clear();
            return Err(TransportError::FdFlood { max: MAX_FD_CHUNKS });
        }
        let held: usize = self
            .fds
            .iter()
            .map(|(_, f)| f.as_ref().map_or(0, Vec::len))
            .sum();
        let at = self.consumed.saturating_add((self.end - self.start) as u64);
        if rejected || held.saturating_add(fds.len()) > max_fds {
            // Closes them now; whichever message they belong to is rejected.
            drop(fds);
            self.fds.push_back((at, None));
        } else {
            self.fds.push_back((at, Some(fds)));
        }
        Ok(())
    }

    /// Sans-I/O: appends `bytes` as if one `recvmsg` had read them with
    /// `fds` (for the fuzzer and tests; a socket-fed buffer never needs it).
    /// The same caps apply as to reads.
    #[doc(hidden)]
    pub fn push(
        &mut self,
        bytes: &[u8],
        fds: Vec<OwnedFd>,
        limits: &FrameLimits,
    ) -> Result<(), TransportError> {
        let max_fds = limits.max_fds.min(SCM_MAX_FD);
        self.reserve(self.buffered().saturating_add(bytes.len()));
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
        let rejected = fds.len() > max_fds;
        let fds = if rejected { Vec::new() } else { fds };
        self.commit_fds(fds, rejected, max_fds)
    }

    /// Sans-I/O: takes the next message if it is wholly buffered
    /// (`Ok(true)`); `Ok(false)` if more bytes are needed. Errors as
    /// [`RecvBuffer::recv`] (a bad size).
    #[doc(hidden)]
    pub fn pop(&mut self, limits: &FrameLimits, msg: &mut Message) -> Result<bool, TransportError> {
        msg.body.clear();
        msg.fds.clear();
        msg.fds_rejected = false;
        if self.buffered() < HEADER_SIZE {
            return Ok(false);
        }
        let size = self.check_size(limits, msg)?;
        if self.buffered() < size {
            return Ok(false);
        }
        self.take(size, limits, msg);
        Ok(true)
    }

    /// Bytes buffered but not yet returned as a message.
    #[doc(hidden)]
    #[must_use]
    pub fn pending_bytes(&self) -> usize {
        self.buffered()
    }

    /// Copies the buffered header into `msg` and checks its `msg_size`.
    fn check_size(
        &mut self,
        limits: &FrameLimits,
        msg: &mut Message,
    ) -> Result<usize, TransportError> {
        msg.header
            .copy_from_slice(&self.buf[self.start..self.start + HEADER_SIZE]);
        let msg_size = msg.msg_size();
        let size = usize::try_from(msg_size).unwrap_or(usize::MAX);
        if size < HEADER_SIZE || msg_size > limits.max_msg_size {
            self.fds.clear();
            return Err(TransportError::BadSize {
                msg_size,
                max: limits.max_msg_size,
            });
        }
        Ok(size)
    }

    /// Moves the wholly buffered message of `size` bytes into `msg`, with
    /// the fds that came with it.
    fn take(&mut self, size: usize, limits: &FrameLimits, msg: &mut Message) {
        msg.body
            .extend_from_slice(&self.buf[self.start + HEADER_SIZE..self.start + size]);
        self.start += size;
        self.consumed = self.consumed.saturating_add(size as u64);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            self.msg_started = None;
            // Give back the room a large message needed.
            if self.buf.len() > 4 * READ_AHEAD {
                self.buf.truncate(READ_AHEAD);
                self.buf.shrink_to_fit();
            }
        } else {
            // Read-ahead: the next message has begun; its clock starts if
            // `fill` has to wait for the rest.
            self.msg_started = None;
        }
        // Fds that came with reads ending inside this message.
        while let Some((at, _)) = self.fds.front() {
            if *at > self.consumed {
                break;
            }
            match self.fds.pop_front() {
                Some((_, Some(f))) => msg.fds.extend(f),
                Some((_, None)) => msg.fds_rejected = true,
                None => break,
            }
        }
        if msg.fds_rejected || msg.fds.len() > limits.max_fds.min(SCM_MAX_FD) {
            msg.fds.clear();
            msg.fds_rejected = true;
        }
    }

    /// Reads one message into `msg` (header, body and fds; previous
    /// contents are replaced): no syscall when a whole message is already
    /// buffered, else usually one `recvmsg`. This is where the framing
    /// rules of the module docs are applied, for [`recv_message`] too.
    ///
    /// `deadline` bounds the wait for the *first* byte: `None` blocks until
    /// a message starts or the peer goes away; `Some(t)` returns
    /// [`TransportError::Timeout`] at `t` with nothing consumed. Once a
    /// message has started, it must be finished within
    /// `limits.frame_timeout`.
    #[inline(always)]
    pub fn recv(
        &mut self,
        sock: BorrowedFd<'_>,
        limits: &FrameLimits,
        deadline: Option<Instant>,
        msg: &mut Message,
    ) -> Result<(), TransportError> {
        msg.body.clear();
        msg.fds.clear();
        msg.fds_rejected = false;

        if self.buffered() == 0 {
            if let Some(d) = deadline {
                if !wait_readable(sock, Some(d))? {
                    return Err(TransportError::Timeout);
                }
            }
        }
        // Read until the header, then the whole frame, is buffered.
        let size = loop {
            let got = self.buffered();
            let want = if got < HEADER_SIZE {
                HEADER_SIZE
            } else {
                let size = self.check_size(limits, msg)?;
                if got >= size {
                    break size;
                }
                size
            };
            if self.fill(sock, want, limits)? == 0 {
                return Err(self.eof(got, want));
            }
        };
        self.take(size, limits, msg);
        Ok(())
    }

    /// The peer closed the stream with `got` of the `want` bytes in hand.
    #[cold]
    #[inline(never)]
    fn eof(&mut self, got: usize, want: usize) -> TransportError {
        self.fds.clear();
        if got == 0 {
            TransportError::Closed
        } else {
            TransportError::Truncated { got, want }
        }
    }
}

/// Sends `bytes` (one or more whole messages) with `fds` attached to the
/// first byte. Short writes are continued; a send that times out
/// (`SO_SNDTIMEO`) or fails is an error and the stream must be dropped.
#[inline(always)]
pub fn send_message(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), TransportError> {
    if fds.len() > SCM_MAX_FD {
        return Err(TransportError::TooManyFds { max: SCM_MAX_FD });
    }
    let mut sent = 0;
    if !fds.is_empty() {
        let mut space = [MaybeUninit::<u8>::uninit(); CMSG_SPACE_MAX];
        let space_len = rustix::cmsg_space!(ScmRights(fds.len())).min(CMSG_SPACE_MAX);
        loop {
            let mut cmsg = SendAncillaryBuffer::new(&mut space[..space_len]);
            if !cmsg.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(TransportError::TooManyFds { max: SCM_MAX_FD });
            }
            let iov = [IoSlice::new(bytes)];
            match rustix::net::sendmsg(sock, &iov, &mut cmsg, SendFlags::NOSIGNAL) {
                Ok(n) => {
                    sent = n;
                    break;
                }
                Err(Errno::INTR) => continue,
                Err(e) => return Err(send_error(e)),
            }
        }
    }
    while sent < bytes.len() {
        match rustix::net::send(sock, &bytes[sent..], SendFlags::NOSIGNAL) {
            Ok(0) => return Err(TransportError::Io(Errno::PIPE)),
            Ok(n) => sent += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(send_error(e)),
        }
    }
    Ok(())
}

fn send_error(e: Errno) -> TransportError {
    if e == Errno::AGAIN {
        TransportError::Stalled { got: 0, want: 0 }
    } else {
        TransportError::Io(e)
    }
}

/// Sets `SO_SNDTIMEO` so a peer that stops reading cannot block a sender
/// forever.
pub fn set_send_timeout(sock: impl AsFd, timeout: Option<Duration>) -> Result<(), Errno> {
    rustix::net::sockopt::set_socket_timeout(sock, rustix::net::sockopt::Timeout::Send, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    fn frame(msg_size: u32, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&7u16.to_le_bytes());
        v.extend_from_slice(&9u16.to_le_bytes());
        v.extend_from_slice(&msg_size.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn recv_message_reads_header_body_and_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let efd = uvfio_core::irq::eventfd().unwrap();
        send_message(a.as_fd(), &frame(20, b"abcd"), &[efd.as_fd()]).unwrap();
        let mut m = Message::default();
        recv_message(b.as_fd(), &FrameLimits::default(), None, &mut m).unwrap();
        assert_eq!((m.msg_id(), m.command(), m.msg_size()), (7, 9, 20));
        assert_eq!(m.body, b"abcd");
        assert_eq!(m.fds.len(), 1);
    }

    #[test]
    fn recv_message_eof_between_messages_is_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        let mut m = Message::default();
        let e = recv_message(b.as_fd(), &FrameLimits::default(), None, &mut m).unwrap_err();
        assert_eq!(e, TransportError::Closed);
    }

    #[test]
    fn recv_message_eof_inside_body_is_truncated() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&frame(32, b"abc")).unwrap();
        drop(a);
        let mut m = Message::default();
        let e = recv_message(b.as_fd(), &FrameLimits::default(), None, &mut m).unwrap_err();
        assert_eq!(e, TransportError::Truncated { got: 19, want: 32 });
        assert!(e.is_fatal());
    }

    #[test]
    fn recv_message_size_over_cap_is_bad_size() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&frame(1 << 30, b"")).unwrap();
        let mut m = Message::default();
        let e = recv_message(b.as_fd(), &FrameLimits::default(), None, &mut m).unwrap_err();
        assert!(matches!(
            e,
            TransportError::BadSize {
                msg_size: 0x4000_0000,
                ..
            }
        ));
    }

    #[test]
    fn recv_message_size_below_header_is_bad_size() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&frame(8, b"")).unwrap();
        let mut m = Message::default();
        let e = recv_message(b.as_fd(), &FrameLimits::default(), None, &mut m).unwrap_err();
        assert!(matches!(e, TransportError::BadSize { msg_size: 8, .. }));
    }

    #[test]
    fn recv_message_too_many_fds_consumes_body_closes_fds_and_flags() {
        let (a, b) = UnixStream::pair().unwrap();
        let fds: Vec<OwnedFd> = (0..3)
            .map(|_| uvfio_core::irq::eventfd().unwrap())
            .collect();
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        send_message(a.as_fd(), &frame(20, b"abcd"), &borrowed).unwrap();
        send_message(a.as_fd(), &frame(16, b""), &[]).unwrap();
        let limits = FrameLimits {
            max_fds: 1,
            ..FrameLimits::default()
        };
        let mut m = Message::default();
        recv_message(b.as_fd(), &limits, None, &mut m).unwrap();
        assert!(m.fds_rejected);
        assert!(m.fds.is_empty());
        assert_eq!(m.body, b"abcd");
        recv_message(b.as_fd(), &limits, None, &mut m).unwrap();
        assert_eq!(m.msg_size(), 16);
        assert!(!m.fds_rejected);
    }

    #[test]
    fn recv_message_deadline_without_data_times_out() {
        let (_a, b) = UnixStream::pair().unwrap();
        let mut m = Message::default();
        let e = recv_message(
            b.as_fd(),
            &FrameLimits::default(),
            Some(Instant::now()),
            &mut m,
        )
        .unwrap_err();
        assert_eq!(e, TransportError::Timeout);
    }

    #[test]
    fn recv_buffer_reads_pipelined_messages_and_keeps_fds_with_theirs() {
        let (a, b) = UnixStream::pair().unwrap();
        let efd = uvfio_core::irq::eventfd().unwrap();
        send_message(a.as_fd(), &frame(20, b"one!"), &[]).unwrap();
        send_message(a.as_fd(), &frame(18, b"tw"), &[efd.as_fd()]).unwrap();
        send_message(a.as_fd(), &frame(16, b""), &[]).unwrap();
        let mut rb = RecvBuffer::new();
        let limits = FrameLimits::default();
        let mut m = Message::default();
        rb.recv(b.as_fd(), &limits, None, &mut m).unwrap();
        assert_eq!((m.body.as_slice(), m.fds.len()), (&b"one!"[..], 0));
        rb.recv(b.as_fd(), &limits, None, &mut m).unwrap();
        assert_eq!((m.body.as_slice(), m.fds.len()), (&b"tw"[..], 1));
        rb.recv(b.as_fd(), &limits, None, &mut m).unwrap();
        assert_eq!((m.msg_size(), m.fds.len()), (16, 0));
        let e = rb
            .recv(b.as_fd(), &limits, Some(Instant::now()), &mut m)
            .unwrap_err();
        assert_eq!(e, TransportError::Timeout);
    }

    #[test]
    fn recv_buffer_grows_for_a_large_message() {
        let (a, b) = UnixStream::pair().unwrap();
        let body = vec![7u8; 200_000];
        let t = std::thread::spawn(move || {
            send_message(a.as_fd(), &frame(16 + 200_000, &body), &[]).unwrap();
            a
        });
        let mut rb = RecvBuffer::new();
        let mut m = Message::default();
        rb.recv(b.as_fd(), &FrameLimits::default(), None, &mut m)
            .unwrap();
        assert_eq!(m.body.len(), 200_000);
        assert!(m.body.iter().all(|&x| x == 7));
        drop(t.join().unwrap());
        let e = rb
            .recv(b.as_fd(), &FrameLimits::default(), None, &mut m)
            .unwrap_err();
        assert_eq!(e, TransportError::Closed);
    }

    #[test]
    fn recv_buffer_too_many_fds_flags_only_that_message() {
        let (a, b) = UnixStream::pair().unwrap();
        let fds: Vec<OwnedFd> = (0..3)
            .map(|_| uvfio_core::irq::eventfd().unwrap())
            .collect();
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        send_message(a.as_fd(), &frame(20, b"abcd"), &borrowed).unwrap();
        send_message(a.as_fd(), &frame(16, b""), &borrowed[..1]).unwrap();
        let limits = FrameLimits {
            max_fds: 1,
            ..FrameLimits::default()
        };
        let mut rb = RecvBuffer::new();
        let mut m = Message::default();
        rb.recv(b.as_fd(), &limits, None, &mut m).unwrap();
        assert!(m.fds_rejected && m.fds.is_empty());
        rb.recv(b.as_fd(), &limits, None, &mut m).unwrap();
        assert!(!m.fds_rejected);
        assert_eq!(m.fds.len(), 1);
    }

    #[test]
    fn recv_message_stall_inside_message_is_fatal() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&frame(32, b"abc")).unwrap();
        let limits = FrameLimits {
            frame_timeout: Duration::from_millis(20),
            ..FrameLimits::default()
        };
        let mut m = Message::default();
        let e = recv_message(b.as_fd(), &limits, None, &mut m).unwrap_err();
        assert_eq!(e, TransportError::Stalled { got: 19, want: 32 });
        drop(a);
    }

    /// What a read returned, in a comparable form: header, body, fd count,
    /// rejection flag.
    type Outcome = Result<([u8; HEADER_SIZE], Vec<u8>, usize, bool), TransportError>;

    /// Runs the same peer behaviour (`peer` writes to its end and returns
    /// it to keep it open, or `None` to close it) against both entry
    /// points, reading messages until one fails or `reads` are done; the
    /// outcomes of [`recv_message`] and of [`RecvBuffer::recv`] in order.
    fn both(
        limits: &FrameLimits,
        reads: usize,
        peer: impl Fn(UnixStream) -> Option<UnixStream>,
    ) -> (Vec<Outcome>, Vec<Outcome>) {
        let run = |buffered: bool| {
            let (a, b) = UnixStream::pair().unwrap();
            let _keep = peer(a);
            let mut rb = RecvBuffer::new();
            let mut m = Message::default();
            let mut out = Vec::new();
            for _ in 0..reads {
                let deadline = Some(Instant::now() + Duration::from_secs(20));
                let r = if buffered {
                    rb.recv(b.as_fd(), limits, deadline, &mut m)
                } else {
                    recv_message(b.as_fd(), limits, deadline, &mut m)
                };
                let failed = r.is_err();
                out.push(r.map(|()| (m.header, m.body.clone(), m.fds.len(), m.fds_rejected)));
                if failed {
                    break;
                }
            }
            out
        };
        (run(false), run(true))
    }

    fn assert_same(
        limits: &FrameLimits,
        reads: usize,
        peer: impl Fn(UnixStream) -> Option<UnixStream>,
    ) -> Vec<Outcome> {
        let (unbuffered, buffered) = both(limits, reads, peer);
        assert_eq!(unbuffered, buffered, "recv_message vs RecvBuffer::recv");
        buffered
    }

    fn write(mut a: UnixStream, bytes: &[u8], keep_open: bool) -> Option<UnixStream> {
        a.write_all(bytes).unwrap();
        keep_open.then_some(a)
    }

    #[test]
    fn both_entry_points_reject_msg_size_over_the_cap_and_below_the_header() {
        let limits = FrameLimits {
            max_msg_size: 64,
            ..FrameLimits::default()
        };
        let out = assert_same(&limits, 1, |a| write(a, &frame(65, &[0; 49]), true));
        assert_eq!(
            out,
            [Err(TransportError::BadSize {
                msg_size: 65,
                max: 64
            })]
        );
        let out = assert_same(&limits, 1, |a| write(a, &frame(15, b""), true));
        assert!(matches!(
            out[0],
            Err(TransportError::BadSize { msg_size: 15, .. })
        ));
        // The cap itself is allowed.
        let out = assert_same(&limits, 1, |a| write(a, &frame(64, &[1; 48]), true));
        assert_eq!(out[0].as_ref().unwrap().1, [1; 48]);
    }

    #[test]
    fn both_entry_points_reject_too_many_fds_and_stay_framed() {
        let limits = FrameLimits {
            max_fds: 2,
            ..FrameLimits::default()
        };
        let peer = |a: UnixStream| {
            let fds: Vec<OwnedFd> = (0..3)
                .map(|_| uvfio_core::irq::eventfd().unwrap())
                .collect();
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
            send_message(a.as_fd(), &frame(20, b"abcd"), &borrowed).unwrap();
            send_message(a.as_fd(), &frame(18, b"ok"), &borrowed[..2]).unwrap();
            // Two pieces of one message, 2 fds each: 4 held is over.
            send_message(a.as_fd(), &frame(20, b"")[..10], &borrowed[..2]).unwrap();
            send_message(a.as_fd(), &frame(20, b"efgh")[10..], &borrowed[..2]).unwrap();
            send_message(a.as_fd(), &frame(16, b""), &[]).unwrap();
            Some(a)
        };
        let out = assert_same(&limits, 4, peer);
        let summary: Vec<_> = out
            .iter()
            .map(|r| {
                let (_, body, n, rejected) = r.as_ref().unwrap();
                (body.as_slice(), *n, *rejected)
            })
            .collect();
        assert_eq!(
            summary,
            [
                (&b"abcd"[..], 0, true),
                (&b"ok"[..], 2, false),
                (&b"efgh"[..], 0, true),
                (&b""[..], 0, false),
            ]
        );
    }

    #[test]
    fn both_entry_points_cut_off_fds_in_too_many_pieces() {
        let limits = FrameLimits {
            max_fds: 16,
            ..FrameLimits::default()
        };
        let out = assert_same(&limits, 1, |a| {
            let efd = uvfio_core::irq::eventfd().unwrap();
            // One byte per sendmsg, each with an fd: Linux ends a read at each.
            for chunk in frame(16 + 8, &[0; 8]).chunks(1) {
                send_message(a.as_fd(), chunk, &[efd.as_fd()]).unwrap();
            }
            Some(a)
        });
        assert_eq!(out, [Err(TransportError::FdFlood { max: MAX_FD_CHUNKS })]);
    }

    #[test]
    fn both_entry_points_report_truncation_and_close_alike() {
        let l = FrameLimits::default();
        let out = assert_same(&l, 1, |a| write(a, &frame(32, b"")[..10], false));
        assert_eq!(out, [Err(TransportError::Truncated { got: 10, want: 16 })]);
        let out = assert_same(&l, 1, |a| write(a, &frame(32, b"abc"), false));
        assert_eq!(out, [Err(TransportError::Truncated { got: 19, want: 32 })]);
        let out = assert_same(&l, 2, |a| write(a, &frame(16, b""), false));
        assert!(out[0].is_ok());
        assert_eq!(out[1], Err(TransportError::Closed));
        let out = assert_same(&l, 1, |_| None);
        assert_eq!(out, [Err(TransportError::Closed)]);
    }

    #[test]
    fn both_entry_points_time_out_a_stalled_header_or_body() {
        let l = FrameLimits {
            frame_timeout: Duration::from_millis(20),
            ..FrameLimits::default()
        };
        let out = assert_same(&l, 1, |a| write(a, &frame(32, b"")[..5], true));
        assert_eq!(out, [Err(TransportError::Stalled { got: 5, want: 16 })]);
        let out = assert_same(&l, 1, |a| write(a, &frame(32, b"abc"), true));
        assert_eq!(out, [Err(TransportError::Stalled { got: 19, want: 32 })]);
    }

    #[test]
    fn polling_waits_read_what_comes_in_time_or_late_and_see_eof() {
        for wait in [
            Wait::Spin(Duration::from_millis(20)),
            Wait::Yield(Duration::from_millis(20)),
        ] {
            let (a, b) = UnixStream::pair().unwrap();
            let mut rb = RecvBuffer::new();
            rb.set_wait(wait);
            let limits = FrameLimits::default();
            let mut m = Message::default();
            let t = std::thread::spawn(move || {
                // Within the budget, then well past it (the reader blocks).
                for (pause, body) in [(1, &b"soon"[..]), (100, &b"late"[..])] {
                    std::thread::sleep(Duration::from_millis(pause));
                    send_message(a.as_fd(), &frame(20, body), &[]).unwrap();
                }
                a
            });
            rb.recv(b.as_fd(), &limits, None, &mut m).unwrap();
            assert_eq!(m.body, b"soon", "{wait:?}");
            rb.recv(b.as_fd(), &limits, None, &mut m).unwrap();
            assert_eq!(m.body, b"late", "{wait:?}");
            drop(t.join().unwrap());
            let e = rb.recv(b.as_fd(), &limits, None, &mut m).unwrap_err();
            assert_eq!(e, TransportError::Closed, "{wait:?}");
        }
    }

    #[test]
    fn recv_message_reads_no_further_than_its_message() {
        let (a, b) = UnixStream::pair().unwrap();
        send_message(a.as_fd(), &frame(20, b"one!"), &[]).unwrap();
        let efd = uvfio_core::irq::eventfd().unwrap();
        send_message(a.as_fd(), &frame(18, b"tw"), &[efd.as_fd()]).unwrap();
        let mut m = Message::default();
        recv_message(b.as_fd(), &FrameLimits::default(), None, &mut m).unwrap();
        assert_eq!(m.body, b"one!");
        // The next message, fd included, is still in the socket.
        let mut peek = [0u8; 64];
        let n = rustix::net::recv(b.as_fd(), &mut peek, rustix::net::RecvFlags::PEEK).unwrap();
        assert_eq!(n.0, 18);
        let mut rb = RecvBuffer::new();
        rb.recv(b.as_fd(), &FrameLimits::default(), None, &mut m)
            .unwrap();
        assert_eq!((m.body.as_slice(), m.fds.len()), (&b"tw"[..], 1));
    }
}
