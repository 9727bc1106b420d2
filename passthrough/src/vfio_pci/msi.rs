//! MSI of a passed-through function without MSI-X: an emulated MSI capability with one
//! vector (Multiple Message Capable reads 0, so the guest enables one message), routed
//! through a one-vector [`MsiInterruptGroup`], and the device's MSI vector bound to that
//! group's eventfd (`VFIO_DEVICE_SET_IRQS(MSI)`) while the guest has MSI enabled.
//!
//! The capability keeps the device's 64-bit and per-vector-masking abilities. A masked or
//! disabled vector has its route disabled; interrupts raised meanwhile are lost (the
//! pending bit reads 0), as for MSI-X (see `msix`).

use std::sync::Arc;

use devices::pci::{MsiInterruptGroup, MsiMessage};

use crate::vfio_device::{VfioDevice, VFIO_PCI_MSI_IRQ_INDEX};

const CONTROL_ENABLE: u16 = 1;
const CONTROL_64BIT: u16 = 1 << 7;
const CONTROL_PER_VECTOR_MASK: u16 = 1 << 8;

/// The emulated MSI capability and its binding to the device's vector.
pub struct MsiGlue {
    group: Arc<dyn MsiInterruptGroup>,
    is64: bool,
    maskable: bool,
    enabled: bool,
    address: u64,
    data: u16,
    mask: bool,
    /// The last (message, masked) the group accepted; a new group starts masked.
    reported: (MsiMessage, bool),
    /// Whether the device's vector is bound to the eventfd.
    bound: bool,
}

impl std::fmt::Debug for MsiGlue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsiGlue")
            .field("enabled", &self.enabled)
            .field("address", &self.address)
            .field("data", &self.data)
            .field("mask", &self.mask)
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

impl MsiGlue {
    /// The state for a device whose MSI message control is `control`.
    pub fn new(control: u16, group: Arc<dyn MsiInterruptGroup>) -> MsiGlue {
        MsiGlue {
            group,
            is64: control & CONTROL_64BIT != 0,
            maskable: control & CONTROL_PER_VECTOR_MASK != 0,
            enabled: false,
            address: 0,
            data: 0,
            mask: false,
            reported: (MsiMessage::default(), true),
            bound: false,
        }
    }

    /// Bytes of the capability, ID included.
    pub fn len(&self) -> usize {
        10 + if self.is64 { 4 } else { 0 } + if self.maskable { 10 } else { 0 }
    }

    /// Never empty; for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn data_offset(&self) -> usize {
        if self.is64 {
            12
        } else {
            8
        }
    }

    fn mask_offset(&self) -> usize {
        self.data_offset() + 4
    }

    /// The capability as the guest reads it, ID and next bytes zero (the caller fills
    /// them).
    pub fn capability(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.len()];
        let mut control = 0;
        if self.is64 {
            control |= CONTROL_64BIT;
        }
        if self.maskable {
            control |= CONTROL_PER_VECTOR_MASK;
        }
        if self.enabled {
            control |= CONTROL_ENABLE;
        }
        b[2..4].copy_from_slice(&control.to_le_bytes());
        b[4..8].copy_from_slice(&(self.address as u32).to_le_bytes());
        if self.is64 {
            b[8..12].copy_from_slice(&((self.address >> 32) as u32).to_le_bytes());
        }
        let d = self.data_offset();
        b[d..d + 2].copy_from_slice(&self.data.to_le_bytes());
        if self.maskable {
            let m = self.mask_offset();
            b[m] = u8::from(self.mask);
        }
        b
    }

    /// Applies a guest write at `rel` bytes into the capability, then updates the route
    /// and the device's vector binding.
    pub fn write_capability(
        &mut self,
        rel: usize,
        data: &[u8],
        device: &dyn VfioDevice,
        name: &str,
    ) {
        let mut b = self.capability();
        for (i, &v) in data.iter().enumerate() {
            if let Some(slot) = b.get_mut(rel + i) {
                *slot = v;
            }
        }
        let control = u16::from_le_bytes([b[2], b[3]]);
        self.enabled = control & CONTROL_ENABLE != 0;
        let lo = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) & !3;
        let hi = if self.is64 {
            u32::from_le_bytes([b[8], b[9], b[10], b[11]])
        } else {
            0
        };
        self.address = u64::from(hi) << 32 | u64::from(lo);
        let d = self.data_offset();
        self.data = u16::from_le_bytes([b[d], b[d + 1]]);
        if self.maskable {
            self.mask = b[self.mask_offset()] & 1 != 0;
        }
        self.update_route(name);
        self.sync(device, name);
    }

    fn update_route(&mut self, name: &str) {
        let msg = MsiMessage {
            address: self.address,
            data: u32::from(self.data),
        };
        let masked = !self.enabled || self.mask;
        let (last_msg, last_masked) = self.reported;
        if masked == last_masked && (masked || msg == last_msg) {
            return;
        }
        match self.group.update(0, msg, masked) {
            Ok(()) => self.reported = (msg, masked),
            Err(e) => log::warn!("{name}: MSI: {e}"),
        }
    }

    fn sync(&mut self, device: &dyn VfioDevice, name: &str) {
        if self.enabled == self.bound {
            return;
        }
        if !self.enabled {
            self.unbind(device, name);
            return;
        }
        let Some(fd) = self.group.notifier(0) else {
            log::error!(
                "{name}: the MSI interrupt group has no vector 0; the guest gets no interrupts"
            );
            return;
        };
        match device.set_irq_eventfds(VFIO_PCI_MSI_IRQ_INDEX, 0, &[fd]) {
            Ok(()) => self.bound = true,
            Err(e) => log::error!(
                "{name}: the guest enabled MSI but the device's vector cannot be connected, \
                 so it gets no interrupts: {e}"
            ),
        }
    }

    /// Disconnects the device's vector if connected.
    pub fn unbind(&mut self, device: &dyn VfioDevice, name: &str) {
        if !self.bound {
            return;
        }
        self.bound = false;
        if let Err(e) = device.disable_irqs(VFIO_PCI_MSI_IRQ_INDEX) {
            log::warn!("{name}: cannot disable the device's MSI: {e}");
        }
    }

    /// Whether the device's vector is connected to the eventfd.
    pub fn bound(&self) -> bool {
        self.bound
    }
}
