//! A hostile client (raw `UnixStream`, hand-built bytes) against the
//! server. One test function on purpose: it counts the process's open fds
//! (entries of /proc/self/fd), which parallel tests would disturb.
//!
//! Throughout, a well-behaved client on another device keeps working, and
//! at the end the fd count is back where it started.

mod common;

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use rustix::io::Errno;
use uvfio_core::{GroupId, RegisteredDevice, Registry, SharedMemory};
use uvfio_user::proto::{self, Capabilities, Request, Version};
use uvfio_user::transport::{self, FrameLimits, Message, TransportError};
use uvfio_user::{Client, Server, ServerConfig};

/// A raw connection.
struct Raw {
    s: UnixStream,
    id: u16,
}

const HANG_GUARD: Duration = Duration::from_secs(20);

fn header(msg_id: u16, command: u16, msg_size: u32, flags: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&msg_id.to_le_bytes());
    v.extend_from_slice(&command.to_le_bytes());
    v.extend_from_slice(&msg_size.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

impl Raw {
    fn connect(path: &Path) -> Raw {
        Raw {
            s: UnixStream::connect(path).unwrap(),
            id: 0x100,
        }
    }

    fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
        transport::send_message(self.s.as_fd(), bytes, fds).unwrap();
    }

    fn recv(&self) -> Result<Message, TransportError> {
        let mut m = Message::default();
        let limits = FrameLimits::default();
        transport::recv_message(
            self.s.as_fd(),
            &limits,
            Some(Instant::now() + HANG_GUARD),
            &mut m,
        )?;
        Ok(m)
    }

    fn encode(&mut self, req: &Request<'_>) -> Vec<u8> {
        self.id = self.id.wrapping_add(1);
        let mut v = Vec::new();
        req.encode(self.id, false, &mut v).unwrap();
        v
    }

    /// Sends `bytes` (one command with id `id`) and returns its reply.
    fn round_trip(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Message {
        self.send(bytes, fds);
        let m = self.recv().expect("a reply");
        assert!(m.is_reply());
        assert_eq!(m.msg_id(), u16::from_le_bytes([bytes[0], bytes[1]]));
        m
    }

    fn request(&mut self, req: &Request<'_>, fds: &[BorrowedFd<'_>]) -> Message {
        let bytes = self.encode(req);
        self.round_trip(&bytes, fds)
    }

    fn negotiate(&mut self) {
        let v = Request::Version(Version::ours(Capabilities::default()));
        let m = self.request(&v, &[]);
        assert_eq!(errno_of(&m), None, "VERSION refused");
    }
}

/// The errno of an error reply, `None` for a success.
fn errno_of(m: &Message) -> Option<Errno> {
    if m.flags() & proto::VFIO_USER_F_ERROR == 0 {
        return None;
    }
    let raw = u32::from_le_bytes(m.header[12..16].try_into().unwrap());
    Some(Errno::from_raw_os_error(raw as i32))
}

fn expect_errno(m: &Message, want: Errno) {
    assert_eq!(m.msg_size(), 16, "error replies are the header alone");
    assert_eq!(errno_of(m), Some(want));
}

/// Reads until EOF (skipping any final error reply). A reset counts: the
/// server closed with our unread bytes still queued.
fn expect_closed(r: &Raw) {
    loop {
        match r.recv() {
            Ok(_) => continue,
            Err(TransportError::Closed | TransportError::Io(Errno::CONNRESET)) => return,
            Err(e) => panic!("expected EOF, got {e}"),
        }
    }
}

struct World {
    registry: Registry,
    server: Server,
    victim: RegisteredDevice<TestDevice>,
    bystander_dev: RegisteredDevice<TestDevice>,
    bystander: Client,
    victim_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl World {
    /// The other client still works.
    fn check_bystander(&self) {
        let mut id = [0u8; 2];
        self.bystander.region_read(CONFIG, 0, &mut id).unwrap();
        assert_eq!(u16::from_le_bytes(id), VENDOR_ID);
    }

    /// The victim is free again (its connection is gone).
    fn wait_victim_released(&self) {
        wait_until("victim released", || {
            self.victim.open_count() == 0 && self.server.connections_to("victim") == 0
        });
        self.check_bystander();
    }
}

fn memfd_unsealed(size: u64) -> OwnedFd {
    let fd = rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, size).unwrap();
    fd
}

