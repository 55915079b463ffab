//! What one client may make the server hold: DMA mappings (count and
//! bytes) and fds (eventfds bound to interrupts plus fd-backed DMA
//! mappings, each of which pins the client's file and one mapping of this
//! process's address space).
//!
//! SET_IRQS fds must be eventfds (as the kernel's `eventfd_ctx_fdget`
//! insists): a pipe or a socket would make the device's next interrupt a
//! `write` that raises `SIGPIPE` once the client closes the other end.
//!
//! Every check runs *before* the resource is taken (before the `mmap`,
//! before the eventfds reach the device), refuses with `ENOSPC` and logs
//! exactly one warning naming the limit. Accounting follows the commands
//! that succeeded, so it is an upper bound of what the device keeps: a
//! driver that drops eventfds early only makes the client's budget look
//! fuller than it is.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, OwnedFd};

use rustix::io::Errno;

use super::SessionConfig;
use crate::proto;

impl SessionConfig {
    /// Sets [`SessionConfig::max_msg_fds`].
    #[must_use]
    pub fn max_msg_fds(mut self, n: u32) -> Self {
        self.max_msg_fds = n;
        self
    }

    /// Sets [`SessionConfig::max_dma_bytes`].
    #[must_use]
    pub fn max_dma_bytes(mut self, n: u64) -> Self {
        self.max_dma_bytes = n;
        self
    }

    /// Sets [`SessionConfig::max_held_fds`].
    #[must_use]
    pub fn max_held_fds(mut self, n: u32) -> Self {
        self.max_held_fds = n;
        self
    }
}

/// Default [`SessionConfig::max_dma_bytes`]: 1 TiB.
pub const DEFAULT_MAX_DMA_BYTES: u64 = 1 << 40;
/// Default [`SessionConfig::max_held_fds`].
pub const DEFAULT_MAX_HELD_FDS: u32 = 1024;

/// One connection's accounting.
#[derive(Debug)]
pub(super) struct Budget {
    max_maps: usize,
    max_bytes: u64,
    max_fds: usize,
    /// iova → (size, backed by an fd).
    maps: BTreeMap<u64, (u64, bool)>,
    bytes: u64,
    fd_maps: usize,
    /// (irq index, vector) with an eventfd from this client.
    irq_fds: BTreeSet<(u32, u32)>,
}

impl Budget {
    pub(super) fn new(config: &SessionConfig) -> Budget {
        Budget {
            max_maps: usize::try_from(config.max_dma_maps).unwrap_or(usize::MAX),
            max_bytes: config.max_dma_bytes,
            max_fds: usize::try_from(config.max_held_fds).unwrap_or(usize::MAX),
            maps: BTreeMap::new(),
            bytes: 0,
            fd_maps: 0,
            irq_fds: BTreeSet::new(),
        }
    }

    /// Fds (and fd-backed mappings) held for this client.
    pub(super) fn held_fds(&self) -> usize {
        self.fd_maps + self.irq_fds.len()
    }

    /// DMA_MAP of `size` bytes, with an fd or not: within the limits?
    pub(super) fn check_map(&self, size: u64, with_fd: bool) -> Result<(), Errno> {
        if self.maps.len() >= self.max_maps {
            tracing::warn!(
                limit = "max_dma_maps",
                max = self.max_maps,
                "client has as many DMA mappings as allowed; DMA_MAP refused with ENOSPC"
            );
            return Err(Errno::NOSPC);
        }
        if self.bytes.saturating_add(size) > self.max_bytes {
            tracing::warn!(
                limit = "max_dma_bytes",
                max = self.max_bytes,
                mapped = self.bytes,
                size,
                "DMA_MAP would exceed the client's mapped bytes; refused with ENOSPC"
            );
            return Err(Errno::NOSPC);
        }
        if with_fd && self.held_fds() >= self.max_fds {
            tracing::warn!(
                limit = "max_held_fds",
                max = self.max_fds,
                "client holds as many fds as allowed; DMA_MAP refused with ENOSPC"
            );
            return Err(Errno::NOSPC);
        }
        Ok(())
    }

