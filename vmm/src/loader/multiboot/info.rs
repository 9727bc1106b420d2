//! The multiboot information structure and the tables it points to, built as the bytes of
//! the information area ([`MULTIBOOT_INFO_START`], [`MULTIBOOT_INFO_END`]).
//!
//! Only memory sizes, command line, modules, memory map and boot loader name are filled in;
//! everything else (boot device, symbols, drives, APM, VBE, framebuffer) stays zero.

use std::mem::size_of;

use vm_memory::ByteValued;

use super::MultibootError;
use crate::arch::x86_64::layout::{
    mem_lower_kib, mem_upper_kib, E820Entry, CMDLINE_START, MULTIBOOT_INFO_END,
    MULTIBOOT_INFO_START,
};

/// Info flag: `mem_lower`/`mem_upper` valid.
pub const MBI_MEMORY: u32 = 1 << 0;
/// Info flag: `cmdline` valid.
pub const MBI_CMDLINE: u32 = 1 << 2;
/// Info flag: `mods_count`/`mods_addr` valid.
pub const MBI_MODS: u32 = 1 << 3;
/// Info flag: `mmap_length`/`mmap_addr` valid.
pub const MBI_MMAP: u32 = 1 << 6;
/// Info flag: `boot_loader_name` valid.
pub const MBI_BOOT_LOADER_NAME: u32 = 1 << 9;
/// Name passed in `boot_loader_name`.
pub const BOOT_LOADER_NAME: &str = "iommufd-vmm";

/// The multiboot information structure (spec section 3.3), 116 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MultibootInfo {
    /// Which fields are valid (`MBI_*`).
    pub flags: u32,
    /// KiB of RAM from 0.
    pub mem_lower: u32,
    /// KiB of RAM from 1 MiB.
    pub mem_upper: u32,
    /// BIOS boot device (unused).
    pub boot_device: u32,
    /// Address of the NUL-terminated command line.
    pub cmdline: u32,
    /// Number of modules.
    pub mods_count: u32,
    /// Address of the first [`MultibootModule`].
    pub mods_addr: u32,
    /// a.out/ELF symbol information (unused).
    pub syms: [u32; 4],
    /// Bytes of memory map.
    pub mmap_length: u32,
    /// Address of the first [`MultibootMmapEntry`].
    pub mmap_addr: u32,
    /// Drive table length (unused).
    pub drives_length: u32,
    /// Drive table address (unused).
    pub drives_addr: u32,
    /// ROM configuration table (unused).
    pub config_table: u32,
    /// Address of the NUL-terminated boot loader name.
    pub boot_loader_name: u32,
    /// APM table (unused).
    pub apm_table: u32,
    /// VBE control info (unused).
    pub vbe_control_info: u32,
    /// VBE mode info (unused).
    pub vbe_mode_info: u32,
    /// VBE mode (unused).
    pub vbe_mode: u16,
    /// VBE interface segment (unused).
    pub vbe_interface_seg: u16,
    /// VBE interface offset (unused).
    pub vbe_interface_off: u16,
    /// VBE interface length (unused).
    pub vbe_interface_len: u16,
    /// Framebuffer address (unused).
    pub framebuffer_addr: u64,
    /// Framebuffer pitch (unused).
    pub framebuffer_pitch: u32,
    /// Framebuffer width (unused).
    pub framebuffer_width: u32,
    /// Framebuffer height (unused).
    pub framebuffer_height: u32,
    /// Framebuffer bits per pixel (unused).
    pub framebuffer_bpp: u8,
    /// Framebuffer type (unused).
    pub framebuffer_type: u8,
    /// Framebuffer colour info (unused).
    pub color_info: [u8; 6],
}

/// One module descriptor.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MultibootModule {
    /// First byte.
    pub mod_start: u32,
    /// End (exclusive).
    pub mod_end: u32,
    /// Address of the NUL-terminated module string.
    pub string: u32,
    /// Zero.
    pub reserved: u32,
}

/// One memory map entry; `size` counts the bytes after itself (20).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MultibootMmapEntry {
    /// 20.
    pub size: u32,
    /// Start address.
    pub base_addr: u64,
    /// Length in bytes.
    pub length: u64,
    /// 1 = RAM, 2 = reserved (E820 numbering).
    pub kind: u32,
}

const _: () = assert!(size_of::<MultibootInfo>() == 116);
const _: () = assert!(size_of::<MultibootModule>() == 16);
const _: () = assert!(size_of::<MultibootMmapEntry>() == 24);

// SAFETY: repr(C, packed) structs of plain integers and integer arrays: no padding bytes, no
// pointers, and every bit pattern is a valid value.
unsafe impl ByteValued for MultibootInfo {}
// SAFETY: as above.
unsafe impl ByteValued for MultibootModule {}
// SAFETY: as above.
unsafe impl ByteValued for MultibootMmapEntry {}

/// Bump allocator over the bytes of the information area, addressed as guest memory.
struct InfoArea {
    buf: Vec<u8>,
    used: usize,
}

impl InfoArea {
    const SIZE: usize = (MULTIBOOT_INFO_END.0 - MULTIBOOT_INFO_START.0) as usize;

    fn new() -> Self {
        InfoArea {
            buf: vec![0; Self::SIZE],
            used: 0,
        }
    }

