//! The kernel backend: [`KernelIommufd`] holds an open `/dev/iommu` and the VFIO cdevs
//! bound to it, and implements [`Iommufd`] with one ioctl per method, through
//! iommufd-ioctls where it has the call and the crate's `sys` module where it does not.
//!
//! The nesting calls (`IOMMU_VIOMMU_ALLOC`, `IOMMU_VDEVICE_ALLOC`, nested
//! `IOMMU_HWPT_ALLOC`, `IOMMU_HWPT_INVALIDATE`, `IOMMU_VEVENTQ_ALLOC`) use iommufd-ioctls'
//! raw `IommuFd` methods: its `IommufdVIommu`/`IommufdVEventQ` types own their own
//! `Arc<IommuFd>`, make the abort/bypass HWPTs themselves and send one command per
//! invalidation ioctl, which does not fit one trait call per ioctl with batching; none of
//! these calls is missing from the crate. vEVENTQ records are read from its fd here.
//!
//! It keeps no state of its own beyond the device and vEVENTQ fds: the kernel is the truth. Dropping
//! it closes the cdevs (unbinding the devices) and then the iommufd, which destroys every
//! object made through it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

use iommufd_bindings::iommufd as b;
use iommufd_ioctls::{IommuFd, IommufdError as LibError};

use crate::iommufd::{
    DevId, DeviceHandle, FixedMap, HwInfo, HwInfoType, HwptFlags, HwptId, IoasId, Iommufd,
    IommufdError, IovaRanges, MapSource, ObjectId, Op, Prot, RangesReply, Result, SmmuCmd, VEvent,
    VSte, VdeviceId, VeventqId, ViommuId,
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
    /// The fds of the vEVENTQs, by object id (closed before the object is destroyed: the
    /// open file holds a reference to it).
    veventqs: BTreeMap<u32, File>,
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

    /// Whether this kernel has `IOMMU_IOAS_MAP_FILE` (Linux 6.13+). Asks on a scratch IOAS with
    /// fd -1: a kernel without the ioctl answers `ENOTTY`, one with it gets as far as the fd
    /// (`EBADF`). False when the question cannot be asked (no IOAS).
    pub fn has_map_file(&mut self) -> bool {
        let Ok(ioas) = self.alloc_ioas() else {
            return false;
        };
        let mut cmd = b::iommu_ioas_map_file {
            size: size_u32::<b::iommu_ioas_map_file>(),
            flags: Prot::READ_WRITE.0,
            ioas_id: ioas.0,
            fd: -1,
            start: 0,
            length: 4096,
            iova: 0,
        };
        let answer = sys::ioas_map_file(&self.iommufd, &mut cmd);
        if let Err(e) = self.destroy(ioas.into()) {
            log::warn!("cannot destroy the scratch IOAS {ioas}: {e}");
        }
        !matches!(answer, Err(e) if e.raw_os_error() == Some(libc::ENOTTY))
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
            veventqs: BTreeMap::new(),
            iommufd: IommuFd::new_from_fd(file),
        }
    }

    /// The fd of a vEVENTQ, readable when events are pending (for an event loop).
    pub fn veventq_fd(&self, veventq: VeventqId) -> Option<BorrowedFd<'_>> {
        self.veventqs.get(&veventq.0).map(|f| f.as_fd())
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
        | LibError::IommuGetHwInfo(s)
        | LibError::IommuViommuAlloc(s)
        | LibError::IommuVdeviceAlloc(s)
        | LibError::IommuHwptInvalidate(s)
        | LibError::IommuVeventqAlloc(s)
        | LibError::VeventqNonBlocking(s) => s.errno(),
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

