//! Planner benchmark: a 1 TiB guest against 10,000 excluded ranges (goal: under 1 ms).
//! Plain `main` (harness = false): `cargo bench -p passthrough --bench planner`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use passthrough::iova::IovaRange;
use passthrough::memory_map::{DeviceRanges, NamedRange};
use passthrough::{plan, MemoryMapRequest, ReservedKind, ReservedRegion};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// A deterministic xorshift, so every run plans the same request.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// 1 TiB of RAM; `n` excluded ranges of 4 KiB..16 MiB scattered over the first 4 TiB,
/// half as fixed windows, half as reserved regions of 100 devices, each device also
/// reporting a 48-bit aperture.
fn request(n: usize) -> MemoryMapRequest {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut req = MemoryMapRequest::new(TIB);
    req.limit = (1 << 48) - 1;
    req.fixed_windows.push(NamedRange::new(
        IovaRange::new(3 * GIB, 4 * GIB - 1).unwrap(),
        "x86 32-bit MMIO hole",
    ));
    let window_name: Arc<str> = "fixed window".into();
    let random_range = |rng: &mut Rng| {
        let start = (rng.next() % (4 * TIB)) & !0xfff;
        let len = (rng.next() % (16 * MIB) + 1).next_multiple_of(4096);
        IovaRange::from_start_len(start, len).unwrap()
    };
    for _ in 0..n / 2 {
        req.fixed_windows.push(NamedRange {
            range: random_range(&mut rng),
            name: window_name.clone(),
        });
    }
    let devices = 100;
    for d in 0..devices {
        let reserved = (0..(n - n / 2) / devices)
            .map(|_| ReservedRegion {
                range: random_range(&mut rng),
                kind: ReservedKind::Reserved,
            })
            .collect();
        req.devices.push(DeviceRanges {
            name: format!("0000:{:02x}:00.0", d).into(),
            iova_ranges: Some(vec![IovaRange::new(0, (1 << 48) - 1).unwrap()]),
            reserved,
        });
    }
    req
}

fn measure(name: &str, req: &MemoryMapRequest, rounds: usize) -> Duration {
    let map = plan(req).expect("the benchmark request is plannable");
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            black_box(plan(black_box(req)).ok());
            t.elapsed()
        })
        .collect();
    times.sort_unstable();
    let median = times[times.len() / 2];
    println!(
        "{name}: median {:?}, min {:?}, max {:?} over {rounds} runs; {} regions, \
         {:.1}% in 1 GiB pages, {:.1}% in 2 MiB pages",
        median,
        times[0],
        times[times.len() - 1],
        map.regions.len(),
        map.coverage.percent_1g(),
        map.coverage.percent_2m(),
    );
    median
}

fn main() {
    // `cargo test --benches` runs this with `--test`-like arguments; keep it quick then.
    let quick = std::env::args().any(|a| a == "--test");
    let rounds = if quick { 3 } else { 201 };
    measure("plan 1 TiB, x86 layout, 1 device", &request(0), rounds);
    let median = measure(
        "plan 1 TiB vs 10,000 excluded ranges",
        &request(10_000),
        rounds,
    );
    if !quick && median > Duration::from_millis(1) {
        println!("goal missed: median above 1 ms");
    }
}
