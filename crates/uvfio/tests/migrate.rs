//! Live migration of the sample drivers over vfio-user: with our client
//! against an in-process server, then `uvfio migrate` (the real binary)
//! between two `uvfio serve` processes.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use uvfio_core::{DmaPerm, GroupId, MigFlags, Registry, SharedMemory};
use uvfio_drivers::{dma, mtty};
use uvfio_user::proto::MigState;
use uvfio_user::{Client, ClientError, Server, ServerConfig};

use common::{bin, Daemon};

const CONFIG: u32 = 7;
/// UART registers (byte offsets in BAR0).
const RBR: u64 = 0;
const IER: u64 = 1;
const LCR: u64 = 3;
const MCR: u64 = 4;
const LSR: u64 = 5;
const MSR: u64 = 6;
const SCR: u64 = 7;

fn reg8(c: &Client, off: u64) -> u8 {
    let mut b = [0u8];
    c.region_read(0, off, &mut b).unwrap();
    b[0]
}

fn put8(c: &Client, off: u64, v: u8) {
    c.region_write(0, off, &[v]).unwrap();
}

/// The UART registers that reading does not change.
fn uart_regs(c: &Client) -> Vec<u8> {
    [IER, LCR, MCR, LSR, MSR, SCR]
        .iter()
        .map(|&o| reg8(c, o))
        .collect()
}

/// Programs the UART and sends "hello" (the transmitter loops back into
/// the receive FIFO).
fn program_uart(c: &Client) {
    put8(c, LCR, 0x03); // 8N1
    put8(c, MCR, 0x0b); // DTR|RTS|OUT2
    put8(c, SCR, 0x5a);
    put8(c, IER, 0x01); // RDI
    for b in b"hello" {
        put8(c, RBR, *b); // THR
    }
    assert_eq!(reg8(c, LSR) & 0x01, 0x01, "LSR.DR on the source");
}

fn read_fifo(c: &Client, n: usize) -> Vec<u8> {
    (0..n).map(|_| reg8(c, RBR)).collect()
}

/// What a VMM does; returns the stream (pre-copy, then stop-copy).
fn migrate(src: &Client, dst: &Client) -> Vec<u8> {
    assert!(src.migration_flags().unwrap().contains(MigFlags::PRE_COPY));
    dst.set_mig_state(MigState::Resuming).unwrap();
    src.set_mig_state(MigState::PreCopy).unwrap();
    let mut stream = Vec::new();
    loop {
        let d = src.mig_read(4096).unwrap();
        dst.mig_write(&d).unwrap();
        stream.extend_from_slice(&d);
        if d.len() < 4096 {
            break;
        }
    }
    assert!(!stream.is_empty(), "pre-copy carries the header");
    src.set_mig_state(MigState::StopCopy).unwrap();
    loop {
        let d = src.mig_read(4096).unwrap();
        dst.mig_write(&d).unwrap();
        stream.extend_from_slice(&d);
        if d.len() < 4096 {
            break;
        }
    }
    dst.set_mig_state(MigState::Running).unwrap();
    src.set_mig_state(MigState::Stop).unwrap();
    stream
}

fn mtty_dev(reg: &Registry, name: &str, group: u32) -> mtty::MttyDevice {
    mtty::create(
        reg,
        name,
        GroupId(group),
        &mtty::MttyOptions {
            ty: mtty::MttyType::Single,
            pool: mtty::MttyPool::default(),
        },
    )
    .unwrap()
}

#[test]
fn client_migrates_an_mtty_fifo_between_devices_over_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::default();
    let server = Server::new(reg.clone(), ServerConfig::new(dir.path().join("s"))).unwrap();
    let a = mtty_dev(&reg, "a", 1);
    let b = mtty_dev(&reg, "b", 2);
    let c = mtty_dev(&reg, "c", 3);
    let src = Client::connect(server.socket_path("a").unwrap()).unwrap();
    let dst = Client::connect(server.socket_path("b").unwrap()).unwrap();
    program_uart(&src);
    let before = uart_regs(&src);
    let stream = migrate(&src, &dst);
    assert_eq!(uart_regs(&dst), before, "registers carried over");
    assert_eq!(read_fifo(&dst, 5), b"hello");
    assert_eq!(reg8(&dst, LSR) & 0x01, 0, "FIFO drained");
    // The source stays stopped and answers config/region reads only.
    assert_eq!(src.mig_state().unwrap(), MigState::Stop);
    assert_eq!(
        src.device_info().unwrap_err().errno(),
        Errno::INVAL,
        "filtered while stopped"
    );

    // A corrupted copy of the stream (the length of its first section):
    // the destination refuses it and is left in ERROR.
    let bad_dst = Client::connect(server.socket_path("c").unwrap()).unwrap();
    let mut bad = stream.clone();
    bad[20] ^= 0x40;
    bad_dst.set_mig_state(MigState::Resuming).unwrap();
    bad_dst.mig_write(&bad).unwrap();
    let e = bad_dst.set_mig_state(MigState::Running).unwrap_err();
    assert!(matches!(e, ClientError::Server { errno, .. } if errno == Errno::INVAL));
    assert_eq!(bad_dst.mig_state().unwrap(), MigState::Error);
    // A truncated one too.
    drop(bad_dst);
    let bad_dst = connect_retry(&server.socket_path("c").unwrap());
    bad_dst.set_mig_state(MigState::Resuming).unwrap();
    bad_dst.mig_write(&stream[..stream.len() - 1]).unwrap();
    assert!(bad_dst.set_mig_state(MigState::Running).is_err());
    assert_eq!(bad_dst.mig_state().unwrap(), MigState::Error);

    drop((src, dst, bad_dst));
    server.shutdown();
    for d in [a, b, c] {
        mtty::remove(d);
    }
}

