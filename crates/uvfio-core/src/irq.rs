//! Interrupts: `VFIO_DEVICE_GET_IRQ_INFO` / `VFIO_DEVICE_SET_IRQS` and the
//! eventfd-backed interrupt state a driver triggers.
//!
//! [`IrqLines`] implements the SET_IRQS semantics once (validation, eventfd
//! binding, masking, INTx-style automask, mutually exclusive indexes) so that
//! drivers only call [`IrqLines::trigger`]. It is cheap to clone: a driver
//! keeps a clone for its own threads (a timer, an input pin changing).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::errno::{Errno, Result};

bitflags::bitflags! {
    /// `VFIO_IRQ_INFO_*`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct IrqFlags: u32 {
        /// Signalled through eventfds.
        const EVENTFD = 1 << 0;
        /// MASK/UNMASK are supported.
        const MASKABLE = 1 << 1;
        /// Level-triggered: masked after each firing until the user unmasks.
        const AUTOMASKED = 1 << 2;
        /// All vectors must be set up in one call.
        const NORESIZE = 1 << 3;
    }
}

/// What `VFIO_DEVICE_GET_IRQ_INFO` returns for one index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IrqInfo {
    /// IRQ index (`VFIO_PCI_*_IRQ_INDEX` for PCI devices).
    pub index: u32,
    /// Capabilities of the index.
    pub flags: IrqFlags,
    /// Number of vectors; 0 means unimplemented.
    pub count: u32,
}

/// The ACTION part of a SET_IRQS request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqAction {
    /// Mask the vectors.
    Mask,
    /// Unmask the vectors.
    Unmask,
    /// Bind eventfds (EVENTFD) or fire the vectors (NONE/BOOL loopback).
    Trigger,
}

/// The DATA part of a SET_IRQS request.
#[derive(Debug)]
pub enum IrqData {
    /// Apply to every vector in `start..start+count`.
    None,
    /// Apply to the vectors whose flag is true; one flag per vector.
    Bool(Vec<bool>),
    /// One fd per vector; `None` (-1 on the wire) unassigns that vector.
    Eventfd(Vec<Option<OwnedFd>>),
}

/// A typed `VFIO_DEVICE_SET_IRQS` request.
#[derive(Debug)]
pub struct SetIrqs {
    /// IRQ index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
    /// What to do.
    pub action: IrqAction,
    /// With which data.
    pub data: IrqData,
}

impl SetIrqs {
    /// Binds `n` fresh eventfds to vectors `start..start+n` of `index`
    /// (TRIGGER with EVENTFD data): the request, and the caller's ends of
    /// the eventfds, to read the interrupts from.
    pub fn bind_new_eventfds(index: u32, start: u32, n: u32) -> Result<(SetIrqs, Vec<OwnedFd>)> {
        let mine = (0..n).map(|_| eventfd()).collect::<Result<Vec<_>>>()?;
        let theirs = mine
            .iter()
            .map(|f| rustix::io::fcntl_dupfd_cloexec(f, 0).map(Some))
            .collect::<Result<Vec<_>>>()?;
        let req = SetIrqs {
            index,
            start,
            count: n,
            action: IrqAction::Trigger,
            data: IrqData::Eventfd(theirs),
        };
        Ok((req, mine))
    }
}

/// Declares one IRQ index of a device for [`IrqLines::new`].
#[derive(Debug, Clone, Copy)]
pub struct IrqIndexConfig {
    /// What GET_IRQ_INFO reports.
    pub info: IrqInfo,
    /// At most one *exclusive* index may have eventfds bound at a time
    /// (vfio-pci: INTx, MSI and MSI-X; enabling a second gives EINVAL).
    pub exclusive: bool,
}

#[derive(Debug, Default)]
struct Vector {
    eventfd: Option<OwnedFd>,
    masked: bool,
    pending: bool,
}

#[derive(Debug)]
struct IndexState {
    config: IrqIndexConfig,
    vectors: Vec<Vector>,
}

impl IndexState {
    fn enabled(&self) -> bool {
        self.vectors.iter().any(|v| v.eventfd.is_some())
    }
}

/// The interrupt state of one device: per index, per vector, the bound
/// eventfd and its mask/pending bits.
#[derive(Debug, Clone)]
pub struct IrqLines {
    inner: Arc<Mutex<Vec<IndexState>>>,
}

