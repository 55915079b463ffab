//! Our constants equal the kernel's `<linux/vfio.h>` (via `vfio-bindings`).

use uvfio_user::proto as p;
use vfio_bindings::bindings::vfio as k;

#[test]
fn pci_region_and_irq_indexes_match_kernel() {
    assert_eq!(p::VFIO_PCI_BAR0_REGION_INDEX, k::VFIO_PCI_BAR0_REGION_INDEX);
    assert_eq!(p::VFIO_PCI_BAR1_REGION_INDEX, k::VFIO_PCI_BAR1_REGION_INDEX);
    assert_eq!(p::VFIO_PCI_BAR2_REGION_INDEX, k::VFIO_PCI_BAR2_REGION_INDEX);
    assert_eq!(p::VFIO_PCI_BAR3_REGION_INDEX, k::VFIO_PCI_BAR3_REGION_INDEX);
    assert_eq!(p::VFIO_PCI_BAR4_REGION_INDEX, k::VFIO_PCI_BAR4_REGION_INDEX);
    assert_eq!(p::VFIO_PCI_BAR5_REGION_INDEX, k::VFIO_PCI_BAR5_REGION_INDEX);
    assert_eq!(p::VFIO_PCI_ROM_REGION_INDEX, k::VFIO_PCI_ROM_REGION_INDEX);
    assert_eq!(
        p::VFIO_PCI_CONFIG_REGION_INDEX,
        k::VFIO_PCI_CONFIG_REGION_INDEX
    );
    assert_eq!(p::VFIO_PCI_VGA_REGION_INDEX, k::VFIO_PCI_VGA_REGION_INDEX);
    assert_eq!(p::VFIO_PCI_NUM_REGIONS, k::VFIO_PCI_NUM_REGIONS);
    assert_eq!(p::VFIO_PCI_INTX_IRQ_INDEX, k::VFIO_PCI_INTX_IRQ_INDEX);
    assert_eq!(p::VFIO_PCI_MSI_IRQ_INDEX, k::VFIO_PCI_MSI_IRQ_INDEX);
    assert_eq!(p::VFIO_PCI_MSIX_IRQ_INDEX, k::VFIO_PCI_MSIX_IRQ_INDEX);
    assert_eq!(p::VFIO_PCI_ERR_IRQ_INDEX, k::VFIO_PCI_ERR_IRQ_INDEX);
    assert_eq!(p::VFIO_PCI_REQ_IRQ_INDEX, k::VFIO_PCI_REQ_IRQ_INDEX);
    assert_eq!(p::VFIO_PCI_NUM_IRQS, k::VFIO_PCI_NUM_IRQS);
}

#[test]
fn region_info_flags_and_caps_match_kernel() {
    assert_eq!(p::VFIO_REGION_INFO_FLAG_READ, k::VFIO_REGION_INFO_FLAG_READ);
    assert_eq!(
        p::VFIO_REGION_INFO_FLAG_WRITE,
        k::VFIO_REGION_INFO_FLAG_WRITE
    );
    assert_eq!(p::VFIO_REGION_INFO_FLAG_MMAP, k::VFIO_REGION_INFO_FLAG_MMAP);
    assert_eq!(p::VFIO_REGION_INFO_FLAG_CAPS, k::VFIO_REGION_INFO_FLAG_CAPS);
    assert_eq!(
        u32::from(p::VFIO_REGION_INFO_CAP_SPARSE_MMAP),
        k::VFIO_REGION_INFO_CAP_SPARSE_MMAP
    );
    assert_eq!(
        u32::from(p::VFIO_REGION_INFO_CAP_TYPE),
        k::VFIO_REGION_INFO_CAP_TYPE
    );
    assert_eq!(
        u32::from(p::VFIO_REGION_INFO_CAP_MSIX_MAPPABLE),
        k::VFIO_REGION_INFO_CAP_MSIX_MAPPABLE
    );
    assert_eq!(
        usize::try_from(p::REGION_INFO_SIZE).unwrap(),
        size_of::<k::vfio_region_info>()
    );
    assert_eq!(size_of::<k::vfio_region_sparse_mmap_area>(), 16);
    assert_eq!(size_of::<k::vfio_info_cap_header>(), 8);
}

