//! Interop with rust-vmm's `vfio_user` 0.1.7 (happy paths only: its client
//! reads a reply's payload by the request's shape and cannot handle error
//! replies).
//!
//! (a) their `Client` drives a device served by our `Server`;
//! (b) our `Client` drives their `Server`.

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;

use common::*;
use uvfio_core::{DmaPerm, SharedMemory};
use uvfio_testkit::RustVmmServer;
use uvfio_user::proto;
use uvfio_user::Client;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_REGION_INFO_FLAG_MMAP,
};

// ---------------------------------------------------------------- (a)

#[test]
fn rust_vmm_client_drives_a_uvfio_device() {
    let Served {
        server,
        dev,
        dir: _dir,
        ..
    } = serve_test_device("dev0");
    let path = server.socket_path("dev0").unwrap();

    // Negotiation, DEVICE_GET_INFO (argsz 32) and every region's info.
    let mut c = vfio_user::Client::new(&path).unwrap();
    // Their `resettable()` is inverted: it is false for a resettable device.
    assert!(!c.resettable());
    let cfg = c.region(CONFIG).unwrap();
    assert_eq!(cfg.size, CONFIG_SIZE);
    let bar2 = c.region(BAR2).unwrap();
    assert_eq!(bar2.size, BAR2_SIZE);
    assert_ne!(bar2.flags & VFIO_REGION_INFO_FLAG_MMAP, 0);
    assert!(
        bar2.file_offset.is_some(),
        "the region fd came with the caps"
    );
    assert_eq!(bar2.sparse_areas.len(), 1);
    assert_eq!(bar2.sparse_areas[0].offset, 0x1000);
    assert_eq!(bar2.sparse_areas[0].size, 0x1000);

    // Config space.
    let mut id = [0u8; 4];
    c.region_read(CONFIG, 0, &mut id).unwrap();
    assert_eq!(u16::from_le_bytes([id[0], id[1]]), VENDOR_ID);
    c.region_write(CONFIG, 0x3c, &[0x0b]).unwrap();
    let mut b = [0u8; 1];
    c.region_read(CONFIG, 0x3c, &mut b).unwrap();
    assert_eq!(b, [0x0b]);

    // IRQ info and an MSI eventfd.
    let msi = c.get_irq_info(MSI).unwrap();
    assert_eq!(msi.count, 1);
    assert_ne!(msi.flags & VFIO_IRQ_INFO_EVENTFD, 0);
    let efd = uvfio_core::irq::eventfd().unwrap();
    c.set_irqs(
        MSI,
        VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        0,
        1,
        &[efd.as_raw_fd()],
    )
    .unwrap();

    // DMA map of a sealed memfd, then device DMA into it.
    let mem = SharedMemory::new("guest", 0x4000).unwrap();
    c.dma_map(0, 0x8000_0000, 0x4000, mem.fd().as_raw_fd())
        .unwrap();
    c.region_write(BAR0, DATA_BUF, b"device wrote this")
        .unwrap();
    c.region_write(BAR0, REG_DMA_ADDR, &0x8000_1000u64.to_le_bytes())
        .unwrap();
    c.region_write(BAR0, REG_DMA_LEN, &17u32.to_le_bytes())
        .unwrap();
    c.region_write(BAR0, REG_DOORBELL, &CMD_DMA_TO_CLIENT.to_le_bytes())
        .unwrap();
    let mut got = [0u8; 17];
    mem.read_at(0x1000, &mut got).unwrap();
    assert_eq!(&got, b"device wrote this");
    assert_eq!(wait_eventfd(&efd), 1);

    c.dma_unmap(0x8000_0000, 0x4000).unwrap();
    c.reset().unwrap();
    assert_eq!(dev.driver().resets.load(Ordering::SeqCst), 1);
    c.shutdown().unwrap();
    drop(c);
    wait_until("device released", || dev.open_count() == 0);
    drop(server);
    let _ = dev.unregister();
}

// ---------------------------------------------------------------- (b)

#[test]
fn uvfio_client_drives_a_rust_vmm_server() {
    // A PCI layout: BAR0 RW, BAR2 mappable with one sparse area, config;
    // MSI-X has 4 vectors.
    let bar2_mem = SharedMemory::new("their-bar2", 0x2000).unwrap();
    let bar2_fd = bar2_mem.fd().try_clone_to_owned().unwrap();
    let layout = RustVmmServer::pci()
        .rw_region(0, 0x1000)
        .mmap_region(2, 0x2000, bar2_fd, &[(0x1000, 0x1000)])
        .rw_region(7, 256)
        .irq_counts([1, 1, 4, 1, 1])
        .resettable();
    let backend = layout.memory_backend();
    let server = layout.spawn(backend);

    let c = Client::connect(server.path()).unwrap();
    assert_eq!(c.negotiated().minor, 0);
    let info = c.device_info().unwrap();
    assert_eq!(info.num_regions, 9);
    assert_eq!(info.num_irqs, 5);
    assert_ne!(info.flags & proto::VFIO_DEVICE_FLAGS_RESET, 0);

    let r0 = c.region_info(0).unwrap();
    assert_eq!(r0.info.size, 0x1000);
    assert!(r0.fd.is_none());
    let r2 = c.region_info(2).unwrap();
    assert_eq!(
        r2.sparse_areas(),
        &[proto::SparseMmapArea {
            offset: 0x1000,
            size: 0x1000
        }]
    );
    let map = r2.map_area(0).unwrap();
    map.write_at(0, b"shared").unwrap();
    let mut b6 = [0u8; 6];
    bar2_mem.read_at(0x1000, &mut b6).unwrap();
    assert_eq!(&b6, b"shared");

    c.region_write(0, 0x10, b"abcdefgh").unwrap();
    let mut b = [0u8; 8];
    c.region_read(0, 0x10, &mut b).unwrap();
    assert_eq!(&b, b"abcdefgh");

    assert_eq!(c.irq_info(2).unwrap().count, 4);

    let mem = SharedMemory::new("guest", 0x2000).unwrap();
    c.dma_map_shared(0x1_0000, &mem, DmaPerm::READ | DmaPerm::WRITE)
        .unwrap();
    let efd = uvfio_core::irq::eventfd().unwrap();
    c.set_irq_eventfds(1, 0, &[efd.as_fd()]).unwrap();
    c.dma_unmap(0x1_0000, 0x2000).unwrap();
    c.reset().unwrap();
    c.shutdown();
    drop(c);

    let backend = server.join().expect("their server");
    let s = backend.seen();
    assert_eq!(s.dma_maps, vec![(0, 0x1_0000, 0x2000, true)]);
    assert_eq!(s.dma_unmaps, vec![(0x1_0000, 0x2000)]);
    assert_eq!(s.set_irqs.len(), 1);
    let (index, flags, start, count, fds) = &s.set_irqs[0];
    assert_eq!(
        (*index, *flags, *start, *count),
        (
            1,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            1
        )
    );
    assert_eq!(fds.len(), 1);
    // The fd they received is our eventfd: signalling it reaches us.
    uvfio_core::irq::signal_eventfd(&fds[0]).unwrap();
    assert_eq!(wait_eventfd(&efd), 1);
    assert_eq!(s.resets, 1);
}
