//! The life cycle of hot-added devices: add and remove give everything back (also over twenty
//! cycles), a RAM conflict changes nothing, the first and last device own the IOAS and RAM
//! mappings, and guests that never power a slot on, have no hotplug, or keep a device.

use super::*;

#[test]
fn add_then_remove_returns_everything() {
    let mut rig = Rig::new(2, Guest::Pciehp);
    let before = rig.snapshot();
    let info = rig.add("a").unwrap();
    assert_eq!(info.id, "a");
    assert_eq!(info.bdf, "01:00.0", "behind the first root port");
    assert_eq!(rig.hp.devices(), vec![info.clone()]);
    let during = rig.snapshot();
    assert_eq!(during.objects.len(), 3, "IOAS, HWPT, device");
    assert_eq!(during.kvm_files, 1);
    assert_eq!(during.memslots, 1, "BAR 4, placed by the guest");
    assert!(during.gsis > before.gsis, "the function's MSI-X vectors");
    assert_eq!(during.present, vec![true, false]);
    let (_, mapped, allowed) = rig.ioas_state().unwrap();
    assert_eq!(mapped, vec![IovaRange::from_start_len(0, RAM).unwrap()]);
    assert_eq!(allowed, mapped, "RAM guarded with ALLOW_IOVAS");
    // The function answers at the bus the guest gave the port.
    assert_eq!(
        cfg_read(&rig.root, PciBdf::new(1, 0, 0).unwrap(), 0),
        0x1042_1af4
    );

    rig.hp.remove_device("a").unwrap();
    assert_eq!(rig.snapshot(), before);
    assert!(
        rig.ioas_state().is_none(),
        "the last device took the IOAS along"
    );
    let handles = lock(&rig.handles);
    assert!(!handles[0].is_open(), "device fd closed");
    assert_eq!(handles[0].live_mappings(), 0, "BAR mmaps gone");
    assert_eq!(
        cfg_read(&rig.root, PciBdf::new(1, 0, 0).unwrap(), 0),
        u32::MAX
    );
    assert!(rig.hp.devices().is_empty());
}

#[test]
fn twenty_cycles_leave_nothing_behind() {
    let mut rig = Rig::new(1, Guest::Pciehp);
    let before = rig.snapshot();
    let mut during = None;
    for cycle in 0..20 {
        rig.add("b").unwrap();
        let now = rig.snapshot();
        // Every cycle uses as many GSIs, routes, slots and objects as the first.
        assert_eq!(during.get_or_insert(now.gsis), &now.gsis, "cycle {cycle}");
        assert_eq!(now.memslots, 1, "cycle {cycle}");
        rig.hp.remove_device("b").unwrap();
        assert_eq!(rig.snapshot(), before, "after cycle {cycle}");
    }
    assert_eq!(lock(&rig.handles).iter().filter(|h| h.is_open()).count(), 0);
}

#[test]
fn reserved_iova_in_placed_ram_is_a_conflict_and_nothing_changes() {
    let mut rig = Rig::new(1, Guest::Pciehp);
    // A device whose MSI window lies in guest RAM ("seed-004").
    lock(&rig.hosts).get_mut(&path("c")).unwrap().reserved =
        vec![IovaRange::new(0x10_0000, 0x10_ffff).unwrap()];
    // First device: nothing is mapped yet, nothing may be created.
    let before = rig.snapshot();
    let err = rig.add("c").unwrap_err();
    assert_eq!(err.kind, HotplugFaultKind::Conflict, "{err}");
    assert!(err.message.contains("0x100000-0x10ffff"), "{err}");
    assert!(err.message.contains("device c (0000:00:05.0)"), "{err}");
    assert_eq!(rig.snapshot(), before);
    assert!(lock(&rig.handles).is_empty(), "never opened");

    // With RAM mapped for a cold-plugged device, the mappings stay as they are.
    rig.cold_plug("a");
    let before = rig.snapshot();
    let ioas = rig.ioas_state();
    let err = rig.add("c").unwrap_err();
    assert_eq!(err.kind, HotplugFaultKind::Conflict, "{err}");
    assert_eq!(rig.snapshot(), before);
    assert_eq!(rig.ioas_state(), ioas);
}

