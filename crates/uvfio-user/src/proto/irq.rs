//! DEVICE_GET_IRQ_INFO (7) and DEVICE_SET_IRQS (8).

use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::error::{malformed, EncodeError, InvalidMessage, Result};
use super::fds::FdRule;
use super::reader::{u64_from_usize, Reader};
use super::writer::{len_u32, Frame};

/// PCI INTx IRQ index.
pub const VFIO_PCI_INTX_IRQ_INDEX: u32 = 0;
/// PCI MSI IRQ index.
pub const VFIO_PCI_MSI_IRQ_INDEX: u32 = 1;
/// PCI MSI-X IRQ index.
pub const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;
/// PCI error IRQ index.
pub const VFIO_PCI_ERR_IRQ_INDEX: u32 = 3;
/// PCI device-request IRQ index.
pub const VFIO_PCI_REQ_IRQ_INDEX: u32 = 4;
/// Number of PCI IRQ indexes.
pub const VFIO_PCI_NUM_IRQS: u32 = 5;

/// IRQ info flag: eventfds can signal it.
pub const VFIO_IRQ_INFO_EVENTFD: u32 = 1 << 0;
/// IRQ info flag: maskable.
pub const VFIO_IRQ_INFO_MASKABLE: u32 = 1 << 1;
/// IRQ info flag: automasked.
pub const VFIO_IRQ_INFO_AUTOMASKED: u32 = 1 << 2;
/// IRQ info flag: the count cannot be resized.
pub const VFIO_IRQ_INFO_NORESIZE: u32 = 1 << 3;
const IRQ_INFO_KNOWN_FLAGS: u32 = 0xf;

/// SET_IRQS data: none.
pub const VFIO_IRQ_SET_DATA_NONE: u32 = 1 << 0;
/// SET_IRQS data: one bool byte per vector.
pub const VFIO_IRQ_SET_DATA_BOOL: u32 = 1 << 1;
/// SET_IRQS data: one eventfd per vector (passed as fds).
pub const VFIO_IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// SET_IRQS action: mask.
pub const VFIO_IRQ_SET_ACTION_MASK: u32 = 1 << 3;
/// SET_IRQS action: unmask.
pub const VFIO_IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
/// SET_IRQS action: trigger.
pub const VFIO_IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
/// The data-type bits.
pub const VFIO_IRQ_SET_DATA_TYPE_MASK: u32 =
    VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD;
/// The action-type bits.
pub const VFIO_IRQ_SET_ACTION_TYPE_MASK: u32 =
    VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_ACTION_TRIGGER;

/// Size of `vfio_irq_info`.
pub const IRQ_INFO_SIZE: u32 = 16;
/// Size of `vfio_irq_set` without data.
pub const IRQ_SET_SIZE: u32 = 20;

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct IrqInfoWire {
    argsz: U32,
    flags: U32,
    index: U32,
    count: U32,
}
const _: () = assert!(core::mem::size_of::<IrqInfoWire>() == 16);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct IrqSetWire {
    argsz: U32,
    flags: U32,
    index: U32,
    start: U32,
    count: U32,
}
const _: () = assert!(core::mem::size_of::<IrqSetWire>() == 20);

/// DEVICE_GET_IRQ_INFO request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfoRequest {
    /// Room for the reply (≥ 16).
    pub argsz: u32,
    /// IRQ index.
    pub index: u32,
}

impl IrqInfoRequest {
    /// Checks: 16 bytes, `argsz` ≥ 16; `flags` and `count` are ignored.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<IrqInfoRequest> {
        let w: IrqInfoWire = r.read("irq_info request")?;
        let argsz = w.argsz.get();
        if argsz < IRQ_INFO_SIZE {
            return malformed(InvalidMessage::ArgszTooSmall {
                what: "irq_info",
                argsz,
                min: IRQ_INFO_SIZE,
            });
        }
        Ok(IrqInfoRequest {
            argsz,
            index: w.index.get(),
        })
    }

    pub(crate) fn encode_payload(&self, f: &mut Frame<'_>) {
        f.put(&IrqInfoWire {
            argsz: U32::new(self.argsz),
            flags: U32::new(0),
            index: U32::new(self.index),
            count: U32::new(0),
        });
    }
}

