//! MSI-X of a passed-through function: the guest programs an emulated capability, table
//! and PBA ([`MsixConfig`], which routes each vector through the caller's
//! [`MsiInterruptGroup`]); the device's own vectors signal the group's eventfds.
//!
//! When the guest sets MSI-X Enable, every vector of the device is bound to the group's
//! notifier eventfd with one `VFIO_DEVICE_SET_IRQS(MSIX, TRIGGER, EVENTFD)`; when it clears
//! it, the index is disabled. Each notifier is the KVM irqfd of the vector's GSI, so an
//! interrupt goes device -> host IRQ -> eventfd -> KVM route -> guest without the VMM. The
//! routes follow the guest's table through `MsixConfig` (x86_64: address/data; aarch64:
//! the group adds the ITS DeviceID).
//!
//! Masking: a vector the guest masks (its mask bit, the function mask, or MSI-X disabled)
//! has its route disabled. An interrupt the device raises meanwhile signals the eventfd,
//! finds no route and is **lost**: it is not latched in the emulated PBA and not delivered
//! on unmask. Drivers that mask a vector briefly (e.g. to retarget it) can miss one
//! interrupt; the PBA reads as all zeros. The device's real table is programmed by the host
//! kernel and is never seen by the guest.

use std::ops::Range;
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

use devices::pci::{MsiInterruptGroup, MsixConfig, MsixError, MsixLayout};

use crate::vfio_device::{VfioDevice, VFIO_PCI_MSIX_IRQ_INDEX};

/// Bytes of the MSI-X capability.
pub const MSIX_CAP_LEN: usize = 12;

/// Reads the table/PBA layout out of the device's MSI-X capability bytes (from the ID).
pub fn layout_from_capability(cap: &[u8]) -> Option<MsixLayout> {
    let b = cap.get(..MSIX_CAP_LEN)?;
    let control = u16::from_le_bytes([b[2], b[3]]);
    let table = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let pba = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    Some(MsixLayout {
        vectors: (control & 0x7ff) + 1,
        table_bar: (table & 7) as u8,
        table_offset: table & !7,
        pba_bar: (pba & 7) as u8,
        pba_offset: pba & !7,
    })
}

/// The emulated MSI-X capability and its binding to the device's vectors.
#[derive(Debug)]
pub struct MsixGlue {
    msix: MsixConfig,
    /// Vectors VFIO has for the device (`VFIO_DEVICE_GET_IRQ_INFO`).
    irq_count: u32,
    /// Whether the device's vectors are bound to the eventfds.
    bound: bool,
}

impl MsixGlue {
    /// The state for `layout`, routing through `group`; `irq_count` is what VFIO reports.
    pub fn new(
        layout: MsixLayout,
        group: Arc<dyn MsiInterruptGroup>,
        irq_count: u32,
    ) -> Result<MsixGlue, MsixError> {
        Ok(MsixGlue {
            msix: MsixConfig::new(layout, group)?,
            irq_count,
            bound: false,
        })
    }

    /// The table and PBA: (BAR, byte range) each; what must stay trapped.
    pub fn traps(&self) -> [(usize, Range<u64>); 2] {
        let l = self.msix.layout();
        let table = u64::from(l.table_offset);
        let pba = u64::from(l.pba_offset);
        [
            (usize::from(l.table_bar), table..table + l.table_len()),
            (usize::from(l.pba_bar), pba..pba + l.pba_len()),
        ]
    }

    /// The capability body as the guest reads it (10 bytes after ID and next).
    pub fn capability_body(&self) -> [u8; 10] {
        self.msix.capability_body()
    }

    /// The MSI-X state (for inspection).
    pub fn config(&self) -> &MsixConfig {
        &self.msix
    }

    /// Applies a guest write of `data` at `rel` bytes into the capability (ID at 0): only
    /// Enable and Function Mask are writable. Binds or unbinds the device's vectors when
    /// Enable flips.
    pub fn write_capability(
        &mut self,
        rel: usize,
        data: &[u8],
        device: &dyn VfioDevice,
        name: &str,
    ) {
        let mut control = self.msix.message_control().to_le_bytes();
        for (i, &b) in data.iter().enumerate() {
            match rel + i {
                2 => control[0] = b,
                3 => control[1] = b,
                _ => {}
            }
        }
        self.msix.set_message_control(u16::from_le_bytes(control));
        self.sync(device, name);
    }

    /// Handles a guest read in the table or PBA; false if `offset` of `bar` is neither.
    pub fn bar_read(&self, bar: usize, offset: u64, data: &mut [u8]) -> bool {
        self.msix.bar_read(bar, offset, data)
    }

    /// Handles a guest write in the table or PBA; false if `offset` of `bar` is neither.
    pub fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) -> bool {
        self.msix.bar_write(bar, offset, data)
    }

    /// Brings the device's vectors in line with MSI-X Enable.
    fn sync(&mut self, device: &dyn VfioDevice, name: &str) {
        let enabled = self.msix.enabled();
        if enabled == self.bound {
            return;
        }
        if !enabled {
            self.unbind(device, name);
            return;
        }
        let group = self.msix.interrupt().clone();
        let count = u32::from(self.msix.layout().vectors).min(self.irq_count);
        let fds: Vec<&EventFd> = (0..count)
            .filter_map(|v| group.notifier(v as u16))
            .collect();
        match device.set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 0, &fds) {
            Ok(()) => self.bound = true,
            Err(e) => log::error!(
                "{name}: the guest enabled MSI-X but the device's vectors cannot be \
                 connected, so it gets no interrupts: {e}"
            ),
        }
    }

    /// Disconnects the device's vectors if connected (guest disable, or teardown).
    pub fn unbind(&mut self, device: &dyn VfioDevice, name: &str) {
        if !self.bound {
            return;
        }
        self.bound = false;
        if let Err(e) = device.disable_irqs(VFIO_PCI_MSIX_IRQ_INDEX) {
            log::warn!("{name}: cannot disable the device's MSI-X vectors: {e}");
        }
    }

    /// Whether the device's vectors are connected to the eventfds.
    pub fn bound(&self) -> bool {
        self.bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_read_from_the_capability() {
        let mut cap = [0u8; 12];
        cap[0] = 0x11;
        cap[2..4].copy_from_slice(&4u16.to_le_bytes());
        cap[4..8].copy_from_slice(&0x2001u32.to_le_bytes());
        cap[8..12].copy_from_slice(&0x3804u32.to_le_bytes());
        let l = layout_from_capability(&cap).unwrap();
        assert_eq!(
            l,
            MsixLayout {
                vectors: 5,
                table_bar: 1,
                table_offset: 0x2000,
                pba_bar: 4,
                pba_offset: 0x3800
            }
        );
        assert!(layout_from_capability(&cap[..8]).is_none());
    }
}
