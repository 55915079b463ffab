//! The server driven by our client over real UNIX sockets.

mod common;

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustix::io::Errno;
use uvfio_core::{DmaPerm, GroupId, RegisteredDevice, Registry, RegistryConfig, SharedMemory};
use uvfio_user::client::IrqSetData;
use uvfio_user::proto::{self, IrqAction};
use uvfio_user::{Client, ClientConfig, ClientError, Server, ServerConfig};

struct Fixture {
    registry: Registry,
    server: Server,
    _dir: tempfile::TempDir,
}

fn fixture(config: impl FnOnce(ServerConfig) -> ServerConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new(RegistryConfig {
        request_interval: Duration::from_millis(50),
    });
    let server = Server::new(registry.clone(), config(ServerConfig::new(dir.path()))).unwrap();
    Fixture {
        registry,
        server,
        _dir: dir,
    }
}

fn register(reg: &Registry, name: &str, group: u32) -> RegisteredDevice<TestDevice> {
    reg.init(test_device(), name, GroupId(group))
        .unwrap()
        .register()
        .unwrap()
}

fn connect(f: &Fixture, name: &str) -> Client {
    Client::connect(f.server.socket_path(name).expect("served")).unwrap()
}

fn server_errno(e: ClientError) -> Errno {
    match e {
        ClientError::Server { errno, .. } => errno,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[test]
fn client_negotiates_and_reads_device_info() {
    let f = fixture(|c| c);
    let dev = register(&f.registry, "dev0", 1);
    let c = connect(&f, "dev0");
    let info = c.device_info().unwrap();
    assert_eq!(info.num_regions, 9);
    assert_eq!(info.num_irqs, 5);
    assert_eq!(
        info.flags,
        proto::VFIO_DEVICE_FLAGS_PCI | proto::VFIO_DEVICE_FLAGS_RESET
    );
    assert_eq!(c.negotiated().theirs.max_data_xfer_size, 1 << 20);
    assert_eq!(dev.driver().opens.load(Ordering::SeqCst), 1);
    drop(c);
    drop(f.server);
    let d = dev.unregister();
    assert_eq!(d.closes.load(Ordering::SeqCst), 1);
}

#[test]
fn socket_file_is_private_and_removed_on_unregister() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture(|c| c);
    let dev = register(&f.registry, "dev0", 1);
    let path = f.server.socket_path("dev0").unwrap();
    let mode = std::fs::symlink_metadata(&path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let _ = dev.unregister();
    assert!(!path.exists());
    assert_eq!(f.server.socket_path("dev0"), None);
}

#[test]
fn config_space_read_write_round_trips() {
    let f = fixture(|c| c);
    let _dev = register(&f.registry, "dev0", 1);
    let c = connect(&f, "dev0");
    let mut id = [0u8; 4];
    c.region_read(CONFIG, 0, &mut id).unwrap();
    assert_eq!(u16::from_le_bytes([id[0], id[1]]), VENDOR_ID);
    assert_eq!(u16::from_le_bytes([id[2], id[3]]), DEVICE_ID);
    c.region_write(CONFIG, 0x10, &[1, 2, 3, 4]).unwrap();
    let mut b = [0u8; 4];
    c.region_read(CONFIG, 0x10, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3, 4]);
}

#[test]
fn region_access_past_the_end_is_einval_and_connection_lives() {
    let f = fixture(|c| c);
    let _dev = register(&f.registry, "dev0", 1);
    let c = connect(&f, "dev0");
    let mut b = [0u8; 8];
    let e = c.region_read(CONFIG, CONFIG_SIZE - 4, &mut b).unwrap_err();
    assert_eq!(server_errno(e), Errno::INVAL);
    let e = c.region_read(99, 0, &mut b).unwrap_err();
    assert_eq!(server_errno(e), Errno::INVAL);
    c.region_read(CONFIG, 0, &mut b).unwrap();
}

#[test]
fn region_info_carries_sparse_caps_and_fd_that_maps_the_bar() {
    let f = fixture(|c| c);
    let dev = register(&f.registry, "dev0", 1);
    let c = connect(&f, "dev0");
    let r = c.region_info(BAR2).unwrap();
    assert_eq!(r.info.size, BAR2_SIZE);
    assert_ne!(r.info.flags & proto::VFIO_REGION_INFO_FLAG_MMAP, 0);
    assert_eq!(
        r.sparse_areas(),
        &[proto::SparseMmapArea {
            offset: 0x1000,
            size: 0x1000
        }]
    );
    assert!(r.fd.is_some());
    let map = r.map_area(0).unwrap();
    map.write_at(8, b"mmapped!").unwrap();
    let mut b = [0u8; 8];
    dev.driver().bar2().read_at(0x1008, &mut b).unwrap();
    assert_eq!(&b, b"mmapped!");
    // The same bytes through REGION_READ.
    c.region_read(BAR2, 0x1008, &mut b).unwrap();
    assert_eq!(&b, b"mmapped!");
    let r0 = c.region_info(BAR0).unwrap();
    assert!(r0.fd.is_none());
    assert!(r0.info.caps.is_empty());
}

#[test]
fn irq_info_reports_the_device_indexes() {
    let f = fixture(|c| c);
    let _dev = register(&f.registry, "dev0", 1);
    let c = connect(&f, "dev0");
    assert_eq!(c.irq_info(MSIX).unwrap().count, 4);
    let intx = c.irq_info(INTX).unwrap();
    assert_ne!(intx.flags & proto::VFIO_IRQ_INFO_AUTOMASKED, 0);
    let e = c.irq_info(7).unwrap_err();
    assert_eq!(server_errno(e), Errno::INVAL);
}

#[test]
fn dma_map_of_sealed_memfd_receives_device_dma_and_msi_fires() {
    let f = fixture(|c| c);
    let dev = register(&f.registry, "dev0", 1);
    let c = connect(&f, "dev0");
    let mem = SharedMemory::new("guest", 0x4000).unwrap();
    c.dma_map_shared(0x10_0000, &mem, DmaPerm::READ | DmaPerm::WRITE)
        .unwrap();
    let efd = uvfio_core::irq::eventfd().unwrap();
    c.set_irq_eventfds(MSI, 0, &[efd.as_fd()]).unwrap();

    // Device → client: fill the data buffer, ring the doorbell.
    c.region_write(BAR0, DATA_BUF, b"hello from the device")
        .unwrap();
    c.region_write(BAR0, REG_DMA_ADDR, &0x10_0100u64.to_le_bytes())
        .unwrap();
    c.region_write(BAR0, REG_DMA_LEN, &21u32.to_le_bytes())
        .unwrap();
    c.region_write(BAR0, REG_DOORBELL, &CMD_DMA_TO_CLIENT.to_le_bytes())
        .unwrap();
    let mut got = [0u8; 21];
    mem.read_at(0x100, &mut got).unwrap();
    assert_eq!(&got, b"hello from the device");
    assert_eq!(wait_eventfd(&efd), 1);

    // Client → device.
    mem.write_at(0x200, b"guest data").unwrap();
    c.region_write(BAR0, REG_DMA_ADDR, &0x10_0200u64.to_le_bytes())
        .unwrap();
    c.region_write(BAR0, REG_DMA_LEN, &10u32.to_le_bytes())
        .unwrap();
    c.region_write(BAR0, REG_DOORBELL, &CMD_DMA_FROM_CLIENT.to_le_bytes())
        .unwrap();
    let mut b = [0u8; 10];
    c.region_read(BAR0, DATA_BUF, &mut b).unwrap();
    assert_eq!(&b, b"guest data");

    c.dma_unmap(0x10_0000, 0x4000).unwrap();
    c.region_write(BAR0, REG_DOORBELL, &CMD_DMA_TO_CLIENT.to_le_bytes())
        .unwrap();
    let mut st = [0u8; 4];
    c.region_read(BAR0, REG_STATUS, &mut st).unwrap();
    assert_eq!(u32::from_le_bytes(st), Errno::FAULT.raw_os_error() as u32);
    drop(dev);
}

#[test]
fn dma_map_without_fd_goes_through_dma_read_and_write_messages() {
    let f = fixture(|c| c);
    let _dev = register(&f.registry, "dev0", 1);
    let c = connect(&f, "dev0");
    let mem = Arc::new(SharedMemory::new("msg-dma", 0x2000).unwrap());
    c.dma_map_message(0x20_0000, mem.clone(), DmaPerm::READ | DmaPerm::WRITE)
        .unwrap();

    c.region_write(BAR0, DATA_BUF, b"via messages").unwrap();
    c.region_write(BAR0, REG_DMA_ADDR, &0x20_0ff8u64.to_le_bytes())
        .unwrap();
    c.region_write(BAR0, REG_DMA_LEN, &12u32.to_le_bytes())
        .unwrap();
    // The doorbell write makes the device DMA inside the op; the client
    // answers the DMA_WRITE while it waits for the REGION_WRITE reply.
    c.region_write(BAR0, REG_DOORBELL, &CMD_DMA_TO_CLIENT.to_le_bytes())
        .unwrap();
    let mut got = [0u8; 12];
    mem.read_at(0xff8, &mut got).unwrap();
    assert_eq!(&got, b"via messages");

    mem.write_at(0x10, b"from client").unwrap();
    c.region_write(BAR0, REG_DMA_ADDR, &0x20_0010u64.to_le_bytes())
        .unwrap();
    c.region_write(BAR0, REG_DMA_LEN, &11u32.to_le_bytes())
        .unwrap();
    c.region_write(BAR0, REG_DOORBELL, &CMD_DMA_FROM_CLIENT.to_le_bytes())
        .unwrap();
    let mut b = [0u8; 11];
    c.region_read(BAR0, DATA_BUF, &mut b).unwrap();
    assert_eq!(&b, b"from client");
}

#[test]
fn dma_from_a_device_thread_is_answered_while_the_client_serves() {
    let f = fixture(|c| c);
    let dev = register(&f.registry, "dev0", 1);
    let c = connect(&f, "dev0");
    let mem = Arc::new(SharedMemory::new("msg-dma", 0x1000).unwrap());
    c.dma_map_message(0x30_0000, mem.clone(), DmaPerm::READ | DmaPerm::WRITE)
        .unwrap();
    let dev = Arc::new(dev);
    let d2 = dev.clone();
    // A device thread (not the connection thread) does the DMA.
    let t = std::thread::spawn(move || {
        use uvfio_core::DeviceOps;
        d2.driver().write(BAR0, DATA_BUF, b"timer").unwrap();
        d2.driver()
            .write(BAR0, REG_DMA_ADDR, &0x30_0000u64.to_le_bytes())
            .unwrap();
        d2.driver()
            .write(BAR0, REG_DMA_LEN, &5u32.to_le_bytes())
            .unwrap();
        d2.driver()
            .write(BAR0, REG_DOORBELL, &CMD_DMA_TO_CLIENT.to_le_bytes())
            .unwrap();
    });
    wait_until("device DMA", || {
        c.serve_dma(Duration::from_millis(20)).unwrap();
        let mut b = [0u8; 5];
        mem.read_at(0, &mut b).unwrap();
        &b == b"timer"
    });
    t.join().unwrap();
}

#[test]
fn dma_to_a_silent_client_times_out_with_etimedout() {
    let f = fixture(|c| c.dma_timeout(Duration::from_millis(100)));
    let dev = register(&f.registry, "dev0", 1);
    let c = connect(&f, "dev0");
    let mem = Arc::new(SharedMemory::new("msg-dma", 0x1000).unwrap());
    c.dma_map_message(0x30_0000, mem, DmaPerm::READ | DmaPerm::WRITE)
        .unwrap();
    // Nobody on the client side reads: the device's DMA must fail, not hang.
    use uvfio_core::DeviceOps;
    dev.driver()
        .write(BAR0, REG_DMA_ADDR, &0x30_0000u64.to_le_bytes())
        .unwrap();
    dev.driver()
        .write(BAR0, REG_DMA_LEN, &4u32.to_le_bytes())
        .unwrap();
    dev.driver()
        .write(BAR0, REG_DOORBELL, &CMD_DMA_TO_CLIENT.to_le_bytes())
        .unwrap();
    let mut st = [0u8; 4];
    // The late DMA_WRITE is answered by the client here, then dropped by
    // the server as a reply nobody waits for.
    c.region_read(BAR0, REG_STATUS, &mut st).unwrap();
    assert_eq!(
        u32::from_le_bytes(st),
        Errno::TIMEDOUT.raw_os_error() as u32
    );
}

#[test]
fn dma_map_overlap_is_eexist_and_unmap_mismatch_is_enoent() {
    let f = fixture(|c| c);
    let _dev = register(&f.registry, "dev0", 1);
    let c = connect(&f, "dev0");
    let mem = SharedMemory::new("guest", 0x2000).unwrap();
    c.dma_map_shared(0x10_0000, &mem, DmaPerm::READ).unwrap();
    let e = c
        .dma_map_fd(0x10_1000, 0x1000, DmaPerm::READ, mem.fd(), 0)
        .unwrap_err();
    assert_eq!(server_errno(e), Errno::EXIST);
    let e = c.dma_unmap(0x10_0000, 0x1000).unwrap_err();
    assert_eq!(server_errno(e), Errno::NOENT);
    c.dma_unmap_all().unwrap();
    c.dma_map_shared(0x10_1000, &mem, DmaPerm::READ).unwrap();
}

#[test]
fn set_irqs_mask_unmask_and_loopback_trigger() {
    let f = fixture(|c| c);
    let dev = register(&f.registry, "dev0", 1);
    let c = connect(&f, "dev0");
    let efd = uvfio_core::irq::eventfd().unwrap();
    c.set_irq_eventfds(INTX, 0, &[efd.as_fd()]).unwrap();
    c.set_irqs(INTX, 0, 1, IrqAction::Trigger, IrqSetData::None)
        .unwrap();
    assert_eq!(wait_eventfd(&efd), 1);
    // Automasked now: the next trigger stays pending until unmasked.
    assert!(dev.driver().irq_lines().masked(INTX, 0));
    c.set_irqs(INTX, 0, 1, IrqAction::Trigger, IrqSetData::Bool(&[true]))
        .unwrap();
    assert_eq!(uvfio_core::irq::read_eventfd(&efd).unwrap(), 0);
    c.set_irqs(INTX, 0, 1, IrqAction::Unmask, IrqSetData::None)
        .unwrap();
    assert_eq!(wait_eventfd(&efd), 1);
    c.set_irqs(INTX, 0, 1, IrqAction::Mask, IrqSetData::None)
        .unwrap();
    assert!(dev.driver().irq_lines().masked(INTX, 0));
    // MSI-X is exclusive with INTx while INTx has an eventfd.
    let e2 = uvfio_core::irq::eventfd().unwrap();
    let e = c.set_irq_eventfds(MSIX, 0, &[e2.as_fd()]).unwrap_err();
    assert_eq!(server_errno(e), Errno::INVAL);
    c.disable_irqs(INTX).unwrap();
    c.set_irq_eventfds(MSIX, 0, &[e2.as_fd()]).unwrap();
    // De-assign with no fds.
    c.set_irqs(MSIX, 0, 1, IrqAction::Trigger, IrqSetData::Eventfds(&[]))
        .unwrap();
    assert!(!dev.driver().irq_lines().enabled(MSIX));
    // Past the vectors the index has.
    let e = c
        .set_irqs(MSIX, 3, 2, IrqAction::Trigger, IrqSetData::None)
        .unwrap_err();
    assert_eq!(server_errno(e), Errno::INVAL);
}

#[test]
fn reset_reaches_the_device() {
    let f = fixture(|c| c);
    let dev = register(&f.registry, "dev0", 1);
    let c = connect(&f, "dev0");
    c.region_write(BAR0, REG_SCRATCH, &[9, 9, 9, 9]).unwrap();
    c.reset().unwrap();
    assert_eq!(dev.driver().resets.load(Ordering::SeqCst), 1);
    let mut b = [0xffu8; 4];
    c.region_read(BAR0, REG_SCRATCH, &mut b).unwrap();
    assert_eq!(b, [0; 4]);
}

#[test]
fn second_client_is_refused_with_ebusy_until_the_first_leaves() {
    let f = fixture(|c| c);
    let dev = register(&f.registry, "dev0", 1);
    let c1 = connect(&f, "dev0");
    let path = f.server.socket_path("dev0").unwrap();
    let e = Client::connect(&path).unwrap_err();
    assert_eq!(server_errno(e), Errno::BUSY);
    c1.device_info().unwrap();
    drop(c1);
    wait_until("first client released", || dev.open_count() == 0);
    let c2 = Client::connect(&path).unwrap();
    c2.device_info().unwrap();
}

#[test]
fn disconnect_releases_device_mappings_and_eventfds() {
    let f = fixture(|c| c);
    let dev = register(&f.registry, "dev0", 1);
    let c = connect(&f, "dev0");
    let mem = SharedMemory::new("guest", 0x1000).unwrap();
    c.dma_map_shared(0x1000, &mem, DmaPerm::READ | DmaPerm::WRITE)
        .unwrap();
    let efd = uvfio_core::irq::eventfd().unwrap();
    c.set_irq_eventfds(MSI, 0, &[efd.as_fd()]).unwrap();
    assert!(dev.driver().irq_lines().enabled(MSI));
    c.shutdown();
    wait_until("device closed", || {
        dev.driver().closes.load(Ordering::SeqCst) == 1
    });
    assert_eq!(dev.open_count(), 0);
    assert!(!dev.driver().irq_lines().enabled(MSI));
    wait_until("connection gone", || f.server.connections() == 0);
}

#[test]
fn device_registered_while_running_is_reachable_at_once() {
    let f = fixture(|c| c);
    assert!(f.server.devices().is_empty());
    let _dev = register(&f.registry, "late", 3);
    let c = connect(&f, "late");
    c.device_info().unwrap();
}

#[test]
fn devices_registered_before_start_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::default();
    let _a = register(&registry, "a", 1);
    let _b = register(&registry, "b", 2);
    let server = Server::new(registry.clone(), ServerConfig::new(dir.path())).unwrap();
    assert_eq!(server.devices(), vec!["a".to_owned(), "b".to_owned()]);
    let ca = Client::connect(server.socket_path("a").unwrap()).unwrap();
    let cb = Client::connect(server.socket_path("b").unwrap()).unwrap();
    ca.device_info().unwrap();
    cb.device_info().unwrap();
}

