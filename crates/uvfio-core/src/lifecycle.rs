//! The device lifecycle: init → register → (open/release)* → unregister.
//!
//! Read top to bottom, this is `vfio_main.c` in Rust:
//! - [`UnregisteredDevice`] is what `Registry::init` returns. The driver
//!   finishes its setup through `driver_mut`; there is no way to open it, so
//!   no op can run early (the typestate replaces the kernel's "register
//!   last" rule of thumb).
//! - [`UnregisteredDevice::register`] reads the device's fixed layout, then
//!   publishes it. From the moment it returns, any thread may open it.
//! - Opens count on the device's [`Lifecycle`]: the 0→1 edge calls
//!   `open_device`, the 1→0 edge `close_device`, both under the lifecycle
//!   lock, so edges never interleave.
//! - [`RegisteredDevice::unregister`] unlinks first (new opens fail with
//!   ENODEV), then waits for the open count to reach 0, calling `request`
//!   with 0, 1, 2, … at an interval, and finally hands back the driver's data.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::dma::Dma;
use crate::errno::{Errno, Result};
use crate::group::{GroupId, GroupOpen};
use crate::irq::{IrqInfo, SetIrqs};
use crate::migration::{self, MigFlags, MigState, MigrationOps};
use crate::ops::{CloseReason, DeviceFlags, DeviceInfo, DeviceOps, OpenContext, MAX_REGIONS};
use crate::region::{RegionFlags, RegionInfo};
use crate::registry::{Registry, RegistryEvent};

/// Called with the request count when unregister asks a user to let go.
pub type RequestHook = Arc<dyn Fn(u32) + Send + Sync>;

/// Who is opening a device, for [`crate::Group::get_device_with`].
#[derive(Clone, Default)]
pub struct OpenOptions {
    /// A label reported by unregister while this user holds the device.
    pub label: String,
    /// Called (outside any lock) each time unregister calls `request`.
    pub on_request: Option<RequestHook>,
    /// If this user is the last to close, the driver hears
    /// [`CloseReason::Disconnected`] (keep device state for a reconnect,
    /// as the vfio-user spec wants) instead of [`CloseReason::Released`].
    pub keep_state: bool,
}

impl std::fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("label", &self.label)
            .field("on_request", &self.on_request.is_some())
            .field("keep_state", &self.keep_state)
            .finish()
    }
}

struct User {
    id: u64,
    label: String,
    on_request: Option<RequestHook>,
    keep_state: bool,
}

struct LifeState {
    registered: bool,
    open_count: u32,
    users: Vec<User>,
    next_user: u64,
}

/// The registration state and open count of one device, with the condition
/// variable unregister waits on. Kept in its own allocation so that a
/// releasing handle can drop its reference to the device while it still
/// holds this lock (see `DeviceHandle::drop`).
pub(crate) struct Lifecycle {
    state: Mutex<LifeState>,
    cv: Condvar,
}

impl Lifecycle {
    fn lock(&self) -> MutexGuard<'_, LifeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn snapshot(&self) -> (u32, Vec<String>) {
        let st = self.lock();
        (
            st.open_count,
            st.users.iter().map(|u| u.label.clone()).collect(),
        )
    }
}

/// Size and flags of a region, read once at register; every access is
/// checked against it before the driver sees it.
#[derive(Debug, Clone, Copy)]
struct RegionLayout {
    size: u64,
    flags: RegionFlags,
}

/// A device as the core holds it: the embedded `vfio_device` (name, group,
/// layout, lifecycle) followed by the driver's own data.
pub(crate) struct DeviceShared<D: ?Sized> {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) group: GroupId,
    info: DeviceInfo,
    layout: Vec<RegionLayout>,
    pub(crate) life: Arc<Lifecycle>,
    /// Migration state; serialises transitions and data access.
    mig: Mutex<MigState>,
    pub(crate) driver: D,
}

/// A device with its driver type erased, as the registry stores it.
pub(crate) type SharedDyn = Arc<DeviceShared<dyn DeviceOps>>;

