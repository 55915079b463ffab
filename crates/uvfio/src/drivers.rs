//! Glue from device specs to the sample drivers' constructors.

use anyhow::Context;
use uvfio_core::{GroupId, Registry};
use uvfio_drivers::{dma, gpio, mtty};

use crate::devices::{Catalog, Instance, Registered};
use crate::spec::DeviceSpec;

/// Creates and registers the device `spec` describes (already checked).
pub fn create(
    catalog: &Catalog,
    registry: &Registry,
    name: &str,
    group: GroupId,
    spec: &DeviceSpec,
) -> anyhow::Result<Box<dyn Instance>> {
    let opt = |k: &str| spec.options.get(k).map(String::as_str);
    Ok(match spec.ty.as_str() {
        "mtty" => {
            let ty = match opt("ports").unwrap_or("1") {
                "2" => mtty::MttyType::Dual,
                _ => mtty::MttyType::Single,
            };
            let dev = mtty::create(
                registry,
                name,
                group,
                &mtty::MttyOptions {
                    ty,
                    pool: catalog.mtty_pool().clone(),
                },
            )
            .with_context(|| format!("creating mtty {name:?}"))?;
            Box::new(Registered::new(dev, "mtty"))
        }
        "gpio" => {
            let dev = gpio::create(
                registry,
                name,
                group,
                &gpio::GpioOptions {
                    loopback: opt("loopback") == Some("true"),
                    initial_inputs: 0,
                },
            )
            .with_context(|| format!("creating gpio {name:?}"))?;
            Box::new(Registered::new(dev, "gpio"))
        }
        "dma" => {
            let mut options = dma::DmaOptions::default();
            if let Some(r) = opt("ram") {
                options.ram_size = crate::devices::ram_size(r)?;
            }
            let dev = dma::create(registry, name, group, &options)
                .with_context(|| format!("creating dma {name:?}"))?;
            Box::new(Registered::new(dev, "dma"))
        }
        other => anyhow::bail!("unknown device type {other:?}"),
    })
}
