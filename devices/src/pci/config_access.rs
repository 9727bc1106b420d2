//! The two ways a guest reaches PCI config space: ECAM (MMIO, both arches)
//! and configuration mechanism #1 (ports 0xcf8/0xcfc, x86 only).
//!
//! * [`PciConfigMmio`] decodes ECAM offsets, `bus << 20 | device << 15 |
//!   function << 12 | register`, over as many buses as the VMM maps (256
//!   MiB for all 256; only bus 0 is populated). Every function has 4 KiB.
//! * [`PciConfigIo`] holds the CONFIG_ADDRESS register at 0xcf8 (dword
//!   accesses only: enable bit 31, bus 23:16, device 15:11, function 10:8,
//!   register 7:2) and forwards 1-, 2- and 4-byte accesses to CONFIG_DATA at
//!   0xcfc..=0xcff to the addressed register. It reaches the first 256 bytes
//!   only.
//!
//! Accesses to absent functions, with the enable bit clear, or that
//! straddle a dword read as all-ones and are dropped on write.
//!
//! What this module does not do: the 0xcf9 reset control register (byte
//! accesses to 0xcf8..=0xcfb are ignored) and AMD's extended-register bits
//! 27:24 of CONFIG_ADDRESS (ignored).

use std::sync::{Arc, Mutex, PoisonError};

use super::bdf::PciBdf;
use super::configuration::read_dword_bytes;
use super::root::PciRoot;
use crate::bus::BusDevice;

/// First port of configuration mechanism #1 (CONFIG_ADDRESS).
pub const PCI_CONFIG_IO_PORT: u64 = 0xcf8;
/// Number of ports: CONFIG_ADDRESS (4) and CONFIG_DATA (4).
pub const PCI_CONFIG_IO_PORT_LEN: u64 = 8;
/// ECAM bytes per bus (32 devices x 8 functions x 4 KiB).
pub const ECAM_BUS_SIZE: u64 = 1 << 20;
/// ECAM bytes for all 256 buses.
pub const ECAM_MAX_SIZE: u64 = 256 * ECAM_BUS_SIZE;

/// CONFIG_ADDRESS: configuration cycles enabled.
const CONFIG_ADDRESS_ENABLE: u32 = 1 << 31;
/// CONFIG_ADDRESS bits that are stored: enable, bus, device, function,
/// register. The rest read as 0.
const CONFIG_ADDRESS_MASK: u32 = 0x80ff_fffc;

/// Splits an ECAM offset into function, register index and byte offset.
fn ecam_decode(offset: u64) -> Option<(PciBdf, usize, u64)> {
    if offset >= ECAM_MAX_SIZE {
        return None;
    }
    let bdf = PciBdf::from_requester_id((offset >> 12) as u16);
    Some((bdf, ((offset & 0xfff) >> 2) as usize, offset & 3))
}

/// ECAM: config space as MMIO.
pub struct PciConfigMmio {
    root: Arc<Mutex<PciRoot>>,
}

impl PciConfigMmio {
    /// ECAM over `root`; insert it on the MMIO bus at the ECAM base with a
    /// size of [`ECAM_BUS_SIZE`] times the number of buses described to the
    /// guest (up to [`ECAM_MAX_SIZE`]).
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        Self { root }
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some((bdf, reg_idx, byte)) = ecam_decode(offset) else {
            data.fill(0xff);
            return;
        };
        let value = self
            .root
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .config_read(bdf, reg_idx);
        read_dword_bytes(value, byte, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((bdf, reg_idx, byte)) = ecam_decode(offset) {
            self.root
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .config_write(bdf, reg_idx, byte, data);
        }
    }
}

/// Configuration mechanism #1: ports 0xcf8..=0xcff.
pub struct PciConfigIo {
    root: Arc<Mutex<PciRoot>>,
    /// CONFIG_ADDRESS, reserved bits cleared.
    address: u32,
}

