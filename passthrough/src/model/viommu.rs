//! The model's nested-translation objects (ARM SMMUv3): vIOMMU, vDEVICE, nested HWPTs
//! made from a guest STE, vIOMMU invalidation and the vEVENTQ, each failure with the
//! kernel's errno:
//!
//! - `iommufd_viommu_alloc_ioctl` (viommu.c): flags → `EOPNOTSUPP`, no device →
//!   `ENOENT`, an SMMU that cannot nest for a VM → `EOPNOTSUPP` (`get_viommu_size` 0),
//!   the HWPT missing or not paging → `ENOENT`, not a `NEST_PARENT` → `EINVAL`, the
//!   parent of another SMMU → `EINVAL` (`arm_vsmmu_init`);
//! - `iommufd_vdevice_alloc_ioctl`: no vIOMMU or device → `ENOENT`, another SMMU →
//!   `EINVAL`, the device has a vDEVICE already or the virt_id is taken → `EEXIST`;
//! - `iommufd_viommu_alloc_hwpt_nested` + `arm_vsmmu_alloc_domain_nested`: another SMMU
//!   → `EINVAL`; an STE with V=0 is accepted (zeroed); fields outside the nesting-allowed
//!   masks, a Config other than abort/bypass/S1-translate or EATS other than 0/1 → `EIO`;
//! - `arm_vsmmu_cache_invalidate`: only CFGI_CD(_ALL), ATC_INV, TLBI_NH_* and
//!   TLBI_NSNH_ALL are forwarded, a vSID without vDEVICE is `EIO`, and `entry_num` says
//!   how many went through; a non-vIOMMU id is `EINVAL`, none `ENOENT`;
//! - `iommufd_veventq_alloc` (eventq.c): depth 0 → `EINVAL`, no vIOMMU → `ENOENT`, a
//!   second queue of the type → `EEXIST`; a full queue drops events and queues one
//!   lost-events marker (re-sequenced per lost event), as `iommufd_vevent_handler` does;
//! - `arm_smmu_attach_prepare_vmaster`: attaching a translating nested HWPT to a device
//!   without a vDEVICE → `ENOENT` (abort and bypass are fine).
//!
//! Invalidations that pass are recorded with the vSID replaced by the physical StreamID
//! (as the kernel issues them), for tests: [`ModelIommufd::invalidations`].

use std::collections::{BTreeMap, VecDeque};

use libc::{EEXIST, EINVAL, EIO, ENOENT, EOPNOTSUPP};

use super::{Errno, Hwpt, ModelIommufd, Object};
use crate::iommufd::{DevId, HwptId, SmmuCmd, VEvent, VSte, ViommuId};

/// STE word 0 fields a guest may set (`STRTAB_STE_0_NESTING_ALLOWED`): V, Config, S1Fmt,
/// S1ContextPtr, S1CDMax.
pub const STE0_NESTING_ALLOWED: u64 =
    1 | (0x7 << 1) | (0x3 << 4) | (((1 << 46) - 1) << 6) | (0x1f << 59);
/// STE word 1 fields a guest may set (`STRTAB_STE_1_NESTING_ALLOWED`): S1DSS, S1CIR,
/// S1COR, S1CSH, S1STALLD, EATS.
pub const STE1_NESTING_ALLOWED: u64 =
    0x3 | (0x3 << 2) | (0x3 << 4) | (0x3 << 6) | (1 << 27) | (0x3 << 28);

const CFG_ABORT: u64 = 0;
const CFG_BYPASS: u64 = 4;
const CFG_S1_TRANS: u64 = 5;

#[derive(Debug)]
pub(super) struct Viommu {
    parent: u32,
    instance: u32,
    /// virt_id → vDEVICE object id.
    vdevs: BTreeMap<u64, u32>,
    /// The ARM_SMMUV3 vEVENTQ, if any.
    veventq: Option<u32>,
    /// Forwarded commands, SIDs physical.
    invalidations: Vec<SmmuCmd>,
}

#[derive(Debug)]
pub(super) struct Vdevice {
    viommu: u32,
    dev: u32,
    virt_id: u64,
}

#[derive(Debug)]
pub(super) struct Veventq {
    viommu: u32,
    depth: u32,
    queue: VecDeque<VEvent>,
    /// Real events queued (the lost marker does not count).
    events: u32,
    sequence: u32,
}

