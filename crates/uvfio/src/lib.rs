//! The `uvfio` command as a library: argument types, subcommands, the
//! control-socket protocol and the benchmark suite (shared with
//! `cargo bench -p uvfio`).

pub mod bench;
pub mod cli;
pub mod cmd;
pub mod control;
pub mod devices;
pub mod drivers;
pub mod lspci;
pub mod sockfile;
pub mod spec;