fn dma_map(address: u64, size: u64) -> Request<'static> {
    Request::DmaMap(proto::DmaMap {
        argsz: proto::DmaMap::ARGSZ,
        flags: proto::VFIO_USER_F_DMA_REGION_READ | proto::VFIO_USER_F_DMA_REGION_WRITE,
        offset: 0,
        address,
        size,
    })
}

fn region_read(region: u32, offset: u64, count: u32) -> Request<'static> {
    Request::RegionRead(proto::RegionAccess {
        offset,
        region,
        count,
    })
}

#[test]
fn hostile_clients_get_the_specified_outcome_and_leak_nothing() {
    let baseline = open_fds();
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::default();
    let server = Server::new(
        registry.clone(),
        ServerConfig::new(dir.path()).io_timeout(Duration::from_millis(300)),
    )
    .unwrap();
    let reg = |name: &str, g: u32| {
        registry
            .init(test_device(), name, GroupId(g))
            .unwrap()
            .register()
            .unwrap()
    };
    let victim = reg("victim", 1);
    let bystander_dev = reg("bystander", 2);
    let bystander = Client::connect(server.socket_path("bystander").unwrap()).unwrap();
    let victim_path = server.socket_path("victim").unwrap();
    let w = World {
        registry: registry.clone(),
        server,
        victim,
        bystander_dev,
        bystander,
        victim_path,
        _dir: dir,
    };
    w.check_bystander();

    garbage_bytes_close_the_connection(&w);
    truncated_header_closes_the_connection(&w);
    size_over_the_cap_closes_the_connection(&w);
    command_before_version_is_einval_then_closed(&w);
    bad_version_proposals_are_refused_and_closed(&w);
    second_client_gets_ebusy(&w);
    bad_requests_get_errnos_and_the_connection_lives(&w);
    fds_of_rejected_messages_are_closed(&w);
    shrinking_an_unsealed_memfd_cannot_fault_the_server(&w);
    sealed_client_memory_cannot_be_pulled_away(&w);
    dma_map_refuses_fds_whose_pages_could_vanish(&w);
    set_irqs_refuses_fds_that_are_not_eventfds(&w);
    disconnect_mid_message_releases_everything(&w);
    stall_mid_message_is_cut_off(&w);

    // Tear down and count.
    let World {
        registry,
        server,
        victim,
        bystander_dev,
        bystander,
        ..
    } = w;
    drop(bystander);
    server.shutdown();
    let v = victim.unregister();
    let b = bystander_dev.unregister();
    assert_eq!(
        v.opens.load(Ordering::SeqCst),
        v.closes.load(Ordering::SeqCst)
    );
    assert_eq!(b.opens.load(Ordering::SeqCst), 1);
    drop((v, b, registry));
    wait_until("fds back to the baseline", || open_fds() == baseline);
}

fn garbage_bytes_close_the_connection(w: &World) {
    let mut r = Raw::connect(&w.victim_path);
    r.s.write_all(b"GET / HTTP/1.1\r\nHost: uvfio\r\n\r\n")
        .unwrap();
    expect_closed(&r);
    w.wait_victim_released();
    // Garbage after negotiation: same outcome, the device is let go.
    let mut r2 = Raw::connect(&w.victim_path);
    r2.negotiate();
    r2.s.write_all(&[0xff; 64]).unwrap();
    expect_closed(&r2);
    w.wait_victim_released();
    drop(r);
}

fn truncated_header_closes_the_connection(w: &World) {
    let mut r = Raw::connect(&w.victim_path);
    r.negotiate();
    r.s.write_all(&header(1, 4, 32, 0)[..8]).unwrap();
    r.s.shutdown(std::net::Shutdown::Write).unwrap();
    expect_closed(&r);
    w.wait_victim_released();
}

fn size_over_the_cap_closes_the_connection(w: &World) {
    let mut r = Raw::connect(&w.victim_path);
    r.negotiate();
    r.send(&header(1, proto::VFIO_USER_REGION_WRITE, 64 << 20, 0), &[]);
    expect_closed(&r);
    w.wait_victim_released();
    // msg_size below the header size.
    let mut r = Raw::connect(&w.victim_path);
    r.negotiate();
    r.send(&header(1, proto::VFIO_USER_DEVICE_RESET, 8, 0), &[]);
    expect_closed(&r);
    w.wait_victim_released();
}

