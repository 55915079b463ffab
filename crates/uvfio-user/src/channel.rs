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
//! Writes go through one lock so messages never interleave. The read-ahead
//! buffer lives in the state and whoever takes it out holds the reader
//! role, so it needs no lock of its own. The hot paths take three
//! uncontended mutex round trips and allocate nothing: the serving thread
//! takes the state lock to become the reader and to hand the role back,
//! and the write lock to reply; an uncontended [`Channel::call`] takes the
//! state lock to become the reader *before* sending (so nobody else can
//! read its reply, and it needs no entry in the pending map) and to hand
//! the role back, and the write lock to send.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::io::Errno;

use crate::transport::{self, FrameLimits, Message, RecvBuffer, TransportError, Wait};

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

/// A request for [`Channel::call`] to send.
pub(crate) struct Outgoing<'a> {
    /// Its `msg_id`, which the reply will carry.
    pub(crate) id: u16,
    /// The whole message.
    pub(crate) bytes: &'a [u8],
    /// Fds to attach to it.
    pub(crate) fds: &'a [BorrowedFd<'a>],
    /// How long to wait for the reply.
    pub(crate) timeout: Duration,
    /// Whether the reply may carry fds (it is then read with a control
    /// buffer; see [`Channel::with_plain_reads`]).
    pub(crate) reply_fds: bool,
}

/// What [`Channel::call`] does with a command it reads while waiting.
pub(crate) enum Incoming<'a> {
    /// Queue it for [`Channel::next_command`] (server).
    Queue,
    /// Handle it now, on the waiting thread (client: DMA_READ/DMA_WRITE).
    Handle(&'a mut dyn FnMut(&Channel, Message)),
}

struct State {
    /// The read-ahead buffer, out (`None`) while a thread holds the reader
    /// role: taking it *is* taking the role, so the buffer needs no lock
    /// of its own.
    rbuf: Option<Box<RecvBuffer>>,
    queue: VecDeque<Message>,
    queued_bytes: usize,
    queued_fds: usize,
    /// Calls in flight (sent or about to be), capped by `max_pending`.
    calls: usize,
    /// Requests awaiting replies that another thread may read: `None` until
    /// the reply arrives. A call that holds the reader role from its send
    /// to its reply (the uncontended case) never needs an entry.
    pending: IdMap<Option<Message>>,
    /// The id of the call holding the reader role without a `pending`
    /// entry, so a duplicate id is still refused.
    leading_call: Option<u16>,
    closed: Option<ChannelError>,
    limits: FrameLimits,
    /// Threads blocked on the condition variable: a wake-up is a syscall,
    /// so the hot path skips it when nobody waits.
    waiters: usize,
    /// With a watchdog: the reader blocked in `recvmsg` for a reply.
    watched: Option<Watch>,
    /// The reader reads without a control buffer ([`Channel::with_plain_reads`]).
    plain_reader: bool,
    /// Calls in flight whose reply may carry fds: while there are any, no
    /// read goes without a control buffer.
    fd_calls: usize,
}

