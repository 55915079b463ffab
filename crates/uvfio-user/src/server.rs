//! The vfio-user server: every device of a core [`Registry`] gets a
//! listening socket `DIR/NAME.sock`; each connection is one user of one
//! device.
//!
//! # Threads
//!
//! - **One acceptor thread** `poll`s every listening socket plus an eventfd
//!   that wakes it when the set changes. Sockets appear and disappear from
//!   a registry listener ([`Registry::add_listener`]): registering a device
//!   while the server runs makes it reachable at once; unregistering
//!   removes its socket file first, so nobody new can connect. The
//!   acceptor also enforces the negotiation deadline and answers the
//!   connections it refuses (see *Limits*), without blocking and without
//!   a thread per refused client.
//! - **One thread per connection** runs the [`Session`] state machine over
//!   a `Channel` (crate-private, `channel.rs`). This is the simplest sound
//!   model for device semantics: driver ops are synchronous and may block (a reset, a DMA round trip
//!   to the client), and a thread of its own means one slow or hostile
//!   client can only stall itself: a client flooding pipelined requests
//!   costs its own thread's CPU time, and the kernel's scheduler keeps
//!   the other connections' threads running (`tests/fairness.rs` measures
//!   it). The connection thread reads, executes and answers, with no
//!   cross-thread hand-off (see *Performance*). A few hundred connections
//!   cost a few hundred mostly idle threads (virtual stacks, no CPU; 57 KiB
//!   resident each); an epoll reactor would save memory but would need a
//!   worker pool anyway for blocking driver ops.
//! - A device that DMAs through messages (a DMA_MAP without an fd) sends
//!   DMA_READ/DMA_WRITE from whichever thread it runs on; the `Channel`
//!   routes the reply back by message id and queues client commands that
//!   arrive meanwhile (see its docs).
//!
//! # Performance
//!
//! What stands between a request and the syscall floor, and what was done
//! about it (figures from `uvfio bench` on the project's 2-core VM; the
//! README has the whole table):
//!
//! - **Syscalls.** A round trip costs the server one `recvmsg` (the
//!   [`RecvBuffer`](crate::transport::RecvBuffer) reads ahead, so a header
//!   and its body, or several pipelined requests, arrive in one call) and
//!   one `send`; the client one `send` and one `recv` (a `recvmsg` when the
//!   reply may carry fds), waiting inside it with no timer rather than in a
//!   `poll` first. That is the syscall count of a raw ping-pong
//!   (strace-verified).
//! - **Allocation.** None per message in steady state, client and server
//!   (`tests/allocations.rs` counts): receive buffers, the reply encoder
//!   and region data buffers are reused.
//! - **Locks.** The request path takes the connection's own channel locks
//!   (three uncontended mutex round trips a side; uncontended unless that
//!   device is doing DMA through messages) and whatever the driver takes;
//!   nothing shared with other connections. Device DMA into mapped client
//!   memory takes no lock at all ([`uvfio_core::dma`]: a per-thread
//!   lookaside with grace periods).
//! - **Code.** The per-message receive path keeps everything but "bytes
//!   arrived" (fds, errors, waits, EOF) in cold functions out of line, and
//!   the release build is one LTO unit: ~2,600 user instructions a round
//!   trip, client and server (callgrind; 3,400 before, the ping-pong 392).
//! - **Where the syscalls are issued.** The serving loop's `recvmsg` and
//!   `send` are inlined into the loop, and the client's `send` and `recv`
//!   into its call, so nothing returns between a syscall and the next
//!   one; the client refills the CPU's return stack before its call
//!   returns. On the project's VM the first return after a syscall that
//!   uses a return-stack entry the kernel left costs 0.4–1 µs (measured
//!   in [`crate::transport`]); the two changes took the one-CPU round trip
//!   from 10.9–11.5 to 9.3–10.1 µs.
//! - **Result.** A 4-byte REGION_READ round trip with client and server
//!   on one CPU takes 1.04–1.13× a raw `send`/`recv` UNIX ping-pong of the
//!   same sizes whose syscalls are all inline (goal 1.10×: met in 8 of 13
//!   runs; the ping-pong's own level moves 8.3–9.6 µs with the address
//!   layout, and whenever it lands on its fastest, ours is 1.12–1.13×),
//!   1.07–1.08× a ping-pong whose echo end uses `recvmsg`
//!   with a control buffer as this server must, and 0.99–1.00× that
//!   ping-pong with its client returning after each round trip.
//!   On two CPUs the cross-CPU wake-ups of this VM (~35–50 µs a round
//!   trip) hide it (0.97–1.00×). Kernel scheduling adds noise on one CPU:
//!   a read frees the skb the peer sent and wakes the peer's socket for
//!   write space; a peer blocked in `recv` wakes, may preempt, finds
//!   nothing and sleeps again (ftrace: 2.5–3.1 context switches a round
//!   trip). Waiting in `poll(POLLIN)` avoids those wake-ups but adds a
//!   syscall: 3 % better on one CPU, 30–60 % worse on two, so it is not
//!   done. README § Performance has the table and the rest.
//! - **Polling (opt-in).** [`ServerConfig::wait`] and
//!   [`ClientConfig::wait`](crate::ClientConfig::wait) take a
//!   [`Wait`]: instead of blocking at once, a reader retries a
//!   non-blocking receive for up to a budget, spinning (peer on another
//!   CPU) or yielding (peer on the same CPU), and blocks only after. A
//!   blocking wake-up that crosses CPUs costs ~10 µs on the project's VM
//!   (an IPI through the hypervisor). With both ends spinning for up to
//!   50 µs, a two-CPU round trip takes 3.6–3.9 µs instead of 37–38 µs
//!   (0.09–0.10× the blocking raw ping-pong; 1.21–1.25× a ping-pong that
//!   spins the same way with every syscall inline), and less CPU: 6–7 µs
//!   a round trip against 30–36 µs blocking, since the wake-ups cost more
//!   than the spinning. Yielding on one CPU: 8.0–8.2 µs, 0.97–0.98× the
//!   *blocking* raw ping-pong (the reader yields from its receive loop,
//!   not from a helper that would return right after the syscall).
//!   The price is CPU while a client is between requests: up to the
//!   budget after each request. Off by default (`uvfio serve --poll`).
//! - **Scale.** 1,000 registered devices cost 3.7 KiB resident each and a
//!   connection 57 KiB; 256 clients on 2 cores get 5× the throughput of
//!   one here (one client waits on wake-ups; 256 keep both CPUs busy).
//!
//! # One client per device
//!
//! A connection opens the device's group for its own container, and the
//! core allows one open per group: a second client gets an error reply to
//! its VERSION with `EBUSY` and is closed; once the first leaves, the next
//! can attach. (A consequence: two devices of one IOMMU group cannot be
//! used by two clients at the same time, as with VFIO.)
//!
//! When a client goes, its DMA mappings, eventfds and container go with
//! it, and the device keeps its state for a reconnect, as the spec asks:
//! connections open the device with [`OpenOptions::keep_state`], so the
//! driver's `close_device` hears [`CloseReason::Disconnected`] (a
//! `uvfio_pci::PciDevice` keeps its config space and MSI-X table)
//! rather than the kernel-like [`CloseReason::Released`], which resets.
//!
//! [`CloseReason::Disconnected`]: uvfio_core::CloseReason::Disconnected
//! [`CloseReason::Released`]: uvfio_core::CloseReason::Released
//!
//! # Limits
//!
//! Nothing a client sends sizes an allocation, a loop or a wait without a
//! bound. Each limit below is configurable ([`ServerConfig`],
//! [`SessionConfig`]); hitting one costs that client an error reply or its
//! connection, logs **exactly one warning** (with a `limit` field naming
//! it), and costs other clients nothing.
//!
//! | limit | default | when hit |
//! |---|---|---|
//! | message size before VERSION | 64 KiB ([`MAX_VERSION_MSG_SIZE`]) | connection closed |
//! | message size after VERSION ([`ServerConfig::max_msg_size`]; by default derived from [`SessionConfig::max_data_xfer_size`]: that + 4 KiB, at least 1 MiB + 4 KiB) | 1 MiB + 4 KiB | connection closed |
//! | data in one REGION_READ/WRITE, DMA_READ/WRITE | `max_data_xfer_size` (1 MiB) | `E2BIG` reply |
//! | fds with one message ([`SessionConfig::max_msg_fds`]) | 16 | fds closed, `EINVAL` reply |
//! | fds held for one client: IRQ eventfds + fd-backed DMA mappings ([`SessionConfig::max_held_fds`]) | 1024 | `ENOSPC` reply |
//! | DMA mappings per client ([`SessionConfig::max_dma_maps`]) | 65535 | `ENOSPC` reply |
//! | bytes DMA-mapped per client ([`SessionConfig::max_dma_bytes`]) | 1 TiB | `ENOSPC` reply |
//! | requests to the client awaiting replies ([`ServerConfig::max_pending_requests`]) | 64 | the device's DMA fails with `EAGAIN` |
//! | a DMA reply's wait ([`ServerConfig::dma_timeout`]) | 5 s | the device's DMA fails with `ETIMEDOUT` |
//! | commands (bytes, fds) queued while a DMA reply is awaited ([`ServerConfig::max_queued_bytes`], `max_held_fds`) | 64 MiB, 1024 | connection closed |
//! | clients per device | 1 | `EBUSY` reply to VERSION, closed |
//! | connections in total ([`ServerConfig::max_connections`]) | 1024 | error reply `EUSERS` to VERSION, closed |
//! | time from connect to a finished VERSION ([`ServerConfig::negotiation_timeout`]) | 5 s | connection closed |
//! | time to finish a started message, or to take a reply ([`ServerConfig::io_timeout`]) | 10 s | connection closed |
//! | peers' uids ([`ServerConfig::allowed_uids`]) | anyone who can open the socket | error reply `EPERM` to VERSION, closed |
//!
//! The receive side also never holds more than `max_msg_fds` fds of a
//! connection at once (see [`crate::transport`]). Arithmetic for the
//! process as a whole: each fd-backed DMA mapping costs one entry of the
//! process's `vm.max_map_count` (65530 by default) and each held eventfd
//! one fd of `RLIMIT_NOFILE`, so `max_connections × max_held_fds` should
//! stay below both for a hostile set of clients to be unable to starve the
//! others; lower the per-client limits when serving many untrusted clients.
//! Dirty-page logging costs one bit per mapped page, so at most
//! `max_dma_bytes / 4 KiB / 8` bytes per client (32 MiB at the default).
//!
//! # Client memory (no SIGBUS)
//!
//! A client's DMA memory comes as an fd with DMA_MAP. The server maps it
//! only if it is a memfd sealed with `F_SEAL_SHRINK` and at least
//! `offset + size` bytes long, checked with `F_GET_SEALS` and `fstat`
//! *before* the `mmap` ([`uvfio_core::MmapRegion::map_sealed`]); anything
//! else (an unsealed memfd, a regular file, a pipe, a socket, a range past
//! the end) is refused with `EINVAL` and the fd closed. Once sealed, the
//! client cannot take the pages away: `ftruncate` to shrink fails with
//! `EPERM` for the client, unmapping its own copy or closing its fd leaves
//! our mapping intact, and punching a hole only zeroes pages (shmem
//! refills them on access). So device DMA into client memory can never
//! raise `SIGBUS` in the server. DMA_MAP without an fd goes through
//! DMA_READ/DMA_WRITE messages instead and never maps anything.
//!
//! # Access control
//!
//! Socket files are mode 0600 in a folder that is created 0700 (and, with
//! [`ServerConfig::private_socket_dir`], the default, must be a real
//! folder owned by us and is set to 0700); symlinks
//! are never followed when sockets are created or removed. Optionally,
//! [`ServerConfig::allowed_uids`] lists the peer uids (`SO_PEERCRED`)
//! allowed in; anyone else gets an `EPERM` error reply to VERSION and is
//! closed.
//!
//! # Faults
//!
//! Every driver call of a connection runs inside `catch_unwind`. A driver
//! op that panics gets its request an `EIO` error reply and closes that
//! connection only (the session, its mappings and eventfds are released);
//! the device is marked *faulted* ([`Server::faulted`]). A panic in
//! `close_device` at the end of a connection still releases the device
//! and marks it faulted too ([`DeviceHandle::close`] reports it). The next client to attach to a
//! faulted device gets it reset first; if the device cannot be reset (no
//! reset op, or it fails or panics again) that client gets `EIO` and the
//! device stays faulted until it is removed, which always works. A driver
//! op returning an error is just an error reply. If `accept` fails for
//! lack of fds or memory (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`), the
//! acceptor logs one warning, stops accepting for
//! [`ACCEPT_BACKOFF`] (pending connections wait in the backlog), and
//! logs again only once it has recovered.
//!
//! # Unregister
//!
//! The core unlinks the device and calls `request(n)` on the driver (a PCI
//! device signals its REQ eventfd) and on our `on_request` hook. The hook
//! arms a grace timer; if the client has not disconnected when it expires,
//! the server shuts the socket down, the connection thread ends, the
//! handle drops and unregister returns.
//!
//! # Socket files
//!
//! Created mode 0600 (bind, then chmod through an `O_PATH|O_NOFOLLOW`
//! descriptor, then listen: no client can connect before the mode is set,
//! and a symlink planted at the path is never followed). An existing path
//! is replaced only if it is a socket nobody listens on; anything else is
//! left alone and the device is not served (logged). Files are removed on
//! unregister and on [`Server::shutdown`], only if they are still ours.

