//! Guest RAM made DMA-able for passed-through devices: [`GuestRamDma`] maps every RAM
//! region into the VM's IOAS at IOVA = GPA and then allows exactly those IOVAs (what
//! [`crate::guard_ram`] does), so no later attach can take RAM IOVA away; dropping it
//! removes the guard and the mappings. [`VmIoas`] owns the IOAS itself.
//!
//! Before mapping, the locked-memory limit is checked ([`MemlockLimit`]): iommufd pins all
//! mapped RAM.
//!
//! Order in a VMM: probe every device (`probe_ranges`), plan RAM around them, create RAM
//! and the IOAS, attach every device ([`crate::PassthroughDevice`]), then map RAM. Mapping
//! first works too; then a device whose reserved regions hit RAM fails to attach, with an
//! error saying so.
//!
//! Not here: the plan itself ([`crate::plan`]), KVM memslots.

use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use crate::iommufd::{FixedMap, IoasId, Iommufd, IommufdError, MapSource, Prot};
use crate::iova::{HostVirtAddr, Iova, IovaRange};
use crate::memlock::{MemlockError, MemlockLimit};

/// The VM's iommufd, shared by the objects that must undo their work in it on drop.
pub type SharedIommufd = Arc<Mutex<dyn Iommufd + Send>>;

/// Locks a [`SharedIommufd`] (a poisoned lock is still usable: every call is one ioctl).
pub fn lock(iommufd: &SharedIommufd) -> MutexGuard<'_, dyn Iommufd + Send + 'static> {
    iommufd.lock().unwrap_or_else(|e| e.into_inner())
}

/// Errors making guest RAM DMA-able.
#[derive(Debug, thiserror::Error)]
pub enum RamDmaError {
    /// Not allowed to pin that much.
    #[error(transparent)]
    Memlock(#[from] MemlockError),
    /// A region could not be mapped.
    #[error("{who}: cannot map guest RAM [{gpa:#x}, +{size:#x}) for device DMA: {source}{}", map_hint(.source))]
    Map {
        /// Who needs it.
        who: String,
        /// First GPA.
        gpa: u64,
        /// Bytes.
        size: u64,
        /// The iommufd error.
        source: IommufdError,
    },
    /// The guard could not be set.
    #[error("{who}: cannot reserve guest RAM's IOVA in the IOAS: {source}")]
    Guard {
        /// Who needs it.
        who: String,
        /// The iommufd error.
        source: IommufdError,
    },
    /// The IOAS could not be made.
    #[error("cannot create the VM's I/O address space: {0}")]
    Ioas(IommufdError),
}

fn map_hint(e: &IommufdError) -> &'static str {
    match e.errno() {
        libc::EADDRINUSE | libc::EINVAL => {
            "; the region overlaps a reserved region (e.g. the MSI window) or lies outside \
             the aperture of an attached device: plan guest RAM with every --device included \
             (vmm --print-memory-map shows where it may go)"
        }
        _ => "",
    }
}

/// An IOAS owned by the VM: allocated on creation, destroyed on drop (after everything
/// using it is gone: drop it last).
pub struct VmIoas {
    iommufd: SharedIommufd,
    id: IoasId,
}

impl std::fmt::Debug for VmIoas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmIoas").field("id", &self.id).finish()
    }
}

impl VmIoas {
    /// `IOMMU_IOAS_ALLOC`.
    pub fn new(iommufd: SharedIommufd) -> Result<VmIoas, RamDmaError> {
        let id = lock(&iommufd).alloc_ioas().map_err(RamDmaError::Ioas)?;
        Ok(VmIoas { iommufd, id })
    }

    /// Its id.
    pub fn id(&self) -> IoasId {
        self.id
    }
}

impl Drop for VmIoas {
    fn drop(&mut self) {
        if let Err(e) = lock(&self.iommufd).destroy(self.id.into()) {
            log::warn!("cannot destroy IOAS {}: {e}", self.id);
        }
    }
}

/// One guest RAM region and where its memory comes from.
#[derive(Clone, Copy, Debug)]
pub struct GuestRam<'a> {
    /// First guest physical address (= IOVA).
    pub gpa: u64,
    /// Bytes.
    pub size: u64,
    /// The memory: process VA (`IOMMU_IOAS_MAP`) or a memfd (`IOMMU_IOAS_MAP_FILE`,
    /// Linux 6.13+).
    pub source: MapSource<'a>,
}