#[test]
fn stale_socket_is_replaced_but_a_symlink_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    // A stale socket: bound, then its listener closed.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    // A symlink planted where a socket would go.
    let target = dir.path().join("target");
    std::fs::write(&target, b"precious").unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join("evil.sock")).unwrap();
    let registry = Registry::default();
    let server = Server::new(registry.clone(), ServerConfig::new(dir.path())).unwrap();
    let _s = register(&registry, "stale", 1);
    let _e = register(&registry, "evil", 2);
    assert!(server.socket_path("stale").is_some());
    assert!(server.socket_path("evil").is_none());
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    Client::connect(server.socket_path("stale").unwrap())
        .unwrap()
        .device_info()
        .unwrap();
}

#[test]
fn shutdown_closes_clients_and_removes_sockets() {
    let f = fixture(|c| c);
    let dev = register(&f.registry, "dev0", 1);
    let c = connect(&f, "dev0");
    let path = f.server.socket_path("dev0").unwrap();
    f.server.shutdown();
    assert!(!path.exists());
    assert!(c.device_info().is_err());
    assert_eq!(dev.open_count(), 0);
    let _ = dev.unregister();
}

#[test]
fn unregister_signals_req_and_a_cooperative_client_lets_go() {
    let f = fixture(|c| c.grace_period(Duration::from_secs(60)));
    let dev = register(&f.registry, "dev0", 1);
    let c = connect(&f, "dev0");
    let req = uvfio_core::irq::eventfd().unwrap();
    c.set_irq_eventfds(REQ, 0, &[req.as_fd()]).unwrap();
    let t = std::thread::spawn(move || dev.unregister());
    // The client sees REQ and disconnects.
    wait_eventfd(&req);
    drop(c);
    let d = t.join().unwrap();
    assert!(d.requests.load(Ordering::SeqCst) >= 1);
    assert_eq!(d.closes.load(Ordering::SeqCst), 1);
}

