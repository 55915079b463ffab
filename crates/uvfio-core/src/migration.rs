//! Migration v2: the device state machine, with exactly the kernel's arcs.
//!
//! A driver opts in by implementing [`MigrationOps`] and returning it from
//! [`crate::DeviceOps::migration`]. The driver only ever performs *single*
//! arcs between adjacent states ([`MigrationOps::step`]); the core turns any
//! request into a path with [`next_state`], which walks the kernel's
//! `vfio_from_fsm_table` and skips states the device does not support.
//!
//! Arcs (`→` one way, `↔` both), per `include/uapi/linux/vfio.h`:
//! ```text
//! always:          STOP ↔ STOP_COPY, STOP ↔ RESUMING
//! without P2P:     RUNNING ↔ STOP
//! P2P:             RUNNING ↔ RUNNING_P2P ↔ STOP
//! PRE_COPY:        RUNNING ↔ PRE_COPY, and PRE_COPY → STOP_COPY without P2P
//! P2P + PRE_COPY:  PRE_COPY ↔ PRE_COPY_P2P, PRE_COPY_P2P → RUNNING_P2P,
//!                  PRE_COPY_P2P → STOP_COPY, RUNNING_P2P → PRE_COPY_P2P
//! ```
//! Saving states (PRE_COPY, PRE_COPY_P2P, STOP_COPY) may only end a path,
//! unless the path goes from one saving state to another;
//! STOP_COPY → PRE_COPY* is impossible; ERROR can't be requested and is
//! left only through reset (which lands in RUNNING).

use crate::errno::{Errno, Result};

/// `enum vfio_device_mig_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MigState {
    /// A transition failed; only reset leaves it.
    Error = 0,
    /// No DMA, no interrupts, no state change.
    Stop = 1,
    /// Normal operation.
    Running = 2,
    /// Stopped, the final state is being read.
    StopCopy = 3,
    /// Stopped, a state stream is being written.
    Resuming = 4,
    /// Running, but no new peer-to-peer DMA.
    RunningP2p = 5,
    /// Running while initial state is read ahead of time.
    PreCopy = 6,
    /// PRE_COPY without new peer-to-peer DMA.
    PreCopyP2p = 7,
}

/// All states, indexed by their number.
pub const MIG_STATES: [MigState; 8] = [
    MigState::Error,
    MigState::Stop,
    MigState::Running,
    MigState::StopCopy,
    MigState::Resuming,
    MigState::RunningP2p,
    MigState::PreCopy,
    MigState::PreCopyP2p,
];

impl MigState {
    /// From the uAPI number; EINVAL when out of range.
    pub fn from_raw(v: u32) -> Result<Self> {
        MIG_STATES.get(v as usize).copied().ok_or(Errno::INVAL)
    }

    /// Whether a state stream is read in this state.
    pub fn is_saving(self) -> bool {
        matches!(
            self,
            MigState::PreCopy | MigState::PreCopyP2p | MigState::StopCopy
        )
    }
}

bitflags::bitflags! {
    /// `VFIO_MIGRATION_*`: what a device supports.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct MigFlags: u64 {
        /// Mandatory: STOP, RUNNING, STOP_COPY, RESUMING.
        const STOP_COPY = 1 << 0;
        /// RUNNING_P2P (and PRE_COPY_P2P with PRE_COPY).
        const P2P = 1 << 1;
        /// PRE_COPY.
        const PRE_COPY = 1 << 2;
    }
}

use MigState::*;

/// `vfio_from_fsm_table[cur][new]`: the next hop from `cur` towards `new`,
/// assuming every optional state is supported.
const NEXT: [[MigState; 8]; 8] = {
    // Rows are `cur`, columns `new`, both in MIG_STATES order:
    //  Error  Stop  Running  StopCopy  Resuming  RunningP2p  PreCopy  PreCopyP2p
    [
        /* Error */
        [Error, Error, Error, Error, Error, Error, Error, Error],
        /* Stop */
        [
            Error, Stop, RunningP2p, StopCopy, Resuming, RunningP2p, RunningP2p, RunningP2p,
        ],
        /* Running */
        [
            Error, RunningP2p, Running, RunningP2p, RunningP2p, RunningP2p, PreCopy, RunningP2p,
        ],
        /* StopCopy */
        [Error, Stop, Stop, StopCopy, Stop, Stop, Error, Error],
        /* Resuming */
        [Error, Stop, Stop, Stop, Resuming, Stop, Stop, Stop],
        /* RunningP2p */
        [
            Error, Stop, Running, Stop, Stop, RunningP2p, Running, PreCopyP2p,
        ],
        /* PreCopy */
        [
            Error, Running, Running, PreCopyP2p, Running, Running, PreCopy, PreCopyP2p,
        ],
        /* PreCopyP2p */
        [
            Error, RunningP2p, RunningP2p, StopCopy, RunningP2p, RunningP2p, PreCopy, PreCopyP2p,
        ],
    ]
};

