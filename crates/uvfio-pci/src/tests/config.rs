//! Config-space rules: BAR sizing, masks, RW1C, capability layout.

use crate::regs::*;
use crate::*;

fn space(config: &PciConfig) -> ConfigSpace {
    ConfigSpace::new(config).unwrap()
}

fn with_bar(index: usize, bar: Bar) -> PciConfig {
    let mut c = PciConfig::default();
    c.bars[index] = Some(bar);
    c
}

fn size_bar(cs: &mut ConfigSpace, offset: u16) -> u32 {
    cs.write(offset, &u32::MAX.to_le_bytes()).unwrap();
    cs.read_u32(offset)
}

#[test]
fn bar_mem32_all_ones_reads_size_mask() {
    let mut cs = space(&with_bar(0, Bar::mem32(4096)));
    assert_eq!(size_bar(&mut cs, PCI_BASE_ADDRESS_0), 0xffff_f000);
}

#[test]
fn bar_mem32_prefetchable_all_ones_keeps_prefetch_bit() {
    let mut cs = space(&with_bar(1, Bar::mem32(1 << 20).prefetchable()));
    assert_eq!(size_bar(&mut cs, PCI_BASE_ADDRESS_0 + 4), 0xfff0_0008);
}

#[test]
fn bar_mem64_all_ones_low_and_high_dwords_read_mask() {
    let mut cs = space(&with_bar(2, Bar::mem64(4096)));
    assert_eq!(size_bar(&mut cs, 0x18), 0xffff_f004);
    assert_eq!(size_bar(&mut cs, 0x1c), 0xffff_ffff);
}

#[test]
fn bar_mem64_larger_than_4g_high_dword_uses_mask_shifted() {
    let mut cs = space(&with_bar(0, Bar::mem64(1 << 33).prefetchable()));
    assert_eq!(size_bar(&mut cs, 0x10), 0x0000_000c);
    assert_eq!(size_bar(&mut cs, 0x14), 0xffff_fffe);
}

#[test]
fn bar_io_all_ones_reads_mask_with_io_bit() {
    let mut cs = space(&with_bar(0, Bar::io(8)));
    assert_eq!(size_bar(&mut cs, 0x10), 0xffff_fff9);
}

#[test]
fn bar_unassigned_all_ones_reads_zero() {
    let mut cs = space(&with_bar(0, Bar::io(8)));
    assert_eq!(size_bar(&mut cs, 0x14), 0);
    assert_eq!(size_bar(&mut cs, 0x24), 0);
}

#[test]
fn rom_all_ones_keeps_enable_bit() {
    let cfg = PciConfig {
        rom: Some(Rom {
            size: 64 * 1024,
            data: vec![0x55, 0xaa],
        }),
        ..Default::default()
    };
    let mut cs = space(&cfg);
    assert_eq!(size_bar(&mut cs, PCI_ROM_ADDRESS), 0xffff_0001);
    cs.write(PCI_ROM_ADDRESS, &0x1234_5670u32.to_le_bytes())
        .unwrap();
    assert_eq!(cs.read_u32(PCI_ROM_ADDRESS), 0x1234_0000);
}

#[test]
fn bar_address_write_keeps_aligned_bits_and_decodes() {
    let mut cs = space(&with_bar(2, Bar::mem64(1 << 16)));
    cs.write(0x18, &0x1234_5678u32.to_le_bytes()).unwrap();
    cs.write(0x1c, &0x9u32.to_le_bytes()).unwrap();
    assert_eq!(cs.read_u32(0x18), 0x1234_0004);
    assert_eq!(cs.bar_address(2), Some(0x9_1234_0000));
}

#[test]
fn bar_size_not_power_of_two_is_bar_size_invalid() {
    let e = ConfigSpace::new(&with_bar(0, Bar::mem32(3000))).unwrap_err();
    assert_eq!(e, PciError::BarSizeInvalid(3000));
}

#[test]
fn bar_io_larger_than_256_is_bar_size_invalid() {
    let e = ConfigSpace::new(&with_bar(0, Bar::io(512))).unwrap_err();
    assert_eq!(e, PciError::BarSizeInvalid(512));
}

#[test]
fn rom_smaller_than_2k_is_bar_size_invalid() {
    let cfg = PciConfig {
        rom: Some(Rom {
            size: 1024,
            data: Vec::new(),
        }),
        ..Default::default()
    };
    assert_eq!(
        ConfigSpace::new(&cfg).unwrap_err(),
        PciError::BarSizeInvalid(1024)
    );
}

