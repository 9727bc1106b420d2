//! Property tests of the memory map planner: it never overlaps an excluded range, never
//! loses requested RAM, is deterministic (also under reordered input), and only refuses
//! a request when the free space really is too small.

use proptest::prelude::*;

use passthrough::iova::IovaRange;
use passthrough::memory_map::{DeviceRanges, MemoryMapError, NamedRange};
use passthrough::{plan, MemoryMapRequest, ReservedKind, ReservedRegion};

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn range_strategy() -> impl Strategy<Value = IovaRange> {
    // Starts anywhere in 16 GiB, lengths from one byte to 1 GiB, deliberately unaligned.
    (0..16 * GIB, 1..=GIB).prop_map(|(start, len)| IovaRange::from_start_len(start, len).unwrap())
}

fn request_strategy() -> impl Strategy<Value = MemoryMapRequest> {
    (
        1u64..=(4 * GIB / PAGE),
        prop::sample::select(vec![PAGE, 16 * 1024, 64 * 1024]),
        0..2 * GIB,
        4 * GIB..64 * GIB,
        prop::collection::vec(range_strategy(), 0..40),
        prop::collection::vec(range_strategy(), 0..20),
        prop::option::of(prop::collection::vec(range_strategy(), 1..6)),
    )
        .prop_map(
            |(pages, page_size, base, limit, windows, reserved, allowed)| {
                let mut req = MemoryMapRequest::new((pages * PAGE).next_multiple_of(page_size));
                req.page_size = page_size;
                req.base = base;
                req.limit = limit;
                req.fixed_windows = windows
                    .into_iter()
                    .map(|r| NamedRange::new(r, "window"))
                    .collect();
                req.devices.push(DeviceRanges {
                    name: "dev".into(),
                    iova_ranges: allowed,
                    reserved: reserved
                        .into_iter()
                        .map(|range| ReservedRegion {
                            range,
                            kind: ReservedKind::Msi,
                        })
                        .collect(),
                });
                req
            },
        )
}

/// Every range the plan must avoid, straight from the request.
fn forbidden(req: &MemoryMapRequest) -> Vec<IovaRange> {
    let mut v: Vec<IovaRange> = req.fixed_windows.iter().map(|w| w.range).collect();
    for d in &req.devices {
        v.extend(d.reserved.iter().map(|r| r.range));
        if let Some(allowed) = &d.iova_ranges {
            let mut a = allowed.clone();
            passthrough::iova::normalize(&mut a);
            v.extend(passthrough::iova::complement(IovaRange::FULL, &a));
        }
    }
    v.extend(req.base.checked_sub(1).and_then(|l| IovaRange::new(0, l)));
    v.extend(
        req.limit
            .checked_add(1)
            .and_then(|s| IovaRange::new(s, u64::MAX)),
    );
    v
}

/// Reference count of free whole pages: a per-page-boundary sweep independent of the
/// planner's merge.
fn free_bytes(req: &MemoryMapRequest) -> u128 {
    let mut cuts: Vec<(u128, u128)> = forbidden(req)
        .iter()
        .map(|r| (r.first_raw() as u128, r.end_exclusive()))
        .collect();
    cuts.sort_unstable();
    let p = req.page_size as u128;
    let mut free = 0u128;
    let mut cursor = 0u128;
    for (s, e) in cuts.into_iter().chain([(1u128 << 64, 1u128 << 64)]) {
        if s > cursor {
            let (a, b) = (cursor.div_ceil(p) * p, s / p * p);
            free += b.saturating_sub(a);
        }
        cursor = cursor.max(e);
    }
    free
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn plans_are_sound(req in request_strategy()) {
        match plan(&req) {
            Ok(map) => {
                let total: u64 = map.regions.iter().map(|r| r.size).sum();
                prop_assert_eq!(total, req.ram_size, "RAM lost or invented");
                prop_assert_eq!(map.coverage.total, req.ram_size);
                let bad = forbidden(&req);
                let mut prev_end = 0u128;
                for (i, r) in map.regions.iter().enumerate() {
                    let range = r.range().expect("non-empty region");
                    prop_assert!(r.gpa % req.page_size == 0 && r.size % req.page_size == 0);
                    prop_assert!(i == 0 || range.first_raw() as u128 >= prev_end, "unsorted/overlap");
                    prev_end = range.end_exclusive();
                    for f in &bad {
                        prop_assert!(!f.overlaps(&range), "region {} overlaps excluded {}", range, f);
                    }
                }
                prop_assert!(map.coverage.bytes_1g <= map.coverage.bytes_2m);
                prop_assert!(map.coverage.bytes_2m <= map.coverage.total);
            }
            Err(MemoryMapError::NotEnoughSpace { free, .. }) => {
                prop_assert_eq!(free, free_bytes(&req));
                prop_assert!(free < req.ram_size as u128, "refused although {} free", free);
            }
            Err(e) => prop_assert!(false, "unexpected error {}", e),
        }
    }

    #[test]
    fn plans_are_deterministic(req in request_strategy(), seed in any::<u64>()) {
        let a = plan(&req);
        let b = plan(&req);
        prop_assert_eq!(&a, &b);
        // Reordering the inputs changes nothing but the order labels are listed in.
        let mut shuffled = req.clone();
        let n = shuffled.fixed_windows.len();
        if n > 1 {
            let k = (seed % n as u64) as usize;
            shuffled.fixed_windows.rotate_left(k);
            shuffled.fixed_windows.reverse();
        }
        let c = plan(&shuffled);
        match (a, c) {
            (Ok(a), Ok(c)) => {
                prop_assert_eq!(a.regions, c.regions);
                prop_assert_eq!(a.coverage, c.coverage);
            }
            (Err(_), Err(_)) => {}
            (a, c) => prop_assert!(false, "{:?} vs {:?}", a.is_ok(), c.is_ok()),
        }
    }
}

#[test]
fn aligned_ram_in_open_space_is_all_huge_pages() {
    let mut req = MemoryMapRequest::new(16 * GIB);
    req.fixed_windows.push(NamedRange::new(
        IovaRange::new(GIB + 4 * MIB, GIB + 8 * MIB - 1).unwrap(),
        "w",
    ));
    let map = plan(&req).unwrap();
    // [0, 1G+4M), then the rest right after the window: starting at 2 GiB instead would
    // give no more 1 GiB pages, so the lower start wins.
    assert_eq!(map.regions[0].gpa, 0);
    assert_eq!(map.regions[1].gpa, GIB + 8 * MIB);
    assert_eq!(map.coverage.bytes_2m, 16 * GIB);
    assert_eq!(map.coverage.bytes_1g, 15 * GIB);
}
