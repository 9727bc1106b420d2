//! [`FakeVfioDevice`]: an in-memory VFIO PCI device behind the [`VfioDevice`] trait, for
//! host tests of the passthrough PCI function and of setup and teardown.
//!
//! It has a config space (built with [`FakePciBuilder`], or the [`FakeVfioDevice::virtio_blk`]
//! and [`FakeVfioDevice::edu`] presets shaped like QEMU's devices on the rigs), BARs as byte
//! vectors with the kernel's region flags and sparse mmap areas, and interrupt counts. It
//! records what a VMM did to it (SET_IRQS, resets, writes, mmaps) and fails a chosen call on
//! request ([`FakeVfioHandle::fail_next`]). A [`FakeVfioHandle`] keeps looking at it after
//! the device itself was moved into a PCI function.
//!
//! Not modelled: the kernel's own config-space virtualization (vfio-pci's per-field write
//! permissions), BAR data behind mmaps (a mapping is fresh anonymous memory), INTx.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use vmm_sys_util::eventfd::EventFd;

use crate::vfio_device::{
    DeviceInfo, IrqInfo, MmapRange, RegionFlags, RegionInfo, Result, VfioDevice, VfioDeviceError,
    VfioOp, VFIO_PCI_CONFIG_REGION_INDEX,
};
use crate::vfio_kernel::MmapArea;

/// A call of the [`VfioDevice`] trait, to fail on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FakeOp {
    /// `info`.
    Info,
    /// `region_info`.
    RegionInfo,
    /// `read`.
    Read,
    /// `write`.
    Write,
    /// `mmap`.
    Mmap,
    /// `irq_info`.
    IrqInfo,
    /// `set_irq_eventfds`.
    SetIrqs,
    /// `disable_irqs`.
    DisableIrqs,
    /// `reset`.
    Reset,
}

/// What was done to a [`FakeVfioDevice`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FakeRecord {
    /// `set_irq_eventfds` calls: (index, start, the fds).
    pub set_irqs: Vec<(u32, u32, Vec<RawFd>)>,
    /// `disable_irqs` calls: the index.
    pub disabled: Vec<u32>,
    /// `reset` calls that succeeded.
    pub resets: u32,
    /// Writes to the config region: (offset, bytes).
    pub config_writes: Vec<(u64, Vec<u8>)>,
    /// Writes to other regions: (index, offset, bytes).
    pub region_writes: Vec<(u32, u64, Vec<u8>)>,
    /// `mmap` calls that succeeded: (index, offset, length).
    pub mmaps: Vec<(u32, u64, u64)>,
}

/// How a fake BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FakeBarKind {
    /// 32-bit memory.
    Mem32,
    /// 64-bit memory (takes two BAR slots).
    Mem64,
    /// Port I/O.
    Io,
}

#[derive(Clone, Debug)]
struct FakeBar {
    flags: RegionFlags,
    sparse: Option<Vec<MmapRange>>,
    data: Vec<u8>,
}

#[derive(Debug)]
struct State {
    config: Vec<u8>,
    bars: [Option<FakeBar>; 6],
    /// Vectors per interrupt index (INTx, MSI, MSI-X, ERR, REQ).
    irqs: [u32; 5],
    can_reset: bool,
    record: FakeRecord,
    faults: Vec<(FakeOp, i32)>,
    open: bool,
}

impl State {
    fn fault(&mut self, op: FakeOp, vop: VfioOp) -> Result<()> {
        match self.faults.iter().position(|(o, _)| *o == op) {
            Some(i) => Err(VfioDeviceError::errno(vop, self.faults.remove(i).1)),
            None => Ok(()),
        }
    }

    /// The bytes of region `index`.
    fn region(&mut self, index: u32) -> Option<&mut Vec<u8>> {
        if index == VFIO_PCI_CONFIG_REGION_INDEX {
            return Some(&mut self.config);
        }
        self.bars
            .get_mut(index as usize)?
            .as_mut()
            .map(|b| &mut b.data)
    }
}

