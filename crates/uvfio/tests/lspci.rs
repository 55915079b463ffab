//! The lspci report on an in-process device with every BAR kind and
//! capability: sizes found by the sizing protocol, config space restored.

use uvfio::lspci::{self, DeviceAccess, RegionReport};
use uvfio_core::*;
use uvfio_pci::*;

struct Null;
impl PciFunction for Null {}

struct HandleAccess(OpenDevice);

impl DeviceAccess for HandleAccess {
    fn device_info(&mut self) -> anyhow::Result<(u32, u32, u32)> {
        let i = self.0.info();
        Ok((i.flags.bits(), i.num_regions, i.num_irqs))
    }
    fn region_info(&mut self, index: u32) -> anyhow::Result<RegionReport> {
        let r = self.0.region_info(index)?;
        Ok(RegionReport {
            index,
            name: String::new(),
            size: r.size,
            flags: vec![],
            sparse_areas: r
                .sparse_areas()
                .unwrap_or(&[])
                .iter()
                .map(|a| (a.offset, a.size))
                .collect(),
            caps: vec![],
        })
    }
    fn irq_info(&mut self, index: u32) -> anyhow::Result<(u32, u32)> {
        let i = self.0.irq_info(index)?;
        Ok((i.flags.bits(), i.count))
    }
    fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        Ok(self.0.read(index, offset, buf)?)
    }
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> anyhow::Result<()> {
        Ok(self.0.write(index, offset, data)?)
    }
}

#[test]
fn report_sizes_every_bar_kind_decodes_caps_and_restores_config() {
    let config = PciConfig {
        header: PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1234,
            class_code: 0x02,
            interrupt_pin: 1,
            ..Default::default()
        },
        bars: [
            Some(Bar::mem32(0x1000)),
            Some(Bar::io(0x20)),
            Some(Bar::mem64(1 << 33).prefetchable()),
            None,
            Some(Bar::mem64(0x4000)),
            None,
        ],
        rom: Some(Rom {
            size: 0x8000,
            data: vec![0x55, 0xaa],
        }),
        capabilities: vec![
            Capability::Msi(MsiCap {
                vectors: 4,
                addr64: true,
                per_vector_mask: true,
            }),
            Capability::Msix(MsixCap {
                table_size: 8,
                table_bar: 0,
                table_offset: 0x800,
                pba_bar: 0,
                pba_offset: 0xc00,
            }),
        ],
        ..Default::default()
    };
    let dev = PciDevice::new(config, |_| Null).unwrap();
    let reg = Registry::default();
    let dev = reg
        .init(dev, "nic", GroupId(1))
        .unwrap()
        .register()
        .unwrap();
    let h = reg.open_device(GroupId(1), "nic").unwrap();
    // Program an address so "restored" is observable.
    h.write(7, 0x10, &0xfeb0_0000u32.to_le_bytes()).unwrap();
    let mut before = vec![0u8; 256];
    h.read(7, 0, &mut before).unwrap();

    let mut acc = HandleAccess(h);
    let r = lspci::build(&mut acc).unwrap();

    let mut after = vec![0u8; 256];
    acc.0.read(7, 0, &mut after).unwrap();
    assert_eq!(before, after, "config space restored after sizing");

    let sizes: Vec<(u8, &str, u64, bool)> = r
        .bars
        .iter()
        .map(|b| (b.index, b.kind, b.size, b.prefetchable))
        .collect();
    assert_eq!(
        sizes,
        vec![
            (0, "memory", 0x1000, false),
            (1, "io", 0x20, false),
            (2, "memory", 1 << 33, true),
            (4, "memory", 0x4000, false),
            (6, "rom", 0x8000, false),
        ]
    );
    assert_eq!(r.bars[0].address, 0xfeb0_0000);
    assert!(r.bars[2].is_64bit);
    assert_eq!(r.vendor_id, 0x1af4);
    let ids: Vec<u16> = r.capabilities.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![5, 0x11]);
    assert!(
        r.capabilities[0]
            .text
            .contains("Count=1/4 Maskable+ 64bit+"),
        "{}",
        r.capabilities[0].text
    );
    assert!(
        r.capabilities[1].text.contains("Count=8"),
        "{}",
        r.capabilities[1].text
    );
    let text = lspci::render_text(&r, "test");
    assert!(
        text.contains("Region 2: Memory at <unassigned> (64-bit, prefetchable) [size=8G]"),
        "{text}"
    );
    assert!(
        text.contains("Expansion ROM at <unassigned> [disabled] [size=32K]"),
        "{text}"
    );
    drop(acc);
    dev.unregister();
}
