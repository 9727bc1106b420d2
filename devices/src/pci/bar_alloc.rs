//! Guest address allocation for BARs, from the PCI windows of the layout.
//!
//! [`AddressAllocator`] hands out naturally aligned ranges from one window
//! (first fit, lowest address); [`BarAllocator`] holds the 32-bit MMIO window,
//! the optional 64-bit MMIO window and the optional I/O window, and picks the
//! window for a BAR: 64-bit BARs go high when there is a 64-bit window and
//! room in it, otherwise below 4 GiB like 32-bit BARs.
//!
//! Memory ranges are at least 4 KiB (a page), so every BAR can be mmapped
//! into the guest on its own page, as passthrough needs; I/O ranges at least
//! 4 bytes. The BAR register still reports the device's real size.
//!
//! What this module does not do: it only describes the VMM's initial
//! assignment. When the guest later moves BARs itself (Linux on arm64
//! reassigns them all), the allocator is not told; the PCI root checks the
//! guest's placements against the windows and the other BARs instead.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use super::configuration::PciBarKind;

/// Smallest memory range handed out: one page.
pub const MIN_MMIO_ALLOCATION: u64 = 4096;
/// Smallest I/O range handed out.
pub const MIN_IO_ALLOCATION: u64 = 4;

/// One of the PCI address windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PciWindowKind {
    /// Port I/O (x86 only).
    Io,
    /// Memory below 4 GiB.
    Mmio32,
    /// Memory above 4 GiB.
    Mmio64,
}

impl fmt::Display for PciWindowKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PciWindowKind::Io => "I/O",
            PciWindowKind::Mmio32 => "32-bit",
            PciWindowKind::Mmio64 => "64-bit",
        })
    }
}

/// The guest address ranges reserved for BARs, from the VMM's layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciWindows {
    /// Window for memory BARs below 4 GiB (e.g. 0xc000_0000..0xe000_0000).
    pub mmio32: Range<u64>,
    /// Window for 64-bit memory BARs above 4 GiB, if the layout has one.
    pub mmio64: Option<Range<u64>>,
    /// Window for I/O BARs, if the platform has port I/O.
    pub io: Option<Range<u64>>,
}

/// Errors of BAR allocation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BarAllocError {
    /// A window that is empty, unaligned or in the wrong address range.
    #[error("the {kind} PCI window {start:#x}..{end:#x} is unusable: {reason}; fix the VM memory layout")]
    InvalidWindow {
        /// Which window.
        kind: PciWindowKind,
        /// Its start.
        start: u64,
        /// Its end (exclusive).
        end: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A BAR size that is not a power of two.
    #[error(
        "cannot place a BAR of {size:#x} bytes: BAR sizes are powers of two; round the \
         device's region up"
    )]
    NotPowerOfTwo {
        /// Requested size.
        size: u64,
    },
    /// The window has no free, aligned range large enough.
    #[error(
        "no room for a {} BAR in the {kind} PCI window {start:#x}-{last:#x}: {} is already \
         used by {count} BARs and the rest is too fragmented or too small; enlarge the window, \
         use fewer devices or give them smaller BARs",
        human_size(*size),
        human_size(*used)
    )]
    NoRoom {
        /// Requested size (after rounding up to the minimum).
        size: u64,
        /// Which window.
        kind: PciWindowKind,
        /// Window start.
        start: u64,
        /// Last address of the window.
        last: u64,
        /// Bytes allocated in the window.
        used: u64,
        /// Allocations in the window.
        count: usize,
    },
    /// No window of the kind a BAR needs.
    #[error(
        "the device has an {bar_kind} BAR but the VM has no {kind} PCI window: configure one \
         or use a device without such BARs"
    )]
    NoWindow {
        /// The kind of BAR.
        bar_kind: PciBarKind,
        /// The window it needs.
        kind: PciWindowKind,
    },
    /// A fixed range outside the window.
    #[error(
        "range {addr:#x}+{size:#x} is not inside the {kind} PCI window {start:#x}-{last:#x}: \
         place it inside the window"
    )]
    OutsideWindow {
        /// Requested address.
        addr: u64,
        /// Requested size.
        size: u64,
        /// Which window.
        kind: PciWindowKind,
        /// Window start.
        start: u64,
        /// Last address of the window.
        last: u64,
    },
    /// A fixed range that is misaligned or overlaps an allocation.
    #[error(
        "range {addr:#x}+{size:#x} in the {kind} PCI window is not naturally aligned or \
         overlaps the range at {other:#x}: pick a free, size-aligned address"
    )]
    Unavailable {
        /// Requested address.
        addr: u64,
        /// Requested size.
        size: u64,
        /// Which window.
        kind: PciWindowKind,
        /// The allocation in the way (the requested address if misaligned).
        other: u64,
    },
    /// Freeing an address that was not allocated.
    #[error("nothing is allocated at {addr:#x} in the {kind} PCI window: free only what allocate returned")]
    NotAllocated {
        /// Which window.
        kind: PciWindowKind,
        /// The address.
        addr: u64,
    },
}

