//! `uvfio info` against someone else's server: rust-vmm's `vfio_user`
//! crate serving an example-style PCI device (config space with a sizable
//! BAR0, an MSI capability), like its gpio example.

use std::fs::File;
use std::io;
use std::process::Command;
use std::sync::{Arc, Mutex};

use vfio_bindings::bindings::vfio::{
    vfio_region_info, VFIO_IRQ_INFO_EVENTFD, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};

/// Config space with BAR0 a 32-bit 4 KiB memory BAR and an MSI capability.
struct ExampleDevice {
    config: Arc<Mutex<[u8; 256]>>,
}

impl ExampleDevice {
    fn new() -> Self {
        let mut c = [0u8; 256];
        c[0..2].copy_from_slice(&0x494fu16.to_le_bytes()); // like lvu's gpio-pci-idio-16
        c[2..4].copy_from_slice(&0x0dc8u16.to_le_bytes());
        c[6..8].copy_from_slice(&0x0010u16.to_le_bytes()); // CAP_LIST
        c[8] = 0x02; // revision
        c[0x0b] = 0x08; // generic system peripheral
        c[0x0a] = 0x80;
        c[0x34] = 0x40;
        c[0x3d] = 1;
        c[0x40] = 0x05; // MSI, end of list
        c[0x42] = 0x80; // 64-bit, 1 vector
        ExampleDevice {
            config: Arc::new(Mutex::new(c)),
        }
    }
}

impl vfio_user::ServerBackend for ExampleDevice {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        let c = self.config.lock().unwrap();
        let off = offset as usize;
        if region != 7 || off + data.len() > 256 {
            data.fill(0);
            return Ok(());
        }
        data.copy_from_slice(&c[off..off + data.len()]);
        Ok(())
    }
    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut c = self.config.lock().unwrap();
        let off = offset as usize;
        if region != 7 || off + data.len() > 256 {
            return Ok(());
        }
        match off {
            0x04 => c[4..4 + data.len()].copy_from_slice(data),
            0x10 if data.len() == 4 => {
                let v = u32::from_le_bytes(data.try_into().unwrap()) & 0xffff_f000;
                c[0x10..0x14].copy_from_slice(&v.to_le_bytes());
            }
            _ => {} // read-only elsewhere
        }
        Ok(())
    }
    fn dma_map(
        &mut self,
        _: vfio_user::DmaMapFlags,
        _: u64,
        _: u64,
        _: u64,
        _: Option<File>,
    ) -> io::Result<()> {
        Ok(())
    }
    fn dma_unmap(&mut self, _: vfio_user::DmaUnmapFlags, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn reset(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn set_irqs(&mut self, _: u32, _: u32, _: u32, _: u32, _: Vec<File>) -> io::Result<()> {
        Ok(())
    }
}

fn region(index: u32, size: u64) -> vfio_user::ServerRegion {
    let flags = if size > 0 {
        VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
    } else {
        0
    };
    vfio_user::ServerRegion {
        region_info: vfio_region_info {
            argsz: 32,
            flags,
            index,
            cap_offset: 0,
            size,
            offset: 0,
        },
        sparse_areas: Vec::new(),
        mmap_fd: None,
    }
}

#[test]
fn info_describes_a_rust_vmm_server_device() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("example.sock");
    let mut regions: Vec<_> = (0..9).map(|i| region(i, 0)).collect();
    regions[0] = region(0, 0x1000);
    regions[7] = region(7, 256);
    let irqs = (0..5)
        .map(|index| vfio_user::IrqInfo {
            index,
            flags: VFIO_IRQ_INFO_EVENTFD,
            count: u32::from(index < 2),
        })
        .collect();
    let server = vfio_user::Server::new(&path, false, irqs, regions).unwrap();
    let dev = ExampleDevice::new();
    let config = dev.config.clone();
    let before = *config.lock().unwrap();
    let t = std::thread::spawn(move || {
        let mut dev = dev;
        server.run(&mut dev).map_err(|e| e.to_string())
    });

    let out = Command::new(env!("CARGO_BIN_EXE_uvfio"))
        .args(["info", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Generic system peripheral [0880]: Device 494f:0dc8 (rev 02)"),
        "{text}"
    );
    assert!(
        text.contains("Region 0: Memory at <unassigned> (32-bit, non-prefetchable) [size=4K]"),
        "{text}"
    );
    assert!(
        text.contains("Capabilities: [40] MSI: Enable- Count=1/1 Maskable- 64bit+"),
        "{text}"
    );
    assert!(text.contains("[7] CONFIG size=256"), "{text}");
    assert!(text.contains("[1] MSI    count=1 EVENTFD"), "{text}");
    t.join().unwrap().unwrap();
    // Sizing restored every register it touched.
    assert_eq!(*config.lock().unwrap(), before);
}
