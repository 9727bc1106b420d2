//! The planner's sweep: every excluded range as a compact item, sorted and merged into
//! blocked spans; the free spans between them; RAM placed into those by the policy in
//! the parent module's docs; and the explanation when it does not fit.

use super::{
    ExcludedRange, Exclusion, MemoryMapError, MemoryMapRequest, RamRegion, SIZE_1G, SIZE_2M,
};
use crate::iova::IovaRange;

/// Bytes of naturally aligned `page`-sized pages (a power of two) inside
/// `start..start+len`.
pub(super) fn pages_inside(start: u128, len: u128, page: u64) -> u128 {
    round_down(start + len, page).saturating_sub(round_up(start, page))
}

/// A free interval `[start, end)`, page aligned (u128 so `end` may be 2^64).
pub(super) type Span = (u128, u128);

// Alignments are powers of two (checked in `plan`), so rounding is masking: u128
// division is a slow library call, and the sweep does it for every free span.
pub(super) fn round_up(x: u128, a: u64) -> u128 {
    let mask = a as u128 - 1;
    (x + mask) & !mask
}

pub(super) fn round_down(x: u128, a: u64) -> u128 {
    x & !(a as u128 - 1)
}

/// Where an excluded range comes from: indices into the request, so planning copies
/// no labels (they are built only for the result and for errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Source {
    Fixed(u32),
    Reserved(u32, u32),
    Outside(u32),
    BelowBase,
    AboveLimit,
}

/// An excluded range and its source; ordered by range, then source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Item {
    pub(super) range: IovaRange,
    pub(super) src: Source,
}

impl Item {
    pub(super) fn start(&self) -> u128 {
        self.range.first_raw() as u128
    }

    fn end(&self) -> u128 {
        self.range.end_exclusive()
    }

    pub(super) fn resolve(&self, req: &MemoryMapRequest) -> ExcludedRange {
        let device = |d: u32| req.devices[d as usize].name.clone();
        let why = match self.src {
            Source::Fixed(i) => Exclusion::Fixed(req.fixed_windows[i as usize].name.clone()),
            Source::Reserved(d, i) => Exclusion::Reserved {
                kind: req.devices[d as usize].reserved[i as usize].kind,
                device: device(d),
            },
            Source::Outside(d) => Exclusion::OutsideIovaRanges { device: device(d) },
            Source::BelowBase => Exclusion::BelowBase,
            Source::AboveLimit => Exclusion::AboveLimit,
        };
        ExcludedRange {
            range: self.range,
            why,
        }
    }
}

/// Every excluded range of the request, sorted by start (ties in request order).
pub(super) fn exclusions(req: &MemoryMapRequest) -> Vec<Item> {
    let reserved: usize = req.devices.iter().map(|d| d.reserved.len() + 2).sum();
    let mut v: Vec<Item> = Vec::with_capacity(req.fixed_windows.len() + reserved + 2);
    // Indices fit in u32: more than 4 billion windows would not fit in memory anyway.
    v.extend(req.fixed_windows.iter().zip(0u32..).map(|(w, i)| Item {
        range: w.range,
        src: Source::Fixed(i),
    }));
    for (dev, d) in req.devices.iter().zip(0u32..) {
        v.extend(dev.reserved.iter().zip(0u32..).map(|(r, i)| Item {
            range: r.range,
            src: Source::Reserved(d, i),
        }));
        if let Some(allowed) = &dev.iova_ranges {
            let mut allowed = allowed.clone();
            crate::iova::normalize(&mut allowed);
            v.extend(
                crate::iova::complement(IovaRange::FULL, &allowed)
                    .into_iter()
                    .map(|range| Item {
                        range,
                        src: Source::Outside(d),
                    }),
            );
        }
    }
    v.extend(
        req.base
            .checked_sub(1)
            .and_then(|l| IovaRange::new(0, l))
            .map(|range| Item {
                range,
                src: Source::BelowBase,
            }),
    );
    v.extend(
        req.limit
            .checked_add(1)
            .and_then(|s| IovaRange::new(s, u64::MAX))
            .map(|range| Item {
                range,
                src: Source::AboveLimit,
            }),
    );
    // Sort by start, ties by position: sorting packed u128 keys is several times faster
    // than sorting the items (one integer compare, 16-byte moves), and the order is
    // still a total one, so plans stay deterministic.
    let mut keys: Vec<u128> = v
        .iter()
        .zip(0u128..)
        .map(|(item, i)| (item.range.first_raw() as u128) << 64 | i)
        .collect();
    keys.sort_unstable();
    keys.iter().map(|k| v[(*k as u64) as usize]).collect()
}

/// Merges sorted excluded ranges into disjoint `[start, end)` spans.
pub(super) fn merge(sorted: &[Item]) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::with_capacity(sorted.len());
    for e in sorted {
        let (s, end) = (e.start(), e.end());
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(end),
            _ => out.push((s, end)),
        }
    }
    out
}

