//! Multiboot v1 (GNU Multiboot Specification 0.6.96): finds the header, loads the image from
//! its ELF32/ELF64 program headers (or from the header's address fields, the "a.out kludge"),
//! and builds the multiboot information structure with memory sizes, command line, the initrd
//! as module 0, the memory map and the boot loader name.
//!
//! Not provided: video modes (header flag 2), boot device, symbol tables, drives, APM, VBE and
//! framebuffer information. Kernels that require them are refused with an error.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap};

mod info;

use super::elf::{self, ElfImage};
use super::{
    align_up, check_cmdline, in_ram, write_guest, BootConfig, BootEntry, Initrd, LoaderError,
};
use crate::arch::x86_64::layout::{
    e820_entries, E820Entry, BOOT_GDT_START, BOOT_IDT_START, CMDLINE_MAX_SIZE, CMDLINE_START,
    HIMEM_START, MULTIBOOT_INFO_END, MULTIBOOT_INFO_START, PAGE_SIZE,
};
use crate::arch::x86_64::mptable;

/// Magic value that starts a multiboot v1 header.
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// The header must lie entirely within this many bytes from the start of the file.
const HEADER_SEARCH_LIMIT: usize = 8192;
/// Header flag 0: align modules on page boundaries (we always do).
const HF_PAGE_ALIGN: u32 = 1 << 0;
/// Header flag 1: provide memory information (we always do).
const HF_MEMORY_INFO: u32 = 1 << 1;
/// Header flag 2: provide a video mode table (unsupported).
const HF_VIDEO_MODE: u32 = 1 << 2;
/// Header flag 16: the address fields are valid and override the executable format.
const HF_AOUT_KLUDGE: u32 = 1 << 16;
/// Flags 0-15 are requirements the loader must honour or refuse the image.
const HF_REQUIRED_MASK: u32 = 0xFFFF;

const FOUR_GIB: u64 = 1 << 32;

/// Errors specific to multiboot kernels.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MultibootError {
    /// A magic value was found but no header checksum matched.
    #[error(
        "the multiboot header at offset {0:#x} has a bad checksum (magic + flags + checksum must \
         be 0); fix the kernel's multiboot header"
    )]
    BadChecksum(usize),
    /// Header flag 2 (video mode) is set.
    #[error(
        "the multiboot header requires a video mode (flag 2), but this VMM has no display; \
         drop MULTIBOOT_VIDEO_MODE from the kernel's header flags"
    )]
    VideoMode,
    /// Unknown required flags.
    #[error(
        "the multiboot header requires unsupported features (flags {0:#x} in bits 0-15); only \
         bits 0 and 1 are supported"
    )]
    UnsupportedFlags(u32),
    /// Flag 16 set but the header is cut off.
    #[error(
        "the multiboot header sets flag 16 but its address fields lie past 8 KiB or the file end"
    )]
    HeaderTruncated,
    /// Inconsistent a.out kludge addresses.
    #[error(
        "the multiboot header's address fields are inconsistent ({0}); fix the kernel's header"
    )]
    BadAddresses(&'static str),
    /// Neither ELF nor the a.out kludge.
    #[error(
        "the kernel has a multiboot header but is not ELF and does not set flag 16 (address \
         fields); link it as ELF or fill in the header's address fields"
    )]
    NoAddressInfo,
    /// A segment outside usable RAM.
    #[error(
        "a kernel segment needs guest RAM at {addr:#x}..{end:#x}, which is neither usable RAM \
         between 1 MiB and 4 GiB nor guest memory below 1 MiB; give the VM more memory or link \
         the kernel at 1 MiB or above"
    )]
    SegmentOutsideRam {
        /// Load address.
        addr: u64,
        /// End (exclusive).
        end: u64,
    },
    /// A segment below 1 MiB would overwrite what the VMM itself places there.
    #[error(
        "a kernel segment at {addr:#x}..{end:#x} overlaps the {what} the VMM places at \
         {area_start:#x}..{area_end:#x}; link the kernel at 1 MiB or above"
    )]
    SegmentOverlapsBootData {
        /// Load address.
        addr: u64,
        /// End (exclusive).
        end: u64,
        /// What the VMM keeps there.
        what: &'static str,
        /// Start of the VMM's area.
        area_start: u64,
        /// End of the VMM's area (exclusive).
        area_end: u64,
    },
    /// The entry point is not reachable in 32-bit mode.
    #[error("the kernel entry point {0:#x} is above 4 GiB; a multiboot entry must be 32-bit")]
    EntryAbove4G(u64),
    /// The information structure overflows its area.
    #[error(
        "the multiboot information needs {needed} bytes but only {max} fit; use a shorter initrd \
         file name or fewer memory regions"
    )]
    InfoTooLarge {
        /// Bytes required.
        needed: usize,
        /// Bytes available.
        max: usize,
    },
}

