//! The address of a PCI function: bus, device (slot) and function number.
//!
//! A [`PciBdf`] is the 16-bit requester ID the function puts on the bus:
//! `bus << 8 | device << 3 | function`. The VMM needs it for more than
//! config-space decoding: on aarch64 the `msi-map` of the host bridge node
//! turns it into the ITS DeviceID that `KVM_MSI_VALID_DEVID` routes carry.
//!
//! What this module does not do: it knows nothing of PCI segments (domains);
//! the VMM has exactly one, segment 0.

use std::fmt;

/// Number of device slots on a PCI bus.
pub const PCI_DEVICES_PER_BUS: u8 = 32;
/// Number of functions a PCI device can have.
pub const PCI_FUNCTIONS_PER_DEVICE: u8 = 8;

/// Bus, device and function number of a PCI function, stored as the
/// requester ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciBdf(u16);

impl PciBdf {
    /// Builds the address of function `function` of device `device` on bus
    /// `bus`, or `None` if `device >= 32` or `function >= 8`.
    pub fn new(bus: u8, device: u8, function: u8) -> Option<Self> {
        if device >= PCI_DEVICES_PER_BUS || function >= PCI_FUNCTIONS_PER_DEVICE {
            return None;
        }
        Some(Self(
            u16::from(bus) << 8 | u16::from(device) << 3 | u16::from(function),
        ))
    }

    /// Interprets a requester ID (`bus << 8 | device << 3 | function`).
    pub fn from_requester_id(rid: u16) -> Self {
        Self(rid)
    }

    /// The requester ID, the input of the device tree `msi-map` (and of the
    /// IOMMU's stream ID mapping).
    pub fn requester_id(self) -> u16 {
        self.0
    }

    /// Bus number.
    pub fn bus(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// Device (slot) number, 0..32.
    pub fn device(self) -> u8 {
        ((self.0 >> 3) & 0x1f) as u8
    }

    /// Function number, 0..8.
    pub fn function(self) -> u8 {
        (self.0 & 0x7) as u8
    }
}

impl fmt::Display for PciBdf {
    /// Formats as lspci does, `bb:dd.f` in hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{}",
            self.bus(),
            self.device(),
            self.function()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requester_id_round_trip() {
        let bdf = PciBdf::new(0x12, 0x1f, 7).unwrap();
        assert_eq!(bdf.requester_id(), 0x12ff);
        assert_eq!(PciBdf::from_requester_id(0x12ff), bdf);
        assert_eq!((bdf.bus(), bdf.device(), bdf.function()), (0x12, 0x1f, 7));
        assert_eq!(PciBdf::new(0, 3, 0).unwrap().requester_id(), 0x18);
    }

    #[test]
    fn rejects_out_of_range_device_and_function() {
        assert!(PciBdf::new(0, 32, 0).is_none());
        assert!(PciBdf::new(0, 0, 8).is_none());
    }

    #[test]
    fn displays_like_lspci() {
        assert_eq!(PciBdf::new(0, 3, 1).unwrap().to_string(), "00:03.1");
        assert_eq!(PciBdf::new(0xab, 0x1e, 0).unwrap().to_string(), "ab:1e.0");
    }
}