fn span(op: VfioOp, size: usize, offset: u64, len: usize) -> Result<std::ops::Range<usize>> {
    let out = VfioDeviceError::OutOfRange {
        op,
        size: size as u64,
    };
    let start = usize::try_from(offset).map_err(|_| out)?;
    match start.checked_add(len) {
        Some(end) if end <= size => Ok(start..end),
        _ => Err(VfioDeviceError::OutOfRange {
            op,
            size: size as u64,
        }),
    }
}

/// An in-memory VFIO PCI device. See the module docs.
#[derive(Debug)]
pub struct FakeVfioDevice {
    state: Arc<Mutex<State>>,
    fd: OwnedFd,
    /// One strong reference here plus one per live mapping.
    mappings: Arc<()>,
}

/// A view of a [`FakeVfioDevice`] that outlives moving the device away.
#[derive(Clone, Debug)]
pub struct FakeVfioHandle {
    state: Arc<Mutex<State>>,
    mappings: Weak<()>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeVfioHandle {
    /// Everything recorded so far.
    pub fn record(&self) -> FakeRecord {
        lock(&self.state).record.clone()
    }

    /// Makes the next call of kind `op` fail with `errno` (several may be pending).
    pub fn fail_next(&self, op: FakeOp, errno: i32) {
        lock(&self.state).faults.push((op, errno));
    }

    /// Whether the device (its fd) is still open.
    pub fn is_open(&self) -> bool {
        lock(&self.state).open
    }

    /// BAR mappings handed out and not yet unmapped.
    pub fn live_mappings(&self) -> usize {
        let strong = self.mappings.strong_count();
        strong.saturating_sub(usize::from(self.is_open()))
    }

    /// The config space bytes as the device has them now.
    pub fn config(&self) -> Vec<u8> {
        lock(&self.state).config.clone()
    }

    /// The contents of BAR `index`.
    pub fn bar(&self, index: usize) -> Option<Vec<u8>> {
        lock(&self.state)
            .bars
            .get(index)?
            .as_ref()
            .map(|b| b.data.clone())
    }
}

impl FakeVfioDevice {
    /// A handle to inspect and steer this device.
    pub fn handle(&self) -> FakeVfioHandle {
        FakeVfioHandle {
            state: self.state.clone(),
            mappings: Arc::downgrade(&self.mappings),
        }
    }

    /// A modern virtio-blk function as QEMU builds it on a PCIe port: BAR 1 (4 KiB) holds
    /// the MSI-X table (5 vectors) and PBA, BAR 4 (16 KiB, 64-bit, prefetchable) the virtio
    /// structures the vendor capabilities point at; PM and PCIe capabilities, an Advanced
    /// Features capability (to be hidden) and an AER extended capability.
    pub fn virtio_blk() -> FakeVfioDevice {
        let vendor = |cfg_type: u8, bar: u8, offset: u32, len: u32, extra: &[u8]| {
            let mut body = vec![16 + extra.len() as u8, cfg_type, bar, 0, 0, 0];
            body.extend_from_slice(&offset.to_le_bytes());
            body.extend_from_slice(&len.to_le_bytes());
            body.extend_from_slice(extra);
            body
        };
        FakePciBuilder::new(0x1af4, 0x1042, 0x01_00_00)
            .bar(1, FakeBarKind::Mem32, 0x1000, true)
            .bar(4, FakeBarKind::Mem64, 0x4000, true)
            .msix(5, 1, 0, 1, 0x800)
            .capability(0x09, &vendor(1, 4, 0, 0x1000, &[]))
            .capability(0x09, &vendor(3, 4, 0x1000, 0x1000, &[]))
            .capability(0x09, &vendor(4, 4, 0x2000, 0x1000, &[]))
            .capability(0x09, &vendor(2, 4, 0x3000, 0x1000, &4u32.to_le_bytes()))
            .capability(0x09, &vendor(5, 0, 0, 0, &[0; 4]))
            .capability(0x01, &[0x03, 0x00, 0x08, 0x00, 0x00, 0x00])
            .pcie()
            .capability(0x13, &[0x03, 0x00, 0x00, 0x00])
            .build()
    }

