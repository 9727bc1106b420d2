//! [`Vdevice`]: a passed-through device's identity on a vIOMMU, its guest StreamID.

use super::{destroy, NestedError, NestedStep};
use crate::iommufd::{DevId, VdeviceId, ViommuId};
use crate::ram_dma::{lock, SharedIommufd};

/// A vDEVICE; destroyed on drop.
pub struct Vdevice {
    iommufd: SharedIommufd,
    id: VdeviceId,
    vsid: u32,
}

impl std::fmt::Debug for Vdevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vdevice")
            .field("id", &self.id)
            .field("vsid", &self.vsid)
            .finish()
    }
}

impl Vdevice {
    /// `IOMMU_VDEVICE_ALLOC`: `dev` is StreamID `vsid` to the guest (its PCI requester
    /// ID): the kernel turns that vSID into the physical one in forwarded commands and
    /// back in events.
    pub fn new(
        iommufd: SharedIommufd,
        viommu: ViommuId,
        dev: DevId,
        vsid: u32,
    ) -> Result<Vdevice, NestedError> {
        let id = lock(&iommufd)
            .alloc_vdevice(viommu, dev, u64::from(vsid))
            .map_err(NestedError::at(NestedStep::Vdevice))?;
        Ok(Vdevice { iommufd, id, vsid })
    }

    /// Its id.
    pub fn id(&self) -> VdeviceId {
        self.id
    }

    /// The guest StreamID.
    pub fn vsid(&self) -> u32 {
        self.vsid
    }
}

impl Drop for Vdevice {
    fn drop(&mut self) {
        destroy(&self.iommufd, self.id.into(), "vDEVICE");
    }
}
