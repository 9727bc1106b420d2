//! The common configuration structure (`struct virtio_pci_common_cfg`):
//! feature negotiation registers, `device_status`, and the registers of the
//! selected queue.
//!
//! Reads return the bytes of the structure at any offset and width.
//! Writes must hit a writable field with its natural width (64-bit queue
//! addresses also as two 32-bit halves); anything else is ignored with a
//! debug log line. Nothing here validates a queue: sizes and addresses are
//! stored as written and checked when the driver sets `DRIVER_OK`
//! ([`QueueConfig::build`](crate::virtio::QueueConfig::build)).
//!
//! Writes the driver must not make are ignored: driver features after
//! `FEATURES_OK`, queue registers of an enabled queue or after
//! `DRIVER_OK`, disabling a queue, and registers of a queue that does not
//! exist.
//!
//! What this module does not do: act on `device_status`; a status write is
//! returned to the transport, which owns the device.

use std::sync::Arc;

use super::interrupt::{InterruptState, NO_VECTOR};
use super::layout::COMMON_LEN;
use crate::virtio::queue::QueueConfig;
use crate::virtio::VIRTIO_F_VERSION_1;
use crate::virtio::{feature, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK, STATUS_FEATURES_OK};

const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;

/// Why feature negotiation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Negotiation {
    /// The driver accepted features the device did not offer.
    Unoffered(u64),
    /// The driver did not accept `VIRTIO_F_VERSION_1`.
    NoVersion1,
}

/// The common configuration registers of one function.
///
/// Invariant: `queues` has one entry per device queue and never changes
/// length; `status` never holds `DEVICE_NEEDS_RESET` (that bit comes from
/// the shared [`InterruptState`]).
#[derive(Debug)]
pub struct CommonConfig {
    device_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
    queues: Vec<QueueConfig>,
    msix_vectors: u16,
    state: Arc<InterruptState>,
}

impl CommonConfig {
    /// Registers for a device offering `device_features`, with one queue
    /// per entry of `max_sizes` and an MSI-X table of `msix_vectors`.
    pub fn new(
        device_features: u64,
        max_sizes: &[u16],
        msix_vectors: u16,
        state: Arc<InterruptState>,
    ) -> Self {
        Self {
            device_features,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            queue_select: 0,
            queues: max_sizes.iter().map(|&m| QueueConfig::new(m)).collect(),
            msix_vectors,
            state,
        }
    }

    /// Back to reset values (the interrupt state is reset by its owner).
    pub fn reset(&mut self) {
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.queue_select = 0;
        for q in &mut self.queues {
            q.reset();
        }
    }

    /// `device_status` as the driver last set it (without
    /// `DEVICE_NEEDS_RESET`).
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Records the new `device_status`.
    pub fn set_status(&mut self, status: u8) {
        self.status = status & !STATUS_DEVICE_NEEDS_RESET;
    }

    /// The queue registers.
    pub fn queues(&self) -> &[QueueConfig] {
        &self.queues
    }

    /// The features the driver accepted, if they are a valid choice.
    pub fn negotiate(&self) -> Result<u64, Negotiation> {
        let unoffered = self.driver_features & !self.device_features;
        if unoffered != 0 {
            return Err(Negotiation::Unoffered(unoffered));
        }
        if self.driver_features & feature(VIRTIO_F_VERSION_1) == 0 {
            return Err(Negotiation::NoVersion1);
        }
        Ok(self.driver_features)
    }

