//! A minimal QEMU fw_cfg device, legacy port-I/O interface only.
//!
//! One device over ports 0x510..=0x511 (base 0x510, length 2):
//!
//! * offset 0, the selector (0x510): a 16-bit write selects an item and
//!   rewinds its read offset to 0. Like QEMU, only 16-bit writes select;
//!   8-bit and other writes are ignored, and reads return 0.
//! * offset 1, the data port (0x511): each 8-bit read returns the next byte
//!   of the selected item, and 0 once past its end. Wider reads and all
//!   writes are ignored (reads return 0).
//!
//! Items: signature (0x0000, "QEMU"), ID (0x0001, 1 = traditional interface),
//! RAM size (0x0003), CPU count (0x0005), max CPU count (0x000f) and an
//! empty file directory (0x0019). Any other key reads as zeros. The write
//! channel bit (0x4000) of the selector is ignored, as in QEMU.
//!
//! What this module does not do: no DMA interface, no files (so no
//! `etc/e820`, ACPI tables or kernel loading through fw_cfg), no
//! arch-specific keys (0x8000 and up read as zeros).

use std::collections::BTreeMap;

use crate::bus::BusDevice;

/// Base port of fw_cfg on the port-I/O bus (the selector).
pub const FW_CFG_PORT_BASE: u64 = 0x510;
/// Length of the fw_cfg port range (selector and data port).
pub const FW_CFG_PORT_LEN: u64 = 2;

/// Offset of the 16-bit selector register.
const SELECTOR_OFFSET: u64 = 0;
/// Offset of the 8-bit data register.
const DATA_OFFSET: u64 = 1;
/// Selector bit asking for the (unsupported) write channel.
const WRITE_CHANNEL: u16 = 0x4000;

/// Well-known fw_cfg item keys.
pub mod keys {
    /// "QEMU" signature.
    pub const SIGNATURE: u16 = 0x0000;
    /// Interface ID bitmap (bit 0: traditional interface, bit 1: DMA).
    pub const ID: u16 = 0x0001;
    /// Guest RAM size in bytes, u64 little-endian.
    pub const RAM_SIZE: u16 = 0x0003;
    /// Number of boot CPUs, u16 little-endian.
    pub const NB_CPUS: u16 = 0x0005;
    /// Maximum number of CPUs, u16 little-endian.
    pub const MAX_CPUS: u16 = 0x000f;
    /// File directory: u32 big-endian count, then the entries.
    pub const FILE_DIR: u16 = 0x0019;
}

/// The fw_cfg device.
#[derive(Debug, Clone)]
pub struct FwCfg {
    /// Item contents by key; built once, never changed.
    items: BTreeMap<u16, Vec<u8>>,
    /// The key last written to the selector.
    selector: u16,
    /// Read position inside the selected item.
    offset: usize,
}

impl FwCfg {
    /// Creates a device reporting `ram_size` bytes of RAM and `cpus` CPUs
    /// (as both the boot and the maximum CPU count).
    pub fn new(ram_size: u64, cpus: u16) -> Self {
        let items = BTreeMap::from([
            (keys::SIGNATURE, b"QEMU".to_vec()),
            (keys::ID, 1u32.to_le_bytes().to_vec()),
            (keys::RAM_SIZE, ram_size.to_le_bytes().to_vec()),
            (keys::NB_CPUS, cpus.to_le_bytes().to_vec()),
            (keys::MAX_CPUS, cpus.to_le_bytes().to_vec()),
            (keys::FILE_DIR, 0u32.to_be_bytes().to_vec()),
        ]);
        Self {
            items,
            selector: keys::SIGNATURE,
            offset: 0,
        }
    }

    /// Selects `key` and rewinds to its first byte.
    fn select(&mut self, key: u16) {
        self.selector = key & !WRITE_CHANNEL;
        self.offset = 0;
    }

