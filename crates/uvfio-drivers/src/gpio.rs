//! gpio: a 16-input / 16-output digital I/O card.
//!
//! PCI `1ee7:0001` ([`crate::UVFIO_VENDOR_ID`]), class 08/80 (other system
//! peripheral), INTA, capabilities PM and MSI (1 vector, 64-bit, maskable).
//!
//! ## Register map (BAR0: 4 KiB, 32-bit memory)
//!
//! | offset | name         | access | meaning                                        |
//! |--------|--------------|--------|------------------------------------------------|
//! | 0x00   | `INPUT`      | RO     | bits 15:0 = input pin levels                   |
//! | 0x04   | `OUTPUT`     | RW     | bits 15:0 = output pin levels                  |
//! | 0x08   | `IRQ_ENABLE` | RW     | bits 15:0 = inputs whose changes interrupt     |
//! | 0x0C   | `IRQ_STATUS` | RW1C   | bits 15:0 = enabled inputs that changed        |
//! | 0x10   | `ID`         | RO     | [`GPIO_ID`] (`"GP"`, version 1.0)              |
//! | 0x14   | `CAPS`       | RO     | 7:0 inputs (16), 15:8 outputs (16), bit 16 loopback |
//!
//! Other offsets read 0 and ignore writes; bits 31:16 of the pin registers
//! read 0. Accesses of 1, 2 or 4 bytes are allowed; a narrow write to
//! `IRQ_STATUS` clears only the bits of the bytes written.
//!
//! ## Interrupts
//!
//! A change of an input pin (either edge) whose `IRQ_ENABLE` bit is set
//! latches its `IRQ_STATUS` bit; when that sets a bit that was clear, the
//! card raises its interrupt (MSI if enabled, else INTx). INTx is level:
//! it stays asserted until `IRQ_STATUS` is cleared to 0.
//!
//! Inputs are driven from the device side with [`Gpio::set_inputs`] /
//! [`Gpio::set_input`] (e.g. by a CLI through
//! `device.driver().function()`). With the *loopback* option, every write
//! to `OUTPUT` drives the inputs to the same levels, so a client alone can
//! toggle outputs and see inputs change with an interrupt.
//!
//! ## Migration
//!
//! STOP_COPY, PRE_COPY and P2P (no-op arcs). The PCI layer carries config
//! space (MSI configuration included) and latched interrupts; the card's
//! own section is [`GPIO_MIG_MAGIC`], major 1, minor 0, then the input,
//! output, IRQ enable and IRQ status registers (u16 each) and the
//! loopback option (a destination takes the source's). While stopped,
//! input changes still latch `IRQ_STATUS`, and their interrupt is
//! delivered when the card runs again.

use std::sync::{Mutex, MutexGuard};

use uvfio_core::{Errno, GroupId, RegisteredDevice, Registry, Result};
use uvfio_pci::{
    Bar, Capability, Delivery, FunctionMigration, MsiCap, PciConfig, PciDevice, PciError,
    PciFunction, PciHandle, PciHeader, PmCap, StateReader, StateWriter,
};

use crate::{DriverError, UVFIO_VENDOR_ID};

/// The gpio card's device ID.
pub const GPIO_DEVICE_ID: u16 = 0x0001;
/// Input levels (RO).
pub const GPIO_REG_INPUT: u64 = 0x00;
/// Output levels (RW).
pub const GPIO_REG_OUTPUT: u64 = 0x04;
/// Interrupt enable per input (RW).
pub const GPIO_REG_IRQ_ENABLE: u64 = 0x08;
/// Latched input changes (RW1C).
pub const GPIO_REG_IRQ_STATUS: u64 = 0x0c;
/// Identification (RO).
pub const GPIO_REG_ID: u64 = 0x10;
/// Capabilities (RO).
pub const GPIO_REG_CAPS: u64 = 0x14;
/// Value of the ID register.
pub const GPIO_ID: u32 = 0x4750_0100;
/// Number of input pins and of output pins.
pub const GPIO_PINS: u8 = 16;
/// Size of BAR0.
pub const GPIO_BAR0_SIZE: u64 = 4096;
/// Magic of the card's migration state (`"GPIO"`).
pub const GPIO_MIG_MAGIC: u32 = u32::from_le_bytes(*b"GPIO");
/// Major version of the card's migration state.
pub const GPIO_MIG_MAJOR: u16 = 1;
/// Minor version of the card's migration state.
pub const GPIO_MIG_MINOR: u16 = 0;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Pins {
    input: u16,
    output: u16,
    irq_enable: u16,
    irq_status: u16,
    loopback: bool,
}