/// Removes the device from its group if it is dropped before register
/// ("uninit"), so the group becomes viable again.
struct Membership {
    registry: Registry,
    id: u64,
    group: GroupId,
    armed: bool,
}

impl Drop for Membership {
    fn drop(&mut self) {
        if self.armed {
            let mut st = self.registry.lock();
            if let Some(g) = st.groups.get_mut(&self.group) {
                g.members.remove(&self.id);
            }
            st.gc_group(self.group);
        }
    }
}

/// A device between init and register: the driver may still change it;
/// nobody else can reach it.
pub struct UnregisteredDevice<D> {
    membership: Membership,
    name: String,
    driver: D,
}

impl<D> std::fmt::Debug for UnregisteredDevice<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnregisteredDevice")
            .field("name", &self.name)
            .field("group", &self.membership.group)
            .finish_non_exhaustive()
    }
}

/// Register failed: the errno and the device, handed back to the driver.
pub struct RegisterError<D> {
    /// EEXIST for a duplicate name; EINVAL for a bad layout.
    pub errno: Errno,
    /// The device, still unregistered.
    pub device: UnregisteredDevice<D>,
}

impl<D> std::fmt::Display for RegisterError<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "register {:?} failed: {}", self.device.name, self.errno)
    }
}

impl<D> std::fmt::Debug for RegisterError<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterError")
            .field("errno", &self.errno)
            .field("device", &self.device)
            .finish()
    }
}

impl<D> std::error::Error for RegisterError<D> {}

impl<D: DeviceOps> UnregisteredDevice<D> {
    pub(crate) fn new(
        registry: Registry,
        id: u64,
        name: String,
        group: GroupId,
        driver: D,
    ) -> Self {
        UnregisteredDevice {
            membership: Membership {
                registry,
                id,
                group,
                armed: true,
            },
            name,
            driver,
        }
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The group the device was init'ed into.
    pub fn group(&self) -> GroupId {
        self.membership.group
    }

    /// The driver's data, to finish setup.
    pub fn driver_mut(&mut self) -> &mut D {
        &mut self.driver
    }

    /// The driver's data.
    pub fn driver(&self) -> &D {
        &self.driver
    }

    /// Gives the driver its data back without registering (uninit).
    pub fn into_driver(self) -> D {
        self.driver
    }

    /// **register**: publishes the device. Call it last: from the moment it
    /// returns, other threads may open the device and call its ops.
    ///
    /// Fails with EEXIST if a device of that name is registered, or EINVAL
    /// if the driver's info is out of bounds; either way the device comes
    /// back in the error.
    pub fn register(self) -> std::result::Result<RegisteredDevice<D>, RegisterError<D>> {
        let info = self.driver.info();
        let layout = match read_layout(&self.driver, info) {
            Ok(l) => l,
            Err(errno) => {
                return Err(RegisterError {
                    errno,
                    device: self,
                })
            }
        };
        let UnregisteredDevice {
            mut membership,
            name,
            driver,
        } = self;
        let shared = Arc::new(DeviceShared {
            id: membership.id,
            name,
            group: membership.group,
            info,
            layout,
            life: Arc::new(Lifecycle {
                state: Mutex::new(LifeState {
                    // Refcounting starts here, before the device is visible.
                    registered: true,
                    open_count: 0,
                    users: Vec::new(),
                    next_user: 1,
                }),
                cv: Condvar::new(),
            }),
            mig: Mutex::new(MigState::Running),
            driver,
        });
        let registry = membership.registry.clone();
        if let Err(errno) = registry.insert(&shared) {
            // Nobody else saw it: we hold the only reference.
            let Ok(shared) = Arc::try_unwrap(shared) else {
                unreachable!("an unpublished device has one owner")
            };
            let device = UnregisteredDevice {
                membership,
                name: shared.name,
                driver: shared.driver,
            };
            return Err(RegisterError { errno, device });
        }
        // Balanced by Registry::remove in unregister.
        membership.armed = false;
        registry.emit(&RegistryEvent::Registered {
            name: shared.name.clone(),
            group: shared.group,
        });
        Ok(RegisteredDevice { registry, shared })
    }
}

fn read_layout<D: DeviceOps>(driver: &D, info: DeviceInfo) -> Result<Vec<RegionLayout>> {
    if info.num_regions > MAX_REGIONS || info.num_irqs > MAX_REGIONS {
        return Err(Errno::INVAL);
    }
    (0..info.num_regions)
        .map(|i| {
            let r = driver.region_info(i)?;
            Ok(RegionLayout {
                size: r.size,
                flags: r.flags,
            })
        })
        .collect()
}

/// A registered device, owned by the bus driver that registered it. Dropping
/// it without unregistering would leak the registration, so the only way to
/// end it is [`RegisteredDevice::unregister`] (which gives the data back).
#[must_use = "a registered device must be unregistered to get its data back"]
pub struct RegisteredDevice<D: DeviceOps> {
    registry: Registry,
    shared: Arc<DeviceShared<D>>,
}

impl<D: DeviceOps> std::fmt::Debug for RegisteredDevice<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredDevice")
            .field("name", &self.shared.name)
            .finish()
    }
}

