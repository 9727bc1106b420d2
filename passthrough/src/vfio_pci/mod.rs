//! [`VfioPciFunction`]: a passed-through PCI function on the VMM's PCI root, implementing
//! the devices crate's [`PciDevice`] over a [`VfioDevice`].
//!
//! - `config`: the guest's view of the config space (virtualized header and BARs, the
//!   capability list filtered; see its docs for exactly what is passed, emulated, hidden).
//! - `bars`: which BAR parts the guest reaches through memory slots over mmapped device
//!   memory and which are trapped (the MSI-X table and PBA pages always are).
//! - `msix` / `msi`: the emulated interrupt capabilities and the binding of the device's
//!   vectors to the KVM irqfds of the caller's interrupt group.
//!
//! Setup reads the device's config space and region layout, disables INTx on the device
//! (and keeps it disabled), maps the mappable BAR parts, and asks the caller for an
//! interrupt group sized for the device's MSI-X table (or one vector for MSI). Devices
//! with neither MSI-X nor MSI are refused (INTx is not supported).
//!
//! Guest command-register writes are forwarded for the I/O, memory and bus-master bits;
//! turning memory decode off removes the BARs' memory slots before the device stops
//! decoding. BAR moves the PCI root applied come back through [`VfioPciFunction::bar_moved`]
//! (called from the root's BAR-move callback), which moves the memory slots.
//!
//! Lock order: the PCI root -> this function -> the caller's `GuestMemslots` and interrupt
//! group; neither may lock the root or the function.
//!
//! Not here: reset, binding, KVM's VFIO device (see [`crate::PassthroughDevice`]), INTx,
//! the expansion ROM, extended capabilities, VGA, migration.

pub mod bars;
pub mod config;
pub mod msi;
pub mod msix;

use std::sync::Arc;

use devices::pci::{
    BarReprogram, MsiInterruptGroup, MsixError, PciBar, PciBarConfig, PciBarKind, PciConfigError,
    PciConfiguration, PciDevice, PciIds,
};

use crate::hypervisor::GuestMemslots;
use crate::iova::HostVirtAddr;
use crate::vfio_device::{
    VfioDevice, VfioDeviceError, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
};
use bars::Bars;
use config::{ByteOwner, CapHandling, DeviceCapability, VirtualConfig, CAP_ID_MSI, CAP_ID_MSIX};
use msi::MsiGlue;
use msix::MsixGlue;

const COMMAND: usize = 0x04;
const COMMAND_IO: u16 = 1 << 0;
const COMMAND_MEMORY: u16 = 1 << 1;
const COMMAND_BUS_MASTER: u16 = 1 << 2;
const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Dword registers of the type 0 header.
const HEADER_REGS: usize = 16;
/// Dword registers of the conventional config space.
const CONFIG_REGS: usize = 64;
/// Dword registers reachable through ECAM.
const EXTENDED_REGS: usize = 1024;

/// Makes the interrupt group of a function: called once at setup with the number of
/// vectors (the MSI-X table size, or 1 for MSI). The VMM's interrupt manager allocates one
/// GSI and irqfd per vector.
pub type InterruptGroupFactory<'a> = dyn FnMut(u16) -> Result<Arc<dyn MsiInterruptGroup>, Box<dyn std::error::Error + Send + Sync>>
    + 'a;

/// How a [`VfioPciFunction`] is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciFunctionOptions {
    /// Host page size: the granularity of memory slots over BARs.
    pub page_size: u64,
    /// Whether I/O BARs are exposed. Off for VMs without a PCI I/O window (aarch64):
    /// the guest then sees no such BAR (a transitional virtio device's legacy BAR, say).
    pub io_bars: bool,
}

impl Default for PciFunctionOptions {
    fn default() -> Self {
        PciFunctionOptions {
            page_size: crate::sys::host_page_size(),
            io_bars: true,
        }
    }
}

