//! The VFIO device ioctls (uapi `linux/vfio.h`) on a device fd, the shared mappings of BAR
//! regions, and `getrlimit(RLIMIT_MEMLOCK)`: every `unsafe` of the VFIO side of the crate.
//!
//! The structs are declared here at the layout of uapi `vfio.h` (they have not changed since
//! Linux 4.x; `vfio_device_info` grew `cap_offset`, which older kernels ignore because they
//! only require `argsz >= offsetofend(num_irqs)`). Variable-length answers (region info with
//! a capability chain) and arguments (`vfio_irq_set` with eventfds) are built in `u64`/`u32`
//! buffers so that nothing outside this file deals with raw layouts.
//!
//! Not here: binding and attaching the cdev to an iommufd (`crate::sys`), and parsing the
//! capability chain (`crate::vfio_device`, in safe code over the bytes returned here).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::ioctl::{ioctl, ioctl_with_mut_ptr, ioctl_with_mut_ref, ioctl_with_ptr};
use vmm_sys_util::ioctl_io_nr;

/// `VFIO_TYPE` (`';'`).
const VFIO_TYPE: u32 = b';' as u32;
/// `VFIO_BASE`.
const VFIO_BASE: u32 = 100;

ioctl_io_nr!(VFIO_DEVICE_GET_INFO, VFIO_TYPE, VFIO_BASE + 7);
ioctl_io_nr!(VFIO_DEVICE_GET_REGION_INFO, VFIO_TYPE, VFIO_BASE + 8);
ioctl_io_nr!(VFIO_DEVICE_GET_IRQ_INFO, VFIO_TYPE, VFIO_BASE + 9);
ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE, VFIO_BASE + 10);
ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE, VFIO_BASE + 11);

/// `VFIO_IRQ_SET_DATA_NONE`.
pub(crate) const IRQ_SET_DATA_NONE: u32 = 1 << 0;
/// `VFIO_IRQ_SET_DATA_EVENTFD`.
pub(crate) const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// `VFIO_IRQ_SET_ACTION_TRIGGER`.
pub(crate) const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

/// Bytes of `struct vfio_region_info`, the header of a region-info answer.
pub(crate) const REGION_INFO_SIZE: usize = 32;
/// Bytes of `struct vfio_irq_set` before its `data[]`.
const IRQ_SET_HEADER_SIZE: usize = 20;

/// `struct vfio_device_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct VfioDeviceInfo {
    pub argsz: u32,
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
    pub cap_offset: u32,
    pub pad: u32,
}

/// `struct vfio_region_info` (the fixed part).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct VfioRegionInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

/// `struct vfio_irq_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct VfioIrqInfo {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub count: u32,
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

/// `VFIO_DEVICE_GET_INFO`.
pub(crate) fn device_get_info(fd: &impl AsRawFd) -> io::Result<VfioDeviceInfo> {
    let mut info = VfioDeviceInfo {
        argsz: size_u32::<VfioDeviceInfo>(),
        ..Default::default()
    };
    // SAFETY: `info` is a valid, initialised struct vfio_device_info whose `argsz` is its
    // own size; the kernel writes at most `argsz` bytes into it (capabilities only follow
    // the struct when `argsz` leaves room for them, which it does not). Return checked.
    let ret = unsafe { ioctl_with_mut_ref(fd, VFIO_DEVICE_GET_INFO(), &mut info) };
    check(ret)?;
    Ok(info)
}

/// `VFIO_DEVICE_GET_REGION_INFO`: the whole answer as bytes, the fixed part first and the
/// capability chain (if any) after it; offsets in the chain are from the first byte.
/// Asks twice when the region has capabilities: once to learn the size, once to get them.
pub(crate) fn device_get_region_info(fd: &impl AsRawFd, index: u32) -> io::Result<Vec<u8>> {
    let mut info = VfioRegionInfo {
        argsz: size_u32::<VfioRegionInfo>(),
        index,
        ..Default::default()
    };
    // SAFETY: `info` is a valid, initialised struct vfio_region_info with `argsz` equal to
    // its size; the kernel writes only inside it (it copies capabilities only when `argsz`
    // leaves room, and otherwise just raises `argsz`). Return checked.
    let ret = unsafe { ioctl_with_mut_ref(fd, VFIO_DEVICE_GET_REGION_INFO(), &mut info) };
    check(ret)?;
    let needed = info.argsz as usize;
    if needed <= REGION_INFO_SIZE {
        return Ok(region_info_bytes(&info));
    }
    // The kernel answers a few hundred bytes at most; refuse anything absurd.
    if needed > 1 << 20 {
        return Err(io::Error::from_raw_os_error(libc::E2BIG));
    }
    // A u64 buffer keeps the struct's 8-byte alignment.
    let mut buf = vec![0u64; needed.div_ceil(8)];
    // The header in native byte order: argsz, flags (0), index, cap_offset (0).
    let mut header = [0u8; 16];
    header[0..4].copy_from_slice(&info.argsz.to_ne_bytes());
    header[8..12].copy_from_slice(&index.to_ne_bytes());
    for (word, chunk) in buf.iter_mut().zip(header.chunks_exact(8)) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        *word = u64::from_ne_bytes(w);
    }
    // SAFETY: `buf` holds `argsz` (= `needed`) writable bytes, 8-byte aligned, starting with
    // a struct vfio_region_info whose `argsz` and `index` are set; the kernel reads that
    // header and writes at most `argsz` bytes (header plus capability chain) into `buf`.
    // Return checked.
    let ret = unsafe { ioctl_with_mut_ptr(fd, VFIO_DEVICE_GET_REGION_INFO(), buf.as_mut_ptr()) };
    check(ret)?;
    let mut bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
    bytes.truncate(needed);
    Ok(bytes)
}

