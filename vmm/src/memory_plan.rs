//! `vmm --print-memory-map`: where guest RAM would go for this VM, given the devices that
//! would be passed through. The devices' IOVA ranges are read from the kernel (a fresh IOAS
//! with the device attached, IOMMU_IOAS_IOVA_RANGES) and their reserved regions from sysfs;
//! the arch layout adds its fixed windows; the passthrough planner places the RAM.

use std::io::Write;

use crate::machine::layout::{self, LayoutError};
use crate::vfio::{PassthroughPlan, VfioError};

/// Errors of the memory map printer.
#[derive(Debug, thiserror::Error)]
pub enum MemoryPlanError {
    /// A device could not be located, opened or probed.
    #[error(transparent)]
    Device(#[from] VfioError),
    /// The plan failed.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Printing failed.
    #[error("cannot print the memory map: {0}")]
    Io(#[from] std::io::Error),
}

/// Plans `memory` bytes of guest RAM around the `devices` (`--device` specs) and prints the
/// host ranges read for each and the plan to `out`.
pub fn print_memory_map(
    memory: u64,
    devices: &[String],
    out: &mut dyn Write,
) -> Result<(), MemoryPlanError> {
    let ranges = PassthroughPlan::prepare(devices)?
        .map(|p| p.ranges())
        .unwrap_or_default();
    for r in &ranges {
        writeln!(out, "device {}:", r.name)?;
        for range in r.iova_ranges.iter().flatten() {
            writeln!(
                out,
                "  IOVA range       {:#018x}-{:#018x}",
                range.first_raw(),
                range.last_raw()
            )?;
        }
        for rr in &r.reserved {
            writeln!(
                out,
                "  reserved region  {:#018x}-{:#018x} {}",
                rr.range.first_raw(),
                rr.range.last_raw(),
                rr.kind
            )?;
        }
    }
    let (_, map) = layout::plan_ram(memory, ranges)?;
    writeln!(out, "{map}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn plan_without_devices_skips_the_mmio_hole() {
        let mut out = Vec::new();
        print_memory_map(5 << 30, &[], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("0x0000000000000000   0x00000000bfffffff"),
            "{text}"
        );
        assert!(
            text.contains("0x0000000100000000   0x000000017fffffff"),
            "{text}"
        );
        assert!(text.contains("x86 32-bit MMIO hole"), "{text}");
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn plan_without_devices_starts_at_ram_base_clear_of_the_msi_window() {
        let mut out = Vec::new();
        print_memory_map(2 << 30, &[], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        // One region from the RAM base; the MSI window (0x08000000) lies below it.
        assert!(
            text.contains("0x0000000040000000   0x00000000bfffffff"),
            "{text}"
        );
        assert!(text.contains("in 1 region"), "{text}");
    }

    #[test]
    fn a_device_that_is_not_pci_is_named() {
        let d = "path=/nonexistent/0000:00:09.0,id=nic".to_string();
        let e = print_memory_map(1 << 30, &[d], &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("nic"), "{e}");
        assert!(e.to_string().contains("not a PCI device"), "{e}");
    }
}
