//! The region-info capability chain decoder. Input: 4 bytes of
//! `cap_offset` (little-endian), then the whole `vfio_region_info`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uvfio_user::proto::{decode_region_caps, DecodeLimits};

fuzz_target!(|data: &[u8]| {
    let Some((off, info)) = data.split_first_chunk::<4>() else {
        return;
    };
    let cap_offset = u32::from_le_bytes(*off);
    let _ = decode_region_caps(info, cap_offset, &DecodeLimits::default());
});
