//! PCI configuration space and BAR writes through the root complex, as vCPUs make them:
//! ECAM and 0xCF8/0xCFC accesses to the host bridge, a virtio-rng function and a VFIO
//! function over a fake virtio-blk device (its virtualized config space: BARs, command
//! register, MSI-X capability), and MMIO/port accesses to wherever the guest put the
//! BARs (the virtio common configuration, the MSI-X tables and PBAs, trapped VFIO BARs).
//! BAR moves follow the VMM's path: the root's callback moves the VFIO function's memory
//! slots.
//!
//! Input: a list of operations (see [`run`]); the devices are built fresh for each input.

use std::sync::{Arc, Mutex};

use devices::bus::Bus;
use devices::pci::{
    MsiInterruptGroup, PciConfigIo, PciConfigMmio, PciRoot, PciWindowKind, PciWindows,
    ECAM_BUS_SIZE, PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_PORT_LEN,
};
use devices::virtio::pci::VirtioPciDevice;
use devices::virtio::rng::Rng;
use passthrough::hypervisor::{FakeInterruptGroup, FakeMemslots};
use passthrough::{FakeVfioDevice, PciFunctionOptions, VfioPciFunction};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::Input;

const ECAM: u64 = 0xe000_0000;
const MAX_OPS: usize = 512;

pub(crate) struct Machine {
    mmio: Bus,
    pio: Bus,
    // Kept alive for the buses' adapters.
    _root: Arc<Mutex<PciRoot>>,
}

fn machine() -> Option<Machine> {
    let windows = PciWindows {
        mmio32: 0xc000_0000..0xe000_0000,
        mmio64: Some(0x40_0000_0000..0x50_0000_0000),
        io: Some(0xc000..0x1_0000),
    };
    let mut root = PciRoot::new(&windows).ok()?;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).ok()?;

    let mut groups = |n: u16| -> Result<
        Arc<dyn MsiInterruptGroup>,
        Box<dyn std::error::Error + Send + Sync>,
    > { Ok(Arc::new(FakeInterruptGroup::new(n)?)) };
    let function = VfioPciFunction::new(
        "fuzz",
        Box::new(FakeVfioDevice::virtio_blk()),
        &mut groups,
        Arc::new(FakeMemslots::default()),
        &PciFunctionOptions {
            page_size: 4096,
            io_bars: true,
        },
    )
    .ok()?;
    let function = Arc::new(Mutex::new(function));
    let vfio_bdf = root.add_device(function.clone()).ok()?;
    root.set_bar_move_callback(Box::new(move |bdf, r| {
        if bdf == vfio_bdf {
            function
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .bar_moved(r);
        }
    }));

    let rng = Box::new(Rng::new().ok()?);
    let vectors = VirtioPciDevice::msix_vector_count(rng.as_ref());
    let group: Arc<dyn MsiInterruptGroup> = Arc::new(FakeInterruptGroup::new(vectors).ok()?);
    let virtio = VirtioPciDevice::new(rng, mem, group).ok()?;
    root.add_device(Arc::new(Mutex::new(virtio))).ok()?;

    let window_devices = root.window_devices();
    let root = Arc::new(Mutex::new(root));
    let mut mmio = Bus::new();
    let mut pio = Bus::new();
    mmio.insert(
        Arc::new(Mutex::new(PciConfigMmio::new(root.clone()))),
        ECAM,
        ECAM_BUS_SIZE,
    )
    .ok()?;
    pio.insert(
        Arc::new(Mutex::new(PciConfigIo::new(root.clone()))),
        PCI_CONFIG_IO_PORT,
        PCI_CONFIG_IO_PORT_LEN,
    )
    .ok()?;
    for w in window_devices {
        let bus = if w.kind == PciWindowKind::Io {
            &mut pio
        } else {
            &mut mmio
        };
        bus.insert(w.device, w.base, w.len).ok()?;
    }
    Some(Machine {
        mmio,
        pio,
        _root: root,
    })
}

