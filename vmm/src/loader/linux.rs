//! Linux kernels (bzImage and ELF64 vmlinux) entered through the 64-bit boot protocol
//! (Documentation/arch/x86/boot.rst): linux-loader copies the kernel, this module fills the
//! zero page (`boot_params`), the command line and the initrd.
//!
//! It does not run the real-mode setup code, so nothing that only the 16-bit setup reads
//! (heap_end_ptr, video mode switching) is meaningful here.

use std::fs::File;

use linux_loader::loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, E820_MAX_ENTRIES_ZEROPAGE, LOADED_HIGH,
    XLF_KERNEL_64,
};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::Elf;
use linux_loader::loader::{load_cmdline, Cmdline, KernelLoader, KernelLoaderResult};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::elf::{self, ElfClass, EM_X86_64};
use super::{check_cmdline, in_ram, BootConfig, BootEntry, Initrd, LoaderError};
use crate::arch::x86_64::layout::{
    e820_entries, E820Entry, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, ZERO_PAGE_START,
};

/// `boot_flag` value at 0x1FE.
const BOOT_FLAG_MAGIC: u16 = 0xAA55;
/// `header` value: "HdrS".
const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader` for a loader without an assigned ID.
const LOADER_TYPE_UNDEFINED: u8 = 0xFF;
/// `vid_mode` "normal" (80x25): no mode switch requested.
const VID_MODE_NORMAL: u16 = 0xFFFF;
/// Offset of the setup header in a bzImage and in `boot_params`.
const SETUP_HEADER_OFFSET: usize = 0x1F1;
/// The 64-bit entry point lies this far past the protected-mode load address.
const STARTUP_64_OFFSET: u64 = 0x200;
/// `initrd_addr_max` assumed for protocols before 2.03 (the field did not exist).
const DEFAULT_INITRD_ADDR_MAX: u32 = 0x37FF_FFFF;
/// `initrd_addr_max` used for an ELF vmlinux, which has no setup header: what x86_64
/// kernels advertise in their bzImage header.
const VMLINUX_INITRD_ADDR_MAX: u32 = 0x7FFF_FFFF;
/// Command line limit (NUL included) before protocol 2.06 added `cmdline_size`.
const OLD_CMDLINE_SIZE: usize = 256;
/// x86 `COMMAND_LINE_SIZE` (NUL included), the limit for a vmlinux without a header.
const VMLINUX_CMDLINE_SIZE: usize = 2048;
/// `kernel_alignment` given to a vmlinux: x86_64's CONFIG_PHYSICAL_ALIGN default.
const VMLINUX_KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// Errors specific to Linux kernels.
#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    /// The file is shorter than its setup header or setup sectors.
    #[error("the bzImage is truncated ({len} bytes, its setup area alone needs {needed})")]
    Truncated {
        /// File size.
        len: u64,
        /// Bytes the header implies.
        needed: u64,
    },
    /// Protocol too old or not a protected-mode kernel loaded high.
    #[error(
        "the bzImage uses boot protocol {:x}.{:02x} without LOADED_HIGH; use a kernel with boot \
         protocol 2.12 or newer", .0 >> 8, .0 & 0xff
    )]
    TooOld(u16),
    /// No 64-bit entry point.
    #[error(
        "the bzImage has no 64-bit entry point (protocol {:x}.{:02x}, XLF_KERNEL_64 unset); \
         use an x86_64 kernel", .0 >> 8, .0 & 0xff
    )]
    No64BitEntry(u16),
    /// The vmlinux is not an x86_64 ELF64.
    #[error("the vmlinux is built for ELF machine {0}, not x86_64 (62); use an x86_64 kernel")]
    NotX86_64(u16),
    /// The kernel would land outside guest RAM or below 1 MiB.
    #[error(
        "the kernel needs guest RAM at {addr:#x}..{end:#x}, above 1 MiB, which the VM does not \
         have; give the VM more memory"
    )]
    DoesNotFit {
        /// Load address.
        addr: u64,
        /// End (exclusive) of the range.
        end: u64,
    },
    /// linux-loader failed.
    #[error("linux-loader could not load it: {0}")]
    Load(#[source] linux_loader::loader::Error),
    /// The E820 map does not fit in the zero page.
    #[error(
        "the E820 map has {0} entries but the zero page holds {max}; use fewer, larger memory \
         regions", max = E820_MAX_ENTRIES_ZEROPAGE
    )]
    TooManyE820Entries(usize),
}

fn linux_err(cfg: &BootConfig, source: LinuxError) -> LoaderError {
    LoaderError::Linux {
        path: cfg.kernel.to_path_buf(),
        source,
    }
}

/// Loads a bzImage whose first bytes are `head` and returns its 64-bit entry.
pub(super) fn load_bzimage(
    mem: &GuestMemoryMmap,
    cfg: &BootConfig,
    file: &File,
    file_len: u64,
    head: &[u8],
) -> Result<BootEntry, LoaderError> {
    let hdr_end = SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>();
    let hdr = head
        .get(SETUP_HEADER_OFFSET..hdr_end)
        .and_then(setup_header::from_slice)
        .copied()
        .ok_or_else(|| {
            linux_err(
                cfg,
                LinuxError::Truncated {
                    len: file_len,
                    needed: hdr_end as u64,
                },
            )
        })?;
    let version = hdr.version;
    if version < 0x0200 || hdr.loadflags & LOADED_HIGH == 0 {
        return Err(linux_err(cfg, LinuxError::TooOld(version)));
    }
    if version < 0x020c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(linux_err(cfg, LinuxError::No64BitEntry(version)));
    }
    let setup_sects = match hdr.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    let setup_len = (setup_sects + 1) * 512;
    if file_len <= setup_len {
        return Err(linux_err(
            cfg,
            LinuxError::Truncated {
                len: file_len,
                needed: setup_len + 1,
            },
        ));
    }
    let load_addr = u64::from(hdr.code32_start);
    let e820 = checked_e820(cfg)?;
    let payload = file_len - setup_len;
    if load_addr < HIMEM_START.0 || !in_ram(&e820, load_addr, payload) {
        return Err(linux_err(
            cfg,
            LinuxError::DoesNotFit {
                addr: load_addr,
                end: load_addr.saturating_add(payload),
            },
        ));
    }

    let mut reader = file;
    let loaded = BzImage::load(mem, None, &mut reader, Some(HIMEM_START))
        .map_err(|e| linux_err(cfg, LinuxError::Load(e)))?;
    let hdr = loaded.setup_header.unwrap_or(hdr);

    let params = boot_params {
        hdr,
        ..Default::default()
    };
    let cmdline_max = if version >= 0x0206 {
        usize::try_from(hdr.cmdline_size)
            .unwrap_or(usize::MAX)
            .saturating_add(1)
    } else {
        OLD_CMDLINE_SIZE
    };
    let initrd_addr_max = if version >= 0x0203 {
        hdr.initrd_addr_max
    } else {
        DEFAULT_INITRD_ADDR_MAX
    };
    let kernel_end = bzimage_reserved_end(&hdr, &loaded);
    finish(
        mem,
        cfg,
        params,
        &e820,
        kernel_end,
        initrd_addr_max,
        cmdline_max,
    )?;
    Ok(BootEntry::Linux64 {
        entry: GuestAddress(loaded.kernel_load.0 + STARTUP_64_OFFSET),
        boot_params: ZERO_PAGE_START,
    })
}

/// End of the memory the kernel uses while booting: the loaded payload, and from protocol
/// 2.10 on `init_size` bytes from where it decompresses itself (at least `pref_address`,
/// aligned to `kernel_alignment`). The initrd must stay above it.
fn bzimage_reserved_end(hdr: &setup_header, loaded: &KernelLoaderResult) -> u64 {
    let mut end = loaded.kernel_end;
    if hdr.version >= 0x020a {
        let align = u64::from(hdr.kernel_alignment).max(1);
        let load = loaded.kernel_load.0;
        let aligned = load.div_ceil(align).saturating_mul(align);
        let base = aligned.max(hdr.pref_address);
        end = end.max(base.saturating_add(u64::from(hdr.init_size)));
    }
    end
}

/// Loads an ELF64 vmlinux and returns its entry point.
pub(super) fn load_vmlinux(
    mem: &GuestMemoryMmap,
    cfg: &BootConfig,
    file: &File,
    file_len: u64,
) -> Result<BootEntry, LoaderError> {
    let image = elf::parse(file, file_len).map_err(|source| LoaderError::Elf {
        path: cfg.kernel.to_path_buf(),
        source,
    })?;
    if image.class != ElfClass::Elf64 || image.machine != EM_X86_64 {
        return Err(linux_err(cfg, LinuxError::NotX86_64(image.machine)));
    }
    let e820 = checked_e820(cfg)?;
    for seg in &image.segments {
        if seg.paddr < HIMEM_START.0 || !in_ram(&e820, seg.paddr, seg.memsz) {
            return Err(linux_err(
                cfg,
                LinuxError::DoesNotFit {
                    addr: seg.paddr,
                    end: seg.paddr.saturating_add(seg.memsz),
                },
            ));
        }
    }

    let mut reader = file;
    let loaded = Elf::load(mem, None, &mut reader, Some(HIMEM_START))
        .map_err(|e| linux_err(cfg, LinuxError::Load(e)))?;
    let kernel_end = image
        .segments
        .iter()
        .map(|s| s.paddr + s.memsz)
        .max()
        .unwrap_or(0)
        .max(loaded.kernel_end);

    let mut params = boot_params::default();
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.kernel_alignment = VMLINUX_KERNEL_ALIGNMENT;
    finish(
        mem,
        cfg,
        params,
        &e820,
        kernel_end,
        VMLINUX_INITRD_ADDR_MAX,
        VMLINUX_CMDLINE_SIZE,
    )?;
    Ok(BootEntry::Linux64 {
        entry: loaded.kernel_load,
        boot_params: ZERO_PAGE_START,
    })
}

/// The E820 map of `cfg.ram`, checked to fit in the zero page.
fn checked_e820(cfg: &BootConfig) -> Result<Vec<E820Entry>, LoaderError> {
    let e820 = e820_entries(cfg.ram);
    if e820.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(linux_err(cfg, LinuxError::TooManyE820Entries(e820.len())));
    }
    Ok(e820)
}

/// Writes the command line, loads the initrd (highest fitting slot above `kernel_end`, ending
/// at or below `initrd_addr_max`) and writes `params` with the loader fields filled in.
fn finish(
    mem: &GuestMemoryMmap,
    cfg: &BootConfig,
    mut params: boot_params,
    e820: &[E820Entry],
    kernel_end: u64,
    initrd_addr_max: u32,
    kernel_cmdline_max: usize,
) -> Result<(), LoaderError> {
    let cmdline_max = kernel_cmdline_max.min(CMDLINE_MAX_SIZE as usize);
    check_cmdline(cfg.cmdline, cmdline_max)?;
    let cmdline = Cmdline::try_from(cfg.cmdline, cmdline_max)
        .map_err(|e| LoaderError::CmdlineInvalid(e.to_string()))?;
    load_cmdline(mem, CMDLINE_START, &cmdline).map_err(|e| match e {
        linux_loader::loader::Error::InvalidCommandLine => LoaderError::CmdlineInvalid(
            "it has init arguments after \" -- \" but no boot arguments".into(),
        ),
        other => linux_err(cfg, LinuxError::Load(other)),
    })?;

    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.vid_mode = VID_MODE_NORMAL;
    params.hdr.cmd_line_ptr = CMDLINE_START.0 as u32;
    params.ext_cmd_line_ptr = 0;

    for (slot, e) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    // checked_e820 bounded the count by 128.
    params.e820_entries = e820.len() as u8;

    if let Some(path) = cfg.initrd {
        let mut initrd = Initrd::open(path)?;
        let limit = u64::from(initrd_addr_max) + 1;
        let addr = initrd.place(e820, kernel_end, limit, true)?;
        initrd.load(mem, addr)?;
        // place() kept addr + size below 4 GiB.
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
        params.ext_ramdisk_image = 0;
        params.ext_ramdisk_size = 0;
    }

    mem.write_obj(params, ZERO_PAGE_START)
        .map_err(|source| LoaderError::GuestMemory {
            what: "zero page (boot_params)",
            addr: ZERO_PAGE_START.0,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::arch::x86_64::layout::{E820Kind, RamRegion};

    const MIB: u64 = 1 << 20;

    fn read_params(mem: &GuestMemoryMmap) -> boot_params {
        mem.read_obj(ZERO_PAGE_START).unwrap()
    }

    fn assert_e820_matches(params: &boot_params, ram: &[RamRegion]) {
        let expected = e820_entries(ram);
        assert_eq!(usize::from(params.e820_entries), expected.len());
        for (i, e) in expected.iter().enumerate() {
            let got = params.e820_table[i];
            assert_eq!({ got.addr }, e.addr, "entry {i}");
            assert_eq!({ got.size }, e.size, "entry {i}");
            assert_eq!({ got.r#type }, e.kind as u32, "entry {i}");
        }
        assert_eq!({ params.e820_table[expected.len()].size }, 0);
    }

    fn read_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    #[test]
    fn bzimage_boot_params_field_by_field() {
        let (mem, ram) = guest_mem(64 * MIB);
        let builder = BzImageBuilder::default();
        let kernel = temp_file_with(&builder.build());
        let initrd_bytes: Vec<u8> = (0..0x2345u32).map(|i| (i % 251) as u8).collect();
        let initrd = temp_file_with(&initrd_bytes);
        let cmdline = "console=ttyS0 reboot=k panic=1";

        let entry = boot(
            &mem,
            kernel.as_path(),
            Some(initrd.as_path()),
            cmdline,
            &ram,
        )
        .unwrap();
        assert_eq!(
            entry,
            BootEntry::Linux64 {
                entry: GuestAddress(0x10_0200),
                boot_params: ZERO_PAGE_START,
            }
        );

        let p = read_params(&mem);
        let h = p.hdr;
        assert_eq!({ h.setup_sects }, 4);
        assert_eq!({ h.boot_flag }, 0xAA55);
        assert_eq!({ h.header }, 0x5372_6448);
        assert_eq!({ h.version }, 0x020f);
        assert_eq!({ h.type_of_loader }, 0xFF);
        assert_eq!({ h.loadflags } & LOADED_HIGH, LOADED_HIGH);
        assert_eq!({ h.code32_start }, 0x10_0000);
        assert_eq!({ h.vid_mode }, 0xFFFF);
        assert_eq!({ h.kernel_alignment }, 0x20_0000);
        assert_eq!({ h.initrd_addr_max }, 0x7fff_ffff);
        assert_eq!({ h.cmdline_size }, 2047);
        assert_eq!({ h.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.ext_cmd_line_ptr }, 0);
        // Highest page-aligned slot below the end of RAM.
        let ramdisk = u64::from(h.ramdisk_image);
        assert_eq!(ramdisk % 0x1000, 0);
        assert_eq!(ramdisk, (64 * MIB - 0x2345) & !0xfff);
        assert_eq!({ h.ramdisk_size }, 0x2345);
        assert_eq!({ p.ext_ramdisk_image }, 0);
        assert_eq!({ p.sentinel }, 0);
        assert_e820_matches(&p, &ram);
        assert_eq!({ p.e820_table[2].r#type }, E820Kind::Ram as u32);

        let mut expected_cmdline = cmdline.as_bytes().to_vec();
        expected_cmdline.push(0);
        assert_eq!(
            read_bytes(&mem, 0x20000, expected_cmdline.len()),
            expected_cmdline
        );
        assert_eq!(read_bytes(&mem, ramdisk, initrd_bytes.len()), initrd_bytes);
        assert_eq!(
            read_bytes(&mem, 0x10_0000, builder.payload.len()),
            builder.payload
        );
    }

    #[test]
    fn bzimage_initrd_respects_initrd_addr_max_and_kernel_end() {
        let (mem, ram) = guest_mem(64 * MIB);
        let builder = BzImageBuilder {
            initrd_addr_max: 0x1FF_FFFF,
            ..Default::default()
        };
        let kernel = temp_file_with(&builder.build());
        let initrd = temp_file_with(&[7u8; 0x1800]);
        boot(&mem, kernel.as_path(), Some(initrd.as_path()), "", &ram).unwrap();
        let h = read_params(&mem).hdr;
        assert_eq!(u64::from(h.ramdisk_image), 0x200_0000 - 0x2000);
        assert_eq!({ h.ramdisk_size }, 0x1800);

        // Decompression needs pref_address (16 MiB) + init_size (8 MiB): nothing below 24 MiB.
        let loaded = KernelLoaderResult {
            kernel_load: GuestAddress(0x10_0000),
            kernel_end: 0x10_3000,
            ..Default::default()
        };
        let hdr = setup_header {
            version: 0x020f,
            kernel_alignment: 0x20_0000,
            pref_address: 0x100_0000,
            init_size: 0x80_0000,
            ..Default::default()
        };
        assert_eq!(bzimage_reserved_end(&hdr, &loaded), 0x180_0000);
    }

    #[test]
    fn bzimage_initrd_too_big_names_sizes_and_limit() {
        let (mem, ram) = guest_mem(64 * MIB);
        let kernel = temp_file_with(&BzImageBuilder::default().build());
        let initrd = temp_file_with(&[]);
        // Sparse: 41 MiB do not fit between 24 MiB (kernel end) and 64 MiB (end of RAM).
        initrd.as_file().set_len(41 * MIB).unwrap();
        let err = boot(&mem, kernel.as_path(), Some(initrd.as_path()), "", &ram).unwrap_err();
        let LoaderError::InitrdDoesNotFit {
            size, low, limit, ..
        } = err
        else {
            panic!("unexpected error {err}");
        };
        assert_eq!((size, low, limit), (41 * MIB, 24 * MIB, 0x8000_0000));
        let msg = err.to_string();
        assert!(msg.contains("0x2900000 bytes"), "{msg}");
        assert!(msg.contains("limit 0x80000000"), "{msg}");
        assert!(msg.contains("give the VM more memory"), "{msg}");
    }

    #[test]
    fn bzimage_cmdline_limits() {
        let (mem, ram) = guest_mem(64 * MIB);
        let builder = BzImageBuilder {
            cmdline_size: 16,
            ..Default::default()
        };
        let kernel = temp_file_with(&builder.build());
        boot(&mem, kernel.as_path(), None, "0123456789abcdef", &ram).unwrap();
        let err = boot(&mem, kernel.as_path(), None, "0123456789abcdefg", &ram).unwrap_err();
        assert!(
            matches!(err, LoaderError::CmdlineTooLong { len: 17, max: 16 }),
            "{err}"
        );

        let builder = BzImageBuilder {
            cmdline_size: 0x10_0000,
            ..Default::default()
        };
        let kernel = temp_file_with(&builder.build());
        let long = "x".repeat(CMDLINE_MAX_SIZE as usize);
        let err = boot(&mem, kernel.as_path(), None, &long, &ram).unwrap_err();
        assert!(
            matches!(err, LoaderError::CmdlineTooLong { max: 0xFFFF, .. }),
            "{err}"
        );
        let err = boot(&mem, kernel.as_path(), None, "a\0b", &ram).unwrap_err();
        assert!(matches!(err, LoaderError::CmdlineInvalid(_)), "{err}");
    }

    #[test]
    fn bzimage_header_errors() {
        let (mem, ram) = guest_mem(64 * MIB);
        let cases: [(BzImageBuilder, &str); 3] = [
            (
                BzImageBuilder {
                    xloadflags: 0,
                    ..Default::default()
                },
                "no 64-bit entry point",
            ),
            (
                BzImageBuilder {
                    version: 0x020b,
                    ..Default::default()
                },
                "no 64-bit entry point (protocol 2.0b",
            ),
            (
                BzImageBuilder {
                    loadflags: 0,
                    ..Default::default()
                },
                "without LOADED_HIGH",
            ),
        ];
        for (builder, want) in cases {
            let kernel = temp_file_with(&builder.build());
            let msg = boot(&mem, kernel.as_path(), None, "", &ram)
                .unwrap_err()
                .to_string();
            assert!(msg.contains(want), "{msg}");
        }

        let full = BzImageBuilder::default().build();
        let kernel = temp_file_with(&full[..0x300]);
        let err = boot(&mem, kernel.as_path(), None, "", &ram).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let kernel = temp_file_with(&full[..5 * 512]);
        let err = boot(&mem, kernel.as_path(), None, "", &ram).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn bzimage_larger_than_ram_is_rejected() {
        let (mem, ram) = guest_mem(2 * MIB);
        let builder = BzImageBuilder {
            payload: vec![1; (MIB + 0x1000) as usize],
            ..Default::default()
        };
        let kernel = temp_file_with(&builder.build());
        let err = boot(&mem, kernel.as_path(), None, "", &ram).unwrap_err();
        assert!(
            matches!(
                err,
                LoaderError::Linux {
                    source: LinuxError::DoesNotFit {
                        addr: 0x10_0000,
                        ..
                    },
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn vmlinux_boot_params_and_entry() {
        let (mem, ram) = guest_mem(64 * MIB);
        let text: Vec<u8> = (0..0x1000u32).map(|i| (i * 13) as u8).collect();
        let img = ElfBuilder::new(ElfClass::Elf64, 0x100_0000)
            .segment(0x100_0000, 0xffff_ffff_8100_0000, text.clone(), 0x20_0000)
            .build();
        let kernel = temp_file_with(&img);
        let initrd = temp_file_with(&[9u8; 0x3000]);
        let entry = boot(
            &mem,
            kernel.as_path(),
            Some(initrd.as_path()),
            "root=/dev/vda",
            &ram,
        )
        .unwrap();
        assert_eq!(
            entry,
            BootEntry::Linux64 {
                entry: GuestAddress(0x100_0000),
                boot_params: ZERO_PAGE_START,
            }
        );
        let p = read_params(&mem);
        let h = p.hdr;
        assert_eq!({ h.boot_flag }, 0xAA55);
        assert_eq!({ h.header }, 0x5372_6448);
        assert_eq!({ h.type_of_loader }, 0xFF);
        assert_eq!({ h.kernel_alignment }, 0x100_0000);
        assert_eq!({ h.cmd_line_ptr }, 0x20000);
        assert_eq!({ h.ramdisk_image }, (64 * MIB - 0x3000) as u32);
        assert_eq!({ h.ramdisk_size }, 0x3000);
        assert_e820_matches(&p, &ram);
        assert_eq!(read_bytes(&mem, 0x20000, 14), b"root=/dev/vda\0");
        assert_eq!(read_bytes(&mem, 0x100_0000, text.len()), text);
    }

    #[test]
    fn vmlinux_errors() {
        let (mem, ram) = guest_mem(16 * MIB);
        let outside = ElfBuilder::new(ElfClass::Elf64, 0x100_0000)
            .segment(0x100_0000, 0x100_0000, vec![1; 16], 0x10)
            .build();
        let kernel = temp_file_with(&outside);
        let err = boot(&mem, kernel.as_path(), None, "", &ram).unwrap_err();
        assert!(
            err.to_string()
                .contains("needs guest RAM at 0x1000000..0x1000010"),
            "{err}"
        );

        let low = ElfBuilder::new(ElfClass::Elf64, 0x10_0000)
            .segment(0x8_0000, 0x8_0000, vec![1; 16], 0x10)
            .build();
        let kernel = temp_file_with(&low);
        let err = boot(&mem, kernel.as_path(), None, "", &ram).unwrap_err();
        assert!(matches!(
            err,
            LoaderError::Linux {
                source: LinuxError::DoesNotFit { addr: 0x8_0000, .. },
                ..
            }
        ));

        let long = "y".repeat(VMLINUX_CMDLINE_SIZE);
        let ok = ElfBuilder::new(ElfClass::Elf64, 0x10_0000)
            .segment(0x10_0000, 0x10_0000, vec![1; 16], 0x10)
            .build();
        let kernel = temp_file_with(&ok);
        let err = boot(&mem, kernel.as_path(), None, &long, &ram).unwrap_err();
        assert!(
            matches!(err, LoaderError::CmdlineTooLong { max: 2047, .. }),
            "{err}"
        );
    }

    #[test]
    fn too_many_e820_entries_is_an_error() {
        let (mem, _) = guest_mem(64 * MIB);
        let mut ram = vec![RamRegion {
            start: GuestAddress(0),
            size: 32 * MIB,
        }];
        ram.extend((0..130u64).map(|i| RamRegion {
            start: GuestAddress(64 * MIB + i * 0x2000),
            size: 0x1000,
        }));
        let kernel = temp_file_with(&BzImageBuilder::default().build());
        let err = boot(&mem, kernel.as_path(), None, "", &ram).unwrap_err();
        assert!(
            matches!(
                err,
                LoaderError::Linux {
                    source: LinuxError::TooManyE820Entries(135),
                    ..
                }
            ),
            "{err}"
        );
    }
}
