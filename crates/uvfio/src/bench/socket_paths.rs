//! Benchmarks over a real vfio-user socket: region access round trips
//! against a raw UNIX-socket ping-pong with the same request/reply sizes,
//! and a many-devices/many-clients scale run.

use std::hint::black_box;
use std::io::{IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::Context;
use rustix::net::{RecvAncillaryBuffer, RecvFlags, SendFlags};
use uvfio_core::{GroupId, Registry};
use uvfio_drivers::dma;
use uvfio_user::{Client, ClientConfig, Server, ServerConfig, Wait};

use super::{median_group, Measurement, Options, Row};

/// Header (16) + REGION_READ/WRITE payload (16).
const ACCESS: usize = 32;

/// How a ping-pong baseline moves its bytes. Which calls a plain
/// ping-pong uses changes its speed by ~10 % on the project's VM, so the
/// goal is judged against the fastest and the others are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    /// `send`/`recv` on both ends: the fastest plain ping-pong here, the
    /// baseline of the goal.
    SendRecv,
    /// std's `write_all`/`read_exact` (`write`/`read`) on both ends, the
    /// baseline of runs before 2026-11-25.
    ReadWrite,
    /// Client `send`/`recv`; the echo end `recvmsg`s with a control buffer,
    /// as any server must that accepts fds with any request (a vfio-user
    /// server): the floor for such a server.
    FdCapable,
    /// [`Flavour::FdCapable`] with the client's round trip behind a function
    /// call, as any client library has it: after its `recv` it returns to
    /// the caller's loop. On the project's VM the first `ret` after a
    /// syscall costs 0.6–1 µs (`uvfio_user::transport`, "Where the
    /// per-message syscalls are issued"), which our client avoids by
    /// refilling the return stack first; this ping-pong does not, and shows
    /// what the return would cost.
    FdCapableCall,
    /// `send`/`recv` whose ends wait for data the way ours are set to
    /// ([`Wait::Spin`] or [`Wait::Yield`]): the like-for-like baseline of
    /// the polling rows.
    Polled(Wait),
}

impl Flavour {
    fn label(self) -> &'static str {
        match self {
            Flavour::SendRecv => "raw ping-pong",
            Flavour::ReadWrite => "read/write ping-pong",
            Flavour::FdCapable => "fd-capable ping-pong",
            Flavour::FdCapableCall => "fd-capable ping-pong, client in a call",
            Flavour::Polled(Wait::Yield(_)) => "ping-pong yield-polling",
            Flavour::Polled(_) => "ping-pong spin-polling",
        }
    }
}

// The ping-pongs' helpers are inlined into their loops, so that every
// baseline issues its syscalls from the loop's own frame whatever the
// compiler decides (a return after a syscall costs 0.6–1 µs on the
// project's VM; see `uvfio_user::transport`); `FdCapableCall` adds one
// such return on purpose.

/// `recv` until `buf` is full; false on EOF or error.
#[inline(always)]
fn recv_exact(sock: &UnixStream, buf: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buf.len() {
        match rustix::net::recv(sock, &mut buf[got..], RecvFlags::empty()) {
            Ok((0, _)) | Err(_) => return false,
            Ok((n, _)) => got += n,
        }
    }
    true
}

/// `recv` until `buf` is full, waiting as `wait` says (the same policy as
/// the transport's, so that the polling rows compare like with like);
/// false on EOF or error.
#[inline(always)]
fn recv_exact_polled(sock: &UnixStream, buf: &mut [u8], wait: Wait) -> bool {
    let (Wait::Spin(budget) | Wait::Yield(budget)) = wait else {
        return recv_exact(sock, buf);
    };
    let mut got = 0;
    let mut end = None;
    while got < buf.len() {
        match rustix::net::recv(sock, &mut buf[got..], RecvFlags::DONTWAIT) {
            Ok((0, _)) => return false,
            Ok((n, _)) => got += n,
            Err(rustix::io::Errno::AGAIN) => {
                let now = Instant::now();
                if now >= *end.get_or_insert(now + budget) {
                    return recv_exact(sock, &mut buf[got..]);
                }
                if matches!(wait, Wait::Yield(_)) {
                    rustix::thread::sched_yield();
                } else {
                    std::hint::spin_loop();
                }
            }
            Err(_) => return false,
        }
    }
    true
}

