//! Bus adapters that route guest accesses inside BARs to PCI devices.
//!
//! * [`PciBarDispatch`] covers one BAR: accesses at `offset` into its range
//!   become [`PciDevice::bar_read`] / [`PciDevice::bar_write`] on that BAR.
//! * [`PciBarWindow`] covers one whole PCI window (e.g. the 32-bit MMIO
//!   window) on the VMM's bus and forwards each access to the inner bus of
//!   BAR ranges the root keeps up to date. The VMM's buses therefore never
//!   change when the guest moves a BAR.
//!
//! An access inside a window that hits no BAR reads all-ones (what a PCI
//! master abort returns) and writes are dropped.
//!
//! Lock order: window (outer bus entry) -> BAR bus (read) -> dispatch ->
//! device. The root takes the BAR bus for writing only while it holds no
//! device lock, so the two paths cannot deadlock.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::device::PciDevice;
use crate::bus::{Bus, BusDevice};

/// Forwards accesses to one BAR of a device.
pub struct PciBarDispatch {
    dev: Arc<Mutex<dyn PciDevice>>,
    bar: usize,
}

impl PciBarDispatch {
    /// An adapter for BAR `bar` of `dev`; insert it on a bus at the BAR's
    /// address with the BAR's size.
    pub fn new(dev: Arc<Mutex<dyn PciDevice>>, bar: usize) -> Self {
        Self { dev, bar }
    }
}

impl BusDevice for PciBarDispatch {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.dev
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bar_read(self.bar, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.dev
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bar_write(self.bar, offset, data);
    }
}

/// A PCI window on the VMM's bus, dispatching to the BARs inside it.
pub struct PciBarWindow {
    bars: Arc<RwLock<Bus>>,
    base: u64,
}

impl PciBarWindow {
    /// A window whose offset 0 is address `base` of `bars` (the bus of BAR
    /// ranges, in absolute guest addresses).
    pub fn new(bars: Arc<RwLock<Bus>>, base: u64) -> Self {
        Self { bars, base }
    }
}

impl BusDevice for PciBarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let claimed = self.base.checked_add(offset).is_some_and(|addr| {
            self.bars
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .read(addr, data)
        });
        if !claimed {
            log::debug!(
                "{}-byte read at {:#x} hits no BAR: reading all-ones",
                data.len(),
                self.base.wrapping_add(offset)
            );
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let claimed = self.base.checked_add(offset).is_some_and(|addr| {
            self.bars
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .write(addr, data)
        });
        if !claimed {
            log::debug!(
                "dropping {}-byte write at {:#x}: it hits no BAR",
                data.len(),
                self.base.wrapping_add(offset)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::configuration::{BarReprogram, PciBar};

    /// Records BAR accesses; reads return the BAR index.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<(usize, u64, Vec<u8>)>,
    }

    impl PciDevice for Recorder {
        fn config_read(&mut self, _reg_idx: usize) -> u32 {
            0
        }
        fn config_write(&mut self, _: usize, _: u64, _: &[u8]) -> Vec<BarReprogram> {
            Vec::new()
        }
        fn bars(&self) -> Vec<PciBar> {
            Vec::new()
        }
        fn bar_read(&mut self, bar: usize, _offset: u64, data: &mut [u8]) {
            data.fill(bar as u8);
        }
        fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.writes.push((bar, offset, data.to_vec()));
        }
    }

    #[test]
    fn window_routes_to_bars_and_reads_ones_elsewhere() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let bars = Arc::new(RwLock::new(Bus::new()));
        bars.write()
            .unwrap()
            .insert(
                Arc::new(Mutex::new(PciBarDispatch::new(dev.clone(), 2))),
                0xc000_1000,
                0x1000,
            )
            .unwrap();
        let mut window = PciBarWindow::new(bars, 0xc000_0000);
        let mut data = [0u8; 4];
        window.read(0x1ffc, &mut data);
        assert_eq!(data, [2; 4]);
        window.read(0x2000, &mut data);
        assert_eq!(data, [0xff; 4]);
        window.read(u64::MAX, &mut data);
        assert_eq!(data, [0xff; 4]);
        window.write(0x1010, &[1, 2]);
        window.write(0x0, &[1, 2]);
        window.write(u64::MAX - 1, &[1, 2]);
        assert_eq!(dev.lock().unwrap().writes, vec![(2, 0x10, vec![1, 2])]);
    }
}
