//! PCIe hotplug of passthrough devices: [`PciHotplug`] implements [`DeviceHotplug`] on the
//! root ports of the PCI segment.
//!
//! Add, in order; a refusal before step 4 touches nothing, a failure after it undoes what
//! was done:
//!
//! 1. check the request: no nested translation (`iommu`), a valid and unused id, a
//!    free slot, and a guest that enabled hotplug on it (its port driver set up MSI and
//!    the slot's interrupts);
//! 2. locate the device and probe its host ranges (IOVA ranges with the device attached to
//!    a scratch IOAS, reserved regions);
//! 3. check them against guest RAM already placed: a reserved region inside RAM, or RAM
//!    outside the ranges, is a Conflict naming the range and the device;
//! 4. for the first passthrough device make the IOAS and map guest RAM into it, guarded
//!    with `IOMMU_IOAS_ALLOW_IOVAS`; attach the device through the VM's one passthrough path
//!    ([`Passthrough::attach`]: `KVM_DEV_VFIO_FILE_ADD`, bind, attach, reset, the function
//!    with its MSI/MSI-X group); put the function behind the port;
//! 5. presence detect, then the attention button (unless the guest acts on presence
//!    changes itself); answer once the guest has powered the slot on and lit its power
//!    indicator, or undo everything after the add timeout.
//!
//! Remove: the attention button; wait until the guest powers the slot off (its driver has
//! let go), else answer NotReady and leave the device in place. Then tear down in the
//! reverse order: the function leaves the port (its BARs leave the bus and their memory
//! slots go), the passthrough crate's teardown (VFIO IRQs off, BAR mmaps and memory slots,
//! the MSI group with its routes, irqfds and GSIs, reset, detach, unbind, KVM file, close),
//! and with the last device the RAM mappings and the IOAS. Then presence is cleared.
//! [`PciHotplug::surprise_remove`] skips the guest's part.
//!
//! Waiting polls the slot registers; the guest's writes reach them from the vCPU threads.
//!
//! What this module does not do: nested translation for hot-added devices (only
//! cold-plugged `iommu=on` devices sit behind the vSMMU), more than one function per slot,
//! and hot-add of emulated devices.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use devices::pci::{MsiInterruptGroup, PciBdf, PciRoot, RootPort};
use passthrough::device_spec::{DeviceSpec, LocatedDevice};
use passthrough::memory_map::DeviceRanges;
use passthrough::passthrough_device::PassthroughError;
use passthrough::IovaRange;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::device_hotplug::{AddDevice, DeviceHotplug, DeviceInfo, HotplugFault, HotplugFaultKind};
use crate::interrupts::InterruptManager;
use crate::vfio::{AttachedDevice, DeviceSource, Passthrough, VfioError};

/// How long hotplug waits for the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HotplugTimeouts {
    /// For the guest to power a new device's slot on. Linux waits 5 s after the button
    /// press (the abort window) before it powers on.
    pub add: Duration,
    /// For the guest to release a device and power its slot off (5 s abort window, driver
    /// unbind, 1 s after power-off).
    pub remove: Duration,
    /// Between looks at the slot.
    pub poll: Duration,
    /// After the guest powered a slot off, for it to finish (power indicator off). Linux
    /// ignores a presence change within a second of the power-off; a device added back
    /// in that second would wait out the 5 s button delay instead of coming at once.
    pub settle: Duration,
}

impl Default for HotplugTimeouts {
    fn default() -> Self {
        HotplugTimeouts {
            add: Duration::from_secs(20),
            remove: Duration::from_secs(30),
            poll: Duration::from_millis(10),
            settle: Duration::from_secs(3),
        }
    }
}

/// Hot-add and removal of passthrough devices on the root ports. See the module docs.
pub struct PciHotplug {
    root: Arc<Mutex<PciRoot>>,
    passthrough: Arc<Mutex<Passthrough>>,
    irq: Arc<InterruptManager>,
    mem: GuestMemoryMmap,
    source: Box<dyn DeviceSource>,
    msi_devid: bool,
    timeouts: HotplugTimeouts,
}

fn fault(kind: HotplugFaultKind, message: impl Into<String>) -> HotplugFault {
    HotplugFault::new(kind, message)
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Longest id accepted.
const MAX_ID_LEN: usize = 64;

/// Why an id is not acceptable, if it is not.
fn check_id(id: &str) -> Option<&'static str> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Some("ids have 1 to 64 characters");
    }
    let ok = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    (!ok).then_some("ids use letters, digits and - _ . : only")
}

