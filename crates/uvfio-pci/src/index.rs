//! The vfio-pci region and IRQ indexes (uapi `vfio.h`), and the offset at
//! which the kernel exposes each region in the device fd.

/// BAR 0 region.
pub const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
/// BAR 1 region.
pub const VFIO_PCI_BAR1_REGION_INDEX: u32 = 1;
/// BAR 2 region.
pub const VFIO_PCI_BAR2_REGION_INDEX: u32 = 2;
/// BAR 3 region.
pub const VFIO_PCI_BAR3_REGION_INDEX: u32 = 3;
/// BAR 4 region.
pub const VFIO_PCI_BAR4_REGION_INDEX: u32 = 4;
/// BAR 5 region.
pub const VFIO_PCI_BAR5_REGION_INDEX: u32 = 5;
/// Expansion ROM region (read only).
pub const VFIO_PCI_ROM_REGION_INDEX: u32 = 6;
/// Configuration space region.
pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
/// Legacy VGA region (never implemented by this crate: size 0).
pub const VFIO_PCI_VGA_REGION_INDEX: u32 = 8;
/// Number of fixed vfio-pci regions (`num_regions` of a plain PCI device).
pub const VFIO_PCI_NUM_REGIONS: u32 = 9;

/// INTx interrupt index.
pub const VFIO_PCI_INTX_IRQ_INDEX: u32 = 0;
/// MSI interrupt index.
pub const VFIO_PCI_MSI_IRQ_INDEX: u32 = 1;
/// MSI-X interrupt index.
pub const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;
/// Error (AER) interrupt index: PCI Express functions only.
pub const VFIO_PCI_ERR_IRQ_INDEX: u32 = 3;
/// Device request interrupt index: signalled when the host wants the
/// device back (unregister).
pub const VFIO_PCI_REQ_IRQ_INDEX: u32 = 4;
/// Number of vfio-pci IRQ indexes.
pub const VFIO_PCI_NUM_IRQS: u32 = 5;

/// vfio-pci places region `index` at `index << 40` in the device fd.
pub const VFIO_PCI_OFFSET_SHIFT: u32 = 40;

/// The device-fd offset of region `index`, as vfio-pci lays them out.
pub fn vfio_pci_index_to_offset(index: u32) -> u64 {
    u64::from(index) << VFIO_PCI_OFFSET_SHIFT
}
