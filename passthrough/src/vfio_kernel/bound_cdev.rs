//! Wrapping a VFIO cdev that is already bound (through our [`crate::Iommufd`]) in
//! vfio-ioctls' `VfioDevice`.
//!
//! Missing upstream: `VfioDevice::new_from_bound_fd` skips the bind but still wants an
//! `Arc<VfioIommufd>`, and `VfioIommufd::new` always allocates an IOAS (`IommufdIoas` cannot
//! wrap an existing one) on an `IommuFd` that owns its fd. With `attach_ioas = false` the
//! device never uses either: its `Drop` only downcasts to learn it is a cdev (and then
//! detaches it and closes its fd). So each device gets a private iommufd holding one unused
//! IOAS, released with the device, rather than a handle on the VM's iommufd: the VM's
//! objects, their ids and the iommufd's lifetime stay the [`crate::Iommufd`] backend's alone.

use std::fs::File;
use std::sync::Arc;

use iommufd_ioctls::IommuFd;
use vfio_ioctls::{VfioDevice, VfioError, VfioIommufd};

/// vfio-ioctls' device over `cdev`, a clone of a bound VFIO cdev, which it then owns (it
/// closes it on drop, or here if wrapping fails). Opens `/dev/iommu` for its private
/// iommufd.
pub(super) fn wrap(cdev: File) -> vfio_ioctls::Result<VfioDevice> {
    let iommufd = IommuFd::new().map_err(VfioError::NewVfioIommufd)?;
    let unused = VfioIommufd::new(Arc::new(iommufd), None, None)?;
    VfioDevice::new_from_bound_fd(cdev, Arc::new(unused), false)
}
