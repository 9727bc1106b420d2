//! The worker-thread side of virtio-blk: run every request the driver made
//! available, synchronously, in ring order.
//!
//! What this module does not do: overlap requests (one at a time, each
//! completes before the next starts).

use std::sync::Arc;

use super::disk::DiskFile;
use super::request;
use crate::virtio::queue::{ActiveQueue, LogBudget};
use crate::virtio::worker::QueueHandler;

/// The state the worker thread owns while the device is active.
#[derive(Debug)]
pub struct BlockHandler {
    queue: ActiveQueue,
    disk: Arc<DiskFile>,
    errors: LogBudget,
}

impl BlockHandler {
    /// A handler serving `queue` from `disk`.
    pub fn new(queue: ActiveQueue, disk: Arc<DiskFile>) -> Self {
        Self {
            queue,
            disk,
            errors: LogBudget::default(),
        }
    }
}

impl QueueHandler for BlockHandler {
    fn handle_queue(&mut self, _position: usize) {
        let disk = &self.disk;
        let errors = &mut self.errors;
        self.queue
            .process(|mem, buffers| request::process(mem, disk, buffers, errors));
    }
}
