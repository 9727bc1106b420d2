//! [`KernelVfioDevice`]: the kernel backend of [`VfioDevice`], a VFIO cdev driven through
//! vfio-ioctls 0.10.
//!
//! The cdev is opened first: KVM registers it, and a clone of its fd is bound and attached
//! through [`crate::Iommufd`]. On the first call after that (setup asks [`VfioDevice::info`]
//! right after attaching), vfio-ioctls wraps another clone
//! (`VfioDevice::new_from_bound_fd`), asking `VFIO_DEVICE_GET_INFO`, every
//! `VFIO_DEVICE_GET_REGION_INFO` with its capability chain and every
//! `VFIO_DEVICE_GET_IRQ_INFO` at once; region and interrupt questions are answered from
//! what it kept, and `VFIO_DEVICE_SET_IRQS` goes through it. What vfio-ioctls lacks is one
//! small module each: [`device_info`] (GET_INFO's answer), [`reset`] (RESET's result),
//! [`region_io`] (region reads and writes that report failure), [`region_mmap`] (mmap of a
//! region), [`bound_cdev`] (wrapping a cdev bound elsewhere).
//!
//! Fds per device, each closed once: the cdev as opened (closed with this value), the bound
//! clone (closed by the iommufd backend at unbind), vfio-ioctls' clone and its private
//! iommufd (closed by its `Drop`). That `Drop` first issues
//! `VFIO_DEVICE_DETACH_IOMMUFD_PT`, a no-op by then since teardown detached the device
//! through the iommufd already, and panics if the kernel refuses it.
//!
//! Not here: binding and attaching (`crate::sys`, [`crate::KernelIommufd`]), what the
//! regions mean ([`crate::vfio_pci`]).

mod bound_cdev;
mod device_info;
mod region_io;
mod region_mmap;
mod reset;

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use vfio_ioctls::{VfioError, VfioRegionInfoCap};
use vmm_sys_util::eventfd::EventFd;

use crate::vfio_device::{
    DeviceInfo, IrqInfo, MmapRange, RegionFlags, RegionInfo, Result, VfioDevice, VfioDeviceError,
    VfioOp,
};
use region_io::Region;
pub use region_mmap::MmapArea;

/// A VFIO cdev (`/dev/vfio/devices/vfioN`). Closing it (drop) is the last step of
/// unbinding the device.
pub struct KernelVfioDevice {
    /// vfio-ioctls' device and the GET_INFO answer, once bound. Declared first: its drop
    /// (detach, close) runs while `file` still holds the binding.
    bound: OnceLock<Bound>,
    /// Held while `bound` is made: two racing callers would each wrap the fd, and
    /// dropping the loser would detach the device.
    making: Mutex<()>,
    file: File,
}

struct Bound {
    info: DeviceInfo,
    device: vfio_ioctls::VfioDevice,
}

impl std::fmt::Debug for KernelVfioDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelVfioDevice")
            .field("file", &self.file)
            .field("info", &self.bound.get().map(|b| b.info))
            .finish()
    }
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
            bound: OnceLock::new(),
            making: Mutex::new(()),
            file: File::from(fd),
        }
    }

    /// A second fd for the same open file (what [`crate::Iommufd::bind_device`] takes).
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.file.as_fd().try_clone_to_owned()
    }

    /// The device as vfio-ioctls sees it, made on the first call once the cdev is bound.
    fn bound(&self) -> Result<&Bound> {
        if let Some(b) = self.bound.get() {
            return Ok(b);
        }
        let _making = self.making.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = self.bound.get() {
            return Ok(b);
        }
        // Asked first: an unbound cdev fails here with the kernel's errno (EINVAL), before
        // a private iommufd is opened for nothing.
        let info =
            device_info::device_info(&self.file).map_err(|source| VfioDeviceError::Failed {
                op: VfioOp::GetInfo,
                source,
            })?;
        let clone = self
            .file
            .try_clone()
            .map_err(|source| VfioDeviceError::Failed {
                op: VfioOp::Wrap,
                source,
            })?;
        let device = bound_cdev::wrap(clone).map_err(|e| library(VfioOp::Wrap, e))?;
        let info = DeviceInfo {
            flags: info.flags,
            num_regions: info.num_regions,
            num_irqs: info.num_irqs,
        };
        Ok(self.bound.get_or_init(|| Bound { info, device }))
    }

    /// Region `index` as vfio-ioctls read it; `EINVAL` past the last region, as the kernel
    /// answers.
    fn region(&self, op: VfioOp, index: u32) -> Result<Region> {
        let b = self.bound()?;
        if index >= b.info.num_regions {
            return Err(VfioDeviceError::errno(op, libc::EINVAL));
        }
        Ok(Region {
            offset: b.device.get_region_offset(index),
            size: b.device.get_region_size(index),
            flags: RegionFlags(b.device.get_region_flags(index)),
        })
    }
}

/// A vfio-ioctls error as ours: with the kernel's errno where it kept it.
fn library(op: VfioOp, e: VfioError) -> VfioDeviceError {
    match e {
        VfioError::VfioDeviceGetInfo(errno) => VfioDeviceError::Failed {
            op: VfioOp::GetInfo,
            source: io::Error::from_raw_os_error(errno.errno()),
        },
        source => VfioDeviceError::Library {
            op,
            source: Box::new(source),
        },
    }
}

