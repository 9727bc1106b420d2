//! [`PassthroughDevice`]: one `--device`, from its located cdev to a PCI function on the
//! VM's PCI root, and back.
//!
//! Setup, in order (each step completed is undone, in reverse, if a later one fails, and
//! all of them when the device is dropped):
//!
//! 1. open the cdev ([`VfioOpener`]; the kernel opener also makes the fd to bind);
//! 2. `KVM_DEV_VFIO_FILE_ADD` ([`KvmVfio`]) — before binding, as the kernel's VFIO
//!    documentation asks (KVM must know the file when the device is opened by the bind);
//! 3. `VFIO_DEVICE_BIND_IOMMUFD` ([`crate::Iommufd::bind_device`]);
//! 4. `VFIO_DEVICE_ATTACH_IOMMUFD_PT` to the VM's IOAS; `EADDRINUSE` here means the
//!    device's reserved regions hit guest RAM already mapped, and the error says which;
//! 5. `VFIO_DEVICE_GET_INFO` (where the kernel backend hands the bound cdev to vfio-ioctls)
//!    and `VFIO_DEVICE_RESET` if the device supports it;
//! 6. the [`VfioPciFunction`] (config space, BAR mmaps, interrupt group).
//!
//! Teardown: the function (interrupts off, memory slots removed, BARs unmapped), reset,
//! detach, unbind, `KVM_DEV_VFIO_FILE_DEL`, close. Failures there are logged; teardown
//! goes on.
//!
//! The same device twice is refused twice over: by [`crate::locate_all`] on the arguments,
//! and here by PCI address among the devices attached through one [`VmPassthrough`].
//!
//! Not here: guest RAM DMA mappings ([`crate::GuestRamDma`]), the PCI root (the VMM adds
//! [`PassthroughDevice::function`] to it and calls [`VfioPciFunction::bar_moved`] from its
//! BAR-move callback).

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::device_spec::LocatedDevice;
use crate::fake_vfio::FakeVfioDevice;
use crate::hypervisor::{GuestMemslots, KvmVfio};
use crate::iommufd::{DevId, DeviceHandle, IoasId, IommufdError};
use crate::kernel::KernelIommufd;
use crate::model::ModelDevice;
use crate::ram_dma::{lock, SharedIommufd};
use crate::reserved_regions::Sysfs;
use crate::vfio_device::{VfioDevice, VfioDeviceError};
use crate::vfio_kernel::KernelVfioDevice;
use crate::vfio_pci::{InterruptGroupFactory, PciFunctionOptions, VfioPciError, VfioPciFunction};

