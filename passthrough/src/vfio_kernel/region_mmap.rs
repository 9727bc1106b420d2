//! [`MmapArea`]: an mmap of (part of) a device region, unmapped on drop.
//!
//! Missing upstream: vfio-ioctls 0.10 has no mmap of a region (callers map the device fd
//! themselves at the region's offset; `get_region_offset` and the sparse-mmap capability
//! say where). The fake devices hand out anonymous memory of the same type.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

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
    pub(super) fn map_shared(
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
        MmapArea::owning(addr, len)
    }

    /// The mapping `mmap` returned (`addr`, `len` bytes), or its error.
    fn owning(addr: *mut libc::c_void, len: usize) -> io::Result<MmapArea> {
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
        MmapArea::owning(addr, len)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::AsFd;

    #[test]
    fn mappings() {
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
    }
}
