//! The model backend: [`ModelIommufd`], an in-process iommufd with the kernel's semantics
//! and errnos, for host tests, the conformance suite and fault injection.
//!
//! Objects live in one id space as in the kernel (ids from 1, lowest free first). An IOAS
//! is an `io_pagetable::IoPagetable`; a HWPT holds a domain built from a device's
//! aperture and page size, filled from its IOAS; a device is a bound [`ModelDevice`].
//! Attaching to an IOAS reuses a compatible automatic HWPT or makes one, which is freed
//! when its last device detaches, as `iommufd_device_auto_get_domain` does.
//!
//! `fail_nth(n, errno)` makes the n-th trait call from now fail with `errno` and change
//! nothing, to test a caller's error paths.
//!
//! Nested translation on SMMUv3 (vIOMMU, vDEVICE, nested HWPTs from guest STEs,
//! invalidation, vEVENTQ) is in `viommu`, with the errnos of `viommu.c`,
//! `hw_pagetable.c`, `eventq.c` and `arm-smmu-v3-iommufd.c`.
//!
//! Not modelled: IOMMU groups with several devices, PASIDs, nested HWPTs on a paging
//! parent (the SMMUv3 driver makes them only through a vIOMMU: `EOPNOTSUPP`), fault
//! queues, pinning limits.

mod device;
mod io_pagetable;
mod viommu;

use std::collections::{BTreeMap, BTreeSet};

use libc::{EBUSY, EINVAL, ENOENT, EOPNOTSUPP, EOVERFLOW};

pub use device::{smmuv3_hw_info_data, ModelDevice, SMMUV3_RIG_IDR};
use io_pagetable::{IoPagetable, Owner};

use crate::iommufd::{
    DevId, DeviceHandle, HwInfo, HwptFlags, HwptId, IoasId, Iommufd, IommufdError, MapSource,
    ObjectId, Op, Prot, RangesReply, Result, SmmuCmd, VEvent, VSte, VdeviceId, VeventqId, ViommuId,
};
use crate::iova::{Iova, IovaRange};
use viommu::{Vdevice, Veventq, Viommu};

type Errno = i32;

#[derive(Debug)]
struct Hwpt {
    ioas: u32,
    /// Made by attaching to an IOAS; freed with its last device.
    auto: bool,
    /// The device it was made for: decides which devices it suits.
    made_for: ModelDevice,
    devices: BTreeSet<u32>,
    /// Allocated with `IOMMU_HWPT_ALLOC_NEST_PARENT`.
    nest_parent: bool,
    /// A nested HWPT: its vIOMMU and the (validated) guest STE.
    nested: Option<(u32, VSte)>,
}

#[derive(Debug)]
struct Device {
    spec: ModelDevice,
    hwpt: Option<u32>,
}

#[derive(Debug)]
enum Object {
    Ioas(IoPagetable),
    Hwpt(Hwpt),
    Device(Device),
    Viommu(Viommu),
    Vdevice(Vdevice),
    Veventq(Veventq),
}

/// The in-process iommufd. See the module docs.
#[derive(Debug)]
pub struct ModelIommufd {
    objects: BTreeMap<u32, Object>,
    /// The host page size the kernel would use (`PAGE_SIZE`).
    host_page: u64,
    calls: u64,
    /// Pending injected failures: (call number, errno).
    faults: Vec<(u64, Errno)>,
}

impl Default for ModelIommufd {
    fn default() -> Self {
        ModelIommufd::new()
    }
}

impl ModelIommufd {
    /// An empty iommufd, with this host's page size.
    pub fn new() -> ModelIommufd {
        ModelIommufd::with_page_size(crate::sys::host_page_size())
    }

    /// An empty iommufd on a kernel whose `PAGE_SIZE` is `host_page` (a power of two).
    pub fn with_page_size(host_page: u64) -> ModelIommufd {
        ModelIommufd {
            objects: BTreeMap::new(),
            host_page: host_page.max(1).next_power_of_two(),
            calls: 0,
            faults: Vec::new(),
        }
    }

