//! The trait every PCI function on the root implements.
//!
//! A [`PciDevice`] is the guest-visible face of a function: its config space
//! and its BARs. Emulated devices (virtio-pci) and passthrough functions
//! (VFIO, whose config space is virtualized) both implement it, usually on
//! top of a [`PciConfiguration`](super::PciConfiguration) and, if they have
//! MSI-X, an [`MsixConfig`](super::MsixConfig).
//!
//! The trait stays small on purpose: config access, the BAR list and BAR
//! access. Interrupts go through the device's own
//! [`MsiInterruptGroup`](super::MsiInterruptGroup); where BARs sit on the
//! buses is the root's business.
//!
//! What this module does not do: hotplug, reset and power management hooks,
//! which no device needs yet.

use super::configuration::{BarReprogram, PciBar};

/// A PCI function as the root sees it.
///
/// Every argument comes from the guest (through the root, which only
/// checks ranges): implementations must accept any value without panicking
/// and must not touch memory beyond the addressed register or BAR.
pub trait PciDevice: Send {
    /// Reads config dword `reg_idx` (0..1024 via ECAM, 0..64 via port I/O).
    /// Registers the function does not implement read as 0, and past the
    /// 4 KiB config space as all-ones.
    fn config_read(&mut self, reg_idx: usize) -> u32;

    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` (0..4) of config
    /// dword `reg_idx`, and returns the BARs whose decoded address changed
    /// (see [`BarReprogram`]). Devices built on `PciConfiguration` return
    /// what its `write_reg` returns.
    fn config_write(&mut self, reg_idx: usize, offset: u64, data: &[u8]) -> Vec<BarReprogram>;

    /// The function's BARs: kind, size and current address. Called when the
    /// function is added to the root, to allocate addresses.
    fn bars(&self) -> Vec<PciBar>;

    /// Reads `data.len()` bytes at `offset` into BAR `bar`. `offset` is
    /// below the BAR's size and the access does not cross its end.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);

    /// Writes `data` at `offset` into BAR `bar`, with the same guarantees as
    /// [`PciDevice::bar_read`].
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
}
