//! Tests of [`VfioPciFunction`] against [`FakeVfioDevice`], a recording interrupt group and
//! fake memory slots.

use std::error::Error;

use devices::pci::MsiMessage;

use super::*;
use crate::fake_vfio::{FakeBarKind, FakeOp, FakePciBuilder, FakeVfioDevice, FakeVfioHandle};
use crate::hypervisor::{FakeInterruptGroup, FakeMemslots};

const PAGE: u64 = 0x1000;

struct Rig {
    f: VfioPciFunction,
    dev: FakeVfioHandle,
    group: Arc<FakeInterruptGroup>,
    slots: Arc<FakeMemslots>,
}

fn opts() -> PciFunctionOptions {
    PciFunctionOptions {
        page_size: PAGE,
        io_bars: true,
    }
}

type Groups = Option<Arc<FakeInterruptGroup>>;

fn build(
    dev: FakeVfioDevice,
) -> (
    Result<VfioPciFunction, VfioPciError>,
    FakeVfioHandle,
    Groups,
    Arc<FakeMemslots>,
) {
    let handle = dev.handle();
    let slots = Arc::new(FakeMemslots::default());
    let mut made = None;
    let result = {
        let mut factory =
            |n: u16| -> Result<Arc<dyn MsiInterruptGroup>, Box<dyn Error + Send + Sync>> {
                let g = Arc::new(FakeInterruptGroup::new(n)?);
                made = Some(g.clone());
                Ok(g)
            };
        VfioPciFunction::new("test", Box::new(dev), &mut factory, slots.clone(), &opts())
            .map_err(|(e, _device)| e)
    };
    (result, handle, made, slots)
}

fn setup(dev: FakeVfioDevice) -> Rig {
    let (f, dev, group, slots) = build(dev);
    Rig {
        f: f.unwrap(),
        dev,
        group: group.unwrap(),
        slots,
    }
}

fn read8(f: &mut VfioPciFunction, off: usize) -> u8 {
    (f.config_read(off / 4) >> (8 * (off % 4))) as u8
}

fn read32(f: &mut VfioPciFunction, off: usize) -> u32 {
    f.config_read(off / 4)
}

fn write(f: &mut VfioPciFunction, off: usize, data: &[u8]) -> Vec<BarReprogram> {
    f.config_write(off / 4, (off % 4) as u64, data)
}

fn cap_offset(f: &VfioPciFunction, id: u8) -> usize {
    f.capabilities().iter().find(|c| c.id == id).unwrap().offset
}

fn device_command(h: &FakeVfioHandle) -> u16 {
    let c = h.config();
    u16::from_le_bytes([c[4], c[5]])
}

#[test]
fn capability_list_is_filtered_and_virtio_caps_stay_visible() {
    let mut r = setup(FakeVfioDevice::virtio_blk());
    let f = &mut r.f;
    assert_eq!(f.config_read(0), 0x1042_1af4);
    assert_eq!(read8(f, 0x0e), 0, "single-function header");
    assert_eq!(read8(f, 0x3d), 0, "no INTx pin");
    let mut ids = Vec::new();
    let mut p = usize::from(read8(f, 0x34));
    while p != 0 {
        ids.push(read8(f, p));
        p = usize::from(read8(f, p + 1));
    }
    assert_eq!(ids, vec![0x11, 9, 9, 9, 9, 9, 0x01, 0x10]);
    // The hidden capability's bytes read 0.
    let af = cap_offset(f, 0x13);
    assert_eq!(read32(f, af), 0);
    // Vendor capabilities read exactly what the device has past the header.
    let device = r.dev.config();
    for c in f.capabilities().to_vec().iter().filter(|c| c.id == 9) {
        let expected = &device[c.offset + 2..c.offset + c.len];
        let got: Vec<u8> = (c.offset + 2..c.offset + c.len)
            .map(|o| read8(f, o))
            .collect();
        assert_eq!(got, expected, "vendor cap at {:#x}", c.offset);
    }
    // MSI-X: 5 vectors, table in BAR 1 at 0, PBA in BAR 1 at 0x800.
    let m = cap_offset(f, 0x11);
    assert_eq!(read32(f, m) >> 16, 4);
    assert_eq!(read32(f, m + 4), 1);
    assert_eq!(read32(f, m + 8), 0x801);
    // No extended capabilities; past ECAM all-ones.
    assert_eq!(f.config_read(0x100 / 4), 0);
    assert_eq!(f.config_read(1024), u32::MAX);
}