fn command_before_version_is_einval_then_closed(w: &World) {
    let mut r = Raw::connect(&w.victim_path);
    let req = Request::DeviceGetInfo(proto::DeviceInfoRequest { argsz: 16 });
    let m = r.request(&req, &[]);
    expect_errno(&m, Errno::INVAL);
    expect_closed(&r);
    // A DMA_MAP first, with an fd: refused, and the fd closed.
    let mut r = Raw::connect(&w.victim_path);
    let mem = SharedMemory::new("early", 4096).unwrap();
    let m = r.request(&dma_map(0, 4096), &[mem.fd()]);
    expect_errno(&m, Errno::INVAL);
    expect_closed(&r);
    w.wait_victim_released();
}

fn bad_version_proposals_are_refused_and_closed(w: &World) {
    // JSON without its NUL.
    let r = Raw::connect(&w.victim_path);
    let json = br#"{"capabilities":{}}"#;
    let mut b = header(7, proto::VFIO_USER_VERSION, 16 + 4 + json.len() as u32, 0);
    b.extend_from_slice(&[0, 0, 2, 0]);
    b.extend_from_slice(json);
    let m = r.round_trip(&b, &[]);
    expect_errno(&m, Errno::INVAL);
    expect_closed(&r);
    // Wrong major.
    let mut r = Raw::connect(&w.victim_path);
    let v = Version {
        major: 1,
        ..Version::ours(Capabilities::default())
    };
    let m = r.request(&Request::Version(v), &[]);
    assert!(errno_of(&m).is_some());
    expect_closed(&r);
    // VERSION with an fd attached.
    let mut r = Raw::connect(&w.victim_path);
    let efd = uvfio_core::irq::eventfd().unwrap();
    let m = r.request(
        &Request::Version(Version::ours(Capabilities::default())),
        &[efd.as_fd()],
    );
    expect_errno(&m, Errno::INVAL);
    expect_closed(&r);
    // A mistyped capability.
    let r = Raw::connect(&w.victim_path);
    let json = b"{\"capabilities\":{\"max_msg_fds\":\"many\"}}\0";
    let mut b = header(8, proto::VFIO_USER_VERSION, 16 + 4 + json.len() as u32, 0);
    b.extend_from_slice(&[0, 0, 2, 0]);
    b.extend_from_slice(json);
    let m = r.round_trip(&b, &[]);
    expect_errno(&m, Errno::INVAL);
    expect_closed(&r);
    w.wait_victim_released();
}

fn second_client_gets_ebusy(w: &World) {
    let mut first = Raw::connect(&w.victim_path);
    first.negotiate();
    let mut second = Raw::connect(&w.victim_path);
    let m = second.request(
        &Request::Version(Version::ours(Capabilities::default())),
        &[],
    );
    expect_errno(&m, Errno::BUSY);
    expect_closed(&second);
    // The first is unaffected.
    let m = first.request(&region_read(CONFIG, 0, 2), &[]);
    assert_eq!(errno_of(&m), None);
    drop(first);
    w.wait_victim_released();
    // And now a new client can attach.
    let mut third = Raw::connect(&w.victim_path);
    third.negotiate();
    drop(third);
    w.wait_victim_released();
}