/// One `IOMMU_IOAS_MAP` / `IOMMU_IOAS_MAP_FILE` on `iommufd`; a free function so that
/// the threads of `map_fixed_many` can share the fd.
fn map_on(
    iommufd: &IommuFd,
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
    let op = Op::Map {
        ioas,
        iova,
        length,
        file: matches!(source, MapSource::File { .. }),
    };
    match source {
        MapSource::UserVa(va) => {
            let mut cmd = b::iommu_ioas_map {
                size: size_u32::<b::iommu_ioas_map>(),
                flags,
                ioas_id: ioas.0,
                __reserved: 0,
                user_va: va.0,
                length,
                iova: want,
            };
            sys::ioas_map(iommufd, &mut cmd).map_err(os(op))?;
            Ok(Iova(cmd.iova))
        }
        MapSource::File { fd, offset } => {
            let mut cmd = b::iommu_ioas_map_file {
                size: size_u32::<b::iommu_ioas_map_file>(),
                flags,
                ioas_id: ioas.0,
                fd: fd.as_raw_fd(),
                start: offset,
                length,
                iova: want,
            };
            sys::ioas_map_file(iommufd, &mut cmd).map_err(os(op))?;
            Ok(Iova(cmd.iova))
        }
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
        map_on(&self.iommufd, ioas, source, length, iova, prot)
    }

    fn map_fixed_many(
        &mut self,
        ioas: IoasId,
        maps: &[FixedMap<'_>],
        threads: usize,
    ) -> Vec<Result<()>> {
        let threads = threads.clamp(1, maps.len().max(1));
        let one = |m: &FixedMap<'_>| {
            map_on(
                &self.iommufd,
                ioas,
                m.source,
                m.length,
                Some(m.iova),
                m.prot,
            )
            .map(|_| ())
        };
        if threads == 1 {
            return maps.iter().map(one).collect();
        }
        // Thread t maps requests t, t + threads, ...: with equal chunks each pins its share.
        let mut out: Vec<Option<Result<()>>> = (0..maps.len()).map(|_| None).collect();
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || {
                        maps.iter()
                            .enumerate()
                            .skip(t)
                            .step_by(threads)
                            .map(|(i, m)| (i, one(m)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for w in workers {
                // A worker only panics if map_on does, which it does not; treat it as EIO.
                if let Ok(results) = w.join() {
                    for (i, r) in results {
                        out[i] = Some(r);
                    }
                }
            }
        });
        out.into_iter()
            .zip(maps)
            .map(|(r, m)| r.unwrap_or_else(|| Err(IommufdError::failed(m.op(ioas), libc::EIO))))
            .collect()
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
        // A vEVENTQ's open fd holds a reference: close it first, as closing the iommufd
        // would.
        self.veventqs.remove(&id.0);
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

    fn alloc_viommu(&mut self, dev: DevId, parent: HwptId) -> Result<ViommuId> {
        let mut cmd = b::iommu_viommu_alloc {
            size: size_u32::<b::iommu_viommu_alloc>(),
            type_: b::iommu_viommu_type_IOMMU_VIOMMU_TYPE_ARM_SMMUV3,
            dev_id: dev.0,
            hwpt_id: parent.0,
            ..Default::default()
        };
        self.iommufd
            .alloc_iommu_viommu(&mut cmd)
            .map_err(lib(Op::ViommuAlloc { dev, parent }))?;
        Ok(ViommuId(cmd.out_viommu_id))
    }

    fn alloc_vdevice(&mut self, viommu: ViommuId, dev: DevId, virt_id: u64) -> Result<VdeviceId> {
        let mut cmd = b::iommu_vdevice_alloc {
            size: size_u32::<b::iommu_vdevice_alloc>(),
            viommu_id: viommu.0,
            dev_id: dev.0,
            out_vdevice_id: 0,
            virt_id,
        };
        self.iommufd
            .alloc_iommu_vdevice(&mut cmd)
            .map_err(lib(Op::VdeviceAlloc {
                viommu,
                dev,
                virt_id,
            }))?;
        Ok(VdeviceId(cmd.out_vdevice_id))
    }

    fn alloc_nested_hwpt(&mut self, dev: DevId, viommu: ViommuId, ste: VSte) -> Result<HwptId> {
        let data = b::iommu_hwpt_arm_smmuv3 {
            ste: [ste[0].to_le(), ste[1].to_le()],
        };
        let mut cmd = b::iommu_hwpt_alloc {
            size: size_u32::<b::iommu_hwpt_alloc>(),
            dev_id: dev.0,
            pt_id: viommu.0,
            data_type: b::iommu_hwpt_data_type_IOMMU_HWPT_DATA_ARM_SMMUV3,
            data_len: size_u32::<b::iommu_hwpt_arm_smmuv3>(),
            // The kernel copies `data_len` bytes from here during the call; `data` lives
            // until the end of this function.
            data_uptr: &data as *const b::iommu_hwpt_arm_smmuv3 as u64,
            ..Default::default()
        };
        self.iommufd
            .alloc_iommu_hwpt(&mut cmd)
            .map_err(lib(Op::NestedAlloc { dev, viommu }))?;
        Ok(HwptId(cmd.out_hwpt_id))
    }

    fn invalidate_viommu(&mut self, viommu: ViommuId, cmds: &[SmmuCmd]) -> Result<()> {
        let total = u32::try_from(cmds.len()).unwrap_or(u32::MAX);
        let raw: Vec<b::iommu_viommu_arm_smmuv3_invalidate> = cmds
            .iter()
            .take(total as usize)
            .map(|c| b::iommu_viommu_arm_smmuv3_invalidate {
                cmd: [c[0].to_le(), c[1].to_le()],
            })
            .collect();
        let mut cmd = b::iommu_hwpt_invalidate {
            size: size_u32::<b::iommu_hwpt_invalidate>(),
            hwpt_id: viommu.0,
            data_uptr: raw.as_ptr() as u64,
            data_type: b::iommu_hwpt_invalidate_data_type_IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
            entry_len: size_u32::<b::iommu_viommu_arm_smmuv3_invalidate>(),
            entry_num: total,
            __reserved: 0,
        };
        // The kernel writes `entry_num` back (the commands it handled) even on failure, and
        // then it is below `total`; an unchanged count means it never got that far.
        self.iommufd.invalidate_hwpt(&mut cmd).map_err(|e| {
            let done = if cmd.entry_num < total {
                cmd.entry_num
            } else {
                0
            };
            IommufdError::Invalidate {
                viommu,
                done,
                total,
                errno: lib_errno(&e),
            }
        })
    }

    fn alloc_veventq(&mut self, viommu: ViommuId, depth: u32) -> Result<VeventqId> {
        let mut cmd = b::iommu_veventq_alloc {
            size: size_u32::<b::iommu_veventq_alloc>(),
            viommu_id: viommu.0,
            type_: b::iommu_veventq_type_IOMMU_VEVENTQ_TYPE_ARM_SMMUV3,
            veventq_depth: depth,
            ..Default::default()
        };
        // iommufd-ioctls makes the fd non-blocking.
        let (id, file) = self
            .iommufd
            .alloc_veventq(&mut cmd)
            .map_err(lib(Op::VeventqAlloc(viommu)))?;
        self.veventqs.insert(id, file);
        Ok(VeventqId(id))
    }

    fn read_vevents(&mut self, veventq: VeventqId, max: usize) -> Result<Vec<VEvent>> {
        let op = Op::ReadVevents(veventq);
        let file = self
            .veventqs
            .get_mut(&veventq.0)
            .ok_or_else(|| IommufdError::failed(op, libc::ENOENT))?;
        let mut buf = vec![0u8; VEVENT_RECORD * max.clamp(1, 64)];
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Vec::new()),
            Err(e) => return Err(os(op)(e)),
        };
        parse_vevents(&buf[..n]).ok_or_else(|| IommufdError::failed(op, libc::EIO))
    }

    fn veventq_fd(&self, veventq: VeventqId) -> Option<OwnedFd> {
        let file = self.veventqs.get(&veventq.0)?;
        file.try_clone().ok().map(OwnedFd::from)
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

/// `struct iommufd_vevent_header` (flags, sequence) then `struct iommu_vevent_arm_smmuv3`.
const VEVENT_HEADER: usize = 8;
const VEVENT_RECORD: usize = VEVENT_HEADER + 32;

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Decodes what one read of a vEVENTQ returned: headers, each followed by an event unless
/// it is the lost-events marker. `None` for a truncated record.
fn parse_vevents(bytes: &[u8]) -> Option<Vec<VEvent>> {
    let mut events = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let flags = le32(bytes, at)?;
        let sequence = le32(bytes, at + 4)?;
        at += VEVENT_HEADER;
        let lost = flags & b::iommu_veventq_flag_IOMMU_VEVENTQ_FLAG_LOST_EVENTS != 0;
        let mut event = [0u64; 4];
        if !lost {
            for (i, word) in event.iter_mut().enumerate() {
                *word = le64(bytes, at + 8 * i)?;
            }
            at += 32;
        }
        events.push(VEvent {
            sequence,
            lost,
            event,
        });
    }
    Some(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vevent_records_decode() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&7u32.to_le_bytes());
        for w in [0x10u64 | (8 << 32), 1, 2, 3] {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&9u32.to_le_bytes());
        let ev = parse_vevents(&bytes).unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].sequence, 7);
        assert_eq!(ev[0].event, [0x10 | (8 << 32), 1, 2, 3]);
        assert!(!ev[0].lost && ev[1].lost && ev[1].sequence == 9);
        assert!(parse_vevents(&bytes[..20]).is_none(), "truncated");
    }

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
        assert_eq!(
            k.alloc_viommu(DevId(1), HwptId(2)).unwrap_err().errno(),
            enotty
        );
        assert_eq!(
            k.alloc_vdevice(ViommuId(1), DevId(1), 8)
                .unwrap_err()
                .errno(),
            enotty
        );
        assert_eq!(
            k.alloc_nested_hwpt(DevId(1), ViommuId(2), [1, 0])
                .unwrap_err()
                .errno(),
            enotty
        );
        let err = k
            .invalidate_viommu(ViommuId(2), &[[0x10, 0], [0x10, 0]])
            .unwrap_err();
        assert!(
            matches!(err, IommufdError::Invalidate { done: 0, total: 2, errno, .. } if errno == enotty),
            "{err:?}"
        );
        assert_eq!(
            k.alloc_veventq(ViommuId(2), 64).unwrap_err().errno(),
            enotty
        );
        assert_eq!(
            k.read_vevents(VeventqId(3), 4).unwrap_err().errno(),
            libc::ENOENT
        );
        assert!(k.veventq_fd(VeventqId(3)).is_none());
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
