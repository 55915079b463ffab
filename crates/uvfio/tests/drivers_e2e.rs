//! The sample drivers end to end: a vfio-user client on a real UNIX socket
//! drives each device served by an in-process server.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use uvfio_core::irq::{eventfd, read_eventfd};
use uvfio_core::{DmaPerm, GroupId, Registry, SharedMemory};
use uvfio_drivers::{dma, gpio, mtty};
use uvfio_user::{Client, Server, ServerConfig};

const CONFIG: u32 = 7;
const MSI: u32 = 1;
const MSIX: u32 = 2;

/// Waits for an eventfd to be signalled (the device fires from the
/// server's connection thread, which may lag the reply by a hair).
fn wait_irq(fd: &std::os::fd::OwnedFd) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = read_eventfd(fd).unwrap();
        if n > 0 || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn serve() -> (tempfile::TempDir, Registry, Server) {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::default();
    let server = Server::new(reg.clone(), ServerConfig::new(dir.path().join("s"))).unwrap();
    (dir, reg, server)
}

#[test]
fn mtty_hello_loops_back_with_msi() {
    let (_dir, reg, server) = serve();
    let dev = mtty::create(
        &reg,
        "ser0",
        GroupId(1),
        &mtty::MttyOptions {
            ty: mtty::MttyType::Single,
            pool: mtty::MttyPool::default(),
        },
    )
    .unwrap();
    let c = Client::connect(server.socket_path("ser0").unwrap()).unwrap();
    let irq = eventfd().unwrap();
    c.set_irq_eventfds(MSI, 0, &[irq.as_fd()]).unwrap();
    c.region_write(0, 1, &[0x01]).unwrap(); // IER.RDI
    for b in b"hello" {
        c.region_write(0, 0, &[*b]).unwrap(); // THR
    }
    assert!(wait_irq(&irq) > 0, "received-data interrupt");
    let mut lsr = [0u8];
    c.region_read(0, 5, &mut lsr).unwrap();
    assert_eq!(lsr[0] & 0x01, 0x01, "LSR.DR");
    let mut got = Vec::new();
    for _ in 0..5 {
        let mut b = [0u8];
        c.region_read(0, 0, &mut b).unwrap(); // RBR
        got.push(b[0]);
    }
    assert_eq!(got, b"hello");
    c.region_read(0, 5, &mut lsr).unwrap();
    assert_eq!(lsr[0] & 0x61, 0x60, "empty: THRE|TEMT, no DR");
    c.shutdown();
    drop(c);
    mtty::remove(dev);
    server.shutdown();
}

#[test]
fn gpio_outputs_loop_to_inputs_and_device_inputs_interrupt() {
    let (_dir, reg, server) = serve();
    let dev = gpio::create(
        &reg,
        "io0",
        GroupId(2),
        &gpio::GpioOptions {
            loopback: true,
            initial_inputs: 0,
        },
    )
    .unwrap();
    let c = Client::connect(server.socket_path("io0").unwrap()).unwrap();
    let irq = eventfd().unwrap();
    c.set_irq_eventfds(MSI, 0, &[irq.as_fd()]).unwrap();
    c.region_write(0, 0x08, &0xffffu32.to_le_bytes()).unwrap(); // IRQ_ENABLE
    c.region_write(0, 0x04, &0x00a5u32.to_le_bytes()).unwrap(); // OUTPUT
    assert!(wait_irq(&irq) > 0, "change-of-state interrupt");
    let mut v = [0u8; 4];
    c.region_read(0, 0x00, &mut v).unwrap();
    assert_eq!(u32::from_le_bytes(v), 0x00a5, "INPUT follows OUTPUT");
    c.region_read(0, 0x0c, &mut v).unwrap();
    assert_eq!(
        u32::from_le_bytes(v),
        0x00a5,
        "IRQ_STATUS latched the changed pins"
    );
    c.region_write(0, 0x0c, &0xffffu32.to_le_bytes()).unwrap(); // W1C

    // The device side drives an input: the client sees it and an interrupt.
    dev.driver().function().set_input(12, true).unwrap();
    assert!(wait_irq(&irq) > 0, "interrupt from a device-side input");
    c.region_read(0, 0x00, &mut v).unwrap();
    assert_eq!(u32::from_le_bytes(v), 0x10a5);
    c.shutdown();
    drop(c);
    drop(dev.unregister());
    server.shutdown();
}

