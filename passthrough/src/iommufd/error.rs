//! [`IommufdError`] and [`Op`]: what failed, with the kernel's errno, and what to do about
//! it (the hints follow the kernel's reasons for each errno of each call).

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::{DevId, HwptFlags, HwptId, IoasId, ObjectId, VeventqId, ViommuId};
use crate::iova::Iova;

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
