//! Capability-list walkers over raw config bytes.
//!
//! They take nothing but the bytes, so the same code checks what
//! [`crate::ConfigSpace`] builds and decodes config space read from any
//! device (an `lspci`-style tool). Both are loop-safe and bounded: the
//! conventional list stops after 48 hops (as the kernel's
//! `PCI_FIND_CAP_TTL`), the extended list after 480 (`(4096 - 256) / 8`).
//! A malformed list yields the entries read so far plus the reason the walk
//! stopped.

use crate::regs::{
    PCI_CAPABILITY_LIST, PCI_CFG_SPACE_EXP_SIZE, PCI_CFG_SPACE_SIZE, PCI_STATUS,
    PCI_STD_HEADER_SIZEOF,
};

/// Most hops through the conventional list.
pub const PCI_FIND_CAP_TTL: usize = 48;
/// Most hops through the extended list.
pub const PCI_FIND_EXT_CAP_TTL: usize = (PCI_CFG_SPACE_EXP_SIZE - PCI_CFG_SPACE_SIZE) / 8;

/// One capability found by a walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapEntry {
    /// Offset of the capability header.
    pub offset: u16,
    /// Capability ID (8 bits for the conventional list, 16 for extended).
    pub id: u16,
    /// Extended capability version (0 for conventional capabilities).
    pub version: u8,
}

/// Why a walk stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WalkError {
    /// A pointer led back to a capability already visited.
    #[error("capability list loops back to {offset:#x}")]
    Loop {
        /// The offset visited twice.
        offset: u16,
    },
    /// More hops than the limit.
    #[error("capability list longer than {0} entries")]
    TooManyHops(usize),
    /// A pointer into the header or past the end of the bytes given.
    #[error("capability pointer {offset:#x} out of range")]
    OutOfRange {
        /// The bad pointer.
        offset: u16,
    },
}

/// The result of a walk: what was found, and the error that stopped it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CapWalk {
    /// Capabilities in list order.
    pub entries: Vec<CapEntry>,
    /// Set if the list is malformed.
    pub error: Option<WalkError>,
}

impl CapWalk {
    /// The first capability with `id`.
    pub fn find(&self, id: u16) -> Option<CapEntry> {
        self.entries.iter().copied().find(|e| e.id == id)
    }

    /// The IDs in list order.
    pub fn ids(&self) -> Vec<u16> {
        self.entries.iter().map(|e| e.id).collect()
    }
}

fn byte(cfg: &[u8], off: usize) -> Option<u8> {
    cfg.get(off).copied()
}

/// Walks the conventional capability list of `config` (at least the
/// 64-byte header): empty unless the status register's CAP_LIST bit is set.
pub fn walk_capabilities(config: &[u8]) -> CapWalk {
    let mut walk = CapWalk::default();
    let status = usize::from(PCI_STATUS);
    let Some(status) = byte(config, status) else {
        walk.error = Some(WalkError::OutOfRange { offset: PCI_STATUS });
        return walk;
    };
    if status & 0x10 == 0 {
        return walk;
    }
    let limit = config.len().min(PCI_CFG_SPACE_SIZE);
    let Some(first) = byte(config, usize::from(PCI_CAPABILITY_LIST)) else {
        walk.error = Some(WalkError::OutOfRange {
            offset: PCI_CAPABILITY_LIST,
        });
        return walk;
    };
    let mut ptr = usize::from(first & !3);
    let mut visited = [false; PCI_CFG_SPACE_SIZE];
    while ptr != 0 {
        let offset = ptr as u16;
        if ptr < usize::from(PCI_STD_HEADER_SIZEOF) || ptr + 2 > limit {
            walk.error = Some(WalkError::OutOfRange { offset });
            break;
        }
        if visited[ptr] {
            walk.error = Some(WalkError::Loop { offset });
            break;
        }
        if walk.entries.len() == PCI_FIND_CAP_TTL {
            walk.error = Some(WalkError::TooManyHops(PCI_FIND_CAP_TTL));
            break;
        }
        visited[ptr] = true;
        walk.entries.push(CapEntry {
            offset,
            id: u16::from(config[ptr]),
            version: 0,
        });
        ptr = usize::from(config[ptr + 1] & !3);
    }
    walk
}

