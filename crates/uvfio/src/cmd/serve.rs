//! `uvfio serve`: builds the devices, registers them, serves them over
//! vfio-user and owns the control socket, until SIGINT/SIGTERM.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use signal_hook::consts::{SIGINT, SIGTERM};
use uvfio_core::{Registry, RegistryConfig};
use uvfio_user::server::{Server, ServerConfig};

use crate::cli::ServeArgs;
use crate::control::{self, InstanceInfo, Request, Response};
use crate::devices::{Catalog, Instance};
use crate::sockfile;
use crate::spec::{default_dir, Config, DeviceSpec};

/// The running daemon: what the control socket acts on.
struct Daemon {
    dir: PathBuf,
    registry: Registry,
    server: Mutex<Option<Server>>,
    closing: std::sync::atomic::AtomicBool,
    catalog: Catalog,
    instances: Mutex<BTreeMap<String, Box<dyn Instance>>>,
}

impl Daemon {
    fn create(&self, spec: &DeviceSpec) -> anyhow::Result<(String, PathBuf)> {
        if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
            bail!("the server is shutting down");
        }
        let mut instances = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        let name = match &spec.name {
            Some(n) => n.clone(),
            None => (0..)
                .map(|i| format!("{}{i}", spec.ty))
                .find(|n| !instances.contains_key(n))
                .unwrap_or_default(),
        };
        if instances.contains_key(&name) {
            bail!("an instance named {name:?} exists");
        }
        let inst = self.catalog.create(&self.registry, &name, spec)?;
        let socket = self
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|s| s.socket_path(&name))
            .with_context(|| {
                format!("{name}: the server could not listen on its socket (see log)")
            })?;
        instances.insert(name.clone(), inst);
        Ok((name, socket))
    }

    fn remove(&self, name: &str, timeout: Option<Duration>) -> anyhow::Result<()> {
        let inst = self
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .with_context(|| format!("no instance named {name:?}"))?;
        inst.remove(timeout).map_err(|holders| {
            anyhow::anyhow!(
                "{name}: still held by {} after the timeout; it is unlinked and will be released when they let go",
                holders.join(", ")
            )
        })
    }

    fn list(&self) -> Response {
        let clients: BTreeMap<String, Vec<String>> = self
            .registry
            .devices()
            .into_iter()
            .map(|d| (d.name, d.holders))
            .collect();
        let instances = self
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|i| InstanceInfo {
                name: i.name().to_owned(),
                ty: i.type_name().to_owned(),
                socket: self.dir.join(format!("{}.sock", i.name())),
                clients: clients.get(i.name()).cloned().unwrap_or_default(),
            })
            .collect();
        Response::List {
            types: self.catalog.types(),
            instances,
        }
    }

    fn handle(&self, req: Request) -> Response {
        let r = match req {
            Request::Create { spec } => self
                .create(&spec)
                .map(|(name, socket)| Response::Created { name, socket }),
            Request::Remove { name, timeout_ms } => self
                .remove(&name, timeout_ms.map(Duration::from_millis))
                .map(|()| Response::Removed { name }),
            Request::List => Ok(self.list()),
        };
        r.unwrap_or_else(|e| Response::Error {
            message: format!("{e:#}"),
        })
    }

    /// Unregisters everything (clients see the request first and get the
    /// grace period), then stops the server.
    fn shutdown(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let all: Vec<Box<dyn Instance>> =
            std::mem::take(&mut *self.instances.lock().unwrap_or_else(|e| e.into_inner()))
                .into_values()
                .collect();
        for inst in all {
            let name = inst.name().to_owned();
            if let Err(holders) = inst.remove(None) {
                tracing::warn!("{name}: still held by {holders:?}");
            }
        }
        if let Some(server) = self.server.lock().unwrap_or_else(|e| e.into_inner()).take() {
            server.shutdown();
        }
    }
}

/// Runs the daemon.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let dir = args
        .dir
        .clone()
        .or(config.dir.clone())
        .unwrap_or_else(default_dir);
    let poll = config.poll;
    let mut specs = config.devices;
    specs.extend(args.devices.iter().cloned());
    if specs.is_empty() {
        specs = vec![
            "mtty:mtty0".parse().expect("valid built-in spec"),
            "gpio:gpio0".parse().expect("valid built-in spec"),
        ];
    }
    if !(args.grace.is_finite() && args.grace >= 0.0) {
        bail!("--grace must be a non-negative number of seconds");
    }
    let catalog = Catalog::new();
    // Fail on unknown types and bad options before touching the filesystem.
    for s in &specs {
        catalog.check(s)?;
    }
    sockfile::ensure_dir(&dir)?;
    // A live server already owns this folder: refuse rather than steal.
    sockfile::prepare(&dir.join(control::CONTROL_SOCKET))?;
    for s in &specs {
        if let Some(n) = &s.name {
            sockfile::prepare(&dir.join(format!("{n}.sock")))?;
        }
    }

    let registry = Registry::new(RegistryConfig {
        request_interval: Duration::from_millis(500),
    });
    let server = Server::new(
        registry.clone(),
        ServerConfig::new(&dir)
            .grace_period(Duration::from_secs_f64(args.grace))
            .wait(args.poll.or(poll).unwrap_or_default()),
    )
    .with_context(|| format!("starting the server in {}", dir.display()))?;
    let daemon = Arc::new(Daemon {
        dir: dir.clone(),
        registry,
        server: Mutex::new(Some(server)),
        closing: Default::default(),
        catalog,
        instances: Mutex::new(BTreeMap::new()),
    });

    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let mut stdout = std::io::stdout().lock();
    for s in &specs {
        let (name, socket) = daemon.create(s)?;
        writeln!(stdout, "{name} {}", socket.display())?;
    }
    stdout.flush()?;
    drop(stdout);

    let d2 = daemon.clone();
    let control_path = control::serve(&dir, Arc::new(move |req| d2.handle(req)))?;
    if let Some(ready) = &args.ready_file {
        write_ready(ready, &dir)?;
    }
    tracing::info!("serving in {}", dir.display());

    let sig = signals.forever().next();
    tracing::info!("signal {sig:?}: shutting down");
    let _ = std::fs::remove_file(&control_path);
    if let Some(ready) = &args.ready_file {
        let _ = std::fs::remove_file(ready);
    }
    daemon.shutdown();
    Ok(())
}

fn write_ready(path: &Path, dir: &Path) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{}\n", dir.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
