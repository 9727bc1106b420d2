//! Virtqueues: what the driver programmed, checked before use, and the loop
//! that takes requests off a live queue.
//!
//! * [`QueueConfig`] holds the registers of one queue as the driver wrote
//!   them through the transport. [`QueueConfig::build`] turns them into a
//!   `virtio_queue::Queue` only if the size is valid and the descriptor
//!   table and both rings are aligned and lie entirely in guest RAM;
//!   otherwise the transport refuses to activate the device and sets
//!   `DEVICE_NEEDS_RESET`.
//! * [`ActiveQueue`] pops the chains the driver made available, checks
//!   each ([`RequestBuffers::parse`]), hands the good ones to the device and
//!   returns every chain to the used ring, then interrupts the driver. A bad
//!   chain is logged and returned with length 0; a corrupt ring (an
//!   available index more than a queue ahead, a head past the queue) stops
//!   the queue and sets `DEVICE_NEEDS_RESET`.
//!
//! What this module does not do: packed queues and `VIRTIO_F_RING_EVENT_IDX`.

use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::chain::RequestBuffers;
use super::device::VirtioInterrupt;

/// Bytes of one descriptor table entry.
const DESC_SIZE: u64 = 16;
/// Bytes of the available ring besides its entries (flags, idx, used_event).
const AVAIL_META: u64 = 6;
/// Bytes of the used ring besides its entries (flags, idx, avail_event).
const USED_META: u64 = 6;
/// Bytes of one used ring entry.
const USED_ELEM_SIZE: u64 = 8;
/// Guest-caused errors logged at warning level before the log thins out.
const LOUD_ERRORS: u64 = 10;

/// Keeps a guest that repeats the same mistake from flooding the log: the
/// first few errors are logged, then only the 16th, 32nd, 64th, ...
#[derive(Debug, Default)]
pub struct LogBudget {
    count: u64,
}

impl LogBudget {
    /// Counts an error; returns the count if it should be logged.
    pub fn spend(&mut self) -> Option<u64> {
        self.count += 1;
        (self.count <= LOUD_ERRORS || self.count.is_power_of_two()).then_some(self.count)
    }
}

/// Errors of a queue the driver programmed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    /// The device declared an impossible maximum size.
    #[error(
        "queue {index} has a maximum size of {max}, which is not a power of two from 1 to \
         32768; this is a device model bug"
    )]
    MaxSize {
        /// Queue index.
        index: u16,
        /// Declared maximum.
        max: u16,
    },
    /// The driver chose a size that is zero, not a power of two or too big.
    #[error(
        "the driver set queue {index} to {size} entries: the size must be a power of two \
         from 1 to {max}; the device needs a reset"
    )]
    Size {
        /// Queue index.
        index: u16,
        /// Requested size.
        size: u16,
        /// Largest size.
        max: u16,
    },
    /// A ring is not aligned as virtio requires.
    #[error(
        "the driver put the {what} of queue {index} at {addr:#x}, which is not {align}-byte \
         aligned; the device needs a reset"
    )]
    Misaligned {
        /// Queue index.
        index: u16,
        /// "descriptor table", "available ring" or "used ring".
        what: &'static str,
        /// Guest address.
        addr: u64,
        /// Required alignment.
        align: u64,
    },
    /// A ring is (partly) outside guest RAM.
    #[error(
        "the driver put the {what} of queue {index} at [{addr:#x}, +{len:#x}), which is not \
         entirely in guest RAM; the device needs a reset"
    )]
    OutsideRam {
        /// Queue index.
        index: u16,
        /// "descriptor table", "available ring" or "used ring".
        what: &'static str,
        /// Guest address.
        addr: u64,
        /// Bytes the ring needs.
        len: u64,
    },
}

/// The registers of one queue, as the driver programmed them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Largest size the device supports.
    pub max_size: u16,
    /// Size the driver chose (initially `max_size`).
    pub size: u16,
    /// Whether the driver enabled the queue.
    pub ready: bool,
    /// Guest address of the descriptor table.
    pub desc_table: u64,
    /// Guest address of the available ("driver") ring.
    pub avail_ring: u64,
    /// Guest address of the used ("device") ring.
    pub used_ring: u64,
}

