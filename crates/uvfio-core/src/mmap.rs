//! Shared memory mappings: the one module of the core that holds `unsafe`.
//!
//! Invariants every `unsafe` block below relies on:
//! - a [`MmapRegion`] owns its mapping: `ptr..ptr+len` stays mapped from
//!   `map` until `Drop`, and nothing else unmaps it;
//! - every access is bounds-checked against `len` before the pointer
//!   arithmetic, and copies go through raw pointers (`copy_nonoverlapping`),
//!   never through a `&[u8]` into the mapping: the memory is shared with
//!   another process that may change it at any time, so a Rust reference
//!   into it would be undefined behaviour;
//! - a mapping of a file another process controls can lose its pages if
//!   that process shrinks the file (SIGBUS on access). [`MmapRegion::map_sealed`]
//!   therefore only maps memfds sealed against shrinking and large enough;
//!   that is the mechanism the server relies on for client DMA memory.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use rustix::fs::SealFlags;
use rustix::mm::{MapFlags, ProtFlags};

use crate::errno::{Errno, Result};

/// Access rights of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// Read only.
    Read,
    /// Read and write.
    ReadWrite,
}

/// An owned mapping: shared, of (part of) a file, or private anonymous
/// memory ([`MmapRegion::anonymous`]).
#[derive(Debug)]
pub struct MmapRegion {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: the region is plain shared memory owned by this value; all access
// goes through bounds-checked raw copies that do not depend on the thread.
unsafe impl Send for MmapRegion {}
// SAFETY: as above; concurrent copies race only on the bytes themselves,
// which is the nature of shared memory (the other process races too) and
// never on the mapping's lifetime, which `&self` pins.
unsafe impl Sync for MmapRegion {}

impl MmapRegion {
    /// Maps `len` bytes of `fd` at `offset`, shared.
    ///
    /// Callers mapping a file from an untrusted process must use
    /// [`MmapRegion::map_sealed`] instead.
    pub fn map(fd: BorrowedFd<'_>, offset: u64, len: usize, prot: Protection) -> Result<Self> {
        if len == 0 {
            return Err(Errno::INVAL);
        }
        let flags = match prot {
            Protection::Read => ProtFlags::READ,
            Protection::ReadWrite => ProtFlags::READ | ProtFlags::WRITE,
        };
        // SAFETY: a fresh mapping at an address the kernel picks (null hint)
        // cannot alias any Rust object; the result is owned by the returned
        // value and unmapped in Drop.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                flags,
                MapFlags::SHARED,
                fd,
                offset,
            )?
        };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Errno::NOMEM)?;
        Ok(MmapRegion {
            ptr,
            len,
            writable: prot == Protection::ReadWrite,
        })
    }

    /// `len` bytes of private, zeroed, read-write memory that no other
    /// process sees, with the same accessors as a shared mapping (a
    /// bounce buffer, or plain memory to compare a shared mapping with).
    pub fn anonymous(len: usize) -> Result<Self> {
        if len == 0 {
            return Err(Errno::INVAL);
        }
        // SAFETY: as in `map`: a fresh mapping the kernel places, owned by
        // the returned value.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )?
        };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Errno::NOMEM)?;
        Ok(MmapRegion {
            ptr,
            len,
            writable: true,
        })
    }

    /// Maps a file handed over by an untrusted peer: it must be a memfd
    /// sealed with `F_SEAL_SHRINK`, at least `offset + len` bytes long, so
    /// that no later action of the peer can take pages away under us.
    /// Anything else is `EINVAL`, before any mapping is made.
    pub fn map_sealed(fd: BorrowedFd<'_>, offset: u64, len: u64, prot: Protection) -> Result<Self> {
        let seals = rustix::fs::fcntl_get_seals(fd).map_err(|_| Errno::INVAL)?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(Errno::INVAL);
        }
        let st = rustix::fs::fstat(fd)?;
        let file_len = u64::try_from(st.st_size).map_err(|_| Errno::INVAL)?;
        let end = offset.checked_add(len).ok_or(Errno::INVAL)?;
        if end > file_len {
            return Err(Errno::INVAL);
        }
        let len = usize::try_from(len).map_err(|_| Errno::INVAL)?;
        Self::map(fd, offset, len, prot)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: empty mappings cannot be made.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn check(&self, offset: u64, n: usize) -> Result<usize> {
        let off = usize::try_from(offset).map_err(|_| Errno::FAULT)?;
        let end = off.checked_add(n).ok_or(Errno::FAULT)?;
        if end > self.len {
            return Err(Errno::FAULT);
        }
        Ok(off)
    }

    /// Copies `buf.len()` bytes at `offset` out of the mapping.
    #[inline]
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let off = self.check(offset, buf.len())?;
        // SAFETY: `off + buf.len() <= self.len` was checked, the mapping is
        // alive for `&self`, and `buf` is a distinct Rust buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), buf.as_mut_ptr(), buf.len());
        }
        Ok(())
    }

    /// Copies `data` into the mapping at `offset`.
    #[inline]
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(Errno::PERM);
        }
        let off = self.check(offset, data.len())?;
        // SAFETY: bounds checked as in `read_at`; the mapping is writable.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(off), data.len());
        }
        Ok(())
    }

    /// The index of a 4-byte register at `offset`: in bounds (FAULT) and
    /// 4-byte aligned (INVAL).
    #[inline]
    fn check_u32(&self, offset: u64) -> Result<usize> {
        let off = self.check(offset, 4)?;
        if off % 4 != 0 {
            return Err(Errno::INVAL);
        }
        Ok(off)
    }

    /// Reads a little-endian u32 at `offset` with one 4-byte volatile load
    /// (for doorbell-style registers polled in shared memory).
    pub fn read_u32(&self, offset: u64) -> Result<u32> {
        let off = self.check_u32(offset)?;
        // SAFETY: in bounds and 4-byte aligned (mappings are page aligned).
        let v = unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(off).cast::<u32>()) };
        Ok(u32::from_le(v))
    }

    /// Writes `value` little-endian at `offset` with one 4-byte volatile
    /// store (a doorbell write): the other side sees all four bytes or
    /// none. EINVAL if `offset` is not 4-byte aligned, PERM on a read-only
    /// mapping.
    pub fn write_u32(&self, offset: u64, value: u32) -> Result<()> {
        if !self.writable {
            return Err(Errno::PERM);
        }
        let off = self.check_u32(offset)?;
        // SAFETY: in bounds, 4-byte aligned (mappings are page aligned)
        // and writable.
        unsafe {
            std::ptr::write_volatile(self.ptr.as_ptr().add(off).cast::<u32>(), value.to_le());
        }
        Ok(())
    }
}