#[test]
fn irq_constants_and_sizes_match_kernel() {
    assert_eq!(p::VFIO_IRQ_INFO_EVENTFD, k::VFIO_IRQ_INFO_EVENTFD);
    assert_eq!(p::VFIO_IRQ_INFO_MASKABLE, k::VFIO_IRQ_INFO_MASKABLE);
    assert_eq!(p::VFIO_IRQ_INFO_AUTOMASKED, k::VFIO_IRQ_INFO_AUTOMASKED);
    assert_eq!(p::VFIO_IRQ_INFO_NORESIZE, k::VFIO_IRQ_INFO_NORESIZE);
    assert_eq!(p::VFIO_IRQ_SET_DATA_NONE, k::VFIO_IRQ_SET_DATA_NONE);
    assert_eq!(p::VFIO_IRQ_SET_DATA_BOOL, k::VFIO_IRQ_SET_DATA_BOOL);
    assert_eq!(p::VFIO_IRQ_SET_DATA_EVENTFD, k::VFIO_IRQ_SET_DATA_EVENTFD);
    assert_eq!(p::VFIO_IRQ_SET_ACTION_MASK, k::VFIO_IRQ_SET_ACTION_MASK);
    assert_eq!(p::VFIO_IRQ_SET_ACTION_UNMASK, k::VFIO_IRQ_SET_ACTION_UNMASK);
    assert_eq!(
        p::VFIO_IRQ_SET_ACTION_TRIGGER,
        k::VFIO_IRQ_SET_ACTION_TRIGGER
    );
    assert_eq!(
        p::VFIO_IRQ_SET_DATA_TYPE_MASK,
        k::VFIO_IRQ_SET_DATA_TYPE_MASK
    );
    assert_eq!(
        p::VFIO_IRQ_SET_ACTION_TYPE_MASK,
        k::VFIO_IRQ_SET_ACTION_TYPE_MASK
    );
    assert_eq!(
        usize::try_from(p::IRQ_INFO_SIZE).unwrap(),
        size_of::<k::vfio_irq_info>()
    );
    assert_eq!(
        usize::try_from(p::IRQ_SET_SIZE).unwrap(),
        size_of::<k::vfio_irq_set>()
    );
}

#[test]
fn device_feature_and_migration_constants_match_kernel() {
    assert_eq!(p::VFIO_DEVICE_FLAGS_RESET, k::VFIO_DEVICE_FLAGS_RESET);
    assert_eq!(p::VFIO_DEVICE_FLAGS_PCI, k::VFIO_DEVICE_FLAGS_PCI);
    assert_eq!(p::VFIO_DEVICE_FEATURE_MASK, k::VFIO_DEVICE_FEATURE_MASK);
    assert_eq!(p::VFIO_DEVICE_FEATURE_GET, k::VFIO_DEVICE_FEATURE_GET);
    assert_eq!(p::VFIO_DEVICE_FEATURE_SET, k::VFIO_DEVICE_FEATURE_SET);
    assert_eq!(p::VFIO_DEVICE_FEATURE_PROBE, k::VFIO_DEVICE_FEATURE_PROBE);
    assert_eq!(
        u32::from(p::VFIO_DEVICE_FEATURE_MIGRATION),
        k::VFIO_DEVICE_FEATURE_MIGRATION
    );
    assert_eq!(
        u32::from(p::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE),
        k::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE
    );
    assert_eq!(
        u32::from(p::VFIO_DEVICE_FEATURE_DMA_LOGGING_START),
        k::VFIO_DEVICE_FEATURE_DMA_LOGGING_START
    );
    assert_eq!(
        u32::from(p::VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP),
        k::VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP
    );
    assert_eq!(
        u32::from(p::VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT),
        k::VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT
    );
    assert_eq!(
        p::VFIO_MIGRATION_STOP_COPY,
        u64::from(k::VFIO_MIGRATION_STOP_COPY)
    );
    assert_eq!(p::VFIO_MIGRATION_P2P, u64::from(k::VFIO_MIGRATION_P2P));
    assert_eq!(
        p::VFIO_MIGRATION_PRE_COPY,
        u64::from(k::VFIO_MIGRATION_PRE_COPY)
    );
    assert_eq!(
        p::VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
        k::VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP
    );
    assert_eq!(p::VFIO_DMA_UNMAP_FLAG_ALL, k::VFIO_DMA_UNMAP_FLAG_ALL);
}

#[test]
fn migration_states_match_kernel() {
    let kernel = [
        (
            p::MigState::Error,
            k::vfio_device_mig_state_VFIO_DEVICE_STATE_ERROR,
        ),
        (
            p::MigState::Stop,
            k::vfio_device_mig_state_VFIO_DEVICE_STATE_STOP,
        ),
        (
            p::MigState::Running,
            k::vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING,
        ),
        (
            p::MigState::StopCopy,
            k::vfio_device_mig_state_VFIO_DEVICE_STATE_STOP_COPY,
        ),
        (
            p::MigState::Resuming,
            k::vfio_device_mig_state_VFIO_DEVICE_STATE_RESUMING,
        ),
        (
            p::MigState::RunningP2p,
            k::vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING_P2P,
        ),
        (
            p::MigState::PreCopy,
            k::vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY,
        ),
        (
            p::MigState::PreCopyP2p,
            k::vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY_P2P,
        ),
    ];
    for (ours, theirs) in kernel {
        assert_eq!(ours.raw(), theirs, "{ours:?}");
    }
}