    /// Returns the next byte of the selected item, or 0 past its end or for
    /// an unknown key.
    fn next_byte(&mut self) -> u8 {
        let byte = self
            .items
            .get(&self.selector)
            .and_then(|item| item.get(self.offset))
            .copied();
        match byte {
            Some(b) => {
                self.offset += 1;
                b
            }
            None => 0,
        }
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (DATA_OFFSET, [byte]) => *byte = self.next_byte(),
            (_, data) => {
                log::debug!(
                    "fw_cfg: ignoring {}-byte read at offset {offset}",
                    data.len()
                );
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (SELECTOR_OFFSET, &[lo, hi]) => self.select(u16::from_le_bytes([lo, hi])),
            _ => log::debug!(
                "fw_cfg: ignoring {}-byte write at offset {offset}",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(dev: &mut FwCfg, key: u16) {
        dev.write(SELECTOR_OFFSET, &key.to_le_bytes());
    }

    fn read_n(dev: &mut FwCfg, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                let mut b = [0xffu8];
                dev.read(DATA_OFFSET, &mut b);
                b[0]
            })
            .collect()
    }

    fn item(dev: &mut FwCfg, key: u16, n: usize) -> Vec<u8> {
        select(dev, key);
        read_n(dev, n)
    }

    #[test]
    fn signature_then_zeros() {
        let mut dev = FwCfg::new(0, 1);
        assert_eq!(item(&mut dev, keys::SIGNATURE, 6), b"QEMU\0\0");
    }

    #[test]
    fn id_is_traditional_only() {
        let mut dev = FwCfg::new(0, 1);
        assert_eq!(item(&mut dev, keys::ID, 4), 1u32.to_le_bytes());
    }

    #[test]
    fn ram_size_is_u64_le() {
        let ram = 0x1_2345_6789u64;
        let mut dev = FwCfg::new(ram, 1);
        assert_eq!(item(&mut dev, keys::RAM_SIZE, 8), ram.to_le_bytes());
    }

    #[test]
    fn cpu_counts_are_u16_le() {
        let mut dev = FwCfg::new(0, 0x0102);
        assert_eq!(item(&mut dev, keys::NB_CPUS, 2), [0x02, 0x01]);
        assert_eq!(item(&mut dev, keys::MAX_CPUS, 2), [0x02, 0x01]);
    }

    #[test]
    fn file_dir_is_empty() {
        let mut dev = FwCfg::new(0, 1);
        assert_eq!(item(&mut dev, keys::FILE_DIR, 4), [0, 0, 0, 0]);
    }

    #[test]
    fn unknown_keys_read_zero() {
        let mut dev = FwCfg::new(1 << 30, 4);
        for key in [0x0002, 0x0020, 0x3fff, 0x8000, 0xffff] {
            assert_eq!(item(&mut dev, key, 4), [0; 4], "key {key:#x}");
        }
    }

    #[test]
    fn write_channel_bit_is_ignored() {
        let mut dev = FwCfg::new(0, 1);
        assert_eq!(item(&mut dev, WRITE_CHANNEL | keys::SIGNATURE, 4), b"QEMU");
    }

    #[test]
    fn reselect_rewinds() {
        let mut dev = FwCfg::new(0, 1);
        assert_eq!(item(&mut dev, keys::SIGNATURE, 2), b"QE");
        assert_eq!(item(&mut dev, keys::SIGNATURE, 4), b"QEMU");
        assert_eq!(item(&mut dev, keys::NB_CPUS, 1), [1]);
        assert_eq!(item(&mut dev, keys::SIGNATURE, 1), b"Q");
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let mut dev = FwCfg::new(0, 1);
        select(&mut dev, keys::SIGNATURE);
        // 8-bit selector writes do not select.
        dev.write(SELECTOR_OFFSET, &[keys::NB_CPUS as u8]);
        // Data port writes and wide reads do not advance.
        dev.write(DATA_OFFSET, &[0x55]);
        let mut wide = [0xffu8; 2];
        dev.read(DATA_OFFSET, &mut wide);
        assert_eq!(wide, [0, 0]);
        let mut sel = [0xffu8; 2];
        dev.read(SELECTOR_OFFSET, &mut sel);
        assert_eq!(sel, [0, 0]);
        dev.write(7, &[1, 2]);
        dev.read(u64::MAX, &mut []);
        assert_eq!(read_n(&mut dev, 4), b"QEMU");
    }
}
