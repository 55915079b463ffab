//! The one error currency of the core: a POSIX errno.
//!
//! Every operation of the in-process uAPI fails with the errno the kernel's
//! VFIO would return for the same request, so a transport (the vfio-user
//! server, an embedding VMM) can forward it unchanged.

pub use rustix::io::Errno;

/// Result of a core operation.
pub type Result<T, E = Errno> = std::result::Result<T, E>;
