//! VFIO_USER_VERSION (1): version and capability negotiation (spec §2).
//!
//! Payload: `major u16@0`, `minor u16@2`, then optional NUL-terminated UTF-8
//! JSON `{"capabilities": {...}}`. Every key is optional and unknown keys
//! are ignored; a known key with the wrong type, malformed JSON or a missing
//! NUL is an error. Values are bounds-checked ([`Capabilities::validate`]).
//!
//! Each side's capabilities describe what *it* can receive, so after
//! negotiation a side sends within `theirs` and decodes within `ours`
//! ([`Negotiated`]). The server answers with [`negotiate_server`]; the client
//! checks the answer with [`negotiate_client`].

use serde::{Deserialize, Serialize};
use zerocopy::little_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::error::{illegal, malformed, EncodeError, InvalidMessage, PeerMisbehaved, Result};
use super::limits::{DecodeLimits, DEFAULT_MAX_DATA_XFER_SIZE, MAX_MSG_FDS_LIMIT};
use super::reader::{usize_from, Reader};
use super::writer::Frame;
use super::{Command, FdRule};

/// Major version this crate speaks.
pub const VFIO_USER_MAJOR: u16 = 0;
/// Highest minor version this crate speaks (libvfio-user's).
pub const VFIO_USER_MINOR: u16 = 2;
/// Spec default for `max_msg_fds`.
pub const DEFAULT_CAP_MAX_MSG_FDS: u32 = 1;
/// Spec default for `max_dma_maps`.
pub const DEFAULT_CAP_MAX_DMA_MAPS: u32 = 65535;
/// Spec default for `pgsizes`.
pub const DEFAULT_CAP_PGSIZES: u64 = 4096;

/// Wire layout of the fixed part of the VERSION payload.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct VersionWire {
    major: U16,
    minor: U16,
}
const _: () = assert!(core::mem::size_of::<VersionWire>() == 4);

/// The `capabilities` object. `Default` gives the spec's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    /// Most fds the sender of these capabilities can receive in one message.
    pub max_msg_fds: u32,
    /// Largest data `count` the sender accepts in one message.
    pub max_data_xfer_size: u32,
    /// Most DMA windows mapped at once.
    pub max_dma_maps: u32,
    /// OR of the page sizes allowed in DMA_MAP.
    pub pgsizes: u64,
    /// Legacy migration v1 parameters (still sent by real peers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationCaps>,
    /// Twin-socket mode for server-to-client commands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub twin_socket: Option<TwinSocket>,
    /// The sender accepts REGION_WRITE_MULTI. Emitted only when true.
    #[serde(skip_serializing_if = "is_false")]
    pub write_multiple: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            max_msg_fds: DEFAULT_CAP_MAX_MSG_FDS,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER_SIZE,
            max_dma_maps: DEFAULT_CAP_MAX_DMA_MAPS,
            pgsizes: DEFAULT_CAP_PGSIZES,
            migration: None,
            twin_socket: None,
            write_multiple: false,
        }
    }
}

/// `"migration": {"pgsize": N, "max_bitmap_size": N}` (legacy, both optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MigrationCaps {
    /// Dirty-page granularity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pgsize: Option<u64>,
    /// Largest dirty bitmap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bitmap_size: Option<u64>,
}

/// `"twin_socket": {"supported": bool, "fd_index": N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TwinSocket {
    /// The sender supports twin-socket mode.
    pub supported: bool,
    /// Reply only: index of the socket fd among the reply's fds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd_index: Option<u32>,
}

/// Top-level JSON object.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct VersionJson {
    capabilities: Option<Capabilities>,
}

impl Capabilities {
    /// Bounds: `max_msg_fds` ≤ 1024, `max_data_xfer_size` ≥ 1, `pgsizes` ≠ 0.
    /// (Values too large for their field type already fail JSON parsing.)
    pub fn validate(&self) -> Result<()> {
        check_range(
            "max_msg_fds",
            u64::from(self.max_msg_fds),
            0,
            u64::from(MAX_MSG_FDS_LIMIT),
        )?;
        check_range(
            "max_data_xfer_size",
            u64::from(self.max_data_xfer_size),
            1,
            u64::from(u32::MAX),
        )?;
        check_range("pgsizes", self.pgsizes, 1, u64::MAX)?;
        Ok(())
    }

