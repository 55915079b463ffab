//! Every per-client limit of the server (module docs of
//! `uvfio_user::server`, *Limits*): reaching it costs the client an error
//! reply or its connection, logs exactly one warning naming the limit,
//! and another client on another device keeps working.

mod common;
#[path = "support/logs.rs"]
mod logs;
#[path = "support/raw.rs"]
mod raw;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use raw::*;
use rustix::io::Errno;
use uvfio_core::{
    DeviceFlags, DeviceInfo, DeviceOps, Dma, GroupId, OpenContext, RegionInfo, RegisteredDevice,
    Registry, RegistryConfig, SharedMemory,
};
use uvfio_user::proto::{self, Request};
use uvfio_user::session::SessionConfig;
use uvfio_user::{Client, ClientError, Server, ServerConfig};

struct World<D: DeviceOps> {
    name: String,
    server: Server,
    dev: RegisteredDevice<D>,
    _by_dev: RegisteredDevice<TestDevice>,
    bystander: Client,
    path: PathBuf,
    _registry: Registry,
    _dir: tempfile::TempDir,
}

fn world_with<D: DeviceOps>(
    name: &str,
    dev: D,
    cfg: impl FnOnce(ServerConfig) -> ServerConfig,
) -> World<D> {
    logs::init();
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new(RegistryConfig {
        request_interval: Duration::from_millis(50),
    });
    let server = Server::new(registry.clone(), cfg(ServerConfig::new(dir.path()))).unwrap();
    let dev = registry
        .init(dev, name, GroupId(1))
        .unwrap()
        .register()
        .unwrap();
    let by_dev = registry
        .init(test_device(), &format!("{name}-by"), GroupId(2))
        .unwrap()
        .register()
        .unwrap();
    let bystander = Client::connect(server.socket_path(&format!("{name}-by")).unwrap()).unwrap();
    let path = server.socket_path(name).unwrap();
    World {
        name: name.to_owned(),
        server,
        dev,
        _by_dev: by_dev,
        bystander,
        path,
        _registry: registry,
        _dir: dir,
    }
}

fn world(name: &str, cfg: impl FnOnce(ServerConfig) -> ServerConfig) -> World<TestDevice> {
    world_with(name, test_device(), cfg)
}

impl<D: DeviceOps> World<D> {
    fn check_bystander(&self) {
        let mut id = [0u8; 2];
        self.bystander.region_read(CONFIG, 0, &mut id).unwrap();
        assert_eq!(u16::from_le_bytes(id), VENDOR_ID);
    }

    /// The device's connection is gone and the bystander still works.
    fn wait_released(&self) {
        wait_until("device released", || {
            self.dev.open_count() == 0 && self.server.connections_to(&self.name) == 0
        });
        self.check_bystander();
    }

    /// Exactly `n` warnings about the device, all naming `limit`.
    fn expect_warnings(&self, limit: &str, n: usize) {
        wait_until("the warning", || logs::warnings(&self.name).len() >= n);
        let all = logs::warnings(&self.name);
        assert_eq!(all.len(), n, "warnings about {}: {all:#?}", self.name);
        assert_eq!(logs::limit_warnings(&self.name, limit).len(), n, "{all:#?}");
    }
}

fn sealed(size: u64) -> SharedMemory {
    SharedMemory::new("limits", size).unwrap()
}

#[test]
fn limit_message_size_closes_the_connection() {
    let w = world("lim-size", |c| c.max_msg_size(64 * 1024));
    // Before VERSION.
    let r = Raw::connect(&w.path);
    r.send(&header(1, proto::VFIO_USER_VERSION, 100_000, 0), &[]);
    expect_closed(&r);
    w.wait_released();
    // After VERSION: within the cap is fine, over it closes.
    let mut r = Raw::connect(&w.path);
    r.negotiate();
    let data = vec![7u8; 4096];
    let req = Request::RegionWrite(proto::RegionWrite {
        offset: 0,
        region: BAR0,
        data: &data,
    });
    let m = r.request(&req, &[]);
    assert_eq!(errno_of(&m), None);
    r.send(
        &header(2, proto::VFIO_USER_REGION_WRITE, 64 * 1024 + 1, 0),
        &[],
    );
    expect_closed(&r);
    w.wait_released();
    w.expect_warnings("max_msg_size", 2);
}

