//! `PciDevice` through the in-process uAPI: regions, IRQ indexes,
//! interrupt delivery, masking and bus-master gating.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use uvfio_core::irq::{eventfd, read_eventfd};
use uvfio_core::{
    Container, DeviceFlags, DmaPerm, Errno, GroupId, IommuType, IrqAction, IrqData, IrqFlags,
    OpenDevice, RegionFlags, RegisteredDevice, Registry, SetIrqs, SharedMemory, SparseArea,
};

use crate::index::*;
use crate::regs::*;
use crate::*;

#[derive(Default)]
struct Recorder {
    accesses: Mutex<Vec<(u8, u64, usize, bool)>>,
    resets: AtomicU32,
}

impl PciFunction for Recorder {
    fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]) -> uvfio_core::Result<()> {
        self.accesses
            .lock()
            .unwrap()
            .push((bar, offset, data.len(), false));
        data.fill(0xab);
        Ok(())
    }
    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) -> uvfio_core::Result<()> {
        self.accesses
            .lock()
            .unwrap()
            .push((bar, offset, data.len(), true));
        Ok(())
    }
    fn supports_reset(&self) -> bool {
        true
    }
    fn reset(&self) -> uvfio_core::Result<()> {
        self.resets.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Rig {
    handle: OpenDevice,
    pci: PciHandle,
    dev: Option<RegisteredDevice<PciDevice<Recorder>>>,
}

impl Rig {
    fn new(config: PciConfig) -> Rig {
        let dev = PciDevice::new(config, |_| Recorder::default()).unwrap();
        let pci = dev.handle();
        let registry = Registry::default();
        let dev = registry
            .init(dev, "pci0", GroupId(3))
            .unwrap()
            .register()
            .unwrap();
        let handle = registry.open_device(GroupId(3), "pci0").unwrap();
        Rig {
            handle,
            pci,
            dev: Some(dev),
        }
    }

    fn function(&self) -> &Recorder {
        self.dev.as_ref().unwrap().driver().function()
    }

    fn cfg_read16(&self, off: u16) -> u16 {
        let mut b = [0u8; 2];
        self.handle
            .read(VFIO_PCI_CONFIG_REGION_INDEX, u64::from(off), &mut b)
            .unwrap();
        u16::from_le_bytes(b)
    }

    fn cfg_write16(&self, off: u16, v: u16) {
        self.handle
            .write(
                VFIO_PCI_CONFIG_REGION_INDEX,
                u64::from(off),
                &v.to_le_bytes(),
            )
            .unwrap();
    }

    fn cfg_write32(&self, off: u16, v: u32) {
        self.handle
            .write(
                VFIO_PCI_CONFIG_REGION_INDEX,
                u64::from(off),
                &v.to_le_bytes(),
            )
            .unwrap();
    }

    fn bind(&self, index: u32, n: u32) -> Vec<OwnedFd> {
        let (req, mine) = SetIrqs::bind_new_eventfds(index, 0, n).unwrap();
        self.handle.set_irqs(req).unwrap();
        mine
    }

    fn cap(&self, id: u8) -> u16 {
        self.pci.with_config(|c| c.capability_offset(id)).unwrap()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(dev) = self.dev.take() {
            // The handle is released when the rig's fields drop; unregister
            // would wait for it, so only detach here.
            std::mem::forget(dev);
        }
    }
}

const MSIX_TABLE: u64 = 0x1000;

fn test_config() -> PciConfig {
    let mut cfg = PciConfig {
        header: PciHeader {
            vendor_id: 0x1234,
            device_id: 0xabcd,
            interrupt_pin: 1,
            ..Default::default()
        },
        capabilities: vec![
            Capability::PowerManagement(PmCap::default()),
            Capability::Msi(MsiCap {
                vectors: 4,
                addr64: true,
                per_vector_mask: true,
            }),
            Capability::Msix(MsixCap {
                table_size: 8,
                table_bar: 0,
                table_offset: MSIX_TABLE as u32,
                pba_bar: 0,
                pba_offset: 0x1800,
            }),
            Capability::PciExpress(PcieCap {
                flr: true,
                ..Default::default()
            }),
        ],
        rom: Some(Rom {
            size: 4096,
            data: vec![0x55, 0xaa],
        }),
        ..Default::default()
    };
    cfg.bars[0] = Some(Bar::mem32(8192));
    cfg.bars[1] = Some(Bar::io(16));
    cfg
}

fn conventional_config() -> PciConfig {
    let mut cfg = test_config();
    cfg.capabilities
        .retain(|c| !matches!(c, Capability::PciExpress(_)));
    cfg
}

#[test]
fn info_pci_flags_9_regions_5_irqs() {
    let rig = Rig::new(test_config());
    let info = rig.handle.info();
    assert_eq!(info.flags, DeviceFlags::PCI | DeviceFlags::RESET);
    assert_eq!(info.num_regions, 9);
    assert_eq!(info.num_irqs, 5);
}

#[test]
fn region_info_reports_bars_rom_config_and_absent_vga() {
    let rig = Rig::new(test_config());
    let h = &rig.handle;
    assert_eq!(h.region_info(0).unwrap().size, 8192);
    assert_eq!(h.region_info(1).unwrap().size, 16);
    assert_eq!(h.region_info(2).unwrap().size, 0);
    let rom = h.region_info(VFIO_PCI_ROM_REGION_INDEX).unwrap();
    assert_eq!((rom.flags, rom.size), (RegionFlags::READ, 4096));
    assert_eq!(
        h.region_info(VFIO_PCI_CONFIG_REGION_INDEX).unwrap().size,
        4096
    );
    let vga = h.region_info(VFIO_PCI_VGA_REGION_INDEX).unwrap();
    assert_eq!((vga.flags, vga.size), (RegionFlags::empty(), 0));
}

#[test]
fn ram_bar_is_mmappable_with_msix_pages_excluded() {
    let shm = Arc::new(SharedMemory::new("bar", 32768).unwrap());
    let mut cfg = conventional_config();
    cfg.bars[0] = Some(Bar::mem32(32768).with_memory(shm.clone()));
    cfg.capabilities = vec![Capability::Msix(MsixCap {
        table_size: 4,
        table_bar: 0,
        table_offset: 0x2000,
        pba_bar: 0,
        pba_offset: 0x3000,
    })];
    let rig = Rig::new(cfg);
    let r = rig.handle.region_info(0).unwrap();
    assert!(r.flags.contains(RegionFlags::MMAP));
    assert!(r.mmap.is_some());
    assert_eq!(
        r.sparse_areas().unwrap(),
        &[
            SparseArea {
                offset: 0,
                size: 0x2000
            },
            SparseArea {
                offset: 0x4000,
                size: 0x4000
            }
        ]
    );
    rig.handle.write(0, 0x10, b"abcd").unwrap();
    let mut b = [0u8; 4];
    shm.read_at(0x10, &mut b).unwrap();
    assert_eq!(&b, b"abcd");
    rig.handle.read(0, 0x2000 + 12, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 1, "table entry reads masked");
}

#[test]
fn irq_info_counts_follow_vfio_pci_rules() {
    let rig = Rig::new(test_config());
    let h = &rig.handle;
    let intx = h.irq_info(VFIO_PCI_INTX_IRQ_INDEX).unwrap();
    assert_eq!(intx.count, 1);
    assert_eq!(
        intx.flags,
        IrqFlags::EVENTFD | IrqFlags::MASKABLE | IrqFlags::AUTOMASKED
    );
    let msi = h.irq_info(VFIO_PCI_MSI_IRQ_INDEX).unwrap();
    assert_eq!(
        (msi.count, msi.flags),
        (4, IrqFlags::EVENTFD | IrqFlags::NORESIZE)
    );
    assert_eq!(h.irq_info(VFIO_PCI_MSIX_IRQ_INDEX).unwrap().count, 8);
    assert_eq!(h.irq_info(VFIO_PCI_ERR_IRQ_INDEX).unwrap().count, 1);
    assert_eq!(h.irq_info(VFIO_PCI_REQ_IRQ_INDEX).unwrap().count, 1);
}

#[test]
fn irq_info_err_on_conventional_pci_is_einval() {
    let rig = Rig::new(conventional_config());
    assert_eq!(
        rig.handle.irq_info(VFIO_PCI_ERR_IRQ_INDEX).unwrap_err(),
        Errno::INVAL
    );
}

#[test]
fn bar_access_is_split_into_aligned_pieces() {
    let rig = Rig::new(test_config());
    rig.handle.write(1, 1, &[0; 7]).unwrap();
    let mut b = [0u8; 6];
    rig.handle.read(0, 0x22, &mut b).unwrap();
    assert_eq!(b, [0xab; 6]);
    assert_eq!(
        *rig.function().accesses.lock().unwrap(),
        vec![
            (1, 1, 1, true),
            (1, 2, 2, true),
            (1, 4, 4, true),
            (0, 0x22, 2, false),
            (0, 0x24, 4, false)
        ]
    );
}

#[test]
fn bar_access_with_decode_disabled_is_eio() {
    let rig = Rig::new(test_config());
    rig.cfg_write16(PCI_COMMAND, Command::IO.bits());
    let mut b = [0u8; 4];
    assert_eq!(rig.handle.read(0, 0, &mut b).unwrap_err(), Errno::IO);
    rig.handle.read(1, 0, &mut b).unwrap();
    rig.cfg_write16(PCI_COMMAND, 0);
    assert_eq!(rig.handle.write(1, 0, &b).unwrap_err(), Errno::IO);
}

#[test]
fn config_region_read_of_whole_space_returns_the_bytes() {
    let rig = Rig::new(test_config());
    let mut all = vec![0u8; 4096];
    rig.handle
        .read(VFIO_PCI_CONFIG_REGION_INDEX, 0, &mut all)
        .unwrap();
    assert_eq!(&all[..4], &[0x34, 0x12, 0xcd, 0xab]);
    let snapshot = rig.pci.with_config(|c| c.as_bytes().to_vec());
    assert_eq!(all, snapshot);
    assert_eq!(walk_capabilities(&all).ids(), vec![1, 5, 0x11, 0x10]);
}

#[test]
fn rom_region_reads_image_then_erased_bytes() {
    let rig = Rig::new(test_config());
    let mut b = [0u8; 4];
    rig.handle
        .read(VFIO_PCI_ROM_REGION_INDEX, 0, &mut b)
        .unwrap();
    assert_eq!(b, [0x55, 0xaa, 0xff, 0xff]);
    assert!(rig.handle.write(VFIO_PCI_ROM_REGION_INDEX, 0, &b).is_err());
}

#[test]
fn intx_raise_signals_eventfd_sets_status_and_automasks() {
    let rig = Rig::new(test_config());
    let fds = rig.bind(VFIO_PCI_INTX_IRQ_INDEX, 1);
    assert_eq!(rig.pci.raise(0).unwrap(), Delivery::Signalled);
    assert_eq!(read_eventfd(&fds[0]).unwrap(), 1);
    assert!(rig.cfg_read16(PCI_STATUS) & Status::INTERRUPT.bits() != 0);
    assert_eq!(rig.pci.raise(0).unwrap(), Delivery::NotSignalled);
    rig.pci.lower_intx();
    assert_eq!(rig.cfg_read16(PCI_STATUS) & Status::INTERRUPT.bits(), 0);
}

#[test]
fn intx_disable_latches_interrupt_until_cleared() {
    let rig = Rig::new(test_config());
    let fds = rig.bind(VFIO_PCI_INTX_IRQ_INDEX, 1);
    let cmd = rig.cfg_read16(PCI_COMMAND);
    rig.cfg_write16(PCI_COMMAND, cmd | Command::INTX_DISABLE.bits());
    assert_eq!(rig.pci.raise(0).unwrap(), Delivery::Latched);
    assert_eq!(read_eventfd(&fds[0]).unwrap(), 0);
    assert!(rig.cfg_read16(PCI_STATUS) & Status::INTERRUPT.bits() != 0);
    rig.cfg_write16(PCI_COMMAND, cmd);
    assert_eq!(read_eventfd(&fds[0]).unwrap(), 1);
}

#[test]
fn msi_mask_bit_latches_pending_and_unmask_delivers() {
    let rig = Rig::new(test_config());
    let fds = rig.bind(VFIO_PCI_MSI_IRQ_INDEX, 4);
    let msi = rig.cap(PCI_CAP_ID_MSI);
    rig.cfg_write16(msi + PCI_MSI_FLAGS, PCI_MSI_FLAGS_ENABLE | (2 << 4));
    rig.cfg_write32(msi + PCI_MSI_MASK_64, 1 << 2);
    assert_eq!(rig.pci.raise(2).unwrap(), Delivery::Latched);
    assert!(rig.pci.with_config(|c| c.msi_pending(2)));
    assert_eq!(read_eventfd(&fds[2]).unwrap(), 0);
    rig.cfg_write32(msi + PCI_MSI_MASK_64, 0);
    assert_eq!(read_eventfd(&fds[2]).unwrap(), 1);
    assert!(!rig.pci.with_config(|c| c.msi_pending(2)));
    assert_eq!(rig.pci.raise(1).unwrap(), Delivery::Signalled);
    assert_eq!(read_eventfd(&fds[1]).unwrap(), 1);
}

#[test]
fn msi_vector_past_count_is_vector_invalid() {
    let rig = Rig::new(test_config());
    let _fds = rig.bind(VFIO_PCI_MSI_IRQ_INDEX, 4);
    assert_eq!(
        rig.pci.raise(4).unwrap_err(),
        PciError::VectorInvalid {
            index: VFIO_PCI_MSI_IRQ_INDEX,
            vector: 4
        }
    );
}

#[test]
fn msix_entry_masked_by_default_latches_pba_and_unmask_delivers() {
    let rig = Rig::new(test_config());
    let fds = rig.bind(VFIO_PCI_MSIX_IRQ_INDEX, 8);
    let msix = rig.cap(PCI_CAP_ID_MSIX);
    rig.cfg_write16(msix + PCI_MSIX_FLAGS, PCI_MSIX_FLAGS_ENABLE);
    assert_eq!(rig.pci.raise(3).unwrap(), Delivery::Latched);
    let mut pba = [0u8; 8];
    rig.handle.read(0, 0x1800, &mut pba).unwrap();
    assert_eq!(u64::from_le_bytes(pba), 1 << 3);
    rig.handle
        .write(0, MSIX_TABLE + 3 * 16 + 12, &0u32.to_le_bytes())
        .unwrap();
    assert_eq!(read_eventfd(&fds[3]).unwrap(), 1);
    rig.handle.read(0, 0x1800, &mut pba).unwrap();
    assert_eq!(u64::from_le_bytes(pba), 0);
    assert_eq!(rig.pci.raise(3).unwrap(), Delivery::Signalled);
}

#[test]
fn msix_function_mask_latches_and_clearing_delivers() {
    let rig = Rig::new(test_config());
    let fds = rig.bind(VFIO_PCI_MSIX_IRQ_INDEX, 8);
    let msix = rig.cap(PCI_CAP_ID_MSIX);
    rig.handle
        .write(0, MSIX_TABLE + 12, &0u32.to_le_bytes())
        .unwrap();
    rig.cfg_write16(
        msix + PCI_MSIX_FLAGS,
        PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL,
    );
    assert_eq!(rig.pci.raise(0).unwrap(), Delivery::Latched);
    assert_eq!(read_eventfd(&fds[0]).unwrap(), 0);
    rig.cfg_write16(msix + PCI_MSIX_FLAGS, PCI_MSIX_FLAGS_ENABLE);
    assert_eq!(read_eventfd(&fds[0]).unwrap(), 1);
}

#[test]
fn msix_table_message_written_through_bar_reads_back() {
    let rig = Rig::new(test_config());
    rig.handle
        .write(0, MSIX_TABLE + 16, &0xfee0_0000u32.to_le_bytes())
        .unwrap();
    rig.handle
        .write(0, MSIX_TABLE + 24, &0x41u32.to_le_bytes())
        .unwrap();
    let msg = rig.pci.with_msix(|t| t.message(1)).unwrap();
    assert_eq!(msg, Some((0xfee0_0000, 0x41)));
    assert!(rig.function().accesses.lock().unwrap().is_empty());
}

#[test]
fn msix_bound_only_through_set_irqs_delivers_directly() {
    let rig = Rig::new(test_config());
    let fds = rig.bind(VFIO_PCI_MSIX_IRQ_INDEX, 8);
    assert_eq!(rig.pci.raise(5).unwrap(), Delivery::Signalled);
    assert_eq!(read_eventfd(&fds[5]).unwrap(), 1);
}

#[test]
fn intx_and_msi_eventfds_are_exclusive() {
    let rig = Rig::new(test_config());
    let _fds = rig.bind(VFIO_PCI_INTX_IRQ_INDEX, 1);
    let r = rig.handle.set_irqs(SetIrqs {
        index: VFIO_PCI_MSI_IRQ_INDEX,
        start: 0,
        count: 1,
        action: IrqAction::Trigger,
        data: IrqData::Eventfd(vec![Some(eventfd().unwrap())]),
    });
    assert_eq!(r.unwrap_err(), Errno::INVAL);
}

#[test]
fn dma_without_bus_master_fails_then_succeeds() {
    let rig = Rig::new(test_config());
    let shm = Arc::new(SharedMemory::new("dma", 4096).unwrap());
    rig.handle
        .container()
        .map_dma(
            0x10000,
            4096,
            DmaPerm::READ | DmaPerm::WRITE,
            shm.clone(),
            0,
        )
        .unwrap();
    assert!(!rig.pci.bus_master_enabled());
    assert_eq!(
        rig.pci.dma_write(0x10000, b"hi").unwrap_err(),
        PciError::BusMasterDisabled
    );
    let cmd = rig.cfg_read16(PCI_COMMAND);
    rig.cfg_write16(PCI_COMMAND, cmd | Command::MASTER.bits());
    rig.pci.dma_write(0x10010, b"hi").unwrap();
    let mut b = [0u8; 2];
    shm.read_at(0x10, &mut b).unwrap();
    assert_eq!(&b, b"hi");
    assert!(matches!(
        rig.pci.dma_read(0x20000, &mut b).unwrap_err(),
        PciError::Dma { iova: 0x20000, .. }
    ));
}

#[test]
fn request_signals_req_eventfd() {
    let rig = Rig::new(test_config());
    let fds = rig.bind(VFIO_PCI_REQ_IRQ_INDEX, 1);
    uvfio_core::DeviceOps::request(rig.dev.as_ref().unwrap().driver(), 0);
    assert_eq!(read_eventfd(&fds[0]).unwrap(), 1);
}

#[test]
fn signal_error_fires_err_eventfd_on_pcie() {
    let rig = Rig::new(test_config());
    let fds = rig.bind(VFIO_PCI_ERR_IRQ_INDEX, 1);
    assert_eq!(rig.pci.signal_error().unwrap(), Delivery::Signalled);
    assert_eq!(read_eventfd(&fds[0]).unwrap(), 1);
}

#[test]
fn flr_resets_config_and_function() {
    let rig = Rig::new(test_config());
    let exp = rig.cap(PCI_CAP_ID_EXP);
    rig.cfg_write16(PCI_COMMAND, 0x0007);
    rig.cfg_write16(exp + PCI_EXP_DEVCTL, 0x2810 | PCI_EXP_DEVCTL_BCR_FLR);
    assert_eq!(rig.function().resets.load(Ordering::SeqCst), 1);
    assert_eq!(rig.cfg_read16(PCI_COMMAND), 0x0003);
    assert_eq!(
        rig.cfg_read16(exp + PCI_EXP_DEVCTL) & PCI_EXP_DEVCTL_BCR_FLR,
        0
    );
}

#[test]
fn device_reset_calls_function_reset() {
    let rig = Rig::new(test_config());
    rig.handle.reset().unwrap();
    assert_eq!(rig.function().resets.load(Ordering::SeqCst), 1);
}

#[test]
fn quirks_change_config_size_and_absent_irq_errors() {
    let mut cfg = conventional_config();
    cfg.capabilities.clear();
    cfg.irqs = Some(PciIrqs {
        intx: true,
        msi: 1,
        ..Default::default()
    });
    cfg.quirks = PciQuirks {
        config_region_size: Some(0xff),
        absent_regions_rw: true,
        absent_irqs_einval: true,
    };
    let rig = Rig::new(cfg);
    let h = &rig.handle;
    assert_eq!(
        h.region_info(VFIO_PCI_CONFIG_REGION_INDEX).unwrap().size,
        0xff
    );
    assert_eq!(
        h.region_info(4).unwrap().flags,
        RegionFlags::READ | RegionFlags::WRITE
    );
    assert_eq!(h.irq_info(VFIO_PCI_MSI_IRQ_INDEX).unwrap().count, 1);
    assert_eq!(
        h.irq_info(VFIO_PCI_MSIX_IRQ_INDEX).unwrap_err(),
        Errno::INVAL
    );
    let r = h.set_irqs(SetIrqs {
        index: VFIO_PCI_REQ_IRQ_INDEX,
        start: 0,
        count: 1,
        action: IrqAction::Trigger,
        data: IrqData::None,
    });
    assert_eq!(r.unwrap_err(), Errno::NOTTY);
    let fds = rig.bind(VFIO_PCI_MSI_IRQ_INDEX, 1);
    assert_eq!(rig.pci.raise(0).unwrap(), Delivery::Signalled);
    assert_eq!(read_eventfd(&fds[0]).unwrap(), 1);
}

#[test]
/// A release (the kernel's last close) gives the next user a reset
/// function; a vfio-user disconnect (`keep_state`) keeps the config space
/// for the client's reconnect.
fn close_resets_config_but_a_disconnect_keeps_it() {
    let dev = PciDevice::new(test_config(), |_| Recorder::default()).unwrap();
    let registry = Registry::default();
    let dev = registry
        .init(dev, "pci0", GroupId(5))
        .unwrap()
        .register()
        .unwrap();
    let container = Container::new();
    let group = registry.open_group(GroupId(5)).unwrap();
    group.set_container(&container).unwrap();
    container.set_iommu(IommuType::Type1v2).unwrap();
    let client = || {
        group
            .get_device_with(
                "pci0",
                uvfio_core::OpenOptions {
                    keep_state: true,
                    ..Default::default()
                },
            )
            .unwrap()
    };
    let read16 = |h: &uvfio_core::DeviceHandle, off: u64| {
        let mut b = [0u8; 2];
        h.read(VFIO_PCI_CONFIG_REGION_INDEX, off, &mut b).unwrap();
        u16::from_le_bytes(b)
    };
    let read32 = |h: &uvfio_core::DeviceHandle, off: u64| {
        let mut b = [0u8; 4];
        h.read(VFIO_PCI_CONFIG_REGION_INDEX, off, &mut b).unwrap();
        u32::from_le_bytes(b)
    };
    let h = client();
    h.write(VFIO_PCI_CONFIG_REGION_INDEX, 4, &7u16.to_le_bytes())
        .unwrap();
    h.write(
        VFIO_PCI_CONFIG_REGION_INDEX,
        0x10,
        &0xfebf_0000u32.to_le_bytes(),
    )
    .unwrap();
    let (command, bar0) = (read16(&h, 4), read32(&h, 0x10));
    assert_ne!(command, 0x0003, "the write took effect");
    drop(h);
    // The vfio-user client reconnects: the device is as it left it.
    let h = client();
    assert_eq!(read16(&h, 4), command);
    assert_eq!(read32(&h, 0x10), bar0);
    drop(h);
    // A plain release (the kernel's last close) resets it.
    let h = group.get_device("pci0").unwrap();
    drop(h);
    let h = group.get_device("pci0").unwrap();
    assert_eq!(read16(&h, 4), 0x0003);
    // BAR addresses survive even a reset (vfio-pci keeps them virtual).
    assert_eq!(read32(&h, 0x10), bar0);
    drop(h);
    let _ = dev.unregister();
}
