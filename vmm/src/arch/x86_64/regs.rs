//! Boot-time register state of the boot vCPU: GDT, identity page tables, segment and control
//! registers for the two entry modes the loaders produce (64-bit Linux, 32-bit multiboot).
//!
//! Application processors are not set up here: with the in-kernel LAPIC they wait in
//! `KVM_MP_STATE_UNINITIALIZED` until the guest sends them INIT/SIPI.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::layout::{BOOT_GDT_START, BOOT_IDT_START, PDE_START, PDPTE_START, PML4_START};
use crate::loader::BootEntry;

/// Errors writing boot structures into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Guest RAM does not cover the low boot structures.
    #[error("cannot write the boot {what} at {addr:#x}: guest RAM does not cover it ({source})")]
    Write {
        /// Which structure.
        what: &'static str,
        /// Where.
        addr: u64,
        /// The memory error.
        source: vm_memory::GuestMemoryError,
    },
}

/// GDT selectors. Linux's 64-bit boot protocol wants __BOOT_CS = 0x10 and __BOOT_DS = 0x18;
/// multiboot only asks for flat 32-bit segments, so it gets 0x08.
pub const CODE32_SEL: u16 = 0x08;
/// 64-bit code segment selector.
pub const CODE64_SEL: u16 = 0x10;
/// Flat data segment selector.
pub const DATA_SEL: u16 = 0x18;
/// TSS selector (KVM needs a usable TR on VMX hosts).
pub const TSS_SEL: u16 = 0x20;

/// Stack pointer for the 64-bit entry, below the zero page and clear of the 0x8000 page that
/// multiboot test guests use for their AP trampoline; Linux switches stacks immediately.
const BOOT_STACK_POINTER: u64 = 0x6ff0;
/// EAX value that tells a multiboot kernel a compliant loader started it.
pub const MULTIBOOT_BOOTLOADER_MAGIC: u64 = 0x2BAD_B002;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Builds a GDT descriptor from the 16 flag bits (access byte low, granularity nibble high),
/// base and limit, as the SDM's segment descriptor layout lays them out.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The boot GDT: null, null-ish code32, code64, data, tss (index = selector / 8).
pub const BOOT_GDT: [u64; 5] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff), // 32-bit code, 4 GiB, granular
    gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code (L=1)
    gdt_entry(0xc093, 0, 0xfffff), // data, 4 GiB
    gdt_entry(0x808b, 0, 0xfffff), // busy 32-bit TSS
];

/// Decodes a descriptor back into the form KVM_SET_SREGS takes.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        // With G set the limit counts 4 KiB pages; KVM wants it in bytes.
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: GuestAddress,
    val: T,
) -> Result<(), RegsError> {
    mem.write_obj(val, addr).map_err(|source| RegsError::Write {
        what,
        addr: addr.0,
        source,
    })
}

/// Writes the GDT and an empty IDT into guest memory.
pub fn write_gdt_idt(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, e) in BOOT_GDT.iter().enumerate() {
        write(mem, "GDT", BOOT_GDT_START.unchecked_add(i as u64 * 8), *e)?;
    }
    write(mem, "IDT", BOOT_IDT_START, 0u64)
}

/// Writes identity page tables mapping the first 4 GiB with 2 MiB pages, so the kernel's
/// entry code, boot_params and the LAPIC are all reachable before Linux builds its own.
pub fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    write(mem, "PML4", PML4_START, PDPTE_START.0 | PRESENT_RW)?;
    for i in 0..4u64 {
        let pd = PDE_START.0 + i * 0x1000;
        write(
            mem,
            "PDPT",
            PDPTE_START.unchecked_add(i * 8),
            pd | PRESENT_RW,
        )?;
        for j in 0..512u64 {
            let page = (i * 512 + j) << 21;
            write(
                mem,
                "PD",
                GuestAddress(pd + j * 8),
                page | PRESENT_RW | PAGE_SIZE_2M,
            )?;
        }
    }
    Ok(())
}

/// Special registers for the entry mode: flat 32-bit protected mode without paging for
/// multiboot, long mode with the identity tables for Linux.
pub fn boot_sregs(mut sregs: kvm_sregs, entry: &BootEntry) -> kvm_sregs {
    sregs.gdt.base = BOOT_GDT_START.0;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START.0;
    sregs.idt.limit = 7;

    let data = segment_from_gdt(BOOT_GDT[(DATA_SEL / 8) as usize], DATA_SEL);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(BOOT_GDT[(TSS_SEL / 8) as usize], TSS_SEL);

    match entry {
        BootEntry::Linux64 { .. } => {
            sregs.cs = segment_from_gdt(BOOT_GDT[(CODE64_SEL / 8) as usize], CODE64_SEL);
            sregs.cr3 = PML4_START.0;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootEntry::Multiboot { .. } => {
            sregs.cs = segment_from_gdt(BOOT_GDT[(CODE32_SEL / 8) as usize], CODE32_SEL);
            sregs.cr0 = (sregs.cr0 | X86_CR0_PE | X86_CR0_ET) & !X86_CR0_PG;
            sregs.cr4 &= !X86_CR4_PAE;
            sregs.efer &= !(EFER_LME | EFER_LMA);
        }
    }
    sregs
}

/// General registers at the entry point.
pub fn boot_regs(entry: &BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2, // bit 1 is reserved-one; interrupts off
        ..Default::default()
    };
    match *entry {
        BootEntry::Linux64 { entry, boot_params } => {
            regs.rip = entry.0;
            regs.rsi = boot_params.0;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
        }
        BootEntry::Multiboot { entry, info } => {
            regs.rip = entry.0;
            regs.rax = MULTIBOOT_BOOTLOADER_MAGIC;
            regs.rbx = info.0;
        }
    }
    regs
}

