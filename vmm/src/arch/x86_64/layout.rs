//! The x86_64 guest physical address map, and the E820 table derived from it.
//!
//! ```text
//! 0x0000_0000  real-mode IVT / BDA (RAM)
//! 0x0000_0500  boot GDT, 0x520 boot IDT
//! 0x0000_1000  multiboot info area (to 0x5000)
//! 0x0000_7000  Linux zero page (boot_params)
//! 0x0000_8000  left free: the test guest's AP trampoline page
//! 0x0000_9000  PML4, 0xA000 PDPTE, 0xB000..0xF000 four PDE pages (4 GiB identity, 2M pages)
//! 0x0002_0000  kernel command line (64 KiB)
//! 0x0009_FC00  EBDA + VGA hole + BIOS area (reserved in E820 up to 1 MiB)
//! 0x0010_0000  high memory: kernels load here or above
//! ...          RAM up to min(mem_size, 3 GiB)
//! 0xC000_0000  32-bit MMIO hole: PCI BAR window (512 MiB)
//! 0xE000_0000  PCIe ECAM (256 MiB, reserved in E820)
//! 0xFEC0_0000  IOAPIC, 0xFEE0_0000 LAPIC
//! 0xFEFF_C000  KVM identity-map page + TSS (reserved in E820)
//! 0x1_0000_0000 RAM above 3 GiB continues here
//! ```
//!
//! This module only computes addresses and tables; it does not touch guest memory or KVM.

use passthrough::memory_map::{DeviceRanges, NamedRange};
use passthrough::{plan, IovaRange, MemoryMap, MemoryMapError, MemoryMapRequest};
use vm_memory::GuestAddress;

pub use crate::arch::RamRegion;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Page size the layout aligns RAM to.
pub const PAGE_SIZE: u64 = 4 * KIB;

/// Boot GDT written by the VMM core.
pub const BOOT_GDT_START: GuestAddress = GuestAddress(0x500);
/// Boot IDT (empty) written by the VMM core.
pub const BOOT_IDT_START: GuestAddress = GuestAddress(0x520);
/// Start of the area holding the multiboot information structure and its tables.
pub const MULTIBOOT_INFO_START: GuestAddress = GuestAddress(0x1000);
/// End (exclusive) of the multiboot information area.
pub const MULTIBOOT_INFO_END: GuestAddress = GuestAddress(0x5000);
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: GuestAddress = GuestAddress(0x7000);
/// Page-map level 4 table of the boot page tables.
pub const PML4_START: GuestAddress = GuestAddress(0x9000);
/// Page-directory-pointer table of the boot page tables.
pub const PDPTE_START: GuestAddress = GuestAddress(0xA000);
/// First of [`PDE_PAGES`] page directories (identity-mapping 4 GiB with 2 MiB pages).
pub const PDE_START: GuestAddress = GuestAddress(0xB000);
/// Number of page directory pages starting at [`PDE_START`].
pub const PDE_PAGES: u64 = 4;
/// Kernel command line, NUL-terminated.
pub const CMDLINE_START: GuestAddress = GuestAddress(0x20000);
/// Bytes reserved for the command line at [`CMDLINE_START`], NUL included.
pub const CMDLINE_MAX_SIZE: u64 = 0x10000;
/// Start of the extended BIOS data area; RAM below it is the usable low memory.
pub const EBDA_START: GuestAddress = GuestAddress(0x9FC00);
/// Start of high memory (1 MiB); kernels are loaded at or above it.
pub const HIMEM_START: GuestAddress = GuestAddress(0x10_0000);

