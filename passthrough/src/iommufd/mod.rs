//! The [`Iommufd`] trait: the part of the kernel's iommufd (and of the VFIO cdev's iommufd
//! ioctls) a VMM needs, as one small object-safe trait with two backends, the kernel
//! ([`crate::KernelIommufd`]) and an in-process model ([`crate::ModelIommufd`]).
//!
//! The semantics, including which errno each failure gives, are the kernel's
//! (`include/uapi/linux/iommufd.h`, `drivers/iommu/iommufd/`); the conformance suite
//! ([`crate::conformance`]) holds both backends to them.
//!
//! Nested translation on ARM SMMUv3 is covered too: a vIOMMU over a `NEST_PARENT` HWPT,
//! vDEVICEs (guest StreamIDs), nested HWPTs from a guest STE, invalidations forwarded on
//! the vIOMMU and a vEVENTQ to read the guest's faults from.
//!
//! Not here: other vIOMMU types (VT-d, AMD, Tegra CMDQV), dirty tracking bitmaps, IOAS
//! copy, PASID attach, fault (PRI) queues, HW queues.

use std::fmt;
use std::os::fd::{BorrowedFd, OwnedFd};

use iommufd_bindings::iommufd as b;

use crate::iova::{HostVirtAddr, Iova, IovaRange};

mod error;

use crate::model::ModelDevice;
pub use error::{errno_name, IommufdError, Op, Result};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u32);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// Any iommufd object id (what `IOMMU_DESTROY` and the `pt_id` fields take).
    ObjectId
);
id_type!(
    /// Id of an I/O address space (`IOMMU_IOAS_ALLOC`).
    IoasId
);
id_type!(
    /// Id of a hardware page table (`IOMMU_HWPT_ALLOC`, or made by attaching to an IOAS).
    HwptId
);
id_type!(
    /// Id of a device bound to the iommufd (`VFIO_DEVICE_BIND_IOMMUFD`'s `out_devid`).
    DevId
);

id_type!(
    /// Id of a vIOMMU (`IOMMU_VIOMMU_ALLOC`).
    ViommuId
);
id_type!(
    /// Id of a vDEVICE (`IOMMU_VDEVICE_ALLOC`).
    VdeviceId
);
id_type!(
    /// Id of a vEVENTQ (`IOMMU_VEVENTQ_ALLOC`).
    VeventqId
);

/// Every typed id is also an [`ObjectId`] (for `IOMMU_DESTROY` and `pt_id` fields).
macro_rules! object_ids {
    ($($name:ident),*) => {
        $(impl From<$name> for ObjectId {
            fn from(id: $name) -> ObjectId {
                ObjectId(id.0)
            }
        })*
    };
}
object_ids!(IoasId, HwptId, DevId, ViommuId, VdeviceId, VeventqId);

/// One guest STE as `IOMMU_HWPT_DATA_ARM_SMMUV3` carries it (`struct
/// iommu_hwpt_arm_smmuv3`): the STE's first two 64-bit words, CPU order.
pub type VSte = [u64; 2];

/// One raw SMMUv3 command as `IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3` carries it.
pub type SmmuCmd = [u64; 2];

/// One record read from a vEVENTQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VEvent {
    /// `iommufd_vevent_header.sequence` (31 bits, wraps).
    pub sequence: u32,
    /// The queue overflowed before this point (`IOMMU_VEVENTQ_FLAG_LOST_EVENTS`); such a
    /// record has no event data.
    pub lost: bool,
    /// `struct iommu_vevent_arm_smmuv3`: the event with the StreamID already the vSID.
    pub event: [u64; 4],
}

/// DMA permissions of a mapping (`enum iommufd_ioas_map_flags`, less `FIXED_IOVA`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prot(pub u32);

impl Prot {
    /// No access: the kernel rejects it with `EINVAL`.
    pub const NONE: Prot = Prot(0);
    /// The device may read.
    pub const READ: Prot = Prot(b::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE);
    /// The device may write.
    pub const WRITE: Prot = Prot(b::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE);
    /// The device may read and write (guest RAM).
    pub const READ_WRITE: Prot = Prot(Self::READ.0 | Self::WRITE.0);

