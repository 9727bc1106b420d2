//! Unit tests of the parent module.

use std::sync::atomic::Ordering;

use super::super::configuration::PciIds;
use super::super::interrupt::test_utils::RecordingInterruptGroup;
use super::*;

const ADDR: u64 = 0xfee0_1000;

fn layout(vectors: u16) -> MsixLayout {
    MsixLayout {
        vectors,
        table_bar: 2,
        table_offset: 0,
        pba_bar: 2,
        pba_offset: 0x800,
    }
}

fn msix(vectors: u16) -> (MsixConfig, Arc<RecordingInterruptGroup>) {
    let group = Arc::new(RecordingInterruptGroup::new(vectors));
    (
        MsixConfig::new(layout(vectors), group.clone()).unwrap(),
        group,
    )
}

fn write_dword(m: &mut MsixConfig, offset: u64, v: u32) {
    m.table_write(offset, &v.to_le_bytes());
}

fn read_dword(m: &MsixConfig, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    m.table_read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn pba(m: &MsixConfig) -> u64 {
    let mut b = [0u8; 8];
    m.pba_read(0, &mut b);
    u64::from_le_bytes(b)
}

/// Programs vector `v` with `ADDR` and data `0x40 + v`, leaving it masked.
fn program(m: &mut MsixConfig, v: u16) {
    let base = u64::from(v) * 16;
    m.table_write(base, &ADDR.to_le_bytes());
    write_dword(m, base + 8, 0x40 + u32::from(v));
}

fn msg(v: u16) -> MsiMessage {
    MsiMessage {
        address: ADDR,
        data: 0x40 + u32::from(v),
    }
}

#[test]
fn new_validates_layout() {
    let group: Arc<dyn MsiInterruptGroup> = Arc::new(RecordingInterruptGroup::new(1));
    let bad = [
        MsixLayout {
            vectors: 0,
            ..layout(1)
        },
        MsixLayout {
            vectors: 2049,
            ..layout(1)
        },
        MsixLayout {
            table_bar: 6,
            ..layout(1)
        },
        MsixLayout {
            pba_offset: 0x804,
            ..layout(1)
        },
        MsixLayout {
            pba_offset: 0x8,
            ..layout(1)
        },
    ];
    for l in bad {
        let err = MsixConfig::new(l, group.clone()).unwrap_err();
        assert!(!err.to_string().is_empty());
    }
    let err = MsixConfig::new(
        MsixLayout {
            pba_offset: 0x8,
            ..layout(1)
        },
        group.clone(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("move the PBA after the table"),
        "{err}"
    );
    // Same offsets in different BARs are fine.
    MsixConfig::new(
        MsixLayout {
            pba_bar: 3,
            pba_offset: 0,
            ..layout(2048)
        },
        group,
    )
    .unwrap();
    assert_eq!(layout(65).pba_len(), 16);
    assert_eq!(layout(64).pba_len(), 8);
}

#[test]
fn capability_in_config_space() {
    let (mut m, group) = msix(8);
    let mut config = PciConfiguration::new(&PciIds::default());
    let cap = m.add_capability(&mut config).unwrap();
    assert_eq!(m.capability_offset(), Some(cap));
    assert_eq!(config.read_u32(cap), 0x0007_0011);
    assert_eq!(config.read_u32(cap + 4), 2);
    assert_eq!(config.read_u32(cap + 8), 0x802);
    // The guest enables MSI-X with the function masked: table size is RO.
    config.write(cap + 2, &0xffffu16.to_le_bytes());
    m.config_written(&config, cap / 4);
    assert!(m.enabled() && m.function_masked());
    assert_eq!(m.message_control(), 0xc007);
    assert_eq!(config.read_u16(cap + 2), 0xc007);
    // A write elsewhere is not mistaken for message control.
    m.config_written(&config, cap / 4 + 1);
    config.write(cap + 3, &[0x80]);
    m.config_written(&config, cap / 4);
    assert!(m.enabled() && !m.function_masked());
    assert!(group.take_updates().is_empty(), "all vectors still masked");
}

#[test]
fn table_reads_and_writes() {
    let (mut m, group) = msix(4);
    assert_eq!(read_dword(&m, 12), 1, "vectors start masked");
    program(&mut m, 1);
    write_dword(&mut m, 16 + 12, 0xffff_fffe);
    assert_eq!(read_dword(&m, 16), ADDR as u32);
    assert_eq!(read_dword(&m, 20), 0);
    assert_eq!(read_dword(&m, 24), 0x41);
    assert_eq!(read_dword(&m, 28), 0, "reserved control bits read 0");
    let mut q = [0u8; 8];
    m.table_read(16, &mut q);
    assert_eq!(u64::from_le_bytes(q), ADDR);
    m.table_read(24, &mut q);
    assert_eq!(u64::from_le_bytes(q), 0x41);
    // Low address bits are reserved.
    write_dword(&mut m, 32, 0xfee0_0003);
    assert_eq!(read_dword(&m, 32), 0xfee0_0000);
    // MSI-X is still disabled: nothing routed yet.
    assert!(group.take_updates().is_empty());
    assert_eq!(m.message(1), Some(msg(1)));
}

#[test]
fn updates_follow_masked_state() {
    let (mut m, group) = msix(4);
    m.set_message_control(CONTROL_ENABLE);
    program(&mut m, 2);
    assert!(
        group.take_updates().is_empty(),
        "masked: message not routed yet"
    );
    write_dword(&mut m, 2 * 16 + 12, 0);
    assert_eq!(group.take_updates(), vec![(2, msg(2), false)]);
    // Rewriting the data of an unmasked vector re-routes it.
    write_dword(&mut m, 2 * 16 + 8, 0x99);
    let new = MsiMessage {
        address: ADDR,
        data: 0x99,
    };
    assert_eq!(group.take_updates(), vec![(2, new, false)]);
    // Writing the same value again does not.
    write_dword(&mut m, 2 * 16 + 8, 0x99);
    assert!(group.take_updates().is_empty());
    // Function mask and disable mask every unmasked vector, once.
    m.set_message_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
    assert_eq!(group.take_updates(), vec![(2, new, true)]);
    m.set_message_control(0);
    assert!(group.take_updates().is_empty());
    m.set_message_control(CONTROL_ENABLE);
    assert_eq!(group.take_updates(), vec![(2, new, false)]);
    write_dword(&mut m, 2 * 16 + 12, 1);
    assert_eq!(group.take_updates(), vec![(2, new, true)]);
}

#[test]
fn masked_vector_becomes_pending_and_unmask_delivers() {
    let (mut m, group) = msix(4);
    m.set_message_control(CONTROL_ENABLE);
    program(&mut m, 3);
    assert_eq!(m.trigger(3).unwrap(), MsixDelivery::Pending);
    assert!(m.pending(3));
    assert_eq!(pba(&m), 1 << 3);
    assert!(group.take_triggers().is_empty());
    write_dword(&mut m, 3 * 16 + 12, 0);
    assert_eq!(group.take_triggers(), vec![3]);
    assert!(!m.pending(3));
    assert_eq!(pba(&m), 0);
    assert_eq!(m.trigger(3).unwrap(), MsixDelivery::Delivered);
    assert_eq!(group.take_triggers(), vec![3]);
    assert_eq!(group.notifier(3).unwrap().read().unwrap(), 2);
}

#[test]
fn function_mask_holds_and_releases_vectors() {
    let (mut m, group) = msix(4);
    m.set_message_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
    for v in 0..2 {
        program(&mut m, v);
    }
    write_dword(&mut m, 12, 0);
    assert!(
        group.take_updates().is_empty(),
        "function mask still masks vector 0"
    );
    assert_eq!(m.trigger(0).unwrap(), MsixDelivery::Pending);
    assert_eq!(m.trigger(1).unwrap(), MsixDelivery::Pending);
    m.set_message_control(CONTROL_ENABLE);
    // Vector 0 is unmasked and delivered; vector 1 keeps its own mask.
    assert_eq!(group.take_updates(), vec![(0, msg(0), false)]);
    assert_eq!(group.take_triggers(), vec![0]);
    assert_eq!(pba(&m), 0b10);
}

#[test]
fn disabled_msix_drops_events() {
    let (mut m, group) = msix(2);
    program(&mut m, 0);
    write_dword(&mut m, 12, 0);
    assert_eq!(m.trigger(0).unwrap(), MsixDelivery::Disabled);
    assert!(!m.pending(0));
    assert!(group.take_triggers().is_empty());
    assert!(group.take_updates().is_empty());
    assert!(m.masked(0));
    m.set_message_control(CONTROL_ENABLE);
    assert!(!m.masked(0));
    assert_eq!(group.take_updates(), vec![(0, msg(0), false)]);
    assert!(matches!(
        m.trigger(2),
        Err(MsixError::NoSuchVector {
            vector: 2,
            count: 2
        })
    ));
}

#[test]
fn pba_is_read_only() {
    let (mut m, _group) = msix(70);
    m.set_message_control(CONTROL_ENABLE);
    m.trigger(65).unwrap();
    m.pba_write(0, &u64::MAX.to_le_bytes());
    m.pba_write(8, &0u64.to_le_bytes());
    assert!(m.bar_write(2, 0x808, &[0; 4]));
    let mut b = [0u8; 4];
    m.pba_read(8, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0b10);
    m.pba_read(12, &mut b);
    assert_eq!(b, [0; 4]);
    assert_eq!(pba(&m), 0);
}

#[test]
fn bar_dispatch_finds_table_and_pba() {
    let (mut m, _group) = msix(4);
    let mut b = [0u8; 4];
    assert!(m.bar_read(2, 12, &mut b));
    assert_eq!(b, [1, 0, 0, 0]);
    assert!(m.bar_read(2, 0x800, &mut b));
    assert!(!m.bar_read(2, 0x40, &mut b), "past the table");
    assert!(!m.bar_read(2, 0x808, &mut b), "past the PBA");
    assert!(!m.bar_read(0, 0, &mut b), "other BAR");
    assert!(m.bar_write(2, 0x10, &[0; 4]));
    assert!(!m.bar_write(1, 0x10, &[0; 4]));
}

#[test]
fn garbage_accesses_are_harmless() {
    let (mut m, group) = msix(4);
    m.set_message_control(CONTROL_ENABLE);
    let before: Vec<u32> = (0..16).map(|i| read_dword(&m, i * 4)).collect();
    for (offset, len) in [
        (1, 4),
        (2, 2),
        (4, 8),
        (0, 1),
        (0, 3),
        (0, 16),
        (64, 4),
        (u64::MAX - 3, 4),
    ] {
        m.table_write(offset, &vec![0; len]);
        let mut data = vec![0u8; len];
        m.table_read(offset, &mut data);
        if !(offset == 64 && len == 4) {
            assert!(data.iter().all(|&b| b == 0xff), "{offset} {len}");
        }
        m.pba_read(offset, &mut data);
        m.bar_read(2, offset, &mut data);
        m.bar_write(2, offset, &data);
    }
    assert_eq!(read_dword(&m, 64), u32::MAX, "past the table");
    let after: Vec<u32> = (0..16).map(|i| read_dword(&m, i * 4)).collect();
    assert_eq!(before, after);
    assert!(group.take_updates().is_empty());
    let mut b = [0u8; 8];
    m.pba_read(u64::MAX - 7, &mut b);
    assert_eq!(b, [0xff; 8]);
}

#[test]
fn backend_failures_are_logged_and_retried() {
    let (mut m, group) = msix(2);
    m.set_message_control(CONTROL_ENABLE);
    program(&mut m, 0);
    group.fail.store(true, Ordering::Relaxed);
    write_dword(&mut m, 12, 0);
    assert!(group.take_updates().is_empty());
    assert!(matches!(m.trigger(0), Err(MsixError::Interrupt(_))));
    group.fail.store(false, Ordering::Relaxed);
    // The next change of the vector retries the route.
    write_dword(&mut m, 8, 0x40);
    assert_eq!(group.take_updates(), vec![(0, msg(0), false)]);
}
