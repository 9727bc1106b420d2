//! The [`VfioDevice`] trait: the hardware boundary for one VFIO device fd (regions,
//! interrupts, reset), with the kernel backend [`crate::KernelVfioDevice`] (over vfio-ioctls,
//! in `crate::vfio_kernel`) and a fake ([`crate::FakeVfioDevice`]) behind the same trait.
//!
//! A VFIO cdev answers region and interrupt ioctls only once it is bound to an iommufd
//! (`VFIO_DEVICE_BIND_IOMMUFD`, see [`crate::Iommufd::bind_device`]); before that the
//! kernel says `EINVAL`. The kernel backend is therefore opened first, a clone of its fd is
//! bound, and only then is it used.
//!
//! Not here: what the regions mean (the PCI config space and BARs are interpreted by
//! [`crate::vfio_pci`]), binding, and migration or dirty-page regions.

use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;

use vmm_sys_util::eventfd::EventFd;

use crate::vfio_kernel::MmapArea;

/// Region index of BAR 0 (BARs are 0..=5).
pub const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
/// Region index of the PCI config space.
pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
/// Interrupt index of MSI.
pub const VFIO_PCI_MSI_IRQ_INDEX: u32 = 1;
/// Interrupt index of MSI-X.
pub const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;

/// What `VFIO_DEVICE_GET_INFO` says about a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `VFIO_DEVICE_FLAGS_*`.
    pub flags: u32,
    /// Number of regions.
    pub num_regions: u32,
    /// Number of interrupt indexes.
    pub num_irqs: u32,
}

impl DeviceInfo {
    /// `VFIO_DEVICE_FLAGS_RESET`: `VFIO_DEVICE_RESET` is supported.
    pub const FLAG_RESET: u32 = 1 << 0;
    /// `VFIO_DEVICE_FLAGS_PCI`: a PCI device (vfio-pci region and interrupt layout).
    pub const FLAG_PCI: u32 = 1 << 1;

    /// Whether the device can be reset.
    pub fn can_reset(&self) -> bool {
        self.flags & Self::FLAG_RESET != 0
    }

    /// Whether it is a PCI device.
    pub fn is_pci(&self) -> bool {
        self.flags & Self::FLAG_PCI != 0
    }
}

/// `VFIO_REGION_INFO_FLAG_*`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionFlags(pub u32);

impl RegionFlags {
    /// The region can be read.
    pub const READ: RegionFlags = RegionFlags(1 << 0);
    /// The region can be written.
    pub const WRITE: RegionFlags = RegionFlags(1 << 1);
    /// The region (or the sparse areas it lists) can be mmapped.
    pub const MMAP: RegionFlags = RegionFlags(1 << 2);
    /// The answer carries a capability chain.
    pub const CAPS: RegionFlags = RegionFlags(1 << 3);

    /// True if all bits of `other` are set.
    pub const fn contains(self, other: RegionFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// A range of a region, as offsets from the region's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmapRange {
    /// First byte.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
}

/// What `VFIO_DEVICE_GET_REGION_INFO` says about one region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// The region index.
    pub index: u32,
    /// Bytes (0: the region does not exist, e.g. an unimplemented BAR).
    pub size: u64,
    /// What can be done with it.
    pub flags: RegionFlags,
    /// `VFIO_REGION_INFO_CAP_SPARSE_MMAP`: the only parts that may be mmapped, if the
    /// kernel narrowed mmap down to them.
    pub sparse: Option<Vec<MmapRange>>,
}

impl RegionInfo {
    /// The parts of the region that may be mmapped: the sparse areas if reported, else the
    /// whole region if it has the MMAP flag, else none.
    pub fn mmap_ranges(&self) -> Vec<MmapRange> {
        if !self.flags.contains(RegionFlags::MMAP) || self.size == 0 {
            return Vec::new();
        }
        match &self.sparse {
            Some(areas) => areas.iter().copied().filter(|a| a.size > 0).collect(),
            None => vec![MmapRange {
                offset: 0,
                size: self.size,
            }],
        }
    }
}

/// What `VFIO_DEVICE_GET_IRQ_INFO` says about one interrupt index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqInfo {
    /// `VFIO_IRQ_INFO_*` flags.
    pub flags: u32,
    /// Vectors (0: the device has no such interrupt).
    pub count: u32,
}

