//! [`Veventq`]: the queue the kernel reports the guest's stage-1 faults on (with vSIDs).

use super::{destroy, NestedError, NestedStep};
use crate::iommufd::{IommufdError, VEvent, VeventqId, ViommuId};
use crate::ram_dma::{lock, SharedIommufd};

/// A vEVENTQ of type ARM SMMUv3; destroyed on drop.
pub struct Veventq {
    iommufd: SharedIommufd,
    id: VeventqId,
}

impl std::fmt::Debug for Veventq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Veventq").field("id", &self.id).finish()
    }
}

impl Veventq {
    /// `IOMMU_VEVENTQ_ALLOC` on `viommu` with room for `depth` events (a second one on
    /// the same vIOMMU is `EEXIST`).
    pub fn new(
        iommufd: SharedIommufd,
        viommu: ViommuId,
        depth: u32,
    ) -> Result<Veventq, NestedError> {
        let id = lock(&iommufd)
            .alloc_veventq(viommu, depth)
            .map_err(NestedError::at(NestedStep::Veventq))?;
        Ok(Veventq { iommufd, id })
    }

    /// Its id (the kernel backend gives its fd for an event loop).
    pub fn id(&self) -> VeventqId {
        self.id
    }

    /// Up to `max` pending records, without blocking.
    pub fn read(&self, max: usize) -> Result<Vec<VEvent>, IommufdError> {
        lock(&self.iommufd).read_vevents(self.id, max)
    }
}

impl Drop for Veventq {
    fn drop(&mut self) {
        destroy(&self.iommufd, self.id.into(), "vEVENTQ");
    }
}
