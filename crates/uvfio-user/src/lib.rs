//! uvfio-user: the vfio-user protocol for uvfio.
//!
//! - [`proto`]: the sans-I/O wire codec. Push bytes in, get typed messages out;
//!   give typed messages, get bytes appended to your buffer. No sockets, no
//!   clocks, no `unsafe`.
//!
//! The `session`, `transport`, `server` and `client` modules build on
//! [`proto`].

#![warn(missing_docs)]

pub mod proto;
