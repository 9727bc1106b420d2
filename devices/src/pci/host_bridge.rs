//! The host bridge at 00:00.0: the function that tells the guest "this is
//! the root of a PCI hierarchy".
//!
//! It has no BARs, no capabilities and no behaviour; guests only read its
//! identity (class 0x06 bridge, subclass 0x00 host bridge). The IDs are
//! Intel's 0x8086:0x0d57, which cloud-hypervisor also uses and which no
//! guest driver binds to.
//!
//! What this module does not do: it is not a PCIe root port; there are no
//! secondary buses.

use super::configuration::{BarReprogram, PciBar, PciConfiguration, PciIds};
use super::device::PciDevice;

/// Vendor ID of the host bridge.
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x8086;
/// Device ID of the host bridge.
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0d57;
/// PCI base class "bridge".
const CLASS_BRIDGE: u8 = 0x06;
/// Bridge subclass "host bridge".
const SUBCLASS_HOST_BRIDGE: u8 = 0x00;

/// The host bridge function.
#[derive(Debug)]
pub struct PciHostBridge {
    config: PciConfiguration,
}

impl PciHostBridge {
    /// A host bridge with the IDs above.
    pub fn new() -> Self {
        Self {
            config: PciConfiguration::new(&PciIds {
                vendor_id: HOST_BRIDGE_VENDOR_ID,
                device_id: HOST_BRIDGE_DEVICE_ID,
                class_code: CLASS_BRIDGE,
                subclass: SUBCLASS_HOST_BRIDGE,
                ..PciIds::default()
            }),
        }
    }
}

impl Default for PciHostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for PciHostBridge {
    fn config_read(&mut self, reg_idx: usize) -> u32 {
        self.config.read_reg(reg_idx)
    }

    fn config_write(&mut self, reg_idx: usize, offset: u64, data: &[u8]) -> Vec<BarReprogram> {
        self.config.write_reg(reg_idx, offset, data)
    }

    fn bars(&self) -> Vec<PciBar> {
        Vec::new()
    }

    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_no_bars() {
        let mut bridge = PciHostBridge::new();
        assert_eq!(bridge.config_read(0), 0x0d57_8086);
        assert_eq!(bridge.config_read(2) >> 16, 0x0600);
        assert_eq!(bridge.config_read(3) & 0x00ff_0000, 0, "header type 0");
        for reg in 4..10 {
            assert!(bridge.config_write(reg, 0, &[0xff; 4]).is_empty());
            assert_eq!(bridge.config_read(reg), 0);
        }
        assert!(bridge.bars().is_empty());
    }
}
