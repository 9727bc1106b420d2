//! The guest memory map planner: where guest RAM goes so that, with GPA = IOVA, every
//! passed-through device can DMA to all of it.
//!
//! Inputs ([`MemoryMapRequest`]): the RAM size; the arch layout's fixed windows (MMIO
//! holes, interrupt controllers); per device, the IOVA ranges its IOAS reports and the
//! host's reserved regions (sysfs); the IOMMU page size; the lowest and highest usable
//! GPA. Output ([`MemoryMap`]): RAM regions that avoid all of it, the bytes that can be
//! backed by 1 GiB and 2 MiB pages, and the excluded ranges for display. Boot tables
//! (E820, device tree memory nodes) and KVM memslots are built from the regions; after
//! the RAM is mapped, [`guard_ram`] makes the kernel keep that IOVA usable.
//!
//! Algorithm (O(n log n) in the number of excluded ranges): sort and merge every
//! excluded range (fixed windows, reserved regions, the gaps between a device's IOVA
//! ranges, below the base, above the limit); the free intervals are the gaps, trimmed to
//! whole IOMMU pages. RAM is then placed lowest address first, because guests expect low
//! RAM, with this alignment policy:
//!
//! - A free interval that cannot hold all the remaining RAM is used from its first to its
//!   last 2 MiB boundary; the head and tail it skips (each under 2 MiB) and intervals
//!   holding no whole 2 MiB page cost a little address space, never RAM.
//! - The last region (the one that fits) starts at the interval's start, its next 2 MiB
//!   or its next 1 GiB boundary, whichever gives the most 1 GiB, then 2 MiB, coverage
//!   (lowest on ties). This costs no RAM either: only unused address space below it.
//! - If that policy cannot fit the RAM (the skipped pieces were needed), the plain
//!   lowest-first fill is used instead. Only if that fails too is the request impossible,
//!   and the error names the limit and the largest range in the way.
//!
//! The planner is a pure function: deterministic, no I/O.

use std::fmt;
use std::sync::Arc;

mod sweep;

use crate::iommufd::{IoasId, Iommufd};
use crate::iova::{Iova, IovaRange};
use crate::reserved_regions::{ReservedKind, ReservedRegion};
use sweep::{
    exclusions, free_spans, merge, pages_inside, place_aligned, place_plain, shortfall, Item,
    Source,
};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// 2 MiB, the x86/arm64 level-2 huge page.
pub const SIZE_2M: u64 = 2 * MIB;
/// 1 GiB, the level-1 huge page.
pub const SIZE_1G: u64 = 1 << 30;

/// Why a range is kept out of guest RAM.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Exclusion {
    /// A window of the arch layout.
    Fixed(Arc<str>),
    /// A host reserved region of a device's IOMMU group.
    Reserved {
        /// Its type.
        kind: ReservedKind,
        /// The device.
        device: Arc<str>,
    },
    /// Outside the IOVA ranges the device's IOAS reports.
    OutsideIovaRanges {
        /// The device.
        device: Arc<str>,
    },
    /// Below the requested RAM base.
    BelowBase,
    /// Above the guest's address limit.
    AboveLimit,
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::Fixed(name) => f.write_str(name),
            Exclusion::Reserved { kind, device } => write!(f, "{kind}, device {device}"),
            Exclusion::OutsideIovaRanges { device } => {
                write!(f, "outside the IOVA ranges of device {device}")
            }
            Exclusion::BelowBase => f.write_str("below the RAM base"),
            Exclusion::AboveLimit => f.write_str("above the guest address limit"),
        }
    }
}

/// A range kept out of guest RAM, and why.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExcludedRange {
    /// The GPA (= IOVA) range.
    pub range: IovaRange,
    /// Why.
    pub why: Exclusion,
}

/// A named fixed window of the arch layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedRange {
    /// The GPA range.
    pub range: IovaRange,
    /// What it is, e.g. "x86 32-bit MMIO hole".
    pub name: Arc<str>,
}

