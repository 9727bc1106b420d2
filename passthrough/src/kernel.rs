//! The kernel backend: [`KernelIommufd`] holds an open `/dev/iommu` and the VFIO cdevs
//! bound to it, and implements [`Iommufd`] with one ioctl per method, through
//! iommufd-ioctls where it has the call and the crate's `sys` module where it does not.
//!
//! It keeps no state of its own beyond the device fds: the kernel is the truth. Dropping
//! it closes the cdevs (unbinding the devices) and then the iommufd, which destroys every
//! object made through it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

use iommufd_bindings::iommufd as b;
use iommufd_ioctls::{IommuFd, IommufdError as LibError};

use crate::iommufd::{
    DevId, DeviceHandle, HwInfo, HwInfoType, HwptFlags, HwptId, IoasId, Iommufd, IommufdError,
    IovaRanges, MapSource, ObjectId, Op, Prot, RangesReply, Result,
};
use crate::iova::{Iova, IovaRange};
use crate::sys;

/// The default iommufd character device.
pub const IOMMUFD_PATH: &str = "/dev/iommu";

/// An open iommufd and the VFIO cdevs bound to it.
pub struct KernelIommufd {
    // Declared first so it drops first: closing the cdevs unbinds the devices while the
    // iommufd is still open.
    devices: BTreeMap<u32, OwnedFd>,
    iommufd: IommuFd,
}

impl std::fmt::Debug for KernelIommufd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelIommufd")
            .field("fd", &self.iommufd.as_raw_fd())
            .field("devices", &self.devices.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KernelIommufd {
    /// Opens [`IOMMUFD_PATH`].
    pub fn open() -> Result<KernelIommufd> {
        KernelIommufd::open_path(IOMMUFD_PATH)
    }

    /// Opens the iommufd character device at `path`.
    pub fn open_path(path: impl AsRef<Path>) -> Result<KernelIommufd> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| IommufdError::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(KernelIommufd::from_file(file))
    }

    /// Wraps an already opened iommufd (e.g. passed in by a management stack).
    pub fn from_file(file: File) -> KernelIommufd {
        KernelIommufd {
            devices: BTreeMap::new(),
            iommufd: IommuFd::new_from_fd(file),
        }
    }

    /// The cdev of a bound device.
    pub fn device_fd(&self, dev: DevId) -> Option<BorrowedFd<'_>> {
        self.devices.get(&dev.0).map(|fd| fd.as_fd())
    }

    fn cdev(&self, dev: DevId, op: Op) -> Result<&OwnedFd> {
        self.devices
            .get(&dev.0)
            .ok_or_else(|| IommufdError::failed(op, libc::ENOENT))
    }
}

impl AsRawFd for KernelIommufd {
    fn as_raw_fd(&self) -> RawFd {
        self.iommufd.as_raw_fd()
    }
}

fn size_u32<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

/// The errno inside an iommufd-ioctls error.
fn lib_errno(e: &LibError) -> i32 {
    match e {
        LibError::IommuDestroy(s)
        | LibError::IommuIoasAlloc(s)
        | LibError::IommuIoasMap(s)
        | LibError::IommuIoasMapFile(s)
        | LibError::IommuIoasUnmap(s)
        | LibError::IommuHwptAlloc(s)
        | LibError::IommuGetHwInfo(s) => s.errno(),
        LibError::OpenIommufd(e) | LibError::AttachHwpt(e) => e.raw_os_error().unwrap_or(libc::EIO),
        _ => libc::EIO,
    }
}

fn lib(op: Op) -> impl FnOnce(LibError) -> IommufdError {
    move |e| IommufdError::failed(op, lib_errno(&e))
}

fn os(op: Op) -> impl FnOnce(io::Error) -> IommufdError {
    move |e| IommufdError::failed(op, e.raw_os_error().unwrap_or(libc::EIO))
}

