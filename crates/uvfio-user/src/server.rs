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
//!   removes its socket file first, so nobody new can connect.
//! - **One thread per connection** runs the [`Session`] state machine over
//!   a [`Channel`]. This is the simplest sound model for device semantics:
//!   driver ops are synchronous and may block (a reset, a DMA round trip
//!   to the client), and a thread of its own means one slow or hostile
//!   client can only stall itself. The hot path stays two syscalls for a
//!   request (header + body) and one for the reply, with no cross-thread
//!   hand-off: the connection thread reads, executes and answers. A few
//!   hundred connections cost a few hundred mostly idle threads (virtual
//!   stacks, no CPU); an epoll reactor would save memory but would need a
//!   worker pool anyway for blocking driver ops, and the perf issue asks
//!   for measurements before anything fancier.
//! - A device that DMAs through messages (a DMA_MAP without an fd) sends
//!   DMA_READ/DMA_WRITE from whichever thread it runs on; [`Channel`]
//!   routes the reply back by message id and queues client commands that
//!   arrive meanwhile (see its docs).
//!
//! # One client per device
//!
//! A connection opens the device's group for its own container, and the
//! core allows one open per group: a second client gets an error reply to
//! its VERSION with `EBUSY` and is closed; once the first leaves, the next
//! can attach. (A consequence: two devices of one IOMMU group cannot be
//! used by two clients at the same time, as with VFIO.)
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
//! unregister and on [`Server::shutdown`].

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use uvfio_core::{
    Container, DmaBacking, DmaConfig, GroupId, IommuType, OpenOptions, Registry, RegistryEvent,
    RequestHook,
};

use crate::channel::{Channel, Incoming};
use crate::proto::{self, DecodeLimits, Negotiated};
use crate::session::{Attachment, MessageDmaFactory, Session, SessionConfig, Step};
use crate::transport::{FrameLimits, Message};

/// Server settings. Start from [`ServerConfig::new`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Directory holding the `NAME.sock` files (created 0700 if missing).
    pub socket_dir: PathBuf,
    /// How long a client may keep a device after unregister asked it to
    /// let go, before the server closes its connection.
    pub grace_period: Duration,
    /// How long a device waits for the client to answer a DMA_READ or
    /// DMA_WRITE before the DMA fails with `ETIMEDOUT`.
    pub dma_timeout: Duration,
    /// How long a client may stall in the middle of a message, or leave a
    /// reply unread, before its connection is dropped.
    pub io_timeout: Duration,
    /// The receive limits we advertise (`max_data_xfer_size`,
    /// `max_msg_fds`, `max_dma_maps`, `pgsizes`).
    pub session: SessionConfig,
    /// Bytes of client commands queued while a DMA reply is awaited before
    /// the connection is considered abusive and dropped.
    pub max_queued_bytes: usize,
}

impl ServerConfig {
    /// Defaults for sockets in `socket_dir`: 5 s grace period, 5 s DMA
    /// timeout (QEMU's per-reply timeout), 10 s I/O timeout, 1 MiB data
    /// transfers, 16 fds, 65535 DMA maps, 64 MiB of queued commands.
    pub fn new(socket_dir: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            socket_dir: socket_dir.into(),
            grace_period: Duration::from_secs(5),
            dma_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(10),
            session: SessionConfig::default(),
            max_queued_bytes: 64 << 20,
        }
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

    /// Sets [`ServerConfig::session`].
    #[must_use]
    pub fn session(mut self, s: SessionConfig) -> Self {
        self.session = s;
        self
    }
}

/// One served device.
struct Endpoint {
    group: GroupId,
    path: PathBuf,
    listener: Arc<OwnedFd>,
}

/// What the server knows about a live connection.
struct ConnEntry {
    device: String,
    shared: Arc<ConnShared>,
    thread: Option<JoinHandle<()>>,
}

