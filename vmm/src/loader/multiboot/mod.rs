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
mod tests {
    use super::super::elf::ElfClass;
    use super::super::test_util::*;
    use super::info::*;
    use super::*;
    use crate::arch::x86_64::layout::{RamRegion, MULTIBOOT_INFO_END};

    const MIB: u64 = 1 << 20;

    fn read_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn read_cstr(mem: &GuestMemoryMmap, addr: u32) -> String {
        let bytes = read_bytes(mem, u64::from(addr), 256);
        let len = bytes.iter().position(|&b| b == 0).expect("NUL-terminated");
        String::from_utf8(bytes[..len].to_vec()).unwrap()
    }

    /// Segment data: the multiboot header (flags 0x3) followed by recognisable code bytes.
    fn segment_data(len: usize) -> Vec<u8> {
        let mut data = multiboot_header(HF_PAGE_ALIGN | HF_MEMORY_INFO, None);
        data.extend((data.len()..len).map(|i| (i * 3) as u8));
        data
    }

    fn check_mmap(mem: &GuestMemoryMmap, info: &MultibootInfo, ram: &[RamRegion]) {
        let e820 = e820_entries(ram);
        assert_eq!({ info.mmap_length } as usize, e820.len() * 24);
        for (i, e) in e820.iter().enumerate() {
            let entry: MultibootMmapEntry = mem
                .read_obj(GuestAddress(u64::from(info.mmap_addr) + 24 * i as u64))
                .unwrap();
            assert_eq!({ entry.size }, 20, "entry {i}");
            assert_eq!({ entry.base_addr }, e.addr, "entry {i}");
            assert_eq!({ entry.length }, e.size, "entry {i}");
            assert_eq!({ entry.kind }, e.kind as u32, "entry {i}");
        }
    }

    #[test]
    fn elf32_info_field_by_field() {
        let (mem, ram) = guest_mem(64 * MIB);
        let data = segment_data(0x200);
        let img = ElfBuilder::new(ElfClass::Elf32, 0x10_000C)
            .segment(0x10_0000, 0x10_0000, data.clone(), 0x3000)
            .build();
        let kernel = temp_file_with(&img);
        let initrd_bytes: Vec<u8> = (0..0x1234u32).map(|i| (i % 253) as u8).collect();
        let initrd = temp_file_with(&initrd_bytes);
        // Dirty the bss to check that loading zeroes it.
        mem.write_slice(&[0xEE; 0x2E00], GuestAddress(0x10_0200))
            .unwrap();

        let entry = boot(
            &mem,
            kernel.as_path(),
            Some(initrd.as_path()),
            "kernel arg=1",
            &ram,
        )
        .unwrap();
        assert_eq!(
            entry,
            BootEntry::Multiboot {
                entry: GuestAddress(0x10_000C),
                info: MULTIBOOT_INFO_START,
            }
        );

        let info: MultibootInfo = mem.read_obj(MULTIBOOT_INFO_START).unwrap();
        assert_eq!({ info.flags }, 0x24D);
        assert_eq!({ info.mem_lower }, 639);
        assert_eq!({ info.mem_upper }, 63 * 1024);
        assert_eq!({ info.boot_device }, 0);
        assert_eq!({ info.cmdline }, 0x20000);
        assert_eq!({ info.mods_count }, 1);
        assert_eq!({ info.mods_addr }, 0x1078);
        assert_eq!({ info.syms }, [0; 4]);
        assert_eq!({ info.mmap_addr } % 8, 0);
        assert_eq!({ info.drives_length }, 0);
        assert_eq!({ info.drives_addr }, 0);
        assert_eq!({ info.config_table }, 0);
        assert_eq!({ info.apm_table }, 0);
        assert_eq!({ info.vbe_control_info }, 0);
        assert_eq!({ info.vbe_mode }, 0);
        assert_eq!({ info.framebuffer_addr }, 0);
        assert_eq!({ info.framebuffer_type }, 0);
        assert_eq!(read_cstr(&mem, info.cmdline), "kernel arg=1");
        assert_eq!(read_cstr(&mem, info.boot_loader_name), "iommufd-vmm");
        assert!(u64::from(info.boot_loader_name) < MULTIBOOT_INFO_END.0);
        check_mmap(&mem, &info, &ram);

        let module: MultibootModule = mem
            .read_obj(GuestAddress(u64::from(info.mods_addr)))
            .unwrap();
        // Page-aligned right above the image (0x100000 + memsz 0x3000).
        assert_eq!({ module.mod_start }, 0x10_3000);
        assert_eq!({ module.mod_end }, 0x10_3000 + 0x1234);
        assert_eq!({ module.reserved }, 0);
        let name = initrd.as_path().file_name().unwrap().to_str().unwrap();
        assert_eq!(read_cstr(&mem, module.string), name);
        assert_eq!(
            read_bytes(&mem, 0x10_3000, initrd_bytes.len()),
            initrd_bytes
        );

        assert_eq!(read_bytes(&mem, 0x10_0000, data.len()), data);
        assert_eq!(read_bytes(&mem, 0x10_0200, 0x2E00), vec![0; 0x2E00]);
    }

