//! The registry: which devices are registered, and the group membership
//! that decides viability. One per "system": tests make their own.
//!
//! Lock order: registry state → container state → device lifecycle. No
//! driver op is ever called with the registry lock held.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use crate::container::ContainerInner;
use crate::group::GroupId;
use crate::lifecycle::{DeviceShared, SharedDyn, UnregisteredDevice};
use crate::ops::DeviceOps;

/// Something that happened to the registry, for observers such as the
/// vfio-user server (which listens on a socket per registered device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryEvent {
    /// A device was registered and can be opened.
    Registered {
        /// Device name.
        name: String,
        /// Its group.
        group: GroupId,
    },
    /// Unregister started: the device can no longer be opened.
    Unregistering {
        /// Device name.
        name: String,
    },
}

/// A callback run on every [`RegistryEvent`], synchronously, in the thread
/// that registers or unregisters, with no lock held.
pub type Listener = Arc<dyn Fn(&RegistryEvent) + Send + Sync>;

/// Registry-wide settings.
#[derive(Debug, Clone, Copy)]
pub struct RegistryConfig {
    /// Default interval between `request` calls while unregister waits
    /// (the kernel's is 10 s).
    pub request_interval: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            request_interval: Duration::from_secs(10),
        }
    }
}

/// One registered device as seen by [`Registry::devices`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSummary {
    /// Name.
    pub name: String,
    /// Group.
    pub group: GroupId,
    /// Open handles.
    pub open_count: u32,
    /// Labels of the users holding it open.
    pub holders: Vec<String>,
}

#[derive(Debug, Default)]
pub(crate) struct GroupState {
    /// Devices init'ed into the group, by device id: registered or not.
    pub(crate) members: HashMap<u64, bool>,
    /// A `Group` handle exists (group "fds" open once).
    pub(crate) open: bool,
    pub(crate) container: Option<Arc<ContainerInner>>,
}

impl GroupState {
    pub(crate) fn viable(&self) -> bool {
        self.members.values().all(|registered| *registered)
    }
}

#[derive(Default)]
pub(crate) struct RegState {
    pub(crate) devices: HashMap<String, SharedDyn>,
    pub(crate) groups: HashMap<GroupId, GroupState>,
}

impl RegState {
    /// Drops a group entry nobody uses any more.
    pub(crate) fn gc_group(&mut self, id: GroupId) {
        if let Some(g) = self.groups.get(&id) {
            if g.members.is_empty() && !g.open {
                self.groups.remove(&id);
            }
        }
    }
}

pub(crate) struct RegistryInner {
    state: Mutex<RegState>,
    listeners: RwLock<Vec<Listener>>,
    pub(crate) config: RegistryConfig,
    next_id: AtomicU64,
}

/// The set of registered devices and their groups. Cloning gives another
/// handle on the same registry.
#[derive(Clone)]
pub struct Registry {
    pub(crate) inner: Arc<RegistryInner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("devices", &self.lock().devices.len())
            .finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(RegistryConfig::default())
    }
}

/// Longest device name accepted (it becomes a socket file name).
pub const MAX_NAME_LEN: usize = 200;

impl Registry {
    /// An empty registry.
    pub fn new(config: RegistryConfig) -> Self {
        Registry {
            inner: Arc::new(RegistryInner {
                state: Mutex::new(RegState::default()),
                listeners: RwLock::new(Vec::new()),
                config,
                next_id: AtomicU64::new(1),
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, RegState> {
        // Every critical section leaves the state consistent before any
        // call that could panic, so a poisoned lock is still sound.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The settings.
    pub fn config(&self) -> RegistryConfig {
        self.inner.config
    }

    /// Runs `listener` on every future event.
    pub fn add_listener(&self, listener: Listener) {
        self.inner
            .listeners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(listener);
    }

    pub(crate) fn emit(&self, ev: &RegistryEvent) {
        let ls = self
            .inner
            .listeners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for l in ls {
            l(ev);
        }
    }

    /// **init**: makes an unregistered device from the driver's data, its
    /// name and its IOMMU group. The group counts the device at once, and is
    /// not viable until the device is registered (or dropped).
    ///
    /// Nothing outside can reach the driver's ops until
    /// [`UnregisteredDevice::register`]: there is no way to open an
    /// unregistered device.
    ///
    /// ```compile_fail
    /// # use uvfio_core::*;
    /// # struct D; impl DeviceOps for D { fn info(&self) -> DeviceInfo { DeviceInfo::default() } }
    /// let reg = Registry::default();
    /// let dev = reg.init(D, "d0", GroupId(1)).unwrap();
    /// let mut buf = [0u8; 4];
    /// dev.read(0, 0, &mut buf); // no such method: ops are unreachable before register
    /// ```
    pub fn init<D: DeviceOps>(
        &self,
        driver: D,
        name: &str,
        group: GroupId,
    ) -> crate::Result<UnregisteredDevice<D>> {
        if name.is_empty()
            || name.len() > MAX_NAME_LEN
            || name.starts_with('.')
            || name.contains(['/', '\0'])
        {
            return Err(crate::Errno::INVAL);
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .groups
            .entry(group)
            .or_default()
            .members
            .insert(id, false);
        Ok(UnregisteredDevice::new(
            self.clone(),
            id,
            name.to_owned(),
            group,
            driver,
        ))
    }

    /// The registered devices, sorted by name.
    pub fn devices(&self) -> Vec<DeviceSummary> {
        let devs: Vec<SharedDyn> = self.lock().devices.values().cloned().collect();
        let mut out: Vec<DeviceSummary> = devs
            .iter()
            .map(|d| {
                let (open_count, holders) = d.life.snapshot();
                DeviceSummary {
                    name: d.name.clone(),
                    group: d.group,
                    open_count,
                    holders,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The group of a registered device.
    pub fn group_of(&self, name: &str) -> Option<GroupId> {
        self.lock().devices.get(name).map(|d| d.group)
    }

    /// Whether a group is viable: every device init'ed into it is
    /// registered. A group with no devices does not exist (None).
    pub fn group_viable(&self, group: GroupId) -> Option<bool> {
        self.lock()
            .groups
            .get(&group)
            .filter(|g| !g.members.is_empty())
            .map(GroupState::viable)
    }

    pub(crate) fn insert<D: DeviceOps>(&self, shared: &Arc<DeviceShared<D>>) -> crate::Result<()> {
        let mut st = self.lock();
        if st.devices.contains_key(&shared.name) {
            return Err(crate::Errno::EXIST);
        }
        let erased: SharedDyn = shared.clone();
        st.devices.insert(shared.name.clone(), erased);
        if let Some(m) = st
            .groups
            .get_mut(&shared.group)
            .and_then(|g| g.members.get_mut(&shared.id))
        {
            *m = true;
        }
        Ok(())
    }

    /// Balances `insert`: unlinks the device so that no new open can find
    /// it, and takes it out of its group.
    pub(crate) fn remove(&self, name: &str, id: u64, group: GroupId) {
        let mut st = self.lock();
        if st.devices.get(name).is_some_and(|d| d.id == id) {
            st.devices.remove(name);
        }
        if let Some(g) = st.groups.get_mut(&group) {
            g.members.remove(&id);
        }
        st.gc_group(group);
    }
}
