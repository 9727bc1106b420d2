//! Builders of fake kernel images and guest memory for the loader unit tests.

use std::io::Write;

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempfile::TempFile;

use super::elf::ElfClass;
use crate::arch::x86_64::layout::{ram_regions, RamRegion};

/// Loads `kernel` (and `initrd`) into `mem` as the VMM does.
pub fn boot(
    mem: &GuestMemoryMmap,
    kernel: &std::path::Path,
    initrd: Option<&std::path::Path>,
    cmdline: &str,
    ram: &[RamRegion],
) -> Result<super::BootEntry, super::LoaderError> {
    super::load_kernel(
        mem,
        &super::BootConfig {
            kernel,
            initrd,
            cmdline,
            ram,
        },
    )
}

/// A temporary file holding `bytes`, removed on drop.
pub fn temp_file_with(bytes: &[u8]) -> TempFile {
    let tmp = TempFile::new_with_prefix(std::env::temp_dir().join("vmm-loader-test"))
        .expect("create temp file");
    tmp.as_file().write_all(bytes).expect("write temp file");
    tmp
}

/// Guest memory of `size` bytes laid out as the VMM does, plus its RAM regions.
pub fn guest_mem(size: u64) -> (GuestMemoryMmap, Vec<RamRegion>) {
    let ram = ram_regions(size).expect("valid size");
    let ranges: Vec<(GuestAddress, usize)> =
        ram.iter().map(|r| (r.start, r.size as usize)).collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).expect("mmap guest memory");
    (mem, ram)
}

/// A multiboot v1 header with a valid checksum; `kludge` adds the five address fields.
pub fn multiboot_header(flags: u32, kludge: Option<[u32; 5]>) -> Vec<u8> {
    let magic: u32 = 0x1BAD_B002;
    let checksum = 0u32.wrapping_sub(magic).wrapping_sub(flags);
    let mut v = Vec::new();
    for word in [magic, flags, checksum]
        .into_iter()
        .chain(kludge.into_iter().flatten())
    {
        v.extend_from_slice(&word.to_le_bytes());
    }
    v
}

struct FakeSegment {
    paddr: u64,
    vaddr: u64,
    data: Vec<u8>,
    memsz: u64,
}

/// Builds an ELF executable with `PT_LOAD` segments whose data follows the program headers.
pub struct ElfBuilder {
    class: ElfClass,
    entry: u64,
    segments: Vec<FakeSegment>,
}

impl ElfBuilder {
    /// An image of `class` with entry point `entry` and no segments yet.
    pub fn new(class: ElfClass, entry: u64) -> Self {
        ElfBuilder {
            class,
            entry,
            segments: Vec::new(),
        }
    }

    /// Adds a `PT_LOAD` segment; `memsz` is written as given, even if below `data.len()`.
    pub fn segment(mut self, paddr: u64, vaddr: u64, data: Vec<u8>, memsz: u64) -> Self {
        self.segments.push(FakeSegment {
            paddr,
            vaddr,
            data,
            memsz,
        });
        self
    }

    /// File offset of the first segment's data.
    pub fn first_data_offset(&self) -> usize {
        let (eh, ph) = self.sizes();
        eh + ph * self.segments.len()
    }

    fn sizes(&self) -> (usize, usize) {
        match self.class {
            ElfClass::Elf32 => (52, 32),
            ElfClass::Elf64 => (64, 56),
        }
    }