impl<'a> GuestRam<'a> {
    /// The regions of `mem`: memfd-backed ones by file (`IOMMU_IOAS_MAP_FILE`, which pins
    /// the file's pages without walking the process's page tables), the rest by process
    /// address.
    pub fn from_memory_files(mem: &'a GuestMemoryMmap) -> Vec<GuestRam<'a>> {
        mem.iter()
            .filter_map(|r| {
                let source = match r.file_offset() {
                    Some(f) => MapSource::File {
                        fd: std::os::fd::AsFd::as_fd(f.file()),
                        offset: f.start(),
                    },
                    None => {
                        let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
                        MapSource::UserVa(HostVirtAddr(host as u64))
                    }
                };
                Some(GuestRam {
                    gpa: r.start_addr().0,
                    size: r.len(),
                    source,
                })
            })
            .collect()
    }

    /// Whether any region maps by file.
    pub fn any_file(ram: &[GuestRam<'_>]) -> bool {
        ram.iter()
            .any(|r| matches!(r.source, MapSource::File { .. }))
    }
}

impl GuestRam<'static> {
    /// The regions of `mem`, by process address.
    pub fn from_memory(mem: &GuestMemoryMmap) -> Vec<GuestRam<'static>> {
        mem.iter()
            .filter_map(|r| {
                let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
                Some(GuestRam {
                    gpa: r.start_addr().0,
                    size: r.len(),
                    source: MapSource::UserVa(HostVirtAddr(host as u64)),
                })
            })
            .collect()
    }
}

/// 2 MiB: chunk boundaries keep huge pages whole.
const CHUNK_ALIGN: u64 = 2 << 20;

/// `r` cut into at most `parts` pieces of about equal size, 2 MiB aligned (the last takes
/// the rest); one piece when `parts` <= 1 or the region is small.
fn chunks<'a>(r: &GuestRam<'a>, parts: usize) -> Vec<GuestRam<'a>> {
    let parts = parts.max(1) as u64;
    let step = (r.size / parts).next_multiple_of(CHUNK_ALIGN);
    if parts == 1 || step >= r.size {
        return vec![*r];
    }
    let mut out = Vec::new();
    let mut off = 0;
    while off < r.size {
        let size = step.min(r.size - off);
        let source = match r.source {
            MapSource::UserVa(va) => MapSource::UserVa(HostVirtAddr(va.0 + off)),
            MapSource::File { fd, offset } => MapSource::File {
                fd,
                offset: offset + off,
            },
        };
        out.push(GuestRam {
            gpa: r.gpa + off,
            size,
            source,
        });
        off += size;
    }
    out
}

/// Guest RAM mapped into an IOAS at IOVA = GPA and guarded. See the module docs.
pub struct GuestRamDma {
    iommufd: SharedIommufd,
    ioas: IoasId,
    mapped: Vec<(u64, u64)>,
    guarded: bool,
}

impl std::fmt::Debug for GuestRamDma {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestRamDma")
            .field("ioas", &self.ioas)
            .field("mapped", &self.mapped)
            .finish_non_exhaustive()
    }
}

