//! The aarch64 guest physical address map, and the RAM ranges the device tree reports.
//!
//! ```text
//! 0x0000_0000 ─ 0x00ff_ffff  nothing (16 MiB): a stray low access is an unhandled MMIO exit
//! 0x0100_0000 ─ 0x0100_0fff  16550A UART ("ns16550a"), SPI 1
//! 0x0100_1000 ─ 0x01ff_ffff  free for more platform MMIO devices
//! 0x0200_0000 ─ 0x0200_ffff  GICv3 distributor (64 KiB)
//! 0x0202_0000 ─ 0x0203_ffff  GICv3 ITS (128 KiB)
//! 0x0400_0000 ─ 0x07ff_ffff  GICv3 redistributors, 128 KiB per vCPU, room for 512 vCPUs
//! 0x0800_0000 ─ 0x080f_ffff  HOST SOFTWARE MSI WINDOW: nothing is ever placed here
//! 0x0810_0000 ─ 0x0fff_ffff  nothing
//! 0x1000_0000 ─ 0x1fff_ffff  PCIe ECAM (256 MiB: buses 0-255)
//! 0x2000_0000 ─ 0x3fff_ffff  32-bit PCI MMIO window (512 MiB)
//! 0x4000_0000 ─ …            RAM (1 GiB onwards, up to 511 GiB)
//! 0x80_0000_0000 ─ 0xff_ffff_ffff  64-bit PCI MMIO window (512 GiB)
//! ```
//!
//! Why this shape:
//! - The host's SMMU driver reserves IOVA 0x0800_0000-0x080f_ffff in every IOMMU domain as the
//!   software MSI window (the kernel maps the host ITS doorbell there). With passthrough the
//!   guest's RAM is mapped 1:1 (IOVA = guest physical address) into the device's IOMMU
//!   domain, and peer-to-peer BAR accesses would use the PCI windows the same way, so neither
//!   RAM nor a PCI window may cover that range. Everything in this map stays out of it.
//! - RAM starts at 1 GiB, like QEMU's `virt` machine, so all fixed MMIO fits below it and
//!   up to 3 GiB of RAM sits below 4 GiB for 32-bit DMA.
//! - The whole map ends at 1 TiB (40 bits), the IPA size of a VM created with the default
//!   machine type, so `KVM_CREATE_VM` with type 0 works on every host that runs KVM.
//! - Firmware-visible ranges are 64 KiB aligned (the GIC requires it for its frames; it also
//!   suits guests with 64 KiB pages).
//!
//! This module only computes addresses; it does not touch guest memory or KVM. Where the RAM
//! actually goes may be refined by the passthrough memory planner (to skip host-reserved
//! IOVA ranges): everything downstream takes a slice of [`RamRegion`]s, never assumes one.

use passthrough::memory_map::{DeviceRanges, NamedRange};
use passthrough::{plan, IovaRange, MemoryMap, MemoryMapError, MemoryMapRequest};
use vm_memory::GuestAddress;

pub use crate::arch::RamRegion;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Page size the layout aligns RAM to.
pub const PAGE_SIZE: u64 = 4 * KIB;

/// The 16550A UART.
pub const SERIAL_START: GuestAddress = GuestAddress(0x0100_0000);
/// Size of the UART's MMIO window (one page; only the first 8 bytes are registers).
pub const SERIAL_SIZE: u64 = 0x1000;
/// SPI number of the UART: its KVM GSI, since the default arm64 irq routing sends GSI n to
/// SPI n (INTID 32 + n). Also the number in its device tree `interrupts` cell.
pub const SERIAL_SPI: u32 = 1;
/// Input clock of the UART reported to the guest: the classic 1.8432 MHz crystal, so that
/// divisor 1 means 115200 baud. The emulated UART ignores it.
pub const SERIAL_CLOCK_HZ: u32 = 1_843_200;

