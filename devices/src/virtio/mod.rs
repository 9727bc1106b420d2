//! Virtio 1.x devices on the modern PCI transport, with split virtqueues
//! from the `virtio-queue` crate.
//!
//! One concept per file:
//! * [`device`]: [`VirtioDevice`], what a device (block, rng) implements,
//!   and [`VirtioInterrupt`], how it signals the driver.
//! * [`chain`]: a descriptor chain checked against guest RAM and split into
//!   the bytes the device reads and the bytes it writes.
//! * [`queue`]: [`QueueConfig`] (what the driver programmed) turned into a
//!   checked `virtio_queue::Queue`, and [`ActiveQueue`], the loop that pops
//!   chains and returns them to the used ring.
//! * [`worker`]: [`Worker`], the thread of an activated device.
//! * [`pci`]: [`VirtioPciDevice`], the transport: config space capabilities,
//!   the BAR with common/ISR/device/notify areas and MSI-X.
//! * [`block`]: virtio-blk over a raw image file ([`Block`], [`DiskConfig`]).
//! * [`rng`]: virtio-rng from the host's `/dev/urandom` ([`Rng`]).
//!
//! Threads: each activated device runs one worker thread (named after the
//! device, e.g. `virtio-blk`) that waits on its queues' eventfds and on a
//! kill eventfd. Writing 0 to `device_status` (reset) or dropping the
//! device stops and joins it. The vCPU threads only touch the transport.
//!
//! Guest-controlled input (register writes, ring and descriptor contents)
//! never panics and never reaches host memory outside guest RAM: every
//! guest buffer is checked with `GuestMemory::check_range` and accessed
//! through `vm-memory`. A driver that programs a queue outside RAM or
//! corrupts a ring gets `DEVICE_NEEDS_RESET` in `device_status` and a log
//! line; a bad descriptor chain fails that request only.
//!
//! What this module does not do: the legacy (0.9.5) and transitional
//! interfaces, packed virtqueues, `VIRTIO_F_RING_EVENT_IDX`, INTx (devices
//! interrupt through MSI-X only, so a driver that disables MSI-X gets no
//! interrupts), live migration, and address translation through an IOMMU
//! (`VIRTIO_F_ACCESS_PLATFORM` is offered so that drivers use the DMA API,
//! but addresses are still taken as guest-physical).

pub mod block;
pub mod chain;
pub mod device;
pub mod pci;
pub mod queue;
pub mod rng;
#[cfg(test)]
mod test_utils;
pub mod worker;

pub use block::{parse_disk, Block, BlockError, DiskConfig, DiskConfigError};
pub use chain::{ChainError, GuestBuffer, RequestBuffers};
pub use device::{ActivateError, DeviceQueue, VirtioDevice, VirtioInterrupt};
pub use pci::{VirtioPciDevice, VirtioPciError, VIRTIO_BAR};
pub use queue::{ActiveQueue, QueueConfig, QueueError};
pub use rng::{Rng, RngError};
pub use worker::{QueueHandler, Worker, WorkerError};

/// Virtio device type of a network card.
pub const TYPE_NET: u32 = 1;
/// Virtio device type of a block device.
pub const TYPE_BLOCK: u32 = 2;
/// Virtio device type of an entropy source.
pub const TYPE_RNG: u32 = 4;

/// Feature bit: the driver may use indirect descriptor tables.
pub const VIRTIO_F_RING_INDIRECT_DESC: u32 = 28;
/// Feature bit: the device follows virtio 1.0 or later (mandatory here).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: the device is behind an IOMMU (or a DMA-limited platform);
/// the driver must use the platform's DMA API.
pub const VIRTIO_F_ACCESS_PLATFORM: u32 = 33;

/// `device_status`: the guest found the device.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// `device_status`: the guest has a driver for the device.
pub const STATUS_DRIVER: u8 = 2;
/// `device_status`: the driver is set up and the device is live.
pub const STATUS_DRIVER_OK: u8 = 4;
/// `device_status`: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u8 = 8;
/// `device_status`: the device hit an error and must be reset.
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 0x40;
/// `device_status`: the driver gave up on the device.
pub const STATUS_FAILED: u8 = 0x80;

/// The human name of a virtio device type, for log lines.
pub fn type_name(device_type: u32) -> &'static str {
    match device_type {
        TYPE_NET => "virtio-net",
        TYPE_BLOCK => "virtio-blk",
        TYPE_RNG => "virtio-rng",
        _ => "virtio",
    }
}

/// Bit `bit` of a 64-bit feature word.
pub const fn feature(bit: u32) -> u64 {
    1 << bit
}
