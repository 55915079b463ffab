//! Groups: the unit of isolation (`/dev/vfio/$GROUP`). A group is viable
//! only while every device init'ed into it is registered; only a viable
//! group can be attached to a container or have its devices opened.

use std::sync::Arc;

use crate::container::Container;
use crate::errno::{Errno, Result};
use crate::lifecycle::{DeviceHandle, OpenOptions};
use crate::registry::Registry;

/// An IOMMU group number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub u32);

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// `VFIO_GROUP_GET_STATUS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupStatus {
    /// `VFIO_GROUP_FLAGS_VIABLE`.
    pub viable: bool,
    /// `VFIO_GROUP_FLAGS_CONTAINER_SET`.
    pub container_set: bool,
}

/// The open group "file": shared by the [`Group`] and every device handle
/// opened through it. When the last one goes, the group is detached from
/// its container and can be opened again.
pub(crate) struct GroupOpen {
    registry: Registry,
    id: GroupId,
}

impl Drop for GroupOpen {
    fn drop(&mut self) {
        let container = {
            let mut st = self.registry.lock();
            let c = st.groups.get_mut(&self.id).and_then(|g| {
                g.open = false;
                g.container.take()
            });
            st.gc_group(self.id);
            c
        };
        if let Some(c) = container {
            c.detach_group(self.id);
        }
    }
}

/// An open group. Only one may exist per group id at a time (EBUSY).
pub struct Group {
    open: Arc<GroupOpen>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group").field("id", &self.open.id).finish()
    }
}

impl Registry {
    /// Opens group `id`: ENOENT if no device is in it, EBUSY if it is
    /// already open (the group file can be opened once).
    pub fn open_group(&self, id: GroupId) -> Result<Group> {
        let mut st = self.lock();
        let g = st
            .groups
            .get_mut(&id)
            .filter(|g| !g.members.is_empty())
            .ok_or(Errno::NOENT)?;
        if g.open {
            return Err(Errno::BUSY);
        }
        g.open = true;
        Ok(Group {
            open: Arc::new(GroupOpen {
                registry: self.clone(),
                id,
            }),
        })
    }
}

impl Group {
    /// The group number.
    pub fn id(&self) -> GroupId {
        self.open.id
    }

    /// `VFIO_GROUP_GET_STATUS`.
    pub fn status(&self) -> GroupStatus {
        let st = self.open.registry.lock();
        let g = st.groups.get(&self.open.id);
        GroupStatus {
            viable: g.is_some_and(|g| g.viable()),
            container_set: g.is_some_and(|g| g.container.is_some()),
        }
    }

    /// `VFIO_GROUP_SET_CONTAINER`: EINVAL if already set, EPERM if the group
    /// is not viable.
    pub fn set_container(&self, container: &Container) -> Result<()> {
        let mut st = self.open.registry.lock();
        let g = st.groups.get_mut(&self.open.id).ok_or(Errno::NODEV)?;
        if g.container.is_some() {
            return Err(Errno::INVAL);
        }
        if !g.viable() {
            return Err(Errno::PERM);
        }
        let mut cs = container.inner.lock();
        cs.groups.push(self.open.id);
        drop(cs);
        g.container = Some(container.inner.clone());
        Ok(())
    }

    /// `VFIO_GROUP_UNSET_CONTAINER`: EINVAL if not set, EBUSY while device
    /// handles are open.
    pub fn unset_container(&self) -> Result<()> {
        let c = {
            let mut st = self.open.registry.lock();
            let g = st.groups.get_mut(&self.open.id).ok_or(Errno::NODEV)?;
            if g.container.is_none() {
                return Err(Errno::INVAL);
            }
            // Device handles hold the group open (see GroupOpen).
            if Arc::strong_count(&self.open) > 1 {
                return Err(Errno::BUSY);
            }
            g.container.take()
        };
        if let Some(c) = c {
            c.detach_group(self.open.id);
        }
        Ok(())
    }

    /// `VFIO_GROUP_GET_DEVICE_FD` with an anonymous user.
    pub fn get_device(&self, name: &str) -> Result<DeviceHandle> {
        self.get_device_with(name, OpenOptions::default())
    }

    /// `VFIO_GROUP_GET_DEVICE_FD`: EINVAL without a container whose IOMMU
    /// is set, EPERM if the group is not viable, ENODEV if no registered
    /// device of the group has that name. The first open calls the driver's
    /// `open_device`.
    pub fn get_device_with(&self, name: &str, opts: OpenOptions) -> Result<DeviceHandle> {
        let (dev, dma) = {
            let st = self.open.registry.lock();
            let g = st.groups.get(&self.open.id).ok_or(Errno::NODEV)?;
            let c = g.container.as_ref().ok_or(Errno::INVAL)?;
            if !c.iommu_set() {
                return Err(Errno::INVAL);
            }
            if !g.viable() {
                return Err(Errno::PERM);
            }
            let dev = st
                .devices
                .get(name)
                .filter(|d| d.group == self.open.id)
                .ok_or(Errno::NODEV)?
                .clone();
            (dev, c.dma.handle())
        };
        DeviceHandle::open(dev, self.open.clone(), dma, opts)
    }
}
