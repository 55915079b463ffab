//! PCI register offsets and bits, named as in Linux `pci_regs.h` so that a
//! grep for the spec name finds the code.

/// Size of the conventional configuration space.
pub const PCI_CFG_SPACE_SIZE: usize = 256;
/// Size of the PCI Express extended configuration space.
pub const PCI_CFG_SPACE_EXP_SIZE: usize = 4096;
/// End of the type 0 header; capabilities start at or after it.
pub const PCI_STD_HEADER_SIZEOF: u16 = 0x40;

/// Vendor ID (16 bits).
pub const PCI_VENDOR_ID: u16 = 0x00;
/// Device ID (16 bits).
pub const PCI_DEVICE_ID: u16 = 0x02;
/// Command register (16 bits).
pub const PCI_COMMAND: u16 = 0x04;
/// Status register (16 bits).
pub const PCI_STATUS: u16 = 0x06;
/// Revision ID.
pub const PCI_REVISION_ID: u16 = 0x08;
/// Programming interface.
pub const PCI_CLASS_PROG: u16 = 0x09;
/// Sub-class.
pub const PCI_CLASS_DEVICE: u16 = 0x0a;
/// Base class.
pub const PCI_CLASS_BASE: u16 = 0x0b;
/// Cache line size.
pub const PCI_CACHE_LINE_SIZE: u16 = 0x0c;
/// Latency timer.
pub const PCI_LATENCY_TIMER: u16 = 0x0d;
/// Header type (bit 7: multi-function).
pub const PCI_HEADER_TYPE: u16 = 0x0e;
/// First BAR; BAR n is at `PCI_BASE_ADDRESS_0 + 4 * n`.
pub const PCI_BASE_ADDRESS_0: u16 = 0x10;
/// Subsystem vendor ID.
pub const PCI_SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
/// Subsystem ID.
pub const PCI_SUBSYSTEM_ID: u16 = 0x2e;
/// Expansion ROM BAR.
pub const PCI_ROM_ADDRESS: u16 = 0x30;
/// Pointer to the first capability.
pub const PCI_CAPABILITY_LIST: u16 = 0x34;
/// Interrupt line (written by software).
pub const PCI_INTERRUPT_LINE: u16 = 0x3c;
/// Interrupt pin (0 none, 1 INTA … 4 INTD).
pub const PCI_INTERRUPT_PIN: u16 = 0x3d;

/// BAR bit 0: I/O space.
pub const PCI_BASE_ADDRESS_SPACE_IO: u32 = 0x01;
/// Memory BAR bits 2:1 = 10b: 64-bit.
pub const PCI_BASE_ADDRESS_MEM_TYPE_64: u32 = 0x04;
/// Memory BAR bit 3: prefetchable.
pub const PCI_BASE_ADDRESS_MEM_PREFETCH: u32 = 0x08;
/// Expansion ROM BAR bit 0: decode enable.
pub const PCI_ROM_ADDRESS_ENABLE: u32 = 0x01;
/// Expansion ROM BAR address bits.
pub const PCI_ROM_ADDRESS_MASK: u32 = !0x7ff;

bitflags::bitflags! {
    /// The command register (`PCI_COMMAND_*`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Command: u16 {
        /// I/O space decode.
        const IO = 0x0001;
        /// Memory space decode.
        const MEMORY = 0x0002;
        /// Bus master: the function may issue DMA.
        const MASTER = 0x0004;
        /// Special cycles.
        const SPECIAL = 0x0008;
        /// Memory write and invalidate.
        const INVALIDATE = 0x0010;
        /// VGA palette snoop.
        const VGA_PALETTE = 0x0020;
        /// Parity error response.
        const PARITY = 0x0040;
        /// SERR# enable.
        const SERR = 0x0100;
        /// Fast back-to-back enable.
        const FAST_BACK = 0x0200;
        /// INTx emulation disable.
        const INTX_DISABLE = 0x0400;
    }
}

bitflags::bitflags! {
    /// The status register (`PCI_STATUS_*`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Status: u16 {
        /// INTx is asserted (read-only, follows the function's INTx line).
        const INTERRUPT = 0x0008;
        /// A capability list is present at `PCI_CAPABILITY_LIST`.
        const CAP_LIST = 0x0010;
        /// 66 MHz capable.
        const MHZ_66 = 0x0020;
        /// Fast back-to-back capable.
        const FAST_BACK = 0x0080;
        /// Master data parity error (RW1C).
        const PARITY = 0x0100;
        /// DEVSEL timing bits.
        const DEVSEL_MASK = 0x0600;
        /// Signaled target abort (RW1C).
        const SIG_TARGET_ABORT = 0x0800;
        /// Received target abort (RW1C).
        const REC_TARGET_ABORT = 0x1000;
        /// Received master abort (RW1C).
        const REC_MASTER_ABORT = 0x2000;
        /// Signaled system error (RW1C).
        const SIG_SYSTEM_ERROR = 0x4000;
        /// Detected parity error (RW1C).
        const DETECTED_PARITY = 0x8000;
    }
}

/// The RW1C bits of the status register.
pub const PCI_STATUS_RW1C: u16 = 0xf900;
/// The command bits a function implements by default (every bit vfio-pci
/// lets a user write, minus the hardwired-zero legacy ones).
pub const PCI_COMMAND_WRITABLE: u16 = 0x0547;

