//! The PCI root complex: bus 0, its devices, and where their BARs decode.
//!
//! [`PciRoot`] owns up to 32 device slots on bus 0, function 0 only
//! (multi-function devices are not supported yet); slot 0 holds the
//! [`PciHostBridge`]. It:
//!
//! * routes config accesses (from [`PciConfigIo`](super::PciConfigIo) and
//!   [`PciConfigMmio`](super::PciConfigMmio)) to the addressed function;
//!   absent functions read all-ones;
//! * assigns BAR addresses from the PCI windows when a device is added,
//!   as firmware would (decode stays off until the guest enables it);
//! * keeps an inner bus of BAR ranges per address space (MMIO, I/O) in
//!   step with where each BAR decodes, so guest accesses reach the device
//!   through the [`PciBarWindow`]s the VMM puts on its own buses;
//! * forwards every applied BAR move to an optional callback, for the VMM
//!   to move KVM memory slots of mmapped (passthrough) BARs.
//!
//! A BAR placement the guest asks for is applied only if the range lies in
//! a PCI window of the right kind and overlaps no other BAR. A placement
//! outside the windows is garbage: the root logs a warning, leaves the BAR
//! unmapped and sets Signaled System Error in the function's status
//! register (the guest clears it by writing 1). An overlap is logged and
//! retried after every BAR change, so the BAR appears once the other one
//! moves away. The callback only ever sees applied placements, so the VMM
//! never maps a memory slot outside the windows or over another BAR.
//!
//! Lock order: `PciRoot` -> device (dropped before the next step) -> BAR
//! bus (write) -> the callback, which must not lock the root. Accesses
//! through the windows take BAR bus (read) -> device, never the root.
//!
//! What this module does not do: hotplug and removal, bridges and buses
//! other than 0, and PCI INTx routing.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::bar_alloc::{BarAllocError, BarAllocator, PciWindowKind, PciWindows};
use super::bar_dispatch::{PciBarDispatch, PciBarWindow};
use super::bdf::{PciBdf, PCI_DEVICES_PER_BUS};
use super::configuration::{
    BarReprogram, PciBarKind, BAR0_OFFSET, PCI_NUM_BARS, STATUS_OFFSET,
    STATUS_SIGNALED_SYSTEM_ERROR,
};
use super::device::PciDevice;
use super::host_bridge::PciHostBridge;
use crate::bus::Bus;

/// Called with every applied change of where a BAR decodes: the function's
/// address and the change (`old`/`new` are where the BAR was and is mapped
/// on the root's BAR bus). Called with the root locked: do not call back
/// into the root.
pub type BarMoveCallback = Box<dyn FnMut(PciBdf, &BarReprogram) + Send>;

/// Errors of the PCI root.
#[derive(Debug, thiserror::Error)]
pub enum PciRootError {
    /// The windows of the layout are unusable.
    #[error("cannot set up the PCI root: {0}")]
    Windows(#[source] BarAllocError),
    /// All slots of bus 0 are taken.
    #[error(
        "no free slot on PCI bus 0: all {} device slots are in use (slot 0 is the host \
         bridge); use fewer PCI devices",
        PCI_DEVICES_PER_BUS - 1
    )]
    NoFreeSlot,
    /// A BAR of the new device found no room.
    #[error("cannot add the PCI device at {bdf}: BAR {bar}: {source}")]
    BarAllocation {
        /// The slot the device would have had.
        bdf: PciBdf,
        /// The BAR that did not fit.
        bar: usize,
        /// Why.
        #[source]
        source: BarAllocError,
    },
}

/// Where one BAR wants to decode and whether it does.
#[derive(Clone, Copy, Debug)]
struct BarPlacement {
    kind: PciBarKind,
    size: u64,
    /// The address the function decodes at, per its config space.
    wanted: Option<u64>,
    /// Whether a dispatch for it sits on the BAR bus at `wanted`.
    mapped: bool,
}

impl BarPlacement {
    fn mapped_at(&self) -> Option<u64> {
        self.wanted.filter(|_| self.mapped)
    }
}

/// A device in a slot.
struct Slot {
    dev: Arc<Mutex<dyn PciDevice>>,
    bars: [Option<BarPlacement>; PCI_NUM_BARS],
    /// Status bits raised by the root (write-1-to-clear), merged into reads
    /// of the status register.
    status_errors: u16,
}