fn to_range(r: &b::iommu_iova_range, op: Op) -> Result<IovaRange> {
    // The kernel never reports an inverted range; treat one as an I/O error.
    IovaRange::new(r.start, r.last).ok_or_else(|| IommufdError::failed(op, libc::EIO))
}

fn to_uapi(r: &IovaRange) -> b::iommu_iova_range {
    b::iommu_iova_range {
        start: r.first_raw(),
        last: r.last_raw(),
    }
}

impl Iommufd for KernelIommufd {
    fn alloc_ioas(&mut self) -> Result<IoasId> {
        let mut cmd = b::iommu_ioas_alloc {
            size: size_u32::<b::iommu_ioas_alloc>(),
            flags: 0,
            out_ioas_id: 0,
        };
        self.iommufd
            .alloc_iommu_ioas(&mut cmd)
            .map_err(lib(Op::IoasAlloc))?;
        Ok(IoasId(cmd.out_ioas_id))
    }

    fn iova_ranges_into(&mut self, ioas: IoasId, out: &mut [IovaRange]) -> Result<RangesReply> {
        let op = Op::IovaRanges(ioas);
        let mut buf = vec![b::iommu_iova_range::default(); out.len()];
        let reply = sys::ioas_iova_ranges(&self.iommufd, ioas.0, &mut buf).map_err(os(op))?;
        let written = (reply.total as usize).min(out.len());
        for (dst, src) in out.iter_mut().zip(&buf[..written]) {
            *dst = to_range(src, op)?;
        }
        if reply.total as usize > out.len() {
            return Err(IommufdError::RangesBufferTooSmall {
                ioas,
                needed: reply.total,
                given: u32::try_from(out.len()).unwrap_or(u32::MAX),
            });
        }
        Ok(RangesReply {
            count: reply.total,
            alignment: reply.alignment,
        })
    }

    fn iova_ranges(&mut self, ioas: IoasId) -> Result<IovaRanges> {
        let op = Op::IovaRanges(ioas);
        let (ranges, alignment) =
            sys::ioas_iova_ranges_all(&self.iommufd, ioas.0).map_err(os(op))?;
        let ranges = ranges
            .iter()
            .map(|r| to_range(r, op))
            .collect::<Result<Vec<_>>>()?;
        Ok(IovaRanges { ranges, alignment })
    }

    fn allow_iovas(&mut self, ioas: IoasId, ranges: &[IovaRange]) -> Result<()> {
        let uapi: Vec<b::iommu_iova_range> = ranges.iter().map(to_uapi).collect();
        sys::ioas_allow_iovas(&self.iommufd, ioas.0, &uapi).map_err(os(Op::AllowIovas(ioas)))
    }

    fn map(
        &mut self,
        ioas: IoasId,
        source: MapSource<'_>,
        length: u64,
        iova: Option<Iova>,
        prot: Prot,
    ) -> Result<Iova> {
        let mut flags = prot.0;
        if iova.is_some() {
            flags |= b::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA;
        }
        let want = iova.unwrap_or_default().0;
        match source {
            MapSource::UserVa(va) => {
                let op = Op::Map {
                    ioas,
                    iova,
                    length,
                    file: false,
                };
                let mut cmd = b::iommu_ioas_map {
                    size: size_u32::<b::iommu_ioas_map>(),
                    flags,
                    ioas_id: ioas.0,
                    __reserved: 0,
                    user_va: va.0,
                    length,
                    iova: want,
                };
                sys::ioas_map(&self.iommufd, &mut cmd).map_err(os(op))?;
                Ok(Iova(cmd.iova))
            }
            MapSource::File { fd, offset } => {
                let op = Op::Map {
                    ioas,
                    iova,
                    length,
                    file: true,
                };
                let mut cmd = b::iommu_ioas_map_file {
                    size: size_u32::<b::iommu_ioas_map_file>(),
                    flags,
                    ioas_id: ioas.0,
                    fd: fd.as_raw_fd(),
                    start: offset,
                    length,
                    iova: want,
                };
                sys::ioas_map_file(&self.iommufd, &mut cmd).map_err(os(op))?;
                Ok(Iova(cmd.iova))
            }
        }
    }

