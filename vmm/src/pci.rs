//! The VMM's PCI segment: the root complex on the I/O buses (ECAM, and 0xCF8 on x86), its
//! devices' MSI-X vectors on the interrupt manager, and the emulated virtio devices with
//! their queue-notify ioeventfds, which follow the virtio BAR when the guest moves it.
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
use devices::{Block, Bus, DiskConfig, Rng};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::interrupts::InterruptManager;
use crate::vfio::{AttachedPassthrough, PassthroughPlan};
use passthrough::vfio_pci::VfioPciFunction;

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
    /// A bus range was taken.
    #[error("PCI: {0}")]
    Bus(#[from] devices::BusError),
}

type VirtioDevices = Arc<Mutex<HashMap<PciBdf, Arc<Mutex<VirtioPciDevice>>>>>;
type PassthroughFunctions = Arc<Mutex<HashMap<PciBdf, Arc<Mutex<VfioPciFunction>>>>>;

/// The PCI segment of a VM. Dropping it first tears down the passed-through devices (in the
/// passthrough crate's order), then removes the emulated devices' routes and irqfds and
/// stops their worker threads.
pub struct PciSegment {
    passthrough: Option<AttachedPassthrough>,
    /// The root complex.
    pub root: Arc<Mutex<PciRoot>>,
    devices: VirtioDevices,
}

impl PciSegment {
    /// Number of emulated virtio functions.
    pub fn virtio_count(&self) -> usize {
        self.devices.lock().map(|d| d.len()).unwrap_or(0)
    }

    /// Number of passed-through functions.
    pub fn passthrough_count(&self) -> usize {
        self.passthrough.as_ref().map_or(0, |p| p.len())
    }

    /// The vSMMU's device tree description, if devices sit behind one.
    pub fn vsmmu_node(&self) -> Option<&crate::vsmmu::VsmmuNode> {
        self.passthrough.as_ref().and_then(|p| p.vsmmu_node())
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

/// Builds bus 0 with the passed-through functions (slots 1..) and the emulated devices
/// after them, and puts its config-space and BAR windows on the VM's buses.
#[allow(clippy::too_many_arguments)]
pub fn create_pci_segment(
    vm: Arc<VmFd>,
    mem: &GuestMemoryMmap,
    irq: &Arc<InterruptManager>,
    windows: &PciWindows,
    ecam_base: u64,
    msi_devid: bool,
    passthrough: Option<PassthroughPlan>,
    disks: &[DiskConfig],
    rng: bool,
    vsmmu: Option<crate::vsmmu::VsmmuSlot>,
    pio: &mut Bus,
    mmio: &mut Bus,
) -> Result<PciSegment, PciError> {
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
            let f = functions.lock().ok().and_then(|f| f.get(&bdf).cloned());
            if let Some(f) = f {
                // BAR memslots follow the guest's placement.
                f.lock().unwrap_or_else(|e| e.into_inner()).bar_moved(r);
            }
        }));
    }

    // Passed-through functions take the first slots after the host bridge.
    let attached = match passthrough {
        Some(plan) => {
            let a = plan.attach(
                vm.clone(),
                mem,
                irq,
                &mut root,
                1,
                msi_devid,
                IO_BARS,
                vsmmu,
                &mut *mmio,
            )?;
            functions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(a.functions.iter().map(|(b, f)| (*b, f.clone())));
            Some(a)
        }
        None => None,
    };
    let first_virtio_slot = 1 + attached.as_ref().map_or(0, |a| a.len());

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

    let windows_devs = root.window_devices();
    let root = Arc::new(Mutex::new(root));
    mmio.insert(
        Arc::new(Mutex::new(PciConfigMmio::new(root.clone()))),
        ecam_base,
        ECAM_BUS_SIZE,
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
        passthrough: attached,
        root,
        devices,
    })
}
