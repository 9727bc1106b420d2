//! Puts an arm64 Linux `Image`, its initrd and (later) the DTB into guest RAM, following
//! the arm64 boot protocol (Documentation/arch/arm64/booting.rst).
//!
//! Placement, all inside the lowest RAM region:
//! ```text
//! RAM start (2 MiB aligned base)
//!   + text_offset           Image, `image_size` bytes (text, data and BSS)
//!   …                       free: the kernel's own memory
//!   initrd                  64 KiB aligned, ending right below the DTB
//!   DTB slot                the last whole 2 MiB block of the boot window, 2 MiB reserved
//! boot window end           min(end of the region, 1 GiB-aligned base + 32 GiB)
//! ```
//! The protocol asks for: the Image at `text_offset` from a 2 MiB aligned base, as close to
//! the start of RAM as possible; the DTB 8-byte aligned, at most 2 MiB, in a 2 MiB block of
//! its own (it is mapped with 2 MiB blocks); the initrd inside the same 1 GiB-aligned 32 GiB
//! window as the kernel. Placing both at the top of that window leaves the kernel a
//! contiguous free range after its BSS; the kernel itself reserves the DTB and the initrd.
//!
//! What this module does not do: it does not decompress (Image.gz and EFI zboot images are
//! refused with a hint), does not boot through EFI, and does not write the DTB's contents
//! (see [`fdt`](super::fdt)).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::fdt::{InitrdRange, FDT_MAX_SIZE};
use super::layout::RamRegion;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Size of the arm64 Image header.
pub const IMAGE_HEADER_SIZE: usize = 64;
/// Offset of the magic in the header.
const MAGIC_OFFSET: usize = 0x38;
/// The header magic, "ARM\x64" (0x644d5241 little endian).
pub const IMAGE_MAGIC: [u8; 4] = *b"ARM\x64";
/// `text_offset` to assume for pre-3.17 Images, which leave `image_size` zero.
const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;
/// Header flags bit 0: big-endian kernel.
const FLAG_BIG_ENDIAN: u64 = 1;
/// The Image's base alignment.
pub const KERNEL_BASE_ALIGN: u64 = 2 * MIB;
/// The initrd's start alignment: a page for every arm64 granule (4, 16, 64 KiB).
pub const INITRD_ALIGN: u64 = 64 * 1024;
/// The initrd and the kernel must share a window this big, aligned to [`INITRD_WINDOW_ALIGN`].
const INITRD_WINDOW_SIZE: u64 = 32 * GIB;
/// Alignment of the kernel + initrd window.
const INITRD_WINDOW_ALIGN: u64 = GIB;

