//! The memory map planner over arbitrary fixed windows, reserved regions and allowed IOVA
//! ranges. A plan must hold exactly the RAM asked for, in page-aligned, sorted, disjoint
//! regions between the base and the limit, inside every device's IOVA ranges and clear of
//! every window and reserved region; an error is fine (the request may be impossible).

use passthrough::iova::{complement, normalize, IovaRange};
use passthrough::memory_map::{DeviceRanges, NamedRange};
use passthrough::{plan, MemoryMapRequest, ReservedKind, ReservedRegion};

use crate::Input;

const PAGE_SIZES: [u64; 3] = [4096, 16 * 1024, 64 * 1024];

/// A range with a start and a length each scaled by a shift from the input, so small and
/// huge values are both likely; `None` for an empty or overflowing one.
fn range(i: &mut Input) -> Option<IovaRange> {
    let shifts = i.u8();
    let start = i.u64() >> (shifts & 0x3f);
    let len = i.u64() >> ((shifts >> 2) & 0x3f | 8);
    IovaRange::from_start_len(start, len)
}

fn ranges(i: &mut Input, max: u8) -> Vec<IovaRange> {
    let n = i.u8() % max;
    (0..n).filter_map(|_| range(i)).collect()
}

/// Decodes a planner request.
pub fn request(data: &[u8]) -> MemoryMapRequest {
    let mut i = Input::new(data);
    let page_size = PAGE_SIZES[usize::from(i.u8()) % PAGE_SIZES.len()];
    let pages = 1 + u64::from(i.u32() % (1 << 22));
    let mut req = MemoryMapRequest::new((pages * 4096).next_multiple_of(page_size));
    req.page_size = page_size;
    req.base = i.u64() >> (i.u8() & 0x3f | 16);
    req.limit = u64::MAX >> (i.u8() % 32);
    req.fixed_windows = ranges(&mut i, 24)
        .into_iter()
        .map(|r| NamedRange::new(r, "window"))
        .collect();
    for d in 0..i.u8() % 4 {
        let reserved = ranges(&mut i, 16)
            .into_iter()
            .map(|range| ReservedRegion {
                range,
                kind: ReservedKind::Msi,
            })
            .collect();
        let allowed = ranges(&mut i, 8);
        req.devices.push(DeviceRanges {
            name: format!("dev{d}").into(),
            iova_ranges: (!allowed.is_empty()).then_some(allowed),
            reserved,
        });
    }
    req
}

/// The target.
pub fn run(data: &[u8]) {
    let req = request(data);
    let Ok(map) = plan(&req) else { return };
    let mut forbidden: Vec<IovaRange> = req.fixed_windows.iter().map(|w| w.range).collect();
    for d in &req.devices {
        forbidden.extend(d.reserved.iter().map(|r| r.range));
    }
    let mut total = 0u64;
    let mut prev_end = None;
    for r in &map.regions {
        assert!(r.size > 0, "empty region {r:?}");
        assert_eq!(r.gpa % req.page_size, 0, "{r:?} unaligned");
        assert_eq!(r.size % req.page_size, 0, "{r:?} unaligned");
        let range = r.range().expect("region past the address space");
        assert!(range.first_raw() >= req.base, "{r:?} below the base");
        assert!(range.last_raw() <= req.limit, "{r:?} above the limit");
        if let Some(end) = prev_end {
            assert!(
                u128::from(r.gpa) >= end,
                "{r:?} overlaps or precedes the one before"
            );
        }
        prev_end = Some(range.end_exclusive());
        for f in &forbidden {
            assert!(!range.overlaps(f), "{r:?} overlaps the excluded {f:?}");
        }
        for d in &req.devices {
            if let Some(allowed) = &d.iova_ranges {
                let mut allowed = allowed.clone();
                normalize(&mut allowed);
                assert!(
                    complement(range, &allowed).is_empty(),
                    "{r:?} is outside the IOVA ranges of {}",
                    d.name
                );
            }
        }
        total += r.size;
    }
    assert_eq!(total, req.ram_size, "RAM lost or added");
    assert_eq!(map.ram_size(), req.ram_size);
}
