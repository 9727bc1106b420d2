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
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;

use iommufd_bindings::iommufd as b;

use crate::iova::{HostVirtAddr, Iova, IovaRange};
use crate::model::ModelDevice;

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

impl From<ViommuId> for ObjectId {
    fn from(id: ViommuId) -> ObjectId {
        ObjectId(id.0)
    }
}

impl From<VdeviceId> for ObjectId {
    fn from(id: VdeviceId) -> ObjectId {
        ObjectId(id.0)
    }
}

impl From<VeventqId> for ObjectId {
    fn from(id: VeventqId) -> ObjectId {
        ObjectId(id.0)
    }
}

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

impl From<IoasId> for ObjectId {
    fn from(id: IoasId) -> ObjectId {
        ObjectId(id.0)
    }
}

impl From<HwptId> for ObjectId {
    fn from(id: HwptId) -> ObjectId {
        ObjectId(id.0)
    }
}

impl From<DevId> for ObjectId {
    fn from(id: DevId) -> ObjectId {
        ObjectId(id.0)
    }
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

/// The operation an [`IommufdError`] is about, with its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `IOMMU_DESTROY`.
    Destroy(ObjectId),
    /// `IOMMU_IOAS_ALLOC`.
    IoasAlloc,
    /// `IOMMU_IOAS_IOVA_RANGES`.
    IovaRanges(IoasId),
    /// `IOMMU_IOAS_ALLOW_IOVAS`.
    AllowIovas(IoasId),
    /// `IOMMU_IOAS_MAP` / `IOMMU_IOAS_MAP_FILE`.
    Map {
        /// The IOAS.
        ioas: IoasId,
        /// Fixed IOVA, or `None` for kernel-chosen.
        iova: Option<Iova>,
        /// Bytes.
        length: u64,
        /// True for `IOMMU_IOAS_MAP_FILE`.
        file: bool,
    },
    /// `IOMMU_IOAS_UNMAP`.
    Unmap {
        /// The IOAS.
        ioas: IoasId,
        /// First IOVA.
        iova: Iova,
        /// Bytes.
        length: u64,
    },
    /// `IOMMU_HWPT_ALLOC`.
    HwptAlloc {
        /// The device the HWPT is for.
        dev: DevId,
        /// The IOAS (or parent) it translates through.
        pt: ObjectId,
        /// Requested flags.
        flags: HwptFlags,
    },
    /// `IOMMU_GET_HW_INFO`.
    GetHwInfo(DevId),
    /// `VFIO_DEVICE_BIND_IOMMUFD`.
    Bind,
    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`.
    Attach {
        /// The device.
        dev: DevId,
        /// IOAS or HWPT.
        pt: ObjectId,
    },
    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT`.
    Detach(DevId),
    /// Closing the VFIO cdev.
    Unbind(DevId),
    /// `IOMMU_VIOMMU_ALLOC` (type ARM_SMMUV3).
    ViommuAlloc {
        /// A device behind the physical SMMU.
        dev: DevId,
        /// The `NEST_PARENT` HWPT (stage 2).
        parent: HwptId,
    },
    /// `IOMMU_VDEVICE_ALLOC`.
    VdeviceAlloc {
        /// The vIOMMU.
        viommu: ViommuId,
        /// The device.
        dev: DevId,
        /// Its guest-visible id (the vSID).
        virt_id: u64,
    },
    /// `IOMMU_HWPT_ALLOC` of a nested HWPT on a vIOMMU (`IOMMU_HWPT_DATA_ARM_SMMUV3`).
    NestedAlloc {
        /// The device.
        dev: DevId,
        /// The vIOMMU.
        viommu: ViommuId,
    },
    /// `IOMMU_VEVENTQ_ALLOC` (type ARM_SMMUV3).
    VeventqAlloc(ViommuId),
    /// Reading a vEVENTQ's fd.
    ReadVevents(VeventqId),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Destroy(id) => write!(f, "IOMMU_DESTROY of object {id}"),
            Op::IoasAlloc => write!(f, "IOMMU_IOAS_ALLOC"),
            Op::IovaRanges(ioas) => write!(f, "IOMMU_IOAS_IOVA_RANGES of IOAS {ioas}"),
            Op::AllowIovas(ioas) => write!(f, "IOMMU_IOAS_ALLOW_IOVAS on IOAS {ioas}"),
            Op::Map {
                ioas,
                iova,
                length,
                file,
            } => {
                let name = if file {
                    "IOMMU_IOAS_MAP_FILE"
                } else {
                    "IOMMU_IOAS_MAP"
                };
                match iova {
                    Some(iova) => write!(
                        f,
                        "{name} of {length:#x} bytes at IOVA {iova} in IOAS {ioas}"
                    ),
                    None => write!(
                        f,
                        "{name} of {length:#x} bytes at a kernel-chosen IOVA in IOAS {ioas}"
                    ),
                }
            }
            Op::Unmap { ioas, iova, length } => {
                write!(
                    f,
                    "IOMMU_IOAS_UNMAP of {length:#x} bytes at IOVA {iova} in IOAS {ioas}"
                )
            }
            Op::HwptAlloc { dev, pt, flags } => write!(
                f,
                "IOMMU_HWPT_ALLOC for device {dev} on object {pt} (flags {:#x})",
                flags.0
            ),
            Op::GetHwInfo(dev) => write!(f, "IOMMU_GET_HW_INFO of device {dev}"),
            Op::Bind => write!(f, "VFIO_DEVICE_BIND_IOMMUFD"),
            Op::Attach { dev, pt } => {
                write!(
                    f,
                    "VFIO_DEVICE_ATTACH_IOMMUFD_PT of device {dev} to object {pt}"
                )
            }
            Op::Detach(dev) => write!(f, "VFIO_DEVICE_DETACH_IOMMUFD_PT of device {dev}"),
            Op::Unbind(dev) => write!(f, "unbinding device {dev}"),
            Op::ViommuAlloc { dev, parent } => write!(
                f,
                "IOMMU_VIOMMU_ALLOC (ARM SMMUv3) for device {dev} on stage-2 HWPT {parent}"
            ),
            Op::VdeviceAlloc {
                viommu,
                dev,
                virt_id,
            } => write!(
                f,
                "IOMMU_VDEVICE_ALLOC of device {dev} as virtual id {virt_id:#x} on vIOMMU {viommu}"
            ),
            Op::NestedAlloc { dev, viommu } => write!(
                f,
                "IOMMU_HWPT_ALLOC of a nested HWPT (guest STE) for device {dev} on vIOMMU {viommu}"
            ),
            Op::VeventqAlloc(viommu) => write!(f, "IOMMU_VEVENTQ_ALLOC on vIOMMU {viommu}"),
            Op::ReadVevents(q) => write!(f, "reading vEVENTQ {q}"),
        }
    }
}