/// A PCI window adapter for the VMM to place on its MMIO or port-I/O bus.
pub struct PciWindowDevice {
    /// Which window: [`PciWindowKind::Io`] goes on the port-I/O bus, the
    /// others on the MMIO bus.
    pub kind: PciWindowKind,
    /// Base address to insert the device at.
    pub base: u64,
    /// Length of the range to insert.
    pub len: u64,
    /// The adapter.
    pub device: Arc<Mutex<PciBarWindow>>,
}

/// Bus 0 and its devices.
///
/// Invariant: a BAR placement with `mapped` set has a [`PciBarDispatch`] on
/// the BAR bus of its kind at `wanted`, inside a window, and no other entry
/// is on those buses.
pub struct PciRoot {
    slots: Vec<Option<Slot>>,
    allocator: BarAllocator,
    mmio_bars: Arc<RwLock<Bus>>,
    io_bars: Arc<RwLock<Bus>>,
    on_bar_move: Option<BarMoveCallback>,
}

impl PciRoot {
    /// A root with the host bridge at 00:00.0, assigning BARs from
    /// `windows`.
    pub fn new(windows: &PciWindows) -> Result<Self, PciRootError> {
        let allocator = BarAllocator::new(windows).map_err(PciRootError::Windows)?;
        let mut root = Self {
            slots: (0..PCI_DEVICES_PER_BUS).map(|_| None).collect(),
            allocator,
            mmio_bars: Arc::new(RwLock::new(Bus::new())),
            io_bars: Arc::new(RwLock::new(Bus::new())),
            on_bar_move: None,
        };
        root.slots[0] = Some(Slot {
            dev: Arc::new(Mutex::new(PciHostBridge::new())),
            bars: [None; PCI_NUM_BARS],
            status_errors: 0,
        });
        Ok(root)
    }

    /// Sets the function called with every applied BAR move. Set it before
    /// the guest runs: moves applied earlier are not replayed.
    pub fn set_bar_move_callback(&mut self, callback: BarMoveCallback) {
        self.on_bar_move = Some(callback);
    }

    /// The window adapters to put on the VMM's buses, one per configured
    /// window. Call once; each call makes new (equivalent) adapters.
    pub fn window_devices(&self) -> Vec<PciWindowDevice> {
        self.allocator
            .windows()
            .map(|w| {
                let range = w.range();
                let bars = match w.kind() {
                    PciWindowKind::Io => &self.io_bars,
                    PciWindowKind::Mmio32 | PciWindowKind::Mmio64 => &self.mmio_bars,
                };
                PciWindowDevice {
                    kind: w.kind(),
                    base: range.start,
                    len: range.end - range.start,
                    device: Arc::new(Mutex::new(PciBarWindow::new(bars.clone(), range.start))),
                }
            })
            .collect()
    }

    /// Puts `dev` in the lowest free slot, allocates and programs its BARs,
    /// and returns its address. Decode stays as the device has it (off for
    /// a new `PciConfiguration`); the guest turns it on.
    pub fn add_device(&mut self, dev: Arc<Mutex<dyn PciDevice>>) -> Result<PciBdf, PciRootError> {
        let dev_no = (1..self.slots.len())
            .find(|&d| self.slots[d].is_none())
            .ok_or(PciRootError::NoFreeSlot)?;
        let bdf = slot_bdf(dev_no);
        let bars = dev.lock().unwrap_or_else(PoisonError::into_inner).bars();
        let mut assigned = Vec::with_capacity(bars.len());
        for bar in &bars {
            match self.allocator.allocate(bar.config.kind, bar.config.size) {
                Ok((window, addr)) => assigned.push((window, addr, bar.config)),
                Err(source) => {
                    for (window, addr, _) in assigned {
                        // Cannot fail: freeing what was just allocated.
                        let _ = self.allocator.free(window, addr);
                    }
                    return Err(PciRootError::BarAllocation {
                        bdf,
                        bar: bar.config.index,
                        source,
                    });
                }
            }
        }
        let mut changes = Vec::new();
        {
            let mut d = dev.lock().unwrap_or_else(PoisonError::into_inner);
            for (_, addr, config) in &assigned {
                let reg = BAR0_OFFSET / 4 + config.index;
                changes.extend(d.config_write(reg, 0, &(*addr as u32).to_le_bytes()));
                if config.kind == PciBarKind::Memory64 {
                    let high = (*addr >> 32) as u32;
                    changes.extend(d.config_write(reg + 1, 0, &high.to_le_bytes()));
                }
                log::debug!(
                    "PCI {bdf}: BAR {} ({} bytes) at {addr:#x}",
                    config.index,
                    config.size
                );
            }
        }
        self.slots[dev_no] = Some(Slot {
            dev,
            bars: [None; PCI_NUM_BARS],
            status_errors: 0,
        });
        self.apply(dev_no, changes);
        Ok(bdf)
    }

