//! What the API answers: the JSON bodies of successful requests, and faults.
//!
//! Every error is `{"fault_message": "..."}` with a 4xx/5xx status; success without a body
//! is 204. The types deserialize too, for `vmm-remote` and the tests.

use serde::{Deserialize, Serialize};

/// A refused request: the status code and one line for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{fault_message} (HTTP {status})")]
pub struct ApiError {
    /// 4xx for the caller's mistakes, 5xx for ours or a VM not ready.
    pub status: u16,
    /// What went wrong and what to do.
    pub fault_message: String,
}

impl ApiError {
    /// A fault with `status` saying `message`.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError {
            status,
            fault_message: message.into(),
        }
    }

    /// 400: the request is wrong.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    /// 409: the request conflicts with the VM's state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, message)
    }

    /// The JSON body: `{"fault_message": "..."}`.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&Fault {
            fault_message: self.fault_message.clone(),
        })
        .unwrap_or_else(|_| b"{\"fault_message\":\"internal error\"}".to_vec())
    }
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// What went wrong.
    pub fault_message: String,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiReply {
    /// 204, no body.
    NoContent,
    /// 200 with this JSON body.
    Json(Vec<u8>),
}

impl ApiReply {
    /// 200 with `value` as JSON.
    pub fn json<T: Serialize>(value: &T) -> Result<ApiReply, ApiError> {
        serde_json::to_vec(value)
            .map(ApiReply::Json)
            .map_err(|e| ApiError::new(500, format!("cannot encode the answer: {e}")))
    }
}

/// What a request handler returns.
pub type ApiResult = Result<ApiReply, ApiError>;

/// `GET /vmm.ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmmPing {
    /// The VMM's version.
    pub version: String,
    /// The VMM's process id.
    pub pid: u32,
    /// What this VMM can do.
    pub features: Vec<String>,
}

/// Whether the vCPUs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// The vCPUs run.
    Running,
    /// The vCPUs are stopped by `vm.pause`.
    Paused,
}

/// `GET /vm.info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmInfo {
    /// Running or paused.
    pub state: VmState,
    /// What the VM was started with.
    pub config: VmConfigInfo,
    /// The passed-through devices, cold- and hot-plugged.
    pub devices: Vec<DeviceEntry>,
    /// Where guest RAM is and what it avoids.
    pub memory_map: MemoryMapInfo,
}

/// The VM's configuration as given at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfigInfo {
    /// The kernel image.
    pub kernel: String,
    /// The initrd, if any.
    pub initrd: Option<String>,
    /// The kernel command line.
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// RAM backing: `anonymous` or `memfd`.
    pub memory_backend: String,
    /// Whether RAM is on 2 MiB hugetlb pages.
    pub hugepages: bool,
    /// virtio-blk disks.
    pub disks: Vec<DiskEntry>,
    /// Whether there is a virtio-rng.
    pub rng: bool,
    /// PCIe root ports with a hot-plug slot each.
    pub hotplug_slots: u8,
}

/// One virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskEntry {
    /// The image file.
    pub path: String,
    /// Whether the guest may not write.
    pub readonly: bool,
}

/// One passed-through device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEntry {
    /// Its id, unique in the VM.
    pub id: String,
    /// Where the guest sees it (`bus:dev.fn`).
    pub bdf: String,
    /// The host device's sysfs directory.
    pub path: String,
    /// Whether it sits behind the vIOMMU.
    pub iommu: bool,
}

/// Guest RAM placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryMapInfo {
    /// Page size RAM is planned in.
    pub page_size: u64,
    /// Guest RAM regions.
    pub regions: Vec<RamRegionInfo>,
    /// Ranges kept out of guest RAM, and why (arch windows, host reserved/MSI ranges).
    pub excluded: Vec<ExcludedRangeInfo>,
    /// How much of the RAM 2 MiB and 1 GiB pages can map.
    pub coverage: CoverageInfo,
}

/// One guest RAM region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RamRegionInfo {
    /// Guest physical start, `0x`-hex.
    pub gpa: String,
    /// Bytes.
    pub size: u64,
}

/// A range guest RAM avoids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExcludedRangeInfo {
    /// First address, `0x`-hex.
    pub first: String,
    /// Last address (inclusive), `0x`-hex.
    pub last: String,
    /// Why.
    pub reason: String,
}

/// Huge page coverage of guest RAM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoverageInfo {
    /// All RAM bytes.
    pub total: u64,
    /// Bytes in 2 MiB-aligned 2 MiB blocks.
    pub bytes_2m: u64,
    /// Bytes in 1 GiB-aligned 1 GiB blocks.
    pub bytes_1g: u64,
}

/// `PUT /vm.add-device`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceAdded {
    /// The device's id.
    pub id: String,
    /// Where the guest sees it.
    pub bdf: String,
}