/// Why `ranges` cannot be used with guest RAM `ram` ((GPA, bytes) regions), if they cannot.
pub fn ram_conflict(ranges: &DeviceRanges, ram: &[(u64, u64)]) -> Option<String> {
    for &(gpa, size) in ram {
        let Some(region) = IovaRange::from_start_len(gpa, size) else {
            continue;
        };
        for r in ranges
            .reserved
            .iter()
            .filter(|r| r.kind.enforced_by_iommufd())
        {
            if region.intersection(&r.range).is_some() {
                return Some(format!(
                    "its reserved IOVA region {} {} lies in guest RAM [{gpa:#x}, +{size:#x})",
                    r.kind, r.range
                ));
            }
        }
        if let Some(allowed) = &ranges.iova_ranges {
            if !allowed
                .iter()
                .any(|a| a.intersection(&region) == Some(region))
            {
                let list = allowed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                return Some(format!(
                    "guest RAM [{gpa:#x}, +{size:#x}) lies outside the IOVA ranges its IOMMU \
                     can translate ({list})"
                ));
            }
        }
    }
    None
}

/// The kind of a failed passthrough step: what the host or device refused is the user's to
/// fix (Conflict for RAM collisions, BadRequest for a bad path), the rest Internal.
fn classify(e: &VfioError) -> HotplugFaultKind {
    match e {
        VfioError::Spec(_) | VfioError::NotFound(_) => HotplugFaultKind::BadRequest,
        VfioError::Device(PassthroughError::ReservedCollision { .. })
        | VfioError::Device(PassthroughError::Duplicate { .. }) => HotplugFaultKind::Conflict,
        VfioError::Device(PassthroughError::Open { .. }) => HotplugFaultKind::BadRequest,
        _ => HotplugFaultKind::Internal,
    }
}

impl PciHotplug {
    /// Hotplug on the root ports of `root`; devices come from `source` and join
    /// `passthrough` (shared with the PCI segment, which holds the cold-plugged ones).
    pub fn new(
        root: Arc<Mutex<PciRoot>>,
        passthrough: Arc<Mutex<Passthrough>>,
        irq: Arc<InterruptManager>,
        mem: GuestMemoryMmap,
        source: Box<dyn DeviceSource>,
        msi_devid: bool,
        timeouts: HotplugTimeouts,
    ) -> Self {
        PciHotplug {
            root,
            passthrough,
            irq,
            mem,
            source,
            msi_devid,
            timeouts,
        }
    }

    /// One line of what the VM holds for passthrough now; the rig's hotplug scenario
    /// compares it across add/remove cycles.
    fn usage(&self) -> String {
        let (devices, (memslots, allowed)) = {
            let p = lock(&self.passthrough);
            (p.len(), p.usage())
        };
        format!(
            "in use: {} devices, {} MSI GSIs, {} KVM routes, {} BAR memslots, {} allowed IOVA ranges",
            devices,
            self.irq.gsis_in_use(),
            self.irq.routes().len(),
            memslots.map_or_else(|| "?".to_string(), |n| n.to_string()),
            allowed
        )
    }

    fn ram(&self) -> Vec<(u64, u64)> {
        self.mem
            .iter()
            .map(|r| (r.start_addr().0, r.len()))
            .collect()
    }

    fn port(&self, index: usize) -> Result<(Arc<Mutex<RootPort>>, PciBdf), HotplugFault> {
        let root = lock(&self.root);
        match (root.port(index), root.port_bdf(index)) {
            (Some(p), Some(b)) => Ok((p, b)),
            _ => Err(fault(
                HotplugFaultKind::Internal,
                format!("root port {index} vanished"),
            )),
        }
    }

    /// Polls port `port` until `done` holds or `timeout` passes.
    fn wait(
        &self,
        port: &Mutex<RootPort>,
        timeout: Duration,
        done: impl Fn(&RootPort) -> bool,
    ) -> bool {
        let start = Instant::now();
        loop {
            if done(&lock(port)) {
                return true;
            }
            if start.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(self.timeouts.poll);
        }
    }

    /// Takes the device out of port `index` and tears it down (see the module docs).
    fn tear_down(&mut self, index: usize, id: &str) {
        let out = lock(&self.root).unplug(index);
        drop(out);
        let mut pt = lock(&self.passthrough);
        let dev = pt.remove(id);
        drop(dev);
        pt.release_if_idle();
    }

