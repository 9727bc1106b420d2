//! The worker-thread side of virtio-rng: fill each request's writable
//! buffers with random bytes.
//!
//! The bytes are read from the host's `/dev/urandom` (which never blocks
//! once the host pool is initialized) straight into guest memory. A
//! request gets at most [`MAX_BYTES_PER_REQUEST`]; the used length says how
//! many it got, as virtio allows. Readable buffers are ignored.
//!
//! What this module does not do: rate limiting.

use std::fs::File;
use std::sync::Arc;

use crate::virtio::queue::{ActiveQueue, LogBudget};
use crate::virtio::worker::QueueHandler;

/// Most bytes one request gets, so that a guest offering a huge buffer
/// cannot keep the thread busy for long.
pub const MAX_BYTES_PER_REQUEST: u64 = 64 * 1024;

/// The state the worker thread owns while the device is active.
#[derive(Debug)]
pub struct RngHandler {
    queue: ActiveQueue,
    source: Arc<File>,
    errors: LogBudget,
}

impl RngHandler {
    /// A handler serving `queue` from `source` (`/dev/urandom`).
    pub fn new(queue: ActiveQueue, source: Arc<File>) -> Self {
        Self {
            queue,
            source,
            errors: LogBudget::default(),
        }
    }
}

impl QueueHandler for RngHandler {
    fn handle_queue(&mut self, _position: usize) {
        let source = &self.source;
        let errors = &mut self.errors;
        self.queue.process(|mem, buffers| {
            let mut writable = buffers.writable;
            writable.split_off(MAX_BYTES_PER_REQUEST);
            match writable.fill_from(mem, &mut &**source) {
                // At most MAX_BYTES_PER_REQUEST: fits in a u32.
                Ok(()) => writable.len() as u32,
                Err(e) => {
                    if let Some(n) = errors.spend() {
                        log::warn!(
                            "virtio-rng: cannot fill request {}: {e} ({n} failed requests so far)",
                            buffers.head
                        );
                    }
                    0
                }
            }
        });
    }
}