/// Start of the 32-bit MMIO hole (3 GiB); RAM never sits in [`MMIO32_START`, 4 GiB).
pub const MMIO32_START: GuestAddress = GuestAddress(3 * GIB);
/// Size of the 32-bit MMIO hole.
pub const MMIO32_SIZE: u64 = GIB;
/// Window for 32-bit PCI BARs.
pub const PCI_MMIO32_START: GuestAddress = GuestAddress(3 * GIB);
/// Size of the 32-bit PCI BAR window (up to [`ECAM_START`]).
pub const PCI_MMIO32_SIZE: u64 = 512 * MIB;
/// PCIe enhanced configuration space (MMCONFIG).
pub const ECAM_START: GuestAddress = GuestAddress(0xE000_0000);
/// Size of the ECAM region: 256 buses x 32 devices x 8 functions x 4 KiB.
pub const ECAM_SIZE: u64 = 256 * MIB;
/// IOAPIC MMIO base.
pub const IOAPIC_START: GuestAddress = GuestAddress(0xFEC0_0000);
/// Size of the IOAPIC MMIO window.
pub const IOAPIC_SIZE: u64 = 0x1000;
/// Local APIC MMIO base.
pub const LAPIC_START: GuestAddress = GuestAddress(0xFEE0_0000);
/// Size of the local APIC MMIO window.
pub const LAPIC_SIZE: u64 = 0x1000;
/// Page for `KVM_SET_IDENTITY_MAP_ADDR` (the address QEMU uses).
pub const KVM_IDENTITY_MAP_START: GuestAddress = GuestAddress(0xFEFF_C000);
/// Three pages for `KVM_SET_TSS_ADDR`, right after the identity-map page.
pub const KVM_TSS_START: GuestAddress = GuestAddress(0xFEFF_D000);
/// Bytes KVM uses at [`KVM_IDENTITY_MAP_START`] (identity page + 3 TSS pages).
pub const KVM_PRIVATE_SIZE: u64 = 4 * PAGE_SIZE;
/// RAM beyond [`MMIO32_START`] is placed from here on.
pub const HIGH_RAM_START: GuestAddress = GuestAddress(4 * GIB);

/// Guest physical address width the layout allows RAM to reach.
pub const GUEST_PHYS_ADDR_BITS: u32 = 46;
/// End (exclusive) of the guest physical address space usable for RAM.
pub const GUEST_PHYS_LIMIT: GuestAddress = GuestAddress(1 << GUEST_PHYS_ADDR_BITS);

/// Smallest guest: the first MiB holds the boot structures, one more MiB for a (tiny) kernel.
/// Real Linux kernels need far more (tens of MiB); this floor only rejects nonsense.
pub const MIN_MEM_SIZE: u64 = 2 * MIB;

// The fixed areas must not overlap; checked at compile time.
const _: () = {
    assert!(BOOT_IDT_START.0 > BOOT_GDT_START.0);
    assert!(MULTIBOOT_INFO_START.0 >= BOOT_IDT_START.0 + 8);
    assert!(MULTIBOOT_INFO_END.0 <= ZERO_PAGE_START.0);
    assert!(ZERO_PAGE_START.0 + 0x1000 <= 0x8000);
    assert!(0x9000 <= PML4_START.0);
    assert!(PDE_START.0 + PDE_PAGES * PAGE_SIZE == 0xF000);
    assert!(CMDLINE_START.0 >= 0xF000);
    assert!(CMDLINE_START.0 + CMDLINE_MAX_SIZE <= EBDA_START.0);
    assert!(MMIO32_START.0 + MMIO32_SIZE == HIGH_RAM_START.0);
    assert!(PCI_MMIO32_START.0 + PCI_MMIO32_SIZE == ECAM_START.0);
    assert!(ECAM_START.0 + ECAM_SIZE <= IOAPIC_START.0);
    assert!(IOAPIC_START.0 + IOAPIC_SIZE <= LAPIC_START.0);
    assert!(LAPIC_START.0 + LAPIC_SIZE <= KVM_IDENTITY_MAP_START.0);
    assert!(KVM_TSS_START.0 == KVM_IDENTITY_MAP_START.0 + PAGE_SIZE);
    assert!(KVM_IDENTITY_MAP_START.0 + KVM_PRIVATE_SIZE <= HIGH_RAM_START.0);
};

/// Errors computing the guest memory layout.
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
    /// The requested memory does not fit below [`GUEST_PHYS_LIMIT`].
    #[error(
        "guest memory size {size:#x} is too large; RAM would end beyond the {bits}-bit guest \
         physical address space, use at most {max:#x} bytes"
    )]
    TooLarge {
        /// Requested bytes.
        size: u64,
        /// Address width.
        bits: u32,
        /// Largest accepted size.
        max: u64,
    },
    /// The planner could not place the RAM around the excluded ranges.
    #[error("{0}")]
    Plan(MemoryMapError),
    /// A host range takes the low RAM the boot structures need.
    #[error("guest RAM must start at address 0 (boot structures and the kernel live in the first {min} MiB), but {0} blocks it; pass through a different device", min = MIN_MEM_SIZE / MIB)]
    LowRamBlocked(String),
    /// The requested memory is not a whole number of pages.
    #[error("guest memory size {size:#x} is not a multiple of 4 KiB; round it to whole pages")]
    Unaligned {
        /// Requested bytes.
        size: u64,
    },
}

