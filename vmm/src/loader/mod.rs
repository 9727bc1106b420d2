//! Kernel loaders: put a kernel, its command line, initrd and boot information into guest
//! memory and say how to enter it.
//!
//! Supported formats, tried in this order:
//! 1. multiboot v1: any file with a valid multiboot header in its first 8 KiB, loaded from
//!    its ELF32/ELF64 program headers or, if the header sets flag 16, its address fields;
//! 2. Linux bzImage (`HdrS` at 0x202), entered through the 64-bit boot protocol;
//! 3. Linux ELF64 vmlinux, entered at its ELF entry point in 64-bit mode.
//!
//! The loaders do not set up registers, page tables or the GDT: the caller does that from the
//! returned [`BootEntry`]. They do not write ACPI/MP tables either.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::arch::x86_64::layout::{E820Entry, E820Kind, RamRegion, PAGE_SIZE};

mod elf;
mod linux;
mod multiboot;
#[cfg(test)]
mod test_util;

pub use elf::ElfError;
pub use linux::LinuxError;
pub use multiboot::MultibootError;

/// How the boot vCPU must enter the loaded kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEntry {
    /// Linux 64-bit boot protocol: long mode with identity-mapped page tables, flat
    /// `__BOOT_CS`/`__BOOT_DS` segments, RSI = `boot_params`, RIP = `entry`, interrupts off.
    Linux64 {
        /// 64-bit entry point.
        entry: GuestAddress,
        /// The zero page.
        boot_params: GuestAddress,
    },
    /// Multiboot v1: 32-bit flat protected mode, paging off, EAX = 0x2BADB002,
    /// EBX = `info`, EIP = `entry`, interrupts off.
    Multiboot {
        /// 32-bit entry point (below 4 GiB).
        entry: GuestAddress,
        /// The multiboot information structure.
        info: GuestAddress,
    },
}

/// What to boot.
#[derive(Clone, Copy, Debug)]
pub struct BootConfig<'a> {
    /// Kernel image.
    pub kernel: &'a Path,
    /// Optional initial ramdisk (a multiboot module for multiboot kernels).
    pub initrd: Option<&'a Path>,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// Guest RAM; the E820 map and all placements are derived from it.
    pub ram: &'a [RamRegion],
}

/// An I/O error shown as its OS message only ("No such file or directory").
struct OsMsg<'a>(&'a io::Error);

impl fmt::Display for OsMsg<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = self.0.to_string();
        match full.rfind(" (os error ") {
            Some(i) => f.write_str(&full[..i]),
            None => f.write_str(&full),
        }
    }
}