    /// True when these capabilities offer twin-socket mode.
    #[must_use]
    pub fn twin_socket_supported(&self) -> bool {
        self.twin_socket.is_some_and(|t| t.supported)
    }
}

fn check_range(key: &'static str, value: u64, min: u64, max: u64) -> Result<()> {
    if value < min || value > max {
        return illegal(PeerMisbehaved::CapabilityOutOfRange {
            key,
            value,
            min,
            max,
        });
    }
    Ok(())
}

/// VERSION payload (request and reply have the same layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// `None` when the payload had no JSON (the spec defaults then apply);
    /// we always emit `Some`.
    pub capabilities: Option<Capabilities>,
}

impl Version {
    /// Our proposal/offer: our version with `caps`.
    #[must_use]
    pub fn ours(caps: Capabilities) -> Version {
        Version {
            major: VFIO_USER_MAJOR,
            minor: VFIO_USER_MINOR,
            capabilities: Some(caps),
        }
    }

    /// The capabilities in force: the JSON's, or the spec defaults.
    #[must_use]
    pub fn effective_capabilities(&self) -> Capabilities {
        self.capabilities.clone().unwrap_or_default()
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Version> {
        let mut r = Reader::new(body);
        let w: VersionWire = r.read("version")?;
        let capabilities = parse_capabilities(r.rest())?;
        Ok(Version {
            major: w.major.get(),
            minor: w.minor.get(),
            capabilities,
        })
    }

    pub(crate) fn encode_payload(
        &self,
        f: &mut Frame<'_>,
    ) -> core::result::Result<(), EncodeError> {
        f.put(&VersionWire {
            major: U16::new(self.major),
            minor: U16::new(self.minor),
        });
        if let Some(caps) = &self.capabilities {
            let json = VersionJson {
                capabilities: Some(caps.clone()),
            };
            let text = serde_json::to_vec(&json).map_err(|_| EncodeError::Inconsistent {
                what: "version capabilities JSON",
            })?;
            f.put_bytes(&text);
            f.put_bytes(&[0]);
        }
        Ok(())
    }
}

/// Parse the JSON part of a VERSION payload (everything after `minor`).
///
/// Empty input means "no JSON" (`Ok(None)`). Otherwise the bytes must end
/// with the only NUL, hold valid UTF-8 JSON whose known keys have the right
/// types, and pass [`Capabilities::validate`]. A JSON object without a
/// `capabilities` key gives the defaults.
pub fn parse_capabilities(json_with_nul: &[u8]) -> Result<Option<Capabilities>> {
    let Some((&last, json)) = json_with_nul.split_last() else {
        return Ok(None);
    };
    if last != 0 {
        return malformed(InvalidMessage::MissingNul {
            len: json_with_nul.len(),
        });
    }
    if let Some(at) = json.iter().position(|&b| b == 0) {
        return malformed(InvalidMessage::EmbeddedNul { at });
    }
    let parsed: VersionJson = serde_json::from_slice(json).map_err(InvalidMessage::from)?;
    let caps = parsed.capabilities.unwrap_or_default();
    caps.validate()?;
    Ok(Some(caps))
}

/// The outcome of negotiation, kept by the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Agreed major.
    pub major: u16,
    /// Agreed minor (the server's reply).
    pub minor: u16,
    /// What we advertised: bounds for what we receive.
    pub ours: Capabilities,
    /// What the peer advertised: bounds for what we send.
    pub theirs: Capabilities,
    /// Twin-socket mode: index of the socket among the VERSION reply's fds.
    pub twin_socket_fd_index: Option<u32>,
}

