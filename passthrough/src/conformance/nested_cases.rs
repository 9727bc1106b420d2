//! Cases for nested translation on ARM SMMUv3: vIOMMU, vDEVICE, nested HWPTs from a
//! guest STE, vIOMMU invalidation and vEVENTQ, with the errnos of the kernel's
//! `viommu.c`, `hw_pagetable.c`, `eventq.c` and `arm-smmu-v3-iommufd.c`.
//!
//! They skip where the device's IOMMU cannot nest (x86 rig: VT-d without nesting), or
//! cannot give a VM a vIOMMU (`IOMMU_VIOMMU_ALLOC` says `EOPNOTSUPP`: an SMMU without
//! S2FWB whose device is not CANWBS, e.g. QEMU's SMMU without the rig's patch).

use libc::{EEXIST, EINVAL, EIO, ENOENT, EOPNOTSUPP};

use super::cases::Env;
use super::{check, expect_errno, ok, CaseError, CaseResult, Fixture};
use crate::iommufd::{DevId, HwptFlags, HwptId, IommufdError, VSte, ViommuId};

/// The vSID the cases give the device.
const VSID: u64 = 8;
/// STE word 0 of a valid S1-translate STE with a CD table at IPA 16 MiB.
const STE_S1: VSte = [1 | (5 << 1) | (16 << 20), 0];
/// A valid bypass STE.
const STE_BYPASS: VSte = [1 | (4 << 1), 0];
/// A valid abort STE.
const STE_ABORT: VSte = [1, 0];

/// The device attached to a NEST_PARENT over the case's IOAS, and a vIOMMU on it.
struct Nested {
    env: Env,
    dev: DevId,
    s2: HwptId,
    viommu: ViommuId,
}

fn nested(fx: &mut dyn Fixture) -> Result<Nested, CaseError> {
    if fx.expects_nesting() == Some(false) {
        return Err(CaseError::Skip("the device's IOMMU cannot nest".into()));
    }
    let mut env = Env::new(fx)?;
    let dev = env.bind(fx)?;
    let ioas = env.ioas;
    let s2 = match env.fd.alloc_hwpt(dev, ioas.into(), HwptFlags::NEST_PARENT) {
        Ok(s2) => s2,
        Err(e) if e.errno() == EOPNOTSUPP && fx.expects_nesting().is_none() => {
            return Err(CaseError::Skip("NEST_PARENT not supported".into()))
        }
        Err(e) => return Err(CaseError::Fail(format!("NEST_PARENT: {e}"))),
    };
    ok(env.fd.attach_device(dev, s2.into()), "attach to the S2")?;
    let viommu = match env.fd.alloc_viommu(dev, s2) {
        Ok(v) => v,
        Err(e) if e.errno() == EOPNOTSUPP => {
            return Err(CaseError::Skip(format!(
                "no vIOMMU for a VM on this SMMU (no S2FWB/CANWBS): {e}"
            )))
        }
        Err(e) => return Err(CaseError::Fail(format!("IOMMU_VIOMMU_ALLOC: {e}"))),
    };
    Ok(Nested {
        env,
        dev,
        s2,
        viommu,
    })
}

pub(super) fn viommu_needs_nest_parent(fx: &mut dyn Fixture) -> CaseResult {
    // iommufd_viommu_alloc_ioctl: a paging HWPT without NEST_PARENT is EINVAL; an id
    // that is not a paging HWPT is ENOENT.
    let mut n = nested(fx)?;
    let ioas = n.env.ioas;
    let plain = ok(
        n.env.fd.alloc_hwpt(n.dev, ioas.into(), HwptFlags::NONE),
        "plain HWPT",
    )?;
    expect_errno(n.env.fd.alloc_viommu(n.dev, plain), EINVAL, "plain parent")?;
    let r = n.env.fd.alloc_viommu(n.dev, HwptId(ioas.0));
    expect_errno(r, ENOENT, "an IOAS as parent")?;
    expect_errno(
        n.env.fd.destroy(n.s2.into()),
        libc::EBUSY,
        "destroy the S2 under a vIOMMU",
    )?;
    ok(n.env.fd.destroy(n.viommu.into()), "destroy the vIOMMU")?;
    ok(n.env.fd.destroy(plain.into()), "destroy the plain HWPT")
}

pub(super) fn vdevice_twice(fx: &mut dyn Fixture) -> CaseResult {
    // iommufd_vdevice_alloc_ioctl: idev->vdev set → EEXIST; no vIOMMU → ENOENT.
    let mut n = nested(fx)?;
    let vdev = ok(n.env.fd.alloc_vdevice(n.viommu, n.dev, VSID), "vDEVICE")?;
    let r = n.env.fd.alloc_vdevice(n.viommu, n.dev, VSID + 1);
    expect_errno(r, EEXIST, "a second vDEVICE for the device")?;
    let r = n.env.fd.alloc_vdevice(ViommuId(n.s2.0), n.dev, VSID);
    expect_errno(r, ENOENT, "a HWPT as vIOMMU")?;
    expect_errno(
        n.env.fd.destroy(n.viommu.into()),
        libc::EBUSY,
        "destroy the vIOMMU under a vDEVICE",
    )?;
    ok(n.env.fd.destroy(vdev.into()), "destroy the vDEVICE")?;
    ok(
        n.env.fd.alloc_vdevice(n.viommu, n.dev, VSID),
        "vDEVICE again",
    )
    .map(|_| ())
}

