//! [`ModelDevice`]: what the model needs to know about a simulated passed-through device,
//! i.e. what the kernel would learn from its IOMMU driver: reserved regions, the domain
//! aperture, the smallest IOMMU page and what `IOMMU_GET_HW_INFO` says.

use crate::iommufd::{HwInfo, HwInfoType};
use crate::iova::IovaRange;

const GIB: u64 = 1 << 30;

/// A simulated device for [`super::ModelIommufd`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelDevice {
    /// Name for messages (e.g. a PCI address).
    pub name: String,
    /// IOVA the IOMMU will not translate for this device (its group's reserved regions
    /// that iommufd enforces, e.g. the MSI window); reserved in an IOAS while attached.
    pub reserved: Vec<IovaRange>,
    /// IOVA its IOMMU domains can translate (`domain->geometry`); the outside is
    /// reserved while a HWPT made for it exists.
    pub aperture: IovaRange,
    /// Smallest IOMMU page size (lowest bit of the domain's `pgsize_bitmap`).
    pub page_size: u64,
    /// What `IOMMU_GET_HW_INFO` reports.
    pub hw_info: HwInfo,
    /// Whether `IOMMU_HWPT_ALLOC_NEST_PARENT` is supported.
    pub nesting: bool,
    /// Whether `IOMMU_HWPT_ALLOC_DIRTY_TRACKING` is supported.
    pub dirty_tracking: bool,
}

impl ModelDevice {
    /// A device with the given reserved regions and aperture, 4 KiB IOMMU pages, no
    /// hardware info, no nesting, no dirty tracking.
    pub fn new(name: impl Into<String>, reserved: Vec<IovaRange>, aperture: IovaRange) -> Self {
        ModelDevice {
            name: name.into(),
            reserved,
            aperture,
            page_size: 4096,
            hw_info: HwInfo {
                kind: HwInfoType::NONE,
                capabilities: 0,
                max_pasid_log2: 0,
                data: Vec::new(),
            },
            nesting: false,
            dirty_tracking: false,
        }
    }

    /// The x86 rig's devices (QEMU q35 + intel-iommu): MSI window 0xfee00000-0xfeefffff,
    /// 48-bit aperture, VT-d without nesting.
    pub fn x86_vtd() -> Self {
        let mut d = ModelDevice::new(
            "0000:00:03.0",
            vec![range(0xfee0_0000, 0xfeef_ffff)],
            range(0, (1 << 48) - 1),
        );
        d.hw_info.kind = HwInfoType::INTEL_VTD;
        // struct iommu_hw_info_vtd: flags, __reserved, cap_reg, ecap_reg.
        d.hw_info.data = vec![0; 24];
        d
    }

    /// The aarch64 rig's devices (QEMU virt + SMMUv3): software MSI window
    /// 0x08000000-0x080fffff, 48-bit aperture, SMMUv3 with nesting.
    pub fn arm_smmuv3() -> Self {
        let mut d = ModelDevice::new(
            "0000:00:02.0",
            vec![range(0x0800_0000, 0x080f_ffff)],
            range(0, (1 << 48) - 1),
        );
        d.hw_info.kind = HwInfoType::ARM_SMMUV3;
        // struct iommu_hw_info_arm_smmuv3: flags, __reserved, idr[6], iidr, aidr.
        d.hw_info.data = vec![0; 40];
        d.nesting = true;
        d
    }

    /// A device whose aperture is a 32-bit DMA mask (for planner and attach tests).
    pub fn dma32(name: impl Into<String>) -> Self {
        ModelDevice::new(name, Vec::new(), range(0, 4 * GIB - 1))
    }
}

fn range(start: u64, last: u64) -> IovaRange {
    // Only called with constant, ordered bounds.
    IovaRange::new(start, last).unwrap_or(IovaRange::FULL)
}