/// Errors setting up a passed-through function.
#[derive(Debug, thiserror::Error)]
pub enum VfioPciError {
    /// A VFIO call failed.
    #[error("{what}: {source}")]
    Device {
        /// What was being done.
        what: String,
        /// The failure.
        source: VfioDeviceError,
    },
    /// A BAR the guest's config space cannot describe.
    #[error("BAR {bar} ({size:#x} bytes) cannot be presented to the guest: {source}; this device cannot be passed through")]
    Bar {
        /// BAR index.
        bar: usize,
        /// Region size.
        size: u64,
        /// Why.
        source: PciConfigError,
    },
    /// The guest's config space cannot be built.
    #[error("cannot build the guest's view of the config space: {0}; this device cannot be passed through")]
    Config(PciConfigError),
    /// No MSI-X and no MSI.
    #[error(
        "the device has neither MSI-X nor MSI; only INTx, which this VMM does not support \
         for passthrough: pass a device with MSI or MSI-X"
    )]
    NoMsi,
    /// The MSI-X capability is unusable.
    #[error("the device's MSI-X capability is unusable ({source}); this device cannot be passed through")]
    Msix {
        /// Why.
        source: MsixError,
    },
    /// The MSI-X table or PBA lies outside its BAR.
    #[error(
        "the device's MSI-X {what} at {offset:#x}+{len:#x} lies outside BAR {bar} \
         ({bar_size:#x} bytes); this device cannot be passed through"
    )]
    MsixOutsideBar {
        /// "table" or "PBA".
        what: &'static str,
        /// The BAR.
        bar: usize,
        /// Offset in it.
        offset: u64,
        /// Length.
        len: u64,
        /// The BAR's size.
        bar_size: u64,
    },
    /// The caller could not make the interrupt group.
    #[error("cannot set up {vectors} interrupt vectors for the device: {source}")]
    InterruptGroup {
        /// Vectors asked for.
        vectors: u16,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The function's interrupt capability.
#[derive(Debug)]
enum Interrupts {
    Msix(MsixGlue),
    Msi(MsiGlue),
}

/// A passed-through PCI function. See the module docs.
///
/// Field order is drop order: `bars` (memory slots, then mmaps) goes before `device`.
pub struct VfioPciFunction {
    name: String,
    config: VirtualConfig,
    bars: Bars,
    irq: Interrupts,
    /// `None` once [`VfioPciFunction::shutdown`] took it.
    device: Option<Box<dyn VfioDevice>>,
}

impl std::fmt::Debug for VfioPciFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioPciFunction")
            .field("name", &self.name)
            .field("bars", &self.bars)
            .field("irq", &self.irq)
            .field("open", &self.device.is_some())
            .finish_non_exhaustive()
    }
}

fn dev_err(what: impl Into<String>) -> impl FnOnce(VfioDeviceError) -> VfioPciError {
    let what = what.into();
    move |source| VfioPciError::Device { what, source }
}

/// The BARs to expose: kind from the device's BAR register, size from the region.
fn discover_bars(
    device: &dyn VfioDevice,
    header: &[u8],
    options: &PciFunctionOptions,
) -> Result<Vec<(PciBarConfig, crate::vfio_device::RegionInfo)>, VfioPciError> {
    let mut out = Vec::new();
    let mut index = 0;
    while index < 6 {
        let at = 0x10 + 4 * index;
        let low = u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
        let region = device
            .region_info(index as u32)
            .map_err(dev_err(format!("querying BAR {index}")))?;
        let kind = if low & 1 != 0 {
            PciBarKind::Io
        } else if low & 0b110 == 0b100 {
            PciBarKind::Memory64
        } else {
            PciBarKind::Memory32
        };
        let slots = if kind == PciBarKind::Memory64 { 2 } else { 1 };
        let exposed = region.size > 0 && (kind != PciBarKind::Io || options.io_bars);
        if exposed {
            out.push((
                PciBarConfig {
                    index,
                    kind,
                    size: region.size,
                    prefetchable: kind != PciBarKind::Io && low & 0b1000 != 0,
                },
                region,
            ));
        }
        index += slots;
    }
    Ok(out)
}