fn mb_err(cfg: &BootConfig, source: MultibootError) -> LoaderError {
    LoaderError::Multiboot {
        path: cfg.kernel.to_path_buf(),
        source,
    }
}

/// Address fields of a header with flag 16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AoutKludge {
    /// Physical address of the header itself.
    pub header_addr: u32,
    /// Physical address of the start of the text segment.
    pub load_addr: u32,
    /// End of the data loaded from the file (0: to the end of the file).
    pub load_end_addr: u32,
    /// End of the bss (0: no bss).
    pub bss_end_addr: u32,
    /// Entry point.
    pub entry_addr: u32,
}

/// A valid multiboot v1 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// File offset of the magic.
    pub offset: usize,
    /// Header flags.
    pub flags: u32,
    /// Address fields, if flag 16 is set.
    pub kludge: Option<AoutKludge>,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let bytes = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Looks for a multiboot header in `head` (the first bytes of the file): `None` if there is no
/// magic at a 4-byte-aligned offset in the first 8 KiB, an error if the first header whose
/// checksum matches cannot be honoured or if no checksum matches.
pub fn find_header(head: &[u8]) -> Option<Result<Header, MultibootError>> {
    let head = &head[..head.len().min(HEADER_SEARCH_LIMIT)];
    let mut bad_checksum = None;
    for offset in (0..head.len().saturating_sub(11)).step_by(4) {
        if u32_at(head, offset) != Some(HEADER_MAGIC) {
            continue;
        }
        let (Some(flags), Some(checksum)) = (u32_at(head, offset + 4), u32_at(head, offset + 8))
        else {
            continue;
        };
        if HEADER_MAGIC.wrapping_add(flags).wrapping_add(checksum) != 0 {
            bad_checksum.get_or_insert(offset);
            continue;
        }
        return Some(parse_header(head, offset, flags));
    }
    bad_checksum.map(|offset| Err(MultibootError::BadChecksum(offset)))
}

fn parse_header(head: &[u8], offset: usize, flags: u32) -> Result<Header, MultibootError> {
    let unsupported = flags & HF_REQUIRED_MASK & !(HF_PAGE_ALIGN | HF_MEMORY_INFO);
    if unsupported & HF_VIDEO_MODE != 0 {
        return Err(MultibootError::VideoMode);
    }
    if unsupported != 0 {
        return Err(MultibootError::UnsupportedFlags(unsupported));
    }
    let kludge = if flags & HF_AOUT_KLUDGE != 0 {
        let field =
            |i: usize| u32_at(head, offset + 12 + 4 * i).ok_or(MultibootError::HeaderTruncated);
        Some(AoutKludge {
            header_addr: field(0)?,
            load_addr: field(1)?,
            load_end_addr: field(2)?,
            bss_end_addr: field(3)?,
            entry_addr: field(4)?,
        })
    } else {
        None
    };
    Ok(Header {
        offset,
        flags,
        kludge,
    })
}

