//! A descriptor chain checked against guest RAM and split into what the
//! device reads and what it writes.
//!
//! [`RequestBuffers::parse`] walks a chain the way `virtio-queue` yields it
//! and rejects what the driver must not do:
//!
//! * a chain that does not end: a loop (the iterator stops after
//!   queue-size descriptors), a `next` past the table, or a descriptor or
//!   indirect table that is not in RAM, a chain longer than 4 GiB in
//!   total. `virtio-queue` ends the iteration
//!   silently in all these cases; the last descriptor it yielded then still
//!   has `VIRTQ_DESC_F_NEXT` set, which is how they are told apart from a
//!   chain that ends properly;
//! * a buffer that is not entirely in guest RAM;
//! * a device-readable buffer after a device-writable one.
//!
//! The result is two [`GuestBuffer`]s, each a list of guest ranges seen as
//! one byte stream, so devices do not depend on how the driver split a
//! request into descriptors (virtio 1.x requires any layout to work).
//!
//! Every access goes through `vm-memory` at the checked addresses, so no
//! guest input can make the device touch host memory outside guest RAM.
//!
//! What this module does not do: it neither pops chains nor returns them to
//! the used ring (see [`queue`](super::queue)).

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryError, Permissions, ReadVolatile,
    WriteVolatile,
};

/// Errors of a descriptor chain. All of them are guest driver bugs (or
/// attacks); the request fails, the device goes on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// The head index or the first descriptor is unusable.
    #[error(
        "descriptor chain {head} has no usable descriptor (head past the queue size, or the \
         descriptor table or indirect table is not in guest RAM); the request is dropped"
    )]
    Empty {
        /// Head index.
        head: u16,
    },
    /// The chain ends with a descriptor that still points to a next one.
    #[error(
        "descriptor chain {head} does not end: after {count} descriptors the next one is a \
         loop, past the table, not in guest RAM or makes the chain longer than 4 GiB; the \
         request is dropped"
    )]
    Unterminated {
        /// Head index.
        head: u16,
        /// Descriptors read before the chain broke.
        count: usize,
    },
    /// A buffer lies (partly) outside guest RAM.
    #[error(
        "descriptor chain {head} has a buffer [{addr:#x}, +{len:#x}) outside guest RAM; the \
         request is dropped"
    )]
    OutsideRam {
        /// Head index.
        head: u16,
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// A device-readable buffer follows a device-writable one.
    #[error(
        "descriptor chain {head} has a device-readable buffer after a device-writable one, \
         which virtio forbids; the request is dropped"
    )]
    ReadableAfterWritable {
        /// Head index.
        head: u16,
    },
}

/// Guest ranges seen as one byte stream, every range checked to be in RAM
/// with the access the device needs.
///
/// Invariant: `len` is the sum of the range lengths; no range is empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestBuffer {
    ranges: Vec<(GuestAddress, u32)>,
    len: u64,
}

impl GuestBuffer {
    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The guest ranges, in order.
    pub fn ranges(&self) -> &[(GuestAddress, u32)] {
        &self.ranges
    }

    fn push(&mut self, addr: GuestAddress, len: u32) {
        if len > 0 {
            self.ranges.push((addr, len));
            self.len += u64::from(len);
        }
    }

    /// Splits the buffer at byte `at` (clamped to its length): the first
    /// `at` bytes stay, the rest is returned.
    pub fn split_off(&mut self, at: u64) -> GuestBuffer {
        let mut rest = GuestBuffer::default();
        let mut offset = 0u64;
        let mut keep = Vec::new();
        for &(addr, len) in &self.ranges {
            let end = offset + u64::from(len);
            if end <= at {
                keep.push((addr, len));
            } else if offset >= at {
                rest.push(addr, len);
            } else {
                // `at - offset` is below `len`, so it fits in a u32 and the
                // address cannot overflow (the range was checked in RAM).
                let head = (at - offset) as u32;
                keep.push((addr, head));
                rest.push(addr.unchecked_add(u64::from(head)), len - head);
            }
            offset = end;
        }
        self.len -= rest.len;
        self.ranges = keep;
        rest
    }

    /// Copies the first `data.len()` bytes of the buffer into `data`.
    pub fn read_bytes<M: GuestMemory>(
        &self,
        mem: &M,
        data: &mut [u8],
    ) -> Result<(), GuestMemoryError> {
        let mut done = 0usize;
        for &(addr, len) in &self.ranges {
            if done == data.len() {
                break;
            }
            let n = (len as usize).min(data.len() - done);
            mem.read_slice(&mut data[done..done + n], addr)?;
            done += n;
        }
        if done < data.len() {
            return Err(GuestMemoryError::PartialBuffer {
                expected: data.len(),
                completed: done,
            });
        }
        Ok(())
    }

