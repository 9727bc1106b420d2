//! [`IommufdSmmu`]: the emulated SMMUv3's backend over iommufd, for one physical SMMU:
//! guest STEs become nested HWPTs (or the vIOMMU's abort/bypass HWPTs) attached by
//! replace, invalidation batches go to `IOMMU_HWPT_INVALIDATE` on the vIOMMU, events come
//! from the vEVENTQ. It runs on any [`crate::Iommufd`]: the kernel, or the model in tests.

use std::collections::BTreeMap;

use devices::smmuv3::{BackendError, BackendEvent, InvalidateError, Smmuv3Backend};

use super::{NestParent, NestedError, NestedHwpt, Vdevice, Veventq, Viommu};
use crate::iommufd::{DevId, HwptId, IommufdError, VeventqId, ViommuId};
use crate::ram_dma::{lock, SharedIommufd};

/// Depth of the vEVENTQ (events the kernel holds before it drops and flags the loss).
const VEVENTQ_DEPTH: u32 = 256;
/// vEVENTQ sequence numbers are 31 bits.
const SEQUENCE_MASK: u32 = 0x7fff_ffff;

/// One passed-through device behind the vSMMU.
pub struct SmmuStream {
    iommufd: SharedIommufd,
    dev: DevId,
    /// The stage 2, to move the device back onto before its nested HWPT goes.
    parent: HwptId,
    /// The nested HWPT of the guest's current S1 STE (None: abort/bypass HWPT).
    installed: Option<NestedHwpt>,
    vdevice: Vdevice,
}

impl std::fmt::Debug for SmmuStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmmuStream")
            .field("dev", &self.dev)
            .field("vsid", &self.vdevice.vsid())
            .field("installed", &self.installed)
            .finish()
    }
}

impl Drop for SmmuStream {
    fn drop(&mut self) {
        // A nested HWPT cannot be destroyed while the device is on it.
        if let Err(e) = lock(&self.iommufd).attach_device(self.dev, self.parent.into()) {
            log::warn!("cannot move device {} back to its stage 2: {e}", self.dev);
        }
    }
}

/// The backend of one emulated SMMU. Field order is teardown order.
pub struct IommufdSmmu {
    streams: BTreeMap<u32, SmmuStream>,
    veventq: Option<Veventq>,
    /// Sequence number of the last vEVENTQ record: a gap means the kernel dropped events
    /// (its lost-events marker is replaced by the next event once there is room).
    last_sequence: Option<u32>,
    viommu: Viommu,
    parent: HwptId,
    iommufd: SharedIommufd,
}

impl std::fmt::Debug for IommufdSmmu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IommufdSmmu")
            .field("viommu", &self.viommu)
            .field("streams", &self.streams)
            .finish()
    }
}

fn backend_error(e: impl std::fmt::Display, errno: i32) -> BackendError {
    BackendError {
        errno,
        message: e.to_string(),
    }
}

impl IommufdSmmu {
    /// The vIOMMU on `parent` for the SMMU behind `dev` (already attached to `parent`).
    pub fn new(
        iommufd: SharedIommufd,
        parent: &NestParent,
        dev: DevId,
    ) -> Result<IommufdSmmu, NestedError> {
        let viommu = Viommu::new(iommufd.clone(), parent, dev)?;
        Ok(IommufdSmmu {
            streams: BTreeMap::new(),
            veventq: None,
            last_sequence: None,
            viommu,
            parent: parent.id(),
            iommufd,
        })
    }

    /// Adds a device (attached to the stage 2) as guest StreamID `vsid`.
    pub fn add_device(&mut self, dev: DevId, vsid: u32) -> Result<(), NestedError> {
        let vdevice = Vdevice::new(self.iommufd.clone(), self.viommu.id(), dev, vsid)?;
        self.streams.insert(
            vsid,
            SmmuStream {
                iommufd: self.iommufd.clone(),
                dev,
                parent: self.parent,
                installed: None,
                vdevice,
            },
        );
        Ok(())
    }

    /// The vIOMMU's id.
    pub fn viommu_id(&self) -> ViommuId {
        self.viommu.id()
    }

    /// The vEVENTQ, once the guest enabled its event queue (its fd goes into the VMM's
    /// event loop with the kernel backend).
    pub fn veventq_id(&self) -> Option<VeventqId> {
        self.veventq.as_ref().map(Veventq::id)
    }
}

impl Smmuv3Backend for IommufdSmmu {
    fn stream_ids(&self) -> Vec<u32> {
        self.streams.keys().copied().collect()
    }