/// DEVICE_GET_IRQ_INFO reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfo {
    /// 16.
    pub argsz: u32,
    /// `VFIO_IRQ_INFO_*`.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// Number of vectors.
    pub count: u32,
}

impl IrqInfo {
    /// A reply with `argsz` 16.
    #[must_use]
    pub fn new(index: u32, flags: u32, count: u32) -> IrqInfo {
        IrqInfo {
            argsz: IRQ_INFO_SIZE,
            flags,
            index,
            count,
        }
    }

    /// Checks: 16 bytes, `argsz` ≥ 16, known flags.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<IrqInfo> {
        let w: IrqInfoWire = r.read("irq_info reply")?;
        let i = IrqInfo {
            argsz: w.argsz.get(),
            flags: w.flags.get(),
            index: w.index.get(),
            count: w.count.get(),
        };
        if i.argsz < IRQ_INFO_SIZE {
            return malformed(InvalidMessage::ArgszTooSmall {
                what: "irq_info reply",
                argsz: i.argsz,
                min: IRQ_INFO_SIZE,
            });
        }
        if i.flags & !IRQ_INFO_KNOWN_FLAGS != 0 {
            return malformed(InvalidMessage::UnknownFlags {
                what: "irq_info.flags",
                flags: u64::from(i.flags),
                known: u64::from(IRQ_INFO_KNOWN_FLAGS),
            });
        }
        Ok(i)
    }

    pub(crate) fn encode_payload(&self, f: &mut Frame<'_>) {
        f.put(&IrqInfoWire {
            argsz: U32::new(self.argsz),
            flags: U32::new(self.flags),
            index: U32::new(self.index),
            count: U32::new(self.count),
        });
    }
}

/// SET_IRQS action (exactly one per message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqAction {
    /// `VFIO_IRQ_SET_ACTION_MASK`.
    Mask,
    /// `VFIO_IRQ_SET_ACTION_UNMASK`.
    Unmask,
    /// `VFIO_IRQ_SET_ACTION_TRIGGER`.
    Trigger,
}

/// SET_IRQS data (exactly one kind per message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqData<'a> {
    /// `VFIO_IRQ_SET_DATA_NONE`.
    None,
    /// `VFIO_IRQ_SET_DATA_BOOL`: one byte per vector (`count` bytes).
    Bool(&'a [u8]),
    /// `VFIO_IRQ_SET_DATA_EVENTFD`: `count` fds come with the message, or
    /// none to de-assign.
    Eventfd,
}

/// DEVICE_SET_IRQS request (the reply has no payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetIrqs<'a> {
    /// IRQ index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
    /// What to do.
    pub action: IrqAction,
    /// With what.
    pub data: IrqData<'a>,
}

impl<'a> SetIrqs<'a> {
    /// The raw `flags` word.
    #[must_use]
    pub fn flags(&self) -> u32 {
        let d = match self.data {
            IrqData::None => VFIO_IRQ_SET_DATA_NONE,
            IrqData::Bool(_) => VFIO_IRQ_SET_DATA_BOOL,
            IrqData::Eventfd => VFIO_IRQ_SET_DATA_EVENTFD,
        };
        let a = match self.action {
            IrqAction::Mask => VFIO_IRQ_SET_ACTION_MASK,
            IrqAction::Unmask => VFIO_IRQ_SET_ACTION_UNMASK,
            IrqAction::Trigger => VFIO_IRQ_SET_ACTION_TRIGGER,
        };
        d | a
    }

    /// The fds this request needs: `count` eventfds (or none) with
    /// DATA_EVENTFD, otherwise none.
    #[must_use]
    pub fn fd_rule(&self) -> FdRule {
        match self.data {
            IrqData::Eventfd => FdRule::CountOrNone(self.count),
            IrqData::None | IrqData::Bool(_) => FdRule::None,
        }
    }

