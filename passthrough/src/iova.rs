//! Address newtypes: [`Iova`] (an address a device's DMA uses, translated by the IOMMU),
//! [`HostVirtAddr`] (a pointer in this process) and [`IovaRange`], an interval of IOVA with
//! an inclusive last address, as the kernel's `struct iommu_iova_range` has it.
//!
//! With passthrough the guest physical address of RAM *is* its IOVA, so the memory map
//! planner speaks in these types too. Nothing here talks to the kernel.

use std::fmt;

/// An I/O virtual address: what a passed-through device puts on the bus for DMA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Iova(pub u64);

impl Iova {
    /// The raw address.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// `self + offset`, or `None` past `u64::MAX`.
    pub fn checked_add(self, offset: u64) -> Option<Iova> {
        self.0.checked_add(offset).map(Iova)
    }

    /// True if the address is a multiple of `align` (a power of two).
    pub fn is_aligned(self, align: u64) -> bool {
        align == 0 || self.0 & align.wrapping_sub(1) == 0
    }
}

impl fmt::Display for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::LowerHex for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

/// A virtual address in this process (the source of an `IOMMU_IOAS_MAP`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostVirtAddr(pub u64);

impl HostVirtAddr {
    /// The address of the first byte of `buf`.
    pub fn of(buf: &[u8]) -> HostVirtAddr {
        HostVirtAddr(buf.as_ptr() as u64)
    }

    /// The raw address.
    pub const fn raw(self) -> u64 {
        self.0
    }
}

impl fmt::Display for HostVirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A non-empty interval of IOVA, `start..=last`.
///
/// Invariant: `start <= last`. The whole 64-bit space is representable
/// (`0..=u64::MAX`), which is why the last address is inclusive and [`IovaRange::size`]
/// returns a `u128`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IovaRange {
    start: u64,
    last: u64,
}

impl IovaRange {
    /// The whole IOVA space, `0..=u64::MAX` (what a fresh IOAS reports).
    pub const FULL: IovaRange = IovaRange {
        start: 0,
        last: u64::MAX,
    };

    /// `start..=last`, or `None` if `start > last`.
    pub const fn new(start: u64, last: u64) -> Option<IovaRange> {
        if start <= last {
            Some(IovaRange { start, last })
        } else {
            None
        }
    }

    /// `start..start+len`, or `None` if `len` is 0 or the range passes `u64::MAX`.
    pub fn from_start_len(start: u64, len: u64) -> Option<IovaRange> {
        let last = start.checked_add(len.checked_sub(1)?)?;
        Some(IovaRange { start, last })
    }

    /// First address.
    pub const fn start(&self) -> Iova {
        Iova(self.start)
    }

    /// Last address (inclusive).
    pub const fn last(&self) -> Iova {
        Iova(self.last)
    }

    /// First address, raw.
    pub const fn first_raw(&self) -> u64 {
        self.start
    }

    /// Last address (inclusive), raw.
    pub const fn last_raw(&self) -> u64 {
        self.last
    }

    /// One past the last address; `2^64` for a range ending at `u64::MAX`.
    pub const fn end_exclusive(&self) -> u128 {
        self.last as u128 + 1
    }

    /// Number of bytes covered (up to `2^64`).
    pub const fn size(&self) -> u128 {
        (self.last - self.start) as u128 + 1
    }

    /// True if `iova` lies in the range.
    pub const fn contains(&self, iova: Iova) -> bool {
        self.start <= iova.0 && iova.0 <= self.last
    }

    /// True if `other` lies wholly inside `self`.
    pub const fn contains_range(&self, other: &IovaRange) -> bool {
        self.start <= other.start && other.last <= self.last
    }

    /// True if the two ranges share at least one address.
    pub const fn overlaps(&self, other: &IovaRange) -> bool {
        self.start <= other.last && other.start <= self.last
    }

    /// The common part of the two ranges, if any.
    pub fn intersection(&self, other: &IovaRange) -> Option<IovaRange> {
        IovaRange::new(self.start.max(other.start), self.last.min(other.last))
    }
}

impl fmt::Display for IovaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}-{:#x}", self.start, self.last)
    }
}

