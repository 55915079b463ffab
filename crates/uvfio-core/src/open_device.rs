//! One device with its own container and group, for in-process users that
//! want a device and nothing else: [`Registry::open_device`].

use crate::container::{Container, IommuType};
use crate::errno::Result;
use crate::group::{Group, GroupId};
use crate::lifecycle::DeviceHandle;
use crate::registry::Registry;

/// An open device together with the [`Group`] and [`Container`] opened for
/// it, from [`Registry::open_device`]. Dereferences to the
/// [`DeviceHandle`].
///
/// Dropping it tears down in the order a VFIO user closes its fds: the
/// device handle first (the last release runs the driver's
/// `close_device` while the group is still attached and the DMA space
/// still mapped, so a driver can finish DMA), then the group (it leaves the
/// container; the last group out releases the IOMMU backend, which unmaps
/// everything), then the container. The fields are declared in that order,
/// which is the order Rust drops them in. The handle also holds its group
/// open by itself, as a device fd holds its group file in the kernel, so
/// the group cannot detach under an open device whatever the order.
#[derive(Debug)]
pub struct OpenDevice {
    // Drop order: device, group, container (see the type's docs).
    device: DeviceHandle,
    group: Group,
    container: Container,
}

impl OpenDevice {
    /// The open device.
    pub fn device(&self) -> &DeviceHandle {
        &self.device
    }

    /// The group, attached to [`OpenDevice::container`].
    pub fn group(&self) -> &Group {
        &self.group
    }

    /// The container, whose IOMMU is set: map and unmap the device's DMA
    /// here ([`Container::map_dma`], [`Container::unmap_dma`]).
    pub fn container(&self) -> &Container {
        &self.container
    }

    /// The parts, for a caller that keeps them separately. The tuple's
    /// order is the drop order described on [`OpenDevice`].
    pub fn into_parts(self) -> (DeviceHandle, Group, Container) {
        (self.device, self.group, self.container)
    }
}

impl std::ops::Deref for OpenDevice {
    type Target = DeviceHandle;

    fn deref(&self) -> &DeviceHandle {
        &self.device
    }
}

