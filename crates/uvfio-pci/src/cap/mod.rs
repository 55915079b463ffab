//! Typed capabilities, laid out into config space as values plus write
//! and RW1C masks, and a walker over the resulting list.
//!
//! A function declares its capabilities once ([`Capability`],
//! [`ExtCapability`]); [`crate::ConfigSpace::new`] places them dword
//! aligned from `0x40` (extended ones from `0x100`), links them from
//! `PCI_CAPABILITY_LIST` and sets the status `CAP_LIST` bit. Each builder
//! below states which bits a user may write.

pub mod msi;
pub mod msix;
pub mod walk;

pub use msi::MsiCap;
pub use msix::MsixCap;
pub use walk::{walk_capabilities, walk_extended_capabilities, CapEntry, CapWalk, WalkError};

use crate::regs::{
    PCI_CAP_EXP_ENDPOINT_SIZEOF_V2, PCI_CAP_ID_EXP, PCI_CAP_ID_MSI, PCI_CAP_ID_MSIX, PCI_CAP_ID_PM,
    PCI_CAP_ID_VNDR, PCI_EXP_DEVCAP, PCI_EXP_DEVCAP2, PCI_EXP_DEVCAP_FLR, PCI_EXP_DEVCTL,
    PCI_EXP_DEVCTL2, PCI_EXP_DEVCTL_BCR_FLR, PCI_EXP_DEVSTA, PCI_EXP_FLAGS, PCI_EXP_LNKCAP,
    PCI_EXP_LNKCTL, PCI_EXP_LNKSTA, PCI_EXT_CAP_ID_DSN, PCI_EXT_CAP_ID_VNDR, PCI_PM_CTRL,
    PCI_PM_CTRL_NO_SOFT_RESET, PCI_PM_CTRL_PME_ENABLE, PCI_PM_CTRL_PME_STATUS,
    PCI_PM_CTRL_STATE_MASK, PCI_PM_PMC, PCI_PM_SIZEOF,
};

/// A capability in the conventional list.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Capability {
    /// Power management.
    PowerManagement(PmCap),
    /// MSI.
    Msi(MsiCap),
    /// MSI-X; its table and PBA live in BARs served by the wrapper.
    Msix(MsixCap),
    /// PCI Express (makes config space 4096 bytes).
    PciExpress(PcieCap),
    /// Vendor specific: read-only bytes after the id, next and length bytes.
    Vendor(Vec<u8>),
}

impl Capability {
    /// The capability ID.
    pub fn id(&self) -> u8 {
        match self {
            Capability::PowerManagement(_) => PCI_CAP_ID_PM,
            Capability::Msi(_) => PCI_CAP_ID_MSI,
            Capability::Msix(_) => PCI_CAP_ID_MSIX,
            Capability::PciExpress(_) => PCI_CAP_ID_EXP,
            Capability::Vendor(_) => PCI_CAP_ID_VNDR,
        }
    }

    /// Values and masks, with the id at byte 0 and `next` = 0 at byte 1.
    pub(crate) fn layout(&self) -> CapBytes {
        let mut c = match self {
            Capability::PowerManagement(pm) => pm.layout(),
            Capability::Msi(msi) => msi.layout(),
            Capability::Msix(msix) => msix.layout(),
            Capability::PciExpress(e) => e.layout(),
            Capability::Vendor(data) => {
                let mut c = CapBytes::new(3 + data.len());
                c.values[2] = u8::try_from(3 + data.len()).unwrap_or(u8::MAX);
                c.values[3..].copy_from_slice(data);
                c
            }
        };
        c.values[0] = self.id();
        c
    }
}

/// An extended capability (PCI Express functions only).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExtCapability {
    /// Device serial number (read only).
    DeviceSerialNumber(u64),
    /// Vendor-specific extended capability (read only).
    Vendor {
        /// VSEC ID.
        vsec_id: u16,
        /// VSEC revision (4 bits).
        vsec_rev: u8,
        /// Bytes after the VSEC header.
        data: Vec<u8>,
    },
}

impl ExtCapability {
    /// The extended capability ID.
    pub fn id(&self) -> u16 {
        match self {
            ExtCapability::DeviceSerialNumber(_) => PCI_EXT_CAP_ID_DSN,
            ExtCapability::Vendor { .. } => PCI_EXT_CAP_ID_VNDR,
        }
    }

    /// Values and masks; the header's `next` field is left 0.
    pub(crate) fn layout(&self) -> CapBytes {
        let mut c = match self {
            ExtCapability::DeviceSerialNumber(sn) => {
                let mut c = CapBytes::new(12);
                c.set_u64(4, *sn);
                c
            }
            ExtCapability::Vendor {
                vsec_id,
                vsec_rev,
                data,
            } => {
                let len = 8 + data.len();
                let mut c = CapBytes::new(len);
                let len12 = u32::try_from(len).unwrap_or(0xfff).min(0xfff);
                c.set_u32(
                    4,
                    u32::from(*vsec_id) | (u32::from(*vsec_rev & 0xf) << 16) | (len12 << 20),
                );
                c.values[8..].copy_from_slice(data);
                c
            }
        };
        // Version 1 for both.
        c.set_u32(0, u32::from(self.id()) | (1 << 16));
        c
    }
}