    /// QEMU's `edu` device: BAR 0 (1 MiB), a 64-bit MSI capability with one vector, no
    /// MSI-X.
    pub fn edu() -> FakeVfioDevice {
        FakePciBuilder::new(0x1234, 0x11e8, 0x00_ff_00)
            .bar(0, FakeBarKind::Mem32, 0x10_0000, true)
            .msi(true, false)
            .build()
    }
}

impl VfioDevice for FakeVfioDevice {
    fn info(&self) -> Result<DeviceInfo> {
        let mut s = lock(&self.state);
        s.fault(FakeOp::Info, VfioOp::GetInfo)?;
        let reset = if s.can_reset {
            DeviceInfo::FLAG_RESET
        } else {
            0
        };
        Ok(DeviceInfo {
            flags: DeviceInfo::FLAG_PCI | reset,
            num_regions: 9,
            num_irqs: 5,
        })
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo> {
        let mut s = lock(&self.state);
        s.fault(FakeOp::RegionInfo, VfioOp::RegionInfo(index))?;
        if index == VFIO_PCI_CONFIG_REGION_INDEX {
            return Ok(RegionInfo {
                index,
                size: s.config.len() as u64,
                flags: RegionFlags(RegionFlags::READ.0 | RegionFlags::WRITE.0),
                sparse: None,
            });
        }
        let bar = s.bars.get(index as usize).and_then(|b| b.as_ref());
        Ok(match bar {
            Some(b) => RegionInfo {
                index,
                size: b.data.len() as u64,
                flags: b.flags,
                sparse: b.sparse.clone(),
            },
            None => RegionInfo {
                index,
                size: 0,
                flags: RegionFlags(0),
                sparse: None,
            },
        })
    }

    fn read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<()> {
        let op = VfioOp::Read {
            index,
            offset,
            len: data.len(),
        };
        let mut s = lock(&self.state);
        s.fault(FakeOp::Read, op)?;
        let region = s
            .region(index)
            .ok_or(VfioDeviceError::OutOfRange { op, size: 0 })?;
        let r = span(op, region.len(), offset, data.len())?;
        data.copy_from_slice(&region[r]);
        Ok(())
    }

    fn write(&self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        let op = VfioOp::Write {
            index,
            offset,
            len: data.len(),
        };
        let mut s = lock(&self.state);
        s.fault(FakeOp::Write, op)?;
        let region = s
            .region(index)
            .ok_or(VfioDeviceError::OutOfRange { op, size: 0 })?;
        let r = span(op, region.len(), offset, data.len())?;
        // BAR registers are the kernel's (virtualized); the device keeps its own.
        let bars = 0x10..0x28;
        let touches_bars = r.start < bars.end && bars.start < r.end;
        if index != VFIO_PCI_CONFIG_REGION_INDEX || !touches_bars {
            region[r].copy_from_slice(data);
        }
        let rec = (offset, data.to_vec());
        if index == VFIO_PCI_CONFIG_REGION_INDEX {
            s.record.config_writes.push(rec);
        } else {
            s.record.region_writes.push((index, rec.0, rec.1));
        }
        Ok(())
    }

    fn mmap(&self, index: u32, offset: u64, len: u64) -> Result<MmapArea> {
        let op = VfioOp::Mmap { index, offset, len };
        let mut s = lock(&self.state);
        s.fault(FakeOp::Mmap, op)?;
        let bar = s.bars.get(index as usize).and_then(|b| b.as_ref());
        let allowed = bar.is_some_and(|b| {
            let info = RegionInfo {
                index,
                size: b.data.len() as u64,
                flags: b.flags,
                sparse: b.sparse.clone(),
            };
            info.mmap_ranges()
                .iter()
                .any(|a| offset >= a.offset && offset.saturating_add(len) <= a.offset + a.size)
        });
        if !allowed || len == 0 || offset % 4096 != 0 {
            return Err(VfioDeviceError::errno(op, libc::EINVAL));
        }
        let area = MmapArea::anonymous(len)
            .map_err(|source| VfioDeviceError::Failed { op, source })?
            .with_guard(self.mappings.clone());
        s.record.mmaps.push((index, offset, len));
        Ok(area)
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo> {
        let mut s = lock(&self.state);
        s.fault(FakeOp::IrqInfo, VfioOp::IrqInfo(index))?;
        let count = s
            .irqs
            .get(index as usize)
            .copied()
            .ok_or(VfioDeviceError::errno(VfioOp::IrqInfo(index), libc::EINVAL))?;
        Ok(IrqInfo { flags: 1, count })
    }

    fn set_irq_eventfds(&self, index: u32, start: u32, fds: &[&EventFd]) -> Result<()> {
        let op = VfioOp::SetIrqs {
            index,
            start,
            count: fds.len() as u32,
        };
        let mut s = lock(&self.state);
        s.fault(FakeOp::SetIrqs, op)?;
        let count = s.irqs.get(index as usize).copied().unwrap_or(0);
        let end = u64::from(start) + fds.len() as u64;
        if fds.is_empty() || end > u64::from(count) {
            return Err(VfioDeviceError::errno(op, libc::EINVAL));
        }
        let fds = fds.iter().map(|f| f.as_raw_fd()).collect();
        s.record.set_irqs.push((index, start, fds));
        Ok(())
    }

    fn disable_irqs(&self, index: u32) -> Result<()> {
        let mut s = lock(&self.state);
        s.fault(FakeOp::DisableIrqs, VfioOp::DisableIrqs(index))?;
        s.record.disabled.push(index);
        Ok(())
    }

    fn reset(&self) -> Result<()> {
        let mut s = lock(&self.state);
        s.fault(FakeOp::Reset, VfioOp::Reset)?;
        if !s.can_reset {
            return Err(VfioDeviceError::errno(VfioOp::Reset, libc::EINVAL));
        }
        // A reset clears the command register.
        s.config[4] = 0;
        s.config[5] = 0;
        s.record.resets += 1;
        Ok(())
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for FakeVfioDevice {
    fn drop(&mut self) {
        lock(&self.state).open = false;
    }
}

/// Builds a [`FakeVfioDevice`]'s config space, BARs and interrupts.
#[derive(Debug)]
pub struct FakePciBuilder {
    config: Vec<u8>,
    last_cap: Option<usize>,
    next_cap: usize,
    bars: [Option<FakeBar>; 6],
    irqs: [u32; 5],
    can_reset: bool,
}

impl FakePciBuilder {
    /// A function with these IDs and `class` (base << 16 | sub << 8 | prog-if), a 256-byte
    /// config space, no BARs, capabilities or interrupts (but INTx), resettable.
    pub fn new(vendor: u16, device: u16, class: u32) -> FakePciBuilder {
        let mut config = vec![0u8; 256];
        config[0..2].copy_from_slice(&vendor.to_le_bytes());
        config[2..4].copy_from_slice(&device.to_le_bytes());
        config[8] = 1;
        config[9..12].copy_from_slice(&class.to_le_bytes()[..3]);
        config[0x2c..0x2e].copy_from_slice(&vendor.to_le_bytes());
        config[0x2e..0x30].copy_from_slice(&0x1100u16.to_le_bytes());
        config[0x3d] = 1;
        FakePciBuilder {
            config,
            last_cap: None,
            next_cap: 0x40,
            bars: Default::default(),
            irqs: [1, 0, 0, 0, 0],
            can_reset: true,
        }
    }

    /// BAR `index` of `size` bytes (a power of two), mmappable as a whole if `mmap`.
    pub fn bar(mut self, index: usize, kind: FakeBarKind, size: u64, mmap: bool) -> Self {
        let low: u32 = match kind {
            FakeBarKind::Mem32 => 0,
            FakeBarKind::Mem64 => 0b1100,
            FakeBarKind::Io => 1,
        };
        let at = 0x10 + 4 * index;
        self.config[at..at + 4].copy_from_slice(&low.to_le_bytes());
        let mut flags = RegionFlags::READ.0 | RegionFlags::WRITE.0;
        if mmap {
            flags |= RegionFlags::MMAP.0;
        }
        self.bars[index] = Some(FakeBar {
            flags: RegionFlags(flags),
            sparse: None,
            data: vec![0; size as usize],
        });
        self
    }

    /// Narrows mmap of BAR `index` to `areas` (`VFIO_REGION_INFO_CAP_SPARSE_MMAP`).
    pub fn sparse(mut self, index: usize, areas: Vec<MmapRange>) -> Self {
        if let Some(b) = self.bars[index].as_mut() {
            b.flags = RegionFlags(b.flags.0 | RegionFlags::MMAP.0 | RegionFlags::CAPS.0);
            b.sparse = Some(areas);
        }
        self
    }

    /// Appends capability `id` with `body` (the bytes after ID and next pointer).
    pub fn capability(mut self, id: u8, body: &[u8]) -> Self {
        let at = self.next_cap;
        self.config[at] = id;
        self.config[at + 1] = 0;
        self.config[at + 2..at + 2 + body.len()].copy_from_slice(body);
        match self.last_cap {
            Some(last) => self.config[last + 1] = at as u8,
            None => {
                self.config[0x34] = at as u8;
                self.config[6] |= 0x10;
            }
        }
        self.last_cap = Some(at);
        self.next_cap = (at + 2 + body.len()).next_multiple_of(4);
        self
    }

    /// An MSI-X capability with `vectors`, its table and PBA at these BARs and offsets.
    pub fn msix(mut self, vectors: u16, table_bar: u8, table: u32, pba_bar: u8, pba: u32) -> Self {
        self.irqs[2] = u32::from(vectors);
        let mut body = (vectors - 1).to_le_bytes().to_vec();
        body.extend_from_slice(&(table | u32::from(table_bar)).to_le_bytes());
        body.extend_from_slice(&(pba | u32::from(pba_bar)).to_le_bytes());
        self.capability(0x11, &body)
    }

    /// An MSI capability with one vector; 64-bit addresses and per-vector masking as asked.
    pub fn msi(mut self, is64: bool, per_vector_mask: bool) -> Self {
        self.irqs[1] = 1;
        let control: u16 = u16::from(is64) << 7 | u16::from(per_vector_mask) << 8;
        let len = 10 + if is64 { 4 } else { 0 } + if per_vector_mask { 10 } else { 0 };
        let mut body = vec![0u8; len - 2];
        body[0..2].copy_from_slice(&control.to_le_bytes());
        self.capability(0x05, &body)
    }

    /// A PCIe endpoint capability (version 2) and a 4 KiB config space with an AER extended
    /// capability at 0x100.
    pub fn pcie(mut self) -> Self {
        self.config.resize(4096, 0);
        self.config[0x100..0x104].copy_from_slice(&0x0001_0001u32.to_le_bytes());
        let mut body = vec![0u8; 0x3a];
        body[0..2].copy_from_slice(&0x0002u16.to_le_bytes());
        self.capability(0x10, &body)
    }

    /// Without `VFIO_DEVICE_FLAGS_RESET`.
    pub fn no_reset(mut self) -> Self {
        self.can_reset = false;
        self
    }

    /// The device. Its fd is a memfd (so KVM fakes have a real fd to record).
    pub fn build(self) -> FakeVfioDevice {
        let fd = crate::sys::memfd(c"fake-vfio", 0).unwrap_or_else(|_| {
            // A memfd cannot fail but for fd exhaustion; /dev/null is as good a stand-in.
            std::fs::File::open("/dev/null")
                .map(OwnedFd::from)
                .unwrap_or_else(|e| panic!("no fd for a fake VFIO device: {e}"))
        });
        FakeVfioDevice {
            state: Arc::new(Mutex::new(State {
                config: self.config,
                bars: self.bars,
                irqs: self.irqs,
                can_reset: self.can_reset,
                record: FakeRecord::default(),
                faults: Vec::new(),
                open: true,
            })),
            fd,
            mappings: Arc::new(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_cfg(d: &FakeVfioDevice, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        d.read(VFIO_PCI_CONFIG_REGION_INDEX, offset, &mut b)
            .unwrap();
        b
    }

    #[test]
    fn virtio_blk_looks_like_qemus() {
        let d = FakeVfioDevice::virtio_blk();
        assert_eq!(read_cfg(&d, 0, 4), vec![0xf4, 0x1a, 0x42, 0x10]);
        assert_eq!(read_cfg(&d, 0x34, 1), vec![0x40]);
        let mut caps = Vec::new();
        let mut p = 0x40usize;
        while p != 0 {
            let c = read_cfg(&d, p as u64, 2);
            caps.push(c[0]);
            p = c[1] as usize;
        }
        assert_eq!(caps, vec![0x11, 9, 9, 9, 9, 9, 1, 0x10, 0x13]);
        assert_eq!(
            d.region_info(VFIO_PCI_CONFIG_REGION_INDEX).unwrap().size,
            4096
        );
        assert_eq!(d.region_info(4).unwrap().size, 0x4000);
        assert_eq!(d.region_info(5).unwrap().size, 0, "upper half of BAR 4");
        assert_eq!(d.irq_info(2).unwrap().count, 5);
        assert_eq!(d.irq_info(1).unwrap().count, 0);
        assert!(d.info().unwrap().can_reset());
    }

    #[test]
    fn records_and_fails_on_request() {
        let d = FakeVfioDevice::edu();
        let h = d.handle();
        h.fail_next(FakeOp::Reset, libc::EIO);
        assert!(d.reset().is_err());
        d.reset().unwrap();
        d.write(VFIO_PCI_CONFIG_REGION_INDEX, 4, &[6, 0]).unwrap();
        d.write(VFIO_PCI_CONFIG_REGION_INDEX, 0x10, &[0xff; 4])
            .unwrap();
        assert_eq!(h.config()[4], 6);
        assert_eq!(
            h.config()[0x10],
            0,
            "BAR registers are not the device's to change"
        );
        d.write(0, 8, &[1, 2]).unwrap();
        assert_eq!(&h.bar(0).unwrap()[8..10], &[1, 2]);
        assert!(d.read(0, 0x10_0000 - 1, &mut [0; 2]).is_err());
        assert!(d.read(3, 0, &mut [0; 2]).is_err());
        let m = d.mmap(0, 0x1000, 0x1000).unwrap();
        assert!(d.mmap(0, 0x10_0000, 0x1000).is_err());
        assert_eq!(h.live_mappings(), 1);
        let efd = EventFd::new(0).unwrap();
        let fd = efd.as_raw_fd();
        d.set_irq_eventfds(1, 0, &[&efd]).unwrap();
        assert!(d.set_irq_eventfds(1, 0, &[&efd, &efd]).is_err());
        d.disable_irqs(1).unwrap();
        let r = h.record();
        assert_eq!(r.resets, 1);
        assert_eq!(r.set_irqs, vec![(1, 0, vec![fd])]);
        assert_eq!(r.disabled, vec![1]);
        assert_eq!(r.mmaps, vec![(0, 0x1000, 0x1000)]);
        assert_eq!(r.config_writes.len(), 2);
        assert!(h.is_open());
        drop(d);
        assert!(!h.is_open());
        assert_eq!(h.live_mappings(), 1);
        drop(m);
        assert_eq!(h.live_mappings(), 0);
    }

    #[test]
    fn sparse_areas_limit_mmap() {
        let d = FakePciBuilder::new(1, 2, 0)
            .bar(0, FakeBarKind::Mem32, 0x4000, false)
            .sparse(
                0,
                vec![MmapRange {
                    offset: 0x2000,
                    size: 0x2000,
                }],
            )
            .no_reset()
            .build();
        assert!(d.mmap(0, 0, 0x1000).is_err());
        d.mmap(0, 0x2000, 0x2000).unwrap();
        assert!(d.reset().is_err());
        assert!(!d.info().unwrap().can_reset());
    }
}