fn bad_requests_get_errnos_and_the_connection_lives(w: &World) {
    let mut r = Raw::connect(&w.victim_path);
    r.negotiate();
    let mem = SharedMemory::new("guest", 0x2000).unwrap();
    let m = r.request(&dma_map(0x10000, 0x2000), &[mem.fd()]);
    assert_eq!(errno_of(&m), None);
    // Overlap.
    let m = r.request(&dma_map(0x11000, 0x1000), &[mem.fd()]);
    expect_errno(&m, Errno::EXIST);
    // Not a memfd: a regular file.
    let file = tempfile::tempfile().unwrap();
    file.set_len(0x1000).unwrap();
    let m = r.request(&dma_map(0x40000, 0x1000), &[file.as_fd()]);
    expect_errno(&m, Errno::INVAL);
    // An unsealed memfd.
    let unsealed = memfd_unsealed(0x1000);
    let m = r.request(&dma_map(0x40000, 0x1000), &[unsealed.as_fd()]);
    expect_errno(&m, Errno::INVAL);
    // A sealed memfd too short for the mapping.
    let m = r.request(&dma_map(0x40000, 0x4000), &[mem.fd()]);
    expect_errno(&m, Errno::INVAL);
    // Two fds.
    let m = r.request(&dma_map(0x40000, 0x1000), &[mem.fd(), mem.fd()]);
    expect_errno(&m, Errno::INVAL);
    // Region access past the end, a bad index, and over max_data_xfer_size.
    let m = r.request(&region_read(CONFIG, CONFIG_SIZE - 2, 4), &[]);
    expect_errno(&m, Errno::INVAL);
    let m = r.request(&region_read(CONFIG, u64::MAX - 1, 4), &[]);
    assert!(errno_of(&m).is_some());
    let m = r.request(&region_read(42, 0, 4), &[]);
    expect_errno(&m, Errno::INVAL);
    let m = r.request(&region_read(BAR0, 0, (1 << 20) + 1), &[]);
    expect_errno(&m, Errno::TOOBIG);
    // A write whose data length disagrees with count.
    let mut b = header(0x77, proto::VFIO_USER_REGION_WRITE, 16 + 16 + 2, 0);
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&CONFIG.to_le_bytes());
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&[1, 2]);
    let m = r.round_trip(&b, &[]);
    expect_errno(&m, Errno::INVAL);
    // Unknown and removed commands.
    let m = r.round_trip(&header(0x78, 99, 16, 0), &[]);
    expect_errno(&m, Errno::INVAL);
    let m = r.round_trip(&header(0x79, 14, 16, 0), &[]);
    expect_errno(&m, Errno::NOTSUP);
    // A server-only command from the client.
    let m = r.request(
        &Request::DmaRead(proto::DmaAccess {
            address: 0x10000,
            count: 4,
        }),
        &[],
    );
    expect_errno(&m, Errno::INVAL);
    // Unknown header flag bits: answered, body consumed.
    let mut b = header(0x7a, proto::VFIO_USER_DEVICE_GET_INFO, 32, 0x40);
    b.extend_from_slice(&[0u8; 16]);
    let m = r.round_trip(&b, &[]);
    expect_errno(&m, Errno::INVAL);
    // SET_IRQS with a huge count is bounded by the device, not allocated.
    let mut b = header(0x7b, proto::VFIO_USER_DEVICE_SET_IRQS, 36, 0);
    for x in [
        20u32,
        proto::VFIO_IRQ_SET_DATA_EVENTFD | proto::VFIO_IRQ_SET_ACTION_TRIGGER,
        MSIX,
        0,
        u32::MAX,
    ] {
        b.extend_from_slice(&x.to_le_bytes());
    }
    let m = r.round_trip(&b, &[]);
    expect_errno(&m, Errno::INVAL);
    // An unsolicited reply is dropped; NO_REPLY commands get no answer.
    r.send(
        &header(
            0x7c,
            proto::VFIO_USER_DMA_READ,
            16,
            proto::VFIO_USER_F_TYPE_REPLY,
        ),
        &[],
    );
    let mut b = header(
        0x7d,
        proto::VFIO_USER_REGION_WRITE,
        16 + 16 + 4,
        proto::VFIO_USER_F_NO_REPLY,
    );
    b.extend_from_slice(&0x40u64.to_le_bytes());
    b.extend_from_slice(&CONFIG.to_le_bytes());
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&[5, 6, 7, 8]);
    r.send(&b, &[]);
    // Still alive, and in order: the posted write landed first.
    let m = r.request(&region_read(CONFIG, 0x40, 4), &[]);
    assert_eq!(errno_of(&m), None);
    assert_eq!(&m.body[16..], &[5, 6, 7, 8]);
    w.check_bystander();
    drop(r);
    w.wait_victim_released();
}

