//! The model of one IOAS's `struct io_pagetable` (kernel `drivers/iommu/iommufd/
//! io_pagetable.c`): its mapped areas, its allowed list, its reserved list (owned by
//! attached devices and by the domains of its HWPTs) and its IOVA alignment.
//!
//! Each function follows the kernel function named in its comment, including the order
//! of checks, because that order decides which errno a bad request gets. Errors are raw
//! errnos; [`super::ModelIommufd`] wraps them with the operation.
//!
//! Not modelled: page pinning and accounting (ENOMEM, EFAULT, EPERM on read-only
//! memory), accesses, IOAS copy, area splitting, the huge-pages option.

use std::collections::BTreeMap;

use libc::{EADDRINUSE, EEXIST, EINVAL, ENOENT, ENOSPC, EOVERFLOW};

use crate::iova::{align_up, complement, normalize, IovaRange};

type Errno = i32;

/// A mapping (`struct iopt_area`).
#[derive(Clone, Copy, Debug)]
struct Area {
    last: u64,
    /// Offset of the source inside its first host page (`area->page_offset`).
    page_offset: u64,
}

/// Who put a reserved range in place (`iopt_reserved->owner`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Owner {
    /// A device's reserved regions, while it is attached.
    Device(u32),
    /// The outside of a HWPT domain's aperture, while the HWPT exists.
    Domain(u32),
}

#[derive(Clone, Copy, Debug)]
struct Reserved {
    range: IovaRange,
    owner: Owner,
}

/// One IOAS's page table. Invariants: areas are disjoint and never intersect a reserved
/// range; allowed ranges are sorted, disjoint and never intersect a reserved range;
/// `alignment` is the largest minimum page size of the domains (1 without domains).
#[derive(Debug)]
pub(super) struct IoPagetable {
    /// Mapped areas by first IOVA.
    areas: BTreeMap<u64, Area>,
    allowed: Vec<IovaRange>,
    reserved: Vec<Reserved>,
    /// HWPT ids whose domain is filled from this table, with their minimum page size.
    domains: Vec<(u32, u64)>,
    alignment: u64,
}

/// The kernel's HPAGE_SIZE on x86_64 and arm64 with 4 KiB pages: the cap on auto-IOVA
/// alignment when transparent huge pages are configured.
const HPAGE_SIZE: u64 = 2 << 20;

impl IoPagetable {
    /// `iopt_init_table`: no areas, no restrictions, alignment 1.
    pub(super) fn new() -> IoPagetable {
        IoPagetable {
            areas: BTreeMap::new(),
            allowed: Vec::new(),
            reserved: Vec::new(),
            domains: Vec::new(),
            alignment: 1,
        }
    }

    pub(super) fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The mapped areas, in IOVA order.
    pub(super) fn mappings(&self) -> Vec<IovaRange> {
        self.areas
            .iter()
            .filter_map(|(&start, a)| IovaRange::new(start, a.last))
            .collect()
    }

    /// The allowed list.
    pub(super) fn allowed(&self) -> &[IovaRange] {
        &self.allowed
    }

    fn reserved_ranges(&self) -> Vec<IovaRange> {
        let mut v: Vec<IovaRange> = self.reserved.iter().map(|r| r.range).collect();
        normalize(&mut v);
        v
    }

    /// `iommufd_ioas_iova_ranges`: the holes of the reserved tree over the whole space.
    /// The allowed list does not narrow it.
    pub(super) fn iova_ranges(&self) -> Vec<IovaRange> {
        complement(IovaRange::FULL, &self.reserved_ranges())
    }

    fn reserved_hits(&self, r: &IovaRange) -> bool {
        self.reserved.iter().any(|x| x.range.overlaps(r))
    }

    fn allowed_hits(&self, r: &IovaRange) -> bool {
        self.allowed.iter().any(|x| x.overlaps(r))
    }

