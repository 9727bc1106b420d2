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
//! 3. The VMM maps each RAM region into the IOAS ([`Iommufd::map`]) and calls
//!    [`guard_ram`] so that no later attach can take RAM IOVA away.
//!
//! [`Iommufd`] is the boundary to the kernel, with two backends: [`KernelIommufd`]
//! (ioctls on `/dev/iommu` and the VFIO cdev) and [`ModelIommufd`] (in-process, the
//! kernel's semantics and errnos, with fault injection). [`conformance`] is one suite run
//! against both. The thin ioctl layer with all the `unsafe` is `sys`.
//!
//! Not here: VFIO regions, interrupts and config space (the devices crate), KVM memslots
//! and boot tables (the vmm crate), vIOMMU / nested translation.

#![deny(missing_docs)]

pub mod conformance;
pub mod iommufd;
pub mod iova;
pub mod kernel;
pub mod memory_map;
pub mod model;
pub mod reserved_regions;
mod sys;
pub mod vfio_cdev;

pub use memory_map::{
    guard_ram, plan, Coverage, MemoryMap, MemoryMapError, MemoryMapRequest, RamRegion,
};
pub use reserved_regions::{ReservedKind, ReservedRegion, Sysfs};
pub use vfio_cdev::{locate, probe_ranges, PciPassthroughDevice, VfioCdevError};

pub use iommufd::{
    DevId, DeviceHandle, HwInfo, HwInfoType, HwptFlags, HwptId, IoasId, Iommufd, IommufdError,
    IovaRanges, MapSource, ObjectId, Op, Prot, RangesReply,
};
pub use iova::{HostVirtAddr, Iova, IovaRange};
pub use kernel::KernelIommufd;

pub use model::{ModelDevice, ModelIommufd};
