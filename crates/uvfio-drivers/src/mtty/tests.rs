//! mtty through the in-process uAPI.

use uvfio_core::irq::read_eventfd;
use uvfio_core::{
    DeviceFlags, Errno, GroupId, IrqAction, IrqData, IrqFlags, RegionFlags, Registry, SetIrqs,
};
use uvfio_pci::index::*;

use super::uart::*;
use super::*;
use crate::testutil::User;

fn make(ty: MttyType) -> (Registry, MttyPool, MttyDevice, User) {
    let registry = Registry::default();
    let pool = MttyPool::default();
    let dev = create(
        &registry,
        "mtty0",
        GroupId(9),
        &MttyOptions {
            ty,
            pool: pool.clone(),
        },
    )
    .unwrap();
    let user = User::open(&registry, GroupId(9), "mtty0");
    (registry, pool, dev, user)
}

#[test]
fn config_ids_class_and_vendor_text_match_sample() {
    let (_r, _p, _d, u) = make(MttyType::Single);
    assert_eq!(u.cfg_read32(0), 0x3253_4348);
    assert_eq!(u.cfg_read32(4), 0x0200_0001);
    assert_eq!(u.cfg_read32(8), 0x0700_0210);
    assert_eq!(u.cfg_read32(0x2c), 0x3253_4348);
    assert_eq!(u.cfg_read32(0x3c) >> 8 & 0xff, 1);
    assert_eq!(u.cfg_read32(0x40), 0x8000_0023);
    let mut text = [0u8; 15];
    u.handle
        .read(VFIO_PCI_CONFIG_REGION_INDEX, 0x60, &mut text)
        .unwrap();
    assert_eq!(&text, b"PCI Serial/UART");
}

#[test]
fn bar0_all_ones_reads_io_size_mask() {
    let (_r, _p, _d, u) = make(MttyType::Single);
    u.cfg_write32(0x10, u32::MAX);
    assert_eq!(u.cfg_read32(0x10), 0xffff_fff9);
    u.cfg_write32(0x10, 0x1234);
    assert_eq!(u.cfg_read32(0x10), 0x1235);
}

#[test]
fn bar1_single_port_stays_zero_dual_port_sizes() {
    let (_r, _p, _d, u) = make(MttyType::Single);
    u.cfg_write32(0x14, u32::MAX);
    assert_eq!(u.cfg_read32(0x14), 0);
    let (_r2, _p2, _d2, u2) = make(MttyType::Dual);
    u2.cfg_write32(0x14, u32::MAX);
    assert_eq!(u2.cfg_read32(0x14), 0xffff_fff9);
}

#[test]
fn command_and_other_writes_dropped_interrupt_line_stored() {
    let (_r, _p, _d, u) = make(MttyType::Single);
    u.cfg_write16(4, 0x0407);
    u.cfg_write32(0x0c, 0xffff_ffff);
    u.cfg_write32(0x3c, 0xffff_ff0b);
    assert_eq!(u.cfg_read16(4), 0x0001);
    assert_eq!(u.cfg_read32(0x0c), 0);
    assert_eq!(u.cfg_read32(0x3c), 0x0000_010b);
}

#[test]
fn device_info_regions_and_irq_info_match_sample() {
    let (_r, _p, _d, u) = make(MttyType::Single);
    let h = &u.handle;
    let info = h.info();
    assert_eq!(info.flags, DeviceFlags::PCI);
    assert_eq!((info.num_regions, info.num_irqs), (9, 5));
    assert_eq!(
        h.region_info(VFIO_PCI_CONFIG_REGION_INDEX).unwrap().size,
        0xff
    );
    let bar0 = h.region_info(0).unwrap();
    assert_eq!(
        (bar0.size, bar0.flags),
        (8, RegionFlags::READ | RegionFlags::WRITE)
    );
    let bar1 = h.region_info(1).unwrap();
    assert_eq!(
        (bar1.size, bar1.flags),
        (0, RegionFlags::READ | RegionFlags::WRITE)
    );
    let intx = h.irq_info(VFIO_PCI_INTX_IRQ_INDEX).unwrap();
    assert_eq!(
        (intx.count, intx.flags),
        (
            1,
            IrqFlags::EVENTFD | IrqFlags::MASKABLE | IrqFlags::AUTOMASKED
        )
    );
    let msi = h.irq_info(VFIO_PCI_MSI_IRQ_INDEX).unwrap();
    assert_eq!(
        (msi.count, msi.flags),
        (1, IrqFlags::EVENTFD | IrqFlags::NORESIZE)
    );
    assert_eq!(
        h.irq_info(VFIO_PCI_MSIX_IRQ_INDEX).unwrap_err(),
        Errno::INVAL
    );
    assert_eq!(
        h.irq_info(VFIO_PCI_REQ_IRQ_INDEX).unwrap_err(),
        Errno::INVAL
    );
    let r = h.set_irqs(SetIrqs {
        index: VFIO_PCI_MSIX_IRQ_INDEX,
        start: 0,
        count: 1,
        action: IrqAction::Trigger,
        data: IrqData::None,
    });
    assert_eq!(r.unwrap_err(), Errno::NOTTY);
}

