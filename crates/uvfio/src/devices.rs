//! The device types the command can create, and instances as trait
//! objects (the daemon holds devices of different driver types).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::bail;
use uvfio_core::{DeviceOps, GroupId, RegisteredDevice, Registry, UnregisterOptions};

use crate::control::TypeInfo;
use crate::spec::DeviceSpec;

/// A registered device of any driver type.
pub trait Instance: Send {
    /// Instance name.
    fn name(&self) -> &str;
    /// Its type's name.
    fn type_name(&self) -> &'static str;
    /// Unregisters it, waiting for its client (at most `timeout`). On
    /// timeout it stays unlinked, a background thread finishes the wait,
    /// and the holders are returned.
    fn remove(self: Box<Self>, timeout: Option<Duration>) -> Result<(), Vec<String>>;
}

/// A [`RegisteredDevice`] with its type's name. The driver's data is
/// dropped once unregister hands it back (an mtty's ports return to the
/// pool then).
pub struct Registered<D: DeviceOps> {
    dev: RegisteredDevice<D>,
    type_name: &'static str,
}

impl<D: DeviceOps> Registered<D> {
    /// Wraps a registered device.
    pub fn new(dev: RegisteredDevice<D>, type_name: &'static str) -> Self {
        Registered { dev, type_name }
    }
}

impl<D: DeviceOps> Instance for Registered<D> {
    fn name(&self) -> &str {
        self.dev.name()
    }
    fn type_name(&self) -> &'static str {
        self.type_name
    }
    fn remove(self: Box<Self>, timeout: Option<Duration>) -> Result<(), Vec<String>> {
        let opts = UnregisterOptions {
            timeout,
            ..Default::default()
        };
        // The driver's data returned by unregister is dropped here.
        match self.dev.unregister_with(&opts) {
            Ok(_) => Ok(()),
            Err(pending) => {
                let holders = pending.holders();
                std::thread::spawn(move || {
                    let mut p = pending;
                    while let Err(again) = p.wait(&UnregisterOptions::default()) {
                        p = again;
                    }
                });
                Err(holders)
            }
        }
    }
}

/// The creatable device types.
pub struct Catalog {
    next_group: AtomicU32,
    mtty_pool: uvfio_drivers::mtty::MttyPool,
}

impl Default for Catalog {
    fn default() -> Self {
        Self::new()
    }
}

const TYPES: [(&str, &str); 3] = [
    (
        "mtty",
        "16550 serial port(s), like the kernel's mtty sample (ports=1|2)",
    ),
    (
        "gpio",
        "16-in/16-out digital I/O card (loopback=true|false)",
    ),
    ("dma", "memcpy DMA engine with MSI-X completion"),
];

impl Catalog {
    /// The built-in types.
    pub fn new() -> Self {
        Catalog {
            next_group: AtomicU32::new(1),
            mtty_pool: uvfio_drivers::mtty::MttyPool::default(),
        }
    }

    /// Types with their available instance counts.
    pub fn types(&self) -> Vec<TypeInfo> {
        TYPES
            .iter()
            .map(|(name, description)| TypeInfo {
                name: (*name).to_owned(),
                description: (*description).to_owned(),
                available_instances: match *name {
                    "mtty" => self
                        .mtty_pool
                        .available_instances(uvfio_drivers::mtty::MttyType::Single),
                    _ => u32::MAX,
                },
            })
            .collect()
    }

    /// Validates a spec without creating anything.
    pub fn check(&self, spec: &DeviceSpec) -> anyhow::Result<()> {
        let allowed: &[&str] = match spec.ty.as_str() {
            "mtty" => &["ports"],
            "gpio" => &["loopback"],
            "dma" => &[],
            other => bail!(
                "unknown device type {other:?} (known: {})",
                TYPES.map(|t| t.0).join(", ")
            ),
        };
        for k in spec.options.keys() {
            if !allowed.contains(&k.as_str()) {
                bail!("device type {:?} has no option {k:?}", spec.ty);
            }
        }
        if let Some(p) = spec.options.get("ports") {
            if p != "1" && p != "2" {
                bail!("mtty: ports must be 1 or 2, not {p:?}");
            }
        }
        if let Some(l) = spec.options.get("loopback") {
            if l != "true" && l != "false" {
                bail!("gpio: loopback must be true or false, not {l:?}");
            }
        }
        Ok(())
    }

    /// Creates and registers an instance named `name` in its own group.
    pub fn create(
        &self,
        registry: &Registry,
        name: &str,
        spec: &DeviceSpec,
    ) -> anyhow::Result<Box<dyn Instance>> {
        self.check(spec)?;
        let group = GroupId(self.next_group.fetch_add(1, Ordering::Relaxed));
        crate::drivers::create(self, registry, name, group, spec)
    }

    /// The mtty port pool.
    pub fn mtty_pool(&self) -> &uvfio_drivers::mtty::MttyPool {
        &self.mtty_pool
    }
}
