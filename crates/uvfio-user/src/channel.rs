//! One connection shared between the thread that serves the peer's commands
//! and the threads that wait for replies to requests *we* send.
//!
//! vfio-user lets both ends send commands on the same socket: the client's
//! requests, and the server's DMA_READ/DMA_WRITE. A device may DMA inside an
//! operation the connection thread is executing (a doorbell write), or from
//! a thread of its own (a timer). So nobody owns the read side for good;
//! instead whoever needs the next message becomes *the reader* for one
//! message (a leader/follower scheme):
//!
//! - [`Channel::next_command`] (the serving thread) takes a queued command
//!   if there is one, else reads. Replies it reads are routed by `msg_id` to
//!   the request waiting for them.
//! - [`Channel::call`] sends a request and waits for its reply. While
//!   nobody else reads it reads itself; commands it meets on the way are
//!   queued for the serving thread ([`Incoming::Queue`], the server) or
//!   handed to a callback ([`Incoming::Handle`], the client answering DMA).
//!   The wait is bounded; on timeout the request fails and a late reply is
//!   dropped. On a channel [`Channel::with_watchdog`] (the client's) the
//!   reader blocks in `recvmsg` with no timer and an overdue wait closes
//!   the connection instead.
//!
//! Because the serving thread gives up the reader role while it executes a
//! command, a DMA issued from inside that command can always make progress:
//! no deadlock, no lost message. The queue is bounded in bytes and in fds;
//! a peer that floods commands while we wait for its reply loses its
//! connection. Requests awaiting replies are bounded too
//! ([`Channel::with_caps`]): past the cap, [`Channel::call`] fails at once
//! with `EAGAIN` instead of piling up waiters behind a silent peer.
//!
//! Writes go through one lock so messages never interleave. The hot path
//! (a command and its reply on the serving thread) takes two uncontended
//! mutex round trips and no allocation.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::io::Errno;

use crate::transport::{self, FrameLimits, Message, RecvBuffer, TransportError};

/// Why a channel operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The connection is gone (peer closed, unreadable stream, send failure).
    #[error("connection closed: {0}")]
    Closed(#[source] TransportError),
    /// We shut the connection down.
    #[error("connection shut down")]
    Shutdown,
    /// The peer sent too much while we waited for its reply.
    #[error("peer queued more than {0} bytes of commands while a reply was awaited")]
    QueueFull(usize),
    /// No reply arrived in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// A request with this id is already waiting for its reply.
    #[error("message id {0} is already awaiting a reply")]
    IdInUse(u16),
    /// As many requests as allowed already await their replies.
    #[error("{0} requests already await a reply from the peer")]
    TooManyPending(usize),
    /// The peer sent more fds than allowed while we waited for its reply.
    #[error("peer queued more than {0} fds with commands while a reply was awaited")]
    QueueFdsFull(usize),
}

impl ChannelError {
    /// The errno this failure maps to.
    #[must_use]
    pub fn errno(&self) -> Errno {
        match self {
            ChannelError::Closed(e) => e.errno(),
            ChannelError::Shutdown | ChannelError::QueueFull(_) | ChannelError::QueueFdsFull(_) => {
                Errno::NOTCONN
            }
            ChannelError::TooManyPending(_) => Errno::AGAIN,
            ChannelError::Timeout(_) => Errno::TIMEDOUT,
            ChannelError::IdInUse(_) => Errno::BUSY,
        }
    }
}

/// What [`Channel::call`] does with a command it reads while waiting.
pub(crate) enum Incoming<'a> {
    /// Queue it for [`Channel::next_command`] (server).
    Queue,
    /// Handle it now, on the waiting thread (client: DMA_READ/DMA_WRITE).
    Handle(&'a mut dyn FnMut(&Channel, Message)),
}