    /// Checks: `argsz` = payload length; no unknown flag bits; exactly one
    /// data and one action type; BOOL data of exactly `count` bytes and no
    /// data otherwise; `start + count` does not overflow; `count` 0 only
    /// with `start` 0 and DATA_NONE|ACTION_TRIGGER (disable the index).
    pub(crate) fn decode(r: &mut Reader<'a>) -> Result<SetIrqs<'a>> {
        let w: IrqSetWire = r.read("set_irqs")?;
        let (argsz, flags) = (w.argsz.get(), w.flags.get());
        let (index, start, count) = (w.index.get(), w.start.get(), w.count.get());
        let raw = r.rest();
        let total = u64::from(IRQ_SET_SIZE).saturating_add(u64_from_usize(raw.len()));
        if u64::from(argsz) != total {
            return malformed(InvalidMessage::LengthMismatch {
                what: "set_irqs.argsz",
                declared: u64::from(argsz),
                actual: total,
            });
        }
        let known = VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK;
        if flags & !known != 0 {
            return malformed(InvalidMessage::UnknownFlags {
                what: "set_irqs.flags",
                flags: u64::from(flags),
                known: u64::from(known),
            });
        }
        let action = match flags & VFIO_IRQ_SET_ACTION_TYPE_MASK {
            VFIO_IRQ_SET_ACTION_MASK => IrqAction::Mask,
            VFIO_IRQ_SET_ACTION_UNMASK => IrqAction::Unmask,
            VFIO_IRQ_SET_ACTION_TRIGGER => IrqAction::Trigger,
            _ => {
                return malformed(InvalidMessage::InvalidFlagCombination {
                    what: "set_irqs action",
                    flags: u64::from(flags),
                })
            }
        };
        let data = match flags & VFIO_IRQ_SET_DATA_TYPE_MASK {
            VFIO_IRQ_SET_DATA_NONE => IrqData::None,
            VFIO_IRQ_SET_DATA_BOOL => IrqData::Bool(raw),
            VFIO_IRQ_SET_DATA_EVENTFD => IrqData::Eventfd,
            _ => {
                return malformed(InvalidMessage::InvalidFlagCombination {
                    what: "set_irqs data type",
                    flags: u64::from(flags),
                })
            }
        };
        match data {
            IrqData::Bool(b) if u64_from_usize(b.len()) != u64::from(count) => {
                return malformed(InvalidMessage::LengthMismatch {
                    what: "set_irqs bool data",
                    declared: u64::from(count),
                    actual: u64_from_usize(b.len()),
                });
            }
            IrqData::None | IrqData::Eventfd if !raw.is_empty() => {
                return malformed(InvalidMessage::TrailingBytes {
                    what: "set_irqs (no data expected)",
                    offset: 20,
                    len: raw.len(),
                });
            }
            IrqData::None | IrqData::Eventfd => {}
            IrqData::Bool(_) => {}
        }
        if start.checked_add(count).is_none() {
            return malformed(InvalidMessage::Overflow {
                what: "set_irqs start + count",
            });
        }
        if count == 0
            && (start != 0 || flags != VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER)
        {
            return malformed(InvalidMessage::InvalidFlagCombination {
                what: "set_irqs count 0 (needs start 0, DATA_NONE|ACTION_TRIGGER)",
                flags: u64::from(flags),
            });
        }
        Ok(SetIrqs {
            index,
            start,
            count,
            action,
            data,
        })
    }

    pub(crate) fn encode_payload(
        &self,
        f: &mut Frame<'_>,
    ) -> core::result::Result<(), EncodeError> {
        let data: &[u8] = match self.data {
            IrqData::Bool(b) => {
                if u64_from_usize(b.len()) != u64::from(self.count) {
                    return Err(EncodeError::Inconsistent {
                        what: "set_irqs bool data length vs count",
                    });
                }
                b
            }
            IrqData::None | IrqData::Eventfd => &[],
        };
        let argsz = len_u32("set_irqs argsz", data.len().saturating_add(20))?;
        f.put(&IrqSetWire {
            argsz: U32::new(argsz),
            flags: U32::new(self.flags()),
            index: U32::new(self.index),
            start: U32::new(self.start),
            count: U32::new(self.count),
        });
        f.put_bytes(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::error::ProtoError;
    use rustix::io::Errno;

    fn set(argsz: u32, flags: u32, start: u32, count: u32, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [argsz, flags, VFIO_PCI_MSIX_IRQ_INDEX, start, count] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    const EVT_TRIG: u32 = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;

    #[test]
    fn set_irqs_eventfd_trigger_decodes_with_fd_rule() {
        let b = set(20, EVT_TRIG, 0, 3, &[]);
        let s = SetIrqs::decode(&mut Reader::new(&b)).unwrap();
        assert_eq!(s.action, IrqAction::Trigger);
        assert_eq!(s.data, IrqData::Eventfd);
        assert_eq!(s.fd_rule(), FdRule::CountOrNone(3));
        assert!(s.fd_rule().allows(3));
        assert!(s.fd_rule().allows(0));
        assert!(!s.fd_rule().allows(2));
    }

    #[test]
    fn set_irqs_two_actions_is_rejected() {
        let b = set(
            20,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK,
            0,
            1,
            &[],
        );
        let err = SetIrqs::decode(&mut Reader::new(&b)).unwrap_err();
        assert!(matches!(
            err,
            ProtoError::Malformed(InvalidMessage::InvalidFlagCombination { .. })
        ));
        assert_eq!(err.errno(), Errno::INVAL);
    }

    #[test]
    fn set_irqs_two_data_types_is_rejected() {
        let b = set(20, VFIO_IRQ_SET_DATA_NONE | EVT_TRIG, 0, 1, &[]);
        assert!(matches!(
            SetIrqs::decode(&mut Reader::new(&b)).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::InvalidFlagCombination { .. })
        ));
    }

    #[test]
    fn set_irqs_unknown_flag_is_rejected() {
        let b = set(20, EVT_TRIG | 0x40, 0, 1, &[]);
        assert!(matches!(
            SetIrqs::decode(&mut Reader::new(&b)).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::UnknownFlags { .. })
        ));
    }

    #[test]
    fn set_irqs_bool_length_must_equal_count() {
        let flags = VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_ACTION_TRIGGER;
        let b = set(22, flags, 0, 3, &[1, 0]);
        assert_eq!(
            SetIrqs::decode(&mut Reader::new(&b)).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::LengthMismatch {
                what: "set_irqs bool data",
                declared: 3,
                actual: 2
            })
        );
        let b = set(23, flags, 0, 3, &[1, 0, 1]);
        let s = SetIrqs::decode(&mut Reader::new(&b)).unwrap();
        assert_eq!(s.data, IrqData::Bool(&[1, 0, 1]));
    }

    #[test]
    fn set_irqs_argsz_must_match_payload() {
        let b = set(24, EVT_TRIG, 0, 1, &[]);
        assert!(matches!(
            SetIrqs::decode(&mut Reader::new(&b)).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::LengthMismatch {
                what: "set_irqs.argsz",
                ..
            })
        ));
    }

