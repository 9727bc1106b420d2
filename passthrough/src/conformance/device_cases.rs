//! The cases that bind the device under test: the selftest's mock_domain variants, on
//! a real (or modelled) IOMMU.

use libc::{EADDRINUSE, EBUSY, EINVAL, EMSGSIZE, ENOENT, EOPNOTSUPP};

use super::cases::{fixed_reserved, holes, usable, Env, MIB, NO_SUCH_ID};
use super::{check, expect_errno, ok, CaseError, CaseResult, Fixture};
use crate::iommufd::{DevId, HwptFlags, IommufdError, ObjectId, Prot};
use crate::iova::{HostVirtAddr, Iova, IovaRange};
use crate::memory_map::{guard_ram, plan, DeviceRanges, MemoryMapRequest};
use crate::reserved_regions::{ReservedKind, ReservedRegion};

// --- with the device: mock_domain variants, on a real (or modelled) IOMMU -------------

pub(super) fn hw_info(fx: &mut dyn Fixture) -> CaseResult {
    // TEST_F(iommufd_ioas, get_hw_info)
    let mut env = Env::new(fx)?;
    let dev = env.bind(fx)?;
    let info = ok(env.fd.hw_info(dev), "IOMMU_GET_HW_INFO")?;
    if let Some(want) = fx.expected_hw_info() {
        check(info.kind == want, || {
            format!("hw info type {}, expected {want}", info.kind)
        })?;
    }
    expect_errno(env.fd.hw_info(DevId(NO_SUCH_ID)), ENOENT, "unknown device")
}

pub(super) fn attach_narrows_ranges(fx: &mut dyn Fixture) -> CaseResult {
    let mut env = Env::new(fx)?;
    let (dev, after) = env.attached(fx)?;
    check(after.ranges != vec![IovaRange::FULL], || {
        "attach did not narrow the ranges".into()
    })?;
    check(
        after.alignment > 1 && after.alignment.is_power_of_two(),
        || format!("alignment after attach is {:#x}", after.alignment),
    )?;
    for r in fx.device_reserved() {
        check(after.ranges.iter().all(|a| !a.overlaps(&r)), || {
            format!(
                "reserved region {r} is inside the ranges {:?}",
                after.ranges
            )
        })?;
    }
    ok(env.fd.detach_device(dev), "detach")?;
    let back = env.ranges()?;
    check(
        back.ranges == vec![IovaRange::FULL] && back.alignment == 1,
        || {
            format!(
                "after detach: {:?} alignment {}",
                back.ranges, back.alignment
            )
        },
    )
}

pub(super) fn iova_ranges_emsgsize_after_attach(fx: &mut dyn Fixture) -> CaseResult {
    let mut env = Env::new(fx)?;
    let (_, after) = env.attached(fx)?;
    let n = after.ranges.len();
    if n < 2 {
        return Err(CaseError::Skip("the device leaves one IOVA range".into()));
    }
    let mut buf = vec![IovaRange::FULL; n - 1];
    let ioas = env.ioas;
    match env.fd.iova_ranges_into(ioas, &mut buf) {
        Err(IommufdError::RangesBufferTooSmall { needed, .. }) if needed as usize == n => {}
        other => {
            return Err(CaseError::Fail(format!(
                "got {other:?}, expected EMSGSIZE needing {n}"
            )))
        }
    }
    check(buf[..] == after.ranges[..n - 1], || {
        format!("partial fill {buf:?} vs {:?}", after.ranges)
    })?;
    expect_errno(
        env.fd.iova_ranges_into(ioas, &mut []),
        EMSGSIZE,
        "empty buffer",
    )
}