    /// Appends `bytes` at the next `align`-aligned offset and returns their guest address.
    fn push(&mut self, bytes: &[u8], align: usize) -> Result<u32, MultibootError> {
        let start = self.used.next_multiple_of(align);
        let end = start + bytes.len();
        if end > Self::SIZE {
            return Err(MultibootError::InfoTooLarge {
                needed: end,
                max: Self::SIZE,
            });
        }
        self.buf[start..end].copy_from_slice(bytes);
        self.used = end;
        // The area lies below 0x5000.
        Ok((MULTIBOOT_INFO_START.0 + start as u64) as u32)
    }

    fn push_str(&mut self, s: &str) -> Result<u32, MultibootError> {
        let mut bytes = s.as_bytes().to_vec();
        bytes.push(0);
        self.push(&bytes, 1)
    }
}

/// Builds the bytes of the information area: the info structure at its start, then the
/// module list, memory map and strings. `module` is (address, size, string).
pub(super) fn build_info(
    e820: &[E820Entry],
    module: Option<(u64, u64, &str)>,
) -> Result<Vec<u8>, MultibootError> {
    let mut area = InfoArea::new();
    area.push(MultibootInfo::default().as_slice(), 8)?;
    let mut info = MultibootInfo {
        flags: MBI_MEMORY | MBI_CMDLINE | MBI_MMAP | MBI_BOOT_LOADER_NAME,
        mem_lower: mem_lower_kib(e820) as u32,
        mem_upper: mem_upper_kib(e820).min(u64::from(u32::MAX)) as u32,
        cmdline: CMDLINE_START.0 as u32,
        ..Default::default()
    };

    if let Some((addr, size, name)) = module {
        // Initrd::place() kept the module below 4 GiB.
        let mut desc = MultibootModule {
            mod_start: addr as u32,
            mod_end: (addr + size) as u32,
            ..Default::default()
        };
        let desc_addr = area.push(desc.as_slice(), 8)?;
        desc.string = area.push_str(name)?;
        area.buf[(desc_addr - MULTIBOOT_INFO_START.0 as u32) as usize..]
            [..size_of::<MultibootModule>()]
            .copy_from_slice(desc.as_slice());
        info.flags |= MBI_MODS;
        info.mods_count = 1;
        info.mods_addr = desc_addr;
    }

    let mut mmap = Vec::with_capacity(e820.len() * size_of::<MultibootMmapEntry>());
    for e in e820 {
        let entry = MultibootMmapEntry {
            size: (size_of::<MultibootMmapEntry>() - 4) as u32,
            base_addr: e.addr,
            length: e.size,
            kind: e.kind as u32,
        };
        mmap.extend_from_slice(entry.as_slice());
    }
    info.mmap_addr = area.push(&mmap, 8)?;
    info.mmap_length = mmap.len() as u32;
    info.boot_loader_name = area.push_str(BOOT_LOADER_NAME)?;

    area.buf[..size_of::<MultibootInfo>()].copy_from_slice(info.as_slice());
    Ok(area.buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{e820_entries, RamRegion};
    use vm_memory::GuestAddress;

    const MIB: u64 = 1 << 20;

    fn e820_64m() -> Vec<E820Entry> {
        e820_entries(&[RamRegion {
            start: GuestAddress(0),
            size: 64 * MIB,
        }])
    }

    fn at<T: ByteValued>(area: &[u8], addr: u32) -> T {
        let off = (u64::from(addr) - MULTIBOOT_INFO_START.0) as usize;
        T::from_slice(&area[off..off + size_of::<T>()])
            .copied()
            .unwrap()
    }

    fn cstr(area: &[u8], addr: u32) -> &str {
        let off = (u64::from(addr) - MULTIBOOT_INFO_START.0) as usize;
        let len = area[off..].iter().position(|&b| b == 0).unwrap();
        std::str::from_utf8(&area[off..off + len]).unwrap()
    }

    #[test]
    fn info_area_layout_field_by_field() {
        let e820 = e820_64m();
        let area = build_info(&e820, Some((0x20_0000, 0x1234, "initrd.img"))).unwrap();
        assert_eq!(area.len(), 0x4000);
        let info: MultibootInfo = at(&area, 0x1000);
        assert_eq!(
            info,
            MultibootInfo {
                flags: 0x24D,
                mem_lower: 639,
                mem_upper: 63 * 1024,
                cmdline: 0x20000,
                mods_count: 1,
                mods_addr: 0x1078,
                mmap_length: 5 * 24,
                mmap_addr: 0x1098,
                boot_loader_name: 0x1098 + 5 * 24,
                ..Default::default()
            }
        );
        let module: MultibootModule = at(&area, 0x1078);
        assert_eq!(
            module,
            MultibootModule {
                mod_start: 0x20_0000,
                mod_end: 0x20_1234,
                string: 0x1088,
                reserved: 0,
            }
        );
        assert_eq!(cstr(&area, 0x1088), "initrd.img");
        for (i, e) in e820.iter().enumerate() {
            let entry: MultibootMmapEntry = at(&area, 0x1098 + 24 * i as u32);
            assert_eq!(
                entry,
                MultibootMmapEntry {
                    size: 20,
                    base_addr: e.addr,
                    length: e.size,
                    kind: e.kind as u32,
                }
            );
        }
        assert_eq!(cstr(&area, info.boot_loader_name), "iommufd-vmm");
    }

    #[test]
    fn info_area_overflow_is_an_error() {
        let e820 = e820_64m();
        let name = "n".repeat(InfoArea::SIZE);
        assert_eq!(
            build_info(&e820, Some((0x20_0000, 0x1000, &name))),
            Err(MultibootError::InfoTooLarge {
                needed: 0x88 + InfoArea::SIZE + 1,
                max: InfoArea::SIZE,
            })
        );
    }
}
