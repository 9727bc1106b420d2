//! Fuzz targets: each is a function of an arbitrary byte string that drives one parser of
//! guest- or user-controlled input the way the VMM does, and panics only on a bug (a
//! broken invariant, an arithmetic overflow, an out-of-bounds access).
//!
//! The AFL harness (`afl/`, a separate workspace built by `tests/fuzz.sh` with cargo-afl)
//! calls these; without it, the unit tests below replay every seed under `seeds/TARGET/`
//! so the targets build and run in `cargo test --workspace`. A crash found by fuzzing is
//! fixed where the bug is, and its input kept as a unit test there.

#![deny(missing_docs)]

pub mod api_request;
mod input;
#[cfg(target_arch = "x86_64")]
pub mod loaders;
pub mod memory_map;
pub mod pci_config;
#[cfg(test)]
mod seeds;
pub mod smmuv3;
pub mod virtqueue;

pub use input::Input;

/// A fuzz target.
pub type Target = fn(&[u8]);

/// Every target, by name (the name of its seed directory and AFL binary).
pub const TARGETS: &[(&str, Target)] = &[
    ("virtqueue", virtqueue::run),
    ("pci_config", pci_config::run),
    #[cfg(target_arch = "x86_64")]
    ("loaders", loaders::run),
    ("memory_map", memory_map::run),
    ("api_request", api_request::run),
    ("smmuv3", smmuv3::run),
];

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn every_seed_runs_through_its_target() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
        for (name, run) in super::TARGETS {
            let dir = root.join(name);
            let mut n = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
                let data = std::fs::read(entry.unwrap().path()).unwrap();
                run(&data);
                n += 1;
            }
            assert!(n > 0, "no seeds for {name} in {dir:?}");
        }
    }

    #[test]
    fn targets_take_any_bytes() {
        for (_, run) in super::TARGETS {
            run(&[]);
            run(&[0xff; 64]);
            run(&(0..=255).collect::<Vec<u8>>());
        }
    }
}
