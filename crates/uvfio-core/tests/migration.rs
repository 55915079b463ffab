//! Migration through the device handle: a save/resume round trip, an
//! invalid arc leaving the state unchanged, a failing arc → ERROR → reset.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use uvfio_core::*;

#[derive(Default)]
struct Counter {
    value: Mutex<Vec<u8>>,
    out: Mutex<(Vec<u8>, usize)>,
    incoming: Mutex<Vec<u8>>,
    fail_next: AtomicBool,
}

impl MigrationOps for Counter {
    fn flags(&self) -> MigFlags {
        MigFlags::STOP_COPY | MigFlags::PRE_COPY
    }
    fn step(&self, from: MigState, to: MigState) -> Result<()> {
        if self.fail_next.swap(false, Ordering::SeqCst) {
            return Err(Errno::IO);
        }
        match (from, to) {
            (_, MigState::StopCopy) | (_, MigState::PreCopy) => {
                *self.out.lock().unwrap() = (self.value.lock().unwrap().clone(), 0);
            }
            (MigState::Resuming, MigState::Stop) => {
                let data = std::mem::take(&mut *self.incoming.lock().unwrap());
                if data.is_empty() {
                    return Err(Errno::INVAL);
                }
                *self.value.lock().unwrap() = data;
            }
            _ => {}
        }
        Ok(())
    }
    fn save(&self, buf: &mut [u8]) -> Result<usize> {
        let mut out = self.out.lock().unwrap();
        let (data, pos) = &mut *out;
        let n = buf.len().min(data.len() - *pos);
        buf[..n].copy_from_slice(&data[*pos..*pos + n]);
        *pos += n;
        Ok(n)
    }
    fn load(&self, data: &[u8]) -> Result<()> {
        self.incoming.lock().unwrap().extend_from_slice(data);
        Ok(())
    }
}

impl DeviceOps for Counter {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: DeviceFlags::RESET,
            num_regions: 0,
            num_irqs: 0,
        }
    }
    fn reset(&self) -> Result<()> {
        Ok(())
    }
    fn migration(&self) -> Option<&dyn MigrationOps> {
        Some(self)
    }
}

#[test]
fn save_on_source_resume_on_destination_carries_state() {
    let reg = Registry::default();
    let src = reg.init(Counter::default(), "src", GroupId(1)).unwrap();
    *src.driver().value.lock().unwrap() = b"device state 42".to_vec();
    let src = src.register().unwrap();
    let dst = reg
        .init(Counter::default(), "dst", GroupId(2))
        .unwrap()
        .register()
        .unwrap();
    let s = reg.open_device(GroupId(1), "src").unwrap();
    let d = reg.open_device(GroupId(2), "dst").unwrap();

    assert_eq!(
        s.migration_flags().unwrap(),
        MigFlags::STOP_COPY | MigFlags::PRE_COPY
    );
    let mut buf = [0u8; 4];
    assert_eq!(s.mig_read(&mut buf).unwrap_err(), Errno::INVAL); // RUNNING
    assert_eq!(
        s.set_mig_state(MigState::StopCopy).unwrap(),
        MigState::StopCopy
    );
    assert_eq!(
        d.set_mig_state(MigState::Resuming).unwrap(),
        MigState::Resuming
    );
    loop {
        let n = s.mig_read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        d.mig_write(&buf[..n]).unwrap();
    }
    assert_eq!(
        d.set_mig_state(MigState::Running).unwrap(),
        MigState::Running
    );
    drop((s, d));
    src.unregister();
    let out = dst.unregister();
    assert_eq!(*out.value.lock().unwrap(), b"device state 42");
}

#[test]
fn invalid_request_keeps_state_and_failed_arc_goes_to_error_until_reset() {
    let reg = Registry::default();
    let dev = reg
        .init(Counter::default(), "m", GroupId(3))
        .unwrap()
        .register()
        .unwrap();
    let h = reg.open_device(GroupId(3), "m").unwrap();
    h.set_mig_state(MigState::StopCopy).unwrap();
    assert_eq!(
        h.set_mig_state(MigState::PreCopy).unwrap_err(),
        Errno::INVAL
    );
    assert_eq!(h.mig_state().unwrap(), MigState::StopCopy);
    assert_eq!(
        h.set_mig_state(MigState::RunningP2p).unwrap_err(),
        Errno::INVAL
    );
    assert_eq!(h.set_mig_state(MigState::Error).unwrap_err(), Errno::INVAL);
    assert_eq!(h.mig_write(b"x").unwrap_err(), Errno::INVAL);

    dev.driver().fail_next.store(true, Ordering::SeqCst);
    assert_eq!(h.set_mig_state(MigState::Running).unwrap_err(), Errno::IO);
    assert_eq!(h.mig_state().unwrap(), MigState::Error);
    assert_eq!(
        h.set_mig_state(MigState::Running).unwrap_err(),
        Errno::INVAL
    );
    h.reset().unwrap();
    assert_eq!(h.mig_state().unwrap(), MigState::Running);
    drop(h);
    dev.unregister();
}