/// Walks the extended capability list from `0x100`: empty if `config` is
/// only 256 bytes or the first header is 0 (or all-ones).
pub fn walk_extended_capabilities(config: &[u8]) -> CapWalk {
    let mut walk = CapWalk::default();
    let mut ptr = PCI_CFG_SPACE_SIZE;
    let mut visited = vec![false; PCI_CFG_SPACE_EXP_SIZE];
    loop {
        let offset = ptr as u16;
        let Some(h) = config.get(ptr..ptr + 4) else {
            if ptr != PCI_CFG_SPACE_SIZE {
                walk.error = Some(WalkError::OutOfRange { offset });
            }
            break;
        };
        let header = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        if header == 0 || header == u32::MAX {
            break;
        }
        if visited[ptr] {
            walk.error = Some(WalkError::Loop { offset });
            break;
        }
        if walk.entries.len() == PCI_FIND_EXT_CAP_TTL {
            walk.error = Some(WalkError::TooManyHops(PCI_FIND_EXT_CAP_TTL));
            break;
        }
        visited[ptr] = true;
        walk.entries.push(CapEntry {
            offset,
            id: (header & 0xffff) as u16,
            version: ((header >> 16) & 0xf) as u8,
        });
        let next = ((header >> 20) & 0xffc) as usize;
        if next == 0 {
            break;
        }
        if next < PCI_CFG_SPACE_SIZE {
            walk.error = Some(WalkError::OutOfRange {
                offset: next as u16,
            });
            break;
        }
        ptr = next;
    }
    walk
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_with_caps() -> Vec<u8> {
        let mut c = vec![0u8; 256];
        c[6] = 0x10;
        c[0x34] = 0x40;
        c
    }

    #[test]
    fn walk_no_cap_list_bit_is_empty() {
        let mut c = header_with_caps();
        c[6] = 0;
        c[0x40] = 0x01;
        assert_eq!(walk_capabilities(&c), CapWalk::default());
    }

    #[test]
    fn walk_two_caps_in_order() {
        let mut c = header_with_caps();
        c[0x40] = 0x01;
        c[0x41] = 0x50;
        c[0x50] = 0x05;
        let w = walk_capabilities(&c);
        assert_eq!(w.ids(), vec![0x01, 0x05]);
        assert_eq!(w.find(5).map(|e| e.offset), Some(0x50));
        assert_eq!(w.error, None);
    }

    #[test]
    fn walk_self_loop_stops_with_loop_error() {
        let mut c = header_with_caps();
        c[0x40] = 0x01;
        c[0x41] = 0x40;
        let w = walk_capabilities(&c);
        assert_eq!(w.entries.len(), 1);
        assert_eq!(w.error, Some(WalkError::Loop { offset: 0x40 }));
    }

    #[test]
    fn walk_pointer_into_header_is_out_of_range() {
        let mut c = header_with_caps();
        c[0x34] = 0x10;
        let w = walk_capabilities(&c);
        assert_eq!(w.error, Some(WalkError::OutOfRange { offset: 0x10 }));
    }

    #[test]
    fn walk_pointer_past_truncated_bytes_is_out_of_range() {
        let mut c = header_with_caps();
        c[0x40] = 0x01;
        c[0x41] = 0xfc;
        c.truncate(0x80);
        let w = walk_capabilities(&c);
        assert_eq!(w.error, Some(WalkError::OutOfRange { offset: 0xfc }));
    }

    #[test]
    fn walk_extended_chain_and_loop() {
        let mut c = vec![0u8; 4096];
        c[0x100..0x104].copy_from_slice(&(0x0003u32 | (1 << 16) | (0x140 << 20)).to_le_bytes());
        c[0x140..0x144].copy_from_slice(&(0x000bu32 | (1 << 16) | (0x100 << 20)).to_le_bytes());
        let w = walk_extended_capabilities(&c);
        assert_eq!(w.ids(), vec![3, 0xb]);
        assert_eq!(w.entries[0].version, 1);
        assert_eq!(w.error, Some(WalkError::Loop { offset: 0x100 }));
    }

    #[test]
    fn walk_extended_on_conventional_space_is_empty() {
        let c = vec![0u8; 256];
        assert_eq!(walk_extended_capabilities(&c), CapWalk::default());
    }
}