/// GICv3 distributor (`KVM_VGIC_V3_ADDR_TYPE_DIST`).
pub const GIC_DIST_START: GuestAddress = GuestAddress(0x0200_0000);
/// Size of the distributor frame (`KVM_VGIC_V3_DIST_SIZE`).
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// GICv3 ITS (`KVM_VGIC_ITS_ADDR_TYPE`).
pub const GIC_ITS_START: GuestAddress = GuestAddress(0x0202_0000);
/// Size of the ITS frames (`KVM_VGIC_V3_ITS_SIZE`: control + translation page).
pub const GIC_ITS_SIZE: u64 = 0x2_0000;
/// The ITS doorbell (GITS_TRANSLATER, in the translation frame 64 KiB above the control
/// frame): the MSI address the guest programs into its PCI functions.
pub const GIC_ITS_TRANSLATER: GuestAddress = GuestAddress(GIC_ITS_START.0 + 0x1_0040);
/// First GICv3 redistributor (`KVM_VGIC_V3_ADDR_TYPE_REDIST`); vCPU n's is at
/// `GIC_REDIST_START + n * GIC_REDIST_SIZE_PER_VCPU`.
pub const GIC_REDIST_START: GuestAddress = GuestAddress(0x0400_0000);
/// Size of one redistributor (`KVM_VGIC_V3_REDIST_SIZE`: RD + SGI frames).
pub const GIC_REDIST_SIZE_PER_VCPU: u64 = 0x2_0000;
/// Most vCPUs the redistributor area holds; also KVM's GICv3 limit (`VGIC_V3_MAX_CPUS`).
pub const MAX_VCPUS: u32 = 512;
/// Number of interrupt IDs the vGIC implements (`KVM_DEV_ARM_VGIC_GRP_NR_IRQS`): 32 private
/// ones (SGIs, PPIs) and 224 SPIs. KVM wants a multiple of 32 in 64..=1024.
pub const GIC_NR_IRQS: u32 = 256;
/// Number of SPIs, i.e. of GSIs the default KVM irq routing provides.
pub const GIC_NR_SPIS: u32 = GIC_NR_IRQS - 32;

/// The host's software MSI window: guest RAM and PCI windows must stay out of it.
pub const HOST_SW_MSI_START: GuestAddress = GuestAddress(0x0800_0000);
/// Size of the host's software MSI window.
pub const HOST_SW_MSI_SIZE: u64 = 0x10_0000;

/// The guest-visible SMMUv3 (`--device ...,iommu=on`): two 64 KiB register pages.
pub const SMMU_START: GuestAddress = GuestAddress(0x0900_0000);
/// Size of the SMMU's MMIO window.
pub const SMMU_SIZE: u64 = 0x2_0000;
/// SPI (= GSI) of the SMMU's event queue interrupt.
pub const SMMU_EVENTQ_SPI: u32 = 2;
/// SPI (= GSI) of the SMMU's global error interrupt.
pub const SMMU_GERROR_SPI: u32 = 3;

/// PCIe enhanced configuration space (not populated yet).
pub const PCI_ECAM_START: GuestAddress = GuestAddress(0x1000_0000);
/// Size of the ECAM window: 256 buses x 32 devices x 8 functions x 4 KiB.
pub const PCI_ECAM_SIZE: u64 = 256 * MIB;
/// Window for 32-bit PCI BARs (not populated yet).
pub const PCI_MMIO32_START: GuestAddress = GuestAddress(0x2000_0000);
/// Size of the 32-bit PCI BAR window.
pub const PCI_MMIO32_SIZE: u64 = 512 * MIB;

/// Start of guest RAM.
pub const RAM_START: GuestAddress = GuestAddress(GIB);
/// Window for 64-bit PCI BARs (not populated yet); RAM ends at or below it.
pub const PCI_MMIO64_START: GuestAddress = GuestAddress(512 * GIB);
/// Size of the 64-bit PCI BAR window.
pub const PCI_MMIO64_SIZE: u64 = 512 * GIB;

/// Guest physical address bits the map needs (the default KVM VM IPA size).
pub const GUEST_PHYS_ADDR_BITS: u32 = 40;

/// Smallest guest accepted: room for a small kernel and the 2 MiB device tree slot. Real
/// Linux guests need far more (tens of MiB); this floor only rejects nonsense.
pub const MIN_MEM_SIZE: u64 = 8 * MIB;
/// Largest guest: RAM from [`RAM_START`] up to [`PCI_MMIO64_START`].
pub const MAX_MEM_SIZE: u64 = PCI_MMIO64_START.0 - RAM_START.0;