    /// The device at `bdf`, if any.
    pub fn device(&self, bdf: PciBdf) -> Option<Arc<Mutex<dyn PciDevice>>> {
        let dev_no = slot_index(bdf)?;
        self.slots[dev_no].as_ref().map(|s| s.dev.clone())
    }

    /// Reads config dword `reg_idx` of `bdf`; all-ones if there is no such
    /// function.
    pub fn config_read(&mut self, bdf: PciBdf, reg_idx: usize) -> u32 {
        let Some(slot) = slot_index(bdf).and_then(|d| self.slots[d].as_ref()) else {
            return u32::MAX;
        };
        let mut value = slot
            .dev
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .config_read(reg_idx);
        if reg_idx == STATUS_OFFSET / 4 {
            value |= u32::from(slot.status_errors) << 16;
        }
        value
    }

    /// Writes `data` at byte `offset` of config dword `reg_idx` of `bdf`
    /// and applies the BAR moves it causes. Ignored if there is no such
    /// function.
    pub fn config_write(&mut self, bdf: PciBdf, reg_idx: usize, offset: u64, data: &[u8]) {
        let Some(dev_no) = slot_index(bdf) else {
            return;
        };
        let Some(slot) = self.slots[dev_no].as_mut() else {
            return;
        };
        if reg_idx == STATUS_OFFSET / 4 {
            // Write-1-to-clear of the bits the root raised.
            let offset = offset as usize;
            if offset < 4 && offset + data.len() <= 4 {
                let mut bytes = [0u8; 4];
                bytes[offset..offset + data.len()].copy_from_slice(data);
                slot.status_errors &= !((u32::from_le_bytes(bytes) >> 16) as u16);
            }
        }
        let changes = slot
            .dev
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .config_write(reg_idx, offset, data);
        self.apply(dev_no, changes);
    }

    /// Applies the BAR changes a write to device `dev_no` caused, then
    /// retries placements that were blocked by an overlap.
    fn apply(&mut self, dev_no: usize, changes: Vec<BarReprogram>) {
        if changes.is_empty() {
            return;
        }
        let bdf = slot_bdf(dev_no);
        for change in changes {
            let bar = change.bar;
            let Some(Some(placement)) = self.slots[dev_no]
                .as_ref()
                .map(|s| s.bars.get(bar).copied())
            else {
                log::warn!(
                    "PCI {bdf}: the device reported a change of BAR {bar}, which does not \
                     exist; ignoring it (device model bug)"
                );
                continue;
            };
            let before = placement.and_then(|p| p.mapped_at());
            self.unmap(dev_no, bar);
            self.set_placement(
                dev_no,
                bar,
                BarPlacement {
                    kind: change.kind,
                    size: change.size,
                    wanted: change.new,
                    mapped: false,
                },
            );
            if let Some(addr) = change.new {
                if !self.allocator.allows(change.kind, addr, change.size) {
                    log::warn!(
                        "PCI {bdf}: the guest placed {} BAR {bar} ({:#x} bytes) at {addr:#x}, \
                         outside the PCI windows; the BAR stays unmapped until the guest \
                         moves it into a window, and the function's status register shows \
                         Signaled System Error",
                        change.kind,
                        change.size
                    );
                    if let Some(slot) = self.slots[dev_no].as_mut() {
                        slot.status_errors |= STATUS_SIGNALED_SYSTEM_ERROR;
                    }
                } else if let Err(e) = self.map(dev_no, bar) {
                    log::warn!(
                        "PCI {bdf}: the guest placed {} BAR {bar} at {addr:#x} over another \
                         BAR ({e}); it stays unmapped until the overlap goes away",
                        change.kind
                    );
                }
            }
            self.notify(dev_no, bar, before);
        }
        self.retry_blocked();
    }