/// Loads a kernel with multiboot `header` and returns its 32-bit entry.
pub(super) fn load(
    mem: &GuestMemoryMmap,
    cfg: &BootConfig,
    file: &File,
    file_len: u64,
    header: &Header,
    is_elf: bool,
) -> Result<BootEntry, LoaderError> {
    let e820 = e820_entries(cfg.ram);
    let (entry, kernel_end) = match header.kludge {
        Some(k) => load_kludge(mem, cfg, file, file_len, header.offset, &k, &e820)?,
        None if is_elf => {
            let image = elf::parse(file, file_len).map_err(|source| LoaderError::Elf {
                path: cfg.kernel.to_path_buf(),
                source,
            })?;
            load_elf(mem, cfg, file, &image, &e820)?
        }
        None => return Err(mb_err(cfg, MultibootError::NoAddressInfo)),
    };
    if entry >= FOUR_GIB {
        return Err(mb_err(cfg, MultibootError::EntryAbove4G(entry)));
    }

    check_cmdline(cfg.cmdline, CMDLINE_MAX_SIZE as usize)?;
    let mut cmdline = cfg.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    write_guest(mem, "command line", CMDLINE_START.0, &cmdline)?;

    let module = match cfg.initrd {
        Some(path) => {
            let mut initrd = Initrd::open(path)?;
            let low = align_up(kernel_end, PAGE_SIZE).unwrap_or(u64::MAX);
            let addr = initrd.place(&e820, low, FOUR_GIB - 1, false)?;
            initrd.load(mem, addr)?;
            let name = path
                .file_name()
                .unwrap_or(path.as_os_str())
                .to_string_lossy()
                .into_owned();
            Some((addr, initrd.size, name))
        }
        None => None,
    };

    let area = info::build_info(&e820, module.as_ref().map(|(a, s, n)| (*a, *s, n.as_str())))
        .map_err(|e| mb_err(cfg, e))?;
    write_guest(mem, "multiboot information", MULTIBOOT_INFO_START.0, &area)?;
    Ok(BootEntry::Multiboot {
        entry: GuestAddress(entry),
        info: MULTIBOOT_INFO_START,
    })
}

/// Loads the `PT_LOAD` segments at their physical addresses; returns (entry, end of image).
/// An entry inside a segment's virtual range is translated to its physical address, as GRUB
/// does for kernels linked in the higher half.
fn load_elf(
    mem: &GuestMemoryMmap,
    cfg: &BootConfig,
    file: &File,
    image: &ElfImage,
    e820: &[E820Entry],
) -> Result<(u64, u64), LoaderError> {
    let mut end = 0;
    for seg in &image.segments {
        load_segment(
            mem, cfg, file, e820, seg.paddr, seg.offset, seg.filesz, seg.memsz,
        )?;
        end = end.max(seg.paddr + seg.memsz);
    }
    let entry = image
        .segments
        .iter()
        .find(|s| s.vaddr <= image.entry && image.entry - s.vaddr < s.memsz)
        .map_or(image.entry, |s| image.entry - s.vaddr + s.paddr);
    Ok((entry, end))
}

/// Loads the image described by the header's address fields; returns (entry, end of image).
fn load_kludge(
    mem: &GuestMemoryMmap,
    cfg: &BootConfig,
    file: &File,
    file_len: u64,
    header_offset: usize,
    k: &AoutKludge,
    e820: &[E820Entry],
) -> Result<(u64, u64), LoaderError> {
    let bad = |what| mb_err(cfg, MultibootError::BadAddresses(what));
    let load_addr = u64::from(k.load_addr);
    let header_delta = u64::from(k.header_addr)
        .checked_sub(load_addr)
        .ok_or_else(|| bad("header_addr is below load_addr"))?;
    let file_offset = (header_offset as u64)
        .checked_sub(header_delta)
        .ok_or_else(|| bad("load_addr lies before the start of the file"))?;
    let available = file_len - file_offset;
    let filesz = match k.load_end_addr {
        0 => available,
        end => u64::from(end)
            .checked_sub(load_addr)
            .filter(|&n| n <= available)
            .ok_or_else(|| bad("load_end_addr is below load_addr or past the end of the file"))?,
    };
    let memsz = match k.bss_end_addr {
        0 => filesz,
        end => u64::from(end)
            .checked_sub(load_addr)
            .filter(|&n| n >= filesz)
            .ok_or_else(|| bad("bss_end_addr is below load_end_addr"))?,
    };
    load_segment(mem, cfg, file, e820, load_addr, file_offset, filesz, memsz)?;
    Ok((u64::from(k.entry_addr), load_addr + memsz))
}