/// Errors computing or checking the guest memory layout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// The requested memory is below [`MIN_MEM_SIZE`].
    #[error("guest memory size {size:#x} is too small; give the VM at least {min} MiB")]
    TooSmall {
        /// Requested bytes.
        size: u64,
        /// Minimum in MiB.
        min: u64,
    },
    /// The requested memory does not fit below the 64-bit PCI window.
    #[error(
        "guest memory size {size:#x} is too large; RAM would run into the 64-bit PCI window at \
         {limit:#x}, use at most {max:#x} bytes"
    )]
    TooLarge {
        /// Requested bytes.
        size: u64,
        /// Where RAM must end.
        limit: u64,
        /// Largest accepted size.
        max: u64,
    },
    /// The requested memory is not a whole number of pages.
    #[error("guest memory size {size:#x} is not a multiple of 4 KiB; round it to whole pages")]
    Unaligned {
        /// Requested bytes.
        size: u64,
    },
    /// A RAM region (e.g. from the memory planner) lies outside the RAM area of the map.
    #[error(
        "guest RAM region [{start:#x}, {end:#x}) leaves the RAM area [{ram_start:#x}, \
         {ram_end:#x}) of the aarch64 memory map; the memory planner must place RAM there"
    )]
    OutsideRamArea {
        /// Region start.
        start: u64,
        /// Region end (exclusive).
        end: u64,
        /// Start of the RAM area.
        ram_start: u64,
        /// End of the RAM area (exclusive).
        ram_end: u64,
    },
    /// The planner could not place the RAM around the excluded ranges.
    #[error("{0}")]
    Plan(MemoryMapError),
    /// No RAM at all.
    #[error("the guest has no RAM regions; give the VM memory")]
    NoRam,
}

/// Places `mem_size` bytes of RAM from [`RAM_START`] (one region unless host ranges split it).
///
/// `mem_size` must be a multiple of 4 KiB, at least [`MIN_MEM_SIZE`] and at most
/// [`MAX_MEM_SIZE`].
pub fn ram_regions(mem_size: u64) -> Result<Vec<RamRegion>, LayoutError> {
    Ok(plan_ram(mem_size, Vec::new())?.0)
}

/// The planner request for this layout: RAM between [`RAM_START`] and the 64-bit PCI window,
/// plus the host ranges of the devices to be passed through. Every device window lies below
/// RAM_START, so the only fixed window RAM must avoid is the host software MSI window, which
/// also lies below it; it is listed so the plan says why it is kept clear.
pub fn memory_map_request(mem_size: u64, devices: Vec<DeviceRanges>) -> MemoryMapRequest {
    MemoryMapRequest {
        ram_size: mem_size,
        page_size: PAGE_SIZE,
        base: RAM_START.0,
        limit: PCI_MMIO64_START.0 - 1,
        fixed_windows: IovaRange::from_start_len(HOST_SW_MSI_START.0, HOST_SW_MSI_SIZE)
            .map(|r| NamedRange::new(r, "host software MSI window (kept empty)"))
            .into_iter()
            .collect(),
        devices,
    }
}

/// Places `mem_size` bytes of RAM with the passthrough planner, avoiding every range in
/// `devices`; returns the regions and the plan (for printing).
pub fn plan_ram(
    mem_size: u64,
    devices: Vec<DeviceRanges>,
) -> Result<(Vec<RamRegion>, MemoryMap), LayoutError> {
    if mem_size < MIN_MEM_SIZE {
        return Err(LayoutError::TooSmall {
            size: mem_size,
            min: MIN_MEM_SIZE / MIB,
        });
    }
    if mem_size % PAGE_SIZE != 0 {
        return Err(LayoutError::Unaligned { size: mem_size });
    }
    if mem_size > MAX_MEM_SIZE {
        return Err(LayoutError::TooLarge {
            size: mem_size,
            limit: PCI_MMIO64_START.0,
            max: MAX_MEM_SIZE,
        });
    }
    let map = plan(&memory_map_request(mem_size, devices)).map_err(LayoutError::Plan)?;
    let regions = RamRegion::from_plan(&map);
    check_ram_regions(&regions)?;
    Ok((regions, map))
}