/// Places `mem_size` bytes of RAM around the 32-bit MMIO hole: RAM from 0 up to
/// [`MMIO32_START`], the rest from [`HIGH_RAM_START`].
///
/// `mem_size` must be a multiple of 4 KiB, at least [`MIN_MEM_SIZE`], and the RAM must end
/// below [`GUEST_PHYS_LIMIT`].
pub fn ram_regions(mem_size: u64) -> Result<Vec<RamRegion>, LayoutError> {
    Ok(plan_ram(mem_size, Vec::new())?.0)
}

/// The planner request for this layout: RAM anywhere below [`GUEST_PHYS_LIMIT`] except the
/// 32-bit MMIO hole, plus the host ranges of the devices to be passed through.
pub fn memory_map_request(mem_size: u64, devices: Vec<DeviceRanges>) -> MemoryMapRequest {
    MemoryMapRequest {
        ram_size: mem_size,
        page_size: PAGE_SIZE,
        base: 0,
        limit: GUEST_PHYS_LIMIT.0 - 1,
        // MMIO32_START < HIGH_RAM_START (checked at compile time above), so new() is Some.
        fixed_windows: IovaRange::new(MMIO32_START.0, HIGH_RAM_START.0 - 1)
            .map(|r| NamedRange::new(r, "x86 32-bit MMIO hole (PCI, ECAM, IOAPIC, LAPIC)"))
            .into_iter()
            .collect(),
        devices,
    }
}

/// Places `mem_size` bytes of RAM with the passthrough planner, avoiding the MMIO hole and
/// every range in `devices`; returns the regions and the plan (for printing).
///
/// The boot structures and the kernel need RAM from 0 to [`MIN_MEM_SIZE`]; a device range
/// that takes it away is an error naming the range.
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
    if mem_size & (PAGE_SIZE - 1) != 0 {
        return Err(LayoutError::Unaligned { size: mem_size });
    }
    let max = MMIO32_START.0 + (GUEST_PHYS_LIMIT.0 - HIGH_RAM_START.0);
    if mem_size > max {
        return Err(LayoutError::TooLarge {
            size: mem_size,
            bits: GUEST_PHYS_ADDR_BITS,
            max,
        });
    }
    let map = plan(&memory_map_request(mem_size, devices)).map_err(LayoutError::Plan)?;
    let regions = RamRegion::from_plan(&map);
    match regions.first() {
        Some(r) if r.start.0 == 0 && r.size >= MIN_MEM_SIZE => Ok((regions, map)),
        _ => Err(LayoutError::LowRamBlocked(
            map.excluded
                .iter()
                .find(|e| e.range.first_raw() < MIN_MEM_SIZE)
                .map(|e| {
                    format!(
                        "{:#x}-{:#x} ({})",
                        e.range.first_raw(),
                        e.range.last_raw(),
                        e.why
                    )
                })
                .unwrap_or_else(|| "an excluded range".to_string()),
        )),
    }
}

/// Type of an E820 range, with the BIOS numbering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Kind {
    /// Usable RAM.
    Ram = 1,
    /// Reserved: the OS must not use it as RAM nor place devices there.
    Reserved = 2,
}

/// One entry of the BIOS E820 memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range is.
    pub kind: E820Kind,
}

impl E820Entry {
    /// End (exclusive) of the entry.
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }
}

/// Ranges reported reserved whatever the RAM layout, and why:
/// - EBDA..1 MiB: the legacy EBDA, VGA and BIOS area, as every PC BIOS reports it; Linux
///   scans 0xE0000..0xFFFFF for the ACPI RSDP and keeps its hands off this range.
/// - ECAM: Linux only trusts an MMCONFIG region (from ACPI MCFG) that is reserved in E820 or
///   in ACPI motherboard resources; without this, PCI falls back to port I/O config access.
/// - KVM identity map + TSS: private KVM memory; reserving it (as QEMU/SeaBIOS do) stops the
///   guest from placing PCI BARs over it.
///
/// LAPIC and IOAPIC are not listed: like Firecracker, cloud-hypervisor and QEMU, we leave them
/// to the guest, which claims them from the MP table / MADT.
const FIXED_RESERVED: [(u64, u64); 3] = [
    (EBDA_START.0, HIMEM_START.0),
    (ECAM_START.0, ECAM_START.0 + ECAM_SIZE),
    (
        KVM_IDENTITY_MAP_START.0,
        KVM_IDENTITY_MAP_START.0 + KVM_PRIVATE_SIZE,
    ),
];