    /// Make the `n`-th trait call from now (1 = the next) fail with `errno`, changing
    /// nothing. Several can be pending.
    pub fn fail_nth(&mut self, n: u64, errno: i32) {
        self.faults.push((self.calls + n.max(1), errno));
    }

    /// Trait calls made so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// The mappings of an IOAS, in IOVA order (empty for an unknown id).
    pub fn mappings(&self, ioas: IoasId) -> Vec<IovaRange> {
        match self.objects.get(&ioas.0) {
            Some(Object::Ioas(t)) => t.mappings(),
            _ => Vec::new(),
        }
    }

    /// The allowed list of an IOAS (empty for an unknown id).
    pub fn allowed(&self, ioas: IoasId) -> Vec<IovaRange> {
        match self.objects.get(&ioas.0) {
            Some(Object::Ioas(t)) => t.allowed().to_vec(),
            _ => Vec::new(),
        }
    }

    /// Ids of all live objects.
    pub fn object_ids(&self) -> Vec<ObjectId> {
        self.objects.keys().map(|&id| ObjectId(id)).collect()
    }

    /// Counts a call; fails it if a fault was injected for it.
    fn enter(&mut self, op: Op) -> Result<()> {
        self.calls += 1;
        let now = self.calls;
        if let Some(i) = self.faults.iter().position(|&(at, _)| at == now) {
            let (_, errno) = self.faults.swap_remove(i);
            return Err(IommufdError::failed(op, errno));
        }
        Ok(())
    }

    /// `xa_alloc` with `XA_FLAGS_ALLOC1`: the lowest free id from 1.
    fn insert(&mut self, obj: Object) -> u32 {
        let mut id = 1;
        for &used in self.objects.keys() {
            if used != id {
                break;
            }
            id += 1;
        }
        self.objects.insert(id, obj);
        id
    }

    fn ioas_mut(&mut self, id: u32) -> std::result::Result<&mut IoPagetable, Errno> {
        match self.objects.get_mut(&id) {
            Some(Object::Ioas(t)) => Ok(t),
            _ => Err(ENOENT),
        }
    }

    fn device(&self, id: u32) -> std::result::Result<&Device, Errno> {
        match self.objects.get(&id) {
            Some(Object::Device(d)) => Ok(d),
            _ => Err(ENOENT),
        }
    }

    fn hwpt(&self, id: u32) -> Option<&Hwpt> {
        match self.objects.get(&id) {
            Some(Object::Hwpt(h)) => Some(h),
            _ => None,
        }
    }

    fn hwpt_mut(&mut self, id: u32) -> Option<&mut Hwpt> {
        match self.objects.get_mut(&id) {
            Some(Object::Hwpt(h)) => Some(h),
            _ => None,
        }
    }

    /// `iommufd_hwpt_paging_alloc` without an immediate attach: a HWPT whose domain is
    /// built for `spec`, added to the IOAS table.
    fn new_hwpt(
        &mut self,
        ioas: u32,
        spec: &ModelDevice,
        auto: bool,
    ) -> std::result::Result<u32, Errno> {
        let id = self.insert(Object::Hwpt(Hwpt {
            ioas,
            auto,
            made_for: spec.clone(),
            devices: BTreeSet::new(),
            nest_parent: false,
            nested: None,
        }));
        let host_page = self.host_page;
        let added = self
            .ioas_mut(ioas)
            .and_then(|t| t.add_domain(id, spec.aperture, spec.page_size, host_page));
        if let Err(e) = added {
            self.objects.remove(&id);
            return Err(e);
        }
        Ok(id)
    }

    /// `iommufd_hwpt_paging_destroy`.
    fn free_hwpt(&mut self, id: u32) {
        if let Some(Object::Hwpt(h)) = self.objects.remove(&id) {
            if let Ok(t) = self.ioas_mut(h.ioas) {
                t.remove_domain(id);
            }
        }
    }