    /// The file bytes.
    pub fn build(&self) -> Vec<u8> {
        let (eh, ph) = self.sizes();
        let is64 = self.class == ElfClass::Elf64;
        let mut out = vec![0u8; eh];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = if is64 { 2 } else { 1 };
        out[5] = 1; // little-endian
        out[6] = 1; // EV_CURRENT
        out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        let machine: u16 = if is64 { 62 } else { 3 };
        out[18..20].copy_from_slice(&machine.to_le_bytes());
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        let phnum = self.segments.len() as u16;
        if is64 {
            out[24..32].copy_from_slice(&self.entry.to_le_bytes());
            out[32..40].copy_from_slice(&(eh as u64).to_le_bytes());
            out[52..54].copy_from_slice(&(eh as u16).to_le_bytes());
            out[54..56].copy_from_slice(&(ph as u16).to_le_bytes());
            out[56..58].copy_from_slice(&phnum.to_le_bytes());
        } else {
            out[24..28].copy_from_slice(&(self.entry as u32).to_le_bytes());
            out[28..32].copy_from_slice(&(eh as u32).to_le_bytes());
            out[40..42].copy_from_slice(&(eh as u16).to_le_bytes());
            out[42..44].copy_from_slice(&(ph as u16).to_le_bytes());
            out[44..46].copy_from_slice(&phnum.to_le_bytes());
        }
        let mut offset = self.first_data_offset() as u64;
        for seg in &self.segments {
            let filesz = seg.data.len() as u64;
            if is64 {
                let mut p = vec![0u8; ph];
                p[0..4].copy_from_slice(&1u32.to_le_bytes());
                p[4..8].copy_from_slice(&7u32.to_le_bytes());
                for (i, v) in [offset, seg.vaddr, seg.paddr, filesz, seg.memsz, 0x1000]
                    .into_iter()
                    .enumerate()
                {
                    p[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(&p);
            } else {
                for v in [
                    1, offset, seg.vaddr, seg.paddr, filesz, seg.memsz, 7, 0x1000,
                ] {
                    out.extend_from_slice(&(v as u32).to_le_bytes());
                }
            }
            offset += filesz;
        }
        for seg in &self.segments {
            out.extend_from_slice(&seg.data);
        }
        out
    }
}

/// Parameters of a fake bzImage: a setup area and a payload, with the fields Linux's
/// `arch/x86/boot/header.S` puts in the setup header.
pub struct BzImageBuilder {
    /// Setup sectors after the boot sector.
    pub setup_sects: u8,
    /// Boot protocol version.
    pub version: u16,
    /// `loadflags`.
    pub loadflags: u8,
    /// `xloadflags`.
    pub xloadflags: u16,
    /// `initrd_addr_max`.
    pub initrd_addr_max: u32,
    /// `cmdline_size`.
    pub cmdline_size: u32,
    /// `pref_address`.
    pub pref_address: u64,
    /// `init_size`.
    pub init_size: u32,
    /// The protected-mode payload.
    pub payload: Vec<u8>,
}

impl Default for BzImageBuilder {
    fn default() -> Self {
        BzImageBuilder {
            setup_sects: 4,
            version: 0x020f,
            loadflags: 0x01,
            xloadflags: 0x03,
            initrd_addr_max: 0x7fff_ffff,
            cmdline_size: 2047,
            pref_address: 0x100_0000,
            init_size: 0x80_0000,
            payload: (0..0x3000u32).map(|i| (i * 7) as u8).collect(),
        }
    }
}

impl BzImageBuilder {
    /// The file bytes.
    pub fn build(&self) -> Vec<u8> {
        let setup_len = (usize::from(self.setup_sects) + 1) * 512;
        let mut out = vec![0u8; setup_len];
        let put = |out: &mut Vec<u8>, off: usize, bytes: &[u8]| {
            out[off..off + bytes.len()].copy_from_slice(bytes)
        };
        put(&mut out, 0x1f1, &[self.setup_sects]);
        put(&mut out, 0x1fe, &0xAA55u16.to_le_bytes());
        put(&mut out, 0x202, b"HdrS");
        put(&mut out, 0x206, &self.version.to_le_bytes());
        put(&mut out, 0x211, &[self.loadflags]);
        put(&mut out, 0x214, &0x10_0000u32.to_le_bytes()); // code32_start
        put(&mut out, 0x22c, &self.initrd_addr_max.to_le_bytes());
        put(&mut out, 0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
        put(&mut out, 0x234, &[1]); // relocatable_kernel
        put(&mut out, 0x236, &self.xloadflags.to_le_bytes());
        put(&mut out, 0x238, &self.cmdline_size.to_le_bytes());
        put(&mut out, 0x258, &self.pref_address.to_le_bytes());
        put(&mut out, 0x260, &self.init_size.to_le_bytes());
        out.extend_from_slice(&self.payload);
        out
    }
}