/// A setup step, for errors and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupStep {
    /// Opening the host's iommufd (once for all devices).
    Iommufd,
    /// Another `--device` already passes this device through.
    Unique,
    /// Opening the cdev.
    Open,
    /// `KVM_DEV_VFIO_FILE_ADD`.
    KvmAdd,
    /// `VFIO_DEVICE_BIND_IOMMUFD`.
    Bind,
    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`.
    Attach,
    /// `VFIO_DEVICE_GET_INFO`.
    Info,
    /// `VFIO_DEVICE_RESET`.
    Reset,
    /// Building the PCI function.
    Function,
}

/// Errors setting up a passthrough device; each names the device.
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    /// No usable iommufd on the host.
    #[error("{names}: device passthrough needs the host's iommufd: {source}")]
    NoIommufd {
        /// The devices given, e.g. "--device disk (0000:00:03.0)".
        names: String,
        /// Why it could not be opened.
        source: IommufdError,
    },
    /// The device is attached already.
    #[error("--device {name} is PCI device {bdf}, which --device {first} already passes through: give each device once")]
    Duplicate {
        /// This argument's name.
        name: String,
        /// PCI address.
        bdf: String,
        /// The name of the one attached first.
        first: String,
    },
    /// The cdev could not be opened.
    #[error("--device {name} ({bdf}): cannot open {path}: {source}{}", open_hint(.source))]
    Open {
        /// Name.
        name: String,
        /// PCI address.
        bdf: String,
        /// The cdev.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// KVM refused the file.
    #[error(
        "--device {name} ({bdf}): KVM_DEV_VFIO_FILE_ADD failed: {source}; KVM must accept \
         the VFIO cdev (host kernel with CONFIG_KVM_VFIO and VFIO device cdev support)"
    )]
    KvmAdd {
        /// Name.
        name: String,
        /// PCI address.
        bdf: String,
        /// Why.
        source: io::Error,
    },
    /// Binding to the iommufd failed.
    #[error("--device {name} ({bdf}): {source}")]
    Bind {
        /// Name.
        name: String,
        /// PCI address.
        bdf: String,
        /// Why.
        source: IommufdError,
    },
    /// The device's reserved regions collide with guest RAM.
    #[error(
        "--device {name} ({bdf}): its reserved IOVA regions ({reserved}) collide with guest \
         RAM already mapped at IOVA = GPA in the VM's I/O address space (the kernel refused \
         the attach with EADDRINUSE): plan guest RAM with every --device included before \
         mapping it (vmm --print-memory-map shows the plan)"
    )]
    ReservedCollision {
        /// Name.
        name: String,
        /// PCI address.
        bdf: String,
        /// The device's reserved regions, as sysfs lists them.
        reserved: String,
        /// The attach error.
        #[source]
        source: IommufdError,
    },
    /// Attaching failed otherwise.
    #[error("--device {name} ({bdf}): {source}")]
    Attach {
        /// Name.
        name: String,
        /// PCI address.
        bdf: String,
        /// Why.
        source: IommufdError,
    },
    /// A VFIO call of setup failed (info, reset).
    #[error("--device {name} ({bdf}): {source}")]
    Device {
        /// Name.
        name: String,
        /// PCI address.
        bdf: String,
        /// The step.
        step: SetupStep,
        /// Why.
        source: VfioDeviceError,
    },
    /// The PCI function could not be built.
    #[error("--device {name} ({bdf}): {source}")]
    Function {
        /// Name.
        name: String,
        /// PCI address.
        bdf: String,
        /// Why.
        source: VfioPciError,
    },
}

impl PassthroughError {
    /// The step that failed.
    pub fn step(&self) -> SetupStep {
        match self {
            PassthroughError::NoIommufd { .. } => SetupStep::Iommufd,
            PassthroughError::Duplicate { .. } => SetupStep::Unique,
            PassthroughError::Open { .. } => SetupStep::Open,
            PassthroughError::KvmAdd { .. } => SetupStep::KvmAdd,
            PassthroughError::Bind { .. } => SetupStep::Bind,
            PassthroughError::ReservedCollision { .. } | PassthroughError::Attach { .. } => {
                SetupStep::Attach
            }
            PassthroughError::Device { step, .. } => *step,
            PassthroughError::Function { .. } => SetupStep::Function,
        }
    }
}

fn open_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => {
            "; run as root or give this user read/write access to the cdev"
        }
        Some(libc::ENOENT) => "; the node is missing: is devtmpfs mounted on /dev?",
        Some(libc::EBUSY) => "; the device is in use by another process",
        _ => "",
    }
}

/// Opens the iommufd at `path` (`/dev/iommu` on a host, [`crate::kernel::IOMMUFD_PATH`])
/// for `devices`; if there is none, the error names them and says what the host lacks.
pub fn open_iommufd(
    path: &Path,
    devices: &[LocatedDevice],
) -> Result<KernelIommufd, PassthroughError> {
    KernelIommufd::open_path(path).map_err(|source| PassthroughError::NoIommufd {
        names: devices
            .iter()
            .map(|d| format!("--device {} ({})", d.name, d.pci.bdf))
            .collect::<Vec<_>>()
            .join(", "),
        source,
    })
}

/// How located devices are opened: the VFIO device, and the handle to bind.
pub trait VfioOpener {
    /// Opens `dev`.
    fn open(&mut self, dev: &LocatedDevice) -> io::Result<(Box<dyn VfioDevice>, DeviceHandle)>;
}

/// Opens the real cdev and binds a clone of its fd.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOpener;

impl VfioOpener for KernelOpener {
    fn open(&mut self, dev: &LocatedDevice) -> io::Result<(Box<dyn VfioDevice>, DeviceHandle)> {
        let device = KernelVfioDevice::open(&dev.pci.cdev)?;
        let bind = device.try_clone_fd()?;
        Ok((Box::new(device), DeviceHandle::VfioCdev(bind)))
    }
}

/// Hands out fake devices in order, each bound as a model device (for tests with
/// [`crate::ModelIommufd`]).
#[derive(Debug, Default)]
pub struct FakeOpener {
    devices: VecDeque<(FakeVfioDevice, ModelDevice)>,
}

impl FakeOpener {
    /// Queues a device.
    pub fn push(&mut self, device: FakeVfioDevice, model: ModelDevice) {
        self.devices.push_back((device, model));
    }
}

impl VfioOpener for FakeOpener {
    fn open(&mut self, _dev: &LocatedDevice) -> io::Result<(Box<dyn VfioDevice>, DeviceHandle)> {
        let (device, model) = self
            .devices
            .pop_front()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        Ok((Box::new(device), DeviceHandle::Model(model)))
    }
}

/// What passthrough devices need from the VM; shared by all of them.
pub struct VmPassthrough {
    /// The VM's iommufd.
    pub iommufd: SharedIommufd,
    /// The VM's IOAS (guest RAM at IOVA = GPA).
    pub ioas: IoasId,
    /// The VM's KVM-VFIO device.
    pub kvm: Arc<dyn KvmVfio>,
    /// Guest memory slots for BAR mmaps.
    pub memslots: Arc<dyn GuestMemslots>,
    /// Where reserved regions are read, to explain collisions.
    pub sysfs: Sysfs,
    /// PCI function options.
    pub options: PciFunctionOptions,
    /// Attached devices: PCI address -> name.
    attached: Arc<Mutex<BTreeMap<String, String>>>,
}

impl VmPassthrough {
    /// The context for devices of one VM.
    pub fn new(
        iommufd: SharedIommufd,
        ioas: IoasId,
        kvm: Arc<dyn KvmVfio>,
        memslots: Arc<dyn GuestMemslots>,
    ) -> VmPassthrough {
        VmPassthrough {
            iommufd,
            ioas,
            kvm,
            memslots,
            sysfs: Sysfs::host(),
            options: PciFunctionOptions::default(),
            attached: Arc::default(),
        }
    }
}

/// A device passed through to the guest. See the module docs.
pub struct PassthroughDevice {
    name: String,
    bdf: String,
    iommufd: SharedIommufd,
    kvm: Arc<dyn KvmVfio>,
    attached_set: Arc<Mutex<BTreeMap<String, String>>>,
    registered: bool,
    /// The device while setup runs and during teardown; inside `function` in between.
    device: Option<Box<dyn VfioDevice>>,
    function: Option<Arc<Mutex<VfioPciFunction>>>,
    kvm_added: bool,
    dev_id: Option<DevId>,
    attached: bool,
    can_reset: bool,
}

impl std::fmt::Debug for PassthroughDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassthroughDevice")
            .field("name", &self.name)
            .field("bdf", &self.bdf)
            .field("dev_id", &self.dev_id)
            .finish_non_exhaustive()
    }
}

impl PassthroughDevice {
    /// Sets up `dev` for the VM (see the module docs for the steps). `groups` makes the
    /// function's interrupt group once the vector count is known.
    pub fn attach(
        dev: &LocatedDevice,
        vm: &VmPassthrough,
        opener: &mut dyn VfioOpener,
        groups: &mut InterruptGroupFactory<'_>,
    ) -> Result<PassthroughDevice, PassthroughError> {
        let name = dev.name.clone();
        let bdf = dev.pci.bdf.clone();
        {
            let mut set = vm.attached.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(first) = set.get(&bdf) {
                return Err(PassthroughError::Duplicate {
                    name,
                    bdf,
                    first: first.clone(),
                });
            }
            set.insert(bdf.clone(), name.clone());
        }
        // From here on, dropping `pt` undoes whatever was done.
        let mut pt = PassthroughDevice {
            name: name.clone(),
            bdf: bdf.clone(),
            iommufd: vm.iommufd.clone(),
            kvm: vm.kvm.clone(),
            attached_set: vm.attached.clone(),
            registered: true,
            device: None,
            function: None,
            kvm_added: false,
            dev_id: None,
            attached: false,
            can_reset: false,
        };
        let (device, handle) = opener.open(dev).map_err(|source| PassthroughError::Open {
            name: name.clone(),
            bdf: bdf.clone(),
            path: dev.pci.cdev.display().to_string(),
            source,
        })?;
        let device = pt.device.insert(device);

        vm.kvm
            .add_file(device.fd())
            .map_err(|source| PassthroughError::KvmAdd {
                name: name.clone(),
                bdf: bdf.clone(),
                source,
            })?;
        pt.kvm_added = true;

        let dev_id =
            lock(&vm.iommufd)
                .bind_device(handle)
                .map_err(|source| PassthroughError::Bind {
                    name: name.clone(),
                    bdf: bdf.clone(),
                    source,
                })?;
        pt.dev_id = Some(dev_id);

        let attach = lock(&vm.iommufd).attach_device(dev_id, vm.ioas.into());
        match attach {
            Ok(_) => pt.attached = true,
            Err(source) if source.errno() == libc::EADDRINUSE => {
                let reserved = match vm.sysfs.pci_reserved_regions(&bdf) {
                    Ok(r) if !r.is_empty() => r
                        .iter()
                        .map(|r| format!("{} {}", r.kind, r.range))
                        .collect::<Vec<_>>()
                        .join(", "),
                    Ok(_) => "none listed in sysfs; its aperture".to_string(),
                    Err(e) => format!("unreadable: {e}"),
                };
                return Err(PassthroughError::ReservedCollision {
                    name,
                    bdf,
                    reserved,
                    source,
                });
            }
            Err(source) => return Err(PassthroughError::Attach { name, bdf, source }),
        }

        let device_err = |step| {
            let (name, bdf) = (name.clone(), bdf.clone());
            move |source| PassthroughError::Device {
                name,
                bdf,
                step,
                source,
            }
        };
        let info = device.info().map_err(device_err(SetupStep::Info))?;
        if info.can_reset() {
            device.reset().map_err(device_err(SetupStep::Reset))?;
            pt.can_reset = true;
        } else {
            log::info!("{name} ({bdf}): the device cannot be reset; it starts as the host left it");
        }

        let Some(device) = pt.device.take() else {
            unreachable!("the device was stored above and only teardown takes it");
        };
        let label = format!("{name} ({bdf})");
        match VfioPciFunction::new(&label, device, groups, vm.memslots.clone(), &vm.options) {
            Ok(f) => pt.function = Some(Arc::new(Mutex::new(f))),
            Err((source, device)) => {
                pt.device = Some(device);
                return Err(PassthroughError::Function { name, bdf, source });
            }
        }
        log::info!("{label}: passed through (iommufd device {dev_id})");
        Ok(pt)
    }

    /// The PCI function, to add to the PCI root (as `Arc<Mutex<dyn PciDevice>>`) and to
    /// call [`VfioPciFunction::bar_moved`] on from the root's BAR-move callback.
    pub fn function(&self) -> Option<Arc<Mutex<VfioPciFunction>>> {
        self.function.clone()
    }

    /// The name messages use (the `id=`, else the PCI address).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The PCI address on the host.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// The iommufd device id.
    pub fn dev_id(&self) -> Option<DevId> {
        self.dev_id
    }

    /// Undoes every completed step, in reverse.
    fn teardown(&mut self) {
        let label = format!("{} ({})", self.name, self.bdf);
        if let Some(f) = self.function.take() {
            let device = f.lock().unwrap_or_else(|e| e.into_inner()).shutdown();
            if device.is_some() {
                self.device = device;
            }
        }
        if self.can_reset {
            if let Some(d) = &self.device {
                if let Err(e) = d.reset() {
                    log::warn!("{label}: reset at teardown failed: {e}");
                }
            }
        }
        if let Some(dev_id) = self.dev_id {
            let mut iommufd = lock(&self.iommufd);
            if self.attached {
                if let Err(e) = iommufd.detach_device(dev_id) {
                    log::warn!("{label}: {e}");
                }
                self.attached = false;
            }
            if let Err(e) = iommufd.unbind_device(dev_id) {
                log::warn!("{label}: {e}");
            }
            self.dev_id = None;
        }
        if self.kvm_added {
            if let Some(d) = &self.device {
                if let Err(e) = self.kvm.remove_file(d.fd()) {
                    log::warn!("{label}: KVM_DEV_VFIO_FILE_DEL failed: {e}");
                }
            }
            self.kvm_added = false;
        }
        self.device = None;
        if self.registered {
            let mut set = self.attached_set.lock().unwrap_or_else(|e| e.into_inner());
            set.remove(&self.bdf);
            self.registered = false;
        }
    }
}

impl Drop for PassthroughDevice {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests;