mod files;
mod refuse;

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::SocketFlags;
use uvfio_core::{
    Container, DeviceFlags, DeviceHandle, DmaBacking, DmaConfig, GroupId, IommuType, OpenOptions,
    Registry, RegistryEvent, RequestHook,
};

use crate::channel::{Channel, ChannelError, Incoming, Outgoing};
use crate::proto::{self, DecodeLimits, Negotiated};
use crate::session::{Attachment, MessageDmaFactory, Session, SessionConfig, SessionState, Step};
use crate::transport::{FrameLimits, Message, TransportError, Wait};

use files::FileId;
use refuse::Refusals;

/// Largest message accepted before VERSION is negotiated (a VERSION is a
/// few hundred bytes of JSON).
pub const MAX_VERSION_MSG_SIZE: u32 = 64 * 1024;

/// How long the acceptor stops accepting after `accept` failed for lack
/// of fds or memory.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Server settings. Start from [`ServerConfig::new`]. See the module docs
/// (*Limits*) for what each limit does when a client reaches it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Directory holding the `NAME.sock` files (created 0700 if missing).
    pub socket_dir: PathBuf,
    /// An existing socket folder must be a real folder owned by our
    /// effective uid, and is set to mode 0700 (default true). Turn off to
    /// manage the folder's ownership and mode yourself (e.g. to share it
    /// with a group).
    pub private_socket_dir: bool,
    /// How long a client may keep a device after unregister asked it to
    /// let go, before the server closes its connection.
    pub grace_period: Duration,
    /// How long a device waits for the client to answer a DMA_READ or
    /// DMA_WRITE before the DMA fails with `ETIMEDOUT`.
    pub dma_timeout: Duration,
    /// How long a client may take to send a message once it started it,
    /// or leave a reply unread, before its connection is dropped.
    pub io_timeout: Duration,
    /// How long a client may take from connecting to a finished VERSION
    /// exchange before its connection is dropped (slowloris guard).
    pub negotiation_timeout: Duration,
    /// The receive limits we advertise (`max_data_xfer_size`,
    /// `max_msg_fds`, `max_dma_maps`, `pgsizes`) and the per-client
    /// budgets (`max_dma_bytes`, `max_held_fds`).
    pub session: SessionConfig,
    /// Bytes of client commands queued while a DMA reply is awaited before
    /// the connection is considered abusive and dropped.
    pub max_queued_bytes: usize,
    /// Most DMA_READ/DMA_WRITE requests to one client awaiting replies at
    /// once; more fail at once with `EAGAIN`.
    pub max_pending_requests: usize,
    /// Most connections at once, negotiated or not, across all devices.
    pub max_connections: usize,
    /// Largest message (header included) accepted after VERSION; `None`
    /// (the default) derives it from `session.max_data_xfer_size`. Before
    /// VERSION the cap is [`MAX_VERSION_MSG_SIZE`] (or this, if smaller).
    pub max_msg_size: Option<u32>,
    /// If set, only peers with one of these uids (`SO_PEERCRED`) may
    /// connect; others get `EPERM`.
    pub allowed_uids: Option<Vec<u32>>,
    /// How a connection thread waits for its client's next request
    /// ([`Wait`]): blocking by default; polling lowers the latency of a
    /// busy client for CPU time (see the module docs, *Performance*).
    pub wait: Wait,
}