impl QueueConfig {
    /// A queue of at most `max_size` entries, at its reset values.
    pub fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            ready: false,
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
        }
    }

    /// Back to the reset values.
    pub fn reset(&mut self) {
        *self = Self::new(self.max_size);
    }

    /// Checks the configuration against `mem` and builds the queue, ready
    /// for use. `index` is for error messages.
    pub fn build<M: GuestMemory>(&self, index: u16, mem: &M) -> Result<Queue, QueueError> {
        let mut queue = Queue::new(self.max_size).map_err(|_| QueueError::MaxSize {
            index,
            max: self.max_size,
        })?;
        queue
            .try_set_size(self.size)
            .map_err(|_| QueueError::Size {
                index,
                size: self.size,
                max: self.max_size,
            })?;
        let size = u64::from(self.size);
        let rings = [
            (
                "descriptor table",
                self.desc_table,
                16,
                DESC_SIZE * size,
                Permissions::Read,
            ),
            (
                "available ring",
                self.avail_ring,
                2,
                AVAIL_META + 2 * size,
                Permissions::Read,
            ),
            (
                "used ring",
                self.used_ring,
                4,
                USED_META + USED_ELEM_SIZE * size,
                Permissions::ReadWrite,
            ),
        ];
        for (what, addr, align, len, access) in rings {
            if !addr.is_multiple_of(align) {
                return Err(QueueError::Misaligned {
                    index,
                    what,
                    addr,
                    align,
                });
            }
            // `len` is at most 16 * 32768, so it fits in a usize.
            if !mem.check_range(GuestAddress(addr), len as usize, access) {
                return Err(QueueError::OutsideRam {
                    index,
                    what,
                    addr,
                    len,
                });
            }
        }
        // The addresses were just checked: these cannot fail.
        let set = [
            queue.try_set_desc_table_address(GuestAddress(self.desc_table)),
            queue.try_set_avail_ring_address(GuestAddress(self.avail_ring)),
            queue.try_set_used_ring_address(GuestAddress(self.used_ring)),
        ];
        debug_assert!(set.iter().all(Result::is_ok));
        queue.set_ready(true);
        Ok(queue)
    }
}

/// A live queue of an activated device, owned by its worker thread.
pub struct ActiveQueue {
    device: &'static str,
    index: u16,
    queue: Queue,
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    /// Set once the ring is found corrupt; the queue then stays idle until
    /// the driver resets the device.
    broken: bool,
    bad_chains: LogBudget,
}