impl ModelIommufd {
    pub(super) fn viommu(&self, id: u32) -> Result<&Viommu, Errno> {
        match self.objects.get(&id) {
            Some(Object::Viommu(v)) => Ok(v),
            _ => Err(ENOENT),
        }
    }

    fn viommu_mut(&mut self, id: u32) -> Result<&mut Viommu, Errno> {
        match self.objects.get_mut(&id) {
            Some(Object::Viommu(v)) => Ok(v),
            _ => Err(ENOENT),
        }
    }

    /// Whether a vIOMMU uses HWPT `hwpt` as its stage 2.
    pub(super) fn viommu_uses(&self, hwpt: u32) -> bool {
        self.objects
            .values()
            .any(|o| matches!(o, Object::Viommu(v) if v.parent == hwpt))
    }

    /// Whether vDEVICEs, vEVENTQs or nested HWPTs still hold vIOMMU `id`.
    pub(super) fn viommu_referenced(&self, id: u32) -> bool {
        self.objects.values().any(|o| match o {
            Object::Vdevice(v) => v.viommu == id,
            Object::Veventq(q) => q.viommu == id,
            Object::Hwpt(h) => h.nested.is_some_and(|(v, _)| v == id),
            _ => false,
        })
    }

    pub(super) fn viommu_alloc(&mut self, dev: u32, parent: u32) -> Result<u32, Errno> {
        let spec = self.device(dev)?.spec.clone();
        if !spec.viommu {
            return Err(EOPNOTSUPP);
        }
        let (nest_parent, instance) = match self.objects.get(&parent) {
            Some(Object::Hwpt(h)) if h.nested.is_none() => {
                (h.nest_parent, h.made_for.iommu_instance)
            }
            _ => return Err(ENOENT),
        };
        if !nest_parent || instance != spec.iommu_instance {
            return Err(EINVAL);
        }
        Ok(self.insert(Object::Viommu(Viommu {
            parent,
            instance,
            vdevs: BTreeMap::new(),
            veventq: None,
            invalidations: Vec::new(),
        })))
    }

    pub(super) fn vdevice_alloc(
        &mut self,
        viommu: u32,
        dev: u32,
        virt_id: u64,
    ) -> Result<u32, Errno> {
        let instance = self.viommu(viommu)?.instance;
        let spec = &self.device(dev)?.spec;
        if spec.iommu_instance != instance {
            return Err(EINVAL);
        }
        let has_vdev = self
            .objects
            .values()
            .any(|o| matches!(o, Object::Vdevice(v) if v.dev == dev));
        if has_vdev || self.viommu(viommu)?.vdevs.contains_key(&virt_id) {
            return Err(EEXIST);
        }
        let id = self.insert(Object::Vdevice(Vdevice {
            viommu,
            dev,
            virt_id,
        }));
        self.viommu_mut(viommu)?.vdevs.insert(virt_id, id);
        Ok(id)
    }

    /// Drops the vDEVICEs of a device being unbound.
    pub(super) fn remove_vdevices_of(&mut self, dev: u32) {
        let gone: Vec<(u32, u32, u64)> = self
            .objects
            .iter()
            .filter_map(|(&id, o)| match o {
                Object::Vdevice(v) if v.dev == dev => Some((id, v.viommu, v.virt_id)),
                _ => None,
            })
            .collect();
        for (id, viommu, virt_id) in gone {
            self.objects.remove(&id);
            if let Ok(v) = self.viommu_mut(viommu) {
                v.vdevs.remove(&virt_id);
            }
        }
    }

    /// Removes a vDEVICE (its `IOMMU_DESTROY`).
    pub(super) fn forget_vdevice(&mut self, id: u32) {
        if let Some(Object::Vdevice(v)) = self.objects.remove(&id) {
            if let Ok(viommu) = self.viommu_mut(v.viommu) {
                viommu.vdevs.remove(&v.virt_id);
            }
        }
    }

    /// Removes a vEVENTQ (its `IOMMU_DESTROY`).
    pub(super) fn forget_veventq(&mut self, id: u32) {
        if let Some(Object::Veventq(q)) = self.objects.remove(&id) {
            if let Ok(viommu) = self.viommu_mut(q.viommu) {
                viommu.veventq = None;
            }
        }
    }

