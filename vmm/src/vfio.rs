//! VFIO passthrough in the VM's life cycle: what must happen before guest RAM is placed
//! (find each `--device`, open /dev/iommu, read each device's IOVA ranges and reserved
//! regions), and after the PCI root exists (attach each device to the VM's IOAS and to KVM,
//! put its function on the PCI root, map guest RAM for DMA).
//!
//! [`Passthrough`] is the one owner of a VM's passed-through devices, cold- and
//! hot-plugged: [`Passthrough::attach`] is the single "attach a device" path (the IOAS is
//! made for the first device, guest RAM mapped and guarded once), [`Passthrough::remove`]
//! and [`Passthrough::release_if_idle`] the way back. [`DeviceSource`] is where devices come
//! from: the host ([`HostDevices`]) or, in tests, the iommufd model with fake VFIO devices.
//! Cold-plugged `iommu=on` devices go behind a vSMMU ([`crate::vsmmu`]) once they are all
//! attached; the [`Passthrough`] owner keeps it and tears it down in order. Hot-added
//! devices never sit behind it.
//!
//! The device model and every iommufd/VFIO step are in the passthrough crate; this module
//! supplies the VM's side of its boundary traits (KVM memory slots for BAR mmaps, the
//! interrupt manager's MSI groups) and keeps the teardown order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use devices::pci::{MsiInterruptGroup, PciBdf, PciRoot};
use devices::smmuv3::HostSmmuInfo;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use passthrough::device_spec::{locate_all, DeviceSpec, LocatedDevice};
use passthrough::hypervisor::{GuestMemslots, KvmVfio, MemslotId};
use passthrough::memlock::MemlockLimit;
use passthrough::memory_map::DeviceRanges;
use passthrough::nested::NestingUnsupported;
use passthrough::passthrough_device::{
    open_iommufd, KernelOpener, PassthroughDevice, VfioOpener, VmPassthrough,
};
use passthrough::ram_dma::{lock, GuestRam, GuestRamDma, RamDmaError, SharedIommufd, VmIoas};
use passthrough::vfio_pci::{InterruptGroupFactory, VfioPciFunction};
use passthrough::{probe_ranges, HostVirtAddr, ReservedKind, Sysfs};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

use crate::interrupts::InterruptManager;
use crate::vsmmu::{NestedDevice, VmVsmmu, VsmmuError, VsmmuNode, VsmmuSite};

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
    /// A device was not found.
    #[error("{0}: no such device")]
    NotFound(String),
    /// No iommufd was opened for the VM.
    #[error("{0}: the VM has no iommufd (internal error: the device source did not open one)")]
    NoIommufd(String),
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

/// Functions by the address their BAR moves are reported under (their bus-0 address, or
/// for a hot-plugged function its root port's), for the PCI root's BAR-move callback.
pub type PassthroughFunctions = Arc<Mutex<HashMap<PciBdf, Arc<Mutex<VfioPciFunction>>>>>;

/// Follows a BAR move the PCI root reports under `bdf` with the passed-through function's
/// memory slots (for the root's BAR-move callback).
pub fn follow_bar_move(
    functions: &PassthroughFunctions,
    bdf: PciBdf,
    r: &devices::pci::BarReprogram,
) {
    let f = functions.lock().ok().and_then(|f| f.get(&bdf).cloned());
    if let Some(f) = f {
        // BAR memslots follow the guest's placement.
        f.lock().unwrap_or_else(|e| e.into_inner()).bar_moved(r);
    }
}

/// Where passthrough devices come from, and how their host ranges are read.
pub trait DeviceSource: Send {
    /// The iommufd to use for `devices` (opened on first use).
    fn iommufd(&mut self, devices: &[LocatedDevice]) -> Result<SharedIommufd, VfioError>;
    /// Finds the VFIO cdev of `spec`.
    fn locate(&mut self, spec: &DeviceSpec) -> Result<LocatedDevice, VfioError>;
    /// Reads the IOVA ranges (attached to a scratch IOAS) and reserved regions of `dev`.
    fn probe(
        &mut self,
        iommufd: &SharedIommufd,
        dev: &LocatedDevice,
    ) -> Result<DeviceRanges, VfioError>;
    /// Opens located devices.
    fn opener(&mut self) -> &mut dyn VfioOpener;
}

