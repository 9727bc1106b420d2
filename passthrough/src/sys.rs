//! The ioctls `iommufd-ioctls` 0.4 does not wrap (or wraps unsoundly for our use), over the
//! `iommufd-bindings` structs, plus the three VFIO cdev ioctls that bind and attach a
//! device to an iommufd. This is the only module of the iommufd side with `unsafe`.
//!
//! - `IOMMU_IOAS_IOVA_RANGES` and `IOMMU_IOAS_ALLOW_IOVAS`: missing from iommufd-ioctls.
//! - `IOMMU_IOAS_MAP` and `IOMMU_IOAS_MAP_FILE`: iommufd-ioctls passes the command by
//!   shared reference, but the kernel writes the chosen IOVA back into it; we pass
//!   `&mut` so reading `iova` afterwards is sound.
//! - `VFIO_DEVICE_{BIND_IOMMUFD,ATTACH_IOMMUFD_PT,DETACH_IOMMUFD_PT}` (uapi `vfio.h`): the
//!   [`crate::Iommufd`] backend binds and attaches by device id, before the device is used.
//!   vfio-ioctls 0.10 binds only inside `VfioDevice::new_from_fd`, through its own
//!   `VfioIommufd` (not our trait, so not the model either), and its `attach_hwpt` drops the
//!   HWPT id the kernel writes back. The structs are declared here at the size the oldest
//!   cdev kernel (6.6) knows; newer kernels accept them since they only require
//!   `argsz >= offsetofend(last known field)`.
//!
//! Everything else (IOAS_ALLOC, UNMAP, HWPT_ALLOC, GET_HW_INFO, DESTROY) goes through
//! iommufd-ioctls in [`crate::kernel`]. The few other unsafe calls the crate needs (page
//! size, anonymous memory and memfds for the conformance suite, and `getrlimit`, which is
//! not VFIO and so not in vfio-ioctls, for the RLIMIT_MEMLOCK check) live here too; the
//! VFIO device side's are in `crate::vfio_kernel`.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use iommufd_bindings::iommufd::{
    iommu_hw_info, iommu_ioas_allow_iovas, iommu_ioas_iova_ranges, iommu_ioas_map,
    iommu_ioas_map_file, iommu_iova_range, IOMMUFD_CMD_IOAS_ALLOW_IOVAS,
    IOMMUFD_CMD_IOAS_IOVA_RANGES, IOMMUFD_CMD_IOAS_MAP, IOMMUFD_CMD_IOAS_MAP_FILE, IOMMUFD_TYPE,
};
use vmm_sys_util::ioctl::ioctl_with_mut_ref;
use vmm_sys_util::ioctl_io_nr;

const IOMMUFD: u32 = IOMMUFD_TYPE as u32;
/// `VFIO_TYPE` (`';'`) from uapi `vfio.h`.
const VFIO_TYPE: u32 = b';' as u32;
/// `VFIO_BASE` from uapi `vfio.h`.
const VFIO_BASE: u32 = 100;

ioctl_io_nr!(
    IOMMU_IOAS_ALLOW_IOVAS,
    IOMMUFD,
    IOMMUFD_CMD_IOAS_ALLOW_IOVAS
);
ioctl_io_nr!(
    IOMMU_IOAS_IOVA_RANGES,
    IOMMUFD,
    IOMMUFD_CMD_IOAS_IOVA_RANGES
);
ioctl_io_nr!(IOMMU_IOAS_MAP, IOMMUFD, IOMMUFD_CMD_IOAS_MAP);
ioctl_io_nr!(IOMMU_IOAS_MAP_FILE, IOMMUFD, IOMMUFD_CMD_IOAS_MAP_FILE);
ioctl_io_nr!(VFIO_DEVICE_BIND_IOMMUFD, VFIO_TYPE, VFIO_BASE + 18);
ioctl_io_nr!(VFIO_DEVICE_ATTACH_IOMMUFD_PT, VFIO_TYPE, VFIO_BASE + 19);
ioctl_io_nr!(VFIO_DEVICE_DETACH_IOMMUFD_PT, VFIO_TYPE, VFIO_BASE + 20);

/// `struct vfio_device_bind_iommufd` up to `out_devid` (the 6.6 layout).
#[repr(C)]
#[derive(Debug, Default)]
struct VfioDeviceBindIommufd {
    argsz: u32,
    flags: u32,
    iommufd: i32,
    out_devid: u32,
}

/// `struct vfio_device_attach_iommufd_pt` up to `pt_id` (without `pasid`).
#[repr(C)]
#[derive(Debug, Default)]
struct VfioDeviceAttachIommufdPt {
    argsz: u32,
    flags: u32,
    pt_id: u32,
}

