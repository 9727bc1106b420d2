//! Finding a PCI device's VFIO character device from its sysfs path, and reading the IOVA
//! ranges the kernel gives an IOAS once the device is attached.
//!
//! Every failure says which device and what to do: the path is not a PCI device, the device
//! is not bound to vfio-pci, or the kernel has no VFIO cdev support.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::iommufd::{DeviceHandle, Iommufd, IommufdError};
use crate::iova::IovaRange;
use crate::memory_map::DeviceRanges;
use crate::reserved_regions::{ReservedRegionsError, Sysfs};

/// Errors locating or probing a passthrough device.
#[derive(Debug, thiserror::Error)]
pub enum VfioCdevError {
    /// Not a PCI device directory.
    #[error("{0} is not a PCI device: pass a path like /sys/bus/pci/devices/0000:00:03.0")]
    NotPci(PathBuf),
    /// Bound to another driver, or none.
    #[error("PCI device {bdf} is bound to {driver}, not vfio-pci: run `echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override`, unbind it from its driver and `echo {bdf} > /sys/bus/pci/drivers_probe`")]
    NotVfio {
        /// PCI address.
        bdf: String,
        /// Current driver.
        driver: String,
    },
    /// vfio-pci bound but no cdev.
    #[error("PCI device {0} is bound to vfio-pci but has no VFIO cdev (no vfio-dev/ in sysfs): the host kernel needs CONFIG_VFIO_DEVICE_CDEV=y")]
    NoCdev(String),
    /// The cdev could not be opened.
    #[error("cannot open {path} for PCI device {bdf}: {source}")]
    Open {
        /// The cdev.
        path: PathBuf,
        /// PCI address.
        bdf: String,
        /// Why.
        source: std::io::Error,
    },
    /// Reserved regions unreadable.
    #[error(transparent)]
    Reserved(#[from] ReservedRegionsError),
    /// An iommufd call failed.
    #[error("PCI device {bdf}: {source}")]
    Iommufd {
        /// PCI address.
        bdf: String,
        /// Why.
        source: IommufdError,
    },
}

/// A PCI device given to the VMM for passthrough, located but not yet opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciPassthroughDevice {
    /// PCI address, e.g. `0000:00:03.0`.
    pub bdf: String,
    /// Its VFIO cdev, e.g. `/dev/vfio/devices/vfio0`.
    pub cdev: PathBuf,
}

/// Locates the VFIO cdev of the PCI device at `sysfs_path` (`/sys/bus/pci/devices/BDF`,
/// or the device's real path under /sys/devices). `dev_root` is where cdev nodes live
/// (`/dev/vfio/devices` on a host).
pub fn locate(sysfs_path: &Path, dev_root: &Path) -> Result<PciPassthroughDevice, VfioCdevError> {
    let not_pci = || VfioCdevError::NotPci(sysfs_path.to_path_buf());
    let real = std::fs::canonicalize(sysfs_path).map_err(|_| not_pci())?;
    let bdf = real
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| is_bdf(n))
        .ok_or_else(not_pci)?
        .to_string();
    if !real.join("config").exists() || !real.join("vendor").exists() {
        return Err(not_pci());
    }
    let driver = std::fs::read_link(real.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "no driver".to_string());
    if driver != "vfio-pci" {
        return Err(VfioCdevError::NotVfio { bdf, driver });
    }
    let name = std::fs::read_dir(real.join("vfio-dev"))
        .ok()
        .and_then(|mut d| d.find_map(|e| e.ok()))
        .map(|e| e.file_name())
        .ok_or_else(|| VfioCdevError::NoCdev(bdf.clone()))?;
    Ok(PciPassthroughDevice {
        bdf,
        cdev: dev_root.join(name),
    })
}

/// `DDDD:BB:DD.F`
fn is_bdf(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && s.chars()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

/// What the host says about `dev`: the IOVA ranges of a fresh IOAS with the device attached
/// (read from the kernel) and its reserved regions (sysfs). The device is detached and
/// unbound again before returning, whether or not a step failed.
pub fn probe_ranges(
    iommufd: &mut dyn Iommufd,
    sysfs: &Sysfs,
    dev: &PciPassthroughDevice,
) -> Result<DeviceRanges, VfioCdevError> {
    let bdf = dev.bdf.clone();
    let reserved = sysfs.pci_reserved_regions(&dev.bdf)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev.cdev)
        .map_err(|source| VfioCdevError::Open {
            path: dev.cdev.clone(),
            bdf: bdf.clone(),
            source,
        })?;
    Ok(DeviceRanges {
        name: Arc::from(dev.bdf.as_str()),
        iova_ranges: Some(probe_iova_ranges(
            iommufd,
            &bdf,
            DeviceHandle::VfioCdev(file.into()),
        )?),
        reserved,
    })
}