#[test]
fn unregister_closes_a_client_that_ignores_the_request_after_the_grace_period() {
    let f = fixture(|c| c.grace_period(Duration::from_millis(100)));
    let dev = register(&f.registry, "dev0", 1);
    let c = connect(&f, "dev0");
    let d = dev.unregister();
    assert_eq!(d.closes.load(Ordering::SeqCst), 1);
    // The server closed the connection under the client.
    assert!(c.wait_closed(Duration::from_secs(20)));
    assert!(c.device_info().is_err());
}

#[test]
fn client_timeout_is_configurable() {
    let f = fixture(|c| c);
    let _dev = register(&f.registry, "dev0", 1);
    let c = Client::connect_with(
        f.server.socket_path("dev0").unwrap(),
        ClientConfig::default().timeout(Duration::from_secs(30)),
    )
    .unwrap();
    c.device_info().unwrap();
}

#[test]
fn transfers_larger_than_max_data_xfer_size_are_split_by_the_client() {
    let f = fixture(|c| {
        c.session(uvfio_user::session::SessionConfig::default().max_data_xfer_size(4096))
    });
    let _dev = register(&f.registry, "dev0", 1);
    let c = connect(&f, "dev0");
    assert_eq!(c.negotiated().theirs.max_data_xfer_size, 4096);
    let data: Vec<u8> = (0..BAR0_SIZE as usize).map(|i| (i % 251) as u8).collect();
    c.region_write(BAR0, 0, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    c.region_read(BAR0, 0, &mut back).unwrap();
    assert_eq!(back, data);
}

#[test]
fn message_dma_larger_than_the_clients_xfer_size_is_chunked() {
    let f = fixture(|c| c);
    let _dev = register(&f.registry, "dev0", 1);
    let mut cfg = ClientConfig::default();
    cfg.capabilities.max_data_xfer_size = 1024;
    let c = Client::connect_with(f.server.socket_path("dev0").unwrap(), cfg).unwrap();
    let mem = Arc::new(SharedMemory::new("msg-dma", 0x2000).unwrap());
    c.dma_map_message(0x40_0000, mem.clone(), DmaPerm::READ | DmaPerm::WRITE)
        .unwrap();
    let data: Vec<u8> = (0..DATA_BUF_SIZE as usize)
        .map(|i| (i % 253) as u8)
        .collect();
    c.region_write(BAR0, DATA_BUF, &data).unwrap();
    c.region_write(BAR0, REG_DMA_ADDR, &0x40_0800u64.to_le_bytes())
        .unwrap();
    c.region_write(BAR0, REG_DMA_LEN, &(DATA_BUF_SIZE as u32).to_le_bytes())
        .unwrap();
    c.region_write(BAR0, REG_DOORBELL, &CMD_DMA_TO_CLIENT.to_le_bytes())
        .unwrap();
    let mut got = vec![0u8; data.len()];
    mem.read_at(0x800, &mut got).unwrap();
    assert_eq!(got, data);
}

/// A device with one 4-byte register and no fds of its own.
struct Tiny;

impl uvfio_core::DeviceOps for Tiny {
    fn info(&self) -> uvfio_core::DeviceInfo {
        uvfio_core::DeviceInfo {
            flags: uvfio_core::DeviceFlags::PCI,
            num_regions: 9,
            num_irqs: 5,
        }
    }
    fn region_info(&self, index: u32) -> uvfio_core::Result<uvfio_core::RegionInfo> {
        Ok(if index == CONFIG {
            uvfio_core::RegionInfo::rw(index, 4)
        } else {
            uvfio_core::RegionInfo::absent(index)
        })
    }
    fn read(&self, _index: u32, _offset: u64, buf: &mut [u8]) -> uvfio_core::Result<()> {
        buf.copy_from_slice(&0xcafe_f00du32.to_le_bytes()[..buf.len()]);
        Ok(())
    }
}

#[test]
fn many_devices_and_256_concurrent_clients() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    const N: u32 = 256;
    // Each connection costs a few fds on both sides; make room if the soft
    // limit is low.
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current.is_some_and(|c| c < 4096) {
        lim.current = lim.maximum.map(|m| m.min(4096));
        let _ = setrlimit(Resource::Nofile, lim);
    }
    let f = fixture(|c| c);
    let devs: Vec<_> = (0..N)
        .map(|i| {
            f.registry
                .init(Tiny, &format!("tiny{i}"), GroupId(1000 + i))
                .unwrap()
                .register()
                .unwrap()
        })
        .collect();
    let clients: Vec<Client> = (0..N).map(|i| connect(&f, &format!("tiny{i}"))).collect();
    assert_eq!(f.server.connections(), N as usize);
    std::thread::scope(|s| {
        for chunk in clients.chunks(32) {
            s.spawn(move || {
                for c in chunk {
                    let mut b = [0u8; 4];
                    for _ in 0..10 {
                        c.region_read(CONFIG, 0, &mut b).unwrap();
                        assert_eq!(u32::from_le_bytes(b), 0xcafe_f00d);
                    }
                }
            });
        }
    });
    assert!(devs.iter().all(|d| d.open_count() == 1));
    drop(clients);
    wait_until("all released", || devs.iter().all(|d| d.open_count() == 0));
    for d in devs {
        let _ = d.unregister();
    }
    wait_until("no connections", || f.server.connections() == 0);
}