#[test]
fn limit_dma_maps_is_enospc() {
    let w = world("lim-maps", |c| {
        c.session(SessionConfig::default().max_dma_maps(2))
    });
    let mut r = Raw::connect(&w.path);
    r.negotiate();
    assert_eq!(errno_of(&r.request(&dma_map(0x1000, 0x1000), &[])), None);
    assert_eq!(errno_of(&r.request(&dma_map(0x2000, 0x1000), &[])), None);
    expect_errno(&r.request(&dma_map(0x3000, 0x1000), &[]), Errno::NOSPC);
    w.check_bystander();
    // Room again after an unmap.
    assert_eq!(errno_of(&r.request(&dma_unmap(0x1000, 0x1000), &[])), None);
    assert_eq!(errno_of(&r.request(&dma_map(0x3000, 0x1000), &[])), None);
    drop(r);
    w.wait_released();
    w.expect_warnings("max_dma_maps", 1);
}

#[test]
fn limit_dma_bytes_is_enospc() {
    let w = world("lim-bytes", |c| {
        c.session(SessionConfig::default().max_dma_bytes(0x4000))
    });
    let mut r = Raw::connect(&w.path);
    r.negotiate();
    let mem = sealed(0x3000);
    assert_eq!(
        errno_of(&r.request(&dma_map(0x1_0000, 0x3000), &[mem.fd()])),
        None
    );
    expect_errno(&r.request(&dma_map(0x2_0000, 0x2000), &[]), Errno::NOSPC);
    assert_eq!(errno_of(&r.request(&dma_map(0x2_0000, 0x1000), &[])), None);
    // Unmapping everything gives it all back.
    let all = Request::DmaUnmap(proto::DmaUnmap {
        flags: proto::VFIO_DMA_UNMAP_FLAG_ALL,
        ..proto::DmaUnmap::new(0, 0)
    });
    assert_eq!(errno_of(&r.request(&all, &[])), None);
    assert_eq!(errno_of(&r.request(&dma_map(0x3_0000, 0x4000), &[])), None);
    w.check_bystander();
    drop(r);
    w.wait_released();
    w.expect_warnings("max_dma_bytes", 1);
}

#[test]
fn limit_fds_per_message_closes_them_and_is_einval() {
    let w = world("lim-msgfds", |c| {
        c.session(SessionConfig::default().max_msg_fds(2))
    });
    let mut r = Raw::connect(&w.path);
    r.negotiate();
    let efds = eventfds(3);
    let m = r.request(&set_eventfds(MSIX, 0, 3), &borrow(&efds));
    expect_errno(&m, Errno::INVAL);
    assert!(!w.dev.driver().irq_lines().enabled(MSIX));
    let m = r.request(&set_eventfds(MSIX, 0, 2), &borrow(&efds[..2]));
    assert_eq!(errno_of(&m), None);
    w.check_bystander();
    drop(r);
    w.wait_released();
    w.expect_warnings("max_msg_fds", 1);
}

#[test]
fn limit_held_fds_counts_eventfds_and_dma_fds() {
    let w = world("lim-held", |c| {
        c.session(SessionConfig::default().max_held_fds(3))
    });
    let mut r = Raw::connect(&w.path);
    r.negotiate();
    let efds = eventfds(4);
    let (a, b) = (sealed(0x1000), sealed(0x1000));
    // 2 eventfds + 1 fd-backed mapping: the budget.
    assert_eq!(
        errno_of(&r.request(&set_eventfds(MSIX, 0, 2), &borrow(&efds[..2]))),
        None
    );
    assert_eq!(
        errno_of(&r.request(&dma_map(0x1000, 0x1000), &[a.fd()])),
        None
    );
    // One more of either kind is refused.
    expect_errno(
        &r.request(&dma_map(0x8000, 0x1000), &[b.fd()]),
        Errno::NOSPC,
    );
    expect_errno(
        &r.request(&set_eventfds(MSIX, 2, 2), &borrow(&efds[2..])),
        Errno::NOSPC,
    );
    // Replacing the bound vectors does not add up; unbinding frees them.
    assert_eq!(
        errno_of(&r.request(&set_eventfds(MSIX, 0, 2), &borrow(&efds[2..]))),
        None
    );
    assert_eq!(errno_of(&r.request(&set_eventfds(MSIX, 0, 2), &[])), None);
    assert_eq!(
        errno_of(&r.request(&dma_map(0x8000, 0x1000), &[b.fd()])),
        None
    );
    // Mappings without an fd hold none.
    assert_eq!(errno_of(&r.request(&dma_map(0x10000, 0x1000), &[])), None);
    w.check_bystander();
    drop(r);
    w.wait_released();
    w.expect_warnings("max_held_fds", 2);
}

/// One register; exposes its DMA handle so the test can DMA from threads
/// of its own.
#[derive(Default)]
struct DmaProbe {
    dma: Mutex<Option<Dma>>,
}