/// The IOVA ranges of a fresh IOAS with `device` bound and attached. The device is
/// detached and unbound, and the IOAS destroyed, before returning, whether or not a step
/// failed. (The part of [`probe_ranges`] that talks to the iommufd; the model backend's
/// fault-injection tests drive it with a model device.)
pub fn probe_iova_ranges(
    iommufd: &mut dyn Iommufd,
    bdf: &str,
    device: DeviceHandle,
) -> Result<Vec<IovaRange>, VfioCdevError> {
    let err = |source| VfioCdevError::Iommufd {
        bdf: bdf.to_string(),
        source,
    };
    let ioas = iommufd.alloc_ioas().map_err(err)?;
    let result = (|| {
        let devid = iommufd.bind_device(device).map_err(err)?;
        let ranges = iommufd
            .attach_device(devid, ioas.into())
            .and_then(|_| iommufd.iova_ranges(ioas));
        let _ = iommufd.detach_device(devid);
        let _ = iommufd.unbind_device(devid);
        ranges.map_err(err)
    })();
    let _ = iommufd.destroy(ioas.into());
    Ok(result?.ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sysfs(driver: Option<&str>, cdev: bool) -> (PathBuf, PathBuf) {
        let root = std::env::temp_dir().join(format!(
            "vfio-cdev-test-{}-{:?}-{}",
            std::process::id(),
            driver,
            cdev
        ));
        let _ = std::fs::remove_dir_all(&root);
        let dev = root.join("devices/pci0000:00/0000:00:03.0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("config"), [0u8; 64]).unwrap();
        std::fs::write(dev.join("vendor"), "0x1af4\n").unwrap();
        if let Some(d) = driver {
            let drv = root.join("bus/pci/drivers").join(d);
            std::fs::create_dir_all(&drv).unwrap();
            std::os::unix::fs::symlink(&drv, dev.join("driver")).unwrap();
        }
        if cdev {
            std::fs::create_dir_all(dev.join("vfio-dev/vfio3")).unwrap();
        }
        (root, dev)
    }

    #[test]
    fn finds_the_cdev_of_a_vfio_bound_device() {
        let (root, dev) = fake_sysfs(Some("vfio-pci"), true);
        let d = locate(&dev, Path::new("/dev/vfio/devices")).unwrap();
        assert_eq!(d.bdf, "0000:00:03.0");
        assert_eq!(d.cdev, PathBuf::from("/dev/vfio/devices/vfio3"));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn explains_what_is_wrong() {
        let (root, dev) = fake_sysfs(Some("virtio-pci"), false);
        let e = locate(&dev, Path::new("/dev")).unwrap_err();
        assert!(
            e.to_string().contains("bound to virtio-pci, not vfio-pci"),
            "{e}"
        );
        assert!(e.to_string().contains("driver_override"), "{e}");
        let _ = std::fs::remove_dir_all(root);

        let (root, dev) = fake_sysfs(None, false);
        let e = locate(&dev, Path::new("/dev")).unwrap_err();
        assert!(e.to_string().contains("bound to no driver"), "{e}");
        let _ = std::fs::remove_dir_all(root);

        let (root, dev) = fake_sysfs(Some("vfio-pci"), false);
        let e = locate(&dev, Path::new("/dev")).unwrap_err();
        assert!(e.to_string().contains("CONFIG_VFIO_DEVICE_CDEV"), "{e}");
        let _ = std::fs::remove_dir_all(root);

        let e = locate(Path::new("/nonexistent/0000:00:01.0"), Path::new("/dev")).unwrap_err();
        assert!(matches!(e, VfioCdevError::NotPci(_)));
        let e = locate(Path::new("/tmp"), Path::new("/dev")).unwrap_err();
        assert!(matches!(e, VfioCdevError::NotPci(_)));
    }

    #[test]
    fn bdf_shape() {
        assert!(is_bdf("0000:00:03.0"));
        assert!(is_bdf("0001:af:1f.7"));
        assert!(!is_bdf("00:03.0"));
        assert!(!is_bdf("0000:00:03:0"));
        assert!(!is_bdf("000g:00:03.0"));
    }
}
