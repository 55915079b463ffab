//! The engine through the in-process uAPI.

use std::sync::Arc;

use uvfio_core::irq::read_eventfd;
use uvfio_core::{DeviceFlags, DmaPerm, GroupId, RegionFlags, Registry, SharedMemory, SparseArea};
use uvfio_pci::index::*;
use uvfio_pci::regs::{
    Command, PCI_CAP_ID_MSIX, PCI_COMMAND, PCI_EXT_CAP_ID_DSN, PCI_MSIX_FLAGS,
    PCI_MSIX_FLAGS_ENABLE,
};
use uvfio_pci::walk_extended_capabilities;

use super::*;
use crate::testutil::User;

const IOVA: u64 = 0x10_0000;

struct Rig {
    _registry: Registry,
    dev: DmaDevice,
    user: User,
    mem: Arc<SharedMemory>,
}

fn rig() -> Rig {
    let registry = Registry::default();
    let dev = create(
        &registry,
        "dma0",
        GroupId(2),
        &DmaOptions {
            serial: 0x1122_3344_5566_7788,
            ..Default::default()
        },
    )
    .unwrap();
    let user = User::open(&registry, GroupId(2), "dma0");
    let mem = Arc::new(SharedMemory::new("guest", 4 * 4096).unwrap());
    user.container()
        .map_dma(
            IOVA,
            4 * 4096,
            DmaPerm::READ | DmaPerm::WRITE,
            mem.clone(),
            0,
        )
        .unwrap();
    Rig {
        _registry: registry,
        dev,
        user,
        mem,
    }
}

impl Rig {
    fn bus_master(&self) {
        let cmd = self.user.cfg_read16(u64::from(PCI_COMMAND));
        self.user
            .cfg_write16(u64::from(PCI_COMMAND), cmd | Command::MASTER.bits());
    }

    fn program(&self, src: u64, dst: u64, len: u32, flags: u32) {
        let u = &self.user;
        u.write32(0, DMA_REG_SRC_LO, src as u32);
        u.write32(0, DMA_REG_SRC_HI, (src >> 32) as u32);
        u.write32(0, DMA_REG_DST_LO, dst as u32);
        u.write32(0, DMA_REG_DST_HI, (dst >> 32) as u32);
        u.write32(0, DMA_REG_LEN, len);
        u.write32(0, DMA_REG_FLAGS, flags);
        u.write32(0, DMA_REG_DOORBELL, 1);
    }

    fn status(&self) -> (u32, u32) {
        (
            self.user.read32(0, DMA_REG_STATUS),
            self.user.read32(0, DMA_REG_ERROR),
        )
    }
}

#[test]
fn copy_between_iovas_copies_bytes_and_fires_msix() {
    let r = rig();
    let msix = r.user.bind(VFIO_PCI_MSIX_IRQ_INDEX, 1);
    r.bus_master();
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    r.mem.write_at(0, &pattern).unwrap();
    r.program(IOVA, IOVA + 0x2000, 4096, 0);
    let mut out = vec![0u8; 4096];
    r.mem.read_at(0x2000, &mut out).unwrap();
    assert_eq!(out, pattern);
    assert_eq!(read_eventfd(&msix[0]).unwrap(), 1);
    assert_eq!(r.status(), (DMA_STATUS_DONE, DMA_ERR_NONE));
    assert_eq!(r.user.read32(0, DMA_REG_COMPLETED), 1);
    r.user.write32(0, DMA_REG_STATUS, DMA_STATUS_DONE);
    assert_eq!(r.status().0, 0);
}

#[test]
fn copy_without_bus_master_fails_and_still_interrupts() {
    let r = rig();
    let msix = r.user.bind(VFIO_PCI_MSIX_IRQ_INDEX, 1);
    r.mem.write_at(0, b"data").unwrap();
    r.program(IOVA, IOVA + 0x1000, 4, 0);
    assert_eq!(r.status(), (DMA_STATUS_ERROR, DMA_ERR_BUS_MASTER));
    let mut b = [0u8; 4];
    r.mem.read_at(0x1000, &mut b).unwrap();
    assert_eq!(b, [0; 4]);
    assert_eq!(read_eventfd(&msix[0]).unwrap(), 1);
}

#[test]
fn copy_longer_than_max_is_length_error() {
    let r = rig();
    r.bus_master();
    r.program(IOVA, IOVA + 0x1000, DMA_MAX_LEN + 1, 0);
    assert_eq!(r.status(), (DMA_STATUS_ERROR, DMA_ERR_LEN));
    r.program(IOVA, IOVA + 0x1000, 0, 0);
    assert_eq!(r.status().1, DMA_ERR_LEN);
}

#[test]
fn copy_from_unmapped_iova_is_read_error() {
    let r = rig();
    r.bus_master();
    r.program(0x9000_0000, IOVA, 16, 0);
    assert_eq!(r.status(), (DMA_STATUS_ERROR, DMA_ERR_READ));
    r.program(IOVA, IOVA + 4 * 4096 - 8, 16, 0);
    assert_eq!(r.status().1, DMA_ERR_WRITE);
}

