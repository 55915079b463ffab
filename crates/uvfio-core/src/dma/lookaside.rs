//! The per-thread lookaside for device DMA: the last few mappings this
//! thread used, tried before the table.
//!
//! A device that DMAs does it over and over into the same few mappings
//! (a ring, a buffer pool, guest RAM). Taking the table's lock and walking
//! its B-tree for each access costs more than copying a 4 KiB page, so each
//! thread keeps [`WAYS`] recently used mappings, tagged with the space they
//! came from and that space's *generation*. Any change that could make a
//! cached mapping wrong (unmap, dirty logging switched on or off) bumps the
//! generation, which misses every cached entry of that space at once; a map
//! does not, because it cannot change an existing mapping.
//!
//! A hit runs inside a [`grace`](super::grace) read section, so an unmap
//! that has bumped the generation waits for accesses already under way
//! before it returns: no device access lands in memory the user has been
//! told is unmapped. Only mappings backed by memory in this process are
//! cached; the access inside the section is a bounds-checked copy that
//! cannot block.
//!
//! A cached entry keeps its mapping (and the memory behind it) alive until
//! the thread replaces it or exits, but a stale entry is never used: at
//! most [`WAYS`] retired mappings per thread linger that way.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::dirty::DirtyBitmap;
use super::grace::ReaderSlot;
use super::table::{covers, DmaMapping};
use super::DmaPerm;
use crate::errno::Result;
use crate::mmap::MmapRegion;

/// Mappings remembered per thread.
pub(super) const WAYS: usize = 4;

/// One remembered mapping, with what a hit needs stored inline so that
/// the path from the thread-local to the copy is as few dependent loads
/// as possible.
#[derive(Debug)]
struct Way {
    space: u64,
    generation: u64,
    iova: u64,
    last: u64,
    perm: DmaPerm,
    /// Offset of `iova` in `memory`.
    offset: u64,
    memory: Arc<MmapRegion>,
    /// Whether `mapping` carries a dirty bitmap.
    logging: bool,
    mapping: Arc<DmaMapping>,
}

/// What an access needs from a hit.
pub(super) struct Hit<'a> {
    /// The memory to copy through.
    pub(super) memory: &'a MmapRegion,
    /// Offset of the access in `memory`.
    pub(super) offset: u64,
    /// The bitmap to mark (with the mapping-relative offset), while logging.
    pub(super) dirty: Option<(&'a DirtyBitmap, u64)>,
}

struct Local {
    slot: Arc<ReaderSlot>,
    ways: RefCell<[Option<Way>; WAYS]>,
    next: Cell<usize>,
}

impl Drop for Local {
    fn drop(&mut self) {
        self.slot.retire();
    }
}

thread_local! {
    static LOCAL: Local = Local {
        slot: ReaderSlot::register(),
        ways: RefCell::new([const { None }; WAYS]),
        next: Cell::new(0),
    };
}

/// Runs `f` on a cached mapping of `space` that holds all of
/// `iova..iova+len` with the rights `need`, inside a read section. `None`
/// is a miss: the caller takes the table path. `len` must be non-zero.
#[inline]
pub(super) fn access(
    space: u64,
    generation: &AtomicU64,
    iova: u64,
    len: usize,
    need: DmaPerm,
    f: impl FnOnce(Hit<'_>) -> Result<()>,
) -> Option<Result<()>> {
    LOCAL
        .try_with(|l| {
            let ways = l.ways.try_borrow().ok()?;
            l.slot
                .section(|| {
                    let current = generation.load(Ordering::Acquire);
                    let way = ways.iter().flatten().find(|w| {
                        w.space == space
                            && w.generation == current
                            && w.perm.contains(need)
                            && covers(w.iova, w.last, iova, len)
                    })?;
                    let rel = iova - way.iova;
                    let dirty = if way.logging {
                        way.mapping.dirty.as_ref().map(|d| (d, rel))
                    } else {
                        None
                    };
                    Some(f(Hit {
                        memory: &way.memory,
                        offset: way.offset + rel,
                        dirty,
                    }))
                })
                .flatten()
        })
        .ok()
        .flatten()
}

/// Remembers `mapping` (backed by memory of this process), read from
/// `space`'s table at `generation`. Replaces an entry of the same space
/// from an older generation if there is one, otherwise the ways in turn.
pub(super) fn remember(space: u64, generation: u64, mapping: &Arc<DmaMapping>) {
    let Some(memory) = &mapping.memory else {
        return;
    };
    let _ = LOCAL.try_with(|l| {
        let Ok(mut ways) = l.ways.try_borrow_mut() else {
            return;
        };
        if ways.iter().flatten().any(|w| {
            w.space == space && w.generation == generation && Arc::ptr_eq(&w.mapping, mapping)
        }) {
            return;
        }
        let i = ways
            .iter()
            .position(|w| {
                w.as_ref()
                    .is_none_or(|w| w.space == space && w.generation != generation)
            })
            .unwrap_or_else(|| {
                let i = l.next.get();
                l.next.set((i + 1) % WAYS);
                i
            });
        ways[i] = Some(Way {
            space,
            generation,
            iova: mapping.iova,
            last: mapping.last(),
            perm: mapping.perm,
            offset: mapping.backing_offset,
            memory: memory.clone(),
            logging: mapping.dirty.is_some(),
            mapping: mapping.clone(),
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_retires_its_slot_when_it_exits() {
        let slot = std::thread::spawn(|| LOCAL.with(|l| l.slot.clone()))
            .join()
            .unwrap();
        assert!(!super::super::grace::is_registered(&slot));
        let mine = LOCAL.with(|l| l.slot.clone());
        assert!(super::super::grace::is_registered(&mine));
    }
}