    #[test]
    fn elf64_higher_half_entry_is_translated_and_no_mods_without_initrd() {
        let (mem, ram) = guest_mem(128 * MIB);
        let data = segment_data(0x100);
        let img = ElfBuilder::new(ElfClass::Elf64, 0xFFFF_FFFF_8020_0010)
            .segment(0x20_0000, 0xFFFF_FFFF_8020_0000, data.clone(), 0x100)
            .build();
        let kernel = temp_file_with(&img);
        let entry = boot(&mem, kernel.as_path(), None, "", &ram).unwrap();
        assert_eq!(
            entry,
            BootEntry::Multiboot {
                entry: GuestAddress(0x20_0010),
                info: MULTIBOOT_INFO_START,
            }
        );
        let info: MultibootInfo = mem.read_obj(MULTIBOOT_INFO_START).unwrap();
        assert_eq!(
            { info.flags },
            MBI_MEMORY | MBI_CMDLINE | MBI_MMAP | MBI_BOOT_LOADER_NAME
        );
        assert_eq!({ info.mods_count }, 0);
        assert_eq!({ info.mods_addr }, 0);
        assert_eq!({ info.mem_upper }, 127 * 1024);
        assert_eq!(read_cstr(&mem, info.cmdline), "");
        check_mmap(&mem, &info, &ram);
        assert_eq!(read_bytes(&mem, 0x20_0000, data.len()), data);
    }

    #[test]
    fn aout_kludge_raw_image() {
        let (mem, ram) = guest_mem(64 * MIB);
        // A flat binary loaded at 2 MiB, header at its start, bss up to +0x2000.
        let mut img = multiboot_header(
            HF_PAGE_ALIGN | HF_AOUT_KLUDGE,
            Some([0x20_0000, 0x20_0000, 0, 0x20_2000, 0x20_0020]),
        );
        img.extend((img.len()..0x100).map(|i| i as u8));
        let kernel = temp_file_with(&img);
        mem.write_slice(&[0xEE; 0x1F00], GuestAddress(0x20_0100))
            .unwrap();
        let entry = boot(&mem, kernel.as_path(), None, "x", &ram).unwrap();
        assert_eq!(
            entry,
            BootEntry::Multiboot {
                entry: GuestAddress(0x20_0020),
                info: MULTIBOOT_INFO_START,
            }
        );
        assert_eq!(read_bytes(&mem, 0x20_0000, img.len()), img);
        assert_eq!(read_bytes(&mem, 0x20_0100, 0x1F00), vec![0; 0x1F00]);

        // The same header without flag 16 in a non-ELF file has no load information.
        let mut plain = multiboot_header(0, None);
        plain.extend([0u8; 64]);
        let kernel = temp_file_with(&plain);
        let err = boot(&mem, kernel.as_path(), None, "", &ram).unwrap_err();
        assert!(
            matches!(
                err,
                LoaderError::Multiboot {
                    source: MultibootError::NoAddressInfo,
                    ..
                }
            ),
            "{err}"
        );

        // header_addr below load_addr is inconsistent.
        let bad = multiboot_header(
            HF_AOUT_KLUDGE,
            Some([0x10_0000, 0x20_0000, 0, 0, 0x20_0000]),
        );
        let kernel = temp_file_with(&bad);
        let err = boot(&mem, kernel.as_path(), None, "", &ram).unwrap_err();
        assert!(
            err.to_string().contains("header_addr is below load_addr"),
            "{err}"
        );
    }

