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
//! Root ports ([`RootPort`]) sit in bus-0 slots like any function; each
//! has one hot-plug slot below it, which holds at most one function
//! ([`PciRoot::plug`], [`PciRoot::unplug`]). Config cycles for other buses
//! are routed by the bus numbers the guest (or the VMM as firmware)
//! programmed into the ports: device 0 on a port's secondary bus is the
//! function in its slot, reachable while the slot's link is up; everything
//! else there reads all-ones. Moves of a BAR of a function behind a port are
//! reported to the callback under the port's address (ports have no BARs),
//! which stays the same when the guest renumbers buses.
//!
//! What this module does not do: multi-function devices, bridges below the
//! root ports, checking a BAR behind a port against the port's windows (it
//! is checked against the PCI windows like every BAR), and PCI INTx
//! routing.

use std::ops::Range;
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
use super::root_port::RootPort;
use crate::bus::Bus;

/// Called with every applied change of where a BAR decodes: the function's
/// address and the change (`old`/`new` are where the BAR was and is mapped
/// on the root's BAR bus). Called with the root locked: do not call back
/// into the root.
pub type BarMoveCallback = Box<dyn FnMut(PciBdf, &BarReprogram) + Send>;

/// Errors of the PCI root.
#[derive(Debug, thiserror::Error)]
pub enum PciRootError {
    /// No root port with that index.
    #[error("there is no root port {0}")]
    NoSuchPort(usize),
    /// The slot below the port holds a function already.
    #[error("the slot of root port {0} is occupied; remove its device first")]
    PortOccupied(usize),
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
/// is on those buses. `slots` has the 32 slots of bus 0 followed by one
/// slot per root port (`ports[i]` owns `slots[32 + i]`).
pub struct PciRoot {
    slots: Vec<Option<Slot>>,
    /// The root ports: their bus-0 slot and the port.
    ports: Vec<(usize, Arc<Mutex<RootPort>>)>,
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
            ports: Vec::new(),
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
        let dev_no = (1..usize::from(PCI_DEVICES_PER_BUS))
            .find(|&d| self.slots[d].is_none())
            .ok_or(PciRootError::NoFreeSlot)?;
        let bdf = self.slot_bdf(dev_no);
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
        let dev_no = self.slot_index(bdf)?;
        self.slots[dev_no].as_ref().map(|s| s.dev.clone())
    }

    /// Puts root port `port` in the lowest free slot of bus 0 and returns its
    /// index among the ports and its address. Its slot starts empty.
    pub fn add_root_port(
        &mut self,
        port: Arc<Mutex<RootPort>>,
    ) -> Result<(usize, PciBdf), PciRootError> {
        let bdf = self.add_device(port.clone())?;
        self.ports.push((usize::from(bdf.device()), port));
        self.slots.push(None);
        Ok((self.ports.len() - 1, bdf))
    }

    /// Takes a naturally aligned range of `size` bytes out of the PCI windows
    /// for a bridge window: below 4 GiB unless `high`, where a 64-bit window
    /// is used if there is one. BARs the root assigns later avoid it.
    pub fn reserve_window(&mut self, high: bool, size: u64) -> Result<Range<u64>, PciRootError> {
        let kind = if high {
            PciBarKind::Memory64
        } else {
            PciBarKind::Memory32
        };
        let (_, addr) = self
            .allocator
            .allocate(kind, size)
            .map_err(PciRootError::Windows)?;
        Ok(addr..addr + size)
    }

    /// Root port `index`.
    pub fn port(&self, index: usize) -> Option<Arc<Mutex<RootPort>>> {
        self.ports.get(index).map(|(_, p)| p.clone())
    }

    /// The address of root port `index` on bus 0.
    pub fn port_bdf(&self, index: usize) -> Option<PciBdf> {
        self.ports.get(index).map(|&(d, _)| slot_bdf(d))
    }

    /// Number of root ports.
    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    /// The function in the slot of port `index`, if any.
    pub fn plugged(&self, index: usize) -> Option<Arc<Mutex<dyn PciDevice>>> {
        self.slots
            .get(PCI_DEVICES_PER_BUS as usize + index)?
            .as_ref()
            .map(|s| s.dev.clone())
    }