/// The gaps between `blocked` spans inside `[base, limit]`, trimmed to whole pages.
pub(super) fn free_spans(blocked: &[Span], base: u64, limit: u64, page: u64) -> Vec<Span> {
    let mut out = Vec::new();
    let mut cursor = base as u128;
    let top = limit as u128 + 1;
    let mut push = |s: u128, e: u128| {
        let (s, e) = (round_up(s, page), round_down(e, page));
        if e > s {
            out.push((s, e));
        }
    };
    for &(s, e) in blocked {
        if s > cursor {
            push(cursor, s.min(top));
        }
        cursor = cursor.max(e);
        if cursor >= top {
            break;
        }
    }
    if cursor < top {
        push(cursor, top);
    }
    out
}

fn region(start: u128, len: u128) -> RamRegion {
    // Spans lie inside the 64-bit space and `len <= ram_size`, so both fit.
    RamRegion {
        gpa: start as u64,
        size: len as u64,
    }
}

/// The start for the last region, `len` bytes inside `[s, e)`: see the module docs.
fn best_start(s: u128, e: u128, len: u128) -> u128 {
    let mut best = s;
    let mut best_cov = (pages_inside(s, len, SIZE_1G), pages_inside(s, len, SIZE_2M));
    for cand in [round_up(s, SIZE_2M), round_up(s, SIZE_1G)] {
        if cand + len > e {
            continue;
        }
        let cov = (
            pages_inside(cand, len, SIZE_1G),
            pages_inside(cand, len, SIZE_2M),
        );
        if cov > best_cov {
            (best, best_cov) = (cand, cov);
        }
    }
    best
}

/// Lowest first with the 2 MiB / 1 GiB policy; `None` if the RAM does not fit that way.
pub(super) fn place_aligned(free: &[Span], ram: u64) -> Option<Vec<RamRegion>> {
    let mut out = Vec::new();
    let mut remaining = ram as u128;
    for &(s, e) in free {
        if remaining == 0 {
            break;
        }
        if remaining <= e - s {
            out.push(region(best_start(s, e, remaining), remaining));
            remaining = 0;
        } else {
            let (s2, e2) = (round_up(s, SIZE_2M), round_down(e, SIZE_2M));
            if e2 > s2 {
                out.push(region(s2, e2 - s2));
                remaining -= e2 - s2;
            }
        }
    }
    (remaining == 0).then_some(out)
}

/// Plain lowest-first fill; `None` if the free space is too small.
pub(super) fn place_plain(free: &[Span], ram: u64) -> Option<Vec<RamRegion>> {
    let mut out = Vec::new();
    let mut remaining = ram as u128;
    for &(s, e) in free {
        if remaining == 0 {
            break;
        }
        let take = remaining.min(e - s);
        out.push(region(s, take));
        remaining -= take;
    }
    (remaining == 0).then_some(out)
}

/// The excluded range among `sorted` that covers the most of `span` (lowest on ties).
fn widest_in(sorted: &[Item], span: Span) -> Option<Item> {
    let overlap = |e: &Item| e.end().min(span.1).saturating_sub(e.start().max(span.0));
    sorted
        .iter()
        .take_while(|e| e.start() < span.1)
        .filter(|e| overlap(e) > 0)
        .max_by(|a, b| overlap(a).cmp(&overlap(b)).then(b.cmp(a)))
        .copied()
}

/// The error for a request whose RAM does not fit: the free space, what ends it at the
/// top, and the largest range in the way below that.
pub(super) fn shortfall(
    req: &MemoryMapRequest,
    sorted: &[Item],
    blocked: &[Span],
    free: &[Span],
) -> MemoryMapError {
    let (base, top_excl) = (req.base as u128, req.limit as u128 + 1);
    let inside: Vec<Span> = blocked
        .iter()
        .filter(|&&(s, e)| e > base && s < top_excl)
        .map(|&(s, e)| (s.max(base), e.min(top_excl)))
        .collect();
    // The blocked span reaching the limit ends the usable space; name what fills it.
    let tail = inside.last().copied().filter(|&(_, e)| e == top_excl);
    let mut top: Vec<ExcludedRange> = Vec::new();
    if let Some((s, e)) = tail {
        for x in sorted.iter().filter(|x| x.end() > s && x.start() < e) {
            let x = x.resolve(req);
            if top.len() < 3 && !top.iter().any(|c| c.why == x.why) {
                top.push(x);
            }
        }
    }
    let blocker = inside
        .iter()
        .filter(|&&span| Some(span) != tail)
        .max_by(|a, b| (a.1 - a.0).cmp(&(b.1 - b.0)).then(b.0.cmp(&a.0)))
        .and_then(|&span| widest_in(sorted, span))
        .map(|item| item.resolve(req));
    MemoryMapError::NotEnoughSpace {
        requested: req.ram_size,
        free: free.iter().map(|&(s, e)| e - s).sum(),
        base: req.base,
        top,
        limit: req.limit,
        blocker,
    }
}