/// Reads the migration stream until a short read: the end of pre-copy's
/// data for now, or of the stream in STOP_COPY.
fn read_to_short_read(src: &Client) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let d = src.mig_read(1 << 16).unwrap();
        out.extend_from_slice(&d);
        if d.len() < 1 << 16 {
            return out;
        }
    }
}

#[test]
fn ram_bar_written_through_the_clients_mapping_during_precopy_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::default();
    let server = Server::new(reg.clone(), ServerConfig::new(dir.path().join("s"))).unwrap();
    let opts = dma::DmaOptions::default();
    let a = dma::create(&reg, "a", GroupId(1), &opts).unwrap();
    let b = dma::create(&reg, "b", GroupId(2), &opts).unwrap();
    let src = Client::connect(server.socket_path("a").unwrap()).unwrap();
    let dst = Client::connect(server.socket_path("b").unwrap()).unwrap();
    let bar = u32::from(dma::DMA_RAM_BAR);
    let view = src.region_info(bar).unwrap().map_area(0).unwrap();
    view.write_at(0x10, b"written before").unwrap();
    view.write_at(0x5000, b"untouched page").unwrap();

    dst.set_mig_state(MigState::Resuming).unwrap();
    src.set_mig_state(MigState::PreCopy).unwrap();
    let pre = read_to_short_read(&src);
    assert!(
        pre.len() as u64 > opts.ram_size,
        "pre-copy carries the RAM BAR ({} bytes)",
        pre.len()
    );
    // The device still runs: its user writes through the mapping, which
    // the server never sees.
    view.write_at(0x10, b"written during").unwrap();
    view.write_at(0x3ffc, b"spans").unwrap();
    let remaining = src.stop_copy_size().unwrap();
    src.set_mig_state(MigState::StopCopy).unwrap();
    let rest = read_to_short_read(&src);
    // Three changed pages (0, 3 and 4) and the fixed sections: far less
    // than the BAR.
    assert!(
        rest.len() < 4 * 4096 + 2048,
        "stop-copy resends only changed pages ({} bytes)",
        rest.len()
    );
    assert!(
        remaining < rest.len() as u64,
        "the estimate counts no change"
    );
    for chunk in [pre, rest] {
        dst.mig_write(&chunk).unwrap();
    }
    dst.set_mig_state(MigState::Running).unwrap();
    src.set_mig_state(MigState::Stop).unwrap();

    let read = |off: u64, n: usize| {
        let mut v = vec![0u8; n];
        dst.region_read(bar, off, &mut v).unwrap();
        v
    };
    assert_eq!(read(0x10, 14), b"written during");
    assert_eq!(read(0x3ffc, 5), b"spans");
    assert_eq!(read(0x5000, 14), b"untouched page");
    drop((view, src, dst));
    server.shutdown();
    drop((a.unregister(), b.unregister()));
}

// ---------------------------------------------------------------------------
// Two `uvfio serve` processes and `uvfio migrate`.

/// Connects, retrying while the previous client is still detaching
/// (`EBUSY`); 20 s hang guard.
fn connect_retry(path: &Path) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Client::connect(path) {
            Ok(c) => return c,
            Err(ClientError::Server { errno, .. })
                if errno == Errno::BUSY && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("connect {}: {e}", path.display()),
        }
    }
}