impl Negotiated {
    /// Decoder bounds from what we advertised.
    #[must_use]
    pub fn decode_limits(&self) -> DecodeLimits {
        let base = DecodeLimits::default();
        let max_msg_size = self
            .ours
            .max_data_xfer_size
            .saturating_add(base.max_msg_size - base.max_data_xfer_size)
            .max(base.max_msg_size);
        DecodeLimits {
            max_msg_size,
            max_data_xfer_size: self.ours.max_data_xfer_size,
            max_fds: usize_from(self.ours.max_msg_fds),
            ..base
        }
    }

    /// Largest data transfer we may send in one message.
    #[must_use]
    pub fn max_send_data_xfer_size(&self) -> u32 {
        self.theirs.max_data_xfer_size
    }

    /// Most fds we may attach to one message.
    #[must_use]
    pub fn max_send_fds(&self) -> u32 {
        self.theirs.max_msg_fds
    }

    /// The peer accepts REGION_WRITE_MULTI.
    #[must_use]
    pub fn peer_accepts_write_multiple(&self) -> bool {
        self.theirs.write_multiple
    }
}

/// Server side: answer the client's `proposal` with our `offer`.
///
/// The majors must be equal; the reply minor is `min(ours, theirs)`; the
/// reply always carries a `capabilities` object (our receive limits), with
/// `twin_socket` only if both sides support it (then `fd_index` 0: attach
/// the client end of a socketpair as the reply's only fd) and `migration`
/// only if the client sent it.
pub fn negotiate_server(offer: &Version, proposal: &Version) -> Result<(Version, Negotiated)> {
    if proposal.major != offer.major {
        return illegal(PeerMisbehaved::VersionMajorMismatch {
            ours: offer.major,
            theirs: proposal.major,
        });
    }
    let theirs = proposal.effective_capabilities();
    theirs.validate()?;
    let mut caps = offer.effective_capabilities();
    let twin = theirs.twin_socket_supported() && caps.twin_socket_supported();
    caps.twin_socket = twin.then_some(TwinSocket {
        supported: true,
        fd_index: Some(0),
    });
    if theirs.migration.is_none() {
        caps.migration = None;
    }
    let minor = offer.minor.min(proposal.minor);
    let reply = Version {
        major: offer.major,
        minor,
        capabilities: Some(caps.clone()),
    };
    let negotiated = Negotiated {
        major: offer.major,
        minor,
        ours: caps,
        theirs,
        twin_socket_fd_index: twin.then_some(0),
    };
    Ok((reply, negotiated))
}