pub(super) fn attach_refuses_mapped_reserved(fx: &mut dyn Fixture) -> CaseResult {
    // iopt_reserve_iova: a device's reserved region may not cover a mapping.
    let resv = fixed_reserved(fx)?;
    let mut env = Env::new(fx)?;
    let dev = env.bind(fx)?;
    let at = resv.first_raw() & !(env.page - 1);
    ok(env.map_fixed(env.page, at), "map over the reserved region")?;
    let r = env.fd.attach_device(dev, env.ioas.into());
    expect_errno(r, EADDRINUSE, "attach")?;
    let ranges = env.ranges()?;
    check(ranges.ranges == vec![IovaRange::FULL], || {
        format!("failed attach left {ranges:?}")
    })?;
    ok(env.unmap(at, env.page), "unmap")?;
    env.attach(dev).map(|_| ())
}

pub(super) fn attach_refuses_allowed_reserved(fx: &mut dyn Fixture) -> CaseResult {
    // iopt_reserve_iova: ... nor an allowed range ("attach that would remove an allowed
    // IOVA fails").
    let resv = fixed_reserved(fx)?;
    let mut env = Env::new(fx)?;
    let dev = env.bind(fx)?;
    let ioas = env.ioas;
    ok(
        env.fd.allow_iovas(ioas, &[resv]),
        "allow the reserved region",
    )?;
    expect_errno(env.fd.attach_device(dev, ioas.into()), EADDRINUSE, "attach")?;
    ok(env.fd.allow_iovas(ioas, &[]), "clear the allowed list")?;
    env.attach(dev).map(|_| ())
}

pub(super) fn map_into_reserved(fx: &mut dyn Fixture) -> CaseResult {
    // iopt_check_iova: a reserved IOVA is EINVAL.
    let mut env = Env::new(fx)?;
    let (_, after) = env.attached(fx)?;
    let a = after.alignment;
    let target = holes(&after)
        .into_iter()
        .find_map(|h| {
            let s = h.first_raw().checked_next_multiple_of(a)?;
            (s <= h.last_raw()).then_some(s)
        })
        .or_else(|| {
            let top = after.ranges.last()?.last_raw().checked_add(1)?;
            top.checked_add(a)?;
            Some(top)
        })
        .ok_or_else(|| CaseError::Skip("no reserved IOVA to map into".into()))?;
    expect_errno(
        env.map_fixed(a, target),
        EINVAL,
        &format!("map at reserved {target:#x}"),
    )
}

pub(super) fn allow_over_reserved(fx: &mut dyn Fixture) -> CaseResult {
    // TEST_F(iommufd_ioas, area_auto_iova): "Allowed region intersects with a reserved
    // region" (iopt_set_allow_iova).
    let mut env = Env::new(fx)?;
    let (_, after) = env.attached(fx)?;
    let ioas = env.ioas;
    let hole = holes(&after)
        .into_iter()
        .find(|h| h.first_raw() < h.last_raw())
        .ok_or_else(|| CaseError::Skip("no reserved range".into()))?;
    expect_errno(
        env.fd.allow_iovas(ioas, &[hole]),
        EADDRINUSE,
        "allow a reserved range",
    )?;
    let start = usable(&after, 2 * MIB)?;
    let good = IovaRange::from_start_len(start, 2 * MIB).ok_or("range")?;
    ok(env.fd.allow_iovas(ioas, &[good]), "allow a usable range")
}

pub(super) fn map_misaligned_after_attach(fx: &mut dyn Fixture) -> CaseResult {
    // TEST_F(iommufd_ioas, ioas_iova_alloc) with a domain; iopt_insert_area.
    let mut env = Env::new(fx)?;
    let (_, after) = env.attached(fx)?;
    let a = after.alignment;
    if a < 2 {
        return Err(CaseError::Skip("IOVA alignment is 1".into()));
    }
    let at = usable(&after, 4 * a)?;
    expect_errno(env.map_fixed(a, at + a / 2), EINVAL, "misaligned IOVA")?;
    expect_errno(env.map_fixed(a + a / 2, at), EINVAL, "misaligned length")?;
    expect_errno(env.map_auto(a / 2), EINVAL, "auto map of half a page")?;
    let (ioas, va) = (env.ioas, HostVirtAddr(env.va().0 + a / 2));
    let r = env
        .fd
        .map_user(ioas, va, a, Some(Iova(at)), Prot::READ_WRITE);
    expect_errno(r, EINVAL, "misaligned source")?;
    ok(env.map_fixed(a, at), "aligned map")?;
    Ok(())
}

