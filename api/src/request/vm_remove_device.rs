//! `PUT /vm.remove-device {"id": "..."}`.

use serde::Deserialize;

use super::{check_id, json_body};
use crate::response::ApiError;

/// A request to remove a hot-plugged device.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRemoveDevice {
    /// The device's id.
    pub id: String,
}

impl VmRemoveDevice {
    /// Parses and checks the body.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let r: VmRemoveDevice = json_body("vm.remove-device", body)?;
        check_id(&r.id)?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(
            VmRemoveDevice::parse(br#"{"id": "nic0"}"#).unwrap().id,
            "nic0"
        );
        for body in [
            &br#"{}"#[..],
            br#"{"id": 3}"#,
            br#"{"id": ""}"#,
            br#"{"id": "a", "force": true}"#,
            br#"null"#,
        ] {
            assert_eq!(VmRemoveDevice::parse(body).unwrap_err().status, 400);
        }
    }
}
