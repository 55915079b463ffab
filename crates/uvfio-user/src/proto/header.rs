//! The 16-byte message header (spec §1) and framing.
//!
//! A transport reads exactly 16 bytes, calls [`Header::decode`] (or
//! [`RawHeader::parse`] then [`RawHeader::validate`] when it wants the raw
//! fields even for a bad header), then reads exactly [`Header::body_len`]
//! more bytes and hands them to [`decode_request`](super::decode_request) or
//! [`decode_reply`](super::decode_reply).

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::error::{illegal, malformed, InvalidMessage, PeerMisbehaved, Result};
use super::limits::DecodeLimits;
use super::reader::usize_from;

/// Size of the header on the wire.
pub const HEADER_SIZE: usize = 16;
/// Mask of the Type field in the header flags.
pub const VFIO_USER_F_TYPE_MASK: u32 = 0xf;
/// Type: command.
pub const VFIO_USER_F_TYPE_COMMAND: u32 = 0;
/// Type: reply.
pub const VFIO_USER_F_TYPE_REPLY: u32 = 1;
/// The sender wants no reply (commands only).
pub const VFIO_USER_F_NO_REPLY: u32 = 0x10;
/// The reply is an error; `error` holds the errno (replies only).
pub const VFIO_USER_F_ERROR: u32 = 0x20;
const KNOWN_FLAGS: u32 = VFIO_USER_F_TYPE_MASK | VFIO_USER_F_NO_REPLY | VFIO_USER_F_ERROR;

/// Wire layout of the header.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct HeaderWire {
    msg_id: U16,
    command: U16,
    msg_size: U32,
    flags: U32,
    error: U32,
}
const _: () = assert!(core::mem::size_of::<HeaderWire>() == HEADER_SIZE);

impl HeaderWire {
    pub(crate) fn new(msg_id: u16, command: u16, msg_size: u32, flags: u32, error: u32) -> Self {
        HeaderWire {
            msg_id: U16::new(msg_id),
            command: U16::new(command),
            msg_size: U32::new(msg_size),
            flags: U32::new(flags),
            error: U32::new(error),
        }
    }
}

/// Command or reply (header Type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MsgType {
    /// Type 0.
    Command,
    /// Type 1.
    Reply,
}

/// The header fields as read, before any validation. Parsing cannot fail,
/// so a transport can always learn `msg_id`, `command` and `msg_size` (to
/// answer, or to skip the body) even when [`RawHeader::validate`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawHeader {
    /// Sender-chosen id, echoed in the reply.
    pub msg_id: u16,
    /// Command number (not checked here).
    pub command: u16,
    /// Whole message size, header included.
    pub msg_size: u32,
    /// Raw flags word.
    pub flags: u32,
    /// Raw error word.
    pub error: u32,
}

impl RawHeader {
    /// Read the five fields.
    #[must_use]
    pub fn parse(bytes: &[u8; HEADER_SIZE]) -> RawHeader {
        let w = HeaderWire::read_from_bytes(bytes.as_slice())
            .unwrap_or_else(|_| HeaderWire::new(0, 0, 0, 0, 0));
        RawHeader {
            msg_id: w.msg_id.get(),
            command: w.command.get(),
            msg_size: w.msg_size.get(),
            flags: w.flags.get(),
            error: w.error.get(),
        }
    }