pub(super) fn auto_iova_avoids_reserved(fx: &mut dyn Fixture) -> CaseResult {
    // TEST_F(iommufd_ioas, area_auto_iova): "Avoids a reserved region".
    let mut env = Env::new(fx)?;
    let (_, after) = env.attached(fx)?;
    for i in 1..=10 {
        let len = i * env.page;
        let iova = ok(env.map_auto(len), "auto map")?.0;
        let range = IovaRange::from_start_len(iova, len).ok_or("range")?;
        check(
            after.ranges.iter().any(|r| r.contains_range(&range)),
            || format!("auto IOVA {range} is outside the ranges {:?}", after.ranges),
        )?;
    }
    Ok(())
}

pub(super) fn ioas_busy_while_attached(fx: &mut dyn Fixture) -> CaseResult {
    // TEST_F(iommufd_ioas, ioas_destroy), mock_domain: EBUSY.
    let mut env = Env::new(fx)?;
    let dev = env.bind(fx)?;
    let hwpt = env.attach(dev)?;
    let ioas = env.ioas;
    expect_errno(env.fd.destroy(ioas.into()), EBUSY, "destroy the IOAS")?;
    expect_errno(
        env.fd.destroy(hwpt.into()),
        EBUSY,
        "destroy the attached HWPT",
    )?;
    ok(env.fd.detach_device(dev), "detach")?;
    ok(env.fd.destroy(ioas.into()), "destroy the IOAS after detach")
}

pub(super) fn hwpt_alloc_attach_destroy(fx: &mut dyn Fixture) -> CaseResult {
    let mut env = Env::new(fx)?;
    let dev = env.bind(fx)?;
    let ioas = env.ioas;
    let hwpt = ok(
        env.fd.alloc_hwpt(dev, ioas.into(), HwptFlags::NONE),
        "IOMMU_HWPT_ALLOC",
    )?;
    let got = ok(env.fd.attach_device(dev, hwpt.into()), "attach to the HWPT")?;
    check(got == hwpt, || {
        format!("attached to {got}, expected {hwpt}")
    })?;
    expect_errno(
        env.fd.destroy(hwpt.into()),
        EBUSY,
        "destroy the attached HWPT",
    )?;
    expect_errno(env.fd.destroy(ioas.into()), EBUSY, "destroy its IOAS")?;
    ok(env.fd.detach_device(dev), "detach")?;
    ok(env.fd.destroy(hwpt.into()), "destroy the HWPT")?;
    ok(env.fd.destroy(ioas.into()), "destroy the IOAS")
}

pub(super) fn hwpt_alloc_errors(fx: &mut dyn Fixture) -> CaseResult {
    // iommufd_hwpt_alloc: no device ENOENT, no pt object EINVAL, wrong kind EINVAL.
    let mut env = Env::new(fx)?;
    let dev = env.bind(fx)?;
    let (ioas, none) = (env.ioas, HwptFlags::NONE);
    let r = env.fd.alloc_hwpt(DevId(NO_SUCH_ID), ioas.into(), none);
    expect_errno(r, ENOENT, "unknown device")?;
    let r = env.fd.alloc_hwpt(dev, ObjectId(NO_SUCH_ID), none);
    expect_errno(r, EINVAL, "unknown pt id")?;
    expect_errno(
        env.fd.alloc_hwpt(dev, dev.into(), none),
        EINVAL,
        "a device as pt",
    )?;
    let r = env.fd.alloc_hwpt(dev, ioas.into(), HwptFlags(1 << 30));
    expect_errno(r, EOPNOTSUPP, "unknown flag")
}