    /// Copies `data` to the start of the buffer; fails (after a partial
    /// copy) if the buffer is shorter.
    pub fn write_bytes<M: GuestMemory>(
        &self,
        mem: &M,
        data: &[u8],
    ) -> Result<(), GuestMemoryError> {
        let mut done = 0usize;
        for &(addr, len) in &self.ranges {
            if done == data.len() {
                break;
            }
            let n = (len as usize).min(data.len() - done);
            mem.write_slice(&data[done..done + n], addr)?;
            done += n;
        }
        if done < data.len() {
            return Err(GuestMemoryError::PartialBuffer {
                expected: data.len(),
                completed: done,
            });
        }
        Ok(())
    }

    /// Fills the whole buffer with bytes read from `src` (a file at its
    /// current position); fails on a short read.
    pub fn fill_from<M: GuestMemory, F: ReadVolatile>(
        &self,
        mem: &M,
        src: &mut F,
    ) -> Result<(), GuestMemoryError> {
        for &(addr, len) in &self.ranges {
            mem.read_exact_volatile_from(addr, src, len as usize)?;
        }
        Ok(())
    }

    /// Writes the whole buffer to `dst` (a file at its current position).
    pub fn drain_to<M: GuestMemory, F: WriteVolatile>(
        &self,
        mem: &M,
        dst: &mut F,
    ) -> Result<(), GuestMemoryError> {
        for &(addr, len) in &self.ranges {
            mem.write_all_volatile_to(addr, dst, len as usize)?;
        }
        Ok(())
    }
}

/// The buffers of one request: what the device reads (the driver's
/// device-readable descriptors) and what it writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestBuffers {
    /// Head index of the chain, to return it to the used ring.
    pub head: u16,
    /// Device-readable bytes, in chain order.
    pub readable: GuestBuffer,
    /// Device-writable bytes, in chain order.
    pub writable: GuestBuffer,
}