#[test]
fn ram_bar_is_mmappable_and_copies_to_host() {
    let r = rig();
    let info = r.user.handle.region_info(u32::from(DMA_RAM_BAR)).unwrap();
    assert!(info.flags.contains(RegionFlags::MMAP));
    assert_eq!(
        info.sparse_areas().unwrap(),
        &[SparseArea {
            offset: 0,
            size: 64 * 1024
        }]
    );
    r.user
        .handle
        .write(u32::from(DMA_RAM_BAR), 0x100, b"from-bar")
        .unwrap();
    r.bus_master();
    r.program(0x100, IOVA + 8, 8, DMA_FLAG_SRC_RAM);
    let mut b = [0u8; 8];
    r.mem.read_at(8, &mut b).unwrap();
    assert_eq!(&b, b"from-bar");
    r.program(IOVA + 8, 0x200, 8, DMA_FLAG_DST_RAM);
    let mut c = [0u8; 8];
    r.dev
        .driver()
        .function()
        .ram()
        .read_at(0x200, &mut c)
        .unwrap();
    assert_eq!(&c, b"from-bar");
    r.program(64 * 1024 - 4, IOVA, 8, DMA_FLAG_SRC_RAM);
    assert_eq!(r.status().1, DMA_ERR_RAM_RANGE);
}

#[test]
fn copy_marks_destination_page_dirty() {
    let r = rig();
    r.bus_master();
    r.user.container().start_dirty_logging(4096).unwrap();
    r.program(IOVA, IOVA + 0x3000, 64, 0);
    let bits = r
        .user
        .container()
        .report_dirty(IOVA, 4 * 4096, 4096)
        .unwrap();
    assert_eq!(bits, vec![0b1000]);
}

#[test]
fn msix_entry_masked_in_table_latches_until_unmasked() {
    let r = rig();
    let msix = r.user.bind(VFIO_PCI_MSIX_IRQ_INDEX, 1);
    r.bus_master();
    let cap = u64::from(
        r.dev
            .driver()
            .with_config(|c| c.capability_offset(PCI_CAP_ID_MSIX))
            .unwrap(),
    );
    r.user
        .cfg_write16(cap + u64::from(PCI_MSIX_FLAGS), PCI_MSIX_FLAGS_ENABLE);
    r.program(IOVA, IOVA + 0x1000, 4, 0);
    assert_eq!(read_eventfd(&msix[0]).unwrap(), 0);
    assert_eq!(r.user.read32(0, u64::from(DMA_MSIX_PBA)), 1);
    r.user.write32(0, u64::from(DMA_MSIX_TABLE) + 12, 0);
    assert_eq!(read_eventfd(&msix[0]).unwrap(), 1);
}

#[test]
fn identity_pcie_dsn_and_reset_support() {
    let r = rig();
    assert_eq!(r.user.cfg_read32(0), 0x0002_1ee7);
    assert_eq!(r.user.read32(0, DMA_REG_ID), DMA_ID);
    assert_eq!(r.user.read32(0, DMA_REG_MAX_LEN), DMA_MAX_LEN);
    assert!(r.user.handle.info().flags.contains(DeviceFlags::RESET));
    let mut cfg = vec![0u8; 4096];
    r.user
        .handle
        .read(VFIO_PCI_CONFIG_REGION_INDEX, 0, &mut cfg)
        .unwrap();
    let ext = walk_extended_capabilities(&cfg);
    assert_eq!(ext.ids(), vec![PCI_EXT_CAP_ID_DSN]);
    assert_eq!(r.user.irq_count(VFIO_PCI_ERR_IRQ_INDEX), 1);
}

#[test]
fn reset_clears_registers() {
    let r = rig();
    r.user.write32(0, DMA_REG_LEN, 77);
    r.user.handle.reset().unwrap();
    assert_eq!(r.user.read32(0, DMA_REG_LEN), 0);
}

