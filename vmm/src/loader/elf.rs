//! A minimal reader for little-endian x86 ELF32/ELF64 executables: the file header and the
//! `PT_LOAD` program headers, which is all a boot loader needs.
//!
//! It only parses and validates; it does not load anything into guest memory and ignores
//! sections, symbols and notes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const PT_LOAD: u32 = 1;
/// `e_machine` of 32-bit x86.
pub const EM_386: u16 = 3;
/// `e_machine` of x86_64.
pub const EM_X86_64: u16 = 62;

const EHDR32_SIZE: usize = 52;
const EHDR64_SIZE: usize = 64;
const PHDR32_SIZE: usize = 32;
const PHDR64_SIZE: usize = 56;

/// Errors reading an ELF executable's headers.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// Reading the file failed.
    #[error("cannot read the ELF headers: {0}")]
    Read(#[source] io::Error),
    /// The headers point past the end of the file.
    #[error("the ELF file is truncated: its {0} lie past the end of the file")]
    Truncated(&'static str),
    /// Not a little-endian file.
    #[error("the ELF file is big-endian; build the kernel for x86")]
    BigEndian,
    /// Neither `ELFCLASS32` nor `ELFCLASS64`.
    #[error("the ELF class byte is {0}, neither 32- nor 64-bit; the file is corrupt")]
    BadClass(u8),
    /// Not an executable.
    #[error("the ELF type is {0}, not an executable (ET_EXEC); link the kernel as an executable")]
    NotExecutable(u16),
    /// Not built for x86.
    #[error("the ELF machine is {0}, not x86 (3) or x86_64 (62); build the kernel for x86")]
    BadMachine(u16),
    /// `e_phentsize` does not match the class.
    #[error("the ELF program header size is {found}, expected {expected}; the file is corrupt")]
    BadPhentsize {
        /// Size in the header.
        found: u16,
        /// Size the class implies.
        expected: usize,
    },
    /// A segment's file size exceeds its memory size, or its addresses overflow.
    #[error("ELF segment {0} has an inconsistent size or address; the file is corrupt")]
    BadSegment(usize),
    /// No `PT_LOAD` segment.
    #[error("the ELF file has no loadable segment")]
    NoSegments,
}

/// Width of an ELF file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfClass {
    /// ELFCLASS32.
    Elf32,
    /// ELFCLASS64.
    Elf64,
}

/// One `PT_LOAD` program header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Offset of the data in the file.
    pub offset: u64,
    /// Virtual address the segment is linked at.
    pub vaddr: u64,
    /// Physical (load) address.
    pub paddr: u64,
    /// Bytes present in the file.
    pub filesz: u64,
    /// Bytes in memory; the tail past `filesz` is zero-filled (bss).
    pub memsz: u64,
}

/// The parts of an ELF executable a loader uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfImage {
    /// 32- or 64-bit.
    pub class: ElfClass,
    /// `e_machine`.
    pub machine: u16,
    /// `e_entry`.
    pub entry: u64,
    /// `PT_LOAD` segments with a non-zero memory size, in file order.
    pub segments: Vec<Segment>,
}

/// Returns the class if `head` starts with an ELF identification, without validating more.
pub fn elf_class(head: &[u8]) -> Option<ElfClass> {
    if head.len() < 16 || head[..4] != ELF_MAGIC {
        return None;
    }
    match head[4] {
        ELFCLASS32 => Some(ElfClass::Elf32),
        ELFCLASS64 => Some(ElfClass::Elf64),
        _ => None,
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from(u32_at(b, off)) | (u64::from(u32_at(b, off + 4)) << 32)
}

fn read_at(
    file: &File,
    file_len: u64,
    off: u64,
    len: usize,
    what: &'static str,
) -> Result<Vec<u8>, ElfError> {
    let end = off
        .checked_add(len as u64)
        .ok_or(ElfError::Truncated(what))?;
    if end > file_len {
        return Err(ElfError::Truncated(what));
    }
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, off).map_err(ElfError::Read)?;
    Ok(buf)
}

