//! `PciDevice` migration through the in-process uAPI: what the stream
//! carries, quiescing while stopped, pre-copy, and validation.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use uvfio_core::irq::{eventfd, read_eventfd};
use uvfio_core::{
    Container, DeviceHandle, DmaPerm, Errno, GroupId, IommuType, IrqAction, IrqData, MigFlags,
    MigState, OpenDevice, RegisteredDevice, Registry, SetIrqs, SharedMemory,
};

use crate::index::*;
use crate::migration::*;
use crate::regs::*;
use crate::*;

const RAM_SIZE: u64 = 8192;
const TABLE: u32 = 0x800;
const PBA: u32 = 0xc00;

/// A function with one register (BAR0 offset 0) and a knob to fail loads.
#[derive(Default)]
struct Reg {
    value: AtomicU32,
    steps: std::sync::Mutex<Vec<(MigState, MigState)>>,
    no_migration: AtomicBool,
}

impl PciFunction for Reg {
    fn bar_read(&self, _bar: u8, offset: u64, data: &mut [u8]) -> uvfio_core::Result<()> {
        let v = if offset == 0 {
            self.value.load(Ordering::SeqCst)
        } else {
            0
        };
        data.copy_from_slice(&v.to_le_bytes()[..data.len()]);
        Ok(())
    }
    fn bar_write(&self, _bar: u8, offset: u64, data: &[u8]) -> uvfio_core::Result<()> {
        if offset == 0 && data.len() == 4 {
            let v = u32::from_le_bytes(data.try_into().unwrap());
            self.value.store(v, Ordering::SeqCst);
        }
        Ok(())
    }
    fn supports_reset(&self) -> bool {
        true
    }
    fn migration(&self) -> Option<&dyn FunctionMigration> {
        if self.no_migration.load(Ordering::SeqCst) {
            None
        } else {
            Some(self)
        }
    }
}

impl FunctionMigration for Reg {
    fn save_state(&self, out: &mut Vec<u8>) -> uvfio_core::Result<()> {
        out.extend_from_slice(b"REG1");
        out.extend_from_slice(&self.value.load(Ordering::SeqCst).to_le_bytes());
        Ok(())
    }
    fn load_state(&self, data: &[u8]) -> uvfio_core::Result<()> {
        let mut r = StateReader::new(data);
        if r.bytes(4)? != b"REG1" {
            return Err(Errno::INVAL);
        }
        let v = r.u32()?;
        r.finish()?;
        self.value.store(v, Ordering::SeqCst);
        Ok(())
    }
    fn step(&self, from: MigState, to: MigState) -> uvfio_core::Result<()> {
        self.steps.lock().unwrap().push((from, to));
        Ok(())
    }
}

fn config(device_id: u16) -> PciConfig {
    config_with_ram(
        device_id,
        Arc::new(SharedMemory::new("ram", RAM_SIZE).unwrap()),
    )
}

fn config_with_ram(device_id: u16, ram: Arc<SharedMemory>) -> PciConfig {
    let mut bars: [Option<Bar>; 6] = Default::default();
    bars[0] = Some(Bar::mem32(4096));
    bars[2] = Some(Bar::mem64(RAM_SIZE).with_memory(ram));
    PciConfig {
        header: PciHeader {
            vendor_id: 0x1ee7,
            device_id,
            interrupt_pin: 1,
            ..Default::default()
        },
        bars,
        capabilities: vec![
            Capability::Msix(MsixCap {
                table_size: 4,
                table_bar: 0,
                table_offset: TABLE,
                pba_bar: 0,
                pba_offset: PBA,
            }),
            Capability::PciExpress(PcieCap {
                flr: true,
                ..Default::default()
            }),
        ],
        ..Default::default()
    }
}

struct Side {
    handle: OpenDevice,
    pci: PciHandle,
    dev: Option<RegisteredDevice<PciDevice<Reg>>>,
    /// BAR2's memory, as a client's mapping of it sees it.
    ram: Arc<SharedMemory>,
}

