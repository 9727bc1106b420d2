//! Unit tests of the parent module.

use super::*;

fn ids() -> PciIds {
    PciIds {
        vendor_id: 0x1af4,
        device_id: 0x1041,
        revision_id: 1,
        prog_if: 0x02,
        subclass: 0x80,
        class_code: 0x02,
        subsystem_vendor_id: 0x1af4,
        subsystem_id: 0x1100,
    }
}

fn write32(c: &mut PciConfiguration, offset: usize, v: u32) -> Vec<BarReprogram> {
    c.write(offset, &v.to_le_bytes())
}

fn bar(index: usize, kind: PciBarKind, size: u64) -> PciBarConfig {
    PciBarConfig {
        index,
        kind,
        size,
        prefetchable: false,
    }
}

fn enable_memory(c: &mut PciConfiguration) -> Vec<BarReprogram> {
    c.write(COMMAND_OFFSET, &COMMAND_MEMORY_SPACE.to_le_bytes())
}

#[test]
fn identity_registers() {
    let c = PciConfiguration::new(&ids());
    assert_eq!(c.read_reg(0), 0x1041_1af4);
    assert_eq!(c.read_reg(2), 0x0280_0201);
    assert_eq!(c.read_reg(3), 0, "header type 0, single function");
    assert_eq!(c.read_reg(11), 0x1100_1af4);
    assert_eq!(c.read_reg(PCI_CONFIG_REGS), u32::MAX);
    assert_eq!(c.read_reg(usize::MAX), u32::MAX);
}

#[test]
fn read_only_registers_keep_their_value() {
    let mut c = PciConfiguration::new(&ids());
    for offset in [0x00, 0x08, 0x2c, 0x34] {
        let before = c.read_u32(offset);
        assert!(write32(&mut c, offset, 0xdead_beef).is_empty());
        assert_eq!(c.read_u32(offset), before, "offset {offset:#x}");
    }
    // Header type / BIST are read-only, cache line size is not.
    write32(&mut c, 0x0c, u32::MAX);
    assert_eq!(c.read_u32(0x0c), 0xff);
    // Interrupt line is writable, pin is not.
    c.set_interrupt_pin(1);
    write32(&mut c, INTERRUPT_LINE_OFFSET, 0xffff_ff0a);
    assert_eq!(c.read_u32(INTERRUPT_LINE_OFFSET), 0x010a);
}

#[test]
fn command_mask_and_status_write_one_to_clear() {
    let mut c = PciConfiguration::new(&ids());
    write32(&mut c, COMMAND_OFFSET, 0xffff_ffff);
    assert_eq!(c.command(), COMMAND_WRITABLE);
    // Status bits are not guest-settable ...
    assert_eq!(c.status(), 0);
    // ... but the device sets them and the guest clears them with 1s.
    c.set_bytes(
        STATUS_OFFSET,
        &(0xf900u16 | STATUS_CAPABILITIES_LIST).to_le_bytes(),
    )
    .unwrap();
    c.write(STATUS_OFFSET, &STATUS_SIGNALED_SYSTEM_ERROR.to_le_bytes());
    assert_eq!(c.status(), 0xb900 | STATUS_CAPABILITIES_LIST);
    // A command-only write does not clear status bits.
    c.write(COMMAND_OFFSET, &0xffffu16.to_le_bytes());
    assert_eq!(c.status(), 0xb900 | STATUS_CAPABILITIES_LIST);
    // Writing all-ones clears them, except the read-only capability bit.
    write32(&mut c, COMMAND_OFFSET, u32::MAX);
    assert_eq!(c.status(), STATUS_CAPABILITIES_LIST);
}

#[test]
fn sub_dword_writes_merge() {
    let mut c = PciConfiguration::new(&ids());
    c.write(INTERRUPT_LINE_OFFSET, &[0x0b]);
    c.write_reg(3, 0, &[0x10]);
    assert_eq!(c.read_u8(0x0c), 0x10);
    c.write_reg(1, 1, &[0x04]);
    assert_eq!(c.command(), COMMAND_INTX_DISABLE);
    c.write_reg(1, 0, &0x0006u16.to_le_bytes());
    assert_eq!(c.command(), 0x0006, "word write replaces both bytes");
    assert_eq!(c.read_u8(INTERRUPT_LINE_OFFSET), 0x0b);
}