/// Signals an eventfd: adds 1 to its counter.
///
/// An fd that is not writable as an eventfd (the user passed something else)
/// makes the trigger fail with the errno; the interrupt is then lost, which
/// is all a misbehaving user can achieve.
pub fn signal_eventfd(fd: impl AsFd) -> Result<()> {
    match rustix::io::write(fd, &1u64.to_ne_bytes()) {
        Ok(8) => Ok(()),
        Ok(_) => Err(Errno::IO),
        // A saturated counter: the reader has not drained it; the interrupt
        // is already pending for them.
        Err(Errno::AGAIN) => Ok(()),
        Err(e) => Err(e),
    }
}

impl IrqLines {
    /// Builds the state for the given indexes. `configs[i].info.index` must be
    /// `i` (indexes are dense, as in VFIO); counts are capped at 2048.
    ///
    /// # Panics
    /// If the indexes are not dense or a count exceeds 2048: a driver bug,
    /// caught at init, never reachable from a user.
    pub fn new(configs: &[IrqIndexConfig]) -> Self {
        let states = configs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                assert_eq!(c.info.index as usize, i, "IRQ indexes must be dense");
                assert!(c.info.count <= 2048, "IRQ count too large");
                IndexState {
                    config: *c,
                    vectors: (0..c.info.count).map(|_| Vector::default()).collect(),
                }
            })
            .collect();
        IrqLines {
            inner: Arc::new(Mutex::new(states)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<IndexState>> {
        // A panic while holding this lock leaves only plain data behind.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of indexes.
    pub fn num_irqs(&self) -> u32 {
        u32::try_from(self.lock().len()).unwrap_or(u32::MAX)
    }

    /// GET_IRQ_INFO for `index`; EINVAL past the last index.
    pub fn info(&self, index: u32) -> Result<IrqInfo> {
        let g = self.lock();
        g.get(index as usize)
            .map(|s| s.config.info)
            .ok_or(Errno::INVAL)
    }

    /// Applies a SET_IRQS request with the kernel's rules.
    pub fn set_irqs(&self, req: SetIrqs) -> Result<()> {
        let mut g = self.lock();
        let idx = req.index as usize;
        let Some(state) = g.get(idx) else {
            return Err(Errno::INVAL);
        };
        let info = state.config.info;
        if info.count == 0 {
            return Err(Errno::INVAL);
        }
        let end = req.start.checked_add(req.count).ok_or(Errno::INVAL)?;
        // count 0 + NONE + TRIGGER disables the index.
        let disable =
            req.count == 0 && matches!(req.data, IrqData::None) && req.action == IrqAction::Trigger;
        if disable {
            if req.start != 0 {
                return Err(Errno::INVAL);
            }
            for v in &mut g[idx].vectors {
                *v = Vector::default();
            }
            return Ok(());
        }
        if req.count == 0 || end > info.count {
            return Err(Errno::INVAL);
        }
        match &req.data {
            IrqData::None => {}
            IrqData::Bool(b) if b.len() == req.count as usize => {}
            IrqData::Eventfd(f) if f.len() == req.count as usize => {}
            _ => return Err(Errno::INVAL),
        }
        let range = req.start as usize..end as usize;
        match req.action {
            IrqAction::Mask | IrqAction::Unmask => {
                if !info.flags.contains(IrqFlags::MASKABLE) {
                    return Err(Errno::INVAL);
                }
                let selected: Vec<bool> = match req.data {
                    IrqData::None => vec![true; req.count as usize],
                    IrqData::Bool(b) => b,
                    // irqfd-style unmask is not supported (kernel: MASK+EVENTFD is ENOTTY).
                    IrqData::Eventfd(_) => return Err(Errno::NOTTY),
                };
                let mask = req.action == IrqAction::Mask;
                for (v, sel) in g[idx].vectors[range].iter_mut().zip(selected) {
                    if !sel {
                        continue;
                    }
                    v.masked = mask;
                    if !mask && v.pending {
                        v.pending = false;
                        fire(v, info.flags)?;
                    }
                }
                Ok(())
            }
            IrqAction::Trigger => match req.data {
                IrqData::Eventfd(fds) => {
                    let binds_any = fds.iter().any(Option::is_some);
                    if binds_any && g[idx].config.exclusive {
                        let other_enabled = g
                            .iter()
                            .enumerate()
                            .any(|(i, s)| i != idx && s.config.exclusive && s.enabled());
                        if other_enabled {
                            return Err(Errno::INVAL);
                        }
                    }
                    for (v, fd) in g[idx].vectors[range].iter_mut().zip(fds) {
                        // Replacing drops (closes) the previous eventfd.
                        v.eventfd = fd;
                        v.pending = false;
                    }
                    Ok(())
                }
                IrqData::None => {
                    for v in &mut g[idx].vectors[range] {
                        fire(v, info.flags)?;
                    }
                    Ok(())
                }
                IrqData::Bool(b) => {
                    for (v, sel) in g[idx].vectors[range].iter_mut().zip(b) {
                        if sel {
                            fire(v, info.flags)?;
                        }
                    }
                    Ok(())
                }
            },
        }
    }

    /// Raises vector `vector` of `index`: signals its eventfd unless masked
    /// (then it stays pending until unmasked). Returns whether an eventfd
    /// was signalled. With no eventfd bound the interrupt is dropped, as on
    /// hardware whose interrupt is disabled.
    pub fn trigger(&self, index: u32, vector: u32) -> Result<bool> {
        let mut g = self.lock();
        let state = g.get_mut(index as usize).ok_or(Errno::INVAL)?;
        let flags = state.config.info.flags;
        let v = state.vectors.get_mut(vector as usize).ok_or(Errno::INVAL)?;
        fire(v, flags)
    }

    /// Drops a trigger that arrived while `vector` was masked (a level
    /// interrupt that was lowered before the user unmasked it).
    pub fn clear_pending(&self, index: u32, vector: u32) {
        if let Some(v) = self
            .lock()
            .get_mut(index as usize)
            .and_then(|s| s.vectors.get_mut(vector as usize))
        {
            v.pending = false;
        }
    }

    /// Whether `vector` of `index` has a trigger waiting for an unmask.
    pub fn pending(&self, index: u32, vector: u32) -> bool {
        self.lock()
            .get(index as usize)
            .and_then(|s| s.vectors.get(vector as usize))
            .is_some_and(|v| v.pending)
    }

    /// Whether any vector of `index` has an eventfd bound.
    pub fn enabled(&self, index: u32) -> bool {
        self.lock()
            .get(index as usize)
            .is_some_and(IndexState::enabled)
    }

    /// Whether `vector` of `index` is masked.
    pub fn masked(&self, index: u32, vector: u32) -> bool {
        self.lock()
            .get(index as usize)
            .and_then(|s| s.vectors.get(vector as usize))
            .is_some_and(|v| v.masked)
    }

    /// Drops every eventfd and clears masks: the state after the last user
    /// closed the device.
    pub fn clear(&self) {
        for s in self.lock().iter_mut() {
            for v in &mut s.vectors {
                *v = Vector::default();
            }
        }
    }
}

fn fire(v: &mut Vector, flags: IrqFlags) -> Result<bool> {
    if v.masked {
        v.pending = true;
        return Ok(false);
    }
    let Some(fd) = &v.eventfd else {
        return Ok(false);
    };
    signal_eventfd(fd)?;
    if flags.contains(IrqFlags::AUTOMASKED) {
        v.masked = true;
    }
    Ok(true)
}

/// Creates a non-blocking, close-on-exec eventfd (what a user binds with
/// SET_IRQS).
pub fn eventfd() -> Result<OwnedFd> {
    rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )
}

/// Reads and resets an eventfd's counter; `Ok(0)` when it was not signalled.
pub fn read_eventfd(fd: impl AsFd) -> Result<u64> {
    let mut buf = [0u8; 8];
    match rustix::io::read(fd, &mut buf) {
        Ok(8) => Ok(u64::from_ne_bytes(buf)),
        Ok(_) => Err(Errno::IO),
        Err(Errno::AGAIN) => Ok(0),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines() -> IrqLines {
        IrqLines::new(&[
            IrqIndexConfig {
                info: IrqInfo {
                    index: 0,
                    flags: IrqFlags::EVENTFD | IrqFlags::MASKABLE | IrqFlags::AUTOMASKED,
                    count: 1,
                },
                exclusive: true,
            },
            IrqIndexConfig {
                info: IrqInfo {
                    index: 1,
                    flags: IrqFlags::EVENTFD | IrqFlags::NORESIZE,
                    count: 4,
                },
                exclusive: true,
            },
        ])
    }

    fn bind(l: &IrqLines, index: u32, start: u32, n: u32) -> Vec<OwnedFd> {
        let (req, mine) = SetIrqs::bind_new_eventfds(index, start, n).unwrap();
        l.set_irqs(req).unwrap();
        mine
    }

    #[test]
    fn trigger_bound_eventfd_signals_it() {
        let l = lines();
        let fds = bind(&l, 1, 0, 4);
        assert!(l.trigger(1, 2).unwrap());
        assert_eq!(read_eventfd(&fds[2]).unwrap(), 1);
        assert_eq!(read_eventfd(&fds[1]).unwrap(), 0);
    }

    #[test]
    fn automasked_index_fires_once_until_unmasked() {
        let l = lines();
        let fds = bind(&l, 0, 0, 1);
        assert!(l.trigger(0, 0).unwrap());
        assert!(!l.trigger(0, 0).unwrap());
        assert_eq!(read_eventfd(&fds[0]).unwrap(), 1);
        l.set_irqs(SetIrqs {
            index: 0,
            start: 0,
            count: 1,
            action: IrqAction::Unmask,
            data: IrqData::None,
        })
        .unwrap();
        // The trigger that arrived while masked was pending: unmask delivers it.
        assert_eq!(read_eventfd(&fds[0]).unwrap(), 1);
    }

    #[test]
    fn cleared_pending_trigger_is_not_delivered_on_unmask() {
        let l = lines();
        let fds = bind(&l, 0, 0, 1);
        assert!(l.trigger(0, 0).unwrap());
        assert!(!l.trigger(0, 0).unwrap());
        assert!(l.pending(0, 0));
        l.clear_pending(0, 0);
        assert_eq!(read_eventfd(&fds[0]).unwrap(), 1);
        l.set_irqs(SetIrqs {
            index: 0,
            start: 0,
            count: 1,
            action: IrqAction::Unmask,
            data: IrqData::None,
        })
        .unwrap();
        assert_eq!(read_eventfd(&fds[0]).unwrap(), 0);
    }

    #[test]
    fn exclusive_indexes_cannot_both_be_enabled() {
        let l = lines();
        let _fds = bind(&l, 0, 0, 1);
        let err = l
            .set_irqs(SetIrqs {
                index: 1,
                start: 0,
                count: 1,
                action: IrqAction::Trigger,
                data: IrqData::Eventfd(vec![Some(eventfd().unwrap())]),
            })
            .unwrap_err();
        assert_eq!(err, Errno::INVAL);
    }

    #[test]
    fn disable_with_count_zero_drops_eventfds() {
        let l = lines();
        let _fds = bind(&l, 1, 0, 4);
        l.set_irqs(SetIrqs {
            index: 1,
            start: 0,
            count: 0,
            action: IrqAction::Trigger,
            data: IrqData::None,
        })
        .unwrap();
        assert!(!l.enabled(1));
        assert!(!l.trigger(1, 0).unwrap());
    }

    #[test]
    fn out_of_range_vectors_are_einval() {
        let l = lines();
        let r = l.set_irqs(SetIrqs {
            index: 1,
            start: 3,
            count: 2,
            action: IrqAction::Trigger,
            data: IrqData::None,
        });
        assert_eq!(r.unwrap_err(), Errno::INVAL);
        let r = l.set_irqs(SetIrqs {
            index: 1,
            start: u32::MAX,
            count: 2,
            action: IrqAction::Trigger,
            data: IrqData::None,
        });
        assert_eq!(r.unwrap_err(), Errno::INVAL);
        assert_eq!(l.info(7).unwrap_err(), Errno::INVAL);
    }

    #[test]
    fn mask_on_unmaskable_index_is_einval_and_bool_length_checked() {
        let l = lines();
        let r = l.set_irqs(SetIrqs {
            index: 1,
            start: 0,
            count: 1,
            action: IrqAction::Mask,
            data: IrqData::None,
        });
        assert_eq!(r.unwrap_err(), Errno::INVAL);
        let r = l.set_irqs(SetIrqs {
            index: 1,
            start: 0,
            count: 2,
            action: IrqAction::Trigger,
            data: IrqData::Bool(vec![true]),
        });
        assert_eq!(r.unwrap_err(), Errno::INVAL);
    }

    #[test]
    fn loopback_trigger_with_bool_fires_selected_vectors() {
        let l = lines();
        let fds = bind(&l, 1, 0, 4);
        l.set_irqs(SetIrqs {
            index: 1,
            start: 1,
            count: 2,
            action: IrqAction::Trigger,
            data: IrqData::Bool(vec![false, true]),
        })
        .unwrap();
        assert_eq!(read_eventfd(&fds[1]).unwrap(), 0);
        assert_eq!(read_eventfd(&fds[2]).unwrap(), 1);
    }
}
