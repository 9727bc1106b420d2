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