struct State {
    reader_busy: bool,
    queue: VecDeque<Message>,
    queued_bytes: usize,
    queued_fds: usize,
    /// Requests awaiting replies: `None` until the reply arrives.
    pending: IdMap<Option<Message>>,
    closed: Option<ChannelError>,
    limits: FrameLimits,
    /// Threads blocked on the condition variable: a wake-up is a syscall,
    /// so the hot path skips it when nobody waits.
    waiters: usize,
    /// With a watchdog: the deadline (and the timeout it came from) of the
    /// reader blocked in `recvmsg` for a reply.
    watched: Option<(Instant, Duration)>,
    /// The reader reads without a control buffer ([`Channel::with_plain_reads`]).
    plain_reader: bool,
    /// Calls in flight whose reply may carry fds: while there are any, no
    /// read goes without a control buffer.
    fd_calls: usize,
}

/// Requests awaiting replies, by message id. Only ids we handed out are
/// ever inserted (a peer can only look them up), so there is no collision
/// attack to defend against, and a multiplicative hash costs a few
/// instructions where SipHash cost ~100 per lookup, four lookups a round
/// trip (callgrind).
type IdMap<V> = HashMap<u16, V, BuildHasherDefault<IdHasher>>;

#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u16(&mut self, n: u16) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A connection, see the module docs.
pub(crate) struct Channel {
    sock: OwnedFd,
    /// Read-ahead; locked only by the thread that holds the reader role.
    rbuf: Mutex<RecvBuffer>,
    write_lock: Mutex<()>,
    state: Mutex<State>,
    cv: Condvar,
    next_id: AtomicU16,
    max_queued_bytes: usize,
    max_queued_fds: usize,
    max_pending: usize,
    /// Who is on the other end, for log lines (the device name).
    label: String,
    /// Replies are awaited blocking in `recvmsg` with no timeout, and
    /// [`crate::watchdog`] enforces the deadline ([`Channel::with_watchdog`]).
    watchdog: bool,
    /// Calls whose reply cannot carry fds may read without a control
    /// buffer ([`Channel::with_plain_reads`]).
    plain_reads: bool,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("sock", &self.sock).finish()
    }
}

impl Channel {
    pub(crate) fn new(sock: OwnedFd, limits: FrameLimits, max_queued_bytes: usize) -> Channel {
        Channel {
            sock,
            rbuf: Mutex::new(RecvBuffer::new()),
            write_lock: Mutex::new(()),
            state: Mutex::new(State {
                reader_busy: false,
                queue: VecDeque::new(),
                queued_bytes: 0,
                queued_fds: 0,
                pending: IdMap::default(),
                closed: None,
                limits,
                waiters: 0,
                watched: None,
                plain_reader: false,
                fd_calls: 0,
            }),
            cv: Condvar::new(),
            next_id: AtomicU16::new(0),
            max_queued_bytes,
            max_queued_fds: usize::MAX,
            max_pending: usize::MAX,
            label: String::new(),
            watchdog: false,
            plain_reads: false,
        }
    }

    /// Caps the fds queued with commands while a reply is awaited, and the
    /// requests awaiting replies at once (both unbounded by default).
    #[must_use]
    pub(crate) fn with_caps(mut self, max_queued_fds: usize, max_pending: usize) -> Channel {
        self.max_queued_fds = max_queued_fds;
        self.max_pending = max_pending;
        self
    }

    /// Names the connection in log lines (`device = label`).
    #[must_use]
    pub(crate) fn with_label(mut self, label: &str) -> Channel {
        self.label = label.to_owned();
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The socket.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Replaces the read limits (after negotiation).
    pub(crate) fn set_limits(&self, limits: FrameLimits) {
        self.lock().limits = limits;
    }

    /// A fresh id for a request we originate (wrapping).
    pub(crate) fn next_id(&self) -> u16 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends whole message(s). A failure closes the channel.
    pub(crate) fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        let r = {
            let _w = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
            transport::send_message(self.fd(), bytes, fds)
        };
        match r {
            Ok(()) => Ok(()),
            Err(e @ TransportError::TooManyFds { .. }) => Err(ChannelError::Closed(e)),
            Err(e) => {
                let mut st = self.lock();
                self.close_locked(&mut st, ChannelError::Closed(e.clone()));
                Err(ChannelError::Closed(e))
            }
        }
    }

