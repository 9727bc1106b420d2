//! `VFIO_DEVICE_RESET`, with its result.
//!
//! Missing upstream: vfio-ioctls 0.10's `VfioDevice::reset()` returns `()` and drops the
//! ioctl's result (no error, not even a log line), and it resets only if flags it keeps
//! private say so. Passthrough refuses a device whose reset failed rather than hand it to
//! the guest in an unknown state, and says so at teardown, so it needs the errno.

use std::io;
use std::os::fd::AsRawFd;

use vfio_bindings::bindings::vfio::{VFIO_BASE, VFIO_TYPE};
use vmm_sys_util::ioctl::ioctl;
use vmm_sys_util::ioctl_io_nr;

ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE as u32, VFIO_BASE + 11);

/// `VFIO_DEVICE_RESET` on `device`.
pub(super) fn reset(device: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: VFIO_DEVICE_RESET takes no argument and touches no user memory. Return checked.
    let ret = unsafe { ioctl(device, VFIO_DEVICE_RESET()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_matches_the_uapi() {
        assert_eq!(VFIO_DEVICE_RESET(), 0x3b6f);
    }

    #[test]
    fn reports_the_errno() {
        let null = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(reset(&null).unwrap_err().raw_os_error(), Some(libc::ENOTTY));
    }
}