/// Checks that every region of `ram` (from [`ram_regions`] or a memory planner) lies in the
/// RAM area [[`RAM_START`], [`PCI_MMIO64_START`]), hence away from every device window and
/// the host software MSI window.
pub fn check_ram_regions(ram: &[RamRegion]) -> Result<(), LayoutError> {
    if ram.iter().all(|r| r.size == 0) {
        return Err(LayoutError::NoRam);
    }
    for r in ram.iter().filter(|r| r.size > 0) {
        let end = r.start.0.checked_add(r.size);
        if r.start.0 < RAM_START.0 || end.is_none_or(|e| e > PCI_MMIO64_START.0) {
            return Err(LayoutError::OutsideRamArea {
                start: r.start.0,
                end: r.end(),
                ram_start: RAM_START.0,
                ram_end: PCI_MMIO64_START.0,
            });
        }
    }
    Ok(())
}

/// The `(address, size)` ranges the device tree's memory nodes report for `ram`: sorted by
/// address, empty regions dropped, touching or overlapping regions merged. Unlike x86 there
/// is no E820 table and nothing is reported reserved; device windows are simply not RAM.
pub fn memory_regions(ram: &[RamRegion]) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = ram
        .iter()
        .filter(|r| r.size > 0)
        .map(|r| (r.start.0, r.end()))
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged.into_iter().map(|(s, e)| (s, e - s)).collect()
}