    /// Shuts the socket down both ways: every reader and waiter wakes up
    /// and fails; the peer sees EOF.
    pub(crate) fn shutdown(&self) {
        let mut st = self.lock();
        self.close_locked(&mut st, ChannelError::Shutdown);
    }

    fn close_locked(&self, st: &mut State, why: ChannelError) {
        if st.closed.is_none() {
            st.closed = Some(why);
        }
        // ENOTCONN if already shut down: nothing to do.
        let _ = rustix::net::shutdown(&self.sock, rustix::net::Shutdown::Both);
        st.queue.clear();
        st.queued_bytes = 0;
        st.queued_fds = 0;
        self.wake(st);
    }

    /// Waits for replies inside a plain blocking `recvmsg`: no `poll`
    /// first and no `SO_RCVTIMEO`, whose kernel timer, armed on every
    /// blocking wait, cost ~0.4 µs a round trip. The reply deadline is
    /// kept by [`crate::watchdog`] instead, which (the caller must
    /// register the channel with it) fails an overdue call with
    /// [`ChannelError::Timeout`] by closing the connection: a blocked
    /// `recvmsg` cannot be woken any other way without signals. For the
    /// client, whose peer is dead to it once a reply is that late.
    #[must_use]
    pub(crate) fn with_watchdog(mut self) -> Channel {
        self.watchdog = true;
        self
    }

    /// Lets a call whose reply cannot carry fds read with `recv`, without a
    /// control buffer (cheaper than `recvmsg`), whenever no call whose
    /// reply may carry fds is in flight. A call of the latter kind first
    /// waits for any such read to end and then counts itself, so no fd the
    /// peer sends with a reply we asked for is ever read without a control
    /// buffer (which would make the kernel close it). Fds attached to
    /// anything else are dropped when read plainly; the client never
    /// accepts those anyway.
    #[must_use]
    pub(crate) fn with_plain_reads(mut self) -> Channel {
        self.plain_reads = true;
        self
    }

    /// Closes the connection if a reader has waited past its deadline
    /// (called by the watchdog).
    pub(crate) fn expire_if_overdue(&self, now: Instant) {
        let mut st = self.lock();
        if let Some((deadline, timeout)) = st.watched {
            if now >= deadline {
                tracing::warn!(
                    peer = %self.label,
                    ?timeout,
                    "no reply in time; closing the connection"
                );
                self.close_locked(&mut st, ChannelError::Timeout(timeout));
            }
        }
    }