    /// True if all bits of `other` are set.
    pub const fn contains(self, other: Prot) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Flags of `IOMMU_HWPT_ALLOC` (`enum iommufd_hwpt_alloc_flags`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HwptFlags(pub u32);

impl HwptFlags {
    /// A plain paging HWPT.
    pub const NONE: HwptFlags = HwptFlags(0);
    /// The HWPT may be the stage-2 parent of nested (guest stage-1) HWPTs.
    pub const NEST_PARENT: HwptFlags =
        HwptFlags(b::iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_NEST_PARENT);
    /// The HWPT tracks DMA writes (for live migration).
    pub const DIRTY_TRACKING: HwptFlags =
        HwptFlags(b::iommufd_hwpt_alloc_flags_IOMMU_HWPT_ALLOC_DIRTY_TRACKING);

    /// True if all bits of `other` are set.
    pub const fn contains(self, other: HwptFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// The IOMMU behind a device (`enum iommu_hw_info_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HwInfoType(pub u32);

impl HwInfoType {
    /// The driver reports nothing.
    pub const NONE: HwInfoType = HwInfoType(b::iommu_hw_info_type_IOMMU_HW_INFO_TYPE_NONE);
    /// Intel VT-d.
    pub const INTEL_VTD: HwInfoType =
        HwInfoType(b::iommu_hw_info_type_IOMMU_HW_INFO_TYPE_INTEL_VTD);
    /// ARM SMMUv3.
    pub const ARM_SMMUV3: HwInfoType =
        HwInfoType(b::iommu_hw_info_type_IOMMU_HW_INFO_TYPE_ARM_SMMUV3);
    /// AMD IOMMU.
    pub const AMD: HwInfoType = HwInfoType(b::iommu_hw_info_type_IOMMU_HW_INFO_TYPE_AMD);
}

impl fmt::Display for HwInfoType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            HwInfoType::NONE => write!(f, "none"),
            HwInfoType::INTEL_VTD => write!(f, "Intel VT-d"),
            HwInfoType::ARM_SMMUV3 => write!(f, "ARM SMMUv3"),
            HwInfoType::AMD => write!(f, "AMD IOMMU"),
            HwInfoType(other) => write!(f, "type {other}"),
        }
    }
}

/// What `IOMMU_GET_HW_INFO` reports about the IOMMU behind a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HwInfo {
    /// Which IOMMU; says how to decode `data`.
    pub kind: HwInfoType,
    /// `enum iommufd_hw_capabilities` bits.
    pub capabilities: u64,
    /// Width of PASIDs; 0 without PASID support.
    pub max_pasid_log2: u8,
    /// The driver's raw info (`struct iommu_hw_info_vtd`, `..._arm_smmuv3`, ...).
    pub data: Vec<u8>,
}

/// The allowed IOVA ranges of an IOAS and the alignment mappings need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IovaRanges {
    /// Sorted, disjoint ranges where a mapping may go.
    pub ranges: Vec<IovaRange>,
    /// IOVA, length and source offset of a map must be multiples of this (1 = any).
    pub alignment: u64,
}

/// Answer of [`Iommufd::iova_ranges_into`] when the buffer was large enough.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangesReply {
    /// How many ranges were written.
    pub count: u32,
    /// The IOAS's IOVA alignment.
    pub alignment: u64,
}

/// Where the pages of a mapping come from.
#[derive(Clone, Copy, Debug)]
pub enum MapSource<'a> {
    /// Memory of this process (`IOMMU_IOAS_MAP`).
    UserVa(HostVirtAddr),
    /// A memfd, from `offset` (`IOMMU_IOAS_MAP_FILE`).
    File {
        /// The memfd.
        fd: BorrowedFd<'a>,
        /// Byte offset into the file.
        offset: u64,
    },
}

/// A device to bind: what [`Iommufd::bind_device`] takes.
#[derive(Debug)]
pub enum DeviceHandle {
    /// An opened VFIO cdev (`/dev/vfio/devices/vfioN`). The backend keeps the fd; closing
    /// it (unbind, or dropping the backend) unbinds the device. Bind a `try_clone()` to
    /// keep using the device (regions, interrupts) through the original fd.
    VfioCdev(OwnedFd),
    /// A simulated device, for the model backend.
    Model(ModelDevice),
}

/// One map of [`Iommufd::map_fixed_many`]: `length` bytes of `source` at `iova`.
#[derive(Clone, Copy, Debug)]
pub struct FixedMap<'a> {
    /// Where the memory comes from.
    pub source: MapSource<'a>,
    /// Bytes.
    pub length: u64,
    /// Where it goes.
    pub iova: Iova,
    /// Access.
    pub prot: Prot,
}

impl FixedMap<'_> {
    /// The operation, for errors.
    pub fn op(&self, ioas: IoasId) -> Op {
        Op::Map {
            ioas,
            iova: Some(self.iova),
            length: self.length,
            file: matches!(self.source, MapSource::File { .. }),
        }
    }
}

/// The iommufd operations a VMM needs. Object-safe: use it as `&mut dyn Iommufd` or
/// generically.
///
/// Every method is one kernel call (ioctl or close) with the kernel's semantics and
/// errnos; the provided methods are conveniences built on them.
pub trait Iommufd {
    /// `IOMMU_IOAS_ALLOC`: a new, empty IOAS whose IOVA range is the whole space.
    fn alloc_ioas(&mut self) -> Result<IoasId>;