/// A call on a VFIO device, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VfioOp {
    /// `VFIO_DEVICE_GET_INFO`.
    GetInfo,
    /// `VFIO_DEVICE_GET_REGION_INFO`.
    RegionInfo(u32),
    /// `VFIO_DEVICE_GET_IRQ_INFO`.
    IrqInfo(u32),
    /// `VFIO_DEVICE_SET_IRQS` with eventfds.
    SetIrqs {
        /// Interrupt index.
        index: u32,
        /// First vector.
        start: u32,
        /// Vectors.
        count: u32,
    },
    /// `VFIO_DEVICE_SET_IRQS` disabling an index.
    DisableIrqs(u32),
    /// `VFIO_DEVICE_RESET`.
    Reset,
    /// Wrapping the bound cdev in vfio-ioctls (which asks GET_INFO, every GET_REGION_INFO
    /// and every GET_IRQ_INFO then).
    Wrap,
    /// A read of a region.
    Read {
        /// Region.
        index: u32,
        /// Offset in the region.
        offset: u64,
        /// Bytes.
        len: usize,
    },
    /// A write to a region.
    Write {
        /// Region.
        index: u32,
        /// Offset in the region.
        offset: u64,
        /// Bytes.
        len: usize,
    },
    /// An mmap of part of a region.
    Mmap {
        /// Region.
        index: u32,
        /// Offset in the region.
        offset: u64,
        /// Bytes.
        len: u64,
    },
}

impl fmt::Display for VfioOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            VfioOp::GetInfo => write!(f, "VFIO_DEVICE_GET_INFO"),
            VfioOp::RegionInfo(i) => write!(f, "VFIO_DEVICE_GET_REGION_INFO of region {i}"),
            VfioOp::IrqInfo(i) => write!(f, "VFIO_DEVICE_GET_IRQ_INFO of interrupt index {i}"),
            VfioOp::SetIrqs {
                index,
                start,
                count,
            } => write!(
                f,
                "VFIO_DEVICE_SET_IRQS of {count} eventfds from vector {start} of interrupt \
                 index {index}"
            ),
            VfioOp::DisableIrqs(i) => {
                write!(f, "VFIO_DEVICE_SET_IRQS disabling interrupt index {i}")
            }
            VfioOp::Reset => write!(f, "VFIO_DEVICE_RESET"),
            VfioOp::Wrap => write!(f, "opening the bound VFIO cdev with vfio-ioctls"),
            VfioOp::Read { index, offset, len } => {
                write!(f, "a {len}-byte read at {offset:#x} of region {index}")
            }
            VfioOp::Write { index, offset, len } => {
                write!(f, "a {len}-byte write at {offset:#x} of region {index}")
            }
            VfioOp::Mmap { index, offset, len } => {
                write!(f, "mmap of {len:#x} bytes at {offset:#x} of region {index}")
            }
        }
    }
}

/// Errors of VFIO device calls.
#[derive(Debug, thiserror::Error)]
pub enum VfioDeviceError {
    /// The kernel (or the fake) refused a call.
    #[error("{op} failed: {source}{}", hint(.op, .source))]
    Failed {
        /// The call.
        op: VfioOp,
        /// The errno.
        source: io::Error,
    },
    /// An access outside the region.
    #[error(
        "{op} is outside the region's {size:#x} bytes: this is a VMM bug (accesses are \
         bounds-checked against the BAR first)"
    )]
    OutOfRange {
        /// The access.
        op: VfioOp,
        /// The region's size.
        size: u64,
    },
    /// vfio-ioctls refused a call without passing the kernel's errno on.
    #[error("{op} failed: {}{}", chain(.source), library_hint(.op))]
    Library {
        /// The call.
        op: VfioOp,
        /// vfio-ioctls' error (boxed: it is large).
        source: Box<vfio_ioctls::VfioError>,
    },
    /// The kernel did not answer this when vfio-ioctls opened the device.
    #[error(
        "{op}: the kernel gave no answer when vfio-ioctls opened the device (its warning in \
         the log then says why)"
    )]
    Unanswered {
        /// The call.
        op: VfioOp,
    },
    /// A call the backend cannot make.
    #[error("{op} is not supported: {why}; this is a VMM bug")]
    Unsupported {
        /// The call.
        op: VfioOp,
        /// Why not.
        why: &'static str,
    },
}

impl VfioDeviceError {
    /// A call failure with `errno`.
    pub fn errno(op: VfioOp, errno: i32) -> VfioDeviceError {
        VfioDeviceError::Failed {
            op,
            source: io::Error::from_raw_os_error(errno),
        }
    }
}

fn hint(op: &VfioOp, err: &io::Error) -> &'static str {
    match (op, err.raw_os_error()) {
        // The kernel backend asks GET_INFO before anything else of a region or interrupt.
        (VfioOp::GetInfo, Some(libc::EINVAL)) => {
            "; a VFIO cdev answers only once it is bound to an iommufd \
             (VFIO_DEVICE_BIND_IOMMUFD comes first)"
        }
        (VfioOp::RegionInfo(_) | VfioOp::IrqInfo(_), Some(libc::EINVAL)) => {
            "; the device has no such region or interrupt index"
        }
        (_, Some(libc::ENODEV)) => {
            "; the device is gone: it was removed or unbound from vfio-pci while in use"
        }
        (VfioOp::Reset, _) => {
            "; the host could not reset the device (no FLR, PM or bus reset usable now): \
             check dmesg, or pass a device whose reset works"
        }
        (VfioOp::SetIrqs { .. }, Some(libc::ENOSPC | libc::EINVAL)) => {
            "; the host could not allocate that many interrupt vectors for the device: check \
             dmesg and the host's interrupt remapping"
        }
        (VfioOp::Mmap { .. }, _) => {
            "; the kernel refuses to mmap that part of the region; it stays trapped"
        }
        _ => "",
    }
}

