//! Failure injection at the hardware boundary, for tests: wrappers around the model
//! iommufd, fake VFIO devices, the fake KVM-VFIO device and fake memory slots that count
//! every call through one shared [`Faults`] and make the N-th fail. A sweep over N (from 1
//! to the last call of a clean run) drives every error path of whatever sits above the
//! boundary: `tests/fail_nth.rs` (start-up and teardown) and the VMM's hotplug tests (add
//! and remove).
//!
//! Each wrapper fails a call the way the kernel would: through the backend's own injection
//! (`ModelIommufd::fail_nth`, `FakeVfioHandle::fail_next`) or by returning an errno before
//! the call, so a failed call changes nothing.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::hypervisor::{FakeKvmVfio, FakeMemslots, GuestMemslots, KvmVfio, MemslotId};
use crate::iommufd::{
    DevId, DeviceHandle, HwInfo, HwptFlags, HwptId, IoasId, Iommufd, MapSource, ObjectId, Prot,
    RangesReply, Result as IommufdResult, SmmuCmd, VEvent, VSte, VdeviceId, VeventqId, ViommuId,
};
use crate::vfio_device::{DeviceInfo, IrqInfo, RegionInfo, Result as VfioResult, VfioDevice};
use crate::{
    FakeOp, FakeVfioDevice, FakeVfioHandle, HostVirtAddr, Iova, IovaRange, MmapArea, ModelIommufd,
};

/// Counts boundary calls and fails the one numbered `fail_at` (0: none).
#[derive(Debug, Default)]
pub struct Faults {
    calls: AtomicU64,
    fail_at: AtomicU64,
    names: Mutex<Vec<&'static str>>,
}

impl Faults {
    /// Counts calls from 1 and fails the `fail_at`-th (0: none).
    pub fn new(fail_at: u64) -> Arc<Faults> {
        let f = Faults::default();
        f.fail_at.store(fail_at, Ordering::Relaxed);
        Arc::new(f)
    }

    /// The names of the calls counted so far, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Calls counted so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Fails the `n`-th call from now (1: the next); 0 disarms.
    pub fn fail_after(&self, n: u64) {
        let at = if n == 0 { 0 } else { self.calls() + n };
        self.fail_at.store(at, Ordering::Relaxed);
    }

    /// The name of the call that was made to fail, once it has been made.
    pub fn failed(&self) -> Option<&'static str> {
        let at = self.fail_at.load(Ordering::Relaxed);
        let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        at.checked_sub(1)
            .and_then(|i| names.get(usize::try_from(i).ok()?).copied())
    }

    /// Counts a call of `what`; true if it is the one to fail.
    pub fn hit(&self, what: &'static str) -> bool {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
        n == self.fail_at.load(Ordering::Relaxed)
    }
}

/// The model iommufd, failing a call through its own `fail_nth` (so the failure changes
/// nothing, with the kernel's errno).
pub struct FaultyIommufd {
    /// The model behind it.
    pub model: ModelIommufd,
    /// The shared counter.
    pub faults: Arc<Faults>,
}

impl FaultyIommufd {
    /// `model`, counting its calls in `faults`, shared as the VMM shares an iommufd.
    pub fn shared(model: ModelIommufd, faults: &Arc<Faults>) -> Arc<Mutex<FaultyIommufd>> {
        Arc::new(Mutex::new(FaultyIommufd {
            model,
            faults: faults.clone(),
        }))
    }

    fn at(&mut self, what: &'static str) -> &mut ModelIommufd {
        if self.faults.hit(what) {
            self.model.fail_nth(1, libc::ENOMEM);
        }
        &mut self.model
    }
}

