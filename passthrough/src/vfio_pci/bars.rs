//! The BARs of a passed-through function: which parts the guest reaches directly through
//! KVM memory slots over mmapped device memory, and which are trapped.
//!
//! A part of a BAR is mapped into the guest if the kernel allows mmap there (the whole
//! region, or the sparse areas it reports), it covers whole host pages, and it holds none
//! of the MSI-X table and PBA pages (the table and PBA are emulated, so the page(s) holding
//! them are trapped even if other registers share them: those registers are then forwarded
//! with `pread`/`pwrite`). Everything else, and every I/O BAR, is trapped: guest accesses
//! exit to the VMM and reach the device through region reads and writes.
//!
//! The mmaps are made once, at setup; the memory slots follow the BAR: made when it starts
//! decoding at an address the PCI root accepted, moved when the guest moves it, removed
//! when it stops decoding ([`Bars::moved`]). If a mapping or a slot cannot be made, that
//! part stays trapped (slower, still correct) and a warning says so.
//!
//! Invariant (drop order): slots are removed before the mmaps they point at are unmapped.

use std::ops::Range;
use std::sync::Arc;

use devices::pci::{BarReprogram, PciBarConfig, PciBarKind};

use crate::hypervisor::{GuestMemslots, MemslotId};
use crate::iova::HostVirtAddr;
use crate::vfio_device::{RegionInfo, VfioDevice};
use crate::vfio_kernel::MmapArea;

/// One mmapped part of a BAR.
#[derive(Debug)]
struct Area {
    /// Offset in the BAR.
    offset: u64,
    map: MmapArea,
    /// The guest slot over it while the BAR decodes.
    slot: Option<MemslotId>,
}

#[derive(Debug)]
struct Bar {
    config: PciBarConfig,
    areas: Vec<Area>,
}

/// The parts of BAR of `size` bytes that may be mmapped into the guest: `region`'s mmap
/// ranges, clipped to the BAR, shrunk to whole `page`s, minus the pages touching `traps`.
pub fn mmap_plan(
    region: &RegionInfo,
    size: u64,
    traps: &[Range<u64>],
    page: u64,
) -> Vec<Range<u64>> {
    let page = page.max(1);
    let down = |v: u64| v - v % page;
    let up = |v: u64| v.div_ceil(page).saturating_mul(page);
    // Trapped pages: each trap rounded out to whole pages.
    let trapped: Vec<Range<u64>> = traps
        .iter()
        .filter(|t| t.start < t.end)
        .map(|t| down(t.start)..up(t.end))
        .collect();
    let mut out = Vec::new();
    for r in region.mmap_ranges() {
        let end = r.offset.saturating_add(r.size).min(size);
        let mut pieces: Vec<Range<u64>> = std::iter::once(up(r.offset)..down(end)).collect();
        for t in &trapped {
            pieces = pieces
                .into_iter()
                .flat_map(|p| {
                    if t.end <= p.start || p.end <= t.start {
                        return vec![p];
                    }
                    vec![p.start..t.start.max(p.start), t.end.min(p.end)..p.end]
                })
                .filter(|p| p.start < p.end)
                .collect();
        }
        out.extend(pieces.into_iter().filter(|p| p.start < p.end));
    }
    out.sort_by_key(|p| p.start);
    out
}

/// The mmapped parts of every BAR and their guest memory slots.
pub struct Bars {
    name: String,
    bars: Vec<Bar>,
    memslots: Arc<dyn GuestMemslots>,
}

impl std::fmt::Debug for Bars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bars")
            .field("bars", &self.bars)
            .finish_non_exhaustive()
    }
}