    fn placement(&self, dev_no: usize, bar: usize) -> Option<BarPlacement> {
        self.slots
            .get(dev_no)?
            .as_ref()?
            .bars
            .get(bar)
            .copied()
            .flatten()
    }

    fn set_placement(&mut self, dev_no: usize, bar: usize, placement: BarPlacement) {
        if let Some(p) = self.slots[dev_no]
            .as_mut()
            .and_then(|s| s.bars.get_mut(bar))
        {
            *p = Some(placement);
        }
    }

    fn bar_bus(&self, kind: PciBarKind) -> &Arc<RwLock<Bus>> {
        if kind.is_memory() {
            &self.mmio_bars
        } else {
            &self.io_bars
        }
    }

    /// Takes BAR `bar` of device `dev_no` off its BAR bus, if it is on it.
    fn unmap(&mut self, dev_no: usize, bar: usize) {
        let Some(p) = self.placement(dev_no, bar) else {
            return;
        };
        if let Some(addr) = p.mapped_at() {
            self.bar_bus(p.kind)
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(addr);
            self.set_placement(dev_no, bar, BarPlacement { mapped: false, ..p });
        }
    }

    /// Puts BAR `bar` of device `dev_no` on its BAR bus at its wanted
    /// address (the caller has checked the window).
    fn map(&mut self, dev_no: usize, bar: usize) -> Result<(), crate::bus::BusError> {
        let (Some(p), Some(slot)) = (self.placement(dev_no, bar), self.slots[dev_no].as_ref())
        else {
            return Ok(());
        };
        let Some(addr) = p.wanted else {
            return Ok(());
        };
        let dispatch = Arc::new(Mutex::new(PciBarDispatch::new(slot.dev.clone(), bar)));
        self.bar_bus(p.kind)
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(dispatch, addr, p.size)?;
        self.set_placement(dev_no, bar, BarPlacement { mapped: true, ..p });
        Ok(())
    }

    /// Tells the callback if BAR `bar` of `dev_no` is no longer mapped at
    /// `before`.
    fn notify(&mut self, dev_no: usize, bar: usize, before: Option<u64>) {
        let Some(p) = self.placement(dev_no, bar) else {
            return;
        };
        let after = p.mapped_at();
        if before == after {
            return;
        }
        if let Some(callback) = self.on_bar_move.as_mut() {
            callback(
                slot_bdf(dev_no),
                &BarReprogram {
                    bar,
                    kind: p.kind,
                    size: p.size,
                    old: before,
                    new: after,
                },
            );
        }
    }

    /// Maps every BAR that wants a valid place but was blocked by another.
    fn retry_blocked(&mut self) {
        for dev_no in 0..self.slots.len() {
            for bar in 0..PCI_NUM_BARS {
                let Some(p) = self.placement(dev_no, bar) else {
                    continue;
                };
                let Some(addr) = p.wanted.filter(|_| !p.mapped) else {
                    continue;
                };
                if self.allocator.allows(p.kind, addr, p.size) && self.map(dev_no, bar).is_ok() {
                    log::info!(
                        "PCI {}: BAR {bar} is now mapped at {addr:#x}",
                        slot_bdf(dev_no)
                    );
                    self.notify(dev_no, bar, None);
                }
            }
        }
    }
}

#[cfg(test)]
impl PciRoot {
    /// Every BAR on the BAR buses: (function, BAR, kind, address, size).
    pub(crate) fn mapped_bars(&self) -> Vec<(PciBdf, usize, PciBarKind, u64, u64)> {
        let mut mapped = Vec::new();
        for dev_no in 0..self.slots.len() {
            for bar in 0..PCI_NUM_BARS {
                if let Some(p) = self.placement(dev_no, bar) {
                    if let Some(addr) = p.mapped_at() {
                        mapped.push((slot_bdf(dev_no), bar, p.kind, addr, p.size));
                    }
                }
            }
        }
        mapped
    }

