//! The aarch64 MMIO bus: the 16550A UART at [`layout::SERIAL_START`], its interrupt an irqfd
//! on GSI [`layout::SERIAL_SPI`] (KVM's default arm64 routing sends GSI n to SPI n).
//!
//! Call [`create_mmio_bus`] after [`Gic::new`](super::gic::Gic::new): KVM refuses irqfds
//! (EAGAIN) until the vGIC is initialised.
//!
//! What this module does not do: arm64 has no port I/O; the vCPU loop gets an empty PIO bus.

use std::sync::{Arc, Mutex};

use devices::{Bus, BusError, Serial, SerialError, SerialOutput};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::layout;

/// Errors wiring the MMIO devices.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// The interrupt eventfd could not be created.
    #[error("cannot create the serial interrupt eventfd: {0}; raise the open-file limit")]
    EventFd(std::io::Error),
    /// KVM_IRQFD failed.
    #[error(
        "KVM_IRQFD for the serial port (GSI {gsi}) failed: {source}; the GIC must be created \
         and initialised before the devices"
    )]
    Irqfd {
        /// The GSI.
        gsi: u32,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// The UART could not be created.
    #[error(transparent)]
    Serial(#[from] SerialError),
    /// The bus refused the device.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Builds the MMIO bus with the UART writing to `output`.
pub fn create_mmio_bus(vm: &VmFd, output: &SerialOutput) -> Result<Bus, MmioError> {
    let irq = EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd)?;
    vm.register_irqfd(&irq, layout::SERIAL_SPI)
        .map_err(|source| MmioError::Irqfd {
            gsi: layout::SERIAL_SPI,
            source,
        })?;
    let serial = Serial::new(output, irq)?;
    let mut bus = Bus::new();
    bus.insert(
        Arc::new(Mutex::new(serial)),
        layout::SERIAL_START.0,
        layout::SERIAL_SIZE,
    )?;
    Ok(bus)
}
