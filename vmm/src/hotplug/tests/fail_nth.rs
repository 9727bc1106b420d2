//! Failure injection over hotplug: every boundary call of an add, then of a remove, fails
//! in turn (iommufd on the model, VFIO on the fake device, the KVM-VFIO device, memory
//! slots, GSI routes and irqfds), for N from 1 to the last call of a clean run.
//!
//! A failed add answers one error and leaves the VM exactly as it was: no iommufd object,
//! KVM file, memory slot, GSI, route, open device or BAR mapping, the slot empty. An add
//! that survives its failure (a call whose failure is tolerated, like a reset the device
//! lacks) must still be removable without a trace. A remove completes; when the failed call
//! is one that releases something, that one thing (and only it) stays with the kernel until
//! its fd closes, as it would on a real host.

use super::*;

/// The snapshot fields a failed release call may leave behind.
fn may_leave(call: &str) -> &'static [&'static str] {
    match call {
        // The kernel keeps the object (and those that hang on it) until the iommufd closes.
        "IOMMU_DESTROY" | "IOMMU_IOAS_UNMAP" | "VFIO_DEVICE_DETACH_IOMMUFD_PT" => &["objects"],
        "KVM_DEV_VFIO_FILE_DEL" => &["kvm_files"],
        "KVM_SET_USER_MEMORY_REGION (delete)" => &["memslots"],
        _ => &[],
    }
}

/// The fields of `a` and `b` that differ.
fn differences(a: &Snapshot, b: &Snapshot) -> Vec<&'static str> {
    let mut d = Vec::new();
    let mut check = |name, same: bool| {
        if !same {
            d.push(name);
        }
    };
    check("objects", a.objects == b.objects);
    check("kvm_files", a.kvm_files == b.kvm_files);
    check("memslots", a.memslots == b.memslots);
    check("routes", a.routes == b.routes);
    check("gsis", a.gsis == b.gsis);
    check("devices", a.devices == b.devices);
    check("present", a.present == b.present);
    d
}

/// Whether the devices opened after the first `skip` are all closed, their BARs unmapped.
fn devices_closed(rig: &Rig, skip: usize) -> bool {
    lock(&rig.handles)
        .iter()
        .skip(skip)
        .all(|h| !h.is_open() && h.live_mappings() == 0)
}

/// A fresh rig (with device b cold-plugged when `beside`), what it holds, its IOAS state and
/// how many devices it has opened.
fn sweep_rig(beside: bool) -> (Rig, Snapshot, Option<IoasState>, usize) {
    let mut rig = Rig::new(1, Guest::Pciehp);
    if beside {
        rig.cold_plug("b");
    }
    let before = rig.snapshot();
    let ioas = rig.ioas_state();
    let opened = lock(&rig.handles).len();
    (rig, before, ioas, opened)
}

#[test]
fn every_failing_call_of_an_add_gives_one_error_and_leaves_nothing() {
    // As the first device (the add creates the IOAS and maps RAM) and beside a cold-plugged
    // one (whose IOAS, mappings and guard must not change).
    for beside in [false, true] {
        add_sweep(beside);
    }
}

fn add_sweep(beside: bool) {
    let mut tried = 0;
    for n in 1.. {
        let (mut rig, before, ioas_before, opened) = sweep_rig(beside);
        rig.faults.fail_after(n);
        let result = rig.add("a");
        let Some(call) = rig.faults.failed() else {
            // Past the last call: the clean run.
            result.unwrap();
            assert!(n > 10, "an add makes more than {n} boundary calls");
            break;
        };
        tried += 1;
        let ctx = format!("call {n} ({call})");
        match result {
            Err(e) => {
                assert!(!e.message.is_empty(), "{ctx}");
                assert_ne!(e.kind, HotplugFaultKind::NotFound, "{ctx}: {e}");
                assert_eq!(rig.snapshot(), before, "{ctx}: {e}");
                assert!(devices_closed(&rig, opened), "{ctx}: {e}");
                assert_eq!(rig.hp.devices().len(), usize::from(beside), "{ctx}: {e}");
                assert_eq!(rig.ioas_state(), ioas_before, "{ctx}: {e}");
            }
            Ok(_) => {
                // Tolerated (a release in the probe, a reset the device lacks): removable,
                // leaving at most what the failed call could not release.
                rig.faults.fail_after(0);
                rig.hp.remove_device("a").unwrap();
                let left = differences(&before, &rig.snapshot());
                assert!(
                    left.iter().all(|f| may_leave(call).contains(f)),
                    "{ctx}, tolerated: left {left:?}"
                );
                assert!(devices_closed(&rig, opened), "{ctx}, tolerated");
            }
        }
        // The VM takes the device after all.
        rig.faults.fail_after(0);
        rig.add("a")
            .unwrap_or_else(|e| panic!("{ctx}: the retry failed: {e}"));
        rig.hp.remove_device("a").unwrap();
        let left = differences(&before, &rig.snapshot());
        assert!(
            left.iter().all(|f| may_leave(call).contains(f)),
            "{ctx}: after the retry, left {left:?}"
        );
    }
    let case = if beside {
        "beside a cold-plugged device"
    } else {
        "first device"
    };
    eprintln!(
        "hotplug add ({case}): {tried} failing calls tried, each gave one error and left nothing"
    );
    assert!(tried > 10, "{tried} calls tried");
}

#[test]
fn every_failing_call_of_a_remove_completes_and_leaves_at_most_what_it_could_not_release() {
    // As the last device (the IOAS and RAM mappings go with it) and beside a cold-plugged
    // one (whose mappings stay).
    for beside in [false, true] {
        remove_sweep(beside);
    }
}

fn remove_sweep(beside: bool) {
    let mut tried = 0;
    for n in 1.. {
        let (mut rig, before, ioas_before, opened) = sweep_rig(beside);
        rig.add("a").unwrap();
        rig.faults.fail_after(n);
        let result = rig.hp.remove_device("a");
        let Some(call) = rig.faults.failed() else {
            result.unwrap();
            assert_eq!(rig.snapshot(), before);
            assert!(n > 3, "a remove makes more than {n} boundary calls");
            break;
        };
        tried += 1;
        let ctx = format!("call {n} ({call})");
        result.unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let after = rig.snapshot();
        let left = differences(&before, &after);
        assert!(
            left.iter().all(|f| may_leave(call).contains(f)),
            "{ctx}: left {left:?}: {after:?}, was {before:?}"
        );
        assert!(devices_closed(&rig, opened), "{ctx}");
        assert_eq!(rig.hp.devices().len(), usize::from(beside), "{ctx}");
        if beside {
            assert_eq!(
                rig.ioas_state(),
                ioas_before,
                "{ctx}: the other device's DMA"
            );
        }
        // The slot works again.
        rig.faults.fail_after(0);
        rig.add("a")
            .unwrap_or_else(|e| panic!("{ctx}: the re-add failed: {e}"));
        rig.hp.remove_device("a").unwrap();
    }
    let case = if beside {
        "beside a cold-plugged device"
    } else {
        "last device"
    };
    eprintln!("hotplug remove ({case}): {tried} failing calls tried, each completed");
    assert!(tried > 3, "{tried} calls tried");
}