    /// Moves `dev` off its HWPT (`iommufd_hw_pagetable_detach`); drops its reserved
    /// regions from that IOAS unless `keep_reserved`, frees an emptied automatic HWPT.
    fn leave_hwpt(&mut self, dev: u32, keep_reserved: bool) {
        let Some(Object::Device(d)) = self.objects.get_mut(&dev) else {
            return;
        };
        let Some(old) = d.hwpt.take() else { return };
        let Some(h) = self.hwpt_mut(old) else { return };
        h.devices.remove(&dev);
        let (ioas, emptied) = (h.ioas, h.auto && h.devices.is_empty());
        if !keep_reserved {
            if let Ok(t) = self.ioas_mut(ioas) {
                t.remove_reserved(Owner::Device(dev));
            }
        }
        if emptied {
            self.free_hwpt(old);
        }
    }

    /// Puts `dev` on HWPT `hwpt` (`iommufd_hw_pagetable_attach` or `_replace`), reserving
    /// its regions in the HWPT's IOAS unless they already are.
    fn join_hwpt(&mut self, dev: u32, hwpt: u32) -> std::result::Result<(), Errno> {
        let spec = self.device(dev)?.spec.clone();
        let current = self.device(dev)?.hwpt;
        let new_ioas = self.hwpt(hwpt).ok_or(ENOENT)?.ioas;
        if current == Some(hwpt) {
            return Ok(());
        }
        let same_ioas = current.and_then(|c| self.hwpt(c)).map(|c| c.ioas) == Some(new_ioas);
        if !same_ioas {
            self.ioas_mut(new_ioas)?
                .reserve_all(&spec.reserved, Owner::Device(dev))?;
        }
        self.leave_hwpt(dev, same_ioas);
        if let Some(h) = self.hwpt_mut(hwpt) {
            h.devices.insert(dev);
        }
        if let Some(Object::Device(d)) = self.objects.get_mut(&dev) {
            d.hwpt = Some(hwpt);
        }
        Ok(())
    }

    /// `iommufd_device_auto_get_domain`: reuse an automatic HWPT of the IOAS made for a
    /// device with the same IOMMU properties, else make one (attach first, then add the
    /// domain, as with `immediate_attach`).
    fn attach_to_ioas(&mut self, dev: u32, ioas: u32) -> std::result::Result<u32, Errno> {
        let spec = self.device(dev)?.spec.clone();
        let reusable = self.objects.iter().find_map(|(&id, o)| match o {
            Object::Hwpt(h) if h.ioas == ioas && h.auto && compatible(&h.made_for, &spec) => {
                Some(id)
            }
            _ => None,
        });
        if let Some(id) = reusable {
            self.join_hwpt(dev, id)?;
            return Ok(id);
        }
        if self.device(dev)?.hwpt.is_some() {
            // A replace: build the new HWPT completely, then move the device onto it,
            // so a failure leaves the device where it was.
            let id = self.new_hwpt(ioas, &spec, true)?;
            if let Err(e) = self.join_hwpt(dev, id) {
                self.free_hwpt(id);
                return Err(e);
            }
            return Ok(id);
        }
        // A first attach, in the kernel's order (`immediate_attach`): make the HWPT,
        // attach (reserving the device's regions), then add the domain (its aperture).
        let id = self.insert(Object::Hwpt(Hwpt {
            ioas,
            auto: true,
            made_for: spec.clone(),
            devices: BTreeSet::new(),
            nest_parent: false,
            nested: None,
        }));
        if let Err(e) = self.join_hwpt(dev, id) {
            self.objects.remove(&id);
            return Err(e);
        }
        let host_page = self.host_page;
        let added = self
            .ioas_mut(ioas)
            .and_then(|t| t.add_domain(id, spec.aperture, spec.page_size, host_page));
        if let Err(e) = added {
            // Detaching the only device frees the automatic HWPT.
            self.leave_hwpt(dev, false);
            return Err(e);
        }
        Ok(id)
    }
}

/// Whether a HWPT built for `a` can take device `b` (same IOMMU properties).
fn compatible(a: &ModelDevice, b: &ModelDevice) -> bool {
    a.aperture == b.aperture && a.page_size == b.page_size && a.hw_info.kind == b.hw_info.kind
}

