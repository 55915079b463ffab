//! Fixtures shared by the uvfio crates' tests. A dev-dependency only (not
//! published): nothing here is part of uvfio's API.
//!
//! [`RustVmmServer`] runs rust-vmm's `vfio_user` server (the real one, over
//! a real UNIX socket in a temp folder) with a vfio-pci-like layout, so that
//! our client and tools can be tested against someone else's implementation.
//! [`MemoryBackend`] is a backend for it that keeps each region in memory
//! and records what the server asked of it ([`Seen`]).
//!
//! [`fuzz_corpus`] reads a fuzz target's committed corpus, for the tests
//! that replay it on stable.
//!
//! This crate does not depend on `uvfio-user`: a test of that crate linking
//! a second build of it through here would see two copies of its types.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use vfio_bindings::bindings::vfio::{
    vfio_region_info, vfio_region_sparse_mmap_area, VFIO_IRQ_INFO_EVENTFD,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};

/// Region indexes of a vfio-pci device: BAR0-5, ROM, config, VGA.
pub const PCI_REGIONS: u32 = 9;
/// IRQ indexes of a vfio-pci device: INTx, MSI, MSI-X, ERR, REQ.
pub const PCI_IRQS: usize = 5;

/// A rust-vmm `vfio_user::Server` to be: its region and IRQ layout, built
/// up from [`RustVmmServer::pci`], then [`spawn`](RustVmmServer::spawn)ed.
pub struct RustVmmServer {
    regions: Vec<vfio_user::ServerRegion>,
    irqs: Vec<vfio_user::IrqInfo>,
    resettable: bool,
    /// The server only holds their numbers: they must outlive it.
    mmap_fds: Vec<OwnedFd>,
}

fn region_info(index: u32, size: u64, flags: u32) -> vfio_user::ServerRegion {
    vfio_user::ServerRegion {
        region_info: vfio_region_info {
            argsz: 32,
            flags,
            index,
            cap_offset: 0,
            size,
            offset: 0,
        },
        sparse_areas: Vec::new(),
        mmap_fd: None,
    }
}

const RW: u32 = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;

impl RustVmmServer {
    /// vfio-pci's shape with nothing in it: [`PCI_REGIONS`] absent regions
    /// and [`PCI_IRQS`] IRQ indexes that take eventfds but have no
    /// vectors; not resettable.
    #[must_use]
    pub fn pci() -> RustVmmServer {
        RustVmmServer {
            regions: (0..PCI_REGIONS).map(|i| region_info(i, 0, 0)).collect(),
            irqs: (0..PCI_IRQS as u32)
                .map(|index| vfio_user::IrqInfo {
                    index,
                    flags: VFIO_IRQ_INFO_EVENTFD,
                    count: 0,
                })
                .collect(),
            resettable: false,
            mmap_fds: Vec::new(),
        }
    }

    /// Region `index`: `size` bytes, readable and writable by message.
    #[must_use]
    pub fn rw_region(mut self, index: u32, size: u64) -> RustVmmServer {
        self.regions[index as usize] = region_info(index, size, RW);
        self
    }

    /// Region `index`: `size` bytes, readable and writable by message and
    /// mappable from `fd` (from its offset 0), but only the `sparse`
    /// `(offset, size)` areas of it. Messages go to the backend, not to
    /// `fd`: the two are separate memories.
    #[must_use]
    pub fn mmap_region(
        mut self,
        index: u32,
        size: u64,
        fd: OwnedFd,
        sparse: &[(u64, u64)],
    ) -> RustVmmServer {
        self.regions[index as usize] = vfio_user::ServerRegion {
            sparse_areas: sparse
                .iter()
                .map(|&(offset, size)| vfio_user::SparseArea {
                    area: vfio_region_sparse_mmap_area { offset, size },
                })
                .collect(),
            mmap_fd: Some(fd.as_raw_fd()),
            ..region_info(index, size, RW | VFIO_REGION_INFO_FLAG_MMAP)
        };
        self.mmap_fds.push(fd);
        self
    }

    /// The number of vectors of each IRQ index.
    #[must_use]
    pub fn irq_counts(mut self, counts: [u32; PCI_IRQS]) -> RustVmmServer {
        for (irq, count) in self.irqs.iter_mut().zip(counts) {
            irq.count = count;
        }
        self
    }

    /// Offers DEVICE_RESET.
    #[must_use]
    pub fn resettable(mut self) -> RustVmmServer {
        self.resettable = true;
        self
    }

    /// A backend with a zeroed memory of each region's size.
    #[must_use]
    pub fn memory_backend(&self) -> MemoryBackend {
        MemoryBackend {
            regions: self
                .regions
                .iter()
                .map(|r| MemoryRegion {
                    bytes: vec![0; r.region_info.size as usize],
                    on_write: None,
                })
                .collect(),
            seen: Seen::default(),
        }
    }