impl Side {
    fn new(registry: &Registry, name: &str, group: u32, device_id: u16) -> Side {
        let ram = Arc::new(SharedMemory::new("ram", RAM_SIZE).unwrap());
        let dev =
            PciDevice::new(config_with_ram(device_id, ram.clone()), |_| Reg::default()).unwrap();
        let pci = dev.handle();
        let dev = registry
            .init(dev, name, GroupId(group))
            .unwrap()
            .register()
            .unwrap();
        let handle = registry.open_device(GroupId(group), name).unwrap();
        Side {
            handle,
            pci,
            dev: Some(dev),
            ram,
        }
    }

    fn f(&self) -> &Reg {
        self.dev.as_ref().unwrap().driver().function()
    }

    fn cfg(&self) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        self.handle
            .read(VFIO_PCI_CONFIG_REGION_INDEX, 0, &mut b)
            .unwrap();
        b
    }

    fn cfg_write(&self, off: u16, data: &[u8]) {
        self.handle
            .write(VFIO_PCI_CONFIG_REGION_INDEX, u64::from(off), data)
            .unwrap();
    }

    fn bar(&self, bar: u32, off: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.handle.read(bar, off, &mut b).unwrap();
        b
    }

    fn bar_write(&self, bar: u32, off: u64, data: &[u8]) {
        self.handle.write(bar, off, data).unwrap();
    }

    fn msix_cap(&self) -> u16 {
        self.pci
            .with_config(|c| c.capability_offset(PCI_CAP_ID_MSIX))
            .unwrap()
    }

    fn bind_msix(&self) -> Vec<OwnedFd> {
        let mine: Vec<OwnedFd> = (0..4).map(|_| eventfd().unwrap()).collect();
        let theirs = mine.iter().map(|f| Some(f.try_clone().unwrap())).collect();
        self.handle
            .set_irqs(SetIrqs {
                index: VFIO_PCI_MSIX_IRQ_INDEX,
                start: 0,
                count: 4,
                action: IrqAction::Trigger,
                data: IrqData::Eventfd(theirs),
            })
            .unwrap();
        mine
    }

    /// Memory + bus master, BARs programmed, MSI-X enabled with vector 0
    /// unmasked and vector 1 masked with a pending bit.
    fn program(&self) {
        self.cfg_write(PCI_BASE_ADDRESS_0, &0xfebf_0000u32.to_le_bytes());
        self.cfg_write(PCI_BASE_ADDRESS_0 + 8, &0xc000_000cu32.to_le_bytes());
        self.cfg_write(PCI_BASE_ADDRESS_0 + 12, &0x0000_0001u32.to_le_bytes());
        self.cfg_write(PCI_INTERRUPT_LINE, &[11]);
        let cmd = (Command::MEMORY | Command::MASTER).bits();
        self.cfg_write(PCI_COMMAND, &cmd.to_le_bytes());
        let cap = self.msix_cap();
        self.cfg_write(cap + PCI_MSIX_FLAGS, &PCI_MSIX_FLAGS_ENABLE.to_le_bytes());
        for v in 0..2u64 {
            let e = u64::from(TABLE) + v * 16;
            self.bar_write(0, e, &(0xfee0_0000u32 + v as u32).to_le_bytes());
            self.bar_write(0, e + 8, &(0x40u32 + v as u32).to_le_bytes());
        }
        self.bar_write(0, u64::from(TABLE) + 12, &0u32.to_le_bytes());
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        if let Some(dev) = self.dev.take() {
            std::mem::forget(dev);
        }
    }
}

/// Reads the whole saving stream (PRE_COPY reads end in ENOMSG, which
/// is returned as the end of this batch).
fn drain(h: &DeviceHandle) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 61];
    loop {
        match h.mig_read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e == Errno::NOMSG => return out,
            Err(e) => panic!("mig_read: {e}"),
        }
    }
}

fn resume(dst: &DeviceHandle, stream: &[u8]) -> uvfio_core::Result<MigState> {
    dst.set_mig_state(MigState::Resuming).unwrap();
    for chunk in stream.chunks(100) {
        dst.mig_write(chunk).unwrap();
    }
    dst.set_mig_state(MigState::Running)
}

