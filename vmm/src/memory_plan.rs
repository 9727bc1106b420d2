//! `vmm --print-memory-map`: where guest RAM would go for this VM, given the devices that
//! would be passed through. The devices' IOVA ranges are read from the kernel (a fresh IOAS
//! with the device attached, IOMMU_IOAS_IOVA_RANGES) and their reserved regions from sysfs;
//! the arch layout adds its fixed windows; the passthrough planner places the RAM.

use std::io::Write;
use std::path::Path;

use passthrough::{locate, probe_ranges, IommufdError, KernelIommufd, Sysfs, VfioCdevError};

use crate::config::DeviceConfig;
use crate::machine::layout::{self, LayoutError};

/// Where VFIO cdev nodes live.
const VFIO_DEV_ROOT: &str = "/dev/vfio/devices";

/// Errors of the memory map printer.
#[derive(Debug, thiserror::Error)]
pub enum MemoryPlanError {
    /// A device could not be located or probed.
    #[error("--device {id}: {source}")]
    Device {
        /// The device's id.
        id: String,
        /// Why.
        source: VfioCdevError,
    },
    /// /dev/iommu could not be opened.
    #[error("{0}; passthrough needs /dev/iommu (a host kernel with CONFIG_IOMMUFD and an IOMMU turned on, e.g. intel_iommu=on)")]
    Iommufd(IommufdError),
    /// The plan failed.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Printing failed.
    #[error("cannot print the memory map: {0}")]
    Io(#[from] std::io::Error),
}

/// Plans `memory` bytes of guest RAM around `devices` and prints the plan to `out`.
pub fn print_memory_map(
    memory: u64,
    devices: &[DeviceConfig],
    out: &mut dyn Write,
) -> Result<(), MemoryPlanError> {
    let mut ranges = Vec::with_capacity(devices.len());
    if !devices.is_empty() {
        let located = devices
            .iter()
            .map(|d| {
                locate(&d.path, Path::new(VFIO_DEV_ROOT)).map_err(|source| {
                    MemoryPlanError::Device {
                        id: d.id.clone(),
                        source,
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut iommufd = KernelIommufd::open().map_err(MemoryPlanError::Iommufd)?;
        let sysfs = Sysfs::host();
        for (cfg, dev) in devices.iter().zip(&located) {
            let r = probe_ranges(&mut iommufd, &sysfs, dev).map_err(|source| {
                MemoryPlanError::Device {
                    id: cfg.id.clone(),
                    source,
                }
            })?;
            writeln!(out, "device {} ({}):", cfg.id, dev.bdf)?;
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
            ranges.push(r);
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
        assert!(text.contains("0x0000000040000000   0x00000000bfffffff"), "{text}");
        assert!(text.contains("in 1 region"), "{text}");
    }

    #[test]
    fn a_device_that_is_not_pci_is_named() {
        let d: DeviceConfig = "path=/nonexistent/0000:00:09.0,id=nic".parse().unwrap();
        let e = print_memory_map(1 << 30, &[d], &mut Vec::new()).unwrap_err();
        assert!(e.to_string().starts_with("--device nic: "), "{e}");
        assert!(e.to_string().contains("not a PCI device"), "{e}");
    }
}