impl Bars {
    /// Maps the mappable parts of each BAR (`regions[i]` describes `configs[i]`), keeping
    /// `traps[bar]` trapped. A part the kernel refuses to map stays trapped, with a warning.
    pub fn new(
        name: &str,
        device: &dyn VfioDevice,
        configs: &[(PciBarConfig, RegionInfo)],
        traps: &[(usize, Range<u64>)],
        page: u64,
        memslots: Arc<dyn GuestMemslots>,
    ) -> Bars {
        let mut bars = Vec::new();
        for (config, region) in configs {
            let mut areas = Vec::new();
            if config.kind != PciBarKind::Io {
                let bar_traps: Vec<Range<u64>> = traps
                    .iter()
                    .filter(|(b, _)| *b == config.index)
                    .map(|(_, r)| r.clone())
                    .collect();
                for part in mmap_plan(region, config.size, &bar_traps, page) {
                    let len = part.end - part.start;
                    match device.mmap(config.index as u32, part.start, len) {
                        Ok(map) => areas.push(Area {
                            offset: part.start,
                            map,
                            slot: None,
                        }),
                        Err(e) => log::warn!(
                            "{name}: BAR {} [{:#x}, {:#x}) stays trapped (slower guest \
                             access): {e}",
                            config.index,
                            part.start,
                            part.end
                        ),
                    }
                }
            }
            bars.push(Bar {
                config: *config,
                areas,
            });
        }
        Bars {
            name: name.to_string(),
            bars,
            memslots,
        }
    }

    /// The BAR declarations, in index order.
    pub fn configs(&self) -> Vec<PciBarConfig> {
        self.bars.iter().map(|b| b.config).collect()
    }

