//! One module per subcommand.

pub mod bench;
pub mod info;
pub mod manage;
pub mod migrate;
pub mod serve;