    /// Whether a BAR may decode at `[addr, addr + size)`.
    pub(crate) fn allows(&self, kind: PciBarKind, addr: u64, size: u64) -> bool {
        self.allocator.allows(kind, addr, size)
    }
}

/// The slot of `bdf` on bus 0, function 0.
fn slot_index(bdf: PciBdf) -> Option<usize> {
    (bdf.bus() == 0 && bdf.function() == 0).then_some(usize::from(bdf.device()))
}

/// The address of slot `dev_no` (< 32) on bus 0.
fn slot_bdf(dev_no: usize) -> PciBdf {
    PciBdf::from_requester_id(((dev_no as u16) & 0x1f) << 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use crate::pci::configuration::{COMMAND_IO_SPACE, COMMAND_MEMORY_SPACE};
    use crate::pci::interrupt::test_utils::RecordingInterruptGroup;
    use crate::pci::test_utils::{TestDevice, TEST_BAR0_SIZE};

    type Moves = Arc<Mutex<Vec<(PciBdf, BarReprogram)>>>;

    fn windows() -> PciWindows {
        PciWindows {
            mmio32: 0xc000_0000..0xe000_0000,
            mmio64: Some(0x40_0000_0000..0x80_0000_0000),
            io: Some(0xc000..0x10000),
        }
    }

    fn root_with_moves() -> (PciRoot, Moves) {
        let mut root = PciRoot::new(&windows()).unwrap();
        let moves: Moves = Arc::default();
        let m = moves.clone();
        root.set_bar_move_callback(Box::new(move |bdf, change| {
            m.lock().unwrap().push((bdf, *change));
        }));
        (root, moves)
    }

    fn test_device(with_io: bool) -> Arc<Mutex<TestDevice>> {
        let group = Arc::new(RecordingInterruptGroup::new(4));
        Arc::new(Mutex::new(TestDevice::new(group, with_io)))
    }

    fn bdf(dev: u8) -> PciBdf {
        PciBdf::new(0, dev, 0).unwrap()
    }

    fn write32(root: &mut PciRoot, bdf: PciBdf, offset: usize, v: u32) {
        root.config_write(bdf, offset / 4, 0, &v.to_le_bytes());
    }

    fn mmio_window(root: &PciRoot, base: u64) -> Arc<Mutex<PciBarWindow>> {
        root.window_devices()
            .into_iter()
            .find(|w| w.base == base)
            .unwrap()
            .device
    }

    fn mmio_read32(window: &Arc<Mutex<PciBarWindow>>, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        window.lock().unwrap().read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn host_bridge_at_slot_zero_and_absent_functions() {
        let mut root = PciRoot::new(&windows()).unwrap();
        assert_eq!(root.config_read(bdf(0), 0), 0x0d57_8086);
        assert_eq!(root.config_read(bdf(1), 0), u32::MAX);
        assert_eq!(root.config_read(PciBdf::new(0, 0, 1).unwrap(), 0), u32::MAX);
        assert_eq!(root.config_read(PciBdf::new(1, 0, 0).unwrap(), 0), u32::MAX);
        root.config_write(bdf(5), 1, 0, &[0xff; 4]);
        assert!(root.device(bdf(0)).is_some());
        assert!(root.device(bdf(1)).is_none());
    }

    #[test]
    fn add_device_assigns_bars_without_enabling_decode() {
        let (mut root, moves) = root_with_moves();
        let d = root.add_device(test_device(true)).unwrap();
        assert_eq!(d, bdf(1));
        assert_eq!(root.config_read(d, 4), 0xc000_0000, "BAR 0 low");
        assert_eq!(root.config_read(d, 6), 0x0000_0004, "BAR 2: 64-bit, low");
        assert_eq!(root.config_read(d, 7), 0x40, "BAR 2 high");
        assert_eq!(root.config_read(d, 8), 0xc001, "BAR 4: I/O");
        assert_eq!(root.config_read(d, 1) & 0x3, 0, "decode off");
        assert!(moves.lock().unwrap().is_empty());
        assert_eq!(root.add_device(test_device(false)).unwrap(), bdf(2));
        assert_eq!(root.config_read(bdf(2), 4), 0xc000_1000);
    }

    #[test]
    fn enabling_decode_maps_bars_and_reports_moves() {
        let (mut root, moves) = root_with_moves();
        let dev = test_device(true);
        let d = root.add_device(dev.clone()).unwrap();
        let low = mmio_window(&root, 0xc000_0000);
        let high = mmio_window(&root, 0x40_0000_0000);
        assert_eq!(mmio_read32(&low, 0), u32::MAX, "decode off: master abort");
        root.config_write(d, 1, 0, &[(COMMAND_MEMORY_SPACE | COMMAND_IO_SPACE) as u8]);
        let got = std::mem::take(&mut *moves.lock().unwrap());
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0],
            (
                d,
                BarReprogram {
                    bar: 0,
                    kind: PciBarKind::Memory32,
                    size: TEST_BAR0_SIZE,
                    old: None,
                    new: Some(0xc000_0000)
                }
            )
        );
        assert_eq!(got[1].1.new, Some(0x40_0000_0000));
        assert_eq!(got[2].1.new, Some(0xc000));
        // BAR 0 is scratch memory; BAR 2 holds the MSI-X table.
        low.lock().unwrap().write(8, &0xabcdu32.to_le_bytes());
        assert_eq!(mmio_read32(&low, 8), 0xabcd);
        assert_eq!(dev.lock().unwrap().bar0[8], 0xcd);
        assert_eq!(mmio_read32(&high, 12), 1, "vector 0 masked");
        let io = root
            .window_devices()
            .into_iter()
            .find(|w| w.kind == PciWindowKind::Io)
            .unwrap();
        let mut b = [0u8; 1];
        io.device.lock().unwrap().read(0, &mut b);
        assert_eq!(b, [0x10], "I/O BAR reads its offset + 0x10");
    }

    #[test]
    fn relocation_moves_the_dispatch() {
        let (mut root, moves) = root_with_moves();
        let d = root.add_device(test_device(false)).unwrap();
        root.config_write(d, 1, 0, &[COMMAND_MEMORY_SPACE as u8]);
        moves.lock().unwrap().clear();
        let low = mmio_window(&root, 0xc000_0000);
        write32(&mut root, d, 0x10, 0xc010_0000);
        assert_eq!(
            moves.lock().unwrap()[0].1,
            BarReprogram {
                bar: 0,
                kind: PciBarKind::Memory32,
                size: TEST_BAR0_SIZE,
                old: Some(0xc000_0000),
                new: Some(0xc010_0000)
            }
        );
        low.lock().unwrap().write(0x10_0004, &[0x5a]);
        let mut b = [0u8; 1];
        low.lock().unwrap().read(0x10_0004, &mut b);
        assert_eq!(b, [0x5a]);
        low.lock().unwrap().read(0x4, &mut b);
        assert_eq!(b, [0xff], "old place is empty");
        // Sizing with decode on unmaps, restoring remaps at the same place.
        moves.lock().unwrap().clear();
        write32(&mut root, d, 0x10, u32::MAX);
        assert_eq!(root.config_read(d, 4), !(TEST_BAR0_SIZE as u32 - 1));
        write32(&mut root, d, 0x10, 0xc010_0000);
        let got: Vec<_> = moves
            .lock()
            .unwrap()
            .iter()
            .map(|m| (m.1.old, m.1.new))
            .collect();
        assert_eq!(
            got,
            vec![(Some(0xc010_0000), None), (None, Some(0xc010_0000))]
        );
    }

    #[test]
    fn garbage_bar_address_is_refused_with_error_status() {
        let (mut root, moves) = root_with_moves();
        let d = root.add_device(test_device(false)).unwrap();
        root.config_write(d, 1, 0, &[COMMAND_MEMORY_SPACE as u8]);
        moves.lock().unwrap().clear();
        // Over guest RAM, far from any window.
        write32(&mut root, d, 0x10, 0x0010_0000);
        assert_eq!(moves.lock().unwrap()[0].1.new, None, "unmapped");
        let status = (root.config_read(d, 1) >> 16) as u16;
        assert_ne!(status & STATUS_SIGNALED_SYSTEM_ERROR, 0);
        assert_eq!(mmio_read32(&mmio_window(&root, 0xc000_0000), 0), u32::MAX);
        // The guest clears the bit and moves the BAR back into the window.
        root.config_write(d, 1, 2, &STATUS_SIGNALED_SYSTEM_ERROR.to_le_bytes());
        let status = (root.config_read(d, 1) >> 16) as u16;
        assert_eq!(status & STATUS_SIGNALED_SYSTEM_ERROR, 0);
        write32(&mut root, d, 0x10, 0xc000_0000);
        assert_eq!(moves.lock().unwrap()[1].1.new, Some(0xc000_0000));
        // A 64-bit BAR straddling the end of the 64-bit window is refused too.
        write32(&mut root, d, 0x1c, 0x7f);
        write32(&mut root, d, 0x18, 0xffff_c000);
        let bar2 = root.placement(1, 2).unwrap();
        assert_eq!(bar2.wanted, Some(0x7f_ffff_c000));
        assert!(bar2.mapped, "ends exactly at the window end");
        write32(&mut root, d, 0x1c, 0x80);
        assert!(!root.placement(1, 2).unwrap().mapped);
    }

    #[test]
    fn overlapping_bar_waits_until_the_other_moves() {
        let (mut root, moves) = root_with_moves();
        let a = root.add_device(test_device(false)).unwrap();
        let b = root.add_device(test_device(false)).unwrap();
        for d in [a, b] {
            root.config_write(d, 1, 0, &[COMMAND_MEMORY_SPACE as u8]);
        }
        moves.lock().unwrap().clear();
        // b's BAR 0 onto a's.
        write32(&mut root, b, 0x10, 0xc000_0000);
        assert_eq!(moves.lock().unwrap().len(), 1, "b only unmapped");
        assert_eq!(
            (root.config_read(b, 1) >> 16) as u16 & STATUS_SIGNALED_SYSTEM_ERROR,
            0
        );
        // a moves away: b appears.
        write32(&mut root, a, 0x10, 0xc020_0000);
        let got: Vec<_> = moves
            .lock()
            .unwrap()
            .iter()
            .map(|m| (m.0, m.1.old, m.1.new))
            .collect();
        assert_eq!(
            got,
            vec![
                (b, Some(0xc000_1000), None),
                (a, Some(0xc000_0000), Some(0xc020_0000)),
                (b, None, Some(0xc000_0000)),
            ]
        );
        let low = mmio_window(&root, 0xc000_0000);
        low.lock().unwrap().write(0, &[7]);
        let dev_b = root.device(b).unwrap();
        let mut byte = [0u8];
        dev_b.lock().unwrap().bar_read(0, 0, &mut byte);
        assert_eq!(byte, [7]);
    }

    #[test]
    fn slots_run_out() {
        let mut root = PciRoot::new(&windows()).unwrap();
        for i in 1..32 {
            assert_eq!(root.add_device(test_device(false)).unwrap(), bdf(i));
        }
        let err = root.add_device(test_device(false)).unwrap_err();
        assert!(matches!(err, PciRootError::NoFreeSlot));
        assert!(err.to_string().contains("use fewer PCI devices"));
    }

    #[test]
    fn failed_allocation_rolls_back() {
        let mut root = PciRoot::new(&PciWindows {
            mmio32: 0xc000_0000..0xc000_2000,
            mmio64: None,
            io: None,
        })
        .unwrap();
        // BAR 0 and the 64-bit BAR 2 (16 KiB) do not both fit in 8 KiB.
        let err = root.add_device(test_device(false)).unwrap_err();
        assert!(
            matches!(err, PciRootError::BarAllocation { bar: 2, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("no room for a 16 KiB BAR"),
            "{err}"
        );
        let err = root.add_device(test_device(true)).unwrap_err();
        assert!(matches!(err, PciRootError::BarAllocation { .. }));
        assert!(root.device(bdf(1)).is_none());
        // BAR 0's page was given back.
        assert!(root
            .allocator
            .allocate(PciBarKind::Memory32, 0x2000)
            .is_ok());
    }

    #[test]
    fn invalid_windows_are_reported() {
        let err = PciRoot::new(&PciWindows {
            mmio32: 0xc000_0000..0x1_2000_0000,
            mmio64: None,
            io: None,
        })
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("fix the VM memory layout"),
            "{err}"
        );
    }
}