/// `recvmsg` with room for fds until `buf` is full; false on EOF or error.
#[inline(always)]
fn recvmsg_exact(sock: &UnixStream, buf: &mut [u8]) -> bool {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(17))];
    let mut got = 0;
    while got < buf.len() {
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut buf[got..])];
        match rustix::net::recvmsg(sock, &mut iov, &mut cmsg, RecvFlags::CMSG_CLOEXEC) {
            Ok(r) if r.bytes > 0 => got += r.bytes,
            _ => return false,
        }
    }
    true
}

/// `send` all of `buf`.
#[inline(always)]
fn send_all(sock: &UnixStream, buf: &[u8]) -> bool {
    let mut sent = 0;
    while sent < buf.len() {
        match rustix::net::send(sock, &buf[sent..], SendFlags::NOSIGNAL) {
            Ok(0) | Err(_) => return false,
            Ok(n) => sent += n,
        }
    }
    true
}

/// A raw ping-pong endpoint: the "client" writes `req` bytes, a thread on
/// the other end reads them and writes `rep` bytes back. Same two-thread
/// layout as a vfio-user client and a connection thread.
struct PingPong {
    a: UnixStream,
    flavour: Flavour,
    out: Vec<u8>,
    inb: Vec<u8>,
    echo: Option<std::thread::JoinHandle<()>>,
}

impl PingPong {
    fn new(req: usize, rep: usize, flavour: Flavour) -> anyhow::Result<Self> {
        let (a, mut b) = UnixStream::pair()?;
        let echo = std::thread::spawn(move || echo(&mut b, flavour, req, rep));
        Ok(PingPong {
            a,
            flavour,
            out: vec![0u8; req],
            inb: vec![0u8; rep],
            echo: Some(echo),
        })
    }

    fn round_trips(&mut self, n: u32) {
        for _ in 0..n {
            let ok = match self.flavour {
                Flavour::ReadWrite => {
                    self.a.write_all(&self.out).is_ok() && self.a.read_exact(&mut self.inb).is_ok()
                }
                Flavour::Polled(w) => {
                    send_all(&self.a, &self.out) && recv_exact_polled(&self.a, &mut self.inb, w)
                }
                Flavour::FdCapableCall => round_trip_call(&self.a, &self.out, &mut self.inb),
                _ => send_all(&self.a, &self.out) && recv_exact(&self.a, &mut self.inb),
            };
            assert!(ok, "ping-pong peer gone");
        }
    }
}

/// The echo end of a ping-pong: reads `req` bytes, writes `rep` back,
/// until EOF. One loop per flavour, picked once: a dispatch inside the
/// loop made the fd-capable echo ~10 % slower than the same loop alone.
fn echo(b: &mut UnixStream, flavour: Flavour, req: usize, rep: usize) {
    let mut inb = vec![0u8; req];
    let out = vec![0u8; rep];
    match flavour {
        Flavour::SendRecv => while recv_exact(b, &mut inb) && send_all(b, &out) {},
        Flavour::ReadWrite => while b.read_exact(&mut inb).is_ok() && b.write_all(&out).is_ok() {},
        Flavour::FdCapable | Flavour::FdCapableCall => {
            while recvmsg_exact(b, &mut inb) && send_all(b, &out) {}
        }
        Flavour::Polled(w) => while recv_exact_polled(b, &mut inb, w) && send_all(b, &out) {},
    }
}

/// One plain round trip in a frame of its own ([`Flavour::FdCapableCall`]).
#[inline(never)]
fn round_trip_call(sock: &UnixStream, out: &[u8], inb: &mut [u8]) -> bool {
    send_all(sock, out) && recv_exact(sock, inb)
}

impl Drop for PingPong {
    fn drop(&mut self) {
        let _ = self.a.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.echo.take() {
            let _ = t.join();
        }
    }
}