impl ServerConfig {
    /// Defaults for sockets in `socket_dir`: 5 s grace period, 5 s DMA
    /// timeout (QEMU's per-reply timeout), 10 s I/O timeout, 5 s to
    /// negotiate, 1 MiB data transfers, 16 fds per message, 1024 held fds,
    /// 65535 DMA maps and 1 TiB mapped per client, 64 MiB of queued
    /// commands, 64 pending DMA requests, 1024 connections, any uid.
    pub fn new(socket_dir: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            socket_dir: socket_dir.into(),
            private_socket_dir: true,
            grace_period: Duration::from_secs(5),
            dma_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(10),
            negotiation_timeout: Duration::from_secs(5),
            session: SessionConfig::default(),
            max_queued_bytes: 64 << 20,
            max_pending_requests: 64,
            max_connections: 1024,
            max_msg_size: None,
            allowed_uids: None,
            wait: Wait::Block,
        }
    }

    /// Sets [`ServerConfig::wait`].
    #[must_use]
    pub fn wait(mut self, wait: Wait) -> Self {
        self.wait = wait;
        self
    }

    /// Sets [`ServerConfig::grace_period`].
    #[must_use]
    pub fn grace_period(mut self, d: Duration) -> Self {
        self.grace_period = d;
        self
    }

    /// Sets [`ServerConfig::dma_timeout`].
    #[must_use]
    pub fn dma_timeout(mut self, d: Duration) -> Self {
        self.dma_timeout = d;
        self
    }

    /// Sets [`ServerConfig::io_timeout`].
    #[must_use]
    pub fn io_timeout(mut self, d: Duration) -> Self {
        self.io_timeout = d;
        self
    }

    /// Sets [`ServerConfig::negotiation_timeout`].
    #[must_use]
    pub fn negotiation_timeout(mut self, d: Duration) -> Self {
        self.negotiation_timeout = d;
        self
    }

    /// Sets [`ServerConfig::session`].
    #[must_use]
    pub fn session(mut self, s: SessionConfig) -> Self {
        self.session = s;
        self
    }

    /// Sets [`ServerConfig::max_queued_bytes`].
    #[must_use]
    pub fn max_queued_bytes(mut self, n: usize) -> Self {
        self.max_queued_bytes = n;
        self
    }

    /// Sets [`ServerConfig::max_pending_requests`].
    #[must_use]
    pub fn max_pending_requests(mut self, n: usize) -> Self {
        self.max_pending_requests = n;
        self
    }

    /// Sets [`ServerConfig::max_connections`].
    #[must_use]
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Sets [`ServerConfig::max_msg_size`].
    #[must_use]
    pub fn max_msg_size(mut self, n: u32) -> Self {
        self.max_msg_size = Some(n);
        self
    }

    /// Sets [`ServerConfig::allowed_uids`].
    #[must_use]
    pub fn allowed_uids(mut self, uids: impl IntoIterator<Item = u32>) -> Self {
        self.allowed_uids = Some(uids.into_iter().collect());
        self
    }

    /// Sets [`ServerConfig::private_socket_dir`].
    #[must_use]
    pub fn private_socket_dir(mut self, on: bool) -> Self {
        self.private_socket_dir = on;
        self
    }
}

