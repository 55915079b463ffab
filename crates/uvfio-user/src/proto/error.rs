//! Errors of the codec, sorted by blame (as rustls does).
//!
//! - [`InvalidMessage`]: the bytes did not decode (wrong size, unknown flag
//!   bits, bad JSON, a broken capability chain, ...).
//! - [`PeerMisbehaved`]: the message decoded, but the peer may not send it
//!   (over a negotiated or configured limit, wrong number of fds, a version
//!   the peer may not pick, ...).
//! - [`EncodeError`]: *we* asked the encoder for something unrepresentable.
//!
//! Every variant carries the offsets, sizes or values that explain it.
//! Offsets count from the start of the payload (the byte after the 16-byte
//! header) unless the variant says otherwise. The errno a server replies
//! with comes from one place: [`ProtoError::errno`] (in `errno.rs`).

use super::command::Command;
use super::fds::FdRule;
use super::header::MsgType;

/// Any failure to decode or accept a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The bytes do not form a valid message.
    #[error("malformed message: {0}")]
    Malformed(#[from] InvalidMessage),
    /// The message is well formed but the peer may not send it.
    #[error("peer misbehaved: {0}")]
    Illegal(#[from] PeerMisbehaved),
}

/// Which kind of JSON failure [`InvalidMessage::InvalidJson`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonErrorKind {
    /// Not JSON at all (or not UTF-8).
    Syntax,
    /// Valid JSON with a wrong type or an out-of-range value for a key.
    Data,
    /// The JSON text ended early.
    Eof,
}

