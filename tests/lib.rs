//! Helpers shared by the integration tests: the in-tree test guests and small hand-built
//! kernel images for negative tests, and the API description's reader ([`openapi`]).

pub mod openapi;

/// The tiny x86_64 test guest as a multiboot ELF64 image (built by this crate's build.rs).
#[cfg(target_arch = "x86_64")]
pub const TINY_GUEST_ELF64: &str = env!("TINY_GUEST_ELF64");
/// The same guest as a multiboot ELF32 image.
#[cfg(target_arch = "x86_64")]
pub const TINY_GUEST_ELF32: &str = env!("TINY_GUEST_ELF32");

/// A multiboot v1 ELF32 kernel linked with plain `ld -m elf_i386 -Ttext 0x100000`, whose
/// first LOAD segment (the ELF headers) sits at 0xff000; it exits with code 21.
#[cfg(target_arch = "x86_64")]
pub const PLAIN_MULTIBOOT_ELF: &str = env!("PLAIN_MULTIBOOT_ELF");

/// A minimal multiboot v1 ELF32 image: one PT_LOAD segment at 1 MiB holding the multiboot
/// header followed by `code`, entered at the first byte of `code`.
pub fn multiboot_elf32(code: &[u8]) -> Vec<u8> {
    const LOAD: u32 = 0x10_0000;
    const EHDR: usize = 52;
    const PHDR: usize = 32;
    let off = (EHDR + PHDR) as u32;
    let magic: u32 = 0x1BAD_B002;
    let flags: u32 = 0x2; // ask for memory info
    let checksum = 0u32.wrapping_sub(magic.wrapping_add(flags));
    let mut seg = Vec::new();
    for w in [magic, flags, checksum] {
        seg.extend_from_slice(&w.to_le_bytes());
    }
    seg.extend_from_slice(code);
    let entry = LOAD + 12;

    let mut f = Vec::new();
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 1, 1, 1, 0]);
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&3u16.to_le_bytes()); // EM_386
    f.extend_from_slice(&1u32.to_le_bytes()); // version
    f.extend_from_slice(&entry.to_le_bytes());
    f.extend_from_slice(&(EHDR as u32).to_le_bytes()); // phoff
    f.extend_from_slice(&0u32.to_le_bytes()); // shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // flags
    f.extend_from_slice(&(EHDR as u16).to_le_bytes());
    f.extend_from_slice(&(PHDR as u16).to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes()); // phnum
    f.extend_from_slice(&40u16.to_le_bytes()); // shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // shstrndx
    assert_eq!(f.len(), EHDR);
    for w in [
        1u32,
        off,
        LOAD,
        LOAD,
        seg.len() as u32,
        seg.len() as u32,
        7,
        0x1000,
    ] {
        f.extend_from_slice(&w.to_le_bytes()); // PT_LOAD, offset, vaddr, paddr, filesz, memsz, RWX, align
    }
    f.extend_from_slice(&seg);
    f
}

/// Guest code (32-bit) that halts forever with interrupts off.
pub const CODE_HANG: &[u8] = &[0xfa, 0xf4, 0xeb, 0xfd]; // cli; hlt; jmp -3
/// Guest code that raises #UD with no IDT: a triple fault.
pub const CODE_TRIPLE_FAULT: &[u8] = &[0x0f, 0x0b]; // ud2
/// Guest code that pulses the i8042 reset line: `mov al, 0xfe; out 0x64, al`.
pub const CODE_I8042_RESET: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xf4];

/// A unique scratch path under the system temp dir.
pub fn scratch(name: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "vmm-test-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        name
    ))
}

/// Whether /dev/kvm can be opened read-write; host-KVM tests say why they skip otherwise.
pub fn kvm_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}
