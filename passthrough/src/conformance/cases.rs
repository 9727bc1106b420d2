//! The case list, the per-case environment, and the cases that need no device (the
//! selftest's no_domain variants). Each case names the selftest (or kernel function) it
//! follows.

use libc::{EEXIST, EINVAL, ENOENT, ENOSPC, ENOTTY, EOPNOTSUPP, EOVERFLOW};

use super::{check, expect_errno, ok, Case, CaseError, CaseResult, Fixture};
use crate::iommufd::{DevId, HwptId, IoasId, Iommufd, IommufdError, IovaRanges, ObjectId, Prot};
use crate::iova::{complement, normalize, HostVirtAddr, Iova, IovaRange};
use crate::sys::{memfd, AnonMemory};

pub(super) const MIB: u64 = 1 << 20;
/// Where the cases without a device map: clear of both rigs' MSI windows.
pub(super) const BASE: u64 = 16 * MIB;
/// An object id no test ever creates.
pub(super) const NO_SUCH_ID: u32 = 0x7fff_fff0;

/// A fresh iommufd with one IOAS and a 2 MiB aligned source buffer.
pub(super) struct Env {
    pub(super) fd: Box<dyn Iommufd>,
    pub(super) ioas: IoasId,
    pub(super) page: u64,
    buf: AnonMemory,
}

impl Env {
    pub(super) fn new(fx: &mut dyn Fixture) -> Result<Env, CaseError> {
        let mut fd = fx.open().map_err(CaseError::Fail)?;
        let ioas = ok(fd.alloc_ioas(), "IOMMU_IOAS_ALLOC")?;
        let page = fx.page_size();
        let len = usize::try_from(64 * page).map_err(|e| CaseError::Fail(e.to_string()))?;
        let buf = AnonMemory::new(len, 2 * MIB as usize)
            .map_err(|e| CaseError::Fail(format!("cannot allocate the source buffer: {e}")))?;
        Ok(Env {
            fd,
            ioas,
            page,
            buf,
        })
    }

    pub(super) fn va(&self) -> HostVirtAddr {
        HostVirtAddr(self.buf.addr())
    }

    pub(super) fn map_fixed(&mut self, len: u64, iova: u64) -> Result<Iova, IommufdError> {
        let va = self.va();
        self.fd
            .map_user(self.ioas, va, len, Some(Iova(iova)), Prot::READ_WRITE)
    }

    pub(super) fn map_auto(&mut self, len: u64) -> Result<Iova, IommufdError> {
        let va = self.va();
        self.fd.map_user(self.ioas, va, len, None, Prot::READ_WRITE)
    }

    pub(super) fn unmap(&mut self, iova: u64, len: u64) -> Result<u64, IommufdError> {
        self.fd.unmap(self.ioas, Iova(iova), len)
    }

    pub(super) fn ranges(&mut self) -> Result<IovaRanges, CaseError> {
        ok(self.fd.iova_ranges(self.ioas), "IOMMU_IOAS_IOVA_RANGES")
    }

    pub(super) fn bind(&mut self, fx: &mut dyn Fixture) -> Result<DevId, CaseError> {
        let handle = match fx.device() {
            None => return Err(CaseError::Skip("no device under test".into())),
            Some(h) => h.map_err(CaseError::Fail)?,
        };
        ok(self.fd.bind_device(handle), "VFIO_DEVICE_BIND_IOMMUFD")
    }

    pub(super) fn attach(&mut self, dev: DevId) -> Result<HwptId, CaseError> {
        ok(
            self.fd.attach_device(dev, self.ioas.into()),
            "attach to the IOAS",
        )
    }

    /// Binds and attaches the device, returning it and the IOAS's ranges after.
    pub(super) fn attached(
        &mut self,
        fx: &mut dyn Fixture,
    ) -> Result<(DevId, IovaRanges), CaseError> {
        let dev = self.bind(fx)?;
        self.attach(dev)?;
        Ok((dev, self.ranges()?))
    }
}