/// Errors loading a kernel.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The kernel cannot be opened.
    #[error("cannot open kernel {}: {}", .path.display(), OsMsg(.source))]
    OpenKernel {
        /// Kernel path.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// The kernel cannot be read.
    #[error("cannot read kernel {}: {}", .path.display(), OsMsg(.source))]
    ReadKernel {
        /// Kernel path.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// The kernel file is empty.
    #[error("kernel {} is empty; pass a Linux bzImage, an ELF64 vmlinux or a multiboot kernel", .0.display())]
    EmptyKernel(PathBuf),
    /// No supported format recognised.
    #[error(
        "kernel {} is not a known kernel format; supported are Linux bzImage, Linux ELF64 \
         vmlinux and multiboot v1 (ELF32/ELF64 with a multiboot header)",
        .0.display()
    )]
    UnknownFormat(PathBuf),
    /// A 32-bit ELF without a multiboot header.
    #[error(
        "kernel {} is a 32-bit ELF without a multiboot header; 32-bit kernels must carry a \
         multiboot v1 header in their first 8 KiB",
        .0.display()
    )]
    Elf32NotMultiboot(PathBuf),
    /// The kernel's ELF headers are invalid.
    #[error("kernel {}: {source}", .path.display())]
    Elf {
        /// Kernel path.
        path: PathBuf,
        /// What is wrong.
        source: ElfError,
    },
    /// A Linux-specific problem.
    #[error("kernel {}: {source}", .path.display())]
    Linux {
        /// Kernel path.
        path: PathBuf,
        /// What is wrong.
        source: LinuxError,
    },
    /// A multiboot-specific problem.
    #[error("kernel {}: {source}", .path.display())]
    Multiboot {
        /// Kernel path.
        path: PathBuf,
        /// What is wrong.
        source: MultibootError,
    },
    /// The initrd cannot be opened.
    #[error("cannot open initrd {}: {}", .path.display(), OsMsg(.source))]
    OpenInitrd {
        /// Initrd path.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// The initrd cannot be read.
    #[error("cannot read initrd {}: {}", .path.display(), OsMsg(.source))]
    ReadInitrd {
        /// Initrd path.
        path: PathBuf,
        /// OS error or short read.
        source: io::Error,
    },
    /// The initrd is empty.
    #[error("initrd {} is empty; pass a non-empty initramfs or drop the initrd option", .0.display())]
    EmptyInitrd(PathBuf),
    /// No RAM slot holds the initrd.
    #[error(
        "initrd {} ({size:#x} bytes) does not fit in guest RAM between the kernel end {low:#x} \
         and the limit {limit:#x}; give the VM more memory or use a smaller initrd",
        .path.display()
    )]
    InitrdDoesNotFit {
        /// Initrd path.
        path: PathBuf,
        /// Initrd bytes.
        size: u64,
        /// Lowest usable address (end of the kernel).
        low: u64,
        /// Highest usable address (exclusive).
        limit: u64,
    },
    /// The command line exceeds what the kernel or the layout accepts.
    #[error("kernel command line is {len} bytes but at most {max} are allowed; shorten it")]
    CmdlineTooLong {
        /// Bytes without the terminating NUL.
        len: usize,
        /// Maximum bytes without the NUL.
        max: usize,
    },
    /// The command line cannot be passed as a C string.
    #[error("kernel command line is invalid ({0}); fix it")]
    CmdlineInvalid(String),
    /// Writing into guest memory failed.
    #[error(
        "cannot write the {what} at {addr:#x} into guest memory ({source}); give the VM more memory"
    )]
    GuestMemory {
        /// What was being written.
        what: &'static str,
        /// Where.
        addr: u64,
        /// The memory error.
        source: GuestMemoryError,
    },
}

/// First bytes of the kernel scanned for format magic (the multiboot header limit).
const HEAD_SIZE: usize = 8192;
/// Offset of the bzImage `HdrS` magic.
const BZIMAGE_MAGIC_OFFSET: usize = 0x202;

/// Loads the kernel (and initrd) described by `cfg` into `mem` and returns how to enter it.
pub fn load_kernel(mem: &GuestMemoryMmap, cfg: &BootConfig) -> Result<BootEntry, LoaderError> {
    let path = cfg.kernel;
    let file = File::open(path).map_err(|source| LoaderError::OpenKernel {
        path: path.to_path_buf(),
        source,
    })?;
    let read_err = |source| LoaderError::ReadKernel {
        path: path.to_path_buf(),
        source,
    };
    let file_len = file.metadata().map_err(read_err)?.len();
    let mut head = Vec::with_capacity(HEAD_SIZE);
    (&file)
        .take(HEAD_SIZE as u64)
        .read_to_end(&mut head)
        .map_err(read_err)?;
    if head.is_empty() {
        return Err(LoaderError::EmptyKernel(path.to_path_buf()));
    }
    let elf_class = elf::elf_class(&head);

    if let Some(header) = multiboot::find_header(&head) {
        let header = header.map_err(|source| LoaderError::Multiboot {
            path: path.to_path_buf(),
            source,
        })?;
        return multiboot::load(mem, cfg, &file, file_len, &header, elf_class.is_some());
    }
    if head.get(BZIMAGE_MAGIC_OFFSET..BZIMAGE_MAGIC_OFFSET + 4) == Some(b"HdrS") {
        return linux::load_bzimage(mem, cfg, &file, file_len, &head);
    }
    match elf_class {
        Some(elf::ElfClass::Elf64) => linux::load_vmlinux(mem, cfg, &file, file_len),
        Some(elf::ElfClass::Elf32) => Err(LoaderError::Elf32NotMultiboot(path.to_path_buf())),
        None => Err(LoaderError::UnknownFormat(path.to_path_buf())),
    }
}

/// An opened initrd.
struct Initrd {
    path: PathBuf,
    file: File,
    size: u64,
}