    pub(super) fn nested_alloc(&mut self, dev: u32, viommu: u32, ste: VSte) -> Result<u32, Errno> {
        let spec = self.device(dev)?.spec.clone();
        let v = self.viommu(viommu)?;
        if spec.iommu_instance != v.instance {
            return Err(EINVAL);
        }
        let ste = validate_vste(ste)?;
        let ioas = match self.hwpt(v.parent) {
            Some(h) => h.ioas,
            None => return Err(ENOENT),
        };
        Ok(self.insert(Object::Hwpt(Hwpt {
            ioas,
            auto: false,
            made_for: spec,
            devices: Default::default(),
            nest_parent: false,
            nested: Some((viommu, ste)),
        })))
    }

    /// `arm_smmu_attach_dev_nested` checks before the device moves onto the HWPT.
    pub(super) fn check_nested_attach(
        &self,
        dev: u32,
        viommu: u32,
        ste: VSte,
    ) -> Result<(), Errno> {
        let spec = &self.device(dev)?.spec;
        let v = self.viommu(viommu)?;
        if spec.iommu_instance != v.instance {
            return Err(EINVAL);
        }
        let cfg = (ste[0] >> 1) & 7;
        let has_vdev = self
            .objects
            .values()
            .any(|o| matches!(o, Object::Vdevice(d) if d.dev == dev && d.viommu == viommu));
        if ste[0] & 1 != 0 && cfg == CFG_S1_TRANS && !has_vdev {
            return Err(ENOENT);
        }
        Ok(())
    }