/// Size of the redistributor area for `vcpus` vCPUs.
pub fn gic_redist_size(vcpus: u32) -> u64 {
    u64::from(vcpus) * GIC_REDIST_SIZE_PER_VCPU
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(start: u64, size: u64) -> RamRegion {
        RamRegion {
            start: GuestAddress(start),
            size,
        }
    }

    /// Every fixed window of the map, as (name, start, size).
    fn windows() -> Vec<(&'static str, u64, u64)> {
        vec![
            ("serial", SERIAL_START.0, SERIAL_SIZE),
            ("gic dist", GIC_DIST_START.0, GIC_DIST_SIZE),
            ("gic its", GIC_ITS_START.0, GIC_ITS_SIZE),
            ("gic redist", GIC_REDIST_START.0, gic_redist_size(MAX_VCPUS)),
            ("sw msi", HOST_SW_MSI_START.0, HOST_SW_MSI_SIZE),
            ("smmu", SMMU_START.0, SMMU_SIZE),
            ("ecam", PCI_ECAM_START.0, PCI_ECAM_SIZE),
            ("mmio32", PCI_MMIO32_START.0, PCI_MMIO32_SIZE),
            ("ram", RAM_START.0, MAX_MEM_SIZE),
            ("mmio64", PCI_MMIO64_START.0, PCI_MMIO64_SIZE),
        ]
    }

    #[test]
    fn windows_are_sorted_disjoint_and_aligned() {
        let w = windows();
        for pair in w.windows(2) {
            let (a, a_start, a_size) = pair[0];
            let (b, b_start, _) = pair[1];
            assert!(a_start + a_size <= b_start, "{a} overlaps {b}");
        }
        for (name, start, size) in &w {
            assert_eq!(start % 0x1_0000, 0, "{name} is not 64 KiB aligned");
            assert_ne!(*size, 0, "{name} is empty");
        }
        let (_, last_start, last_size) = w[w.len() - 1];
        assert_eq!(last_start + last_size, 1 << GUEST_PHYS_ADDR_BITS);
    }

    #[test]
    fn nothing_but_the_reservation_touches_the_sw_msi_window() {
        let msi = (HOST_SW_MSI_START.0, HOST_SW_MSI_START.0 + HOST_SW_MSI_SIZE);
        assert_eq!(msi, (0x0800_0000, 0x0810_0000));
        for (name, start, size) in windows().into_iter().filter(|w| w.0 != "sw msi") {
            assert!(
                start + size <= msi.0 || start >= msi.1,
                "{name} overlaps the host software MSI window"
            );
        }
    }

    #[test]
    fn gic_sizes_match_kvm() {
        // arch/arm64/include/uapi/asm/kvm.h: KVM_VGIC_V3_DIST_SIZE = SZ_64K,
        // KVM_VGIC_V3_REDIST_SIZE = 2 * SZ_64K, KVM_VGIC_V3_ITS_SIZE = 2 * SZ_64K.
        assert_eq!(GIC_DIST_SIZE, 64 * KIB);
        assert_eq!(GIC_REDIST_SIZE_PER_VCPU, 2 * 64 * KIB);
        assert_eq!(GIC_ITS_SIZE, 2 * 64 * KIB);
        assert_eq!(GIC_NR_IRQS % 32, 0);
        assert!((64..=1024).contains(&GIC_NR_IRQS));
        assert!(SERIAL_SPI < GIC_NR_SPIS);
        assert_eq!(gic_redist_size(2), 0x4_0000);
    }

    #[test]
    fn ram_regions_one_region_at_one_gib() {
        assert_eq!(
            ram_regions(512 * MIB).unwrap(),
            vec![region(GIB, 512 * MIB)]
        );
        assert_eq!(
            ram_regions(MAX_MEM_SIZE).unwrap(),
            vec![region(GIB, 511 * GIB)]
        );
        assert_eq!(
            ram_regions(MIN_MEM_SIZE).unwrap(),
            vec![region(GIB, 8 * MIB)]
        );
    }

    #[test]
    fn ram_regions_rejects_bad_sizes() {
        assert_eq!(
            ram_regions(0),
            Err(LayoutError::TooSmall { size: 0, min: 8 })
        );
        assert_eq!(
            ram_regions(64 * MIB + 1),
            Err(LayoutError::Unaligned { size: 64 * MIB + 1 })
        );
        assert_eq!(
            ram_regions(MAX_MEM_SIZE + PAGE_SIZE),
            Err(LayoutError::TooLarge {
                size: MAX_MEM_SIZE + PAGE_SIZE,
                limit: 512 * GIB,
                max: MAX_MEM_SIZE
            })
        );
        assert!(ram_regions(u64::MAX & !0xfff).is_err());
    }

    #[test]
    fn layout_errors_say_what_to_do() {
        let msg = ram_regions(MIB).unwrap_err().to_string();
        assert!(msg.contains("at least 8 MiB"), "{msg}");
        let msg = ram_regions(64 * MIB + 5).unwrap_err().to_string();
        assert!(msg.contains("multiple of 4 KiB"), "{msg}");
        let msg = ram_regions(1 << 40).unwrap_err().to_string();
        assert!(msg.contains("use at most"), "{msg}");
    }

    #[test]
    fn check_ram_regions_accepts_the_ram_area_only() {
        assert_eq!(check_ram_regions(&ram_regions(GIB).unwrap()), Ok(()));
        assert_eq!(
            check_ram_regions(&[region(GIB, GIB), region(4 * GIB, GIB), region(0, 0)]),
            Ok(())
        );
        // RAM over the software MSI window.
        assert!(matches!(
            check_ram_regions(&[region(0x0800_0000, MIB)]),
            Err(LayoutError::OutsideRamArea {
                start: 0x0800_0000,
                ..
            })
        ));
        // RAM into the 64-bit PCI window, and an overflowing region.
        assert!(check_ram_regions(&[region(511 * GIB, 2 * GIB)]).is_err());
        assert!(check_ram_regions(&[region(GIB, u64::MAX)]).is_err());
        assert_eq!(check_ram_regions(&[]), Err(LayoutError::NoRam));
        assert_eq!(
            check_ram_regions(&[region(GIB, 0)]),
            Err(LayoutError::NoRam)
        );
    }

    #[test]
    fn memory_regions_sorts_merges_and_drops_empty() {
        assert_eq!(
            memory_regions(&ram_regions(512 * MIB).unwrap()),
            vec![(GIB, 512 * MIB)]
        );
        let planned = [
            region(8 * GIB, GIB),
            region(GIB, GIB),
            region(2 * GIB, 0),
            region(2 * GIB, 256 * MIB),
            region(3 * GIB, MIB),
            region(3 * GIB, 2 * MIB),
        ];
        assert_eq!(
            memory_regions(&planned),
            vec![(GIB, GIB + 256 * MIB), (3 * GIB, 2 * MIB), (8 * GIB, GIB)]
        );
        assert!(memory_regions(&[]).is_empty());
    }
}