    /// Steps 2 to 4 of an add (module docs): the attached device, not yet announced.
    fn attach(
        &mut self,
        spec: &DeviceSpec,
        id: &str,
        index: usize,
        guest_bdf: PciBdf,
    ) -> Result<(), HotplugFault> {
        let located: LocatedDevice = self
            .source
            .locate(spec)
            .map_err(|e| fault(classify(&e), format!("device {id}: {e}")))?;
        let mut pt = lock(&self.passthrough);
        if let Some(d) = pt
            .devices()
            .iter()
            .find(|d| d.device.bdf() == located.pci.bdf)
        {
            return Err(fault(
                HotplugFaultKind::Conflict,
                format!(
                    "host device {} is passed through already, as {}",
                    located.pci.bdf, d.id
                ),
            ));
        }
        let iommufd = match pt.iommufd() {
            Some(fd) => fd.clone(),
            None => {
                let fd = self
                    .source
                    .iommufd(std::slice::from_ref(&located))
                    .map_err(|e| fault(HotplugFaultKind::Internal, e.to_string()))?;
                pt.use_iommufd(fd.clone());
                fd
            }
        };
        let ranges = self
            .source
            .probe(&iommufd, &located)
            .map_err(|e| fault(classify(&e), format!("device {id}: {e}")))?;
        if let Some(why) = ram_conflict(&ranges, &self.ram()) {
            return Err(fault(
                HotplugFaultKind::Conflict,
                format!(
                    "device {id} ({}): {why}; it cannot be hot-added to this VM: give it with \
                     --device at start, where guest RAM is planned around it",
                    located.pci.bdf
                ),
            ));
        }

        // The first device's IOAS gets guest RAM, guarded, before any device is attached.
        pt.map_ram(&self.mem, &format!("device {id}"))
            .map_err(|e| fault(HotplugFaultKind::Internal, e.to_string()))?;
        let devid = self.msi_devid.then(|| u32::from(guest_bdf.requester_id()));
        let irq = self.irq.clone();
        let mut groups = |n: u16| {
            irq.msi_group(n, devid)
                .map(|g| Arc::new(g) as Arc<dyn MsiInterruptGroup>)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        };
        let (device, function) = pt
            .attach(&located, self.source.opener(), &mut groups)
            .map_err(|e| fault(classify(&e), e.to_string()))?;
        let (key, plugged) = {
            let mut root = lock(&self.root);
            (root.port_bdf(index), root.plug(index, function.clone()))
        };
        let (Some(key), Ok(())) = (key, plugged) else {
            drop(device);
            pt.release_if_idle();
            return Err(fault(
                HotplugFaultKind::Conflict,
                format!("hotplug slot {} was taken meanwhile; try again", index + 1),
            ));
        };
        pt.adopt(AttachedDevice {
            id: id.to_string(),
            path: spec.path.clone(),
            key,
            guest_bdf,
            port: Some(index),
            iommu: false,
            device,
            function,
        });
        Ok(())
    }

    /// Removes device `id` without asking the guest: the card vanishes from its slot (the
    /// link goes down, as when a card is pulled) and the device is torn down at once. For
    /// a guest that does not answer the attention button.
    pub fn surprise_remove(&mut self, id: &str) -> Result<(), HotplugFault> {
        let index = self.hotplugged(id)?;
        let (port, _) = self.port(index)?;
        lock(&port).eject();
        self.tear_down(index, id);
        log::info!(
            "hotplug: device {id} surprise-removed from slot {}",
            index + 1
        );
        Ok(())
    }

    /// The port of hot-plugged device `id`.
    fn hotplugged(&self, id: &str) -> Result<usize, HotplugFault> {
        let pt = lock(&self.passthrough);
        let dev = pt.devices().iter().find(|d| d.id == id).ok_or_else(|| {
            fault(
                HotplugFaultKind::NotFound,
                format!("no device with id {id}"),
            )
        })?;
        dev.port.ok_or_else(|| {
            fault(
                HotplugFaultKind::Conflict,
                format!(
                    "device {id} was given at start and is not on a hotplug slot: it cannot be removed"
                ),
            )
        })
    }
}