/// `struct vfio_device_detach_iommufd_pt` up to `flags` (without `pasid`).
#[repr(C)]
#[derive(Debug, Default)]
struct VfioDeviceDetachIommufdPt {
    argsz: u32,
    flags: u32,
}

fn size_u32<T>() -> u32 {
    // Every struct here is a few dozen bytes.
    std::mem::size_of::<T>() as u32
}

fn check(ret: i32) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// What `IOMMU_IOAS_IOVA_RANGES` answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RangesOut {
    /// Ranges the IOAS has. More than the buffer held means the kernel said `EMSGSIZE`
    /// and only the first `buffer.len()` entries were written.
    pub total: u32,
    /// `out_iova_alignment`.
    pub alignment: u64,
}

/// `IOMMU_IOAS_IOVA_RANGES` into `out`; `EMSGSIZE` is returned as `Ok` with
/// `total > out.len()`.
pub(crate) fn ioas_iova_ranges(
    iommufd: &impl AsRawFd,
    ioas_id: u32,
    out: &mut [iommu_iova_range],
) -> io::Result<RangesOut> {
    let capacity = u32::try_from(out.len()).unwrap_or(u32::MAX);
    let mut cmd = iommu_ioas_iova_ranges {
        size: size_u32::<iommu_ioas_iova_ranges>(),
        ioas_id,
        num_iovas: capacity,
        __reserved: 0,
        allowed_iovas: out.as_mut_ptr() as u64,
        out_iova_alignment: 0,
    };
    // SAFETY: `cmd` is a valid, initialised iommu_ioas_iova_ranges that lives across the
    // call; the kernel writes at most `num_iovas` (= `out.len()`, capped) entries of
    // `struct iommu_iova_range` to `allowed_iovas`, which points at `out`, exclusively
    // borrowed for the call and of that layout; it writes nothing else outside `cmd`.
    // The return value is checked.
    let ret = unsafe { ioctl_with_mut_ref(iommufd, IOMMU_IOAS_IOVA_RANGES(), &mut cmd) };
    match check(ret) {
        Ok(()) => Ok(RangesOut {
            total: cmd.num_iovas,
            alignment: cmd.out_iova_alignment,
        }),
        // The kernel copies the command back (with the needed count) before failing.
        Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => Ok(RangesOut {
            total: cmd.num_iovas.max(capacity.saturating_add(1)),
            alignment: cmd.out_iova_alignment,
        }),
        Err(e) => Err(e),
    }
}

/// All IOVA ranges of an IOAS and its alignment, growing the buffer on `EMSGSIZE`.
pub(crate) fn ioas_iova_ranges_all(
    iommufd: &impl AsRawFd,
    ioas_id: u32,
) -> io::Result<(Vec<iommu_iova_range>, u64)> {
    let mut buf = vec![iommu_iova_range::default(); 8];
    // Attaching a device concurrently can add ranges between two calls; bound the retries.
    for _ in 0..8 {
        let out = ioas_iova_ranges(iommufd, ioas_id, &mut buf)?;
        let total = out.total as usize;
        if total <= buf.len() {
            buf.truncate(total);
            return Ok((buf, out.alignment));
        }
        buf.resize(total, iommu_iova_range::default());
    }
    Err(io::Error::from_raw_os_error(libc::EMSGSIZE))
}