#[test]
fn bar_sizing_and_relocation_never_reach_the_device() {
    let mut r = setup(FakeVfioDevice::virtio_blk());
    let f = &mut r.f;
    let bars = f.bars();
    assert_eq!(bars.len(), 2);
    assert_eq!((bars[1].config.index, bars[1].config.size), (4, 0x4000));
    assert!(bars[1].config.prefetchable);
    write(f, 0x20, &u32::MAX.to_le_bytes());
    write(f, 0x24, &u32::MAX.to_le_bytes());
    assert_eq!(read32(f, 0x20), 0xffff_c00c);
    assert_eq!(read32(f, 0x24), u32::MAX);
    write(f, 0x20, &0u32.to_le_bytes());
    write(f, 0x24, &1u32.to_le_bytes());
    write(f, 0x14, &0xc000_0000u32.to_le_bytes());
    let changes = write(f, 0x04, &COMMAND_MEMORY.to_le_bytes());
    let new: Vec<(usize, Option<u64>)> = changes.iter().map(|c| (c.bar, c.new)).collect();
    assert_eq!(new, vec![(1, Some(0xc000_0000)), (4, Some(0x1_0000_0000))]);
    let touched_bars = r
        .dev
        .record()
        .config_writes
        .iter()
        .any(|(o, d)| *o < 0x28 && *o + d.len() as u64 > 0x10);
    assert!(!touched_bars, "guest BAR writes must stay in the shadow");
}

#[test]
fn command_register_forwards_decode_and_bus_master_with_intx_disabled() {
    let mut r = setup(FakeVfioDevice::virtio_blk());
    assert_eq!(device_command(&r.dev), COMMAND_INTX_DISABLE, "set at setup");
    let guest = COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | 1 << 6;
    write(&mut r.f, 0x04, &guest.to_le_bytes());
    assert_eq!(device_command(&r.dev), 0x0407);
    assert_eq!(r.f.config_read(1) & 0xffff, u32::from(guest));
    write(&mut r.f, 0x04, &[0, 0]);
    assert_eq!(device_command(&r.dev), COMMAND_INTX_DISABLE);
    // Status writes stay in the shadow.
    let before = r.dev.record().config_writes.len();
    write(&mut r.f, 0x06, &[0xff, 0xff]);
    assert_eq!(r.dev.record().config_writes.len(), before);
}

#[test]
fn msix_enable_routes_vectors_and_binds_the_device_to_the_irqfds() {
    let mut r = setup(FakeVfioDevice::virtio_blk());
    let f = &mut r.f;
    let msg = MsiMessage {
        address: 0xfee0_1000,
        data: 0x41,
    };
    f.bar_write(1, 0, &(msg.address as u32).to_le_bytes());
    f.bar_write(1, 4, &0u32.to_le_bytes());
    f.bar_write(1, 8, &msg.data.to_le_bytes());
    f.bar_write(1, 12, &0u32.to_le_bytes());
    assert!(r.group.take_updates().is_empty(), "MSI-X still disabled");
    let m = cap_offset(f, 0x11);
    write(f, m + 3, &[0x80]);
    assert_eq!(r.group.take_updates(), vec![(0, msg, false)]);
    assert!(f.interrupts_bound());
    assert_eq!(
        r.dev.record().set_irqs,
        vec![(VFIO_PCI_MSIX_IRQ_INDEX, 0, r.group.notifier_fds())]
    );
    assert_eq!(read32(f, m) >> 16, 0x8004);
    // The table reads back; the PBA reads 0; masking disables the route.
    let mut b = [0u8; 4];
    f.bar_read(1, 8, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x41);
    f.bar_read(1, 0x800, &mut b);
    assert_eq!(b, [0; 4]);
    f.bar_write(1, 12, &1u32.to_le_bytes());
    assert_eq!(r.group.take_updates(), vec![(0, msg, true)]);
    // Table writes never reach the device; other BAR 1 registers do.
    f.bar_write(1, 0x400, &[7]);
    assert_eq!(r.dev.record().region_writes, vec![(1, 0x400, vec![7])]);
    write(f, m + 3, &[0]);
    assert_eq!(r.dev.record().disabled, vec![VFIO_PCI_MSIX_IRQ_INDEX]);
    assert!(!f.interrupts_bound());
    // A failing SET_IRQS leaves the vectors unbound (logged), and a retry works.
    r.dev.fail_next(FakeOp::SetIrqs, libc::ENOSPC);
    write(f, m + 3, &[0x80]);
    assert!(!f.interrupts_bound());
    write(f, m + 3, &[0]);
    write(f, m + 3, &[0x80]);
    assert!(f.interrupts_bound());
}