/// The gpio function.
#[derive(Debug)]
pub struct Gpio {
    pins: Mutex<Pins>,
    irq: PciHandle,
}

impl Gpio {
    fn lock(&self) -> MutexGuard<'_, Pins> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drives all 16 input pins; returns how the interrupt was delivered if
    /// the change raised one.
    pub fn set_inputs(&self, levels: u16) -> std::result::Result<Option<Delivery>, PciError> {
        let newly = {
            let mut p = self.lock();
            let changed = p.input ^ levels;
            p.input = levels;
            let latch = changed & p.irq_enable;
            let newly = latch & !p.irq_status;
            p.irq_status |= latch;
            newly
        };
        if newly == 0 {
            return Ok(None);
        }
        self.irq.raise(0).map(Some)
    }

    /// Drives one input pin (0–15).
    pub fn set_input(
        &self,
        pin: u8,
        level: bool,
    ) -> std::result::Result<Option<Delivery>, DriverError> {
        if pin >= GPIO_PINS {
            return Err(DriverError::PinInvalid(pin));
        }
        let bit = 1u16 << pin;
        let cur = self.inputs();
        let next = if level { cur | bit } else { cur & !bit };
        Ok(self.set_inputs(next)?)
    }

    /// Input levels.
    pub fn inputs(&self) -> u16 {
        self.lock().input
    }

    /// Output levels (what the client wrote).
    pub fn outputs(&self) -> u16 {
        self.lock().output
    }

    /// Latched interrupt status.
    pub fn irq_status(&self) -> u16 {
        self.lock().irq_status
    }

    /// Inputs whose changes interrupt.
    pub fn irq_enable(&self) -> u16 {
        self.lock().irq_enable
    }

    /// Whether outputs drive the inputs.
    pub fn loopback(&self) -> bool {
        self.lock().loopback
    }

    fn read_reg(&self, reg: u64) -> u32 {
        let p = self.lock();
        match reg {
            GPIO_REG_INPUT => u32::from(p.input),
            GPIO_REG_OUTPUT => u32::from(p.output),
            GPIO_REG_IRQ_ENABLE => u32::from(p.irq_enable),
            GPIO_REG_IRQ_STATUS => u32::from(p.irq_status),
            GPIO_REG_ID => GPIO_ID,
            GPIO_REG_CAPS => {
                u32::from(GPIO_PINS) | (u32::from(GPIO_PINS) << 8) | (u32::from(p.loopback) << 16)
            }
            _ => 0,
        }
    }

    /// Applies `value` under `mask` (the bytes written) to register `reg`.
    fn write_reg(&self, reg: u64, value: u32, mask: u32) -> std::result::Result<(), PciError> {
        let merge = |old: u16| ((u32::from(old) & !mask) | (value & mask)) as u16;
        let mut loop_to = None;
        let mut lower = false;
        {
            let mut p = self.lock();
            match reg {
                GPIO_REG_OUTPUT => {
                    p.output = merge(p.output);
                    if p.loopback {
                        loop_to = Some(p.output);
                    }
                }
                GPIO_REG_IRQ_ENABLE => p.irq_enable = merge(p.irq_enable),
                GPIO_REG_IRQ_STATUS => {
                    p.irq_status &= !((value & mask) as u16);
                    lower = p.irq_status == 0;
                }
                _ => tracing::debug!(reg, "gpio: write to read-only register dropped"),
            }
        }
        if lower {
            self.irq.lower_intx();
        }
        if let Some(levels) = loop_to {
            self.set_inputs(levels)?;
        }
        Ok(())
    }
}