/// Client side: check the server's `reply` to our `proposal`; `nfds` is the
/// number of fds that came with the reply.
///
/// The major must be ours, the minor at most ours, `twin_socket` and
/// `migration` only if we proposed them, and a twin socket needs a valid
/// `fd_index` (and exactly one fd); otherwise no fds.
pub fn negotiate_client(proposal: &Version, reply: &Version, nfds: usize) -> Result<Negotiated> {
    if reply.major != proposal.major {
        return illegal(PeerMisbehaved::VersionMajorMismatch {
            ours: proposal.major,
            theirs: reply.major,
        });
    }
    if reply.minor > proposal.minor {
        return illegal(PeerMisbehaved::VersionMinorTooHigh {
            proposed: proposal.minor,
            replied: reply.minor,
        });
    }
    let ours = proposal.effective_capabilities();
    let theirs = reply.effective_capabilities();
    theirs.validate()?;
    if theirs.migration.is_some() && ours.migration.is_none() {
        return illegal(PeerMisbehaved::UnsolicitedCapability { key: "migration" });
    }
    let twin_socket_fd_index = if theirs.twin_socket_supported() {
        if !ours.twin_socket_supported() {
            return illegal(PeerMisbehaved::UnsolicitedCapability { key: "twin_socket" });
        }
        let Some(index) = theirs.twin_socket.and_then(|t| t.fd_index) else {
            return malformed(InvalidMessage::InvalidValue {
                what: "twin_socket.fd_index (missing)",
                value: 0,
            });
        };
        if usize_from(index) >= nfds {
            return illegal(PeerMisbehaved::OutOfRange {
                what: "twin_socket.fd_index",
                value: u64::from(index),
                limit: super::reader::u64_from_usize(nfds),
            });
        }
        Some(index)
    } else {
        None
    };
    let rule = if twin_socket_fd_index.is_some() {
        FdRule::Exactly(1)
    } else {
        FdRule::None
    };
    if !rule.allows(nfds) {
        return illegal(PeerMisbehaved::UnexpectedFds {
            command: Command::Version,
            nfds,
            rule,
        });
    }
    Ok(Negotiated {
        major: reply.major,
        minor: reply.minor,
        ours,
        theirs,
        twin_socket_fd_index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::error::{JsonErrorKind, ProtoError};
    use rustix::io::Errno;

    #[test]
    fn parse_capabilities_empty_is_none() {
        assert_eq!(parse_capabilities(b""), Ok(None));
    }

    #[test]
    fn parse_capabilities_qemu_proposal_reads_all_keys() {
        let json = b"{\"capabilities\":{\"max_msg_fds\":16,\"max_data_xfer_size\":1048576,\"pgsizes\":4096,\
\"max_dma_maps\":65535,\"migration\":{\"pgsize\":4096,\"max_bitmap_size\":268435456},\"write_multiple\":true}}\0";
        let caps = parse_capabilities(json).unwrap().unwrap();
        assert_eq!(caps.max_msg_fds, 16);
        assert_eq!(caps.max_data_xfer_size, 1 << 20);
        assert_eq!(caps.pgsizes, 4096);
        assert_eq!(caps.max_dma_maps, 65535);
        assert_eq!(
            caps.migration,
            Some(MigrationCaps {
                pgsize: Some(4096),
                max_bitmap_size: Some(256 << 20)
            })
        );
        assert!(caps.write_multiple);
        assert_eq!(caps.twin_socket, None);
    }

    #[test]
    fn parse_capabilities_unknown_keys_ignored_and_defaults_apply() {
        let caps = parse_capabilities(b"{\"capabilities\":{\"future\":[1,2]},\"other\":1}\0")
            .unwrap()
            .unwrap();
        assert_eq!(caps, Capabilities::default());
    }

    #[test]
    fn parse_capabilities_without_capabilities_key_is_default() {
        assert_eq!(
            parse_capabilities(b"{}\0"),
            Ok(Some(Capabilities::default()))
        );
    }

    #[test]
    fn parse_capabilities_missing_nul_is_malformed() {
        let err = parse_capabilities(b"{}").unwrap_err();
        assert_eq!(
            err,
            ProtoError::Malformed(InvalidMessage::MissingNul { len: 2 })
        );
        assert_eq!(err.errno(), Errno::INVAL);
    }

    #[test]
    fn parse_capabilities_embedded_nul_is_malformed() {
        let err = parse_capabilities(b"{}\0 \0").unwrap_err();
        assert_eq!(
            err,
            ProtoError::Malformed(InvalidMessage::EmbeddedNul { at: 2 })
        );
    }

    #[test]
    fn parse_capabilities_wrong_type_is_data_error() {
        let err = parse_capabilities(b"{\"capabilities\":{\"max_msg_fds\":\"8\"}}\0").unwrap_err();
        assert!(matches!(
            err,
            ProtoError::Malformed(InvalidMessage::InvalidJson {
                kind: JsonErrorKind::Data,
                ..
            })
        ));
        assert_eq!(err.errno(), Errno::INVAL);
    }

    #[test]
    fn parse_capabilities_negative_and_float_are_data_errors() {
        for text in [
            &b"{\"capabilities\":{\"max_msg_fds\":-1}}\0"[..],
            &b"{\"capabilities\":{\"pgsizes\":4096.5}}\0"[..],
            &b"{\"capabilities\":{\"write_multiple\":1}}\0"[..],
            &b"{\"capabilities\":{\"twin_socket\":{\"supported\":\"yes\"}}}\0"[..],
            &b"{\"capabilities\":{\"max_dma_maps\":4294967296}}\0"[..],
        ] {
            let err = parse_capabilities(text).unwrap_err();
            assert!(
                matches!(
                    err,
                    ProtoError::Malformed(InvalidMessage::InvalidJson {
                        kind: JsonErrorKind::Data,
                        ..
                    })
                ),
                "{err:?}"
            );
        }
    }

    #[test]
    fn parse_capabilities_bad_syntax_and_eof() {
        let err = parse_capabilities(b"{\"capabilities\":\0").unwrap_err();
        assert!(matches!(
            err,
            ProtoError::Malformed(InvalidMessage::InvalidJson {
                kind: JsonErrorKind::Eof,
                ..
            })
        ));
        let err = parse_capabilities(b"nope\0").unwrap_err();
        assert!(matches!(
            err,
            ProtoError::Malformed(InvalidMessage::InvalidJson {
                kind: JsonErrorKind::Syntax,
                ..
            })
        ));
        let err = parse_capabilities(b"\xff\0").unwrap_err();
        assert!(matches!(
            err,
            ProtoError::Malformed(InvalidMessage::InvalidJson { .. })
        ));
    }

    #[test]
    fn parse_capabilities_too_many_fds_is_out_of_range() {
        let err = parse_capabilities(b"{\"capabilities\":{\"max_msg_fds\":1025}}\0").unwrap_err();
        assert_eq!(
            err,
            ProtoError::Illegal(PeerMisbehaved::CapabilityOutOfRange {
                key: "max_msg_fds",
                value: 1025,
                min: 0,
                max: 1024
            })
        );
        assert_eq!(err.errno(), Errno::INVAL);
    }

    #[test]
    fn parse_capabilities_zero_xfer_size_and_pgsizes_rejected() {
        assert!(matches!(
            parse_capabilities(b"{\"capabilities\":{\"max_data_xfer_size\":0}}\0"),
            Err(ProtoError::Illegal(PeerMisbehaved::CapabilityOutOfRange {
                key: "max_data_xfer_size",
                ..
            }))
        ));
        assert!(matches!(
            parse_capabilities(b"{\"capabilities\":{\"pgsizes\":0}}\0"),
            Err(ProtoError::Illegal(PeerMisbehaved::CapabilityOutOfRange {
                key: "pgsizes",
                ..
            }))
        ));
    }

    #[test]
    fn emitted_json_always_has_capabilities_object_and_nul() {
        let mut out = Vec::new();
        let v = Version::ours(Capabilities::default());
        let f = {
            let mut f = Frame::begin(&mut out, 1, 1, 0, 0);
            v.encode_payload(&mut f).unwrap();
            f.finish()
        };
        f.unwrap();
        let json = &out[16 + 4..];
        assert_eq!(json.last(), Some(&0));
        let text = core::str::from_utf8(&json[..json.len() - 1]).unwrap();
        assert!(text.starts_with("{\"capabilities\":{"), "{text}");
    }

    fn caps(f: impl FnOnce(&mut Capabilities)) -> Capabilities {
        let mut c = Capabilities::default();
        f(&mut c);
        c
    }

    #[test]
    fn negotiate_server_picks_min_minor_and_our_caps() {
        let offer = Version::ours(caps(|c| c.max_msg_fds = 8));
        let proposal = Version {
            major: 0,
            minor: 0,
            capabilities: Some(caps(|c| {
                c.max_msg_fds = 16;
                c.write_multiple = true;
            })),
        };
        let (reply, n) = negotiate_server(&offer, &proposal).unwrap();
        assert_eq!(reply.major, 0);
        assert_eq!(reply.minor, 0);
        assert_eq!(reply.capabilities.as_ref().unwrap().max_msg_fds, 8);
        assert_eq!(n.max_send_fds(), 16);
        assert!(n.peer_accepts_write_multiple());
        assert_eq!(n.decode_limits().max_fds, 8);
        assert_eq!(n.twin_socket_fd_index, None);
    }

    #[test]
    fn negotiate_server_without_json_uses_defaults() {
        let offer = Version::ours(Capabilities::default());
        let proposal = Version {
            major: 0,
            minor: 5,
            capabilities: None,
        };
        let (reply, n) = negotiate_server(&offer, &proposal).unwrap();
        assert_eq!(reply.minor, VFIO_USER_MINOR);
        assert!(reply.capabilities.is_some());
        assert_eq!(n.theirs, Capabilities::default());
    }

    #[test]
    fn negotiate_server_major_mismatch_is_illegal() {
        let offer = Version::ours(Capabilities::default());
        let proposal = Version {
            major: 1,
            minor: 0,
            capabilities: None,
        };
        assert_eq!(
            negotiate_server(&offer, &proposal).unwrap_err(),
            ProtoError::Illegal(PeerMisbehaved::VersionMajorMismatch { ours: 0, theirs: 1 })
        );
    }

    #[test]
    fn negotiate_server_twin_socket_only_when_both_support() {
        let twin = Some(TwinSocket {
            supported: true,
            fd_index: None,
        });
        let offer = Version::ours(caps(|c| c.twin_socket = twin));
        let with = Version::ours(caps(|c| c.twin_socket = twin));
        let without = Version::ours(Capabilities::default());
        let (reply, n) = negotiate_server(&offer, &with).unwrap();
        assert_eq!(
            reply.capabilities.unwrap().twin_socket,
            Some(TwinSocket {
                supported: true,
                fd_index: Some(0)
            })
        );
        assert_eq!(n.twin_socket_fd_index, Some(0));
        let (reply, n) = negotiate_server(&offer, &without).unwrap();
        assert_eq!(reply.capabilities.unwrap().twin_socket, None);
        assert_eq!(n.twin_socket_fd_index, None);
    }

    #[test]
    fn negotiate_client_accepts_server_reply_and_twin_socket() {
        let twin = Some(TwinSocket {
            supported: true,
            fd_index: None,
        });
        let proposal = Version::ours(caps(|c| c.twin_socket = twin));
        let offer = Version::ours(caps(|c| c.twin_socket = twin));
        let (reply, _) = negotiate_server(&offer, &proposal).unwrap();
        let n = negotiate_client(&proposal, &reply, 1).unwrap();
        assert_eq!(n.twin_socket_fd_index, Some(0));
        let err = negotiate_client(&proposal, &reply, 0).unwrap_err();
        assert!(matches!(
            err,
            ProtoError::Illegal(PeerMisbehaved::OutOfRange { .. })
        ));
    }

    #[test]
    fn negotiate_client_rejects_higher_minor_and_stray_fd() {
        let proposal = Version {
            major: 0,
            minor: 0,
            capabilities: Some(Capabilities::default()),
        };
        let reply = Version {
            major: 0,
            minor: 1,
            capabilities: None,
        };
        assert_eq!(
            negotiate_client(&proposal, &reply, 0).unwrap_err(),
            ProtoError::Illegal(PeerMisbehaved::VersionMinorTooHigh {
                proposed: 0,
                replied: 1
            })
        );
        let reply = Version {
            major: 0,
            minor: 0,
            capabilities: None,
        };
        assert!(matches!(
            negotiate_client(&proposal, &reply, 1).unwrap_err(),
            ProtoError::Illegal(PeerMisbehaved::UnexpectedFds { nfds: 1, .. })
        ));
    }

    #[test]
    fn negotiate_client_rejects_unsolicited_twin_socket() {
        let proposal = Version::ours(Capabilities::default());
        let reply = Version::ours(caps(|c| {
            c.twin_socket = Some(TwinSocket {
                supported: true,
                fd_index: Some(0),
            })
        }));
        assert_eq!(
            negotiate_client(&proposal, &reply, 1).unwrap_err(),
            ProtoError::Illegal(PeerMisbehaved::UnsolicitedCapability { key: "twin_socket" })
        );
    }
}