/// The bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidMessage {
    /// `msg_size` is smaller than the 16-byte header.
    #[error("msg_size {msg_size} is smaller than the header")]
    MsgSizeTooSmall {
        /// The header's `msg_size`.
        msg_size: u32,
    },
    /// The body handed to the decoder is not `msg_size - 16` bytes long.
    #[error("body is {actual} bytes but the header announces {expected}")]
    BodyLenMismatch {
        /// `msg_size - 16`.
        expected: usize,
        /// Length of the body slice given.
        actual: usize,
    },
    /// Header flag bits outside Type, NO_REPLY and ERROR.
    #[error("unknown header flag bits {flags:#x}")]
    UnknownHeaderFlags {
        /// The whole `flags` word.
        flags: u32,
    },
    /// Header Type other than command (0) or reply (1).
    #[error("unknown message type {msg_type}")]
    UnknownMsgType {
        /// Bits 0-3 of the header flags.
        msg_type: u32,
    },
    /// Command number not defined by the spec.
    #[error("unknown command {command}")]
    UnknownCommand {
        /// The header's command.
        command: u16,
    },
    /// Command number removed from the spec (14, the v1 DIRTY_PAGES).
    #[error("command {command} was removed from the protocol")]
    RemovedCommand {
        /// The header's command.
        command: u16,
    },
    /// A structure needs more bytes than are left.
    #[error("{what}: need {needed} bytes at offset {offset}, only {available} left")]
    Truncated {
        /// The structure being read.
        what: &'static str,
        /// Offset of the structure.
        offset: usize,
        /// Bytes it needs.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// Bytes left over after the last structure of a payload.
    #[error("{what}: {len} trailing bytes at offset {offset}")]
    TrailingBytes {
        /// The payload.
        what: &'static str,
        /// Offset of the first extra byte.
        offset: usize,
        /// How many extra bytes.
        len: usize,
    },
    /// A length field disagrees with the bytes present (or with another field).
    #[error("{what}: declared {declared} but found {actual}")]
    LengthMismatch {
        /// The field.
        what: &'static str,
        /// Value of the field.
        declared: u64,
        /// What the rest of the message implies.
        actual: u64,
    },
    /// `argsz` is smaller than the structure it describes.
    #[error("{what}: argsz {argsz} is below the minimum {min}")]
    ArgszTooSmall {
        /// The structure.
        what: &'static str,
        /// The `argsz` field.
        argsz: u32,
        /// The structure's fixed size.
        min: u32,
    },
    /// An addition or multiplication of peer values overflowed.
    #[error("{what}: arithmetic overflow")]
    Overflow {
        /// What was being computed.
        what: &'static str,
    },
    /// Flag bits this protocol does not define.
    #[error("{what}: unknown flag bits in {flags:#x} (known {known:#x})")]
    UnknownFlags {
        /// The flags field.
        what: &'static str,
        /// The whole field.
        flags: u64,
        /// The bits that are defined.
        known: u64,
    },
    /// Defined flag bits in a combination the spec forbids.
    #[error("{what}: invalid flag combination {flags:#x}")]
    InvalidFlagCombination {
        /// The flags field.
        what: &'static str,
        /// The whole field.
        flags: u64,
    },
    /// A reserved or padding field is not zero.
    #[error("{what}: reserved field at offset {offset} is not zero")]
    ReservedNonZero {
        /// The field.
        what: &'static str,
        /// Its offset.
        offset: usize,
    },
    /// A field holds a value the spec does not define.
    #[error("{what}: invalid value {value:#x}")]
    InvalidValue {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// The VERSION JSON is not NUL-terminated.
    #[error("version capabilities ({len} bytes) are not NUL-terminated")]
    MissingNul {
        /// Length of the JSON part.
        len: usize,
    },
    /// The VERSION JSON contains a NUL before its end.
    #[error("version capabilities contain a NUL at byte {at}")]
    EmbeddedNul {
        /// Position within the JSON part.
        at: usize,
    },
    /// The VERSION JSON did not parse into capabilities.
    #[error("version capabilities JSON: {kind:?} error at line {line} column {column}")]
    InvalidJson {
        /// Syntax, type or early end.
        kind: JsonErrorKind,
        /// 1-based line (0 if unknown).
        line: usize,
        /// 1-based column (0 if unknown).
        column: usize,
    },
    /// A region capability's `next` (or `cap_offset`) points outside the
    /// region info, or the capability does not fit. Offsets count from the
    /// start of `vfio_region_info`.
    #[error("region capability at offset {offset} ({len} bytes) is out of bounds of {bound}")]
    CapOutOfBounds {
        /// Where the capability starts.
        offset: u64,
        /// Bytes it needs (0 if its header did not fit).
        len: u64,
        /// Size of the region info including capabilities.
        bound: u64,
    },
    /// A region capability's `next` points back at one already visited.
    #[error("region capability chain loops back to offset {offset}")]
    CapLoop {
        /// The repeated offset.
        offset: u64,
    },
    /// Two region capabilities (or a capability and the fixed part) overlap.
    #[error("region capability at offset {offset} overlaps another")]
    CapOverlap {
        /// Start of the overlapping capability.
        offset: u64,
    },
    /// A region capability id this protocol does not define.
    #[error("unknown region capability id {id} at offset {offset}")]
    UnknownCap {
        /// The capability id.
        id: u16,
        /// Its offset.
        offset: u64,
    },
    /// A region capability with a version we cannot parse.
    #[error("region capability id {id} has unsupported version {version}")]
    UnsupportedCapVersion {
        /// The capability id.
        id: u16,
        /// Its version.
        version: u16,
    },
    /// The same region capability id appears twice.
    #[error("region capability id {id} appears twice")]
    DuplicateCap {
        /// The capability id.
        id: u16,
    },
}

/// The message decoded, but the peer may not send it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerMisbehaved {
    /// `msg_size` is over the configured maximum.
    #[error("msg_size {msg_size} exceeds the maximum {max}")]
    MsgTooLarge {
        /// The header's `msg_size`.
        msg_size: u32,
        /// [`DecodeLimits::max_msg_size`](super::DecodeLimits::max_msg_size).
        max: u32,
    },
    /// A data transfer longer than the negotiated `max_data_xfer_size`.
    #[error("{what}: {len} bytes exceed the maximum {max}")]
    DataTooLarge {
        /// The field.
        what: &'static str,
        /// Its value.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// More items than a configured cap (capabilities, areas, entries).
    #[error("{what}: {count} exceeds the maximum {max}")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// How many the peer sent.
        count: u64,
        /// The cap.
        max: u64,
    },
    /// More fds than we advertised in `max_msg_fds`.
    #[error("{nfds} fds exceed the maximum {max}")]
    TooManyFds {
        /// Fds received with the message.
        nfds: usize,
        /// The limit.
        max: usize,
    },
    /// The number of fds does not fit the command.
    #[error("{command}: {nfds} fds received, expected {rule}")]
    UnexpectedFds {
        /// The message's command.
        command: Command,
        /// Fds received.
        nfds: usize,
        /// What the command allows.
        rule: FdRule,
    },
    /// A command where a reply was expected, or vice versa.
    #[error("expected a {expected:?}, got a {got:?}")]
    UnexpectedMsgType {
        /// What the decoder was asked for.
        expected: MsgType,
        /// What the header says.
        got: MsgType,
    },
    /// NO_REPLY on a reply, or ERROR on a command.
    #[error("header flag {flag:#x} is not allowed on a {msg_type:?}")]
    FlagNotAllowed {
        /// The offending flag bit.
        flag: u32,
        /// The message type.
        msg_type: MsgType,
    },
    /// A non-zero `error` field without the ERROR flag.
    #[error("error field {errno} set without the ERROR flag")]
    StrayErrno {
        /// The `error` field.
        errno: u32,
    },
    /// An error reply with a payload (error replies are the header alone).
    #[error("error reply carries {len} payload bytes")]
    ErrorReplyWithPayload {
        /// Payload length.
        len: usize,
    },
    /// A value outside the range the message itself (or the spec) allows.
    #[error("{what}: {value} is outside 0..{limit}")]
    OutOfRange {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The exclusive upper bound.
        limit: u64,
    },
    /// A VERSION capability value outside its bounds.
    #[error("capability {key} = {value} is outside {min}..={max}")]
    CapabilityOutOfRange {
        /// JSON key.
        key: &'static str,
        /// Value sent.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// The peer's major version differs from ours.
    #[error("version major {theirs} is not ours ({ours})")]
    VersionMajorMismatch {
        /// Our major.
        ours: u16,
        /// The peer's major.
        theirs: u16,
    },
    /// The server replied with a minor above the one proposed.
    #[error("server picked minor {replied}, above the proposed {proposed}")]
    VersionMinorTooHigh {
        /// Minor the client proposed.
        proposed: u16,
        /// Minor the server replied.
        replied: u16,
    },
    /// A capability in the reply that the proposal did not include.
    #[error("reply capability {key} was not proposed")]
    UnsolicitedCapability {
        /// JSON key.
        key: &'static str,
    },
}

/// We asked the encoder for something the wire cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A length does not fit its wire field (or the message exceeds `u32`).
    #[error("{what}: length {len} does not fit the wire format (max {max})")]
    TooLarge {
        /// The field or message.
        what: &'static str,
        /// Its length.
        len: u64,
        /// The most the field holds.
        max: u64,
    },
    /// Fields of the message contradict each other.
    #[error("{what}: inconsistent message")]
    Inconsistent {
        /// What is inconsistent.
        what: &'static str,
    },
}

/// Shorthand for results of this module.
pub type Result<T, E = ProtoError> = core::result::Result<T, E>;

impl From<serde_json::Error> for InvalidMessage {
    fn from(e: serde_json::Error) -> Self {
        use serde_json::error::Category;
        let kind = match e.classify() {
            Category::Data => JsonErrorKind::Data,
            Category::Eof => JsonErrorKind::Eof,
            Category::Syntax | Category::Io => JsonErrorKind::Syntax,
        };
        InvalidMessage::InvalidJson {
            kind,
            line: e.line(),
            column: e.column(),
        }
    }
}

/// Build a `ProtoError` from an `InvalidMessage` in one call.
pub(crate) fn malformed<T>(e: InvalidMessage) -> Result<T> {
    Err(ProtoError::Malformed(e))
}

/// Build a `ProtoError` from a `PeerMisbehaved` in one call.
pub(crate) fn illegal<T>(e: PeerMisbehaved) -> Result<T> {
    Err(ProtoError::Illegal(e))
}
