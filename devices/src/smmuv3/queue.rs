//! Queue arithmetic shared by the command and event queues: a `*_BASE` register gives the
//! base address and log2 of the entries; PROD and CONS hold an index with a wrap bit just
//! above it (equal with equal wrap: empty; equal with different wrap: full).

/// Q_BASE.ADDR (bits 51:5).
const BASE_ADDR_MASK: u64 = ((1 << 52) - 1) & !0x1f;

/// A queue's geometry, from its base register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Queue {
    /// Guest physical address of entry 0.
    pub base: u64,
    /// log2 of the entries (clamped to what IDR1 offers).
    pub log2size: u32,
    /// Bytes per entry.
    pub entry_size: u64,
}

impl Queue {
    /// The geometry a `*_BASE` value describes, LOG2SIZE clamped to `max_log2`.
    pub fn from_base(reg: u64, max_log2: u32, entry_size: u64) -> Queue {
        Queue {
            base: reg & BASE_ADDR_MASK,
            log2size: ((reg & 0x1f) as u32).min(max_log2),
            entry_size,
        }
    }

    /// The bits of PROD/CONS that are index and wrap.
    pub fn mask(&self) -> u32 {
        (2u32 << self.log2size) - 1
    }

    /// The entry index of a PROD/CONS value.
    pub fn index(&self, v: u32) -> u32 {
        v & ((1 << self.log2size) - 1)
    }

    /// Whether nothing is between `cons` and `prod`.
    pub fn is_empty(&self, prod: u32, cons: u32) -> bool {
        (prod ^ cons) & self.mask() == 0
    }

    /// Whether the queue is full.
    pub fn is_full(&self, prod: u32, cons: u32) -> bool {
        let wrap = 1 << self.log2size;
        (prod ^ cons) & self.mask() == wrap
    }

    /// `v` advanced by one entry (index and wrap only).
    pub fn next(&self, v: u32) -> u32 {
        (v & self.mask()).wrapping_add(1) & self.mask()
    }

    /// Guest address of the entry `v` points at.
    pub fn entry_addr(&self, v: u32) -> u64 {
        self.base + u64::from(self.index(v)) * self.entry_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_bits_tell_full_from_empty() {
        let q = Queue::from_base(0x8000_1000 | 2 | (1 << 62), 12, 16);
        assert_eq!(q.base, 0x8000_1000);
        assert_eq!((q.log2size, q.mask()), (2, 7));
        assert!(q.is_empty(0, 0));
        let mut prod = 0;
        for _ in 0..4 {
            prod = q.next(prod);
        }
        assert_eq!(prod, 4);
        assert!(q.is_full(prod, 0) && !q.is_empty(prod, 0));
        assert_eq!(q.entry_addr(prod), 0x8000_1000);
        for _ in 0..4 {
            prod = q.next(prod);
        }
        assert_eq!(prod, 0, "wrapped twice");
        assert_eq!(Queue::from_base(31, 12, 16).log2size, 12, "clamped");
        assert!(
            q.is_empty(0xff00_0000, 0),
            "bits above the wrap are ignored"
        );
    }
}