/// Pins the calling thread to `cpu` (threads it spawns inherit that), or
/// unpins it with `None`. The message-path benches put the client thread
/// on CPU 0 and every server-side thread (our connection thread and the
/// ping-pong echo thread alike) on CPU 1: the same layout for both, and
/// no run where the scheduler happens to stack them on one core.
pub(super) fn pin(cpu: Option<usize>) {
    // The CPU count before any pinning: once pinned, the affinity mask
    // (which available_parallelism reads) says 1.
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let n = *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if n < 2 {
        return;
    }
    let mut set = rustix::thread::CpuSet::new();
    match cpu {
        Some(c) => set.set(c % n),
        None => (0..n).for_each(|c| set.set(c)),
    }
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        tracing::debug!("cannot pin the bench thread: {e}");
    }
}

/// Confines every thread of the process (server threads included) to the
/// first `n` CPUs, or frees them all with `None`; threads spawned later
/// inherit the mask of their spawner. Returns the CPU count now in use.
fn confine_process(n: Option<usize>) -> usize {
    let total = std::thread::available_parallelism().map_or(1, |n| n.get());
    let use_cpus = n.map_or(total, |n| n.clamp(1, total));
    let mut set = rustix::thread::CpuSet::new();
    (0..use_cpus).for_each(|c| set.set(c));
    let tasks = std::fs::read_dir("/proc/self/task").into_iter().flatten();
    for tid in tasks
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let Some(pid) = rustix::process::Pid::from_raw(tid) else {
            continue;
        };
        // A thread that exited meanwhile is no concern.
        let _ = rustix::thread::sched_setaffinity(Some(pid), &set);
    }
    use_cpus
}

/// Where the two threads of a round trip run. Both layouts pin our
/// client and connection threads exactly as the ping-pong's two threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Client and server threads on one CPU: each round trip is two
    /// context switches and no cross-CPU wake-up, so the figure shows the
    /// software path (ours vs the syscall floor) and repeats to ±1 %.
    SameCore,
    /// Client on CPU 0, server threads on CPU 1: adds two cross-CPU
    /// wake-ups per round trip, which on a VM (an IPI through the
    /// hypervisor each) can dwarf everything else.
    TwoCores,
}

impl Layout {
    fn server_cpu(self) -> usize {
        match self {
            Layout::SameCore => 0,
            Layout::TwoCores => 1,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Layout::SameCore => "same core",
            Layout::TwoCores => "two cores",
        }
    }
}

/// Client/server pairs measured per side. Identical ping-pongs land on
/// different levels, up to ~20 % apart on the project's VM, depending on
/// where their threads' stacks are mapped (with ASLR off a given layout
/// repeats its level; README § Performance), and our client and
/// connection threads do the same; each side of a comparison is the
/// fastest of this many pairs (ping-pongs, or our clients each with a
/// connection of its own), so a ratio does not depend on that draw.
const PAIRS: usize = 3;

/// One workload of a comparison: `n` round trips.
type Work<'a> = Box<dyn FnMut(u32) + 'a>;

/// The fastest of `m`, by wall time.
fn fastest(m: &[Measurement]) -> Option<Measurement> {
    m.iter()
        .copied()
        .min_by(|a, b| a.ns_per_op.total_cmp(&b.ns_per_op))
}