/// Errors loading the kernel and initrd.
#[derive(Debug, thiserror::Error)]
pub enum ImageLoaderError {
    /// The kernel cannot be opened.
    #[error("cannot open kernel {}: {source}", .path.display())]
    OpenKernel {
        /// Kernel path.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// The kernel cannot be read.
    #[error("cannot read kernel {}: {source}", .path.display())]
    ReadKernel {
        /// Kernel path.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// Not an arm64 Image.
    #[error("kernel {} is not an arm64 Linux Image (no \"ARM\\x64\" magic at 0x38): {hint}", .path.display())]
    NotAnImage {
        /// Kernel path.
        path: PathBuf,
        /// What it looks like instead and what to pass.
        hint: &'static str,
    },
    /// A big-endian kernel.
    #[error(
        "kernel {} is a big-endian arm64 Image; KVM guests here boot little-endian, build the \
         kernel without CONFIG_CPU_BIG_ENDIAN",
        .path.display()
    )]
    BigEndian {
        /// Kernel path.
        path: PathBuf,
    },
    /// No RAM region to load into.
    #[error("the guest has no RAM to load the kernel into; give the VM memory")]
    NoRam,
    /// The kernel (plus the DTB slot) does not fit in the first RAM region.
    #[error(
        "kernel {} needs {need:#x} bytes from {start:#x} plus a 2 MiB device tree slot, but \
         the first guest RAM region ends at {end:#x}; give the VM more memory",
        .path.display()
    )]
    KernelTooBig {
        /// Kernel path.
        path: PathBuf,
        /// Where the Image goes.
        start: u64,
        /// Bytes it occupies (image_size).
        need: u64,
        /// End of the usable RAM.
        end: u64,
    },
    /// The initrd cannot be opened.
    #[error("cannot open initrd {}: {source}", .path.display())]
    OpenInitrd {
        /// Initrd path.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// The initrd cannot be read.
    #[error("cannot read initrd {}: {source}", .path.display())]
    ReadInitrd {
        /// Initrd path.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// The initrd is empty.
    #[error("initrd {} is empty; pass a non-empty initramfs or drop the initrd option", .0.display())]
    EmptyInitrd(PathBuf),
    /// The initrd does not fit between the kernel and the DTB.
    #[error(
        "initrd {} ({size:#x} bytes) does not fit in guest RAM between the kernel end {low:#x} \
         and the device tree at {limit:#x}; give the VM more memory or use a smaller initrd",
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
    /// The DTB is bigger than its slot.
    #[error("the device tree is {size} bytes, more than its {max}-byte slot; use fewer vCPUs")]
    DtbTooBig {
        /// Blob bytes.
        size: usize,
        /// Slot size.
        max: u64,
    },
    /// Writing into guest memory failed.
    #[error("cannot write the {what} at {addr:#x} into guest memory ({source}); give the VM more memory")]
    GuestMemory {
        /// What was being written.
        what: &'static str,
        /// Where.
        addr: u64,
        /// The memory error.
        source: GuestMemoryError,
    },
}

/// The fields of the arm64 Image header that matter for loading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Offset of the Image from its 2 MiB aligned base.
    pub text_offset: u64,
    /// Bytes the kernel occupies from its start, BSS included; 0 in pre-3.17 Images.
    pub image_size: u64,
    /// Header flags (endianness, page size, placement).
    pub flags: u64,
}

fn le64(head: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&head[off..off + 8]);
    u64::from_le_bytes(b)
}

/// What a non-Image kernel file looks like, as advice.
fn not_an_image_hint(head: &[u8]) -> &'static str {
    if head.starts_with(&[0x1f, 0x8b]) {
        "it is gzip-compressed (Image.gz); gunzip it and pass the uncompressed Image"
    } else if head.starts_with(b"MZ") && head.get(4..8) == Some(b"zimg") {
        "it is an EFI zboot image (vmlinuz.efi); pass arch/arm64/boot/Image instead"
    } else if head.starts_with(b"\x7fELF") {
        "it is an ELF file (vmlinux?); pass arch/arm64/boot/Image instead"
    } else {
        "pass the uncompressed arch/arm64/boot/Image of an arm64 kernel"
    }
}

/// Parses the first [`IMAGE_HEADER_SIZE`] bytes of a kernel file. `None` if `head` is not an
/// arm64 Image header.
pub fn parse_header(head: &[u8]) -> Option<ImageHeader> {
    if head.len() < IMAGE_HEADER_SIZE || head[MAGIC_OFFSET..MAGIC_OFFSET + 4] != IMAGE_MAGIC {
        return None;
    }
    Some(ImageHeader {
        text_offset: le64(head, 0x08),
        image_size: le64(head, 0x10),
        flags: le64(head, 0x18),
    })
}

impl ImageHeader {
    /// `(text_offset, bytes occupied)` for an Image file of `file_len` bytes: pre-3.17
    /// Images (image_size 0) load at 0x80000 and occupy at least their file.
    pub fn placement(&self, file_len: u64) -> (u64, u64) {
        if self.image_size == 0 {
            (LEGACY_TEXT_OFFSET, file_len)
        } else {
            (self.text_offset, self.image_size.max(file_len))
        }
    }
}

/// Where the kernel, initrd and DTB go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootPlan {
    /// First byte of the Image, also the boot vCPU's PC.
    pub kernel: GuestAddress,
    /// End (exclusive) of the memory the kernel occupies (image_size).
    pub kernel_end: u64,
    /// Where the initrd goes, if one was given.
    pub initrd: Option<InitrdRange>,
    /// Start of the 2 MiB DTB slot, the boot vCPU's X0.
    pub dtb: GuestAddress,
}

/// Why [`plan`] failed, before paths are attached.
#[derive(Debug, PartialEq, Eq)]
pub enum PlanError {
    /// No RAM.
    NoRam,
    /// Kernel + DTB slot do not fit: (kernel start, bytes, usable end).
    KernelTooBig(u64, u64, u64),
    /// The initrd does not fit: (bytes, low, limit).
    InitrdDoesNotFit(u64, u64, u64),
}