/// The migration flags a state needs (`state_flags_table`); `None` for
/// ERROR, which no device "supports" as a target.
fn needs(s: MigState) -> Option<MigFlags> {
    Some(match s {
        Error => return None,
        Stop | Running | StopCopy | Resuming => MigFlags::STOP_COPY,
        RunningP2p => MigFlags::STOP_COPY.union(MigFlags::P2P),
        PreCopy => MigFlags::STOP_COPY.union(MigFlags::PRE_COPY),
        PreCopyP2p => MigFlags::all(),
    })
}

fn supported(s: MigState, flags: MigFlags) -> bool {
    needs(s).is_some_and(|n| flags.contains(n))
}

/// `vfio_mig_get_next_state`: the next single arc from `cur` towards `new`
/// for a device with `flags`. EINVAL if either end is unsupported (or
/// ERROR), or no path exists (STOP_COPY → PRE_COPY*).
pub fn next_state(flags: MigFlags, cur: MigState, new: MigState) -> Result<MigState> {
    if !supported(cur, flags) || !supported(new, flags) {
        return Err(Errno::INVAL);
    }
    let mut next = NEXT[cur as usize][new as usize];
    // Skip over states this device lacks; the table guarantees progress.
    while next != Error && !supported(next, flags) {
        next = NEXT[next as usize][new as usize];
    }
    if next == Error {
        Err(Errno::INVAL)
    } else {
        Ok(next)
    }
}

/// The full path from `cur` to `new` (excluding `cur`); empty if equal.
pub fn path(flags: MigFlags, cur: MigState, new: MigState) -> Result<Vec<MigState>> {
    let mut out = Vec::new();
    let mut at = cur;
    while at != new {
        at = next_state(flags, at, new)?;
        out.push(at);
        if out.len() > 8 {
            return Err(Errno::INVAL);
        }
    }
    Ok(out)
}

/// The driver's side of migration.
pub trait MigrationOps: Send + Sync {
    /// What the device supports; must contain STOP_COPY.
    fn flags(&self) -> MigFlags;

    /// Performs one arc `from → to` (adjacent per [`next_state`]). Starting
    /// a saving state begins a fresh stream; entering RESUMING expects one;
    /// RESUMING → STOP validates and applies what was written (an error
    /// here fails the transition).
    fn step(&self, from: MigState, to: MigState) -> Result<()>;

    /// Saving: copies the next bytes of the stream into `buf`; `Ok(0)` is
    /// the end of the stream in STOP_COPY. In PRE_COPY, ENOMSG means "no
    /// more data for now".
    fn save(&self, buf: &mut [u8]) -> Result<usize>;

    /// Resuming: appends `data` to the incoming stream.
    fn load(&self, data: &[u8]) -> Result<()>;

    /// PRE_COPY estimate: `(initial_bytes, dirty_bytes)` still to read.
    fn precopy_info(&self) -> (u64, u64) {
        (0, 0)
    }

