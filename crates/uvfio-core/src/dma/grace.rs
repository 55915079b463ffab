//! Grace periods for lock-free readers: a writer that has retired some
//! state waits until every reader that might still be using it is done.
//!
//! This is the userspace-RCU "membarrier" scheme, reduced to what the DMA
//! fast path needs:
//!
//! * every thread that reads owns a [`ReaderSlot`], a sequence number that
//!   is odd while the thread is inside a read section. Entering and leaving
//!   are two plain stores to a cache line no other thread writes: no atomic
//!   read-modify-write, no shared line bouncing between cores;
//! * a writer first makes the retired state unreachable for *new* readers
//!   (here: bumps a generation the readers check after entering), then
//!   calls [`synchronize`], which waits for every slot that was odd to move
//!   on.
//!
//! The ordering problem is the store→load pair on the reader side (mark
//! the slot odd, then load the generation): the CPU may perform the load
//! before the store is visible, and then a writer could see the slot even
//! while the reader uses the old state. Instead of paying for a full fence
//! on every read section, the writer pays for it on the readers' behalf:
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` makes every running
//! thread of the process execute a full barrier before it returns, so by
//! the time the writer scans the slots, any reader either published its odd
//! sequence or will load the new generation. Where the kernel refuses
//! membarrier (old kernels, seccomp), readers fall back to a `SeqCst` fence
//! and writers to a fence of their own (the classic Dekker pairing).
//!
//! Read sections must be short and must not block: [`synchronize`] spins,
//! then yields, then sleeps while it waits for them.

use std::sync::atomic::{compiler_fence, fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustix::thread::{membarrier, MembarrierCommand};

/// Whether this process is registered for expedited private membarriers.
/// Decided once, before the first slot exists, so every reader and writer
/// agrees on which side pays for the fence.
fn expedited() -> bool {
    static EXPEDITED: OnceLock<bool> = OnceLock::new();
    *EXPEDITED.get_or_init(|| {
        let on = membarrier(MembarrierCommand::RegisterPrivateExpedited).is_ok();
        EXPEDITED_FAST.store(on, Ordering::Relaxed);
        on
    })
}

/// The same answer for the read-section fast path: one plain load. Read
/// only by threads that went through [`ReaderSlot::register`], which calls
/// [`expedited`]: the store happens before the `OnceLock` completes, and
/// every thread that finds it complete has synchronised with that.
static EXPEDITED_FAST: AtomicBool = AtomicBool::new(false);

/// Every live slot, for writers to scan.
static SLOTS: Mutex<Vec<Arc<ReaderSlot>>> = Mutex::new(Vec::new());

/// One thread's read-section marker. Aligned to two cache lines so that
/// two threads' slots never share one (adjacent-line prefetch included).
#[derive(Debug)]
#[repr(align(128))]
pub(super) struct ReaderSlot {
    seq: AtomicU64,
}

impl ReaderSlot {
    /// A new slot, registered for writers to see. The caller owns it for
    /// its thread and must [`ReaderSlot::retire`] it when the thread ends.
    pub(super) fn register() -> Arc<ReaderSlot> {
        // Registration (and the membarrier decision) must precede the first
        // read section.
        expedited();
        let slot = Arc::new(ReaderSlot {
            seq: AtomicU64::new(0),
        });
        SLOTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot.clone());
        slot
    }

    /// Removes the slot from the writers' scan.
    pub(super) fn retire(self: &Arc<Self>) {
        SLOTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| !Arc::ptr_eq(s, self));
    }

    /// Runs `f` inside a read section, or returns `None` if this slot is
    /// already in one (sections do not nest; the caller takes its slow
    /// path). Only the owning thread may call this.
    #[inline]
    pub(super) fn section<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        // Only this thread stores to `seq`, so a load+store pair is enough.
        let s = self.seq.load(Ordering::Relaxed);
        if s & 1 == 1 {
            return None;
        }
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        if EXPEDITED_FAST.load(Ordering::Relaxed) {
            // The writer's membarrier supplies the store→load fence.
            compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
        let r = f();
        // Release: everything the section did is visible to a writer that
        // sees the even value.
        self.seq.store(s.wrapping_add(2), Ordering::Release);
        Some(r)
    }
}

/// Waits until every read section that was in progress when this was
/// called has ended. Callers make the state they retire unreachable for
/// new sections *before* calling this.
pub(super) fn synchronize() {
    if expedited() {
        // Cannot fail once registered (the kernel returns EPERM only to an
        // unregistered process); if it did, readers would be unprotected.
        membarrier(MembarrierCommand::PrivateExpedited)
            .expect("membarrier(PRIVATE_EXPEDITED) after a successful registration");
    } else {
        fence(Ordering::SeqCst);
    }
    let slots: Vec<Arc<ReaderSlot>> = SLOTS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for slot in slots {
        let s = slot.seq.load(Ordering::Acquire);
        if s & 1 == 0 {
            continue;
        }
        let mut spins = 0u32;
        while slot.seq.load(Ordering::Acquire) == s {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else if spins < 128 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }
}

#[cfg(test)]
pub(super) fn is_registered(slot: &Arc<ReaderSlot>) -> bool {
    SLOTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|s| Arc::ptr_eq(s, slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_do_not_nest_and_leave_the_slot_even() {
        let slot = ReaderSlot::register();
        let inner = slot.section(|| slot.section(|| ()));
        assert_eq!(inner, Some(None));
        assert_eq!(slot.seq.load(Ordering::Relaxed), 2);
        slot.retire();
        assert!(!is_registered(&slot));
    }

    #[test]
    fn synchronize_waits_for_a_section_in_progress() {
        let slot = ReaderSlot::register();
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let reader = {
            let slot = slot.clone();
            std::thread::spawn(move || {
                slot.section(|| {
                    entered_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    std::time::Instant::now()
                })
                .unwrap()
            })
        };
        entered_rx.recv().unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            release_tx.send(()).unwrap();
        });
        synchronize();
        let synced = std::time::Instant::now();
        let left = reader.join().unwrap();
        releaser.join().unwrap();
        assert!(
            left <= synced,
            "synchronize returned before the section ended"
        );
        slot.retire();
    }
}
