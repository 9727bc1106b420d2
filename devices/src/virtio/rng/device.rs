//! The virtio-rng device: one queue, no features, no configuration space.
//!
//! While active, a worker thread named `virtio-rng` serves the queue.
//!
//! What this module does not do: choose another entropy source.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::event_handler::RngHandler;
use crate::virtio::device::{ActivateError, DeviceQueue, VirtioDevice, VirtioInterrupt};
use crate::virtio::worker::{activate_single_queue, Worker};
use crate::virtio::TYPE_RNG;

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// The host entropy source.
pub const SOURCE: &str = "/dev/urandom";

const NAME: &str = "virtio-rng";

/// Errors creating a virtio-rng device.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// The entropy source cannot be opened.
    #[error(
        "cannot open the entropy source {path} for --rng: {source}; the host must provide \
         {path} (mount /dev in the VMM's sandbox) or run without --rng",
        path = .path.display()
    )]
    Open {
        /// The source.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A virtio-rng device.
#[derive(Debug)]
pub struct Rng {
    source: Arc<File>,
    queue_sizes: [u16; 1],
    worker: Option<Worker>,
}

impl Rng {
    /// A device reading `/dev/urandom`.
    pub fn new() -> Result<Self, RngError> {
        let source = File::open(SOURCE).map_err(|source| RngError::Open {
            path: SOURCE.into(),
            source,
        })?;
        Ok(Self {
            source: Arc::new(source),
            queue_sizes: [QUEUE_SIZE],
            worker: None,
        })
    }

    /// Whether the worker thread runs.
    pub fn is_active(&self) -> bool {
        self.worker.is_some()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        0
    }

    fn ack_features(&mut self, _features: u64) {}

    fn config_len(&self) -> usize {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "{NAME}: ignoring a {}-byte config write at {offset:#x}: there is no config space",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<DeviceQueue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        let source = self.source.clone();
        activate_single_queue(
            &mut self.worker,
            NAME,
            TYPE_RNG,
            mem,
            queues,
            interrupt,
            |queue| RngHandler::new(queue, source),
        )
    }

    fn reset(&mut self) {
        self.worker = None;
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::virtio::rng::event_handler::MAX_BYTES_PER_REQUEST;
    use crate::virtio::test_utils::{guest_memory, wait_for, RecordingInterrupt, TestQueue};

    #[test]
    fn delivers_random_bytes() {
        let mem = guest_memory();
        let mut rng = Rng::new().unwrap();
        assert_eq!(rng.device_type(), TYPE_RNG);
        assert_eq!(rng.config_len(), 0);
        let irq = Arc::new(RecordingInterrupt::default());
        let mut tq = TestQueue::new(&mem, 16);
        let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let kick = event.try_clone().unwrap();
        rng.activate(
            mem.clone(),
            vec![DeviceQueue {
                index: 0,
                queue: tq.queue(),
                event,
            }],
            irq.clone(),
        )
        .unwrap();
        assert!(rng.is_active());

        // Two buffers, one readable buffer that is ignored, and a huge
        // buffer that gets only the per-request maximum.
        tq.add_chain(&mem, &[(0x1000, 64, true), (0x2000, 64, true)]);
        tq.add_chain(&mem, &[(0x3000, 16, false)]);
        tq.add_chain(&mem, &[(0x6_0000, 0x8_0000, true)]);
        kick.write(1).unwrap();
        assert!(wait_for(|| tq.used(&mem).len() == 3));
        assert_eq!(
            tq.used(&mem),
            vec![(0, 128), (2, 0), (3, MAX_BYTES_PER_REQUEST as u32)]
        );
        let mut bytes = [0u8; 64];
        mem.read_slice(&mut bytes, GuestAddress(0x2000)).unwrap();
        assert!(bytes.iter().any(|&b| b != 0), "64 zero bytes from urandom");
        let mut past = [0u8; 16];
        mem.read_slice(&mut past, GuestAddress(0x6_0000 + MAX_BYTES_PER_REQUEST))
            .unwrap();
        assert_eq!(past, [0; 16], "nothing written past the maximum");
        assert!(wait_for(|| irq.take().contains(&"queue 0".to_string())));

        rng.reset();
        assert!(!rng.is_active());
        rng.activate(mem.clone(), Vec::new(), irq)
            .expect_err("queue 0 is needed");
    }
}