impl Initrd {
    fn open(path: &Path) -> Result<Self, LoaderError> {
        let file = File::open(path).map_err(|source| LoaderError::OpenInitrd {
            path: path.to_path_buf(),
            source,
        })?;
        let size = file
            .metadata()
            .map_err(|source| LoaderError::ReadInitrd {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        if size == 0 {
            return Err(LoaderError::EmptyInitrd(path.to_path_buf()));
        }
        Ok(Initrd {
            path: path.to_path_buf(),
            file,
            size,
        })
    }

    /// Finds a page-aligned slot in RAM within [`low`, `limit`) (highest or lowest one), or
    /// reports that none exists.
    fn place(
        &self,
        e820: &[E820Entry],
        low: u64,
        limit: u64,
        highest: bool,
    ) -> Result<u64, LoaderError> {
        find_ram_slot(e820, self.size, low, limit, highest).ok_or_else(|| {
            LoaderError::InitrdDoesNotFit {
                path: self.path.clone(),
                size: self.size,
                low,
                limit,
            }
        })
    }

    /// Copies the file to `addr`, which [`Self::place`] checked lies in RAM.
    fn load(&mut self, mem: &GuestMemoryMmap, addr: u64) -> Result<(), LoaderError> {
        let len = usize::try_from(self.size).map_err(|_| LoaderError::InitrdDoesNotFit {
            path: self.path.clone(),
            size: self.size,
            low: addr,
            limit: addr,
        })?;
        mem.read_exact_volatile_from(GuestAddress(addr), &mut self.file, len)
            .map_err(|e| match e {
                GuestMemoryError::IOError(source) => LoaderError::ReadInitrd {
                    path: self.path.clone(),
                    source,
                },
                GuestMemoryError::PartialBuffer { .. } => LoaderError::ReadInitrd {
                    path: self.path.clone(),
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while being read",
                    ),
                },
                source => LoaderError::GuestMemory {
                    what: "initrd",
                    addr,
                    source,
                },
            })
    }
}

fn align_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? & !(align - 1))
}

/// A page-aligned address `a` with [`a`, `a + size`) inside one E820 RAM entry and inside
/// [`low`, `limit`); the highest such address if `highest`, else the lowest.
fn find_ram_slot(
    e820: &[E820Entry],
    size: u64,
    low: u64,
    limit: u64,
    highest: bool,
) -> Option<u64> {
    let candidates = e820
        .iter()
        .filter(|e| e.kind == E820Kind::Ram)
        .filter_map(|e| {
            let lo = align_up(e.addr.max(low), PAGE_SIZE)?;
            let hi = e.end().min(limit);
            let top = hi.checked_sub(size)? & !(PAGE_SIZE - 1);
            (top >= lo).then_some(if highest { top } else { lo })
        });
    if highest {
        candidates.max()
    } else {
        candidates.min()
    }
}

/// Whether [`addr`, `addr + size`) lies inside one E820 RAM entry.
fn in_ram(e820: &[E820Entry], addr: u64, size: u64) -> bool {
    addr.checked_add(size).is_some_and(|end| {
        e820.iter()
            .any(|e| e.kind == E820Kind::Ram && e.addr <= addr && end <= e.end())
    })
}

/// Checks that `cmdline` plus its NUL fits in `max_with_nul` bytes and has no NUL inside.
fn check_cmdline(cmdline: &str, max_with_nul: usize) -> Result<(), LoaderError> {
    if cmdline.len() >= max_with_nul {
        return Err(LoaderError::CmdlineTooLong {
            len: cmdline.len(),
            max: max_with_nul.saturating_sub(1),
        });
    }
    if cmdline.contains('\0') {
        return Err(LoaderError::CmdlineInvalid(
            "it contains a NUL byte".to_string(),
        ));
    }
    Ok(())
}

