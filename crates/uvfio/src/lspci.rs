//! An `lspci -vv`-style description of a vfio-user device, built from what
//! any vfio-user server answers: device info, region and IRQ info, and
//! config space (including BAR sizes found by the sizing protocol, with the
//! original values restored).
//!
//! [`DeviceAccess`] is the seam: the `info` command implements it over a
//! vfio-user client; tests implement it over an in-process device.

use std::fmt::Write as _;

use anyhow::Context;
use serde::Serialize;
use uvfio_pci::regs::*;
use uvfio_pci::{walk_capabilities, walk_extended_capabilities};

/// What the report needs from a device.
pub trait DeviceAccess {
    /// `(flags, num_regions, num_irqs)` from DEVICE_GET_INFO.
    fn device_info(&mut self) -> anyhow::Result<(u32, u32, u32)>;
    /// Region `index`.
    fn region_info(&mut self, index: u32) -> anyhow::Result<RegionReport>;
    /// `(flags, count)` of IRQ `index`.
    fn irq_info(&mut self, index: u32) -> anyhow::Result<(u32, u32)>;
    /// Reads region `index` at `offset`.
    fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> anyhow::Result<()>;
    /// Writes region `index` at `offset`.
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> anyhow::Result<()>;
}

/// One VFIO region.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RegionReport {
    /// Index.
    pub index: u32,
    /// Name of a vfio-pci index.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// READ/WRITE/MMAP/CAPS as words.
    pub flags: Vec<&'static str>,
    /// Sparse-mmap areas `(offset, size)`.
    pub sparse_areas: Vec<(u64, u64)>,
    /// Other capability ids in the chain.
    pub caps: Vec<String>,
}

/// One IRQ index.
#[derive(Debug, Clone, Serialize)]
pub struct IrqReport {
    /// Index.
    pub index: u32,
    /// Name of a vfio-pci index.
    pub name: String,
    /// Vectors.
    pub count: u32,
    /// EVENTFD/MASKABLE/AUTOMASKED/NORESIZE.
    pub flags: Vec<&'static str>,
    /// Set when the server refused GET_IRQ_INFO for this index.
    pub error: Option<String>,
}

/// One BAR (or the ROM).
#[derive(Debug, Clone, Serialize)]
pub struct BarReport {
    /// 0-5, or 6 for the expansion ROM.
    pub index: u8,
    /// "memory", "io" or "rom".
    pub kind: &'static str,
    /// 64-bit memory BAR.
    pub is_64bit: bool,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// Address programmed (0 = unassigned).
    pub address: u64,
    /// Size found by sizing.
    pub size: u64,
}

/// One capability.
#[derive(Debug, Clone, Serialize)]
pub struct CapReport {
    /// Offset in config space.
    pub offset: u16,
    /// Capability ID.
    pub id: u16,
    /// Whether it is an extended capability.
    pub extended: bool,
    /// Its name and decoded fields, lspci style.
    pub text: String,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// DEVICE_GET_INFO flags as words.
    pub device_flags: Vec<&'static str>,
    /// Regions.
    pub regions: Vec<RegionReport>,
    /// IRQs.
    pub irqs: Vec<IrqReport>,
    /// Config space bytes (empty for non-PCI devices).
    #[serde(skip)]
    pub config: Vec<u8>,
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// Revision.
    pub revision: u8,
    /// Class code (base, sub, prog-if).
    pub class: [u8; 3],
    /// Class name.
    pub class_name: String,
    /// Command register.
    pub command: u16,
    /// Status register.
    pub status: u16,
    /// Interrupt pin (0 none, 1 = INTA…).
    pub interrupt_pin: u8,
    /// BARs with sizes.
    pub bars: Vec<BarReport>,
    /// Capabilities.
    pub capabilities: Vec<CapReport>,
    /// Why the capability walk stopped early, if it did.
    pub capability_error: Option<String>,
}

const PCI_REGION_NAMES: [&str; 9] = [
    "BAR0", "BAR1", "BAR2", "BAR3", "BAR4", "BAR5", "ROM", "CONFIG", "VGA",
];
const PCI_IRQ_NAMES: [&str; 5] = ["INTx", "MSI", "MSI-X", "ERR", "REQ"];
const CONFIG: u32 = 7;