    fn install_ste(&mut self, sid: u32, ste: [u64; 2]) -> Result<(), BackendError> {
        let Some(stream) = self.streams.get_mut(&sid) else {
            return Ok(());
        };
        let valid = ste[0] & 1 != 0;
        let (target, nested) = match (ste[0] >> 1) & 7 {
            4 if valid => (self.viommu.bypass_hwpt(), None),
            5 if valid => {
                let hwpt = NestedHwpt::new(self.iommufd.clone(), self.viommu.id(), stream.dev, ste)
                    .map_err(|e| backend_error(&e, e.errno()))?;
                (hwpt.id(), Some(hwpt))
            }
            _ => (self.viommu.abort_hwpt(), None),
        };
        lock(&self.iommufd)
            .attach_device(stream.dev, target.into())
            .map_err(|e| backend_error(&e, e.errno()))?;
        // Replaced: the old nested HWPT (if any) is no longer in use.
        stream.installed = nested;
        Ok(())
    }

    fn invalidate(&mut self, cmds: &[[u64; 2]]) -> Result<(), InvalidateError> {
        lock(&self.iommufd)
            .invalidate_viommu(self.viommu.id(), cmds)
            .map_err(|e| {
                let done = match &e {
                    IommufdError::Invalidate { done, .. } => *done as usize,
                    _ => 0,
                };
                InvalidateError {
                    done,
                    errno: e.errno(),
                    message: e.to_string(),
                }
            })
    }

    fn enable_events(&mut self) -> Result<(), BackendError> {
        if self.veventq.is_none() {
            let q = Veventq::new(self.iommufd.clone(), self.viommu.id(), VEVENTQ_DEPTH)
                .map_err(|e| backend_error(&e, e.errno()))?;
            self.veventq = Some(q);
        }
        Ok(())
    }

    fn event_fd(&self) -> Option<std::os::fd::OwnedFd> {
        let q = self.veventq.as_ref()?;
        lock(&self.iommufd).veventq_fd(q.id())
    }

    fn read_events(&mut self, max: usize) -> Vec<BackendEvent> {
        let Some(q) = &self.veventq else {
            return Vec::new();
        };
        let records = match q.read(max) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("cannot read the vEVENTQ: {e}");
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let expected = self
                .last_sequence
                .map(|s| s.wrapping_add(1) & SEQUENCE_MASK);
            self.last_sequence = Some(r.sequence);
            if r.lost {
                out.push(BackendEvent::Lost);
                continue;
            }
            if expected.is_some_and(|e| e != r.sequence) {
                out.push(BackendEvent::Lost);
            }
            out.push(BackendEvent::Record(r.event));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iommufd::{DeviceHandle, Iommufd};
    use crate::model::{ModelDevice, ModelIommufd};
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_sequence_gap_is_reported_as_lost_events() {
        let model = Arc::new(Mutex::new(ModelIommufd::with_page_size(4096)));
        let shared: SharedIommufd = model.clone();
        let (ioas, dev) = {
            let mut m = model.lock().unwrap();
            let ioas = m.alloc_ioas().unwrap();
            let dev = m
                .bind_device(DeviceHandle::Model(ModelDevice::arm_smmuv3()))
                .unwrap();
            (ioas, dev)
        };
        let parent = NestParent::new(shared.clone(), ioas, dev).unwrap();
        let mut smmu = IommufdSmmu::new(shared, &parent, dev).unwrap();
        smmu.add_device(dev, 0x10).unwrap();
        smmu.enable_events().unwrap();
        let report = |n: usize| {
            for _ in 0..n {
                model.lock().unwrap().report_event(dev, [0x10, 0, 0, 0]);
            }
        };
        // Full, one dropped (the marker at the tail), then room for one more: the new
        // event replaces the marker and only the sequence tells of the loss.
        report(VEVENTQ_DEPTH as usize + 1);
        assert_eq!(smmu.read_events(10).len(), 10);
        report(1);
        let rest = smmu.read_events(1000);
        let lost = rest.iter().filter(|e| **e == BackendEvent::Lost).count();
        assert_eq!(lost, 1);
        assert_eq!(rest.len(), VEVENTQ_DEPTH as usize - 10 + 1 + 1);
        assert_eq!(rest[rest.len() - 2], BackendEvent::Lost);
        // The marker itself is a loss; what follows it in sequence is not another one.
        report(VEVENTQ_DEPTH as usize + 2);
        let all = smmu.read_events(1000);
        assert_eq!(all.last(), Some(&BackendEvent::Lost));
        report(1);
        assert_eq!(smmu.read_events(10).len(), 1);
        drop(smmu);
        model
            .lock()
            .unwrap()
            .attach_device(dev, ioas.into())
            .unwrap();
    }
}