impl NamedRange {
    /// A window called `name`.
    pub fn new(range: IovaRange, name: impl Into<Arc<str>>) -> NamedRange {
        NamedRange {
            range,
            name: name.into(),
        }
    }
}

/// What constrains guest RAM for one device to be passed through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRanges {
    /// Name for messages, e.g. its PCI address.
    pub name: Arc<str>,
    /// The IOVA ranges of the IOAS with the device attached
    /// ([`Iommufd::iova_ranges`]); `None` if not known (e.g. planning from sysfs only).
    pub iova_ranges: Option<Vec<IovaRange>>,
    /// The host's reserved regions for the device ([`crate::Sysfs`]).
    pub reserved: Vec<ReservedRegion>,
}

/// Everything the planner needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryMapRequest {
    /// Bytes of guest RAM; a non-zero multiple of `page_size`.
    pub ram_size: u64,
    /// IOMMU page size (a power of two): regions start and end on it.
    pub page_size: u64,
    /// Lowest GPA RAM may use.
    pub base: u64,
    /// Highest GPA RAM may use (inclusive), e.g. from the guest's physical address bits.
    pub limit: u64,
    /// Arch layout windows RAM must avoid.
    pub fixed_windows: Vec<NamedRange>,
    /// The devices that will be attached.
    pub devices: Vec<DeviceRanges>,
}

impl MemoryMapRequest {
    /// `ram_size` bytes, 4 KiB pages, anywhere in the 64-bit space, no constraints yet.
    pub fn new(ram_size: u64) -> MemoryMapRequest {
        MemoryMapRequest {
            ram_size,
            page_size: 4 * KIB,
            base: 0,
            limit: u64::MAX,
            fixed_windows: Vec::new(),
            devices: Vec::new(),
        }
    }
}

/// One guest RAM region; GPA = IOVA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RamRegion {
    /// First guest physical address.
    pub gpa: u64,
    /// Bytes.
    pub size: u64,
}

impl RamRegion {
    /// The IOVA (= GPA) range; `None` only for an empty region, which plans never hold.
    pub fn range(&self) -> Option<IovaRange> {
        IovaRange::from_start_len(self.gpa, self.size)
    }

    /// The first IOVA.
    pub fn iova(&self) -> Iova {
        Iova(self.gpa)
    }
}

/// How much of the RAM can be backed by huge pages (naturally aligned, fully inside a
/// region).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Coverage {
    /// Bytes in 1 GiB pages.
    pub bytes_1g: u64,
    /// Bytes in 2 MiB pages (1 GiB pages included).
    pub bytes_2m: u64,
    /// All RAM bytes.
    pub total: u64,
}

impl Coverage {
    fn of(regions: &[RamRegion]) -> Coverage {
        let mut c = Coverage::default();
        for r in regions {
            let (s, n) = (r.gpa as u128, r.size as u128);
            c.bytes_1g += pages_inside(s, n, SIZE_1G) as u64;
            c.bytes_2m += pages_inside(s, n, SIZE_2M) as u64;
            c.total += r.size;
        }
        c
    }

    /// Percent of RAM in 1 GiB pages.
    pub fn percent_1g(&self) -> f64 {
        percent(self.bytes_1g, self.total)
    }

    /// Percent of RAM in 2 MiB pages.
    pub fn percent_2m(&self) -> f64 {
        percent(self.bytes_2m, self.total)
    }
}

fn percent(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 * 100.0 / total as f64
    }
}

/// A guest memory plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryMap {
    /// RAM regions, sorted, disjoint, each a multiple of `page_size`.
    pub regions: Vec<RamRegion>,
    /// Huge-page coverage.
    pub coverage: Coverage,
    /// The IOMMU page size planned with.
    pub page_size: u64,
    /// Excluded ranges below the end of RAM (what RAM was placed around), sorted by
    /// start; a range excluded for several reasons is listed once, with the first.
    pub excluded: Vec<ExcludedRange>,
}