/// Ours (the fastest of `ours`, one workload per client) vs ping-pongs of
/// each of `flavours` (each the fastest of [`PAIRS`] pairs), all in
/// alternating batches: `(ours, baselines in the order given)`.
fn versus(
    layout: Layout,
    req: usize,
    rep: usize,
    iters: u32,
    flavours: &[Flavour],
    mut ours: Vec<Work<'_>>,
) -> anyhow::Result<(Measurement, Vec<Measurement>)> {
    anyhow::ensure!(!ours.is_empty(), "no client to measure");
    pin(Some(layout.server_cpu()));
    let pps: Vec<_> = flavours
        .iter()
        .flat_map(|&f| (0..PAIRS).map(move |_| PingPong::new(req, rep, f)))
        .collect();
    pin(Some(0));
    let mut pps = pps.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let batch = (iters / 15).max(50);
    let mut bases: Vec<_> = pps
        .iter_mut()
        .map(|pp| move |n| pp.round_trips(n))
        .collect();
    let n_ours = ours.len();
    let mut work: Vec<&mut dyn FnMut(u32)> = ours
        .iter_mut()
        .map(|f| &mut **f as &mut dyn FnMut(u32))
        .collect();
    work.extend(bases.iter_mut().map(|f| f as &mut dyn FnMut(u32)));
    let m = median_group(15, batch, &mut work);
    drop(work);
    drop(bases);
    let (mine, theirs) = m.split_at(n_ours);
    let ours = fastest(mine).context("no measurement of ours")?;
    Ok((ours, theirs.chunks(PAIRS).filter_map(fastest).collect()))
}

/// How [`rows`] reports a comparison.
#[derive(Clone, Copy)]
struct Report {
    /// The first baseline's row is judged against the goal.
    judged: bool,
    /// The server runs in this process, so with two cores the CPU time of
    /// the whole process is ours and the ping-pong's alike.
    cpu: bool,
}

/// The rows of one message-path comparison against each baseline (the
/// first is the goal's): wall-clock time per round trip and, with two
/// cores and `report.cpu`, CPU time per round trip of the whole process
/// (client, server and echo threads), which leaves out the wait for a
/// cross-CPU wake-up. (On one core CPU time is wall time.)
fn rows(
    layout: Layout,
    what: &str,
    ours: Measurement,
    bases: &[(Flavour, Measurement)],
    report: Report,
) -> Vec<Row> {
    // The polling rows say how both ends wait.
    let mode = match bases.first() {
        Some((Flavour::Polled(Wait::Yield(_)), _)) => ", yield-polling",
        Some((Flavour::Polled(_), _)) => ", spin-polling",
        _ => "",
    };
    let mut out = Vec::new();
    for (i, (flavour, base)) in bases.iter().enumerate() {
        let ratio = ours.ns_per_op / base.ns_per_op;
        let goal = report.judged && i == 0;
        out.push(Row {
            name: format!(
                "{}message path ({}{mode}): {what} vs {}",
                if goal { "" } else { "  " },
                layout.label(),
                flavour.label()
            ),
            ours: ours.ns_per_op,
            baseline: base.ns_per_op,
            unit: "ns/op",
            ratio,
            goal: if goal { "<= 1.10" } else { "report" },
            met: goal.then_some(ratio <= 1.10),
        });
        if i == 0 && report.cpu && layout == Layout::TwoCores {
            out.push(Row {
                name: format!("  CPU per round trip ({}{mode}): {what}", layout.label()),
                ours: ours.cpu_ns_per_op,
                baseline: base.cpu_ns_per_op,
                unit: "ns/op",
                ratio: ours.cpu_ns_per_op / base.cpu_ns_per_op,
                goal: "report",
                met: None,
            });
        }
    }
    out
}

/// One comparison: `ours` against the baselines in `flavours`, as rows;
/// the first baseline's row is judged against the goal.
fn compare(
    layout: Layout,
    what: &str,
    (req, rep): (usize, usize),
    iters: u32,
    flavours: &[Flavour],
    ours: Vec<Work<'_>>,
) -> anyhow::Result<Vec<Row>> {
    let (ours, bases) = versus(layout, req, rep, iters, flavours, ours)?;
    let bases: Vec<_> = flavours.iter().copied().zip(bases).collect();
    let report = Report {
        judged: true,
        cpu: true,
    };
    Ok(rows(layout, what, ours, &bases, report))
}

