//! `uvfio info SOCKET`: an `lspci -vv` of any vfio-user device.

use std::time::Duration;

use anyhow::Context;
use uvfio_user::proto::{self, RegionCap};
use uvfio_user::{Client, ClientConfig};

use crate::cli::InfoArgs;
use crate::lspci::{self, DeviceAccess, RegionReport};

/// [`DeviceAccess`] over a vfio-user client.
pub struct ClientAccess<'a>(pub &'a Client);

impl DeviceAccess for ClientAccess<'_> {
    fn device_info(&mut self) -> anyhow::Result<(u32, u32, u32)> {
        let i = self.0.device_info()?;
        Ok((i.flags, i.num_regions, i.num_irqs))
    }

    fn region_info(&mut self, index: u32) -> anyhow::Result<RegionReport> {
        let r = self.0.region_info(index)?;
        Ok(region_report(index, &r.info))
    }

    fn irq_info(&mut self, index: u32) -> anyhow::Result<(u32, u32)> {
        let i = self.0.irq_info(index)?;
        Ok((i.flags, i.count))
    }

    fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        Ok(self.0.region_read(index, offset, buf)?)
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> anyhow::Result<()> {
        Ok(self.0.region_write(index, offset, data)?)
    }
}

/// The report's view of a region description from the wire.
pub fn region_report(index: u32, info: &proto::RegionInfo) -> RegionReport {
    let mut flags = Vec::new();
    for (bit, name) in [(1u32, "READ"), (2, "WRITE"), (4, "MMAP")] {
        if info.flags & bit != 0 {
            flags.push(name);
        }
    }
    let mut sparse_areas = Vec::new();
    let mut caps = Vec::new();
    for c in &info.caps {
        match c {
            RegionCap::SparseMmap(areas) => {
                sparse_areas.extend(areas.iter().map(|a| (a.offset, a.size)))
            }
            RegionCap::Type { type_, subtype } => {
                caps.push(format!("type={type_:#x}/{subtype:#x}"))
            }
            RegionCap::MsixMappable => caps.push("msix-mappable".to_owned()),
        }
    }
    RegionReport {
        index,
        name: String::new(),
        size: info.size,
        flags,
        sparse_areas,
        caps,
    }
}

/// Runs the command.
pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let client = Client::connect_with(
        &args.socket,
        ClientConfig::default().timeout(Duration::from_secs(10)),
    )
    .with_context(|| format!("connecting to {}", args.socket.display()))?;
    let report = lspci::build(&mut ClientAccess(&client))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if args.hexdump {
        print!("{}", lspci::render_hexdump(&report.config));
    } else {
        print!(
            "{}",
            lspci::render_text(&report, &args.socket.display().to_string())
        );
    }
    client.shutdown();
    Ok(())
}
