//! uvfio-user: the vfio-user protocol for uvfio.
//!
//! - [`proto`]: the sans-I/O wire codec. Push bytes in, get typed messages out;
//!   give typed messages, get bytes appended to your buffer. No sockets, no
//!   clocks, no `unsafe`.
//! - [`session`]: the server side of one connection as a state machine
//!   (`ExpectVersion → Ready`), still without sockets: a message and its
//!   fds in, reply bytes and fds out.
//! - [`transport`]: framing over an `AF_UNIX` stream with `SCM_RIGHTS`.
//! - [`server`]: [`Server`] serves every device of a `uvfio_core::Registry`
//!   on `DIR/NAME.sock`, one thread per connection.
//! - [`client`]: [`Client`], the VMM side, including answers to the
//!   server's DMA_READ/DMA_WRITE.

#![warn(missing_docs)]

mod channel;
pub mod client;
#[doc(hidden)]
pub mod fuzzing;
pub mod proto;
pub mod server;
pub mod session;
pub mod transport;
mod watchdog;

pub use channel::ChannelError;
pub use client::{Client, ClientConfig, ClientError};
pub use server::{Server, ServerConfig};
pub use transport::Wait;