    /// Bytes STOP_COPY is expected to produce (`MIG_DATA_SIZE`).
    fn stop_copy_size(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kernel's listing of the arcs a device with every feature must accept
    /// as single steps.
    fn is_arc(flags: MigFlags, a: MigState, b: MigState) -> bool {
        let p2p = flags.contains(MigFlags::P2P);
        let pre = flags.contains(MigFlags::PRE_COPY);
        matches!(
            (a, b),
            (Stop, StopCopy) | (StopCopy, Stop) | (Stop, Resuming) | (Resuming, Stop)
        ) || (!p2p && matches!((a, b), (Running, Stop) | (Stop, Running)))
            || (p2p
                && matches!(
                    (a, b),
                    (Running, RunningP2p)
                        | (RunningP2p, Running)
                        | (RunningP2p, Stop)
                        | (Stop, RunningP2p)
                ))
            || (pre && matches!((a, b), (Running, PreCopy) | (PreCopy, Running)))
            || (pre && !p2p && matches!((a, b), (PreCopy, StopCopy)))
            || (pre
                && p2p
                && matches!(
                    (a, b),
                    (PreCopy, PreCopyP2p)
                        | (PreCopyP2p, PreCopy)
                        | (PreCopyP2p, RunningP2p)
                        | (PreCopyP2p, StopCopy)
                        | (RunningP2p, PreCopyP2p)
                ))
    }

    const ALL_FLAGS: [MigFlags; 4] = [
        MigFlags::STOP_COPY,
        MigFlags::STOP_COPY.union(MigFlags::P2P),
        MigFlags::STOP_COPY.union(MigFlags::PRE_COPY),
        MigFlags::all(),
    ];

    #[test]
    fn every_allowed_arc_is_one_step_and_every_step_is_an_arc() {
        for flags in ALL_FLAGS {
            for a in MIG_STATES {
                for b in MIG_STATES {
                    if a == b {
                        continue;
                    }
                    match next_state(flags, a, b) {
                        Ok(n) => {
                            assert!(
                                is_arc(flags, a, n),
                                "{flags:?}: {a:?}->{b:?} hops via non-arc {n:?}"
                            );
                            if is_arc(flags, a, b) {
                                assert_eq!(n, b, "{flags:?}: arc {a:?}->{b:?} must be direct");
                            }
                        }
                        Err(e) => {
                            assert_eq!(e, Errno::INVAL);
                            assert!(!is_arc(flags, a, b), "{flags:?}: arc {a:?}->{b:?} refused");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn paths_keep_saving_states_at_the_ends_only() {
        for flags in ALL_FLAGS {
            for a in MIG_STATES {
                for b in MIG_STATES {
                    let Ok(p) = path(flags, a, b) else { continue };
                    // A saving state inside a path only when moving from one
                    // saving state to another (the data fd stays valid).
                    if let Some((_, inner)) = p.split_last() {
                        let ok = inner.iter().all(|s| !s.is_saving())
                            || (a.is_saving() && b.is_saving());
                        assert!(ok, "{a:?}->{b:?}: {p:?}");
                    }
                    assert!(p.len() <= 4);
                }
            }
        }
    }

    #[test]
    fn forbidden_requests_are_einval() {
        let f = MigFlags::all();
        assert_eq!(next_state(f, StopCopy, PreCopy).unwrap_err(), Errno::INVAL);
        assert_eq!(
            next_state(f, StopCopy, PreCopyP2p).unwrap_err(),
            Errno::INVAL
        );
        assert_eq!(next_state(f, Running, Error).unwrap_err(), Errno::INVAL);
        assert_eq!(next_state(f, Error, Running).unwrap_err(), Errno::INVAL);
        // Unsupported states cannot be requested.
        assert_eq!(
            next_state(MigFlags::STOP_COPY, Running, RunningP2p).unwrap_err(),
            Errno::INVAL
        );
        assert_eq!(
            next_state(MigFlags::STOP_COPY, Running, PreCopy).unwrap_err(),
            Errno::INVAL
        );
    }

    #[test]
    fn combinations_follow_the_kernel_paths() {
        let basic = MigFlags::STOP_COPY;
        assert_eq!(
            path(basic, Running, StopCopy).unwrap(),
            vec![Stop, StopCopy]
        );
        assert_eq!(path(basic, Resuming, Running).unwrap(), vec![Stop, Running]);
        let all = MigFlags::all();
        assert_eq!(
            path(all, Running, StopCopy).unwrap(),
            vec![RunningP2p, Stop, StopCopy]
        );
        assert_eq!(
            path(all, PreCopy, StopCopy).unwrap(),
            vec![PreCopyP2p, StopCopy]
        );
        let pre = MigFlags::STOP_COPY | MigFlags::PRE_COPY;
        assert_eq!(path(pre, PreCopy, StopCopy).unwrap(), vec![StopCopy]);
        assert_eq!(path(pre, PreCopy, Stop).unwrap(), vec![Running, Stop]);
    }
}