/// Formats a byte count as the largest whole binary unit ("16 MiB").
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = 0;
    let mut value = bytes;
    while value >= 1024 && value & 1023 == 0 {
        value /= 1024;
        unit += 1;
    }
    format!("{value} {}", UNITS[unit])
}

/// Naturally aligned allocations from one window.
///
/// Invariant: the ranges in `used` are disjoint, non-empty and inside
/// `[start, end)`.
#[derive(Clone, Debug)]
pub struct AddressAllocator {
    kind: PciWindowKind,
    start: u64,
    end: u64,
    used: BTreeMap<u64, u64>,
}

impl AddressAllocator {
    /// An allocator over `range`. Memory windows must be page aligned,
    /// the 32-bit window must end by 4 GiB, the 64-bit window start at or
    /// above it, and the I/O window stay in the 64 KiB port space.
    pub fn new(kind: PciWindowKind, range: Range<u64>) -> Result<Self, BarAllocError> {
        let invalid = |reason| BarAllocError::InvalidWindow {
            kind,
            start: range.start,
            end: range.end,
            reason,
        };
        if range.start >= range.end {
            return Err(invalid("it is empty"));
        }
        match kind {
            PciWindowKind::Io if range.end > 1 << 16 => {
                return Err(invalid("I/O ports end at 0x10000"))
            }
            PciWindowKind::Mmio32 if range.end > 1 << 32 => {
                return Err(invalid("32-bit BARs must end by 4 GiB"))
            }
            PciWindowKind::Mmio64 if range.start < 1 << 32 => {
                return Err(invalid("the 64-bit window must start at or above 4 GiB"))
            }
            PciWindowKind::Mmio32 | PciWindowKind::Mmio64
                if (range.start | range.end) & (MIN_MMIO_ALLOCATION - 1) != 0 =>
            {
                return Err(invalid("memory windows must be 4 KiB aligned"))
            }
            _ => {}
        }
        Ok(Self {
            kind,
            start: range.start,
            end: range.end,
            used: BTreeMap::new(),
        })
    }

    /// Which window this is.
    pub fn kind(&self) -> PciWindowKind {
        self.kind
    }

    /// The window's address range.
    pub fn range(&self) -> Range<u64> {
        self.start..self.end
    }

    /// Whether `[addr, addr + size)` lies inside the window.
    pub fn contains(&self, addr: u64, size: u64) -> bool {
        addr >= self.start && addr.checked_add(size).is_some_and(|end| end <= self.end)
    }

    /// The size actually reserved for a BAR of `size` bytes.
    fn allocation_size(&self, size: u64) -> Result<u64, BarAllocError> {
        if !size.is_power_of_two() {
            return Err(BarAllocError::NotPowerOfTwo { size });
        }
        Ok(match self.kind {
            PciWindowKind::Io => size.max(MIN_IO_ALLOCATION),
            PciWindowKind::Mmio32 | PciWindowKind::Mmio64 => size.max(MIN_MMIO_ALLOCATION),
        })
    }

    /// Reserves the lowest free range of `size` bytes (a power of two,
    /// rounded up to the minimum) aligned to its size, and returns its
    /// address.
    pub fn allocate(&mut self, size: u64) -> Result<u64, BarAllocError> {
        let size = self.allocation_size(size)?;
        let no_room = || BarAllocError::NoRoom {
            size,
            kind: self.kind,
            start: self.start,
            last: self.end - 1,
            used: self.used.values().sum(),
            count: self.used.len(),
        };
        let mut candidate = align_up(self.start, size).ok_or_else(no_room)?;
        for (&base, &len) in &self.used {
            if candidate.checked_add(size).is_some_and(|end| end <= base) {
                break;
            }
            candidate = align_up(candidate.max(base + len), size).ok_or_else(no_room)?;
        }
        if !self.contains(candidate, size) {
            return Err(no_room());
        }
        self.used.insert(candidate, size);
        Ok(candidate)
    }