impl GuestRamDma {
    /// Checks `limit`, maps each region of `ram` read-write at IOVA = GPA and allows only
    /// those IOVAs. `who` names the devices in errors (e.g. "--device 0000:00:03.0").
    /// On failure nothing stays mapped.
    pub fn map(
        iommufd: SharedIommufd,
        ioas: IoasId,
        ram: &[GuestRam<'_>],
        limit: &MemlockLimit,
        who: &str,
    ) -> Result<GuestRamDma, RamDmaError> {
        GuestRamDma::map_parallel(iommufd, ioas, ram, limit, who, 1)
    }

    /// [`GuestRamDma::map`] with the RAM cut into `threads` chunks per region (at 2 MiB
    /// boundaries, so huge pages stay whole) that the backend may pin on parallel threads.
    /// `threads` <= 1 maps each region in one call.
    pub fn map_parallel(
        iommufd: SharedIommufd,
        ioas: IoasId,
        ram: &[GuestRam<'_>],
        limit: &MemlockLimit,
        who: &str,
        threads: usize,
    ) -> Result<GuestRamDma, RamDmaError> {
        let total = ram.iter().fold(0u64, |t, r| t.saturating_add(r.size));
        limit.check(who, total)?;
        let mut dma = GuestRamDma {
            iommufd,
            ioas,
            mapped: Vec::new(),
            guarded: false,
        };
        let chunks: Vec<(GuestRam<'_>, FixedMap<'_>)> = ram
            .iter()
            .flat_map(|r| chunks(r, threads))
            .map(|c| {
                let map = FixedMap {
                    source: c.source,
                    length: c.size,
                    iova: Iova(c.gpa),
                    prot: Prot::READ_WRITE,
                };
                (c, map)
            })
            .collect();
        let maps: Vec<FixedMap<'_>> = chunks.iter().map(|c| c.1).collect();
        let results = lock(&dma.iommufd).map_fixed_many(ioas, &maps, threads);
        let mut errors = Vec::new();
        for ((c, _), r) in chunks.iter().zip(results) {
            match r {
                Ok(()) => dma.mapped.push((c.gpa, c.size)),
                Err(source) => errors.push(RamDmaError::Map {
                    who: who.to_string(),
                    gpa: c.gpa,
                    size: c.size,
                    source,
                }),
            }
        }
        // Report the first failure the kernel gave, not a "not tried" (ECANCELED) after it.
        let not_tried = |e: &RamDmaError| matches!(e, RamDmaError::Map { source, .. } if source.errno() == libc::ECANCELED);
        let first_error = match errors.iter().position(|e| !not_tried(e)) {
            Some(i) => Some(errors.swap_remove(i)),
            None => errors.into_iter().next(),
        };
        if let Some(e) = first_error {
            return Err(e); // dropping dma unmaps what was mapped
        }
        let ranges: Vec<IovaRange> = ram
            .iter()
            .filter_map(|r| IovaRange::from_start_len(r.gpa, r.size))
            .collect();
        lock(&dma.iommufd)
            .allow_iovas(ioas, &ranges)
            .map_err(|source| RamDmaError::Guard {
                who: who.to_string(),
                source,
            })?;
        dma.guarded = true;
        Ok(dma)
    }

    /// The mapped regions: (GPA, bytes).
    pub fn regions(&self) -> &[(u64, u64)] {
        &self.mapped
    }
}

impl Drop for GuestRamDma {
    fn drop(&mut self) {
        let mut iommufd = lock(&self.iommufd);
        if self.guarded {
            if let Err(e) = iommufd.allow_iovas(self.ioas, &[]) {
                log::warn!(
                    "cannot release the guest RAM guard of IOAS {}: {e}",
                    self.ioas
                );
            }
        }
        for &(gpa, size) in self.mapped.iter().rev() {
            if let Err(e) = iommufd.unmap(self.ioas, Iova(gpa), size) {
                log::warn!(
                    "cannot unmap guest RAM at {gpa:#x} from IOAS {}: {e}",
                    self.ioas
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iommufd::DeviceHandle;
    use crate::model::{ModelDevice, ModelIommufd};

    const PAGE: u64 = 4096;

    fn model() -> (Arc<Mutex<ModelIommufd>>, SharedIommufd) {
        let m = Arc::new(Mutex::new(ModelIommufd::with_page_size(PAGE)));
        let shared: SharedIommufd = m.clone();
        (m, shared)
    }

    fn ram(gpa: u64, size: u64) -> GuestRam<'static> {
        GuestRam {
            gpa,
            size,
            source: MapSource::UserVa(HostVirtAddr(0x7f00_0000_0000 + gpa)),
        }
    }

    #[test]
    fn maps_guards_and_undoes_everything() {
        let (m, shared) = model();
        let ioas = VmIoas::new(shared.clone()).unwrap();
        let regions = [ram(0, 0x10_0000), ram(0x1_0000_0000, 0x20_0000)];
        let dma = GuestRamDma::map(
            shared.clone(),
            ioas.id(),
            &regions,
            &MemlockLimit::UNLIMITED,
            "t",
        )
        .unwrap();
        assert_eq!(dma.regions().len(), 2);
        assert_eq!(m.lock().unwrap().mappings(ioas.id()).len(), 2);
        assert_eq!(m.lock().unwrap().allowed(ioas.id()).len(), 2);
        // A device whose MSI window would land in RAM cannot attach now.
        let mut g = m.lock().unwrap();
        let dev = g
            .bind_device(DeviceHandle::Model(ModelDevice::new(
                "d",
                vec![IovaRange::new(0x8_0000, 0x8_ffff).unwrap()],
                IovaRange::FULL,
            )))
            .unwrap();
        assert_eq!(
            g.attach_device(dev, ioas.id().into()).unwrap_err().errno(),
            libc::EADDRINUSE
        );
        g.unbind_device(dev).unwrap();
        drop(g);
        drop(dma);
        assert!(m.lock().unwrap().mappings(ioas.id()).is_empty());
        assert!(m.lock().unwrap().allowed(ioas.id()).is_empty());
        drop(ioas);
        assert!(m.lock().unwrap().object_ids().is_empty());
    }

    #[test]
    fn chunks_are_2m_aligned_and_cover_the_region() {
        let file_backed = |size| GuestRam {
            gpa: 0x4000_0000,
            size,
            source: MapSource::UserVa(HostVirtAddr(0x7f00_0000_0000)),
        };
        for (size, parts) in [(512 << 20, 2), (512 << 20, 3), (6 << 20, 4), (1 << 20, 4)] {
            let r = file_backed(size);
            let c = chunks(&r, parts);
            assert!(c.len() <= parts, "{size:#x}/{parts}: {} chunks", c.len());
            assert_eq!(c.iter().map(|c| c.size).sum::<u64>(), size);
            let mut next = r.gpa;
            for (i, piece) in c.iter().enumerate() {
                assert_eq!(piece.gpa, next);
                let MapSource::UserVa(va) = piece.source else {
                    panic!("source changed kind")
                };
                assert_eq!(va.0 - 0x7f00_0000_0000, piece.gpa - r.gpa);
                if i + 1 < c.len() {
                    assert_eq!(piece.size % CHUNK_ALIGN, 0, "{size:#x}/{parts}");
                }
                next += piece.size;
            }
        }
        assert_eq!(chunks(&file_backed(512 << 20), 1).len(), 1);
        assert_eq!(chunks(&file_backed(512 << 20), 0).len(), 1);
    }

    #[test]
    fn parallel_map_gives_the_same_ioas_and_undoes_a_failure() {
        let (m, shared) = model();
        let ioas = VmIoas::new(shared.clone()).unwrap();
        let regions = [ram(0, 64 << 20), ram(0x1_0000_0000, 32 << 20)];
        let dma = GuestRamDma::map_parallel(
            shared.clone(),
            ioas.id(),
            &regions,
            &MemlockLimit::UNLIMITED,
            "t",
            4,
        )
        .unwrap();
        assert_eq!(dma.regions().len(), 8);
        assert_eq!(m.lock().unwrap().mappings(ioas.id()).len(), 8);
        assert_eq!(m.lock().unwrap().allowed(ioas.id()).len(), 2);
        drop(dma);
        assert!(m.lock().unwrap().mappings(ioas.id()).is_empty());
        // The third chunk fails: the report names it, and nothing stays mapped.
        m.lock().unwrap().fail_nth(3, libc::ENOMEM);
        let err = GuestRamDma::map_parallel(
            shared.clone(),
            ioas.id(),
            &regions,
            &MemlockLimit::UNLIMITED,
            "--device p",
            4,
        )
        .unwrap_err();
        assert!(err.to_string().contains("[0x2000000, +0x1000000)"), "{err}");
        assert!(m.lock().unwrap().mappings(ioas.id()).is_empty());
        assert!(m.lock().unwrap().allowed(ioas.id()).is_empty());
    }

    #[test]
    fn failures_roll_back_and_say_why() {
        let (m, shared) = model();
        let ioas = VmIoas::new(shared.clone()).unwrap();
        let regions = [ram(0, 0x10_0000), ram(0x100_0000, 0x10_0000)];
        // The second map fails, then the guard.
        for nth in [2, 3] {
            m.lock().unwrap().fail_nth(nth, libc::ENOMEM);
            let err = GuestRamDma::map(
                shared.clone(),
                ioas.id(),
                &regions,
                &MemlockLimit::UNLIMITED,
                "--device x",
            )
            .unwrap_err();
            assert!(err.to_string().starts_with("--device x"), "{err}");
            assert!(
                m.lock().unwrap().mappings(ioas.id()).is_empty(),
                "after failing call {nth}"
            );
            assert!(m.lock().unwrap().allowed(ioas.id()).is_empty());
        }
        // RAM over an attached device's MSI window.
        let dev = m
            .lock()
            .unwrap()
            .bind_device(DeviceHandle::Model(ModelDevice::x86_vtd()))
            .unwrap();
        m.lock()
            .unwrap()
            .attach_device(dev, ioas.id().into())
            .unwrap();
        let err = GuestRamDma::map(
            shared.clone(),
            ioas.id(),
            &[ram(0xfee0_0000, 0x1000)],
            &MemlockLimit::UNLIMITED,
            "--device y",
        )
        .unwrap_err();
        assert!(err.to_string().contains("reserved region"), "{err}");
        // Too little locked memory: refused before anything is mapped.
        let tight = MemlockLimit {
            limit: Some(0x1000),
            cap_ipc_lock: false,
        };
        let err = GuestRamDma::map(shared.clone(), ioas.id(), &regions, &tight, "--device z")
            .unwrap_err();
        assert!(matches!(err, RamDmaError::Memlock(_)), "{err}");
        assert!(m.lock().unwrap().mappings(ioas.id()).is_empty());
        m.lock().unwrap().unbind_device(dev).unwrap();
        m.lock().unwrap().fail_nth(1, libc::ENOMEM);
        assert!(VmIoas::new(shared.clone()).is_err());
    }

    #[test]
    fn regions_of_guest_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (vm_memory::GuestAddress(0), 0x10_0000),
            (vm_memory::GuestAddress(0x1_0000_0000), 0x20_0000),
        ])
        .unwrap();
        let r = GuestRam::from_memory(&mem);
        assert_eq!(r.len(), 2);
        assert_eq!((r[1].gpa, r[1].size), (0x1_0000_0000, 0x20_0000));
        assert!(matches!(r[0].source, MapSource::UserVa(HostVirtAddr(a)) if a != 0));
    }
}
