//! How a virtio-pci device interrupts the driver: the MSI-X vector the
//! driver chose for each queue and for configuration changes, the ISR
//! status byte, and the `DEVICE_NEEDS_RESET` flag.
//!
//! [`InterruptState`] is shared (`Arc`) between the transport, which the
//! vCPUs drive, and the device's worker thread; every field is atomic, so
//! neither side takes a lock for it. Injection goes through the function's
//! [`MsixConfig`], which honours the guest's masks (a masked vector becomes
//! pending and is delivered on unmask).
//!
//! Lock order: the transport (`PciDevice` lock) -> `MsixConfig`. The worker
//! takes only `MsixConfig`, so it never waits for a vCPU that waits for it.
//!
//! What this module does not do: INTx. A driver that leaves MSI-X disabled
//! (or sets a vector to `NO_VECTOR`) gets no interrupts; the ISR byte is
//! still kept for it to poll.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::pci::{MsixConfig, MsixDelivery};
use crate::virtio::device::VirtioInterrupt;

/// The vector value meaning "no interrupt".
pub const NO_VECTOR: u16 = 0xffff;
/// ISR bit: a queue was used.
pub const ISR_QUEUE: u8 = 1;
/// ISR bit: the configuration (or the status) changed.
pub const ISR_CONFIG: u8 = 2;

/// Interrupt state shared by the transport and the device thread.
#[derive(Debug)]
pub struct InterruptState {
    isr: AtomicU8,
    needs_reset: AtomicBool,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
}

impl InterruptState {
    /// State for `queues` queues, at reset values.
    pub fn new(queues: usize) -> Self {
        Self {
            isr: AtomicU8::new(0),
            needs_reset: AtomicBool::new(false),
            config_vector: AtomicU16::new(NO_VECTOR),
            queue_vectors: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
        }
    }

    /// Back to reset values: no vectors, ISR clear, no reset needed.
    pub fn reset(&self) {
        self.isr.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
        self.config_vector.store(NO_VECTOR, Ordering::SeqCst);
        for v in &self.queue_vectors {
            v.store(NO_VECTOR, Ordering::SeqCst);
        }
    }

    /// Reads and clears the ISR byte.
    pub fn take_isr(&self) -> u8 {
        self.isr.swap(0, Ordering::SeqCst)
    }

    /// Whether the device asked to be reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The configuration change vector.
    pub fn config_vector(&self) -> u16 {
        self.config_vector.load(Ordering::SeqCst)
    }

    /// Sets the configuration change vector.
    pub fn set_config_vector(&self, vector: u16) {
        self.config_vector.store(vector, Ordering::SeqCst);
    }

    /// The vector of queue `queue` (`NO_VECTOR` for a queue that does not
    /// exist).
    pub fn queue_vector(&self, queue: u16) -> u16 {
        self.queue_vectors
            .get(usize::from(queue))
            .map_or(NO_VECTOR, |v| v.load(Ordering::SeqCst))
    }

    /// Sets the vector of queue `queue`; ignored for a queue that does not
    /// exist.
    pub fn set_queue_vector(&self, queue: u16, vector: u16) {
        if let Some(v) = self.queue_vectors.get(usize::from(queue)) {
            v.store(vector, Ordering::SeqCst);
        }
    }
}

/// The [`VirtioInterrupt`] a virtio-pci transport hands its device.
pub struct VirtioPciInterrupt {
    device: &'static str,
    state: Arc<InterruptState>,
    msix: Arc<Mutex<MsixConfig>>,
}

impl VirtioPciInterrupt {
    /// Interrupts for `device` (a name for logs) through `msix`.
    pub fn new(
        device: &'static str,
        state: Arc<InterruptState>,
        msix: Arc<Mutex<MsixConfig>>,
    ) -> Self {
        Self {
            device,
            state,
            msix,
        }
    }

    fn inject(&self, vector: u16, what: &str) {
        if vector == NO_VECTOR {
            return;
        }
        let result = self
            .msix
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .trigger(vector);
        match result {
            Ok(MsixDelivery::Delivered | MsixDelivery::Pending) => {}
            Ok(MsixDelivery::Disabled) => log::debug!(
                "{}: {what} interrupt dropped: the driver has MSI-X disabled and there is no INTx",
                self.device
            ),
            Err(e) => log::warn!("{}: cannot send the {what} interrupt: {e}", self.device),
        }
    }
}

impl VirtioInterrupt for VirtioPciInterrupt {
    fn signal_used_queue(&self, queue: u16) {
        self.state.isr.fetch_or(ISR_QUEUE, Ordering::SeqCst);
        self.inject(self.state.queue_vector(queue), "queue");
    }

    fn signal_config_change(&self) {
        self.state.isr.fetch_or(ISR_CONFIG, Ordering::SeqCst);
        self.inject(self.state.config_vector(), "configuration change");
    }

    fn set_needs_reset(&self) {
        self.state.needs_reset.store(true, Ordering::SeqCst);
        self.signal_config_change();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::interrupt::test_utils::RecordingInterruptGroup;
    use crate::virtio::pci::layout::msix_layout;

    #[test]
    fn vectors_isr_and_needs_reset() {
        let group = Arc::new(RecordingInterruptGroup::new(3));
        let mut msix = MsixConfig::new(msix_layout(2), group.clone()).unwrap();
        msix.set_message_control(1 << 15);
        // Unmask every vector.
        for v in 0..3u64 {
            msix.table_write(v * 16 + 12, &0u32.to_le_bytes());
        }
        let msix = Arc::new(Mutex::new(msix));
        let state = Arc::new(InterruptState::new(2));
        let irq = VirtioPciInterrupt::new("test", state.clone(), msix.clone());

        irq.signal_used_queue(1);
        assert!(group.take_triggers().is_empty(), "no vector chosen yet");
        assert_eq!(state.take_isr(), ISR_QUEUE);
        assert_eq!(state.take_isr(), 0, "reading clears");

        state.set_queue_vector(1, 2);
        state.set_queue_vector(7, 2);
        state.set_config_vector(0);
        irq.signal_used_queue(1);
        irq.signal_used_queue(9);
        irq.set_needs_reset();
        assert_eq!(group.take_triggers(), vec![2, 0]);
        assert!(state.needs_reset());
        assert_eq!(state.take_isr(), ISR_QUEUE | ISR_CONFIG);

        // A vector past the table is logged, not a panic.
        state.set_queue_vector(0, 40);
        irq.signal_used_queue(0);
        assert!(group.take_triggers().is_empty());

        state.reset();
        assert!(!state.needs_reset());
        assert_eq!(state.queue_vector(1), NO_VECTOR);
        assert_eq!(state.config_vector(), NO_VECTOR);
    }
}
