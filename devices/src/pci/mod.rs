//! PCI: a root complex on bus 0 with config access through ECAM and (on
//! x86) ports 0xcf8/0xcfc, BAR allocation and dispatch, capability lists
//! and MSI-X.
//!
//! One concept per file:
//! * [`bdf`]: [`PciBdf`], a function's address and requester ID.
//! * [`configuration`]: [`PciConfiguration`], a function's config space
//!   (write masks, BAR sizing and relocation, capability lists).
//! * [`msix`]: [`MsixConfig`], the MSI-X capability, table and PBA.
//! * [`interrupt`]: [`MsiInterruptGroup`], what the VMM's interrupt manager
//!   implements for MSI-X to route and inject through.
//! * [`bar_alloc`]: [`BarAllocator`], BAR addresses from the PCI windows.
//! * [`device`]: [`PciDevice`], the trait every function implements.
//! * [`bar_dispatch`]: bus adapters from guest addresses to BARs.
//! * [`host_bridge`]: [`PciHostBridge`] at 00:00.0.
//! * [`msi`]: [`MsiCapability`], plain MSI with one vector (root ports).
//! * [`hotplug_slot`]: [`HotplugSlot`], a PCIe hot-plug slot's registers
//!   and state machine.
//! * [`pcie_cap`]: [`PcieRootPortCapability`], the PCIe capability of a
//!   root port.
//! * [`root_port`]: [`RootPort`], a type 1 function with a hot-plug slot.
//! * [`root`]: [`PciRoot`], the slots, root port routing and the BAR map.
//! * [`config_access`]: [`PciConfigMmio`] (ECAM) and [`PciConfigIo`]
//!   (0xcf8).
//!
//! Wiring, for the VMM: build a [`PciRoot`] from the layout's windows, add
//! devices, wrap it in `Arc<Mutex<_>>`; insert a [`PciConfigMmio`] at the
//! ECAM base (and on x86 a [`PciConfigIo`] at 0xcf8, 8 ports); insert each of
//! [`PciRoot::window_devices`] on the MMIO (or, for the I/O window, port)
//! bus; optionally set a [`BarMoveCallback`] to follow BAR moves.
//!
//! What this module does not do: KVM routing and irqfds (the VMM implements
//! [`MsiInterruptGroup`]), the device tree / ACPI description of the host
//! bridge, INTx, bridges other than the root ports, and the orchestration
//! of hotplug (the VMM's).

pub mod bar_alloc;
pub mod bar_dispatch;
pub mod bdf;
pub mod config_access;
pub mod configuration;
pub mod device;
pub mod host_bridge;
pub mod hotplug_slot;
pub mod interrupt;
pub mod msi;
pub mod msix;
pub mod pcie_cap;
pub mod root;
pub mod root_port;
#[cfg(test)]
mod test_utils;

pub use bar_alloc::{AddressAllocator, BarAllocError, BarAllocator, PciWindowKind, PciWindows};
pub use bar_dispatch::{PciBarDispatch, PciBarWindow};
pub use bdf::PciBdf;
pub use config_access::{
    PciConfigIo, PciConfigMmio, ECAM_BUS_SIZE, ECAM_MAX_SIZE, PCI_CONFIG_IO_PORT,
    PCI_CONFIG_IO_PORT_LEN,
};
pub use configuration::{
    BarReprogram, PciBar, PciBarConfig, PciBarKind, PciConfigError, PciConfiguration, PciIds,
};
pub use device::PciDevice;
pub use host_bridge::PciHostBridge;
pub use hotplug_slot::HotplugSlot;
pub use interrupt::{InterruptError, MsiInterruptGroup, MsiMessage};
pub use msi::MsiCapability;
pub use msix::{MsixConfig, MsixDelivery, MsixError, MsixLayout};
pub use pcie_cap::PcieRootPortCapability;
pub use root::{BarMoveCallback, PciRoot, PciRootError, PciWindowDevice};
pub use root_port::{RootPort, RootPortError, RootPortWindows};