    /// Reserves `[addr, addr + size)` (size rounded up as for
    /// [`AddressAllocator::allocate`]); it must be aligned, free and inside
    /// the window.
    pub fn allocate_at(&mut self, addr: u64, size: u64) -> Result<(), BarAllocError> {
        let size = self.allocation_size(size)?;
        if !self.contains(addr, size) {
            return Err(BarAllocError::OutsideWindow {
                addr,
                size,
                kind: self.kind,
                start: self.start,
                last: self.end - 1,
            });
        }
        let unavailable = |other| BarAllocError::Unavailable {
            addr,
            size,
            kind: self.kind,
            other,
        };
        // `size` is a power of two.
        if addr & (size - 1) != 0 {
            return Err(unavailable(addr));
        }
        if let Some((&base, &len)) = self.used.range(..addr + size).next_back() {
            if base + len > addr {
                return Err(unavailable(base));
            }
        }
        self.used.insert(addr, size);
        Ok(())
    }

    /// Releases the allocation at `addr` and returns its size.
    pub fn free(&mut self, addr: u64) -> Result<u64, BarAllocError> {
        self.used.remove(&addr).ok_or(BarAllocError::NotAllocated {
            kind: self.kind,
            addr,
        })
    }
}

/// Rounds `value` up to a multiple of the power of two `align`.
fn align_up(value: u64, align: u64) -> Option<u64> {
    value.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// The allocators of all PCI windows.
#[derive(Clone, Debug)]
pub struct BarAllocator {
    mmio32: AddressAllocator,
    mmio64: Option<AddressAllocator>,
    io: Option<AddressAllocator>,
}

impl BarAllocator {
    /// Allocators over `windows`, which must not overlap.
    pub fn new(windows: &PciWindows) -> Result<Self, BarAllocError> {
        let mmio32 = AddressAllocator::new(PciWindowKind::Mmio32, windows.mmio32.clone())?;
        let mmio64 = windows
            .mmio64
            .clone()
            .map(|r| AddressAllocator::new(PciWindowKind::Mmio64, r))
            .transpose()?;
        let io = windows
            .io
            .clone()
            .map(|r| AddressAllocator::new(PciWindowKind::Io, r))
            .transpose()?;
        Ok(Self { mmio32, mmio64, io })
    }

    /// The allocator of window `kind`, if configured.
    pub fn window(&self, kind: PciWindowKind) -> Option<&AddressAllocator> {
        match kind {
            PciWindowKind::Mmio32 => Some(&self.mmio32),
            PciWindowKind::Mmio64 => self.mmio64.as_ref(),
            PciWindowKind::Io => self.io.as_ref(),
        }
    }

    fn window_mut(&mut self, kind: PciWindowKind) -> Option<&mut AddressAllocator> {
        match kind {
            PciWindowKind::Mmio32 => Some(&mut self.mmio32),
            PciWindowKind::Mmio64 => self.mmio64.as_mut(),
            PciWindowKind::Io => self.io.as_mut(),
        }
    }

    /// All configured windows.
    pub fn windows(&self) -> impl Iterator<Item = &AddressAllocator> {
        std::iter::once(&self.mmio32)
            .chain(self.mmio64.as_ref())
            .chain(self.io.as_ref())
    }

    /// Allocates a range for a BAR of `kind` and `size`, and returns the
    /// window it came from and its address.
    pub fn allocate(
        &mut self,
        kind: PciBarKind,
        size: u64,
    ) -> Result<(PciWindowKind, u64), BarAllocError> {
        match kind {
            PciBarKind::Io => {
                let io = self.io.as_mut().ok_or(BarAllocError::NoWindow {
                    bar_kind: kind,
                    kind: PciWindowKind::Io,
                })?;
                Ok((PciWindowKind::Io, io.allocate(size)?))
            }
            PciBarKind::Memory32 => Ok((PciWindowKind::Mmio32, self.mmio32.allocate(size)?)),
            PciBarKind::Memory64 => {
                if let Some(high) = self.mmio64.as_mut() {
                    match high.allocate(size) {
                        Ok(addr) => return Ok((PciWindowKind::Mmio64, addr)),
                        Err(BarAllocError::NoRoom { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok((PciWindowKind::Mmio32, self.mmio32.allocate(size)?))
            }
        }
    }

    /// Releases the allocation at `addr` in window `kind`.
    pub fn free(&mut self, kind: PciWindowKind, addr: u64) -> Result<u64, BarAllocError> {
        self.window_mut(kind)
            .ok_or(BarAllocError::NotAllocated { kind, addr })?
            .free(addr)
    }

    /// Whether a BAR of `kind` may decode at `[addr, addr + size)`: inside
    /// the I/O window for I/O BARs, inside a memory window otherwise.
    pub fn allows(&self, kind: PciBarKind, addr: u64, size: u64) -> bool {
        match kind {
            PciBarKind::Io => self.io.as_ref().is_some_and(|w| w.contains(addr, size)),
            PciBarKind::Memory32 | PciBarKind::Memory64 => {
                self.mmio32.contains(addr, size)
                    || self.mmio64.as_ref().is_some_and(|w| w.contains(addr, size))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn low() -> AddressAllocator {
        AddressAllocator::new(PciWindowKind::Mmio32, 0xc000_0000..0xe000_0000).unwrap()
    }

    #[test]
    fn allocations_are_naturally_aligned_and_page_sized() {
        let mut a = low();
        assert_eq!(a.allocate(0x100).unwrap(), 0xc000_0000, "rounded to a page");
        assert_eq!(a.allocate(0x1000).unwrap(), 0xc000_1000);
        assert_eq!(
            a.allocate(16 * MIB).unwrap(),
            0xc100_0000,
            "aligned to 16 MiB"
        );
        // The hole below the 16 MiB BAR is reused by first fit.
        assert_eq!(a.allocate(0x4000).unwrap(), 0xc000_4000);
        assert_eq!(a.allocate(0x2000).unwrap(), 0xc000_2000);
        for addr in [
            0xc000_0000,
            0xc000_1000,
            0xc100_0000,
            0xc000_4000,
            0xc000_2000,
        ] {
            let size = a.free(addr).unwrap();
            assert_eq!(addr % size, 0);
        }
        assert!(a.used.is_empty());
    }

    #[test]
    fn exhaustion_names_window_and_size() {
        let mut a = low();
        assert_eq!(a.allocate(256 * MIB).unwrap(), 0xc000_0000);
        assert_eq!(a.allocate(128 * MIB).unwrap(), 0xd000_0000);
        assert_eq!(a.allocate(64 * MIB).unwrap(), 0xd800_0000);
        assert_eq!(a.allocate(32 * MIB).unwrap(), 0xdc00_0000);
        let err = a.allocate(64 * MIB).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "no room for a 64 MiB BAR in the 32-bit PCI window 0xc0000000-0xdfffffff: \
                 480 MiB is already used by 4 BARs"
            ),
            "{msg}"
        );
        assert!(matches!(
            a.allocate(1 << 40),
            Err(BarAllocError::NoRoom { .. })
        ));
        assert!(matches!(
            a.allocate(1 << 63),
            Err(BarAllocError::NoRoom { .. })
        ));
        // Freeing makes room again.
        a.free(0xd000_0000).unwrap();
        assert_eq!(a.allocate(64 * MIB).unwrap(), 0xd000_0000);
    }

    #[test]
    fn rejects_bad_sizes_and_frees() {
        let mut a = low();
        assert_eq!(a.allocate(0), Err(BarAllocError::NotPowerOfTwo { size: 0 }));
        assert_eq!(
            a.allocate(0x3000),
            Err(BarAllocError::NotPowerOfTwo { size: 0x3000 })
        );
        assert!(a.free(0xc000_0000).is_err());
        let addr = a.allocate(0x1000).unwrap();
        a.free(addr).unwrap();
        assert!(a
            .free(addr)
            .unwrap_err()
            .to_string()
            .contains("free only what"));
    }

    #[test]
    fn allocate_at_refuses_overlap() {
        let mut a = low();
        a.allocate_at(0xc001_0000, 0x10000).unwrap();
        for (addr, size) in [
            (0xc001_0000, 0x1000),
            (0xc000_0000, 0x20000),
            (0xc001_f000, 0x1000),
        ] {
            assert!(
                matches!(
                    a.allocate_at(addr, size),
                    Err(BarAllocError::Unavailable {
                        other: 0xc001_0000,
                        ..
                    })
                ),
                "{addr:#x}"
            );
        }
        assert!(matches!(
            a.allocate_at(0xc000_1000, 0x2000),
            Err(BarAllocError::Unavailable {
                other: 0xc000_1000,
                ..
            })
        ));
        assert!(matches!(
            a.allocate_at(0xbfff_f000, 0x1000),
            Err(BarAllocError::OutsideWindow { .. })
        ));
        assert!(matches!(
            a.allocate_at(!0xfff, 0x1000),
            Err(BarAllocError::OutsideWindow { .. })
        ));
        a.allocate_at(0xc002_0000, 0x1000).unwrap();
        a.allocate_at(0xc000_f000, 0x1000).unwrap();
        // allocate skips the fixed ranges.
        assert_eq!(a.allocate(0x10000).unwrap(), 0xc003_0000);
        assert_eq!(a.allocate(0x1000).unwrap(), 0xc000_0000);
        assert_eq!(a.allocate(0x10000).unwrap(), 0xc004_0000);
    }

    #[test]
    fn window_validation() {
        use PciWindowKind::*;
        for (kind, range) in [
            (Mmio32, 0xc000_0000..0xc000_0000),
            (Mmio32, 0xc000_0000..0x1_0000_1000),
            (Mmio32, 0xc000_0800..0xe000_0000),
            (Mmio64, 0x8000_0000..0x1_0000_0000),
            (Io, 0x1000..0x10001),
        ] {
            let err = AddressAllocator::new(kind, range).unwrap_err();
            assert!(err.to_string().contains("fix the VM memory layout"));
        }
        // A window reaching the very top of the address space is fine.
        let mut top = AddressAllocator::new(Mmio64, 1 << 63..!0xfff).unwrap();
        assert_eq!(top.allocate(1 << 62).unwrap(), 1 << 63);
        assert_eq!(top.allocate(1 << 61).unwrap(), 0xc000_0000_0000_0000);
        // The last 1 << 62 block would end at 2^64, past the window.
        assert!(matches!(
            top.allocate(1 << 62),
            Err(BarAllocError::NoRoom { .. })
        ));
    }

    #[test]
    fn bar_allocator_picks_windows() {
        let windows = PciWindows {
            mmio32: 0xc000_0000..0xc001_0000,
            mmio64: Some(0x40_0000_0000..0x40_0001_0000),
            io: None,
        };
        let mut a = BarAllocator::new(&windows).unwrap();
        assert_eq!(
            a.allocate(PciBarKind::Memory64, 0x8000).unwrap(),
            (PciWindowKind::Mmio64, 0x40_0000_0000)
        );
        assert_eq!(
            a.allocate(PciBarKind::Memory32, 0x100).unwrap(),
            (PciWindowKind::Mmio32, 0xc000_0000)
        );
        a.allocate(PciBarKind::Memory64, 0x8000).unwrap();
        // The 64-bit window is full: the next 64-bit BAR goes low.
        assert_eq!(
            a.allocate(PciBarKind::Memory64, 0x4000).unwrap(),
            (PciWindowKind::Mmio32, 0xc000_4000)
        );
        let err = a.allocate(PciBarKind::Io, 0x20).unwrap_err();
        assert!(err.to_string().contains("no I/O PCI window"), "{err}");
        assert!(a.allows(PciBarKind::Memory64, 0x40_0000_f000, 0x1000));
        assert!(a.allows(PciBarKind::Memory32, 0xc000_0000, 0x10000));
        assert!(!a.allows(PciBarKind::Memory32, 0xc000_0000, 0x10001));
        assert!(!a.allows(PciBarKind::Memory32, 0, 0x1000));
        assert!(!a.allows(PciBarKind::Io, 0xc000, 4));
        assert!(!a.allows(PciBarKind::Memory64, u64::MAX, 2));
        assert_eq!(a.free(PciWindowKind::Mmio64, 0x40_0000_0000), Ok(0x8000));
        assert!(a.free(PciWindowKind::Io, 0).is_err());
        assert_eq!(a.windows().count(), 2);
    }

    #[test]
    fn io_window() {
        let windows = PciWindows {
            mmio32: 0xc000_0000..0xe000_0000,
            mmio64: None,
            io: Some(0xc000..0x10000),
        };
        let mut a = BarAllocator::new(&windows).unwrap();
        assert_eq!(
            a.allocate(PciBarKind::Io, 3).unwrap_err(),
            BarAllocError::NotPowerOfTwo { size: 3 }
        );
        assert_eq!(
            a.allocate(PciBarKind::Io, 0x20).unwrap(),
            (PciWindowKind::Io, 0xc000)
        );
        assert_eq!(
            a.allocate(PciBarKind::Io, 0x4).unwrap(),
            (PciWindowKind::Io, 0xc020)
        );
        assert!(a.allows(PciBarKind::Io, 0xffe0, 0x20));
        assert_eq!(human_size(0x300), "768 B");
        assert_eq!(human_size(0x1800), "6 KiB");
    }
}