/// The first `len` bytes at or above BASE, 2 MiB aligned, inside one of `ranges`.
pub(super) fn usable(ranges: &IovaRanges, len: u64) -> Result<u64, CaseError> {
    ranges
        .ranges
        .iter()
        .find_map(|r| {
            let start = r.first_raw().max(BASE).checked_next_multiple_of(2 * MIB)?;
            let range = IovaRange::from_start_len(start, len)?;
            r.contains_range(&range).then_some(start)
        })
        .ok_or_else(|| CaseError::Fail(format!("no {len:#x} bytes usable in {:?}", ranges.ranges)))
}

/// The IOVA the ranges leave out below the top of the last range: reserved regions.
pub(super) fn holes(ranges: &IovaRanges) -> Vec<IovaRange> {
    let mut r = ranges.ranges.clone();
    normalize(&mut r);
    let Some(top) = r.last().map(|l| l.last_raw()) else {
        return vec![IovaRange::FULL];
    };
    IovaRange::new(0, top)
        .map(|span| complement(span, &r))
        .unwrap_or_default()
}

pub(super) fn fixed_reserved(fx: &dyn Fixture) -> Result<IovaRange, CaseError> {
    fx.device_reserved()
        .into_iter()
        .find(|r| r.first_raw() < r.last_raw())
        .ok_or_else(|| CaseError::Skip("the device has no reserved region".into()))
}

// --- no device: iommufd_ioas and iommufd selftests, no_domain variant -------------------

fn destroy_unknown_id(fx: &mut dyn Fixture) -> CaseResult {
    // TEST_F(iommufd, cmd_fail)
    let mut env = Env::new(fx)?;
    expect_errno(env.fd.destroy(ObjectId(0)), ENOENT, "destroy id 0")?;
    expect_errno(
        env.fd.destroy(ObjectId(NO_SUCH_ID)),
        ENOENT,
        "destroy an unknown id",
    )
}

fn ioas_alloc_and_destroy(fx: &mut dyn Fixture) -> CaseResult {
    // TEST_F(iommufd_ioas, ioas_destroy), no_domain
    let mut env = Env::new(fx)?;
    let other = ok(env.fd.alloc_ioas(), "second IOMMU_IOAS_ALLOC")?;
    check(other != env.ioas, || "two IOAS got the same id".into())?;
    ok(env.fd.destroy(other.into()), "destroy the second IOAS")?;
    expect_errno(env.fd.destroy(other.into()), ENOENT, "destroy it again")?;
    expect_errno(
        env.fd.iova_ranges(other),
        ENOENT,
        "ranges of a destroyed IOAS",
    )?;
    let va = env.va();
    let r = env.fd.map_user(other, va, env.page, None, Prot::READ);
    expect_errno(r, ENOENT, "map into a destroyed IOAS")?;
    // An IOAS with mappings can still be destroyed (ioas_area_destroy).
    ok(env.map_fixed(env.page, BASE), "map")?;
    ok(
        env.fd.destroy(env.ioas.into()),
        "destroy an IOAS with a mapping",
    )
}

fn iova_ranges_fresh_ioas(fx: &mut dyn Fixture) -> CaseResult {
    // TEST_F(iommufd_ioas, iova_ranges): a fresh IOAS is [0, SIZE_MAX], alignment 1.
    let mut env = Env::new(fx)?;
    let r = env.ranges()?;
    check(
        r.ranges == vec![IovaRange::FULL] && r.alignment == 1,
        || format!("fresh IOAS ranges {:?} alignment {}", r.ranges, r.alignment),
    )
}

