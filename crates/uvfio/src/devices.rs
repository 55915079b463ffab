//! The device types the command can create, and instances as trait
//! objects (the daemon holds devices of different driver types).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
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
    (
        "dma",
        "memcpy DMA engine with MSI-X completion and an mmap-able RAM BAR (ram=4K..1G)",
    ),
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
            "dma" => &["ram"],
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
        if let Some(r) = spec.options.get("ram") {
            ram_size(r)?;
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

/// The dma engine's `ram=` option: a size with an optional K/M/G suffix
/// (powers of 1024), a power of two from 4 KiB to 1 GiB.
pub fn ram_size(v: &str) -> anyhow::Result<u64> {
    let (digits, unit) = match v.as_bytes().last() {
        Some(b'K' | b'k') => (&v[..v.len() - 1], 1u64 << 10),
        Some(b'M' | b'm') => (&v[..v.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    let n: u64 = digits
        .parse()
        .ok()
        .and_then(|n: u64| n.checked_mul(unit))
        .with_context(|| format!("dma: ram must be a size like 64K or 16M, not {v:?}"))?;
    if !n.is_power_of_two() || !(4096..=1 << 30).contains(&n) {
        bail!("dma: ram must be a power of two from 4K to 1G, not {v:?}");
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::ram_size;

    #[test]
    fn ram_size_takes_powers_of_two_from_4k_to_1g_with_suffixes() {
        assert_eq!(ram_size("4K").unwrap(), 4096);
        assert_eq!(ram_size("64k").unwrap(), 64 << 10);
        assert_eq!(ram_size("16M").unwrap(), 16 << 20);
        assert_eq!(ram_size("1G").unwrap(), 1 << 30);
        assert_eq!(ram_size("8192").unwrap(), 8192);
        for bad in [
            "",
            "K",
            "3K",
            "2K",
            "2G",
            "-4K",
            "4KB",
            "99999999999999999999G",
            "1.5M",
        ] {
            assert!(ram_size(bad).is_err(), "{bad:?}");
        }
    }
}