impl MemoryMap {
    /// Total RAM bytes.
    pub fn ram_size(&self) -> u64 {
        self.coverage.total
    }

    /// The regions as IOVA ranges (what [`guard_ram`] allows).
    pub fn iova_ranges(&self) -> Vec<IovaRange> {
        self.regions.iter().filter_map(RamRegion::range).collect()
    }
}

/// Errors of [`plan`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryMapError {
    /// The IOMMU page size is not a power of two.
    #[error("IOMMU page size {0:#x} is not a power of two; use the IOAS's IOVA alignment")]
    BadPageSize(u64),
    /// The RAM size is zero or not a multiple of the page size.
    #[error(
        "guest RAM size {size:#x} is not a non-zero multiple of the IOMMU page size \
         {page_size:#x}; round it to whole pages"
    )]
    BadRamSize {
        /// Requested RAM.
        size: u64,
        /// Page size.
        page_size: u64,
    },
    /// The base is above the limit.
    #[error("the RAM base {base:#x} is above the address limit {limit:#x}")]
    BadWindow {
        /// Lowest GPA asked for.
        base: u64,
        /// Highest GPA asked for.
        limit: u64,
    },
    /// Not enough free space.
    #[error("{}", describe_shortfall(self))]
    NotEnoughSpace {
        /// Requested RAM bytes.
        requested: u64,
        /// Free bytes (whole pages) between base and limit.
        free: u128,
        /// The base.
        base: u64,
        /// What fills the space from the highest free address up to the limit, in
        /// address order (at most a few), if anything excluded reaches the limit.
        top: Vec<ExcludedRange>,
        /// The limit asked for.
        limit: u64,
        /// The largest excluded range inside the space, if any.
        blocker: Option<ExcludedRange>,
    },
}

fn describe_shortfall(e: &MemoryMapError) -> String {
    let MemoryMapError::NotEnoughSpace {
        requested,
        free,
        base,
        top,
        limit,
        blocker,
    } = e
    else {
        return String::new();
    };
    let mut s = format!(
        "cannot place {} of guest RAM: only {} is free",
        fmt_size(*requested as u128),
        fmt_size(*free)
    );
    match top.first() {
        Some(first) => {
            let end = first.range.first_raw().saturating_sub(1);
            let above: Vec<String> = top.iter().map(|t| t.why.to_string()).collect();
            s += &format!(
                " between {base:#x} and {end:#x} (above it: {})",
                above.join("; ")
            );
        }
        None => s += &format!(" between {base:#x} and {limit:#x}"),
    }
    if let Some(b) = blocker {
        s += &format!(
            "; the largest range in the way is {} ({}, {})",
            b.range,
            b.why,
            fmt_size(b.range.size())
        );
    }
    s + "; give the guest less RAM, raise the address limit, or pass through fewer devices"
}

