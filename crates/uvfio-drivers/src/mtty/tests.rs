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

mod migration {
    use uvfio_core::{MigFlags, MigState};
    use uvfio_pci::migration::{SECTION_FUNCTION, SECTION_IRQ};

    use super::*;
    use crate::testutil::patch_section;

    /// Two mttys of `ty` (source "src" in group 20, destination "dst" in
    /// group 21) from one pool, each with a user.
    fn pair(ty: MttyType) -> (Registry, MttyDevice, User, MttyDevice, User) {
        let registry = Registry::default();
        let pool = MttyPool::default();
        let opts = MttyOptions { ty, pool };
        let s = create(&registry, "src", GroupId(20), &opts).unwrap();
        let d = create(&registry, "dst", GroupId(21), &opts).unwrap();
        let su = User::open(&registry, GroupId(20), "src");
        let du = User::open(&registry, GroupId(21), "dst");
        (registry, s, su, d, du)
    }

    /// The registers a read does not change.
    fn regs(u: &User, bar: u32) -> Vec<u8> {
        [
            UART_IER, UART_IIR, UART_LCR, UART_MCR, UART_LSR, UART_MSR, UART_SCR,
        ]
        .iter()
        .map(|r| u.read8(bar, u64::from(*r)))
        .collect()
    }

    #[test]
    fn tx_bytes_registers_and_config_arrive_on_destination() {
        let (_r, s, su, d, du) = pair(MttyType::Dual);
        assert_eq!(su.handle.migration_flags().unwrap(), MigFlags::all());
        su.cfg_write32(0x10, 0xc000);
        su.cfg_write32(0x14, 0xc010);
        su.cfg_write32(0x3c, 0x0a);
        // Port 0: divisor 0x010c, 8N1, RDI|RLSI, "hello" in the FIFO.
        su.write8(0, u64::from(UART_LCR), UART_LCR_DLAB | 0x03);
        su.write8(0, u64::from(UART_TX), 0x0c);
        su.write8(0, u64::from(UART_IER), 0x01);
        su.write8(0, u64::from(UART_LCR), 0x03);
        su.write8(0, u64::from(UART_IER), UART_IER_RDI | UART_IER_RLSI);
        su.write8(0, u64::from(UART_MCR), UART_MCR_DTR | UART_MCR_RTS);
        su.write8(0, u64::from(UART_SCR), 0x5a);
        for b in b"hello" {
            su.write8(0, u64::from(UART_TX), *b);
        }
        // Port 1: FIFO off (depth 1), overrun, DLAB left set.
        su.write8(1, u64::from(UART_FCR), 0);
        su.write8(1, u64::from(UART_TX), b'z');
        su.write8(1, u64::from(UART_TX), b'!');
        su.write8(1, u64::from(UART_LCR), UART_LCR_DLAB);
        su.write8(1, u64::from(UART_IER), 0x12);
        let (cfg, r0, r1) = (
            (0..63).map(|o| su.cfg_read32(o * 4)).collect::<Vec<_>>(),
            regs(&su, 0),
            regs(&su, 1),
        );

        let stream = su.save(true);
        assert_eq!(du.resume(&stream).unwrap(), MigState::Running);

        let (sf, df) = (s.driver().function(), d.driver().function());
        for p in 0..2 {
            assert_eq!(df.port(p), sf.port(p), "port {p} state");
        }
        assert_eq!(
            (0..63).map(|o| du.cfg_read32(o * 4)).collect::<Vec<_>>(),
            cfg
        );
        assert_eq!(du.cfg_read32(0x10), 0xc001);
        assert_eq!(regs(&du, 0), r0);
        assert_eq!(regs(&du, 1), r1);
        assert_eq!(df.port(0).unwrap().divisor(), 0x010c);
        assert_eq!(du.read8(1, u64::from(UART_IER)), 0x12, "DLAB: divisor high");
        assert_eq!(du.read8(1, u64::from(UART_LSR)) & UART_LSR_OE, UART_LSR_OE);
        let rx: Vec<u8> = (0..5).map(|_| du.read8(0, u64::from(UART_RX))).collect();
        assert_eq!(rx, b"hello");
        assert_eq!(du.read8(0, u64::from(UART_LSR)) & UART_LSR_DR, 0);
        du.write8(1, u64::from(UART_LCR), 0);
        assert_eq!(du.read8(1, u64::from(UART_RX)), b'z');
    }

