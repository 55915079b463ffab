//! Running the real `uvfio` binary: shared by the CLI and migration tests.

#![allow(dead_code)] // each test crate uses a different part

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The `uvfio` binary, with `RUST_LOG` unset.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_uvfio"));
    c.env_remove("RUST_LOG");
    c
}

/// A `uvfio serve` child with its sockets in `DIR/s` and its ready file at
/// `DIR/ready`; SIGTERM (then SIGKILL after 30 s) on drop.
pub struct Daemon {
    child: Child,
    /// The socket folder.
    pub dir: PathBuf,
}

impl Daemon {
    /// `uvfio serve --dir DIR/s --ready-file DIR/ready --grace 0.5 ARGS…`,
    /// once it is ready.
    pub fn start(dir: &Path, args: &[&str]) -> Daemon {
        let ready = dir.join("ready");
        let sock_dir = dir.join("s");
        let child = bin()
            .arg("serve")
            .arg("--dir")
            .arg(&sock_dir)
            .arg("--ready-file")
            .arg(&ready)
            .args(["--grace", "0.5"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serve");
        // Hang guard only.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            assert!(Instant::now() < deadline, "server never became ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon {
            child,
            dir: sock_dir,
        }
    }

    /// [`Daemon::start`] with one `--device` per spec.
    pub fn with_devices(dir: &Path, devices: &[&str]) -> Daemon {
        let args: Vec<&str> = devices.iter().flat_map(|d| ["--device", d]).collect();
        Self::start(dir, &args)
    }

    /// The socket of device `name`.
    pub fn sock(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    /// The same, as a command-line argument.
    pub fn sock_arg(&self, name: &str) -> String {
        self.sock(name).display().to_string()
    }

    /// The socket folder as a command-line argument.
    pub fn dir_arg(&self) -> String {
        self.dir.display().to_string()
    }

    fn terminate(&mut self) -> Option<ExitStatus> {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().ok().flatten() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status and everything it printed.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let status = self.terminate().expect("server did not exit on SIGTERM");
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            o.read_to_string(&mut out).expect("read stdout");
        }
        (status, out)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate();
        }
    }
}