#[test]
fn bad_accesses_are_ignored() {
    let mut c = PciConfiguration::new(&ids());
    let before: Vec<u32> = (0..PCI_CONFIG_REGS).map(|i| c.read_reg(i)).collect();
    for (reg, offset, len) in [(1, 3, 2), (1, 2, 4), (1, 4, 1), (1, 0, 0), (1, 0, 8)] {
        assert!(c.write_reg(reg, offset, &vec![0xff; len]).is_empty());
    }
    assert!(c.write_reg(PCI_CONFIG_REGS, 0, &[0xff; 4]).is_empty());
    assert!(c.write_reg(usize::MAX, u64::MAX, &[0xff; 4]).is_empty());
    assert!(c.write(usize::MAX, &[0xff]).is_empty());
    let after: Vec<u32> = (0..PCI_CONFIG_REGS).map(|i| c.read_reg(i)).collect();
    assert_eq!(before, after);
    let mut b = [0u8; 4];
    c.read(PCI_EXTENDED_CONFIG_SPACE_SIZE - 2, &mut b);
    assert_eq!(b, [0, 0, 0xff, 0xff]);
    c.read(usize::MAX, &mut b);
    assert_eq!(b, [0xff; 4]);
    let mut b = [0u8; 2];
    read_dword_bytes(0x1234_5678, 3, &mut b);
    assert_eq!(b, [0xff, 0xff]);
    read_dword_bytes(0x1234_5678, 1, &mut b);
    assert_eq!(b, [0x56, 0x34]);
}

#[test]
fn extended_space_reads_zero_without_capabilities() {
    let c = PciConfiguration::new(&ids());
    assert_eq!(c.read_u32(0x100), 0);
    assert_eq!(c.read_reg(PCI_CONFIG_REGS - 1), 0);
}

#[test]
fn bar32_sizing_and_relocation() {
    let mut c = PciConfiguration::new(&ids());
    c.add_bar(PciBarConfig {
        prefetchable: true,
        ..bar(0, PciBarKind::Memory32, 0x4000)
    })
    .unwrap();
    assert_eq!(c.read_u32(BAR0_OFFSET), BAR_PREFETCHABLE);
    // Sizing: all-ones reads back the size mask and the flags.
    assert!(write32(&mut c, BAR0_OFFSET, u32::MAX).is_empty());
    assert_eq!(c.read_u32(BAR0_OFFSET), 0xffff_c008);
    // Program an address; low bits are read-only.
    assert!(write32(&mut c, BAR0_OFFSET, 0xc000_4fff).is_empty());
    assert_eq!(c.read_u32(BAR0_OFFSET), 0xc000_4008);
    assert_eq!(c.bar(0).unwrap().addr, 0xc000_4000);
    assert_eq!(c.bar(0).unwrap().decoded, None);
    // Enabling memory decode reports the BAR ...
    let changes = enable_memory(&mut c);
    assert_eq!(
        changes,
        vec![BarReprogram {
            bar: 0,
            kind: PciBarKind::Memory32,
            size: 0x4000,
            old: None,
            new: Some(0xc000_4000),
        }]
    );
    // ... relocating while decoding reports the move ...
    let changes = write32(&mut c, BAR0_OFFSET, 0xc001_0000);
    assert_eq!(changes[0].old, Some(0xc000_4000));
    assert_eq!(changes[0].new, Some(0xc001_0000));
    // ... writing the same address reports nothing ...
    assert!(write32(&mut c, BAR0_OFFSET, 0xc001_0000).is_empty());
    // ... sizing with decode on stops decoding, restoring resumes it.
    let changes = write32(&mut c, BAR0_OFFSET, u32::MAX);
    assert_eq!((changes[0].old, changes[0].new), (Some(0xc001_0000), None));
    let changes = write32(&mut c, BAR0_OFFSET, 0xc001_0000);
    assert_eq!((changes[0].old, changes[0].new), (None, Some(0xc001_0000)));
    // Disabling decode reports the BAR gone.
    let changes = c.write(COMMAND_OFFSET, &[0, 0]);
    assert_eq!((changes[0].old, changes[0].new), (Some(0xc001_0000), None));
}