pub(super) fn nested_ste_validation(fx: &mut dyn Fixture) -> CaseResult {
    // arm_smmu_validate_vste: disallowed fields, Config or EATS → EIO; V=0 accepted.
    let mut n = nested(fx)?;
    let (dev, viommu) = (n.dev, n.viommu);
    for (ste, what) in [
        ([STE_S1[0] | (1 << 52), 0], "a bit above S1ContextPtr"),
        ([1 | (6 << 1), 0], "Config = S2 translate"),
        ([STE_S1[0], 2 << 28], "EATS = S1CHK"),
        ([STE_S1[0], 1 << 40], "STE word 1 bit 40"),
    ] {
        let r = n.env.fd.alloc_nested_hwpt(dev, viommu, ste);
        expect_errno(r, EIO, what)?;
    }
    let invalid = ok(
        n.env.fd.alloc_nested_hwpt(dev, viommu, [0x1234_0000, 7]),
        "an STE with V=0",
    )?;
    let abort = ok(
        n.env.fd.alloc_nested_hwpt(dev, viommu, STE_ABORT),
        "abort STE",
    )?;
    let bypass = ok(
        n.env.fd.alloc_nested_hwpt(dev, viommu, STE_BYPASS),
        "bypass STE",
    )?;
    let s1 = ok(n.env.fd.alloc_nested_hwpt(dev, viommu, STE_S1), "S1 STE")?;
    // Abort and bypass attach without a vDEVICE (the GBPA case); S1 needs one.
    ok(n.env.fd.attach_device(dev, abort.into()), "attach abort")?;
    ok(n.env.fd.attach_device(dev, bypass.into()), "attach bypass")?;
    let r = n.env.fd.attach_device(dev, s1.into());
    expect_errno(r, ENOENT, "attach S1 without a vDEVICE")?;
    ok(n.env.fd.alloc_vdevice(viommu, dev, VSID), "vDEVICE")?;
    let got = ok(n.env.fd.attach_device(dev, s1.into()), "attach S1")?;
    check(got == s1, || format!("attached to {got}, expected {s1}"))?;
    expect_errno(
        n.env.fd.destroy(s1.into()),
        libc::EBUSY,
        "destroy the attached nested HWPT",
    )?;
    ok(n.env.fd.attach_device(dev, invalid.into()), "attach V=0")?;
    for id in [s1, bypass, abort] {
        ok(n.env.fd.destroy(id.into()), "destroy a nested HWPT")?;
    }
    let s2 = n.s2;
    ok(n.env.fd.attach_device(dev, s2.into()), "back to the S2")?;
    ok(n.env.fd.destroy(invalid.into()), "destroy the V=0 HWPT")
}

pub(super) fn invalidate_stops_at_unknown_vsid(fx: &mut dyn Fixture) -> CaseResult {
    // arm_vsmmu_cache_invalidate: a CFGI_CD naming a vSID without vDEVICE is EIO, and
    // entry_num counts the commands before it.
    let mut n = nested(fx)?;
    ok(n.env.fd.alloc_vdevice(n.viommu, n.dev, VSID), "vDEVICE")?;
    let cfgi_cd = |sid: u64| [0x05 | (sid << 32), 0];
    let tlbi_nh_asid = [0x11 | (1 << 48), 0];
    let cmds = [tlbi_nh_asid, cfgi_cd(VSID), cfgi_cd(VSID + 1), tlbi_nh_asid];
    match n.env.fd.invalidate_viommu(n.viommu, &cmds) {
        Err(IommufdError::Invalidate {
            done: 2,
            total: 4,
            errno: EIO,
            ..
        }) => {}
        other => {
            return Err(CaseError::Fail(format!(
                "expected EIO after 2 of 4 commands, got {other:?}"
            )))
        }
    }
    let r = n
        .env
        .fd
        .invalidate_viommu(n.viommu, &[[0x03 | (VSID << 32), 0]]);
    expect_errno(r, EIO, "CFGI_STE is the VMM's business")?;
    let s2 = n.s2;
    let r = n.env.fd.invalidate_viommu(ViommuId(s2.0), &[tlbi_nh_asid]);
    expect_errno(r, EINVAL, "a paging HWPT")?;
    ok(
        n.env
            .fd
            .invalidate_viommu(n.viommu, &[tlbi_nh_asid, [0x30, 0]]),
        "TLBI_NH_ASID and TLBI_NSNH_ALL",
    )
}

pub(super) fn veventq_one_per_type(fx: &mut dyn Fixture) -> CaseResult {
    // iommufd_veventq_alloc: depth 0 → EINVAL, second of the type → EEXIST.
    let mut n = nested(fx)?;
    let viommu = n.viommu;
    expect_errno(n.env.fd.alloc_veventq(viommu, 0), EINVAL, "depth 0")?;
    let q = ok(n.env.fd.alloc_veventq(viommu, 64), "vEVENTQ")?;
    expect_errno(n.env.fd.alloc_veventq(viommu, 64), EEXIST, "a second one")?;
    let events = ok(n.env.fd.read_vevents(q, 8), "read an idle vEVENTQ")?;
    check(events.is_empty(), || format!("idle queue gave {events:?}"))?;
    ok(n.env.fd.destroy(q.into()), "destroy the vEVENTQ")?;
    ok(n.env.fd.alloc_veventq(viommu, 64), "vEVENTQ again").map(|_| ())
}