fn save(src: &DeviceHandle) -> Vec<u8> {
    src.set_mig_state(MigState::StopCopy).unwrap();
    let s = drain(src);
    src.set_mig_state(MigState::Running).unwrap();
    s
}

#[test]
fn flags_all_and_no_migration_is_enotty() {
    let reg = Registry::default();
    let s = Side::new(&reg, "s", 1, 0x10);
    assert_eq!(s.handle.migration_flags().unwrap(), MigFlags::all());
    s.f().no_migration.store(true, Ordering::SeqCst);
    assert_eq!(s.handle.migration_flags().unwrap_err(), Errno::NOTTY);
}

#[test]
fn config_msix_ram_irq_and_function_state_carry_over_with_precopy() {
    let reg = Registry::default();
    let s = Side::new(&reg, "s", 1, 0x10);
    let d = Side::new(&reg, "d", 2, 0x10);
    s.program();
    let fds = s.bind_msix();
    // Vector 1 is masked: the raise latches its PBA bit.
    assert_eq!(s.pci.raise(1).unwrap(), Delivery::Latched);
    s.bar_write(0, 0, &0xdead_beefu32.to_le_bytes());
    s.bar_write(2, 0x1000, b"ram contents");
    let src_cfg = s.cfg();

    assert_eq!(
        s.handle.set_mig_state(MigState::PreCopy).unwrap(),
        MigState::PreCopy
    );
    let (initial, dirty) = s.handle.precopy_info().unwrap();
    assert!(initial > 0);
    assert_eq!(dirty, 0);
    let mut stream = drain(&s.handle);
    assert_eq!(stream.len() as u64, initial);
    let mut one = [0u8; 8];
    assert_eq!(s.handle.mig_read(&mut one).unwrap_err(), Errno::NOMSG);
    assert_eq!(s.handle.precopy_info().unwrap(), (0, 0));
    // Still running in PRE_COPY: interrupts are delivered.
    assert_eq!(s.pci.raise(0).unwrap(), Delivery::Signalled);
    assert_eq!(read_eventfd(&fds[0]).unwrap(), 1);

    // What STOP_COPY adds: nothing of the RAM changed since it was sent.
    let expect = s.handle.stop_copy_size().unwrap();
    s.handle.set_mig_state(MigState::StopCopy).unwrap();
    let rest = drain(&s.handle);
    assert_eq!(rest.len() as u64, expect, "MIG_DATA_SIZE is exact");
    stream.extend(rest);
    assert_eq!(s.handle.mig_read(&mut one).unwrap(), 0, "EOF stays EOF");

    assert_eq!(resume(&d.handle, &stream).unwrap(), MigState::Running);
    assert_eq!(d.cfg(), src_cfg, "config space byte for byte");
    assert_eq!(
        d.pci.with_config(|c| c.bar_address(2)).unwrap(),
        0x1_c000_0000
    );
    assert!(d.pci.with_config(|c| c.msix_enabled()));
    assert!(d.pci.bus_master_enabled());
    assert_eq!(
        d.bar(0, u64::from(TABLE), 64),
        s.bar(0, u64::from(TABLE), 64)
    );
    assert_eq!(d.bar(0, u64::from(PBA), 8)[0], 0b10, "vector 1 pending");
    assert_eq!(d.bar(2, 0x1000, 12), b"ram contents");
    assert_eq!(d.f().value.load(Ordering::SeqCst), 0xdead_beef);
    // The destination works: unmasking vector 1 delivers its pending bit.
    let dfds = d.bind_msix();
    d.bar_write(0, u64::from(TABLE) + 16 + 12, &0u32.to_le_bytes());
    assert_eq!(read_eventfd(&dfds[1]).unwrap(), 1);
    assert_eq!(d.bar(0, u64::from(PBA), 8)[0], 0);
    assert_eq!(
        d.f().steps.lock().unwrap().as_slice(),
        &[
            (MigState::Running, MigState::RunningP2p),
            (MigState::RunningP2p, MigState::Stop),
            (MigState::Stop, MigState::Resuming),
            (MigState::Resuming, MigState::Stop),
            (MigState::Stop, MigState::RunningP2p),
            (MigState::RunningP2p, MigState::Running),
        ]
    );
}