/// How unregister waits for users.
#[derive(Debug, Clone, Default)]
pub struct UnregisterOptions {
    /// Interval between `request` calls; `None` uses the registry's.
    pub request_interval: Option<Duration>,
    /// Give up after this long (the device stays unlinked; call
    /// [`Unregistering::wait`] again to go on waiting).
    pub timeout: Option<Duration>,
    /// Give up when this is cancelled.
    pub cancel: Option<CancelToken>,
}

/// A flag another thread can raise to stop an unregister wait.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A fresh token.
    pub fn new() -> Self {
        Self::default()
    }
    /// Raises the flag.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether the flag is raised.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// How often a wait with a cancel token looks at the token.
const CANCEL_POLL: Duration = Duration::from_millis(10);

impl<D: DeviceOps> RegisteredDevice<D> {
    /// The driver's data (the bus driver keeps using it, e.g. to poke inputs).
    pub fn driver(&self) -> &D {
        &self.shared.driver
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The device's group.
    pub fn group(&self) -> GroupId {
        self.shared.group
    }

    /// Open handles right now.
    pub fn open_count(&self) -> u32 {
        self.shared.life.lock().open_count
    }

    /// **unregister**, waiting as long as it takes (like the kernel, which
    /// never gives up), then returns the driver's data.
    pub fn unregister(self) -> D {
        let mut pending = self.begin_unregister();
        loop {
            match pending.wait(&UnregisterOptions::default()) {
                Ok(d) => return d,
                Err(p) => pending = p,
            }
        }
    }

    /// **unregister** with a timeout and/or cancel token. On `Err` the
    /// device is unlinked but still held by the users it names.
    pub fn unregister_with(
        self,
        opts: &UnregisterOptions,
    ) -> std::result::Result<D, Unregistering<D>> {
        self.begin_unregister().wait(opts)
    }

    /// Unlinks the device (new opens fail with ENODEV) without waiting yet.
    pub fn begin_unregister(self) -> Unregistering<D> {
        let RegisteredDevice { registry, shared } = self;
        // Balances Registry::insert in register(). First, so that no new
        // open can find the device (the 2023 kernel fix).
        registry.remove(&shared.name, shared.id, shared.group);
        // An open that found the device just before the unlink sees this
        // under the lifecycle lock and fails with ENODEV.
        shared.life.lock().registered = false;
        registry.emit(&RegistryEvent::Unregistering {
            name: shared.name.clone(),
        });
        Unregistering {
            interval: registry.config().request_interval,
            shared,
            requests: 0,
            last_request: None,
        }
    }
}

/// A device on its way out: unlinked, waiting for its users to release it.
#[must_use = "an unregistering device must be waited for"]
pub struct Unregistering<D: DeviceOps> {
    shared: Arc<DeviceShared<D>>,
    interval: Duration,
    requests: u32,
    last_request: Option<Instant>,
}

impl<D: DeviceOps> std::fmt::Debug for Unregistering<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unregistering")
            .field("name", &self.shared.name)
            .field("requests", &self.requests)
            .field("holders", &self.holders())
            .finish()
    }
}