fn iova_ranges_emsgsize(fx: &mut dyn Fixture) -> CaseResult {
    // TEST_F(iommufd_ioas, iova_ranges): "Buffer too small".
    let mut env = Env::new(fx)?;
    let ioas = env.ioas;
    match env.fd.iova_ranges_into(ioas, &mut []) {
        Err(IommufdError::RangesBufferTooSmall { needed: 1, .. }) => {}
        other => {
            return Err(CaseError::Fail(format!(
                "empty buffer: got {other:?}, expected EMSGSIZE needing 1"
            )))
        }
    }
    let mut one = [IovaRange::new(1, 1).unwrap_or(IovaRange::FULL)];
    let reply = ok(env.fd.iova_ranges_into(ioas, &mut one), "buffer of 1")?;
    check(reply.count == 1 && one[0] == IovaRange::FULL, || {
        format!("buffer of 1: {reply:?} {:?}", one[0])
    })?;
    expect_errno(
        env.fd.iova_ranges(IoasId(NO_SUCH_ID)),
        ENOENT,
        "unknown IOAS",
    )
}

fn map_unmap_fixed(fx: &mut dyn Fixture) -> CaseResult {
    let mut env = Env::new(fx)?;
    let p = env.page;
    let iova = ok(env.map_fixed(p, BASE), "map one page")?;
    check(iova == Iova(BASE), || format!("fixed map landed at {iova}"))?;
    let n = ok(env.unmap(BASE, p), "unmap it")?;
    check(n == p, || format!("unmapped {n:#x} bytes, expected {p:#x}"))?;
    expect_errno(env.unmap(BASE, p), ENOENT, "unmap it again")
}

fn unmap_nothing(fx: &mut dyn Fixture) -> CaseResult {
    // TEST_F(iommufd_ioas, area): "Unmap fails if nothing is mapped".
    let mut env = Env::new(fx)?;
    for i in 0..10 {
        let p = env.page;
        expect_errno(env.unmap(i * p, p), ENOENT, &format!("unmap page {i}"))?;
    }
    Ok(())
}

fn unmap_cannot_split(fx: &mut dyn Fixture) -> CaseResult {
    // TEST_F(iommufd_ioas, area): "Split fails".
    let mut env = Env::new(fx)?;
    let p = env.page;
    ok(env.map_fixed(2 * p, BASE + 16 * p), "map two pages")?;
    expect_errno(env.unmap(BASE + 16 * p, p), ENOENT, "unmap the first half")?;
    expect_errno(env.unmap(BASE + 17 * p, p), ENOENT, "unmap the second half")?;
    let n = ok(env.unmap(BASE + 16 * p, 2 * p), "unmap the whole mapping")?;
    check(n == 2 * p, || format!("unmapped {n:#x}"))
}

fn map_over_map(fx: &mut dyn Fixture) -> CaseResult {
    // TEST_F(iommufd_ioas, area): "Over map fails".
    let mut env = Env::new(fx)?;
    let p = env.page;
    ok(env.map_fixed(2 * p, BASE + 16 * p), "map two pages")?;
    for (len, at) in [(2, 16), (1, 16), (1, 17), (2, 15), (3, 15)] {
        let what = format!("map {len} page(s) at page {at}");
        expect_errno(env.map_fixed(len * p, BASE + at * p), EEXIST, &what)?;
    }
    Ok(())
}

fn unmap_all(fx: &mut dyn Fixture) -> CaseResult {
    // TEST_F(iommufd_ioas, area): "unmap all works" and succeeds on an empty IOAS.
    let mut env = Env::new(fx)?;
    let p = env.page;
    for i in 0..10 {
        ok(env.map_fixed(p, BASE + i * p), "map a page")?;
    }
    let ioas = env.ioas;
    let n = ok(env.fd.unmap_all(ioas), "unmap all")?;
    check(n == 10 * p, || format!("unmap all reported {n:#x}"))?;
    let n = ok(env.fd.unmap_all(ioas), "unmap all on an empty IOAS")?;
    check(n == 0, || format!("unmap all on empty reported {n:#x}"))
}

