//! The one mapping from codec errors to the errno a server replies with.
//!
//! Mostly `EINVAL`, as libvfio-user does (including for unknown commands);
//! `E2BIG` for anything over a size or count cap; `EOVERFLOW` when peer
//! arithmetic overflows (Linux `vfio_main.c` order of checks); `ENOTSUP` for
//! the removed command 14.

use rustix::io::Errno;

use super::error::{InvalidMessage, PeerMisbehaved, ProtoError};

impl From<&ProtoError> for Errno {
    fn from(e: &ProtoError) -> Errno {
        match e {
            ProtoError::Malformed(m) => match m {
                InvalidMessage::Overflow { .. } => Errno::OVERFLOW,
                InvalidMessage::RemovedCommand { .. } => Errno::NOTSUP,
                InvalidMessage::MsgSizeTooSmall { .. }
                | InvalidMessage::BodyLenMismatch { .. }
                | InvalidMessage::UnknownHeaderFlags { .. }
                | InvalidMessage::UnknownMsgType { .. }
                | InvalidMessage::UnknownCommand { .. }
                | InvalidMessage::Truncated { .. }
                | InvalidMessage::TrailingBytes { .. }
                | InvalidMessage::LengthMismatch { .. }
                | InvalidMessage::ArgszTooSmall { .. }
                | InvalidMessage::UnknownFlags { .. }
                | InvalidMessage::InvalidFlagCombination { .. }
                | InvalidMessage::ReservedNonZero { .. }
                | InvalidMessage::InvalidValue { .. }
                | InvalidMessage::MissingNul { .. }
                | InvalidMessage::EmbeddedNul { .. }
                | InvalidMessage::InvalidJson { .. }
                | InvalidMessage::CapOutOfBounds { .. }
                | InvalidMessage::CapLoop { .. }
                | InvalidMessage::CapOverlap { .. }
                | InvalidMessage::UnknownCap { .. }
                | InvalidMessage::UnsupportedCapVersion { .. }
                | InvalidMessage::DuplicateCap { .. } => Errno::INVAL,
            },
            ProtoError::Illegal(p) => match p {
                PeerMisbehaved::MsgTooLarge { .. }
                | PeerMisbehaved::DataTooLarge { .. }
                | PeerMisbehaved::TooMany { .. } => Errno::TOOBIG,
                PeerMisbehaved::TooManyFds { .. }
                | PeerMisbehaved::UnexpectedFds { .. }
                | PeerMisbehaved::UnexpectedMsgType { .. }
                | PeerMisbehaved::FlagNotAllowed { .. }
                | PeerMisbehaved::StrayErrno { .. }
                | PeerMisbehaved::ErrorReplyWithPayload { .. }
                | PeerMisbehaved::OutOfRange { .. }
                | PeerMisbehaved::CapabilityOutOfRange { .. }
                | PeerMisbehaved::VersionMajorMismatch { .. }
                | PeerMisbehaved::VersionMinorTooHigh { .. }
                | PeerMisbehaved::UnsolicitedCapability { .. } => Errno::INVAL,
            },
        }
    }
}

impl ProtoError {
    /// The errno a server should put in its error reply for this error.
    #[must_use]
    pub fn errno(&self) -> Errno {
        Errno::from(self)
    }

    /// True when the error means the byte stream can no longer be trusted
    /// to be framed correctly (the frame length itself is bad), so the
    /// connection should be dropped instead of answered.
    #[must_use]
    pub fn is_desync(&self) -> bool {
        matches!(
            self,
            ProtoError::Malformed(InvalidMessage::MsgSizeTooSmall { .. })
                | ProtoError::Illegal(PeerMisbehaved::MsgTooLarge { .. })
        )
    }
}