#[test]
fn bar_mem64_at_index5_is_bar_index_invalid() {
    let e = ConfigSpace::new(&with_bar(5, Bar::mem64(4096))).unwrap_err();
    assert_eq!(e, PciError::BarIndexInvalid(5));
}

#[test]
fn bar_mem64_upper_slot_declared_is_bar_in_use() {
    let mut cfg = with_bar(0, Bar::mem64(4096));
    cfg.bars[1] = Some(Bar::io(8));
    assert_eq!(ConfigSpace::new(&cfg).unwrap_err(), PciError::BarInUse(1));
}

#[test]
fn bar_memory_on_io_bar_is_bar_memory_invalid() {
    let shm = std::sync::Arc::new(uvfio_core::SharedMemory::new("t", 4096).unwrap());
    let e = ConfigSpace::new(&with_bar(0, Bar::io(8).with_memory(shm))).unwrap_err();
    assert_eq!(
        e,
        PciError::BarMemoryInvalid {
            index: 0,
            len: 4096
        }
    );
}

#[test]
fn header_ids_are_read_only() {
    let cfg = PciConfig {
        header: PciHeader {
            vendor_id: 0x4348,
            device_id: 0x3253,
            revision: 0x10,
            class_code: 0x07,
            prog_if: 0x02,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut cs = space(&cfg);
    cs.write(0, &u32::MAX.to_le_bytes()).unwrap();
    assert_eq!(cs.read_u32(0), 0x3253_4348);
    assert_eq!(cs.read_u32(8), 0x0700_0210);
}

#[test]
fn command_write_all_ones_sets_only_writable_bits() {
    let mut cs = space(&PciConfig::default());
    cs.write(PCI_COMMAND, &0xffffu16.to_le_bytes()).unwrap();
    assert_eq!(cs.read_u16(PCI_COMMAND), PCI_COMMAND_WRITABLE);
    assert!(cs
        .command()
        .contains(Command::MASTER | Command::INTX_DISABLE));
}

#[test]
fn command_default_enables_decode_of_declared_bar_kinds() {
    let mut cfg = with_bar(0, Bar::io(8));
    cfg.bars[1] = Some(Bar::mem32(4096));
    let cs = space(&cfg);
    assert_eq!(cs.command(), Command::IO | Command::MEMORY);
}

#[test]
fn status_rw1c_write_one_clears_only_that_bit() {
    let mut cs = space(&PciConfig::default());
    cs.set_u16(PCI_STATUS, 0xa000);
    cs.write(PCI_STATUS, &0x8000u16.to_le_bytes()).unwrap();
    assert_eq!(cs.read_u16(PCI_STATUS), 0x2000);
    cs.write(PCI_STATUS, &0u16.to_le_bytes()).unwrap();
    assert_eq!(cs.read_u16(PCI_STATUS), 0x2000);
}

#[test]
fn status_cap_list_and_interrupt_bits_are_read_only() {
    let cfg = PciConfig {
        capabilities: vec![Capability::PowerManagement(PmCap::default())],
        ..Default::default()
    };
    let mut cs = space(&cfg);
    cs.write(PCI_STATUS, &0xffffu16.to_le_bytes()).unwrap();
    assert_eq!(cs.status(), Status::CAP_LIST);
}

#[test]
fn write_crossing_dword_applies_each_byte_mask() {
    let mut cs = space(&PciConfig {
        header: PciHeader {
            interrupt_pin: 1,
            ..Default::default()
        },
        ..Default::default()
    });
    cs.write(0x3b, &[0xaa, 0x55]).unwrap();
    assert_eq!(cs.read_u8(0x3b), 0);
    assert_eq!(cs.read_u8(PCI_INTERRUPT_LINE), 0x55);
    cs.write(0x3c, &0xffff_ffffu32.to_le_bytes()).unwrap();
    assert_eq!(cs.read_u8(PCI_INTERRUPT_PIN), 1);
}

#[test]
fn access_out_of_range_or_bad_size_is_config_access_invalid() {
    let mut cs = space(&PciConfig::default());
    let mut b = [0u8; 4];
    assert_eq!(
        cs.read(254, &mut b).unwrap_err(),
        PciError::ConfigAccessInvalid {
            offset: 254,
            len: 4
        }
    );
    assert!(cs.write(0, &[0; 3]).is_err());
    assert!(cs.read(300, &mut b[..1]).is_err());
}

fn full_caps() -> PciConfig {
    let mut cfg = with_bar(0, Bar::mem32(8192));
    cfg.header.interrupt_pin = 1;
    cfg.capabilities = vec![
        Capability::PowerManagement(PmCap::default()),
        Capability::Msi(MsiCap {
            vectors: 4,
            addr64: true,
            per_vector_mask: true,
        }),
        Capability::Msix(MsixCap {
            table_size: 8,
            table_bar: 0,
            table_offset: 0x1000,
            pba_bar: 0,
            pba_offset: 0x1800,
        }),
        Capability::PciExpress(PcieCap {
            flr: true,
            ..Default::default()
        }),
        Capability::Vendor(vec![1, 2, 3]),
    ];
    cfg.extended_capabilities = vec![
        ExtCapability::DeviceSerialNumber(0x0102_0304_0506_0708),
        ExtCapability::Vendor {
            vsec_id: 7,
            vsec_rev: 1,
            data: vec![9; 4],
        },
    ];
    cfg
}

#[test]
fn caps_walk_finds_all_in_order_dword_aligned() {
    let cs = space(&full_caps());
    let w = cs.capabilities();
    assert_eq!(w.error, None);
    assert_eq!(w.ids(), vec![0x01, 0x05, 0x11, 0x10, 0x09]);
    assert!(w
        .entries
        .iter()
        .all(|e| e.offset % 4 == 0 && e.offset >= 0x40));
    assert_eq!(cs.read_u8(PCI_CAPABILITY_LIST), 0x40);
    assert!(cs.status().contains(Status::CAP_LIST));
    assert_eq!(
        cs.capability_offset(PCI_CAP_ID_MSIX),
        Some(w.entries[2].offset)
    );
}

#[test]
fn caps_with_pcie_make_4k_space_with_extended_list() {
    let cs = space(&full_caps());
    assert_eq!(cs.len(), 4096);
    let w = cs.extended_capabilities();
    assert_eq!(w.ids(), vec![PCI_EXT_CAP_ID_DSN, PCI_EXT_CAP_ID_VNDR]);
    assert_eq!(w.entries[0].offset, 0x100);
    assert_eq!(cs.read_u32(0x104), 0x0506_0708);
}

#[test]
fn caps_none_status_bit_clear_and_walk_empty() {
    let cs = space(&PciConfig::default());
    assert!(!cs.status().contains(Status::CAP_LIST));
    assert_eq!(cs.capabilities(), CapWalk::default());
    assert_eq!(cs.len(), 256);
}

#[test]
fn caps_extended_without_pcie_is_error() {
    let cfg = PciConfig {
        extended_capabilities: vec![ExtCapability::DeviceSerialNumber(1)],
        ..Default::default()
    };
    assert_eq!(
        ConfigSpace::new(&cfg).unwrap_err(),
        PciError::ExtendedCapabilityWithoutPcie(3)
    );
}

#[test]
fn caps_too_many_is_capability_no_space() {
    let cfg = PciConfig {
        capabilities: vec![Capability::Vendor(vec![0; 100]); 3],
        ..Default::default()
    };
    assert!(matches!(
        ConfigSpace::new(&cfg).unwrap_err(),
        PciError::CapabilityNoSpace { id: 9, .. }
    ));
}

#[test]
fn caps_duplicate_msi_is_capability_duplicate() {
    let cfg = PciConfig {
        capabilities: vec![Capability::Msi(MsiCap::default()); 2],
        ..Default::default()
    };
    assert_eq!(
        ConfigSpace::new(&cfg).unwrap_err(),
        PciError::CapabilityDuplicate(5)
    );
}

#[test]
fn msi_vectors_not_power_of_two_is_error() {
    let cfg = PciConfig {
        capabilities: vec![Capability::Msi(MsiCap {
            vectors: 3,
            ..Default::default()
        })],
        ..Default::default()
    };
    assert_eq!(
        ConfigSpace::new(&cfg).unwrap_err(),
        PciError::MsiVectorsInvalid(3)
    );
}

#[test]
fn msix_table_outside_bar_is_placement_invalid() {
    let mut cfg = full_caps();
    cfg.bars[0] = Some(Bar::mem32(4096));
    assert!(matches!(
        ConfigSpace::new(&cfg).unwrap_err(),
        PciError::MsixPlacementInvalid { bar: 0, .. }
    ));
}

#[test]
fn msix_table_in_io_bar_is_placement_invalid() {
    let mut cfg = full_caps();
    cfg.bars[0] = Some(Bar::io(256));
    cfg.capabilities
        .retain(|c| matches!(c, Capability::Msix(_)));
    cfg.capabilities = vec![Capability::Msix(MsixCap {
        table_size: 1,
        table_bar: 0,
        table_offset: 0,
        pba_bar: 0,
        pba_offset: 0x80,
    })];
    assert!(matches!(
        ConfigSpace::new(&cfg).unwrap_err(),
        PciError::MsixPlacementInvalid { bar: 0, .. }
    ));
}

#[test]
fn msi_qsize_above_qmask_is_clamped() {
    let mut cs = space(&full_caps());
    let msi = cs.capability_offset(PCI_CAP_ID_MSI).unwrap();
    cs.write(msi + PCI_MSI_FLAGS, &0x0051u16.to_le_bytes())
        .unwrap();
    let flags = cs.read_u16(msi + PCI_MSI_FLAGS);
    assert_eq!(flags & PCI_MSI_FLAGS_QSIZE, 2 << 4);
    assert!(cs.msi_enabled());
}

#[test]
fn msi_mask_bits_writable_only_for_implemented_vectors() {
    let mut cs = space(&full_caps());
    let msi = cs.capability_offset(PCI_CAP_ID_MSI).unwrap();
    cs.write(msi + PCI_MSI_MASK_64, &u32::MAX.to_le_bytes())
        .unwrap();
    assert_eq!(cs.read_u32(msi + PCI_MSI_MASK_64), 0xf);
    assert!(cs.msi_masked(3));
    cs.write(msi + PCI_MSI_PENDING_64, &u32::MAX.to_le_bytes())
        .unwrap();
    assert_eq!(cs.read_u32(msi + PCI_MSI_PENDING_64), 0);
}

#[test]
fn msix_control_only_enable_and_mask_writable() {
    let mut cs = space(&full_caps());
    let msix = cs.capability_offset(PCI_CAP_ID_MSIX).unwrap();
    cs.write(msix + PCI_MSIX_FLAGS, &0xffffu16.to_le_bytes())
        .unwrap();
    assert_eq!(cs.read_u16(msix + PCI_MSIX_FLAGS), 0xc007);
    assert!(cs.msix_enabled() && cs.msix_function_masked());
    assert_eq!(cs.read_u32(msix + PCI_MSIX_TABLE), 0x1000);
    assert_eq!(cs.read_u32(msix + PCI_MSIX_PBA), 0x1800);
}

#[test]
fn pm_state_writable_and_pme_status_rw1c() {
    let mut cs = space(&full_caps());
    let pm = cs.capability_offset(PCI_CAP_ID_PM).unwrap();
    cs.write(pm + PCI_PM_CTRL, &0x0003u16.to_le_bytes())
        .unwrap();
    assert_eq!(cs.read_u16(pm + PCI_PM_CTRL) & 3, 3);
    cs.set_u16(pm + PCI_PM_CTRL, 0x8003 | PCI_PM_CTRL_NO_SOFT_RESET);
    cs.write(pm + PCI_PM_CTRL, &0x8000u16.to_le_bytes())
        .unwrap();
    assert_eq!(cs.read_u16(pm + PCI_PM_CTRL), PCI_PM_CTRL_NO_SOFT_RESET);
}

#[test]
fn pcie_flr_request_reads_back_zero_once_taken() {
    let mut cs = space(&full_caps());
    let exp = cs.capability_offset(PCI_CAP_ID_EXP).unwrap();
    cs.write(exp + PCI_EXP_DEVCTL + 1, &[0x80]).unwrap();
    assert!(cs.take_flr_request());
    assert_eq!(
        cs.read_u16(exp + PCI_EXP_DEVCTL) & PCI_EXP_DEVCTL_BCR_FLR,
        0
    );
    assert!(!cs.take_flr_request());
}

#[test]
fn raw_bytes_placed_read_only() {
    let cfg = PciConfig {
        raw: vec![RawBytes {
            offset: 0x60,
            bytes: b"PCI Serial/UART".to_vec(),
        }],
        ..Default::default()
    };
    let mut cs = space(&cfg);
    cs.write(0x60, &[0, 0, 0, 0]).unwrap();
    assert_eq!(&cs.as_bytes()[0x60..0x6f], b"PCI Serial/UART");
}

#[test]
fn raw_bytes_over_capability_is_error() {
    let mut cfg = full_caps();
    cfg.raw = vec![RawBytes {
        offset: 0x40,
        bytes: vec![1],
    }];
    assert_eq!(
        ConfigSpace::new(&cfg).unwrap_err(),
        PciError::RawBytesInvalid {
            offset: 0x40,
            len: 1
        }
    );
}

#[test]
fn reset_restores_values_but_keeps_bar_addresses() {
    let mut cs = space(&full_caps());
    cs.write(0x10, &0xfeed_0000u32.to_le_bytes()).unwrap();
    cs.write(PCI_COMMAND, &0x0006u16.to_le_bytes()).unwrap();
    cs.reset();
    assert_eq!(cs.read_u32(0x10), 0xfeed_0000);
    assert_eq!(cs.command(), Command::MEMORY);
}