fn size(i: &mut Input) -> usize {
    [1, 2, 4, 8][usize::from(i.u8() % 4)]
}

/// ECAM address of register byte `reg` of device `dev` (function bits from `dev` too).
fn ecam(dev: u8, reg: u16) -> u64 {
    ECAM + (u64::from(dev) << 12) + u64::from(reg & 0xfff)
}

/// Where BAR `bar` of slot `slot` decodes now (from its config registers): (address, I/O?).
fn bar_address(m: &Machine, slot: u8, bar: u8) -> (u64, bool) {
    let read = |reg: u16| {
        let mut b = [0u8; 4];
        m.mmio.read(ecam(slot << 3, reg), &mut b);
        u32::from_le_bytes(b)
    };
    let bar = u16::from(bar % 6);
    let low = read(0x10 + 4 * bar);
    if low & 1 != 0 {
        return (u64::from(low & !3), true);
    }
    let high = if low & 0b110 == 0b100 && bar < 5 {
        read(0x14 + 4 * bar)
    } else {
        0
    };
    ((u64::from(high) << 32) | u64::from(low & !0xf), false)
}

/// A fresh machine, for building seeds.
#[cfg(test)]
pub(crate) fn test_machine() -> Machine {
    machine().expect("the fuzz machine builds")
}

/// Register `reg` (dword) of slot `slot`'s config space, through ECAM.
#[cfg(test)]
pub(crate) fn test_config_read(m: &Machine, slot: u8, reg: u16) -> u32 {
    let mut b = [0u8; 4];
    m.mmio.read(ecam(slot << 3, reg & !3), &mut b);
    u32::from_le_bytes(b) >> (8 * (reg & 3))
}

/// The target. Each operation is a byte (kind) then its operands:
///
/// * 0/1: ECAM write/read: device-function byte, register (u16), size, data;
/// * 2/3: BAR write/read: slot (0-3), BAR, offset (u16), size, data;
/// * 4/5: 0xCF8 address (u32), then a 0xCFC..0xCFF write/read: port byte, size, data.
pub fn run(data: &[u8]) {
    let Some(m) = machine() else { return };
    let mut i = Input::new(data);
    for _ in 0..MAX_OPS {
        if i.is_empty() {
            break;
        }
        let kind = i.u8() % 6;
        match kind {
            0 | 1 => {
                let addr = ecam(i.u8(), i.u16());
                let mut buf = vec![0u8; size(&mut i)];
                if kind == 0 {
                    let src = i.bytes(buf.len());
                    buf[..src.len()].copy_from_slice(src);
                    m.mmio.write(addr, &buf);
                } else {
                    m.mmio.read(addr, &mut buf);
                }
            }
            2 | 3 => {
                let (slot, bar) = (i.u8() % 4, i.u8());
                let (base, io) = bar_address(&m, slot, bar);
                let addr = base.wrapping_add(u64::from(i.u16()));
                let bus = if io { &m.pio } else { &m.mmio };
                let mut buf = vec![0u8; size(&mut i)];
                if kind == 2 {
                    let src = i.bytes(buf.len());
                    buf[..src.len()].copy_from_slice(src);
                    bus.write(addr, &buf);
                } else {
                    bus.read(addr, &mut buf);
                }
            }
            _ => {
                m.pio.write(PCI_CONFIG_IO_PORT, &i.u32().to_le_bytes());
                let port = PCI_CONFIG_IO_PORT + 4 + u64::from(i.u8() % 4);
                let mut buf = vec![0u8; size(&mut i)];
                if kind == 4 {
                    let src = i.bytes(buf.len());
                    buf[..src.len()].copy_from_slice(src);
                    m.pio.write(port, &buf);
                } else {
                    m.pio.read(port, &mut buf);
                }
            }
        }
    }
}
