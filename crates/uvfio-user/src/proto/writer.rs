//! Appending one message to a caller-owned buffer.
//!
//! [`Frame`] writes the header first with `msg_size = 0`, lets the message
//! append its payload, and patches `msg_size` in [`Frame::finish`]. If the
//! frame is dropped unfinished (an encoder returned an error half-way), the
//! buffer is truncated back, so a failed encode never leaves a partial
//! message behind.

use zerocopy::{Immutable, IntoBytes};

use super::error::EncodeError;
use super::header::HeaderWire;
use super::reader::u64_from_usize;

/// One message being appended to `out`.
#[derive(Debug)]
pub(crate) struct Frame<'o> {
    out: &'o mut Vec<u8>,
    start: usize,
    done: bool,
}

impl<'o> Frame<'o> {
    /// Append a header; `msg_size` is patched by [`Frame::finish`].
    pub(crate) fn begin(
        out: &'o mut Vec<u8>,
        msg_id: u16,
        command: u16,
        flags: u32,
        error: u32,
    ) -> Self {
        let start = out.len();
        let hdr = HeaderWire::new(msg_id, command, 0, flags, error);
        out.extend_from_slice(hdr.as_bytes());
        Frame {
            out,
            start,
            done: false,
        }
    }

    /// Append a wire struct.
    pub(crate) fn put<T: IntoBytes + Immutable>(&mut self, v: &T) {
        self.out.extend_from_slice(v.as_bytes());
    }

    /// Append raw bytes.
    pub(crate) fn put_bytes(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }

    /// Append `len` zero bytes and return them for the caller to fill.
    pub(crate) fn put_zeroed(&mut self, len: usize) -> &mut [u8] {
        let at = self.out.len();
        self.out.resize(at.saturating_add(len), 0);
        &mut self.out[at..]
    }

    /// Patch `msg_size` and keep the message.
    pub(crate) fn finish(mut self) -> Result<(), EncodeError> {
        let len = self.out.len().saturating_sub(self.start);
        let msg_size = u32::try_from(len).map_err(|_| EncodeError::TooLarge {
            what: "msg_size",
            len: u64_from_usize(len),
            max: u64::from(u32::MAX),
        })?;
        let at = self.start.saturating_add(4);
        self.out[at..at + 4].copy_from_slice(&msg_size.to_le_bytes());
        self.done = true;
        Ok(())
    }
}

impl Drop for Frame<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.out.truncate(self.start);
        }
    }
}

/// `u32::try_from(len)` with an [`EncodeError`] naming the field.
pub(crate) fn len_u32(what: &'static str, len: usize) -> Result<u32, EncodeError> {
    u32::try_from(len).map_err(|_| EncodeError::TooLarge {
        what,
        len: u64_from_usize(len),
        max: u64::from(u32::MAX),
    })
}
