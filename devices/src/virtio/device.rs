//! The boundary between a virtio transport and a virtio device.
//!
//! A device ([`VirtioDevice`]) knows its type, queues, features and config
//! space, and processes requests once activated. The transport (here
//! [`VirtioPciDevice`](super::VirtioPciDevice)) owns the guest-visible
//! registers, negotiates features, checks the queues the driver programmed,
//! and on `DRIVER_OK` hands the device its queues, their notification
//! eventfds and a [`VirtioInterrupt`] to signal the driver with.
//!
//! What this module does not do: it defines no processing model; the
//! devices of this crate each run a [`Worker`](super::Worker) thread.

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::worker::WorkerError;

/// Errors activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver did not enable a queue the device needs.
    #[error(
        "the driver did not enable queue {index} of {device}, which the device needs: the \
         guest driver must enable every queue before setting DRIVER_OK; reset the device"
    )]
    MissingQueue {
        /// Device name.
        device: &'static str,
        /// Queue index.
        index: u16,
    },
    /// The device is already active.
    #[error("{device} is already active: reset it (write 0 to device_status) first")]
    AlreadyActive {
        /// Device name.
        device: &'static str,
    },
    /// The device lost its backend (an earlier worker thread died).
    #[error(
        "{device} has no backend left to activate with (its worker thread died earlier, see \
         the log); restart the VM"
    )]
    NoBackend {
        /// Device name.
        device: &'static str,
    },
    /// The worker thread could not be started.
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

/// A queue the driver enabled, ready for the device.
#[derive(Debug)]
pub struct DeviceQueue {
    /// Index of the queue in the device (0 for the first queue).
    pub index: u16,
    /// The queue, checked to lie in guest RAM and marked ready.
    pub queue: Queue,
    /// Signalled when the driver notifies the queue (ioeventfd or MMIO
    /// write to the notify area).
    pub event: EventFd,
}

/// How a device signals the driver. Implemented by the transport; shared
/// with the device's worker thread.
///
/// Methods log their own failures: there is nothing a device could do about
/// an interrupt it cannot deliver.
pub trait VirtioInterrupt: Send + Sync {
    /// The device added buffers to the used ring of queue `queue`.
    fn signal_used_queue(&self, queue: u16);

    /// The device configuration space changed (or the status did, see
    /// [`VirtioInterrupt::set_needs_reset`]).
    fn signal_config_change(&self);

    /// The driver broke the device (a queue outside RAM, a corrupt ring):
    /// sets `DEVICE_NEEDS_RESET` in `device_status` and sends a
    /// configuration change interrupt so the driver notices. The caller
    /// logs why.
    fn set_needs_reset(&self);
}

/// A virtio device, as a transport sees it.
///
/// Config accesses come from the guest: implementations must accept any
/// offset and length without panicking.
pub trait VirtioDevice: Send {
    /// The virtio device type (2 for block, 4 for rng, see `TYPE_*`).
    fn device_type(&self) -> u32;

    /// The largest size of each queue, powers of two; the number of entries
    /// is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// The device-specific and ring feature bits the device offers. The
    /// transport adds `VIRTIO_F_VERSION_1` and `VIRTIO_F_ACCESS_PLATFORM`.
    fn features(&self) -> u64;

    /// The features the driver accepted (a subset of what was offered),
    /// when it sets `FEATURES_OK`.
    fn ack_features(&mut self, features: u64);

    /// Length in bytes of the device configuration space (0 for none).
    fn config_len(&self) -> usize;

    /// Reads `data.len()` bytes of the configuration space at `offset`;
    /// bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the configuration space at `offset`. Read-only fields ignore
    /// writes.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts processing `queues` (the ones the driver enabled, in index
    /// order) in `mem`, signalling through `interrupt`.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<DeviceQueue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError>;

    /// Stops processing (joining any thread) and forgets negotiated
    /// features, so the device can be activated again.
    fn reset(&mut self);
}
