//! `uvfio info` against someone else's server: rust-vmm's `vfio_user`
//! crate serving an example-style PCI device (config space with a sizable
//! BAR0, an MSI capability), like its gpio example.

use std::process::Command;

use uvfio_testkit::RustVmmServer;

const CONFIG: u32 = 7;

/// Config space with BAR0 a 32-bit 4 KiB memory BAR and an MSI capability.
fn example_config() -> [u8; 256] {
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
    c
}

/// The command register is writable and BAR0 reads back its size mask, so
/// that `info` can size it; the rest is read-only.
fn config_write(c: &mut [u8], off: usize, data: &[u8]) {
    match off {
        0x04 => c[4..4 + data.len()].copy_from_slice(data),
        0x10 if data.len() == 4 => {
            let v = u32::from_le_bytes(data.try_into().unwrap()) & 0xffff_f000;
            c[0x10..0x14].copy_from_slice(&v.to_le_bytes());
        }
        _ => {}
    }
}

#[test]
fn info_describes_a_rust_vmm_server_device() {
    let layout = RustVmmServer::pci()
        .rw_region(0, 0x1000)
        .rw_region(CONFIG, 256)
        .irq_counts([1, 1, 0, 0, 0]);
    let before = example_config();
    let backend = layout
        .memory_backend()
        .with_contents(CONFIG, &before)
        .on_write(CONFIG, config_write);
    let server = layout.spawn(backend);

    let out = Command::new(env!("CARGO_BIN_EXE_uvfio"))
        .args(["info", server.path().to_str().unwrap()])
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
    let backend = server.join().unwrap();
    // Sizing restored every register it touched.
    assert_eq!(backend.region(CONFIG), &before[..]);
}
