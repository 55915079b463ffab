//! A whole server connection from one input: negotiation, then any
//! sequence of frames (well-formed, corrupted, split, raw) with fds of
//! every kind, client actions on its own memory and device-initiated DMA
//! and interrupts, through the server's receive buffer and `Session` over
//! a real registry and device. The harness (`uvfio_user::fuzzing`) checks
//! that every request gets at most one well-formed reply to it, that the
//! per-client limits hold, and that everything is released at the end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uvfio_user::fuzzing::{run_with, Options};

fuzz_target!(|data: &[u8]| {
    // libFuzzer runs inputs on one thread: counting fds is exact.
    run_with(data, Options { check_fds: true });
});