/// Derives the E820 map from the guest RAM regions.
///
/// `ram` may be any list of non-overlapping regions (e.g. one that skips host-reserved
/// ranges), not only the output of [`ram_regions`]. The result is sorted by address and
/// non-overlapping: RAM overlapping a reserved range (see `FIXED_RESERVED`) loses that part,
/// touching RAM ranges are merged, and empty regions are dropped.
pub fn e820_entries(ram: &[RamRegion]) -> Vec<E820Entry> {
    let mut ram_ranges: Vec<(u64, u64)> = ram
        .iter()
        .filter(|r| r.size > 0)
        .map(|r| (r.start.0, r.end()))
        .collect();
    for &(rs, re) in FIXED_RESERVED.iter() {
        ram_ranges = ram_ranges
            .into_iter()
            .flat_map(|(s, e)| {
                let below = (s, e.min(rs));
                let above = (s.max(re), e);
                [below, above]
            })
            .filter(|&(s, e)| s < e)
            .collect();
    }

    let mut all: Vec<E820Entry> = ram_ranges
        .into_iter()
        .map(|(s, e)| E820Entry {
            addr: s,
            size: e - s,
            kind: E820Kind::Ram,
        })
        .chain(FIXED_RESERVED.iter().map(|&(s, e)| E820Entry {
            addr: s,
            size: e - s,
            kind: E820Kind::Reserved,
        }))
        .collect();
    all.sort_by_key(|e| e.addr);

    let mut merged: Vec<E820Entry> = Vec::with_capacity(all.len());
    for entry in all {
        match merged.last_mut() {
            Some(last) if last.kind == entry.kind && last.end() == entry.addr => {
                last.size += entry.size;
            }
            _ => merged.push(entry),
        }
    }
    merged
}

/// KiB of RAM starting at address 0 and below [`EBDA_START`] (multiboot `mem_lower`).
pub fn mem_lower_kib(e820: &[E820Entry]) -> u64 {
    e820.iter()
        .find(|e| e.kind == E820Kind::Ram && e.addr == 0)
        .map_or(0, |e| e.end().min(EBDA_START.0) / KIB)
}

