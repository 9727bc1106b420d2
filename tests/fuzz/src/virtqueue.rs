//! The virtqueue descriptor-chain walker and the virtio-blk request parser, as a blk
//! worker runs them: the driver's queue configuration is checked and built, every chain
//! in the available ring is walked (direct and indirect descriptors) and each request is
//! executed against a 64 KiB disk image, with the status and used ring written back.
//!
//! Input: queue size (u16), descriptor table, available ring and used ring addresses (u16
//! each, times 16), then the contents of the first 64 KiB of guest RAM. Guest RAM is two
//! 64 KiB regions with a 64 KiB hole between them, so chains can point outside RAM.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, OnceLock};

use devices::virtio::block::{request, DiskConfig, DiskFile};
use devices::virtio::device::VirtioInterrupt;
use devices::virtio::queue::{ActiveQueue, LogBudget, QueueConfig};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::Input;

const REGION: usize = 0x1_0000;
const SECOND: u64 = 0x2_0000;
const MAX_QUEUE: u16 = 256;

struct NoInterrupt;

impl VirtioInterrupt for NoInterrupt {
    fn signal_used_queue(&self, _queue: u16) {}
    fn signal_config_change(&self) {}
    fn set_needs_reset(&self) {}
}

struct Fixture {
    mem: GuestMemoryMmap,
    disk: DiskFile,
}

fn fixture() -> &'static Mutex<Fixture> {
    static F: OnceLock<Mutex<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), REGION),
            (GuestAddress(SECOND), REGION),
        ])
        .expect("mmap guest memory");
        // SAFETY: memfd_create with a valid C string; the fd is owned by the File.
        let fd = unsafe { libc::memfd_create(c"fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: fd was just created and nothing else owns it.
        let mut image: std::fs::File = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
        image.write_all(&[0xa5; 0x1_0000]).expect("write disk");
        let disk = DiskFile::open(&DiskConfig {
            path: format!("/proc/self/fd/{}", image.as_raw_fd()).into(),
            readonly: false,
        })
        .expect("open disk");
        std::mem::forget(image);
        Mutex::new(Fixture { mem, disk })
    })
}

/// The target.
pub fn run(data: &[u8]) {
    let _ = process(data);
}

/// How many chains a seed completes (the used ring's index after the run).
#[cfg(test)]
pub(crate) fn test_used_entries(data: &[u8]) -> u16 {
    process(data).unwrap_or(0)
}

/// Runs the input; returns the used ring's index, if the queue was valid.
fn process(data: &[u8]) -> Option<u16> {
    let mut i = Input::new(data);
    let mut config = QueueConfig::new(MAX_QUEUE);
    config.size = i.u16();
    config.desc_table = u64::from(i.u16()) * 16;
    config.avail_ring = u64::from(i.u16()) * 16;
    config.used_ring = u64::from(i.u16()) * 16;
    config.ready = true;
    let f = fixture().lock().unwrap_or_else(|e| e.into_inner());
    let mut ram = vec![0u8; REGION];
    let contents = i.rest();
    let n = contents.len().min(REGION);
    ram[..n].copy_from_slice(&contents[..n]);
    f.mem
        .write_slice(&ram, GuestAddress(0))
        .expect("first region");
    f.mem
        .write_slice(&[0u8; REGION], GuestAddress(SECOND))
        .expect("second region");
    let queue = config.build(0, &f.mem).ok()?;
    let mut q = ActiveQueue::new("virtio-blk", 0, queue, f.mem.clone(), Arc::new(NoInterrupt));
    let mut errors = LogBudget::default();
    // Twice: the second pass must find nothing new (or a broken queue).
    for _ in 0..2 {
        q.process(|mem, buffers| request::process(mem, &f.disk, buffers, &mut errors));
    }
    f.mem
        .read_obj::<u16>(GuestAddress(config.used_ring + 2))
        .ok()
}
