//! VFIO passthrough in the VM's life cycle: what must happen before guest RAM is placed
//! (find each `--device`, open /dev/iommu, read each device's IOVA ranges and reserved
//! regions), and after the PCI root exists (attach each device to the VM's IOAS and to KVM,
//! put its function on bus 0, map guest RAM for DMA).
//!
//! The device model and every iommufd/VFIO step are in the passthrough crate; this module
//! supplies the VM's side of its boundary traits (KVM memory slots for BAR mmaps, the
//! interrupt manager's MSI groups) and keeps the teardown order.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use devices::pci::{MsiInterruptGroup, PciBdf, PciRoot};
use devices::smmuv3::HostSmmuInfo;
use devices::Bus;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use passthrough::device_spec::{locate_all, DeviceSpec, LocatedDevice};
use passthrough::hypervisor::{GuestMemslots, KernelKvmVfio, MemslotId};
use passthrough::memlock::MemlockLimit;
use passthrough::memory_map::DeviceRanges;
use passthrough::nested::NestingUnsupported;
use passthrough::passthrough_device::{
    open_iommufd, KernelOpener, PassthroughDevice, VmPassthrough,
};
use passthrough::ram_dma::{GuestRam, GuestRamDma, RamDmaError, SharedIommufd, VmIoas};
use passthrough::vfio_pci::VfioPciFunction;
use passthrough::{probe_ranges, HostVirtAddr, ReservedKind, Sysfs};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

use crate::interrupts::InterruptManager;
use crate::vsmmu::{NestedDevice, VmVsmmu, VsmmuError, VsmmuNode, VsmmuSlot};

/// Where VFIO cdevs and the iommufd live on a host.
const VFIO_DEV_ROOT: &str = "/dev/vfio/devices";
const IOMMUFD: &str = "/dev/iommu";

/// Errors of passthrough setup; each names the device and what to do.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// A --device could not be parsed or located.
    #[error(transparent)]
    Spec(#[from] passthrough::device_spec::DeviceSpecError),
    /// A device step failed.
    #[error(transparent)]
    Device(#[from] passthrough::passthrough_device::PassthroughError),
    /// The host ranges could not be read.
    #[error("--device {0}: {1}")]
    Probe(String, passthrough::VfioCdevError),
    /// The VM's IOAS or RAM mapping failed.
    #[error(transparent)]
    RamDma(#[from] passthrough::ram_dma::RamDmaError),
    /// KVM's VFIO device could not be created.
    #[error("cannot create the KVM VFIO device (KVM_CREATE_DEVICE): {0}; the host KVM needs CONFIG_KVM_VFIO")]
    KvmVfio(std::io::Error),
    /// RLIMIT_MEMLOCK could not be read.
    #[error("cannot read RLIMIT_MEMLOCK: {0}")]
    Memlock(std::io::Error),
    /// The PCI root refused the function.
    #[error("--device {0}: {1}")]
    Root(String, devices::pci::PciRootError),
    /// The root put the function somewhere else than its MSI DeviceID assumed.
    #[error(
        "--device {0}: placed at {1}, expected {2}: its MSI routes would carry the wrong DeviceID"
    )]
    UnexpectedSlot(String, PciBdf, PciBdf),
    /// iommu=on where there is no vSMMU.
    #[error(
        "--device {0}: iommu=on needs a guest-visible SMMUv3, which this VMM offers on \
         aarch64 only; drop iommu=on on this host"
    )]
    IommuArch(String),
    /// The host cannot nest the device's translation.
    #[error(
        "--device {0}: iommu=on needs nested translation by the host IOMMU, which this host \
         cannot do: {1}"
    )]
    Nesting(String, NestingUnsupported),
    /// The vSMMU could not be set up.
    #[error(transparent)]
    Vsmmu(#[from] VsmmuError),
}

/// The devices to pass through, found and probed before guest RAM is placed.
pub struct PassthroughPlan {
    located: Vec<LocatedDevice>,
    iommufd: SharedIommufd,
    ranges: Vec<DeviceRanges>,
    /// Per device: the host SMMU's ID registers if it goes behind the vSMMU (iommu=on).
    nesting: Vec<Option<HostSmmuInfo>>,
}

