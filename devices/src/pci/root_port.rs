//! A PCIe root port on bus 0: a type 1 (PCI-to-PCI bridge) function with one hot-plug
//! slot below it.
//!
//! [`RootPort`] has the type 1 header with writable bus numbers (primary, secondary,
//! subordinate), a 32-bit memory window and a 64-bit prefetchable memory window (no I/O
//! window: its registers read 0, which tells the guest there is none), an MSI capability
//! (0x40) for the slot's events and the PCIe capability (0x50) with the slot
//! ([`PcieRootPortCapability`]). The VMM, acting as firmware, programs bus numbers and
//! windows when it builds the port; the guest may reprogram them, and the PCI root routes
//! config cycles by what is programmed now.
//!
//! The VMM drives the slot through [`RootPort::insert`], [`RootPort::press_button`] and
//! [`RootPort::eject`]; each sends the port's MSI when the slot says so, as do guest
//! writes to Slot Control (Command Completed).
//!
//! What this module does not do: route config cycles or BAR accesses (the PCI root does,
//! by [`RootPort::buses`]), check that a BAR behind the port lies in its windows (the root
//! checks the PCI windows), INTx, PME, AER, ACS, an I/O window, and bridges behind it.

use std::ops::Range;
use std::sync::Arc;

use super::configuration::{
    BarReprogram, PciBar, COMMAND_BUS_MASTER, COMMAND_INTX_DISABLE, COMMAND_IO_SPACE,
    COMMAND_MEMORY_SPACE, STATUS_CAPABILITIES_LIST,
};
use super::device::PciDevice;
use super::hotplug_slot::HotplugSlot;
use super::interrupt::MsiInterruptGroup;
use super::msi::{MsiCapability, MSI_CAPABILITY_LEN, PCI_CAP_ID_MSI};
use super::pcie_cap::{PcieRootPortCapability, PCIE_CAP_LEN, PCI_CAP_ID_EXP};

/// Vendor ID of the root port (Red Hat's, under which the generic PCIe root port that
/// guests know from other VMMs is registered; no driver but the PCIe port driver binds).
pub const ROOT_PORT_VENDOR_ID: u16 = 0x1b36;
/// Device ID of the generic PCIe root port.
pub const ROOT_PORT_DEVICE_ID: u16 = 0x000c;
/// Where the MSI capability starts.
const MSI_CAP_OFFSET: usize = 0x40;
/// Where the PCIe capability starts.
const PCIE_CAP_OFFSET: usize = MSI_CAP_OFFSET + MSI_CAPABILITY_LEN;
/// Dwords of the type 1 header.
const HEADER_REGS: usize = 16;
/// Bridge windows are 1 MiB aligned and sized.
pub const BRIDGE_WINDOW_ALIGN: u64 = 1 << 20;

/// Header dword indices.
const REG_COMMAND: usize = 1;
const REG_BUS_NUMBERS: usize = 6;
const REG_MEMORY: usize = 8;
const REG_PREF: usize = 9;
const REG_PREF_BASE_HI: usize = 10;
const REG_PREF_LIMIT_HI: usize = 11;

/// The memory windows the VMM gives a port (each 1 MiB aligned, a multiple of 1 MiB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootPortWindows {
    /// Non-prefetchable window, below 4 GiB.
    pub mem: Range<u64>,
    /// Prefetchable window (64-bit capable; it may lie below 4 GiB).
    pub pref: Range<u64>,
}

/// Errors building a root port (VMM layout bugs; the guest cannot cause them).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RootPortError {
    /// A window that a bridge cannot decode.
    #[error(
        "the {which} window {start:#x}..{end:#x} of root port {port} is unusable: bridge \
         windows are non-empty, 1 MiB aligned and sized{}; fix the hotplug layout",
        if *.which == "memory" { ", and below 4 GiB" } else { "" }
    )]
    Window {
        /// The port's number.
        port: u8,
        /// "memory" or "prefetchable".
        which: &'static str,
        /// Start.
        start: u64,
        /// End (exclusive).
        end: u64,
    },
}

