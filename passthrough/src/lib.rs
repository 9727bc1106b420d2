//! Device passthrough on iommufd.
//!
//! A passed-through device does DMA with guest physical addresses, so the guest's RAM is
//! mapped into an iommufd I/O address space (IOAS) at IOVA = GPA. That only works if
//! guest RAM avoids every IOVA the host IOMMU will not translate for the device (its
//! reserved regions, e.g. the MSI window, and whatever lies outside its aperture). So,
//! top-down:
//!
//! 1. [`reserved_regions`] reads what the host reserves per device (sysfs), and
//!    [`Iommufd::iova_ranges`] what an IOAS allows once the devices are attached.
//! 2. [`memory_map::plan`] places guest RAM around those ranges and the arch layout's
//!    fixed windows, preferring 1 GiB / 2 MiB aligned placement; its [`MemoryMap`] feeds
//!    the boot tables (E820, device tree) and the KVM memslots.
//! 3. The VMM maps each RAM region into the IOAS ([`GuestRamDma`], after checking
//!    RLIMIT_MEMLOCK with [`MemlockLimit`]) and guards it ([`guard_ram`]) so that no later
//!    attach can take RAM IOVA away.
//!
//! Each `--device` ([`DeviceSpec`], located and de-duplicated by [`locate_all`]) becomes a
//! [`PassthroughDevice`]: its VFIO cdev opened, registered with KVM ([`KvmVfio`]), bound
//! and attached to the VM's IOAS, reset, and presented as a [`VfioPciFunction`] on the
//! VM's PCI root (virtualized config space, BARs mmapped into the guest through
//! [`GuestMemslots`] where possible, MSI-X/MSI wired to KVM irqfds). Dropping it undoes
//! every step in reverse; a failed setup undoes the steps it completed.
//!
//! Wiring, for the VMM: open the iommufd ([`open_iommufd`]) and share it
//! ([`SharedIommufd`]); make a [`VmIoas`]; build a [`VmPassthrough`] with the IOAS, a
//! [`KernelKvmVfio`] and the VMM's [`GuestMemslots`]; `PassthroughDevice::attach` each
//! located device with a [`KernelOpener`] and an interrupt-group factory; add each
//! [`PassthroughDevice::function`] to the PCI root and call
//! [`VfioPciFunction::bar_moved`] from the root's BAR-move callback; map RAM with
//! [`GuestRamDma`]. Drop in reverse: RAM DMA, devices, IOAS, iommufd.
//!
//! [`Iommufd`] is the boundary to the kernel, with two backends: [`KernelIommufd`]
//! (ioctls on `/dev/iommu` and the VFIO cdev) and [`ModelIommufd`] (in-process, the
//! kernel's semantics and errnos, with fault injection). [`conformance`] is one suite run
//! against both. [`VfioDevice`] is the boundary for one VFIO device fd, with
//! [`KernelVfioDevice`] (over vfio-ioctls) and [`FakeVfioDevice`]. The thin layers with all
//! the `unsafe` are `sys` (iommufd, binding) and, in `vfio_kernel`, one small module per
//! call vfio-ioctls lacks (GET_INFO's answer, RESET's result, region mmaps).
//!
//! With a guest-visible vSMMUv3 (aarch64), [`nested`] holds the nested-translation
//! objects (stage-2 parent, vIOMMU, vDEVICE, nested HWPTs, vEVENTQ) and
//! [`nested::IommufdSmmu`], the backend of the emulated SMMU (`devices::smmuv3`).
//!
//! Not here: KVM memslots, GSI routing and boot tables (the vmm crate implements
//! [`GuestMemslots`] and the interrupt groups), the PCI root and the SMMU emulation (the
//! devices crate), INTx, migration.

#![deny(missing_docs)]

pub mod conformance;
pub mod device_spec;
pub mod fake_vfio;
pub mod faulty;
pub mod hypervisor;
pub mod iommufd;
pub mod iova;
pub mod kernel;
pub mod memlock;
pub mod memory_map;
pub mod model;
pub mod nested;
pub mod passthrough_device;
pub mod ram_dma;
pub mod reserved_regions;
mod sys;
pub mod vfio_cdev;
pub mod vfio_device;
mod vfio_kernel;
pub mod vfio_pci;

pub use memory_map::{
    guard_ram, plan, Coverage, MemoryMap, MemoryMapError, MemoryMapRequest, RamRegion,
};
pub use reserved_regions::{ReservedKind, ReservedRegion, Sysfs};
pub use vfio_cdev::{locate, probe_iova_ranges, probe_ranges, PciPassthroughDevice, VfioCdevError};

pub use iommufd::{
    DevId, DeviceHandle, FixedMap, HwInfo, HwInfoType, HwptFlags, HwptId, IoasId, Iommufd,
    IommufdError, IovaRanges, MapSource, ObjectId, Op, Prot, RangesReply, SmmuCmd, VEvent, VSte,
    VdeviceId, VeventqId, ViommuId,
};
pub use iova::{HostVirtAddr, Iova, IovaRange};
pub use kernel::KernelIommufd;

pub use model::{ModelDevice, ModelIommufd};

pub use fake_vfio::{FakeOp, FakePciBuilder, FakeRecord, FakeVfioDevice, FakeVfioHandle};
pub use hypervisor::{
    FakeInterruptGroup, FakeKvmVfio, FakeMemslots, GuestMemslots, KernelKvmVfio, KvmVfio, MemslotId,
};
pub use memlock::{MemlockError, MemlockLimit};
pub use vfio_device::{
    DeviceInfo, IrqInfo, MmapRange, RegionFlags, RegionInfo, VfioDevice, VfioDeviceError,
};
pub use vfio_kernel::{KernelVfioDevice, MmapArea};
pub use vfio_pci::{InterruptGroupFactory, PciFunctionOptions, VfioPciError, VfioPciFunction};

pub use device_spec::{locate_all, DeviceSpec, DeviceSpecError, LocatedDevice};
pub use passthrough_device::{
    open_iommufd, FakeOpener, KernelOpener, PassthroughDevice, PassthroughError, SetupStep,
    VfioOpener, VmPassthrough,
};
pub use ram_dma::{GuestRam, GuestRamDma, RamDmaError, SharedIommufd, VmIoas};