    /// Check, in this order: `msg_size` ≥ 16, `msg_size` ≤
    /// `limits.max_msg_size`, no unknown flag bits, Type is 0 or 1,
    /// NO_REPLY only on commands, ERROR only on replies, `error` zero unless
    /// ERROR is set. The command number is checked by the body decoders, so
    /// an unknown command still frames (and gets an `EINVAL` reply).
    pub fn validate(&self, limits: &DecodeLimits) -> Result<Header> {
        if usize_from(self.msg_size) < HEADER_SIZE {
            return malformed(InvalidMessage::MsgSizeTooSmall {
                msg_size: self.msg_size,
            });
        }
        if self.msg_size > limits.max_msg_size {
            return illegal(PeerMisbehaved::MsgTooLarge {
                msg_size: self.msg_size,
                max: limits.max_msg_size,
            });
        }
        if self.flags & !KNOWN_FLAGS != 0 {
            return malformed(InvalidMessage::UnknownHeaderFlags { flags: self.flags });
        }
        let msg_type = match self.flags & VFIO_USER_F_TYPE_MASK {
            VFIO_USER_F_TYPE_COMMAND => MsgType::Command,
            VFIO_USER_F_TYPE_REPLY => MsgType::Reply,
            other => return malformed(InvalidMessage::UnknownMsgType { msg_type: other }),
        };
        let no_reply = self.flags & VFIO_USER_F_NO_REPLY != 0;
        let is_error = self.flags & VFIO_USER_F_ERROR != 0;
        if no_reply && msg_type == MsgType::Reply {
            return illegal(PeerMisbehaved::FlagNotAllowed {
                flag: VFIO_USER_F_NO_REPLY,
                msg_type,
            });
        }
        if is_error && msg_type == MsgType::Command {
            return illegal(PeerMisbehaved::FlagNotAllowed {
                flag: VFIO_USER_F_ERROR,
                msg_type,
            });
        }
        if !is_error && self.error != 0 {
            return illegal(PeerMisbehaved::StrayErrno { errno: self.error });
        }
        Ok(Header {
            msg_id: self.msg_id,
            command: self.command,
            msg_size: self.msg_size,
            msg_type,
            no_reply,
            error: is_error.then_some(self.error),
        })
    }
}

/// A validated header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Sender-chosen id, echoed in the reply.
    pub msg_id: u16,
    /// Command number as sent; use [`Header::command`] for the typed value.
    pub command: u16,
    /// Whole message size, header included (≥ 16).
    pub msg_size: u32,
    /// Command or reply.
    pub msg_type: MsgType,
    /// NO_REPLY (only ever set on commands).
    pub no_reply: bool,
    /// `Some(errno)` when the ERROR flag is set (only on replies); the errno
    /// may be 0 (the spec allows it).
    pub error: Option<u32>,
}

impl Header {
    /// [`RawHeader::parse`] then [`RawHeader::validate`].
    pub fn decode(bytes: &[u8; HEADER_SIZE], limits: &DecodeLimits) -> Result<Header> {
        RawHeader::parse(bytes).validate(limits)
    }

    /// Bytes that follow the header: `msg_size - 16`.
    #[must_use]
    pub fn body_len(&self) -> usize {
        usize_from(self.msg_size).saturating_sub(HEADER_SIZE)
    }

    /// The typed command (fails for 14 and unknown numbers).
    pub fn command(&self) -> Result<super::Command> {
        super::Command::from_raw(self.command)
    }

    /// The raw flags word this header encodes to.
    #[must_use]
    pub fn flags(&self) -> u32 {
        let mut f = match self.msg_type {
            MsgType::Command => VFIO_USER_F_TYPE_COMMAND,
            MsgType::Reply => VFIO_USER_F_TYPE_REPLY,
        };
        if self.no_reply {
            f |= VFIO_USER_F_NO_REPLY;
        }
        if self.error.is_some() {
            f |= VFIO_USER_F_ERROR;
        }
        f
    }