/// A device whose register 4 takes a while to read.
struct Slow;

impl uvfio_core::DeviceOps for Slow {
    fn info(&self) -> uvfio_core::DeviceInfo {
        uvfio_core::DeviceInfo {
            flags: uvfio_core::DeviceFlags::PCI,
            num_regions: 9,
            num_irqs: 0,
        }
    }
    fn region_info(&self, index: u32) -> uvfio_core::Result<uvfio_core::RegionInfo> {
        Ok(match index {
            BAR0 => uvfio_core::RegionInfo::rw(index, 8),
            _ => uvfio_core::RegionInfo::absent(index),
        })
    }
    fn read(&self, _: u32, offset: u64, buf: &mut [u8]) -> uvfio_core::Result<()> {
        if offset == 4 {
            std::thread::sleep(Duration::from_millis(1500));
        }
        buf.fill(0x5a);
        Ok(())
    }
}

/// A registered [`Slow`] device and a client of it whose calls time out
/// after 200 ms.
fn slow_client(f: &Fixture, config: ClientConfig) -> (RegisteredDevice<Slow>, Client) {
    let dev = f
        .registry
        .init(Slow, "slow", GroupId(7))
        .unwrap()
        .register()
        .unwrap();
    let c = Client::connect_with(
        f.server.socket_path("slow").unwrap(),
        config.timeout(Duration::from_millis(200)),
    )
    .unwrap();
    (dev, c)
}

