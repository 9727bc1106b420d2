//! virtio-rng: entropy for the guest from the host's `/dev/urandom`.
//!
//! * [`device`]: [`Rng`], the [`VirtioDevice`](crate::virtio::VirtioDevice).
//! * [`event_handler`]: what the worker thread does when the queue is
//!   notified.
//!
//! VMM usage: `Rng::new()?`, then wrap it in a
//! [`VirtioPciDevice`](crate::virtio::VirtioPciDevice).
//!
//! What this module does not do: rate limiting (a request gets at most
//! [`MAX_BYTES_PER_REQUEST`](event_handler::MAX_BYTES_PER_REQUEST) bytes).

pub mod device;
pub mod event_handler;

pub use device::{Rng, RngError};
