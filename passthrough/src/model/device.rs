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
    /// Whether `IOMMU_VIOMMU_ALLOC` (ARM SMMUv3) is supported: the SMMU nests and its
    /// stage 2 is coherent (S2FWB or CANWBS); without, `EOPNOTSUPP`.
    pub viommu: bool,
    /// Which physical IOMMU instance the device sits behind (a vIOMMU serves one).
    pub iommu_instance: u32,
    /// The device's physical StreamID (what the kernel puts in place of the vSID).
    pub stream_id: u32,
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
            viommu: false,
            iommu_instance: 0,
            stream_id: 0,
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
        d.hw_info.data = smmuv3_hw_info_data(&SMMUV3_RIG_IDR, 0x0000_043b, 0);
        d.nesting = true;
        d.viommu = true;
        d.stream_id = 0x10;
        d
    }

    /// A device whose aperture is a 32-bit DMA mask (for planner and attach tests).
    pub fn dma32(name: impl Into<String>) -> Self {
        ModelDevice::new(name, Vec::new(), range(0, 4 * GIB - 1))
    }
}

/// IDR0..5 as QEMU's virt SMMUv3 (stage "nested") reports them in the aarch64 rig:
/// IDR0 S1P, S2P, TTF=AArch64, COHACC, BTM, ASID16, VMID16, MSI, 2-level stream table,
/// TTENDIAN=little, STALL_MODEL=stall not supported, TERM_MODEL, CD2L; IDR1 SIDSIZE=16,
/// SSIDSIZE=16, EVENTQS=CMDQS=19; IDR3 RIL; IDR5 OAS=44 bits, 4K and 64K granules.
pub const SMMUV3_RIG_IDR: [u32; 6] = [
    (1 << 1)
        | 1
        | (2 << 2)
        | (1 << 4)
        | (1 << 5)
        | (1 << 12)
        | (1 << 13)
        | (1 << 18)
        | (1 << 19)
        | (1 << 27)
        | (2 << 21)
        | (1 << 24)
        | (1 << 26),
    16 | (16 << 6) | (19 << 16) | (19 << 21),
    0,
    1 << 10,
    0,
    4 | (1 << 4) | (1 << 6),
];

/// `struct iommu_hw_info_arm_smmuv3` bytes: flags, `__reserved`, idr[6], iidr, aidr.
pub fn smmuv3_hw_info_data(idr: &[u32; 6], iidr: u32, aidr: u32) -> Vec<u8> {
    let mut data = vec![0u8; 8];
    for word in idr.iter().chain([&iidr, &aidr]) {
        data.extend_from_slice(&word.to_le_bytes());
    }
    data
}

fn range(start: u64, last: u64) -> IovaRange {
    // Only called with constant, ordered bounds.
    IovaRange::new(start, last).unwrap_or(IovaRange::FULL)
}
