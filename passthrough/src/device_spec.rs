//! `--device path=/sys/bus/pci/devices/DDDD:BB:DD.F[,id=NAME][,iommu=on|off]`: parsing
//! ([`DeviceSpec`]),
//! locating every given device's VFIO cdev ([`locate_all`]), and refusing the same device
//! (or the same id) twice, whichever path names it.
//!
//! Not here: opening or binding the devices ([`crate::PassthroughDevice`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::vfio_cdev::{locate, PciPassthroughDevice, VfioCdevError};

/// Errors of `--device` arguments.
#[derive(Debug, thiserror::Error)]
pub enum DeviceSpecError {
    /// The argument does not parse.
    #[error(
        "--device {arg:?}: {why}; write --device path=/sys/bus/pci/devices/DDDD:BB:DD.F \
         or --device path=...,id=NAME,iommu=on"
    )]
    Syntax {
        /// The argument.
        arg: String,
        /// What is wrong.
        why: String,
    },
    /// The path is not a usable PCI device.
    #[error("--device {name}: {source}")]
    Locate {
        /// The device's name.
        name: String,
        /// Why.
        source: VfioCdevError,
    },
    /// Two arguments name one device.
    #[error(
        "--device {second} is PCI device {bdf}, which --device {first} already passes \
         through: give each device once"
    )]
    Duplicate {
        /// The PCI address.
        bdf: String,
        /// The first argument naming it.
        first: String,
        /// The second.
        second: String,
    },
    /// Two arguments with one id.
    #[error("two --device options have id={id}: give each device a distinct id")]
    DuplicateId {
        /// The id.
        id: String,
    },
}

/// One `--device` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// The sysfs path of the PCI device.
    pub path: PathBuf,
    /// The user's name for it.
    pub id: Option<String>,
    /// `iommu=on`: the device sits behind the guest-visible vSMMUv3 (nested translation;
    /// aarch64 only). Default off: the device DMAs with guest physical addresses.
    pub iommu: bool,
}

impl DeviceSpec {
    /// How errors name it: the id, else the last path component (usually the address).
    pub fn name(&self) -> String {
        match &self.id {
            Some(id) => id.clone(),
            None => self
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| self.path.display().to_string()),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "path={}", self.path.display())?;
        if let Some(id) = &self.id {
            write!(f, ",id={id}")?;
        }
        if self.iommu {
            write!(f, ",iommu=on")?;
        }
        Ok(())
    }
}

impl FromStr for DeviceSpec {
    type Err = DeviceSpecError;

    fn from_str(arg: &str) -> Result<DeviceSpec, DeviceSpecError> {
        let syntax = |why: &str| DeviceSpecError::Syntax {
            arg: arg.to_string(),
            why: why.to_string(),
        };
        let mut path = None;
        let mut id = None;
        let mut iommu = None;
        for part in arg.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| syntax(&format!("{part:?} is not key=value")))?;
            if value.is_empty() {
                return Err(syntax(&format!("{key}= is empty")));
            }
            let slot = match key {
                "path" => &mut path,
                "id" => &mut id,
                "iommu" => &mut iommu,
                _ => {
                    return Err(syntax(&format!(
                        "unknown key {key:?} (known: path, id, iommu)"
                    )))
                }
            };
            if slot.replace(value.to_string()).is_some() {
                return Err(syntax(&format!("{key}= given twice")));
            }
        }
        let path = path.ok_or_else(|| syntax("path= is missing"))?;
        let iommu = match iommu.as_deref() {
            None | Some("off") => false,
            Some("on") => true,
            Some(other) => return Err(syntax(&format!("iommu={other} is neither on nor off"))),
        };
        Ok(DeviceSpec {
            path: PathBuf::from(path),
            id,
            iommu,
        })
    }
}

/// A `--device` whose VFIO cdev was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocatedDevice {
    /// How messages name it ([`DeviceSpec::name`]).
    pub name: String,
    /// The argument.
    pub spec: DeviceSpec,
    /// Its PCI address and cdev.
    pub pci: PciPassthroughDevice,
}