impl PassthroughPlan {
    /// Locates every `--device` (refusing duplicates), opens /dev/iommu and reads each
    /// device's IOVA ranges (attached to a scratch IOAS) and reserved regions.
    pub fn prepare(specs: &[String]) -> Result<Option<PassthroughPlan>, VfioError> {
        if specs.is_empty() {
            return Ok(None);
        }
        let specs = specs
            .iter()
            .map(|s| s.parse::<DeviceSpec>())
            .collect::<Result<Vec<_>, _>>()?;
        if !cfg!(target_arch = "aarch64") {
            if let Some(s) = specs.iter().find(|s| s.iommu) {
                return Err(VfioError::IommuArch(s.name()));
            }
        }
        let located = locate_all(&specs, Path::new(VFIO_DEV_ROOT))?;
        let mut fd = open_iommufd(Path::new(IOMMUFD), &located)?;
        let sysfs = Sysfs::host();
        let mut ranges = Vec::with_capacity(located.len());
        for d in &located {
            ranges.push(
                probe_ranges(&mut fd, &sysfs, &d.pci)
                    .map_err(|e| VfioError::Probe(d.name.clone(), e))?,
            );
        }
        // Before the VM exists: a host that cannot nest is one clear error now.
        let mut nesting = Vec::with_capacity(located.len());
        for d in &located {
            nesting.push(match d.spec.iommu {
                true => Some(
                    passthrough::nested::probe_nesting_cdev(&mut fd, &d.pci)
                        .map_err(|e| VfioError::Nesting(d.name.clone(), e))?,
                ),
                false => None,
            });
        }
        Ok(Some(PassthroughPlan {
            located,
            iommufd: Arc::new(Mutex::new(fd)),
            ranges,
            nesting,
        }))
    }

    /// What guest RAM must avoid for these devices.
    pub fn ranges(&self) -> Vec<DeviceRanges> {
        self.ranges.clone()
    }

    /// Attaches every device to a new IOAS and to KVM, puts its function on `root` (from
    /// slot `first_slot` on, in order), puts the iommu=on devices behind a vSMMU at
    /// `vsmmu` on `mmio`, and maps guest RAM for DMA. `msi_devid`: MSI routes carry the
    /// function's requester ID as ITS DeviceID (aarch64).
    #[allow(clippy::too_many_arguments)]
    pub fn attach(
        self,
        vm: Arc<VmFd>,
        mem: &GuestMemoryMmap,
        irq: &Arc<InterruptManager>,
        root: &mut PciRoot,
        first_slot: u8,
        msi_devid: bool,
        io_bars: bool,
        vsmmu: Option<VsmmuSlot>,
        mmio: &mut Bus,
    ) -> Result<AttachedPassthrough, VfioError> {
        let t0 = std::time::Instant::now();
        let ioas = VmIoas::new(self.iommufd.clone())?;
        let kvm = Arc::new(KernelKvmVfio::new(&vm).map_err(VfioError::KvmVfio)?);
        let vm_fd = vm.clone();
        let memslots = Arc::new(KvmMemslots::new(vm, mem_slot_base(mem)));
        let mut ctx = VmPassthrough::new(self.iommufd.clone(), ioas.id(), kvm, memslots);
        ctx.options.io_bars = io_bars;

        let mut devices = Vec::with_capacity(self.located.len());
        let mut functions = HashMap::new();
        let mut nested = Vec::new();
        let mut host_smmu = None;
        let mut msi_windows: Vec<(u64, u64)> = Vec::new();
        for (i, d) in self.located.iter().enumerate() {
            let expected = PciBdf::new(0, first_slot + i as u8, 0).ok_or_else(|| {
                VfioError::Root(d.name.clone(), devices::pci::PciRootError::NoFreeSlot)
            })?;
            let devid = msi_devid.then(|| u32::from(expected.requester_id()));
            // Behind the vSMMU the guest programs IOVAs: route to the vITS doorbell.
            let doorbell = vsmmu.filter(|_| d.spec.iommu).map(|s| s.msi_doorbell);
            let mut groups = |n: u16| {
                match doorbell {
                    Some(at) => irq.msi_group_at(n, devid, at),
                    None => irq.msi_group(n, devid),
                }
                .map(|g| Arc::new(g) as Arc<dyn MsiInterruptGroup>)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            };
            let pt = PassthroughDevice::attach(d, &ctx, &mut KernelOpener, &mut groups)?;
            let Some(f) = pt.function() else {
                // attach() returns with the function in place; treat anything else as a bug
                // in the device model rather than crash.
                return Err(VfioError::Root(
                    d.name.clone(),
                    devices::pci::PciRootError::NoFreeSlot,
                ));
            };
            let bdf = root
                .add_device(f.clone())
                .map_err(|e| VfioError::Root(d.name.clone(), e))?;
            if bdf != expected {
                return Err(VfioError::UnexpectedSlot(d.name.clone(), bdf, expected));
            }
            log::info!("PCI {bdf}: passthrough of {} ({})", d.name, d.pci.bdf);
            if let (Some(host), Some(dev)) = (self.nesting[i], pt.dev_id()) {
                host_smmu.get_or_insert(host);
                nested.push(NestedDevice {
                    name: d.name.clone(),
                    dev,
                    rid: bdf.requester_id(),
                });
                let windows = self.ranges[i]
                    .reserved
                    .iter()
                    .filter(|r| r.kind == ReservedKind::Msi)
                    .filter_map(|r| {
                        Some((r.range.first_raw(), u64::try_from(r.range.size()).ok()?))
                    });
                for w in windows {
                    if !msi_windows.contains(&w) {
                        msi_windows.push(w);
                    }
                }
            }
            functions.insert(bdf, f);
            devices.push(pt);
        }
        let vsmmu = match (vsmmu, host_smmu) {
            (Some(slot), Some(host)) => Some(VmVsmmu::new(
                self.iommufd.clone(),
                ioas.id(),
                &nested,
                &host,
                mem.clone(),
                &vm_fd,
                slot,
                msi_windows,
                mmio,
            )?),
            (None, Some(_)) => {
                return Err(VfioError::IommuArch(nested[0].name.clone()));
            }
            _ => None,
        };
        let who = self
            .located
            .iter()
            .map(|d| format!("--device {}", d.name))
            .collect::<Vec<_>>()
            .join(", ");
        let attached_at = t0.elapsed();
        let limit = MemlockLimit::current().map_err(VfioError::Memlock)?;
        let ram = GuestRam::from_memory_files(mem);
        let ram_bytes: u64 = ram.iter().map(|r| r.size).sum();
        let t1 = std::time::Instant::now();
        let mut how = if GuestRam::any_file(&ram) {
            "memfd, IOMMU_IOAS_MAP_FILE"
        } else {
            "anonymous, IOMMU_IOAS_MAP"
        };
        let dma = match GuestRamDma::map(self.iommufd.clone(), ioas.id(), &ram, &limit, &who) {
            // Kernels before 6.13 have no MAP_FILE: map the same memory by address instead.
            Err(RamDmaError::Map { source, .. })
                if GuestRam::any_file(&ram) && source.errno() == libc::ENOTTY =>
            {
                log::info!("passthrough: no IOMMU_IOAS_MAP_FILE in this kernel; mapping guest RAM by address");
                how = "memfd, IOMMU_IOAS_MAP (no MAP_FILE)";
                GuestRamDma::map(
                    self.iommufd.clone(),
                    ioas.id(),
                    &GuestRam::from_memory(mem),
                    &limit,
                    &who,
                )?
            }
            other => other?,
        };
        log::info!(
            "passthrough: {} device(s) attached in {:.1} ms; {} MiB of guest RAM mapped for DMA in {:.1} ms ({})",
            devices.len(),
            attached_at.as_secs_f64() * 1e3,
            ram_bytes >> 20,
            t1.elapsed().as_secs_f64() * 1e3,
            how,
        );
        Ok(AttachedPassthrough {
            dma: Some(dma),
            devices,
            functions,
            vsmmu,
            _ioas: ioas,
            _iommufd: self.iommufd,
        })
    }
}

