//! mtty: the kernel's `samples/vfio-mdev/mtty.c` — a virtual PCI serial
//! card with one or two 16550 ports whose transmitter loops back into its
//! receiver.
//!
//! **Identity**: PCI 4348:3253 (subsystem the same), revision 0x10, class
//! 07/00/02, INTA, no capabilities; vendor bytes at 0x40–0x4c and the text
//! "PCI Serial/UART" at 0x60. COMMAND reads 0x0001 and STATUS 0x0200.
//!
//! **Config writes** ([`config`]): COMMAND/STATUS ignored, interrupt line
//! stored, pin read only; BAR0/BAR1 are 8-byte I/O BARs — all-ones reads
//! back `0xfffffff9`, other values are stored with the low 2 bits kept
//! (BAR1 stays 0 on a single-port card); everything else is logged and
//! dropped. The CONFIG region reports size 0xff, as the sample does.
//!
//! **Regions**: BAR0 (port 0) and BAR1 (port 1, dual only), 8 bytes each;
//! every region reports READ|WRITE, no mmap, no RESET. Accesses are split
//! 4/2/1 bytes and the UART uses byte 0 of each piece ([`uart`]).
//!
//! **Interrupts**: one per card, shared by both ports: MSI (1 vector) if
//! its eventfd is bound, else INTx (automasked; the user unmasks). INTx and
//! MSI are exclusive; MSI-X, ERR and REQ report EINVAL (IRQ info) and
//! ENOTTY (SET_IRQS).
//!
//! **Migration** (as the sample since v6.7): STOP_COPY, PRE_COPY and P2P
//! (no-op arcs). The PCI layer carries config space and interrupt state
//! and quiesces the interrupt while stopped; the function section is the
//! sample's layout: a header {[`MTTY_MIG_MAGIC`], major 1, minor 0,
//! `nr_ports`, flags 0} and one [`uart::UART_STATE_LEN`]-byte record per
//! port (registers, FIFO contents and counters, divisor, DLAB, overrun).
//! A destination with another port count, a bad header or an impossible
//! port record refuses the stream (EINVAL). Interrupts raised while the
//! card is stopped are delivered when it runs again in MSI mode; in INTx
//! mode they are dropped, as the sample's INTx is a pulse (raise, then
//! lower) and a lowered line has nothing to deliver. mtty reports no
//! RESET, so a destination left in ERROR recovers by being reopened.
//!
//! **Types**: "1" (one port) and "2" (two ports) draw from a shared pool of
//! [`MAX_MTTYS`] ports ([`MttyPool`]); `available_instances` is free ports
//! divided by ports per type. A device holds its ports until it is dropped
//! (after unregister), like the sample frees them in `release`.

pub mod config;
pub mod uart;

use std::str::FromStr;
use std::sync::{Arc, Mutex};

use uvfio_core::{Errno, GroupId, RegisteredDevice, Registry, Result};
use uvfio_pci::{
    ConfigSpace, ConfigWrite, FunctionMigration, PciDevice, PciFunction, PciHandle, StateReader,
    StateWriter,
};

use crate::DriverError;
use uart::Uart;

/// Ports in the pool, as the sample's `MAX_MTTYS`.
pub const MAX_MTTYS: u32 = 24;

/// Magic of mtty's migration state (the sample's `MTTY_MAGIC`).
pub const MTTY_MIG_MAGIC: u64 = 0x7e9d_0989_8c3e_2c4e;
/// Major version of mtty's migration state.
pub const MTTY_MIG_MAJOR: u16 = 1;
/// Minor version of mtty's migration state.
pub const MTTY_MIG_MINOR: u16 = 0;
/// Bytes of mtty's migration header.
pub const MTTY_MIG_HEADER_LEN: usize = 20;

/// An mtty type: how many ports an instance has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MttyType {
    /// Type "1": one port.
    Single,
    /// Type "2": two ports.
    Dual,
}

impl MttyType {
    /// Ports of this type.
    pub fn ports(self) -> u32 {
        match self {
            MttyType::Single => 1,
            MttyType::Dual => 2,
        }
    }

    /// The mdev type name: "1" or "2".
    pub fn name(self) -> &'static str {
        match self {
            MttyType::Single => "1",
            MttyType::Dual => "2",
        }
    }
}

impl FromStr for MttyType {
    type Err = DriverError;
    fn from_str(s: &str) -> std::result::Result<Self, DriverError> {
        match s {
            "1" => Ok(MttyType::Single),
            "2" => Ok(MttyType::Dual),
            _ => Err(DriverError::InvalidOption {
                name: "mtty type",
                value: s.to_owned(),
            }),
        }
    }
}

/// The shared pool of ports instances are carved from. Clones share it.
#[derive(Debug, Clone)]
pub struct MttyPool {
    free: Arc<Mutex<u32>>,
}

impl Default for MttyPool {
    fn default() -> Self {
        Self::new(MAX_MTTYS)
    }
}