    /// Binds a socket in a fresh temp folder and serves one connection on
    /// it from a thread, with `backend`.
    ///
    /// # Panics
    ///
    /// If the folder or the socket cannot be made.
    pub fn spawn<B>(self, mut backend: B) -> Running<B>
    where
        B: vfio_user::ServerBackend + Send + 'static,
    {
        let dir = tempfile::tempdir().expect("temp folder");
        let path = dir.path().join("rust-vmm.sock");
        let server = vfio_user::Server::new(&path, self.resettable, self.irqs, self.regions)
            .expect("rust-vmm server");
        let thread = std::thread::spawn(move || {
            server
                .run(&mut backend)
                .map(|()| backend)
                .map_err(|e| e.to_string())
        });
        Running {
            path,
            thread,
            _mmap_fds: self.mmap_fds,
            _dir: dir,
        }
    }
}

/// A rust-vmm server serving one connection on a thread.
///
/// Dropping it without [`join`](Running::join) leaves the thread waiting
/// for a client (it is not joined, so a failing test does not hang on it).
pub struct Running<B> {
    path: PathBuf,
    thread: JoinHandle<Result<B, String>>,
    _mmap_fds: Vec<OwnedFd>,
    _dir: tempfile::TempDir,
}

impl<B> Running<B> {
    /// The socket to connect to.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the server to return (it does once its client has
    /// disconnected) and gives the backend back, or the server's error.
    ///
    /// # Panics
    ///
    /// If the server's thread panicked.
    pub fn join(self) -> Result<B, String> {
        self.thread.join().expect("rust-vmm server thread panicked")
    }
}

/// What a [`MemoryBackend`] was asked to do besides region accesses, in
/// order.
#[derive(Debug, Default)]
pub struct Seen {
    /// DMA_MAP: `(offset, address, size, whether an fd came with it)`.
    pub dma_maps: Vec<(u64, u64, u64, bool)>,
    /// DMA_UNMAP: `(address, size)`.
    pub dma_unmaps: Vec<(u64, u64)>,
    /// SET_IRQS: `(index, flags, start, count, fds)`, the fds kept open.
    pub set_irqs: Vec<(u32, u32, u32, u32, Vec<File>)>,
    /// DEVICE_RESETs.
    pub resets: u32,
}

/// Stands in for a register file: `(region memory, offset, data)`, with
/// `offset..offset + data.len()` within the memory.
pub type WriteHook = fn(&mut [u8], usize, &[u8]);

struct MemoryRegion {
    bytes: Vec<u8>,
    on_write: Option<WriteHook>,
}

/// A backend that keeps each region as bytes (reads and writes outside a
/// region fail with `InvalidInput`) and records everything else in
/// [`Seen`], accepting it. Made by [`RustVmmServer::memory_backend`].
pub struct MemoryBackend {
    regions: Vec<MemoryRegion>,
    seen: Seen,
}

impl MemoryBackend {
    /// Region `index` starts as `bytes` (followed by zeros).
    ///
    /// # Panics
    ///
    /// If the region is smaller than `bytes`.
    #[must_use]
    pub fn with_contents(mut self, index: u32, bytes: &[u8]) -> MemoryBackend {
        self.regions[index as usize].bytes[..bytes.len()].copy_from_slice(bytes);
        self
    }

    /// Writes to region `index` go through `hook` instead of being stored
    /// as they are (read-only bits, registers that mask what is written).
    #[must_use]
    pub fn on_write(mut self, index: u32, hook: WriteHook) -> MemoryBackend {
        self.regions[index as usize].on_write = Some(hook);
        self
    }

    /// Region `index`'s memory.
    #[must_use]
    pub fn region(&self, index: u32) -> &[u8] {
        &self.regions[index as usize].bytes
    }

    /// What the server asked for.
    #[must_use]
    pub fn seen(&self) -> &Seen {
        &self.seen
    }

    fn range(&mut self, region: u32, offset: u64, len: usize) -> io::Result<&mut MemoryRegion> {
        let r = self
            .regions
            .get_mut(region as usize)
            .ok_or(io::ErrorKind::InvalidInput)?;
        let end = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(len))
            .ok_or(io::ErrorKind::InvalidInput)?;
        if end > r.bytes.len() {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        Ok(r)
    }
}

impl vfio_user::ServerBackend for MemoryBackend {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        let r = self.range(region, offset, data.len())?;
        let off = offset as usize;
        data.copy_from_slice(&r.bytes[off..off + data.len()]);
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        let r = self.range(region, offset, data.len())?;
        let off = offset as usize;
        match r.on_write {
            Some(hook) => hook(&mut r.bytes, off, data),
            None => r.bytes[off..off + data.len()].copy_from_slice(data),
        }
        Ok(())
    }

    fn dma_map(
        &mut self,
        _flags: vfio_user::DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> io::Result<()> {
        self.seen
            .dma_maps
            .push((offset, address, size, fd.is_some()));
        Ok(())
    }

    fn dma_unmap(
        &mut self,
        _flags: vfio_user::DmaUnmapFlags,
        address: u64,
        size: u64,
    ) -> io::Result<()> {
        self.seen.dma_unmaps.push((address, size));
        Ok(())
    }

    fn reset(&mut self) -> io::Result<()> {
        self.seen.resets += 1;
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> io::Result<()> {
        self.seen.set_irqs.push((index, flags, start, count, fds));
        Ok(())
    }
}

/// The committed corpus of fuzz target `target` (`fuzz/corpus/TARGET`),
/// in file-name order; empty if the folder is missing.
#[must_use]
pub fn fuzz_corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}