    /// The first area intersecting `start..=last`, in IOVA order (`iopt_area_iter_first`).
    fn first_area(&self, start: u64, last: u64) -> Option<(u64, Area)> {
        if let Some((&s, a)) = self.areas.range(..=start).next_back() {
            if a.last >= start {
                return Some((s, *a));
            }
        }
        self.areas.range(start..=last).next().map(|(&s, a)| (s, *a))
    }

    fn area_hits(&self, r: &IovaRange) -> bool {
        self.first_area(r.first_raw(), r.last_raw()).is_some()
    }

    /// `iommufd_ioas_load_iovas` + `iopt_set_allow_iova`: replace the allowed list.
    pub(super) fn set_allowed(&mut self, ranges: &[IovaRange]) -> Result<(), Errno> {
        let mut new: Vec<IovaRange> = Vec::with_capacity(ranges.len());
        for r in ranges {
            // iommufd_ioas_load_iovas: `range.start >= range.last` and overlaps are EINVAL.
            if r.first_raw() >= r.last_raw() || new.iter().any(|x| x.overlaps(r)) {
                return Err(EINVAL);
            }
            new.push(*r);
        }
        // iopt_set_allow_iova: no allowed range may intersect a reserved one.
        if new.iter().any(|r| self.reserved_hits(r)) {
            return Err(EADDRINUSE);
        }
        new.sort_unstable();
        self.allowed = new;
        Ok(())
    }

    /// `iopt_reserve_iova`: reserving over a mapping or an allowed range is EADDRINUSE.
    pub(super) fn reserve(&mut self, range: IovaRange, owner: Owner) -> Result<(), Errno> {
        if self.area_hits(&range) || self.allowed_hits(&range) {
            return Err(EADDRINUSE);
        }
        self.reserved.push(Reserved { range, owner });
        Ok(())
    }

    /// `iopt_remove_reserved_iova`.
    pub(super) fn remove_reserved(&mut self, owner: Owner) {
        self.reserved.retain(|r| r.owner != owner);
    }

    /// `iopt_table_enforce_dev_resv_regions`: reserve all of a device's regions, or none.
    pub(super) fn reserve_all(&mut self, ranges: &[IovaRange], owner: Owner) -> Result<(), Errno> {
        for r in ranges {
            if let Err(e) = self.reserve(*r, owner) {
                self.remove_reserved(owner);
                return Err(e);
            }
        }
        Ok(())
    }

    /// `iopt_check_iova_alignment`: every area must suit a larger alignment.
    fn check_alignment(&self, align: u64) -> Result<(), Errno> {
        let mask = align - 1;
        for (&start, a) in &self.areas {
            let len = a.last.wrapping_sub(start).wrapping_add(1);
            if start & mask != 0 || len & mask != 0 || a.page_offset & mask != 0 {
                return Err(EADDRINUSE);
            }
        }
        Ok(())
    }

    /// `iopt_table_add_domain`: the alignment grows to the domain's page size, and the
    /// outside of its aperture becomes reserved.
    pub(super) fn add_domain(
        &mut self,
        hwpt: u32,
        aperture: IovaRange,
        page_size: u64,
        host_page: u64,
    ) -> Result<(), Errno> {
        let new_alignment = page_size.max(self.alignment);
        if new_alignment > host_page {
            return Err(EINVAL);
        }
        if new_alignment != self.alignment {
            self.check_alignment(new_alignment)?;
        }
        let owner = Owner::Domain(hwpt);
        let outside = [
            aperture
                .first_raw()
                .checked_sub(1)
                .and_then(|last| IovaRange::new(0, last)),
            aperture
                .last_raw()
                .checked_add(1)
                .and_then(|start| IovaRange::new(start, u64::MAX)),
        ];
        for r in outside.into_iter().flatten() {
            if let Err(e) = self.reserve(r, owner) {
                self.remove_reserved(owner);
                return Err(e);
            }
        }
        self.domains.push((hwpt, page_size));
        self.alignment = new_alignment;
        Ok(())
    }

