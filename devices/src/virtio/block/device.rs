//! The virtio-blk device: features, configuration space and activation.
//!
//! Offers `VIRTIO_BLK_F_SEG_MAX` (so Linux sends multi-segment requests),
//! `VIRTIO_BLK_F_FLUSH` (the guest's cache flushes reach the host file's
//! storage), `VIRTIO_BLK_F_RO` with `readonly=on`, and indirect
//! descriptors. One queue of [`QUEUE_SIZE`] entries, served by a worker
//! thread named `virtio-blk` while the device is active.
//!
//! What this module does not do: `VIRTIO_BLK_F_CONFIG_WCE` (the cache mode
//! is always writeback), multiqueue, resizing.

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::config::DiskConfig;
use super::disk::{BlockError, DiskFile, SECTOR_SIZE};
use super::event_handler::BlockHandler;
use crate::virtio::device::{ActivateError, DeviceQueue, VirtioDevice, VirtioInterrupt};
use crate::virtio::worker::{activate_single_queue, Worker};
use crate::virtio::{feature, TYPE_BLOCK, VIRTIO_F_RING_INDIRECT_DESC};

/// Feature bit: `seg_max` is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Feature bit: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature bit: `blk_size` is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// Feature bit: the device supports FLUSH.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of the configuration space exposed (`struct virtio_blk_config`
/// up to its 1.1 fields; what is not filled in reads 0).
pub const CONFIG_LEN: usize = 0x40;

const NAME: &str = "virtio-blk";

/// A virtio-blk device.
#[derive(Debug)]
pub struct Block {
    disk: Arc<DiskFile>,
    config: [u8; CONFIG_LEN],
    features: u64,
    acked_features: u64,
    queue_sizes: [u16; 1],
    worker: Option<Worker>,
}

impl Block {
    /// Opens the image `config` names; see [`DiskFile::open`] for what is
    /// refused.
    pub fn new(config: &DiskConfig) -> Result<Self, BlockError> {
        let disk = DiskFile::open(config)?;
        log::info!(
            "{NAME}: {} ({} sectors{})",
            disk.path().display(),
            disk.sectors(),
            if disk.readonly() { ", read-only" } else { "" }
        );
        Ok(Self::from_disk(disk))
    }

    /// A device over an already opened image.
    pub fn from_disk(disk: DiskFile) -> Self {
        let mut features = feature(VIRTIO_BLK_F_SEG_MAX)
            | feature(VIRTIO_BLK_F_BLK_SIZE)
            | feature(VIRTIO_BLK_F_FLUSH)
            | feature(VIRTIO_F_RING_INDIRECT_DESC);
        if disk.readonly() {
            features |= feature(VIRTIO_BLK_F_RO);
        }
        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&disk.sectors().to_le_bytes());
        // size_max (8..12) stays 0: not offered. seg_max: a request's
        // segments plus its header and status fit in the queue.
        config[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        Self {
            disk: Arc::new(disk),
            config,
            features,
            acked_features: 0,
            queue_sizes: [QUEUE_SIZE],
            worker: None,
        }
    }

