//! Unit tests of the PCI root: slots, BAR placement, root ports.

use super::*;
use crate::bus::BusDevice;
use crate::pci::configuration::{COMMAND_IO_SPACE, COMMAND_MEMORY_SPACE};
use crate::pci::interrupt::test_utils::RecordingInterruptGroup;
use crate::pci::test_utils::{TestDevice, TEST_BAR0_SIZE};

type Moves = Arc<Mutex<Vec<(PciBdf, BarReprogram)>>>;

fn windows() -> PciWindows {
    PciWindows {
        mmio32: 0xc000_0000..0xe000_0000,
        mmio64: Some(0x40_0000_0000..0x80_0000_0000),
        io: Some(0xc000..0x10000),
    }
}

fn root_with_moves() -> (PciRoot, Moves) {
    let mut root = PciRoot::new(&windows()).unwrap();
    let moves: Moves = Arc::default();
    let m = moves.clone();
    root.set_bar_move_callback(Box::new(move |bdf, change| {
        m.lock().unwrap().push((bdf, *change));
    }));
    (root, moves)
}

fn test_device(with_io: bool) -> Arc<Mutex<TestDevice>> {
    let group = Arc::new(RecordingInterruptGroup::new(4));
    Arc::new(Mutex::new(TestDevice::new(group, with_io)))
}

fn bdf(dev: u8) -> PciBdf {
    PciBdf::new(0, dev, 0).unwrap()
}

fn write32(root: &mut PciRoot, bdf: PciBdf, offset: usize, v: u32) {
    root.config_write(bdf, offset / 4, 0, &v.to_le_bytes());
}

fn mmio_window(root: &PciRoot, base: u64) -> Arc<Mutex<PciBarWindow>> {
    root.window_devices()
        .into_iter()
        .find(|w| w.base == base)
        .unwrap()
        .device
}