#[test]
fn first_and_last_device_keep_the_others_mappings() {
    // A cold-plugged device holds the IOAS; a hot device comes and goes.
    let mut rig = Rig::new(2, Guest::Pciehp);
    rig.cold_plug("a");
    let with_cold = rig.snapshot();
    let ioas = rig.ioas_state().unwrap();
    rig.add("b").unwrap();
    assert_eq!(rig.ioas_state().unwrap(), ioas, "same IOAS, same mappings");
    rig.hp.remove_device("b").unwrap();
    assert_eq!(rig.ioas_state().unwrap(), ioas);
    assert_eq!(rig.snapshot(), with_cold);
    assert_eq!(
        rig.hp.remove_device("a").unwrap_err().kind,
        HotplugFaultKind::Conflict,
        "cold-plugged"
    );
    drop(rig);

    // Only hot devices: the first makes the IOAS, the last takes it away; in between the
    // mappings stay whoever leaves.
    let mut rig = Rig::new(2, Guest::Pciehp);
    let empty = rig.snapshot();
    rig.add("b").unwrap();
    let ioas = rig.ioas_state().unwrap();
    rig.add("c").unwrap();
    assert_eq!(rig.ioas_state().unwrap(), ioas);
    assert_eq!(rig.hp.devices().len(), 2);
    assert_eq!(rig.hp.devices()[1].bdf, "02:00.0");
    rig.hp.remove_device("b").unwrap();
    assert_eq!(rig.ioas_state().unwrap(), ioas, "c still DMAs into RAM");
    assert_eq!(
        lock(&rig.model).model.object_ids().len(),
        3,
        "IOAS, HWPT, c"
    );
    rig.hp.remove_device("c").unwrap();
    assert_eq!(rig.snapshot(), empty);
}

#[test]
fn a_guest_that_never_powers_on_times_out_cleanly() {
    let mut rig = Rig::new(1, Guest::Deaf);
    rig.hp.timeouts.add = Duration::from_millis(200);
    let before = rig.snapshot();
    let err = rig.add("a").unwrap_err();
    assert_eq!(err.kind, HotplugFaultKind::NotReady);
    assert!(err.message.contains("did not power slot 1 on"), "{err}");
    assert_eq!(rig.snapshot(), before);
    assert!(lock(&rig.handles).iter().all(|h| !h.is_open()));
}

#[test]
fn a_guest_without_hotplug_is_not_ready_and_nothing_is_touched() {
    let mut rig = Rig::new(1, Guest::Absent);
    let before = rig.snapshot();
    let err = rig.add("a").unwrap_err();
    assert_eq!(err.kind, HotplugFaultKind::NotReady);
    assert!(err.message.contains("pciehp"), "{err}");
    assert_eq!(rig.snapshot(), before);
    assert!(lock(&rig.handles).is_empty());
}

#[test]
fn a_device_the_guest_keeps_stays_until_surprise_removal() {
    let mut rig = Rig::new(1, Guest::Clingy);
    rig.hp.timeouts.remove = Duration::from_millis(200);
    let before = rig.snapshot();
    rig.add("a").unwrap();
    let err = rig.hp.remove_device("a").unwrap_err();
    assert_eq!(err.kind, HotplugFaultKind::NotReady);
    assert!(err.message.contains("did not release device a"), "{err}");
    assert_eq!(rig.hp.devices().len(), 1, "left in place");
    assert_eq!(rig.snapshot().memslots, 1);
    rig.hp.surprise_remove("a").unwrap();
    assert_eq!(rig.snapshot(), before);
}