/// What the VMM writes below 1 MiB for a multiboot guest, as (what, start, end): a segment
/// there must leave these alone.
fn vmm_low_areas() -> [(&'static str, u64, u64); 4] {
    [
        ("boot GDT and IDT", BOOT_GDT_START.0, BOOT_IDT_START.0 + 8),
        (
            "multiboot information",
            MULTIBOOT_INFO_START.0,
            MULTIBOOT_INFO_END.0,
        ),
        (
            "command line",
            CMDLINE_START.0,
            CMDLINE_START.0 + CMDLINE_MAX_SIZE,
        ),
        (
            "MP table",
            mptable::MPTABLE_START.0,
            mptable::MPTABLE_START.0 + mptable::max_len() as u64,
        ),
    ]
}

/// Checks where a segment may go: the part at or above 1 MiB must be usable RAM below 4 GiB;
/// the part below 1 MiB (the legacy area, where linkers put an ELF's headers in a read-only
/// segment just below a kernel linked at 1 MiB) must be backed by guest memory and clear of
/// the VMM's own boot data. QEMU loads such segments too.
fn check_segment_place(
    mem: &GuestMemoryMmap,
    e820: &[E820Entry],
    paddr: u64,
    memsz: u64,
) -> Result<(), MultibootError> {
    let end = paddr.saturating_add(memsz);
    let outside = MultibootError::SegmentOutsideRam { addr: paddr, end };
    if end > FOUR_GIB {
        return Err(outside);
    }
    let low_end = end.min(HIMEM_START.0);
    if paddr < low_end {
        if !mem.check_range(
            GuestAddress(paddr),
            (low_end - paddr) as usize,
            vm_memory::Permissions::Write,
        ) {
            return Err(outside);
        }
        for (what, a, b) in vmm_low_areas() {
            if paddr < b && a < low_end {
                return Err(MultibootError::SegmentOverlapsBootData {
                    addr: paddr,
                    end,
                    what,
                    area_start: a,
                    area_end: b,
                });
            }
        }
    }
    let high_start = paddr.max(HIMEM_START.0);
    if high_start < end && !in_ram(e820, high_start, end - high_start) {
        return Err(outside);
    }
    Ok(())
}

/// Copies `filesz` bytes from `offset` in the file to `paddr` and zeroes up to `memsz`, after
/// checking where the range may go ([`check_segment_place`]).
#[allow(clippy::too_many_arguments)]
fn load_segment(
    mem: &GuestMemoryMmap,
    cfg: &BootConfig,
    file: &File,
    e820: &[E820Entry],
    paddr: u64,
    offset: u64,
    filesz: u64,
    memsz: u64,
) -> Result<(), LoaderError> {
    let end = paddr.saturating_add(memsz);
    check_segment_place(mem, e820, paddr, memsz).map_err(|e| mb_err(cfg, e))?;
    let read_err = |source| LoaderError::ReadKernel {
        path: cfg.kernel.to_path_buf(),
        source,
    };
    let mut reader = file;
    reader.seek(SeekFrom::Start(offset)).map_err(read_err)?;
    // check_segment_place() bounded memsz (and filesz <= memsz) by a sub-4 GiB range.
    mem.read_exact_volatile_from(GuestAddress(paddr), &mut reader, filesz as usize)
        .map_err(|e| match e {
            GuestMemoryError::IOError(source) => read_err(source),
            GuestMemoryError::PartialBuffer { .. } => read_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file ends inside a segment",
            )),
            source => LoaderError::GuestMemory {
                what: "kernel segment",
                addr: paddr,
                source,
            },
        })?;

    const ZEROES: [u8; 4096] = [0; 4096];
    let mut addr = paddr + filesz;
    while addr < end {
        let n = (end - addr).min(ZEROES.len() as u64) as usize;
        write_guest(mem, "kernel bss", addr, &ZEROES[..n])?;
        addr += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