/// Computes the placement (see the module doc) of a kernel that occupies `kernel_size`
/// bytes at `text_offset`, and of an initrd of `initrd_size` bytes, in the lowest region of
/// `ram`.
pub fn plan(
    ram: &[RamRegion],
    text_offset: u64,
    kernel_size: u64,
    initrd_size: Option<u64>,
) -> Result<BootPlan, PlanError> {
    let first = ram
        .iter()
        .filter(|r| r.size > 0)
        .min_by_key(|r| r.start.0)
        .ok_or(PlanError::NoRam)?;
    let region_end = first.end();
    let too_big = |start: u64| PlanError::KernelTooBig(start, kernel_size, region_end);

    let base = first
        .start
        .0
        .checked_next_multiple_of(KERNEL_BASE_ALIGN)
        .ok_or(too_big(first.start.0))?;
    let kernel = base.checked_add(text_offset).ok_or(too_big(base))?;
    let kernel_end = kernel.checked_add(kernel_size).ok_or(too_big(kernel))?;

    let window_end = (kernel - kernel % INITRD_WINDOW_ALIGN).saturating_add(INITRD_WINDOW_SIZE);
    let top = region_end.min(window_end);
    let dtb = (top - top % FDT_MAX_SIZE)
        .checked_sub(FDT_MAX_SIZE)
        .filter(|&d| d >= kernel_end)
        .ok_or(too_big(kernel))?;

    let initrd = match initrd_size {
        None => None,
        Some(size) => {
            let start = dtb
                .checked_sub(size)
                .map(|s| s - s % INITRD_ALIGN)
                .filter(|&s| s >= kernel_end)
                .ok_or(PlanError::InitrdDoesNotFit(size, kernel_end, dtb))?;
            Some(InitrdRange { start, size })
        }
    };
    Ok(BootPlan {
        kernel: GuestAddress(kernel),
        kernel_end,
        initrd,
        dtb: GuestAddress(dtb),
    })
}

/// Opens `path` and returns it with its length.
fn open(path: &Path) -> io::Result<(File, u64)> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    Ok((file, len))
}

/// Copies `len` bytes of `file` into guest memory at `addr`.
fn copy_in(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    file: &mut File,
    len: u64,
) -> Result<(), ImageLoaderError> {
    let err = |source| ImageLoaderError::GuestMemory { what, addr, source };
    let len = usize::try_from(len)
        .map_err(|_| err(GuestMemoryError::InvalidGuestAddress(GuestAddress(addr))))?;
    mem.read_exact_volatile_from(GuestAddress(addr), file, len)
        .map_err(err)
}

/// Loads the Image at `kernel` and the initrd (if any) into `mem` and returns where
/// everything went, including the DTB slot for [`write_dtb`].
pub fn load(
    mem: &GuestMemoryMmap,
    ram: &[RamRegion],
    kernel: &Path,
    initrd: Option<&Path>,
) -> Result<BootPlan, ImageLoaderError> {
    let kpath = || kernel.to_path_buf();
    let (mut kfile, klen) = open(kernel).map_err(|source| ImageLoaderError::OpenKernel {
        path: kpath(),
        source,
    })?;
    let mut head = [0u8; IMAGE_HEADER_SIZE];
    let got = read_head(&kfile, &mut head).map_err(|source| ImageLoaderError::ReadKernel {
        path: kpath(),
        source,
    })?;
    let header = parse_header(&head[..got]).ok_or_else(|| ImageLoaderError::NotAnImage {
        path: kpath(),
        hint: not_an_image_hint(&head[..got]),
    })?;
    if header.flags & FLAG_BIG_ENDIAN != 0 {
        return Err(ImageLoaderError::BigEndian { path: kpath() });
    }
    let (text_offset, kernel_size) = header.placement(klen);

    let initrd = match initrd {
        None => None,
        Some(path) => {
            let (file, len) = open(path).map_err(|source| ImageLoaderError::OpenInitrd {
                path: path.to_path_buf(),
                source,
            })?;
            if len == 0 {
                return Err(ImageLoaderError::EmptyInitrd(path.to_path_buf()));
            }
            Some((path, file, len))
        }
    };

    let boot = plan(ram, text_offset, kernel_size, initrd.as_ref().map(|i| i.2)).map_err(|e| {
        match (e, &initrd) {
            (PlanError::NoRam, _) => ImageLoaderError::NoRam,
            (PlanError::KernelTooBig(start, need, end), _) => ImageLoaderError::KernelTooBig {
                path: kpath(),
                start,
                need,
                end,
            },
            (PlanError::InitrdDoesNotFit(size, low, limit), Some((path, _, _))) => {
                ImageLoaderError::InitrdDoesNotFit {
                    path: path.to_path_buf(),
                    size,
                    low,
                    limit,
                }
            }
            // plan only reports the initrd when one was given.
            (PlanError::InitrdDoesNotFit(_, _, _), None) => ImageLoaderError::NoRam,
        }
    })?;

    copy_in(mem, "kernel Image", boot.kernel.0, &mut kfile, klen).map_err(|e| {
        reading_error(e, |source| ImageLoaderError::ReadKernel {
            path: kpath(),
            source,
        })
    })?;
    if let (Some((path, mut file, len)), Some(range)) = (initrd, boot.initrd) {
        copy_in(mem, "initrd", range.start, &mut file, len).map_err(|e| {
            reading_error(e, |source| ImageLoaderError::ReadInitrd {
                path: path.to_path_buf(),
                source,
            })
        })?;
    }
    Ok(boot)
}