/// Region access round trips through each of `clients` on region `index`
/// of its device (which must be at least 4 KiB for the 4 KiB row, else
/// that row is skipped); ours is the fastest client.
fn access_rows(
    layout: Layout,
    clients: &[Client],
    index: u32,
    region_size: u64,
    opts: &Options,
) -> anyhow::Result<Vec<Row>> {
    let iters = opts.iterations;
    let mut out = Vec::new();
    for client in clients {
        client
            .region_read(index, 0, &mut [0u8; 4])
            .context("probe read")?;
    }
    // The 4 B read also against the other plain ping-pong, the floor of a
    // server that takes fds, and that ping-pong with a client library's
    // return; the rest against the goal's baseline.
    let all = [
        Flavour::SendRecv,
        Flavour::ReadWrite,
        Flavour::FdCapable,
        Flavour::FdCapableCall,
    ];
    let goal = [Flavour::SendRecv];
    out.extend(compare(
        layout,
        "4 B region read",
        (ACCESS, ACCESS + 4),
        iters,
        &all,
        reads(clients, index, 4),
    )?);
    let writes = clients
        .iter()
        .map(|client| {
            Box::new(move |n: u32| {
                for _ in 0..n {
                    client
                        .region_write(index, 0, &[0u8; 4])
                        .expect("region write");
                }
            }) as Work<'_>
        })
        .collect();
    out.extend(compare(
        layout,
        "4 B region write",
        (ACCESS + 4, ACCESS),
        iters,
        &goal,
        writes,
    )?);
    if region_size >= 4096 {
        out.extend(compare(
            layout,
            "4 KiB region read",
            (ACCESS, ACCESS + 4096),
            iters / 2,
            &goal,
            reads(clients, index, 4096),
        )?);
    }
    Ok(out)
}

/// One workload per client: `n` reads of `len` bytes at offset 0 of
/// region `index`.
fn reads(clients: &[Client], index: u32, len: usize) -> Vec<Work<'_>> {
    clients
        .iter()
        .map(|client| {
            let mut buf = vec![0u8; len];
            Box::new(move |n: u32| {
                for _ in 0..n {
                    client.region_read(index, 0, &mut buf).expect("region read");
                    black_box(&buf);
                }
            }) as Work<'_>
        })
        .collect()
}

/// Message-path rows against a fresh in-process server serving a dma
/// engine, in both layouts: accesses go to its RAM BAR (BAR2), so the
/// figure is the message path, not a driver's register emulation.
pub fn in_process(opts: &Options) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for layout in [Layout::SameCore, Layout::TwoCores] {
        rows.extend(in_process_layout(layout, opts)?);
    }
    for layout in [Layout::SameCore, Layout::TwoCores] {
        rows.extend(polled_rows(layout, opts)?);
    }
    Ok(rows)
}

/// How long the polling rows poll before blocking.
const POLL_BUDGET: Duration = Duration::from_micros(50);

/// The 4 B read with both ends polling instead of blocking
/// ([`ServerConfig::wait`](uvfio_user::ServerConfig::wait),
/// [`ClientConfig::wait`](uvfio_user::ClientConfig::wait)): yielding on one
/// core, spinning on two. Reported against a ping-pong that polls the same
/// way (like for like) and against the blocking one the goal is judged by
/// (what polling buys); not judged itself.
fn polled_rows(layout: Layout, opts: &Options) -> anyhow::Result<Vec<Row>> {
    let wait = match layout {
        Layout::SameCore => Wait::Yield(POLL_BUDGET),
        Layout::TwoCores => Wait::Spin(POLL_BUDGET),
    };
    pin(Some(layout.server_cpu()));
    let (server, clients) = DmaServer::start_many(wait, PAIRS)?;
    let index = u32::from(dma::DMA_RAM_BAR);
    let rows = polled_read_rows(layout, &clients, index, wait, true, opts);
    pin(None);
    server.stop(clients);
    rows
}

/// 4 B reads of region `index` through each of `clients` (which wait as
/// `wait` says) against a ping-pong polling the same way and the blocking
/// one; reported, not judged (`cpu`: the server is in this process).
fn polled_read_rows(
    layout: Layout,
    clients: &[Client],
    index: u32,
    wait: Wait,
    cpu: bool,
    opts: &Options,
) -> anyhow::Result<Vec<Row>> {
    let flavours = [Flavour::Polled(wait), Flavour::SendRecv];
    let (ours, bases) = versus(
        layout,
        ACCESS,
        ACCESS + 4,
        opts.iterations,
        &flavours,
        reads(clients, index, 4),
    )?;
    let bases: Vec<_> = flavours.into_iter().zip(bases).collect();
    let report = Report { judged: false, cpu };
    Ok(rows(layout, "4 B region read", ours, &bases, report))
}