impl Iommufd for FaultyIommufd {
    fn alloc_ioas(&mut self) -> IommufdResult<IoasId> {
        self.at("IOMMU_IOAS_ALLOC").alloc_ioas()
    }
    fn iova_ranges_into(
        &mut self,
        ioas: IoasId,
        out: &mut [IovaRange],
    ) -> IommufdResult<RangesReply> {
        self.at("IOMMU_IOAS_IOVA_RANGES")
            .iova_ranges_into(ioas, out)
    }
    fn allow_iovas(&mut self, ioas: IoasId, ranges: &[IovaRange]) -> IommufdResult<()> {
        self.at("IOMMU_IOAS_ALLOW_IOVAS").allow_iovas(ioas, ranges)
    }
    fn map(
        &mut self,
        ioas: IoasId,
        source: MapSource<'_>,
        length: u64,
        iova: Option<Iova>,
        prot: Prot,
    ) -> IommufdResult<Iova> {
        self.at("IOMMU_IOAS_MAP")
            .map(ioas, source, length, iova, prot)
    }
    fn unmap(&mut self, ioas: IoasId, iova: Iova, length: u64) -> IommufdResult<u64> {
        self.at("IOMMU_IOAS_UNMAP").unmap(ioas, iova, length)
    }
    fn alloc_hwpt(&mut self, dev: DevId, pt: ObjectId, flags: HwptFlags) -> IommufdResult<HwptId> {
        self.at("IOMMU_HWPT_ALLOC").alloc_hwpt(dev, pt, flags)
    }
    fn hw_info(&mut self, dev: DevId) -> IommufdResult<HwInfo> {
        self.at("IOMMU_GET_HW_INFO").hw_info(dev)
    }
    fn destroy(&mut self, id: ObjectId) -> IommufdResult<()> {
        self.at("IOMMU_DESTROY").destroy(id)
    }
    fn bind_device(&mut self, device: DeviceHandle) -> IommufdResult<DevId> {
        self.at("VFIO_DEVICE_BIND_IOMMUFD").bind_device(device)
    }
    fn attach_device(&mut self, dev: DevId, pt: ObjectId) -> IommufdResult<HwptId> {
        self.at("VFIO_DEVICE_ATTACH_IOMMUFD_PT")
            .attach_device(dev, pt)
    }
    fn detach_device(&mut self, dev: DevId) -> IommufdResult<()> {
        self.at("VFIO_DEVICE_DETACH_IOMMUFD_PT").detach_device(dev)
    }
    // The nested calls: this sweep's start-up path has no vSMMU (iommu=off), so they are
    // passed through uncounted.
    fn alloc_viommu(&mut self, dev: DevId, parent: HwptId) -> IommufdResult<ViommuId> {
        self.model.alloc_viommu(dev, parent)
    }
    fn alloc_vdevice(
        &mut self,
        viommu: ViommuId,
        dev: DevId,
        virt_id: u64,
    ) -> IommufdResult<VdeviceId> {
        self.model.alloc_vdevice(viommu, dev, virt_id)
    }
    fn alloc_nested_hwpt(
        &mut self,
        dev: DevId,
        viommu: ViommuId,
        ste: VSte,
    ) -> IommufdResult<HwptId> {
        self.model.alloc_nested_hwpt(dev, viommu, ste)
    }
    fn invalidate_viommu(&mut self, viommu: ViommuId, cmds: &[SmmuCmd]) -> IommufdResult<()> {
        self.model.invalidate_viommu(viommu, cmds)
    }
    fn alloc_veventq(&mut self, viommu: ViommuId, depth: u32) -> IommufdResult<VeventqId> {
        self.model.alloc_veventq(viommu, depth)
    }
    fn read_vevents(&mut self, veventq: VeventqId, max: usize) -> IommufdResult<Vec<VEvent>> {
        self.model.read_vevents(veventq, max)
    }
    // Not a boundary call: the kernel backend unbinds by closing the cdev, which cannot fail
    // to release it.
    fn unbind_device(&mut self, dev: DevId) -> IommufdResult<()> {
        self.model.unbind_device(dev)
    }
}

/// A fake VFIO device failing a call through the fake's own `fail_next`.
pub struct FaultyVfio {
    dev: FakeVfioDevice,
    handle: FakeVfioHandle,
    faults: Arc<Faults>,
}

impl FaultyVfio {
    /// `dev`, counting its calls in `faults`.
    pub fn new(dev: FakeVfioDevice, faults: Arc<Faults>) -> FaultyVfio {
        let handle = dev.handle();
        FaultyVfio {
            dev,
            handle,
            faults,
        }
    }
}