/// Shared between a connection thread, its grace timer and the server.
struct ConnShared {
    chan: Arc<Channel>,
    ended: Mutex<bool>,
    ended_cv: Condvar,
    grace_armed: AtomicBool,
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
        match bind_listener(&path) {
            Ok(listener) => {
                tracing::info!(device = name, path = %path.display(), "serving");
                st.endpoints.insert(
                    name.to_owned(),
                    Endpoint {
                        group,
                        path,
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
            remove_socket_file(&ep.path);
            self.wake_acceptor();
            tracing::info!(device = name, "no longer serving");
        }
    }

    fn on_event(&self, ev: &RegistryEvent) {
        let mut st = self.lock();
        match ev {
            RegistryEvent::Registered { name, group } => self.add_endpoint(&mut st, name, *group),
            RegistryEvent::Unregistering { name } => self.remove_endpoint(&mut st, name),
        }
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
    /// Fails if the socket directory cannot be created or the acceptor
    /// cannot start. A device whose socket cannot be created is logged and
    /// skipped (see [`Server::socket_path`]).
    pub fn new(registry: Registry, config: ServerConfig) -> std::io::Result<Server> {
        if !config.socket_dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&config.socket_dir)?;
        }
        let wake = uvfio_core::irq::eventfd().map_err(std::io::Error::from)?;
        let inner = Arc::new(Inner {
            registry: registry.clone(),
            config,
            state: Mutex::new(State {
                endpoints: HashMap::new(),
                conns: HashMap::new(),
                next_conn: 1,
                stopping: false,
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
            .spawn(move || accept_loop(&acc))?;
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

fn accept_loop(inner: &Arc<Inner>) {
    loop {
        let listeners: Vec<(String, GroupId, Arc<OwnedFd>)> = {
            let st = inner.lock();
            if st.stopping {
                return;
            }
            st.endpoints
                .iter()
                .map(|(n, e)| (n.clone(), e.group, e.listener.clone()))
                .collect()
        };
        let ready = {
            let mut pfds: Vec<PollFd<'_>> = Vec::with_capacity(listeners.len() + 1);
            pfds.push(PollFd::new(&inner.wake, PollFlags::IN));
            for (_, _, l) in &listeners {
                pfds.push(PollFd::new(&**l, PollFlags::IN));
            }
            match rustix::event::poll(&mut pfds, None) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => {
                    tracing::error!("acceptor poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
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
        for ((name, group, l), r) in listeners.iter().zip(ready.iter().skip(1)) {
            if !*r {
                continue;
            }
            loop {
                match rustix::net::accept_with(&**l, SocketFlags::CLOEXEC) {
                    Ok(sock) => spawn_connection(inner, name, *group, sock),
                    Err(Errno::INTR) => continue,
                    Err(Errno::AGAIN) => break,
                    Err(e) => {
                        tracing::warn!(device = %name, "accept failed: {e}");
                        break;
                    }
                }
            }
        }
    }
}

fn spawn_connection(inner: &Arc<Inner>, name: &str, group: GroupId, sock: OwnedFd) {
    let cfg = &inner.config;
    // accept4 gives a blocking socket; sends must not block forever.
    if let Err(e) = crate::transport::set_send_timeout(&sock, Some(cfg.io_timeout)) {
        tracing::warn!("SO_SNDTIMEO: {e}");
    }
    let limits = FrameLimits {
        frame_timeout: cfg.io_timeout,
        ..FrameLimits::default()
    };
    let chan = Arc::new(Channel::new(sock, limits, cfg.max_queued_bytes));
    let shared = Arc::new(ConnShared {
        chan,
        ended: Mutex::new(false),
        ended_cv: Condvar::new(),
        grace_armed: AtomicBool::new(false),
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
            },
        )?;
        Ok(Attachment {
            handle,
            group,
            container,
        })
    });

    let mut session = Session::new(
        cfg.session.clone(),
        attach,
        MessageDmaChannel {
            chan: Arc::downgrade(&chan),
            timeout: cfg.dma_timeout,
        },
    );
    let mut msg = Message::default();
    let mut out = crate::session::Output::default();
    loop {
        match chan.next_command(&mut msg) {
            Ok(()) => {}
            Err(e) => {
                tracing::debug!(device = name, "connection ends: {e}");
                break;
            }
        }
        let step = session.handle(&mut msg, &mut out);
        if !out.bytes.is_empty() {
            let fds: Vec<BorrowedFd<'_>> = out.fds.iter().map(|f| f.as_fd()).collect();
            let r = chan.send(&out.bytes, &fds);
            drop(fds);
            out.clear();
            if let Err(e) = r {
                tracing::debug!(device = name, "cannot reply: {e}");
                break;
            }
        }
        if let Some(limits) = session.take_new_limits() {
            chan.set_limits(FrameLimits {
                frame_timeout: cfg.io_timeout,
                ..limits
            });
        }
        if step == Step::Close {
            break;
        }
    }
    // Balances attach: handle (close_device on the last), group, container
    // (every mapping unmapped), eventfds (cleared by the core).
    drop(session);
    tracing::debug!(device = name, "disconnected");
}

/// Creates the listening socket at `path`, mode 0600, non-blocking.
fn bind_listener(path: &Path) -> Result<OwnedFd, Errno> {
    match rustix::fs::lstat(path) {
        Err(Errno::NOENT) => {}
        Err(e) => return Err(e),
        Ok(st) => {
            if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
                // A file, a directory or a symlink: not ours to replace.
                return Err(Errno::EXIST);
            }
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(Errno::ADDRINUSE),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "replacing a stale socket");
                    rustix::fs::unlink(path)?;
                }
                Err(e) => return Err(Errno::from_io_error(&e).unwrap_or(Errno::EXIST)),
            }
        }
    }
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let addr = SocketAddrUnix::new(path)?;
    rustix::net::bind(&sock, &addr)?;
    if let Err(e) = restrict_mode(path) {
        remove_socket_file(path);
        return Err(e);
    }
    if let Err(e) = rustix::net::listen(&sock, 128) {
        remove_socket_file(path);
        return Err(e);
    }
    Ok(sock)
}

/// chmod 0600 without following a symlink swapped in after bind.
fn restrict_mode(path: &Path) -> Result<(), Errno> {
    let fd = rustix::fs::open(
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
        return Err(Errno::EXIST);
    }
    let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    rustix::fs::chmod(proc_path.as_str(), Mode::from_raw_mode(0o600))
}

fn remove_socket_file(path: &Path) {
    match rustix::fs::lstat(path) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Socket => {
            if let Err(e) = rustix::fs::unlink(path) {
                tracing::warn!(path = %path.display(), "cannot remove socket: {e}");
            }
        }
        _ => {}
    }
}

/// Makes [`MessageDma`] backings for one connection.
struct MessageDmaChannel {
    chan: Weak<Channel>,
    timeout: Duration,
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
        chan.call(id, &bytes, &[], self.timeout, Incoming::Queue, &mut reply)
            .map_err(|e| {
                tracing::warn!("DMA request failed: {e}");
                e.errno()
            })?;
        let header = proto::Header::decode(&reply.header, &self.limits).map_err(|_| Errno::IO)?;
        let decoded = proto::decode_reply(&header, &reply.body, reply.fds.len(), &self.limits)
            .map_err(|e| {
                tracing::warn!("bad DMA reply: {e}");
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
