//! Tests of the model's IOAS, HWPT and device behaviour.
use super::*;
use crate::HostVirtAddr;

const PAGE: u64 = 4096;

fn r(start: u64, last: u64) -> IovaRange {
    IovaRange::new(start, last).unwrap()
}

fn setup() -> (ModelIommufd, IoasId, DevId) {
    let mut m = ModelIommufd::with_page_size(PAGE);
    let ioas = m.alloc_ioas().unwrap();
    let dev = m
        .bind_device(DeviceHandle::Model(ModelDevice::x86_vtd()))
        .unwrap();
    (m, ioas, dev)
}

#[test]
fn attach_narrows_like_the_x86_rig_and_detach_restores() {
    let (mut m, ioas, dev) = setup();
    let hwpt = m.attach_device(dev, ioas.into()).unwrap();
    let ranges = m.iova_ranges(ioas).unwrap();
    assert_eq!(
        ranges.ranges,
        vec![r(0, 0xfedf_ffff), r(0xfef0_0000, (1 << 48) - 1)]
    );
    assert_eq!(ranges.alignment, PAGE);
    assert_eq!(m.destroy(ioas.into()).unwrap_err().errno(), EBUSY);
    assert_eq!(m.destroy(hwpt.into()).unwrap_err().errno(), EBUSY);
    m.detach_device(dev).unwrap();
    m.detach_device(dev).unwrap();
    assert_eq!(m.iova_ranges(ioas).unwrap().ranges, vec![IovaRange::FULL]);
    assert!(
        m.hwpt(hwpt.0).is_none(),
        "the automatic HWPT went with its device"
    );
    m.destroy(ioas.into()).unwrap();
}

#[test]
fn second_device_reuses_the_automatic_hwpt() {
    let (mut m, ioas, dev) = setup();
    let dev2 = m
        .bind_device(DeviceHandle::Model(ModelDevice::x86_vtd()))
        .unwrap();
    let a = m.attach_device(dev, ioas.into()).unwrap();
    let b = m.attach_device(dev2, ioas.into()).unwrap();
    assert_eq!(a, b);
    assert_eq!(
        m.attach_device(dev, ioas.into()).unwrap(),
        a,
        "re-attach is a no-op"
    );
    m.unbind_device(dev).unwrap();
    assert!(m.hwpt(a.0).is_some());
    m.unbind_device(dev2).unwrap();
    assert!(m.hwpt(a.0).is_none());
}

#[test]
fn attach_refuses_to_take_allowed_or_mapped_iova() {
    let (mut m, ioas, dev) = setup();
    m.allow_iovas(ioas, &[r(0xfe00_0000, 0xfeff_ffff)]).unwrap();
    let err = m.attach_device(dev, ioas.into()).unwrap_err();
    assert_eq!(err.errno(), libc::EADDRINUSE);
    assert_eq!(m.iova_ranges(ioas).unwrap().ranges, vec![IovaRange::FULL]);
    assert_eq!(m.object_ids().len(), 2, "no HWPT left behind");
    m.allow_iovas(ioas, &[]).unwrap();
    let va = HostVirtAddr(0x7000_0000);
    m.map_user(ioas, va, PAGE, Some(Iova(0xfee0_0000)), Prot::READ)
        .unwrap();
    assert_eq!(
        m.attach_device(dev, ioas.into()).unwrap_err().errno(),
        libc::EADDRINUSE
    );
    m.unmap_all(ioas).unwrap();
    m.map_user(ioas, va, PAGE, Some(Iova(1 << 48)), Prot::READ)
        .unwrap();
    assert_eq!(
        m.attach_device(dev, ioas.into()).unwrap_err().errno(),
        libc::EADDRINUSE,
        "a mapping outside the aperture blocks the domain"
    );
    assert_eq!(m.iova_ranges(ioas).unwrap().ranges, vec![IovaRange::FULL]);
}

#[test]
fn replace_moves_reservations_between_ioases() {
    let (mut m, ioas, dev) = setup();
    let other = m.alloc_ioas().unwrap();
    m.attach_device(dev, ioas.into()).unwrap();
    m.attach_device(dev, other.into()).unwrap();
    assert_eq!(m.iova_ranges(ioas).unwrap().ranges, vec![IovaRange::FULL]);
    assert_eq!(m.iova_ranges(other).unwrap().ranges.len(), 2);
    // A replace that fails leaves the device where it was.
    m.allow_iovas(ioas, &[r(0xfee0_0000, 0xfee0_ffff)]).unwrap();
    assert_eq!(
        m.attach_device(dev, ioas.into()).unwrap_err().errno(),
        libc::EADDRINUSE
    );
    assert_eq!(m.iova_ranges(other).unwrap().ranges.len(), 2);
}