    /// `IOMMU_IOAS_IOVA_RANGES` into `out`. The IOVA ranges are where a mapping may go:
    /// the whole space, narrowed by each attached device's reserved regions and aperture.
    /// With more ranges than `out` holds, fills what fits and fails with
    /// [`IommufdError::RangesBufferTooSmall`] (`EMSGSIZE`) giving the count.
    fn iova_ranges_into(&mut self, ioas: IoasId, out: &mut [IovaRange]) -> Result<RangesReply>;

    /// `IOMMU_IOAS_ALLOW_IOVAS`: replace the IOAS's allowed list. Allowed IOVA is never
    /// given up: attaching a device whose reserved regions hit it fails (`EADDRINUSE`),
    /// as does allowing a reserved range. Kernel-chosen IOVAs stay inside it.
    fn allow_iovas(&mut self, ioas: IoasId, ranges: &[IovaRange]) -> Result<()>;

    /// `IOMMU_IOAS_MAP` / `IOMMU_IOAS_MAP_FILE` of `length` bytes from `source`, at `iova`
    /// or (with `None`) at an IOVA the kernel picks. Returns the IOVA used.
    fn map(
        &mut self,
        ioas: IoasId,
        source: MapSource<'_>,
        length: u64,
        iova: Option<Iova>,
        prot: Prot,
    ) -> Result<Iova>;