    /// The 16 wire bytes.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let w = HeaderWire::new(
            self.msg_id,
            self.command,
            self.msg_size,
            self.flags(),
            self.error.unwrap_or(0),
        );
        let mut out = [0u8; HEADER_SIZE];
        out.copy_from_slice(w.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::error::ProtoError;
    use rustix::io::Errno;

    fn raw(msg_size: u32, flags: u32, error: u32) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..2].copy_from_slice(&7u16.to_le_bytes());
        b[2..4].copy_from_slice(&9u16.to_le_bytes());
        b[4..8].copy_from_slice(&msg_size.to_le_bytes());
        b[8..12].copy_from_slice(&flags.to_le_bytes());
        b[12..16].copy_from_slice(&error.to_le_bytes());
        b
    }

    #[test]
    fn decode_command_fields_and_body_len() {
        let h = Header::decode(&raw(48, 0x10, 0), &DecodeLimits::default()).unwrap();
        assert_eq!(h.msg_id, 7);
        assert_eq!(h.command, 9);
        assert_eq!(h.msg_type, MsgType::Command);
        assert!(h.no_reply);
        assert_eq!(h.error, None);
        assert_eq!(h.body_len(), 32);
        assert_eq!(h.to_bytes(), raw(48, 0x10, 0));
    }

    #[test]
    fn decode_error_reply_keeps_errno_even_zero() {
        let h = Header::decode(&raw(16, 0x21, 0), &DecodeLimits::default()).unwrap();
        assert_eq!(h.error, Some(0));
        assert_eq!(h.msg_type, MsgType::Reply);
    }

    #[test]
    fn decode_msg_size_below_header_is_malformed_einval() {
        let err = Header::decode(&raw(8, 0, 0), &DecodeLimits::default()).unwrap_err();
        assert_eq!(
            err,
            ProtoError::Malformed(InvalidMessage::MsgSizeTooSmall { msg_size: 8 })
        );
        assert_eq!(err.errno(), Errno::INVAL);
        assert!(err.is_desync());
    }

    #[test]
    fn decode_msg_size_over_cap_is_illegal_e2big() {
        let limits = DecodeLimits {
            max_msg_size: 100,
            ..DecodeLimits::default()
        };
        let err = Header::decode(&raw(101, 0, 0), &limits).unwrap_err();
        assert_eq!(
            err,
            ProtoError::Illegal(PeerMisbehaved::MsgTooLarge {
                msg_size: 101,
                max: 100
            })
        );
        assert_eq!(err.errno(), Errno::TOOBIG);
    }

    #[test]
    fn decode_unknown_flag_bit_is_rejected() {
        let err = Header::decode(&raw(16, 0x40, 0), &DecodeLimits::default()).unwrap_err();
        assert_eq!(
            err,
            ProtoError::Malformed(InvalidMessage::UnknownHeaderFlags { flags: 0x40 })
        );
        assert_eq!(err.errno(), Errno::INVAL);
        assert!(!err.is_desync());
    }

    #[test]
    fn decode_type_2_is_unknown_msg_type() {
        let err = Header::decode(&raw(16, 2, 0), &DecodeLimits::default()).unwrap_err();
        assert_eq!(
            err,
            ProtoError::Malformed(InvalidMessage::UnknownMsgType { msg_type: 2 })
        );
    }

    #[test]
    fn decode_no_reply_on_reply_is_illegal() {
        let err = Header::decode(&raw(16, 0x11, 0), &DecodeLimits::default()).unwrap_err();
        assert_eq!(
            err,
            ProtoError::Illegal(PeerMisbehaved::FlagNotAllowed {
                flag: VFIO_USER_F_NO_REPLY,
                msg_type: MsgType::Reply
            })
        );
    }

    #[test]
    fn decode_error_on_command_is_illegal() {
        let err = Header::decode(&raw(16, 0x20, 5), &DecodeLimits::default()).unwrap_err();
        assert_eq!(
            err,
            ProtoError::Illegal(PeerMisbehaved::FlagNotAllowed {
                flag: VFIO_USER_F_ERROR,
                msg_type: MsgType::Command
            })
        );
    }

    #[test]
    fn decode_errno_without_error_flag_is_illegal() {
        let err = Header::decode(&raw(16, 1, 22), &DecodeLimits::default()).unwrap_err();
        assert_eq!(
            err,
            ProtoError::Illegal(PeerMisbehaved::StrayErrno { errno: 22 })
        );
    }

    #[test]
    fn raw_header_parse_never_fails_on_bad_header() {
        let r = RawHeader::parse(&raw(3, 0xff, 1));
        assert_eq!(
            (r.msg_id, r.command, r.msg_size, r.flags, r.error),
            (7, 9, 3, 0xff, 1)
        );
    }
}