    pub(super) fn invalidate(&mut self, viommu: u32, cmds: &[SmmuCmd]) -> Result<(), (u32, Errno)> {
        match self.objects.get(&viommu) {
            None => return Err((0, ENOENT)),
            Some(Object::Viommu(_)) => {}
            // A nested HWPT of SMMUv3 has no cache_invalidate_user.
            Some(Object::Hwpt(h)) if h.nested.is_some() => return Err((0, EOPNOTSUPP)),
            Some(_) => return Err((0, EINVAL)),
        }
        // Convert all first (the kernel stops at the first bad one, having issued the
        // ones before it).
        let mut converted = Vec::with_capacity(cmds.len());
        let mut failure = None;
        for (i, cmd) in cmds.iter().enumerate() {
            match self.convert(viommu, *cmd) {
                Ok(c) => converted.push(c),
                Err(errno) => {
                    failure = Some((u32::try_from(i).unwrap_or(u32::MAX), errno));
                    break;
                }
            }
        }
        if let Ok(v) = self.viommu_mut(viommu) {
            v.invalidations.extend(converted);
        }
        match failure {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    /// `arm_vsmmu_convert_user_cmd`.
    fn convert(&self, viommu: u32, cmd: SmmuCmd) -> Result<SmmuCmd, Errno> {
        const TLBI_NH_ALL: u64 = 0x10;
        const TLBI_NH_ASID: u64 = 0x11;
        const TLBI_NH_VA: u64 = 0x12;
        const TLBI_NH_VAA: u64 = 0x13;
        const TLBI_NSNH_ALL: u64 = 0x30;
        const ATC_INV: u64 = 0x40;
        const CFGI_CD: u64 = 0x05;
        const CFGI_CD_ALL: u64 = 0x06;
        match cmd[0] & 0xff {
            TLBI_NSNH_ALL => Ok([TLBI_NH_ALL, 0]),
            TLBI_NH_ALL | TLBI_NH_ASID | TLBI_NH_VA | TLBI_NH_VAA => Ok(cmd),
            ATC_INV | CFGI_CD | CFGI_CD_ALL => {
                let vsid = cmd[0] >> 32;
                let v = self.viommu(viommu)?;
                let vdev = v.vdevs.get(&vsid).ok_or(EIO)?;
                let dev = match self.objects.get(vdev) {
                    Some(Object::Vdevice(d)) => d.dev,
                    _ => return Err(EIO),
                };
                let sid = u64::from(self.device(dev).map_err(|_| EIO)?.spec.stream_id);
                Ok([(cmd[0] & 0xffff_ffff) | (sid << 32), cmd[1]])
            }
            _ => Err(EIO),
        }
    }

    pub(super) fn veventq_alloc(&mut self, viommu: u32, depth: u32) -> Result<u32, Errno> {
        if depth == 0 {
            return Err(EINVAL);
        }
        if self.viommu(viommu)?.veventq.is_some() {
            return Err(EEXIST);
        }
        let id = self.insert(Object::Veventq(Veventq {
            viommu,
            depth,
            queue: VecDeque::new(),
            events: 0,
            sequence: 0,
        }));
        self.viommu_mut(viommu)?.veventq = Some(id);
        Ok(id)
    }

    pub(super) fn veventq_read(&mut self, id: u32, max: usize) -> Result<Vec<VEvent>, Errno> {
        let Some(Object::Veventq(q)) = self.objects.get_mut(&id) else {
            return Err(ENOENT);
        };
        let n = max.min(q.queue.len());
        let out: Vec<VEvent> = q.queue.drain(..n).collect();
        q.events -= u32::try_from(out.iter().filter(|e| !e.lost).count()).unwrap_or(0);
        Ok(out)
    }

    /// The physical SMMU reports `event` for `dev` (its physical StreamID in bits 63:32
    /// of word 0): like `arm_vmaster_report_event`, it reaches the vEVENTQ of the vIOMMU
    /// holding the device's vDEVICE with the vSID in place; returns whether it was
    /// queued (false: no vDEVICE, no vEVENTQ or the queue is full).
    pub fn report_event(&mut self, dev: DevId, event: [u64; 4]) -> bool {
        let found = self.objects.values().find_map(|o| match o {
            Object::Vdevice(v) if v.dev == dev.0 => Some((v.viommu, v.virt_id)),
            _ => None,
        });
        let Some((viommu, vsid)) = found else {
            return false;
        };
        let Some(qid) = self.viommu(viommu).ok().and_then(|v| v.veventq) else {
            return false;
        };
        let Some(Object::Veventq(q)) = self.objects.get_mut(&qid) else {
            return false;
        };
        let mut event = event;
        event[0] = (event[0] & 0xffff_ffff) | (vsid << 32);
        let sequence = q.sequence;
        q.sequence = (q.sequence + 1) & 0x7fff_ffff;
        // The lost-events marker only ever sits at the tail; a new record replaces it.
        if q.queue.back().is_some_and(|e| e.lost) {
            q.queue.pop_back();
        }
        if q.events >= q.depth {
            q.queue.push_back(VEvent {
                sequence,
                lost: true,
                event: [0; 4],
            });
            return false;
        }
        q.events += 1;
        q.queue.push_back(VEvent {
            sequence,
            lost: false,
            event,
        });
        true
    }

    /// The commands forwarded to vIOMMU `viommu` so far, as the kernel issued them (vSIDs
    /// replaced by physical StreamIDs, NSNH_ALL turned into NH_ALL).
    pub fn invalidations(&self, viommu: ViommuId) -> Vec<SmmuCmd> {
        self.viommu(viommu.0)
            .map(|v| v.invalidations.clone())
            .unwrap_or_default()
    }

    /// The HWPT `dev` is attached to.
    pub fn attached_hwpt(&self, dev: DevId) -> Option<HwptId> {
        self.device(dev.0).ok()?.hwpt.map(HwptId)
    }

    /// The guest STE a nested HWPT was made from (after the kernel's validation).
    pub fn nested_ste(&self, hwpt: HwptId) -> Option<VSte> {
        self.hwpt(hwpt.0)?.nested.map(|(_, ste)| ste)
    }
}

/// `arm_smmu_validate_vste`.
fn validate_vste(mut ste: VSte) -> Result<VSte, Errno> {
    if ste[0] & 1 == 0 {
        return Ok([0, 0]);
    }
    if ste[0] & !STE0_NESTING_ALLOWED != 0 || ste[1] & !STE1_NESTING_ALLOWED != 0 {
        return Err(EIO);
    }
    let cfg = (ste[0] >> 1) & 7;
    if cfg != CFG_ABORT && cfg != CFG_BYPASS && cfg != CFG_S1_TRANS {
        return Err(EIO);
    }
    let eats = (ste[1] >> 28) & 3;
    if eats > 1 {
        return Err(EIO);
    }
    ste[1] &= !(0x3 << 28);
    Ok(ste)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iommufd::{DeviceHandle, HwptFlags, IommufdError};
    use crate::{Iommufd, ModelDevice};

    struct Setup {
        m: ModelIommufd,
        dev: DevId,
        s2: HwptId,
        viommu: ViommuId,
    }

    fn setup() -> Setup {
        let mut m = ModelIommufd::with_page_size(4096);
        let ioas = m.alloc_ioas().unwrap();
        let dev = m
            .bind_device(DeviceHandle::Model(ModelDevice::arm_smmuv3()))
            .unwrap();
        let s2 = m
            .alloc_hwpt(dev, ioas.into(), HwptFlags::NEST_PARENT)
            .unwrap();
        m.attach_device(dev, s2.into()).unwrap();
        let viommu = m.alloc_viommu(dev, s2).unwrap();
        Setup { m, dev, s2, viommu }
    }

    const S1: VSte = [1 | (5 << 1) | 0x4000_0000, 0];

    #[test]
    fn viommu_needs_a_nest_parent_on_the_same_smmu() {
        let mut m = ModelIommufd::with_page_size(4096);
        let ioas = m.alloc_ioas().unwrap();
        let dev = m
            .bind_device(DeviceHandle::Model(ModelDevice::arm_smmuv3()))
            .unwrap();
        let plain = m.alloc_hwpt(dev, ioas.into(), HwptFlags::NONE).unwrap();
        let e = |r: crate::iommufd::Result<ViommuId>| r.unwrap_err().errno();
        assert_eq!(e(m.alloc_viommu(dev, plain)), EINVAL);
        assert_eq!(e(m.alloc_viommu(dev, HwptId(ioas.0))), ENOENT);
        assert_eq!(e(m.alloc_viommu(DevId(77), plain)), ENOENT);
        let mut other = ModelDevice::arm_smmuv3();
        other.iommu_instance = 1;
        let dev2 = m.bind_device(DeviceHandle::Model(other)).unwrap();
        let s2 = m
            .alloc_hwpt(dev, ioas.into(), HwptFlags::NEST_PARENT)
            .unwrap();
        assert_eq!(e(m.alloc_viommu(dev2, s2)), EINVAL);
        let mut incoherent = ModelDevice::arm_smmuv3();
        incoherent.viommu = false;
        let dev3 = m.bind_device(DeviceHandle::Model(incoherent)).unwrap();
        assert_eq!(e(m.alloc_viommu(dev3, s2)), EOPNOTSUPP);
        let v = m.alloc_viommu(dev, s2).unwrap();
        assert_eq!(m.destroy(s2.into()).unwrap_err().errno(), libc::EBUSY);
        m.destroy(v.into()).unwrap();
        m.destroy(s2.into()).unwrap();
    }

    #[test]
    fn vdevice_errnos() {
        let Setup {
            mut m, dev, viommu, ..
        } = setup();
        let vd = m.alloc_vdevice(viommu, dev, 8).unwrap();
        let e = |r: crate::iommufd::Result<_>| r.unwrap_err().errno();
        assert_eq!(
            e(m.alloc_vdevice(viommu, dev, 9)),
            EEXIST,
            "same device twice"
        );
        let dev2 = m
            .bind_device(DeviceHandle::Model(ModelDevice::arm_smmuv3()))
            .unwrap();
        assert_eq!(e(m.alloc_vdevice(viommu, dev2, 8)), EEXIST, "same virt_id");
        assert_eq!(e(m.alloc_vdevice(ViommuId(99), dev2, 1)), ENOENT);
        assert_eq!(m.destroy(viommu.into()).unwrap_err().errno(), libc::EBUSY);
        m.destroy(vd.into()).unwrap();
        m.alloc_vdevice(viommu, dev2, 8).unwrap();
        m.unbind_device(dev2).unwrap();
        m.alloc_vdevice(viommu, dev, 8).unwrap();
    }

    #[test]
    fn nested_hwpt_validation_and_attach() {
        let Setup {
            mut m,
            dev,
            s2,
            viommu,
        } = setup();
        let e = |r: crate::iommufd::Result<HwptId>| r.unwrap_err().errno();
        assert_eq!(
            e(m.alloc_nested_hwpt(dev, viommu, [S1[0] | (1 << 52), 0])),
            EIO
        );
        assert_eq!(e(m.alloc_nested_hwpt(dev, viommu, [1 | (6 << 1), 0])), EIO);
        assert_eq!(e(m.alloc_nested_hwpt(dev, viommu, [S1[0], 2 << 28])), EIO);
        assert_eq!(e(m.alloc_nested_hwpt(dev, viommu, [S1[0], 1 << 40])), EIO);
        let invalid = m.alloc_nested_hwpt(dev, viommu, [0x1234_0000, 7]).unwrap();
        assert_eq!(m.nested_ste(invalid), Some([0, 0]), "V=0 is zeroed");
        let eats = m.alloc_nested_hwpt(dev, viommu, [S1[0], 1 << 28]).unwrap();
        assert_eq!(m.nested_ste(eats), Some([S1[0], 0]), "EATS is dropped");
        let s1 = m.alloc_nested_hwpt(dev, viommu, S1).unwrap();
        let r = m.attach_device(dev, s1.into());
        assert_eq!(r.unwrap_err().errno(), ENOENT, "S1 needs a vDEVICE");
        let bypass = m.alloc_nested_hwpt(dev, viommu, [1 | (4 << 1), 0]).unwrap();
        m.attach_device(dev, bypass.into()).unwrap();
        m.alloc_vdevice(viommu, dev, 8).unwrap();
        m.attach_device(dev, s1.into()).unwrap();
        assert_eq!(m.attached_hwpt(dev), Some(s1));
        assert_eq!(m.destroy(s1.into()).unwrap_err().errno(), libc::EBUSY);
        m.destroy(bypass.into()).unwrap();
        m.attach_device(dev, s2.into()).unwrap();
        m.destroy(s1.into()).unwrap();
    }

    #[test]
    fn invalidation_reports_how_far_it_got() {
        let Setup {
            mut m, dev, viommu, ..
        } = setup();
        m.alloc_vdevice(viommu, dev, 8).unwrap();
        let cfgi_cd = |sid: u64| [0x05 | (sid << 32), 0];
        let cmds = [[0x11, 0], cfgi_cd(8), [0x30, 0], cfgi_cd(9), [0x10, 0]];
        let err = m.invalidate_viommu(viommu, &cmds).unwrap_err();
        assert!(
            matches!(
                err,
                IommufdError::Invalidate {
                    done: 3,
                    total: 5,
                    errno: EIO,
                    ..
                }
            ),
            "{err:?}"
        );
        let sid = u64::from(ModelDevice::arm_smmuv3().stream_id);
        assert_eq!(
            m.invalidations(viommu),
            vec![[0x11, 0], cfgi_cd(sid), [0x10, 0]]
        );
        let err = m.invalidate_viommu(viommu, &[[0x03, 0]]).unwrap_err();
        assert_eq!(err.errno(), EIO, "CFGI_STE is not forwarded");
        let err = m.invalidate_viommu(ViommuId(dev.0), &[]).unwrap_err();
        assert_eq!(err.errno(), EINVAL);
        m.invalidate_viommu(viommu, &[]).unwrap();
    }

    #[test]
    fn veventq_overflow_and_errnos() {
        let Setup {
            mut m, dev, viommu, ..
        } = setup();
        let e = |r: crate::iommufd::Result<_>| r.unwrap_err().errno();
        assert_eq!(e(m.alloc_veventq(viommu, 0)), EINVAL);
        assert_eq!(e(m.alloc_veventq(ViommuId(99), 4)), ENOENT);
        let q = m.alloc_veventq(viommu, 2).unwrap();
        assert_eq!(e(m.alloc_veventq(viommu, 2)), EEXIST);
        assert!(!m.report_event(dev, [0x10, 0, 0, 0]), "no vDEVICE yet");
        m.alloc_vdevice(viommu, dev, 8).unwrap();
        let pevt = [0x10 | (0x10 << 32), 1, 2, 3];
        assert!(m.report_event(dev, pevt));
        assert!(m.report_event(dev, pevt));
        assert!(!m.report_event(dev, pevt));
        assert!(!m.report_event(dev, pevt));
        let got = m.read_vevents(q, 16).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].event, [0x10 | (8 << 32), 1, 2, 3], "vSID in place");
        assert!(got[2].lost);
        assert_eq!(
            got.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [0, 1, 3]
        );
        assert!(m.read_vevents(q, 16).unwrap().is_empty());
        assert!(m.report_event(dev, pevt));
        m.destroy(q.into()).unwrap();
        m.alloc_veventq(viommu, 2).unwrap();
    }
}