#[test]
fn hwpt_alloc_errnos() {
    let (mut m, ioas, dev) = setup();
    let nest = HwptFlags::NEST_PARENT;
    assert_eq!(
        m.alloc_hwpt(DevId(99), ioas.into(), nest)
            .unwrap_err()
            .errno(),
        ENOENT
    );
    assert_eq!(
        m.alloc_hwpt(dev, ObjectId(99), nest).unwrap_err().errno(),
        EINVAL
    );
    assert_eq!(
        m.alloc_hwpt(dev, ioas.into(), nest).unwrap_err().errno(),
        EOPNOTSUPP
    );
    let hwpt = m.alloc_hwpt(dev, ioas.into(), HwptFlags::NONE).unwrap();
    assert_eq!(
        m.iova_ranges(ioas).unwrap().ranges,
        vec![r(0, (1 << 48) - 1)]
    );
    let err = m.alloc_hwpt(dev, hwpt.into(), HwptFlags::NONE).unwrap_err();
    assert_eq!(err.errno(), EOPNOTSUPP, "nested without driver data");
    assert_eq!(m.attach_device(dev, hwpt.into()).unwrap(), hwpt);
    m.detach_device(dev).unwrap();
    assert!(m.hwpt(hwpt.0).is_some(), "a user HWPT outlives its devices");
    m.destroy(hwpt.into()).unwrap();
    assert_eq!(m.iova_ranges(ioas).unwrap().ranges, vec![IovaRange::FULL]);

    let mut arm = ModelIommufd::with_page_size(PAGE);
    let ioas = arm.alloc_ioas().unwrap();
    let dev = arm
        .bind_device(DeviceHandle::Model(ModelDevice::arm_smmuv3()))
        .unwrap();
    arm.alloc_hwpt(dev, ioas.into(), nest).unwrap();
    assert_eq!(
        arm.hw_info(dev).unwrap().kind,
        crate::HwInfoType::ARM_SMMUV3
    );
    assert_eq!(arm.hw_info(DevId(42)).unwrap_err().errno(), ENOENT);
}

#[test]
fn fail_nth_fails_exactly_that_call_and_changes_nothing() {
    let mut m = ModelIommufd::with_page_size(PAGE);
    let ioas = m.alloc_ioas().unwrap();
    m.fail_nth(2, libc::ENOMEM);
    let va = HostVirtAddr(0x10_0000);
    m.map_user(ioas, va, PAGE, Some(Iova(0x1000)), Prot::READ)
        .unwrap();
    let err = m
        .map_user(ioas, va, PAGE, Some(Iova(0x2000)), Prot::READ)
        .unwrap_err();
    assert_eq!(err.errno(), libc::ENOMEM);
    assert!(matches!(err.op(), Some(Op::Map { .. })));
    assert_eq!(m.mappings(ioas), vec![r(0x1000, 0x1fff)]);
    m.map_user(ioas, va, PAGE, Some(Iova(0x2000)), Prot::READ)
        .unwrap();
    assert_eq!(m.calls(), 4);
    m.fail_nth(1, libc::EIO);
    assert_eq!(m.alloc_ioas().unwrap_err().errno(), libc::EIO);
    assert_eq!(m.object_ids(), vec![ObjectId(ioas.0)]);
}

#[test]
fn map_ioctl_level_checks() {
    let mut m = ModelIommufd::with_page_size(PAGE);
    let ioas = m.alloc_ioas().unwrap();
    let va = HostVirtAddr(0x10_0000);
    let e = |r: Result<Iova>| r.unwrap_err().errno();
    assert_eq!(e(m.map_user(ioas, va, PAGE, None, Prot(0x100))), EOPNOTSUPP);
    assert_eq!(
        e(m.map_user(ioas, va, u64::MAX, None, Prot::READ)),
        EOVERFLOW
    );
    assert_eq!(e(m.map_user(ioas, va, PAGE, None, Prot::NONE)), EINVAL);
    assert_eq!(e(m.map_user(IoasId(9), va, PAGE, None, Prot::READ)), ENOENT);
    assert_eq!(
        e(m.map_user(ioas, HostVirtAddr(u64::MAX - 10), PAGE, None, Prot::READ)),
        EOVERFLOW
    );
    assert_eq!(e(m.map_user(ioas, va, 0, None, Prot::READ)), EINVAL);
    assert_eq!(
        m.unmap(ioas, Iova(u64::MAX), 1).unwrap_err().errno(),
        EOVERFLOW
    );
    assert_eq!(m.unmap_all(ioas).unwrap(), 0);
    let mut one = [IovaRange::FULL; 0];
    let err = m.iova_ranges_into(ioas, &mut one).unwrap_err();
    assert!(matches!(
        err,
        IommufdError::RangesBufferTooSmall {
            needed: 1,
            given: 0,
            ..
        }
    ));
}

#[test]
fn ids_are_reused_lowest_first() {
    let mut m = ModelIommufd::with_page_size(PAGE);
    let a = m.alloc_ioas().unwrap();
    let b = m.alloc_ioas().unwrap();
    assert_eq!((a.0, b.0), (1, 2));
    m.destroy(a.into()).unwrap();
    assert_eq!(m.alloc_ioas().unwrap().0, 1);
    assert_eq!(m.destroy(ObjectId(0)).unwrap_err().errno(), ENOENT);
    let dev = m
        .bind_device(DeviceHandle::Model(ModelDevice::dma32("d")))
        .unwrap();
    assert_eq!(m.destroy(dev.into()).unwrap_err().errno(), EBUSY);
}
