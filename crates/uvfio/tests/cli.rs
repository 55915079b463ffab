//! The real `uvfio` binary: serve, info, create/remove/list, shutdown on
//! SIGTERM, and the documented errors.

mod common;

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Output, Stdio};

use common::{bin, Daemon};
use std::time::{Duration, Instant};

fn run(args: &[&str]) -> Output {
    bin()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn uvfio")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn serve_default_set_info_create_remove_and_sigterm_cleanup() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), &[]);

    let info = run(&["info", &d.sock_arg("mtty0")]);
    assert!(info.status.success(), "{}", stderr(&info));
    let text = stdout(&info);
    assert!(text.contains("Device 4348:3253 (rev 10)"), "{text}");
    assert!(text.contains("Serial controller [0700]"), "{text}");
    assert!(
        text.contains("Region 0: I/O ports at <unassigned> [size=8]"),
        "{text}"
    );

    let info = run(&["info", "--json", &d.sock_arg("gpio0")]);
    assert!(info.status.success(), "{}", stderr(&info));
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["vendor_id"], 0x1ee7);
    assert!(
        v["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == 5),
        "MSI listed"
    );
    assert_eq!(v["bars"][0]["size"], 4096);

    let hex = run(&["info", "--hexdump", &d.sock_arg("mtty0")]);
    assert!(
        stdout(&hex).starts_with("00: 48 43 53 32"),
        "{}",
        stdout(&hex)
    );

    let created = run(&[
        "create",
        "--dir",
        &d.dir_arg(),
        "mtty",
        "ser9",
        "--opt",
        "ports=2",
    ]);
    assert!(created.status.success(), "{}", stderr(&created));
    assert_eq!(
        stdout(&created).trim(),
        format!("ser9 {}", d.sock_arg("ser9"))
    );
    assert!(Path::new(&d.sock_arg("ser9")).exists());

    let list = run(&["list", "--dir", &d.dir_arg()]);
    let text = stdout(&list);
    // 24 ports: mtty0 took 1, ser9 took 2.
    assert!(
        text.lines()
            .any(|l| l.starts_with("mtty") && l.contains(" 21 ")),
        "{text}"
    );
    assert!(text.contains("ser9"), "{text}");

    // A dma engine with a larger RAM BAR; the size shows in `info`.
    let big = run(&[
        "create",
        "--dir",
        &d.dir_arg(),
        "dma",
        "big",
        "--opt",
        "ram=1M",
    ]);
    assert!(big.status.success(), "{}", stderr(&big));
    let info = stdout(&run(&["info", &d.sock_arg("big")]));
    assert!(
        info.contains("Region 2: Memory") && info.contains("[size=1M]"),
        "{info}"
    );
    let odd = run(&[
        "create",
        "--dir",
        &d.dir_arg(),
        "dma",
        "odd",
        "--opt",
        "ram=3M",
    ]);
    assert_eq!(odd.status.code(), Some(1));
    assert!(stderr(&odd).contains("power of two"), "{}", stderr(&odd));
    assert!(run(&["remove", "--dir", &d.dir_arg(), "big"])
        .status
        .success());

    let dup = run(&["create", "--dir", &d.dir_arg(), "gpio", "ser9"]);
    assert_eq!(dup.status.code(), Some(1));
    assert!(stderr(&dup).contains("exists"), "{}", stderr(&dup));

    let removed = run(&["remove", "--dir", &d.dir_arg(), "ser9", "--timeout", "5"]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    assert!(!Path::new(&d.sock_arg("ser9")).exists());
    let gone = run(&["remove", "--dir", &d.dir_arg(), "ser9"]);
    assert_eq!(gone.status.code(), Some(1));

    let dir = d.dir.clone();
    let (status, out) = d.stop();
    assert!(status.success(), "exit {status:?}");
    assert!(out.contains("mtty0 "), "{out}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "sockets left behind: {left:?}");
}

#[test]
fn bad_arguments_give_documented_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s").display().to_string();
    // Usage errors: exit 2.
    assert_eq!(run(&["serve", "--bogus"]).status.code(), Some(2));
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(run(&["serve", "--poll", "spin:5s"]).status.code(), Some(2));
    assert_eq!(
        run(&["serve", "--device", "mtty,ports"]).status.code(),
        Some(2)
    );
    // Runtime errors: exit 1 and one line naming the problem.
    let o = run(&["serve", "--dir", &dir, "--device", "floppy"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("unknown device type \"floppy\""), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    let o = run(&["serve", "--dir", &dir, "--device", "mtty,ports=3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("ports must be 1 or 2"),
        "{}",
        stderr(&o)
    );
    let o = run(&["list", "--dir", &dir]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no uvfio server"), "{}", stderr(&o));
    // Every subcommand has help with examples.
    for sub in ["serve", "create", "remove", "list", "info", "bench"] {
        let o = run(&[sub, "--help"]);
        assert!(o.status.success());
        assert!(stdout(&o).contains("Example"), "{sub}: {}", stdout(&o));
    }
}

#[test]
fn live_socket_is_refused_and_stale_socket_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let sdir = tmp.path().join("s");
    std::fs::create_dir(&sdir).unwrap();
    // A live listener owns gpio0.sock.
    let live = UnixListener::bind(sdir.join("gpio0.sock")).unwrap();
    let o = run(&[
        "serve",
        "--dir",
        &sdir.display().to_string(),
        "--device",
        "gpio:gpio0",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("in use by a live server"),
        "{}",
        stderr(&o)
    );
    drop(live); // the file stays: now it is stale
    assert!(sdir.join("gpio0.sock").exists());
    let d = Daemon::with_devices(tmp.path(), &["gpio:gpio0"]);
    let info = run(&["info", &d.sock_arg("gpio0")]);
    assert!(info.status.success(), "{}", stderr(&info));
    let (status, _) = d.stop();
    assert!(status.success());
}

#[test]
fn serve_reads_devices_and_folder_from_a_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let sdir = tmp.path().join("s");
    let cfg = tmp.path().join("devices.toml");
    std::fs::write(
        &cfg,
        format!(
            "dir = \"{}\"\n[[device]]\ntype = \"mtty\"\nname = \"ser2\"\nports = 2\n[[device]]\ntype = \"dma\"\nname = \"copy0\"\n",
            sdir.display()
        ),
    )
    .unwrap();
    let ready = tmp.path().join("ready");
    let mut child = bin()
        .args([
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--ready-file",
            ready.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "server never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let list = run(&["list", "--dir", sdir.to_str().unwrap()]);
    let text = stdout(&list);
    assert!(text.contains("ser2") && text.contains("copy0"), "{text}");
    // Dual-port mtty: BAR1 is the second port.
    let info = run(&["info", "--json", sdir.join("ser2.sock").to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["bars"].as_array().unwrap().len(), 2, "{v}");
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(!sdir.join("ser2.sock").exists());
}

/// `bench --json` runs every part of the suite (tiny sizes) and reports
/// each row with finite, positive figures; what the figures are is not
/// asserted (tests do not judge timing).
#[test]
fn bench_json_reports_every_row() {
    let o = run(&[
        "bench",
        "--json",
        "--iterations",
        "100",
        "--devices",
        "3",
        "--clients",
        "3",
        "--scale-seconds",
        "0.1",
    ]);
    let rows = json_rows(&o);
    let names: Vec<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
    let mut want = vec![
        "message path (same core): 4 B region read",
        "  message path (same core): 4 B region read vs fd-capable ping-pong, client in a call",
        "message path (same core): 4 B region write",
        "message path (same core): 4 KiB region read",
        "  message path (same core, yield-polling): 4 B region read vs ping-pong yield-polling",
        "dma read 4 KiB",
        "dma write 1 MiB",
        "mmap'd BAR read 4 B",
        "mmap'd BAR write 4 B",
        "mmap'd BAR read 4 KiB",
        "mmap'd BAR write 4 KiB",
        "register+unregister",
        "unregister latency",
        "scale: 3 clients vs 1",
        "scale: resident memory per idle device",
        "scale: resident memory per connection",
    ];
    if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        want.push("message path (two cores): 4 B region read");
        want.push("  message path (two cores, spin-polling): 4 B region read vs raw ping-pong");
        want.push("scale: 3 clients on 2 CPUs vs on 1 CPU");
    }
    for w in want {
        assert!(
            names.iter().any(|n| n.starts_with(w)),
            "no row {w:?} in {names:?}"
        );
    }
    for r in &rows {
        // Resident memory of three devices can round to zero pages.
        for field in ["ours", "ratio"] {
            let v = r[field].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v >= 0.0, "{field} of {r}");
        }
        let base = r["baseline"].as_f64().unwrap_or(f64::NAN);
        assert!(base.is_finite() && base > 0.0, "baseline of {r}");
        if names_time(r) {
            assert!(r["ours"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
        }
        assert!(r["met"].is_boolean() || r["met"].is_null(), "{r}");
    }
    // The scale duration is checked like every other argument.
    assert_eq!(
        run(&["bench", "--scale-seconds", "0"]).status.code(),
        Some(2)
    );
}

/// The rows a successful `bench --json` printed.
fn json_rows(o: &Output) -> Vec<serde_json::Value> {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_str(&stdout(o)).expect("JSON rows")
}

/// A row that times something (its figure cannot be zero).
fn names_time(row: &serde_json::Value) -> bool {
    row["unit"]
        .as_str()
        .is_some_and(|u| u == "ns/op" || u == "ops/s")
}

/// A server started with `--poll` serves, and `bench --socket --poll`
/// measures it with a polling client against polling ping-pongs (reported,
/// not judged; no CPU rows for a server in another process).
#[test]
fn polling_server_and_polling_bench_client() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        tmp.path(),
        &["--device", "gpio:gpio0", "--poll", "yield:50us"],
    );
    let o = run(&[
        "bench",
        "--socket",
        &d.sock_arg("gpio0"),
        "--poll",
        "yield:50us",
        "--iterations",
        "100",
        "--json",
    ]);
    let rows = json_rows(&o);
    let names: Vec<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "  message path (same core, yield-polling): 4 B region read vs ping-pong yield-polling",
            "  message path (same core, yield-polling): 4 B region read vs raw ping-pong",
        ]
    );
    assert!(rows
        .iter()
        .all(|r| r["met"].is_null() && r["ours"].as_f64() > Some(0.0)));
    let (status, _) = d.stop();
    assert!(status.success());
}
