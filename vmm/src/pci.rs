//! The VMM's PCI segment: the root complex on the I/O buses (ECAM, and 0xCF8 on x86), its
//! devices' MSI-X vectors on the interrupt manager, the emulated virtio devices with
//! their queue-notify ioeventfds, which follow the virtio BAR when the guest moves it, and
//! the PCIe root ports with hot-plug slots (`--hotplug-slots`), each on its own bus with a
//! slice of the PCI windows.
//!
//! What this module does not do: config-space semantics (devices::pci) or device models
//! (devices::virtio).
//!
//! Lock order: the BAR-move callback runs with the `PciRoot` locked and then locks one
//! device; nothing here locks a device and then the root.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use devices::pci::{
    BarReprogram, MsiInterruptGroup, PciBdf, PciConfigMmio, PciRoot, PciWindowKind, PciWindows,
    ECAM_BUS_SIZE,
};
#[cfg(target_arch = "x86_64")]
use devices::pci::{PciConfigIo, PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_PORT_LEN};
use devices::virtio::{VirtioDevice, VirtioPciDevice};
use devices::{Block, Bus, Rng};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::device_hotplug::{DeviceHotplug, NoHotplug};
use crate::hotplug::{HotplugTimeouts, PciHotplug};
use crate::interrupts::InterruptManager;
use crate::vfio::{
    follow_bar_move, kvm_vfio_factory, mem_slot_base, HostDevices, KvmMemslots, Passthrough,
    PassthroughFunctions, PassthroughPlan,
};
use crate::vsmmu::{VsmmuNode, VsmmuSite, VsmmuSlot};
use devices::pci::{RootPort, RootPortWindows};

/// The slot of the first passed-through function (after the host bridge at 00.0).
pub const FIRST_PASSTHROUGH_SLOT: u8 = 1;

/// Whether passed-through functions show I/O BARs: only where the platform has port I/O.
const IO_BARS: bool = cfg!(target_arch = "x86_64");

