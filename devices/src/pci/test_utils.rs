//! Test doubles shared by the PCI unit tests: a device with a scratch
//! memory BAR, an MSI-X BAR and an optional I/O BAR, and a deterministic
//! PRNG for fuzz-style tests.

use std::sync::Arc;

use super::configuration::{
    BarReprogram, PciBar, PciBarConfig, PciBarKind, PciConfiguration, PciIds,
};
use super::device::PciDevice;
use super::interrupt::test_utils::RecordingInterruptGroup;
use super::msix::{MsixConfig, MsixLayout};

/// Size of the scratch memory BAR 0.
pub const TEST_BAR0_SIZE: u64 = 0x100;
/// Size of BAR 2, which holds the MSI-X table (at 0) and PBA (at 0x2000).
pub const TEST_MSIX_BAR_SIZE: u64 = 0x4000;
/// Number of MSI-X vectors of the test device.
pub const TEST_VECTORS: u16 = 4;

/// A device built the way real ones are: `PciConfiguration` + `MsixConfig`.
pub struct TestDevice {
    /// Config space.
    pub config: PciConfiguration,
    /// MSI-X state, in BAR 2.
    pub msix: MsixConfig,
    /// BAR 0 contents.
    pub bar0: [u8; TEST_BAR0_SIZE as usize],
}

impl TestDevice {
    /// A device with BAR 0 (32-bit, scratch), BAR 2 (64-bit, MSI-X) and, if
    /// `with_io`, BAR 4 (32 I/O ports reading `offset + 0x10`).
    pub fn new(group: Arc<RecordingInterruptGroup>, with_io: bool) -> Self {
        let mut config = PciConfiguration::new(&PciIds {
            vendor_id: 0x1af4,
            device_id: 0x1041,
            class_code: 0xff,
            ..PciIds::default()
        });
        let bars = [
            (0, PciBarKind::Memory32, TEST_BAR0_SIZE),
            (2, PciBarKind::Memory64, TEST_MSIX_BAR_SIZE),
        ];
        for (index, kind, size) in bars {
            config
                .add_bar(PciBarConfig {
                    index,
                    kind,
                    size,
                    prefetchable: false,
                })
                .unwrap();
        }
        if with_io {
            config
                .add_bar(PciBarConfig {
                    index: 4,
                    kind: PciBarKind::Io,
                    size: 0x20,
                    prefetchable: false,
                })
                .unwrap();
        }
        let mut msix = MsixConfig::new(
            MsixLayout {
                vectors: TEST_VECTORS,
                table_bar: 2,
                table_offset: 0,
                pba_bar: 2,
                pba_offset: 0x2000,
            },
            group,
        )
        .unwrap();
        msix.add_capability(&mut config).unwrap();
        Self {
            config,
            msix,
            bar0: [0; TEST_BAR0_SIZE as usize],
        }
    }
}

impl PciDevice for TestDevice {
    fn config_read(&mut self, reg_idx: usize) -> u32 {
        self.config.read_reg(reg_idx)
    }

    fn config_write(&mut self, reg_idx: usize, offset: u64, data: &[u8]) -> Vec<BarReprogram> {
        let changes = self.config.write_reg(reg_idx, offset, data);
        self.msix.config_written(&self.config, reg_idx);
        changes
    }

    fn bars(&self) -> Vec<PciBar> {
        self.config.bars()
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if self.msix.bar_read(bar, offset, data) {
            return;
        }
        match bar {
            0 => match usize::try_from(offset)
                .ok()
                .and_then(|o| self.bar0.get(o..o.checked_add(data.len())?))
            {
                Some(src) => data.copy_from_slice(src),
                None => data.fill(0xff),
            },
            4 => data
                .iter_mut()
                .zip(offset..)
                .for_each(|(b, o)| *b = o as u8 + 0x10),
            _ => data.fill(0xff),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if self.msix.bar_write(bar, offset, data) || bar != 0 {
            return;
        }
        if let Some(dst) = usize::try_from(offset)
            .ok()
            .and_then(|o| self.bar0.get_mut(o..o.checked_add(data.len())?))
        {
            dst.copy_from_slice(data);
        }
    }
}

/// xorshift64: a small deterministic PRNG, good enough to fuzz with.
pub struct XorShift(u64);

impl XorShift {
    /// A generator from a non-zero seed.
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number below `n` (> 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// One of `items`.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}