#[test]
fn bar64_sizing_and_relocation() {
    let mut c = PciConfiguration::new(&ids());
    c.add_bar(bar(2, PciBarKind::Memory64, 0x10_0000)).unwrap();
    assert_eq!(c.read_u32(0x18), BAR_MEM_64);
    write32(&mut c, 0x18, u32::MAX);
    write32(&mut c, 0x1c, u32::MAX);
    assert_eq!(c.read_u32(0x18), 0xfff0_0004);
    assert_eq!(c.read_u32(0x1c), 0xffff_ffff);
    // Linux restores low then high with decode on: no half address escapes.
    enable_memory(&mut c);
    assert!(write32(&mut c, 0x18, 0x0010_0000).is_empty());
    let changes = write32(&mut c, 0x1c, 0x40);
    assert_eq!(
        changes,
        vec![BarReprogram {
            bar: 2,
            kind: PciBarKind::Memory64,
            size: 0x10_0000,
            old: None,
            new: Some(0x40_0010_0000),
        }]
    );
    assert_eq!(c.bars().len(), 1);
    assert_eq!(c.bar(3), None, "upper half is not a BAR of its own");
    // A BAR larger than 4 GiB has a read-only low address field.
    let mut c = PciConfiguration::new(&ids());
    c.add_bar(bar(0, PciBarKind::Memory64, 1 << 33)).unwrap();
    write32(&mut c, BAR0_OFFSET, u32::MAX);
    write32(&mut c, 0x14, u32::MAX);
    assert_eq!(c.read_u32(BAR0_OFFSET), BAR_MEM_64);
    assert_eq!(c.read_u32(0x14), 0xffff_fffe);
    write32(&mut c, 0x14, 0x2);
    let changes = enable_memory(&mut c);
    assert_eq!(changes, vec![], "low dword still being sized");
    let changes = write32(&mut c, BAR0_OFFSET, 0);
    assert_eq!(changes[0].new, Some(1 << 33));
}

#[test]
fn bar64_with_low_address_bits_all_set_is_not_sizing() {
    let mut c = PciConfiguration::new(&ids());
    c.add_bar(bar(0, PciBarKind::Memory64, 0x4000)).unwrap();
    enable_memory(&mut c);
    write32(&mut c, 0x14, 0x7f);
    let changes = write32(&mut c, BAR0_OFFSET, 0xffff_c004);
    assert_eq!(changes[0].new, Some(0x7f_ffff_c000));
    // Sizing word by word counts once every byte was written all-ones.
    c.write(BAR0_OFFSET, &[0xff, 0xff]);
    c.write(BAR0_OFFSET + 2, &[0xff, 0xff]);
    assert_eq!(c.bar(0).unwrap().decoded, None);
    assert_eq!(c.read_u32(BAR0_OFFSET), 0xffff_c004);
}

#[test]
fn io_bar_sizing_and_decode() {
    let mut c = PciConfiguration::new(&ids());
    c.add_bar(bar(5, PciBarKind::Io, 0x20)).unwrap();
    write32(&mut c, 0x24, u32::MAX);
    assert_eq!(c.read_u32(0x24), 0x0000_ffe1);
    write32(&mut c, 0x24, 0xc040);
    assert!(
        enable_memory(&mut c).is_empty(),
        "memory enable does not decode I/O"
    );
    let changes = c.write(COMMAND_OFFSET, &[COMMAND_IO_SPACE as u8]);
    assert_eq!(changes[0].new, Some(0xc040));
}

#[test]
fn unimplemented_bars_read_zero() {
    let mut c = PciConfiguration::new(&ids());
    for offset in (BAR0_OFFSET..BAR0_OFFSET + 24).step_by(4).chain([0x30]) {
        write32(&mut c, offset, u32::MAX);
        assert_eq!(c.read_u32(offset), 0, "offset {offset:#x}");
    }
}

#[test]
fn add_bar_rejects_bad_declarations() {
    let mut c = PciConfiguration::new(&ids());
    assert_eq!(
        c.add_bar(bar(6, PciBarKind::Memory32, 0x1000)),
        Err(PciConfigError::BarIndex { index: 6 })
    );
    assert_eq!(
        c.add_bar(bar(5, PciBarKind::Memory64, 0x1000)),
        Err(PciConfigError::BarIndex { index: 5 })
    );
    for (kind, size) in [
        (PciBarKind::Memory32, 0x3000),
        (PciBarKind::Memory32, 8),
        (PciBarKind::Memory32, 1 << 32),
        (PciBarKind::Io, 0x200),
        (PciBarKind::Io, 2),
        (PciBarKind::Memory64, 0),
    ] {
        let err = c.add_bar(bar(0, kind, size)).unwrap_err();
        assert!(
            matches!(err, PciConfigError::BarSize { .. }),
            "{kind} {size}"
        );
        assert!(err.to_string().contains("power of two"));
    }
    c.add_bar(bar(1, PciBarKind::Memory64, 0x1000)).unwrap();
    assert_eq!(
        c.add_bar(bar(2, PciBarKind::Memory32, 0x1000)),
        Err(PciConfigError::BarInUse { index: 2 })
    );
    assert_eq!(
        c.add_bar(bar(0, PciBarKind::Memory64, 0x1000)),
        Err(PciConfigError::BarInUse { index: 1 })
    );
}