#[test]
fn msix_table_pages_are_trapped_and_the_rest_is_mapped() {
    let r = setup(FakeVfioDevice::virtio_blk());
    assert!(r.f.mmap_areas(1).is_empty(), "BAR 1 is the table's page");
    let areas = r.f.mmap_areas(4);
    assert_eq!((areas[0].0, areas[0].1), (0, 0x4000));

    // Table and PBA sharing page 2 of an 8-page BAR with other registers.
    let dev = FakePciBuilder::new(0x8086, 0x1234, 0x02_00_00)
        .bar(0, FakeBarKind::Mem32, 0x8000, true)
        .msix(4, 0, 0x2000, 0, 0x2800)
        .build();
    let mut r = setup(dev);
    let areas: Vec<(u64, u64)> = r.f.mmap_areas(0).iter().map(|a| (a.0, a.1)).collect();
    assert_eq!(areas, vec![(0, 0x2000), (0x3000, 0x5000)]);
    r.f.bar_write(0, 0x2100, &[1, 2, 3, 4]);
    r.f.bar_write(0, 0x2000, &[1, 2, 3, 4]);
    assert_eq!(
        r.dev.record().region_writes,
        vec![(0, 0x2100, vec![1, 2, 3, 4])]
    );
    let mut b = [0u8; 4];
    r.f.bar_read(0, 0x2100, &mut b);
    assert_eq!(b, [1, 2, 3, 4], "forwarded to the device");
}

#[test]
fn memory_slots_follow_bar_moves_and_memory_decode() {
    let mut r = setup(FakeVfioDevice::virtio_blk());
    let host = r.f.mmap_areas(4)[0].2;
    let change = |old, new| BarReprogram {
        bar: 4,
        kind: PciBarKind::Memory64,
        size: 0x4000,
        old,
        new,
    };
    r.f.bar_moved(&change(None, Some(0x1_0000_0000)));
    let s = r.slots.slots();
    assert_eq!(
        (s[0].gpa, s[0].len, s[0].host),
        (0x1_0000_0000, 0x4000, host)
    );
    r.f.bar_moved(&change(Some(0x1_0000_0000), Some(0x2_0000_0000)));
    assert_eq!(r.slots.slots()[0].gpa, 0x2_0000_0000);
    assert_eq!(r.f.memslot_count(), 1);
    // BAR 1 (the MSI-X page) gets no slot.
    r.f.bar_moved(&BarReprogram {
        bar: 1,
        kind: PciBarKind::Memory32,
        size: 0x1000,
        old: None,
        new: Some(0xc000_0000),
    });
    assert_eq!(r.slots.slots().len(), 1);
    // Memory decode off: the slots go before the device stops decoding.
    write(&mut r.f, 0x04, &COMMAND_MEMORY.to_le_bytes());
    write(&mut r.f, 0x04, &[0, 0]);
    assert!(r.slots.slots().is_empty());
    assert_eq!(r.f.memslot_count(), 0);
}