    /// Becomes the reader (the caller saw `reader_busy` clear), reads one
    /// message into `msg` without the state lock, and hands the reader role
    /// back, waking whoever waits for it or for a routed reply.
    /// `plain`: read without a control buffer (the caller checked that
    /// this is allowed, see [`Channel::with_plain_reads`]).
    fn read_as_leader<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        deadline: Option<Instant>,
        plain: bool,
        msg: &mut Message,
    ) -> (MutexGuard<'a, State>, Result<(), TransportError>) {
        st.reader_busy = true;
        st.plain_reader = plain;
        let limits = st.limits;
        drop(st);
        let r = self.read_one(&limits, deadline, plain, msg);
        let mut st = self.lock();
        st.reader_busy = false;
        st.plain_reader = false;
        self.wake(&st);
        (st, r)
    }

    /// Waits (at most `left`) for the reader to hand over or route
    /// something; counted in `waiters` so that wakes are only sent when
    /// someone waits.
    fn wait_turn<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        left: Option<Duration>,
    ) -> MutexGuard<'a, State> {
        st.waiters += 1;
        let mut st = match left {
            Some(d) => {
                self.cv
                    .wait_timeout(st, d)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => self.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
        };
        st.waiters -= 1;
        st
    }

    /// Reads one message as the reader (the caller set `reader_busy`).
    fn read_one(
        &self,
        limits: &FrameLimits,
        deadline: Option<Instant>,
        plain: bool,
        msg: &mut Message,
    ) -> Result<(), TransportError> {
        let mut rb = self.rbuf.lock().unwrap_or_else(|e| e.into_inner());
        rb.set_accept_fds(!plain);
        rb.recv(self.sock.as_fd(), limits, deadline, msg)
    }

    fn wake(&self, st: &State) {
        if st.waiters > 0 {
            self.cv.notify_all();
        }
    }

    fn route_reply(&self, st: &mut State, reply: Message) {
        let id = reply.msg_id();
        match st.pending.get_mut(&id) {
            Some(slot @ None) => {
                *slot = Some(reply);
                if st.waiters > 0 {
                    self.cv.notify_all();
                }
            }
            _ => {
                tracing::warn!(
                    msg_id = id,
                    command = reply.command(),
                    "dropping a reply nobody waits for"
                );
            }
        }
    }

    /// The next command from the peer, into `msg` (queued ones first).
    /// Replies read on the way are routed to their waiters.
    pub(crate) fn next_command(&self, msg: &mut Message) -> Result<(), ChannelError> {
        let mut st = self.lock();
        loop {
            if let Some(m) = st.queue.pop_front() {
                st.queued_bytes = st
                    .queued_bytes
                    .saturating_sub(m.body.len().saturating_add(transport::HEADER_SIZE));
                st.queued_fds = st.queued_fds.saturating_sub(m.fds.len());
                *msg = m;
                return Ok(());
            }
            if let Some(e) = &st.closed {
                return Err(e.clone());
            }
            if !st.reader_busy {
                let r;
                (st, r) = self.read_as_leader(st, None, false, msg);
                match r {
                    Ok(()) if msg.is_reply() => {
                        let reply = msg.take();
                        self.route_reply(&mut st, reply);
                    }
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        let why = ChannelError::Closed(e);
                        self.close_locked(&mut st, why.clone());
                        return Err(why);
                    }
                }
                continue;
            }
            st = self.wait_turn(st, None);
        }
    }

    /// Sends `request` (a whole message whose `msg_id` is `id`) and waits
    /// at most `timeout` for the reply with that id, which lands in
    /// `reply`. `reply` doubles as the read buffer, so a caller that reuses
    /// it makes round trips without allocating.
    ///
    /// `reply_fds`: whether the reply may carry fds (it is read with a
    /// control buffer; see [`Channel::with_plain_reads`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn call(
        &self,
        id: u16,
        request: &[u8],
        fds: &[BorrowedFd<'_>],
        timeout: Duration,
        incoming: Incoming<'_>,
        reply: &mut Message,
        reply_fds: bool,
    ) -> Result<(), ChannelError> {
        if !self.plain_reads {
            return self.call_inner(id, request, fds, timeout, incoming, reply, false);
        }
        if !reply_fds {
            return self.call_inner(id, request, fds, timeout, incoming, reply, true);
        }
        self.begin_fd_call(timeout)?;
        let r = self.call_inner(id, request, fds, timeout, incoming, reply, false);
        self.lock().fd_calls -= 1;
        r
    }

    /// Waits (at most `timeout`) until no plain read is in progress, then
    /// counts a call whose reply may carry fds.
    fn begin_fd_call(&self, timeout: Duration) -> Result<(), ChannelError> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            if let Some(e) = &st.closed {
                return Err(e.clone());
            }
            if !st.plain_reader {
                st.fd_calls += 1;
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ChannelError::Timeout(timeout));
            }
            st = self.wait_turn(st, Some(left));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn call_inner(
        &self,
        id: u16,
        request: &[u8],
        fds: &[BorrowedFd<'_>],
        timeout: Duration,
        mut incoming: Incoming<'_>,
        reply: &mut Message,
        plain_ok: bool,
    ) -> Result<(), ChannelError> {
        {
            let mut st = self.lock();
            if let Some(e) = &st.closed {
                return Err(e.clone());
            }
            if st.pending.contains_key(&id) {
                return Err(ChannelError::IdInUse(id));
            }
            if st.pending.len() >= self.max_pending {
                tracing::warn!(
                    device = %self.label,
                    limit = "max_pending_requests",
                    max = self.max_pending,
                    "too many requests await the peer's replies; failing this one with EAGAIN"
                );
                return Err(ChannelError::TooManyPending(self.max_pending));
            }
            st.pending.insert(id, None);
        }
        if let Err(e) = self.send(request, fds) {
            self.lock().pending.remove(&id);
            return Err(e);
        }
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        // The clock is read again only after a wait: the first pass is
        // within the deadline by construction.
        let mut first = true;
        loop {
            if let Some(Some(_)) = st.pending.get(&id) {
                if let Some(Some(m)) = st.pending.remove(&id) {
                    *reply = m;
                    return Ok(());
                }
            }
            if let Some(e) = &st.closed {
                let e = e.clone();
                st.pending.remove(&id);
                return Err(e);
            }
            let now = if std::mem::take(&mut first) {
                None
            } else {
                Some(Instant::now())
            };
            if now.is_some_and(|now| now >= deadline) {
                st.pending.remove(&id);
                return Err(ChannelError::Timeout(timeout));
            }
            if !st.reader_busy {
                let r;
                let plain = plain_ok && st.fd_calls == 0;
                if self.watchdog {
                    st.watched = Some((deadline, timeout));
                    (st, r) = self.read_as_leader(st, None, plain, reply);
                    st.watched = None;
                } else {
                    (st, r) = self.read_as_leader(st, Some(deadline), plain, reply);
                }
                match r {
                    Ok(()) if reply.is_reply() && reply.msg_id() == id => {
                        st.pending.remove(&id);
                        return Ok(());
                    }
                    Ok(()) if reply.is_reply() => {
                        let other = reply.take();
                        self.route_reply(&mut st, other);
                    }
                    Ok(()) => match &mut incoming {
                        Incoming::Queue => {
                            let len = reply.body.len().saturating_add(transport::HEADER_SIZE);
                            let total = st.queued_bytes.saturating_add(len);
                            let fds = st.queued_fds.saturating_add(reply.fds.len());
                            if total > self.max_queued_bytes {
                                tracing::warn!(
                                    device = %self.label,
                                    limit = "max_queued_bytes",
                                    max = self.max_queued_bytes,
                                    "peer flooded commands while a reply was awaited; closing"
                                );
                                self.close_locked(
                                    &mut st,
                                    ChannelError::QueueFull(self.max_queued_bytes),
                                );
                            } else if fds > self.max_queued_fds {
                                tracing::warn!(
                                    device = %self.label,
                                    limit = "max_held_fds",
                                    max = self.max_queued_fds,
                                    "peer sent too many fds while a reply was awaited; closing"
                                );
                                self.close_locked(
                                    &mut st,
                                    ChannelError::QueueFdsFull(self.max_queued_fds),
                                );
                            } else {
                                st.queued_bytes = total;
                                st.queued_fds = fds;
                                st.queue.push_back(reply.take());
                                self.wake(&st);
                            }
                        }
                        Incoming::Handle(f) => {
                            drop(st);
                            f(self, reply.take());
                            st = self.lock();
                        }
                    },
                    Err(TransportError::Timeout) => {}
                    Err(e) => self.close_locked(&mut st, ChannelError::Closed(e)),
                }
                continue;
            }
            let now = now.unwrap_or_else(Instant::now);
            st = self.wait_turn(st, Some(deadline.saturating_duration_since(now)));
        }
    }

    /// Reads and handles incoming commands with `handle` until `deadline`
    /// (client side, when it has no request in flight). Returns how many
    /// commands were handled.
    pub(crate) fn serve_until(
        &self,
        deadline: Instant,
        handle: &mut dyn FnMut(&Channel, Message),
    ) -> Result<usize, ChannelError> {
        let mut n = 0usize;
        let mut tmp = Message::default();
        let mut st = self.lock();
        loop {
            if let Some(e) = &st.closed {
                return Err(e.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(n);
            }
            if !st.reader_busy {
                let r;
                (st, r) = self.read_as_leader(st, Some(deadline), false, &mut tmp);
                match r {
                    Ok(()) if tmp.is_reply() => {
                        let reply = tmp.take();
                        self.route_reply(&mut st, reply);
                    }
                    Ok(()) => {
                        drop(st);
                        handle(self, tmp.take());
                        n = n.saturating_add(1);
                        st = self.lock();
                    }
                    Err(TransportError::Timeout) => {}
                    Err(e) => self.close_locked(&mut st, ChannelError::Closed(e)),
                }
                continue;
            }
            st = self.wait_turn(st, Some(deadline.saturating_duration_since(now)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;

    use super::*;
    use crate::transport::{recv_message, send_message};

    /// A request with `id` (the channel only looks at the id and flags).
    fn request(id: u16) -> Vec<u8> {
        let mut out = Vec::new();
        crate::proto::Request::DeviceReset
            .encode(id, false, &mut out)
            .unwrap();
        out
    }

    fn reply(id: u16) -> Vec<u8> {
        let mut out = Vec::new();
        crate::proto::encode_error_reply(id, 13, Errno::INVAL, &mut out);
        out
    }

    /// A call whose reply may carry fds does not send its request while
    /// another call reads without a control buffer, so the fd attached to
    /// its reply is never read plainly (the kernel would close it).
    #[test]
    fn an_fd_reply_is_never_read_without_a_control_buffer() {
        let (ours, peer) = UnixStream::pair().unwrap();
        let chan =
            Arc::new(Channel::new(ours.into(), FrameLimits::default(), 1 << 20).with_plain_reads());
        let limits = FrameLimits::default();
        let t = Duration::from_secs(10);
        // The plain call: its reply will come late.
        let plain = {
            let chan = chan.clone();
            std::thread::spawn(move || {
                let mut m = Message::default();
                chan.call(1, &request(1), &[], t, Incoming::Queue, &mut m, false)
                    .map(|()| m.fds.len())
            })
        };
        let mut m = Message::default();
        recv_message(peer.as_fd(), &limits, None, &mut m).unwrap();
        assert_eq!(m.msg_id(), 1);
        // Wait until the plain call is reading, then start the fd call.
        while !chan.lock().plain_reader {
            std::thread::sleep(Duration::from_millis(1));
        }
        let fd_call = {
            let chan = chan.clone();
            std::thread::spawn(move || {
                let mut m = Message::default();
                chan.call(2, &request(2), &[], t, Incoming::Queue, &mut m, true)
                    .map(|()| m.fds.len())
            })
        };
        // Its request does not come while the plain read goes on.
        std::thread::sleep(Duration::from_millis(100));
        let early = recv_message(
            peer.as_fd(),
            &limits,
            Some(Instant::now() + Duration::from_millis(1)),
            &mut m,
        );
        assert_eq!(early.unwrap_err(), TransportError::Timeout);
        // Answer the plain call: the fd call then sends, and its reply's
        // fd arrives.
        send_message(peer.as_fd(), &reply(1), &[]).unwrap();
        assert_eq!(plain.join().unwrap(), Ok(0));
        recv_message(peer.as_fd(), &limits, None, &mut m).unwrap();
        assert_eq!(m.msg_id(), 2);
        let (x, _y) = UnixStream::pair().unwrap();
        send_message(peer.as_fd(), &reply(2), &[x.as_fd()]).unwrap();
        assert_eq!(fd_call.join().unwrap(), Ok(1));
        assert_eq!(chan.lock().fd_calls, 0);
    }
}