impl RequestBuffers {
    /// Walks `chain` and checks every buffer against `mem`.
    pub fn parse<M>(mut chain: DescriptorChain<M>) -> Result<Self, ChainError>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        let head = chain.head_index();
        let mut buffers = RequestBuffers {
            head,
            ..Default::default()
        };
        let mut count = 0usize;
        let mut last_has_next = false;
        while let Some(desc) = chain.next() {
            count += 1;
            last_has_next = desc.has_next();
            let (addr, len) = (desc.addr(), desc.len());
            let access = if desc.is_write_only() {
                Permissions::Write
            } else {
                Permissions::Read
            };
            if len > 0 && !chain.memory().check_range(addr, len as usize, access) {
                return Err(ChainError::OutsideRam {
                    head,
                    addr: addr.0,
                    len,
                });
            }
            if desc.is_write_only() {
                buffers.writable.push(addr, len);
            } else if !buffers.writable.ranges.is_empty() {
                return Err(ChainError::ReadableAfterWritable { head });
            } else {
                buffers.readable.push(addr, len);
            }
        }
        if count == 0 {
            return Err(ChainError::Empty { head });
        }
        if last_has_next {
            return Err(ChainError::Unterminated { head, count });
        }
        Ok(buffers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::{guest_memory, TestQueue, MEM_SIZE};
    use virtio_queue::QueueOwnedT;

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;
    const F_INDIRECT: u16 = 4;

    fn parse_one(
        mem: &vm_memory::GuestMemoryMmap,
        tq: &TestQueue,
    ) -> Result<RequestBuffers, ChainError> {
        let mut q = tq.queue();
        let chain = q.iter(mem).unwrap().next().unwrap();
        RequestBuffers::parse(chain)
    }

    #[test]
    fn splits_readable_and_writable() {
        let mem = guest_memory();
        let mut tq = TestQueue::new(&mem, 16);
        tq.add_chain(
            &mem,
            &[(0x8000, 16, false), (0x9000, 8, false), (0xa000, 100, true)],
        );
        let b = parse_one(&mem, &tq).unwrap();
        assert_eq!(b.head, 0);
        assert_eq!(b.readable.len(), 24);
        assert_eq!(b.readable.ranges().len(), 2);
        assert_eq!(b.writable.len(), 100);
    }

    #[test]
    fn loop_is_unterminated() {
        let mem = guest_memory();
        let tq = TestQueue::new(&mem, 4);
        // 0 -> 1 -> 0 -> ...
        tq.write_desc(&mem, 0, 0x8000, 8, F_NEXT, 1);
        tq.write_desc(&mem, 1, 0x8000, 8, F_NEXT, 0);
        tq.publish(&mem, 0);
        assert_eq!(
            parse_one(&mem, &tq),
            Err(ChainError::Unterminated { head: 0, count: 4 })
        );
    }

    #[test]
    fn next_past_table_is_unterminated() {
        let mem = guest_memory();
        let tq = TestQueue::new(&mem, 4);
        tq.write_desc(&mem, 0, 0x8000, 8, F_NEXT, 9);
        tq.publish(&mem, 0);
        assert_eq!(
            parse_one(&mem, &tq),
            Err(ChainError::Unterminated { head: 0, count: 1 })
        );
    }

    #[test]
    fn head_past_table_is_empty() {
        let mem = guest_memory();
        let tq = TestQueue::new(&mem, 4);
        tq.publish(&mem, 7);
        assert_eq!(parse_one(&mem, &tq), Err(ChainError::Empty { head: 7 }));
    }

    #[test]
    fn buffer_outside_ram() {
        let mem = guest_memory();
        for (addr, len) in [
            (MEM_SIZE, 1),
            (MEM_SIZE - 4, 8),
            (u64::MAX - 3, 8),
            (0x1000, 2 * MEM_SIZE as u32),
        ] {
            let mut tq = TestQueue::new(&mem, 4);
            tq.add_chain(&mem, &[(0x8000, 16, false), (addr, len, true)]);
            assert_eq!(
                parse_one(&mem, &tq),
                Err(ChainError::OutsideRam { head: 0, addr, len }),
                "{addr:#x} {len:#x}"
            );
        }
    }

    #[test]
    fn chain_over_4_gib_is_unterminated() {
        let mem = guest_memory();
        let mut tq = TestQueue::new(&mem, 4);
        tq.add_chain(&mem, &[(0x8000, 16, false), (0x1000, u32::MAX, true)]);
        assert_eq!(
            parse_one(&mem, &tq),
            Err(ChainError::Unterminated { head: 0, count: 1 })
        );
    }

    #[test]
    fn readable_after_writable() {
        let mem = guest_memory();
        let mut tq = TestQueue::new(&mem, 4);
        tq.add_chain(&mem, &[(0x8000, 1, true), (0x9000, 16, false)]);
        assert_eq!(
            parse_one(&mem, &tq),
            Err(ChainError::ReadableAfterWritable { head: 0 })
        );
    }

    #[test]
    fn indirect_table_outside_ram_or_nested() {
        let mem = guest_memory();
        let tq = TestQueue::new(&mem, 4);
        tq.write_desc(&mem, 0, MEM_SIZE + 0x1000, 32, F_INDIRECT, 0);
        tq.publish(&mem, 0);
        assert_eq!(parse_one(&mem, &tq), Err(ChainError::Empty { head: 0 }));

        // An indirect table whose entry points to another indirect table.
        let tq = TestQueue::new(&mem, 4);
        tq.write_desc(&mem, 0, 0x20000, 16, F_INDIRECT, 0);
        mem.write_obj(
            virtio_queue::desc::split::Descriptor::new(0x21000, 16, F_INDIRECT, 0),
            GuestAddress(0x20000),
        )
        .unwrap();
        tq.publish(&mem, 0);
        assert_eq!(parse_one(&mem, &tq), Err(ChainError::Empty { head: 0 }));
    }

    #[test]
    fn indirect_table_works() {
        let mem = guest_memory();
        let tq = TestQueue::new(&mem, 4);
        tq.write_desc(&mem, 0, 0x20000, 32, F_INDIRECT, 0);
        let d0 = virtio_queue::desc::split::Descriptor::new(0x8000, 16, F_NEXT, 1);
        let d1 = virtio_queue::desc::split::Descriptor::new(0x9000, 1, F_WRITE, 0);
        mem.write_obj(d0, GuestAddress(0x20000)).unwrap();
        mem.write_obj(d1, GuestAddress(0x20010)).unwrap();
        tq.publish(&mem, 0);
        let b = parse_one(&mem, &tq).unwrap();
        assert_eq!((b.readable.len(), b.writable.len()), (16, 1));
    }

    #[test]
    fn split_and_copy() {
        let mem = guest_memory();
        let mut buf = GuestBuffer::default();
        buf.push(GuestAddress(0x1000), 4);
        buf.push(GuestAddress(0x2000), 0);
        buf.push(GuestAddress(0x3000), 6);
        assert_eq!(buf.ranges().len(), 2, "empty ranges are dropped");
        buf.write_bytes(&mem, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
            .unwrap();
        let mut rest = buf.split_off(6);
        assert_eq!((buf.len(), rest.len()), (6, 4));
        let mut out = [0u8; 4];
        rest.read_bytes(&mem, &mut out).unwrap();
        assert_eq!(out, [7, 8, 9, 10]);
        let last = rest.split_off(3);
        assert_eq!(last.ranges(), &[(GuestAddress(0x3005), 1)]);
        assert!(matches!(
            rest.write_bytes(&mem, &[0; 4]),
            Err(GuestMemoryError::PartialBuffer { .. })
        ));
        let empty = rest.split_off(100);
        assert!(empty.is_empty());
        assert_eq!(rest.len(), 3);
        let mut big = [0u8; 11];
        assert!(buf.read_bytes(&mem, &mut big).is_err());
    }
}