impl Registry {
    /// Opens device `name` of group `group` the way a VFIO user does, in
    /// one call: a new [`Container`], [`Registry::open_group`],
    /// [`Group::set_container`], [`Container::set_iommu`] with
    /// [`IommuType::Type1v2`], then [`Group::get_device`] (an anonymous
    /// user). The result owns all three.
    ///
    /// Errors are those of the steps, from the first that fails: ENOENT for
    /// a group with no device and EBUSY for a group already open
    /// (`open_group`), EPERM for a group that is not viable
    /// (`set_container`), ENODEV for a name that is not a registered
    /// device of the group (`get_device`). On error nothing stays open.
    ///
    /// For more than one device of a group, a container with other limits
    /// ([`Container::with_config`]) or [`crate::OpenOptions`], take the
    /// steps one by one.
    ///
    /// ```
    /// use uvfio_core::*;
    ///
    /// struct Nop;
    /// impl DeviceOps for Nop {
    ///     fn info(&self) -> DeviceInfo {
    ///         DeviceInfo::default()
    ///     }
    /// }
    ///
    /// let registry = Registry::default();
    /// let dev = registry.init(Nop, "nop0", GroupId(3))?.register().map_err(|e| e.errno)?;
    ///
    /// let user = registry.open_device(GroupId(3), "nop0")?;
    /// assert_eq!(user.name(), "nop0"); // a DeviceHandle method, through Deref
    /// assert_eq!(user.container().iommu(), Some(IommuType::Type1v2));
    /// // The group is open: a second user of it gets EBUSY, as in the kernel.
    /// assert_eq!(registry.open_device(GroupId(3), "nop0").unwrap_err(), Errno::BUSY);
    ///
    /// drop(user); // releases device, group and container, in that order
    /// dev.unregister();
    /// # Ok::<(), Errno>(())
    /// ```
    pub fn open_device(&self, group: GroupId, name: &str) -> Result<OpenDevice> {
        let container = Container::new();
        let group = self.open_group(group)?;
        group.set_container(&container)?;
        container.set_iommu(IommuType::Type1v2)?;
        let device = group.get_device(name)?;
        Ok(OpenDevice {
            device,
            group,
            container,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::dma::DmaPerm;
    use crate::mmap::SharedMemory;
    use crate::{DeviceInfo, DeviceOps, Dma, Errno, OpenContext};

    struct Nop;
    impl DeviceOps for Nop {
        fn info(&self) -> DeviceInfo {
            DeviceInfo::default()
        }
    }

    fn registered(reg: &Registry, name: &str, group: u32) -> crate::RegisteredDevice<Nop> {
        reg.init(Nop, name, GroupId(group))
            .unwrap()
            .register()
            .unwrap()
    }

    #[test]
    fn unknown_group_is_the_same_errno_as_open_group() {
        let reg = Registry::default();
        let _d = registered(&reg, "a", 1);
        let want = reg.open_group(GroupId(2)).unwrap_err();
        assert_eq!(want, Errno::NOENT);
        assert_eq!(reg.open_device(GroupId(2), "a").unwrap_err(), want);
    }

    #[test]
    fn group_already_open_is_ebusy() {
        let reg = Registry::default();
        let _d = registered(&reg, "a", 1);
        let g = reg.open_group(GroupId(1)).unwrap();
        assert_eq!(reg.open_device(GroupId(1), "a").unwrap_err(), Errno::BUSY);
        drop(g);
        let user = reg.open_device(GroupId(1), "a").unwrap();
        assert_eq!(reg.open_device(GroupId(1), "a").unwrap_err(), Errno::BUSY);
        drop(user);
        reg.open_device(GroupId(1), "a").unwrap();
    }

    #[test]
    fn unknown_device_is_the_same_errno_as_get_device_and_closes_the_group() {
        let reg = Registry::default();
        let _a = registered(&reg, "a", 1);
        let _b = registered(&reg, "b", 2);
        let want = {
            let c = Container::new();
            let g = reg.open_group(GroupId(1)).unwrap();
            g.set_container(&c).unwrap();
            c.set_iommu(IommuType::Type1v2).unwrap();
            g.get_device("nope").unwrap_err()
        };
        assert_eq!(want, Errno::NODEV);
        assert_eq!(reg.open_device(GroupId(1), "nope").unwrap_err(), want);
        // A device of another group is not in this one.
        assert_eq!(reg.open_device(GroupId(1), "b").unwrap_err(), want);
        // Nothing was left open.
        let g = reg.open_group(GroupId(1)).unwrap();
        assert!(!g.status().container_set);
    }

    #[test]
    fn group_that_is_not_viable_is_eperm() {
        let reg = Registry::default();
        let _a = registered(&reg, "a", 1);
        let pending = reg.init(Nop, "b", GroupId(1)).unwrap();
        assert_eq!(reg.open_device(GroupId(1), "a").unwrap_err(), Errno::PERM);
        let _b = pending.register().unwrap();
        reg.open_device(GroupId(1), "a").unwrap();
    }

    #[test]
    fn accessors_reach_the_parts() {
        let reg = Registry::default();
        let _d = registered(&reg, "a", 4);
        let user = reg.open_device(GroupId(4), "a").unwrap();
        assert_eq!(user.device().name(), "a");
        assert_eq!(user.group().id(), GroupId(4));
        assert!(user.group().status().container_set);
        assert_eq!(user.container().groups(), [GroupId(4)]);
        let (device, group, container) = user.into_parts();
        assert_eq!(
            (device.name(), group.id(), container.iommu()),
            ("a", GroupId(4), Some(IommuType::Type1v2))
        );
    }

    /// Reads its DMA space's first byte in `close_device`.
    #[derive(Default)]
    struct ReadsOnClose {
        dma: Mutex<Option<Dma>>,
        closed: AtomicBool,
        read_on_close: Mutex<Option<Result<u8>>>,
    }

    impl DeviceOps for Arc<ReadsOnClose> {
        fn info(&self) -> DeviceInfo {
            DeviceInfo::default()
        }
        fn open_device(&self, ctx: &OpenContext) -> Result<()> {
            *self.dma.lock().unwrap() = Some(ctx.dma.clone());
            Ok(())
        }
        fn close_device(&self, _: crate::CloseReason) {
            let dma = self.dma.lock().unwrap().take().unwrap();
            let mut b = [0u8];
            let r = dma.read(0, &mut b).map(|()| b[0]);
            *self.read_on_close.lock().unwrap() = Some(r);
            self.closed.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn drop_closes_the_device_while_its_dma_is_still_mapped() {
        let reg = Registry::default();
        let state = Arc::new(ReadsOnClose::default());
        let dev = reg
            .init(state.clone(), "d", GroupId(1))
            .unwrap()
            .register()
            .unwrap();
        let user = reg.open_device(GroupId(1), "d").unwrap();
        let mem = Arc::new(SharedMemory::new("open-device-test", 4096).unwrap());
        mem.write_at(0, &[0x5a]).unwrap();
        user.container()
            .map_dma(0, 4096, DmaPerm::READ | DmaPerm::WRITE, mem, 0)
            .unwrap();
        let space = user.container().dma_space().clone();
        drop(user);
        assert!(state.closed.load(Ordering::SeqCst));
        assert_eq!(*state.read_on_close.lock().unwrap(), Some(Ok(0x5a)));
        // Then the group left and the container unmapped everything.
        assert!(space.is_empty());
        drop(reg.open_device(GroupId(1), "d").unwrap());
        dev.unregister();
    }
}