#[test]
fn msi_without_msix_is_emulated_with_one_vector() {
    let mut r = setup(FakeVfioDevice::edu());
    let f = &mut r.f;
    assert_eq!(cap_offset(f, 0x05), 0x40);
    assert_eq!(
        read32(f, 0x40) & 0xffff_00ff,
        0x0080_0005,
        "64-bit, one message"
    );
    write(f, 0x44, &0xfee0_1003u32.to_le_bytes());
    write(f, 0x48, &0u32.to_le_bytes());
    write(f, 0x4c, &0x41u16.to_le_bytes());
    assert!(r.group.take_updates().is_empty());
    write(f, 0x42, &[0x71, 0]); // enable, and MME bits the guest may not set
    let msg = MsiMessage {
        address: 0xfee0_1000,
        data: 0x41,
    };
    assert_eq!(r.group.take_updates(), vec![(0, msg, false)]);
    assert_eq!(read32(f, 0x40) >> 16, 0x0081);
    assert_eq!(read32(f, 0x44), 0xfee0_1000);
    assert_eq!(
        r.dev.record().set_irqs,
        vec![(VFIO_PCI_MSI_IRQ_INDEX_FOR_TESTS, 0, r.group.notifier_fds())]
    );
    // A new data value while enabled re-routes.
    write(f, 0x4c, &0x42u16.to_le_bytes());
    assert_eq!(r.group.take_updates()[0].1.data, 0x42);
    write(f, 0x42, &[0, 0]);
    assert!(r.group.take_updates()[0].2, "masked");
    assert_eq!(
        r.dev.record().disabled,
        vec![VFIO_PCI_MSI_IRQ_INDEX_FOR_TESTS]
    );
    // BAR 0 is mapped whole (no MSI-X table to trap).
    assert_eq!(r.f.mmap_areas(0).len(), 1);
}

const VFIO_PCI_MSI_IRQ_INDEX_FOR_TESTS: u32 = crate::vfio_device::VFIO_PCI_MSI_IRQ_INDEX;

#[test]
fn passed_capabilities_forward_only_what_may_change() {
    let mut r = setup(FakeVfioDevice::virtio_blk());
    let e = cap_offset(&r.f, 0x10);
    write(&mut r.f, e + 8, &0x2810u16.to_le_bytes());
    assert_eq!(&r.dev.config()[e + 8..e + 10], &0x2810u16.to_le_bytes());
    assert_eq!(read32(&mut r.f, e + 8) & 0xffff, 0x2810, "read live");
    let before = r.dev.record().config_writes.len();
    write(&mut r.f, e + 0x0c, &u32::MAX.to_le_bytes()); // link capabilities: read-only
    write(&mut r.f, e, &[0x99, 0x99]); // ID and next: virtual
    assert_eq!(r.dev.record().config_writes.len(), before);
    assert_eq!(read8(&mut r.f, e), 0x10);
    // virtio's PCI-cfg access window (last vendor cap) is live device state.
    let pcicfg =
        r.f.capabilities()
            .iter()
            .filter(|c| c.id == 9)
            .nth(4)
            .unwrap()
            .offset;
    write(&mut r.f, pcicfg + 16, &0xabcd_1234u32.to_le_bytes());
    assert_eq!(read32(&mut r.f, pcicfg + 16), 0xabcd_1234);
    // A dword write across the end of a capability into a hidden one is split.
    let af = cap_offset(&r.f, 0x13);
    write(&mut r.f, af, &u32::MAX.to_le_bytes());
    assert_eq!(read32(&mut r.f, af), 0);
}

#[test]
fn setup_failures_name_the_step_and_return_the_device() {
    let dev = FakePciBuilder::new(1, 2, 0)
        .bar(0, FakeBarKind::Mem32, 0x1000, true)
        .build();
    let (err, ..) = build(dev);
    assert!(matches!(err.unwrap_err(), VfioPciError::NoMsi));

    for (op, step) in [
        (FakeOp::Read, "reading the config space"),
        (FakeOp::RegionInfo, "querying BAR 0"),
        (FakeOp::IrqInfo, "querying the MSI-X vectors"),
    ] {
        let dev = FakeVfioDevice::virtio_blk();
        dev.handle().fail_next(op, libc::EIO);
        let handle = dev.handle();
        let err = build(dev).0.unwrap_err();
        assert!(err.to_string().starts_with(step), "{err}");
        assert!(!handle.is_open(), "the device came back and was dropped");
        assert_eq!(handle.live_mappings(), 0);
    }

    // A refused mmap leaves the BAR trapped, not the setup failed.
    let dev = FakeVfioDevice::edu();
    dev.handle().fail_next(FakeOp::Mmap, libc::EINVAL);
    let r = setup(dev);
    assert!(r.f.mmap_areas(0).is_empty());

    // The interrupt manager's refusal.
    let dev = FakeVfioDevice::edu();
    let slots = Arc::new(FakeMemslots::default());
    let mut refuse = |_n: u16| -> Result<Arc<dyn MsiInterruptGroup>, Box<dyn Error + Send + Sync>> {
        Err("no free GSI".into())
    };
    let (err, _device) =
        VfioPciFunction::new("t", Box::new(dev), &mut refuse, slots, &opts()).unwrap_err();
    assert!(err.to_string().contains("no free GSI"), "{err}");

    // A non-power-of-two region cannot be a BAR.
    let dev = FakePciBuilder::new(1, 2, 0)
        .bar(0, FakeBarKind::Mem32, 0x3000, false)
        .msi(false, false)
        .build();
    let err = build(dev).0.unwrap_err();
    assert!(
        matches!(
            err,
            VfioPciError::Bar {
                bar: 0,
                size: 0x3000,
                ..
            }
        ),
        "{err}"
    );

    // An MSI-X table past its BAR.
    let dev = FakePciBuilder::new(1, 2, 0)
        .bar(0, FakeBarKind::Mem32, 0x1000, false)
        .msix(4, 0, 0x1000, 0, 0x800)
        .build();
    let err = build(dev).0.unwrap_err();
    assert!(err.to_string().contains("MSI-X table"), "{err}");
}