fn unmap_fully_contained(fx: &mut dyn Fixture) -> CaseResult {
    // TEST_F(iommufd_ioas, unmap_fully_contained_areas)
    let mut env = Env::new(fx)?;
    let p = env.page;
    let base = BASE + 4 * p;
    for i in 0..4 {
        ok(env.map_fixed(8 * p, base + i * 16 * p), "map 8 pages")?;
    }
    expect_errno(
        env.unmap(base - 4 * p, 8 * p),
        ENOENT,
        "unmap across the first start",
    )?;
    let tail = base + 3 * 16 * p + 8 * p - 4 * p;
    expect_errno(env.unmap(tail, 8 * p), ENOENT, "unmap across the last end")?;
    let n = ok(
        env.unmap(base - 4 * p, 3 * 16 * p + 8 * p + 4 * p),
        "unmap around all",
    )?;
    check(n == 32 * p, || {
        format!("unmapped {n:#x}, expected {:#x}", 32 * p)
    })
}

fn map_argument_errors(fx: &mut dyn Fixture) -> CaseResult {
    // iommufd_ioas_map / iopt_alloc_pages / iopt_check_iova / iommufd_ioas_unmap.
    let mut env = Env::new(fx)?;
    let (p, ioas, va) = (env.page, env.ioas, env.va());
    let rw = Prot::READ_WRITE;
    expect_errno(env.map_fixed(0, BASE), EINVAL, "zero length")?;
    let r = env.fd.map_user(ioas, va, p, Some(Iova(BASE)), Prot::NONE);
    expect_errno(r, EINVAL, "neither read nor write")?;
    let r = env
        .fd
        .map_user(ioas, va, p, Some(Iova(BASE)), Prot(0x100 | Prot::READ.0));
    expect_errno(r, EOPNOTSUPP, "unknown flag")?;
    expect_errno(env.map_fixed(u64::MAX, BASE), EOVERFLOW, "length U64_MAX")?;
    expect_errno(env.map_fixed(p, u64::MAX), EOVERFLOW, "IOVA U64_MAX")?;
    expect_errno(
        env.map_fixed(2 * p, 0u64.wrapping_sub(p)),
        EOVERFLOW,
        "range wraps",
    )?;
    let r = env.fd.map_user(IoasId(NO_SUCH_ID), va, p, None, rw);
    expect_errno(r, ENOENT, "unknown IOAS")?;
    expect_errno(env.unmap(BASE, 0), EINVAL, "unmap zero length")?;
    expect_errno(env.unmap(u64::MAX, p), EOVERFLOW, "unmap at U64_MAX")?;
    expect_errno(
        env.unmap(0u64.wrapping_sub(p), 2 * p),
        EOVERFLOW,
        "unmap wraps",
    )?;
    let r = env.fd.unmap(IoasId(NO_SUCH_ID), Iova(BASE), p);
    expect_errno(r, ENOENT, "unmap in an unknown IOAS")
}

fn map_file_memfd(fx: &mut dyn Fixture) -> CaseResult {
    // IOMMU_IOAS_MAP_FILE: same semantics as IOMMU_IOAS_MAP, pages from a memfd.
    let mut env = Env::new(fx)?;
    let (p, ioas) = (env.page, env.ioas);
    let file =
        memfd(c"conformance", 4 * p).map_err(|e| CaseError::Fail(format!("memfd_create: {e}")))?;
    let rw = Prot::READ_WRITE;
    let fixed = env.fd.map_file(
        ioas,
        std::os::fd::AsFd::as_fd(&file),
        0,
        2 * p,
        Some(Iova(BASE)),
        rw,
    );
    if matches!(&fixed, Err(e) if e.errno() == ENOTTY) {
        return Err(CaseError::Skip(
            "the kernel lacks IOMMU_IOAS_MAP_FILE (Linux < 6.13)".into(),
        ));
    }
    let iova = ok(fixed, "map 2 pages of a memfd")?;
    check(iova == Iova(BASE), || {
        format!("fixed file map landed at {iova}")
    })?;
    let fd = std::os::fd::AsFd::as_fd(&file);
    let again = env.fd.map_file(ioas, fd, 0, p, Some(Iova(BASE + p)), rw);
    expect_errno(again, EEXIST, "file map over it")?;
    let auto = ok(
        env.fd.map_file(ioas, fd, 2 * p, 2 * p, None, rw),
        "kernel-chosen IOVA",
    )?;
    // iopt_alloc_area_pages aligns a file map by its file offset (here 2 pages), capped like
    // any auto IOVA (PAGE_SIZE on kernels without THP, as the aarch64 rig showed).
    let want = (2 * p).min(fx.max_auto_iova_alignment()).max(p);
    check(auto.0 != 0 && auto.0 % want == 0, || {
        format!("auto file map at {auto}, not {want:#x}-aligned")
    })?;
    let n = ok(env.fd.unmap_all(ioas), "unmap all")?;
    check(n == 4 * p, || format!("unmapped {n:#x}"))
}