    /// A DMA_MAP succeeded.
    pub(super) fn note_map(&mut self, iova: u64, size: u64, with_fd: bool) {
        if let Some((old, fd)) = self.maps.insert(iova, (size, with_fd)) {
            // Cannot happen (the table refuses overlaps); keep the sums right.
            self.forget(old, fd);
        }
        self.bytes = self.bytes.saturating_add(size);
        if with_fd {
            self.fd_maps += 1;
        }
    }

    fn forget(&mut self, size: u64, with_fd: bool) {
        self.bytes = self.bytes.saturating_sub(size);
        if with_fd {
            self.fd_maps = self.fd_maps.saturating_sub(1);
        }
    }

    /// A DMA_UNMAP succeeded (one exact mapping, or all of them).
    pub(super) fn note_unmap(&mut self, m: &proto::DmaUnmap) {
        if m.flags & proto::VFIO_DMA_UNMAP_FLAG_ALL != 0 {
            self.maps.clear();
            self.bytes = 0;
            self.fd_maps = 0;
        } else if let Some((size, fd)) = self.maps.remove(&m.address) {
            self.forget(size, fd);
        }
    }

    /// SET_IRQS binding `fds` to `start..start+count` of `index`
    /// (replacing whatever those vectors had): eventfds, within the limit?
    pub(super) fn check_irqs(&self, s: &proto::SetIrqs<'_>, fds: &[OwnedFd]) -> Result<(), Errno> {
        let nfds = fds.len();
        if nfds == 0 || !binds_eventfds(s) {
            return Ok(());
        }
        if !fds.iter().all(is_eventfd) {
            tracing::debug!("SET_IRQS with an fd that is not an eventfd: EINVAL");
            return Err(Errno::INVAL);
        }
        let replaced = self.in_range(s.index, s.start, s.count);
        let after = self
            .held_fds()
            .saturating_sub(replaced)
            .saturating_add(nfds);
        if after > self.max_fds {
            tracing::warn!(
                limit = "max_held_fds",
                max = self.max_fds,
                held = self.held_fds(),
                nfds,
                "SET_IRQS would exceed the fds a client may hold; refused with ENOSPC"
            );
            return Err(Errno::NOSPC);
        }
        Ok(())
    }

    /// A SET_IRQS succeeded with `nfds` fds.
    pub(super) fn note_irqs(&mut self, s: &proto::SetIrqs<'_>, nfds: usize) {
        let disable_all = s.count == 0
            && matches!(s.data, proto::IrqData::None)
            && s.action == proto::IrqAction::Trigger;
        if disable_all {
            let gone: Vec<(u32, u32)> = self
                .irq_fds
                .range((s.index, 0)..=(s.index, u32::MAX))
                .copied()
                .collect();
            for k in gone {
                self.irq_fds.remove(&k);
            }
            return;
        }
        if !binds_eventfds(s) {
            return;
        }
        let end = s.start.saturating_add(s.count);
        for v in s.start..end {
            if nfds == 0 {
                self.irq_fds.remove(&(s.index, v));
            } else {
                self.irq_fds.insert((s.index, v));
            }
        }
    }

    fn in_range(&self, index: u32, start: u32, count: u32) -> usize {
        let end = start.saturating_add(count);
        if end <= start {
            return 0;
        }
        self.irq_fds.range((index, start)..(index, end)).count()
    }
}

/// Whether `fd` is an eventfd: an anonymous inode (no file type: not a
/// pipe, socket, file or device), and, where `/proc` tells, an eventfd.
fn is_eventfd(fd: &OwnedFd) -> bool {
    let Ok(st) = rustix::fs::fstat(fd) else {
        return false;
    };
    if st.st_mode & 0o170_000 != 0 {
        return false;
    }
    match std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
        Ok(link) => link.as_os_str() == "anon_inode:[eventfd]",
        // No /proc: the file-type check above has to do.
        Err(_) => true,
    }
}

fn binds_eventfds(s: &proto::SetIrqs<'_>) -> bool {
    s.action == proto::IrqAction::Trigger && matches!(s.data, proto::IrqData::Eventfd)
}