/// Errors of iommufd operations; see [`IommufdError::errno`] for the kernel's code.
#[derive(Debug, thiserror::Error)]
pub enum IommufdError {
    /// An operation failed with an errno.
    #[error("{op} failed: {}{}", errno_text(*.errno), hint(.op, *.errno))]
    Failed {
        /// What was attempted.
        op: Op,
        /// The kernel's (or the model's) errno.
        errno: i32,
    },
    /// `IOMMU_IOAS_IOVA_RANGES` had more ranges than the buffer (`EMSGSIZE`).
    #[error(
        "IOMMU_IOAS_IOVA_RANGES of IOAS {ioas}: {needed} ranges do not fit in a buffer of \
         {given} (EMSGSIZE); retry with a buffer of {needed} or use iova_ranges()"
    )]
    RangesBufferTooSmall {
        /// The IOAS.
        ioas: IoasId,
        /// Ranges the IOAS has.
        needed: u32,
        /// Buffer entries given.
        given: u32,
    },
    /// `IOMMU_HWPT_INVALIDATE` on a vIOMMU stopped at command `done` of `total`.
    #[error(
        "IOMMU_HWPT_INVALIDATE on vIOMMU {viommu}: command {done} of {total} failed: {}{}",
        errno_text(*.errno),
        invalidate_hint(*.errno)
    )]
    Invalidate {
        /// The vIOMMU.
        viommu: ViommuId,
        /// Commands the kernel handled before the failing one (its `entry_num` answer).
        done: u32,
        /// Commands given.
        total: u32,
        /// The errno.
        errno: i32,
    },
    /// The iommufd character device could not be opened.
    #[error("cannot open {}: {source}{}", .path.display(), open_hint(.source))]
    Open {
        /// The path tried.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

impl IommufdError {
    /// An operation failure with `errno`.
    pub fn failed(op: Op, errno: i32) -> IommufdError {
        IommufdError::Failed { op, errno }
    }

    /// The errno the kernel (or the model) returned.
    pub fn errno(&self) -> i32 {
        match self {
            IommufdError::Failed { errno, .. } | IommufdError::Invalidate { errno, .. } => *errno,
            IommufdError::RangesBufferTooSmall { .. } => libc::EMSGSIZE,
            IommufdError::Open { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }

    /// The operation, if the error is about one.
    pub fn op(&self) -> Option<Op> {
        match self {
            IommufdError::Failed { op, .. } => Some(*op),
            IommufdError::RangesBufferTooSmall { ioas, .. } => Some(Op::IovaRanges(*ioas)),
            IommufdError::Invalidate { .. } | IommufdError::Open { .. } => None,
        }
    }
}

fn invalidate_hint(errno: i32) -> &'static str {
    match errno {
        libc::EIO => {
            "; the command is not one a vIOMMU forwards (CFGI_CD, CFGI_CD_ALL, ATC_INV, \
             TLBI_NH_*, TLBI_NSNH_ALL) or names a StreamID with no vDEVICE"
        }
        libc::EINVAL => "; the id is not a vIOMMU or nested HWPT",
        _ => "",
    }
}

/// Result of iommufd operations.
pub type Result<T> = std::result::Result<T, IommufdError>;

/// The symbolic name of the errnos iommufd uses.
pub fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::ENOMEM => "ENOMEM",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOTTY => "ENOTTY",
        libc::ENOSPC => "ENOSPC",
        libc::E2BIG => "E2BIG",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EACCES => "EACCES",
        _ => return None,
    })
}