    /// Several fixed-IOVA maps into `ioas`, each an `IOMMU_IOAS_MAP` / `_MAP_FILE`; one
    /// result per request, in order. A backend that can pin in parallel spreads them over up
    /// to `threads` threads (the kernel pins each map under a shared lock); this default maps
    /// them one after the other, stopping at the first failure (later ones are not tried and
    /// report `ECANCELED`).
    fn map_fixed_many(
        &mut self,
        ioas: IoasId,
        maps: &[FixedMap<'_>],
        threads: usize,
    ) -> Vec<Result<()>> {
        let _ = threads;
        let mut failed = false;
        maps.iter()
            .map(|m| {
                if failed {
                    return Err(IommufdError::failed(m.op(ioas), libc::ECANCELED));
                }
                let r = self.map(ioas, m.source, m.length, Some(m.iova), m.prot);
                failed = r.is_err();
                r.map(|_| ())
            })
            .collect()
    }

    /// `IOMMU_IOAS_UNMAP`: remove every mapping inside `iova..iova+length`; returns the
    /// bytes unmapped. `(0, u64::MAX)` unmaps everything (and succeeds on an empty IOAS).
    fn unmap(&mut self, ioas: IoasId, iova: Iova, length: u64) -> Result<u64>;

    /// `IOMMU_HWPT_ALLOC`: a paging HWPT for `dev` translating through IOAS `pt`.
    fn alloc_hwpt(&mut self, dev: DevId, pt: ObjectId, flags: HwptFlags) -> Result<HwptId>;

    /// `IOMMU_GET_HW_INFO`: what IOMMU sits behind `dev`.
    fn hw_info(&mut self, dev: DevId) -> Result<HwInfo>;

    /// `IOMMU_DESTROY`: free an IOAS or HWPT (`EBUSY` while in use).
    fn destroy(&mut self, id: ObjectId) -> Result<()>;

    /// `VFIO_DEVICE_BIND_IOMMUFD`: bind a device to this iommufd.
    fn bind_device(&mut self, device: DeviceHandle) -> Result<DevId>;

    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: attach (or re-attach, replacing) `dev` to an IOAS
    /// (the kernel finds or makes a HWPT) or a HWPT. Returns the HWPT used.
    fn attach_device(&mut self, dev: DevId, pt: ObjectId) -> Result<HwptId>;

    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT`: detach `dev`; succeeds if it was not attached.
    fn detach_device(&mut self, dev: DevId) -> Result<()>;

    /// Close the device's cdev, which detaches and unbinds it.
    fn unbind_device(&mut self, dev: DevId) -> Result<()>;

    /// `IOMMU_VIOMMU_ALLOC` of type ARM_SMMUV3 for the physical SMMU behind `dev`, over
    /// the stage-2 HWPT `parent` (which must be a `NEST_PARENT`).
    fn alloc_viommu(&mut self, dev: DevId, parent: HwptId) -> Result<ViommuId>;

    /// `IOMMU_VDEVICE_ALLOC`: `dev` is `virt_id` (its guest StreamID) on `viommu`.
    fn alloc_vdevice(&mut self, viommu: ViommuId, dev: DevId, virt_id: u64) -> Result<VdeviceId>;

    /// `IOMMU_HWPT_ALLOC` of a nested HWPT on `viommu` from a guest STE
    /// (`IOMMU_HWPT_DATA_ARM_SMMUV3`); `EIO` for fields or values a guest may not set.
    fn alloc_nested_hwpt(&mut self, dev: DevId, viommu: ViommuId, ste: VSte) -> Result<HwptId>;

    /// `IOMMU_HWPT_INVALIDATE` on `viommu` with raw SMMUv3 commands
    /// (`IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3`), their StreamIDs being vSIDs. On a
    /// failure, [`IommufdError::Invalidate`] says how many the kernel handled.
    fn invalidate_viommu(&mut self, viommu: ViommuId, cmds: &[SmmuCmd]) -> Result<()>;

    /// `IOMMU_VEVENTQ_ALLOC` of type ARM_SMMUV3 with room for `depth` events.
    fn alloc_veventq(&mut self, viommu: ViommuId, depth: u32) -> Result<VeventqId>;

    /// Reads up to `max` pending records of a vEVENTQ without blocking (none: empty).
    fn read_vevents(&mut self, veventq: VeventqId, max: usize) -> Result<Vec<VEvent>>;

    /// A duplicate of a vEVENTQ's fd, readable while events are pending, for an event
    /// loop; `None` where there is no fd (the model) or no such queue.
    fn veventq_fd(&self, _veventq: VeventqId) -> Option<OwnedFd> {
        None
    }

    /// All IOVA ranges of `ioas`, retrying with a larger buffer on `EMSGSIZE`.
    fn iova_ranges(&mut self, ioas: IoasId) -> Result<IovaRanges> {
        let mut buf = vec![IovaRange::FULL; 8];
        // The count can grow between two calls if a device attaches meanwhile; a few
        // rounds settle it.
        for _ in 0..8 {
            match self.iova_ranges_into(ioas, &mut buf) {
                Ok(reply) => {
                    buf.truncate(reply.count as usize);
                    return Ok(IovaRanges {
                        ranges: buf,
                        alignment: reply.alignment,
                    });
                }
                Err(IommufdError::RangesBufferTooSmall { needed, .. }) => {
                    buf.resize(needed as usize, IovaRange::FULL);
                }
                Err(e) => return Err(e),
            }
        }
        Err(IommufdError::failed(Op::IovaRanges(ioas), libc::EMSGSIZE))
    }

    /// Map `length` bytes of this process's memory at `va`.
    fn map_user(
        &mut self,
        ioas: IoasId,
        va: HostVirtAddr,
        length: u64,
        iova: Option<Iova>,
        prot: Prot,
    ) -> Result<Iova> {
        self.map(ioas, MapSource::UserVa(va), length, iova, prot)
    }

    /// Map `length` bytes of a memfd from `offset`.
    fn map_file(
        &mut self,
        ioas: IoasId,
        fd: BorrowedFd<'_>,
        offset: u64,
        length: u64,
        iova: Option<Iova>,
        prot: Prot,
    ) -> Result<Iova> {
        self.map(ioas, MapSource::File { fd, offset }, length, iova, prot)
    }

    /// Unmap everything in `ioas`; returns the bytes unmapped.
    fn unmap_all(&mut self, ioas: IoasId) -> Result<u64> {
        self.unmap(ioas, Iova(0), u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn errors_name_the_errno_and_say_what_to_do() {
        let e = IommufdError::failed(
            Op::Map {
                ioas: IoasId(1),
                iova: Some(Iova(0x1000)),
                length: 0x2000,
                file: false,
            },
            libc::EEXIST,
        );
        let text = e.to_string();
        assert!(text.starts_with("IOMMU_IOAS_MAP of 0x2000 bytes at IOVA 0x1000 in IOAS 1"));
        assert!(text.contains("EEXIST"));
        assert!(text.contains("unmap it first"));
        assert_eq!(e.errno(), libc::EEXIST);

        let e = IommufdError::RangesBufferTooSmall {
            ioas: IoasId(2),
            needed: 3,
            given: 1,
        };
        assert_eq!(e.errno(), libc::EMSGSIZE);
        assert_eq!(e.op(), Some(Op::IovaRanges(IoasId(2))));

        let e = IommufdError::Open {
            path: "/dev/iommu".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert!(e.to_string().contains("CONFIG_IOMMUFD"));
        assert_eq!(e.errno(), libc::ENOENT);
    }

    #[test]
    fn flag_values_match_the_uapi() {
        assert_eq!(Prot::READ.0, 4);
        assert_eq!(Prot::WRITE.0, 2);
        assert_eq!(HwptFlags::NEST_PARENT.0, 1);
        assert_eq!(HwptFlags::DIRTY_TRACKING.0, 2);
        assert!(Prot::READ_WRITE.contains(Prot::READ));
        assert_eq!(HwInfoType::ARM_SMMUV3.to_string(), "ARM SMMUv3");
    }
}