fn region_info_bytes(info: &VfioRegionInfo) -> Vec<u8> {
    let mut b = Vec::with_capacity(REGION_INFO_SIZE);
    for v in [info.argsz, info.flags, info.index, info.cap_offset] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    b.extend_from_slice(&info.size.to_ne_bytes());
    b.extend_from_slice(&info.offset.to_ne_bytes());
    b
}

/// `VFIO_DEVICE_GET_IRQ_INFO`.
pub(crate) fn device_get_irq_info(fd: &impl AsRawFd, index: u32) -> io::Result<VfioIrqInfo> {
    let mut info = VfioIrqInfo {
        argsz: size_u32::<VfioIrqInfo>(),
        index,
        ..Default::default()
    };
    // SAFETY: `info` is a valid, initialised struct vfio_irq_info of `argsz` bytes; the
    // kernel writes only inside it. Return checked.
    let ret = unsafe { ioctl_with_mut_ref(fd, VFIO_DEVICE_GET_IRQ_INFO(), &mut info) };
    check(ret)?;
    Ok(info)
}

/// `VFIO_DEVICE_SET_IRQS` with `ACTION_TRIGGER`: `DATA_EVENTFD` with `fds` (one per vector
/// from `start`), or `DATA_NONE` with count 0 when `fds` is `None` (disable the index).
pub(crate) fn device_set_irqs(
    fd: &impl AsRawFd,
    index: u32,
    start: u32,
    fds: Option<&[&EventFd]>,
) -> io::Result<()> {
    let (data, fds) = match fds {
        Some(fds) => (IRQ_SET_DATA_EVENTFD, fds),
        None => (IRQ_SET_DATA_NONE, &[][..]),
    };
    let count = u32::try_from(fds.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    let argsz = IRQ_SET_HEADER_SIZE + 4 * fds.len();
    let argsz = u32::try_from(argsz).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    // struct vfio_irq_set is five __u32 followed by __u8 data[], here an array of __s32 fds:
    // a u32 buffer has exactly that layout.
    let mut buf: Vec<u32> = vec![argsz, data | IRQ_SET_ACTION_TRIGGER, index, start, count];
    buf.extend(fds.iter().map(|f| f.as_raw_fd() as u32));
    // SAFETY: `buf` is `argsz` bytes laid out as struct vfio_irq_set followed by `count`
    // eventfd numbers; the kernel only reads it. The eventfds are borrowed for the call, so
    // they are open; the kernel takes its own references. Return checked.
    let ret = unsafe { ioctl_with_ptr(fd, VFIO_DEVICE_SET_IRQS(), buf.as_ptr()) };
    check(ret)
}

/// `VFIO_DEVICE_RESET`.
pub(crate) fn device_reset(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: VFIO_DEVICE_RESET takes no argument and touches no user memory. Return checked.
    let ret = unsafe { ioctl(fd, VFIO_DEVICE_RESET()) };
    check(ret)
}

/// A shared mapping of (part of) a device region, or anonymous memory standing in for one
/// in tests; unmapped on drop.
///
/// Invariant: `addr..addr+len` is a mapping made by this type and unmapped only by its drop.
#[derive(Debug)]
pub struct MmapArea {
    addr: usize,
    len: usize,
    /// Lets a fake count its live mappings (dropped with the area).
    _guard: Option<Arc<()>>,
}

impl MmapArea {
    /// Maps `len` bytes of `fd` at file offset `offset`, shared (what `mmap` of a VFIO
    /// region needs), readable and, if `writable`, writable.
    pub(crate) fn map_shared(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: u64,
        writable: bool,
    ) -> io::Result<MmapArea> {
        let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a new shared mapping at an address the kernel picks cannot alias any Rust
        // object; the fd is open for the call (borrowed). The result is checked against
        // MAP_FAILED, and the mapping is owned by the returned value.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(MmapArea {
            addr: addr as usize,
            len,
            _guard: None,
        })
    }

    /// `len` bytes of private anonymous memory: what a fake device hands out as a BAR
    /// mapping.
    pub fn anonymous(len: u64) -> io::Result<MmapArea> {
        let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: an anonymous private mapping at an address the kernel picks cannot alias
        // any Rust object; the result is checked, and the mapping is owned by the value.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(MmapArea {
            addr: addr as usize,
            len,
            _guard: None,
        })
    }

    /// Ties `guard` to this mapping's lifetime (fakes count live mappings with it).
    pub fn with_guard(mut self, guard: Arc<()>) -> MmapArea {
        self._guard = Some(guard);
        self
    }

    /// Host virtual address of the first byte.
    pub fn addr(&self) -> u64 {
        self.addr as u64
    }

    /// Bytes mapped.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Whether the mapping is empty (never, for a mapping that was made).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for MmapArea {
    fn drop(&mut self) {
        // SAFETY: `addr..addr+len` is the mapping made in the constructor and unmapped only
        // here; the type hands out addresses, never references, so nothing borrows it.
        // Anything else still using the address (a KVM memslot) must have been removed by
        // the owner first, which `VfioPciFunction` guarantees by its field order.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::AsFd;

    #[test]
    fn ioctl_numbers_and_sizes_match_the_uapi() {
        assert_eq!(VFIO_DEVICE_GET_INFO(), 0x3b6b);
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO(), 0x3b6c);
        assert_eq!(VFIO_DEVICE_GET_IRQ_INFO(), 0x3b6d);
        assert_eq!(VFIO_DEVICE_SET_IRQS(), 0x3b6e);
        assert_eq!(VFIO_DEVICE_RESET(), 0x3b6f);
        assert_eq!(size_u32::<VfioDeviceInfo>(), 24);
        assert_eq!(size_u32::<VfioRegionInfo>() as usize, REGION_INFO_SIZE);
        assert_eq!(size_u32::<VfioIrqInfo>(), 16);
    }

    // Without /dev/vfio the wrappers run against a file that is no VFIO device: the kernel
    // refuses every ioctl with ENOTTY and we must report it.
    #[test]
    fn wrappers_report_enotty_on_a_non_vfio_fd() {
        let null = File::open("/dev/null").unwrap();
        let enotty = Some(libc::ENOTTY);
        assert_eq!(device_get_info(&null).unwrap_err().raw_os_error(), enotty);
        assert_eq!(
            device_get_region_info(&null, 7).unwrap_err().raw_os_error(),
            enotty
        );
        assert_eq!(
            device_get_irq_info(&null, 2).unwrap_err().raw_os_error(),
            enotty
        );
        let efd = EventFd::new(0).unwrap();
        let fds = [&efd];
        assert_eq!(
            device_set_irqs(&null, 2, 0, Some(&fds))
                .unwrap_err()
                .raw_os_error(),
            enotty
        );
        assert_eq!(
            device_set_irqs(&null, 2, 0, None)
                .unwrap_err()
                .raw_os_error(),
            enotty
        );
        assert_eq!(device_reset(&null).unwrap_err().raw_os_error(), enotty);
    }

    #[test]
    fn mappings_and_limits() {
        let area = MmapArea::anonymous(0x2000).unwrap();
        assert_eq!(area.len(), 0x2000);
        assert!(!area.is_empty());
        assert_eq!(area.addr() % 4096, 0);
        let guard = Arc::new(());
        let tracked = MmapArea::anonymous(0x1000)
            .unwrap()
            .with_guard(guard.clone());
        assert_eq!(Arc::strong_count(&guard), 2);
        drop(tracked);
        assert_eq!(Arc::strong_count(&guard), 1);
        // /dev/zero can be mapped shared, like a region.
        let zero = File::options()
            .read(true)
            .write(true)
            .open("/dev/zero")
            .unwrap();
        let shared = MmapArea::map_shared(zero.as_fd(), 0, 0x1000, true).unwrap();
        assert_eq!(shared.len(), 0x1000);
        let null = File::open("/dev/null").unwrap();
        assert!(MmapArea::map_shared(null.as_fd(), 0, 0x1000, false).is_err());
        let _ = memlock_limit().unwrap();
    }
}
