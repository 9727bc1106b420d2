//! Emulated devices for a headless guest, and the bus that dispatches to them.
//!
//! * [`Bus`] / [`BusDevice`]: address ranges to devices, for port I/O and MMIO.
//! * [`ExitEvent`]: the shared "end the VM with this status" request.
//! * [`ExitPort`]: debug exit port (0xf4), status `(code << 1) | 1`.
//! * [`I8042`]: reset line only (0x60..=0x64), status 0.
//! * [`Serial`]: 16550A UART (0x3f8, IRQ 4) to stdout, a file or nowhere.
//! * [`FwCfg`]: QEMU fw_cfg, legacy I/O (0x510..=0x511), CPU count and RAM size.
//! * [`pci`]: the PCI root complex (ECAM, 0xcf8/0xcfc), BARs and MSI-X.
//! * [`virtio`]: virtio-pci (modern) with virtio-blk and virtio-rng.
//! * [`smmuv3`]: an ARM SMMUv3 for the guest, its stage 1 run by the host (nesting).
//!
//! What this crate does not do: it does not create the buses of a VM, run
//! vCPUs or register irqfds; the VMM wires these devices in.

#![deny(missing_docs)]

pub mod bus;
pub mod exit;
pub mod exit_port;
pub mod fw_cfg;
pub mod i8042;
pub mod pci;
pub mod serial;
pub mod smmuv3;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
pub use exit::{ExitError, ExitEvent};
pub use exit_port::{ExitPort, EXIT_PORT_BASE, EXIT_PORT_LEN};
pub use fw_cfg::{FwCfg, FW_CFG_PORT_BASE, FW_CFG_PORT_LEN};
pub use i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
pub use pci::{
    MsiInterruptGroup, MsiMessage, MsixConfig, PciBdf, PciConfigIo, PciConfigMmio,
    PciConfiguration, PciDevice, PciRoot, PciWindows,
};
pub use serial::{
    EventFdTrigger, Serial, SerialError, SerialOutput, SERIAL_IRQ, SERIAL_PORT_BASE,
    SERIAL_PORT_LEN,
};
pub use virtio::{
    parse_disk, Block, BlockError, DiskConfig, DiskConfigError, Rng, RngError, VirtioDevice,
    VirtioPciDevice, VirtioPciError,
};