/// The client waits for replies with no kernel timer; its watchdog still
/// fails a call whose reply is overdue (ETIMEDOUT, within a tick or so of
/// the timeout) and closes the connection, so that the late reply cannot
/// be taken for another request's.
#[test]
fn client_reply_timeout_fails_the_call_and_closes_the_connection() {
    let f = fixture(|c| c);
    let (dev, c) = slow_client(&f, ClientConfig::default());
    let mut b = [0u8; 4];
    c.region_read(BAR0, 0, &mut b).unwrap();
    assert_eq!(b, [0x5a; 4]);
    let t = std::time::Instant::now();
    let e = c.region_read(BAR0, 4, &mut b).unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.errno(), Errno::TIMEDOUT, "{e}");
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_millis(1200), "{took:?}");
    // The connection is gone: later calls fail at once.
    assert!(c.region_read(BAR0, 0, &mut b).is_err());
    drop(c);
    let _ = dev.unregister();
}

/// Polling waits (`Wait::Spin` on both ends, as for a client and server on
/// different CPUs; `Wait::Yield`, as on one shared CPU) carry the same
/// traffic as blocking ones: writes and reads round-trip, a budget that
/// runs out falls back to blocking (the server sits idle longer than it
/// between the client's calls), and the watchdog still fails an overdue
/// call while the client polls.
#[test]
fn polling_waits_carry_traffic_fall_back_to_blocking_and_still_time_out() {
    for wait in [
        uvfio_user::Wait::Spin(Duration::from_micros(200)),
        uvfio_user::Wait::Yield(Duration::from_micros(200)),
    ] {
        let f = fixture(|c| c.wait(wait));
        let dev = register(&f.registry, "dev0", 1);
        let c = Client::connect_with(
            f.server.socket_path("dev0").unwrap(),
            ClientConfig::default().wait(wait),
        )
        .unwrap();
        for i in 0..500u32 {
            c.region_write(BAR0, DATA_BUF, &i.to_le_bytes()).unwrap();
            let mut b = [0u8; 4];
            c.region_read(BAR0, DATA_BUF, &mut b).unwrap();
            assert_eq!(u32::from_le_bytes(b), i, "{wait:?}");
            if i % 100 == 0 {
                // Longer than both budgets: both ends end up blocking.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        drop(c);
        let _ = dev.unregister();

        let (slow, c) = slow_client(&f, ClientConfig::default().wait(wait));
        let mut b = [0u8; 4];
        let e = c.region_read(BAR0, 4, &mut b).unwrap_err();
        assert_eq!(e.errno(), Errno::TIMEDOUT, "{wait:?}: {e}");
        assert!(c.region_read(BAR0, 0, &mut b).is_err());
        drop(c);
        let _ = slow.unregister();
    }
}