    fn selected_queue(&self) -> Option<&QueueConfig> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// The structure as the driver reads it now.
    fn image(&self) -> [u8; COMMON_LEN as usize] {
        let mut b = [0u8; COMMON_LEN as usize];
        let mut put = |offset: u64, bytes: &[u8]| {
            let o = offset as usize;
            b[o..o + bytes.len()].copy_from_slice(bytes);
        };
        let word = |features: u64, select: u32| match select {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        };
        put(
            DEVICE_FEATURE_SELECT,
            &self.device_feature_select.to_le_bytes(),
        );
        put(
            DEVICE_FEATURE,
            &word(self.device_features, self.device_feature_select).to_le_bytes(),
        );
        put(
            DRIVER_FEATURE_SELECT,
            &self.driver_feature_select.to_le_bytes(),
        );
        put(
            DRIVER_FEATURE,
            &word(self.driver_features, self.driver_feature_select).to_le_bytes(),
        );
        put(
            CONFIG_MSIX_VECTOR,
            &self.state.config_vector().to_le_bytes(),
        );
        put(NUM_QUEUES, &(self.queues.len() as u16).to_le_bytes());
        let mut status = self.status;
        if self.state.needs_reset() {
            status |= STATUS_DEVICE_NEEDS_RESET;
        }
        put(DEVICE_STATUS, &[status]);
        // The device configuration never changes: generation stays 0.
        put(CONFIG_GENERATION, &[0]);
        put(QUEUE_SELECT, &self.queue_select.to_le_bytes());
        if let Some(q) = self.selected_queue() {
            put(QUEUE_SIZE, &q.size.to_le_bytes());
            put(
                QUEUE_MSIX_VECTOR,
                &self.state.queue_vector(self.queue_select).to_le_bytes(),
            );
            put(QUEUE_ENABLE, &u16::from(q.ready).to_le_bytes());
            put(QUEUE_NOTIFY_OFF, &self.queue_select.to_le_bytes());
            put(QUEUE_DESC, &q.desc_table.to_le_bytes());
            put(QUEUE_DRIVER, &q.avail_ring.to_le_bytes());
            put(QUEUE_DEVICE, &q.used_ring.to_le_bytes());
        }
        b
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the structure read
    /// as 0.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let image = self.image();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| image.get(o).copied())
                .unwrap_or(0);
        }
    }

    /// Applies a driver write of `data` at `offset`. Returns the new value
    /// if the write was to `device_status`, for the transport to act on.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<u8> {
        let value = match *data {
            [a] => u64::from(a),
            [a, b] => u64::from(u16::from_le_bytes([a, b])),
            [a, b, c, d] => u64::from(u32::from_le_bytes([a, b, c, d])),
            [a, b, c, d, e, f, g, h] => u64::from_le_bytes([a, b, c, d, e, f, g, h]),
            _ => {
                self.ignore(offset, data.len(), "accesses are 1, 2, 4 or 8 bytes");
                return None;
            }
        };
        match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = value as u32,
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = value as u32,
            (DRIVER_FEATURE, 4) => self.write_driver_features(value as u32),
            (CONFIG_MSIX_VECTOR, 2) => {
                let vector = self.checked_vector(value as u16);
                self.state.set_config_vector(vector);
            }
            (DEVICE_STATUS, 1) => return Some(value as u8),
            (QUEUE_SELECT, 2) => self.queue_select = value as u16,
            (QUEUE_MSIX_VECTOR, 2) => {
                if self.selected_queue().is_some() {
                    let vector = self.checked_vector(value as u16);
                    self.state.set_queue_vector(self.queue_select, vector);
                }
            }
            (QUEUE_SIZE, 2) => self.write_queue(offset, data.len(), |q| q.size = value as u16),
            (QUEUE_ENABLE, 2) => {
                if value == 1 {
                    self.write_queue(offset, data.len(), |q| q.ready = true);
                } else {
                    self.ignore(offset, 2, "a queue is disabled only by a device reset");
                }
            }
            (QUEUE_DESC..QUEUE_DEVICE_END, 4 | 8) if offset.is_multiple_of(data.len() as u64) => {
                let field = (offset - QUEUE_DESC) / 8;
                let high = offset % 8 == 4;
                self.write_queue(offset, data.len(), |q| {
                    let reg = match field {
                        0 => &mut q.desc_table,
                        1 => &mut q.avail_ring,
                        _ => &mut q.used_ring,
                    };
                    *reg = match (data.len(), high) {
                        (8, _) => value,
                        (_, false) => (*reg & !0xffff_ffff) | value,
                        (_, true) => (*reg & 0xffff_ffff) | (value << 32),
                    };
                });
            }
            _ => self.ignore(offset, data.len(), "not a writable field of that width"),
        }
        None
    }

    fn write_driver_features(&mut self, word: u32) {
        if self.status & STATUS_FEATURES_OK != 0 {
            self.ignore(DRIVER_FEATURE, 4, "features are fixed after FEATURES_OK");
            return;
        }
        let shift = match self.driver_feature_select {
            0 => 0,
            1 => 32,
            _ => {
                if word != 0 {
                    self.ignore(DRIVER_FEATURE, 4, "no feature bits exist past bit 63");
                }
                return;
            }
        };
        self.driver_features =
            (self.driver_features & !(0xffff_ffff << shift)) | (u64::from(word) << shift);
    }

    /// Applies `f` to the selected queue if the driver may still change it.
    fn write_queue(&mut self, offset: u64, len: usize, f: impl FnOnce(&mut QueueConfig)) {
        let driver_ok = self.status & STATUS_DRIVER_OK != 0;
        let select = self.queue_select;
        match self.queues.get_mut(usize::from(select)) {
            None => self.ignore(offset, len, "the selected queue does not exist"),
            Some(_) if driver_ok => self.ignore(offset, len, "queues are fixed after DRIVER_OK"),
            Some(q) if q.ready => self.ignore(
                offset,
                len,
                "the selected queue is enabled; reset the device first",
            ),
            Some(q) => f(q),
        }
    }

    /// `vector` if the MSI-X table has it, else `NO_VECTOR` (which tells
    /// the driver, reading it back, that the vector was refused).
    fn checked_vector(&self, vector: u16) -> u16 {
        if vector < self.msix_vectors {
            vector
        } else {
            if vector != NO_VECTOR {
                log::debug!(
                    "virtio-pci: refusing MSI-X vector {vector}: the table has {} vectors",
                    self.msix_vectors
                );
            }
            NO_VECTOR
        }
    }

    fn ignore(&self, offset: u64, len: usize, why: &str) {
        log::debug!("virtio-pci: ignoring a {len}-byte common config write at {offset:#x}: {why}");
    }
}