fn words(bits: u32, names: &[(u32, &'static str)]) -> Vec<&'static str> {
    names
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| *n)
        .collect()
}

fn le16(c: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([
        c.get(off).copied().unwrap_or(0),
        c.get(off + 1).copied().unwrap_or(0),
    ])
}

fn le32(c: &[u8], off: usize) -> u32 {
    u32::from(le16(c, off)) | (u32::from(le16(c, off + 2)) << 16)
}

/// Class names for the base classes.
pub fn class_name(base: u8, sub: u8) -> String {
    let s = match (base, sub) {
        (0x01, 0x08) => "Non-Volatile memory controller",
        (0x01, _) => "Mass storage controller",
        (0x02, _) => "Network controller",
        (0x03, _) => "Display controller",
        (0x04, _) => "Multimedia controller",
        (0x05, _) => "Memory controller",
        (0x06, _) => "Bridge",
        (0x07, 0x00) => "Serial controller",
        (0x07, _) => "Communication controller",
        (0x08, _) => "Generic system peripheral",
        (0x09, _) => "Input device controller",
        (0x0c, _) => "Serial bus controller",
        (0x11, _) => "Signal processing controller",
        (0xff, _) => "Unassigned class",
        _ => "Unknown class",
    };
    s.to_owned()
}

/// Builds the report. BARs are sized by writing all-ones and reading the
/// mask back, with decoding turned off meanwhile; every register touched is
/// restored.
pub fn build(dev: &mut dyn DeviceAccess) -> anyhow::Result<Report> {
    let (flags, num_regions, num_irqs) = dev.device_info().context("DEVICE_GET_INFO")?;
    let is_pci = flags & 2 != 0;
    let mut regions = Vec::new();
    for i in 0..num_regions.min(64) {
        let mut r = dev
            .region_info(i)
            .with_context(|| format!("GET_REGION_INFO {i}"))?;
        r.name = match PCI_REGION_NAMES.get(i as usize) {
            Some(n) if is_pci => (*n).to_owned(),
            _ => format!("region{i}"),
        };
        regions.push(r);
    }
    let mut irqs = Vec::new();
    for i in 0..num_irqs.min(64) {
        // Some devices (the mtty sample) refuse indexes they lack: report
        // the refusal rather than give up on the whole device.
        let (f, count, error) = match dev.irq_info(i) {
            Ok((f, c)) => (f, c, None),
            Err(e) => (0, 0, Some(format!("{e:#}"))),
        };
        irqs.push(IrqReport {
            error,
            index: i,
            name: match PCI_IRQ_NAMES.get(i as usize) {
                Some(n) if is_pci => (*n).to_owned(),
                _ => format!("irq{i}"),
            },
            count,
            flags: words(
                f,
                &[
                    (1, "EVENTFD"),
                    (2, "MASKABLE"),
                    (4, "AUTOMASKED"),
                    (8, "NORESIZE"),
                ],
            ),
        });
    }
    let cfg_size = regions
        .get(CONFIG as usize)
        .filter(|_| is_pci)
        .map_or(0, |r| r.size.min(4096) as usize);
    let mut config = vec![0u8; cfg_size];
    for chunk in (0..cfg_size).step_by(256) {
        let end = (chunk + 256).min(cfg_size);
        dev.region_read(CONFIG, chunk as u64, &mut config[chunk..end])
            .with_context(|| format!("reading config space at {chunk:#x}"))?;
    }
    let bars = if cfg_size >= 64 {
        size_bars(dev, &config)?
    } else {
        Vec::new()
    };
    let mut capabilities = Vec::new();
    let mut capability_error = None;
    if cfg_size >= 64 {
        let walk = walk_capabilities(&config);
        for e in &walk.entries {
            capabilities.push(CapReport {
                offset: e.offset,
                id: e.id,
                extended: false,
                text: decode_cap(&config, e.offset as usize, e.id as u8),
            });
        }
        capability_error = walk.error.map(|e| e.to_string());
        if cfg_size > 256 {
            let ext = walk_extended_capabilities(&config);
            for e in &ext.entries {
                capabilities.push(CapReport {
                    offset: e.offset,
                    id: e.id,
                    extended: true,
                    text: match e.id {
                        0x0001 => format!("Advanced Error Reporting v{}", e.version),
                        0x0003 => format!(
                            "Device Serial Number {:08x}{:08x}",
                            le32(&config, e.offset as usize + 8),
                            le32(&config, e.offset as usize + 4)
                        ),
                        0x000b => format!("Vendor Specific Extended Capability v{}", e.version),
                        id => format!("Extended Capability ID {id:#06x} v{}", e.version),
                    },
                });
            }
            if capability_error.is_none() {
                capability_error = ext.error.map(|e| e.to_string());
            }
        }
    }
    let c = &config;
    Ok(Report {
        device_flags: words(
            flags,
            &[(1, "RESET"), (2, "PCI"), (4, "PLATFORM"), (1 << 7, "CAPS")],
        ),
        regions,
        irqs,
        vendor_id: le16(c, 0),
        device_id: le16(c, 2),
        command: le16(c, 4),
        status: le16(c, 6),
        revision: c.get(8).copied().unwrap_or(0),
        class: [
            c.get(11).copied().unwrap_or(0),
            c.get(10).copied().unwrap_or(0),
            c.get(9).copied().unwrap_or(0),
        ],
        class_name: class_name(
            c.get(11).copied().unwrap_or(0),
            c.get(10).copied().unwrap_or(0),
        ),
        subsystem_vendor_id: le16(c, 0x2c),
        subsystem_id: le16(c, 0x2e),
        interrupt_pin: c.get(0x3d).copied().unwrap_or(0),
        bars,
        capabilities,
        capability_error,
        config,
    })
}

fn write32(dev: &mut dyn DeviceAccess, off: u16, v: u32) -> anyhow::Result<()> {
    dev.region_write(CONFIG, u64::from(off), &v.to_le_bytes())
}

fn read32(dev: &mut dyn DeviceAccess, off: u16) -> anyhow::Result<u32> {
    let mut b = [0u8; 4];
    dev.region_read(CONFIG, u64::from(off), &mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn size_of_mask(mask: u64) -> u64 {
    if mask == 0 {
        0
    } else {
        (!mask).wrapping_add(1)
    }
}

fn size_bars(dev: &mut dyn DeviceAccess, config: &[u8]) -> anyhow::Result<Vec<BarReport>> {
    let cmd = le16(config, PCI_COMMAND as usize);
    // Turn decoding off while BARs hold sizing patterns (as an OS does).
    dev.region_write(CONFIG, u64::from(PCI_COMMAND), &(cmd & !0x3).to_le_bytes())?;
    let r = size_bars_inner(dev, config);
    dev.region_write(CONFIG, u64::from(PCI_COMMAND), &cmd.to_le_bytes())?;
    r
}

fn size_bars_inner(dev: &mut dyn DeviceAccess, config: &[u8]) -> anyhow::Result<Vec<BarReport>> {
    let mut out = Vec::new();
    let mut i = 0u8;
    while i < 6 {
        let off = PCI_BASE_ADDRESS_0 + 4 * u16::from(i);
        let orig = le32(config, off as usize);
        write32(dev, off, u32::MAX)?;
        let probe = read32(dev, off)?;
        write32(dev, off, orig)?;
        if probe == 0 {
            i += 1;
            continue;
        }
        if probe & PCI_BASE_ADDRESS_SPACE_IO != 0 {
            let mask = u64::from(probe & !0x3) | 0xffff_ffff_0000_0000;
            out.push(BarReport {
                index: i,
                kind: "io",
                is_64bit: false,
                prefetchable: false,
                address: u64::from(orig & !0x3),
                size: size_of_mask(mask) & 0xffff_ffff,
            });
            i += 1;
            continue;
        }
        let is_64 = probe & 0x6 == PCI_BASE_ADDRESS_MEM_TYPE_64;
        let mut mask = u64::from(probe & !0xf) | 0xffff_ffff_0000_0000;
        let mut address = u64::from(orig & !0xf);
        if is_64 && i < 5 {
            let hi_off = off + 4;
            let orig_hi = le32(config, hi_off as usize);
            write32(dev, hi_off, u32::MAX)?;
            let probe_hi = read32(dev, hi_off)?;
            write32(dev, hi_off, orig_hi)?;
            mask = (mask & 0xffff_ffff) | (u64::from(probe_hi) << 32);
            address |= u64::from(orig_hi) << 32;
        }
        out.push(BarReport {
            index: i,
            kind: "memory",
            is_64bit: is_64,
            prefetchable: probe & PCI_BASE_ADDRESS_MEM_PREFETCH != 0,
            address,
            size: size_of_mask(mask),
        });
        i += if is_64 { 2 } else { 1 };
    }
    let orig = le32(config, PCI_ROM_ADDRESS as usize);
    write32(dev, PCI_ROM_ADDRESS, PCI_ROM_ADDRESS_MASK)?;
    let probe = read32(dev, PCI_ROM_ADDRESS)? & PCI_ROM_ADDRESS_MASK;
    write32(dev, PCI_ROM_ADDRESS, orig)?;
    if probe != 0 {
        out.push(BarReport {
            index: 6,
            kind: "rom",
            is_64bit: false,
            prefetchable: false,
            address: u64::from(orig & PCI_ROM_ADDRESS_MASK),
            size: size_of_mask(u64::from(probe) | 0xffff_ffff_0000_0000) & 0xffff_ffff,
        });
    }
    Ok(out)
}

fn flag(v: bool) -> char {
    if v {
        '+'
    } else {
        '-'
    }
}

fn decode_cap(c: &[u8], off: usize, id: u8) -> String {
    match id {
        PCI_CAP_ID_PM => {
            let pmc = le16(c, off + 2);
            let ctrl = le16(c, off + 4);
            format!(
                "Power Management version {}\n\t\tStatus: D{} NoSoftRst{} PME-Enable{}",
                pmc & 0x7,
                ctrl & 0x3,
                flag(ctrl & 0x8 != 0),
                flag(ctrl & 0x100 != 0)
            )
        }
        PCI_CAP_ID_MSI => {
            let f = le16(c, off + 2);
            let is64 = f & PCI_MSI_FLAGS_64BIT != 0;
            let addr = if is64 {
                u64::from(le32(c, off + 4)) | (u64::from(le32(c, off + 8)) << 32)
            } else {
                u64::from(le32(c, off + 4))
            };
            let data = le16(c, off + if is64 { 12 } else { 8 });
            format!(
                "MSI: Enable{} Count={}/{} Maskable{} 64bit{}\n\t\tAddress: {addr:016x}  Data: {data:04x}",
                flag(f & PCI_MSI_FLAGS_ENABLE != 0),
                1u32 << ((f & PCI_MSI_FLAGS_QSIZE) >> 4),
                1u32 << ((f & PCI_MSI_FLAGS_QMASK) >> 1),
                flag(f & PCI_MSI_FLAGS_MASKBIT != 0),
                flag(is64)
            )
        }
        PCI_CAP_ID_MSIX => {
            let f = le16(c, off + 2);
            let table = le32(c, off + 4);
            let pba = le32(c, off + 8);
            format!(
                "MSI-X: Enable{} Count={} Masked{}\n\t\tVector table: BAR={} offset={:08x}\n\t\tPBA: BAR={} offset={:08x}",
                flag(f & PCI_MSIX_FLAGS_ENABLE != 0),
                (f & PCI_MSIX_FLAGS_QSIZE) + 1,
                flag(f & PCI_MSIX_FLAGS_MASKALL != 0),
                table & 0x7,
                table & !0x7,
                pba & 0x7,
                pba & !0x7
            )
        }
        PCI_CAP_ID_EXP => {
            let f = le16(c, off + 2);
            let ty = match (f >> 4) & 0xf {
                0 => "Endpoint",
                1 => "Legacy Endpoint",
                4 => "Root Port",
                5 => "Upstream Port",
                6 => "Downstream Port",
                9 => "Root Complex Integrated Endpoint",
                _ => "Other",
            };
            format!("Express (v{}) {ty}", f & 0xf)
        }
        PCI_CAP_ID_VNDR => format!(
            "Vendor Specific Information: Len={:02x}",
            c.get(off + 2).copied().unwrap_or(0)
        ),
        other => format!("Capability ID {other:#04x}"),
    }
}

/// Renders the report as text, like `lspci -vv`.
pub fn render_text(r: &Report, source: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "vfio-user device at {source}");
    let _ = writeln!(s, "\tDevice flags: {}", r.device_flags.join(" "));
    if !r.config.is_empty() {
        let _ = writeln!(
            s,
            "{} [{:02x}{:02x}]: Device {:04x}:{:04x} (rev {:02x}) (prog-if {:02x})",
            r.class_name, r.class[0], r.class[1], r.vendor_id, r.device_id, r.revision, r.class[2]
        );
        let _ = writeln!(
            s,
            "\tSubsystem: Device {:04x}:{:04x}",
            r.subsystem_vendor_id, r.subsystem_id
        );
        let c = r.command;
        let _ = writeln!(
            s,
            "\tControl: I/O{} Mem{} BusMaster{} SpecCycle{} MemWINV{} VGASnoop{} ParErr{} Stepping{} SERR{} FastB2B{} DisINTx{}",
            flag(c & 1 != 0), flag(c & 2 != 0), flag(c & 4 != 0), flag(c & 8 != 0), flag(c & 0x10 != 0),
            flag(c & 0x20 != 0), flag(c & 0x40 != 0), flag(c & 0x80 != 0), flag(c & 0x100 != 0),
            flag(c & 0x200 != 0), flag(c & 0x400 != 0)
        );
        let st = r.status;
        let _ = writeln!(
            s,
            "\tStatus: Cap{} 66MHz{} UDF{} FastB2B{} ParErr{} <TAbort{} <MAbort{} >SERR{} <PERR{} INTx{}",
            flag(st & 0x10 != 0), flag(st & 0x20 != 0), flag(st & 0x40 != 0), flag(st & 0x80 != 0),
            flag(st & 0x100 != 0), flag(st & 0x1000 != 0), flag(st & 0x2000 != 0), flag(st & 0x4000 != 0),
            flag(st & 0x8000 != 0), flag(st & 0x8 != 0)
        );
        if r.interrupt_pin != 0 {
            let pin = char::from(b'A' + (r.interrupt_pin - 1).min(3));
            let _ = writeln!(s, "\tInterrupt: pin {pin}");
        }
        for b in &r.bars {
            let addr = if b.address == 0 {
                "<unassigned>".to_owned()
            } else {
                format!("{:x}", b.address)
            };
            match b.kind {
                "io" => {
                    let _ = writeln!(
                        s,
                        "\tRegion {}: I/O ports at {addr} [size={}]",
                        b.index,
                        human(b.size)
                    );
                }
                "rom" => {
                    let _ = writeln!(
                        s,
                        "\tExpansion ROM at {addr} [disabled] [size={}]",
                        human(b.size)
                    );
                }
                _ => {
                    let _ = writeln!(
                        s,
                        "\tRegion {}: Memory at {addr} ({}-bit, {}) [size={}]",
                        b.index,
                        if b.is_64bit { 64 } else { 32 },
                        if b.prefetchable {
                            "prefetchable"
                        } else {
                            "non-prefetchable"
                        },
                        human(b.size)
                    );
                }
            }
        }
        for cap in &r.capabilities {
            let _ = writeln!(s, "\tCapabilities: [{:x}] {}", cap.offset, cap.text);
        }
        if let Some(e) = &r.capability_error {
            let _ = writeln!(s, "\tCapabilities: <malformed: {e}>");
        }
    }
    let _ = writeln!(s, "\tVFIO regions:");
    for reg in &r.regions {
        let mut line = format!(
            "\t\t[{}] {:<6} size={:<8}",
            reg.index,
            reg.name,
            human(reg.size)
        );
        if !reg.flags.is_empty() {
            let _ = write!(line, " {}", reg.flags.join(" "));
        }
        for (o, sz) in &reg.sparse_areas {
            let _ = write!(line, " mmap[{o:#x}+{}]", human(*sz));
        }
        for c in &reg.caps {
            let _ = write!(line, " {c}");
        }
        let _ = writeln!(s, "{}", line.trim_end());
    }
    let _ = writeln!(s, "\tVFIO IRQs:");
    for i in &r.irqs {
        match &i.error {
            Some(e) => {
                let _ = writeln!(s, "\t\t[{}] {:<6} <unavailable: {e}>", i.index, i.name);
            }
            None => {
                let _ = writeln!(
                    s,
                    "\t\t[{}] {:<6} count={} {}",
                    i.index,
                    i.name,
                    i.count,
                    i.flags.join(" ").trim_end()
                );
            }
        }
    }
    s
}

fn human(n: u64) -> String {
    match n {
        0 => "0".into(),
        n if n % (1 << 30) == 0 => format!("{}G", n >> 30),
        n if n % (1 << 20) == 0 => format!("{}M", n >> 20),
        n if n % (1 << 10) == 0 => format!("{}K", n >> 10),
        n => n.to_string(),
    }
}

/// Raw config space like `lspci -xxx`.
pub fn render_hexdump(config: &[u8]) -> String {
    let mut s = String::new();
    for (i, row) in config.chunks(16).enumerate() {
        let _ = write!(s, "{:02x}:", i * 16);
        for b in row {
            let _ = write!(s, " {b:02x}");
        }
        s.push('\n');
    }
    s
}