/// Errors building the PCI segment.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// The root could not be built or a device added.
    #[error("PCI: {0}")]
    Root(#[from] devices::pci::PciRootError),
    /// A disk could not be opened.
    #[error(transparent)]
    Block(#[from] devices::BlockError),
    /// The rng could not be created.
    #[error(transparent)]
    Rng(#[from] devices::RngError),
    /// A virtio transport could not be built.
    #[error(transparent)]
    Virtio(#[from] devices::VirtioPciError),
    /// MSI vectors could not be allocated.
    #[error(transparent)]
    Interrupts(#[from] crate::interrupts::InterruptManagerError),
    /// Passthrough setup.
    #[error(transparent)]
    Vfio(#[from] crate::vfio::VfioError),
    /// More devices than bus 0 has slots.
    #[error("too many PCI devices for bus 0: use fewer --disk/--device options")]
    TooManyDevices,
    /// The root put a device somewhere else than its MSI DeviceID assumed.
    #[error(
        "PCI device placed at {0}, expected {1}: its MSI routes would carry the wrong DeviceID"
    )]
    UnexpectedSlot(PciBdf, PciBdf),
    /// A root port could not be built.
    #[error("PCI: {0}")]
    RootPort(#[from] devices::pci::RootPortError),
    /// A bus range was taken.
    #[error("PCI: {0}")]
    Bus(#[from] devices::BusError),
}

type VirtioDevices = Arc<Mutex<HashMap<PciBdf, Arc<Mutex<VirtioPciDevice>>>>>;

/// What the PCI segment is built with, besides the VM.
pub struct PciSegmentConfig<'a> {
    /// The PCI windows.
    pub windows: &'a PciWindows,
    /// ECAM base and size (the size covers every bus the root ports may use).
    pub ecam: (u64, u64),
    /// MSI routes carry the function's requester ID as ITS DeviceID (aarch64).
    pub msi_devid: bool,
    /// The devices to pass through at start.
    pub passthrough: Option<PassthroughPlan>,
    /// The virtio-blk disks.
    pub disks: &'a [devices::DiskConfig],
    /// A virtio-rng device.
    pub rng: bool,
    /// Root ports with a hot-plug slot each.
    pub hotplug_slots: u8,
    /// Bytes of the 32-bit and prefetchable window of each root port.
    pub port_windows: (u64, u64),
    /// Where a vSMMU for the iommu=on devices goes, where the platform has one.
    pub vsmmu: Option<VsmmuSlot>,
}

/// The PCI segment of a VM. Dropping it first tears down the passed-through devices (in the
/// passthrough crate's order), then removes the emulated devices' routes and irqfds and
/// stops their worker threads.
pub struct PciSegment {
    passthrough: Option<Arc<Mutex<Passthrough>>>,
    /// The root complex.
    pub root: Arc<Mutex<PciRoot>>,
    devices: VirtioDevices,
    ports: usize,
}

impl PciSegment {
    /// Number of emulated virtio functions.
    pub fn virtio_count(&self) -> usize {
        self.devices.lock().map(|d| d.len()).unwrap_or(0)
    }

    /// Number of passed-through functions.
    pub fn passthrough_count(&self) -> usize {
        self.passthrough
            .as_ref()
            .map_or(0, |p| p.lock().unwrap_or_else(|e| e.into_inner()).len())
    }

    /// Number of root ports with a hot-plug slot.
    pub fn hotplug_slots(&self) -> usize {
        self.ports
    }

    /// What the API's event loop drives: hot-add and removal on the root ports, or, with no
    /// ports, [`NoHotplug`] listing the cold-plugged devices.
    pub fn hotplug(
        &self,
        mem: &GuestMemoryMmap,
        irq: &Arc<InterruptManager>,
        msi_devid: bool,
    ) -> Box<dyn DeviceHotplug> {
        match (&self.passthrough, self.ports) {
            (Some(pt), 1..) => Box::new(PciHotplug::new(
                self.root.clone(),
                pt.clone(),
                irq.clone(),
                mem.clone(),
                Box::new(HostDevices::default()),
                msi_devid,
                HotplugTimeouts::default(),
            )),
            (pt, _) => Box::new(NoHotplug {
                cold_plugged: pt
                    .as_ref()
                    .map(|p| p.lock().unwrap_or_else(|e| e.into_inner()).device_infos())
                    .unwrap_or_default(),
            }),
        }
    }

    /// The vSMMU's device tree description, if devices sit behind one.
    pub fn vsmmu_node(&self) -> Option<VsmmuNode> {
        self.passthrough.as_ref().and_then(|p| {
            p.lock()
                .unwrap_or_else(|e| e.into_inner())
                .vsmmu_node()
                .cloned()
        })
    }
}

/// Moves a device's queue ioeventfds from the BAR's old address to its new one.
fn move_notifiers(vm: &VmFd, dev: &Mutex<VirtioPciDevice>, bdf: PciBdf, r: &BarReprogram) {
    if r.bar != devices::virtio::VIRTIO_BAR {
        return;
    }
    let dev = dev.lock().unwrap_or_else(|e| e.into_inner());
    for (base, register) in [(r.old, false), (r.new, true)] {
        let Some(base) = base else { continue };
        let Ok(notifiers) = dev.notify_addresses(base) else {
            log::error!("PCI {bdf}: cannot get the queue notifiers");
            continue;
        };
        for (addr, evt) in notifiers {
            let a = IoEventAddress::Mmio(addr);
            let res = if register {
                vm.register_ioevent(&evt, &a, NoDatamatch)
            } else {
                vm.unregister_ioevent(&evt, &a, NoDatamatch)
            };
            if let Err(e) = res {
                // Without the ioeventfd the notify write still reaches the device as MMIO.
                log::warn!("PCI {bdf}: queue notify ioeventfd at {addr:#x}: {e}");
            }
        }
    }
}

/// Builds bus 0 with the passed-through functions (slots 1..), the emulated devices after
/// them and the root ports last (port `i` on bus `i + 1`), and puts its config-space and
/// BAR windows on the VM's buses.
pub fn create_pci_segment(
    vm: Arc<VmFd>,
    mem: &GuestMemoryMmap,
    irq: &Arc<InterruptManager>,
    cfg: PciSegmentConfig<'_>,
    pio: &mut Bus,
    mmio: &mut Bus,
) -> Result<PciSegment, PciError> {
    let PciSegmentConfig {
        windows,
        ecam: (ecam_base, ecam_size),
        msi_devid,
        passthrough,
        disks,
        rng,
        hotplug_slots,
        port_windows,
        vsmmu,
    } = cfg;
    let mut root = PciRoot::new(windows)?;
    let devices: VirtioDevices = Arc::new(Mutex::new(HashMap::new()));
    let functions: PassthroughFunctions = Arc::new(Mutex::new(HashMap::new()));
    {
        let devices = devices.clone();
        let functions = functions.clone();
        let vm = vm.clone();
        root.set_bar_move_callback(Box::new(move |bdf, r| {
            let dev = devices.lock().ok().and_then(|d| d.get(&bdf).cloned());
            if let Some(dev) = dev {
                move_notifiers(&vm, &dev, bdf, r);
            }
            follow_bar_move(&functions, bdf, r);
        }));
    }

    // Passed-through functions take the first slots after the host bridge.
    let mut pt = (passthrough.is_some() || hotplug_slots > 0).then(|| {
        Passthrough::new(
            kvm_vfio_factory(vm.clone()),
            Arc::new(KvmMemslots::new(vm.clone(), mem_slot_base(mem))),
            IO_BARS,
            functions.clone(),
        )
    });
    if let (Some(plan), Some(pt)) = (passthrough, pt.as_mut()) {
        let vsmmu = vsmmu.map(|slot| VsmmuSite {
            slot,
            vm: &vm,
            mmio: &mut *mmio,
        });
        plan.attach(
            pt,
            mem,
            irq,
            &mut root,
            FIRST_PASSTHROUGH_SLOT,
            msi_devid,
            vsmmu,
        )?;
    }
    let first_virtio_slot = 1 + pt.as_ref().map_or(0, |p| p.len());

    let mut models: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for d in disks {
        models.push(Box::new(Block::new(d)?));
    }
    if rng {
        models.push(Box::new(Rng::new()?));
    }
    for (i, model) in models.into_iter().enumerate() {
        let vectors = VirtioPciDevice::msix_vector_count(model.as_ref());
        // The root fills slots in order after the host bridge at 00.0, so this function will
        // be 00:(i+1).0; the device tree's msi-map is the identity, so its ITS DeviceID is
        // its requester ID. x86 MSIs need no DeviceID.
        let expected =
            PciBdf::new(0, (first_virtio_slot + i) as u8, 0).ok_or(PciError::TooManyDevices)?;
        let devid = msi_devid.then(|| u32::from(expected.requester_id()));
        let group: Arc<dyn MsiInterruptGroup> = Arc::new(irq.msi_group(vectors, devid)?);
        let dev = Arc::new(Mutex::new(VirtioPciDevice::new(model, mem.clone(), group)?));
        let bdf = root.add_device(dev.clone())?;
        if bdf != expected {
            return Err(PciError::UnexpectedSlot(bdf, expected));
        }
        log::info!("PCI {bdf}: virtio device with {vectors} MSI-X vectors");
        devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(bdf, dev);
    }

    let first_port_slot = first_virtio_slot + devices.lock().map(|d| d.len()).unwrap_or(0);
    for i in 0..hotplug_slots {
        let expected = PciBdf::new(0, first_port_slot as u8 + i, 0)
            .filter(|_| first_port_slot + usize::from(i) < 32)
            .ok_or(PciError::TooManyDevices)?;
        let devid = msi_devid.then(|| u32::from(expected.requester_id()));
        let group: Arc<dyn MsiInterruptGroup> = Arc::new(irq.msi_group(1, devid)?);
        let windows = RootPortWindows {
            mem: root.reserve_window(false, port_windows.0)?,
            pref: root.reserve_window(true, port_windows.1)?,
        };
        let port = RootPort::new(i + 1, i + 1, &windows, true, group)?;
        let (_, bdf) = root.add_root_port(Arc::new(Mutex::new(port)))?;
        if bdf != expected {
            return Err(PciError::UnexpectedSlot(bdf, expected));
        }
        log::info!(
            "PCI {bdf}: root port {} with a hot-plug slot, bus {}, windows {:#x}..{:#x} and {:#x}..{:#x} (prefetchable)",
            i + 1,
            i + 1,
            windows.mem.start,
            windows.mem.end,
            windows.pref.start,
            windows.pref.end
        );
    }

    let windows_devs = root.window_devices();
    let root = Arc::new(Mutex::new(root));
    // With root ports the whole ECAM: config cycles for any bus reach the root, which routes
    // them by the bus numbers the guest programmed in the ports (it may renumber them).
    let ecam_len = if hotplug_slots > 0 {
        ecam_size
    } else {
        ECAM_BUS_SIZE
    };
    mmio.insert(
        Arc::new(Mutex::new(PciConfigMmio::new(root.clone()))),
        ecam_base,
        ecam_len,
    )?;
    #[cfg(target_arch = "x86_64")]
    pio.insert(
        Arc::new(Mutex::new(PciConfigIo::new(root.clone()))),
        PCI_CONFIG_IO_PORT,
        PCI_CONFIG_IO_PORT_LEN,
    )?;
    for w in windows_devs {
        let bus = if w.kind == PciWindowKind::Io {
            &mut *pio
        } else {
            &mut *mmio
        };
        bus.insert(w.device, w.base, w.len)?;
    }
    Ok(PciSegment {
        passthrough: pt.map(|p| Arc::new(Mutex::new(p))),
        root,
        devices,
        ports: usize::from(hotplug_slots),
    })
}