    fn unmap(&mut self, ioas: IoasId, iova: Iova, length: u64) -> Result<u64> {
        let mut cmd = b::iommu_ioas_unmap {
            size: size_u32::<b::iommu_ioas_unmap>(),
            ioas_id: ioas.0,
            iova: iova.0,
            length,
        };
        self.iommufd
            .unmap_iommu_ioas(&mut cmd)
            .map_err(lib(Op::Unmap { ioas, iova, length }))?;
        Ok(cmd.length)
    }

    fn alloc_hwpt(&mut self, dev: DevId, pt: ObjectId, flags: HwptFlags) -> Result<HwptId> {
        let mut cmd = b::iommu_hwpt_alloc {
            size: size_u32::<b::iommu_hwpt_alloc>(),
            flags: flags.0,
            dev_id: dev.0,
            pt_id: pt.0,
            data_type: b::iommu_hwpt_data_type_IOMMU_HWPT_DATA_NONE,
            ..Default::default()
        };
        self.iommufd
            .alloc_iommu_hwpt(&mut cmd)
            .map_err(lib(Op::HwptAlloc { dev, pt, flags }))?;
        Ok(HwptId(cmd.out_hwpt_id))
    }

    fn hw_info(&mut self, dev: DevId) -> Result<HwInfo> {
        let op = Op::GetHwInfo(dev);
        let mut data = vec![0u8; 256];
        // The first answer says how long the driver's data is; a second call fetches all
        // of it if the buffer was short.
        for _ in 0..2 {
            let mut cmd = b::iommu_hw_info {
                size: size_u32::<b::iommu_hw_info>(),
                dev_id: dev.0,
                data_len: u32::try_from(data.len()).unwrap_or(u32::MAX),
                data_uptr: data.as_mut_ptr() as u64,
                ..Default::default()
            };
            self.iommufd.get_hw_info(&mut cmd).map_err(lib(op))?;
            let len = cmd.data_len as usize;
            if len <= data.len() {
                data.truncate(len);
                return Ok(HwInfo {
                    kind: HwInfoType(sys::hw_info_out_type(&cmd)),
                    capabilities: cmd.out_capabilities,
                    max_pasid_log2: cmd.out_max_pasid_log2,
                    data,
                });
            }
            data.resize(len, 0);
        }
        Err(IommufdError::failed(op, libc::EMSGSIZE))
    }

    fn destroy(&mut self, id: ObjectId) -> Result<()> {
        self.iommufd
            .destroy_iommu_object(id.0)
            .map_err(lib(Op::Destroy(id)))
    }

    fn bind_device(&mut self, device: DeviceHandle) -> Result<DevId> {
        let cdev = match device {
            DeviceHandle::VfioCdev(fd) => fd,
            DeviceHandle::Model(_) => return Err(IommufdError::failed(Op::Bind, libc::EINVAL)),
        };
        let id = sys::vfio_device_bind_iommufd(&cdev, &self.iommufd).map_err(os(Op::Bind))?;
        log::debug!(
            "VFIO cdev fd {} bound to iommufd as device {id}",
            cdev.as_raw_fd()
        );
        self.devices.insert(id, cdev);
        Ok(DevId(id))
    }

    fn attach_device(&mut self, dev: DevId, pt: ObjectId) -> Result<HwptId> {
        let op = Op::Attach { dev, pt };
        let cdev = self.cdev(dev, op)?;
        let hwpt = sys::vfio_device_attach_iommufd_pt(cdev, pt.0).map_err(os(op))?;
        Ok(HwptId(hwpt))
    }