/// What vfio-ioctls knows of a region, as [`RegionInfo`].
fn region_info(index: u32, size: u64, flags: u32, caps: &[VfioRegionInfoCap]) -> RegionInfo {
    let sparse = caps.iter().find_map(|c| match c {
        VfioRegionInfoCap::SparseMmap(s) => Some(
            s.areas
                .iter()
                .map(|a| MmapRange {
                    offset: a.offset,
                    size: a.size,
                })
                .collect(),
        ),
        _ => None,
    });
    RegionInfo {
        index,
        size,
        flags: RegionFlags(flags),
        sparse,
    }
}

impl VfioDevice for KernelVfioDevice {
    fn info(&self) -> Result<DeviceInfo> {
        Ok(self.bound()?.info)
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo> {
        let r = self.region(VfioOp::RegionInfo(index), index)?;
        let caps = self.bound()?.device.get_region_caps(index);
        Ok(region_info(index, r.size, r.flags.0, &caps))
    }

    fn read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<()> {
        let op = VfioOp::Read {
            index,
            offset,
            len: data.len(),
        };
        let region = self.region(op, index)?;
        region_io::read(&self.file, region, op, offset, data)
    }

    fn write(&self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        let op = VfioOp::Write {
            index,
            offset,
            len: data.len(),
        };
        let region = self.region(op, index)?;
        region_io::write(&self.file, region, op, offset, data)
    }

    fn mmap(&self, index: u32, offset: u64, len: u64) -> Result<MmapArea> {
        let op = VfioOp::Mmap { index, offset, len };
        let region = self.region(op, index)?;
        let at = region.file_offset(op, offset, len)?;
        let writable = region.flags.contains(RegionFlags::WRITE);
        MmapArea::map_shared(self.file.as_fd(), at, len, writable)
            .map_err(|source| VfioDeviceError::Failed { op, source })
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo> {
        let op = VfioOp::IrqInfo(index);
        let b = self.bound()?;
        if index >= b.info.num_irqs {
            return Err(VfioDeviceError::errno(op, libc::EINVAL));
        }
        let irq = b
            .device
            .get_irq_info(index)
            .ok_or(VfioDeviceError::Unanswered { op })?;
        Ok(IrqInfo {
            flags: irq.flags,
            count: irq.count,
        })
    }

    fn set_irq_eventfds(&self, index: u32, start: u32, fds: &[&EventFd]) -> Result<()> {
        let op = VfioOp::SetIrqs {
            index,
            start,
            count: fds.len() as u32,
        };
        if start != 0 {
            return Err(VfioDeviceError::Unsupported {
                op,
                why: "vfio-ioctls binds eventfds from vector 0 only",
            });
        }
        self.bound()?
            .device
            .enable_irq(index, fds.to_vec())
            .map_err(|e| library(op, e))
    }

    fn disable_irqs(&self, index: u32) -> Result<()> {
        self.bound()?
            .device
            .disable_irq(index)
            .map_err(|e| library(VfioOp::DisableIrqs(index), e))
    }

    fn reset(&self) -> Result<()> {
        reset::reset(&self.file).map_err(|source| VfioDeviceError::Failed {
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
    use vfio_ioctls::{VfioRegionInfoCapSparseMmap, VfioRegionSparseMmapArea};
    use vmm_sys_util::errno::Error as Errno;

    #[test]
    fn regions_from_what_vfio_ioctls_kept() {
        let flags = RegionFlags::READ.0 | RegionFlags::MMAP.0 | RegionFlags::CAPS.0;
        let areas = [(0u64, 0x1000u64), (0x3000, 0x1000)]
            .map(|(offset, size)| VfioRegionSparseMmapArea { offset, size });
        let caps = [
            VfioRegionInfoCap::MsixMappable,
            VfioRegionInfoCap::SparseMmap(VfioRegionInfoCapSparseMmap {
                areas: areas.to_vec(),
            }),
        ];
        let info = region_info(0, 0x4000, flags, &caps);
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
        let mmap = RegionFlags::READ.0 | RegionFlags::MMAP.0;
        let whole = region_info(2, 0x1000, mmap, &[]);
        assert_eq!(
            whole.mmap_ranges(),
            vec![MmapRange {
                offset: 0,
                size: 0x1000
            }]
        );
        let trapped = region_info(2, 0x1000, RegionFlags::READ.0, &[]);
        assert!(trapped.mmap_ranges().is_empty());
    }

    #[test]
    fn library_errors_keep_the_errno_they_carry() {
        let e = library(
            VfioOp::Wrap,
            VfioError::VfioDeviceGetInfo(Errno::new(libc::EINVAL)),
        );
        assert!(matches!(
            &e,
            VfioDeviceError::Failed { op: VfioOp::GetInfo, source }
                if source.raw_os_error() == Some(libc::EINVAL)
        ));
        assert!(e.to_string().contains("bound to an iommufd"), "{e}");
        let e = library(VfioOp::DisableIrqs(2), VfioError::VfioDeviceDisableIrq);
        assert!(matches!(e, VfioDeviceError::Library { .. }), "{e}");
    }

    // Any file that is no VFIO device makes every ioctl fail with ENOTTY: this runs the
    // kernel backend's error paths without /dev/vfio (and without opening /dev/iommu).
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
        let err = dev.set_irq_eventfds(2, 1, &[]).unwrap_err();
        assert!(matches!(err, VfioDeviceError::Unsupported { .. }), "{err}");
        assert!(dev.try_clone_fd().is_ok());
        let _ = dev.fd();
        assert!(format!("{dev:?}").contains("info: None"));
    }
}
