//! Nested translation for a guest-visible vSMMUv3: the iommufd objects, one per module,
//! each created completely or not at all and destroyed by `Drop`.
//!
//! Per VM and physical SMMU, top-down:
//!
//! 1. [`NestParent`]: a `NEST_PARENT` HWPT over the VM's IOAS (guest RAM at IOVA = GPA,
//!    the stage 2), with the SMMU's passed-through devices attached to it;
//! 2. [`Viommu`]: `IOMMU_VIOMMU_ALLOC` (ARM SMMUv3) on that stage 2, with its two fixed
//!    nested HWPTs for the guest's abort and bypass STEs;
//! 3. per device, [`Vdevice`]: `IOMMU_VDEVICE_ALLOC` with the guest StreamID (vSID);
//! 4. per guest STE install, [`NestedHwpt`]: a nested HWPT from the guest's STE;
//! 5. once the guest enables its event queue, [`Veventq`].
//!
//! [`IommufdSmmu`] puts them together as the backend of the emulated SMMUv3
//! ([`devices::smmuv3::Smmuv3Backend`]); it works over the kernel and over the model.
//!
//! Teardown order in a VMM: the `IommufdSmmu` (it moves its devices back onto the stage
//! 2, then destroys nested HWPTs, vDEVICEs, the vEVENTQ and the vIOMMU), then the
//! passed-through devices (detach, unbind), then the `NestParent`, then the IOAS.
//!
//! Not here: the SMMU emulation (devices crate), the device tree (vmm).

mod nest_parent;
mod nested_hwpt;
mod probe;
mod smmu_backend;
mod vdevice;
mod veventq;
mod viommu;

pub use nest_parent::NestParent;
pub use nested_hwpt::NestedHwpt;
pub use probe::{probe_nesting, probe_nesting_cdev, NestingUnsupported};
pub use smmu_backend::{IommufdSmmu, SmmuStream};
pub use vdevice::Vdevice;
pub use veventq::Veventq;
pub use viommu::Viommu;

use crate::iommufd::IommufdError;
use crate::ram_dma::{lock, SharedIommufd};
use crate::ObjectId;

/// Which nested-translation object could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NestedStep {
    /// The `NEST_PARENT` HWPT.
    NestParent,
    /// Attaching a device to the stage 2 (or a nested HWPT).
    Attach,
    /// The vIOMMU.
    Viommu,
    /// The abort or bypass nested HWPT of the vIOMMU.
    FixedHwpt,
    /// A vDEVICE.
    Vdevice,
    /// A nested HWPT from a guest STE.
    NestedHwpt,
    /// The vEVENTQ.
    Veventq,
}

/// Errors making the nested-translation objects.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", step_text(*.step))]
pub struct NestedError {
    /// What was being made.
    pub step: NestedStep,
    /// The iommufd error (its errno is the kernel's).
    #[source]
    pub source: IommufdError,
}

impl NestedError {
    fn at(step: NestedStep) -> impl FnOnce(IommufdError) -> NestedError {
        move |source| NestedError { step, source }
    }

    /// The kernel's errno.
    pub fn errno(&self) -> i32 {
        self.source.errno()
    }
}

fn step_text(step: NestedStep) -> &'static str {
    match step {
        NestedStep::NestParent => "cannot allocate the nesting parent (stage-2) HWPT",
        NestedStep::Attach => "cannot attach the device for nested translation",
        NestedStep::Viommu => "cannot allocate the vIOMMU",
        NestedStep::FixedHwpt => "cannot allocate the vIOMMU's abort/bypass HWPT",
        NestedStep::Vdevice => "cannot allocate the vDEVICE",
        NestedStep::NestedHwpt => "cannot install the guest's stream table entry",
        NestedStep::Veventq => "cannot allocate the vEVENTQ",
    }
}

/// Destroys `id`, logging a failure (used by the `Drop`s).
fn destroy(iommufd: &SharedIommufd, id: ObjectId, what: &str) {
    if let Err(e) = lock(iommufd).destroy(id) {
        log::warn!("cannot destroy {what} {id}: {e}");
    }
}

#[cfg(test)]
mod tests;