    #[test]
    fn header_search_rules() {
        let good = multiboot_header(HF_MEMORY_INFO, None);
        // Found at any 4-byte-aligned offset within 8 KiB.
        let mut head = vec![0u8; 8192 - 12];
        head.extend_from_slice(&good);
        assert_eq!(
            find_header(&head),
            Some(Ok(Header {
                offset: 8180,
                flags: HF_MEMORY_INFO,
                kludge: None,
            }))
        );
        // Not at an unaligned offset, nor past 8 KiB.
        let mut unaligned = vec![0u8; 2];
        unaligned.extend_from_slice(&good);
        assert_eq!(find_header(&unaligned), None);
        let mut late = vec![0u8; 8192];
        late.extend_from_slice(&good);
        assert_eq!(find_header(&late), None);
        // A bad checksum before a good header is skipped.
        let mut bad = multiboot_header(0, None);
        bad[8] ^= 1;
        let mut both = bad.clone();
        both.extend_from_slice(&good);
        assert_eq!(find_header(&both).unwrap().unwrap().offset, 12);
        assert_eq!(find_header(&bad), Some(Err(MultibootError::BadChecksum(0))));
        // Flag 16 with the fields cut off.
        let cut = multiboot_header(HF_AOUT_KLUDGE, None);
        assert_eq!(
            find_header(&cut),
            Some(Err(MultibootError::HeaderTruncated))
        );
        assert_eq!(
            find_header(&multiboot_header(HF_VIDEO_MODE, None)),
            Some(Err(MultibootError::VideoMode))
        );
        assert_eq!(
            find_header(&multiboot_header(1 << 5 | 1 << 20, None)),
            Some(Err(MultibootError::UnsupportedFlags(1 << 5)))
        );
    }