fn auto_iova_alignment(fx: &mut dyn Fixture) -> CaseResult {
    // TEST_F(iommufd_ioas, area_auto_iova): "Kernel automatically aligns IOVAs properly".
    let mut env = Env::new(fx)?;
    let p = env.page;
    // The kernel (iopt_alloc_iova) aligns to the smaller of the length's power of two and
    // the source address's own alignment, capped at HPAGE_SIZE with THP and at PAGE_SIZE
    // without. The rig found the model and this case assuming the length's alignment alone.
    let cap = fx.max_auto_iova_alignment();
    let va = env.va().0;
    let mut got: Vec<IovaRange> = Vec::new();
    for i in 1..=10 {
        let len = i * p;
        let iova = ok(env.map_auto(len), &format!("auto map of {i} pages"))?.0;
        let range = IovaRange::from_start_len(iova, len)
            .ok_or_else(|| CaseError::Fail(format!("auto IOVA {iova:#x} wraps")))?;
        let want = len
            .next_power_of_two()
            .min(1 << va.trailing_zeros())
            .min(cap)
            .max(p);
        check(iova != 0 && iova % want == 0, || {
            format!("auto IOVA {iova:#x} for {len:#x} bytes from {va:#x} is not {want:#x}-aligned (or 0)")
        })?;
        check(got.iter().all(|g| !g.overlaps(&range)), || {
            format!("auto IOVA {range} overlaps an earlier one")
        })?;
        got.push(range);
    }
    for r in got {
        ok(
            env.unmap(r.first_raw(), r.size() as u64),
            "unmap an auto mapping",
        )?;
    }
    Ok(())
}

fn auto_iova_in_allowed(fx: &mut dyn Fixture) -> CaseResult {
    // TEST_F(iommufd_ioas, area_auto_iova): "Allocate from an allowed region".
    let mut env = Env::new(fx)?;
    let (p, ioas) = (env.page, env.ioas);
    let allowed = IovaRange::new(200 * p, 600 * p - 1).ok_or("range")?;
    ok(env.fd.allow_iovas(ioas, &[allowed]), "allow 200..600 pages")?;
    for i in 1..=10 {
        let len = i * p;
        let iova = ok(env.map_auto(len), "auto map")?.0;
        let inside =
            IovaRange::from_start_len(iova, len).is_some_and(|r| allowed.contains_range(&r));
        check(inside, || {
            format!("auto IOVA {iova:#x}+{len:#x} is outside {allowed}")
        })?;
    }
    Ok(())
}

fn auto_iova_enospc(fx: &mut dyn Fixture) -> CaseResult {
    // iopt_alloc_iova: no hole large enough in the allowed ranges.
    let mut env = Env::new(fx)?;
    let (p, ioas) = (env.page, env.ioas);
    let one_page = IovaRange::new(BASE, BASE + p - 1).ok_or("range")?;
    ok(env.fd.allow_iovas(ioas, &[one_page]), "allow one page")?;
    expect_errno(env.map_auto(2 * p), ENOSPC, "auto map of two pages")?;
    ok(env.map_auto(p), "auto map of one page")?;
    expect_errno(env.map_auto(p), ENOSPC, "a second page")
}