fn fail(op: Op) -> impl FnOnce(Errno) -> IommufdError {
    move |errno| IommufdError::failed(op, errno)
}

impl Iommufd for ModelIommufd {
    fn alloc_ioas(&mut self) -> Result<IoasId> {
        self.enter(Op::IoasAlloc)?;
        Ok(IoasId(self.insert(Object::Ioas(IoPagetable::new()))))
    }

    fn iova_ranges_into(&mut self, ioas: IoasId, out: &mut [IovaRange]) -> Result<RangesReply> {
        let op = Op::IovaRanges(ioas);
        self.enter(op)?;
        let t = self.ioas_mut(ioas.0).map_err(fail(op))?;
        // iommufd_ioas_iova_ranges: fill what fits, count all, EMSGSIZE if short.
        let ranges = t.iova_ranges();
        let alignment = t.alignment();
        for (dst, src) in out.iter_mut().zip(&ranges) {
            *dst = *src;
        }
        let needed = u32::try_from(ranges.len()).unwrap_or(u32::MAX);
        if ranges.len() > out.len() {
            return Err(IommufdError::RangesBufferTooSmall {
                ioas,
                needed,
                given: u32::try_from(out.len()).unwrap_or(u32::MAX),
            });
        }
        Ok(RangesReply {
            count: needed,
            alignment,
        })
    }

    fn allow_iovas(&mut self, ioas: IoasId, ranges: &[IovaRange]) -> Result<()> {
        let op = Op::AllowIovas(ioas);
        self.enter(op)?;
        self.ioas_mut(ioas.0)
            .and_then(|t| t.set_allowed(ranges))
            .map_err(fail(op))
    }

    fn map(
        &mut self,
        ioas: IoasId,
        source: MapSource<'_>,
        length: u64,
        iova: Option<Iova>,
        prot: Prot,
    ) -> Result<Iova> {
        let (source_addr, file) = match source {
            MapSource::UserVa(va) => (va.0, false),
            MapSource::File { offset, .. } => (offset, true),
        };
        let op = Op::Map {
            ioas,
            iova,
            length,
            file,
        };
        self.enter(op)?;
        let host_page = self.host_page;
        let fixed = iova.map(|i| i.0);
        // iommufd_ioas_map / iommufd_ioas_map_file, in their order.
        let check = || -> std::result::Result<(), Errno> {
            if prot.0 & !Prot::READ_WRITE.0 != 0 {
                return Err(EOPNOTSUPP);
            }
            if fixed.unwrap_or(0) == u64::MAX || length == u64::MAX {
                return Err(EOVERFLOW);
            }
            if prot.0 & Prot::READ_WRITE.0 == 0 {
                return Err(EINVAL);
            }
            Ok(())
        };
        check().map_err(fail(op))?;
        let t = self.ioas_mut(ioas.0).map_err(fail(op))?;
        // iopt_alloc_user_pages / iopt_alloc_file_pages + iopt_alloc_pages.
        if source_addr.checked_add(length).is_none() {
            return Err(IommufdError::failed(op, EOVERFLOW));
        }
        if length == 0 || length > u64::MAX - host_page {
            return Err(IommufdError::failed(op, EINVAL));
        }
        t.map(source_addr, length, fixed, host_page)
            .map(Iova)
            .map_err(fail(op))
    }

    fn unmap(&mut self, ioas: IoasId, iova: Iova, length: u64) -> Result<u64> {
        let op = Op::Unmap { ioas, iova, length };
        self.enter(op)?;
        let t = self.ioas_mut(ioas.0).map_err(fail(op))?;
        // iommufd_ioas_unmap: (0, U64_MAX) is "all"; other huge values overflow.
        if iova.0 == 0 && length == u64::MAX {
            return Ok(t.unmap_all());
        }
        if iova.0 == u64::MAX || length == u64::MAX {
            return Err(IommufdError::failed(op, EOVERFLOW));
        }
        t.unmap(iova.0, length).map_err(fail(op))
    }