/// The host's devices: sysfs, `/dev/vfio/devices`, `/dev/iommu`.
#[derive(Debug, Default)]
pub struct HostDevices {
    opener: KernelOpener,
}

impl DeviceSource for HostDevices {
    fn iommufd(&mut self, devices: &[LocatedDevice]) -> Result<SharedIommufd, VfioError> {
        Ok(Arc::new(Mutex::new(open_iommufd(
            Path::new(IOMMUFD),
            devices,
        )?)))
    }

    fn locate(&mut self, spec: &DeviceSpec) -> Result<LocatedDevice, VfioError> {
        let mut found = locate_all(std::slice::from_ref(spec), Path::new(VFIO_DEV_ROOT))?;
        found.pop().ok_or_else(|| VfioError::NotFound(spec.name()))
    }

    fn probe(
        &mut self,
        iommufd: &SharedIommufd,
        dev: &LocatedDevice,
    ) -> Result<DeviceRanges, VfioError> {
        let mut fd = lock(iommufd);
        probe_ranges(&mut *fd, &Sysfs::host(), &dev.pci)
            .map_err(|e| VfioError::Probe(dev.name.clone(), e))
    }

    fn opener(&mut self) -> &mut dyn VfioOpener {
        &mut self.opener
    }
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
        let mut source = HostDevices::default();
        let iommufd = source.iommufd(&located)?;
        let mut ranges = Vec::with_capacity(located.len());
        for d in &located {
            ranges.push(source.probe(&iommufd, d)?);
        }
        // Before the VM exists: a host that cannot nest is one clear error now.
        let mut nesting = Vec::with_capacity(located.len());
        for d in &located {
            nesting.push(match d.spec.iommu {
                true => Some(
                    passthrough::nested::probe_nesting_cdev(&mut *lock(&iommufd), &d.pci)
                        .map_err(|e| VfioError::Nesting(d.name.clone(), e))?,
                ),
                false => None,
            });
        }
        Ok(Some(PassthroughPlan {
            located,
            iommufd,
            ranges,
            nesting,
        }))
    }

    /// What guest RAM must avoid for these devices.
    pub fn ranges(&self) -> Vec<DeviceRanges> {
        self.ranges.clone()
    }

    /// Attaches every device through `pt` (see [`Passthrough::attach`]), puts its function
    /// on `root` (from slot `first_slot` on, in order), puts the iommu=on devices behind a
    /// new vSMMU at `vsmmu` (which `pt` then owns), and maps guest RAM for DMA.
    /// `msi_devid`: MSI routes carry the function's requester ID as ITS DeviceID (aarch64).
    #[allow(clippy::too_many_arguments)]
    pub fn attach(
        self,
        pt: &mut Passthrough,
        mem: &GuestMemoryMmap,
        irq: &Arc<InterruptManager>,
        root: &mut PciRoot,
        first_slot: u8,
        msi_devid: bool,
        vsmmu: Option<VsmmuSite<'_>>,
    ) -> Result<(), VfioError> {
        let t0 = std::time::Instant::now();
        pt.use_iommufd(self.iommufd.clone());
        let mut opener = KernelOpener;
        let mut nested = Vec::new();
        let mut host_smmu = None;
        let mut msi_windows: Vec<(u64, u64)> = Vec::new();
        let doorbell_at = vsmmu.as_ref().map(|v| v.slot.msi_doorbell);
        for (i, d) in self.located.iter().enumerate() {
            let expected = PciBdf::new(0, first_slot + i as u8, 0).ok_or_else(|| {
                VfioError::Root(d.name.clone(), devices::pci::PciRootError::NoFreeSlot)
            })?;
            let devid = msi_devid.then(|| u32::from(expected.requester_id()));
            // Behind the vSMMU the guest programs IOVAs: route to the vITS doorbell.
            let doorbell = doorbell_at.filter(|_| d.spec.iommu);
            let mut groups = |n: u16| {
                match doorbell {
                    Some(at) => irq.msi_group_at(n, devid, at),
                    None => irq.msi_group(n, devid),
                }
                .map(|g| Arc::new(g) as Arc<dyn MsiInterruptGroup>)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            };
            let (device, f) = pt.attach(d, &mut opener, &mut groups)?;
            let bdf = root
                .add_device(f.clone())
                .map_err(|e| VfioError::Root(d.name.clone(), e))?;
            if bdf != expected {
                return Err(VfioError::UnexpectedSlot(d.name.clone(), bdf, expected));
            }
            log::info!("PCI {bdf}: passthrough of {} ({})", d.name, d.pci.bdf);
            if let (Some(host), Some(dev)) = (self.nesting[i], device.dev_id()) {
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
            pt.adopt(AttachedDevice {
                id: d.name.clone(),
                path: d.spec.path.clone(),
                key: bdf,
                guest_bdf: bdf,
                port: None,
                iommu: d.spec.iommu,
                device,
                function: f,
            });
        }
        // After every device is attached: the iommu=on ones move onto the vSMMU's stage 2.
        if let Some(host) = host_smmu {
            let (Some(site), Some(iommufd), Some(ioas)) = (vsmmu, pt.iommufd().cloned(), pt.ioas())
            else {
                return Err(VfioError::IommuArch(nested[0].name.clone()));
            };
            let v = VmVsmmu::new(
                iommufd,
                ioas,
                &nested,
                &host,
                mem.clone(),
                site.vm,
                site.slot,
                msi_windows,
                site.mmio,
            )?;
            pt.set_vsmmu(v);
        }
        let attached_at = t0.elapsed();
        let who = self
            .located
            .iter()
            .map(|d| format!("--device {}", d.name))
            .collect::<Vec<_>>()
            .join(", ");
        let t1 = std::time::Instant::now();
        let threads = dma_map_threads();
        let (ram_bytes, how) = pt.map_ram_on(mem, &who, threads)?;
        log::info!(
            "passthrough: {} device(s) attached in {:.1} ms; {} MiB of guest RAM mapped for DMA in {:.1} ms ({}{})",
            self.located.len(),
            attached_at.as_secs_f64() * 1e3,
            ram_bytes >> 20,
            t1.elapsed().as_secs_f64() * 1e3,
            how,
            if threads > 1 {
                format!(", {threads} threads")
            } else {
                String::new()
            },
        );
        Ok(())
    }
}