/// Capability ID: power management.
pub const PCI_CAP_ID_PM: u8 = 0x01;
/// Capability ID: MSI.
pub const PCI_CAP_ID_MSI: u8 = 0x05;
/// Capability ID: vendor specific.
pub const PCI_CAP_ID_VNDR: u8 = 0x09;
/// Capability ID: PCI Express.
pub const PCI_CAP_ID_EXP: u8 = 0x10;
/// Capability ID: MSI-X.
pub const PCI_CAP_ID_MSIX: u8 = 0x11;

/// Extended capability ID: device serial number.
pub const PCI_EXT_CAP_ID_DSN: u16 = 0x0003;
/// Extended capability ID: vendor specific.
pub const PCI_EXT_CAP_ID_VNDR: u16 = 0x000b;

/// PM: capabilities register offset.
pub const PCI_PM_PMC: u16 = 2;
/// PM: control/status register offset.
pub const PCI_PM_CTRL: u16 = 4;
/// PM control: power state D0..D3hot.
pub const PCI_PM_CTRL_STATE_MASK: u16 = 0x0003;
/// PM control: no soft reset on D3hot→D0.
pub const PCI_PM_CTRL_NO_SOFT_RESET: u16 = 0x0008;
/// PM control: PME enable.
pub const PCI_PM_CTRL_PME_ENABLE: u16 = 0x0100;
/// PM control: PME status (RW1C).
pub const PCI_PM_CTRL_PME_STATUS: u16 = 0x8000;
/// Length of the PM capability.
pub const PCI_PM_SIZEOF: usize = 8;

/// MSI: message control offset.
pub const PCI_MSI_FLAGS: u16 = 2;
/// MSI control: enable.
pub const PCI_MSI_FLAGS_ENABLE: u16 = 0x0001;
/// MSI control: log2 of the vectors the function supports.
pub const PCI_MSI_FLAGS_QMASK: u16 = 0x000e;
/// MSI control: log2 of the vectors software enabled.
pub const PCI_MSI_FLAGS_QSIZE: u16 = 0x0070;
/// MSI control: 64-bit addresses.
pub const PCI_MSI_FLAGS_64BIT: u16 = 0x0080;
/// MSI control: per-vector masking.
pub const PCI_MSI_FLAGS_MASKBIT: u16 = 0x0100;
/// MSI: message address (low).
pub const PCI_MSI_ADDRESS_LO: u16 = 4;
/// MSI: message address (high, 64-bit only).
pub const PCI_MSI_ADDRESS_HI: u16 = 8;
/// MSI: data, 32-bit layout.
pub const PCI_MSI_DATA_32: u16 = 8;
/// MSI: data, 64-bit layout.
pub const PCI_MSI_DATA_64: u16 = 12;
/// MSI: mask bits, 32-bit layout.
pub const PCI_MSI_MASK_32: u16 = 12;
/// MSI: mask bits, 64-bit layout.
pub const PCI_MSI_MASK_64: u16 = 16;
/// MSI: pending bits, 32-bit layout.
pub const PCI_MSI_PENDING_32: u16 = 16;
/// MSI: pending bits, 64-bit layout.
pub const PCI_MSI_PENDING_64: u16 = 20;

/// MSI-X: message control offset.
pub const PCI_MSIX_FLAGS: u16 = 2;
/// MSI-X control: table size - 1.
pub const PCI_MSIX_FLAGS_QSIZE: u16 = 0x07ff;
/// MSI-X control: function mask.
pub const PCI_MSIX_FLAGS_MASKALL: u16 = 0x4000;
/// MSI-X control: enable.
pub const PCI_MSIX_FLAGS_ENABLE: u16 = 0x8000;
/// MSI-X: table offset | BIR.
pub const PCI_MSIX_TABLE: u16 = 4;
/// MSI-X: PBA offset | BIR.
pub const PCI_MSIX_PBA: u16 = 8;
/// MSI-X: BIR bits of the table/PBA registers.
pub const PCI_MSIX_BIR: u32 = 0x7;
/// Length of the MSI-X capability.
pub const PCI_CAP_MSIX_SIZEOF: usize = 12;
/// Size of one MSI-X table entry.
pub const PCI_MSIX_ENTRY_SIZE: u64 = 16;
/// MSI-X entry: vector control word offset.
pub const PCI_MSIX_ENTRY_VECTOR_CTRL: u64 = 12;
/// MSI-X vector control: masked.
pub const PCI_MSIX_ENTRY_CTRL_MASKBIT: u32 = 1;

/// PCIe: capabilities register (version, device type).
pub const PCI_EXP_FLAGS: u16 = 2;
/// PCIe: device capabilities.
pub const PCI_EXP_DEVCAP: u16 = 4;
/// PCIe: device control.
pub const PCI_EXP_DEVCTL: u16 = 8;
/// PCIe device control: initiate function level reset (reads 0).
pub const PCI_EXP_DEVCTL_BCR_FLR: u16 = 0x8000;
/// PCIe: device status.
pub const PCI_EXP_DEVSTA: u16 = 10;
/// PCIe: link capabilities.
pub const PCI_EXP_LNKCAP: u16 = 12;
/// PCIe: link control.
pub const PCI_EXP_LNKCTL: u16 = 16;
/// PCIe: link status.
pub const PCI_EXP_LNKSTA: u16 = 18;
/// PCIe: device capabilities 2.
pub const PCI_EXP_DEVCAP2: u16 = 0x24;
/// PCIe: device control 2.
pub const PCI_EXP_DEVCTL2: u16 = 0x28;
/// Length of a version 2 PCIe capability of an endpoint.
pub const PCI_CAP_EXP_ENDPOINT_SIZEOF_V2: usize = 0x3c;
/// PCIe device capabilities: function level reset capable.
pub const PCI_EXP_DEVCAP_FLR: u32 = 0x1000_0000;