impl DeviceOps for DmaProbe {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: DeviceFlags::PCI,
            num_regions: 9,
            num_irqs: 0,
        }
    }
    fn open_device(&self, ctx: &OpenContext) -> uvfio_core::Result<()> {
        *self.dma.lock().unwrap() = Some(ctx.dma.clone());
        Ok(())
    }
    fn close_device(&self, _: uvfio_core::CloseReason) {
        *self.dma.lock().unwrap() = None;
    }
    fn region_info(&self, index: u32) -> uvfio_core::Result<RegionInfo> {
        Ok(match index {
            CONFIG => RegionInfo::rw(index, 256),
            _ => RegionInfo::absent(index),
        })
    }
    fn read(&self, _: u32, _: u64, buf: &mut [u8]) -> uvfio_core::Result<()> {
        buf.fill(0);
        Ok(())
    }
}

#[test]
fn limit_pending_dma_requests_fails_the_next_with_eagain() {
    let w = world_with("lim-pending", DmaProbe::default(), |c| {
        c.max_pending_requests(1)
            .dma_timeout(Duration::from_millis(500))
    });
    let mut r = Raw::connect(&w.path);
    r.negotiate();
    // Memory reached through DMA_READ/DMA_WRITE messages.
    assert_eq!(errno_of(&r.request(&dma_map(0x1000, 0x1000), &[])), None);
    let dma = w.dev.driver().dma.lock().unwrap().clone().unwrap();
    let first = {
        let dma = dma.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 4];
            dma.read(0x1000, &mut b)
        })
    };
    // The client sees the request and does not answer it.
    let req = r.recv().unwrap();
    assert_eq!(req.command(), proto::VFIO_USER_DMA_READ);
    let mut b = [0u8; 4];
    assert_eq!(dma.read(0x1000, &mut b), Err(Errno::AGAIN));
    assert_eq!(first.join().unwrap(), Err(Errno::TIMEDOUT));
    w.check_bystander();
    drop(dma);
    drop(r);
    w.wait_released();
    // One line for the refused request, one for the unanswered one.
    wait_until("the warnings", || logs::warnings("lim-pending").len() >= 2);
    assert_eq!(logs::warnings("lim-pending").len(), 2);
    assert_eq!(
        logs::limit_warnings("lim-pending", "max_pending_requests").len(),
        1
    );
    assert_eq!(logs::limit_warnings("lim-pending", "dma_timeout").len(), 1);
}

