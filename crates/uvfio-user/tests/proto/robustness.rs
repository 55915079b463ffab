//! The decoders never panic: random bytes, random header + body, mutated
//! valid messages, random capability chains, random version JSON. (The
//! CI-sized counterpart of the cargo-fuzz targets in `fuzz/`.)

use proptest::collection::vec;
use proptest::prelude::*;
use uvfio_user::proto::*;

use crate::roundtrip::{reply, request, with_reply, with_request};

fn small_limits() -> DecodeLimits {
    DecodeLimits {
        max_msg_size: 4096,
        max_data_xfer_size: 256,
        max_fds: 4,
        ..DecodeLimits::default()
    }
}

fn header(msg_id: u16, command: u16, msg_size: u32, flags: u32, error: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&msg_id.to_le_bytes());
    v.extend_from_slice(&command.to_le_bytes());
    v.extend_from_slice(&msg_size.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(&error.to_le_bytes());
    v
}

/// Decode; if that succeeds and the message re-encodes, the re-encoded
/// bytes must decode to the same message (what the fuzz target asserts).
fn decode_and_reencode(bytes: &[u8], nfds: usize) {
    let limits = DecodeLimits::default();
    let Ok((header, msg)) = decode_message(bytes, nfds, &limits) else {
        return;
    };
    let mut out = Vec::new();
    let encoded = match &msg {
        Message::Request(r) => r.encode(header.msg_id, header.no_reply, &mut out),
        Message::Reply(r) => r.encode(header.msg_id, &mut out),
    };
    if encoded.is_ok() {
        let (_, again) = decode_message(&out, nfds, &limits).expect("re-encoded message decodes");
        assert_eq!(again, msg);
    }
}

fn flags() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(0x10),
        Just(0x21),
        Just(0x20),
        any::<u32>()
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..512), nfds in 0usize..8) {
        let _ = decode_message(&bytes, nfds, &DecodeLimits::default());
        let _ = decode_message(&bytes, nfds, &small_limits());
    }

    #[test]
    fn random_header_and_body_never_panic(
        command in 0u16..=20,
        flags in flags(),
        error in prop_oneof![Just(0u32), any::<u32>()],
        body in vec(any::<u8>(), 0..256),
        nfds in 0usize..6,
    ) {
        let size = u32::try_from(16 + body.len()).unwrap();
        let mut bytes = header(1, command, size, flags, error);
        bytes.extend_from_slice(&body);
        decode_and_reencode(&bytes, nfds);
        let _ = decode_message(&bytes, nfds, &small_limits());
        // Also through the two-step API, with a wrong body length.
        if let Ok(h) = Header::decode(bytes[..16].try_into().unwrap(), &DecodeLimits::default()) {
            let short = &body[..body.len() / 2];
            let _ = decode_request(&h, short, nfds, &DecodeLimits::default());
            let _ = decode_reply(&h, short, nfds, &DecodeLimits::default());
        }
    }

    #[test]
    fn mutated_requests_never_panic(o in request(), flips in vec((any::<usize>(), any::<u8>()), 1..4), nfds in 0usize..4) {
        let mut out = Vec::new();
        with_request(&o, |r, _| r.encode(7, false, &mut out)).unwrap();
        for (at, x) in flips {
            let i = 16 + at % (out.len() - 16).max(1);
            if i < out.len() {
                out[i] ^= x;
            }
        }
        decode_and_reencode(&out, nfds);
    }

    #[test]
    fn mutated_replies_never_panic(o in reply(), flips in vec((any::<usize>(), any::<u8>()), 1..4), nfds in 0usize..4) {
        let mut out = Vec::new();
        with_reply(&o, |r, _| r.encode(7, &mut out)).unwrap();
        for (at, x) in flips {
            let i = 16 + at % (out.len() - 16).max(1);
            if i < out.len() {
                out[i] ^= x;
            }
        }
        decode_and_reencode(&out, nfds);
    }

    #[test]
    fn truncated_messages_are_errors_not_panics(o in request(), cut in any::<usize>()) {
        let mut out = Vec::new();
        with_request(&o, |r, _| r.encode(7, false, &mut out)).unwrap();
        let keep = cut % out.len();
        prop_assert!(decode_message(&out[..keep], 0, &DecodeLimits::default()).is_err());
    }

    #[test]
    fn random_cap_chains_never_panic(info in vec(any::<u8>(), 0..300), cap_offset in any::<u32>()) {
        let _ = decode_region_caps(&info, cap_offset, &DecodeLimits::default());
        let _ = decode_region_caps(&info, cap_offset % 320, &DecodeLimits::default());
    }

    #[test]
    fn structured_cap_chains_never_panic(
        caps in vec((1u16..=4, 0u16..=2, 0u32..160, 0u32..8, any::<u32>()), 1..8),
        tail in vec(any::<u8>(), 0..64),
    ) {
        // Cap headers with small `next` values, so loops, overlaps and
        // out-of-bounds chains are common.
        let mut info = vec![0u8; 32];
        for (id, version, next, nr, reserved) in &caps {
            info.extend_from_slice(&id.to_le_bytes());
            info.extend_from_slice(&version.to_le_bytes());
            info.extend_from_slice(&next.to_le_bytes());
            info.extend_from_slice(&nr.to_le_bytes());
            info.extend_from_slice(&(reserved & 1).to_le_bytes());
        }
        info.extend_from_slice(&tail);
        let _ = decode_region_caps(&info, 32, &DecodeLimits::default());
    }

    #[test]
    fn random_version_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        let _ = parse_capabilities(&bytes);
    }

    #[test]
    fn json_like_version_text_never_panics(
        parts in vec(prop_oneof![
            Just("{".to_string()), Just("}".to_string()), Just("\"capabilities\":".to_string()),
            Just("\"max_msg_fds\":".to_string()), Just("\"migration\":".to_string()),
            Just("\"twin_socket\":".to_string()), Just("\"supported\":".to_string()),
            Just("\"write_multiple\":".to_string()), Just("\"pgsizes\":".to_string()),
            Just(",".to_string()), Just("[".to_string()), Just("]".to_string()),
            Just("true".to_string()), Just("null".to_string()), Just("-1".to_string()),
            Just("1e400".to_string()), Just("18446744073709551616".to_string()),
            (0u64..5000).prop_map(|n| n.to_string()),
        ], 0..24)
    ) {
        let mut text = parts.concat().into_bytes();
        text.push(0);
        let _ = parse_capabilities(&text);
    }
}

#[test]
fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    let mut text = b"{\"capabilities\":{\"x\":".to_vec();
    text.extend(std::iter::repeat_n(b'[', 100_000));
    text.push(0);
    assert!(parse_capabilities(&text).is_err());
}