#[test]
fn hello_written_to_tx_reads_back_from_rx_with_msi() {
    let (_r, _p, _d, u) = make(MttyType::Single);
    let msi = u.bind(VFIO_PCI_MSI_IRQ_INDEX, 1);
    u.write8(0, u64::from(UART_IER), UART_IER_RDI);
    for b in b"hello" {
        u.write8(0, u64::from(UART_TX), *b);
    }
    assert_eq!(
        read_eventfd(&msi[0]).unwrap(),
        1,
        "fires at trigger level 1"
    );
    assert_eq!(u.read8(0, u64::from(UART_LSR)) & UART_LSR_DR, UART_LSR_DR);
    let got: Vec<u8> = (0..5).map(|_| u.read8(0, u64::from(UART_RX))).collect();
    assert_eq!(got, b"hello");
    assert_eq!(
        u.read8(0, u64::from(UART_LSR)),
        UART_LSR_THRE | UART_LSR_TEMT
    );
}

#[test]
fn intx_fires_then_automasks_until_unmask() {
    let (_r, _p, d, u) = make(MttyType::Single);
    let intx = u.bind(VFIO_PCI_INTX_IRQ_INDEX, 1);
    u.write8(0, u64::from(UART_IER), UART_IER_RDI | UART_IER_THRI);
    assert_eq!(read_eventfd(&intx[0]).unwrap(), 1, "THRI on empty FIFO");
    u.write8(0, u64::from(UART_TX), b'x');
    assert_eq!(read_eventfd(&intx[0]).unwrap(), 0, "masked");
    u.unmask(VFIO_PCI_INTX_IRQ_INDEX);
    assert_eq!(read_eventfd(&intx[0]).unwrap(), 1, "pending delivered");
    assert_eq!(
        u.cfg_read16(6),
        0x0200,
        "status untouched, as in the sample"
    );
    assert_eq!(d.driver().function().port(0).unwrap().fifo_len(), 1);
}

#[test]
fn intx_and_msi_are_exclusive() {
    let (_r, _p, _d, u) = make(MttyType::Single);
    let _intx = u.bind(VFIO_PCI_INTX_IRQ_INDEX, 1);
    let r = u.handle.set_irqs(SetIrqs {
        index: VFIO_PCI_MSI_IRQ_INDEX,
        start: 0,
        count: 1,
        action: IrqAction::Trigger,
        data: IrqData::Eventfd(vec![Some(uvfio_core::irq::eventfd().unwrap())]),
    });
    assert_eq!(r.unwrap_err(), Errno::INVAL);
}

#[test]
fn dual_port_ports_are_independent() {
    let (_r, _p, d, u) = make(MttyType::Dual);
    u.write8(1, u64::from(UART_TX), b'b');
    u.write8(1, u64::from(UART_SCR), 0x42);
    assert_eq!(u.read8(0, u64::from(UART_LSR)) & UART_LSR_DR, 0);
    assert_eq!(u.read8(0, u64::from(UART_SCR)), 0);
    assert_eq!(u.read8(1, u64::from(UART_RX)), b'b');
    assert_eq!(d.driver().function().nr_ports(), 2);
}

#[test]
fn four_byte_access_uses_byte_zero_only() {
    let (_r, _p, _d, u) = make(MttyType::Single);
    u.write32(0, 0, 0x4443_4241);
    assert_eq!(u.read32(0, 0), 0x41);
    assert_eq!(u.read8(0, u64::from(UART_LSR)) & UART_LSR_DR, 0);
}

#[test]
fn pool_exhausted_past_24_ports_and_remove_returns_ports() {
    let registry = Registry::default();
    let pool = MttyPool::default();
    let opts = MttyOptions {
        ty: MttyType::Dual,
        pool: pool.clone(),
    };
    let mut devs: Vec<MttyDevice> = (0..12)
        .map(|i| create(&registry, &format!("m{i}"), GroupId(i), &opts).unwrap())
        .collect();
    assert_eq!(pool.available_instances(MttyType::Dual), 0);
    let err = create(&registry, "m12", GroupId(12), &opts).unwrap_err();
    assert!(matches!(
        err,
        DriverError::PoolExhausted {
            requested: 2,
            available: 0
        }
    ));
    assert_eq!(Errno::from(&err), Errno::NOSPC);
    remove(devs.pop().unwrap());
    assert_eq!(pool.available_instances(MttyType::Dual), 1);
    assert_eq!(pool.available_instances(MttyType::Single), 2);
    for d in devs {
        remove(d);
    }
    assert_eq!(pool.free_ports(), MAX_MTTYS);
}

#[test]
fn failed_register_returns_ports_to_pool() {
    let registry = Registry::default();
    let pool = MttyPool::default();
    let opts = MttyOptions {
        ty: MttyType::Single,
        pool: pool.clone(),
    };
    let d = create(&registry, "dup", GroupId(1), &opts).unwrap();
    let err = create(&registry, "dup", GroupId(2), &opts).unwrap_err();
    assert!(matches!(err, DriverError::Register { .. }));
    assert_eq!(pool.free_ports(), MAX_MTTYS - 1);
    remove(d);
}

#[test]
fn type_names_parse() {
    assert_eq!("1".parse::<MttyType>().unwrap(), MttyType::Single);
    assert_eq!("2".parse::<MttyType>().unwrap().name(), "2");
    assert!("3".parse::<MttyType>().is_err());
}
