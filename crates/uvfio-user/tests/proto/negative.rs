//! Whole-message negative tests: each validation rule, its error variant
//! and the errno a server replies with. (Per-field rules are unit-tested
//! next to their decoders.)

use rustix::io::Errno;
use uvfio_user::proto::*;

/// A message with the given header fields and body (msg_size computed).
fn msg(command: u16, flags: u32, body: &[u8]) -> Vec<u8> {
    let size = u32::try_from(16 + body.len()).unwrap();
    let mut v = Vec::new();
    v.extend_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(&command.to_le_bytes());
    v.extend_from_slice(&size.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(body);
    v
}

fn err_of(bytes: &[u8], nfds: usize) -> ProtoError {
    decode_message(bytes, nfds, &DecodeLimits::default()).unwrap_err()
}

#[test]
fn decode_unknown_command_is_einval() {
    let e = err_of(&msg(99, 0, &[]), 0);
    assert_eq!(
        e,
        ProtoError::Malformed(InvalidMessage::UnknownCommand { command: 99 })
    );
    assert_eq!(e.errno(), Errno::INVAL);
}

#[test]
fn decode_removed_command_14_is_enotsup() {
    let e = err_of(&msg(14, 0, &[]), 0);
    assert_eq!(
        e,
        ProtoError::Malformed(InvalidMessage::RemovedCommand { command: 14 })
    );
    assert_eq!(e.errno(), Errno::NOTSUP);
}

#[test]
fn decode_request_given_a_reply_is_unexpected_type() {
    let bytes = msg(13, 1, &[]);
    let hdr = Header::decode(bytes[..16].try_into().unwrap(), &DecodeLimits::default()).unwrap();
    let e = decode_request(&hdr, &bytes[16..], 0, &DecodeLimits::default()).unwrap_err();
    assert_eq!(
        e,
        ProtoError::Illegal(PeerMisbehaved::UnexpectedMsgType {
            expected: MsgType::Command,
            got: MsgType::Reply
        })
    );
    assert_eq!(e.errno(), Errno::INVAL);
}

#[test]
fn decode_body_shorter_than_header_says_is_rejected() {
    let bytes = msg(13, 0, &[0; 4]);
    let hdr = Header::decode(bytes[..16].try_into().unwrap(), &DecodeLimits::default()).unwrap();
    let e = decode_request(&hdr, &bytes[16..18], 0, &DecodeLimits::default()).unwrap_err();
    assert_eq!(
        e,
        ProtoError::Malformed(InvalidMessage::BodyLenMismatch {
            expected: 4,
            actual: 2
        })
    );
}

#[test]
fn decode_reset_with_payload_is_trailing_bytes() {
    let e = err_of(&msg(13, 0, &[0; 4]), 0);
    assert_eq!(
        e,
        ProtoError::Malformed(InvalidMessage::TrailingBytes {
            what: "VFIO_USER_DEVICE_RESET",
            offset: 0,
            len: 4
        })
    );
    assert_eq!(e.errno(), Errno::INVAL);
}

#[test]
fn decode_dma_unmap_with_trailing_bytes_is_rejected() {
    let mut body = Vec::new();
    body.extend_from_slice(&24u32.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&0x1000u64.to_le_bytes());
    body.extend_from_slice(&0x1000u64.to_le_bytes());
    body.push(0);
    let e = err_of(&msg(3, 0, &body), 0);
    assert!(matches!(
        e,
        ProtoError::Malformed(InvalidMessage::TrailingBytes {
            offset: 24,
            len: 1,
            ..
        })
    ));
}

#[test]
fn decode_truncated_region_read_reports_offset() {
    let e = err_of(&msg(9, 0, &[0; 10]), 0);
    assert_eq!(
        e,
        ProtoError::Malformed(InvalidMessage::Truncated {
            what: "region_read",
            offset: 0,
            needed: 16,
            available: 10
        })
    );
}

#[test]
fn decode_fds_on_region_read_are_einval() {
    let mut body = Vec::new();
    body.extend_from_slice(&0u64.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&4u32.to_le_bytes());
    let e = err_of(&msg(9, 0, &body), 1);
    assert_eq!(
        e,
        ProtoError::Illegal(PeerMisbehaved::UnexpectedFds {
            command: Command::RegionRead,
            nfds: 1,
            rule: FdRule::None
        })
    );
    assert_eq!(e.errno(), Errno::INVAL);
}

#[test]
fn decode_more_fds_than_max_msg_fds_is_rejected() {
    let limits = DecodeLimits {
        max_fds: 2,
        ..DecodeLimits::default()
    };
    let e = decode_message(&msg(13, 0, &[]), 3, &limits).unwrap_err();
    assert_eq!(
        e,
        ProtoError::Illegal(PeerMisbehaved::TooManyFds { nfds: 3, max: 2 })
    );
}

#[test]
fn decode_error_reply_with_payload_is_rejected() {
    let mut bytes = msg(9, 0x21, &[0; 4]);
    bytes[12] = 5;
    let e = err_of(&bytes, 0);
    assert_eq!(
        e,
        ProtoError::Illegal(PeerMisbehaved::ErrorReplyWithPayload { len: 4 })
    );
}

#[test]
fn decode_msg_size_over_limit_is_e2big_and_desync() {
    let limits = DecodeLimits {
        max_msg_size: 64,
        ..DecodeLimits::default()
    };
    let e = decode_message(&msg(10, 0, &[0; 60]), 0, &limits).unwrap_err();
    assert_eq!(
        e,
        ProtoError::Illegal(PeerMisbehaved::MsgTooLarge {
            msg_size: 76,
            max: 64
        })
    );
    assert_eq!(e.errno(), Errno::TOOBIG);
    assert!(e.is_desync());
}

#[test]
fn decode_region_write_over_negotiated_xfer_is_e2big() {
    let limits = DecodeLimits {
        max_data_xfer_size: 4,
        ..DecodeLimits::default()
    };
    let mut body = Vec::new();
    body.extend_from_slice(&0u64.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&8u32.to_le_bytes());
    body.extend_from_slice(&[0; 8]);
    let e = decode_message(&msg(10, 0, &body), 0, &limits).unwrap_err();
    assert_eq!(
        e,
        ProtoError::Illegal(PeerMisbehaved::DataTooLarge {
            what: "region_write",
            len: 8,
            max: 4
        })
    );
    assert_eq!(e.errno(), Errno::TOOBIG);
}

#[test]
fn decode_version_without_nul_is_einval() {
    let mut body = vec![0, 0, 0, 0];
    body.extend_from_slice(b"{}");
    let e = err_of(&msg(1, 0, &body), 0);
    assert_eq!(
        e,
        ProtoError::Malformed(InvalidMessage::MissingNul { len: 2 })
    );
    assert_eq!(e.errno(), Errno::INVAL);
}

#[test]
fn decode_region_info_reply_fd_without_mmap_is_rejected() {
    let mut body = Vec::new();
    body.extend_from_slice(&32u32.to_le_bytes());
    body.extend_from_slice(&VFIO_REGION_INFO_FLAG_READ.to_le_bytes());
    body.extend_from_slice(&[0; 24]);
    assert!(decode_message(&msg(5, 1, &body), 0, &DecodeLimits::default()).is_ok());
    let e = err_of(&msg(5, 1, &body), 1);
    assert!(matches!(
        e,
        ProtoError::Illegal(PeerMisbehaved::UnexpectedFds { nfds: 1, .. })
    ));
}

#[test]
fn decode_version_reply_with_two_fds_is_rejected() {
    let e = err_of(&msg(1, 1, &[0, 0, 0, 0]), 2);
    assert!(matches!(
        e,
        ProtoError::Illegal(PeerMisbehaved::UnexpectedFds {
            rule: FdRule::AtMostOne,
            ..
        })
    ));
}

#[test]
fn decode_message_shorter_than_header_is_truncated() {
    let e = err_of(&[1, 2, 3], 0);
    assert!(matches!(
        e,
        ProtoError::Malformed(InvalidMessage::Truncated { what: "header", .. })
    ));
}

#[test]
fn encode_inconsistent_message_leaves_buffer_unchanged() {
    let mut out = vec![0xaa; 3];
    let bad = SetIrqs {
        index: 0,
        start: 0,
        count: 3,
        action: IrqAction::Trigger,
        data: IrqData::Bool(&[1]),
    };
    let e = Request::DeviceSetIrqs(bad)
        .encode(1, false, &mut out)
        .unwrap_err();
    assert!(matches!(e, EncodeError::Inconsistent { .. }));
    assert_eq!(out, vec![0xaa; 3]);
}

#[test]
fn encode_fill_error_leaves_buffer_unchanged() {
    let mut out = vec![1, 2];
    let access = RegionAccess {
        offset: 0,
        region: 0,
        count: 8,
    };
    let r = encode_region_read_reply_with(1, &access, &mut out, |_| Err(Errno::IO));
    assert_eq!(r, Err(FillError::Fill(Errno::IO)));
    assert_eq!(out, vec![1, 2]);
}

#[test]
fn encode_appends_to_existing_buffer() {
    let mut out = vec![0xff];
    Request::DeviceReset.encode(2, true, &mut out).unwrap();
    assert_eq!(out.len(), 17);
    let hdr = Header::decode(out[1..17].try_into().unwrap(), &DecodeLimits::default()).unwrap();
    assert!(hdr.no_reply);
    assert_eq!(hdr.msg_size, 16);
    assert_eq!(hdr.command().unwrap(), Command::DeviceReset);
}