fn allow_iovas_invalid(fx: &mut dyn Fixture) -> CaseResult {
    // iommufd_ioas_load_iovas: start >= last and overlaps are EINVAL.
    let mut env = Env::new(fx)?;
    let (p, ioas) = (env.page, env.ioas);
    let point = IovaRange::new(BASE, BASE).ok_or("range")?;
    expect_errno(env.fd.allow_iovas(ioas, &[point]), EINVAL, "start == last")?;
    let a = IovaRange::new(BASE, BASE + 2 * p - 1).ok_or("range")?;
    let b = IovaRange::new(BASE + p, BASE + 3 * p - 1).ok_or("range")?;
    expect_errno(
        env.fd.allow_iovas(ioas, &[a, b]),
        EINVAL,
        "overlapping ranges",
    )?;
    expect_errno(
        env.fd.allow_iovas(IoasId(NO_SUCH_ID), &[a]),
        ENOENT,
        "unknown IOAS",
    )?;
    ok(env.fd.allow_iovas(ioas, &[a]), "one valid range")?;
    ok(env.fd.allow_iovas(ioas, &[]), "clearing the list")
}

fn allowed_does_not_narrow_ranges(fx: &mut dyn Fixture) -> CaseResult {
    // IOVA_RANGES reports the holes of the reserved tree only; fixed maps ignore the
    // allowed list (iopt_check_iova).
    let mut env = Env::new(fx)?;
    let (p, ioas) = (env.page, env.ioas);
    let allowed = IovaRange::new(200 * p, 600 * p - 1).ok_or("range")?;
    ok(env.fd.allow_iovas(ioas, &[allowed]), "allow")?;
    let r = env.ranges()?;
    check(r.ranges == vec![IovaRange::FULL], || {
        format!("ranges became {:?}", r.ranges)
    })?;
    ok(
        env.map_fixed(p, 1000 * p),
        "fixed map outside the allowed range",
    )?;
    Ok(())
}

use super::device_cases::*;
use super::nested_cases::*;

macro_rules! cases {
    ($($name:ident: $dev:expr,)*) => {
        /// Every case, in run order.
        pub static CASES: &[Case] = &[
            $(Case { name: stringify!($name), needs_device: $dev, run: $name },)*
        ];
    };
}

cases! {
    destroy_unknown_id: false,
    ioas_alloc_and_destroy: false,
    iova_ranges_fresh_ioas: false,
    iova_ranges_emsgsize: false,
    map_unmap_fixed: false,
    unmap_nothing: false,
    unmap_cannot_split: false,
    map_over_map: false,
    unmap_all: false,
    unmap_fully_contained: false,
    map_argument_errors: false,
    map_file_memfd: false,
    auto_iova_alignment: false,
    auto_iova_in_allowed: false,
    auto_iova_enospc: false,
    allow_iovas_invalid: false,
    allowed_does_not_narrow_ranges: false,
    hw_info: true,
    attach_narrows_ranges: true,
    iova_ranges_emsgsize_after_attach: true,
    attach_refuses_mapped_reserved: true,
    attach_refuses_allowed_reserved: true,
    map_into_reserved: true,
    allow_over_reserved: true,
    map_misaligned_after_attach: true,
    auto_iova_avoids_reserved: true,
    ioas_busy_while_attached: true,
    hwpt_alloc_attach_destroy: true,
    hwpt_alloc_errors: true,
    hwpt_nest_parent: true,
    attach_unknown_pt: true,
    detach_is_idempotent: true,
    reattach_is_a_noop: true,
    guard_ram_then_attach: true,
    viommu_needs_nest_parent: true,
    vdevice_twice: true,
    nested_ste_validation: true,
    invalidate_stops_at_unknown_vsid: true,
    veventq_one_per_type: true,
}
