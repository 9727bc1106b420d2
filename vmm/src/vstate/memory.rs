//! Guest RAM: host mappings for the planned RAM regions, anonymous or memfd-backed, with
//! huge pages when asked, and the KVM memory slots that expose them to the guest.
//!
//! Where the regions go is decided elsewhere (the arch layout, later the passthrough memory
//! planner); this module only backs them.

use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::config::MemoryBackend;

/// Errors backing guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// memfd_create or ftruncate failed.
    #[error("cannot create the memfd for guest RAM: {0}")]
    Memfd(std::io::Error),
    /// mmap failed.
    #[error("cannot map {size} bytes of guest RAM at {addr:#x}{hint}: {source}")]
    Mmap {
        /// Guest address of the region.
        addr: u64,
        /// Region size.
        size: usize,
        /// What to check.
        hint: &'static str,
        /// The mmap error.
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The regions overlap or are unsorted.
    #[error("invalid guest RAM layout: {0}")]
    Layout(vm_memory::GuestRegionCollectionError),
}

fn hint(hugepages: bool) -> &'static str {
    if hugepages {
        " (are enough 2 MiB huge pages reserved? see /proc/sys/vm/nr_hugepages)"
    } else {
        ""
    }
}

/// Backs `regions` (sorted, non-overlapping guest ranges) with host memory.
pub fn create_guest_memory(
    regions: &[(GuestAddress, usize)],
    backend: MemoryBackend,
    hugepages: bool,
) -> Result<GuestMemoryMmap, MemoryError> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let memfd = match backend {
        MemoryBackend::Memfd => Some(create_memfd(
            regions.iter().map(|r| r.1 as u64).sum(),
            hugepages,
        )?),
        // Auto is settled before RAM is made (builder); anonymous if it ever is not.
        MemoryBackend::Anonymous | MemoryBackend::Auto => None,
    };
    let mut out = Vec::with_capacity(regions.len());
    let mut file_offset = 0u64;
    for &(addr, size) in regions {
        let mut builder = MmapRegionBuilder::new(size).with_mmap_prot(prot);
        builder = match &memfd {
            Some(file) => {
                let f = file.try_clone().map_err(MemoryError::Memfd)?;
                let b = builder
                    .with_file_offset(FileOffset::new(f, file_offset))
                    .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE);
                file_offset += size as u64;
                b
            }
            None => {
                let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
                if hugepages {
                    flags |= libc::MAP_HUGETLB;
                }
                builder.with_mmap_flags(flags)
            }
        };
        let mapping = builder.build().map_err(|source| MemoryError::Mmap {
            addr: addr.0,
            size,
            hint: hint(hugepages),
            source,
        })?;
        if !hugepages {
            advise_huge(mapping.as_ptr(), size);
        }
        // new() fails only when addr + size overflows, which the layout rules out.
        let region = GuestRegionMmap::new(mapping, addr).ok_or(MemoryError::Layout(
            vm_memory::GuestRegionCollectionError::UnsortedMemoryRegions,
        ))?;
        out.push(region);
    }
    GuestMemoryMmap::from_regions(out).map_err(MemoryError::Layout)
}

fn create_memfd(size: u64, hugepages: bool) -> Result<File, MemoryError> {
    let mut flags = libc::MFD_CLOEXEC;
    if hugepages {
        flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    }
    // SAFETY: the name is a valid NUL-terminated string and the flags are valid; the
    // returned fd is checked before use.
    let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), flags) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by memfd_create and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(MemoryError::Memfd)?;
    Ok(file)
}

/// Asks for transparent huge pages; a failure (THP disabled) only costs performance.
fn advise_huge(addr: *mut u8, size: usize) {
    // SAFETY: [addr, addr + size) is a mapping this process just created; madvise does not
    // change its contents.
    let ret = unsafe { libc::madvise(addr.cast(), size, libc::MADV_HUGEPAGE) };
    if ret != 0 {
        log::debug!(
            "madvise(MADV_HUGEPAGE) failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    const MIB: usize = 1 << 20;

    #[test]
    fn anonymous_regions() {
        let m = create_guest_memory(
            &[
                (GuestAddress(0), 4 * MIB),
                (GuestAddress(0x1_0000_0000), 2 * MIB),
            ],
            MemoryBackend::Anonymous,
            false,
        )
        .unwrap();
        assert_eq!(m.num_regions(), 2);
        m.write_obj(0xdead_beefu32, GuestAddress(0x1_0000_0010))
            .unwrap();
        assert_eq!(
            m.read_obj::<u32>(GuestAddress(0x1_0000_0010)).unwrap(),
            0xdead_beef
        );
        assert!(!m.address_in_range(GuestAddress(4 * MIB as u64)));
    }

    #[test]
    fn memfd_regions_share_one_file_at_increasing_offsets() {
        let m = create_guest_memory(
            &[
                (GuestAddress(0), 4 * MIB),
                (GuestAddress(0x1000_0000), 2 * MIB),
            ],
            MemoryBackend::Memfd,
            false,
        )
        .unwrap();
        let offs: Vec<u64> = m
            .iter()
            .map(|r| r.file_offset().map(|f| f.start()).unwrap())
            .collect();
        assert_eq!(offs, vec![0, 4 * MIB as u64]);
        m.write_obj(7u8, GuestAddress(0x1000_0000)).unwrap();
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x1000_0000)).unwrap(), 7);
    }

    #[test]
    fn overlapping_regions_are_an_error() {
        let r = create_guest_memory(
            &[
                (GuestAddress(0), 4 * MIB),
                (GuestAddress(MIB as u64), 2 * MIB),
            ],
            MemoryBackend::Anonymous,
            false,
        );
        assert!(matches!(r, Err(MemoryError::Layout(_))));
    }
}