impl<D: DeviceOps> Unregistering<D> {
    /// Labels of the users still holding the device.
    pub fn holders(&self) -> Vec<String> {
        self.shared.life.snapshot().1
    }

    /// How many times `request` has been called.
    pub fn requests_sent(&self) -> u32 {
        self.requests
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Waits until every handle is released, calling `request(n)` at the
    /// interval; returns the driver's data, or `self` on timeout/cancel.
    pub fn wait(mut self, opts: &UnregisterOptions) -> std::result::Result<D, Self> {
        let interval = opts.request_interval.unwrap_or(self.interval);
        let deadline = opts.timeout.map(|t| Instant::now() + t);
        let life = self.shared.life.clone();
        let mut st = life.lock();
        loop {
            // Every handle drops its device reference before it decrements
            // the count, and failed openers drop theirs before notifying:
            // when both conditions hold, we are the only owner.
            if st.open_count == 0 && Arc::strong_count(&self.shared) == 1 {
                break;
            }
            let now = Instant::now();
            let due = self
                .last_request
                .is_none_or(|t| now.duration_since(t) >= interval);
            if due && st.open_count > 0 {
                let hooks: Vec<RequestHook> = st
                    .users
                    .iter()
                    .filter_map(|u| u.on_request.clone())
                    .collect();
                drop(st);
                let n = self.requests;
                if n == 0 {
                    tracing::info!(device = %self.shared.name, "device in use, requesting release");
                }
                // The driver's request and the users' hooks run without the
                // lifecycle lock: they may close handles synchronously.
                self.shared.driver.request(n);
                for h in hooks {
                    h(n);
                }
                self.requests = n.saturating_add(1);
                self.last_request = Some(Instant::now());
                st = life.lock();
                continue;
            }
            if opts.cancel.as_ref().is_some_and(CancelToken::is_cancelled)
                || deadline.is_some_and(|d| now >= d)
            {
                drop(st);
                return Err(self);
            }
            let mut wait = self
                .last_request
                .map_or(interval, |t| interval.saturating_sub(now.duration_since(t)));
            if let Some(d) = deadline {
                wait = wait.min(d.saturating_duration_since(now));
            }
            if opts.cancel.is_some() {
                wait = wait.min(CANCEL_POLL);
            }
            // A device reference held only by an opener that is about to
            // fail needs no request: poll briefly for it.
            if st.open_count == 0 {
                wait = wait.min(Duration::from_millis(1));
            }
            st = life
                .cv
                .wait_timeout(st, wait.max(Duration::from_micros(50)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(st);
        match Arc::try_unwrap(self.shared) {
            Ok(shared) => Ok(shared.driver),
            Err(_) => unreachable!("checked strong_count == 1 under the lifecycle lock"),
        }
    }
}

/// An open device: the in-process form of a VFIO device fd. Dropping it is
/// `release`; the last release calls `close_device`.
pub struct DeviceHandle {
    dev: Option<SharedDyn>,
    user: u64,
    dma: Dma,
    // Keeps the group (and its container attachment) alive like the device
    // fd holds the group file in the kernel.
    _group: Arc<GroupOpen>,
}

impl std::fmt::Debug for DeviceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceHandle")
            .field("name", &self.dev().name)
            .field("user", &self.user)
            .finish()
    }
}

impl DeviceHandle {
    /// Opens `dev` for a user: the 0→1 edge calls `open_device`.
    pub(crate) fn open(
        dev: SharedDyn,
        group: Arc<GroupOpen>,
        dma: Dma,
        opts: OpenOptions,
    ) -> Result<DeviceHandle> {
        let life = dev.life.clone();
        let mut st = life.lock();
        if !st.registered {
            drop(dev);
            life.cv.notify_all();
            return Err(Errno::NODEV);
        }
        if st.open_count == 0 {
            *dev.mig.lock().unwrap_or_else(|e| e.into_inner()) = MigState::Running;
            if let Err(e) = dev.driver.open_device(&OpenContext { dma: dma.clone() }) {
                drop(dev);
                life.cv.notify_all();
                return Err(e);
            }
        }
        st.open_count += 1;
        let user = st.next_user;
        st.next_user += 1;
        st.users.push(User {
            id: user,
            label: opts.label,
            on_request: opts.on_request,
            keep_state: opts.keep_state,
        });
        drop(st);
        Ok(DeviceHandle {
            dev: Some(dev),
            user,
            dma,
            _group: group,
        })
    }

    fn dev(&self) -> &DeviceShared<dyn DeviceOps> {
        self.dev.as_deref().expect("present until drop")
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.dev().name
    }

    /// The device's DMA space (its container's).
    pub fn dma(&self) -> &Dma {
        &self.dma
    }

    /// `VFIO_DEVICE_GET_INFO`.
    pub fn info(&self) -> DeviceInfo {
        self.dev().info
    }

    /// `VFIO_DEVICE_GET_REGION_INFO`; EINVAL past the last region.
    pub fn region_info(&self, index: u32) -> Result<RegionInfo> {
        let d = self.dev();
        if index >= d.info.num_regions {
            return Err(Errno::INVAL);
        }
        let mut r = d.driver.region_info(index)?;
        r.index = index;
        Ok(r)
    }

    fn check_access(&self, index: u32, offset: u64, len: usize, need: RegionFlags) -> Result<()> {
        let d = self.dev();
        let l = d.layout.get(index as usize).ok_or(Errno::INVAL)?;
        if !l.flags.contains(need) {
            return Err(Errno::INVAL);
        }
        let end = offset.checked_add(len as u64).ok_or(Errno::INVAL)?;
        if end > l.size {
            return Err(Errno::INVAL);
        }
        Ok(())
    }

    /// Reads region `index` at `offset` (pread on the device fd). The range
    /// must lie within the region, which must be readable (EINVAL).
    pub fn read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_access(index, offset, buf.len(), RegionFlags::READ)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.dev().driver.read(index, offset, buf)
    }

    /// Writes region `index` at `offset` (pwrite on the device fd).
    pub fn write(&self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        self.check_access(index, offset, data.len(), RegionFlags::WRITE)?;
        if data.is_empty() {
            return Ok(());
        }
        self.dev().driver.write(index, offset, data)
    }

    /// `VFIO_DEVICE_GET_IRQ_INFO`; EINVAL past the last index.
    pub fn irq_info(&self, index: u32) -> Result<IrqInfo> {
        let d = self.dev();
        if index >= d.info.num_irqs {
            return Err(Errno::INVAL);
        }
        let mut i = d.driver.irq_info(index)?;
        i.index = index;
        Ok(i)
    }

    /// `VFIO_DEVICE_SET_IRQS`; EINVAL past the last index.
    pub fn set_irqs(&self, req: SetIrqs) -> Result<()> {
        let d = self.dev();
        if req.index >= d.info.num_irqs {
            return Err(Errno::INVAL);
        }
        d.driver.set_irqs(req)
    }

    /// `VFIO_DEVICE_RESET`; EINVAL if the device has no reset. A device
    /// that migrates lands in RUNNING (the only way out of ERROR).
    pub fn reset(&self) -> Result<()> {
        let d = self.dev();
        if !d.info.flags.contains(DeviceFlags::RESET) {
            return Err(Errno::INVAL);
        }
        let mut mig = d.mig.lock().unwrap_or_else(|e| e.into_inner());
        d.driver.reset()?;
        *mig = MigState::Running;
        Ok(())
    }

    fn mig_ops(&self) -> Result<&dyn MigrationOps> {
        self.dev().driver.migration().ok_or(Errno::NOTTY)
    }

    fn mig_lock(&self) -> MutexGuard<'_, MigState> {
        self.dev().mig.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `VFIO_DEVICE_FEATURE_MIGRATION` GET: ENOTTY without migration.
    pub fn migration_flags(&self) -> Result<MigFlags> {
        Ok(self.mig_ops()?.flags())
    }

    /// `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE` GET.
    pub fn mig_state(&self) -> Result<MigState> {
        self.mig_ops()?;
        Ok(*self.mig_lock())
    }

    /// `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE` SET: walks the kernel's path
    /// from the current state to `new`, one driver arc at a time. An
    /// impossible request is EINVAL with the state unchanged; a driver
    /// failure mid-way leaves the device in ERROR (reset recovers it).
    pub fn set_mig_state(&self, new: MigState) -> Result<MigState> {
        let ops = self.mig_ops()?;
        let mut cur = self.mig_lock();
        let path = migration::path(ops.flags(), *cur, new)?;
        for hop in path {
            if let Err(e) = ops.step(*cur, hop) {
                tracing::warn!(device = %self.name(), from = ?*cur, to = ?hop, "migration arc failed: {e}");
                *cur = MigState::Error;
                return Err(e);
            }
            *cur = hop;
        }
        Ok(*cur)
    }

    /// Reads the next bytes of the saving stream (PRE_COPY*, STOP_COPY
    /// only; EINVAL elsewhere). `Ok(0)` ends the stream in STOP_COPY.
    pub fn mig_read(&self, buf: &mut [u8]) -> Result<usize> {
        let ops = self.mig_ops()?;
        let cur = self.mig_lock();
        if !cur.is_saving() {
            return Err(Errno::INVAL);
        }
        let n = ops.save(buf)?;
        Ok(n.min(buf.len()))
    }

    /// Appends to the resuming stream (RESUMING only; EINVAL elsewhere).
    pub fn mig_write(&self, data: &[u8]) -> Result<()> {
        let ops = self.mig_ops()?;
        let cur = self.mig_lock();
        if *cur != MigState::Resuming {
            return Err(Errno::INVAL);
        }
        ops.load(data)
    }

    /// `VFIO_MIG_GET_PRECOPY_INFO`: EINVAL outside PRE_COPY*.
    pub fn precopy_info(&self) -> Result<(u64, u64)> {
        let ops = self.mig_ops()?;
        let cur = self.mig_lock();
        if !matches!(*cur, MigState::PreCopy | MigState::PreCopyP2p) {
            return Err(Errno::INVAL);
        }
        Ok(ops.precopy_info())
    }

    /// `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`.
    pub fn stop_copy_size(&self) -> Result<u64> {
        Ok(self.mig_ops()?.stop_copy_size())
    }
}

impl DeviceHandle {
    /// Releases this open now, as dropping the handle does, and reports
    /// what dropping cannot: `EIO` if this was the last open and the
    /// driver's `close_device` panicked (the device is released anyway, so
    /// unregister still returns). A caller that hands the device to the
    /// next user can then treat it as suspect, as the server does with its
    /// faulted devices.
    pub fn close(mut self) -> Result<()> {
        if self.release() {
            Err(Errno::IO)
        } else {
            Ok(())
        }
    }

    /// Drops this user's open; returns whether `close_device` panicked.
    fn release(&mut self) -> bool {
        let Some(dev) = self.dev.take() else {
            return false;
        };
        let life = dev.life.clone();
        let mut st = life.lock();
        let reason = match st.users.iter().find(|u| u.id == self.user) {
            Some(u) if u.keep_state => CloseReason::Disconnected,
            _ => CloseReason::Released,
        };
        st.users.retain(|u| u.id != self.user);
        let mut panicked = false;
        if st.open_count == 1 {
            // A panicking driver must not keep the device open for good:
            // the count still drops, so unregister can return.
            let released = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                dev.driver.close_device(reason);
                if let Some(irqs) = dev.driver.irqs() {
                    irqs.clear();
                }
            }));
            if released.is_err() {
                tracing::error!(device = %dev.name, "close_device panicked; released anyway");
                panicked = true;
            }
        }
        st.open_count -= 1;
        // Drop our reference before the waiter can observe count == 0.
        drop(dev);
        life.cv.notify_all();
        panicked
    }
}

impl Drop for DeviceHandle {
    fn drop(&mut self) {
        self.release();
    }
}