/// Power management capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmCap {
    /// The PMC register (version in bits 2:0, D1/D2 and PME support).
    pub pmc: u16,
    /// `No_Soft_Reset`: state survives D3hot → D0.
    pub no_soft_reset: bool,
}

impl Default for PmCap {
    fn default() -> Self {
        PmCap {
            pmc: 0x0003,
            no_soft_reset: true,
        }
    }
}

impl PmCap {
    fn layout(&self) -> CapBytes {
        let mut c = CapBytes::new(PCI_PM_SIZEOF);
        c.set_u16(usize::from(PCI_PM_PMC), self.pmc);
        let ctrl = if self.no_soft_reset {
            PCI_PM_CTRL_NO_SOFT_RESET
        } else {
            0
        };
        let ctl = usize::from(PCI_PM_CTRL);
        c.set_u16(ctl, ctrl);
        let pme_supported = self.pmc & 0xf800 != 0;
        let pme_en = if pme_supported {
            PCI_PM_CTRL_PME_ENABLE
        } else {
            0
        };
        c.set_wmask16(ctl, PCI_PM_CTRL_STATE_MASK | pme_en);
        c.set_w1c16(ctl, PCI_PM_CTRL_PME_STATUS);
        c
    }
}

/// PCI Express device/port type (bits 7:4 of the capabilities register).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PcieDeviceType {
    /// PCI Express endpoint.
    #[default]
    Endpoint,
    /// Legacy PCI Express endpoint.
    LegacyEndpoint,
    /// Root complex integrated endpoint (no link).
    RootComplexIntegratedEndpoint,
}

impl PcieDeviceType {
    fn bits(self) -> u16 {
        match self {
            PcieDeviceType::Endpoint => 0,
            PcieDeviceType::LegacyEndpoint => 1,
            PcieDeviceType::RootComplexIntegratedEndpoint => 9,
        }
    }
}

/// PCI Express capability (version 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PcieCap {
    /// Device/port type.
    pub device_type: PcieDeviceType,
    /// Max payload size supported, encoded (0 = 128 B … 5 = 4096 B).
    pub max_payload_supported: u8,
    /// Function level reset: DEVCAP advertises it and writing
    /// `DEVCTL.BCR_FLR` resets the function (the bit reads back 0).
    pub flr: bool,
}

impl PcieCap {
    fn layout(&self) -> CapBytes {
        let mut c = CapBytes::new(PCI_CAP_EXP_ENDPOINT_SIZEOF_V2);
        c.set_u16(
            usize::from(PCI_EXP_FLAGS),
            0x0002 | (self.device_type.bits() << 4),
        );
        // Role-based error reporting (bit 15) is mandatory since 1.1.
        let mut devcap = u32::from(self.max_payload_supported.min(5)) | (1 << 15);
        if self.flr {
            devcap |= PCI_EXP_DEVCAP_FLR;
        }
        c.set_u32(usize::from(PCI_EXP_DEVCAP), devcap);
        // Relaxed ordering, no snoop, MRRS 512 B: the usual reset value.
        let devctl = usize::from(PCI_EXP_DEVCTL);
        c.set_u16(devctl, 0x2810);
        // Everything but phantom functions (bit 9, read only here);
        // FLR only when advertised.
        let flr = if self.flr { PCI_EXP_DEVCTL_BCR_FLR } else { 0 };
        c.set_wmask16(devctl, 0x7dff | flr);
        c.set_w1c16(usize::from(PCI_EXP_DEVSTA), 0x000f);
        if self.device_type != PcieDeviceType::RootComplexIntegratedEndpoint {
            // 2.5 GT/s, x1.
            c.set_u32(usize::from(PCI_EXP_LNKCAP), 0x0000_0011);
            c.set_wmask16(usize::from(PCI_EXP_LNKCTL), 0x00cb);
            c.set_u16(usize::from(PCI_EXP_LNKSTA), 0x0011);
        }
        c.set_u32(usize::from(PCI_EXP_DEVCAP2), 0);
        c.set_wmask16(usize::from(PCI_EXP_DEVCTL2), 0x000f);
        c
    }
}

/// Bytes of one capability: values, write mask and RW1C mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CapBytes {
    pub(crate) values: Vec<u8>,
    pub(crate) wmask: Vec<u8>,
    pub(crate) w1c: Vec<u8>,
}

impl CapBytes {
    pub(crate) fn new(len: usize) -> Self {
        CapBytes {
            values: vec![0; len],
            wmask: vec![0; len],
            w1c: vec![0; len],
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    pub(crate) fn set_u16(&mut self, off: usize, v: u16) {
        self.values[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn set_u32(&mut self, off: usize, v: u32) {
        self.values[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn set_u64(&mut self, off: usize, v: u64) {
        self.values[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn set_wmask16(&mut self, off: usize, m: u16) {
        self.wmask[off..off + 2].copy_from_slice(&m.to_le_bytes());
    }

    pub(crate) fn set_wmask32(&mut self, off: usize, m: u32) {
        self.wmask[off..off + 4].copy_from_slice(&m.to_le_bytes());
    }

    pub(crate) fn set_w1c16(&mut self, off: usize, m: u16) {
        self.w1c[off..off + 2].copy_from_slice(&m.to_le_bytes());
    }
}
