//! Reads and writes of a device region that report failure.
//!
//! Missing upstream: vfio-ioctls 0.10's `VfioDevice::region_read` and `region_write` return
//! `()`: an access outside the region or a failed `pread`/`pwrite` is only logged (a warning
//! per access) and the buffer is left as it was. Passthrough needs the error: setup fails on
//! an unreadable config space, and a trapped guest read that fails returns all-ones. The
//! same `pread64`/`pwrite64` at the same file offsets (from the region table vfio-ioctls
//! read when it opened the device), on our fd of the same open file; no `unsafe` here.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::vfio_device::{RegionFlags, Result, VfioDeviceError, VfioOp};

/// Where a region sits in the device fd, as vfio-ioctls read it from the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Region {
    /// File offset of the region's first byte.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: RegionFlags,
}

impl Region {
    /// The file offset of `offset..offset+len` in the region, bounds-checked.
    pub(super) fn file_offset(&self, op: VfioOp, offset: u64, len: u64) -> Result<u64> {
        let out = VfioDeviceError::OutOfRange {
            op,
            size: self.size,
        };
        let inside = offset.checked_add(len).is_some_and(|end| end <= self.size);
        if !inside {
            return Err(out);
        }
        self.offset.checked_add(offset).ok_or(out)
    }
}

/// Reads `data.len()` bytes at `offset` of `region` (`op` names the access in errors).
pub(super) fn read(
    file: &File,
    region: Region,
    op: VfioOp,
    offset: u64,
    data: &mut [u8],
) -> Result<()> {
    let at = region.file_offset(op, offset, data.len() as u64)?;
    file.read_exact_at(data, at)
        .map_err(|source| VfioDeviceError::Failed { op, source })
}

/// Writes `data` at `offset` of `region`.
pub(super) fn write(
    file: &File,
    region: Region,
    op: VfioOp,
    offset: u64,
    data: &[u8],
) -> Result<()> {
    let at = region.file_offset(op, offset, data.len() as u64)?;
    file.write_all_at(data, at)
        .map_err(|source| VfioDeviceError::Failed { op, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(len: usize) -> VfioOp {
        VfioOp::Read {
            index: 7,
            offset: 0,
            len,
        }
    }

    #[test]
    fn accesses_stay_inside_the_region() {
        let r = Region {
            offset: 7 << 40,
            size: 0x100,
            flags: RegionFlags::READ,
        };
        assert_eq!(r.file_offset(op(4), 0xfc, 4).unwrap(), (7 << 40) + 0xfc);
        assert!(matches!(
            r.file_offset(op(4), 0xfd, 4),
            Err(VfioDeviceError::OutOfRange { size: 0x100, .. })
        ));
        assert!(r.file_offset(op(1), u64::MAX, 1).is_err());
        let high = Region {
            offset: u64::MAX,
            ..r
        };
        assert!(high.file_offset(op(1), 1, 1).is_err());
    }

    #[test]
    fn failures_come_back() {
        // /dev/zero reads zeros anywhere; a write-only view of it cannot be read.
        let zero = File::open("/dev/zero").unwrap();
        let r = Region {
            offset: 0x1000,
            size: 0x100,
            flags: RegionFlags::READ,
        };
        let mut buf = [0xffu8; 4];
        read(&zero, r, op(4), 0, &mut buf).unwrap();
        assert_eq!(buf, [0; 4]);
        let err = write(&zero, r, op(4), 0, &buf).unwrap_err();
        assert!(matches!(err, VfioDeviceError::Failed { .. }), "{err}");
        let wo = File::options().write(true).open("/dev/null").unwrap();
        assert!(read(&wo, r, op(4), 0, &mut buf).is_err());
        assert!(matches!(
            read(&zero, r, op(4), 0xfe, &mut buf),
            Err(VfioDeviceError::OutOfRange { .. })
        ));
    }
}