/// What the watchdog knows of a reader awaiting a reply.
#[derive(Clone, Copy)]
struct Watch {
    /// The call's timeout (for the error).
    timeout: Duration,
    /// When the read must be done. The uncontended call reads no clock
    /// (the read is the whole wait): the watchdog sets this `timeout` past
    /// the first tick that sees the read, so the call fails within
    /// `timeout` + [`crate::watchdog::TICK`].
    deadline: Option<Instant>,
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
            write_lock: Mutex::new(()),
            state: Mutex::new(State {
                rbuf: Some(Box::new(RecvBuffer::new())),
                queue: VecDeque::new(),
                queued_bytes: 0,
                queued_fds: 0,
                calls: 0,
                pending: IdMap::default(),
                leading_call: None,
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
    // Inlined so that the call and the serving loop issue the syscall from
    // their own frame: see `crate::transport`, "Where the per-message
    // syscalls are issued".
    #[inline(always)]
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

    /// How reads wait for the next message when the socket has nothing
    /// (see [`Wait`]).
    pub(crate) fn with_wait(mut self, wait: Wait) -> Channel {
        if let Some(rb) = self
            .state
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .rbuf
            .as_mut()
        {
            rb.set_wait(wait);
        }
        self
    }

    /// Closes the connection if a reader has waited past its deadline
    /// (called by the watchdog).
    pub(crate) fn expire_if_overdue(&self, now: Instant) {
        let mut st = self.lock();
        let Some(w) = &mut st.watched else {
            return;
        };
        match w.deadline {
            None => w.deadline = Some(now + w.timeout),
            Some(d) if now >= d => {
                let timeout = w.timeout;
                tracing::warn!(
                    peer = %self.label,
                    ?timeout,
                    "no reply in time; closing the connection"
                );
                self.close_locked(&mut st, ChannelError::Timeout(timeout));
            }
            Some(_) => {}
        }
    }

    /// Takes the reader role if nobody holds it: the read-ahead buffer,
    /// which the reader uses without the state lock.
    fn take_role(&self, st: &mut State, plain: bool) -> Option<Box<RecvBuffer>> {
        let rb = st.rbuf.take()?;
        st.plain_reader = plain;
        Some(rb)
    }

    /// Reads one message into `msg` as the reader (`rb` is the role, see
    /// [`Channel::take_role`]), called without the state lock; then hands
    /// the role back, waking whoever waits for it or for a routed reply.
    /// `plain`: read without a control buffer (the caller checked that
    /// this is allowed, see [`Channel::with_plain_reads`]).
    // Inlined so that the call and the serving loop issue the syscall from
    // their own frame: see `crate::transport`, "Where the per-message
    // syscalls are issued".
    #[inline(always)]
    fn read_as_leader(
        &self,
        mut rb: Box<RecvBuffer>,
        limits: &FrameLimits,
        deadline: Option<Instant>,
        plain: bool,
        msg: &mut Message,
    ) -> (MutexGuard<'_, State>, Result<(), TransportError>) {
        rb.set_accept_fds(!plain);
        let r = rb.recv(self.sock.as_fd(), limits, deadline, msg);
        let mut st = self.lock();
        self.give_back_role(&mut st, rb);
        (st, r)
    }

    /// Hands the reader role (`rb`) back, waking whoever waits for it.
    fn give_back_role(&self, st: &mut State, rb: Box<RecvBuffer>) {
        st.rbuf = Some(rb);
        st.plain_reader = false;
        self.wake(st);
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
                self.wake(st);
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
    // Inlined so that the call and the serving loop issue the syscall from
    // their own frame: see `crate::transport`, "Where the per-message
    // syscalls are issued".
    #[inline(always)]
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
            if let Some(rb) = self.take_role(&mut st, false) {
                let limits = st.limits;
                drop(st);
                let r;
                (st, r) = self.read_as_leader(rb, &limits, None, false, msg);
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

    /// Sends `req` and waits at most `req.timeout` for the reply with its
    /// id, which lands in `reply`. `reply` doubles as the read buffer, so a
    /// caller that reuses it makes round trips without allocating.
    pub(crate) fn call(
        &self,
        req: &Outgoing<'_>,
        incoming: Incoming<'_>,
        reply: &mut Message,
    ) -> Result<(), ChannelError> {
        if !self.plain_reads {
            return self.call_inner(req, incoming, reply, false);
        }
        if !req.reply_fds {
            return self.call_inner(req, incoming, reply, true);
        }
        self.begin_fd_call(req.timeout)?;
        let r = self.call_inner(req, incoming, reply, false);
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

    /// The state lock is taken twice per uncontended call: once to admit
    /// it and take the reader role (before sending, so nobody else can read
    /// the reply and the call needs no `pending` entry), once to hand the
    /// role back with the reply in hand. A call that meets anything else
    /// first registers in `pending` as it hands the role over, in the same
    /// critical section, so whoever reads next can route its reply.
    ///
    /// The send and the read are inlined here, so an uncontended call
    /// returns once after its two syscalls, which is the least a call can,
    /// and refills the return stack before it does (see `crate::transport`
    /// on what a return after a syscall costs).
    fn call_inner(
        &self,
        req: &Outgoing<'_>,
        mut incoming: Incoming<'_>,
        reply: &mut Message,
        plain_ok: bool,
    ) -> Result<(), ChannelError> {
        let (id, timeout) = (req.id, req.timeout);
        // With a watchdog the uncontended call reads no clock (see `Watch`);
        // a deadline is fixed once the call has to wait for someone else.
        let mut deadline = (!self.watchdog).then(|| Instant::now() + timeout);
        let mut st = self.lock();
        if let Some(e) = &st.closed {
            return Err(e.clone());
        }
        if st.leading_call == Some(id) || st.pending.contains_key(&id) {
            return Err(ChannelError::IdInUse(id));
        }
        if st.calls >= self.max_pending {
            return Err(self.too_many_pending());
        }
        st.calls += 1;
        let mut plain = plain_ok && st.fd_calls == 0;
        let mut role = self.take_role(&mut st, plain);
        if role.is_some() {
            st.leading_call = Some(id);
            self.watch(&mut st, deadline, timeout);
        } else {
            st.pending.insert(id, None);
        }
        let limits = st.limits;
        drop(st);

        if let Err(e) = self.send(req.bytes, req.fds) {
            let mut st = self.lock();
            if let Some(rb) = role {
                st.watched = None;
                st.leading_call = None;
                self.give_back_role(&mut st, rb);
            }
            self.end_call(&mut st, id);
            return Err(e);
        }
        let mut held: Option<MutexGuard<'_, State>> = None;
        loop {
            if let Some(rb) = role.take() {
                // Without a watchdog the read itself is bounded.
                let read_deadline = if self.watchdog { None } else { deadline };
                let (mut st, r) = self.read_as_leader(rb, &limits, read_deadline, plain, reply);
                if let Some(w) = st.watched.take() {
                    deadline = deadline.or(w.deadline);
                }
                let ours = matches!(r, Ok(()) if reply.is_reply() && reply.msg_id() == id);
                if st.leading_call == Some(id) {
                    st.leading_call = None;
                    if !ours {
                        // Whoever reads next may read our reply.
                        st.pending.insert(id, None);
                    }
                }
                if ours {
                    self.end_call(&mut st, id);
                    // Returning to the caller next: see `refill_return_stack`.
                    transport::refill_return_stack();
                    return Ok(());
                }
                match r {
                    Ok(()) if reply.is_reply() => {
                        let other = reply.take();
                        self.route_reply(&mut st, other);
                    }
                    Ok(()) => match &mut incoming {
                        Incoming::Queue => self.queue_command(&mut st, reply.take()),
                        Incoming::Handle(f) => {
                            drop(st);
                            f(self, reply.take());
                            st = self.lock();
                        }
                    },
                    Err(TransportError::Timeout) => {}
                    Err(e) => self.close_locked(&mut st, ChannelError::Closed(e)),
                }
                held = Some(st);
                continue;
            }
            let mut st = held.take().unwrap_or_else(|| self.lock());
            if let Some(Some(_)) = st.pending.get(&id) {
                if let Some(Some(m)) = st.pending.remove(&id) {
                    *reply = m;
                    st.calls -= 1;
                    return Ok(());
                }
            }
            if let Some(e) = &st.closed {
                let e = e.clone();
                self.end_call(&mut st, id);
                return Err(e);
            }
            let now = Instant::now();
            let deadline = *deadline.get_or_insert(now + timeout);
            if now >= deadline {
                self.end_call(&mut st, id);
                return Err(ChannelError::Timeout(timeout));
            }
            plain = plain_ok && st.fd_calls == 0;
            if let Some(rb) = self.take_role(&mut st, plain) {
                self.watch(&mut st, Some(deadline), timeout);
                role = Some(rb);
                continue;
            }
            held = Some(self.wait_turn(st, Some(deadline.saturating_duration_since(now))));
        }
    }

    /// With a watchdog, tells it about the reader (see `Watch`).
    fn watch(&self, st: &mut State, deadline: Option<Instant>, timeout: Duration) {
        if self.watchdog {
            st.watched = Some(Watch { timeout, deadline });
        }
    }

    #[cold]
    #[inline(never)]
    fn too_many_pending(&self) -> ChannelError {
        tracing::warn!(
            device = %self.label,
            limit = "max_pending_requests",
            max = self.max_pending,
            "too many requests await the peer's replies; failing this one with EAGAIN"
        );
        ChannelError::TooManyPending(self.max_pending)
    }

    /// A call is over (replied, failed or given up): it no longer counts,
    /// and a reply that comes later is dropped.
    fn end_call(&self, st: &mut State, id: u16) {
        st.calls -= 1;
        if !st.pending.is_empty() {
            st.pending.remove(&id);
        }
    }

    /// Queues a command read while waiting for a reply (server), within
    /// the caps: a peer that floods them loses its connection.
    fn queue_command(&self, st: &mut State, cmd: Message) {
        let len = cmd.body.len().saturating_add(transport::HEADER_SIZE);
        let total = st.queued_bytes.saturating_add(len);
        let fds = st.queued_fds.saturating_add(cmd.fds.len());
        if total > self.max_queued_bytes {
            tracing::warn!(
                device = %self.label,
                limit = "max_queued_bytes",
                max = self.max_queued_bytes,
                "peer flooded commands while a reply was awaited; closing"
            );
            self.close_locked(st, ChannelError::QueueFull(self.max_queued_bytes));
        } else if fds > self.max_queued_fds {
            tracing::warn!(
                device = %self.label,
                limit = "max_held_fds",
                max = self.max_queued_fds,
                "peer sent too many fds while a reply was awaited; closing"
            );
            self.close_locked(st, ChannelError::QueueFdsFull(self.max_queued_fds));
        } else {
            st.queued_bytes = total;
            st.queued_fds = fds;
            st.queue.push_back(cmd);
            self.wake(st);
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
            if let Some(rb) = self.take_role(&mut st, false) {
                let limits = st.limits;
                drop(st);
                let r;
                (st, r) = self.read_as_leader(rb, &limits, Some(deadline), false, &mut tmp);
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

    /// `bytes` as request `id`, with no fds.
    fn outgoing(id: u16, bytes: &[u8], timeout: Duration, reply_fds: bool) -> Outgoing<'_> {
        Outgoing {
            id,
            bytes,
            fds: &[],
            timeout,
            reply_fds,
        }
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
                chan.call(&outgoing(1, &request(1), t, false), Incoming::Queue, &mut m)
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
                chan.call(&outgoing(2, &request(2), t, true), Incoming::Queue, &mut m)
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

    /// Starts `call(id)` on its own thread; returns once it holds the
    /// reader role (`lead`) or waits in `pending` behind another reader.
    fn start_call(
        chan: &Arc<Channel>,
        id: u16,
        lead: bool,
    ) -> std::thread::JoinHandle<Result<u16, ChannelError>> {
        let c = chan.clone();
        let t = std::thread::spawn(move || {
            let mut m = Message::default();
            let t = Duration::from_secs(10);
            c.call(
                &outgoing(id, &request(id), t, false),
                Incoming::Queue,
                &mut m,
            )
            .map(|()| m.msg_id())
        });
        loop {
            let st = chan.lock();
            let there = if lead {
                st.leading_call == Some(id)
            } else {
                st.pending.contains_key(&id)
            };
            if there {
                return t;
            }
            drop(st);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn peer_reads_request(peer: &UnixStream, id: u16) {
        let mut m = Message::default();
        recv_message(peer.as_fd(), &FrameLimits::default(), None, &mut m).unwrap();
        assert_eq!(m.msg_id(), id);
    }

    /// The call that reads first holds no `pending` entry; whichever order
    /// the replies come in, each reaches its own call (the reader routes
    /// the other's, or registers itself before handing the role over).
    #[test]
    fn replies_in_either_order_reach_their_calls() {
        for leader_first in [false, true] {
            let (ours, peer) = UnixStream::pair().unwrap();
            let chan = Arc::new(Channel::new(ours.into(), FrameLimits::default(), 1 << 20));
            let a = start_call(&chan, 1, true);
            peer_reads_request(&peer, 1);
            let b = start_call(&chan, 2, false);
            peer_reads_request(&peer, 2);
            let order: [u16; 2] = if leader_first { [1, 2] } else { [2, 1] };
            for id in order {
                send_message(peer.as_fd(), &reply(id), &[]).unwrap();
            }
            assert_eq!(a.join().unwrap(), Ok(1));
            assert_eq!(b.join().unwrap(), Ok(2));
            let st = chan.lock();
            assert!(st.pending.is_empty() && st.calls == 0 && st.leading_call.is_none());
            assert!(st.rbuf.is_some(), "the reader role was handed back");
        }
    }

    /// A command read by a call before its reply is queued for the serving
    /// thread, and the call still gets its reply.
    #[test]
    fn a_command_met_on_the_way_is_queued() {
        let (ours, peer) = UnixStream::pair().unwrap();
        let chan = Arc::new(Channel::new(ours.into(), FrameLimits::default(), 1 << 20));
        let a = start_call(&chan, 7, true);
        peer_reads_request(&peer, 7);
        send_message(peer.as_fd(), &request(40), &[]).unwrap();
        send_message(peer.as_fd(), &reply(7), &[]).unwrap();
        assert_eq!(a.join().unwrap(), Ok(7));
        let mut m = Message::default();
        chan.next_command(&mut m).unwrap();
        assert_eq!((m.msg_id(), m.is_reply()), (40, false));
    }

    /// The reading call counts: its id is refused while it waits, and it
    /// takes a slot of the pending cap.
    #[test]
    fn the_leading_call_holds_its_id_and_a_pending_slot() {
        let (ours, peer) = UnixStream::pair().unwrap();
        let chan =
            Arc::new(Channel::new(ours.into(), FrameLimits::default(), 1 << 20).with_caps(16, 2));
        let a = start_call(&chan, 3, true);
        peer_reads_request(&peer, 3);
        let mut m = Message::default();
        let t = Duration::from_secs(1);
        assert_eq!(
            chan.call(&outgoing(3, &request(3), t, false), Incoming::Queue, &mut m),
            Err(ChannelError::IdInUse(3))
        );
        let b = start_call(&chan, 4, false);
        peer_reads_request(&peer, 4);
        assert_eq!(
            chan.call(&outgoing(5, &request(5), t, false), Incoming::Queue, &mut m),
            Err(ChannelError::TooManyPending(2))
        );
        send_message(peer.as_fd(), &reply(4), &[]).unwrap();
        send_message(peer.as_fd(), &reply(3), &[]).unwrap();
        assert_eq!(a.join().unwrap(), Ok(3));
        assert_eq!(b.join().unwrap(), Ok(4));
    }

    /// A reading call that meets a command hands the role over while it
    /// handles it; the reply to it that the next reader reads is routed to
    /// it, not dropped (it registered before handing over).
    #[test]
    fn a_reply_read_by_the_next_reader_reaches_the_first_call() {
        let (ours, peer) = UnixStream::pair().unwrap();
        let chan = Arc::new(Channel::new(ours.into(), FrameLimits::default(), 1 << 20));
        let c = chan.clone();
        let a = std::thread::spawn(move || {
            let mut m = Message::default();
            // Handling the command: wait until someone else has read and
            // routed our reply.
            let mut handle = |ch: &Channel, _cmd: Message| {
                let until = Instant::now() + Duration::from_secs(5);
                while Instant::now() < until && !matches!(ch.lock().pending.get(&1), Some(Some(_)))
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
            };
            let t = Duration::from_secs(10);
            c.call(
                &outgoing(1, &request(1), t, false),
                Incoming::Handle(&mut handle),
                &mut m,
            )
            .map(|()| m.msg_id())
        });
        while chan.lock().leading_call != Some(1) {
            std::thread::sleep(Duration::from_millis(1));
        }
        peer_reads_request(&peer, 1);
        let b = start_call(&chan, 2, false);
        peer_reads_request(&peer, 2);
        send_message(peer.as_fd(), &request(40), &[]).unwrap();
        send_message(peer.as_fd(), &reply(1), &[]).unwrap();
        send_message(peer.as_fd(), &reply(2), &[]).unwrap();
        assert_eq!(b.join().unwrap(), Ok(2));
        assert_eq!(a.join().unwrap(), Ok(1));
    }
}