    /// The image.
    pub fn disk(&self) -> &DiskFile {
        &self.disk
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether the worker thread runs.
    pub fn is_active(&self) -> bool {
        self.worker.is_some()
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "{NAME}: ignoring a {}-byte write at config offset {offset:#x}: the fields are read-only",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<DeviceQueue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        let disk = self.disk.clone();
        activate_single_queue(
            &mut self.worker,
            NAME,
            TYPE_BLOCK,
            mem,
            queues,
            interrupt,
            |queue| BlockHandler::new(queue, disk),
        )
    }

    fn reset(&mut self) {
        // Dropping the worker stops and joins its thread.
        self.worker = None;
        self.acked_features = 0;
    }
}

/// Copies `data.len()` bytes of `config` at `offset`; bytes past its end
/// read as 0.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = offset
            .checked_add(i as u64)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| config.get(o).copied())
            .unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;
    use vmm_sys_util::tempfile::TempFile;

    use super::*;
    use crate::virtio::block::request::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
    use crate::virtio::test_utils::{guest_memory, wait_for, RecordingInterrupt, TestQueue};

    fn block(readonly: bool, sectors: u64) -> (TempFile, Block) {
        let f = TempFile::new().unwrap();
        f.as_file().set_len(sectors * 512).unwrap();
        let b = Block::new(&DiskConfig {
            path: f.as_path().to_path_buf(),
            readonly,
        })
        .unwrap();
        (f, b)
    }

    fn config_u64(b: &Block, offset: u64) -> u64 {
        let mut v = [0u8; 8];
        b.read_config(offset, &mut v);
        u64::from_le_bytes(v)
    }

    #[test]
    fn features_and_config_space() {
        let (_f, rw) = block(false, 8);
        assert_eq!(rw.features() & feature(VIRTIO_BLK_F_RO), 0);
        assert_ne!(rw.features() & feature(VIRTIO_BLK_F_FLUSH), 0);
        assert_eq!(config_u64(&rw, 0), 8, "capacity in sectors");
        assert_eq!(config_u64(&rw, 12) as u32, 254, "seg_max");
        assert_eq!(config_u64(&rw, 20) as u32, 512, "blk_size");
        assert_eq!(
            config_u64(&rw, CONFIG_LEN as u64 - 4),
            0,
            "past the end reads 0"
        );
        let mut b = [0xffu8; 4];
        rw.read_config(u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
        let (_f, ro) = block(true, 1);
        assert_ne!(ro.features() & feature(VIRTIO_BLK_F_RO), 0);
        assert_eq!(ro.device_type(), TYPE_BLOCK);
        assert_eq!(ro.queue_max_sizes(), &[QUEUE_SIZE]);
    }

    #[test]
    fn write_config_is_ignored() {
        let (_f, mut b) = block(false, 8);
        b.write_config(0, &[1, 2, 3, 4]);
        assert_eq!(config_u64(&b, 0), 8);
    }

    #[test]
    fn activate_serves_requests_and_reset_stops() {
        let mem = guest_memory();
        let (f, mut b) = block(false, 4);
        f.as_file().write_all_at(&[0x42; 512], 512).unwrap();
        let irq = Arc::new(RecordingInterrupt::default());
        let mut tq = TestQueue::new(&mem, 16);
        let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let kick = event.try_clone().unwrap();

        // Queue 0 is required.
        let err = b
            .activate(mem.clone(), Vec::new(), irq.clone())
            .unwrap_err();
        assert!(matches!(err, ActivateError::MissingQueue { index: 0, .. }));

        b.ack_features(feature(VIRTIO_BLK_F_FLUSH));
        b.activate(
            mem.clone(),
            vec![DeviceQueue {
                index: 0,
                queue: tq.queue(),
                event: event.try_clone().unwrap(),
            }],
            irq.clone(),
        )
        .unwrap();
        assert!(b.is_active());
        let again = b.activate(mem.clone(), Vec::new(), irq.clone());
        assert!(matches!(again, Err(ActivateError::AlreadyActive { .. })));

        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        header[8..16].copy_from_slice(&1u64.to_le_bytes());
        mem.write_slice(&header, GuestAddress(0x1000)).unwrap();
        tq.add_chain(
            &mem,
            &[(0x1000, 16, false), (0x2000, 512, true), (0x3000, 1, true)],
        );
        kick.write(1).unwrap();
        assert!(wait_for(|| tq.used(&mem).len() == 1));
        assert_eq!(tq.used(&mem), vec![(0, 513)]);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x3000)).unwrap(),
            VIRTIO_BLK_S_OK
        );
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x21ff)).unwrap(), 0x42);
        assert!(wait_for(|| irq.take() == vec!["queue 0"]));

        b.reset();
        assert!(!b.is_active());
        assert_eq!(b.acked_features(), 0);
        // No thread serves the queue any more.
        tq.add_chain(
            &mem,
            &[(0x1000, 16, false), (0x2000, 512, true), (0x3000, 1, true)],
        );
        kick.write(1).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(tq.used(&mem).len(), 1);
    }
}
