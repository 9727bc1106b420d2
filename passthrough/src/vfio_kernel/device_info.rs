//! `VFIO_DEVICE_GET_INFO`, for its answer.
//!
//! Missing upstream: vfio-ioctls 0.10 asks `VFIO_DEVICE_GET_INFO` when
//! `VfioDevice::new_from_bound_fd` wraps the fd (and checks the device type with it), but
//! keeps the answer private: there is no getter for the flags, `num_regions` or `num_irqs`,
//! and its `reset()` is gated on those private flags. Passthrough needs
//! `VFIO_DEVICE_FLAGS_RESET` to decide whether to reset the device and to say when it
//! cannot, so the kernel backend asks once more, with vfio-bindings' struct.

use std::io;
use std::os::fd::AsRawFd;

use vfio_bindings::bindings::vfio::{vfio_device_info, VFIO_BASE, VFIO_TYPE};
use vmm_sys_util::ioctl::ioctl_with_mut_ref;
use vmm_sys_util::ioctl_io_nr;

ioctl_io_nr!(VFIO_DEVICE_GET_INFO, VFIO_TYPE as u32, VFIO_BASE + 7);

/// `VFIO_DEVICE_GET_INFO` on `device`.
pub(super) fn device_info(device: &impl AsRawFd) -> io::Result<vfio_device_info> {
    let mut info = vfio_device_info {
        // A few dozen bytes.
        argsz: std::mem::size_of::<vfio_device_info>() as u32,
        ..Default::default()
    };
    // SAFETY: `info` is a valid, initialised struct vfio_device_info whose `argsz` is its
    // own size; the kernel writes at most `argsz` bytes into it (capabilities only follow
    // the struct when `argsz` leaves room for them, which it does not). Return checked.
    let ret = unsafe { ioctl_with_mut_ref(device, VFIO_DEVICE_GET_INFO(), &mut info) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_and_size_match_the_uapi() {
        assert_eq!(VFIO_DEVICE_GET_INFO(), 0x3b6b);
        assert_eq!(std::mem::size_of::<vfio_device_info>(), 24);
    }

    // A file that is no VFIO device refuses the ioctl with ENOTTY, which must come back.
    #[test]
    fn reports_the_errno() {
        let null = std::fs::File::open("/dev/null").unwrap();
        let err = device_info(&null).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
    }
}
