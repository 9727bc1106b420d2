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

/// Fills this process's page tables for guest RAM that is already allocated, so that KVM's
/// first fault on each guest page finds the page by a lookup instead of a page fault in the
/// VMM's address space.
///
/// Why: IOMMU_IOAS_MAP_FILE pins a memfd's pages through the file and never touches the VMM's
/// mapping, unlike a map by address, whose pinning faults every page in. Without this, every
/// guest page the guest's CPU touches first after boot (a page only a device had written, say)
/// costs a second fault; in the aarch64 rig that made L2's disk writes ~15% slower than with
/// anonymous RAM (docs/passthrough.md). MADV_POPULATE_READ maps up to 16 pages per fault
/// (fault-around) and writes nothing. `threads` > 1 splits the work (only where the calling
/// thread may clone). Kernels before 5.14 answer EINVAL: then nothing is done. Returns the
/// bytes populated.
pub fn populate_page_tables(mem: &GuestMemoryMmap, threads: usize) -> std::io::Result<u64> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    const CHUNK_ALIGN: usize = 2 << 20;
    let mut chunks: Vec<(usize, usize)> = Vec::new();
    for r in mem.iter() {
        let (base, len) = (r.as_ptr() as usize, r.len() as usize);
        let per = (len / threads.max(1))
            .next_multiple_of(CHUNK_ALIGN)
            .max(CHUNK_ALIGN);
        let mut off = 0;
        while off < len {
            let n = per.min(len - off);
            chunks.push((base + off, n));
            off += n;
        }
    }
    let populate = |(addr, len): (usize, usize)| -> std::io::Result<()> {
        // SAFETY: [addr, addr + len) lies inside a guest RAM mapping this process owns for as
        // long as `mem` lives; MADV_POPULATE_READ only faults pages in, it changes no data.
        let ret =
            unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_READ) };
        if ret == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let results: Vec<std::io::Result<()>> = if threads > 1 && chunks.len() > 1 {
        std::thread::scope(|s| {
            let per_thread = chunks.len().div_ceil(threads);
            let handles: Vec<_> = chunks
                .chunks(per_thread)
                .map(|part| s.spawn(move || part.iter().try_for_each(|&c| populate(c))))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(std::io::Error::other("populate thread panicked")))
                })
                .collect()
        })
    } else {
        vec![chunks.iter().try_for_each(|&c| populate(c))]
    };
    for r in results {
        match r {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(0),
            other => other?,
        }
    }
    Ok(chunks.iter().map(|c| c.1 as u64).sum())
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

    /// Pages of `r` resident in memory, by mincore.
    fn resident_pages(r: &GuestRegionMmap) -> usize {
        let page = 4096;
        let mut v = vec![0u8; r.len() as usize / page];
        // SAFETY: the region is a live mapping of r.len() bytes and `v` has one byte per page.
        let ret = unsafe { libc::mincore(r.as_ptr().cast(), r.len() as usize, v.as_mut_ptr()) };
        assert_eq!(ret, 0, "mincore: {}", std::io::Error::last_os_error());
        v.iter().filter(|b| **b & 1 != 0).count()
    }

    /// Whether MADV_POPULATE_READ makes a fresh memfd page resident on this host (it does on
    /// Linux 5.14+; qemu-user answers 0 and does nothing).
    fn populate_works() -> bool {
        let m = create_guest_memory(&[(GuestAddress(0), 2 * MIB)], MemoryBackend::Memfd, false)
            .unwrap();
        populate_page_tables(&m, 1).is_ok() && m.iter().map(resident_pages).sum::<usize>() > 0
    }

    #[test]
    fn populate_fills_every_region_on_one_or_several_threads() {
        let works = populate_works();
        for threads in [1, 3] {
            let m = create_guest_memory(
                &[
                    (GuestAddress(0), 6 * MIB),
                    (GuestAddress(0x1000_0000), 2 * MIB),
                ],
                MemoryBackend::Memfd,
                false,
            )
            .unwrap();
            m.write_obj(0x5au8, GuestAddress(0x1000_0001)).unwrap();
            let before: usize = m.iter().map(resident_pages).sum();
            assert!(before < 8, "{before} pages resident before populating");
            let bytes = populate_page_tables(&m, threads).unwrap();
            assert_eq!(bytes, 8 * MIB as u64);
            if !works {
                eprintln!(
                    "SKIPPED residency check: MADV_POPULATE_READ succeeds but populates nothing \
                     here (qemu-user accepts and ignores madvise advice)"
                );
                continue;
            }
            let after: Vec<usize> = m.iter().map(resident_pages).collect();
            assert_eq!(
                after,
                vec![6 * MIB / 4096, 2 * MIB / 4096],
                "{threads} thread(s)"
            );
            // Nothing written: the marker is there, the rest is still zero.
            assert_eq!(m.read_obj::<u8>(GuestAddress(0x1000_0001)).unwrap(), 0x5a);
            assert_eq!(m.read_obj::<u64>(GuestAddress(5 * MIB as u64)).unwrap(), 0);
        }
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