#[test]
fn stopped_device_latches_interrupts_refuses_dma_and_keeps_config_working() {
    let reg = Registry::default();
    let s = Side::new(&reg, "s", 1, 0x10);
    s.program();
    let fds = s.bind_msix();
    let shm = Arc::new(SharedMemory::new("host", 4096).unwrap());
    s.handle
        .container()
        .map_dma(
            0x10000,
            4096,
            DmaPerm::READ | DmaPerm::WRITE,
            shm.clone(),
            0,
        )
        .unwrap();
    s.pci.dma_write(0x10000, b"run").unwrap();

    s.handle.set_mig_state(MigState::Stop).unwrap();
    assert!(s.pci.is_stopped());
    assert_eq!(s.pci.raise(0).unwrap(), Delivery::Latched);
    assert_eq!(s.pci.raise(0).unwrap(), Delivery::Latched);
    assert_eq!(read_eventfd(&fds[0]).unwrap(), 0);
    assert_eq!(
        s.pci.dma_write(0x10000, b"stp").unwrap_err(),
        PciError::Stopped
    );
    let mut b = [0u8; 3];
    assert_eq!(
        s.pci.dma_read(0x10000, &mut b).unwrap_err(),
        PciError::Stopped
    );
    assert_eq!(s.pci.dma().unwrap_err(), PciError::Stopped);
    shm.read_at(0, &mut b).unwrap();
    assert_eq!(&b, b"run");
    // Config space and the MSI-X table still work; a pending vector that
    // gets unmasked is held back until RUNNING.
    assert_eq!(s.pci.raise(1).unwrap(), Delivery::Latched);
    s.cfg_write(PCI_INTERRUPT_LINE, &[5]);
    assert_eq!(s.cfg()[usize::from(PCI_INTERRUPT_LINE)], 5);
    let cap = s.msix_cap();
    let mask = PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL;
    s.cfg_write(cap + PCI_MSIX_FLAGS, &mask.to_le_bytes());
    s.cfg_write(cap + PCI_MSIX_FLAGS, &PCI_MSIX_FLAGS_ENABLE.to_le_bytes());
    assert_eq!(read_eventfd(&fds[0]).unwrap(), 0);

    s.handle.set_mig_state(MigState::Running).unwrap();
    assert!(!s.pci.is_stopped());
    assert_eq!(
        read_eventfd(&fds[0]).unwrap(),
        1,
        "coalesced, delivered once"
    );
    // Vector 1 is masked in its entry: it became pending instead.
    assert_eq!(read_eventfd(&fds[1]).unwrap(), 0);
    assert_eq!(s.bar(0, u64::from(PBA), 8)[0], 0b10);
    s.pci.dma_write(0x10000, b"ok!").unwrap();
    shm.read_at(0, &mut b).unwrap();
    assert_eq!(&b, b"ok!");
}