/// FPU state after reset as the SDM gives it (FCW 0x37f, MXCSR 0x1f80).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Whether `mem` covers the low boot structures; used by tests and for a clear early error.
pub fn covers_boot_structures(mem: &GuestMemoryMmap) -> bool {
    mem.address_in_range(PDE_START.unchecked_add(4 * 0x1000 - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn gdt_entries_decode() {
        let cs64 = segment_from_gdt(BOOT_GDT[2], CODE64_SEL);
        assert_eq!(cs64.l, 1);
        assert_eq!(cs64.db, 0);
        assert_eq!(cs64.type_, 0xb);
        assert_eq!(cs64.present, 1);
        assert_eq!(cs64.limit, 0xffff_ffff);
        assert_eq!(cs64.base, 0);
        let cs32 = segment_from_gdt(BOOT_GDT[1], CODE32_SEL);
        assert_eq!((cs32.l, cs32.db, cs32.g, cs32.s), (0, 1, 1, 1));
        let ds = segment_from_gdt(BOOT_GDT[3], DATA_SEL);
        assert_eq!((ds.type_, ds.db, ds.limit), (0x3, 1, 0xffff_ffff));
        let tr = segment_from_gdt(BOOT_GDT[4], TSS_SEL);
        assert_eq!((tr.type_, tr.s), (0xb, 0));
    }

    #[test]
    fn gdt_entry_matches_sdm_layout() {
        // Flat 4 GiB 32-bit code: the canonical 0x00cf9b000000ffff.
        assert_eq!(gdt_entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(
            gdt_entry(0x0093, 0x1234_5678, 0xabcd),
            0x1200_9334_5678_abcd
        );
    }

    #[test]
    fn page_tables_identity_map_4g() {
        let m = mem();
        write_identity_page_tables(&m).unwrap();
        let pml4: u64 = m.read_obj(PML4_START).unwrap();
        assert_eq!(pml4, PDPTE_START.0 | 3);
        for i in 0..4u64 {
            let pdpte: u64 = m.read_obj(PDPTE_START.unchecked_add(i * 8)).unwrap();
            assert_eq!(pdpte, (PDE_START.0 + i * 0x1000) | 3);
        }
        // The LAPIC page (0xfee00000) must be mapped 1:1.
        let idx = 0xfee0_0000u64 >> 21;
        let pde: u64 = m.read_obj(PDE_START.unchecked_add(idx * 8)).unwrap();
        assert_eq!(pde & !0xfff, 0xfee0_0000);
        assert_eq!(pde & 0x83, 0x83);
    }

    #[test]
    fn boot_structures_need_ram() {
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x8000)]).unwrap();
        assert!(!covers_boot_structures(&small));
        assert!(write_identity_page_tables(&small).is_err());
        assert!(covers_boot_structures(&mem()));
    }

    #[test]
    fn multiboot_entry_state() {
        let e = BootEntry::Multiboot {
            entry: GuestAddress(0x10_0040),
            info: GuestAddress(0x1000),
        };
        let s = boot_sregs(kvm_sregs::default(), &e);
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.cr0 & X86_CR0_PE, 1);
        assert_eq!(s.efer & EFER_LME, 0);
        assert_eq!(s.cs.selector, CODE32_SEL);
        assert_eq!(s.cs.db, 1);
        let r = boot_regs(&e);
        assert_eq!(
            (r.rip, r.rax, r.rbx, r.rflags),
            (0x10_0040, 0x2bad_b002, 0x1000, 2)
        );
    }

    #[test]
    fn linux_entry_state() {
        let e = BootEntry::Linux64 {
            entry: GuestAddress(0x100_0200),
            boot_params: GuestAddress(0x7000),
        };
        let s = boot_sregs(kvm_sregs::default(), &e);
        assert_eq!(s.cr3, PML4_START.0);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cs.selector, CODE64_SEL);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.ds.selector, DATA_SEL);
        let r = boot_regs(&e);
        assert_eq!((r.rip, r.rsi), (0x100_0200, 0x7000));
    }
}