pub(super) fn hwpt_nest_parent(fx: &mut dyn Fixture) -> CaseResult {
    // RIG: SMMUv3 accepts NEST_PARENT, VT-d without nesting says EOPNOTSUPP.
    let mut env = Env::new(fx)?;
    let dev = env.bind(fx)?;
    let ioas = env.ioas;
    let r = env.fd.alloc_hwpt(dev, ioas.into(), HwptFlags::NEST_PARENT);
    let s2 = match (r, fx.expects_nesting()) {
        (Ok(id), Some(true) | None) => id,
        (Err(e), Some(false) | None) if e.errno() == EOPNOTSUPP => return Ok(()),
        (r, want) => {
            return Err(CaseError::Fail(format!(
                "NEST_PARENT: got {r:?}, expected nesting {want:?}"
            )))
        }
    };
    // A nested HWPT needs driver data; without it iommufd_hwpt_nested_alloc refuses.
    let r = env.fd.alloc_hwpt(dev, s2.into(), HwptFlags::NONE);
    expect_errno(r, EOPNOTSUPP, "nested HWPT without data")?;
    let got = ok(
        env.fd.attach_device(dev, s2.into()),
        "attach to the nesting parent",
    )?;
    check(got == s2, || format!("attached to {got}, expected {s2}"))?;
    ok(env.fd.detach_device(dev), "detach")?;
    ok(env.fd.destroy(s2.into()), "destroy the nesting parent")
}

pub(super) fn attach_unknown_pt(fx: &mut dyn Fixture) -> CaseResult {
    // TEST_F(iommufd_ioas, hwpt_attach), no_domain: ENOENT.
    let mut env = Env::new(fx)?;
    let dev = env.bind(fx)?;
    expect_errno(
        env.fd.attach_device(dev, ObjectId(NO_SUCH_ID)),
        ENOENT,
        "attach to nothing",
    )
}

pub(super) fn detach_is_idempotent(fx: &mut dyn Fixture) -> CaseResult {
    let mut env = Env::new(fx)?;
    let dev = env.bind(fx)?;
    ok(env.fd.detach_device(dev), "detach a never-attached device")?;
    env.attach(dev)?;
    ok(env.fd.detach_device(dev), "detach")?;
    ok(env.fd.detach_device(dev), "detach again")
}

pub(super) fn reattach_is_a_noop(fx: &mut dyn Fixture) -> CaseResult {
    // A second attach to the same IOAS replaces the HWPT with itself.
    let mut env = Env::new(fx)?;
    let dev = env.bind(fx)?;
    let first = env.attach(dev)?;
    let before = env.ranges()?;
    let second = env.attach(dev)?;
    let after = env.ranges()?;
    check(first == second && before == after, || {
        format!("re-attach moved {first}->{second}, ranges {before:?} -> {after:?}")
    })
}

pub(super) fn guard_ram_then_attach(fx: &mut dyn Fixture) -> CaseResult {
    // The VMM's sequence: plan RAM around the device's reserved regions, allow exactly
    // the RAM, then attach: it must work, and the RAM must stay inside the ranges.
    let mut env = Env::new(fx)?;
    let mut req = MemoryMapRequest::new(256 * MIB);
    req.page_size = env.page;
    req.limit = (1 << 39) - 1;
    req.devices.push(DeviceRanges {
        name: "device under test".into(),
        iova_ranges: None,
        reserved: fx
            .device_reserved()
            .into_iter()
            .map(|range| ReservedRegion {
                range,
                kind: ReservedKind::Reserved,
            })
            .collect(),
    });
    let map = plan(&req).map_err(|e| CaseError::Fail(e.to_string()))?;
    let ioas = env.ioas;
    ok(guard_ram(env.fd.as_mut(), ioas, &map), "allow the RAM")?;
    let (_, after) = env.attached(fx)?;
    for ram in map.iova_ranges() {
        check(after.ranges.iter().any(|r| r.contains_range(&ram)), || {
            format!("RAM {ram} is not inside the ranges {:?}", after.ranges)
        })?;
    }
    Ok(())
}