/// Locates every device (cdevs under `dev_root`, `/dev/vfio/devices` on a host) and
/// refuses a device or an id given twice.
pub fn locate_all(
    specs: &[DeviceSpec],
    dev_root: &Path,
) -> Result<Vec<LocatedDevice>, DeviceSpecError> {
    let mut out: Vec<LocatedDevice> = Vec::new();
    for spec in specs {
        if let Some(id) = &spec.id {
            if out.iter().any(|d| d.spec.id.as_ref() == Some(id)) {
                return Err(DeviceSpecError::DuplicateId { id: id.clone() });
            }
        }
        let name = spec.name();
        let pci = locate(&spec.path, dev_root).map_err(|source| DeviceSpecError::Locate {
            name: name.clone(),
            source,
        })?;
        if let Some(first) = out.iter().find(|d| d.pci.bdf == pci.bdf) {
            return Err(DeviceSpecError::Duplicate {
                bdf: pci.bdf,
                first: first.spec.to_string(),
                second: spec.to_string(),
            });
        }
        out.push(LocatedDevice {
            name,
            spec: spec.clone(),
            pci,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs with a PCI device `bdf` bound to `driver`, with cdev `vfioN` if
    /// vfio-pci; returns (root, device path).
    fn fake_device(tag: &str, bdf: &str, driver: &str, cdev: u32) -> (PathBuf, PathBuf) {
        let root = std::env::temp_dir().join(format!("device-spec-{}-{tag}", std::process::id()));
        let dev = root.join("devices/pci0000:00").join(bdf);
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("config"), [0u8; 64]).unwrap();
        std::fs::write(dev.join("vendor"), "0x1af4\n").unwrap();
        let drv = root.join("bus/pci/drivers").join(driver);
        std::fs::create_dir_all(&drv).unwrap();
        let _ = std::fs::remove_file(dev.join("driver"));
        std::os::unix::fs::symlink(&drv, dev.join("driver")).unwrap();
        if driver == "vfio-pci" {
            std::fs::create_dir_all(dev.join(format!("vfio-dev/vfio{cdev}"))).unwrap();
        }
        let link = root.join("bus/pci/devices");
        std::fs::create_dir_all(&link).unwrap();
        let _ = std::fs::remove_file(link.join(bdf));
        std::os::unix::fs::symlink(&dev, link.join(bdf)).unwrap();
        (root, dev)
    }

    #[test]
    fn parses_path_and_id() {
        let s: DeviceSpec = "path=/sys/bus/pci/devices/0000:00:03.0,id=nic"
            .parse()
            .unwrap();
        assert_eq!(s.path, PathBuf::from("/sys/bus/pci/devices/0000:00:03.0"));
        assert_eq!(s.name(), "nic");
        assert_eq!(
            s.to_string(),
            "path=/sys/bus/pci/devices/0000:00:03.0,id=nic"
        );
        let s: DeviceSpec = "path=/sys/bus/pci/devices/0000:00:03.0".parse().unwrap();
        assert_eq!(s.name(), "0000:00:03.0");
        assert!(!s.iommu, "iommu is off by default");
        let s: DeviceSpec = "path=/p,iommu=on".parse().unwrap();
        assert!(s.iommu);
        assert_eq!(s.to_string(), "path=/p,iommu=on");
        let s: DeviceSpec = "path=/p,iommu=off".parse().unwrap();
        assert!(!s.iommu);
        let err = "path=/p,iommu=yes".parse::<DeviceSpec>().unwrap_err();
        assert!(
            err.to_string().contains("iommu=yes is neither on nor off"),
            "{err}"
        );
        for bad in [
            "",
            "id=x",
            "path=",
            "path=/a,path=/b",
            "path=/a,foo=1",
            "/sys/x",
        ] {
            let err = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(err.to_string().contains("--device path="), "{err}");
        }
    }

    #[test]
    fn the_same_device_twice_is_refused_whatever_the_path() {
        let (root, dev) = fake_device("dup", "0000:00:03.0", "vfio-pci", 0);
        let by_bus = root.join("bus/pci/devices/0000:00:03.0");
        let specs = [
            DeviceSpec {
                path: by_bus,
                id: Some("a".into()),
                iommu: false,
            },
            DeviceSpec {
                path: dev.clone(),
                id: None,
                iommu: false,
            },
        ];
        let err = locate_all(&specs, Path::new("/dev/vfio/devices")).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, DeviceSpecError::Duplicate { .. }), "{text}");
        assert!(
            text.contains("0000:00:03.0") && text.contains("give each device once"),
            "{text}"
        );
        let specs = [
            DeviceSpec {
                path: dev.clone(),
                id: Some("a".into()),
                iommu: false,
            },
            DeviceSpec {
                path: PathBuf::from("/nope"),
                id: Some("a".into()),
                iommu: false,
            },
        ];
        assert!(matches!(
            locate_all(&specs, Path::new("/dev")).unwrap_err(),
            DeviceSpecError::DuplicateId { .. }
        ));
        let ok = locate_all(&specs[..1], Path::new("/dev/vfio/devices")).unwrap();
        assert_eq!(ok[0].pci.cdev, PathBuf::from("/dev/vfio/devices/vfio0"));
        assert_eq!(ok[0].name, "a");
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn bad_paths_name_the_device_and_the_fix() {
        let (root, dev) = fake_device("drv", "0000:00:04.0", "virtio-pci", 0);
        let spec = DeviceSpec {
            path: dev,
            id: Some("disk".into()),
            iommu: false,
        };
        let err = locate_all(&[spec], Path::new("/dev"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--device disk: PCI device 0000:00:04.0 is bound to virtio-pci"),
            "{err}"
        );
        assert!(err.contains("driver_override"), "{err}");
        let spec = DeviceSpec {
            path: PathBuf::from("/tmp"),
            id: None,
            iommu: false,
        };
        let err = locate_all(&[spec], Path::new("/dev"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a PCI device"), "{err}");
        let _ = std::fs::remove_dir_all(root);
    }
}