fn server_errno(e: ClientError) -> Errno {
    match e {
        ClientError::Server { errno, .. } => errno,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[test]
fn limit_total_connections_refuses_with_eusers_the_client_sees() {
    // The bystander holds one of the two.
    let w = world("lim-conns", |c| c.max_connections(2));
    let mut holder = Raw::connect(&w.path);
    holder.negotiate();
    let e = Client::connect(&w.path).unwrap_err();
    assert_eq!(server_errno(e), Errno::USERS);
    w.check_bystander();
    drop(holder);
    w.wait_released();
    wait_until("a free slot", || w.server.connections() == 1);
    let c = Client::connect(&w.path).unwrap();
    let mut id = [0u8; 2];
    c.region_read(CONFIG, 0, &mut id).unwrap();
    drop(c);
    w.wait_released();
    w.expect_warnings("max_connections", 1);
}

#[test]
fn limit_negotiation_time_cuts_off_slow_clients() {
    let w = world("lim-slowloris", |c| {
        c.negotiation_timeout(Duration::from_millis(200))
    });
    // Says nothing at all.
    let r = Raw::connect(&w.path);
    expect_closed(&r);
    w.wait_released();
    // Starts a VERSION and never finishes it.
    let r = Raw::connect(&w.path);
    let v = r.clone_encode_version();
    r.send(&v[..10], &[]);
    expect_closed(&r);
    w.wait_released();
    // A prompt client is unaffected.
    let c = Client::connect(&w.path).unwrap();
    drop(c);
    w.wait_released();
    w.expect_warnings("negotiation_timeout", 2);
}

trait EncodeVersion {
    fn clone_encode_version(&self) -> Vec<u8>;
}

impl EncodeVersion for Raw {
    fn clone_encode_version(&self) -> Vec<u8> {
        let mut v = Vec::new();
        Raw::version().encode(1, false, &mut v).unwrap();
        v
    }
}

#[test]
fn limit_io_time_cuts_off_a_drip_fed_message() {
    let w = world("lim-drip", |c| c.io_timeout(Duration::from_millis(300)));
    let mut r = Raw::connect(&w.path);
    r.negotiate();
    // A REGION_WRITE whose body arrives a byte at a time, slower than the
    // message may take: each byte alone would pass a per-read timeout.
    let mut b = header(0x77, proto::VFIO_USER_REGION_WRITE, 16 + 16 + 4000, 0);
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&BAR0.to_le_bytes());
    b.extend_from_slice(&4000u32.to_le_bytes());
    b.extend(std::iter::repeat_n(0u8, 4000));
    let mut cut_off = false;
    for byte in b.chunks(1) {
        if r.try_send(byte, &[]).is_err() {
            cut_off = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(cut_off, "the server waited for the whole drip");
    w.wait_released();
    w.expect_warnings("io_timeout", 1);
}

#[test]
fn limit_io_time_closes_a_client_that_does_not_read_replies() {
    let w = world("lim-noread", |c| c.io_timeout(Duration::from_millis(300)));
    let mut r = Raw::connect(&w.path);
    r.negotiate();
    // 8 KiB replies, never read: far more than the socket buffers hold.
    for _ in 0..256 {
        let b = r.encode(&region_read(BAR0, 0, 0x2000), false);
        if r.try_send(&b, &[]).is_err() {
            break;
        }
    }
    w.wait_released();
    w.expect_warnings("io_timeout", 1);
}

/// Programs a DMA from the client's memory at `iova` and rings the
/// doorbell (the device then waits for the client's DMA_READ reply).
fn ring_dma_doorbell(r: &mut Raw, iova: u64) {
    let w = |r: &mut Raw, off: u64, data: &[u8]| {
        let req = Request::RegionWrite(proto::RegionWrite {
            offset: off,
            region: BAR0,
            data,
        });
        r.encode(&req, false)
    };
    let a = w(r, REG_DMA_ADDR, &iova.to_le_bytes());
    assert_eq!(errno_of(&r.round_trip(&a, &[])), None);
    let l = w(r, REG_DMA_LEN, &16u32.to_le_bytes());
    assert_eq!(errno_of(&r.round_trip(&l, &[])), None);
    let d = w(r, REG_DOORBELL, &CMD_DMA_FROM_CLIENT.to_le_bytes());
    r.send(&d, &[]);
    let m = r.recv().unwrap();
    assert_eq!(m.command(), proto::VFIO_USER_DMA_READ);
}

#[test]
fn limit_queued_bytes_while_a_dma_reply_is_awaited_closes() {
    let w = world("lim-queue", |c| {
        c.max_queued_bytes(4096)
            .dma_timeout(Duration::from_secs(20))
    });
    let mut r = Raw::connect(&w.path);
    r.negotiate();
    assert_eq!(errno_of(&r.request(&dma_map(0x1000, 0x1000), &[])), None);
    ring_dma_doorbell(&mut r, 0x1000);
    // Instead of answering, flood commands.
    let data = vec![0u8; 1024];
    for _ in 0..8 {
        let req = Request::RegionWrite(proto::RegionWrite {
            offset: 0,
            region: CONFIG,
            data: &data[..64],
        });
        let mut b = r.encode(&req, false);
        // Pad with a bigger write to fill the queue quickly.
        let big = Request::RegionWrite(proto::RegionWrite {
            offset: DATA_BUF,
            region: BAR0,
            data: &data,
        });
        b.extend(r.encode(&big, false));
        if r.try_send(&b, &[]).is_err() {
            break;
        }
    }
    expect_closed(&r);
    w.wait_released();
    w.expect_warnings("max_queued_bytes", 1);
}

#[test]
fn limit_queued_fds_while_a_dma_reply_is_awaited_closes() {
    let w = world("lim-queuefds", |c| {
        c.session(SessionConfig::default().max_held_fds(4))
            .dma_timeout(Duration::from_secs(20))
    });
    let mut r = Raw::connect(&w.path);
    r.negotiate();
    assert_eq!(errno_of(&r.request(&dma_map(0x1000, 0x1000), &[])), None);
    ring_dma_doorbell(&mut r, 0x1000);
    for _ in 0..3 {
        let efds = eventfds(2);
        let b = r.encode(&set_eventfds(MSIX, 0, 2), false);
        if r.try_send(&b, &borrow(&efds)).is_err() {
            break;
        }
    }
    expect_closed(&r);
    w.wait_released();
    w.expect_warnings("max_held_fds", 1);
}

#[test]
fn limit_defaults_are_documented_values() {
    let c = ServerConfig::new("/nonexistent");
    assert_eq!(c.max_connections, 1024);
    assert_eq!(c.max_pending_requests, 64);
    assert_eq!(c.negotiation_timeout, Duration::from_secs(5));
    assert_eq!(c.io_timeout, Duration::from_secs(10));
    assert_eq!(c.max_msg_size, None);
    assert_eq!(c.session.max_msg_fds, 16);
    assert_eq!(c.session.max_held_fds, 1024);
    assert_eq!(c.session.max_dma_maps, 65535);
    assert_eq!(c.session.max_dma_bytes, 1 << 40);
    assert!(c.private_socket_dir);
    assert!(c.allowed_uids.is_none());
}
