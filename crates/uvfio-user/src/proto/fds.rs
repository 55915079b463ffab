//! How many fds each message may carry (spec §1), checked at decode.

use core::fmt;

/// The number of fds a message may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdRule {
    /// No fds.
    None,
    /// Zero or one (DMA_MAP, GET_REGION_INFO reply with MMAP, VERSION reply
    /// in twin-socket mode).
    AtMostOne,
    /// Exactly `n`, or zero (SET_IRQS with DATA_EVENTFD: zero de-assigns).
    CountOrNone(u32),
    /// Exactly `n` (GET_REGION_IO_FDS reply: one past the largest index).
    Exactly(usize),
}

impl FdRule {
    /// Whether `nfds` fds satisfy the rule.
    #[must_use]
    pub fn allows(self, nfds: usize) -> bool {
        match self {
            FdRule::None => nfds == 0,
            FdRule::AtMostOne => nfds <= 1,
            FdRule::CountOrNone(n) => nfds == 0 || nfds == super::reader::usize_from(n),
            FdRule::Exactly(n) => nfds == n,
        }
    }
}

impl fmt::Display for FdRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdRule::None => f.write_str("no fds"),
            FdRule::AtMostOne => f.write_str("0 or 1 fd"),
            FdRule::CountOrNone(n) => write!(f, "0 or {n} fds"),
            FdRule::Exactly(n) => write!(f, "exactly {n} fds"),
        }
    }
}