fn errno_text(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    match errno_name(errno) {
        Some(name) => format!("{name} ({text})"),
        None => text,
    }
}

/// What to do about a failure, as far as the errno says.
fn hint(op: &Op, errno: i32) -> &'static str {
    use libc::*;
    match (op, errno) {
        (Op::Map { .. }, EEXIST) => {
            "; part of that IOVA range is already mapped: unmap it first (a map never \
             replaces existing mappings)"
        }
        (Op::Map { .. }, EINVAL) => {
            "; IOVA, length and source offset must be multiples of the IOAS's IOVA \
             alignment (IOMMU_IOAS_IOVA_RANGES), the length non-zero, read and/or write \
             requested, and the range must avoid reserved regions such as the MSI window"
        }
        (Op::Map { .. }, ENOSPC) => {
            "; no free IOVA hole that large inside the allowed ranges: widen the allowed \
             IOVAs or map at a fixed IOVA"
        }
        (Op::Map { .. }, ENOMEM) => {
            "; pinning the memory hit RLIMIT_MEMLOCK or host memory ran out: raise the \
             locked-memory limit (ulimit -l) or use CAP_IPC_LOCK"
        }
        (Op::Map { .. }, EFAULT) => "; the source memory is not mapped in this process",
        (Op::Map { .. }, EPERM) => "; write access was asked for read-only memory",
        (Op::Map { .. } | Op::Unmap { .. }, EOVERFLOW) => {
            "; the range runs past the end of the 64-bit address space"
        }
        (Op::Map { file: true, .. }, EBADF) => "; the file descriptor is not open",
        (Op::Unmap { .. }, ENOENT) => {
            "; nothing is mapped there, or the range cuts through a mapping: unmap whole \
             mappings as they were mapped"
        }
        (Op::AllowIovas(_), EADDRINUSE) => {
            "; an allowed range overlaps a reserved region (e.g. the MSI window) of an \
             attached device: plan guest RAM around it (vmm --print-memory-map)"
        }
        (Op::AllowIovas(_), EINVAL) => {
            "; every range needs start < last and the ranges must not overlap"
        }
        (Op::Attach { .. }, EADDRINUSE) => {
            "; the device's reserved regions or aperture collide with IOVA that is already \
             mapped or allowed (guest RAM): plan guest RAM with this device included \
             (vmm --print-memory-map) before mapping it"
        }
        (Op::Attach { .. }, EINVAL) => {
            "; the device is not bound, the target is not an IOAS or HWPT, or another \
             device of its IOMMU group is attached elsewhere"
        }
        (Op::HwptAlloc { .. }, EOPNOTSUPP) => {
            "; the IOMMU does not support these flags (nesting parents need e.g. an ARM \
             SMMUv3 with nesting; VT-d without nesting refuses them)"
        }
        (Op::HwptAlloc { .. }, EINVAL) => "; the pt id is not an IOAS",
        (Op::ViommuAlloc { .. }, EOPNOTSUPP) => {
            "; the host SMMU cannot nest for a VM: it needs stage-1 and stage-2 \
             (FEAT_NESTING) and a coherent stage 2 (S2FWB, or a CANWBS device)"
        }
        (Op::ViommuAlloc { .. }, EINVAL) => {
            "; the stage-2 HWPT was not allocated with IOMMU_HWPT_ALLOC_NEST_PARENT, or \
             belongs to another SMMU"
        }
        (Op::VdeviceAlloc { .. }, EEXIST) => {
            "; the device already has a vDEVICE, or another device has this virtual id"
        }
        (Op::VdeviceAlloc { .. } | Op::NestedAlloc { .. }, EINVAL) => {
            "; the device sits behind another physical SMMU than the vIOMMU's"
        }
        (Op::NestedAlloc { .. }, EIO) => {
            "; the STE sets fields a guest may not (only V, Config, S1Fmt, S1ContextPtr, \
             S1CDMax, S1DSS, S1CIR/COR/CSH, S1STALLD and EATS are allowed) or an \
             unsupported Config/EATS value"
        }
        (Op::VeventqAlloc(_), EEXIST) => "; the vIOMMU already has a vEVENTQ of this type",
        (Op::Attach { .. }, ENOENT) => {
            "; the object is gone, or a translating nested HWPT was attached before the \
             device's vDEVICE existed"
        }
        (Op::Destroy(_), EBUSY) => {
            "; the object is still in use: detach its devices and destroy the HWPTs using \
             it first"
        }
        (Op::Bind, EINVAL) => {
            "; the device is already bound, was opened through the legacy VFIO group, or \
             is not a device this backend can bind"
        }
        (Op::Bind, EPERM) => {
            "; the platform cannot isolate MSIs: enable interrupt remapping \
             (intel_iommu=on, or an ITS on ARM)"
        }
        (_, ENOENT) => "; no object with that id in this iommufd",
        (_, ENOTTY) => "; the kernel does not know this ioctl (too old, or not an iommufd)",
        _ => "",
    }
}

fn open_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENXIO) | Some(libc::ENODEV) => {
            "; the kernel lacks CONFIG_IOMMUFD or the module is not loaded (modprobe iommufd)"
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            "; run as root or give this user read/write access to the device node"
        }
        _ => "",
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
