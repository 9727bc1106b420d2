//! An address bus that dispatches guest accesses to emulated devices.
//!
//! A [`Bus`] maps non-overlapping half-open ranges `[base, base + len)` to
//! devices implementing [`BusDevice`]. The same type serves the x86 port-I/O
//! space (16-bit port numbers widened to `u64`) and the MMIO space.
//!
//! What this module does not do: it never logs or fabricates data for
//! unclaimed accesses. [`Bus::read`] and [`Bus::write`] return `false` and the
//! caller (the vCPU exit handler) decides what to do, which by convention is
//! to log at debug level and return all-ones for reads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// A device that can be placed on a [`Bus`].
///
/// `offset` is relative to the base of the range the device was inserted at.
/// The bus guarantees that `offset + data.len()` stays inside that range, but
/// the width and the offset are still chosen by the guest: implementations
/// must accept any value without panicking.
pub trait BusDevice: Send {
    /// Handles a guest read of `data.len()` bytes at `offset`; fills `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors from [`Bus::insert`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// A device was inserted with an empty range.
    #[error("cannot map a device at {base:#x} with length 0: give the device a non-empty range")]
    ZeroLength {
        /// Requested base address.
        base: u64,
    },
    /// The range would extend past the end of the address space.
    #[error(
        "device range at {base:#x} with length {len:#x} runs past the end of the address space: \
         choose a lower base or a smaller length"
    )]
    Overflow {
        /// Requested base address.
        base: u64,
        /// Requested length.
        len: u64,
    },
    /// The range overlaps a device that is already on the bus.
    #[error(
        "device range [{new_base:#x}, {new_end:#x}) overlaps the existing range \
         [{old_base:#x}, {old_end:#x}): move one of the devices or remove the old one first"
    )]
    Overlap {
        /// Base of the range being inserted.
        new_base: u64,
        /// End (exclusive) of the range being inserted.
        new_end: u64,
        /// Base of the range already on the bus.
        old_base: u64,
        /// End (exclusive) of the range already on the bus.
        old_end: u64,
    },
}

/// A device mapped on the bus together with the length of its range.
#[derive(Clone)]
struct Entry {
    len: u64,
    dev: Arc<Mutex<dyn BusDevice>>,
}