/// `err` and its sources, `: `-separated (vfio-ioctls' messages leave their source out).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        text.push_str(": ");
        text.push_str(&e.to_string());
        next = e.source();
    }
    text
}

fn library_hint(op: &VfioOp) -> &'static str {
    match op {
        VfioOp::SetIrqs { .. } => {
            "; vfio-ioctls does not pass the kernel's errno on: check dmesg (the host may not \
             have that many interrupt vectors for the device)"
        }
        _ => "",
    }
}

/// Result of VFIO device calls.
pub type Result<T> = std::result::Result<T, VfioDeviceError>;

/// One VFIO device fd: its regions, interrupts and reset. Object-safe; every method has the
/// kernel's semantics (one call, or the answer the kernel gave when the device was opened).
pub trait VfioDevice: Send {
    /// `VFIO_DEVICE_GET_INFO`.
    fn info(&self) -> Result<DeviceInfo>;
    /// `VFIO_DEVICE_GET_REGION_INFO`, with the sparse mmap areas if reported.
    fn region_info(&self, index: u32) -> Result<RegionInfo>;
    /// Reads `data.len()` bytes at `offset` of region `index` (`pread`).
    fn read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<()>;
    /// Writes `data` at `offset` of region `index` (`pwrite`).
    fn write(&self, index: u32, offset: u64, data: &[u8]) -> Result<()>;
    /// Maps `len` bytes at `offset` of region `index` shared into this process; unmapped
    /// when the returned area is dropped.
    fn mmap(&self, index: u32, offset: u64, len: u64) -> Result<MmapArea>;
    /// `VFIO_DEVICE_GET_IRQ_INFO`.
    fn irq_info(&self, index: u32) -> Result<IrqInfo>;
    /// `VFIO_DEVICE_SET_IRQS(ACTION_TRIGGER | DATA_EVENTFD)`: vector `start + i` signals
    /// `fds[i]`. Enables the index (MSI, MSI-X) if it was not.
    fn set_irq_eventfds(&self, index: u32, start: u32, fds: &[&EventFd]) -> Result<()>;
    /// `VFIO_DEVICE_SET_IRQS(ACTION_TRIGGER | DATA_NONE)` with count 0: disables the index.
    fn disable_irqs(&self, index: u32) -> Result<()>;
    /// `VFIO_DEVICE_RESET`.
    fn reset(&self) -> Result<()>;
    /// The device fd (what `KVM_DEV_VFIO_FILE_ADD` registers).
    fn fd(&self) -> BorrowedFd<'_>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_call_and_what_to_do() {
        let err = VfioDeviceError::errno(VfioOp::GetInfo, libc::EINVAL);
        assert!(err.to_string().contains("bound to an iommufd"), "{err}");
        let err = VfioDeviceError::errno(VfioOp::IrqInfo(9), libc::EINVAL);
        assert!(err.to_string().contains("no such region"), "{err}");
        let err = VfioDeviceError::errno(VfioOp::Reset, libc::EIO);
        assert!(err.to_string().contains("check dmesg"), "{err}");
        let op = VfioOp::SetIrqs {
            index: 2,
            start: 0,
            count: 4,
        };
        let err = VfioDeviceError::Library {
            op,
            source: Box::new(vfio_ioctls::VfioError::VfioDeviceEnableIrq),
        };
        let text = err.to_string();
        let want = "VFIO_DEVICE_SET_IRQS of 4 eventfds from vector 0 of interrupt index 2 \
                    failed: failed to enable vfio device irq;";
        assert!(text.starts_with(want), "{text}");
        assert!(text.contains("check dmesg"), "{text}");
        let err = VfioDeviceError::Unanswered {
            op: VfioOp::IrqInfo(2),
        };
        assert!(err.to_string().contains("no answer"), "{err}");
    }

    #[test]
    fn library_errors_keep_their_sources() {
        let open = io::Error::from_raw_os_error(libc::ENOENT);
        let err = VfioDeviceError::Library {
            op: VfioOp::Wrap,
            source: Box::new(vfio_ioctls::VfioError::NewVfioIommufd(
                iommufd_ioctls::IommufdError::OpenIommufd(open),
            )),
        };
        let text = err.to_string();
        assert!(text.contains("failed to new VfioIommufd: "), "{text}");
        assert!(text.ends_with("(os error 2)"), "{text}");
    }
}
