//! [`Viommu`]: the vIOMMU of one physical SMMU, with the nested HWPTs for the guest's
//! abort and bypass STEs (made once: every stream in those states shares them).

use super::{destroy, NestParent, NestedError, NestedStep};
use crate::iommufd::{DevId, HwptId, VSte, ViommuId};
use crate::ram_dma::{lock, SharedIommufd};

/// STE V=1, Config=abort.
const STE_ABORT: VSte = [1, 0];
/// STE V=1, Config=bypass (stage 1 bypassed; the stage 2 still applies).
const STE_BYPASS: VSte = [1 | (4 << 1), 0];

/// The vIOMMU object alone; destroyed after the HWPTs using it (field order in
/// [`Viommu`]).
struct Object {
    iommufd: SharedIommufd,
    id: ViommuId,
}

impl Drop for Object {
    fn drop(&mut self) {
        destroy(&self.iommufd, self.id.into(), "vIOMMU");
    }
}

/// One HWPT id destroyed on drop.
struct Hwpt {
    iommufd: SharedIommufd,
    id: HwptId,
}

impl Drop for Hwpt {
    fn drop(&mut self) {
        destroy(&self.iommufd, self.id.into(), "nested HWPT");
    }
}

/// A vIOMMU with its abort and bypass HWPTs.
pub struct Viommu {
    abort: Hwpt,
    bypass: Hwpt,
    object: Object,
}

impl std::fmt::Debug for Viommu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Viommu")
            .field("id", &self.object.id)
            .field("abort", &self.abort.id)
            .field("bypass", &self.bypass.id)
            .finish()
    }
}

impl Viommu {
    /// `IOMMU_VIOMMU_ALLOC` on `parent` for the SMMU behind `dev`, then the abort and
    /// bypass nested HWPTs; what was made is destroyed if a later step fails.
    pub fn new(
        iommufd: SharedIommufd,
        parent: &NestParent,
        dev: DevId,
    ) -> Result<Viommu, NestedError> {
        let id = lock(&iommufd)
            .alloc_viommu(dev, parent.id())
            .map_err(NestedError::at(NestedStep::Viommu))?;
        let object = Object {
            iommufd: iommufd.clone(),
            id,
        };
        let fixed = |ste: VSte| -> Result<Hwpt, NestedError> {
            let hwpt = lock(&iommufd)
                .alloc_nested_hwpt(dev, id, ste)
                .map_err(NestedError::at(NestedStep::FixedHwpt))?;
            Ok(Hwpt {
                iommufd: iommufd.clone(),
                id: hwpt,
            })
        };
        let abort = fixed(STE_ABORT)?;
        let bypass = fixed(STE_BYPASS)?;
        Ok(Viommu {
            abort,
            bypass,
            object,
        })
    }

    /// Its id.
    pub fn id(&self) -> ViommuId {
        self.object.id
    }

    /// The HWPT for a guest STE that is invalid or aborts.
    pub fn abort_hwpt(&self) -> HwptId {
        self.abort.id
    }

    /// The HWPT for a guest STE that bypasses stage 1.
    pub fn bypass_hwpt(&self) -> HwptId {
        self.bypass.id
    }
}