impl MttyPool {
    /// A pool of `ports` ports.
    pub fn new(ports: u32) -> Self {
        MttyPool {
            free: Arc::new(Mutex::new(ports)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u32> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Free ports.
    pub fn free_ports(&self) -> u32 {
        *self.lock()
    }

    /// How many more instances of `ty` can be created.
    pub fn available_instances(&self, ty: MttyType) -> u32 {
        self.free_ports() / ty.ports()
    }

    /// Takes the ports of one `ty` instance; they return when the
    /// reservation is dropped.
    pub fn reserve(&self, ty: MttyType) -> std::result::Result<PortReservation, DriverError> {
        let mut free = self.lock();
        let n = ty.ports();
        if *free < n {
            return Err(DriverError::PoolExhausted {
                requested: n,
                available: *free,
            });
        }
        *free -= n;
        Ok(PortReservation {
            pool: self.clone(),
            ports: n,
        })
    }
}

/// Ports taken from an [`MttyPool`]; given back on drop.
#[derive(Debug)]
pub struct PortReservation {
    pool: MttyPool,
    ports: u32,
}

impl Drop for PortReservation {
    fn drop(&mut self) {
        *self.pool.lock() += self.ports;
    }
}

/// The mtty function: its ports and its interrupt.
#[derive(Debug)]
pub struct Mtty {
    ty: MttyType,
    ports: Vec<Mutex<Uart>>,
    irq: PciHandle,
    _reservation: PortReservation,
}

impl Mtty {
    /// The type.
    pub fn ty(&self) -> MttyType {
        self.ty
    }

    /// Number of ports.
    pub fn nr_ports(&self) -> usize {
        self.ports.len()
    }

    /// A copy of port `port`'s state.
    pub fn port(&self, port: usize) -> Option<Uart> {
        self.ports
            .get(port)
            .map(|p| p.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// The sample's `mtty_trigger_interrupt`: MSI if bound, else INTx
    /// (which the sample never holds asserted: it is edge-like).
    fn fire(&self, times: u32) {
        for _ in 0..times {
            if let Err(e) = self.irq.raise(0) {
                tracing::debug!("mtty: interrupt not delivered: {e}");
            }
            self.irq.lower_intx();
        }
    }

    fn uart(&self, bar: u8) -> Option<std::sync::MutexGuard<'_, Uart>> {
        self.ports
            .get(usize::from(bar))
            .map(|p| p.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl PciFunction for Mtty {
    fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]) -> Result<()> {
        data.fill(0);
        let Some(mut u) = self.uart(bar) else {
            data.fill(0xff);
            return Ok(());
        };
        let (v, fires) = u.read((offset & 7) as u8);
        drop(u);
        data[0] = v;
        self.fire(fires);
        Ok(())
    }

    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) -> Result<()> {
        let Some(mut u) = self.uart(bar) else {
            return Ok(());
        };
        let fires = u.write((offset & 7) as u8, data[0]);
        drop(u);
        self.fire(fires);
        Ok(())
    }

    fn config_write(&self, config: &mut ConfigSpace, offset: u16, data: &[u8]) -> ConfigWrite {
        config::config_write(self.ty, config, offset, data)
    }

    fn migration(&self) -> Option<&dyn FunctionMigration> {
        Some(self)
    }
}

impl FunctionMigration for Mtty {
    fn save_state(&self, out: &mut Vec<u8>) -> Result<()> {
        let mut w = StateWriter::new();
        w.header(
            &MTTY_MIG_MAGIC.to_le_bytes(),
            MTTY_MIG_MAJOR,
            MTTY_MIG_MINOR,
        )
        .u32(self.ports.len() as u32)
        .u32(0);
        // Lock every port first: one consistent snapshot.
        let ports: Vec<_> = (0..self.ports.len())
            .filter_map(|i| self.uart(i as u8))
            .collect();
        for p in &ports {
            w.bytes(&p.to_bytes());
        }
        out.extend_from_slice(&w.into_vec());
        Ok(())
    }

    fn load_state(&self, data: &[u8]) -> Result<()> {
        let mut r = StateReader::new(data);
        let _minor = r.header(&MTTY_MIG_MAGIC.to_le_bytes(), MTTY_MIG_MAJOR)?;
        let nr_ports = r.u32()?;
        if nr_ports as usize != self.ports.len() || r.u32()? != 0 {
            tracing::warn!(nr_ports, "mtty: migration state does not fit this device");
            return Err(Errno::INVAL);
        }
        let ports = (0..nr_ports)
            .map(|_| Uart::from_bytes(r.bytes(uart::UART_STATE_LEN)?).ok_or(Errno::INVAL))
            .collect::<Result<Vec<_>>>()?;
        r.finish()?;
        let mut locked: Vec<_> = (0..self.ports.len())
            .filter_map(|i| self.uart(i as u8))
            .collect();
        for (dst, src) in locked.iter_mut().zip(ports) {
            **dst = src;
        }
        Ok(())
    }
}

/// How to create an mtty instance.
#[derive(Debug, Clone)]
pub struct MttyOptions {
    /// Single or dual port.
    pub ty: MttyType,
    /// The pool to take ports from.
    pub pool: MttyPool,
}

/// A registered mtty.
pub type MttyDevice = RegisteredDevice<PciDevice<Mtty>>;

/// Creates and registers an mtty instance called `name` in `group`.
/// Fails with [`DriverError::PoolExhausted`] when the pool lacks ports.
pub fn create(
    registry: &Registry,
    name: &str,
    group: GroupId,
    options: &MttyOptions,
) -> std::result::Result<MttyDevice, DriverError> {
    let ty = options.ty;
    let reservation = options.pool.reserve(ty)?;
    let device = PciDevice::new(config::pci_config(ty), |irq| Mtty {
        ty,
        ports: (0..ty.ports())
            .map(|_| Mutex::new(Uart::default()))
            .collect(),
        irq,
        _reservation: reservation,
    })?;
    crate::register(registry, name, group, device)
}

/// Unregisters an mtty (waiting for its users) and returns its ports.
pub fn remove(device: MttyDevice) {
    drop(device.unregister());
}

#[cfg(test)]
mod tests;