fn in_process_layout(layout: Layout, opts: &Options) -> anyhow::Result<Vec<Row>> {
    // Server threads (acceptor, then the connection threads it spawns)
    // inherit this pinning.
    pin(Some(layout.server_cpu()));
    let (server, clients) = DmaServer::start_many(Wait::Block, PAIRS)?;
    let rows = access_rows(
        layout,
        &clients,
        u32::from(dma::DMA_RAM_BAR),
        dma::DmaOptions::default().ram_size,
        opts,
    );
    pin(None);
    server.stop(clients);
    rows
}

/// A fresh in-process server with dma engines (default options), each
/// with a client connected to it.
pub(super) struct DmaServer {
    dir: std::path::PathBuf,
    server: Server,
    devs: Vec<dma::DmaDevice>,
}

impl DmaServer {
    /// One engine and its client; server and client both wait as `wait`
    /// says.
    pub(super) fn start(wait: Wait) -> anyhow::Result<(DmaServer, Client)> {
        let (server, mut clients) = DmaServer::start_many(wait, 1)?;
        let client = clients.pop().context("no client")?;
        Ok((server, client))
    }

    /// `n` engines, each with a client of its own (a connection thread
    /// each).
    pub(super) fn start_many(wait: Wait, n: usize) -> anyhow::Result<(DmaServer, Vec<Client>)> {
        let dir = tempdir()?;
        let reg = Registry::default();
        let server = Server::new(reg.clone(), ServerConfig::new(&dir).wait(wait))?;
        let mut devs = Vec::new();
        let mut clients = Vec::new();
        for i in 0..n {
            let name = format!("bench{i}");
            let group = GroupId(u32::try_from(i).unwrap_or(u32::MAX).saturating_add(1));
            devs.push(dma::create(
                &reg,
                &name,
                group,
                &dma::DmaOptions::default(),
            )?);
            clients.push(Client::connect_with(
                server.socket_path(&name).context("socket")?,
                ClientConfig::default().wait(wait),
            )?);
        }
        Ok((DmaServer { dir, server, devs }, clients))
    }