impl VfioPciFunction {
    /// Sets up the guest's view of `device` (bound to an iommufd, so its regions answer).
    /// `name` prefixes log messages. On failure the device is handed back with the error,
    /// for the caller to tear down.
    pub fn new(
        name: &str,
        device: Box<dyn VfioDevice>,
        groups: &mut InterruptGroupFactory<'_>,
        memslots: Arc<dyn GuestMemslots>,
        options: &PciFunctionOptions,
    ) -> Result<VfioPciFunction, (VfioPciError, Box<dyn VfioDevice>)> {
        match Self::build(name, &*device, groups, memslots, options) {
            Ok((config, bars, irq)) => Ok(VfioPciFunction {
                name: name.to_string(),
                config,
                bars,
                irq,
                device: Some(device),
            }),
            Err(e) => Err((e, device)),
        }
    }

    fn build(
        name: &str,
        device: &dyn VfioDevice,
        groups: &mut InterruptGroupFactory<'_>,
        memslots: Arc<dyn GuestMemslots>,
        options: &PciFunctionOptions,
    ) -> Result<(VirtualConfig, Bars, Interrupts), VfioPciError> {
        let mut header = [0u8; 256];
        device
            .read(VFIO_PCI_CONFIG_REGION_INDEX, 0, &mut header)
            .map_err(dev_err("reading the config space"))?;
        let bars = discover_bars(device, &header, options)?;
        let declared: Vec<PciBarConfig> = bars.iter().map(|b| b.0).collect();
        for b in &declared {
            PciConfiguration::new(&PciIds::default())
                .add_bar(*b)
                .map_err(|source| VfioPciError::Bar {
                    bar: b.index,
                    size: b.size,
                    source,
                })?;
        }
        let config = VirtualConfig::new(&header, &declared).map_err(VfioPciError::Config)?;
        let bar_size = |index: usize| declared.iter().find(|b| b.index == index).map(|b| b.size);
        let (irq, traps) = if let Some(cap) = config.emulated(CAP_ID_MSIX) {
            let layout =
                msix::layout_from_capability(&header[cap.offset..]).ok_or(VfioPciError::NoMsi)?;
            let count = device
                .irq_info(VFIO_PCI_MSIX_IRQ_INDEX)
                .map_err(dev_err("querying the MSI-X vectors"))?
                .count;
            let group = groups(layout.vectors).map_err(|source| VfioPciError::InterruptGroup {
                vectors: layout.vectors,
                source,
            })?;
            let glue = MsixGlue::new(layout, group, count)
                .map_err(|source| VfioPciError::Msix { source })?;
            let traps = glue.traps();
            for ((bar, range), what) in traps.iter().zip(["table", "PBA"]) {
                let size = bar_size(*bar).unwrap_or(0);
                if range.end > size {
                    return Err(VfioPciError::MsixOutsideBar {
                        what,
                        bar: *bar,
                        offset: range.start,
                        len: range.end - range.start,
                        bar_size: size,
                    });
                }
            }
            (Interrupts::Msix(glue), traps.to_vec())
        } else if let Some(cap) = config.emulated(CAP_ID_MSI) {
            let control = u16::from_le_bytes([header[cap.offset + 2], header[cap.offset + 3]]);
            let group =
                groups(1).map_err(|source| VfioPciError::InterruptGroup { vectors: 1, source })?;
            (Interrupts::Msi(MsiGlue::new(control, group)), Vec::new())
        } else {
            return Err(VfioPciError::NoMsi);
        };
        // INTx stays disabled on the device from now on; decode and DMA off until the
        // guest turns them on.
        let mut cmd = [0u8; 2];
        device
            .read(VFIO_PCI_CONFIG_REGION_INDEX, COMMAND as u64, &mut cmd)
            .map_err(dev_err("reading the command register"))?;
        let cmd = u16::from_le_bytes(cmd) & !(COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER);
        device
            .write(
                VFIO_PCI_CONFIG_REGION_INDEX,
                COMMAND as u64,
                &(cmd | COMMAND_INTX_DISABLE).to_le_bytes(),
            )
            .map_err(dev_err("disabling INTx in the command register"))?;
        let bars = Bars::new(name, device, &bars, &traps, options.page_size, memslots);
        Ok((config, bars, irq))
    }

    /// The name given at setup.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's capabilities and what the guest gets of each.
    pub fn capabilities(&self) -> &[DeviceCapability] {
        self.config.capabilities()
    }