#[test]
fn ram_size_not_power_of_two_is_invalid_option() {
    let registry = Registry::default();
    let err = create(
        &registry,
        "bad",
        GroupId(1),
        &DmaOptions {
            ram_size: 5000,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(
        err,
        DriverError::InvalidOption {
            name: "ram_size",
            ..
        }
    ));
}

mod migration {
    use uvfio_core::{Errno, MigState};
    use uvfio_pci::migration::SECTION_FUNCTION;

    use super::*;
    use crate::testutil::patch_section;

    /// Enables MSI-X with vector 0 unmasked.
    fn msix_on(r: &Rig) {
        let cap = u64::from(
            r.dev
                .driver()
                .with_config(|c| c.capability_offset(PCI_CAP_ID_MSIX))
                .unwrap(),
        );
        r.user
            .cfg_write16(cap + u64::from(PCI_MSIX_FLAGS), PCI_MSIX_FLAGS_ENABLE);
        r.user.write32(0, u64::from(DMA_MSIX_TABLE) + 12, 0);
    }

    #[test]
    fn doorbell_while_stopped_runs_on_destination_with_ram_and_registers() {
        let src = rig();
        let dst = rig();
        // Both sides see the same guest memory, as after RAM migration.
        dst.user.container().unmap_dma(IOVA, 4 * 4096).unwrap();
        dst.user
            .container()
            .map_dma(
                IOVA,
                4 * 4096,
                DmaPerm::READ | DmaPerm::WRITE,
                src.mem.clone(),
                0,
            )
            .unwrap();
        let smsix = src.user.bind(VFIO_PCI_MSIX_IRQ_INDEX, 1);
        src.bus_master();
        msix_on(&src);
        src.mem.write_at(0, b"payload").unwrap();
        src.program(IOVA, IOVA + 0x100, 7, 0);
        assert_eq!(read_eventfd(&smsix[0]).unwrap(), 1);
        src.user
            .handle
            .write(u32::from(DMA_RAM_BAR), 0x40, b"in the ram bar")
            .unwrap();

        src.user.handle.set_mig_state(MigState::Stop).unwrap();
        src.program(IOVA, IOVA + 0x1000, 7, 0);
        assert_eq!(
            src.status().0 & DMA_STATUS_BUSY,
            DMA_STATUS_BUSY,
            "deferred"
        );
        let mut b = [0u8; 7];
        src.mem.read_at(0x1000, &mut b).unwrap();
        assert_eq!(b, [0; 7], "no DMA while stopped");
        assert_eq!(
            read_eventfd(&smsix[0]).unwrap(),
            0,
            "no interrupt while stopped"
        );
        src.user.handle.set_mig_state(MigState::StopCopy).unwrap();
        let stream = src.user.drain();

        let dmsix = dst.user.bind(VFIO_PCI_MSIX_IRQ_INDEX, 1);
        assert_eq!(dst.user.resume(&stream).unwrap(), MigState::Running);
        src.mem.read_at(0x1000, &mut b).unwrap();
        assert_eq!(&b, b"payload", "the destination ran the copy");
        assert_eq!(dst.status(), (DMA_STATUS_DONE, DMA_ERR_NONE));
        assert_eq!(dst.user.read32(0, DMA_REG_COMPLETED), 2);
        assert_eq!(read_eventfd(&dmsix[0]).unwrap(), 1);
        assert_eq!(dst.user.read32(0, DMA_REG_DST_LO), (IOVA + 0x1000) as u32);
        let mut ram = [0u8; 14];
        dst.user
            .handle
            .read(u32::from(DMA_RAM_BAR), 0x40, &mut ram)
            .unwrap();
        assert_eq!(&ram, b"in the ram bar");
        assert_eq!(read_eventfd(&smsix[0]).unwrap(), 0);
    }

    #[test]
    fn deferred_copy_runs_when_the_source_resumes() {
        let r = rig();
        r.bus_master();
        r.mem.write_at(0, b"abc").unwrap();
        r.user.handle.set_mig_state(MigState::Stop).unwrap();
        r.program(IOVA, IOVA + 0x200, 3, 0);
        r.user.handle.set_mig_state(MigState::Running).unwrap();
        let mut b = [0u8; 3];
        r.mem.read_at(0x200, &mut b).unwrap();
        assert_eq!(&b, b"abc");
        assert_eq!(r.status(), (DMA_STATUS_DONE, DMA_ERR_NONE));
    }

    #[test]
    fn bad_engine_state_fails_resume_and_reset_recovers() {
        let src = rig();
        let dst = rig();
        src.user.write32(0, DMA_REG_LEN, 99);
        let good = src.user.save(true);
        for (what, stream) in [
            (
                "magic",
                patch_section(&good, SECTION_FUNCTION, |p| p[1] = 0),
            ),
            (
                "flags",
                patch_section(&good, SECTION_FUNCTION, |p| p[28] = 4),
            ),
            (
                "status",
                patch_section(&good, SECTION_FUNCTION, |p| p[32] = 8),
            ),
            (
                "short",
                patch_section(&good, SECTION_FUNCTION, |p| p.truncate(40)),
            ),
        ] {
            assert_eq!(
                dst.user.resume(&stream).unwrap_err(),
                Errno::INVAL,
                "{what}"
            );
            assert_eq!(dst.user.handle.mig_state().unwrap(), MigState::Error);
            dst.user.handle.reset().unwrap();
            assert_eq!(dst.user.handle.mig_state().unwrap(), MigState::Running);
            assert_eq!(dst.user.read32(0, DMA_REG_LEN), 0, "{what}");
        }
        assert_eq!(dst.user.resume(&good).unwrap(), MigState::Running);
        assert_eq!(dst.user.read32(0, DMA_REG_LEN), 99);
    }
}