#[test]
fn stop_waits_for_dma_in_flight() {
    let reg = Registry::default();
    let s = Side::new(&reg, "s", 1, 0x10);
    s.program();
    let shm = Arc::new(SharedMemory::new("host", 1 << 20).unwrap());
    s.handle
        .container()
        .map_dma(0, 1 << 20, DmaPerm::READ | DmaPerm::WRITE, shm.clone(), 0)
        .unwrap();
    let quit = Arc::new(AtomicBool::new(false));
    let pci = s.pci.clone();
    let q = quit.clone();
    let writer = std::thread::spawn(move || {
        let data = vec![0xa5u8; 1 << 20];
        let mut ok = 0u32;
        while !q.load(Ordering::SeqCst) {
            if pci.dma_write(0, &data).is_ok() {
                ok += 1;
            }
        }
        ok
    });
    while shm_byte(&shm) != 0xa5 {
        std::thread::yield_now();
    }
    s.handle.set_mig_state(MigState::Stop).unwrap();
    // Nothing may land after STOP returned.
    shm.write_at(0, &vec![0u8; 1 << 20]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut b = vec![0u8; 1 << 20];
    shm.read_at(0, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    quit.store(true, Ordering::SeqCst);
    assert!(writer.join().unwrap() > 0);
}

fn shm_byte(shm: &SharedMemory) -> u8 {
    let mut b = [0u8];
    shm.read_at(0, &mut b).unwrap();
    b[0]
}

#[test]
fn interrupt_latched_on_source_is_delivered_by_destination() {
    let reg = Registry::default();
    let s = Side::new(&reg, "s", 1, 0x10);
    let d = Side::new(&reg, "d", 2, 0x10);
    s.program();
    let sfds = s.bind_msix();
    s.handle.set_mig_state(MigState::Stop).unwrap();
    assert_eq!(s.pci.raise(0).unwrap(), Delivery::Latched);
    s.handle.set_mig_state(MigState::StopCopy).unwrap();
    let stream = drain(&s.handle);
    let dfds = d.bind_msix();
    d.handle.set_mig_state(MigState::Resuming).unwrap();
    d.handle.mig_write(&stream).unwrap();
    d.handle.set_mig_state(MigState::Stop).unwrap();
    assert_eq!(read_eventfd(&dfds[0]).unwrap(), 0, "not while stopped");
    d.handle.set_mig_state(MigState::Running).unwrap();
    assert_eq!(read_eventfd(&dfds[0]).unwrap(), 1);
    assert_eq!(read_eventfd(&sfds[0]).unwrap(), 0);
}

#[test]
fn p2p_and_precopy_arcs_walk_every_path() {
    let reg = Registry::default();
    let s = Side::new(&reg, "s", 1, 0x10);
    let h = &s.handle;
    h.set_mig_state(MigState::RunningP2p).unwrap();
    assert!(!s.pci.is_stopped());
    h.set_mig_state(MigState::PreCopyP2p).unwrap();
    assert!(!drain(h).is_empty());
    h.set_mig_state(MigState::PreCopy).unwrap();
    h.set_mig_state(MigState::Running).unwrap();
    assert_eq!(h.mig_read(&mut [0u8; 4]).unwrap_err(), Errno::INVAL);
    h.set_mig_state(MigState::PreCopy).unwrap();
    h.set_mig_state(MigState::StopCopy).unwrap();
    assert!(s.pci.is_stopped());
    let full = drain(h);
    assert!(parse_stream(&full).is_ok());
    h.set_mig_state(MigState::Running).unwrap();
    assert!(!s.pci.is_stopped());
}

/// Owned sections of a stream, for corrupting.
type Sections = Vec<(u32, Vec<u8>)>;

#[test]
fn corrupt_streams_fail_resume_into_error_and_reset_recovers() {
    let reg = Registry::default();
    let s = Side::new(&reg, "s", 1, 0x10);
    let d = Side::new(&reg, "d", 2, 0x10);
    let other = Side::new(&reg, "o", 3, 0x11);
    s.program();
    s.bar_write(0, 0, &7u32.to_le_bytes());
    let good = save(&s.handle);
    let foreign = save(&other.handle);
    d.bar_write(0, 0, &0x55u32.to_le_bytes());
    let before = d.cfg();

    let sections = parse_stream(&good).unwrap();
    let rebuild = |f: &dyn Fn(&mut Sections)| {
        let mut secs: Sections = sections
            .iter()
            .map(|s| (s.id, s.payload.to_vec()))
            .collect();
        f(&mut secs);
        let mut w = StateWriter::new();
        w.header(&PCI_MIG_MAGIC.to_le_bytes(), 1, PCI_MIG_VERSION_MINOR)
            .u32(0);
        for (id, p) in secs {
            w.u32(id).u32(p.len() as u32).bytes(&p);
        }
        w.u32(SECTION_END).u32(0);
        w.into_vec()
    };
    assert_eq!(rebuild(&|_| {}), good, "rebuild is faithful");

    let mut bad_magic = good.clone();
    bad_magic[3] ^= 0x40;
    let mut bad_major = good.clone();
    bad_major[8] = 9;
    let mut bad_len = good.clone();
    bad_len[PCI_MIG_HEADER_LEN + 4] ^= 1;
    let mut trailing = good.clone();
    trailing.push(0);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("bad magic", bad_magic),
        ("bad major", bad_major),
        ("bad section length", bad_len),
        ("truncated header", good[..10].to_vec()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("no end", good[..good.len() - 8].to_vec()),
        ("trailing", trailing),
        ("other device", foreign),
        (
            "short config",
            rebuild(&|s| {
                s.iter_mut()
                    .find(|x| x.0 == SECTION_CONFIG)
                    .unwrap()
                    .1
                    .pop()
                    .map(drop)
                    .unwrap()
            }),
        ),
        (
            "missing irq",
            rebuild(&|s| s.retain(|x| x.0 != SECTION_IRQ)),
        ),
        (
            "duplicate function",
            rebuild(&|s| {
                let f = s.iter().find(|x| x.0 == SECTION_FUNCTION).unwrap().clone();
                s.push(f);
            }),
        ),
        ("unknown section", rebuild(&|s| s.push((77, vec![1])))),
        (
            "bad function state",
            rebuild(&|s| s.iter_mut().find(|x| x.0 == SECTION_FUNCTION).unwrap().1[0] = b'X'),
        ),
        (
            "bad msix control",
            rebuild(&|s| s.iter_mut().find(|x| x.0 == SECTION_MSIX).unwrap().1[12] = 2),
        ),
        (
            "ram for the wrong bar",
            rebuild(&|s| s.iter_mut().find(|x| x.0 == SECTION_RAM).unwrap().1[0] = 0),
        ),
        (
            "config: interrupt pin (read-only) changed",
            rebuild(&|s| config_byte(s, PCI_INTERRUPT_PIN, |b| b ^ 1)),
        ),
        (
            "config: vendor id changed",
            rebuild(&|s| config_byte(s, PCI_VENDOR_ID, |b| b ^ 0x80)),
        ),
        (
            "config: BAR0 made an I/O BAR",
            rebuild(&|s| config_byte(s, PCI_BASE_ADDRESS_0, |b| b | 1)),
        ),
        (
            "config: BAR2 address below its size",
            rebuild(&|s| config_byte(s, PCI_BASE_ADDRESS_0 + 8, |b| b | 0x10)),
        ),
        (
            "delta past the bar's end",
            rebuild(&|s| s.push(delta(2, &[(RAM_SIZE - 4, 8, 8)]))),
        ),
        (
            "empty delta run",
            rebuild(&|s| s.push(delta(2, &[(0, 0, 0)]))),
        ),
        (
            "delta offset overflow",
            rebuild(&|s| s.push(delta(2, &[(u64::MAX, 1, 1)]))),
        ),
        (
            "truncated delta run",
            rebuild(&|s| s.push(delta(2, &[(0, 16, 4)]))),
        ),
        (
            "delta for a bar without ram",
            rebuild(&|s| s.push(delta(0, &[(0, 4, 4)]))),
        ),
        (
            "delta without its ram section",
            rebuild(&|s| {
                s.retain(|x| x.0 != SECTION_RAM);
                s.push(delta(2, &[(0, 4, 4)]));
            }),
        ),
        (
            "two deltas for one bar",
            rebuild(&|s| {
                s.push(delta(2, &[(0, 4, 4)]));
                s.push(delta(2, &[(8, 4, 4)]));
            }),
        ),
    ];
    for (what, stream) in cases {
        assert_eq!(
            resume(&d.handle, &stream).unwrap_err(),
            Errno::INVAL,
            "{what}"
        );
        assert_eq!(d.handle.mig_state().unwrap(), MigState::Error, "{what}");
        assert!(d.pci.is_stopped(), "{what}: ERROR stays quiesced");
        assert_eq!(
            d.handle.set_mig_state(MigState::Running).unwrap_err(),
            Errno::INVAL
        );
        d.handle.reset().unwrap();
        assert_eq!(d.handle.mig_state().unwrap(), MigState::Running, "{what}");
        assert!(!d.pci.is_stopped());
        assert_eq!(
            d.f().value.load(Ordering::SeqCst),
            0x55,
            "{what}: nothing applied"
        );
        assert_eq!(d.cfg(), before, "{what}: nothing applied");
    }

    // A delta is applied over its RAM section.
    let patched = rebuild(&|s| s.push(delta(2, &[(0x1001, 3, 3)])));
    assert_eq!(resume(&d.handle, &patched).unwrap(), MigState::Running);
    assert_eq!(d.bar(2, 0x1000, 5), [0, 0xab, 0xab, 0xab, 0]);

    // An unknown optional section is skipped.
    let optional = rebuild(&|s| s.push((SECTION_OPTIONAL | 9, vec![1, 2, 3])));
    assert_eq!(resume(&d.handle, &optional).unwrap(), MigState::Running);
    assert_eq!(d.f().value.load(Ordering::SeqCst), 7);
}

/// Changes byte `off` of the CONFIG section with `f`.
fn config_byte(s: &mut Sections, off: u16, f: impl Fn(u8) -> u8) {
    let c = &mut s.iter_mut().find(|x| x.0 == SECTION_CONFIG).unwrap().1;
    c[usize::from(off)] = f(c[usize::from(off)]);
}

/// A RAM_DELTA section for `bar` with runs `(offset, len, bytes actually
/// present)`, filled with 0xab.
fn delta(bar: u32, runs: &[(u64, u64, usize)]) -> (u32, Vec<u8>) {
    let mut w = StateWriter::new();
    w.u32(bar).u32(0);
    for &(offset, len, have) in runs {
        w.u64(offset).u64(len).bytes(&vec![0xab; have]);
    }
    (SECTION_RAM_DELTA, w.into_vec())
}

#[test]
fn ram_changed_after_precopy_moves_as_a_delta_of_the_changed_pages() {
    let reg = Registry::default();
    let s = Side::new(&reg, "s", 1, 0x10);
    let d = Side::new(&reg, "d", 2, 0x10);
    s.program();
    s.bar_write(2, 0, b"first page, before");
    s.bar_write(2, 0x1000, b"second page, unchanged");

    s.handle.set_mig_state(MigState::PreCopy).unwrap();
    let pre = drain(&s.handle);
    let sections = parse_stream_prefix(&pre);
    assert_eq!(
        sections,
        [SECTION_DEVICE, SECTION_RAM],
        "pre-copy offers the RAM while the device runs"
    );
    // The client keeps writing: through the region (the server sees it)
    // and through its own mapping (nobody sees it).
    s.bar_write(2, 0, b"first page, after!");
    s.ram.write_at(0x20, b"zz").unwrap();

    s.handle.set_mig_state(MigState::StopCopy).unwrap();
    let rest = drain(&s.handle);
    let mut stream = pre.clone();
    stream.extend_from_slice(&rest);
    let all = parse_stream(&stream).unwrap();
    let ids: Vec<u32> = all.iter().map(|x| x.id).collect();
    assert_eq!(
        ids,
        [
            SECTION_DEVICE,
            SECTION_RAM,
            SECTION_CONFIG,
            SECTION_MSIX,
            SECTION_IRQ,
            SECTION_RAM_DELTA,
            SECTION_FUNCTION
        ]
    );
    // Exactly the changed page; the unchanged one is not resent.
    let d_payload = all[5].payload;
    let mut r = StateReader::new(d_payload);
    assert_eq!((r.u32().unwrap(), r.u32().unwrap()), (2, 0));
    let mut runs = Vec::new();
    while r.remaining() > 0 {
        let (off, len) = (r.u64().unwrap(), r.u64().unwrap());
        r.bytes(len as usize).unwrap();
        runs.push((off, len));
    }
    assert_eq!(runs, [(0, 0x1000)]);

    assert_eq!(resume(&d.handle, &stream).unwrap(), MigState::Running);
    assert_eq!(d.bar(2, 0, 18), b"first page, after!");
    assert_eq!(d.bar(2, 0x20, 2), b"zz");
    assert_eq!(d.bar(2, 0x1000, 22), b"second page, unchanged");
}

#[test]
fn precopy_without_changes_sends_no_delta_and_cancel_drops_the_copy() {
    let reg = Registry::default();
    let s = Side::new(&reg, "s", 1, 0x10);
    s.bar_write(2, 0x10, b"still");
    s.handle.set_mig_state(MigState::PreCopy).unwrap();
    drain(&s.handle);
    // Cancelled: back to RUNNING, and a new pre-copy starts from scratch.
    s.handle.set_mig_state(MigState::Running).unwrap();
    s.bar_write(2, 0x10, b"again");
    s.handle.set_mig_state(MigState::PreCopy).unwrap();
    let pre = drain(&s.handle);
    s.handle.set_mig_state(MigState::StopCopy).unwrap();
    let mut stream = pre;
    stream.extend(drain(&s.handle));
    let all = parse_stream(&stream).unwrap();
    assert!(all.iter().all(|x| x.id != SECTION_RAM_DELTA));
    let ram = all.iter().find(|x| x.id == SECTION_RAM).unwrap();
    assert_eq!(&ram.payload[8 + 0x10..8 + 0x15], b"again");
}

/// The section ids of a stream's beginning (no END needed).
fn parse_stream_prefix(data: &[u8]) -> Vec<u32> {
    let mut r = StateReader::new(&data[PCI_MIG_HEADER_LEN..]);
    let mut ids = Vec::new();
    while r.remaining() > 0 {
        ids.push(r.u32().unwrap());
        let len = r.u32().unwrap() as usize;
        r.bytes(len).unwrap();
    }
    ids
}

#[test]
fn oversized_resume_write_is_efbig_and_reopen_starts_running() {
    let reg = Registry::default();
    let dev = PciDevice::new(config(0x10), |_| Reg::default()).unwrap();
    let pci = dev.handle();
    let dev = reg.init(dev, "d", GroupId(4)).unwrap().register().unwrap();
    let container = Container::new();
    let g = reg.open_group(GroupId(4)).unwrap();
    g.set_container(&container).unwrap();
    container.set_iommu(IommuType::Type1v2).unwrap();
    let h = g.get_device("d").unwrap();
    h.set_mig_state(MigState::Resuming).unwrap();
    let big = vec![0u8; FUNCTION_STATE_MAX + (1 << 20)];
    assert_eq!(h.mig_write(&big).unwrap_err(), Errno::FBIG);
    h.mig_write(b"abc").unwrap();
    assert_eq!(h.set_mig_state(MigState::Stop).unwrap_err(), Errno::INVAL);
    assert!(pci.is_stopped());
    // The last close drops the session; the next open runs again.
    drop(h);
    assert!(!pci.is_stopped());
    let h = g.get_device("d").unwrap();
    assert_eq!(h.mig_state().unwrap(), MigState::Running);
    drop((h, g));
    dev.unregister();
}

#[test]
fn state_header_checks_magic_and_major_and_accepts_any_minor() {
    let mut w = StateWriter::new();
    w.header(b"MAGC", 2, 7).u8(0xaa);
    let bytes = w.into_vec();
    assert_eq!(bytes, [b'M', b'A', b'G', b'C', 2, 0, 7, 0, 0xaa]);

    let mut r = StateReader::new(&bytes);
    assert_eq!(r.header(b"MAGC", 2), Ok(7), "the minor comes back");
    assert_eq!(r.u8(), Ok(0xaa), "the reader stands after the header");

    assert_eq!(
        StateReader::new(&bytes).header(b"MAGD", 2),
        Err(Errno::INVAL)
    );
    assert_eq!(
        StateReader::new(&bytes).header(b"MAGC", 1),
        Err(Errno::INVAL)
    );
    assert_eq!(
        StateReader::new(&bytes[..5]).header(b"MAGC", 2),
        Err(Errno::INVAL),
        "truncated"
    );
}

#[test]
fn fill_with_appends_in_place_or_nothing() {
    let mut w = StateWriter::new();
    w.u8(1);
    w.fill_with(3, |b| {
        b.copy_from_slice(b"abc");
        Ok(())
    })
    .unwrap();
    assert_eq!(
        w.fill_with(5, |_| Err(Errno::FAULT)).unwrap_err(),
        Errno::FAULT
    );
    assert_eq!(w.into_vec(), [1, b'a', b'b', b'c']);
}
