//! `PUT /vm.add-device {"path": "/sys/bus/pci/devices/...", "id": "optional", "iommu": false}`.

use std::path::PathBuf;

use serde::Deserialize;

use super::{check_id, json_body};
use crate::response::ApiError;

/// A request to hot-add a passthrough device.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmAddDevice {
    /// The device's sysfs directory.
    pub path: PathBuf,
    /// The id to give it; the VMM picks one when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Put it behind the guest-visible vIOMMU.
    #[serde(default)]
    pub iommu: bool,
}

impl VmAddDevice {
    /// Parses and checks the body. Whether the path is a PCI device is for the hotplug code
    /// to say; here it must at least be an absolute path.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let r: VmAddDevice = json_body("vm.add-device", body)?;
        if !r.path.is_absolute() {
            return Err(ApiError::bad_request(format!(
                "path {:?} is not absolute: give the device's sysfs directory, e.g. /sys/bus/pci/devices/0000:00:03.0",
                r.path
            )));
        }
        if let Some(id) = &r.id {
            check_id(id)?;
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_minimal_bodies() {
        let r = VmAddDevice::parse(
            br#"{"path": "/sys/bus/pci/devices/0000:00:03.0", "id": "nic", "iommu": true}"#,
        )
        .unwrap();
        assert_eq!(r.path, PathBuf::from("/sys/bus/pci/devices/0000:00:03.0"));
        assert_eq!(r.id.as_deref(), Some("nic"));
        assert!(r.iommu);
        let r = VmAddDevice::parse(br#"{"path": "/x"}"#).unwrap();
        assert_eq!(r.id, None);
        assert!(!r.iommu);
    }

    #[test]
    fn rejects_bad_bodies() {
        for body in [
            &br#"{"path": "/x", "color": 1}"#[..],
            br#"{"id": "a"}"#,
            br#"{"path": 5}"#,
            br#"{"path": "/x", "iommu": "yes"}"#,
            br#"{"path": "relative"}"#,
            br#"{"path": "/x", "id": "a b"}"#,
            br#"[1]"#,
            br#"{"path": "/x""#,
            b"",
        ] {
            let e = VmAddDevice::parse(body).unwrap_err();
            assert_eq!(e.status, 400, "{}", String::from_utf8_lossy(body));
            assert!(!e.fault_message.is_empty());
        }
    }
}
