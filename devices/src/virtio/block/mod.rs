//! virtio-blk over a raw image file.
//!
//! * [`config`]: [`DiskConfig`] and [`parse_disk`], the `--disk` value.
//! * [`disk`]: [`DiskFile`], the checked, open image ([`BlockError`]).
//! * [`request`]: one request, parsed and run.
//! * [`device`]: [`Block`], the [`VirtioDevice`](crate::virtio::VirtioDevice).
//! * [`event_handler`]: what the worker thread does when the queue is
//!   notified.
//!
//! VMM usage: `Block::new(&parse_disk(arg)?)?`, then wrap it in a
//! [`VirtioPciDevice`](crate::virtio::VirtioPciDevice).
//!
//! What this module does not do: multiple queues, DISCARD/WRITE_ZEROES,
//! image formats other than raw, and rate limiting.

pub mod config;
pub mod device;
pub mod disk;
pub mod event_handler;
pub mod request;

pub use config::{parse_disk, DiskConfig, DiskConfigError};
pub use device::Block;
pub use disk::{BlockError, DiskFile};
