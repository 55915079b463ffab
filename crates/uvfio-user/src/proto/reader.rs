//! A bounded reader over a borrowed payload (rustls `codec::Reader` style).
//!
//! It never reads past its slice, reports the offset of every failure and
//! rejects trailing bytes with [`Reader::expect_end`].

use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

use super::error::{malformed, InvalidMessage, Result};

/// Cursor over one payload, `&'a [u8]`.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    cursor: usize,
}

impl<'a> Reader<'a> {
    /// Reader over a whole payload.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, cursor: 0 }
    }

    /// Offset of the next byte within the payload.
    pub(crate) fn offset(&self) -> usize {
        self.cursor
    }

    /// Bytes not read yet.
    pub(crate) fn left(&self) -> usize {
        self.buf.len().saturating_sub(self.cursor)
    }

    /// Take the next `len` bytes.
    pub(crate) fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8]> {
        let available = self.left();
        if len > available {
            return malformed(InvalidMessage::Truncated {
                what,
                offset: self.offset(),
                needed: len,
                available,
            });
        }
        let start = self.cursor;
        let end = start + len; // len <= left, cannot overflow
        self.cursor = end;
        Ok(&self.buf[start..end])
    }

    /// Read one fixed-layout wire struct by value.
    pub(crate) fn read<T>(&mut self, what: &'static str) -> Result<T>
    where
        T: FromBytes + KnownLayout + Immutable + Unaligned,
    {
        let bytes = self.take(core::mem::size_of::<T>(), what)?;
        match T::read_from_bytes(bytes) {
            Ok(v) => Ok(v),
            // Unreachable: `take` returned exactly size_of::<T>() bytes.
            Err(_) => malformed(InvalidMessage::Truncated {
                what,
                offset: self.offset(),
                needed: core::mem::size_of::<T>(),
                available: bytes.len(),
            }),
        }
    }

    /// All bytes left (possibly empty).
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let start = self.cursor.min(self.buf.len());
        self.cursor = self.buf.len();
        &self.buf[start..]
    }

    /// Fail unless everything was read.
    pub(crate) fn expect_end(&self, what: &'static str) -> Result<()> {
        let len = self.left();
        if len != 0 {
            return malformed(InvalidMessage::TrailingBytes {
                what,
                offset: self.offset(),
                len,
            });
        }
        Ok(())
    }
}

/// Widen a `u32` to `usize` (all supported targets have `usize` ≥ 32 bits).
pub(crate) const fn usize_from(v: u32) -> usize {
    const _: () = assert!(usize::BITS >= 32);
    v as usize
}

/// Widen a `usize` to `u64` (all supported targets have `usize` ≤ 64 bits).
pub(crate) const fn u64_from_usize(v: usize) -> u64 {
    const _: () = assert!(usize::BITS <= 64);
    v as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::error::ProtoError;
    use zerocopy::little_endian::U32;

    #[test]
    fn take_past_end_reports_offset_and_sizes() {
        let mut r = Reader::new(&[1, 2, 3]);
        r.take(2, "a").unwrap();
        let err = r.take(2, "b").unwrap_err();
        assert_eq!(
            err,
            ProtoError::Malformed(InvalidMessage::Truncated {
                what: "b",
                offset: 2,
                needed: 2,
                available: 1
            })
        );
    }

    #[test]
    fn expect_end_with_leftover_is_trailing_bytes() {
        let mut r = Reader::new(&[1, 0, 0, 0, 9]);
        assert_eq!(r.read::<U32>("x").unwrap().get(), 1);
        let err = r.expect_end("x").unwrap_err();
        assert_eq!(
            err,
            ProtoError::Malformed(InvalidMessage::TrailingBytes {
                what: "x",
                offset: 4,
                len: 1
            })
        );
    }

    #[test]
    fn rest_consumes_everything() {
        let mut r = Reader::new(&[1, 2, 3]);
        r.take(1, "a").unwrap();
        assert_eq!(r.rest(), &[2, 3]);
        assert!(r.expect_end("a").is_ok());
    }
}
