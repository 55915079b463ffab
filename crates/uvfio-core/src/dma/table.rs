//! The map table with the type1v2 rules. Pure data structure; the locking
//! lives in the parent module.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use super::dirty::DirtyBitmap;
use super::{DmaBacking, DmaConfig, DmaPerm};
use crate::errno::{Errno, Result};
use crate::mmap::MmapRegion;

/// One mapping of the table.
#[derive(Debug)]
pub struct DmaMapping {
    /// First IOVA.
    pub iova: u64,
    /// Length (≥ 1 page).
    pub size: u64,
    /// Device rights.
    pub perm: DmaPerm,
    /// Where the bytes are.
    pub backing: Arc<dyn DmaBacking>,
    /// The backing as memory of this process, if it is
    /// ([`DmaBacking::mapped_memory`]).
    pub memory: Option<Arc<MmapRegion>>,
    /// Offset of `iova` within the backing.
    pub backing_offset: u64,
    /// Present while dirty logging is on.
    pub dirty: Option<DirtyBitmap>,
}

impl DmaMapping {
    /// Last IOVA (inclusive): mappings may end at the top of the space.
    pub(super) fn last(&self) -> u64 {
        self.iova + (self.size - 1)
    }

    /// Whether `iova..iova+len` lies inside this mapping (`len` ≥ 1).
    #[inline]
    pub(super) fn covers(&self, iova: u64, len: usize) -> bool {
        covers(self.iova, self.last(), iova, len)
    }

    /// The same mapping with another dirty bitmap.
    fn with_dirty(&self, dirty: Option<DirtyBitmap>) -> Self {
        DmaMapping {
            iova: self.iova,
            size: self.size,
            perm: self.perm,
            backing: self.backing.clone(),
            memory: self.memory.clone(),
            backing_offset: self.backing_offset,
            dirty,
        }
    }
}

/// Whether `iova..iova+len` (`len` ≥ 1) lies inside `first..=last`,
/// without overflow at the top of the space.
#[inline]
pub(super) fn covers(first: u64, last: u64, iova: u64, len: usize) -> bool {
    iova >= first && iova <= last && (len as u64 - 1) <= last - iova
}

/// A summary of one mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappingInfo {
    /// First IOVA.
    pub iova: u64,
    /// Length.
    pub size: u64,
    /// Device rights.
    pub perm: DmaPerm,
}

#[derive(Debug)]
pub(super) struct DmaTable {
    config: DmaConfig,
    /// Mappings are shared with the per-thread lookaside, hence the `Arc`;
    /// they are never changed in place, only replaced.
    maps: BTreeMap<u64, Arc<DmaMapping>>,
    dirty_pgsize: Option<u64>,
}

impl DmaTable {
    pub(super) fn new(config: DmaConfig) -> Self {
        DmaTable {
            config,
            maps: BTreeMap::new(),
            dirty_pgsize: None,
        }
    }

    fn check_range(&self, iova: u64, size: u64) -> Result<u64> {
        let page = self.config.min_page();
        if size == 0 || !iova.is_multiple_of(page) || !size.is_multiple_of(page) {
            return Err(Errno::INVAL);
        }
        iova.checked_add(size - 1).ok_or(Errno::INVAL)
    }

    /// The mapping containing `iova`, if any.
    fn find(&self, iova: u64) -> Option<&Arc<DmaMapping>> {
        self.maps
            .range(..=iova)
            .next_back()
            .map(|(_, m)| m)
            .filter(|m| iova <= m.last())
    }

    pub(super) fn map(
        &mut self,
        iova: u64,
        size: u64,
        perm: DmaPerm,
        backing: Arc<dyn DmaBacking>,
        backing_offset: u64,
    ) -> Result<()> {
        let last = self.check_range(iova, size)?;
        if perm.is_empty() {
            return Err(Errno::INVAL);
        }
        let backing_end = backing_offset.checked_add(size).ok_or(Errno::INVAL)?;
        if backing_end > backing.len() {
            return Err(Errno::INVAL);
        }
        // Any mapping starting at or before `last` and ending at or after
        // `iova` overlaps.
        let overlaps = self
            .maps
            .range(..=last)
            .next_back()
            .is_some_and(|(_, m)| m.last() >= iova);
        if overlaps {
            return Err(Errno::EXIST);
        }
        if self.maps.len() >= self.config.entry_limit {
            return Err(Errno::NOSPC);
        }
        let dirty = self.dirty_pgsize.map(|pg| DirtyBitmap::new(size, pg));
        let memory = backing.clone().mapped_memory();
        self.maps.insert(
            iova,
            Arc::new(DmaMapping {
                iova,
                size,
                perm,
                backing,
                memory,
                backing_offset,
                dirty,
            }),
        );
        Ok(())
    }

    pub(super) fn unmap(&mut self, iova: u64, size: u64) -> Result<u64> {
        let last = self.check_range(iova, size)?;
        // A mapping that starts before the range and reaches into it would
        // be bisected.
        if let Some(m) = self.find(iova) {
            if m.iova < iova {
                return Err(Errno::INVAL);
            }
        }
        // So would one that starts inside and ends past it.
        if let Some(m) = self.find(last) {
            if m.last() > last {
                return Err(Errno::INVAL);
            }
        }
        let doomed: Vec<u64> = self.maps.range(iova..=last).map(|(k, _)| *k).collect();
        let mut bytes = 0u64;
        for k in doomed {
            if let Some(m) = self.maps.remove(&k) {
                bytes = bytes.saturating_add(m.size);
            }
        }
        Ok(bytes)
    }