impl PciFunction for Gpio {
    fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]) -> Result<()> {
        if bar != 0 {
            data.fill(0xff);
            return Ok(());
        }
        crate::read_dword_piece(offset, self.read_reg(offset & !3), data);
        Ok(())
    }

    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) -> Result<()> {
        if bar != 0 {
            return Ok(());
        }
        let (reg, value, mask) = crate::write_dword_piece(offset, data);
        if let Err(e) = self.write_reg(reg, value, mask) {
            tracing::debug!("gpio: loopback interrupt not delivered: {e}");
        }
        Ok(())
    }

    fn migration(&self) -> Option<&dyn FunctionMigration> {
        Some(self)
    }
}

impl FunctionMigration for Gpio {
    fn save_state(&self, out: &mut Vec<u8>) -> Result<()> {
        let p = *self.lock();
        let mut w = StateWriter::new();
        w.header(
            &GPIO_MIG_MAGIC.to_le_bytes(),
            GPIO_MIG_MAJOR,
            GPIO_MIG_MINOR,
        )
        .u16(p.input)
        .u16(p.output)
        .u16(p.irq_enable)
        .u16(p.irq_status)
        .bool(p.loopback)
        .bytes(&[0; 3]);
        out.extend_from_slice(&w.into_vec());
        Ok(())
    }

    fn load_state(&self, data: &[u8]) -> Result<()> {
        let mut r = StateReader::new(data);
        let _minor = r.header(&GPIO_MIG_MAGIC.to_le_bytes(), GPIO_MIG_MAJOR)?;
        let p = Pins {
            input: r.u16()?,
            output: r.u16()?,
            irq_enable: r.u16()?,
            irq_status: r.u16()?,
            loopback: r.bool()?,
        };
        if r.bytes(3)? != [0; 3] {
            return Err(Errno::INVAL);
        }
        r.finish()?;
        *self.lock() = p;
        Ok(())
    }
}

/// How to create a gpio card.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpioOptions {
    /// Outputs drive the inputs.
    pub loopback: bool,
    /// Input levels at creation.
    pub initial_inputs: u16,
}

/// A registered gpio card.
pub type GpioDevice = RegisteredDevice<PciDevice<Gpio>>;

/// The PCI declaration of the card.
pub fn pci_config() -> PciConfig {
    let mut bars: [Option<Bar>; 6] = Default::default();
    bars[0] = Some(Bar::mem32(GPIO_BAR0_SIZE));
    PciConfig {
        header: PciHeader {
            vendor_id: UVFIO_VENDOR_ID,
            device_id: GPIO_DEVICE_ID,
            subsystem_vendor_id: UVFIO_VENDOR_ID,
            subsystem_id: GPIO_DEVICE_ID,
            revision: 1,
            class_code: 0x08,
            subclass: 0x80,
            interrupt_pin: 1,
            ..Default::default()
        },
        bars,
        capabilities: vec![
            Capability::PowerManagement(PmCap::default()),
            Capability::Msi(MsiCap::default()),
        ],
        ..Default::default()
    }
}

/// Creates and registers a gpio card called `name` in `group`.
pub fn create(
    registry: &Registry,
    name: &str,
    group: GroupId,
    options: &GpioOptions,
) -> std::result::Result<GpioDevice, DriverError> {
    let device = PciDevice::new(pci_config(), |irq| Gpio {
        pins: Mutex::new(Pins {
            input: options.initial_inputs,
            loopback: options.loopback,
            ..Default::default()
        }),
        irq,
    })?;
    crate::register(registry, name, group, device)
}

#[cfg(test)]
mod tests {
    use uvfio_core::irq::read_eventfd;
    use uvfio_core::GroupId;
    use uvfio_pci::index::*;
    use uvfio_pci::regs::{PCI_CAP_ID_MSI, PCI_MSI_FLAGS, PCI_MSI_MASK_64, PCI_STATUS};

    use super::*;
    use crate::testutil::User;

    fn make(options: GpioOptions) -> (Registry, GpioDevice, User) {
        let registry = Registry::default();
        let dev = create(&registry, "gpio0", GroupId(5), &options).unwrap();
        let user = User::open(&registry, GroupId(5), "gpio0");
        (registry, dev, user)
    }

    #[test]
    fn id_caps_and_config_identity() {
        let (_r, _d, u) = make(GpioOptions::default());
        assert_eq!(u.read32(0, GPIO_REG_ID), GPIO_ID);
        assert_eq!(u.read32(0, GPIO_REG_CAPS), 0x1010);
        assert_eq!(u.cfg_read32(0), 0x0001_1ee7);
        assert_eq!(u.cfg_read32(8) >> 16, 0x0880);
    }