    fn detach_device(&mut self, dev: DevId) -> Result<()> {
        let op = Op::Detach(dev);
        let cdev = self.cdev(dev, op)?;
        sys::vfio_device_detach_iommufd_pt(cdev).map_err(os(op))
    }

    fn unbind_device(&mut self, dev: DevId) -> Result<()> {
        match self.devices.remove(&dev.0) {
            Some(fd) => {
                drop(fd);
                log::debug!("device {dev} unbound (cdev closed)");
                Ok(())
            }
            None => Err(IommufdError::failed(Op::Unbind(dev), libc::ENOENT)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_missing_node_says_what_to_do() {
        let err = KernelIommufd::open_path("/nonexistent/iommu").unwrap_err();
        assert_eq!(err.errno(), libc::ENOENT);
        assert!(err.to_string().contains("CONFIG_IOMMUFD"), "{err}");
    }

    // Any file that is not an iommufd makes every call fail with ENOTTY; this runs the
    // whole backend (argument marshalling, errno extraction) without /dev/iommu.
    #[test]
    fn every_call_reports_the_kernel_errno() {
        let mut k = KernelIommufd::from_file(File::open("/dev/null").unwrap());
        let enotty = libc::ENOTTY;
        assert_eq!(k.alloc_ioas().unwrap_err().errno(), enotty);
        assert_eq!(k.iova_ranges(IoasId(1)).unwrap_err().errno(), enotty);
        let mut buf = [IovaRange::FULL; 1];
        assert_eq!(
            k.iova_ranges_into(IoasId(1), &mut buf).unwrap_err().errno(),
            enotty
        );
        assert_eq!(
            k.allow_iovas(IoasId(1), &[IovaRange::FULL])
                .unwrap_err()
                .errno(),
            enotty
        );
        let err = k
            .map_user(
                IoasId(1),
                crate::HostVirtAddr(0x1000),
                0x1000,
                None,
                Prot::READ,
            )
            .unwrap_err();
        assert_eq!(err.errno(), enotty);
        assert!(matches!(err.op(), Some(Op::Map { file: false, .. })));
        let memfd = sys::memfd(c"t", 0x1000).unwrap();
        let err = k
            .map_file(
                IoasId(1),
                memfd.as_fd(),
                0,
                0x1000,
                Some(Iova(0)),
                Prot::READ,
            )
            .unwrap_err();
        assert_eq!(err.errno(), enotty);
        assert_eq!(k.unmap_all(IoasId(1)).unwrap_err().errno(), enotty);
        let err = k
            .alloc_hwpt(DevId(1), ObjectId(2), HwptFlags::NEST_PARENT)
            .unwrap_err();
        assert_eq!(err.errno(), enotty);
        assert_eq!(k.hw_info(DevId(1)).unwrap_err().errno(), enotty);
        assert_eq!(k.destroy(ObjectId(1)).unwrap_err().errno(), enotty);
        let cdev: OwnedFd = File::open("/dev/null").unwrap().into();
        assert_eq!(
            k.bind_device(DeviceHandle::VfioCdev(cdev))
                .unwrap_err()
                .errno(),
            enotty
        );
    }

    #[test]
    fn unknown_devices_and_model_devices_are_refused() {
        let mut k = KernelIommufd::from_file(File::open("/dev/null").unwrap());
        let model = DeviceHandle::Model(crate::ModelDevice::x86_vtd());
        assert_eq!(k.bind_device(model).unwrap_err().errno(), libc::EINVAL);
        assert_eq!(
            k.attach_device(DevId(7), ObjectId(1)).unwrap_err().errno(),
            libc::ENOENT
        );
        assert_eq!(k.detach_device(DevId(7)).unwrap_err().errno(), libc::ENOENT);
        assert_eq!(k.unbind_device(DevId(7)).unwrap_err().errno(), libc::ENOENT);
        assert!(k.device_fd(DevId(7)).is_none());
    }
}