impl FaultyVfio {
    fn at(&self, what: &'static str, op: FakeOp) -> &FakeVfioDevice {
        if self.faults.hit(what) {
            self.handle.fail_next(op, libc::EIO);
        }
        &self.dev
    }
}

impl VfioDevice for FaultyVfio {
    fn info(&self) -> VfioResult<DeviceInfo> {
        self.at("VFIO_DEVICE_GET_INFO", FakeOp::Info).info()
    }
    fn region_info(&self, index: u32) -> VfioResult<RegionInfo> {
        self.at("VFIO_DEVICE_GET_REGION_INFO", FakeOp::RegionInfo)
            .region_info(index)
    }
    fn read(&self, index: u32, offset: u64, data: &mut [u8]) -> VfioResult<()> {
        self.at("pread (VFIO region)", FakeOp::Read)
            .read(index, offset, data)
    }
    fn write(&self, index: u32, offset: u64, data: &[u8]) -> VfioResult<()> {
        self.at("pwrite (VFIO region)", FakeOp::Write)
            .write(index, offset, data)
    }
    fn mmap(&self, index: u32, offset: u64, len: u64) -> VfioResult<MmapArea> {
        self.at("mmap (VFIO region)", FakeOp::Mmap)
            .mmap(index, offset, len)
    }
    fn irq_info(&self, index: u32) -> VfioResult<IrqInfo> {
        self.at("VFIO_DEVICE_GET_IRQ_INFO", FakeOp::IrqInfo)
            .irq_info(index)
    }
    fn set_irq_eventfds(&self, index: u32, start: u32, fds: &[&EventFd]) -> VfioResult<()> {
        self.at("VFIO_DEVICE_SET_IRQS (enable)", FakeOp::SetIrqs)
            .set_irq_eventfds(index, start, fds)
    }
    fn disable_irqs(&self, index: u32) -> VfioResult<()> {
        self.at("VFIO_DEVICE_SET_IRQS (disable)", FakeOp::DisableIrqs)
            .disable_irqs(index)
    }
    fn reset(&self) -> VfioResult<()> {
        self.at("VFIO_DEVICE_RESET", FakeOp::Reset).reset()
    }
    fn fd(&self) -> BorrowedFd<'_> {
        self.dev.fd()
    }
}

/// The fake KVM-VFIO device; a failed call changes nothing, as in KVM.
pub struct FaultyKvm {
    /// The fake behind it.
    pub kvm: FakeKvmVfio,
    /// The shared counter.
    pub faults: Arc<Faults>,
}

impl FaultyKvm {
    /// A fresh fake, counting its calls in `faults`.
    pub fn shared(faults: &Arc<Faults>) -> Arc<FaultyKvm> {
        Arc::new(FaultyKvm {
            kvm: FakeKvmVfio::default(),
            faults: faults.clone(),
        })
    }
}

impl KvmVfio for FaultyKvm {
    fn add_file(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        if self.faults.hit("KVM_DEV_VFIO_FILE_ADD") {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        self.kvm.add_file(fd)
    }
    fn remove_file(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        if self.faults.hit("KVM_DEV_VFIO_FILE_DEL") {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        self.kvm.remove_file(fd)
    }
}

/// Fake memory slots; a failed call changes nothing, as in KVM.
pub struct FaultySlots {
    /// The fake behind it.
    pub slots: FakeMemslots,
    /// The shared counter.
    pub faults: Arc<Faults>,
}

impl FaultySlots {
    /// Fresh fake slots, counting their calls in `faults`.
    pub fn shared(faults: &Arc<Faults>) -> Arc<FaultySlots> {
        Arc::new(FaultySlots {
            slots: FakeMemslots::default(),
            faults: faults.clone(),
        })
    }
}

impl GuestMemslots for FaultySlots {
    fn map(&self, gpa: u64, len: u64, host: HostVirtAddr) -> io::Result<MemslotId> {
        if self.faults.hit("KVM_SET_USER_MEMORY_REGION (add)") {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        self.slots.map(gpa, len, host)
    }
    fn unmap(&self, slot: MemslotId) -> io::Result<()> {
        if self.faults.hit("KVM_SET_USER_MEMORY_REGION (delete)") {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        self.slots.unmap(slot)
    }
}