    /// The mmapped parts of BAR `bar`: (offset in the BAR, length, host address).
    pub fn mmap_areas(&self, bar: usize) -> Vec<(u64, u64, HostVirtAddr)> {
        self.bars.areas(bar)
    }

    /// Number of guest memory slots over BARs right now.
    pub fn memslot_count(&self) -> usize {
        self.bars.slot_count()
    }

    /// Whether the device's MSI-X or MSI vectors are connected to the interrupt group.
    pub fn interrupts_bound(&self) -> bool {
        match &self.irq {
            Interrupts::Msix(m) => m.bound(),
            Interrupts::Msi(m) => m.bound(),
        }
    }

    /// Follows a BAR move the PCI root applied (call from its BAR-move callback for this
    /// function's address): moves the BAR's memory slots.
    pub fn bar_moved(&mut self, change: &BarReprogram) {
        if self.device.is_some() {
            self.bars.moved(change);
        }
    }

    /// Disconnects the interrupts, removes the memory slots and unmaps the BARs, and hands
    /// the device back (for reset and unbinding). The function then reads all-ones and
    /// ignores writes. `None` if already shut down.
    pub fn shutdown(&mut self) -> Option<Box<dyn VfioDevice>> {
        let device = self.device.take()?;
        match &mut self.irq {
            Interrupts::Msix(m) => m.unbind(&*device, &self.name),
            Interrupts::Msi(m) => m.unbind(&*device, &self.name),
        }
        self.bars.release();
        Some(device)
    }

    /// Forwards the guest's I/O, memory and bus-master bits to the device, INTx disabled.
    fn forward_command(&mut self, device: &dyn VfioDevice, before: u16) {
        let guest = self.config.shadow().command();
        let bits = COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER;
        if guest & bits == before & bits {
            return;
        }
        if before & COMMAND_MEMORY != 0 && guest & COMMAND_MEMORY == 0 {
            // The device stops decoding: the guest must not reach it through slots.
            self.bars.unmap_all();
        }
        let mut cmd = [0u8; 2];
        let at = COMMAND as u64;
        let result = device
            .read(VFIO_PCI_CONFIG_REGION_INDEX, at, &mut cmd)
            .and_then(|()| {
                let cmd = u16::from_le_bytes(cmd) & !bits | guest & bits | COMMAND_INTX_DISABLE;
                device.write(VFIO_PCI_CONFIG_REGION_INDEX, at, &cmd.to_le_bytes())
            });
        if let Err(e) = result {
            log::warn!("{}: cannot forward the command register: {e}", self.name);
        }
    }

    /// The guest-visible byte at `offset` of the capability area, reading passed bytes
    /// from the device.
    fn cap_byte(&self, device: &dyn VfioDevice, offset: usize) -> u8 {
        match self.config.owner(offset) {
            ByteOwner::None => 0,
            ByteOwner::Header { value, .. } => value,
            ByteOwner::Body { cap, rel } => {
                let c = self.config.capabilities()[cap];
                match (c.handling, &self.irq) {
                    (CapHandling::Emulated, Interrupts::Msix(m)) if c.id == CAP_ID_MSIX => {
                        m.capability_body().get(rel - 2).copied().unwrap_or(0)
                    }
                    (CapHandling::Emulated, Interrupts::Msi(m)) if c.id == CAP_ID_MSI => {
                        m.capability().get(rel).copied().unwrap_or(0)
                    }
                    (CapHandling::Passed, _) => {
                        let mut b = [0u8; 1];
                        match device.read(VFIO_PCI_CONFIG_REGION_INDEX, offset as u64, &mut b) {
                            Ok(()) => b[0],
                            Err(e) => {
                                log::debug!("{}: config read at {offset:#x}: {e}", self.name);
                                0xff
                            }
                        }
                    }
                    _ => 0,
                }
            }
        }
    }

    /// Applies a guest write to the capability area, run by run of one owner.
    fn write_caps(&mut self, device: &dyn VfioDevice, start: usize, data: &[u8]) {
        let mut i = 0;
        while i < data.len() {
            let owner = self.config.owner(start + i);
            let cap = match owner {
                ByteOwner::Header { cap, .. } | ByteOwner::Body { cap, .. } => Some(cap),
                ByteOwner::None => None,
            };
            let mut j = i + 1;
            while j < data.len() && owner_cap(self.config.owner(start + j)) == cap {
                j += 1;
            }
            if let Some(cap) = cap {
                self.write_cap(device, cap, start + i, &data[i..j]);
            }
            i = j;
        }
    }