    #[test]
    fn interrupts_are_held_while_stopped_and_delivered_by_destination() {
        let (_r, _s, su, d, du) = pair(MttyType::Single);
        let smsi = su.bind(VFIO_PCI_MSI_IRQ_INDEX, 1);
        su.write8(0, u64::from(UART_IER), UART_IER_RDI);
        su.write8(0, u64::from(UART_TX), b'a');
        assert_eq!(read_eventfd(&smsi[0]).unwrap(), 1, "running: delivered");
        su.read8(0, u64::from(UART_RX));

        su.handle.set_mig_state(MigState::Stop).unwrap();
        // A (misbehaving) client writes while stopped: no interrupt.
        su.write8(0, u64::from(UART_TX), b'b');
        assert_eq!(read_eventfd(&smsi[0]).unwrap(), 0);
        su.handle.set_mig_state(MigState::StopCopy).unwrap();
        let stream = su.drain();

        let dmsi = du.bind(VFIO_PCI_MSI_IRQ_INDEX, 1);
        du.handle.set_mig_state(MigState::Resuming).unwrap();
        du.handle.mig_write(&stream).unwrap();
        du.handle.set_mig_state(MigState::Stop).unwrap();
        assert_eq!(read_eventfd(&dmsi[0]).unwrap(), 0, "destination stopped");
        du.handle.set_mig_state(MigState::Running).unwrap();
        assert_eq!(read_eventfd(&dmsi[0]).unwrap(), 1, "latched on the source");
        assert_eq!(du.read8(0, u64::from(UART_RX)), b'b');
        assert_eq!(read_eventfd(&smsi[0]).unwrap(), 0);
        assert_eq!(d.driver().function().port(0).unwrap().fifo_len(), 0);
    }

    #[test]
    fn source_stopped_and_resumed_delivers_its_own_latched_interrupt() {
        let (_r, _p, _d, u) = make(MttyType::Single);
        let msi = u.bind(VFIO_PCI_MSI_IRQ_INDEX, 1);
        u.write8(0, u64::from(UART_IER), UART_IER_RDI);
        u.handle.set_mig_state(MigState::Stop).unwrap();
        u.write8(0, u64::from(UART_TX), b'x');
        assert_eq!(read_eventfd(&msi[0]).unwrap(), 0);
        u.handle.set_mig_state(MigState::Running).unwrap();
        assert_eq!(read_eventfd(&msi[0]).unwrap(), 1);
    }

    #[test]
    fn corrupted_streams_leave_destination_in_error_until_reopened() {
        let (r, _s, su, d, mut du) = pair(MttyType::Single);
        for b in b"keep" {
            su.write8(0, u64::from(UART_TX), *b);
        }
        let good = su.save(false);
        du.write8(0, u64::from(UART_SCR), 0x77);
        let before = d.driver().function().port(0).unwrap();

        // A dual-port card's stream does not fit a single-port card.
        let (_r2, _s2, su2, _d2, _du2) = pair(MttyType::Dual);
        let dual = su2.save(false);

        let mut bad_magic = good.clone();
        bad_magic[0] ^= 0xff;
        let mut bad_version = good.clone();
        bad_version[8] = 2;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("bad magic", bad_magic),
            ("bad version", bad_version),
            ("truncated", good[..good.len() - 20].to_vec()),
            ("header only", good[..16].to_vec()),
            ("dual-port stream", dual),
            (
                "wrong port count",
                patch_section(&good, SECTION_FUNCTION, |p| p[12] = 2),
            ),
            (
                "wrong port count, records to match",
                patch_section(&good, SECTION_FUNCTION, |p| {
                    p[12] = 2;
                    let rec = p[20..].to_vec();
                    p.extend(rec);
                }),
            ),
            (
                "bad mtty magic",
                patch_section(&good, SECTION_FUNCTION, |p| p[7] = 0),
            ),
            (
                "bad mtty major",
                patch_section(&good, SECTION_FUNCTION, |p| p[8] = 3),
            ),
            (
                "truncated port record",
                patch_section(&good, SECTION_FUNCTION, |p| {
                    p.pop();
                }),
            ),
            (
                "impossible FIFO head",
                patch_section(&good, SECTION_FUNCTION, |p| p[20 + 24] = 16),
            ),
            (
                "bad irq section",
                patch_section(&good, SECTION_IRQ, |p| p[0] = 7),
            ),
        ];
        for (what, stream) in cases {
            assert_eq!(du.resume(&stream).unwrap_err(), Errno::INVAL, "{what}");
            assert_eq!(du.handle.mig_state().unwrap(), MigState::Error, "{what}");
            assert_eq!(
                d.driver().function().port(0).unwrap(),
                before,
                "{what}: nothing applied"
            );
            // mtty has no RESET flag: a new open starts over in RUNNING.
            drop(du);
            du = User::open(&r, GroupId(21), "dst");
            assert_eq!(du.handle.mig_state().unwrap(), MigState::Running);
        }
        assert_eq!(du.resume(&good).unwrap(), MigState::Running);
        let rx: Vec<u8> = (0..4).map(|_| du.read8(0, u64::from(UART_RX))).collect();
        assert_eq!(rx, b"keep");
    }
}
