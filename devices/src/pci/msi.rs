//! A plain MSI capability (ID 0x05) with one vector and a 64-bit address, for emulated
//! functions that signal rare events (the PCIe root ports' hotplug slots).
//!
//! [`MsiCapability`] keeps the capability's bytes (control, address, data) and tells its
//! [`MsiInterruptGroup`] whenever what the guest programmed changes in a way that matters:
//! the route is installed while MSI is enabled, and disabled otherwise. [`MsiCapability::trigger`]
//! injects only while MSI is enabled; an event raised while it is disabled is dropped (the
//! function keeps its own status bits, so the guest finds the event when it looks).
//!
//! Layout (offsets from the capability's ID byte): 0x02 message control, 0x04 address low,
//! 0x08 address high, 0x0c data, 0x0e reserved. Multiple Message Capable is 0 (one vector)
//! and per-vector masking is not offered, so a guest masks by clearing MSI Enable.
//!
//! What this module does not do: more than one vector, per-vector masking, passthrough MSI
//! (the passthrough crate's `msi` glue virtualizes a real device's capability).

use std::sync::Arc;

use super::interrupt::{InterruptError, MsiInterruptGroup, MsiMessage};

/// Capability ID of MSI.
pub const PCI_CAP_ID_MSI: u8 = 0x05;
/// Bytes of the capability, ID and next pointer included.
pub const MSI_CAPABILITY_LEN: usize = 16;

/// Message control: MSI enable.
const CONTROL_ENABLE: u16 = 1;
/// Message control: 64-bit address capable.
const CONTROL_64BIT: u16 = 1 << 7;

/// The MSI capability of one function, one vector.
pub struct MsiCapability {
    control: u16,
    address: u64,
    data: u16,
    group: Arc<dyn MsiInterruptGroup>,
    /// What the group was last told: (message, enabled).
    routed: Option<(MsiMessage, bool)>,
}

impl std::fmt::Debug for MsiCapability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsiCapability")
            .field("control", &self.control)
            .field("address", &self.address)
            .field("data", &self.data)
            .finish_non_exhaustive()
    }
}

impl MsiCapability {
    /// A disabled capability delivering through vector 0 of `group`.
    pub fn new(group: Arc<dyn MsiInterruptGroup>) -> Self {
        MsiCapability {
            control: CONTROL_64BIT,
            address: 0,
            data: 0,
            group,
            routed: None,
        }
    }

    /// Reads the capability's dword at byte `offset` (0, 4, 8 or 12) from its ID byte;
    /// `header` is the ID and next-pointer half of dword 0.
    pub fn read_dword(&self, offset: usize, header: u16) -> u32 {
        match offset {
            0 => u32::from(self.control) << 16 | u32::from(header),
            4 => self.address as u32,
            8 => (self.address >> 32) as u32,
            12 => u32::from(self.data),
            _ => 0,
        }
    }

    /// Applies a guest write of `data` at byte `offset` (0..16) of the capability and
    /// updates the route if what matters changed. Read-only bits are kept.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), InterruptError> {
        for (i, &b) in data.iter().enumerate() {
            let at = offset + i;
            match at {
                2 => {
                    // Only MSI Enable is writable; Multiple Message Enable stays 0.
                    self.control =
                        (self.control & !CONTROL_ENABLE) | (u16::from(b) & CONTROL_ENABLE)
                }
                4..=11 => {
                    let shift = (at - 4) * 8;
                    let mut byte = u64::from(b);
                    if at == 4 {
                        byte &= 0xfc; // dword aligned
                    }
                    self.address = (self.address & !(0xff << shift)) | byte << shift;
                }
                12 | 13 => {
                    let shift = (at - 12) * 8;
                    self.data = (self.data & !(0xff << shift)) | u16::from(b) << shift;
                }
                _ => {}
            }
        }
        self.sync()
    }

    /// Whether the guest enabled MSI.
    pub fn enabled(&self) -> bool {
        self.control & CONTROL_ENABLE != 0
    }

    /// The message the guest programmed.
    pub fn message(&self) -> MsiMessage {
        MsiMessage {
            address: self.address,
            data: u32::from(self.data),
        }
    }

    /// Sends the vector if MSI is enabled; returns whether it was sent.
    pub fn trigger(&self) -> Result<bool, InterruptError> {
        if !self.enabled() {
            return Ok(false);
        }
        self.group.trigger(0)?;
        Ok(true)
    }

    /// Tells the group about a change of message or enable.
    fn sync(&mut self) -> Result<(), InterruptError> {
        let now = (self.message(), self.enabled());
        if self.routed == Some(now) {
            return Ok(());
        }
        self.group.update(0, now.0, !now.1)?;
        self.routed = Some(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::interrupt::test_utils::RecordingInterruptGroup;

    #[test]
    fn routes_follow_enable_and_message() {
        let group = Arc::new(RecordingInterruptGroup::new(1));
        let mut msi = MsiCapability::new(group.clone());
        assert_eq!(msi.read_dword(0, 0x5005), 0x0080_5005, "64-bit capable");
        assert!(!msi.trigger().unwrap(), "disabled: dropped");
        msi.write(4, &0xfee0_0003u32.to_le_bytes()).unwrap();
        msi.write(8, &0x1u32.to_le_bytes()).unwrap();
        msi.write(12, &[0x41, 0x00]).unwrap();
        assert_eq!(
            msi.read_dword(4, 0),
            0xfee0_0000,
            "address low is dword aligned"
        );
        let msg = MsiMessage {
            address: 0x1_fee0_0000,
            data: 0x41,
        };
        // Updates while disabled are reported masked.
        assert!(group.take_updates().iter().all(|u| u.2));
        msi.write(2, &[0x71, 0x00]).unwrap();
        assert_eq!(msi.read_dword(0, 0) >> 16, 0x81, "MME stays 0");
        assert_eq!(group.take_updates(), vec![(0, msg, false)]);
        msi.write(2, &[0x01]).unwrap();
        assert!(group.take_updates().is_empty(), "no change, no update");
        assert!(msi.trigger().unwrap());
        assert_eq!(group.take_triggers(), vec![0]);
        msi.write(0, &[0; 4]).unwrap();
        assert_eq!(group.take_updates(), vec![(0, msg, true)]);
        assert!(!msi.trigger().unwrap());
        assert!(group.take_triggers().is_empty());
    }
}
