//! Architecture-specific VM setup, and what both architectures share.

use vm_memory::GuestAddress;

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

/// A contiguous range of guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRegion {
    /// First guest physical address.
    pub start: GuestAddress,
    /// Length in bytes.
    pub size: u64,
}

impl RamRegion {
    /// End (exclusive) of the region, saturating at `u64::MAX`.
    pub fn end(&self) -> u64 {
        self.start.0.saturating_add(self.size)
    }
}

impl RamRegion {
    /// The regions of a memory plan (GPA = IOVA).
    pub fn from_plan(map: &passthrough::MemoryMap) -> Vec<RamRegion> {
        map.regions
            .iter()
            .map(|r| RamRegion {
                start: GuestAddress(r.gpa),
                size: r.size,
            })
            .collect()
    }
}
