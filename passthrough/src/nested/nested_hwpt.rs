//! [`NestedHwpt`]: a nested HWPT made from a guest STE on a vIOMMU.

use super::{destroy, NestedError, NestedStep};
use crate::iommufd::{DevId, HwptId, VSte, ViommuId};
use crate::ram_dma::{lock, SharedIommufd};

/// A nested HWPT; destroyed on drop (the device must have moved off it first).
pub struct NestedHwpt {
    iommufd: SharedIommufd,
    id: HwptId,
}

impl std::fmt::Debug for NestedHwpt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NestedHwpt").field("id", &self.id).finish()
    }
}

impl NestedHwpt {
    /// `IOMMU_HWPT_ALLOC` on `viommu` for `dev` from `ste` (`EIO` for fields a guest may
    /// not set: mask them first).
    pub fn new(
        iommufd: SharedIommufd,
        viommu: ViommuId,
        dev: DevId,
        ste: VSte,
    ) -> Result<NestedHwpt, NestedError> {
        let id = lock(&iommufd)
            .alloc_nested_hwpt(dev, viommu, ste)
            .map_err(NestedError::at(NestedStep::NestedHwpt))?;
        Ok(NestedHwpt { iommufd, id })
    }

    /// Its id.
    pub fn id(&self) -> HwptId {
        self.id
    }
}

impl Drop for NestedHwpt {
    fn drop(&mut self) {
        destroy(&self.iommufd, self.id.into(), "nested HWPT");
    }
}