#[test]
fn dma_engine_copies_client_memory_and_signals_msix() {
    let (_dir, reg, server) = serve();
    let dev = dma::create(&reg, "dma0", GroupId(3), &dma::DmaOptions::default()).unwrap();
    let c = Client::connect(server.socket_path("dma0").unwrap()).unwrap();
    let mem = SharedMemory::new("e2e-dma", 1 << 16).unwrap();
    mem.write_at(0x100, b"copied by the device").unwrap();
    c.dma_map_shared(0x10_0000, &mem, DmaPerm::READ | DmaPerm::WRITE)
        .unwrap();
    let irq = eventfd().unwrap();
    c.set_irq_eventfds(MSIX, 0, &[irq.as_fd()]).unwrap();
    // Bus master on, so the device may DMA.
    let mut cmd = [0u8; 2];
    c.region_read(CONFIG, 4, &mut cmd).unwrap();
    let cmd = u16::from_le_bytes(cmd) | 0x6;
    c.region_write(CONFIG, 4, &cmd.to_le_bytes()).unwrap();
    let w = |off: u64, v: u32| c.region_write(0, off, &v.to_le_bytes()).unwrap();
    w(0x08, 0x10_0100); // SRC_LO
    w(0x0c, 0);
    w(0x10, 0x10_8000); // DST_LO
    w(0x14, 0);
    w(0x18, 20); // LEN
    w(0x1c, 0); // FLAGS: IOVA to IOVA
    w(0x20, 1); // DOORBELL
    assert!(wait_irq(&irq) > 0, "MSI-X completion");
    let mut st = [0u8; 4];
    c.region_read(0, 0x24, &mut st).unwrap();
    assert_eq!(u32::from_le_bytes(st) & 0x6, 0x2, "DONE, no ERROR");
    let mut out = [0u8; 20];
    mem.read_at(0x8000, &mut out).unwrap();
    assert_eq!(&out, b"copied by the device");
    c.dma_unmap(0x10_0000, 1 << 16).unwrap();
    c.shutdown();
    drop(c);
    drop(dev.unregister());
    server.shutdown();
}

/// The vfio-user spec: when the client goes, the server drops its DMA
/// mappings and eventfds but keeps device state for a reconnect. The
/// client that comes back finds the config space (command register, BAR
/// address, MSI enable) and the registers as it left them.
#[test]
fn a_reconnecting_client_finds_the_device_as_it_left_it() {
    let (_dir, reg, server) = serve();
    let dev = gpio::create(&reg, "io1", GroupId(4), &gpio::GpioOptions::default()).unwrap();
    let path = server.socket_path("io1").unwrap();
    let read32 = |c: &Client, region: u32, off: u64| {
        let mut v = [0u8; 4];
        c.region_read(region, off, &mut v).unwrap();
        u32::from_le_bytes(v)
    };
    let c = Client::connect(&path).unwrap();
    let irq = eventfd().unwrap();
    c.set_irq_eventfds(MSI, 0, &[irq.as_fd()]).unwrap();
    c.region_write(CONFIG, 0x10, &0xfe00_0000u32.to_le_bytes())
        .unwrap(); // BAR0
    c.region_write(CONFIG, 0x04, &0x0006u16.to_le_bytes())
        .unwrap(); // MEM | BUS_MASTER
    c.region_write(0, 0x04, &0x0042u32.to_le_bytes()).unwrap(); // OUTPUT
    let before = (
        read32(&c, CONFIG, 0x04) & 0xffff,
        read32(&c, CONFIG, 0x10),
        read32(&c, 0, 0x04),
    );
    assert_eq!(before.0 & 0x6, 0x6);
    c.shutdown();
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(10);
    while dev.open_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(dev.open_count(), 0, "the server released the device");

    let c = Client::connect(&path).unwrap();
    let after = (
        read32(&c, CONFIG, 0x04) & 0xffff,
        read32(&c, CONFIG, 0x10),
        read32(&c, 0, 0x04),
    );
    assert_eq!(after, before);
    c.shutdown();
    drop(c);
    drop(dev.unregister());
    server.shutdown();
}
