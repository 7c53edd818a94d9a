// PCI config-space registers (include/uapi/linux/pci_regs.h): the subset devlease reads or builds (a lease
// device's config space, the simulator's, the kernel backend's capability walk), with the kernel's names.
// Checked against the kernel's header by test/vfio/uapi-layout.test.ts.

// --- type-0 header ---
export const PCI_COMMAND = 0x04;
export const PCI_COMMAND_IO = 0x1;
export const PCI_COMMAND_MEMORY = 0x2;
export const PCI_COMMAND_MASTER = 0x4;
export const PCI_COMMAND_INTX_DISABLE = 0x400;
export const PCI_STATUS = 0x06;
export const PCI_STATUS_CAP_LIST = 0x10;
export const PCI_BASE_ADDRESS_0 = 0x10;
export const PCI_CAPABILITY_LIST = 0x34;

// --- capability ids ---
export const PCI_CAP_ID_EXP = 0x10;
export const PCI_CAP_ID_MSIX = 0x11;

// --- MSI-X capability ---
export const PCI_MSIX_FLAGS = 2;
export const PCI_MSIX_FLAGS_MASKALL = 0x4000;
export const PCI_MSIX_FLAGS_ENABLE = 0x8000;
export const PCI_MSIX_TABLE = 4;
export const PCI_MSIX_PBA = 8;

// --- PCI Express capability ---
export const PCI_EXP_DEVCTL = 0x08;