impl std::fmt::Debug for ActiveQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveQueue")
            .field("device", &self.device)
            .field("index", &self.index)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl ActiveQueue {
    /// Queue `index` of `device` (a name for log lines), over `mem`.
    pub fn new(
        device: &'static str,
        index: u16,
        queue: Queue,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Self {
        Self {
            device,
            index,
            queue,
            mem,
            interrupt,
            broken: false,
            bad_chains: LogBudget::default(),
        }
    }

    /// Index of the queue in its device.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Whether the ring was found corrupt (the queue is stopped).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Takes every chain the driver made available, passes each good one to
    /// `handle` (which returns the number of bytes it wrote to the guest),
    /// returns all of them to the used ring and interrupts the driver if it
    /// wants to be. Returns the number of chains returned.
    pub fn process(
        &mut self,
        mut handle: impl FnMut(&GuestMemoryMmap, RequestBuffers) -> u32,
    ) -> usize {
        if self.broken {
            return 0;
        }
        let (device, index) = (self.device, self.index);
        let mem = &self.mem;
        let chains: Vec<_> = match self.queue.iter(mem) {
            Ok(iter) => iter.collect(),
            Err(e) => {
                log::error!(
                    "{device} queue {index}: cannot read the available ring ({e}): the driver \
                     corrupted it; the queue stops and the device needs a reset"
                );
                self.broken = true;
                self.interrupt.set_needs_reset();
                return 0;
            }
        };
        let size = self.queue.size();
        let mut used = 0;
        let mut broken = false;
        for chain in chains {
            let head = chain.head_index();
            if head >= size {
                log::error!(
                    "{device} queue {index}: the available ring names descriptor {head}, past \
                     the queue size {size}: the driver corrupted the ring; the queue stops and \
                     the device needs a reset"
                );
                broken = true;
                break;
            }
            let len = match RequestBuffers::parse(chain) {
                Ok(buffers) => handle(mem, buffers),
                Err(e) => {
                    if let Some(n) = self.bad_chains.spend() {
                        log::warn!("{device} queue {index}: {e} ({n} bad chains so far)");
                    }
                    0
                }
            };
            if let Err(e) = self.queue.add_used(mem, head, len) {
                log::error!(
                    "{device} queue {index}: cannot return descriptor {head} to the used ring \
                     ({e}); the queue stops and the device needs a reset"
                );
                broken = true;
                break;
            }
            used += 1;
        }
        if used > 0 {
            match self.queue.needs_notification(mem) {
                Ok(false) => {}
                Ok(true) => self.interrupt.signal_used_queue(index),
                Err(e) => {
                    log::warn!("{device} queue {index}: cannot read the ring flags ({e}); interrupting anyway");
                    self.interrupt.signal_used_queue(index);
                }
            }
        }
        if broken {
            self.broken = true;
            self.interrupt.set_needs_reset();
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::{guest_memory, RecordingInterrupt, TestQueue, MEM_SIZE};
    use vm_memory::{Address, Bytes};

    fn config(size: u16, desc: u64, avail: u64, used: u64) -> QueueConfig {
        QueueConfig {
            size,
            desc_table: desc,
            avail_ring: avail,
            used_ring: used,
            ready: true,
            ..QueueConfig::new(256)
        }
    }

    #[test]
    fn build_checks_size_alignment_and_ram() {
        let mem = guest_memory();
        let q = config(256, 0x1000, 0x2000, 0x3000).build(0, &mem).unwrap();
        assert!(q.ready());
        assert_eq!(q.size(), 256);
        assert_eq!(q.desc_table(), 0x1000);
        assert!(q.is_valid(&mem));

        let cases = [
            (config(0, 0x1000, 0x2000, 0x3000), "size"),
            (config(3, 0x1000, 0x2000, 0x3000), "size"),
            (config(512, 0x1000, 0x2000, 0x3000), "size"),
            (config(256, 0x1008, 0x2000, 0x3000), "not 16-byte aligned"),
            (config(256, 0x1000, 0x2001, 0x3000), "not 2-byte aligned"),
            (config(256, 0x1000, 0x2000, 0x3002), "not 4-byte aligned"),
            (config(256, MEM_SIZE, 0x2000, 0x3000), "descriptor table"),
            (
                config(256, MEM_SIZE - 0x800, 0x2000, 0x3000),
                "descriptor table",
            ),
            (
                config(256, 0x1000, MEM_SIZE - 0x100, 0x3000),
                "available ring",
            ),
            (config(256, 0x1000, 0x2000, u64::MAX - 3), "used ring"),
            (config(256, 0x1000, 0x2000, 1 << 40), "used ring"),
        ];
        for (c, needle) in cases {
            let err = c.build(3, &mem).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(needle), "{msg}");
            assert!(msg.contains("queue 3"), "{msg}");
        }
        let mut bad_max = config(1, 0x1000, 0x2000, 0x3000);
        bad_max.max_size = 3;
        assert_eq!(
            bad_max.build(0, &mem),
            Err(QueueError::MaxSize { index: 0, max: 3 })
        );
    }

    fn active(mem: &GuestMemoryMmap, tq: &TestQueue) -> (ActiveQueue, Arc<RecordingInterrupt>) {
        let irq = Arc::new(RecordingInterrupt::default());
        let q = ActiveQueue::new("test", 0, tq.queue(), mem.clone(), irq.clone());
        (q, irq)
    }

    #[test]
    fn good_and_bad_chains_are_returned() {
        let mem = guest_memory();
        let mut tq = TestQueue::new(&mem, 8);
        tq.add_chain(&mem, &[(0x8000, 4, false), (0x9000, 4, true)]);
        // A loop 2 -> 3 -> 2.
        tq.write_desc(&mem, 2, 0x8000, 4, 1, 3);
        tq.write_desc(&mem, 3, 0x8000, 4, 1, 2);
        tq.publish(&mem, 2);
        tq.next_free = 4;
        tq.add_chain(&mem, &[(0x9000, 4, true)]);
        let (mut q, irq) = active(&mem, &tq);
        let mut seen = Vec::new();
        let n = q.process(|mem, b| {
            b.writable.write_bytes(mem, &[0xaa]).unwrap();
            seen.push(b.head);
            1
        });
        assert_eq!(n, 3);
        assert_eq!(seen, vec![0, 4]);
        assert_eq!(tq.used(&mem), vec![(0, 1), (2, 0), (4, 1)]);
        assert_eq!(irq.take(), vec!["queue 0"]);
        assert!(!q.is_broken());
        // Nothing new: nothing returned, no interrupt.
        assert_eq!(q.process(|_, _| 0), 0);
        assert!(irq.take().is_empty());
    }

    #[test]
    fn avail_index_far_ahead_breaks_the_queue() {
        let mem = guest_memory();
        let tq = TestQueue::new(&mem, 4);
        mem.write_obj(9u16, tq.avail_addr().unchecked_add(2))
            .unwrap();
        let (mut q, irq) = active(&mem, &tq);
        assert_eq!(q.process(|_, _| panic!("no chain expected")), 0);
        assert!(q.is_broken());
        assert_eq!(irq.take(), vec!["needs reset"]);
        // A broken queue stays idle.
        assert_eq!(q.process(|_, _| 0), 0);
        assert!(irq.take().is_empty());
    }

    #[test]
    fn head_past_queue_breaks_the_queue() {
        let mem = guest_memory();
        let mut tq = TestQueue::new(&mem, 4);
        tq.add_chain(&mem, &[(0x9000, 4, true)]);
        tq.publish(&mem, 1000);
        let (mut q, irq) = active(&mem, &tq);
        assert_eq!(q.process(|_, _| 1), 1);
        assert!(q.is_broken());
        assert_eq!(irq.take(), vec!["queue 0", "needs reset"]);
        assert_eq!(tq.used(&mem), vec![(0, 1)]);
    }
}