    #[test]
    fn elf_with_bad_checksum_is_an_error() {
        let (mem, ram) = guest_mem(64 * MIB);
        let mut data = segment_data(0x40);
        data[8] ^= 0xFF;
        let builder =
            ElfBuilder::new(ElfClass::Elf32, 0x10_0000).segment(0x10_0000, 0x10_0000, data, 0x40);
        let offset = builder.first_data_offset();
        let kernel = temp_file_with(&builder.build());
        let err = boot(&mem, kernel.as_path(), None, "", &ram).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!(
                "multiboot header at offset {offset:#x} has a bad checksum"
            )),
            "{msg}"
        );
        assert!(msg.starts_with(&format!("kernel {}: ", kernel.as_path().display())));
    }

    #[test]
    fn segments_outside_ram_below_1m_or_entry_above_4g_are_errors() {
        let (mem, ram) = guest_mem(64 * MIB);
        let cases = [
            (0x10_0000, 0x400_0000u64, 0x100u64, "0x4000000..0x4000100"),
            (0x10_0000, 0x3FF_F000, 0x2000, "0x3fff000..0x4001000"),
        ];
        for (entry, paddr, memsz, want) in cases {
            let img = ElfBuilder::new(ElfClass::Elf32, entry)
                .segment(paddr, paddr, segment_data(0x40), memsz)
                .build();
            let kernel = temp_file_with(&img);
            let msg = boot(&mem, kernel.as_path(), None, "", &ram)
                .unwrap_err()
                .to_string();
            assert!(msg.contains(&format!("needs guest RAM at {want}")), "{msg}");
        }

        let img = ElfBuilder::new(ElfClass::Elf64, 0x1_0000_0000)
            .segment(0x10_0000, 0x10_0000, segment_data(0x40), 0x40)
            .build();
        let kernel = temp_file_with(&img);
        let err = boot(&mem, kernel.as_path(), None, "", &ram).unwrap_err();
        assert!(
            matches!(
                err,
                LoaderError::Multiboot {
                    source: MultibootError::EntryAbove4G(0x1_0000_0000),
                    ..
                }
            ),
            "{err}"
        );
    }

    /// `ld -m elf_i386 -Ttext 0x100000` puts the ELF and program headers in a read-only LOAD
    /// segment at 0xff000; QEMU loads it, and so do we, wherever guest memory backs the legacy
    /// area and the VMM's own boot data is not in the way.
    #[test]
    fn segments_in_the_legacy_area_load_where_memory_backs_them() {
        let (mem, ram) = guest_mem(64 * MIB);
        let headers = segment_data(0x40);
        let mut code = vec![0x90; 0x200];
        code[..headers.len()].copy_from_slice(&headers);
        let img = ElfBuilder::new(ElfClass::Elf32, 0x10_0000)
            .segment(0xf_f000, 0xf_f000, vec![0x7f, b'E', b'L', b'F'], 0x100)
            .segment(0x10_0000, 0x10_0000, code, 0x200)
            .build();
        let kernel = temp_file_with(&img);
        let entry = boot(&mem, kernel.as_path(), None, "", &ram).unwrap();
        assert!(matches!(
            entry,
            BootEntry::Multiboot {
                entry: GuestAddress(0x10_0000),
                ..
            }
        ));
        let mut got = [0u8; 4];
        mem.read_slice(&mut got, GuestAddress(0xf_f000)).unwrap();
        assert_eq!(&got, b"\x7fELF");
        let mut bss = [1u8; 0xfc];
        mem.read_slice(&mut bss, GuestAddress(0xf_f004)).unwrap();
        assert!(bss.iter().all(|&b| b == 0));

        // A segment straddling 1 MiB is checked on both sides and loads as one.
        let img = ElfBuilder::new(ElfClass::Elf32, 0x10_0000)
            .segment(0xf_ff00, 0xf_ff00, segment_data(0x40), 0x400)
            .build();
        let kernel = temp_file_with(&img);
        boot(&mem, kernel.as_path(), None, "", &ram).unwrap();
    }

    #[test]
    fn legacy_area_segments_must_not_overwrite_the_vmms_boot_data() {
        let (mem, ram) = guest_mem(64 * MIB);
        let cases = [
            (0x400u64, 0x200u64, "boot GDT and IDT"),
            (0x4000, 0x2000, "multiboot information"),
            (0x2_8000, 0x100, "command line"),
            (0xf_0100, 0x100, "MP table"),
        ];
        for (paddr, memsz, what) in cases {
            let img = ElfBuilder::new(ElfClass::Elf32, 0x10_0000)
                .segment(paddr, paddr, segment_data(0x40), memsz)
                .segment(0x10_0000, 0x10_0000, vec![0x90; 0x40], 0x40)
                .build();
            let kernel = temp_file_with(&img);
            let err = boot(&mem, kernel.as_path(), None, "", &ram).unwrap_err();
            assert!(
                matches!(
                    err,
                    LoaderError::Multiboot {
                        source: MultibootError::SegmentOverlapsBootData { what: w, .. },
                        ..
                    } if w == what
                ),
                "{paddr:#x}: {err}"
            );
            assert!(
                err.to_string().contains(&format!("overlaps the {what}")),
                "{err}"
            );
        }
        // Between the VMM's areas (0x90000, in the legacy area) is fine.
        let img = ElfBuilder::new(ElfClass::Elf32, 0x10_0000)
            .segment(0x9_0000, 0x9_0000, segment_data(0x40), 0x100)
            .segment(0x10_0000, 0x10_0000, vec![0x90; 0x40], 0x40)
            .build();
        let kernel = temp_file_with(&img);
        boot(&mem, kernel.as_path(), None, "", &ram).unwrap();
    }

    /// Below 1 MiB with no guest memory there: still refused, naming the range.
    #[test]
    fn legacy_area_segments_without_backing_memory_are_errors() {
        let (mem, ram) = guest_mem(64 * MIB);
        // Guest memory that starts at 1 MiB: nothing backs the legacy area.
        let high: Vec<(GuestAddress, usize)> = vec![(GuestAddress(0x10_0000), 63 * MIB as usize)];
        let himem = GuestMemoryMmap::from_ranges(&high).unwrap();
        drop(mem);
        let img = ElfBuilder::new(ElfClass::Elf32, 0x10_0000)
            .segment(0xf_f000, 0xf_f000, segment_data(0x40), 0x100)
            .build();
        let kernel = temp_file_with(&img);
        let msg = boot(&himem, kernel.as_path(), None, "", &ram)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("needs guest RAM at 0xff000..0xff100"), "{msg}");
    }

    #[test]
    fn cmdline_and_initrd_errors() {
        let (mem, ram) = guest_mem(64 * MIB);
        let img = ElfBuilder::new(ElfClass::Elf32, 0x10_0000)
            .segment(0x10_0000, 0x10_0000, segment_data(0x40), 0x40)
            .build();
        let kernel = temp_file_with(&img);
        let long = "z".repeat(CMDLINE_MAX_SIZE as usize);
        let err = boot(&mem, kernel.as_path(), None, &long, &ram).unwrap_err();
        assert!(
            matches!(
                err,
                LoaderError::CmdlineTooLong {
                    len: 0x10000,
                    max: 0xFFFF
                }
            ),
            "{err}"
        );

        let initrd = temp_file_with(&[]);
        initrd.as_file().set_len(63 * MIB).unwrap();
        let err = boot(&mem, kernel.as_path(), Some(initrd.as_path()), "", &ram).unwrap_err();
        assert!(matches!(err, LoaderError::InitrdDoesNotFit { .. }), "{err}");

        let empty = temp_file_with(&[]);
        let err = boot(&mem, kernel.as_path(), Some(empty.as_path()), "", &ram).unwrap_err();
        assert!(matches!(err, LoaderError::EmptyInitrd(_)), "{err}");
    }
}