fn migrate_cli(from: &Path, to: &Path, extra: &[&str]) -> Output {
    bin()
        .arg("migrate")
        .arg("--from")
        .arg(from)
        .arg("--to")
        .arg(to)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("spawn migrate")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn uvfio_migrate_moves_an_mtty_between_two_servers() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::with_devices(&tmp.path().join("a"), &["mtty:ser0", "gpio:io0"]);
    let b = Daemon::with_devices(&tmp.path().join("b"), &["mtty:ser0", "gpio:io0"]);
    let before = {
        let c = connect_retry(&a.sock("ser0"));
        program_uart(&c);
        uart_regs(&c)
    };
    let out = migrate_cli(&a.sock("ser0"), &b.sock("ser0"), &[]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "migrate failed: {}{stdout}",
        text(&out.stderr)
    );
    for want in [
        "4348:3253  STOP_COPY|PRE_COPY",
        "destination  RESUMING",
        "source       PRE_COPY",
        "pre-copy     round 1:",
        "source       STOP_COPY",
        "destination  RUNNING",
        "source       STOP",
        "migrated ",
    ] {
        assert!(stdout.contains(want), "{want:?} missing from:\n{stdout}");
    }
    assert!(!stdout.contains('\r'), "no live lines when not a terminal");
    let c = connect_retry(&b.sock("ser0"));
    assert_eq!(uart_regs(&c), before, "registers carried over");
    assert_eq!(read_fifo(&c, 5), b"hello");
    drop(c);

    // mtty → gpio: the destination refuses the foreign stream.
    let out = migrate_cli(&a.sock("ser0"), &b.sock("io0"), &["--precopy-rounds", "0"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("uvfio: "), "{err}");
    assert!(
        err.contains("destination refused the stream (left in ERROR)"),
        "{err}"
    );
    assert!(err.contains("source resumed RUNNING"), "{err}");
    // The source really runs again, its state untouched: the FIFO still
    // holds "hello" (migrating copies) and takes more.
    let c = connect_retry(&a.sock("ser0"));
    put8(&c, RBR, b'!');
    assert_eq!(read_fifo(&c, 6), b"hello!");
    drop(c);

    // A destination that is not there, the same socket twice: exit 1,
    // one line.
    for (from, to) in [
        (a.sock("ser0"), tmp.path().join("missing.sock")),
        (a.sock("ser0"), a.sock("ser0")),
    ] {
        let out = migrate_cli(&from, &to, &[]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            text(&out.stderr).lines().count(),
            1,
            "{}",
            text(&out.stderr)
        );
    }
    assert!(out_is_usage_error(&bin().arg("migrate").output().unwrap()));
    let help = bin().args(["migrate", "--help"]).output().unwrap();
    assert!(help.status.success());
    assert!(text(&help.stdout).contains("Examples:\n  uvfio migrate --from"));
}

fn out_is_usage_error(o: &Output) -> bool {
    o.status.code() == Some(2) && o.status.signal().is_none()
}

#[test]
fn uvfio_migrate_moves_a_dma_engine_after_live_dma_with_dirty_logging() {
    const MSIX: u32 = 2;
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::with_devices(&tmp.path().join("a"), &["dma:dma0"]);
    let b = Daemon::with_devices(&tmp.path().join("b"), &["dma:dma0"]);
    let regs = |c: &Client| {
        let mut v = [0u8; 0x30];
        c.region_read(0, 0, &mut v).unwrap();
        v
    };
    let (before, ram) = {
        let c = connect_retry(&a.sock("dma0"));
        let mem = SharedMemory::new("e2e-dirty", 1 << 16).unwrap();
        mem.write_at(0x100, &[0x42; 0x2000]).unwrap();
        c.dma_map_shared(0x10_0000, &mem, DmaPerm::READ | DmaPerm::WRITE)
            .unwrap();
        let irq = uvfio_core::irq::eventfd().unwrap();
        c.set_irq_eventfds(MSIX, 0, &[std::os::fd::AsFd::as_fd(&irq)])
            .unwrap();
        let mut cmd = [0u8; 2];
        c.region_read(CONFIG, 4, &mut cmd).unwrap();
        let cmd = u16::from_le_bytes(cmd) | 0x6; // MEM | BUS_MASTER
        c.region_write(CONFIG, 4, &cmd.to_le_bytes()).unwrap();
        assert_eq!(c.start_dirty_logging(4096, &[]).unwrap(), 4096);
        let w = |off: u64, v: u32| c.region_write(0, off, &v.to_le_bytes()).unwrap();
        // Copy 8 KiB from 0x10_0100 to 0x10_8800: the device writes pages
        // 8, 9 and 10 of the mapping (reads dirty nothing).
        w(0x08, 0x10_0100);
        w(0x0c, 0);
        w(0x10, 0x10_8800);
        w(0x14, 0);
        w(0x18, 0x2000);
        w(0x1c, 0);
        w(0x20, 1);
        let mut st = [0u8; 4];
        c.region_read(0, 0x24, &mut st).unwrap();
        assert_eq!(u32::from_le_bytes(st) & 0x6, 0x2, "DONE, no ERROR");
        let words = c.report_dirty(0x10_0000, 1 << 16, 4096).unwrap();
        assert_eq!(words, vec![0b111 << 8], "the pages the device wrote");
        let mut out = [0u8; 0x2000];
        mem.read_at(0x8800, &mut out).unwrap();
        assert_eq!(out, [0x42; 0x2000]);
        // Reported pages are clean until the device writes again.
        assert_eq!(c.report_dirty(0x10_0000, 1 << 16, 4096).unwrap(), vec![0]);
        c.stop_dirty_logging().unwrap();
        // Something in the RAM BAR (BAR2) too.
        c.region_write(2, 0x40, b"ram bar contents").unwrap();
        (regs(&c), b"ram bar contents")
    };
    let out = migrate_cli(&a.sock("dma0"), &b.sock("dma0"), &[]);
    assert!(
        out.status.success(),
        "migrate failed: {}{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    let c = connect_retry(&b.sock("dma0"));
    assert_eq!(regs(&c), before, "engine registers carried over");
    let mut got = [0u8; 16];
    c.region_read(2, 0x40, &mut got).unwrap();
    assert_eq!(&got, ram);
}