/// Threads that pin guest RAM at start: the host's CPUs, at most 4, or `VMM_DMA_MAP_THREADS`.
/// Pinning in parallel shortened the 512 MiB map in the aarch64 rig (2 CPUs) from 2150 ms to
/// 1448 ms with 2 threads and 1281 ms with 4 (docs/passthrough.md). Hot-adds map on the one
/// VMM thread, whose seccomp filter has no clone.
fn dma_map_threads() -> usize {
    std::env::var("VMM_DMA_MAP_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)))
        .clamp(1, 16)
}

/// Makes the VM's KVM-VFIO device (`KVM_CREATE_DEVICE`).
pub type KvmVfioFactory = Box<dyn Fn() -> std::io::Result<Arc<dyn KvmVfio>> + Send>;

/// The factory for a KVM VM.
pub fn kvm_vfio_factory(vm: Arc<VmFd>) -> KvmVfioFactory {
    Box::new(move || {
        passthrough::hypervisor::KernelKvmVfio::new(&vm).map(|k| Arc::new(k) as Arc<dyn KvmVfio>)
    })
}

/// A passed-through device of a running VM.
pub struct AttachedDevice {
    /// Its id, unique in the VM.
    pub id: String,
    /// The host device's sysfs directory.
    pub path: PathBuf,
    /// The address its BAR moves are reported under (see [`PassthroughFunctions`]).
    pub key: PciBdf,
    /// Where the guest saw it when it was attached.
    pub guest_bdf: PciBdf,
    /// The root port it is plugged into, if hot-plugged.
    pub port: Option<usize>,
    /// Whether it sits behind the vSMMU (`iommu=on`).
    pub iommu: bool,
    /// The device (teardown on drop).
    pub device: PassthroughDevice,
    /// Its function, as the PCI root holds it.
    pub function: Arc<Mutex<VfioPciFunction>>,
}

/// Every passed-through device of a VM and what they share: the iommufd, the IOAS and
/// guest RAM mapped into it, and the vSMMU of the iommu=on devices. Teardown order: the
/// vSMMU's host objects (devices back on its stage 2, nested HWPTs, vDEVICEs, vIOMMU), RAM
/// DMA mappings, the devices (detach, unbind, KVM remove, close), the vSMMU (its thread and
/// stage 2), the IOAS, the iommufd.
///
/// The IOAS and the RAM mappings exist while at least one device does (cold-plugged
/// devices keep them for the VM's life): a device coming or going never unmaps RAM that
/// another device still uses. Only cold-plugged devices sit behind the vSMMU, so it too
/// lives as long as the VM.
pub struct Passthrough {
    dma: Option<GuestRamDma>,
    devices: Vec<AttachedDevice>,
    vsmmu: Option<VmVsmmu>,
    ctx: Option<VmPassthrough>,
    ioas: Option<VmIoas>,
    iommufd: Option<SharedIommufd>,
    kvm: Option<Arc<dyn KvmVfio>>,
    make_kvm: KvmVfioFactory,
    memslots: Arc<dyn GuestMemslots>,
    io_bars: bool,
    functions: PassthroughFunctions,
}

impl Passthrough {
    /// No devices yet. `make_kvm` makes the VM's KVM-VFIO device when the first device
    /// comes (it then stays for the VM's life); `memslots` are the VM's; `io_bars`:
    /// functions show I/O BARs (x86); `functions` is shared with the PCI root's BAR-move
    /// callback.
    pub fn new(
        make_kvm: KvmVfioFactory,
        memslots: Arc<dyn GuestMemslots>,
        io_bars: bool,
        functions: PassthroughFunctions,
    ) -> Self {
        Passthrough {
            dma: None,
            devices: Vec::new(),
            vsmmu: None,
            ctx: None,
            ioas: None,
            iommufd: None,
            kvm: None,
            make_kvm,
            memslots,
            io_bars,
            functions,
        }
    }

    /// Uses `fd` as the VM's iommufd unless it has one.
    pub fn use_iommufd(&mut self, fd: SharedIommufd) {
        self.iommufd.get_or_insert(fd);
    }

    /// The VM's iommufd, once a device brought one.
    pub fn iommufd(&self) -> Option<&SharedIommufd> {
        self.iommufd.as_ref()
    }

    /// The shared "attach a device" step: makes the IOAS if this is the first device, then
    /// opens, registers with KVM, binds, attaches and resets `d` and builds its function.
    /// The caller puts the function on the PCI root and hands both to [`Passthrough::adopt`].
    /// On failure, with no device present, the IOAS goes again.
    pub fn attach(
        &mut self,
        d: &LocatedDevice,
        opener: &mut dyn VfioOpener,
        groups: &mut InterruptGroupFactory<'_>,
    ) -> Result<(PassthroughDevice, Arc<Mutex<VfioPciFunction>>), VfioError> {
        let attached = self.attach_now(d, opener, groups);
        if attached.is_err() {
            self.release_if_idle();
        }
        attached
    }

    fn attach_now(
        &mut self,
        d: &LocatedDevice,
        opener: &mut dyn VfioOpener,
        groups: &mut InterruptGroupFactory<'_>,
    ) -> Result<(PassthroughDevice, Arc<Mutex<VfioPciFunction>>), VfioError> {
        let ctx = self.ensure_ioas(&d.name)?;
        let device = PassthroughDevice::attach(d, ctx, opener, groups)?;
        match device.function() {
            Some(f) => Ok((device, f)),
            // attach() returns with the function in place; treat anything else as a bug in
            // the device model rather than crash.
            None => Err(VfioError::Root(
                d.name.clone(),
                devices::pci::PciRootError::NoFreeSlot,
            )),
        }
    }

    /// The device context, with the IOAS (and the KVM-VFIO device) made if there is none.
    fn ensure_ioas(&mut self, who: &str) -> Result<&VmPassthrough, VfioError> {
        if self.ctx.is_none() {
            let Some(iommufd) = self.iommufd.clone() else {
                return Err(VfioError::NoIommufd(who.to_string()));
            };
            let kvm = match &self.kvm {
                Some(k) => k.clone(),
                None => self
                    .kvm
                    .insert((self.make_kvm)().map_err(VfioError::KvmVfio)?)
                    .clone(),
            };
            let ioas = VmIoas::new(iommufd.clone())?;
            let mut ctx = VmPassthrough::new(iommufd, ioas.id(), kvm, self.memslots.clone());
            ctx.options.io_bars = self.io_bars;
            self.ioas = Some(ioas);
            self.ctx = Some(ctx);
        }
        self.ctx
            .as_ref()
            .ok_or_else(|| VfioError::NoIommufd(who.to_string()))
    }

    /// Records a device whose function is on the PCI root.
    pub fn adopt(&mut self, dev: AttachedDevice) {
        self.functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(dev.key, dev.function.clone());
        self.devices.push(dev);
    }

    /// Maps guest RAM for DMA and guards it (making the IOAS first if there is none),
    /// unless it is mapped already. Returns the bytes and how it was mapped. On failure,
    /// with no device present, the IOAS goes again.
    pub fn map_ram(
        &mut self,
        mem: &GuestMemoryMmap,
        who: &str,
    ) -> Result<(u64, &'static str), VfioError> {
        self.map_ram_on(mem, who, 1)
    }

    /// [`Passthrough::map_ram`], pinning on up to `threads` threads.
    pub fn map_ram_on(
        &mut self,
        mem: &GuestMemoryMmap,
        who: &str,
        threads: usize,
    ) -> Result<(u64, &'static str), VfioError> {
        let ram = GuestRam::from_memory_files(mem);
        let ram_bytes: u64 = ram.iter().map(|r| r.size).sum();
        if self.dma.is_some() {
            return Ok((ram_bytes, "already mapped"));
        }
        let mapped = self.map_ram_now(mem, &ram, who, threads);
        if mapped.is_err() {
            self.release_if_idle();
        }
        mapped.map(|how| (ram_bytes, how))
    }

    fn map_ram_now(
        &mut self,
        mem: &GuestMemoryMmap,
        ram: &[GuestRam<'_>],
        who: &str,
        threads: usize,
    ) -> Result<&'static str, VfioError> {
        self.ensure_ioas(who)?;
        let (Some(iommufd), Some(ioas)) =
            (self.iommufd.clone(), self.ioas.as_ref().map(|i| i.id()))
        else {
            return Err(VfioError::NoIommufd(who.to_string()));
        };
        let limit = MemlockLimit::current().map_err(VfioError::Memlock)?;
        let mut by_file = GuestRam::any_file(ram);
        let mut how = if by_file {
            "memfd, IOMMU_IOAS_MAP_FILE"
        } else {
            "anonymous, IOMMU_IOAS_MAP"
        };
        let dma = match GuestRamDma::map_parallel(iommufd.clone(), ioas, ram, &limit, who, threads)
        {
            // Kernels before 6.13 have no MAP_FILE: map the same memory by address instead.
            Err(RamDmaError::Map { source, .. })
                if GuestRam::any_file(ram) && source.errno() == libc::ENOTTY =>
            {
                log::info!("passthrough: no IOMMU_IOAS_MAP_FILE in this kernel; mapping guest RAM by address");
                how = "memfd, IOMMU_IOAS_MAP (no MAP_FILE)";
                by_file = false;
                let by_va = GuestRam::from_memory(mem);
                GuestRamDma::map_parallel(iommufd, ioas, &by_va, &limit, who, threads)?
            }
            other => other?,
        };
        self.dma = Some(dma);
        if by_file {
            // MAP_FILE left this process's page tables empty: fill them now, or every guest
            // page costs KVM an extra fault on first touch (populate_page_tables says why).
            let t = std::time::Instant::now();
            match crate::vstate::memory::populate_page_tables(mem, threads) {
                Ok(bytes) => log::info!(
                    "passthrough: page tables of {} MiB of guest RAM populated in {:.1} ms",
                    bytes >> 20,
                    t.elapsed().as_secs_f64() * 1e3
                ),
                // Only a cost at run time: say so and go on.
                Err(e) => log::warn!(
                    "passthrough: cannot populate the page tables of guest RAM ({e}); the \
                     guest's first touch of each page will be slower"
                ),
            }
        }
        Ok(how)
    }

    /// Takes the device `id` out of the set (the caller drops it, which tears it down).
    pub fn remove(&mut self, id: &str) -> Option<AttachedDevice> {
        let i = self.devices.iter().position(|d| d.id == id)?;
        let dev = self.devices.remove(i);
        self.functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&dev.key);
        Some(dev)
    }

    /// With no device left, unmaps guest RAM and destroys the IOAS (the iommufd stays
    /// open). Does nothing while any device remains.
    pub fn release_if_idle(&mut self) {
        if self.devices.is_empty() {
            self.dma = None;
            self.vsmmu = None;
            self.ctx = None;
            self.ioas = None;
        }
    }

    /// The devices.
    pub fn devices(&self) -> &[AttachedDevice] {
        &self.devices
    }

    /// The devices as the API lists them.
    pub fn device_infos(&self) -> Vec<crate::device_hotplug::DeviceInfo> {
        self.devices
            .iter()
            .map(|d| crate::device_hotplug::DeviceInfo {
                id: d.id.clone(),
                bdf: d.guest_bdf.to_string(),
                path: d.path.clone(),
                iommu: d.iommu,
            })
            .collect()
    }

    /// Number of passed-through devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The VM's IOAS, while there is one.
    pub fn ioas(&self) -> Option<passthrough::IoasId> {
        self.ioas.as_ref().map(|i| i.id())
    }

    /// BAR memory slots in use (if counted) and IOVA ranges allowed in the IOAS (the
    /// guest RAM regions while RAM is mapped for DMA): what hotplug cycles must not grow.
    pub fn usage(&self) -> (Option<usize>, usize) {
        (
            self.memslots.in_use(),
            self.dma.as_ref().map_or(0, |d| d.regions().len()),
        )
    }

    /// Hands the vSMMU the devices behind it sit on to this owner, which tears it down in
    /// its place (see [`Passthrough`]).
    pub fn set_vsmmu(&mut self, vsmmu: VmVsmmu) {
        self.vsmmu = Some(vsmmu);
    }

    /// The vSMMU's device tree description, if devices sit behind one.
    pub fn vsmmu_node(&self) -> Option<&VsmmuNode> {
        self.vsmmu.as_ref().map(VmVsmmu::node)
    }
}

impl Drop for Passthrough {
    fn drop(&mut self) {
        if let Some(v) = self.vsmmu.as_mut() {
            v.release_host();
        }
        self.dma.take();
        self.devices.clear();
        self.vsmmu.take();
    }
}

/// Memory slots after the RAM slots: RAM uses 0..regions.
pub fn mem_slot_base(mem: &GuestMemoryMmap) -> u32 {
    mem.num_regions() as u32
}

/// KVM memory slots for BAR mmaps; freed slot numbers are reused.
pub struct KvmMemslots {
    vm: Arc<VmFd>,
    base: u32,
    next: AtomicU32,
    free: Mutex<Vec<u32>>,
}

impl KvmMemslots {
    /// Slots from `base` on.
    pub fn new(vm: Arc<VmFd>, base: u32) -> Self {
        KvmMemslots {
            vm,
            base,
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

    fn in_use(&self) -> Option<usize> {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner()).len();
        Some((self.next.load(Ordering::Relaxed) - self.base) as usize - free)
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
