//! The seam between the API and PCIe hotplug: what the API asks of a running VM when a
//! passthrough device is added or removed, and how a refusal is classified.
//!
//! The API thread never touches the VM: the event loop owns a [`DeviceHotplug`] and calls it
//! for `vm.add-device` / `vm.remove-device`. The classification in [`HotplugFaultKind`] maps
//! one to one onto the API's status codes, so the hotplug code decides *what* went wrong and
//! the API only decides how to say it.

use std::path::PathBuf;

/// A request to hot-add one passthrough device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddDevice {
    /// The device's sysfs directory, e.g. `/sys/bus/pci/devices/0000:00:03.0`.
    pub path: PathBuf,
    /// The id the user chose; the VMM picks one when it is `None`.
    pub id: Option<String>,
    /// Put the device behind the guest-visible vIOMMU (nested translation).
    pub iommu: bool,
}

/// A device the VM has, as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device's id, unique in the VM.
    pub id: String,
    /// Where the guest sees it, `bus:dev.fn` in hex (e.g. `01:00.0`).
    pub bdf: String,
    /// The host device's sysfs directory.
    pub path: PathBuf,
    /// Whether the device sits behind the guest-visible vIOMMU.
    pub iommu: bool,
}

/// Why a hotplug request was refused; each kind is one API status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HotplugFaultKind {
    /// The request itself is wrong (not a PCI device, a bad id): 400.
    BadRequest,
    /// No device with that id: 404.
    NotFound,
    /// The request conflicts with the VM's state: a duplicate id or path, no free slot, host
    /// IOVA ranges that collide with guest RAM already placed: 409.
    Conflict,
    /// The guest has not (yet) done its part: hotplug not enabled on the slot, or it did not
    /// power the slot on or off in time: 503.
    NotReady,
    /// Something failed that the user could not have caused: 500.
    Internal,
}

/// A refused hotplug request: its kind and a message that tells the user what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HotplugFault {
    /// How the API reports it.
    pub kind: HotplugFaultKind,
    /// One line for the user.
    pub message: String,
}

impl HotplugFault {
    /// A fault of `kind` saying `message`.
    pub fn new(kind: HotplugFaultKind, message: impl Into<String>) -> Self {
        HotplugFault {
            kind,
            message: message.into(),
        }
    }
}

/// Adds and removes passthrough devices in a running VM. Calls block until the guest has done
/// its part (slot powered on / off) or a timeout passes; a refused call leaves the VM as it was.
pub trait DeviceHotplug: Send {
    /// Hot-adds a device; answers once the guest has powered its slot on.
    fn add_device(&mut self, request: AddDevice) -> Result<DeviceInfo, HotplugFault>;
    /// Removes the device `id`; answers once the guest has released it and it is torn down.
    fn remove_device(&mut self, id: &str) -> Result<(), HotplugFault>;
    /// The passthrough devices the VM has now, cold- and hot-plugged.
    fn devices(&self) -> Vec<DeviceInfo>;
}

/// The VM has no hotplug slots (`--hotplug-slots 0`): every add is refused, and only the
/// cold-plugged devices are listed.
#[derive(Debug, Default)]
pub struct NoHotplug {
    /// The devices given with `--device` at start.
    pub cold_plugged: Vec<DeviceInfo>,
}

impl DeviceHotplug for NoHotplug {
    fn add_device(&mut self, _request: AddDevice) -> Result<DeviceInfo, HotplugFault> {
        Err(HotplugFault::new(
            HotplugFaultKind::Conflict,
            "no free hotplug slot: start the VMM with --hotplug-slots N (N > 0)",
        ))
    }

    fn remove_device(&mut self, id: &str) -> Result<(), HotplugFault> {
        if self.cold_plugged.iter().any(|d| d.id == id) {
            Err(HotplugFault::new(
                HotplugFaultKind::Conflict,
                format!("device {id} was given at start and is not on a hotplug slot: it cannot be removed"),
            ))
        } else {
            Err(HotplugFault::new(
                HotplugFaultKind::NotFound,
                format!("no device with id {id}"),
            ))
        }
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        self.cold_plugged.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_slots_adds_are_conflicts_and_removes_name_the_reason() {
        let mut h = NoHotplug {
            cold_plugged: vec![DeviceInfo {
                id: "blk0".into(),
                bdf: "00:03.0".into(),
                path: "/sys/bus/pci/devices/0000:00:03.0".into(),
                iommu: false,
            }],
        };
        let add = h.add_device(AddDevice {
            path: "/sys/bus/pci/devices/0000:00:04.0".into(),
            id: None,
            iommu: false,
        });
        assert_eq!(add.unwrap_err().kind, HotplugFaultKind::Conflict);
        assert_eq!(
            h.remove_device("blk0").unwrap_err().kind,
            HotplugFaultKind::Conflict
        );
        let missing = h.remove_device("nope").unwrap_err();
        assert_eq!(missing.kind, HotplugFaultKind::NotFound);
        assert!(missing.message.contains("nope"));
        assert_eq!(h.devices().len(), 1);
    }
}
