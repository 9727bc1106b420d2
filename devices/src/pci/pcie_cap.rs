//! The PCI Express capability (ID 0x10) of a root port with a hot-plug slot.
//!
//! [`PcieRootPortCapability`] answers reads and writes of the capability's registers,
//! version 2, device/port type "root port", Slot Implemented. The link is x1 at 2.5 GT/s
//! and reports Data Link Layer Link Active (Linux's pciehp waits for it after power-on).
//! The slot registers belong to the [`HotplugSlot`]; Link Status follows its link state.
//!
//! Layout (offsets from the ID byte): 0x02 capabilities, 0x04 device caps, 0x08 device
//! control/status, 0x0c link caps, 0x10 link control/status, 0x14 slot caps, 0x18 slot
//! control/status, 0x1c root control/caps, 0x20 root status, 0x24..0x3c the version 2
//! registers.
//!
//! What this module does not do: PME, AER, ASPM, link training, error reporting; the
//! control registers that only steer those are plain read/write storage.

use super::hotplug_slot::HotplugSlot;

/// Capability ID of PCI Express.
pub const PCI_CAP_ID_EXP: u8 = 0x10;
/// Bytes of the capability (version 2), ID and next pointer included.
pub const PCIE_CAP_LEN: usize = 0x3c;

/// Capabilities register: version 2, root port (type 4), slot implemented; interrupt
/// message number 0 (the port's only MSI vector).
const PCIE_CAPS: u16 = 2 | 4 << 4 | 1 << 8;
/// Link Capabilities: 2.5 GT/s, x1, Data Link Layer Link Active Reporting Capable.
const LNKCAP_BASE: u32 = 1 | 1 << 4 | 1 << 20;
/// Link Status: current speed 2.5 GT/s, negotiated width x1.
const LNKSTA_BASE: u16 = 1 | 1 << 4;
/// Link Status: Data Link Layer Link Active.
pub const LNKSTA_DLLLA: u16 = 1 << 13;
/// Link Capabilities 2: supported speeds vector, 2.5 GT/s.
const LNKCAP2: u32 = 1 << 1;

/// The PCIe capability of one root port. See the module docs.
#[derive(Clone, Debug)]
pub struct PcieRootPortCapability {
    /// The port's hot-plug slot.
    pub slot: HotplugSlot,
    port_number: u8,
    device_control: u16,
    link_control: u16,
    root_control: u16,
    device_control2: u16,
    link_control2: u16,
}

impl PcieRootPortCapability {
    /// A root port numbered `port_number` (Link Capabilities' Port Number) with `slot`.
    pub fn new(port_number: u8, slot: HotplugSlot) -> Self {
        PcieRootPortCapability {
            slot,
            port_number,
            device_control: 0,
            link_control: 0,
            root_control: 0,
            device_control2: 0,
            link_control2: 0,
        }
    }

    /// Reads the dword at byte `offset` (a multiple of 4 below [`PCIE_CAP_LEN`]); `header`
    /// is the ID and next-pointer half of dword 0.
    pub fn read_dword(&self, offset: usize, header: u16) -> u32 {
        let pair = |lo: u16, hi: u16| u32::from(lo) | u32::from(hi) << 16;
        match offset {
            0x00 => pair(header, PCIE_CAPS),
            0x08 => pair(self.device_control, 0),
            0x0c => LNKCAP_BASE | u32::from(self.port_number) << 24,
            0x10 => {
                let mut status = LNKSTA_BASE;
                if self.slot.link_active() {
                    status |= LNKSTA_DLLLA;
                }
                pair(self.link_control, status)
            }
            0x14 => self.slot.capabilities(),
            0x18 => pair(self.slot.control(), self.slot.status()),
            0x1c => pair(self.root_control, 0),
            0x28 => pair(self.device_control2, 0),
            0x2c => LNKCAP2,
            0x30 => pair(self.link_control2, 0),
            _ => 0,
        }
    }

    /// Applies a guest write of `data` at byte `offset` of the capability. Returns whether
    /// the slot's event interrupt must be sent.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> bool {
        let dword = offset & !3;
        let byte = offset & 3;
        if dword == 0x18 {
            return self.slot.write(byte, data);
        }
        let target = match dword {
            0x08 => &mut self.device_control,
            0x10 => &mut self.link_control,
            0x1c => &mut self.root_control,
            0x28 => &mut self.device_control2,
            0x30 => &mut self.link_control2,
            _ => return false,
        };
        // Only the low (control) half is writable; status halves read 0 here.
        let mut bytes = target.to_le_bytes();
        for (i, &b) in data.iter().enumerate() {
            if let Some(slot) = bytes.get_mut(byte + i) {
                *slot = b;
            }
        }
        *target = u16::from_le_bytes(bytes);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::hotplug_slot::{SLTCTL_HPIE, SLTCTL_PCC};

    #[test]
    fn registers_describe_a_root_port_with_a_slot() {
        let mut cap = PcieRootPortCapability::new(2, HotplugSlot::new(2, false));
        let caps = cap.read_dword(0, 0x5010) >> 16;
        assert_eq!(caps & 0xf, 2, "version");
        assert_eq!(caps >> 4 & 0xf, 4, "root port");
        assert_ne!(caps & 1 << 8, 0, "slot implemented");
        assert_eq!(caps >> 9 & 0x1f, 0, "interrupt message 0");
        let lnkcap = cap.read_dword(0x0c, 0);
        assert_ne!(lnkcap & 1 << 20, 0, "link active reporting");
        assert_eq!(lnkcap >> 24, 2, "port number");
        assert_eq!(cap.read_dword(0x10, 0) >> 16 & u32::from(LNKSTA_DLLLA), 0);
        assert_eq!(cap.read_dword(0x14, 0), cap.slot.capabilities());

        // The link follows presence and power.
        cap.slot.insert();
        cap.write(0x18, &[0x00, 0x00]); // power on (PCC = 0)
        let lnksta = (cap.read_dword(0x10, 0) >> 16) as u16;
        assert_ne!(lnksta & LNKSTA_DLLLA, 0);
        assert_ne!(lnksta >> 4 & 0x3f, 0, "negotiated width");
        cap.write(0x19, &[(SLTCTL_PCC >> 8) as u8]);
        assert!(!cap.slot.powered());

        // Control registers are storage; status halves and caps are read-only.
        cap.write(0x08, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(cap.read_dword(0x08, 0), 0xffff);
        cap.write(0x0c, &[0; 4]);
        assert_eq!(cap.read_dword(0x0c, 0), lnkcap);
        cap.write(0x1d, &[0x12]);
        assert_eq!(cap.read_dword(0x1c, 0), 0x1200);
        // Slot control reached through the capability, with interrupts.
        assert!(!cap.write(0x18, &SLTCTL_HPIE.to_le_bytes()));
        assert_eq!(cap.read_dword(0x18, 0) & 0xffff, u32::from(SLTCTL_HPIE));
        assert_eq!(cap.read_dword(0x3c, 0), 0);
    }
}