fn mmio_read32(window: &Arc<Mutex<PciBarWindow>>, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    window.lock().unwrap().read(offset, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn host_bridge_at_slot_zero_and_absent_functions() {
    let mut root = PciRoot::new(&windows()).unwrap();
    assert_eq!(root.config_read(bdf(0), 0), 0x0d57_8086);
    assert_eq!(root.config_read(bdf(1), 0), u32::MAX);
    assert_eq!(root.config_read(PciBdf::new(0, 0, 1).unwrap(), 0), u32::MAX);
    assert_eq!(root.config_read(PciBdf::new(1, 0, 0).unwrap(), 0), u32::MAX);
    root.config_write(bdf(5), 1, 0, &[0xff; 4]);
    assert!(root.device(bdf(0)).is_some());
    assert!(root.device(bdf(1)).is_none());
}

#[test]
fn add_device_assigns_bars_without_enabling_decode() {
    let (mut root, moves) = root_with_moves();
    let d = root.add_device(test_device(true)).unwrap();
    assert_eq!(d, bdf(1));
    assert_eq!(root.config_read(d, 4), 0xc000_0000, "BAR 0 low");
    assert_eq!(root.config_read(d, 6), 0x0000_0004, "BAR 2: 64-bit, low");
    assert_eq!(root.config_read(d, 7), 0x40, "BAR 2 high");
    assert_eq!(root.config_read(d, 8), 0xc001, "BAR 4: I/O");
    assert_eq!(root.config_read(d, 1) & 0x3, 0, "decode off");
    assert!(moves.lock().unwrap().is_empty());
    assert_eq!(root.add_device(test_device(false)).unwrap(), bdf(2));
    assert_eq!(root.config_read(bdf(2), 4), 0xc000_1000);
}

#[test]
fn enabling_decode_maps_bars_and_reports_moves() {
    let (mut root, moves) = root_with_moves();
    let dev = test_device(true);
    let d = root.add_device(dev.clone()).unwrap();
    let low = mmio_window(&root, 0xc000_0000);
    let high = mmio_window(&root, 0x40_0000_0000);
    assert_eq!(mmio_read32(&low, 0), u32::MAX, "decode off: master abort");
    root.config_write(d, 1, 0, &[(COMMAND_MEMORY_SPACE | COMMAND_IO_SPACE) as u8]);
    let got = std::mem::take(&mut *moves.lock().unwrap());
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[0],
        (
            d,
            BarReprogram {
                bar: 0,
                kind: PciBarKind::Memory32,
                size: TEST_BAR0_SIZE,
                old: None,
                new: Some(0xc000_0000)
            }
        )
    );
    assert_eq!(got[1].1.new, Some(0x40_0000_0000));
    assert_eq!(got[2].1.new, Some(0xc000));
    // BAR 0 is scratch memory; BAR 2 holds the MSI-X table.
    low.lock().unwrap().write(8, &0xabcdu32.to_le_bytes());
    assert_eq!(mmio_read32(&low, 8), 0xabcd);
    assert_eq!(dev.lock().unwrap().bar0[8], 0xcd);
    assert_eq!(mmio_read32(&high, 12), 1, "vector 0 masked");
    let io = root
        .window_devices()
        .into_iter()
        .find(|w| w.kind == PciWindowKind::Io)
        .unwrap();
    let mut b = [0u8; 1];
    io.device.lock().unwrap().read(0, &mut b);
    assert_eq!(b, [0x10], "I/O BAR reads its offset + 0x10");
}

#[test]
fn relocation_moves_the_dispatch() {
    let (mut root, moves) = root_with_moves();
    let d = root.add_device(test_device(false)).unwrap();
    root.config_write(d, 1, 0, &[COMMAND_MEMORY_SPACE as u8]);
    moves.lock().unwrap().clear();
    let low = mmio_window(&root, 0xc000_0000);
    write32(&mut root, d, 0x10, 0xc010_0000);
    assert_eq!(
        moves.lock().unwrap()[0].1,
        BarReprogram {
            bar: 0,
            kind: PciBarKind::Memory32,
            size: TEST_BAR0_SIZE,
            old: Some(0xc000_0000),
            new: Some(0xc010_0000)
        }
    );
    low.lock().unwrap().write(0x10_0004, &[0x5a]);
    let mut b = [0u8; 1];
    low.lock().unwrap().read(0x10_0004, &mut b);
    assert_eq!(b, [0x5a]);
    low.lock().unwrap().read(0x4, &mut b);
    assert_eq!(b, [0xff], "old place is empty");
    // Sizing with decode on unmaps, restoring remaps at the same place.
    moves.lock().unwrap().clear();
    write32(&mut root, d, 0x10, u32::MAX);
    assert_eq!(root.config_read(d, 4), !(TEST_BAR0_SIZE as u32 - 1));
    write32(&mut root, d, 0x10, 0xc010_0000);
    let got: Vec<_> = moves
        .lock()
        .unwrap()
        .iter()
        .map(|m| (m.1.old, m.1.new))
        .collect();
    assert_eq!(
        got,
        vec![(Some(0xc010_0000), None), (None, Some(0xc010_0000))]
    );
}

#[test]
fn garbage_bar_address_is_refused_with_error_status() {
    let (mut root, moves) = root_with_moves();
    let d = root.add_device(test_device(false)).unwrap();
    root.config_write(d, 1, 0, &[COMMAND_MEMORY_SPACE as u8]);
    moves.lock().unwrap().clear();
    // Over guest RAM, far from any window.
    write32(&mut root, d, 0x10, 0x0010_0000);
    assert_eq!(moves.lock().unwrap()[0].1.new, None, "unmapped");
    let status = (root.config_read(d, 1) >> 16) as u16;
    assert_ne!(status & STATUS_SIGNALED_SYSTEM_ERROR, 0);
    assert_eq!(mmio_read32(&mmio_window(&root, 0xc000_0000), 0), u32::MAX);
    // The guest clears the bit and moves the BAR back into the window.
    root.config_write(d, 1, 2, &STATUS_SIGNALED_SYSTEM_ERROR.to_le_bytes());
    let status = (root.config_read(d, 1) >> 16) as u16;
    assert_eq!(status & STATUS_SIGNALED_SYSTEM_ERROR, 0);
    write32(&mut root, d, 0x10, 0xc000_0000);
    assert_eq!(moves.lock().unwrap()[1].1.new, Some(0xc000_0000));
    // A 64-bit BAR straddling the end of the 64-bit window is refused too.
    write32(&mut root, d, 0x1c, 0x7f);
    write32(&mut root, d, 0x18, 0xffff_c000);
    let bar2 = root.placement(1, 2).unwrap();
    assert_eq!(bar2.wanted, Some(0x7f_ffff_c000));
    assert!(bar2.mapped, "ends exactly at the window end");
    write32(&mut root, d, 0x1c, 0x80);
    assert!(!root.placement(1, 2).unwrap().mapped);
}

#[test]
fn overlapping_bar_waits_until_the_other_moves() {
    let (mut root, moves) = root_with_moves();
    let a = root.add_device(test_device(false)).unwrap();
    let b = root.add_device(test_device(false)).unwrap();
    for d in [a, b] {
        root.config_write(d, 1, 0, &[COMMAND_MEMORY_SPACE as u8]);
    }
    moves.lock().unwrap().clear();
    // b's BAR 0 onto a's.
    write32(&mut root, b, 0x10, 0xc000_0000);
    assert_eq!(moves.lock().unwrap().len(), 1, "b only unmapped");
    assert_eq!(
        (root.config_read(b, 1) >> 16) as u16 & STATUS_SIGNALED_SYSTEM_ERROR,
        0
    );
    // a moves away: b appears.
    write32(&mut root, a, 0x10, 0xc020_0000);
    let got: Vec<_> = moves
        .lock()
        .unwrap()
        .iter()
        .map(|m| (m.0, m.1.old, m.1.new))
        .collect();
    assert_eq!(
        got,
        vec![
            (b, Some(0xc000_1000), None),
            (a, Some(0xc000_0000), Some(0xc020_0000)),
            (b, None, Some(0xc000_0000)),
        ]
    );
    let low = mmio_window(&root, 0xc000_0000);
    low.lock().unwrap().write(0, &[7]);
    let dev_b = root.device(b).unwrap();
    let mut byte = [0u8];
    dev_b.lock().unwrap().bar_read(0, 0, &mut byte);
    assert_eq!(byte, [7]);
}

#[test]
fn slots_run_out() {
    let mut root = PciRoot::new(&windows()).unwrap();
    for i in 1..32 {
        assert_eq!(root.add_device(test_device(false)).unwrap(), bdf(i));
    }
    let err = root.add_device(test_device(false)).unwrap_err();
    assert!(matches!(err, PciRootError::NoFreeSlot));
    assert!(err.to_string().contains("use fewer PCI devices"));
}

#[test]
fn failed_allocation_rolls_back() {
    let mut root = PciRoot::new(&PciWindows {
        mmio32: 0xc000_0000..0xc000_2000,
        mmio64: None,
        io: None,
    })
    .unwrap();
    // BAR 0 and the 64-bit BAR 2 (16 KiB) do not both fit in 8 KiB.
    let err = root.add_device(test_device(false)).unwrap_err();
    assert!(
        matches!(err, PciRootError::BarAllocation { bar: 2, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("no room for a 16 KiB BAR"),
        "{err}"
    );
    let err = root.add_device(test_device(true)).unwrap_err();
    assert!(matches!(err, PciRootError::BarAllocation { .. }));
    assert!(root.device(bdf(1)).is_none());
    // BAR 0's page was given back.
    assert!(root
        .allocator
        .allocate(PciBarKind::Memory32, 0x2000)
        .is_ok());
}

#[test]
fn invalid_windows_are_reported() {
    let err = PciRoot::new(&PciWindows {
        mmio32: 0xc000_0000..0x1_2000_0000,
        mmio64: None,
        io: None,
    })
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("fix the VM memory layout"),
        "{err}"
    );
}

mod ports {
    use super::*;
    use crate::pci::hotplug_slot::{SLTCTL_PCC, SLTCTL_PWR_IND_ON};
    use crate::pci::root_port::{RootPort, RootPortWindows};

    /// A root with a device at 00:01.0 and two root ports (00:02.0, 00:03.0) on buses 1
    /// and 2, windows carved from the root's.
    fn root_with_ports() -> (PciRoot, Moves, Vec<Arc<Mutex<RootPort>>>) {
        let (mut root, moves) = root_with_moves();
        root.add_device(test_device(false)).unwrap();
        let mut ports = Vec::new();
        for i in 0..2u8 {
            let windows = RootPortWindows {
                mem: root.reserve_window(false, 1 << 20).unwrap(),
                pref: root.reserve_window(true, 1 << 24).unwrap(),
            };
            let group = Arc::new(RecordingInterruptGroup::new(1));
            let port = Arc::new(Mutex::new(
                RootPort::new(i + 1, i + 1, &windows, false, group).unwrap(),
            ));
            let (index, at) = root.add_root_port(port.clone()).unwrap();
            assert_eq!((index, at), (usize::from(i), bdf(2 + i)));
            ports.push(port);
        }
        (root, moves, ports)
    }

    fn power_on(root: &mut PciRoot, port: PciBdf) {
        // Slot control is at 0x50 + 0x18 in the root port.
        root.config_write(port, 0x68 / 4, 0, &SLTCTL_PWR_IND_ON.to_le_bytes());
    }

    #[test]
    fn reserved_windows_are_not_handed_to_bars() {
        let (mut root, _, ports) = root_with_ports();
        let w0 = ports[0].lock().unwrap().windows();
        assert_eq!(w0.mem.start % (1 << 20), 0);
        assert!(w0.pref.start >= 0x40_0000_0000, "64-bit window used");
        let d = root.add_device(test_device(false)).unwrap();
        let bar0 = u64::from(root.config_read(d, 4) & !0xf);
        for p in &ports {
            let w = p.lock().unwrap().windows();
            assert!(!w.mem.contains(&bar0), "{bar0:#x} in {:?}", w.mem);
        }
    }

    #[test]
    fn config_cycles_route_by_programmed_bus_numbers() {
        let (mut root, _, ports) = root_with_ports();
        let dev = test_device(false);
        root.plug(0, dev.clone()).unwrap();
        assert!(matches!(
            root.plug(0, test_device(false)),
            Err(PciRootError::PortOccupied(0))
        ));
        assert!(matches!(
            root.plug(5, test_device(false)),
            Err(PciRootError::NoSuchPort(5))
        ));
        let child = PciBdf::new(1, 0, 0).unwrap();
        assert_eq!(root.config_read(child, 0), u32::MAX, "slot powered off");
        ports[0].lock().unwrap().insert();
        assert_eq!(root.config_read(child, 0), u32::MAX, "present, not powered");
        power_on(&mut root, bdf(2));
        assert_eq!(root.config_read(child, 0), 0x1041_1af4);
        // Only device 0, function 0 on the secondary bus; nothing on the other port's bus.
        for other in [(1, 1, 0), (1, 0, 1), (2, 0, 0), (3, 0, 0)] {
            let b = PciBdf::new(other.0, other.1, other.2).unwrap();
            assert_eq!(root.config_read(b, 0), u32::MAX, "{b}");
        }
        // The guest renumbers: port 0 to bus 5 (subordinate 6), port 1 to bus 7.
        root.config_write(bdf(2), 6, 0, &0x0006_0500u32.to_le_bytes());
        root.config_write(bdf(3), 6, 0, &0x0007_0700u32.to_le_bytes());
        assert_eq!(root.config_read(child, 0), u32::MAX);
        let moved = PciBdf::new(5, 0, 0).unwrap();
        assert_eq!(root.config_read(moved, 0), 0x1041_1af4);
        assert_eq!(root.config_read(PciBdf::new(6, 0, 0).unwrap(), 0), u32::MAX);
        // Writes reach the function at its new address.
        root.config_write(moved, 1, 0, &[COMMAND_MEMORY_SPACE as u8]);
        assert_eq!(dev.lock().unwrap().config.command(), COMMAND_MEMORY_SPACE);
        // Powering off hides it again.
        root.config_write(bdf(2), 0x68 / 4, 0, &SLTCTL_PCC.to_le_bytes());
        assert_eq!(root.config_read(moved, 0), u32::MAX);
    }

    #[test]
    fn bars_behind_a_port_map_and_unplug_unmaps_them() {
        let (mut root, moves, ports) = root_with_ports();
        let dev = test_device(false);
        root.plug(1, dev.clone()).unwrap();
        ports[1].lock().unwrap().insert();
        power_on(&mut root, bdf(3));
        let child = PciBdf::new(2, 0, 0).unwrap();
        let mem = ports[1].lock().unwrap().windows().mem;
        // The guest assigns BAR 0 from the port's window and enables decode.
        let addr = mem.start as u32;
        write32(&mut root, child, 0x10, addr);
        write32(&mut root, child, 0x04, u32::from(COMMAND_MEMORY_SPACE));
        let m = moves.lock().unwrap().clone();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].0, bdf(3), "reported under the port's address");
        assert_eq!(m[0].1.new, Some(mem.start));
        let window = mmio_window(&root, 0xc000_0000);
        assert_eq!(
            mmio_read32(&window, mem.start - 0xc000_0000),
            0,
            "BAR 0 of the test device reads its scratch"
        );
        assert_eq!(root.mapped_bars().len(), 1);

        let out = root.unplug(1).unwrap();
        assert!(Arc::ptr_eq(
            &(out as Arc<Mutex<dyn PciDevice>>),
            &(dev as Arc<Mutex<dyn PciDevice>>)
        ));
        let m = moves.lock().unwrap().clone();
        assert_eq!(m.len(), 2);
        assert_eq!((m[1].1.old, m[1].1.new), (Some(mem.start), None));
        assert!(root.mapped_bars().is_empty());
        assert!(root.unplug(1).is_none());
        assert!(root.plugged(1).is_none());
        // The slot takes a new function.
        root.plug(1, test_device(false)).unwrap();
        assert!(root.plugged(1).is_some());
    }

    /// Guest garbage on the ports and the buses behind them: random bus numbers, windows,
    /// slot and MSI writes, and accesses to every bus, while the VMM plugs, inserts,
    /// presses the button and unplugs. Nothing may panic and the BAR map stays inside the
    /// PCI windows and disjoint.
    #[test]
    fn fuzz_ports_and_buses_behind_them() {
        use crate::pci::test_utils::XorShift;
        let (mut root, moves, ports) = root_with_ports();
        let mut rng = XorShift::new(0x5eed_1234_abcd_0001);
        let lens = [1usize, 2, 4, 4, 3, 8];
        let mut plugged = [false, false];
        let mut children_seen = 0;
        for _ in 0..100_000 {
            let value = match rng.below(5) {
                0 => u64::MAX,
                1 => 0,
                2 => rng.below(4) << 8 | rng.below(4) << 16,
                3 => 0x40_0000_0000 + rng.below(4) * 0x1000,
                _ => rng.next_u64(),
            };
            let bytes = value.to_le_bytes();
            let len = rng.pick(&lens);
            match rng.below(14) {
                12 => {
                    // A sane guest step: number the port's bus, power its slot on.
                    let i = rng.below(2) as u8;
                    let bus = 1 + rng.below(3) as u32;
                    root.config_write(bdf(2 + i), 6, 0, &(bus << 16 | bus << 8).to_le_bytes());
                    power_on(&mut root, bdf(2 + i));
                    // Place BAR 0 of the function behind it in the port's window, decode on.
                    let mem = ports[usize::from(i)].lock().unwrap().windows().mem;
                    let addr = mem.start.wrapping_add(rng.below(16) * 0x1000) as u32;
                    let child = PciBdf::new(bus as u8, 0, 0).unwrap();
                    root.config_write(child, 4, 0, &addr.to_le_bytes());
                    root.config_write(child, 1, 0, &[COMMAND_MEMORY_SPACE as u8]);
                }
                0..=3 => {
                    let port = bdf(2 + rng.below(2) as u8);
                    let reg = rng.pick(&[1usize, 6, 8, 9, 10, 11, 15, 16, 17, 19, 20, 26, 1023]);
                    let offset = rng.below(4);
                    root.config_write(port, reg, offset, &bytes[..len]);
                }
                4..=6 => {
                    let b = PciBdf::new(rng.below(4) as u8, rng.below(2) as u8, 0).unwrap();
                    let reg = rng.pick(&[0usize, 1, 4, 5, 6, 7, 8, 9, 64]);
                    if rng.below(2) == 0 {
                        root.config_write(b, reg, 0, &bytes[..len]);
                    } else if b.bus() != 0 && root.config_read(b, reg) != u32::MAX {
                        children_seen += 1;
                    }
                }
                7 => {
                    let i = rng.below(2) as usize;
                    if plugged[i] {
                        assert!(root.unplug(i).is_some());
                    } else {
                        root.plug(i, test_device(false)).unwrap();
                    }
                    plugged[i] = !plugged[i];
                }
                8 => ports[rng.below(2) as usize].lock().unwrap().insert(),
                9 => ports[rng.below(2) as usize].lock().unwrap().press_button(),
                10 => ports[rng.below(2) as usize].lock().unwrap().eject(),
                _ => {
                    let w = mmio_window(&root, 0xc000_0000);
                    let mut b = [0u8; 4];
                    w.lock().unwrap().read(rng.below(0x200_0000), &mut b);
                }
            }
        }
        assert!(
            children_seen > 100,
            "{children_seen} reads reached a function behind a port"
        );
        let port_moves = moves
            .lock()
            .unwrap()
            .iter()
            .filter(|(b, _)| b.device() >= 2)
            .count();
        assert!(port_moves > 10, "{port_moves} BAR moves behind the ports");
        let mapped = root.mapped_bars();
        for (i, &(b, bar, kind, addr, size)) in mapped.iter().enumerate() {
            assert!(root.allows(kind, addr, size), "{b} BAR {bar} at {addr:#x}");
            for &(other, obar, _, oaddr, osize) in &mapped[i + 1..] {
                assert!(
                    addr + size <= oaddr || oaddr + osize <= addr,
                    "{b} BAR {bar} overlaps {other} BAR {obar}"
                );
            }
        }
        assert_eq!(root.config_read(bdf(2), 0), 0x000c_1b36, "ports survive");
    }
}