impl Drop for MmapRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` is exactly the mapping made in `map`, owned by
        // `self` and unmapped only here.
        let r = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast::<c_void>(), self.len) };
        if let Err(e) = r {
            tracing::error!("munmap failed: {e}");
        }
    }
}

/// A sealed memfd and a mapping of all of it: memory two processes share,
/// for a client's DMA memory or a driver's mmap-able BAR.
#[derive(Debug)]
pub struct SharedMemory {
    fd: OwnedFd,
    map: Arc<MmapRegion>,
}

impl SharedMemory {
    /// Creates `size` bytes of zeroed memory, sealed against shrinking and
    /// growing so that whoever receives the fd can map it safely.
    pub fn new(name: &str, size: u64) -> Result<Self> {
        let fd = rustix::fs::memfd_create(
            name,
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
        )?;
        rustix::fs::ftruncate(&fd, size)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        let len = usize::try_from(size).map_err(|_| Errno::INVAL)?;
        let map = MmapRegion::map(fd.as_fd(), 0, len, Protection::ReadWrite)?;
        Ok(SharedMemory {
            fd,
            map: Arc::new(map),
        })
    }

    /// The memfd, to pass to another process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The mapping.
    pub fn region(&self) -> &MmapRegion {
        &self.map
    }

    /// The mapping, shared.
    pub fn region_arc(&self) -> Arc<MmapRegion> {
        self.map.clone()
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.map.len as u64
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Copies out of the memory.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.map.read_at(offset, buf)
    }

    /// Copies into the memory.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.map.write_at(offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_is_visible_through_a_second_mapping() {
        let shm = SharedMemory::new("t", 8192).unwrap();
        let other = MmapRegion::map_sealed(shm.fd(), 4096, 4096, Protection::ReadWrite).unwrap();
        shm.write_at(4100, b"abcd").unwrap();
        let mut b = [0u8; 4];
        other.read_at(4, &mut b).unwrap();
        assert_eq!(&b, b"abcd");
    }

    #[test]
    fn map_sealed_rejects_unsealed_and_short_files() {
        let fd = rustix::fs::memfd_create("u", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        let e = MmapRegion::map_sealed(fd.as_fd(), 0, 4096, Protection::Read).unwrap_err();
        assert_eq!(e, Errno::INVAL);
        let shm = SharedMemory::new("s", 4096).unwrap();
        let e = MmapRegion::map_sealed(shm.fd(), 0, 8192, Protection::Read).unwrap_err();
        assert_eq!(e, Errno::INVAL);
    }

    #[test]
    fn u32_accessors_are_little_endian_aligned_and_bounded() {
        let shm = SharedMemory::new("w", 4096).unwrap();
        let view = MmapRegion::map_sealed(shm.fd(), 0, 4096, Protection::ReadWrite).unwrap();
        view.write_u32(8, 0x0403_0201).unwrap();
        let mut b = [0u8; 4];
        shm.read_at(8, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert_eq!(view.read_u32(8), Ok(0x0403_0201));
        assert_eq!(view.write_u32(6, 0), Err(Errno::INVAL));
        assert_eq!(view.read_u32(6), Err(Errno::INVAL));
        assert_eq!(view.write_u32(4096, 0), Err(Errno::FAULT));
        assert_eq!(view.write_u32(4094, 0), Err(Errno::FAULT));
        let ro = MmapRegion::map_sealed(shm.fd(), 0, 4096, Protection::Read).unwrap();
        assert_eq!(ro.write_u32(8, 0), Err(Errno::PERM));
        assert_eq!(ro.read_u32(8), Ok(0x0403_0201));
    }

    #[test]
    fn anonymous_memory_is_zeroed_private_and_bounded() {
        assert_eq!(MmapRegion::anonymous(0).unwrap_err(), Errno::INVAL);
        let m = MmapRegion::anonymous(8192).unwrap();
        let mut b = [1u8; 8];
        m.read_at(8184, &mut b).unwrap();
        assert_eq!(b, [0; 8]);
        m.write_at(100, b"xyz").unwrap();
        m.write_u32(4096, 7).unwrap();
        let mut c = [0u8; 3];
        m.read_at(100, &mut c).unwrap();
        assert_eq!((&c, m.read_u32(4096)), (b"xyz", Ok(7)));
        assert_eq!(m.read_at(8190, &mut b).unwrap_err(), Errno::FAULT);
    }

    #[test]
    fn access_past_the_end_is_efault() {
        let shm = SharedMemory::new("b", 4096).unwrap();
        let mut b = [0u8; 2];
        assert_eq!(shm.read_at(4095, &mut b).unwrap_err(), Errno::FAULT);
        assert_eq!(shm.read_at(u64::MAX, &mut b).unwrap_err(), Errno::FAULT);
    }
}