/// `IOMMU_IOAS_ALLOW_IOVAS`: replace the allowed list of an IOAS with `ranges`.
pub(crate) fn ioas_allow_iovas(
    iommufd: &impl AsRawFd,
    ioas_id: u32,
    ranges: &[iommu_iova_range],
) -> io::Result<()> {
    let num_iovas =
        u32::try_from(ranges.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    let mut cmd = iommu_ioas_allow_iovas {
        size: size_u32::<iommu_ioas_allow_iovas>(),
        ioas_id,
        num_iovas,
        __reserved: 0,
        allowed_iovas: ranges.as_ptr() as u64,
    };
    // SAFETY: `cmd` is a valid, initialised iommu_ioas_allow_iovas living across the
    // call; the kernel only reads `num_iovas` entries from `allowed_iovas`, which points
    // at `ranges` (that many `struct iommu_iova_range`, borrowed for the call). The return
    // value is checked.
    let ret = unsafe { ioctl_with_mut_ref(iommufd, IOMMU_IOAS_ALLOW_IOVAS(), &mut cmd) };
    check(ret)
}

/// `IOMMU_IOAS_MAP`; on success `cmd.iova` holds the IOVA used.
pub(crate) fn ioas_map(iommufd: &impl AsRawFd, cmd: &mut iommu_ioas_map) -> io::Result<()> {
    // SAFETY: `cmd` is a valid iommu_ioas_map exclusively borrowed for the call; the
    // kernel reads it, pins (never writes) `length` bytes at `user_va` after checking
    // they are mapped in this process, and writes back only `cmd` itself. The return
    // value is checked.
    let ret = unsafe { ioctl_with_mut_ref(iommufd, IOMMU_IOAS_MAP(), cmd) };
    check(ret)
}

/// `IOMMU_IOAS_MAP_FILE`; on success `cmd.iova` holds the IOVA used.
pub(crate) fn ioas_map_file(
    iommufd: &impl AsRawFd,
    cmd: &mut iommu_ioas_map_file,
) -> io::Result<()> {
    // SAFETY: `cmd` is a valid iommu_ioas_map_file exclusively borrowed for the call; the
    // kernel resolves `fd` itself (EBADF if it is not open) and writes back only `cmd`.
    // The return value is checked.
    let ret = unsafe { ioctl_with_mut_ref(iommufd, IOMMU_IOAS_MAP_FILE(), cmd) };
    check(ret)
}

/// `VFIO_DEVICE_BIND_IOMMUFD` on a VFIO cdev; returns the device id.
pub(crate) fn vfio_device_bind_iommufd(
    cdev: &impl AsRawFd,
    iommufd: &impl AsRawFd,
) -> io::Result<u32> {
    let mut cmd = VfioDeviceBindIommufd {
        argsz: size_u32::<VfioDeviceBindIommufd>(),
        flags: 0,
        iommufd: iommufd.as_raw_fd(),
        out_devid: 0,
    };
    // SAFETY: `cmd` is a valid, initialised prefix of struct vfio_device_bind_iommufd
    // with `argsz` saying how long it is; the kernel reads `argsz` bytes and writes only
    // `out_devid`. The return value is checked.
    let ret = unsafe { ioctl_with_mut_ref(cdev, VFIO_DEVICE_BIND_IOMMUFD(), &mut cmd) };
    check(ret)?;
    Ok(cmd.out_devid)
}

/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`; returns the HWPT id the device ended up on.
pub(crate) fn vfio_device_attach_iommufd_pt(cdev: &impl AsRawFd, pt_id: u32) -> io::Result<u32> {
    let mut cmd = VfioDeviceAttachIommufdPt {
        argsz: size_u32::<VfioDeviceAttachIommufdPt>(),
        flags: 0,
        pt_id,
    };
    // SAFETY: `cmd` is a valid, initialised prefix of struct vfio_device_attach_iommufd_pt
    // (`argsz` = its size, no PASID flag, so the kernel reads nothing past `pt_id`); the
    // kernel writes back only `pt_id`. The return value is checked.
    let ret = unsafe { ioctl_with_mut_ref(cdev, VFIO_DEVICE_ATTACH_IOMMUFD_PT(), &mut cmd) };
    check(ret)?;
    Ok(cmd.pt_id)
}

/// `VFIO_DEVICE_DETACH_IOMMUFD_PT`.
pub(crate) fn vfio_device_detach_iommufd_pt(cdev: &impl AsRawFd) -> io::Result<()> {
    let mut cmd = VfioDeviceDetachIommufdPt {
        argsz: size_u32::<VfioDeviceDetachIommufdPt>(),
        flags: 0,
    };
    // SAFETY: `cmd` is a valid, initialised prefix of struct vfio_device_detach_iommufd_pt
    // (no PASID flag, so the kernel reads only `argsz` and `flags`) and is not written.
    // The return value is checked.
    let ret = unsafe { ioctl_with_mut_ref(cdev, VFIO_DEVICE_DETACH_IOMMUFD_PT(), &mut cmd) };
    check(ret)
}

/// The soft `RLIMIT_MEMLOCK` in bytes, `None` if unlimited.
pub(crate) fn memlock_limit() -> io::Result<Option<u64>> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one struct rlimit to the valid, exclusively borrowed
    // `limit`. Return checked.
    let ret = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    check(ret)?;
    Ok((limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur))
}

/// `out_data_type` of an answered `IOMMU_GET_HW_INFO`.
pub(crate) fn hw_info_out_type(info: &iommu_hw_info) -> u32 {
    // SAFETY: both members of the union are a plain `__u32`; any bit pattern is valid.
    unsafe { info.__bindgen_anon_1.out_data_type }
}

/// The host's page size (`sysconf(_SC_PAGESIZE)`), 4 KiB if it cannot be read.
pub(crate) fn host_page_size() -> u64 {
    // SAFETY: sysconf reads a system constant; it has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size)
        .ok()
        .filter(|s| s.is_power_of_two())
        .unwrap_or(4096)
}

/// Private anonymous memory, unmapped on drop: the source of test mappings.
#[derive(Debug)]
pub(crate) struct AnonMemory {
    base: *mut libc::c_void,
    mapped: usize,
    start: usize,
}

impl AnonMemory {
    /// At least `len` bytes whose address is a multiple of `align` (a power of two).
    pub(crate) fn new(len: usize, align: usize) -> io::Result<AnonMemory> {
        let mapped = len
            .checked_add(align)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing
        // cannot alias any Rust object; the result is checked against MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let addr = base as usize;
        let start = addr.next_multiple_of(align.max(1)) - addr;
        Ok(AnonMemory {
            base,
            mapped,
            start,
        })
    }

    /// Address of the first byte.
    pub(crate) fn addr(&self) -> u64 {
        self.base as u64 + self.start as u64
    }
}

impl Drop for AnonMemory {
    fn drop(&mut self) {
        // SAFETY: `base..base+mapped` is the mapping made in `new`, unmapped only here;
        // nothing borrows it (the struct hands out addresses, never references).
        unsafe { libc::munmap(self.base, self.mapped) };
    }
}

/// A memfd of `size` bytes.
pub(crate) fn memfd(name: &CStr, size: u64) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string for the call; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let size =
        libc::off_t::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: ftruncate on an fd we own; the result is checked.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), size) })?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    #[test]
    fn ioctl_numbers_match_the_uapi() {
        // _IO(';', nr) = 0x3b00 | nr.
        assert_eq!(IOMMU_IOAS_ALLOW_IOVAS(), 0x3b82);
        assert_eq!(IOMMU_IOAS_IOVA_RANGES(), 0x3b84);
        assert_eq!(IOMMU_IOAS_MAP(), 0x3b85);
        assert_eq!(IOMMU_IOAS_MAP_FILE(), 0x3b8f);
        assert_eq!(VFIO_DEVICE_BIND_IOMMUFD(), 0x3b76);
        assert_eq!(VFIO_DEVICE_ATTACH_IOMMUFD_PT(), 0x3b77);
        assert_eq!(VFIO_DEVICE_DETACH_IOMMUFD_PT(), 0x3b78);
    }

    #[test]
    fn struct_sizes_match_the_uapi_prefixes() {
        assert_eq!(size_u32::<VfioDeviceBindIommufd>(), 16);
        assert_eq!(size_u32::<VfioDeviceAttachIommufdPt>(), 12);
        assert_eq!(size_u32::<VfioDeviceDetachIommufdPt>(), 8);
    }

    // Without /dev/iommu, the wrappers are exercised against a file that is not an
    // iommufd: the kernel must refuse every ioctl with ENOTTY and we must report it.
    #[test]
    fn wrappers_report_enotty_on_a_non_iommufd() {
        let null = File::open("/dev/null").unwrap();
        let enotty = Some(libc::ENOTTY);
        let mut buf = [iommu_iova_range::default(); 2];
        assert_eq!(
            ioas_iova_ranges(&null, 1, &mut buf)
                .unwrap_err()
                .raw_os_error(),
            enotty
        );
        assert_eq!(
            ioas_iova_ranges_all(&null, 1).unwrap_err().raw_os_error(),
            enotty
        );
        assert_eq!(
            ioas_allow_iovas(&null, 1, &buf).unwrap_err().raw_os_error(),
            enotty
        );
        let mut map = iommu_ioas_map::default();
        assert_eq!(
            ioas_map(&null, &mut map).unwrap_err().raw_os_error(),
            enotty
        );
        let mut map_file = iommu_ioas_map_file::default();
        assert_eq!(
            ioas_map_file(&null, &mut map_file)
                .unwrap_err()
                .raw_os_error(),
            enotty
        );
        assert_eq!(
            vfio_device_bind_iommufd(&null, &null)
                .unwrap_err()
                .raw_os_error(),
            enotty
        );
        assert_eq!(
            vfio_device_attach_iommufd_pt(&null, 1)
                .unwrap_err()
                .raw_os_error(),
            enotty
        );
        assert_eq!(
            vfio_device_detach_iommufd_pt(&null)
                .unwrap_err()
                .raw_os_error(),
            enotty
        );
    }

    #[test]
    fn helpers() {
        assert!(host_page_size().is_power_of_two());
        let mem = AnonMemory::new(0x3000, 0x20_0000).unwrap();
        assert_eq!(mem.addr() % 0x20_0000, 0);
        // SAFETY: the first byte of the mapping is ours to write.
        unsafe { (mem.addr() as *mut u8).write(1) };
        let fd = memfd(c"test", 0x2000).unwrap();
        assert!(fd.as_raw_fd() >= 0);
        let info = iommu_hw_info::default();
        assert_eq!(hw_info_out_type(&info), 0);
        let _ = memlock_limit().unwrap();
    }
}