/// A PCIe root port. See the module docs.
pub struct RootPort {
    regs: [u32; HEADER_REGS],
    writable: [u32; HEADER_REGS],
    msi: MsiCapability,
    pcie: PcieRootPortCapability,
}

impl std::fmt::Debug for RootPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootPort")
            .field("buses", &self.buses())
            .field("slot", &self.pcie.slot)
            .finish_non_exhaustive()
    }
}

fn check_window(
    port: u8,
    which: &'static str,
    w: &Range<u64>,
    below_4g: bool,
) -> Result<(), RootPortError> {
    let ok = w.start < w.end
        && w.start.is_multiple_of(BRIDGE_WINDOW_ALIGN)
        && w.end.is_multiple_of(BRIDGE_WINDOW_ALIGN)
        && (!below_4g || w.end <= 1 << 32);
    if ok {
        Ok(())
    } else {
        Err(RootPortError::Window {
            port,
            which,
            start: w.start,
            end: w.end,
        })
    }
}

impl RootPort {
    /// Root port `number` (1-based; also the slot's physical number) with its secondary
    /// and subordinate bus set to `bus`, `windows` programmed, and the slot's events sent
    /// through vector 0 of `group`.
    pub fn new(
        number: u8,
        bus: u8,
        windows: &RootPortWindows,
        surprise: bool,
        group: Arc<dyn MsiInterruptGroup>,
    ) -> Result<Self, RootPortError> {
        check_window(number, "memory", &windows.mem, true)?;
        check_window(number, "prefetchable", &windows.pref, false)?;
        let mut regs = [0u32; HEADER_REGS];
        let mut writable = [0u32; HEADER_REGS];
        regs[0] = u32::from(ROOT_PORT_DEVICE_ID) << 16 | u32::from(ROOT_PORT_VENDOR_ID);
        // Class 0x0604 (PCI-to-PCI bridge), prog-if 0.
        regs[2] = 0x0604_0000;
        // Header type 1, single function.
        regs[3] = 0x0001_0000;
        writable[3] = 0xff;
        regs[REG_COMMAND] = u32::from(STATUS_CAPABILITIES_LIST) << 16;
        writable[REG_COMMAND] = u32::from(
            COMMAND_IO_SPACE
                | COMMAND_MEMORY_SPACE
                | COMMAND_BUS_MASTER
                | 1 << 6
                | 1 << 8
                | COMMAND_INTX_DISABLE,
        );
        regs[REG_BUS_NUMBERS] = u32::from(bus) << 16 | u32::from(bus) << 8;
        writable[REG_BUS_NUMBERS] = u32::MAX;
        let window = |w: &Range<u64>| {
            ((w.start >> 16) as u32 & 0xfff0) | (((w.end - 1) >> 16) as u32 & 0xfff0) << 16
        };
        regs[REG_MEMORY] = window(&windows.mem);
        writable[REG_MEMORY] = 0xfff0_fff0;
        // Low nibbles 1: 64-bit prefetchable window.
        regs[REG_PREF] = window(&windows.pref) | 0x0001_0001;
        writable[REG_PREF] = 0xfff0_fff0;
        regs[REG_PREF_BASE_HI] = (windows.pref.start >> 32) as u32;
        regs[REG_PREF_LIMIT_HI] = ((windows.pref.end - 1) >> 32) as u32;
        writable[REG_PREF_BASE_HI] = u32::MAX;
        writable[REG_PREF_LIMIT_HI] = u32::MAX;
        regs[13] = MSI_CAP_OFFSET as u32;
        // Interrupt line (scratch) and bridge control: parity, SERR, ISA, VGA, master abort
        // mode, secondary bus reset.
        writable[15] = 0x006f_00ff;
        Ok(RootPort {
            regs,
            writable,
            msi: MsiCapability::new(group),
            pcie: PcieRootPortCapability::new(
                number,
                HotplugSlot::new(u16::from(number), surprise),
            ),
        })
    }