    #[test]
    fn set_inputs_from_device_side_reads_in_input_register() {
        let (_r, d, u) = make(GpioOptions::default());
        d.driver().function().set_inputs(0xa5a5).unwrap();
        assert_eq!(u.read32(0, GPIO_REG_INPUT), 0xa5a5);
        d.driver().function().set_input(0, false).unwrap();
        assert_eq!(u.read32(0, GPIO_REG_INPUT), 0xa5a4);
        assert!(matches!(
            d.driver().function().set_input(16, true),
            Err(DriverError::PinInvalid(16))
        ));
    }

    #[test]
    fn enabled_input_change_raises_intx_and_latches_status() {
        let (_r, d, u) = make(GpioOptions::default());
        let intx = u.bind(VFIO_PCI_INTX_IRQ_INDEX, 1);
        u.write32(0, GPIO_REG_IRQ_ENABLE, 0x0003);
        let f = d.driver().function();
        assert_eq!(f.set_inputs(0x0100).unwrap(), None, "pin 8 not enabled");
        assert_eq!(f.set_inputs(0x0102).unwrap(), Some(Delivery::Signalled));
        assert_eq!(read_eventfd(&intx[0]).unwrap(), 1);
        assert_eq!(u.read32(0, GPIO_REG_IRQ_STATUS), 0x0002);
        assert_eq!(u.read32(0, GPIO_REG_INPUT), 0x0102);
        assert!(u.cfg_read16(u64::from(PCI_STATUS)) & 0x08 != 0);
        u.write32(0, GPIO_REG_IRQ_STATUS, 0x0002);
        assert_eq!(u.read32(0, GPIO_REG_IRQ_STATUS), 0);
        assert_eq!(u.cfg_read16(u64::from(PCI_STATUS)) & 0x08, 0);
    }

    #[test]
    fn already_latched_pin_does_not_raise_again() {
        let (_r, d, u) = make(GpioOptions::default());
        let _intx = u.bind(VFIO_PCI_INTX_IRQ_INDEX, 1);
        u.write32(0, GPIO_REG_IRQ_ENABLE, 0x0001);
        let f = d.driver().function();
        assert!(f.set_inputs(1).unwrap().is_some());
        assert_eq!(f.set_inputs(0).unwrap(), None);
    }

    #[test]
    fn narrow_status_write_clears_only_written_bytes() {
        let (_r, d, u) = make(GpioOptions::default());
        u.write32(0, GPIO_REG_IRQ_ENABLE, 0xffff);
        d.driver().function().set_inputs(0x0101).unwrap();
        u.write8(0, GPIO_REG_IRQ_STATUS + 1, 0xff);
        assert_eq!(u.read32(0, GPIO_REG_IRQ_STATUS), 0x0001);
    }

    #[test]
    fn loopback_output_write_changes_inputs_with_msi() {
        let (_r, d, u) = make(GpioOptions {
            loopback: true,
            ..Default::default()
        });
        let msi = u.bind(VFIO_PCI_MSI_IRQ_INDEX, 1);
        u.write32(0, GPIO_REG_IRQ_ENABLE, 0x00f0);
        u.write32(0, GPIO_REG_OUTPUT, 0x0010);
        assert_eq!(read_eventfd(&msi[0]).unwrap(), 1);
        assert_eq!(u.read32(0, GPIO_REG_INPUT), 0x0010);
        assert_eq!(d.driver().function().outputs(), 0x0010);
        assert_eq!(u.read32(0, GPIO_REG_CAPS) >> 16, 1);
    }