/// Writes `bytes` to guest memory, naming `what` on failure.
fn write_guest(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), LoaderError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| LoaderError::GuestMemory { what, addr, source })
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;
    use crate::arch::x86_64::layout::e820_entries;

    fn cfg<'a>(kernel: &'a Path, ram: &'a [RamRegion]) -> BootConfig<'a> {
        BootConfig {
            kernel,
            initrd: None,
            cmdline: "console=ttyS0",
            ram,
        }
    }

    #[test]
    fn missing_kernel_names_path_and_os_error() {
        let (mem, ram) = guest_mem(64 << 20);
        let path = Path::new("/nonexistent/dir/bzImage");
        let err = load_kernel(&mem, &cfg(path, &ram)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot open kernel /nonexistent/dir/bzImage: No such file or directory"
        );
    }

    #[test]
    fn directory_as_kernel_is_a_read_error() {
        let (mem, ram) = guest_mem(64 << 20);
        let dir = std::env::temp_dir();
        let err = load_kernel(&mem, &cfg(&dir, &ram)).unwrap_err();
        assert!(matches!(err, LoaderError::ReadKernel { .. }), "{err}");
        assert!(err.to_string().contains("Is a directory"), "{err}");
    }

    #[test]
    fn empty_and_garbage_kernels_are_rejected() {
        let (mem, ram) = guest_mem(64 << 20);
        let empty = temp_file_with(&[]);
        let err = load_kernel(&mem, &cfg(empty.as_path(), &ram)).unwrap_err();
        assert!(matches!(err, LoaderError::EmptyKernel(_)), "{err}");
        assert!(err
            .to_string()
            .ends_with("is empty; pass a Linux bzImage, an ELF64 vmlinux or a multiboot kernel"));

        let garbage = temp_file_with(&[0x5a; 10000]);
        let err = load_kernel(&mem, &cfg(garbage.as_path(), &ram)).unwrap_err();
        assert!(matches!(err, LoaderError::UnknownFormat(_)), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&garbage.as_path().display().to_string()));
        assert!(
            msg.contains("bzImage") && msg.contains("multiboot"),
            "{msg}"
        );

        let short = temp_file_with(b"\x7fEL");
        let err = load_kernel(&mem, &cfg(short.as_path(), &ram)).unwrap_err();
        assert!(matches!(err, LoaderError::UnknownFormat(_)), "{err}");
    }

    #[test]
    fn elf32_without_multiboot_header_is_rejected() {
        let (mem, ram) = guest_mem(64 << 20);
        let img = ElfBuilder::new(elf::ElfClass::Elf32, 0x10_0000)
            .segment(0x10_0000, 0x10_0000, vec![0x90; 64], 64)
            .build();
        let tmp = temp_file_with(&img);
        let err = load_kernel(&mem, &cfg(tmp.as_path(), &ram)).unwrap_err();
        assert!(matches!(err, LoaderError::Elf32NotMultiboot(_)), "{err}");
    }

    #[test]
    fn missing_initrd_names_path() {
        let (mem, ram) = guest_mem(64 << 20);
        let img = BzImageBuilder::default().build();
        let tmp = temp_file_with(&img);
        let mut c = cfg(tmp.as_path(), &ram);
        c.initrd = Some(Path::new("/nonexistent/initrd.img"));
        let err = load_kernel(&mem, &c).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot open initrd /nonexistent/initrd.img: No such file or directory"
        );
    }

    #[test]
    fn ram_slots_respect_entries_limits_and_alignment() {
        let e820 = e820_entries(&[
            RamRegion {
                start: GuestAddress(0),
                size: 16 << 20,
            },
            RamRegion {
                start: GuestAddress(32 << 20),
                size: 16 << 20,
            },
        ]);
        // Highest slot below a limit that cuts the second entry.
        assert_eq!(
            find_ram_slot(&e820, 0x1800, 1 << 20, 40 << 20, true),
            Some((40 << 20) - 0x2000)
        );
        // Lowest slot is page-aligned above `low`.
        assert_eq!(
            find_ram_slot(&e820, 0x1000, 0x10_0001, u64::MAX, false),
            Some(0x10_1000)
        );
        // Too big for the first entry: goes to the second.
        assert_eq!(
            find_ram_slot(&e820, 15 << 20, 2 << 20, u64::MAX, false),
            Some(32 << 20)
        );
        assert_eq!(find_ram_slot(&e820, 17 << 20, 0, u64::MAX, true), None);
        assert!(in_ram(&e820, 32 << 20, 16 << 20));
        assert!(!in_ram(&e820, (16 << 20) - 4, 8));
        assert!(!in_ram(&e820, u64::MAX - 1, 4));
    }

    #[test]
    fn cmdline_checks() {
        assert!(check_cmdline("abc", 4).is_ok());
        let err = check_cmdline("abcd", 4).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel command line is 4 bytes but at most 3 are allowed; shorten it"
        );
        assert!(matches!(
            check_cmdline("a\0b", 10),
            Err(LoaderError::CmdlineInvalid(_))
        ));
    }
}
