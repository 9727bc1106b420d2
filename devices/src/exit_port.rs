//! The debug exit port test kernels use to end the VM with a status.
//!
//! Compatible with QEMU's `isa-debug-exit` as configured by most test
//! kernels (`iobase=0xf4,iosize=0x04`): a 32-bit write of `code` to port
//! 0xf4 ends the VM with status `(code << 1) | 1`. The status is always odd,
//! so a test harness can tell it apart from a normal exit (0).
//!
//! What this module does not do: it does not truncate the status. The VMM
//! passes it to `std::process::exit`, where the shell sees `status & 0xff`.
//! Writes of other widths, and all reads, have no effect.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::ExitEvent;

/// Port the exit device is usually registered at on the port-I/O bus.
pub const EXIT_PORT_BASE: u64 = 0xf4;
/// Length of the exit device's port range.
pub const EXIT_PORT_LEN: u64 = 4;

/// The exit port device.
#[derive(Debug)]
pub struct ExitPort {
    exit: Arc<ExitEvent>,
}

impl ExitPort {
    /// Creates an exit port that requests exits through `exit`.
    pub fn new(exit: Arc<ExitEvent>) -> Self {
        Self { exit }
    }

    /// The VM exit status for a written `code`: `(code << 1) | 1`, with the
    /// top bit of `code` shifted out rather than overflowing.
    pub fn status_for(code: u32) -> i32 {
        // Reinterpreting the u32 bits as i32 is intended: only the low
        // 8 bits survive as a process exit status anyway.
        ((code << 1) | 1) as i32
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, <[u8; 4]>::try_from(data)) {
            (0, Ok(bytes)) => {
                let code = u32::from_le_bytes(bytes);
                let status = Self::status_for(code);
                log::info!("guest wrote {code:#x} to the exit port: exiting with status {status}");
                self.exit.request(status);
            }
            _ => log::debug!(
                "ignoring {}-byte write at offset {offset} of the exit port: only 4-byte writes \
                 at offset 0 end the VM",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port() -> (ExitPort, Arc<ExitEvent>) {
        let exit = Arc::new(ExitEvent::new().unwrap());
        (ExitPort::new(exit.clone()), exit)
    }

    #[test]
    fn dword_write_requests_exit() {
        let (mut port, exit) = port();
        port.write(0, &0x10u32.to_le_bytes());
        assert_eq!(exit.status(), Some(0x21));
        assert_eq!(exit.eventfd().read().unwrap(), 1);
    }

    #[test]
    fn zero_code_is_status_one() {
        let (mut port, exit) = port();
        port.write(0, &[0, 0, 0, 0]);
        assert_eq!(exit.status(), Some(1));
    }

    #[test]
    fn large_codes_do_not_overflow() {
        assert_eq!(ExitPort::status_for(u32::MAX), -1);
        assert_eq!(ExitPort::status_for(0x8000_0000), 1);
        assert_eq!(ExitPort::status_for(0x7fff_ffff), -1);
        let (mut port, exit) = port();
        port.write(0, &u32::MAX.to_le_bytes());
        assert_eq!(exit.status(), Some(-1));
    }

    #[test]
    fn other_widths_and_offsets_are_ignored() {
        let (mut port, exit) = port();
        port.write(0, &[1]);
        port.write(0, &[1, 0]);
        port.write(0, &[1, 0, 0, 0, 0, 0, 0, 0]);
        port.write(1, &[1, 0, 0, 0]);
        port.write(0, &[]);
        assert_eq!(exit.status(), None);
    }

    #[test]
    fn reads_return_zero() {
        let (mut port, exit) = port();
        let mut data = [0xffu8; 4];
        port.read(0, &mut data);
        assert_eq!(data, [0; 4]);
        assert_eq!(exit.status(), None);
    }
}