/// One served device.
struct Endpoint {
    group: GroupId,
    path: PathBuf,
    file: FileId,
    listener: Arc<OwnedFd>,
}

/// What the server knows about a live connection.
struct ConnEntry {
    device: String,
    shared: Arc<ConnShared>,
    thread: Option<JoinHandle<()>>,
    /// The VERSION exchange must be over by then.
    negotiate_by: Instant,
}

/// Shared between a connection thread, its grace timer and the server.
struct ConnShared {
    chan: Arc<Channel>,
    ended: Mutex<bool>,
    ended_cv: Condvar,
    grace_armed: AtomicBool,
    /// Negotiated, or closed for not negotiating in time: either way the
    /// acceptor stops watching the deadline.
    deadline_done: AtomicBool,
}

impl ConnShared {
    fn mark_ended(&self) {
        *self.ended.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.ended_cv.notify_all();
    }

    /// Waits up to `d` for the connection to end; returns whether it did.
    fn wait_ended(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        while !*ended {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            ended = self
                .ended_cv
                .wait_timeout(ended, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

struct State {
    endpoints: HashMap<String, Endpoint>,
    conns: HashMap<u64, ConnEntry>,
    next_conn: u64,
    stopping: bool,
    /// Devices whose driver panicked under a connection.
    faulted: HashSet<String>,
}

struct Inner {
    registry: Registry,
    config: ServerConfig,
    state: Mutex<State>,
    wake: OwnedFd,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_acceptor(&self) {
        if let Err(e) = uvfio_core::irq::signal_eventfd(&self.wake) {
            tracing::error!("cannot wake the acceptor: {e}");
        }
    }

    fn socket_path(&self, name: &str) -> PathBuf {
        self.config.socket_dir.join(format!("{name}.sock"))
    }

    /// Serves `name` (idempotent). Called with the state lock held.
    fn add_endpoint(&self, st: &mut State, name: &str, group: GroupId) {
        if st.stopping || st.endpoints.contains_key(name) {
            return;
        }
        let path = self.socket_path(name);
        match files::bind_listener(&path) {
            Ok((listener, file)) => {
                tracing::info!(device = name, path = %path.display(), "serving");
                st.endpoints.insert(
                    name.to_owned(),
                    Endpoint {
                        group,
                        path,
                        file,
                        listener: Arc::new(listener),
                    },
                );
                self.wake_acceptor();
            }
            Err(e) => {
                tracing::error!(device = name, path = %path.display(), "cannot listen: {e}");
            }
        }
    }

    /// Stops serving `name`: removes the socket file and closes the
    /// listener (once the acceptor lets go of it).
    fn remove_endpoint(&self, st: &mut State, name: &str) {
        if let Some(ep) = st.endpoints.remove(name) {
            files::remove_socket_file(&ep.path, ep.file);
            self.wake_acceptor();
            tracing::info!(device = name, "no longer serving");
        }
    }

    fn on_event(&self, ev: &RegistryEvent) {
        let mut st = self.lock();
        match ev {
            RegistryEvent::Registered { name, group } => {
                // A new device under an old name starts with a clean slate.
                st.faulted.remove(name.as_str());
                self.add_endpoint(&mut st, name, *group);
            }
            RegistryEvent::Unregistering { name } => {
                st.faulted.remove(name.as_str());
                self.remove_endpoint(&mut st, name);
            }
        }
    }

    fn mark_faulted(&self, name: &str) {
        self.lock().faulted.insert(name.to_owned());
    }

    fn is_faulted(&self, name: &str) -> bool {
        self.lock().faulted.contains(name)
    }
}

/// A vfio-user server over the devices of a [`Registry`]. Dropping it shuts
/// it down like [`Server::shutdown`].
pub struct Server {
    inner: Arc<Inner>,
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("socket_dir", &self.inner.config.socket_dir)
            .finish()
    }
}

impl Server {
    /// Starts serving every device registered in `registry` now and later.
    ///
    /// Fails if the socket directory cannot be created, is not acceptable
    /// (see [`ServerConfig::private_socket_dir`]) or the acceptor cannot
    /// start. A device whose socket cannot be created is logged and
    /// skipped (see [`Server::socket_path`]).
    pub fn new(registry: Registry, config: ServerConfig) -> std::io::Result<Server> {
        files::prepare_dir(&config.socket_dir, config.private_socket_dir)?;
        let wake = uvfio_core::irq::eventfd().map_err(std::io::Error::from)?;
        let inner = Arc::new(Inner {
            registry: registry.clone(),
            config,
            state: Mutex::new(State {
                endpoints: HashMap::new(),
                conns: HashMap::new(),
                next_conn: 1,
                stopping: false,
                faulted: HashSet::new(),
            }),
            wake,
        });
        {
            // Hold the state lock across subscribe + snapshot: events fired
            // meanwhile wait for it and are applied after the snapshot, so
            // no device is missed or resurrected.
            let mut st = inner.lock();
            let weak: Weak<Inner> = Arc::downgrade(&inner);
            registry.add_listener(Arc::new(move |ev: &RegistryEvent| {
                if let Some(inner) = weak.upgrade() {
                    inner.on_event(ev);
                }
            }));
            for d in registry.devices() {
                inner.add_endpoint(&mut st, &d.name, d.group);
            }
        }
        let acc = inner.clone();
        let acceptor = std::thread::Builder::new()
            .name("uvfio-user-accept".into())
            .spawn(move || Acceptor::default().run(&acc))?;
        Ok(Server {
            inner,
            acceptor: Some(acceptor),
        })
    }

    /// The socket path of a served device (`None` if it is not served).
    pub fn socket_path(&self, name: &str) -> Option<PathBuf> {
        self.inner
            .lock()
            .endpoints
            .get(name)
            .map(|e| e.path.clone())
    }

    /// Names of the devices being served, sorted.
    pub fn devices(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.lock().endpoints.keys().cloned().collect();
        v.sort();
        v
    }

    /// Number of live connections.
    pub fn connections(&self) -> usize {
        self.inner.lock().conns.len()
    }

    /// Number of live connections to `device`.
    pub fn connections_to(&self, device: &str) -> usize {
        self.inner
            .lock()
            .conns
            .values()
            .filter(|c| c.device == device)
            .count()
    }

    /// Devices whose driver panicked under a connection and have not been
    /// reset since (sorted); see the module docs (*Faults*).
    pub fn faulted(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.lock().faulted.iter().cloned().collect();
        v.sort();
        v
    }

    /// Closes every connection to `device` now (the clients see EOF).
    pub fn disconnect(&self, device: &str) {
        let st = self.inner.lock();
        for c in st.conns.values().filter(|c| c.device == device) {
            c.shared.chan.shutdown();
        }
    }

    /// Stops accepting, closes every connection, waits for their threads
    /// and removes the socket files.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let threads: Vec<JoinHandle<()>> = {
            let mut st = self.inner.lock();
            st.stopping = true;
            let names: Vec<String> = st.endpoints.keys().cloned().collect();
            for n in names {
                self.inner.remove_endpoint(&mut st, &n);
            }
            st.conns
                .values_mut()
                .filter_map(|c| {
                    c.shared.chan.shutdown();
                    c.thread.take()
                })
                .collect()
        };
        self.inner.wake_acceptor();
        if let Some(a) = self.acceptor.take() {
            if a.join().is_err() {
                tracing::error!("acceptor thread panicked");
            }
        }
        for t in threads {
            if t.join().is_err() {
                tracing::error!("connection thread panicked");
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The acceptor thread's own state.
#[derive(Default)]
struct Acceptor {
    refusals: Refusals,
    /// Not accepting until then (after EMFILE and the like).
    backoff_until: Option<Instant>,
    /// An fd-exhaustion episode was logged and has not ended yet.
    starved: bool,
}

fn poll_timeout(deadline: Option<Instant>, now: Instant) -> Option<Timespec> {
    deadline.map(|d| {
        let left = d.saturating_duration_since(now);
        Timespec {
            tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            // Round up so we never wake just before the deadline.
            tv_nsec: i64::from(left.subsec_nanos().saturating_add(999_999) / 1_000_000 * 1_000_000)
                .min(999_999_999),
        }
    })
}

impl Acceptor {
    fn run(mut self, inner: &Arc<Inner>) {
        loop {
            let now = Instant::now();
            let (listeners, negotiation_deadline) = {
                let st = inner.lock();
                if st.stopping {
                    return;
                }
                let deadline = enforce_negotiation_deadlines(&st, now);
                let l: Vec<(String, GroupId, Arc<OwnedFd>)> = st
                    .endpoints
                    .iter()
                    .map(|(n, e)| (n.clone(), e.group, e.listener.clone()))
                    .collect();
                (l, deadline)
            };
            if self.backoff_until.is_some_and(|t| now >= t) {
                self.backoff_until = None;
            }
            let listening = self.backoff_until.is_none();
            let deadline = [
                negotiation_deadline,
                self.refusals.next_deadline(),
                self.backoff_until,
            ]
            .into_iter()
            .flatten()
            .min();
            let ready = {
                let mut pfds: Vec<PollFd<'_>> =
                    Vec::with_capacity(listeners.len() + self.refusals.len() + 1);
                pfds.push(PollFd::new(&inner.wake, PollFlags::IN));
                for fd in self.refusals.fds() {
                    pfds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
                }
                if listening {
                    for (_, _, l) in &listeners {
                        pfds.push(PollFd::new(&**l, PollFlags::IN));
                    }
                }
                match rustix::event::poll(&mut pfds, poll_timeout(deadline, now).as_ref()) {
                    Ok(_) => {}
                    Err(Errno::INTR) => continue,
                    Err(e) => {
                        tracing::error!("acceptor poll failed: {e}");
                        std::thread::sleep(ACCEPT_BACKOFF);
                        continue;
                    }
                }
                pfds.iter()
                    .map(|p| !p.revents().is_empty())
                    .collect::<Vec<bool>>()
            };
            if ready.first().copied().unwrap_or(false) {
                // Drain the wake-up; the loop re-reads the set.
                let _ = uvfio_core::irq::read_eventfd(&inner.wake);
            }
            let nref = self.refusals.len();
            let refusal_ready = ready.get(1..1 + nref).unwrap_or(&[]);
            self.refusals.service(refusal_ready, Instant::now());
            if !listening {
                continue;
            }
            let listener_ready = ready.get(1 + nref..).unwrap_or(&[]);
            for ((name, group, l), r) in listeners.iter().zip(listener_ready) {
                if *r && !self.accept_all(inner, name, *group, l) {
                    break;
                }
            }
        }
    }

    /// Accepts every pending connection of one listener; false if the
    /// acceptor must back off.
    fn accept_all(&mut self, inner: &Arc<Inner>, name: &str, group: GroupId, l: &OwnedFd) -> bool {
        loop {
            match rustix::net::accept_with(l, SocketFlags::CLOEXEC) {
                Ok(sock) => {
                    if self.starved {
                        self.starved = false;
                        tracing::info!("accepting connections again");
                    }
                    self.admit(inner, name, group, sock);
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return true,
                Err(e @ (Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)) => {
                    if !self.starved {
                        self.starved = true;
                        tracing::warn!(
                            device = name,
                            limit = "process_fds",
                            "accept failed: {e}; pausing accepts for {ACCEPT_BACKOFF:?} at a time until it works again"
                        );
                    }
                    self.backoff_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return false;
                }
                Err(e) => {
                    tracing::warn!(device = name, "accept failed: {e}");
                    return true;
                }
            }
        }
    }

    /// Serves, or refuses, a new connection.
    fn admit(&mut self, inner: &Arc<Inner>, name: &str, group: GroupId, sock: OwnedFd) {
        let cfg = &inner.config;
        let refuse_by = Instant::now() + cfg.negotiation_timeout;
        if let Some(allowed) = &cfg.allowed_uids {
            let uid = rustix::net::sockopt::socket_peercred(&sock).map(|c| c.uid.as_raw());
            if !uid.as_ref().is_ok_and(|u| allowed.contains(u)) {
                tracing::warn!(
                    device = name,
                    limit = "allowed_uids",
                    uid = ?uid.ok(),
                    "refusing a client whose uid is not allowed (EPERM)"
                );
                self.refusals.add(sock, Errno::PERM, refuse_by);
                return;
            }
        }
        let live = inner.lock().conns.len();
        if live >= cfg.max_connections {
            tracing::warn!(
                device = name,
                limit = "max_connections",
                max = cfg.max_connections,
                "too many connections; refusing this one (EUSERS)"
            );
            self.refusals.add(sock, Errno::USERS, refuse_by);
            return;
        }
        spawn_connection(inner, name, group, sock);
    }
}

/// Closes connections that have not negotiated in time; returns the next
/// deadline to watch.
fn enforce_negotiation_deadlines(st: &State, now: Instant) -> Option<Instant> {
    let mut next: Option<Instant> = None;
    for c in st.conns.values() {
        if c.shared.deadline_done.load(Ordering::Acquire) {
            continue;
        }
        if now >= c.negotiate_by {
            if !c.shared.deadline_done.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    device = %c.device,
                    limit = "negotiation_timeout",
                    "client did not finish VERSION in time; closing"
                );
                c.shared.chan.shutdown();
            }
        } else {
            next = Some(next.map_or(c.negotiate_by, |n| n.min(c.negotiate_by)));
        }
    }
    next
}

/// The read limits of a connection until VERSION is negotiated.
pub(crate) fn pre_negotiation_limits(session: &SessionConfig, io_timeout: Duration) -> FrameLimits {
    FrameLimits {
        max_msg_size: MAX_VERSION_MSG_SIZE.min(proto::DEFAULT_MAX_MSG_SIZE),
        max_fds: usize::try_from(session.max_msg_fds).unwrap_or(usize::MAX),
        frame_timeout: io_timeout,
    }
}

fn spawn_connection(inner: &Arc<Inner>, name: &str, group: GroupId, sock: OwnedFd) {
    let cfg = &inner.config;
    // accept4 gives a blocking socket; sends must not block forever.
    if let Err(e) = crate::transport::set_send_timeout(&sock, Some(cfg.io_timeout)) {
        tracing::warn!("SO_SNDTIMEO: {e}");
    }
    let mut limits = pre_negotiation_limits(&cfg.session, cfg.io_timeout);
    if let Some(m) = cfg.max_msg_size {
        limits.max_msg_size = limits.max_msg_size.min(m);
    }
    let max_held = usize::try_from(cfg.session.max_held_fds).unwrap_or(usize::MAX);
    let chan = Arc::new(
        Channel::new(sock, limits, cfg.max_queued_bytes)
            .with_caps(max_held, cfg.max_pending_requests)
            .with_label(name)
            .with_wait(cfg.wait),
    );
    let shared = Arc::new(ConnShared {
        chan,
        ended: Mutex::new(false),
        ended_cv: Condvar::new(),
        grace_armed: AtomicBool::new(false),
        deadline_done: AtomicBool::new(false),
    });
    // The lock is held across spawn and insert, so the thread's own
    // removal (which takes it) always finds its entry.
    let mut st = inner.lock();
    if st.stopping {
        return;
    }
    let id = st.next_conn;
    st.next_conn = st.next_conn.wrapping_add(1);
    let weak = Arc::downgrade(inner);
    let device = name.to_owned();
    let sh = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("uvfio-user:{name}"))
        .spawn(move || {
            run_connection(&weak, &device, group, &sh);
            sh.chan.shutdown();
            sh.mark_ended();
            if let Some(inner) = weak.upgrade() {
                inner.lock().conns.remove(&id);
            }
        });
    match spawned {
        Ok(t) => {
            st.conns.insert(
                id,
                ConnEntry {
                    device: name.to_owned(),
                    shared,
                    thread: Some(t),
                    negotiate_by: Instant::now() + cfg.negotiation_timeout,
                },
            );
        }
        Err(e) => tracing::error!(device = name, "cannot spawn a connection thread: {e}"),
    }
}

/// Who is on the other end, for the device's holder list.
fn peer_label(sock: BorrowedFd<'_>) -> String {
    match rustix::net::sockopt::socket_peercred(sock) {
        Ok(c) => format!(
            "vfio-user client pid {} uid {}",
            c.pid.as_raw_nonzero(),
            c.uid.as_raw()
        ),
        Err(_) => "vfio-user client".to_owned(),
    }
}

/// The text of a panic payload.
fn panic_text(p: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = p.downcast_ref::<&str>() {
        s
    } else if let Some(s) = p.downcast_ref::<String>() {
        s
    } else {
        "(non-text panic payload)"
    }
}

/// Brings a faulted device back before a new client uses it: a reset,
/// itself guarded. `EIO` if the device cannot be reset.
fn recover(handle: &DeviceHandle, name: &str) -> Result<(), Errno> {
    if !handle.info().flags.contains(DeviceFlags::RESET) {
        tracing::warn!(
            device = name,
            "faulted device has no reset; refusing the client (EIO)"
        );
        return Err(Errno::IO);
    }
    match catch_unwind(AssertUnwindSafe(|| handle.reset())) {
        Ok(Ok(())) => {
            tracing::info!(device = name, "faulted device reset for a new client");
            Ok(())
        }
        Ok(Err(e)) => {
            tracing::warn!(
                device = name,
                "resetting the faulted device failed: {e}; refusing the client (EIO)"
            );
            Err(Errno::IO)
        }
        Err(p) => {
            tracing::error!(
                device = name,
                "resetting the faulted device panicked: {}; refusing the client (EIO)",
                panic_text(&*p)
            );
            Err(Errno::IO)
        }
    }
}

/// Logs why a connection's read side ended: a limit is one warning, the
/// rest (EOF, our own shutdown, a limit the channel already reported) a
/// debug line.
fn log_end(name: &str, e: &ChannelError, cfg: &ServerConfig) {
    match e {
        ChannelError::Closed(TransportError::BadSize { msg_size, max }) if msg_size > max => {
            tracing::warn!(
                device = name,
                limit = "max_msg_size",
                msg_size,
                max,
                "message larger than allowed; closing"
            );
        }
        ChannelError::Closed(TransportError::Stalled { got, want }) => {
            tracing::warn!(
                device = name,
                limit = "io_timeout",
                got,
                want,
                timeout = ?cfg.io_timeout,
                "client did not finish a message in time; closing"
            );
        }
        ChannelError::Closed(TransportError::FdFlood { max }) => {
            tracing::warn!(
                device = name,
                limit = "max_msg_fds",
                max,
                "client sent fds in too many pieces; closing"
            );
        }
        ChannelError::Closed(e @ TransportError::BadSize { .. }) => {
            tracing::warn!(device = name, "unreadable stream: {e}; closing");
        }
        _ => tracing::debug!(device = name, "connection ends: {e}"),
    }
}

fn run_connection(inner: &Weak<Inner>, name: &str, group: GroupId, shared: &Arc<ConnShared>) {
    let Some(server) = inner.upgrade() else {
        return;
    };
    let registry = server.registry.clone();
    let cfg = server.config.clone();
    // Do not keep the server alive from a connection thread.
    drop(server);
    let chan = shared.chan.clone();
    let label = peer_label(chan.fd());
    tracing::debug!(device = name, client = %label, "connected");

    let hook_target = Arc::downgrade(shared);
    let grace = cfg.grace_period;
    let hook_name = name.to_owned();
    let on_request: RequestHook = Arc::new(move |count: u32| {
        let Some(conn) = hook_target.upgrade() else {
            return;
        };
        if conn.grace_armed.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::info!(device = %hook_name, count, "device is being removed; asking the client to let go");
        let name = hook_name.clone();
        let spawned = std::thread::Builder::new()
            .name("uvfio-user-grace".into())
            .spawn(move || {
                if !conn.wait_ended(grace) {
                    tracing::warn!(device = %name, "client kept the device past the grace period; closing it");
                    conn.chan.shutdown();
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot spawn the grace timer: {e}; closing now");
        }
    });

    let dev_name = name.to_owned();
    let server_ref = inner.clone();
    let dma_cfg = DmaConfig {
        pgsizes: cfg.session.pgsizes,
        entry_limit: usize::try_from(cfg.session.max_dma_maps).unwrap_or(usize::MAX),
    };
    let attach = Box::new(move || -> Result<Attachment, Errno> {
        let container = Container::with_config(dma_cfg);
        let group = registry.open_group(group)?;
        group.set_container(&container)?;
        container.set_iommu(IommuType::Type1v2)?;
        let handle = group.get_device_with(
            &dev_name,
            OpenOptions {
                label,
                on_request: Some(on_request),
                // The spec: a client's disconnect keeps device state for
                // a reconnect (mappings and eventfds go regardless).
                keep_state: true,
            },
        )?;
        if let Some(server) = server_ref.upgrade() {
            if server.is_faulted(&dev_name) {
                recover(&handle, &dev_name)?;
                server.lock().faulted.remove(dev_name.as_str());
            }
        }
        Ok(Attachment {
            handle,
            group,
            container,
        })
    });

    let session = Session::new(
        cfg.session.clone(),
        attach,
        MessageDmaChannel {
            chan: Arc::downgrade(&chan),
            timeout: cfg.dma_timeout,
            device: name.to_owned(),
        },
    );
    let panicked = serve(name, &chan, session, shared, &cfg);
    if panicked {
        if let Some(server) = inner.upgrade() {
            server.mark_faulted(name);
        }
    }
    tracing::debug!(device = name, "disconnected");
}

/// The message loop of one connection; returns whether the driver
/// panicked. Releases the session (every mapping and eventfd, the device
/// handle) before returning, also when a driver op panicked.
///
/// The receive (`next_command`) and the reply (`send`) are inlined into
/// this loop, so its `recvmsg` and `send` are issued from this frame and
/// nothing returns between them (see `crate::transport` on why that is
/// worth 0.6–1 µs a round trip on one CPU).
fn serve(
    name: &str,
    chan: &Channel,
    mut session: Session,
    shared: &ConnShared,
    cfg: &ServerConfig,
) -> bool {
    let mut msg = Message::default();
    let mut out = crate::session::Output::default();
    let mut panicked = false;
    loop {
        if let Err(e) = chan.next_command(&mut msg) {
            log_end(name, &e, cfg);
            break;
        }
        if msg.fds_rejected {
            tracing::warn!(
                device = name,
                limit = "max_msg_fds",
                max = cfg.session.max_msg_fds,
                "message came with too many fds; closed them, replying EINVAL"
            );
        }
        let header = msg.header;
        let step = match catch_unwind(AssertUnwindSafe(|| session.handle(&mut msg, &mut out))) {
            Ok(step) => step,
            Err(p) => {
                tracing::error!(
                    device = name,
                    "driver panicked: {}; closing the connection and marking the device faulted",
                    panic_text(&*p)
                );
                panicked = true;
                out.clear();
                let raw = proto::RawHeader::parse(&header);
                if raw.flags & proto::VFIO_USER_F_NO_REPLY == 0 {
                    proto::encode_error_reply(raw.msg_id, raw.command, Errno::IO, &mut out.bytes);
                }
                Step::Close
            }
        };
        if !out.bytes.is_empty() {
            let fds: Vec<BorrowedFd<'_>> = out.fds.iter().map(|f| f.as_fd()).collect();
            let r = chan.send(&out.bytes, &fds);
            drop(fds);
            out.clear();
            if let Err(e) = r {
                match e {
                    ChannelError::Closed(TransportError::Stalled { .. }) => tracing::warn!(
                        device = name,
                        limit = "io_timeout",
                        timeout = ?cfg.io_timeout,
                        "client does not read its replies; closing"
                    ),
                    e => tracing::debug!(device = name, "cannot reply: {e}"),
                }
                break;
            }
        }
        out.clear();
        if session.state() == SessionState::Ready {
            shared.deadline_done.store(true, Ordering::Release);
        }
        if let Some(limits) = session.take_new_limits() {
            chan.set_limits(FrameLimits {
                frame_timeout: cfg.io_timeout,
                max_msg_size: cfg
                    .max_msg_size
                    .map_or(limits.max_msg_size, |m| m.min(limits.max_msg_size)),
                ..limits
            });
        }
        if step == Step::Close {
            break;
        }
    }
    // Balances attach: handle (close_device on the last), group, container
    // (every mapping unmapped), eventfds (cleared by the core).
    match catch_unwind(AssertUnwindSafe(move || session.close())) {
        Ok(false) => {}
        // The core caught it (and logged it) so that the device is
        // released regardless; it stays suspect for the next client.
        Ok(true) => panicked = true,
        Err(p) => {
            tracing::error!(
                device = name,
                "driver panicked while the connection was released: {}",
                panic_text(&*p)
            );
            panicked = true;
        }
    }
    panicked
}

/// Makes [`MessageDma`] backings for one connection.
struct MessageDmaChannel {
    chan: Weak<Channel>,
    timeout: Duration,
    device: String,
}

impl MessageDmaFactory for MessageDmaChannel {
    fn backing(&self, iova: u64, size: u64, negotiated: &Negotiated) -> Arc<dyn DmaBacking> {
        let limits = negotiated.decode_limits();
        Arc::new(MessageDma {
            chan: self.chan.clone(),
            iova,
            size,
            // Within what the client accepts and what we can receive back.
            chunk: negotiated
                .max_send_data_xfer_size()
                .min(limits.max_data_xfer_size)
                .max(1),
            limits,
            timeout: self.timeout,
            device: self.device.clone(),
        })
    }
}

/// Client memory reached through DMA_READ/DMA_WRITE messages: the backing
/// of a DMA_MAP that came without an fd.
///
/// Accesses may come from any thread (the connection thread inside an op,
/// or a device thread); [`Channel::call`] routes each reply back to its
/// caller and queues client commands that arrive meanwhile. Each chunk
/// waits at most the DMA timeout (`ETIMEDOUT`); once the connection is
/// gone, accesses fail with `ENOTCONN`.
struct MessageDma {
    chan: Weak<Channel>,
    iova: u64,
    size: u64,
    chunk: u32,
    limits: DecodeLimits,
    timeout: Duration,
    device: String,
}

impl std::fmt::Debug for MessageDma {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageDma")
            .field("iova", &self.iova)
            .field("size", &self.size)
            .finish()
    }
}

impl MessageDma {
    /// Runs one request and returns its decoded reply's payload check.
    fn round_trip(
        &self,
        chan: &Channel,
        req: &proto::Request<'_>,
        check: &mut dyn FnMut(proto::Reply<'_>) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        let id = chan.next_id();
        let mut bytes = Vec::new();
        req.encode(id, false, &mut bytes)
            .map_err(|_| Errno::INVAL)?;
        let mut reply = Message::default();
        let out = Outgoing {
            id,
            bytes: &bytes,
            fds: &[],
            timeout: self.timeout,
            reply_fds: false,
        };
        chan.call(&out, Incoming::Queue, &mut reply).map_err(|e| {
            match e {
                ChannelError::Timeout(t) => tracing::warn!(
                    device = %self.device,
                    limit = "dma_timeout",
                    timeout = ?t,
                    "the client did not answer a DMA request in time (ETIMEDOUT)"
                ),
                // Reported by the channel, or the connection is gone.
                ref e => tracing::debug!("DMA request failed: {e}"),
            }
            e.errno()
        })?;
        let header = proto::Header::decode(&reply.header, &self.limits).map_err(|_| Errno::IO)?;
        let decoded = proto::decode_reply(&header, &reply.body, reply.fds.len(), &self.limits)
            .map_err(|e| {
                tracing::warn!(device = %self.device, "bad DMA reply: {e}");
                Errno::IO
            })?;
        if decoded.command() != req.command() {
            return Err(Errno::IO);
        }
        if let proto::Reply::Error(e) = decoded {
            return Err(e.errno());
        }
        check(decoded)
    }

    fn address(&self, offset: u64, done: usize) -> Result<u64, Errno> {
        self.iova
            .checked_add(offset)
            .and_then(|a| a.checked_add(u64::try_from(done).ok()?))
            .ok_or(Errno::FAULT)
    }
}

impl DmaBacking for MessageDma {
    fn len(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> uvfio_core::Result<()> {
        let chan = self.chan.upgrade().ok_or(Errno::NOTCONN)?;
        let chunk = usize::try_from(self.chunk).unwrap_or(usize::MAX);
        let mut done = 0usize;
        while done < buf.len() {
            let n = (buf.len() - done).min(chunk);
            let address = self.address(offset, done)?;
            let req = proto::Request::DmaRead(proto::DmaAccess {
                address,
                count: u64::try_from(n).map_err(|_| Errno::INVAL)?,
            });
            let dst = &mut buf[done..done + n];
            self.round_trip(&chan, &req, &mut |r| match r {
                proto::Reply::DmaRead(d) if d.address == address && d.data.len() == dst.len() => {
                    dst.copy_from_slice(d.data);
                    Ok(())
                }
                _ => Err(Errno::IO),
            })?;
            done += n;
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> uvfio_core::Result<()> {
        let chan = self.chan.upgrade().ok_or(Errno::NOTCONN)?;
        let chunk = usize::try_from(self.chunk).unwrap_or(usize::MAX);
        let mut done = 0usize;
        while done < data.len() {
            let n = (data.len() - done).min(chunk);
            let address = self.address(offset, done)?;
            let req = proto::Request::DmaWrite(proto::DmaWrite {
                address,
                data: &data[done..done + n],
            });
            let want = u64::try_from(n).map_err(|_| Errno::INVAL)?;
            self.round_trip(&chan, &req, &mut |r| match r {
                proto::Reply::DmaWrite(a) if a.address == address && a.count == want => Ok(()),
                _ => Err(Errno::IO),
            })?;
            done += n;
        }
        Ok(())
    }
}