    /// Disconnects `clients`, then takes everything down.
    pub(super) fn stop(self, clients: impl IntoIterator<Item = Client>) {
        for client in clients {
            client.shutdown();
        }
        // Let the connection threads see the hang-up and release the
        // devices, so unregister need not ask (and log that nobody can be
        // asked).
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.devs.iter().any(|d| d.open_count() > 0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        for dev in self.devs {
            drop(dev.unregister());
        }
        self.server.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Message-path rows against any server: reads config space (region 7).
/// With a polling `wait`, our client polls and the 4 B read is compared
/// with ping-pongs as in the in-process polling rows (not judged).
pub fn external(socket: &Path, opts: &Options, wait: Wait) -> anyhow::Result<Vec<Row>> {
    let client = Client::connect_with(socket, ClientConfig::default().wait(wait))
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let size = client.region_info(7).map(|r| r.info.size).unwrap_or(256);
    // The other process's threads go where its scheduler puts them; the
    // ping-pong runs on this CPU, like our client (same-core layout), and
    // a server that runs elsewhere pays cross-CPU wake-ups the baseline
    // does not. Its CPU time is not ours to read, so no CPU rows.
    // A spinning client means to run apart from the server, so its
    // baselines put their echo end on another CPU (spinning on one CPU
    // would starve it).
    let rows = match wait {
        Wait::Block => access_rows(
            Layout::SameCore,
            std::slice::from_ref(&client),
            7,
            size,
            opts,
        ),
        Wait::Spin(_) => polled_read_rows(
            Layout::TwoCores,
            std::slice::from_ref(&client),
            7,
            wait,
            false,
            opts,
        ),
        _ => polled_read_rows(
            Layout::SameCore,
            std::slice::from_ref(&client),
            7,
            wait,
            false,
            opts,
        ),
    };
    client.shutdown();
    rows
}

pub(super) fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "uvfio-bench-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// One server with `devices` registered gpio cards and `clients` connected
/// clients each reading a register in a loop for `duration`: total reads/s
/// against one client alone, the same load on all CPUs against the whole
/// process confined to one (per-core scaling), and resident memory per
/// idle device and per connection.
pub fn scale(devices: u32, clients: u32, duration: Duration) -> anyhow::Result<Vec<Row>> {
    let dir = tempdir()?;
    let reg = Registry::default();
    let server = Server::new(reg.clone(), ServerConfig::new(&dir))?;
    let rss0 = rss_bytes();
    let mut devs = Vec::new();
    for i in 0..devices {
        devs.push(uvfio_drivers::gpio::create(
            &reg,
            &format!("g{i}"),
            GroupId(i + 1),
            &uvfio_drivers::gpio::GpioOptions::default(),
        )?);
    }
    let rss_devs = rss_bytes();
    let mut conns = Vec::new();
    for i in 0..clients.min(devices) {
        conns.push(Arc::new(Client::connect(
            server.socket_path(&format!("g{i}")).context("socket")?,
        )?));
    }
    let rss_conns = rss_bytes();

    let run = |n: usize| -> anyhow::Result<f64> {
        let stop = Arc::new(AtomicBool::new(false));
        let total = Arc::new(AtomicU64::new(0));
        let start = Arc::new(Barrier::new(n + 1));
        let threads: Vec<_> = conns[..n]
            .iter()
            .cloned()
            .map(|c| {
                let (stop, total, start) = (stop.clone(), total.clone(), start.clone());
                std::thread::spawn(move || {
                    let mut b = [0u8; 4];
                    let mut k = 0u64;
                    start.wait();
                    while !stop.load(Ordering::Relaxed) {
                        if c.region_read(0, 0, &mut b).is_err() {
                            break;
                        }
                        k += 1;
                    }
                    total.fetch_add(k, Ordering::Relaxed);
                })
            })
            .collect();
        start.wait();
        let t = Instant::now();
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        for th in threads {
            let _ = th.join();
        }
        Ok(total.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64())
    };
    let one = run(1)?;
    let all = run(conns.len())?;
    // The same load on one CPU: per-core scaling.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let on_one_cpu = if cpus > 1 {
        confine_process(Some(1));
        let r = run(conns.len());
        confine_process(None);
        Some(r?)
    } else {
        None
    };
    let per_dev = rss_devs.saturating_sub(rss0) as f64 / f64::from(devices.max(1));
    let per_conn = rss_conns.saturating_sub(rss_devs) as f64 / conns.len().max(1) as f64;

    for c in &conns {
        c.shutdown();
    }
    drop(conns);
    for d in devs {
        drop(d.unregister());
    }
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);

    let mut rows = vec![Row {
        name: format!("scale: {clients} clients vs 1 ({devices} devices; {cpus} CPUs)"),
        ours: all,
        baseline: one,
        unit: "ops/s",
        ratio: all / one,
        goal: "report",
        met: None,
    }];
    if let Some(on_one) = on_one_cpu {
        rows.push(Row {
            name: format!("scale: {clients} clients on {cpus} CPUs vs on 1 CPU"),
            ours: all,
            baseline: on_one,
            unit: "ops/s",
            ratio: all / on_one,
            goal: "report",
            met: None,
        });
    }
    rows.extend([
        Row {
            name: "scale: resident memory per idle device".into(),
            ours: per_dev,
            baseline: 65536.0,
            unit: "bytes",
            ratio: per_dev / 65536.0,
            goal: "< 64 KiB",
            met: Some(per_dev < 65536.0),
        },
        Row {
            name: "scale: resident memory per connection".into(),
            ours: per_conn,
            baseline: 65536.0,
            unit: "bytes",
            ratio: per_conn / 65536.0,
            goal: "< 64 KiB",
            met: Some(per_conn < 65536.0),
        },
    ]);
    Ok(rows)
}
