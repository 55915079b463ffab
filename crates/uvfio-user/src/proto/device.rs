//! DEVICE_GET_INFO (4) and DEVICE_RESET (13, no payload either way).

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::error::{illegal, malformed, InvalidMessage, PeerMisbehaved, Result};
use super::irq::VFIO_PCI_NUM_IRQS;
use super::reader::Reader;
use super::region_info::VFIO_PCI_NUM_REGIONS;
use super::writer::Frame;

/// Device flag: the device supports DEVICE_RESET.
pub const VFIO_DEVICE_FLAGS_RESET: u32 = 1 << 0;
/// Device flag: a PCI device.
pub const VFIO_DEVICE_FLAGS_PCI: u32 = 1 << 1;
const DEVICE_INFO_KNOWN_FLAGS: u32 = VFIO_DEVICE_FLAGS_RESET | VFIO_DEVICE_FLAGS_PCI;

/// Size of `vfio_device_info` as vfio-user sends it.
pub const DEVICE_INFO_SIZE: u32 = 16;

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct DeviceInfoWire {
    argsz: U32,
    flags: U32,
    num_regions: U32,
    num_irqs: U32,
}
const _: () = assert!(core::mem::size_of::<DeviceInfoWire>() == 16);

/// DEVICE_GET_INFO request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfoRequest {
    /// Room for the reply (≥ 16; rust-vmm sends 32).
    pub argsz: u32,
}

impl DeviceInfoRequest {
    /// Checks: 16 bytes, `argsz` ≥ 16; the other fields are ignored.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<DeviceInfoRequest> {
        let w: DeviceInfoWire = r.read("device_info request")?;
        let argsz = w.argsz.get();
        if argsz < DEVICE_INFO_SIZE {
            return malformed(InvalidMessage::ArgszTooSmall {
                what: "device_info",
                argsz,
                min: DEVICE_INFO_SIZE,
            });
        }
        Ok(DeviceInfoRequest { argsz })
    }

    pub(crate) fn encode_payload(&self, f: &mut Frame<'_>) {
        f.put(&DeviceInfoWire {
            argsz: U32::new(self.argsz),
            flags: U32::new(0),
            num_regions: U32::new(0),
            num_irqs: U32::new(0),
        });
    }
}

/// DEVICE_GET_INFO reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    /// 16.
    pub argsz: u32,
    /// `VFIO_DEVICE_FLAGS_RESET` | `VFIO_DEVICE_FLAGS_PCI`.
    pub flags: u32,
    /// Number of regions (≥ 9 for PCI).
    pub num_regions: u32,
    /// Number of IRQ indexes (5 for PCI).
    pub num_irqs: u32,
}

impl DeviceInfo {
    /// A reply with `argsz` 16.
    #[must_use]
    pub fn new(flags: u32, num_regions: u32, num_irqs: u32) -> DeviceInfo {
        DeviceInfo {
            argsz: DEVICE_INFO_SIZE,
            flags,
            num_regions,
            num_irqs,
        }
    }

    /// Checks: 16 bytes, `argsz` ≥ 16, known flags; with PCI, at least 9
    /// regions and exactly 5 IRQ indexes.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<DeviceInfo> {
        let w: DeviceInfoWire = r.read("device_info reply")?;
        let d = DeviceInfo {
            argsz: w.argsz.get(),
            flags: w.flags.get(),
            num_regions: w.num_regions.get(),
            num_irqs: w.num_irqs.get(),
        };
        if d.argsz < DEVICE_INFO_SIZE {
            return malformed(InvalidMessage::ArgszTooSmall {
                what: "device_info reply",
                argsz: d.argsz,
                min: DEVICE_INFO_SIZE,
            });
        }
        if d.flags & !DEVICE_INFO_KNOWN_FLAGS != 0 {
            return malformed(InvalidMessage::UnknownFlags {
                what: "device_info.flags",
                flags: u64::from(d.flags),
                known: u64::from(DEVICE_INFO_KNOWN_FLAGS),
            });
        }
        if d.flags & VFIO_DEVICE_FLAGS_PCI != 0 {
            if d.num_regions < VFIO_PCI_NUM_REGIONS {
                return illegal(PeerMisbehaved::OutOfRange {
                    what: "device_info.num_regions (PCI needs 9)",
                    value: u64::from(d.num_regions),
                    limit: u64::from(VFIO_PCI_NUM_REGIONS),
                });
            }
            if d.num_irqs != VFIO_PCI_NUM_IRQS {
                return illegal(PeerMisbehaved::OutOfRange {
                    what: "device_info.num_irqs (PCI needs 5)",
                    value: u64::from(d.num_irqs),
                    limit: u64::from(VFIO_PCI_NUM_IRQS),
                });
            }
        }
        Ok(d)
    }

    pub(crate) fn encode_payload(&self, f: &mut Frame<'_>) {
        f.put(&DeviceInfoWire {
            argsz: U32::new(self.argsz),
            flags: U32::new(self.flags),
            num_regions: U32::new(self.num_regions),
            num_irqs: U32::new(self.num_irqs),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::error::ProtoError;

    fn info(argsz: u32, flags: u32, regions: u32, irqs: u32) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [argsz, flags, regions, irqs] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v
    }

    #[test]
    fn device_info_reply_pci_decodes() {
        let d = DeviceInfo::decode(&mut Reader::new(&info(16, 3, 9, 5))).unwrap();
        assert_eq!(d, DeviceInfo::new(3, 9, 5));
    }

    #[test]
    fn device_info_reply_unknown_flag_is_rejected() {
        assert!(matches!(
            DeviceInfo::decode(&mut Reader::new(&info(16, 4, 9, 5))).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::UnknownFlags { .. })
        ));
    }

    #[test]
    fn device_info_reply_pci_with_few_regions_is_illegal() {
        assert!(matches!(
            DeviceInfo::decode(&mut Reader::new(&info(16, 2, 8, 5))).unwrap_err(),
            ProtoError::Illegal(PeerMisbehaved::OutOfRange { .. })
        ));
    }

    #[test]
    fn device_info_request_accepts_rust_vmm_argsz_32() {
        let r = DeviceInfoRequest::decode(&mut Reader::new(&info(32, 0, 0, 0))).unwrap();
        assert_eq!(r.argsz, 32);
    }

    #[test]
    fn device_info_request_small_argsz_is_rejected() {
        assert!(DeviceInfoRequest::decode(&mut Reader::new(&info(8, 0, 0, 0))).is_err());
    }
}