fn fds_of_rejected_messages_are_closed(w: &World) {
    let mut r = Raw::connect(&w.victim_path);
    r.negotiate();
    let efd = uvfio_core::irq::eventfd().unwrap();
    let before = open_fds();
    // An fd on a command that takes none.
    let m = r.request(
        &Request::DeviceGetInfo(proto::DeviceInfoRequest { argsz: 16 }),
        &[efd.as_fd()],
    );
    expect_errno(&m, Errno::INVAL);
    assert_eq!(
        open_fds(),
        before,
        "the server closed its copy before replying"
    );
    // MSI-X TRIGGER of `count` vectors from 0 with eventfds.
    let trigger = |count: u32| {
        Request::DeviceSetIrqs(proto::SetIrqs {
            index: MSIX,
            start: 0,
            count,
            action: proto::IrqAction::Trigger,
            data: proto::IrqData::Eventfd,
        })
    };
    let eventfds = |n: usize| -> Vec<OwnedFd> {
        (0..n)
            .map(|_| uvfio_core::irq::eventfd().unwrap())
            .collect()
    };
    // More fds than SET_IRQS count.
    let fds = eventfds(3);
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
    let before = open_fds();
    let m = r.request(&trigger(2), &borrowed);
    expect_errno(&m, Errno::INVAL);
    assert_eq!(open_fds(), before);
    // More fds than we advertised (16): the kernel-level cap.
    let many = eventfds(20);
    let many_borrowed: Vec<BorrowedFd<'_>> = many.iter().map(AsFd::as_fd).collect();
    let before = open_fds();
    let m = r.request(&trigger(20), &many_borrowed);
    expect_errno(&m, Errno::INVAL);
    assert_eq!(open_fds(), before);
    // Eventfds that are accepted are kept (2 more), and released on exit.
    let m = r.request(&trigger(2), &many_borrowed[..2]);
    assert_eq!(errno_of(&m), None);
    assert_eq!(open_fds(), before + 2);
    drop(r);
    w.wait_victim_released();
    // Both ends of the connection and the two eventfds are gone.
    wait_until("connection fds closed", || open_fds() == before - 2);
}

fn shrinking_an_unsealed_memfd_cannot_fault_the_server(w: &World) {
    let mut r = Raw::connect(&w.victim_path);
    r.negotiate();
    let fd = memfd_unsealed(0x2000);
    let m = r.request(&dma_map(0x80000, 0x2000), &[fd.as_fd()]);
    expect_errno(&m, Errno::INVAL);
    // Shrink it anyway, then make the device DMA to that IOVA: nothing is
    // mapped there, so the DMA fails with EFAULT instead of a SIGBUS.
    rustix::fs::ftruncate(&fd, 0).unwrap();
    let write = |r: &mut Raw, off: u64, data: &[u8]| {
        let req = Request::RegionWrite(proto::RegionWrite {
            offset: off,
            region: BAR0,
            data,
        });
        let m = r.request(&req, &[]);
        assert_eq!(errno_of(&m), None);
    };
    write(&mut r, REG_DMA_ADDR, &0x80000u64.to_le_bytes());
    write(&mut r, REG_DMA_LEN, &64u32.to_le_bytes());
    write(&mut r, REG_DOORBELL, &CMD_DMA_TO_CLIENT.to_le_bytes());
    let m = r.request(&region_read(BAR0, REG_STATUS, 4), &[]);
    assert_eq!(
        &m.body[16..],
        &(Errno::FAULT.raw_os_error() as u32).to_le_bytes()
    );
    // A sealed one maps, and the device's DMA lands in it.
    let mem = SharedMemory::new("sealed", 0x2000).unwrap();
    let m = r.request(&dma_map(0x80000, 0x2000), &[mem.fd()]);
    assert_eq!(errno_of(&m), None);
    write(&mut r, REG_DOORBELL, &CMD_DMA_FROM_CLIENT.to_le_bytes());
    let m = r.request(&region_read(BAR0, REG_STATUS, 4), &[]);
    assert_eq!(&m.body[16..], &[0, 0, 0, 0]);
    drop(r);
    w.wait_victim_released();
}

fn disconnect_mid_message_releases_everything(w: &World) {
    let mut r = Raw::connect(&w.victim_path);
    r.negotiate();
    let mem = SharedMemory::new("guest", 0x1000).unwrap();
    let m = r.request(&dma_map(0x1000, 0x1000), &[mem.fd()]);
    assert_eq!(errno_of(&m), None);
    let efd = uvfio_core::irq::eventfd().unwrap();
    let req = Request::DeviceSetIrqs(proto::SetIrqs {
        index: MSI,
        start: 0,
        count: 1,
        action: proto::IrqAction::Trigger,
        data: proto::IrqData::Eventfd,
    });
    let m = r.request(&req, &[efd.as_fd()]);
    assert_eq!(errno_of(&m), None);
    assert!(w.victim.driver().irq_lines().enabled(MSI));
    // Half a REGION_WRITE, then gone.
    let mut b = header(0x99, proto::VFIO_USER_REGION_WRITE, 16 + 16 + 64, 0);
    b.extend_from_slice(&[0u8; 10]);
    r.s.write_all(&b).unwrap();
    drop(r);
    w.wait_victim_released();
    assert!(!w.victim.driver().irq_lines().enabled(MSI));
}