/// `bytes` as a short human size: "3 GiB", "3.9 GiB", "512 MiB".
pub fn fmt_size(bytes: u128) -> String {
    const UNITS: [(u128, &str); 5] = [
        (1 << 50, "PiB"),
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (unit, name) in UNITS {
        if bytes >= unit {
            if bytes % unit == 0 {
                return format!("{} {name}", bytes / unit);
            }
            return format!("{:.1} {name}", bytes as f64 / unit as f64);
        }
    }
    format!("{bytes} B")
}

/// Plans guest RAM for `req`; see the module docs for the policy.
pub fn plan(req: &MemoryMapRequest) -> Result<MemoryMap, MemoryMapError> {
    let page = req.page_size;
    if !page.is_power_of_two() {
        return Err(MemoryMapError::BadPageSize(page));
    }
    if req.ram_size == 0 || req.ram_size % page != 0 {
        return Err(MemoryMapError::BadRamSize {
            size: req.ram_size,
            page_size: page,
        });
    }
    if req.base > req.limit {
        return Err(MemoryMapError::BadWindow {
            base: req.base,
            limit: req.limit,
        });
    }
    let sorted = exclusions(req);
    let blocked = merge(&sorted);
    let free = free_spans(&blocked, req.base, req.limit, page);
    let regions =
        match place_aligned(&free, req.ram_size).or_else(|| place_plain(&free, req.ram_size)) {
            Some(r) => r,
            None => return Err(shortfall(req, &sorted, &blocked, &free)),
        };
    let ram_end = regions
        .last()
        .map(|r| r.gpa as u128 + r.size as u128)
        .unwrap_or(0);
    let excluded = sorted
        .iter()
        .filter(|e| !matches!(e.src, Source::BelowBase | Source::AboveLimit))
        .take_while(|e| e.start() < ram_end)
        .filter(|e| e.range.last_raw() >= req.base)
        // One line per range: the IOAS's ranges usually exclude a reserved region too.
        .fold(Vec::<Item>::new(), |mut v, e| {
            if v.last().map(|l| l.range) != Some(e.range) {
                v.push(*e);
            }
            v
        })
        .iter()
        .map(|e| e.resolve(req))
        .collect();
    Ok(MemoryMap {
        coverage: Coverage::of(&regions),
        regions,
        page_size: page,
        excluded,
    })
}

/// Allows exactly the planned RAM IOVA in `ioas` (`IOMMU_IOAS_ALLOW_IOVAS`), so that no
/// later attach can reserve any of it (`EADDRINUSE` instead). Replaces the allowed list.
pub fn guard_ram<I: Iommufd + ?Sized>(
    iommufd: &mut I,
    ioas: IoasId,
    map: &MemoryMap,
) -> crate::iommufd::Result<()> {
    iommufd.allow_iovas(ioas, &map.iova_ranges())
}

/// Most excluded ranges a [`MemoryMap`] prints.
const SHOWN_EXCLUDED: usize = 24;

impl fmt::Display for MemoryMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.regions.len();
        writeln!(
            f,
            "guest RAM: {} in {n} region{} (GPA = IOVA, IOMMU page {})",
            fmt_size(self.coverage.total as u128),
            if n == 1 { "" } else { "s" },
            fmt_size(self.page_size as u128),
        )?;
        writeln!(
            f,
            "  {:<4} {:<20} {:<20} size",
            "#", "first GPA", "last GPA"
        )?;
        for (i, r) in self.regions.iter().enumerate() {
            let last = r.gpa + (r.size - 1);
            writeln!(
                f,
                "  {i:<4} {:#018x}   {last:#018x}   {}",
                r.gpa,
                fmt_size(r.size as u128)
            )?;
        }
        if !self.excluded.is_empty() {
            writeln!(f, "kept out of guest RAM:")?;
            for e in self.excluded.iter().take(SHOWN_EXCLUDED) {
                writeln!(
                    f,
                    "  {:<4} {:#018x}   {:#018x}   {}",
                    "",
                    e.range.first_raw(),
                    e.range.last_raw(),
                    e.why
                )?;
            }
            if self.excluded.len() > SHOWN_EXCLUDED {
                writeln!(
                    f,
                    "       ... and {} more",
                    self.excluded.len() - SHOWN_EXCLUDED
                )?;
            }
        }
        write!(
            f,
            "coverage: {} ({:.1}%) in 1 GiB pages, {} ({:.1}%) in 2 MiB pages",
            fmt_size(self.coverage.bytes_1g as u128),
            self.coverage.percent_1g(),
            fmt_size(self.coverage.bytes_2m as u128),
            self.coverage.percent_2m(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = SIZE_1G;

    fn r(start: u64, last: u64) -> IovaRange {
        IovaRange::new(start, last).unwrap()
    }

    fn x86_device() -> DeviceRanges {
        DeviceRanges {
            name: "0000:00:03.0".into(),
            iova_ranges: Some(vec![r(0, 0xfedf_ffff), r(0xfef0_0000, (1 << 48) - 1)]),
            reserved: vec![ReservedRegion {
                range: r(0xfee0_0000, 0xfeef_ffff),
                kind: ReservedKind::Msi,
            }],
        }
    }

    fn x86_request(ram: u64) -> MemoryMapRequest {
        let mut req = MemoryMapRequest::new(ram);
        req.fixed_windows.push(NamedRange::new(
            r(3 * GIB, 4 * GIB - 1),
            "x86 32-bit MMIO hole",
        ));
        req.devices.push(x86_device());
        req.limit = (1 << 46) - 1;
        req
    }

    #[test]
    fn x86_guest_splits_around_the_mmio_hole() {
        let map = plan(&x86_request(8 * GIB)).unwrap();
        assert_eq!(
            map.regions,
            vec![
                RamRegion {
                    gpa: 0,
                    size: 3 * GIB
                },
                RamRegion {
                    gpa: 4 * GIB,
                    size: 5 * GIB
                },
            ]
        );
        assert_eq!(map.coverage.bytes_1g, 8 * GIB);
        assert_eq!(map.coverage.bytes_2m, 8 * GIB);
        let text = map.to_string();
        assert!(text.contains("guest RAM: 8 GiB in 2 regions"), "{text}");
        assert!(text.contains("x86 32-bit MMIO hole"), "{text}");
        assert!(text.contains("msi, device 0000:00:03.0"), "{text}");
        assert!(
            text.contains("coverage: 8 GiB (100.0%) in 1 GiB pages"),
            "{text}"
        );
    }

    #[test]
    fn arm_guest_starts_above_the_msi_window() {
        let mut req = MemoryMapRequest::new(2 * GIB);
        req.base = GIB;
        req.devices.push(DeviceRanges {
            name: "0000:00:02.0".into(),
            iova_ranges: None,
            reserved: vec![ReservedRegion {
                range: r(0x0800_0000, 0x080f_ffff),
                kind: ReservedKind::Msi,
            }],
        });
        let map = plan(&req).unwrap();
        assert_eq!(
            map.regions,
            vec![RamRegion {
                gpa: GIB,
                size: 2 * GIB
            }]
        );
        assert!(map.excluded.is_empty(), "the MSI window is below the base");
    }

    #[test]
    fn reserved_region_inside_ram_is_avoided_with_2m_trims() {
        let mut req = MemoryMapRequest::new(4 * GIB);
        req.devices.push(DeviceRanges {
            name: "dev".into(),
            iova_ranges: None,
            reserved: vec![ReservedRegion {
                range: r(0x4010_0000, 0x401f_ffff),
                kind: ReservedKind::Reserved,
            }],
        });
        let map = plan(&req).unwrap();
        assert_eq!(
            map.regions[0],
            RamRegion {
                gpa: 0,
                size: 0x4000_0000
            }
        );
        assert_eq!(map.regions[1].gpa % SIZE_2M, 0);
        assert!(map.regions[1].gpa >= 0x4020_0000);
        assert_eq!(map.regions.iter().map(|r| r.size).sum::<u64>(), 4 * GIB);
        // The last region moved to a 1 GiB boundary: all but the trimmed piece is 1G.
        assert!(map.coverage.bytes_1g >= 3 * GIB, "{map}");
    }

    #[test]
    fn falls_back_to_plain_fill_when_fragments_are_needed() {
        // Free: [0, 1M) and [1M+4K, 3M+4K): exactly 3 MiB, none of it 2M-trimmable.
        let mut req = MemoryMapRequest::new(3 * MIB);
        req.limit = 3 * MIB + 0x1000 - 1;
        req.fixed_windows
            .push(NamedRange::new(r(MIB, MIB + 0xfff), "hole"));
        let map = plan(&req).unwrap();
        assert_eq!(
            map.regions,
            vec![
                RamRegion { gpa: 0, size: MIB },
                RamRegion {
                    gpa: MIB + 0x1000,
                    size: 2 * MIB
                },
            ]
        );
        assert_eq!(map.coverage.bytes_2m, 0);
    }

    #[test]
    fn impossible_request_names_the_limit_and_the_blocker() {
        let mut req = x86_request(64 * GIB);
        req.devices[0].iova_ranges = Some(vec![r(0, 0xfedf_ffff), r(0xfef0_0000, 0xffff_ffff)]);
        let err = plan(&req).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("cannot place 64 GiB of guest RAM: only 3 GiB is free"),
            "{text}"
        );
        assert!(
            text.contains("between 0x0 and 0xbfffffff (above it: x86 32-bit MMIO hole; msi"),
            "{text}"
        );
        assert!(text.contains("x86 32-bit MMIO hole"), "{text}");
        assert!(
            text.contains("outside the IOVA ranges of device 0000:00:03.0"),
            "{text}"
        );

        let mut req = MemoryMapRequest::new(8 * GIB);
        req.limit = 4 * GIB - 1;
        req.fixed_windows
            .push(NamedRange::new(r(GIB, 2 * GIB - 1), "window"));
        let text = plan(&req).unwrap_err().to_string();
        assert!(
            text.contains("only 3 GiB is free between 0x0 and 0xffffffff;"),
            "{text}"
        );
        assert!(
            text.contains("largest range in the way is 0x40000000-0x7fffffff (window, 1 GiB)"),
            "{text}"
        );
    }

    #[test]
    fn bad_requests() {
        let mut req = MemoryMapRequest::new(GIB);
        req.page_size = 3;
        assert_eq!(plan(&req), Err(MemoryMapError::BadPageSize(3)));
        let req = MemoryMapRequest::new(GIB + 1);
        assert!(matches!(plan(&req), Err(MemoryMapError::BadRamSize { .. })));
        let req = MemoryMapRequest::new(0);
        assert!(matches!(plan(&req), Err(MemoryMapError::BadRamSize { .. })));
        let mut req = MemoryMapRequest::new(GIB);
        req.base = 10;
        req.limit = 5;
        assert!(matches!(plan(&req), Err(MemoryMapError::BadWindow { .. })));
    }

    #[test]
    fn top_of_the_address_space() {
        let mut req = MemoryMapRequest::new(2 * MIB);
        req.base = u64::MAX - 2 * MIB + 1;
        let map = plan(&req).unwrap();
        assert_eq!(
            map.regions,
            vec![RamRegion {
                gpa: req.base,
                size: 2 * MIB
            }]
        );
        assert_eq!(map.regions[0].range().unwrap().last_raw(), u64::MAX);
    }

    #[test]
    fn sizes_print_short() {
        assert_eq!(fmt_size(3 * GIB as u128), "3 GiB");
        assert_eq!(fmt_size(4187593113), "3.9 GiB");
        assert_eq!(fmt_size(512 * MIB as u128), "512 MiB");
        assert_eq!(fmt_size(100), "100 B");
        assert_eq!(fmt_size(1u128 << 64), "16384 PiB");
    }

    #[test]
    fn guard_ram_allows_exactly_the_ram() {
        use crate::{DeviceHandle, ModelDevice, ModelIommufd};
        let mut m = ModelIommufd::new();
        let ioas = m.alloc_ioas().unwrap();
        let map = plan(&x86_request(8 * GIB)).unwrap();
        guard_ram(&mut m, ioas, &map).unwrap();
        assert_eq!(m.allowed(ioas), map.iova_ranges());
        // A device whose MSI window would fall inside RAM can no longer attach.
        let mut bad = ModelDevice::x86_vtd();
        bad.reserved = vec![r(0x1000_0000, 0x100f_ffff)];
        let dev = m.bind_device(DeviceHandle::Model(bad)).unwrap();
        assert_eq!(
            m.attach_device(dev, ioas.into()).unwrap_err().errno(),
            libc::EADDRINUSE
        );
        let ok = m
            .bind_device(DeviceHandle::Model(ModelDevice::x86_vtd()))
            .unwrap();
        m.attach_device(ok, ioas.into()).unwrap();
    }
}