    fn alloc_hwpt(&mut self, dev: DevId, pt: ObjectId, flags: HwptFlags) -> Result<HwptId> {
        let op = Op::HwptAlloc { dev, pt, flags };
        self.enter(op)?;
        // iommufd_hwpt_alloc: device (ENOENT), then the pt object (EINVAL if missing).
        let spec = self.device(dev.0).map_err(fail(op))?.spec.clone();
        match self.objects.get(&pt.0) {
            None => return Err(IommufdError::failed(op, EINVAL)),
            Some(Object::Ioas(_)) => {}
            // iommufd_hwpt_nested_alloc: no driver data given.
            Some(Object::Hwpt(_)) => return Err(IommufdError::failed(op, EOPNOTSUPP)),
            // iommufd_viommu_alloc_hwpt_nested: no user data.
            Some(Object::Viommu(_)) => return Err(IommufdError::failed(op, EOPNOTSUPP)),
            Some(_) => return Err(IommufdError::failed(op, EINVAL)),
        }
        // iommufd_hwpt_paging_alloc: flag checks, then the driver's refusal.
        const FAULT_ID_VALID: u32 = 4;
        let known = HwptFlags::NEST_PARENT.0 | HwptFlags::DIRTY_TRACKING.0 | FAULT_ID_VALID;
        let unsupported = flags.0 & !known != 0
            || (flags.contains(HwptFlags::DIRTY_TRACKING) && !spec.dirty_tracking)
            || (flags.contains(HwptFlags::NEST_PARENT) && !spec.nesting);
        if unsupported {
            return Err(IommufdError::failed(op, EOPNOTSUPP));
        }
        if flags.0 & FAULT_ID_VALID != 0 {
            // The model has no fault objects, so no fault_id can name one.
            return Err(IommufdError::failed(op, ENOENT));
        }
        let id = self.new_hwpt(pt.0, &spec, false).map_err(fail(op))?;
        if let Some(h) = self.hwpt_mut(id) {
            h.nest_parent = flags.contains(HwptFlags::NEST_PARENT);
        }
        Ok(HwptId(id))
    }

    fn hw_info(&mut self, dev: DevId) -> Result<HwInfo> {
        let op = Op::GetHwInfo(dev);
        self.enter(op)?;
        Ok(self.device(dev.0).map_err(fail(op))?.spec.hw_info.clone())
    }

    fn destroy(&mut self, id: ObjectId) -> Result<()> {
        let op = Op::Destroy(id);
        self.enter(op)?;
        // iommufd_object_remove: ENOENT if absent, EBUSY while referenced.
        let busy = match self.objects.get(&id.0) {
            None => return Err(IommufdError::failed(op, ENOENT)),
            Some(Object::Ioas(_)) => self
                .objects
                .values()
                .any(|o| matches!(o, Object::Hwpt(h) if h.ioas == id.0)),
            Some(Object::Hwpt(h)) => !h.devices.is_empty() || self.viommu_uses(id.0),
            // The VFIO driver holds a reference until the cdev is closed.
            Some(Object::Device(_)) => true,
            Some(Object::Viommu(_)) => self.viommu_referenced(id.0),
            Some(Object::Vdevice(_) | Object::Veventq(_)) => false,
        };
        if busy {
            return Err(IommufdError::failed(op, EBUSY));
        }
        match self.objects.get(&id.0) {
            Some(Object::Hwpt(_)) => self.free_hwpt(id.0),
            Some(Object::Vdevice(_)) => self.forget_vdevice(id.0),
            Some(Object::Veventq(_)) => self.forget_veventq(id.0),
            _ => {
                self.objects.remove(&id.0);
            }
        }
        Ok(())
    }

    fn bind_device(&mut self, device: DeviceHandle) -> Result<DevId> {
        self.enter(Op::Bind)?;
        match device {
            DeviceHandle::Model(spec) => Ok(DevId(
                self.insert(Object::Device(Device { spec, hwpt: None })),
            )),
            DeviceHandle::VfioCdev(_) => Err(IommufdError::failed(Op::Bind, EINVAL)),
        }
    }