#[test]
fn capability_list_walk() {
    let mut c = PciConfiguration::new(&ids());
    assert_eq!(c.status() & STATUS_CAPABILITIES_LIST, 0);
    assert!(c.capabilities().is_empty());
    let a = c.add_capability(0x09, &[1, 2, 3], &[]).unwrap();
    let b = c.add_capability(0x11, &[0; 10], &[0; 10]).unwrap();
    let d = c.add_capability(0x05, &[0; 12], &[]).unwrap();
    assert_eq!((a, b, d), (0x40, 0x48, 0x54));
    assert_ne!(c.status() & STATUS_CAPABILITIES_LIST, 0);
    assert_eq!(c.read_u8(CAPABILITIES_POINTER_OFFSET), 0x40);
    assert_eq!(c.read_u32(0x40), 0x0201_4809);
    assert_eq!(c.read_u16(0x54), 0x0005, "last capability ends the list");
    assert_eq!(
        c.capabilities(),
        vec![(0x09, 0x40), (0x11, 0x48), (0x05, 0x54)]
    );
}

#[test]
fn capability_writable_bits() {
    let mut c = PciConfiguration::new(&ids());
    let cap = c
        .add_capability(0x11, &[0x07, 0x00, 0xaa], &[0x00, 0xc0, 0x00])
        .unwrap();
    write32(&mut c, cap, u32::MAX);
    assert_eq!(
        c.read_u32(cap),
        0xc007_0011,
        "ID, next and body RO bits stay"
    );
    assert_eq!(c.read_u8(cap + 4), 0xaa);
}

#[test]
fn capability_space_runs_out() {
    let mut c = PciConfiguration::new(&ids());
    c.add_capability(0x09, &[0; 172], &[]).unwrap();
    let err = c.add_capability(0x09, &[0; 20], &[]).unwrap_err();
    assert_eq!(
        err,
        PciConfigError::CapabilitySpace {
            id: 9,
            len: 22,
            free: 16,
            limit: 0x100
        }
    );
    assert!(err.to_string().contains("only 16 bytes are left"));
    assert!(matches!(
        c.add_capability(0x09, &[0; 4], &[0; 3]),
        Err(PciConfigError::CapabilityMask { .. })
    ));
    c.add_capability(0x09, &[0; 14], &[]).unwrap();
}

#[test]
fn extended_capability_list() {
    let mut c = PciConfiguration::new(&ids());
    let a = c.add_extended_capability(0x0001, 2, &[0; 8], &[]).unwrap();
    let b = c
        .add_extended_capability(0x000b, 1, &[0x55; 6], &[0xff; 6])
        .unwrap();
    assert_eq!((a, b), (0x100, 0x10c));
    assert_eq!(c.read_u32(0x100), 0x10c2_0001);
    assert_eq!(c.read_u32(0x10c), 0x0001_000b);
    write32(&mut c, 0x110, 0x1234_5678);
    assert_eq!(c.read_u32(0x110), 0x1234_5678);
    assert!(matches!(
        c.add_extended_capability(0x1, 1, &[0; 4000], &[]),
        Err(PciConfigError::CapabilitySpace { .. })
    ));
}

#[test]
fn set_bytes_refuses_bars_and_out_of_range() {
    let mut c = PciConfiguration::new(&ids());
    assert!(c.set_bytes(0x0e, &[0x80, 0, 0]).is_err(), "touches BAR 0");
    assert!(c.set_bytes(0x27, &[0, 0]).is_err(), "touches BAR 5");
    assert!(c.set_bytes(0xfff, &[0, 0]).is_err());
    assert!(c.set_bytes(usize::MAX, &[0]).is_err());
    c.set_bytes(0x28, &[1, 2, 3, 4]).unwrap();
    assert_eq!(c.read_u32(0x28), 0x0403_0201);
}
