//! Dirty-page bitmaps: one bit per page of a mapping, set by device writes.

use std::sync::atomic::{AtomicU64, Ordering};

/// The dirty bits of one mapping.
#[derive(Debug)]
pub struct DirtyBitmap {
    pgshift: u32,
    pages: u64,
    words: Box<[AtomicU64]>,
}

impl DirtyBitmap {
    /// A clean bitmap for `size` bytes at `pgsize` (a power of two).
    pub fn new(size: u64, pgsize: u64) -> Self {
        let pgshift = pgsize.trailing_zeros();
        let pages = size.div_ceil(pgsize);
        let nwords = usize::try_from(pages.div_ceil(64)).unwrap_or(usize::MAX);
        DirtyBitmap {
            pgshift,
            pages,
            words: (0..nwords).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Marks the pages touched by `len` bytes at `offset` (mapping-relative).
    pub fn mark(&self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset >> self.pgshift;
        let last =
            (offset.saturating_add(len - 1) >> self.pgshift).min(self.pages.saturating_sub(1));
        for page in first..=last {
            if let Some(w) = self.words.get((page / 64) as usize) {
                w.fetch_or(1 << (page % 64), Ordering::Relaxed);
            }
        }
    }

    /// Reads and clears the bit of `page`.
    pub fn take(&self, page: u64) -> bool {
        let Some(w) = self.words.get((page / 64) as usize) else {
            return false;
        };
        let bit = 1u64 << (page % 64);
        w.fetch_and(!bit, Ordering::Relaxed) & bit != 0
    }

    /// The page size.
    pub fn page_size(&self) -> u64 {
        1 << self.pgshift
    }
}