impl PciConfigIo {
    /// Port I/O config access over `root`; insert it on the port-I/O bus at
    /// [`PCI_CONFIG_IO_PORT`] with length [`PCI_CONFIG_IO_PORT_LEN`].
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        Self { root, address: 0 }
    }

    /// The function and register CONFIG_ADDRESS selects, if enabled.
    fn target(&self) -> Option<(PciBdf, usize)> {
        (self.address & CONFIG_ADDRESS_ENABLE != 0).then(|| {
            let bdf = PciBdf::from_requester_id((self.address >> 8) as u16);
            (bdf, ((self.address & 0xfc) >> 2) as usize)
        })
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 => match self.target() {
                Some((bdf, reg_idx)) => {
                    let value = self
                        .root
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .config_read(bdf, reg_idx);
                    read_dword_bytes(value, offset - 4, data);
                }
                None => data.fill(0xff),
            },
            _ => {
                log::debug!(
                    "{}-byte read at offset {offset} of the PCI config ports: CONFIG_ADDRESS \
                     takes dword accesses only; reading all-ones",
                    data.len()
                );
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 => match <[u8; 4]>::try_from(data) {
                Ok(bytes) => self.address = u32::from_le_bytes(bytes) & CONFIG_ADDRESS_MASK,
                Err(_) => log::debug!(
                    "ignoring {}-byte write to CONFIG_ADDRESS: dword accesses only",
                    data.len()
                ),
            },
            4..=7 => {
                if let Some((bdf, reg_idx)) = self.target() {
                    self.root
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .config_write(bdf, reg_idx, offset - 4, data);
                }
            }
            _ => log::debug!(
                "ignoring {}-byte write at offset {offset} of the PCI config ports (0xcf9 \
                 reset control is not implemented)",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::bar_alloc::{PciWindowKind, PciWindows};
    use crate::pci::configuration::COMMAND_MEMORY_SPACE;
    use crate::pci::interrupt::test_utils::RecordingInterruptGroup;
    use crate::pci::test_utils::{TestDevice, XorShift, TEST_VECTORS};

    fn setup() -> (Arc<Mutex<PciRoot>>, Vec<Arc<Mutex<TestDevice>>>) {
        let mut root = PciRoot::new(&PciWindows {
            mmio32: 0xc000_0000..0xe000_0000,
            mmio64: Some(0x40_0000_0000..0x80_0000_0000),
            io: Some(0xc000..0x10000),
        })
        .unwrap();
        let devs: Vec<_> = [false, true]
            .into_iter()
            .map(|io| {
                let group = Arc::new(RecordingInterruptGroup::new(TEST_VECTORS));
                let dev = Arc::new(Mutex::new(TestDevice::new(group, io)));
                root.add_device(dev.clone()).unwrap();
                dev
            })
            .collect();
        (Arc::new(Mutex::new(root)), devs)
    }

    fn read32(dev: &mut dyn BusDevice, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        dev.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn ecam_offset(dev: u64, func: u64, reg: u64) -> u64 {
        dev << 15 | func << 12 | reg
    }

    #[test]
    fn ecam_decode_reaches_functions_and_registers() {
        let (root, _devs) = setup();
        let mut ecam = PciConfigMmio::new(root);
        assert_eq!(read32(&mut ecam, 0), 0x0d57_8086);
        assert_eq!(read32(&mut ecam, ecam_offset(1, 0, 0)), 0x1041_1af4);
        assert_eq!(read32(&mut ecam, ecam_offset(2, 0, 0x10)), 0xc000_1000);
        assert_eq!(
            read32(&mut ecam, ecam_offset(3, 0, 0)),
            u32::MAX,
            "absent device"
        );
        assert_eq!(
            read32(&mut ecam, ecam_offset(1, 1, 0)),
            u32::MAX,
            "function 1"
        );
        assert_eq!(read32(&mut ecam, ECAM_BUS_SIZE), u32::MAX, "bus 1");
        assert_eq!(read32(&mut ecam, ECAM_MAX_SIZE), u32::MAX);
        assert_eq!(read32(&mut ecam, u64::MAX), u32::MAX);
        assert_eq!(
            read32(&mut ecam, ecam_offset(1, 0, 0x100)),
            0,
            "empty extended space"
        );
        let mut w = [0u8; 2];
        ecam.read(ecam_offset(1, 0, 2), &mut w);
        assert_eq!(w, [0x41, 0x10]);
        ecam.read(ecam_offset(1, 0, 3), &mut w);
        assert_eq!(w, [0xff, 0xff], "straddles the dword");
        let mut q = [0u8; 8];
        ecam.read(0, &mut q);
        assert_eq!(q, [0xff; 8]);
        // Writes: sub-dword to the command register of device 1.
        ecam.write(ecam_offset(1, 0, 4), &[COMMAND_MEMORY_SPACE as u8]);
        assert_eq!(read32(&mut ecam, ecam_offset(1, 0, 4)) & 0xffff, 2);
        ecam.write(ecam_offset(1, 0, 7), &[0xff, 0xff]);
        ecam.write(ECAM_MAX_SIZE + 4, &[0xff; 4]);
        assert_eq!(read32(&mut ecam, ecam_offset(1, 0, 4)) & 0xffff, 2);
    }

    #[test]
    fn cf8_address_register_and_data_port() {
        let (root, devs) = setup();
        let mut io = PciConfigIo::new(root);
        // Reserved bits (30:24, 1:0) read as 0.
        io.write(0, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(read32(&mut io, 0), CONFIG_ADDRESS_MASK);
        // Enable clear: data reads all-ones, writes do nothing.
        io.write(0, &0x0000_0800u32.to_le_bytes());
        assert_eq!(read32(&mut io, 4), u32::MAX);
        // 00:01.0 register 0.
        io.write(0, &0x8000_0800u32.to_le_bytes());
        assert_eq!(read32(&mut io, 4), 0x1041_1af4);
        let mut b = [0u8; 1];
        io.read(7, &mut b);
        assert_eq!(b, [0x10]);
        let mut w = [0u8; 2];
        io.read(6, &mut w);
        assert_eq!(w, [0x41, 0x10]);
        io.read(7, &mut w);
        assert_eq!(w, [0xff, 0xff], "straddles the data dword");
        // 00:01.0 register 1 (command), a byte write at 0xcfc.
        io.write(0, &0x8000_0804u32.to_le_bytes());
        io.write(4, &[COMMAND_MEMORY_SPACE as u8]);
        assert_eq!(
            devs[0].lock().unwrap().config.command(),
            COMMAND_MEMORY_SPACE
        );
        // Function 1, bus 1 and absent devices read all-ones.
        for address in [0x8000_0900u32, 0x8001_0000, 0x8000_1800] {
            io.write(0, &address.to_le_bytes());
            assert_eq!(read32(&mut io, 4), u32::MAX, "{address:#x}");
        }
        // Host bridge, and AMD extended register bits are ignored.
        io.write(0, &0x8f00_0000u32.to_le_bytes());
        assert_eq!(read32(&mut io, 0), 0x8000_0000);
        assert_eq!(read32(&mut io, 4), 0x0d57_8086);
    }

    #[test]
    fn cf8_partial_address_accesses_are_ignored() {
        let (root, _devs) = setup();
        let mut io = PciConfigIo::new(root);
        io.write(0, &0x8000_0800u32.to_le_bytes());
        io.write(1, &[0x06]); // 0xcf9 reset control
        io.write(0, &[0x00, 0x00]);
        io.write(3, &[0]);
        assert_eq!(read32(&mut io, 0), 0x8000_0800);
        let mut b = [0u8; 2];
        io.read(0, &mut b);
        assert_eq!(b, [0xff, 0xff]);
        io.read(2, &mut b);
        assert_eq!(b, [0xff, 0xff]);
        io.read(8, &mut b);
        assert_eq!(b, [0xff, 0xff]);
        io.write(9, &[0xff]);
    }

    /// Random writes and reads to every register of every function and to
    /// every BAR, through all three adapters: nothing may panic, and the
    /// root's BAR map must stay inside the windows and disjoint.
    #[test]
    fn fuzz_registers_and_bars() {
        let (root, devs) = setup();
        let mut ecam = PciConfigMmio::new(root.clone());
        let mut io = PciConfigIo::new(root.clone());
        let windows = root.lock().unwrap().window_devices();
        let moves = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = moves.clone();
        root.lock()
            .unwrap()
            .set_bar_move_callback(Box::new(move |_, _| {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }));
        let mut bar_hits = 0;
        let mut rng = XorShift::new(0x9e37_79b9_7f4a_7c15);
        let lens = [1usize, 2, 4, 4, 4, 4, 3, 8, 0];
        for _ in 0..200_000 {
            // Mostly structured garbage: values and registers that move BARs.
            let value = match rng.below(7) {
                0 => u64::MAX,
                1 => 0,
                2 => 0xc000_0000 + rng.below(16) * 0x1000 + rng.below(2) * 0x10_0000,
                3 => rng.below(16),
                4 => 0x40 | rng.below(8),
                5 => 0xc000 + rng.below(8) * 0x20 + 1,
                _ => rng.next_u64(),
            };
            let bytes = value.to_le_bytes();
            let len = rng.pick(&lens);
            let dev = rng.pick(&[0u64, 1, 1, 2, 2, 3, 31]);
            let reg = match rng.below(4) {
                0 => rng.below(0x1000),
                1 => rng.below(0x40),
                2 => rng.pick(&[0x04, 0x06, 0x40]),
                _ => 0x10 + rng.below(6) * 4,
            } + if len == 1 { rng.below(4) } else { 0 };
            match rng.below(10) {
                0..=2 => ecam.write(ecam_offset(dev, rng.below(2), reg), &bytes[..len]),
                3 => ecam.read(ecam_offset(dev, 0, reg), &mut vec![0; len]),
                4 => {
                    let address = (rng.below(2) as u32) << 31 | (dev as u32) << 11 | reg as u32;
                    io.write(0, &address.to_le_bytes());
                    if rng.below(2) == 0 {
                        io.write(4 + rng.below(4), &bytes[..len]);
                    } else {
                        io.read(4 + rng.below(4), &mut vec![0; len]);
                    }
                }
                5..=8 => {
                    // Aim at where a BAR of device 1 or 2 is programmed.
                    let target = PciBdf::new(0, 1 + rng.below(2) as u8, 0).unwrap();
                    let bar = rng.pick(&[0usize, 2, 4]);
                    let mut r = root.lock().unwrap();
                    let low = u64::from(r.config_read(target, 4 + bar) & !0xf);
                    let high = u64::from(r.config_read(target, 5 + bar));
                    drop(r);
                    let (kind, hint) = match bar {
                        0 => (PciWindowKind::Mmio32, low),
                        2 => (PciWindowKind::Mmio64, high << 32 | low),
                        _ => (PciWindowKind::Io, low),
                    };
                    let w = if rng.below(4) == 0 {
                        &windows[rng.below(windows.len() as u64) as usize]
                    } else {
                        windows.iter().find(|w| w.kind == kind).unwrap()
                    };
                    let offset = match rng.below(4) {
                        0 => rng.below(0x8000),
                        1 => w.len.wrapping_sub(rng.below(16)),
                        _ => hint.wrapping_sub(w.base).wrapping_add(rng.below(0x110)),
                    };
                    // The VMM bus only passes accesses inside the window.
                    if offset < w.len && w.len - offset >= len as u64 {
                        let mut window = w.device.lock().unwrap();
                        let mut probe = [0u8; 1];
                        window.read(offset, &mut probe);
                        bar_hits += usize::from(probe != [0xff]);
                        if rng.below(2) == 0 {
                            window.write(offset, &bytes[..len]);
                        } else {
                            window.read(offset, &mut vec![0; len]);
                        }
                    }
                }
                _ => {
                    let d = &devs[rng.below(2) as usize];
                    let _ = d.lock().unwrap().msix.trigger(rng.below(6) as u16);
                }
            }
        }
        // The run must have exercised BAR moves and BAR accesses.
        let moves = moves.load(std::sync::atomic::Ordering::Relaxed);
        assert!(moves > 100, "{moves} BAR moves");
        assert!(bar_hits > 100, "{bar_hits} accesses hit a BAR");
        let root = root.lock().unwrap();
        let mapped = root.mapped_bars();
        for (i, &(bdf, bar, kind, addr, size)) in mapped.iter().enumerate() {
            assert!(
                root.allows(kind, addr, size),
                "{bdf} BAR {bar} at {addr:#x}"
            );
            for &(other, obar, okind, oaddr, osize) in &mapped[i + 1..] {
                assert!(
                    kind.is_memory() != okind.is_memory()
                        || addr + size <= oaddr
                        || oaddr + osize <= addr,
                    "{bdf} BAR {bar} overlaps {other} BAR {obar}"
                );
            }
        }
        drop(root);
        assert_eq!(
            read32(&mut ecam, 0),
            0x0d57_8086,
            "host bridge identity survives"
        );
    }
}
