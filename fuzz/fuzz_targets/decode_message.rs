//! Header + body + fd count through the full decoder. Input: byte 0 is the
//! number of fds (mod 8), the rest is one message. Anything that decodes
//! must re-encode (when it can) to bytes that decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uvfio_user::proto::{decode_message, DecodeLimits, Message};

fuzz_target!(|data: &[u8]| {
    let Some((&n, bytes)) = data.split_first() else {
        return;
    };
    let nfds = usize::from(n % 8);
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
});