fn stall_mid_message_is_cut_off(w: &World) {
    // io_timeout is 300 ms in this world: a client that stops inside a
    // message loses its connection instead of pinning the device.
    let mut r = Raw::connect(&w.victim_path);
    r.negotiate();
    let mut b = header(0x9a, proto::VFIO_USER_REGION_WRITE, 16 + 16 + 4, 0);
    b.extend_from_slice(&[0u8; 4]);
    r.s.write_all(&b).unwrap();
    expect_closed(&r);
    w.wait_victim_released();
    // The registry never noticed.
    assert_eq!(w.registry.devices().len(), 2);
}

fn bar0_write(r: &mut Raw, off: u64, data: &[u8]) {
    let req = Request::RegionWrite(proto::RegionWrite {
        offset: off,
        region: BAR0,
        data,
    });
    let m = r.request(&req, &[]);
    assert_eq!(errno_of(&m), None);
}

/// Has the device DMA `len` bytes between its data buffer and `iova`
/// (`cmd`: [`CMD_DMA_TO_CLIENT`] or [`CMD_DMA_FROM_CLIENT`]); returns the
/// device's status (0 or an errno).
fn device_dma(r: &mut Raw, iova: u64, len: u32, cmd: u32) -> u32 {
    bar0_write(r, REG_DMA_ADDR, &iova.to_le_bytes());
    bar0_write(r, REG_DMA_LEN, &len.to_le_bytes());
    bar0_write(r, REG_DOORBELL, &cmd.to_le_bytes());
    let m = r.request(&region_read(BAR0, REG_STATUS, 4), &[]);
    u32::from_le_bytes(m.body[16..20].try_into().unwrap())
}

fn data_buf(r: &mut Raw, len: u32) -> Vec<u8> {
    let m = r.request(&region_read(BAR0, DATA_BUF, len), &[]);
    assert_eq!(errno_of(&m), None);
    m.body[16..].to_vec()
}

/// Every way a client can try to take mapped memory away from the server
/// after a DMA_MAP of a sealed memfd: none of them can make a device DMA
/// fault (SIGBUS would kill every client's server).
fn sealed_client_memory_cannot_be_pulled_away(w: &World) {
    let mut r = Raw::connect(&w.victim_path);
    r.negotiate();
    let iova = 0xa_0000;
    let mem = SharedMemory::new("pull", 0x2000).unwrap();
    let m = r.request(&dma_map(iova, 0x2000), &[mem.fd()]);
    assert_eq!(errno_of(&m), None);
    // Shrinking (and growing) is refused to the client by the seals.
    assert_eq!(rustix::fs::ftruncate(mem.fd(), 0), Err(Errno::PERM));
    assert_eq!(rustix::fs::ftruncate(mem.fd(), 0x1000), Err(Errno::PERM));
    assert_eq!(rustix::fs::ftruncate(mem.fd(), 0x4000), Err(Errno::PERM));
    // The device writes the client's memory; the client sees it.
    bar0_write(&mut r, DATA_BUF, &[0x5a; 64]);
    assert_eq!(device_dma(&mut r, iova + 0x1000, 64, CMD_DMA_TO_CLIENT), 0);
    let mut seen = [0u8; 64];
    mem.read_at(0x1000, &mut seen).unwrap();
    assert_eq!(seen, [0x5a; 64]);
    // Punching a hole frees the pages; they read back as zeros.
    rustix::fs::fallocate(
        mem.fd(),
        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
        0x1000,
        0x1000,
    )
    .unwrap();
    assert_eq!(
        device_dma(&mut r, iova + 0x1000, 64, CMD_DMA_FROM_CLIENT),
        0
    );
    assert_eq!(data_buf(&mut r, 64), vec![0; 64]);
    // Unmapping its own copy and closing its fd: our mapping lives on.
    drop(mem);
    bar0_write(&mut r, DATA_BUF, &[0xc3; 128]);
    assert_eq!(device_dma(&mut r, iova, 128, CMD_DMA_TO_CLIENT), 0);
    bar0_write(&mut r, DATA_BUF, &[0; 128]);
    assert_eq!(device_dma(&mut r, iova, 128, CMD_DMA_FROM_CLIENT), 0);
    assert_eq!(data_buf(&mut r, 128), vec![0xc3; 128]);
    drop(r);
    w.wait_victim_released();
}