    #[test]
    fn set_irqs_data_with_eventfd_is_rejected() {
        let b = set(21, EVT_TRIG, 0, 1, &[1]);
        assert!(matches!(
            SetIrqs::decode(&mut Reader::new(&b)).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::TrailingBytes { .. })
        ));
    }

    #[test]
    fn set_irqs_start_plus_count_overflow() {
        let b = set(20, EVT_TRIG, u32::MAX, 2, &[]);
        let err = SetIrqs::decode(&mut Reader::new(&b)).unwrap_err();
        assert_eq!(err.errno(), Errno::OVERFLOW);
    }

    #[test]
    fn set_irqs_count_zero_rules() {
        let ok = set(
            20,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            0,
            &[],
        );
        assert!(SetIrqs::decode(&mut Reader::new(&ok)).is_ok());
        let bad_start = set(
            20,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            1,
            0,
            &[],
        );
        assert!(SetIrqs::decode(&mut Reader::new(&bad_start)).is_err());
        let bad_flags = set(20, EVT_TRIG, 0, 0, &[]);
        assert!(SetIrqs::decode(&mut Reader::new(&bad_flags)).is_err());
    }

    #[test]
    fn irq_info_reply_unknown_flag_is_rejected() {
        let mut b = Vec::new();
        for x in [16u32, 0x10, 0, 1] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        assert!(IrqInfo::decode(&mut Reader::new(&b)).is_err());
    }

    #[test]
    fn irq_info_request_small_argsz_is_rejected() {
        let mut b = Vec::new();
        for x in [15u32, 0, 0, 0] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        assert!(matches!(
            IrqInfoRequest::decode(&mut Reader::new(&b)).unwrap_err(),
            ProtoError::Malformed(InvalidMessage::ArgszTooSmall { argsz: 15, .. })
        ));
    }
}