/// Sorts `ranges` and merges overlapping or touching ones, in place.
pub fn normalize(ranges: &mut Vec<IovaRange>) {
    ranges.sort_unstable();
    let mut out: Vec<IovaRange> = Vec::with_capacity(ranges.len());
    for r in ranges.drain(..) {
        match out.last_mut() {
            Some(prev) if r.start as u128 <= prev.end_exclusive() => {
                prev.last = prev.last.max(r.last);
            }
            _ => out.push(r),
        }
    }
    *ranges = out;
}

/// The parts of `within` that no range in `holes` covers. `holes` must be normalized
/// (sorted, merged; see [`normalize`]).
pub fn complement(within: IovaRange, holes: &[IovaRange]) -> Vec<IovaRange> {
    let mut out = Vec::new();
    let mut cursor = within.start as u128;
    for h in holes {
        if h.last < within.start || h.start > within.last {
            continue;
        }
        if (h.start as u128) > cursor {
            // `cursor < h.start <= u64::MAX`, so both ends fit in u64.
            out.extend(IovaRange::new(cursor as u64, h.start - 1));
        }
        cursor = cursor.max(h.end_exclusive());
    }
    if cursor <= within.last as u128 {
        out.extend(IovaRange::new(cursor as u64, within.last));
    }
    out
}

/// Rounds `x` up to a multiple of `align` (a power of two); `None` on overflow.
pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    let mask = align.checked_sub(1)?;
    Some(x.checked_add(mask)? & !mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, last: u64) -> IovaRange {
        IovaRange::new(start, last).unwrap()
    }

    #[test]
    fn new_rejects_inverted() {
        assert!(IovaRange::new(2, 1).is_none());
        assert_eq!(r(1, 1).size(), 1);
        assert_eq!(IovaRange::FULL.size(), 1u128 << 64);
    }

    #[test]
    fn from_start_len_edges() {
        assert_eq!(
            IovaRange::from_start_len(0x1000, 0x1000),
            Some(r(0x1000, 0x1fff))
        );
        assert_eq!(IovaRange::from_start_len(0, 0), None);
        assert_eq!(IovaRange::from_start_len(u64::MAX, 2), None);
        assert_eq!(
            IovaRange::from_start_len(u64::MAX, 1),
            Some(r(u64::MAX, u64::MAX))
        );
    }

    #[test]
    fn overlap_and_intersection() {
        let a = r(0x1000, 0x1fff);
        let b = r(0x1fff, 0x2fff);
        let c = r(0x2000, 0x2fff);
        assert!(a.overlaps(&b));
        assert!(!a.overlaps(&c));
        assert_eq!(a.intersection(&b), Some(r(0x1fff, 0x1fff)));
        assert_eq!(a.intersection(&c), None);
        assert!(r(0, 10).contains_range(&r(3, 4)));
        assert!(a.contains(Iova(0x1800)));
    }

    #[test]
    fn normalize_merges_touching_and_overlapping() {
        let mut v = vec![r(10, 20), r(0, 4), r(5, 9), r(15, 30), r(40, 50)];
        normalize(&mut v);
        assert_eq!(v, vec![r(0, 30), r(40, 50)]);
        let mut w = vec![r(0, u64::MAX), r(5, 6)];
        normalize(&mut w);
        assert_eq!(w, vec![IovaRange::FULL]);
    }

    #[test]
    fn complement_of_holes() {
        let holes = vec![r(0, 0xfff), r(0xfee0_0000, 0xfeef_ffff)];
        assert_eq!(
            complement(IovaRange::FULL, &holes),
            vec![r(0x1000, 0xfedf_ffff), r(0xfef0_0000, u64::MAX)]
        );
        assert_eq!(complement(r(0, 0xfff), &holes), vec![]);
        assert_eq!(complement(IovaRange::FULL, &[]), vec![IovaRange::FULL]);
        assert_eq!(complement(IovaRange::FULL, &[IovaRange::FULL]), vec![]);
    }

    #[test]
    fn alignment_helpers() {
        assert_eq!(align_up(0x1001, 0x1000), Some(0x2000));
        assert_eq!(align_up(u64::MAX, 0x1000), None);
        assert!(Iova(0x2000).is_aligned(0x1000));
        assert!(!Iova(0x2001).is_aligned(2));
        assert_eq!(Iova(0x10).to_string(), "0x10");
        assert_eq!(r(0x10, 0x1f).to_string(), "0x10-0x1f");
    }
}