    /// `iopt_table_remove_domain`: drop the aperture reservation, recompute alignment.
    pub(super) fn remove_domain(&mut self, hwpt: u32) {
        self.domains.retain(|&(id, _)| id != hwpt);
        self.remove_reserved(Owner::Domain(hwpt));
        // iopt_calculate_iova_alignment, without accesses or the huge-pages option.
        self.alignment = self.domains.iter().map(|&(_, p)| p).max().unwrap_or(1);
    }

    /// `iopt_check_iova`: alignment, overflow, reserved (EINVAL), existing map (EEXIST).
    fn check_iova(&self, iova: u64, length: u64) -> Result<(), Errno> {
        if iova & (self.alignment - 1) != 0 {
            return Err(EINVAL);
        }
        let last = iova.checked_add(length - 1).ok_or(EOVERFLOW)?;
        let range = IovaRange::new(iova, last).ok_or(EINVAL)?;
        if self.reserved_hits(&range) {
            return Err(EINVAL);
        }
        if self.area_hits(&range) {
            return Err(EEXIST);
        }
        Ok(())
    }

    /// `iopt_alloc_iova`: the lowest fit inside the allowed ranges (or anywhere from
    /// PAGE_SIZE to ULONG_MAX - PAGE_SIZE without them) that misses reserved ranges and
    /// areas, aligned to the smaller of the length's and the source's natural alignment
    /// and keeping the source's offset in its page. Never returns IOVA 0.
    fn alloc_iova(&self, source: u64, length: u64, host_page: u64) -> Result<u64, Errno> {
        if length == 0 || length >= u64::MAX / 2 {
            return Err(EOVERFLOW);
        }
        let by_length = length.next_power_of_two();
        let align = if source == 0 {
            by_length
        } else {
            by_length.min(1u64 << source.trailing_zeros())
        }
        // Capped at the THP size (CONFIG_TRANSPARENT_HUGEPAGE), as iopt_alloc_iova does.
        .min(HPAGE_SIZE);
        if align < self.alignment {
            return Err(EINVAL);
        }
        let page_offset = source % host_page;
        let bounds = IovaRange::new(host_page, u64::MAX - host_page).ok_or(ENOSPC)?;
        let spans: Vec<IovaRange> = if self.allowed.is_empty() {
            vec![bounds]
        } else {
            let mut allowed = self.allowed.clone();
            normalize(&mut allowed);
            allowed
                .iter()
                .filter_map(|a| a.intersection(&bounds))
                .collect()
        };
        let mut used = self.reserved_ranges();
        used.extend(self.mappings());
        normalize(&mut used);

        // The aligned start inside `r` if `length` bytes still fit
        // (`__alloc_iova_check_used` / `__alloc_iova_check_hole`).
        let fit = |r: &IovaRange| -> Option<IovaRange> {
            if r.last_raw() - r.first_raw() < length - 1 {
                return None;
            }
            let start = align_up(r.first_raw(), align)? | page_offset;
            if start > r.last_raw() || r.last_raw() - start < length - 1 {
                return None;
            }
            IovaRange::new(start, r.last_raw())
        };
        for span in &spans {
            let Some(span) = fit(span) else { continue };
            for hole in complement(span, &used) {
                if let Some(hole) = fit(&hole) {
                    return Ok(hole.first_raw());
                }
            }
        }
        Err(ENOSPC)
    }

    /// `iopt_alloc_area_pages` + `iopt_insert_area`: place a mapping of `length` bytes
    /// whose source address (user VA, or file offset) is `source`, at `iova` or at a
    /// chosen IOVA. The ioctl-level checks are the caller's.
    pub(super) fn map(
        &mut self,
        source: u64,
        length: u64,
        iova: Option<u64>,
        host_page: u64,
    ) -> Result<u64, Errno> {
        if length & (self.alignment - 1) != 0 || length == 0 {
            return Err(EINVAL);
        }
        let iova = match iova {
            None => self.alloc_iova(source, length, host_page)?,
            Some(iova) => {
                self.check_iova(iova, length)?;
                iova
            }
        };
        // iopt_insert_area: the source's offset in its page must suit the alignment.
        let page_offset = source % host_page;
        if page_offset & (self.alignment - 1) != 0 {
            return Err(EINVAL);
        }
        let last = iova.checked_add(length - 1).ok_or(EOVERFLOW)?;
        self.areas.insert(iova, Area { last, page_offset });
        Ok(iova)
    }