#[test]
fn shutdown_disconnects_everything_and_hands_the_device_back() {
    let mut r = setup(FakeVfioDevice::virtio_blk());
    let m = cap_offset(&r.f, 0x11);
    write(&mut r.f, m + 3, &[0x80]);
    r.f.bar_moved(&BarReprogram {
        bar: 4,
        kind: PciBarKind::Memory64,
        size: 0x4000,
        old: None,
        new: Some(0x1_0000_0000),
    });
    let device = r.f.shutdown().unwrap();
    assert_eq!(r.dev.record().disabled, vec![VFIO_PCI_MSIX_IRQ_INDEX]);
    assert!(r.slots.slots().is_empty());
    assert_eq!(r.dev.live_mappings(), 0);
    assert!(r.dev.is_open());
    assert_eq!(r.f.config_read(0), u32::MAX);
    let mut b = [0u8; 4];
    r.f.bar_read(4, 0, &mut b);
    assert_eq!(b, [0xff; 4]);
    assert!(r.f.shutdown().is_none());
    drop(device);
    assert!(!r.dev.is_open());
}

#[test]
fn dropping_the_function_cleans_up_too() {
    let mut r = setup(FakeVfioDevice::edu());
    write(&mut r.f, 0x42, &[1, 0]);
    r.f.bar_moved(&BarReprogram {
        bar: 0,
        kind: PciBarKind::Memory32,
        size: 0x10_0000,
        old: None,
        new: Some(0xc000_0000),
    });
    let Rig { f, dev, slots, .. } = r;
    drop(f);
    assert!(slots.slots().is_empty());
    assert_eq!(dev.live_mappings(), 0);
    assert!(!dev.is_open());
    assert_eq!(
        dev.record().disabled,
        vec![VFIO_PCI_MSI_IRQ_INDEX_FOR_TESTS]
    );
}

/// Any guest access sequence is harmless: no panic, no write to the device's BARs.
#[test]
fn random_guest_accesses_do_not_panic() {
    let mut r = setup(FakeVfioDevice::virtio_blk());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let v = next();
        let len = [1usize, 2, 4, 8, 3, 0][(v % 6) as usize];
        let data: Vec<u8> = (0..len).map(|i| (v >> (8 * i)) as u8).collect();
        match (v >> 40) % 4 {
            0 => {
                write(&mut r.f, ((v >> 16) % 0x1100) as usize, &data);
            }
            1 => {
                r.f.config_read(((v >> 16) % 1100) as usize);
            }
            2 => {
                let mut d = data.clone();
                r.f.bar_read(((v >> 16) % 7) as usize, (v >> 24) % 0x4000, &mut d);
            }
            _ => {
                r.f.bar_write(((v >> 16) % 7) as usize, (v >> 24) % 0x4000, &data)
            }
        }
    }
    let touched_bars = r
        .dev
        .record()
        .config_writes
        .iter()
        .any(|(o, d)| *o < 0x28 && *o + d.len() as u64 > 0x10);
    assert!(!touched_bars);
}