/// An address space of non-overlapping device ranges.
///
/// Invariant: for every pair of entries in `devices`, the ranges
/// `[base, base + len)` are disjoint, non-empty and do not overflow `u64`.
///
/// Cloning a bus shares the devices (each clone holds the same `Arc`s), so a
/// bus can be built once and handed to every vCPU thread. Each device has its
/// own mutex; the bus holds no lock of its own, so there is no lock order to
/// respect beyond "one device lock at a time".
#[derive(Clone, Default)]
pub struct Bus {
    devices: BTreeMap<u64, Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.devices
                    .iter()
                    .map(|(base, e)| format!("[{:#x}, {:#x})", base, base + e.len)),
            )
            .finish()
    }
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `dev` at `[base, base + len)`.
    ///
    /// Fails if `len` is zero, if the range overflows `u64`, or if it overlaps
    /// a range already on the bus.
    pub fn insert(
        &mut self,
        dev: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { base });
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overflow { base, len })?;
        // The entry with the highest base below `end` is the only candidate
        // for an overlap: entries are disjoint, so every entry with a lower
        // base also ends at or before that entry's base.
        if let Some((&old_base, old)) = self.devices.range(..end).next_back() {
            let old_end = old_base + old.len;
            if old_end > base {
                return Err(BusError::Overlap {
                    new_base: base,
                    new_end: end,
                    old_base,
                    old_end,
                });
            }
        }
        self.devices.insert(base, Entry { len, dev });
        Ok(())
    }

    /// Unmaps the device whose range starts at `base` and returns it, or
    /// `None` if no range starts there.
    pub fn remove(&mut self, base: u64) -> Option<Arc<Mutex<dyn BusDevice>>> {
        self.devices.remove(&base).map(|e| e.dev)
    }

    /// Returns the number of mapped ranges.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Returns true if no device is mapped.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Finds the device whose range wholly contains `[addr, addr + size)`
    /// and returns it with the offset of `addr` inside the range.
    fn resolve(&self, addr: u64, size: usize) -> Option<(&Arc<Mutex<dyn BusDevice>>, u64)> {
        if size == 0 {
            return None;
        }
        let (&base, entry) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        let size = u64::try_from(size).ok()?;
        // `offset < entry.len` and `len - offset >= size` together mean the
        // access starts inside the range and does not straddle its end.
        if offset < entry.len && entry.len - offset >= size {
            Some((&entry.dev, offset))
        } else {
            None
        }
    }

    /// Dispatches a read of `data.len()` bytes at `addr`.
    ///
    /// Returns `false`, leaving `data` untouched, if no device covers the
    /// whole access (nothing mapped, or the access straddles a range end).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, offset)) => {
                dev.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write of `data` at `addr`.
    ///
    /// Returns `false` if no device covers the whole access (nothing mapped,
    /// or the access straddles a range end).
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((dev, offset)) => {
                dev.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the last access and answers reads with the offset.
    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
        reads: usize,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            self.reads += 1;
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn recorder() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn insert_rejects_zero_length_and_overflow() {
        let mut bus = Bus::new();
        assert_eq!(
            bus.insert(recorder(), 0x10, 0),
            Err(BusError::ZeroLength { base: 0x10 })
        );
        assert_eq!(
            bus.insert(recorder(), u64::MAX, 2),
            Err(BusError::Overflow {
                base: u64::MAX,
                len: 2
            })
        );
        // Ending exactly at u64::MAX (exclusive) is fine.
        bus.insert(recorder(), u64::MAX - 1, 1).unwrap();
        assert_eq!(bus.len(), 1);
    }

    #[test]
    fn insert_rejects_overlap_and_names_both_ranges() {
        let mut bus = Bus::new();
        bus.insert(recorder(), 0x100, 0x10).unwrap();
        for (base, len) in [
            (0x100, 1),
            (0xf8, 0x9),
            (0x10f, 1),
            (0x0, 0x1000),
            (0x108, 4),
        ] {
            let err = bus.insert(recorder(), base, len).unwrap_err();
            assert!(matches!(
                err,
                BusError::Overlap {
                    old_base: 0x100,
                    old_end: 0x110,
                    ..
                }
            ));
        }
        let msg = bus.insert(recorder(), 0xf8, 0x9).unwrap_err().to_string();
        assert!(msg.contains("[0xf8, 0x101)"), "{msg}");
        assert!(msg.contains("[0x100, 0x110)"), "{msg}");
        // Adjacent ranges on both sides are allowed.
        bus.insert(recorder(), 0xf0, 0x10).unwrap();
        bus.insert(recorder(), 0x110, 0x10).unwrap();
        assert_eq!(bus.len(), 3);
    }

    #[test]
    fn overlap_found_past_several_ranges() {
        let mut bus = Bus::new();
        bus.insert(recorder(), 0x0, 0x10).unwrap();
        bus.insert(recorder(), 0x20, 0x10).unwrap();
        bus.insert(recorder(), 0x40, 0x10).unwrap();
        let err = bus.insert(recorder(), 0x2f, 0x2).unwrap_err();
        assert!(matches!(err, BusError::Overlap { old_base: 0x20, .. }));
        bus.insert(recorder(), 0x30, 0x10).unwrap();
    }

    #[test]
    fn dispatch_passes_relative_offset() {
        let mut bus = Bus::new();
        let dev = recorder();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        assert!(bus.write(0x3fb, &[0xaa]));
        assert_eq!(dev.lock().unwrap().last_write, Some((3, vec![0xaa])));
        let mut data = [0u8; 2];
        assert!(bus.read(0x3fc, &mut data));
        assert_eq!(data, [4, 4]);
    }

    #[test]
    fn boundaries_and_straddles() {
        let mut bus = Bus::new();
        let dev = recorder();
        bus.insert(dev.clone(), 0x10, 4).unwrap();
        let mut one = [0xffu8];
        assert!(!bus.read(0xf, &mut one), "below the range");
        assert!(bus.read(0x10, &mut one), "first byte");
        assert!(bus.read(0x13, &mut one), "last byte");
        assert!(!bus.read(0x14, &mut one), "one past the end");
        let mut four = [0u8; 4];
        assert!(bus.read(0x10, &mut four), "whole range");
        assert!(!bus.read(0x11, &mut four), "straddles the end");
        assert!(!bus.write(0xe, &[0; 4]), "straddles the start");
        assert!(!bus.read(0x10, &mut []), "empty access");
        assert!(
            !bus.read(u64::MAX, &mut four),
            "empty bus region at the top"
        );
        assert_eq!(dev.lock().unwrap().reads, 3);
        assert!(dev.lock().unwrap().last_write.is_none());
    }

    #[test]
    fn remove_unmaps() {
        let mut bus = Bus::new();
        bus.insert(recorder(), 0x60, 5).unwrap();
        assert!(bus.remove(0x61).is_none());
        assert!(bus.remove(0x60).is_some());
        assert!(bus.is_empty());
        assert!(!bus.write(0x60, &[0]));
        bus.insert(recorder(), 0x60, 5).unwrap();
    }

    #[test]
    fn poisoned_device_is_still_dispatched() {
        let mut bus = Bus::new();
        let dev = recorder();
        bus.insert(dev.clone(), 0, 1).unwrap();
        let poisoner = dev.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("poison the device lock");
        })
        .join();
        assert!(dev.is_poisoned());
        assert!(bus.write(0, &[7]));
        let guard = dev.lock().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(guard.last_write, Some((0, vec![7])));
    }
}