    fn write_cap(&mut self, device: &dyn VfioDevice, cap: usize, at: usize, data: &[u8]) {
        let c = self.config.capabilities()[cap];
        let rel = at - c.offset;
        match (c.handling, &mut self.irq) {
            (CapHandling::Emulated, Interrupts::Msix(m)) if c.id == CAP_ID_MSIX => {
                m.write_capability(rel, data, device, &self.name)
            }
            (CapHandling::Emulated, Interrupts::Msi(m)) if c.id == CAP_ID_MSI => {
                m.write_capability(rel, data, device, &self.name)
            }
            (CapHandling::Passed, _) => {
                for r in self.config.device_writable(cap, at..at + data.len()) {
                    let bytes = &data[r.start - at..r.end - at];
                    if let Err(e) =
                        device.write(VFIO_PCI_CONFIG_REGION_INDEX, r.start as u64, bytes)
                    {
                        log::debug!("{}: config write at {:#x}: {e}", self.name, r.start);
                    }
                }
            }
            _ => {}
        }
    }
}

fn owner_cap(o: ByteOwner) -> Option<usize> {
    match o {
        ByteOwner::Header { cap, .. } | ByteOwner::Body { cap, .. } => Some(cap),
        ByteOwner::None => None,
    }
}

impl PciDevice for VfioPciFunction {
    fn config_read(&mut self, reg_idx: usize) -> u32 {
        let Some(device) = self.device.as_deref() else {
            return u32::MAX;
        };
        match reg_idx {
            r if r < HEADER_REGS => self.config.shadow().read_reg(r),
            r if r < CONFIG_REGS => {
                let b: Vec<u8> = (0..4).map(|i| self.cap_byte(device, r * 4 + i)).collect();
                u32::from_le_bytes([b[0], b[1], b[2], b[3]])
            }
            r if r < EXTENDED_REGS => 0,
            _ => u32::MAX,
        }
    }

    fn config_write(&mut self, reg_idx: usize, offset: u64, data: &[u8]) -> Vec<BarReprogram> {
        let Some(device) = self.device.take() else {
            return Vec::new();
        };
        let in_dword =
            offset < 4 && !data.is_empty() && (offset as usize).saturating_add(data.len()) <= 4;
        let mut changes = Vec::new();
        if in_dword && reg_idx < HEADER_REGS {
            let before = self.config.shadow().command();
            changes = self.config.write_header(reg_idx, offset, data);
            if reg_idx == COMMAND / 4 && offset < 2 {
                self.forward_command(&*device, before);
            }
        } else if in_dword && reg_idx < CONFIG_REGS {
            self.write_caps(&*device, reg_idx * 4 + offset as usize, data);
        }
        self.device = Some(device);
        changes
    }

    fn bars(&self) -> Vec<PciBar> {
        self.config.shadow().bars()
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if let Interrupts::Msix(m) = &self.irq {
            if m.bar_read(bar, offset, data) {
                return;
            }
        }
        let Some(device) = self.device.as_deref() else {
            data.fill(0xff);
            return;
        };
        if let Err(e) = device.read(bar as u32, offset, data) {
            log::debug!("{}: BAR {bar} read at {offset:#x}: {e}", self.name);
            data.fill(0xff);
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if let Interrupts::Msix(m) = &mut self.irq {
            if m.bar_write(bar, offset, data) {
                return;
            }
        }
        let Some(device) = self.device.as_deref() else {
            return;
        };
        if let Err(e) = device.write(bar as u32, offset, data) {
            log::debug!("{}: BAR {bar} write at {offset:#x}: {e}", self.name);
        }
    }
}

impl Drop for VfioPciFunction {
    fn drop(&mut self) {
        // Disconnect interrupts and slots while the device is still open.
        drop(self.shutdown());
    }
}

#[cfg(test)]
mod tests;
