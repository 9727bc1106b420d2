//! The kernel loaders (multiboot v1 ELF32/ELF64, bzImage, ELF vmlinux) over an arbitrary
//! kernel image file, loaded into 64 MiB of guest RAM laid out as the VMM does. Any error
//! is fine; a panic is a bug.
//!
//! Input: one flags byte (bit 0: also pass an initrd; bit 1: a long command line), then
//! the image.

use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::OnceLock;

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::arch::x86_64::layout::{ram_regions, RamRegion};
use vmm::loader::{load_kernel, BootConfig};

use crate::Input;

const RAM: u64 = 64 << 20;

struct Fixture {
    mem: GuestMemoryMmap,
    ram: Vec<RamRegion>,
    kernel: std::fs::File,
    kernel_path: PathBuf,
    initrd_path: PathBuf,
}

fn memfd(name: &std::ffi::CStr) -> std::fs::File {
    // SAFETY: memfd_create with a valid C string; the fd is owned by the File.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd was just created and nothing else owns it.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
}

/// Guest RAM and the image files, made once per process (each run rewrites the kernel).
fn fixture() -> &'static std::sync::Mutex<Fixture> {
    static F: OnceLock<std::sync::Mutex<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let ram = ram_regions(RAM).expect("64 MiB is a valid size");
        let ranges: Vec<(GuestAddress, usize)> =
            ram.iter().map(|r| (r.start, r.size as usize)).collect();
        let mem = GuestMemoryMmap::from_ranges(&ranges).expect("mmap guest memory");
        let kernel = memfd(c"fuzz-kernel");
        let mut initrd = memfd(c"fuzz-initrd");
        initrd.write_all(&[0x5a; 4096]).expect("write initrd");
        let kernel_path = PathBuf::from(format!("/proc/self/fd/{}", kernel.as_raw_fd()));
        let initrd_path = PathBuf::from(format!("/proc/self/fd/{}", initrd.as_raw_fd()));
        std::mem::forget(initrd);
        std::sync::Mutex::new(Fixture {
            mem,
            ram,
            kernel,
            kernel_path,
            initrd_path,
        })
    })
}

/// The target.
pub fn run(data: &[u8]) {
    let mut i = Input::new(data);
    let flags = i.u8();
    let image = i.rest();
    let mut f = fixture().lock().unwrap_or_else(|e| e.into_inner());
    f.kernel.set_len(0).expect("truncate");
    f.kernel.seek(SeekFrom::Start(0)).expect("seek");
    f.kernel.write_all(image).expect("write kernel");
    let long = "x".repeat(4096);
    let cmdline = if flags & 2 != 0 {
        &long
    } else {
        "console=ttyS0"
    };
    let cfg = BootConfig {
        kernel: &f.kernel_path,
        initrd: (flags & 1 != 0).then_some(f.initrd_path.as_path()),
        cmdline,
        ram: &f.ram,
    };
    let _ = load_kernel(&f.mem, &cfg);
}
