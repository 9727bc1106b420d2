//! Test doubles for the virtio unit tests: guest memory, a driver-side
//! split queue written by hand into that memory, and a recording
//! [`VirtioInterrupt`].

use std::cell::Cell;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::device::VirtioInterrupt;

/// Size of the test guest RAM, at guest address 0.
pub const MEM_SIZE: u64 = 0x10_0000;
/// Where [`TestQueue`] puts its descriptor table.
const DESC_BASE: u64 = 0x4_0000;
/// Where [`TestQueue`] puts its available ring.
const AVAIL_BASE: u64 = 0x4_8000;
/// Where [`TestQueue`] puts its used ring.
const USED_BASE: u64 = 0x5_0000;

/// Descriptor flag: the chain goes on at `next`.
pub const F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub const F_WRITE: u16 = 2;

/// 1 MiB of guest RAM at 0.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// Polls `cond` every millisecond for up to 5 seconds.
pub fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cond()
}

/// The driver side of a split queue at fixed addresses.
pub struct TestQueue {
    /// Queue size.
    pub size: u16,
    /// Next descriptor index `add_chain` uses.
    pub next_free: u16,
    avail_idx: Cell<u16>,
}

impl TestQueue {
    /// An empty queue of `size` entries (rings zeroed).
    pub fn new(mem: &GuestMemoryMmap, size: u16) -> Self {
        for base in [DESC_BASE, AVAIL_BASE, USED_BASE] {
            mem.write_slice(&[0u8; 0x8000], GuestAddress(base)).unwrap();
        }
        Self {
            size,
            next_free: 0,
            avail_idx: Cell::new(0),
        }
    }

    /// Address of the descriptor table.
    pub fn desc_addr(&self) -> GuestAddress {
        GuestAddress(DESC_BASE)
    }

    /// Address of the available ring.
    pub fn avail_addr(&self) -> GuestAddress {
        GuestAddress(AVAIL_BASE)
    }

    /// Address of the used ring.
    pub fn used_addr(&self) -> GuestAddress {
        GuestAddress(USED_BASE)
    }

    /// A device-side queue over these rings, ready.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.try_set_desc_table_address(self.desc_addr()).unwrap();
        q.try_set_avail_ring_address(self.avail_addr()).unwrap();
        q.try_set_used_ring_address(self.used_addr()).unwrap();
        q.set_ready(true);
        q
    }

    /// Writes descriptor `index`.
    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = self.desc_addr().unchecked_add(16 * u64::from(index));
        mem.write_obj(Descriptor::new(addr, len, flags, next), at)
            .unwrap();
    }

    /// Makes the chain starting at `head` available.
    pub fn publish(&self, mem: &GuestMemoryMmap, head: u16) {
        let idx = self.avail_idx.get();
        let slot = u64::from(idx % self.size);
        mem.write_obj(head, self.avail_addr().unchecked_add(4 + 2 * slot))
            .unwrap();
        self.avail_idx.set(idx.wrapping_add(1));
        mem.write_obj(idx.wrapping_add(1), self.avail_addr().unchecked_add(2))
            .unwrap();
    }

    /// Writes a chain of `(addr, len, device-writable)` buffers from
    /// `next_free` on and makes it available; returns its head.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, buffers: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_free;
        for (i, &(addr, len, write)) in buffers.iter().enumerate() {
            let index = head + i as u16;
            let mut flags = if write { F_WRITE } else { 0 };
            if i + 1 < buffers.len() {
                flags |= F_NEXT;
            }
            self.write_desc(mem, index, addr, len, flags, index + 1);
        }
        self.next_free = head + buffers.len() as u16;
        self.publish(mem, head);
        head
    }

    /// The used ring entries so far: (descriptor id, length).
    pub fn used(&self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
        let idx: u16 = mem.read_obj(self.used_addr().unchecked_add(2)).unwrap();
        (0..idx)
            .map(|i| {
                let at = self
                    .used_addr()
                    .unchecked_add(4 + 8 * u64::from(i % self.size));
                let id: u32 = mem.read_obj(at).unwrap();
                let len: u32 = mem.read_obj(at.unchecked_add(4)).unwrap();
                (id, len)
            })
            .collect()
    }
}

/// Records what a device signalled: "queue N", "config", "needs reset".
#[derive(Default)]
pub struct RecordingInterrupt {
    events: Mutex<Vec<String>>,
}

impl RecordingInterrupt {
    /// Returns and forgets the recorded events.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }
}

impl VirtioInterrupt for RecordingInterrupt {
    fn signal_used_queue(&self, queue: u16) {
        self.events.lock().unwrap().push(format!("queue {queue}"));
    }

    fn signal_config_change(&self) {
        self.events.lock().unwrap().push("config".to_string());
    }

    fn set_needs_reset(&self) {
        self.events.lock().unwrap().push("needs reset".to_string());
    }
}