    /// The mmapped parts of BAR `bar`: (offset in the BAR, length, host address).
    pub fn areas(&self, bar: usize) -> Vec<(u64, u64, HostVirtAddr)> {
        self.bar(bar)
            .map(|b| {
                b.areas
                    .iter()
                    .map(|a| (a.offset, a.map.len(), HostVirtAddr(a.map.addr())))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn bar(&self, index: usize) -> Option<&Bar> {
        self.bars.iter().find(|b| b.config.index == index)
    }

    /// Follows a BAR move the PCI root applied: removes the BAR's slots and, if it now
    /// decodes at `change.new`, makes them there.
    pub fn moved(&mut self, change: &BarReprogram) {
        let Some(i) = self.bars.iter().position(|b| b.config.index == change.bar) else {
            return;
        };
        self.unmap_bar(i);
        let Some(gpa) = change.new else { return };
        let name = &self.name;
        for a in &mut self.bars[i].areas {
            let Some(at) = gpa.checked_add(a.offset) else {
                continue;
            };
            match self
                .memslots
                .map(at, a.map.len(), HostVirtAddr(a.map.addr()))
            {
                Ok(slot) => a.slot = Some(slot),
                Err(e) => log::warn!(
                    "{name}: cannot map BAR {} [{:#x}, +{:#x}) at guest address {at:#x}: \
                     {e}; guest accesses there are trapped instead (slower)",
                    change.bar,
                    a.offset,
                    a.map.len()
                ),
            }
        }
    }

    fn unmap_bar(&mut self, i: usize) {
        let name = &self.name;
        for a in &mut self.bars[i].areas {
            if let Some(slot) = a.slot.take() {
                if let Err(e) = self.memslots.unmap(slot) {
                    log::warn!("{name}: cannot remove guest memory slot {}: {e}", slot.0);
                }
            }
        }
    }

    /// Removes every slot (the guest turned memory decode off, or teardown).
    pub fn unmap_all(&mut self) {
        for i in 0..self.bars.len() {
            self.unmap_bar(i);
        }
    }

    /// Removes every slot and unmaps every mmap.
    pub fn release(&mut self) {
        self.unmap_all();
        for b in &mut self.bars {
            b.areas.clear();
        }
    }

    /// Number of live guest memory slots.
    pub fn slot_count(&self) -> usize {
        self.bars
            .iter()
            .flat_map(|b| &b.areas)
            .filter(|a| a.slot.is_some())
            .count()
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::FakeMemslots;
    use crate::vfio_device::{MmapRange, RegionFlags};

    const PAGE: u64 = 0x1000;

    fn region(size: u64, sparse: Option<Vec<MmapRange>>) -> RegionInfo {
        RegionInfo {
            index: 0,
            size,
            flags: RegionFlags(RegionFlags::READ.0 | RegionFlags::MMAP.0),
            sparse,
        }
    }

    #[test]
    fn plan_keeps_msix_pages_trapped() {
        // Table at 0x2000 (64 bytes), PBA at 0x3800: pages 2 and 3 trapped.
        let plan = mmap_plan(
            &region(0x8000, None),
            0x8000,
            &[0x2000..0x2040, 0x3800..0x3808],
            PAGE,
        );
        assert_eq!(plan, vec![0..0x2000, 0x4000..0x8000]);
        // A table sharing the only page: nothing mapped.
        let table = 0..0x50_u64;
        let one_page = region(0x1000, None);
        assert!(mmap_plan(&one_page, 0x1000, std::slice::from_ref(&table), PAGE).is_empty());
        // Sub-page BARs are never mapped (the guest may pack other BARs in the page).
        assert!(mmap_plan(&region(0x100, None), 0x100, &[], PAGE).is_empty());
        // Sparse areas, clipped and rounded in.
        let sparse = vec![
            MmapRange {
                offset: 0x800,
                size: 0x2000,
            },
            MmapRange {
                offset: 0x6000,
                size: 0x4000,
            },
        ];
        let plan = mmap_plan(&region(0x8000, Some(sparse)), 0x8000, &[], PAGE);
        assert_eq!(plan, vec![0x1000..0x2000, 0x6000..0x8000]);
        // Not mmappable: nothing.
        let mut r = region(0x4000, None);
        r.flags = RegionFlags::READ;
        assert!(mmap_plan(&r, 0x4000, &[], PAGE).is_empty());
    }

    #[test]
    fn slots_follow_the_bar_and_go_before_the_mmaps() {
        let dev = crate::fake_vfio::FakeVfioDevice::edu();
        let handle = dev.handle();
        let slots = Arc::new(FakeMemslots::default());
        let config = PciBarConfig {
            index: 0,
            kind: PciBarKind::Memory32,
            size: 0x10_0000,
            prefetchable: false,
        };
        let info = dev.region_info(0).unwrap();
        let mut bars = Bars::new(
            "t",
            &dev,
            &[(config, info)],
            &[(0, 0x8000..0x8010)],
            PAGE,
            slots.clone(),
        );
        assert_eq!(bars.areas(0).len(), 2);
        assert_eq!(handle.live_mappings(), 2);
        let change = |old, new| BarReprogram {
            bar: 0,
            kind: PciBarKind::Memory32,
            size: 0x10_0000,
            old,
            new,
        };
        bars.moved(&change(None, Some(0xc000_0000)));
        let gpas: Vec<(u64, u64)> = slots.slots().iter().map(|s| (s.gpa, s.len)).collect();
        assert_eq!(gpas, vec![(0xc000_0000, 0x8000), (0xc000_9000, 0xf7000)]);
        bars.moved(&change(Some(0xc000_0000), Some(0xd000_0000)));
        assert_eq!(slots.slots()[0].gpa, 0xd000_0000);
        assert_eq!(bars.slot_count(), 2);
        bars.moved(&change(Some(0xd000_0000), None));
        assert!(slots.slots().is_empty());
        // A slot KVM refuses leaves the part trapped.
        slots
            .fail_map
            .store(true, std::sync::atomic::Ordering::Relaxed);
        bars.moved(&change(None, Some(0xc000_0000)));
        assert_eq!(bars.slot_count(), 0);
        slots
            .fail_map
            .store(false, std::sync::atomic::Ordering::Relaxed);
        bars.moved(&change(None, Some(0xc000_0000)));
        bars.moved(&BarReprogram {
            bar: 3,
            ..change(None, Some(0))
        });
        drop(bars);
        assert!(slots.slots().is_empty());
        assert_eq!(handle.live_mappings(), 0);
    }
}
