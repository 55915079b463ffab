//! The VERSION capabilities JSON parser (input: the bytes after
//! major/minor, NUL terminator included).
#![no_main]

use libfuzzer_sys::fuzz_target;
use uvfio_user::proto::parse_capabilities;

fuzz_target!(|data: &[u8]| {
    let _ = parse_capabilities(data);
});