/// End of the queue address fields.
const QUEUE_DEVICE_END: u64 = QUEUE_DEVICE + 8;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::{STATUS_ACKNOWLEDGE, STATUS_DRIVER};

    fn common() -> CommonConfig {
        let features = feature(VIRTIO_F_VERSION_1) | 0b1010;
        CommonConfig::new(features, &[256, 16], 3, Arc::new(InterruptState::new(2)))
    }

    fn read(c: &CommonConfig, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        c.read(offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    fn write(c: &mut CommonConfig, offset: u64, len: usize, value: u64) -> Option<u8> {
        c.write(offset, &value.to_le_bytes()[..len])
    }

    #[test]
    fn feature_words() {
        let mut c = common();
        assert_eq!(read(&c, DEVICE_FEATURE, 4), 0b1010);
        write(&mut c, DEVICE_FEATURE_SELECT, 4, 1);
        assert_eq!(read(&c, DEVICE_FEATURE, 4), 1);
        write(&mut c, DEVICE_FEATURE_SELECT, 4, 2);
        assert_eq!(read(&c, DEVICE_FEATURE, 4), 0);
        // The device feature word is read-only.
        write(&mut c, DEVICE_FEATURE, 4, 0xffff);
        assert_eq!(read(&c, DEVICE_FEATURE, 4), 0);

        write(&mut c, DRIVER_FEATURE, 4, 0b10);
        write(&mut c, DRIVER_FEATURE_SELECT, 4, 1);
        assert_eq!(c.negotiate(), Err(Negotiation::NoVersion1));
        write(&mut c, DRIVER_FEATURE, 4, 1);
        assert_eq!(read(&c, DRIVER_FEATURE, 4), 1);
        assert_eq!(c.negotiate(), Ok(feature(VIRTIO_F_VERSION_1) | 0b10));
        write(&mut c, DRIVER_FEATURE_SELECT, 4, 0);
        write(&mut c, DRIVER_FEATURE, 4, 0b111);
        assert_eq!(c.negotiate(), Err(Negotiation::Unoffered(0b101)));
        // Fixed once FEATURES_OK is set.
        write(&mut c, DRIVER_FEATURE, 4, 0b10);
        c.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        write(&mut c, DRIVER_FEATURE, 4, 0);
        assert_eq!(read(&c, DRIVER_FEATURE, 4), 0b10);
    }

    #[test]
    fn queue_registers() {
        let mut c = common();
        assert_eq!(read(&c, NUM_QUEUES, 2), 2);
        assert_eq!(read(&c, QUEUE_SIZE, 2), 256);
        write(&mut c, QUEUE_SELECT, 2, 1);
        assert_eq!(read(&c, QUEUE_SIZE, 2), 16);
        assert_eq!(read(&c, QUEUE_NOTIFY_OFF, 2), 1);
        write(&mut c, QUEUE_SIZE, 2, 8);
        write(&mut c, QUEUE_DESC, 4, 0x1000);
        write(&mut c, QUEUE_DESC + 4, 4, 0x2);
        write(&mut c, QUEUE_DRIVER, 8, 0x3_0000_2000);
        write(&mut c, QUEUE_DEVICE + 4, 4, 0x4);
        write(&mut c, QUEUE_DEVICE, 4, 0x3000);
        assert_eq!(read(&c, QUEUE_DESC, 8), 0x2_0000_1000);
        assert_eq!(read(&c, QUEUE_DRIVER + 4, 4), 3);
        assert_eq!(c.queues()[1].used_ring, 0x4_0000_3000);
        write(&mut c, QUEUE_MSIX_VECTOR, 2, 2);
        assert_eq!(read(&c, QUEUE_MSIX_VECTOR, 2), 2);
        write(&mut c, QUEUE_MSIX_VECTOR, 2, 3);
        assert_eq!(
            read(&c, QUEUE_MSIX_VECTOR, 2),
            u64::from(NO_VECTOR),
            "refused"
        );
        write(&mut c, QUEUE_ENABLE, 2, 1);
        assert_eq!(read(&c, QUEUE_ENABLE, 2), 1);
        // Enabled: fixed; disabling is not possible.
        write(&mut c, QUEUE_SIZE, 2, 4);
        write(&mut c, QUEUE_DESC, 8, 0);
        write(&mut c, QUEUE_ENABLE, 2, 0);
        assert_eq!(c.queues()[1].size, 8);
        assert!(c.queues()[1].ready);
        assert_eq!(c.queues()[1].desc_table, 0x2_0000_1000);
        // Queue 0 untouched.
        assert_eq!(c.queues()[0], QueueConfig::new(256));
        // A queue that does not exist reads 0 and ignores writes.
        write(&mut c, QUEUE_SELECT, 2, 5);
        assert_eq!(read(&c, QUEUE_SIZE, 2), 0);
        write(&mut c, QUEUE_SIZE, 2, 4);
        write(&mut c, QUEUE_MSIX_VECTOR, 2, 0);
        write(&mut c, QUEUE_ENABLE, 2, 1);
        assert_eq!(read(&c, QUEUE_SELECT, 2), 5);
        // After DRIVER_OK queue 0 cannot change either.
        write(&mut c, QUEUE_SELECT, 2, 0);
        c.set_status(STATUS_DRIVER_OK);
        write(&mut c, QUEUE_SIZE, 2, 4);
        assert_eq!(c.queues()[0].size, 256);
        c.reset();
        assert_eq!(c.queues()[1], QueueConfig::new(16));
        assert_eq!(c.status(), 0);
    }

    #[test]
    fn status_and_vectors() {
        let mut c = common();
        assert_eq!(write(&mut c, DEVICE_STATUS, 1, 3), Some(3));
        assert_eq!(read(&c, DEVICE_STATUS, 1), 0, "the transport sets it");
        c.set_status(3 | STATUS_DEVICE_NEEDS_RESET);
        assert_eq!(read(&c, DEVICE_STATUS, 1), 3);
        c.state.set_config_vector(1);
        assert_eq!(read(&c, CONFIG_MSIX_VECTOR, 2), 1);
        write(&mut c, CONFIG_MSIX_VECTOR, 2, 0x7fff);
        assert_eq!(read(&c, CONFIG_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
        assert_eq!(read(&c, CONFIG_GENERATION, 1), 0);
    }

    #[test]
    fn garbage_writes_are_ignored() {
        let mut c = common();
        let before = c.image();
        for (offset, len) in [
            (0x01, 4),
            (0x14, 2),
            (0x16, 4),
            (0x22, 4),
            (0x24, 8),
            (0x38, 4),
            (u64::MAX, 1),
            (0x10, 3),
            (0x0, 16),
        ] {
            assert_eq!(c.write(offset, &vec![0xff; len]), None, "{offset:#x} {len}");
        }
        assert_eq!(c.image(), before);
        let mut b = [0xffu8; 4];
        c.read(0x36, &mut b);
        assert_eq!(b, [0; 4]);
        c.read(u64::MAX - 1, &mut b);
        assert_eq!(b, [0; 4]);
    }
}