/// A short read or I/O error while copying a file is the file's fault, not memory's.
fn reading_error(
    e: ImageLoaderError,
    as_read: impl FnOnce(io::Error) -> ImageLoaderError,
) -> ImageLoaderError {
    match e {
        ImageLoaderError::GuestMemory {
            source: GuestMemoryError::IOError(io),
            ..
        } => as_read(io),
        ImageLoaderError::GuestMemory {
            source:
                GuestMemoryError::PartialBuffer {
                    expected,
                    completed,
                },
            ..
        } => as_read(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("file shrank while loading: read {completed} of {expected} bytes"),
        )),
        other => other,
    }
}

/// Reads up to `buf.len()` bytes from the start of `file`; returns how many were read.
fn read_head(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Writes the DTB `blob` into its slot at `addr`.
pub fn write_dtb(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    blob: &[u8],
) -> Result<(), ImageLoaderError> {
    if blob.len() as u64 > FDT_MAX_SIZE {
        return Err(ImageLoaderError::DtbTooBig {
            size: blob.len(),
            max: FDT_MAX_SIZE,
        });
    }
    mem.write_slice(blob, addr)
        .map_err(|source| ImageLoaderError::GuestMemory {
            what: "device tree",
            addr: addr.0,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vmm_sys_util::tempfile::TempFile;

    fn region(start: u64, size: u64) -> RamRegion {
        RamRegion {
            start: GuestAddress(start),
            size,
        }
    }

    /// An Image header followed by `body` bytes of payload.
    fn image(text_offset: u64, image_size: u64, flags: u64, body: usize) -> Vec<u8> {
        let mut v = vec![0u8; IMAGE_HEADER_SIZE];
        v[0..4].copy_from_slice(&0x1400_0000u32.to_le_bytes()); // b +0 (code0)
        v[0x08..0x10].copy_from_slice(&text_offset.to_le_bytes());
        v[0x10..0x18].copy_from_slice(&image_size.to_le_bytes());
        v[0x18..0x20].copy_from_slice(&flags.to_le_bytes());
        v[0x38..0x3c].copy_from_slice(b"ARM\x64");
        v.extend((0..body).map(|i| (i % 251) as u8));
        v
    }

    fn temp_with(bytes: &[u8]) -> TempFile {
        let t = TempFile::new_with_prefix(std::env::temp_dir().join("vmm-a64-loader")).unwrap();
        t.as_file().write_all(bytes).unwrap();
        t
    }

    fn guest(size: u64) -> (GuestMemoryMmap, Vec<RamRegion>) {
        let ram = vec![region(GIB, size)];
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(GIB), size as usize)]).unwrap();
        (mem, ram)
    }

    #[test]
    fn header_fields_and_magic() {
        let h = parse_header(&image(0x8_0000, 0x123_0000, 0xa, 0)).unwrap();
        assert_eq!(
            h,
            ImageHeader {
                text_offset: 0x8_0000,
                image_size: 0x123_0000,
                flags: 0xa
            }
        );
        assert_eq!(h.placement(0x100_0000), (0x8_0000, 0x123_0000));
        // Pre-3.17: image_size 0 means text_offset 0x80000 and the file's own size.
        let old = parse_header(&image(0, 0, 0, 0)).unwrap();
        assert_eq!(old.placement(0x50_0000), (0x8_0000, 0x50_0000));
        assert!(parse_header(&image(0, 0, 0, 0)[..63]).is_none());
        let mut bad = image(0, 0x1000, 0, 0);
        bad[0x3b] = 0x65;
        assert!(parse_header(&bad).is_none());
    }

    #[test]
    fn plan_512m_with_initrd() {
        let ram = [region(GIB, 512 * MIB)];
        let p = plan(&ram, 0, 40 * MIB, Some(0x12_3456)).unwrap();
        assert_eq!(p.kernel, GuestAddress(GIB));
        assert_eq!(p.kernel_end, GIB + 40 * MIB);
        assert_eq!(p.dtb, GuestAddress(GIB + 510 * MIB));
        let initrd = p.initrd.unwrap();
        assert_eq!(initrd.start % INITRD_ALIGN, 0);
        assert!(initrd.start + initrd.size <= p.dtb.0);
        assert!(p.dtb.0 - (initrd.start + initrd.size) < INITRD_ALIGN);
        assert_eq!(p.dtb.0 % 8, 0);
    }

    #[test]
    fn plan_honours_text_offset_and_base_alignment() {
        // A region starting off a 2 MiB boundary: base rounds up, text_offset is added.
        let ram = [region(GIB + 0x1000, 64 * MIB)];
        let p = plan(&ram, 0x8_0000, MIB, None).unwrap();
        assert_eq!(p.kernel, GuestAddress(GIB + 2 * MIB + 0x8_0000));
        assert!(p.initrd.is_none());
        // The DTB slot is a whole 2 MiB block inside the region.
        assert_eq!(p.dtb.0 % (2 * MIB), 0);
        assert!(p.dtb.0 + FDT_MAX_SIZE <= GIB + 0x1000 + 64 * MIB);
    }

    #[test]
    fn plan_keeps_initrd_in_the_kernel_window() {
        // 64 GiB of RAM from 1 GiB: the initrd must stay below 1 GiB + 32 GiB.
        let ram = [region(GIB, 64 * GIB)];
        let p = plan(&ram, 0, 40 * MIB, Some(100 * MIB)).unwrap();
        assert_eq!(p.dtb.0 + FDT_MAX_SIZE, 33 * GIB);
        assert!(p.initrd.unwrap().start >= 32 * GIB);
    }

    #[test]
    fn plan_uses_the_lowest_region() {
        let ram = [
            region(8 * GIB, GIB),
            region(GIB, 256 * MIB),
            region(2 * GIB, 0),
        ];
        let p = plan(&ram, 0, MIB, Some(MIB)).unwrap();
        assert_eq!(p.kernel, GuestAddress(GIB));
        assert_eq!(p.dtb.0 + FDT_MAX_SIZE, GIB + 256 * MIB);
    }

    #[test]
    fn plan_rejects_what_does_not_fit() {
        let ram = [region(GIB, 16 * MIB)];
        assert_eq!(
            plan(&ram, 0, 15 * MIB, None),
            Err(PlanError::KernelTooBig(GIB, 15 * MIB, GIB + 16 * MIB))
        );
        assert_eq!(
            plan(&ram, 0, 8 * MIB, Some(7 * MIB)),
            Err(PlanError::InitrdDoesNotFit(
                7 * MIB,
                GIB + 8 * MIB,
                GIB + 14 * MIB
            ))
        );
        assert!(plan(&ram, 0, 8 * MIB, Some(6 * MIB)).is_ok());
        // Hostile header values do not overflow.
        assert!(matches!(
            plan(&ram, u64::MAX - 10, 1, None),
            Err(PlanError::KernelTooBig(..))
        ));
        assert!(matches!(
            plan(&ram, 0, u64::MAX, None),
            Err(PlanError::KernelTooBig(..))
        ));
        assert!(matches!(
            plan(&ram, 0, MIB, Some(u64::MAX)),
            Err(PlanError::InitrdDoesNotFit(..))
        ));
        assert_eq!(plan(&[], 0, MIB, None), Err(PlanError::NoRam));
        assert_eq!(plan(&[region(GIB, 0)], 0, MIB, None), Err(PlanError::NoRam));
    }

    #[test]
    fn loads_image_and_initrd() {
        let (mem, ram) = guest(64 * MIB);
        let kbytes = image(0, 3 * MIB, 0b1010, 100_000);
        let kernel = temp_with(&kbytes);
        let ibytes: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
        let initrd = temp_with(&ibytes);
        let p = load(&mem, &ram, kernel.as_path(), Some(initrd.as_path())).unwrap();
        assert_eq!(p.kernel, GuestAddress(GIB));
        assert_eq!(p.kernel_end, GIB + 3 * MIB);

        let mut back = vec![0u8; kbytes.len()];
        mem.read_slice(&mut back, p.kernel).unwrap();
        assert_eq!(back, kbytes);
        let r = p.initrd.unwrap();
        assert_eq!(r.size, ibytes.len() as u64);
        let mut back = vec![0u8; ibytes.len()];
        mem.read_slice(&mut back, GuestAddress(r.start)).unwrap();
        assert_eq!(back, ibytes);

        write_dtb(&mem, p.dtb, b"\xd0\x0d\xfe\xed").unwrap();
        assert_eq!(mem.read_obj::<u32>(p.dtb).unwrap(), 0xedfe_0dd0);
        let too_big = vec![0u8; FDT_MAX_SIZE as usize + 1];
        assert!(matches!(
            write_dtb(&mem, p.dtb, &too_big),
            Err(ImageLoaderError::DtbTooBig { .. })
        ));
    }

    #[test]
    fn refuses_non_images_with_a_hint() {
        let (mem, ram) = guest(16 * MIB);
        let cases: [(&[u8], &str); 4] = [
            (b"\x1f\x8b\x08\x00rest-of-gzip", "gunzip"),
            (b"MZ\0\0zimg----", "zboot"),
            (b"\x7fELF\x02\x01\x01", "ELF"),
            (b"", "uncompressed"),
        ];
        for (bytes, want) in cases {
            let f = temp_with(bytes);
            let e = load(&mem, &ram, f.as_path(), None).unwrap_err();
            assert!(matches!(e, ImageLoaderError::NotAnImage { .. }), "{e}");
            assert!(e.to_string().contains(want), "{e}");
        }
        let f = temp_with(&image(0, MIB, FLAG_BIG_ENDIAN, 0));
        assert!(matches!(
            load(&mem, &ram, f.as_path(), None),
            Err(ImageLoaderError::BigEndian { .. })
        ));
    }

    #[test]
    fn size_errors_name_the_file_and_the_fix() {
        let (mem, ram) = guest(16 * MIB);
        let big = temp_with(&image(0, 15 * MIB, 0, 0));
        let e = load(&mem, &ram, big.as_path(), None).unwrap_err();
        assert!(matches!(e, ImageLoaderError::KernelTooBig { .. }));
        assert!(e.to_string().contains("give the VM more memory"), "{e}");

        let kernel = temp_with(&image(0, 4 * MIB, 0, 0));
        let initrd = temp_with(&vec![1u8; 11 * MIB as usize]);
        let e = load(&mem, &ram, kernel.as_path(), Some(initrd.as_path())).unwrap_err();
        assert!(
            matches!(e, ImageLoaderError::InitrdDoesNotFit { .. }),
            "{e}"
        );
        assert!(e
            .to_string()
            .contains(&initrd.as_path().display().to_string()));

        let empty = temp_with(b"");
        assert!(matches!(
            load(&mem, &ram, kernel.as_path(), Some(empty.as_path())),
            Err(ImageLoaderError::EmptyInitrd(_))
        ));
        let missing = Path::new("/nonexistent/Image");
        assert!(matches!(
            load(&mem, &ram, missing, None),
            Err(ImageLoaderError::OpenKernel { .. })
        ));
        assert!(matches!(
            load(&mem, &ram, kernel.as_path(), Some(missing)),
            Err(ImageLoaderError::OpenInitrd { .. })
        ));
    }
}