/// Fds a client could shrink, or that are not memory at all, are refused
/// before any mapping is made (and closed).
fn dma_map_refuses_fds_whose_pages_could_vanish(w: &World) {
    let mut r = Raw::connect(&w.victim_path);
    r.negotiate();
    let iova = 0xc_0000;
    let refuse = |r: &mut Raw, req: &Request<'_>, fd: BorrowedFd<'_>| {
        let m = r.request(req, &[fd]);
        expect_errno(&m, Errno::INVAL);
    };
    let (pipe_r, pipe_w) = rustix::pipe::pipe().unwrap();
    refuse(&mut r, &dma_map(iova, 0x1000), pipe_r.as_fd());
    refuse(&mut r, &dma_map(iova, 0x1000), pipe_w.as_fd());
    let (sa, _sb) = UnixStream::pair().unwrap();
    refuse(&mut r, &dma_map(iova, 0x1000), sa.as_fd());
    let efd = uvfio_core::irq::eventfd().unwrap();
    refuse(&mut r, &dma_map(iova, 0x1000), efd.as_fd());
    let null = std::fs::File::open("/dev/null").unwrap();
    refuse(&mut r, &dma_map(iova, 0x1000), null.as_fd());
    // A memfd that cannot be sealed at all.
    let plain = rustix::fs::memfd_create("plain", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&plain, 0x1000).unwrap();
    refuse(&mut r, &dma_map(iova, 0x1000), plain.as_fd());
    // Sealed, but the range lies (partly) past the end of the file.
    let mem = SharedMemory::new("short", 0x2000).unwrap();
    let past = |offset: u64, size: u64| {
        Request::DmaMap(proto::DmaMap {
            offset,
            ..match dma_map(iova, size) {
                Request::DmaMap(m) => m,
                _ => unreachable!(),
            }
        })
    };
    refuse(&mut r, &past(0x2000, 0x1000), mem.fd());
    refuse(&mut r, &past(0x1000, 0x2000), mem.fd());
    refuse(&mut r, &past(1 << 40, 0x1000), mem.fd());
    refuse(&mut r, &dma_map(iova, 1 << 40), mem.fd());
    // Sizes that wrap are refused by the decoder.
    let m = r.request(&past(u64::MAX - 0xfff, 0x2000), &[mem.fd()]);
    assert!(errno_of(&m).is_some());
    let m = r.request(&dma_map(u64::MAX - 0xfff, 0x2000), &[mem.fd()]);
    assert!(errno_of(&m).is_some());
    // Nothing was mapped: the IOVA range is still free.
    let m = r.request(&dma_map(iova, 0x2000), &[mem.fd()]);
    assert_eq!(errno_of(&m), None);
    drop(r);
    w.wait_victim_released();
}

/// A pipe or socket bound as an interrupt would turn the device's next
/// interrupt into a write that raises SIGPIPE once the peer is gone.
fn set_irqs_refuses_fds_that_are_not_eventfds(w: &World) {
    let mut r = Raw::connect(&w.victim_path);
    r.negotiate();
    let req = Request::DeviceSetIrqs(proto::SetIrqs {
        index: MSI,
        start: 0,
        count: 1,
        action: proto::IrqAction::Trigger,
        data: proto::IrqData::Eventfd,
    });
    let (_pipe_r, pipe_w) = rustix::pipe::pipe().unwrap();
    let (sa, sb) = UnixStream::pair().unwrap();
    drop(sb);
    let mem = SharedMemory::new("not-an-eventfd", 0x1000).unwrap();
    for fd in [pipe_w.as_fd(), sa.as_fd(), mem.fd()] {
        let m = r.request(&req, &[fd]);
        expect_errno(&m, Errno::INVAL);
    }
    assert!(!w.victim.driver().irq_lines().enabled(MSI));
    // The device can still interrupt (nothing bound: dropped quietly).
    let efd = uvfio_core::irq::eventfd().unwrap();
    let m = r.request(&req, &[efd.as_fd()]);
    assert_eq!(errno_of(&m), None);
    w.victim.driver().irq_lines().trigger(MSI, 0).unwrap();
    assert_eq!(wait_eventfd(&efd), 1);
    drop(r);
    w.wait_victim_released();
}