/// Reads and validates the ELF header and the `PT_LOAD` program headers of `file`
/// (`file_len` bytes long).
pub fn parse(file: &File, file_len: u64) -> Result<ElfImage, ElfError> {
    let ident = read_at(file, file_len, 0, 16, "identification bytes")?;
    if ident[..4] != ELF_MAGIC {
        return Err(ElfError::Truncated("identification bytes"));
    }
    let class = match ident[4] {
        ELFCLASS32 => ElfClass::Elf32,
        ELFCLASS64 => ElfClass::Elf64,
        other => return Err(ElfError::BadClass(other)),
    };
    if ident[5] != ELFDATA2LSB {
        return Err(ElfError::BigEndian);
    }
    let (ehdr_size, phdr_size) = match class {
        ElfClass::Elf32 => (EHDR32_SIZE, PHDR32_SIZE),
        ElfClass::Elf64 => (EHDR64_SIZE, PHDR64_SIZE),
    };
    let ehdr = read_at(file, file_len, 0, ehdr_size, "file header")?;
    let e_type = u16_at(&ehdr, 16);
    let machine = u16_at(&ehdr, 18);
    if e_type != ET_EXEC {
        return Err(ElfError::NotExecutable(e_type));
    }
    if machine != EM_386 && machine != EM_X86_64 {
        return Err(ElfError::BadMachine(machine));
    }
    let (entry, phoff, phentsize, phnum) = match class {
        ElfClass::Elf32 => (
            u64::from(u32_at(&ehdr, 24)),
            u64::from(u32_at(&ehdr, 28)),
            u16_at(&ehdr, 42),
            u16_at(&ehdr, 44),
        ),
        ElfClass::Elf64 => (
            u64_at(&ehdr, 24),
            u64_at(&ehdr, 32),
            u16_at(&ehdr, 54),
            u16_at(&ehdr, 56),
        ),
    };
    if usize::from(phentsize) != phdr_size {
        return Err(ElfError::BadPhentsize {
            found: phentsize,
            expected: phdr_size,
        });
    }
    let table = read_at(
        file,
        file_len,
        phoff,
        phdr_size * usize::from(phnum),
        "program headers",
    )?;

    let mut segments = Vec::new();
    for (index, ph) in table.chunks_exact(phdr_size).enumerate() {
        if u32_at(ph, 0) != PT_LOAD {
            continue;
        }
        let seg = match class {
            ElfClass::Elf32 => Segment {
                offset: u64::from(u32_at(ph, 4)),
                vaddr: u64::from(u32_at(ph, 8)),
                paddr: u64::from(u32_at(ph, 12)),
                filesz: u64::from(u32_at(ph, 16)),
                memsz: u64::from(u32_at(ph, 20)),
            },
            ElfClass::Elf64 => Segment {
                offset: u64_at(ph, 8),
                vaddr: u64_at(ph, 16),
                paddr: u64_at(ph, 24),
                filesz: u64_at(ph, 32),
                memsz: u64_at(ph, 40),
            },
        };
        if seg.memsz == 0 {
            continue;
        }
        if seg.filesz > seg.memsz || seg.paddr.checked_add(seg.memsz).is_none() {
            return Err(ElfError::BadSegment(index));
        }
        match seg.offset.checked_add(seg.filesz) {
            Some(end) if end <= file_len => {}
            _ => return Err(ElfError::Truncated("segment contents")),
        }
        segments.push(seg);
    }
    if segments.is_empty() {
        return Err(ElfError::NoSegments);
    }
    Ok(ElfImage {
        class,
        machine,
        entry,
        segments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::test_util::{temp_file_with, ElfBuilder};

    fn parse_bytes(bytes: &[u8]) -> Result<ElfImage, ElfError> {
        let tmp = temp_file_with(bytes);
        parse(tmp.as_file(), bytes.len() as u64)
    }

    #[test]
    fn parses_elf32_and_elf64() {
        for class in [ElfClass::Elf32, ElfClass::Elf64] {
            let bytes = ElfBuilder::new(class, 0x10_0010)
                .segment(0x10_0000, 0x10_0000, vec![0xAB; 0x40], 0x80)
                .build();
            assert_eq!(elf_class(&bytes), Some(class));
            let img = parse_bytes(&bytes).unwrap();
            assert_eq!(img.class, class);
            assert_eq!(img.entry, 0x10_0010);
            assert_eq!(img.segments.len(), 1);
            let seg = img.segments[0];
            assert_eq!((seg.paddr, seg.vaddr), (0x10_0000, 0x10_0000));
            assert_eq!((seg.filesz, seg.memsz), (0x40, 0x80));
            assert_eq!(
                bytes[seg.offset as usize..][..0x40],
                [0xAB; 0x40],
                "offset points at the data"
            );
        }
    }

    #[test]
    fn rejects_bad_headers() {
        let good = ElfBuilder::new(ElfClass::Elf64, 0x10_0000)
            .segment(0x10_0000, 0x10_0000, vec![1; 16], 16)
            .build();

        assert!(matches!(
            parse_bytes(&good[..40]),
            Err(ElfError::Truncated("file header"))
        ));
        let mut big = good.clone();
        big[5] = 2;
        assert!(matches!(parse_bytes(&big), Err(ElfError::BigEndian)));
        let mut arm = good.clone();
        arm[18] = 183;
        assert!(matches!(parse_bytes(&arm), Err(ElfError::BadMachine(183))));
        let mut rel = good.clone();
        rel[16] = 1;
        assert!(matches!(parse_bytes(&rel), Err(ElfError::NotExecutable(1))));
        let mut phent = good.clone();
        phent[54] = 32;
        assert!(matches!(
            parse_bytes(&phent),
            Err(ElfError::BadPhentsize { found: 32, .. })
        ));
        // Cut inside the segment data.
        assert!(matches!(
            parse_bytes(&good[..good.len() - 4]),
            Err(ElfError::Truncated("segment contents"))
        ));
    }

    #[test]
    fn rejects_filesz_above_memsz_and_no_segments() {
        let bad = ElfBuilder::new(ElfClass::Elf32, 0x10_0000)
            .segment(0x10_0000, 0x10_0000, vec![1; 32], 16)
            .build();
        assert!(matches!(parse_bytes(&bad), Err(ElfError::BadSegment(0))));
        let empty = ElfBuilder::new(ElfClass::Elf32, 0x10_0000).build();
        assert!(matches!(parse_bytes(&empty), Err(ElfError::NoSegments)));
    }
}
