//! A live-migration stream as a destination device receives it from a
//! client (MIG_DATA_WRITE, then RESUMING → RUNNING), into a real mtty,
//! gpio or dma device: the PCI layer's stream decoder and the driver's own
//! section decoder. The harness (`uvfio_drivers::fuzzing`) checks that a
//! refused stream changes nothing and that an accepted one survives a
//! second migration byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    uvfio_drivers::fuzzing::run(data);
});