/// Passed-through devices of a running VM. Teardown order: the vSMMU's host objects, RAM
/// DMA mappings, the devices (detach, unbind, KVM remove, close), the vSMMU (its stage 2),
/// the IOAS, the iommufd.
pub struct AttachedPassthrough {
    dma: Option<GuestRamDma>,
    devices: Vec<PassthroughDevice>,
    /// Functions by guest BDF, for BAR moves.
    pub functions: HashMap<PciBdf, Arc<Mutex<VfioPciFunction>>>,
    vsmmu: Option<VmVsmmu>,
    _ioas: VmIoas,
    _iommufd: SharedIommufd,
}

impl AttachedPassthrough {
    /// Number of passed-through devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The vSMMU's device tree description, if devices sit behind one.
    pub fn vsmmu_node(&self) -> Option<&VsmmuNode> {
        self.vsmmu.as_ref().map(VmVsmmu::node)
    }
}

impl Drop for AttachedPassthrough {
    fn drop(&mut self) {
        if let Some(v) = &self.vsmmu {
            v.release_host();
        }
        self.dma.take();
        self.devices.clear();
    }
}

/// Memory slots after the RAM slots: RAM uses 0..regions.
fn mem_slot_base(mem: &GuestMemoryMmap) -> u32 {
    mem.num_regions() as u32
}

/// KVM memory slots for BAR mmaps.
struct KvmMemslots {
    vm: Arc<VmFd>,
    next: AtomicU32,
    free: Mutex<Vec<u32>>,
}

impl KvmMemslots {
    fn new(vm: Arc<VmFd>, base: u32) -> Self {
        KvmMemslots {
            vm,
            next: AtomicU32::new(base),
            free: Mutex::new(Vec::new()),
        }
    }

    fn set(&self, slot: u32, gpa: u64, len: u64, host: u64) -> std::io::Result<()> {
        let r = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: len,
            userspace_addr: host,
        };
        // SAFETY: for a non-zero size, [host, host + len) is a BAR mapping owned by the VFIO
        // function, which removes the slot (size 0) before it unmaps; a zero size deletes.
        unsafe { self.vm.set_user_memory_region(r) }
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

impl GuestMemslots for KvmMemslots {
    fn map(&self, gpa: u64, len: u64, host: HostVirtAddr) -> std::io::Result<MemslotId> {
        let slot = self
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed));
        match self.set(slot, gpa, len, host.0) {
            Ok(()) => Ok(MemslotId(slot)),
            Err(e) => {
                self.free
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(slot);
                Err(e)
            }
        }
    }

    fn unmap(&self, slot: MemslotId) -> std::io::Result<()> {
        self.set(slot.0, 0, 0, 0)?;
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot.0);
        Ok(())
    }
}