impl DeviceHotplug for PciHotplug {
    fn add_device(&mut self, request: AddDevice) -> Result<DeviceInfo, HotplugFault> {
        if request.iommu {
            return Err(fault(
                HotplugFaultKind::BadRequest,
                "hot-adding a device behind the vSMMU (iommu=on) is not supported: only \
                 devices given with --device at start sit behind it; add it without iommu, \
                 or give it at start",
            ));
        }
        if let Some(why) = request.id.as_deref().and_then(check_id) {
            return Err(fault(
                HotplugFaultKind::BadRequest,
                format!("bad id {:?}: {why}", request.id.unwrap_or_default()),
            ));
        }
        let spec = DeviceSpec {
            path: request.path.clone(),
            id: request.id.clone(),
            // Refused above: hot-added devices never sit behind the vSMMU.
            iommu: false,
        };
        let id = spec.name();
        {
            let pt = lock(&self.passthrough);
            if let Some(d) = pt
                .devices()
                .iter()
                .find(|d| d.id == id || d.path == spec.path)
            {
                return Err(fault(
                    HotplugFaultKind::Conflict,
                    format!(
                        "device {} ({}) is in the VM already; pick another id or device",
                        d.id,
                        d.path.display()
                    ),
                ));
            }
        }
        // The first free slot the guest listens to (enabled hotplug, numbered its bus).
        let (free, ports) = {
            let root = lock(&self.root);
            let n = root.port_count();
            let free: Vec<usize> = (0..n).filter(|&i| root.plugged(i).is_none()).collect();
            (free, n)
        };
        if free.is_empty() {
            return Err(fault(
                HotplugFaultKind::Conflict,
                format!("no free hotplug slot: all {ports} are in use; remove a device first"),
            ));
        }
        let mut ready = None;
        for &i in &free {
            let (port, _) = self.port(i)?;
            let (enabled, secondary) = {
                let p = lock(&port);
                (p.slot().hotplug_enabled() && p.msi_enabled(), p.buses().1)
            };
            if enabled && secondary != 0 {
                ready = Some((i, port, secondary));
                break;
            }
        }
        let Some((index, port, secondary)) = ready else {
            let (_, port_bdf) = self.port(free[0])?;
            return Err(fault(
                HotplugFaultKind::NotReady,
                format!(
                    "the guest has not enabled hotplug on any free slot (the first is slot {}, \
                     root port {port_bdf}): its PCIe port driver and pciehp \
                     (CONFIG_HOTPLUG_PCI_PCIE) must have bound; try again once it has booted",
                    free[0] + 1
                ),
            ));
        };
        let guest_bdf = PciBdf::new(secondary, 0, 0).ok_or_else(|| {
            fault(
                HotplugFaultKind::Internal,
                "device 0 is always a valid device",
            )
        })?;

        self.attach(&spec, &id, index, guest_bdf)?;

        {
            let mut p = lock(&port);
            p.insert();
            if !p.slot().presence_enabled() {
                p.press_button();
            }
        }
        if self.wait(&port, self.timeouts.add, |p| p.slot().powered_on()) {
            log::info!(
                "hotplug: device {id} added at {guest_bdf} (slot {}); {}",
                index + 1,
                self.usage()
            );
            return Ok(DeviceInfo {
                id,
                bdf: guest_bdf.to_string(),
                path: spec.path,
                iommu: false,
            });
        }
        lock(&port).eject();
        self.tear_down(index, &id);
        Err(fault(
            HotplugFaultKind::NotReady,
            format!(
                "the guest did not power slot {} on within {} s, so device {id} was not \
                 added; check the guest's log for pciehp messages and try again",
                index + 1,
                self.timeouts.add.as_secs_f64()
            ),
        ))
    }

    fn remove_device(&mut self, id: &str) -> Result<(), HotplugFault> {
        let index = self.hotplugged(id)?;
        let (port, _) = self.port(index)?;
        let (powered, enabled) = {
            let p = lock(&port);
            (
                p.slot().powered(),
                p.slot().button_enabled() && p.msi_enabled(),
            )
        };
        if powered {
            if !enabled {
                return Err(fault(
                    HotplugFaultKind::NotReady,
                    format!(
                        "the guest does not listen to slot {} (hotplug interrupts off): \
                         device {id} stays; remove it with surprise removal",
                        index + 1
                    ),
                ));
            }
            lock(&port).press_button();
            if !self.wait(&port, self.timeouts.remove, |p| !p.slot().powered()) {
                return Err(fault(
                    HotplugFaultKind::NotReady,
                    format!(
                        "the guest did not release device {id} within {} s (it powers slot {} \
                         off once its driver has let go); the device stays in place; try \
                         again, or use surprise removal",
                        self.timeouts.remove.as_secs_f64(),
                        index + 1
                    ),
                ));
            }
            // Best effort: a guest that never darkens the indicator only costs this wait.
            self.wait(&port, self.timeouts.settle, |p| {
                p.slot().powered_off_settled()
            });
        }
        self.tear_down(index, id);
        lock(&port).eject();
        log::info!(
            "hotplug: device {id} removed from slot {}; {}",
            index + 1,
            self.usage()
        );
        Ok(())
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        lock(&self.passthrough).device_infos()
    }
}

#[cfg(test)]
mod tests;