    #[test]
    fn msi_masked_in_config_latches_until_unmasked() {
        let (_r, d, u) = make(GpioOptions::default());
        let msi = u.bind(VFIO_PCI_MSI_IRQ_INDEX, 1);
        let cap = u64::from(
            d.driver()
                .with_config(|c| c.capability_offset(PCI_CAP_ID_MSI))
                .unwrap(),
        );
        u.cfg_write16(cap + u64::from(PCI_MSI_FLAGS), 1);
        u.cfg_write32(cap + u64::from(PCI_MSI_MASK_64), 1);
        u.write32(0, GPIO_REG_IRQ_ENABLE, 1);
        assert_eq!(
            d.driver().function().set_inputs(1).unwrap(),
            Some(Delivery::Latched)
        );
        assert_eq!(read_eventfd(&msi[0]).unwrap(), 0);
        u.cfg_write32(cap + u64::from(PCI_MSI_MASK_64), 0);
        assert_eq!(read_eventfd(&msi[0]).unwrap(), 1);
    }

    #[test]
    fn unknown_offsets_read_zero_and_ro_writes_dropped() {
        let (_r, _d, u) = make(GpioOptions::default());
        u.write32(0, GPIO_REG_INPUT, 0xffff);
        u.write32(0, 0x100, 0xffff);
        assert_eq!(u.read32(0, GPIO_REG_INPUT), 0);
        assert_eq!(u.read32(0, 0x100), 0);
    }

    mod migration {
        use uvfio_core::{Errno, MigFlags, MigState};
        use uvfio_pci::migration::SECTION_FUNCTION;
        use uvfio_pci::regs::{PCI_COMMAND, PCI_MSI_ADDRESS_LO, PCI_MSI_DATA_64};

        use super::*;
        use crate::testutil::patch_section;

        fn pair(
            src: GpioOptions,
            dst: GpioOptions,
        ) -> (Registry, GpioDevice, User, GpioDevice, User) {
            let registry = Registry::default();
            let s = create(&registry, "src", GroupId(30), &src).unwrap();
            let d = create(&registry, "dst", GroupId(31), &dst).unwrap();
            let su = User::open(&registry, GroupId(30), "src");
            let du = User::open(&registry, GroupId(31), "dst");
            (registry, s, su, d, du)
        }

        fn msi_cap(d: &GpioDevice) -> u64 {
            u64::from(
                d.driver()
                    .with_config(|c| c.capability_offset(PCI_CAP_ID_MSI))
                    .unwrap(),
            )
        }

        fn config(u: &User) -> Vec<u32> {
            (0..64).map(|o| u.cfg_read32(o * 4)).collect()
        }

        fn pins(u: &User) -> [u32; 4] {
            [
                GPIO_REG_INPUT,
                GPIO_REG_OUTPUT,
                GPIO_REG_IRQ_ENABLE,
                GPIO_REG_IRQ_STATUS,
            ]
            .map(|r| u.read32(0, r))
        }

        #[test]
        fn pins_irq_state_loopback_and_msi_config_carry_over() {
            let (_r, s, su, d, du) = pair(
                GpioOptions {
                    loopback: true,
                    initial_inputs: 0,
                },
                GpioOptions::default(),
            );
            assert_eq!(su.handle.migration_flags().unwrap(), MigFlags::all());
            let cap = msi_cap(&s);
            su.cfg_write32(0x10, 0xfebf_0000);
            su.cfg_write16(u64::from(PCI_COMMAND), 0x0406);
            su.cfg_write32(cap + u64::from(PCI_MSI_ADDRESS_LO), 0xfee0_0000);
            su.cfg_write16(cap + u64::from(PCI_MSI_DATA_64), 0x0041);
            su.cfg_write16(cap + u64::from(PCI_MSI_FLAGS), 1);
            let smsi = su.bind(VFIO_PCI_MSI_IRQ_INDEX, 1);
            su.write32(0, GPIO_REG_IRQ_ENABLE, 0x00ff);
            su.write32(0, GPIO_REG_OUTPUT, 0x0003); // loops to the inputs
            assert_eq!(read_eventfd(&smsi[0]).unwrap(), 1);
            s.driver().function().set_inputs(0x8003).unwrap();
            let (cfg, regs) = (config(&su), pins(&su));
            assert_eq!(regs, [0x8003, 0x0003, 0x00ff, 0x0003]);

            let stream = su.save(true);
            assert_eq!(du.resume(&stream).unwrap(), MigState::Running);
            assert_eq!(pins(&du), regs);
            assert_eq!(config(&du), cfg, "config space incl. BAR, command, MSI");
            let df = d.driver().function();
            assert!(df.loopback());
            assert_eq!(du.read32(0, GPIO_REG_CAPS) >> 16, 1);
            assert!(d.driver().with_config(|c| c.msi_enabled()));
            assert_eq!(
                d.driver().with_config(|c| c.msi_message()),
                Some((0xfee0_0000, 0x41))
            );
            // The destination interrupts through the migrated MSI config.
            let dmsi = du.bind(VFIO_PCI_MSI_IRQ_INDEX, 1);
            assert_eq!(df.set_inputs(0x8007).unwrap(), Some(Delivery::Signalled));
            assert_eq!(read_eventfd(&dmsi[0]).unwrap(), 1);
            du.write32(0, GPIO_REG_OUTPUT, 0x0000);
            assert_eq!(du.read32(0, GPIO_REG_INPUT), 0, "loopback on destination");
        }

