//! The mtty config space, byte for byte as the sample builds it, and its
//! write rules.

use uvfio_pci::regs::{PCI_BASE_ADDRESS_0, PCI_COMMAND, PCI_INTERRUPT_LINE, PCI_STATUS};
use uvfio_pci::{
    Bar, ConfigSpace, ConfigWrite, PciConfig, PciHeader, PciIrqs, PciQuirks, RawBytes,
};

use super::MttyType;

/// mtty's vendor ID.
pub const MTTY_VENDOR_ID: u16 = 0x4348;
/// mtty's device ID.
pub const MTTY_DEVICE_ID: u16 = 0x3253;
/// mtty's revision.
pub const MTTY_REVISION: u8 = 0x10;
/// Size of each port's I/O BAR.
pub const MTTY_IO_BAR_SIZE: u64 = 8;
/// The CONFIG region size the sample reports (0xff, a quirk).
pub const MTTY_CONFIG_SPACE_SIZE: u64 = 0xff;

/// The PCI declaration of an mtty of type `ty`.
pub fn pci_config(ty: MttyType) -> PciConfig {
    let mut bars: [Option<Bar>; 6] = Default::default();
    bars[0] = Some(Bar::io(MTTY_IO_BAR_SIZE));
    if ty == MttyType::Dual {
        bars[1] = Some(Bar::io(MTTY_IO_BAR_SIZE));
    }
    PciConfig {
        header: PciHeader {
            vendor_id: MTTY_VENDOR_ID,
            device_id: MTTY_DEVICE_ID,
            subsystem_vendor_id: MTTY_VENDOR_ID,
            subsystem_id: MTTY_DEVICE_ID,
            revision: MTTY_REVISION,
            // Simple communication controller / serial / 16550.
            class_code: 0x07,
            subclass: 0x00,
            prog_if: 0x02,
            interrupt_pin: 1,
            // I/O+, Mem-, BusMaster-.
            command: Some(0x0001),
            status: 0x0200,
            ..Default::default()
        },
        bars,
        raw: vec![
            RawBytes {
                offset: 0x40,
                bytes: vec![0x23, 0, 0, 0x80, 0x23, 0, 0, 0, 0x23, 0, 0, 0, 0x23],
            },
            RawBytes {
                offset: 0x60,
                bytes: b"PCI Serial/UART".to_vec(),
            },
        ],
        irqs: Some(PciIrqs {
            intx: true,
            msi: 1,
            ..Default::default()
        }),
        quirks: PciQuirks {
            config_region_size: Some(MTTY_CONFIG_SPACE_SIZE),
            absent_regions_rw: true,
            absent_irqs_einval: true,
        },
        ..Default::default()
    }
}

/// The sample's `handle_pci_cfg_write`: COMMAND/STATUS ignored, interrupt
/// line stored, BAR0/BAR1 sized or stored with the low 2 bits kept, every
/// other write logged and dropped.
pub(crate) fn config_write(
    ty: MttyType,
    config: &mut ConfigSpace,
    offset: u16,
    data: &[u8],
) -> ConfigWrite {
    const BAR1: u16 = PCI_BASE_ADDRESS_0 + 4;
    match offset {
        PCI_COMMAND | PCI_STATUS => ConfigWrite::Handled,
        // Only the line byte is writable (masks), the pin is read only.
        PCI_INTERRUPT_LINE => ConfigWrite::Default,
        PCI_BASE_ADDRESS_0 | BAR1 if data.len() == 4 => {
            if offset == BAR1 && ty == MttyType::Single {
                config.set_u32(offset, 0);
                return ConfigWrite::Handled;
            }
            let mut v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            if v == u32::MAX {
                v &= !(MTTY_IO_BAR_SIZE as u32 - 1);
            }
            v |= config.read_u32(offset) & 0x3;
            config.set_u32(offset, v);
            ConfigWrite::Handled
        }
        _ => {
            tracing::debug!(offset, len = data.len(), "mtty: config write not handled");
            ConfigWrite::Handled
        }
    }
}