    /// `iopt_unmap_iova` / `iopt_unmap_iova_range`: remove whole areas inside
    /// `iova..iova+length`, lowest first. An area sticking out stops it with ENOENT (the
    /// areas before it stay unmapped, as in the kernel); nothing there is ENOENT too.
    pub(super) fn unmap(&mut self, iova: u64, length: u64) -> Result<u64, Errno> {
        if length == 0 {
            return Err(EINVAL);
        }
        let last = iova.checked_add(length - 1).ok_or(EOVERFLOW)?;
        let mut unmapped = 0u64;
        while let Some((start, area)) = self.first_area(iova, last) {
            if start < iova || area.last > last {
                return Err(ENOENT);
            }
            self.areas.remove(&start);
            unmapped += area.last - start + 1;
        }
        if unmapped == 0 {
            return Err(ENOENT);
        }
        Ok(unmapped)
    }

    /// `iopt_unmap_all`: succeeds with 0 on an empty table.
    pub(super) fn unmap_all(&mut self) -> u64 {
        let total = self
            .areas
            .iter()
            .map(|(&s, a)| a.last - s + 1)
            .fold(0u64, u64::saturating_add);
        self.areas.clear();
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    fn r(start: u64, last: u64) -> IovaRange {
        IovaRange::new(start, last).unwrap()
    }

    #[test]
    fn fixed_map_checks_in_kernel_order() {
        let mut t = IoPagetable::new();
        t.add_domain(1, r(0, (1 << 48) - 1), PAGE, PAGE).unwrap();
        assert_eq!(t.map(0, 0, Some(0), PAGE), Err(EINVAL), "zero length");
        assert_eq!(
            t.map(0, 100, Some(0), PAGE),
            Err(EINVAL),
            "length misaligned"
        );
        assert_eq!(
            t.map(0, PAGE, Some(100), PAGE),
            Err(EINVAL),
            "iova misaligned"
        );
        assert_eq!(
            t.map(0, PAGE, Some(1 << 48), PAGE),
            Err(EINVAL),
            "past the aperture"
        );
        assert_eq!(
            t.map(0, 2 * PAGE, Some(u64::MAX - PAGE + 1), PAGE),
            Err(EOVERFLOW)
        );
        assert_eq!(
            t.map(0x800, PAGE, Some(0), PAGE),
            Err(EINVAL),
            "source offset"
        );
        assert_eq!(t.map(0, PAGE, Some(0), PAGE), Ok(0));
        assert_eq!(t.map(0, PAGE, Some(0), PAGE), Err(EEXIST));
    }

    #[test]
    fn reserve_refuses_mapped_and_allowed() {
        let mut t = IoPagetable::new();
        t.map(0, PAGE, Some(0x10000), PAGE).unwrap();
        assert_eq!(
            t.reserve(r(0x10000, 0x10fff), Owner::Device(1)),
            Err(EADDRINUSE)
        );
        t.set_allowed(&[r(0x20000, 0x2ffff)]).unwrap();
        assert_eq!(
            t.reserve(r(0x2f000, 0x30fff), Owner::Device(1)),
            Err(EADDRINUSE)
        );
        t.reserve_all(
            &[r(0x40000, 0x40fff), r(0x2f000, 0x2ffff)],
            Owner::Device(1),
        )
        .unwrap_err();
        assert!(
            t.reserved.is_empty(),
            "a failed reserve_all leaves nothing behind"
        );
        t.reserve(r(0x40000, 0x40fff), Owner::Device(1)).unwrap();
        assert_eq!(t.set_allowed(&[r(0x3f000, 0x40000)]), Err(EADDRINUSE));
        assert_eq!(t.set_allowed(&[r(5, 5)]), Err(EINVAL));
        assert_eq!(t.set_allowed(&[r(0, 10), r(10, 20)]), Err(EINVAL));
    }

    #[test]
    fn auto_iova_is_aligned_and_avoids_everything() {
        let mut t = IoPagetable::new();
        t.reserve(r(PAGE * 4, PAGE * 104 - 1), Owner::Device(1))
            .unwrap();
        let mut got = Vec::new();
        for i in 1..=10u64 {
            let len = PAGE * i;
            let iova = t.map(0x20_0000, len, None, PAGE).unwrap();
            assert_ne!(iova, 0);
            assert_eq!(iova % (1 << len.trailing_zeros()), 0);
            let range = r(iova, iova + len - 1);
            assert!(!range.overlaps(&r(PAGE * 4, PAGE * 104 - 1)));
            assert!(got.iter().all(|g: &IovaRange| !g.overlaps(&range)));
            got.push(range);
        }
    }

    #[test]
    fn auto_iova_stays_in_allowed_or_fails_enospc() {
        let mut t = IoPagetable::new();
        t.set_allowed(&[r(PAGE * 200, PAGE * 600 - 1)]).unwrap();
        for i in 1..=10u64 {
            let len = PAGE * i;
            let iova = t.map(0x20_0000, len, None, PAGE).unwrap();
            assert!(r(PAGE * 200, PAGE * 600 - 1).contains_range(&r(iova, iova + len - 1)));
        }
        t.set_allowed(&[r(PAGE, 2 * PAGE - 1)]).unwrap();
        assert_eq!(t.map(0x20_0000, 2 * PAGE, None, PAGE), Err(ENOSPC));
    }

    #[test]
    fn unmap_whole_areas_only() {
        let mut t = IoPagetable::new();
        for i in 0..4u64 {
            t.map(0, 8 * PAGE, Some(0x100000 + i * 16 * PAGE), PAGE)
                .unwrap();
        }
        assert_eq!(t.unmap(0x100000 - 4 * PAGE, 8 * PAGE), Err(ENOENT));
        assert_eq!(t.unmap(0x100000, 0), Err(EINVAL));
        assert_eq!(
            t.unmap(0x100000 - 4 * PAGE, 3 * 16 * PAGE + 12 * PAGE),
            Ok(32 * PAGE)
        );
        assert_eq!(t.unmap(0x100000, PAGE), Err(ENOENT));
        assert_eq!(t.unmap_all(), 0);
    }

    #[test]
    fn domains_narrow_and_release() {
        let mut t = IoPagetable::new();
        t.add_domain(7, r(0, (1 << 48) - 1), PAGE, PAGE).unwrap();
        assert_eq!(t.iova_ranges(), vec![r(0, (1 << 48) - 1)]);
        assert_eq!(t.alignment(), PAGE);
        t.remove_domain(7);
        assert_eq!(t.iova_ranges(), vec![IovaRange::FULL]);
        assert_eq!(t.alignment(), 1);
        assert_eq!(
            t.add_domain(8, IovaRange::FULL, 2 * PAGE, PAGE),
            Err(EINVAL)
        );
        t.map(0x800, 0x800, Some(0x800), PAGE).unwrap();
        assert_eq!(
            t.add_domain(8, IovaRange::FULL, PAGE, PAGE),
            Err(EADDRINUSE)
        );
        t.unmap_all();
        t.set_allowed(&[r(1 << 48, (1 << 48) + 10)]).unwrap();
        assert_eq!(
            t.add_domain(8, r(0, (1 << 48) - 1), PAGE, PAGE),
            Err(EADDRINUSE)
        );
        assert!(t.reserved.is_empty());
    }
}