    /// (primary, secondary, subordinate) bus numbers as programmed now.
    pub fn buses(&self) -> (u8, u8, u8) {
        let b = self.regs[REG_BUS_NUMBERS].to_le_bytes();
        (b[0], b[1], b[2])
    }

    /// Whether config cycles for `bus` go below this port.
    pub fn forwards(&self, bus: u8) -> bool {
        let (_, secondary, subordinate) = self.buses();
        secondary != 0 && secondary <= bus && bus <= subordinate
    }

    /// The memory windows as programmed now (empty ranges when base > limit).
    pub fn windows(&self) -> RootPortWindows {
        let decode = |reg: u32| {
            let base = u64::from(reg & 0xfff0) << 16;
            let limit = (u64::from(reg >> 16 & 0xfff0) << 16) | 0xf_ffff;
            (base, limit)
        };
        let (mb, ml) = decode(self.regs[REG_MEMORY]);
        let (pb, pl) = decode(self.regs[REG_PREF]);
        let pb = pb | u64::from(self.regs[REG_PREF_BASE_HI]) << 32;
        let pl = pl | u64::from(self.regs[REG_PREF_LIMIT_HI]) << 32;
        // A limit at the very top of the address space ends the range at u64::MAX.
        let range = |b: u64, l: u64| if b <= l { b..l.saturating_add(1) } else { b..b };
        RootPortWindows {
            mem: range(mb, ml),
            pref: range(pb, pl),
        }
    }

    /// The slot.
    pub fn slot(&self) -> &HotplugSlot {
        &self.pcie.slot
    }

    /// Whether the port's MSI is enabled (the guest's port driver has set it up).
    pub fn msi_enabled(&self) -> bool {
        self.msi.enabled()
    }

    fn signal(&self, interrupt: bool) {
        if interrupt {
            if let Err(e) = self.msi.trigger() {
                log::warn!(
                    "root port {}: cannot send the hotplug MSI: {e}",
                    self.slot_number()
                );
            }
        }
    }

    fn slot_number(&self) -> u32 {
        self.pcie.slot.capabilities() >> 19
    }

    /// A card arrives in the slot.
    pub fn insert(&mut self) {
        let irq = self.pcie.slot.insert();
        self.signal(irq);
    }

    /// The attention button is pressed.
    pub fn press_button(&mut self) {
        let irq = self.pcie.slot.press_button();
        self.signal(irq);
    }

    /// The card leaves (a surprise removal if the slot is powered).
    pub fn eject(&mut self) {
        let irq = self.pcie.slot.eject();
        self.signal(irq);
    }
}

impl PciDevice for RootPort {
    fn config_read(&mut self, reg_idx: usize) -> u32 {
        let offset = reg_idx * 4;
        if let Some(&r) = self.regs.get(reg_idx) {
            return r;
        }
        let msi = MSI_CAP_OFFSET..MSI_CAP_OFFSET + MSI_CAPABILITY_LEN;
        let pcie = PCIE_CAP_OFFSET..PCIE_CAP_OFFSET + PCIE_CAP_LEN;
        if msi.contains(&offset) {
            let header = u16::from(PCI_CAP_ID_MSI) | (PCIE_CAP_OFFSET as u16) << 8;
            self.msi.read_dword(offset - msi.start, header)
        } else if pcie.contains(&offset) {
            self.pcie
                .read_dword(offset - pcie.start, u16::from(PCI_CAP_ID_EXP))
        } else if reg_idx < 1024 {
            0
        } else {
            u32::MAX
        }
    }

