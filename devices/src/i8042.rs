//! A minimal i8042 keyboard controller: only the CPU reset line.
//!
//! Registered as one device over ports 0x60..=0x64 (base 0x60, length 5),
//! like a PC chipset decodes it: offset 0 is the data port (0x60) and
//! offset 4 the status/command port (0x64). Writing command 0xFE (pulse
//! the reset line) to 0x64 ends the VM with status 0; Linux uses it to
//! reboot (always with `reboot=k`, otherwise as a fallback).
//!
//! What this module does not do: there is no keyboard, no mouse, no command
//! byte and no output buffer. The status register always reads 0 (both
//! buffers empty), so a guest driver finds nothing to read and gives up
//! probing. Offsets 1..=3 (ports 0x61..=0x63, including the system control
//! port B) read 0 and ignore writes; if the VMM creates KVM's in-kernel PIT,
//! KVM handles port 0x61 itself and those accesses never reach this device.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::ExitEvent;

/// Base port of the i8042 range on the port-I/O bus.
pub const I8042_PORT_BASE: u64 = 0x60;
/// Length of the i8042 range (ports 0x60..=0x64).
pub const I8042_PORT_LEN: u64 = 5;

/// Offset of the data port (0x60) inside the range.
const DATA_OFFSET: u64 = 0;
/// Offset of the status (read) / command (write) port (0x64).
const COMMAND_OFFSET: u64 = 4;
/// Command: pulse the CPU reset line.
const CMD_RESET_CPU: u8 = 0xfe;

/// The i8042 controller.
#[derive(Debug)]
pub struct I8042 {
    exit: Arc<ExitEvent>,
}

impl I8042 {
    /// Creates a controller whose reset command requests exit through `exit`.
    pub fn new(exit: Arc<ExitEvent>) -> Self {
        Self { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Status: no data, input buffer empty. Data: nothing buffered.
        if offset != DATA_OFFSET && offset != COMMAND_OFFSET {
            log::debug!("i8042: read of unemulated offset {offset}");
        }
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (COMMAND_OFFSET, [CMD_RESET_CPU]) => {
                log::info!("guest pulsed the i8042 reset line: exiting with status 0");
                self.exit.request(0);
            }
            _ => log::debug!("i8042: ignoring write of {data:x?} at offset {offset}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (I8042, Arc<ExitEvent>) {
        let exit = Arc::new(ExitEvent::new().unwrap());
        (I8042::new(exit.clone()), exit)
    }

    #[test]
    fn reset_command_requests_exit_zero() {
        let (mut dev, exit) = dev();
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.status(), Some(0));
        assert_eq!(exit.eventfd().read().unwrap(), 1);
    }

    #[test]
    fn other_writes_are_ignored() {
        let (mut dev, exit) = dev();
        dev.write(DATA_OFFSET, &[CMD_RESET_CPU]);
        dev.write(COMMAND_OFFSET, &[0x20]);
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU, 0]);
        dev.write(COMMAND_OFFSET, &[]);
        dev.write(1, &[CMD_RESET_CPU]);
        assert_eq!(exit.status(), None);
    }

    #[test]
    fn reads_return_zero() {
        let (mut dev, _exit) = dev();
        for offset in 0..I8042_PORT_LEN {
            let mut data = [0xffu8];
            dev.read(offset, &mut data);
            assert_eq!(data, [0]);
        }
        let mut wide = [0xffu8; 4];
        dev.read(COMMAND_OFFSET, &mut wide);
        assert_eq!(wide, [0; 4]);
    }
}
