//! Whether the host can nest a device's translation for a guest-visible vSMMUv3, checked
//! before the VM is built so that `iommu=on` fails early with one error naming what the
//! host lacks: the IOMMU type and capabilities (`IOMMU_GET_HW_INFO`), the SMMU's stage 1
//! and stage 2, or the errno of `IOMMU_HWPT_ALLOC(NEST_PARENT)` / `IOMMU_VIOMMU_ALLOC`.
//! Every object the probe makes is destroyed again.

use std::path::PathBuf;

use devices::smmuv3::HostSmmuInfo;

use crate::iommufd::{DevId, DeviceHandle, HwInfoType, HwptFlags, Iommufd, IommufdError};
use crate::vfio_cdev::PciPassthroughDevice;

/// Why the host cannot nest the device.
#[derive(Debug, thiserror::Error)]
pub enum NestingUnsupported {
    /// The cdev could not be opened.
    #[error("cannot open {}: {source}", .path.display())]
    Open {
        /// The cdev.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Binding failed.
    #[error("{0}")]
    Bind(IommufdError),
    /// `IOMMU_GET_HW_INFO` failed.
    #[error("{0}")]
    HwInfo(IommufdError),
    /// The IOMMU is not an SMMUv3.
    #[error(
        "the host IOMMU is {kind} (IOMMU_GET_HW_INFO type {}, capabilities {capabilities:#x}); \
         iommu=on needs an ARM SMMUv3 with nesting",
        .kind.0
    )]
    NotSmmuv3 {
        /// What it is.
        kind: HwInfoType,
        /// `out_capabilities`.
        capabilities: u64,
    },
    /// The SMMU lacks a stage.
    #[error("{why} (IDR0 {idr0:#010x})")]
    Smmu {
        /// What is missing.
        why: &'static str,
        /// The host's IDR0.
        idr0: u32,
    },
    /// No nesting parent.
    #[error("{0}")]
    NestParent(IommufdError),
    /// No vIOMMU.
    #[error("{0}")]
    Viommu(IommufdError),
}

/// Checks `dev` (bound to `iommufd`) can be nested: an ARM SMMUv3 with both stages, a
/// `NEST_PARENT` HWPT and a vIOMMU on it. Returns the host SMMU's ID registers.
pub fn probe_nesting(
    iommufd: &mut dyn Iommufd,
    dev: DevId,
) -> Result<HostSmmuInfo, NestingUnsupported> {
    let info = iommufd.hw_info(dev).map_err(NestingUnsupported::HwInfo)?;
    let not_smmu = || NestingUnsupported::NotSmmuv3 {
        kind: info.kind,
        capabilities: info.capabilities,
    };
    if info.kind != HwInfoType::ARM_SMMUV3 {
        return Err(not_smmu());
    }
    let smmu = HostSmmuInfo::from_hw_info_data(&info.data).ok_or_else(not_smmu)?;
    if let Some(why) = smmu.unsuitable() {
        return Err(NestingUnsupported::Smmu {
            why,
            idr0: smmu.idr[0],
        });
    }
    let ioas = iommufd
        .alloc_ioas()
        .map_err(NestingUnsupported::NestParent)?;
    let result = (|| {
        let parent = iommufd
            .alloc_hwpt(dev, ioas.into(), HwptFlags::NEST_PARENT)
            .map_err(NestingUnsupported::NestParent)?;
        let viommu = iommufd
            .alloc_viommu(dev, parent)
            .map_err(NestingUnsupported::Viommu);
        if let Ok(v) = &viommu {
            let _ = iommufd.destroy((*v).into());
        }
        let _ = iommufd.destroy(parent.into());
        viommu.map(|_| smmu)
    })();
    let _ = iommufd.destroy(ioas.into());
    result
}

/// [`probe_nesting`] for a located device: opens its cdev, binds it, probes, unbinds.
pub fn probe_nesting_cdev(
    iommufd: &mut dyn Iommufd,
    dev: &PciPassthroughDevice,
) -> Result<HostSmmuInfo, NestingUnsupported> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev.cdev)
        .map_err(|source| NestingUnsupported::Open {
            path: dev.cdev.clone(),
            source,
        })?;
    let id = iommufd
        .bind_device(DeviceHandle::VfioCdev(file.into()))
        .map_err(NestingUnsupported::Bind)?;
    let result = probe_nesting(iommufd, id);
    let _ = iommufd.unbind_device(id);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelDevice, ModelIommufd};

    fn bound(d: ModelDevice) -> (ModelIommufd, DevId) {
        let mut m = ModelIommufd::with_page_size(4096);
        let dev = m.bind_device(DeviceHandle::Model(d)).unwrap();
        (m, dev)
    }

    #[test]
    fn the_aarch64_rig_device_nests_and_nothing_is_left() {
        let (mut m, dev) = bound(ModelDevice::arm_smmuv3());
        let info = probe_nesting(&mut m, dev).unwrap();
        assert_eq!(info.idr[0], crate::model::SMMUV3_RIG_IDR[0]);
        assert_eq!(m.object_ids(), vec![dev.into()]);
    }

    #[test]
    fn each_missing_piece_is_named() {
        let (mut m, dev) = bound(ModelDevice::x86_vtd());
        let err = probe_nesting(&mut m, dev).unwrap_err().to_string();
        assert!(
            err.contains("Intel VT-d") && err.contains("type 1"),
            "{err}"
        );

        let mut no_s2 = ModelDevice::arm_smmuv3();
        let mut idr = crate::model::SMMUV3_RIG_IDR;
        idr[0] &= !1;
        no_s2.hw_info.data = crate::model::smmuv3_hw_info_data(&idr, 0, 0);
        let (mut m, dev) = bound(no_s2);
        let err = probe_nesting(&mut m, dev).unwrap_err().to_string();
        assert!(err.contains("no stage 2"), "{err}");

        let mut no_parent = ModelDevice::arm_smmuv3();
        no_parent.nesting = false;
        let (mut m, dev) = bound(no_parent);
        let err = probe_nesting(&mut m, dev).unwrap_err();
        assert!(matches!(err, NestingUnsupported::NestParent(_)));
        assert!(err.to_string().contains("EOPNOTSUPP"), "{err}");

        let mut incoherent = ModelDevice::arm_smmuv3();
        incoherent.viommu = false;
        let (mut m, dev) = bound(incoherent);
        let err = probe_nesting(&mut m, dev).unwrap_err();
        assert!(matches!(err, NestingUnsupported::Viommu(_)));
        let text = err.to_string();
        assert!(
            text.contains("IOMMU_VIOMMU_ALLOC") && text.contains("S2FWB"),
            "{text}"
        );
        assert_eq!(m.object_ids(), vec![dev.into()], "the probe cleaned up");
    }
}