    fn config_write(&mut self, reg_idx: usize, offset: u64, data: &[u8]) -> Vec<BarReprogram> {
        let offset = offset as usize;
        if !(1..=4).contains(&data.len()) || offset + data.len() > 4 {
            return Vec::new();
        }
        let at = reg_idx * 4 + offset;
        if let (Some(reg), Some(&mask)) = (self.regs.get_mut(reg_idx), self.writable.get(reg_idx)) {
            let mut bytes = [0u8; 4];
            bytes[offset..offset + data.len()].copy_from_slice(data);
            let shift = offset * 8;
            let lanes = if data.len() == 4 {
                u32::MAX
            } else {
                ((1u32 << (data.len() * 8)) - 1) << shift
            };
            let value = u32::from_le_bytes(bytes);
            let mask = mask & lanes;
            *reg = (*reg & !mask) | (value & mask);
            return Vec::new();
        }
        let msi = MSI_CAP_OFFSET..MSI_CAP_OFFSET + MSI_CAPABILITY_LEN;
        let pcie = PCIE_CAP_OFFSET..PCIE_CAP_OFFSET + PCIE_CAP_LEN;
        if msi.contains(&at) {
            if let Err(e) = self.msi.write(at - msi.start, data) {
                log::warn!("root port {}: MSI route: {e}", self.slot_number());
            }
        } else if pcie.contains(&at) {
            let irq = self.pcie.write(at - pcie.start, data);
            self.signal(irq);
        }
        Vec::new()
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
    use crate::pci::hotplug_slot::{
        SLTCTL_ABPE, SLTCTL_CCIE, SLTCTL_DLLSCE, SLTCTL_HPIE, SLTSTA_ABP, SLTSTA_CC,
    };
    use crate::pci::interrupt::test_utils::RecordingInterruptGroup;

    fn windows() -> RootPortWindows {
        RootPortWindows {
            mem: 0xd000_0000..0xd080_0000,
            pref: 0x80_0000_0000..0x80_4000_0000,
        }
    }

    fn port() -> (RootPort, Arc<RecordingInterruptGroup>) {
        let group = Arc::new(RecordingInterruptGroup::new(1));
        (
            RootPort::new(1, 1, &windows(), false, group.clone()).unwrap(),
            group,
        )
    }

    fn w32(p: &mut RootPort, offset: usize, v: u32) {
        p.config_write(offset / 4, 0, &v.to_le_bytes());
    }

    /// Walks the capability list as a guest does.
    fn find_cap(p: &mut RootPort, id: u8) -> usize {
        let mut ptr = (p.config_read(0x34 / 4) & 0xfc) as usize;
        while ptr != 0 {
            let dw = p.config_read(ptr / 4);
            if dw as u8 == id {
                return ptr;
            }
            ptr = (dw >> 8 & 0xfc) as usize;
        }
        panic!("capability {id:#x} not found");
    }

    #[test]
    fn header_is_a_bridge_with_programmed_buses_and_windows() {
        let (mut p, _) = port();
        assert_eq!(p.config_read(0), 0x000c_1b36);
        assert_eq!(p.config_read(2) >> 8, 0x06_0400);
        assert_eq!(p.config_read(3) >> 16 & 0x7f, 1, "type 1 header");
        assert_eq!(p.buses(), (0, 1, 1));
        assert_eq!(p.windows(), windows());
        assert_eq!(p.config_read(0x24 / 4) & 0xf, 1, "64-bit prefetchable");
        // No I/O window: the registers stay 0 whatever the guest writes.
        p.config_write(0x1c / 4, 0, &[0xf0, 0xe0]);
        assert_eq!(p.config_read(0x1c / 4), 0);
        // No BARs.
        w32(&mut p, 0x10, u32::MAX);
        assert_eq!(p.config_read(4), 0);
        assert!(p.bars().is_empty());
    }

    #[test]
    fn bus_numbers_and_windows_are_writable() {
        let (mut p, _) = port();
        w32(&mut p, 0x18, 0x00_05_03_00);
        assert_eq!(p.buses(), (0, 3, 5));
        assert!(p.forwards(3) && p.forwards(5));
        assert!(!p.forwards(2) && !p.forwards(6) && !p.forwards(0));
        // Byte write of the subordinate bus only.
        p.config_write(0x18 / 4, 2, &[4]);
        assert_eq!(p.buses(), (0, 3, 4));
        // Secondary 0 (unprogrammed) forwards nothing.
        w32(&mut p, 0x18, 0);
        assert!(!p.forwards(0) && !p.forwards(1));

        w32(&mut p, 0x20, 0xc01f_c010);
        assert_eq!(p.windows().mem, 0xc010_0000..0xc020_0000);
        w32(&mut p, 0x24, 0xffff_ffff);
        w32(&mut p, 0x28, 0x1);
        w32(&mut p, 0x2c, 0x1);
        assert_eq!(
            p.config_read(0x24 / 4),
            0xfff1_fff1,
            "low nibbles read-only"
        );
        assert_eq!(p.windows().pref, 0x1_fff0_0000..0x2_0000_0000);
        // A window up to the top of the address space does not overflow.
        w32(&mut p, 0x28, u32::MAX);
        w32(&mut p, 0x2c, u32::MAX);
        assert_eq!(p.windows().pref.end, u64::MAX);
        // Base above limit: the window is closed.
        w32(&mut p, 0x20, 0x0000_fff0);
        assert!(p.windows().mem.is_empty());
        // Straddling and oversize writes are ignored.
        p.config_write(0x18 / 4, 3, &[1, 2]);
        p.config_write(0x18 / 4, 0, &[1, 2, 3, 4, 5]);
        assert_eq!(p.config_read(0x18 / 4), 0);
        assert_eq!(p.config_read(1024), u32::MAX);
    }

    #[test]
    fn bad_windows_are_refused() {
        let group = Arc::new(RecordingInterruptGroup::new(1));
        let mut w = windows();
        w.mem = 0x1_0000_0000..0x1_0010_0000;
        let err = RootPort::new(1, 1, &w, false, group.clone()).unwrap_err();
        assert!(err.to_string().contains("below 4 GiB"), "{err}");
        let mut w = windows();
        w.pref = 0x80_0000_1000..0x80_4000_0000;
        assert!(RootPort::new(1, 1, &w, false, group).is_err());
    }

    #[test]
    fn slot_events_go_out_as_msi() {
        let (mut p, group) = port();
        let msi = find_cap(&mut p, PCI_CAP_ID_MSI);
        let exp = find_cap(&mut p, PCI_CAP_ID_EXP);
        assert_eq!((msi, exp), (0x40, 0x50));
        // The guest's port driver: MSI address/data, enable.
        w32(&mut p, msi + 4, 0xfee0_0000);
        w32(&mut p, msi + 12, 0x30);
        p.config_write((msi + 2) / 4, 2, &[1]);
        assert!(p.msi_enabled());
        let updates = group.take_updates();
        assert_eq!(updates.last().map(|u| u.2), Some(false), "route installed");
        // pciehp enables notification: the command completes with an interrupt.
        let ctl = SLTCTL_ABPE | SLTCTL_CCIE | SLTCTL_HPIE | SLTCTL_DLLSCE;
        p.config_write((exp + 0x18) / 4, 0, &ctl.to_le_bytes());
        assert_eq!(group.take_triggers(), vec![0]);
        let status = (p.config_read((exp + 0x18) / 4) >> 16) as u16;
        assert_eq!(status & SLTSTA_CC, SLTSTA_CC);
        p.config_write((exp + 0x18) / 4, 2, &SLTSTA_CC.to_le_bytes());
        // The VMM hot-adds: card, button -> one MSI.
        p.insert();
        p.press_button();
        assert_eq!(group.take_triggers(), vec![0]);
        let status = (p.config_read((exp + 0x18) / 4) >> 16) as u16;
        assert_ne!(status & SLTSTA_ABP, 0);
        // With MSI disabled, events are dropped (the status bits stay).
        p.config_write((exp + 0x18) / 4, 2, &SLTSTA_ABP.to_le_bytes());
        p.config_write((msi + 2) / 4, 2, &[0]);
        p.press_button();
        assert!(group.take_triggers().is_empty());
        assert!(p.slot().present());
    }
}
