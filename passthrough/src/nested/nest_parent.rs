//! [`NestParent`]: the stage-2 HWPT (`IOMMU_HWPT_ALLOC_NEST_PARENT`) over the VM's IOAS
//! that nested HWPTs translate through, for one physical SMMU.

use super::{destroy, NestedError, NestedStep};
use crate::iommufd::{DevId, HwptFlags, HwptId, IoasId};
use crate::ram_dma::{lock, SharedIommufd};

/// A `NEST_PARENT` HWPT; destroyed on drop (after every device left it).
pub struct NestParent {
    iommufd: SharedIommufd,
    id: HwptId,
}

impl std::fmt::Debug for NestParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NestParent").field("id", &self.id).finish()
    }
}

impl NestParent {
    /// Allocates the stage 2 over `ioas` for `dev` (a device behind the physical SMMU)
    /// and attaches `dev` to it; undone if the attach fails.
    pub fn new(
        iommufd: SharedIommufd,
        ioas: IoasId,
        dev: DevId,
    ) -> Result<NestParent, NestedError> {
        let id = lock(&iommufd)
            .alloc_hwpt(dev, ioas.into(), HwptFlags::NEST_PARENT)
            .map_err(NestedError::at(NestedStep::NestParent))?;
        let parent = NestParent { iommufd, id };
        parent.attach(dev)?;
        Ok(parent)
    }

    /// Attaches (or moves back) another device of the same SMMU to the stage 2.
    pub fn attach(&self, dev: DevId) -> Result<(), NestedError> {
        lock(&self.iommufd)
            .attach_device(dev, self.id.into())
            .map(|_| ())
            .map_err(NestedError::at(NestedStep::Attach))
    }

    /// Its id.
    pub fn id(&self) -> HwptId {
        self.id
    }
}

impl Drop for NestParent {
    fn drop(&mut self) {
        destroy(&self.iommufd, self.id.into(), "nesting parent HWPT");
    }
}