        #[test]
        fn input_change_while_stopped_interrupts_after_resume() {
            let (_r, d, u) = make(GpioOptions::default());
            let intx = u.bind(VFIO_PCI_INTX_IRQ_INDEX, 1);
            u.write32(0, GPIO_REG_IRQ_ENABLE, 0x0001);
            u.handle.set_mig_state(MigState::Stop).unwrap();
            let f = d.driver().function();
            assert_eq!(f.set_inputs(1).unwrap(), Some(Delivery::Latched));
            assert_eq!(read_eventfd(&intx[0]).unwrap(), 0);
            assert_eq!(u.read32(0, GPIO_REG_IRQ_STATUS), 1, "latched in the card");
            assert_eq!(
                u.cfg_read16(u64::from(PCI_STATUS)) & 0x08,
                0,
                "line not up yet"
            );
            u.handle.set_mig_state(MigState::Running).unwrap();
            assert_eq!(read_eventfd(&intx[0]).unwrap(), 1);
            assert!(u.cfg_read16(u64::from(PCI_STATUS)) & 0x08 != 0);
        }

        #[test]
        fn status_cleared_while_stopped_drops_the_intx_level() {
            let (_r, d, u) = make(GpioOptions::default());
            let intx = u.bind(VFIO_PCI_INTX_IRQ_INDEX, 1);
            u.write32(0, GPIO_REG_IRQ_ENABLE, 0x0001);
            u.handle.set_mig_state(MigState::Stop).unwrap();
            d.driver().function().set_inputs(1).unwrap();
            u.write32(0, GPIO_REG_IRQ_STATUS, 1);
            u.handle.set_mig_state(MigState::Running).unwrap();
            assert_eq!(read_eventfd(&intx[0]).unwrap(), 0);
        }

        #[test]
        fn bad_gpio_state_fails_resume_and_leaves_pins_alone() {
            let (r, s, su, d, mut du) = pair(GpioOptions::default(), GpioOptions::default());
            s.driver().function().set_inputs(0x1234).unwrap();
            let good = su.save(false);
            d.driver().function().set_inputs(0x0042).unwrap();
            for (what, stream) in [
                (
                    "magic",
                    patch_section(&good, SECTION_FUNCTION, |p| p[0] = b'X'),
                ),
                (
                    "major",
                    patch_section(&good, SECTION_FUNCTION, |p| p[4] = 2),
                ),
                (
                    "loopback",
                    patch_section(&good, SECTION_FUNCTION, |p| p[16] = 2),
                ),
                (
                    "reserved",
                    patch_section(&good, SECTION_FUNCTION, |p| p[19] = 1),
                ),
                (
                    "short",
                    patch_section(&good, SECTION_FUNCTION, |p| p.truncate(10)),
                ),
                (
                    "long",
                    patch_section(&good, SECTION_FUNCTION, |p| p.push(0)),
                ),
            ] {
                assert_eq!(du.resume(&stream).unwrap_err(), Errno::INVAL, "{what}");
                assert_eq!(du.handle.mig_state().unwrap(), MigState::Error);
                assert_eq!(d.driver().function().inputs(), 0x0042, "{what}");
                drop(du);
                du = User::open(&r, GroupId(31), "dst");
            }
            assert_eq!(du.resume(&good).unwrap(), MigState::Running);
            assert_eq!(du.read32(0, GPIO_REG_INPUT), 0x1234);
        }
    }
}