    pub(super) fn unmap_all(&mut self) -> u64 {
        let bytes = self
            .maps
            .values()
            .fold(0u64, |a, m| a.saturating_add(m.size));
        self.maps.clear();
        bytes
    }

    pub(super) fn mappings(&self) -> Vec<MappingInfo> {
        self.maps
            .values()
            .map(|m| MappingInfo {
                iova: m.iova,
                size: m.size,
                perm: m.perm,
            })
            .collect()
    }

    pub(super) fn len(&self) -> usize {
        self.maps.len()
    }

    /// The one mapping that holds all of `iova..iova+len` (`len` ≥ 1) with
    /// the rights `need`, if there is one.
    pub(super) fn single(&self, iova: u64, len: usize, need: DmaPerm) -> Option<&Arc<DmaMapping>> {
        self.find(iova)
            .filter(|m| m.perm.contains(need) && m.covers(iova, len))
    }

    /// Walks `len` bytes from `iova` across adjacent mappings, calling `f`
    /// with each mapping, the backing offset, and the slice of the caller's
    /// buffer it covers. The whole range is checked (coverage and rights)
    /// before `f` runs at all, so a failed access has no partial effect.
    pub(super) fn access(
        &self,
        iova: u64,
        len: usize,
        need: DmaPerm,
        mut f: impl FnMut(&DmaMapping, u64, Range<usize>) -> Result<()>,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let first = &**self.find(iova).ok_or(Errno::FAULT)?;
        // The common case: one mapping holds it all.
        let fits = (len as u64 - 1) <= first.last() - iova;
        if fits && first.perm.contains(need) {
            return f(first, first.backing_offset + (iova - first.iova), 0..len);
        }
        self.walk(iova, len, need, |_, _, _| Ok(()))?;
        self.walk(iova, len, need, &mut f)
    }

    fn walk(
        &self,
        iova: u64,
        len: usize,
        need: DmaPerm,
        mut f: impl FnMut(&DmaMapping, u64, Range<usize>) -> Result<()>,
    ) -> Result<()> {
        let mut done = 0usize;
        while done < len {
            let cur = iova.checked_add(done as u64).ok_or(Errno::FAULT)?;
            let m = self.find(cur).ok_or(Errno::FAULT)?;
            if !m.perm.contains(need) {
                return Err(Errno::PERM);
            }
            let in_map = m.last() - cur; // bytes left in this mapping, minus one
            let n = usize::try_from(in_map)
                .map(|v| v.saturating_add(1))
                .unwrap_or(usize::MAX)
                .min(len - done);
            let off = m.backing_offset + (cur - m.iova);
            f(m, off, done..done + n)?;
            done += n;
        }
        Ok(())
    }

    pub(super) fn start_dirty(&mut self, pgsize: u64) -> Result<()> {
        if !pgsize.is_power_of_two() || pgsize < self.config.min_page() {
            return Err(Errno::INVAL);
        }
        if self.dirty_pgsize.is_some() {
            return Err(Errno::BUSY);
        }
        self.dirty_pgsize = Some(pgsize);
        for m in self.maps.values_mut() {
            *m = Arc::new(m.with_dirty(Some(DirtyBitmap::new(m.size, pgsize))));
        }
        Ok(())
    }

    pub(super) fn stop_dirty(&mut self) -> Result<()> {
        if self.dirty_pgsize.take().is_none() {
            return Err(Errno::INVAL);
        }
        for m in self.maps.values_mut() {
            *m = Arc::new(m.with_dirty(None));
        }
        Ok(())
    }

    pub(super) fn dirty_pgsize(&self) -> Option<u64> {
        self.dirty_pgsize
    }

    pub(super) fn report_dirty(&self, iova: u64, size: u64, pgsize: u64) -> Result<Vec<u64>> {
        if self.dirty_pgsize != Some(pgsize) {
            return Err(Errno::INVAL);
        }
        if size == 0 || !iova.is_multiple_of(pgsize) || !size.is_multiple_of(pgsize) {
            return Err(Errno::INVAL);
        }
        let last = iova.checked_add(size - 1).ok_or(Errno::INVAL)?;
        let pages = size / pgsize;
        // The kernel caps a report at 2^31 pages; so do we (256 MiB bitmap).
        if pages > 1 << 31 {
            return Err(Errno::INVAL);
        }
        let mut bitmap = vec![0u64; usize::try_from(pages.div_ceil(64)).map_err(|_| Errno::INVAL)?];
        // Mappings that start before `iova` but reach into the range count too.
        let start_key = self.find(iova).map_or(iova, |m| m.iova);
        for m in self.maps.range(start_key..=last).map(|(_, m)| m) {
            let Some(d) = &m.dirty else { continue };
            let lo = m.iova.max(iova);
            let hi = m.last().min(last);
            let mut addr = lo - (lo - m.iova) % pgsize;
            while addr <= hi {
                if d.take((addr - m.iova) / pgsize) && addr >= iova {
                    let bit = (addr - iova) / pgsize;
                    bitmap[(bit / 64) as usize] |= 1 << (bit % 64);
                }
                match addr.checked_add(pgsize) {
                    Some(a) => addr = a,
                    None => break,
                }
            }
        }
        Ok(bitmap)
    }
}