    /// Puts `dev` in the slot of root port `index`. Its BARs are left as the
    /// device has them: the guest assigns them from the port's windows when
    /// it powers the slot on.
    pub fn plug(
        &mut self,
        index: usize,
        dev: Arc<Mutex<dyn PciDevice>>,
    ) -> Result<(), PciRootError> {
        if index >= self.ports.len() {
            return Err(PciRootError::NoSuchPort(index));
        }
        let dev_no = PCI_DEVICES_PER_BUS as usize + index;
        if self.slots[dev_no].is_some() {
            return Err(PciRootError::PortOccupied(index));
        }
        self.slots[dev_no] = Some(Slot {
            dev,
            bars: [None; PCI_NUM_BARS],
            status_errors: 0,
        });
        Ok(())
    }

    /// Takes the function out of the slot of root port `index`: its BARs
    /// leave the BAR buses (each mapped one reported to the callback as moved
    /// to nowhere), and BARs that waited for the room may map.
    pub fn unplug(&mut self, index: usize) -> Option<Arc<Mutex<dyn PciDevice>>> {
        let dev_no = PCI_DEVICES_PER_BUS as usize + index;
        self.slots.get(dev_no)?.as_ref()?;
        for bar in 0..PCI_NUM_BARS {
            let Some(p) = self.placement(dev_no, bar) else {
                continue;
            };
            let before = p.mapped_at();
            self.unmap(dev_no, bar);
            self.set_placement(
                dev_no,
                bar,
                BarPlacement {
                    wanted: None,
                    mapped: false,
                    ..p
                },
            );
            self.notify(dev_no, bar, before);
        }
        let slot = self.slots[dev_no].take()?;
        self.retry_blocked();
        Some(slot.dev)
    }

    /// The index in `slots` of the function `bdf` addresses now, if any.
    fn slot_index(&self, bdf: PciBdf) -> Option<usize> {
        if bdf.bus() == 0 {
            return (bdf.function() == 0).then_some(usize::from(bdf.device()));
        }
        for (i, (_, port)) in self.ports.iter().enumerate() {
            let port = port.lock().unwrap_or_else(PoisonError::into_inner);
            if port.forwards(bdf.bus()) {
                let here = port.buses().1 == bdf.bus()
                    && bdf.device() == 0
                    && bdf.function() == 0
                    && port.slot().link_active();
                return here.then_some(PCI_DEVICES_PER_BUS as usize + i);
            }
        }
        None
    }

    /// The address reported for `dev_no`: its bus-0 address, or for a
    /// function behind a root port the port's.
    fn slot_bdf(&self, dev_no: usize) -> PciBdf {
        match dev_no.checked_sub(PCI_DEVICES_PER_BUS as usize) {
            Some(i) => self.port_bdf(i).unwrap_or(slot_bdf(0)),
            None => slot_bdf(dev_no),
        }
    }

    /// Reads config dword `reg_idx` of `bdf`; all-ones if there is no such
    /// function.
    pub fn config_read(&mut self, bdf: PciBdf, reg_idx: usize) -> u32 {
        let Some(slot) = self.slot_index(bdf).and_then(|d| self.slots[d].as_ref()) else {
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
        let Some(dev_no) = self.slot_index(bdf) else {
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
        let bdf = self.slot_bdf(dev_no);
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
        let bdf = self.slot_bdf(dev_no);
        if let Some(callback) = self.on_bar_move.as_mut() {
            callback(
                bdf,
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
                        self.slot_bdf(dev_no)
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
                        mapped.push((self.slot_bdf(dev_no), bar, p.kind, addr, p.size));
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

/// The address of slot `dev_no` (< 32) on bus 0.
fn slot_bdf(dev_no: usize) -> PciBdf {
    PciBdf::from_requester_id(((dev_no as u16) & 0x1f) << 3)
}

#[cfg(test)]
mod tests;