    fn attach_device(&mut self, dev: DevId, pt: ObjectId) -> Result<HwptId> {
        let op = Op::Attach { dev, pt };
        self.enter(op)?;
        self.device(dev.0).map_err(fail(op))?;
        // iommufd_device_change_pt: ENOENT for no object, EINVAL for the wrong kind.
        let hwpt = match self.objects.get(&pt.0) {
            None => Err(ENOENT),
            Some(Object::Ioas(_)) => self.attach_to_ioas(dev.0, pt.0),
            Some(Object::Hwpt(h)) => match h.nested {
                Some((viommu, ste)) => self
                    .check_nested_attach(dev.0, viommu, ste)
                    .and_then(|()| self.join_hwpt(dev.0, pt.0))
                    .map(|()| pt.0),
                None => self.join_hwpt(dev.0, pt.0).map(|()| pt.0),
            },
            Some(_) => Err(EINVAL),
        };
        hwpt.map(HwptId).map_err(fail(op))
    }

    fn detach_device(&mut self, dev: DevId) -> Result<()> {
        let op = Op::Detach(dev);
        self.enter(op)?;
        self.device(dev.0).map_err(fail(op))?;
        // vfio_iommufd_physical_detach_ioas: a no-op when not attached.
        self.leave_hwpt(dev.0, false);
        Ok(())
    }

    fn unbind_device(&mut self, dev: DevId) -> Result<()> {
        let op = Op::Unbind(dev);
        self.enter(op)?;
        self.device(dev.0).map_err(fail(op))?;
        self.leave_hwpt(dev.0, false);
        // iommufd_device_pre_destroy: the device's vDEVICE goes with it.
        self.remove_vdevices_of(dev.0);
        self.objects.remove(&dev.0);
        Ok(())
    }

    fn alloc_viommu(&mut self, dev: DevId, parent: HwptId) -> Result<ViommuId> {
        let op = Op::ViommuAlloc { dev, parent };
        self.enter(op)?;
        self.viommu_alloc(dev.0, parent.0)
            .map(ViommuId)
            .map_err(fail(op))
    }

    fn alloc_vdevice(&mut self, viommu: ViommuId, dev: DevId, virt_id: u64) -> Result<VdeviceId> {
        let op = Op::VdeviceAlloc {
            viommu,
            dev,
            virt_id,
        };
        self.enter(op)?;
        self.vdevice_alloc(viommu.0, dev.0, virt_id)
            .map(VdeviceId)
            .map_err(fail(op))
    }

    fn alloc_nested_hwpt(&mut self, dev: DevId, viommu: ViommuId, ste: VSte) -> Result<HwptId> {
        let op = Op::NestedAlloc { dev, viommu };
        self.enter(op)?;
        self.nested_alloc(dev.0, viommu.0, ste)
            .map(HwptId)
            .map_err(fail(op))
    }

    fn invalidate_viommu(&mut self, viommu: ViommuId, cmds: &[SmmuCmd]) -> Result<()> {
        let total = u32::try_from(cmds.len()).unwrap_or(u32::MAX);
        let failed = |done: u32, errno: i32| IommufdError::Invalidate {
            viommu,
            done,
            total,
            errno,
        };
        self.calls += 1;
        let now = self.calls;
        if let Some(i) = self.faults.iter().position(|&(at, _)| at == now) {
            let (_, errno) = self.faults.swap_remove(i);
            return Err(failed(0, errno));
        }
        self.invalidate(viommu.0, cmds)
            .map_err(|(done, errno)| failed(done, errno))
    }

    fn alloc_veventq(&mut self, viommu: ViommuId, depth: u32) -> Result<VeventqId> {
        let op = Op::VeventqAlloc(viommu);
        self.enter(op)?;
        self.veventq_alloc(viommu.0, depth)
            .map(VeventqId)
            .map_err(fail(op))
    }

    fn read_vevents(&mut self, veventq: VeventqId, max: usize) -> Result<Vec<VEvent>> {
        let op = Op::ReadVevents(veventq);
        self.enter(op)?;
        self.veventq_read(veventq.0, max).map_err(fail(op))
    }
}

#[cfg(test)]
mod tests;
