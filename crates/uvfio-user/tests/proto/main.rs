//! Integration tests of the `proto` codec, through its public API only.

mod golden;
mod kernel_consts;
mod negative;
mod robustness;
mod roundtrip;