/// KiB of contiguous RAM starting at [`HIMEM_START`] (multiboot `mem_upper`).
pub fn mem_upper_kib(e820: &[E820Entry]) -> u64 {
    e820.iter()
        .find(|e| e.kind == E820Kind::Ram && e.addr <= HIMEM_START.0 && e.end() > HIMEM_START.0)
        .map_or(0, |e| (e.end() - HIMEM_START.0) / KIB)
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

    fn ram(addr: u64, size: u64) -> E820Entry {
        E820Entry {
            addr,
            size,
            kind: E820Kind::Ram,
        }
    }

    fn reserved(addr: u64, size: u64) -> E820Entry {
        E820Entry {
            addr,
            size,
            kind: E820Kind::Reserved,
        }
    }

    /// The reserved entries every map ends with when no RAM overlaps them.
    fn fixed_hole_entries() -> [E820Entry; 2] {
        [
            reserved(0xE000_0000, 0x1000_0000),
            reserved(0xFEFF_C000, 0x4000),
        ]
    }

    #[test]
    fn ram_regions_below_the_hole() {
        assert_eq!(ram_regions(64 * MIB).unwrap(), vec![region(0, 64 * MIB)]);
        assert_eq!(ram_regions(256 * MIB).unwrap(), vec![region(0, 256 * MIB)]);
        assert_eq!(
            ram_regions(3 * GIB - PAGE_SIZE).unwrap(),
            vec![region(0, 3 * GIB - PAGE_SIZE)]
        );
        assert_eq!(ram_regions(MIN_MEM_SIZE).unwrap(), vec![region(0, 2 * MIB)]);
    }

    #[test]
    fn ram_regions_exactly_three_gib_has_no_high_part() {
        assert_eq!(ram_regions(3 * GIB).unwrap(), vec![region(0, 3 * GIB)]);
    }

    #[test]
    fn ram_regions_split_around_the_hole() {
        assert_eq!(
            ram_regions(3 * GIB + PAGE_SIZE).unwrap(),
            vec![region(0, 3 * GIB), region(4 * GIB, PAGE_SIZE)]
        );
        assert_eq!(
            ram_regions(5 * GIB).unwrap(),
            vec![region(0, 3 * GIB), region(4 * GIB, 2 * GIB)]
        );
    }

    #[test]
    fn ram_regions_rejects_bad_sizes() {
        assert_eq!(
            ram_regions(0),
            Err(LayoutError::TooSmall { size: 0, min: 2 })
        );
        assert_eq!(
            ram_regions(MIN_MEM_SIZE - PAGE_SIZE),
            Err(LayoutError::TooSmall {
                size: MIN_MEM_SIZE - PAGE_SIZE,
                min: 2
            })
        );
        assert_eq!(
            ram_regions(64 * MIB + 1),
            Err(LayoutError::Unaligned { size: 64 * MIB + 1 })
        );
        let max = (1u64 << 46) - GIB;
        let top = ram_regions(max).unwrap();
        assert_eq!(top[1].end(), 1 << 46);
        assert_eq!(
            ram_regions(max + PAGE_SIZE),
            Err(LayoutError::TooLarge {
                size: max + PAGE_SIZE,
                bits: 46,
                max
            })
        );
        assert!(ram_regions(u64::MAX - 0xfff).is_err());
    }

    #[test]
    fn layout_errors_say_what_to_do() {
        let msg = ram_regions(MIB).unwrap_err().to_string();
        assert!(msg.contains("at least 2 MiB"), "{msg}");
        let msg = ram_regions(3 * MIB + 5).unwrap_err().to_string();
        assert!(msg.contains("multiple of 4 KiB"), "{msg}");
    }

    #[test]
    fn e820_single_low_region() {
        let e820 = e820_entries(&ram_regions(64 * MIB).unwrap());
        let mut expected = vec![
            ram(0, 0x9FC00),
            reserved(0x9FC00, 0x100000 - 0x9FC00),
            ram(0x100000, 64 * MIB - 0x100000),
        ];
        expected.extend(fixed_hole_entries());
        assert_eq!(e820, expected);
        assert_eq!(mem_lower_kib(&e820), 639);
        assert_eq!(mem_upper_kib(&e820), 63 * 1024);
    }

    #[test]
    fn e820_two_regions() {
        let e820 = e820_entries(&ram_regions(5 * GIB).unwrap());
        assert_eq!(e820.len(), 6);
        assert_eq!(e820[0], ram(0, 0x9FC00));
        assert_eq!(e820[1], reserved(0x9FC00, 0x400 + 0x60000));
        assert_eq!(e820[2], ram(0x100000, 3 * GIB - 0x100000));
        assert_eq!(e820[3], reserved(0xE000_0000, 0x1000_0000));
        assert_eq!(e820[4], reserved(0xFEFF_C000, 0x4000));
        assert_eq!(e820[5], ram(4 * GIB, 2 * GIB));
        assert_eq!(mem_upper_kib(&e820), (3 * GIB - MIB) / KIB);
    }

    #[test]
    fn e820_three_regions_with_host_holes() {
        // Low RAM stops at 2 GiB and restarts after a host-reserved range; input unsorted.
        let regions = [
            region(8 * GIB, GIB),
            region(0, 2 * GIB),
            region(2 * GIB + 64 * MIB, 512 * MIB),
        ];
        let e820 = e820_entries(&regions);
        assert_eq!(e820.len(), 7);
        assert_eq!(e820[0], ram(0, 0x9FC00));
        assert_eq!(e820[1], reserved(0x9FC00, 0x60400));
        assert_eq!(e820[2], ram(MIB, 2 * GIB - MIB));
        assert_eq!(e820[3], ram(2 * GIB + 64 * MIB, 512 * MIB));
        assert_eq!(e820[4], reserved(0xE000_0000, 0x1000_0000));
        assert_eq!(e820[5], reserved(0xFEFF_C000, 0x4000));
        assert_eq!(e820[6], ram(8 * GIB, GIB));
        assert_eq!(mem_upper_kib(&e820), (2 * GIB - MIB) / KIB);
    }

    #[test]
    fn e820_clips_ram_overlapping_reserved_and_merges_neighbours() {
        // RAM that runs into ECAM is cut; touching regions merge; empty regions vanish.
        let regions = [
            region(0, MIB),
            region(MIB, 15 * MIB),
            region(0x2000_0000, 0),
            region(0xD000_0000, 0x3000_0000),
        ];
        let e820 = e820_entries(&regions);
        assert_eq!(
            e820,
            vec![
                ram(0, 0x9FC00),
                reserved(0x9FC00, 0x60400),
                ram(MIB, 15 * MIB),
                ram(0xD000_0000, 0x1000_0000),
                reserved(0xE000_0000, 0x1000_0000),
                ram(0xF000_0000, 0xEFF_C000),
                reserved(0xFEFF_C000, 0x4000),
                ram(0xFF00_0000, 0x100_0000),
            ]
        );
    }

    #[test]
    fn e820_without_low_ram_still_reports_the_bios_area() {
        let e820 = e820_entries(&[region(16 * MIB, 16 * MIB)]);
        assert_eq!(e820[0], reserved(0x9FC00, 0x60400));
        assert_eq!(e820[1], ram(16 * MIB, 16 * MIB));
        assert_eq!(mem_lower_kib(&e820), 0);
        assert_eq!(mem_upper_kib(&e820), 0);
    }
}
