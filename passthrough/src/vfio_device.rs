//! The [`VfioDevice`] trait: the hardware boundary for one VFIO device fd (regions,
//! interrupts, reset), with the kernel backend [`KernelVfioDevice`] over a VFIO cdev and a
//! fake ([`crate::FakeVfioDevice`]) behind the same trait.
//!
//! A VFIO cdev answers region and interrupt ioctls only once it is bound to an iommufd
//! (`VFIO_DEVICE_BIND_IOMMUFD`, see [`crate::Iommufd::bind_device`]); before that the
//! kernel says `EINVAL`. The kernel backend is therefore opened first, a clone of its fd is
//! bound, and only then is it used.
//!
//! Not here: what the regions mean (the PCI config space and BARs are interpreted by
//! [`crate::vfio_pci`]), binding, and migration or dirty-page regions.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

use crate::vfio_sys::{self, MmapArea, REGION_INFO_SIZE};

/// Region index of BAR 0 (BARs are 0..=5).
pub const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
/// Region index of the PCI config space.
pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
/// Interrupt index of MSI.
pub const VFIO_PCI_MSI_IRQ_INDEX: u32 = 1;
/// Interrupt index of MSI-X.
pub const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;

/// `VFIO_REGION_INFO_CAP_SPARSE_MMAP`.
const CAP_SPARSE_MMAP: u16 = 1;

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
    /// The kernel's answer could not be understood.
    #[error("{op} returned a malformed answer ({what}): the kernel and this VMM disagree on the VFIO uapi")]
    Malformed {
        /// The call.
        op: VfioOp,
        /// What was wrong.
        what: &'static str,
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
        (VfioOp::GetInfo | VfioOp::RegionInfo(_) | VfioOp::IrqInfo(_), Some(libc::EINVAL)) => {
            "; a VFIO cdev answers only once it is bound to an iommufd \
             (VFIO_DEVICE_BIND_IOMMUFD comes first)"
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

/// Result of VFIO device calls.
pub type Result<T> = std::result::Result<T, VfioDeviceError>;

/// One VFIO device fd: its regions, interrupts and reset. Object-safe; every method is one
/// kernel call with the kernel's semantics.
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

/// Parses a `VFIO_DEVICE_GET_REGION_INFO` answer (header plus capability chain).
pub(crate) fn parse_region_info(index: u32, bytes: &[u8]) -> Result<RegionInfo> {
    let op = VfioOp::RegionInfo(index);
    let malformed = |what| VfioDeviceError::Malformed { op, what };
    let u16_at = |off: usize| -> Option<u16> {
        let b = bytes.get(off..off.checked_add(2)?)?;
        Some(u16::from_ne_bytes([b[0], b[1]]))
    };
    let u32_at = |off: usize| -> Option<u32> {
        let b = bytes.get(off..off.checked_add(4)?)?;
        Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |off: usize| -> Option<u64> {
        let b = bytes.get(off..off.checked_add(8)?)?;
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        Some(u64::from_ne_bytes(w))
    };
    if bytes.len() < REGION_INFO_SIZE {
        return Err(malformed("shorter than struct vfio_region_info"));
    }
    let flags = RegionFlags(u32_at(4).ok_or_else(|| malformed("no flags"))?);
    let cap_offset = u32_at(12).ok_or_else(|| malformed("no cap_offset"))? as usize;
    let size = u64_at(16).ok_or_else(|| malformed("no size"))?;
    let mut sparse = None;
    if flags.contains(RegionFlags::CAPS) && cap_offset != 0 {
        let mut next = cap_offset;
        // A chain longer than the buffer has entries must loop.
        for _ in 0..bytes.len() / 8 {
            let id = u16_at(next).ok_or_else(|| malformed("capability past the end"))?;
            if id == CAP_SPARSE_MMAP {
                let nr = u32_at(next + 8).ok_or_else(|| malformed("sparse mmap cut short"))?;
                let mut areas = Vec::new();
                for i in 0..nr as usize {
                    let at = next + 16 + 16 * i;
                    let offset = u64_at(at).ok_or_else(|| malformed("sparse area cut short"))?;
                    let size = u64_at(at + 8).ok_or_else(|| malformed("sparse area cut short"))?;
                    areas.push(MmapRange { offset, size });
                }
                sparse = Some(areas);
            }
            next = u32_at(next + 4).ok_or_else(|| malformed("capability cut short"))? as usize;
            if next == 0 {
                break;
            }
        }
    }
    Ok(RegionInfo {
        index,
        size,
        flags,
        sparse,
    })
}

/// Where a region sits in the device fd.
#[derive(Clone, Copy, Debug)]
struct RegionGeometry {
    offset: u64,
    size: u64,
    flags: RegionFlags,
}

/// A VFIO cdev (`/dev/vfio/devices/vfioN`), driven with ioctls, `pread`/`pwrite` and
/// `mmap`. Closing it (drop) is the last step of unbinding the device.
#[derive(Debug)]
pub struct KernelVfioDevice {
    file: File,
    /// Region geometry, filled on first use (the kernel's layout never changes).
    regions: Mutex<BTreeMap<u32, RegionGeometry>>,
}

impl KernelVfioDevice {
    /// Opens the cdev at `path` read-write.
    pub fn open(path: &Path) -> io::Result<KernelVfioDevice> {
        let file = File::options().read(true).write(true).open(path)?;
        Ok(KernelVfioDevice::from_fd(file.into()))
    }

    /// Wraps an open cdev fd.
    pub fn from_fd(fd: OwnedFd) -> KernelVfioDevice {
        KernelVfioDevice {
            file: File::from(fd),
            regions: Mutex::new(BTreeMap::new()),
        }
    }

    /// A second fd for the same open file (what [`crate::Iommufd::bind_device`] takes).
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.file.as_fd().try_clone_to_owned()
    }

    fn geometry(&self, index: u32) -> Result<RegionGeometry> {
        let mut regions = self.regions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = regions.get(&index) {
            return Ok(*g);
        }
        let op = VfioOp::RegionInfo(index);
        let bytes = vfio_sys::device_get_region_info(&self.file, index)
            .map_err(|source| VfioDeviceError::Failed { op, source })?;
        let info = parse_region_info(index, &bytes)?;
        let offset = bytes
            .get(24..32)
            .map(|b| {
                let mut w = [0u8; 8];
                w.copy_from_slice(b);
                u64::from_ne_bytes(w)
            })
            .ok_or(VfioDeviceError::Malformed {
                op,
                what: "no offset",
            })?;
        let g = RegionGeometry {
            offset,
            size: info.size,
            flags: info.flags,
        };
        regions.insert(index, g);
        Ok(g)
    }

    /// The fd offset of `offset..offset+len` in region `index`, bounds-checked.
    fn file_offset(&self, op: VfioOp, index: u32, offset: u64, len: u64) -> Result<u64> {
        let g = self.geometry(index)?;
        let inside = offset.checked_add(len).is_some_and(|end| end <= g.size);
        if !inside {
            return Err(VfioDeviceError::OutOfRange { op, size: g.size });
        }
        g.offset
            .checked_add(offset)
            .ok_or(VfioDeviceError::OutOfRange { op, size: g.size })
    }
}

impl VfioDevice for KernelVfioDevice {
    fn info(&self) -> Result<DeviceInfo> {
        let info =
            vfio_sys::device_get_info(&self.file).map_err(|source| VfioDeviceError::Failed {
                op: VfioOp::GetInfo,
                source,
            })?;
        Ok(DeviceInfo {
            flags: info.flags,
            num_regions: info.num_regions,
            num_irqs: info.num_irqs,
        })
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo> {
        let op = VfioOp::RegionInfo(index);
        let bytes = vfio_sys::device_get_region_info(&self.file, index)
            .map_err(|source| VfioDeviceError::Failed { op, source })?;
        parse_region_info(index, &bytes)
    }

    fn read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<()> {
        let op = VfioOp::Read {
            index,
            offset,
            len: data.len(),
        };
        let at = self.file_offset(op, index, offset, data.len() as u64)?;
        self.file
            .read_exact_at(data, at)
            .map_err(|source| VfioDeviceError::Failed { op, source })
    }

    fn write(&self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        let op = VfioOp::Write {
            index,
            offset,
            len: data.len(),
        };
        let at = self.file_offset(op, index, offset, data.len() as u64)?;
        self.file
            .write_all_at(data, at)
            .map_err(|source| VfioDeviceError::Failed { op, source })
    }

    fn mmap(&self, index: u32, offset: u64, len: u64) -> Result<MmapArea> {
        let op = VfioOp::Mmap { index, offset, len };
        let at = self.file_offset(op, index, offset, len)?;
        let writable = self.geometry(index)?.flags.contains(RegionFlags::WRITE);
        MmapArea::map_shared(self.file.as_fd(), at, len, writable)
            .map_err(|source| VfioDeviceError::Failed { op, source })
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo> {
        let info = vfio_sys::device_get_irq_info(&self.file, index).map_err(|source| {
            VfioDeviceError::Failed {
                op: VfioOp::IrqInfo(index),
                source,
            }
        })?;
        Ok(IrqInfo {
            flags: info.flags,
            count: info.count,
        })
    }

    fn set_irq_eventfds(&self, index: u32, start: u32, fds: &[&EventFd]) -> Result<()> {
        let op = VfioOp::SetIrqs {
            index,
            start,
            count: fds.len() as u32,
        };
        vfio_sys::device_set_irqs(&self.file, index, start, Some(fds))
            .map_err(|source| VfioDeviceError::Failed { op, source })
    }

    fn disable_irqs(&self, index: u32) -> Result<()> {
        vfio_sys::device_set_irqs(&self.file, index, 0, None).map_err(|source| {
            VfioDeviceError::Failed {
                op: VfioOp::DisableIrqs(index),
                source,
            }
        })
    }

    fn reset(&self) -> Result<()> {
        vfio_sys::device_reset(&self.file).map_err(|source| VfioDeviceError::Failed {
            op: VfioOp::Reset,
            source,
        })
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u32, cap_offset: u32, size: u64, argsz: u32) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [argsz, flags, 0, cap_offset] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(&size.to_ne_bytes());
        b.extend_from_slice(&(7u64 << 40).to_ne_bytes());
        b
    }

    fn cap_header(id: u16, version: u16, next: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&id.to_ne_bytes());
        b.extend_from_slice(&version.to_ne_bytes());
        b.extend_from_slice(&next.to_ne_bytes());
        b
    }

    #[test]
    fn parses_a_sparse_mmap_capability_after_another() {
        let flags = RegionFlags::READ.0 | RegionFlags::MMAP.0 | RegionFlags::CAPS.0;
        let mut b = header(flags, 32, 0x4000, 88);
        // MSIX_MAPPABLE (id 3, no data) at 32, then SPARSE_MMAP at 40.
        b.extend(cap_header(3, 1, 40));
        b.extend(cap_header(CAP_SPARSE_MMAP, 1, 0));
        b.extend_from_slice(&2u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        for (o, s) in [(0u64, 0x1000u64), (0x3000, 0x1000)] {
            b.extend_from_slice(&o.to_ne_bytes());
            b.extend_from_slice(&s.to_ne_bytes());
        }
        let info = parse_region_info(0, &b).unwrap();
        assert_eq!(info.size, 0x4000);
        assert_eq!(
            info.mmap_ranges(),
            vec![
                MmapRange {
                    offset: 0,
                    size: 0x1000
                },
                MmapRange {
                    offset: 0x3000,
                    size: 0x1000
                }
            ]
        );
    }

    #[test]
    fn whole_region_or_nothing_without_sparse_areas() {
        let mmap = RegionFlags::READ.0 | RegionFlags::MMAP.0;
        let info = parse_region_info(2, &header(mmap, 0, 0x1000, 32)).unwrap();
        assert_eq!(
            info.mmap_ranges(),
            vec![MmapRange {
                offset: 0,
                size: 0x1000
            }]
        );
        let info = parse_region_info(2, &header(RegionFlags::READ.0, 0, 0x1000, 32)).unwrap();
        assert!(info.mmap_ranges().is_empty());
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        assert!(parse_region_info(0, &[0u8; 8]).is_err());
        let flags = RegionFlags::CAPS.0 | RegionFlags::MMAP.0;
        // Capability offset past the end.
        assert!(parse_region_info(0, &header(flags, 200, 0x1000, 32)).is_err());
        // A capability chain that loops ends without hanging.
        let mut b = header(flags, 32, 0x1000, 40);
        b.extend(cap_header(9, 1, 32));
        assert!(parse_region_info(0, &b).is_ok());
        // Sparse areas cut short.
        let mut b = header(flags, 32, 0x1000, 48);
        b.extend(cap_header(CAP_SPARSE_MMAP, 1, 0));
        b.extend_from_slice(&5u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        let err = parse_region_info(0, &b).unwrap_err();
        assert!(err.to_string().contains("sparse"), "{err}");
    }

    // Any file that is no VFIO device makes every ioctl fail with ENOTTY: this runs the
    // kernel backend's marshalling and error paths without /dev/vfio.
    #[test]
    fn kernel_backend_reports_errors() {
        let dev = KernelVfioDevice::from_fd(File::open("/dev/null").unwrap().into());
        let enotty = Some(libc::ENOTTY);
        let errno = |e: VfioDeviceError| match e {
            VfioDeviceError::Failed { source, .. } => source.raw_os_error(),
            _ => None,
        };
        assert_eq!(errno(dev.info().unwrap_err()), enotty);
        assert_eq!(errno(dev.region_info(7).unwrap_err()), enotty);
        assert_eq!(errno(dev.read(7, 0, &mut [0; 4]).unwrap_err()), enotty);
        assert_eq!(errno(dev.write(7, 0, &[0; 4]).unwrap_err()), enotty);
        assert_eq!(errno(dev.mmap(0, 0, 0x1000).unwrap_err()), enotty);
        assert_eq!(errno(dev.irq_info(2).unwrap_err()), enotty);
        assert_eq!(errno(dev.set_irq_eventfds(2, 0, &[]).unwrap_err()), enotty);
        assert_eq!(errno(dev.disable_irqs(2).unwrap_err()), enotty);
        let err = dev.reset().unwrap_err();
        assert!(err.to_string().contains("check dmesg"), "{err}");
        assert!(dev.try_clone_fd().is_ok());
        let _ = dev.fd();
        let err = VfioDeviceError::errno(VfioOp::GetInfo, libc::EINVAL);
        assert!(err.to_string().contains("bound to an iommufd"), "{err}");
    }
}
