//! Event records the emulated SMMU raises itself (the host's come from the backend) and
//! the small queue that holds them until the guest's event queue takes them.

use std::collections::VecDeque;

/// Bytes of one event record.
pub const EVENT_SIZE: u64 = 32;

/// C_BAD_STREAMID: a StreamID beyond the stream table.
pub const C_BAD_STREAMID: u8 = 0x02;
/// F_STE_FETCH: the STE could not be read from guest memory.
pub const F_STE_FETCH: u8 = 0x03;
/// C_BAD_STE: the STE is illegal (or the host refused it).
pub const C_BAD_STE: u8 = 0x04;

/// Local events kept for the guest at most; beyond, they are lost (and reported so).
pub const LOCAL_EVENTS_MAX: usize = 256;

/// An event record about `sid` with no further fields.
pub fn record(event_id: u8, sid: u32) -> [u64; 4] {
    [u64::from(event_id) | (u64::from(sid) << 32), 0, 0, 0]
}

/// An F_STE_FETCH record (the fetch address in word 3).
pub fn ste_fetch(sid: u32, addr: u64) -> [u64; 4] {
    let mut r = record(F_STE_FETCH, sid);
    r[3] = addr & !7;
    r
}

/// Events raised by the SMMU itself, waiting for room in the guest's queue.
#[derive(Debug, Default)]
pub struct LocalEvents {
    queue: VecDeque<[u64; 4]>,
    /// Some were dropped since the guest last got one.
    pub lost: bool,
}

impl LocalEvents {
    /// Queues a record (dropping it, and noting the loss, when full).
    pub fn push(&mut self, r: [u64; 4]) {
        if self.queue.len() >= LOCAL_EVENTS_MAX {
            self.lost = true;
        } else {
            self.queue.push_back(r);
        }
    }

    /// The oldest record.
    pub fn pop(&mut self) -> Option<[u64; 4]> {
        self.queue.pop_front()
    }

    /// Puts a record back at the front (the guest queue was full).
    pub fn unpop(&mut self, r: [u64; 4]) {
        self.queue.push_front(r);
    }

    /// How many are waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether none are waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_overflow() {
        assert_eq!(record(C_BAD_STE, 0x18), [0x04 | (0x18 << 32), 0, 0, 0]);
        assert_eq!(ste_fetch(1, 0x1007)[3], 0x1000);
        let mut q = LocalEvents::default();
        for i in 0..LOCAL_EVENTS_MAX + 3 {
            q.push(record(C_BAD_STE, i as u32));
        }
        assert_eq!(q.len(), LOCAL_EVENTS_MAX);
        assert!(q.lost);
        let first = q.pop().unwrap();
        q.unpop(first);
        assert_eq!(q.pop(), Some(record(C_BAD_STE, 0)));
    }
}
